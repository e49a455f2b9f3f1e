//! Gradient (activation) checkpointing of decoder layers: in training, a checkpointed layer
//! keeps only its input; its backward pass runs the layer's one forward
//! (`DecoderLayer::forward_saving`) again on the inner backend, keeping the intermediates
//! this time, and then the layer's backward with the fused kernels. Memory per layer drops
//! from every activation autodiff would keep to one `[batch, seq, hidden]` tensor, for the
//! price of a second forward pass. Dropout masks are drawn from the same streams again, so
//! the recomputed layer is the one that ran.
//!
//! The backward is written out by hand (Burn's autodiff cannot run inside another backward:
//! its graph lock is held for the whole pass), op for op the transpose of the forward.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use super::decoder::{AttentionContext, DecoderLayer, LayerDropout};
use super::kernels::autodiff::{Prim, inner, prim, wrap};
use super::kernels::{Dropout, Kernels};

/// Gradients of one projection's adapter.
#[derive(Debug)]
pub struct AdapterGrads<B: Backend> {
    pub a: Tensor<B, 2>,
    pub b: Tensor<B, 2>,
    /// DoRA's magnitude, `[1, out]`.
    pub magnitude: Option<Tensor<B, 2>>,
}

/// Gradients of one projection's adapter (`None` without one).
pub type FactorGrads<B> = Option<AdapterGrads<B>>;

/// Rotated q and k, v, the attention output and its log-sum-exp.
pub type SavedAttention<B> = (
    Tensor<B, 4>,
    Tensor<B, 4>,
    Tensor<B, 4>,
    Tensor<B, 4>,
    Tensor<B, 3>,
);

/// What the backward of a layer needs, filled by one forward pass
/// (`DecoderLayer::forward_saving`).
pub struct Saved<B: Backend> {
    pub x: Option<Tensor<B, 2>>,
    pub n1: Option<Tensor<B, 2>>,
    /// What each projection's backward needs (`dropout(x) A^T`; DoRA's parts), in
    /// `LINEAR_MODULES` order.
    pub adapters: [Option<crate::lora::layer::AdapterSaved<B>>; 7],
    pub q_pre: Option<Tensor<B, 2>>,
    pub k_pre: Option<Tensor<B, 2>>,
    pub attention: Option<SavedAttention<B>>,
    pub att: Option<Tensor<B, 2>>,
    /// The attention's output projection and the MLP's down projection, where a norm follows
    /// them (Gemma).
    pub o: Option<Tensor<B, 2>>,
    pub down: Option<Tensor<B, 2>>,
    pub h: Option<Tensor<B, 2>>,
    pub n2: Option<Tensor<B, 2>>,
    /// gate, up and `glu(gate, up)`.
    pub mlp: Option<(Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>)>,
    pub dropouts: [Option<Dropout>; 7],
}

impl<B: Backend> Default for Saved<B> {
    fn default() -> Self {
        Self {
            x: None,
            n1: None,
            adapters: Default::default(),
            q_pre: None,
            k_pre: None,
            attention: None,
            att: None,
            o: None,
            down: None,
            h: None,
            n2: None,
            mlp: None,
            dropouts: [None; 7],
        }
    }
}

