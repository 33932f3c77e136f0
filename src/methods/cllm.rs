//! `cllm`: Jacobi decoding (the `jacobi` method's decoder) on a
//! consistency-trained model (CLLM, Kou et al. 2024), given with `--cllm`.
//! The CLLM replaces the target: its greedy output equals its own AR
//! output, not necessarily the target's, and the report scores it like
//! any output. Real CLLM checkpoints (`cllm/consistency-llm-7b-*`) are
//! ordinary llama models and load as such.

use serde::{Deserialize, Serialize};

use super::jacobi::Jacobi;
use super::{Decoder, Exactness, MethodError, MethodModels, MethodSpec, Need};

pub const SPEC: MethodSpec = MethodSpec {
    id: "cllm",
    description: "Jacobi decoding on a consistency-trained model (--cllm MODEL): windows of `window` guesses refined by parallel forwards, the converged prefix kept each iteration (greedy only; equals the CLLM's own greedy AR output)",
    needs: &[Need::ConsistencyModel],
    exactness: Exactness::Lossy,
    resolve_params: super::resolve_with::<CllmParams>,
    build,
    positions_ahead: |p| super::count(p, "window"),
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CllmParams {
    /// Tokens per Jacobi window (n), as the CLLM was trained with.
    #[serde(default = "default_window")]
    pub window: usize,
}

fn default_window() -> usize {
    16
}

fn build(
    params: &serde_json::Value,
    models: &MethodModels<'_>,
) -> Result<Box<dyn Decoder>, MethodError> {
    let p: CllmParams = super::params_of("cllm", params)?;
    if p.window == 0 {
        return Err(MethodError::Params {
            method: "cllm".into(),
            detail: "window: expected at least 1, got 0".into(),
        });
    }
    let model = models.consistency.ok_or_else(|| MethodError::Missing {
        method: "cllm".into(),
        need: "a consistency-trained model".into(),
        hint: "pass --cllm MODEL (such as toy-cllm, or a CLLM checkpoint)".into(),
    })?;
    Ok(Box::new(Jacobi::new(model.model.clone(), p.window)?))
}
