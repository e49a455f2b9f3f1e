//! Which keys each query of an attention sees, as structure rather than a dense `[s, t]`
//! matrix: a query sees the keys of its own example (a packed row holds several, each a
//! contiguous run of one segment id), causally, never padding. Each query's keys are therefore
//! one interval `lo..hi`, which is all a blockwise kernel needs to decide which (query block,
//! key block) tiles to visit: the causal mask halves the work, packed examples skip the tiles
//! between them.
//!
//! A query that sees no key (a padding position) attends uniformly to every key, as
//! transformers' additive min-value mask makes it; its output never reaches a trained token.
//!
//! The mask also carries how the visible scores are shaped before the softmax
//! ([`ScoreShape`]): every layer of a model shares it, and it travels wherever the mask goes.

use std::ops::Range;
use std::sync::Arc;

use burn::tensor::{Bool, Tensor, TensorData, backend::Backend};

/// Segment id of padding positions.
pub const PAD_SEGMENT: i32 = -1;

/// How a query-key dot product becomes a softmax input: `q.k * scale`, then, with a cap,
/// `cap * tanh(score / cap)` (Gemma 2's `attn_logit_softcapping`), the mask applied after.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ScoreShape {
    /// The factor on `q.k`; `None`: `head_dim^-1/2`.
    pub scale: Option<f32>,
    pub softcap: Option<f32>,
}

