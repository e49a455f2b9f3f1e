//! Encoding f32 rows into a ggml type: plain f32/f16/bf16, or the block quantizers of
//! [`legacy`] (q8_0, q4_0, q5_0) and [`k_quants`] (q4_K, q6_K). Rows are split over the rayon
//! pool in chunks; blocks never span rows, so the bytes do not depend on the thread count.

pub mod k_quants;
pub mod legacy;

use rayon::prelude::*;

use super::types::GgmlType;

/// Values per parallel work item: large enough that scheduling is noise, small enough that a
/// 4096-wide tensor still spreads over many threads.
const CHUNK_VALUES: usize = 1 << 16;

/// The bytes of `values` (rows of `cols`) stored as `ty`. `cols` must be a multiple of the
/// type's block size (the type policy guarantees it).
pub fn encode(values: &[f32], cols: usize, ty: GgmlType) -> Vec<u8> {
    let (block, block_bytes) = ty.block();
    debug_assert!(cols.is_multiple_of(block) && values.len().is_multiple_of(cols.max(1)));
    match ty {
        GgmlType::F32 => blocks(values, 1, 4, |x, o| o.copy_from_slice(&x[0].to_le_bytes())),
        GgmlType::F16 => blocks(values, 1, 2, |x, o| {
            o.copy_from_slice(&half::f16::from_f32(x[0]).to_le_bytes())
        }),
        // Round to nearest even, as ggml_compute_fp32_to_bf16 and torch do.
        GgmlType::BF16 => blocks(values, 1, 2, |x, o| {
            o.copy_from_slice(&half::bf16::from_f32(x[0]).to_le_bytes())
        }),
        GgmlType::Q8_0 => blocks(values, block, block_bytes, legacy::q8_0_block),
        GgmlType::Q4_0 => blocks(values, block, block_bytes, legacy::q4_0_block),
        GgmlType::Q5_0 => blocks(values, block, block_bytes, legacy::q5_0_block),
        GgmlType::Q4K => blocks(values, block, block_bytes, k_quants::q4_k_block),
        GgmlType::Q6K => blocks(values, block, block_bytes, k_quants::q6_k_block),
    }
}

/// `f` over every block of `block` values into `block_bytes` bytes, in parallel chunks
/// (generic, so each type's loop is compiled with its block function inlined).
fn blocks<F>(values: &[f32], block: usize, block_bytes: usize, f: F) -> Vec<u8>
where
    F: Fn(&[f32], &mut [u8]) + Sync,
{
    let mut out = vec![0u8; values.len() / block * block_bytes];
    let blocks_per_chunk = (CHUNK_VALUES / block).max(1);
    out.par_chunks_mut(blocks_per_chunk * block_bytes)
        .zip(values.par_chunks(blocks_per_chunk * block))
        .for_each(|(o, x)| {
            for (ob, xb) in o.chunks_exact_mut(block_bytes).zip(x.chunks_exact(block)) {
                f(xb, ob);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_block_layout() {
        let x: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin()).collect();
        for (ty, bytes) in [
            (GgmlType::F32, 2048),
            (GgmlType::F16, 1024),
            (GgmlType::BF16, 1024),
            (GgmlType::Q8_0, 16 * 34),
            (GgmlType::Q4_0, 16 * 18),
            (GgmlType::Q5_0, 16 * 22),
            (GgmlType::Q4K, 2 * 144),
            (GgmlType::Q6K, 2 * 210),
        ] {
            assert_eq!(encode(&x, 256, ty).len(), bytes, "{ty}");
        }
    }
}
