//! `dllm`: parallel decoding of a masked-diffusion LM (`--dllm MODEL`),
//! with ParallelBench's unmasking strategies.
//!
//! The prompt is followed by `gen_length` mask tokens, decoded block by
//! block, left to right (LLaDA's semi-autoregressive decoding). Each step
//! runs one bidirectional forward (block-causal for block-diffusion models)
//! and commits some masked positions of the current block; committed
//! tokens are never re-masked. Like LLaDA, it decodes the whole canvas:
//! the answer is cut at its first EOS, and steps spent on the canvas after
//! it are counted (`learn2pd`'s end-of-text prediction saves them).
//!
//! Strategies (ParallelBench; Fast-dLLM for `threshold` and `factor`):
//! - `top-k`: k positions per step, the block's masks split evenly over its
//!   steps (LLaDA's schedule), ranked by `confidence`: `random`,
//!   `confidence` (p of the chosen token), `margin` (p1 − p2) or `entropy`.
//! - `threshold`: the most confident position plus every masked position of
//!   the block whose p ≥ `threshold`.
//! - `factor`: with p sorted c1 ≥ c2 ≥ …, the largest n such that
//!   c_i ≥ 1 − factor/(i + 1) for every i ≤ n (at least one).
//!
//! `cache = "prefix"` is Fast-dLLM's prefix cache: the whole sequence is
//! forwarded at each block's first step, and later steps of the block
//! forward only the block and what follows it, reusing the prefix's keys
//! and values. It is approximate for full-attention models (the prefix's
//! KV was computed when the block was still masked) and exact for
//! block-diffusion ones; the manifest records it with the params.
//! `cache = "dual"` (full-attention models) also keeps the keys and values
//! of the masks after the block from the block's first step, so later
//! steps forward the block alone (in place, attending to the whole cache).

use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Decoder, Exactness, GenContext, MethodError, MethodModels, MethodSpec, Need};
use crate::measure::{StepKind, StepObservation};
use crate::model::diffusion::DiffusionSpec;
use crate::model::{Forward, KvCache, LogitsAt, Mask, Transformer};

pub const SPEC: MethodSpec = MethodSpec {
    id: "dllm",
    description: "Masked-diffusion LM decoding (--dllm MODEL): blocks of masks filled left to right, positions committed per step by top-k (random, confidence, margin, entropy), a confidence threshold or Fast-dLLM's factor rule; optional prefix KV cache",
    needs: &[Need::DiffusionModel],
    exactness: Exactness::Lossy,
    resolve_params: resolve,
    build,
    positions_ahead: |_| None,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    TopK,
    Threshold,
    Factor,
}

/// How `top-k` ranks masked positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Confidence {
    Random,
    #[default]
    Confidence,
    Margin,
    Entropy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    #[default]
    None,
    Prefix,
    /// Fast-dLLM's dual cache: the prefix's and the suffix's keys and values
    /// from the block's first step; later steps forward only the block.
    Dual,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DllmParams {
    /// Answer canvas in tokens. Default: the canvas the model was trained
    /// on (its config), else 256. Capped at the run's max_new_tokens.
    #[serde(default)]
    pub gen_length: Option<usize>,
    /// Default: the model's block size (block diffusion), else gen_length.
    #[serde(default)]
    pub block_length: Option<usize>,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub confidence: Confidence,
    /// `top-k`: positions committed per step (ParallelBench's k).
    #[serde(default)]
    pub tokens_per_step: Option<usize>,
    /// `top-k`: denoising steps over the whole canvas (LLaDA's `steps`),
    /// split evenly over the blocks; instead of tokens_per_step.
    #[serde(default)]
    pub steps: Option<usize>,
    /// `threshold`: τ.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// `factor`: f.
    #[serde(default = "default_factor")]
    pub factor: f64,
    #[serde(default)]
    pub cache: CacheMode,
    /// 0: each position's argmax; otherwise tokens are sampled from the
    /// softmax at this temperature (confidences stay those of the model's
    /// own distribution, as in LLaDA).
    #[serde(default)]
    pub temperature: f64,
}

fn default_threshold() -> f64 {
    0.9
}
fn default_factor() -> f64 {
    1.0
}

