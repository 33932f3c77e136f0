//! Where a checkpoint's tensors come from: a GGUF file (quantized) or
//! safetensors (dense). Layers ask for tensors by their HF names; GGUF names
//! are translated here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};

use super::ModelError;

#[derive(Clone)]
pub(crate) struct Weights {
    source: Arc<Source>,
    prefix: String,
}

enum Source {
    Gguf {
        path: PathBuf,
        tensors: HashMap<String, Arc<QTensor>>,
        dequantize: bool,
    },
    Dense {
        origin: PathBuf,
        vb: candle_nn::VarBuilder<'static>,
    },
}

impl Weights {
    pub fn from_gguf(
        path: &Path,
        content: &gguf_file::Content,
        file: &mut std::fs::File,
        device: &Device,
        dequantize: bool,
    ) -> Result<Self, ModelError> {
        let mut tensors = HashMap::new();
        for name in content.tensor_infos.keys() {
            let t = content
                .tensor(file, name, device)
                .map_err(|e| ModelError::Corrupt {
                    path: path.to_path_buf(),
                    detail: format!("tensor {name}: {e}"),
                })?;
            tensors.insert(name.clone(), Arc::new(t));
        }
        Ok(Self {
            source: Arc::new(Source::Gguf {
                path: path.to_path_buf(),
                tensors,
                dequantize,
            }),
            prefix: String::new(),
        })
    }

    pub fn from_safetensors(
        files: &[PathBuf],
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Self::dense(files, dtype, device, None)
    }

    /// [`Self::from_safetensors`] for a checkpoint whose tensors carry other
    /// names: `rename` maps the HF llama name a layer asks for to the
    /// checkpoint's.
    pub fn from_safetensors_renamed(
        files: &[PathBuf],
        dtype: DType,
        device: &Device,
        rename: fn(&str) -> String,
    ) -> Result<Self, ModelError> {
        Self::dense(files, dtype, device, Some(rename))
    }

    fn dense(
        files: &[PathBuf],
        dtype: DType,
        device: &Device,
        rename: Option<fn(&str) -> String>,
    ) -> Result<Self, ModelError> {
        for f in files {
            check_safetensors_header(f)?;
        }
        // SAFETY: the files are mapped read-only and not modified while mapped.
        let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(files, dtype, device) }
            .map_err(|e| ModelError::Corrupt {
                path: files.first().cloned().unwrap_or_default(),
                detail: e.to_string(),
            })?;
        let vb = match rename {
            Some(f) => vb.rename_f(f),
            None => vb,
        };
        Ok(Self {
            source: Arc::new(Source::Dense {
                origin: files.first().cloned().unwrap_or_default(),
                vb,
            }),
            prefix: String::new(),
        })
    }

    /// Weights of a model being trained (or built in a test) from a var builder.
    pub fn from_var_builder(vb: candle_nn::VarBuilder<'static>, origin: &str) -> Self {
        Self {
            source: Arc::new(Source::Dense {
                origin: PathBuf::from(origin),
                vb,
            }),
            prefix: String::new(),
        }
    }

    pub fn pp(&self, name: &str) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            source: self.source.clone(),
            prefix,
        }
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn origin(&self) -> &Path {
        match &*self.source {
            Source::Gguf { path, .. } => path,
            Source::Dense { origin, .. } => origin,
        }
    }

    fn missing(&self, name: &str, detail: String) -> ModelError {
        ModelError::MissingTensor {
            path: self.origin().to_path_buf(),
            tensor: name.to_string(),
            detail,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        let full = self.full(name);
        match &*self.source {
            Source::Gguf { tensors, .. } => {
                gguf_name(&full).is_some_and(|g| tensors.contains_key(&g))
            }
            Source::Dense { vb, .. } => vb.contains_tensor(&full),
        }
    }

    fn qtensor(&self, full: &str) -> Result<Arc<QTensor>, ModelError> {
        let Source::Gguf { tensors, .. } = &*self.source else {
            unreachable!("qtensor on dense weights")
        };
        let g = gguf_name(full).ok_or_else(|| self.missing(full, "no GGUF name for it".into()))?;
        tensors
            .get(&g)
            .cloned()
            .ok_or_else(|| self.missing(full, format!("GGUF tensor {g} is absent")))
    }

    fn check_shape(&self, name: &str, got: &[usize], want: &[usize]) -> Result<(), ModelError> {
        if got != want {
            return Err(ModelError::Corrupt {
                path: self.origin().to_path_buf(),
                detail: format!("tensor {name} has shape {got:?}, expected {want:?}"),
            });
        }
        Ok(())
    }

    /// A dense tensor (norm weights, biases), dequantized to f32 for GGUF.
    pub fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor, ModelError> {
        let full = self.full(name);
        match &*self.source {
            Source::Gguf { .. } => {
                let q = self.qtensor(&full)?;
                self.check_shape(&full, q.shape().dims(), shape)?;
                let dev = q.device();
                Ok(q.dequantize(&dev)?.to_dtype(dtype)?)
            }
            Source::Dense { vb, .. } => {
                let t = vb
                    .get(shape, &full)
                    .map_err(|e| self.missing(&full, e.to_string()))?;
                Ok(t.to_dtype(dtype)?)
            }
        }
    }

    /// A `[out, in]` projection with an optional bias.
    pub fn linear(
        &self,
        name: &str,
        out_dim: usize,
        in_dim: usize,
        bias: bool,
        dtype: DType,
    ) -> Result<Linear, ModelError> {
        let full = self.full(name);
        let weight = match &*self.source {
            Source::Gguf { dequantize, .. } => {
                let q = self.qtensor(&format!("{full}.weight"))?;
                self.check_shape(&full, q.shape().dims(), &[out_dim, in_dim])?;
                if *dequantize {
                    QMatMul::Tensor(q.dequantize(&q.device())?)
                } else {
                    QMatMul::from_arc(q)?
                }
            }
            Source::Dense { vb, .. } => {
                let w = vb
                    .get((out_dim, in_dim), &format!("{full}.weight"))
                    .map_err(|e| self.missing(&format!("{full}.weight"), e.to_string()))?;
                QMatMul::Tensor(w.to_dtype(dtype)?)
            }
        };
        let bias = if bias {
            Some(self.tensor(&format!("{name}.bias"), &[out_dim], dtype)?)
        } else {
            None
        };
        Ok(Linear::new(weight, bias))
    }

    /// The token embedding table.
    pub fn embedding(
        &self,
        name: &str,
        vocab: usize,
        hidden: usize,
        dtype: DType,
    ) -> Result<Embedding, ModelError> {
        let full = format!("{}.weight", self.full(name));
        match &*self.source {
            Source::Gguf { dequantize, .. } => {
                let q = self.qtensor(&full)?;
                self.check_shape(&full, q.shape().dims(), &[vocab, hidden])?;
                if *dequantize {
                    Ok(Embedding::Dense(q.dequantize(&q.device())?))
                } else {
                    Ok(Embedding::Quantized(q))
                }
            }
            Source::Dense { vb, .. } => {
                let t = vb
                    .get((vocab, hidden), &full)
                    .map_err(|e| self.missing(&full, e.to_string()))?;
                Ok(Embedding::Dense(t.to_dtype(dtype)?))
            }
        }
    }
}

