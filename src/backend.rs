//! The tensor backends burnish runs on and the choice between them: Burn's Flex on the CPU,
//! CubeCL CUDA behind the `cuda` feature.

use std::fmt;
use std::str::FromStr;

use burn::backend::Autodiff;
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;

use crate::model::kernels::Kernels;

/// CPU inference backend.
pub type Cpu = burn::backend::Flex;
/// CPU training backend.
pub type CpuTrain = Autodiff<Cpu>;
#[cfg(feature = "cuda")]
pub type Gpu = burn::backend::Cuda;
#[cfg(feature = "cuda")]
pub type GpuTrain = Autodiff<Gpu>;

/// Where to run: `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    format!("unknown device '{other}' (expected auto, cpu, cuda or cuda:N)")
                }),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Frozen-weight precision: `auto` means f32 on CPU and bf16 on CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDtype {
    #[default]
    Auto,
    F32,
    Bf16,
}

impl FromStr for WeightDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(WeightDtype::Auto),
            "f32" | "float32" => Ok(WeightDtype::F32),
            "bf16" | "bfloat16" => Ok(WeightDtype::Bf16),
            other => Err(format!(
                "unknown dtype '{other}' (expected auto, f32 or bf16)"
            )),
        }
    }
}

impl WeightDtype {
    pub fn resolve(self, on_gpu: bool) -> DType {
        match (self, on_gpu) {
            (WeightDtype::F32, _) | (WeightDtype::Auto, false) => DType::F32,
            (WeightDtype::Bf16, _) | (WeightDtype::Auto, true) => DType::BF16,
        }
    }
}

/// Work that runs on whichever backend the device choice selects.
pub trait BackendJob {
    type Output;
    fn run<B: AutodiffBackend + Kernels>(self, device: B::Device, on_gpu: bool) -> Self::Output
    where
        B::InnerBackend: Kernels;
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
    fn run<B: AutodiffBackend + Kernels>(
        self,
        devices: Vec<B::Device>,
        on_gpu: bool,
    ) -> Self::Output
    where
        B::InnerBackend: Kernels;
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

/// The devices of `train.devices`. `cuda:all` expands to every visible GPU when `expand_all`
/// (at run time; recipe validation only checks the syntax).
pub fn device_specs(
    list: &crate::recipe::DeviceList,
    expand_all: bool,
) -> Result<Vec<DeviceSpec>, String> {
    use crate::recipe::DeviceList;
    let names: Vec<String> = match list {
        DeviceList::One(s) if s == "cuda:all" => {
            if !expand_all {
                return Ok(vec![DeviceSpec::Cuda(0)]);
            }
            let n = cuda_device_count();
            if n == 0 {
                return Err("cuda:all: no CUDA devices are visible on this machine".into());
            }
            return Ok((0..n).map(DeviceSpec::Cuda).collect());
        }
        DeviceList::One(s) => vec![s.clone()],
        DeviceList::Many(v) => v.clone(),
    };
    if names.is_empty() {
        return Err("is empty; list at least one device".into());
    }
    let specs: Vec<DeviceSpec> = names
        .iter()
        .map(|n| n.parse::<DeviceSpec>())
        .collect::<Result<_, _>>()?;
    if specs.contains(&DeviceSpec::Auto) {
        return Err("auto is not allowed in a device list; name cpu or cuda:N devices".into());
    }
    let cpu = specs.iter().filter(|s| **s == DeviceSpec::Cpu).count();
    if cpu != 0 && cpu != specs.len() {
        return Err("mixes cpu and cuda devices; list only one kind".into());
    }
    for (i, s) in specs.iter().enumerate() {
        if matches!(s, DeviceSpec::Cuda(_)) && specs[..i].contains(s) {
            return Err(format!("lists {s} twice"));
        }
    }
    Ok(specs)
}
