//! Causal-LM cross-entropy with Hugging Face semantics (position t predicts token t+1, label
//! -100 ignored), summed over trained tokens. Only rows with a target reach the vocabulary
//! projection, and they do so in chunks, so prompt tokens cost nothing there.

use burn::tensor::{DType, Tensor, TensorData};

use super::decoder::CausalLm;
use super::kernels::Kernels;

/// Label value that excludes a token from the loss.
pub const IGNORE_INDEX: i64 = -100;

/// Rows of the vocabulary projection computed at once for small vocabularies.
pub const DEFAULT_CHUNK_ROWS: usize = 1024;

/// Rows per loss chunk: one chunk's f32 logits stay near 128 MiB (about 220 rows for Qwen's
/// 151,936-token vocabulary), between 16 and 256 rows, so the logits of a whole batch are never
/// alive at once (PyTorch keeps all of them, and their gradient).
pub fn loss_chunk_rows(vocab: usize) -> usize {
    ((128usize << 20) / (4 * vocab.max(1))).clamp(16, 256)
}

/// Targets already shifted: `targets[b][t]` is the token position t must predict, or
/// [`IGNORE_INDEX`].
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    pub rows: Vec<Vec<i64>>,
}

impl Targets {
    /// HF shift of per-token labels: `targets[t] = labels[t + 1]`, last position ignored.
    /// `segments` (packed examples) stop a prediction across an example boundary.
    pub fn shifted(labels: &[Vec<i64>], segments: &[Vec<i32>]) -> Self {
        let rows = labels
            .iter()
            .zip(segments)
            .map(|(l, seg)| {
                (0..l.len())
                    .map(|t| {
                        if t + 1 < l.len() && seg[t] == seg[t + 1] {
                            l[t + 1]
                        } else {
                            IGNORE_INDEX
                        }
                    })
                    .collect()
            })
            .collect();
        Self { rows }
    }

    /// Number of tokens that count towards the loss.
    pub fn count(&self) -> usize {
        self.rows
            .iter()
            .flatten()
            .filter(|&&t| t != IGNORE_INDEX)
            .count()
    }

    /// Flat row indices (into `[batch * seq]`) and target ids of trained tokens.
    fn trained(&self) -> (Vec<i32>, Vec<i32>) {
        let mut idx = Vec::new();
        let mut tgt = Vec::new();
        let seq = self.rows.first().map_or(0, Vec::len);
        for (b, row) in self.rows.iter().enumerate() {
            for (t, &y) in row.iter().enumerate() {
                if y != IGNORE_INDEX {
                    idx.push((b * seq + t) as i32);
                    tgt.push(y as i32);
                }
            }
        }
        (idx, tgt)
    }
}

/// Sum of token cross-entropies over trained tokens, as a 1-element f32 tensor, and the number
/// of trained tokens. `hidden` is the final hidden state `[batch, seq, hidden]`.
pub fn cross_entropy_sum<B: Kernels>(
    net: &CausalLm<B>,
    hidden: Tensor<B, 3>,
    targets: &Targets,
    chunk_rows: usize,
) -> (Tensor<B, 1>, usize) {
    let device = hidden.device();
    let [b, s, d] = hidden.dims();
    let (idx, tgt) = targets.trained();
    let n = idx.len();
    if n == 0 {
        // Keep the graph connected so backward() still works on an all-masked batch.
        return (hidden.sum().mul_scalar(0.0).cast(DType::F32), 0);
    }
    let rows = hidden.reshape([b * s, d]).select(
        0,
        Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(idx, [n]), &device),
    );
    (
        B::cross_entropy_sum(rows, net.output_weight(), &tgt, chunk_rows),
        n,
    )
}
