//! The fused operations under autodiff: each is one node of the graph whose backward step uses
//! the inner backend's kernels, keeping only what that needs, in the model dtype (attention:
//! q, k, v, the output and the f32 log-sum-exp per row; SwiGLU: its inputs; LoRA: the input
//! and the rank-r `x A^T`, the dropout mask drawn again from its key; the cross-entropy, summed
//! or per row: its gradient with respect to the hidden states, computed in the forward pass
//! chunk by chunk, so the logits are never kept).

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::quantization::QuantScheme;
use burn::tensor::{Tensor, TensorPrimitive};

use super::{Activation, AttentionMask, Dropout, Kernels, LogitChunks, LoraFactors};
use crate::model::quant::is_quantized;

pub(crate) type Prim<B> = <B as BackendTypes>::FloatTensorPrimitive;

pub(crate) fn inner<B: Kernels, C: CheckpointStrategy, const D: usize>(
    t: &Tensor<Autodiff<B, C>, D>,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(
        t.clone().into_primitive().tensor().primitive,
    ))
}

/// A frozen weight on the inner backend as stored: quantized weights stay quantized (the
/// autodiff backend's quantized primitive is the inner one's).
fn inner_weight<B: Kernels, C: CheckpointStrategy>(
    w: &Tensor<Autodiff<B, C>, 2>,
) -> TensorPrimitive<B> {
    match w.clone().into_primitive() {
        TensorPrimitive::QFloat(q) => TensorPrimitive::QFloat(q),
        TensorPrimitive::Float(t) => TensorPrimitive::Float(t.primitive),
    }
}

pub(crate) fn wrap<B: Kernels, C: CheckpointStrategy, const D: usize>(
    t: <Autodiff<B, C> as BackendTypes>::FloatTensorPrimitive,
) -> Tensor<Autodiff<B, C>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

pub(crate) fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> Prim<B> {
    t.into_primitive().tensor()
}

#[derive(Debug)]
struct CrossEntropy;

impl<B: Kernels> Backward<B, 1> for CrossEntropy {
    /// d(loss sum)/dh, computed in the forward pass.
    type State = Prim<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad_out: Tensor<B, 1> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        if let Some(parent) = &ops.parents[0] {
            let dh: Tensor<B, 2> = Tensor::from_primitive(TensorPrimitive::Float(ops.state));
            let scale = grad_out.cast(dh.dtype()).reshape([1, 1]);
            grads.register::<B>(parent.id, prim(dh * scale));
        }
    }
}

/// Per-row cross-entropy: each row's gradient with respect to its hidden state, computed in
/// the forward pass and scaled by that row's output gradient in the backward.
#[derive(Debug)]
struct CrossEntropyRows;

impl<B: Kernels> Backward<B, 1> for CrossEntropyRows {
    /// d(row loss)/dh per row, `[rows, d]`.
    type State = Prim<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad_out: Tensor<B, 1> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        if let Some(parent) = &ops.parents[0] {
            let dh: Tensor<B, 2> = Tensor::from_primitive(TensorPrimitive::Float(ops.state));
            let n = dh.dims()[0];
            let scale = grad_out.cast(dh.dtype()).reshape([n, 1]);
            grads.register::<B>(parent.id, prim(dh * scale));
        }
    }
}

#[derive(Debug)]
struct Glu;

impl<B: Kernels> Backward<B, 2> for Glu {
    type State = (Prim<B>, Prim<B>, Activation);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad: Tensor<B, 2> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let (g, u, act) = ops.state;
        let (dg, du) = B::glu_backward(
            Tensor::from_primitive(TensorPrimitive::Float(g)),
            Tensor::from_primitive(TensorPrimitive::Float(u)),
            act,
            grad,
        );
        let [pg, pu] = ops.parents;
        if let Some(p) = pg {
            grads.register::<B>(p.id, prim(dg));
        }
        if let Some(p) = pu {
            grads.register::<B>(p.id, prim(du));
        }
    }
}

#[derive(Debug)]
struct RmsNorm;

impl<B: Kernels> Backward<B, 1> for RmsNorm {
    /// Input, weight, epsilon.
    type State = (Prim<B>, Prim<B>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad: Tensor<B, 2> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        if let Some(parent) = &ops.parents[0] {
            let (x, w, eps) = ops.state;
            let dx = B::rms_norm_backward(
                Tensor::from_primitive(TensorPrimitive::Float(x)),
                Tensor::from_primitive(TensorPrimitive::Float(w)),
                eps,
                grad,
            );
            grads.register::<B>(parent.id, prim(dx));
        }
    }
}

#[derive(Debug)]
struct Rope;

impl<B: Kernels> Backward<B, 1> for Rope {
    /// cos, sin.
    type State = (Prim<B>, Prim<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad: Tensor<B, 4> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        if let Some(parent) = &ops.parents[0] {
            let (c, sn) = ops.state;
            let cos: Tensor<B, 4> = Tensor::from_primitive(TensorPrimitive::Float(c));
            let sin: Tensor<B, 4> = Tensor::from_primitive(TensorPrimitive::Float(sn));
            // The transpose of a rotation by theta is the rotation by -theta.
            grads.register::<B>(parent.id, prim(B::rope_backward(grad, &cos, &sin)));
        }
    }
}

