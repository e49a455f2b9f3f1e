//! The vocabulary softmax of one chunk of logits in one kernel: per row (a cube), the max,
//! the log-sum-exp, the target's negative log-probability and, when asked, the gradient
//! `softmax - onehot(target)` written straight in the model dtype. The composed version runs
//! log-softmax, gather, exp, scatter and casts as separate kernels over the `[chunk, vocab]`
//! tensor.

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::attention::{cap_score, cap_slope};
use super::launch_rows;
use super::rows::cube_sum;

const UNITS: u32 = 256;

/// The max over the cube of each unit's `vals[UNIT_POS]` (a power of two units).
#[cube]
fn cube_max(vals: &mut SharedMemory<f32>) -> f32 {
    sync_cube();
    let mut active = CUBE_DIM_X;
    while active > 1 {
        active /= 2;
        if UNIT_POS_X < active {
            let other = vals[(UNIT_POS_X + active) as usize];
            vals[UNIT_POS_X as usize] = f32::max(vals[UNIT_POS_X as usize], other);
        }
        sync_cube();
    }
    let top = vals[0];
    sync_cube();
    top
}

#[cube(launch)]
fn softmax_ce_kernel<F: Float, G: Float, I: Int>(
    logits: &Tensor<F>,
    targets: &Tensor<I>,
    losses: &mut Tensor<f32>,
    grad: &mut Tensor<G>,
    rows: u32,
    cap: f32,
    #[comptime] with_grad: bool,
    #[comptime] capped: bool,
    #[define(F, G, I)] _dtypes: [StorageType; 3],
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let r = row;
    let vocab = logits.shape(1);
    let lb = r * logits.stride(0);
    let step = CUBE_DIM_X as usize;
    let mut scratch = SharedMemory::<f32>::new(UNITS as usize);

    // Below any logit, finite (WGSL has no infinity literal).
    let mut top = f32::new(-3.0e38);
    let mut j = UNIT_POS_X as usize;
    while j < vocab {
        top = f32::max(top, cap_score(f32::cast_from(logits[lb + j]), cap, capped));
        j += step;
    }
    scratch[UNIT_POS_X as usize] = top;
    let m = cube_max(&mut scratch);

    let mut sum = 0.0f32;
    let mut j = UNIT_POS_X as usize;
    while j < vocab {
        sum += f32::exp(cap_score(f32::cast_from(logits[lb + j]), cap, capped) - m);
        j += step;
    }
    scratch[UNIT_POS_X as usize] = sum;
    let lse = m + f32::ln(cube_sum(&mut scratch));

    let target = u32::cast_from(targets[r * targets.stride(0)]) as usize;
    if UNIT_POS_X == 0 {
        losses[r] = lse - cap_score(f32::cast_from(logits[lb + target]), cap, capped);
    }
    if comptime![with_grad] {
        let gb = r * grad.stride(0);
        let mut j = UNIT_POS_X as usize;
        while j < vocab {
            let z = cap_score(f32::cast_from(logits[lb + j]), cap, capped);
            let mut g = f32::exp(z - lse);
            if j == target {
                g -= 1.0f32;
            }
            grad[gb + j] = G::cast_from(g * cap_slope(z, cap, capped));
            j += step;
        }
    }
}

/// Per row of `logits: [rows, vocab]`, `-log softmax(row)[target]` (f32 `[rows]`) and, with
/// `grad_dtype`, `softmax(row) - onehot(target)` in that dtype. `targets: [rows]` (int). With
/// `softcap` the logits are capped first (`cap * tanh(u / cap)`) and the gradient, taken
/// with respect to the uncapped logits, carries the cap's slope.
pub fn softmax_cross_entropy<R: CubeRuntime>(
    logits: CubeTensor<R>,
    targets: CubeTensor<R>,
    grad_dtype: Option<DType>,
    softcap: Option<f32>,
) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
    let [rows, vocab] = logits.meta.shape().dims::<2>();
    let (client, device) = (logits.client.clone(), logits.device.clone());
    let losses = empty_device_contiguous_dtype(
        client.clone(),
        device.clone(),
        Shape::new([rows]),
        DType::F32,
    );
    // Without a gradient the kernel still takes a tensor argument: a one-element stand-in.
    let grad = match grad_dtype {
        Some(d) => {
            empty_device_contiguous_dtype(client.clone(), device, Shape::new([rows, vocab]), d)
        }
        None => {
            empty_device_contiguous_dtype(client.clone(), device, Shape::new([1, 1]), logits.dtype)
        }
    };
    let (count, dim) = launch_rows(&client, rows, UNITS);
    let dtypes = [logits.dtype.into(), grad.dtype.into(), targets.dtype.into()];
    softmax_ce_kernel::launch::<R>(
        &client,
        count,
        dim,
        logits.into_tensor_arg(),
        targets.into_tensor_arg(),
        losses.clone().into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        rows as u32,
        softcap.unwrap_or(1.0),
        grad_dtype.is_some(),
        softcap.is_some(),
        dtypes,
    );
    (losses, grad_dtype.map(|_| grad))
}
