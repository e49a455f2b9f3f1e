//! The Flex host kernels against the compositions of Burn tensor ops in `kernels::generic`
//! (what CUDA runs), forward and backward, on random inputs. Both are f32; they differ only in
//! summation order and in the vectorised `exp` (relative error < 3e-7), hence 1e-5 bounds.

use burn::tensor::{Bool, Distribution, Tensor, TensorData};
use burnish::backend::Cpu;
use burnish::model::kernels::{Kernels, generic};

type T<const D: usize> = Tensor<Cpu, D>;

fn rand<const D: usize>(shape: [usize; D], seed: u64) -> T<D> {
    Cpu::seed(&Default::default(), seed);
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn close<const D: usize>(a: T<D>, b: T<D>, tol: f32, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let (a, b) = (
        a.into_data().to_vec::<f32>().unwrap(),
        b.into_data().to_vec::<f32>().unwrap(),
    );
    let scale = b.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff <= tol * scale,
        "{what}: max diff {diff} (scale {scale})"
    );
}

use burn::tensor::backend::Backend;

fn causal_padded_mask(b: usize, s: usize, t: usize) -> Tensor<Cpu, 4, Bool> {
    let mut m = Vec::new();
    for bi in 0..b {
        for i in 0..s {
            for j in 0..t {
                // causal, and the last two keys of batch 1 are padding
                m.push(j > i + (t - s) || (bi == 1 && j >= t - 2));
            }
        }
    }
    Tensor::from_data(TensorData::new(m, [b, 1, s, t]), &Default::default())
}

#[test]
fn cross_entropy_kernel_matches_composition() {
    let h = rand([37, 24], 1);
    let w = rand([301, 24], 2);
    let targets: Vec<i32> = (0..37).map(|i| i * 53 % 301).collect();
    for chunk in [5, 16, 64] {
        let (l1, g1) = Cpu::cross_entropy_sum_and_grad(h.clone(), w.clone(), &targets, chunk);
        let (l2, g2) = generic::cross_entropy_sum_and_grad(h.clone(), w.clone(), &targets, chunk);
        close(l1, l2.clone(), 1e-5, "loss");
        close(g1, g2, 1e-5, "grad");
        close(
            Cpu::cross_entropy_sum(h.clone(), w.clone(), &targets, chunk),
            l2,
            1e-5,
            "loss only",
        );
    }
    // A vocabulary large enough for the gradient product to be split across threads.
    let w = rand([5003, 24], 12);
    let targets: Vec<i32> = (0..37).map(|i| i * 131 % 5003).collect();
    let (l1, g1) = Cpu::cross_entropy_sum_and_grad(h.clone(), w.clone(), &targets, 16);
    let (l2, g2) = generic::cross_entropy_sum_and_grad(h, w, &targets, 16);
    close(l1, l2, 1e-5, "loss, large vocabulary");
    close(g1, g2, 1e-5, "grad, large vocabulary");
}

#[test]
fn attention_kernels_match_composition() {
    let (b, s, t, nh, nkv, d) = (2, 7, 9, 4, 2, 8);
    let q = rand([b, s, nh, d], 3);
    let k = rand([b, t, nkv, d], 4);
    let v = rand([b, t, nkv, d], 5);
    let mask = causal_padded_mask(b, s, t);
    let (o1, p1) = Cpu::attention_with_probs(q.clone(), k.clone(), v.clone(), &mask);
    let (o2, p2) = generic::attention_with_probs(q.clone(), k.clone(), v.clone(), &mask);
    close(o1, o2, 1e-5, "attention output");
    close(p1.clone(), p2, 1e-5, "attention probabilities");
    let g = rand([b, s, nh, d], 6);
    let (dq1, dk1, dv1) =
        Cpu::attention_backward(q.clone(), k.clone(), v.clone(), p1.clone(), g.clone());
    let (dq2, dk2, dv2) = generic::attention_backward(q, k, v, p1, g);
    close(dq1, dq2, 1e-5, "dq");
    close(dk1, dk2, 1e-5, "dk");
    close(dv1, dv2, 1e-5, "dv");
    let scores = rand([b, nh, s, t], 7);
    close(
        Cpu::masked_softmax(scores.clone(), &mask),
        generic::masked_softmax(scores.clone(), &mask),
        1e-5,
        "masked softmax",
    );
    let gp = rand([b, nh, s, t], 8);
    let p = generic::masked_softmax(scores, &mask);
    close(
        Cpu::softmax_backward(p.clone(), gp.clone()),
        generic::softmax_backward(p, gp),
        1e-5,
        "softmax backward",
    );
}

