//! One optimizer step, as `train` and `bench` both run it: forward and backward over the step's
//! micro-batches (gradients of the summed token loss), the exchange with the other replicas,
//! a check that the loss and gradients are finite, normalisation by the step's trained tokens,
//! clipping and AdamW.

use crate::backend::TrainBackend;
use burn::tensor::{DType, ElementConversion, Tensor};

use super::optimizer::{AdamW, clip, global_norm};
use super::signals::StopFlag;
use super::sync::{GradientSync, StepContribution};
use crate::data::{PackedRow, collate};
use crate::lora::TargetModule;
use crate::lora::attach::{factor_tensors, set_factor_tensors};
use crate::model::Model;
use crate::model::kernels::DropoutSeed;
use crate::model::loss::cross_entropy_sum;
use crate::rng::fnv1a;

/// What a step needs besides the model, the optimizer and its rows.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings {
    /// Padding id of collated rows (masked by the attention mask, so any valid id works).
    pub pad_id: u32,
    /// Rows per chunk of the vocabulary projection in the loss.
    pub chunk: usize,
    /// The run's seed: dropout masks derive from it, the step and the micro-batch.
    pub seed: u64,
    /// Global gradient-norm clipping.
    pub max_grad_norm: Option<f64>,
    /// `data.seq_len`: KTO's mismatched rows are cut to it.
    pub seq_len: usize,
}

/// What a step did, summed over all replicas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepResult {
    /// Mean loss per trained token.
    pub loss: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    pub input_tokens: usize,
    pub trained_tokens: usize,
    /// A stop was requested on some replica (the signal number; 2 when another replica's).
    pub stop: Option<i32>,
}

/// A step that must not be taken.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(
        "step {step}: the loss is {loss} and the gradient norm {grad_norm}: training diverged or the data or base model holds NaN/Inf; the step was not applied. Lower train.optimizer.lr, keep train.max_grad_norm set, or check the data"
    )]
    NonFinite {
        step: usize,
        loss: f64,
        grad_norm: f64,
    },
    #[error(
        "step {step}: no trained tokens in the batch (every label masked); check the data's loss masks"
    )]
    NoTrainedTokens { step: usize },
}

impl StepError {
    /// Both come from the recipe or the data, not from a bug.
    pub fn is_user_error(&self) -> bool {
        true
    }
}

/// Take optimizer step `step` (0-based) at learning rate `lr` over `micro_batches` (this
/// replica's rows of each micro-batch). The model's factors are updated in place; on an error
/// they keep their values from before the step.
#[allow(clippy::too_many_arguments)]
pub fn take_step<B: TrainBackend>(
    model: &mut Model<B>,
    targets: &[TargetModule],
    optimizer: &mut AdamW<B::InnerBackend>,
    micro_batches: &[Vec<&PackedRow>],
    step: usize,
    lr: f64,
    settings: &StepSettings,
    sync: &mut dyn GradientSync<B::InnerBackend>,
    stop: &StopFlag,
) -> anyhow::Result<StepResult> {
    let device = model.device.clone();
    let mut grad_sums: Vec<Tensor<B::InnerBackend, 2>> = factor_tensors(&model.net, targets)
        .iter()
        .map(|p| Tensor::zeros(p.dims(), (&device, DType::F32)))
        .collect();
    let (mut trained_tokens, mut input_tokens, mut loss_sum) = (0usize, 0usize, 0.0f64);
    for (j, rows) in micro_batches.iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let (batch, tgt) = collate(rows, settings.pad_id);
        input_tokens += rows.iter().map(|r| r.len()).sum::<usize>();
        // Dropout masks are a pure function of the seed, the step, the micro-batch and each
        // element's place in the micro-batch (so replicas draw what one process would).
        let dropout = DropoutSeed::strided(
            settings.seed ^ fnv1a(format!("dropout-{step}-{j}").as_bytes()),
            sync.rank(),
            sync.world_size(),
        );
        let hidden = model.hidden_states(&batch, Some(&dropout));
        let (sum, n) = cross_entropy_sum(&model.net, hidden, &tgt, settings.chunk);
        if n == 0 {
            continue;
        }
        trained_tokens += n;
        loss_sum += sum.clone().into_scalar().elem::<f64>();
        let grads = sum.backward();
        for (acc, p) in grad_sums
            .iter_mut()
            .zip(factor_tensors(&model.net, targets))
        {
            if let Some(g) = p.grad(&grads) {
                *acc = acc.clone() + g;
            }
        }
    }
    // The stop request travels with the step's exchange, so every replica stops after the
    // same step.
    let local_stop = stop.requested();
    let total = sync.all_reduce(StepContribution {
        grad_sums,
        trained_tokens,
        loss_sum,
        input_tokens,
        stop: local_stop.is_some(),
        step,
        metric_sums: Vec::new(),
    })?;
    let stop = stop_after(local_stop, total.stop);
    if total.trained_tokens == 0 {
        return Err(StepError::NoTrainedTokens { step: step + 1 }.into());
    }
    let scale = 1.0 / total.trained_tokens as f64;
    let loss = total.loss_sum * scale;
    let update = Update {
        step,
        lr,
        loss,
        max_grad_norm: settings.max_grad_norm,
    };
    let grad_norm = apply_update(model, targets, optimizer, total.grad_sums, scale, &update)?;
    Ok(StepResult {
        loss,
        grad_norm,
        input_tokens: total.input_tokens,
        trained_tokens: total.trained_tokens,
        stop,
    })
}

/// The signal a step stops with: this replica's, or SIGINT when only another was signalled.
pub(crate) fn stop_after(local: Option<i32>, any: bool) -> Option<i32> {
    match local {
        Some(sig) => Some(sig),
        None if any => Some(2),
        None => None,
    }
}

/// What [`apply_update`] needs to know about the step.
pub(crate) struct Update {
    /// 0-based step index.
    pub step: usize,
    pub lr: f64,
    /// The step's loss (checked to be finite).
    pub loss: f64,
    pub max_grad_norm: Option<f64>,
}

/// The part of a step after the exchange, whatever the objective: the gradients
/// (`grad_sums * scale`), a check that they and the loss are finite, clipping and AdamW.
/// Returns the gradient norm before clipping; on an error the factors are unchanged.
pub(crate) fn apply_update<B: TrainBackend>(
    model: &mut Model<B>,
    targets: &[TargetModule],
    optimizer: &mut AdamW<B::InnerBackend>,
    grad_sums: Vec<Tensor<B::InnerBackend, 2>>,
    scale: f64,
    u: &Update,
) -> anyhow::Result<f64> {
    let grads: Vec<Tensor<B::InnerBackend, 2>> = if scale == 1.0 {
        grad_sums
    } else {
        grad_sums.into_iter().map(|g| g * scale).collect()
    };
    let grad_norm = global_norm(&grads).map_err(anyhow::Error::msg)?;
    if !(u.loss.is_finite() && grad_norm.is_finite()) {
        return Err(StepError::NonFinite {
            step: u.step + 1,
            loss: u.loss,
            grad_norm,
        }
        .into());
    }
    let grads = match u.max_grad_norm {
        Some(max) => clip(grads, grad_norm, max).map_err(anyhow::Error::msg)?,
        None => grads,
    };
    let params: Vec<Tensor<B::InnerBackend, 2>> = factor_tensors(&model.net, targets)
        .into_iter()
        .map(|p| p.inner())
        .collect();
    let updated = optimizer.step(u.lr, params, &grads);
    set_factor_tensors(&mut model.net, targets, updated);
    Ok(grad_norm)
}
