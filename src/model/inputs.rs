//! Host-side batches and the per-forward attention context built from them.
//!
//! A row may hold several packed examples: `segments` gives each token's example index
//! (`-1` for padding). A token attends to earlier tokens of its own example only, and positions
//! restart at 0 for every example, so packed rows compute exactly what the examples would
//! compute alone.

use burn::tensor::{DType, Int, Tensor, TensorData, backend::Backend};

use super::config::SlidingWindow;
use super::decoder::{AttentionContext, SlidingContext};
use super::kernels::{AttentionMask, ScoreShape};
use super::rope::RopeFrequencies;

pub use super::kernels::mask::PAD_SEGMENT;

/// A batch of equal-length rows, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    pub input_ids: Vec<Vec<u32>>,
    pub positions: Vec<Vec<i64>>,
    pub segments: Vec<Vec<i32>>,
}

impl HostBatch {
    /// Rows of possibly different lengths, each a single example, right-padded with `pad_id`.
    pub fn from_rows(rows: &[Vec<u32>], pad_id: u32) -> Self {
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut batch = HostBatch {
            input_ids: Vec::with_capacity(rows.len()),
            positions: Vec::with_capacity(rows.len()),
            segments: Vec::with_capacity(rows.len()),
        };
        for row in rows {
            let n = row.len();
            let mut ids = row.clone();
            ids.resize(len, pad_id);
            batch.input_ids.push(ids);
            batch.positions.push((0..len as i64).collect());
            batch.segments.push(
                (0..len)
                    .map(|t| if t < n { 0 } else { PAD_SEGMENT })
                    .collect(),
            );
        }
        batch
    }

    pub fn batch_size(&self) -> usize {
        self.input_ids.len()
    }

    pub fn seq_len(&self) -> usize {
        self.input_ids.first().map_or(0, Vec::len)
    }

    pub fn ids_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        let flat: Vec<i32> = self.input_ids.iter().flatten().map(|&i| i as i32).collect();
        Tensor::from_data(
            TensorData::new(flat, [self.batch_size(), self.seq_len()]),
            device,
        )
    }

    /// Rotary tables and the packed/padded causal mask for this batch (and its windowed form
    /// where some layers slide).
    pub fn context<B: Backend>(
        &self,
        rope: &RopeFrequencies,
        window: Option<&SlidingWindow>,
        scores: ScoreShape,
        dtype: DType,
        device: &B::Device,
    ) -> AttentionContext<B> {
        let (cos, sin) = rope.tables::<B>(&self.positions, device);
        let mask = AttentionMask::new(&self.segments, self.seq_len(), true).with_scores(scores);
        AttentionContext {
            cos: cast(cos, dtype),
            sin: cast(sin, dtype),
            sliding: sliding(&mask, window, rope, &self.positions, dtype, device),
            mask,
        }
    }
}

/// Context for `seq` new tokens after `past` cached ones (single-example rows, no padding).
#[allow(clippy::too_many_arguments)]
pub fn incremental_context<B: Backend>(
    rope: &RopeFrequencies,
    window: Option<&SlidingWindow>,
    scores: ScoreShape,
    batch: usize,
    past: usize,
    seq: usize,
    dtype: DType,
    device: &B::Device,
) -> AttentionContext<B> {
    let positions: Vec<Vec<i64>> = (0..batch)
        .map(|_| (past as i64..(past + seq) as i64).collect())
        .collect();
    let (cos, sin) = rope.tables::<B>(&positions, device);
    let mask = AttentionMask::incremental(batch, past, seq).with_scores(scores);
    AttentionContext {
        cos: cast(cos, dtype),
        sin: cast(sin, dtype),
        sliding: sliding(&mask, window, rope, &positions, dtype, device),
        mask,
    }
}

/// What the sliding layers attend with: their mask, only worth building when the window hides
/// some key, and their own rotary tables where the model has them.
fn sliding<B: Backend>(
    mask: &AttentionMask,
    window: Option<&SlidingWindow>,
    rope: &RopeFrequencies,
    positions: &[Vec<i64>],
    dtype: DType,
    device: &B::Device,
) -> Option<SlidingContext<B>> {
    let window = window?;
    let keys = (window.width < mask.keys()).then(|| mask.windowed(window.width));
    let tables = rope.sliding().map(|r| {
        let (cos, sin) = r.tables::<B>(positions, device);
        (cast(cos, dtype), cast(sin, dtype))
    });
    (keys.is_some() || tables.is_some()).then(|| SlidingContext {
        layers: window.layers.clone(),
        mask: keys,
        rope: tables,
    })
}

fn cast<B: Backend>(t: Tensor<B, 4>, dtype: DType) -> Tensor<B, 4> {
    if dtype == DType::F32 {
        t
    } else {
        t.cast(dtype)
    }
}
