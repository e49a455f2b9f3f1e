//! Attention on the host, without layout copies: per (batch row, head) task, GEMMs on strided
//! views of the `[b, s, heads, d]` buffers, in blocks of 64 query rows that each touch only the
//! keys some row of the block sees (the causal triangle and the gaps between packed examples
//! are skipped). The forward keeps the output and each row's log-sum-exp; the backward draws
//! the probabilities again from them, so no `[heads, s, t]` tensor outlives a block.

use burn::backend::Flex;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::super::fastmath::{dot, exp, exp_sum, max};
use super::super::mask::AttentionMask;
use super::super::profile::{Region, span};
use super::super::simd::multiversion;
use super::gemm::{SharedMut, gemm_with};
use super::{flex, tensor};

/// Query rows per block: a block's scores are at most 64 x keys floats per task.
const QUERY_BLOCK: usize = 64;

multiversion! {
    /// Softmax over `row[lo..hi]` in place, the rest of the row set to 0; returns the
    /// log-sum-exp of the visible scores. A NaN score makes the row and its log-sum-exp NaN,
    /// as PyTorch's softmax does.
    fn softmax_range(row: &mut [f32], lo: usize, hi: usize) -> f32 {
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
        let visible = &mut row[lo..hi];
        let m = max(visible);
        if m.is_nan() {
            visible.fill(f32::NAN);
            return f32::NAN;
        }
        let sum = exp_sum(visible, m, true);
        let inv = (1.0 / sum) as f32;
        for x in visible.iter_mut() {
            *x *= inv;
        }
        m + sum.ln() as f32
    }
}

multiversion! {
    /// The probabilities of `row[lo..hi]` again from its scores and log-sum-exp, 0 elsewhere.
    fn probs_range(row: &mut [f32], lo: usize, hi: usize, lse: f32) {
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
        for x in row[lo..hi].iter_mut() {
            *x = exp(*x - lse);
        }
    }
}

multiversion! {
    /// Softmax backward of one row, scaled: `dp <- scale * p * (dp - D)` with `D = dO . O`.
    fn softmax_grad_row(dp: &mut [f32], p: &[f32], d: f32, scale: f32) {
        for (g, &p) in dp.iter_mut().zip(p) {
            *g = p * (*g - d) * scale;
        }
    }
}

/// The mean of every key's value for kv head `kvh` of batch row `bi`: the output of a query
/// that sees no key (a uniform softmax).
fn mean_value(vs: &[f32], bi: usize, kvh: usize, t: usize, nkv: usize, d: usize) -> Vec<f32> {
    let mut mean = vec![0f32; d];
    for j in 0..t {
        let row = &vs[((bi * t + j) * nkv + kvh) * d..][..d];
        for (m, x) in mean.iter_mut().zip(row) {
            *m += x;
        }
    }
    mean.iter_mut().for_each(|m| *m /= t as f32);
    mean
}

