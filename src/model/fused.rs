//! Fused CPU kernels, with hand-written backward passes, for the training
//! forward. candle composes softmax, RMS norm and rope from many small
//! broadcast ops, each of which allocates in the forward and again in the
//! backward; on small models those ops, not the matmuls, took most of a
//! training step. On other devices (or dtypes) each function falls back
//! to candle's composed ops, which compute the same function.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};

type Result<T> = candle_core::Result<T>;

fn fused(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The f32 data of a contiguous CPU storage.
fn data<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused op: expected a contiguous tensor".into()))?;
    Ok(&s.as_slice::<f32>()?[a..b])
}

/// `softmax(scores + bias)` over the last dimension; `scores` is
/// `[b, h, q, k]`, `bias` `[b or 1, 1, q, k]` and constant (no gradient).
pub fn masked_softmax(scores: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if !fused(scores) {
        return candle_nn::ops::softmax(&scores.broadcast_add(bias)?, D::Minus1);
    }
    scores
        .contiguous()?
        .apply_op2(&bias.contiguous()?, MaskedSoftmax)
}

struct MaskedSoftmax;

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "pdbench-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, bias) = (data(s1, l1)?, data(s2, l2)?);
        let (b, h, q, k) = l1.shape().dims4()?;
        let (bb, one, bq, bk) = l2.shape().dims4()?;
        if one != 1 || bq != q || bk != k || (bb != 1 && bb != b) {
            candle_core::bail!(
                "masked softmax: bias {:?} does not fit scores {:?}",
                l2.shape(),
                l1.shape()
            )
        }
        let mut out = vec![0f32; x.len()];
        for (r, (xr, or)) in x.chunks_exact(k).zip(out.chunks_exact_mut(k)).enumerate() {
            let batch = r / (h * q);
            let row = r % q;
            let br = &bias[((if bb == 1 { 0 } else { batch }) * q + row) * k..][..k];
            let mut max = f32::NEG_INFINITY;
            for (o, (&v, &bv)) in or.iter_mut().zip(xr.iter().zip(br)) {
                *o = v + bv;
                max = max.max(*o);
            }
            let mut sum = 0f32;
            for o in or.iter_mut() {
                *o = (*o - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            for o in or.iter_mut() {
                *o *= inv;
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?;
        Ok((Some(g), None))
    }
}

/// `y * (g - Σ g·y)` per row: the gradient of a softmax with output `y`.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "pdbench-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (data(s1, l1)?, data(s2, l2)?);
        let k = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; y.len()];
        for ((yr, gr), or) in y
            .chunks_exact(k)
            .zip(g.chunks_exact(k))
            .zip(out.chunks_exact_mut(k))
        {
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, &yv), &gv) in or.iter_mut().zip(yr).zip(gr) {
                *o = yv * (gv - dot);
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// RMS norm over the last dimension with gain `alpha`.
pub fn rms_norm(x: &Tensor, alpha: &Tensor, eps: f32) -> Result<Tensor> {
    if !fused(x) {
        return candle_nn::ops::rms_norm_slow(x, alpha, eps);
    }
    x.contiguous()?
        .apply_op2(&alpha.contiguous()?, RmsNorm { eps })
}

struct RmsNorm {
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "pdbench-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, a) = (data(s1, l1)?, data(s2, l2)?);
        let h = a.len();
        if l1.shape().dims().last() != Some(&h) {
            candle_core::bail!("rms norm: gain of {h} for {:?}", l1.shape())
        }
        let mut out = vec![0f32; x.len()];
        for (xr, or) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
            let r = inv_rms(xr, self.eps);
            for ((o, &v), &g) in or.iter_mut().zip(xr).zip(a) {
                *o = v * r * g;
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        alpha: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let h = alpha.elem_count();
        let both =
            x.apply_op3_no_bwd(alpha, &grad.contiguous()?, &RmsNormGrad { eps: self.eps })?;
        let rows = x.elem_count() / h;
        let gx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let ga = both.narrow(0, rows, 1)?.reshape(alpha.shape())?;
        Ok((Some(gx), Some(ga)))
    }
}

/// Gradients of RMS norm: `[rows + 1, h]`, the input's rows, then the
/// gain's. With `r = 1/rms(x)` and `ga = g·alpha`:
/// `dx = r·ga − x·r³·mean(ga·x)`, `dalpha = Σ_rows g·x·r`.
struct RmsNormGrad {
    eps: f32,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "pdbench-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, a, g) = (data(s1, l1)?, data(s2, l2)?, data(s3, l3)?);
        let h = a.len();
        let rows = x.len() / h;
        let mut out = vec![0f32; x.len() + h];
        let (gx, ga) = out.split_at_mut(x.len());
        for ((xr, gr), or) in x
            .chunks_exact(h)
            .zip(g.chunks_exact(h))
            .zip(gx.chunks_exact_mut(h))
        {
            let r = inv_rms(xr, self.eps);
            let mut dot = 0f32;
            for j in 0..h {
                dot += gr[j] * a[j] * xr[j];
                ga[j] += gr[j] * xr[j] * r;
            }
            let c = r * r * r * dot / h as f32;
            for j in 0..h {
                or[j] = r * gr[j] * a[j] - xr[j] * c;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 1, h))))
    }
}

