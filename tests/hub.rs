//! The Hub against an in-process fake on 127.0.0.1 (tests/common/fake_hub/, checked against
//! the official Python client by scripts/check_fake_hub.py): downloads into the standard cache,
//! offline mode, pushes with basic and multipart LFS, resumed pushes, errors, model cards.

mod common;
#[path = "common/fake_hub/mod.rs"]
mod fake_hub;

use std::path::Path;

use common::*;
use fake_hub::FakeHub;

fn model_files(dir: &Path) -> Vec<(String, Vec<u8>, bool)> {
    folder_bytes(dir)
        .into_iter()
        .map(|(name, data)| {
            let lfs = name.ends_with(".safetensors");
            (name, data, lfs)
        })
        .collect()
}

fn seed_model(hub: &FakeHub, id: &str, private: bool) {
    let files = model_files(&model_dir("qwen2-untied"));
    let refs: Vec<(&str, Vec<u8>, bool)> = files
        .iter()
        .map(|(n, d, l)| (n.as_str(), d.clone(), *l))
        .collect();
    hub.seed("model", id, private, &refs);
}

#[test]
fn download_fills_the_standard_cache_and_offline_mode_uses_it() {
    let hub = FakeHub::start();
    seed_model(&hub, "org/tiny", false);
    let cache = tempfile::tempdir().unwrap();
    let env = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_HUB_CACHE", cache.path().to_str().unwrap()),
    ];
    let o = burnish_env(&["download", "org/tiny"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let snapshot = std::path::PathBuf::from(stdout(&o).trim());
    assert!(
        snapshot.starts_with(cache.path().join("models--org--tiny/snapshots")),
        "{}",
        snapshot.display()
    );
    assert_eq!(
        folder_bytes(&snapshot),
        folder_bytes(&model_dir("qwen2-untied")),
        "downloaded bytes differ"
    );
    let commit = std::fs::read_to_string(cache.path().join("models--org--tiny/refs/main")).unwrap();
    assert!(snapshot.ends_with(commit.trim()));
    // LFS files went through the redirect to the "CDN" with a ranged metadata request first.
    assert!(hub.log().iter().any(|l| l.starts_with("GET /lfs-cdn/")));

    // Offline with a warm cache: no server needed.
    drop(hub);
    let data = fixtures().join("golden/qwen2-untied.eval.jsonl");
    let offline = [
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HUB_CACHE", cache.path().to_str().unwrap()),
        ("HF_ENDPOINT", "http://127.0.0.1:9"),
    ];
    let o = burnish_env(
        &[
            "eval",
            "--model",
            "org/tiny",
            "--data",
            data.to_str().unwrap(),
            "--device",
            "cpu",
            "--json",
        ],
        &offline,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Offline and cold: a clear error naming what is missing.
    let empty = tempfile::tempdir().unwrap();
    let cold = [
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HUB_CACHE", empty.path().to_str().unwrap()),
    ];
    let o = burnish_env(
        &[
            "eval",
            "--model",
            "org/tiny",
            "--data",
            data.to_str().unwrap(),
            "--device",
            "cpu",
        ],
        &cold,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("HF_HUB_OFFLINE")
            && stderr(&o).contains("config.json")
            && stderr(&o).contains("burnish download org/tiny"),
        "{}",
        stderr(&o)
    );
    // The server is gone and we are online: a network error, not a panic.
    let online = [
        ("HF_ENDPOINT", "http://127.0.0.1:9"),
        ("HF_HUB_CACHE", empty.path().to_str().unwrap()),
    ];
    let o = burnish_env(&["download", "org/tiny"], &online);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("cannot reach http://127.0.0.1:9"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn gated_missing_and_forbidden_repos_explain_themselves() {
    let hub = FakeHub::start();
    seed_model(&hub, "org/gated", true);
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    let o = burnish_env(
        &["download", "org/gated"],
        &[("HF_ENDPOINT", &hub.url), ("HF_HUB_CACHE", c)],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("401") && stderr(&o).contains("HF_TOKEN"),
        "{}",
        stderr(&o)
    );
    let o = burnish_env(
        &["download", "org/gated"],
        &[
            ("HF_ENDPOINT", &hub.url),
            ("HF_HUB_CACHE", c),
            ("HF_TOKEN", "hf_read"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = burnish_env(
        &["download", "org/nope"],
        &[("HF_ENDPOINT", &hub.url), ("HF_HUB_CACHE", c)],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not found (HTTP 404)"),
        "{}",
        stderr(&o)
    );
    // Pushing with a read-only token: 403.
    let o = burnish_env(
        &["push", model_dir("qwen2-tied").to_str().unwrap(), "org/new"],
        &[("HF_ENDPOINT", &hub.url), ("HF_TOKEN", "hf_read")],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("403") && stderr(&o).contains("write"),
        "{}",
        stderr(&o)
    );
    // Pushing without a token.
    let o = burnish_env(
        &["push", model_dir("qwen2-tied").to_str().unwrap(), "org/new"],
        &[("HF_ENDPOINT", &hub.url)],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("HF_TOKEN"), "{}", stderr(&o));
}

#[test]
fn push_round_trip_multipart_and_resume() {
    let hub = FakeHub::start();
    hub.state.lock().unwrap().multipart_chunk = 64 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let merged = tmp.path().join("merged");
    let o = burnish(&[
        "merge",
        "--adapter",
        fixtures().join("lora/qwen2-tied/adapter").to_str().unwrap(),
        "--base",
        model_dir("qwen2-untied").to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let local_before = folder_bytes(&merged);
    let shard = merged.join("model-00002-of-00004.safetensors");
    let oid = format!(
        "{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&shard).unwrap())
    );
    // The second shard's upload keeps failing: the first push gives up after its retries...
    hub.fault(&format!("/lfs-part/{oid}/1"), &[500; 6]);
    let env = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_TOKEN", "hf_write"),
        ("BURNISH_HUB_RETRY_MS", "1"),
    ];
    let o = burnish_env(
        &["push", merged.to_str().unwrap(), "org/derived", "--private"],
        &env,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("HTTP 500"), "{}", stderr(&o));
    assert_eq!(
        folder_bytes(&merged),
        local_before,
        "a failed push changed local files"
    );
    let puts_before = hub.log().iter().filter(|l| l.starts_with("PUT")).count();
    // ...and the second push uploads only what the server does not have yet.
    let o = burnish_env(
        &["push", merged.to_str().unwrap(), "org/derived", "--private"],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("model-00001-of-00004.safetensors is already on the Hub"),
        "{}",
        stderr(&o)
    );
    assert!(
        hub.log().iter().any(|l| l.starts_with("PUT /lfs-part/")),
        "multipart was not used"
    );
    assert!(puts_before > 0);
    let stored = hub.files("model", "org/derived");
    let want = folder_bytes(&merged);
    assert!(want.contains_key("README.md"), "merge writes a model card");
    assert_eq!(stored, want, "Hub contents differ from the folder");

    // Download it back into an empty cache: identical bytes.
    let cache = tempfile::tempdir().unwrap();
    let o = burnish_env(
        &["download", "org/derived"],
        &[
            ("HF_ENDPOINT", &hub.url),
            ("HF_HUB_CACHE", cache.path().to_str().unwrap()),
            ("HF_TOKEN", "hf_write"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let snap = std::path::PathBuf::from(stdout(&o).trim());
    for (name, bytes) in folder_bytes(&snap) {
        assert_eq!(&bytes, &want[&name], "{name}");
    }
    // A server error once, then success: retried.
    hub.fault("/api/models/org/derived/preupload", &[503]);
    let o = burnish_env(
        &[
            "push",
            merged.to_str().unwrap(),
            "org/derived",
            "--message",
            "again",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn the_token_is_never_printed() {
    let hub = FakeHub::start();
    let secret = "hf_write";
    let env = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_TOKEN", secret),
        ("RUST_LOG", "trace"),
    ];
    let o = burnish_env(
        &[
            "-vv",
            "push",
            model_dir("qwen2-tied").to_str().unwrap(),
            "org/tok",
            "--dry-run",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("model.safetensors") && stdout(&o).contains("lfs"),
        "{}",
        stdout(&o)
    );
    assert!(hub.log().is_empty(), "a dry run contacted the Hub");
    let o2 = burnish_env(
        &[
            "-vv",
            "push",
            model_dir("qwen2-tied").to_str().unwrap(),
            "org/tok",
        ],
        &env,
    );
    assert!(o2.status.success(), "{}", stderr(&o2));
    for out in [&o, &o2] {
        assert!(
            !stdout(out).contains(secret) && !stderr(out).contains(secret),
            "token leaked"
        );
    }
    // The generated card.
    let card = String::from_utf8(hub.files("model", "org/tok")["README.md"].clone()).unwrap();
    assert!(
        card.starts_with("---\n")
            && card.contains("library_name: transformers")
            && card.contains("- burnish"),
        "{card}"
    );
}

#[test]
fn hub_datasets_and_end_of_training_push() {
    let hub = FakeHub::start();
    let parquet = std::fs::read(fixtures().join("data/alpaca-24.parquet")).unwrap();
    hub.seed(
        "dataset",
        "org/alpaca",
        false,
        &[
            ("README.md", b"# data".to_vec(), false),
            ("data/train-00000-of-00001.parquet", parquet, true),
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let recipe = format!(
        "# test\nmodel: {{base: builtin:tiny-qwen2}}\nlora: {{r: 2, alpha: 4, dropout: 0.0, targets: [q_proj]}}\ndata:\n  train: [{{hub: org/alpaca, split: train, format: alpaca}}]\n  validation: null\n  seq_len: 128\ntrain: {{max_steps: 2, micro_batch_size: 2, grad_accum: 1, device: cpu, eval_every: 0, save_every: 0}}\noutput: {{dir: {}}}\nlogging: {{tensorboard: false}}\nhub: {{repo: org/tuned, push: [adapter, merged], private: true}}\n",
        out.display()
    );
    let r = write_recipe(tmp.path(), "r.yaml", &recipe);
    let cache = tempfile::tempdir().unwrap();
    let env = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_TOKEN", "hf_write"),
        ("HF_HUB_CACHE", cache.path().to_str().unwrap()),
    ];
    let o = burnish_env(&["train", r.to_str().unwrap()], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let adapter = hub.files("model", "org/tuned");
    assert!(
        adapter.contains_key("adapter_model.safetensors")
            && adapter.contains_key("adapter_config.json")
    );
    let card = String::from_utf8(adapter["README.md"].clone()).unwrap();
    assert!(
        card.contains("library_name: peft")
            && card.contains("datasets:\n- org/alpaca")
            && card.contains("loss.svg"),
        "{card}"
    );
    let merged = hub.files("model", "org/tuned-merged");
    assert!(merged.contains_key("model.safetensors") && merged.contains_key("tokenizer.json"));
    assert!(String::from_utf8_lossy(&merged["README.md"]).contains("library_name: transformers"));
}

/// The bytes of a recorded body: text (with `{API}`/`{CDN}` standing for the servers),
/// base64, or a slice of an uploaded file (the qwen2-untied fixture or the script's big.bin).
fn recorded_body(body: &serde_json::Value, api: &str, cdn: &str) -> Vec<u8> {
    use base64::Engine;
    if let Some(t) = body["text"].as_str() {
        return t.replace("{API}", api).replace("{CDN}", cdn).into_bytes();
    }
    if let Some(b) = body["base64"].as_str() {
        return base64::engine::general_purpose::STANDARD.decode(b).unwrap();
    }
    let file = body["file"].as_str().expect("text, base64 or file");
    let data = if file == "big.bin" {
        (0..2_500_000u32)
            .map(|i| ((i * 7 + 3) % 251) as u8)
            .collect()
    } else {
        std::fs::read(root().join(file)).unwrap()
    };
    let (at, len) = (
        body["offset"].as_u64().unwrap() as usize,
        body["len"].as_u64().unwrap() as usize,
    );
    data[at..at + len].to_vec()
}

/// scripts/check_fake_hub.py drove the fake with the official Python client (huggingface_hub,
/// Xet off: create_repo, upload_folder with basic and multipart LFS, hf_hub_download,
/// snapshot_download), checked the bytes it got back, and recorded every exchange. Replaying
/// the client's requests against a fresh fake must give the same answers, status, headers and
/// bodies: a change to the fake that the official client would not accept fails here.
#[test]
fn the_fake_answers_the_python_client_as_recorded() {
    let t = read_json(&fixtures().join("golden/fake-hub-transcript.json"));
    for (k, v) in t["results"].as_object().unwrap() {
        assert!(
            v != &serde_json::Value::Bool(false),
            "the Python client's check {k} failed"
        );
    }
    let exchanges = t["exchanges"].as_array().unwrap();
    assert!(exchanges.len() > 20, "{} exchanges", exchanges.len());
    let hub = FakeHub::start();
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let (api, cdn) = (hub.url.clone(), hub.cdn_url.clone());
    for (n, ex) in exchanges.iter().enumerate() {
        let method = ex["method"].as_str().unwrap();
        let url = ex["url"].as_str().unwrap();
        let target = if let Some(rest) = url.strip_prefix("{CDN}") {
            format!("{cdn}{rest}")
        } else {
            format!("{api}{}", url.strip_prefix("{API}").unwrap_or(url))
        };
        let mut req = agent.request(method, &target);
        for h in ex["request_headers"].as_array().unwrap() {
            let value = h[1]
                .as_str()
                .unwrap()
                .replace("{API}", &api)
                .replace("{CDN}", &cdn);
            req = req.set(h[0].as_str().unwrap(), &value);
        }
        let body = recorded_body(&ex["request_body"], &api, &cdn);
        let resp = match req.send_bytes(&body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("exchange {n} {method} {url}: {e}"),
        };
        let what = format!("exchange {n}: {method} {url}");
        assert_eq!(
            resp.status() as u64,
            ex["status"].as_u64().unwrap(),
            "{what}"
        );
        for h in ex["response_headers"].as_array().unwrap() {
            let (name, want) = (h[0].as_str().unwrap(), h[1].as_str().unwrap());
            let got = resp.header(name).unwrap_or_default();
            let want = want.replace("{API}", &api).replace("{CDN}", &cdn);
            assert_eq!(got, want, "{what}: header {name}");
        }
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut got).unwrap();
        if method != "HEAD" {
            let want = recorded_body(&ex["response_body"], &api, &cdn);
            assert!(
                got == want,
                "{what}: body differs ({} vs {} bytes)",
                got.len(),
                want.len()
            );
        }
    }
}
