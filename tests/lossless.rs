//! Lossless methods emit exactly `ar`'s tokens at greedy settings, on the
//! toy zoo and on real GGUF models, and keep `ar`'s distribution when
//! sampling.

mod common;

use std::collections::BTreeMap;

use pdbench::model::eagle::LoadedHead;
use pdbench::model::LoadedModel;
use serde_json::json;

/// Test-split prompts of every toy task, `per_task` each.
fn toy_prompts(m: &LoadedModel, per_task: usize) -> Vec<Vec<u32>> {
    let p: pdbench::toy::ToyParams = serde_json::from_value(json!({
        "split": "test", "per_task": per_task, "seed": 99
    }))
    .unwrap();
    pdbench::toy::generate(&p)
        .unwrap()
        .iter()
        .map(|it| m.tokenizer.encode(&it.prompt).unwrap())
        .collect()
}

/// Every prompt decoded by `method` under each params value equals `ar`.
fn assert_equals_ar(
    method: &str,
    params: &[serde_json::Value],
    target: &LoadedModel,
    draft: Option<&LoadedModel>,
    prompts: &[Vec<u32>],
    n: usize,
) -> f64 {
    assert_equals_ar_with(method, params, target, draft, None, prompts, n)
}

/// [`assert_equals_ar`] with an EAGLE head.
fn assert_equals_ar_with(
    method: &str,
    params: &[serde_json::Value],
    target: &LoadedModel,
    draft: Option<&LoadedModel>,
    head: Option<&LoadedHead>,
    prompts: &[Vec<u32>],
    n: usize,
) -> f64 {
    let mut steps = 0usize;
    let mut tokens = 0usize;
    for (i, prompt) in prompts.iter().enumerate() {
        let want = common::decode_with("ar", json!({}), target, prompt, n, i as u64);
        assert_eq!(want.len(), n);
        for p in params {
            let models = pdbench::methods::MethodModels {
                draft,
                head,
                ..pdbench::methods::MethodModels::target_only(target)
            };
            let got =
                common::decode_with_models(method, p.clone(), &models, prompt, n, 7 + i as u64);
            assert_eq!(
                got.output,
                want,
                "{method} {p} differs from ar on prompt {i} ({} tokens)",
                prompt.len()
            );
            steps += got.steps.len();
            tokens += got.output.len();
        }
    }
    tokens as f64 / steps as f64
}

#[test]
fn sps_greedy_equals_ar_on_the_toy_zoo() {
    let target = common::load("toy-target");
    let draft = common::load("toy-draft");
    let prompts = toy_prompts(&target, 3);
    let params: Vec<_> = [1, 2, 4, 5, 8]
        .iter()
        .map(|k| json!({ "draft_len": k }))
        .collect();
    let tokens_per_step = assert_equals_ar("sps", &params, &target, Some(&draft), &prompts, 40);
    // The drafter is right often enough that steps carry several tokens.
    assert!(tokens_per_step > 1.5, "{tokens_per_step} tokens per step");
    // A drafter that is the target itself is never rejected.
    let own = assert_equals_ar(
        "sps",
        &[json!({ "draft_len": 4 })],
        &target,
        Some(&target),
        &prompts[..5],
        40,
    );
    assert!(own > 4.0, "self-drafting gave {own} tokens per step");
}

#[test]
fn pld_jacobi_and_lookahead_greedy_equal_ar_on_the_toy_zoo() {
    let target = common::load("toy-target");
    let prompts = toy_prompts(&target, 3);
    let pld: Vec<_> = [(3, 10), (1, 2), (2, 5)]
        .iter()
        .map(|(n, k)| json!({ "max_ngram": n, "max_draft": k }))
        .collect();
    let tps = assert_equals_ar("pld", &pld, &target, None, &prompts, 40);
    // Copy-like tasks repeat the prompt: lookups pay off.
    assert!(tps > 1.2, "pld: {tps} tokens per step");
    let jacobi: Vec<_> = [1, 4, 16].iter().map(|w| json!({ "window": w })).collect();
    assert_equals_ar("jacobi", &jacobi, &target, None, &prompts, 40);
    let lookahead: Vec<_> = [(7, 5, 7), (3, 2, 1), (4, 3, 3)]
        .iter()
        .map(|(w, n, g)| json!({ "window": w, "ngram": n, "guesses": g }))
        .collect();
    assert_equals_ar("lookahead", &lookahead, &target, None, &prompts, 40);
}

