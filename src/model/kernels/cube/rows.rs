//! RMSNorm forward and backward, one kernel each: a cube per row, its units striding over the
//! row and summing in f32 through shared memory, then writing the row in one more pass. The
//! composed version launches ~8 kernels and keeps f32 copies of the activations.

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{launch_rows, output_like};

/// Units per cube for row kernels: a power of two (the tree sum halves it).
const ROW_UNITS: u32 = 256;

/// The sum over the cube of each unit's `sums[UNIT_POS]` (every unit gets it). Needs a power
/// of two units; leaves `sums` overwritten.
#[cube]
pub(super) fn cube_sum(sums: &mut SharedMemory<f32>) -> f32 {
    sync_cube();
    let mut active = CUBE_DIM_X;
    while active > 1 {
        active /= 2;
        if UNIT_POS_X < active {
            let other = sums[(UNIT_POS_X + active) as usize];
            sums[UNIT_POS_X as usize] += other;
        }
        sync_cube();
    }
    let total = sums[0];
    // Nobody may overwrite `sums` before every unit has read the total.
    sync_cube();
    total
}

#[cube(launch)]
fn rms_norm_kernel<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    out: &mut Tensor<F>,
    rows: u32,
    eps: f32,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let dim = x.shape(1);
    let (xb, ob) = (row * x.stride(0), row * out.stride(0));
    let step = CUBE_DIM_X as usize;

    let mut sums = SharedMemory::<f32>::new(ROW_UNITS as usize);
    let mut acc = 0.0f32;
    let mut j = UNIT_POS_X as usize;
    while j < dim {
        let v = f32::cast_from(x[xb + j]);
        acc += v * v;
        j += step;
    }
    sums[UNIT_POS_X as usize] = acc;
    let total = cube_sum(&mut sums);
    let r = 1.0f32 / f32::sqrt(total / f32::cast_from(dim as u32) + eps);

    let mut j = UNIT_POS_X as usize;
    while j < dim {
        // As the composed op: the normalised row in the model dtype, then times the weight.
        let n = F::cast_from(f32::cast_from(x[xb + j]) * r);
        out[ob + j] = n * w[j];
        j += step;
    }
}

#[cube(launch)]
fn rms_norm_backward_kernel<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    grad: &Tensor<F>,
    dx: &mut Tensor<F>,
    rows: u32,
    eps: f32,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let dim = x.shape(1);
    let (xb, gb, ob) = (row * x.stride(0), row * grad.stride(0), row * dx.stride(0));
    let step = CUBE_DIM_X as usize;

    // One pass for both sums: sum x^2 (the norm) and sum g w x (the projection onto x).
    let mut squares = SharedMemory::<f32>::new(ROW_UNITS as usize);
    let mut dots = SharedMemory::<f32>::new(ROW_UNITS as usize);
    let mut sq = 0.0f32;
    let mut dot = 0.0f32;
    let mut j = UNIT_POS_X as usize;
    while j < dim {
        let v = f32::cast_from(x[xb + j]);
        sq += v * v;
        dot += f32::cast_from(grad[gb + j]) * f32::cast_from(w[j]) * v;
        j += step;
    }
    squares[UNIT_POS_X as usize] = sq;
    dots[UNIT_POS_X as usize] = dot;
    let inv_dim = 1.0f32 / f32::cast_from(dim as u32);
    let r = 1.0f32 / f32::sqrt(cube_sum(&mut squares) * inv_dim + eps);
    // mean(g w * x r) = r * sum(g w x) / dim
    let mean = r * cube_sum(&mut dots) * inv_dim;

    let mut j = UNIT_POS_X as usize;
    while j < dim {
        let n = f32::cast_from(x[xb + j]) * r;
        let gw = f32::cast_from(grad[gb + j]) * f32::cast_from(w[j]);
        dx[ob + j] = F::cast_from(r * (gw - n * mean));
        j += step;
    }
}

/// RMSNorm of the rows of `x: [rows, dim]` with weight `w: [dim]`.
pub fn rms_norm<R: CubeRuntime>(x: CubeTensor<R>, w: CubeTensor<R>, eps: f64) -> CubeTensor<R> {
    let out = output_like(&x);
    let rows = x.meta.shape()[0];
    let (cube_count, cube_dim) = launch_rows(&x.client, rows, ROW_UNITS);
    let dtype = x.dtype;
    rms_norm_kernel::launch::<R>(
        &x.client,
        cube_count,
        cube_dim,
        x.clone().into_tensor_arg(),
        w.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        rows as u32,
        eps as f32,
        dtype.into(),
    );
    out
}

/// Gradient of [`rms_norm`] with respect to `x`.
pub fn rms_norm_backward<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    eps: f64,
    grad: CubeTensor<R>,
) -> CubeTensor<R> {
    let dx = output_like(&x);
    let rows = x.meta.shape()[0];
    let (cube_count, cube_dim) = launch_rows(&x.client, rows, ROW_UNITS);
    let dtype = x.dtype;
    rms_norm_backward_kernel::launch::<R>(
        &x.client,
        cube_count,
        cube_dim,
        x.clone().into_tensor_arg(),
        w.into_tensor_arg(),
        grad.into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        rows as u32,
        eps as f32,
        dtype.into(),
    );
    dx
}
