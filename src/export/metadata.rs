//! The `general.*` and `<arch>.*` metadata keys of a GGUF model, as convert_hf_to_gguf.py
//! writes them (`TextModel.set_gguf_parameters`, `LlamaModel.set_gguf_parameters`) and
//! llama.cpp reads them (src/llama-arch.cpp `LLM_KV_NAMES`).

use super::error::ExportError;
use super::gguf::Value;
use super::names::gguf_arch;
use super::types::ExportType;
use crate::model::ModelConfig;
use crate::model::arch::Architecture;
use crate::model::config::RopeScaling;

/// What describes the model beyond its config.
pub struct Describe<'a> {
    pub name: &'a str,
    pub license: Option<&'a str>,
    /// Every value of every tensor written (what `general.size_label` rounds).
    pub parameters: u64,
}

/// `gguf.utility.model_weight_count_rounded_notation`: "494M", "1.5B", "7.6B".
pub fn size_label(n: u64) -> String {
    let n = n as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let int_digits = format!("{}", scaled.round() as u64)
        .trim_start_matches('0')
        .len();
    let decimals = 2usize.saturating_sub(int_digits);
    format!("{scaled:.decimals$}{suffix}")
}

/// General and hyperparameter keys, in the order the reference converter writes them.
pub fn model_keys(
    config: &ModelConfig,
    ftype: ExportType,
    info: &Describe<'_>,
) -> Result<Vec<(String, Value)>, ExportError> {
    let arch = gguf_arch(config.architecture);
    let k = |suffix: &str| format!("{arch}.{suffix}");
    let u32_of = |what: &str, v: usize| {
        u32::try_from(v).map_err(|_| ExportError::Unsupported {
            what: what.to_string(),
            why: format!("{v} does not fit GGUF's 32-bit field"),
        })
    };
    let mut kv: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::Str(arch.into())),
        ("general.type".into(), Value::Str("model".into())),
        ("general.name".into(), Value::Str(info.name.into())),
        (
            "general.size_label".into(),
            Value::Str(size_label(info.parameters)),
        ),
    ];
    if let Some(l) = info.license {
        kv.push(("general.license".into(), Value::Str(l.into())));
    }
    kv.extend([
        (
            k("block_count"),
            Value::U32(u32_of("num_hidden_layers", config.num_layers)?),
        ),
        (
            k("context_length"),
            Value::U32(u32_of(
                "max_position_embeddings",
                config.max_position_embeddings,
            )?),
        ),
        (
            k("embedding_length"),
            Value::U32(u32_of("hidden_size", config.hidden_size)?),
        ),
        (
            k("feed_forward_length"),
            Value::U32(u32_of("intermediate_size", config.intermediate_size)?),
        ),
        (
            k("attention.head_count"),
            Value::U32(u32_of("num_attention_heads", config.num_heads)?),
        ),
        (
            k("attention.head_count_kv"),
            Value::U32(u32_of("num_key_value_heads", config.num_kv_heads)?),
        ),
    ]);
    match &config.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            kv.push((k("rope.scaling.type"), Value::Str("linear".into())));
            kv.push((k("rope.scaling.factor"), Value::F32(*factor as f32)));
        }
        // llama.cpp's converter writes the optional YaRN keys only where the config has them.
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            attention_factor,
            beta_fast,
            beta_slow,
            ..
        } => {
            kv.push((k("rope.scaling.type"), Value::Str("yarn".into())));
            kv.push((k("rope.scaling.factor"), Value::F32(*factor as f32)));
            kv.push((
                k("rope.scaling.original_context_length"),
                Value::U32(u32_of(
                    "original_max_position_embeddings",
                    *original_max_position_embeddings,
                )?),
            ));
            for (key, value) in [
                ("rope.scaling.yarn_attn_factor", attention_factor),
                ("rope.scaling.yarn_beta_fast", beta_fast),
                ("rope.scaling.yarn_beta_slow", beta_slow),
            ] {
                if let Some(v) = value {
                    kv.push((k(key), Value::F32(*v as f32)));
                }
            }
        }
        // Carried by the `rope_freqs.weight` tensor (see `rope_freq_factors`).
        RopeScaling::Llama3 { .. } if arch == "llama" => {}
        RopeScaling::Llama3 { .. } => {
            return Err(ExportError::Unsupported {
                what: format!("{} with llama3 rope scaling", config.architecture),
                why: "llama.cpp applies llama3 scaling only to the llama architecture".into(),
            });
        }
    }
    kv.push((k("rope.freq_base"), Value::F32(config.rope_theta as f32)));
    if let Some(local) = config.sliding_rope_theta {
        kv.push((k("rope.freq_base_swa"), Value::F32(local as f32)));
    }
    kv.push((
        k("attention.layer_norm_rms_epsilon"),
        Value::F32(config.rms_norm_eps as f32),
    ));
    // llama.cpp derives the head size from embedding / heads unless told; Qwen3 (and any config
    // with an explicit head_dim) needs it.
    let head_dim = u32_of("head_dim", config.head_dim)?;
    kv.push((k("attention.key_length"), Value::U32(head_dim)));
    kv.push((k("attention.value_length"), Value::U32(head_dim)));
    kv.push(("general.file_type".into(), Value::U32(ftype.file_type())));
    if let Some(pattern) = default_sliding_pattern(config.architecture)
        && let Some(w) = &config.sliding_window
    {
        kv.push((
            k("attention.sliding_window"),
            Value::U32(u32_of("sliding_window", w.width)?),
        ));
        // llama.cpp assumes Gemma 3's five sliding layers to one full (Gemma 2's one to one);
        // any other layout is spelled out per layer (which it reads as an array of flags).
        let default: Vec<bool> = (0..config.num_layers)
            .map(|i| (i + 1) % pattern != 0)
            .collect();
        if w.layers != default {
            kv.push((
                k("attention.sliding_window_pattern"),
                Value::BoolArray(w.layers.clone()),
            ));
        }
    }
    for (key, cap) in [
        ("attn_logit_softcapping", config.attn_logit_softcapping),
        ("final_logit_softcapping", config.final_logit_softcapping),
    ] {
        if let Some(cap) = cap {
            kv.push((k(key), Value::F32(cap as f32)));
        }
    }
    if arch == "llama" {
        kv.push((
            k("vocab_size"),
            Value::U32(u32_of("vocab_size", config.vocab_size)?),
        ));
        kv.push((k("rope.dimension_count"), Value::U32(head_dim)));
    }
    // GGML_QUANT_VERSION: the current k-quant and legacy block layouts.
    kv.push(("general.quantization_version".into(), Value::U32(2)));
    Ok(kv)
}

