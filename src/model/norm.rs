//! RMSNorm (Zhang & Sennrich 2019) as Hugging Face computes it: statistics in f32, the
//! normalised value cast back to the activation dtype, then scaled by the weight.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

use super::kernels::Kernels;

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
}

impl<B: Kernels> RmsNorm<B> {
    /// Normalises over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let dim = dims[D - 1];
        let rows = dims.iter().product::<usize>() / dim.max(1);
        B::rms_norm(x.reshape([rows, dim]), self.weight.val(), self.eps).reshape(dims)
    }
}
