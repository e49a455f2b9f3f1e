//! Host kernels for Burn's Flex CPU backend: row-parallel (rayon) loops over contiguous f32
//! buffers with a vectorisable `exp`, replacing chains of single-threaded element-wise ops.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{Bool, DType, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::Kernels;
use super::fastmath::{dot, dot3, exp, exp_sum, max};
use super::profile::{Region, span};
use super::simd::multiversion;
use crate::model::quant::dense;
use burn::backend::flex::FlexQTensor;
use burn::tensor::quantization::{QTensorPrimitive, QuantLevel};

/// The tensor's values as a contiguous f32 buffer (a view when it already is one).
fn flex<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    let p = t.into_primitive().tensor();
    if p.is_contiguous() && p.layout().start_offset() == 0 {
        p
    } else {
        p.to_contiguous()
    }
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(FlexTensor::from_data(
        TensorData::new(values, shape),
    )))
}

/// A frozen weight `[out, in]` as a buffer with its row and column strides: row-major, or the
/// transposed storage of [`Kernels::layout_frozen_weight`]; any other layout is made
/// row-major.
fn weight_view(w: Tensor<Flex, 2>) -> (FlexTensor, usize, usize) {
    let [out, inp] = w.dims();
    let p = w.into_primitive().tensor();
    let l = p.layout();
    if l.start_offset() == 0 {
        if l.is_contiguous() {
            return (p, inp, 1);
        }
        if l.strides() == [1, out as isize] {
            return (p, 1, out);
        }
    }
    (p.to_contiguous(), inp, 1)
}

fn is_f32<const D: usize>(t: &Tensor<Flex, D>) -> bool {
    t.dtype() == DType::F32
}

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
    /// `dh = inv * (exp row . W) - W[target]`: the gradient product of an unnormalised
    /// softmax row turned into that of `softmax - onehot(target)`.
    fn ce_grad_row(dh: &mut [f32], inv: f32, w_target: &[f32]) {
        for (g, &w) in dh.iter_mut().zip(w_target) {
            *g = *g * inv - w;
        }
    }
}

/// Row-wise log-sum-exp summed over the rows, each row's `1 / sum(exp)` written to `inv`;
/// with `store_exp` the logits become their unnormalised softmax.
fn ce_rows(
    logits: &mut [f32],
    vocab: usize,
    targets: &[i32],
    store_exp: bool,
    inv: &mut [f32],
) -> f64 {
    logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .zip(inv.par_iter_mut())
        .map(|((row, &t), inv)| {
            let (loss, i) = ce_row(row, t as usize, store_exp);
            *inv = i;
            loss
        })
        .sum()
}

multiversion! {
    /// Softmax of one row of scores over the positions its mask leaves visible (byte 0); a row
    /// with none visible becomes uniform. Masked positions get exactly 0.
    fn masked_softmax_row(row: &mut [f32], mask: &[u8]) {
        for (x, &hidden) in row.iter_mut().zip(mask) {
            if hidden != 0 {
                *x = f32::NEG_INFINITY;
            }
        }
        let m = max(row);
        if m == f32::NEG_INFINITY {
            row.fill(1.0 / row.len() as f32);
            return;
        }
        if m.is_nan() {
            // As PyTorch: a NaN score makes the whole row NaN.
            row.fill(f32::NAN);
            return;
        }
        // Masked entries come out of the clamped exp as ~1e-38, below any visible one (>= 1
        // in the sum); they are zeroed when normalising.
        let inv = (1.0 / exp_sum(row, m, true)) as f32;
        for (x, &hidden) in row.iter_mut().zip(mask) {
            *x = if hidden != 0 { 0.0 } else { *x * inv };
        }
    }
}

multiversion! {
    /// Softmax backward of one row, scaled: `grad <- scale * p * (grad - <grad, p>)`.
    fn softmax_grad_row(grad: &mut [f32], p: &[f32], scale: f32) {
        let d = dot(grad, p);
        for (g, &p) in grad.iter_mut().zip(p) {
            *g = p * (*g - d) * scale;
        }
    }
}

multiversion! {
    /// `o = x w / rms(x)` for one row.
    fn rms_norm_row(o: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
        let r = 1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt();
        for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
            *o = x * r * w;
        }
    }
}

multiversion! {
    /// RMSNorm backward for one row: with `r = (mean(x^2) + eps)^-1/2`,
    /// `dx = r (g w) - x r^3 sum(g w x) / dim`.
    fn rms_norm_grad_row(o: &mut [f32], x: &[f32], g: &[f32], w: &[f32], eps: f32) {
        let dim = x.len() as f32;
        let r = 1.0 / (dot(x, x) / dim + eps).sqrt();
        let c = r * r * r * dot3(x, g, w) / dim;
        for (((o, &x), &g), &w) in o.iter_mut().zip(x).zip(g).zip(w) {
            *o = r * g * w - x * c;
        }
    }
}

