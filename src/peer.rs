//! pdbench's greedy tokens beside a peer implementation's on the same GGUF
//! (llama.cpp, through scripts/peer/llama_greedy_ids.cpp).
//!
//! Two correct implementations that sum in different orders part at near
//! ties, so "the same tokens" is judged position by position with the
//! peer's tokens fed back (teacher forcing): every position is compared,
//! not only those before the first parting, and each parting is reported
//! with both sides' margins. A parting is a near tie when both margins are
//! within [`NEAR_TIE_LOGITS`]; anything else is a disagreement.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::model::{self, Forward, LoadedModel, LogitsAt};

/// The largest logit margin at which two correct implementations may choose
/// differently: well above the differences in the peer's own logits between
/// its batched and one-token prompt evaluation (up to 0.13 on the 0.5B),
/// and well below the margins of settled choices.
pub const NEAR_TIE_LOGITS: f64 = 0.5;

/// A peer's greedy continuation of one prompt (one line of
/// llama_greedy_ids's output).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerCase {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    /// `one_token_at_a_time` or `batch`.
    pub prompt_eval: String,
    pub ids: Vec<u32>,
    /// Top-1 minus top-2 logit of each choice.
    pub margins: Vec<f32>,
    /// The five largest (id, logit) pairs of each choice.
    pub top: Vec<Vec<(u32, f32)>>,
}

/// A fixture file: the peer's cases on one model, and where they were made.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTokens {
    pub model: String,
    pub gguf_sha256: String,
    pub peer: String,
    pub command: String,
    pub cpu_model: String,
    pub cpu_simd_flags: Vec<String>,
    pub machine: String,
    pub cases: Vec<PeerCase>,
}

impl PeerTokens {
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let t: Self = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected the JSON of scripts/peer/llamacpp-fixtures.sh",
                path.display()
            )
        })?;
        for (i, c) in t.cases.iter().enumerate() {
            if c.ids.len() != c.margins.len()
                || c.ids.len() != c.top.len()
                || c.prompt_ids.is_empty()
            {
                bail!(
                    "{}: case {i}: expected non-empty prompt_ids and one margin and one top list per id",
                    path.display()
                );
            }
        }
        Ok(t)
    }
}

/// A position where pdbench's choice differs from the peer's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parting {
    pub case: usize,
    /// Index among the generated tokens.
    pub position: usize,
    pub peer_token: u32,
    pub our_token: u32,
    /// The peer's logit of its token minus its logit of ours (its top-2
    /// margin when ours is not in its top 5).
    pub peer_margin: f64,
    /// Our logit of our token minus our logit of the peer's.
    pub our_margin: f64,
    pub near_tie: bool,
}

/// How pdbench's greedy choices compare with a peer's on one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerComparison {
    pub cases: usize,
    pub positions: usize,
    /// Cases whose free-running greedy tokens equal the peer's (no parting).
    pub identical_cases: usize,
    /// Per case, the first position where free-running decoding would part
    /// (the first parting under teacher forcing), if any.
    pub first_parting: Vec<Option<usize>>,
    pub partings: Vec<Parting>,
    /// The largest |ours − peer's| over the peer's top-5 logits at every
    /// position: how closely the two compute the same numbers.
    pub max_logit_diff: f64,
    pub mean_logit_diff: f64,
}

impl PeerComparison {
    /// True when every parting is a near tie.
    pub fn agrees(&self) -> bool {
        self.partings.iter().all(|p| p.near_tie)
    }

    /// One line per parting, for test failures and the check's output.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} of {} cases token-identical; {} positions; logits over the peer's top 5 differ by {:.3} at most ({:.4} mean)",
            self.identical_cases, self.cases, self.positions, self.max_logit_diff, self.mean_logit_diff
        );
        for p in &self.partings {
            s += &format!(
                "\n  case {} position {}: peer {} (its margin {:.4}) vs ours {} (our margin {:.4}): {}",
                p.case,
                p.position,
                p.peer_token,
                p.peer_margin,
                p.our_token,
                p.our_margin,
                if p.near_tie { "near tie" } else { "DISAGREEMENT" }
            );
        }
        s
    }
}

