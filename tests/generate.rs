//! Generation against transformers' `generate` (greedy), the KV cache against a full forward
//! pass, sampling reproducibility, and `chat` through stdin with the Qwen2.5 template.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use burn::tensor::DType;
use burnish::backend::Cpu;
use burnish::generate::{Sampler, SamplingParams, generate, incremental_logits};
use burnish::model::{HostBatch, ModelFolder};
use common::*;

fn load(dir: &std::path::Path) -> burnish::model::Model<Cpu> {
    ModelFolder::open(dir)
        .unwrap()
        .load::<Cpu>(DType::F32, &Default::default())
        .unwrap()
}

#[test]
fn greedy_generation_equals_transformers() {
    let golden = read_json(&fixtures().join("golden/generation.json"));
    for (name, case) in golden["cases"].as_object().unwrap() {
        let mut model = match name.as_str() {
            "qwen2-tied+adapter" => load(&model_dir("qwen2-tied")),
            "qwen2-tied-merged" => load(&fixtures().join("lora/qwen2-tied/merged")),
            other => load(&model_dir(other)),
        };
        if name.ends_with("+adapter") {
            burnish::lora::apply_adapter(
                &mut model,
                &fixtures().join("lora/qwen2-tied/adapter"),
                false,
            )
            .unwrap();
        }
        let prompt: Vec<u32> = case["prompt"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let want: Vec<u32> = case["generated"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mut sampler = Sampler::new(SamplingParams::greedy(), 0);
        let mut streamed = Vec::new();
        let (got, stats) = generate(&model, &prompt, 20, &[2], &mut sampler, |id| {
            streamed.push(id)
        });
        assert_eq!(got, want, "{name}");
        assert_eq!(streamed, got);
        assert_eq!(
            (stats.prompt_tokens, stats.generated_tokens),
            (prompt.len(), got.len())
        );
    }
}

/// Logits through the cache (prompt, then token by token) against one full forward: 1e-5.
#[test]
fn kv_cache_logits_equal_a_full_forward() {
    for variant in [
        "qwen2-tied",
        "llama-gqa",
        "qwen3",
        "qwen2-mha",
        "gemma3",
        "gemma2",
    ] {
        let model = load(&model_dir(variant));
        let ids: Vec<u32> = (0..14u32).map(|i| (i * 53 + 7) % 1000 + 3).collect();
        let full = model
            .logits(&HostBatch::from_rows(std::slice::from_ref(&ids), 0))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let vocab = full.len() / ids.len();
        let steps = incremental_logits(&model, &ids, 5);
        for (k, logits) in steps.iter().enumerate() {
            let pos = 4 + k;
            let diff = max_abs_diff(logits, &full[pos * vocab..(pos + 1) * vocab]);
            assert!(diff <= 1e-5, "{variant} position {pos}: {diff}");
        }
    }
}

fn gen_json(extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "generate",
        "--model",
        "builtin:tiny-qwen2",
        "--prompt",
        "Name a colour.",
        "--max-new-tokens",
        "8",
        "--device",
        "cpu",
        "--json",
    ];
    args.extend(extra);
    let o = burnish(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("tokens/s"), "{}", stderr(&o));
    serde_json::from_str(stdout(&o).trim()).unwrap()
}

#[test]
fn sampling_is_reproducible_and_top_k_one_is_greedy() {
    let a = gen_json(&["--seed", "5", "--temperature", "1.0", "--top-k", "50"]);
    let b = gen_json(&["--seed", "5", "--temperature", "1.0", "--top-k", "50"]);
    let c = gen_json(&["--seed", "6", "--temperature", "1.0", "--top-k", "50"]);
    assert_eq!(a["token_ids"], b["token_ids"]);
    assert_ne!(a["token_ids"], c["token_ids"]);
    let greedy = gen_json(&["--temperature", "0"]);
    let topk1 = gen_json(&["--seed", "9", "--temperature", "1.3", "--top-k", "1"]);
    assert_eq!(greedy["token_ids"], topk1["token_ids"]);
    // The default Qwen2.5 system prompt plus the user turn and the generation prompt.
    assert_eq!(greedy["prompt_tokens"], 33);
    assert_eq!(
        greedy["generated_tokens"].as_u64().unwrap() as usize,
        greedy["token_ids"].as_array().unwrap().len()
    );
    // On a 4-bit base (as a QLoRA adapter was trained): it still generates, and the bad
    // setting is a user error.
    let q = gen_json(&["--temperature", "0", "--quant-bits", "4"]);
    assert_eq!(q["prompt_tokens"], 33);
    assert!(!q["token_ids"].as_array().unwrap().is_empty());
    let o = burnish(&[
        "generate",
        "--model",
        "builtin:tiny-qwen2",
        "--prompt",
        "x",
        "--device",
        "cpu",
        "--quant-bits",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("bits must be 4 or 8"), "{}", stderr(&o));
}

#[test]
fn chat_over_stdin_keeps_history_in_the_template() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_burnish"))
        .args([
            "-v",
            "chat",
            "--model",
            "builtin:tiny-qwen2",
            "--max-new-tokens",
            "3",
            "--temperature",
            "0",
            "--device",
            "cpu",
        ])
        .env("RAYON_NUM_THREADS", "2")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hi there\nAnd now?\n/reset\nFresh start\n/exit\nnever read\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let prompts: Vec<&str> = err.lines().filter(|l| l.contains("prompt: ")).collect();
    assert_eq!(prompts.len(), 3, "{err}");
    let sys = r"<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n";
    assert!(
        prompts[0].contains(&format!(
            r"{sys}<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        )),
        "{}",
        prompts[0]
    );
    // Turn two carries turn one, its reply closed with <|im_end|>.
    assert!(
        prompts[1].contains(r"<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"),
        "{}",
        prompts[1]
    );
    assert!(
        prompts[1]
            .contains(r"<|im_end|>\n<|im_start|>user\nAnd now?<|im_end|>\n<|im_start|>assistant\n"),
        "{}",
        prompts[1]
    );
    // After /reset the history is gone; /exit stops before the last line.
    assert!(
        !prompts[2].contains("Hi there") && prompts[2].contains("Fresh start"),
        "{}",
        prompts[2]
    );
    assert!(!err.contains("never read"));
    assert_eq!(err.matches("generated").count(), 3);
}
