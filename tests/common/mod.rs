//! Shared test helpers: fixture paths, golden tensors, running the binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::SafeTensors;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model_dir(variant: &str) -> PathBuf {
    fixtures().join("models").join(variant)
}

pub const VARIANTS: [&str; 12] = [
    "qwen2-tied",
    "qwen2-untied",
    "qwen2-mha",
    "qwen2-bf16",
    "llama-gqa",
    "mistral",
    "qwen3",
    "mistral-swa",
    "qwen2-swa",
    "qwen2-yarn",
    "gemma3",
    "gemma2",
];

/// A golden tensor: shape and values as f32 (or i64 for ids).
pub struct Golden {
    pub shape: Vec<usize>,
    pub f32: Vec<f32>,
    pub i64: Vec<i64>,
}

pub fn read_golden(path: &Path) -> HashMap<String, Golden> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("golden safetensors");
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let (f, i) = match view.dtype() {
            safetensors::Dtype::F32 => (
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                vec![],
            ),
            safetensors::Dtype::I64 => (
                vec![],
                data.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            other => panic!("unexpected golden dtype {other:?}"),
        };
        out.insert(
            name,
            Golden {
                shape: view.shape().to_vec(),
                f32: f,
                i64: i,
            },
        );
    }
    out
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden json")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// `a` equals `b` within `rel` times `b`'s largest magnitude (at least 1); a NaN anywhere in
/// the difference fails.
pub fn assert_close_to_scale(a: &[f32], b: &[f32], rel: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0f32,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        );
    assert!(
        diff <= rel * scale,
        "{what}: max diff {diff} (scale {scale})"
    );
}

/// Run the burnish binary with `args`; returns the process output.
pub fn burnish(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_burnish"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .env_remove("RUST_LOG")
        .output()
        .expect("run burnish")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Copy a fixture model into a fresh temporary folder (for tests that damage files).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
}

/// The repository root (recipes use paths relative to it; tests run from it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Write `text` as a recipe in `dir` and return its path.
pub fn write_recipe(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// metrics.jsonl step records: (step, loss) in file order, and eval records.
/// (step, value) pairs.
pub type Series = Vec<(u64, f64)>;

/// Training losses and evaluation losses of a run, from its metrics.jsonl.
pub fn metrics(out: &Path) -> (Series, Series) {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let mut steps = Vec::new();
    let mut evals = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(l) = v.get("loss") {
            steps.push((v["step"].as_u64().unwrap(), l.as_f64().unwrap()));
        } else {
            evals.push((
                v["step"].as_u64().unwrap(),
                v["eval_loss"].as_f64().unwrap(),
            ));
        }
    }
    (steps, evals)
}

/// Tensors of a safetensors file as f32 (name -> values).
pub fn st_f32(path: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let vals = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n, vals)
        })
        .collect()
}

/// Run burnish with extra environment variables (and HF_* variables of this process removed).
pub fn burnish_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_burnish"));
    cmd.args(args)
        .env("RAYON_NUM_THREADS", "2")
        .env_remove("RUST_LOG");
    for v in [
        "HF_TOKEN",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_ENDPOINT",
        "HF_HUB_OFFLINE",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run burnish")
}

/// Every file of a folder, relative path -> bytes.
pub fn folder_bytes(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            out.insert(
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            );
        }
    }
    out
}

/// A tokenizer folder: the repository's one Qwen `tokenizer.json` (src/model/preset/) plus the
/// configs of `tests/fixtures/<name>/` (tokenizer, tokenizer-qwen2.5 or tokenizer-base).
pub fn tokenizer_folder(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("src/model/preset/tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join(name).join("tokenizer_config.json"),
        tmp.path().join("tokenizer_config.json"),
    )
    .unwrap();
    tmp
}

/// 48 pretokenized rows of varied length (6..26 ids in 3..1003), deterministic in `seed`,
/// written to `<dir>/rows.jsonl`.
pub fn pretokenized_rows(dir: &Path, seed: u64) -> PathBuf {
    let mut state = seed;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut text = String::new();
    for _ in 0..48 {
        let n = 6 + (next() % 20) as usize;
        let ids: Vec<u64> = (0..n).map(|_| 3 + next() % 1000).collect();
        text.push_str(&serde_json::json!({ "input_ids": ids }).to_string());
        text.push('\n');
    }
    let p = dir.join("rows.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

/// `burnish train recipes/demo.yaml` for `max_steps` steps into `out`, without intermediate
/// evaluation or merge, plus `extra` arguments; fails the test if the run fails. Returns the
/// training losses.
pub fn train_demo(out: &Path, max_steps: usize, extra: &[&str]) -> Series {
    let set_out = format!("output.dir={}", out.display());
    let set_steps = format!("train.max_steps={max_steps}");
    let mut args = vec![
        "train",
        "recipes/demo.yaml",
        "--set",
        &set_out,
        "--set",
        &set_steps,
        "--set",
        "train.eval_every=0",
        "--set",
        "output.merge=false",
    ];
    args.extend_from_slice(extra);
    let o = burnish(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    metrics(out).0
}

/// Wait until a run's metrics.jsonl shows step >= `step` (panics if the run ends first or
/// after two minutes).
pub fn wait_for_step(out: &Path, step: u64, child: &mut std::process::Child) {
    let start = std::time::Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(out.join("metrics.jsonl")) {
            let last = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["step"].as_u64())
                .max()
                .unwrap_or(0);
            if last >= step {
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("run ended before step {step}: {status}");
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "timeout waiting for step {step}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Segment ids of an attention row: packed examples of the given lengths, then `pad`
/// padding positions (segment -1).
pub fn segments(lengths: &[usize], pad: usize) -> Vec<i32> {
    let mut r: Vec<i32> = lengths
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| std::iter::repeat_n(i as i32, n))
        .collect();
    r.extend(std::iter::repeat_n(-1, pad));
    r
}

/// Gemma 2's chat template, as google/gemma-2-2b-it's tokenizer_config.json ships it: it
/// raises on a system message.
pub const GEMMA2_TEMPLATE: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";
