//! `burnish merge` against PEFT's `merge_and_unload()` + `save_pretrained`, and its failure
//! behaviour (no half-written output, no silent overwrite).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use burnish::model::safetensors_out::{F32Tensor, write_f32};
use common::*;
use safetensors::SafeTensors;

/// name -> (dtype, shape, raw bytes) over every shard of a folder.
fn tensors(dir: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            continue;
        }
        let bytes = fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            out.insert(
                name,
                (
                    format!("{:?}", view.dtype()),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ),
            );
        }
    }
    out
}

fn to_f32(dtype: &str, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        "F32" => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "BF16" => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => panic!("dtype {other}"),
    }
}

fn merge(adapter: &Path, base: Option<&Path>, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "merge",
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(b) = base {
        args.extend(["--base", b.to_str().unwrap()]);
    }
    args.extend(extra);
    burnish(&args)
}

#[test]
fn f32_merge_equals_peft_and_stays_tied() {
    // `dora`: each merged row rescaled to its magnitude, as PEFT's merge does.
    for case in ["qwen2-tied", "llama-gqa", "gemma2", "dora"] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("merged");
        // No --base: the adapter's base_model_name_or_path (relative to the repo root) is used.
        let o = merge(
            &fixtures().join(format!("lora/{case}/adapter")),
            None,
            &out,
            &["--verify"],
        );
        assert!(o.status.success(), "{case}: {}", stderr(&o));
        assert!(
            stdout(&o).contains("verify: max |logit difference|"),
            "{}",
            stdout(&o)
        );
        let ours = tensors(&out);
        let peft = tensors(&fixtures().join(format!("lora/{case}/merged")));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            peft.keys().collect::<Vec<_>>(),
            "{case}: tensor names"
        );
        let base = tensors(&model_dir(if case == "dora" { "qwen2-tied" } else { case }));
        for (name, (dtype, shape, bytes)) in &ours {
            let (pd, ps, pb) = &peft[name];
            assert_eq!((dtype, shape), (pd, ps), "{case} {name}");
            let diff = max_abs_diff(&to_f32(dtype, bytes), &to_f32(pd, pb));
            assert!(diff <= 1e-6, "{case} {name}: {diff}");
            if !name.contains("_proj.weight") {
                assert_eq!(
                    bytes, &base[name].2,
                    "{case} {name}: untouched tensor must be copied bit for bit"
                );
            }
        }
        let cfg = read_json(&out.join("config.json"));
        let info = read_json(&fixtures().join(format!("golden/lora-{case}.json")));
        assert_eq!(
            cfg["tie_word_embeddings"].as_bool(),
            info["merged_tied"].as_bool()
        );
        assert_eq!(
            ours.contains_key("lm_head.weight"),
            !info["merged_tied"].as_bool().unwrap()
        );
        assert!(out.join("generation_config.json").is_file());
        let card = fs::read_to_string(out.join("README.md")).unwrap();
        let method = if case == "dora" { "DoRA" } else { "LoRA" };
        assert!(
            card.contains(&format!("with a {method} adapter")),
            "{case}: {card}"
        );
    }
}

