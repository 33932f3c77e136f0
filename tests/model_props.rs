//! Properties of the model layer: the KV cache, masks, positions and taps.

mod common;

use candle_core::Tensor;
use pdbench::model::{Architecture, ExplicitMask, Forward, HiddenTap, LoadedModel, LogitsAt, Mask};

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2().unwrap()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max)
}

fn all_logits(
    m: &LoadedModel,
    cache: &mut pdbench::model::KvCache,
    tokens: &[u32],
    start: usize,
    mask: Mask,
) -> Vec<Vec<f32>> {
    let out = m
        .model
        .forward(
            cache,
            &Forward::causal(tokens, start)
                .with_logits(LogitsAt::All)
                .with_mask(mask),
        )
        .unwrap();
    rows(&out.logits.unwrap())
}

/// forward(a+b), truncate(a), forward(b') equals a fresh forward(a+b').
fn kv_property(m: &LoadedModel, a: &[u32], b: &[u32], b2: &[u32], tol: f32) {
    let mut cache = m.model.new_cache(8).unwrap(); // small, so it must grow
    let ab: Vec<u32> = a.iter().chain(b).copied().collect();
    all_logits(m, &mut cache, &ab, 0, Mask::Causal);
    assert_eq!(cache.len(), ab.len());
    cache.truncate(a.len()).unwrap();
    assert_eq!(cache.len(), a.len());
    let got = all_logits(m, &mut cache, b2, a.len(), Mask::Causal);
    let mut fresh = m.model.new_cache(64).unwrap();
    let ab2: Vec<u32> = a.iter().chain(b2).copied().collect();
    let want = all_logits(m, &mut fresh, &ab2, 0, Mask::Causal);
    let want = want[a.len()..].to_vec();
    let d = max_diff(&got, &want);
    assert!(d <= tol, "max logit difference {d} > {tol}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(pdbench::model::argmax(g), pdbench::model::argmax(w));
    }
}

fn tokens(seed: u64, n: usize, vocab: u32) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

#[test]
fn kv_truncate_then_forward_equals_fresh_forward_on_random_models() {
    for (i, arch) in [Architecture::Llama, Architecture::Qwen2]
        .into_iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        common::tiny_model(dir.path(), arch, 11 + i as u64);
        let m = common::load_dir(dir.path());
        for trial in 0..6u64 {
            let (la, lb, lb2) = (
                3 + trial as usize * 5,
                1 + trial as usize % 4,
                2 + trial as usize * 3,
            );
            let a = tokens(100 + trial, la, 256);
            let b = tokens(200 + trial, lb, 256);
            let b2 = tokens(300 + trial, lb2, 256);
            kv_property(&m, &a, &b, &b2, 0.0);
        }
    }
}

/// SmolLM2's GGUF with its weights dequantized to f32.
fn smollm2_dequantized() -> LoadedModel {
    common::fetched("smollm2-135m");
    let opts = pdbench::model::LoadOptions {
        dequantize: true,
        ..Default::default()
    };
    pdbench::model::load(
        "smollm2-135m",
        &common::store(),
        pdbench::model::FetchPolicy::Never,
        &opts,
        &mut |_| {},
    )
    .unwrap()
}

/// On the real GGUF, quantized and dequantized. The backbone's arithmetic is
/// row-invariant, so the property holds bit for bit.
#[test]
fn kv_truncate_then_forward_equals_fresh_forward_on_smollm2() {
    common::fetched("smollm2-135m");
    let dense = smollm2_dequantized();
    let quant = common::load("smollm2-135m");
    // What `run --resume` reads back to load the weights the same way.
    assert_eq!(dense.info.format, "gguf (dequantized)");
    assert_eq!(quant.info.format, "gguf");
    let p = &common::chat_prompts(&quant)[0];
    let (a, rest) = p.split_at(20);
    kv_property(&dense, a, rest, &tokens(5, 9, 40_000), 0.0);
    kv_property(&dense, &p[..7], &p[7..12], &p[12..], 0.0);
    kv_property(&quant, a, rest, &tokens(5, 9, 40_000), 0.0);
    kv_property(&quant, &p[..7], &p[7..12], &p[12..], 0.0);
}

