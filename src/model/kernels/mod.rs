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

    /// RMSNorm over the last dim of `x: [rows, dim]` with weight `w`.
    fn rms_norm(x: Tensor<Self, 2>, w: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        rms_norm_default(x, w, eps)
    }

    /// Gradient of [`Kernels::rms_norm`] with respect to `x` (the weight is frozen).
    fn rms_norm_backward(x: Tensor<Self, 2>, w: Tensor<Self, 1>, eps: f64, grad: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let dtype = x.dtype();
        let x32 = as_f32(x);
        let dim = x32.dims()[1] as f64;
        let r = (x32.clone().powi_scalar(2).mean_dim(1) + eps).sqrt().recip();
        let n = x32 * r.clone();
        let gw = as_f32(grad) * as_f32(w).unsqueeze::<2>();
        let dot = (gw.clone() * n.clone()).sum_dim(1) / dim;
        let dx = r * (gw - n * dot);
        if dtype == DType::F32 { dx } else { dx.cast(dtype) }
    }

    /// Rotary embedding (`rotate_half` layout) of `x: [b, s, heads, d]` with `cos`/`sin`
    /// `[b, s, 1, d]`.
    fn rope(x: Tensor<Self, 4>, cos: &Tensor<Self, 4>, sin: &Tensor<Self, 4>) -> Tensor<Self, 4> {
        let d = x.dims()[3];
        let x1 = x.clone().narrow(3, 0, d / 2);
        let x2 = x.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos.clone() + rotated * sin.clone()
    }

    /// Scaled dot-product attention: `q: [b, s, heads, d]`, `k`, `v: [b, t, kv_heads, d]`
    /// (grouped-query: each kv head serves `heads / kv_heads` query heads), `mask: [b, 1, s, t]`.
    /// Returns `[b, s, heads, d]`.
    fn attention(q: Tensor<Self, 4>, k: Tensor<Self, 4>, v: Tensor<Self, 4>, mask: &Tensor<Self, 4, Bool>) -> Tensor<Self, 4> {
        Self::attention_with_probs(q, k, v, mask).0
    }

    /// [`Kernels::attention`] and its f32 probabilities `[b, heads, s, t]` (for the backward).
    fn attention_with_probs(q: Tensor<Self, 4>, k: Tensor<Self, 4>, v: Tensor<Self, 4>, mask: &Tensor<Self, 4, Bool>) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        attention_default(q, k, v, mask)
    }

    /// Gradients of [`Kernels::attention`] with respect to `q`, `k` and `v`.
    fn attention_backward(q: Tensor<Self, 4>, k: Tensor<Self, 4>, v: Tensor<Self, 4>, probs: Tensor<Self, 4>, grad: Tensor<Self, 4>) -> (Tensor<Self, 4>, Tensor<Self, 4>, Tensor<Self, 4>) {
        let [_, _, nh, d] = q.dims();
        let nkv = k.dims()[2];
        let rep = nh / nkv;
        let dtype = q.dtype();
        let scale = 1.0 / (d as f64).sqrt();
        let qh = q.swap_dims(1, 2);
        let kh = repeat_kv(k.swap_dims(1, 2), rep);
        let vh = repeat_kv(v.swap_dims(1, 2), rep);
        let go = grad.swap_dims(1, 2);
        let p = if dtype == DType::F32 { probs.clone() } else { probs.clone().cast(dtype) };
        let dv = group_sum(p.swap_dims(2, 3).matmul(go.clone()), rep);
        let dp = as_f32(go.matmul(vh.swap_dims(2, 3)));
        let ds = Self::softmax_backward(probs, dp) * scale;
        let ds = if dtype == DType::F32 { ds } else { ds.cast(dtype) };
        let dq = ds.clone().matmul(kh);
        let dk = group_sum(ds.swap_dims(2, 3).matmul(qh), rep);
        (dq.swap_dims(1, 2), dk.swap_dims(1, 2), dv.swap_dims(1, 2))
    }

    /// A frozen linear layer with an optional LoRA adapter, `x: [n, in]`:
    /// `y = x W^T + bias + scaling * (x A^T) B^T`, the low-rank path in f32.
    fn lora_linear(x: Tensor<Self, 2>, w: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>, lora: Option<(Tensor<Self, 2>, Tensor<Self, 2>, f64)>) -> Tensor<Self, 2> {
        Self::lora_linear_forward(x, w, bias, lora).0
    }

    /// [`Kernels::lora_linear`] and `x A^T` (kept for the backward; `None` without LoRA).
    fn lora_linear_forward(x: Tensor<Self, 2>, w: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>, lora: Option<(Tensor<Self, 2>, Tensor<Self, 2>, f64)>) -> (Tensor<Self, 2>, Option<Tensor<Self, 2>>) {
        generic_lora_linear_forward(x, w, bias, lora)
    }

    /// Gradients of [`Kernels::lora_linear`]: `dx` (when wanted), `dA` and `dB` (with LoRA).
    #[allow(clippy::type_complexity)]
    fn lora_linear_backward(
        x: Tensor<Self, 2>,
        xa: Option<Tensor<Self, 2>>,
        w: Tensor<Self, 2>,
        lora: Option<(Tensor<Self, 2>, Tensor<Self, 2>, f64)>,
        grad: Tensor<Self, 2>,
        need_dx: bool,
    ) -> (Option<Tensor<Self, 2>>, Option<(Tensor<Self, 2>, Tensor<Self, 2>)>) {
        generic_lora_linear_backward(x, xa, w, lora, grad, need_dx)
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

/// Repeat each key/value head `n_rep` times in place (HF's `repeat_kv`), on `[b, h, t, d]`.
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, n_rep: usize) -> Tensor<B, 4> {
    if n_rep == 1 {
        return x;
    }
    let [b, h, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, h, n_rep, t, d]).reshape([b, h * n_rep, t, d])
}