/// Recompute the layer at `x` and back-propagate `grad` (`[batch, seq, hidden]`): the input
/// gradient and the factor gradients of the seven projections in `LINEAR_MODULES` order.
pub fn layer_backward<B: Kernels>(
    layer: &DecoderLayer<B>,
    x: Tensor<B, 3>,
    ctx: &AttentionContext<B>,
    dropout: Option<&LayerDropout>,
    grad: Tensor<B, 3>,
) -> (Tensor<B, 3>, [FactorGrads<B>; 7]) {
    let [b, s, hidden] = x.dims();
    let rows = b * s;
    let at = &layer.self_attn;
    let (nh, nkv, hd) = (at.num_heads, at.num_kv_heads, at.head_dim);
    let mut sv = Saved::default();
    layer.forward_saving(x, ctx, None, dropout, Some(&mut sv));
    const FILLED: &str = "forward_saving fills every saved value";
    let [xa_q, xa_k, xa_v, xa_o, xa_g, xa_u, xa_d] = sv.adapters;
    let [dr_q, dr_k, dr_v, dr_o, dr_g, dr_u, dr_d] = sv.dropouts;
    let [pq, pk, pv, po, pg, pu, pd] = layer.projections();
    let (gate, up, act) = sv.mlp.expect(FILLED);
    let (qr, kr, v, out, lse) = sv.attention.expect(FILLED);
    let (n1, n2, h) = (
        sv.n1.expect(FILLED),
        sv.n2.expect(FILLED),
        sv.h.expect(FILLED),
    );
    let gy = grad.reshape([rows, hidden]);

    // y = h + down(glu(gate(n2), up(n2))), n2 = rms(h); Gemma: y = h + rms(down(...)).
    let g_down = match (&layer.post_feedforward_layernorm, sv.down) {
        (Some(post), Some(down)) => {
            B::rms_norm_backward(down, post.weight.val(), post.eps, gy.clone())
        }
        _ => gy.clone(),
    };
    let (g_act, d_down) = pd.backward(act, xa_d, dr_d.as_ref(), g_down);
    let (g_gate, g_up) = B::glu_backward(gate, up, layer.mlp.act, g_act);
    let (g_n2a, d_gate) = pg.backward(n2.clone(), xa_g, dr_g.as_ref(), g_gate);
    let (g_n2b, d_up) = pu.backward(n2, xa_u, dr_u.as_ref(), g_up);
    let ln2 = &layer.post_attention_layernorm;
    let pre_mlp = layer.pre_feedforward_layernorm.as_ref().unwrap_or(ln2);
    let g_h = gy + B::rms_norm_backward(h, pre_mlp.weight.val(), pre_mlp.eps, g_n2a + g_n2b);

    // h = x + o(attention(rope(q), rope(k), v)), q/k/v of n1 = rms(x); Gemma: x + rms(o(...)).
    let g_o = match (&layer.pre_feedforward_layernorm, sv.o) {
        (Some(_), Some(o)) => B::rms_norm_backward(o, ln2.weight.val(), ln2.eps, g_h.clone()),
        _ => g_h.clone(),
    };
    let (g_att, d_o) = po.backward(sv.att.expect(FILLED), xa_o, dr_o.as_ref(), g_o);
    let (g_qr, g_kr, g_v) = B::attention_backward(
        qr,
        kr,
        v,
        out,
        lse,
        g_att.reshape([b, s, nh, hd]),
        &ctx.mask,
    );
    // The transpose of a rotation by theta is the rotation by -theta.
    let neg_sin = ctx.sin.clone().neg();
    let g_q = B::rope(g_qr, &ctx.cos, &neg_sin).reshape([rows * nh, hd]);
    let g_k = B::rope(g_kr, &ctx.cos, &neg_sin).reshape([rows * nkv, hd]);
    let g_q = match (&at.q_norm, sv.q_pre) {
        (Some(norm), Some(pre)) => B::rms_norm_backward(pre, norm.weight.val(), norm.eps, g_q),
        _ => g_q,
    };
    let g_k = match (&at.k_norm, sv.k_pre) {
        (Some(norm), Some(pre)) => B::rms_norm_backward(pre, norm.weight.val(), norm.eps, g_k),
        _ => g_k,
    };
    let (g_n1q, d_q) = pq.backward(
        n1.clone(),
        xa_q,
        dr_q.as_ref(),
        g_q.reshape([rows, nh * hd]),
    );
    let (g_n1k, d_k) = pk.backward(
        n1.clone(),
        xa_k,
        dr_k.as_ref(),
        g_k.reshape([rows, nkv * hd]),
    );
    let (g_n1v, d_v) = pv.backward(n1, xa_v, dr_v.as_ref(), g_v.reshape([rows, nkv * hd]));
    let ln1 = &layer.input_layernorm;
    let x2 = sv.x.expect(FILLED);
    let g_x = g_h + B::rms_norm_backward(x2, ln1.weight.val(), ln1.eps, g_n1q + g_n1k + g_n1v);
    (
        g_x.reshape([b, s, hidden]),
        [d_q, d_k, d_v, d_o, d_gate, d_up, d_down],
    )
}

/// How a backend runs a decoder layer under gradient checkpointing: only autodiff backends
/// keep anything for a backward pass, so elsewhere it is the plain forward.
pub trait CheckpointLayer: Kernels {
    fn checkpointed_layer(
        layer: &DecoderLayer<Self>,
        x: Tensor<Self, 3>,
        ctx: &AttentionContext<Self>,
        dropout: Option<&LayerDropout>,
    ) -> Tensor<Self, 3> {
        layer.forward(x, ctx, None, dropout)
    }
}

