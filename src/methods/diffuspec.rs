//! `diffuspec`: DiffuSpec (Li et al. 2025), a pretrained masked-diffusion
//! LM (`--dllm`) drafting for the AR target, training-free.
//!
//! Each step: the verified sequence plus k masks go through the dLLM in one
//! bidirectional forward, giving a distribution per draft position. The
//! causal-consistency path search (CPS) keeps, per position, the smallest
//! top-m set whose mass reaches `cps_mass` (m ≤ `cps_top_m`, EOS always
//! kept), and beam-searches (width `beam_width`) the path maximising
//! Σ λ·log q_dlm + (1 − λ)·log p_ngram, the n-gram model being fitted on
//! the prompt and the text generated so far; a path stops after EOS, and
//! the best raw sum wins (as the public reproduction does). The target
//! verifies the path in one forward. Adaptive draft length (ADL): with
//! L_gen the raw draft's length up to its first EOS and L_acc the accepted
//! length, EMAs L̃ ← (1 − ρ)·L̃ + ρ·L (from 0), and
//! k ← clip(⌊L̃_gen⌋ + step·[L̃_acc ≥ L̃_gen], min, max), k₁ = max.
//! `cps = false` drafts each position's argmax, `adl = false` keeps k at
//! `draft_len_max`: the paper's ablations.
//!
//! Drafts are deterministic given the context, so the speculative rule
//! treats them as point masses: greedy output is the target's AR output,
//! and sampled output keeps its distribution.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ngram::NgramModel;
use super::{Decoder, Exactness, GenContext, MethodError, MethodModels, MethodSpec, Need};
use crate::measure::{Flow, StepKind, StepObservation};
use crate::model::diffusion::DiffusionSpec;
use crate::model::{Forward, KvCache, LoadedModel, LogitsAt, Mask, Transformer};
use crate::sampling::SamplingParams;

