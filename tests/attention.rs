//! Blockwise attention (the Flex kernel, the composition of Burn ops every other backend runs,
//! and the autodiff node around them) against the dense formula of today's kernels:
//! `softmax(mask(q k^T / sqrt(d))) v` with a [s, t] mask, queries that see nothing attending
//! uniformly, differentiated by Burn's autodiff. Random inputs, causal rows, padding, several
//! packed examples per row, grouped-query and multi-head; blocks of several tiles. All f32:
//! the results differ by summation order only, hence 1e-5 (relative to the largest value).

use burn::backend::Autodiff;
use burn::tensor::activation::softmax;
use burn::tensor::{Distribution, Tensor};
use burnish::backend::Cpu;
use burnish::model::kernels::{AttentionMask, Kernels, MASK_VALUE, ScoreShape, generic};

mod common;

use common::{assert_close_to_scale, segments};

type A = Autodiff<Cpu>;

fn rand<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Cpu, D> {
    <Cpu as burn::tensor::backend::Backend>::seed(&Default::default(), seed);
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn close<const D: usize>(a: Tensor<Cpu, D>, b: Tensor<Cpu, D>, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let (a, b) = (
        a.into_data().to_vec::<f32>().unwrap(),
        b.into_data().to_vec::<f32>().unwrap(),
    );
    assert_close_to_scale(&a, &b, 1e-5, what);
}

/// The dense reference on the autodiff backend: `q: [b, s, h, d]`, `k`, `v: [b, t, kvh, d]`.
fn dense(q: Tensor<A, 4>, k: Tensor<A, 4>, v: Tensor<A, 4>, mask: &AttentionMask) -> Tensor<A, 4> {
    let [b, s, nh, d] = q.dims();
    let [_, t, nkv, _] = k.dims();
    let rep = nh / nkv;
    let repeat = |x: Tensor<A, 4>| {
        x.swap_dims(1, 2)
            .unsqueeze_dim::<5>(2)
            .expand([b, nkv, rep, t, d])
            .reshape([b, nh, t, d])
    };
    let shape = mask.scores();
    let mut scores = q.swap_dims(1, 2).matmul(repeat(k).swap_dims(2, 3)) * shape.scale(d) as f64;
    if let Some(cap) = shape.softcap {
        scores = (scores / cap as f64).tanh() * cap as f64;
    }
    let hidden = mask.dense::<A>(&Default::default()).expand([b, nh, s, t]);
    let p = softmax(scores.mask_fill(hidden, MASK_VALUE), 3);
    p.matmul(repeat(v)).swap_dims(1, 2)
}

fn check(nh: usize, nkv: usize, segments: &[Vec<i32>], queries: usize, seed: u64) {
    check_mask(nh, nkv, &AttentionMask::new(segments, queries, true), seed);
}

fn check_mask(nh: usize, nkv: usize, mask: &AttentionMask, seed: u64) {
    let (b, s, t, d) = (mask.batch(), mask.queries(), mask.keys(), 16);
    let what = format!("heads {nh}/{nkv}, {b}x{s} queries over {t} keys");
    let (q, k, v) = (
        rand([b, s, nh, d], seed),
        rand([b, t, nkv, d], seed + 1),
        rand([b, t, nkv, d], seed + 2),
    );
    let g = rand([b, s, nh, d], seed + 3);
    // Reference output and gradients.
    let track = |x: &Tensor<Cpu, 4>| Tensor::<A, 4>::from_inner(x.clone()).require_grad();
    let (qa, ka, va) = (track(&q), track(&k), track(&v));
    let want = dense(qa.clone(), ka.clone(), va.clone(), mask);
    let grads = (want.clone() * Tensor::<A, 4>::from_inner(g.clone()))
        .sum()
        .backward();
    let want_d = [
        qa.grad(&grads).unwrap(),
        ka.grad(&grads).unwrap(),
        va.grad(&grads).unwrap(),
    ];
    let want = want.inner();

    // The Flex kernel and the composition, forward and backward.
    for (name, (out, lse)) in [
        (
            "flex",
            Cpu::attention_forward(q.clone(), k.clone(), v.clone(), mask),
        ),
        (
            "generic",
            generic::attention::forward(q.clone(), k.clone(), v.clone(), mask),
        ),
    ] {
        close(out.clone(), want.clone(), &format!("{what}: {name} output"));
        let got = if name == "flex" {
            Cpu::attention_backward(q.clone(), k.clone(), v.clone(), out, lse, g.clone(), mask)
        } else {
            generic::attention::backward(q.clone(), k.clone(), v.clone(), out, lse, g.clone(), mask)
        };
        for (got, (want, n)) in [got.0, got.1, got.2]
            .into_iter()
            .zip(want_d.iter().zip(["dq", "dk", "dv"]))
        {
            close(got, want.clone(), &format!("{what}: {name} {n}"));
        }
    }

    // The autodiff node (what training runs) gives the same gradients.
    let (qa, ka, va) = (track(&q), track(&k), track(&v));
    let out = <A as Kernels>::attention(qa.clone(), ka.clone(), va.clone(), mask);
    close(out.clone().inner(), want, &format!("{what}: node output"));
    let grads = (out * Tensor::<A, 4>::from_inner(g)).sum().backward();
    for (x, (want, n)) in [qa, ka, va]
        .iter()
        .zip(want_d.iter().zip(["dq", "dk", "dv"]))
    {
        close(
            x.grad(&grads).unwrap(),
            want.clone(),
            &format!("{what}: node {n}"),
        );
    }
}

#[test]
fn blockwise_attention_equals_the_dense_formula() {
    // 150 keys: three 64-row Flex blocks and two 128-wide composed tiles.
    let packed = vec![segments(&[40, 70, 25], 15), segments(&[120], 30)];
    check(6, 2, &packed, 150, 10);
    check(4, 4, &packed, 150, 20);
    // One example per row, no padding, and a row that is all padding.
    check(4, 2, &[segments(&[150], 0), segments(&[], 150)], 150, 30);
}

/// Sliding windows (Mistral, Qwen2's sliding layers): windows shorter and longer than a
/// 64-query block, over packed examples, padding and queries after a cache.
#[test]
fn sliding_window_attention_equals_the_dense_formula() {
    let packed = vec![segments(&[40, 70, 25], 15), segments(&[120], 30)];
    for (width, seed) in [(1, 60), (17, 61), (90, 62)] {
        check_mask(
            6,
            2,
            &AttentionMask::new(&packed, 150, true).windowed(width),
            seed,
        );
    }
    let cached = AttentionMask::new(&[vec![0; 145]], 5, true).windowed(33);
    check_mask(4, 2, &cached, 63);
}

/// Gemma 2's scores: `q.k * query_pre_attn_scalar^-1/2`, then `cap * tanh(s / cap)`, masked
/// after. A cap of 1.5 bends nearly every score of these N(0, 1) inputs (d 16, scale 0.4);
/// packed, padded and sliding masks, and queries after a cache.
#[test]
fn soft_capped_scaled_attention_equals_the_dense_formula() {
    let gemma2 = ScoreShape {
        scale: Some(0.4),
        softcap: Some(1.5),
    };
    let packed = vec![segments(&[40, 70, 25], 15), segments(&[120], 30)];
    let mask = AttentionMask::new(&packed, 150, true).with_scores(gemma2);
    check_mask(6, 2, &mask, 70);
    check_mask(4, 2, &mask.windowed(33), 71);
    let cached = AttentionMask::incremental(2, 140, 5).with_scores(gemma2);
    check_mask(4, 1, &cached, 72);
}

#[test]
fn incremental_queries_after_a_cache() {
    // Five new tokens after 140 cached ones (generation), and one token.
    for queries in [5, 1] {
        check(6, 2, &[vec![0; 145], vec![0; 145]], queries, 40);
    }
}

/// A NaN in the scores reaches the output, as PyTorch's softmax lets it, instead of being
/// taken for a masked key.
#[test]
fn nan_propagates() {
    let mask = AttentionMask::new(&[segments(&[20], 0)], 20, true);
    let q = rand([1, 20, 2, 8], 50);
    let mut data = q.into_data().to_vec::<f32>().unwrap();
    data[3 * 16] = f32::NAN;
    let q = Tensor::<Cpu, 4>::from_data(
        burn::tensor::TensorData::new(data, [1, 20, 2, 8]),
        &Default::default(),
    );
    let (k, v) = (rand([1, 20, 1, 8], 51), rand([1, 20, 1, 8], 52));
    for (name, out) in [
        (
            "flex",
            Cpu::attention(q.clone(), k.clone(), v.clone(), &mask),
        ),
        (
            "generic",
            generic::attention::forward(q.clone(), k.clone(), v.clone(), &mask).0,
        ),
    ] {
        let o = out.into_data().to_vec::<f32>().unwrap();
        assert!(
            o[3 * 16..3 * 16 + 8].iter().all(|x| x.is_nan()),
            "{name}: {o:?}"
        );
        assert!(
            o[..3 * 16].iter().all(|x| x.is_finite()),
            "{name}: earlier rows"
        );
    }
}
