//! Objective `learn2pd`: a Learn2PD filter for the diffusion LM named by
//! the recipe's `init`. The baseline (`dllm`'s top-k, one position per
//! step, by confidence) decodes training prompts; replaying each step, a
//! masked position is labelled 1 when its argmax already equals the token
//! the baseline finally put there (the extremely-greedy oracle), and the
//! filter learns those labels from the block's top-1 probabilities with
//! binary cross-entropy.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::{io, Pair, Recipe, TrainData, TrainError, TrainEvent, TrainingRecord};
use crate::methods::dllm::{Dllm, DllmParams, Hooks};
use crate::model::filter::{Filter, FilterConfig};
use crate::toy::{self, Split};

/// One replayed step: the block's top-1 probabilities (1.0 where
/// committed), and per position whether it was masked and whether its
/// argmax was already final.
#[derive(Debug, Clone)]
struct Sample {
    conf: Vec<f32>,
    masked: Vec<bool>,
    is_final: Vec<bool>,
}

/// The filter against the baseline on the test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterEvaluation {
    pub items: usize,
    /// Replayed baseline steps on the test split: how often the filter
    /// accepts a position whose argmax is not final (a wrong commit) and
    /// how many final ones it finds.
    pub false_accept_pct: f64,
    pub recall_pct: f64,
    pub rows: Vec<FilterEvalRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterEvalRow {
    /// `dllm` (the baseline), `learn2pd` (filter and end-of-text
    /// prediction) or `learn2pd without end-of-text`.
    pub decoder: String,
    pub deterministic: Option<f64>,
    pub random: Option<f64>,
    /// Forwards (NFE) per item.
    pub forwards_per_item: f64,
}

fn baseline(block: usize) -> DllmParams {
    let mut p: DllmParams = serde_json::from_value(serde_json::json!({})).expect("defaults");
    p.tokens_per_step = Some(1);
    p.block_length = Some(block);
    p
}

fn method_err(e: crate::methods::MethodError) -> TrainError {
    TrainError::Data(e.to_string())
}

/// The baseline's steps on one prompt, replayed against its final canvas.
fn replay(dllm: &mut Dllm, prompt: &[u32], block: usize) -> Result<Vec<Sample>, TrainError> {
    struct Step {
        lo: usize,
        preds: Vec<(usize, u32, f32)>,
    }
    let mut steps: Vec<Step> = Vec::new();
    let mut fin: HashMap<usize, u32> = HashMap::new();
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    dllm.decode(prompt, usize::MAX, &mut rng, &Hooks::default(), &mut |s| {
        for &p in s.positions {
            if let Some(&(_, t, _)) = s.predictions.iter().find(|x| x.0 == p as usize) {
                fin.insert(p as usize, t);
            }
        }
        steps.push(Step {
            lo: s.block as usize * block,
            preds: s.predictions.to_vec(),
        });
        true
    })
    .map_err(method_err)?;
    Ok(steps
        .into_iter()
        .map(|st| {
            let mut s = Sample {
                conf: vec![1.0; block],
                masked: vec![false; block],
                is_final: vec![false; block],
            };
            for &(pos, tok, prob) in &st.preds {
                let j = pos - st.lo;
                s.conf[j] = prob;
                s.masked[j] = true;
                s.is_final[j] = fin.get(&pos) == Some(&tok);
            }
            s
        })
        .collect())
}

fn init_filter(cfg: &FilterConfig, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    Filter::shapes(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = if name.ends_with("bias") {
                vec![0.0; n]
            } else {
                let fan_in = shape[1] as f32;
                let a = (3.0 / fan_in).sqrt();
                (0..n).map(|_| rng.random_range(-a..a)).collect()
            };
            (name.to_string(), shape, v)
        })
        .collect()
}

