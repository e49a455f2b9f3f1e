//! Flash attention in CubeCL (Dao et al. 2022; the backward as in FlashAttention-2): the
//! forward keeps only the output and each query's log-sum-exp, the backward recomputes the
//! probabilities tile by tile, so memory is O(S) whatever the length. Grouped-query K and V
//! are read under their query heads, never repeated. Masks come as each query's visible key
//! range (causal, packed segments and padding are all ranges, see [`AttentionMask`]); key
//! tiles outside a query block's ranges are never loaded.
//!
//! Three kernels, no atomics: the forward (a cube per query block of one head, a unit per
//! query), `dQ` (the same grid; it also writes `D = rowsum(dO * O)`), and `dK`/`dV` (a cube
//! per key block of one kv head, a unit per key, looping over the query blocks that can see
//! it). Scores, softmax statistics and accumulators are f32 whatever the model dtype. Units
//! do the dot products themselves (no tensor-core MMA yet), over the head dim unrolled on CUDA so
//! rows stay in registers: what this buys over the composed version is memory and launches,
//! not peak FLOP/s.
//!
//! Scores are scaled by the mask's [`ScoreShape`] and soft-capped where it says (Gemma 2): the
//! backward takes the cap's slope `1 - (z / cap)^2` from the recomputed capped score `z`.
//!
//! Queries that see no key (padding) follow the composed version: the output is the mean of
//! every value (a uniform softmax), `lse = ln t`, no gradient to q or k, `dO / t` to every v.

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::output_like;
use crate::model::kernels::ScoreShape;

/// Queries per cube and keys per tile.
pub const BLOCK: usize = 32;

/// Loads rows `first..first + BLOCK` of head `head` of `x: [b, n, heads, d]` (batch row `bi`)
/// into `tile` (`BLOCK x d`, f32), zeros past `end`; every unit of the cube takes part.
#[cube]
fn load_tile<F: Float>(
    x: &Tensor<F>,
    tile: &mut SharedMemory<f32>,
    bi: usize,
    head: usize,
    first: usize,
    end: usize,
    #[comptime] d: usize,
) {
    let base = bi * x.stride(0) + head * x.stride(2);
    let mut e = UNIT_POS_X as usize;
    while e < BLOCK * d {
        let (r, c) = (e / d, e % d);
        let n = first + r;
        let mut v = 0.0f32.runtime();
        if n < end {
            v = f32::cast_from(x[base + n * x.stride(1) + c * x.stride(3)]);
        }
        tile[e] = v;
        e += CUBE_DIM_X as usize;
    }
}

/// `sum_c a[c] * tile[row * d + c]`.
#[cube]
fn dot_row(
    a: &Array<f32>,
    tile: &SharedMemory<f32>,
    row: usize,
    #[comptime] d: usize,
    #[comptime] unroll: bool,
) -> f32 {
    let mut acc = 0.0f32;
    #[unroll(unroll)]
    for c in 0..d {
        acc += a[c] * tile[row * d + c];
    }
    acc
}

/// A scaled score soft-capped, `cap * tanh(sc / cap)`, when `capped`; else unchanged.
#[cube]
pub(super) fn cap_score(sc: f32, cap: f32, #[comptime] capped: bool) -> f32 {
    let mut out = sc;
    if comptime![capped] {
        out = cap * f32::tanh(sc / cap);
    }
    out
}