fn resolve(v: &serde_json::Value) -> Result<serde_json::Value, String> {
    let mut p: DllmParams = super::parse_params(v)?;
    p.check()?;
    if p.strategy == Strategy::TopK && p.tokens_per_step.is_none() && p.steps.is_none() {
        p.tokens_per_step = Some(1);
    }
    serde_json::to_value(&p).map_err(|e| e.to_string())
}

impl DllmParams {
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.tokens_per_step.is_some() && self.steps.is_some() {
            return Err("give either tokens_per_step or steps, not both".into());
        }
        if self.strategy != Strategy::TopK {
            if self.tokens_per_step.is_some() || self.steps.is_some() {
                return Err(
                    "tokens_per_step and steps apply to strategy \"top-k\"; threshold and factor decide per step"
                        .into(),
                );
            }
            if self.confidence != Confidence::Confidence {
                return Err("confidence applies to strategy \"top-k\"; threshold and factor compare p of the chosen token".into());
            }
        }
        if self.tokens_per_step == Some(0) {
            return Err("tokens_per_step: expected at least 1, got 0".into());
        }
        if self.steps == Some(0) {
            return Err("steps: expected at least 1, got 0".into());
        }
        if self.gen_length == Some(0) {
            return Err("gen_length: expected at least 1, got 0".into());
        }
        if self.block_length == Some(0) {
            return Err("block_length: expected at least 1, got 0".into());
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(format!(
                "threshold: expected a number in (0, 1], got {}",
                self.threshold
            ));
        }
        if !(self.factor > 0.0 && self.factor.is_finite()) {
            return Err(format!(
                "factor: expected a positive number, got {}",
                self.factor
            ));
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature: expected a number >= 0, got {}",
                self.temperature
            ));
        }
        Ok(())
    }
}

fn build(
    params: &serde_json::Value,
    models: &MethodModels<'_>,
) -> Result<Box<dyn Decoder>, MethodError> {
    let p: DllmParams = super::params_of("dllm", params)?;
    let bad = |detail: String| MethodError::Params {
        method: "dllm".into(),
        detail,
    };
    p.check().map_err(bad)?;
    let m = models.dllm.ok_or_else(|| MethodError::Missing {
        method: "dllm".into(),
        need: "a masked-diffusion LM".into(),
        hint: "pass --dllm MODEL (such as toy-dllm, or a LLaDA or Dream checkpoint)".into(),
    })?;
    Ok(Box::new(Dllm::new(m, p, "dllm")?))
}

/// The diffusion spec of a masked-diffusion LM that decodes or drafts:
/// refused for an AR model, for a TiDAR model (its mask slots need
/// `tidar`'s layout) and for a mask id outside the vocabulary.
pub(crate) fn masked_diffusion_spec(
    m: &crate::model::LoadedModel,
    method: &str,
) -> Result<DiffusionSpec, MethodError> {
    let other = |detail: String| MethodError::Other {
        method: method.into(),
        detail,
    };
    let spec = m.info.diffusion.clone().ok_or_else(|| {
        other(format!(
            "model {} is not a masked-diffusion LM: its config.json names no diffusion family (model_type llada or Dream, or a pdbench diffusion objective with mask_token_id)",
            m.info.spec
        ))
    })?;
    if spec.is_tidar() {
        return Err(other(format!(
            "model {} is a TiDAR model, whose mask slots need the `tidar` method; pass a masked-diffusion LM",
            m.info.spec
        )));
    }
    if spec.mask_token_id as usize >= m.model.config().vocab_size {
        return Err(other(format!(
            "model {}: mask_token_id {} is outside its vocabulary of {}",
            m.info.spec,
            spec.mask_token_id,
            m.model.config().vocab_size
        )));
    }
    Ok(spec)
}

/// A masked-diffusion model and how to decode with it.
pub struct Dllm {
    model: Arc<Transformer>,
    spec: DiffusionSpec,
    eos_ids: Vec<u32>,
    p: DllmParams,
    gen_length: usize,
    block_length: usize,
    cache: KvCache,
}

