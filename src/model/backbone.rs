//! The llama/qwen2 decoder stack, with what candle's bundled models lack:
//! logits at every (or chosen) position, a truncatable cache, arbitrary
//! masks and rope positions, and hidden-state taps.

use candle_core::{DType, Device, IndexOp, Tensor};

use super::attention::{self, Dims, Keys};
use super::config::{rope_inv_freq, ModelConfig};
use super::kv::KvCache;
use super::mask::Mask;
use super::weights::{Embedding, Linear, Weights};
use super::ModelError;
use crate::measure::phase::{self, mark};

/// Which positions of a forward chunk get logits.
#[derive(Debug, Clone, PartialEq)]
pub enum LogitsAt {
    None,
    Last,
    All,
    /// Row indices within the chunk.
    Rows(Vec<usize>),
}

/// A hidden state to return from a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenTap {
    /// The token embeddings, before block 0.
    Embeddings,
    /// The residual stream after block `i` (0-based).
    Block(usize),
    /// After the final norm: what the LM head reads.
    Final,
}

/// One forward call.
#[derive(Debug, Clone)]
pub struct Forward<'a> {
    pub tokens: &'a [u32],
    /// Cache position of `tokens[0]`. The cache is truncated to `start`
    /// first, so re-forwarding a suffix is a rollback plus a forward.
    pub start: usize,
    pub mask: Mask,
    /// Rope positions; `None` means `start..start + n`. Trees give each node
    /// its depth here.
    pub positions: Option<&'a [u32]>,
    pub logits: LogitsAt,
    pub taps: &'a [HiddenTap],
    /// Each row computed on its own (the default), so that its result does
    /// not depend on the chunk; see `attention`.
    pub rows_exact: bool,
    /// Overwrite the chunk's positions in the cache and keep what follows
    /// them (Fast-dLLM's dual cache): the chunk attends to the whole cache.
    /// Bidirectional masks only.
    pub in_place: bool,
}

impl<'a> Forward<'a> {
    /// A causal forward of `tokens` at `start` that returns the last logits.
    pub fn causal(tokens: &'a [u32], start: usize) -> Self {
        Self {
            tokens,
            start,
            mask: Mask::Causal,
            positions: None,
            logits: LogitsAt::Last,
            taps: &[],
            rows_exact: true,
            in_place: false,
        }
    }

    /// See [`Forward::in_place`].
    pub fn in_place(mut self) -> Self {
        self.in_place = true;
        self
    }

    /// Lets the rows share dense matmuls: much faster for wide chunks on the
    /// CPU, but a row's logits may then differ in the last bits with the
    /// chunk. For forwards whose results no one compares with AR's
    /// (drafters).
    pub fn batched(mut self) -> Self {
        self.rows_exact = false;
        self
    }

    pub fn with_logits(mut self, at: LogitsAt) -> Self {
        self.logits = at;
        self
    }

    pub fn with_mask(mut self, mask: Mask) -> Self {
        self.mask = mask;
        self
    }

    pub fn with_positions(mut self, positions: &'a [u32]) -> Self {
        self.positions = Some(positions);
        self
    }

    pub fn with_taps(mut self, taps: &'a [HiddenTap]) -> Self {
        self.taps = taps;
        self
    }
}

#[derive(Debug)]
pub struct ForwardOutput {
    /// `[rows, vocab]` in f32, rows in the order asked for.
    pub logits: Option<Tensor>,
    /// `[n, hidden]` per requested tap, in request order.
    pub hidden: Vec<Tensor>,
}

#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn load(
        w: &Weights,
        name: &str,
        size: usize,
        eps: f64,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            weight: w.tensor(&format!("{name}.weight"), &[size], dtype)?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Rope {
    cos: Tensor,
    sin: Tensor,
    interleaved: bool,
}

