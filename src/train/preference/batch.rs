//! A micro-batch of preference pairs as model input: the chosen sequences, then the rejected
//! ones (one forward pass for both, as TRL's concatenated forward), their targets, and which
//! trained token belongs to which sequence and to its completion.

use crate::data::{PackedRow, PreferencePair, TokenizedExample, collate};
use crate::model::HostBatch;
use crate::model::loss::{IGNORE_INDEX, Targets};

/// A sequence of a batch: its prompt, its completion, and whether the prompt is trained too.
pub type Sequence<'a> = (&'a [u32], &'a [u32], bool);

/// `k` pairs as `2k` rows: rows `0..k` chosen, `k..2k` rejected.
pub struct PairBatch {
    pub batch: HostBatch,
    pub targets: Targets,
    pub pairs: usize,
    /// Rows (sequences) in the batch.
    pub rows: usize,
    /// Per trained token (in the order of [`Targets::row_of_trained`]): its row, and whether
    /// it is a completion token (else a prompt token, trained by ORPO's NLL only).
    pub token_row: Vec<usize>,
    pub is_completion: Vec<bool>,
    /// Per trained token, its weight in its row's sequence log-probability: 1, or LD-DPO's
    /// alpha for completion tokens past the shorter completion of the pair.
    pub token_weight: Vec<f64>,
    pub input_tokens: usize,
}

impl PairBatch {
    /// `prompt_in_chosen`: the chosen rows train on their prompt tokens too (ORPO's NLL with
    /// `train_on_inputs`); completions are always trained.
    pub fn new(pairs: &[&PreferencePair], pad_id: u32, prompt_in_chosen: bool) -> Self {
        let sequences: Vec<Sequence<'_>> = pairs
            .iter()
            .map(|p| (p.prompt.as_slice(), p.chosen.as_slice(), prompt_in_chosen))
            .chain(
                pairs
                    .iter()
                    .map(|p| (p.prompt.as_slice(), p.rejected.as_slice(), false)),
            )
            .collect();
        Self::of_sequences(&sequences, pairs.len(), pad_id)
    }

