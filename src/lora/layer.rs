//! A linear projection with an optional LoRA adapter (Hu et al. 2021), by composition:
//! `y = x W^T + b + dropout(x) A^T B^T * scaling`, with `A: [r, in]` and `B: [out, r]` in PEFT's
//! orientation. The low-rank path runs as two thin matmuls in f32; `W + BA` is never formed.

use burn::module::{Module, Param};
use burn::tensor::{DType, Distribution, Tensor, backend::Backend};

use crate::model::kernels::Kernels;

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
    /// Applies the projection to `x: [..., in]`. `train` enables LoRA dropout.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, train: bool) -> Tensor<B, D> {
        let dims = x.dims();
        let [out, inp] = self.shape();
        let rows: usize = dims[..D - 1].iter().product();
        let x2: Tensor<B, 2> = x.reshape([rows, inp]);
        let bias = self.bias.as_ref().map(|b| b.val());
        let y = match &self.lora {
            // Dropout needs its own mask on the adapter's input: the composed path.
            Some(lora) if train && lora.dropout > 0.0 => {
                B::lora_linear(x2.clone(), self.weight.val(), bias, None) + lora.delta(x2, train)
            }
            Some(lora) => B::lora_linear(
                x2,
                self.weight.val(),
                bias,
                Some((lora.a.val(), lora.b.val(), lora.scaling)),
            ),
            None => B::lora_linear(x2, self.weight.val(), bias, None),
        };
        let mut out_dims = dims;
        out_dims[D - 1] = out;
        y.reshape(out_dims)
    }
}

impl<B: Backend> LoraAdapter<B> {
    /// `dropout(x) A^T B^T * scaling` in f32, cast back to the activation dtype.
    pub fn delta(&self, x: Tensor<B, 2>, train: bool) -> Tensor<B, 2> {
        let dtype = x.dtype();
        let mut x = if dtype == DType::F32 {
            x
        } else {
            x.cast(DType::F32)
        };
        if train && self.dropout > 0.0 {
            let keep = 1.0 - self.dropout;
            let mask = x.random_like(Distribution::Bernoulli(keep));
            x = x * mask / keep;
        }
        let d = x
            .matmul(self.a.val().transpose())
            .matmul(self.b.val().transpose())
            * self.scaling;
        if dtype == DType::F32 {
            d
        } else {
            d.cast(dtype)
        }
    }

    pub fn rank(&self) -> usize {
        self.a.val().dims()[0]
    }
}
