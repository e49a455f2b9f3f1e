//! The fused vocabulary projection and cross-entropy on the host: per chunk of rows, the
//! logits GEMM into a reused buffer, a row-parallel log-sum-exp, and the gradient with respect
//! to the hidden states computed right away, so only one chunk of logits ever exists.

use burn::backend::Flex;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::super::fastmath::{exp_sum, exp_sum_with, max, tanh};
use super::super::profile::{Region, span};
use super::super::simd::multiversion;
use super::super::{Kernels, LogitChunks};
use super::gemm::{gemm_into, gemm_with};
use super::{flex, tensor};

multiversion! {
    /// One row of the fused cross-entropy: `(log-sum-exp - logit[target], 1 / sum(exp))`;
    /// with `store_exp` the row becomes `exp(logit - max)`, the softmax before normalising
    /// (one `exp` per element, kept in place). Normalising and the one-hot are applied to
    /// the row's gradient product instead, a `[d]` row rather than a `[vocab]` one.
    fn ce_row(row: &mut [f32], target: usize, store_exp: bool) -> (f64, f32) {
        let m = max(row);
        let target_logit = row[target];
        let sum = exp_sum(row, m, store_exp);
        (m as f64 + sum.ln() - target_logit as f64, (1.0 / sum) as f32)
    }
}

multiversion! {
    /// [`ce_row`] for soft-capped logits (Gemma 2): the row is capped in place first
    /// (`z = cap * tanh(u / cap)`), and with `store_exp` each element becomes
    /// `exp(z - max) * (1 - (z / cap)^2)`, the unnormalised softmax times the cap's slope, so
    /// the gradient product is taken with respect to the uncapped logits. Also returns the
    /// slope at the target.
    fn ce_row_capped(row: &mut [f32], target: usize, store_exp: bool, cap: f32) -> (f64, f32, f32) {
        let inv_cap = 1.0 / cap;
        for x in row.iter_mut() {
            *x = cap * tanh(*x * inv_cap);
        }
        let m = max(row);
        let target_logit = row[target];
        // The slope from the capped value: 1 - tanh^2 = 1 - (z / cap)^2.
        let slope_times_exp = |z: f32, e: f32| {
            let t = z * inv_cap;
            e * (1.0 - t * t)
        };
        let sum = exp_sum_with(row, m, store_exp.then_some(slope_times_exp));
        let t = target_logit * inv_cap;
        (m as f64 + sum.ln() - target_logit as f64, (1.0 / sum) as f32, 1.0 - t * t)
    }
}

multiversion! {
    /// `dh = inv * (exp row . W) - slope * W[target]`: the gradient product of an unnormalised
    /// softmax row turned into that of `softmax - onehot(target)` (`slope`: the soft cap's
    /// derivative at the target, 1 without a cap).
    fn ce_grad_row(dh: &mut [f32], inv: f32, w_target: &[f32], slope: f32) {
        for (g, &w) in dh.iter_mut().zip(w_target) {
            *g = *g * inv - w * slope;
        }
    }
}

/// Per row of one chunk: `1 / sum(exp)`, the loss, and the soft cap's slope at the target.
struct RowStats<'a> {
    inv: &'a mut [f32],
    loss: &'a mut [f32],
    slope: &'a mut [f32],
}

/// Row-wise log-sum-exp summed over the rows, each row's statistics written to `stats`; with
/// `store_exp` the logits become their unnormalised softmax (times the cap's slope).
fn ce_rows(
    logits: &mut [f32],
    vocab: usize,
    targets: &[i32],
    store_exp: bool,
    softcap: Option<f32>,
    stats: RowStats,
) -> f64 {
    logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .zip(stats.inv.par_iter_mut().zip(stats.loss.par_iter_mut()))
        .zip(stats.slope.par_iter_mut())
        .map(|(((row, &t), (inv, out)), slope)| {
            let (loss, i) = match softcap {
                None => ce_row(row, t as usize, store_exp),
                Some(cap) => {
                    let (loss, i, s) = ce_row_capped(row, t as usize, store_exp, cap);
                    *slope = s;
                    (loss, i)
                }
            };
            *inv = i;
            *out = loss as f32;
            loss
        })
        .sum()
}

