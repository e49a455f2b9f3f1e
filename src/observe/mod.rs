//! Watching a run: the metrics log, TensorBoard event files, progress display and loss plot,
//! and sizes written for people.

pub mod metrics;
pub mod observer;
pub mod plot;
pub mod progress;
pub mod tensorboard;

/// 1536 -> "1.5 KiB", in binary units.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
