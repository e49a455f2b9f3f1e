//! Exact resume: a run interrupted by SIGINT, or killed by SIGKILL at an arbitrary moment, and
//! resumed, ends with a bit-identical adapter and loss sequence to the uninterrupted run.
//! Plus the refusals around resuming, and the best checkpoint and early stopping (decided per
//! evaluation as transformers decides them).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

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
logging: {{every: 1, tensorboard: true}}
"#,
        rows = rows.display(),
        out = out.display()
    );
    write_recipe(dir, &format!("recipe-{max_steps}-{r}.yaml"), &text)
}

/// metrics.jsonl as written, but for the timing fields: every other character must match,
/// so a kept line re-serialised with a drifted float fails.
fn metrics_text(out: &Path) -> Vec<String> {
    let timing = regex::Regex::new(r#","(elapsed_s|tokens_per_sec)":[^,}]*"#).unwrap();
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| timing.replace_all(l, "").into_owned())
        .collect()
}

/// The checkpoints both runs kept are byte-identical, but for their timing and file
/// checksums (which differ with the timing).
fn assert_same_checkpoints(want: &Path, got: &Path, what: &str) {
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(want), names(got), "{what}: checkpoint folders");
    for step in names(want) {
        let (a, b) = (
            want.join("checkpoints").join(&step),
            got.join("checkpoints").join(&step),
        );
        for f in [
            "adapter_model.safetensors",
            "adapter_config.json",
            "optimizer.safetensors",
        ] {
            assert!(
                std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
                "{what}: {step}/{f} differs"
            );
        }
        let state = |d: &Path| {
            let mut v = read_json(&d.join("trainer_state.json"));
            v.as_object_mut().unwrap().remove("elapsed_s");
            v
        };
        assert_eq!(state(&a), state(&b), "{what}: {step}/trainer_state.json");
    }
}

