//! LoRA dropout as a pure function of where an element is: element `j` of token `pos` of
//! example row `row` of a training forward is kept or zeroed by a counter-based hash of
//! `(key, row, pos, j)`, so the backward pass and a recomputed forward (gradient
//! checkpointing) regenerate the exact mask, and no mask or dropped-out input is stored. The
//! row is the batch row's index in the whole micro-batch, so data-parallel replicas, which see
//! strided shards of it, draw the masks one process would.

use crate::rng::{mix64, subkey};

/// Where the dropout masks of one training forward come from: a key for the micro-batch
/// (from the seed, the step and the micro-batch's index) and where this forward's batch rows
/// sit among the micro-batch's: row `i` is row `first_row + i * row_stride` (a data-parallel
/// replica of rank `r` among `w` holds rows `r, r + w, ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropoutSeed {
    pub key: u64,
    pub first_row: usize,
    pub row_stride: usize,
    /// A second block of rows: from batch row `.0` on, row `.0 + i` is the micro-batch's row
    /// `.1 + first_row + i * row_stride` (preference batches: the rejected sequences follow
    /// the chosen ones, each block strided over the replicas).
    pub split: Option<(usize, usize)>,
}

impl DropoutSeed {
    /// Rows `first_row, first_row + row_stride, ...` of a micro-batch.
    pub fn strided(key: u64, first_row: usize, row_stride: usize) -> Self {
        Self {
            key,
            first_row,
            row_stride,
            split: None,
        }
    }
}

impl DropoutSeed {
    /// The stream of projection `projection` (its index in `LINEAR_MODULES`) of layer
    /// `layer`, at probability `p`, for inputs of `seq` positions per row.
    pub fn at(&self, layer: usize, projection: usize, p: f64, seq: usize) -> Dropout {
        Dropout {
            p,
            key: subkey(subkey(self.key, layer as u64), projection as u64),
            first_row: self.first_row,
            row_stride: self.row_stride,
            split: self.split,
            seq,
        }
    }
}

/// Dropout of one projection's input in one training forward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// Probability of zeroing an element.
    pub p: f64,
    /// The stream: derived from the seed, the step, the micro-batch, the layer and the projection.
    pub key: u64,
    /// Index of this input's first batch row in the micro-batch, and the step between rows.
    pub first_row: usize,
    pub row_stride: usize,
    /// See [`DropoutSeed::split`].
    pub split: Option<(usize, usize)>,
    /// Positions per batch row (the input's rows are `batch * seq` tokens).
    pub seq: usize,
}

impl Dropout {
    /// The factor kept elements are multiplied by, `1 / (1 - p)` as PyTorch's.
    pub fn scale(&self) -> f32 {
        (1.0 / (1.0 - self.p)) as f32
    }

    /// 24-bit threshold: an element is zeroed when its 24-bit draw is below it.
    pub fn threshold(&self) -> u32 {
        (self.p * (1u64 << 24) as f64).round() as u32
    }

    /// The key of token row `r` (`batch_row * seq + pos` of this input); element pair `j` of
    /// the row draws from `mix64(row_key ^ j)` (what the GPU kernel hashes too).
    #[inline(always)]
    pub fn row_key(&self, r: usize) -> u64 {
        mix64(self.key ^ self.position_hash(r))
    }

    /// The part of [`Self::row_key`] that depends on where token row `r` sits in the
    /// micro-batch but not on the stream: the same for every layer and projection of a
    /// forward, so the GPU uploads these once per batch and hashes each stream's key in.
    #[inline(always)]
    pub fn position_hash(&self, r: usize) -> u64 {
        let seq = self.seq.max(1);
        let (b, base) = match self.split {
            Some((local, global)) if r / seq >= local => (r / seq - local, global),
            _ => (r / seq, 0),
        };
        let row = (base + self.first_row + b * self.row_stride.max(1)) as u64;
        let pos = (r % seq) as u64;
        mix64((row << 32) ^ pos)
    }

    /// What [`Self::position_hash`] depends on besides the row: two dropouts with equal
    /// layouts draw their masks from the same position hashes.
    pub fn layout(&self) -> (usize, usize, Option<(usize, usize)>, usize) {
        (self.first_row, self.row_stride, self.split, self.seq)
    }

    /// Write `scale * mask * x` of token row `r` (`x` and `out` of the input's width) and
    /// return nothing else: the one place the mask is drawn. Two elements per hash.
    #[inline(always)]
    pub fn apply_row(&self, r: usize, x: &[f32], out: &mut [f32]) {
        let (rk, t, s) = (self.row_key(r), self.threshold(), self.scale());
        for (j, (o, pair)) in out.chunks_mut(2).zip(x.chunks(2)).enumerate() {
            let h = mix64(rk ^ j as u64);
            let draws = [(h as u32) >> 8, ((h >> 32) as u32) >> 8];
            for ((o, &v), d) in o.iter_mut().zip(pair).zip(draws) {
                *o = if d < t { 0.0 } else { v * s };
            }
        }
    }

