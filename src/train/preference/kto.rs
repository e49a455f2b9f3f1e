//! KTO (Ethayarajh et al. 2024) as TRL's `KTOTrainer` computes it, on unpaired rows (one
//! completion each, desirable or not). Each row's loss compares its log-ratio
//! `r = log pi(y|x) - log pi_ref(y|x)` (summed over the completion) with `z`, the micro-batch's
//! estimate of the policies' KL divergence: `w_d * (1 - sigmoid(beta * (r - z)))` for a desirable
//! completion, `w_u * (1 - sigmoid(beta * (z - r)))` for an undesirable one. `z` is
//! `max(0, mean(r'))` over mismatched rows, each prompt of the micro-batch followed by the
//! completion of the row before it (the first by the last's: TRL's rotation by one), computed
//! without gradients and taken as a constant. `apo_zero_unpaired` drops `z`:
//! `1 - sigmoid(beta * r)` and `sigmoid(beta * r)`.
//!
//! TRL forms its mismatched rows once, over the dataset in order, and so requires sequential
//! batches; here they are formed within each micro-batch as it is drawn, which is the same
//! rows for sequential batches and keeps the pairing for shuffled ones. With data parallel,
//! every replica computes the estimate over the whole micro-batch (forward passes only), so
//! the step is the one a single process takes.

use burn::tensor::{DType, Tensor, TensorData};

use super::batch::{PairBatch, Sequence};
use super::math::sigmoid;
use super::objective::{PreferenceObjective, PreferenceSums};
use super::step::{PairWindow, StepTotals, finish_step, reference_logps, token_values};
use crate::backend::TrainBackend;
use crate::data::PreferencePair;
use crate::lora::TargetModule;
use crate::model::kernels::DropoutSeed;
use crate::model::loss::token_losses;
use crate::model::{Model, ModelBackend};
use crate::recipe::KtoLoss;
use crate::rng::fnv1a;
use crate::train::optimizer::AdamW;
use crate::train::signals::StopFlag;
use crate::train::step::{StepResult, StepSettings};
use crate::train::sync::GradientSync;

/// KTO's settings, from [`PreferenceObjective::Kto`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kto {
    pub beta: f64,
    pub loss: KtoLoss,
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
}

impl Kto {
    pub fn of(objective: &PreferenceObjective) -> Option<Self> {
        match *objective {
            PreferenceObjective::Kto {
                beta,
                loss,
                desirable_weight,
                undesirable_weight,
            } => Some(Self {
                beta,
                loss,
                desirable_weight,
                undesirable_weight,
            }),
            _ => None,
        }
    }

    /// Whether the loss reads the KL estimate (`apo_zero_unpaired` does not).
    pub fn uses_kl(&self) -> bool {
        self.loss == KtoLoss::Kto
    }

    /// One row's loss, its derivative with respect to the row's summed log-probability, and
    /// its reward `beta * r`, given its log-ratio `r` and the KL estimate `z`.
    pub fn term(&self, desirable: bool, r: f64, z: f64) -> (f64, f64, f64) {
        let b = self.beta;
        // d sigmoid(x) / dx = sigmoid(x) * sigmoid(-x).
        let slope = |x: f64| sigmoid(x) * sigmoid(-x);
        let (loss, d) = match (self.loss, desirable) {
            (KtoLoss::Kto, true) => {
                let x = b * (r - z);
                (1.0 - sigmoid(x), -b * slope(x))
            }
            (KtoLoss::Kto, false) => {
                let x = b * (z - r);
                (1.0 - sigmoid(x), b * slope(x))
            }
            (KtoLoss::ApoZeroUnpaired, true) => (1.0 - sigmoid(b * r), -b * slope(b * r)),
            (KtoLoss::ApoZeroUnpaired, false) => (sigmoid(b * r), b * slope(b * r)),
        };
        let w = if desirable {
            self.desirable_weight
        } else {
            self.undesirable_weight
        };
        (w * loss, w * d, b * r)
    }
}

/// The completion each row of a micro-batch of `n` rows is mismatched with: the row before's,
/// the first row taking the last's.
pub fn kl_partner(row: usize, n: usize) -> usize {
    (row + n - 1) % n.max(1)
}

/// The rows' sequences: each prompt with its own completion.
fn own_sequences<'a>(rows: &[&'a PreferencePair]) -> Vec<Sequence<'a>> {
    rows.iter()
        .map(|p| (p.prompt.as_slice(), p.chosen.as_slice(), false))
        .collect()
}