/// EAGLE settings the lossless tests sweep: chains, the EAGLE-2 default
/// tree, narrow and deep trees, and a tree of one path.
fn eagle_params() -> Vec<serde_json::Value> {
    vec![
        json!({ "mode": "chain", "draft_len": 1 }),
        json!({ "mode": "chain", "draft_len": 5 }),
        json!({}),
        json!({ "tree_top_k": 3, "tree_depth": 4, "total_tokens": 12 }),
        json!({ "tree_top_k": 1, "tree_depth": 6, "total_tokens": 7 }),
        json!({ "tree_top_k": 4, "tree_depth": 7, "total_tokens": 5 }),
    ]
}

#[test]
fn eagle_greedy_equals_ar_on_the_toy_zoo() {
    let target = common::load("toy-target");
    let head = common::load_head(
        &pdbench::model::source::zoo_dir().join("toy-eagle"),
        &target,
    );
    let prompts = toy_prompts(&target, 2);
    let params = eagle_params();
    assert_equals_ar_with("eagle", &params, &target, None, Some(&head), &prompts, 40);
    // The trained head drafts well enough that the default tree's steps
    // carry several tokens.
    let tps = assert_equals_ar_with(
        "eagle",
        &[json!({})],
        &target,
        None,
        Some(&head),
        &prompts,
        40,
    );
    assert!(tps > 2.0, "{tps} tokens per step in the default tree");
}

/// A random head proposes poor drafts: every rejection path runs, and the
/// output must still be ar's, on both architectures and several seeds.
#[test]
fn eagle_greedy_equals_ar_with_random_heads() {
    for (arch, seed) in [
        (pdbench::model::Architecture::Llama, 1),
        (pdbench::model::Architecture::Qwen2, 2),
        (pdbench::model::Architecture::Llama, 3),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = common::tiny_model(&dir.path().join("m"), arch, seed);
        pdbench::model::random::write_random_head(&dir.path().join("h"), &cfg, 96, seed + 10)
            .unwrap();
        let target = common::load_dir(&dir.path().join("m"));
        let head = common::load_head(&dir.path().join("h"), &target);
        let prompts: Vec<Vec<u32>> = (0..3)
            .map(|i| {
                target
                    .tokenizer
                    .encode(&format!("prompt {i} about {}", seed * 31 + i))
                    .unwrap()
            })
            .collect();
        assert_equals_ar_with(
            "eagle",
            &eagle_params(),
            &target,
            None,
            Some(&head),
            &prompts,
            24,
        );
    }
}

/// Real GGUF targets with random heads of their hidden size.
#[test]
fn eagle_greedy_equals_ar_on_real_ggufs() {
    common::fetched("smollm2-135m");
    common::fetched("qwen2.5-coder-0.5b");
    for (name, params) in [
        (
            "smollm2-135m",
            vec![
                json!({ "mode": "chain", "draft_len": 4 }),
                json!({ "tree_top_k": 4, "tree_depth": 4, "total_tokens": 12 }),
            ],
        ),
        (
            "qwen2.5-coder-0.5b",
            vec![json!({ "tree_top_k": 3, "tree_depth": 3, "total_tokens": 8 })],
        ),
    ] {
        let target = common::load(name);
        let dir = tempfile::tempdir().unwrap();
        pdbench::model::random::write_random_head(dir.path(), target.model.config(), 256, 5)
            .unwrap();
        let head = common::load_head(dir.path(), &target);
        let prompts = common::chat_prompts(&target);
        assert_equals_ar_with(
            "eagle",
            &params,
            &target,
            None,
            Some(&head),
            &prompts[..1],
            16,
        );
    }
}

