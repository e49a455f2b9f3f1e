//! Everything that talks to the Hugging Face Hub, and resolving a model reference (local
//! folder, built-in preset, or Hub repo id) to a local folder.

use std::path::PathBuf;

use crate::error::user;
use crate::model::preset;

/// Turn a model reference into a local folder: an existing path as is, `builtin:<name>` through
/// the preset cache, and `org/name` through the Hub cache.
pub fn resolve_model(spec: &str) -> anyhow::Result<PathBuf> {
    if let Some(name) = spec.strip_prefix(preset::PREFIX) {
        return Ok(preset::materialize(name)?);
    }
    let path = PathBuf::from(spec);
    if path.exists() {
        return Ok(path);
    }
    Err(user(format!(
        "model '{spec}' is neither a local folder nor a built-in preset ({})",
        preset::names()
            .iter()
            .map(|n| format!("{}{n}", preset::PREFIX))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}
