//! Blockwise attention in Burn tensor ops, for every backend without its own kernel (CUDA
//! through fusion among them): FlashAttention's online softmax over key blocks (Dao et al.
//! 2022; the backward as in FlashAttention-2), so memory is O(S x block) rather than the
//! O(S^2) probabilities, and only the (query block, key block) tiles the mask leaves visible
//! are computed. Query heads are grouped under their key/value head, so grouped-query K and V
//! are read, never repeated. Scores and the softmax statistics are f32 whatever the model
//! dtype; the probabilities are cast to it for the products with V, as flash kernels do.

use burn::tensor::{Bool, DType, Tensor, TensorData, backend::Backend};

use super::{as_f32, cast_to};
use crate::model::kernels::MASK_VALUE;
use crate::model::kernels::mask::AttentionMask;

/// Query rows and key columns per tile: a tile's f32 scores are `batch x heads x 128 x 128`.
const BLOCK: usize = 128;

/// `true` where a query of `rows` may not see a key of `keys` (queries that see none
/// included), as `[b, kv_heads, rep * rows, keys]` to match the grouped scores.
fn tile_hidden<B: Backend>(
    mask: &AttentionMask,
    rows: std::ops::Range<usize>,
    keys: std::ops::Range<usize>,
    heads: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let (b, br, bc) = (mask.batch(), rows.len(), keys.len());
    let [nkv, rep] = heads;
    let hidden = Tensor::<B, 5, Bool>::from_data(
        TensorData::new(mask.hidden(rows, keys), [b, 1, 1, br, bc]),
        device,
    );
    hidden
        .expand([b, nkv, rep, br, bc])
        .reshape([b, nkv, rep * br, bc])
}

/// `true` for the queries of `rows` that see no key, `[b, kv_heads, rep * rows, 1]`.
fn empty_rows<B: Backend>(
    mask: &AttentionMask,
    rows: std::ops::Range<usize>,
    heads: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let (b, br) = (mask.batch(), rows.len());
    let [nkv, rep] = heads;
    let flags: Vec<bool> = (0..b)
        .flat_map(|bi| rows.clone().map(move |i| (bi, i)))
        .map(|(bi, i)| mask.is_empty_row(bi, i))
        .collect();
    Tensor::<B, 5, Bool>::from_data(TensorData::new(flags, [b, 1, 1, br, 1]), device)
        .expand([b, nkv, rep, br, 1])
        .reshape([b, nkv, rep * br, 1])
}

/// `x: [b, n, heads, d]` as `[b, kv_heads, rep, n, d]` (query heads under their kv head).
fn grouped<B: Backend>(x: Tensor<B, 4>, nkv: usize) -> Tensor<B, 5> {
    let [b, n, nh, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, nkv, nh / nkv, n, d])
}

/// Scaled scores soft-capped by `cap` (`cap * tanh(s / cap)`), with the cap's slope
/// `1 - tanh^2(s / cap)` for the backward.
fn capped<B: Backend>(sc: Tensor<B, 4>, cap: Option<f32>) -> (Tensor<B, 4>, Option<Tensor<B, 4>>) {
    match cap {
        None => (sc, None),
        Some(cap) => {
            let t = (sc / cap as f64).tanh();
            let slope = t.clone().powi_scalar(2).neg() + 1.0;
            (t * cap as f64, Some(slope))
        }
    }
}

/// Rows `r0..r0 + br` of grouped `x` as `[b, kv_heads, rep * br, d]` in f32.
fn rows_of<B: Backend>(x: &Tensor<B, 5>, r0: usize, br: usize) -> Tensor<B, 4> {
    let [b, nkv, rep, _, d] = x.dims();
    as_f32(x.clone().narrow(3, r0, br).reshape([b, nkv, rep * br, d]))
}

pub fn forward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttentionMask,
) -> (Tensor<B, 4>, Tensor<B, 3>) {
    let [b, s, nh, d] = q.dims();
    let [_, t, nkv, _] = k.dims();
    let rep = nh / nkv;
    let (dtype, device) = (q.dtype(), q.device());
    let shape = mask.scores();
    let scale = shape.scale(d) as f64;
    let qg = grouped(q, nkv);
    let kh = k.swap_dims(1, 2);
    let vh = v.swap_dims(1, 2);
    // The output of a query that sees nothing: the mean of every value (a uniform softmax).
    let mean_v = as_f32(vh.clone()).mean_dim(2);
    let mut outs = Vec::new();
    let mut lses = Vec::new();
    for r0 in (0..s).step_by(BLOCK) {
        let br = BLOCK.min(s - r0);
        let rows = r0..r0 + br;
        let qb = rows_of(&qg, r0, br);
        let f32s = |shape: [usize; 4], value: f32| {
            Tensor::<B, 4>::full(shape, value, (&device, DType::F32))
        };
        let mut m = f32s([b, nkv, rep * br, 1], MASK_VALUE);
        let mut l = f32s([b, nkv, rep * br, 1], 0.0);
        let mut acc = f32s([b, nkv, rep * br, d], 0.0);
        if let Some(keys) = mask.block_keys_all(rows.clone()) {
            for c0 in keys.clone().step_by(BLOCK) {
                let bc = BLOCK.min(keys.end - c0);
                let kb = as_f32(kh.clone().narrow(2, c0, bc));
                let vb = vh.clone().narrow(2, c0, bc);
                let hidden = tile_hidden::<B>(mask, rows.clone(), c0..c0 + bc, [nkv, rep], &device);
                let sc = capped(qb.clone().matmul(kb.swap_dims(2, 3)) * scale, shape.softcap)
                    .0
                    .mask_fill(hidden, MASK_VALUE);
                // Online softmax: rescale what was summed under the old maximum.
                let m_new = m.clone().max_pair(sc.clone().max_dim(3));
                let p = (sc - m_new.clone()).exp();
                let alpha = (m - m_new.clone()).exp();
                l = l * alpha.clone() + p.clone().sum_dim(3);
                acc = acc * alpha + as_f32(cast_to(p, vb.dtype()).matmul(vb));
                m = m_new;
            }
        }
        let empty = empty_rows::<B>(mask, rows, [nkv, rep], &device);
        let uniform = mean_v.clone().expand([b, nkv, rep * br, d]);
        let out =
            (acc / l.clone()).mask_where(empty.clone().expand([b, nkv, rep * br, d]), uniform);
        let lse = (m + l.log()).mask_fill(empty, (t as f32).ln());
        outs.push(out.reshape([b, nkv, rep, br, d]));
        lses.push(lse.reshape([b, nh, br]));
    }
    let out = Tensor::cat(outs, 3).reshape([b, nh, s, d]).swap_dims(1, 2);
    (cast_to(out, dtype), Tensor::cat(lses, 2))
}

