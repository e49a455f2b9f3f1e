//! Publishing a folder to the Hub over its HTTP API, as `huggingface_hub` does with Xet off:
//! create the repo, ask which files go through LFS (preupload), upload LFS objects (basic PUT,
//! or multipart above the server's chunk size) and verify them, then one NDJSON commit.
//!
//! Files are streamed from disk (sha256 computed while reading, nothing held in memory).
//! Objects the server already has are skipped, so re-running a failed push resumes it. Uploads
//! retry with backoff on 5xx, 429 and connection errors; the commit itself is never retried
//! blindly. A push never changes local files.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::env::HubEnv;
use super::error::HubError;

/// What a push uploads for one file.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// Path in the repo (`/`-separated).
    pub path: String,
    pub local: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// First 512 bytes, which the Hub uses to decide LFS vs regular.
    pub sample: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMode {
    Lfs,
    Regular,
}

#[derive(Debug, Default, Clone)]
pub struct PushReport {
    pub commit_url: String,
    pub commit_oid: String,
    pub lfs_uploaded: usize,
    pub lfs_skipped: usize,
    pub regular: usize,
    pub bytes_uploaded: u64,
}

pub struct PushOptions<'a> {
    pub private: bool,
    pub revision: &'a str,
    pub message: &'a str,
    pub description: &'a str,
}

pub struct HubClient {
    env: HubEnv,
    agent: ureq::Agent,
    retries: u32,
    backoff: Duration,
}

#[derive(Deserialize)]
struct PreuploadResponse {
    files: Vec<PreuploadFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PreuploadFile {
    path: String,
    upload_mode: String,
    #[serde(default)]
    should_ignore: bool,
}

#[derive(Deserialize)]
struct BatchResponse {
    #[serde(default)]
    objects: Vec<BatchObject>,
}

#[derive(Deserialize)]
struct BatchObject {
    oid: String,
    #[serde(default)]
    actions: Option<BatchActions>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct BatchActions {
    upload: Option<Action>,
    verify: Option<Action>,
}

#[derive(Deserialize)]
struct Action {
    href: String,
    #[serde(default)]
    header: serde_json::Map<String, Value>,
}

/// Hash a file while reading it (never whole in memory).
pub fn describe(local: &Path, repo_path: String) -> Result<LocalFile, HubError> {
    let io = |source| HubError::Io {
        path: local.to_path_buf(),
        source,
    };
    let mut f = BufReader::with_capacity(1 << 20, File::open(local).map_err(io)?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    let mut sample = Vec::new();
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        if sample.len() < 512 {
            sample.extend_from_slice(&buf[..n.min(512 - sample.len())]);
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(LocalFile {
        path: repo_path,
        local: local.to_path_buf(),
        size,
        sha256: format!("{:x}", hasher.finalize()),
        sample,
    })
}

/// Every file under `dir` (hidden files and `.partial` leftovers skipped), sorted.
pub fn folder_files(dir: &Path) -> Result<Vec<LocalFile>, HubError> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), HubError> {
        let entries = std::fs::read_dir(dir).map_err(|source| HubError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out)?;
            } else {
                let rel = p
                    .strip_prefix(base)
                    .unwrap_or(&p)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((rel, p));
            }
        }
        Ok(())
    }
    let mut list = Vec::new();
    walk(dir, dir, &mut list)?;
    list.sort();
    list.into_iter().map(|(rel, p)| describe(&p, rel)).collect()
}

/// The Hub's own rule for a dry run: binary weight formats and files over 10 MB go to LFS.
pub fn expected_mode(f: &LocalFile) -> UploadMode {
    let lfs_ext = [
        "safetensors",
        "bin",
        "pt",
        "pth",
        "gguf",
        "onnx",
        "h5",
        "msgpack",
        "model",
        "parquet",
        "npz",
        "png",
        "svg",
    ];
    let ext = f.path.rsplit('.').next().unwrap_or_default();
    if lfs_ext.contains(&ext) || f.size > 10 << 20 {
        UploadMode::Lfs
    } else {
        UploadMode::Regular
    }
}

