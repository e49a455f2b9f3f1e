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
        None => row_norms(w.clone(), f.weight_sq_norms, a.clone(), b.clone(), s).recip(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use burn::tensor::TensorData;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0) - 1.0
            })
            .collect()
    }

    fn t(v: &[f32], shape: [usize; 2]) -> Tensor<Cpu, 2> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
    }

    /// PEFT's DoRA formulas written out on the host with the dropout's own mask:
    /// `y = W x + bias + (g - 1) W d(x) + g s B A d(x)`, `g = m / ||W + s B A||_row` (norm of
    /// the formed sum). The forward (either mode, with and without dropout) within 1e-5.
    #[test]
    fn forward_is_pefts_formula() {
        let (rows, inp, out, r, s) = (5, 12, 7, 3, 1.5f64);
        let (w, x, a, b) = (
            values(out * inp, 1),
            values(rows * inp, 2),
            values(r * inp, 3),
            values(out * r, 4),
        );
        let bias = values(out, 5);
        let m: Vec<f32> = (0..out).map(|i| 0.5 + i as f32 * 0.3).collect();
        let dot = |p: &[f32], q: &[f32]| p.iter().zip(q).map(|(u, v)| u * v).sum::<f32>();
        // Row o of W + s B A, and its norm.
        let full = |o: usize| -> Vec<f32> {
            (0..inp)
                .map(|j| {
                    w[o * inp + j]
                        + s as f32 * (0..r).map(|k| b[o * r + k] * a[k * inp + j]).sum::<f32>()
                })
                .collect()
        };
        let g: Vec<f32> = (0..out)
            .map(|o| m[o] / dot(&full(o), &full(o)).sqrt())
            .collect();
        let drop = crate::model::kernels::DropoutSeed::strided(9, 0, 1).at(0, 0, 0.3, rows);
        for dropout in [None, Some(&drop)] {
            let mask = dropout.map_or(vec![1.0; rows * inp], |d| d.mask(rows, inp));
            let mut want = vec![0f32; rows * out];
            for i in 0..rows {
                let xi = &x[i * inp..(i + 1) * inp];
                let di: Vec<f32> = xi
                    .iter()
                    .zip(&mask[i * inp..])
                    .map(|(v, k)| v * k)
                    .collect();
                for o in 0..out {
                    let wo = &w[o * inp..(o + 1) * inp];
                    let low: f32 = (0..r)
                        .map(|k| b[o * r + k] * dot(&a[k * inp..(k + 1) * inp], &di))
                        .sum::<f32>()
                        * s as f32;
                    want[i * out + o] =
                        dot(wo, xi) + bias[o] + (g[o] - 1.0) * dot(wo, &di) + g[o] * low;
                }
            }
            for save in [false, true] {
                let f = DoraFactors {
                    a: t(&a, [r, inp]),
                    b: t(&b, [out, r]),
                    magnitude: t(&m, [1, out]),
                    scaling: s,
                    weight_sq_norms: None,
                    inverse_norm: None,
                };
                let bias_t = Tensor::<Cpu, 1>::from_data(
                    TensorData::new(bias.clone(), [out]),
                    &Default::default(),
                );
                let (y, saved) = forward(
                    t(&x, [rows, inp]),
                    t(&w, [out, inp]),
                    Some(bias_t),
                    f,
                    dropout,
                    save,
                );
                assert_eq!(saved.is_some(), save);
                let got = y.into_data().to_vec::<f32>().unwrap();
                let diff = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |d, (p, q)| d.max((p - q).abs()));
                assert!(diff < 1e-5, "dropout {}: {diff}", dropout.is_some());
            }
        }
    }
}
