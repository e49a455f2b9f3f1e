//! Tokenizer ids against Python `tokenizers`, and `inspect` against transformers' and PEFT's
//! counts.

mod common;

use burnish::model::TokenizerBundle;
use common::*;

#[test]
fn token_ids_equal_python_tokenizers() {
    let dir = tokenizer_folder("tokenizer");
    let tok = TokenizerBundle::from_dir(dir.path()).unwrap();
    let golden = read_json(&fixtures().join("tokenizer/golden_ids.json"));
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text).unwrap(), want, "ids of {text:?}");
        assert_eq!(
            tok.decode(&want).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decode of {text:?}"
        );
    }
    // The fact the reference README states.
    assert_eq!(
        tok.encode("Hello, world!").unwrap(),
        vec![9707, 11, 1879, 0]
    );
    assert_eq!(tok.token_id("<|im_end|>"), Some(151645));
}

#[test]
fn inspect_counts_parameters_like_transformers() {
    let counts = read_json(&fixtures().join("configs/parameter_counts.json"));
    for (name, want) in counts["counts"].as_object().unwrap() {
        let path = fixtures().join(format!("configs/{name}.json"));
        let out = burnish(&["inspect", path.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(v["parameters"].as_u64(), want.as_u64(), "{name}");
        assert_eq!(v["weights_present"], false);
    }
    // The headline number for Qwen2.5-0.5B, in the human-readable output too.
    let path = fixtures().join("configs/qwen2.5-0.5b.json");
    let out = burnish(&["inspect", path.to_str().unwrap()]);
    assert!(stdout(&out).contains("494,032,768"), "{}", stdout(&out));
}

#[test]
fn inspect_reports_fixture_models() {
    for variant in VARIANTS {
        let out = burnish(&["inspect", model_dir(variant).to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{variant}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        let golden = read_json(&fixtures().join(format!("golden/{variant}.json")));
        assert_eq!(v["parameters"], golden["parameters"], "{variant}");
        let disk = if variant == "qwen2-bf16" {
            "bf16"
        } else {
            "f32"
        };
        assert_eq!(v["disk_dtype"], disk, "{variant}");
        // The sliding layers transformers would use (see scripts/make_fixtures.py).
        let window = match variant {
            "mistral-swa" => serde_json::json!({"width": 5, "layers": [0, 1]}),
            "qwen2-swa" => serde_json::json!({"width": 4, "layers": [1]}),
            "gemma3" | "gemma2" => serde_json::json!({"width": 4, "layers": [0]}),
            _ => serde_json::Value::Null,
        };
        // Gemma 3's own rules (scripts/make_fixtures.py): GELU-tanh gating, scores scaled by
        // query_pre_attn_scalar^-1/2 (24), sliding layers on an unscaled base of 10,000.
        let (act, scale, local) = match variant {
            "gemma3" => (
                "gelu_pytorch_tanh",
                1.0 / 24f64.sqrt(),
                serde_json::json!(1e4),
            ),
            // Gemma 2: the same scale and gating, one RoPE base for every layer.
            "gemma2" => (
                "gelu_pytorch_tanh",
                1.0 / 24f64.sqrt(),
                serde_json::Value::Null,
            ),
            _ => (
                "silu",
                1.0 / (v["head_dim"].as_f64().unwrap()).sqrt(),
                serde_json::Value::Null,
            ),
        };
        assert_eq!(v["activation"], act, "{variant}");
        assert!(
            (v["attention_scale"].as_f64().unwrap() - scale).abs() < 1e-12,
            "{variant}"
        );
        assert_eq!(v["sliding_rope_theta"], local, "{variant}");
        assert_eq!(v["sliding_window"], window, "{variant}");
        // Gemma 2's soft caps as the fixture sets them; no other family caps.
        let caps = match variant {
            "gemma2" => (serde_json::json!(1.0), serde_json::json!(2.0)),
            _ => (serde_json::Value::Null, serde_json::Value::Null),
        };
        assert_eq!(
            (&v["attn_logit_softcapping"], &v["final_logit_softcapping"]),
            (&caps.0, &caps.1),
            "{variant}"
        );
        // transformers: factor 4 gives cos/sin 0.1 ln 4 + 1 (scripts/make_fixtures.py).
        let scaling = match variant {
            "qwen2-yarn" => serde_json::json!({"type": "yarn", "factor": 4.0,
                "original_max_position_embeddings": 8, "attention_factor": 0.1 * 4f64.ln() + 1.0}),
            "llama-gqa" => serde_json::json!({"type": "llama3", "factor": 8.0,
                "original_max_position_embeddings": 64}),
            "gemma3" => serde_json::json!({"type": "linear", "factor": 2.0}),
            _ => serde_json::Value::Null,
        };
        assert_eq!(v["rope_scaling"], scaling, "{variant}");
    }
    let out = burnish(&["inspect", model_dir("qwen2-swa").to_str().unwrap()]);
    assert!(
        stdout(&out).contains("sliding window of 4 keys in 1 of 2 layers"),
        "{}",
        stdout(&out)
    );
    let out = burnish(&["inspect", model_dir("qwen2-yarn").to_str().unwrap()]);
    assert!(
        stdout(&out).contains("yarn, x4 from 8 positions, cos/sin x1.1386"),
        "{}",
        stdout(&out)
    );
}

/// `inspect` on PEFT adapter folders: the parameter count PEFT gives for the trainable
/// parameters (A, B and DoRA magnitudes; scripts/make_fixtures.py), the DoRA flag, the shapes
/// checked against the local base; a damaged weights file is a user error (exit 2).
#[test]
fn inspect_reports_adapters_like_peft() {
    for case in ["qwen2-tied", "patterns", "layers", "dora"] {
        let dir = fixtures().join(format!("lora/{case}/adapter"));
        let o = burnish(&["inspect", dir.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{case}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let peft = read_json(&fixtures().join(format!("golden/lora-{case}.json")));
        assert_eq!(v["parameters"], peft["trainable_parameters"], "{case}");
        assert_eq!(v["dora"].as_bool(), Some(case == "dora"), "{case}");
        let magnitudes = if case == "dora" { 14 } else { 0 };
        assert_eq!(v["magnitude_vectors"].as_u64(), Some(magnitudes), "{case}");
        assert!(v["checked_against_base"].is_string(), "{case}: {v}");
    }
    let dir = fixtures().join("lora/dora/adapter");
    let o = burnish(&["inspect", dir.to_str().unwrap()]);
    assert!(stdout(&o).contains("PEFT DoRA"), "{}", stdout(&o));
    assert!(stdout(&o).contains("17,408 parameters"), "{}", stdout(&o));

    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&dir, tmp.path());
    let weights = tmp.path().join("adapter_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let o = burnish(&["inspect", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not a valid safetensors file"),
        "{}",
        stderr(&o)
    );
}
