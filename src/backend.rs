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

/// Whether a CUDA device can be used in this build and on this machine.
pub fn cuda_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        // cudarc loads libcuda lazily and panics if it is missing; probe in a guarded call.
        std::panic::catch_unwind(|| {
            let device = burn::backend::cuda::CudaDevice::new(0);
            let _ = burn::tensor::Tensor::<Gpu, 1>::zeros([1], &device).into_data();
        })
        .is_ok()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
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
