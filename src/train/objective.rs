//! Training objectives: how a batch of (prompt, answer) pairs becomes a
//! loss, and how a trained model decodes for the final evaluation. Each is
//! one entry of [`OBJECTIVES`]; adding one (EAGLE heads, consistency
//! training, ...) is a new struct implementing [`Objective`] and a line in
//! the table.

use candle_core::{DType, Tensor, D};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha20Rng;

use crate::model::backbone::{Forward, LogitsAt};
use crate::model::mask::Mask;
use crate::model::Transformer;

/// One tokenized training pair.
#[derive(Debug, Clone)]
pub struct Pair {
    pub prompt: Vec<u32>,
    pub answer: Vec<u32>,
}

/// Token ids an objective needs.
#[derive(Debug, Clone, Copy)]
pub struct Specials {
    pub pad: u32,
    pub eos: u32,
    pub mask: u32,
}

/// Objective settings from the recipe.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveParams {
    /// Answer region of diffusion models, in tokens (answer, then EOS fill).
    #[serde(default = "default_gen_len")]
    pub gen_len: usize,
    /// Block size of block diffusion.
    #[serde(default = "default_block")]
    pub block_size: usize,
    /// Diffusion models: position i's output predicts the token at i + 1
    /// (Dream's convention, natural for a model adapted from an AR one)
    /// instead of the token at i (LLaDA's).
    #[serde(default)]
    pub shift_logits: bool,
    /// Consistency training: tokens per Jacobi window.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Consistency training: training prompts per task whose Jacobi
    /// trajectories are collected.
    #[serde(default = "default_trajectory_prompts")]
    pub trajectory_prompts: usize,
    /// Consistency training: label smoothing of the AR term (CLLM: 0.1).
    #[serde(default = "default_label_smoothing")]
    pub label_smoothing: f64,
    /// `learn2pd`: hidden units of the filter MLP.
    #[serde(default = "default_filter_hidden")]
    pub filter_hidden: usize,
    /// `tidar`: weight of the AR loss against the diffusion loss (α).
    #[serde(default = "default_one")]
    pub tidar_alpha: f64,
    /// `deer`: training prompts per task the target answers (the distilled
    /// data).
    #[serde(default = "default_distill_prompts")]
    pub distill_prompts: usize,
    /// `deer`: Stage II weight base; position i after the boundary of R
    /// masked positions weighs α^(R−i) (DEER: 1.01).
    #[serde(default = "default_deer_alpha")]
    pub deer_alpha: f64,
    /// `deer`: the fraction of steps that run Stage II (the rest, first,
    /// Stage I).
    #[serde(default = "default_half")]
    pub stage2_fraction: f64,
}

fn default_one() -> f64 {
    1.0
}
fn default_half() -> f64 {
    0.5
}
fn default_deer_alpha() -> f64 {
    1.01
}
fn default_distill_prompts() -> usize {
    500
}

fn default_filter_hidden() -> usize {
    64
}

fn default_label_smoothing() -> f64 {
    0.1
}

fn default_window() -> usize {
    16
}
fn default_trajectory_prompts() -> usize {
    64
}

fn default_gen_len() -> usize {
    40
}
fn default_block() -> usize {
    4
}

impl Default for ObjectiveParams {
    fn default() -> Self {
        Self {
            gen_len: default_gen_len(),
            block_size: default_block(),
            shift_logits: false,
            window: default_window(),
            trajectory_prompts: default_trajectory_prompts(),
            label_smoothing: default_label_smoothing(),
            filter_hidden: default_filter_hidden(),
            tidar_alpha: default_one(),
            distill_prompts: default_distill_prompts(),
            deer_alpha: default_deer_alpha(),
            stage2_fraction: default_half(),
        }
    }
}

/// A batch's loss as a weighted sum and its normaliser, so that a step
/// cut into micro-batches has exactly the loss of the whole batch:
/// `Σ sum / Σ norm`.
pub struct LossTerms {
    pub sum: Tensor,
    pub norm: f64,
}

/// What a token-level objective asks of the model: token rows (each with
/// its attention mask and, optionally, rope positions), and per position
/// a target id and loss weight. The loss is `Σ weight·(−log p(target))`
/// over `norm`.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    pub rows: Vec<Vec<u32>>,
    pub masks: Vec<Mask>,
    /// Rope positions per row; `None` means `0..len` for every row.
    pub positions: Option<Vec<Vec<u32>>>,
    /// Per row and position: (target id, weight); weight 0 means none.
    pub targets: Vec<Vec<(u32, f32)>>,
    pub norm: f64,
}

