//! LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") in PEFT's
//! conventions: the adapted layer, DoRA's magnitude-and-direction variant, target selection,
//! PEFT adapter files and merging.

pub mod attach;
pub mod dora;
pub mod error;
pub mod layer;
pub mod merge;
pub mod peft;
pub mod settings;

pub use error::LoraError;
pub use settings::{InitKind, LoraSettings, TargetModule, TargetSpec};

use std::path::Path;

use crate::model::Model;

/// Read the adapter in `dir`, check it against `model`, and attach it. Returns its modules.
pub fn apply_adapter<B: crate::model::kernels::Kernels>(
    model: &mut Model<B>,
    dir: &Path,
    trainable: bool,
) -> Result<(peft::AdapterFiles, Vec<TargetModule>), LoraError> {
    let adapter = peft::read_adapter(dir, &model.config)?;
    let targets = adapter.settings.resolve(&model.config)?;
    let device = model.device.clone();
    attach::attach_files(
        &mut model.net,
        &adapter,
        &targets,
        adapter.settings.dropout,
        trainable,
        &device,
    );
    Ok((adapter, targets))
}
