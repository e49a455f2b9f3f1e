//! One optimizer step of DPO or ORPO. Per micro-batch: the reference policy's log-probabilities
//! (DPO; no gradients), one forward pass of the policy over the chosen and rejected sequences
//! with per-token losses from the fused cross-entropy, the objective and its derivatives on
//! the host in f64, and one backward pass of `sum_i w_i * loss_i` with `w_i` the derivative
//! of the step's loss with respect to token loss `i` (so the gradient is the objective's).
//! The window's pair and NLL-token counts are known before any forward pass, so every
//! micro-batch is normalised as the whole window is and replicas only add up.

use burn::tensor::{DType, Tensor, TensorData};

use anyhow::Context;

use super::batch::PairBatch;
use super::kto::{Kto, take_kto_step};
use super::objective::{PairLogps, PreferenceObjective, PreferenceSums, pair_terms};
use crate::backend::TrainBackend;
use crate::data::PreferencePair;
use crate::lora::TargetModule;
use crate::lora::attach::factor_tensors;
use crate::lora::peft::read_adapter;
use crate::model::kernels::DropoutSeed;
use crate::model::loss::token_losses;
use crate::model::{Model, ModelBackend};
use crate::rng::fnv1a;
use crate::train::optimizer::AdamW;
use crate::train::setup::RunSetup;
use crate::train::signals::StopFlag;
use crate::train::step::{StepResult, StepSettings, Update, apply_update, stop_after};
use crate::train::sync::{GradientSync, StepContribution};

/// A step's pairs: this replica's share of each micro-batch, and the window's totals.
pub struct PairWindow<'a> {
    /// This replica's pairs of each micro-batch.
    pub micro_batches: Vec<Vec<&'a PreferencePair>>,
    /// Each whole micro-batch (every replica's pairs; KTO's KL estimate covers them all).
    pub whole: Vec<Vec<&'a PreferencePair>>,
    /// Pairs in each whole micro-batch (all replicas).
    pub global_sizes: Vec<usize>,
    /// Pairs in the whole window.
    pub pairs: usize,
    /// Tokens ORPO's NLL averages over in the whole window.
    pub nll_tokens: usize,
}

/// The policy's and the reference's per-token losses of a batch of pairs.
pub(super) fn token_values<B: ModelBackend>(t: Tensor<B, 1>) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading token losses: {e:?}"))
}

/// The reference policy's summed completion log-probabilities of each row (no gradients).
pub fn reference_logps<B: ModelBackend>(
    reference: &Model<B>,
    pb: &PairBatch,
    chunk: usize,
) -> anyhow::Result<Vec<(f64, usize)>> {
    let hidden = reference.hidden_states(&pb.batch, None);
    let values = token_values(token_losses(&reference.net, hidden, &pb.targets, chunk))?;
    Ok(pb.sequence_logps(&values))
}

/// Per-pair inputs of the objective from per-row sums (chosen rows first).
pub fn pair_logps(
    policy: &[(f64, usize)],
    reference: Option<&[(f64, usize)]>,
    pairs: usize,
) -> Vec<PairLogps> {
    (0..pairs)
        .map(|i| PairLogps {
            chosen: policy[i].0,
            rejected: policy[pairs + i].0,
            chosen_tokens: policy[i].1,
            rejected_tokens: policy[pairs + i].1,
            ref_chosen: reference.map_or(0.0, |r| r[i].0),
            ref_rejected: reference.map_or(0.0, |r| r[pairs + i].0),
        })
        .collect()
}

/// What a step's micro-batches add up on this replica before the replicas' sums.
pub(super) struct StepTotals<B: TrainBackend> {
    pub grad_sums: Vec<Tensor<B::InnerBackend, 2>>,
    pub loss: f64,
    pub input_tokens: usize,
    pub trained_tokens: usize,
    pub sums: PreferenceSums,
}

impl<B: TrainBackend> StepTotals<B> {
    pub fn new(
        net: &crate::model::CausalLm<B>,
        targets: &[TargetModule],
        device: &B::Device,
    ) -> Self {
        Self {
            grad_sums: factor_tensors(net, targets)
                .iter()
                .map(|p| Tensor::zeros(p.dims(), (device, DType::F32)))
                .collect(),
            loss: 0.0,
            input_tokens: 0,
            trained_tokens: 0,
            sums: PreferenceSums::default(),
        }
    }

