//! `tidar`: TiDAR-style single-pass draft-and-verify (Liu et al. 2025)
//! with a model trained by the `tidar` objective (`--tidar`), which
//! decodes in the target's place.
//!
//! Each forward holds, after the cached prefix, the newest emitted token
//! and the m drafts of the previous pass (causal), then one block of B
//! mask slots per possible acceptance length r = 0..=m: block r sits at
//! the positions after draft r, sees the prefix, the newest token and
//! drafts 1..r, and is bidirectional inside (TiDAR's pre-drafting for
//! every outcome of verification). The causal rows verify the drafts as
//! AR would (greedy prefix match, or the speculative rule with the slots'
//! distributions); with a drafts accepted, the emitted tokens are those
//! drafts and the causal row's token after them, and block a's slots
//! 1..B−1 are the next pass's drafts (slot 0 stands for that token, which
//! AR decides). The cache is cut back to the accepted tokens, so it is
//! exactly AR's. Greedy output equals `ar` on the same model.

use std::sync::Arc;

use candle_core::{IndexOp, Tensor};
use serde::{Deserialize, Serialize};

use super::verify::{greedy_accepted, speculative_verdict, Verdict};
use super::{Decoder, Exactness, GenContext, MethodError, MethodModels, MethodSpec, Need};
use crate::measure::{Flow, StepKind, StepObservation};
use crate::model::mask::ExplicitMask;
use crate::model::{Forward, KvCache, LogitsAt, Mask, ModelError, Transformer};
use crate::sampling::{sample_from, SamplingParams};

pub const SPEC: MethodSpec = MethodSpec {
    id: "tidar",
    description: "TiDAR: one model (--tidar) drafts with mask slots and verifies the previous drafts causally in the same forward, pre-drafting for every acceptance length (lossless against its own AR)",
    needs: &[Need::TidarModel],
    exactness: Exactness::Lossless,
    resolve_params: super::resolve_with::<TidarParams>,
    build,
    // A pass forwards (drafts + 1) blocks of the model's mask slots, a
    // size the parameters do not give: the general margin.
    positions_ahead: |_| None,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TidarParams {
    /// Drafts per pass; default and at most the model's block size − 1.
    #[serde(default)]
    pub draft_len: Option<usize>,
    /// 0 = greedy.
    #[serde(default)]
    pub temperature: f64,
    #[serde(default)]
    pub top_k: usize,
    #[serde(default = "one")]
    pub top_p: f64,
}

fn one() -> f64 {
    1.0
}

fn build(
    params: &serde_json::Value,
    models: &MethodModels<'_>,
) -> Result<Box<dyn Decoder>, MethodError> {
    let p: TidarParams = super::params_of("tidar", params)?;
    let sampling = SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
    };
    let bad = |detail: String| MethodError::Params {
        method: "tidar".into(),
        detail,
    };
    sampling.validate().map_err(bad)?;
    let m = models.tidar.ok_or_else(|| MethodError::Missing {
        method: "tidar".into(),
        need: "a TiDAR-trained model".into(),
        hint: "pass --tidar MODEL (such as toy-tidar, trained by the `tidar` objective)".into(),
    })?;
    let spec = m
        .info
        .diffusion
        .as_ref()
        .filter(|d| d.is_tidar())
        .ok_or_else(|| MethodError::Other {
            method: "tidar".into(),
            detail: format!(
                "model {} was not trained for TiDAR: its config.json needs pdbench_objective \"tidar\" with mask_token_id and pdbench_objective_params.block_size",
                m.info.spec
            ),
        })?;
    let block = spec.block_size.unwrap_or(2);
    if block < 2 {
        return Err(bad(format!(
            "model {}: a block of {block} mask slots leaves no drafts",
            m.info.spec
        )));
    }
    let draft_len = p.draft_len.unwrap_or(block - 1);
    if draft_len == 0 || draft_len > block - 1 {
        return Err(bad(format!(
            "draft_len: expected 1..={} (the model's block of {block} slots less the one AR fills), got {draft_len}",
            block - 1
        )));
    }
    Ok(Box::new(Tidar {
        cache: m.model.new_cache(1024)?,
        model: m.model.clone(),
        layout: Layout {
            block,
            draft_len,
            mask_id: spec.mask_token_id,
        },
        sampling,
    }))
}

/// The shape of a pass.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Mask slots per block (B).
    pub block: usize,
    /// Drafts kept from a block (≤ B − 1).
    pub draft_len: usize,
    pub mask_id: u32,
}

/// What one pass computed.
pub struct PassOutput {
    /// Logits of the causal rows: the newest token, then each draft.
    pub causal: Tensor,
    /// Per acceptance length r, slots 1..=draft_len of block r.
    pub slots: Vec<Tensor>,
}