/// The KL estimate of a micro-batch (all of it, every replica's rows): `max(0, mean(log pi -
/// log pi_ref))` over its mismatched rows, each cut to `seq_len` tokens (the completion's end
/// goes, as TRL's collator cuts at `max_length`). No gradients, no dropout.
pub fn kl_estimate<B: ModelBackend>(
    policy: &Model<B>,
    reference: &Model<B>,
    rows: &[&PreferencePair],
    seq_len: usize,
    pad_id: u32,
    chunk: usize,
) -> anyhow::Result<f64> {
    let n = rows.len();
    if n == 0 {
        return Ok(0.0);
    }
    let sequences: Vec<Sequence<'_>> = (0..n)
        .map(|j| {
            let prompt = rows[j].prompt.as_slice();
            let completion = rows[kl_partner(j, n)].chosen.as_slice();
            let room = seq_len.saturating_sub(prompt.len()).min(completion.len());
            (prompt, &completion[..room], false)
        })
        .collect();
    let pb = PairBatch::of_sequences(&sequences, n, pad_id);
    let hidden = policy.hidden_states(&pb.batch, None);
    let values = token_values(token_losses(&policy.net, hidden, &pb.targets, chunk))?;
    let own = pb.sequence_logps(&values);
    let reference = reference_logps(reference, &pb, chunk)?;
    let mean = own
        .iter()
        .zip(&reference)
        .map(|(p, r)| p.0 - r.0)
        .sum::<f64>()
        / n as f64;
    Ok(mean.max(0.0))
}

/// Per row of a batch: its loss, derivative and metrics, added to `sums`; returns the loss
/// sum and each row's derivative.
fn rows_terms(
    kto: &Kto,
    rows: &[&PreferencePair],
    policy: &[(f64, usize)],
    reference: &[(f64, usize)],
    z: f64,
    sums: &mut PreferenceSums,
) -> (f64, Vec<f64>) {
    let mut loss = 0.0;
    let mut d = Vec::with_capacity(rows.len());
    for ((row, p), r) in rows.iter().zip(policy).zip(reference) {
        let desirable = row.label.unwrap_or(true);
        let (l, dl, reward) = kto.term(desirable, p.0 - r.0, z);
        loss += l;
        d.push(dl);
        sums.pairs += 1.0;
        if desirable {
            sums.desirable += 1.0;
            sums.reward_chosen += reward;
            sums.logp_chosen += p.0;
        } else {
            sums.undesirable += 1.0;
            sums.reward_rejected += reward;
            sums.logp_rejected += p.0;
        }
    }
    (loss, d)
}

/// Take optimizer step `step` of KTO over `window`, against `reference`.
#[allow(clippy::too_many_arguments)]
pub fn take_kto_step<B: TrainBackend>(
    model: &mut Model<B>,
    reference: &Model<B::InnerBackend>,
    targets: &[TargetModule],
    optimizer: &mut AdamW<B::InnerBackend>,
    window: &PairWindow<'_>,
    kto: &Kto,
    step: usize,
    lr: f64,
    settings: &StepSettings,
    sync: &mut dyn GradientSync<B::InnerBackend>,
    stop: &StopFlag,
) -> anyhow::Result<(StepResult, PreferenceSums)> {
    let device = model.device.clone();
    let mut totals = StepTotals::new(&model.net, targets, &device);
    let row_scale = 1.0 / window.pairs.max(1) as f64;
    // The KL estimate's policy: this step's weights, without autodiff or dropout.
    let frozen = kto.uses_kl().then(|| model.valid());
    for (j, rows) in window.micro_batches.iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let whole = &window.whole[j];
        let z = match &frozen {
            Some(policy) => kl_estimate(
                policy,
                reference,
                whole,
                settings.seq_len,
                settings.pad_id,
                settings.chunk,
            )?,
            None => 0.0,
        };
        // Each replica's share of the micro-batch's estimate, so the sums add up to one per
        // micro-batch.
        let share = rows.len() as f64 / whole.len().max(1) as f64;
        totals.sums.kl += z * share;
        totals.sums.kl_batches += share;
        let pb = PairBatch::of_sequences(&own_sequences(rows), rows.len(), settings.pad_id);
        totals.input_tokens += pb.input_tokens;
        totals.trained_tokens += pb.token_row.len();
        let reference_rows = reference_logps(reference, &pb, settings.chunk)?;
        let dropout = DropoutSeed::strided(
            settings.seed ^ fnv1a(format!("dropout-{step}-{j}").as_bytes()),
            sync.rank(),
            sync.world_size(),
        );
        let hidden = model.hidden_states(&pb.batch, Some(&dropout));
        let losses = token_losses(&model.net, hidden, &pb.targets, settings.chunk);
        let values = token_values(losses.clone())?;
        let policy_rows = pb.sequence_logps(&values);
        let (loss, d_row) = rows_terms(
            kto,
            rows,
            &policy_rows,
            &reference_rows,
            z,
            &mut totals.sums,
        );
        totals.loss += loss * row_scale;
        // A token loss is minus a log-probability: its weight is minus its row's derivative.
        let weights: Vec<f32> = pb
            .token_row
            .iter()
            .map(|&row| (-d_row[row] * row_scale) as f32)
            .collect();
        let n = weights.len();
        let w = Tensor::<B, 1>::from_data(TensorData::new(weights, [n]), (&device, DType::F32));
        totals.add_gradients(&model.net, targets, (losses * w).sum().backward());
    }
    finish_step(
        model, targets, optimizer, totals, step, lr, settings, sync, stop,
    )
}

