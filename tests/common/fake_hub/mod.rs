//! An in-process Hugging Face Hub on 127.0.0.1 for tests: it stores repos and files and speaks
//! the endpoints burnish and `huggingface_hub` (Xet disabled) use: resolve (HEAD/GET with the
//! cache headers, ranges, LFS redirects), repo info and tree, create repo, preupload, LFS batch
//! (basic and multipart), part uploads, completion, verify, and the NDJSON commit. Faults can be
//! injected per route. scripts/check_fake_hub.py drives it with the official Python client.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tiny_http::{Method, Server};

mod reply;
use reply::{Reply, exchange_record, header, percent_decode, serve_bytes};

/// A file in a commit: inline bytes (regular) or an LFS object id.
#[derive(Clone, Debug)]
pub enum Blob {
    Regular(Vec<u8>),
    Lfs { oid: String, size: u64 },
}

#[derive(Clone, Debug, Default)]
pub struct Repo {
    pub private: bool,
    /// Commit oid -> files.
    pub commits: Vec<(String, BTreeMap<String, Blob>)>,
}

impl Repo {
    fn head(&self) -> (String, BTreeMap<String, Blob>) {
        self.commits
            .last()
            .cloned()
            .unwrap_or_else(|| ("0".repeat(40), BTreeMap::new()))
    }
}

#[derive(Default)]
pub struct State {
    /// ("model" | "dataset", "org/name") -> repo.
    pub repos: HashMap<(String, String), Repo>,
    pub lfs: HashMap<String, Vec<u8>>,
    parts: HashMap<String, BTreeMap<usize, Vec<u8>>>,
    /// Valid tokens and whether they may write.
    pub tokens: HashMap<String, bool>,
    /// Route prefix -> statuses to answer before serving normally (e.g. [500] = fail once).
    pub faults: Vec<(String, Vec<u16>)>,
    /// Every request as "METHOD path".
    pub log: Vec<String>,
    /// LFS objects larger than this use multipart uploads with this chunk size.
    pub multipart_chunk: u64,
    /// When set, every exchange is recorded here (see [`exchange_record`]).
    pub transcript: Option<Vec<Value>>,
}

pub struct FakeHub {
    pub url: String,
    /// The other origin, where LFS downloads are served (like the real CDN).
    pub cdn_url: String,
    pub state: Arc<Mutex<State>>,
    servers: Vec<Arc<Server>>,
    threads: Vec<JoinHandle<()>>,
}

