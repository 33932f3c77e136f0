//! `eagle`: an EAGLE draft head (Li et al. 2024) drafts from the target's
//! own features, one head layer per draft token.
//!
//! The head reads `(feature at position i, token at i + 1)` pairs and
//! predicts the feature at `i + 1`; the target's LM head turns that into a
//! draft distribution. Its cache holds pairs whose features are the
//! target's (true) ones: drafted pairs are truncated after each step, and
//! the verify forward's features of the accepted tokens are fed next.
//!
//! - `chain` (EAGLE-1 style): `draft_len` tokens, verified as a chain
//!   (greedy prefix match, or the Leviathan/Chen rule when sampling).
//! - `tree` (EAGLE-2's dynamic tree): each depth expands the `tree_top_k`
//!   best nodes by cumulative draft log-probability, `tree_top_k` children
//!   each; the best `total_tokens - 1` of all drafted nodes are verified in
//!   one target forward with a tree mask and depth positions; the accepted
//!   path's KV is compacted into place and the rest dropped.

use std::sync::Arc;

use candle_core::{IndexOp, Tensor};
use serde::{Deserialize, Serialize};

use super::tree::{self, Node};
use super::{Decoder, Exactness, GenContext, MethodError, MethodModels, MethodSpec, Need};
use crate::measure::{Flow, StepKind, StepObservation};
use crate::model::eagle::{EagleHead, HeadForward};
use crate::model::{Forward, HiddenTap, KvCache, LogitsAt, Mask, Transformer};
use crate::sampling::{sample_from, SamplingParams};

