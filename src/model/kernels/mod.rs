//! Fused operations of the forward and backward pass, behind one trait so each backend can
//! bring its own: the vocabulary projection's cross-entropy (chunked, the logits never kept),
//! attention, RoPE, RMSNorm, SwiGLU and the LoRA linear layer. The default methods are the
//! compositions of Burn tensor ops in [`generic`] (what CUDA runs); Flex has multi-threaded,
//! vectorised host kernels; `Autodiff` wraps them in custom backward steps that keep only what
//! the backward needs.

mod autodiff;
pub mod fastmath;
mod flex;
pub mod generic;
pub mod profile;
pub(crate) mod simd;

use burn::tensor::quantization::QuantScheme;

use crate::model::decoder::{AttentionContext, DecoderLayer};
use burn::tensor::{Bool, DType, Tensor, backend::Backend};

/// Masked scores get this before the softmax: far below any real score, finite in bf16.
pub const MASK_VALUE: f32 = -1.0e30;

/// The LoRA factors of a linear layer: `A: [r, in]`, `B: [out, r]` and the scaling.
pub type LoraFactors<B> = (Tensor<B, 2>, Tensor<B, 2>, f64);

#[allow(clippy::type_complexity)]
pub trait Kernels: Backend {
    /// A frozen weight quantized with `scheme` (see `model::quant`). The quantized linear ops
    /// below accept it wherever they take `w`.
    fn quantize_weight(w: Tensor<Self, 2>, scheme: &QuantScheme) -> Tensor<Self, 2> {
        w.quantize_dynamic(scheme)
    }

    /// A frozen projection weight `[out, in]` stored the way this backend's linear kernels
    /// read it fastest. Shape and values stay; only the memory layout may change (a strided
    /// view), so every other op sees the same tensor.
    fn layout_frozen_weight(w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        w
    }

    /// `w` as a float tensor of `dtype`: a quantized weight dequantized, any other unchanged.
    fn dequantize_weight(w: Tensor<Self, 2>, dtype: DType) -> Tensor<Self, 2> {
        crate::model::quant::dense(w, dtype)
    }

    /// Sum over rows of `-log softmax(h w^T)[target]` (f32), computed `chunk` rows at a time.
    /// Differentiable with respect to `h` (`w` is a frozen weight).
    fn cross_entropy_sum(
        h: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        targets: &[i32],
        chunk: usize,
    ) -> Tensor<Self, 1> {
        generic::cross_entropy_sum(h, w, targets, chunk)
    }

    /// The loss sum of [`Kernels::cross_entropy_sum`] and its gradient with respect to `h`,
    /// computed together chunk by chunk (no autodiff; the fused op's backward multiplies it).
    fn cross_entropy_sum_and_grad(
        h: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        targets: &[i32],
        chunk: usize,
    ) -> (Tensor<Self, 1>, Tensor<Self, 2>) {
        generic::cross_entropy_sum_and_grad(h, w, targets, chunk)
    }

    /// `softmax(scores)` along the last dim, in f32, with `mask` (`[b, 1, s, t]`, true = hidden)
    /// applied; a row with every key hidden becomes uniform, as with transformers' min-value mask.
    fn masked_softmax(scores: Tensor<Self, 4>, mask: &Tensor<Self, 4, Bool>) -> Tensor<Self, 4> {
        generic::masked_softmax(scores, mask)
    }

    /// Backward of a softmax: `p * (g - sum(p * g))` row by row.
    fn softmax_backward(probs: Tensor<Self, 4>, grad: Tensor<Self, 4>) -> Tensor<Self, 4> {
        generic::softmax_backward(probs, grad)
    }

    /// RMSNorm over the last dim of `x: [rows, dim]` with weight `w`.
    fn rms_norm(x: Tensor<Self, 2>, w: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        generic::rms_norm(x, w, eps)
    }

