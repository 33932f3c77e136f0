//! Attention on the CPU with row-invariant arithmetic.
//!
//! Every (query row, head) pair is computed on its own, with exactly the
//! calls candle makes when it decodes one token: a 1-row gemm for the
//! scores, candle's scaling and softmax kernels, and a 1-row gemm for the
//! weighted values. A row's result therefore depends only on its query and
//! the keys it may see, never on how many rows share the forward or where a
//! chunk starts. That is what makes a lossless method's verification
//! forward produce the very logits AR decoding produces, token for token,
//! also on quantized models where 8-bit activation rounding would amplify
//! any difference; and it matches candle's reference models decoding one
//! token at a time bit for bit.

use candle_core::cpu::kernels::VecOps;

/// Which cache positions a query row may attend to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Keys {
    /// Positions `0..len`.
    Prefix(usize),
    /// These positions, in order.
    List(Vec<usize>),
}

/// Shapes and scale of one attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub n: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Rows allocated per head in the cache tensors.
    pub capacity: usize,
    pub scale: f64,
}

/// `q` is `[n_heads, n, d]` (the layout rope leaves); `k`, `v` are the cache layers
/// `[n_kv_heads, capacity, d]`. Returns `[n, n_heads * d]`.
pub(crate) fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: Dims,
    keys: &(dyn Fn(usize) -> Keys + Sync),
) -> Vec<f32> {
    let Dims {
        n,
        n_heads,
        n_kv_heads,
        head_dim: d,
        capacity,
        scale,
    } = dims;
    let rep = n_heads / n_kv_heads;
    let mut out = vec![0f32; n * n_heads * d];
    let out_ptr = out.as_mut_ptr() as usize;
    let work = |item: usize| {
        let (row, h) = (item / n_heads, item % n_heads);
        let g = h / rep;
        let q_row = &q[(h * n + row) * d..(h * n + row + 1) * d];
        let k_head = &k[g * capacity * d..(g + 1) * capacity * d];
        let v_head = &v[g * capacity * d..(g + 1) * capacity * d];
        // SAFETY: each (row, head) writes its own d outputs.
        let dst = unsafe {
            std::slice::from_raw_parts_mut((out_ptr as *mut f32).add((row * n_heads + h) * d), d)
        };
        match keys(row) {
            Keys::Prefix(len) => one_row(
                q_row,
                &k_head[..len * d],
                &v_head[..len * d],
                len,
                d,
                scale,
                dst,
            ),
            Keys::List(pos) => {
                let mut kg = Vec::with_capacity(pos.len() * d);
                let mut vg = Vec::with_capacity(pos.len() * d);
                for &p in &pos {
                    kg.extend_from_slice(&k_head[p * d..(p + 1) * d]);
                    vg.extend_from_slice(&v_head[p * d..(p + 1) * d]);
                }
                one_row(q_row, &kg, &vg, pos.len(), d, scale, dst)
            }
        }
    };
    let items = n * n_heads;
    if items >= 8 {
        super::pool::execute_chunked(items, |range| range.for_each(work));
    } else {
        (0..items).for_each(work);
    }
    out
}

/// One query against `len` contiguous keys and values, as candle computes
/// `softmax(q @ k^T * scale) @ v` for a single row.
fn one_row(q: &[f32], k: &[f32], v: &[f32], len: usize, d: usize, scale: f64, dst: &mut [f32]) {
    let mut scores = vec![0f32; len];
    // SAFETY: the pointers and strides describe the slices above.
    unsafe {
        gemm_f32(
            1,
            len,
            d,
            scores.as_mut_ptr(),
            len as isize,
            q.as_ptr(),
            d as isize,
            k.as_ptr(),
            d as isize,
            1,
            1f32,
        );
    }
    // candle's affine, then its softmax kernel.
    let mul = scale as f32;
    let add = 0f32;
    for s in scores.iter_mut() {
        *s = *s * mul + add;
    }
    let mut max = f32::NEG_INFINITY;
    // SAFETY: `scores` holds `len` values.
    unsafe { <f32 as VecOps>::vec_reduce_max(scores.as_ptr(), &mut max, len) };
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
    }
    let mut sum = 0f32;
    unsafe { <f32 as VecOps>::vec_reduce_sum(scores.as_ptr(), &mut sum, len) };
    for s in scores.iter_mut() {
        *s /= sum;
    }
    unsafe {
        gemm_f32(
            1,
            d,
            len,
            dst.as_mut_ptr(),
            d as isize,
            scores.as_ptr(),
            len as isize,
            v.as_ptr(),
            1,
            d as isize,
            1f32,
        );
    }
}

