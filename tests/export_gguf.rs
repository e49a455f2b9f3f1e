//! GGUF export against llama.cpp's reference (scripts/gguf_reference.py): quantizer bytes,
//! the exported files themselves (the ones the script read with the `gguf` package and loaded
//! in transformers), transformers' logits and greedy generation from those files against
//! burnish's merged model, bad input, and a recipe run that publishes GGUF files.

mod common;
#[path = "common/fake_hub/mod.rs"]
mod fake_hub;

use burnish::model::safetensors_out::{F32Tensor, write_f32};
use std::path::{Path, PathBuf};

use burn::tensor::DType;
use burnish::backend::Cpu;
use burnish::export::{ExportRequest, ExportType, GgmlType, export, quant};
use burnish::generate::{Sampler, SamplingParams, generate};
use burnish::lora::peft::read_adapter;
use burnish::model::{HostBatch, ModelConfig, ModelFolder};
use common::*;
use fake_hub::FakeHub;
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

fn golden() -> serde_json::Value {
    read_json(&fixtures().join("golden/gguf-export.json"))
}

/// A fixture model folder with the tiny byte-level tokenizer (as the script assembles it).
fn model_folder(model: &str, root: &Path) -> PathBuf {
    model_folder_with(model, root, "tokenizer-tiny")
}

/// A fixture model folder with the files of `tests/fixtures/<tokenizer>/`.
fn model_folder_with(model: &str, root: &Path, tokenizer: &str) -> PathBuf {
    let dir = root.join(model);
    if model == "synth-k" {
        synth_model(&dir);
    } else {
        copy_dir(&model_dir(model), &dir);
    }
    copy_dir(&fixtures().join(tokenizer), &dir);
    dir
}

/// The folder of a golden case (model, tokenizer and config changes as the script used them).
fn case_folder(c: &serde_json::Value, root: &Path) -> PathBuf {
    let tokenizer = c["tokenizer"].as_str().unwrap_or("tokenizer-tiny");
    let dir = model_folder_with(c["model"].as_str().unwrap(), root, tokenizer);
    if let Some(patch) = c["config"].as_object() {
        let path = dir.join("config.json");
        let mut config = read_json(&path);
        for (k, v) in patch {
            config[k] = v.clone();
        }
        std::fs::write(&path, config.to_string()).unwrap();
    }
    dir
}

/// The script's `synth_values`: exact f32 weights from an integer hash of (name, index).
fn synth_values(name: &str, n: usize) -> Vec<f32> {
    let mut h: u32 = 2_166_136_261;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    (0..n)
        .map(|i| {
            let mut x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(h);
            x ^= x >> 15;
            x = x.wrapping_mul(0x2C1B_3C6D);
            x ^= x >> 12;
            x = x.wrapping_mul(0x297A_2D39);
            x ^= x >> 15;
            let v = (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            if name.ends_with("norm.weight") {
                1.0 + v * 0.25
            } else if name.ends_with(".bias") {
                v * 0.25
            } else if name.contains("embed_tokens") || name.contains("lm_head") {
                v * 0.5
            } else {
                v * 0.125
            }
        })
        .collect()
}

const SYNTH_CONFIG: &str = r#"{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 256,
 "intermediate_size": 512, "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2,
 "vocab_size": 1024, "max_position_embeddings": 512, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
 "tie_word_embeddings": false, "hidden_act": "silu", "torch_dtype": "float32", "bos_token_id": 1,
 "eos_token_id": 2}"#;

fn synth_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), SYNTH_CONFIG).unwrap();
    let config = ModelConfig::from_json(SYNTH_CONFIG).unwrap();
    let expected = config.expected_tensors();
    let values: Vec<Vec<f32>> = expected
        .iter()
        .map(|t| synth_values(&t.name, t.shape.iter().product()))
        .collect();
    let tensors: Vec<F32Tensor<'_>> = expected
        .iter()
        .zip(&values)
        .map(|(t, v)| F32Tensor {
            name: &t.name,
            shape: t.shape.clone(),
            values: v,
        })
        .collect();
    write_f32(
        &dir.join("model.safetensors"),
        &tensors,
        &[("format", "pt")],
    )
    .unwrap();
}

