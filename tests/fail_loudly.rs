//! What used to go wrong without a word: NaN hidden by the kernels, conversation turns dropped
//! for an unknown role, truncation nobody saw, checks that passed without checking, and inputs
//! that ended in a bare OS error. Each case exits 2 with a message naming the file, line, key,
//! path, tensor or flag, and loses nothing already saved.

mod common;

use std::path::{Path, PathBuf};

use burnish::model::safetensors_out::{F32Tensor, write_f32};
use common::*;

/// A copy of `src` (a model or adapter folder) with element 0 of tensor `name` set to NaN.
fn poisoned(src: &Path, dst: &Path, file: &str, name: &str) -> PathBuf {
    copy_dir(src, dst);
    let path = dst.join(file);
    let tensors = st_f32(&path);
    assert!(
        tensors.contains_key(name),
        "{name} not in {}",
        path.display()
    );
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shapes: Vec<(String, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec()))
        .collect();
    let mut values = tensors;
    values.get_mut(name).unwrap()[0] = f32::NAN;
    let views: Vec<F32Tensor<'_>> = shapes
        .iter()
        .map(|(n, shape)| F32Tensor {
            name: n,
            shape: shape.clone(),
            values: &values[n],
        })
        .collect();
    write_f32(&path, &views, &[("format", "pt")]).unwrap();
    dst.to_path_buf()
}

fn assert_exit_2(o: &std::process::Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn tiny_recipe(dir: &Path, name: &str, body: &str) -> PathBuf {
    write_recipe(dir, name, body)
}

const BASE_TENSOR: &str = "model.layers.0.self_attn.q_proj.weight";

/// NaN in the base: eval, train and merge all stop, naming the tensor and its file.
#[test]
fn nan_in_base_weights_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = poisoned(
        &model_dir("qwen2-tied"),
        &tmp.path().join("model"),
        "model.safetensors",
        BASE_TENSOR,
    );
    let rows = pretokenized_rows(tmp.path(), 11);
    let model_s = model.to_str().unwrap();
    let o = burnish(&[
        "eval",
        "--model",
        model_s,
        "--data",
        rows.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_exit_2(&o, &[BASE_TENSOR, "model.safetensors", "NaN or infinite"]);

    let out = tmp.path().join("run");
    let r = tiny_recipe(
        tmp.path(),
        "nan.yaml",
        &format!(
            "model: {{base: {model_s}}}\nlora: {{r: 2, alpha: 4, dropout: 0.0}}\ndata: {{train: [{{path: {}, format: pretokenized}}], validation: null, seq_len: 32}}\ntrain: {{max_steps: 2, micro_batch_size: 2, grad_accum: 1, device: cpu}}\noutput: {{dir: {}}}\n",
            rows.display(),
            out.display()
        ),
    );
    let o = burnish(&["train", r.to_str().unwrap()]);
    assert_exit_2(&o, &[BASE_TENSOR, "model.safetensors"]);

    let adapter = fixtures().join("lora/qwen2-tied/adapter");
    let o = burnish(&[
        "merge",
        "--adapter",
        adapter.to_str().unwrap(),
        "--base",
        model_s,
        "--out",
        tmp.path().join("merged").to_str().unwrap(),
    ]);
    assert_exit_2(&o, &[BASE_TENSOR, "NaN or infinite"]);
    assert!(!tmp.path().join("merged").exists());
}

/// NaN in an adapter: applying it (eval) and starting from it (`lora.init_from`) both stop.
#[test]
fn nan_in_an_adapter_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let key = "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight";
    let adapter = poisoned(
        &fixtures().join("lora/qwen2-tied/adapter"),
        &tmp.path().join("adapter"),
        "adapter_model.safetensors",
        key,
    );
    let rows = pretokenized_rows(tmp.path(), 12);
    let o = burnish(&[
        "eval",
        "--model",
        model_dir("qwen2-tied").to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        rows.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_exit_2(&o, &[key, "adapter_model.safetensors"]);

    let r = tiny_recipe(
        tmp.path(),
        "init.yaml",
        &format!(
            "model: {{base: {}}}\nlora: {{r: 8, alpha: 16, dropout: 0.0, init_from: {}}}\ndata: {{train: [{{path: {}, format: pretokenized}}], validation: null, seq_len: 32}}\ntrain: {{max_steps: 2, micro_batch_size: 2, grad_accum: 1, device: cpu}}\noutput: {{dir: {}}}\n",
            model_dir("qwen2-tied").display(),
            adapter.display(),
            rows.display(),
            tmp.path().join("run").display()
        ),
    );
    let o = burnish(&["train", r.to_str().unwrap()]);
    assert_exit_2(&o, &[key, "lora.init_from"]);
}

/// A learning rate that blows the adapter up: the run stops at the first step whose loss is
/// not finite, without applying it, and names the checkpoint to go back to, which is intact.
#[test]
fn divergence_stops_at_its_step_and_keeps_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = pretokenized_rows(tmp.path(), 13);
    let out = tmp.path().join("run");
    let r = tiny_recipe(
        tmp.path(),
        "diverge.yaml",
        &format!(
            "model: {{base: {}}}\nlora: {{r: 4, alpha: 8, dropout: 0.0}}\ndata: {{train: [{{path: {}, format: pretokenized}}], validation: null, seq_len: 32}}\ntrain: {{max_steps: 6, micro_batch_size: 2, grad_accum: 1, device: cpu, save_every: 1, max_grad_norm: null, optimizer: {{lr: 1.0e30}}, scheduler: {{name: constant, warmup_steps: 0}}}}\noutput: {{dir: {}}}\nlogging: {{tensorboard: false}}\n",
            model_dir("qwen2-tied").display(),
            rows.display(),
            out.display()
        ),
    );
    let o = burnish(&["train", r.to_str().unwrap()]);
    let err = stderr(&o);
    assert_exit_2(
        &o,
        &["step 2:", "the last good checkpoint is", "step-000001"],
    );
    // Step 1 was finite and saved; nothing of step 2 was.
    let (steps, _) = metrics(&out);
    assert_eq!(steps.len(), 1, "{err}");
    assert!(steps[0].1.is_finite());
    let ckpts: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ckpts, vec!["step-000001".to_string()]);
    let a = st_f32(&out.join("checkpoints/step-000001/adapter_model.safetensors"));
    assert!(a.values().flatten().all(|x| x.is_finite()));
}

fn chat_file(dir: &Path, name: &str, rows: &[serde_json::Value]) -> PathBuf {
    let p = dir.join(name);
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&p, text).unwrap();
    p
}

