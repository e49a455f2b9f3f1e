//! The decoder against transformers: logits, padded batches and losses for every tiny variant
//! made by scripts/make_fixtures.py.

mod common;

use burn::tensor::DType;
use burnish::backend::Cpu;
use burnish::model::{HostBatch, ModelFolder};
use common::*;

/// f32 end to end: transformers and burnish differ only in summation order.
const LOGITS_TOL_F32: f32 = 1e-4;

fn golden_ids(g: &Golden) -> Vec<Vec<u32>> {
    let seq = g.shape[1];
    g.i64
        .chunks(seq)
        .map(|r| r.iter().map(|&i| i as u32).collect())
        .collect()
}

/// YaRN's inverse frequencies and cos/sin factor against transformers'
/// `_compute_yarn_parameters` for several parameter sets (scripts/make_fixtures.py, `rope`):
/// both compute in f32, so within 2 ulp; the factor is f64 on both sides.
#[test]
fn yarn_frequencies_match_transformers() {
    let golden = read_json(&fixtures().join("golden/rope-yarn.json"));
    for (i, case) in golden["cases"].as_array().unwrap().iter().enumerate() {
        let config = burnish::model::config::ModelConfig::from_json(&case["config"].to_string())
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        let rope = burnish::model::rope::RopeFrequencies::new(&config);
        let want: Vec<f64> = case["inv_freq"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(rope.inv_freq().len(), want.len(), "case {i}");
        for (j, (&got, &want)) in rope.inv_freq().iter().zip(&want).enumerate() {
            let err = (got as f64 - want).abs() / want.abs();
            assert!(err <= 2.5e-7, "case {i} inv_freq[{j}]: {got} vs {want}");
        }
        let factor = case["attention_factor"].as_f64().unwrap();
        let got = config.rope_scaling.attention_factor();
        assert!(
            (got - factor).abs() <= 1e-12,
            "case {i}: factor {got} vs {factor}"
        );
        assert_eq!(rope.scale(), factor as f32, "case {i}: cos/sin scale");
    }
}

#[test]
fn logits_match_transformers_for_every_variant() {
    for variant in VARIANTS {
        let golden = read_golden(&fixtures().join(format!("golden/{variant}.safetensors")));
        let folder = ModelFolder::open(&model_dir(variant)).unwrap();
        let model = folder.load::<Cpu>(DType::F32, &Default::default()).unwrap();
        let ids = golden_ids(&golden["input_ids"]);
        let batch = HostBatch::from_rows(&ids, 0);
        let logits = model.logits(&batch).into_data().to_vec::<f32>().unwrap();
        let diff = max_abs_diff(&logits, &golden["logits"].f32);
        assert!(diff <= LOGITS_TOL_F32, "{variant}: max |logit diff| {diff}");
    }
}

#[test]
fn padded_rows_equal_unpadded_rows() {
    for variant in ["qwen2-tied", "llama-gqa", "qwen3", "gemma3", "gemma2"] {
        let golden = read_golden(&fixtures().join(format!("golden/{variant}.safetensors")));
        let folder = ModelFolder::open(&model_dir(variant)).unwrap();
        let model = folder.load::<Cpu>(DType::F32, &Default::default()).unwrap();
        let ids = golden_ids(&golden["input_ids"]);
        let rows = vec![ids[0].clone(), ids[1][..7].to_vec()];
        let batch = HostBatch::from_rows(&rows, 0);
        let padded = model.logits(&batch).into_data().to_vec::<f32>().unwrap();
        let vocab = golden["logits"].shape[2];
        let seq = ids[0].len();
        // Real tokens of the padded batch vs transformers with an attention mask...
        let expect = &golden["logits_padded"].f32;
        for (b, len) in [(0usize, seq), (1, 7)] {
            let range = b * seq * vocab..(b * seq + len) * vocab;
            let diff = max_abs_diff(&padded[range.clone()], &expect[range.clone()]);
            assert!(diff <= LOGITS_TOL_F32, "{variant} row {b}: {diff}");
            // ...and vs the same row run alone, unpadded.
            let alone = model
                .logits(&HostBatch::from_rows(&[rows[b].clone()], 0))
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            let diff = max_abs_diff(&padded[range], &alone);
            assert!(diff <= 1e-5, "{variant} row {b} padded vs alone: {diff}");
        }
    }
}

/// bf16 weights and activations against transformers computing in bf16. Both round every
/// intermediate to 8 bits of mantissa (relative step 2^-8 = 0.0039) but in different places
/// (fused vs unfused ops, summation order), so logits of magnitude ~3 can differ by a few
/// bf16 steps: 0.1 absolute is about 6 steps at that magnitude and still catches any layout or
/// formula error, which shifts logits by O(1).
#[test]
fn bf16_weights_match_transformers_bf16() {
    for (variant, tol) in [
        ("qwen2-bf16", 0.1),
        ("gemma3", GEMMA3_BF16_TOL),
        ("gemma2", GEMMA3_BF16_TOL),
    ] {
        bf16_logits_match(variant, tol);
    }
}

/// Gemma 3 (and Gemma 2: 0.083) in bf16 against transformers in bf16 (weights cast from f32 by
/// both). bf16 is coarse
/// here: transformers' own bf16 logits are 0.17 from its f32 ones (largest logit 5.4). burnish
/// is 0.10 from them; scaling the norm in bf16 after the cast, as Llama does, gave 0.16.
const GEMMA3_BF16_TOL: f32 = 0.12;

fn bf16_logits_match(variant: &str, tol: f32) {
    let golden = read_golden(&fixtures().join(format!("golden/{variant}.safetensors")));
    let golden_bf16 = read_golden(&fixtures().join(format!("golden/{variant}.bf16.safetensors")));
    let folder = ModelFolder::open(&model_dir(variant)).unwrap();
    let model = folder
        .load::<Cpu>(DType::BF16, &Default::default())
        .unwrap();
    let ids = golden_ids(&golden["input_ids"]);
    let logits = model
        .logits(&HostBatch::from_rows(&ids, 0))
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let diff = max_abs_diff(&logits, &golden_bf16["logits_bf16"].f32);
    println!("{variant}: bf16 max |logit diff| {diff}");
    assert!(diff <= tol, "{variant}: bf16 max |logit diff| {diff}");
}

#[test]
fn eval_loss_matches_transformers() {
    for variant in VARIANTS {
        let info = read_json(&fixtures().join(format!("golden/{variant}.json")));
        let eval = &info["eval"];
        let data = fixtures()
            .join("golden")
            .join(eval["file"].as_str().unwrap());
        let out = burnish(&[
            "eval",
            "--model",
            model_dir(variant).to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--device",
            "cpu",
            "--json",
        ]);
        assert!(out.status.success(), "{variant}: {}", stderr(&out));
        let got: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        let loss = got["loss"].as_f64().unwrap();
        let want = eval["loss"].as_f64().unwrap();
        assert!(
            (loss - want).abs() <= 1e-5,
            "{variant}: loss {loss} vs {want}"
        );
        assert_eq!(got["tokens"].as_u64(), eval["tokens"].as_u64(), "{variant}");
        // Perplexity is exp(loss): a 1e-5 loss tolerance is a 1e-5 relative one here.
        let ppl = got["perplexity"].as_f64().unwrap();
        assert!(
            (ppl / want.exp() - 1.0).abs() <= 2e-5,
            "{variant}: perplexity {ppl}"
        );
    }
}

/// Released Gemma 3 configs write `rope_theta`, `rope_local_base_freq`, `rope_scaling` and
/// `sliding_window_pattern`; transformers 5 saves `rope_parameters` per layer type and
/// `layer_types`. scripts/make_fixtures.py checks that transformers reads the two files alike;
/// so must burnish.
#[test]
fn gemma3_legacy_config_reads_like_the_saved_one() {
    use burnish::model::ModelConfig;
    let saved = ModelConfig::from_file(&model_dir("gemma3").join("config.json")).unwrap();
    let legacy = ModelConfig::from_file(&fixtures().join("configs/gemma3-legacy.json")).unwrap();
    assert_eq!(saved, legacy);
    assert_eq!(saved.sliding_rope_theta, Some(1e4));
}
