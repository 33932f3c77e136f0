//! Text tokenizers: a HF `tokenizer.json`, or one rebuilt from the
//! vocabulary and merges embedded in a GGUF file.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::ModelError;

/// A tokenizer with the special ids and chat template that go with it.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    /// Ids that end generation (EOS, end-of-turn).
    pub eos_ids: Vec<u32>,
    /// Whether encoding a prompt prepends BOS.
    pub add_bos: bool,
    /// The Jinja chat template, if the checkpoint ships one.
    pub chat_template: Option<String>,
    /// Where this tokenizer came from, for manifests and errors.
    pub origin: String,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("origin", &self.origin)
            .field("vocab", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

impl TextTokenizer {
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encodes text; special-token strings in it (`<|im_start|>`) become
    /// their ids. BOS is prepended when the model asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| self.err(format!("encoding failed: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            if let Some(b) = self.bos_id {
                ids.push(b);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Decodes ids, keeping special tokens out of the text.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| self.err(format!("decoding failed: {e}")))
    }

    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// A stable digest of the vocabulary, merges and special tokens: two
    /// tokenizers with the same digest map text to the same ids.
    pub fn digest(&self) -> String {
        let s = self.inner.to_string(false).unwrap_or_default();
        hex(&Sha256::digest(s.as_bytes()))
    }

    /// Whether every id maps to the same token string in both, which is
    /// what a drafter and a target must share.
    pub fn same_vocab(&self, other: &TextTokenizer) -> Result<(), String> {
        let (a, b) = (self.vocab_size(), other.vocab_size());
        if a != b {
            return Err(format!("vocabulary sizes differ ({a} vs {b})"));
        }
        for id in 0..a as u32 {
            let (x, y) = (self.id_to_token(id), other.id_to_token(id));
            if x != y {
                let show = |t: Option<String>| t.map_or("absent".into(), |t| format!("{t:?}"));
                return Err(format!(
                    "token id {id} is {} in one and {} in the other",
                    show(x),
                    show(y)
                ));
            }
        }
        Ok(())
    }

    fn err(&self, detail: String) -> ModelError {
        ModelError::Tokenizer {
            path: PathBuf::from(&self.origin),
            detail,
        }
    }

    /// Reads `tokenizer.json`, with special ids and the chat template from
    /// `tokenizer_config.json` and `generation_config.json` beside it.
    pub fn from_hf_dir(tokenizer_json: &Path) -> Result<Self, ModelError> {
        let inner = tokenizers::Tokenizer::from_file(tokenizer_json).map_err(|e| {
            ModelError::Tokenizer {
                path: tokenizer_json.to_path_buf(),
                detail: format!("not a valid tokenizer.json: {e}"),
            }
        })?;
        let dir = tokenizer_json.parent().unwrap_or(Path::new("."));
        let read_json = |name: &str| -> Result<Option<Value>, ModelError> {
            let p = dir.join(name);
            if !p.exists() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p).map_err(|e| ModelError::io(&p, e))?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| ModelError::Tokenizer {
                    path: p.clone(),
                    detail: format!("not valid JSON: {e}"),
                })
        };
        let tcfg = read_json("tokenizer_config.json")?.unwrap_or(Value::Null);
        let gcfg = read_json("generation_config.json")?.unwrap_or(Value::Null);
        let token_field = |v: &Value| -> Option<String> {
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
                _ => None,
            }
        };
        let bos_id = tcfg
            .get("bos_token")
            .and_then(token_field)
            .and_then(|s| inner.token_to_id(&s))
            .or_else(|| {
                gcfg.get("bos_token_id")
                    .and_then(|v| v.as_u64())
                    .map(|v| v as u32)
            });
        let mut eos_ids = Vec::new();
        if let Some(e) = tcfg.get("eos_token").and_then(token_field) {
            if let Some(id) = inner.token_to_id(&e) {
                eos_ids.push(id);
            }
        }
        match gcfg.get("eos_token_id") {
            Some(Value::Number(n)) => eos_ids.extend(n.as_u64().map(|v| v as u32)),
            Some(Value::Array(a)) => {
                eos_ids.extend(a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32))
            }
            _ => {}
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let add_bos = tcfg
            .get("add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let chat_template = match tcfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take the default one.
            Some(Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(String::from),
            _ => None,
        }
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
        Ok(Self {
            inner,
            bos_id,
            eos_ids,
            add_bos,
            chat_template,
            origin: tokenizer_json.display().to_string(),
        })
    }

    /// Rebuilds a gpt2-style byte-level BPE tokenizer from GGUF metadata.
    pub fn from_gguf(path: &Path, content: &gguf_file::Content) -> Result<Self, ModelError> {
        let err = |detail: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            detail,
        };
        let md = &content.metadata;
        let get_str = |k: &str| md.get(k).and_then(|v| v.to_string().ok()).cloned();
        let get_u32 = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        let model = get_str("tokenizer.ggml.model").ok_or_else(|| {
            err("no tokenizer.ggml.model in the GGUF metadata; pass --tokenizer".into())
        })?;
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer.ggml.model is \"{model}\"; only gpt2-style BPE can be rebuilt from GGUF, pass --tokenizer path/to/tokenizer.json"
            )));
        }
        let tokens = string_array(md.get("tokenizer.ggml.tokens"))
            .ok_or_else(|| err("tokenizer.ggml.tokens is missing or not a string array".into()))?;
        let merges = string_array(md.get("tokenizer.ggml.merges"))
            .ok_or_else(|| err("tokenizer.ggml.merges is missing or not a string array".into()))?;
        let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
            Some(gguf_file::Value::Array(a)) => a
                .iter()
                .map(|v| v.to_i32().map(|x| x as i64).unwrap_or(1))
                .collect(),
            _ => vec![1; tokens.len()],
        };
        let pre = get_str("tokenizer.ggml.pre").unwrap_or_else(|| "default".into());
        let (normalizer, pre_tokenizer) = match pre.as_str() {
            "qwen2" => (
                json!({"type": "NFC"}),
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
                ]}),
            ),
            "llama-bpe" | "llama3" => (
                Value::Null,
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
                ]}),
            ),
            "smollm" => (
                Value::Null,
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Digits", "individual_digits": true},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
                ]}),
            ),
            "gpt-2" | "gpt2" | "default" => (
                Value::Null,
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
            ),
            other => {
                return Err(err(format!(
                    "tokenizer.ggml.pre \"{other}\" is not one pdbench can rebuild (qwen2, llama-bpe, smollm, gpt2); pass --tokenizer path/to/tokenizer.json"
                )))
            }
        };
        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        let mut added = Vec::new();
        for (id, tok) in tokens.iter().enumerate() {
            // llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte.
            let ty = types.get(id).copied().unwrap_or(1);
            if ty == 3 || ty == 4 {
                added.push(json!({
                    "id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == 3 || tok.starts_with("<|"),
                }));
            }
            vocab.insert(tok.clone(), json!(id));
        }
        let merges: Vec<Value> = merges.iter().map(|m| Value::String(m.clone())).collect();
        let tj = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": false, "vocab": vocab, "merges": merges
            }
        });
        let inner: tokenizers::Tokenizer = serde_json::from_value(tj).map_err(|e| {
            err(format!(
                "the embedded vocabulary does not form a tokenizer: {e}"
            ))
        })?;
        let bos_id = get_u32("tokenizer.ggml.bos_token_id");
        let mut eos_ids: Vec<u32> = get_u32("tokenizer.ggml.eos_token_id").into_iter().collect();
        // End-of-turn tokens stop a chat answer too.
        for t in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>"] {
            if let Some(id) = inner.token_to_id(t) {
                eos_ids.push(id);
            }
        }
        if let Some(id) = get_u32("tokenizer.ggml.eot_token_id") {
            eos_ids.push(id);
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        Ok(Self {
            inner,
            bos_id,
            eos_ids,
            add_bos,
            chat_template: get_str("tokenizer.chat_template"),
            origin: format!("{} (embedded vocabulary)", path.display()),
        })
    }
}

fn string_array(v: Option<&gguf_file::Value>) -> Option<Vec<String>> {
    match v? {
        gguf_file::Value::Array(a) => a.iter().map(|x| x.to_string().ok().cloned()).collect(),
        _ => None,
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