/// A turn whose role no template renders would vanish from the training text: refused with
/// the file, line and the roles allowed; a `roles:` mapping makes it trainable.
#[test]
fn unknown_roles_are_refused_and_can_be_mapped() {
    let tmp = tempfile::tempdir().unwrap();
    let good = serde_json::json!({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]});
    let robot = serde_json::json!({"messages": [
        {"role": "robot", "content": "beep"}, {"role": "assistant", "content": "boop"}]});
    let data = chat_file(tmp.path(), "chat.jsonl", &[good.clone(), good, robot]);
    let plan = |extra: &str| {
        let r = tiny_recipe(
            tmp.path(),
            "roles.yaml",
            &format!(
                "model: {{base: builtin:tiny-qwen2}}\ndata: {{train: [{{path: {}, format: messages{extra}}}], validation: null, seq_len: 64}}\n",
                data.display()
            ),
        );
        burnish(&["plan", r.to_str().unwrap()])
    };
    let o = plan("");
    assert_exit_2(
        &o,
        &[
            "chat.jsonl:3",
            "role 'robot'",
            "system, user, assistant, tool",
            "roles: {robot: assistant}",
        ],
    );
    let o = plan(", roles: {robot: user}");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = plan(", roles: {robot: android}");
    assert_exit_2(&o, &["data.train.0.roles.robot", "'android'"]);

    let martian = serde_json::json!({"conversations": [
        {"from": "martian", "value": "ack"}, {"from": "gpt", "value": "ok"}]});
    let sg = chat_file(tmp.path(), "sg.jsonl", &[martian]);
    let r = tiny_recipe(
        tmp.path(),
        "sg.yaml",
        &format!(
            "model: {{base: builtin:tiny-qwen2}}\ndata: {{train: [{{path: {}, format: sharegpt}}], validation: null}}\n",
            sg.display()
        ),
    );
    let o = burnish(&["plan", r.to_str().unwrap()]);
    assert_exit_2(&o, &["sg.jsonl:1", "from 'martian'"]);
}

/// `train` says how many examples `seq_len` cut or dropped, as `plan` does.
#[test]
fn training_reports_truncation() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let set_out = format!("output.dir={}", out.display());
    let o = burnish(&[
        "train",
        "recipes/demo.yaml",
        "--set",
        &set_out,
        "--set",
        "data.train=[{path: datasets/alpaca-mini.jsonl, format: alpaca}]",
        "--set",
        "data.seq_len=64",
        "--set",
        "train.max_steps=1",
        "--set",
        "output.merge=false",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("truncated to data.seq_len 64"),
        "{}",
        stderr(&o)
    );
}

/// Numbers that make no sense are refused by name before anything loads.
#[test]
fn bad_command_line_numbers_name_the_flag() {
    let model = model_dir("qwen2-tied");
    let m = model.to_str().unwrap();
    for (args, flag) in [
        (
            vec!["eval", "--model", m, "--data", "x.jsonl", "--seq-len", "0"],
            "--seq-len",
        ),
        (
            vec![
                "eval",
                "--model",
                m,
                "--data",
                "x.jsonl",
                "--batch-size",
                "0",
            ],
            "--batch-size",
        ),
        (
            vec![
                "generate",
                "--model",
                m,
                "--prompt",
                "hi",
                "--temperature=-1",
            ],
            "--temperature",
        ),
        (
            vec!["generate", "--model", m, "--prompt", "hi", "--top-p", "0"],
            "--top-p",
        ),
        (vec!["bench", "--steps", "0"], "--steps"),
    ] {
        let o = burnish(&args);
        assert_exit_2(&o, &[flag]);
    }
}

