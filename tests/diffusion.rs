//! The diffusion-side methods on the toy zoo: `dllm` against the trainer's
//! own decoder, its strategies and schedule, the prefix cache, and
//! ParallelBench's closed forms at full parallelism.

mod common;

use pdbench::measure::Measured;
use pdbench::methods::MethodModels;
use pdbench::model::LoadedModel;
use pdbench::toy::{self, Item, Split, ToyParams};
use pdbench::train::objective::{
    EvalDecoding, MaskedDiffusion, Objective, ObjectiveParams, Specials,
};
use serde_json::json;

const EOS: u32 = 2;

fn with(dllm: &LoadedModel) -> MethodModels<'_> {
    MethodModels {
        dllm: Some(dllm),
        ..MethodModels::target_only(dllm)
    }
}

fn items(tasks: &[&str], per_task: usize, list_len: [usize; 2]) -> Vec<Item> {
    toy::generate(&ToyParams {
        split: Split::Test,
        per_task,
        seed: 2026,
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
        list_len,
        distinct: true,
    })
    .unwrap()
}

fn encode(m: &LoadedModel, text: &str) -> Vec<u32> {
    m.tokenizer.encode(text).unwrap()
}

fn dllm(m: &LoadedModel, params: serde_json::Value, prompt: &[u32], seed: u64) -> Measured {
    // 40 tokens, as the toy suite allows; the canvas is the model's 32.
    common::decode_with_models("dllm", params, &with(m), prompt, 40, seed)
}

/// The answer ids before the first EOS.
fn answer(out: &[u32]) -> Vec<u32> {
    out.iter().copied().take_while(|&t| t != EOS).collect()
}

/// Every canvas position is committed exactly once, by one forward per
/// step.
fn check_canvas(m: &Measured, gen: usize) {
    let mut seen: Vec<u32> = m.steps.iter().flat_map(|s| s.positions.clone()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..gen as u32).collect::<Vec<_>>());
    assert!(m
        .steps
        .iter()
        .all(|s| s.target_calls == 1 && !s.positions.is_empty()));
}

#[test]
fn top1_confidence_decoding_equals_the_trainers_decoder() {
    for (name, block) in [("toy-dllm", false), ("toy-bdllm", true)] {
        let m = common::load(name);
        let spec = m.info.diffusion.clone().expect("a diffusion model");
        let params = ObjectiveParams {
            gen_len: 32,
            shift_logits: spec.shift_logits,
            block_size: spec.block_size.unwrap_or(4),
            ..Default::default()
        };
        let sp = Specials {
            pad: 0,
            eos: EOS,
            mask: spec.mask_token_id,
        };
        let obj = MaskedDiffusion { block };
        for it in items(&[], 2, [3, 5]) {
            let prompt = encode(&m, &it.prompt);
            let (want, forwards) = obj
                .decode(
                    &m.model,
                    &prompt,
                    sp,
                    &params,
                    40,
                    &mut EvalDecoding::greedy(1),
                )
                .unwrap();
            let got = dllm(&m, json!({"tokens_per_step": 1}), &prompt, 0);
            assert_eq!(answer(&got.output), want, "{name}: {}", it.prompt);
            assert_eq!(got.steps.len(), forwards, "{name}: one forward per step");
            check_canvas(&got, 32);
        }
    }
}

