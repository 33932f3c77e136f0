//! `sps`: speculative sampling with a separate small AR drafter.
//!
//! Each step the drafter proposes `draft_len` tokens one forward at a
//! time; the target scores the last emitted token and all drafts in one
//! forward. Greedy keeps the longest prefix that matches the target's
//! argmax plus the target's next token; sampling uses the Leviathan/Chen
//! rule, so outputs keep the target's distribution. Rejected positions are
//! dropped from both caches by truncation.

use std::sync::Arc;

use candle_core::{IndexOp, Tensor};
use serde::{Deserialize, Serialize};

use super::{Decoder, Exactness, GenContext, MethodError, MethodModels, MethodSpec, Need};
use crate::measure::{Flow, StepKind, StepObservation};
use crate::model::{Forward, KvCache, Transformer};
use crate::sampling::{sample_from, SamplingParams};

pub const SPEC: MethodSpec = MethodSpec {
    id: "sps",
    description: "Speculative sampling: a small AR drafter proposes draft_len tokens, the target verifies them in one forward (greedy prefix match, or the Leviathan/Chen rule when sampling)",
    needs: &[Need::DraftModel],
    exactness: Exactness::Lossless,
    resolve_params: super::resolve_with::<SpsParams>,
    build,
    positions_ahead: |p| super::count(p, "draft_len"),
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpsParams {
    /// Tokens the drafter proposes per step (k).
    #[serde(default = "default_draft_len")]
    pub draft_len: usize,
    /// 0 = greedy. Drafter and target sample with the same settings.
    #[serde(default)]
    pub temperature: f64,
    /// 0 = off.
    #[serde(default)]
    pub top_k: usize,
    /// 1 = off.
    #[serde(default = "one")]
    pub top_p: f64,
}

fn default_draft_len() -> usize {
    5
}
fn one() -> f64 {
    1.0
}

fn build(
    params: &serde_json::Value,
    models: &MethodModels<'_>,
) -> Result<Box<dyn Decoder>, MethodError> {
    let p: SpsParams = super::params_of("sps", params)?;
    let sampling = SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
    };
    let bad = |detail: String| MethodError::Params {
        method: "sps".into(),
        detail,
    };
    sampling.validate().map_err(bad)?;
    if p.draft_len == 0 {
        return Err(bad("draft_len: expected at least 1, got 0".into()));
    }
    let draft = models.draft.ok_or_else(|| MethodError::Missing {
        method: "sps".into(),
        need: "a drafter model".into(),
        hint: "pass --draft MODEL (a small AR model with the target's tokenizer)".into(),
    })?;
    let target = models.target.model.clone();
    let drafter = draft.model.clone();
    Ok(Box::new(Sps {
        target_cache: target.new_cache(1024)?,
        draft_cache: drafter.new_cache(1024)?,
        target,
        drafter,
        draft_len: p.draft_len,
        sampling,
    }))
}

pub struct Sps {
    target: Arc<Transformer>,
    drafter: Arc<Transformer>,
    target_cache: KvCache,
    draft_cache: KvCache,
    draft_len: usize,
    sampling: SamplingParams,
}

/// A row of logits as the distribution sampling draws from.
fn distribution(s: &SamplingParams, row: &Tensor) -> Result<Vec<f32>, MethodError> {
    Ok(s.distribution(&row.to_vec1::<f32>()?))
}

impl Decoder for Sps {
    fn generate(
        &mut self,
        prompt: &[u32],
        ctx: &mut GenContext<'_, '_>,
    ) -> Result<(), MethodError> {
        self.draft_cache.clear();
        let greedy = self.sampling.is_greedy();
        // `seq` is the prompt and the output; the target cache holds all of
        // it but the last token, the drafter's cache a prefix of that. The
        // drafter reads the prompt in the first decode step, so the first
        // token comes as early as `ar`'s.
        let (first, flow) = super::chain::prefill(
            &self.target,
            &mut self.target_cache,
            prompt,
            &self.sampling,
            ctx,
        )?;
        if flow == Flow::Stop {
            return Ok(());
        }
        let mut seq = prompt.to_vec();
        seq.push(first);
        loop {
            // Drafts past the budget would be discarded: propose fewer.
            let k = self.draft_len.min(ctx.probe.remaining().saturating_sub(1));
            let base = self.target_cache.len();
            debug_assert_eq!(base + 1, seq.len());

            // Draft: catch the drafter up on what it has not seen, then
            // extend one token per forward.
            let mut drafts = Vec::with_capacity(k);
            let mut q = Vec::with_capacity(k);
            let mut feed: Vec<u32> = seq[self.draft_cache.len()..].to_vec();
            for _ in 0..k {
                let start = self.draft_cache.len();
                let out = self
                    .drafter
                    .forward(&mut self.draft_cache, &Forward::causal(&feed, start))?;
                let row = out.logits.expect("last logits").i(0)?;
                let d = if greedy {
                    self.sampling.pick(&row, ctx.rng)?
                } else {
                    let dist = distribution(&self.sampling, &row)?;
                    let d = sample_from(&dist, ctx.rng);
                    q.push(dist);
                    d
                };
                drafts.push(d);
                feed = vec![d];
            }
            ctx.probe.mark_draft_done();

            // Verify the last token and the drafts in one target forward;
            // keep the accepted drafts in both caches.
            let v = super::chain::verify_chain(
                &self.target,
                &mut self.target_cache,
                seq[base],
                &drafts,
                (!greedy).then_some(q.as_slice()),
                &self.sampling,
                ctx.rng,
            )?
            .verdict;
            let (accepted, next) = (v.accepted, v.next);
            let draft_keep = self.draft_cache.len().min(self.target_cache.len());
            self.draft_cache.truncate(draft_keep)?;
            let mut emitted = drafts[..accepted].to_vec();
            emitted.push(next);
            seq.extend_from_slice(&emitted);
            let flow = ctx.probe.commit(StepObservation {
                kind: StepKind::Decode,
                proposed: k,
                draft_depth: None,
                accepted,
                tokens: &emitted,
                target_calls: 1,
                draft_calls: k as u32,
                verify_width: k + 1,
                window: None,
                positions: &[],
            });
            if flow == Flow::Stop {
                return Ok(());
            }
        }
    }
}
