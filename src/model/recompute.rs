//! Gradient (activation) checkpointing of decoder layers: in training, a checkpointed layer
//! keeps only its input; its backward pass runs the layer forward again on the inner backend,
//! keeping the intermediates this time, and then the layer's backward with the fused kernels.
//! Memory per layer drops from every activation autodiff would keep to one `[batch, seq, hidden]`
//! tensor, for the price of a second forward pass.
//!
//! The backward is written out by hand (Burn's autodiff cannot run inside another backward:
//! its graph lock is held for the whole pass), op for op the transpose of
//! `DecoderLayer::forward`.

use burn::tensor::Tensor;

use super::decoder::{AttentionContext, DecoderLayer};
use super::kernels::{Kernels, LoraFactors};
use crate::lora::layer::LoraLinear;

/// Gradients of one projection's LoRA factors `(dA, dB)`.
pub type FactorGrads<B> = Option<(Tensor<B, 2>, Tensor<B, 2>)>;

fn factors<B: Kernels>(p: &LoraLinear<B>) -> Option<LoraFactors<B>> {
    p.lora.as_ref().map(|l| (l.a.val(), l.b.val(), l.scaling))
}

/// `x: [rows, in]` through a projection; also `x A^T` for its backward.
fn lin<B: Kernels>(p: &LoraLinear<B>, x: Tensor<B, 2>) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
    let bias = p.bias.as_ref().map(|b| b.val());
    B::lora_linear_forward(x, p.weight.val(), bias, factors(p))
}

/// `dx` and the factor gradients of a projection.
fn lin_back<B: Kernels>(
    p: &LoraLinear<B>,
    x: Tensor<B, 2>,
    xa: Option<Tensor<B, 2>>,
    grad: Tensor<B, 2>,
) -> (Tensor<B, 2>, FactorGrads<B>) {
    let w = p.weight.val();
    let (dx, dlora) = B::lora_linear_backward(x, xa, w.clone(), factors(p), grad.clone(), true);
    let dtype = grad.dtype();
    let dx = dx.unwrap_or_else(|| grad.matmul(B::dequantize_weight(w, dtype)));
    (dx, dlora)
}

/// Everything the backward of a layer needs, from one forward pass.
struct Saved<B: Kernels> {
    x: Tensor<B, 2>,
    n1: Tensor<B, 2>,
    xa: [Option<Tensor<B, 2>>; 7],
    q_pre: Option<Tensor<B, 2>>,
    k_pre: Option<Tensor<B, 2>>,
    qr: Tensor<B, 4>,
    kr: Tensor<B, 4>,
    v: Tensor<B, 4>,
    probs: Tensor<B, 4>,
    att: Tensor<B, 2>,
    h: Tensor<B, 2>,
    n2: Tensor<B, 2>,
    gate: Tensor<B, 2>,
    up: Tensor<B, 2>,
    act: Tensor<B, 2>,
}

/// The layer's output `[batch, seq, hidden]` (no dropout) and its saved intermediates.
fn forward_saved<B: Kernels>(
    layer: &DecoderLayer<B>,
    x: Tensor<B, 3>,
    ctx: &AttentionContext<B>,
) -> (Tensor<B, 3>, Saved<B>) {
    let [b, s, hidden] = x.dims();
    let rows = b * s;
    let at = &layer.self_attn;
    let (nh, nkv, hd) = (at.num_heads, at.num_kv_heads, at.head_dim);
    let x2 = x.reshape([rows, hidden]);
    let ln1 = &layer.input_layernorm;
    let n1 = B::rms_norm(x2.clone(), ln1.weight.val(), ln1.eps);
    let (q, xa_q) = lin(&at.q_proj, n1.clone());
    let (k, xa_k) = lin(&at.k_proj, n1.clone());
    let (v, xa_v) = lin(&at.v_proj, n1.clone());
    let (q_pre, q) = match &at.q_norm {
        Some(norm) => {
            let pre = q.reshape([rows * nh, hd]);
            let q = B::rms_norm(pre.clone(), norm.weight.val(), norm.eps);
            (Some(pre), q)
        }
        None => (None, q),
    };
    let (k_pre, k) = match &at.k_norm {
        Some(norm) => {
            let pre = k.reshape([rows * nkv, hd]);
            let k = B::rms_norm(pre.clone(), norm.weight.val(), norm.eps);
            (Some(pre), k)
        }
        None => (None, k),
    };
    let qr = B::rope(q.reshape([b, s, nh, hd]), &ctx.cos, &ctx.sin);
    let kr = B::rope(k.reshape([b, s, nkv, hd]), &ctx.cos, &ctx.sin);
    let v = v.reshape([b, s, nkv, hd]);
    let (att, probs) = B::attention_with_probs(qr.clone(), kr.clone(), v.clone(), &ctx.mask);
    let att = att.reshape([rows, nh * hd]);
    let (o, xa_o) = lin(&at.o_proj, att.clone());
    let h = x2.clone() + o;
    let ln2 = &layer.post_attention_layernorm;
    let n2 = B::rms_norm(h.clone(), ln2.weight.val(), ln2.eps);
    let mlp = &layer.mlp;
    let (gate, xa_g) = lin(&mlp.gate_proj, n2.clone());
    let (up, xa_u) = lin(&mlp.up_proj, n2.clone());
    let act = B::swiglu(gate.clone(), up.clone());
    let (down, xa_d) = lin(&mlp.down_proj, act.clone());
    let y = (h.clone() + down).reshape([b, s, hidden]);
    let saved = Saved {
        x: x2,
        n1,
        xa: [xa_q, xa_k, xa_v, xa_o, xa_g, xa_u, xa_d],
        q_pre,
        k_pre,
        qr,
        kr,
        v,
        probs,
        att,
        h,
        n2,
        gate,
        up,
        act,
    };
    (y, saved)
}

