//! Preference tuning (DPO, ORPO): parity with TRL for three optimizer steps from a fixed adapter
//! and TRL's tokenization of text and conversational pairs (scripts/make_preference_goldens.py),
//! the first DPO step of a fresh adapter, learning on the
//! shipped preference set, bitwise resume after SIGKILL, data parallel, gradient checkpointing
//! and QLoRA against the plain run, and located errors for bad rows and recipe values.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// Every step record of a run, as JSON.
fn step_records(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .collect()
}

fn eval_records(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("eval_loss").is_some())
        .collect()
}

/// A recipe on a fixture model with pretokenized pairs; `train_extra` lines go under `train:`.
#[allow(clippy::too_many_arguments)]
fn recipe(
    dir: &Path,
    name: &str,
    model: &str,
    pairs: &Path,
    out: &Path,
    data_extra: &str,
    lora_extra: &str,
    train_extra: &str,
) -> PathBuf {
    let text = format!(
        r#"
model: {{base: tests/fixtures/models/{model}, dtype: f32}}
lora:
  r: 8
  alpha: 16
  dropout: 0.0
  targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
{lora_extra}
data:
  train: [{{path: {pairs}, format: preference}}]
  validation: null
  seq_len: 64
  packing: false
  shuffle: false
{data_extra}
train:
  grad_accum: 1
  scheduler: {{name: constant, warmup_steps: 0}}
  max_grad_norm: 1.0
  seed: 1
  device: cpu
  eval_every: 0
  save_every: 0
{train_extra}
output: {{dir: {out}}}
logging: {{every: 1, tensorboard: false}}
"#,
        pairs = pairs.display(),
        out = out.display()
    );
    write_recipe(dir, name, &text)
}