#[test]
fn schedules_commit_what_they_promise() {
    let m = common::load("toy-dllm");
    let prompt = encode(&m, &items(&["sort"], 1, [4, 4])[0].prompt);
    for k in [2usize, 3, 5] {
        let r = dllm(&m, json!({"tokens_per_step": k}), &prompt, 0);
        check_canvas(&r, 32);
        let sizes: Vec<usize> = r.steps.iter().map(|s| s.positions.len()).collect();
        assert_eq!(sizes.len(), 32usize.div_ceil(k), "k = {k}");
        assert!(sizes.iter().all(|&n| n == k || n == k - 1), "{sizes:?}");
    }
    // LLaDA's `steps`: 32 positions in blocks of 8 over 8 steps, 2 a block.
    let r = dllm(&m, json!({"steps": 8, "block_length": 8}), &prompt, 0);
    check_canvas(&r, 32);
    assert!(r.steps.iter().all(|s| s.positions.len() == 4));
    let windows: Vec<u32> = r.steps.iter().map(|s| s.window.unwrap()).collect();
    assert_eq!(windows, [0, 0, 1, 1, 2, 2, 3, 3], "blocks left to right");
    for s in &r.steps {
        let b = s.window.unwrap();
        assert!(s.positions.iter().all(|&p| p / 8 == b), "inside its block");
    }
    // Threshold and factor commit at least one position per step, and
    // confident models commit many.
    for strategy in ["threshold", "factor"] {
        let r = dllm(&m, json!({"strategy": strategy}), &prompt, 0);
        check_canvas(&r, 32);
        assert!(r.steps.len() < 32, "{strategy}: {} steps", r.steps.len());
    }
    // Random order commits the same canvas in a seed-dependent order.
    let a = dllm(
        &m,
        json!({"confidence": "random", "tokens_per_step": 1}),
        &prompt,
        1,
    );
    let b = dllm(
        &m,
        json!({"confidence": "random", "tokens_per_step": 1}),
        &prompt,
        2,
    );
    let order =
        |r: &Measured| -> Vec<u32> { r.steps.iter().flat_map(|s| s.positions.clone()).collect() };
    assert_ne!(order(&a), order(&b));
    assert_eq!(
        order(&a),
        order(&dllm(
            &m,
            json!({"confidence": "random", "tokens_per_step": 1}),
            &prompt,
            1
        ))
    );
}

#[test]
fn the_prefix_cache_is_exact_for_block_diffusion_and_cheaper() {
    let m = common::load("toy-bdllm");
    for it in items(&[], 1, [3, 5]) {
        let prompt = encode(&m, &it.prompt);
        for params in [
            json!({}),
            json!({"strategy": "threshold", "threshold": 0.7}),
        ] {
            let mut cached = params.clone();
            cached["cache"] = json!("prefix");
            let plain = dllm(&m, params.clone(), &prompt, 0);
            let fast = dllm(&m, cached, &prompt, 0);
            assert_eq!(fast.output, plain.output, "{}", it.prompt);
            let pos = |r: &Measured| -> Vec<Vec<u32>> {
                r.steps.iter().map(|s| s.positions.clone()).collect()
            };
            assert_eq!(pos(&fast), pos(&plain));
            let width = |r: &Measured| -> usize { r.steps.iter().map(|s| s.verify_width).sum() };
            assert!(width(&fast) < width(&plain) || plain.steps.len() == 8);
        }
    }
}

#[test]
fn the_prefix_cache_on_full_attention_is_approximate_but_close() {
    let m = common::load("toy-dllm");
    let its = items(&[], 4, [3, 5]);
    let mut same = 0;
    let (mut plain_score, mut cached_score) = (0.0, 0.0);
    for it in &its {
        let prompt = encode(&m, &it.prompt);
        let plain = dllm(&m, json!({}), &prompt, 0);
        let fast = dllm(&m, json!({"cache": "prefix"}), &prompt, 0);
        same += usize::from(fast.output == plain.output);
        let text = |r: &Measured| m.tokenizer.decode(&answer(&r.output)).unwrap();
        plain_score += toy::score(&text(&plain), &it.reference).unwrap_or(0.0);
        cached_score += toy::score(&text(&fast), &it.reference).unwrap_or(0.0);
        let width = |r: &Measured| -> usize { r.steps.iter().map(|s| s.verify_width).sum() };
        assert!(width(&fast) < width(&plain));
    }
    let n = its.len() as f64;
    eprintln!(
        "toy-dllm, prefix cache: {same}/{} outputs equal; score {:.1}% vs {:.1}%",
        its.len(),
        100.0 * cached_score / n,
        100.0 * plain_score / n
    );
    // Fast-dLLM's claim is a small loss; 10 points on 60 items is a bound
    // the toy model holds with room (see the printed figures).
    assert!(100.0 * (plain_score - cached_score) / n <= 10.0);
}