/// The soft cap's derivative at a capped score `z`: `1 - (z / cap)^2` (1 without a cap).
#[cube]
pub(super) fn cap_slope(z: f32, cap: f32, #[comptime] capped: bool) -> f32 {
    let mut out = 1.0f32;
    if comptime![capped] {
        let t = z / cap;
        out = 1.0f32 - t * t;
    }
    out
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn forward_kernel<F: Float, I: Int>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    ranges: &Tensor<I>,
    blocks: &Tensor<I>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
    scale: f32,
    cap: f32,
    #[comptime] d: usize,
    #[comptime] unroll: bool,
    #[comptime] capped: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let (s, heads, t) = (q.shape(1), q.shape(2), k.shape(1));
    let nqb = s.div_ceil(BLOCK);
    let pos = CUBE_POS;
    if pos >= q.shape(0) * heads * nqb {
        terminate!();
    }
    let (qb, h, bi) = (pos % nqb, (pos / nqb) % heads, pos / (nqb * heads));
    let kvh = h / (heads / k.shape(2));
    let i = qb * BLOCK + UNIT_POS_X as usize;
    let valid = i < s;

    let mut qrow = Array::<f32>::new(d);
    let mut acc = Array::<f32>::new(d);
    let mut lo = 0usize.runtime();
    let mut hi = 0usize.runtime();
    #[unroll(unroll)]
    for c in 0..d {
        acc[c] = 0.0f32;
        qrow[c] = 0.0f32;
    }
    if valid {
        let qbase = bi * q.stride(0) + i * q.stride(1) + h * q.stride(2);
        #[unroll(unroll)]
        for c in 0..d {
            qrow[c] = f32::cast_from(q[qbase + c * q.stride(3)]) * scale;
        }
        let rb = bi * ranges.stride(0) + i * ranges.stride(1);
        lo = u32::cast_from(ranges[rb]) as usize;
        hi = u32::cast_from(ranges[rb + ranges.stride(2)]) as usize;
    }
    let empty = lo == hi;
    let bb = bi * blocks.stride(0) + qb * blocks.stride(1);
    let blo = u32::cast_from(blocks[bb]) as usize;
    let bhi = u32::cast_from(blocks[bb + blocks.stride(2)]) as usize;

    let mut ks = SharedMemory::<f32>::new(BLOCK * d);
    let mut vs = SharedMemory::<f32>::new(BLOCK * d);
    let mut scores = Array::<f32>::new(BLOCK);
    let mut m = f32::new(-3.0e38);
    let mut l = 0.0f32;
    let mut c0 = blo;
    while c0 < bhi {
        load_tile::<F>(k, &mut ks, bi, kvh, c0, bhi, d);
        load_tile::<F>(v, &mut vs, bi, kvh, c0, bhi, d);
        sync_cube();
        if valid && empty {
            // Sees nothing: the plain sum of every value, divided by t below.
            for r in 0..BLOCK {
                if c0 + r < bhi {
                    #[unroll(unroll)]
                    for c in 0..d {
                        acc[c] += vs[r * d + c];
                    }
                }
            }
        } else if valid {
            let mut top = m;
            for r in 0..BLOCK {
                let j = c0 + r;
                let mut sc = f32::new(-3.0e38);
                if j >= lo && j < hi {
                    sc = cap_score(dot_row(&qrow, &ks, r, d, unroll), cap, capped);
                    top = f32::max(top, sc);
                }
                scores[r] = sc;
            }
            // Online softmax: what was summed under the old maximum is rescaled once per tile.
            let alpha = f32::exp(m - top);
            l *= alpha;
            #[unroll(unroll)]
            for c in 0..d {
                acc[c] *= alpha;
            }
            for r in 0..BLOCK {
                let j = c0 + r;
                if j >= lo && j < hi {
                    let p = f32::exp(scores[r] - top);
                    l += p;
                    #[unroll(unroll)]
                    for c in 0..d {
                        acc[c] += p * vs[r * d + c];
                    }
                }
            }
            m = top;
        }
        sync_cube();
        c0 += BLOCK;
    }
    if valid {
        let obase = bi * out.stride(0) + i * out.stride(1) + h * out.stride(2);
        let mut norm = 1.0f32 / f32::cast_from(t as u32);
        let mut stat = f32::ln(f32::cast_from(t as u32));
        if !empty {
            norm = 1.0f32 / l;
            stat = m + f32::ln(l);
        }
        #[unroll(unroll)]
        for c in 0..d {
            out[obase + c * out.stride(3)] = F::cast_from(acc[c] * norm);
        }
        lse[bi * lse.stride(0) + h * lse.stride(1) + i * lse.stride(2)] = stat;
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn dq_kernel<F: Float, I: Int>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    out: &Tensor<F>,
    grad: &Tensor<F>,
    lse: &Tensor<f32>,
    ranges: &Tensor<I>,
    blocks: &Tensor<I>,
    dq: &mut Tensor<F>,
    delta: &mut Tensor<f32>,
    scale: f32,
    cap: f32,
    #[comptime] d: usize,
    #[comptime] unroll: bool,
    #[comptime] capped: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let (s, heads) = (q.shape(1), q.shape(2));
    let nqb = s.div_ceil(BLOCK);
    let pos = CUBE_POS;
    if pos >= q.shape(0) * heads * nqb {
        terminate!();
    }
    let (qb, h, bi) = (pos % nqb, (pos / nqb) % heads, pos / (nqb * heads));
    let kvh = h / (heads / k.shape(2));
    let i = qb * BLOCK + UNIT_POS_X as usize;
    let valid = i < s;

    let mut qrow = Array::<f32>::new(d);
    let mut grow = Array::<f32>::new(d);
    let mut acc = Array::<f32>::new(d);
    #[unroll(unroll)]
    for c in 0..d {
        qrow[c] = 0.0f32;
        grow[c] = 0.0f32;
        acc[c] = 0.0f32;
    }
    let mut lo = 0usize.runtime();
    let mut hi = 0usize.runtime();
    let mut stat = 0.0f32.runtime();
    let mut dsum = 0.0f32.runtime();
    let lpos = bi * lse.stride(0) + h * lse.stride(1) + i * lse.stride(2);
    if valid {
        let qbase = bi * q.stride(0) + i * q.stride(1) + h * q.stride(2);
        let obase = bi * out.stride(0) + i * out.stride(1) + h * out.stride(2);
        let gbase = bi * grad.stride(0) + i * grad.stride(1) + h * grad.stride(2);
        #[unroll(unroll)]
        for c in 0..d {
            qrow[c] = f32::cast_from(q[qbase + c * q.stride(3)]) * scale;
            let g = f32::cast_from(grad[gbase + c * grad.stride(3)]);
            grow[c] = g;
            dsum += g * f32::cast_from(out[obase + c * out.stride(3)]);
        }
        let rb = bi * ranges.stride(0) + i * ranges.stride(1);
        lo = u32::cast_from(ranges[rb]) as usize;
        hi = u32::cast_from(ranges[rb + ranges.stride(2)]) as usize;
        stat = lse[lpos];
        delta[bi * delta.stride(0) + h * delta.stride(1) + i * delta.stride(2)] = dsum;
    }
    let bb = bi * blocks.stride(0) + qb * blocks.stride(1);
    let blo = u32::cast_from(blocks[bb]) as usize;
    let bhi = u32::cast_from(blocks[bb + blocks.stride(2)]) as usize;

    let mut ks = SharedMemory::<f32>::new(BLOCK * d);
    let mut vs = SharedMemory::<f32>::new(BLOCK * d);
    let mut c0 = blo;
    while c0 < bhi {
        load_tile::<F>(k, &mut ks, bi, kvh, c0, bhi, d);
        load_tile::<F>(v, &mut vs, bi, kvh, c0, bhi, d);
        sync_cube();
        if valid {
            for r in 0..BLOCK {
                let j = c0 + r;
                if j >= lo && j < hi {
                    let z = cap_score(dot_row(&qrow, &ks, r, d, unroll), cap, capped);
                    let p = f32::exp(z - stat);
                    let ds = p
                        * (dot_row(&grow, &vs, r, d, unroll) - dsum)
                        * (scale * cap_slope(z, cap, capped));
                    #[unroll(unroll)]
                    for c in 0..d {
                        acc[c] += ds * ks[r * d + c];
                    }
                }
            }
        }
        sync_cube();
        c0 += BLOCK;
    }
    if valid {
        let base = bi * dq.stride(0) + i * dq.stride(1) + h * dq.stride(2);
        #[unroll(unroll)]
        for c in 0..d {
            dq[base + c * dq.stride(3)] = F::cast_from(acc[c]);
        }
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn dkv_kernel<F: Float, I: Int>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    grad: &Tensor<F>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    ranges: &Tensor<I>,
    blocks: &Tensor<I>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    scale: f32,
    cap: f32,
    #[comptime] d: usize,
    #[comptime] unroll: bool,
    #[comptime] capped: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let (s, heads, t, kv_heads) = (q.shape(1), q.shape(2), k.shape(1), k.shape(2));
    let rep = heads / kv_heads;
    let (nqb, nkb) = (s.div_ceil(BLOCK), t.div_ceil(BLOCK));
    let pos = CUBE_POS;
    if pos >= q.shape(0) * kv_heads * nkb {
        terminate!();
    }
    let (kb, g, bi) = (pos % nkb, (pos / nkb) % kv_heads, pos / (nkb * kv_heads));
    let j = kb * BLOCK + UNIT_POS_X as usize;
    let valid = j < t;
    let inv_t = 1.0f32 / f32::cast_from(t as u32);

    let mut krow = Array::<f32>::new(d);
    let mut vrow = Array::<f32>::new(d);
    let mut dkr = Array::<f32>::new(d);
    let mut dvr = Array::<f32>::new(d);
    #[unroll(unroll)]
    for c in 0..d {
        krow[c] = 0.0f32;
        vrow[c] = 0.0f32;
        dkr[c] = 0.0f32;
        dvr[c] = 0.0f32;
    }
    if valid {
        let kbase = bi * k.stride(0) + j * k.stride(1) + g * k.stride(2);
        let vbase = bi * v.stride(0) + j * v.stride(1) + g * v.stride(2);
        #[unroll(unroll)]
        for c in 0..d {
            krow[c] = f32::cast_from(k[kbase + c * k.stride(3)]) * scale;
            vrow[c] = f32::cast_from(v[vbase + c * v.stride(3)]);
        }
    }

    let mut qs = SharedMemory::<f32>::new(BLOCK * d);
    let mut gs = SharedMemory::<f32>::new(BLOCK * d);
    let mut stats = SharedMemory::<f32>::new(BLOCK);
    let mut dsums = SharedMemory::<f32>::new(BLOCK);
    let mut los = SharedMemory::<u32>::new(BLOCK);
    let mut his = SharedMemory::<u32>::new(BLOCK);
    let (k_lo, k_hi) = (kb * BLOCK, kb * BLOCK + BLOCK);
    for hr in 0..rep {
        let h = g * rep + hr;
        for qb in 0..nqb {
            let bb = bi * blocks.stride(0) + qb * blocks.stride(1);
            let blo = u32::cast_from(blocks[bb]) as usize;
            let bhi = u32::cast_from(blocks[bb + blocks.stride(2)]) as usize;
            // The same for every unit of the cube: skip query blocks that see none of its keys.
            if blo < k_hi && bhi > k_lo {
                let first = qb * BLOCK;
                load_tile::<F>(q, &mut qs, bi, h, first, s, d);
                load_tile::<F>(grad, &mut gs, bi, h, first, s, d);
                let u = UNIT_POS_X as usize;
                let i = first + u;
                let mut lo = 0u32.runtime();
                let mut hi = 0u32.runtime();
                let mut st = 0.0f32.runtime();
                let mut ds = 0.0f32.runtime();
                if i < s {
                    let rb = bi * ranges.stride(0) + i * ranges.stride(1);
                    lo = u32::cast_from(ranges[rb]);
                    hi = u32::cast_from(ranges[rb + ranges.stride(2)]);
                    st = lse[bi * lse.stride(0) + h * lse.stride(1) + i * lse.stride(2)];
                    ds = delta[bi * delta.stride(0) + h * delta.stride(1) + i * delta.stride(2)];
                }
                los[u] = lo;
                his[u] = hi;
                stats[u] = st;
                dsums[u] = ds;
                sync_cube();
                if valid {
                    for r in 0..BLOCK {
                        let (lo, hi) = (los[r] as usize, his[r] as usize);
                        if first + r < s {
                            if lo == hi {
                                #[unroll(unroll)]
                                for c in 0..d {
                                    dvr[c] += gs[r * d + c] * inv_t;
                                }
                            } else if j >= lo && j < hi {
                                let z = cap_score(dot_row(&krow, &qs, r, d, unroll), cap, capped);
                                let p = f32::exp(z - stats[r]);
                                let dsc = p
                                    * (dot_row(&vrow, &gs, r, d, unroll) - dsums[r])
                                    * cap_slope(z, cap, capped);
                                #[unroll(unroll)]
                                for c in 0..d {
                                    dvr[c] += p * gs[r * d + c];
                                    dkr[c] += dsc * qs[r * d + c];
                                }
                            }
                        }
                    }
                }
                sync_cube();
            }
        }
    }
    if valid {
        let kbase = bi * dk.stride(0) + j * dk.stride(1) + g * dk.stride(2);
        let vbase = bi * dv.stride(0) + j * dv.stride(1) + g * dv.stride(2);
        #[unroll(unroll)]
        for c in 0..d {
            dk[kbase + c * dk.stride(3)] = F::cast_from(dkr[c] * scale);
            dv[vbase + c * dv.stride(3)] = F::cast_from(dvr[c]);
        }
    }
}

/// Whether the loops over the head dim are unrolled (rows in registers, not local memory).
/// Always on CUDA; on wgpu only for small heads, because Mesa's software driver takes minutes
/// to compile the unrolled shaders (the tests' 64-wide heads: 417 s against 34 s). Unrolling
/// changes code generation, not results: the tests run both forms.
fn unroll<R: CubeRuntime>(client: &ComputeClient<R>, d: usize) -> bool {
    !R::name(client).starts_with("wgpu") || d <= 16
}

/// The grid and cube of a kernel with a cube per `BLOCK` rows of `n` rows of each of `groups`.
fn grid(groups: usize, n: usize) -> (CubeCount, CubeDim) {
    let cubes = (groups * n.div_ceil(BLOCK)) as u32;
    // Spread over two dimensions past the 65535 a dimension may hold on some runtimes.
    let x = cubes.min(65_535);
    (
        CubeCount::Static(x, cubes.div_ceil(x), 1),
        CubeDim::new_1d(BLOCK as u32),
    )
}

fn f32_tensor<R: CubeRuntime>(like: &CubeTensor<R>, shape: [usize; 3]) -> CubeTensor<R> {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::new(shape),
        DType::F32,
    )
}

/// Attention output `[b, s, heads, d]` and f32 log-sum-exp `[b, heads, s]`. `ranges: [b, s, 2]`
/// is each query's visible key range, `blocks: [b, ceil(s / BLOCK), 2]` the union over each
/// query block (all keys for a block with a query that sees none).
pub fn forward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    ranges: CubeTensor<R>,
    blocks: CubeTensor<R>,
    scores: ScoreShape,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let [b, s, heads, d] = q.meta.shape().dims::<4>();
    let out = output_like(&q);
    let lse = f32_tensor(&q, [b, heads, s]);
    let (count, dim) = grid(b * heads, s);
    let dtypes = [q.dtype.into(), ranges.dtype.into()];
    let client = q.client.clone();
    forward_kernel::launch::<R>(
        &client,
        count,
        dim,
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        ranges.into_tensor_arg(),
        blocks.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        scores.scale(d),
        scores.softcap.unwrap_or(1.0),
        d,
        unroll::<R>(&client, d),
        scores.softcap.is_some(),
        dtypes,
    );
    (out, lse)
}

