//! `ar`: vanilla autoregressive decoding, the baseline every speedup is
//! measured against.

use candle_core::IndexOp;
use serde::{Deserialize, Serialize};

use super::{Decoder, Exactness, GenContext, MethodError, MethodModels, MethodSpec};
use crate::measure::{Flow, StepKind, StepObservation};
use crate::model::{Forward, KvCache, Transformer};
use crate::sampling::SamplingParams;
use std::sync::Arc;

pub const SPEC: MethodSpec = MethodSpec {
    id: "ar",
    description: "Vanilla autoregressive decoding: one target forward per token (the baseline)",
    needs: &[],
    exactness: Exactness::Lossless,
    resolve_params: super::resolve_with::<ArParams>,
    build,
    positions_ahead: |_| Some(0),
};

/// Parameters of `ar`. The defaults are greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArParams {
    /// 0 = greedy.
    #[serde(default)]
    pub temperature: f64,
    /// 0 = off.
    #[serde(default)]
    pub top_k: usize,
    /// 1 = off.
    #[serde(default = "one")]
    pub top_p: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for ArParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

impl ArParams {
    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
        }
    }
}

fn build(
    params: &serde_json::Value,
    models: &MethodModels<'_>,
) -> Result<Box<dyn Decoder>, MethodError> {
    let p: ArParams = super::params_of("ar", params)?;
    let sampling = p.sampling();
    sampling.validate().map_err(|detail| MethodError::Params {
        method: "ar".into(),
        detail,
    })?;
    let model = models.target.model.clone();
    let cache = model.new_cache(1024)?;
    Ok(Box::new(Ar {
        model,
        cache,
        sampling,
    }))
}

pub struct Ar {
    model: Arc<Transformer>,
    cache: KvCache,
    sampling: SamplingParams,
}

impl Ar {
    fn pick(
        &self,
        logits: &candle_core::Tensor,
        ctx: &mut GenContext<'_, '_>,
    ) -> Result<u32, MethodError> {
        Ok(self.sampling.pick(&logits.i(0)?, ctx.rng)?)
    }
}

impl Decoder for Ar {
    fn generate(
        &mut self,
        prompt: &[u32],
        ctx: &mut GenContext<'_, '_>,
    ) -> Result<(), MethodError> {
        self.cache.clear();
        let out = self
            .model
            .forward(&mut self.cache, &Forward::causal(prompt, 0))?;
        let mut tok = self.pick(out.logits.as_ref().expect("last logits"), ctx)?;
        let mut kind = StepKind::Prefill;
        loop {
            let flow = ctx.probe.commit(StepObservation {
                kind,
                proposed: 0,
                draft_depth: None,
                accepted: 0,
                tokens: &[tok],
                target_calls: 1,
                draft_calls: 0,
                verify_width: 1,
                window: None,
                positions: &[],
            });
            if flow == Flow::Stop {
                return Ok(());
            }
            kind = StepKind::Decode;
            let pos = self.cache.len();
            let out = self
                .model
                .forward(&mut self.cache, &Forward::causal(&[tok], pos))?;
            tok = self.pick(out.logits.as_ref().expect("last logits"), ctx)?;
        }
    }
}
