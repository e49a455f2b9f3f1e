//! The GPU kernels on a real CubeCL runtime without a GPU: Burn's wgpu backend over Mesa's
//! software Vulkan driver (lavapipe), in f32, against the Flex kernels on the same inputs.
//! wgpu and CUDA are both `CubeBackend`s, so this is the code CUDA runs: burnish's own CubeCL
//! kernels (RMSNorm, SwiGLU, RoPE and the cross-entropy's softmax, `src/model/kernels/cube`),
//! and the composed ops (blockwise attention, the LoRA step with its dropout). Runs in
//! `cargo test --features wgpu-tests`; without a Vulkan driver these tests say so on stderr
//! and pass, unless `BURNISH_REQUIRE_VULKAN=1` (set by `.ci/run` where it installed the
//! driver), which makes a missing driver a failure.
//!
//! Tolerance: 1e-4 of the largest magnitude (the GPU-style kernels sum in other orders and
//! tiles; the same computations in f32 agree to ~1e-6 on the CPU).
#![cfg(feature = "wgpu-tests")]

mod common;

use burn::backend::{Autodiff, Wgpu};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use burnish::backend::Cpu;
use burnish::lora::attach::{attach, factor_tensors, init_factors};
use burnish::lora::{InitKind, LoraSettings, TargetSpec};
use burnish::model::kernels::{
    Activation, AttentionMask, Dropout, DropoutSeed, Kernels, LinearGrads, LogitChunks,
    LoraFactors, ScoreShape, generic,
};
use burnish::model::loss::{Targets, cross_entropy_sum};
use burnish::model::{HostBatch, Model, ModelFolder};
use common::*;

type G = Wgpu;

/// Whether the wgpu runtime has a device here (see the module docs for what happens if not).
fn gpu() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| {
        let probe = std::panic::catch_unwind(|| {
            Tensor::<G, 1>::zeros([1], &Default::default()).into_data()
        });
        match (
            probe.is_ok(),
            std::env::var_os("BURNISH_REQUIRE_VULKAN").is_some(),
        ) {
            (true, _) => true,
            (false, true) => panic!(
                "BURNISH_REQUIRE_VULKAN is set but wgpu found no device: install Debian's \
                 mesa-vulkan-drivers and libvulkan1"
            ),
            (false, false) => {
                eprintln!(
                    "SKIPPED: no Vulkan device for the GPU kernel tests (install Debian's \
                     mesa-vulkan-drivers and libvulkan1 to run them)"
                );
                false
            }
        }
    })
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> (Vec<usize>, Vec<f32>) {
    let d = t.into_data().convert::<f32>();
    (d.shape.to_vec(), d.to_vec::<f32>().unwrap())
}

fn to<B: Backend, const D: usize>(t: &Tensor<Cpu, D>) -> Tensor<B, D> {
    Tensor::from_data(t.to_data(), &Default::default())
}

