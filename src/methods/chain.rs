//! Verifying a chain of drafts with the target: one forward over the last
//! emitted token and the drafts, the accept rule, and the rollback of the
//! rejected positions through the cache's truncation. Every chain method
//! (sps, pld, jacobi, eagle's chain mode) verifies here.

use candle_core::IndexOp;
use rand_chacha::ChaCha20Rng;

use super::verify::{greedy_accepted, speculative_verdict, Verdict};
use super::{GenContext, MethodError};
use crate::measure::{Flow, StepKind, StepObservation};
use crate::model::{Forward, HiddenTap, KvCache, LogitsAt, Transformer};
use crate::sampling::SamplingParams;

/// The prefill step every chain method starts with: clears `cache`, reads
/// the prompt, picks the first token and commits it. Returns the token
/// and whether to go on.
pub fn prefill(
    model: &Transformer,
    cache: &mut KvCache,
    prompt: &[u32],
    sampling: &SamplingParams,
    ctx: &mut GenContext<'_, '_>,
) -> Result<(u32, Flow), MethodError> {
    let (first, flow, _) = prefill_with_taps(model, cache, prompt, &[], sampling, ctx)?;
    Ok((first, flow))
}

/// [`prefill`] that also returns the prompt's hidden states at `taps`.
pub fn prefill_with_taps(
    model: &Transformer,
    cache: &mut KvCache,
    prompt: &[u32],
    taps: &[HiddenTap],
    sampling: &SamplingParams,
    ctx: &mut GenContext<'_, '_>,
) -> Result<(u32, Flow, Vec<candle_core::Tensor>), MethodError> {
    cache.clear();
    let out = model.forward(cache, &Forward::causal(prompt, 0).with_taps(taps))?;
    let first = sampling.pick(&out.logits.expect("last logits").i(0)?, ctx.rng)?;
    let flow = ctx.probe.commit(StepObservation {
        kind: StepKind::Prefill,
        proposed: 0,
        draft_depth: None,
        accepted: 0,
        tokens: &[first],
        target_calls: 1,
        draft_calls: 0,
        verify_width: 1,
        window: None,
        positions: &[],
    });
    Ok((first, flow, out.hidden))
}

/// What the target said about a chain.
#[derive(Debug, Clone)]
pub struct ChainVerdict {
    /// Drafts kept, and the token after them.
    pub verdict: Verdict,
    /// The target's greedy choice after the context and each draft prefix
    /// (`drafts.len() + 1` entries); only filled at greedy settings.
    pub greedy_next: Vec<u32>,
}

/// Forwards `last` (the newest emitted token, not yet in `cache`) and
/// `drafts` at the end of `cache`, decides how many drafts to keep, and
/// truncates the cache to the context, `last` and the kept drafts.
///
/// Greedy settings keep the drafts that match the target's argmax. When
/// sampling, `draft_probs` are the distributions the drafts were drawn
/// from; `None` means drafts chosen without sampling (lookups, Jacobi
/// guesses), which the speculative rule treats as point masses.
pub fn verify_chain(
    model: &Transformer,
    cache: &mut KvCache,
    last: u32,
    drafts: &[u32],
    draft_probs: Option<&[Vec<f32>]>,
    sampling: &SamplingParams,
    rng: &mut ChaCha20Rng,
) -> Result<ChainVerdict, MethodError> {
    let (v, _) =
        verify_chain_with_taps(model, cache, last, drafts, draft_probs, &[], sampling, rng)?;
    Ok(v)
}

/// [`verify_chain`] that also returns the chunk's hidden states at `taps`
/// (rows: `last`, then each draft).
#[allow(clippy::too_many_arguments)]
pub fn verify_chain_with_taps(
    model: &Transformer,
    cache: &mut KvCache,
    last: u32,
    drafts: &[u32],
    draft_probs: Option<&[Vec<f32>]>,
    taps: &[HiddenTap],
    sampling: &SamplingParams,
    rng: &mut ChaCha20Rng,
) -> Result<(ChainVerdict, Vec<candle_core::Tensor>), MethodError> {
    let base = cache.len();
    let mut chunk = Vec::with_capacity(drafts.len() + 1);
    chunk.push(last);
    chunk.extend_from_slice(drafts);
    let out = model.forward(
        cache,
        &Forward::causal(&chunk, base)
            .with_logits(LogitsAt::All)
            .with_taps(taps),
    )?;
    let logits = out.logits.expect("all logits");
    let result = if sampling.is_greedy() {
        let next = super::argmax_per_row(&logits)?;
        let accepted = greedy_accepted(drafts, &next);
        ChainVerdict {
            verdict: Verdict {
                accepted,
                next: next[accepted],
            },
            greedy_next: next,
        }
    } else {
        let mut p = Vec::with_capacity(drafts.len() + 1);
        for i in 0..=drafts.len() {
            p.push(sampling.distribution(&logits.i(i)?.to_vec1::<f32>()?));
        }
        let point_masses: Vec<Vec<f32>>;
        let q = match draft_probs {
            Some(q) => q,
            None => {
                point_masses = drafts
                    .iter()
                    .map(|&d| {
                        let mut v = vec![0f32; d as usize + 1];
                        v[d as usize] = 1.0;
                        v
                    })
                    .collect();
                &point_masses
            }
        };
        ChainVerdict {
            verdict: speculative_verdict(drafts, q, &p, rng),
            greedy_next: Vec::new(),
        }
    };
    cache.truncate(base + 1 + result.verdict.accepted)?;
    Ok((result, out.hidden))
}
