//! Broken model folders: each gives a clear message naming the problem and exit code 2.

mod common;

use common::*;
use std::fs;

fn eval_on(dir: &std::path::Path) -> std::process::Output {
    let data = fixtures().join("golden/qwen2-tied.eval.jsonl");
    burnish(&[
        "eval",
        "--model",
        dir.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--device",
        "cpu",
    ])
}

fn assert_user_error(out: &std::process::Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(!err.contains("RUST_BACKTRACE"), "backtrace hint: {err}");
}

#[test]
fn missing_shard_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&model_dir("qwen2-untied"), tmp.path());
    fs::remove_file(tmp.path().join("model-00002-of-00004.safetensors")).unwrap();
    assert_user_error(
        &eval_on(tmp.path()),
        &["model-00002-of-00004.safetensors", "missing"],
    );
}

#[test]
fn truncated_safetensors_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&model_dir("qwen2-tied"), tmp.path());
    let f = tmp.path().join("model.safetensors");
    let bytes = fs::read(&f).unwrap();
    fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    assert_user_error(
        &eval_on(tmp.path()),
        &["model.safetensors", "truncated or corrupt"],
    );
}

#[test]
fn wrong_shape_is_listed_with_expected_shape() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&model_dir("qwen2-tied"), tmp.path());
    // Claim a larger intermediate size than the weights have: every MLP tensor mismatches.
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["intermediate_size"] = 96.into();
    fs::write(&cfg_path, cfg.to_string()).unwrap();
    assert_user_error(
        &eval_on(tmp.path()),
        &[
            "model.layers.0.mlp.gate_proj.weight",
            "[128, 64]",
            "expected [96, 64]",
            "model.layers.1.mlp.down_proj.weight",
        ],
    );
}

#[test]
fn missing_and_unexpected_tensors_are_listed_together() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&model_dir("qwen2-tied"), tmp.path());
    // An untied config wants lm_head.weight, which a tied checkpoint lacks.
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["tie_word_embeddings"] = false.into();
    cfg["num_hidden_layers"] = 1.into();
    fs::write(&cfg_path, cfg.to_string()).unwrap();
    assert_user_error(
        &eval_on(tmp.path()),
        &[
            "missing tensor lm_head.weight",
            "unexpected tensor model.layers.1.self_attn.q_proj.weight",
        ],
    );
}

#[test]
fn unsupported_architecture_lists_supported_ones() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&model_dir("qwen2-tied"), tmp.path());
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    cfg["model_type"] = "gpt2".into();
    fs::write(&cfg_path, cfg.to_string()).unwrap();
    assert_user_error(
        &eval_on(tmp.path()),
        &[
            "GPT2LMHeadModel",
            "Qwen2ForCausalLM",
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen3ForCausalLM",
        ],
    );
    let out = burnish(&["inspect", tmp.path().to_str().unwrap()]);
    assert_user_error(&out, &["GPT2LMHeadModel"]);
}

#[test]
fn bad_sliding_window_settings_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&model_dir("qwen2-swa"), tmp.path());
    let cfg_path = tmp.path().join("config.json");
    let cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&cfg_path).unwrap()).unwrap();
    for (key, value, needles) in [
        (
            "layer_types",
            serde_json::json!(["sliding_attention"]),
            &[
                "config.json",
                "layer_types has 1 entries",
                "num_hidden_layers is 2",
            ][..],
        ),
        (
            "layer_types",
            serde_json::json!(["full_attention", "chunked_attention"]),
            &["layer_types[1]", "chunked_attention"][..],
        ),
        (
            "sliding_window",
            serde_json::json!(0),
            &["sliding_window must be > 0"][..],
        ),
        (
            "sliding_window",
            serde_json::json!(-4),
            &["config.json", "key `sliding_window`", "line 1"][..],
        ),
    ] {
        let mut bad = cfg.clone();
        bad[key] = value;
        fs::write(&cfg_path, bad.to_string()).unwrap();
        assert_user_error(&eval_on(tmp.path()), needles);
    }
}

#[test]
fn not_a_model_folder_and_bad_data() {
    let tmp = tempfile::tempdir().unwrap();
    assert_user_error(&eval_on(tmp.path()), &["config.json"]);
    let data = tmp.path().join("bad.jsonl");
    fs::write(
        &data,
        "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, \"x\"]}\n",
    )
    .unwrap();
    let out = burnish(&[
        "eval",
        "--model",
        model_dir("qwen2-tied").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_user_error(&out, &["bad.jsonl:2", "input_ids"]);
}

/// Gemma options burnish does not compute (or that make no sense: a soft cap of 0 or below)
/// are refused by name, never trained wrongly; an image-text Gemma 3 checkpoint is told which
/// Gemma 3 models are supported.
#[test]
fn unsupported_gemma_settings_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&model_dir("gemma3"), tmp.path());
    let cfg_path = tmp.path().join("config.json");
    let cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&cfg_path).unwrap()).unwrap();
    for (key, value, needles) in [
        (
            "final_logit_softcapping",
            serde_json::json!(-30.0),
            &["config.json", "final_logit_softcapping is -30", "> 0"][..],
        ),
        (
            "attn_logit_softcapping",
            serde_json::json!(0.0),
            &["attn_logit_softcapping is 0", "null for no cap"][..],
        ),
        (
            "use_bidirectional_attention",
            serde_json::json!(true),
            &["use_bidirectional_attention"][..],
        ),
        (
            "hidden_activation",
            serde_json::json!("relu"),
            &["hidden_activation 'relu'", "gelu_pytorch_tanh"][..],
        ),
        (
            "sliding_window",
            serde_json::Value::Null,
            &["sliding_window is null"][..],
        ),
        (
            "rope_parameters",
            serde_json::json!({"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "linear", "factor": 2.0}}),
            &["sliding_attention", "'linear'"][..],
        ),
        (
            "architectures",
            serde_json::json!(["Gemma3ForConditionalGeneration"]),
            &[
                "Gemma3ForConditionalGeneration",
                "gemma-3-270m",
                "gemma-3-1b",
            ][..],
        ),
    ] {
        let mut bad = cfg.clone();
        bad[key] = value;
        if key == "architectures" {
            bad["model_type"] = "gemma3".into();
        }
        fs::write(&cfg_path, bad.to_string()).unwrap();
        assert_user_error(&eval_on(tmp.path()), needles);
    }
}
