//! AdamW with PyTorch's semantics (Loshchilov & Hutter 2019; `torch.optim.AdamW`, single-tensor
//! path): decoupled weight decay `p *= 1 - lr * wd`, bias-corrected moments, `eps` added to
//! `sqrt(v_hat)`. Every hyper-parameter is set explicitly (Burn's AdamW defaults differ).
//! Also global gradient-norm clipping like `torch.nn.utils.clip_grad_norm_`.

use burn::tensor::{Tensor, backend::Backend};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// First and second moments of one parameter.
#[derive(Debug, Clone)]
pub struct Moments<B: Backend> {
    pub exp_avg: Tensor<B, 2>,
    pub exp_avg_sq: Tensor<B, 2>,
}

/// AdamW state over a fixed, ordered list of parameters.
#[derive(Debug, Clone)]
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    /// Optimizer steps taken (torch's per-parameter `step`; all parameters share it here).
    pub step: u64,
    pub moments: Vec<Moments<B>>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: AdamWConfig, shapes: &[[usize; 2]], device: &B::Device) -> Self {
        let moments = shapes
            .iter()
            .map(|&s| Moments {
                exp_avg: Tensor::zeros(s, device),
                exp_avg_sq: Tensor::zeros(s, device),
            })
            .collect();
        Self {
            config,
            step: 0,
            moments,
        }
    }

    /// One update of every parameter with its gradient, at learning rate `lr`.
    pub fn step(
        &mut self,
        lr: f64,
        params: Vec<Tensor<B, 2>>,
        grads: &[Tensor<B, 2>],
    ) -> Vec<Tensor<B, 2>> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bias1;
        params
            .into_iter()
            .zip(grads)
            .zip(self.moments.iter_mut())
            .map(|((p, g), m)| {
                let p = if c.weight_decay != 0.0 {
                    p * (1.0 - lr * c.weight_decay)
                } else {
                    p
                };
                m.exp_avg = m.exp_avg.clone() * c.beta1 + g.clone() * (1.0 - c.beta1);
                m.exp_avg_sq =
                    m.exp_avg_sq.clone() * c.beta2 + g.clone() * g.clone() * (1.0 - c.beta2);
                let denom = m.exp_avg_sq.clone().sqrt() / bias2_sqrt + c.eps;
                p - m.exp_avg.clone() / denom * step_size
            })
            .collect()
    }
}

/// The global L2 norm of all gradients (computed in f32, summed in f64 on the host).
pub fn global_norm<B: Backend>(grads: &[Tensor<B, 2>]) -> f64 {
    if grads.is_empty() {
        return 0.0;
    }
    // One device reduction per tensor, then a single host transfer.
    let squares: Vec<Tensor<B, 1>> = grads
        .iter()
        .map(|g| g.clone().powi_scalar(2).sum())
        .collect();
    let all = Tensor::cat(squares, 0).into_data().convert::<f32>();
    let values = all.to_vec::<f32>().unwrap_or_default();
    values.iter().map(|&v| v as f64).sum::<f64>().sqrt()
}

/// `clip_grad_norm_`: scale every gradient by `max / (norm + 1e-6)` when that is below 1.
pub fn clip<B: Backend>(grads: Vec<Tensor<B, 2>>, norm: f64, max_norm: f64) -> Vec<Tensor<B, 2>> {
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        grads.into_iter().map(|g| g * coef).collect()
    } else {
        grads
    }
}