/// SmolLM2 drafting for itself at another precision: nearly every draft is
/// kept, some are not, and the output is ar's bit for bit.
#[test]
fn sps_greedy_equals_ar_on_smollm2() {
    common::fetched("smollm2-135m");
    let quant = common::load("smollm2-135m");
    let dense = pdbench::model::load(
        "smollm2-135m",
        &common::store(),
        pdbench::model::FetchPolicy::Never,
        &pdbench::model::LoadOptions {
            dequantize: true,
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    let prompts = common::chat_prompts(&quant);
    assert_equals_ar(
        "sps",
        &[json!({ "draft_len": 3 }), json!({ "draft_len": 6 })],
        &quant,
        Some(&dense),
        &prompts[..2],
        32,
    );
    assert_equals_ar("pld", &[json!({})], &quant, None, &prompts[..2], 32);
    assert_equals_ar(
        "jacobi",
        &[json!({ "window": 8 })],
        &quant,
        None,
        &prompts[..1],
        24,
    );
    assert_equals_ar("lookahead", &[json!({})], &quant, None, &prompts[..1], 32);
}

/// The real drafter/target pair: Qwen2.5-Coder-0.5B drafting for 1.5B.
#[test]
fn sps_greedy_equals_ar_on_the_qwen_coder_pair() {
    common::fetched("qwen2.5-coder-0.5b");
    common::fetched("qwen2.5-coder-1.5b");
    let target = common::load("qwen2.5-coder-1.5b");
    let draft = common::load("qwen2.5-coder-0.5b");
    let prompts = common::chat_prompts(&target);
    let tps = assert_equals_ar(
        "sps",
        &[json!({ "draft_len": 5 })],
        &target,
        Some(&draft),
        &prompts[..1],
        24,
    );
    assert!(tps > 1.0, "{tps}");
    assert_equals_ar("pld", &[json!({})], &target, None, &prompts[..1], 24);
}

/// Two-sample chi-square homogeneity statistic and its degrees of freedom;
/// categories with fewer than 10 pooled counts are merged into one.
fn chi_square(a: &BTreeMap<u32, usize>, b: &BTreeMap<u32, usize>) -> (f64, usize) {
    let na: usize = a.values().sum();
    let nb: usize = b.values().sum();
    let mut cells: Vec<(usize, usize)> = Vec::new();
    let mut rare = (0, 0);
    let keys: std::collections::BTreeSet<u32> = a.keys().chain(b.keys()).copied().collect();
    for k in keys {
        let (x, y) = (
            a.get(&k).copied().unwrap_or(0),
            b.get(&k).copied().unwrap_or(0),
        );
        if x + y < 10 {
            rare = (rare.0 + x, rare.1 + y);
        } else {
            cells.push((x, y));
        }
    }
    if rare.0 + rare.1 > 0 {
        cells.push(rare);
    }
    let n = (na + nb) as f64;
    let mut chi = 0.0;
    for &(x, y) in &cells {
        let total = (x + y) as f64;
        for (obs, size) in [(x, na), (y, nb)] {
            let e = total * size as f64 / n;
            chi += (obs as f64 - e).powi(2) / e;
        }
    }
    (chi, cells.len().saturating_sub(1))
}

/// Upper 0.1% point of chi-square with `df` degrees of freedom
/// (Wilson–Hilferty).
fn chi_square_critical(df: usize) -> f64 {
    let k = df as f64;
    let z = 3.090_232; // standard normal upper 0.1%
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// At temperature 1 the tokens `sps` emits at a position reached through
/// verification follow `ar`'s distribution (two-sample chi-square at 0.1%),
/// with a weak drafter so that rejections and residual draws happen.
#[test]
fn sps_sampling_keeps_the_target_distribution() {
    let target = common::load("toy-target");
    let draft = common::load("toy-draft");
    let prompt = target
        .tokenizer
        .encode("shuffle : [ Ann , Bob , Cy , Dan , Eve ] =")
        .unwrap();
    let sampling = json!({ "temperature": 1.0 });
    let mut with = json!({ "draft_len": 3 });
    with["temperature"] = json!(1.0);
    let n = 1500;
    let position = 3; // "[", a name, ",", then this name
    let mut ar = BTreeMap::new();
    let mut sps = BTreeMap::new();
    let mut rejections = 0usize;
    for seed in 0..n {
        let a = common::decode_with("ar", sampling.clone(), &target, &prompt, position + 1, seed);
        *ar.entry(a[position]).or_insert(0usize) += 1;
        let s = common::decode_with_draft(
            "sps",
            with.clone(),
            &target,
            Some(&draft),
            &prompt,
            position + 1,
            1_000_000 + seed,
        );
        rejections += s
            .steps
            .iter()
            .filter(|st| st.accepted < st.proposed)
            .count();
        *sps.entry(s.output[position]).or_insert(0usize) += 1;
    }
    let (chi, df) = chi_square(&ar, &sps);
    assert!(
        df >= 2,
        "the position should have several likely tokens: {ar:?}"
    );
    assert!(
        chi < chi_square_critical(df),
        "chi2 {chi:.1} with {df} df; ar {ar:?} sps {sps:?}"
    );
    assert!(rejections > n as usize / 10, "only {rejections} rejections");
}

/// At temperature 1 the tokens `eagle` emits (chain: the speculative
/// rule; tree: recursive rejection over siblings) at a position reached
/// through verification follow `ar`'s distribution (two-sample chi-square
/// at 0.1%).
#[test]
fn eagle_sampling_keeps_the_target_distribution() {
    let target = common::load("toy-target");
    let head = common::load_head(
        &pdbench::model::source::zoo_dir().join("toy-eagle"),
        &target,
    );
    let prompt = target
        .tokenizer
        .encode("shuffle : [ Ann , Bob , Cy , Dan , Eve ] =")
        .unwrap();
    let position = 3;
    let n = 1200;
    let mut ar = BTreeMap::new();
    for seed in 0..n {
        let a = common::decode_with(
            "ar",
            json!({ "temperature": 1.0 }),
            &target,
            &prompt,
            position + 1,
            seed,
        );
        *ar.entry(a[position]).or_insert(0usize) += 1;
    }
    for params in [
        json!({ "mode": "chain", "draft_len": 3, "temperature": 1.0 }),
        json!({ "tree_top_k": 3, "tree_depth": 3, "total_tokens": 10, "temperature": 1.0 }),
    ] {
        let mut got = BTreeMap::new();
        let (mut kept, mut rejected) = (0usize, 0usize);
        for seed in 0..n {
            let models = pdbench::methods::MethodModels {
                head: Some(&head),
                ..pdbench::methods::MethodModels::target_only(&target)
            };
            let s = common::decode_with_models(
                "eagle",
                params.clone(),
                &models,
                &prompt,
                position + 1,
                2_000_000 + seed,
            );
            for st in &s.steps {
                if st.kind == pdbench::measure::StepKind::Decode {
                    kept += usize::from(st.accepted > 0);
                    rejected += usize::from(st.accepted == 0);
                }
            }
            *got.entry(s.output[position]).or_insert(0usize) += 1;
        }
        let (chi, df) = chi_square(&ar, &got);
        assert!(
            df >= 2,
            "the position should have several likely tokens: {ar:?}"
        );
        assert!(
            chi < chi_square_critical(df),
            "{params}: chi2 {chi:.1} with {df} df; ar {ar:?} eagle {got:?}"
        );
        // Drafts are both kept and turned down along the way.
        assert!(
            kept > n as usize / 10 && rejected > n as usize / 10,
            "{params}: kept {kept}, rejected {rejected}"
        );
    }
}

/// `cllm` decodes with the consistency-trained model in the target's
/// place: its greedy output is that model's own AR output, and Jacobi
/// needs fewer forwards on it than on the target it was adapted from.
#[test]
fn cllm_equals_its_own_models_ar_and_converges_faster() {
    let target = common::load("toy-target");
    let cllm = common::load("toy-cllm");
    let prompts = toy_prompts(&target, 2);
    let (mut cllm_steps, mut jacobi_steps, mut tokens) = (0usize, 0usize, 0usize);
    for (i, prompt) in prompts.iter().enumerate() {
        let want = common::decode_with("ar", json!({}), &cllm, prompt, 40, i as u64);
        let models = pdbench::methods::MethodModels {
            target: &target,
            draft: None,
            head: None,
            consistency: Some(&cllm),
            dllm: None,
            filter: None,
            dllm_drafter: None,
            tidar: None,
        };
        let got = common::decode_with_models("cllm", json!({}), &models, prompt, 40, 9 + i as u64);
        assert_eq!(
            got.output, want,
            "cllm differs from toy-cllm's ar on prompt {i}"
        );
        let j =
            common::decode_with_draft("jacobi", json!({}), &target, None, prompt, 40, 9 + i as u64);
        cllm_steps += got.steps.len();
        jacobi_steps += j.steps.len();
        tokens += got.output.len();
    }
    assert!(
        cllm_steps < jacobi_steps,
        "cllm took {cllm_steps} steps for {tokens} tokens, jacobi on toy-target {jacobi_steps}"
    );
}

/// Released EAGLE heads ship `pytorch_model.bin`: the same head as a
/// PyTorch state dict drafts exactly what its safetensors form drafts.
#[test]
fn eagle_heads_load_from_pytorch_state_dicts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::tiny_model(
        &dir.path().join("m"),
        pdbench::model::Architecture::Qwen2,
        4,
    );
    let st = dir.path().join("st");
    pdbench::model::random::write_random_head(&st, &cfg, 80, 9).unwrap();
    let pth = dir.path().join("pth");
    std::fs::create_dir_all(&pth).unwrap();
    std::fs::copy(st.join("config.json"), pth.join("config.json")).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/safetensors_to_pth.py");
    let ok = std::process::Command::new("python3")
        .arg(&script)
        .arg(st.join("model.safetensors"))
        .arg(pth.join("pytorch_model.bin"))
        .status()
        .unwrap();
    assert!(ok.success());
    let target = common::load_dir(&dir.path().join("m"));
    let a = common::load_head(&st, &target);
    let b = common::load_head(&pth, &target);
    assert!(b.info.files[1].path.ends_with("pytorch_model.bin"));
    let prompt = target.tokenizer.encode("a prompt for both heads").unwrap();
    let run = |h: &LoadedHead| {
        let models = pdbench::methods::MethodModels {
            head: Some(h),
            ..pdbench::methods::MethodModels::target_only(&target)
        };
        let m = common::decode_with_models(
            "eagle",
            json!({ "tree_top_k": 4, "tree_depth": 3, "total_tokens": 10 }),
            &models,
            &prompt,
            20,
            1,
        );
        let accepted: Vec<usize> = m.steps.iter().map(|s| s.accepted).collect();
        (m.output, accepted)
    };
    assert_eq!(run(&a), run(&b));
    // And the head computes the same features from either file.
    let h = cfg.hidden_size;
    let feats: Vec<f32> = (0..3 * h)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let feats = candle_core::Tensor::from_vec(feats, (3, h), &candle_core::Device::Cpu).unwrap();
    let out = |lh: &LoadedHead| {
        let mut cache = lh.head.new_cache(8).unwrap();
        lh.head
            .forward(
                &target.model,
                &mut cache,
                &pdbench::model::eagle::HeadForward {
                    tokens: &[5, 6, 7],
                    features: &feats,
                    start: 0,
                    mask: pdbench::model::Mask::Causal,
                    positions: None,
                },
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (x, y) = (out(&a), out(&b));
    assert!(x.iter().any(|v| v.abs() > 1e-3));
    assert_eq!(x, y);
}

/// The models of the diffusion-side drafters.
fn diffusion_models<'a>(
    target: &'a LoadedModel,
    dllm: Option<&'a LoadedModel>,
    dllm_drafter: Option<&'a LoadedModel>,
    tidar: Option<&'a LoadedModel>,
) -> pdbench::methods::MethodModels<'a> {
    pdbench::methods::MethodModels {
        dllm,
        dllm_drafter,
        tidar,
        ..pdbench::methods::MethodModels::target_only(target)
    }
}

/// Every prompt decoded by `method` under each params value equals `want`'s
/// AR tokens; returns tokens per step.
fn assert_equals_ar_of(
    method: &str,
    params: &[serde_json::Value],
    models: &pdbench::methods::MethodModels<'_>,
    ar_model: &LoadedModel,
    prompts: &[Vec<u32>],
    n: usize,
) -> f64 {
    let (mut steps, mut tokens) = (0usize, 0usize);
    for (i, prompt) in prompts.iter().enumerate() {
        let want = common::decode_with("ar", json!({}), ar_model, prompt, n, i as u64);
        for p in params {
            let got =
                common::decode_with_models(method, p.clone(), models, prompt, n, 3 + i as u64);
            assert_eq!(
                got.output, want,
                "{method} {p} differs from ar on prompt {i}"
            );
            steps += got.steps.len();
            tokens += got.output.len();
        }
    }
    tokens as f64 / steps as f64
}

/// DiffuSpec (toy-dllm drafting, with and without path search and adaptive
/// length) and DEER (toy-deer, one and several denoising steps) emit
/// toy-target's AR tokens, several per step.
#[test]
fn diffuspec_and_deer_greedy_equal_ar_on_the_toy_zoo() {
    let target = common::load("toy-target");
    let dllm = common::load("toy-dllm");
    let deer = common::load("toy-deer");
    let prompts = toy_prompts(&target, 2);
    let models = diffusion_models(&target, Some(&dllm), Some(&deer), None);
    let diffuspec: Vec<_> = [
        json!({ "draft_len_min": 6, "draft_len_max": 12, "draft_len_step": 3 }),
        json!({ "cps": false, "draft_len_min": 6, "draft_len_max": 12, "draft_len_step": 3 }),
        json!({ "adl": false, "draft_len_min": 2, "draft_len_max": 3 }),
        json!({}),
    ]
    .to_vec();
    let tps = assert_equals_ar_of("diffuspec", &diffuspec, &models, &target, &prompts, 40);
    assert!(tps > 2.0, "diffuspec: {tps} tokens per step");
    let deer_params: Vec<_> = [
        json!({}),
        json!({ "block_len": 8 }),
        json!({ "block_len": 16, "denoise_steps": 4 }),
    ]
    .to_vec();
    let tps = assert_equals_ar_of("deer", &deer_params, &models, &target, &prompts, 40);
    assert!(tps > 2.0, "deer: {tps} tokens per step");
}

/// TiDAR's greedy output is its own model's AR output, with several tokens
/// per forward.
#[test]
fn tidar_equals_its_own_models_ar() {
    let target = common::load("toy-target");
    let tidar = common::load("toy-tidar");
    let prompts = toy_prompts(&target, 2);
    let models = diffusion_models(&target, None, None, Some(&tidar));
    let tps = assert_equals_ar_of("tidar", &[json!({})], &models, &tidar, &prompts, 40);
    // 40 tokens, EOS ignored: past the answer the model rambles and drafts
    // fail (to EOS, the training record has 2.43 tokens per forward).
    assert!(tps > 1.4, "tidar: {tps} tokens per forward");
    let fewer = [json!({ "draft_len": 1 }), json!({ "draft_len": 2 })];
    assert_equals_ar_of("tidar", &fewer, &models, &tidar, &prompts, 40);
}

/// The drafters' verification on real GGUF models: SmolLM2 stands in as its
/// own "diffusion drafter" (a bidirectional forward of a causal model
/// drafts poorly, which is the point: rejections) and as a TiDAR model
/// with untrained mask slots; every output is SmolLM2's AR output.
#[test]
fn diffusion_side_methods_equal_ar_on_a_real_gguf() {
    common::fetched("smollm2-135m");
    let target = common::load("smollm2-135m");
    let mut drafter = common::load("smollm2-135m");
    drafter.info.diffusion = Some(pdbench::model::diffusion::DiffusionSpec {
        family: "masked-diffusion".into(),
        mask_token_id: 0,
        shift_logits: true,
        block_size: None,
        trained_gen_len: None,
    });
    let mut tidar = common::load("smollm2-135m");
    tidar.info.diffusion = Some(pdbench::model::diffusion::DiffusionSpec {
        family: "tidar".into(),
        mask_token_id: 0,
        shift_logits: false,
        block_size: Some(4),
        trained_gen_len: None,
    });
    let prompts = common::chat_prompts(&target);
    let models = diffusion_models(&target, Some(&drafter), Some(&drafter), Some(&tidar));
    let p = &prompts[..1];
    assert_equals_ar_of(
        "diffuspec",
        &[json!({ "draft_len_min": 4, "draft_len_max": 8, "draft_len_step": 2 })],
        &models,
        &target,
        p,
        16,
    );
    assert_equals_ar_of(
        "deer",
        &[json!({ "block_len": 6 })],
        &models,
        &target,
        p,
        16,
    );
    assert_equals_ar_of("tidar", &[json!({})], &models, &target, p, 16);
}

/// When sampling, the tokens DEER (the speculative rule with the
/// drafter's distributions) and TiDAR (with the mask slots') emit at a
/// position reached through verification follow AR's distribution
/// (two-sample chi-square at 0.1%).
#[test]
fn deer_and_tidar_sampling_keep_the_target_distribution() {
    let target = common::load("toy-target");
    let deer = common::load("toy-deer");
    let tidar = common::load("toy-tidar");
    let prompt = target
        .tokenizer
        .encode("shuffle : [ Ann , Bob , Cy , Dan , Eve ] =")
        .unwrap();
    let position = 3;
    let n = 1200;
    for (method, ar_model, params) in [
        (
            "deer",
            &target,
            json!({ "block_len": 8, "temperature": 1.0 }),
        ),
        ("tidar", &tidar, json!({ "temperature": 1.0 })),
    ] {
        let mut ar = BTreeMap::new();
        for seed in 0..n {
            let a = common::decode_with(
                "ar",
                json!({ "temperature": 1.0 }),
                ar_model,
                &prompt,
                position + 1,
                seed,
            );
            *ar.entry(a[position]).or_insert(0usize) += 1;
        }
        let models = diffusion_models(&target, None, Some(&deer), Some(&tidar));
        let mut got = BTreeMap::new();
        let mut rejected = 0usize;
        for seed in 0..n {
            let s = common::decode_with_models(
                method,
                params.clone(),
                &models,
                &prompt,
                position + 5,
                3_000_000 + seed,
            );
            rejected += s
                .steps
                .iter()
                .filter(|st| st.accepted < st.proposed)
                .count();
            *got.entry(s.output[position]).or_insert(0usize) += 1;
        }
        let (chi, df) = chi_square(&ar, &got);
        assert!(df >= 2, "{method}: several likely tokens expected: {ar:?}");
        assert!(
            chi < chi_square_critical(df),
            "{method}: chi2 {chi:.1} with {df} df; ar {ar:?} got {got:?}"
        );
        assert!(
            rejected > n as usize / 10,
            "{method}: {rejected} rejections"
        );
    }
}
