//! Token-mean cross-entropy and perplexity of a model over a set of rows (no dropout, no
//! gradients): the validation pass of training and the `eval` command.

use crate::model::ModelBackend;
use serde::Serialize;

use crate::data::{PackedRow, collate};
use crate::model::Model;
use crate::model::loss::{cross_entropy_sum, loss_chunk_rows};

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalResult {
    /// Mean cross-entropy per trained token (nats).
    pub loss: f64,
    pub perplexity: f64,
    /// Tokens the mean is taken over.
    pub tokens: usize,
}

/// Evaluate `rows` in batches of `batch_size`; the mean is over all trained tokens of all rows
/// (not a mean of per-batch means).
pub fn evaluate<B: ModelBackend>(
    model: &Model<B>,
    rows: &[PackedRow],
    batch_size: usize,
    pad_id: u32,
) -> EvalResult {
    let mut sum = 0.0f64;
    let mut tokens = 0usize;
    for chunk in rows.chunks(batch_size.max(1)) {
        let refs: Vec<&PackedRow> = chunk.iter().collect();
        let (batch, targets) = collate(&refs, pad_id);
        if targets.count() == 0 {
            continue;
        }
        let hidden = model.hidden_states(&batch, None);
        let chunk = loss_chunk_rows(model.config.vocab_size);
        let (loss, n) = cross_entropy_sum(&model.net, hidden, &targets, chunk);
        sum += loss.into_scalar().to_f64_lossy();
        tokens += n;
    }
    let loss = if tokens == 0 {
        f64::NAN
    } else {
        sum / tokens as f64
    };
    EvalResult {
        loss,
        perplexity: loss.exp(),
        tokens,
    }
}

trait ToF64 {
    fn to_f64_lossy(self) -> f64;
}

impl<E: burn::tensor::ElementConversion> ToF64 for E {
    fn to_f64_lossy(self) -> f64 {
        self.elem::<f64>()
    }
}