/// The layer's output in training with nothing kept (the checkpointed forward).
pub fn layer_output<B: Kernels>(
    layer: &DecoderLayer<B>,
    x: Tensor<B, 3>,
    ctx: &AttentionContext<B>,
) -> Tensor<B, 3> {
    forward_saved(layer, x, ctx).0
}

/// Recompute the layer at `x` and back-propagate `grad` (`[batch, seq, hidden]`): the input
/// gradient and the factor gradients of `q, k, v, o, gate, up, down` in that order.
pub fn layer_backward<B: Kernels>(
    layer: &DecoderLayer<B>,
    x: Tensor<B, 3>,
    ctx: &AttentionContext<B>,
    grad: Tensor<B, 3>,
) -> (Tensor<B, 3>, [FactorGrads<B>; 7]) {
    let [b, s, hidden] = x.dims();
    let rows = b * s;
    let at = &layer.self_attn;
    let mlp = &layer.mlp;
    let (nh, nkv, hd) = (at.num_heads, at.num_kv_heads, at.head_dim);
    let (_, sv) = forward_saved(layer, x, ctx);
    let [xa_q, xa_k, xa_v, xa_o, xa_g, xa_u, xa_d] = sv.xa;
    let gy = grad.reshape([rows, hidden]);

    // y = h + down(swiglu(gate(n2), up(n2))), n2 = rms(h)
    let (g_act, d_down) = lin_back(&mlp.down_proj, sv.act, xa_d, gy.clone());
    let (g_gate, g_up) = B::swiglu_backward(sv.gate, sv.up, g_act);
    let (g_n2a, d_gate) = lin_back(&mlp.gate_proj, sv.n2.clone(), xa_g, g_gate);
    let (g_n2b, d_up) = lin_back(&mlp.up_proj, sv.n2, xa_u, g_up);
    let ln2 = &layer.post_attention_layernorm;
    let g_h = gy + B::rms_norm_backward(sv.h, ln2.weight.val(), ln2.eps, g_n2a + g_n2b);

    // h = x + o(attention(rope(q), rope(k), v)), q/k/v of n1 = rms(x)
    let (g_att, d_o) = lin_back(&at.o_proj, sv.att, xa_o, g_h.clone());
    let (g_qr, g_kr, g_v) =
        B::attention_backward(sv.qr, sv.kr, sv.v, sv.probs, g_att.reshape([b, s, nh, hd]));
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
    let (g_n1q, d_q) = lin_back(
        &at.q_proj,
        sv.n1.clone(),
        xa_q,
        g_q.reshape([rows, nh * hd]),
    );
    let (g_n1k, d_k) = lin_back(
        &at.k_proj,
        sv.n1.clone(),
        xa_k,
        g_k.reshape([rows, nkv * hd]),
    );
    let (g_n1v, d_v) = lin_back(&at.v_proj, sv.n1, xa_v, g_v.reshape([rows, nkv * hd]));
    let ln1 = &layer.input_layernorm;
    let g_x = g_h + B::rms_norm_backward(sv.x, ln1.weight.val(), ln1.eps, g_n1q + g_n1k + g_n1v);
    (
        g_x.reshape([b, s, hidden]),
        [d_q, d_k, d_v, d_o, d_gate, d_up, d_down],
    )
}