/// Output `[b, s, heads, d]` and log-sum-exp `[b, heads, s]`.
pub(super) fn forward(
    q: Tensor<Flex, 4>,
    k: Tensor<Flex, 4>,
    v: Tensor<Flex, 4>,
    mask: &AttentionMask,
) -> (Tensor<Flex, 4>, Tensor<Flex, 3>) {
    let _span = span(Region::AttentionForward);
    let [b, s, nh, d] = q.dims();
    let [_, t, nkv, _] = k.dims();
    let rep = nh / nkv;
    let scale = 1.0 / (d as f32).sqrt();
    let (q, k, v) = (flex(q), flex(k), flex(v));
    let (qs, ks, vs) = (q.storage::<f32>(), k.storage::<f32>(), v.storage::<f32>());
    let mut out = vec![0f32; b * s * nh * d];
    let mut lse = vec![0f32; b * nh * s];
    let (op, lp) = (SharedMut(out.as_mut_ptr()), SharedMut(lse.as_mut_ptr()));
    (0..b * nh).into_par_iter().for_each(|task| {
        let (bi, head) = (task / nh, task % nh);
        let kvh = head / rep;
        let (op, lp) = (op, lp);
        let mut scores = vec![0f32; QUERY_BLOCK.min(s) * t];
        let mut mean = None;
        for r0 in (0..s).step_by(QUERY_BLOCK) {
            let r1 = (r0 + QUERY_BLOCK).min(s);
            let rows = r1 - r0;
            // SAFETY (all blocks below): task (bi, head) writes only lse[bi, head] and the
            // `head` columns of out[bi]; GEMM extents (rows r0..r1, keys lo..lo + e <= t) stay
            // inside the q/k/v/out buffers and `scores` (rows * e <= QUERY_BLOCK * t floats).
            let out_block = unsafe { op.0.add((bi * s * nh + head) * d + r0 * nh * d) };
            let lse_row = |i: usize| unsafe { lp.0.add((bi * nh + head) * s + i) };
            if let Some(keys) = mask.block_keys(bi, r0..r1) {
                let (lo, e) = (keys.start, keys.len());
                let p = &mut scores[..rows * e];
                unsafe {
                    gemm_with(
                        gemm::Parallelism::None,
                        rows,
                        e,
                        d,
                        p.as_mut_ptr(),
                        e,
                        false,
                        qs.as_ptr().add((bi * s * nh + head) * d + r0 * nh * d),
                        nh * d,
                        1,
                        ks.as_ptr().add(((bi * t + lo) * nkv + kvh) * d),
                        1,
                        nkv * d,
                        scale,
                    );
                }
                for (i, row) in p.chunks_mut(e).enumerate() {
                    let range = mask.range(bi, r0 + i);
                    if range.is_empty() {
                        row.fill(0.0);
                        continue;
                    }
                    let l = softmax_range(row, range.start - lo, range.end - lo);
                    unsafe { *lse_row(r0 + i) = l };
                }
                // O = P V over the block's keys, into the head's columns of out[bi].
                unsafe {
                    gemm_with(
                        gemm::Parallelism::None,
                        rows,
                        d,
                        e,
                        out_block,
                        nh * d,
                        false,
                        p.as_ptr(),
                        e,
                        1,
                        vs.as_ptr().add(((bi * t + lo) * nkv + kvh) * d),
                        nkv * d,
                        1,
                        1.0,
                    );
                }
            }
            for i in (0..rows).filter(|&i| mask.is_empty_row(bi, r0 + i)) {
                let m = mean.get_or_insert_with(|| mean_value(vs, bi, kvh, t, nkv, d));
                unsafe {
                    std::ptr::copy_nonoverlapping(m.as_ptr(), out_block.add(i * nh * d), d);
                    *lse_row(r0 + i) = (t as f32).ln();
                }
            }
        }
    });
    (tensor(out, [b, s, nh, d]), tensor(lse, [b, nh, s]))
}

