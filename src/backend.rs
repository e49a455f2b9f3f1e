//! The tensor backends burnish runs on and the choice between them: Burn's Flex on the CPU,
//! CubeCL CUDA behind the `cuda` feature.

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;

use crate::model::ModelBackend;
pub use crate::recipe::values::{DeviceList, DeviceSpec, WeightDtype};

/// CPU inference backend.
pub type Cpu = burn::backend::Flex;
/// CPU training backend.
pub type CpuTrain = Autodiff<Cpu>;
#[cfg(feature = "cuda")]
pub type Gpu = burn::backend::Cuda;
#[cfg(feature = "cuda")]
pub type GpuTrain = Autodiff<Gpu>;

/// A backend burnish trains on: autodiff over a backend with burnish's kernels, which has
/// them too (the bound every training and inference job needs, written once).
pub trait TrainBackend: AutodiffBackend<InnerBackend: ModelBackend> + ModelBackend {}

impl<B> TrainBackend for B
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
{
}

/// Work that runs on whichever backend the device choice selects.
pub trait BackendJob {
    type Output;
    fn run<B: TrainBackend>(self, device: B::Device, on_gpu: bool) -> Self::Output;
}

/// Whether CUDA device `index` can be used in this build and on this machine.
pub fn cuda_device_usable(index: usize) -> bool {
    #[cfg(feature = "cuda")]
    {
        // cudarc loads libcuda lazily and panics if it is missing; probe in a guarded call,
        // with the panic message silenced (the caller reports the problem its own way).
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let ok = std::panic::catch_unwind(|| {
            let device = burn::backend::cuda::CudaDevice::new(index);
            let _ = burn::tensor::Tensor::<Gpu, 1>::zeros([1], &device).into_data();
        })
        .is_ok();
        std::panic::set_hook(previous);
        ok
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = index;
        false
    }
}

/// Whether a CUDA device can be used in this build and on this machine.
pub fn cuda_available() -> bool {
    cuda_device_usable(0)
}

/// Visible CUDA devices (for `cuda:all`): `CUDA_VISIBLE_DEVICES` if set, else the GPUs the
/// NVIDIA driver lists, without initialising CUDA.
pub fn cuda_device_count() -> usize {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return v.split(',').filter(|s| !s.trim().is_empty()).count();
    }
    std::fs::read_dir("/proc/driver/nvidia/gpus")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn no_cuda(index: usize) -> String {
    format!(
        "device cuda:{index} is not usable here: no CUDA driver (libcuda), no such GPU, or \
         CUDA_PATH/libnvrtc missing; check `nvidia-smi`, or use device: cpu"
    )
}

/// Work that runs on several devices of one backend (data-parallel replicas).
pub trait MultiDeviceJob {
    type Output;
    fn run<B: TrainBackend>(self, devices: Vec<B::Device>, on_gpu: bool) -> Self::Output;
}

/// Run `job` on the devices `specs` name (all CPU or all CUDA; `auto` is not allowed here).
pub fn dispatch_multi<J: MultiDeviceJob>(
    specs: &[DeviceSpec],
    job: J,
) -> Result<J::Output, String> {
    if specs.iter().all(|s| *s == DeviceSpec::Cpu) {
        let devices = specs.iter().map(|_| Default::default()).collect();
        return Ok(job.run::<CpuTrain>(devices, false));
    }
    let indices: Vec<usize> = specs
        .iter()
        .map(|s| match s {
            DeviceSpec::Cuda(i) => Ok(*i),
            other => Err(format!(
                "train.devices mixes {other} with CUDA devices; list only cpu or only cuda:N"
            )),
        })
        .collect::<Result<_, _>>()?;
    #[cfg(feature = "cuda")]
    {
        if let Some(&bad) = indices.iter().find(|&&i| !cuda_device_usable(i)) {
            return Err(no_cuda(bad));
        }
        let devices = indices
            .iter()
            .map(|&i| burn::backend::cuda::CudaDevice::new(i))
            .collect();
        Ok(job.run::<GpuTrain>(devices, true))
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(format!(
            "devices cuda:{indices:?} were requested but this burnish was built without CUDA; rebuild with `cargo build --release --features cuda` or use cpu devices"
        ))
    }
}

/// Run `job` on the backend chosen by `spec`.
pub fn dispatch<J: BackendJob>(spec: DeviceSpec, job: J) -> Result<J::Output, String> {
    match spec {
        DeviceSpec::Cpu => Ok(job.run::<CpuTrain>(Default::default(), false)),
        DeviceSpec::Auto => {
            #[cfg(feature = "cuda")]
            if cuda_available() {
                return Ok(job.run::<GpuTrain>(burn::backend::cuda::CudaDevice::new(0), true));
            }
            Ok(job.run::<CpuTrain>(Default::default(), false))
        }
        DeviceSpec::Cuda(index) => {
            #[cfg(feature = "cuda")]
            {
                if !cuda_device_usable(index) {
                    return Err(no_cuda(index));
                }
                Ok(job.run::<GpuTrain>(burn::backend::cuda::CudaDevice::new(index), true))
            }
            #[cfg(not(feature = "cuda"))]
            {
                Err(format!(
                    "device cuda:{index} was requested but this burnish was built without CUDA; rebuild with `cargo build --release --features cuda` or use device: cpu"
                ))
            }
        }
    }
}

/// The devices of `train.devices`, checked; `cuda:all` expands to every visible GPU.
pub fn device_specs(list: &DeviceList) -> Result<Vec<DeviceSpec>, String> {
    list.check()?;
    match list {
        DeviceList::AllCuda => {
            let n = cuda_device_count();
            if n == 0 {
                return Err("cuda:all: no CUDA devices are visible on this machine".into());
            }
            Ok((0..n).map(DeviceSpec::Cuda).collect())
        }
        DeviceList::Devices(v) => Ok(v.clone()),
    }
}
