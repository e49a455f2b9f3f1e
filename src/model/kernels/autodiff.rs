//! The fused operations under autodiff: each is one node of the graph whose backward step uses
//! the inner backend's kernels, keeping only what that needs (the attention probabilities; the
//! SwiGLU inputs; for the cross-entropy, its gradient with respect to the hidden states, computed
//! in the forward pass chunk by chunk, so the logits are never kept).

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{Bool, Tensor, TensorPrimitive};

use super::Kernels;

type Prim<B> = <B as BackendTypes>::FloatTensorPrimitive;

fn inner<B: Kernels, C: CheckpointStrategy, const D: usize>(t: &Tensor<Autodiff<B, C>, D>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t.clone().into_primitive().tensor().primitive))
}

fn wrap<B: Kernels, C: CheckpointStrategy, const D: usize>(t: <Autodiff<B, C> as BackendTypes>::FloatTensorPrimitive) -> Tensor<Autodiff<B, C>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> Prim<B> {
    t.into_primitive().tensor()
}

#[derive(Debug)]
struct CrossEntropy;

impl<B: Kernels> Backward<B, 1> for CrossEntropy {
    /// d(loss sum)/dh, computed in the forward pass.
    type State = Prim<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad_out: Tensor<B, 1> = Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        if let Some(parent) = &ops.parents[0] {
            let dh: Tensor<B, 2> = Tensor::from_primitive(TensorPrimitive::Float(ops.state));
            let scale = grad_out.cast(dh.dtype()).reshape([1, 1]);
            grads.register::<B>(parent.id, prim(dh * scale));
        }
    }
}

#[derive(Debug)]
struct MaskedSoftmax;

impl<B: Kernels> Backward<B, 1> for MaskedSoftmax {
    type State = Prim<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad: Tensor<B, 4> = Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        if let Some(parent) = &ops.parents[0] {
            let probs: Tensor<B, 4> = Tensor::from_primitive(TensorPrimitive::Float(ops.state));
            grads.register::<B>(parent.id, prim(B::softmax_backward(probs, grad)));
        }
    }
}

#[derive(Debug)]
struct SwiGlu;

impl<B: Kernels> Backward<B, 2> for SwiGlu {
    type State = (Prim<B>, Prim<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad: Tensor<B, 2> = Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let (g, u) = ops.state;
        let (dg, du) = B::swiglu_backward(Tensor::from_primitive(TensorPrimitive::Float(g)), Tensor::from_primitive(TensorPrimitive::Float(u)), grad);
        let [pg, pu] = ops.parents;
        if let Some(p) = pg {
            grads.register::<B>(p.id, prim(dg));
        }
        if let Some(p) = pu {
            grads.register::<B>(p.id, prim(du));
        }
    }
}

impl<B: Kernels, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
    fn cross_entropy_sum(h: Tensor<Self, 2>, w: Tensor<Self, 2>, targets: &[i32], chunk: usize) -> Tensor<Self, 1> {
        let ad = h.clone().into_primitive().tensor();
        let (hi, wi) = (inner(&h), inner(&w));
        match CrossEntropy.prepare::<C>([ad.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (loss, dh) = B::cross_entropy_sum_and_grad(hi, wi, targets, chunk);
                wrap(prep.finish(prim(dh), prim(loss)))
            }
            OpsKind::UnTracked(prep) => wrap(prep.finish(prim(B::cross_entropy_sum(hi, wi, targets, chunk)))),
        }
    }

    fn masked_softmax(scores: Tensor<Self, 4>, mask: &Tensor<Self, 4, Bool>) -> Tensor<Self, 4> {
        let ad = scores.clone().into_primitive().tensor();
        let probs = B::masked_softmax(inner(&scores), &Tensor::from_primitive(mask.clone().into_primitive()));
        match MaskedSoftmax.prepare::<C>([ad.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => wrap(prep.finish(prim(probs.clone()), prim(probs))),
            OpsKind::UnTracked(prep) => wrap(prep.finish(prim(probs))),
        }
    }

    fn swiglu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let (ga, ua) = (gate.clone().into_primitive().tensor(), up.clone().into_primitive().tensor());
        let (gi, ui) = (inner(&gate), inner(&up));
        let out = B::swiglu(gi.clone(), ui.clone());
        match SwiGlu.prepare::<C>([ga.node.clone(), ua.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => wrap(prep.finish((prim(gi), prim(ui)), prim(out))),
            OpsKind::UnTracked(prep) => wrap(prep.finish(prim(out))),
        }
    }
}
