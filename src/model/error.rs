//! Errors from reading model folders: config, weights and tokenizer.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: invalid config: {message}", path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "config.json".into()))]
    Config {
        path: Option<PathBuf>,
        message: String,
    },
    #[error("unsupported architecture '{found}'; burnish supports {supported}")]
    UnsupportedArchitecture { found: String, supported: String },
    #[error(
        "{dir} is not a model folder: {missing} not found (a Hugging Face model folder has config.json, safetensors weights and tokenizer.json)"
    )]
    NotAModelFolder { dir: PathBuf, missing: String },
    #[error(
        "{dir} has no safetensors weights (looked for model.safetensors and model.safetensors.index.json){hint}"
    )]
    NoWeights { dir: PathBuf, hint: String },
    #[error(
        "{path}: not a valid safetensors file ({reason}); the file may be truncated or corrupt: download it again"
    )]
    BadSafetensors { path: PathBuf, reason: String },
    #[error("{path}: invalid shard index: {reason}")]
    BadIndex { path: PathBuf, reason: String },
    #[error("shard {shard} listed in {index} is missing; download the model again")]
    MissingShard { index: PathBuf, shard: String },
    #[error("the weights in {dir} do not match config.json:\n{}", problems.join("\n"))]
    WeightMismatch { dir: PathBuf, problems: Vec<String> },
    #[error(
        "{path}: tensor {name} has dtype {dtype}, which burnish cannot load (supported: F32, BF16, F16)"
    )]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error(
        "{path}: tensor {name} holds {count} NaN or infinite value(s) (the first at flat index {first}); the checkpoint is damaged or was saved after training diverged: use another checkpoint"
    )]
    NonFinite {
        path: PathBuf,
        name: String,
        count: usize,
        first: usize,
    },
    #[error("{path}: cannot load tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error(
        "model.quantize: block_size {block_size} does not divide the input size {in_features} of {module}; use one of {choices}"
    )]
    QuantBlock {
        module: String,
        in_features: usize,
        block_size: usize,
        choices: String,
    },
    #[error("model.quantize: {0}")]
    Quantize(String),
    #[error("tensor backend error: {0}")]
    Backend(String),
}

impl ModelError {
    /// Attach the file a config error came from.
    pub fn in_file(self, file: &std::path::Path) -> Self {
        match self {
            ModelError::Config { message, .. } => ModelError::Config {
                path: Some(file.to_path_buf()),
                message,
            },
            ModelError::UnsupportedArchitecture { found, supported } => {
                ModelError::UnsupportedArchitecture {
                    found: format!("{found}' in '{}", file.display()),
                    supported,
                }
            }
            other => other,
        }
    }

    /// Whether the user can fix this (bad or missing files) rather than it being a bug.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, ModelError::Backend(_))
    }
}
