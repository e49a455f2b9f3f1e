//! How each family's `config.json` keys become the decoder's settings where the families
//! differ: which layers slide and by how much, the MLP activation, Gemma 2's soft caps,
//! Gemma 3's sliding-layer RoPE base and the Gemma options burnish refuses. Each follows the transformers 5
//! configuration class of its family.

use super::arch::Architecture;
use super::config::{HfConfig, RopeParameters, SlidingWindow};
use super::kernels::Activation;

/// Transformers' default window where a config turns it on without a width.
const DEFAULT_SLIDING_WINDOW: usize = 4096;
/// Gemma3TextConfig's default: one full-attention layer in six.
const DEFAULT_GEMMA3_PATTERN: usize = 6;
/// Gemma3TextConfig's default RoPE base of sliding-window layers.
const DEFAULT_GEMMA3_LOCAL_THETA: f64 = 10_000.0;
/// Gemma2Config's soft caps of attention scores and output logits.
const DEFAULT_GEMMA2_ATTN_SOFTCAP: Option<f64> = Some(50.0);
const DEFAULT_GEMMA2_FINAL_SOFTCAP: Option<f64> = Some(30.0);
/// Qwen2/Qwen3's default count of leading full-attention layers.
const DEFAULT_MAX_WINDOW_LAYERS: usize = 28;

/// Which layers slide, and by how much, the way transformers reads it: Mistral slides every
/// layer unless `sliding_window` is `null`; Qwen2 and Qwen3 only with `use_sliding_window`,
/// in the layers `layer_types` names (by default those from `max_window_layers` on); Llama
/// never.
pub(super) fn sliding_window(
    raw: &HfConfig,
    arch: Architecture,
) -> Result<Option<SlidingWindow>, String> {
    let width = |w: Option<Option<usize>>| w.unwrap_or(Some(DEFAULT_SLIDING_WINDOW));
    let layers = raw.num_hidden_layers;
    let (width, sliding) = match arch {
        Architecture::Llama => return Ok(None),
        Architecture::Mistral => (width(raw.sliding_window), vec![true; layers]),
        Architecture::Gemma2 => {
            // Gemma2Config: layer_types, else every other layer slides, from the first.
            let sliding = match &raw.layer_types {
                Some(types) => layer_types(types, layers)?,
                None => (0..layers).map(|i| (i + 1) % 2 != 0).collect(),
            };
            (width(raw.sliding_window), sliding)
        }
        Architecture::Gemma3 => {
            // Gemma3TextConfig: layer_types, else every `sliding_window_pattern`-th layer (6)
            // attends fully.
            let sliding = match &raw.layer_types {
                Some(types) => layer_types(types, layers)?,
                None => {
                    let pattern = raw.sliding_window_pattern.unwrap_or(DEFAULT_GEMMA3_PATTERN);
                    if pattern == 0 {
                        return Err("sliding_window_pattern must be > 0".into());
                    }
                    (0..layers).map(|i| (i + 1) % pattern != 0).collect()
                }
            };
            if raw.sliding_window == Some(None) && sliding.contains(&true) {
                return Err(
                    "sliding_window is null but layer_types has sliding layers (Gemma 3 needs a width)".into(),
                );
            }
            (width(raw.sliding_window), sliding)
        }
        Architecture::Qwen2 | Architecture::Qwen3 => {
            if raw.use_sliding_window != Some(true) {
                return Ok(None);
            }
            let sliding = match &raw.layer_types {
                Some(types) => layer_types(types, layers)?,
                None => {
                    let first = raw.max_window_layers.unwrap_or(DEFAULT_MAX_WINDOW_LAYERS);
                    (0..layers).map(|i| i >= first).collect()
                }
            };
            (width(raw.sliding_window), sliding)
        }
    };
    match width {
        None => Ok(None),
        Some(0) => Err("sliding_window must be > 0 (or null for full attention)".into()),
        Some(_) if !sliding.contains(&true) => Ok(None),
        Some(width) => Ok(Some(SlidingWindow {
            width,
            layers: sliding,
        })),
    }
}

/// The MLP activation: `hidden_act` (Gemma: `hidden_activation`), SiLU (Gemma: GELU-tanh) when
/// absent.
pub(super) fn activation(raw: &HfConfig, gemma: bool) -> Result<Activation, String> {
    let (key, name) = if gemma {
        ("hidden_activation", raw.hidden_activation.as_deref())
    } else {
        ("hidden_act", raw.hidden_act.as_deref())
    };
    let Some(name) = name else {
        return Ok(if gemma {
            Activation::GeluTanh
        } else {
            Activation::Silu
        });
    };
    Activation::from_hf(name).ok_or_else(|| {
        format!("{key} '{name}' is not supported (supported: silu, gelu_pytorch_tanh, gelu_new)")
    })
}

/// Gemma options burnish does not compute: refused rather than trained wrongly.
pub(super) fn refuse_unsupported_gemma(raw: &HfConfig) -> Result<(), String> {
    if raw.use_bidirectional_attention == Some(true) {
        return Err(
            "use_bidirectional_attention is true (an embedding model); burnish trains causal language models".into(),
        );
    }
    Ok(())
}

