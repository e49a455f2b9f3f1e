//! KTO: parity with TRL 1.16's KTOTrainer for three optimizer steps and an evaluation from a
//! fixed adapter (scripts/make_kto_goldens.py), TRL's tokenization of unpaired rows and its
//! unpairing of preference pairs, data parallel against the plain run, and located errors for
//! bad rows and recipe values.

mod common;

use std::path::{Path, PathBuf};

use burnish::data::dataset::{DataPlan, LocalSource, TooLong, Validation, prepare};
use common::*;

fn records(out: &Path, key: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get(key).is_some())
        .collect()
}

/// A KTO recipe on the llama-gqa fixture from the fixed preference adapter; `train_extra`
/// lines go under `train:`, `validation` is the `data.validation` value.
fn recipe(dir: &Path, name: &str, data: &Path, validation: &str, train_extra: &str) -> PathBuf {
    let out = dir.join(name);
    let adapter = fixtures().join("lora/preference-llama");
    let text = format!(
        r#"
model: {{base: tests/fixtures/models/llama-gqa, dtype: f32}}
lora:
  r: 8
  alpha: 16
  dropout: 0.0
  targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
  init_from: {adapter}
data:
  train: [{{path: {data}}}]
  validation: {validation}
  seq_len: 64
  packing: false
  shuffle: false
train:
  objective: kto
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
        adapter = adapter.display(),
        data = data.display(),
        out = out.display()
    );
    write_recipe(dir, &format!("{name}.yaml"), &text)
}

fn train(recipe: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["train", recipe.to_str().unwrap()];
    args.extend_from_slice(extra);
    burnish(&args)
}

/// Compare one record with TRL's: the loss 1e-5 relative; the KL estimate and rewards 1e-5
/// relative to
/// the log-probability sums they are differences of (times `beta` for rewards; both sides
/// round those f32 sums differently); the gradient norm 1e-4 (f32 gradients summed in another
/// order).
fn assert_matches(ours: &serde_json::Value, want: &serde_json::Value, beta: f64, what: &str) {
    let g = |k: &str| want.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0).abs();
    for (key, wv) in want.as_object().unwrap() {
        let ours_key = match what.contains("eval") {
            true => format!("eval_{key}"),
            false => key.clone(),
        };
        let a = ours[&ours_key]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: no {ours_key} in {ours}"));
        let b = wv.as_f64().unwrap();
        let scale = match key.as_str() {
            "rewards/chosen" => beta * g("logps/chosen"),
            "rewards/rejected" => beta * g("logps/rejected"),
            "rewards/margins" => beta * g("logps/chosen").max(g("logps/rejected")),
            // A mean of log-probability differences: 1e-5 relative to those sums.
            "kl" => g("logps/chosen").max(g("logps/rejected")),
            _ => 0.0,
        };
        let tol = if key == "grad_norm" { 1e-4 } else { 1e-5 };
        assert!(
            (a - b).abs() <= tol * b.abs().max(scale),
            "{what}: {key} {a} vs TRL {b}"
        );
    }
    // TRL leaves out a side's metrics when the batch has no row of it; so does burnish.
    for side in ["chosen", "rejected"] {
        let key = format!("rewards/{side}");
        let ours_key = if what.contains("eval") {
            format!("eval_{key}")
        } else {
            key.clone()
        };
        assert_eq!(
            ours.get(&ours_key).is_some(),
            want.get(&key).is_some(),
            "{what}: {key} present in one log only"
        );
    }
}