/// One full-attention layer in how many, where llama.cpp's Gemma graphs assume a layout when
/// the GGUF gives none (`load_swa_pattern`): Gemma 3's 6, Gemma 2's 2.
fn default_sliding_pattern(arch: Architecture) -> Option<usize> {
    match arch {
        Architecture::Gemma3 => Some(6),
        Architecture::Gemma2 => Some(2),
        _ => None,
    }
}

/// Refuse what llama.cpp would run differently from transformers. Its Gemma graphs scale
/// scores by `head_dim^-1/2` (the 27B, 62 layers in Gemma 3 and 46 in Gemma 2, by
/// `(hidden / heads)^-1/2`) and do not read `query_pre_attn_scalar`; they have no GELU other
/// than the tanh form Gemma uses. Its `gemma2` graph always soft-caps both attention and
/// logits and always ties the output projection to the embedding; `gemma3` caps only logits.
pub fn check_llama_cpp_can_run(config: &ModelConfig) -> Result<(), ExportError> {
    let arch = config.architecture;
    let name = match arch {
        Architecture::Gemma3 => "Gemma 3",
        Architecture::Gemma2 => "Gemma 2",
        _ => return Ok(()),
    };
    let big = if arch == Architecture::Gemma3 { 62 } else { 46 };
    let derived = if config.num_layers == big {
        (config.hidden_size / config.num_heads.max(1)) as f64
    } else {
        config.head_dim as f64
    };
    if let Some(q) = config.query_pre_attn_scalar
        && q != derived
    {
        return Err(ExportError::Unsupported {
            what: format!("this {name} model (query_pre_attn_scalar {q})"),
            why: format!(
                "llama.cpp's {} graph scales attention by 1/sqrt({derived}) for a model of \
                 this shape and reads no query_pre_attn_scalar, so it would compute another model",
                gguf_arch(arch)
            ),
        });
    }
    if arch == Architecture::Gemma3
        && let Some(cap) = config.attn_logit_softcapping
    {
        return Err(ExportError::Unsupported {
            what: format!("this Gemma 3 model (attn_logit_softcapping {cap})"),
            why: "llama.cpp's gemma3 graph does not soft-cap attention scores".into(),
        });
    }
    if arch == Architecture::Gemma2 {
        for (key, cap) in [
            ("attn_logit_softcapping", config.attn_logit_softcapping),
            ("final_logit_softcapping", config.final_logit_softcapping),
        ] {
            if cap.is_none() {
                return Err(ExportError::Unsupported {
                    what: format!("this Gemma 2 model ({key} null)"),
                    why: "llama.cpp's gemma2 graph always soft-caps (50 and 30 unless told), \
                          so it would compute another model"
                        .into(),
                });
            }
        }
        if !config.tie_word_embeddings {
            return Err(ExportError::Unsupported {
                what: "this Gemma 2 model (tie_word_embeddings false)".into(),
                why: "llama.cpp's gemma2 graph reads no output.weight; it projects with the \
                      token embedding"
                    .into(),
            });
        }
    }
    Ok(())
}

