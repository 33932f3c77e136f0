//! Training objectives: how a batch of (prompt, answer) pairs becomes a
//! loss, and how a trained model decodes for the final evaluation. Each is
//! one entry of [`OBJECTIVES`]; adding one (EAGLE heads, consistency
//! training, ...) is a new struct implementing [`Objective`] and a line in
//! the table.

use candle_core::{DType, Device, Tensor, D};
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

pub trait Objective: Sync {
    /// The loss terms of a (micro-)batch; `rng` draws its noise.
    fn loss(
        &self,
        model: &Transformer,
        batch: &[&Pair],
        sp: Specials,
        p: &ObjectiveParams,
        rng: &mut ChaCha20Rng,
    ) -> candle_core::Result<LossTerms>;

    /// Greedy decoding of one prompt for evaluation, `tokens_per_step`
    /// tokens committed per forward where the objective decodes in
    /// parallel. Returns the answer ids (no EOS) and the forwards used.
    fn decode(
        &self,
        model: &Transformer,
        prompt: &[u32],
        sp: Specials,
        p: &ObjectiveParams,
        max_new: usize,
        tokens_per_step: usize,
    ) -> Result<(Vec<u32>, usize), crate::model::ModelError>;

    /// Tokens per step at which the final evaluation reports scores.
    fn eval_parallelism(&self, p: &ObjectiveParams) -> Vec<usize>;
}

pub struct ObjectiveEntry {
    pub name: &'static str,
    pub description: &'static str,
    pub objective: &'static dyn Objective,
}

pub static OBJECTIVES: &[ObjectiveEntry] = &[
    ObjectiveEntry {
        name: "ar",
        description: "next-token cross-entropy on the answer (and its EOS)",
        objective: &Ar,
    },
    ObjectiveEntry {
        name: "masked-diffusion",
        description: "LLaDA-style: bidirectional; t~U(0,1), each answer-region token masked with probability t, cross-entropy on masked tokens weighted 1/t",
        objective: &MaskedDiffusion { block: false },
    },
    ObjectiveEntry {
        name: "block-diffusion",
        description: "masked diffusion on one answer block at a time under the block mask (causal across blocks, bidirectional inside)",
        objective: &MaskedDiffusion { block: true },
    },
];

pub fn find(name: &str) -> Option<&'static ObjectiveEntry> {
    OBJECTIVES.iter().find(|o| o.name == name)
}

const NEG: f32 = -1e4;

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

/// Pads rows to one length; returns ids `[b, t]`.
fn pad_rows(rows: &[Vec<u32>], pad: u32, dev: &Device) -> candle_core::Result<(Tensor, usize)> {
    let t = rows.iter().map(Vec::len).max().unwrap_or(1);
    let mut flat = Vec::with_capacity(rows.len() * t);
    for r in rows {
        flat.extend_from_slice(r);
        flat.extend(std::iter::repeat_n(pad, t - r.len()));
    }
    Ok((Tensor::from_vec(flat, (rows.len(), t), dev)?, t))
}

/// `[b, 1, t, t]` attention bias: `mask` per row, pad keys hidden.
fn bias(masks: &[Mask], lens: &[usize], t: usize, dev: &Device) -> candle_core::Result<Tensor> {
    let mut v = Vec::with_capacity(masks.len() * t * t);
    for (m, &len) in masks.iter().zip(lens) {
        for q in 0..t {
            for k in 0..t {
                let ok = k < len && m.allows(0, q, k);
                // A padded query with no visible key would be NaN: let it see
                // position 0; its loss weight is zero.
                let ok = ok || (q >= len && k == 0);
                v.push(if ok { 0.0 } else { NEG });
            }
        }
    }
    Tensor::from_vec(v, (masks.len(), 1, t, t), dev)
}

pub struct Ar;

impl Objective for Ar {
    fn loss(
        &self,
        model: &Transformer,
        batch: &[&Pair],
        sp: Specials,
        _: &ObjectiveParams,
        _: &mut ChaCha20Rng,
    ) -> candle_core::Result<LossTerms> {
        let dev = model.device();
        let mut inputs = Vec::new();
        let mut lens = Vec::new();
        for p in batch {
            let mut seq = p.prompt.clone();
            seq.extend_from_slice(&p.answer);
            seq.push(sp.eos);
            seq.pop(); // inputs stop before the last target
            lens.push(seq.len());
            inputs.push(seq);
        }
        let (ids, t) = pad_rows(&inputs, sp.pad, dev)?;
        let masks = vec![Mask::Causal; batch.len()];
        let b = bias(&masks, &lens, t, dev)?;
        let logits = model
            .forward_train(&ids, &b)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut targets = Vec::with_capacity(batch.len() * t);
        let mut weights = Vec::with_capacity(batch.len() * t);
        let mut count = 0usize;
        for p in batch {
            let mut seq = p.prompt.clone();
            seq.extend_from_slice(&p.answer);
            seq.push(sp.eos);
            for j in 0..t {
                // Position j predicts seq[j + 1]; only answer tokens count.
                let target = seq.get(j + 1).copied();
                let on = j + 1 >= p.prompt.len() && target.is_some();
                targets.push(target.unwrap_or(sp.pad));
                weights.push(if on { 1.0 } else { 0.0 });
                count += usize::from(on);
            }
        }
        weighted_ce(&logits, &targets, &weights, count.max(1) as f64)
    }