#[test]
fn three_steps_and_evaluation_match_trl() {
    let golden = read_json(&fixtures().join("golden/kto.json"));
    let tmp = tempfile::tempdir().unwrap();
    for (name, case) in golden["cases"].as_object().unwrap() {
        let data = fixtures()
            .join("golden")
            .join(case["data"].as_str().unwrap());
        let validation = match case.get("eval") {
            Some(_) => format!(
                "[{{path: {}}}]",
                fixtures().join("golden/unpaired-eval.jsonl").display()
            ),
            None => "null".into(),
        };
        let train_extra = format!(
            "  kto: {{beta: {}, loss_type: {}, desirable_weight: {}, undesirable_weight: {}}}\n  max_steps: 3\n  micro_batch_size: {}\n  optimizer: {{name: adamw, lr: {}, weight_decay: 0.0}}",
            case["beta"],
            case["loss_type"].as_str().unwrap(),
            case["desirable_weight"],
            case["undesirable_weight"],
            case["micro_batch_size"],
            case["lr"]
        );
        let r = recipe(tmp.path(), name, &data, &validation, &train_extra);
        let o = train(&r, &[]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let out = tmp.path().join(name);
        let beta = case["beta"].as_f64().unwrap();
        let ours = records(&out, "loss");
        let want = case["steps"].as_array().unwrap();
        assert_eq!(ours.len(), want.len(), "{name}");
        for (i, (o, w)) in ours.iter().zip(want).enumerate() {
            assert_matches(o, w, beta, &format!("{name} step {}", i + 1));
        }
        if let Some(want) = case.get("eval") {
            let evals = records(&out, "eval_loss");
            let last = evals.last().expect("an evaluation at the end");
            assert_matches(last, want, beta, &format!("{name} eval"));
        }
    }
}

fn plan(file: PathBuf, format: burnish::data::Format, unpair: bool) -> DataPlan {
    DataPlan {
        train: vec![LocalSource {
            files: vec![file],
            format: Some(format),
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
        unpair,
    }
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Text and conversational rows tokenize to TRL's ids (Qwen2.5 tokenizer and template).
#[test]
fn unpaired_rows_tokenize_as_trl() {
    let golden = read_json(&fixtures().join("golden/kto-tokens.json"));
    let cases = golden.as_array().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rows: String = cases.iter().map(|c| format!("{}\n", c["row"])).collect();
    let file = tmp.path().join("rows.jsonl");
    std::fs::write(&file, rows).unwrap();
    let tok_dir = tokenizer_folder("tokenizer-qwen2.5");
    let tokenizer = burnish::model::TokenizerBundle::from_dir(tok_dir.path()).unwrap();
    // Detected from the columns as well as named.
    for format in [burnish::data::Format::Unpaired] {
        let data = prepare(&plan(file.clone(), format, false), Some(&tokenizer)).unwrap();
        assert_eq!(data.train_pairs.len(), cases.len());
        for (i, (row, c)) in data.train_pairs.iter().zip(cases).enumerate() {
            assert_eq!(row.prompt, ids(&c["prompt_ids"]), "row {i} prompt");
            assert_eq!(row.chosen, ids(&c["completion_ids"]), "row {i} completion");
            assert_eq!(row.label, c["row"]["label"].as_bool(), "row {i} label");
            assert!(row.rejected.is_empty());
        }
    }
    assert_eq!(
        burnish::data::Format::detect(&cases[0]["row"]),
        Some(burnish::data::Format::Unpaired)
    );
}

/// Pairs read for KTO become TRL's unpaired rows: each block's chosen completions (desirable),
/// then its rejected ones.
#[test]
fn pairs_unpair_in_trls_order() {
    let file = fixtures().join("golden/preference-pairs.jsonl");
    let pairs: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let data = prepare(&plan(file, burnish::data::Format::Preference, true), None).unwrap();
    assert_eq!(data.train_pairs.len(), 2 * pairs.len());
    for (i, row) in data.train_pairs.iter().enumerate() {
        let (pair, side, label) = match i < pairs.len() {
            true => (&pairs[i], "chosen", true),
            false => (&pairs[i - pairs.len()], "rejected", false),
        };
        assert_eq!(row.prompt, ids(&pair["prompt"]), "row {i}");
        assert_eq!(row.chosen, ids(&pair[side]), "row {i}");
        assert_eq!(row.label, Some(label), "row {i}");
    }
}

/// Two CPU replicas take the steps one process takes: each computes the KL estimate over the
/// whole micro-batch. Shuffled batches, so the mismatched rows are formed within each drawn
/// micro-batch.
#[test]
fn data_parallel_equals_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixtures().join("golden/unpaired-rows.jsonl");
    let extra = "  max_steps: 3\n  micro_batch_size: 4\n  optimizer: {name: adamw, lr: 0.001, weight_decay: 0.0}";
    let one = recipe(tmp.path(), "one", &data, "null", extra);
    let text = std::fs::read_to_string(&one)
        .unwrap()
        .replace("shuffle: false", "shuffle: true");
    std::fs::write(&one, &text).unwrap();
    let o = train(&one, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let two = write_recipe(
        tmp.path(),
        "two.yaml",
        &text.replace("device: cpu", "devices: [cpu, cpu]").replace(
            &format!("dir: {}", tmp.path().join("one").display()),
            &format!("dir: {}", tmp.path().join("two").display()),
        ),
    );
    let o = train(&two, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (
        records(&tmp.path().join("one"), "loss"),
        records(&tmp.path().join("two"), "loss"),
    );
    assert_eq!(a.len(), 3);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        for key in [
            "loss",
            "kl",
            "grad_norm",
            "rewards/chosen",
            "rewards/rejected",
        ] {
            let (Some(p), Some(q)) = (x.get(key), y.get(key)) else {
                assert_eq!(x.get(key), y.get(key), "step {}: {key}", i + 1);
                continue;
            };
            let (p, q) = (p.as_f64().unwrap(), q.as_f64().unwrap());
            // Replicas pad their rows differently and sum f32 gradients in another order,
            // which Adam's first step amplifies where a gradient entry is near its epsilon:
            // 1e-5 relative, 1e-4 for the gradient norm (as against TRL).
            let tol = if key == "grad_norm" { 1e-4 } else { 1e-5 };
            assert!(
                (p - q).abs() <= tol * p.abs().max(1e-2),
                "step {}: {key}: {p} vs {q}",
                i + 1
            );
        }
    }
}

/// Bad rows and settings are refused with their file, line or key.
#[test]
fn bad_rows_and_settings_are_located() {
    let tmp = tempfile::tempdir().unwrap();
    let bad_rows = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad_rows,
        "{\"prompt\": [5, 6], \"completion\": [7], \"label\": true}\n{\"prompt\": [5, 6], \"completion\": [8], \"label\": \"yes\"}\n",
    )
    .unwrap();
    let extra = "  max_steps: 1\n  micro_batch_size: 2";
    let r = recipe(tmp.path(), "rows", &bad_rows, "null", extra);
    let o = train(&r, &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("bad.jsonl:2") && e.contains("'label' must be true"),
        "{e}"
    );

    let data = fixtures().join("golden/unpaired-rows.jsonl");
    for (set, says) in [
        ("train.micro_batch_size=1", "train.micro_batch_size"),
        ("train.kto.beta=0", "train.kto.beta"),
        (
            "train.kto.desirable_weight=-1",
            "train.kto.desirable_weight",
        ),
        ("train.kto.reference=nowhere", "train.kto.reference"),
        // Unpaired rows under another objective.
        (
            "train.objective=dpo",
            "which train with train.objective: kto, not dpo",
        ),
    ] {
        let o = train(&r_with(&tmp, &data, extra), &["--set", set]);
        assert!(!o.status.success(), "{set}");
        let e = stderr(&o);
        assert!(e.contains(says), "{set}: {e}");
    }
    // A kto section under another objective.
    let with_section = format!("{extra}\n  kto: {{beta: 0.2}}");
    let o = train(
        &r_with(&tmp, &data, &with_section),
        &["--set", "train.objective=dpo"],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("train.kto: is set but train.objective is dpo"),
        "{}",
        stderr(&o)
    );
}

fn r_with(tmp: &tempfile::TempDir, data: &Path, extra: &str) -> PathBuf {
    recipe(tmp.path(), "settings", data, "null", extra)
}