impl Rope {
    pub(crate) fn new(
        cfg: &ModelConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let inv = rope_inv_freq(cfg);
        let half = inv.len();
        let n = cfg.max_position_embeddings;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?,
            interleaved: cfg.rope_interleaved,
        })
    }

    /// cos/sin rows for a chunk.
    pub(crate) fn select(
        &self,
        start: usize,
        n: usize,
        positions: Option<&Tensor>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        match positions {
            None => Ok((self.cos.narrow(0, start, n)?, self.sin.narrow(0, start, n)?)),
            Some(p) => Ok((self.cos.index_select(p, 0)?, self.sin.index_select(p, 0)?)),
        }
    }

    /// cos/sin for a training batch of `b` rows of `t` tokens: `[t, half]`
    /// at positions `0..t`, or `[b, t, half]` at `positions` (`[b, t]`).
    pub(crate) fn train_tables(
        &self,
        cfg: &ModelConfig,
        b: usize,
        t: usize,
        positions: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor), ModelError> {
        if self.interleaved {
            return Err(ModelError::BadRequest(
                "training supports the rotate-half rope layout of HF checkpoints".into(),
            ));
        }
        let Some(p) = positions else {
            if t > cfg.max_position_embeddings {
                return Err(ModelError::ContextOverflow {
                    needed: t,
                    context: cfg.max_position_embeddings,
                });
            }
            return Ok((self.cos.narrow(0, 0, t)?, self.sin.narrow(0, 0, t)?));
        };
        if p.dims() != [b, t] {
            return Err(ModelError::BadRequest(format!(
                "positions {:?} for a batch of {b} rows of {t}",
                p.dims()
            )));
        }
        let flat = p.flatten_all()?;
        let max = flat.max(0)?.to_scalar::<u32>()? as usize;
        if max >= cfg.max_position_embeddings {
            return Err(ModelError::ContextOverflow {
                needed: max + 1,
                context: cfg.max_position_embeddings,
            });
        }
        let half = self.cos.dim(1)?;
        Ok((
            self.cos.index_select(&flat, 0)?.reshape((b, t, half))?,
            self.sin.index_select(&flat, 0)?.reshape((b, t, half))?,
        ))
    }

    fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        if self.interleaved {
            candle_nn::rotary_emb::rope_i(x, cos, sin)
        } else {
            candle_nn::rotary_emb::rope(x, cos, sin)
        }
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(w: &Weights, cfg: &ModelConfig, dtype: DType) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let d = cfg.head_dim;
        let bias = cfg.qkv_bias;
        Ok(Self {
            q: w.linear("q_proj", cfg.num_attention_heads * d, h, bias, dtype)?,
            k: w.linear("k_proj", cfg.num_key_value_heads * d, h, bias, dtype)?,
            v: w.linear("v_proj", cfg.num_key_value_heads * d, h, bias, dtype)?,
            o: w.linear("o_proj", h, cfg.num_attention_heads * d, false, dtype)?,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: d,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        cache: &KvCache,
        layer: usize,
        start: usize,
        rope: &Rope,
        cos: &Tensor,
        sin: &Tensor,
        keys: &[Keys],
        bias: Option<&Tensor>,
        key_len: usize,
    ) -> Result<Tensor, ModelError> {
        let (_, n, _) = x.dims3()?;
        let (nh, nkv, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let q = self
            .q
            .forward(x)?
            .reshape((1, n, nh, d))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = self
            .k
            .forward(x)?
            .reshape((1, n, nkv, d))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = self
            .v
            .forward(x)?
            .reshape((1, n, nkv, d))?
            .transpose(1, 2)?
            .contiguous()?;
        mark(x.device(), "qkv");
        let q = rope.apply(&q, cos, sin)?;
        let k = rope.apply(&k, cos, sin)?;
        cache.write(layer, start, &k, &v)?;
        mark(x.device(), "rope+cache");
        let total = key_len;
        let scale = 1.0 / (d as f64).sqrt();
        let y = if host_attention(x.device(), x.dtype()) {
            let (kc, vc) = cache.layer(layer);
            let dims = Dims {
                n,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: d,
                capacity: cache.capacity(),
                scale,
            };
            let out = with_f32(&q, |q| {
                with_f32(kc, |k| {
                    with_f32(vc, |v| {
                        // q is [nh, n, d]; attend reads it through this view.
                        // A batched forward whose rows share their keys
                        // (bidirectional) takes them a head at a time.
                        match keys.first() {
                            Some(Keys::Prefix(len))
                                if !super::weights::rows_exact()
                                    && keys.iter().all(|k| *k == Keys::Prefix(*len)) =>
                            {
                                attention::attend_uniform(q, k, v, dims, *len)
                            }
                            _ => attention::attend(q, k, v, dims, &|row| keys[row].clone()),
                        }
                    })
                })
            })???;
            Tensor::from_vec(out, (1, n, nh * d), x.device())?
        } else {
            // Devices: candle's batched ops over the cache. The query heads
            // that share a KV head are stacked as rows (`[nkv, rep·n, d]`),
            // so no head's keys are copied. The cache view is strided (its
            // batch stride is the capacity), which cuBLAS and gemm read in
            // place: no copy of the cache per layer and token either.
            let (k_all, v_all) = cache.view(layer, total)?;
            let rep = nh / nkv;
            let k_all = k_all.squeeze(0)?;
            let v_all = v_all.squeeze(0)?;
            let q = q.reshape((nkv, rep * n, d))?;
            let att = (q.matmul(&k_all.t()?)? * scale)?;
            let att = match bias {
                None => att,
                Some(b) => att
                    .reshape((nkv, rep, n, total))?
                    .broadcast_add(b)?
                    .reshape((nkv, rep * n, total))?,
            };
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            att.matmul(&v_all)?
                .reshape((1, nh, n, d))?
                .transpose(1, 2)?
                .reshape((1, n, nh * d))?
        };
        mark(x.device(), "attention");
        let o = self.o.forward(&y)?;
        mark(x.device(), "o_proj");
        Ok(o)
    }
}

/// Whether attention runs our row-wise CPU kernel, which reads each row's
/// keys from the mask, rather than candle's batched ops, which need the
/// mask as an additive bias. Other dtypes on the CPU take candle's path
/// too, so the bias is built exactly when this is false.
pub(crate) fn host_attention(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::F32
}

/// Runs `f` on the f32 data of a contiguous CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("expected a CPU tensor")
    };
    let data = cpu.as_slice::<f32>()?;
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("expected a contiguous tensor".into()))?;
    Ok(f(&data[a..b]))
}

