//! Packing: several examples per row, in order, as long as they fit in `seq_len`. Each keeps its
//! own positions (restarting at 0) and attends only to itself, so a packed row computes exactly
//! what its examples compute alone.

use super::batch::{PackedRow, TokenizedExample};

pub fn pack(examples: &[TokenizedExample], seq_len: usize) -> Vec<PackedRow> {
    let mut rows = Vec::new();
    let mut current = PackedRow::default();
    for ex in examples {
        if !current.is_empty() && current.len() + ex.len() > seq_len {
            rows.push(std::mem::take(&mut current));
        }
        current.push(ex);
    }
    if !current.is_empty() {
        rows.push(current);
    }
    rows
}

/// One example per row.
pub fn unpacked(examples: &[TokenizedExample]) -> Vec<PackedRow> {
    examples.iter().map(PackedRow::single).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(n: usize) -> TokenizedExample {
        TokenizedExample {
            ids: (0..n as u32).collect(),
            labels: (0..n as i64).collect(),
        }
    }

    #[test]
    fn packs_in_order_without_splitting_examples() {
        let rows = pack(&[ex(3), ex(4), ex(2), ex(6), ex(1)], 8);
        let lens: Vec<usize> = rows.iter().map(PackedRow::len).collect();
        assert_eq!(lens, vec![7, 8, 1]);
        assert_eq!(rows[0].positions, vec![0, 1, 2, 0, 1, 2, 3]);
        assert_eq!(rows[0].segments, vec![0, 0, 0, 1, 1, 1, 1]);
        assert_eq!(rows[1].examples(), 2);
    }
}
