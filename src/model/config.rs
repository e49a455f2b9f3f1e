//! `config.json` of a Hugging Face causal LM, mirrored as it is on disk, and the normalised
//! [`ModelConfig`] the decoder is built from.

use std::path::Path;

use serde::Deserialize;

use super::arch::Architecture;
use super::error::ModelError;
use super::family::{
    activation, refuse_unsupported_gemma, sliding_rope_theta, sliding_window, softcapping,
};
use super::kernels::{Activation, ScoreShape};

/// Rotary-embedding parameters as transformers 5 writes them (`rope_parameters`) or as released
/// checkpoints write them (`rope_scaling`, with `type` or `rope_type`).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct RopeParameters {
    pub rope_theta: Option<f64>,
    pub rope_type: Option<String>,
    #[serde(rename = "type")]
    pub legacy_type: Option<String>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<usize>,
    pub attention_factor: Option<f64>,
    pub beta_fast: Option<f64>,
    pub beta_slow: Option<f64>,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    pub truncate: Option<bool>,
}

/// `rope_parameters` is one set of parameters, or (Gemma 3 in transformers 5) one per layer type.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
// Read once per config; boxing would only add indirection.
#[allow(clippy::large_enum_variant)]
pub enum RopeField {
    PerLayerType(PerLayerTypeRope),
    Flat(RopeParameters),
}

/// Rotary parameters of full-attention and of sliding-window layers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerLayerTypeRope {
    pub full_attention: Option<RopeParameters>,
    pub sliding_attention: Option<RopeParameters>,
}

/// `eos_token_id` may be one id or a list of ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(i64),
    Many(Vec<i64>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => u32::try_from(*id).into_iter().collect(),
            TokenIds::Many(ids) => ids.iter().filter_map(|&i| u32::try_from(i).ok()).collect(),
        }
    }
}

/// `config.json`, field names as Hugging Face writes them. Unknown fields are ignored, as
/// transformers ignores them.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub architectures: Option<Vec<String>>,
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_parameters: Option<RopeField>,
    pub rope_scaling: Option<RopeParameters>,
    /// Gemma 3: the RoPE base of sliding-window layers (legacy configs).
    pub rope_local_base_freq: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub hidden_act: Option<String>,
    /// Gemma's name for `hidden_act`.
    pub hidden_activation: Option<String>,
    /// Gemma: attention scores are scaled by `query_pre_attn_scalar^-1/2`.
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 2 caps the logits (`cap * tanh(x / cap)`) by default; `null` turns it off.
    #[serde(default, deserialize_with = "present")]
    pub final_logit_softcapping: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub attn_logit_softcapping: Option<Option<f64>>,
    pub use_bidirectional_attention: Option<bool>,
    /// Gemma 3: every `n`-th layer attends fully, the others slide (older configs; newer ones
    /// write `layer_types`). transformers reads this key only, not `_sliding_window_pattern`.
    pub sliding_window_pattern: Option<usize>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
    pub max_position_embeddings: Option<usize>,
    /// Top-level pretraining length (Phi-3 style); transformers prefers it to the one in
    /// `rope_scaling`.
    pub original_max_position_embeddings: Option<usize>,
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
    pub pad_token_id: Option<TokenIds>,
    pub use_sliding_window: Option<bool>,
    /// Absent (`None`) and `null` (`Some(None)`) differ: Mistral's default window is 4096.
    #[serde(default, deserialize_with = "present")]
    pub sliding_window: Option<Option<usize>>,
    pub max_window_layers: Option<usize>,
    pub layer_types: Option<Vec<String>>,
}

/// A field that is present, possibly as `null`, as distinct from one left out.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// How rotary frequencies are rescaled for long context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's piecewise rescaling of low/medium/high frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// YaRN (Peng et al. 2023; Qwen2.5's and Qwen3's long-context setting): frequencies blended
    /// between interpolated and original by a ramp over the dimensions, cos/sin scaled by an
    /// attention factor. The optional fields are kept as the config gives them (the GGUF
    /// export writes only those); [`RopeScaling::attention_factor`] derives the rest.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        attention_factor: Option<f64>,
        beta_fast: Option<f64>,
        beta_slow: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        truncate: bool,
    },
}

