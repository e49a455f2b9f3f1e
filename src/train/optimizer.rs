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
    /// Each parameter's learning rate as a multiple of the scheduled one (LoRA+ gives the
    /// `B` factors their own, as a torch parameter group would).
    pub lr_scales: Vec<f64>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: AdamWConfig, shapes: &[[usize; 2]], device: &B::Device) -> Self {
        let moments: Vec<Moments<B>> = shapes
            .iter()
            .map(|&s| Moments {
                exp_avg: Tensor::zeros(s, device),
                exp_avg_sq: Tensor::zeros(s, device),
            })
            .collect();
        Self {
            config,
            step: 0,
            lr_scales: vec![1.0; moments.len()],
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
        params
            .into_iter()
            .zip(grads)
            .zip(self.moments.iter_mut())
            .zip(&self.lr_scales)
            .map(|(((p, g), m), scale)| {
                // Decay and step at the parameter's own rate, as torch does per group.
                let lr = lr * scale;
                let step_size = lr / bias1;
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

/// The AdamW state on the host, as `optimizer.safetensors` stores it: the step count and both
/// moments of every parameter, under the parameter's name.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    pub step: u64,
    pub moments: Vec<NamedMoments>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NamedMoments {
    /// The parameter's name (its PEFT tensor key).
    pub name: String,
    pub shape: [usize; 2],
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
}

impl<B: Backend> AdamW<B> {
    /// A host copy of the state; `names` gives each parameter's name, in order.
    pub fn state(&self, names: &[String]) -> OptimizerState {
        let host = |t: &Tensor<B, 2>| -> Vec<f32> {
            t.to_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap_or_default()
        };
        OptimizerState {
            step: self.step,
            moments: self
                .moments
                .iter()
                .zip(names)
                .map(|(m, name)| NamedMoments {
                    name: name.clone(),
                    shape: m.exp_avg.dims(),
                    exp_avg: host(&m.exp_avg),
                    exp_avg_sq: host(&m.exp_avg_sq),
                })
                .collect(),
        }
    }

    /// Take over a saved state; every parameter of `names` must be in it with its shape.
    pub fn restore(
        &mut self,
        state: &OptimizerState,
        names: &[String],
        device: &B::Device,
    ) -> Result<(), String> {
        let mut moments = Vec::with_capacity(names.len());
        for (name, current) in names.iter().zip(&self.moments) {
            let saved = state
                .moments
                .iter()
                .find(|m| &m.name == name)
                .ok_or_else(|| format!("no moments for {name}"))?;
            let shape = current.exp_avg.dims();
            if saved.shape != shape {
                return Err(format!(
                    "moments of {name} have shape {:?}, the adapter's is {shape:?}",
                    saved.shape
                ));
            }
            let t = |v: &[f32]| {
                Tensor::from_data(
                    burn::tensor::TensorData::new(v.to_vec(), shape),
                    (device, burn::tensor::DType::F32),
                )
            };
            moments.push(Moments {
                exp_avg: t(&saved.exp_avg),
                exp_avg_sq: t(&saved.exp_avg_sq),
            });
        }
        self.moments = moments;
        self.step = state.step;
        Ok(())
    }
}

/// The global L2 norm of all gradients (computed in f32, summed in f64 on the host). NaN or
/// infinite when any gradient is: the caller must stop rather than step.
pub fn global_norm<B: Backend>(grads: &[Tensor<B, 2>]) -> Result<f64, String> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    // One device reduction per tensor, then a single host transfer.
    let squares: Vec<Tensor<B, 1>> = grads
        .iter()
        .map(|g| g.clone().powi_scalar(2).sum())
        .collect();
    let all = Tensor::cat(squares, 0).into_data().convert::<f32>();
    let values = all
        .to_vec::<f32>()
        .map_err(|e| format!("reading the gradient norms: {e:?}"))?;
    Ok(values.iter().map(|&v| v as f64).sum::<f64>().sqrt())
}

/// `clip_grad_norm_`: scale every gradient by `max / (norm + 1e-6)` when that is below 1. A
/// norm that is not finite cannot be clipped (the scale would be NaN or 0): an error, never a
/// silent pass-through.
pub fn clip<B: Backend>(
    grads: Vec<Tensor<B, 2>>,
    norm: f64,
    max_norm: f64,
) -> Result<Vec<Tensor<B, 2>>, String> {
    if !norm.is_finite() {
        return Err(format!("the gradient norm is {norm}; it cannot be clipped"));
    }
    let coef = max_norm / (norm + 1e-6);
    Ok(if coef < 1.0 {
        grads.into_iter().map(|g| g * coef).collect()
    } else {
        grads
    })
}
