//! The fused operations of the forward and backward pass, behind one trait of operations so
//! each backend can bring its own: the vocabulary projection's cross-entropy (chunked, the
//! logits never kept), blockwise attention (the residual is the output and a per-row
//! log-sum-exp, never the probabilities), RoPE, RMSNorm, the gated MLP activation (SwiGLU, GeGLU) and the LoRA linear layer
//! with its dropout. The default methods are compositions of Burn tensor ops in [`generic`]
//! (what CUDA runs); Flex has multi-threaded, vectorised host kernels; `Autodiff` wraps them
//! in custom backward steps that keep only what the backward needs.

pub(crate) mod autodiff;
#[cfg(feature = "cube")]
mod cube;
pub mod dropout;
pub mod fastmath;
mod flex;
pub mod generic;
pub mod mask;
pub mod profile;
pub(crate) mod simd;

use burn::tensor::quantization::QuantScheme;
use burn::tensor::{DType, Tensor, backend::Backend};

pub use dropout::{Dropout, DropoutSeed};
pub use mask::{AttentionMask, ScoreShape};

/// Whether the CPU attention backward keeps per-query-head dK/dV buffers (for `plan`).
pub(crate) use flex::splits_per_head as cpu_attention_splits_per_head;

/// The activation of a gated MLP's gate: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// SiLU (SwiGLU: Llama, Qwen, Mistral).
    #[default]
    Silu,
    /// GELU with the tanh approximation (GeGLU: Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

impl Activation {
    /// The activation a `config.json` names (`hidden_act` or Gemma's `hidden_activation`).
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "silu" | "swish" => Some(Activation::Silu),
            // transformers' PytorchGELUTanh and NewGELUActivation compute the same formula.
            "gelu_pytorch_tanh" | "gelu_new" => Some(Activation::GeluTanh),
            _ => None,
        }
    }

    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        }
    }
}

/// How a fused cross-entropy forms the logits `h w^T`: `rows` rows at a time (one chunk of
/// logits alive at once), each logit `u` capped to `cap * tanh(u / cap)` first when `softcap`
/// is set (Gemma 2's `final_logit_softcapping`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogitChunks {
    pub rows: usize,
    pub softcap: Option<f32>,
}

impl LogitChunks {
    /// Chunks of `rows` rows, logits uncapped.
    pub fn of(rows: usize) -> Self {
        Self {
            rows,
            softcap: None,
        }
    }
}

/// Masked scores get this before the softmax: far below any real score, finite in bf16.
pub const MASK_VALUE: f32 = -1.0e30;

/// The LoRA factors of a linear layer: `A: [r, in]`, `B: [out, r]` and the scaling.
pub type LoraFactors<B> = (Tensor<B, 2>, Tensor<B, 2>, f64);

