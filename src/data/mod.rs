//! Datasets: reading files, row formats, chat templates, tokenization with loss masks,
//! packing, deterministic ordering and batches; preference pairs for DPO and ORPO.

pub mod batch;
pub mod dataset;
pub mod error;
pub mod formats;
pub mod order;
pub mod pack;
pub mod preference;
pub mod source;
pub mod template;
pub mod tokenize;
pub mod tools;
pub mod unpaired;

pub use batch::{PackedRow, TokenizedExample, collate};
pub use error::DataError;
pub use formats::{Example, Format};
pub use preference::PreferencePair;
