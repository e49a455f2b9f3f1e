//! The one place the `gemm` crate is called: products on raw strided f32 buffers, written
//! into row-major outputs (new or accumulated), on all threads or inside a parallel task.

/// A raw pointer that parallel tasks may share when each writes a disjoint part of the buffer.
#[derive(Clone, Copy)]
pub(super) struct SharedMut(pub(super) *mut f32);
// SAFETY: used only where every task writes elements no other task touches (see callers).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// `dst (+)= scale * lhs rhs` on raw strided buffers (row-major `dst` with row stride
/// `dst_rs`), with the gemm crate's `par`allelism (`None` inside tasks that are already
/// parallel). The one place the crate is called.
///
/// # Safety
/// Every strided element of `lhs` and `rhs` must be readable and every element of `dst`
/// writable (and readable when `accumulate`), with no other access to `dst` meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_with(
    par: gemm::Parallelism,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    scale: f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// `scale * lhs rhs` as a new row-major `m x n` buffer, on all threads. The buffer is not
/// zeroed first: the GEMM writes every element without reading it (the bulk of a step's
/// outputs, ~1.2 GB per 0.5B step, would otherwise be memset and then overwritten).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_new(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    scale: f32,
) -> Vec<f32> {
    if k == 0 || m == 0 || n == 0 {
        return vec![0f32; m * n];
    }
    assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    let mut dst: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: the assertions keep every strided read inside `lhs`/`rhs`; `dst` has capacity
    // for m * n floats. With `read_dst = false` the gemm crate never reads the destination
    // (alpha is forced to zero and every element is stored, its k = 0 and gemv paths included),
    // so all m * n elements are initialised before `set_len`.
    unsafe {
        gemm_with(
            all_threads(),
            m,
            n,
            k,
            dst.as_mut_ptr(),
            n,
            false,
            lhs.as_ptr(),
            lhs_rs,
            lhs_cs,
            rhs.as_ptr(),
            rhs_rs,
            rhs_cs,
            scale,
        );
        dst.set_len(m * n);
    }
    dst
}

/// `dst (+)= scale * lhs rhs`, row-major `dst`, strided operands, on all threads.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_into(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    accumulate: bool,
    scale: f32,
) {
    assert!(dst.len() >= m * n);
    assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(k == 0 || n == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the assertions above keep every strided access inside the slices; `dst` is a
    // distinct, exclusively borrowed buffer.
    unsafe {
        gemm_with(
            all_threads(),
            m,
            n,
            k,
            dst.as_mut_ptr(),
            n,
            accumulate,
            lhs.as_ptr(),
            lhs_rs,
            lhs_cs,
            rhs.as_ptr(),
            rhs_rs,
            rhs_cs,
            scale,
        );
    }
}

fn all_threads() -> gemm::Parallelism {
    gemm::Parallelism::Rayon(rayon::current_num_threads())
}
