//! DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation") as PEFT computes it:
//! the adapted weight `W + s B A` is split into a direction, normalised per output row, and a
//! trained magnitude `m`, so `y = g (W + s B A) x + bias` with `g = m / ||W + s B A||_row`. The
//! norm is a constant for the gradient (the paper's section 4.3; PEFT's `weight_norm.detach()`).
//! With dropout `d` in training PEFT keeps the base path on the undropped input,
//! `y = W x + bias + (g - 1) W d(x) + g s B A d(x)`, and so does this.
//!
//! Both are written around the fused LoRA op `u = W x + s B A d(x)` (`Kernels::lora_linear`):
//! `y = g u + bias` without dropout, `y = g u + (g - 1) W (d(x) - x) + bias` with it (one more
//! frozen matmul, as PEFT's). So autodiff differentiates [`forward`] through the fused op's own
//! backward, and [`backward`] (gradient checkpointing's hand-written pass) is its transpose.

use burn::tensor::{DType, Tensor, backend::Backend};

use crate::model::kernels::generic::{as_f32, cast_to, dropped};
use crate::model::kernels::{Dropout, Kernels};

/// What [`backward`] needs from [`forward`]: the fused op's `d(x) A^T`, `z = dy/dg`
/// (`u`, plus `W (d(x) - x)` with dropout; f32) and `1 / ||W + s B A||` (`[1, out]`).
#[derive(Debug, Clone)]
pub struct DoraSaved<B: Backend> {
    pub xa: Tensor<B, 2>,
    pub z: Tensor<B, 2>,
    pub inv_norm: Tensor<B, 2>,
}

/// One DoRA projection's adapter as the forward reads it.
pub struct DoraFactors<B: Backend> {
    /// `[r, in]`.
    pub a: Tensor<B, 2>,
    /// `[out, r]`.
    pub b: Tensor<B, 2>,
    /// `[1, out]`.
    pub magnitude: Tensor<B, 2>,
    pub scaling: f64,
    /// `||W||^2` per row (`[1, out]`), when kept with the adapter.
    pub weight_sq_norms: Option<Tensor<B, 2>>,
    /// `1 / ||W + s B A||` (`[1, out]`), when computed ahead (a frozen adapter).
    pub inverse_norm: Option<Tensor<B, 2>>,
}

/// `||W + s B A||` per output row (`[1, out]` f32, outside any autodiff graph): PEFT's
/// `get_weight_norm`, without forming `W + s B A`: expanded as
/// `||W||^2 + 2 s rowsum(B * (W A^T)) + s^2 rowsum(B * (B A A^T))`, so the one pass over `W` is
/// the skinny product `A W^T` through the backend's frozen-weight matmul (quantized weights
/// included), and `||W||^2` (`w_sq`, computed when absent) is the frozen weight's constant.
pub fn row_norms<B: Kernels>(
    w: Tensor<B, 2>,
    w_sq: Option<Tensor<B, 2>>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    s: f64,
) -> Tensor<B, 2> {
    let (a, b) = (a.detach(), b.detach());
    let [out, _] = b.dims();
    let w_sq = w_sq.unwrap_or_else(|| B::weight_row_sq_norms(w.clone()));
    // The product in f32, as PEFT's norm is: a half-precision dense weight is widened for it.
    let w = match w.dtype() {
        DType::F32 | DType::QFloat(_) => w,
        _ => as_f32(w),
    };
    let awt = B::lora_linear(a.clone(), w, None, None, None);
    let cross = (awt.transpose() * b.clone()).sum_dim(1).reshape([1, out]);
    let gram = a.clone().matmul(a.transpose());
    let quad = (b.clone().matmul(gram) * b).sum_dim(1).reshape([1, out]);
    let sq = w_sq + cross.mul_scalar(2.0 * s) + quad.mul_scalar(s * s);
    sq.clamp_min(0.0).sqrt().detach()
}

