//! Learn2PD's filter (Bao et al. 2025): a small MLP that reads the top-1
//! probabilities of a diffusion block's positions and says, per position,
//! whether its current prediction is already final.
//!
//! A filter folder holds `config.json` (`block_length`, `hidden_size`,
//! `threshold`) and `model.safetensors` with `fc1.weight` `[hidden, block]`,
//! `fc1.bias`, `fc2.weight` `[block, hidden]` and `fc2.bias`:
//! logits = fc2(relu(fc1(p))).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{FileDigest, ModelError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Positions per block; the decoder's block length must match.
    pub block_length: usize,
    pub hidden_size: usize,
    /// Positions whose sigmoid(logit) exceeds this are committed.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// The objective and model it was trained with, when pdbench made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdbench_objective: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdbench_dllm: Option<String>,
}

fn default_threshold() -> f64 {
    0.96
}

/// What a run records about a filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterInfo {
    pub spec: String,
    pub config: FilterConfig,
    pub files: Vec<FileDigest>,
}

/// A loaded filter; inference is plain loops (32 × 64 weights).
#[derive(Debug, Clone)]
pub struct Filter {
    pub config: FilterConfig,
    fc1_w: Vec<f32>,
    fc1_b: Vec<f32>,
    fc2_w: Vec<f32>,
    fc2_b: Vec<f32>,
}

pub struct LoadedFilter {
    pub filter: Filter,
    pub info: FilterInfo,
}

impl Filter {
    /// The tensors' names and shapes.
    pub fn shapes(cfg: &FilterConfig) -> [(&'static str, Vec<usize>); 4] {
        let (b, h) = (cfg.block_length, cfg.hidden_size);
        [
            ("fc1.weight", vec![h, b]),
            ("fc1.bias", vec![h]),
            ("fc2.weight", vec![b, h]),
            ("fc2.bias", vec![b]),
        ]
    }

    pub fn from_tensors(
        config: FilterConfig,
        tensors: &HashMap<String, Tensor>,
        origin: &Path,
    ) -> Result<Self, ModelError> {
        let mut vals: Vec<Vec<f32>> = Vec::new();
        for (name, shape) in Self::shapes(&config) {
            let t = tensors.get(name).ok_or_else(|| ModelError::MissingTensor {
                path: origin.to_path_buf(),
                tensor: name.into(),
                detail: "a Learn2PD filter has fc1.weight, fc1.bias, fc2.weight and fc2.bias"
                    .into(),
            })?;
            if t.dims() != shape.as_slice() {
                return Err(ModelError::BadConfig {
                    path: origin.to_path_buf(),
                    field: name.into(),
                    expected: format!(
                        "shape {shape:?} for block_length {} and hidden_size {}, found {:?}",
                        config.block_length,
                        config.hidden_size,
                        t.dims()
                    ),
                });
            }
            vals.push(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?);
        }
        let mut it = vals.into_iter();
        let mut next = || it.next().expect("four tensors");
        Ok(Self {
            fc1_w: next(),
            fc1_b: next(),
            fc2_w: next(),
            fc2_b: next(),
            config,
        })
    }

    /// Reads a filter folder.
    pub fn load_dir(dir: &Path) -> Result<LoadedFilter, ModelError> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let config: FilterConfig =
            serde_json::from_str(&text).map_err(|e| ModelError::BadConfig {
                path: cfg_path.clone(),
                field: format!("line {} column {}", e.line(), e.column()),
                expected: format!("a Learn2PD filter config ({e})"),
            })?;
        if config.block_length == 0 || config.hidden_size == 0 {
            return Err(ModelError::BadConfig {
                path: cfg_path,
                field: "block_length, hidden_size".into(),
                expected: "positive integers".into(),
            });
        }
        if !(config.threshold > 0.0 && config.threshold < 1.0) {
            return Err(ModelError::BadConfig {
                path: cfg_path,
                field: "threshold".into(),
                expected: format!("a number in (0, 1), got {}", config.threshold),
            });
        }
        let wpath: PathBuf = dir.join("model.safetensors");
        let bytes = std::fs::read(&wpath).map_err(|e| ModelError::io(&wpath, e))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
            ModelError::Corrupt {
                path: wpath.clone(),
                detail: format!("not a safetensors file: {e}"),
            }
        })?;
        let filter = Self::from_tensors(config.clone(), &tensors, &wpath)?;
        let digest = |p: &Path, bytes: &[u8]| FileDigest {
            path: p.display().to_string(),
            bytes: bytes.len() as u64,
            sha256: crate::store::sha256_bytes(bytes),
        };
        Ok(LoadedFilter {
            info: FilterInfo {
                spec: dir.display().to_string(),
                config,
                files: vec![digest(&cfg_path, text.as_bytes()), digest(&wpath, &bytes)],
            },
            filter,
        })
    }

    /// Logits per position from the block's top-1 probabilities.
    pub fn logits(&self, conf: &[f32]) -> Vec<f32> {
        let (b, h) = (self.config.block_length, self.config.hidden_size);
        let hidden: Vec<f32> = (0..h)
            .map(|i| {
                let w = &self.fc1_w[i * b..(i + 1) * b];
                let z = self.fc1_b[i] + w.iter().zip(conf).map(|(a, x)| a * x).sum::<f32>();
                z.max(0.0)
            })
            .collect();
        (0..b)
            .map(|j| {
                let w = &self.fc2_w[j * h..(j + 1) * h];
                self.fc2_b[j] + w.iter().zip(&hidden).map(|(a, x)| a * x).sum::<f32>()
            })
            .collect()
    }

    /// Which positions the filter accepts (sigmoid above the threshold).
    pub fn accept(&self, conf: &[f32]) -> Vec<bool> {
        let t = self.config.threshold;
        // sigmoid(z) > t  ⇔  z > ln(t / (1 − t)).
        let cut = (t / (1.0 - t)).ln() as f32;
        self.logits(conf).into_iter().map(|z| z > cut).collect()
    }
}

/// The differentiable forward for training: `conf` `[n, block]` → logits
/// `[n, block]`, with the same parameters by name.
pub fn forward_train(conf: &Tensor, params: &HashMap<&str, Tensor>) -> candle_core::Result<Tensor> {
    let h = conf
        .broadcast_matmul(&params["fc1.weight"].t()?)?
        .broadcast_add(&params["fc1.bias"])?
        .relu()?;
    h.broadcast_matmul(&params["fc2.weight"].t()?)?
        .broadcast_add(&params["fc2.bias"])
}
