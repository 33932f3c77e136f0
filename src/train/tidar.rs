//! The `tidar` objective (TiDAR, Liu et al. 2025): one model learns AR
//! next-token prediction on the clean sequence and one-step block
//! diffusion on a fully masked copy of the answer in the same forward.
//!
//! A row is `[prompt, answer, EOS | masks over answer and EOS]`. Clean
//! tokens attend causally and predict the next token. The masked copy sits
//! at the positions of the tokens it hides (rope positions repeat), cut
//! into blocks of `block_size` at a random phase (so that blocks may start
//! anywhere, as they do when decoding); a block sees the clean tokens
//! before its first position and itself, and each slot predicts its own
//! position. Loss = (α·L_AR + L_diff)/(1 + α), both means over the answer
//! and its EOS.

use rand::Rng;
use rand_chacha::ChaCha20Rng;

use super::objective::{EvalDecoding, Objective, ObjectiveParams, Pair, Specials, TokenBatch};
use crate::methods::tidar::{pass, Layout};
use crate::model::mask::{ExplicitMask, Mask};
use crate::model::{Forward, ModelError, Transformer};

pub struct TidarObjective;

/// The mask of one row: `n` clean positions, then one mask slot per
/// answer position j, in block `blocks[j]`, which starts at position
/// `starts[j]`.
fn row_mask(n: usize, starts: &[usize], blocks: &[usize]) -> Mask {
    let g = starts.len();
    let len = n + g;
    let mut m = ExplicitMask::new(len, len);
    for q in 0..n {
        for k in 0..=q {
            m.set(q, k, true);
        }
    }
    for j in 0..g {
        let q = n + j;
        for k in 0..starts[j] {
            m.set(q, k, true);
        }
        for (i, &b) in blocks.iter().enumerate() {
            if b == blocks[j] {
                m.set(q, n + i, true);
            }
        }
    }
    Mask::Explicit(m)
}

impl Objective for TidarObjective {
    fn token_batch(
        &self,
        batch: &[&Pair],
        sp: Specials,
        p: &ObjectiveParams,
        rng: &mut ChaCha20Rng,
    ) -> candle_core::Result<TokenBatch> {
        let bs = p.block_size.max(2);
        let alpha = p.tidar_alpha as f32;
        let mut rows = Vec::with_capacity(batch.len());
        let mut masks = Vec::with_capacity(batch.len());
        let mut positions = Vec::with_capacity(batch.len());
        let mut targets = Vec::with_capacity(batch.len());
        let mut count = 0usize;
        for pair in batch {
            let a0 = pair.prompt.len();
            if a0 == 0 {
                candle_core::bail!("tidar rows need a prompt before the answer");
            }
            let mut clean = pair.prompt.clone();
            clean.extend_from_slice(&pair.answer);
            clean.push(sp.eos);
            let n = clean.len();
            let g = n - a0;
            count += g;
            // Block of answer offset j, at a random phase.
            let phase = rng.random_range(0..bs);
            let blocks: Vec<usize> = (0..g).map(|j| (j + phase) / bs).collect();
            let starts: Vec<usize> = (0..g)
                .map(|j| {
                    let first = (blocks[j] * bs).saturating_sub(phase);
                    a0 + first
                })
                .collect();
            let mut row = clean.clone();
            row.extend(std::iter::repeat_n(sp.mask, g));
            let mut pos: Vec<u32> = (0..n as u32).collect();
            pos.extend((a0..n).map(|q| q as u32));
            let mut t = vec![(sp.pad, 0f32); n + g];
            // AR: position q predicts q + 1, on the answer and EOS.
            for q in a0 - 1..n - 1 {
                t[q] = (clean[q + 1], alpha);
            }
            // Diffusion: each slot predicts the token it hides.
            for j in 0..g {
                t[n + j] = (clean[a0 + j], 1.0);
            }
            masks.push(row_mask(n, &starts, &blocks));
            rows.push(row);
            positions.push(pos);
            targets.push(t);
        }
        Ok(TokenBatch {
            rows,
            masks,
            positions: Some(positions),
            targets,
            norm: (1.0 + p.tidar_alpha) * count.max(1) as f64,
        })
    }

