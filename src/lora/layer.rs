//! A linear projection with an optional LoRA adapter (Hu et al. 2021):
//! `y = x W^T + b + dropout(x) A^T B^T * scaling`, with `A: [r, in]` and `B: [out, r]` in PEFT's
//! orientation, as one fused op (`Kernels::lora_linear`): the low-rank path runs as two thin
//! matmuls in f32, the dropout mask is drawn inside it, and `W + BA` is never formed. With
//! DoRA's magnitude the projection is [`super::dora`]'s instead.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

use super::dora::{self, DoraFactors, DoraSaved};
use crate::model::kernels::{Dropout, Kernels, LoraFactors};
use crate::model::recompute::{AdapterGrads, FactorGrads};

/// The trainable low-rank factors of one projection.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `lora_A.weight`, `[r, in]`, f32.
    pub a: Param<Tensor<B, 2>>,
    /// `lora_B.weight`, `[out, r]`, f32.
    pub b: Param<Tensor<B, 2>>,
    /// DoRA's `lora_magnitude_vector`, kept as `[1, out]` f32 (`[out]` in PEFT's files).
    pub magnitude: Option<Param<Tensor<B, 2>>>,
    /// DoRA: `||W||^2` per row of the frozen weight (`[1, out]` f32), computed once when
    /// attached; the row norms of `W + s B A` need it every step.
    pub weight_sq_norms: Option<Param<Tensor<B, 2>>>,
    /// DoRA's `1 / ||W + s B A||_row` (`[1, out]`), computed once when the adapter is attached
    /// frozen (inference: generation would otherwise recompute it for every token).
    pub frozen_inverse_norm: Option<Param<Tensor<B, 2>>>,
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub scaling: f64,
    /// Probability of zeroing an input element of the low-rank path while training.
    pub dropout: f64,
}

/// A frozen projection (`weight: [out, in]` as in HF checkpoints) plus optional LoRA.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub lora: Option<LoraAdapter<B>>,
}

impl<B: Backend> LoraLinear<B> {
    pub fn frozen(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: Param::from_tensor(weight).set_require_grad(false),
            bias: bias.map(|b| Param::from_tensor(b).set_require_grad(false)),
            lora: None,
        }
    }

    /// `[out, in]`.
    pub fn shape(&self) -> [usize; 2] {
        self.weight.val().dims()
    }
}

/// What the hand-written backward of one adapted projection needs from its forward.
#[derive(Debug, Clone)]
pub enum AdapterSaved<B: Backend> {
    /// `dropout(x) A^T`.
    Lora(Tensor<B, 2>),
    Dora(DoraSaved<B>),
}

impl<B: Kernels> LoraLinear<B> {
    fn factors(&self) -> Option<LoraFactors<B>> {
        self.lora
            .as_ref()
            .map(|l| (l.a.val(), l.b.val(), l.scaling))
    }

    fn dora_factors(&self) -> Option<DoraFactors<B>> {
        let l = self.lora.as_ref()?;
        let m = l.magnitude.as_ref()?;
        Some(DoraFactors {
            a: l.a.val(),
            b: l.b.val(),
            magnitude: m.val(),
            scaling: l.scaling,
            weight_sq_norms: l.weight_sq_norms.as_ref().map(|n| n.val()),
            inverse_norm: l.frozen_inverse_norm.as_ref().map(|n| n.val()),
        })
    }

    /// The projection of `x: [rows, in]` with the adapter's `dropout` (a training forward's
    /// stream for this projection; `None` in inference).
    pub fn forward(&self, x: Tensor<B, 2>, dropout: Option<&Dropout>) -> Tensor<B, 2> {
        let bias = self.bias.as_ref().map(|b| b.val());
        match self.dora_factors() {
            Some(f) => dora::forward(x, self.weight.val(), bias, f, dropout, false).0,
            None => B::lora_linear(x, self.weight.val(), bias, self.factors(), dropout),
        }
    }

    /// [`Self::forward`] and what its backward needs, on a backend without autodiff (gradient
    /// checkpointing's recomputation).
    pub fn forward_parts(
        &self,
        x: Tensor<B, 2>,
        dropout: Option<&Dropout>,
    ) -> (Tensor<B, 2>, Option<AdapterSaved<B>>) {
        let bias = self.bias.as_ref().map(|b| b.val());
        if let Some(f) = self.dora_factors() {
            let (y, saved) = dora::forward(x, self.weight.val(), bias, f, dropout, true);
            return (y, saved.map(AdapterSaved::Dora));
        }
        let (y, xa) = B::lora_linear_forward(x, self.weight.val(), bias, self.factors(), dropout);
        (y, xa.map(AdapterSaved::Lora))
    }

    /// `dx` and the adapter's gradients of [`Self::forward_parts`] for the output gradient
    /// `grad`.
    pub fn backward(
        &self,
        x: Tensor<B, 2>,
        saved: Option<AdapterSaved<B>>,
        dropout: Option<&Dropout>,
        grad: Tensor<B, 2>,
    ) -> (Tensor<B, 2>, FactorGrads<B>) {
        let w = self.weight.val();
        let xa = match (self.dora_factors(), saved) {
            (Some(f), Some(AdapterSaved::Dora(saved))) => {
                let (dx, dlora, m) = dora::backward(x, saved, w, f, dropout, grad);
                let grads = dlora.map(|(a, b)| AdapterGrads {
                    a,
                    b,
                    magnitude: Some(m),
                });
                return (dx, grads);
            }
            (_, Some(AdapterSaved::Lora(xa))) => Some(xa),
            _ => None,
        };
        let (dx, dlora) = B::lora_linear_backward(
            x,
            xa,
            w.clone(),
            self.factors(),
            dropout,
            grad.clone(),
            true,
        );
        let dtype = grad.dtype();
        let dx = dx.unwrap_or_else(|| grad.matmul(B::dequantize_weight(w, dtype)));
        let grads = dlora.map(|(a, b)| AdapterGrads {
            a,
            b,
            magnitude: None,
        });
        (dx, grads)
    }
}

impl<B: Backend> LoraAdapter<B> {
    pub fn rank(&self) -> usize {
        self.a.val().dims()[0]
    }
}