pub const SPEC: MethodSpec = MethodSpec {
    id: "eagle",
    description: "EAGLE draft head over the target's features: a chain of draft_len tokens (EAGLE-1) or a dynamic tree (EAGLE-2: top-k expansions, best total_tokens by draft log-prob) verified in one target forward",
    needs: &[Need::DraftHead],
    exactness: Exactness::Lossless,
    resolve_params: super::resolve_with::<EagleParams>,
    build,
    positions_ahead: |p| match p["mode"].as_str() {
        Some("chain") => super::count(p, "draft_len"),
        // The verified tree, or the head's expansion of up to depth − 1
        // levels of top-k slots, whichever is wider.
        _ => Some(
            super::count(p, "total_tokens")?.max(
                super::count(p, "tree_depth")?.saturating_sub(1) * super::count(p, "tree_top_k")?,
            ),
        ),
    },
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EagleMode {
    Chain,
    Tree,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EagleParams {
    #[serde(default = "default_mode")]
    pub mode: EagleMode,
    /// Chain mode: tokens drafted per step.
    #[serde(default = "default_draft_len")]
    pub draft_len: usize,
    /// Tree mode: children per expanded node, and nodes expanded per depth.
    #[serde(default = "default_tree_top_k")]
    pub tree_top_k: usize,
    /// Tree mode: drafting depth (head forwards per step).
    #[serde(default = "default_tree_depth")]
    pub tree_depth: usize,
    /// Tree mode: positions in the verify forward, the root included.
    #[serde(default = "default_total_tokens")]
    pub total_tokens: usize,
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

fn default_mode() -> EagleMode {
    EagleMode::Tree
}
fn default_draft_len() -> usize {
    5
}
fn default_tree_top_k() -> usize {
    10
}
fn default_tree_depth() -> usize {
    7
}
fn default_total_tokens() -> usize {
    60
}
fn one() -> f64 {
    1.0
}

fn build(
    params: &serde_json::Value,
    models: &MethodModels<'_>,
) -> Result<Box<dyn Decoder>, MethodError> {
    let p: EagleParams = super::params_of("eagle", params)?;
    let sampling = SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
    };
    let bad = |detail: String| MethodError::Params {
        method: "eagle".into(),
        detail,
    };
    sampling.validate().map_err(bad)?;
    for (field, v) in [
        ("draft_len", p.draft_len),
        ("tree_top_k", p.tree_top_k),
        ("tree_depth", p.tree_depth),
    ] {
        if v == 0 {
            return Err(bad(format!("{field}: expected at least 1, got 0")));
        }
    }
    if p.total_tokens < 2 {
        return Err(bad(format!(
            "total_tokens: expected at least 2 (the root and one draft), got {}",
            p.total_tokens
        )));
    }
    let head = models.head.ok_or_else(|| MethodError::Missing {
        method: "eagle".into(),
        need: "an EAGLE draft head".into(),
        hint: "pass --draft-head DIR (a head folder in the EAGLE layout, such as models/toy/toy-eagle)"
            .into(),
    })?;
    let target = models.target.model.clone();
    head.head.check_target(&target, &head.info.spec)?;
    Ok(Box::new(Eagle {
        target_cache: target.new_cache(1024)?,
        head_cache: head.head.new_cache(1024)?,
        head: head.head.clone(),
        target,
        p,
        sampling,
    }))
}

pub struct Eagle {
    target: Arc<Transformer>,
    head: Arc<EagleHead>,
    target_cache: KvCache,
    head_cache: KvCache,
    p: EagleParams,
    sampling: SamplingParams,
}

/// Head pairs whose features are the target's, not yet in the head's
/// cache: `tokens[i]` follows the position of `features` row i.
struct Pending {
    features: Tensor,
    tokens: Vec<u32>,
}

const FINAL: &[HiddenTap] = &[HiddenTap::Final];

impl Eagle {
    /// Feeds `pending` into the head's cache and returns the head's
    /// prediction after its last pair, `[1, hidden]`.
    fn feed(&mut self, pending: &Pending) -> Result<Tensor, MethodError> {
        let start = self.head_cache.len();
        let h = self.head.forward(
            &self.target,
            &mut self.head_cache,
            &HeadForward {
                tokens: &pending.tokens,
                features: &pending.features,
                start,
                mask: Mask::Causal,
                positions: None,
            },
        )?;
        let n = pending.tokens.len();
        Ok(h.narrow(0, n - 1, 1)?)
    }

    /// Draft log-probabilities `[rows][vocab]` from head features.
    fn draft_rows(&self, feats: &Tensor) -> Result<Vec<Vec<f32>>, MethodError> {
        let logits = self.target.project(feats)?;
        let mut out = Vec::with_capacity(logits.dim(0)?);
        for r in 0..logits.dim(0)? {
            out.push(logits.i(r)?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// One chain step: returns the emitted tokens (accepted drafts and the
    /// next token), the new pending pairs and the step's counts.
    fn chain_step(
        &mut self,
        last: u32,
        pending: &Pending,
        k: usize,
        ctx: &mut GenContext<'_, '_>,
    ) -> Result<(Vec<u32>, Pending, StepCounts), MethodError> {
        let greedy = self.sampling.is_greedy();
        let keep = self.head_cache.len() + pending.tokens.len();
        let mut drafts = Vec::with_capacity(k);
        let mut q = Vec::with_capacity(k);
        // The pending pairs go in even when nothing is drafted: the head's
        // cache must keep up with the target's.
        let mut feat = self.feed(pending)?;
        for j in 0..k {
            let rows = self.draft_rows(&feat)?;
            let row = &rows[0];
            let d = if greedy {
                crate::model::argmax(row)
            } else {
                let dist = self.sampling.distribution(row);
                let d = sample_from(&dist, ctx.rng);
                q.push(dist);
                d
            };
            drafts.push(d);
            if j + 1 < k {
                feat = self.feed(&Pending {
                    features: feat,
                    tokens: vec![d],
                })?;
            }
        }
        self.head_cache.truncate(keep)?;
        ctx.probe.mark_draft_done();
        let (v, hidden) = super::chain::verify_chain_with_taps(
            &self.target,
            &mut self.target_cache,
            last,
            &drafts,
            (!greedy).then_some(q.as_slice()),
            FINAL,
            &self.sampling,
            ctx.rng,
        )?;
        let v = v.verdict;
        let mut emitted = drafts[..v.accepted].to_vec();
        emitted.push(v.next);
        let next = Pending {
            features: hidden[0].narrow(0, 0, v.accepted + 1)?,
            tokens: emitted.clone(),
        };
        let counts = StepCounts {
            proposed: k,
            draft_depth: None,
            accepted: v.accepted,
            draft_calls: k as u32,
            verify_width: k + 1,
        };
        Ok((emitted, next, counts))
    }

    /// One tree step (EAGLE-2).
    fn tree_step(
        &mut self,
        last: u32,
        pending: &Pending,
        depth: usize,
        ctx: &mut GenContext<'_, '_>,
    ) -> Result<(Vec<u32>, Pending, StepCounts), MethodError> {
        let k = self.p.tree_top_k;
        let prefix = self.head_cache.len() + pending.tokens.len();
        // The root pair's position; a node at depth d is expanded at
        // root_pos + d.
        let root_pos = prefix - 1;
        let root_feat = self.feed(pending)?;
        let root_lp = tree::log_softmax(&self.draft_rows(&root_feat)?[0]);
        let mut nodes: Vec<Node> = tree::top_k(&root_lp, k)
            .into_iter()
            .map(|(token, lp)| Node {
                token,
                parent: None,
                depth: 1,
                score: lp,
            })
            .collect();
        // Per node: its head cache index and predicted feature, once
        // expanded.
        let mut head_slot: Vec<Option<usize>> = vec![None; nodes.len()];
        let mut feat_of: Vec<Option<Tensor>> = vec![None; nodes.len()];
        let mut frontier: Vec<usize> = (0..nodes.len()).collect();
        let mut draft_calls = 1u32;
        for d in 1..depth {
            if frontier.is_empty() {
                break;
            }
            let start = self.head_cache.len();
            let n = frontier.len();
            let mut feats = Vec::with_capacity(n);
            for &f in &frontier {
                feats.push(match nodes[f].parent {
                    None => root_feat.clone(),
                    Some(p) => feat_of[p].clone().expect("parents are expanded first"),
                });
            }
            let feats = Tensor::cat(&feats, 0)?;
            let tokens: Vec<u32> = frontier.iter().map(|&f| nodes[f].token).collect();
            let mut mask = crate::model::ExplicitMask::new(n, start + n);
            for (r, &f) in frontier.iter().enumerate() {
                for c in 0..prefix {
                    mask.set(r, c, true);
                }
                mask.set(r, start + r, true);
                let mut a = nodes[f].parent;
                while let Some(j) = a {
                    mask.set(r, head_slot[j].expect("ancestors are expanded"), true);
                    a = nodes[j].parent;
                }
            }
            let positions = vec![(root_pos + d) as u32; n];
            let out = self.head.forward(
                &self.target,
                &mut self.head_cache,
                &HeadForward {
                    tokens: &tokens,
                    features: &feats,
                    start,
                    mask: Mask::Explicit(mask),
                    positions: Some(&positions),
                },
            )?;
            draft_calls += 1;
            let rows = self.draft_rows(&out)?;
            let mut children = Vec::with_capacity(n * k);
            for (r, &f) in frontier.iter().enumerate() {
                head_slot[f] = Some(start + r);
                feat_of[f] = Some(out.i(r..r + 1)?);
                let lp = tree::log_softmax(&rows[r]);
                for (token, l) in tree::top_k(&lp, k) {
                    children.push(Node {
                        token,
                        parent: Some(f),
                        depth: d + 1,
                        score: nodes[f].score + l,
                    });
                }
            }
            let first_child = nodes.len();
            nodes.extend(children);
            head_slot.resize(nodes.len(), None);
            feat_of.resize(nodes.len(), None);
            let mut next: Vec<usize> = (first_child..nodes.len()).collect();
            next.sort_by(|&a, &b| nodes[b].score.total_cmp(&nodes[a].score).then(a.cmp(&b)));
            next.truncate(k);
            frontier = next;
        }
        self.head_cache.truncate(prefix)?;
        let chosen = tree::select(&nodes, self.p.total_tokens - 1);
        ctx.probe.mark_draft_done();

        // Verify the root and the chosen nodes in one forward.
        let base = self.target_cache.len();
        let mut chunk = Vec::with_capacity(chosen.len() + 1);
        chunk.push(last);
        chunk.extend(chosen.iter().map(|n| n.token));
        let positions = tree::verify_positions(base, &chosen);
        let out = self.target.forward(
            &mut self.target_cache,
            &Forward {
                tokens: &chunk,
                start: base,
                mask: Mask::Explicit(tree::verify_mask(base, &chosen)),
                positions: Some(&positions),
                logits: LogitsAt::All,
                taps: FINAL,
                rows_exact: true,
                in_place: false,
            },
        )?;
        let logits = out.logits.expect("all logits");
        let verdict = if self.sampling.is_greedy() {
            tree::greedy_path(&chosen, &super::argmax_per_row(&logits)?)
        } else {
            let sampling = self.sampling.clone();
            let mut err = None;
            let v = tree::sampled_path(
                &chosen,
                &mut |row| match logits.i(row).and_then(|r| r.to_vec1::<f32>()) {
                    Ok(r) => sampling.distribution(&r),
                    Err(e) => {
                        err = Some(e);
                        vec![1.0]
                    }
                },
                ctx.rng,
            );
            if let Some(e) = err {
                return Err(e.into());
            }
            v
        };
        // Keep the root's and the path's KV, in order, and drop the rest.
        let rows: Vec<usize> = std::iter::once(0)
            .chain(verdict.path.iter().map(|&i| i + 1))
            .collect();
        let keep: Vec<usize> = rows.iter().map(|&r| base + r).collect();
        self.target_cache.compact(base, &keep)?;
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let features =
            out.hidden[0].index_select(&Tensor::new(idx.as_slice(), out.hidden[0].device())?, 0)?;
        let mut emitted: Vec<u32> = verdict.path.iter().map(|&i| chosen[i].token).collect();
        emitted.push(verdict.next);
        let counts = StepCounts {
            proposed: chosen.len(),
            draft_depth: Some(chosen.iter().map(|n| n.depth).max().unwrap_or(0)),
            accepted: verdict.path.len(),
            draft_calls,
            verify_width: chunk.len(),
        };
        Ok((
            emitted.clone(),
            Pending {
                features,
                tokens: emitted,
            },
            counts,
        ))
    }
}

struct StepCounts {
    proposed: usize,
    /// Tree steps: the longest path drafted.
    draft_depth: Option<usize>,
    accepted: usize,
    draft_calls: u32,
    verify_width: usize,
}

impl Decoder for Eagle {
    fn generate(
        &mut self,
        prompt: &[u32],
        ctx: &mut GenContext<'_, '_>,
    ) -> Result<(), MethodError> {
        self.head_cache.clear();
        let (first, flow, hidden) = super::chain::prefill_with_taps(
            &self.target,
            &mut self.target_cache,
            prompt,
            FINAL,
            &self.sampling,
            ctx,
        )?;
        if flow == Flow::Stop {
            return Ok(());
        }
        let mut tokens = prompt[1..].to_vec();
        tokens.push(first);
        let mut pending = Pending {
            features: hidden.into_iter().next().expect("the final tap"),
            tokens,
        };
        let mut last = first;
        loop {
            // Drafts past the budget would be discarded: draft fewer.
            let room = ctx.probe.remaining().saturating_sub(1);
            let (emitted, next, counts) = match self.p.mode {
                // With one token left, a chain of no drafts: the target's
                // next token.
                EagleMode::Chain | EagleMode::Tree if room == 0 => {
                    self.chain_step(last, &pending, 0, ctx)?
                }
                EagleMode::Chain => {
                    self.chain_step(last, &pending, self.p.draft_len.min(room), ctx)?
                }
                EagleMode::Tree => {
                    self.tree_step(last, &pending, self.p.tree_depth.min(room), ctx)?
                }
            };
            debug_assert_eq!(
                self.head_cache.len() + next.tokens.len(),
                self.target_cache.len()
            );
            pending = next;
            last = *emitted.last().expect("a step emits a token");
            let flow = ctx.probe.commit(StepObservation {
                kind: StepKind::Decode,
                proposed: counts.proposed,
                draft_depth: counts.draft_depth,
                accepted: counts.accepted,
                tokens: &emitted,
                target_calls: 1,
                draft_calls: counts.draft_calls,
                verify_width: counts.verify_width,
                window: None,
                positions: &[],
            });
            if flow == Flow::Stop {
                return Ok(());
            }
        }
    }
}
