//! The trainer: its differentiable forward is the inference forward, a
//! miniature learns, an interrupted training resumes on the same path, and
//! bad recipes are named.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, IndexOp, Tensor};
use pdbench::model::random::{tiny_config, write_random_model};
use pdbench::model::{Architecture, Forward, LogitsAt, Mask};
use pdbench::train::{self, TrainEvent};

fn load(dir: &Path) -> pdbench::model::LoadedModel {
    // The store's digest cache goes beside the model, not into it: models
    // may be the zoo's.
    let store = pdbench::store::Store::at(std::env::temp_dir().join("pdbench-test-store"));
    pdbench::model::load(
        &dir.display().to_string(),
        &store,
        pdbench::model::FetchPolicy::Never,
        &Default::default(),
        &mut |_| {},
    )
    .unwrap()
}

/// Training and inference must compute the same function, or a trained
/// model would decode differently from how it was trained.
#[test]
fn forward_train_equals_the_inference_forward() {
    for arch in [Architecture::Llama, Architecture::Qwen2] {
        let dir = tempfile::tempdir().unwrap();
        write_random_model(dir.path(), &tiny_config(arch), 5).unwrap();
        let m = load(dir.path());
        let tokens: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % 250).collect();
        for mask in [
            Mask::Causal,
            Mask::Bidirectional,
            Mask::Block { size: 4, start: 3 },
        ] {
            let mut cache = m.model.new_cache(16).unwrap();
            let want = m
                .model
                .forward(
                    &mut cache,
                    &Forward::causal(&tokens, 0)
                        .with_mask(mask.clone())
                        .with_logits(LogitsAt::All),
                )
                .unwrap()
                .logits
                .unwrap();
            let n = tokens.len();
            let bias: Vec<f32> = (0..n * n)
                .map(|i| {
                    if mask.allows(0, i / n, i % n) {
                        0.0
                    } else {
                        -1e4
                    }
                })
                .collect();
            let bias = Tensor::from_vec(bias, (1, 1, n, n), &Device::Cpu).unwrap();
            let ids = Tensor::from_vec(tokens.clone(), (1, n), &Device::Cpu).unwrap();
            let got = m
                .model
                .forward_train(&ids, &bias, None)
                .unwrap()
                .i(0)
                .unwrap();
            let diff = (got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-3, "{arch:?} {mask:?}: max |Δlogit| {diff}");
        }
        // Explicit rope positions (vectorised block diffusion repeats them).
        let pos: Vec<u32> = (0..tokens.len() as u32).map(|i| 7 + i / 2).collect();
        let mut cache = m.model.new_cache(16).unwrap();
        let want = m
            .model
            .forward(
                &mut cache,
                &Forward::causal(&tokens, 0)
                    .with_positions(&pos)
                    .with_logits(LogitsAt::All),
            )
            .unwrap()
            .logits
            .unwrap();
        let n = tokens.len();
        let bias: Vec<f32> = (0..n * n)
            .map(|i| if i % n <= i / n { 0.0 } else { -1e4 })
            .collect();
        let bias = Tensor::from_vec(bias, (1, 1, n, n), &Device::Cpu).unwrap();
        let ids = Tensor::from_vec(tokens.clone(), (1, n), &Device::Cpu).unwrap();
        let p = Tensor::from_vec(pos.clone(), (1, n), &Device::Cpu).unwrap();
        let got = m
            .model
            .forward_train(&ids, &bias, Some(&p))
            .unwrap()
            .i(0)
            .unwrap();
        let diff = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-3, "{arch:?} with positions: max |Δlogit| {diff}");
    }
}

fn mini(out: &Path) -> (PathBuf, train::Recipe) {
    let (path, mut r) = train::load_recipe("toy-mini").unwrap();
    r.output = out.display().to_string();
    (path, r)
}

