//! The frozen linear layer with its LoRA adapter on the host: every product a GEMM into a
//! row-major output, the adapter's dropout drawn row by row into a temporary in the forward
//! and again in the backward, and block-quantized weights dequantized in parallel just in time.

use burn::backend::Flex;
use burn::backend::flex::FlexQTensor;
use burn::tensor::quantization::{QTensorPrimitive, QuantLevel};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::super::LinearGrads;
use super::super::dropout::Dropout;
use super::super::profile::{Region, span};
use super::gemm::{gemm_into, gemm_new};
use super::{flex, tensor, weight_view};
use crate::model::quant::dense;

/// `scale * mask * x` for an `[n, width]` input, into a temporary (drawn again in the
/// backward pass; never kept).
fn dropped(xs: &[f32], width: usize, d: &Dropout) -> Vec<f32> {
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(width)
        .zip(xs.par_chunks(width))
        .enumerate()
        .for_each(|(r, (o, x))| d.apply_row(r, x, o));
    out
}

/// `y = x W^T + bias + s (dropout(x) A^T) B^T`, all in GEMMs writing straight into row-major
/// outputs (no element-wise passes for the bias, the scaling or the sum).
#[allow(clippy::type_complexity)]
pub(super) fn lora_linear_forward(
    x: Tensor<Flex, 2>,
    w: Tensor<Flex, 2>,
    bias: Option<Tensor<Flex, 1>>,
    lora: Option<(Tensor<Flex, 2>, Tensor<Flex, 2>, f64)>,
    dropout: Option<&Dropout>,
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
    let kept = dropout.map(|d| dropped(xs, inp, d));
    let xd = kept.as_deref().unwrap_or(xs);
    let xa = gemm_new(n, r, inp, xd, inp, 1, as_, 1, inp, 1.0);
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
    dropout: Option<&Dropout>,
    grad: Tensor<Flex, 2>,
    need_dx: bool,
) -> LinearGrads<Flex> {
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
        // dA = dxa^T dropout(x)       [r, in]
        let kept = dropout.map(|d| dropped(xs, inp, d));
        let xd = kept.as_deref().unwrap_or(xs);
        let da = gemm_new(r, inp, n, &dxa, 1, r, xd, inp, 1, 1.0);
        match (dx.as_mut(), dropout) {
            // dx += dxa A
            (Some(dx), None) => gemm_into(dx, n, inp, r, &dxa, r, 1, as_, inp, 1, true, 1.0),
            // dx += dropout(dxa A): the derivative of `scale * mask * x` is the same mask.
            (Some(dx), Some(d)) => {
                let through = gemm_new(n, inp, r, &dxa, r, 1, as_, inp, 1, 1.0);
                let through = dropped(&through, inp, d);
                dx.par_iter_mut()
                    .zip(through.par_iter())
                    .for_each(|(o, t)| *o += t);
            }
            (None, _) => {}
        }
        dlora = Some((tensor(da, [r, inp]), tensor(db, [out, r])));
    }
    (dx.map(|d| tensor(d, [n, inp])), dlora)
}

/// `w` dense in `dtype`: a block-quantized weight dequantized in parallel (into transposed
/// `[in, out]` storage behind a transposed view when `transposed`), anything else as
/// `dense` gives it.
pub(super) fn dequantize(w: Tensor<Flex, 2>, dtype: DType, transposed: bool) -> Tensor<Flex, 2> {
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