multiversion! {
    /// RoPE on one position's heads (`x` is `heads * d` long), rotating halves.
    fn rope_row(o: &mut [f32], x: &[f32], cos: &[f32], sin: &[f32], d: usize) {
        let half = d / 2;
        let (cos, sin) = (&cos[..half], &sin[..half]);
        for (oh, xh) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            let (x1, x2) = xh.split_at(half);
            let (o1, o2) = oh.split_at_mut(half);
            for i in 0..half {
                o1[i] = x1[i] * cos[i] - x2[i] * sin[i];
                o2[i] = x2[i] * cos[i] + x1[i] * sin[i];
            }
        }
    }
}

multiversion! {
    /// `silu(g) * u`, element-wise, into an output that need not be initialised.
    fn swiglu_chunk(o: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            o.write(g / (1.0 + exp(-g)) * u);
        }
    }
}

multiversion! {
    /// SwiGLU backward, element-wise: `dg = d u silu'(g)`, `du = d silu(g)`.
    fn swiglu_grad_chunk(
        dg: &mut [MaybeUninit<f32>],
        du: &mut [MaybeUninit<f32>],
        g: &[f32],
        u: &[f32],
        d: &[f32],
    ) {
        for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(d) {
            let sig = 1.0 / (1.0 + exp(-g));
            let silu = g * sig;
            dg.write(d * u * (sig + silu * (1.0 - sig)));
            du.write(d * silu);
        }
    }
}

/// Scratch for one chunk of logits, kept between calls: allocating up to 160 MiB per chunk per
/// step would pay for fresh pages every time.
static LOGITS: std::sync::Mutex<Vec<f32>> = std::sync::Mutex::new(Vec::new());

/// Fused vocabulary projection + cross-entropy: per chunk of rows, `logits = h W^T` into a
/// reused buffer, then log-sum-exp (and the unnormalised softmax in place when the gradient
/// is wanted), then `dh = (softmax - onehot) W`, normalised on the `[d]` rows. Only one chunk
/// of logits ever exists.
fn ce(
    h: Tensor<Flex, 2>,
    w: Tensor<Flex, 2>,
    targets: &[i32],
    chunk: usize,
    with_grad: bool,
) -> (f64, Option<Tensor<Flex, 2>>) {
    let [n, d] = h.dims();
    let vocab = w.dims()[0];
    let (h, w) = (flex(h), flex(w));
    let (hs, ws) = (h.storage::<f32>(), w.storage::<f32>());
    let chunk = chunk.max(1);
    let mut dh = if with_grad {
        vec![0f32; n * d]
    } else {
        Vec::new()
    };
    let mut scratch = LOGITS.lock().unwrap_or_else(|e| e.into_inner());
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
        {
            let _span = span(Region::LossSoftmax);
            loss += ce_rows(logits, vocab, tgt, with_grad, &mut inv);
        }
        if with_grad {
            let _span = span(Region::LossGrad);
            let dh = &mut dh[start * d..(start + len) * d];
            grad_times_weight(dh, len, d, vocab, logits, ws);
            dh.par_chunks_mut(d)
                .zip(inv.par_iter().zip(tgt.par_iter()))
                .for_each(|(row, (&inv, &t))| {
                    let t = t as usize;
                    ce_grad_row(row, inv, &ws[t * d..(t + 1) * d]);
                });
        }
    }
    (loss, with_grad.then(|| tensor(dh, [n, d])))
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

