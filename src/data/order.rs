//! Deterministic data order. The order of epoch `e` is a pure function of (seed, epoch), and a
//! replica's share of a global batch a pure function of (batch, rank, world size), so a resumed
//! run or a data-parallel replica can rebuild exactly what it needs from a step counter.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::rng::fnv1a;

/// Row indices of epoch `epoch`: a seeded Fisher-Yates shuffle, or `0..n` without shuffling.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(format!("epoch-{epoch}").as_bytes()));
        order.shuffle(&mut rng);
    }
    order
}

/// A seeded permutation for one-off purposes (validation split, packing order).
pub fn permutation(n: usize, seed: u64, purpose: &str) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(purpose.as_bytes()));
    order.shuffle(&mut rng);
    order
}

/// Consecutive groups of `size` rows (the last may be shorter).
pub fn micro_batches(order: &[usize], size: usize) -> Vec<Vec<usize>> {
    order.chunks(size.max(1)).map(<[usize]>::to_vec).collect()
}

/// The rows of a global batch that replica `rank` of `world` processes: a strided share, so
/// ranks get equal counts (within one) and together cover the batch exactly once.
pub fn shard(batch: &[usize], rank: usize, world: usize) -> Vec<usize> {
    batch
        .iter()
        .copied()
        .skip(rank)
        .step_by(world.max(1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_pure_function_of_seed_and_epoch() {
        assert_eq!(epoch_order(50, 7, 3, true), epoch_order(50, 7, 3, true));
        assert_ne!(epoch_order(50, 7, 3, true), epoch_order(50, 7, 4, true));
        assert_ne!(epoch_order(50, 7, 3, true), epoch_order(50, 8, 3, true));
        let mut sorted = epoch_order(50, 7, 3, true);
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(epoch_order(5, 7, 3, false), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn shards_partition_a_batch() {
        let batch = vec![9, 4, 7, 1, 3];
        let mut all: Vec<usize> = (0..2).flat_map(|r| shard(&batch, r, 2)).collect();
        all.sort_unstable();
        let mut want = batch.clone();
        want.sort_unstable();
        assert_eq!(all, want);
        assert_eq!(shard(&batch, 0, 1), batch);
    }
}
