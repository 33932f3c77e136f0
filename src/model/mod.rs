//! The model layer: one llama/qwen2 backbone over GGUF or safetensors
//! weights, a truncatable KV cache, masks, tokenizers and model sources.

pub(crate) mod attention;
pub mod backbone;
pub mod chat;
pub mod config;
pub mod diffusion;
pub mod eagle;
pub mod export;
pub mod filter;
pub(crate) mod fused;
pub(crate) mod kernels;
pub mod kv;
pub mod mask;
pub mod pool;
pub mod random;
pub mod source;
pub mod tokenizer;
pub(crate) mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

pub use backbone::{argmax, argmax_rows, Forward, ForwardOutput, HiddenTap, LogitsAt, Transformer};
pub use config::{Architecture, ModelConfig, RopeScaling};
pub use kv::{KvCache, KvSnapshot};
pub use mask::{ExplicitMask, Mask};
pub use source::{FetchPolicy, ModelFiles, ResolvedModel};
pub use tokenizer::TextTokenizer;

use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("model \"{spec}\" is not a file, a folder, a known model or a hub id (org/name); {hint}known models: {known}")]
    NotFound {
        spec: String,
        hint: String,
        known: String,
    },
    #[error("model {name} is not in the store (expected at {path}); run `pdbench fetch {name}`")]
    NotFetched { name: String, path: PathBuf },
    #[error("model {name} in the store ({path}) does not match its sha256: expected {expected}, got {got}; run `pdbench fetch {name}` to fetch it again")]
    StoreMismatch {
        name: String,
        path: PathBuf,
        expected: String,
        got: String,
    },
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error("{path}: missing {what}")]
    MissingFile { path: PathBuf, what: String },
    #[error("{path}: not a model pdbench can read; expected a .gguf file or a folder with config.json and model.safetensors")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: holds several GGUF files ({}); name one", candidates.join(", "))]
    Ambiguous {
        path: PathBuf,
        candidates: Vec<String>,
    },
    #[error("{path} is corrupt or truncated: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: unknown architecture \"{found}\"; pdbench's backbone supports llama and qwen2 (SmolLM2, Llama, Qwen2.5)")]
    UnknownArchitecture { path: PathBuf, found: String },
    #[error("{path}: expected a HF config.json: {detail}")]
    ConfigSyntax { path: PathBuf, detail: String },
    #[error("{path}: field `{field}`: expected {expected}")]
    BadConfig {
        path: PathBuf,
        field: String,
        expected: String,
    },
    #[error("{path}: tensor `{tensor}`: {detail}")]
    MissingTensor {
        path: PathBuf,
        tensor: String,
        detail: String,
    },
    #[error("the sequence needs {needed} positions but the model's context is {context}; shorten the prompt, or lower max_new_tokens or the method's draft length")]
    ContextOverflow { needed: usize, context: usize },
    #[error("bad forward request: {0}")]
    BadRequest(String),
    #[error("{flag}: {detail}")]
    BadOption { flag: String, detail: String },
    #[error("KV cache: {0}")]
    Cache(String),
    #[error("tokenizer {path}: {detail}")]
    Tokenizer { path: PathBuf, detail: String },
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error(transparent)]
    HubUnavailable(Box<HubUnavailable>),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A hub model that is neither cached nor downloadable (boxed: the largest
/// variant sets the size of every `Result` that carries a `ModelError`).
#[derive(Debug, thiserror::Error)]
#[error("hub model {repo}@{revision} is not in the hf-hub cache at {cache_dir} and the hub cannot be reached; missing: {}. Download those files on a machine with access (`huggingface-cli download {repo}`) and place them in {snapshot_dir} with refs/{revision} naming the commit, or pass a local folder to --model", missing.join(", "))]
pub struct HubUnavailable {
    pub repo: String,
    pub revision: String,
    pub missing: Vec<String>,
    pub cache_dir: PathBuf,
    pub snapshot_dir: PathBuf,
}

impl ModelError {
    /// A config.json that serde_json could not read: broken JSON, or a
    /// field of the wrong type (serde's message names it).
    pub(crate) fn config_json(path: &Path, e: serde_json::Error) -> Self {
        let detail = match e.classify() {
            serde_json::error::Category::Data => format!("a field does not fit: {e}"),
            _ => format!("not valid JSON: {e}"),
        };
        ModelError::ConfigSyntax {
            path: path.to_path_buf(),
            detail,
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            return ModelError::MissingFile {
                path: path.to_path_buf(),
                what: "file (not found)".into(),
            };
        }
        ModelError::Io {
            path: path.to_path_buf(),
            cause: source,
        }
    }
}

/// The sha256 and size of a file a run depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What a run records about a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub spec: String,
    pub label: String,
    pub origin: String,
    pub format: String,
    /// Weight storage types and how many tensors use each (GGUF).
    pub weight_types: Vec<(String, usize)>,
    pub dtype: String,
    pub config: ModelConfig,
    pub files: Vec<FileDigest>,
    pub tokenizer_origin: String,
    pub tokenizer_sha256: String,
    /// Set for a masked-diffusion LM (from its config.json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diffusion: Option<diffusion::DiffusionSpec>,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Compute dtype for dense weights; GGUF activations are always f32.
    pub dtype: Option<DType>,
    /// A tokenizer.json that overrides the one found with the model.
    pub tokenizer: Option<PathBuf>,
    /// Dequantize GGUF weights to f32 (exact-arithmetic studies, tests).
    pub dequantize: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            tokenizer: None,
            dequantize: false,
        }
    }
}