/// The one-minute miniature: the loss falls and greedy accuracy on the
/// test split rises above chance (which is ~0 for exact match).
#[test]
fn a_miniature_learns_and_resumes_on_the_same_path() {
    let dir = tempfile::tempdir().unwrap();
    let (path, r) = mini(&dir.path().join("a"));
    let stop = AtomicBool::new(false);
    let a = train::train(
        &path,
        &r,
        &dir.path().join("a"),
        &Device::Cpu,
        &stop,
        &mut |_| {},
    )
    .unwrap();
    let first = a.loss_curve.first().unwrap().loss;
    let last = a.loss_curve.last().unwrap().loss;
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    let acc = a.evaluation[0].deterministic.unwrap();
    assert!(acc > 20.0, "accuracy {acc}% after training");
    // The folder is a hub-layout model the ordinary loader reads.
    let m = load(&dir.path().join("a"));
    assert_eq!(m.info.format, "safetensors");

    // Interrupt at the first progress report past a third, then resume.
    let b_out = dir.path().join("b");
    let stop = AtomicBool::new(false);
    let third = r.optim.steps / 3;
    let e = train::train(&path, &r, &b_out, &Device::Cpu, &stop, &mut |e| {
        if let TrainEvent::Progress { step, .. } = e {
            if step >= third {
                stop.store(true, Ordering::SeqCst);
            }
        }
    })
    .unwrap_err();
    assert!(matches!(e, train::TrainError::Interrupted { .. }), "{e}");
    assert!(b_out.join("checkpoint/state.json").is_file());
    let mut resumed_at = None;
    let b = train::train(
        &path,
        &r,
        &b_out,
        &Device::Cpu,
        &AtomicBool::new(false),
        &mut |e| {
            if let TrainEvent::Resumed { step } = e {
                resumed_at = Some(step);
            }
        },
    )
    .unwrap();
    assert!(resumed_at.is_some_and(|s| s >= third && s < r.optim.steps));
    assert!(
        !b_out.join("checkpoint").exists(),
        "checkpoint removed when done"
    );
    assert_eq!(a.loss_curve.len(), b.loss_curve.len());
    for (x, y) in a.loss_curve.iter().zip(&b.loss_curve) {
        assert!(
            (x.loss - y.loss).abs() < 1e-5,
            "step {}: {} vs {}",
            x.step,
            x.loss,
            y.loss
        );
    }
    assert_eq!(a.evaluation, b.evaluation);
}