pub const SPEC: MethodSpec = MethodSpec {
    id: "diffuspec",
    description: "DiffuSpec: a pretrained masked-diffusion LM (--dllm) drafts k tokens in one forward; causal-consistency path search (top-m lattice, beam search with an n-gram fitted on the run's text) and adaptive draft length; the target verifies (lossless)",
    needs: &[Need::DiffusionModel],
    exactness: Exactness::Lossless,
    resolve_params: resolve,
    build,
    positions_ahead: |p| super::count(p, "draft_len_max"),
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffuspecParams {
    /// Causal-consistency path search; false drafts each argmax.
    #[serde(default = "yes")]
    pub cps: bool,
    /// Adaptive draft length; false drafts draft_len_max every step.
    #[serde(default = "yes")]
    pub adl: bool,
    /// ADL's clip range and first draft length (the paper: 20..30, for
    /// answers of hundreds of tokens; suites scale it to theirs).
    #[serde(default = "default_min")]
    pub draft_len_min: usize,
    #[serde(default = "default_max")]
    pub draft_len_max: usize,
    /// ADL's extension while acceptance keeps up with generation (10).
    #[serde(default = "default_step")]
    pub draft_len_step: usize,
    /// ADL's EMA weight of the newest length (ρ).
    #[serde(default = "half")]
    pub ema: f64,
    /// CPS: probability mass each position's candidate set reaches (τ).
    #[serde(default = "default_mass")]
    pub cps_mass: f64,
    /// CPS: candidates per position at most (M).
    #[serde(default = "default_top_m")]
    pub cps_top_m: usize,
    #[serde(default = "default_beam")]
    pub beam_width: usize,
    /// Weight of the dLLM's log-probability against the n-gram's (λ).
    #[serde(default = "half")]
    pub lambda: f64,
    #[serde(default = "default_order")]
    pub ngram_order: usize,
    /// Verification sampling; 0 = greedy.
    #[serde(default)]
    pub temperature: f64,
    #[serde(default)]
    pub top_k: usize,
    #[serde(default = "one")]
    pub top_p: f64,
}

fn yes() -> bool {
    true
}
fn default_min() -> usize {
    20
}
fn default_max() -> usize {
    30
}
fn default_step() -> usize {
    10
}
fn half() -> f64 {
    0.5
}
fn default_mass() -> f64 {
    0.8
}
fn default_top_m() -> usize {
    15
}
fn default_beam() -> usize {
    3
}
fn default_order() -> usize {
    3
}
fn one() -> f64 {
    1.0
}

impl DiffuspecParams {
    fn check(&self) -> Result<(), String> {
        if self.draft_len_min == 0 {
            return Err("draft_len_min: expected at least 1, got 0".into());
        }
        if self.draft_len_max < self.draft_len_min {
            return Err(format!(
                "draft_len_max: expected at least draft_len_min ({}), got {}",
                self.draft_len_min, self.draft_len_max
            ));
        }
        if !(self.ema > 0.0 && self.ema <= 1.0) {
            return Err(format!(
                "ema: expected a number in (0, 1], got {}",
                self.ema
            ));
        }
        if !(self.cps_mass > 0.0 && self.cps_mass <= 1.0) {
            return Err(format!(
                "cps_mass: expected a number in (0, 1], got {}",
                self.cps_mass
            ));
        }
        if self.cps_top_m == 0 || self.beam_width == 0 || self.ngram_order == 0 {
            return Err("cps_top_m, beam_width and ngram_order: expected at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.lambda) {
            return Err(format!(
                "lambda: expected a number in [0, 1], got {}",
                self.lambda
            ));
        }
        Ok(())
    }
}

fn resolve(v: &serde_json::Value) -> Result<serde_json::Value, String> {
    let p: DiffuspecParams = super::parse_params(v)?;
    p.check()?;
    serde_json::to_value(&p).map_err(|e| e.to_string())
}

fn build(
    params: &serde_json::Value,
    models: &MethodModels<'_>,
) -> Result<Box<dyn Decoder>, MethodError> {
    let p: DiffuspecParams = super::params_of("diffuspec", params)?;
    let sampling = SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
    };
    let bad = |detail: String| MethodError::Params {
        method: "diffuspec".into(),
        detail,
    };
    p.check().map_err(bad)?;
    sampling.validate().map_err(bad)?;
    let m = models.dllm.ok_or_else(|| MethodError::Missing {
        method: "diffuspec".into(),
        need: "a masked-diffusion LM to draft with".into(),
        hint: "pass --dllm MODEL (such as toy-dllm, or Dream-v0 for Qwen2.5 targets)".into(),
    })?;
    let drafter = DiffusionDrafter::new(m, "diffuspec")?;
    let target = models.target.model.clone();
    Ok(Box::new(Diffuspec {
        cache: target.new_cache(1024)?,
        target,
        ngram: NgramModel::new(p.ngram_order, drafter.vocab()),
        drafter,
        eos_ids: models.target.tokenizer.eos_ids.clone(),
        p,
        sampling,
    }))
}

/// A masked-diffusion LM used as a drafter: the context plus masks in one
/// forward, a distribution per draft position.
pub(crate) struct DiffusionDrafter {
    model: Arc<Transformer>,
    spec: DiffusionSpec,
    cache: KvCache,
    label: String,
}

impl DiffusionDrafter {
    pub(crate) fn new(m: &LoadedModel, method: &str) -> Result<Self, MethodError> {
        let spec = super::dllm::masked_diffusion_spec(m, method)?;
        Ok(Self {
            cache: m.model.new_cache(256)?,
            model: m.model.clone(),
            spec,
            label: m.info.spec.clone(),
        })
    }

    pub(crate) fn vocab(&self) -> usize {
        self.model.config().vocab_size
    }

    /// Masks to put after the context for `k` drafts: at least k, and for a
    /// model trained on a fixed canvas after the prompt, the rest of that
    /// canvas (the shape it was trained on).
    fn canvas(&self, prompt_len: usize, context_len: usize, k: usize) -> usize {
        match self.spec.trained_gen_len {
            Some(g) => k.max((prompt_len + g).saturating_sub(context_len)),
            None => k,
        }
    }

    /// The drafter's distributions (softmax, the mask token excluded) at
    /// the `k` positions after `context`, whose first `prompt_len` tokens
    /// are the prompt; `context` may already hold committed tokens in
    /// `fill` (position, token) among the masks, for multi-step drafting.
    pub(crate) fn distributions(
        &mut self,
        method: &str,
        context: &[u32],
        prompt_len: usize,
        k: usize,
        fill: &[(usize, u32)],
    ) -> Result<Vec<Vec<f32>>, MethodError> {
        let n = context.len();
        let max_pos = self.model.config().max_position_embeddings;
        let canvas = self.canvas(prompt_len, n, k).min(max_pos.saturating_sub(n));
        if canvas < k || k == 0 || (self.spec.shift_logits && n == 0) {
            return Err(MethodError::Other {
                method: method.into(),
                detail: format!(
                    "drafter {}: the context ({n} tokens) and {k} draft positions exceed its {max_pos} positions",
                    self.label
                ),
            });
        }
        let mask = self.spec.mask_token_id;
        let mut seq = context.to_vec();
        seq.extend(std::iter::repeat_n(mask, canvas));
        for &(j, t) in fill {
            seq[n + j] = t;
        }
        let attn = match self.spec.block_size {
            Some(size) => Mask::Block {
                size,
                start: prompt_len,
            },
            None => Mask::Bidirectional,
        };
        let rows: Vec<usize> = (0..k).map(|j| self.spec.predictor_row(n + j)).collect();
        self.cache.clear();
        let out = self.model.forward(
            &mut self.cache,
            &Forward::causal(&seq, 0)
                .with_mask(attn)
                .with_logits(LogitsAt::Rows(rows))
                .batched(),
        )?;
        let logits: Vec<Vec<f32>> = out.logits.expect("rows were asked for").to_vec2()?;
        Ok(logits
            .into_iter()
            .map(|mut row| {
                row[mask as usize] = f32::NEG_INFINITY;
                softmax(&mut row);
                row
            })
            .collect())
    }
}

fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    row.iter_mut().for_each(|x| *x /= sum);
}

