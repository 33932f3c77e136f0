//! Small seeded random models in the hub layout, for property tests and
//! for anyone who wants a model without downloading one.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Normal};
use serde_json::json;

use super::{Architecture, ModelConfig, ModelError};

/// Special tokens of the byte-level test tokenizer, after the 256 bytes.
pub const SPECIALS: [&str; 4] = ["<bos>", "<eos>", "<pad>", "<mask>"];

/// A tiny config of the given family.
pub fn tiny_config(architecture: Architecture) -> ModelConfig {
    ModelConfig {
        architecture,
        vocab_size: 256 + SPECIALS.len(),
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        max_position_embeddings: 256,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        rope_interleaved: false,
        qkv_bias: architecture == Architecture::Qwen2,
        tie_word_embeddings: architecture == Architecture::Qwen2,
    }
}

/// GPT-2's byte-to-character table, which byte-level BPE vocabularies use.
pub fn byte_level_alphabet() -> Vec<char> {
    let mut printable: Vec<u32> = ('!' as u32..='~' as u32).collect();
    printable.extend('¡' as u32..='¬' as u32);
    printable.extend('®' as u32..='ÿ' as u32);
    let mut table = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        table[b as usize] = if printable.contains(&b) {
            char::from_u32(b).unwrap()
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap()
        };
    }
    table
}

/// A byte-level tokenizer.json with one token per byte and no merges.
pub fn byte_tokenizer_json() -> serde_json::Value {
    let alphabet = byte_level_alphabet();
    let mut vocab = serde_json::Map::new();
    for (i, c) in alphabet.iter().enumerate() {
        vocab.insert(c.to_string(), json!(i));
    }
    let mut added = Vec::new();
    for (i, s) in SPECIALS.iter().enumerate() {
        vocab.insert(s.to_string(), json!(256 + i));
        added.push(
            json!({"id": 256 + i, "content": s, "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}),
        );
    }
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []}
    })
}

/// Writes config.json, model.safetensors and tokenizer.json with weights
/// drawn from a seeded normal distribution.
pub fn write_random_model(dir: &Path, cfg: &ModelConfig, seed: u64) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, shape: &[usize], mean: f32, std: f32| -> Result<(), ModelError> {
        let n: usize = shape.iter().product();
        let dist = Normal::new(mean, std).expect("valid normal");
        let v: Vec<f32> = (0..n).map(|_| dist.sample(&mut rng)).collect();
        tensors.insert(name, Tensor::from_vec(v, shape, &Device::Cpu)?);
        Ok(())
    };
    let (h, i, v, d) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.vocab_size,
        cfg.head_dim,
    );
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let w = 1.0 / (h as f32).sqrt();
    put("model.embed_tokens.weight".into(), &[v, h], 0.0, 1.0)?;
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.self_attn.q_proj.weight"), &[nh * d, h], 0.0, w)?;
        put(
            format!("{p}.self_attn.k_proj.weight"),
            &[nkv * d, h],
            0.0,
            w,
        )?;
        put(
            format!("{p}.self_attn.v_proj.weight"),
            &[nkv * d, h],
            0.0,
            w,
        )?;
        put(format!("{p}.self_attn.o_proj.weight"), &[h, nh * d], 0.0, w)?;
        if cfg.qkv_bias {
            put(format!("{p}.self_attn.q_proj.bias"), &[nh * d], 0.0, 0.1)?;
            put(format!("{p}.self_attn.k_proj.bias"), &[nkv * d], 0.0, 0.1)?;
            put(format!("{p}.self_attn.v_proj.bias"), &[nkv * d], 0.0, 0.1)?;
        }
        put(format!("{p}.mlp.gate_proj.weight"), &[i, h], 0.0, w)?;
        put(format!("{p}.mlp.up_proj.weight"), &[i, h], 0.0, w)?;
        put(
            format!("{p}.mlp.down_proj.weight"),
            &[h, i],
            0.0,
            1.0 / (i as f32).sqrt(),
        )?;
        put(format!("{p}.input_layernorm.weight"), &[h], 1.0, 0.1)?;
        put(
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
            1.0,
            0.1,
        )?;
    }
    put("model.norm.weight".into(), &[h], 1.0, 0.1)?;
    if !cfg.tie_word_embeddings {
        put("lm_head.weight".into(), &[v, h], 0.0, w)?;
    }
    let st = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &st)?;
    let cj = dir.join("config.json");
    let mut config = cfg.to_hf_json();
    config["bos_token_id"] = json!(256);
    config["eos_token_id"] = json!(257);
    std::fs::write(&cj, serde_json::to_string_pretty(&config).expect("json"))
        .map_err(|e| ModelError::io(&cj, e))?;
    let tj = dir.join("tokenizer.json");
    std::fs::write(&tj, byte_tokenizer_json().to_string()).map_err(|e| ModelError::io(&tj, e))?;
    let tc = dir.join("tokenizer_config.json");
    std::fs::write(
        &tc,
        json!({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "add_bos_token": true}).to_string(),
    )
    .map_err(|e| ModelError::io(&tc, e))?;
    Ok(())
}