/// Invalid UTF-8 in a data file names its line.
#[test]
fn invalid_utf8_names_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.jsonl");
    let mut bytes = b"{\"text\": \"fine\"}\n{\"text\": \"fine\"}\n{\"text\": \"".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(b"\"}\n");
    std::fs::write(&p, bytes).unwrap();
    let r = tiny_recipe(
        tmp.path(),
        "utf8.yaml",
        &format!(
            "model: {{base: builtin:tiny-qwen2}}\ndata: {{train: [{{path: {}, format: text}}], validation: null}}\n",
            p.display()
        ),
    );
    let o = burnish(&["plan", r.to_str().unwrap()]);
    assert_exit_2(&o, &["bad.jsonl:3", "UTF-8"]);
}

/// An output location that cannot be a folder is named, with what to do.
#[test]
fn output_dir_problems_name_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("taken");
    std::fs::write(&file, b"x").unwrap();
    for (dir, needle) in [
        (file.clone(), "is a file, not a folder"),
        (file.join("run"), "which is a file"),
    ] {
        let set_out = format!("output.dir={}", dir.display());
        let o = burnish(&[
            "train",
            "recipes/demo.yaml",
            "--set",
            &set_out,
            "--set",
            "train.max_steps=1",
        ]);
        assert_exit_2(&o, &[needle, file.to_str().unwrap(), "output.dir"]);
    }
}

/// HF_HUB_OFFLINE=1: push refuses at once without contacting the endpoint.
#[test]
fn offline_push_refuses_at_once() {
    let adapter = fixtures().join("lora/qwen2-tied/adapter");
    // Port 9 (discard) has no server here: any contact would be a network error instead.
    let o = burnish_env(
        &["push", adapter.to_str().unwrap(), "org/adapter"],
        &[
            ("HF_HUB_OFFLINE", "1"),
            ("HF_TOKEN", "hf_test"),
            ("HF_ENDPOINT", "http://127.0.0.1:9"),
        ],
    );
    assert_exit_2(&o, &["HF_HUB_OFFLINE"]);
    assert!(!stderr(&o).contains("cannot reach"), "{}", stderr(&o));
}

/// A burnish adapter's config holds only keys PEFT itself writes (a fixture saved by PEFT is
/// the reference), so `PeftModel.from_pretrained` has nothing to warn about; burnish's version
/// is in the tensor file's metadata.
#[test]
fn adapter_config_keeps_to_pefts_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    train_demo(&out, 1, &[]);
    let ours = read_json(&out.join("adapter/adapter_config.json"));
    let peft = read_json(&fixtures().join("lora/qwen2-tied/adapter/adapter_config.json"));
    let peft_keys: Vec<&String> = peft.as_object().unwrap().keys().collect();
    for k in ours.as_object().unwrap().keys() {
        assert!(peft_keys.contains(&k), "PEFT does not write '{k}'");
    }
    let bytes = std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(
        meta.get("burnish_version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
}

/// Gemma 2's chat template (google/gemma-2-2b-it's tokenizer_config.json) refuses system
/// messages; burnish folds a leading one into the first user turn (row 1 trains), but one in
/// the middle of a conversation makes the template raise: the error names the file and line,
/// the template's words, and what to do about the system message.
#[test]
fn a_template_refusing_system_messages_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("gemma2");
    copy_dir(&model_dir("gemma2"), &model);
    // The fixtures' 1,024-token tokenizer, with Gemma 3's tokenizer settings.
    std::fs::copy(
        fixtures().join("tokenizer-tiny/tokenizer.json"),
        model.join("tokenizer.json"),
    )
    .unwrap();
    let mut config = read_json(&fixtures().join("tokenizer-gemma3/tokenizer_config.json"));
    config["chat_template"] = GEMMA2_TEMPLATE.into();
    std::fs::write(model.join("tokenizer_config.json"), config.to_string()).unwrap();
    let data = tmp.path().join("chat.jsonl");
    let rows = [
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#,
        r#"{"messages": [{"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#,
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#,
    ];
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    let r = tiny_recipe(
        tmp.path(),
        "r.yaml",
        &format!(
            "model: {{base: {}}}\nlora: {{r: 4, alpha: 8, targets: all-linear}}\ndata:\n  train: [{{path: {}, format: messages}}]\n  seq_len: 64\ntrain: {{max_steps: 1, micro_batch_size: 1, device: cpu}}\noutput: {{dir: {}}}\n",
            model.display(),
            data.display(),
            tmp.path().join("out").display()
        ),
    );
    let o = burnish(&["validate", r.to_str().unwrap()]);
    assert_exit_2(
        &o,
        &[
            "chat.jsonl:3",
            "Conversation roles must alternate",
            "burnish folds only a leading one",
            "drop system messages from the data",
        ],
    );
}
