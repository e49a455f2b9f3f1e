//! A linear projection with an optional LoRA adapter (Hu et al. 2021):
//! `y = x W^T + b + dropout(x) A^T B^T * scaling`, with `A: [r, in]` and `B: [out, r]` in PEFT's
//! orientation, as one fused op (`Kernels::lora_linear`): the low-rank path runs as two thin
//! matmuls in f32, the dropout mask is drawn inside it, and `W + BA` is never formed.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

use crate::model::kernels::{Dropout, Kernels, LoraFactors};
use crate::model::recompute::FactorGrads;

/// The trainable low-rank factors of one projection.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `lora_A.weight`, `[r, in]`, f32.
    pub a: Param<Tensor<B, 2>>,
    /// `lora_B.weight`, `[out, r]`, f32.
    pub b: Param<Tensor<B, 2>>,
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

impl<B: Kernels> LoraLinear<B> {
    fn factors(&self) -> Option<LoraFactors<B>> {
        self.lora
            .as_ref()
            .map(|l| (l.a.val(), l.b.val(), l.scaling))
    }

    /// The projection of `x: [rows, in]` with the adapter's `dropout` (a training forward's
    /// stream for this projection; `None` in inference).
    pub fn forward(&self, x: Tensor<B, 2>, dropout: Option<&Dropout>) -> Tensor<B, 2> {
        let bias = self.bias.as_ref().map(|b| b.val());
        B::lora_linear(x, self.weight.val(), bias, self.factors(), dropout)
    }

    /// [`Self::forward`] and `dropout(x) A^T` (what its backward needs), on a backend without
    /// autodiff (gradient checkpointing's recomputation).
    pub fn forward_parts(
        &self,
        x: Tensor<B, 2>,
        dropout: Option<&Dropout>,
    ) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        let bias = self.bias.as_ref().map(|b| b.val());
        B::lora_linear_forward(x, self.weight.val(), bias, self.factors(), dropout)
    }

    /// `dx` and the factor gradients of [`Self::forward_parts`] for the output gradient `grad`.
    pub fn backward(
        &self,
        x: Tensor<B, 2>,
        xa: Option<Tensor<B, 2>>,
        dropout: Option<&Dropout>,
        grad: Tensor<B, 2>,
    ) -> (Tensor<B, 2>, FactorGrads<B>) {
        let w = self.weight.val();
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
        (dx, dlora)
    }
}

impl<B: Backend> LoraAdapter<B> {
    pub fn rank(&self) -> usize {
        self.a.val().dims()[0]
    }
}