/// A bf16 base merges to bf16. PEFT rounds `scaling * B @ A` to bf16 and then adds in bf16
/// (two roundings); burnish adds in f32 and rounds once. Each rounding is at most half a bf16
/// step (2^-8 relative), so the two can differ by at most ~1.5 steps: allow 2 steps.
#[test]
fn bf16_base_merges_to_bf16() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let o = merge(
        &fixtures().join("lora/qwen2-bf16/adapter"),
        None,
        &out,
        &["--verify"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = tensors(&out);
    let peft = tensors(&fixtures().join("lora/qwen2-bf16/merged"));
    let mut changed = 0;
    for (name, (dtype, _, bytes)) in &ours {
        assert_eq!(dtype, "BF16", "{name}");
        let a = to_f32(dtype, bytes);
        let b = to_f32(&peft[name].0, &peft[name].2);
        for (x, y) in a.iter().zip(&b) {
            let step = y.abs().max(1e-30) * 2f32.powi(-7);
            assert!((x - y).abs() <= 2.0 * step, "{name}: {x} vs {y}");
        }
        changed += usize::from(a != b);
    }
    assert!(
        changed < ours.len(),
        "most tensors should be bit-identical to PEFT's"
    );
    assert_eq!(read_json(&out.join("config.json"))["dtype"], "bfloat16");
}

#[test]
fn sharded_base_keeps_its_layout_and_dtype_flag_converts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    // The qwen2-tied adapter fits qwen2-untied (same shapes): merge it into the 4-shard base.
    let o = merge(
        &fixtures().join("lora/qwen2-tied/adapter"),
        Some(&model_dir("qwen2-untied")),
        &out,
        &["--dtype", "bf16", "--verify"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.contains(&"model-00004-of-00004.safetensors".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"model.safetensors.index.json".to_string()));
    let index = read_json(&out.join("model.safetensors.index.json"));
    let total: u64 = tensors(&out).values().map(|(_, _, b)| b.len() as u64).sum();
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
    let base_index = read_json(&model_dir("qwen2-untied").join("model.safetensors.index.json"));
    assert_eq!(index["weight_map"], base_index["weight_map"]);
    assert_eq!(read_json(&out.join("config.json"))["dtype"], "bfloat16");
    assert!(tensors(&out).values().all(|(d, _, _)| d == "BF16"));
}

#[test]
fn refuses_to_overwrite_and_never_leaves_partial_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("keep.txt"), "user data").unwrap();
    let adapter = fixtures().join("lora/qwen2-tied/adapter");
    let o = merge(&adapter, None, &out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(
        fs::read_to_string(out.join("keep.txt")).unwrap(),
        "user data"
    );
    let o = merge(&adapter, None, &out, &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!out.join("keep.txt").exists());

    // A base whose third shard is corrupt: the merge fails after writing two shards, and
    // nothing is left at --out or beside it.
    let base = tmp.path().join("base");
    copy_dir(&model_dir("qwen2-untied"), &base);
    let shard = base.join("model-00003-of-00004.safetensors");
    let bytes = fs::read(&shard).unwrap();
    fs::write(&shard, &bytes[..bytes.len() / 3]).unwrap();
    let out2 = tmp.path().join("merged2");
    let o = merge(&adapter, Some(&base), &out2, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("model-00003-of-00004.safetensors"),
        "{}",
        stderr(&o)
    );
    assert!(!out2.exists());
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().contains("partial")),
        "{leftovers:?}"
    );
}

fn adapter_with(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    copy_dir(&fixtures().join("lora/qwen2-tied/adapter"), dir);
    let p = dir.join("adapter_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut cfg);
    fs::write(&p, cfg.to_string()).unwrap();
}

/// `burnish eval` of the qwen2-tied fixture with `adapter`.
fn eval_qwen2_tied(adapter: &Path) -> std::process::Output {
    let data = fixtures().join("golden/qwen2-tied.eval.jsonl");
    burnish(&[
        "eval",
        "--model",
        model_dir("qwen2-tied").to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--device",
        "cpu",
    ])
}

#[test]
fn adapters_burnish_cannot_apply_are_refused_by_name() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "modules_to_save",
            Box::new(|c| c["modules_to_save"] = serde_json::json!(["lm_head"])),
        ),
        (
            "fan_in_fan_out",
            Box::new(|c| c["fan_in_fan_out"] = true.into()),
        ),
        ("bias", Box::new(|c| c["bias"] = "all".into())),
        ("peft_type", Box::new(|c| c["peft_type"] = "IA3".into())),
        (
            "init_lora_weights",
            Box::new(|c| c["init_lora_weights"] = "pissa".into()),
        ),
    ];
    for (field, edit) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let adapter = tmp.path().join("adapter");
        adapter_with(&adapter, |c| edit(c));
        let o = eval_qwen2_tied(&adapter);
        assert_eq!(o.status.code(), Some(2), "{field}: {}", stderr(&o));
        assert!(stderr(&o).contains(field), "{field}: {}", stderr(&o));
    }
}

