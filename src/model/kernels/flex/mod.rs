//! Host kernels for Burn's Flex CPU backend: row-parallel (rayon) loops over contiguous f32
//! buffers with a vectorisable `exp`, and GEMMs on strided views, replacing chains of
//! single-threaded element-wise ops. Inputs that are not f32 take the composed path in
//! [`super::generic`].

mod attention;
mod gemm;
mod lora;
mod loss;
mod rows;

pub(crate) use attention::splits_per_head;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};

use super::{
    Activation, AttentionMask, Dropout, Kernels, LinearGrads, LogitChunks, LoraFactors, generic,
};

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

fn all_f32<const D: usize>(ts: &[&Tensor<Flex, D>]) -> bool {
    ts.iter().all(|t| is_f32(t))
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
        lora::dequantize(w, dtype, false)
    }

    fn cross_entropy_sum(
        h: Tensor<Flex, 2>,
        w: Tensor<Flex, 2>,
        targets: &[i32],
        chunk: LogitChunks,
    ) -> Tensor<Flex, 1> {
        if !all_f32(&[&h, &w]) {
            return loss::cross_entropy_default(h, w, targets, chunk);
        }
        let (loss, _, _) = loss::ce(h, w, targets, chunk, false);
        tensor(vec![loss as f32], [1])
    }

    fn cross_entropy_rows(
        h: Tensor<Flex, 2>,
        w: Tensor<Flex, 2>,
        targets: &[i32],
        chunk: LogitChunks,
    ) -> Tensor<Flex, 1> {
        if !all_f32(&[&h, &w]) {
            return loss::cross_entropy_rows_default(h, w, targets, chunk, false).0;
        }
        let (_, _, rows) = loss::ce(h, w, targets, chunk, false);
        let n = rows.len();
        tensor(rows, [n])
    }

    fn cross_entropy_rows_and_grad(
        h: Tensor<Flex, 2>,
        w: Tensor<Flex, 2>,
        targets: &[i32],
        chunk: LogitChunks,
    ) -> (Tensor<Flex, 1>, Tensor<Flex, 2>) {
        let dims = h.dims();
        let (rows, grad) = if all_f32(&[&h, &w]) {
            let (_, grad, rows) = loss::ce(h, w, targets, chunk, true);
            let n = rows.len();
            (tensor(rows, [n]), grad)
        } else {
            loss::cross_entropy_rows_default(h, w, targets, chunk, true)
        };
        (
            rows,
            grad.unwrap_or_else(|| Tensor::zeros(dims, &Default::default())),
        )
    }

    fn cross_entropy_sum_and_grad(
        h: Tensor<Flex, 2>,
        w: Tensor<Flex, 2>,
        targets: &[i32],
        chunk: LogitChunks,
    ) -> (Tensor<Flex, 1>, Tensor<Flex, 2>) {
        if !all_f32(&[&h, &w]) {
            return loss::cross_entropy_and_grad_default(h, w, targets, chunk);
        }
        let dims = h.dims();
        let (loss, grad, _) = loss::ce(h, w, targets, chunk, true);
        (
            tensor(vec![loss as f32], [1]),
            grad.unwrap_or_else(|| Tensor::zeros(dims, &Default::default())),
        )
    }

    fn rms_norm(x: Tensor<Flex, 2>, w: Tensor<Flex, 1>, eps: f64) -> Tensor<Flex, 2> {
        if !(is_f32(&x) && is_f32(&w)) {
            return generic::rms_norm(x, w, eps);
        }
        rows::rms_norm(x, w, eps)
    }

    fn rms_norm_backward(
        x: Tensor<Flex, 2>,
        w: Tensor<Flex, 1>,
        eps: f64,
        grad: Tensor<Flex, 2>,
    ) -> Tensor<Flex, 2> {
        if !(all_f32(&[&x, &grad]) && is_f32(&w)) {
            return generic::rms_norm_backward(x, w, eps, grad);
        }
        rows::rms_norm_backward(x, w, eps, grad)
    }

    fn rope(x: Tensor<Flex, 4>, cos: &Tensor<Flex, 4>, sin: &Tensor<Flex, 4>) -> Tensor<Flex, 4> {
        if !all_f32(&[&x, cos, sin]) {
            return generic::rope(x, cos, sin);
        }
        rows::rope(x, cos, sin)
    }

    fn attention_forward(
        q: Tensor<Flex, 4>,
        k: Tensor<Flex, 4>,
        v: Tensor<Flex, 4>,
        mask: &AttentionMask,
    ) -> (Tensor<Flex, 4>, Tensor<Flex, 3>) {
        if !all_f32(&[&q, &k, &v]) {
            return generic::attention::forward(q, k, v, mask);
        }
        attention::forward(q, k, v, mask)
    }

    fn attention_backward(
        q: Tensor<Flex, 4>,
        k: Tensor<Flex, 4>,
        v: Tensor<Flex, 4>,
        out: Tensor<Flex, 4>,
        lse: Tensor<Flex, 3>,
        grad: Tensor<Flex, 4>,
        mask: &AttentionMask,
    ) -> (Tensor<Flex, 4>, Tensor<Flex, 4>, Tensor<Flex, 4>) {
        if !all_f32(&[&q, &k, &v, &out, &grad]) {
            return generic::attention::backward(q, k, v, out, lse, grad, mask);
        }
        attention::backward(q, k, v, out, lse, grad, mask)
    }

    fn lora_linear_forward(
        x: Tensor<Flex, 2>,
        w: Tensor<Flex, 2>,
        bias: Option<Tensor<Flex, 1>>,
        lora: Option<LoraFactors<Flex>>,
        dropout: Option<&Dropout>,
    ) -> (Tensor<Flex, 2>, Option<Tensor<Flex, 2>>) {
        // A quantized wide-input weight is dequantized straight into the transposed storage
        // that `layout_frozen_weight` gives dense ones (the forward's fast layout).
        let [out, inp] = w.dims();
        let w = lora::dequantize(w, x.dtype(), inp > out);
        let f32_all = all_f32(&[&x, &w])
            && bias.as_ref().is_none_or(is_f32)
            && lora.as_ref().is_none_or(|(a, b, _)| all_f32(&[a, b]));
        if !f32_all {
            return generic::lora_linear_forward(x, w, bias, lora, dropout);
        }
        lora::lora_linear_forward(x, w, bias, lora, dropout)
    }

    fn lora_linear_backward(
        x: Tensor<Flex, 2>,
        xa: Option<Tensor<Flex, 2>>,
        w: Tensor<Flex, 2>,
        lora: Option<LoraFactors<Flex>>,
        dropout: Option<&Dropout>,
        grad: Tensor<Flex, 2>,
        need_dx: bool,
    ) -> LinearGrads<Flex> {
        let w = Flex::dequantize_weight(w, x.dtype());
        if !all_f32(&[&x, &w, &grad]) {
            return generic::lora_linear_backward(x, xa, w, lora, dropout, grad, need_dx);
        }
        lora::lora_linear_backward(x, xa, w, lora, dropout, grad, need_dx)
    }

    fn glu(gate: Tensor<Flex, 2>, up: Tensor<Flex, 2>, act: Activation) -> Tensor<Flex, 2> {
        if !all_f32(&[&gate, &up]) {
            return generic::glu(gate, up, act);
        }
        rows::glu(gate, up, act)
    }

    fn glu_backward(
        gate: Tensor<Flex, 2>,
        up: Tensor<Flex, 2>,
        act: Activation,
        grad: Tensor<Flex, 2>,
    ) -> (Tensor<Flex, 2>, Tensor<Flex, 2>) {
        if !all_f32(&[&gate, &up, &grad]) {
            return generic::glu_backward(gate, up, act, grad);
        }
        rows::glu_backward(gate, up, act, grad)
    }
}
