//! Host kernels for Burn's Flex CPU backend: row-parallel (rayon) loops over contiguous f32
//! buffers with a vectorisable `exp`, replacing chains of single-threaded element-wise ops.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{Bool, DType, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use super::Kernels;
use super::fastmath::{exp, exp_sum, max};

/// The tensor's values as a contiguous f32 buffer (a view when it already is one).
fn flex<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    let p = t.into_primitive().tensor();
    if p.is_contiguous() && p.layout().start_offset() == 0 { p } else { p.to_contiguous() }
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(FlexTensor::from_data(TensorData::new(values, shape))))
}

fn is_f32<const D: usize>(t: &Tensor<Flex, D>) -> bool {
    t.dtype() == DType::F32
}

/// Row-wise log-sum-exp and, optionally, `softmax - onehot(target)` written over the logits.
fn ce_rows(logits: &mut [f32], vocab: usize, targets: &[i32], write_grad: bool) -> f64 {
    logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            let m = max(row);
            let target_logit = row[t as usize];
            let sum = if write_grad {
                // exp in place: the row becomes the unnormalised softmax.
                let mut total = 0.0f64;
                for chunk in row.chunks_mut(256) {
                    let mut acc = 0.0f32;
                    for v in chunk.iter_mut() {
                        *v = exp(*v - m);
                        acc += *v;
                    }
                    total += acc as f64;
                }
                total
            } else {
                exp_sum(row, m)
            };
            let lse = m as f64 + sum.ln();
            if write_grad {
                let inv = (1.0 / sum) as f32;
                for v in row.iter_mut() {
                    *v *= inv;
                }
                row[t as usize] -= 1.0;
            }
            lse - target_logit as f64
        })
        .sum()
}

fn ce(h: Tensor<Flex, 2>, w: Tensor<Flex, 2>, targets: &[i32], chunk: usize, with_grad: bool) -> (f64, Option<Tensor<Flex, 2>>) {
    let n = targets.len();
    let vocab = w.dims()[0];
    let mut loss = 0.0f64;
    let mut grads = Vec::new();
    for start in (0..n).step_by(chunk.max(1)) {
        let len = chunk.max(1).min(n - start);
        let logits = h.clone().narrow(0, start, len).matmul(w.clone().transpose());
        let mut logits = flex(logits);
        let rows = logits.storage_mut::<f32>();
        loss += ce_rows(rows, vocab, &targets[start..start + len], with_grad);
        if with_grad {
            let g: Tensor<Flex, 2> = Tensor::from_primitive(TensorPrimitive::Float(logits));
            grads.push(g.matmul(w.clone()));
        }
    }
    let grad = with_grad.then(|| if grads.is_empty() { Tensor::zeros(h.dims(), &h.device()) } else { Tensor::cat(grads, 0) });
    (loss, grad)
}

impl Kernels for Flex {
    fn cross_entropy_sum(h: Tensor<Flex, 2>, w: Tensor<Flex, 2>, targets: &[i32], chunk: usize) -> Tensor<Flex, 1> {
        if !(is_f32(&h) && is_f32(&w)) {
            return cross_entropy_default(h, w, targets, chunk);
        }
        let (loss, _) = ce(h, w, targets, chunk, false);
        tensor(vec![loss as f32], [1])
    }

    fn cross_entropy_sum_and_grad(h: Tensor<Flex, 2>, w: Tensor<Flex, 2>, targets: &[i32], chunk: usize) -> (Tensor<Flex, 1>, Tensor<Flex, 2>) {
        if !(is_f32(&h) && is_f32(&w)) {
            return cross_entropy_and_grad_default(h, w, targets, chunk);
        }
        let dims = h.dims();
        let (loss, grad) = ce(h, w, targets, chunk, true);
        (tensor(vec![loss as f32], [1]), grad.unwrap_or_else(|| Tensor::zeros(dims, &Default::default())))
    }

    fn masked_softmax(scores: Tensor<Flex, 4>, mask: &Tensor<Flex, 4, Bool>) -> Tensor<Flex, 4> {
        let scores = if is_f32(&scores) { scores } else { scores.cast(DType::F32) };
        let [b, h, s, t] = scores.dims();
        let mut scores = flex(scores);
        let m = mask.clone().into_primitive();
        let m = if m.is_contiguous() && m.layout().start_offset() == 0 { m } else { m.to_contiguous() };
        let mask_bytes: &[u8] = m.storage::<u8>();
        let rows = scores.storage_mut::<f32>();
        rows.par_chunks_mut(t).enumerate().for_each(|(r, row)| {
            // Row r is (batch, head, query); the mask is shared by heads.
            let (bi, qi) = (r / (h * s), r % s);
            let mrow = &mask_bytes[(bi * s + qi) * t..(bi * s + qi + 1) * t];
            let mut m = f32::NEG_INFINITY;
            for (v, &hidden) in row.iter().zip(mrow) {
                if hidden == 0 && *v > m {
                    m = *v;
                }
            }
            if m == f32::NEG_INFINITY {
                row.fill(1.0 / t as f32);
                return;
            }
            let mut sum = 0.0f32;
            for (v, &hidden) in row.iter_mut().zip(mrow) {
                let e = if hidden == 0 { exp(*v - m) } else { 0.0 };
                *v = e;
                sum += e;
            }
            let inv = 1.0 / sum;
            for v in row.iter_mut() {
                *v *= inv;
            }
        });
        let _ = b;
        Tensor::from_primitive(TensorPrimitive::Float(scores))
    }

