//! AdamW with decoupled weight decay, whose moments can be saved and
//! restored, so that an interrupted training resumes on the same path.
//! (candle-nn's AdamW keeps its moments private.)

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};

use super::NamedGrads;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

pub struct AdamW {
    /// (name, var, first moment, second moment), sorted by name.
    vars: Vec<(String, Var, Var, Var)>,
    pub params: AdamWParams,
    /// Updates taken so far (for bias correction).
    pub t: u64,
}

impl AdamW {
    /// Decay applies to matrices only, not to norms' gains.
    pub fn new(named: Vec<(String, Var)>, params: AdamWParams) -> candle_core::Result<Self> {
        let mut vars = Vec::with_capacity(named.len());
        for (name, v) in named {
            let m = Var::zeros(v.shape(), DType::F32, v.device())?;
            let s = Var::zeros(v.shape(), DType::F32, v.device())?;
            vars.push((name, v, m, s));
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { vars, params, t: 0 })
    }

    /// The global L2 norm of the gradients.
    pub fn grad_norm(&self, grads: &NamedGrads) -> candle_core::Result<f64> {
        let mut sq = 0f64;
        for (name, _, _, _) in &self.vars {
            if let Some(g) = grads.get(name) {
                sq += match cpu_f32(g, |x| x.iter().map(|&a| (a as f64) * (a as f64)).sum())? {
                    Some(s) => s,
                    None => g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64,
                };
            }
        }
        Ok(sq.sqrt())
    }

    /// One update at learning rate `lr`, gradients scaled by `grad_scale`
    /// (clipping).
    pub fn step(
        &mut self,
        grads: &NamedGrads,
        lr: f64,
        grad_scale: f64,
    ) -> candle_core::Result<()> {
        self.update(grads, lr, grad_scale, true)
    }

    fn update(
        &mut self,
        grads: &NamedGrads,
        lr: f64,
        grad_scale: f64,
        fused: bool,
    ) -> candle_core::Result<()> {
        self.t += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.t as i32);
        let bc2 = 1.0 - p.beta2.powi(self.t as i32);
        for (name, v, m, s) in &self.vars {
            let Some(g) = grads.get(name) else {
                continue;
            };
            let decay = if v.rank() >= 2 { p.weight_decay } else { 0.0 };
            if fused && fused_step(v, m, s, g, &p, [lr, grad_scale, bc1, bc2, decay])? {
                continue;
            }
            let g = (g * grad_scale)?;
            let m_new = ((m.as_tensor() * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            let s_new = ((s.as_tensor() * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let update = ((&m_new / bc1)? / ((&s_new / bc2)?.sqrt()? + p.eps)?)?;
            let w = v.as_tensor();
            let next = ((w * (1.0 - lr * decay))? - (update * lr)?)?;
            v.set(&next)?;
            m.set(&m_new)?;
            s.set(&s_new)?;
        }
        Ok(())
    }

    /// Moments by `m.NAME` / `v.NAME`, for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (name, _, m, s) in &self.vars {
            out.insert(format!("m.{name}"), m.as_tensor().clone());
            out.insert(format!("v.{name}"), s.as_tensor().clone());
        }
        out
    }

    pub fn load_state(
        &mut self,
        state: &HashMap<String, Tensor>,
        t: u64,
    ) -> candle_core::Result<()> {
        for (name, _, m, s) in &self.vars {
            let get = |k: String| {
                state
                    .get(&k)
                    .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {k}")))
            };
            m.set(get(format!("m.{name}"))?)?;
            s.set(get(format!("v.{name}"))?)?;
        }
        self.t = t;
        Ok(())
    }
}

/// Runs `f` on a contiguous f32 CPU tensor's data; `None` elsewhere.
fn cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<Option<R>> {
    let (storage, layout) = t.storage_and_layout();
    let (candle_core::Storage::Cpu(cpu), Some((a, b))) = (&*storage, layout.contiguous_offsets())
    else {
        return Ok(None);
    };
    if t.dtype() != DType::F32 {
        return Ok(None);
    }
    Ok(Some(f(&cpu.as_slice::<f32>()?[a..b])))
}

/// The update of one variable in place, one pass per buffer, where all
/// are contiguous f32 CPU tensors (returns false elsewhere): the composed
/// update costs a dozen tensor allocations per variable, on the one thread
/// that the workers wait for.
fn fused_step(
    w: &Var,
    m: &Var,
    s: &Var,
    g: &Tensor,
    p: &AdamWParams,
    [lr, scale, bc1, bc2, decay]: [f64; 5],
) -> candle_core::Result<bool> {
    let fits = [w.as_tensor(), m.as_tensor(), s.as_tensor(), g]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous());
    if !fits {
        return Ok(false);
    }
    let (b1, b2, scale) = (p.beta1 as f32, p.beta2 as f32, scale as f32);
    m.as_tensor().inplace_op2(
        g,
        &Fused(
            "pdbench-adamw-m",
            move |m: &mut [f32], g: &[f32], _: &[f32]| {
                for (m, &g) in m.iter_mut().zip(g) {
                    *m = b1 * *m + (1.0 - b1) * g * scale;
                }
            },
        ),
    )?;
    s.as_tensor().inplace_op2(
        g,
        &Fused(
            "pdbench-adamw-v",
            move |s: &mut [f32], g: &[f32], _: &[f32]| {
                for (s, &g) in s.iter_mut().zip(g) {
                    let g = g * scale;
                    *s = b2 * *s + (1.0 - b2) * g * g;
                }
            },
        ),
    )?;
    let (lr, bc1, bc2, eps) = (lr as f32, bc1 as f32, bc2 as f32, p.eps as f32);
    let keep = 1.0 - lr * decay as f32;
    w.as_tensor().inplace_op3(
        m.as_tensor(),
        s.as_tensor(),
        &Fused(
            "pdbench-adamw-w",
            move |w: &mut [f32], m: &[f32], s: &[f32]| {
                for ((w, &m), &s) in w.iter_mut().zip(m).zip(s) {
                    *w = *w * keep - lr * (m / bc1) / ((s / bc2).sqrt() + eps);
                }
            },
        ),
    )?;
    Ok(true)
}

