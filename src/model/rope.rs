//! Rotary position embeddings (Su et al., RoFormer) in Hugging Face's `rotate_half` layout:
//! each head's first half pairs with its second half (not adjacent pairs, as in Burn's
//! `RotaryEncoding`). Frequencies are computed in f32 exactly as transformers does, so logits
//! match at long positions too.

use burn::tensor::{Tensor, TensorData, backend::Backend};

use super::config::{ModelConfig, RopeScaling};

/// Inverse frequencies of one head (`head_dim / 2` of them), after any rope scaling.
#[derive(Debug, Clone)]
pub struct RopeFrequencies {
    inv_freq: Vec<f32>,
    /// What cos and sin are multiplied by (YaRN's attention factor; 1 otherwise).
    scale: f32,
    /// The frequencies of sliding-window layers, where they differ (Gemma 3's local base).
    sliding: Option<Box<RopeFrequencies>>,
}

impl RopeFrequencies {
    pub fn new(config: &ModelConfig) -> Self {
        let mut rope = Self::with(config.head_dim, config.rope_theta, &config.rope_scaling);
        rope.sliding = config
            .sliding_rope_theta
            .map(|theta| Box::new(Self::with(config.head_dim, theta, &RopeScaling::None)));
        rope
    }

    /// The frequencies sliding-window layers rotate by, where they differ from the others.
    pub fn sliding(&self) -> Option<&RopeFrequencies> {
        self.sliding.as_deref()
    }

    fn with(dim: usize, theta: f64, scaling: &RopeScaling) -> Self {
        let base = theta as f32;
        // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), all in f32.
        let mut inv_freq: Vec<f32> = (0..dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
            .collect();
        match scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                for f in &mut inv_freq {
                    *f /= *factor as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low, high) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                );
                let old_len = *original_max_position_embeddings as f32;
                let low_freq_wavelen = old_len / low;
                let high_freq_wavelen = old_len / high;
                for f in &mut inv_freq {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    let scaled = if wavelen > low_freq_wavelen {
                        *f / factor
                    } else {
                        *f
                    };
                    let is_medium = (high_freq_wavelen..=low_freq_wavelen).contains(&wavelen);
                    *f = if is_medium {
                        let smooth = (old_len / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                }
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                truncate,
                ..
            } => {
                let beta = |b: &Option<f64>, default| b.filter(|&b| b != 0.0).unwrap_or(default);
                let (low, high) = yarn_correction_range(
                    beta(beta_fast, 32.0),
                    beta(beta_slow, 1.0),
                    dim,
                    theta,
                    *original_max_position_embeddings,
                    *truncate,
                );
                let factor = *factor as f32;
                let (low, span) = (
                    low as f32,
                    if low == high { 0.001 } else { high - low } as f32,
                );
                for (i, f) in inv_freq.iter_mut().enumerate() {
                    // f32 throughout, as transformers' tensors; `f` is 1 / pos_freq already.
                    let pos_freq = base.powf((2 * i) as f32 / dim as f32);
                    let interpolation = 1.0 / (factor * pos_freq);
                    let ramp = ((i as f32 - low) / span).clamp(0.0, 1.0);
                    let extrapolation_share = 1.0 - ramp;
                    *f = interpolation * (1.0 - extrapolation_share) + *f * extrapolation_share;
                }
            }
        }
        Self {
            inv_freq,
            scale: scaling.attention_factor() as f32,
            sliding: None,
        }
    }

    /// The inverse frequencies (`head_dim / 2`).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// What cos and sin are multiplied by.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    pub fn head_dim(&self) -> usize {
        self.inv_freq.len() * 2
    }

    /// `cos` and `sin` tables of shape `[batch, seq, 1, head_dim]` for the given positions
    /// (`positions[b][t]`), in f32.
    pub fn tables<B: Backend>(
        &self,
        positions: &[Vec<i64>],
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let batch = positions.len();
        let seq = positions.first().map_or(0, Vec::len);
        let half = self.inv_freq.len();
        let dim = half * 2;
        let mut cos = Vec::with_capacity(batch * seq * dim);
        let mut sin = Vec::with_capacity(batch * seq * dim);
        for row in positions {
            for &p in row {
                let start = cos.len();
                for &f in &self.inv_freq {
                    // f32 product, as transformers' `inv_freq @ position_ids` in float32.
                    let angle = f * p as f32;
                    cos.push(angle.cos() * self.scale);
                    sin.push(angle.sin() * self.scale);
                }
                cos.extend_from_within(start..start + half);
                sin.extend_from_within(start..start + half);
            }
        }
        let shape = [batch, seq, 1, dim];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// The dimensions between which YaRN ramps from interpolated to original frequencies, in f64
/// as transformers' `find_correction_range` computes them.
fn yarn_correction_range(
    beta_fast: f64,
    beta_slow: f64,
    dim: usize,
    base: f64,
    original: usize,
    truncate: bool,
) -> (f64, f64) {
    let d = dim as f64;
    let correction_dim = |rotations: f64| {
        d * (original as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
    };
    let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
    if truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    (low.max(0.0), high.min(d - 1.0))
}