    /// Add a micro-batch's gradients of the adapter factors.
    pub fn add_gradients(
        &mut self,
        net: &crate::model::CausalLm<B>,
        targets: &[TargetModule],
        grads: B::Gradients,
    ) {
        for (acc, p) in self.grad_sums.iter_mut().zip(factor_tensors(net, targets)) {
            if let Some(g) = p.grad(&grads) {
                *acc = acc.clone() + g;
            }
        }
    }
}

/// Sum the replicas' totals and update the adapters.
#[allow(clippy::too_many_arguments)]
pub(super) fn finish_step<B: TrainBackend>(
    model: &mut Model<B>,
    targets: &[TargetModule],
    optimizer: &mut AdamW<B::InnerBackend>,
    totals: StepTotals<B>,
    step: usize,
    lr: f64,
    settings: &StepSettings,
    sync: &mut dyn GradientSync<B::InnerBackend>,
    stop: &StopFlag,
) -> anyhow::Result<(StepResult, PreferenceSums)> {
    let local_stop = stop.requested();
    let total = sync.all_reduce(StepContribution {
        grad_sums: totals.grad_sums,
        trained_tokens: totals.trained_tokens,
        loss_sum: totals.loss,
        input_tokens: totals.input_tokens,
        stop: local_stop.is_some(),
        step,
        metric_sums: totals.sums.to_vec(),
    })?;
    let stop = stop_after(local_stop, total.stop);
    let update = Update {
        step,
        lr,
        loss: total.loss_sum,
        max_grad_norm: settings.max_grad_norm,
    };
    let grad_norm = apply_update(model, targets, optimizer, total.grad_sums, 1.0, &update)?;
    Ok((
        StepResult {
            loss: total.loss_sum,
            grad_norm,
            input_tokens: total.input_tokens,
            trained_tokens: total.trained_tokens,
            stop,
        },
        PreferenceSums::from_slice(&total.metric_sums),
    ))
}

/// Take optimizer step `step` over `window`. `reference` is the reference policy (DPO, KTO).
#[allow(clippy::too_many_arguments)]
pub fn take_preference_step<B: TrainBackend>(
    model: &mut Model<B>,
    reference: Option<&Model<B::InnerBackend>>,
    targets: &[TargetModule],
    optimizer: &mut AdamW<B::InnerBackend>,
    window: &PairWindow<'_>,
    objective: &PreferenceObjective,
    step: usize,
    lr: f64,
    settings: &StepSettings,
    sync: &mut dyn GradientSync<B::InnerBackend>,
    stop: &StopFlag,
) -> anyhow::Result<(StepResult, PreferenceSums)> {
    if let Some(kto) = Kto::of(objective) {
        let reference = reference.context("KTO needs its reference policy")?;
        return take_kto_step(
            model, reference, targets, optimizer, window, &kto, step, lr, settings, sync, stop,
        );
    }
    let device = model.device.clone();
    let mut totals = StepTotals::<B>::new(&model.net, targets, &device);
    let prompt_in_chosen = objective.prompt_in_chosen();
    let nll_scale = objective
        .nll()
        .map_or(0.0, |(_, weight)| weight / window.nll_tokens.max(1) as f64);
    let pair_scale = 1.0 / window.pairs.max(1) as f64;
    for (j, pairs) in window.micro_batches.iter().enumerate() {
        if pairs.is_empty() {
            continue;
        }
        let pb = PairBatch::new(pairs, settings.pad_id, prompt_in_chosen)
            .with_length_weight(objective.length_weight());
        totals.input_tokens += pb.input_tokens;
        totals.trained_tokens += pb.token_row.len();
        let reference_rows = match reference {
            Some(r) if objective.needs_reference() => {
                Some(reference_logps(r, &pb, settings.chunk)?)
            }
            _ => None,
        };
        // The chosen rows, then the rejected ones: each block is strided over the replicas
        // as the micro-batch's pairs are, so the dropout masks are one process's.
        let dropout = DropoutSeed {
            key: settings.seed ^ fnv1a(format!("dropout-{step}-{j}").as_bytes()),
            first_row: sync.rank(),
            row_stride: sync.world_size(),
            split: Some((pb.pairs, window.global_sizes.get(j).copied().unwrap_or(0))),
        };
        let hidden = model.hidden_states(&pb.batch, Some(&dropout));
        let losses = token_losses(&model.net, hidden, &pb.targets, settings.chunk);
        let values = token_values(losses.clone())?;
        let rows = pb.sequence_logps(&values);
        let logps = pair_logps(&rows, reference_rows.as_deref(), pb.pairs);
        // d(step loss)/d(summed log-probability) of each row.
        let mut d_row = vec![0.0f64; 2 * pb.pairs];
        for (i, p) in logps.iter().enumerate() {
            let t = pair_terms(objective, p);
            totals.loss += t.loss * pair_scale;
            d_row[i] = t.d_chosen * pair_scale;
            d_row[pb.pairs + i] = t.d_rejected * pair_scale;
            totals.sums.add(&t);
        }
        if nll_scale > 0.0 {
            let (nll, n) = pb.chosen_nll(&values);
            totals.loss += nll * nll_scale;
            totals.sums.nll += nll;
            totals.sums.nll_tokens += n as f64;
        }
        // A token loss is minus a log-probability: its weight is minus its row's derivative
        // (times its weight in the row's sum), plus the NLL's share for the chosen rows.
        let weights: Vec<f32> = pb
            .token_row
            .iter()
            .zip(&pb.is_completion)
            .zip(&pb.token_weight)
            .map(|((&row, &completion), &w)| {
                let pair_part = if completion { -d_row[row] * w } else { 0.0 };
                let nll_part = if row < pb.pairs { nll_scale } else { 0.0 };
                (pair_part + nll_part) as f32
            })
            .collect();
        let n = weights.len();
        let w = Tensor::<B, 1>::from_data(TensorData::new(weights, [n]), (&device, DType::F32));
        totals.add_gradients(&model.net, targets, (losses * w).sum().backward());
    }
    finish_step(
        model, targets, optimizer, totals, step, lr, settings, sync, stop,
    )
}

