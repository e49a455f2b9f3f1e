//! ggml's 32-value block quantizers q8_0, q4_0 and q5_0, ported from the reference
//! implementations `quantize_row_q{8_0,4_0,5_0}_ref` in ggml-quants.c (what llama.cpp's
//! quantizer and `gguf.quants.quantize` produce, byte for byte). Every operation is in f32 in
//! the C order, so the rounding is the same.

use half::f16;

pub const QK: usize = 32;

/// Value and index of the largest magnitude (the first one on ties, as the C loops find it).
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// q8_0: one f16 scale `amax / 127`, then 32 signed bytes `round(x / d)` (ties away from zero).
pub fn q8_0_block(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for (o, &v) in out[2..34].iter_mut().zip(x) {
        // `roundf`: halfway cases away from zero, as f32::round does.
        *o = ((v * id).round() as i8) as u8;
    }
}

/// q4_0: scale `max / -8` from the signed largest value, 4-bit codes `x / d + 8`, truncated and
/// capped at 15; element j and j + 16 share a byte (low and high nibble).
pub fn q4_0_block(x: &[f32], out: &mut [u8]) {
    let (_, max) = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for j in 0..QK / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK / 2 + j] * id;
        // `(int8_t)(x + 8.5f)` truncates toward zero, as `as` does.
        let q0 = ((x0 + 8.5) as i8).min(15) as u8;
        let q1 = ((x1 + 8.5) as i8).min(15) as u8;
        out[2 + j] = q0 | (q1 << 4);
    }
}

/// q5_0: scale `max / -16`, 5-bit codes: low nibbles as in q4_0, the fifth bits in a 32-bit mask.
pub fn q5_0_block(x: &[f32], out: &mut [u8]) {
    let (_, max) = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK / 2 + j] * id;
        let q0 = ((x0 + 16.5) as i8).min(31) as u8;
        let q1 = ((x1 + 16.5) as i8).min(31) as u8;
        out[6 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
        qh |= u32::from((q0 & 0x10) >> 4) << j;
        qh |= u32::from((q1 & 0x10) >> 4) << (j + QK / 2);
    }
    out[2..6].copy_from_slice(&qh.to_le_bytes());
}
