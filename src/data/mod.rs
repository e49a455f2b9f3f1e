//! Datasets: reading files, row formats, chat templates, tokenization with loss masks,
//! packing, deterministic ordering and batches.

pub mod batch;
pub mod dataset;
pub mod error;
pub mod formats;
pub mod order;
pub mod pack;
pub mod source;
pub mod template;
pub mod tokenize;

pub use batch::{PackedRow, TokenizedExample, collate};
pub use error::DataError;
pub use formats::{Example, Format};