fn sha256(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

fn adapter_dir(name: &str) -> PathBuf {
    fixtures().join("lora").join(name).join("adapter")
}

fn export_case(
    model_dir: &Path,
    adapter: Option<&str>,
    out: &Path,
    ty: ExportType,
    name: &str,
) -> burnish::export::ExportReport {
    let folder = ModelFolder::open(model_dir).unwrap();
    let adapter = adapter.map(|a| read_adapter(&adapter_dir(a), &folder.config).unwrap());
    export(&ExportRequest {
        model_dir,
        adapter: adapter.as_ref(),
        out,
        ty,
        name,
        force: false,
    })
    .unwrap()
}

/// q8_0, q4_0 and q5_0 byte for byte as `gguf.quants.quantize` (equal to ggml's C reference),
/// q4_K and q6_K byte for byte as ggml-quants.c's reference quantizers, on rows with zeros,
/// constants, outliers, tiny values, one sign only and exact rounding ties.
#[test]
fn quantizers_match_the_reference_bytes() {
    let bytes = std::fs::read(fixtures().join("golden/gguf-quant.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let input: Vec<f32> = st
        .tensor("input")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    for (name, ty) in [
        ("q8_0", GgmlType::Q8_0),
        ("q4_0", GgmlType::Q4_0),
        ("q5_0", GgmlType::Q5_0),
        ("q4_K", GgmlType::Q4K),
        ("q6_K", GgmlType::Q6K),
    ] {
        let want = st.tensor(name).unwrap().data().to_vec();
        let got = quant::encode(&input, 512, ty);
        assert_eq!(got.len(), want.len(), "{name}");
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(first, None, "{name}: first differing byte");
    }
}

/// Every (model, type) export is byte-identical to the file the reference script validated:
/// read by GGUFReader (metadata, llama.cpp names, Q/K permutation, per-tensor types by
/// llama.cpp's rule, tensors equal to the PEFT-merged model after rounding / quantization) and
/// loaded by transformers (logits within the format's error, tokenizer ids).
#[test]
fn exports_are_the_files_the_reference_checked() {
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    for (case, c) in g["cases"].as_object().unwrap() {
        let model = c["model"].as_str().unwrap();
        let adapter = c["adapter"].as_str();
        let dir = case_folder(c, &tmp.path().join(case));
        for (ty, file) in c["files"].as_object().unwrap() {
            let out = tmp.path().join(format!("{case}-{ty}.gguf"));
            let name = format!("fixture-{model}");
            let report = export_case(&dir, adapter, &out, ty.parse().unwrap(), &name);
            assert_eq!(report.bytes, file["bytes"].as_u64().unwrap(), "{case} {ty}");
            assert_eq!(
                sha256(&out),
                file["sha256"].as_str().unwrap(),
                "{case} {ty}: the export differs from the file scripts/gguf_reference.py checked \
                 (rerun it if the change is intended)"
            );
        }
    }
}

/// transformers' logits from the f16 and q8_0 files (last position of two 12-token rows, in the
/// golden) against burnish's own forward pass of the merged model (base + adapter, f32): within
/// the format's error as a fraction of the largest logit (f16 0.2%, q8_0 5%: the bounds the
/// script holds transformers' merged model to, read from the golden).
#[test]
fn transformers_logits_from_the_files_match_burnish() {
    let g = golden();
    let gold = read_golden(&fixtures().join("golden/gguf-export.safetensors"));
    let ids = &gold["ids"];
    let rows: Vec<Vec<u32>> = ids
        .i64
        .chunks(ids.shape[1])
        .map(|r| r.iter().map(|&v| v as u32).collect())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    for (case, c) in g["cases"].as_object().unwrap() {
        let dir = case_folder(c, &tmp.path().join(case));
        let mut model = ModelFolder::open(&dir)
            .unwrap()
            .load::<Cpu>(DType::F32, &Default::default())
            .unwrap();
        if let Some(a) = c["adapter"].as_str() {
            burnish::lora::apply_adapter(&mut model, &adapter_dir(a), false).unwrap();
        }
        let all = model
            .logits(&HostBatch::from_rows(&rows, 0))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        // [rows, seq, vocab] -> the last position of each row.
        let (seq, vocab) = (rows[0].len(), all.len() / rows.len() / rows[0].len());
        let ours: Vec<f32> = (0..rows.len())
            .flat_map(|r| all[(r * seq + seq - 1) * vocab..(r * seq + seq) * vocab].to_vec())
            .collect();
        let scale = ours.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let case_scale = c["logit_bound_scale"].as_f64().unwrap_or(1.0) as f32;
        for ty in ["f16", "q8_0"] {
            let theirs = &gold[&format!("{case}.{ty}.logits")].f32;
            let bound = g["logit_bounds_rel_max"][ty].as_f64().unwrap() as f32 * case_scale;
            let diff = max_abs_diff(&ours, theirs) / scale;
            assert!(diff < bound, "{case} {ty}: {diff} >= {bound}");
        }
        // The bound is not vacuous: q8_0 differs from f32 more than f16 does.
        let f16 = max_abs_diff(&ours, &gold[&format!("{case}.f16.logits")].f32);
        let q8 = max_abs_diff(&ours, &gold[&format!("{case}.q8_0.logits")].f32);
        assert!(f16 > 0.0 && q8 > f16, "{case}: f16 {f16}, q8_0 {q8}");
    }
}

/// transformers' greedy generation from the f16 file equals burnish's from the merged model.
#[test]
fn greedy_generation_from_the_f16_file_equals_burnish() {
    let g = golden();
    let prompt: Vec<u32> = g["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let n = g["new_tokens"].as_u64().unwrap() as usize;
    let tmp = tempfile::tempdir().unwrap();
    for (case, c) in g["cases"].as_object().unwrap() {
        let dir = case_folder(c, &tmp.path().join(case));
        let mut model = ModelFolder::open(&dir)
            .unwrap()
            .load::<Cpu>(DType::F32, &Default::default())
            .unwrap();
        if let Some(a) = c["adapter"].as_str() {
            burnish::lora::apply_adapter(&mut model, &adapter_dir(a), false).unwrap();
        }
        let mut sampler = Sampler::new(SamplingParams::greedy(), 0);
        let (got, _) = generate(&model, &prompt, n, &[], &mut sampler, |_| {});
        let want: Vec<u32> = c["greedy_f16"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(got, want, "{case}");
    }
}

/// Bad input exits with code 2, says what is wrong, and leaves no file behind.
#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_folder("qwen2-tied", tmp.path());
    let out = tmp.path().join("out.gguf");
    let out_s = out.to_str().unwrap();
    let dir_s = dir.to_str().unwrap();
    let expect = |args: &[&str], needle: &str| {
        let o = burnish(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    };
    expect(
        &["export", dir_s, "--gguf", out_s, "--type", "q3_k"],
        "unknown GGUF type 'q3_k'",
    );
    let missing = tmp.path().join("nope");
    expect(
        &[
            "export",
            missing.to_str().unwrap(),
            "--gguf",
            out_s,
            "--type",
            "q8_0",
        ],
        "not a local folder",
    );
    // An architecture burnish (and this exporter) does not know.
    let gpt2 = tmp.path().join("gpt2");
    copy_dir(&dir, &gpt2);
    let cfg = std::fs::read_to_string(gpt2.join("config.json"))
        .unwrap()
        .replace("Qwen2ForCausalLM", "GPT2LMHeadModel")
        .replace("\"qwen2\"", "\"gpt2\"");
    std::fs::write(gpt2.join("config.json"), cfg).unwrap();
    expect(
        &[
            "export",
            gpt2.to_str().unwrap(),
            "--gguf",
            out_s,
            "--type",
            "q8_0",
        ],
        "unsupported architecture 'GPT2LMHeadModel",
    );
    // No tokenizer: a GGUF file must carry one.
    let bare = tmp.path().join("bare");
    copy_dir(&model_dir("qwen2-tied"), &bare);
    expect(
        &[
            "export",
            bare.to_str().unwrap(),
            "--gguf",
            out_s,
            "--type",
            "q8_0",
        ],
        "tokenizer.json",
    );
    // Output path problems: an existing file (kept as it was), a parent that is a file.
    std::fs::write(&out, b"keep me").unwrap();
    expect(
        &["export", dir_s, "--gguf", out_s, "--type", "q8_0"],
        "exists; choose another path or pass --force",
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let under_file = out.join("x.gguf");
    expect(
        &[
            "export",
            dir_s,
            "--gguf",
            under_file.to_str().unwrap(),
            "--type",
            "q8_0",
        ],
        "cannot write",
    );
    expect(
        &["export", "--gguf", out_s, "--type", "q8_0"],
        "nothing to export",
    );
    // An adapter for another model: refused before anything is written.
    let other = tmp.path().join("other.gguf");
    expect(
        &[
            "export",
            "--adapter",
            adapter_dir("qwen3").to_str().unwrap(),
            "--base",
            dir_s,
            "--gguf",
            other.to_str().unwrap(),
            "--type",
            "q8_0",
        ],
        "adapter",
    );
    let leftovers: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial") || n.ends_with(".gguf") && n != "out.gguf")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A folder as --gguf gets `<name>-<TYPE>.gguf`, and --force replaces a file.
#[test]
fn cli_names_files_in_a_folder_and_replaces_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_folder("qwen2-untied", tmp.path());
    let outdir = tmp.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let args = [
        "export",
        dir.to_str().unwrap(),
        "--gguf",
        outdir.to_str().unwrap(),
        "--type",
        "Q4_K_M",
    ];
    let o = burnish(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let file = outdir.join("qwen2-untied-Q4_K_M.gguf");
    assert_eq!(stdout(&o).trim(), file.to_str().unwrap());
    std::fs::write(&file, b"old").unwrap();
    let mut forced = args.to_vec();
    forced.push("--force");
    let o = burnish(&forced);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(&std::fs::read(&file).unwrap()[..4], b"GGUF");
}

/// `output.gguf` in a recipe writes the files into the merged folder after training, and the
/// end-of-run push uploads them through LFS (pointer = sha256 and size of the local file) with
/// a card that lists them and says how to run them.
#[test]
fn recipe_writes_gguf_files_and_push_publishes_them() {
    let hub = FakeHub::start();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let data = root().join("datasets/alpaca-mini.jsonl");
    let recipe = format!(
        "model: {{base: builtin:tiny-qwen2}}\nlora: {{r: 2, alpha: 4, dropout: 0.0, targets: [q_proj, v_proj]}}\n\
         data:\n  train: [{{path: {}, format: alpaca}}]\n  validation: null\n  seq_len: 64\n\
         train: {{max_steps: 2, micro_batch_size: 2, grad_accum: 1, device: cpu, eval_every: 0, save_every: 0}}\n\
         output: {{dir: {}, gguf: [q8_0, q4_k_m]}}\nlogging: {{tensorboard: false}}\n\
         hub: {{repo: org/tuned, push: [merged]}}\n",
        data.display(),
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
    let merged = out.join("merged");
    let files = hub.files("model", "org/tuned-merged");
    for name in ["run-Q8_0.gguf", "run-Q4_K_M.gguf"] {
        let local = merged.join(name);
        let bytes = std::fs::read(&local).unwrap();
        assert_eq!(&bytes[..4], b"GGUF", "{name}");
        assert_eq!(files.get(name), Some(&bytes), "{name} uploaded");
        let (oid, size) = hub
            .lfs_pointer("model", "org/tuned-merged", name)
            .unwrap_or_else(|| panic!("{name} is not an LFS file"));
        assert_eq!((oid, size), (sha256(&local), bytes.len() as u64), "{name}");
    }
    assert!(files.contains_key("model.safetensors"));
    let card = String::from_utf8(files["README.md"].clone()).unwrap();
    let q8 = std::fs::metadata(merged.join("run-Q8_0.gguf"))
        .unwrap()
        .len();
    for needle in [
        "run-Q8_0.gguf".to_string(),
        "run-Q4_K_M.gguf".to_string(),
        burnish::observe::human_bytes(q8),
        "llama-cli -m run-Q4_K_M.gguf".to_string(),
        "ollama run hf.co/".to_string(),
        "- gguf".to_string(),
    ] {
        assert!(
            card.contains(&needle),
            "{needle} missing from the card:\n{card}"
        );
    }
}

/// A type llama.cpp has but burnish does not write is a recipe error at its line, with a hint.
#[test]
fn recipe_rejects_unknown_gguf_types() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = std::fs::read_to_string(root().join("recipes/demo.yaml")).unwrap();
    let text = demo.replace("  merge: true\n", "  merge: true\n  gguf: [q8_0, q4_k_s]\n");
    assert_ne!(text, demo);
    let r = write_recipe(tmp.path(), "r.yaml", &text);
    let o = burnish(&["validate", r.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("output.gguf.1: 'q4_k_s' is not one of")
            && stderr(&o).contains("did you mean 'q4_k_m'"),
        "{}",
        stderr(&o)
    );
}

/// Gemma models llama.cpp's graphs would compute differently are refused, each naming its
/// key, nothing written: a scale they do not compute (the fixtures' query_pre_attn_scalar 24
/// with head_dim 16), and for Gemma 2 soft caps turned off (its graph always caps) or an
/// untied output projection (it always projects with the embedding), for Gemma 3 an attention
/// cap (its graph caps logits only). The config is checked before any weight is read.
#[test]
fn gemma_models_llama_cpp_would_compute_differently_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let scaled = |extra: serde_json::Value| {
        let mut patch = serde_json::json!({"query_pre_attn_scalar": 16});
        for (k, v) in extra.as_object().unwrap() {
            patch[k] = v.clone();
        }
        patch
    };
    let cases = [
        (
            "gemma3",
            serde_json::json!({}),
            vec!["query_pre_attn_scalar 24", "1/sqrt(16)"],
        ),
        (
            "gemma3",
            scaled(serde_json::json!({"attn_logit_softcapping": 50.0})),
            vec!["attn_logit_softcapping 50", "does not soft-cap attention"],
        ),
        (
            "gemma2",
            serde_json::json!({}),
            vec!["query_pre_attn_scalar 24", "1/sqrt(16)"],
        ),
        (
            "gemma2",
            scaled(serde_json::json!({"attn_logit_softcapping": null})),
            vec!["attn_logit_softcapping null", "always soft-caps"],
        ),
        (
            "gemma2",
            scaled(serde_json::json!({"final_logit_softcapping": null})),
            vec!["final_logit_softcapping null"],
        ),
        (
            "gemma2",
            scaled(serde_json::json!({"tie_word_embeddings": false})),
            vec!["tie_word_embeddings false", "token embedding"],
        ),
    ];
    for (i, (model, patch, needles)) in cases.into_iter().enumerate() {
        let root = tmp.path().join(i.to_string());
        let case = serde_json::json!({"model": model, "tokenizer": "tokenizer-spm-tiny",
            "config": patch});
        let dir = case_folder(&case, &root);
        let out = root.join("g.gguf");
        let o = burnish(&[
            "export",
            dir.to_str().unwrap(),
            "--gguf",
            out.to_str().unwrap(),
            "--type",
            "f16",
        ]);
        assert_eq!(o.status.code(), Some(2), "{model} {patch}: {}", stderr(&o));
        for needle in needles.iter().chain(&["llama.cpp"]) {
            assert!(stderr(&o).contains(needle), "{needle}: {}", stderr(&o));
        }
        assert!(!out.exists(), "{model} {patch}");
    }
}
