//! A memory estimate for `plan` and `bench`: frozen weights, adapter + gradients + AdamW
//! moments, the activations the backward pass keeps, and the largest temporaries of a step.
//! It follows what the kernels keep: per layer the norm inputs, the attention's q, k, v,
//! output and one f32 log-sum-exp per head and token (never `[heads, seq, seq]`), the MLP's
//! gate, up and product; with gradient checkpointing only each layer's input, plus one layer
//! recomputed. BENCHMARKS.md compares it with measured peaks; [`ASSUMPTIONS`] says what it
//! leaves out.

use serde::Serialize;

use crate::model::ModelConfig;
use crate::model::kernels::cpu_attention_splits_per_head;
use crate::model::params::LINEAR_MODULES;
use crate::model::quant::QuantSpec;

/// What the estimate assumes, for `plan` to print.
pub const ASSUMPTIONS: &str = "one micro-batch of the longest row; CPU: f32 weights and \
activations, two 64-row attention blocks per thread (and each query head's dK/dV when the \
backward splits per head), ~40 MB for the program itself; CUDA: \
bf16 weights, activations and logits, f32 adapters and attention statistics, allocator \
caching not counted";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
}

/// The run being estimated.
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    pub config: &'a ModelConfig,
    pub device: Device,
    pub trainable: u64,
    /// Bytes per frozen weight and per activation: 4 (f32) or 2 (bf16).
    pub dtype_bytes: u64,
    pub micro_batch: usize,
    pub seq_len: usize,
    pub loss_chunk_rows: usize,
    /// LoRA rank (for the rank-r products each projection keeps).
    pub rank: usize,
    pub quant: Option<&'a QuantSpec>,
    pub gradient_checkpointing: bool,
    /// DoRA adapters: each projection also keeps its f32 undirected output for the
    /// magnitude's gradient, and forms `W + s B A` (f32) for its row norms.
    pub dora: bool,
    /// CPU threads (attention scratch is per thread).
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct MemoryEstimate {
    pub weights_bytes: u64,
    /// LoRA factors, their gradients and both AdamW moments (f32: 16 bytes per parameter).
    pub adapter_optimizer_bytes: u64,
    /// What the backward pass keeps, all layers.
    pub activation_bytes: u64,
    /// The largest transients of a step: one layer's backward, the loss chunk, scratch, and the
    /// program itself on the CPU.
    pub workspace_bytes: u64,
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

/// Resident size of the CPU program before any tensor (code, runtime, thread stacks).
const CPU_PROGRAM_BYTES: u64 = 40 << 20;

pub fn estimate(w: &Workload<'_>) -> MemoryEstimate {
    let c = w.config;
    let on_gpu = w.device == Device::Cuda;
    let all = c.parameter_count();
    let weights = match w.quant {
        None => all * w.dtype_bytes,
        Some(spec) => {
            let proj = projection_parameters(c);
            (all - proj) * w.dtype_bytes + spec.bytes(proj, on_gpu)
        }
    };
    let adapter = w.trainable * 16;
    let tokens = (w.micro_batch * w.seq_len) as u64;
    let (h, i, nh) = (
        c.hidden_size as u64,
        c.intermediate_size as u64,
        c.num_heads as u64,
    );
    let (qd, kv, a) = (c.q_dim() as u64, c.kv_dim() as u64, w.dtype_bytes);
    let qk_norm = if c.qk_norm { qd + kv } else { 0 };
    // Per layer and token, what the backward keeps: the layer input and the two norm outputs
    // (the projections share them), the residual, rotated q and k, v, the attention output,
    // the MLP's gate, up and product (model dtype); the f32 log-sum-exp per head and the f32
    // `x A^T` of the seven projections.
    let per_token =
        (4 * h + 2 * qd + 2 * kv + 3 * i + qk_norm) * a + nh * 4 + 7 * w.rank as u64 * 4;
    // DoRA: each projection's f32 output before the magnitude scaling.
    let dora_outputs: u64 = if w.dora {
        LINEAR_MODULES
            .iter()
            .filter_map(|m| c.linear_shape(m))
            .map(|s| s.out_features as u64 * 4)
            .sum()
    } else {
        0
    };
    let per_token = per_token + dora_outputs;
    let layer = tokens * per_token;
    let layers = c.num_layers as u64;
    let kept = if w.gradient_checkpointing {
        // Each layer's input, and one layer's activations while it is recomputed.
        tokens * h * a * layers + layer
    } else {
        layer * layers
    };
    // A layer's backward holds gradients of its widest activations at once (the MLP's three
    // intermediate-size tensors and two of hidden size), plus, with dropout, an f32 copy of a
    // projection's input.
    let backward = tokens * (3 * i + 2 * h) * a + tokens * i * 4;
    // Attention scratch: per CPU thread, a 64-row block's scores and their gradient over all
    // keys (and, with Gemma 2's soft cap, the cap's slope at each score), and when the
    // backward splits per query head, each head's f32 dK and dV; the
    // CubeCL kernels keep only `D = rowsum(dO * O)` (f32 per head and token) and the mask's
    // key ranges.
    let attention = if on_gpu {
        tokens * nh * 4 + tokens * 8
    } else {
        let threads = w.threads.max(1);
        let per_head =
            cpu_attention_splits_per_head(w.micro_batch, c.num_kv_heads, c.num_heads, threads);
        let dkv = if per_head { tokens * qd * 4 * 2 } else { 0 };
        let blocks = if c.attn_logit_softcapping.is_some() {
            3
        } else {
            2
        };
        threads as u64 * 64 * w.seq_len as u64 * 4 * blocks + dkv
    };
    // The loss: one chunk of logits (f32 on the CPU; on CUDA the matmul's output and the
    // fused kernel's gradient, both in the model dtype), and the gradient with respect to the
    // trained rows' hidden states.
    let rows = w.loss_chunk_rows.min(tokens as usize) as u64 * c.vocab_size as u64;
    let loss = if on_gpu { 2 * rows * a } else { rows * 4 } + tokens * h * 4;
    let program = if on_gpu { 0 } else { CPU_PROGRAM_BYTES };
    // DoRA's row norms: the widest projection's `W + s B A` in f32, its `B A` and f32 `W`.
    let dora_norms = if w.dora {
        LINEAR_MODULES
            .iter()
            .filter_map(|m| c.linear_shape(m))
            .map(|s| (s.out_features * s.in_features) as u64 * 4 * 3)
            .max()
            .unwrap_or(0)
    } else {
        0
    };
    let workspace = backward.max(attention).max(dora_norms) + loss + program;
    MemoryEstimate {
        weights_bytes: weights,
        adapter_optimizer_bytes: adapter,
        activation_bytes: kept,
        workspace_bytes: workspace,
        total_bytes: weights + adapter + kept + workspace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Activations grow linearly in the sequence length (no `seq^2` term); checkpointing
    /// keeps far less.
    #[test]
    fn linear_in_sequence_length() {
        let config = crate::train::bench::shape_config("qwen2.5-0.5b").unwrap();
        let at = |seq_len: usize, ckpt: bool| {
            estimate(&Workload {
                config: &config,
                device: Device::Cpu,
                trainable: 8_798_208,
                dtype_bytes: 4,
                micro_batch: 1,
                seq_len,
                loss_chunk_rows: 276,
                rank: 16,
                quant: None,
                dora: false,
                gradient_checkpointing: ckpt,
                threads: 2,
            })
            .activation_bytes
        };
        let (a2, a4, a8) = (at(2048, false), at(4096, false), at(8192, false));
        assert_eq!(a8 - a4, 2 * (a4 - a2));
        assert!(at(8192, true) * 8 < a8);
    }
}