pub struct LoadedModel {
    pub model: Arc<Transformer>,
    pub tokenizer: Arc<TextTokenizer>,
    pub info: ModelInfo,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("info", &self.info)
            .finish()
    }
}

/// Resolves and loads a model.
pub fn load(
    spec: &str,
    store: &Store,
    policy: FetchPolicy,
    opts: &LoadOptions,
    log: &mut dyn FnMut(&str),
) -> Result<LoadedModel, ModelError> {
    let resolved = source::resolve(spec, store, policy, log)?;
    load_resolved(&resolved, store, opts)
}

pub fn load_resolved(
    r: &ResolvedModel,
    store: &Store,
    opts: &LoadOptions,
) -> Result<LoadedModel, ModelError> {
    let mut digest = |p: &Path| -> Result<FileDigest, ModelError> {
        let bytes = std::fs::metadata(p)
            .map_err(|e| ModelError::io(p, e))?
            .len();
        let sha256 = store.sha256(p).map_err(|e| ModelError::io(p, e))?;
        Ok(FileDigest {
            path: p.display().to_string(),
            bytes,
            sha256,
        })
    };
    let (model, tokenizer, mut files, format, weight_types, dtype, diffusion) = match &r.files {
        ModelFiles::Gguf { file, tokenizer } => {
            if let Some(d) = opts.dtype.filter(|d| *d != DType::F32) {
                return Err(ModelError::BadOption {
                    flag: format!("--dtype {}", format!("{d:?}").to_lowercase()),
                    detail: format!(
                        "{} is a GGUF model, whose activations are f32 (its weights stay quantized, or f32 with --dequantize); --dtype applies to safetensors models",
                        file.display()
                    ),
                });
            }
            let mut f = std::fs::File::open(file).map_err(|e| ModelError::io(file, e))?;
            let content = gguf_file::Content::read(&mut f).map_err(|e| ModelError::Corrupt {
                path: file.clone(),
                detail: format!("not a readable GGUF file: {e}"),
            })?;
            check_gguf_extent(file, &content, &f)?;
            let cfg = config_from_gguf(file, &content)?;
            let tok_path = opts.tokenizer.clone().or_else(|| tokenizer.clone());
            let tok = match &tok_path {
                Some(p) => TextTokenizer::from_hf_dir(p)?,
                None => TextTokenizer::from_gguf(file, &content)?,
            };
            let mut types: std::collections::BTreeMap<String, usize> = Default::default();
            for info in content.tensor_infos.values() {
                *types.entry(format!("{:?}", info.ggml_dtype)).or_default() += 1;
            }
            let w =
                weights::Weights::from_gguf(file, &content, &mut f, &opts.device, opts.dequantize)?;
            let model = Transformer::load(&w, &cfg, DType::F32, &opts.device)?;
            let mut files = vec![];
            if let Some(p) = &tok_path {
                files.push(digest(p)?);
                files.extend(tokenizer_side_files(p, &mut digest)?);
            }
            (
                model,
                tok,
                files,
                // `--resume` reads this back to load the weights alike.
                if opts.dequantize {
                    "gguf (dequantized)"
                } else {
                    "gguf"
                },
                types.into_iter().collect(),
                DType::F32,
                None,
            )
        }
        ModelFiles::HfDir {
            config,
            weights: wfiles,
            tokenizer,
            ..
        } => {
            let cfg = ModelConfig::from_hf_json(config)?;
            let diffusion = diffusion::DiffusionSpec::from_hf_config(config)?;
            let tok_path = opts.tokenizer.clone().unwrap_or_else(|| tokenizer.clone());
            let tok = TextTokenizer::from_hf_dir(&tok_path)?;
            let dtype = match opts.dtype {
                Some(d) => d,
                // Our fast, row-invariant CPU kernels are f32.
                None if opts.device.is_cpu() => DType::F32,
                None => DType::BF16,
            };
            let w = if diffusion.as_ref().is_some_and(|d| d.family == "llada") {
                weights::Weights::from_safetensors_renamed(
                    wfiles,
                    dtype,
                    &opts.device,
                    weights::llada_name,
                )?
            } else {
                weights::Weights::from_safetensors(wfiles, dtype, &opts.device)?
            };
            let model = Transformer::load(&w, &cfg, dtype, &opts.device)?;
            let mut files = vec![digest(config)?, digest(&tok_path)?];
            files.extend(tokenizer_side_files(&tok_path, &mut digest)?);
            for p in wfiles {
                files.push(digest(p)?);
            }
            (model, tok, files, "safetensors", vec![], dtype, diffusion)
        }
    };
    if let ModelFiles::Gguf { file, .. } = &r.files {
        files.insert(0, digest(file)?);
    }
    // Embeddings are padded past the vocabulary by at most a few hundred
    // rows; a tokenizer larger than the embedding, or covering under half
    // of it, belongs to another model.
    let (tokens, rows) = (tokenizer.vocab_size(), model.config().vocab_size);
    if tokens > rows || 2 * tokens < rows {
        return Err(ModelError::Tokenizer {
            path: PathBuf::from(&tokenizer.origin),
            detail: if tokens > rows {
                format!("has {tokens} tokens but the model's embedding has only {rows} rows")
            } else {
                format!(
                    "has {tokens} tokens but the model's embedding has {rows} rows: it is not this model's tokenizer"
                )
            },
        });
    }
    let info = ModelInfo {
        spec: r.spec.clone(),
        label: r.label.clone(),
        origin: r.origin.clone(),
        format: format.into(),
        weight_types,
        dtype: format!("{dtype:?}").to_lowercase(),
        config: model.config().clone(),
        files,
        tokenizer_origin: tokenizer.origin.clone(),
        tokenizer_sha256: tokenizer.digest(),
        diffusion,
    };
    Ok(LoadedModel {
        model: Arc::new(model),
        tokenizer: Arc::new(tokenizer),
        info,
    })
}