impl RopeScaling {
    /// The factor YaRN multiplies cos and sin by (1 for every other scaling), as transformers'
    /// `_compute_yarn_parameters` derives it when the config does not give it.
    pub fn attention_factor(&self) -> f64 {
        let RopeScaling::Yarn {
            factor,
            attention_factor,
            mscale,
            mscale_all_dim,
            ..
        } = self
        else {
            return 1.0;
        };
        let get_mscale = |scale: f64, m: f64| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * m * scale.ln() + 1.0
            }
        };
        match (attention_factor, mscale, mscale_all_dim) {
            (Some(a), _, _) => *a,
            // Python truthiness: both present and non-zero.
            (None, Some(m), Some(all)) if *m != 0.0 && *all != 0.0 => {
                get_mscale(*factor, *m) / get_mscale(*factor, *all)
            }
            _ => get_mscale(*factor, 1.0),
        }
    }
}

/// Everything the decoder needs, resolved from `config.json` with each family's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// Bias on q, k and v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on gate, up and down projections.
    pub mlp_bias: bool,
    /// Per-head RMSNorm on queries and keys before RoPE (Qwen3).
    pub qk_norm: bool,
    pub max_position_embeddings: usize,
    /// The dtype the checkpoint says it was saved in (`torch_dtype` or `dtype`).
    pub dtype: Option<String>,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    /// Layers that attend through a sliding window, as transformers applies it.
    pub sliding_window: Option<SlidingWindow>,
    /// The gated MLP's activation.
    pub activation: Activation,
    /// Gemma: RMSNorm weights are stored as `w` and scale by `1 + w`.
    pub norm_weight_offset: f64,
    /// Gemma: token embeddings are multiplied by `sqrt(hidden_size)`.
    pub embed_scale: Option<f64>,
    /// Gemma 2/3: a norm on the attention output (`post_attention_layernorm`) and around the
    /// MLP (`pre_feedforward_layernorm`, `post_feedforward_layernorm`), instead of Llama's one
    /// pre-MLP `post_attention_layernorm`.
    pub sandwich_norms: bool,
    /// Attention scores are scaled by `query_pre_attn_scalar^-1/2` (default `head_dim^-1/2`).
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 3: sliding-window layers use default RoPE with this base (and no scaling).
    pub sliding_rope_theta: Option<f64>,
    /// Gemma 2: attention scores become `cap * tanh(score / cap)` before the mask.
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 2: the output logits become `cap * tanh(logit / cap)`.
    pub final_logit_softcapping: Option<f64>,
}