#[test]
fn save_restore_and_compact() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_model(dir.path(), Architecture::Llama, 3);
    let m = common::load_dir(dir.path());
    let seq = tokens(9, 12, 256);
    let mut cache = m.model.new_cache(4).unwrap();
    let base = all_logits(&m, &mut cache, &seq[..8], 0, Mask::Causal);
    let snap = cache.save().unwrap();
    // Overwrite positions 4.. with other tokens, then restore.
    all_logits(&m, &mut cache, &tokens(77, 6, 256), 4, Mask::Causal);
    cache.restore(&snap).unwrap();
    assert_eq!(cache.len(), 8);
    let next = all_logits(&m, &mut cache, &seq[8..], 8, Mask::Causal);
    let mut fresh = m.model.new_cache(16).unwrap();
    let want = all_logits(&m, &mut fresh, &seq, 0, Mask::Causal);
    assert!(max_diff(&next, &want[8..]) < 1e-4);
    assert!(max_diff(&base, &want[..8]) < 1e-4);

    // A "tree" forward of 4 candidate tokens at positions 8..12 where only
    // nodes 1 and 3 form the accepted path; compact keeps exactly those.
    let mut cache = m.model.new_cache(16).unwrap();
    all_logits(&m, &mut cache, &seq[..8], 0, Mask::Causal);
    let cand = [seq[8], 5, seq[9], 6];
    // Node 0 and node 2 are the path (2 follows 0); 1 and 3 are side branches.
    let mut mask = ExplicitMask::new(4, 12);
    for r in 0..4 {
        for c in 0..8 {
            mask.set(r, c, true);
        }
        mask.set(r, 8 + r, true);
    }
    mask.set(2, 8, true); // node 2's parent is node 0
    mask.set(3, 9, true); // node 3's parent is node 1
    let positions = [8u32, 8, 9, 9];
    let out = m
        .model
        .forward(
            &mut cache,
            &Forward::causal(&cand, 8)
                .with_logits(LogitsAt::All)
                .with_mask(Mask::Explicit(mask))
                .with_positions(&positions),
        )
        .unwrap();
    let tree = rows(&out.logits.unwrap());
    assert!(
        max_diff(&[tree[0].clone(), tree[2].clone()], &want[8..10]) < 1e-4,
        "tree path logits equal the sequential ones"
    );
    cache.compact(8, &[8, 10]).unwrap();
    assert_eq!(cache.len(), 10);
    let after = all_logits(&m, &mut cache, &seq[10..], 10, Mask::Causal);
    assert!(
        max_diff(&after, &want[10..]) < 1e-4,
        "compacted cache continues the path exactly"
    );
    assert!(cache.compact(8, &[9, 8]).is_err(), "positions must ascend");
    assert!(cache.truncate(99).is_err());
}

#[test]
fn masks_behave() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_model(dir.path(), Architecture::Qwen2, 5);
    let m = common::load_dir(dir.path());
    let seq = tokens(1, 10, 256);
    let mut seq2 = seq.clone();
    seq2[9] = (seq[9] + 1) % 256;
    let run = |toks: &[u32], mask: Mask| {
        let mut c = m.model.new_cache(16).unwrap();
        all_logits(&m, &mut c, toks, 0, mask)
    };
    // Causal: changing the last token leaves earlier rows unchanged.
    let c1 = run(&seq, Mask::Causal);
    let c2 = run(&seq2, Mask::Causal);
    assert_eq!(c1[..9], c2[..9]);
    // Bidirectional: earlier rows see the change.
    let b1 = run(&seq, Mask::Bidirectional);
    let b2 = run(&seq2, Mask::Bidirectional);
    assert!(max_diff(&b1[..9], &b2[..9]) > 1e-3);
    assert!(
        max_diff(&b1, &c1) > 1e-3,
        "bidirectional differs from causal"
    );
    // Block mask of size 1 is causal, bit for bit.
    assert_eq!(run(&seq, Mask::Block { size: 1, start: 0 }), c1);
    // An explicit causal mask is causal.
    assert_eq!(run(&seq, Mask::Explicit(ExplicitMask::causal(0, 10))), c1);
    // Block mask of size 5: row 0 sees rows 0..5 but not 5..10.
    let k1 = run(&seq, Mask::Block { size: 5, start: 0 });
    let k2 = run(&seq2, Mask::Block { size: 5, start: 0 });
    assert_eq!(k1[..5], k2[..5], "the first block does not see the second");
    assert!(
        max_diff(&k1[5..], &k2[5..]) > 1e-3,
        "the second block sees its own change"
    );
    assert!(
        max_diff(&k1[..5], &c1[..5]) > 1e-3,
        "inside a block attention is bidirectional"
    );
    // A mask with a row that sees nothing is refused.
    let bad = ExplicitMask::new(10, 10);
    let mut c = m.model.new_cache(16).unwrap();
    let e = m
        .model
        .forward(
            &mut c,
            &Forward::causal(&seq, 0).with_mask(Mask::Explicit(bad)),
        )
        .unwrap_err();
    assert!(e.to_string().contains("attends to nothing"), "{e}");
}

