//! Downloads through the `hf-hub` crate into the standard Hub cache (the layout Python's
//! `huggingface_hub` uses, so both share files), fetching only what a run needs. With
//! `HF_HUB_OFFLINE=1` only the cache is used.

use std::path::{Path, PathBuf};

use hf_hub::api::Progress;
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::ProgressBar;

use super::env::HubEnv;
use super::error::HubError;
use crate::model::weights::{INDEX_FILE, SINGLE_FILE};

/// Files of a model repo besides the weights, fetched when the repo has them.
const MODEL_EXTRAS: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "README.md",
];

const DATA_EXTENSIONS: &[&str] = &["parquet", "jsonl", "json", "ndjson"];

struct Bar(ProgressBar);

impl Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_position(0);
        self.0.set_message(filename.to_string());
    }
    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }
    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

pub struct Downloader {
    env: HubEnv,
    api: Option<Api>,
}

fn kind_name(kind: RepoType) -> &'static str {
    match kind {
        RepoType::Dataset => "dataset",
        RepoType::Space => "space",
        RepoType::Model => "model",
    }
}

impl Downloader {
    pub fn new(env: HubEnv) -> Result<Self, HubError> {
        let api = if env.offline {
            None
        } else {
            let api = ApiBuilder::new()
                .with_endpoint(env.endpoint.clone())
                .with_cache_dir(env.cache_dir.clone())
                .with_token(env.token.clone())
                .with_progress(false)
                .with_retries(3)
                .with_user_agent("burnish", env!("CARGO_PKG_VERSION"))
                .build()
                .map_err(|e| HubError::Protocol(format!("cannot set up the Hub client: {e}")))?;
            Some(api)
        };
        Ok(Self { env, api })
    }

    fn api_error(&self, what: &str, e: ApiError) -> HubError {
        match e {
            ApiError::RequestError(u) => HubError::from_ureq(what, &self.env.endpoint, "read", *u),
            ApiError::TooManyRetries(inner) => self.api_error(what, *inner),
            ApiError::IoError(source) => HubError::Io {
                path: self.env.cache_dir.clone(),
                source,
            },
            other => HubError::Protocol(format!("{what}: {other}")),
        }
    }

    /// A cached file of `repo` at `revision`, if present.
    fn cached(&self, repo: &str, kind: RepoType, revision: &str, file: &str) -> Option<PathBuf> {
        Cache::new(self.env.cache_dir.clone())
            .repo(Repo::with_revision(
                repo.to_string(),
                kind,
                revision.to_string(),
            ))
            .get(file)
    }

    fn offline_get(
        &self,
        repo: &str,
        kind: RepoType,
        revision: &str,
        file: &str,
    ) -> Result<PathBuf, HubError> {
        self.cached(repo, kind, revision, file)
            .ok_or_else(|| HubError::OfflineMiss {
                what: format!("{} {repo}", kind_name(kind)),
                repo: repo.into(),
                file: file.into(),
                cache: self.env.cache_dir.display().to_string(),
            })
    }

    /// Repo file list and the commit the revision points to.
    fn listing(
        &self,
        api: &Api,
        repo: &str,
        kind: RepoType,
        revision: &str,
    ) -> Result<(Vec<String>, String), HubError> {
        let info = api
            .repo(Repo::with_revision(
                repo.to_string(),
                kind,
                revision.to_string(),
            ))
            .info()
            .map_err(|e| {
                self.api_error(
                    &format!("{} {repo} (revision {revision})", kind_name(kind)),
                    e,
                )
            })?;
        Ok((
            info.siblings.into_iter().map(|s| s.rfilename).collect(),
            info.sha,
        ))
    }

    /// Download `files` at `commit` (one consistent snapshot) and point `revision` at it.
    fn fetch(
        &self,
        api: &Api,
        repo: &str,
        kind: RepoType,
        revision: &str,
        commit: &str,
        files: &[String],
    ) -> Result<Vec<PathBuf>, HubError> {
        let handle = api.repo(Repo::with_revision(
            repo.to_string(),
            kind,
            commit.to_string(),
        ));
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let path = match self.cached(repo, kind, commit, f) {
                Some(p) => p,
                None => {
                    let bar = Bar(crate::observe::progress::bytes(0, "download"));
                    tracing::info!("downloading {f} from {repo}");
                    handle.download_with_progress(f, bar).map_err(|e| {
                        self.api_error(&format!("{} {repo}: {f}", kind_name(kind)), e)
                    })?
                }
            };
            out.push(path);
        }
        // refs/<revision> -> commit, as huggingface_hub writes it, so offline use finds it.
        let refs = self
            .env
            .cache_dir
            .join(Repo::new(repo.to_string(), kind).folder_name())
            .join("refs");
        if revision != commit {
            let target = refs.join(revision);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|source| HubError::Io {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            std::fs::write(&target, commit).map_err(|source| HubError::Io {
                path: target.clone(),
                source,
            })?;
        }
        Ok(out)
    }

