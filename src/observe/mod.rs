//! Watching a run: the metrics log, TensorBoard event files, progress display and loss plot.

pub mod metrics;