/// An in-place elementwise CPU op over contiguous f32 buffers: the first
/// is written, the others read (the third is empty for two-buffer ops).
struct Fused<F>(&'static str, F);

fn contiguous<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'a [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("adamw: expected a contiguous tensor".into()))?;
    Ok(&s.as_slice::<f32>()?[a..b])
}

fn written<'a>(
    s: &'a mut candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'a mut [f32]> {
    let candle_core::CpuStorage::F32(v) = s else {
        candle_core::bail!("adamw: expected an f32 tensor")
    };
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("adamw: expected a contiguous tensor".into()))?;
    Ok(&mut v[a..b])
}

impl<F: Fn(&mut [f32], &[f32], &[f32])> candle_core::InplaceOp2 for Fused<F> {
    fn name(&self) -> &'static str {
        self.0
    }

    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let b = contiguous(s2, l2)?;
        let a = written(s1, l1)?;
        if a.len() != b.len() {
            candle_core::bail!("{}: {} vs {} elements", self.0, a.len(), b.len())
        }
        (self.1)(a, b, &[]);
        Ok(())
    }
}

impl<F: Fn(&mut [f32], &[f32], &[f32])> candle_core::InplaceOp3 for Fused<F> {
    fn name(&self) -> &'static str {
        self.0
    }

    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let (b, c) = (contiguous(s2, l2)?, contiguous(s3, l3)?);
        let a = written(s1, l1)?;
        if a.len() != b.len() || a.len() != c.len() {
            candle_core::bail!(
                "{}: {}, {} and {} elements",
                self.0,
                a.len(),
                b.len(),
                c.len()
            )
        }
        (self.1)(a, b, c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The in-place update is the composed one.
    #[test]
    fn the_fused_update_matches_the_composed_one() {
        let mk = |seed: u64, shape: &[usize]| {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        let shapes: [(&str, &[usize]); 2] = [("w", &[3, 4]), ("g", &[4])];
        let run = |fused: bool| {
            let named: Vec<(String, Var)> = shapes
                .iter()
                .enumerate()
                .map(|(i, (n, s))| (n.to_string(), Var::from_tensor(&mk(i as u64, s)).unwrap()))
                .collect();
            let mut opt = AdamW::new(named.clone(), AdamWParams::default()).unwrap();
            for step in 0..5u64 {
                let grads: NamedGrads = shapes
                    .iter()
                    .enumerate()
                    .map(|(i, (n, s))| (n.to_string(), mk(100 + step * 10 + i as u64, s)))
                    .collect();
                opt.update(&grads, 0.01, 0.7, fused).unwrap();
            }
            named
                .iter()
                .map(|(_, v)| {
                    v.as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = (run(true), run(false));
        for (x, y) in a.iter().zip(&b) {
            for (p, q) in x.iter().zip(y) {
                assert!((p - q).abs() < 1e-6, "{x:?} vs {y:?}");
            }
        }
    }
}
