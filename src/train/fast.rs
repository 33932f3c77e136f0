//! A hand-written forward and backward pass of the llama-family stack, for
//! training on the CPU. candle's autograd allocates a tensor per op and a
//! zero-filled accumulator per node, which on the zoo's small models cost as
//! much time as the matmuls; here every buffer is written once, matmuls go
//! straight to `gemm`, and attention, norms, rope and the loss are plain
//! loops. `tests/train.rs` checks the loss and every gradient against candle's
//! autograd through [`crate::model::Transformer::forward_train`].

use super::objective::NEG;

/// The shape of the stack.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub inter: usize,
    pub vocab: usize,
    pub layers: usize,
    pub eps: f32,
    pub tied: bool,
    pub qkv_bias: bool,
}

impl Dims {
    pub fn of(cfg: &crate::model::ModelConfig) -> Self {
        Self {
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            inter: cfg.intermediate_size,
            vocab: cfg.vocab_size,
            layers: cfg.num_hidden_layers,
            eps: cfg.rms_norm_eps as f32,
            tied: cfg.tie_word_embeddings,
            qkv_bias: cfg.qkv_bias,
        }
    }

    /// HF names of the parameters, in [`Params`] order. Bias slots are
    /// present (and empty) without qkv biases, as is the LM head when tied.
    pub fn names(&self) -> Vec<String> {
        let mut v = vec!["model.embed_tokens.weight".to_string()];
        for l in 0..self.layers {
            for n in LAYER_PARAMS {
                v.push(format!("model.layers.{l}.{n}"));
            }
        }
        v.push("model.norm.weight".into());
        v.push("lm_head.weight".into());
        v
    }

    fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

const LAYER_PARAMS: [&str; 12] = [
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "self_attn.q_proj.bias",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.bias",
];
const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
const GATE: usize = 4;
const UP: usize = 5;
const DOWN: usize = 6;
const NORM1: usize = 7;
const NORM2: usize = 8;
const BQ: usize = 9;
const BK: usize = 10;
const BV: usize = 11;

/// Parameters (or their gradients) as flat row-major buffers in
/// [`Dims::names`] order; absent ones are empty.
#[derive(Debug, Clone, Default)]
pub struct Params(pub Vec<Vec<f32>>);

impl Params {
    /// Zero buffers shaped like `like`.
    pub fn zeros_like(like: &Params) -> Self {
        Self(like.0.iter().map(|t| vec![0f32; t.len()]).collect())
    }

    fn layer(&self, l: usize, which: usize) -> &[f32] {
        &self.0[1 + l * LAYER_PARAMS.len() + which]
    }

    fn layer_mut(&mut self, l: usize, which: usize) -> &mut Vec<f32> {
        &mut self.0[1 + l * LAYER_PARAMS.len() + which]
    }

    fn final_norm(&self) -> &[f32] {
        let n = self.0.len();
        &self.0[n - 2]
    }

    /// The LM head: its own matrix, or the tied embedding.
    fn head_index(&self, d: &Dims) -> usize {
        if d.tied || self.0[self.0.len() - 1].is_empty() {
            0
        } else {
            self.0.len() - 1
        }
    }

    pub fn add_assign(&mut self, other: &Params) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }
}

/// A padded batch: `rows` sequences of `len` tokens.
pub struct Batch<'a> {
    pub rows: usize,
    pub len: usize,
    /// `rows × len` token ids.
    pub ids: &'a [u32],
    /// `rows × len × len` attention bias: 0 where a query sees a key,
    /// [`NEG`] where not.
    pub bias: &'a [f32],
    /// `rows × len × head_dim/2` rope tables at each token's position.
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    /// `rows × len` target ids and loss weights (0 for none).
    pub targets: &'a [u32],
    pub weights: &'a [f32],
}

