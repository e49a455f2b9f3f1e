//! PEFT's adapter files: `adapter_config.json` and `adapter_model.safetensors` with keys
//! `base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight`, `A: [r, in]`,
//! `B: [out, r]`, f32, and with DoRA (`"use_dora": true`) `...{module}.lora_magnitude_vector`,
//! `[out]`. Reading refuses what burnish cannot apply faithfully instead of loading part of an
//! adapter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde_json::{Map, Value, json};

use super::error::LoraError;
use super::settings::{InitKind, LoraSettings, TargetModule, TargetSpec};
use crate::model::ModelConfig;
use crate::model::params::LINEAR_MODULES;
use crate::model::safetensors_out::{F32Tensor, write_f32};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The PEFT key of one factor (`a` = true for `lora_A`).
pub fn peft_key(layer: usize, module: &str, a: bool) -> String {
    format!(
        "base_model.model.{}.lora_{}.weight",
        super::settings::module_name(layer, module),
        if a { "A" } else { "B" }
    )
}

/// The PEFT key of a DoRA magnitude vector (`[out]`; PEFT keeps the name it had before the
/// magnitude became a module, without `.weight`).
pub fn magnitude_key(layer: usize, module: &str) -> String {
    format!(
        "base_model.model.{}.lora_magnitude_vector",
        super::settings::module_name(layer, module)
    )
}

/// Which tensor of a module's adapter a PEFT key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    A,
    B,
    Magnitude,
}

/// Parse a PEFT key back into (layer, module, part).
pub fn parse_peft_key(key: &str) -> Option<(usize, &'static str, Part)> {
    let rest = key.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (parent, rest) = rest.split_once('.')?;
    let (module, rest) = rest.split_once('.')?;
    let module = LINEAR_MODULES.iter().find(|m| **m == module)?;
    if ModelConfig::linear_parent(module) != parent {
        return None;
    }
    let part = match rest {
        "lora_A.weight" => Part::A,
        "lora_B.weight" => Part::B,
        // The second form is what PEFT's in-memory state dict calls it.
        "lora_magnitude_vector" | "lora_magnitude_vector.weight" => Part::Magnitude,
        _ => return None,
    };
    Some((layer, module, part))
}

/// One module's factors on the host: `a: [r, in]`, `b: [out, r]`, row-major f32, and DoRA's
/// magnitude `[out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFactors {
    pub r: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub scaling: f64,
    /// DoRA's magnitude vector; `None` for plain LoRA (and for a DoRA adapter not yet
    /// initialised: attaching it computes the base weight's row norms).
    pub magnitude: Option<Vec<f32>>,
}

