//! RMSNorm (Zhang & Sennrich 2019) as Hugging Face computes it: statistics in f32, the
//! normalised value cast back to the activation dtype, then scaled by the weight.

use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor, backend::Backend};

#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn new(weight: Tensor<B, 1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight).set_require_grad(false),
            eps,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x32 = if dtype == DType::F32 {
            x
        } else {
            x.cast(DType::F32)
        };
        let variance = x32.clone().powi_scalar(2).mean_dim(D - 1);
        let normed = x32 * (variance + self.eps).sqrt().recip();
        let normed = if dtype == DType::F32 {
            normed
        } else {
            normed.cast(dtype)
        };
        normed * self.weight.val().unsqueeze::<D>()
    }
}