/// Mean binary cross-entropy over masked positions, and its value.
fn loss(
    named: &[(String, Var)],
    rows: &[&Sample],
    block: usize,
    device: &Device,
) -> candle_core::Result<(Tensor, f64)> {
    let n = rows.len();
    let flat =
        |f: &dyn Fn(&Sample) -> Vec<f32>| -> Vec<f32> { rows.iter().flat_map(|s| f(s)).collect() };
    let conf = Tensor::from_vec(flat(&|s| s.conf.clone()), (n, block), device)?;
    let y = Tensor::from_vec(
        flat(&|s| s.is_final.iter().map(|&b| f32::from(u8::from(b))).collect()),
        (n, block),
        device,
    )?;
    let w_vec = flat(&|s| s.masked.iter().map(|&b| f32::from(u8::from(b))).collect());
    let count = w_vec.iter().sum::<f32>().max(1.0);
    let w = Tensor::from_vec(w_vec, (n, block), device)?;
    let params: HashMap<&str, Tensor> = named
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_tensor().clone()))
        .collect();
    let z = crate::model::filter::forward_train(&conf, &params)?;
    // BCE with logits: max(z, 0) − z·y + ln(1 + e^−|z|).
    let per = (z.relu()? - (&z * &y)? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let l = ((per * w)?.sum_all()? / count as f64)?;
    let v = l.to_scalar::<f32>()? as f64;
    Ok((l, v))
}