/// Maps an HF llama tensor name to LLaDA's (OLMo's) name; names it does
/// not know pass through.
pub(crate) fn llada_name(hf: &str) -> String {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("model.transformer.wte.weight"),
        "model.norm.weight" => Some("model.transformer.ln_f.weight"),
        "lm_head.weight" => Some("model.transformer.ff_out.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return f.to_string();
    }
    let Some(rest) = hf.strip_prefix("model.layers.") else {
        return hf.to_string();
    };
    let Some((layer, tail)) = rest.split_once('.') else {
        return hf.to_string();
    };
    let tail = match tail {
        "self_attn.q_proj.weight" => "q_proj.weight",
        "self_attn.k_proj.weight" => "k_proj.weight",
        "self_attn.v_proj.weight" => "v_proj.weight",
        "self_attn.q_proj.bias" => "q_proj.bias",
        "self_attn.k_proj.bias" => "k_proj.bias",
        "self_attn.v_proj.bias" => "v_proj.bias",
        "self_attn.o_proj.weight" => "attn_out.weight",
        "mlp.gate_proj.weight" => "ff_proj.weight",
        "mlp.up_proj.weight" => "up_proj.weight",
        "mlp.down_proj.weight" => "ff_out.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ff_norm.weight",
        _ => return hf.to_string(),
    };
    format!("model.transformer.blocks.{layer}.{tail}")
}

/// Maps an HF tensor name to llama.cpp's GGUF name.
pub(crate) fn gguf_name(hf: &str) -> Option<String> {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    for (h, g) in fixed {
        if hf == h {
            return Some(g.to_string());
        }
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, tail) = rest.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    let table = [
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
    ];
    let (stem, suffix) = tail.rsplit_once('.')?;
    let g = table.iter().find(|(h, _)| *h == stem)?.1;
    Some(format!("blk.{idx}.{g}.{suffix}"))
}