/// A [`TokenBatch`] padded to one length, as flat row-major arrays.
pub struct Padded {
    pub rows: usize,
    pub len: usize,
    pub ids: Vec<u32>,
    /// `rows × len × len`: 0 where a query sees a key, [`NEG`] where not.
    pub bias: Vec<f32>,
    pub positions: Vec<u32>,
    pub targets: Vec<u32>,
    pub weights: Vec<f32>,
}

impl TokenBatch {
    pub fn padded(&self, pad: u32) -> Padded {
        let rows = self.rows.len();
        let len = self.rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut ids = Vec::with_capacity(rows * len);
        let mut positions = Vec::with_capacity(rows * len);
        let mut targets = Vec::with_capacity(rows * len);
        let mut weights = Vec::with_capacity(rows * len);
        let mut bias = Vec::with_capacity(rows * len * len);
        for (r, row) in self.rows.iter().enumerate() {
            let n = row.len();
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(pad, len - n));
            match &self.positions {
                Some(p) => positions.extend_from_slice(&p[r]),
                None => positions.extend(0..n as u32),
            }
            positions.extend(std::iter::repeat_n(0, len - n));
            for j in 0..len {
                let (t, w) = self.targets[r].get(j).copied().unwrap_or((pad, 0.0));
                targets.push(t);
                weights.push(w);
            }
            for q in 0..len {
                for k in 0..len {
                    let ok = k < n && q < n && self.masks[r].allows(0, q, k);
                    // A padded query with no visible key would be NaN: let
                    // it see position 0; its loss weight is zero.
                    let ok = ok || (q >= n && k == 0);
                    bias.push(if ok { 0.0 } else { NEG });
                }
            }
        }
        Padded {
            rows,
            len,
            ids,
            bias,
            positions,
            targets,
            weights,
        }
    }
}

/// The loss terms of a token batch through candle's autograd (any device).
pub fn autograd_loss(
    model: &Transformer,
    tb: &TokenBatch,
    pad: u32,
) -> candle_core::Result<LossTerms> {
    let dev = model.device();
    let p = tb.padded(pad);
    let ids = Tensor::from_vec(p.ids, (p.rows, p.len), dev)?;
    let bias = Tensor::from_vec(p.bias, (p.rows, 1, p.len, p.len), dev)?;
    let pos = match tb.positions {
        Some(_) => Some(Tensor::from_vec(p.positions, (p.rows, p.len), dev)?),
        None => None,
    };
    let logits = model
        .forward_train(&ids, &bias, pos.as_ref())
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    weighted_ce(&logits, &p.targets, &p.weights, tb.norm)
}

pub trait Objective: Sync {
    /// A (micro-)batch as token rows with per-position targets and loss
    /// weights; `rng` draws its noise. The trainer computes the loss from
    /// it (see [`TokenBatch`]).
    fn token_batch(
        &self,
        batch: &[&Pair],
        sp: Specials,
        p: &ObjectiveParams,
        rng: &mut ChaCha20Rng,
    ) -> candle_core::Result<TokenBatch>;

    /// Decoding of one prompt for evaluation, `d.tokens_per_step` tokens
    /// committed per forward where the objective decodes in parallel.
    /// Returns the answer ids (no EOS) and the forwards used.
    fn decode(
        &self,
        model: &Transformer,
        prompt: &[u32],
        sp: Specials,
        p: &ObjectiveParams,
        max_new: usize,
        d: &mut EvalDecoding<'_>,
    ) -> Result<(Vec<u32>, usize), crate::model::ModelError>;

    /// Tokens per step at which the final evaluation reports scores.
    fn eval_parallelism(&self, p: &ObjectiveParams) -> Vec<usize>;

    /// Tokens per step at which the whole answer region is decoded in one
    /// forward, where the objective can (full-attention diffusion).
    fn full_parallelism(&self, _: &ObjectiveParams) -> Option<usize> {
        None
    }
}

/// How the evaluation decodes: tokens per step, and greedy or sampled
/// (temperature 1, from `sample`'s stream).
pub struct EvalDecoding<'a> {
    pub tokens_per_step: usize,
    pub sample: Option<&'a mut ChaCha20Rng>,
}

