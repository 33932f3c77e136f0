//! The architecture description shared by every checkpoint format.
//!
//! One decoder stack covers the llama/qwen2 family; the flags below are the
//! only places where the members differ.

use serde::{Deserialize, Serialize};
use std::path::Path;

use super::ModelError;

/// Which family member a checkpoint is. Bidirectional families (Dream,
/// LLaDA) share the stack and differ in how decoders call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    Llama,
    Qwen2,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

/// Rope frequency scaling, as in HF `rope_scaling`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// The context length the model was trained for; forwards beyond it fail.
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// GGUF llama checkpoints store q/k permuted for interleaved-pair rope;
    /// HF checkpoints use the rotate-half layout.
    #[serde(default)]
    pub rope_interleaved: bool,
    #[serde(default)]
    pub qkv_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

impl ModelConfig {
    pub fn validate(&self, origin: &Path) -> Result<(), ModelError> {
        let bad = |field: &str, expected: String| ModelError::BadConfig {
            path: origin.to_path_buf(),
            field: field.to_string(),
            expected,
        };
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(bad(name, "a positive integer".into()));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "a divisor of num_attention_heads ({})",
                    self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad("head_dim", "an even number (rope pairs)".into()));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(bad("rope_theta", "a positive number".into()));
        }
        Ok(())
    }

    /// Parses a HF-style `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let raw: HfConfig =
            serde_json::from_str(&text).map_err(|e| ModelError::config_json(path, e))?;
        let arch_names = raw.architectures.clone().unwrap_or_default();
        let model_type = raw.model_type.clone().unwrap_or_default();
        let architecture = match (model_type.as_str(), arch_names.first().map(|s| s.as_str())) {
            ("llama", _) | (_, Some("LlamaForCausalLM")) => Architecture::Llama,
            ("qwen2", _) | (_, Some("Qwen2ForCausalLM")) => Architecture::Qwen2,
            // Dream-v0 is Qwen2.5 with bidirectional attention, same tensors.
            ("Dream", _) | (_, Some("DreamModel")) => Architecture::Qwen2,
            // LLaDA is a llama stack without a causal mask, under OLMo's
            // tensor names (translated when its weights are read).
            ("llada", _) | (_, Some("LLaDAModelLM")) => Architecture::Llama,
            _ => {
                return Err(ModelError::UnknownArchitecture {
                    path: path.to_path_buf(),
                    found: if model_type.is_empty() {
                        format!("{arch_names:?}")
                    } else {
                        model_type
                    },
                })
            }
        };
        let need = |field: &str, v: Option<usize>| {
            v.ok_or_else(|| ModelError::BadConfig {
                path: path.to_path_buf(),
                field: field.to_string(),
                expected: "a positive integer".into(),
            })
        };
        let hidden_size = need("hidden_size", raw.hidden_size)?;
        let num_attention_heads = need("num_attention_heads", raw.num_attention_heads)?;
        let rope_scaling = match raw.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                parse_rope_scaling(&v).map_err(|expected| ModelError::BadConfig {
                    path: path.to_path_buf(),
                    field: "rope_scaling".into(),
                    expected,
                })?,
            ),
        };
        let cfg = ModelConfig {
            architecture,
            vocab_size: need("vocab_size", raw.vocab_size)?,
            hidden_size,
            intermediate_size: need("intermediate_size", raw.intermediate_size)?,
            num_hidden_layers: need("num_hidden_layers", raw.num_hidden_layers)?,
            num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: raw
                .head_dim
                .unwrap_or(hidden_size / num_attention_heads.max(1)),
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: raw.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            rope_interleaved: false,
            qkv_bias: raw
                .attention_bias
                .unwrap_or(architecture == Architecture::Qwen2),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The HF `config.json` this config corresponds to, so that models we
    /// write load in transformers as well.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let (arch, model_type) = match self.architecture {
            Architecture::Llama => ("LlamaForCausalLM", "llama"),
            Architecture::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        };
        let rope_scaling = match &self.rope_scaling {
            None => serde_json::Value::Null,
            Some(RopeScaling::Linear { factor }) => {
                serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => serde_json::json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings
            }),
        };
        serde_json::json!({
            "architectures": [arch],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "attention_bias": self.qkv_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        })
    }
}

fn parse_rope_scaling(v: &serde_json::Value) -> Result<RopeScaling, String> {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("");
    let num = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| format!("rope_scaling.{k} as a number"))
    };
    match kind {
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        }),
        "default" => Err("null for default rope".into()),
        other => Err(format!(
            "rope_type \"linear\" or \"llama3\" (\"{other}\" is not supported)"
        )),
    }
}

/// The subset of HF config.json fields the stack reads. Aliases are
/// LLaDA's (OLMo-style) names for the same fields.
#[derive(Debug, Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    #[serde(alias = "d_model")]
    hidden_size: Option<usize>,
    #[serde(alias = "mlp_hidden_size")]
    intermediate_size: Option<usize>,
    #[serde(alias = "n_layers")]
    num_hidden_layers: Option<usize>,
    #[serde(alias = "n_heads")]
    num_attention_heads: Option<usize>,
    #[serde(alias = "n_kv_heads")]
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(alias = "max_sequence_length")]
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    #[serde(alias = "include_qkv_bias")]
    attention_bias: Option<bool>,
    #[serde(alias = "weight_tying")]
    tie_word_embeddings: Option<bool>,
}

/// Inverse frequencies for rope, after scaling. Computed in f32 the way
/// candle and llama.cpp do, so that rope angles agree to the last bit.
pub fn rope_inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let d = cfg.head_dim;
    let theta = cfg.rope_theta as f32;
    let base: Vec<f32> = (0..d)
        .step_by(2)
        .map(|i| 1f32 / theta.powf(i as f32 / d as f32))
        .collect();
    match &cfg.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|&f| f / *factor as f32).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let old = *original_max_position_embeddings as f32;
            let (factor, low, high) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
            );
            let low_wavelen = old / low;
            let high_wavelen = old / high;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}