fn decode_eval(
    dllm: &mut Dllm,
    tok: &tokenizers::Tokenizer,
    test: &[toy::Item],
    hooks: &Hooks<'_>,
    name: &str,
) -> Result<FilterEvalRow, TrainError> {
    let mut per_task: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    let mut forwards = 0usize;
    let eos = super::specials().eos;
    for it in test {
        let prompt = super::encode(tok, &it.prompt)?;
        let mut canvas: Vec<Option<u32>> = Vec::new();
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        dllm.decode(&prompt, usize::MAX, &mut rng, hooks, &mut |s| {
            forwards += 1;
            // The committed prefix grows by `tokens`.
            canvas.extend(s.tokens.iter().map(|&t| Some(t)));
            true
        })
        .map_err(method_err)?;
        let answer: Vec<u32> = canvas
            .into_iter()
            .map_while(|t| t.filter(|&t| t != eos))
            .collect();
        let text = tok
            .decode(&answer, true)
            .map_err(|e| TrainError::Data(format!("toy tokenizer: {e}")))?;
        let e = per_task.entry(it.task.clone()).or_default();
        e.0 += toy::score(&text, &it.reference).unwrap_or(0.0);
        e.1 += 1;
    }
    let mean_of = |det: bool| {
        let v: Vec<f64> = per_task
            .iter()
            .filter(|(t, _)| toy::is_deterministic(t) == Some(det))
            .map(|(_, &(s, n))| 100.0 * s / n as f64)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    Ok(FilterEvalRow {
        decoder: name.into(),
        deterministic: mean_of(true),
        random: mean_of(false),
        forwards_per_item: forwards as f64 / test.len().max(1) as f64,
    })
}

pub(crate) fn train_learn2pd_filter(
    recipe_path: &Path,
    r: &Recipe,
    out: &Path,
    device: &Device,
    stop: &std::sync::atomic::AtomicBool,
    on: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<TrainingRecord, TrainError> {
    let dllm_dir = super::init_dir(recipe_path, r).ok_or_else(|| TrainError::Recipe {
        path: recipe_path.to_path_buf(),
        detail: "field `init`: a learn2pd recipe names the diffusion LM its filter reads".into(),
    })?;
    let loaded = super::load_trained(&dllm_dir, device)?;
    if loaded.info.diffusion.is_none() {
        return Err(TrainError::Recipe {
            path: recipe_path.to_path_buf(),
            detail: format!(
                "field `init`: {} is not a masked-diffusion LM (its config.json names no diffusion objective)",
                dllm_dir.display()
            ),
        });
    }
    let block = r.objective_params.block_size;
    let mut dllm = Dllm::new(&loaded, baseline(block), "learn2pd").map_err(method_err)?;
    let cfg = FilterConfig {
        block_length: block,
        hidden_size: r.objective_params.filter_hidden,
        threshold: 0.96,
        pdbench_objective: Some(r.objective.clone()),
        pdbench_dllm: Some(dllm_dir.display().to_string()),
    };
    let tok = super::tokenizer();
    let data = TrainData::load(recipe_path, r)?;

    // The baseline's replayed steps on the first `trajectory_prompts`
    // training prompts of each task.
    on(TrainEvent::Collecting {
        what: "the diffusion LM's baseline decoding steps on the training prompts",
    });
    let collect_started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    for (_, pairs) in data.groups() {
        for p in pairs.iter().take(r.objective_params.trajectory_prompts) {
            samples.extend(replay(&mut dllm, &p.prompt, block)?);
        }
    }
    let collect_s = collect_started.elapsed().as_secs_f64();
    if samples.is_empty() {
        return Err(TrainError::Data("the baseline decoded no steps".into()));
    }

    let mut named: Vec<(String, Var)> = Vec::new();
    for (name, shape, v) in init_filter(&cfg, r.seed) {
        named.push((
            name,
            Var::from_tensor(&Tensor::from_vec(v, shape, device)?)?,
        ));
    }
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
        &mut |_: &[&Pair], step: usize| {
            let mut rng = ChaCha20Rng::seed_from_u64(
                r.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (step as u64).wrapping_add(1),
            );
            let rows: Vec<&Sample> = (0..r.optim.batch_size)
                .map(|_| &samples[rng.random_range(0..samples.len())])
                .collect();
            let (l, v) = loss(&named, &rows, block, device)?;
            let mut stores = vec![l.backward()?];
            Ok((v, super::sum_stores(&named, &mut stores, 1.0)?))
        },
    )?;

    std::fs::create_dir_all(out).map_err(io(out))?;
    super::save_weights(out, &named)?;
    let cj = out.join("config.json");
    crate::results::write_atomic(
        &cj,
        serde_json::to_string_pretty(&cfg).expect("json").as_bytes(),
    )
    .map_err(io(&cj))?;

    // Evaluation through the loader: the filter on replayed test steps,
    // then decoding against the baseline.
    let eval_started = Instant::now();
    let lf = Filter::load_dir(out)?;
    let test = toy::generate(&super::toy_params(r, Split::Test, r.data.eval_per_task))
        .map_err(|e| TrainError::Data(e.to_string()))?;
    let (mut fa, mut neg, mut hit, mut pos) = (0usize, 0usize, 0usize, 0usize);
    for it in &test {
        let prompt = super::encode(&tok, &it.prompt)?;
        for s in replay(&mut dllm, &prompt, block)? {
            let acc = lf.filter.accept(&s.conf);
            for ((&masked, &is_final), &accepted) in
                s.masked.iter().zip(&s.is_final).zip(&acc).take(block)
            {
                if !masked {
                    continue;
                }
                if is_final {
                    pos += 1;
                    hit += usize::from(accepted);
                } else {
                    neg += 1;
                    fa += usize::from(accepted);
                }
            }
        }
    }
    let accept = |conf: &[f32]| lf.filter.accept(conf);
    let accept_fn: &dyn Fn(&[f32]) -> Vec<bool> = &accept;
    let mut rows = Vec::new();
    for (filter, end_of_text, name) in [
        (None, false, "dllm"),
        (Some(accept_fn), false, "learn2pd without end-of-text"),
        (Some(accept_fn), true, "learn2pd"),
    ] {
        let hooks = Hooks {
            filter,
            end_of_text,
        };
        rows.push(decode_eval(&mut dllm, &tok, &test, &hooks, name)?);
    }
    // Collecting the baseline's steps is part of training.
    let wall_s = done.wall_s + collect_s;
    let record = TrainingRecord {
        wall_s,
        init: Some(super::InitRecord {
            path: dllm_dir.display().to_string(),
            sha256: crate::store::sha256_bytes(
                &std::fs::read(dllm_dir.join("model.safetensors"))
                    .map_err(io(&dllm_dir.join("model.safetensors")))?,
            ),
        }),
        filter_evaluation: Some(FilterEvaluation {
            items: test.len(),
            false_accept_pct: 100.0 * fa as f64 / neg.max(1) as f64,
            recall_pct: 100.0 * hit as f64 / pos.max(1) as f64,
            rows,
        }),
        eval_wall_s: eval_started.elapsed().as_secs_f64(),
        ..TrainingRecord::of_run(recipe_path, r, parameters, done, 1)
    };
    super::finish(out, &record)?;
    on(TrainEvent::Done { record: &record });
    Ok(record)
}