    /// One row per sequence (prompt, completion, whether the prompt is trained too); `pairs`
    /// is what [`Self::pairs`] reports (KTO: the row count).
    pub fn of_sequences(sequences: &[Sequence<'_>], pairs: usize, pad_id: u32) -> Self {
        let rows: Vec<PackedRow> = sequences
            .iter()
            .map(|&(prompt, completion, prompt_trained)| {
                let ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
                let labels = ids
                    .iter()
                    .enumerate()
                    .map(|(t, &id)| {
                        if prompt_trained || t >= prompt.len() {
                            id as i64
                        } else {
                            IGNORE_INDEX
                        }
                    })
                    .collect();
                PackedRow::single(&TokenizedExample { ids, labels })
            })
            .collect();
        let refs: Vec<&PackedRow> = rows.iter().collect();
        let (batch, targets) = collate(&refs, pad_id);
        let mut token_row = Vec::new();
        let mut is_completion = Vec::new();
        for (b, row) in targets.rows.iter().enumerate() {
            for (t, &y) in row.iter().enumerate() {
                if y != IGNORE_INDEX {
                    token_row.push(b);
                    // Position t predicts token t + 1.
                    is_completion.push(t + 1 >= sequences[b].0.len());
                }
            }
        }
        let token_weight = vec![1.0; token_row.len()];
        Self {
            batch,
            targets,
            pairs,
            rows: sequences.len(),
            token_row,
            is_completion,
            token_weight,
            input_tokens: rows.iter().map(PackedRow::len).sum(),
        }
    }

    /// LD-DPO (Liu et al. 2024): each completion's tokens past the length of the pair's
    /// shorter completion count `alpha` times in its sequence log-probability (TRL's
    /// `ld_alpha`), so a longer completion no longer wins by its length alone.
    pub fn with_length_weight(mut self, alpha: Option<f64>) -> Self {
        let Some(alpha) = alpha else {
            return self;
        };
        let k = self.pairs;
        let mut lens = vec![0usize; 2 * k];
        for (&row, &completion) in self.token_row.iter().zip(&self.is_completion) {
            lens[row] += usize::from(completion);
        }
        let mut position = vec![0usize; 2 * k];
        for ((&row, &completion), w) in self
            .token_row
            .iter()
            .zip(&self.is_completion)
            .zip(&mut self.token_weight)
        {
            if completion {
                position[row] += 1;
                let shared = lens[row % k].min(lens[k + row % k]);
                if position[row] > shared {
                    *w = alpha;
                }
            }
        }
        self
    }

    /// Per row, the (weighted) summed log-probability of its completion tokens and their
    /// count, from the per-token losses.
    pub fn sequence_logps(&self, token_losses: &[f32]) -> Vec<(f64, usize)> {
        self.completion_sums(token_losses, &self.token_weight)
    }

    /// Per row, the completion tokens' plain log-probability sum and count (LD-DPO's weights
    /// left out): what perplexity is of.
    pub fn plain_logps(&self, token_losses: &[f32]) -> Vec<(f64, usize)> {
        self.completion_sums(token_losses, &vec![1.0; token_losses.len()])
    }

    fn completion_sums(&self, token_losses: &[f32], weights: &[f64]) -> Vec<(f64, usize)> {
        let mut out = vec![(0.0f64, 0usize); self.rows];
        for (((&row, &completion), &l), &w) in self
            .token_row
            .iter()
            .zip(&self.is_completion)
            .zip(token_losses)
            .zip(weights)
        {
            if completion {
                out[row].0 -= w * f64::from(l);
                out[row].1 += 1;
            }
        }
        out
    }

    /// ORPO's NLL over the chosen rows' trained tokens: its sum and token count.
    pub fn chosen_nll(&self, token_losses: &[f32]) -> (f64, usize) {
        let mut sum = 0.0;
        let mut n = 0;
        for (&row, &l) in self.token_row.iter().zip(token_losses) {
            if row < self.pairs {
                sum += f64::from(l);
                n += 1;
            }
        }
        (sum, n)
    }
}

/// Tokens ORPO's NLL averages over for a pair: the chosen completion, plus the prompt (all
/// but its first token, which nothing predicts) with `prompt_in_chosen`.
pub fn nll_tokens(p: &PreferencePair, prompt_in_chosen: bool) -> usize {
    if prompt_in_chosen {
        p.prompt.len() + p.chosen.len() - 1
    } else {
        p.chosen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_pairs() -> (PreferencePair, PreferencePair) {
        let a = PreferencePair {
            label: None,
            prompt: vec![1, 2],
            chosen: vec![3, 4, 5],
            rejected: vec![6],
        };
        let b = PreferencePair {
            label: None,
            prompt: vec![7],
            chosen: vec![8],
            rejected: vec![9, 10],
        };
        (a, b)
    }

    #[test]
    fn rows_targets_and_sequence_sums() {
        let (a, b) = two_pairs();
        let pb = PairBatch::new(&[&a, &b], 0, false);
        assert_eq!(pb.batch.input_ids.len(), 4);
        assert_eq!(pb.batch.input_ids[0], vec![1, 2, 3, 4, 5]);
        assert_eq!(pb.batch.input_ids[3][..3], [7, 9, 10]);
        // Completion tokens only: 3 + 1 + 1 + 2.
        assert_eq!(pb.token_row, vec![0, 0, 0, 1, 2, 3, 3]);
        assert!(pb.is_completion.iter().all(|&c| c));
        let sums = pb.sequence_logps(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        assert_eq!(sums, vec![(-6.0, 3), (-4.0, 1), (-5.0, 1), (-13.0, 2)]);
        assert_eq!(
            pb.chosen_nll(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]),
            (10.0, 4)
        );
        // ORPO with the prompt in the NLL: the chosen rows' prompt tokens are trained too.
        let pb = PairBatch::new(&[&a, &b], 0, true);
        assert_eq!(pb.token_row, vec![0, 0, 0, 0, 1, 2, 3, 3]);
        assert!(!pb.is_completion[0]);
        assert_eq!(nll_tokens(&a, true), 4);
        assert_eq!(nll_tokens(&a, false), 3);
    }

    /// LD-DPO: tokens past the shorter completion of each pair count alpha times; the
    /// plain sums and the token counts stay whole.
    #[test]
    fn length_weights_cover_each_pairs_tail() {
        let (a, b) = two_pairs();
        let pb = PairBatch::new(&[&a, &b], 0, false).with_length_weight(Some(0.5));
        // Rows: a chosen (3 tokens, shared 1), b chosen (1), a rejected (1), b rejected (2, shared 1).
        assert_eq!(pb.token_weight, vec![1.0, 0.5, 0.5, 1.0, 1.0, 1.0, 0.5]);
        let losses = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        assert_eq!(
            pb.sequence_logps(&losses),
            vec![(-3.5, 3), (-4.0, 1), (-5.0, 1), (-9.5, 2)]
        );
        assert_eq!(
            pb.plain_logps(&losses),
            vec![(-6.0, 3), (-4.0, 1), (-5.0, 1), (-13.0, 2)]
        );
        // ORPO-style prompt tokens in the chosen rows are not completion tokens: untouched.
        let pb = PairBatch::new(&[&a, &b], 0, true).with_length_weight(Some(0.0));
        assert_eq!(
            pb.token_weight,
            vec![1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
        );
    }
}
