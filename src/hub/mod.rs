//! Everything that talks to the Hugging Face Hub: downloads into the standard cache, uploads
//! over the Hub's HTTP API, model cards; and resolving a model reference (local folder,
//! built-in preset, or Hub repo id) to a local folder.

pub mod card;
pub mod download;
pub mod env;
pub mod error;
pub mod upload;

use std::path::PathBuf;

use hf_hub::RepoType;

pub use env::HubEnv;
pub use error::HubError;

use crate::error::user;
use crate::model::preset;

/// Turn a model reference into a local folder: an existing path as is, `builtin:<name>` through
/// the preset cache, `org/name` through the Hub cache (downloading what is missing).
pub fn resolve_model(spec: &str) -> anyhow::Result<PathBuf> {
    resolve_model_revision(spec, "main")
}

/// Whether `s` is a Hub repo id, `org/name`, each part of letters, digits, `-`, `_` and `.`
/// (not starting or ending with `-` or `.`, no `..`, at most 96 characters): the one check of
/// that syntax, for models, datasets and push targets alike.
pub fn is_repo_id(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("..")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(s.split_once('/'), Some((org, name)) if ok(org) && ok(name))
}

/// [`resolve_model`] at a Hub revision (ignored for local folders and presets).
pub fn resolve_model_revision(spec: &str, revision: &str) -> anyhow::Result<PathBuf> {
    if let Some(name) = spec.strip_prefix(preset::PREFIX) {
        return Ok(preset::materialize(name)?);
    }
    let path = PathBuf::from(spec);
    if path.exists() {
        return Ok(path);
    }
    if !is_repo_id(spec) {
        return Err(user(format!(
            "model '{spec}' is not a local folder, a built-in preset ({}) or a Hub repo id (org/name)",
            preset::names()
                .iter()
                .map(|n| format!("{}{n}", preset::PREFIX))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let downloader = download::Downloader::new(HubEnv::from_env())?;
    Ok(downloader.model(spec, revision)?)
}

/// The local files of a Hub dataset split.
pub fn dataset_files(
    repo: &str,
    split: Option<&str>,
    files: Option<&[String]>,
    revision: Option<&str>,
) -> anyhow::Result<Vec<PathBuf>> {
    let downloader = download::Downloader::new(HubEnv::from_env())?;
    Ok(downloader.dataset(repo, revision.unwrap_or("main"), split, files)?)
}

/// Whether a repo's config is already in the local Hub cache.
pub fn is_cached(repo: &str, revision: &str) -> bool {
    hf_hub::Cache::new(HubEnv::from_env().cache_dir)
        .repo(hf_hub::Repo::with_revision(
            repo.to_string(),
            RepoType::Model,
            revision.to_string(),
        ))
        .get("config.json")
        .is_some()
}