impl Dllm {
    pub fn new(
        m: &crate::model::LoadedModel,
        p: DllmParams,
        method: &str,
    ) -> Result<Self, MethodError> {
        let bad = |detail: String| MethodError::Params {
            method: method.into(),
            detail,
        };
        let spec = masked_diffusion_spec(m, method)?;
        let gen_length = p.gen_length.or(spec.trained_gen_len).unwrap_or(256);
        let block_length = match (p.block_length, spec.block_size) {
            (Some(b), Some(s)) if b != s => {
                return Err(bad(format!(
                    "block_length: model {} is a block-diffusion model with blocks of {s}; expected {s} (or leave it unset), got {b}",
                    m.info.spec
                )))
            }
            (Some(b), _) => b,
            (None, Some(s)) => s,
            (None, None) => gen_length,
        };
        if p.cache == CacheMode::Dual && spec.block_size.is_some() {
            return Err(bad(format!(
                "cache: model {} is a block-diffusion model, which sees no later blocks: a dual cache is its prefix cache; expected \"prefix\"",
                m.info.spec
            )));
        }
        if let Some(steps) = p.steps {
            let blocks = gen_length.div_ceil(block_length);
            if steps % blocks != 0 {
                return Err(bad(format!(
                    "steps: {steps} steps do not split evenly over {blocks} blocks (gen_length {gen_length}, block_length {block_length})"
                )));
            }
        }
        Ok(Self {
            cache: m.model.new_cache(256)?,
            model: m.model.clone(),
            spec,
            eos_ids: m.tokenizer.eos_ids.clone(),
            p,
            gen_length,
            block_length,
        })
    }
}

impl Dllm {
    pub fn block_length(&self) -> usize {
        self.block_length
    }
}

/// One masked position's prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Canvas position (0 = the first answer token).
    pub pos: usize,
    pub token: u32,
    /// p of `token` under the model.
    pub prob: f32,
    /// The ranking score of `top-k` (higher commits first).
    pub score: f32,
}

/// LLaDA's schedule: `masked` positions over `steps` steps, the remainder
/// going to the first steps.
pub fn even_split(masked: usize, steps: usize) -> Vec<usize> {
    let steps = steps.max(1);
    let (base, rem) = (masked / steps, masked % steps);
    (0..steps).map(|i| base + usize::from(i < rem)).collect()
}

/// Indices into `cands` to commit, most confident first. Ties go to the
/// leftmost position, so that greedy decoding is deterministic.
pub fn select(cands: &[Candidate], strategy: Strategy, k: usize, tau: f64, f: f64) -> Vec<usize> {
    if cands.is_empty() {
        return vec![];
    }
    let by = |key: fn(&Candidate) -> f32| {
        let mut idx: Vec<usize> = (0..cands.len()).collect();
        idx.sort_by(|&a, &b| {
            key(&cands[b])
                .total_cmp(&key(&cands[a]))
                .then(cands[a].pos.cmp(&cands[b].pos))
        });
        idx
    };
    match strategy {
        Strategy::TopK => {
            let mut idx = by(|c| c.score);
            idx.truncate(k.clamp(1, cands.len()));
            idx
        }
        Strategy::Threshold => {
            let idx = by(|c| c.prob);
            let n = 1 + idx[1..]
                .iter()
                .take_while(|&&i| cands[i].prob as f64 >= tau)
                .count();
            idx[..n].to_vec()
        }
        Strategy::Factor => {
            let idx = by(|c| c.prob);
            let n = idx
                .iter()
                .enumerate()
                .take_while(|(i, &j)| cands[j].prob as f64 >= 1.0 - f / (*i as f64 + 2.0))
                .count()
                .max(1);
            idx[..n].to_vec()
        }
    }
}

/// The prediction at one masked position from its logits row: the mask
/// token itself is never a candidate.
fn candidate(
    pos: usize,
    logits: &mut [f32],
    mask_id: u32,
    p: &DllmParams,
    rng: &mut rand_chacha::ChaCha20Rng,
) -> Candidate {
    logits[mask_id as usize] = f32::NEG_INFINITY;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= sum);
    let token = if p.temperature > 0.0 {
        let t = p.temperature as f32;
        let mut q: Vec<f32> = logits.iter().map(|&l| ((l - max) / t).exp()).collect();
        let s: f32 = q.iter().sum();
        q.iter_mut().for_each(|x| *x /= s);
        crate::sampling::sample_from(&q, rng)
    } else {
        crate::model::argmax(&probs)
    };
    let prob = probs[token as usize];
    let score = match p.confidence {
        Confidence::Random => rng.random::<f32>(),
        Confidence::Confidence => prob,
        Confidence::Margin => {
            let (mut a, mut b) = (0f32, 0f32);
            for &x in &probs {
                if x > a {
                    b = a;
                    a = x;
                } else if x > b {
                    b = x;
                }
            }
            a - b
        }
        Confidence::Entropy => probs
            .iter()
            .filter(|&&x| x > 0.0)
            .map(|&x| x * x.ln())
            .sum::<f32>(),
    };
    Candidate {
        pos,
        token,
        prob,
        score,
    }
}

