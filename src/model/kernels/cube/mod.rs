//! burnish's CubeCL kernels, for every CubeCL runtime: CUDA in production, Burn's wgpu runtime
//! over Mesa's software Vulkan driver in the tests (`tests/gpu_kernels.rs`), so the code CUDA
//! runs is checked on machines without a GPU. Each kernel replaces a chain of composed ops
//! with one launch: RMSNorm, SwiGLU and RoPE (forward and backward), and the vocabulary
//! softmax of the chunked cross-entropy. Matmuls stay Burn's (tensor-core GEMMs on CUDA);
//! what is not overridden here is the composed op of [`super::generic`].
//!
//! Why Burn's fusion is off for `cuda`: these kernels already fuse the elementwise chains
//! fusion would, and a kernel of our own under fusion needs every input resolved out of the
//! fusion stream (a flush per call) or a registered custom operation per kernel; on the plain
//! `CubeBackend` the kernels run as they are, on CUDA and on wgpu alike.

mod attention;
mod dropout;
mod elementwise;
mod loss;
mod resident;
mod rows;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData, TensorPrimitive};
use burn_cubecl::cubecl::server::ComputeServer;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::generic::{
    self, LinearOps, as_f32, cast_to, lora_linear_backward_with, lora_linear_forward_with, total,
};
use super::{Activation, AttentionMask, Dropout, Kernels, LinearGrads, LogitChunks, LoraFactors};

/// `BURNISH_GPU_KERNELS=composed` runs Burn's composed ops (the generic kernels) instead of
/// these: to measure what the kernels buy (`scripts/gpu-check.sh` does, in one sitting), and
/// as a way around a kernel that misbehaves on some GPU.
fn composed() -> bool {
    static COMPOSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *COMPOSED.get_or_init(|| std::env::var("BURNISH_GPU_KERNELS").is_ok_and(|v| v == "composed"))
}

/// The widest head the attention kernels take: two `32 x d` f32 tiles must fit the 48 KiB of
/// shared memory a CUDA block gets without opting in. Wider heads use the composed version.
const MAX_HEAD_DIM: usize = 128;

/// A new contiguous tensor of `like`'s shape and dtype.
fn output_like<R: CubeRuntime>(like: &CubeTensor<R>) -> CubeTensor<R> {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        like.meta.shape().clone(),
        like.dtype,
    )
}

/// A cube of `units` units per row, for `rows` rows (the grid may hold a few more cubes:
/// kernels stop those at once).
fn launch_rows<R: Runtime>(
    client: &ComputeClient<R>,
    rows: usize,
    units: u32,
) -> (CubeCount, CubeDim) {
    let count = cubecl::calculate_cube_count_elemwise(
        client,
        rows * units as usize,
        CubeDim::new_1d(units),
    );
    (count, CubeDim::new_1d(units))
}

/// A CubeCL backend, whose float and int tensors are the kernels' `CubeTensor`s: the bounds
/// of `CubeBackend` written once for the helpers below.
trait Cube:
    Backend<
        FloatTensorPrimitive = CubeTensor<Self::Runtime>,
        IntTensorPrimitive = CubeTensor<Self::Runtime>,
    >
{
    type Runtime: CubeRuntime;
}

impl<R, F, I, BT> Cube for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    R::Server: ComputeServer,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    type Runtime = R;
}

type Pair<T> = (T, T);
/// Per-row losses and, when asked for, the gradient with respect to the hidden states.
type LossesAndGrad<B> = (Tensor<B, 1>, Option<Tensor<B, 2>>);

fn prim<B: Cube, const D: usize>(t: Tensor<B, D>) -> CubeTensor<B::Runtime> {
    into_contiguous(t.into_primitive().tensor())
}

fn int_prim<B: Cube>(t: Tensor<B, 1, Int>) -> CubeTensor<B::Runtime> {
    into_contiguous(t.into_primitive())
}

