//! Training an EAGLE draft head against a frozen target (Li et al. 2024):
//! at each position t the head reads the target's feature f_t (after its
//! final norm, with uniform noise) and the embedding of token t+1, and
//! predicts f_{t+1}. The loss is EAGLE's: smooth-L1 between the prediction
//! and f_{t+1}, averaged over the hidden size, plus 0.1 × the
//! cross-entropy of the head's next-token distribution (the target's LM
//! head over the prediction) against the target's own. Positions count
//! where the predicted feature is one the head drafts from at inference:
//! from the first answer token on.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::objective::{Pair, TokenBatch};
use super::{
    encode, io, specials, tokenizer, toy_params, NamedGrads, Recipe, TrainData, TrainError,
    TrainEvent, TrainingRecord,
};
use crate::model::eagle::EagleHead;
use crate::model::{Mask, ModelConfig, Transformer};
use crate::toy::{self, Split};

/// Weight of the distribution term (EAGLE's `p_w`).
const P_WEIGHT: f64 = 0.1;
/// Half-width of the uniform noise on the input features (EAGLE's
/// `(rand - 0.5) * 0.2`).
const FEATURE_NOISE: f32 = 0.1;

/// How often the head's top-1 draft agrees with the target's greedy next
/// token on the test split, teacher-forced on the target's own features:
/// the acceptance rate of the first draft token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadEvaluation {
    pub items: usize,
    pub positions: usize,
    /// % of positions where the head's argmax is the target's.
    pub top1_agreement_pct: f64,
    pub per_task_top1_pct: BTreeMap<String, f64>,
}

/// The head's config: the target's, with the recipe's attention and MLP
/// sizes and one layer.
fn head_config(
    r: &Recipe,
    target: &ModelConfig,
    recipe_path: &Path,
) -> Result<ModelConfig, TrainError> {
    let m = r
        .model
        .as_ref()
        .expect("recipes of head objectives have [model] (checked on load)");
    let bad = |detail: String| TrainError::Recipe {
        path: recipe_path.to_path_buf(),
        detail,
    };
    if m.hidden_size != target.hidden_size {
        return Err(bad(format!(
            "field `model.hidden_size`: an EAGLE head has its target's hidden size, {} (got {})",
            target.hidden_size, m.hidden_size
        )));
    }
    if m.num_hidden_layers != 1 {
        return Err(bad(format!(
            "field `model.num_hidden_layers`: an EAGLE head has one layer (got {})",
            m.num_hidden_layers
        )));
    }
    let mut cfg = target.clone();
    cfg.num_hidden_layers = 1;
    cfg.intermediate_size = m.intermediate_size;
    cfg.num_attention_heads = m.num_attention_heads;
    cfg.num_key_value_heads = m.num_key_value_heads;
    cfg.head_dim = m.hidden_size / m.num_attention_heads;
    cfg.rope_interleaved = false;
    Ok(cfg)
}