impl EvalDecoding<'_> {
    pub fn greedy(tokens_per_step: usize) -> Self {
        EvalDecoding {
            tokens_per_step,
            sample: None,
        }
    }

    /// The token picked from a row of probabilities, and its probability.
    fn pick(&mut self, row: &[f32]) -> (u32, f32) {
        let tok = match self.sample.as_deref_mut() {
            None => crate::model::backbone::argmax(row),
            Some(rng) => {
                let u: f32 = rng.random_range(0.0..1.0);
                let mut acc = 0.0;
                let mut pick = row.len() - 1;
                for (i, &p) in row.iter().enumerate() {
                    acc += p;
                    if u < acc {
                        pick = i;
                        break;
                    }
                }
                pick as u32
            }
        };
        (tok, row[tok as usize])
    }
}

pub struct ObjectiveEntry {
    pub name: &'static str,
    pub description: &'static str,
    pub trains: Trains,
}

/// What an objective trains.
pub enum Trains {
    /// The recipe's model (from `[model]`, or from `init`).
    Model(&'static dyn Objective),
    /// An EAGLE draft head against the frozen model named by the recipe's
    /// `target` (see [`super::head`]).
    EagleHead,
    /// The `init` model, on its own Jacobi trajectories (see
    /// [`super::consistency`]).
    Consistency,
    /// A Learn2PD filter for the `init` diffusion LM (see
    /// [`super::filter`]).
    Learn2pdFilter,
    /// A diffusion drafter (the recipe's model, from `init`) aligned to the
    /// frozen `target` on its own answers (see [`super::deer`]).
    Deer,
}

pub static OBJECTIVES: &[ObjectiveEntry] = &[
    ObjectiveEntry {
        name: "ar",
        description: "next-token cross-entropy on the answer (and its EOS)",
        trains: Trains::Model(&Ar),
    },
    ObjectiveEntry {
        name: "masked-diffusion",
        description: "LLaDA-style: bidirectional; t~U(0,1), each answer-region token masked with probability t, cross-entropy on masked tokens weighted 1/t",
        trains: Trains::Model(&MaskedDiffusion { block: false }),
    },
    ObjectiveEntry {
        name: "block-diffusion",
        description: "masked diffusion on one answer block at a time under the block mask (causal across blocks, bidirectional inside)",
        trains: Trains::Model(&MaskedDiffusion { block: true }),
    },
    ObjectiveEntry {
        name: "eagle",
        description: "an EAGLE draft head for the frozen `target`: smooth-L1 regression of the target's next feature plus 0.1 x cross-entropy against the target's next-token distribution, through the target's LM head",
        trains: Trains::EagleHead,
    },
    ObjectiveEntry {
        name: "consistency",
        description: "CLLM: Jacobi trajectories of the init model on training prompts; 10 x AR loss (label smoothing 0.1) + global consistency (cross-entropy from a trajectory state to the model's own output at the fixed point)",
        trains: Trains::Consistency,
    },
    ObjectiveEntry {
        name: "tidar",
        description: "TiDAR: the clean sequence under a causal mask with AR loss, plus a fully masked copy of the answer in blocks of block_size (each block sees the clean tokens before it, bidirectional inside, every slot predicting its own position) with diffusion loss; loss = (tidar_alpha * L_AR + L_diff) / (1 + tidar_alpha)",
        trains: Trains::Model(&super::tidar::TidarObjective),
    },
    ObjectiveEntry {
        name: "deer",
        description: "DEER's two-stage alignment of a diffusion drafter (init) to a frozen AR target: the target's greedy answers to training prompts; Stage I truncates an answer at random and masks the continuation with noise level t (weights 1/t), Stage II masks the whole continuation with weights deer_alpha^(R-i) decaying from the boundary",
        trains: Trains::Deer,
    },
    ObjectiveEntry {
        name: "learn2pd",
        description: "a Learn2PD filter for the `init` diffusion LM: its baseline decoding (top-1 per step) replayed, each masked position labelled by whether its argmax is already the final token; binary cross-entropy from the block's top-1 probabilities",
        trains: Trains::Learn2pdFilter,
    },
];

pub fn find(name: &str) -> Option<&'static ObjectiveEntry> {
    OBJECTIVES.iter().find(|o| o.name == name)
}

/// The attention bias of a hidden key.
pub(crate) const NEG: f32 = -1e4;

