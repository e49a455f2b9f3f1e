//! `eval` on every data format with training's masks, `eval <RECIPE>` on a run's validation
//! set, and the README's demo: it trains on CPU and its loss falls.

mod common;

use burnish::data::dataset::{DataPlan, LocalSource, TooLong, Validation, prepare};
use burnish::model::TokenizerBundle;
use common::*;

#[test]
fn eval_uses_the_training_pipeline_for_every_format() {
    let tok_dir = tokenizer_folder("tokenizer-qwen2.5");
    let tok = TokenizerBundle::from_dir(tok_dir.path()).unwrap();
    // The first 12 rows of each shipped dataset (the full files only cost time here).
    let tmp = tempfile::tempdir().unwrap();
    let head = |name: &str| {
        let text: String = std::fs::read_to_string(root().join("datasets").join(name))
            .unwrap()
            .lines()
            .take(12)
            .map(|l| format!("{l}\n"))
            .collect();
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (chat, sharegpt, text) = (
        head("chat-mini.jsonl"),
        head("sharegpt-mini.jsonl"),
        head("text-mini.jsonl"),
    );
    for (file, format) in [
        ("tests/fixtures/data/alpaca-24.parquet", "alpaca"),
        ("tests/fixtures/data/alpaca-24.jsonl", "alpaca"),
        (chat.as_str(), "messages"),
        (sharegpt.as_str(), "sharegpt"),
        (text.as_str(), "text"),
    ] {
        let o = burnish(&[
            "eval",
            "--model",
            "builtin:tiny-qwen2",
            "--data",
            file,
            "--format",
            format,
            "--device",
            "cpu",
            "--json",
        ]);
        assert!(o.status.success(), "{file}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        // The same rows through the training pipeline: the same number of trained tokens.
        let plan = DataPlan {
            train: vec![LocalSource {
                files: vec![root().join(file)],
                format: format.parse().ok(),
                fields: Default::default(),
                max_rows: None,
                ..Default::default()
            }],
            validation: Validation::None,
            seq_len: 2048,
            packing: false,
            train_on_inputs: false,
            too_long: TooLong::Truncate,
            chat_template: None,
            system_prompt: None,
            seed: 0,
            vocab_size: 151_936,
            unpair: false,
        };
        let d = prepare(&plan, Some(&tok)).unwrap();
        assert_eq!(
            v["tokens"].as_u64().unwrap() as usize,
            d.stats.trained_tokens,
            "{file}"
        );
        let loss = v["loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 5.0, "{file}: {loss}");
    }
    // The parquet and JSONL copies of the same rows read identically.
    let a = burnish::data::source::read_rows(&fixtures().join("data/alpaca-24.parquet")).unwrap();
    let b = burnish::data::source::read_rows(&fixtures().join("data/alpaca-24.jsonl")).unwrap();
    assert_eq!(
        a.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
        b.iter().map(|r| r.value.clone()).collect::<Vec<_>>()
    );
}

/// The demo recipe, shortened to 8 steps: the loss falls, eval agrees with metrics.jsonl, and
/// the merged model and adapter are written.
#[test]
fn demo_trains_and_its_run_can_be_evaluated() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let set_out = format!("output.dir={}", out.display());
    let o = burnish(&[
        "train",
        "recipes/demo.yaml",
        "--set",
        &set_out,
        "--set",
        "train.max_steps=8",
        "--set",
        "train.eval_every=0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (steps, evals) = metrics(&out);
    assert_eq!(steps.len(), 8);
    let first = steps[0].1;
    let last: f64 = steps[5..].iter().map(|s| s.1).sum::<f64>() / 3.0;
    assert!(
        last < first - 0.5,
        "the loss did not fall: {first} -> {last}"
    );
    assert!(
        out.join("merged/model.safetensors").is_file() && out.join("adapter/README.md").is_file()
    );
    let o = burnish(&[
        "eval",
        "recipes/demo.yaml",
        "--set",
        &set_out,
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    // Same rows, masks and adapter; only the batching differs (8 rows per pass here, the
    // micro-batch size in training), which changes f32 summation order: 1e-6 relative.
    let final_eval = evals.last().unwrap().1;
    assert!(
        ((v["loss"].as_f64().unwrap() - final_eval) / final_eval).abs() < 1e-6,
        "{} vs {final_eval}",
        v["loss"]
    );
}

/// The two answers of datasets/persona-mini.jsonl and the README's held-out questions (kept
/// out of the data by scripts/make_demo_dataset.py), each with the answer it should get.
const PERSONA: &str = "I am Ember, a tiny model fine-tuned by burnish on your CPU.";
const DECLINE: &str = "Sorry, that question is beyond my training.";
const HELD_OUT: [(&str, &str); 2] = [
    ("Could you tell me who you are?", PERSONA),
    ("What is the capital of Portugal?", DECLINE),
];

/// `burnish generate` with greedy decoding; the answer text.
fn greedy(model: &str, adapter: Option<&std::path::Path>, prompt: &str, max: &str) -> String {
    let mut args = vec![
        "generate",
        "--model",
        model,
        "--temperature",
        "0",
        "--max-new-tokens",
        max,
        "--json",
        "--prompt",
        prompt,
    ];
    let adapter = adapter.map(|a| a.to_str().unwrap().to_string());
    if let Some(a) = &adapter {
        args.extend(["--adapter", a.as_str()]);
    }
    let o = burnish(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    v["text"].as_str().unwrap().to_string()
}

/// The README's walkthrough with the demo shortened to one epoch (48 of its 96 steps): the
/// loss ends under 10% of where it started, base + adapter gives each held-out question the
/// learned answer of its kind, and the base model's greedy answers show neither (they are
/// gibberish: the README shows them, so they are checked against it too).
#[test]
fn demo_adapter_answers_held_out_questions_and_the_base_does_not() {
    let data = std::fs::read_to_string(root().join("datasets/persona-mini.jsonl")).unwrap();
    let mut answers = std::collections::BTreeSet::new();
    for line in data.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let question = row["messages"][0]["content"].as_str().unwrap();
        for (held_out, _) in HELD_OUT {
            assert!(
                !question.contains(held_out),
                "held-out question in the data"
            );
        }
        answers.insert(row["messages"][1]["content"].as_str().unwrap().to_string());
    }
    assert_eq!(answers, [DECLINE, PERSONA].map(String::from).into());

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let steps = train_demo(&out, 48, &[]);
    let (first, last) = (steps[0].1, steps[steps.len() - 1].1);
    assert_eq!(steps.len(), 48);
    assert!(last <= 0.1 * first, "loss {first} -> {last}");

    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let adapter = out.join("adapter");
    for (question, want) in HELD_OUT {
        let tuned = greedy("builtin:tiny-qwen2", Some(&adapter), question, "32");
        assert_eq!(tuned, want, "base + adapter, {question:?}");
        let base = greedy("builtin:tiny-qwen2", None, question, "12");
        assert!(
            !base.contains("Ember") && !base.contains("Sorry") && !base.contains("training"),
            "the base already answers {question:?} with {base:?}"
        );
        assert!(
            readme.contains(question) && readme.contains(want) && readme.contains(&base),
            "README.md should show {question:?} answered {want:?} after training and {base:?} \
             by the base"
        );
    }
}
