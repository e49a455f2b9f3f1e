//! GGUF export errors; all of them are the user's to fix (bad input, output path, a model or
//! tokenizer burnish cannot convert), so the command exits with code 2.

use std::path::PathBuf;

use thiserror::Error;

use crate::lora::LoraError;
use crate::model::ModelError;

#[derive(Debug, Error)]
pub enum ExportError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error("{path}: cannot export the tokenizer to GGUF: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("cannot export {what} to GGUF: {why}")]
    Unsupported { what: String, why: String },
    #[error("GGUF output {path}: {message}")]
    Output { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ExportError {
    pub fn is_user_error(&self) -> bool {
        match self {
            ExportError::Model(e) => e.is_user_error(),
            ExportError::Lora(e) => e.is_user_error(),
            _ => true,
        }
    }
}