/// One position's CPS candidates: the smallest most-probable set whose
/// mass reaches `mass`, at most `top_m`, most probable first, plus EOS
/// (with its own probability) where it is not among them.
pub fn candidates(probs: &[f32], mass: f64, top_m: usize, eos: u32) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..probs.len() as u32).collect();
    let take = top_m.min(idx.len());
    idx.select_nth_unstable_by(take.saturating_sub(1), |&a, &b| {
        probs[b as usize]
            .total_cmp(&probs[a as usize])
            .then(a.cmp(&b))
    });
    idx.truncate(take);
    idx.sort_by(|&a, &b| {
        probs[b as usize]
            .total_cmp(&probs[a as usize])
            .then(a.cmp(&b))
    });
    let mut out = Vec::new();
    let mut acc = 0f64;
    for t in idx {
        out.push((t, probs[t as usize]));
        acc += probs[t as usize] as f64;
        if acc >= mass {
            break;
        }
    }
    if (eos as usize) < probs.len() && !out.iter().any(|&(t, _)| t == eos) {
        out.push((eos, probs[eos as usize]));
    }
    out
}

/// Causal-consistency path search over per-position candidate lists: beam
/// search of width `beam` maximising Σ λ·ln q + (1 − λ)·ln p_ngram, the
/// n-gram conditioned on its text plus the path; a path ends at EOS. Ties
/// keep the more probable candidates' order. Returns the best path.
pub fn path_search(
    lattice: &[Vec<(u32, f32)>],
    ngram: &NgramModel,
    beam: usize,
    lambda: f64,
    eos_ids: &[u32],
) -> Vec<u32> {
    struct Beam {
        tokens: Vec<u32>,
        score: f64,
        ended: bool,
    }
    let mut beams = vec![Beam {
        tokens: Vec::new(),
        score: 0.0,
        ended: false,
    }];
    let text = ngram.text();
    let tail = text.len().saturating_sub(8);
    for cands in lattice {
        if beams.iter().all(|b| b.ended) {
            break;
        }
        let mut next: Vec<Beam> = Vec::new();
        for b in beams {
            if b.ended {
                next.push(b);
                continue;
            }
            let mut ctx: Vec<u32> = text[tail..].to_vec();
            ctx.extend_from_slice(&b.tokens);
            for &(t, q) in cands {
                let lq = (q.max(1e-30) as f64).ln();
                let lng = ngram.prob(&ctx, t).max(1e-300).ln();
                let mut tokens = b.tokens.clone();
                tokens.push(t);
                next.push(Beam {
                    tokens,
                    score: b.score + lambda * lq + (1.0 - lambda) * lng,
                    ended: eos_ids.contains(&t),
                });
            }
        }
        // Stable: equal scores keep the earlier beam's and candidate's order.
        next.sort_by(|a, b| b.score.total_cmp(&a.score));
        next.truncate(beam.max(1));
        beams = next;
    }
    beams
        .into_iter()
        .next()
        .map(|b| b.tokens)
        .unwrap_or_default()
}

/// The argmax of each row, cut after the first EOS.
pub(crate) fn argmax_draft(rows: &[Vec<f32>], eos_ids: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let t = crate::model::argmax(r);
        out.push(t);
        if eos_ids.contains(&t) {
            break;
        }
    }
    out
}

/// ADL's state: EMAs of the generated and accepted lengths.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveLength {
    pub gen: f64,
    pub acc: f64,
    pub k: usize,
}

impl AdaptiveLength {
    pub fn new(max: usize) -> Self {
        Self {
            gen: 0.0,
            acc: 0.0,
            k: max,
        }
    }

    /// Folds in one step's lengths and sets the next draft length.
    pub fn update(
        &mut self,
        l_gen: usize,
        l_acc: usize,
        rho: f64,
        min: usize,
        max: usize,
        step: usize,
    ) {
        self.gen = (1.0 - rho) * self.gen + rho * l_gen as f64;
        self.acc = (1.0 - rho) * self.acc + rho * l_acc as f64;
        let bonus = if self.acc >= self.gen { step } else { 0 };
        self.k = (self.gen.floor() as usize + bonus).clamp(min, max);
    }
}

