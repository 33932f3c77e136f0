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
    let store = pdbench::store::Store::at(dir.join("store"));
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
            let got = m.model.forward_train(&ids, &bias).unwrap().i(0).unwrap();
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

/// The diffusion objectives train on the same loop: the loss falls, and the
/// final evaluation reports scores at rising tokens per step, the last one
/// fully parallel (a whole block, or the whole answer region, per step).
#[test]
fn diffusion_miniatures_train_and_evaluate_at_several_parallelisms() {
    for (objective, block, last) in [("masked-diffusion", 4, 16), ("block-diffusion", 4, 4)] {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut r) = mini(dir.path());
        r.objective = objective.into();
        r.objective_params.gen_len = 16;
        r.objective_params.block_size = block;
        r.optim.steps = 300;
        r.data.eval_per_task = 3;
        let rec = train::train(
            &path,
            &r,
            dir.path(),
            &Device::Cpu,
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        let first = rec.loss_curve.first().unwrap().loss;
        let end = rec.loss_curve.last().unwrap().loss;
        assert!(end < 0.7 * first, "{objective}: loss {first} -> {end}");
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
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["pdbench_objective"], objective);
        assert_eq!(cfg["mask_token_id"], 3);
    }
}