/// Every TensorBoard scalar's steps, over all event files: strictly increasing (no repeats).
fn assert_tensorboard_without_repeats(out: &Path, what: &str) {
    use burnish::observe::tensorboard::{EventWhat, read_records};
    let mut files: Vec<_> = std::fs::read_dir(out.join("tensorboard"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut steps: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for f in files {
        for e in read_records(&f).unwrap() {
            if let Some(EventWhat::Summary(s)) = e.what {
                for v in s.value {
                    if v.simple_value.is_some() {
                        steps.entry(v.tag).or_default().push(e.step);
                    }
                }
            }
        }
    }
    assert!(steps.contains_key("train/loss"), "{what}: no train/loss");
    for (tag, s) in &steps {
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "{what}: {tag} steps {s:?}"
        );
    }
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
            .filter(|l| l.contains("\"loss\""))
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
    assert_same_checkpoints(&ref_out, &out, "SIGINT + resume");
    assert_tensorboard_without_repeats(&out, "SIGINT + resume");

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
    assert_same_checkpoints(&ref_out, &out, "SIGKILL + resume");
    assert_tensorboard_without_repeats(&out, "SIGKILL + resume");
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

/// Resuming a finished run changes nothing; two identical runs write identical files; the
/// temporary folders of killed writes are cleared; a new run drops the TensorBoard events of
/// a run that was killed before its first checkpoint.
#[test]
fn finished_runs_stay_as_they_are_and_leftovers_go() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = pretokenized_rows(tmp.path(), 0x5151);
    let out = tmp.path().join("run");
    let r = recipe(tmp.path(), &out, &rows, 6, 4);
    let o = burnish(&["train", r.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let snapshot = |out: &Path| {
        let mut files = folder_bytes(out);
        for sub in ["tensorboard", "adapter", "checkpoints/step-000006"] {
            for (k, v) in folder_bytes(&out.join(sub)) {
                files.insert(format!("{sub}/{k}"), v);
            }
        }
        files
    };
    let before = snapshot(&out);
    let o = burnish(&["train", r.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("final eval loss"), "{}", stdout(&o));
    let after = snapshot(&out);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (k, v) in &before {
        assert!(after[k] == *v, "resuming a finished run changed {k}");
    }

    // The same run again, elsewhere: the same bytes in every weight and optimizer file.
    let out2 = tmp.path().join("run2");
    let r2 = recipe(tmp.path(), &out2, &rows, 6, 4);
    let o = burnish(&["train", r2.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_checkpoints(&out, &out2, "identical runs");

    // Leftovers of killed writes (PID 4194304 is above Linux's pid_max: no such process).
    let leftovers = [
        out2.join(".merged.partial-4194304"),
        out2.join(".adapter.partial-4194304"),
        out2.join("checkpoints/.step-000004.partial-4194304"),
    ];
    for d in &leftovers {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("model.safetensors"), b"partial").unwrap();
    }
    let o = burnish(&["train", r2.to_str().unwrap(), "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for d in &leftovers {
        assert!(!d.exists(), "{} was left behind", d.display());
    }

    // A run killed before its first checkpoint left an event file; the next run drops it.
    let out3 = tmp.path().join("run3");
    std::fs::create_dir_all(out3.join("tensorboard")).unwrap();
    let stale = out3.join("tensorboard/events.out.tfevents.1.host.1.0");
    std::fs::copy(
        std::fs::read_dir(out.join("tensorboard"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
        &stale,
    )
    .unwrap();
    let r3 = recipe(tmp.path(), &out3, &rows, 6, 4);
    let o = burnish(&["train", r3.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stale.exists());
    assert_tensorboard_without_repeats(&out3, "after a stale event file");
}

/// Train the `recipe` run with `edit` applied to its text, kill a copy at step 7 and resume it:
/// the resumed run ends with the uninterrupted run's adapter, checkpoints and metrics.
/// Returns the temporary folder and the resumed run's output folder.
fn killed_and_resumed_matches(
    what: &str,
    edit: &dyn Fn(String) -> String,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let rows = pretokenized_rows(tmp.path(), 0x2545_F491_4F6C_DD1D);
    let steps = 24;
    let with_edit = |out: &Path| -> std::path::PathBuf {
        let r = recipe(tmp.path(), out, &rows, steps, 8);
        let text = edit(std::fs::read_to_string(&r).unwrap());
        std::fs::write(&r, text).unwrap();
        r
    };
    let ref_out = tmp.path().join("ref");
    let o = burnish(&["train", with_edit(&ref_out).to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    let out = tmp.path().join("killed");
    let r = with_edit(&out);
    let mut child = spawn_train(&r, &[]);
    wait_for_step(&out, 7, &mut child);
    kill(&child, "-KILL");
    child.wait().unwrap();
    let o = burnish(&["train", r.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metrics_text(&out), metrics_text(&ref_out));
    assert_eq!(
        std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(ref_out.join("adapter/adapter_model.safetensors")).unwrap()
    );
    assert_same_checkpoints(&ref_out, &out, what);
    (tmp, out)
}

/// Gradient checkpointing with dropout and NEFTune noise: the recomputed layers draw the same
/// masks, and a run killed and resumed ends with the uninterrupted run's adapter, checkpoints
/// and metrics.
#[test]
fn checkpointed_runs_with_dropout_resume_bit_for_bit() {
    let _ = killed_and_resumed_matches("checkpointing + dropout", &|text| {
        text.replace(
            "  keep_last: 2\n",
            "  keep_last: 2\n  gradient_checkpointing: true\n  neftune_noise_alpha: 5.0\n",
        )
    });
}

/// DoRA with dropout: the magnitudes and their AdamW moments are checkpointed and restored
/// with the factors, and the resumed run is the uninterrupted one bit for bit.
#[test]
fn dora_runs_resume_bit_for_bit() {
    let (_tmp, out) = killed_and_resumed_matches("DoRA + dropout", &|text| {
        text.replace("targets: all-linear}", "targets: all-linear, dora: true}")
    });
    let cfg = read_json(&out.join("adapter/adapter_config.json"));
    assert_eq!(cfg["use_dora"], serde_json::json!(true));
    let tensors = st_f32(&out.join("adapter/adapter_model.safetensors"));
    assert_eq!(
        tensors
            .keys()
            .filter(|k| k.ends_with("lora_magnitude_vector"))
            .count(),
        14
    );
}

/// The steps and losses of a run's evaluations.
fn evals(out: &Path) -> Vec<(u64, f64)> {
    metrics(out).1
}

/// `load_best_model_at_end`: every evaluation that lowers the best loss is checkpointed, that
/// checkpoint survives `keep_last: 1`, and `adapter/` holds its weights, not the last step's;
/// a run killed and resumed makes the same choice (the best and the patience count live in
/// each checkpoint's trainer state).
#[test]
fn the_best_evaluation_becomes_the_adapter() {
    let (_tmp, out) = killed_and_resumed_matches("load_best_model_at_end", &|text| {
        text.replace(
            "  eval_every: 5\n  save_every: 2\n  keep_last: 2\n",
            "  eval_every: 2\n  save_every: 100\n  keep_last: 1\n  load_best_model_at_end: true\n",
        )
    });
    let evals = evals(&out);
    assert_eq!(evals.len(), 12, "{evals:?}");
    let (best_step, best_loss) = evals
        .iter()
        .copied()
        .fold((0, f64::INFINITY), |b, e| if e.1 < b.1 { e } else { b });
    // The recipe overfits its 10% validation split: the best evaluation is not the last.
    assert!(best_step < 24, "{evals:?}");
    let best_dir = out.join(format!("checkpoints/step-{best_step:06}"));
    let last_dir = out.join("checkpoints/step-000024");
    let mut kept: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [format!("step-{best_step:06}"), "step-000024".to_string()]
    );
    assert_eq!(
        std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(best_dir.join("adapter_model.safetensors")).unwrap(),
        "adapter/ is not the best checkpoint's"
    );
    assert_ne!(
        std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(last_dir.join("adapter_model.safetensors")).unwrap()
    );
    let state = read_json(&last_dir.join("trainer_state.json"));
    assert_eq!(state["best_step"], serde_json::json!(best_step));
    assert_eq!(state["best_eval_loss"].as_f64(), Some(best_loss));
    // `eval` of the adapter reproduces the best evaluation.
    let o = burnish(&[
        "train",
        out.parent()
            .unwrap()
            .join("recipe-24-8.yaml")
            .to_str()
            .unwrap(),
        "--resume",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!(
            "best eval loss {best_loss:.4} (perplexity {:.2}); step {best_step}'s weights are in adapter/",
            best_loss.exp()
        )),
        "{}",
        stdout(&o)
    );
}

/// `early_stopping_patience`: with a threshold no evaluation can beat, the run stops at the
/// `patience`-th evaluation after the first, saves that step, writes its adapter, and a resumed
/// run trains no further and changes nothing.
#[test]
fn patience_ends_the_run_and_resuming_it_trains_no_more() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = pretokenized_rows(tmp.path(), 0x5151);
    let out = tmp.path().join("run");
    let r = recipe(tmp.path(), &out, &rows, 30, 4);
    let text = std::fs::read_to_string(&r).unwrap().replace(
        "  eval_every: 5\n",
        "  eval_every: 2\n  early_stopping_patience: 2\n  early_stopping_threshold: 100.0\n",
    );
    std::fs::write(&r, text).unwrap();
    let o = burnish(&["train", r.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("stopped early at step 6"),
        "{}",
        stdout(&o)
    );
    let (steps, evals) = metrics(&out);
    assert_eq!(
        steps.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 4, 6]);
    let last = out.join("checkpoints/step-000006");
    let state = read_json(&last.join("trainer_state.json"));
    assert_eq!(state["stopped_early"], serde_json::json!(true));
    assert_eq!(state["evals_without_improvement"], serde_json::json!(2));
    assert_eq!(
        std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(last.join("adapter_model.safetensors")).unwrap()
    );
    let before = folder_bytes(&out);
    let adapter_before = folder_bytes(&out.join("adapter"));
    let o = burnish(&["train", r.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stopped early at step 6"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        folder_bytes(&out),
        before,
        "resuming changed the run folder"
    );
    assert_eq!(folder_bytes(&out.join("adapter")), adapter_before);
    assert_eq!(metrics(&out).0.len(), 6);
}

/// The best-checkpoint and early-stopping decisions, evaluation by evaluation, equal
/// transformers' `EarlyStoppingCallback` and `Trainer._determine_best_metric` on the same
/// values (`scripts/early_stopping_reference.py`; exact: the same comparisons of the same
/// f64s), with the direction (`greater_is_better`) derived from the metric's name as
/// transformers derives it.
#[test]
fn early_stopping_follows_transformers() {
    use burnish::train::best::{EvalRule, EvalWatch};
    let golden = read_json(&fixtures().join("golden/early-stopping.json"));
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let train = burnish::recipe::TrainSection {
            load_best_model_at_end: true,
            early_stopping_patience: Some(case["patience"].as_u64().unwrap() as usize),
            early_stopping_threshold: case["threshold"].as_f64().unwrap(),
            metric_for_best_model: case["metric_for_best_model"].as_str().unwrap().into(),
            ..Default::default()
        };
        let rule = EvalRule::from_recipe(&train);
        assert_eq!(
            Some(rule.greater_is_better),
            case["greater_is_better"].as_bool(),
            "{name}"
        );
        let mut watch = EvalWatch::default();
        for e in case["evaluations"].as_array().unwrap() {
            let step = e["step"].as_u64().unwrap() as usize;
            let v = watch.observe(e["value"].as_f64().unwrap(), step, &rule);
            let what = format!("{name}, step {step}");
            assert_eq!(v.save_best, e["new_best"].as_bool().unwrap(), "{what}");
            assert_eq!(v.stop, e["stop"].as_bool().unwrap(), "{what}");
            assert_eq!(watch.best, e["best"].as_f64(), "{what}");
            assert_eq!(
                watch.best_step.map(|s| s as u64),
                e["best_step"].as_u64(),
                "{what}"
            );
            assert_eq!(
                watch.without_improvement as u64,
                e["without_improvement"].as_u64().unwrap(),
                "{what}"
            );
        }
    }
}

/// `train.eval_on_start` records a baseline at step 0 and decides nothing: the training and
/// the other evaluations are bit for bit those of the same run without it, and it is no
/// candidate for the best checkpoint. With `greater_is_better` on the loss the untrained
/// step 0 (the highest loss) would be the best if it counted, and it has no checkpoint.
#[test]
fn eval_on_start_records_a_baseline_that_decides_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (with, without) = (tmp.path().join("with"), tmp.path().join("without"));
    let common = [
        "--set",
        "train.eval_every=2",
        "--set",
        "train.load_best_model_at_end=true",
        "--set",
        "train.greater_is_better=true",
    ];
    let mut args = common.to_vec();
    args.extend(["--set", "train.eval_on_start=true"]);
    let steps_with = train_demo(&with, 4, &args);
    let steps_without = train_demo(&without, 4, &common);
    assert_eq!(steps_with, steps_without);
    let (_, evals_with) = metrics(&with);
    let (_, evals_without) = metrics(&without);
    assert_eq!(evals_with[0].0, 0, "{evals_with:?}");
    assert_eq!(evals_with[1..], evals_without[..]);
    assert_eq!(
        evals_with.iter().map(|e| e.0).collect::<Vec<_>>(),
        [0, 2, 4]
    );
    assert!(
        evals_with[0].1 > evals_with[1].1 && evals_with[0].1 > evals_with[2].1,
        "the baseline must have the highest loss for this test to mean anything: {evals_with:?}"
    );
    let state = read_json(&with.join("checkpoints/step-000004/trainer_state.json"));
    assert_eq!(state["best_step"], serde_json::json!(2));
    assert_eq!(
        std::fs::read(with.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(with.join("checkpoints/step-000002/adapter_model.safetensors")).unwrap()
    );
}

/// `evals_per_epoch` and `saves_per_epoch` (axolotl's names): evaluations every
/// `ceil(steps per epoch / N)` steps, checkpoints at each epoch's end (transformers'
/// `eval_strategy`/`save_strategy: epoch` with 1), and a recipe setting both a count and a step
/// interval is refused.
#[test]
fn evaluations_and_checkpoints_per_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = pretokenized_rows(tmp.path(), 3);
    let out = tmp.path().join("out");
    let r = recipe(tmp.path(), &out, &rows, 1, 4);
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("  max_steps: 1\n", "  epochs: 2\n");
    let per_epoch = text.replace(
        "  eval_every: 5\n  save_every: 2\n  keep_last: 2\n",
        "  evals_per_epoch: 2\n  saves_per_epoch: 1\n  keep_last: 10\n",
    );
    std::fs::write(&r, &per_epoch).unwrap();
    let o = burnish(&["train", r.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let records: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps = records.iter().filter(|v| v.get("loss").is_some()).count() as u64;
    let spe = records
        .iter()
        .find(|v| v.get("epoch").and_then(|e| e.as_f64()) == Some(1.0))
        .map(|v| v["step"].as_u64().unwrap())
        .expect("a step ending the first epoch");
    assert_eq!(steps, 2 * spe);
    let every = spe.div_ceil(2);
    let mut want: Vec<u64> = (1..)
        .map(|k| k * every)
        .take_while(|&s| s < steps)
        .collect();
    want.push(steps);
    let evals: Vec<u64> = metrics(&out).1.iter().map(|e| e.0).collect();
    assert_eq!(
        evals, want,
        "evaluations every {every} of {spe} steps per epoch"
    );
    let mut saved: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    saved.sort();
    assert_eq!(
        saved,
        vec![format!("step-{spe:06}"), format!("step-{:06}", 2 * spe)]
    );
    // Both a count and a step interval: refused, naming the keys.
    let both = per_epoch.replace("  keep_last: 10\n", "  keep_last: 10\n  eval_every: 3\n");
    std::fs::write(&r, both).unwrap();
    let o = burnish(&["train", r.to_str().unwrap(), "--overwrite"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("train.evals_per_epoch: and train.eval_every are both set"),
        "{}",
        stderr(&o)
    );
}