/// Gradients with respect to `q`, `k` and `v`.
#[allow(clippy::too_many_arguments)]
pub fn backward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    out: CubeTensor<R>,
    lse: CubeTensor<R>,
    grad: CubeTensor<R>,
    ranges: CubeTensor<R>,
    blocks: CubeTensor<R>,
    scores: ScoreShape,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let [b, s, heads, d] = q.meta.shape().dims::<4>();
    let [_, t, kv_heads, _] = k.meta.shape().dims::<4>();
    let (dq, dk, dv) = (output_like(&q), output_like(&k), output_like(&v));
    let delta = f32_tensor(&q, [b, heads, s]);
    let (scale, cap, capped) = (
        scores.scale(d),
        scores.softcap.unwrap_or(1.0),
        scores.softcap.is_some(),
    );
    let dtypes = [q.dtype.into(), ranges.dtype.into()];
    let client = q.client.clone();
    let (count, dim) = grid(b * heads, s);
    dq_kernel::launch::<R>(
        &client,
        count,
        dim,
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        v.clone().into_tensor_arg(),
        out.into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        ranges.clone().into_tensor_arg(),
        blocks.clone().into_tensor_arg(),
        dq.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        scale,
        cap,
        d,
        unroll::<R>(&client, d),
        capped,
        dtypes,
    );
    let (count, dim) = grid(b * kv_heads, t);
    dkv_kernel::launch::<R>(
        &client,
        count,
        dim,
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        grad.into_tensor_arg(),
        lse.into_tensor_arg(),
        delta.into_tensor_arg(),
        ranges.into_tensor_arg(),
        blocks.into_tensor_arg(),
        dk.clone().into_tensor_arg(),
        dv.clone().into_tensor_arg(),
        scale,
        cap,
        d,
        unroll::<R>(&client, d),
        capped,
        dtypes,
    );
    (dq, dk, dv)
}
