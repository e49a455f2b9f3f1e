//! TensorBoard files (checked against TensorBoard's own reader and against metrics.jsonl), the
//! plain progress log off a terminal, and the loss plot.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burnish::observe::tensorboard::{EventWhat, read_records};
use common::*;

/// tag -> [(step, value)] over every event file of a folder, in file order.
fn scalars(dir: &Path) -> BTreeMap<String, Vec<(i64, f32)>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut out: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for f in files {
        let events = read_records(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            matches!(events[0].what, Some(EventWhat::FileVersion(ref v)) if v == "brain.Event:2")
        );
        for e in events {
            if let Some(EventWhat::Summary(s)) = e.what {
                for v in s.value {
                    if let Some(x) = v.simple_value {
                        out.entry(v.tag).or_default().push((e.step, x));
                    }
                }
            }
        }
    }
    out
}

fn run_tb(out: &Path, extra: &[&str]) -> std::process::Output {
    let set = format!("output.dir={}", out.display());
    let mut args = vec![
        "train",
        "tests/fixtures/golden/tb-recipe.yaml",
        "--set",
        &set,
    ];
    args.extend(extra);
    burnish(&args)
}

#[test]
fn event_files_match_tensorboards_reader_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = run_tb(&out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = scalars(&out.join("tensorboard"));
    let golden = read_json(&fixtures().join("golden/tensorboard-reader.json"));
    for (tag, points) in golden["scalars"].as_object().unwrap() {
        let got = &ours[tag];
        let want: Vec<(i64, f64)> = points
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
            .collect();
        assert_eq!(
            got.iter().map(|p| p.0).collect::<Vec<_>>(),
            want.iter().map(|p| p.0).collect::<Vec<_>>(),
            "{tag}: steps"
        );
        if tag != "train/tokens_per_sec" {
            for ((_, g), (_, w)) in got.iter().zip(&want) {
                assert!(
                    ((*g as f64) - w).abs() <= 1e-4 * w.abs().max(1e-3),
                    "{tag}: {g} vs {w}"
                );
            }
        }
    }
    assert_eq!(ours.len(), golden["scalars"].as_object().unwrap().len());
    assert_eq!(golden["plugins"], serde_json::json!(["hparams", "text"]));
    // Every logged scalar equals metrics.jsonl (as f32).
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_i64().unwrap();
        for (key, tag) in [
            ("loss", "train/loss"),
            ("lr", "train/lr"),
            ("grad_norm", "train/grad_norm"),
            ("eval_loss", "eval/loss"),
        ] {
            if let Some(x) = v.get(key).and_then(|x| x.as_f64())
                && let Some((_, y)) = ours[tag].iter().find(|p| p.0 == step)
            {
                assert_eq!(*y, x as f32, "{tag} at {step}");
            }
        }
    }
    // The recipe is in the text plugin at step 0, with its output.dir override applied.
    let files: Vec<_> = std::fs::read_dir(out.join("tensorboard"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let events = read_records(&files[0]).unwrap();
    let text = events
        .iter()
        .find_map(|e| match &e.what {
            Some(EventWhat::Summary(s)) => s
                .value
                .iter()
                .find(|v| v.tag == "recipe")
                .and_then(|v| v.tensor.clone()),
            _ => None,
        })
        .expect("recipe text summary");
    let md = String::from_utf8(text.string_val[0].clone()).unwrap();
    assert!(
        md.contains("qwen2-tied") && md.contains(&out.display().to_string()),
        "{md}"
    );
    // Off a terminal: plain log lines, no bar, no colour codes.
    let err = stderr(&o);
    assert!(
        err.contains("step 2/6") && err.contains("eval at step 3"),
        "{err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escapes in a non-terminal log"
    );
}

#[test]
fn resumed_runs_continue_the_curves_without_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // Stop after 3 steps with checkpoints every 2: the run wrote step-3 metrics past its last
    // checkpoint only if interrupted without saving; SIGINT saves, max_steps shortens instead.
    let o = run_tb(
        &out,
        &["--set", "train.max_steps=3", "--set", "train.save_every=2"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Simulate a crash after step 3's logs but with the newest checkpoint at step 2.
    std::fs::remove_dir_all(out.join("checkpoints/step-000003")).unwrap();
    let o = run_tb(&out, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let all = scalars(&out.join("tensorboard"));
    assert_eq!(
        std::fs::read_dir(out.join("tensorboard")).unwrap().count(),
        2,
        "a resumed run adds its own file"
    );
    for (tag, points) in &all {
        let steps: Vec<i64> = points.iter().map(|p| p.0).collect();
        assert!(
            steps.windows(2).all(|w| w[0] < w[1]),
            "{tag}: steps {steps:?}"
        );
    }
    assert_eq!(
        all["train/loss"].iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![2, 4, 6]
    );
}

#[test]
fn tensorboard_failure_never_stops_training_and_plot_works() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    // A file where the TensorBoard folder should be: event files cannot be created.
    std::fs::write(out.join("tensorboard"), "not a folder").unwrap();
    let o = run_tb(&out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("TensorBoard") && stderr(&o).contains("continues"),
        "{}",
        stderr(&o)
    );
    assert!(out.join("adapter/adapter_model.safetensors").is_file());
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") || svg.contains("<svg"), "not SVG");
    for label in ["optimizer step", "train loss (smoothed)", "eval loss"] {
        assert!(svg.contains(label), "loss.svg lacks {label}");
    }
    std::fs::remove_file(out.join("loss.svg")).unwrap();
    let o = burnish(&["plot", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("loss.svg").is_file());
    let o = burnish(&["plot", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("metrics.jsonl"), "{}", stderr(&o));
}