/// Longer than one 64-row query block, so blocks see different key extents; batch 1 has two
/// padded keys and a query row that sees nothing (it attends uniformly to every key).
#[test]
fn blocked_attention_matches_composition() {
    let (b, s, t, nh, nkv, d) = (2, 150, 150, 4, 2, 8);
    let mut m = Vec::new();
    for bi in 0..b {
        for i in 0..s {
            for j in 0..t {
                m.push(j > i || (bi == 1 && (j >= t - 2 || i == 100)));
            }
        }
    }
    let mask =
        Tensor::<Cpu, 4, Bool>::from_data(TensorData::new(m, [b, 1, s, t]), &Default::default());
    let q = rand([b, s, nh, d], 31);
    let k = rand([b, t, nkv, d], 32);
    let v = rand([b, t, nkv, d], 33);
    let (o1, p1) = Cpu::attention_with_probs(q.clone(), k.clone(), v.clone(), &mask);
    let (o2, p2) = generic::attention_with_probs(q.clone(), k.clone(), v.clone(), &mask);
    close(o1, o2, 1e-5, "blocked attention output");
    close(p1.clone(), p2, 1e-5, "blocked attention probabilities");
    let g = rand([b, s, nh, d], 34);
    let (dq1, dk1, dv1) =
        Cpu::attention_backward(q.clone(), k.clone(), v.clone(), p1.clone(), g.clone());
    let (dq2, dk2, dv2) = generic::attention_backward(q, k, v, p1, g);
    close(dq1, dq2, 1e-5, "blocked dq");
    close(dk1, dk2, 1e-5, "blocked dk");
    close(dv1, dv2, 1e-5, "blocked dv");
}

#[test]
fn norm_rope_swiglu_and_lora_linear_match_composition() {
    let x = rand([13, 32], 9);
    let w = rand([32], 10);
    close(
        Cpu::rms_norm(x.clone(), w.clone(), 1e-6),
        generic::rms_norm(x.clone(), w.clone(), 1e-6),
        1e-5,
        "rms_norm",
    );
    let g = rand([13, 32], 11);
    close(
        Cpu::rms_norm_backward(x.clone(), w.clone(), 1e-6, g.clone()),
        generic::rms_norm_backward(x.clone(), w, 1e-6, g.clone()),
        1e-5,
        "rms_norm backward",
    );

    let xr = rand([2, 5, 3, 8], 12);
    let angles = rand([2, 5, 1, 4], 13);
    let cos = Tensor::cat(vec![angles.clone().cos(), angles.clone().cos()], 3);
    let sin = Tensor::cat(vec![angles.clone().sin(), angles.sin()], 3);
    close(
        Cpu::rope(xr.clone(), &cos, &sin),
        generic::rope(xr, &cos, &sin),
        1e-6,
        "rope",
    );

    let (ga, up) = (rand([13, 32], 14), rand([13, 32], 15));
    close(
        Cpu::swiglu(ga.clone(), up.clone()),
        generic::swiglu(ga.clone(), up.clone()),
        1e-5,
        "swiglu",
    );
    let (a1, b1) = Cpu::swiglu_backward(ga.clone(), up.clone(), g.clone());
    let (a2, b2) = generic::swiglu_backward(ga, up, g);
    close(a1, a2, 1e-5, "swiglu dgate");
    close(b1, b2, 1e-5, "swiglu dup");

    let (xl, wl, bias) = (rand([11, 24], 16), rand([40, 24], 17), rand([40], 18));
    let (la, lb) = (rand([4, 24], 19), rand([40, 4], 20));
    let lora = Some((la.clone(), lb.clone(), 2.5));
    let (y1, xa1) =
        Cpu::lora_linear_forward(xl.clone(), wl.clone(), Some(bias.clone()), lora.clone());
    let (y2, xa2) = generic::lora_linear_forward(xl.clone(), wl.clone(), Some(bias), lora.clone());
    close(y1, y2, 1e-5, "lora linear");
    close(xa1.clone().unwrap(), xa2.unwrap(), 1e-5, "x A^T");
    let gy = rand([11, 40], 21);
    let (dx1, d1) = Cpu::lora_linear_backward(
        xl.clone(),
        xa1.clone(),
        wl.clone(),
        lora.clone(),
        gy.clone(),
        true,
    );
    let (dx2, d2) = generic::lora_linear_backward(xl, xa1, wl, lora, gy, true);
    close(dx1.unwrap(), dx2.unwrap(), 1e-5, "lora dx");
    let ((da1, db1), (da2, db2)) = (d1.unwrap(), d2.unwrap());
    close(da1, da2, 1e-5, "lora dA");
    close(db1, db2, 1e-5, "lora dB");
}