/// `C[m×n] (+)= A[m×k]·B[k×n]`; each matrix is (data, row stride, column
/// stride).
#[allow(clippy::too_many_arguments)]
fn mm(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    (c_rs, c_cs): (usize, usize),
    accumulate: bool,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[i * c_rs + j * c_cs] = 0.0;
                }
            }
        }
        return;
    }
    // Bounds, so that the raw-pointer call below stays inside the slices.
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(
        last(c_rs, c_cs, m, n) < c.len(),
        "mm: destination too small"
    );
    assert!(
        last(a_rs, a_cs, m, k) < a.len(),
        "mm: left operand too small"
    );
    assert!(
        last(b_rs, b_cs, k, n) < b.len(),
        "mm: right operand too small"
    );
    // SAFETY: the asserts above keep every index in bounds; `c` does not
    // alias `a` or `b` (a mutable and shared borrow cannot overlap).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs as isize,
            c_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `Y[n×out] = X[n×in]·Wᵀ (+ b)`, W `[out×in]`.
fn linear(x: &[f32], w: &[f32], b: &[f32], n: usize, inp: usize, out: usize) -> Vec<f32> {
    let mut y = vec![0f32; n * out];
    mm(
        n,
        out,
        inp,
        &mut y,
        (out, 1),
        false,
        x,
        (inp, 1),
        w,
        (1, inp),
    );
    if !b.is_empty() {
        for row in y.chunks_exact_mut(out) {
            for (v, bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
    y
}

/// Backward of [`linear`]: returns dX, adds to dW (and db).
#[allow(clippy::too_many_arguments)]
fn linear_back(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    inp: usize,
    out: usize,
    dw: &mut [f32],
    db: Option<&mut Vec<f32>>,
    dx: &mut [f32],
    accumulate_dx: bool,
) {
    mm(
        n,
        inp,
        out,
        dx,
        (inp, 1),
        accumulate_dx,
        dy,
        (out, 1),
        w,
        (inp, 1),
    );
    mm(out, inp, n, dw, (inp, 1), true, dy, (1, out), x, (inp, 1));
    if let Some(db) = db {
        if !db.is_empty() {
            for row in dy.chunks_exact(out) {
                for (g, v) in db.iter_mut().zip(row) {
                    *g += v;
                }
            }
        }
    }
}

/// RMS norm of each `h`-row; returns the output and each row's 1/rms.
fn rms_norm(x: &[f32], g: &[f32], h: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let mut y = vec![0f32; x.len()];
    let mut inv = Vec::with_capacity(x.len() / h);
    for (xr, yr) in x.chunks_exact(h).zip(y.chunks_exact_mut(h)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / h as f32;
        let r = 1.0 / (ms + eps).sqrt();
        inv.push(r);
        for ((o, &v), &gv) in yr.iter_mut().zip(xr).zip(g) {
            *o = v * r * gv;
        }
    }
    (y, inv)
}

/// Backward of [`rms_norm`]: adds to `dx` and `dg`.
fn rms_norm_back(
    dy: &[f32],
    x: &[f32],
    g: &[f32],
    inv: &[f32],
    h: usize,
    dx: &mut [f32],
    dg: &mut [f32],
) {
    for (((dyr, xr), &r), dxr) in dy
        .chunks_exact(h)
        .zip(x.chunks_exact(h))
        .zip(inv)
        .zip(dx.chunks_exact_mut(h))
    {
        let mut dot = 0f32;
        for j in 0..h {
            dot += dyr[j] * g[j] * xr[j];
            dg[j] += dyr[j] * xr[j] * r;
        }
        let c = r * r * r * dot / h as f32;
        for j in 0..h {
            dxr[j] += r * dyr[j] * g[j] - xr[j] * c;
        }
    }
}

/// Rotate-half rope in place over `[n, heads, d]` rows; `sign` −1 undoes it
/// (the backward).
fn rope(x: &mut [f32], heads: usize, d: usize, cos: &[f32], sin: &[f32], sign: f32) {
    let half = d / 2;
    for (t, row) in x.chunks_exact_mut(heads * d).enumerate() {
        let (c, s) = (&cos[t * half..][..half], &sin[t * half..][..half]);
        for hd in row.chunks_exact_mut(d) {
            let (x1, x2) = hd.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                let si = sign * s[i];
                x1[i] = a * c[i] - b * si;
                x2[i] = b * c[i] + a * si;
            }
        }
    }
}

fn silu(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}

struct LayerCache {
    x: Vec<f32>,
    inv1: Vec<f32>,
    h1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention probabilities, `rows × heads × len × len`.
    p: Vec<f32>,
    y: Vec<f32>,
    x2: Vec<f32>,
    inv2: Vec<f32>,
    h2: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    a: Vec<f32>,
}

/// The weighted loss `Σ w·(−log p(target))` of a batch and its gradients.
pub fn loss_and_grads(d: &Dims, w: &Params, b: &Batch<'_>) -> (f64, Params) {
    let (rows, len) = (b.rows, b.len);
    let n = rows * len;
    let (h, hd) = (d.hidden, d.head_dim);
    let (qd, kvd) = (d.q_dim(), d.kv_dim());
    let group = d.heads / d.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let empty: &[f32] = &[];
    let bias_of = |l: usize, which: usize| if d.qkv_bias { w.layer(l, which) } else { empty };

    // Forward.
    let mut x = vec![0f32; n * h];
    for (row, &id) in x.chunks_exact_mut(h).zip(b.ids) {
        row.copy_from_slice(&w.0[0][id as usize * h..][..h]);
    }
    let mut caches = Vec::with_capacity(d.layers);
    for l in 0..d.layers {
        let (h1, inv1) = rms_norm(&x, w.layer(l, NORM1), h, d.eps);
        let mut q = linear(&h1, w.layer(l, Q), bias_of(l, BQ), n, h, qd);
        let mut k = linear(&h1, w.layer(l, K), bias_of(l, BK), n, h, kvd);
        let v = linear(&h1, w.layer(l, V), bias_of(l, BV), n, h, kvd);
        rope(&mut q, d.heads, hd, b.cos, b.sin, 1.0);
        rope(&mut k, d.kv_heads, hd, b.cos, b.sin, 1.0);
        let mut p = vec![0f32; rows * d.heads * len * len];
        let mut y = vec![0f32; n * qd];
        for r in 0..rows {
            let bias = &b.bias[r * len * len..][..len * len];
            for head in 0..d.heads {
                let kvh = head / group;
                let qo = r * len * qd + head * hd;
                let ko = r * len * kvd + kvh * hd;
                let pm = &mut p[(r * d.heads + head) * len * len..][..len * len];
                // S = Q·Kᵀ, then a masked softmax per row.
                mm(
                    len,
                    len,
                    hd,
                    pm,
                    (len, 1),
                    false,
                    &q[qo..],
                    (qd, 1),
                    &k[ko..],
                    (1, kvd),
                );
                for (srow, brow) in pm.chunks_exact_mut(len).zip(bias.chunks_exact(len)) {
                    let mut max = f32::NEG_INFINITY;
                    for (s, &bv) in srow.iter_mut().zip(brow) {
                        *s = *s * scale + bv;
                        max = max.max(*s);
                    }
                    let mut sum = 0f32;
                    for (s, &bv) in srow.iter_mut().zip(brow) {
                        // Hidden keys contribute exactly nothing.
                        *s = if bv <= NEG { 0.0 } else { (*s - max).exp() };
                        sum += *s;
                    }
                    let inv = 1.0 / sum;
                    for s in srow.iter_mut() {
                        *s *= inv;
                    }
                }
                mm(
                    len,
                    hd,
                    len,
                    &mut y[qo..],
                    (qd, 1),
                    false,
                    pm,
                    (len, 1),
                    &v[ko..],
                    (kvd, 1),
                );
            }
        }
        let attn = linear(&y, w.layer(l, O), empty, n, qd, h);
        let x2: Vec<f32> = x.iter().zip(&attn).map(|(a, b)| a + b).collect();
        let (h2, inv2) = rms_norm(&x2, w.layer(l, NORM2), h, d.eps);
        let g = linear(&h2, w.layer(l, GATE), empty, n, h, d.inter);
        let u = linear(&h2, w.layer(l, UP), empty, n, h, d.inter);
        let a: Vec<f32> = g.iter().zip(&u).map(|(&g, &u)| silu(g) * u).collect();
        let mlp = linear(&a, w.layer(l, DOWN), empty, n, d.inter, h);
        let x3: Vec<f32> = x2.iter().zip(&mlp).map(|(a, b)| a + b).collect();
        caches.push(LayerCache {
            x: std::mem::replace(&mut x, x3),
            inv1,
            h1,
            q,
            k,
            v,
            p,
            y,
            x2,
            inv2,
            h2,
            g,
            u,
            a,
        });
    }
    let (hf, invf) = rms_norm(&x, w.final_norm(), h, d.eps);
    let head = w.head_index(d);
    let logits = linear(&hf, &w.0[head], empty, n, h, d.vocab);

    // Loss and its gradient by the logits.
    let mut loss = 0f64;
    let mut dlogits = vec![0f32; n * d.vocab];
    for (i, (lr, dr)) in logits
        .chunks_exact(d.vocab)
        .zip(dlogits.chunks_exact_mut(d.vocab))
        .enumerate()
    {
        let wt = b.weights[i];
        if wt == 0.0 {
            continue;
        }
        let max = lr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for (o, &v) in dr.iter_mut().zip(lr) {
            *o = (v - max).exp();
            sum += *o;
        }
        let t = b.targets[i] as usize;
        loss += wt as f64 * ((sum.ln() + max - lr[t]) as f64);
        for o in dr.iter_mut() {
            *o *= wt / sum;
        }
        dr[t] -= wt;
    }

    // Backward.
    let mut grads = Params::zeros_like(w);
    let mut dhf = vec![0f32; n * h];
    linear_back(
        &dlogits,
        &hf,
        &w.0[head],
        n,
        h,
        d.vocab,
        &mut grads.0[head],
        None,
        &mut dhf,
        false,
    );
    let mut dx = vec![0f32; n * h];
    {
        let last = grads.0.len() - 2;
        rms_norm_back(
            &dhf,
            &x,
            w.final_norm(),
            &invf,
            h,
            &mut dx,
            &mut grads.0[last],
        );
    }
    for l in (0..d.layers).rev() {
        let c = &caches[l];
        // MLP: x3 = x2 + down(silu(g)·u).
        let mut da = vec![0f32; n * d.inter];
        linear_back(
            &dx,
            &c.a,
            w.layer(l, DOWN),
            n,
            d.inter,
            h,
            grads.layer_mut(l, DOWN),
            None,
            &mut da,
            false,
        );
        let mut dg = vec![0f32; n * d.inter];
        let mut du = vec![0f32; n * d.inter];
        for i in 0..da.len() {
            let g = c.g[i];
            let sg = 1.0 / (1.0 + (-g).exp());
            du[i] = da[i] * g * sg;
            dg[i] = da[i] * c.u[i] * sg * (1.0 + g * (1.0 - sg));
        }
        let mut dh2 = vec![0f32; n * h];
        linear_back(
            &dg,
            &c.h2,
            w.layer(l, GATE),
            n,
            h,
            d.inter,
            grads.layer_mut(l, GATE),
            None,
            &mut dh2,
            false,
        );
        linear_back(
            &du,
            &c.h2,
            w.layer(l, UP),
            n,
            h,
            d.inter,
            grads.layer_mut(l, UP),
            None,
            &mut dh2,
            true,
        );
        let mut dx2 = dx.clone();
        {
            let gn = grads.layer_mut(l, NORM2);
            rms_norm_back(&dh2, &c.x2, w.layer(l, NORM2), &c.inv2, h, &mut dx2, gn);
        }
        // Attention: x2 = x + o(attention(q, k, v)).
        let mut dy = vec![0f32; n * qd];
        linear_back(
            &dx2,
            &c.y,
            w.layer(l, O),
            n,
            qd,
            h,
            grads.layer_mut(l, O),
            None,
            &mut dy,
            false,
        );
        let mut dq = vec![0f32; n * qd];
        let mut dk = vec![0f32; n * kvd];
        let mut dv = vec![0f32; n * kvd];
        let mut dp = vec![0f32; len * len];
        for r in 0..rows {
            for head in 0..d.heads {
                let kvh = head / group;
                let qo = r * len * qd + head * hd;
                let ko = r * len * kvd + kvh * hd;
                let pm = &c.p[(r * d.heads + head) * len * len..][..len * len];
                // dV += Pᵀ·dO; dP = dO·Vᵀ.
                mm(
                    len,
                    hd,
                    len,
                    &mut dv[ko..],
                    (kvd, 1),
                    true,
                    pm,
                    (1, len),
                    &dy[qo..],
                    (qd, 1),
                );
                mm(
                    len,
                    len,
                    hd,
                    &mut dp,
                    (len, 1),
                    false,
                    &dy[qo..],
                    (qd, 1),
                    &c.v[ko..],
                    (1, kvd),
                );
                // dS = P ⊙ (dP − Σ dP·P), scaled for the Q·Kᵀ product.
                for (dr, pr) in dp.chunks_exact_mut(len).zip(pm.chunks_exact(len)) {
                    let dot: f32 = dr.iter().zip(pr).map(|(a, b)| a * b).sum();
                    for (dv_, &pv) in dr.iter_mut().zip(pr) {
                        *dv_ = pv * (*dv_ - dot) * scale;
                    }
                }
                // dQ = dS·K; dK += dSᵀ·Q.
                mm(
                    len,
                    hd,
                    len,
                    &mut dq[qo..],
                    (qd, 1),
                    false,
                    &dp,
                    (len, 1),
                    &c.k[ko..],
                    (kvd, 1),
                );
                mm(
                    len,
                    hd,
                    len,
                    &mut dk[ko..],
                    (kvd, 1),
                    true,
                    &dp,
                    (1, len),
                    &c.q[qo..],
                    (qd, 1),
                );
            }
        }
        rope(&mut dq, d.heads, hd, b.cos, b.sin, -1.0);
        rope(&mut dk, d.kv_heads, hd, b.cos, b.sin, -1.0);
        let mut dh1 = vec![0f32; n * h];
        for (which, bias, dt, out) in [(Q, BQ, &dq, qd), (K, BK, &dk, kvd), (V, BV, &dv, kvd)] {
            let mut dw = std::mem::take(grads.layer_mut(l, which));
            let mut db = std::mem::take(grads.layer_mut(l, bias));
            linear_back(
                dt,
                &c.h1,
                w.layer(l, which),
                n,
                h,
                out,
                &mut dw,
                Some(&mut db),
                &mut dh1,
                which != Q,
            );
            *grads.layer_mut(l, which) = dw;
            *grads.layer_mut(l, bias) = db;
        }
        let mut dxl = dx2;
        rms_norm_back(
            &dh1,
            &c.x,
            w.layer(l, NORM1),
            &c.inv1,
            h,
            &mut dxl,
            grads.layer_mut(l, NORM1),
        );
        dx = dxl;
    }
    for (row, &id) in dx.chunks_exact(h).zip(b.ids) {
        for (g, v) in grads.0[0][id as usize * h..][..h].iter_mut().zip(row) {
            *g += v;
        }
    }
    (loss, grads)
}
