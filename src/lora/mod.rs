//! LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") in PEFT's
//! conventions: the adapted layer, target selection, PEFT adapter files and merging.

pub mod attach;
pub mod error;
pub mod layer;
pub mod merge;
pub mod peft;
pub mod settings;

pub use error::LoraError;
pub use settings::{InitKind, LoraSettings, TargetModule, TargetSpec};
