//! Fused operations of the forward and backward pass, behind one trait so each backend can
//! bring its own: the cross-entropy of the vocabulary projection (chunked, never keeping the
//! logits), the masked attention softmax, and SwiGLU. The default methods compose Burn tensor
//! ops (used on CUDA); Flex has multi-threaded, vectorised host kernels; `Autodiff` wraps them
//! in custom backward steps that keep only what the backward needs.

mod autodiff;
pub mod fastmath;
mod flex;

use burn::tensor::activation::{log_softmax, sigmoid, softmax};
use burn::tensor::{Bool, DType, Int, Tensor, TensorData, backend::Backend};

/// Masked scores get this before the softmax: far below any real score, finite in bf16.
pub const MASK_VALUE: f32 = -1.0e30;

fn as_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    if t.dtype() == DType::F32 { t } else { t.cast(DType::F32) }
}

pub trait Kernels: Backend {
    /// Sum over rows of `-log softmax(h w^T)[target]` (f32), computed `chunk` rows at a time.
    /// Differentiable with respect to `h` (`w` is a frozen weight).
    fn cross_entropy_sum(h: Tensor<Self, 2>, w: Tensor<Self, 2>, targets: &[i32], chunk: usize) -> Tensor<Self, 1> {
        let device = h.device();
        let n = targets.len();
        let mut total: Option<Tensor<Self, 1>> = None;
        for start in (0..n).step_by(chunk.max(1)) {
            let len = chunk.max(1).min(n - start);
            let logits = as_f32(h.clone().narrow(0, start, len).matmul(w.clone().transpose()));
            let t = Tensor::<Self, 2, Int>::from_data(TensorData::new(targets[start..start + len].to_vec(), [len, 1]), &device);
            let part = log_softmax(logits, 1).gather(1, t).sum().neg();
            total = Some(match total {
                None => part,
                Some(acc) => acc + part,
            });
        }
        total.unwrap_or_else(|| Tensor::zeros([1], &device))
    }

    /// The loss sum of [`Kernels::cross_entropy_sum`] and its gradient with respect to `h`,
    /// computed together chunk by chunk (no autodiff; for the backward of the fused op).
    fn cross_entropy_sum_and_grad(h: Tensor<Self, 2>, w: Tensor<Self, 2>, targets: &[i32], chunk: usize) -> (Tensor<Self, 1>, Tensor<Self, 2>) {
        let device = h.device();
        let n = targets.len();
        let vocab = w.dims()[0];
        let mut loss: Option<Tensor<Self, 1>> = None;
        let mut grads = Vec::new();
        for start in (0..n).step_by(chunk.max(1)) {
            let len = chunk.max(1).min(n - start);
            let logits = as_f32(h.clone().narrow(0, start, len).matmul(w.clone().transpose()));
            let t = Tensor::<Self, 2, Int>::from_data(TensorData::new(targets[start..start + len].to_vec(), [len, 1]), &device);
            let lp = log_softmax(logits, 1);
            let part = lp.clone().gather(1, t.clone()).sum().neg();
            let onehot = Tensor::<Self, 2>::zeros([len, vocab], &device).scatter(1, t, Tensor::ones([len, 1], &device), burn::tensor::IndexingUpdateOp::Add);
            let g = lp.exp() - onehot;
            let g = if h.dtype() == DType::F32 { g } else { g.cast(h.dtype()) };
            grads.push(g.matmul(w.clone()));
            loss = Some(match loss {
                None => part,
                Some(acc) => acc + part,
            });
        }
        let loss = loss.unwrap_or_else(|| Tensor::zeros([1], &device));
        let grad = if grads.is_empty() { Tensor::zeros(h.dims(), &device) } else { Tensor::cat(grads, 0) };
        (loss, grad)
    }

    /// `softmax(scores)` along the last dim, in f32, with `mask` (`[b, 1, s, t]`, true = hidden)
    /// applied; a row with every key hidden becomes uniform, as with transformers' min-value mask.
    fn masked_softmax(scores: Tensor<Self, 4>, mask: &Tensor<Self, 4, Bool>) -> Tensor<Self, 4> {
        let [b, h, s, t] = scores.dims();
        softmax(as_f32(scores).mask_fill(mask.clone().expand([b, h, s, t]), MASK_VALUE), 3)
    }

    /// Backward of a softmax: `p * (g - sum(p * g))` row by row.
    fn softmax_backward(probs: Tensor<Self, 4>, grad: Tensor<Self, 4>) -> Tensor<Self, 4> {
        let dot = (probs.clone() * grad.clone()).sum_dim(3);
        probs * (grad - dot)
    }

    /// `silu(gate) * up`.
    fn swiglu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        burn::tensor::activation::silu(gate) * up
    }

    /// Gradients of `silu(gate) * up` for the output gradient `grad`.
    fn swiglu_backward(gate: Tensor<Self, 2>, up: Tensor<Self, 2>, grad: Tensor<Self, 2>) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        // d/dg [g sigmoid(g)] = sigmoid(g) + g sigmoid(g) (1 - sigmoid(g)).
        let sig = sigmoid(gate.clone());
        let silu = gate.clone() * sig.clone();
        let dsilu = sig.clone() + silu.clone() * (sig.neg() + 1.0);
        (grad.clone() * up * dsilu, grad * silu)
    }
}

#[cfg(feature = "cuda")]
impl Kernels for burn::backend::Cuda {}
