//! Dataset errors, each naming the file and row it is about.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// Where a row came from: file plus line (JSONL) or row index (JSON array, Parquet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowLocation {
    pub file: PathBuf,
    pub kind: LocationKind,
    pub index: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocationKind {
    Line,
    Row,
}

impl fmt::Display for RowLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            LocationKind::Line => write!(f, "{}:{}", self.file.display(), self.index),
            LocationKind::Row => write!(f, "{} row {}", self.file.display(), self.index),
        }
    }
}

#[derive(Debug, Error)]
pub enum DataError {
    #[error("cannot read dataset {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: unsupported dataset file type (expected .jsonl, .json or .parquet)")]
    UnsupportedFile { path: PathBuf },
    #[error("{at}: {message}")]
    BadRow { at: RowLocation, message: String },
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("{0}")]
    Template(String),
    #[error("dataset {path} has no usable rows")]
    Empty { path: PathBuf },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

impl DataError {
    pub fn is_user_error(&self) -> bool {
        true
    }
}