/// A truncated GGUF parses fine (the header is at the front) and fails
/// later; check that every tensor lies inside the file.
fn check_gguf_extent(
    path: &Path,
    content: &gguf_file::Content,
    f: &std::fs::File,
) -> Result<(), ModelError> {
    let size = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
    for (name, info) in &content.tensor_infos {
        let elems: usize = info.shape.elem_count();
        let bytes = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let end = content.tensor_data_offset + info.offset + bytes as u64;
        if end > size {
            return Err(ModelError::Corrupt {
                path: path.to_path_buf(),
                detail: format!(
                    "tensor {name} ends at byte {end}, past the end of the {size}-byte file (truncated download?)"
                ),
            });
        }
    }
    Ok(())
}

/// The architecture from GGUF metadata (`general.architecture` and the
/// `{arch}.*` keys llama.cpp writes).
/// Digests of the files beside a tokenizer.json that change how it
/// encodes or when it stops (BOS, EOS, chat template), when present.
fn tokenizer_side_files(
    tokenizer_json: &Path,
    digest: &mut dyn FnMut(&Path) -> Result<FileDigest, ModelError>,
) -> Result<Vec<FileDigest>, ModelError> {
    let dir = tokenizer_json.parent().unwrap_or(Path::new("."));
    ["tokenizer_config.json", "generation_config.json"]
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .map(|p| digest(&p))
        .collect()
}

