//! LoRA dropout drawn on the device: `scale * mask * x` in f32, the mask from the same
//! counter-based hash as the host kernels ([`Dropout::apply_row`]), so CPU and GPU runs drop
//! the same elements. What goes up is one 64-bit position hash per token row, once per batch
//! (`resident.rs`): each projection's stream key is hashed in by the kernel. The composed
//! version draws the `[tokens, width]` mask on the host and uploads it for every projection's
//! forward, backward and recomputation.
//!
//! The hash is splitmix64's finaliser in 32-bit halves (WGSL and some GPUs have no 64-bit
//! integers).

use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::launch_rows;
use crate::model::kernels::dropout::Dropout;

const UNITS: u32 = 256;

/// The high 32 bits of the 64-bit product `a * b`, from 16-bit pieces.
#[cube]
fn mul_hi32(a: u32, b: u32) -> u32 {
    let (a0, a1, b0, b1) = (a & 0xFFFF, a >> 16, b & 0xFFFF, b >> 16);
    let (p00, p01, p10, p11) = (a0 * b0, a0 * b1, a1 * b0, a1 * b1);
    let mid = (p00 >> 16) + (p01 & 0xFFFF) + (p10 & 0xFFFF);
    p11 + (p01 >> 16) + (p10 >> 16) + (mid >> 16)
}

/// A 64-bit value as two 32-bit halves.
#[derive(CubeType, Clone, Copy)]
struct U64 {
    hi: u32,
    lo: u32,
}

/// `z * c` modulo 2^64, `c = (c_hi, c_lo)`.
#[cube]
fn mul64(z: U64, c_hi: u32, c_lo: u32) -> U64 {
    U64 {
        hi: mul_hi32(z.lo, c_lo) + z.lo * c_hi + z.hi * c_lo,
        lo: z.lo * c_lo,
    }
}

/// `z ^ (z >> k)` for `0 < k < 32`.
#[cube]
fn xor_shift(z: U64, #[comptime] k: u32) -> U64 {
    U64 {
        hi: z.hi ^ (z.hi >> k),
        lo: z.lo ^ ((z.lo >> k) | (z.hi << (32 - k))),
    }
}

/// `crate::rng::mix64` (splitmix64's finaliser).
#[cube]
fn mix64(z: U64) -> U64 {
    let lo = z.lo + 0x7F4A_7C15u32;
    let mut carry = 0u32.runtime();
    if lo < z.lo {
        carry = 1u32;
    }
    let z = U64 {
        hi: z.hi + 0x9E37_79B9u32 + carry,
        lo,
    };
    let z = mul64(xor_shift(z, 30u32), 0xBF58_476Du32, 0x1CE4_E5B9u32);
    let z = mul64(xor_shift(z, 27u32), 0x94D0_49BBu32, 0x1331_11EBu32);
    xor_shift(z, 31u32)
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn dropout_kernel<F: Float, I: Int>(
    x: &Tensor<F>,
    positions: &Tensor<I>,
    out: &mut Tensor<f32>,
    key_hi: u32,
    key_lo: u32,
    threshold: u32,
    scale: f32,
    rows: u32,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let width = x.shape(1);
    let (xb, ob) = (row * x.stride(0), row * out.stride(0));
    // Dropout::row_key: mix64(stream key ^ position hash).
    let at = row * positions.stride(0);
    let key = mix64(U64 {
        hi: key_hi ^ u32::cast_from(positions[at]),
        lo: key_lo ^ u32::cast_from(positions[at + positions.stride(1)]),
    });
    // Two elements per hash: element 2j draws the low half's top 24 bits, 2j + 1 the high's.
    let mut pair = UNIT_POS_X as usize;
    while pair * 2 < width {
        let h = mix64(U64 {
            hi: key.hi,
            lo: key.lo ^ (pair as u32),
        });
        let j = pair * 2;
        let mut v = 0.0f32.runtime();
        if (h.lo >> 8) >= threshold {
            v = f32::cast_from(x[xb + j]) * scale;
        }
        out[ob + j] = v;
        if j + 1 < width {
            let mut w = 0.0f32.runtime();
            if (h.hi >> 8) >= threshold {
                w = f32::cast_from(x[xb + j + 1]) * scale;
            }
            out[ob + j + 1] = w;
        }
        pair += CUBE_DIM_X as usize;
    }
}

/// `scale * mask * x` (f32) for `x: [n, width]` under `dropout`; `positions: [n, 2]` holds
/// each row's [`Dropout::position_hash`] as (high, low) 32-bit halves.
pub fn dropped<R: CubeRuntime>(
    x: CubeTensor<R>,
    positions: CubeTensor<R>,
    dropout: &Dropout,
) -> CubeTensor<R> {
    let shape = x.meta.shape().clone();
    let rows = shape[0];
    let out = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), shape, DType::F32);
    let (count, dim) = launch_rows(&x.client, rows, UNITS);
    let dtypes = [x.dtype.into(), positions.dtype.into()];
    let client = x.client.clone();
    dropout_kernel::launch::<R>(
        &client,
        count,
        dim,
        x.into_tensor_arg(),
        positions.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        (dropout.key >> 32) as u32,
        dropout.key as u32,
        dropout.threshold(),
        dropout.scale(),
        rows as u32,
        dtypes,
    );
    out
}
