//! The Flex host kernels against the compositions of Burn tensor ops in `kernels::generic`
//! (what CUDA runs), forward and backward, on random inputs. Both are f32; they differ only in
//! summation order and in the vectorised `exp` (relative error < 3e-7), hence 1e-5 bounds.

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use burnish::backend::Cpu;
use burnish::model::kernels::{Activation, Kernels, LogitChunks, generic};

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

#[test]
fn cross_entropy_kernel_matches_composition() {
    let h = rand([37, 24], 1);
    let w = rand([301, 24], 2);
    let targets: Vec<i32> = (0..37).map(|i| i * 53 % 301).collect();
    // Logits here have a standard deviation near 5: a cap of 3 bends most of them.
    for softcap in [None, Some(3.0)] {
        for rows in [5, 16, 64] {
            let chunk = LogitChunks { rows, softcap };
            let what = format!("{rows}-row chunks, cap {softcap:?}");
            let (l1, g1) = Cpu::cross_entropy_sum_and_grad(h.clone(), w.clone(), &targets, chunk);
            let (l2, g2) =
                generic::cross_entropy_sum_and_grad(h.clone(), w.clone(), &targets, chunk);
            close(l1, l2.clone(), 1e-5, &format!("loss, {what}"));
            close(g1, g2, 1e-5, &format!("grad, {what}"));
            close(
                Cpu::cross_entropy_sum(h.clone(), w.clone(), &targets, chunk),
                l2,
                1e-5,
                &format!("loss only, {what}"),
            );
        }
    }
    // A vocabulary large enough for the gradient product to be split across threads.
    let w = rand([5003, 24], 12);
    let targets: Vec<i32> = (0..37).map(|i| i * 131 % 5003).collect();
    for softcap in [None, Some(3.0)] {
        let chunk = LogitChunks { rows: 16, softcap };
        let (l1, g1) = Cpu::cross_entropy_sum_and_grad(h.clone(), w.clone(), &targets, chunk);
        let (l2, g2) = generic::cross_entropy_sum_and_grad(h.clone(), w.clone(), &targets, chunk);
        close(
            l1,
            l2,
            1e-5,
            &format!("loss, large vocabulary, cap {softcap:?}"),
        );
        close(
            g1,
            g2,
            1e-5,
            &format!("grad, large vocabulary, cap {softcap:?}"),
        );
    }
}

/// Gemma 2's final-logit soft cap against the formula `-log_softmax(cap * tanh(h w^T / cap))`
/// differentiated by Burn's autodiff: the per-row losses and their gradient through the
/// fused op's autodiff node (what training runs), and the Flex kernel's. f32, 1e-5.
#[test]
fn soft_capped_cross_entropy_equals_the_formula() {
    use burn::backend::Autodiff;
    use burn::tensor::activation::log_softmax;
    type A = Autodiff<Cpu>;
    let (h, w) = (rand([29, 24], 31), rand([517, 24], 32));
    let targets: Vec<i32> = (0..29).map(|i| i * 71 % 517).collect();
    let weights = rand([29], 33);
    let cap = 3.0;
    let track = |x: &T<2>| Tensor::<A, 2>::from_inner(x.clone()).require_grad();
    let ha = track(&h);
    let logits = ha
        .clone()
        .matmul(Tensor::<A, 2>::from_inner(w.clone()).transpose());
    let lp = log_softmax((logits / cap).tanh() * cap, 1);
    let idx = Tensor::<A, 2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(targets.clone(), [29, 1]),
        &Default::default(),
    );
    let want = lp.gather(1, idx).reshape([29]).neg();
    let wa = Tensor::<A, 1>::from_inner(weights.clone());
    let grads = (want.clone() * wa.clone()).sum().backward();
    let want_grad = ha.grad(&grads).unwrap();
    let chunk = LogitChunks {
        rows: 8,
        softcap: Some(cap as f32),
    };
    let hb = track(&h);
    let got = <A as Kernels>::cross_entropy_rows(
        hb.clone(),
        Tensor::<A, 2>::from_inner(w.clone()),
        &targets,
        chunk,
    );
    close(got.clone().inner(), want.inner(), 1e-5, "capped row losses");
    let grads = (got * wa).sum().backward();
    close(
        hb.grad(&grads).unwrap(),
        want_grad.clone(),
        1e-5,
        "capped gradient (autodiff node)",
    );
    let (_, g) = Cpu::cross_entropy_rows_and_grad(h, w, &targets, chunk);
    let weighted = g * weights.reshape([29, 1]);
    close(weighted, want_grad, 1e-5, "capped gradient (Flex kernel)");
}