#[derive(Debug)]
struct Attention;

impl<B: Kernels> Backward<B, 3> for Attention {
    /// q, k, v, the output, the log-sum-exp and the mask.
    type State = (Prim<B>, Prim<B>, Prim<B>, Prim<B>, Prim<B>, AttentionMask);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad: Tensor<B, 4> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let (q, k, v, o, lse, mask) = ops.state;
        let t = |x| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(x));
        let lse = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(lse));
        let (dq, dk, dv) = B::attention_backward(t(q), t(k), t(v), t(o), lse, grad, &mask);
        let [pq, pk, pv] = ops.parents;
        for (parent, g) in [(pq, dq), (pk, dk), (pv, dv)] {
            if let Some(p) = parent {
                grads.register::<B>(p.id, prim(g));
            }
        }
    }
}

#[derive(Debug)]
struct LoraLinear;

/// A quantized frozen projection without an adapter: only `dx = grad W`, with `W` dequantized
/// again from the quantized copy (the dense one is never kept for the backward pass).
#[derive(Debug)]
struct QuantLinear;

impl<B: Kernels> Backward<B, 1> for QuantLinear {
    type State = TensorPrimitive<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad: Tensor<B, 2> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        if let Some(parent) = &ops.parents[0] {
            let w = B::dequantize_weight(Tensor::<B, 2>::from_primitive(ops.state), grad.dtype());
            grads.register::<B>(parent.id, prim(grad.matmul(w)));
        }
    }
}

impl<B: Kernels> Backward<B, 3> for LoraLinear {
    /// x, `dropout(x) A^T`, W (quantized or not: kept as stored, dequantized again here), A,
    /// B, scaling, and the dropout (its mask is drawn again, never stored).
    type State = (
        Prim<B>,
        Prim<B>,
        TensorPrimitive<B>,
        Prim<B>,
        Prim<B>,
        f64,
        Option<Dropout>,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad: Tensor<B, 2> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let (x, xa, w, a, b, s, dropout) = ops.state;
        let t = |p| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(p));
        let [px, pa, pb] = ops.parents;
        let (dx, dlora) = B::lora_linear_backward(
            t(x),
            Some(t(xa)),
            Tensor::from_primitive(w),
            Some((t(a), t(b), s)),
            dropout.as_ref(),
            grad,
            px.is_some(),
        );
        if let (Some(p), Some(dx)) = (px, dx) {
            grads.register::<B>(p.id, prim(dx));
        }
        if let Some((da, db)) = dlora {
            if let Some(p) = pa {
                grads.register::<B>(p.id, prim(da));
            }
            if let Some(p) = pb {
                grads.register::<B>(p.id, prim(db));
            }
        }
    }
}