/// Llama 3.1's rope scaling as llama.cpp takes it: a `rope_freqs.weight` tensor of per-frequency
/// divisors (`LlamaModel.generate_extra_tensors`), or None without llama3 scaling.
pub fn rope_freq_factors(config: &ModelConfig) -> Option<Vec<f32>> {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    } = config.rope_scaling
    else {
        return None;
    };
    let dim = config.head_dim;
    // The converter computes in f32 (torch tensors), so this does too.
    let (factor, low, high) = (
        factor as f32,
        low_freq_factor as f32,
        high_freq_factor as f32,
    );
    let old_context = original_max_position_embeddings as f32;
    let low_wavelen = old_context / low;
    let high_wavelen = old_context / high;
    Some(
        (0..dim)
            .step_by(2)
            .map(|i| {
                let freq = 1.0f32 / (config.rope_theta as f32).powf(i as f32 / dim as f32);
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (old_context / wavelen - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_match_gguf_py() {
        assert_eq!(size_label(494_032_768), "494M");
        assert_eq!(size_label(1_543_714_304), "1.5B");
        assert_eq!(size_label(7_615_616_512), "7.6B");
        assert_eq!(size_label(140_000), "140K");
        assert_eq!(size_label(5_300), "5.3K");
    }

    /// The YaRN keys llama.cpp's converter writes for a Qwen2.5 long-context config: type,
    /// factor and original length always, the optional ones only where the config has them.
    #[test]
    fn yarn_keys_follow_the_converter() {
        let keys = |scaling: &str| {
            let text = format!(
                r#"{{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "vocab_size": 32, "rope_scaling": {scaling}}}"#
            );
            let config = ModelConfig::from_json(&text).unwrap();
            let info = Describe {
                name: "t",
                license: None,
                parameters: 1,
            };
            model_keys(&config, ExportType::F16, &info)
                .unwrap()
                .into_iter()
                .filter(|(k, _)| k.contains("rope.scaling"))
                .collect::<Vec<_>>()
        };
        let s = |k: &str| format!("qwen2.rope.scaling.{k}");
        assert_eq!(
            keys(r#"{"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}"#),
            vec![
                (s("type"), Value::Str("yarn".into())),
                (s("factor"), Value::F32(4.0)),
                (s("original_context_length"), Value::U32(32768)),
            ]
        );
        let full = keys(
            r#"{"rope_type": "yarn", "factor": 8, "original_max_position_embeddings": 4096,
            "attention_factor": 0.5, "beta_fast": 16, "beta_slow": 2, "mscale": 1}"#,
        );
        assert_eq!(
            full[3..],
            [
                (s("yarn_attn_factor"), Value::F32(0.5)),
                (s("yarn_beta_fast"), Value::F32(16.0)),
                (s("yarn_beta_slow"), Value::F32(2.0)),
            ]
        );
    }
}