impl CheckpointLayer for burn::backend::Flex {}

#[cfg(feature = "cube")]
impl<R, F, I, BT> CheckpointLayer for burn_cubecl::CubeBackend<R, F, I, BT>
where
    R: burn_cubecl::CubeRuntime,
    R::Server: burn_cubecl::cubecl::server::ComputeServer,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
{
}

/// A decoder layer under gradient checkpointing: parents are the layer input and the `A`, `B`
/// and DoRA magnitude of the seven projections (the input again where a projection has no
/// adapter or no magnitude).
#[derive(Debug)]
struct CheckpointedLayer;

impl<B: Kernels> Backward<B, 22> for CheckpointedLayer {
    /// The layer input, the layer on the inner backend, the rotary tables, the mask and the
    /// dropout streams.
    type State = (
        Prim<B>,
        DecoderLayer<B>,
        Prim<B>,
        Prim<B>,
        super::kernels::AttentionMask,
        Option<LayerDropout>,
    );

    fn backward(self, ops: Ops<Self::State, 22>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad: Tensor<B, 3> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let (x, layer, cos, sin, mask, dropout) = ops.state;
        let ctx = AttentionContext {
            cos: Tensor::from_primitive(TensorPrimitive::Float(cos)),
            sin: Tensor::from_primitive(TensorPrimitive::Float(sin)),
            mask,
            sliding: None,
        };
        let x = Tensor::from_primitive(TensorPrimitive::Float(x));
        let (dx, factors) = layer_backward(&layer, x, &ctx, dropout.as_ref(), grad);
        let parents = ops.parents;
        if let Some(p) = &parents[0] {
            grads.register::<B>(p.id, prim(dx));
        }
        for (i, d) in factors.into_iter().enumerate() {
            if let Some(d) = d {
                if let Some(p) = &parents[1 + 3 * i] {
                    grads.register::<B>(p.id, prim(d.a));
                }
                if let Some(p) = &parents[2 + 3 * i] {
                    grads.register::<B>(p.id, prim(d.b));
                }
                if let (Some(m), Some(p)) = (d.magnitude, &parents[3 + 3 * i]) {
                    grads.register::<B>(p.id, prim(m));
                }
            }
        }
    }
}

impl<B: Kernels, C: CheckpointStrategy> CheckpointLayer for Autodiff<B, C> {
    /// Runs the layer on the inner backend (nothing kept) as one node of the graph; its
    /// backward recomputes the layer.
    fn checkpointed_layer(
        layer: &DecoderLayer<Self>,
        x: Tensor<Self, 3>,
        ctx: &AttentionContext<Self>,
        dropout: Option<&LayerDropout>,
    ) -> Tensor<Self, 3> {
        use burn::module::AutodiffModule;
        let inner_layer: DecoderLayer<B> = layer.valid();
        let ctx_i = AttentionContext {
            cos: inner(&ctx.cos),
            sin: inner(&ctx.sin),
            mask: ctx.mask.clone(),
            sliding: None,
        };
        let xi = inner(&x);
        let y = inner_layer.forward(xi.clone(), &ctx_i, None, dropout);
        let node = |t: Tensor<Self, 2>| t.into_primitive().tensor().node.clone();
        let xn = x.into_primitive().tensor().node.clone();
        let mut nodes = vec![xn.clone()];
        for p in layer.projections() {
            match &p.lora {
                Some(l) => {
                    nodes.extend([node(l.a.val()), node(l.b.val())]);
                    nodes.push(l.magnitude.as_ref().map_or(xn.clone(), |m| node(m.val())));
                }
                None => nodes.extend([xn.clone(), xn.clone(), xn.clone()]),
            }
        }
        let nodes: [_; 22] = match nodes.try_into() {
            Ok(n) => n,
            Err(_) => unreachable!("1 input + 7 projections x 3 adapter tensors"),
        };
        match CheckpointedLayer
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => wrap(prep.finish(
                (
                    prim(xi),
                    inner_layer,
                    prim(ctx_i.cos),
                    prim(ctx_i.sin),
                    ctx_i.mask,
                    dropout.copied(),
                ),
                prim(y),
            )),
            OpsKind::UnTracked(prep) => wrap(prep.finish(prim(y))),
        }
    }
}