impl<B: Kernels, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
    /// Frozen weights are never tracked: lay them out on the inner backend.
    fn layout_frozen_weight(w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if is_quantized(&w) {
            return w;
        }
        Tensor::from_inner(B::layout_frozen_weight(w.inner()))
    }

    /// Burn's autodiff cannot quantize (`todo!()` in 0.21), but its quantized tensors are the
    /// inner backend's: quantize there.
    fn quantize_weight(w: Tensor<Self, 2>, scheme: &QuantScheme) -> Tensor<Self, 2> {
        let q = B::quantize_weight(inner(&w), scheme);
        match q.into_primitive() {
            TensorPrimitive::QFloat(q) => Tensor::from_primitive(TensorPrimitive::QFloat(q)),
            TensorPrimitive::Float(t) => {
                Tensor::from_inner(Tensor::from_primitive(TensorPrimitive::Float(t)))
            }
        }
    }

    /// A constant of the graph, computed on the inner backend (where quantized weights
    /// dequantize).
    fn weight_row_sq_norms(w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let w = Tensor::<B, 2>::from_primitive(inner_weight(&w));
        Tensor::from_inner(B::weight_row_sq_norms(w))
    }

    fn lora_linear(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        lora: Option<LoraFactors<Self>>,
        dropout: Option<&Dropout>,
    ) -> Tensor<Self, 2> {
        let quantized = is_quantized(&w);
        let bias_i = bias.as_ref().map(|t| {
            Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(
                t.clone().into_primitive().tensor().primitive,
            ))
        });
        let Some((a, b, s)) = lora else {
            if !quantized {
                // Without an adapter, Burn's own ops keep only what the input gradient needs.
                let y = x.matmul(w.transpose());
                return match bias {
                    Some(bias) => y + bias.unsqueeze::<2>(),
                    None => y,
                };
            }
            // A quantized weight without an adapter: its own node, keeping the quantized copy.
            let node = x.clone().into_primitive().tensor().node.clone();
            let (xi, wq) = (inner(&x), inner_weight(&w));
            let (y, _) =
                B::lora_linear_forward(xi, Tensor::from_primitive(wq.clone()), bias_i, None, None);
            return match QuantLinear.prepare::<C>([node]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => wrap(prep.finish(wq, prim(y))),
                OpsKind::UnTracked(prep) => wrap(prep.finish(prim(y))),
            };
        };
        let nodes =
            [x.clone(), a.clone(), b.clone()].map(|t| t.into_primitive().tensor().node.clone());
        let (xi, ai, bi) = (inner(&x), inner(&a), inner(&b));
        let wq = inner_weight(&w);
        let (y, xa) = B::lora_linear_forward(
            xi.clone(),
            Tensor::from_primitive(wq.clone()),
            bias_i,
            Some((ai.clone(), bi.clone(), s)),
            dropout,
        );
        match LoraLinear.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let xa = xa.unwrap_or_else(|| Tensor::zeros([1, 1], &y.device()));
                let state = (
                    prim(xi),
                    prim(xa),
                    wq,
                    prim(ai),
                    prim(bi),
                    s,
                    dropout.copied(),
                );
                wrap(prep.finish(state, prim(y)))
            }
            OpsKind::UnTracked(prep) => wrap(prep.finish(prim(y))),
        }
    }

    fn rms_norm(x: Tensor<Self, 2>, w: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        let ad = x.clone().into_primitive().tensor();
        let (xi, wi) = (inner(&x), inner(&w));
        let out = B::rms_norm(xi.clone(), wi.clone(), eps);
        match RmsNorm
            .prepare::<C>([ad.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => wrap(prep.finish((prim(xi), prim(wi), eps), prim(out))),
            OpsKind::UnTracked(prep) => wrap(prep.finish(prim(out))),
        }
    }

    fn rope(x: Tensor<Self, 4>, cos: &Tensor<Self, 4>, sin: &Tensor<Self, 4>) -> Tensor<Self, 4> {
        let ad = x.clone().into_primitive().tensor();
        let (ci, si) = (inner(cos), inner(sin));
        let out = B::rope(inner(&x), &ci, &si);
        match Rope
            .prepare::<C>([ad.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => wrap(prep.finish((prim(ci), prim(si)), prim(out))),
            OpsKind::UnTracked(prep) => wrap(prep.finish(prim(out))),
        }
    }

    fn attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: &AttentionMask,
    ) -> Tensor<Self, 4> {
        let nodes =
            [q.clone(), k.clone(), v.clone()].map(|t| t.into_primitive().tensor().node.clone());
        let (qi, ki, vi) = (inner(&q), inner(&k), inner(&v));
        let (out, lse) = B::attention_forward(qi.clone(), ki.clone(), vi.clone(), mask);
        match Attention.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let state = (
                    prim(qi),
                    prim(ki),
                    prim(vi),
                    prim(out.clone()),
                    prim(lse),
                    mask.clone(),
                );
                wrap(prep.finish(state, prim(out)))
            }
            OpsKind::UnTracked(prep) => wrap(prep.finish(prim(out))),
        }
    }

    fn cross_entropy_sum(
        h: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        targets: &[i32],
        chunk: LogitChunks,
    ) -> Tensor<Self, 1> {
        let ad = h.clone().into_primitive().tensor();
        let (hi, wi) = (inner(&h), inner(&w));
        match CrossEntropy
            .prepare::<C>([ad.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (loss, dh) = B::cross_entropy_sum_and_grad(hi, wi, targets, chunk);
                wrap(prep.finish(prim(dh), prim(loss)))
            }
            OpsKind::UnTracked(prep) => {
                wrap(prep.finish(prim(B::cross_entropy_sum(hi, wi, targets, chunk))))
            }
        }
    }

    fn cross_entropy_rows(
        h: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        targets: &[i32],
        chunk: LogitChunks,
    ) -> Tensor<Self, 1> {
        let ad = h.clone().into_primitive().tensor();
        let (hi, wi) = (inner(&h), inner(&w));
        match CrossEntropyRows
            .prepare::<C>([ad.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (rows, dh) = B::cross_entropy_rows_and_grad(hi, wi, targets, chunk);
                wrap(prep.finish(prim(dh), prim(rows)))
            }
            OpsKind::UnTracked(prep) => {
                wrap(prep.finish(prim(B::cross_entropy_rows(hi, wi, targets, chunk))))
            }
        }
    }

    fn glu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>, act: Activation) -> Tensor<Self, 2> {
        let (ga, ua) = (
            gate.clone().into_primitive().tensor(),
            up.clone().into_primitive().tensor(),
        );
        let (gi, ui) = (inner(&gate), inner(&up));
        let out = B::glu(gi.clone(), ui.clone(), act);
        match Glu
            .prepare::<C>([ga.node.clone(), ua.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => wrap(prep.finish((prim(gi), prim(ui), act), prim(out))),
            OpsKind::UnTracked(prep) => wrap(prep.finish(prim(out))),
        }
    }
}