/// A seeded random EAGLE head for a target with config `target` (its
/// hidden size and vocabulary), in the released EAGLE layout: only as
/// good as chance, but every method that uses it must stay lossless.
pub fn write_random_head(
    dir: &Path,
    target: &ModelConfig,
    intermediate_size: usize,
    seed: u64,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: &str, shape: &[usize], mean: f32, std: f32| -> Result<(), ModelError> {
        let n: usize = shape.iter().product();
        let dist = Normal::new(mean, std).expect("valid normal");
        let v: Vec<f32> = (0..n).map(|_| dist.sample(&mut rng)).collect();
        tensors.insert(name.to_string(), Tensor::from_vec(v, shape, &Device::Cpu)?);
        Ok(())
    };
    let (h, i, d) = (target.hidden_size, intermediate_size, target.head_dim);
    let (nh, nkv) = (target.num_attention_heads, target.num_key_value_heads);
    let w = 1.0 / (h as f32).sqrt();
    put("fc.weight", &[h, 2 * h], 0.0, w / 2.0)?;
    put("fc.bias", &[h], 0.0, 0.01)?;
    let p = "layers.0";
    put(
        &format!("{p}.self_attn.q_proj.weight"),
        &[nh * d, h],
        0.0,
        w,
    )?;
    put(
        &format!("{p}.self_attn.k_proj.weight"),
        &[nkv * d, h],
        0.0,
        w,
    )?;
    put(
        &format!("{p}.self_attn.v_proj.weight"),
        &[nkv * d, h],
        0.0,
        w,
    )?;
    put(
        &format!("{p}.self_attn.o_proj.weight"),
        &[h, nh * d],
        0.0,
        w,
    )?;
    if target.qkv_bias {
        put(&format!("{p}.self_attn.q_proj.bias"), &[nh * d], 0.0, 0.1)?;
        put(&format!("{p}.self_attn.k_proj.bias"), &[nkv * d], 0.0, 0.1)?;
        put(&format!("{p}.self_attn.v_proj.bias"), &[nkv * d], 0.0, 0.1)?;
    }
    put(&format!("{p}.mlp.gate_proj.weight"), &[i, h], 0.0, w)?;
    put(&format!("{p}.mlp.up_proj.weight"), &[i, h], 0.0, w)?;
    put(
        &format!("{p}.mlp.down_proj.weight"),
        &[h, i],
        0.0,
        1.0 / (i as f32).sqrt(),
    )?;
    put(
        &format!("{p}.post_attention_layernorm.weight"),
        &[h],
        1.0,
        0.1,
    )?;
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    let mut cfg = target.clone();
    cfg.num_hidden_layers = 1;
    cfg.intermediate_size = intermediate_size;
    cfg.rope_interleaved = false;
    let mut config = cfg.to_hf_json();
    config["bias"] = json!(true);
    let cj = dir.join("config.json");
    std::fs::write(&cj, serde_json::to_string_pretty(&config).expect("json"))
        .map_err(|e| ModelError::io(&cj, e))
}