impl HubClient {
    pub fn new(env: HubEnv) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(20))
            .timeout_read(Duration::from_secs(300))
            .user_agent(&format!("burnish/{}", env!("CARGO_PKG_VERSION")))
            .build();
        // BURNISH_HUB_RETRY_MS shortens the backoff (tests); the default suits the real Hub.
        let backoff = std::env::var("BURNISH_HUB_RETRY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(1));
        Self {
            env,
            agent,
            retries: 5,
            backoff,
        }
    }

    fn token(&self) -> Result<&str, HubError> {
        self.env
            .token
            .as_deref()
            .ok_or_else(|| HubError::Unauthorized {
                what: "push".into(),
                detail: ": no token (HF_TOKEN is not set and $HF_HOME/token does not exist)".into(),
            })
    }

    fn api_request(&self, method: &str, path: &str) -> Result<ureq::Request, HubError> {
        let url = format!("{}{path}", self.env.endpoint);
        Ok(self
            .agent
            .request(method, &url)
            .set("Authorization", &format!("Bearer {}", self.token()?)))
    }

    fn err(&self, what: &str, e: ureq::Error) -> HubError {
        HubError::from_ureq(what, &self.env.endpoint, "write", e)
    }

    /// Retry `f` on transient failures with exponential backoff.
    fn with_retries<T>(
        &self,
        what: &str,
        mut f: impl FnMut() -> Result<T, HubError>,
    ) -> Result<T, HubError> {
        let mut attempt = 0;
        loop {
            match f() {
                Err(e) if e.is_transient() && attempt < self.retries => {
                    let wait = self.backoff * 2u32.pow(attempt);
                    tracing::warn!("{what}: {e}; retrying in {:.1}s", wait.as_secs_f64());
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn prefix(kind: &str) -> &'static str {
        if kind == "dataset" { "datasets/" } else { "" }
    }

    pub fn create_repo(&self, repo: &str, kind: &str, private: bool) -> Result<bool, HubError> {
        let (org, name) = match repo.split_once('/') {
            Some((o, n)) => (Some(o), n),
            None => (None, repo),
        };
        let mut body = json!({"name": name, "private": private});
        if let Some(o) = org {
            body["organization"] = json!(o);
        }
        if kind != "model" {
            body["type"] = json!(kind);
        }
        let what = format!("creating repo {repo}");
        let result = self.with_retries(&what, || {
            self.api_request("POST", "/api/repos/create")?
                .send_json(body.clone())
                .map_err(|e| self.err(&what, e))
        });
        match result {
            Ok(_) => Ok(true),
            Err(HubError::Status { status: 409, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn preupload(
        &self,
        repo: &str,
        kind: &str,
        revision: &str,
        files: &[LocalFile],
    ) -> Result<Vec<(UploadMode, bool)>, HubError> {
        let mut modes = Vec::with_capacity(files.len());
        for chunk in files.chunks(256) {
            let payload: Vec<Value> = chunk
                .iter()
                .map(|f| json!({"path": f.path, "sample": base64::engine::general_purpose::STANDARD.encode(&f.sample), "size": f.size}))
                .collect();
            let path = format!(
                "/api/{kind}s/{repo}/preupload/{}",
                encode_revision(revision)
            );
            let what = format!("preupload to {repo}");
            let resp: PreuploadResponse = self.with_retries(&what, || {
                self.api_request("POST", &path)?
                    .send_json(json!({"files": payload}))
                    .map_err(|e| self.err(&what, e))?
                    .into_json()
                    .map_err(|e| HubError::Protocol(format!("{what}: bad response: {e}")))
            })?;
            for f in chunk {
                let m = resp
                    .files
                    .iter()
                    .find(|r| r.path == f.path)
                    .ok_or_else(|| {
                        HubError::Protocol(format!("{what}: no upload mode for {}", f.path))
                    })?;
                let mode = if m.upload_mode == "lfs" {
                    UploadMode::Lfs
                } else {
                    UploadMode::Regular
                };
                modes.push((mode, m.should_ignore));
            }
        }
        Ok(modes)
    }

    fn lfs_batch(
        &self,
        repo: &str,
        kind: &str,
        revision: &str,
        files: &[&LocalFile],
    ) -> Result<Vec<BatchObject>, HubError> {
        let objects: Vec<Value> = files
            .iter()
            .map(|f| json!({"oid": f.sha256, "size": f.size}))
            .collect();
        let url = format!(
            "{}/{}{repo}.git/info/lfs/objects/batch",
            self.env.endpoint,
            Self::prefix(kind)
        );
        let body = json!({"operation": "upload", "transfers": ["basic", "multipart"], "objects": objects, "hash_algo": "sha256", "ref": {"name": revision}});
        let what = format!("LFS batch for {repo}");
        let resp: BatchResponse = self.with_retries(&what, || {
            self.agent
                .post(&url)
                .set("Authorization", &format!("Bearer {}", self.token()?))
                .set("Accept", "application/vnd.git-lfs+json")
                .set("Content-Type", "application/vnd.git-lfs+json")
                .send_string(&body.to_string())
                .map_err(|e| self.err(&what, e))?
                .into_json()
                .map_err(|e| HubError::Protocol(format!("{what}: bad response: {e}")))
        })?;
        Ok(resp.objects)
    }

    /// PUT `len` bytes of `file` from `offset` to `url`, streamed; returns the ETag.
    fn put_stream(
        &self,
        what: &str,
        url: &str,
        headers: &serde_json::Map<String, Value>,
        file: &Path,
        offset: u64,
        len: u64,
    ) -> Result<Option<String>, HubError> {
        self.with_retries(what, || {
            let io = |source| HubError::Io {
                path: file.to_path_buf(),
                source,
            };
            let mut f = File::open(file).map_err(io)?;
            f.seek(SeekFrom::Start(offset)).map_err(io)?;
            let mut req = self.agent.put(url).set("Content-Length", &len.to_string());
            for (k, v) in headers {
                if let Some(v) = v.as_str() {
                    req = req.set(k, v);
                }
            }
            let resp = req
                .send(BufReader::with_capacity(1 << 20, f.take(len)))
                .map_err(|e| self.err(what, e))?;
            Ok(resp.header("ETag").map(str::to_string))
        })
    }

    fn upload_object(&self, f: &LocalFile, upload: &Action) -> Result<(), HubError> {
        let what = format!("uploading {}", f.path);
        let chunk = upload.header.get("chunk_size").and_then(|c| {
            c.as_str()
                .map(|s| s.parse::<u64>().ok())
                .unwrap_or(c.as_u64())
        });
        match chunk {
            None => {
                self.put_stream(&what, &upload.href, &upload.header, &f.local, 0, f.size)?;
            }
            Some(chunk) => {
                let mut parts = Vec::new();
                let mut n = 1;
                while let Some(part_url) = upload.header.get(&n.to_string()).and_then(Value::as_str)
                {
                    let offset = (n as u64 - 1) * chunk;
                    let len = chunk.min(f.size.saturating_sub(offset));
                    let etag = self
                        .put_stream(
                            &format!("{what} (part {n})"),
                            part_url,
                            &serde_json::Map::new(),
                            &f.local,
                            offset,
                            len,
                        )?
                        .ok_or_else(|| {
                            HubError::Protocol(format!("{what}: part {n} returned no ETag"))
                        })?;
                    parts.push(json!({"partNumber": n, "etag": etag}));
                    n += 1;
                }
                let body = json!({"oid": f.sha256, "parts": parts});
                self.with_retries(&what, || {
                    self.agent
                        .post(&upload.href)
                        .set("Accept", "application/vnd.git-lfs+json")
                        .set("Content-Type", "application/vnd.git-lfs+json")
                        .send_string(&body.to_string())
                        .map_err(|e| self.err(&what, e))
                })?;
            }
        }
        Ok(())
    }

    fn verify(&self, f: &LocalFile, verify: &Action) -> Result<(), HubError> {
        let what = format!("verifying {}", f.path);
        self.with_retries(&what, || {
            let mut req = self
                .agent
                .post(&verify.href)
                .set("Authorization", &format!("Bearer {}", self.token()?));
            for (k, v) in &verify.header {
                if let Some(v) = v.as_str() {
                    req = req.set(k, v);
                }
            }
            req.send_json(json!({"oid": f.sha256, "size": f.size}))
                .map_err(|e| self.err(&what, e))
        })?;
        Ok(())
    }

    /// Upload `files` and commit them to `repo` (created if missing).
    pub fn push(
        &self,
        repo: &str,
        kind: &str,
        files: &[LocalFile],
        opts: &PushOptions<'_>,
    ) -> Result<PushReport, HubError> {
        if self.env.offline {
            return Err(HubError::Offline {
                what: format!("pushing to {repo}"),
            });
        }
        self.token()?;
        let created = self.create_repo(repo, kind, opts.private)?;
        tracing::info!(
            "{} {repo}",
            if created {
                "created"
            } else {
                "pushing to existing"
            }
        );
        let modes = self.preupload(repo, kind, opts.revision, files)?;
        let mut report = PushReport::default();
        let lfs: Vec<&LocalFile> = files
            .iter()
            .zip(&modes)
            .filter(|(_, (m, ignore))| *m == UploadMode::Lfs && !ignore)
            .map(|(f, _)| f)
            .collect();
        if !lfs.is_empty() {
            let objects = self.lfs_batch(repo, kind, opts.revision, &lfs)?;
            let total: u64 = lfs.iter().map(|f| f.size).sum();
            let bar = crate::observe::progress::bytes(total, "upload");
            for f in &lfs {
                let obj = objects.iter().find(|o| o.oid == f.sha256).ok_or_else(|| {
                    HubError::Protocol(format!("LFS batch: no answer for {}", f.path))
                })?;
                if let Some(e) = &obj.error {
                    return Err(HubError::Protocol(format!(
                        "LFS batch refused {}: {e}",
                        f.path
                    )));
                }
                match obj.actions.as_ref().and_then(|a| a.upload.as_ref()) {
                    None => {
                        report.lfs_skipped += 1;
                        tracing::info!("{} is already on the Hub; skipped", f.path);
                    }
                    Some(upload) => {
                        bar.set_message(f.path.clone());
                        self.upload_object(f, upload)?;
                        if let Some(v) = obj.actions.as_ref().and_then(|a| a.verify.as_ref()) {
                            self.verify(f, v)?;
                        }
                        report.lfs_uploaded += 1;
                        report.bytes_uploaded += f.size;
                    }
                }
                bar.inc(f.size);
            }
            bar.finish_and_clear();
        }
        // The commit: one NDJSON request, not retried (a lost response would duplicate it).
        let mut lines = vec![json!({"key": "header", "value": {"summary": opts.message, "description": opts.description}}).to_string()];
        for (f, (mode, ignore)) in files.iter().zip(&modes) {
            if *ignore {
                continue;
            }
            let line = match mode {
                UploadMode::Lfs => {
                    json!({"key": "lfsFile", "value": {"path": f.path, "algo": "sha256", "oid": f.sha256, "size": f.size}})
                }
                UploadMode::Regular => {
                    let bytes = std::fs::read(&f.local).map_err(|source| HubError::Io {
                        path: f.local.clone(),
                        source,
                    })?;
                    report.regular += 1;
                    report.bytes_uploaded += f.size;
                    json!({"key": "file", "value": {"content": base64::engine::general_purpose::STANDARD.encode(bytes), "path": f.path, "encoding": "base64"}})
                }
            };
            lines.push(line.to_string());
        }
        let path = format!(
            "/api/{kind}s/{repo}/commit/{}",
            encode_revision(opts.revision)
        );
        let what = format!("committing to {repo}");
        let resp: Value = self
            .api_request("POST", &path)?
            .set("Content-Type", "application/x-ndjson")
            .send_string(&(lines.join("\n") + "\n"))
            .map_err(|e| self.err(&what, e))?
            .into_json()
            .map_err(|e| HubError::Protocol(format!("{what}: bad response: {e}")))?;
        report.commit_url = resp["commitUrl"].as_str().unwrap_or_default().to_string();
        report.commit_oid = resp["commitOid"].as_str().unwrap_or_default().to_string();
        Ok(report)
    }
}

/// Revisions like `refs/pr/1` go into URL paths encoded.
fn encode_revision(r: &str) -> String {
    r.replace('/', "%2F")
}
