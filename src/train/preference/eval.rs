//! Evaluation on held-out preference pairs (no dropout, no gradients): the objective's loss and
//! TRL's reward metrics over all pairs, and the perplexity of the chosen completions.

use anyhow::Context;

use super::batch::{PairBatch, nll_tokens};
use super::kto::{Kto, evaluate_unpaired};
use super::objective::{PreferenceMetrics, PreferenceObjective, PreferenceSums, pair_terms};
use super::step::{pair_logps, reference_logps};
use crate::data::PreferencePair;
use crate::model::loss::token_losses;
use crate::model::{Model, ModelBackend};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreferenceEval {
    /// The objective's loss over all pairs (ORPO: its NLL over all their tokens).
    pub loss: f64,
    /// `exp` of the chosen completions' mean NLL per token.
    pub perplexity: f64,
    pub metrics: PreferenceMetrics,
    pub pairs: usize,
}

/// How evaluation batches are made: pairs (rows) per batch, `data.seq_len`, the padding id and
/// the loss's vocabulary chunk.
#[derive(Debug, Clone, Copy)]
pub struct EvalBatches {
    pub size: usize,
    pub seq_len: usize,
    pub pad_id: u32,
    pub chunk: usize,
}

impl EvalBatches {
    /// A run's: micro-batches of validation pairs (rows), cut to `data.seq_len`.
    pub fn of_run(setup: &crate::train::setup::RunSetup, chunk: usize) -> Self {
        let r = setup.recipe();
        Self {
            size: r.train.micro_batch_size,
            seq_len: r.data.seq_len,
            pad_id: setup.pad_id(),
            chunk,
        }
    }
}

/// Evaluate `pairs` (KTO: unpaired rows) in batches; `reference` is DPO's and KTO's
/// reference policy.
pub fn evaluate_pairs<B: ModelBackend>(
    policy: &Model<B>,
    reference: Option<&Model<B>>,
    pairs: &[PreferencePair],
    objective: &PreferenceObjective,
    batches: &EvalBatches,
) -> anyhow::Result<PreferenceEval> {
    let EvalBatches {
        size: batch_size,
        seq_len,
        pad_id,
        chunk,
    } = *batches;
    if let Some(kto) = Kto::of(objective) {
        let reference = reference.context("KTO needs its reference policy")?;
        let (loss, sums, (nll, tokens)) = evaluate_unpaired(
            policy, reference, pairs, &kto, batch_size, seq_len, pad_id, chunk,
        )?;
        return Ok(PreferenceEval {
            loss,
            perplexity: (nll / tokens.max(1) as f64).exp(),
            metrics: sums.metrics(objective),
            pairs: pairs.len(),
        });
    }
    let prompt_in_chosen = objective.prompt_in_chosen();
    // The NLL term's weight (SimPO without it reports an NLL of 0, as TRL does).
    let nll_weight = objective.nll().map(|(_, w)| w);
    let mut sums = PreferenceSums::default();
    let mut pair_loss = 0.0f64;
    let (mut chosen_nll, mut chosen_tokens) = (0.0f64, 0usize);
    for chunk_pairs in pairs.chunks(batch_size.max(1)) {
        let refs: Vec<&PreferencePair> = chunk_pairs.iter().collect();
        let pb = PairBatch::new(&refs, pad_id, prompt_in_chosen)
            .with_length_weight(objective.length_weight());
        let reference_rows = match reference {
            Some(r) if objective.needs_reference() => Some(reference_logps(r, &pb, chunk)?),
            _ => None,
        };
        let hidden = policy.hidden_states(&pb.batch, None);
        let values: Vec<f32> = token_losses(&policy.net, hidden, &pb.targets, chunk)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading token losses: {e:?}"))?;
        let rows = pb.sequence_logps(&values);
        for p in pair_logps(&rows, reference_rows.as_deref(), pb.pairs) {
            let t = pair_terms(objective, &p);
            pair_loss += t.loss;
            sums.add(&t);
        }
        for &(logp, tokens) in &pb.plain_logps(&values)[..pb.pairs] {
            chosen_nll -= logp;
            chosen_tokens += tokens;
        }
        if nll_weight.is_some() {
            let (nll, n) = pb.chosen_nll(&values);
            sums.nll += nll;
            sums.nll_tokens += n as f64;
        }
    }
    let n = pairs.len().max(1) as f64;
    let mut loss = pair_loss / n;
    if let Some(w) = nll_weight {
        let tokens: usize = pairs.iter().map(|p| nll_tokens(p, prompt_in_chosen)).sum();
        loss += w * sums.nll / tokens.max(1) as f64;
    }
    Ok(PreferenceEval {
        loss,
        perplexity: (chosen_nll / chosen_tokens.max(1) as f64).exp(),
        metrics: sums.metrics(objective),
        pairs: pairs.len(),
    })
}
