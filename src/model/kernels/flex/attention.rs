//! Attention on the host, without layout copies: per (batch row, head) task, GEMMs on strided
//! views of the `[b, s, heads, d]` buffers, in blocks of 64 query rows that each touch only the
//! keys some row of the block sees (the causal triangle and the gaps between packed examples
//! are skipped). The forward keeps the output and each row's log-sum-exp; the backward draws
//! the probabilities again from them, so no `[heads, s, t]` tensor outlives a block.

use burn::backend::Flex;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::super::fastmath::{dot, exp, exp_sum, max, tanh};
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

multiversion! {
    /// Scores soft-capped in place, `x <- cap * tanh(x / cap)`; with `slope`, the cap's
    /// derivative `1 - tanh^2(x / cap)` written there for the backward.
    fn soft_cap_row(row: &mut [f32], cap: f32, slope: Option<&mut [f32]>) {
        let inv = 1.0 / cap;
        match slope {
            Some(slope) => {
                for (x, s) in row.iter_mut().zip(slope.iter_mut()) {
                    let t = tanh(*x * inv);
                    *s = 1.0 - t * t;
                    *x = cap * t;
                }
            }
            None => {
                for x in row.iter_mut() {
                    *x = cap * tanh(*x * inv);
                }
            }
        }
    }
}