    /// Uniform draws in `[-1, 1)` for token row `r`, from the same per-coordinate hashes as
    /// the masks (two 24-bit draws per hash).
    pub fn uniform_row(&self, r: usize, out: &mut [f32]) {
        let rk = self.row_key(r);
        let unit = 2.0 / (1u32 << 24) as f32;
        for (j, pair) in out.chunks_mut(2).enumerate() {
            let h = mix64(rk ^ j as u64);
            let draws = [(h as u32) >> 8, ((h >> 32) as u32) >> 8];
            for (o, d) in pair.iter_mut().zip(draws) {
                *o = d as f32 * unit - 1.0;
            }
        }
    }

    /// `scale * mask` for an `[n, width]` input, row-major (for the composed kernels).
    pub fn mask(&self, n: usize, width: usize) -> Vec<f32> {
        let ones = vec![1.0f32; width];
        let mut out = vec![0f32; n * width];
        for (r, row) in out.chunks_mut(width).enumerate() {
            self.apply_row(r, &ones, row);
        }
        out
    }
}

/// NEFTune's noise for a `[batch, seq, hidden]` embedding output: uniform in
/// `[-m, m)` with `m = alpha / sqrt(seq * hidden)` (transformers' `neftune_post_forward_hook`),
/// each element a function of its token's place in the global batch (as dropout masks are), so
/// data-parallel replicas and resumed runs draw the noise a single run draws.
pub fn embedding_noise(
    seed: &DropoutSeed,
    alpha: f64,
    batch: usize,
    seq: usize,
    hidden: usize,
) -> Vec<f32> {
    // A stream no layer uses: layers index from 0 up.
    let stream = seed.at(usize::MAX, 0, 0.0, seq);
    let magnitude = (alpha / ((seq * hidden) as f64).sqrt()) as f32;
    let mut out = vec![0f32; batch * seq * hidden];
    for (r, row) in out.chunks_mut(hidden.max(1)).enumerate() {
        stream.uniform_row(r, row);
        for v in row.iter_mut() {
            *v *= magnitude;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_1_minus_p_and_depends_only_on_coordinates() {
        let d = Dropout {
            p: 0.25,
            key: 42,
            first_row: 0,
            row_stride: 1,
            split: None,
            seq: 100,
        };
        let m = d.mask(400, 300);
        let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / m.len() as f64;
        assert!((kept - 0.75).abs() < 0.005, "kept {kept}");
        assert!(m.iter().all(|&v| v == 0.0 || v == d.scale()));
        // Rows 1 and 3 of the batch seen by replica 1 of 2 (strided shards).
        let shard = Dropout {
            first_row: 1,
            row_stride: 2,
            ..d
        };
        let sm = shard.mask(200, 300);
        assert_eq!(&sm[..100 * 300], &m[100 * 300..200 * 300]);
        assert_eq!(&sm[100 * 300..], &m[300 * 300..]);
        // Two blocks of rows (chosen then rejected of 2 pairs), replica 1 of 2: its chosen
        // row is row 1, its rejected row is row 2 + 1.
        let blocks = Dropout {
            first_row: 1,
            row_stride: 2,
            split: Some((1, 2)),
            ..d
        };
        let bm = blocks.mask(200, 300);
        assert_eq!(&bm[..100 * 300], &m[100 * 300..200 * 300]);
        assert_eq!(&bm[100 * 300..], &m[300 * 300..]);
        // Another key, another mask.
        assert_ne!(Dropout { key: 43, ..d }.mask(4, 300), d.mask(4, 300));
        // The same tokens with more padding positions per row: unchanged where they overlap.
        let longer = Dropout { seq: 120, ..d }.mask(120, 300);
        assert_eq!(&longer[..100 * 300], &m[..100 * 300]);
    }

    /// NEFTune's noise: within +-alpha/sqrt(seq*hidden), uniform (mean 0, variance m^2/3),
    /// and a replica's rows carry the noise of the same rows in the whole batch.
    #[test]
    fn embedding_noise_is_bounded_uniform_and_follows_rows() {
        let seed = DropoutSeed::strided(7, 0, 1);
        let (batch, seq, hidden) = (4, 50, 64);
        let n = embedding_noise(&seed, 5.0, batch, seq, hidden);
        let m = (5.0 / ((seq * hidden) as f64).sqrt()) as f32;
        assert!(n.iter().all(|v| v.abs() <= m), "bound {m}");
        let mean = n.iter().map(|&v| v as f64).sum::<f64>() / n.len() as f64;
        let var = n.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n.len() as f64;
        let m2 = (m as f64).powi(2);
        assert!(mean.abs() < 0.02 * m as f64, "mean {mean}");
        assert!(
            (var / (m2 / 3.0) - 1.0).abs() < 0.03,
            "variance {var} vs {}",
            m2 / 3.0
        );
        // Replica 1 of 2 holds rows 1 and 3.
        let shard = embedding_noise(&DropoutSeed::strided(7, 1, 2), 5.0, 2, seq, hidden);
        let row = seq * hidden;
        assert_eq!(&shard[..row], &n[row..2 * row]);
        assert_eq!(&shard[row..], &n[3 * row..]);
        assert_ne!(
            embedding_noise(&DropoutSeed::strided(8, 0, 1), 5.0, 1, seq, hidden),
            n[..row]
        );
    }
}