#[allow(clippy::too_many_arguments)]
pub fn backward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    out: Tensor<B, 4>,
    lse: Tensor<B, 3>,
    grad: Tensor<B, 4>,
    mask: &AttentionMask,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [b, s, nh, d] = q.dims();
    let [_, t, nkv, _] = k.dims();
    let rep = nh / nkv;
    let (q_dtype, k_dtype, v_dtype, device) = (q.dtype(), k.dtype(), v.dtype(), q.device());
    let shape = mask.scores();
    let scale = shape.scale(d) as f64;
    let qg = grouped(q, nkv);
    let gg = grouped(grad, nkv);
    // D_i = dO_i . O_i, the row sum FlashAttention-2 uses for softmax's backward.
    let dsum = (as_f32(gg.clone()) * as_f32(grouped(out, nkv))).sum_dim(4);
    let lse_g = lse.reshape([b, nkv, rep, s, 1]);
    let kh = k.swap_dims(1, 2);
    let vh = v.swap_dims(1, 2);
    let zeros = |shape: [usize; 4]| Tensor::<B, 4>::zeros(shape, (&device, DType::F32));
    let mut dk = zeros([b, nkv, t, d]);
    let mut dv = zeros([b, nkv, t, d]);
    let mut dqs = Vec::new();
    for r0 in (0..s).step_by(BLOCK) {
        let br = BLOCK.min(s - r0);
        let rows = r0..r0 + br;
        let qb = rows_of(&qg, r0, br);
        let gb = rows_of(&gg, r0, br);
        let lb = lse_g
            .clone()
            .narrow(3, r0, br)
            .reshape([b, nkv, rep * br, 1]);
        let db = dsum
            .clone()
            .narrow(3, r0, br)
            .reshape([b, nkv, rep * br, 1]);
        let mut dqb = zeros([b, nkv, rep * br, d]);
        if let Some(keys) = mask.block_keys_all(rows.clone()) {
            for c0 in keys.clone().step_by(BLOCK) {
                let bc = BLOCK.min(keys.end - c0);
                let kb = as_f32(kh.clone().narrow(2, c0, bc));
                let vb = as_f32(vh.clone().narrow(2, c0, bc));
                let hidden = tile_hidden::<B>(mask, rows.clone(), c0..c0 + bc, [nkv, rep], &device);
                let (sc, slope) = capped(
                    qb.clone().matmul(kb.clone().swap_dims(2, 3)) * scale,
                    shape.softcap,
                );
                // Hidden entries (queries that see nothing included) get exactly 0.
                let p = (sc.mask_fill(hidden, MASK_VALUE) - lb.clone()).exp();
                let dp = gb.clone().matmul(vb.swap_dims(2, 3));
                let mut ds = p.clone() * (dp - db.clone()) * scale;
                if let Some(slope) = slope {
                    ds = ds * slope;
                }
                let keys_c = [0..b, 0..nkv, c0..c0 + bc, 0..d];
                let dv_t = p.swap_dims(2, 3).matmul(gb.clone());
                let dk_t = ds.clone().swap_dims(2, 3).matmul(qb.clone());
                dv = dv
                    .clone()
                    .slice_assign(keys_c.clone(), dv.slice(keys_c.clone()) + dv_t);
                dk = dk
                    .clone()
                    .slice_assign(keys_c.clone(), dk.slice(keys_c) + dk_t);
                dqb = dqb + ds.matmul(kb);
            }
        }
        dqs.push(dqb.reshape([b, nkv, rep, br, d]));
    }
    // Queries that see nothing took the mean of every value: dV gets dO / t on every key.
    let empty: Vec<bool> = (0..b)
        .flat_map(|bi| (0..s).map(move |i| (bi, i)))
        .map(|(bi, i)| mask.is_empty_row(bi, i))
        .collect();
    if empty.iter().any(|&e| e) {
        let flags =
            Tensor::<B, 5, Bool>::from_data(TensorData::new(empty, [b, 1, 1, s, 1]), &device);
        let g_empty = as_f32(gg)
            .mask_fill(flags.bool_not().expand([b, nkv, rep, s, d]), 0.0)
            .sum_dim(3)
            .sum_dim(2)
            .reshape([b, nkv, 1, d]);
        dv = dv + (g_empty / t as f64).expand([b, nkv, t, d]);
    }
    let dq = Tensor::cat(dqs, 3).reshape([b, nh, s, d]).swap_dims(1, 2);
    (
        cast_to(dq, q_dtype),
        cast_to(dk.swap_dims(1, 2), k_dtype),
        cast_to(dv.swap_dims(1, 2), v_dtype),
    )
}