    fn decode(
        &self,
        model: &Transformer,
        prompt: &[u32],
        sp: Specials,
        _: &ObjectiveParams,
        max_new: usize,
        _: usize,
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
    fn loss(
        &self,
        model: &Transformer,
        batch: &[&Pair],
        sp: Specials,
        p: &ObjectiveParams,
        rng: &mut ChaCha20Rng,
    ) -> candle_core::Result<LossTerms> {
        let dev = model.device();
        let g = p.gen_len;
        let mut noisy = Vec::new();
        let mut clean = Vec::new();
        let mut weights_per = Vec::new();
        let mut masks = Vec::new();
        let mut lens = Vec::new();
        for pair in batch {
            if pair.answer.len() + 1 > g {
                candle_core::bail!(
                    "an answer of {} tokens does not fit gen_len {g} (answer plus EOS)",
                    pair.answer.len()
                );
            }
            let mut seq = pair.prompt.clone();
            seq.extend_from_slice(&pair.answer);
            seq.resize(pair.prompt.len() + g, sp.eos);
            let t: f64 = rng.random_range(1e-3..1.0);
            // Which answer positions take part: all, or one block.
            let (lo, hi) = if self.block {
                let blocks = g.div_ceil(p.block_size);
                let k = rng.random_range(0..blocks);
                (k * p.block_size, ((k + 1) * p.block_size).min(g))
            } else {
                (0, g)
            };
            let mut x = seq.clone();
            let mut w = vec![0f32; seq.len()];
            let mut any = false;
            for j in lo..hi {
                if rng.random_bool(t) {
                    x[pair.prompt.len() + j] = sp.mask;
                    w[pair.prompt.len() + j] = (1.0 / t) as f32;
                    any = true;
                }
            }
            if !any {
                let j = rng.random_range(lo..hi);
                x[pair.prompt.len() + j] = sp.mask;
                w[pair.prompt.len() + j] = (1.0 / t) as f32;
            }
            masks.push(self.mask_for(pair.prompt.len(), p));
            lens.push(seq.len());
            noisy.push(x);
            clean.push(seq);
            weights_per.push(w);
        }
        let (ids, t) = pad_rows(&noisy, sp.pad, dev)?;
        let b = bias(&masks, &lens, t, dev)?;
        let logits = model
            .forward_train(&ids, &b)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut targets = Vec::with_capacity(batch.len() * t);
        let mut weights = Vec::with_capacity(batch.len() * t);
        for (seq, w) in clean.iter().zip(&weights_per) {
            for j in 0..t {
                targets.push(seq.get(j).copied().unwrap_or(sp.pad));
                weights.push(w.get(j).copied().unwrap_or(0.0));
            }
        }
        let span = if self.block { p.block_size } else { g };
        weighted_ce(&logits, &targets, &weights, (batch.len() * span) as f64)
    }

    fn decode(
        &self,
        model: &Transformer,
        prompt: &[u32],
        sp: Specials,
        p: &ObjectiveParams,
        max_new: usize,
        tokens_per_step: usize,
    ) -> Result<(Vec<u32>, usize), crate::model::ModelError> {
        let g = p.gen_len.min(max_new.max(1));
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
                    .with_logits(LogitsAt::Rows((n0 + lo..n0 + hi).collect()));
                let logits = model.forward(&mut cache, &req)?.logits.expect("rows");
                calls += 1;
                let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_dtype(DType::F32)?;
                let rows: Vec<Vec<f32>> = probs.to_vec2()?;
                let mut cands: Vec<(f32, usize, u32)> = Vec::new();
                for (i, row) in rows.iter().enumerate() {
                    if seq[n0 + lo + i] != sp.mask {
                        continue;
                    }
                    let tok = crate::model::backbone::argmax(row);
                    cands.push((row[tok as usize], lo + i, tok));
                }
                cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                for &(_, j, tok) in cands.iter().take(tokens_per_step.max(1)) {
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
}