    /// The local snapshot folder of a model: config, weights (single file or index + shards),
    /// tokenizer and generation files.
    pub fn model(&self, repo: &str, revision: &str) -> Result<PathBuf, HubError> {
        let Some(api) = &self.api else {
            let config = self.offline_get(repo, RepoType::Model, revision, "config.json")?;
            let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
            if let Some(index) = self.cached(repo, RepoType::Model, revision, INDEX_FILE) {
                for shard in index_shards(&index)? {
                    self.offline_get(repo, RepoType::Model, revision, &shard)?;
                }
            } else {
                self.offline_get(repo, RepoType::Model, revision, SINGLE_FILE)?;
            }
            return Ok(dir);
        };
        let (files, commit) = self.listing(api, repo, RepoType::Model, revision)?;
        let has = |f: &str| files.iter().any(|x| x == f);
        if !has("config.json") {
            return Err(HubError::Protocol(format!(
                "model {repo} has no config.json; is it a transformers model repo?"
            )));
        }
        let mut wanted: Vec<String> = vec!["config.json".into()];
        wanted.extend(
            MODEL_EXTRAS
                .iter()
                .filter(|f| has(f))
                .map(|f| f.to_string()),
        );
        let index_first = has(INDEX_FILE);
        if index_first {
            wanted.push(INDEX_FILE.into());
        } else if has(SINGLE_FILE) {
            wanted.push(SINGLE_FILE.into());
        } else {
            let hint = if has("pytorch_model.bin") {
                " (only PyTorch .bin weights; burnish reads safetensors)"
            } else {
                ""
            };
            return Err(HubError::Protocol(format!(
                "model {repo} has no safetensors weights{hint}"
            )));
        }
        let paths = self.fetch(api, repo, RepoType::Model, revision, &commit, &wanted)?;
        if index_first {
            let index = paths.last().cloned().unwrap_or_default();
            let shards = index_shards(&index)?;
            self.fetch(api, repo, RepoType::Model, revision, &commit, &shards)?;
        }
        Ok(paths[0].parent().map(Path::to_path_buf).unwrap_or_default())
    }

    /// Every file of a repo (for `burnish download --dataset`, or a full model mirror).
    pub fn all_files(
        &self,
        repo: &str,
        kind: RepoType,
        revision: &str,
    ) -> Result<Vec<PathBuf>, HubError> {
        let Some(api) = &self.api else {
            return Err(HubError::Protocol(
                "HF_HUB_OFFLINE is set: nothing can be downloaded".into(),
            ));
        };
        let (files, commit) = self.listing(api, repo, kind, revision)?;
        self.fetch(api, repo, kind, revision, &commit, &files)
    }

    /// Data files of a dataset split (or the given files).
    pub fn dataset(
        &self,
        repo: &str,
        revision: &str,
        split: Option<&str>,
        only: Option<&[String]>,
    ) -> Result<Vec<PathBuf>, HubError> {
        let split = split.unwrap_or("train");
        let Some(api) = &self.api else {
            // Offline: the files must have been listed explicitly or fetched before by name.
            let names = only.ok_or_else(|| HubError::OfflineMiss {
                what: format!("dataset {repo}"),
                repo: repo.into(),
                file: format!("the file list of split '{split}' (give files: in the recipe to use cached files offline)"),
                cache: self.env.cache_dir.display().to_string(),
            })?;
            return names
                .iter()
                .map(|f| self.offline_get(repo, RepoType::Dataset, revision, f))
                .collect();
        };
        let (files, commit) = self.listing(api, repo, RepoType::Dataset, revision)?;
        let chosen: Vec<String> = match only {
            Some(names) => {
                if let Some(missing) = names.iter().find(|n| !files.contains(n)) {
                    return Err(HubError::NotFound {
                        what: format!("dataset {repo}: file {missing}"),
                        detail: String::new(),
                    });
                }
                names.to_vec()
            }
            None => split_files(&files, split),
        };
        if chosen.is_empty() {
            let data: Vec<&String> = files.iter().filter(|f| is_data_file(f)).collect();
            return Err(HubError::Protocol(format!(
                "dataset {repo} has no {} files for split '{split}'; its data files are: {}; set split: or files: in the recipe",
                DATA_EXTENSIONS.join("/"),
                if data.is_empty() {
                    "(none)".to_string()
                } else {
                    data.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        }
        self.fetch(api, repo, RepoType::Dataset, revision, &commit, &chosen)
    }
}

fn is_data_file(f: &str) -> bool {
    let name = f.rsplit('/').next().unwrap_or(f);
    !name.starts_with('.')
        && Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| DATA_EXTENSIONS.contains(&e))
}

/// The files of a split, by the Hub's naming conventions: `train.jsonl`, `train-00000-of-00002.parquet`,
/// `data/train-*.parquet`, `train/*.parquet`.
pub fn split_files(files: &[String], split: &str) -> Vec<String> {
    let mut out: Vec<String> = files
        .iter()
        .filter(|f| is_data_file(f))
        .filter(|f| {
            let mut parts: Vec<&str> = f.split('/').collect();
            let name = parts.pop().unwrap_or_default();
            let stem = name.split('.').next().unwrap_or_default();
            let by_name = stem == split
                || stem.starts_with(&format!("{split}-"))
                || stem.starts_with(&format!("{split}_"));
            by_name || parts.contains(&split)
        })
        .cloned()
        .collect();
    out.sort();
    out
}

fn index_shards(index: &Path) -> Result<Vec<String>, HubError> {
    let text = std::fs::read_to_string(index).map_err(|source| HubError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| HubError::Protocol(format!("{}: {e}", index.display())))?;
    let mut shards: Vec<String> = v["weight_map"]
        .as_object()
        .ok_or_else(|| HubError::Protocol(format!("{}: no weight_map", index.display())))?
        .values()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_conventions() {
        let files: Vec<String> = [
            "README.md",
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet",
            "data/test-00000-of-00001.parquet",
            "validation.jsonl",
            "train/extra.json",
            ".gitattributes",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            split_files(&files, "train"),
            vec![
                "data/train-00000-of-00002.parquet",
                "data/train-00001-of-00002.parquet",
                "train/extra.json"
            ]
        );
        assert_eq!(split_files(&files, "validation"), vec!["validation.jsonl"]);
        assert!(split_files(&files, "dev").is_empty());
    }
}
