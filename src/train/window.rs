//! Which items an optimizer step takes: the micro-batches of its window in the epoch's order,
//! and this replica's share of each (data parallel takes strided shards, so the replicas
//! together see what one process would).

use super::preference::{PairWindow, PreferenceObjective};
use super::setup::RunSetup;
use super::sync::GradientSync;
use crate::data::order::{micro_batches, shard};

/// The item indices of each micro-batch of step window `window` in epoch order `order` (the
/// whole micro-batches, every replica's share).
pub fn window_micro_batches(order: &[usize], window: usize, setup: &RunSetup) -> Vec<Vec<usize>> {
    let t = &setup.recipe().train;
    let all = micro_batches(order, t.micro_batch_size);
    let start = window * t.grad_accum;
    let end = (start + t.grad_accum).min(all.len());
    all[start.min(end)..end].to_vec()
}

/// This replica's items of each micro-batch.
pub fn shards<'a, T>(
    items: &'a [T],
    global: &[Vec<usize>],
    sync: &dyn GradientSync<impl burn::tensor::backend::Backend>,
) -> Vec<Vec<&'a T>> {
    global
        .iter()
        .map(|mb| {
            shard(mb, sync.rank(), sync.world_size())
                .into_iter()
                .map(|i| &items[i])
                .collect()
        })
        .collect()
}

/// A step's pairs with the window's totals the preference step normalises by.
pub fn pair_window<'a>(
    setup: &'a RunSetup,
    objective: &PreferenceObjective,
    global: &[Vec<usize>],
    sync: &dyn GradientSync<impl burn::tensor::backend::Backend>,
) -> PairWindow<'a> {
    let pairs = &setup.data.train_pairs;
    let on_prompt = objective.prompt_in_chosen();
    PairWindow {
        micro_batches: shards(pairs, global, sync),
        whole: global
            .iter()
            .map(|mb| mb.iter().map(|&i| &pairs[i]).collect())
            .collect(),
        global_sizes: global.iter().map(Vec::len).collect(),
        pairs: global.iter().map(Vec::len).sum(),
        nll_tokens: global
            .iter()
            .flatten()
            .map(|&i| super::preference::batch::nll_tokens(&pairs[i], on_prompt))
            .sum(),
    }
}
