//! Gradient checkpointing: the hand-written layer backward that recomputes each decoder layer
//! gives the same loss and LoRA gradients as autodiff over the full graph, on every
//! architecture variant (GQA and MHA, biases, Qwen3's q/k norms, untied heads), with a
//! quantized base, with LoRA dropout (the recomputation draws the same masks) and with DoRA
//! (its own forward and backward); and a training run with it equals one without.
//!
//! Tolerance: both use the same kernels in the same order, so the loss is identical and the
//! gradients differ only where autodiff sums a tensor's gradient contributions in another
//! order (e.g. the three projections reading the normed input): 1e-5 of each gradient's largest
//! magnitude.

mod common;

use burn::backend::Autodiff;
use burn::tensor::DType;
use burnish::backend::Cpu;
use burnish::lora::attach::{attach, init_factors};
use burnish::lora::{InitKind, LoraSettings, TargetSpec};
use burnish::model::kernels::DropoutSeed;
use burnish::model::loss::{Targets, cross_entropy_sum};
use burnish::model::params::LINEAR_MODULES;
use burnish::model::quant::QuantSpec;
use burnish::model::{HostBatch, Model, ModelFolder};
use common::*;

type Ad = Autodiff<Cpu>;

/// Loss and the LoRA factor gradients (A, B and DoRA's magnitude of each targeted projection,
/// layer by layer).
fn loss_and_grads(
    variant: &str,
    checkpoint: bool,
    quant: Option<QuantSpec>,
    dropout: f64,
    dora: bool,
) -> (f32, Vec<Vec<f32>>) {
    let folder = ModelFolder::open(&model_dir(variant)).unwrap();
    let mut m: Model<Ad> = folder
        .load_quantized(DType::F32, quant.as_ref(), &Default::default())
        .unwrap();
    // r=4 on every projection, B non-zero so every factor gets a gradient.
    let settings = LoraSettings {
        r: 4,
        alpha: 8.0,
        targets: TargetSpec::One("all-linear".into()),
        dora,
        ..Default::default()
    };
    for t in settings.resolve(&m.config).unwrap() {
        let mut f = init_factors(&t, InitKind::Default, 5);
        for (i, x) in f.b.iter_mut().enumerate() {
            *x = ((i % 11) as f32 - 5.0) * 0.02;
        }
        // Magnitudes away from the row norms, so the rescaling is not the identity.
        f.magnitude = dora.then(|| {
            (0..t.out_features)
                .map(|i| 0.3 + (i % 7) as f32 * 0.1)
                .collect()
        });
        attach(&mut m.net, &t, &f, dropout, true, &Default::default());
    }
    m.net.gradient_checkpointing = checkpoint;
    let vocab = folder.config.vocab_size as u32;
    // Two rows of different length: padding and the attention mask are exercised too.
    let rows: Vec<Vec<u32>> = vec![
        (0..19u32).map(|i| (i * 7919 + 3) % vocab).collect(),
        (0..12u32).map(|i| (i * 104_729 + 11) % vocab).collect(),
    ];
    let batch = HostBatch::from_rows(&rows, 0);
    let labels: Vec<Vec<i64>> = rows
        .iter()
        .map(|r| r.iter().map(|&x| x as i64).collect())
        .collect();
    let targets = Targets::shifted(&labels, &batch.segments);
    let seed = DropoutSeed::strided(99, 0, 1);
    let h = m.hidden_states(&batch, Some(&seed));
    let (loss, _) = cross_entropy_sum(&m.net, h, &targets, 16);
    let value = loss.clone().into_scalar();
    let grads = loss.backward();
    let mut out = Vec::new();
    for layer in 0..m.config.num_layers {
        for module in LINEAR_MODULES {
            if let Some(l) = m
                .net
                .projection(layer, module)
                .and_then(|p| p.lora.as_ref())
            {
                for p in [&l.a, &l.b].into_iter().chain(&l.magnitude) {
                    let g = p
                        .val()
                        .grad(&grads)
                        .expect("a LoRA factor without gradient");
                    out.push(g.into_data().to_vec::<f32>().unwrap());
                }
            }
        }
    }
    (value, out)
}

