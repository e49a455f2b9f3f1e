//! Row-parallel host kernels of the element-wise steps: RMSNorm, RoPE and the gated activation (SwiGLU, GeGLU), forward and
//! backward, each one pass over contiguous f32 rows, compiled per vector width.

use std::mem::MaybeUninit;

use burn::backend::Flex;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::super::Activation;
use super::super::fastmath::{dot, dot3, exp, tanh};
use super::super::generic::{GELU_TANH_C, GELU_TANH_K};
use super::super::profile::{Region, span};
use super::super::simd::multiversion;
use super::{flex, tensor};

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
    /// `act(g) * u`, element-wise, into an output that need not be initialised.
    fn glu_chunk(o: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32], act: Activation) {
        match act {
            Activation::Silu => {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    o.write(g / (1.0 + exp(-g)) * u);
                }
            }
            Activation::GeluTanh => {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    let t = tanh(GELU_TANH_K * (g + GELU_TANH_C * g * g * g));
                    o.write(0.5 * g * (1.0 + t) * u);
                }
            }
        }
    }
}

multiversion! {
    /// Gated-activation backward, element-wise: `dg = d u act'(g)`, `du = d act(g)`.
    fn glu_grad_chunk(
        dg: &mut [MaybeUninit<f32>],
        du: &mut [MaybeUninit<f32>],
        g: &[f32],
        u: &[f32],
        d: &[f32],
        act: Activation,
    ) {
        let items = dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(d);
        match act {
            Activation::Silu => {
                for ((((dg, du), &g), &u), &d) in items {
                    let sig = 1.0 / (1.0 + exp(-g));
                    let silu = g * sig;
                    dg.write(d * u * (sig + silu * (1.0 - sig)));
                    du.write(d * silu);
                }
            }
            Activation::GeluTanh => {
                for ((((dg, du), &g), &u), &d) in items {
                    let t = tanh(GELU_TANH_K * (g + GELU_TANH_C * g * g * g));
                    let half = 0.5 * (1.0 + t);
                    let inner = GELU_TANH_K * (1.0 + 3.0 * GELU_TANH_C * g * g);
                    dg.write(d * u * (half + 0.5 * g * (1.0 - t * t) * inner));
                    du.write(d * g * half);
                }
            }
        }
    }
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

/// `act(gate) * up` over f32 buffers.
pub(super) fn glu(gate: Tensor<Flex, 2>, up: Tensor<Flex, 2>, act: Activation) -> Tensor<Flex, 2> {
    let _span = span(Region::Swiglu);
    let dims = gate.dims();
    let g = flex(gate);
    let u = flex(up);
    let (gs, us) = (g.storage::<f32>(), u.storage::<f32>());
    let n = gs.len();
    assert_eq!(us.len(), n, "glu: gate and up differ in size");
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(4096)
        .zip(gs.par_chunks(4096).zip(us.par_chunks(4096)))
        .for_each(|(o, (g, u))| glu_chunk(o, g, u, act));
    // SAFETY: the chunks of `gs` and `us` (both n long) pair with every chunk of the n
    // outputs, and `glu_chunk` writes each element of its chunk.
    unsafe { out.set_len(n) };
    tensor(out, dims)
}

/// Gradients of `act(gate) * up` over f32 buffers.
pub(super) fn glu_backward(
    gate: Tensor<Flex, 2>,
    up: Tensor<Flex, 2>,
    act: Activation,
    grad: Tensor<Flex, 2>,
) -> (Tensor<Flex, 2>, Tensor<Flex, 2>) {
    let _span = span(Region::SwigluBackward);
    let dims = gate.dims();
    let (g, u, d) = (flex(gate), flex(up), flex(grad));
    let (gs, us, ds) = (g.storage::<f32>(), u.storage::<f32>(), d.storage::<f32>());
    let n = gs.len();
    assert!(us.len() == n && ds.len() == n, "glu backward: sizes differ");
    let (mut dg, mut du) = (Vec::with_capacity(n), Vec::with_capacity(n));
    dg.spare_capacity_mut()[..n]
        .par_chunks_mut(4096)
        .zip(du.spare_capacity_mut()[..n].par_chunks_mut(4096))
        .zip(
            gs.par_chunks(4096)
                .zip(us.par_chunks(4096))
                .zip(ds.par_chunks(4096)),
        )
        .for_each(|((dg, du), ((g, u), d))| glu_grad_chunk(dg, du, g, u, d, act));
    // SAFETY: as in `glu`: equal-length inputs, every output element written.
    unsafe {
        dg.set_len(n);
        du.set_len(n);
    }
    (tensor(dg, dims), tensor(du, dims))
}