    /// `tokens_per_step` 1 decodes as plain AR (the model's own AR mode);
    /// more runs TiDAR passes with that many drafts.
    fn decode(
        &self,
        model: &Transformer,
        prompt: &[u32],
        sp: Specials,
        p: &ObjectiveParams,
        max_new: usize,
        d: &mut EvalDecoding<'_>,
    ) -> Result<(Vec<u32>, usize), ModelError> {
        if d.tokens_per_step <= 1 {
            return super::objective::Ar.decode(model, prompt, sp, p, max_new, d);
        }
        let layout = Layout {
            block: p.block_size,
            draft_len: d.tokens_per_step.min(p.block_size - 1),
            mask_id: sp.mask,
        };
        let mut cache = model.new_cache(prompt.len() + max_new + 64)?;
        let out = model.forward(&mut cache, &Forward::causal(prompt, 0))?;
        let mut last = crate::model::argmax_rows(&out.logits.expect("last logits"))?[0];
        let mut calls = 1;
        let mut answer = Vec::new();
        let mut drafts: Vec<u32> = Vec::new();
        while last != sp.eos && answer.len() < max_new {
            answer.push(last);
            let room = max_new - answer.len();
            drafts.truncate(room);
            let base = cache.len();
            let o = pass(model, &mut cache, last, &drafts, layout)?;
            calls += 1;
            let next = crate::model::argmax_rows(&o.causal)?;
            let a = crate::methods::verify::greedy_accepted(&drafts, &next);
            cache.truncate(base + 1 + a)?;
            for &t in &drafts[..a] {
                if t == sp.eos || answer.len() >= max_new {
                    return Ok((answer, calls));
                }
                answer.push(t);
            }
            last = next[a];
            drafts = crate::model::argmax_rows(&o.slots[a])?;
        }
        Ok((answer, calls))
    }

    fn eval_parallelism(&self, p: &ObjectiveParams) -> Vec<usize> {
        vec![1, p.block_size.max(2) - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_slot_sees_the_clean_tokens_before_its_block_and_its_block() {
        // Prompt of 2, answer of 3 plus EOS; blocks of 2 at phase 1: the
        // slots of answer offsets 0 | 1 2 | 3 start at positions 2, 3, 5.
        let m = row_mask(6, &[2, 3, 3, 5], &[0, 1, 1, 2]);
        let sees = |q: usize| -> Vec<usize> { (0..10).filter(|&k| m.allows(0, q, k)).collect() };
        assert_eq!(sees(3), [0, 1, 2, 3], "clean rows are causal");
        assert_eq!(sees(6), [0, 1, 6]);
        assert_eq!(sees(7), [0, 1, 2, 7, 8]);
        assert_eq!(sees(8), [0, 1, 2, 7, 8]);
        assert_eq!(sees(9), [0, 1, 2, 3, 4, 9]);
    }

    #[test]
    fn rows_carry_both_losses_over_the_answer() {
        let sp = Specials {
            pad: 0,
            eos: 2,
            mask: 3,
        };
        let pair = Pair {
            prompt: vec![10, 11, 12],
            answer: vec![20, 21],
        };
        let p = ObjectiveParams {
            block_size: 2,
            tidar_alpha: 0.5,
            ..Default::default()
        };
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let tb = TidarObjective
            .token_batch(&[&pair], sp, &p, &mut rng)
            .unwrap();
        assert_eq!(tb.rows[0], [10, 11, 12, 20, 21, 2, 3, 3, 3]);
        assert_eq!(
            tb.positions.as_ref().unwrap()[0],
            [0, 1, 2, 3, 4, 5, 3, 4, 5]
        );
        let t = &tb.targets[0];
        // AR: rows 2..5 predict the answer and EOS, weighted alpha.
        assert_eq!(&t[2..5], &[(20, 0.5), (21, 0.5), (2, 0.5)]);
        assert_eq!(t[5].1, 0.0);
        // Diffusion: each slot its own position's token.
        assert_eq!(&t[6..], &[(20, 1.0), (21, 1.0), (2, 1.0)]);
        assert_eq!(tb.norm, 1.5 * 3.0);
    }
}