/// A DoRA config whose weights lack the magnitudes, and DoRA weights under a plain LoRA
/// config: both refused (exit 2), naming the tensor and the config key.
#[test]
fn dora_adapter_mismatches_are_named() {
    let eval = eval_qwen2_tied;
    let tmp = tempfile::tempdir().unwrap();
    let no_magnitudes = tmp.path().join("a");
    adapter_with(&no_magnitudes, |c| c["use_dora"] = true.into());
    let o = eval(&no_magnitudes);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("missing tensor base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector (the adapter uses DoRA)"),
        "{}",
        stderr(&o)
    );
    let not_dora = tmp.path().join("b");
    copy_dir(&fixtures().join("lora/dora/adapter"), &not_dora);
    let p = not_dora.join("adapter_config.json");
    let text = fs::read_to_string(&p).unwrap();
    fs::write(
        &p,
        text.replace("\"use_dora\": true", "\"use_dora\": false"),
    )
    .unwrap();
    let o = eval(&not_dora);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("is a DoRA magnitude but adapter_config.json has no \"use_dora\": true"),
        "{}",
        stderr(&o)
    );
    // The fixture itself evaluates.
    let o = eval(&fixtures().join("lora/dora/adapter"));
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn adapter_tensor_problems_are_named() {
    // Wrong base: the qwen2-tied adapter on qwen3 (head_dim 32 makes q_proj 128 wide).
    let data = fixtures().join("golden/qwen3.eval.jsonl");
    let adapter = fixtures().join("lora/qwen2-tied/adapter");
    let o = burnish(&[
        "eval",
        "--model",
        model_dir("qwen3").to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("q_proj.lora_B.weight has shape [64, 8], expected [128, 8]"),
        "{}",
        stderr(&o)
    );

    // An extra tensor (a DoRA magnitude vector) is not silently ignored.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("adapter");
    copy_dir(&adapter, &dir);
    let p = dir.join("adapter_model.safetensors");
    let bytes = fs::read(&p).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut all: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    all.push((
        "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector".into(),
        vec![4],
        vec![0; 16],
    ));
    drop(st);
    burnishing_write(&p, &all);
    let data = fixtures().join("golden/qwen2-tied.eval.jsonl");
    let o = burnish(&[
        "eval",
        "--model",
        model_dir("qwen2-tied").to_str().unwrap(),
        "--adapter",
        dir.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("lora_magnitude_vector"),
        "{}",
        stderr(&o)
    );
}

fn burnishing_write(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>)]) {
    let values: Vec<Vec<f32>> = tensors
        .iter()
        .map(|(_, _, b)| {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
        .collect();
    let views: Vec<F32Tensor<'_>> = tensors
        .iter()
        .zip(&values)
        .map(|((name, shape, _), v)| F32Tensor {
            name,
            shape: shape.clone(),
            values: v,
        })
        .collect();
    write_f32(path, &views, &[("format", "pt")]).unwrap();
}

/// scripts/make_fixtures.py loaded folders written by `burnish merge` with transformers and
/// compared their logits with PEFT's merged model. Re-run the same merges and check they still
/// write exactly the structure transformers accepted.
#[test]
fn transformers_loaded_burnish_merges() {
    let check = read_json(&fixtures().join("golden/burnish-merge-check.json"));
    for (case, result) in check["cases"].as_object().unwrap() {
        assert_eq!(result["loaded_by_transformers"], true, "{case}");
        let diff = result["max_logit_diff_vs_peft_merged"].as_f64().unwrap();
        assert!(
            diff <= 1e-4,
            "{case}: transformers saw a logit difference of {diff}"
        );
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("merged");
        let o = merge(
            &fixtures().join(format!("lora/{case}/adapter")),
            None,
            &out,
            &[],
        );
        assert!(o.status.success(), "{case}: {}", stderr(&o));
        let mut files: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let want: Vec<String> = result["structure"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(files, want, "{case}: files");
        let ours = tensors(&out);
        let recorded = result["structure"]["tensors"].as_object().unwrap();
        assert_eq!(ours.len(), recorded.len(), "{case}");
        for (name, rec) in recorded {
            let (dtype, shape, _) = &ours[name];
            let torch_dtype = match dtype.as_str() {
                "F32" => "float32",
                "BF16" => "bfloat16",
                other => other,
            };
            assert_eq!(rec[1].as_str().unwrap(), torch_dtype, "{case} {name}");
            let rs: Vec<usize> = rec[2]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(&rs, shape, "{case} {name}");
        }
        assert_eq!(
            read_json(&out.join("config.json"))["tie_word_embeddings"],
            result["tied"]
        );
    }
}

/// A merge stopped between shards (a signal during the end of a run) writes nothing, and the
/// end-of-run step reports the interruption instead of finishing.
#[test]
fn a_stopped_merge_leaves_nothing() {
    use burnish::lora::LoraError;
    use burnish::lora::merge::{MergeRequest, merge as merge_lib};
    use burnish::model::ModelFolder;
    use std::cell::Cell;

    let tmp = tempfile::tempdir().unwrap();
    let base = ModelFolder::open(&model_dir("qwen2-untied")).unwrap();
    let adapter = burnish::lora::peft::read_adapter(
        &fixtures().join("lora/qwen2-tied/adapter"),
        &base.config,
    )
    .unwrap();
    let out = tmp.path().join("merged");
    let shards_started = Cell::new(0);
    let cancel = || {
        shards_started.set(shards_started.get() + 1);
        shards_started.get() > 2
    };
    let result = merge_lib(&MergeRequest {
        base_dir: &base.dir,
        config: &base.config,
        adapter: &adapter,
        out_dir: &out,
        dtype: None,
        force: false,
        dequantized: None,
        cancel: Some(&cancel),
    });
    assert!(matches!(result, Err(LoraError::Cancelled)), "{result:?}");
    assert_eq!(
        shards_started.get(),
        3,
        "asked once per shard until stopped"
    );
    let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");

    // The end of a run with a stop requested: nothing merged, the signal reported.
    let run = tmp.path().join("run");
    let rows = pretokenized_rows(tmp.path(), 3);
    let recipe = write_recipe(
        tmp.path(),
        "r.yaml",
        &format!(
            "model: {{base: {}}}\nlora: {{r: 8, alpha: 16}}\ndata: {{train: [{{path: {}, format: pretokenized}}]}}\noutput: {{dir: {}, merge: true}}\n",
            model_dir("qwen2-untied").display(),
            rows.display(),
            run.display()
        ),
    );
    let setup = burnish::train::setup::RunSetup::new(
        burnish::recipe::LoadedRecipe::load(&recipe, &[]).unwrap(),
    )
    .unwrap();
    let adapter_dir = run.join("adapter");
    copy_dir(&fixtures().join("lora/qwen2-tied/adapter"), &adapter_dir);
    let outcome = burnish::train::run::TrainOutcome {
        global_step: 3,
        interrupted_by: None,
        adapter_dir: Some(adapter_dir),
        merged_dir: None,
        final_eval: None,
        last_checkpoint: None,
        best_step: None,
        stopped_early: false,
    };
    let stop = burnish::train::signals::StopFlag::none();
    stop.request(15);
    let finished = burnish::train::publish::finish(&setup, &outcome, false, true, &stop).unwrap();
    assert_eq!(finished, burnish::train::publish::Finished::Interrupted(15));
    assert!(!run.join("merged").exists());
}