/// What `learn2pd` adds to the canvas decoder.
#[derive(Default)]
pub(crate) struct Hooks<'a> {
    /// Learn2PD's filter: from the block's top-1 probabilities (1.0 at
    /// committed positions, and past the canvas's end), which positions
    /// are final already; those are committed besides the strategy's picks.
    pub filter: Option<&'a dyn Fn(&[f32]) -> Vec<bool>>,
    /// End-of-text prediction: once an EOS is committed, or is the argmax
    /// at a masked position, every position after it is filled with EOS
    /// and never decoded.
    pub end_of_text: bool,
}

/// What one denoising step decided.
pub struct StepOutcome<'a> {
    /// Committed canvas positions, in commit order.
    pub positions: &'a [u32],
    /// Tokens that became the next part of the answer (the committed
    /// prefix of the canvas grew by these).
    pub tokens: &'a [u32],
    /// The step's predictions at the positions that were masked before
    /// it: (canvas position, token, p of the token).
    pub predictions: &'a [(usize, u32, f32)],
    /// Positions the forward processed.
    pub width: usize,
    pub block: u32,
}

impl Dllm {
    /// Decodes the canvas for `prompt`, calling `on_step` after each
    /// denoising step; it returns false to stop.
    pub(crate) fn decode(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        rng: &mut rand_chacha::ChaCha20Rng,
        hooks: &Hooks<'_>,
        on_step: &mut dyn FnMut(StepOutcome<'_>) -> bool,
    ) -> Result<(), MethodError> {
        let shift = usize::from(self.spec.shift_logits);
        if shift == 1 && prompt.is_empty() {
            return Err(MethodError::Other {
                method: "dllm".into(),
                detail: "a model with shifted logits (Dream, the zoo's) needs a prompt to predict the first token from".into(),
            });
        }
        let gen = self.gen_length.min(max_new);
        let n0 = prompt.len();
        let mask_id = self.spec.mask_token_id;
        let mut seq = prompt.to_vec();
        seq.extend(std::iter::repeat_n(mask_id, gen));
        let mut done = vec![false; gen];
        let mut emitted = 0usize;
        let bl = self.block_length;
        let blocks = gen.div_ceil(bl);
        let attn = match self.spec.block_size {
            Some(size) => Mask::Block { size, start: n0 },
            None => Mask::Bidirectional,
        };
        self.cache.clear();
        for b in 0..blocks {
            let (lo, hi) = (b * bl, ((b + 1) * bl).min(gen));
            // Later blocks are invisible to a block-diffusion model.
            let visible = if self.spec.block_size.is_some() {
                n0 + hi
            } else {
                n0 + gen
            };
            let schedule = match (self.p.tokens_per_step, self.p.steps) {
                (_, Some(steps)) => even_split(hi - lo, steps / blocks),
                (Some(k), None) => even_split(hi - lo, (hi - lo).div_ceil(k)),
                (None, None) => vec![],
            };
            let mut step = 0usize;
            while done[lo..hi].iter().any(|d| !d) {
                let start = if self.p.cache != CacheMode::None && step > 0 {
                    n0 + lo - shift
                } else {
                    0
                };
                // The dual cache forwards the block alone, in place.
                let dual = self.p.cache == CacheMode::Dual && step > 0;
                let end = if dual { n0 + hi } else { visible };
                let masked: Vec<usize> = (lo..hi).filter(|&j| !done[j]).collect();
                let rows: Vec<usize> = masked
                    .iter()
                    .map(|&j| self.spec.predictor_row(n0 + j) - start)
                    .collect();
                let mut req = Forward::causal(&seq[start..end], start)
                    .with_mask(attn.clone())
                    .with_logits(LogitsAt::Rows(rows));
                if dual {
                    req = req.in_place();
                }
                let logits = self
                    .model
                    .forward(&mut self.cache, &req)?
                    .logits
                    .expect("rows were asked for");
                let mut rows: Vec<Vec<f32>> = logits.to_vec2()?;
                let cands: Vec<Candidate> = masked
                    .iter()
                    .zip(rows.iter_mut())
                    .map(|(&j, row)| candidate(j, row, mask_id, &self.p, rng))
                    .collect();
                let k = schedule.get(step).copied().unwrap_or(1);
                let picked = select(&cands, self.p.strategy, k, self.p.threshold, self.p.factor);
                let mut picked = picked;
                if let Some(filter) = hooks.filter {
                    let mut conf = vec![1.0f32; bl];
                    for c in &cands {
                        conf[c.pos - lo] = c.prob;
                    }
                    let accept = filter(&conf);
                    let mut extra: Vec<usize> = (0..cands.len())
                        .filter(|&i| accept[cands[i].pos - lo] && !picked.contains(&i))
                        .collect();
                    extra.sort_by(|&a, &b| cands[b].prob.total_cmp(&cands[a].prob));
                    picked.extend(extra);
                }
                let mut positions = Vec::with_capacity(picked.len());
                for &i in &picked {
                    let c = cands[i];
                    seq[n0 + c.pos] = c.token;
                    done[c.pos] = true;
                    positions.push(c.pos as u32);
                }
                if hooks.end_of_text {
                    let committed =
                        (0..gen).find(|&j| done[j] && self.eos_ids.contains(&seq[n0 + j]));
                    // A predicted EOS counts only where nothing but EOS is
                    // committed after it.
                    let predicted = cands
                        .iter()
                        .filter(|c| !done[c.pos] && self.eos_ids.contains(&c.token))
                        .map(|c| c.pos)
                        .filter(|&p| {
                            (p + 1..gen).all(|j| !done[j] || self.eos_ids.contains(&seq[n0 + j]))
                        })
                        .min();
                    let cut = match (committed, predicted) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    if let Some(cut) = cut {
                        let eos = self.eos_ids[0];
                        for j in cut + 1..gen {
                            if !done[j] {
                                seq[n0 + j] = eos;
                                done[j] = true;
                                positions.push(j as u32);
                            }
                        }
                    }
                }
                let from = emitted;
                while emitted < gen && done[emitted] {
                    emitted += 1;
                }
                let predictions: Vec<(usize, u32, f32)> =
                    cands.iter().map(|c| (c.pos, c.token, c.prob)).collect();
                let go_on = on_step(StepOutcome {
                    positions: &positions,
                    tokens: &seq[n0 + from..n0 + emitted],
                    predictions: &predictions,
                    width: end - start,
                    block: b as u32,
                });
                if !go_on {
                    return Ok(());
                }
                step += 1;
            }
        }
        Ok(())
    }
}

impl Dllm {
    /// Decodes into the probe, one step observation per forward, the
    /// canvas's committed prefix as the step's tokens.
    pub(crate) fn generate_with(
        &mut self,
        prompt: &[u32],
        ctx: &mut GenContext<'_, '_>,
        hooks: &Hooks<'_>,
    ) -> Result<(), MethodError> {
        let max_new = ctx.probe.remaining();
        let probe = &mut *ctx.probe;
        self.decode(prompt, max_new, ctx.rng, hooks, &mut |s| {
            probe.commit(StepObservation {
                kind: StepKind::Decode,
                proposed: 0,
                draft_depth: None,
                accepted: 0,
                tokens: s.tokens,
                target_calls: 1,
                draft_calls: 0,
                verify_width: s.width,
                window: Some(s.block),
                positions: s.positions,
            });
            // The whole canvas is decoded, as LLaDA does, even after the
            // answer's EOS; only an interrupt (or end-of-text prediction,
            // which fills the rest) cuts it short.
            !probe.was_interrupted()
        })?;
        probe.end_of_canvas();
        Ok(())
    }
}

impl Decoder for Dllm {
    fn generate(
        &mut self,
        prompt: &[u32],
        ctx: &mut GenContext<'_, '_>,
    ) -> Result<(), MethodError> {
        self.generate_with(prompt, ctx, &Hooks::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(pos: usize, prob: f32) -> Candidate {
        Candidate {
            pos,
            token: pos as u32,
            prob,
            score: prob,
        }
    }

    #[test]
    fn llada_schedule_splits_evenly() {
        assert_eq!(even_split(32, 11), [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2]);
        assert_eq!(even_split(10, 4), [3, 3, 2, 2]);
        assert_eq!(even_split(4, 4), [1, 1, 1, 1]);
        assert_eq!(even_split(3, 1), [3]);
    }

    #[test]
    fn top_k_takes_the_k_best_leftmost_on_ties() {
        let cands = [c(0, 0.2), c(1, 0.9), c(2, 0.5), c(3, 0.9)];
        assert_eq!(select(&cands, Strategy::TopK, 2, 0.0, 0.0), [1, 3]);
        assert_eq!(select(&cands, Strategy::TopK, 9, 0.0, 0.0), [1, 3, 2, 0]);
        assert_eq!(
            select(&cands, Strategy::TopK, 0, 0.0, 0.0),
            [1],
            "at least one"
        );
    }

    #[test]
    fn threshold_commits_the_best_and_everything_above_tau() {
        let cands = [c(0, 0.95), c(1, 0.3), c(2, 0.91), c(3, 0.89)];
        assert_eq!(select(&cands, Strategy::Threshold, 0, 0.9, 0.0), [0, 2]);
        let low = [c(0, 0.3), c(1, 0.4)];
        assert_eq!(
            select(&low, Strategy::Threshold, 0, 0.9, 0.0),
            [1],
            "top-1 always"
        );
    }

    #[test]
    fn factor_rule_matches_its_definition() {
        // f = 1: c1 >= 1/2, c2 >= 2/3, c3 >= 3/4, c4 >= 4/5.
        let cands = [c(0, 0.7), c(1, 0.99), c(2, 0.76), c(3, 0.78)];
        // Sorted: 0.99, 0.78, 0.76, 0.7 — 0.7 < 0.8 stops at n = 3.
        assert_eq!(select(&cands, Strategy::Factor, 0, 0.0, 1.0), [1, 3, 2]);
        let weak = [c(0, 0.4), c(1, 0.45)];
        assert_eq!(
            select(&weak, Strategy::Factor, 0, 0.0, 1.0),
            [1],
            "at least one"
        );
        // Brute force against the definition on a grid of confidences.
        let probs = [0.99f32, 0.97, 0.9, 0.85, 0.6, 0.3];
        for f in [0.1, 0.5, 1.0, 2.0, 3.0] {
            let cands: Vec<Candidate> = probs.iter().enumerate().map(|(i, &p)| c(i, p)).collect();
            let got = select(&cands, Strategy::Factor, 0, 0.0, f).len();
            let want = (1..=probs.len())
                .filter(|&n| (1..=n).all(|i| probs[i - 1] as f64 >= 1.0 - f / (i as f64 + 1.0)))
                .max()
                .unwrap_or(1);
            assert_eq!(got, want, "f = {f}");
        }
    }

    #[test]
    fn confidences_rank_as_defined() {
        let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(1);
        let p = |conf| DllmParams {
            confidence: conf,
            ..serde_json::from_value(serde_json::json!({})).unwrap()
        };
        // Row 0 is the mask token: its logit is ignored however large.
        let mut row = vec![50.0f32, 2.0, 1.0, 1.0];
        let m = candidate(7, &mut row.clone(), 0, &p(Confidence::Margin), &mut rng);
        assert_eq!((m.pos, m.token), (7, 1));
        let e = std::f32::consts::E;
        let z = e * e + 2.0 * e;
        assert!((m.prob - e * e / z).abs() < 1e-6);
        assert!((m.score - (e * e - e) / z).abs() < 1e-6);
        let h = candidate(7, &mut row, 0, &p(Confidence::Entropy), &mut rng);
        let want: f32 = [e * e / z, e / z, e / z].iter().map(|&x| x * x.ln()).sum();
        assert!((h.score - want).abs() < 1e-6);
    }
}