/// Weighted token cross-entropy: `sum(w * nll)` over `norm`.
fn weighted_ce(
    logits: &Tensor,
    targets: &[u32],
    weights: &[f32],
    norm: f64,
) -> candle_core::Result<LossTerms> {
    let dev = logits.device();
    let v = logits.dim(D::Minus1)?;
    let flat = logits.reshape(((), v))?;
    let logp = candle_nn::ops::log_softmax(&flat, D::Minus1)?;
    let n = targets.len();
    let t = Tensor::from_slice(targets, (n, 1), dev)?;
    let nll = logp.gather(&t, 1)?.squeeze(1)?.neg()?;
    let w = Tensor::from_slice(weights, n, dev)?;
    Ok(LossTerms {
        sum: (nll * w)?.sum_all()?,
        norm,
    })
}

pub struct Ar;

impl Objective for Ar {
    fn token_batch(
        &self,
        batch: &[&Pair],
        sp: Specials,
        _: &ObjectiveParams,
        _: &mut ChaCha20Rng,
    ) -> candle_core::Result<TokenBatch> {
        let mut rows = Vec::with_capacity(batch.len());
        let mut targets = Vec::with_capacity(batch.len());
        let mut count = 0usize;
        for p in batch {
            let mut seq = p.prompt.clone();
            seq.extend_from_slice(&p.answer);
            seq.push(sp.eos);
            // Position j predicts seq[j + 1]; only answer tokens (and EOS)
            // count.
            let t: Vec<(u32, f32)> = (0..seq.len() - 1)
                .map(|j| {
                    let on = j + 1 >= p.prompt.len();
                    count += usize::from(on);
                    (seq[j + 1], if on { 1.0 } else { 0.0 })
                })
                .collect();
            seq.pop();
            rows.push(seq);
            targets.push(t);
        }
        Ok(TokenBatch {
            masks: vec![Mask::Causal; rows.len()],
            rows,
            positions: None,
            targets,
            norm: count.max(1) as f64,
        })
    }

    fn decode(
        &self,
        model: &Transformer,
        prompt: &[u32],
        sp: Specials,
        _: &ObjectiveParams,
        max_new: usize,
        _: &mut EvalDecoding<'_>,
    ) -> Result<(Vec<u32>, usize), crate::model::ModelError> {
        let mut cache = model.new_cache(prompt.len() + max_new)?;
        let out = model.forward(&mut cache, &Forward::causal(prompt, 0))?;
        let mut next = crate::model::backbone::argmax_rows(&out.logits.expect("last logits"))?[0];
        let mut answer = Vec::new();
        let mut calls = 1;
        while next != sp.eos && answer.len() < max_new {
            answer.push(next);
            let pos = prompt.len() + answer.len() - 1;
            let out = model.forward(&mut cache, &Forward::causal(&[next], pos))?;
            calls += 1;
            next = crate::model::backbone::argmax_rows(&out.logits.expect("last logits"))?[0];
        }
        Ok((answer, calls))
    }

    fn eval_parallelism(&self, _: &ObjectiveParams) -> Vec<usize> {
        vec![1]
    }
}

/// The attention mask of vectorised block-diffusion training over
/// `[prompt (n0), noisy answer (g), clean answer (g)]`: the prompt is one
/// bidirectional block; a noisy block sees the prompt, the clean blocks
/// before it and itself; a clean block sees the prompt and the clean
/// blocks up to itself.
fn vectorised_block_mask(n0: usize, g: usize, bs: usize) -> Mask {
    let n = n0 + 2 * g;
    // (is clean, block) of a position past the prompt.
    let at = |i: usize| {
        if i < n0 + g {
            (false, (i - n0) / bs)
        } else {
            (true, (i - n0 - g) / bs)
        }
    };
    let mut m = crate::model::mask::ExplicitMask::new(n, n);
    for q in 0..n {
        for k in 0..n {
            let ok = if k < n0 {
                true
            } else if q < n0 {
                false
            } else {
                match (at(q), at(k)) {
                    ((false, bq), (false, bk)) => bq == bk,
                    ((false, bq), (true, bk)) => bk < bq,
                    ((true, bq), (true, bk)) => bk <= bq,
                    ((true, _), (false, _)) => false,
                }
            };
            m.set(q, k, ok);
        }
    }
    Mask::Explicit(m)
}

pub struct MaskedDiffusion {
    /// Block diffusion: one block at a time under the block mask.
    pub block: bool,
}

