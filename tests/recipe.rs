//! Recipe validation: every problem reported at once with file, line and column; `--set`
//! overrides; the shipped recipes are valid.

mod common;

use common::*;

fn validate(dir: &std::path::Path, text: &str, extra: &[&str]) -> std::process::Output {
    let r = write_recipe(dir, "recipe.yaml", text);
    let mut args = vec!["validate", r.to_str().unwrap()];
    args.extend(extra);
    burnish(&args)
}

const GOOD: &str = "model: {base: builtin:tiny-qwen2}\ndata:\n  train:\n    - {path: datasets/alpaca-mini.jsonl, format: alpaca}\n";

#[test]
fn every_problem_is_reported_at_once_with_its_location() {
    let tmp = tempfile::tempdir().unwrap();
    let text = "\
model:
  base: builtin:tiny-qwen2
lora:
  r: 16
  alpah: 32
data:
  train:
    - path: datasets/missing.jsonl
      format: alpacca
train:
  micro_batch_size: four
  optimizer: {name: adamw, lr: -1}
  scheduler: {name: cosin}
";
    let o = validate(tmp.path(), text, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("recipe.yaml:5:3: lora.alpah: unknown field 'alpah' (did you mean 'alpha'?); expected one of r, alpha"), "{err}");
    assert!(
        err.contains("recipe.yaml:9:15: data.train.0.format: 'alpacca' is not one of text, alpaca, messages, sharegpt, pretokenized, preference, unpaired, prompt_completion (did you mean 'alpaca'?)"),
        "{err}"
    );
    assert!(
        err.contains("recipe.yaml:11:21: train.micro_batch_size: invalid type: string \"four\""),
        "{err}"
    );
    // A name outside a fixed set is a type error too, reported in the same pass.
    assert!(err.contains("recipe.yaml:13:21: train.scheduler.name: 'cosin' is not one of cosine, cosine_with_min_lr, linear, constant, constant_with_warmup, cosine_with_restarts, polynomial, inverse_sqrt, warmup_stable_decay (did you mean 'cosine'?)"), "{err}");
    // Value checks run once the types are right: these appear after fixing the above.
    let text2 = text
        .replace("  alpah: 32\n", "")
        .replace("alpacca", "alpaca")
        .replace("four", "4")
        .replace("cosin}", "cosine}");
    let o = validate(tmp.path(), &text2, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("2 problems"), "{err}");
    assert!(
        err.contains("data.train.0.path: file datasets/missing.jsonl not found"),
        "{err}"
    );
    assert!(
        err.contains(":11:32: train.optimizer.lr: must be a positive number"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn syntax_errors_and_missing_sections() {
    let tmp = tempfile::tempdir().unwrap();
    let o = validate(tmp.path(), "model:\n  base: [unclosed\n", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid YAML"), "{}", stderr(&o));
    let o = validate(tmp.path(), "lora: {r: 4}\n", &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("model: 'model' is required") && err.contains("data: 'data' is required"),
        "{err}"
    );
    let o = validate(
        tmp.path(),
        "model: {base: not a repo id!}\ndata: {train: [{path: datasets/alpaca-mini.jsonl}]}\n",
        &[],
    );
    assert!(
        stderr(&o)
            .contains("model.base: 'not a repo id!' is not a local folder and not a Hub repo id"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn set_overrides_are_typed_and_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let o = validate(
        tmp.path(),
        GOOD,
        &["--set", "train.optimizer.lr=fast", "--set", "lora.r=0"],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "(--set train.optimizer.lr=fast): train.optimizer.lr: invalid type: string \"fast\""
        ),
        "{err}"
    );
    let o = validate(
        tmp.path(),
        GOOD,
        &[
            "--set",
            "lora.targets=[q_proj, v_proj]",
            "--set",
            "train.optimizer.lr=2e-4",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // LoRA+: a positive ratio or null.
    let o = validate(
        tmp.path(),
        GOOD,
        &["--set", "train.optimizer.loraplus_lr_ratio=16"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = validate(
        tmp.path(),
        GOOD,
        &["--set", "train.optimizer.loraplus_lr_ratio=0"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("train.optimizer.loraplus_lr_ratio: must be a positive number"),
        "{}",
        stderr(&o)
    );
    let r = write_recipe(tmp.path(), "recipe.yaml", GOOD);
    let o = burnish(&[
        "plan",
        r.to_str().unwrap(),
        "--json",
        "--set",
        "lora.r=4",
        "--set",
        "lora.targets=[q_proj, v_proj]",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    // tiny-qwen2: 4 layers, q 128x128 and v 64x128 at r=4: 4 * (4*(128+128) + 4*(128+64)).
    assert_eq!(v["trainable_parameters"], 4 * (4 * 256 + 4 * 192));
}

/// The best checkpoint and early stopping decide from evaluations: each refuses a recipe
/// without them, naming its key and what to set.
#[test]
fn best_checkpoint_and_early_stopping_need_evaluations() {
    let tmp = tempfile::tempdir().unwrap();
    let o = validate(
        tmp.path(),
        GOOD,
        &[
            "--set",
            "data.validation=null",
            "--set",
            "train.load_best_model_at_end=true",
            "--set",
            "train.early_stopping_patience=0",
            "--set",
            "train.eval_every=0",
            "--set",
            "train.early_stopping_threshold=-1",
            "--set",
            "train.metric_for_best_model=eval_rewards/accuracies",
            "--set",
            "train.eval_on_start=true",
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for want in [
        "train.eval_on_start: needs evaluations: set data.validation",
        "train.load_best_model_at_end: needs evaluations: set data.validation",
        "train.early_stopping_patience: must be at least 1",
        "train.early_stopping_patience: needs evaluations: set data.validation",
        "train.early_stopping_patience: needs evaluations during training: set train.eval_every",
        "train.early_stopping_threshold: must be zero or a positive difference",
        // An SFT run records no preference metrics.
        "train.metric_for_best_model: 'rewards/accuracies' is not one of loss, perplexity",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    let o = validate(
        tmp.path(),
        GOOD,
        &[
            "--set",
            "data.validation={split: 0.1}",
            "--set",
            "train.load_best_model_at_end=true",
            "--set",
            "train.early_stopping_patience=3",
            "--set",
            "train.early_stopping_threshold=0.01",
            "--set",
            "train.metric_for_best_model=perplexity",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn bad_data_rows_fail_validation_with_their_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d.jsonl");
    std::fs::write(
        &data,
        "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": 3, \"output\": \"b\"}\n",
    )
    .unwrap();
    let text = format!(
        "model: {{base: builtin:tiny-qwen2}}\ndata:\n  train: [{{path: {}, format: alpaca}}]\n",
        data.display()
    );
    let o = validate(tmp.path(), &text, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("d.jsonl:2: field 'instruction' must be a string"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn shipped_recipes_are_valid() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("recipes")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let o = burnish(&["validate", p.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}", p.display(), stderr(&o));
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with('#'),
            "{} needs a comment header",
            p.display()
        );
        n += 1;
    }
    assert!(
        n >= 5,
        "expected the demo and the Qwen2.5 recipes, found {n}"
    );
}

/// Examples longer than the base's max_position_embeddings are named before training when the
/// config sets no rope scaling (positions past it are extrapolated); with YaRN they are not.
#[test]
fn examples_past_the_context_are_warned_of_without_rope_scaling() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = tmp.path().join("long.jsonl");
    let long: Vec<u32> = (0..600).map(|i| 3 + i % 900).collect();
    let text = format!(
        "{}\n{}\n",
        serde_json::json!({ "input_ids": long }),
        serde_json::json!({ "input_ids": [5, 6, 7] })
    );
    std::fs::write(&rows, text).unwrap();
    for (variant, warned) in [("qwen2-tied", true), ("qwen2-yarn", false)] {
        let recipe = format!(
            "model: {{base: {}}}\ndata:\n  seq_len: 1024\n  train:\n    - {{path: {}, format: pretokenized}}\n",
            model_dir(variant).display(),
            rows.display()
        );
        let o = validate(tmp.path(), &recipe, &[]);
        assert!(o.status.success(), "{variant}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(
            err.contains("the longest example has 600 tokens, more than the 512 positions"),
            warned,
            "{variant}: {err}"
        );
    }
}