/// KTO on held-out rows in batches of `batch_size` (each its own KL estimate, as the training
/// micro-batches): the mean loss, the metrics, and the desirable completions' NLL and tokens
/// (all completions' when none is desirable).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_unpaired<B: ModelBackend>(
    policy: &Model<B>,
    reference: &Model<B>,
    rows: &[PreferencePair],
    kto: &Kto,
    batch_size: usize,
    seq_len: usize,
    pad_id: u32,
    chunk: usize,
) -> anyhow::Result<(f64, PreferenceSums, (f64, usize))> {
    let mut sums = PreferenceSums::default();
    let mut loss = 0.0;
    let (mut nll, mut tokens) = ([0.0f64; 2], [0usize; 2]);
    for batch in rows.chunks(batch_size.max(1)) {
        let refs: Vec<&PreferencePair> = batch.iter().collect();
        let z = if kto.uses_kl() {
            kl_estimate(policy, reference, &refs, seq_len, pad_id, chunk)?
        } else {
            0.0
        };
        sums.kl += z;
        sums.kl_batches += 1.0;
        let pb = PairBatch::of_sequences(&own_sequences(&refs), refs.len(), pad_id);
        let reference_rows = reference_logps(reference, &pb, chunk)?;
        let hidden = policy.hidden_states(&pb.batch, None);
        let values = token_values(token_losses(&policy.net, hidden, &pb.targets, chunk))?;
        let policy_rows = pb.sequence_logps(&values);
        loss += rows_terms(kto, &refs, &policy_rows, &reference_rows, z, &mut sums).0;
        for (row, &(logp, n)) in refs.iter().zip(&policy_rows) {
            let side = usize::from(row.label == Some(true));
            nll[side] -= logp;
            tokens[side] += n;
        }
    }
    let side = if tokens[1] > 0 { 1 } else { 0 };
    Ok((
        loss / rows.len().max(1) as f64,
        sums,
        (nll[side], tokens[side]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences of each row's loss against the analytic derivative.
    #[test]
    fn derivatives_match_finite_differences() {
        for loss in [KtoLoss::Kto, KtoLoss::ApoZeroUnpaired] {
            let kto = Kto {
                beta: 0.7,
                loss,
                desirable_weight: 1.3,
                undesirable_weight: 0.6,
            };
            for desirable in [true, false] {
                for r in [-2.5, 0.1, 3.0] {
                    let (_, d, reward) = kto.term(desirable, r, 0.4);
                    let h = 1e-6;
                    let f = |x: f64| kto.term(desirable, x, 0.4).0;
                    let numeric = (f(r + h) - f(r - h)) / (2.0 * h);
                    assert!(
                        (numeric - d).abs() < 1e-8,
                        "{loss} {desirable} {r}: {numeric} vs {d}"
                    );
                    assert_eq!(reward, 0.7 * r);
                }
            }
        }
    }

    /// The paper's value function: a desirable completion's loss falls as its log-ratio rises
    /// past the KL estimate, an undesirable one's rises; at `r = z` both are half their weight.
    #[test]
    fn losses_at_the_reference_point() {
        let kto = Kto {
            beta: 0.1,
            loss: KtoLoss::Kto,
            desirable_weight: 2.0,
            undesirable_weight: 1.0,
        };
        assert_eq!(kto.term(true, 0.5, 0.5).0, 1.0);
        assert_eq!(kto.term(false, 0.5, 0.5).0, 0.5);
        assert!(kto.term(true, 1.0, 0.5).1 < 0.0);
        assert!(kto.term(false, 1.0, 0.5).1 > 0.0);
    }

    #[test]
    fn partners_rotate_by_one() {
        let p: Vec<usize> = (0..4).map(|j| kl_partner(j, 4)).collect();
        assert_eq!(p, vec![3, 0, 1, 2]);
        assert_eq!(kl_partner(0, 1), 0);
    }
}
