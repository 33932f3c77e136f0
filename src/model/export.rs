//! `pdbench models export`: a GGUF model as a Hugging Face folder
//! (`config.json`, `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json`, `generation_config.json`) with its weights
//! dequantized, so that transformers, or pdbench's own dense path, runs the
//! very weights pdbench benchmarks quantized (the PyTorch peer on a GPU).
//!
//! llama.cpp stores a llama model's q/k projections permuted for its
//! interleaved rope; the export undoes that, since HF checkpoints rotate
//! halves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::config::ModelConfig;
use super::tokenizer::TextTokenizer;
use super::ModelError;

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Exported {
    pub dir: PathBuf,
    pub tensors: usize,
    pub parameters: usize,
    pub dtype: String,
    /// Whether q/k were un-permuted (llama GGUFs).
    pub unpermuted_qk: bool,
}

/// Every HF tensor name `cfg` loads from, in load order.
fn hf_names(cfg: &ModelConfig) -> Vec<String> {
    let mut names = vec!["model.embed_tokens.weight".to_string()];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for t in ["q_proj", "k_proj", "v_proj"] {
            names.push(format!("{p}.self_attn.{t}.weight"));
            if cfg.qkv_bias {
                names.push(format!("{p}.self_attn.{t}.bias"));
            }
        }
        names.push(format!("{p}.self_attn.o_proj.weight"));
        for t in ["gate_proj", "up_proj", "down_proj"] {
            names.push(format!("{p}.mlp.{t}.weight"));
        }
        names.push(format!("{p}.input_layernorm.weight"));
        names.push(format!("{p}.post_attention_layernorm.weight"));
    }
    names.push("model.norm.weight".into());
    names.push("lm_head.weight".into());
    names
}

/// Undoes llama.cpp's q/k permutation (`convert_hf_to_gguf.py`'s
/// `permute`): rows `(head, half, i)` were stored as `(head, i, half)`.
pub fn unpermute_rows(t: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    t.reshape((n_heads, rows / n_heads / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// Exports the GGUF `file` into `out` (created; files in it are replaced).
pub fn gguf_to_hf(file: &Path, out: &Path, dtype: DType) -> Result<Exported, ModelError> {
    let mut f = std::fs::File::open(file).map_err(|e| ModelError::io(file, e))?;
    let content = gguf_file::Content::read(&mut f).map_err(|e| ModelError::Corrupt {
        path: file.to_path_buf(),
        detail: format!("not a readable GGUF file: {e}"),
    })?;
    let cfg = super::config_from_gguf(file, &content)?;
    let tok = TextTokenizer::from_gguf(file, &content)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut parameters = 0;
    for hf in hf_names(&cfg) {
        let Some(g) = super::weights::gguf_name(&hf) else {
            continue;
        };
        if !content.tensor_infos.contains_key(&g) {
            if hf == "lm_head.weight" && cfg.tie_word_embeddings {
                continue;
            }
            return Err(ModelError::Corrupt {
                path: file.to_path_buf(),
                detail: format!("tensor {g} (for {hf}) is missing"),
            });
        }
        let q = content
            .tensor(&mut f, &g, &Device::Cpu)
            .map_err(|e| ModelError::Corrupt {
                path: file.to_path_buf(),
                detail: format!("tensor {g}: {e}"),
            })?;
        let mut t = q.dequantize(&Device::Cpu)?;
        if cfg.rope_interleaved {
            if hf.contains("self_attn.q_proj") {
                t = unpermute_rows(&t, cfg.num_attention_heads)?;
            } else if hf.contains("self_attn.k_proj") {
                t = unpermute_rows(&t, cfg.num_key_value_heads)?;
            }
        }
        parameters += t.elem_count();
        tensors.insert(hf, t.to_dtype(dtype)?);
    }
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let st = out.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &st).map_err(|e| ModelError::Io {
        path: st.clone(),
        cause: std::io::Error::other(e.to_string()),
    })?;
    // The folder is meant for peers and other users: readable like the
    // other files, not owner-only as the writer leaves it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&st, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| ModelError::io(&st, e))?;
    }
    let mut config = cfg.to_hf_json();
    let dtype_name = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    config["torch_dtype"] = dtype_name.into();
    if let Some(b) = tok.bos_id {
        config["bos_token_id"] = b.into();
    }
    if let Some(&e) = tok.eos_ids.first() {
        config["eos_token_id"] = e.into();
    }
    let write_json = |name: &str, v: &serde_json::Value| -> Result<(), ModelError> {
        let p = out.join(name);
        let text = serde_json::to_string_pretty(v).expect("JSON values serialise");
        crate::results::write_atomic(&p, text.as_bytes()).map_err(|e| ModelError::io(&p, e))
    };
    write_json("config.json", &config)?;
    let token = |id: u32| tok.id_to_token(id).map(serde_json::Value::from);
    write_json(
        "tokenizer_config.json",
        &serde_json::json!({
            "bos_token": tok.bos_id.and_then(token),
            "eos_token": tok.eos_ids.first().copied().and_then(token),
            "add_bos_token": tok.add_bos,
            "chat_template": tok.chat_template,
        }),
    )?;
    write_json(
        "generation_config.json",
        &serde_json::json!({
            "bos_token_id": tok.bos_id,
            "eos_token_id": tok.eos_ids,
        }),
    )?;
    let tj = out.join("tokenizer.json");
    tok.inner()
        .save(&tj, false)
        .map_err(|e| ModelError::Tokenizer {
            path: tj.clone(),
            detail: format!("writing failed: {e}"),
        })?;
    Ok(Exported {
        dir: out.to_path_buf(),
        tensors: tensors.len(),
        parameters,
        dtype: dtype_name.into(),
        unpermuted_qk: cfg.rope_interleaved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's permute, as `convert_hf_to_gguf.py` writes it.
    fn permute(t: &Tensor, n_heads: usize) -> Tensor {
        let dims = t.dims().to_vec();
        let rest: usize = dims[1..].iter().product();
        t.reshape((n_heads, 2, dims[0] / n_heads / 2, rest))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape(dims)
            .unwrap()
    }

    #[test]
    fn unpermute_inverts_llama_cpps_permute() {
        let w = Tensor::arange(0f32, 2.0 * 8.0 * 3.0, &Device::Cpu)
            .unwrap()
            .reshape((16, 3))
            .unwrap();
        let p = permute(&w, 2);
        assert_ne!(p.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        let back = unpermute_rows(&p, 2).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        // Row 1 of head 0 (first half, i = 1) was stored at row 2.
        assert_eq!(
            p.to_vec2::<f32>().unwrap()[2],
            w.to_vec2::<f32>().unwrap()[1]
        );
        // Biases are 1-D.
        let b = Tensor::arange(0f32, 8.0, &Device::Cpu).unwrap();
        let back = unpermute_rows(&permute(&b, 2), 2).unwrap();
        assert_eq!(back.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
    }
}