impl Kernels for Flex {
    /// Projections with more inputs than outputs (`down_proj`, and `k_proj`/`v_proj` under
    /// grouped-query attention) are stored transposed, `[in, out]` row-major behind a
    /// transposed view. The gemm crate packs the weight of `x W^T` by gathering one element per
    /// weight row; with rows as long as `down_proj`'s (4,864 floats) that gather misses the
    /// TLB for every element, and the 0.5B `down_proj` forward ran at 131 GFLOP/s against 210
    /// for the same product with the weight transposed. The backward `dy W` then gathers along
    /// the short side instead (896 floats), which costs nothing measurable.
    fn layout_frozen_weight(w: Tensor<Flex, 2>) -> Tensor<Flex, 2> {
        let [out, inp] = w.dims();
        if !is_f32(&w) || inp <= out {
            return w;
        }
        let stored = flex(w.transpose());
        Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(stored)).transpose()
    }

    /// Block-wise dequantization, row-parallel (Burn's own is a single-threaded loop).
    fn dequantize_weight(w: Tensor<Flex, 2>, dtype: DType) -> Tensor<Flex, 2> {
        dequantize(w, dtype, false)
    }

    fn cross_entropy_sum(
        h: Tensor<Flex, 2>,
        w: Tensor<Flex, 2>,
        targets: &[i32],
        chunk: usize,
    ) -> Tensor<Flex, 1> {
        if !(is_f32(&h) && is_f32(&w)) {
            return cross_entropy_default(h, w, targets, chunk);
        }
        let (loss, _) = ce(h, w, targets, chunk, false);
        tensor(vec![loss as f32], [1])
    }

    fn cross_entropy_sum_and_grad(
        h: Tensor<Flex, 2>,
        w: Tensor<Flex, 2>,
        targets: &[i32],
        chunk: usize,
    ) -> (Tensor<Flex, 1>, Tensor<Flex, 2>) {
        if !(is_f32(&h) && is_f32(&w)) {
            return cross_entropy_and_grad_default(h, w, targets, chunk);
        }
        let dims = h.dims();
        let (loss, grad) = ce(h, w, targets, chunk, true);
        (
            tensor(vec![loss as f32], [1]),
            grad.unwrap_or_else(|| Tensor::zeros(dims, &Default::default())),
        )
    }

    fn masked_softmax(scores: Tensor<Flex, 4>, mask: &Tensor<Flex, 4, Bool>) -> Tensor<Flex, 4> {
        let scores = if is_f32(&scores) {
            scores
        } else {
            scores.cast(DType::F32)
        };
        let [b, h, s, t] = scores.dims();
        let mut scores = flex(scores);
        let m = mask.clone().into_primitive();
        let m = if m.is_contiguous() && m.layout().start_offset() == 0 {
            m
        } else {
            m.to_contiguous()
        };
        let mask_bytes: &[u8] = m.storage::<u8>();
        let rows = scores.storage_mut::<f32>();
        rows.par_chunks_mut(t).enumerate().for_each(|(r, row)| {
            // Row r is (batch, head, query); the mask is shared by heads.
            let (bi, qi) = (r / (h * s), r % s);
            masked_softmax_row(row, &mask_bytes[(bi * s + qi) * t..(bi * s + qi + 1) * t]);
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
        gs.par_chunks_mut(t)
            .zip(ps.par_chunks(t))
            .for_each(|(grow, prow)| softmax_grad_row(grow, prow, 1.0));
        Tensor::from_primitive(TensorPrimitive::Float(g))
    }

    fn rms_norm(x: Tensor<Flex, 2>, w: Tensor<Flex, 1>, eps: f64) -> Tensor<Flex, 2> {
        if !(is_f32(&x) && w.dtype() == DType::F32) {
            return super::generic::rms_norm(x, w, eps);
        }
        rms_norm(x, w, eps)
    }

    fn rms_norm_backward(
        x: Tensor<Flex, 2>,
        w: Tensor<Flex, 1>,
        eps: f64,
        grad: Tensor<Flex, 2>,
    ) -> Tensor<Flex, 2> {
        if !(is_f32(&x) && is_f32(&grad) && w.dtype() == DType::F32) {
            let dtype = x.dtype();
            return rms_norm_backward(
                x.cast(DType::F32),
                w.cast(DType::F32),
                eps,
                grad.cast(DType::F32),
            )
            .cast(dtype);
        }
        rms_norm_backward(x, w, eps, grad)
    }

    fn rope(x: Tensor<Flex, 4>, cos: &Tensor<Flex, 4>, sin: &Tensor<Flex, 4>) -> Tensor<Flex, 4> {
        if !(is_f32(&x) && is_f32(cos) && is_f32(sin)) {
            let d = x.dims()[3];
            let x1 = x.clone().narrow(3, 0, d / 2);
            let x2 = x.clone().narrow(3, d / 2, d / 2);
            let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
            return x * cos.clone() + rotated * sin.clone();
        }
        rope(x, cos, sin)
    }

    fn attention_with_probs(
        q: Tensor<Flex, 4>,
        k: Tensor<Flex, 4>,
        v: Tensor<Flex, 4>,
        mask: &Tensor<Flex, 4, Bool>,
    ) -> (Tensor<Flex, 4>, Tensor<Flex, 4>) {
        if !attention_ok(&q, &k, &v) {
            return super::generic::attention_with_probs(q, k, v, mask);
        }
        attention_with_probs(q, k, v, mask)
    }

    fn attention_backward(
        q: Tensor<Flex, 4>,
        k: Tensor<Flex, 4>,
        v: Tensor<Flex, 4>,
        probs: Tensor<Flex, 4>,
        grad: Tensor<Flex, 4>,
    ) -> (Tensor<Flex, 4>, Tensor<Flex, 4>, Tensor<Flex, 4>) {
        if !(attention_ok(&q, &k, &v) && is_f32(&grad)) {
            let dtype = q.dtype();
            let (dq, dk, dv) = attention_backward(
                q.cast(DType::F32),
                k.cast(DType::F32),
                v.cast(DType::F32),
                probs,
                grad.cast(DType::F32),
            );
            return (dq.cast(dtype), dk.cast(dtype), dv.cast(dtype));
        }
        attention_backward(q, k, v, probs, grad)
    }

    fn lora_linear_forward(
        x: Tensor<Flex, 2>,
        w: Tensor<Flex, 2>,
        bias: Option<Tensor<Flex, 1>>,
        lora: Option<(Tensor<Flex, 2>, Tensor<Flex, 2>, f64)>,
    ) -> (Tensor<Flex, 2>, Option<Tensor<Flex, 2>>) {
        // A quantized wide-input weight is dequantized straight into the transposed storage
        // that `layout_frozen_weight` gives dense ones (the forward's fast layout).
        let [out, inp] = w.dims();
        let w = dequantize(w, x.dtype(), inp > out);
        let f32_all = is_f32(&x)
            && is_f32(&w)
            && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32)
            && lora.as_ref().is_none_or(|(a, b, _)| is_f32(a) && is_f32(b));
        if !f32_all {
            return super::generic::lora_linear_forward(x, w, bias, lora);
        }
        lora_linear_forward(x, w, bias, lora)
    }

    fn lora_linear_backward(
        x: Tensor<Flex, 2>,
        xa: Option<Tensor<Flex, 2>>,
        w: Tensor<Flex, 2>,
        lora: Option<(Tensor<Flex, 2>, Tensor<Flex, 2>, f64)>,
        grad: Tensor<Flex, 2>,
        need_dx: bool,
    ) -> (
        Option<Tensor<Flex, 2>>,
        Option<(Tensor<Flex, 2>, Tensor<Flex, 2>)>,
    ) {
        let w = Flex::dequantize_weight(w, x.dtype());
        if !(is_f32(&x) && is_f32(&w) && is_f32(&grad)) {
            return super::generic::lora_linear_backward(x, xa, w, lora, grad, need_dx);
        }
        lora_linear_backward(x, xa, w, lora, grad, need_dx)
    }

    fn swiglu(gate: Tensor<Flex, 2>, up: Tensor<Flex, 2>) -> Tensor<Flex, 2> {
        if !(is_f32(&gate) && is_f32(&up)) {
            return burn::tensor::activation::silu(gate) * up;
        }
        let _span = span(Region::Swiglu);
        let dims = gate.dims();
        let g = flex(gate);
        let u = flex(up);
        let (gs, us) = (g.storage::<f32>(), u.storage::<f32>());
        let n = gs.len();
        assert_eq!(us.len(), n, "swiglu: gate and up differ in size");
        let mut out = Vec::with_capacity(n);
        out.spare_capacity_mut()[..n]
            .par_chunks_mut(4096)
            .zip(gs.par_chunks(4096).zip(us.par_chunks(4096)))
            .for_each(|(o, (g, u))| swiglu_chunk(o, g, u));
        // SAFETY: the chunks of `gs` and `us` (both n long) pair with every chunk of the n
        // outputs, and `swiglu_chunk` writes each element of its chunk.
        unsafe { out.set_len(n) };
        tensor(out, dims)
    }

    fn swiglu_backward(
        gate: Tensor<Flex, 2>,
        up: Tensor<Flex, 2>,
        grad: Tensor<Flex, 2>,
    ) -> (Tensor<Flex, 2>, Tensor<Flex, 2>) {
        if !(is_f32(&gate) && is_f32(&up) && is_f32(&grad)) {
            let sig = burn::tensor::activation::sigmoid(gate.clone());
            let silu = gate.clone() * sig.clone();
            let dsilu = sig.clone() + silu.clone() * (sig.neg() + 1.0);
            return (grad.clone() * up * dsilu, grad * silu);
        }
        let _span = span(Region::SwigluBackward);
        let dims = gate.dims();
        let (g, u, d) = (flex(gate), flex(up), flex(grad));
        let (gs, us, ds) = (g.storage::<f32>(), u.storage::<f32>(), d.storage::<f32>());
        let n = gs.len();
        assert!(
            us.len() == n && ds.len() == n,
            "swiglu backward: sizes differ"
        );
        let (mut dg, mut du) = (Vec::with_capacity(n), Vec::with_capacity(n));
        dg.spare_capacity_mut()[..n]
            .par_chunks_mut(4096)
            .zip(du.spare_capacity_mut()[..n].par_chunks_mut(4096))
            .zip(
                gs.par_chunks(4096)
                    .zip(us.par_chunks(4096))
                    .zip(ds.par_chunks(4096)),
            )
            .for_each(|((dg, du), ((g, u), d))| swiglu_grad_chunk(dg, du, g, u, d));
        // SAFETY: as in `swiglu`: equal-length inputs, every output element written.
        unsafe {
            dg.set_len(n);
            du.set_len(n);
        }
        (tensor(dg, dims), tensor(du, dims))
    }
}

