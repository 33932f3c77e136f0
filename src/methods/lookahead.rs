//! `lookahead`: Lookahead decoding (Fu et al. 2024), greedy.
//!
//! One target forward carries two branches under one explicit mask:
//! - the lookahead branch, a staircase of `ngram - 1` levels of `window`
//!   Jacobi guesses (level `l`, column `j` sits at offset `1 + j + l`
//!   after the last token and sees level 0 up to column `j`, then its own
//!   column up to level `l`), whose top level the model extends by one
//!   token per column; each column plus that token is an n-gram for the
//!   pool, which keeps the `guesses` most recent n-grams per first token;
//! - the verification branch: up to `guesses` pooled n-grams that start
//!   with the last token, each a causal chain after it. The longest prefix
//!   that matches the target's argmax is kept, plus the target's next
//!   token, and the cache keeps only that chain's positions.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::verify::greedy_accepted;
use super::{Decoder, Exactness, GenContext, MethodError, MethodModels, MethodSpec};
use crate::measure::{Flow, StepKind, StepObservation};
use crate::model::{ExplicitMask, Forward, KvCache, LogitsAt, Mask, Transformer};
use crate::sampling::SamplingParams;

pub const SPEC: MethodSpec = MethodSpec {
    id: "lookahead",
    description: "Lookahead decoding: Jacobi lookahead branch and n-gram verification branch in one forward under a custom mask (greedy only)",
    needs: &[],
    exactness: Exactness::Lossless,
    resolve_params: super::resolve_with::<LookaheadParams>,
    build,
    // One forward: the last token, window × (ngram − 1) lookahead slots
    // and guesses × (ngram − 1) verification slots.
    positions_ahead: |p| {
        let n = super::count(p, "ngram")?.saturating_sub(1);
        Some(n * (super::count(p, "window")? + super::count(p, "guesses")?) + 1)
    },
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookaheadParams {
    /// Columns of the lookahead window (W).
    #[serde(default = "default_window")]
    pub window: usize,
    /// N-gram size (N): the window has N - 1 levels.
    #[serde(default = "default_ngram")]
    pub ngram: usize,
    /// N-grams verified per step, and kept per first token in the pool (G).
    #[serde(default = "default_guesses")]
    pub guesses: usize,
}

fn default_window() -> usize {
    7
}
fn default_ngram() -> usize {
    5
}
fn default_guesses() -> usize {
    7
}

fn build(
    params: &serde_json::Value,
    models: &MethodModels<'_>,
) -> Result<Box<dyn Decoder>, MethodError> {
    let p: LookaheadParams = super::params_of("lookahead", params)?;
    let bad = |detail: &str| MethodError::Params {
        method: "lookahead".into(),
        detail: detail.into(),
    };
    if p.window == 0 {
        return Err(bad("window: expected at least 1, got 0"));
    }
    if p.ngram < 2 {
        return Err(bad("ngram: expected at least 2"));
    }
    let model = models.target.model.clone();
    Ok(Box::new(Lookahead {
        cache: model.new_cache(1024)?,
        model,
        p,
    }))
}

pub struct Lookahead {
    model: Arc<Transformer>,
    cache: KvCache,
    p: LookaheadParams,
}

/// N-grams by first token, at most `cap` per key, least recently seen
/// evicted first.
#[derive(Debug, Default)]
pub struct NgramPool {
    cap: usize,
    map: HashMap<u32, VecDeque<Vec<u32>>>,
}

impl NgramPool {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            map: HashMap::new(),
        }
    }

    /// Records `rest` as following `key`; a repeat moves to the front.
    pub fn insert(&mut self, key: u32, rest: Vec<u32>) {
        if self.cap == 0 {
            return;
        }
        let q = self.map.entry(key).or_default();
        if let Some(i) = q.iter().position(|r| *r == rest) {
            q.remove(i);
        } else if q.len() == self.cap {
            q.pop_front();
        }
        q.push_back(rest);
    }

    /// The n-grams after `key`, most recent first.
    pub fn get(&self, key: u32) -> Vec<&[u32]> {
        self.map
            .get(&key)
            .map(|q| q.iter().rev().map(Vec::as_slice).collect())
            .unwrap_or_default()
    }
}

