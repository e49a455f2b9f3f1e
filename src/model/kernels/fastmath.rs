//! A branch-free `exp` for f32 that compilers vectorise (the libm one is called per element):
//! Cody-Waite range reduction to `r` in [-ln2/2, ln2/2], a degree-6 polynomial for `e^r`, and
//! the power of two put into the exponent bits. Relative error below 2e-7 over the range
//! softmax needs.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    // Round to nearest by adding and removing 1.5 * 2^23 (vectorises; `round` is a libm call).
    const MAGIC: f32 = 12_582_912.0;
    let n = (x * LOG2E + MAGIC) - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    // e^r = 1 + r + r^2/2 + ... + r^6/720, in Horner form.
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// `tanh(u)` from one exponential: `1 - 2 / (e^(2u) + 1)` (saturates to +-1; NaN stays NaN).
/// Absolute error about 1e-7.
#[inline(always)]
pub fn tanh(u: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * u) + 1.0)
}

/// Independent accumulators per reduction: a float sum or max carried in one register is a
/// serial dependency LLVM will not reorder, so reductions keep `LANES` partial results (one
/// AVX-512 vector) and combine them at the end.
const LANES: usize = 16;

/// `sum(exp(x[i] - shift))`, and with `store` each `x[i]` replaced by its `exp(x[i] - shift)`.
/// f32 partial sums over 256 values per lane, combined in f64.
#[inline(always)]
pub fn exp_sum(x: &mut [f32], shift: f32, store: bool) -> f64 {
    exp_sum_with(x, shift, store.then_some(|_, e| e))
}

/// [`exp_sum`], each `x[i]` replaced by `store(x[i], exp(x[i] - shift))` when given.
#[inline(always)]
pub fn exp_sum_with(x: &mut [f32], shift: f32, store: Option<impl Fn(f32, f32) -> f32>) -> f64 {
    let mut total = 0.0f64;
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for (i, c) in (&mut chunks).enumerate() {
        for j in 0..LANES {
            let e = exp(c[j] - shift);
            if let Some(f) = &store {
                c[j] = f(c[j], e);
            }
            acc[j] += e;
        }
        if i % 256 == 255 {
            total += acc.iter().map(|&a| a as f64).sum::<f64>();
            acc = [0.0; LANES];
        }
    }
    for v in chunks.into_remainder() {
        let e = exp(*v - shift);
        if let Some(f) = &store {
            *v = f(*v, e);
        }
        acc[0] += e;
    }
    total + acc.iter().map(|&a| a as f64).sum::<f64>()
}

/// The largest value (NEG_INFINITY for an empty slice), or NaN when any value is NaN, as
/// PyTorch's `max` and `softmax` propagate it. (`f32::max` skips NaN: a row of NaN scores would
/// look fully masked and the damage would vanish from the loss.)
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    // Counting NaN lanes on the side keeps the max a plain vector op.
    let mut nan = [0u32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
            nan[i] |= u32::from(c[i].is_nan());
        }
    }
    let tail = chunks.remainder();
    if nan.iter().any(|&n| n != 0) || tail.iter().any(|v| v.is_nan()) {
        return f32::NAN;
    }
    acc.into_iter()
        .chain(tail.iter().copied())
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `sum(a[i] * b[i])` over the shorter length.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// `sum(a[i] * b[i] * c[i])` over the shortest length.
#[inline(always)]
pub fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [0.0f32; LANES];
    let (mut ca, mut cb, mut cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    for ((x, y), z) in (&mut ca).zip(&mut cb).zip(&mut cc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i] * z[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder())
        .map(|((x, y), z)| x * y * z)
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp(-200.0) < 1.3e-38 && exp(-200.0) >= 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn reductions_match_plain_loops() {
        for n in [0usize, 1, 15, 16, 17, 100, 4096, 5000, 151_936] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.02)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 11 % 13) as f32 - 6.0) * 0.1).collect();
            let c: Vec<f32> = (0..n).map(|i| ((i % 5) as f32) * 0.3).collect();
            assert_eq!(max(&a), a.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            if n > 0 {
                for at in [0, n / 2, n - 1] {
                    let mut with_nan = a.clone();
                    with_nan[at] = f32::NAN;
                    assert!(max(&with_nan).is_nan(), "{n}: NaN at {at} must propagate");
                }
            }
            let want: f64 = a.iter().zip(&b).map(|(x, y)| (x * y) as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()));
            let want: f64 = (0..n).map(|i| (a[i] * b[i] * c[i]) as f64).sum();
            assert!((dot3(&a, &b, &c) as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()));
            let shift = 1.0f32;
            let want: f64 = a.iter().map(|&x| ((x - shift) as f64).exp()).sum();
            let mut stored = a.clone();
            let got = exp_sum(&mut stored, shift, true);
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1.0),
                "{n}: {got} vs {want}"
            );
            for (s, &x) in stored.iter().zip(&a) {
                assert!((*s as f64 - ((x - shift) as f64).exp()).abs() <= 1e-6);
            }
            let mut untouched = a.clone();
            assert_eq!(exp_sum(&mut untouched, shift, false), got);
            assert_eq!(untouched, a);
        }
    }
}