    fn softmax_backward(probs: Tensor<Flex, 4>, grad: Tensor<Flex, 4>) -> Tensor<Flex, 4> {
        if !(is_f32(&probs) && is_f32(&grad)) {
            let dot = (probs.clone() * grad.clone()).sum_dim(3);
            return probs * (grad - dot);
        }
        let dims = probs.dims();
        let t = dims[3];
        let p = flex(probs);
        let mut g = flex(grad);
        let ps = p.storage::<f32>();
        let gs = g.storage_mut::<f32>();
        gs.par_chunks_mut(t).zip(ps.par_chunks(t)).for_each(|(grow, prow)| {
            let dot: f32 = grow.iter().zip(prow).map(|(g, p)| g * p).sum();
            for (g, p) in grow.iter_mut().zip(prow) {
                *g = p * (*g - dot);
            }
        });
        Tensor::from_primitive(TensorPrimitive::Float(g))
    }

    fn swiglu(gate: Tensor<Flex, 2>, up: Tensor<Flex, 2>) -> Tensor<Flex, 2> {
        if !(is_f32(&gate) && is_f32(&up)) {
            return burn::tensor::activation::silu(gate) * up;
        }
        let dims = gate.dims();
        let g = flex(gate);
        let u = flex(up);
        let (gs, us) = (g.storage::<f32>(), u.storage::<f32>());
        let mut out = vec![0f32; gs.len()];
        out.par_chunks_mut(4096).zip(gs.par_chunks(4096).zip(us.par_chunks(4096))).for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + exp(-g)) * u;
            }
        });
        tensor(out, dims)
    }

    fn swiglu_backward(gate: Tensor<Flex, 2>, up: Tensor<Flex, 2>, grad: Tensor<Flex, 2>) -> (Tensor<Flex, 2>, Tensor<Flex, 2>) {
        if !(is_f32(&gate) && is_f32(&up) && is_f32(&grad)) {
            let sig = burn::tensor::activation::sigmoid(gate.clone());
            let silu = gate.clone() * sig.clone();
            let dsilu = sig.clone() + silu.clone() * (sig.neg() + 1.0);
            return (grad.clone() * up * dsilu, grad * silu);
        }
        let dims = gate.dims();
        let (g, u, d) = (flex(gate), flex(up), flex(grad));
        let (gs, us, ds) = (g.storage::<f32>(), u.storage::<f32>(), d.storage::<f32>());
        let mut dg = vec![0f32; gs.len()];
        let mut du = vec![0f32; gs.len()];
        dg.par_chunks_mut(4096)
            .zip(du.par_chunks_mut(4096))
            .enumerate()
            .for_each(|(c, (dg, du))| {
                let off = c * 4096;
                for i in 0..dg.len() {
                    let (g, u, d) = (gs[off + i], us[off + i], ds[off + i]);
                    let sig = 1.0 / (1.0 + exp(-g));
                    let silu = g * sig;
                    dg[i] = d * u * (sig + silu * (1.0 - sig));
                    du[i] = d * silu;
                }
            });
        (tensor(dg, dims), tensor(du, dims))
    }
}

/// bf16/f16 on the CPU: upcast and use the f32 kernel.
fn cross_entropy_default(h: Tensor<Flex, 2>, w: Tensor<Flex, 2>, targets: &[i32], chunk: usize) -> Tensor<Flex, 1> {
    <Flex as Kernels>::cross_entropy_sum(h.cast(DType::F32), w.cast(DType::F32), targets, chunk)
}

fn cross_entropy_and_grad_default(h: Tensor<Flex, 2>, w: Tensor<Flex, 2>, targets: &[i32], chunk: usize) -> (Tensor<Flex, 1>, Tensor<Flex, 2>) {
    let dtype = h.dtype();
    let (loss, grad) = <Flex as Kernels>::cross_entropy_sum_and_grad(h.cast(DType::F32), w.cast(DType::F32), targets, chunk);
    (loss, grad.cast(dtype))
}