/// `w` dense in `dtype`: a block-quantized weight dequantized in parallel (into transposed
/// `[in, out]` storage behind a transposed view when `transposed`), anything else as
/// `dense` gives it.
fn dequantize(w: Tensor<Flex, 2>, dtype: DType, transposed: bool) -> Tensor<Flex, 2> {
    let dims = w.dims();
    let [out, inp] = dims;
    let q: FlexQTensor = match w.into_primitive() {
        TensorPrimitive::QFloat(q) => q,
        p => return Tensor::from_primitive(p),
    };
    let block = match q.scheme().level {
        QuantLevel::Block(b) => b.num_elements(),
        QuantLevel::Tensor => 0,
    };
    let codes = q.tensor();
    let n = out * inp;
    let plain = dtype == DType::F32
        && block > 0
        && codes.is_contiguous()
        && codes.layout().start_offset() == 0
        && codes.storage::<i8>().len() == n
        && q.scales().len() * block == n;
    if !plain {
        return dense(Tensor::from_primitive(TensorPrimitive::QFloat(q)), dtype);
    }
    let _span = span(Region::Dequantize);
    let (codes, scales) = (codes.storage::<i8>(), q.scales());
    let mut values = vec![0f32; n];
    if transposed && inp % block == 0 {
        // Task `ib` owns rows ib*block.. of the `[in, out]` storage (a few hundred KB): it
        // reads one block of every weight row and writes it down a column.
        values
            .par_chunks_mut(block * out)
            .enumerate()
            .for_each(|(ib, rows)| {
                let i0 = ib * block;
                for o in 0..out {
                    let start = o * inp + i0;
                    let s = scales[start / block];
                    for (k, &c) in codes[start..start + block].iter().enumerate() {
                        rows[k * out + o] = f32::from(c) * s;
                    }
                }
            });
        let stored = tensor(values, [inp, out]);
        return stored.transpose();
    }
    // Chunks of whole blocks, a few rows' worth each.
    let per_chunk = block * (4096 / block).max(1);
    values
        .par_chunks_mut(per_chunk)
        .zip(codes.par_chunks(per_chunk))
        .enumerate()
        .for_each(|(c, (o, q))| {
            let first = c * per_chunk / block;
            for (b, (ob, qb)) in o.chunks_mut(block).zip(q.chunks(block)).enumerate() {
                let s = scales[first + b];
                for (y, &x) in ob.iter_mut().zip(qb) {
                    *y = f32::from(x) * s;
                }
            }
        });
    tensor(values, dims)
}