/// Sliding-window attention: a query at index `i` sees keys `j` with `i - width < j <= i`
/// (transformers' `sliding_window_overlay`), in the layers marked `true`.
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    pub width: usize,
    pub layers: Vec<bool>,
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| e.in_file(path))
    }

    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        // The key's path too: serde_json alone names only the line and column.
        let de = &mut serde_json::Deserializer::from_str(text);
        let raw: HfConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ModelError::Config {
                path: None,
                message: if key == "." {
                    e.inner().to_string()
                } else {
                    format!("key `{key}`: {}", e.inner())
                },
            }
        })?;
        Self::from_hf(&raw)
    }

    pub fn from_hf(raw: &HfConfig) -> Result<Self, ModelError> {
        let architecture = Architecture::detect(raw)?;
        let defaults = architecture.defaults();
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let invalid = |message: String| ModelError::Config {
            path: None,
            message,
        };
        if raw.num_attention_heads == 0 || num_kv_heads == 0 {
            return Err(invalid(
                "num_attention_heads and num_key_value_heads must be > 0".into(),
            ));
        }
        if !raw.num_attention_heads.is_multiple_of(num_kv_heads) {
            return Err(invalid(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({num_kv_heads})",
                raw.num_attention_heads
            )));
        }
        let head_dim = raw
            .head_dim
            .unwrap_or(raw.hidden_size / raw.num_attention_heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(invalid(format!("head_dim {head_dim} must be even and > 0")));
        }
        let gemma = architecture.is_gemma();
        let activation = activation(raw, gemma).map_err(invalid)?;
        let softcaps = if gemma {
            refuse_unsupported_gemma(raw).map_err(invalid)?;
            softcapping(raw, architecture).map_err(invalid)?
        } else {
            (None, None)
        };
        let sliding_window = sliding_window(raw, architecture).map_err(invalid)?;
        let (full_params, sliding_params) = match &raw.rope_parameters {
            Some(RopeField::PerLayerType(p)) => {
                (p.full_attention.as_ref(), p.sliding_attention.as_ref())
            }
            Some(RopeField::Flat(p)) => (Some(p), None),
            None => (None, None),
        };
        let params = full_params.or(raw.rope_scaling.as_ref());
        let rope_theta = raw
            .rope_theta
            .or(full_params.and_then(|p| p.rope_theta))
            .unwrap_or(defaults.rope_theta);
        let rope_scaling = match params {
            None => RopeScaling::None,
            Some(p) => {
                // transformers' standardize_rope_params: a top-level value wins, then the one
                // in the rope parameters, then max_position_embeddings.
                let original = raw
                    .original_max_position_embeddings
                    .or(p.original_max_position_embeddings)
                    .or(raw.max_position_embeddings);
                parse_rope_scaling(p, original).map_err(invalid)?
            }
        };
        let sliding_rope_theta = if architecture == Architecture::Gemma3 {
            Some(sliding_rope_theta(raw, sliding_params).map_err(invalid)?)
        } else {
            None
        };
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let dtype = raw.dtype.clone().or_else(|| raw.torch_dtype.clone());
        Ok(ModelConfig {
            architecture,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(defaults.rms_norm_eps),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: raw
                .tie_word_embeddings
                .unwrap_or(defaults.tie_word_embeddings),
            qkv_bias: defaults.qkv_bias || attention_bias,
            o_bias: defaults.o_bias_follows_attention_bias && attention_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            qk_norm: defaults.qk_norm,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(32768),
            dtype,
            eos_token_ids: raw
                .eos_token_id
                .as_ref()
                .map(TokenIds::to_vec)
                .unwrap_or_default(),
            bos_token_id: raw
                .bos_token_id
                .as_ref()
                .and_then(|b| b.to_vec().first().copied()),
            sliding_window,
            activation,
            norm_weight_offset: if gemma { 1.0 } else { 0.0 },
            embed_scale: gemma.then(|| (raw.hidden_size as f64).sqrt()),
            sandwich_norms: gemma,
            query_pre_attn_scalar: if gemma {
                Some(raw.query_pre_attn_scalar.unwrap_or(256.0))
            } else {
                None
            },
            sliding_rope_theta,
            attn_logit_softcapping: softcaps.0,
            final_logit_softcapping: softcaps.1,
        })
    }

    /// How attention scores are shaped in every layer. A `query_pre_attn_scalar` scale is
    /// folded into the query norm where the model has one (Gemma 3, see `load.rs`), else the
    /// kernels apply it (Gemma 2).
    pub fn attention_scores(&self) -> ScoreShape {
        ScoreShape {
            scale: (!self.qk_norm)
                .then_some(self.query_pre_attn_scalar)
                .flatten()
                .map(|q| (1.0 / q.sqrt()) as f32),
            softcap: self.attn_logit_softcapping.map(|c| c as f32),
        }
    }

    /// What attention scores are multiplied by before the softmax.
    pub fn attention_scale(&self) -> f64 {
        1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .sqrt()
    }

    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

fn parse_rope_scaling(p: &RopeParameters, original: Option<usize>) -> Result<RopeScaling, String> {
    let kind = p
        .rope_type
        .as_deref()
        .or(p.legacy_type.as_deref())
        .unwrap_or("default");
    let factor = || {
        p.factor
            .ok_or_else(|| format!("rope scaling '{kind}' needs a 'factor'"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: factor()? }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: p.low_freq_factor.unwrap_or(1.0),
            high_freq_factor: p.high_freq_factor.unwrap_or(4.0),
            original_max_position_embeddings: original.unwrap_or(8192),
        }),
        "yarn" => Ok(RopeScaling::Yarn {
            factor: factor()?,
            original_max_position_embeddings: original.ok_or(
                "rope scaling 'yarn' needs original_max_position_embeddings (or max_position_embeddings)",
            )?,
            attention_factor: p.attention_factor,
            beta_fast: p.beta_fast,
            beta_slow: p.beta_slow,
            mscale: p.mscale,
            mscale_all_dim: p.mscale_all_dim,
            truncate: p.truncate.unwrap_or(true),
        }),
        other => Err(format!(
            "rope scaling type '{other}' is not supported (supported: default, linear, llama3, yarn)"
        )),
    }
}
