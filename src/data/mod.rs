//! Datasets: reading files, row formats, chat templates, tokenization with loss masks,
//! packing, deterministic ordering and batches.

pub mod batch;
pub mod error;
pub mod formats;
pub mod source;

pub use batch::{PackedRow, TokenizedExample, collate};
pub use error::DataError;
pub use formats::{Example, Format};
