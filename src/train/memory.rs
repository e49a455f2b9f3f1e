//! A memory estimate for `plan`: frozen weights, adapter + gradients + AdamW moments, and
//! activations kept for the backward pass. It is an estimate (allocator slack and temporaries are
//! not modelled); BENCHMARKS.md compares it with measured peaks.

use serde::Serialize;

use crate::model::ModelConfig;
use crate::model::params::LINEAR_MODULES;
use crate::model::quant::QuantSpec;

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct MemoryEstimate {
    pub weights_bytes: u64,
    /// LoRA factors, their gradients and both AdamW moments (f32: 16 bytes per parameter).
    pub adapter_optimizer_bytes: u64,
    pub activation_bytes: u64,
    pub total_bytes: u64,
}

/// The decoder projections' weights: what QLoRA quantizes.
pub fn projection_parameters(config: &ModelConfig) -> u64 {
    let per_layer: u64 = LINEAR_MODULES
        .iter()
        .filter_map(|m| config.linear_shape(m))
        .map(|s| (s.out_features * s.in_features) as u64)
        .sum();
    per_layer * config.num_layers as u64
}

/// `weight_bytes_per_param`: 4 (f32) or 2 (bf16). With `quant` (and whether the device is a
/// GPU, which packs 4-bit values), the projections count at their quantized size instead.
#[allow(clippy::too_many_arguments)]
pub fn estimate(
    config: &ModelConfig,
    trainable: u64,
    weight_bytes_per_param: f64,
    activation_bytes: u64,
    micro_batch: usize,
    seq_len: usize,
    loss_chunk_rows: usize,
    quant: Option<(&QuantSpec, bool)>,
    gradient_checkpointing: bool,
) -> MemoryEstimate {
    let all = config.parameter_count();
    let weights = match quant {
        None => (all as f64 * weight_bytes_per_param) as u64,
        Some((spec, on_gpu)) => {
            let proj = projection_parameters(config);
            ((all - proj) as f64 * weight_bytes_per_param) as u64 + spec.bytes(proj, on_gpu)
        }
    };
    let adapter = trainable * 16;
    let (b, s) = (micro_batch as u64, seq_len as u64);
    let (h, i, nh) = (
        config.hidden_size as u64,
        config.intermediate_size as u64,
        config.num_heads as u64,
    );
    let q = config.q_dim() as u64;
    let kv = config.kv_dim() as u64;
    // Per layer and token, what autodiff keeps: norm inputs/outputs (4h), q/k/v/o inputs and
    // outputs (h + q + 2kv + q, rotated q/k again), MLP inputs, gate/up outputs and their product
    // (h + 3i), residuals (2h); plus the attention scores and probabilities (2 * heads * seq, f32).
    let per_token = 8 * h + 3 * q + 4 * kv + 3 * i;
    let per_layer = b * s * per_token * activation_bytes + b * nh * s * s * 4 * 2;
    let layers = if gradient_checkpointing {
        // Each layer's input, plus one layer's activations while it is recomputed.
        b * s * h * activation_bytes * config.num_layers as u64 + per_layer
    } else {
        per_layer * config.num_layers as u64
    };
    // The loss processes `loss_chunk_rows` rows of logits at a time (f32 logits and their gradient).
    let logits = loss_chunk_rows.min((b * s) as usize) as u64 * config.vocab_size as u64 * 4 * 2;
    let activations = layers + logits + b * s * h * 4 * 2;
    MemoryEstimate {
        weights_bytes: weights,
        adapter_optimizer_bytes: adapter,
        activation_bytes: activations,
        total_bytes: weights + adapter + activations,
    }
}

/// 1536 -> "1.5 KiB", in binary units.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