fn float<B: Cube, const D: usize>(t: CubeTensor<B::Runtime>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// The chunked cross-entropy with the fused softmax kernel: per chunk, the logits (Burn's
/// matmul), then one kernel for the losses and `softmax - onehot`, then `dlogits w`.
fn cross_entropy<B: Cube>(
    h: Tensor<B, 2>,
    w: Tensor<B, 2>,
    targets: &[i32],
    chunk: LogitChunks,
    with_grad: bool,
) -> LossesAndGrad<B> {
    let (n, device, dtype) = (targets.len(), h.device(), h.dtype());
    if n == 0 {
        let grad = with_grad.then(|| Tensor::zeros(h.dims(), (&device, dtype)));
        return (Tensor::zeros([0], &device), grad);
    }
    let all_targets =
        Tensor::<B, 1, Int>::from_data(TensorData::new(targets.to_vec(), [n]), &device);
    let (mut losses, mut grads) = (Vec::new(), Vec::new());
    let rows = chunk.rows.max(1);
    for start in (0..n).step_by(rows) {
        let len = rows.min(n - start);
        let logits = h
            .clone()
            .narrow(0, start, len)
            .matmul(w.clone().transpose());
        let t = int_prim(all_targets.clone().narrow(0, start, len));
        let (rows, g) =
            loss::softmax_cross_entropy(prim(logits), t, with_grad.then_some(dtype), chunk.softcap);
        losses.push(float::<B, 1>(rows));
        if let Some(g) = g {
            grads.push(float::<B, 2>(g).matmul(w.clone()));
        }
    }
    let grad = with_grad.then(|| Tensor::cat(grads, 0));
    (Tensor::cat(losses, 0), grad)
}

/// Each query's visible key range `[b, s, 2]` and each query block's union `[b, blocks, 2]`
/// (every key for a block holding a query that sees none), as int tensors for the attention
/// kernels; uploaded once per mask and device (`resident.rs`).
fn mask_tensors<B: Cube>(
    mask: &AttentionMask,
    device: &burn::tensor::Device<B>,
) -> Pair<CubeTensor<B::Runtime>> {
    resident::cached(mask, device, || upload_mask::<B>(mask, device))
}

fn upload_mask<B: Cube>(
    mask: &AttentionMask,
    device: &burn::tensor::Device<B>,
) -> Pair<CubeTensor<B::Runtime>> {
    let (b, s, t) = (mask.batch(), mask.queries(), mask.keys());
    let nqb = s.div_ceil(attention::BLOCK);
    let mut ranges = Vec::with_capacity(b * s * 2);
    let mut blocks = Vec::with_capacity(b * nqb * 2);
    for bi in 0..b {
        for i in 0..s {
            let r = mask.range(bi, i);
            ranges.extend([r.start as i32, r.end as i32]);
        }
        for qb in 0..nqb {
            let rows = qb * attention::BLOCK..(qb * attention::BLOCK + attention::BLOCK).min(s);
            let keys = if rows.clone().any(|i| mask.is_empty_row(bi, i)) {
                0..t
            } else {
                mask.block_keys(bi, rows).unwrap_or(0..0)
            };
            blocks.extend([keys.start as i32, keys.end as i32]);
        }
    }
    let int = |data: Vec<i32>, shape: [usize; 3]| {
        into_contiguous(
            Tensor::<B, 3, Int>::from_data(TensorData::new(data, shape), device).into_primitive(),
        )
    };
    (int(ranges, [b, s, 2]), int(blocks, [b, nqb, 2]))
}

/// The LoRA step's dropout on the device: the mask is drawn in the kernel from each token
/// row's position hash, uploaded once per batch layout and device (`resident.rs`).
fn dropped<B: Cube>(x: Tensor<B, 2>, dropout: Option<&Dropout>) -> Tensor<B, 2> {
    let Some(d) = dropout else {
        return as_f32(x);
    };
    let (n, device) = (x.dims()[0], x.device());
    let positions = resident::cached(&(d.layout(), n), &device, || {
        let hashes: Vec<i32> = (0..n)
            .flat_map(|r| {
                let h = d.position_hash(r);
                [(h >> 32) as u32 as i32, h as u32 as i32]
            })
            .collect();
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(hashes, [n, 2]), &device);
        into_contiguous(t.into_primitive())
    });
    float(dropout::dropped(prim(x), positions, d))
}

