//! `burnish inspect <MODEL_DIR> [--json]`: what a model folder (or a PEFT adapter folder,
//! `inspect_adapter`) holds.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

use crate::model::config::RopeScaling;
use crate::model::{ModelConfig, WeightFiles};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A Hugging Face model folder (config.json alone is enough for the counts), or a PEFT
    /// adapter folder.
    pub model: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.model.is_dir()
        && !args.model.join("config.json").exists()
        && args.model.join(crate::lora::peft::CONFIG_FILE).is_file()
    {
        return super::inspect_adapter::run(&args.model, args.json);
    }
    let config_path = if args.model.is_file() {
        args.model.clone()
    } else {
        args.model.join("config.json")
    };
    let config = ModelConfig::from_file(&config_path)
        .with_context(|| format!("inspecting {}", args.model.display()))?;
    let dir = config_path.parent().map(PathBuf::from).unwrap_or_default();
    // Weights are optional: with config.json alone the counts still come from the config.
    let weights = match crate::model::weights::shard_paths(&dir) {
        Ok(_) => Some(WeightFiles::open(&dir)?),
        Err(crate::model::ModelError::NoWeights { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let disk_dtype = weights
        .as_ref()
        .and_then(WeightFiles::dominant_dtype)
        .map(|d| format!("{d:?}").to_lowercase());
    if let Some(w) = &weights {
        w.validate(&config)?;
    }
    let params = config.parameter_count();
    if args.json {
        let v = json!({
            "architecture": config.architecture.class_name(),
            "model_type": config.architecture.model_type(),
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_layers": config.num_layers,
            "num_attention_heads": config.num_heads,
            "num_key_value_heads": config.num_kv_heads,
            "head_dim": config.head_dim,
            "vocab_size": config.vocab_size,
            "tie_word_embeddings": config.tie_word_embeddings,
            "qkv_bias": config.qkv_bias,
            "qk_norm": config.qk_norm,
            "activation": config.activation.hf_name(),
            "attention_scale": config.attention_scale(),
            "rope_theta": config.rope_theta,
            "sliding_rope_theta": config.sliding_rope_theta,
            "attn_logit_softcapping": config.attn_logit_softcapping,
            "final_logit_softcapping": config.final_logit_softcapping,
            "rope_scaling": rope_scaling_json(&config.rope_scaling),
            "sliding_window": config.sliding_window.as_ref().map(|w| json!({
                "width": w.width,
                "layers": sliding_layers(&w.layers),
            })),
            "config_dtype": config.dtype,
            "disk_dtype": disk_dtype,
            "parameters": params,
            "weights_present": weights.is_some(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let attn = if config.num_kv_heads == config.num_heads {
            "multi-head".to_string()
        } else {
            format!(
                "grouped-query, {} query heads per kv head",
                config.num_heads / config.num_kv_heads
            )
        };
        println!("architecture     {}", config.architecture);
        println!("layers           {}", config.num_layers);
        println!(
            "hidden size      {} (intermediate {})",
            config.hidden_size, config.intermediate_size
        );
        println!(
            "attention heads  {} / {} kv ({attn}), head dim {}",
            config.num_heads, config.num_kv_heads, config.head_dim
        );
        println!("vocab            {}", config.vocab_size);
        println!(
            "embeddings       {}",
            if config.tie_word_embeddings {
                "tied (lm_head = embed_tokens)"
            } else {
                "untied (separate lm_head)"
            }
        );
        println!("mlp              {}-gated", config.activation.hf_name());
        if let Some(q) = config.query_pre_attn_scalar {
            println!("attention scale  1/sqrt({q}) (query_pre_attn_scalar)");
        }
        for (what, cap) in [
            ("attention", config.attn_logit_softcapping),
            ("logits", config.final_logit_softcapping),
        ] {
            if let Some(cap) = cap {
                println!("soft cap         {what} at {cap} (cap * tanh(x / cap))");
            }
        }
        match config.sliding_rope_theta {
            Some(local) => println!(
                "rope theta       {} (sliding-window layers: {local}, unscaled)",
                config.rope_theta
            ),
            None => println!("rope theta       {}", config.rope_theta),
        }
        println!(
            "rope scaling     {}",
            rope_scaling_text(&rope_scaling_json(&config.rope_scaling))
        );
        match &config.sliding_window {
            Some(w) => {
                let n = sliding_layers(&w.layers).len();
                let which = if n == config.num_layers {
                    "every layer".to_string()
                } else {
                    format!("{n} of {} layers, full in the rest", config.num_layers)
                };
                println!(
                    "attention        sliding window of {} keys in {which}",
                    w.width
                )
            }
            None => println!("attention        full (no sliding window)"),
        }
        match &disk_dtype {
            Some(d) => println!("dtype on disk    {d}"),
            None => println!(
                "dtype on disk    (no weights; config says {})",
                config.dtype.as_deref().unwrap_or("nothing")
            ),
        }
        println!("parameters       {}", group_digits(params));
    }
    Ok(ExitCode::SUCCESS)
}

/// The scaling as applied (YaRN's cos/sin factor derived), or null.
fn rope_scaling_json(scaling: &RopeScaling) -> serde_json::Value {
    match scaling {
        RopeScaling::None => serde_json::Value::Null,
        RopeScaling::Linear { factor } => json!({"type": "linear", "factor": factor}),
        RopeScaling::Llama3 {
            factor,
            original_max_position_embeddings,
            ..
        } => json!({
            "type": "llama3",
            "factor": factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            ..
        } => json!({
            "type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": original_max_position_embeddings,
            "attention_factor": scaling.attention_factor(),
        }),
    }
}

/// One line of [`rope_scaling_json`]: `yarn, x4 from 32768 positions, cos/sin x1.1386`.
fn rope_scaling_text(v: &serde_json::Value) -> String {
    let Some(kind) = v["type"].as_str() else {
        return "none".into();
    };
    let mut text = format!("{kind}, x{}", v["factor"].as_f64().unwrap_or(1.0));
    if let Some(n) = v["original_max_position_embeddings"].as_u64() {
        text += &format!(" from {n} positions");
    }
    if let Some(a) = v["attention_factor"].as_f64() {
        text += &format!(", cos/sin x{a:.4}");
    }
    text
}

/// Indices of the layers that slide.
fn sliding_layers(layers: &[bool]) -> Vec<usize> {
    (0..layers.len()).filter(|&i| layers[i]).collect()
}

/// 494032768 -> "494,032,768".
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