/// A weight with more inputs than outputs is stored transposed behind a view; values, and
/// what the linear kernels compute with it, stay those of the row-major weight.
#[test]
fn transposed_weight_layout_computes_the_same() {
    let (x, w, bias) = (rand([11, 40], 41), rand([12, 40], 42), rand([12], 43));
    let laid = Cpu::layout_frozen_weight(w.clone());
    let strides = laid
        .clone()
        .into_primitive()
        .tensor()
        .layout()
        .strides()
        .to_vec();
    assert_eq!(strides, vec![1, 12], "stored as [in, out]");
    assert_eq!(laid.clone().into_data(), w.clone().into_data());
    let square = rand([40, 40], 44);
    let kept = Cpu::layout_frozen_weight(square.clone());
    assert_eq!(
        kept.into_primitive().tensor().layout().strides().to_vec(),
        vec![40, 1]
    );

    let lora = Some((rand([4, 40], 45), rand([12, 4], 46), 2.0));
    let (y1, xa1) =
        Cpu::lora_linear_forward(x.clone(), laid.clone(), Some(bias.clone()), lora.clone());
    let (y2, xa2) = generic::lora_linear_forward(x.clone(), w.clone(), Some(bias), lora.clone());
    close(y1, y2, 1e-5, "transposed-layout forward");
    close(
        xa1.clone().unwrap(),
        xa2.unwrap(),
        1e-5,
        "transposed-layout x A^T",
    );
    let gy = rand([11, 12], 47);
    let (dx1, d1) =
        Cpu::lora_linear_backward(x.clone(), xa1.clone(), laid, lora.clone(), gy.clone(), true);
    let (dx2, d2) = generic::lora_linear_backward(x, xa1, w, lora, gy, true);
    close(dx1.unwrap(), dx2.unwrap(), 1e-5, "transposed-layout dx");
    let ((da1, db1), (da2, db2)) = (d1.unwrap(), d2.unwrap());
    close(da1, da2, 1e-5, "transposed-layout dA");
    close(db1, db2, 1e-5, "transposed-layout dB");
}

/// A quantized weight with more inputs than outputs is dequantized for the forward straight
/// into transposed storage; the result equals the linear layer on the row-major dequantized
/// weight.
#[test]
fn quantized_wide_input_forward_matches_dequantized_weight() {
    use burn::tensor::DType;
    use burnish::model::quant::QuantSpec;
    let (x, w) = (rand([9, 128], 51), rand([24, 128], 52));
    let q = Cpu::quantize_weight(
        w,
        &QuantSpec {
            bits: 4,
            block_size: 32,
        }
        .scheme(),
    );
    let dense = Cpu::dequantize_weight(q.clone(), DType::F32);
    let lora = Some((rand([4, 128], 53), rand([24, 4], 54), 2.0));
    let (y1, xa1) = Cpu::lora_linear_forward(x.clone(), q.clone(), None, lora.clone());
    let (y2, _) = generic::lora_linear_forward(x.clone(), dense.clone(), None, lora.clone());
    close(y1, y2, 1e-5, "quantized wide-input forward");
    let gy = rand([9, 24], 55);
    let (dx1, _) =
        Cpu::lora_linear_backward(x.clone(), xa1.clone(), q, lora.clone(), gy.clone(), true);
    let (dx2, _) = generic::lora_linear_backward(x, xa1, dense, lora, gy, true);
    close(dx1.unwrap(), dx2.unwrap(), 1e-5, "quantized wide-input dx");
}
