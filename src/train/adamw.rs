//! AdamW with decoupled weight decay, whose moments can be saved and
//! restored, so that an interrupted training resumes on the same path.
//! (candle-nn's AdamW keeps its moments private.)

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Tensor, Var};

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
    pub fn grad_norm(&self, grads: &GradStore) -> candle_core::Result<f64> {
        let mut sq = 0f64;
        for (_, v, _, _) in &self.vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        Ok(sq.sqrt())
    }

    /// One update at learning rate `lr`, gradients scaled by `grad_scale`
    /// (clipping).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> candle_core::Result<()> {
        self.t += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.t as i32);
        let bc2 = 1.0 - p.beta2.powi(self.t as i32);
        for (_, v, m, s) in &self.vars {
            let Some(g) = grads.get(v.as_tensor()) else {
                continue;
            };
            let g = (g * grad_scale)?;
            let m_new = ((m.as_tensor() * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            let s_new = ((s.as_tensor() * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let update = ((&m_new / bc1)? / ((&s_new / bc2)?.sqrt()? + p.eps)?)?;
            let decay = if v.rank() >= 2 { p.weight_decay } else { 0.0 };
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
