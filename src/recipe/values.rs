//! The typed values a recipe (and the command line) chooses among: devices, precisions,
//! scheduler and optimizer. A leaf module: the backend code consumes these, the recipe checks
//! parse them once, and an unknown name is a located error, never a silent default.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// Serialised as its text (`cuda:1`), parsed with [`FromStr`].
macro_rules! serde_as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_text!(DeviceSpec);

/// `train.devices`: the data-parallel replicas of this machine, one per device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceList {
    /// `cuda:all`: every visible GPU (expanded at run time).
    AllCuda,
    /// An explicit list (a single device may be written without the list).
    Devices(Vec<DeviceSpec>),
}

impl Serialize for DeviceList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DeviceList::AllCuda => s.serialize_str("cuda:all"),
            DeviceList::Devices(list) => list.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for DeviceList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let parse = |names: Vec<String>| -> Result<DeviceList, D::Error> {
            names
                .iter()
                .map(|n| n.parse::<DeviceSpec>().map_err(serde::de::Error::custom))
                .collect::<Result<_, _>>()
                .map(DeviceList::Devices)
        };
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a device, a list of devices, or cuda:all")
        })? {
            Raw::One(s) if s == "cuda:all" => Ok(DeviceList::AllCuda),
            Raw::One(s) => parse(vec![s]),
            Raw::Many(v) => parse(v),
        }
    }
}

impl DeviceList {
    /// What a device list may not be: empty, `auto`, CPU and CUDA mixed, a GPU twice.
    pub fn check(&self) -> Result<(), String> {
        let DeviceList::Devices(specs) = self else {
            return Ok(());
        };
        if specs.is_empty() {
            return Err("is empty; list at least one device".into());
        }
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
        Ok(())
    }

    /// Replicas on this machine (`cuda:all` counts as one until expanded).
    pub fn replicas(&self) -> usize {
        match self {
            DeviceList::AllCuda => 1,
            DeviceList::Devices(v) => v.len(),
        }
    }
}

/// Precision of the frozen weights: `auto` means f32 on CPU and bf16 on CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    #[default]
    Auto,
    #[serde(alias = "float32")]
    F32,
    #[serde(alias = "bfloat16")]
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
    /// The precision frozen weights are held in on this device kind.
    pub fn resolve(self, on_gpu: bool) -> burn::tensor::DType {
        use burn::tensor::DType;
        match (self, on_gpu) {
            (WeightDtype::F32, _) | (WeightDtype::Auto, false) => DType::F32,
            (WeightDtype::Bf16, _) | (WeightDtype::Auto, true) => DType::BF16,
        }
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightDtype::Auto => "auto",
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
        })
    }
}

/// Precision of a merged model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeDtype {
    /// The base model's own on-disk dtype.
    #[default]
    Auto,
    #[serde(alias = "float32")]
    F32,
    #[serde(alias = "bfloat16")]
    Bf16,
    #[serde(alias = "float16")]
    F16,
}

/// Learning-rate schedule after the warmup (transformers' `get_scheduler` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    #[default]
    #[serde(alias = "cosine_with_min_lr")]
    Cosine,
    Linear,
    #[serde(alias = "constant_with_warmup")]
    Constant,
    /// Cosine decays restarting from the peak `num_cycles` times.
    CosineWithRestarts,
    /// `(peak - min_lr) * remaining^power + min_lr`.
    Polynomial,
    /// `peak / sqrt((step + timescale - warmup) / timescale)`.
    InverseSqrt,
    /// Warmup, a constant stage, then `decay_steps` of decay (WSD).
    WarmupStableDecay,
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SchedulerKind::Cosine => "cosine",
            SchedulerKind::Linear => "linear",
            SchedulerKind::Constant => "constant",
            SchedulerKind::CosineWithRestarts => "cosine_with_restarts",
            SchedulerKind::Polynomial => "polynomial",
            SchedulerKind::InverseSqrt => "inverse_sqrt",
            SchedulerKind::WarmupStableDecay => "warmup_stable_decay",
        })
    }
}

/// The decay of `warmup_stable_decay` (transformers' `decay_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DecayType {
    #[default]
    #[serde(rename = "cosine")]
    Cosine,
    #[serde(rename = "linear")]
    Linear,
    #[serde(rename = "1-sqrt")]
    OneMinusSqrt,
}

impl fmt::Display for DecayType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecayType::Cosine => "cosine",
            DecayType::Linear => "linear",
            DecayType::OneMinusSqrt => "1-sqrt",
        })
    }
}

/// The optimizer of the adapter weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// PyTorch's AdamW (decoupled weight decay).
    #[default]
    Adamw,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        for s in ["auto", "cpu", "cuda:0", "cuda:3"] {
            let d: DeviceSpec = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(serde_json::from_str::<DeviceSpec>(&json).unwrap(), d);
        }
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert!("tpu".parse::<DeviceSpec>().is_err());
        let all: DeviceList = serde_json::from_str("\"cuda:all\"").unwrap();
        assert_eq!(all, DeviceList::AllCuda);
        let one: DeviceList = serde_json::from_str("\"cpu\"").unwrap();
        assert_eq!(one, DeviceList::Devices(vec![DeviceSpec::Cpu]));
        let two: DeviceList = serde_json::from_str("[\"cuda:0\", \"cuda:1\"]").unwrap();
        assert_eq!(
            two,
            DeviceList::Devices(vec![DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)])
        );
        assert!(serde_json::from_str::<DeviceList>("[\"gpu\"]").is_err());
        assert_eq!(
            serde_json::from_str::<WeightDtype>("\"bfloat16\"").unwrap(),
            WeightDtype::Bf16
        );
        assert!(serde_json::from_str::<SchedulerKind>("\"cosin\"").is_err());
    }
}
