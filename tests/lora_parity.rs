//! LoRA against PEFT: logits and first-backward gradients with PEFT-written adapters, rsLoRA,
//! DoRA, rank/alpha patterns, layers_to_transform, and the trainable-parameter count.

mod common;

use burn::tensor::DType;
use burnish::backend::{Cpu, CpuTrain};
use burnish::lora::peft::{magnitude_key, peft_key};
use burnish::lora::settings::trainable_parameters;
use burnish::lora::{LoraSettings, TargetSpec, apply_adapter};
use burnish::model::loss::{Targets, cross_entropy_sum};
use burnish::model::{HostBatch, ModelConfig, ModelFolder};
use common::*;

fn ids_of(g: &Golden) -> Vec<Vec<u32>> {
    g.i64
        .chunks(g.shape[1])
        .map(|r| r.iter().map(|&i| i as u32).collect())
        .collect()
}

fn base_of(case: &str) -> String {
    let info = read_json(&fixtures().join(format!("golden/lora-{case}.json")));
    info["base"].as_str().unwrap().to_string()
}

/// PEFT adapters (scripts/make_fixtures.py, LORA_CASES) whose logits and first gradients are
/// both checked: one per architecture and rope scaling, rank/alpha patterns, and DoRA (with
/// magnitudes away from their initial row norms, on a base with q/k/v biases).
const ADAPTERS: [&str; 9] = [
    "qwen2-tied",
    "llama-gqa",
    "qwen3",
    "qwen2-swa",
    "qwen2-yarn",
    "gemma3",
    "gemma2",
    "patterns",
    "dora",
];

/// f32 logits with a PEFT adapter: same bound as the base model (summation order only).
#[test]
fn logits_with_peft_adapters_match_peft() {
    for case in ADAPTERS.iter().chain(&["rslora", "layers"]) {
        let golden = read_golden(&fixtures().join(format!("golden/lora-{case}.safetensors")));
        let folder = ModelFolder::open(&model_dir(&base_of(case))).unwrap();
        let mut model = folder.load::<Cpu>(DType::F32, &Default::default()).unwrap();
        let adapter = fixtures().join(format!("lora/{case}/adapter"));
        apply_adapter(&mut model, &adapter, false).unwrap();
        let batch = HostBatch::from_rows(&ids_of(&golden["input_ids"]), 0);
        let logits = model.logits(&batch).into_data().to_vec::<f32>().unwrap();
        let diff = max_abs_diff(&logits, &golden["logits"].f32);
        assert!(diff <= 1e-4, "{case}: max |logit diff| {diff}");
    }
}

/// Gradients of the HF token-mean loss w.r.t. every lora_A / lora_B (and DoRA magnitude),
/// relative to the largest PEFT gradient of that tensor: 1e-5.
#[test]
fn first_backward_gradients_match_peft() {
    for case in ADAPTERS {
        let golden = read_golden(&fixtures().join(format!("golden/lora-{case}.safetensors")));
        let folder = ModelFolder::open(&model_dir(&base_of(case))).unwrap();
        let mut model = folder
            .load::<CpuTrain>(DType::F32, &Default::default())
            .unwrap();
        let adapter = fixtures().join(format!("lora/{case}/adapter"));
        let (_, targets) = apply_adapter(&mut model, &adapter, true).unwrap();
        let ids = ids_of(&golden["input_ids"]);
        let batch = HostBatch::from_rows(&ids, 0);
        let labels: Vec<Vec<i64>> = ids
            .iter()
            .map(|r| r.iter().map(|&i| i as i64).collect())
            .collect();
        let tgt = Targets::shifted(&labels, &batch.segments);
        let hidden = model.hidden_states(&batch, None);
        let (sum, n) = cross_entropy_sum(&model.net, hidden, &tgt, 7);
        let loss = sum / n as f64;
        let info = read_json(&fixtures().join(format!("golden/lora-{case}.json")));
        let l = loss.clone().into_scalar() as f64;
        assert!(
            (l - info["loss"].as_f64().unwrap()).abs() <= 1e-5,
            "{case}: loss {l}"
        );
        let grads = loss.backward();
        let mut checked = 0;
        for t in &targets {
            let lora = model
                .net
                .projection(t.layer, t.module)
                .unwrap()
                .lora
                .as_ref()
                .unwrap();
            let mut params = vec![
                (peft_key(t.layer, t.module, true), &lora.a),
                (peft_key(t.layer, t.module, false), &lora.b),
            ];
            if let Some(m) = &lora.magnitude {
                // PEFT's parameter is the magnitude module's `weight`.
                params.push((format!("{}.weight", magnitude_key(t.layer, t.module)), m));
            }
            assert_eq!(lora.magnitude.is_some(), case == "dora", "{case}");
            for (name, param) in params {
                let key = format!("grad.{name}");
                let want = &golden[&key].f32;
                let got = param
                    .val()
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap();
                assert_eq!(got.len(), want.len(), "{case} {key}");
                let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let diff = max_abs_diff(&got, want);
                assert!(
                    diff <= 1e-5 * scale.max(1e-12),
                    "{case} {key}: {diff} (scale {scale})"
                );
                checked += 1;
            }
        }
        let per_target = if case == "dora" { 3 } else { 2 };
        assert_eq!(checked, per_target * targets.len());
        // Frozen weights get no gradient at all.
        let q = model.net.projection(0, "q_proj").unwrap();
        assert!(
            q.weight.val().grad(&grads).is_none(),
            "{case}: base weight got a gradient"
        );
        assert!(model.net.embed_tokens.val().grad(&grads).is_none());
    }
}

#[test]
fn trainable_parameter_counts_match_peft() {
    // The real Qwen2.5-0.5B config, r=16 on all seven projections.
    let cfg = ModelConfig::from_file(&fixtures().join("configs/qwen2.5-0.5b.json")).unwrap();
    let want = read_json(&fixtures().join("golden/lora-count-qwen2.5-0.5b.json"));
    let settings = LoraSettings {
        r: 16,
        targets: TargetSpec::One("all-linear".into()),
        ..LoraSettings::default()
    };
    let n = trainable_parameters(&settings.resolve(&cfg).unwrap());
    assert_eq!(n, 8_798_208);
    assert_eq!(n, want["trainable"].as_u64().unwrap());
    // The PEFT fixtures, including rank_pattern and layers_to_transform.
    for case in ["qwen2-tied", "qwen3", "patterns", "layers", "dora"] {
        let info = read_json(&fixtures().join(format!("golden/lora-{case}.json")));
        let cfg = ModelConfig::from_file(&model_dir(&base_of(case)).join("config.json")).unwrap();
        let adapter = burnish::lora::peft::read_adapter(
            &fixtures().join(format!("lora/{case}/adapter")),
            &cfg,
        )
        .unwrap();
        let n = trainable_parameters(&adapter.settings.resolve(&cfg).unwrap());
        assert_eq!(n, info["trainable_parameters"].as_u64().unwrap(), "{case}");
    }
}

#[test]
fn unknown_target_lists_linear_modules() {
    let cfg = ModelConfig::from_file(&model_dir("qwen2-tied").join("config.json")).unwrap();
    let settings = LoraSettings {
        targets: TargetSpec::List(vec!["q_proj".into(), "qkv".into()]),
        ..LoraSettings::default()
    };
    let err = settings.resolve(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("'qkv'") && err.contains("gate_proj") && err.contains("all-linear"),
        "{err}"
    );
}