thread_local! {
    /// Scratch for one chunk of logits, kept between calls: allocating up to 160 MiB per chunk
    /// per step would pay for fresh pages every time. One per calling thread, so in-process
    /// data-parallel replicas (a thread each) never wait for each other.
    static LOGITS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Fused vocabulary projection + cross-entropy: per chunk of rows, `logits = h W^T` into a
/// reused buffer, then log-sum-exp (and the unnormalised softmax in place when the gradient
/// is wanted), then `dh = (softmax - onehot) W`, normalised on the `[d]` rows. Only one chunk
/// of logits ever exists. Returns the loss sum, the gradient and each row's loss.
pub(super) fn ce(
    h: Tensor<Flex, 2>,
    w: Tensor<Flex, 2>,
    targets: &[i32],
    chunk: LogitChunks,
    with_grad: bool,
) -> (f64, Option<Tensor<Flex, 2>>, Vec<f32>) {
    let [n, d] = h.dims();
    let vocab = w.dims()[0];
    let (h, w) = (flex(h), flex(w));
    let (hs, ws) = (h.storage::<f32>(), w.storage::<f32>());
    let (softcap, chunk) = (chunk.softcap, chunk.rows.max(1));
    let mut dh = if with_grad {
        vec![0f32; n * d]
    } else {
        Vec::new()
    };
    let mut row_loss = vec![0f32; n];
    LOGITS.with_borrow_mut(|scratch| {
        if scratch.len() < chunk.min(n) * vocab {
            scratch.resize(chunk.min(n) * vocab, 0.0);
        }
        let mut loss = 0.0f64;
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let logits = &mut scratch[..len * vocab];
            // W^T as the right-hand side: element (k, j) is W[j, k].
            {
                let _span = span(Region::LossLogits);
                gemm_into(
                    logits,
                    len,
                    vocab,
                    d,
                    &hs[start * d..],
                    d,
                    1,
                    ws,
                    1,
                    d,
                    false,
                    1.0,
                );
            }
            let tgt = &targets[start..start + len];
            let mut inv = vec![0f32; len];
            let mut slope = vec![1f32; len];
            {
                let _span = span(Region::LossSoftmax);
                let stats = RowStats {
                    inv: &mut inv,
                    loss: &mut row_loss[start..start + len],
                    slope: &mut slope,
                };
                loss += ce_rows(logits, vocab, tgt, with_grad, softcap, stats);
            }
            if with_grad {
                let _span = span(Region::LossGrad);
                let dh = &mut dh[start * d..(start + len) * d];
                grad_times_weight(dh, len, d, vocab, logits, ws);
                dh.par_chunks_mut(d)
                    .zip(inv.par_iter().zip(tgt.par_iter()).zip(slope.par_iter()))
                    .for_each(|(row, ((&inv, &t), &slope))| {
                        let t = t as usize;
                        ce_grad_row(row, inv, &ws[t * d..(t + 1) * d], slope);
                    });
            }
        }
        let grad = with_grad.then(|| tensor(dh, [n, d]));
        (loss, grad, std::mem::take(&mut row_loss))
    })
}

/// `dst[len, d] = g[len, vocab] . w[vocab, d]`. The reduction runs over the whole vocabulary
/// while the output is small, which the gemm crate parallelises poorly (about 70 GFLOP/s on
/// two cores against 170 for the other products of a step); so the vocabulary is split into
/// one slab per thread, each slab's product computed single-threaded, and the partial results
/// summed (the loss phase of a Qwen2.5-0.5B step went from ~2.1 to ~1.75 s).
fn grad_times_weight(dst: &mut [f32], len: usize, d: usize, vocab: usize, g: &[f32], w: &[f32]) {
    let threads = rayon::current_num_threads().max(1);
    if threads == 1 || vocab < 4096 {
        gemm_into(dst, len, d, vocab, g, vocab, 1, w, d, 1, false, 1.0);
        return;
    }
    let slab = vocab.div_ceil(threads);
    let partials: Vec<Vec<f32>> = (0..threads)
        .into_par_iter()
        .map(|t| {
            let lo = t * slab;
            let hi = ((t + 1) * slab).min(vocab);
            let mut out = vec![0f32; len * d];
            if hi > lo {
                assert!(g.len() >= len.saturating_sub(1) * vocab + hi && w.len() >= hi * d);
                // SAFETY: rows of `g` span `lo..hi` within each `vocab`-long row and rows
                // `lo..hi` of `w` lie inside the slices (asserted above); `out` is this task's.
                unsafe {
                    gemm_with(
                        gemm::Parallelism::None,
                        len,
                        d,
                        hi - lo,
                        out.as_mut_ptr(),
                        d,
                        false,
                        g[lo..].as_ptr(),
                        vocab,
                        1,
                        w[lo * d..].as_ptr(),
                        d,
                        1,
                        1.0,
                    );
                }
            }
            out
        })
        .collect();
    dst.par_chunks_mut(d).enumerate().for_each(|(r, row)| {
        row.fill(0.0);
        for p in &partials {
            for (o, x) in row.iter_mut().zip(&p[r * d..(r + 1) * d]) {
                *o += x;
            }
        }
    });
}

/// bf16/f16 on the CPU: upcast and use the f32 kernel.
pub(super) fn cross_entropy_default(
    h: Tensor<Flex, 2>,
    w: Tensor<Flex, 2>,
    targets: &[i32],
    chunk: LogitChunks,
) -> Tensor<Flex, 1> {
    <Flex as Kernels>::cross_entropy_sum(h.cast(DType::F32), w.cast(DType::F32), targets, chunk)
}

/// Per-row losses of bf16/f16 inputs through the f32 kernel.
pub(super) fn cross_entropy_rows_default(
    h: Tensor<Flex, 2>,
    w: Tensor<Flex, 2>,
    targets: &[i32],
    chunk: LogitChunks,
    with_grad: bool,
) -> (Tensor<Flex, 1>, Option<Tensor<Flex, 2>>) {
    let dtype = h.dtype();
    let (_, grad, rows) = ce(
        h.cast(DType::F32),
        w.cast(DType::F32),
        targets,
        chunk,
        with_grad,
    );
    let n = rows.len();
    (tensor(rows, [n]), grad.map(|g| g.cast(dtype)))
}

pub(super) fn cross_entropy_and_grad_default(
    h: Tensor<Flex, 2>,
    w: Tensor<Flex, 2>,
    targets: &[i32],
    chunk: LogitChunks,
) -> (Tensor<Flex, 1>, Tensor<Flex, 2>) {
    let dtype = h.dtype();
    let (loss, grad) = <Flex as Kernels>::cross_entropy_sum_and_grad(
        h.cast(DType::F32),
        w.cast(DType::F32),
        targets,
        chunk,
    );
    (loss, grad.cast(dtype))
}