/// Reads the safetensors header so that a truncated or garbled file gets an
/// error naming it instead of a failure deep inside the mmap loader.
fn check_safetensors_header(path: &Path) -> Result<(), ModelError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let size = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let corrupt = |detail: String| ModelError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| corrupt("shorter than the 8-byte safetensors header length".into()))?;
    let n = u64::from_le_bytes(len);
    if n == 0 || n > 100_000_000 || 8 + n > size {
        return Err(corrupt(format!(
            "header length {n} does not fit a file of {size} bytes"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| corrupt(format!("header: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("header is not JSON: {e}")))?;
    let data_len = size - 8 - n;
    if let Some(obj) = json.as_object() {
        for (name, info) in obj {
            if name == "__metadata__" {
                continue;
            }
            let end = info
                .get("data_offsets")
                .and_then(|o| o.get(1))
                .and_then(|e| e.as_u64())
                .ok_or_else(|| corrupt(format!("tensor {name} has no data_offsets")))?;
            if end > data_len {
                return Err(corrupt(format!(
                    "tensor {name} ends at byte {end}, past the {data_len} data bytes (truncated file?)"
                )));
            }
        }
    }
    Ok(())
}

/// A projection. Quantized weights go through candle's QMatMul; dense
/// ones through an ordinary matmul.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: QMatMul,
    /// Our bit-identical fast path for block types candle runs scalar.
    fast: Option<super::kernels::FastQ>,
    bias: Option<Tensor>,
}

impl Linear {
    fn new(weight: QMatMul, bias: Option<Tensor>) -> Self {
        let fast = match &weight {
            QMatMul::QTensor(q) => super::kernels::FastQ::new(q),
            _ => None,
        };
        Self { weight, fast, bias }
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let fast = match &self.fast {
            Some(f) => f.forward(x)?,
            None => None,
        };
        let y = match fast {
            Some(y) => y,
            None => match &self.weight {
                QMatMul::Tensor(w)
                    if x.device().is_cpu()
                        && x.dtype() == DType::F32
                        && w.dtype() == DType::F32 =>
                {
                    dense_cpu(x, w, rows_exact())?
                }
                _ => self.weight.forward(x)?,
            },
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// Whether each output row depends on its input row alone, bit for
    /// bit, whatever the other rows: our CPU kernels. candle's matmuls may
    /// switch kernels with the row count.
    pub(crate) fn row_invariant(&self) -> bool {
        self.fast.is_some()
            || matches!(&self.weight, QMatMul::Tensor(w) if w.device().is_cpu() && w.dtype() == DType::F32)
    }

    pub fn qmatmul(&self) -> &QMatMul {
        &self.weight
    }

    /// A differentiable projection, for training: candle's batched matmul
    /// on dense weights (the inference paths above do not record gradients).
    pub fn forward_train(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.weight {
            // One 2-D matmul over all rows: a broadcast matmul would run one
            // per batch row and sum the weight's gradient afterwards.
            QMatMul::Tensor(w) => {
                let (k, mut dims) = (x.dim(D::Minus1)?, x.dims().to_vec());
                let y = x.reshape(((), k))?.matmul(&w.t()?)?;
                *dims.last_mut().expect("a non-scalar input") = y.dim(1)?;
                y.reshape(dims)?
            }
            _ => candle_core::bail!("training needs dense weights, not quantized ones"),
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

thread_local! {
    /// Whether dense projections run row by row (see [`BatchedRows`]).
    static ROWS_EXACT: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Whether this thread's forward computes rows one by one (the default).
pub(crate) fn rows_exact() -> bool {
    ROWS_EXACT.with(|c| c.get())
}

/// While alive, dense projections and attention on this thread run over
/// all rows at once (a `Forward::batched` forward); dropped, row by row
/// again.
pub(crate) struct BatchedRows(bool);

impl BatchedRows {
    pub(crate) fn enter() -> Self {
        Self(ROWS_EXACT.with(|c| c.replace(false)))
    }
}

impl Drop for BatchedRows {
    fn drop(&mut self) {
        ROWS_EXACT.with(|c| c.set(self.0));
    }
}

/// Dense f32 projection on the CPU, one row at a time (see
/// `attention::rowwise_matmul`): row-invariant, and bit-identical to a
/// single-row candle matmul; or, for a batched forward, chunks of rows at
/// once.
fn dense_cpu(x: &Tensor, w: &Tensor, rows_exact: bool) -> candle_core::Result<Tensor> {
    let (n, k) = w.dims2()?;
    let mut dims = x.dims().to_vec();
    let m = x.elem_count() / k;
    let xv = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let w = w.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("expected CPU weights")
    };
    let data = cpu.as_slice::<f32>()?;
    let (a, b) = layout.contiguous_offsets().expect("contiguous");
    let out = if rows_exact {
        super::attention::rowwise_matmul(&xv, &data[a..b], m, k, n)
    } else {
        super::attention::batched_matmul(&xv, &data[a..b], m, k, n)
    };
    drop(storage);
    *dims.last_mut().expect("rank >= 1") = n;
    Tensor::from_vec(out, dims, &Device::Cpu)
}

#[derive(Debug, Clone)]
pub(crate) enum Embedding {
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Embedding {
    /// `ids` `[n]` to `[n, hidden]`.
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
        match self {
            Embedding::Quantized(q) => q.embedding(ids)?.to_dtype(dtype),
            Embedding::Dense(t) => t.index_select(ids, 0),
        }
    }

    /// The same table as an output projection (tied embeddings).
    pub fn as_linear(&self) -> candle_core::Result<Linear> {
        let weight = match self {
            Embedding::Quantized(q) => QMatMul::from_arc(q.clone())?,
            Embedding::Dense(t) => QMatMul::Tensor(t.clone()),
        };
        Ok(Linear::new(weight, None))
    }
}