impl ScoreShape {
    /// The factor on `q.k` for heads of `head_dim`.
    pub fn scale(&self, head_dim: usize) -> f32 {
        self.scale.unwrap_or(1.0 / (head_dim as f32).sqrt())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMask {
    /// Per batch row, per query: the visible keys `lo..hi` (`lo == hi`: none).
    ranges: Arc<Vec<Vec<(u32, u32)>>>,
    keys: usize,
    scores: ScoreShape,
}

impl AttentionMask {
    /// From the segment id of every key position of every batch row; the queries are the last
    /// `queries` positions (all of them in training; the new tokens after a KV cache when
    /// generating) and share the segments of those positions.
    pub fn new(key_segments: &[Vec<i32>], queries: usize, causal: bool) -> Self {
        let keys = key_segments.first().map_or(0, Vec::len);
        let ranges = key_segments
            .iter()
            .map(|segs| {
                assert_eq!(segs.len(), keys, "rows of one batch have one length");
                // Start and end of the run each position belongs to.
                let mut start = vec![0usize; keys];
                for j in 1..keys {
                    start[j] = if segs[j] == segs[j - 1] {
                        start[j - 1]
                    } else {
                        j
                    };
                }
                let mut end = vec![keys; keys];
                for j in (0..keys.saturating_sub(1)).rev() {
                    end[j] = if segs[j] == segs[j + 1] {
                        end[j + 1]
                    } else {
                        j + 1
                    };
                }
                (keys - queries..keys)
                    .map(|pos| {
                        if segs[pos] == PAD_SEGMENT {
                            (0, 0)
                        } else if causal {
                            (start[pos] as u32, pos as u32 + 1)
                        } else {
                            (start[pos] as u32, end[pos] as u32)
                        }
                    })
                    .collect()
            })
            .collect();
        Self {
            ranges: Arc::new(ranges),
            keys,
            scores: ScoreShape::default(),
        }
    }

    /// The same mask with the scores shaped by `scores`.
    pub fn with_scores(self, scores: ScoreShape) -> Self {
        Self { scores, ..self }
    }

    pub fn scores(&self) -> ScoreShape {
        self.scores
    }

    /// Causal attention of `queries` new tokens after `past` cached ones, one example per row.
    pub fn incremental(batch: usize, past: usize, queries: usize) -> Self {
        Self::new(&vec![vec![0; past + queries]; batch], queries, true)
    }

    /// The same causal mask narrowed to a sliding window of `width` keys: query index `i`
    /// keeps keys `j` with `i - width < j` (transformers' `sliding_window_overlay`). A packed
    /// example starts at its own first key, so the window never reaches into the one before.
    pub fn windowed(&self, width: usize) -> Self {
        let queries = self.queries();
        let first = self.keys - queries;
        let ranges = self
            .ranges
            .iter()
            .map(|row| {
                row.iter()
                    .enumerate()
                    .map(|(i, &(lo, hi))| {
                        let floor = (first + i + 1).saturating_sub(width) as u32;
                        if lo == hi {
                            (lo, hi)
                        } else {
                            (lo.max(floor), hi)
                        }
                    })
                    .collect()
            })
            .collect();
        Self {
            ranges: Arc::new(ranges),
            keys: self.keys,
            scores: self.scores,
        }
    }

    pub fn batch(&self) -> usize {
        self.ranges.len()
    }

    pub fn queries(&self) -> usize {
        self.ranges.first().map_or(0, Vec::len)
    }

    pub fn keys(&self) -> usize {
        self.keys
    }

    /// The keys query `i` of batch row `b` sees (empty for one that sees none).
    pub fn range(&self, b: usize, i: usize) -> Range<usize> {
        let (lo, hi) = self.ranges[b][i];
        lo as usize..hi as usize
    }

    /// Whether query `i` of row `b` sees no key (and so attends uniformly to all).
    pub fn is_empty_row(&self, b: usize, i: usize) -> bool {
        let (lo, hi) = self.ranges[b][i];
        lo == hi
    }

    /// The keys any query of `rows` of batch row `b` sees (queries that see none left out),
    /// or `None` when none sees any: the part of a query block's tiles worth visiting.
    pub fn block_keys(&self, b: usize, rows: Range<usize>) -> Option<Range<usize>> {
        self.ranges[b][rows]
            .iter()
            .filter(|(lo, hi)| lo < hi)
            .fold(None, |acc: Option<(u32, u32)>, &(lo, hi)| {
                Some(acc.map_or((lo, hi), |(a, z)| (a.min(lo), z.max(hi))))
            })
            .map(|(lo, hi)| lo as usize..hi as usize)
    }

    /// [`Self::block_keys`] over every batch row (for kernels that batch the rows together).
    pub fn block_keys_all(&self, rows: Range<usize>) -> Option<Range<usize>> {
        (0..self.batch())
            .filter_map(|b| self.block_keys(b, rows.clone()))
            .reduce(|a, b| a.start.min(b.start)..a.end.max(b.end))
    }

    /// Whether any query of `rows` (over every batch row) sees no key.
    pub fn any_empty(&self, rows: Range<usize>) -> bool {
        self.ranges
            .iter()
            .any(|r| r[rows.clone()].iter().any(|(lo, hi)| lo == hi))
    }

    /// `true` where query `i` may NOT see key `j`, for the queries `rows` and keys `keys`:
    /// `[batch, rows, keys]` row-major. Queries that see no key are hidden everywhere here (the
    /// kernels treat them apart).
    pub fn hidden(&self, rows: Range<usize>, keys: Range<usize>) -> Vec<bool> {
        let mut out = Vec::with_capacity(self.batch() * rows.len() * keys.len());
        for r in self.ranges.iter() {
            for &(lo, hi) in &r[rows.clone()] {
                out.extend(keys.clone().map(|j| (j as u32) < lo || (j as u32) >= hi));
            }
        }
        out
    }

    /// The dense mask `[batch, 1, queries, keys]` (`true` = hidden), queries that see nothing
    /// included: the reference the blockwise kernels are tested against.
    pub fn dense<B: Backend>(&self, device: &B::Device) -> Tensor<B, 4, Bool> {
        let (b, s, t) = (self.batch(), self.queries(), self.keys);
        let data = self.hidden(0..s, 0..t);
        Tensor::from_data(TensorData::new(data, [b, 1, s, t]), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_packed_padded_and_incremental_rows() {
        // Two packed examples (3 + 2 tokens) and 2 padding positions.
        let m = AttentionMask::new(&[vec![0, 0, 0, 1, 1, -1, -1]], 7, true);
        let r: Vec<_> = (0..7).map(|i| m.range(0, i)).collect();
        assert_eq!(r, vec![0..1, 0..2, 0..3, 3..4, 3..5, 0..0, 0..0]);
        assert!(m.is_empty_row(0, 6) && !m.is_empty_row(0, 4));
        assert_eq!(m.block_keys(0, 3..7), Some(3..5));
        assert_eq!(m.block_keys(0, 5..7), None);
        assert!(m.any_empty(4..6) && !m.any_empty(0..5));
        let nc = AttentionMask::new(&[vec![0, 0, 1]], 3, false);
        assert_eq!(nc.range(0, 0), 0..2);
        let inc = AttentionMask::incremental(1, 4, 2);
        assert_eq!((inc.range(0, 0), inc.range(0, 1)), (0..5, 0..6));
        assert_eq!(
            m.hidden(3..5, 2..6),
            vec![true, false, true, true, true, false, false, true]
        );
        // A window of 2: each query sees itself and the key before, within its example.
        let w = m.windowed(2);
        let r: Vec<_> = (0..7).map(|i| w.range(0, i)).collect();
        assert_eq!(r, vec![0..1, 0..2, 1..3, 3..4, 3..5, 0..0, 0..0]);
        let inc = AttentionMask::incremental(1, 4, 2).windowed(3);
        assert_eq!((inc.range(0, 0), inc.range(0, 1)), (2..5, 3..6));
    }
}