/// The attention and final logit soft caps `(attn, final)`: Gemma2Config's 50 and 30 when
/// the keys are absent (`null` turns them off), Gemma3TextConfig's none.
pub(super) fn softcapping(
    raw: &HfConfig,
    arch: Architecture,
) -> Result<(Option<f64>, Option<f64>), String> {
    let (attn, last) = if arch == Architecture::Gemma2 {
        (DEFAULT_GEMMA2_ATTN_SOFTCAP, DEFAULT_GEMMA2_FINAL_SOFTCAP)
    } else {
        (None, None)
    };
    let attn = raw.attn_logit_softcapping.unwrap_or(attn);
    let last = raw.final_logit_softcapping.unwrap_or(last);
    for (key, value) in [
        ("attn_logit_softcapping", attn),
        ("final_logit_softcapping", last),
    ] {
        if let Some(v) = value
            && !(v.is_finite() && v > 0.0)
        {
            return Err(format!("{key} is {v}; it must be > 0 (or null for no cap)"));
        }
    }
    Ok((attn, last))
}

/// Gemma 3's sliding-window layers: default RoPE with their own base (`rope_parameters`'
/// `sliding_attention`, else `rope_local_base_freq`, else 10,000).
pub(super) fn sliding_rope_theta(
    raw: &HfConfig,
    params: Option<&RopeParameters>,
) -> Result<f64, String> {
    if let Some(p) = params {
        let kind = p.rope_type.as_deref().or(p.legacy_type.as_deref());
        if !matches!(kind, None | Some("default")) {
            return Err(format!(
                "rope_parameters.sliding_attention has rope_type '{}'; only 'default' is supported there",
                kind.unwrap_or_default()
            ));
        }
    }
    Ok(params
        .and_then(|p| p.rope_theta)
        .or(raw.rope_local_base_freq)
        .unwrap_or(DEFAULT_GEMMA3_LOCAL_THETA))
}

fn layer_types(types: &[String], layers: usize) -> Result<Vec<bool>, String> {
    if types.len() != layers {
        return Err(format!(
            "layer_types has {} entries but num_hidden_layers is {layers}",
            types.len()
        ));
    }
    types
        .iter()
        .enumerate()
        .map(|(i, t)| match t.as_str() {
            "full_attention" => Ok(false),
            "sliding_attention" => Ok(true),
            other => Err(format!(
                "layer_types[{i}] is '{other}'; supported: full_attention, sliding_attention"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, ModelError};

    fn window(arch: &str, extra: serde_json::Value) -> Result<Option<SlidingWindow>, ModelError> {
        let mut cfg = serde_json::json!({
            "architectures": [arch], "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 3, "num_attention_heads": 2, "vocab_size": 10
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            cfg[k] = v.clone();
        }
        ModelConfig::from_json(&cfg.to_string()).map(|c| c.sliding_window)
    }

    fn slides(width: usize, layers: &[bool]) -> Option<SlidingWindow> {
        Some(SlidingWindow {
            width,
            layers: layers.to_vec(),
        })
    }

    /// The defaults of transformers' configuration classes (5.x): MistralConfig's window is
    /// 4096 unless set to null; Qwen2Config/Qwen3Config slide only with use_sliding_window,
    /// from layer max_window_layers (28) on, or where layer_types says.
    #[test]
    fn sliding_window_is_read_as_transformers_reads_it() {
        let m = "MistralForCausalLM";
        assert_eq!(
            window(m, serde_json::json!({})).unwrap(),
            slides(4096, &[true; 3])
        );
        let null = serde_json::json!({"sliding_window": null});
        assert_eq!(window(m, null.clone()).unwrap(), None);
        let w = serde_json::json!({"sliding_window": 7});
        assert_eq!(window(m, w.clone()).unwrap(), slides(7, &[true; 3]));
        let q = "Qwen2ForCausalLM";
        assert_eq!(window(q, w).unwrap(), None);
        let on = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"use_sliding_window": true});
            for (k, x) in extra.as_object().into_iter().flatten() {
                v[k] = x.clone();
            }
            v
        };
        // 28 full layers by default: a 3-layer model never slides.
        assert_eq!(window(q, on(serde_json::json!({}))).unwrap(), None);
        let from1 = on(serde_json::json!({"max_window_layers": 1, "sliding_window": 5}));
        assert_eq!(window(q, from1).unwrap(), slides(5, &[false, true, true]));
        let types = on(serde_json::json!({
            "max_window_layers": 1,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]
        }));
        assert_eq!(
            window("Qwen3ForCausalLM", types).unwrap(),
            slides(4096, &[true, false, true])
        );
        assert_eq!(window(q, on(null)).unwrap(), None);
        assert_eq!(
            window("LlamaForCausalLM", serde_json::json!({"sliding_window": 4})).unwrap(),
            None
        );
        let zero = window(m, serde_json::json!({"sliding_window": 0})).unwrap_err();
        assert!(
            zero.to_string().contains("sliding_window must be > 0"),
            "{zero}"
        );
    }
}