impl MaskedDiffusion {
    fn mask_for(&self, prompt_len: usize, p: &ObjectiveParams) -> Mask {
        if self.block {
            Mask::Block {
                size: p.block_size,
                start: prompt_len,
            }
        } else {
            Mask::Bidirectional
        }
    }
}

impl Objective for MaskedDiffusion {
    fn token_batch(
        &self,
        batch: &[&Pair],
        sp: Specials,
        p: &ObjectiveParams,
        rng: &mut ChaCha20Rng,
    ) -> candle_core::Result<TokenBatch> {
        let g = p.gen_len;
        let shift = usize::from(p.shift_logits);
        let bs = if self.block { p.block_size } else { g };
        let blocks = g.div_ceil(bs);
        let mut rows = Vec::with_capacity(batch.len());
        let mut positions = Vec::with_capacity(batch.len());
        let mut masks = Vec::with_capacity(batch.len());
        let mut targets_per = Vec::with_capacity(batch.len());
        // Noise levels are stratified over the rows (MDLM's low-discrepancy
        // sampler): row i of n draws t from the i-th of n equal slices of
        // (0, 1), which keeps the 1/t-weighted loss of a batch from
        // swinging with a few rows of tiny t.
        // Which slice each row takes is shuffled, so that noise does not
        // follow the micro-batch's length order.
        let strata: Vec<(f64, Vec<usize>)> = (0..blocks)
            .map(|_| {
                let mut order: Vec<usize> = (0..batch.len()).collect();
                order.shuffle(rng);
                (rng.random_range(0.0..1.0), order)
            })
            .collect();
        let n_rows = batch.len() as f64;
        for (i, pair) in batch.iter().enumerate() {
            if pair.answer.len() + 1 > g {
                candle_core::bail!(
                    "an answer of {} tokens does not fit gen_len {g} (answer plus EOS)",
                    pair.answer.len()
                );
            }
            let n0 = pair.prompt.len();
            if shift == 1 && n0 == 0 {
                candle_core::bail!("shifted logits need a prompt before the answer");
            }
            let mut clean = pair.answer.clone();
            clean.resize(g, sp.eos);
            // Noise: one t per block (the whole region is one block
            // without block diffusion), each token masked with
            // probability t, its loss weighted 1/t.
            let mut noisy = clean.clone();
            let mut weight = vec![0f32; g];
            for (b, (u, order)) in strata.iter().enumerate() {
                let t = 1e-3 + (1.0 - 1e-3) * ((order[i] as f64 + u) / n_rows);
                for j in b * bs..((b + 1) * bs).min(g) {
                    if rng.random_bool(t) {
                        noisy[j] = sp.mask;
                        weight[j] = (1.0 / t) as f32;
                    }
                }
            }
            if !weight.iter().any(|&w| w > 0.0) {
                let j = rng.random_range(0..g);
                noisy[j] = sp.mask;
                weight[j] = 1.0;
            }
            let mut row = pair.prompt.clone();
            row.extend_from_slice(&noisy);
            let mut pos: Vec<u32> = (0..(n0 + g) as u32).collect();
            // The logits row that predicts answer position j.
            let mut predictor: Vec<usize> = (0..g).map(|j| n0 + j - shift).collect();
            let mask = if self.block {
                // BD3-LM's vectorised form: every block is noised at once,
                // and a clean copy of the answer (at the same positions)
                // follows, so that noisy block k sees clean blocks < k as
                // it does when decoding.
                row.extend_from_slice(&clean);
                pos.extend((n0..n0 + g).map(|q| q as u32));
                if shift == 1 {
                    // A block's first token is predicted by the clean last
                    // token of the block before.
                    for b in 1..blocks {
                        predictor[b * bs] = n0 + g + b * bs - 1;
                    }
                }
                vectorised_block_mask(n0, g, bs)
            } else {
                Mask::Bidirectional
            };
            let mut targets = vec![(sp.pad, 0f32); row.len()];
            for j in 0..g {
                targets[predictor[j]] = (clean[j], weight[j]);
            }
            rows.push(row);
            positions.push(pos);
            masks.push(mask);
            targets_per.push(targets);
        }
        Ok(TokenBatch {
            rows,
            masks,
            // Rope positions differ from 0..len only in the vectorised
            // block form.
            positions: self.block.then_some(positions),
            targets: targets_per,
            norm: (batch.len() * g) as f64,
        })
    }