/// The reference policy for `model`: the same network with the adapters off (`None`), or
/// with `factors` attached in their place; frozen weights are shared, not copied.
pub fn reference_model<B: TrainBackend>(
    model: &Model<B>,
    factors: Option<&crate::lora::peft::AdapterFiles>,
) -> Model<B::InnerBackend> {
    let mut reference = model.valid();
    let layers = reference.config.num_layers;
    for layer in 0..layers {
        for module in crate::model::params::LINEAR_MODULES {
            if let Some(proj) = reference.net.projection_mut(layer, module) {
                proj.lora = None;
            }
        }
    }
    if let Some(files) = factors {
        let device = reference.device.clone();
        for ((layer, module), f) in &files.factors {
            let to = |values: &[f32], shape: [usize; 2]| {
                burn::module::Param::from_tensor(Tensor::<B::InnerBackend, 2>::from_data(
                    TensorData::new(values.to_vec(), shape),
                    (&device, DType::F32),
                ))
            };
            if let Some(proj) = reference.net.projection_mut(*layer, module) {
                proj.lora = Some(crate::lora::layer::LoraAdapter {
                    a: to(&f.a, [f.r, f.in_features]),
                    b: to(&f.b, [f.out_features, f.r]),
                    magnitude: f.magnitude.as_ref().map(|m| to(m, [1, f.out_features])),
                    weight_sq_norms: None,
                    frozen_inverse_norm: None,
                    scaling: f.scaling,
                    dropout: 0.0,
                });
            }
        }
    }
    reference
}

/// DPO's and KTO's reference policy: the base with the adapters off, or `train.dpo.reference`'s
/// (`train.kto.reference`'s) adapter on the same frozen weights. `None` for objectives without
/// one.
pub fn load_reference<B: TrainBackend>(
    setup: &RunSetup,
    model: &Model<B>,
    objective: Option<&PreferenceObjective>,
) -> anyhow::Result<Option<Model<B::InnerBackend>>> {
    if !objective.is_some_and(PreferenceObjective::needs_reference) {
        return Ok(None);
    }
    let t = &setup.recipe().train;
    let (key, r) = match t.objective {
        crate::recipe::Objective::Kto => ("train.kto.reference", &t.kto.reference),
        _ => ("train.dpo.reference", &t.dpo.reference),
    };
    let files = if r == "base" {
        None
    } else {
        let dir = setup.loaded.resolve_path(r);
        Some(
            read_adapter(&dir, &model.config)
                .with_context(|| format!("{key} {}", dir.display()))?,
        )
    };
    Ok(Some(reference_model(model, files.as_ref())))
}