/// Fast-dLLM's dual cache: with several blocks, steps after a block's
/// first forward the block alone (its 8 positions and the row before it,
/// the logits being shifted), fewer positions than the prefix cache's,
/// and the answers stay close to uncached decoding.
#[test]
fn the_dual_cache_forwards_only_the_block_and_stays_close() {
    let m = common::load("toy-dllm");
    let its = items(&[], 4, [3, 5]);
    let mut same = 0;
    let (mut plain_score, mut dual_score) = (0.0, 0.0);
    for it in &its {
        let prompt = encode(&m, &it.prompt);
        let run = |cache: &str| dllm(&m, json!({"block_length": 8, "cache": cache}), &prompt, 0);
        let (plain, prefix, dual) = (run("none"), run("prefix"), run("dual"));
        let width = |r: &Measured| -> usize { r.steps.iter().map(|s| s.verify_width).sum() };
        assert!(width(&dual) < width(&prefix) && width(&prefix) < width(&plain));
        // Steps after a block's first: the block and the row before it.
        for w in dual.steps.windows(2) {
            if w[0].window == w[1].window {
                assert!(w[1].verify_width <= 9, "{}", w[1].verify_width);
            }
        }
        same += usize::from(dual.output == plain.output);
        let text = |r: &Measured| m.tokenizer.decode(&answer(&r.output)).unwrap();
        plain_score += toy::score(&text(&plain), &it.reference).unwrap_or(0.0);
        dual_score += toy::score(&text(&dual), &it.reference).unwrap_or(0.0);
    }
    let n = its.len() as f64;
    eprintln!(
        "toy-dllm, blocks of 8, dual cache: {same}/{} outputs equal; score {:.1}% vs {:.1}%",
        its.len(),
        100.0 * dual_score / n,
        100.0 * plain_score / n
    );
    assert!(100.0 * (plain_score - dual_score) / n <= 10.0);
}

/// ParallelBench's closed forms: with the whole canvas decoded in one
/// step, positions are sampled independently from their marginals.
#[test]
fn full_parallelism_lands_near_the_closed_forms() {
    let m = common::load("toy-dllm");
    let full = json!({"tokens_per_step": 32, "temperature": 1.0});
    let rate = |task: &str, n: usize| -> f64 {
        let its = items(&[task], n, [3, 3]);
        let mut valid = 0.0;
        for (i, it) in its.iter().enumerate() {
            let prompt = encode(&m, &it.prompt);
            let r = dllm(&m, full.clone(), &prompt, i as u64);
            assert_eq!(r.steps.len(), 1, "one forward");
            let text = m.tokenizer.decode(&answer(&r.output)).unwrap();
            valid += toy::score(&text, &it.reference).unwrap_or(0.0);
        }
        100.0 * valid / its.len() as f64
    };
    // 300 items: a binomial standard error of 2.9 points at 44%; the bound
    // is about three of them.
    let replace = rate("replace_random", 300);
    eprintln!(
        "replace_random, 3 names, one step at temperature 1: {replace:.1}% (closed form 44.4%)"
    );
    assert!((replace - 44.4).abs() <= 9.0, "{replace}");
    // Shuffle: n!/n^n = 22.2% permutations, of which the toy metric refuses
    // the unchanged list: 5/27 = 18.5%.
    let shuffle = rate("shuffle", 300);
    eprintln!("shuffle, 3 names, one step at temperature 1: {shuffle:.1}% (closed form 18.5%)");
    assert!((shuffle - 18.5).abs() <= 9.0, "{shuffle}");
}

/// HF llama names of a tiny model, as LLaDA's (OLMo-style) checkpoint
/// names them; restated here rather than imported, so that the loader's
/// table is checked against a second writing of it.
fn llada_name(hf: &str) -> String {
    let map = [
        ("model.embed_tokens.weight", "model.transformer.wte.weight"),
        ("model.norm.weight", "model.transformer.ln_f.weight"),
        ("lm_head.weight", "model.transformer.ff_out.weight"),
    ];
    if let Some((_, l)) = map.iter().find(|(h, _)| *h == hf) {
        return l.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, tail) = rest.split_once('.').unwrap();
    let tail = match tail {
        "self_attn.o_proj.weight" => "attn_out.weight".to_string(),
        "mlp.gate_proj.weight" => "ff_proj.weight".to_string(),
        "mlp.up_proj.weight" => "up_proj.weight".to_string(),
        "mlp.down_proj.weight" => "ff_out.weight".to_string(),
        "input_layernorm.weight" => "attn_norm.weight".to_string(),
        "post_attention_layernorm.weight" => "ff_norm.weight".to_string(),
        t => t.strip_prefix("self_attn.").unwrap().to_string(),
    };
    format!("model.transformer.blocks.{layer}.{tail}")
}