#[test]
fn positions_and_taps() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::tiny_model(dir.path(), Architecture::Llama, 8);
    let m = common::load_dir(dir.path());
    let seq = tokens(4, 6, 256);
    let pos: Vec<u32> = (0..6).collect();
    let mut c = m.model.new_cache(8).unwrap();
    let default = all_logits(&m, &mut c, &seq, 0, Mask::Causal);
    let out = m
        .model
        .forward(
            &mut c,
            &Forward::causal(&seq, 0)
                .with_logits(LogitsAt::All)
                .with_positions(&pos),
        )
        .unwrap();
    assert_eq!(
        rows(&out.logits.unwrap()),
        default,
        "explicit default positions change nothing"
    );
    let shifted: Vec<u32> = (10..16).collect();
    let out = m
        .model
        .forward(
            &mut c,
            &Forward::causal(&seq, 0)
                .with_logits(LogitsAt::All)
                .with_positions(&shifted),
        )
        .unwrap();
    assert_ne!(rows(&out.logits.unwrap()), default, "rope positions matter");

    let taps = [
        HiddenTap::Embeddings,
        HiddenTap::Block(cfg.num_hidden_layers - 1),
        HiddenTap::Final,
    ];
    let out = m
        .model
        .forward(
            &mut c,
            &Forward::causal(&seq, 0)
                .with_logits(LogitsAt::Rows(vec![1, 4]))
                .with_taps(&taps),
        )
        .unwrap();
    assert_eq!(out.hidden.len(), 3);
    assert_eq!(out.hidden[0].dims(), &[6, cfg.hidden_size]);
    let head = m.model.lm_head(&out.hidden[1]).unwrap();
    let picked = rows(&out.logits.unwrap());
    let all = rows(&head);
    assert!(
        max_diff(&picked, &[all[1].clone(), all[4].clone()]) < 1e-5,
        "logit rows come from the last block's states"
    );
    assert_eq!(picked, vec![default[1].clone(), default[4].clone()]);
    let e = m
        .model
        .forward(
            &mut c,
            &Forward::causal(&seq, 0).with_taps(&[HiddenTap::Block(99)]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("hidden tap"), "{e}");
}

/// `pdbench models export` writes SmolLM2's GGUF as a Hugging Face folder:
/// loaded back, it is the same model (q/k un-permuted for the half-rotation
/// rope), with the same tokenizer, special ids and chat template; its
/// logits match the dequantized GGUF's to float rounding and greedy tokens
/// are equal.
#[test]
fn a_gguf_exported_to_the_hf_layout_is_the_same_model() {
    let gguf = common::fetched("smollm2-135m");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2-hf");
    let e = pdbench::model::export::gguf_to_hf(&gguf, &out, candle_core::DType::F32).unwrap();
    assert!(e.unpermuted_qk, "a llama GGUF stores q/k permuted");
    // Readable by others like every file of the folder (peers run it).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["model.safetensors", "config.json", "tokenizer.json"] {
            let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o044, 0o044, "{f}: mode {mode:o}");
        }
    }
    assert!(e.parameters > 100_000_000, "{}", e.parameters);
    let hf = common::load_dir(&out);
    let dense = smollm2_dequantized();
    assert_eq!(hf.info.format, "safetensors");
    assert!(!hf.info.config.rope_interleaved);
    let mut want = dense.info.config.clone();
    want.rope_interleaved = false;
    assert_eq!(hf.info.config, want);
    hf.tokenizer.same_vocab(&dense.tokenizer).unwrap();
    assert_eq!(hf.tokenizer.bos_id, dense.tokenizer.bos_id);
    assert_eq!(hf.tokenizer.eos_ids, dense.tokenizer.eos_ids);
    assert_eq!(hf.tokenizer.add_bos, dense.tokenizer.add_bos);
    assert_eq!(hf.tokenizer.chat_template, dense.tokenizer.chat_template);
    let prompt = &common::chat_prompts(&dense)[0];
    assert_eq!(
        &common::chat_prompts(&hf)[0],
        prompt,
        "same ids for the same text"
    );
    let logits = |m: &LoadedModel| {
        let mut cache = m.model.new_cache(prompt.len()).unwrap();
        all_logits(m, &mut cache, prompt, 0, Mask::Causal)
    };
    let (a, b) = (logits(&dense), logits(&hf));
    let scale = a.iter().flatten().fold(1f32, |m, v| m.max(v.abs()));
    let d = max_diff(&a, &b);
    assert!(d <= 1e-4 * scale, "max |diff| {d} at scale {scale}");
    let greedy =
        |m: &LoadedModel| common::decode_with("ar", serde_json::json!({}), m, prompt, 24, 0);
    assert_eq!(greedy(&dense), greedy(&hf));
    // A model that is one already is refused by the CLI; the library
    // refuses a file that is not GGUF.
    let err = pdbench::model::export::gguf_to_hf(
        &out.join("config.json"),
        &dir.path().join("x"),
        candle_core::DType::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("config.json") && err.contains("GGUF"), "{err}");
}