/// bf16/f16 on the CPU: upcast and use the f32 kernel.
fn cross_entropy_default(
    h: Tensor<Flex, 2>,
    w: Tensor<Flex, 2>,
    targets: &[i32],
    chunk: usize,
) -> Tensor<Flex, 1> {
    <Flex as Kernels>::cross_entropy_sum(h.cast(DType::F32), w.cast(DType::F32), targets, chunk)
}

fn cross_entropy_and_grad_default(
    h: Tensor<Flex, 2>,
    w: Tensor<Flex, 2>,
    targets: &[i32],
    chunk: usize,
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

/// A raw pointer that parallel tasks may share when each writes a disjoint part of the buffer.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: used only where every task writes elements no other task touches (see callers).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// `dst (+)= scale * lhs rhs` on raw strided buffers (row-major `dst` with row stride
/// `dst_rs`), with the gemm crate's `par`allelism (`None` inside tasks that are already
/// parallel). The one place the crate is called.
///
/// # Safety
/// Every strided element of `lhs` and `rhs` must be readable and every element of `dst`
/// writable (and readable when `accumulate`), with no other access to `dst` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_with(
    par: gemm::Parallelism,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    scale: f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

fn all_f32<const D: usize>(ts: &[&Tensor<Flex, D>]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32)
}

pub(super) fn rms_norm(x: Tensor<Flex, 2>, w: Tensor<Flex, 1>, eps: f64) -> Tensor<Flex, 2> {
    let _span = span(Region::RmsNorm);
    let [rows, dim] = x.dims();
    let (x, w) = (flex(x), flex(w));
    let (xs, ws) = (x.storage::<f32>(), w.storage::<f32>());
    let mut out = vec![0f32; rows * dim];
    out.par_chunks_mut(dim)
        .zip(xs.par_chunks(dim))
        .for_each(|(o, x)| rms_norm_row(o, x, ws, eps as f32));
    tensor(out, [rows, dim])
}

pub(super) fn rms_norm_backward(
    x: Tensor<Flex, 2>,
    w: Tensor<Flex, 1>,
    eps: f64,
    grad: Tensor<Flex, 2>,
) -> Tensor<Flex, 2> {
    let _span = span(Region::RmsNormBackward);
    let [rows, dim] = x.dims();
    let (x, w, g) = (flex(x), flex(w), flex(grad));
    let (xs, ws, gs) = (x.storage::<f32>(), w.storage::<f32>(), g.storage::<f32>());
    let mut out = vec![0f32; rows * dim];
    out.par_chunks_mut(dim)
        .zip(xs.par_chunks(dim).zip(gs.par_chunks(dim)))
        .for_each(|(o, (x, g))| rms_norm_grad_row(o, x, g, ws, eps as f32));
    tensor(out, [rows, dim])
}

/// RoPE on `[b, s, h, d]` with `cos`/`sin` `[b, s, 1, d]` (both halves hold the same values).
pub(super) fn rope(
    x: Tensor<Flex, 4>,
    cos: &Tensor<Flex, 4>,
    sin: &Tensor<Flex, 4>,
) -> Tensor<Flex, 4> {
    let _span = span(Region::Rope);
    let [b, s, h, d] = x.dims();
    let (x, c, sn) = (flex(x), flex(cos.clone()), flex(sin.clone()));
    let (xs, cs, ss) = (x.storage::<f32>(), c.storage::<f32>(), sn.storage::<f32>());
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(h * d)
        .zip(xs.par_chunks(h * d))
        .enumerate()
        .for_each(|(pos, (o, x))| {
            rope_row(o, x, &cs[pos * d..], &ss[pos * d..], d);
        });
    let _ = b;
    tensor(out, [b, s, h, d])
}

/// Query rows per block in attention. A block only touches keys up to the last one any of its
/// rows can see, so under a causal mask the upper triangle is mostly skipped (at 512 tokens
/// the score, softmax and value products cover 56% of the full square).
const QUERY_BLOCK: usize = 64;

