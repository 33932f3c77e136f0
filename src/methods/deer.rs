//! `deer`: DEER (Cheng et al. 2025), a masked-diffusion drafter aligned to
//! the target (`--dllm-drafter`, trained by the `deer` objective) proposes
//! a block of up to `block_len` tokens in one denoising step (or
//! `denoise_steps`, committing the most confident positions first), and
//! the AR target verifies the block in one forward with the speculative
//! rule. Greedy output is the target's AR output. When sampling, one-step
//! drafts are drawn from the drafter's distributions, which the rule
//! receives; multi-step drafts (whose positions condition on each other
//! out of order) are the drafter's argmax, verified as point masses; both
//! keep the target's distribution.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::diffuspec::{argmax_draft, DiffusionDrafter};
use super::{Decoder, Exactness, GenContext, MethodError, MethodModels, MethodSpec, Need};
use crate::measure::{Flow, StepKind, StepObservation};
use crate::model::{KvCache, Transformer};
use crate::sampling::{sample_from, SamplingParams};

pub const SPEC: MethodSpec = MethodSpec {
    id: "deer",
    description: "DEER: a diffusion drafter aligned to the target (--dllm-drafter) proposes a block of block_len tokens in one denoising step; the AR target verifies it in one forward (lossless)",
    needs: &[Need::DiffusionDrafter],
    exactness: Exactness::Lossless,
    resolve_params: super::resolve_with::<DeerParams>,
    build,
    positions_ahead: |p| super::count(p, "block_len"),
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeerParams {
    /// Draft block (K).
    #[serde(default = "default_block")]
    pub block_len: usize,
    /// Drafter forwards per block.
    #[serde(default = "one_step")]
    pub denoise_steps: usize,
    /// Verification sampling; 0 = greedy.
    #[serde(default)]
    pub temperature: f64,
    #[serde(default)]
    pub top_k: usize,
    #[serde(default = "one")]
    pub top_p: f64,
}

fn default_block() -> usize {
    32
}
fn one_step() -> usize {
    1
}
fn one() -> f64 {
    1.0
}

fn build(
    params: &serde_json::Value,
    models: &MethodModels<'_>,
) -> Result<Box<dyn Decoder>, MethodError> {
    let p: DeerParams = super::params_of("deer", params)?;
    let sampling = SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
    };
    let bad = |detail: String| MethodError::Params {
        method: "deer".into(),
        detail,
    };
    sampling.validate().map_err(bad)?;
    if p.block_len == 0 {
        return Err(bad("block_len: expected at least 1, got 0".into()));
    }
    if p.denoise_steps == 0 || p.denoise_steps > p.block_len {
        return Err(bad(format!(
            "denoise_steps: expected 1..=block_len ({}), got {}",
            p.block_len, p.denoise_steps
        )));
    }
    let m = models.dllm_drafter.ok_or_else(|| MethodError::Missing {
        method: "deer".into(),
        need: "a diffusion drafter aligned to the target".into(),
        hint: "pass --dllm-drafter MODEL (such as toy-deer, trained by the `deer` objective)"
            .into(),
    })?;
    let target = models.target.model.clone();
    Ok(Box::new(Deer {
        cache: target.new_cache(1024)?,
        target,
        drafter: DiffusionDrafter::new(m, "deer")?,
        eos_ids: models.target.tokenizer.eos_ids.clone(),
        p,
        sampling,
    }))
}

pub struct Deer {
    target: Arc<Transformer>,
    cache: KvCache,
    drafter: DiffusionDrafter,
    eos_ids: Vec<u32>,
    p: DeerParams,
    sampling: SamplingParams,
}

impl Deer {
    /// The block's drafts and, for sampled one-step drafts, the
    /// distributions they were drawn from.
    fn draft(
        &mut self,
        seq: &[u32],
        prompt_len: usize,
        k: usize,
        rng: &mut rand_chacha::ChaCha20Rng,
    ) -> Result<(Vec<u32>, Option<Vec<Vec<f32>>>), MethodError> {
        let steps = self.p.denoise_steps.min(k);
        if steps == 1 {
            let rows = self
                .drafter
                .distributions("deer", seq, prompt_len, k, &[])?;
            if self.sampling.is_greedy() {
                return Ok((argmax_draft(&rows, &self.eos_ids), None));
            }
            let mut drafts = Vec::with_capacity(k);
            let mut q = Vec::with_capacity(k);
            for r in rows {
                let d = sample_from(&r, rng);
                drafts.push(d);
                q.push(r);
                if self.eos_ids.contains(&d) {
                    break;
                }
            }
            return Ok((drafts, Some(q)));
        }
        // Multi-step: each forward commits its share of the block's most
        // confident masked positions (LLaDA's schedule).
        let mut fill: Vec<(usize, u32)> = Vec::new();
        for n in super::dllm::even_split(k, steps) {
            let rows = self
                .drafter
                .distributions("deer", seq, prompt_len, k, &fill)?;
            let mut open: Vec<(usize, u32, f32)> = (0..k)
                .filter(|j| !fill.iter().any(|f| f.0 == *j))
                .map(|j| {
                    let t = crate::model::argmax(&rows[j]);
                    (j, t, rows[j][t as usize])
                })
                .collect();
            open.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
            fill.extend(open.iter().take(n).map(|&(j, t, _)| (j, t)));
        }
        fill.sort();
        let block: Vec<u32> = fill.into_iter().map(|(_, t)| t).collect();
        let end = block
            .iter()
            .position(|t| self.eos_ids.contains(t))
            .map_or(block.len(), |i| i + 1);
        Ok((block[..end].to_vec(), None))
    }
}

impl Decoder for Deer {
    fn generate(
        &mut self,
        prompt: &[u32],
        ctx: &mut GenContext<'_, '_>,
    ) -> Result<(), MethodError> {
        let (first, flow) =
            super::chain::prefill(&self.target, &mut self.cache, prompt, &self.sampling, ctx)?;
        if flow == Flow::Stop {
            return Ok(());
        }
        let mut seq = prompt.to_vec();
        seq.push(first);
        loop {
            let k = self
                .p
                .block_len
                .min(ctx.probe.remaining().saturating_sub(1));
            let base = self.cache.len();
            let (drafts, q) = if k == 0 {
                (Vec::new(), None)
            } else {
                self.draft(&seq, prompt.len(), k, ctx.rng)?
            };
            ctx.probe.mark_draft_done();
            let v = super::chain::verify_chain(
                &self.target,
                &mut self.cache,
                seq[base],
                &drafts,
                q.as_deref(),
                &self.sampling,
                ctx.rng,
            )?
            .verdict;
            let mut emitted = drafts[..v.accepted].to_vec();
            emitted.push(v.next);
            seq.extend_from_slice(&emitted);
            let flow = ctx.probe.commit(StepObservation {
                kind: StepKind::Decode,
                proposed: drafts.len(),
                draft_depth: None,
                accepted: v.accepted,
                tokens: &emitted,
                target_calls: 1,
                draft_calls: if k == 0 {
                    0
                } else {
                    self.p.denoise_steps.min(k) as u32
                },
                verify_width: drafts.len() + 1,
                window: None,
                positions: &[],
            });
            if flow == Flow::Stop {
                return Ok(());
            }
        }
    }
}