#[test]
fn norm_rope_glu_and_lora_linear_match_composition() {
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
    for act in [Activation::Silu, Activation::GeluTanh] {
        close(
            Cpu::glu(ga.clone(), up.clone(), act),
            generic::glu(ga.clone(), up.clone(), act),
            1e-5,
            &format!("{act:?} glu"),
        );
        let (a1, b1) = Cpu::glu_backward(ga.clone(), up.clone(), act, g.clone());
        let (a2, b2) = generic::glu_backward(ga.clone(), up.clone(), act, g.clone());
        close(a1, a2, 1e-5, &format!("{act:?} glu dgate"));
        close(b1, b2, 1e-5, &format!("{act:?} glu dup"));
    }

    let (xl, wl, bias) = (rand([11, 24], 16), rand([40, 24], 17), rand([40], 18));
    let (la, lb) = (rand([4, 24], 19), rand([40, 4], 20));
    let lora = Some((la.clone(), lb.clone(), 2.5));
    let (y1, xa1) = Cpu::lora_linear_forward(
        xl.clone(),
        wl.clone(),
        Some(bias.clone()),
        lora.clone(),
        None,
    );
    let (y2, xa2) =
        generic::lora_linear_forward(xl.clone(), wl.clone(), Some(bias), lora.clone(), None);
    close(y1, y2, 1e-5, "lora linear");
    close(xa1.clone().unwrap(), xa2.unwrap(), 1e-5, "x A^T");
    let gy = rand([11, 40], 21);
    let (dx1, d1) = Cpu::lora_linear_backward(
        xl.clone(),
        xa1.clone(),
        wl.clone(),
        lora.clone(),
        None,
        gy.clone(),
        true,
    );
    let (dx2, d2) = generic::lora_linear_backward(xl, xa1, wl, lora, None, gy, true);
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
    let (y1, xa1) = Cpu::lora_linear_forward(
        x.clone(),
        laid.clone(),
        Some(bias.clone()),
        lora.clone(),
        None,
    );
    let (y2, xa2) =
        generic::lora_linear_forward(x.clone(), w.clone(), Some(bias), lora.clone(), None);
    close(y1, y2, 1e-5, "transposed-layout forward");
    close(
        xa1.clone().unwrap(),
        xa2.unwrap(),
        1e-5,
        "transposed-layout x A^T",
    );
    let gy = rand([11, 12], 47);
    let (dx1, d1) = Cpu::lora_linear_backward(
        x.clone(),
        xa1.clone(),
        laid,
        lora.clone(),
        None,
        gy.clone(),
        true,
    );
    let (dx2, d2) = generic::lora_linear_backward(x, xa1, w, lora, None, gy, true);
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
    let (y1, xa1) = Cpu::lora_linear_forward(x.clone(), q.clone(), None, lora.clone(), None);
    let (y2, _) = generic::lora_linear_forward(x.clone(), dense.clone(), None, lora.clone(), None);
    close(y1, y2, 1e-5, "quantized wide-input forward");
    let gy = rand([9, 24], 55);
    let (dx1, _) = Cpu::lora_linear_backward(
        x.clone(),
        xa1.clone(),
        q,
        lora.clone(),
        None,
        gy.clone(),
        true,
    );
    let (dx2, _) = generic::lora_linear_backward(x, xa1, dense, lora, None, gy, true);
    close(dx1.unwrap(), dx2.unwrap(), 1e-5, "quantized wide-input dx");
}

/// LoRA dropout inside the fused step: the Flex kernel and the composition draw the same mask,
/// and the gradients (mask drawn again in the backward) equal Burn's autodiff through the
/// plain formula `x W^T + b + ((M / (1 - p)) * x) A^T B^T s` with that mask written out.
#[test]
fn lora_dropout_matches_autodiff_of_the_explicit_mask() {
    use burn::backend::Autodiff;
    use burnish::model::kernels::Dropout;
    type A = Autodiff<Cpu>;
    let (n, inp, out, r) = (14, 24, 40, 4);
    let (x, w, bias) = (rand([n, inp], 61), rand([out, inp], 62), rand([out], 63));
    let (la, lb, s) = (rand([r, inp], 64), rand([out, r], 65), 1.5);
    let drop = Dropout {
        p: 0.3,
        key: 7,
        first_row: 1,
        row_stride: 2,
        split: None,
        seq: 7,
    };
    let lora = Some((la.clone(), lb.clone(), s));
    let (y1, xa1) = Cpu::lora_linear_forward(
        x.clone(),
        w.clone(),
        Some(bias.clone()),
        lora.clone(),
        Some(&drop),
    );
    let (y2, _) = generic::lora_linear_forward(
        x.clone(),
        w.clone(),
        Some(bias.clone()),
        lora.clone(),
        Some(&drop),
    );
    close(
        y1.clone(),
        y2,
        1e-5,
        "dropout forward: kernel vs composition",
    );

    let mask = Tensor::<A, 2>::from_data(
        burn::tensor::TensorData::new(drop.mask(n, inp), [n, inp]),
        &Default::default(),
    );
    let xa = Tensor::<A, 2>::from_inner(x.clone()).require_grad();
    let aa = Tensor::<A, 2>::from_inner(la.clone()).require_grad();
    let ba = Tensor::<A, 2>::from_inner(lb.clone()).require_grad();
    let wa = Tensor::<A, 2>::from_inner(w.clone());
    let y = xa.clone().matmul(wa.transpose())
        + Tensor::<A, 1>::from_inner(bias).unsqueeze::<2>()
        + (xa.clone() * mask)
            .matmul(aa.clone().transpose())
            .matmul(ba.clone().transpose())
            * s;
    close(
        y.clone().inner(),
        y1,
        1e-5,
        "dropout forward: vs explicit mask",
    );
    let gy = rand([n, out], 66);
    let grads = (y * Tensor::<A, 2>::from_inner(gy.clone()))
        .sum()
        .backward();
    let (dx, d) = Cpu::lora_linear_backward(x, xa1, w, lora, Some(&drop), gy, true);
    let (da, db) = d.unwrap();
    close(dx.unwrap(), xa.grad(&grads).unwrap(), 1e-5, "dropout dx");
    close(da, aa.grad(&grads).unwrap(), 1e-5, "dropout dA");
    close(db, ba.grad(&grads).unwrap(), 1e-5, "dropout dB");
}
