//! llama.cpp's k-quants q4_K and q6_K (256-value super-blocks), ported from the reference
//! implementations `quantize_row_q4_K_ref` / `quantize_row_q6_K_ref` and their helpers
//! `make_qkx2_quants` / `make_qx_quants` in ggml-quants.c: the path llama.cpp's quantizer takes
//! without an importance matrix. The arithmetic is f32 in the C evaluation order without fused
//! multiply-adds, so the bytes equal a build of that C code without FMA contraction.

use half::f16;

pub const QK_K: usize = 256;
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round half to even through the f32 adder (valid for |x| < 2^22).
#[inline]
fn nearest_int(f: f32) -> i32 {
    let val = f + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// Asymmetric `scale * L + min` fit of `x` with levels 0..=nmax, minimising the weighted squared
/// error over `nstep + 1` candidate scales. Returns (scale, -min).
/// (Fixed at q4_K's 32 values: array lengths known to the compiler remove every bounds check
/// from these hot loops.)
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32; 32],
    weights: &[f32; 32],
    l: &mut [u8; 32],
    laux: &mut [u8; 32],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let w = weights[i];
            let qf = q as f32;
            sum_l += w * qf;
            sum_l2 += w * qf * qf;
            sum_xl += w * qf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Symmetric fit of `x` with levels -nmax..nmax-1 (stored + nmax), weights `x^2` (rmse_type 1),
/// trying 19 scales around `nmax / max`. Returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32; 16], l: &mut [u8; 16]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (i, &v) in x.iter().enumerate() {
        let q = level(iscale, v);
        l[i] = (q + nmax) as u8;
        let w = v * v;
        let qf = q as f32;
        sumlx += w * v * qf;
        suml2 += w * qf * qf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    // The 18 other candidates do not depend on each other's outcome: their sums are computed
    // side by side (each in the reference's order), then compared in the reference's order.
    const CANDIDATES: usize = 18;
    let mut iscales = [0.0f32; CANDIDATES];
    for (k, v) in iscales.iter_mut().enumerate() {
        let is = if k < 9 { k as i32 - 9 } else { k as i32 - 8 };
        *v = -(nmax as f32 + 0.1 * is as f32) / max;
    }
    let (mut lx, mut l2) = ([0.0f32; CANDIDATES], [0.0f32; CANDIDATES]);
    for &v in x {
        let w = v * v;
        for k in 0..CANDIDATES {
            let qf = level(iscales[k], v) as f32;
            lx[k] += w * v * qf;
            l2[k] += w * qf * qf;
        }
    }
    let mut chosen = None;
    for k in 0..CANDIDATES {
        if l2[k] > 0.0 && lx[k] * lx[k] > best * l2[k] {
            chosen = Some(iscales[k]);
            scale = lx[k] / l2[k];
            best = scale * lx[k];
        }
    }
    if let Some(iscale) = chosen {
        for (i, &v) in x.iter().enumerate() {
            l[i] = (level(iscale, v) + nmax) as u8;
        }
    }
    scale
}

/// The 6-bit scale and min of sub-block `j` from q4_K's packed 12 bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// q4_K: 8 sub-blocks of 32 with their own 6-bit scale and min (relative to two f16 super-block
/// factors), 4-bit levels. Layout: `d`, `dmin` (f16), `scales[12]`, `qs[128]`.
pub fn q4_k_block(x: &[f32], out: &mut [u8]) {
    let mut levels = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0.0f32; 32];
    let mut mins = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for (j, xs) in x.as_chunks::<32>().0.iter().enumerate().take(QK_K / 32) {
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let mut sub = [0u8; 32];
        let (scale, min) = make_qkx2_quants(15, xs, &weights, &mut sub, &mut laux, -1.0, 0.1, 20);
        levels[32 * j..32 * j + 32].copy_from_slice(&sub);
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..QK_K / 32 {
        // `uint8_t ls = nearest_int(...)` wraps modulo 256 before the cap, as `as u8` does.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dd = d.to_f32() * sc as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for ii in 0..32 {
            levels[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dd).clamp(0, 15) as u8;
        }
    }
    out[0..2].copy_from_slice(&d.to_le_bytes());
    out[2..4].copy_from_slice(&dmin.to_le_bytes());
    out[4..16].copy_from_slice(&packed);
    let qs = &mut out[16..144];
    for (chunk, j) in (0..QK_K).step_by(64).enumerate() {
        for l in 0..32 {
            qs[chunk * 32 + l] = levels[j + l] | (levels[j + l + 32] << 4);
        }
    }
}

/// q6_K: 16 sub-blocks of 16 with signed 8-bit scales (relative to one f16 factor), 6-bit levels
/// split into low nibbles and high bit pairs. Layout: `ql[128]`, `qh[64]`, `scales[16]`, `d` (f16).
pub fn q6_k_block(x: &[f32], out: &mut [u8]) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for (ib, xs) in x.as_chunks::<16>().0.iter().enumerate().take(QK_K / 16) {
        let mut sub = [0u8; 16];
        let scale = make_qx_quants(32, xs, &mut sub);
        levels[16 * ib..16 * ib + 16].copy_from_slice(&sub);
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    let out = &mut out[..210];
    if max_abs_scale < GROUP_MAX_EPS {
        out.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    let mut sc = [0i8; QK_K / 16];
    for (s, &scale) in sc.iter_mut().zip(&scales) {
        *s = nearest_int(iscale * scale).min(127) as i8;
    }
    for j in 0..QK_K / 16 {
        let dd = d.to_f32() * sc[j] as f32;
        if dd == 0.0 {
            continue;
        }
        for ii in 0..16 {
            levels[16 * j + ii] = (nearest_int(x[16 * j + ii] / dd).clamp(-32, 31) + 32) as u8;
        }
    }
    let (ql, rest) = out.split_at_mut(QK_K / 2);
    let (qh, rest) = rest.split_at_mut(QK_K / 4);
    let (scales_out, d_out) = rest.split_at_mut(QK_K / 16);
    for (half_block, j) in (0..QK_K).step_by(128).enumerate() {
        let ql = &mut ql[half_block * 64..];
        let qh = &mut qh[half_block * 32..];
        for l in 0..32 {
            let q1 = levels[j + l] & 0xF;
            let q2 = levels[j + l + 32] & 0xF;
            let q3 = levels[j + l + 64] & 0xF;
            let q4 = levels[j + l + 96] & 0xF;
            ql[l] = q1 | (q3 << 4);
            ql[l + 32] = q2 | (q4 << 4);
            qh[l] = (levels[j + l] >> 4)
                | ((levels[j + l + 32] >> 4) << 2)
                | ((levels[j + l + 64] >> 4) << 4)
                | ((levels[j + l + 96] >> 4) << 6);
        }
    }
    for (o, s) in scales_out.iter_mut().zip(sc) {
        *o = s as u8;
    }
    d_out.copy_from_slice(&d.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(
            [0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, 7.6].map(nearest_int),
            [0, 2, 2, 0, -2, 2, 8]
        );
    }
}