/// An adapter read from disk: its settings and factors per (layer, module).
#[derive(Debug, Clone)]
pub struct AdapterFiles {
    pub dir: PathBuf,
    pub settings: LoraSettings,
    pub base_model: Option<String>,
    pub factors: BTreeMap<(usize, &'static str), HostFactors>,
}

fn json_number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// Write an adapter folder (config + weights). `factors` are in model order.
pub fn write_adapter(
    dir: &Path,
    settings: &LoraSettings,
    targets: &[TargetModule],
    factors: &[(TargetModule, HostFactors)],
    base_model: &str,
) -> Result<(), LoraError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoraError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let init = match settings.init {
        InitKind::Default => json!(true),
        InitKind::Gaussian => json!("gaussian"),
    };
    let alpha_pattern: Map<String, Value> = settings
        .alpha_pattern
        .iter()
        .map(|(k, v)| (k.clone(), json_number(*v)))
        .collect();
    let config = json!({
        "alpha_pattern": alpha_pattern,
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": init,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": settings.layers_to_transform,
        "lora_alpha": json_number(settings.alpha),
        "lora_bias": false,
        "lora_dropout": settings.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": settings.r,
        "rank_pattern": settings.rank_pattern,
        "revision": null,
        "target_modules": settings.target_module_names(targets),
        "task_type": "CAUSAL_LM",
        "use_dora": settings.dora,
        "use_rslora": settings.rslora,
    });
    let config_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config).map_err(|e| LoraError::BadAdapter {
        path: config_path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&config_path, text + "\n").map_err(io(&config_path))?;

    let names: Vec<[String; 3]> = factors
        .iter()
        .map(|(t, _)| {
            [
                peft_key(t.layer, t.module, true),
                peft_key(t.layer, t.module, false),
                magnitude_key(t.layer, t.module),
            ]
        })
        .collect();
    let mut tensors = Vec::with_capacity(factors.len() * 3);
    for ((t, f), [name_a, name_b, name_m]) in factors.iter().zip(&names) {
        tensors.push(F32Tensor {
            name: name_a,
            shape: vec![t.r, t.in_features],
            values: &f.a,
        });
        tensors.push(F32Tensor {
            name: name_b,
            shape: vec![t.out_features, t.r],
            values: &f.b,
        });
        if let Some(m) = &f.magnitude {
            tensors.push(F32Tensor {
                name: name_m,
                shape: vec![t.out_features],
                values: m,
            });
        }
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    // burnish's version goes into the tensor file's metadata: PEFT warns about any key of
    // adapter_config.json it does not know.
    let metadata = [
        ("format", "pt"),
        ("burnish_version", env!("CARGO_PKG_VERSION")),
    ];
    write_f32(&weights_path, &tensors, &metadata).map_err(|message| LoraError::BadAdapter {
        path: weights_path,
        message,
    })
}

/// Settings that describe the adapter itself and are applied from its config.
fn settings_from_config(path: &Path, cfg: &Map<String, Value>) -> Result<LoraSettings, LoraError> {
    let bad = |message: String| LoraError::BadAdapter {
        path: path.to_path_buf(),
        message,
    };
    let unsupported = |field: &str, value: &Value, why: &str| LoraError::Unsupported {
        path: path.to_path_buf(),
        field: field.into(),
        value: value.to_string(),
        why: why.into(),
    };
    match cfg.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => {
            return Err(unsupported(
                "peft_type",
                &json!(other),
                "only LoRA adapters are supported",
            ));
        }
    }
    // Fields whose non-default values change the math in ways burnish does not implement.
    let neutral: [(&str, &str); 11] = [
        (
            "fan_in_fan_out",
            "transposed (Conv1D-style) base weights are not supported",
        ),
        (
            "modules_to_save",
            "fully trained extra modules are not applied",
        ),
        ("lora_bias", "trained LoRA biases are not applied"),
        ("layer_replication", "layer replication is not supported"),
        (
            "trainable_token_indices",
            "trainable token embeddings are not applied",
        ),
        (
            "target_parameters",
            "parameter-targeted LoRA is not supported",
        ),
        ("use_qalora", "QA-LoRA pooling is not supported"),
        ("alora_invocation_tokens", "activated LoRA is not supported"),
        ("exclude_modules", "exclude_modules is not supported"),
        (
            "megatron_config",
            "Megatron-parallel layers are not supported",
        ),
        ("use_bdlora", "block-diagonal LoRA is not supported"),
    ];
    for (field, why) in neutral {
        if let Some(v) = cfg.get(field) {
            let is_neutral = match v {
                Value::Null | Value::Bool(false) => true,
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                _ => false,
            };
            if !is_neutral {
                return Err(unsupported(field, v, why));
            }
        }
    }
    if let Some(v) = cfg.get("bias")
        && v.as_str() != Some("none")
    {
        return Err(unsupported("bias", v, "trained biases are not applied"));
    }
    if let Some(v) = cfg.get("init_lora_weights")
        && let Some(s) = v.as_str()
        && ["pissa", "olora", "loftq", "corda"]
            .iter()
            .any(|p| s.starts_with(p))
    {
        return Err(unsupported(
            "init_lora_weights",
            v,
            "this init also changes the base weights; convert the adapter with PEFT's path_initial_model_for_weight_conversion first",
        ));
    }
    let r = cfg
        .get("r")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("adapter_config.json has no integer 'r'".into()))? as usize;
    let alpha = cfg
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("adapter_config.json has no numeric 'lora_alpha'".into()))?;
    let dropout = cfg
        .get("lora_dropout")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let targets = match cfg.get("target_modules") {
        Some(Value::String(s)) => TargetSpec::One(s.clone()),
        Some(Value::Array(list)) => TargetSpec::List(
            list.iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .ok_or_else(|| bad("target_modules must hold strings".into()))
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(bad("adapter_config.json has no target_modules".into())),
    };
    let layers_to_transform = match cfg.get("layers_to_transform") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(vec![n.as_u64().unwrap_or(0) as usize]),
        Some(Value::Array(list)) => Some(
            list.iter()
                .filter_map(Value::as_u64)
                .map(|n| n as usize)
                .collect(),
        ),
        Some(other) => {
            return Err(bad(format!(
                "layers_to_transform {other} is not a list of layer indices"
            )));
        }
    };
    if let Some(p) = cfg.get("layers_pattern") {
        let ok = match p {
            Value::Null => true,
            Value::String(s) => s == "layers",
            Value::Array(a) => a.iter().all(|x| x.as_str() == Some("layers")),
            _ => false,
        };
        if !ok {
            return Err(unsupported(
                "layers_pattern",
                p,
                "decoder layers are named 'layers' in every supported family",
            ));
        }
    }
    let rank_pattern: IndexMap<String, usize> = match cfg.get("rank_pattern") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                v.as_u64()
                    .map(|r| (k.clone(), r as usize))
                    .ok_or_else(|| bad(format!("rank_pattern['{k}'] is not an integer")))
            })
            .collect::<Result<_, _>>()?,
        _ => IndexMap::new(),
    };
    let alpha_pattern: IndexMap<String, f64> = match cfg.get("alpha_pattern") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                v.as_f64()
                    .map(|a| (k.clone(), a))
                    .ok_or_else(|| bad(format!("alpha_pattern['{k}'] is not a number")))
            })
            .collect::<Result<_, _>>()?,
        _ => IndexMap::new(),
    };
    let init = match cfg.get("init_lora_weights").and_then(Value::as_str) {
        Some("gaussian") => InitKind::Gaussian,
        _ => InitKind::Default,
    };
    Ok(LoraSettings {
        r,
        alpha,
        dropout,
        targets,
        rslora: cfg
            .get("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        dora: cfg
            .get("use_dora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        init,
        layers_to_transform,
        rank_pattern,
        alpha_pattern,
    })
}

/// An adapter folder's `adapter_config.json`: the settings burnish applies and the base model it
/// names (`base_model_name_or_path`).
pub fn read_adapter_config(dir: &Path) -> Result<(LoraSettings, Option<String>), LoraError> {
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|source| LoraError::Io {
        path: config_path.clone(),
        source,
    })?;
    let cfg: Map<String, Value> =
        serde_json::from_str(&text).map_err(|e| LoraError::BadAdapter {
            path: config_path.clone(),
            message: format!("invalid JSON: {e}"),
        })?;
    let settings = settings_from_config(&config_path, &cfg)?;
    let base_model = cfg
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .map(String::from);
    Ok((settings, base_model))
}

