//! `jacobi`: Jacobi fixed-point decoding (Santilli et al. 2023; the decoder
//! of CLLM, Kou et al. 2024).
//!
//! A window of `window` guesses, initialised with tokens drawn from the
//! prompt and the output, is refined by causal forwards: each iteration
//! feeds the last confirmed token and the guesses, keeps the prefix of
//! guesses that equals the model's own greedy next tokens (the converged
//! part) plus the model's token after it, truncates the cache of the rest,
//! and takes the model's predictions as the next guesses. A window ends
//! when all of its positions are confirmed. Greedy only: every kept token
//! is the model's argmax given the confirmed context, so the output is
//! greedy AR's by construction.

use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Decoder, Exactness, GenContext, MethodError, MethodModels, MethodSpec};
use crate::measure::{Flow, StepKind, StepObservation};
use crate::model::{KvCache, Transformer};
use crate::sampling::SamplingParams;

pub const SPEC: MethodSpec = MethodSpec {
    id: "jacobi",
    description: "Jacobi decoding: a window of guesses refined by parallel causal forwards until it reaches its fixed point (greedy only)",
    needs: &[],
    exactness: Exactness::Lossless,
    resolve_params: super::resolve_with::<JacobiParams>,
    build,
    positions_ahead: |p| super::count(p, "window"),
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JacobiParams {
    /// Tokens per Jacobi window (n).
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
    let p: JacobiParams = super::params_of("jacobi", params)?;
    if p.window == 0 {
        return Err(MethodError::Params {
            method: "jacobi".into(),
            detail: "window: expected at least 1, got 0".into(),
        });
    }
    Ok(Box::new(Jacobi::new(
        models.target.model.clone(),
        p.window,
    )?))
}

pub struct Jacobi {
    model: Arc<Transformer>,
    cache: KvCache,
    window: usize,
}

impl Jacobi {
    pub fn new(model: Arc<Transformer>, window: usize) -> Result<Self, MethodError> {
        Ok(Self {
            cache: model.new_cache(1024)?,
            model,
            window,
        })
    }
}

impl Decoder for Jacobi {
    fn generate(
        &mut self,
        prompt: &[u32],
        ctx: &mut GenContext<'_, '_>,
    ) -> Result<(), MethodError> {
        let greedy = SamplingParams::default();
        let (first, mut flow) =
            super::chain::prefill(&self.model, &mut self.cache, prompt, &greedy, ctx)?;
        let mut seq = prompt.to_vec();
        seq.push(first);
        let mut window_index = 0u32;
        while flow == Flow::Continue {
            // A new window: `left` positions to confirm, guesses drawn from
            // the context.
            let mut left = self.window.min(ctx.probe.remaining());
            let mut guesses: Vec<u32> = (0..left.saturating_sub(1))
                .map(|_| seq[ctx.rng.random_range(0..seq.len())])
                .collect();
            while left > 0 && flow == Flow::Continue {
                let last = *seq.last().expect("non-empty");
                let v = super::chain::verify_chain(
                    &self.model,
                    &mut self.cache,
                    last,
                    &guesses,
                    None,
                    &greedy,
                    ctx.rng,
                )?;
                let accepted = v.verdict.accepted;
                let mut emitted = guesses[..accepted].to_vec();
                emitted.push(v.verdict.next);
                seq.extend_from_slice(&emitted);
                flow = ctx.probe.commit(StepObservation {
                    kind: StepKind::Decode,
                    proposed: guesses.len(),
                    draft_depth: None,
                    accepted,
                    tokens: &emitted,
                    target_calls: 1,
                    draft_calls: 0,
                    verify_width: guesses.len() + 1,
                    window: Some(window_index),
                    positions: &[],
                });
                left -= emitted.len();
                // The model's predictions past the kept prefix are the next
                // iteration's guesses.
                guesses = v.greedy_next[accepted + 1..].to_vec();
                guesses.truncate(left.saturating_sub(1));
            }
            window_index += 1;
        }
        Ok(())
    }
}