#[derive(Debug, Clone)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn load(w: &Weights, cfg: &ModelConfig, dtype: DType) -> Result<Self, ModelError> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate: w.linear("gate_proj", i, h, false, dtype)?,
            up: w.linear("up_proj", i, h, false, dtype)?,
            down: w.linear("down_proj", h, i, false, dtype)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let g = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        self.down.forward(&(g * self.up.forward(x)?)?)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Block {
    attn: Attention,
    mlp: Mlp,
    /// None in the first layer of an EAGLE head, which attends to the fc
    /// output directly.
    input_norm: Option<RmsNorm>,
    post_norm: RmsNorm,
}

impl Block {
    pub(crate) fn load(w: &Weights, cfg: &ModelConfig, dtype: DType) -> Result<Self, ModelError> {
        let mut b = Self::load_without_input_norm(w, cfg, dtype)?;
        b.input_norm = Some(RmsNorm::load(
            w,
            "input_layernorm",
            cfg.hidden_size,
            cfg.rms_norm_eps,
            dtype,
        )?);
        Ok(b)
    }

    pub(crate) fn load_without_input_norm(
        w: &Weights,
        cfg: &ModelConfig,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            attn: Attention::load(&w.pp("self_attn"), cfg, dtype)?,
            mlp: Mlp::load(&w.pp("mlp"), cfg, dtype)?,
            input_norm: None,
            post_norm: RmsNorm::load(
                w,
                "post_attention_layernorm",
                cfg.hidden_size,
                cfg.rms_norm_eps,
                dtype,
            )?,
        })
    }

    /// One block over a chunk `x` `[1, n, hidden]` at cache position
    /// `start`, writing its keys and values into `cache`'s `layer`; keys
    /// span cache positions `0..key_len` (`start + n`, or more for an
    /// in-place forward).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        cache: &KvCache,
        layer: usize,
        start: usize,
        rope: &Rope,
        cos: &Tensor,
        sin: &Tensor,
        keys: &[Keys],
        bias: Option<&Tensor>,
        key_len: usize,
    ) -> Result<Tensor, ModelError> {
        let h = match &self.input_norm {
            Some(n) => n.forward(x)?,
            None => x.clone(),
        };
        mark(x.device(), "norm");
        let a = self
            .attn
            .forward(&h, cache, layer, start, rope, cos, sin, keys, bias, key_len)?;
        let x1 = (x + a)?;
        let h2 = self.post_norm.forward(&x1)?;
        mark(x.device(), "norm");
        let m = self.mlp.forward(&h2)?;
        mark(x.device(), "mlp");
        let y = (x1 + m)?;
        mark(x.device(), "residual");
        Ok(y)
    }

    /// The differentiable form of [`Block::forward`] over a padded batch
    /// `[b, t, hidden]`; `rope` rotates `[b, heads, t, head_dim]`.
    pub(crate) fn forward_train(
        &self,
        x: &Tensor,
        rope: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
        bias: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let (b, t, _) = x.dims3()?;
        let rms = |x: &Tensor, n: &RmsNorm| super::fused::rms_norm(x, &n.weight, n.eps);
        let a = &self.attn;
        let (nh, nkv, d) = (a.n_heads, a.n_kv_heads, a.head_dim);
        let h = match &self.input_norm {
            Some(n) => rms(x, n)?,
            None => x.clone(),
        };
        let heads = |l: &Linear, n: usize| -> candle_core::Result<Tensor> {
            l.forward_train(&h)?.reshape((b, t, n, d))?.transpose(1, 2)
        };
        let q = rope(&heads(&a.q, nh)?)?;
        let k = repeat_kv(&rope(&heads(&a.k, nkv)?)?.contiguous()?, nh / nkv)?;
        let v = repeat_kv(&heads(&a.v, nkv)?.contiguous()?, nh / nkv)?;
        let scale = 1.0 / (d as f64).sqrt();
        let att = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
        let att = super::fused::masked_softmax(&att, bias)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, nh * d))?;
        let x1 = (x + a.o.forward_train(&y)?)?;
        let h2 = rms(&x1, &self.post_norm)?;
        let g = self.mlp.gate.forward_train(&h2)?.silu()?;
        let m = self
            .mlp
            .down
            .forward_train(&(g * self.mlp.up.forward_train(&h2)?)?)?;
        Ok((x1 + m)?)
    }
}

