//! LoRA errors: bad settings, adapters we cannot apply faithfully, merge failures.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LoraError {
    #[error(
        "lora.targets: unknown module '{name}'; this model's linear modules are {available} (or use all-linear)"
    )]
    UnknownTarget { name: String, available: String },
    #[error(
        "lora.targets matches no module of this model (pattern '{pattern}'); linear modules are {available}"
    )]
    NoTargets { pattern: String, available: String },
    #[error("lora.{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("cannot read adapter {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    BadAdapter { path: PathBuf, message: String },
    #[error(
        "{path}: adapter field '{field}' = {value} cannot be applied faithfully by burnish: {why}"
    )]
    Unsupported {
        path: PathBuf,
        field: String,
        value: String,
        why: String,
    },
    #[error("{path}: {problems}", problems = problems.join("; "))]
    TensorMismatch {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("merge output {path}: {message}")]
    Output { path: PathBuf, message: String },
    #[error("the merge was stopped by a signal before it finished; nothing was written")]
    Cancelled,
}

impl LoraError {
    pub fn is_user_error(&self) -> bool {
        true
    }
}
