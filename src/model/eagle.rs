//! An EAGLE draft head (Li et al. 2024): one decoder layer over
//! `fc([embedding of the next token; the target's feature])`, where the
//! feature is the target's last hidden state after its final norm. The
//! head predicts the next feature; the target's LM head turns it into a
//! draft distribution. It shares the target's embedding and LM head.
//!
//! Checkpoints use the released EAGLE layout (`yuhuili/EAGLE-*`): a llama
//! `config.json` and `fc.weight`, `fc.bias`, `layers.0.self_attn.*`,
//! `layers.0.mlp.*`, `layers.0.post_attention_layernorm.weight` (the layer
//! has no input norm) and optionally `embed_tokens.weight`, in
//! `model.safetensors` or `pytorch_model.bin`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};

use super::backbone::{Block, Rope};
use super::config::ModelConfig;
use super::kv::KvCache;
use super::mask::Mask;
use super::weights::{Embedding, Linear, Weights};
use super::{FileDigest, ModelError, Transformer};

/// One head forward: `tokens[i]` is the token after the position whose
/// target feature is `features[i]`.
#[derive(Debug, Clone)]
pub struct HeadForward<'a> {
    pub tokens: &'a [u32],
    /// `[n, hidden]`.
    pub features: &'a Tensor,
    /// Cache position of row 0; the cache is truncated to it first.
    pub start: usize,
    pub mask: Mask,
    /// Rope positions; `None` means `start..start + n`.
    pub positions: Option<&'a [u32]>,
}

#[derive(Debug, Clone)]
pub struct EagleHead {
    cfg: ModelConfig,
    fc: Linear,
    block: Block,
    /// The checkpoint's own copy of the embedding, where it ships one.
    embed: Option<Embedding>,
    rope: Rope,
    dtype: DType,
    device: Device,
}

/// A loaded head and where it came from, for manifests.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct HeadInfo {
    pub spec: String,
    pub files: Vec<FileDigest>,
    pub parameters: usize,
}

pub struct LoadedHead {
    pub head: std::sync::Arc<EagleHead>,
    pub info: HeadInfo,
}

impl std::fmt::Debug for LoadedHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedHead")
            .field("info", &self.info)
            .finish()
    }
}

impl EagleHead {
    pub(crate) fn load(
        w: &Weights,
        cfg: &ModelConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let fc = w.linear("fc", h, 2 * h, w.contains("fc.bias"), dtype)?;
        let mut cfg = cfg.clone();
        cfg.num_hidden_layers = 1;
        cfg.qkv_bias = w.contains("layers.0.self_attn.q_proj.bias");
        let block = Block::load_without_input_norm(&w.pp("layers.0"), &cfg, dtype)?;
        let embed = if w.contains("embed_tokens.weight") {
            Some(w.embedding("embed_tokens", cfg.vocab_size, h, dtype)?)
        } else {
            None
        };
        Ok(Self {
            rope: Rope::new(&cfg, dtype, device)?,
            cfg,
            fc,
            block,
            embed,
            dtype,
            device: device.clone(),
        })
    }

    /// A head whose weights come from a var builder (training, tests).
    pub fn from_var_builder(
        vb: candle_nn::VarBuilder<'static>,
        cfg: &ModelConfig,
        origin: &str,
    ) -> Result<Self, ModelError> {
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        Self::load(&Weights::from_var_builder(vb, origin), cfg, dtype, &device)
    }