/// Read an adapter folder and check it against the base model's config: every tensor must be a
/// LoRA factor (or DoRA magnitude) of a targeted module with the right shape, and every
/// targeted module must have both factors (and, with `use_dora`, its magnitude).
pub fn read_adapter(dir: &Path, config: &ModelConfig) -> Result<AdapterFiles, LoraError> {
    let config_path = dir.join(CONFIG_FILE);
    let (settings, base_model) = read_adapter_config(dir)?;
    let targets = settings
        .resolve(config)
        .map_err(|e| LoraError::BadAdapter {
            path: config_path.clone(),
            message: e.to_string(),
        })?;

    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path).map_err(|source| LoraError::Io {
        path: weights_path.clone(),
        source,
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| LoraError::BadAdapter {
        path: weights_path.clone(),
        message: format!("not a valid safetensors file ({e}); it may be truncated or corrupt"),
    })?;
    let mut problems = Vec::new();
    // (layer, module, part) -> (shape, values)
    type Found = BTreeMap<(usize, &'static str, Part), (Vec<usize>, Vec<f32>)>;
    let mut found: Found = BTreeMap::new();
    for (name, view) in st.tensors() {
        let Some((layer, module, part)) = parse_peft_key(&name) else {
            problems.push(format!(
                "unexpected tensor {name} (not a LoRA factor of a decoder projection)"
            ));
            continue;
        };
        if part == Part::Magnitude && !settings.dora {
            problems.push(format!(
                "tensor {name} is a DoRA magnitude but adapter_config.json has no \"use_dora\": true"
            ));
            continue;
        }
        let raw = crate::model::weights::RawTensor {
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            bytes: view.data(),
        };
        if let Some((count, first)) = raw.non_finite() {
            problems.push(crate::lora::merge::non_finite_message(&name, count, first));
        }
        match raw.to_f32() {
            Ok(values) => {
                found.insert((layer, module, part), (view.shape().to_vec(), values));
            }
            Err(dtype) => problems.push(format!("tensor {name} has unsupported dtype {dtype}")),
        }
    }
    let mut factors = BTreeMap::new();
    for t in &targets {
        let a = found.remove(&(t.layer, t.module, Part::A));
        let b = found.remove(&(t.layer, t.module, Part::B));
        let magnitude = match found.remove(&(t.layer, t.module, Part::Magnitude)) {
            Some((shape, m)) => {
                if shape != [t.out_features] {
                    problems.push(format!(
                        "tensor {} has shape {shape:?}, expected [{}] for this base model",
                        magnitude_key(t.layer, t.module),
                        t.out_features
                    ));
                }
                Some(m)
            }
            None => {
                if t.dora {
                    problems.push(format!(
                        "missing tensor {} (the adapter uses DoRA)",
                        magnitude_key(t.layer, t.module)
                    ));
                }
                None
            }
        };
        let key_a = peft_key(t.layer, t.module, true);
        let key_b = peft_key(t.layer, t.module, false);
        match (a, b) {
            (Some((sa, a)), Some((sb, b))) => {
                let want_a = vec![t.r, t.in_features];
                let want_b = vec![t.out_features, t.r];
                if sa != want_a {
                    problems.push(format!("tensor {key_a} has shape {sa:?}, expected {want_a:?} for this base model and rank"));
                }
                if sb != want_b {
                    problems.push(format!("tensor {key_b} has shape {sb:?}, expected {want_b:?} for this base model and rank"));
                }
                factors.insert(
                    (t.layer, t.module),
                    HostFactors {
                        r: t.r,
                        in_features: t.in_features,
                        out_features: t.out_features,
                        a,
                        b,
                        scaling: t.scaling,
                        magnitude,
                    },
                );
            }
            (a, b) => {
                if a.is_none() {
                    problems.push(format!("missing tensor {key_a}"));
                }
                if b.is_none() {
                    problems.push(format!("missing tensor {key_b}"));
                }
            }
        }
    }
    for (layer, module, part) in found.keys() {
        let key = match part {
            Part::A => peft_key(*layer, module, true),
            Part::B => peft_key(*layer, module, false),
            Part::Magnitude => magnitude_key(*layer, module),
        };
        problems.push(format!(
            "tensor {key} belongs to a module the adapter config does not target"
        ));
    }
    if !problems.is_empty() {
        return Err(LoraError::TensorMismatch {
            path: weights_path,
            problems,
        });
    }
    Ok(AdapterFiles {
        dir: dir.to_path_buf(),
        settings,
        base_model,
        factors,
    })
}
