//! What a masked-diffusion LM needs beyond the backbone: its mask token,
//! whether logits at row i predict position i (LLaDA) or i + 1 (Dream, the
//! zoo's models, adapted from AR models), and its attention over the
//! answer (full, or block-causal for block diffusion).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ModelError;

/// LLaDA-8B's `[MASK]` (its config has no field for it).
pub const LLADA_MASK_ID: u32 = 126_336;
/// Dream-v0's `<|mask|>`.
pub const DREAM_MASK_ID: u32 = 151_666;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffusionSpec {
    /// `llada`, `dream`, or the pdbench objective that trained the model.
    pub family: String,
    pub mask_token_id: u32,
    /// Logits at row i predict position i + 1 (Dream and AR-adapted
    /// models) instead of position i (LLaDA).
    pub shift_logits: bool,
    /// Block diffusion: answer positions form blocks of this size, causal
    /// across blocks and bidirectional inside one. `None`: every position
    /// sees every other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<usize>,
    /// The answer region (canvas) the model was trained on, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_gen_len: Option<usize>,
}

#[derive(Deserialize)]
struct Raw {
    model_type: Option<String>,
    mask_token_id: Option<u32>,
    pdbench_objective: Option<String>,
    pdbench_objective_params: Option<RawParams>,
}

#[derive(Deserialize)]
struct RawParams {
    gen_len: Option<usize>,
    shift_logits: Option<bool>,
    block_size: Option<usize>,
}

impl DiffusionSpec {
    /// Reads a HF `config.json`: `None` for an AR model.
    pub fn from_hf_config(path: &Path) -> Result<Option<Self>, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let raw: Raw = serde_json::from_str(&text).map_err(|e| ModelError::config_json(path, e))?;
        let bad = |field: &str, expected: &str| ModelError::BadConfig {
            path: path.to_path_buf(),
            field: field.to_string(),
            expected: expected.to_string(),
        };
        let model_type = raw.model_type.as_deref().unwrap_or("").to_ascii_lowercase();
        if let Some(obj) = raw.pdbench_objective.as_deref() {
            let block = match obj {
                // DEER's drafter is a masked-diffusion LM aligned to a target.
                "masked-diffusion" | "deer" => false,
                // TiDAR's mask slots: blocks of block_size, each predicting
                // its own position.
                "block-diffusion" | "tidar" => true,
                // AR, consistency and other objectives train causal models.
                _ => return Ok(None),
            };
            let mask = raw.mask_token_id.ok_or_else(|| {
                bad(
                    "mask_token_id",
                    "the mask token's id (a diffusion model needs one)",
                )
            })?;
            let p = raw.pdbench_objective_params;
            let block_size = if block {
                let b = p.as_ref().and_then(|p| p.block_size).ok_or_else(|| {
                    bad(
                        "pdbench_objective_params.block_size",
                        "a positive integer for a block-diffusion model",
                    )
                })?;
                if b == 0 {
                    return Err(bad(
                        "pdbench_objective_params.block_size",
                        "a positive integer for a block-diffusion model",
                    ));
                }
                Some(b)
            } else {
                None
            };
            return Ok(Some(Self {
                family: obj.to_string(),
                mask_token_id: mask,
                shift_logits: obj != "tidar"
                    && p.as_ref().and_then(|p| p.shift_logits).unwrap_or(false),
                block_size,
                trained_gen_len: p.as_ref().and_then(|p| p.gen_len),
            }));
        }
        Ok(match model_type.as_str() {
            "llada" => Some(Self {
                family: "llada".into(),
                mask_token_id: raw.mask_token_id.unwrap_or(LLADA_MASK_ID),
                shift_logits: false,
                block_size: None,
                trained_gen_len: None,
            }),
            "dream" => Some(Self {
                family: "dream".into(),
                mask_token_id: raw.mask_token_id.unwrap_or(DREAM_MASK_ID),
                shift_logits: true,
                block_size: None,
                trained_gen_len: None,
            }),
            _ => None,
        })
    }

    /// The logits row (within a forward over the whole sequence) that
    /// predicts sequence position `pos`.
    /// TiDAR's draft-and-verify model, which the diffusion decoders do not
    /// take (its mask slots need the `tidar` method's layout).
    pub fn is_tidar(&self) -> bool {
        self.family == "tidar"
    }

    pub fn predictor_row(&self, pos: usize) -> usize {
        pos - usize::from(self.shift_logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_of(json: &str) -> Result<Option<DiffusionSpec>, ModelError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, json).unwrap();
        DiffusionSpec::from_hf_config(&p)
    }

    #[test]
    fn families_and_their_quirks() {
        assert_eq!(spec_of(r#"{"model_type": "llama"}"#).unwrap(), None);
        let l = spec_of(r#"{"model_type": "llada"}"#).unwrap().unwrap();
        assert_eq!((l.mask_token_id, l.shift_logits), (LLADA_MASK_ID, false));
        let d = spec_of(r#"{"model_type": "Dream", "mask_token_id": 151666}"#)
            .unwrap()
            .unwrap();
        assert_eq!((d.mask_token_id, d.shift_logits), (DREAM_MASK_ID, true));
        let b = spec_of(
            r#"{"model_type": "llama", "mask_token_id": 3, "pdbench_objective": "block-diffusion",
                "pdbench_objective_params": {"gen_len": 32, "shift_logits": true, "block_size": 4}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(b.block_size, Some(4));
        assert_eq!(b.trained_gen_len, Some(32));
        assert_eq!(b.predictor_row(10), 9);
        let ar = spec_of(r#"{"model_type": "llama", "pdbench_objective": "ar"}"#).unwrap();
        assert_eq!(ar, None);
    }

    #[test]
    fn a_diffusion_config_without_a_mask_id_is_named() {
        let e = spec_of(r#"{"model_type": "llama", "pdbench_objective": "masked-diffusion"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mask_token_id"), "{e}");
    }
}
