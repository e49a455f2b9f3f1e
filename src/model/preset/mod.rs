//! Built-in model presets: small Qwen2-architecture models that burnish initialises
//! deterministically from a seed, with the real Qwen2.5 tokenizer (committed in this folder,
//! Apache-2.0, from Qwen's releases). They let the demo and the tests run offline; their weights
//! are random, so they show the pipeline, not model quality.
//!
//! A preset is written once as an ordinary HF model folder under the burnish cache
//! (`$BURNISH_HOME`, else `$XDG_CACHE_HOME/burnish`, else `~/.cache/burnish`), so every command
//! (train, merge, generate, eval) treats it like any other local model.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::config::ModelConfig;
use super::error::ModelError;
use super::safetensors_out::{F32Tensor, write_f32};
use crate::rng::fnv1a;

const TOKENIZER_JSON: &[u8] = include_bytes!("tokenizer.json");
const CHAT_TEMPLATE: &str = include_str!("chat_template_qwen2_5.jinja");
pub const PREFIX: &str = "builtin:";

struct PresetSpec {
    name: &'static str,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    seed: u64,
    /// Embedding std: large enough that a LoRA on the frozen random model can sharpen its
    /// predictions (logit std ~ sqrt(hidden) * std).
    embed_std: f64,
    weight_std: f64,
}

const PRESETS: &[PresetSpec] = &[PresetSpec {
    name: "tiny-qwen2",
    hidden: 128,
    intermediate: 384,
    layers: 4,
    heads: 4,
    kv_heads: 2,
    seed: 20241,
    embed_std: 0.1,
    weight_std: 0.05,
}];

/// Names accepted after `builtin:`.
pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

pub fn cache_root() -> PathBuf {
    if let Some(home) = std::env::var_os("BURNISH_HOME") {
        return PathBuf::from(home);
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("burnish");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache").join("burnish"))
        .unwrap_or_else(|| PathBuf::from(".burnish-cache"))
}

fn config_json(p: &PresetSpec) -> serde_json::Value {
    json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": p.hidden,
        "intermediate_size": p.intermediate,
        "num_hidden_layers": p.layers,
        "num_attention_heads": p.heads,
        "num_key_value_heads": p.kv_heads,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": true,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "use_sliding_window": false,
        "sliding_window": 32768,
        "attention_dropout": 0.0,
        "initializer_range": p.weight_std,
        "burnish_preset": format!("{PREFIX}{}", p.name),
    })
}

fn tokenizer_config() -> serde_json::Value {
    json!({
        "add_bos_token": false,
        "add_prefix_space": false,
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": null,
        "model_max_length": 32768,
        "errors": "replace",
        "split_special_tokens": false,
        "tokenizer_class": "Qwen2Tokenizer",
        "chat_template": CHAT_TEMPLATE,
    })
}

/// The folder of preset `name`, creating it on first use.
pub fn materialize(name: &str) -> Result<PathBuf, ModelError> {
    let spec =
        PRESETS
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| ModelError::NotAModelFolder {
                dir: PathBuf::from(format!("{PREFIX}{name}")),
                missing: format!(
                    "a preset of that name (built-in presets: {})",
                    names().join(", ")
                ),
            })?;
    let config = config_json(spec);
    // The folder name carries a hash of everything that defines the weights, so a changed
    // preset never reuses stale files.
    let fingerprint = fnv1a(format!("{config}{}{}", spec.embed_std, spec.seed).as_bytes());
    let dir = cache_root()
        .join("presets")
        .join(format!("{name}-{fingerprint:016x}"));
    if dir.join("model.safetensors").is_file() {
        return Ok(dir);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let write = |file: &str, bytes: &[u8]| -> Result<(), ModelError> {
        let path = tmp.join(file);
        std::fs::write(&path, bytes).map_err(io(&path))
    };
    write(
        "config.json",
        serde_json::to_string_pretty(&config)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    write("tokenizer.json", TOKENIZER_JSON)?;
    write(
        "tokenizer_config.json",
        serde_json::to_string_pretty(&tokenizer_config())
            .unwrap_or_default()
            .as_bytes(),
    )?;
    write(
        "generation_config.json",
        serde_json::to_string_pretty(&json!({
            "bos_token_id": 151643,
            "eos_token_id": [151645, 151643],
            "pad_token_id": 151643,
            "do_sample": true,
            "temperature": 0.7,
            "top_p": 0.8,
            "top_k": 20,
        }))
        .unwrap_or_default()
        .as_bytes(),
    )?;
    let model_config = ModelConfig::from_json(&config.to_string())?;
    write_weights(spec, &model_config, &tmp.join("model.safetensors"))?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another process finished first: its identical folder wins.
        Err(_) if dir.join("model.safetensors").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(ModelError::Io {
            path: dir,
            source: e,
        }),
    }
}

fn write_weights(spec: &PresetSpec, config: &ModelConfig, path: &Path) -> Result<(), ModelError> {
    let expected = config.expected_tensors();
    let mut values_of = Vec::with_capacity(expected.len());
    for t in &expected {
        let n: usize = t.shape.iter().product();
        let values: Vec<f32> = if t.name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if t.name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            let std = if t.name.contains("embed_tokens") {
                spec.embed_std
            } else {
                spec.weight_std
            };
            let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ fnv1a(t.name.as_bytes()));
            (0..n)
                .map(|_| (crate::rng::standard_normal(&mut rng) * std) as f32)
                .collect()
        };
        values_of.push(values);
    }
    let tensors: Vec<F32Tensor<'_>> = expected
        .iter()
        .zip(&values_of)
        .map(|(t, v)| F32Tensor {
            name: &t.name,
            shape: t.shape.clone(),
            values: v,
        })
        .collect();
    write_f32(path, &tensors, &[("format", "pt")]).map_err(|reason| ModelError::BadSafetensors {
        path: path.to_path_buf(),
        reason,
    })
}