    /// Loads a head folder: `config.json` and `model.safetensors` or
    /// `pytorch_model.bin`.
    pub fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<LoadedHead, ModelError> {
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(ModelError::MissingFile {
                path: config,
                what: "the EAGLE head's config.json".into(),
            });
        }
        let cfg = ModelConfig::from_hf_json(&config)?;
        cfg.validate(&config)?;
        let st = dir.join("model.safetensors");
        let pth = dir.join("pytorch_model.bin");
        let (w, file) = if st.is_file() {
            (
                Weights::from_safetensors(std::slice::from_ref(&st), dtype, device)?,
                st,
            )
        } else if pth.is_file() {
            let vb = candle_nn::VarBuilder::from_pth(&pth, dtype, device).map_err(|e| {
                ModelError::Corrupt {
                    path: pth.clone(),
                    detail: format!("not a readable PyTorch state dict: {e}"),
                }
            })?;
            (
                Weights::from_var_builder(vb, &pth.display().to_string()),
                pth,
            )
        } else {
            return Err(ModelError::MissingFile {
                path: st,
                what: "the head's weights (model.safetensors or pytorch_model.bin)".into(),
            });
        };
        let head = Self::load(&w, &cfg, dtype, device)?;
        let digest = |p: &PathBuf| -> Result<FileDigest, ModelError> {
            let bytes = std::fs::read(p).map_err(|e| ModelError::io(p, e))?;
            Ok(FileDigest {
                path: p.display().to_string(),
                bytes: bytes.len() as u64,
                sha256: crate::store::sha256_bytes(&bytes),
            })
        };
        let parameters = head.parameters();
        Ok(LoadedHead {
            info: HeadInfo {
                spec: dir.display().to_string(),
                files: vec![digest(&config)?, digest(&file)?],
                parameters,
            },
            head: std::sync::Arc::new(head),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn parameters(&self) -> usize {
        let h = self.cfg.hidden_size;
        let (nh, nkv, d, i) = (
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
            self.cfg.intermediate_size,
        );
        2 * h * h + h + h * nh * d * 2 + 2 * h * nkv * d + 3 * h * i + h
    }

    /// Fails unless the head fits `target`: the same hidden size and
    /// vocabulary.
    pub fn check_target(&self, target: &Transformer, origin: &str) -> Result<(), ModelError> {
        let t = target.config();
        for (field, head, want) in [
            ("hidden_size", self.cfg.hidden_size, t.hidden_size),
            ("vocab_size", self.cfg.vocab_size, t.vocab_size),
        ] {
            if head != want {
                return Err(ModelError::BadConfig {
                    path: PathBuf::from(origin),
                    field: field.into(),
                    expected: format!("the target's {field} {want} (the head has {head})"),
                });
            }
        }
        Ok(())
    }

    /// The positions its rope table covers.
    pub fn max_positions(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    /// A one-layer cache for the head.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache, ModelError> {
        KvCache::new(
            1,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
            capacity,
            self.cfg.max_position_embeddings,
            self.dtype,
            &self.device,
        )
    }

    /// The predicted next features `[n, hidden]` (in the target's dtype),
    /// which [`Transformer::project`] turns into draft logits.
    pub fn forward(
        &self,
        target: &Transformer,
        cache: &mut KvCache,
        req: &HeadForward<'_>,
    ) -> Result<Tensor, ModelError> {
        let n = req.tokens.len();
        if n == 0 {
            return Err(ModelError::BadRequest("head forward with no tokens".into()));
        }
        if req.features.dims() != [n, self.cfg.hidden_size] {
            return Err(ModelError::BadRequest(format!(
                "head forward of {n} tokens with features {:?}",
                req.features.dims()
            )));
        }
        if req.start > cache.len() {
            return Err(ModelError::BadRequest(format!(
                "head forward starts at {} but its cache holds {}",
                req.start,
                cache.len()
            )));
        }
        let total = req.start + n;
        let max_pos = self.cfg.max_position_embeddings;
        if total > max_pos {
            return Err(ModelError::ContextOverflow {
                needed: total,
                context: max_pos,
            });
        }
        let positions = match req.positions {
            None => None,
            Some(p) => {
                if p.len() != n || p.iter().any(|&x| x as usize >= max_pos) {
                    return Err(ModelError::BadRequest(format!(
                        "head rope positions {p:?} for {n} tokens within {max_pos}"
                    )));
                }
                Some(Tensor::new(p, &self.device)?)
            }
        };
        cache.truncate(req.start)?;
        cache.ensure_capacity(total)?;
        let keys = req.mask.keys(req.start, n)?;
        let bias = if super::backbone::host_attention(&self.device, self.dtype) {
            None
        } else {
            req.mask.bias(req.start, n, self.dtype, &self.device)?
        };
        let (cos, sin) = self.rope.select(req.start, n, positions.as_ref())?;
        let emb = match &self.embed {
            Some(e) => e.forward(&Tensor::new(req.tokens, &self.device)?, self.dtype)?,
            None => target.embed(req.tokens)?.to_dtype(self.dtype)?,
        };
        let x = Tensor::cat(&[emb, req.features.to_dtype(self.dtype)?], 1)?;
        let x = self.fc.forward(&x)?.unsqueeze(0)?;
        let y = self.block.forward(
            &x,
            cache,
            0,
            req.start,
            &self.rope,
            &cos,
            &sin,
            &keys,
            bias.as_ref(),
            total,
        )?;
        cache.set_len(total);
        Ok(y.i(0)?.to_dtype(target.dtype())?)
    }

    /// The differentiable form of [`EagleHead::forward`] over a padded
    /// batch, for training: `tokens` `[b, t]`, `features` `[b, t, hidden]`
    /// (the target's, detached), `bias` as in
    /// [`Transformer::forward_train`]. Returns `[b, t, hidden]`.
    pub fn forward_train(
        &self,
        target: &Transformer,
        tokens: &Tensor,
        features: &Tensor,
        bias: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let (b, t) = tokens.dims2()?;
        let h = self.cfg.hidden_size;
        let ids: Vec<u32> = tokens.flatten_all()?.to_vec1()?;
        let emb = match &self.embed {
            Some(e) => e.forward(&Tensor::new(ids.as_slice(), &self.device)?, self.dtype)?,
            None => target.embed(&ids)?.detach(),
        }
        .reshape((b, t, h))?;
        let x = self
            .fc
            .forward_train(&Tensor::cat(&[emb, features.clone()], 2)?)?;
        let (cos, sin) = self.rope.train_tables(&self.cfg, b, t, None)?;
        let rope = |x: &Tensor| super::fused::rope(x, &cos, &sin);
        self.block.forward_train(&x, &rope, bias)
    }
}