/// `1 / ||W + s B A||` as `[1, out]`, outside any autodiff graph.
pub fn inverse_norm<B: Kernels>(
    w: Tensor<B, 2>,
    w_sq: Option<Tensor<B, 2>>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    s: f64,
) -> Tensor<B, 2> {
    row_norms(w, w_sq, a, b, s).recip()
}

/// The DoRA projection of `x: [rows, in]` (in `x`'s dtype), and with `save` (on a backend
/// without autodiff) what [`backward`] needs.
pub fn forward<B: Kernels>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    f: DoraFactors<B>,
    dropout: Option<&Dropout>,
    save: bool,
) -> (Tensor<B, 2>, Option<DoraSaved<B>>) {
    let dtype = x.dtype();
    let (a, b, m, s) = (f.a, f.b, f.magnitude, f.scaling);
    let inv_norm = match f.inverse_norm {
        Some(inv) => inv,
        None => inverse_norm(w.clone(), f.weight_sq_norms, a.clone(), b.clone(), s),
    };
    let g = m * inv_norm.clone();
    let factors = Some((a, b, s));
    let (u, xa) = if save {
        B::lora_linear_forward(x.clone(), w.clone(), None, factors, dropout)
    } else {
        let u = B::lora_linear(x.clone(), w.clone(), None, factors, dropout);
        (u, None)
    };
    let u = as_f32(u);
    let (z, y) = match dropout {
        None => (u.clone(), u * g),
        Some(d) => {
            let shift = cast_to(dropped(x.clone(), Some(d)) - as_f32(x), dtype);
            let v = as_f32(B::lora_linear(shift, w, None, None, None));
            let z = u.clone() + v.clone();
            (z, u * g.clone() + v * g.sub_scalar(1.0))
        }
    };
    let y = match bias {
        Some(bias) => y + as_f32(bias).unsqueeze::<2>(),
        None => y,
    };
    let saved = xa.map(|xa| DoraSaved { xa, z, inv_norm });
    (cast_to(y, dtype), saved)
}

/// Gradients of [`forward`] for the output gradient `grad`: `dx`, `dA`, `dB` and the
/// magnitude's (`[1, out]`), on a backend without autodiff.
#[allow(clippy::type_complexity)]
pub fn backward<B: Kernels>(
    x: Tensor<B, 2>,
    saved: DoraSaved<B>,
    w: Tensor<B, 2>,
    f: DoraFactors<B>,
    dropout: Option<&Dropout>,
    grad: Tensor<B, 2>,
) -> (
    Tensor<B, 2>,
    Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    Tensor<B, 2>,
) {
    let dtype = grad.dtype();
    let (a, b, m, s) = (f.a, f.b, f.magnitude, f.scaling);
    let DoraSaved { xa, z, inv_norm } = saved;
    let dy = as_f32(grad);
    // y depends on m only through g = m / ||.||: dm = sum over rows of dy * z / ||.||.
    let dm = (dy.clone() * z).sum_dim(0) * inv_norm.clone();
    let g = m * inv_norm;
    let du = cast_to(dy.clone() * g.clone(), dtype);
    let frozen = |gr: Tensor<B, 2>| {
        let (dx, _) =
            B::lora_linear_backward(x.clone(), None, w.clone(), None, None, gr.clone(), true);
        dx.unwrap_or_else(|| gr.matmul(B::dequantize_weight(w.clone(), dtype)))
    };
    let (dx, dlora) = B::lora_linear_backward(
        x.clone(),
        Some(xa),
        w.clone(),
        Some((a, b, s)),
        dropout,
        du.clone(),
        true,
    );
    let mut dx = dx.unwrap_or_else(|| frozen(du));
    if let Some(d) = dropout {
        // Through `(g - 1) W (d(x) - x)`.
        let t = as_f32(frozen(cast_to(dy * g.sub_scalar(1.0), dtype)));
        dx = dx + cast_to(dropped(t.clone(), Some(d)) - t, dtype);
    }
    (dx, dlora, dm)
}