fn rand<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Cpu, D> {
    Cpu::seed(&Default::default(), seed);
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn close<B1: Backend, B2: Backend, const D: usize>(a: Tensor<B1, D>, b: Tensor<B2, D>, what: &str) {
    let ((sa, a), (sb, b)) = (host(a), host(b));
    assert_eq!(sa, sb, "{what}: shapes");
    assert_close_to_scale(&a, &b, 1e-4, what);
}

#[test]
fn blockwise_attention_on_a_cubecl_runtime() {
    if !gpu() {
        return;
    }
    let mask = AttentionMask::new(
        &[segments(&[40, 70, 25], 15), segments(&[120], 30)],
        150,
        true,
    );
    let (q, k, v) = (
        rand([2, 150, 6, 16], 1),
        rand([2, 150, 2, 16], 2),
        rand([2, 150, 2, 16], 3),
    );
    let g = rand([2, 150, 6, 16], 4);
    // The full causal mask, and a sliding window shorter than a tile (Mistral's layers).
    for (mask, what) in [(mask.windowed(23), "windowed "), (mask, "")] {
        let (o1, l1) = Cpu::attention_forward(q.clone(), k.clone(), v.clone(), &mask);
        let (o2, l2) = generic::attention::forward::<G>(to(&q), to(&k), to(&v), &mask);
        close(o2.clone(), o1.clone(), &format!("{what}attention output"));
        close(
            l2.clone(),
            l1.clone(),
            &format!("{what}attention log-sum-exp"),
        );
        let want =
            Cpu::attention_backward(q.clone(), k.clone(), v.clone(), o1, l1, g.clone(), &mask);
        let got = generic::attention::backward::<G>(to(&q), to(&k), to(&v), o2, l2, to(&g), &mask);
        close(got.0, want.0, &format!("{what}attention dq"));
        close(got.1, want.1, &format!("{what}attention dk"));
        close(got.2, want.2, &format!("{what}attention dv"));
    }
}

#[test]
fn composed_loss_norms_and_lora_with_dropout_on_a_cubecl_runtime() {
    if !gpu() {
        return;
    }
    let (h, w) = (rand([37, 24], 5), rand([301, 24], 6));
    let targets: Vec<i32> = (0..37).map(|i| i * 53 % 301).collect();
    let (l1, g1) =
        Cpu::cross_entropy_sum_and_grad(h.clone(), w.clone(), &targets, LogitChunks::of(16));
    let (l2, g2) =
        generic::cross_entropy_sum_and_grad::<G>(to(&h), to(&w), &targets, LogitChunks::of(16));
    close(l2, l1, "cross-entropy");
    close(g2, g1, "cross-entropy gradient");

    let (x, nw, gr) = (rand([13, 32], 7), rand([32], 8), rand([13, 32], 9));
    close(
        generic::rms_norm::<G>(to(&x), to(&nw), 1e-6),
        Cpu::rms_norm(x.clone(), nw.clone(), 1e-6),
        "rms_norm",
    );
    close(
        generic::rms_norm_backward::<G>(to(&x), to(&nw), 1e-6, to(&gr)),
        Cpu::rms_norm_backward(x.clone(), nw.clone(), 1e-6, gr.clone()),
        "rms_norm backward",
    );
    let xr = rand([2, 5, 3, 8], 10);
    let angles = rand([2, 5, 1, 4], 11);
    let cos = Tensor::cat(vec![angles.clone().cos(), angles.clone().cos()], 3);
    let sin = Tensor::cat(vec![angles.clone().sin(), angles.sin()], 3);
    close(
        generic::rope::<G>(to(&xr), &to(&cos), &to(&sin)),
        Cpu::rope(xr, &cos, &sin),
        "rope",
    );
    let (ga, up) = (rand([13, 32], 12), rand([13, 32], 13));
    for act in [Activation::Silu, Activation::GeluTanh] {
        close(
            generic::glu::<G>(to(&ga), to(&up), act),
            Cpu::glu(ga.clone(), up.clone(), act),
            &format!("{act:?} glu"),
        );
        let (a1, b1) = Cpu::glu_backward(ga.clone(), up.clone(), act, gr.clone());
        let (a2, b2) = generic::glu_backward::<G>(to(&ga), to(&up), act, to(&gr));
        close(a2, a1, &format!("{act:?} glu dgate"));
        close(b2, b1, &format!("{act:?} glu dup"));
    }

    let drop = Dropout {
        p: 0.3,
        key: 7,
        first_row: 0,
        row_stride: 1,
        // The second batch row draws as row 4 of the micro-batch (a preference batch's
        // rejected block).
        split: Some((1, 4)),
        seq: 7,
    };
    lora_with_dropout(
        [14, 24, 40],
        14,
        &drop,
        generic::lora_linear_forward::<G>,
        generic::lora_linear_backward::<G>,
        "composed lora with dropout",
    );
}

type LoraForward = fn(
    Tensor<G, 2>,
    Tensor<G, 2>,
    Option<Tensor<G, 1>>,
    Option<LoraFactors<G>>,
    Option<&Dropout>,
) -> (Tensor<G, 2>, Option<Tensor<G, 2>>);
type LoraBackward = fn(
    Tensor<G, 2>,
    Option<Tensor<G, 2>>,
    Tensor<G, 2>,
    Option<LoraFactors<G>>,
    Option<&Dropout>,
    Tensor<G, 2>,
    bool,
) -> LinearGrads<G>;

/// A LoRA step (`n x width -> out`, r = 4, bias, dropout `drop`) on the GPU by `forward` and
/// `backward` against the Flex kernels: output, dx, dA and dB. Inputs come from seeds
/// `seed..seed + 6`.
fn lora_with_dropout(
    [n, width, out]: [usize; 3],
    seed: u64,
    drop: &Dropout,
    forward: LoraForward,
    backward: LoraBackward,
    what: &str,
) {
    let (xl, wl, bias) = (
        rand([n, width], seed),
        rand([out, width], seed + 1),
        rand([out], seed + 2),
    );
    let (la, lb) = (rand([4, width], seed + 3), rand([out, 4], seed + 4));
    let cpu_lora = Some((la.clone(), lb.clone(), 1.5));
    let gpu_lora = Some((to(&la), to(&lb), 1.5));
    let (y1, xa1) = Cpu::lora_linear_forward(
        xl.clone(),
        wl.clone(),
        Some(bias.clone()),
        cpu_lora.clone(),
        Some(drop),
    );
    let (y2, xa2) = forward(
        to(&xl),
        to(&wl),
        Some(to(&bias)),
        gpu_lora.clone(),
        Some(drop),
    );
    close(y2, y1, &format!("{what}: forward"));
    let gy = rand([n, out], seed + 5);
    let (dx2, d2) = backward(to(&xl), xa2, to(&wl), gpu_lora, Some(drop), to(&gy), true);
    let (dx1, d1) = Cpu::lora_linear_backward(xl, xa1, wl, cpu_lora, Some(drop), gy, true);
    close(dx2.unwrap(), dx1.unwrap(), &format!("{what}: dx"));
    let ((da1, db1), (da2, db2)) = (d1.unwrap(), d2.unwrap());
    close(da2, da1, &format!("{what}: dA"));
    close(db2, db1, &format!("{what}: dB"));
}

/// The CubeCL flash attention (forward with log-sum-exp, dQ, dK/dV) against Flex's: grouped
/// and plain heads, head dims 16 and 64, causal packed segments with padding (queries that
/// see nothing), bidirectional, a key cache longer than the queries, lengths that are not a
/// multiple of the 32-row tiles.
#[test]
fn cubecl_flash_attention_equals_the_cpu_kernel() {
    if !gpu() {
        return;
    }
    let packed = AttentionMask::new(
        &[segments(&[40, 70, 25], 15), segments(&[120], 30)],
        150,
        true,
    );
    let cases = [
        (
            "causal packed, GQA 6/2, d 16",
            packed.clone(),
            [2, 150, 6, 2, 16],
        ),
        (
            "sliding window of 23 over packed rows, GQA 6/2, d 64",
            packed.windowed(23),
            [2, 150, 6, 2, 64],
        ),
        (
            "causal packed, MHA 4/4, d 64",
            packed.clone(),
            [2, 150, 4, 4, 64],
        ),
        (
            "bidirectional segments, GQA 4/1, d 64",
            AttentionMask::new(&[segments(&[33, 30], 3)], 66, false),
            [1, 66, 4, 1, 64],
        ),
        (
            "3 new queries over a 70-key cache",
            AttentionMask::incremental(2, 67, 3),
            [2, 3, 4, 2, 16],
        ),
        (
            "Gemma 2's soft cap and scale, causal packed, GQA 6/2, d 16",
            packed.clone().with_scores(ScoreShape {
                scale: Some(0.7),
                softcap: Some(2.0),
            }),
            [2, 150, 6, 2, 16],
        ),
    ];
    for (i, (what, mask, [b, s, nh, nkv, d])) in cases.into_iter().enumerate() {
        let t = mask.keys();
        let seed = 40 + 4 * i as u64;
        let q = rand([b, s, nh, d], seed);
        let (k, v) = (
            rand([b, t, nkv, d], seed + 1),
            rand([b, t, nkv, d], seed + 2),
        );
        let g = rand([b, s, nh, d], seed + 3);
        let (o1, l1) = Cpu::attention_forward(q.clone(), k.clone(), v.clone(), &mask);
        let (o2, l2) = G::attention_forward(to(&q), to(&k), to(&v), &mask);
        close(o2.clone(), o1.clone(), &format!("{what}: output"));
        close(l2.clone(), l1.clone(), &format!("{what}: log-sum-exp"));
        let want =
            Cpu::attention_backward(q.clone(), k.clone(), v.clone(), o1, l1, g.clone(), &mask);
        let got = G::attention_backward(to(&q), to(&k), to(&v), o2, l2, to(&g), &mask);
        close(got.0, want.0, &format!("{what}: dq"));
        close(got.1, want.1, &format!("{what}: dk"));
        close(got.2, want.2, &format!("{what}: dv"));
    }
}

/// burnish's CubeCL kernels (what `G::` dispatches to) against the Flex kernels, on shapes
/// that exercise the row striding (rows wider than a cube's 256 units, widths not a multiple
/// of it), a grid of many cubes, strided inputs, several loss chunks and an empty batch.
#[test]
fn cubecl_kernels_equal_the_cpu_kernels() {
    if !gpu() {
        return;
    }
    for (rows, dim) in [(300, 896), (5, 100), (1, 1)] {
        let (x, nw, gr) = (
            rand([rows, dim], 21),
            rand([dim], 22),
            rand([rows, dim], 23),
        );
        close(
            G::rms_norm(to(&x), to(&nw), 1e-6),
            Cpu::rms_norm(x.clone(), nw.clone(), 1e-6),
            &format!("rms_norm {rows}x{dim}"),
        );
        close(
            G::rms_norm_backward(to(&x), to(&nw), 1e-6, to(&gr)),
            Cpu::rms_norm_backward(x.clone(), nw.clone(), 1e-6, gr.clone()),
            &format!("rms_norm backward {rows}x{dim}"),
        );
    }
    // A transposed (strided) input goes through the same kernel.
    let xt = rand([896, 40], 24);
    let nw = rand([896], 25);
    close(
        G::rms_norm(to::<G, 2>(&xt).transpose(), to(&nw), 1e-5),
        Cpu::rms_norm(xt.clone().transpose(), nw.clone(), 1e-5),
        "rms_norm of a transposed input",
    );

    let (ga, up, gr) = (
        rand([300, 600], 26),
        rand([300, 600], 27),
        rand([300, 600], 28),
    );
    for act in [Activation::Silu, Activation::GeluTanh] {
        close(
            G::glu(to(&ga), to(&up), act),
            Cpu::glu(ga.clone(), up.clone(), act),
            &format!("{act:?} glu"),
        );
        let (a1, b1) = Cpu::glu_backward(ga.clone(), up.clone(), act, gr.clone());
        let (a2, b2) = G::glu_backward(to(&ga), to(&up), act, to(&gr));
        close(a2, a1, &format!("{act:?} glu dgate"));
        close(b2, b1, &format!("{act:?} glu dup"));
    }

    let xr = rand([2, 37, 5, 64], 29);
    let angles = rand([2, 37, 1, 32], 30);
    let cos = Tensor::cat(vec![angles.clone().cos(), angles.clone().cos()], 3);
    let sin = Tensor::cat(vec![angles.clone().sin(), angles.sin()], 3);
    close(
        G::rope(to(&xr), &to(&cos), &to(&sin)),
        Cpu::rope(xr.clone(), &cos, &sin),
        "rope",
    );
    // The backward pass: the rope with -sin, in one kernel.
    close(
        G::rope_backward(to(&xr), &to(&cos), &to(&sin)),
        Cpu::rope(xr, &cos, &sin.clone().neg()),
        "rope backward",
    );

    let (h, w) = (rand([70, 24], 31), rand([1000, 24], 32));
    let targets: Vec<i32> = (0..70).map(|i| i * 389 % 1000).collect();
    let (l1, g1) =
        Cpu::cross_entropy_sum_and_grad(h.clone(), w.clone(), &targets, LogitChunks::of(32));
    let (l2, g2) = G::cross_entropy_sum_and_grad(to(&h), to(&w), &targets, LogitChunks::of(32));
    close(l2, l1, "cross-entropy sum");
    close(g2, g1, "cross-entropy gradient");
    let (r1, rg1) =
        Cpu::cross_entropy_rows_and_grad(h.clone(), w.clone(), &targets, LogitChunks::of(32));
    let (r2, rg2) = G::cross_entropy_rows_and_grad(to(&h), to(&w), &targets, LogitChunks::of(32));
    close(r2, r1.clone(), "cross-entropy rows");
    close(rg2, rg1, "cross-entropy rows gradient");
    close(
        G::cross_entropy_rows(to(&h), to(&w), &targets, LogitChunks::of(32)),
        r1,
        "cross-entropy rows without gradient",
    );
    close(
        G::cross_entropy_sum(to(&h), to(&w), &targets, LogitChunks::of(70)),
        Cpu::cross_entropy_sum(h.clone(), w.clone(), &targets, LogitChunks::of(70)),
        "cross-entropy sum without gradient, one chunk",
    );
    // Gemma 2's final-logit soft cap (logits here have a standard deviation near 5).
    let capped = LogitChunks {
        rows: 32,
        softcap: Some(3.0),
    };
    let (r1, rg1) = Cpu::cross_entropy_rows_and_grad(h.clone(), w.clone(), &targets, capped);
    let (r2, rg2) = G::cross_entropy_rows_and_grad(to(&h), to(&w), &targets, capped);
    close(r2, r1, "soft-capped cross-entropy rows");
    close(rg2, rg1, "soft-capped cross-entropy gradient");
    // The LoRA step with dropout drawn on the device: the same mask as the host's (odd and
    // wide rows, a split preference batch), forward and backward; two streams of one layout
    // (the second reuses the uploaded position hashes, its key's high half set).
    for (n, width, out, key) in [
        (14, 25, 40, 11),
        (9, 600, 33, 11),
        (9, 600, 33, 0xDEAD_BEEF_0000_0011),
    ] {
        let drop = Dropout {
            p: 0.3,
            key,
            first_row: 1,
            row_stride: 2,
            split: Some((1, 4)),
            seq: 7,
        };
        lora_with_dropout(
            [n, width, out],
            33,
            &drop,
            G::lora_linear_forward,
            G::lora_linear_backward,
            &format!("lora, device dropout, width {width}, key {key:#x}"),
        );
    }

    // QLoRA: the quantized weight goes to Burn's quantized matmul as it is; the result is the
    // composed path's, which dequantizes a dense copy first.
    let scheme = burnish::model::quant::QuantSpec {
        bits: 4,
        block_size: 32,
    }
    .scheme();
    let (xq, wq) = (rand([10, 64], 39), rand([48, 64], 40));
    let (la, lb) = (rand([4, 64], 41), rand([48, 4], 42));
    let wq = G::quantize_weight(to(&wq), &scheme);
    let lora = Some((to(&la), to(&lb), 2.0));
    let (y1, xa1) =
        generic::lora_linear_forward::<G>(to(&xq), wq.clone(), None, lora.clone(), None);
    let (y2, xa2) = G::lora_linear_forward(to(&xq), wq.clone(), None, lora.clone(), None);
    close(y2, y1, "qlora forward");
    let gy = rand([10, 48], 43);
    let (dx1, _) = generic::lora_linear_backward::<G>(
        to(&xq),
        xa1,
        wq.clone(),
        lora.clone(),
        None,
        to(&gy),
        true,
    );
    let (dx2, _) = G::lora_linear_backward(to(&xq), xa2, wq, lora, None, to(&gy), true);
    close(dx2.unwrap(), dx1.unwrap(), "qlora dx");

    let (l0, g0) = G::cross_entropy_sum_and_grad(
        to(&Tensor::zeros([0, 24], &Default::default())),
        to(&w),
        &[],
        LogitChunks::of(32),
    );
    assert_eq!(host(l0).1, vec![0.0], "empty batch loss");
    assert_eq!(host(g0).0, vec![0, 24], "empty batch gradient shape");
}

/// Loss and LoRA factor gradients of a whole fixture model (GQA, q/k/v bias, dropout 0.1,
/// packed and padded rows; with `dora`, DoRA magnitudes away from their row norms) under
/// autodiff: what a CUDA training step computes.
fn model_loss_and_grads<B: burnish::backend::TrainBackend>(
    variant: &str,
    dora: bool,
    device: &B::Device,
) -> (f32, Vec<Vec<f32>>) {
    let folder = ModelFolder::open(&model_dir(variant)).unwrap();
    let mut m: Model<B> = folder.load_quantized(DType::F32, None, device).unwrap();
    let settings = LoraSettings {
        r: 4,
        alpha: 8.0,
        targets: TargetSpec::One("all-linear".into()),
        dora,
        ..Default::default()
    };
    let targets = settings.resolve(&m.config).unwrap();
    for t in &targets {
        let mut f = init_factors(t, InitKind::Default, 5);
        for (i, x) in f.b.iter_mut().enumerate() {
            *x = ((i % 11) as f32 - 5.0) * 0.02;
        }
        f.magnitude = dora.then(|| {
            (0..t.out_features)
                .map(|i| 0.3 + (i % 7) as f32 * 0.1)
                .collect()
        });
        attach(&mut m.net, t, &f, 0.1, true, device);
    }
    let vocab = folder.config.vocab_size as u32;
    let rows: Vec<Vec<u32>> = vec![
        (0..19u32).map(|i| (i * 7919 + 3) % vocab).collect(),
        (0..12u32).map(|i| (i * 104_729 + 11) % vocab).collect(),
    ];
    let batch = HostBatch::from_rows(&rows, 0);
    let labels: Vec<Vec<i64>> = rows
        .iter()
        .map(|r| r.iter().map(|&x| x as i64).collect())
        .collect();
    let tgt = Targets::shifted(&labels, &batch.segments);
    let seed = DropoutSeed::strided(3, 0, 1);
    let h = m.hidden_states(&batch, Some(&seed));
    let (loss, _) = cross_entropy_sum(&m.net, h, &tgt, 16);
    let value = host(loss.clone()).1[0];
    let grads = loss.backward();
    let out = factor_tensors(&m.net, &targets)
        .into_iter()
        .map(|p| host(p.grad(&grads).expect("a factor without gradient")).1)
        .collect();
    (value, out)
}

#[test]
fn a_training_step_on_a_cubecl_runtime_equals_the_cpu() {
    if !gpu() {
        return;
    }
    // Qwen2, Gemma 3 (sliding layers with their own RoPE, sandwich norms, GeGLU), and Qwen2
    // with DoRA.
    for (variant, dora) in [
        ("qwen2-tied", false),
        ("gemma3", false),
        ("qwen2-tied", true),
    ] {
        let (l_cpu, g_cpu) =
            model_loss_and_grads::<Autodiff<Cpu>>(variant, dora, &Default::default());
        let (l_gpu, g_gpu) =
            model_loss_and_grads::<Autodiff<G>>(variant, dora, &Default::default());
        assert!(
            ((l_cpu - l_gpu) / l_cpu).abs() < 1e-4,
            "{variant}: loss {l_cpu} vs {l_gpu}"
        );
        assert_eq!(g_cpu.len(), g_gpu.len());
        for (i, (a, b)) in g_cpu.iter().zip(&g_gpu).enumerate() {
            let t = |v: &Vec<f32>| {
                Tensor::<Cpu, 1>::from_data(
                    TensorData::new(v.clone(), [v.len()]),
                    &Default::default(),
                )
            };
            close(t(b), t(a), &format!("{variant}: factor gradient {i}"));
        }
    }
}