pub fn config_from_gguf(
    path: &Path,
    content: &gguf_file::Content,
) -> Result<ModelConfig, ModelError> {
    let md = &content.metadata;
    let arch_name = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| ModelError::BadConfig {
            path: path.to_path_buf(),
            field: "general.architecture".into(),
            expected: "the architecture name in the GGUF metadata".into(),
        })?;
    let architecture = match arch_name.as_str() {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        other => {
            return Err(ModelError::UnknownArchitecture {
                path: path.to_path_buf(),
                found: other.into(),
            })
        }
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let bad = |field: String, expected: &str| ModelError::BadConfig {
        path: path.to_path_buf(),
        field,
        expected: expected.into(),
    };
    let get_usize = |k: &str| -> Result<usize, ModelError> {
        md.get(&key(k))
            .and_then(|v| {
                v.to_u32()
                    .ok()
                    .map(|x| x as usize)
                    .or_else(|| v.to_u64().ok().map(|x| x as usize))
            })
            .ok_or_else(|| bad(key(k), "a positive integer"))
    };
    let get_f64 = |k: &str| -> Option<f64> {
        md.get(&key(k)).and_then(|v| {
            v.to_f32()
                .ok()
                .map(|x| x as f64)
                .or_else(|| v.to_f64().ok())
        })
    };
    let hidden_size = get_usize("embedding_length")?;
    let heads = get_usize("attention.head_count")?;
    let kv_heads = get_usize("attention.head_count_kv").unwrap_or(heads);
    let head_dim = get_usize("attention.key_length")
        .or_else(|_| get_usize("rope.dimension_count"))
        .unwrap_or(hidden_size / heads.max(1));
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| ModelError::MissingTensor {
            path: path.to_path_buf(),
            tensor: "token_embd.weight".into(),
            detail: "every llama-family GGUF has it".into(),
        })?;
    let vocab_size = embd.shape.dims()[0];
    let rope_scaling = match md
        .get(&key("rope.scaling.type"))
        .and_then(|v| v.to_string().ok())
        .map(|s| s.as_str())
    {
        None | Some("none") => None,
        Some("linear") => Some(RopeScaling::Linear {
            factor: get_f64("rope.scaling.factor").unwrap_or(1.0),
        }),
        Some(other) => {
            return Err(bad(
                key("rope.scaling.type"),
                &format!("none or linear (\"{other}\" is not supported)"),
            ))
        }
    };
    let cfg = ModelConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: get_usize("feed_forward_length")?,
        num_hidden_layers: get_usize("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        max_position_embeddings: get_usize("context_length")?,
        rms_norm_eps: get_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: get_f64("rope.freq_base").unwrap_or(10_000.0),
        rope_scaling,
        // llama.cpp permutes llama q/k for interleaved rope; qwen2 is neox-style.
        rope_interleaved: architecture == Architecture::Llama,
        qkv_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
    };
    cfg.validate(path)?;
    Ok(cfg)
}