#[test]
fn bad_recipes_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(train::recipes_dir().join("toy-mini.toml")).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let e = train::load_recipe(&write(
        "a.toml",
        &base.replace("objective = \"ar\"", "objective = \"diffusion\""),
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("a.toml") && e.contains("objective") && e.contains("masked-diffusion"),
        "{e}"
    );
    let e = train::load_recipe(&write(
        "b.toml",
        &base.replace("[optim]", "[optim]\nmomentum = 0.9"),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("b.toml") && e.contains("momentum"), "{e}");
    for (file, weights, want) in [
        ("c.toml", "sorting = 2", "\"sorting\""),
        ("d.toml", "sort = -1", "data.task_weights.sort"),
    ] {
        let e = train::load_recipe(&write(
            file,
            &format!("{base}\n[data.task_weights]\n{weights}\n"),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains(file) && e.contains(want), "{e}");
    }
    let e = train::load_recipe("no-such-recipe")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no-such-recipe") && e.contains("toy-mini"),
        "{e}"
    );
}

/// The diffusion objectives train on the same loop, adapting an AR
/// miniature as Dream was adapted from Qwen2.5 (shifted logits): the loss
/// falls, greedy accuracy at one token per step rises above chance, and the
/// final evaluation reports scores at rising tokens per step, the last one
/// fully parallel (a whole block, or the whole answer region, per step).
#[test]
fn diffusion_miniatures_adapt_an_ar_model_and_evaluate_at_several_parallelisms() {
    let dir = tempfile::tempdir().unwrap();
    let ar_dir = dir.path().join("ar");
    let (path, r) = mini(&ar_dir);
    train::train(
        &path,
        &r,
        &ar_dir,
        &Device::Cpu,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    for (objective, steps, last) in [("masked-diffusion", 1200, 12), ("block-diffusion", 400, 4)] {
        let out = dir.path().join(objective);
        let (path, mut r) = mini(&out);
        r.objective = objective.into();
        r.init = Some(ar_dir.display().to_string());
        r.objective_params.gen_len = 12;
        r.objective_params.block_size = 4;
        r.objective_params.shift_logits = true;
        r.optim.steps = steps;
        r.optim.warmup_steps = 10;
        let rec = train::train(
            &path,
            &r,
            &out,
            &Device::Cpu,
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        let first = rec.loss_curve.first().unwrap().loss;
        let end = rec.loss_curve.last().unwrap().loss;
        assert!(end < 0.7 * first, "{objective}: loss {first} -> {end}");
        let acc = rec.evaluation[0].deterministic.unwrap();
        assert!(acc > 20.0, "{objective}: {acc}% at one token per step");
        let init = rec.init.as_ref().expect("the init is recorded");
        assert_eq!(
            init.sha256,
            pdbench::store::sha256_file(&ar_dir.join("model.safetensors")).unwrap()
        );
        let ks: Vec<usize> = rec.evaluation.iter().map(|e| e.tokens_per_step).collect();
        assert_eq!(ks.first(), Some(&1), "{objective}");
        assert_eq!(ks.last(), Some(&last), "{objective}");
        // More tokens per step means fewer forwards per token.
        let tpf: Vec<f64> = rec
            .evaluation
            .iter()
            .map(|e| e.tokens_per_forward)
            .collect();
        assert!(
            tpf.last().unwrap() > &(1.5 * tpf[0]),
            "{objective}: {tpf:?}"
        );
        // replace_random was not trained: no closed-form check.
        assert!(rec.closed_form_checks.is_empty());
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["pdbench_objective"], objective);
        assert_eq!(cfg["pdbench_objective_params"]["shift_logits"], true);
        assert_eq!(cfg["mask_token_id"], 3);
    }
}

/// A recipe's `init` must name a model with the recipe's tensors.
#[test]
fn a_bad_init_names_the_file_and_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut r) = mini(&dir.path().join("x"));
    r.init = Some(dir.path().join("absent").display().to_string());
    let run = |r: &train::Recipe| {
        train::train(
            &path,
            r,
            &dir.path().join("x"),
            &Device::Cpu,
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap_err()
        .to_string()
    };
    let e = run(&r);
    assert!(
        e.contains("absent") && e.contains("model.safetensors"),
        "{e}"
    );
    // A model of another width.
    let other = dir.path().join("other");
    write_random_model(&other, &tiny_config(Architecture::Llama), 1).unwrap();
    r.init = Some(other.display().to_string());
    let e = run(&r);
    assert!(e.contains("init") && e.contains("other"), "{e}");
    assert!(e.contains("lacks tensor") || e.contains("shape"), "{e}");
}

/// The head and consistency objectives train on the same loop against the
/// zoo's toy-target: an EAGLE head's loss falls and its top-1 draft agrees
/// with the target far above chance, in a folder the head loader reads; a
/// consistency miniature records Jacobi's tokens per forward before and
/// after.
#[test]
fn head_and_consistency_miniatures_train_against_the_zoo_target() {
    let dir = tempfile::tempdir().unwrap();
    let target = pdbench::model::source::zoo_dir().join("toy-target");
    let out = dir.path().join("head");
    let (path, mut r) = mini(&out);
    r.objective = "eagle".into();
    r.target = Some(target.display().to_string());
    r.model.as_mut().unwrap().hidden_size = 128;
    r.model.as_mut().unwrap().num_hidden_layers = 1;
    r.optim.steps = 150;
    r.optim.lr = 2e-3;
    let rec = train::train(
        &path,
        &r,
        &out,
        &Device::Cpu,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    let first = rec.loss_curve.first().unwrap().loss;
    let end = rec.loss_curve.last().unwrap().loss;
    assert!(end < 0.7 * first, "eagle: loss {first} -> {end}");
    let top1 = rec.head_evaluation.as_ref().unwrap().top1_agreement_pct;
    assert!(top1 > 30.0, "eagle head top-1 agreement {top1}%");
    let tm = load(&target);
    let head =
        pdbench::model::eagle::EagleHead::load_dir(&out, candle_core::DType::F32, &Device::Cpu)
            .unwrap();
    head.head.check_target(&tm.model, "test").unwrap();
    // A head of another width does not fit.
    let mut wide = r.clone();
    wide.model.as_mut().unwrap().hidden_size = 64;
    let e = train::train(
        &path,
        &wide,
        &dir.path().join("wide"),
        &Device::Cpu,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("model.hidden_size") && e.contains("128"), "{e}");

    let out = dir.path().join("cllm");
    let (path, mut r) = mini(&out);
    r.objective = "consistency".into();
    r.init = Some(target.display().to_string());
    r.model.as_mut().unwrap().hidden_size = 128;
    r.model.as_mut().unwrap().intermediate_size = 384;
    r.model.as_mut().unwrap().num_hidden_layers = 4;
    r.model.as_mut().unwrap().num_key_value_heads = 4;
    r.objective_params.trajectory_prompts = 6;
    r.objective_params.label_smoothing = 0.0;
    r.optim.steps = 40;
    r.optim.lr = 5e-4;
    let rec = train::train(
        &path,
        &r,
        &out,
        &Device::Cpu,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    let j = rec.jacobi_evaluation.as_ref().expect("a Jacobi evaluation");
    assert!(
        j.tokens_per_forward >= 1.0 && j.init_tokens_per_forward >= 1.0,
        "{j:?}"
    );
    assert_eq!(rec.evaluation.len(), 1);
    assert!(rec.loss_curve.iter().all(|p| p.loss.is_finite()));

    // A Learn2PD filter for toy-dllm: the loss falls, and decoding with it
    // never takes more forwards than the baseline it adds to.
    let out = dir.path().join("filter");
    let (path, mut r) = mini(&out);
    r.objective = "learn2pd".into();
    r.init = Some(
        pdbench::model::source::zoo_dir()
            .join("toy-dllm")
            .display()
            .to_string(),
    );
    r.model = None;
    r.objective_params.block_size = 32;
    r.objective_params.trajectory_prompts = 4;
    r.data.eval_per_task = 2;
    r.optim.steps = 150;
    r.optim.batch_size = 64;
    r.optim.lr = 1e-2;
    let rec = train::train(
        &path,
        &r,
        &out,
        &Device::Cpu,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    let first = rec.loss_curve.first().unwrap().loss;
    let end = rec.loss_curve.last().unwrap().loss;
    assert!(end < 0.8 * first, "learn2pd: loss {first} -> {end}");
    let fe = rec.filter_evaluation.as_ref().expect("a filter evaluation");
    let nfe = |d: &str| {
        fe.rows
            .iter()
            .find(|r| r.decoder == d)
            .unwrap()
            .forwards_per_item
    };
    assert!(nfe("learn2pd without end-of-text") <= nfe("dllm"), "{fe:?}");
    assert!(
        nfe("learn2pd") <= nfe("learn2pd without end-of-text"),
        "{fe:?}"
    );
    assert!(
        nfe("learn2pd") < nfe("dllm"),
        "end-of-text prediction saves forwards: {fe:?}"
    );
    let f = pdbench::model::filter::Filter::load_dir(&out).unwrap();
    assert_eq!(f.filter.config.block_length, 32);
}