/// Initial head weights by EAGLE's names.
fn init_head(cfg: &ModelConfig, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let (h, i, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let normal = rand_distr::Normal::new(0.0f32, 0.02).expect("valid");
    let mut out = Vec::new();
    let mut put = |name: &str, shape: Vec<usize>, kind: u8| {
        let n: usize = shape.iter().product();
        let v = match kind {
            0 => vec![0.0; n],
            1 => vec![1.0; n],
            _ => (0..n)
                .map(|_| rand_distr::Distribution::sample(&normal, &mut rng))
                .collect(),
        };
        out.push((name.to_string(), shape, v));
    };
    put("fc.weight", vec![h, 2 * h], 2);
    put("fc.bias", vec![h], 0);
    let p = "layers.0";
    put(&format!("{p}.self_attn.q_proj.weight"), vec![nh * d, h], 2);
    put(&format!("{p}.self_attn.k_proj.weight"), vec![nkv * d, h], 2);
    put(&format!("{p}.self_attn.v_proj.weight"), vec![nkv * d, h], 2);
    put(&format!("{p}.self_attn.o_proj.weight"), vec![h, nh * d], 2);
    if cfg.qkv_bias {
        put(&format!("{p}.self_attn.q_proj.bias"), vec![nh * d], 0);
        put(&format!("{p}.self_attn.k_proj.bias"), vec![nkv * d], 0);
        put(&format!("{p}.self_attn.v_proj.bias"), vec![nkv * d], 0);
    }
    put(&format!("{p}.mlp.gate_proj.weight"), vec![i, h], 2);
    put(&format!("{p}.mlp.up_proj.weight"), vec![i, h], 2);
    put(&format!("{p}.mlp.down_proj.weight"), vec![h, i], 2);
    put(&format!("{p}.post_attention_layernorm.weight"), vec![h], 1);
    out
}

/// A micro-batch as the target sees it: prompt, answer and EOS per row,
/// causal, with weight 1 at the head positions that count.
fn rows_of(batch: &[&Pair], eos: u32) -> TokenBatch {
    let mut rows = Vec::with_capacity(batch.len());
    let mut targets = Vec::with_capacity(batch.len());
    let mut count = 0usize;
    for p in batch {
        let mut seq = p.prompt.clone();
        seq.extend_from_slice(&p.answer);
        seq.push(eos);
        // Head position t predicts f_{t+1}; it counts when f_{t+1} comes
        // after the prompt and has a token after it.
        let n0 = p.prompt.len();
        let t: Vec<(u32, f32)> = (0..seq.len())
            .map(|j| {
                let on = j + 1 > n0 - 1 && j + 2 < seq.len();
                count += usize::from(on);
                (0, if on { 1.0 } else { 0.0 })
            })
            .collect();
        rows.push(seq);
        targets.push(t);
    }
    TokenBatch {
        masks: vec![Mask::Causal; rows.len()],
        rows,
        positions: None,
        targets,
        norm: count.max(1) as f64,
    }
}

/// The frozen target's features `[b, t, hidden]` of a padded batch, and
/// the head's inputs: tokens shifted left by one, the causal bias.
struct Prepared {
    features: Tensor,
    head_ids: Tensor,
    bias: Tensor,
    weights: Tensor,
    rows: usize,
    len: usize,
    norm: f64,
}

fn prepare(target: &Transformer, tb: &TokenBatch, pad: u32) -> candle_core::Result<Prepared> {
    let dev = target.device();
    let p = tb.padded(pad);
    let (b, t) = (p.rows, p.len);
    let ids = Tensor::from_vec(p.ids.clone(), (b, t), dev)?;
    let bias = Tensor::from_vec(p.bias, (b, 1, t, t), dev)?;
    let features = target
        .features_train(&ids, &bias, None)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?
        .detach();
    let mut head_ids = Vec::with_capacity(b * t);
    for r in 0..b {
        head_ids.extend_from_slice(&p.ids[r * t + 1..(r + 1) * t]);
        head_ids.push(pad);
    }
    Ok(Prepared {
        features,
        head_ids: Tensor::from_vec(head_ids, (b, t), dev)?,
        bias,
        weights: Tensor::from_vec(p.weights, (b, t), dev)?,
        rows: b,
        len: t,
        norm: tb.norm,
    })
}

/// The loss sum of one micro-batch (autograd through the head only).
fn head_loss(
    head: &EagleHead,
    target: &Transformer,
    p: &Prepared,
    rng: &mut ChaCha20Rng,
) -> candle_core::Result<Tensor> {
    let dev = target.device();
    let (b, t, h) = p.features.dims3()?;
    let noise: Vec<f32> = (0..b * t * h)
        .map(|_| rng.random_range(-FEATURE_NOISE..FEATURE_NOISE))
        .collect();
    let noisy = (&p.features + Tensor::from_vec(noise, (b, t, h), dev)?)?;
    let pred = head
        .forward_train(target, &p.head_ids, &noisy, &p.bias)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    // Prediction at t against the feature at t + 1 (the last position has
    // none: its weight is zero, and it is compared with itself).
    let next = Tensor::cat(
        &[
            p.features.narrow(1, 1, t - 1)?,
            p.features.narrow(1, t - 1, 1)?,
        ],
        1,
    )?;
    let d = (&pred - &next)?;
    let a = d.abs()?;
    let m = a.minimum(1.0)?;
    let smooth = ((m.sqr()? * 0.5)? + (a - m)?)?.mean(D::Minus1)?;
    let project = |x: &Tensor| {
        target
            .project_train(x)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    };
    let target_p = candle_nn::ops::softmax_last_dim(&project(&next)?)?.detach();
    let head_logp = candle_nn::ops::log_softmax(&project(&pred)?, D::Minus1)?;
    let ce = (target_p * head_logp)?.sum(D::Minus1)?.neg()?;
    let per_pos = (smooth + (ce * P_WEIGHT)?)?;
    (per_pos * &p.weights)?.sum_all()
}

/// The batch's loss and gradients, micro-batches shared out to `workers`
/// threads; noise is drawn from (seed, step, micro-batch).
#[allow(clippy::too_many_arguments)]
fn gradients(
    head: &EagleHead,
    target: &Transformer,
    named: &[(String, Var)],
    batch: &[&Pair],
    r: &Recipe,
    step: usize,
    workers: usize,
) -> candle_core::Result<(f64, NamedGrads)> {
    let sp = specials();
    let mut sorted: Vec<&Pair> = batch.to_vec();
    sorted.sort_by_key(|p| p.prompt.len() + p.answer.len());
    let chunks: Vec<&[&Pair]> = sorted.chunks(r.optim.micro_batch.max(1)).collect();
    type Micro = candle_core::Result<(f64, f64, candle_core::backprop::GradStore)>;
    let results = super::on_workers(chunks.len(), workers, |i| -> Micro {
        let mut rng = ChaCha20Rng::seed_from_u64(
            r.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (step as u64)
                    .wrapping_add(1)
                    .wrapping_mul(0xD1B5_4A32_D192_ED03)
                ^ (i as u64).wrapping_add(1),
        );
        let tb = rows_of(chunks[i], sp.eos);
        let p = prepare(target, &tb, sp.pad)?;
        let loss = head_loss(head, target, &p, &mut rng)?;
        let grads = loss.backward()?;
        Ok((loss.to_scalar::<f32>()? as f64, p.norm, grads))
    });
    let done = results
        .into_iter()
        .collect::<candle_core::Result<Vec<_>>>()?;
    let norm: f64 = done.iter().map(|d| d.1).sum::<f64>().max(1e-12);
    let loss = done.iter().map(|d| d.0).sum::<f64>() / norm;
    let mut stores: Vec<_> = done.into_iter().map(|d| d.2).collect();
    Ok((loss, super::sum_stores(named, &mut stores, norm)?))
}

/// Teacher-forced top-1 agreement on the test split.
fn evaluate_head(
    head: &EagleHead,
    target: &Transformer,
    r: &Recipe,
) -> Result<HeadEvaluation, TrainError> {
    let sp = specials();
    let tok = tokenizer();
    let test = toy::generate(&toy_params(r, Split::Test, r.data.eval_per_task))
        .map_err(|e| TrainError::Data(e.to_string()))?;
    let mut per_task: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for it in &test {
        let pair = Pair {
            prompt: encode(&tok, &it.prompt)?,
            answer: encode(&tok, &it.answer)?,
        };
        let tb = rows_of(&[&pair], sp.eos);
        let p = prepare(target, &tb, sp.pad)?;
        let pred = head.forward_train(target, &p.head_ids, &p.features, &p.bias)?;
        let t = p.len;
        let next = Tensor::cat(
            &[
                p.features.narrow(1, 1, t - 1)?,
                p.features.narrow(1, t - 1, 1)?,
            ],
            1,
        )?;
        let want = target
            .project_train(&next)?
            .argmax(D::Minus1)?
            .flatten_all()?;
        let got = target
            .project_train(&pred)?
            .argmax(D::Minus1)?
            .flatten_all()?;
        let (want, got): (Vec<u32>, Vec<u32>) = (want.to_vec1()?, got.to_vec1()?);
        let w: Vec<f32> = p.weights.flatten_all()?.to_vec1()?;
        let e = per_task.entry(it.task.clone()).or_default();
        for j in 0..p.rows * t {
            if w[j] > 0.0 {
                e.1 += 1;
                e.0 += usize::from(want[j] == got[j]);
            }
        }
    }
    let (hit, all) = per_task
        .values()
        .fold((0, 0), |a, &(h, n)| (a.0 + h, a.1 + n));
    Ok(HeadEvaluation {
        items: test.len(),
        positions: all,
        top1_agreement_pct: 100.0 * hit as f64 / all.max(1) as f64,
        per_task_top1_pct: per_task
            .into_iter()
            .map(|(t, (h, n))| (t, 100.0 * h as f64 / n.max(1) as f64))
            .collect(),
    })
}

/// Trains the recipe's head for its `target` and writes the head folder
/// (EAGLE's layout: config.json, model.safetensors) and training.json.
pub(crate) fn train_eagle_head(
    recipe_path: &Path,
    r: &Recipe,
    out: &Path,
    device: &Device,
    stop: &std::sync::atomic::AtomicBool,
    on: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<TrainingRecord, TrainError> {
    let workers = candle_core::utils::get_num_threads().max(1);
    let single = super::SingleThreadedKernels::enter();
    let target_dir = super::target_dir(recipe_path, r).ok_or_else(|| TrainError::Recipe {
        path: recipe_path.to_path_buf(),
        detail: "field `target`: an eagle recipe names the model its head drafts for".into(),
    })?;
    let loaded = super::load_trained(&target_dir, device)?;
    let target = loaded.model.clone();
    let cfg = head_config(r, target.config(), recipe_path)?;
    cfg.validate(recipe_path)?;
    let data = TrainData::load(recipe_path, r)?;

    let varmap = candle_nn::VarMap::new();
    let mut named: Vec<(String, Var)> = Vec::new();
    {
        let mut vars = varmap.data().lock().expect("varmap lock");
        for (name, shape, v) in init_head(&cfg, r.seed) {
            let var = Var::from_tensor(&Tensor::from_vec(v, shape, device)?)?;
            vars.insert(name.clone(), var.clone());
            named.push((name, var));
        }
    }
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, device);
    let head = EagleHead::from_var_builder(vb, &cfg, &out.display().to_string())?;
    let parameters: usize = named.iter().map(|(_, v)| v.elem_count()).sum();
    let done = super::optimise(
        recipe_path,
        r,
        out,
        device,
        &named,
        &data,
        stop,
        on,
        &mut |batch: &[&Pair], step: usize| {
            gradients(&head, &target, &named, batch, r, step, workers)
        },
    )?;
    drop(single);

    // The head folder.
    std::fs::create_dir_all(out).map_err(io(out))?;
    super::save_weights(out, &named)?;
    let mut config = cfg.to_hf_json();
    config["bias"] = serde_json::json!(true);
    config["pdbench_objective"] = serde_json::json!(r.objective);
    config["pdbench_target"] = serde_json::json!(target_dir.display().to_string());
    let cj = out.join("config.json");
    crate::results::write_atomic(
        &cj,
        serde_json::to_string_pretty(&config)
            .expect("json")
            .as_bytes(),
    )
    .map_err(io(&cj))?;

    // Evaluation through the loader, as any head.
    let eval_started = Instant::now();
    let reloaded = EagleHead::load_dir(out, DType::F32, device)?;
    let head_evaluation = evaluate_head(&reloaded.head, &target, r)?;
    let record = TrainingRecord {
        target: Some(super::InitRecord {
            path: target_dir.display().to_string(),
            sha256: crate::store::sha256_bytes(
                &std::fs::read(target_dir.join("model.safetensors"))
                    .map_err(io(&target_dir.join("model.safetensors")))?,
            ),
        }),
        head_evaluation: Some(head_evaluation),
        eval_wall_s: eval_started.elapsed().as_secs_f64(),
        ..TrainingRecord::of_run(recipe_path, r, parameters, done, workers)
    };
    super::finish(out, &record)?;
    on(TrainEvent::Done { record: &record });
    Ok(record)
}
