//! Exact resume: a run interrupted by SIGINT, or killed by SIGKILL at an arbitrary moment, and
//! resumed, ends with a bit-identical adapter and loss sequence to the uninterrupted run.
//! Plus the refusals around resuming.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn recipe(dir: &Path, out: &Path, rows: &Path, max_steps: usize, r: usize) -> std::path::PathBuf {
    let text = format!(
        r#"
model: {{base: tests/fixtures/models/qwen2-tied}}
lora: {{r: {r}, alpha: 16, dropout: 0.1, targets: all-linear}}
data:
  train: [{{path: {rows}, format: pretokenized}}]
  validation: {{split: 0.1}}
  seq_len: 48
  packing: true
  shuffle: true
train:
  max_steps: {max_steps}
  micro_batch_size: 2
  grad_accum: 2
  optimizer: {{name: adamw, lr: 5.0e-3, weight_decay: 0.01}}
  scheduler: {{name: cosine, warmup_steps: 3}}
  max_grad_norm: 1.0
  seed: 7
  device: cpu
  eval_every: 5
  save_every: 2
  keep_last: 2
output: {{dir: {out}}}
logging: {{every: 1, tensorboard: false}}
"#,
        rows = rows.display(),
        out = out.display()
    );
    write_recipe(dir, &format!("recipe-{max_steps}-{r}.yaml"), &text)
}

fn metrics_text(out: &Path) -> Vec<serde_json::Value> {
    // Everything but timing fields must match exactly.
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.remove("elapsed_s");
                o.remove("tokens_per_sec");
            }
            v
        })
        .collect()
}

fn spawn_train(recipe: &Path, extra: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_burnish"))
        .arg("train")
        .arg(recipe)
        .args(extra)
        .env("RAYON_NUM_THREADS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait until metrics.jsonl shows step >= `step`.
fn wait_for_step(out: &Path, step: u64, child: &mut std::process::Child) {
    let start = Instant::now();
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
            start.elapsed() < Duration::from_secs(120),
            "timeout waiting for step {step}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn kill(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn interrupted_runs_resume_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = pretokenized_rows(tmp.path(), 0x9E37_79B9_7F4A_7C15);
    let steps = 30;

    // The reference: one uninterrupted run.
    let ref_out = tmp.path().join("ref");
    let o = burnish(&[
        "train",
        recipe(tmp.path(), &ref_out, &rows, steps, 8)
            .to_str()
            .unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want_metrics = metrics_text(&ref_out);
    let want_adapter = std::fs::read(ref_out.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(
        want_metrics
            .iter()
            .filter(|v| v.get("loss").is_some())
            .count(),
        steps
    );

    // SIGINT: the step in flight finishes, a checkpoint is saved, exit code 130.
    let out = tmp.path().join("sigint");
    let r = recipe(tmp.path(), &out, &rows, steps, 8);
    let mut child = spawn_train(&r, &[]);
    wait_for_step(&out, 7, &mut child);
    kill(&child, "-INT");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(std::fs::read_dir(out.join("checkpoints")).unwrap().count() >= 1);
    let o = burnish(&["train", r.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        metrics_text(&out),
        want_metrics,
        "SIGINT + resume: metrics differ"
    );
    assert_eq!(
        std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(),
        want_adapter,
        "SIGINT + resume: adapter differs"
    );

    // SIGKILL at an arbitrary step (possibly while a checkpoint is being written), twice.
    let out = tmp.path().join("sigkill");
    let r = recipe(tmp.path(), &out, &rows, steps, 8);
    let mut child = spawn_train(&r, &[]);
    wait_for_step(&out, 5, &mut child);
    kill(&child, "-KILL");
    child.wait().unwrap();
    let mut child = spawn_train(&r, &["--resume"]);
    wait_for_step(&out, 17, &mut child);
    kill(&child, "-KILL");
    child.wait().unwrap();
    let o = burnish(&["train", r.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        metrics_text(&out),
        want_metrics,
        "SIGKILL + resume: metrics differ"
    );
    assert_eq!(
        std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(),
        want_adapter,
        "SIGKILL + resume: adapter differs"
    );
    // keep_last: 2 complete checkpoints remain.
    let kept = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("step-")
        })
        .count();
    assert_eq!(kept, 2);
}

#[test]
fn resume_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = pretokenized_rows(tmp.path(), 0x9E37_79B9_7F4A_7C15);
    let out = tmp.path().join("run");
    let r = recipe(tmp.path(), &out, &rows, 6, 8);
    let o = burnish(&["train", r.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Again without --resume: refused, naming the flags.
    let o = burnish(&["train", r.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--resume") && stderr(&o).contains("--overwrite"),
        "{}",
        stderr(&o)
    );

    // A changed LoRA rank: refused, naming the field.
    let r4 = recipe(tmp.path(), &out, &rows, 6, 4);
    let o = burnish(&["train", r4.to_str().unwrap(), "--resume"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("lora.r (checkpoint: 8, recipe: 4)"),
        "{}",
        stderr(&o)
    );

    // More steps: allowed, continues from step 6.
    let r10 = recipe(tmp.path(), &out, &rows, 10, 8);
    let o = burnish(&["train", r10.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (steps, _) = metrics(&out);
    assert_eq!(
        steps.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );

    // A damaged newest checkpoint is skipped with a warning; the previous one is used.
    let newest = out.join("checkpoints/step-000010");
    let f = newest.join("adapter_model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&f, bytes).unwrap();
    let r12 = recipe(tmp.path(), &out, &rows, 12, 8);
    let o = burnish(&["train", r12.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("step-000010") && stderr(&o).contains("checksum"),
        "{}",
        stderr(&o)
    );

    // --overwrite starts over.
    let o = burnish(&["train", r.to_str().unwrap(), "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (steps, _) = metrics(&out);
    assert_eq!(steps.len(), 6);
}
