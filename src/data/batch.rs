//! Rows of token ids ready for the model (one example, or several packed), and padded
//! batches of them with shifted targets.

use crate::model::HostBatch;
use crate::model::inputs::PAD_SEGMENT;
use crate::model::loss::{IGNORE_INDEX, Targets};

/// A tokenized example: ids and per-token labels (`-100` where not trained).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
}

impl TokenizedExample {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Tokens that count towards the loss after the causal shift.
    pub fn trained_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }
}

/// One model row: one or more examples back to back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PackedRow {
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub positions: Vec<i64>,
    pub segments: Vec<i32>,
}

impl PackedRow {
    pub fn single(example: &TokenizedExample) -> Self {
        let mut row = PackedRow::default();
        row.push(example);
        row
    }

    /// Append an example as a new segment; its positions restart at 0.
    pub fn push(&mut self, example: &TokenizedExample) {
        let segment = self.segments.last().map_or(0, |s| s + 1);
        self.ids.extend_from_slice(&example.ids);
        self.labels.extend_from_slice(&example.labels);
        self.positions.extend(0..example.ids.len() as i64);
        self.segments
            .extend(std::iter::repeat_n(segment, example.ids.len()));
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn examples(&self) -> usize {
        self.segments.last().map_or(0, |&s| s as usize + 1)
    }
}

/// Right-pad `rows` to the longest one. Padding is excluded by segment (the attention mask)
/// and by target, never by token id, so `pad_id` may equal EOS.
pub fn collate(rows: &[&PackedRow], pad_id: u32) -> (HostBatch, Targets) {
    let len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut batch = HostBatch {
        input_ids: Vec::with_capacity(rows.len()),
        positions: Vec::with_capacity(rows.len()),
        segments: Vec::with_capacity(rows.len()),
    };
    let mut labels = Vec::with_capacity(rows.len());
    for row in rows {
        let pad = len - row.len();
        let mut ids = row.ids.clone();
        ids.extend(std::iter::repeat_n(pad_id, pad));
        let mut pos = row.positions.clone();
        pos.extend((0..pad as i64).map(|i| row.positions.last().map_or(0, |p| p + 1) + i));
        let mut seg = row.segments.clone();
        seg.extend(std::iter::repeat_n(PAD_SEGMENT, pad));
        let mut lab = row.labels.clone();
        lab.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
        batch.input_ids.push(ids);
        batch.positions.push(pos);
        batch.segments.push(seg);
        labels.push(lab);
    }
    let targets = Targets::shifted(&labels, &batch.segments);
    (batch, targets)
}