fn bidirectional_logits(m: &LoadedModel, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = m.model.new_cache(tokens.len()).unwrap();
    let req = pdbench::model::Forward::causal(tokens, 0)
        .with_mask(pdbench::model::Mask::Bidirectional)
        .with_logits(pdbench::model::LogitsAt::All);
    m.model
        .forward(&mut cache, &req)
        .unwrap()
        .logits
        .unwrap()
        .to_vec2()
        .unwrap()
}

/// A LLaDA checkpoint (OLMo tensor names, `d_model`-style config, logits
/// not shifted) and a Dream one (Qwen2 tensors, logits shifted) load as
/// diffusion LMs and compute exactly what the same weights compute under
/// the HF llama/qwen2 layout; `dllm` decodes with both.
#[test]
fn llada_and_dream_checkpoints_load_with_their_quirks() {
    use pdbench::model::Architecture;
    let dir = tempfile::tempdir().unwrap();
    let mask = 259u32; // the tiny tokenizer's <mask>
    let tokens: Vec<u32> = vec![10, 20, 30, 40, mask, mask, mask];

    // LLaDA: the llama weights under OLMo's names.
    let hf = dir.path().join("llama");
    let cfg = common::tiny_model(&hf, Architecture::Llama, 3);
    let llada = dir.path().join("llada");
    std::fs::create_dir_all(&llada).unwrap();
    let tensors =
        candle_core::safetensors::load(hf.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let renamed: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (llada_name(&k), v))
        .collect();
    assert!(renamed.contains_key("model.transformer.blocks.1.attn_out.weight"));
    candle_core::safetensors::save(&renamed, llada.join("model.safetensors")).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        if hf.join(f).exists() {
            std::fs::copy(hf.join(f), llada.join(f)).unwrap();
        }
    }
    let llada_cfg = json!({
        "model_type": "llada", "architectures": ["LLaDAModelLM"],
        "d_model": cfg.hidden_size, "n_heads": cfg.num_attention_heads,
        "n_kv_heads": cfg.num_key_value_heads, "n_layers": cfg.num_hidden_layers,
        "mlp_hidden_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size,
        "max_sequence_length": cfg.max_position_embeddings, "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps, "weight_tying": cfg.tie_word_embeddings,
        "include_qkv_bias": false, "mask_token_id": mask
    });
    std::fs::write(llada.join("config.json"), llada_cfg.to_string()).unwrap();
    let original = common::load(hf.to_str().unwrap());
    let l = common::load(llada.to_str().unwrap());
    let spec = l.info.diffusion.clone().expect("LLaDA is a diffusion LM");
    assert_eq!(
        (spec.family.as_str(), spec.mask_token_id, spec.shift_logits),
        ("llada", mask, false)
    );
    assert_eq!(
        bidirectional_logits(&l, &tokens),
        bidirectional_logits(&original, &tokens)
    );
    let r = dllm(
        &l,
        json!({"gen_length": 8, "tokens_per_step": 2}),
        &tokens[..4],
        0,
    );
    check_canvas(&r, 8);
    assert!(
        !r.output.contains(&mask),
        "the mask token is never committed"
    );

    // Dream: Qwen2 weights, config says Dream.
    let qwen = dir.path().join("qwen");
    common::tiny_model(&qwen, Architecture::Qwen2, 4);
    let dream = dir.path().join("dream");
    std::fs::create_dir_all(&dream).unwrap();
    for e in std::fs::read_dir(&qwen).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dream.join(e.file_name())).unwrap();
    }
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(qwen.join("config.json")).unwrap()).unwrap();
    c["model_type"] = json!("Dream");
    c["architectures"] = json!(["DreamModel"]);
    c["mask_token_id"] = json!(mask);
    std::fs::write(dream.join("config.json"), c.to_string()).unwrap();
    let q = common::load(qwen.to_str().unwrap());
    let d = common::load(dream.to_str().unwrap());
    let spec = d.info.diffusion.clone().expect("Dream is a diffusion LM");
    assert_eq!(
        (spec.family.as_str(), spec.mask_token_id, spec.shift_logits),
        ("dream", mask, true)
    );
    assert!(q.info.diffusion.is_none());
    assert_eq!(
        bidirectional_logits(&d, &tokens),
        bidirectional_logits(&q, &tokens)
    );
    let r = dllm(
        &d,
        json!({"gen_length": 8, "strategy": "threshold"}),
        &tokens[..4],
        0,
    );
    check_canvas(&r, 8);
}
