//! The fused operations composed of Burn tensor ops: what every backend without its own kernels
//! runs (CUDA among them), and the reference the Flex kernels are tested against. Activations
//! stay in the model dtype; f32 copies live for one operation only.

pub mod attention;

use burn::tensor::activation::{log_softmax, sigmoid, silu};
use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor, TensorData, backend::Backend};

use super::dropout::Dropout;
use super::{Activation, LogitChunks};
use crate::model::quant::dense;

pub fn as_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(DType::F32)
    }
}

pub fn cast_to<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype { t } else { t.cast(dtype) }
}

fn targets_tensor<B: Backend>(targets: &[i32], device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(targets.to_vec(), [targets.len(), 1]),
        device,
    )
}

/// One chunk of the loss: its f32 log-softmax over the vocabulary (the only `[chunk, vocab]`
/// tensor alive at a time), its targets as indices and, with a soft cap, the cap's slope
/// `1 - tanh^2(u / cap)` at each logit.
struct LogProbChunk<B: Backend> {
    log_probs: Tensor<B, 2>,
    targets: Tensor<B, 2, Int>,
    slope: Option<Tensor<B, 2>>,
}

/// The chunks the loss works through, as `chunk` says.
fn log_prob_chunks<'a, B: Backend>(
    h: &'a Tensor<B, 2>,
    w: &'a Tensor<B, 2>,
    targets: &'a [i32],
    chunk: LogitChunks,
) -> impl Iterator<Item = LogProbChunk<B>> + 'a {
    let n = targets.len();
    let rows = chunk.rows.max(1);
    (0..n).step_by(rows).map(move |start| {
        let len = rows.min(n - start);
        let mut logits = as_f32(
            h.clone()
                .narrow(0, start, len)
                .matmul(w.clone().transpose()),
        );
        let mut slope = None;
        if let Some(cap) = chunk.softcap {
            let t = (logits / cap as f64).tanh();
            slope = Some(t.clone().powi_scalar(2).neg() + 1.0);
            logits = t * cap as f64;
        }
        LogProbChunk {
            log_probs: log_softmax(logits, 1),
            targets: targets_tensor::<B>(&targets[start..start + len], &h.device()),
            slope,
        }
    })
}

/// Each row's negative log-probability of its target, `[len]`, from a chunk's log-softmax.
fn row_losses<B: Backend>(lp: Tensor<B, 2>, t: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let len = t.dims()[0];
    lp.gather(1, t).reshape([len]).neg()
}

/// A 1-element total of per-row losses (0 without rows).
pub fn total<B: Backend>(rows: Tensor<B, 1>) -> Tensor<B, 1> {
    if rows.dims()[0] == 0 {
        Tensor::zeros([1], &rows.device())
    } else {
        rows.sum()
    }
}

pub fn cross_entropy_sum<B: Backend>(
    h: Tensor<B, 2>,
    w: Tensor<B, 2>,
    targets: &[i32],
    chunk: LogitChunks,
) -> Tensor<B, 1> {
    total(cross_entropy_rows(h, w, targets, chunk))
}

pub fn cross_entropy_sum_and_grad<B: Backend>(
    h: Tensor<B, 2>,
    w: Tensor<B, 2>,
    targets: &[i32],
    chunk: LogitChunks,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let (rows, grad) = cross_entropy_rows_and_grad(h, w, targets, chunk);
    (total(rows), grad)
}

pub fn cross_entropy_rows<B: Backend>(
    h: Tensor<B, 2>,
    w: Tensor<B, 2>,
    targets: &[i32],
    chunk: LogitChunks,
) -> Tensor<B, 1> {
    let parts: Vec<_> = log_prob_chunks(&h, &w, targets, chunk)
        .map(|c| row_losses(c.log_probs, c.targets))
        .collect();
    if parts.is_empty() {
        Tensor::zeros([0], &h.device())
    } else {
        Tensor::cat(parts, 0)
    }
}