fn sha256_hex(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

fn json_reply(status: u16, v: Value) -> Reply {
    Reply::from_data(v.to_string().into_bytes())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
}

fn error_reply(status: u16, msg: &str) -> Reply {
    json_reply(status, json!({"error": msg})).with_header(header("X-Error-Message", msg))
}

impl FakeHub {
    /// The Hub API and, on another port (another origin, like the real CDN), LFS downloads.
    pub fn start() -> Self {
        let bind = || Arc::new(Server::http("127.0.0.1:0").expect("bind fake hub"));
        let (api, cdn) = (bind(), bind());
        let url_of = |s: &Server| {
            format!(
                "http://127.0.0.1:{}",
                s.server_addr().to_ip().map(|a| a.port()).unwrap_or(0)
            )
        };
        let (url, cdn_url) = (url_of(&api), url_of(&cdn));
        let state = Arc::new(Mutex::new(State {
            multipart_chunk: 1 << 20,
            ..Default::default()
        }));
        state.lock().unwrap().tokens.insert("hf_write".into(), true);
        state.lock().unwrap().tokens.insert("hf_read".into(), false);
        let mut threads = Vec::new();
        for server in [api.clone(), cdn.clone()] {
            let (st, base, cdn_base) = (state.clone(), url.clone(), cdn_url.clone());
            threads.push(std::thread::spawn(move || {
                for mut req in server.incoming_requests() {
                    let mut body = Vec::new();
                    let _ = req.as_reader().read_to_end(&mut body);
                    let reply = handle(&st, &base, &cdn_base, &req, &body);
                    if let Some(t) = st.lock().unwrap().transcript.as_mut() {
                        let headers: Vec<(String, String)> = req
                            .headers()
                            .iter()
                            .map(|h| (h.field.as_str().to_string(), h.value.as_str().to_string()))
                            .collect();
                        t.push(exchange_record(
                            req.method().as_str(),
                            req.url(),
                            &headers,
                            &body,
                            &reply,
                            (&base, &cdn_base),
                        ));
                    }
                    let _ = req.respond(reply.into_response());
                }
            }));
        }
        Self {
            url,
            cdn_url,
            state,
            servers: vec![api, cdn],
            threads,
        }
    }

    /// Put a repo with files directly (as if pushed earlier).
    pub fn seed(&self, kind: &str, id: &str, private: bool, files: &[(&str, Vec<u8>, bool)]) {
        let mut st = self.state.lock().unwrap();
        let mut map = BTreeMap::new();
        for (path, data, lfs) in files {
            if *lfs {
                let oid = sha256_hex(data);
                st.lfs.insert(oid.clone(), data.clone());
                map.insert(
                    path.to_string(),
                    Blob::Lfs {
                        oid,
                        size: data.len() as u64,
                    },
                );
            } else {
                map.insert(path.to_string(), Blob::Regular(data.clone()));
            }
        }
        let oid = sha256_hex(format!("{id}{}", map.len()).as_bytes())[..40].to_string();
        st.repos.insert(
            (kind.into(), id.into()),
            Repo {
                private,
                commits: vec![(oid, map)],
            },
        );
    }

    /// Answer requests whose path starts with `prefix` with these statuses first.
    pub fn fault(&self, prefix: &str, statuses: &[u16]) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push((prefix.into(), statuses.to_vec()));
    }

    pub fn files(&self, kind: &str, id: &str) -> BTreeMap<String, Vec<u8>> {
        let st = self.state.lock().unwrap();
        let repo = st
            .repos
            .get(&(kind.to_string(), id.to_string()))
            .cloned()
            .unwrap_or_default();
        repo.head()
            .1
            .into_iter()
            .map(|(p, b)| {
                let data = match b {
                    Blob::Regular(d) => d,
                    Blob::Lfs { oid, .. } => st.lfs.get(&oid).cloned().unwrap_or_default(),
                };
                (p, data)
            })
            .collect()
    }

    /// The LFS pointer (sha256 oid, size) the repo's head records for `path`, if it is an LFS file.
    pub fn lfs_pointer(&self, kind: &str, id: &str, path: &str) -> Option<(String, u64)> {
        let st = self.state.lock().unwrap();
        let repo = st.repos.get(&(kind.to_string(), id.to_string()))?.clone();
        match repo.head().1.get(path)? {
            Blob::Lfs { oid, size } => Some((oid.clone(), *size)),
            Blob::Regular(_) => None,
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        for s in &self.servers {
            s.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Which token the request carries, and whether it may write (None: no or unknown token).
fn auth(st: &State, req: &tiny_http::Request) -> Option<bool> {
    let h = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))?;
    let token = h.value.as_str().strip_prefix("Bearer ")?;
    st.tokens.get(token).copied()
}

fn split_kind(path: &str) -> (&'static str, &str) {
    match path.strip_prefix("datasets/") {
        Some(rest) => ("dataset", rest),
        None => ("model", path),
    }
}

fn handle(
    state: &Arc<Mutex<State>>,
    base: &str,
    cdn: &str,
    req: &tiny_http::Request,
    body: &[u8],
) -> Reply {
    let method = req.method().clone();
    let url = req.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let body = body.to_vec();
    let mut st = state.lock().unwrap();
    st.log.push(format!("{method} {path}"));
    if let Some(i) = st
        .faults
        .iter()
        .position(|(p, s)| path.starts_with(p.as_str()) && !s.is_empty())
    {
        let status = st.faults[i].1.remove(0);
        return error_reply(status, "injected fault");
    }
    let can = auth(&st, req);
    let range = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Range"))
        .map(|h| h.value.as_str().to_string());

    // Repo creation.
    if method == Method::Post && path == "/api/repos/create" {
        let Some(write) = can else {
            return error_reply(401, "Invalid credentials in Authorization header");
        };
        if !write {
            return error_reply(
                403,
                "You don't have the rights to create a repo with this token",
            );
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        let name = v["name"].as_str().unwrap_or_default();
        let id = match v["organization"].as_str() {
            Some(o) => format!("{o}/{name}"),
            None => format!("user/{name}"),
        };
        let kind = v["type"].as_str().unwrap_or("model").to_string();
        let key = (kind, id.clone());
        if st.repos.contains_key(&key) {
            return error_reply(409, "You already created this model repo");
        }
        st.repos.insert(
            key,
            Repo {
                private: v["private"].as_bool().unwrap_or(false),
                commits: vec![],
            },
        );
        return json_reply(200, json!({"url": format!("{base}/{id}"), "name": id}));
    }

    // Repo info: /api/{models|datasets}/{id}/revision/{rev}, and the tree API.
    if method == Method::Get && path.starts_with("/api/") {
        let rest = &path[5..];
        let (kind, rest) = if let Some(r) = rest.strip_prefix("models/") {
            ("model", r)
        } else if let Some(r) = rest.strip_prefix("datasets/") {
            ("dataset", r)
        } else {
            return error_reply(404, "not found");
        };
        let parts: Vec<&str> = rest.splitn(4, '/').collect();
        if parts.len() >= 3 {
            let id = format!("{}/{}", parts[0], parts[1]);
            let Some(repo) = st.repos.get(&(kind.to_string(), id.clone())).cloned() else {
                return error_reply(404, "Repository not found");
            };
            if repo.private && can.is_none() {
                return error_reply(401, "Repository not found or private");
            }
            let (oid, files) = repo.head();
            if parts[2] == "revision" {
                let siblings: Vec<Value> = files.keys().map(|p| json!({"rfilename": p})).collect();
                return json_reply(
                    200,
                    json!({"id": id, "sha": oid, "private": repo.private, "siblings": siblings}),
                );
            }
            if parts[2] == "tree" {
                let list: Vec<Value> = files
                    .iter()
                    .map(|(p, b)| match b {
                        Blob::Regular(d) => json!({"type": "file", "path": p, "size": d.len(), "oid": sha256_hex(d)}),
                        Blob::Lfs { oid, size } => json!({"type": "file", "path": p, "size": size, "oid": oid, "lfs": {"oid": oid, "size": size, "pointerSize": 134}}),
                    })
                    .collect();
                return json_reply(200, Value::Array(list));
            }
        }
        return error_reply(404, "not found");
    }

    // Preupload.
    if method == Method::Post && path.starts_with("/api/") && path.contains("/preupload/") {
        if can != Some(true) {
            return error_reply(
                if can.is_none() { 401 } else { 403 },
                "write access required",
            );
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        let files: Vec<Value> = v["files"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|f| {
                let p = f["path"].as_str().unwrap_or_default();
                let size = f["size"].as_u64().unwrap_or(0);
                let binary = [".safetensors", ".bin", ".pt", ".gguf", ".parquet", ".svg"]
                    .iter()
                    .any(|e| p.ends_with(e));
                let mode = if binary || size > 10 << 20 {
                    "lfs"
                } else {
                    "regular"
                };
                json!({"path": p, "uploadMode": mode, "shouldIgnore": false})
            })
            .collect();
        return json_reply(200, json!({"files": files}));
    }

    // LFS batch.
    if method == Method::Post && path.ends_with(".git/info/lfs/objects/batch") {
        if can != Some(true) {
            return error_reply(
                if can.is_none() { 401 } else { 403 },
                "write access required",
            );
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        let chunk = st.multipart_chunk;
        let mut multipart = false;
        let objects: Vec<Value> = v["objects"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|o| {
                let oid = o["oid"].as_str().unwrap_or_default().to_string();
                let size = o["size"].as_u64().unwrap_or(0);
                if st.lfs.contains_key(&oid) {
                    return json!({"oid": oid, "size": size});
                }
                let verify = json!({"href": format!("{base}/lfs-verify/{oid}"), "header": {}});
                if size > chunk {
                    multipart = true;
                    let mut h = serde_json::Map::new();
                    h.insert("chunk_size".into(), json!(chunk.to_string()));
                    for n in 1..=size.div_ceil(chunk) {
                        h.insert(n.to_string(), json!(format!("{base}/lfs-part/{oid}/{n}")));
                    }
                    json!({"oid": oid, "size": size, "actions": {"upload": {"href": format!("{base}/lfs-complete/{oid}"), "header": h}, "verify": verify}})
                } else {
                    json!({"oid": oid, "size": size, "actions": {"upload": {"href": format!("{base}/lfs-upload/{oid}"), "header": {}}, "verify": verify}})
                }
            })
            .collect();
        let transfer = if multipart { "multipart" } else { "basic" };
        return Reply::from_data(
            json!({"transfer": transfer, "objects": objects})
                .to_string()
                .into_bytes(),
        )
        .with_header(header("Content-Type", "application/vnd.git-lfs+json"));
    }

    if method == Method::Put
        && let Some(oid) = path.strip_prefix("/lfs-upload/")
    {
        if sha256_hex(&body) != oid {
            return error_reply(400, "sha256 mismatch");
        }
        st.lfs.insert(oid.to_string(), body);
        return Reply::from_data(Vec::new()).with_status_code(200);
    }
    if method == Method::Put
        && let Some(rest) = path.strip_prefix("/lfs-part/")
    {
        let (oid, n) = rest.split_once('/').unwrap_or((rest, "0"));
        let etag = format!("\"{}\"", &sha256_hex(&body)[..16]);
        st.parts
            .entry(oid.to_string())
            .or_default()
            .insert(n.parse().unwrap_or(0), body);
        return Reply::from_data(Vec::new()).with_header(header("ETag", &etag));
    }
    if method == Method::Post
        && let Some(oid) = path.strip_prefix("/lfs-complete/")
    {
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        let parts = st.parts.remove(oid).unwrap_or_default();
        let listed = v["parts"].as_array().map(|a| a.len()).unwrap_or(0);
        if listed != parts.len() {
            return error_reply(400, "part list does not match the uploaded parts");
        }
        let data: Vec<u8> = parts.into_values().flatten().collect();
        if sha256_hex(&data) != oid {
            return error_reply(400, "assembled object does not match its oid");
        }
        st.lfs.insert(oid.to_string(), data);
        return json_reply(200, json!({}));
    }
    if method == Method::Post
        && let Some(oid) = path.strip_prefix("/lfs-verify/")
    {
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        return match st.lfs.get(oid) {
            Some(d) if d.len() as u64 == v["size"].as_u64().unwrap_or(u64::MAX) => {
                json_reply(200, json!({}))
            }
            _ => error_reply(404, "object not found"),
        };
    }

    // Commit.
    if method == Method::Post && path.starts_with("/api/") && path.contains("/commit/") {
        if can != Some(true) {
            return error_reply(
                if can.is_none() { 401 } else { 403 },
                "write access required",
            );
        }
        let rest = &path[5..];
        let (kind, rest) = if let Some(r) = rest.strip_prefix("models/") {
            ("model", r)
        } else if let Some(r) = rest.strip_prefix("datasets/") {
            ("dataset", r)
        } else {
            return error_reply(404, "not found");
        };
        let id = rest
            .split("/commit/")
            .next()
            .unwrap_or_default()
            .to_string();
        let key = (kind.to_string(), id.clone());
        let Some(repo) = st.repos.get(&key).cloned() else {
            return error_reply(404, "Repository not found");
        };
        let (_, mut files) = repo.head();
        for line in String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            let v: Value = serde_json::from_str(line).unwrap_or_default();
            let val = &v["value"];
            match v["key"].as_str() {
                Some("file") => {
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(val["content"].as_str().unwrap_or_default())
                        .unwrap_or_default();
                    files.insert(
                        val["path"].as_str().unwrap_or_default().into(),
                        Blob::Regular(data),
                    );
                }
                Some("lfsFile") => {
                    let oid = val["oid"].as_str().unwrap_or_default().to_string();
                    if !st.lfs.contains_key(&oid) {
                        return error_reply(422, &format!("LFS object {oid} was never uploaded"));
                    }
                    files.insert(
                        val["path"].as_str().unwrap_or_default().into(),
                        Blob::Lfs {
                            oid,
                            size: val["size"].as_u64().unwrap_or(0),
                        },
                    );
                }
                Some("deletedFile") => {
                    files.remove(val["path"].as_str().unwrap_or_default());
                }
                _ => {}
            }
        }
        let oid = sha256_hex(format!("{id}{}{}", repo.commits.len(), body.len()).as_bytes())[..40]
            .to_string();
        if let Some(r) = st.repos.get_mut(&key) {
            r.commits.push((oid.clone(), files));
        }
        return json_reply(
            200,
            json!({"commitUrl": format!("{base}/{id}/commit/{oid}"), "commitOid": oid}),
        );
    }

    // Downloads: /{id}/resolve/{rev}/{file}, /datasets/{id}/resolve/..., and the LFS "CDN".
    if (method == Method::Get || method == Method::Head)
        && let Some(oid) = path.strip_prefix("/lfs-cdn/")
    {
        let Some(data) = st.lfs.get(oid).cloned() else {
            return error_reply(404, "no such object");
        };
        return serve_bytes(
            &data,
            range.as_deref(),
            &[("ETag", format!("\"{oid}\""))],
            method == Method::Head,
        );
    }
    if (method == Method::Get || method == Method::Head) && path.contains("/resolve/") {
        let (kind, rest) = split_kind(&path[1..]);
        let mut it = rest.splitn(5, '/');
        let (org, name, _, rev) = (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next(),
            it.next().unwrap_or(""),
        );
        let file = it.next().unwrap_or("");
        let id = format!("{org}/{name}");
        let Some(repo) = st.repos.get(&(kind.to_string(), id.clone())).cloned() else {
            return error_reply(404, "Repository not found")
                .with_header(header("X-Error-Code", "RepoNotFound"));
        };
        if repo.private && can.is_none() {
            return error_reply(401, "Access to this repo is restricted")
                .with_header(header("X-Error-Code", "GatedRepo"));
        }
        let (oid, files) = repo.head();
        if rev != "main" && rev != oid {
            return error_reply(404, "Revision not found")
                .with_header(header("X-Error-Code", "RevisionNotFound"));
        }
        let file = percent_decode(file);
        let Some(blob) = files.get(&file) else {
            return error_reply(404, "Entry not found")
                .with_header(header("X-Error-Code", "EntryNotFound"));
        };
        let commit = ("X-Repo-Commit", oid.clone());
        return match blob {
            Blob::Regular(d) => serve_bytes(
                d,
                range.as_deref(),
                &[commit, ("ETag", format!("\"{}\"", sha256_hex(d)))],
                method == Method::Head,
            ),
            Blob::Lfs { oid: lfs_oid, size } => Reply::from_data(Vec::new())
                .with_status_code(302)
                .with_header(header("Location", &format!("{cdn}/lfs-cdn/{lfs_oid}")))
                .with_header(header("X-Repo-Commit", &commit.1))
                .with_header(header("X-Linked-Etag", &format!("\"{lfs_oid}\"")))
                .with_header(header("X-Linked-Size", &size.to_string()))
                .with_header(header("ETag", &format!("\"{}\"", &lfs_oid[..16]))),
        };
    }
    error_reply(404, &format!("no route for {method} {path}"))
}
