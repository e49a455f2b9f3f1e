//! The supported architectures, selected from `config.json` (`architectures`, then
//! `model_type`), and the few ways in which they differ.
//!
//! All share one decoder (RMSNorm, RoPE in `rotate_half` layout, grouped-query attention, a
//! gated MLP); this table, its family defaults and `family.rs` are the only places that know
//! their differences.

use std::fmt;

use super::config::HfConfig;
use super::error::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Qwen1.5, Qwen2, Qwen2.5: bias on q/k/v only; sliding window only with
    /// `use_sliding_window`.
    Qwen2,
    /// Llama 2/3, Yi, DeepSeek-LLM: optional `attention_bias` (q/k/v/o), `mlp_bias`, rope scaling.
    Llama,
    /// Mistral: Llama-shaped, no biases; every layer slides unless `sliding_window` is null.
    Mistral,
    /// Qwen3: per-head RMSNorm on q and k, explicit `head_dim`, optional `attention_bias`.
    Qwen3,
    /// Gemma 3 text models (`gemma-3-270m`, `gemma-3-1b`): Qwen3's q/k norms plus norms
    /// scaling by `1 + weight`, a norm after attention and around the MLP, GELU (tanh) gating,
    /// embeddings scaled by `sqrt(hidden_size)`, scores by `query_pre_attn_scalar^-1/2`, and
    /// sliding-window layers with their own RoPE base.
    Gemma3,
    /// Gemma 2 (`gemma-2-2b`, `9b`, `27b`): Gemma 3's norms, embedding scale and GELU gating
    /// without the q/k norms; attention scores and output logits soft-capped
    /// (`cap * tanh(x / cap)`), every other layer sliding, one RoPE base for all.
    Gemma2,
}

/// Per-family defaults for fields that `config.json` may leave out.
pub struct FamilyDefaults {
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub qkv_bias: bool,
    pub o_bias_follows_attention_bias: bool,
    pub qk_norm: bool,
    pub tie_word_embeddings: bool,
}

const TABLE: &[(Architecture, &str, &str)] = &[
    (Architecture::Qwen2, "Qwen2ForCausalLM", "qwen2"),
    (Architecture::Llama, "LlamaForCausalLM", "llama"),
    (Architecture::Mistral, "MistralForCausalLM", "mistral"),
    (Architecture::Qwen3, "Qwen3ForCausalLM", "qwen3"),
    (Architecture::Gemma3, "Gemma3ForCausalLM", "gemma3_text"),
    (Architecture::Gemma2, "Gemma2ForCausalLM", "gemma2"),
];

impl Architecture {
    pub fn detect(config: &HfConfig) -> Result<Self, ModelError> {
        let from_class = config.architectures.as_ref().and_then(|names| {
            names
                .iter()
                .find_map(|n| TABLE.iter().find(|(_, class, _)| class == n))
        });
        let from_type = config
            .model_type
            .as_deref()
            .and_then(|t| TABLE.iter().find(|(_, _, model_type)| *model_type == t));
        match from_class.or(from_type) {
            Some((arch, _, _)) => Ok(*arch),
            None => {
                let found = config
                    .architectures
                    .as_ref()
                    .map(|a| a.join(", "))
                    .or_else(|| config.model_type.clone())
                    .unwrap_or_else(|| "(none given)".into());
                let mut supported = Self::supported_names();
                if found.contains("Gemma3ForConditionalGeneration") || found == "gemma3" {
                    supported.push_str(
                        " (Gemma 3 4B, 12B and 27B are image-text models; the text-only \
                         Gemma3ForCausalLM checkpoints, gemma-3-270m and gemma-3-1b, are supported)",
                    );
                }
                Err(ModelError::UnsupportedArchitecture { found, supported })
            }
        }
    }

    pub fn supported_names() -> String {
        TABLE
            .iter()
            .map(|(_, class, _)| *class)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The transformers class name written to `config.json`.
    pub fn class_name(self) -> &'static str {
        TABLE
            .iter()
            .find(|(a, _, _)| *a == self)
            .map(|(_, c, _)| *c)
            .unwrap_or("Qwen2ForCausalLM")
    }

    pub fn model_type(self) -> &'static str {
        TABLE
            .iter()
            .find(|(a, _, _)| *a == self)
            .map(|(_, _, t)| *t)
            .unwrap_or("qwen2")
    }

    /// Gemma's shared traits: `1 + w` norms, scaled embeddings, sandwich norms,
    /// `hidden_activation`, `query_pre_attn_scalar`.
    pub fn is_gemma(self) -> bool {
        matches!(self, Architecture::Gemma2 | Architecture::Gemma3)
    }

    pub fn defaults(self) -> FamilyDefaults {
        match self {
            Architecture::Qwen2 => FamilyDefaults {
                rope_theta: 1_000_000.0,
                rms_norm_eps: 1e-6,
                qkv_bias: true,
                o_bias_follows_attention_bias: false,
                qk_norm: false,
                tie_word_embeddings: false,
            },
            Architecture::Llama | Architecture::Mistral => FamilyDefaults {
                rope_theta: 10_000.0,
                rms_norm_eps: 1e-6,
                qkv_bias: false,
                o_bias_follows_attention_bias: true,
                qk_norm: false,
                tie_word_embeddings: false,
            },
            Architecture::Qwen3 => FamilyDefaults {
                rope_theta: 1_000_000.0,
                rms_norm_eps: 1e-6,
                qkv_bias: false,
                o_bias_follows_attention_bias: true,
                qk_norm: true,
                tie_word_embeddings: false,
            },
            Architecture::Gemma2 => FamilyDefaults {
                rope_theta: 10_000.0,
                rms_norm_eps: 1e-6,
                qkv_bias: false,
                o_bias_follows_attention_bias: true,
                qk_norm: false,
                tie_word_embeddings: true,
            },
            Architecture::Gemma3 => FamilyDefaults {
                rope_theta: 1_000_000.0,
                rms_norm_eps: 1e-6,
                qkv_bias: false,
                o_bias_follows_attention_bias: true,
                qk_norm: true,
                tie_word_embeddings: true,
            },
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.class_name())
    }
}