pub fn cross_entropy_rows_and_grad<B: Backend>(
    h: Tensor<B, 2>,
    w: Tensor<B, 2>,
    targets: &[i32],
    chunk: LogitChunks,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let device = h.device();
    let (mut losses, mut grads) = (Vec::new(), Vec::new());
    for c in log_prob_chunks(&h, &w, targets, chunk) {
        let (lp, t) = (c.log_probs, c.targets);
        let len = t.dims()[0];
        losses.push(row_losses(lp.clone(), t.clone()));
        // softmax - onehot(target): subtract 1 at each target in place (no one-hot matrix).
        let mut g = lp.exp().scatter(
            1,
            t,
            Tensor::full([len, 1], -1.0, &device),
            IndexingUpdateOp::Add,
        );
        if let Some(slope) = c.slope {
            g = g * slope;
        }
        grads.push(cast_to(g, h.dtype()).matmul(w.clone()));
    }
    if losses.is_empty() {
        return (
            Tensor::zeros([0], &device),
            Tensor::zeros(h.dims(), &device),
        );
    }
    (Tensor::cat(losses, 0), Tensor::cat(grads, 0))
}

pub fn rms_norm<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    let dtype = x.dtype();
    let x32 = as_f32(x);
    let variance = x32.clone().powi_scalar(2).mean_dim(1);
    let normed = x32 * (variance + eps).sqrt().recip();
    if w.dtype() == DType::F32 {
        // An f32 weight (Gemma's `1 + w`) scales before the cast, as Gemma's norm does.
        cast_to(normed * w.unsqueeze::<2>(), dtype)
    } else {
        // Llama and Qwen cast the normalised values, then scale.
        cast_to(normed, dtype) * w.unsqueeze::<2>()
    }
}

pub fn rms_norm_backward<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 1>,
    eps: f64,
    grad: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let dtype = x.dtype();
    let x32 = as_f32(x);
    let dim = x32.dims()[1] as f64;
    let r = (x32.clone().powi_scalar(2).mean_dim(1) + eps)
        .sqrt()
        .recip();
    let n = x32 * r.clone();
    let gw = as_f32(grad) * as_f32(w).unsqueeze::<2>();
    let dot = (gw.clone() * n.clone()).sum_dim(1) / dim;
    cast_to(r * (gw - n * dot), dtype)
}

pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// `scale * mask * x` in f32 for a dropout, the mask drawn on the host (the composed path
/// has no random-number kernel of its own; the draw is the one the Flex kernel makes).
pub fn dropped<B: Backend>(x: Tensor<B, 2>, dropout: Option<&Dropout>) -> Tensor<B, 2> {
    let x = as_f32(x);
    match dropout {
        Some(d) => {
            let [n, width] = x.dims();
            let mask = Tensor::<B, 2>::from_data(
                TensorData::new(d.mask(n, width), [n, width]),
                (&x.device(), DType::F32),
            );
            x * mask
        }
        None => x,
    }
}

/// How the LoRA step reads a frozen weight and applies its dropout: the composed versions
/// here, or a backend's own kernels around the same matmuls.
pub struct LinearOps<B: Backend> {
    /// `w` as `matmul` takes it for inputs of the given dtype.
    pub weight: fn(Tensor<B, 2>, DType) -> Tensor<B, 2>,
    /// `scale * mask * x` in f32 (`x` in f32 without a dropout).
    pub dropped: fn(Tensor<B, 2>, Option<&Dropout>) -> Tensor<B, 2>,
}

impl<B: Backend> LinearOps<B> {
    /// A dense copy of a quantized weight per call; the mask drawn on the host.
    pub fn composed() -> Self {
        Self {
            weight: dense::<B, 2>,
            dropped: dropped::<B>,
        }
    }
}

#[allow(clippy::type_complexity)]
pub fn lora_linear_forward<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    lora: Option<(Tensor<B, 2>, Tensor<B, 2>, f64)>,
    dropout: Option<&Dropout>,
) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
    lora_linear_forward_with(&LinearOps::composed(), x, w, bias, lora, dropout)
}

#[allow(clippy::type_complexity)]
pub fn lora_linear_forward_with<B: Backend>(
    ops: &LinearOps<B>,
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    lora: Option<(Tensor<B, 2>, Tensor<B, 2>, f64)>,
    dropout: Option<&Dropout>,
) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
    let w = (ops.weight)(w, x.dtype());
    let mut y = x.clone().matmul(w.transpose());
    if let Some(b) = bias {
        y = y + b.unsqueeze::<2>();
    }
    let Some((a, b, scaling)) = lora else {
        return (y, None);
    };
    let dtype = x.dtype();
    let xa = (ops.dropped)(x, dropout).matmul(a.transpose());
    let d = cast_to(xa.clone().matmul(b.transpose()) * scaling, dtype);
    (y + d, Some(xa))
}

