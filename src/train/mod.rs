//! Training: the loop, optimizer, schedules, checkpoints and resume, and evaluation.

pub mod evaluate;