fn train_ok(recipe: &Path, extra: &[&str]) {
    let mut args = vec!["train", recipe.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = burnish(&args);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Loss, log-probabilities and rewards of every step within 1e-5 relative of TRL 1.16's
/// (accuracies exactly, the gradient norm 1e-4; rewards and margins relative to the
/// log-probabilities they are differences of).
#[test]
fn three_steps_match_trl() {
    let golden = read_json(&fixtures().join("golden/preference.json"));
    let pairs = fixtures().join("golden/preference-pairs.jsonl");
    let tmp = tempfile::tempdir().unwrap();
    for (name, case) in golden["cases"].as_object().unwrap() {
        let out = tmp.path().join(name);
        let adapter = fixtures()
            .join("lora")
            .join(case["adapter"].as_str().unwrap());
        let lora_extra = format!("  init_from: {}", adapter.display());
        let section = if name == "orpo" {
            format!("  objective: orpo\n  orpo: {{beta: {}}}", case["beta"])
        } else if name == "simpo" {
            format!(
                "  objective: simpo\n  simpo: {{beta: {}, gamma: {}, cpo_alpha: {}}}",
                case["beta"], case["gamma"], case["cpo_alpha"]
            )
        } else if name.starts_with("cpo") {
            format!(
                "  objective: cpo\n  cpo: {{beta: {}, loss_type: {}, label_smoothing: {}, cpo_alpha: {}}}",
                case["beta"],
                case["loss_type"].as_str().unwrap(),
                case["label_smoothing"],
                case["cpo_alpha"]
            )
        } else {
            let reference = match case["reference"].as_str().unwrap() {
                "adapter" => adapter.display().to_string(),
                _ => "base".into(),
            };
            // Optional keys; a list of losses is written as YAML's flow list (JSON's form).
            let optional = |key: &str| {
                case.get(key)
                    .map(|v| format!(", {key}: {v}"))
                    .unwrap_or_default()
            };
            let loss_type = match &case["loss_type"] {
                serde_json::Value::String(name) => name.clone(),
                list => list.to_string(),
            };
            format!(
                "  objective: dpo\n  dpo: {{beta: {}, loss_type: {loss_type}, label_smoothing: {}{}{}{}{}{}, reference: {reference}}}",
                case["beta"],
                case["label_smoothing"],
                optional("discopop_tau"),
                optional("loss_weights"),
                optional("f_divergence_type"),
                optional("f_alpha_divergence_coef"),
                optional("ld_alpha"),
            )
        };
        let train_extra = format!(
            "{section}\n  max_steps: 3\n  micro_batch_size: {}\n  optimizer: {{name: adamw, lr: {}, weight_decay: 0.0}}",
            case["micro_batch_size"], case["lr"]
        );
        // TRL's ORPO NLL covers the prompt too.
        let data_extra = if name == "orpo" {
            "  train_on_inputs: true"
        } else {
            ""
        };
        let r = recipe(
            tmp.path(),
            &format!("{name}.yaml"),
            case["model"].as_str().unwrap(),
            &pairs,
            &out,
            data_extra,
            &lora_extra,
            &train_extra,
        );
        train_ok(&r, &[]);
        let ours = step_records(&out);
        let want = case["steps"].as_array().unwrap();
        assert_eq!(ours.len(), want.len(), "{name}");
        for (i, (o, w)) in ours.iter().zip(want).enumerate() {
            for (key, wv) in w.as_object().unwrap() {
                let (a, b) = (o[key].as_f64().unwrap(), wv.as_f64().unwrap());
                // The gradient norm (not among the issue's quantities) sums f32 gradients of
                // every factor in a different order: 1e-4. Rewards are differences of f32
                // log-probability sums (policy minus reference, times beta), margins of
                // rewards, ORPO's log odds of mean log-probabilities: 1e-5 relative to those
                // operands, whose last bits both sides round differently.
                let g = |k: &str| w[k].as_f64().unwrap().abs();
                let beta = case["beta"].as_f64().unwrap();
                let scale = match key.as_str() {
                    "rewards/chosen" if name != "orpo" => beta * g("logps/chosen"),
                    "rewards/rejected" if name != "orpo" => beta * g("logps/rejected"),
                    "rewards/margins" if name != "orpo" => {
                        beta * g("logps/chosen").max(g("logps/rejected"))
                    }
                    "rewards/margins" => g("rewards/chosen").max(g("rewards/rejected")),
                    "log_odds_chosen" => g("logps/chosen"),
                    _ => 0.0,
                };
                let b_scale = b.abs().max(scale);
                let tol = if key == "grad_norm" { 1e-4 } else { 1e-5 };
                if key == "rewards/accuracies" {
                    assert_eq!(a, b, "{name} step {}: {key}", i + 1);
                } else {
                    assert!(
                        (a - b).abs() <= tol * b_scale,
                        "{name} step {}: {key} {a} vs TRL {b}",
                        i + 1
                    );
                }
            }
        }
    }
}

/// `n` random pairs of pretokenized ids (prompt 3..10, completions 2..9 tokens).
fn random_pairs(dir: &Path, n: usize, seed: u64) -> PathBuf {
    let mut state = seed;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut text = String::new();
    for _ in 0..n {
        let mut ids = |lo: u64, span: u64| -> Vec<u64> {
            let len = lo + next() % span;
            (0..len).map(|_| 3 + next() % 1000).collect()
        };
        let (p, c, r) = (ids(3, 8), ids(2, 8), ids(2, 8));
        text.push_str(&serde_json::json!({"prompt": p, "chosen": c, "rejected": r}).to_string());
        text.push('\n');
    }
    let path = dir.join(format!("pairs-{seed}.jsonl"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A fresh adapter (B = 0) is the reference policy exactly: loss ln 2, rewards and margins 0.
/// Also with a quantized (QLoRA) base, where policy and reference share the quantized weights,
/// and with `dpo.reference` an adapter folder that the run also starts from.
#[test]
fn first_dpo_step_of_a_fresh_adapter_is_ln2() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = random_pairs(tmp.path(), 8, 5);
    // The reference may also be an adapter folder: starting from that same adapter, the
    // policy is the reference again.
    let adapter = fixtures().join("lora/preference-qwen2");
    let same_adapter = format!("train.dpo.reference={}", adapter.display());
    let init = format!("lora.init_from={}", adapter.display());
    for (name, sets) in [
        ("f32", vec![]),
        ("qlora", vec!["model.quantize={bits: 8}"]),
        (
            "reference-adapter",
            vec![same_adapter.as_str(), init.as_str()],
        ),
    ] {
        let out = tmp.path().join(name);
        let r = recipe(
            tmp.path(),
            &format!("{name}.yaml"),
            "qwen2-tied",
            &pairs,
            &out,
            "",
            "",
            "  objective: dpo\n  dpo: {beta: 0.1}\n  max_steps: 2\n  micro_batch_size: 4\n  optimizer: {name: adamw, lr: 1.0e-2}",
        );
        let extra: Vec<&str> = sets.iter().flat_map(|s| ["--set", s]).collect();
        train_ok(&r, &extra);
        let steps = step_records(&out);
        let first = &steps[0];
        let loss = first["loss"].as_f64().unwrap();
        assert!(
            (loss - std::f64::consts::LN_2).abs() < 1e-12,
            "{name}: first loss {loss}"
        );
        for key in ["rewards/margins", "rewards/chosen", "rewards/rejected"] {
            assert_eq!(first[key].as_f64().unwrap(), 0.0, "{name}: {key}");
        }
        assert_eq!(first["rewards/accuracies"].as_f64().unwrap(), 0.0);
        // The step moved the adapter: the policy leaves the reference.
        assert_ne!(steps[1]["rewards/margins"].as_f64().unwrap(), 0.0, "{name}");
    }
}

/// Six steps of a shipped demo recipe into `out` (no evaluation): its step records.
fn six_demo_steps(recipe: &str, out: &Path) -> Vec<serde_json::Value> {
    let set_out = format!("output.dir={}", out.display());
    train_ok(
        Path::new(recipe),
        &[
            "--set",
            &set_out,
            "--set",
            "train.max_steps=6",
            "--set",
            "train.eval_every=0",
        ],
    );
    let steps = step_records(out);
    assert_eq!(steps.len(), 6, "{recipe}");
    steps
}

/// A short DPO run of the shipped demo recipe on datasets/preference-mini.jsonl: the held-out
/// pairs' `eval_rewards/accuracies` goes from 0 (fresh adapter: no pair strictly preferred)
/// to at least 0.5 + 0.3. ORPO's and SimPO's recipes train too, with their own metrics.
#[test]
fn dpo_learns_the_shipped_preferences() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dpo");
    let set_out = format!("output.dir={}", out.display());
    train_ok(
        Path::new("recipes/dpo-demo.yaml"),
        &["--set", &set_out, "--set", "train.eval_every=0"],
    );
    let evals = eval_records(&out);
    let last = evals.last().unwrap();
    let acc = last["eval_rewards/accuracies"].as_f64().unwrap();
    let margin = last["eval_rewards/margins"].as_f64().unwrap();
    eprintln!("dpo-demo held-out: accuracy {acc}, margin {margin}");
    assert!(acc >= 0.5 + 0.3, "held-out accuracy {acc}");
    assert!(margin > 0.0, "held-out margin {margin}");
    let steps = step_records(&out);
    assert_eq!(steps[0]["rewards/accuracies"].as_f64().unwrap(), 0.0);
    // The model card reports the objective and its metrics.
    let card = std::fs::read_to_string(out.join("adapter/README.md")).unwrap();
    assert!(card.contains("objective: dpo"), "{card}");
    assert!(card.contains("eval_rewards/accuracies"), "{card}");
    // exp(DPO loss) is no perplexity: the card must not call it one.
    assert!(!card.contains("perplexity"), "{card}");

    let out = tmp.path().join("orpo");
    let steps = six_demo_steps("recipes/orpo-demo.yaml", &out);
    for key in [
        "nll_loss",
        "log_odds_ratio",
        "log_odds_chosen",
        "rewards/margins",
    ] {
        assert!(steps[5][key].as_f64().unwrap().is_finite(), "{key}");
    }
    let e = eval_records(&out);
    assert!(e.last().unwrap()["eval_log_odds_ratio"].is_f64());

    let out = tmp.path().join("simpo");
    let steps = six_demo_steps("recipes/simpo-demo.yaml", &out);
    for key in ["nll_loss", "rewards/margins", "logps/chosen"] {
        assert!(steps[5][key].as_f64().unwrap().is_finite(), "{key}");
    }
    let card = std::fs::read_to_string(out.join("adapter/README.md")).unwrap();
    assert!(card.contains("objective: simpo"), "{card}");
}

/// Data parallel (two CPU replicas, an odd micro-batch split between them) and gradient
/// checkpointing give the plain run's losses and metrics, with LoRA dropout on: 1e-5 relative
/// (the replicas exchange f32 sums; rewards relative to the log-probabilities they are
/// differences of).
#[test]
fn data_parallel_and_checkpointing_match_the_plain_run() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = random_pairs(tmp.path(), 20, 9);
    let run = |name: &str, objective: &str, extra: &[&str]| -> Vec<serde_json::Value> {
        let out = tmp.path().join(name);
        let r = recipe(
            tmp.path(),
            &format!("{name}.yaml"),
            "qwen2-tied",
            &pairs,
            &out,
            "",
            "",
            &format!(
                "  objective: {objective}\n  max_steps: 4\n  micro_batch_size: 3\n  optimizer: {{name: adamw, lr: 1.0e-2}}"
            ),
        );
        let mut args = vec!["--set", "lora.dropout=0.1", "--set", "data.shuffle=true"];
        if objective == "simpo" {
            // With CPO's NLL term, so its window normalisation is exchanged too.
            args.extend(["--set", "train.simpo.cpo_alpha=0.5"]);
        }
        args.extend_from_slice(extra);
        train_ok(&r, &args);
        step_records(&out)
    };
    for objective in ["dpo", "orpo", "simpo", "cpo"] {
        let plain = run(&format!("{objective}-plain"), objective, &[]);
        let dp = run(
            &format!("{objective}-dp"),
            objective,
            &["--set", "train.devices=[cpu, cpu]"],
        );
        let ckpt = run(
            &format!("{objective}-ckpt"),
            objective,
            &["--set", "train.gradient_checkpointing=true"],
        );
        for (what, other) in [("data parallel", &dp), ("checkpointing", &ckpt)] {
            assert_eq!(other.len(), plain.len());
            for (i, (a, b)) in other.iter().zip(&plain).enumerate() {
                // Rewards relative to the log-probabilities they are differences of.
                let logp = b["logps/chosen"].as_f64().unwrap().abs();
                for key in [
                    "loss",
                    "grad_norm",
                    "logps/chosen",
                    "logps/rejected",
                    "rewards/chosen",
                ] {
                    let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
                    let scale = if key == "rewards/chosen" {
                        0.1 * logp
                    } else {
                        y.abs()
                    };
                    assert!(
                        (x - y).abs() <= 1e-5 * scale,
                        "{objective} {what} step {}: {key} {x} vs {y}",
                        i + 1
                    );
                }
            }
        }
    }
}

fn metrics_without_timing(out: &Path) -> Vec<String> {
    let timing = regex::Regex::new(r#","(elapsed_s|tokens_per_sec)":[^,}]*"#).unwrap();
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| timing.replace_all(l, "").into_owned())
        .collect()
}

/// A DPO run killed by SIGKILL mid-way and resumed ends with the uninterrupted run's metrics
/// (every step's loss and rewards, the evaluations) and a byte-identical adapter: the one of
/// the evaluation with the highest `eval_rewards/margins` (`load_best_model_at_end` with
/// `metric_for_best_model`, its best carried across the resume).
#[test]
fn killed_dpo_run_resumes_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = random_pairs(tmp.path(), 40, 3);
    let make = |name: &str| {
        let out = tmp.path().join(name);
        let r = recipe(
            tmp.path(),
            &format!("{name}.yaml"),
            "qwen2-tied",
            &pairs,
            &out,
            "",
            "",
            "  objective: dpo\n  max_steps: 14\n  micro_batch_size: 2\n  optimizer: {name: adamw, lr: 5.0e-3}",
        );
        (r, out)
    };
    let settings = [
        "--set",
        "lora.dropout=0.1",
        "--set",
        "data.shuffle=true",
        "--set",
        "data.validation={split: 0.1}",
        "--set",
        "train.save_every=2",
        "--set",
        "train.eval_every=5",
        "--set",
        "train.grad_accum=2",
        "--set",
        "train.load_best_model_at_end=true",
        "--set",
        "train.metric_for_best_model=rewards/margins",
    ];
    let (r, want_out) = make("uninterrupted");
    train_ok(&r, &settings);
    let (r, out) = make("killed");
    let spawn = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_burnish"))
            .arg("train")
            .arg(&r)
            .args(settings)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = spawn(&[]);
    wait_for_step(&out, 5, &mut child);
    let killed = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap();
    train_ok(&r, &[&settings[..], &["--resume"]].concat());
    assert_eq!(
        metrics_without_timing(&out),
        metrics_without_timing(&want_out)
    );
    assert_eq!(
        std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(want_out.join("adapter/adapter_model.safetensors")).unwrap()
    );
    // The first evaluation with the highest margin (a tie is no improvement).
    let mut best: Option<(u64, f64)> = None;
    for e in eval_records(&out) {
        let (step, m) = (
            e["step"].as_u64().unwrap(),
            e["eval_rewards/margins"].as_f64().unwrap(),
        );
        if best.is_none_or(|(_, b)| m > b) {
            best = Some((step, m));
        }
    }
    let (step, margin) = best.unwrap();
    eprintln!("best eval_rewards/margins {margin} at step {step}");
    assert_eq!(
        std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(out.join(format!(
            "checkpoints/step-{step:06}/adapter_model.safetensors"
        )))
        .unwrap()
    );
}

/// Malformed pairs stop the run before training, naming the file and line; exit code 2.
#[test]
fn bad_pairs_name_their_line() {
    let tmp = tempfile::tempdir().unwrap();
    let good = r#"{"prompt": [5, 6, 7], "chosen": [8, 9], "rejected": [10]}"#;
    for (row, expect) in [
        (
            r#"{"prompt": [5, 6], "chosen": [8, 9]}"#,
            "missing field 'rejected'",
        ),
        (
            r#"{"prompt": [5, 6], "chosen": [8, 9], "rejected": [8, 9]}"#,
            "identical",
        ),
        (
            r#"{"prompt": [5, 6], "chosen": [], "rejected": [8, 9]}"#,
            "chosen completion",
        ),
        (
            r#"{"prompt": "hi", "chosen": "a", "rejected": ""}"#,
            "rejected completion",
        ),
        (
            r#"{"chosen": [8, 9], "rejected": [10, 11]}"#,
            "the prompt is empty",
        ),
        (
            r#"{"prompt": [5], "chosen": "text", "rejected": [9]}"#,
            "of one kind",
        ),
        (
            r#"{"prompt": [5], "chosen": [5000], "rejected": [9]}"#,
            "outside the model's vocabulary",
        ),
    ] {
        let pairs = tmp.path().join("bad.jsonl");
        std::fs::write(&pairs, format!("{good}\n{row}\n")).unwrap();
        let out = tmp.path().join("out");
        let r = recipe(
            tmp.path(),
            "bad.yaml",
            "qwen2-tied",
            &pairs,
            &out,
            "",
            "",
            "  objective: dpo\n  max_steps: 1",
        );
        let o = burnish(&["train", r.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{row}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("bad.jsonl:2"), "{row}: {err}");
        assert!(err.contains(expect), "{row}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A text pair needs a tokenizer; the fixture folder has none.
    // SFT data under a preference objective, and pairs under SFT.
    let rows = pretokenized_rows(tmp.path(), 7);
    let r = recipe(
        tmp.path(),
        "sft-data.yaml",
        "qwen2-tied",
        &rows,
        &tmp.path().join("o1"),
        "",
        "",
        "  objective: dpo",
    );
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("format: preference", "format: pretokenized");
    std::fs::write(&r, text).unwrap();
    let o = burnish(&["validate", r.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("objective dpo trains on preference pairs"),
        "{}",
        stderr(&o)
    );
}

/// Bad recipe values are reported together, each with its key and line.
#[test]
fn bad_preference_recipe_values_are_located() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = random_pairs(tmp.path(), 4, 1);
    let r = recipe(
        tmp.path(),
        "bad.yaml",
        "qwen2-tied",
        &pairs,
        &tmp.path().join("out"),
        "",
        "",
        "  objective: dpo\n  dpo: {beta: -1.0, loss_type: ipo, label_smoothing: 0.2, reference: no/such/adapter}\n  orpo: {beta: 0.1}",
    );
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("packing: false", "packing: true");
    std::fs::write(&r, text).unwrap();
    let o = burnish(&["validate", r.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    for needle in [
        "train.dpo.beta: -1 is not a positive number",
        "train.dpo.label_smoothing: applies to loss_type sigmoid (conservative DPO), robust and exo_pair only, not ipo",
        "train.dpo.reference",
        "train.orpo: is set but train.objective is dpo",
        "data.packing",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(err.contains("bad.yaml:"), "{err}");
    // SimPO's and CPO's values, and train_on_inputs (their terms cover the completions only).
    for (objective, section, needles) in [
        (
            "simpo",
            "simpo: {beta: 0.0, gamma: -1.0, cpo_alpha: -0.5}",
            &[
                "train.simpo.beta: 0 is not a positive number",
                "train.simpo.gamma: -1 is not a number >= 0",
                "train.simpo.cpo_alpha: -0.5 is not a number >= 0",
                "data.train_on_inputs: has no meaning for objective simpo",
            ][..],
        ),
        (
            "cpo",
            "cpo: {beta: -1.0, loss_type: hinge, label_smoothing: 0.1, cpo_alpha: -2.0}",
            &[
                "train.cpo.beta: -1 is not a positive number",
                "train.cpo.label_smoothing: applies to loss_type sigmoid only, not hinge",
                "train.cpo.cpo_alpha: -2 is not a number >= 0",
                "data.train_on_inputs: has no meaning for objective cpo",
            ][..],
        ),
        // EXO's epsilon cannot be 0; DiscoPOP's temperature belongs to DiscoPOP.
        (
            "dpo",
            "dpo: {loss_type: exo_pair}",
            &["train.dpo.label_smoothing: must be above 0 for loss_type exo_pair"][..],
        ),
        (
            "dpo",
            "dpo: {loss_type: nca_pair, discopop_tau: 0.1, label_smoothing: 0.1}",
            &[
                "train.dpo.discopop_tau: applies to loss_type discopop only, not nca_pair",
                "train.dpo.label_smoothing: applies to loss_type sigmoid (conservative DPO), robust and exo_pair only, not nca_pair",
            ][..],
        ),
        (
            "dpo",
            "dpo: {loss_type: discopop, discopop_tau: -1.0}",
            &["train.dpo.discopop_tau: -1 is not a positive number"][..],
        ),
        // Lists of losses: weights one per loss, each loss once, not sft alone.
        (
            "dpo",
            "dpo: {loss_type: [sigmoid, sft, sigmoid], loss_weights: [1.0, -0.5]}",
            &[
                "train.dpo.loss_type: lists sigmoid twice",
                "train.dpo.loss_weights: has 2 weights for 3 losses ([sigmoid, sft, sigmoid]); give one per loss_type",
                "train.dpo.loss_weights: -0.5 is not a number >= 0",
            ][..],
        ),
        // Another f-divergence needs losses that compare scores; alpha belongs to alpha.
        (
            "dpo",
            "dpo: {loss_type: [sigmoid, nca_pair], f_divergence_type: js_divergence, f_alpha_divergence_coef: 0.2}",
            &[
                "train.dpo.f_divergence_type: js_divergence applies to the losses that compare chosen and rejected scores",
                "not nca_pair; use reverse_kl with them",
                "train.dpo.f_alpha_divergence_coef: applies to f_divergence_type alpha_divergence only, not js_divergence",
            ][..],
        ),
        (
            "dpo",
            "dpo: {ld_alpha: 1.5}",
            &["train.dpo.ld_alpha: 1.5 is not in [0, 1]"][..],
        ),
        (
            "dpo",
            "dpo: {loss_type: [sigmoid, ipo, hinge, robust, nca_pair, bco_pair, sft]}",
            &["train.dpo.loss_type: lists 7 losses; at most 6 can be summed"][..],
        ),
        (
            "dpo",
            "dpo: {loss_type: [sft]}",
            &["train.dpo.loss_type: sft alone is supervised fine-tuning on the chosen completions"]
                [..],
        ),
        (
            "dpo",
            "dpo: {loss_type: [sigmoid, slic]}",
            &["train.dpo.loss_type: 'slic' is not one of sigmoid, ipo"][..],
        ),
    ] {
        let r = recipe(
            tmp.path(),
            &format!("bad-{objective}.yaml"),
            "qwen2-tied",
            &pairs,
            &tmp.path().join("out"),
            "  train_on_inputs: true",
            "",
            &format!("  objective: {objective}\n  {section}"),
        );
        let o = burnish(&["validate", r.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2));
        let err = stderr(&o);
        for needle in needles {
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
    // Unknown names get the list of valid ones.
    for (set, needle) in [
        (
            "train.objective=dpoo",
            "'dpoo' is not one of sft, dpo, orpo, simpo, cpo",
        ),
        (
            "train.dpo.loss_type=slic",
            "'slic' is not one of sigmoid, ipo, hinge, robust, exo_pair, nca_pair, bco_pair, sppo_hard, apo_zero, apo_down, discopop, sigmoid_norm, sft",
        ),
        ("train.dpo.bta=0.1", "unknown field 'bta'"),
        ("train.simpo.gama=0.1", "unknown field 'gama'"),
    ] {
        let r = recipe(
            tmp.path(),
            "ok.yaml",
            "qwen2-tied",
            &pairs,
            &tmp.path().join("out"),
            "",
            "",
            "  objective: dpo",
        );
        let o = burnish(&["validate", r.to_str().unwrap(), "--set", set]);
        assert_eq!(o.status.code(), Some(2), "{set}");
        assert!(stderr(&o).contains(needle), "{set}: {}", stderr(&o));
    }
}

/// Text, conversational and implicit-prompt rows tokenize to the ids TRL's DPOTrainer gives
/// them (Qwen2.5 tokenizer and chat template; scripts/make_preference_goldens.py): exactly.
#[test]
fn pairs_tokenize_as_trl_does() {
    use burnish::data::dataset::{DataPlan, LocalSource, TooLong, Validation, prepare};
    let golden = read_json(&fixtures().join("golden/preference-tokens.json"));
    let cases = golden.as_array().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rows: String = cases.iter().map(|c| format!("{}\n", c["row"])).collect();
    let file = tmp.path().join("rows.jsonl");
    std::fs::write(&file, rows).unwrap();
    let tok_dir = tokenizer_folder("tokenizer-qwen2.5");
    let tokenizer = burnish::model::TokenizerBundle::from_dir(tok_dir.path()).unwrap();
    let plan = DataPlan {
        train: vec![LocalSource {
            files: vec![file],
            format: Some(burnish::data::Format::Preference),
            ..Default::default()
        }],
        validation: Validation::None,
        seq_len: 512,
        packing: false,
        train_on_inputs: false,
        too_long: TooLong::Truncate,
        chat_template: None,
        system_prompt: None,
        seed: 1,
        vocab_size: 151_936,
        unpair: false,
    };
    let data = prepare(&plan, Some(&tokenizer)).unwrap();
    assert_eq!(data.train_pairs.len(), cases.len());
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    for (i, (pair, c)) in data.train_pairs.iter().zip(cases).enumerate() {
        assert_eq!(pair.prompt, ids(&c["prompt_ids"]), "row {i} prompt");
        assert_eq!(pair.chosen, ids(&c["chosen_ids"]), "row {i} chosen");
        assert_eq!(pair.rejected, ids(&c["rejected_ids"]), "row {i} rejected");
    }
}
