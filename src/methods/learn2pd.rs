//! `learn2pd`: `dllm`'s top-k decoding plus Learn2PD (Bao et al. 2025): a
//! learned filter (`--filter DIR`) commits, besides the schedule's own
//! picks, every masked position of the block whose prediction it judges
//! final (sigmoid > the filter's threshold, 0.96), so it never takes more
//! steps than the schedule alone; and end-of-text prediction stops the
//! canvas at its EOS instead of decoding the fill after it.

use serde::{Deserialize, Serialize};

use super::dllm::{CacheMode, Confidence, Dllm, DllmParams, Hooks, Strategy};
use super::{Decoder, Exactness, GenContext, MethodError, MethodModels, MethodSpec, Need};
use crate::model::filter::Filter;

pub const SPEC: MethodSpec = MethodSpec {
    id: "learn2pd",
    description: "Learn2PD on a masked-diffusion LM (--dllm MODEL, --filter DIR): dllm's top-k schedule plus every position a learned filter judges final, and end-of-text prediction",
    needs: &[Need::DiffusionModel, Need::Filter],
    exactness: Exactness::Lossy,
    resolve_params: resolve,
    build,
    positions_ahead: |_| None,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Learn2pdParams {
    /// As `dllm`'s.
    #[serde(default)]
    pub gen_length: Option<usize>,
    /// Default: the filter's block length.
    #[serde(default)]
    pub block_length: Option<usize>,
    /// The schedule's ranking, as `dllm`'s `top-k`.
    #[serde(default)]
    pub confidence: Confidence,
    /// The schedule's positions per step (default 1).
    #[serde(default = "one")]
    pub tokens_per_step: usize,
    /// Default: the filter's own (0.96).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// End-of-text prediction.
    #[serde(default = "yes")]
    pub end_of_text: bool,
    #[serde(default)]
    pub cache: CacheMode,
    #[serde(default)]
    pub temperature: f64,
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}

fn resolve(v: &serde_json::Value) -> Result<serde_json::Value, String> {
    let p: Learn2pdParams = super::parse_params(v)?;
    p.dllm_params(32).check()?;
    if let Some(t) = p.threshold {
        if !(t > 0.0 && t < 1.0) {
            return Err(format!("threshold: expected a number in (0, 1), got {t}"));
        }
    }
    serde_json::to_value(&p).map_err(|e| e.to_string())
}

impl Learn2pdParams {
    fn dllm_params(&self, block_length: usize) -> DllmParams {
        DllmParams {
            gen_length: self.gen_length,
            block_length: Some(self.block_length.unwrap_or(block_length)),
            strategy: Strategy::TopK,
            confidence: self.confidence,
            tokens_per_step: Some(self.tokens_per_step),
            steps: None,
            threshold: 0.9,
            factor: 1.0,
            cache: self.cache,
            temperature: self.temperature,
        }
    }
}

fn build(
    params: &serde_json::Value,
    models: &MethodModels<'_>,
) -> Result<Box<dyn Decoder>, MethodError> {
    let p: Learn2pdParams = super::params_of("learn2pd", params)?;
    let m = models.dllm.ok_or_else(|| MethodError::Missing {
        method: "learn2pd".into(),
        need: "a masked-diffusion LM".into(),
        hint: "pass --dllm MODEL (such as toy-dllm)".into(),
    })?;
    let f = models.filter.ok_or_else(|| MethodError::Missing {
        method: "learn2pd".into(),
        need: "a Learn2PD filter".into(),
        hint: "pass --filter DIR (such as toy-learn2pd)".into(),
    })?;
    let mut filter = f.filter.clone();
    if let Some(t) = p.threshold {
        filter.config.threshold = t;
    }
    let fb = filter.config.block_length;
    if p.block_length.is_some_and(|b| b != fb) {
        return Err(MethodError::Params {
            method: "learn2pd".into(),
            detail: format!(
                "block_length: the filter {} reads blocks of {fb}; expected {fb} (or leave it unset), got {}",
                f.info.spec,
                p.block_length.unwrap_or(0)
            ),
        });
    }
    let dllm = Dllm::new(m, p.dllm_params(fb), "learn2pd")?;
    if dllm.block_length() != fb {
        return Err(MethodError::Params {
            method: "learn2pd".into(),
            detail: format!(
                "the filter {} reads blocks of {fb} but {} decodes blocks of {}",
                f.info.spec,
                m.info.spec,
                dllm.block_length()
            ),
        });
    }
    Ok(Box::new(Learn2pd {
        dllm,
        filter,
        end_of_text: p.end_of_text,
    }))
}

pub struct Learn2pd {
    dllm: Dllm,
    filter: Filter,
    end_of_text: bool,
}

impl Decoder for Learn2pd {
    fn generate(
        &mut self,
        prompt: &[u32],
        ctx: &mut GenContext<'_, '_>,
    ) -> Result<(), MethodError> {
        let filter = &self.filter;
        let accept = |conf: &[f32]| filter.accept(conf);
        let hooks = Hooks {
            filter: Some(&accept),
            end_of_text: self.end_of_text,
        };
        self.dllm.generate_with(prompt, ctx, &hooks)
    }
}
