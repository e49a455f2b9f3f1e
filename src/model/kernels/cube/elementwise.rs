//! The gated activation (SwiGLU, GeGLU) forward and backward and the rotary embedding, one
//! kernel each: a cube per token
//! row, its units striding over the row (coalesced reads; rows, not flat indices, so a pitched
//! layout is read right). The composed versions launch 3-9 kernels and allocate every
//! intermediate.

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{launch_rows, output_like};

const UNITS: u32 = 256;

#[cube]
fn sigmoid(v: f32) -> f32 {
    1.0f32 / (1.0f32 + f32::exp(-v))
}

/// `tanh(u)` from one exponential (saturates to +-1: `exp` overflows to infinity).
#[cube]
fn tanh_exp(u: f32) -> f32 {
    1.0f32 - 2.0f32 / (f32::exp(2.0f32 * u) + 1.0f32)
}

/// `tanh(k (g + c g^3))` of GELU's tanh approximation (constants of `generic::GELU_TANH_*`).
#[cube]
fn gelu_tanh_t(g: f32) -> f32 {
    tanh_exp(0.797_884_6f32 * (g + 0.044_715f32 * g * g * g))
}

/// `act(gate) * up` per element, `act` SiLU or (`gelu`) GELU-tanh.
#[cube(launch)]
fn glu_kernel<F: Float>(
    gate: &Tensor<F>,
    up: &Tensor<F>,
    out: &mut Tensor<F>,
    rows: u32,
    #[comptime] gelu: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let r = row;
    let (gb, ub, ob) = (r * gate.stride(0), r * up.stride(0), r * out.stride(0));
    let mut j = UNIT_POS_X as usize;
    while j < gate.shape(1) {
        let g = f32::cast_from(gate[gb + j]);
        let mut a = g * sigmoid(g);
        if comptime![gelu] {
            a = 0.5f32 * g * (1.0f32 + gelu_tanh_t(g));
        }
        out[ob + j] = F::cast_from(a * f32::cast_from(up[ub + j]));
        j += CUBE_DIM_X as usize;
    }
}

#[cube(launch)]
fn glu_backward_kernel<F: Float>(
    gate: &Tensor<F>,
    up: &Tensor<F>,
    grad: &Tensor<F>,
    dgate: &mut Tensor<F>,
    dup: &mut Tensor<F>,
    rows: u32,
    #[comptime] gelu: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let r = row;
    let (gb, ub, db) = (r * gate.stride(0), r * up.stride(0), r * grad.stride(0));
    let (ogb, oub) = (r * dgate.stride(0), r * dup.stride(0));
    let mut j = UNIT_POS_X as usize;
    while j < gate.shape(1) {
        let g = f32::cast_from(gate[gb + j]);
        let d = f32::cast_from(grad[db + j]);
        let s = sigmoid(g);
        let mut a = g * s;
        // d/dg [g sigmoid(g)] = sigmoid(g) + g sigmoid(g) (1 - sigmoid(g)).
        let mut da = s + a * (1.0f32 - s);
        if comptime![gelu] {
            // d/dg = 0.5 (1 + t) + 0.5 g (1 - t^2) k (1 + 3 c g^2).
            let t = gelu_tanh_t(g);
            let half = 0.5f32 * (1.0f32 + t);
            a = g * half;
            da = half
                + 0.5f32 * g * (1.0f32 - t * t) * 0.797_884_6f32 * (1.0f32 + 0.134_145f32 * g * g);
        }
        dgate[ogb + j] = F::cast_from(d * f32::cast_from(up[ub + j]) * da);
        dup[oub + j] = F::cast_from(d * a);
        j += CUBE_DIM_X as usize;
    }
}

/// `x * cos + rotate_half(x) * sin` for `x: [b, s, heads, d]`, tables `[b, s, 1, d]` (with
/// `-sin` when `inverse`: the backward pass); a cube per token, its units over `heads * d`.
#[cube(launch)]
fn rope_kernel<F: Float>(
    x: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    out: &mut Tensor<F>,
    tokens: u32,
    #[comptime] inverse: bool,
    #[define(F)] _dtype: StorageType,
) {
    let token = CUBE_POS;
    if token >= tokens as usize {
        terminate!();
    }
    let seq = x.shape(1);
    let (b, s) = (token / seq, token % seq);
    let (heads, d) = (x.shape(2), x.shape(3));
    let half = d / 2;
    let xb = b * x.stride(0) + s * x.stride(1);
    let ob = b * out.stride(0) + s * out.stride(1);
    let cb = b * cos.stride(0) + s * cos.stride(1);
    let sb = b * sin.stride(0) + s * sin.stride(1);
    let mut e = UNIT_POS_X as usize;
    while e < heads * d {
        let (h, k) = (e / d, e % d);
        let xh = xb + h * x.stride(2);
        let v = x[xh + k * x.stride(3)];
        // rotate_half: the first half takes -x[k + d/2], the second x[k - d/2].
        let mut rotated = -x[xh + (k + half) * x.stride(3)];
        if k >= half {
            rotated = x[xh + (k - half) * x.stride(3)];
        }
        let c = cos[cb + k * cos.stride(3)];
        let mut sn = sin[sb + k * sin.stride(3)];
        if comptime![inverse] {
            sn = -sn;
        }
        out[ob + h * out.stride(2) + k * out.stride(3)] = v * c + rotated * sn;
        e += CUBE_DIM_X as usize;
    }
}

/// `act(gate) * up`: SiLU, or GELU-tanh with `gelu`.
pub fn glu<R: CubeRuntime>(gate: CubeTensor<R>, up: CubeTensor<R>, gelu: bool) -> CubeTensor<R> {
    let out = output_like(&gate);
    let rows = gate.meta.shape()[0];
    let (count, dim) = launch_rows(&gate.client, rows, UNITS);
    let dtype = gate.dtype;
    glu_kernel::launch::<R>(
        &gate.client,
        count,
        dim,
        gate.clone().into_tensor_arg(),
        up.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        rows as u32,
        gelu,
        dtype.into(),
    );
    out
}

/// Gradients of [`glu`] with respect to `gate` and `up`.
pub fn glu_backward<R: CubeRuntime>(
    gate: CubeTensor<R>,
    up: CubeTensor<R>,
    grad: CubeTensor<R>,
    gelu: bool,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (dgate, dup) = (output_like(&gate), output_like(&up));
    let rows = gate.meta.shape()[0];
    let (count, dim) = launch_rows(&gate.client, rows, UNITS);
    let dtype = gate.dtype;
    glu_backward_kernel::launch::<R>(
        &gate.client,
        count,
        dim,
        gate.clone().into_tensor_arg(),
        up.into_tensor_arg(),
        grad.into_tensor_arg(),
        dgate.clone().into_tensor_arg(),
        dup.clone().into_tensor_arg(),
        rows as u32,
        gelu,
        dtype.into(),
    );
    (dgate, dup)
}

/// Rotary embedding of `x: [b, s, heads, d]` with `cos`/`sin` `[b, s, 1, d]`, or its inverse
/// (the gradient of the embedding).
pub fn rope<R: CubeRuntime>(
    x: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    inverse: bool,
) -> CubeTensor<R> {
    let out = output_like(&x);
    let shape = x.meta.shape();
    let tokens = shape[0] * shape[1];
    let (count, dim) = launch_rows(&x.client, tokens, UNITS);
    let dtype = x.dtype;
    rope_kernel::launch::<R>(
        &x.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        cos.into_tensor_arg(),
        sin.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        tokens as u32,
        inverse,
        dtype.into(),
    );
    out
}