/// Compares `m`'s greedy choices with the peer's on every case, feeding
/// the peer's tokens back.
pub fn compare(m: &LoadedModel, peer: &PeerTokens) -> Result<PeerComparison> {
    let vocab = m.info.config.vocab_size;
    let mut out = PeerComparison {
        cases: peer.cases.len(),
        positions: 0,
        identical_cases: 0,
        first_parting: Vec::new(),
        partings: Vec::new(),
        max_logit_diff: 0.0,
        mean_logit_diff: 0.0,
    };
    let (mut diff_sum, mut diff_n) = (0f64, 0usize);
    for (ci, case) in peer.cases.iter().enumerate() {
        if let Some(&bad) = case
            .prompt_ids
            .iter()
            .chain(&case.ids)
            .find(|&&t| t as usize >= vocab)
        {
            bail!("case {ci}: token id {bad} is outside the model's vocabulary of {vocab}: tokens for another model?");
        }
        let n = case.ids.len();
        let mut seq = case.prompt_ids.clone();
        seq.extend_from_slice(&case.ids[..n.saturating_sub(1)]);
        let mut cache = m.model.new_cache(seq.len() + 1)?;
        // Every row with the arithmetic of a single-token step.
        let fwd = m.model.forward(
            &mut cache,
            &Forward::causal(&seq, 0).with_logits(LogitsAt::All),
        )?;
        let logits: Vec<Vec<f32>> = fwd
            .logits
            .context("a forward that asked for logits")?
            .to_dtype(DType::F32)?
            .to_vec2()?;
        let first = case.prompt_ids.len() - 1;
        let mut first_parting = None;
        for i in 0..n {
            let row = &logits[first + i];
            for &(id, peer_logit) in &case.top[i] {
                let d = (row[id as usize] as f64 - peer_logit as f64).abs();
                out.max_logit_diff = out.max_logit_diff.max(d);
                diff_sum += d;
                diff_n += 1;
            }
            let ours = model::argmax(row);
            let theirs = case.ids[i];
            if ours != theirs {
                let peer_margin = case.top[i]
                    .iter()
                    .find(|(id, _)| *id == ours)
                    .map(|&(_, l)| case.top[i][0].1 as f64 - l as f64)
                    .unwrap_or(case.margins[i] as f64);
                let our_margin = row[ours as usize] as f64 - row[theirs as usize] as f64;
                first_parting.get_or_insert(i);
                out.partings.push(Parting {
                    case: ci,
                    position: i,
                    peer_token: theirs,
                    our_token: ours,
                    peer_margin,
                    our_margin,
                    near_tie: peer_margin <= NEAR_TIE_LOGITS && our_margin <= NEAR_TIE_LOGITS,
                });
            }
        }
        out.positions += n;
        out.identical_cases += usize::from(first_parting.is_none());
        out.first_parting.push(first_parting);
    }
    out.mean_logit_diff = diff_sum / diff_n.max(1) as f64;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_fixtures_name_the_file_and_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"model\": 3}").unwrap();
        let e = format!("{:#}", PeerTokens::read(&bad).unwrap_err());
        assert!(
            e.contains("bad.json") && e.contains("llamacpp-fixtures.sh"),
            "{e}"
        );

        let short = dir.path().join("short.json");
        let case = serde_json::json!({
            "prompt": "p", "prompt_ids": [1], "prompt_eval": "batch",
            "ids": [2, 3], "margins": [0.5], "top": [[[2, 1.0]], [[3, 1.0]]],
        });
        let file = serde_json::json!({
            "model": "m", "gguf_sha256": "x", "peer": "p", "command": "c", "cpu_model": "cpu",
            "cpu_simd_flags": [], "machine": "x86_64", "cases": [case],
        });
        std::fs::write(&short, file.to_string()).unwrap();
        let e = format!("{:#}", PeerTokens::read(&short).unwrap_err());
        assert!(
            e.contains("short.json") && e.contains("case 0") && e.contains("one margin"),
            "{e}"
        );

        let missing = dir.path().join("missing.json");
        let e = format!("{:#}", PeerTokens::read(&missing).unwrap_err());
        assert!(e.contains("missing.json"), "{e}");
    }
}
