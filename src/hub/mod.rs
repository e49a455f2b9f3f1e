//! Everything that talks to the Hugging Face Hub, and resolving a model reference (local
//! folder, built-in preset, or Hub repo id) to a local folder.

use std::path::PathBuf;

use crate::error::user;
use crate::model::preset;

/// Turn a model reference into a local folder: an existing path as is, `builtin:<name>` through
/// the preset cache, and `org/name` through the Hub cache.
pub fn resolve_model(spec: &str) -> anyhow::Result<PathBuf> {
    resolve_model_revision(spec, "main")
}

/// [`resolve_model`] at a Hub revision (ignored for local folders and presets).
pub fn resolve_model_revision(spec: &str, revision: &str) -> anyhow::Result<PathBuf> {
    let _ = revision;
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

/// The local files of a Hub dataset split.
pub fn dataset_files(
    repo: &str,
    split: Option<&str>,
    files: Option<&[String]>,
    revision: Option<&str>,
) -> anyhow::Result<Vec<PathBuf>> {
    let _ = (split, files, revision);
    Err(user(format!(
        "dataset '{repo}': Hub datasets are not available in this build"
    )))
}

/// Whether a repo's files are already in the local Hub cache.
pub fn is_cached(repo: &str, revision: &str) -> bool {
    let _ = (repo, revision);
    false
}