multiversion! {
    /// `dp <- dp * slope`: the softmax gradient taken back through the soft cap.
    fn scale_by(dp: &mut [f32], slope: &[f32]) {
        for (g, &s) in dp.iter_mut().zip(slope) {
            *g *= s;
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
    let (scale, softcap) = (mask.scores().scale(d), mask.scores().softcap);
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
                    let (a, z) = (range.start - lo, range.end - lo);
                    if let Some(cap) = softcap {
                        soft_cap_row(&mut row[a..z], cap, None);
                    }
                    let l = softmax_range(row, a, z);
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

/// How the backward splits its work into parallel tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// One task per (batch row, kv head): it owns that head's dK/dV rows and its query
    /// heads' dQ, so nothing is added up afterwards.
    KvHead,
    /// One task per (batch row, query head), each with dK/dV rows of its own, summed per kv
    /// head at the end, at the cost of `heads / kv heads` times the dK/dV memory while the
    /// sum is pending (see [`splits_per_head`]).
    Head,
}

/// Whether the attention backward of `batch` rows runs one task per query head: when there
/// are fewer than two (batch row, kv head) pairs per thread. Qwen2.5 has 2 kv heads, so at
/// batch 1 the per-kv-head split keeps only 2 cores busy on any machine; even on 2 threads
/// the finer split balances better (BENCHMARKS.md: 0.5B at 2,048 tokens, attention backward
/// 5.35 -> 4.66 s per step, the same peak memory).
pub(crate) fn splits_per_head(batch: usize, kv_heads: usize, heads: usize, threads: usize) -> bool {
    kv_heads < heads && batch * kv_heads < 2 * threads
}

impl Split {
    fn for_shape(batch: usize, kv_heads: usize, heads: usize) -> Self {
        if splits_per_head(batch, kv_heads, heads, rayon::current_num_threads()) {
            Split::Head
        } else {
            Split::KvHead
        }
    }
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
    let [b, _, nh, _] = q.dims();
    let nkv = k.dims()[2];
    backward_split(q, k, v, out, lse, grad, mask, Split::for_shape(b, nkv, nh))
}

/// The inputs of the backward, as host buffers, and their shape.
struct Saved<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    out: &'a [f32],
    lse: &'a [f32],
    grad: &'a [f32],
    mask: &'a AttentionMask,
    /// Queries, keys, query heads, kv heads, head dim.
    s: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    d: usize,
}

/// Where one task's dK and dV go: key `j`'s row at `dk + j * stride` and `dv + j * stride`.
#[derive(Clone, Copy)]
struct KvRows {
    dk: SharedMut,
    dv: SharedMut,
    stride: usize,
}

/// [`backward`] with the given split of the work.
#[allow(clippy::too_many_arguments)]
fn backward_split(
    q: Tensor<Flex, 4>,
    k: Tensor<Flex, 4>,
    v: Tensor<Flex, 4>,
    out: Tensor<Flex, 4>,
    lse: Tensor<Flex, 3>,
    grad: Tensor<Flex, 4>,
    mask: &AttentionMask,
    split: Split,
) -> (Tensor<Flex, 4>, Tensor<Flex, 4>, Tensor<Flex, 4>) {
    let _span = span(Region::AttentionBackward);
    let [b, s, nh, d] = q.dims();
    let [_, t, nkv, _] = k.dims();
    let rep = nh / nkv;
    let (q, k, v, o, l, g) = (flex(q), flex(k), flex(v), flex(out), flex(lse), flex(grad));
    let saved = Saved {
        q: q.storage::<f32>(),
        k: k.storage::<f32>(),
        v: v.storage::<f32>(),
        out: o.storage::<f32>(),
        lse: l.storage::<f32>(),
        grad: g.storage::<f32>(),
        mask,
        s,
        t,
        nh,
        nkv,
        d,
    };
    let mut dq = vec![0f32; saved.q.len()];
    let mut dk = vec![0f32; saved.k.len()];
    let mut dv = vec![0f32; saved.v.len()];
    let dqp = SharedMut(dq.as_mut_ptr());
    match split {
        Split::KvHead => {
            let (dkp, dvp) = (SharedMut(dk.as_mut_ptr()), SharedMut(dv.as_mut_ptr()));
            (0..b * nkv).into_par_iter().for_each(|task| {
                // Whole-struct captures: a closure capturing the raw pointer field alone
                // would not be Sync.
                let (dkp, dvp) = (dkp, dvp);
                let (bi, kvh) = (task / nkv, task % nkv);
                let at = ((bi * t) * nkv + kvh) * d;
                // SAFETY: dk/dv rows of (bi, kvh) belong to this task alone.
                let rows = unsafe {
                    KvRows {
                        dk: SharedMut(dkp.0.add(at)),
                        dv: SharedMut(dvp.0.add(at)),
                        stride: nkv * d,
                    }
                };
                backward_task(&saved, bi, kvh * rep..(kvh + 1) * rep, dqp, rows);
            });
        }
        Split::Head => {
            // Each query head's dK/dV `[b, heads, t, d]`, then their sums per kv head.
            let mut hk = vec![0f32; b * nh * t * d];
            let mut hv = vec![0f32; b * nh * t * d];
            let (hkp, hvp) = (SharedMut(hk.as_mut_ptr()), SharedMut(hv.as_mut_ptr()));
            (0..b * nh).into_par_iter().for_each(|task| {
                let (hkp, hvp) = (hkp, hvp);
                let (bi, head) = (task / nh, task % nh);
                // SAFETY: the `[t, d]` block of (bi, head) belongs to this task alone.
                let rows = unsafe {
                    KvRows {
                        dk: SharedMut(hkp.0.add(task * t * d)),
                        dv: SharedMut(hvp.0.add(task * t * d)),
                        stride: d,
                    }
                };
                backward_task(&saved, bi, head..head + 1, dqp, rows);
            });
            let sum = |dst: &mut [f32], per_head: &[f32]| {
                dst.par_chunks_mut(nkv * d)
                    .enumerate()
                    .for_each(|(row, kv_row)| {
                        let (bi, j) = (row / t, row % t);
                        for (kvh, out) in kv_row.chunks_mut(d).enumerate() {
                            for head in kvh * rep..(kvh + 1) * rep {
                                let src = &per_head[((bi * nh + head) * t + j) * d..][..d];
                                out.iter_mut().zip(src).for_each(|(o, x)| *o += x);
                            }
                        }
                    });
            };
            sum(&mut dk, &hk);
            sum(&mut dv, &hv);
        }
    }
    (
        tensor(dq, [b, s, nh, d]),
        tensor(dk, [b, t, nkv, d]),
        tensor(dv, [b, t, nkv, d]),
    )
}

/// The gradients of batch row `bi`'s query heads `heads` (all of one kv head): their dQ, and
/// their contributions to the kv head's dK and dV, accumulated into `kv` (zero on entry).
fn backward_task(x: &Saved, bi: usize, heads: std::ops::Range<usize>, dqp: SharedMut, kv: KvRows) {
    let Saved {
        s, t, nh, nkv, d, ..
    } = *x;
    let (qs, ks, vs, os, ls, gs, mask) = (x.q, x.k, x.v, x.out, x.lse, x.grad, x.mask);
    let kvh = heads.start / (nh / nkv);
    let (scale, softcap) = (mask.scores().scale(d), mask.scores().softcap);
    let mut p = vec![0f32; QUERY_BLOCK.min(s) * t];
    let mut ds = vec![0f32; QUERY_BLOCK.min(s) * t];
    // The soft cap's slope per score of a block (only with a cap).
    let mut slopes = vec![0f32; if softcap.is_some() { p.len() } else { 0 }];
    let mut empty_grad = vec![0f32; d];
    let mut any_empty = false;
    for head in heads {
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
            let slopes = &mut slopes[..if softcap.is_some() { rows * e } else { 0 }];
            // SAFETY: this task writes only its `kv` rows and dq at (bi, its heads); GEMM
            // extents (rows r0..r1, keys lo..lo + e <= t) stay inside the buffers and the
            // block scratch. dk/dv start at zero, so their products accumulate.
            unsafe {
                let kb = ks.as_ptr().add(((bi * t + lo) * nkv + kvh) * d);
                let vb = vs.as_ptr().add(((bi * t + lo) * nkv + kvh) * d);
                let dkb = kv.dk.0.add(lo * kv.stride);
                let dvb = kv.dv.0.add(lo * kv.stride);
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
                        let (a, z) = (range.start - lo, range.end - lo);
                        if let Some(cap) = softcap {
                            let slope = &mut slopes[i * e + a..i * e + z];
                            soft_cap_row(&mut row[a..z], cap, Some(slope));
                        }
                        let l = ls[(bi * nh + head) * s + r0 + i];
                        probs_range(row, a, z, l);
                    }
                }
                // dV += P^T dO
                gemm_with(
                    gemm::Parallelism::None,
                    e,
                    d,
                    rows,
                    dvb,
                    kv.stride,
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
                    if softcap.is_some() {
                        // Hidden scores have p = 0, so their stale slopes multiply zeros.
                        scale_by(drow, &slopes[i * e..(i + 1) * e]);
                    }
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
                    kv.stride,
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
            // SAFETY: the `kv` rows belong to this task.
            let row = unsafe { std::slice::from_raw_parts_mut(kv.dv.0.add(j * kv.stride), d) };
            for (x, e) in row.iter_mut().zip(&empty_grad) {
                *x += e / t as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::mask::PAD_SEGMENT;
    use burn::tensor::TensorData;

    fn tensor_of<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Flex, D> {
        // A fixed pseudo-random fill (splitmix64), values in [-1, 1).
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n as u64)
            .map(|i| {
                let h = crate::rng::mix64(seed ^ (i << 8));
                (h >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        Tensor::from_data(TensorData::new(data, shape), &Default::default())
    }

    /// Both splits of the backward give the same gradients (only the order of the dK/dV sums
    /// differs): grouped-query heads, two packed examples and padding in one row, a second
    /// row unpacked, 70 queries (a partial second block).
    #[test]
    fn per_head_split_equals_per_kv_head_split() {
        let (b, s, nh, nkv, d) = (2, 70, 6, 2, 16);
        let mut packed = vec![0; 30];
        packed.extend(vec![1; 30]);
        packed.extend(vec![PAD_SEGMENT; 10]);
        let mask = AttentionMask::new(&[packed, vec![0; s]], s, true);
        let q = tensor_of([b, s, nh, d], 1);
        let k = tensor_of([b, s, nkv, d], 2);
        let v = tensor_of([b, s, nkv, d], 3);
        let grad = tensor_of([b, s, nh, d], 4);
        let (out, lse) = forward(q.clone(), k.clone(), v.clone(), &mask);
        let run = |split: Split| {
            backward_split(
                q.clone(),
                k.clone(),
                v.clone(),
                out.clone(),
                lse.clone(),
                grad.clone(),
                &mask,
                split,
            )
        };
        let (a, h) = (run(Split::KvHead), run(Split::Head));
        for (name, x, y) in [("dq", a.0, h.0), ("dk", a.1, h.1), ("dv", a.2, h.2)] {
            let values = |t: Tensor<Flex, 4>| t.into_data().to_vec::<f32>().expect("f32 data");
            let (x, y) = (values(x), values(y));
            let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = x
                .iter()
                .zip(&y)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            // Tolerance: f32 sums of up to 3 heads in another order, 1e-5 of the largest value.
            assert!(
                scale > 0.1,
                "{name}: gradients too small to compare ({scale})"
            );
            assert!(
                diff <= 1e-5 * scale,
                "{name}: max diff {diff} (scale {scale})"
            );
        }
    }
}