/// Gradients of [`Kernels::lora_linear`]: `dx` (when asked for) and `(dA, dB)` (with LoRA).
pub type LinearGrads<B> = (Option<Tensor<B, 2>>, Option<(Tensor<B, 2>, Tensor<B, 2>)>);

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

    /// Sum over rows of `-log softmax(h w^T)[target]` (f32), the logits formed as `chunk` says.
    /// Differentiable with respect to `h` (`w` is a frozen weight).
    fn cross_entropy_sum(
        h: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        targets: &[i32],
        chunk: LogitChunks,
    ) -> Tensor<Self, 1> {
        generic::cross_entropy_sum(h, w, targets, chunk)
    }

    /// The loss sum of [`Kernels::cross_entropy_sum`] and its gradient with respect to `h`,
    /// computed together chunk by chunk (no autodiff; the fused op's backward multiplies it).
    fn cross_entropy_sum_and_grad(
        h: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        targets: &[i32],
        chunk: LogitChunks,
    ) -> (Tensor<Self, 1>, Tensor<Self, 2>) {
        generic::cross_entropy_sum_and_grad(h, w, targets, chunk)
    }

    /// Per row, `-log softmax(h w^T)[target]` (f32 `[rows]`): the token log-probabilities a
    /// preference objective sums per sequence, chunked like [`Kernels::cross_entropy_sum`].
    /// Differentiable with respect to `h`.
    fn cross_entropy_rows(
        h: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        targets: &[i32],
        chunk: LogitChunks,
    ) -> Tensor<Self, 1> {
        generic::cross_entropy_rows(h, w, targets, chunk)
    }

    /// [`Kernels::cross_entropy_rows`] and the gradient of each row's loss with respect to its
    /// row of `h` (`[rows, d]`; the fused op's backward scales row `i` by the output
    /// gradient's element `i`).
    fn cross_entropy_rows_and_grad(
        h: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        targets: &[i32],
        chunk: LogitChunks,
    ) -> (Tensor<Self, 1>, Tensor<Self, 2>) {
        generic::cross_entropy_rows_and_grad(h, w, targets, chunk)
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

    /// Gradient of [`Kernels::rope`] with respect to `x`: the rotation by the opposite angle,
    /// `rope(grad, cos, -sin)` (the tables' two halves are equal).
    fn rope_backward(
        grad: Tensor<Self, 4>,
        cos: &Tensor<Self, 4>,
        sin: &Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        Self::rope(grad, cos, &sin.clone().neg())
    }

    /// Scaled dot-product attention: `q: [b, s, heads, d]`, `k`, `v: [b, t, kv_heads, d]`
    /// (grouped-query: each kv head serves `heads / kv_heads` query heads, without copies),
    /// `mask` saying which keys each query sees and how the scores are scaled and capped
    /// ([`ScoreShape`]). Returns `[b, s, heads, d]`.
    fn attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: &AttentionMask,
    ) -> Tensor<Self, 4> {
        Self::attention_forward(q, k, v, mask).0
    }

    /// [`Kernels::attention`] and the log-sum-exp of each query's scaled scores, f32
    /// `[b, heads, s]`: with the output, all the backward needs.
    fn attention_forward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: &AttentionMask,
    ) -> (Tensor<Self, 4>, Tensor<Self, 3>) {
        generic::attention::forward(q, k, v, mask)
    }

    /// Gradients of [`Kernels::attention`] with respect to `q`, `k` and `v`, recomputing the
    /// probabilities tile by tile from `q`, `k`, the output `out` and `lse`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        out: Tensor<Self, 4>,
        lse: Tensor<Self, 3>,
        grad: Tensor<Self, 4>,
        mask: &AttentionMask,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>, Tensor<Self, 4>) {
        generic::attention::backward(q, k, v, out, lse, grad, mask)
    }

    /// A frozen linear layer with an optional LoRA adapter, `x: [n, in]`:
    /// `y = x W^T + bias + scaling * (dropout(x) A^T) B^T`, the low-rank path in f32. `w` may
    /// be quantized: it is then dequantized for this call only.
    fn lora_linear(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        lora: Option<LoraFactors<Self>>,
        dropout: Option<&Dropout>,
    ) -> Tensor<Self, 2> {
        Self::lora_linear_forward(x, w, bias, lora, dropout).0
    }

    /// [`Kernels::lora_linear`] and `dropout(x) A^T` (kept for the backward; `None` without
    /// LoRA).
    fn lora_linear_forward(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        lora: Option<LoraFactors<Self>>,
        dropout: Option<&Dropout>,
    ) -> (Tensor<Self, 2>, Option<Tensor<Self, 2>>) {
        generic::lora_linear_forward(x, w, bias, lora, dropout)
    }

    /// Gradients of [`Kernels::lora_linear`]; the dropout mask is drawn again from `dropout`.
    #[allow(clippy::too_many_arguments)]
    fn lora_linear_backward(
        x: Tensor<Self, 2>,
        xa: Option<Tensor<Self, 2>>,
        w: Tensor<Self, 2>,
        lora: Option<LoraFactors<Self>>,
        dropout: Option<&Dropout>,
        grad: Tensor<Self, 2>,
        need_dx: bool,
    ) -> LinearGrads<Self> {
        generic::lora_linear_backward(x, xa, w, lora, dropout, grad, need_dx)
    }

    /// `||W||^2` per output row of a frozen weight (`[1, out]` f32, never differentiated):
    /// the constant part of DoRA's row norms. `w` may be quantized.
    fn weight_row_sq_norms(w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        generic::weight_row_sq_norms(w)
    }

    /// The gated MLP's activation `act(gate) * up`.
    fn glu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>, act: Activation) -> Tensor<Self, 2> {
        generic::glu(gate, up, act)
    }

    /// Gradients of `act(gate) * up` for the output gradient `grad`.
    fn glu_backward(
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
        act: Activation,
        grad: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        generic::glu_backward(gate, up, act, grad)
    }
}