pub struct Diffuspec {
    target: Arc<Transformer>,
    cache: KvCache,
    drafter: DiffusionDrafter,
    ngram: NgramModel,
    eos_ids: Vec<u32>,
    p: DiffuspecParams,
    sampling: SamplingParams,
}

impl Decoder for Diffuspec {
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
        self.ngram.clear();
        self.ngram.extend(&seq);
        let mut adl = AdaptiveLength::new(self.p.draft_len_max);
        let eos = self.eos_ids.first().copied().unwrap_or(u32::MAX);
        loop {
            let k = adl.k.min(ctx.probe.remaining().saturating_sub(1));
            let base = self.cache.len();
            let (drafts, l_gen) = if k == 0 {
                (Vec::new(), 0)
            } else {
                let rows = self
                    .drafter
                    .distributions("diffuspec", &seq, prompt.len(), k, &[])?;
                let raw = argmax_draft(&rows, &self.eos_ids);
                let drafts = if self.p.cps {
                    let lattice: Vec<Vec<(u32, f32)>> = rows
                        .iter()
                        .map(|r| candidates(r, self.p.cps_mass, self.p.cps_top_m, eos))
                        .collect();
                    path_search(
                        &lattice,
                        &self.ngram,
                        self.p.beam_width,
                        self.p.lambda,
                        &self.eos_ids,
                    )
                } else {
                    raw.clone()
                };
                (drafts, raw.len())
            };
            ctx.probe.mark_draft_done();
            let v = super::chain::verify_chain(
                &self.target,
                &mut self.cache,
                seq[base],
                &drafts,
                None,
                &self.sampling,
                ctx.rng,
            )?
            .verdict;
            let mut emitted = drafts[..v.accepted].to_vec();
            emitted.push(v.next);
            seq.extend_from_slice(&emitted);
            self.ngram.extend(&emitted);
            if self.p.adl && k > 0 {
                adl.update(
                    l_gen,
                    v.accepted,
                    self.p.ema,
                    self.p.draft_len_min,
                    self.p.draft_len_max,
                    self.p.draft_len_step,
                );
            }
            let flow = ctx.probe.commit(StepObservation {
                kind: StepKind::Decode,
                proposed: drafts.len(),
                draft_depth: None,
                accepted: v.accepted,
                tokens: &emitted,
                target_calls: 1,
                draft_calls: u32::from(k > 0),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_reach_the_mass_and_keep_eos() {
        let probs = [0.05f32, 0.5, 0.2, 0.15, 0.1];
        // 0.5 + 0.2 + 0.15 = 0.85 >= 0.8; EOS (0) added.
        assert_eq!(
            candidates(&probs, 0.8, 15, 0),
            [(1, 0.5), (2, 0.2), (3, 0.15), (0, 0.05)]
        );
        // Capped at m = 2; EOS among them is not repeated.
        assert_eq!(candidates(&probs, 0.8, 2, 2), [(1, 0.5), (2, 0.2)]);
    }

    #[test]
    fn the_path_search_prefers_what_the_text_repeats() {
        let mut ng = NgramModel::new(3, 10);
        ng.extend(&[5, 6, 7, 5, 6, 7, 5, 6]);
        // The dLLM slightly prefers 8 after 5 6, the n-gram strongly 7.
        let lattice = vec![vec![(8, 0.5), (7, 0.45)], vec![(5, 0.9), (9, 0.1)]];
        assert_eq!(path_search(&lattice, &ng, 3, 0.5, &[0]), [7, 5]);
        // λ = 1 trusts the dLLM alone.
        assert_eq!(path_search(&lattice, &ng, 3, 1.0, &[0]), [8, 5]);
    }

    #[test]
    fn a_path_stops_at_eos() {
        let ng = NgramModel::new(3, 10);
        let lattice = vec![vec![(4, 0.9)], vec![(0, 0.95), (3, 0.05)], vec![(4, 0.9)]];
        assert_eq!(path_search(&lattice, &ng, 3, 0.5, &[0]), [4, 0]);
    }

    #[test]
    fn adaptive_length_follows_the_rule() {
        let mut a = AdaptiveLength::new(30);
        assert_eq!(a.k, 30);
        // gen 0.5*24 = 12, acc 0.5*24 = 12: acc >= gen, 12 + 10 = 22.
        a.update(24, 24, 0.5, 20, 30, 10);
        assert_eq!((a.gen, a.acc, a.k), (12.0, 12.0, 22));
        // gen 6 + 15 = 21, acc 6 + 2 = 8: no bonus, clipped up to 20.
        a.update(30, 4, 0.5, 20, 30, 10);
        assert_eq!((a.gen, a.acc, a.k), (21.0, 8.0, 21));
        a.update(2, 0, 0.5, 20, 30, 10);
        assert_eq!(a.k, 20);
    }
}
