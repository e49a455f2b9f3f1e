//! Causal-LM cross-entropy with Hugging Face semantics (position t predicts token t+1, label
//! -100 ignored), summed over trained tokens. Only rows with a target reach the vocabulary
//! projection, and they do so in chunks, so prompt tokens cost nothing there. The same fused
//! path gives per-token losses for the preference objectives.

use burn::tensor::{DType, Tensor, TensorData};

use super::decoder::CausalLm;
use super::kernels::Kernels;

/// Label value that excludes a token from the loss.
pub const IGNORE_INDEX: i64 = -100;

/// Most rows per loss chunk: one chunk's f32 logits stay within 160 MiB (276 rows for Qwen's
/// 151,936-token vocabulary), between 16 and 1024 rows, so the logits of a whole batch are
/// never alive at once (PyTorch keeps all of them, and their gradient). Each chunk streams the
/// whole vocabulary matrix through both GEMMs, so fewer, fuller chunks are faster: 512 rows
/// of Qwen2.5-0.5B as two chunks of 256 took ~1.3 s in those GEMMs, as 220 + 220 + 72 ~1.5 s.
pub fn loss_chunk_rows(vocab: usize) -> usize {
    ((160usize << 20) / (4 * vocab.max(1))).clamp(16, 1024)
}

/// `rows` split into equal chunks of at most `max_chunk` rows: the chunk size to use.
pub fn balanced_chunk(rows: usize, max_chunk: usize) -> usize {
    let max_chunk = max_chunk.max(1);
    rows.div_ceil(rows.div_ceil(max_chunk).max(1)).max(1)
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

    /// The batch row of each trained token, in the order the losses come in.
    pub fn row_of_trained(&self) -> Vec<usize> {
        self.rows
            .iter()
            .enumerate()
            .flat_map(|(b, row)| row.iter().filter(|&&t| t != IGNORE_INDEX).map(move |_| b))
            .collect()
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
        B::cross_entropy_sum(
            rows,
            net.output_weight(),
            &tgt,
            net.logit_chunks(balanced_chunk(n, chunk_rows)),
        ),
        n,
    )
}

/// Each trained token's `-log p(target)` (f32 `[n]`, row by row as
/// [`Targets::row_of_trained`] lists them) through the fused per-row op: what preference
/// objectives sum per sequence. The logits are never kept.
pub fn token_losses<B: Kernels>(
    net: &CausalLm<B>,
    hidden: Tensor<B, 3>,
    targets: &Targets,
    chunk_rows: usize,
) -> Tensor<B, 1> {
    let device = hidden.device();
    let [b, s, d] = hidden.dims();
    let (idx, tgt) = targets.trained();
    let n = idx.len();
    let rows = hidden.reshape([b * s, d]).select(
        0,
        Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(idx, [n]), &device),
    );
    B::cross_entropy_rows(
        rows,
        net.output_weight(),
        &tgt,
        net.logit_chunks(balanced_chunk(n, chunk_rows)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_balanced_and_bounded() {
        assert_eq!(loss_chunk_rows(151_936), 276);
        assert_eq!(loss_chunk_rows(32_000), 1024);
        assert_eq!(balanced_chunk(512, 276), 256);
        assert_eq!(balanced_chunk(512, 512), 512);
        assert_eq!(balanced_chunk(513, 256), 171);
        assert_eq!(balanced_chunk(100, 276), 100);
        assert_eq!(balanced_chunk(0, 276), 1);
        assert_eq!(balanced_chunk(7, 0), 1);
        for rows in 1..600 {
            let c = balanced_chunk(rows, 100);
            assert!(
                c <= 100 && rows.div_ceil(c) == rows.div_ceil(100),
                "{rows}: {c}"
            );
        }
    }
}