/// `dst` (`m × n`, row stride `dst_rs`) = `beta` · `lhs` (`m × k`, row
/// stride `lhs_rs`) · `rhs` (`k × n`, strides `rhs_cs` between columns and
/// `rhs_rs` between rows), single-threaded: the one gemm call every kernel
/// here makes.
///
/// # Safety
/// The pointers and strides must describe valid, non-overlapping memory.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    lhs: *const f32,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_cs: isize,
    rhs_rs: isize,
    beta: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs,
        false,
        lhs,
        1,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        0f32,
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// `x` `[m, k]` times `w^T` (`w` is `[n, k]`), one row at a time, with the
/// call candle makes for a single row. Row-invariant like [`attend`].
pub(crate) fn rowwise_matmul(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    let out_ptr = out.as_mut_ptr() as usize;
    let work = |row: usize| unsafe {
        gemm_f32(
            1,
            n,
            k,
            (out_ptr as *mut f32).add(row * n),
            n as isize,
            x.as_ptr().add(row * k),
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1f32,
        )
    };
    if m > 1 {
        super::pool::execute_chunked(m, |range| range.for_each(work));
    } else {
        (0..m).for_each(work);
    }
    out
}

/// `x` `[m, k]` times `w^T` (`w` is `[n, k]`) as one gemm per chunk of
/// rows on candle's barrier pool: fast, but a row's result may depend on
/// the chunk it falls in (a `Forward::batched` forward).
pub(crate) fn batched_matmul(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    let out_ptr = out.as_mut_ptr() as usize;
    let work = |rows: std::ops::Range<usize>| unsafe {
        // SAFETY: each chunk writes its own rows of `out`.
        gemm_f32(
            rows.len(),
            n,
            k,
            (out_ptr as *mut f32).add(rows.start * n),
            n as isize,
            x.as_ptr().add(rows.start * k),
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1f32,
        )
    };
    if m >= 16 {
        candle_core::utils::barrier_pool().execute_chunked(m, work);
    } else {
        work(0..m);
    }
    out
}

/// Attention for a chunk whose rows all see keys `0..len` (bidirectional
/// forwards), a head at a time: every row's scores in one gemm, a softmax
/// per row, the values in one gemm. Not row-invariant (see [`attend`]).
pub(crate) fn attend_uniform(q: &[f32], k: &[f32], v: &[f32], dims: Dims, len: usize) -> Vec<f32> {
    let Dims {
        n,
        n_heads,
        n_kv_heads,
        head_dim: d,
        capacity,
        scale,
    } = dims;
    let rep = n_heads / n_kv_heads;
    let mut out = vec![0f32; n * n_heads * d];
    let out_ptr = out.as_mut_ptr() as usize;
    let work = |h: usize| {
        let g = h / rep;
        let q_h = &q[h * n * d..(h + 1) * n * d];
        let k_g = &k[g * capacity * d..g * capacity * d + len * d];
        let v_g = &v[g * capacity * d..g * capacity * d + len * d];
        let mut scores = vec![0f32; n * len];
        // SAFETY: pointers and strides describe the slices above; each head
        // writes its own d columns of `out`.
        unsafe {
            gemm_f32(
                n,
                len,
                d,
                scores.as_mut_ptr(),
                len as isize,
                q_h.as_ptr(),
                d as isize,
                k_g.as_ptr(),
                d as isize,
                1,
                scale as f32,
            );
        }
        for row in scores.chunks_mut(len) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for s in row.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            row.iter_mut().for_each(|s| *s /= sum);
        }
        unsafe {
            gemm_f32(
                n,
                d,
                len,
                (out_ptr as *mut f32).add(h * d),
                (n_heads * d) as isize,
                scores.as_ptr(),
                len as isize,
                v_g.as_ptr(),
                1,
                d as isize,
                1f32,
            );
        }
    };
    if n_heads > 1 {
        super::pool::execute_chunked(n_heads, |range| range.for_each(work));
    } else {
        work(0);
    }
    out
}