fn assert_same(variant: &str, quant: Option<QuantSpec>, dropout: f64, dora: bool) {
    let (l0, g0) = loss_and_grads(variant, false, quant, dropout, dora);
    let (l1, g1) = loss_and_grads(variant, true, quant, dropout, dora);
    assert!(!g0.is_empty());
    assert_eq!(g0.len(), g1.len());
    assert!(
        ((l0 - l1) / l0).abs() < 1e-6,
        "{variant}: loss {l0} vs checkpointed {l1}"
    );
    let mut worst = 0f32;
    for (a, b) in g0.iter().zip(&g1) {
        let scale = a.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
        worst = worst.max(max_abs_diff(a, b) / scale);
    }
    println!(
        "{variant} (quantized: {}, dropout {dropout}, DoRA: {dora}): max relative gradient difference {worst:.2e}",
        quant.is_some()
    );
    assert!(worst < 1e-5, "{variant}: gradients differ by {worst}");
}

#[test]
fn checkpointed_layers_give_the_same_gradients() {
    for variant in VARIANTS {
        assert_same(variant, None, 0.0, false);
    }
    assert_same(
        "qwen2-tied",
        Some(QuantSpec {
            bits: 4,
            block_size: 32,
        }),
        0.0,
        false,
    );
    // Dropout: the same masks in the recomputed layers, so the same gradients.
    assert_same("qwen2-tied", None, 0.3, false);
    assert_same("qwen3", None, 0.3, false);
    // And dropout changes them (the masks are really drawn).
    let (l_plain, _) = loss_and_grads("qwen2-tied", false, None, 0.0, false);
    let (l_drop, _) = loss_and_grads("qwen2-tied", false, None, 0.3, false);
    assert!((l_plain - l_drop).abs() > 1e-6, "{l_plain} vs {l_drop}");
}

/// DoRA's hand-written backward (`lora::dora::backward`) against autodiff over its forward:
/// with and without dropout (where PEFT's base path keeps the undropped input), on a base with
/// biases, on Qwen3, and on a 4-bit base (the row norms of the dequantized weight).
#[test]
fn checkpointed_dora_gives_the_same_gradients() {
    assert_same("qwen2-tied", None, 0.0, true);
    assert_same("qwen2-tied", None, 0.3, true);
    assert_same("qwen3", None, 0.3, true);
    let q4 = QuantSpec {
        bits: 4,
        block_size: 32,
    };
    assert_same("llama-gqa", Some(q4), 0.0, true);
    // The magnitudes count: DoRA's loss is not LoRA's with the same factors.
    let (l_lora, g_lora) = loss_and_grads("qwen2-tied", false, None, 0.0, false);
    let (l_dora, g_dora) = loss_and_grads("qwen2-tied", false, None, 0.0, true);
    assert!((l_lora - l_dora).abs() > 1e-4, "{l_lora} vs {l_dora}");
    assert_eq!(g_dora.len(), g_lora.len() * 3 / 2);
}

#[test]
fn a_checkpointed_run_trains_like_a_plain_one() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| train_demo(&tmp.path().join(name), 4, extra);
    let plain = run("plain", &[]);
    let ckpt = run("ckpt", &["--set", "train.gradient_checkpointing=true"]);
    assert_eq!(plain.len(), 4);
    assert_eq!(ckpt.len(), plain.len(), "{plain:?} vs {ckpt:?}");
    for ((_, a), (_, b)) in plain.iter().zip(&ckpt) {
        assert!(((a - b) / a).abs() < 1e-5, "{plain:?} vs {ckpt:?}");
    }
    // With dropout too: the recomputed layers draw the masks the first pass drew.
    let drop = ["--set", "lora.dropout=0.1"];
    let plain = run("plain-dropout", &drop);
    let ckpt = run(
        "ckpt-dropout",
        &[
            drop[0],
            drop[1],
            "--set",
            "train.gradient_checkpointing=true",
        ],
    );
    assert_eq!(ckpt.len(), plain.len(), "{plain:?} vs {ckpt:?}");
    for ((_, a), (_, b)) in plain.iter().zip(&ckpt) {
        assert!(((a - b) / a).abs() < 1e-5, "{plain:?} vs {ckpt:?}");
    }
}
