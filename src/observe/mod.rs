//! Watching a run: the metrics log, TensorBoard event files, progress display and loss plot.

pub mod metrics;
pub mod observer;
pub mod plot;
pub mod progress;
pub mod tensorboard;
