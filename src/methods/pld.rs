//! `pld`: prompt lookup decoding (Saxena 2023). Drafts are copied from the
//! context: the last n-gram (n = max_ngram down to 1) is looked up in the
//! prompt and the output, and up to `max_draft` tokens that followed its
//! earliest occurrence are verified by the target in one forward. No
//! drafter model; lossless like any chain verification.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Decoder, Exactness, GenContext, MethodError, MethodModels, MethodSpec};
use crate::measure::{Flow, StepKind, StepObservation};
use crate::model::{KvCache, Transformer};
use crate::sampling::SamplingParams;

pub const SPEC: MethodSpec = MethodSpec {
    id: "pld",
    description: "Prompt lookup decoding: drafts copied from where the last n-gram occurred in the prompt or output, verified in one target forward",
    needs: &[],
    exactness: Exactness::Lossless,
    resolve_params: super::resolve_with::<PldParams>,
    build,
    positions_ahead: |p| super::count(p, "max_draft"),
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PldParams {
    /// Longest n-gram looked up; shorter ones are tried down to 1.
    #[serde(default = "default_ngram")]
    pub max_ngram: usize,
    /// Most tokens drafted per step.
    #[serde(default = "default_draft")]
    pub max_draft: usize,
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

fn default_ngram() -> usize {
    3
}
fn default_draft() -> usize {
    10
}
fn one() -> f64 {
    1.0
}

fn build(
    params: &serde_json::Value,
    models: &MethodModels<'_>,
) -> Result<Box<dyn Decoder>, MethodError> {
    let p: PldParams = super::params_of("pld", params)?;
    let sampling = SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
    };
    let bad = |detail: String| MethodError::Params {
        method: "pld".into(),
        detail,
    };
    sampling.validate().map_err(bad)?;
    if p.max_ngram == 0 {
        return Err(bad("max_ngram: expected at least 1, got 0".into()));
    }
    if p.max_draft == 0 {
        return Err(bad("max_draft: expected at least 1, got 0".into()));
    }
    let model = models.target.model.clone();
    Ok(Box::new(Pld {
        cache: model.new_cache(1024)?,
        model,
        params: p,
        sampling,
    }))
}

pub struct Pld {
    model: Arc<Transformer>,
    cache: KvCache,
    params: PldParams,
    sampling: SamplingParams,
}

/// The tokens that followed the earliest earlier occurrence of `seq`'s
/// last n-gram, for n from `max_ngram` down to 1; at most `max_draft`.
pub fn lookup(seq: &[u32], max_ngram: usize, max_draft: usize) -> &[u32] {
    for n in (1..=max_ngram.min(seq.len().saturating_sub(1))).rev() {
        let tail = &seq[seq.len() - n..];
        // Occurrences that end before the tail itself starts its last
        // token, so at least one token follows them.
        for start in 0..seq.len() - n {
            if &seq[start..start + n] == tail {
                let from = start + n;
                let to = (from + max_draft).min(seq.len());
                return &seq[from..to];
            }
        }
    }
    &[]
}

impl Decoder for Pld {
    fn generate(
        &mut self,
        prompt: &[u32],
        ctx: &mut GenContext<'_, '_>,
    ) -> Result<(), MethodError> {
        let (first, mut flow) =
            super::chain::prefill(&self.model, &mut self.cache, prompt, &self.sampling, ctx)?;
        let mut seq = prompt.to_vec();
        seq.push(first);
        while flow == Flow::Continue {
            let budget = ctx.probe.remaining().saturating_sub(1);
            let drafts = lookup(
                &seq,
                self.params.max_ngram,
                self.params.max_draft.min(budget),
            )
            .to_vec();
            ctx.probe.mark_draft_done();
            let last = *seq.last().expect("non-empty");
            let v = super::chain::verify_chain(
                &self.model,
                &mut self.cache,
                last,
                &drafts,
                None,
                &self.sampling,
                ctx.rng,
            )?
            .verdict;
            let mut emitted = drafts[..v.accepted].to_vec();
            emitted.push(v.next);
            seq.extend_from_slice(&emitted);
            flow = ctx.probe.commit(StepObservation {
                kind: StepKind::Decode,
                proposed: drafts.len(),
                draft_depth: None,
                accepted: v.accepted,
                tokens: &emitted,
                target_calls: 1,
                draft_calls: 0,
                verify_width: drafts.len() + 1,
                window: None,
                positions: &[],
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::lookup;

    #[test]
    fn lookup_takes_the_earliest_longest_match() {
        // "1 2 3" occurred at 0: draft what followed it.
        assert_eq!(
            lookup(&[1, 2, 3, 4, 5, 9, 1, 2, 3], 3, 10),
            &[4, 5, 9, 1, 2, 3]
        );
        assert_eq!(lookup(&[1, 2, 3, 4, 5, 9, 1, 2, 3], 3, 2), &[4, 5]);
        // Only the last token recurs.
        assert_eq!(lookup(&[7, 8, 9, 7], 3, 10), &[8, 9, 7]);
        // Nothing recurs.
        assert_eq!(lookup(&[1, 2, 3], 3, 10), &[] as &[u32]);
        assert_eq!(lookup(&[1], 3, 10), &[] as &[u32]);
        // The tail itself is not a match.
        assert_eq!(lookup(&[5, 5], 1, 10), &[5]);
    }
}