/// `(first row, end row, key extent)` per block of query rows: the extent is one past the last
/// key a row of the block may see. A row that sees none attends uniformly to every key, so its
/// block spans all keys.
fn query_blocks(
    extent_of_row: impl Fn(usize) -> Option<usize>,
    s: usize,
    t: usize,
) -> Vec<(usize, usize, usize)> {
    (0..s)
        .step_by(QUERY_BLOCK)
        .map(|r0| {
            let r1 = (r0 + QUERY_BLOCK).min(s);
            let e = (r0..r1)
                .map(|qi| extent_of_row(qi).unwrap_or(t))
                .max()
                .unwrap_or(t);
            (r0, r1, e)
        })
        .collect()
}

/// Attention without any layout copies: per (batch, head), GEMMs on strided views of the
/// `[b, s, heads, d]` buffers, the mask and softmax row by row, results written in place;
/// per block of query rows only the keys the block can see.
pub(super) fn attention_with_probs(
    q: Tensor<Flex, 4>,
    k: Tensor<Flex, 4>,
    v: Tensor<Flex, 4>,
    mask: &Tensor<Flex, 4, Bool>,
) -> (Tensor<Flex, 4>, Tensor<Flex, 4>) {
    let _span = span(Region::AttentionForward);
    let [b, s, nh, d] = q.dims();
    let [_, t, nkv, _] = k.dims();
    let rep = nh / nkv;
    let scale = 1.0 / (d as f32).sqrt();
    let (q, k, v) = (flex(q), flex(k), flex(v));
    let m = mask.clone().into_primitive();
    let m = if m.is_contiguous() && m.layout().start_offset() == 0 {
        m
    } else {
        m.to_contiguous()
    };
    let (qs, ks, vs, ms) = (
        q.storage::<f32>(),
        k.storage::<f32>(),
        v.storage::<f32>(),
        m.storage::<u8>(),
    );
    // The mask is shared by the heads: blocks per batch row.
    let blocks: Vec<Vec<(usize, usize, usize)>> = (0..b)
        .map(|bi| {
            let visible = |qi: usize| {
                let row = &ms[(bi * s + qi) * t..(bi * s + qi + 1) * t];
                row.iter().rposition(|&hidden| hidden == 0).map(|j| j + 1)
            };
            query_blocks(visible, s, t)
        })
        .collect();
    let mut out = vec![0f32; b * s * nh * d];
    let mut probs = vec![0f32; b * nh * s * t];
    let (op, pp) = (SharedMut(out.as_mut_ptr()), SharedMut(probs.as_mut_ptr()));
    (0..b * nh).into_par_iter().for_each(|task| {
        let (bi, head) = (task / nh, task % nh);
        let kvh = head / rep;
        let (op, pp) = (op, pp);
        for &(r0, r1, e) in &blocks[bi] {
            let rows = r1 - r0;
            // SAFETY: task (bi, head) writes only probs[bi, head] and the `head` columns of
            // out[bi]; the GEMM extents below (rows r0..r1, keys 0..e <= t) stay inside the
            // q/k/v/out/probs buffers.
            unsafe {
                let p = pp.0.add((bi * nh + head) * s * t + r0 * t);
                let qb = qs.as_ptr().add((bi * s * nh + head) * d + r0 * nh * d);
                let kb = ks.as_ptr().add((bi * t * nkv + kvh) * d);
                let vb = vs.as_ptr().add((bi * t * nkv + kvh) * d);
                // S = scale * Q_h K_h^T over the visible keys; later columns stay 0.
                gemm_with(
                    gemm::Parallelism::None,
                    rows,
                    e,
                    d,
                    p,
                    t,
                    false,
                    qb,
                    nh * d,
                    1,
                    kb,
                    1,
                    nkv * d,
                    scale,
                );
                let block = std::slice::from_raw_parts_mut(p, rows * t);
                for (i, row) in block.chunks_mut(t).enumerate() {
                    let qi = r0 + i;
                    masked_softmax_row(&mut row[..e], &ms[(bi * s + qi) * t..][..e]);
                }
                // O_h = P V_h, into the head's columns of out[bi].
                gemm_with(
                    gemm::Parallelism::None,
                    rows,
                    d,
                    e,
                    op.0.add((bi * s * nh + head) * d + r0 * nh * d),
                    nh * d,
                    false,
                    p,
                    t,
                    1,
                    vb,
                    nkv * d,
                    1,
                    1.0,
                );
            }
        }
    });
    (tensor(out, [b, s, nh, d]), tensor(probs, [b, nh, s, t]))
}