#[allow(clippy::type_complexity)]
pub fn lora_linear_backward<B: Backend>(
    x: Tensor<B, 2>,
    xa: Option<Tensor<B, 2>>,
    w: Tensor<B, 2>,
    lora: Option<(Tensor<B, 2>, Tensor<B, 2>, f64)>,
    dropout: Option<&Dropout>,
    grad: Tensor<B, 2>,
    need_dx: bool,
) -> (Option<Tensor<B, 2>>, Option<(Tensor<B, 2>, Tensor<B, 2>)>) {
    let ops = LinearOps::composed();
    lora_linear_backward_with(&ops, x, xa, w, lora, dropout, grad, need_dx)
}

#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub fn lora_linear_backward_with<B: Backend>(
    ops: &LinearOps<B>,
    x: Tensor<B, 2>,
    xa: Option<Tensor<B, 2>>,
    w: Tensor<B, 2>,
    lora: Option<(Tensor<B, 2>, Tensor<B, 2>, f64)>,
    dropout: Option<&Dropout>,
    grad: Tensor<B, 2>,
    need_dx: bool,
) -> (Option<Tensor<B, 2>>, Option<(Tensor<B, 2>, Tensor<B, 2>)>) {
    let dtype = x.dtype();
    let mut dx = need_dx.then(|| grad.clone().matmul((ops.weight)(w, dtype)));
    let mut dlora = None;
    if let (Some((a, b, scaling)), Some(xa)) = (lora, xa) {
        let g32 = as_f32(grad);
        let dxa = g32.clone().matmul(b) * scaling;
        let db = g32.transpose().matmul(xa) * scaling;
        let da = dxa.clone().transpose().matmul((ops.dropped)(x, dropout));
        if let Some(d) = dx.take() {
            // Through the dropout: the same mask again, as the derivative of `mask * x`.
            let through = dxa.matmul(a);
            let through = match dropout {
                Some(_) => (ops.dropped)(through, dropout),
                None => through,
            };
            dx = Some(d + cast_to(through, dtype));
        }
        dlora = Some((da, db));
    }
    (dx, dlora)
}

/// `||W||^2` per output row of a frozen weight, `[1, out]` f32.
pub fn weight_row_sq_norms<B: Backend>(w: Tensor<B, 2>) -> Tensor<B, 2> {
    let w = as_f32(dense(w, DType::F32));
    let [out, _] = w.dims();
    w.powi_scalar(2).sum_dim(1).reshape([1, out])
}

/// `sqrt(2 / pi)` and the cubic coefficient of GELU's tanh approximation.
pub const GELU_TANH_K: f32 = 0.797_884_6;
pub const GELU_TANH_C: f32 = 0.044_715;

pub fn glu<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>, act: Activation) -> Tensor<B, 2> {
    match act {
        Activation::Silu => silu(gate) * up,
        Activation::GeluTanh => {
            // 0.5 g (1 + tanh(k (g + c g^3))), as torch's gelu(approximate="tanh"): in f32,
            // rounded once to the activation dtype, then times `up`.
            let dtype = gate.dtype();
            let g = as_f32(gate);
            let cube = g.clone() * g.clone() * g.clone();
            let t = (g.clone() + cube * GELU_TANH_C)
                .mul_scalar(GELU_TANH_K)
                .tanh();
            cast_to(g * (t + 1.0) * 0.5, dtype) * up
        }
    }
}

pub fn glu_backward<B: Backend>(
    gate: Tensor<B, 2>,
    up: Tensor<B, 2>,
    act: Activation,
    grad: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let (a, da) = match act {
        Activation::Silu => {
            // d/dg [g sigmoid(g)] = sigmoid(g) + g sigmoid(g) (1 - sigmoid(g)).
            let sig = sigmoid(gate.clone());
            let silu = gate * sig.clone();
            let dsilu = sig.clone() + silu.clone() * (sig.neg() + 1.0);
            (silu, dsilu)
        }
        Activation::GeluTanh => {
            // d/dg = 0.5 (1 + t) + 0.5 g (1 - t^2) k (1 + 3 c g^2).
            let g2 = gate.clone() * gate.clone();
            let t = ((g2.clone() * GELU_TANH_C + 1.0) * gate.clone())
                .mul_scalar(GELU_TANH_K)
                .tanh();
            let half = (t.clone() + 1.0) * 0.5;
            let inner = (g2 * (3.0 * GELU_TANH_C) + 1.0) * GELU_TANH_K;
            let dgelu =
                half.clone() + (t.clone() * t).neg().add_scalar(1.0) * inner * gate.clone() * 0.5;
            (gate * half, dgelu)
        }
    };
    (grad.clone() * up * da, grad * a)
}