    /// Gradient of [`Kernels::rms_norm`] with respect to `x` (the weight is frozen).
    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 1>,
        eps: f64,
        grad: Tensor<Self, 2>,
    ) -> Tensor<Self, 2> {
        generic::rms_norm_backward(x, w, eps, grad)
    }

    /// Rotary embedding (`rotate_half` layout) of `x: [b, s, heads, d]` with `cos`/`sin`
    /// `[b, s, 1, d]`.
    fn rope(x: Tensor<Self, 4>, cos: &Tensor<Self, 4>, sin: &Tensor<Self, 4>) -> Tensor<Self, 4> {
        generic::rope(x, cos, sin)
    }

    /// Scaled dot-product attention: `q: [b, s, heads, d]`, `k`, `v: [b, t, kv_heads, d]`
    /// (grouped-query: each kv head serves `heads / kv_heads` query heads), `mask: [b, 1, s, t]`.
    /// Returns `[b, s, heads, d]`.
    fn attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: &Tensor<Self, 4, Bool>,
    ) -> Tensor<Self, 4> {
        Self::attention_with_probs(q, k, v, mask).0
    }

    /// [`Kernels::attention`] and its f32 probabilities `[b, heads, s, t]` (for the backward).
    fn attention_with_probs(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: &Tensor<Self, 4, Bool>,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        generic::attention_with_probs(q, k, v, mask)
    }

    /// Gradients of [`Kernels::attention`] with respect to `q`, `k` and `v`.
    fn attention_backward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        probs: Tensor<Self, 4>,
        grad: Tensor<Self, 4>,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>, Tensor<Self, 4>) {
        generic::attention_backward(q, k, v, probs, grad)
    }

    /// A frozen linear layer with an optional LoRA adapter, `x: [n, in]`:
    /// `y = x W^T + bias + scaling * (x A^T) B^T`, the low-rank path in f32. `w` may be
    /// quantized: it is then dequantized for this call only.
    fn lora_linear(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        lora: Option<LoraFactors<Self>>,
    ) -> Tensor<Self, 2> {
        Self::lora_linear_forward(x, w, bias, lora).0
    }

    /// [`Kernels::lora_linear`] and `x A^T` (kept for the backward; `None` without LoRA).
    fn lora_linear_forward(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        lora: Option<LoraFactors<Self>>,
    ) -> (Tensor<Self, 2>, Option<Tensor<Self, 2>>) {
        generic::lora_linear_forward(x, w, bias, lora)
    }

    /// Gradients of [`Kernels::lora_linear`]: `dx` (when wanted), `dA` and `dB` (with LoRA).
    fn lora_linear_backward(
        x: Tensor<Self, 2>,
        xa: Option<Tensor<Self, 2>>,
        w: Tensor<Self, 2>,
        lora: Option<LoraFactors<Self>>,
        grad: Tensor<Self, 2>,
        need_dx: bool,
    ) -> (
        Option<Tensor<Self, 2>>,
        Option<(Tensor<Self, 2>, Tensor<Self, 2>)>,
    ) {
        generic::lora_linear_backward(x, xa, w, lora, grad, need_dx)
    }

    /// A decoder layer in training with gradient checkpointing: only autodiff backends keep
    /// anything for a backward pass, so elsewhere this is the plain forward (without dropout,
    /// which checkpointing does not support).
    fn checkpointed_layer(
        layer: &DecoderLayer<Self>,
        x: Tensor<Self, 3>,
        ctx: &AttentionContext<Self>,
    ) -> Tensor<Self, 3> {
        crate::model::recompute::layer_output(layer, x, ctx)
    }

    /// `silu(gate) * up`.
    fn swiglu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        generic::swiglu(gate, up)
    }

    /// Gradients of `silu(gate) * up` for the output gradient `grad`.
    fn swiglu_backward(
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
        grad: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        generic::swiglu_backward(gate, up, grad)
    }
}

#[cfg(feature = "cuda")]
impl Kernels for burn::backend::Cuda {}