/// Rotate-half rope of `x` `[b, h, t, d]` with `cos`/`sin` `[t, d/2]`
/// (one set of positions for every row) or `[b, t, d/2]` (per row).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !fused(x) {
        return composed_rope(x, cos, sin);
    }
    x.contiguous()?
        .apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope)
}

/// [`rope`] from candle's broadcast ops.
fn composed_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let t = x.dim(2)?;
    let rows = if cos.rank() == 3 { cos.dim(0)? } else { 1 };
    let (cos, sin) = (
        cos.reshape((rows, 1, t, half))?,
        sin.reshape((rows, 1, t, half))?,
    );
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(
        &[
            (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?,
            (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?,
        ],
        D::Minus1,
    )
}

struct Rope;

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "pdbench-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, cos, sin) = (data(s1, l1)?, data(s2, l2)?, data(s3, l3)?);
        let (b, h, t, d) = l1.shape().dims4()?;
        let half = d / 2;
        let per_row = l2.shape().rank() == 3;
        let want = if per_row { b * t * half } else { t * half };
        if cos.len() != want || sin.len() != want {
            candle_core::bail!("rope: cos/sin of {} for b={b}, t={t}, d={d}", cos.len())
        }
        let mut out = vec![0f32; x.len()];
        for (r, (xr, or)) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
            let p = if per_row { r / (h * t) * t } else { 0 } + r % t;
            let (c, s) = (&cos[p * half..][..half], &sin[p * half..][..half]);
            let (x1, x2) = xr.split_at(half);
            let (o1, o2) = or.split_at_mut(half);
            for i in 0..half {
                o1[i] = x1[i] * c[i] - x2[i] * s[i];
                o2[i] = x2[i] * c[i] + x1[i] * s[i];
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // A rotation's transpose is the rotation by the opposite angle.
        let g = grad
            .contiguous()?
            .apply_op3_no_bwd(cos, &sin.neg()?, &Rope)?;
        Ok((Some(g), None, None))
    }
}

/// Guards the fused ops against their composed references: values and
/// gradients.
#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < tol, "max difference {d}");
    }

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Value and gradient (against a random upstream gradient) of `f`
    /// fused and composed.
    fn check(
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Result<Tensor>,
        reference: impl Fn(&[Tensor]) -> Result<Tensor>,
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let a = fused(&ts).unwrap();
        let b = reference(&ts).unwrap();
        close(&a, &b, 1e-5);
        let up = randn(a.dims(), 99);
        let ga = (&a * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for t in &ts {
            match (ga.get(t), gb.get(t)) {
                (Some(x), Some(y)) => close(x, y, 1e-4),
                (None, None) => {}
                (x, y) => panic!("gradient present in one only: {x:?} vs {y:?}"),
            }
        }
    }

    #[test]
    fn masked_softmax_matches_candle() {
        let s = randn(&[2, 3, 5, 5], 1);
        let mut bias = vec![0f32; 2 * 25];
        for (i, b) in bias.iter_mut().enumerate() {
            if (i % 5) > (i / 5) % 5 {
                *b = -1e4;
            }
        }
        let bias = Tensor::from_vec(bias, (2, 1, 5, 5), &Device::Cpu).unwrap();
        check(
            &[s],
            |t| masked_softmax(&t[0], &bias),
            |t| candle_nn::ops::softmax(&t[0].broadcast_add(&bias)?, D::Minus1),
        );
    }

    #[test]
    fn rms_norm_matches_candle() {
        check(
            &[randn(&[2, 4, 8], 2), randn(&[8], 3)],
            |t| rms_norm(&t[0], &t[1], 1e-5),
            |t| candle_nn::ops::rms_norm_slow(&t[0], &t[1], 1e-5),
        );
    }

    #[test]
    fn rope_matches_the_composed_rope() {
        // One set of positions for all rows, and one per row.
        for (cs, seed) in [(vec![6, 4], 4), (vec![2, 6, 4], 7)] {
            let (cos, sin) = (randn(&cs, seed), randn(&cs, seed + 1));
            check(
                &[randn(&[2, 3, 6, 8], 6)],
                |t| rope(&t[0], &cos, &sin),
                |t| composed_rope(&t[0], &cos, &sin),
            );
        }
    }
}