pub(super) fn attention_backward(
    q: Tensor<Flex, 4>,
    k: Tensor<Flex, 4>,
    v: Tensor<Flex, 4>,
    probs: Tensor<Flex, 4>,
    grad: Tensor<Flex, 4>,
) -> (Tensor<Flex, 4>, Tensor<Flex, 4>, Tensor<Flex, 4>) {
    let _span = span(Region::AttentionBackward);
    let [b, s, nh, d] = q.dims();
    let [_, t, nkv, _] = k.dims();
    let rep = nh / nkv;
    let scale = 1.0 / (d as f32).sqrt();
    let (q, k, v, p, g) = (flex(q), flex(k), flex(v), flex(probs), flex(grad));
    let (qs, ks, vs, ps, gs) = (
        q.storage::<f32>(),
        k.storage::<f32>(),
        v.storage::<f32>(),
        p.storage::<f32>(),
        g.storage::<f32>(),
    );
    let mut dq = vec![0f32; qs.len()];
    let mut dk = vec![0f32; ks.len()];
    let mut dv = vec![0f32; vs.len()];
    let (dqp, dkp, dvp) = (
        SharedMut(dq.as_mut_ptr()),
        SharedMut(dk.as_mut_ptr()),
        SharedMut(dv.as_mut_ptr()),
    );
    // One task per (batch, kv head): it owns that kv head's dk/dv and its query heads' dq.
    (0..b * nkv).into_par_iter().for_each(|task| {
        let (bi, kvh) = (task / nkv, task % nkv);
        let (dqp, dkp, dvp) = (dqp, dkp, dvp);
        let mut ds = vec![0f32; QUERY_BLOCK.min(s) * t];
        for r in 0..rep {
            let head = kvh * rep + r;
            let prob = &ps[(bi * nh + head) * s * t..(bi * nh + head + 1) * s * t];
            // Every gradient term carries a factor P, so keys past a row's last non-zero
            // probability contribute exactly nothing and are skipped.
            let nonzero = |qi: usize| {
                let row = &prob[qi * t..(qi + 1) * t];
                Some(row.iter().rposition(|&x| x != 0.0).map_or(0, |j| j + 1))
            };
            for (r0, r1, e) in query_blocks(nonzero, s, t) {
                let rows = r1 - r0;
                if e == 0 {
                    continue;
                }
                let ds = &mut ds[..rows * e];
                // SAFETY: this task writes only dk/dv at (bi, kvh) and dq at (bi, heads of
                // kvh); all GEMM extents (rows r0..r1, keys 0..e <= t) stay inside the
                // buffers. dk/dv start at zero, so every product accumulates.
                unsafe {
                    let kb = ks.as_ptr().add((bi * t * nkv + kvh) * d);
                    let vb = vs.as_ptr().add((bi * t * nkv + kvh) * d);
                    let dkb = dkp.0.add((bi * t * nkv + kvh) * d);
                    let dvb = dvp.0.add((bi * t * nkv + kvh) * d);
                    let pb = prob.as_ptr().add(r0 * t);
                    let gb = gs.as_ptr().add((bi * s * nh + head) * d + r0 * nh * d);
                    let qb = qs.as_ptr().add((bi * s * nh + head) * d + r0 * nh * d);
                    // dV += P^T dO
                    gemm_with(
                        gemm::Parallelism::None,
                        e,
                        d,
                        rows,
                        dvb,
                        nkv * d,
                        true,
                        pb,
                        1,
                        t,
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
                    // dS = P (dP - rowsum(dP P)) * scale
                    for (i, drow) in ds.chunks_mut(e).enumerate() {
                        softmax_grad_row(drow, &prob[(r0 + i) * t..][..e], scale);
                    }
                    // dQ_h = dS K
                    gemm_with(
                        gemm::Parallelism::None,
                        rows,
                        d,
                        e,
                        dqp.0.add((bi * s * nh + head) * d + r0 * nh * d),
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
                    // dK += dS^T Q_h
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
    });
    (
        tensor(dq, [b, s, nh, d]),
        tensor(dk, [b, t, nkv, d]),
        tensor(dv, [b, t, nkv, d]),
    )
}

/// Whether the Flex attention kernels apply (f32 inputs).
pub(super) fn attention_ok(q: &Tensor<Flex, 4>, k: &Tensor<Flex, 4>, v: &Tensor<Flex, 4>) -> bool {
    all_f32(&[q, k, v])
}

/// `y = x W^T + bias + s (x A^T) B^T`, all in GEMMs writing straight into row-major outputs
/// (no element-wise passes for the bias, the scaling or the sum).
#[allow(clippy::type_complexity)]
pub(super) fn lora_linear_forward(
    x: Tensor<Flex, 2>,
    w: Tensor<Flex, 2>,
    bias: Option<Tensor<Flex, 1>>,
    lora: Option<(Tensor<Flex, 2>, Tensor<Flex, 2>, f64)>,
) -> (Tensor<Flex, 2>, Option<Tensor<Flex, 2>>) {
    let _span = span(Region::LoraForward);
    let [n, inp] = x.dims();
    let out = w.dims()[0];
    let x = flex(x);
    let (w, w_rs, w_cs) = weight_view(w);
    let (xs, ws) = (x.storage::<f32>(), w.storage::<f32>());
    // y (+)= x W^T
    let mut y = match bias {
        Some(b) => {
            let b = flex(b);
            let bs = b.storage::<f32>();
            let mut y = vec![0f32; n * out];
            y.par_chunks_mut(out)
                .for_each(|row| row.copy_from_slice(bs));
            gemm_into(&mut y, n, out, inp, xs, inp, 1, ws, w_cs, w_rs, true, 1.0);
            y
        }
        None => gemm_new(n, out, inp, xs, inp, 1, ws, w_cs, w_rs, 1.0),
    };
    let Some((a, b, scaling)) = lora else {
        return (tensor(y, [n, out]), None);
    };
    let _low_rank = span(Region::LowRankForward);
    let r = a.dims()[0];
    let (a, b) = (flex(a), flex(b));
    let (as_, bs) = (a.storage::<f32>(), b.storage::<f32>());
    let xa = gemm_new(n, r, inp, xs, inp, 1, as_, 1, inp, 1.0);
    // y += s (x A^T) B^T
    gemm_into(&mut y, n, out, r, &xa, r, 1, bs, 1, r, true, scaling as f32);
    (tensor(y, [n, out]), Some(tensor(xa, [n, r])))
}

#[allow(clippy::type_complexity)]
pub(super) fn lora_linear_backward(
    x: Tensor<Flex, 2>,
    xa: Option<Tensor<Flex, 2>>,
    w: Tensor<Flex, 2>,
    lora: Option<(Tensor<Flex, 2>, Tensor<Flex, 2>, f64)>,
    grad: Tensor<Flex, 2>,
    need_dx: bool,
) -> (
    Option<Tensor<Flex, 2>>,
    Option<(Tensor<Flex, 2>, Tensor<Flex, 2>)>,
) {
    let _span = span(Region::LoraBackward);
    let [n, inp] = x.dims();
    let out = w.dims()[0];
    let (x, g) = (flex(x), flex(grad));
    let (w, w_rs, w_cs) = weight_view(w);
    let (xs, ws, gs) = (x.storage::<f32>(), w.storage::<f32>(), g.storage::<f32>());
    // dx = dy W
    let mut dx = need_dx.then(|| gemm_new(n, inp, out, gs, out, 1, ws, w_rs, w_cs, 1.0));
    let mut dlora = None;
    if let (Some((a, b, scaling)), Some(xa)) = (lora, xa) {
        let _low_rank = span(Region::LowRankBackward);
        let r = a.dims()[0];
        let (a, b, xa) = (flex(a), flex(b), flex(xa));
        let (as_, bs, xas) = (a.storage::<f32>(), b.storage::<f32>(), xa.storage::<f32>());
        let s = scaling as f32;
        // dxa = s dy B                [n, r]
        let dxa = gemm_new(n, r, out, gs, out, 1, bs, r, 1, s);
        // dB = s dy^T xa              [out, r]
        let db = gemm_new(out, r, n, gs, 1, out, xas, r, 1, s);
        // dA = dxa^T x                [r, in]
        let da = gemm_new(r, inp, n, &dxa, 1, r, xs, inp, 1, 1.0);
        if let Some(dx) = dx.as_mut() {
            // dx += dxa A
            gemm_into(dx, n, inp, r, &dxa, r, 1, as_, inp, 1, true, 1.0);
        }
        dlora = Some((tensor(da, [r, inp]), tensor(db, [out, r])));
    }
    (dx.map(|d| tensor(d, [n, inp])), dlora)
}

/// `scale * lhs rhs` as a new row-major `m x n` buffer, on all threads. The buffer is not
/// zeroed first: the GEMM writes every element without reading it (the bulk of a step's
/// outputs, ~1.2 GB per 0.5B step, would otherwise be memset and then overwritten).
#[allow(clippy::too_many_arguments)]
fn gemm_new(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    scale: f32,
) -> Vec<f32> {
    if k == 0 || m == 0 || n == 0 {
        return vec![0f32; m * n];
    }
    assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    let mut dst: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: the assertions keep every strided read inside `lhs`/`rhs`; `dst` has capacity
    // for m * n floats. With `read_dst = false` the gemm crate never reads the destination
    // (alpha is forced to zero and every element is stored, its k = 0 and gemv paths included),
    // so all m * n elements are initialised before `set_len`.
    unsafe {
        gemm_with(
            all_threads(),
            m,
            n,
            k,
            dst.as_mut_ptr(),
            n,
            false,
            lhs.as_ptr(),
            lhs_rs,
            lhs_cs,
            rhs.as_ptr(),
            rhs_rs,
            rhs_cs,
            scale,
        );
        dst.set_len(m * n);
    }
    dst
}

/// `dst (+)= scale * lhs rhs`, row-major `dst`, strided operands, on all threads.
#[allow(clippy::too_many_arguments)]
fn gemm_into(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    accumulate: bool,
    scale: f32,
) {
    assert!(dst.len() >= m * n);
    assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(k == 0 || n == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the assertions above keep every strided access inside the slices; `dst` is a
    // distinct, exclusively borrowed buffer.
    unsafe {
        gemm_with(
            all_threads(),
            m,
            n,
            k,
            dst.as_mut_ptr(),
            n,
            accumulate,
            lhs.as_ptr(),
            lhs_rs,
            lhs_cs,
            rhs.as_ptr(),
            rhs_rs,
            rhs_cs,
            scale,
        );
    }
}

fn all_threads() -> gemm::Parallelism {
    gemm::Parallelism::Rayon(rayon::current_num_threads())
}