/// Sum the gradients of the `n_rep` query heads sharing each key/value head: `[b, h, t, d]`
/// to `[b, h / n_rep, t, d]`.
fn group_sum<B: Backend>(x: Tensor<B, 4>, n_rep: usize) -> Tensor<B, 4> {
    if n_rep == 1 {
        return x;
    }
    let [b, h, t, d] = x.dims();
    x.reshape([b, h / n_rep, n_rep, t, d]).sum_dim(2).reshape([b, h / n_rep, t, d])
}

/// The default RMSNorm: statistics in f32, normalised value cast back, then scaled.
fn rms_norm_default<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    let dtype = x.dtype();
    let x32 = as_f32(x);
    let variance = x32.clone().powi_scalar(2).mean_dim(1);
    let normed = x32 * (variance + eps).sqrt().recip();
    let normed = if dtype == DType::F32 { normed } else { normed.cast(dtype) };
    normed * w.unsqueeze::<2>()
}

/// Attention in the `[batch, seq, heads, head_dim]` layout, composed of tensor ops: returns the
/// output and the f32 probabilities `[b, heads, s, t]`.
fn attention_default<B: Kernels>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: &Tensor<B, 4, Bool>) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [_, _, nh, d] = q.dims();
    let nkv = k.dims()[2];
    let dtype = q.dtype();
    let qh = q.swap_dims(1, 2);
    let kh = repeat_kv(k.swap_dims(1, 2), nh / nkv);
    let vh = repeat_kv(v.swap_dims(1, 2), nh / nkv);
    let scores = qh.matmul(kh.swap_dims(2, 3)) * (1.0 / (d as f64).sqrt());
    let probs = B::masked_softmax(scores, mask);
    let p = if dtype == DType::F32 { probs.clone() } else { probs.clone().cast(dtype) };
    (p.matmul(vh).swap_dims(1, 2), probs)
}

#[allow(clippy::type_complexity)]
fn generic_lora_linear_forward<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>, bias: Option<Tensor<B, 1>>, lora: Option<(Tensor<B, 2>, Tensor<B, 2>, f64)>) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        let mut y = x.clone().matmul(w.transpose());
        if let Some(b) = bias {
            y = y + b.unsqueeze::<2>();
        }
        let Some((a, b, scaling)) = lora else { return (y, None) };
        let dtype = x.dtype();
        let xa = as_f32(x).matmul(a.transpose());
        let d = xa.clone().matmul(b.transpose()) * scaling;
        let d = if dtype == DType::F32 { d } else { d.cast(dtype) };
        (y + d, Some(xa))
    }

#[allow(clippy::type_complexity)]
fn generic_lora_linear_backward<B: Backend>(
    x: Tensor<B, 2>,
    xa: Option<Tensor<B, 2>>,
    w: Tensor<B, 2>,
    lora: Option<(Tensor<B, 2>, Tensor<B, 2>, f64)>,
    grad: Tensor<B, 2>,
    need_dx: bool,
) -> (Option<Tensor<B, 2>>, Option<(Tensor<B, 2>, Tensor<B, 2>)>) {
        let dtype = x.dtype();
        let mut dx = need_dx.then(|| grad.clone().matmul(w));
        let mut dlora = None;
        if let (Some((a, b, scaling)), Some(xa)) = (lora, xa) {
            let g32 = as_f32(grad);
            let dxa = g32.clone().matmul(b) * scaling;
            let db = g32.transpose().matmul(xa) * scaling;
            let da = dxa.clone().transpose().matmul(as_f32(x));
            if let Some(d) = dx.take() {
                let extra = dxa.matmul(a);
                dx = Some(d + if dtype == DType::F32 { extra } else { extra.cast(dtype) });
            }
            dlora = Some((da, db));
        }
        (dx, dlora)
    }

#[cfg(feature = "cuda")]
impl Kernels for burn::backend::Cuda {}