impl Decoder for Lookahead {
    fn generate(
        &mut self,
        prompt: &[u32],
        ctx: &mut GenContext<'_, '_>,
    ) -> Result<(), MethodError> {
        let (w, levels_max) = (self.p.window, self.p.ngram - 1);
        let (first, mut flow) = super::chain::prefill(
            &self.model,
            &mut self.cache,
            prompt,
            &SamplingParams::default(),
            ctx,
        )?;
        // Level 0 starts as tokens drawn from the prompt; higher levels
        // fill one per step.
        let mut levels: Vec<Vec<u32>> = vec![(0..w)
            .map(|_| prompt[ctx.rng.random_range(0..prompt.len())])
            .collect()];
        let mut pool = NgramPool::new(self.p.guesses);
        let mut last = first;
        while flow == Flow::Continue {
            let p = self.cache.len();
            let budget = ctx.probe.remaining().saturating_sub(1);
            let cands: Vec<Vec<u32>> = pool
                .get(last)
                .into_iter()
                .take(self.p.guesses)
                .map(|c| c[..c.len().min(budget)].to_vec())
                .filter(|c| !c.is_empty())
                .collect();

            // Inputs, rope positions and the mask of both branches.
            let n_look = levels.len() * w;
            let rows = 1 + n_look + cands.iter().map(Vec::len).sum::<usize>();
            let mut tokens = Vec::with_capacity(rows);
            let mut positions = Vec::with_capacity(rows);
            let mut mask = ExplicitMask::new(rows, p + rows);
            let prefix = |mask: &mut ExplicitMask, r: usize| {
                for k in 0..=p {
                    mask.set(r, k, true);
                }
            };
            tokens.push(last);
            positions.push(p as u32);
            prefix(&mut mask, 0);
            let row_of = |l: usize, j: usize| 1 + l * w + j;
            for (l, level) in levels.iter().enumerate() {
                for (j, &t) in level.iter().enumerate() {
                    let r = row_of(l, j);
                    tokens.push(t);
                    positions.push((p + 1 + j + l) as u32);
                    prefix(&mut mask, r);
                    for jj in 0..=j {
                        mask.set(r, p + row_of(0, jj), true);
                    }
                    for ll in 1..=l {
                        mask.set(r, p + row_of(ll, j), true);
                    }
                }
            }
            let mut cand_rows = Vec::with_capacity(cands.len());
            for c in &cands {
                let first_row = tokens.len();
                for (i, &t) in c.iter().enumerate() {
                    let r = first_row + i;
                    tokens.push(t);
                    positions.push((p + 1 + i) as u32);
                    prefix(&mut mask, r);
                    for rr in first_row..=r {
                        mask.set(r, p + rr, true);
                    }
                }
                cand_rows.push(first_row);
            }
            let top = levels.len() - 1;
            let mut want: Vec<usize> = vec![0];
            want.extend((0..w).map(|j| row_of(top, j)));
            for (c, &r0) in cands.iter().zip(&cand_rows) {
                want.extend(r0..r0 + c.len());
            }
            ctx.probe.mark_draft_done();
            let out = self.model.forward(
                &mut self.cache,
                &Forward::causal(&tokens, p)
                    .with_mask(Mask::Explicit(mask))
                    .with_positions(&positions)
                    .with_logits(LogitsAt::Rows(want.clone())),
            )?;
            let choice = super::argmax_per_row(&out.logits.expect("rows"))?;
            let next_after_last = choice[0];
            let new_top: Vec<u32> = choice[1..1 + w].to_vec();

            // Verification: the candidate with the longest matching prefix.
            let mut best = (0usize, None::<usize>, next_after_last);
            let mut at = 1 + w;
            for (ci, c) in cands.iter().enumerate() {
                let mut target_next = vec![next_after_last];
                target_next.extend_from_slice(&choice[at..at + c.len()]);
                at += c.len();
                let a = greedy_accepted(c, &target_next);
                if a > best.0 {
                    best = (a, Some(ci), target_next[a]);
                }
            }
            let (accepted, which, bonus) = best;
            let mut emitted = Vec::with_capacity(accepted + 1);
            let mut keep = Vec::with_capacity(accepted);
            if let Some(ci) = which {
                emitted.extend_from_slice(&cands[ci][..accepted]);
                keep.extend((0..accepted).map(|i| p + cand_rows[ci] + i));
            }
            emitted.push(bonus);
            self.cache.compact(p + 1, &keep)?;

            // Lookahead: collect the columns' n-grams once the window is
            // full, then slide the levels.
            if levels.len() == levels_max {
                for j in 0..w {
                    let mut gram: Vec<u32> = levels.iter().map(|lv| lv[j]).collect();
                    gram.push(new_top[j]);
                    let key = gram.remove(0);
                    pool.insert(key, gram);
                }
                levels.remove(0);
            }
            levels.push(new_top);

            flow = ctx.probe.commit(StepObservation {
                kind: StepKind::Decode,
                proposed: cands.iter().map(Vec::len).max().unwrap_or(0),
                draft_depth: None,
                accepted,
                tokens: &emitted,
                target_calls: 1,
                draft_calls: 0,
                verify_width: rows,
                window: None,
                positions: &[],
            });
            last = bonus;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::NgramPool;

    #[test]
    fn the_pool_keeps_the_most_recent_per_key() {
        let mut pool = NgramPool::new(2);
        pool.insert(1, vec![2, 3]);
        pool.insert(1, vec![4, 5]);
        assert_eq!(pool.get(1), vec![&[4, 5][..], &[2, 3][..]]);
        // A repeat is refreshed, not duplicated.
        pool.insert(1, vec![2, 3]);
        assert_eq!(pool.get(1), vec![&[2, 3][..], &[4, 5][..]]);
        // A third n-gram evicts the least recent.
        pool.insert(1, vec![6, 7]);
        assert_eq!(pool.get(1), vec![&[6, 7][..], &[2, 3][..]]);
        assert!(pool.get(9).is_empty());
    }
}
