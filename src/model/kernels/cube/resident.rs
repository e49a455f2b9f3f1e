//! Device copies of the small host-side tables one batch's forward and backward share: the
//! attention mask's key ranges and the dropout's per-token position hashes. Every layer's
//! attention (forward, backward and any recomputation) and every projection's dropout would
//! otherwise build and upload the same table again: for a 24-layer model about 100 mask
//! tensors and 500 dropout tables per step, each a host-to-device copy and an allocation
//! between kernel launches. The tables are uploaded once per batch and device and reused.
//!
//! The cache is keyed by the table's content (an
//! [`AttentionMask`](crate::model::kernels::AttentionMask) compares its ranges, with a pointer
//! check first as it shares them behind an `Arc`), never by an address, so a stale entry can
//! never be returned for another batch; it holds the few most recent tables.

use std::any::Any;
use std::sync::Mutex;

/// Tables kept: per device, a training step's mask and dropout table and an evaluation's,
/// for up to 8 data-parallel devices in one process. Fewer would make such a run evict its
/// own tables every layer (back to one upload per call); each table is a few KB.
const CAPACITY: usize = 32;

type Entry = Box<dyn Any + Send>;

static TABLES: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The value stored for `key` on `device`, made by `make` (and kept) when there is none.
pub(super) fn cached<K, D, V>(key: &K, device: &D, make: impl FnOnce() -> V) -> V
where
    K: PartialEq + Clone + Send + 'static,
    D: PartialEq + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    {
        // A panic elsewhere while the lock was held leaves the list itself intact.
        let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
        let hit = tables.iter().position(|e| {
            e.downcast_ref::<(K, D, V)>()
                .is_some_and(|(k, d, _)| k == key && d == device)
        });
        if let Some(i) = hit {
            // Most recently used last, so eviction takes the oldest.
            let entry = tables.remove(i);
            let value = entry.downcast_ref::<(K, D, V)>().map(|(_, _, v)| v.clone());
            tables.push(entry);
            if let Some(value) = value {
                return value;
            }
        }
    }
    // Made outside the lock: uploading may wait on the device.
    let value = make();
    let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    if tables.len() >= CAPACITY {
        tables.remove(0);
    }
    tables.push(Box::new((key.clone(), device.clone(), value.clone())));
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Keys of a type no other test uses, so tests running in parallel share no entry.
    #[derive(Clone, PartialEq)]
    struct Key(u32);

    #[test]
    fn made_once_per_key_and_device_and_the_oldest_goes_first() {
        let made = Cell::new(0);
        let get = |k: u32, device: u8| {
            cached(&Key(k), &device, || {
                made.set(made.get() + 1);
                format!("{k}@{device}")
            })
        };
        assert_eq!(get(1, 0), "1@0");
        assert_eq!(get(1, 0), "1@0");
        assert_eq!(made.get(), 1, "the second call reuses the first's table");
        assert_eq!(get(1, 1), "1@1", "another device gets its own copy");
        assert_eq!(get(2, 0), "2@0");
        assert_eq!(made.get(), 3);
        // Key 1 on device 0 used again, then CAPACITY new tables: the least recently used go.
        get(1, 0);
        for k in 10..10 + CAPACITY as u32 - 1 {
            get(k, 0);
        }
        let before = made.get();
        get(1, 0);
        assert_eq!(
            made.get(),
            before,
            "still cached: it was used most recently"
        );
        get(2, 0);
        assert_eq!(made.get(), before + 1, "evicted: the oldest entry");
    }
}