/// One TiDAR forward at the end of `cache` (which holds everything before
/// `last`); the cache keeps all of the chunk until the caller truncates.
pub fn pass(
    model: &Transformer,
    cache: &mut KvCache,
    last: u32,
    drafts: &[u32],
    l: Layout,
) -> Result<PassOutput, ModelError> {
    let base = cache.len();
    let m = drafts.len();
    let causal_n = m + 1;
    let n = causal_n + (m + 1) * l.block;
    let mut tokens = Vec::with_capacity(n);
    tokens.push(last);
    tokens.extend_from_slice(drafts);
    tokens.extend(std::iter::repeat_n(l.mask_id, (m + 1) * l.block));
    let mut positions: Vec<u32> = (0..causal_n).map(|i| (base + i) as u32).collect();
    let mut mask = ExplicitMask::new(n, base + n);
    for i in 0..causal_n {
        for j in 0..=base + i {
            mask.set(i, j, true);
        }
    }
    let mut rows = Vec::with_capacity((m + 1) * l.draft_len + causal_n);
    rows.extend(0..causal_n);
    for r in 0..=m {
        let first = causal_n + r * l.block;
        for s in 0..l.block {
            let row = first + s;
            positions.push((base + 1 + r + s) as u32);
            // The prefix, the newest token and drafts 1..r.
            for j in 0..=base + r {
                mask.set(row, j, true);
            }
            for t in 0..l.block {
                mask.set(row, base + first + t, true);
            }
            if (1..=l.draft_len).contains(&s) {
                rows.push(row);
            }
        }
    }
    let out = model.forward(
        cache,
        &Forward::causal(&tokens, base)
            .with_mask(Mask::Explicit(mask))
            .with_positions(&positions)
            .with_logits(LogitsAt::Rows(rows)),
    )?;
    let logits = out.logits.expect("rows were asked for");
    let causal = logits.narrow(0, 0, causal_n)?;
    let slots = (0..=m)
        .map(|r| logits.narrow(0, causal_n + r * l.draft_len, l.draft_len))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PassOutput { causal, slots })
}

pub struct Tidar {
    model: Arc<Transformer>,
    cache: KvCache,
    layout: Layout,
    sampling: SamplingParams,
}

impl Decoder for Tidar {
    fn generate(
        &mut self,
        prompt: &[u32],
        ctx: &mut GenContext<'_, '_>,
    ) -> Result<(), MethodError> {
        let (first, flow) =
            super::chain::prefill(&self.model, &mut self.cache, prompt, &self.sampling, ctx)?;
        if flow == Flow::Stop {
            return Ok(());
        }
        let greedy = self.sampling.is_greedy();
        let mut last = first;
        let mut drafts: Vec<u32> = Vec::new();
        let mut q: Vec<Vec<f32>> = Vec::new();
        loop {
            // Drafts past the budget would be discarded.
            let m = drafts.len().min(ctx.probe.remaining().saturating_sub(1));
            drafts.truncate(m);
            q.truncate(m);
            let base = self.cache.len();
            let out = pass(&self.model, &mut self.cache, last, &drafts, self.layout)?;
            let v = if greedy {
                let next = super::argmax_per_row(&out.causal)?;
                let a = greedy_accepted(&drafts, &next);
                Verdict {
                    accepted: a,
                    next: next[a],
                }
            } else {
                let p: Vec<Vec<f32>> = (0..=m)
                    .map(|i| {
                        Ok(self
                            .sampling
                            .distribution(&out.causal.i(i)?.to_vec1::<f32>()?))
                    })
                    .collect::<Result<_, MethodError>>()?;
                speculative_verdict(&drafts, &q, &p, ctx.rng)
            };
            self.cache.truncate(base + 1 + v.accepted)?;
            let mut emitted = drafts[..v.accepted].to_vec();
            emitted.push(v.next);
            // The next drafts: block a's slots, drawn as the slots'
            // distributions say (the rule needs what they were drawn from).
            let slots = &out.slots[v.accepted];
            if greedy {
                drafts = super::argmax_per_row(slots)?;
                q.clear();
            } else {
                let rows: Vec<Vec<f32>> = slots.to_vec2()?;
                q = rows.iter().map(|r| self.sampling.distribution(r)).collect();
                drafts = q.iter().map(|d| sample_from(d, ctx.rng)).collect();
            }
            let flow = ctx.probe.commit(StepObservation {
                kind: StepKind::Decode,
                proposed: m,
                draft_depth: None,
                accepted: v.accepted,
                tokens: &emitted,
                target_calls: 1,
                draft_calls: 0,
                verify_width: m + 1 + (m + 1) * self.layout.block,
                window: None,
                positions: &[],
            });
            if flow == Flow::Stop {
                return Ok(());
            }
            last = v.next;
        }
    }
}