/// The LoRA step's matmuls take a quantized weight as it is: Burn's CubeCL matmul reads the
/// quantized blocks itself, so no dense copy of the weight is made.
fn linear_ops<B: Cube>() -> LinearOps<B> {
    LinearOps {
        weight: |w, _| w,
        dropped: dropped::<B>,
    }
}

impl<R, F, I, BT> Kernels for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    R::Server: ComputeServer,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn cross_entropy_sum(
        h: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        targets: &[i32],
        chunk: LogitChunks,
    ) -> Tensor<Self, 1> {
        total(Self::cross_entropy_rows(h, w, targets, chunk))
    }

    fn cross_entropy_sum_and_grad(
        h: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        targets: &[i32],
        chunk: LogitChunks,
    ) -> (Tensor<Self, 1>, Tensor<Self, 2>) {
        let (rows, grad) = Self::cross_entropy_rows_and_grad(h, w, targets, chunk);
        (total(rows), grad)
    }

    fn cross_entropy_rows(
        h: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        targets: &[i32],
        chunk: LogitChunks,
    ) -> Tensor<Self, 1> {
        if composed() {
            return generic::cross_entropy_rows(h, w, targets, chunk);
        }
        cross_entropy(h, w, targets, chunk, false).0
    }

    fn cross_entropy_rows_and_grad(
        h: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        targets: &[i32],
        chunk: LogitChunks,
    ) -> (Tensor<Self, 1>, Tensor<Self, 2>) {
        if composed() {
            return generic::cross_entropy_rows_and_grad(h, w, targets, chunk);
        }
        let dims = h.dims();
        let (rows, grad) = cross_entropy(h, w, targets, chunk, true);
        let grad = grad.unwrap_or_else(|| Tensor::zeros(dims, &rows.device()));
        (rows, grad)
    }

    fn attention_forward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: &AttentionMask,
    ) -> (Tensor<Self, 4>, Tensor<Self, 3>) {
        if composed() || q.dims()[3] > MAX_HEAD_DIM {
            return generic::attention::forward(q, k, v, mask);
        }
        let dtype = q.dtype();
        let (k, v) = (cast_to(k, dtype), cast_to(v, dtype));
        let (ranges, blocks) = mask_tensors::<Self>(mask, &q.device());
        let (out, lse) =
            attention::forward(prim(q), prim(k), prim(v), ranges, blocks, mask.scores());
        (float(out), float(lse))
    }

    fn attention_backward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        out: Tensor<Self, 4>,
        lse: Tensor<Self, 3>,
        grad: Tensor<Self, 4>,
        mask: &AttentionMask,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>, Tensor<Self, 4>) {
        if composed() || q.dims()[3] > MAX_HEAD_DIM {
            return generic::attention::backward(q, k, v, out, lse, grad, mask);
        }
        let (q_dtype, k_dtype, v_dtype) = (q.dtype(), k.dtype(), v.dtype());
        let (k, v) = (cast_to(k, q_dtype), cast_to(v, q_dtype));
        let (out, grad) = (cast_to(out, q_dtype), cast_to(grad, q_dtype));
        let lse = cast_to(lse, burn::tensor::DType::F32);
        let (ranges, blocks) = mask_tensors::<Self>(mask, &q.device());
        let (dq, dk, dv) = attention::backward(
            prim(q),
            prim(k),
            prim(v),
            prim(out),
            prim(lse),
            prim(grad),
            ranges,
            blocks,
            mask.scores(),
        );
        (
            float(dq),
            cast_to(float(dk), k_dtype),
            cast_to(float(dv), v_dtype),
        )
    }

    fn lora_linear_forward(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        lora: Option<LoraFactors<Self>>,
        dropout: Option<&Dropout>,
    ) -> (Tensor<Self, 2>, Option<Tensor<Self, 2>>) {
        if composed() {
            return generic::lora_linear_forward(x, w, bias, lora, dropout);
        }
        lora_linear_forward_with(&linear_ops(), x, w, bias, lora, dropout)
    }

    fn lora_linear_backward(
        x: Tensor<Self, 2>,
        xa: Option<Tensor<Self, 2>>,
        w: Tensor<Self, 2>,
        lora: Option<LoraFactors<Self>>,
        dropout: Option<&Dropout>,
        grad: Tensor<Self, 2>,
        need_dx: bool,
    ) -> LinearGrads<Self> {
        if composed() {
            return generic::lora_linear_backward(x, xa, w, lora, dropout, grad, need_dx);
        }
        lora_linear_backward_with(&linear_ops(), x, xa, w, lora, dropout, grad, need_dx)
    }

    fn rms_norm(x: Tensor<Self, 2>, w: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        if composed() {
            return generic::rms_norm(x, w, eps);
        }
        let dtype = x.dtype();
        if w.dtype() == DType::F32 && dtype != DType::F32 {
            // Gemma's order: normalise and scale in f32, then cast (see `generic::rms_norm`).
            let y = float(rows::rms_norm(prim(cast_to(x, DType::F32)), prim(w), eps));
            return cast_to(y, dtype);
        }
        let w = cast_to(w, dtype);
        float(rows::rms_norm(prim(x), prim(w), eps))
    }

    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 1>,
        eps: f64,
        grad: Tensor<Self, 2>,
    ) -> Tensor<Self, 2> {
        if composed() {
            return generic::rms_norm_backward(x, w, eps, grad);
        }
        let dtype = x.dtype();
        let (w, grad) = (cast_to(w, dtype), cast_to(grad, dtype));
        float(rows::rms_norm_backward(prim(x), prim(w), eps, prim(grad)))
    }

    fn rope(x: Tensor<Self, 4>, cos: &Tensor<Self, 4>, sin: &Tensor<Self, 4>) -> Tensor<Self, 4> {
        if composed() {
            return generic::rope(x, cos, sin);
        }
        let dtype = x.dtype();
        let (cos, sin) = (cast_to(cos.clone(), dtype), cast_to(sin.clone(), dtype));
        float(elementwise::rope(prim(x), prim(cos), prim(sin), false))
    }

    fn rope_backward(
        grad: Tensor<Self, 4>,
        cos: &Tensor<Self, 4>,
        sin: &Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        if composed() {
            return generic::rope(grad, cos, &sin.clone().neg());
        }
        let dtype = grad.dtype();
        let (cos, sin) = (cast_to(cos.clone(), dtype), cast_to(sin.clone(), dtype));
        float(elementwise::rope(prim(grad), prim(cos), prim(sin), true))
    }

    fn glu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>, act: Activation) -> Tensor<Self, 2> {
        if composed() {
            return generic::glu(gate, up, act);
        }
        let up = cast_to(up, gate.dtype());
        let gelu = act == Activation::GeluTanh;
        float(elementwise::glu(prim(gate), prim(up), gelu))
    }

    fn glu_backward(
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
        act: Activation,
        grad: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        if composed() {
            return generic::glu_backward(gate, up, act, grad);
        }
        let dtype = gate.dtype();
        let (up, grad) = (cast_to(up, dtype), cast_to(grad, dtype));
        let gelu = act == Activation::GeluTanh;
        let (dg, du) = elementwise::glu_backward(prim(gate), prim(up), prim(grad), gelu);
        (float(dg), float(du))
    }
}