/// Gradients with respect to q, k and v.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    q: Tensor<Flex, 4>,
    k: Tensor<Flex, 4>,
    v: Tensor<Flex, 4>,
    out: Tensor<Flex, 4>,
    lse: Tensor<Flex, 3>,
    grad: Tensor<Flex, 4>,
    mask: &AttentionMask,
) -> (Tensor<Flex, 4>, Tensor<Flex, 4>, Tensor<Flex, 4>) {
    let _span = span(Region::AttentionBackward);
    let [b, s, nh, d] = q.dims();
    let [_, t, nkv, _] = k.dims();
    let rep = nh / nkv;
    let scale = 1.0 / (d as f32).sqrt();
    let (q, k, v, o, l, g) = (flex(q), flex(k), flex(v), flex(out), flex(lse), flex(grad));
    let (qs, ks, vs) = (q.storage::<f32>(), k.storage::<f32>(), v.storage::<f32>());
    let (os, ls, gs) = (o.storage::<f32>(), l.storage::<f32>(), g.storage::<f32>());
    let mut dq = vec![0f32; qs.len()];
    let mut dk = vec![0f32; ks.len()];
    let mut dv = vec![0f32; vs.len()];
    let (dqp, dkp, dvp) = (
        SharedMut(dq.as_mut_ptr()),
        SharedMut(dk.as_mut_ptr()),
        SharedMut(dv.as_mut_ptr()),
    );
    // One task per (batch row, kv head): it owns that kv head's dk/dv and its query heads' dq.
    (0..b * nkv).into_par_iter().for_each(|task| {
        let (bi, kvh) = (task / nkv, task % nkv);
        let (dqp, dkp, dvp) = (dqp, dkp, dvp);
        let mut p = vec![0f32; QUERY_BLOCK.min(s) * t];
        let mut ds = vec![0f32; QUERY_BLOCK.min(s) * t];
        let mut empty_grad = vec![0f32; d];
        let mut any_empty = false;
        for head in kvh * rep..(kvh + 1) * rep {
            let at = |i: usize| (bi * s * nh + head) * d + i * nh * d;
            for r0 in (0..s).step_by(QUERY_BLOCK) {
                let r1 = (r0 + QUERY_BLOCK).min(s);
                let rows = r1 - r0;
                for i in (r0..r1).filter(|&i| mask.is_empty_row(bi, i)) {
                    // A query that sees nothing averaged every value: each gets dO / t.
                    any_empty = true;
                    for (e, x) in empty_grad.iter_mut().zip(&gs[at(i)..at(i) + d]) {
                        *e += x;
                    }
                }
                let Some(keys) = mask.block_keys(bi, r0..r1) else {
                    continue;
                };
                let (lo, e) = (keys.start, keys.len());
                let (p, ds) = (&mut p[..rows * e], &mut ds[..rows * e]);
                // SAFETY: this task writes only dk/dv at (bi, kvh) and dq at (bi, heads of
                // kvh); GEMM extents (rows r0..r1, keys lo..lo + e <= t) stay inside the buffers
                // and the block scratch. dk/dv start at zero, so their products accumulate.
                unsafe {
                    let kb = ks.as_ptr().add(((bi * t + lo) * nkv + kvh) * d);
                    let vb = vs.as_ptr().add(((bi * t + lo) * nkv + kvh) * d);
                    let dkb = dkp.0.add(((bi * t + lo) * nkv + kvh) * d);
                    let dvb = dvp.0.add(((bi * t + lo) * nkv + kvh) * d);
                    let qb = qs.as_ptr().add(at(r0));
                    let gb = gs.as_ptr().add(at(r0));
                    // P = exp(scale Q K^T - lse), drawn again from the saved statistics.
                    gemm_with(
                        gemm::Parallelism::None,
                        rows,
                        e,
                        d,
                        p.as_mut_ptr(),
                        e,
                        false,
                        qb,
                        nh * d,
                        1,
                        kb,
                        1,
                        nkv * d,
                        scale,
                    );
                    for (i, row) in p.chunks_mut(e).enumerate() {
                        let range = mask.range(bi, r0 + i);
                        if range.is_empty() {
                            row.fill(0.0);
                        } else {
                            let l = ls[(bi * nh + head) * s + r0 + i];
                            probs_range(row, range.start - lo, range.end - lo, l);
                        }
                    }
                    // dV += P^T dO
                    gemm_with(
                        gemm::Parallelism::None,
                        e,
                        d,
                        rows,
                        dvb,
                        nkv * d,
                        true,
                        p.as_ptr(),
                        1,
                        e,
                        gb,
                        nh * d,
                        1,
                        1.0,
                    );
                    // dP = dO V^T
                    gemm_with(
                        gemm::Parallelism::None,
                        rows,
                        e,
                        d,
                        ds.as_mut_ptr(),
                        e,
                        false,
                        gb,
                        nh * d,
                        1,
                        vb,
                        1,
                        nkv * d,
                        1.0,
                    );
                    // dS = scale P (dP - dO . O)
                    for (i, (drow, prow)) in ds.chunks_mut(e).zip(p.chunks(e)).enumerate() {
                        let r = at(r0 + i);
                        let dsum = dot(&gs[r..r + d], &os[r..r + d]);
                        softmax_grad_row(drow, prow, dsum, scale);
                    }
                    // dQ = dS K
                    gemm_with(
                        gemm::Parallelism::None,
                        rows,
                        d,
                        e,
                        dqp.0.add(at(r0)),
                        nh * d,
                        false,
                        ds.as_ptr(),
                        e,
                        1,
                        kb,
                        nkv * d,
                        1,
                        1.0,
                    );
                    // dK += dS^T Q
                    gemm_with(
                        gemm::Parallelism::None,
                        e,
                        d,
                        rows,
                        dkb,
                        nkv * d,
                        true,
                        ds.as_ptr(),
                        1,
                        e,
                        qb,
                        nh * d,
                        1,
                        1.0,
                    );
                }
            }
        }
        if any_empty {
            for j in 0..t {
                // SAFETY: dv at (bi, kvh) belongs to this task.
                let row = unsafe {
                    std::slice::from_raw_parts_mut(dvp.0.add(((bi * t + j) * nkv + kvh) * d), d)
                };
                for (x, e) in row.iter_mut().zip(&empty_grad) {
                    *x += e / t as f32;
                }
            }
        }
    });
    (
        tensor(dq, [b, s, nh, d]),
        tensor(dk, [b, t, nkv, d]),
        tensor(dv, [b, t, nkv, d]),
    )
}