    fn decode(
        &self,
        model: &Transformer,
        prompt: &[u32],
        sp: Specials,
        p: &ObjectiveParams,
        max_new: usize,
        d: &mut EvalDecoding<'_>,
    ) -> Result<(Vec<u32>, usize), crate::model::ModelError> {
        let g = p.gen_len.min(max_new.max(1));
        let shift = usize::from(p.shift_logits);
        if shift == 1 && prompt.is_empty() {
            return Err(crate::model::ModelError::BadRequest(
                "a model with shifted logits needs a prompt to predict the first token from".into(),
            ));
        }
        let mut seq = prompt.to_vec();
        seq.extend(std::iter::repeat_n(sp.mask, g));
        let n0 = prompt.len();
        let span = if self.block { p.block_size } else { g };
        let mut calls = 0;
        let mut lo = 0;
        while lo < g {
            let hi = (lo + span).min(g);
            // Earlier blocks are final; later ones are not visible (block)
            // or still masked (full diffusion).
            let visible = if self.block { n0 + hi } else { seq.len() };
            while seq[n0 + lo..n0 + hi].contains(&sp.mask) {
                let mut cache = model.new_cache(visible)?;
                let req = Forward::causal(&seq[..visible], 0)
                    .with_mask(self.mask_for(n0, p))
                    .with_logits(LogitsAt::Rows((n0 + lo - shift..n0 + hi - shift).collect()));
                let logits = model.forward(&mut cache, &req)?.logits.expect("rows");
                calls += 1;
                let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_dtype(DType::F32)?;
                let rows: Vec<Vec<f32>> = probs.to_vec2()?;
                let mut cands: Vec<(f32, usize, u32)> = Vec::new();
                for (i, row) in rows.iter().enumerate() {
                    if seq[n0 + lo + i] != sp.mask {
                        continue;
                    }
                    let (tok, prob) = d.pick(row);
                    cands.push((prob, lo + i, tok));
                }
                cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                for &(_, j, tok) in cands.iter().take(d.tokens_per_step.max(1)) {
                    seq[n0 + j] = tok;
                }
            }
            lo = hi;
        }
        let answer: Vec<u32> = seq[n0..]
            .iter()
            .copied()
            .take_while(|&t| t != sp.eos)
            .collect();
        Ok((answer, calls))
    }

    fn eval_parallelism(&self, p: &ObjectiveParams) -> Vec<usize> {
        let span = if self.block { p.block_size } else { p.gen_len };
        let mut v = vec![1, 2, 4, 8];
        v.retain(|&k| k < span);
        v.push(span);
        v
    }

    fn full_parallelism(&self, p: &ObjectiveParams) -> Option<usize> {
        (!self.block).then_some(p.gen_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sampled_picks_follow_the_probabilities() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut d = EvalDecoding {
            tokens_per_step: 1,
            sample: Some(&mut rng),
        };
        let row = [0.1f32, 0.6, 0.3];
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            let (t, p) = d.pick(&row);
            assert_eq!(p, row[t as usize]);
            counts[t as usize] += 1;
        }
        for (c, p) in counts.iter().zip(row) {
            let f = *c as f32 / 20_000.0;
            assert!((f - p).abs() < 0.015, "{counts:?}");
        }
        assert_eq!(EvalDecoding::greedy(1).pick(&row), (1, 0.6));
    }

    /// Prompt of 2, answer of 4 in blocks of 2: noisy block k sees the
    /// prompt, clean blocks < k and itself; clean blocks are block-causal.
    #[test]
    fn the_vectorised_block_mask_shows_each_noisy_block_the_clean_past() {
        let Mask::Explicit(m) = vectorised_block_mask(2, 4, 2) else {
            panic!("an explicit mask")
        };
        let row = |q: usize| -> Vec<usize> { (0..10).filter(|&k| m.get(q, k)).collect() };
        assert_eq!(row(0), vec![0, 1]); // prompt
        assert_eq!(row(2), vec![0, 1, 2, 3]); // noisy block 0
        assert_eq!(row(4), vec![0, 1, 4, 5, 6, 7]); // noisy block 1: clean block 0
        assert_eq!(row(6), vec![0, 1, 6, 7]); // clean block 0
        assert_eq!(row(9), vec![0, 1, 6, 7, 8, 9]); // clean block 1
    }
}