/// The decoder stack. Immutable: all per-sequence state is in [`KvCache`].
#[derive(Debug, Clone)]
pub struct Transformer {
    cfg: ModelConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    dtype: DType,
    device: Device,
}

impl Transformer {
    pub(crate) fn load(
        w: &Weights,
        cfg: &ModelConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let m = w.pp("model");
        let embed = m.embedding("embed_tokens", cfg.vocab_size, cfg.hidden_size, dtype)?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            blocks.push(Block::load(&m.pp(&format!("layers.{i}")), cfg, dtype)?);
        }
        let norm = RmsNorm::load(&m, "norm", cfg.hidden_size, cfg.rms_norm_eps, dtype)?;
        let lm_head = if !cfg.tie_word_embeddings && w.contains("lm_head.weight") {
            w.linear("lm_head", cfg.vocab_size, cfg.hidden_size, false, dtype)?
        } else {
            embed.as_linear()?
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            blocks,
            norm,
            lm_head,
            rope: Rope::new(cfg, dtype, device)?,
            dtype,
            device: device.clone(),
        })
    }

    /// A model whose weights come from a var builder: a `VarMap` being
    /// trained, or tensors built in a test.
    pub fn from_var_builder(
        vb: candle_nn::VarBuilder<'static>,
        cfg: &ModelConfig,
        origin: &str,
    ) -> Result<Self, ModelError> {
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        Self::load(&Weights::from_var_builder(vb, origin), cfg, dtype, &device)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether a row's logits are bit-identical however many rows a forward
    /// computes: attention on our CPU kernel and every projection on a
    /// row-invariant one. Lossless methods then equal AR bit for bit.
    pub fn row_invariant(&self) -> bool {
        host_attention(&self.device, self.dtype)
            && self.lm_head.row_invariant()
            && self.blocks.iter().all(|b| {
                let (a, m) = (&b.attn, &b.mlp);
                [&a.q, &a.k, &a.v, &a.o, &m.gate, &m.up, &m.down]
                    .iter()
                    .all(|l| l.row_invariant())
            })
    }

    /// A cache for this model with room for `capacity` positions; it grows
    /// on demand up to the model's context length.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache, ModelError> {
        KvCache::new(
            self.cfg.num_hidden_layers,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
            capacity,
            self.cfg.max_position_embeddings,
            self.dtype,
            &self.device,
        )
    }

    pub fn forward(
        &self,
        cache: &mut KvCache,
        req: &Forward<'_>,
    ) -> Result<ForwardOutput, ModelError> {
        let n = req.tokens.len();
        if n == 0 {
            return Err(ModelError::BadRequest("forward with no tokens".into()));
        }
        if cache.n_layers() != self.blocks.len() {
            return Err(ModelError::BadRequest(format!(
                "cache has {} layers, model has {}",
                cache.n_layers(),
                self.blocks.len()
            )));
        }
        if req.start > cache.len() {
            return Err(ModelError::BadRequest(format!(
                "forward starts at {} but the cache holds {} positions",
                req.start,
                cache.len()
            )));
        }
        let total = req.start + n;
        if total > self.cfg.max_position_embeddings {
            return Err(ModelError::ContextOverflow {
                needed: total,
                context: self.cfg.max_position_embeddings,
            });
        }
        if let Some(&bad) = req
            .tokens
            .iter()
            .find(|&&t| t as usize >= self.cfg.vocab_size)
        {
            return Err(ModelError::BadRequest(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        let positions = match req.positions {
            None => None,
            Some(p) => {
                if p.len() != n {
                    return Err(ModelError::BadRequest(format!(
                        "{} rope positions for {n} tokens",
                        p.len()
                    )));
                }
                if let Some(&bad) = p
                    .iter()
                    .find(|&&x| x as usize >= self.cfg.max_position_embeddings)
                {
                    return Err(ModelError::ContextOverflow {
                        needed: bad as usize + 1,
                        context: self.cfg.max_position_embeddings,
                    });
                }
                Some(Tensor::new(p, &self.device)?)
            }
        };
        let rows = match &req.logits {
            LogitsAt::Rows(r) => {
                if let Some(&bad) = r.iter().find(|&&i| i >= n) {
                    return Err(ModelError::BadRequest(format!(
                        "logits row {bad} is outside a chunk of {n}"
                    )));
                }
                Some(r.clone())
            }
            _ => None,
        };
        for tap in req.taps {
            if let HiddenTap::Block(i) = tap {
                if *i >= self.blocks.len() {
                    return Err(ModelError::BadRequest(format!(
                        "hidden tap block {i} but the model has {} blocks",
                        self.blocks.len()
                    )));
                }
            }
        }

        // An in-place forward keeps the cache after the chunk and reads it.
        let key_len = if req.in_place {
            if req.mask != Mask::Bidirectional {
                return Err(ModelError::BadRequest(
                    "an in-place forward needs a bidirectional mask".into(),
                ));
            }
            cache.len().max(total)
        } else {
            cache.truncate(req.start)?;
            total
        };
        cache.ensure_capacity(key_len)?;
        let _batched = (!req.rows_exact).then(super::weights::BatchedRows::enter);
        let keys = if req.in_place {
            vec![Keys::Prefix(key_len); n]
        } else {
            req.mask.keys(req.start, n)?
        };
        let bias = if host_attention(&self.device, self.dtype) {
            None
        } else {
            req.mask.bias(req.start, n, self.dtype, &self.device)?
        };
        let (cos, sin) = self.rope.select(req.start, n, positions.as_ref())?;

        phase::begin(&self.device);
        let ids = Tensor::new(req.tokens, &self.device)?;
        let mut x = self.embed.forward(&ids, self.dtype)?.unsqueeze(0)?;
        mark(&self.device, "embed");
        let mut hidden: Vec<Option<Tensor>> = vec![None; req.taps.len()];
        let record = |hidden: &mut Vec<Option<Tensor>>,
                      tap: HiddenTap,
                      x: &Tensor|
         -> candle_core::Result<()> {
            for (slot, t) in hidden.iter_mut().zip(req.taps) {
                if *t == tap {
                    *slot = Some(x.i(0)?);
                }
            }
            Ok(())
        };
        record(&mut hidden, HiddenTap::Embeddings, &x)?;
        for (i, blk) in self.blocks.iter().enumerate() {
            x = blk.forward(
                &x,
                cache,
                i,
                req.start,
                &self.rope,
                &cos,
                &sin,
                &keys,
                bias.as_ref(),
                key_len,
            )?;
            record(&mut hidden, HiddenTap::Block(i), &x)?;
        }
        cache.set_len(key_len);

        if req.taps.contains(&HiddenTap::Final) {
            let f = self.norm.forward(&x)?;
            record(&mut hidden, HiddenTap::Final, &f)?;
        }
        let hidden: Vec<Tensor> = hidden
            .into_iter()
            .map(|h| h.expect("every tap recorded"))
            .collect();

        let x = x.i(0)?; // [n, hidden]
        let selected = match (&req.logits, rows) {
            (LogitsAt::None, _) => None,
            (LogitsAt::All, _) => Some(x),
            (LogitsAt::Last, _) => Some(x.narrow(0, n - 1, 1)?),
            (LogitsAt::Rows(_), Some(r)) => {
                let idx: Vec<u32> = r.iter().map(|&i| i as u32).collect();
                Some(x.index_select(&Tensor::new(idx.as_slice(), &self.device)?, 0)?)
            }
            (LogitsAt::Rows(_), None) => unreachable!(),
        };
        let logits = match selected {
            None => None,
            Some(s) if s.dim(0)? == 0 => None,
            Some(s) => {
                let h = self.norm.forward(&s)?;
                Some(self.lm_head.forward(&h)?.to_dtype(DType::F32)?)
            }
        };
        mark(&self.device, "lm_head");
        Ok(ForwardOutput { logits, hidden })
    }

    /// A differentiable forward of a padded batch, for training. `tokens`
    /// is `[b, t]` (u32) at rope positions `positions` (`[b, t]` u32), or
    /// `0..t` when none; `bias` is added to the attention scores, `[b or 1,
    /// 1, t, t]` (0 where a query may attend, a large negative number where
    /// not). Returns logits `[b, t, vocab]`. Made of ops that record
    /// gradients: plain matmuls and the fused softmax, RMS norm and rope.
    pub fn forward_train(
        &self,
        tokens: &Tensor,
        bias: &Tensor,
        positions: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        self.project_train(&self.features_train(tokens, bias, positions)?)
    }

    /// [`Transformer::forward_train`] up to the final norm: `[b, t, hidden]`,
    /// what the LM head reads (EAGLE's features).
    pub fn features_train(
        &self,
        tokens: &Tensor,
        bias: &Tensor,
        positions: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let (b, t) = tokens.dims2()?;
        let (cos, sin) = self.rope.train_tables(&self.cfg, b, t, positions)?;
        let rope = |x: &Tensor| super::fused::rope(x, &cos, &sin);
        let ids = tokens.flatten_all()?;
        let mut x = self
            .embed
            .forward(&ids, self.dtype)?
            .reshape((b, t, self.cfg.hidden_size))?;
        for blk in &self.blocks {
            x = blk.forward_train(&x, &rope, bias)?;
        }
        Ok(super::fused::rms_norm(
            &x,
            &self.norm.weight,
            self.norm.eps,
        )?)
    }

    /// The LM head over final-norm features `[.., hidden]`, differentiable.
    pub fn project_train(&self, features: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.lm_head.forward_train(features)?)
    }

    /// The LM head over final-norm features `[n, hidden]` (an EAGLE head's
    /// output): f32 logits `[n, vocab]`.
    pub fn project(&self, features: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.lm_head.forward(features)?.to_dtype(DType::F32)?)
    }

    /// Applies the final norm and LM head to hidden states `[n, hidden]`
    /// taken before the norm (for draft heads that share the target's head).
    pub fn lm_head(&self, hidden_pre_norm: &Tensor) -> Result<Tensor, ModelError> {
        let h = self.norm.forward(hidden_pre_norm)?;
        Ok(self.lm_head.forward(&h)?.to_dtype(DType::F32)?)
    }

    /// Token embeddings `[n, hidden]`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Tensor, ModelError> {
        let ids = Tensor::new(tokens, &self.device)?;
        Ok(self.embed.forward(&ids, self.dtype)?)
    }

    /// Bytes of weights read per decoded token, for bandwidth estimates.
    pub fn weight_bytes(&self) -> usize {
        fn lin(l: &Linear) -> usize {
            match l.qmatmul() {
                candle_core::quantized::QMatMul::QTensor(q) => q.storage_size_in_bytes(),
                candle_core::quantized::QMatMul::Tensor(t)
                | candle_core::quantized::QMatMul::TensorF16(t) => {
                    t.elem_count() * t.dtype().size_in_bytes()
                }
            }
        }
        let mut total = lin(&self.lm_head);
        for b in &self.blocks {
            total += lin(&b.attn.q) + lin(&b.attn.k) + lin(&b.attn.v) + lin(&b.attn.o);
            total += lin(&b.mlp.gate) + lin(&b.mlp.up) + lin(&b.mlp.down);
        }
        total
    }
}

/// `[1, nkv, n, d]` to `[1, nkv * rep, n, d]`, each KV head repeated for
/// the query heads that share it.
fn repeat_kv(x: &Tensor, rep: usize) -> candle_core::Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, nkv, n, d) = x.dims4()?;
    Tensor::cat(&vec![x; rep], 2)?.reshape((b, nkv * rep, n, d))
}

/// Greedy argmax of each row of `[rows, vocab]` logits (first index on ties).
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>, ModelError> {
    let v: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    Ok(v.iter().map(|row| argmax(row)).collect())
}

/// Index of the first maximum.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &x) in row.iter().enumerate() {
        if x > best_v {
            best_v = x;
            best = i;
        }
    }
    best as u32
}
