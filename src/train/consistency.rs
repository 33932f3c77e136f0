//! Consistency training (CLLM, Kou et al. 2024). The `init` model decodes
//! training prompts by greedy Jacobi iteration, window by window, and its
//! trajectories (every state from the random first guess to the fixed
//! point) are kept. Training then minimises 10 × the AR loss on the prompt
//! and fixed point (label smoothing `label_smoothing`, CLLM's 0.1) plus the global consistency loss:
//! the cross-entropy from the model's output at a random trajectory state
//! to its own (detached) output at the fixed point, on the positions from
//! the first token where the state differs. A consistency-trained model
//! jumps to the fixed point in fewer Jacobi iterations.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Tensor, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::objective::{Pair, TokenBatch};
use super::{
    encode, specials, tokenizer, toy_params, Recipe, TrainData, TrainError, TrainEvent,
    TrainingRecord,
};
use crate::model::{Forward, KvCache, LogitsAt, Mask, Transformer};
use crate::toy::{self, Split};

const AR_WEIGHT: f64 = 10.0;
/// Generated tokens per prompt at most, while collecting.
const MAX_NEW: usize = 48;

/// One Jacobi window of a training prompt: the context before it, the
/// states the iteration went through (the first guess included, the fixed
/// point not), and the fixed point.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    prompt_len: usize,
    prefix: Vec<u32>,
    states: Vec<Vec<u32>>,
    fixed: Vec<u32>,
}

/// Greedy Jacobi iteration of one window after `prefix`: from `guess`,
/// every position takes the model's argmax given the positions before it,
/// all at once, until nothing changes. Returns the states before the fixed
/// point, the fixed point and the forwards used.
fn jacobi_window(
    model: &Transformer,
    cache: &mut KvCache,
    prefix: &[u32],
    mut guess: Vec<u32>,
) -> Result<(Vec<Vec<u32>>, Vec<u32>, usize), TrainError> {
    let n = guess.len();
    let out = model.forward(cache, &Forward::causal(prefix, 0))?;
    let first = crate::model::argmax_rows(&out.logits.expect("last logits"))?[0];
    let mut states = Vec::new();
    let mut forwards = 1;
    // Each iteration fixes at least one more position.
    for _ in 0..=n {
        let out = model.forward(
            cache,
            &Forward::causal(&guess, prefix.len()).with_logits(LogitsAt::All),
        )?;
        forwards += 1;
        let pred = crate::model::argmax_rows(&out.logits.expect("all logits"))?;
        let mut next = Vec::with_capacity(n);
        next.push(first);
        next.extend_from_slice(&pred[..n - 1]);
        if next == guess {
            break;
        }
        states.push(std::mem::replace(&mut guess, next));
    }
    Ok((states, guess, forwards))
}

/// Trajectories of `model` on `pairs`' prompts, window by window until EOS
/// or [`MAX_NEW`] tokens; first guesses are tokens drawn from the context.
fn collect(
    model: &Transformer,
    pairs: &[&Pair],
    window: usize,
    eos: u32,
    seed: u64,
) -> Result<Vec<Window>, TrainError> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xC11A);
    let mut cache = model.new_cache(256)?;
    let mut out = Vec::new();
    for p in pairs {
        let mut prefix = p.prompt.clone();
        while prefix.len() - p.prompt.len() < MAX_NEW
            && prefix.len() + window <= model.config().max_position_embeddings
        {
            let guess: Vec<u32> = (0..window)
                .map(|_| prefix[rng.random_range(0..prefix.len())])
                .collect();
            let (states, fixed, _) = jacobi_window(model, &mut cache, &prefix, guess)?;
            let done = fixed.contains(&eos);
            if !states.is_empty() {
                out.push(Window {
                    prompt_len: p.prompt.len(),
                    prefix: prefix.clone(),
                    states,
                    fixed: fixed.clone(),
                });
            }
            prefix.extend_from_slice(&fixed);
            if done {
                break;
            }
        }
    }
    Ok(out)
}

/// One row pair of a batch: the fixed point's row and a state's row, and
/// where the consistency loss starts.
struct Rows {
    fixed: Vec<u32>,
    state: Vec<u32>,
    prompt_len: usize,
    /// First position whose logits enter the consistency loss.
    from: usize,
}

fn rows_of(w: &Window, state: usize) -> Rows {
    let s = &w.states[state];
    let d = s
        .iter()
        .zip(&w.fixed)
        .position(|(a, b)| a != b)
        .expect("a state differs from the fixed point");
    let mut fixed = w.prefix.clone();
    fixed.extend_from_slice(&w.fixed);
    let mut st = w.prefix.clone();
    st.extend_from_slice(s);
    Rows {
        fixed,
        state: st,
        prompt_len: w.prompt_len,
        from: w.prefix.len() - 1 + d,
    }
}

/// Position counts of a row pair: AR positions (predicting the answer
/// region) and consistency positions (`from` to the window's last token).
fn counts(r: &Rows) -> (usize, usize) {
    let len = r.fixed.len();
    ((len - 1) - (r.prompt_len - 1), (len - 1) - r.from)
}

/// The loss of a micro-batch of row pairs, normalised by the whole batch's
/// counts, so that micro-batch gradients sum to the batch's.
fn loss(
    model: &Transformer,
    rows: &[Rows],
    n_ar: f64,
    n_cons: f64,
    label_smoothing: f64,
    pad: u32,
) -> candle_core::Result<(Tensor, f64)> {
    let dev = model.device();
    let b = rows.len();
    let mut tb = TokenBatch {
        rows: Vec::with_capacity(2 * b),
        masks: vec![Mask::Causal; 2 * b],
        positions: None,
        targets: Vec::with_capacity(2 * b),
        norm: 1.0,
    };
    let mut cons_w = Vec::new();
    for r in rows {
        let len = r.fixed.len();
        tb.targets.push(
            (0..len)
                .map(|j| {
                    let on = j + 1 < len && j + 1 >= r.prompt_len;
                    (
                        if on { r.fixed[j + 1] } else { pad },
                        if on { 1.0 } else { 0.0 },
                    )
                })
                .collect(),
        );
        tb.rows.push(r.fixed.clone());
    }
    for r in rows {
        tb.targets.push(vec![(pad, 0.0); r.state.len()]);
        tb.rows.push(r.state.clone());
    }
    let p = tb.padded(pad);
    let t = p.len;
    for r in rows {
        let len = r.fixed.len();
        cons_w.extend((0..t).map(|j| {
            if j >= r.from && j + 1 < len {
                1.0f32
            } else {
                0.0
            }
        }));
    }
    let ids = Tensor::from_vec(p.ids, (2 * b, t), dev)?;
    let bias = Tensor::from_vec(p.bias, (2 * b, 1, t, t), dev)?;
    let logits = model
        .forward_train(&ids, &bias, None)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let v = logits.dim(D::Minus1)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let fixed_logp = logp.narrow(0, 0, b)?.reshape((b * t, v))?;
    // AR: (1 - ε)·nll + ε·mean(−log p) at the answer positions.
    let targets = Tensor::from_vec(p.targets[..b * t].to_vec(), (b * t, 1), dev)?;
    let w_ar = Tensor::from_vec(p.weights[..b * t].to_vec(), b * t, dev)?;
    let nll = fixed_logp.gather(&targets, 1)?.squeeze(1)?.neg()?;
    let smooth = fixed_logp.mean(D::Minus1)?.neg()?;
    let ar = ((nll * (1.0 - label_smoothing))? + (smooth * label_smoothing)?)?;
    let ar_sum = (ar * w_ar)?.sum_all()?;
    // Consistency: the state's log-probabilities against the fixed
    // point's probabilities, which are targets (detached).
    let teacher = logits.narrow(0, 0, b)?.detach();
    let teacher_p = candle_nn::ops::softmax_last_dim(&teacher)?.reshape((b * t, v))?;
    let state_logp = logp.narrow(0, b, b)?.reshape((b * t, v))?;
    let ce = (teacher_p * state_logp)?.sum(D::Minus1)?.neg()?;
    let w_cons = Tensor::from_vec(cons_w, b * t, dev)?;
    let cons_sum = (ce * w_cons)?.sum_all()?;
    let total = ((ar_sum * (AR_WEIGHT / n_ar))? + (cons_sum * (1.0 / n_cons))?)?;
    let value = total.to_scalar::<f32>()? as f64;
    Ok((total, value))
}

/// Jacobi decoding's efficiency on the test split, before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JacobiEvaluation {
    pub window: usize,
    pub items: usize,
    /// Generated tokens per forward of greedy Jacobi decoding that keeps
    /// each window's converged prefix (the `jacobi` method's rule).
    pub tokens_per_forward: f64,
    /// The same for the `init` model.
    pub init_tokens_per_forward: f64,
}

/// Tokens per forward of greedy Jacobi decoding on `prompts`, with the
/// converged prefix of each iteration kept (fast-forwarding).
fn jacobi_tokens_per_forward(
    model: &Transformer,
    prompts: &[Vec<u32>],
    window: usize,
    eos: u32,
) -> Result<f64, TrainError> {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let greedy = crate::sampling::SamplingParams::default();
    let mut cache = model.new_cache(256)?;
    let (mut tokens, mut forwards) = (0usize, 0usize);
    for prompt in prompts {
        cache.clear();
        let out = model.forward(&mut cache, &Forward::causal(prompt, 0))?;
        forwards += 1;
        let mut seq = prompt.clone();
        let first = crate::model::argmax_rows(&out.logits.expect("last logits"))?[0];
        seq.push(first);
        let mut made = 1;
        'windows: while made < MAX_NEW && seq.last() != Some(&eos) {
            let mut left = window.min(MAX_NEW - made);
            let mut guesses: Vec<u32> = (0..left.saturating_sub(1))
                .map(|_| seq[rng.random_range(0..seq.len())])
                .collect();
            while left > 0 {
                let last = *seq.last().expect("non-empty");
                let v = crate::methods::chain::verify_chain(
                    model, &mut cache, last, &guesses, None, &greedy, &mut rng,
                )
                .map_err(|e| TrainError::Data(e.to_string()))?;
                forwards += 1;
                let acc = v.verdict.accepted;
                let mut emitted = guesses[..acc].to_vec();
                emitted.push(v.verdict.next);
                for t in emitted {
                    seq.push(t);
                    made += 1;
                    left -= 1;
                    if t == eos {
                        break 'windows;
                    }
                }
                guesses = v.greedy_next[acc + 1..].to_vec();
                guesses.truncate(left.saturating_sub(1));
            }
        }
        tokens += made;
    }
    Ok(tokens as f64 / forwards.max(1) as f64)
}

pub(crate) fn train_consistency(
    recipe_path: &Path,
    r: &Recipe,
    out: &Path,
    device: &candle_core::Device,
    stop: &std::sync::atomic::AtomicBool,
    on: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<TrainingRecord, TrainError> {
    let workers = candle_core::utils::get_num_threads().max(1);
    let single = super::SingleThreadedKernels::enter();
    let cfg = super::model_config(r);
    cfg.validate(recipe_path)?;
    let sp = specials();
    let tok = tokenizer();
    let data = TrainData::load(recipe_path, r)?;
    let (model, named, init) = super::model_vars(recipe_path, r, &cfg, out, device)?;
    let parameters: usize = named.iter().map(|(_, v)| v.elem_count()).sum();
    let window = r.objective_params.window;

    // Trajectories of the init model, per (task group, item): the first
    // `trajectory_prompts` items of each task.
    on(TrainEvent::Collecting {
        what: "Jacobi trajectories of the init model on the training prompts",
    });
    let collect_started = Instant::now();
    let mut windows: HashMap<(usize, usize), Vec<Window>> = HashMap::new();
    let mut drawable: Vec<Vec<usize>> = Vec::new();
    for (g, (_, pairs)) in data.groups().iter().enumerate() {
        let mut have = Vec::new();
        for (i, p) in pairs
            .iter()
            .take(r.objective_params.trajectory_prompts)
            .enumerate()
        {
            let w = collect(
                &model,
                &[p],
                window,
                sp.eos,
                r.seed ^ ((g as u64) << 32 | i as u64),
            )?;
            if !w.is_empty() {
                windows.insert((g, i), w);
                have.push(i);
            }
        }
        drawable.push(have);
    }
    let collect_s = collect_started.elapsed().as_secs_f64();
    if windows.is_empty() {
        return Err(TrainError::Data(
            "no Jacobi trajectory had a state before its fixed point".into(),
        ));
    }

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
                r.seed.wrapping_mul(0xA24B_AED4_963E_E407) ^ (step as u64).wrapping_add(1),
            );
            // The step's tasks as drawn; each row takes a trajectory of
            // that task, one of its windows and one of its states.
            let mut rows = Vec::new();
            for (g, _) in data.batch_indices(r, step) {
                let have = &drawable[g];
                if have.is_empty() {
                    continue;
                }
                let i = have[rng.random_range(0..have.len())];
                let ws = &windows[&(g, i)];
                let w = &ws[rng.random_range(0..ws.len())];
                rows.push(rows_of(w, rng.random_range(0..w.states.len())));
            }
            rows.sort_by_key(|r| r.fixed.len());
            let (n_ar, n_cons) = rows.iter().fold((0usize, 0usize), |a, r| {
                let (x, y) = counts(r);
                (a.0 + x, a.1 + y)
            });
            let (n_ar, n_cons) = (n_ar.max(1) as f64, n_cons.max(1) as f64);
            let chunks: Vec<&[Rows]> = rows.chunks(r.optim.micro_batch.max(1)).collect();
            type Micro = candle_core::Result<(f64, candle_core::backprop::GradStore)>;
            let results = super::on_workers(chunks.len(), workers, |i| -> Micro {
                let (l, value) = loss(
                    &model,
                    chunks[i],
                    n_ar,
                    n_cons,
                    r.objective_params.label_smoothing,
                    sp.pad,
                )?;
                Ok((value, l.backward()?))
            });
            let mut total = 0.0;
            let mut stores = Vec::new();
            for res in results {
                let (v, g) = res?;
                total += v;
                stores.push(g);
            }
            Ok((total, super::sum_stores(&named, &mut stores, 1.0)?))
        },
    )?;
    drop(single);
    super::write_model_folder(out, &cfg, r, &named)?;

    // Evaluation through the loader: greedy quality, and Jacobi's tokens
    // per forward against the init model's.
    let eval_started = Instant::now();
    let load = |dir: &Path| super::load_trained(dir, device);
    let loaded = load(out)?;
    let test = toy::generate(&toy_params(r, Split::Test, r.data.eval_per_task))
        .map_err(|e| TrainError::Data(e.to_string()))?;
    on(TrainEvent::Evaluating { tokens_per_step: 1 });
    let quality = super::evaluate(
        &super::objective::Ar,
        &loaded.model,
        &tok,
        &test,
        &r.objective_params,
        1,
        workers,
    )?;
    let prompts: Vec<Vec<u32>> = test
        .iter()
        .map(|it| encode(&tok, &it.prompt))
        .collect::<Result<_, _>>()?;
    let init_dir = super::init_dir(recipe_path, r).expect("consistency recipes have an init");
    let before = load(&init_dir)?;
    let jacobi = JacobiEvaluation {
        window,
        items: prompts.len(),
        tokens_per_forward: jacobi_tokens_per_forward(&loaded.model, &prompts, window, sp.eos)?,
        init_tokens_per_forward: jacobi_tokens_per_forward(
            &before.model,
            &prompts,
            window,
            sp.eos,
        )?,
    };
    // Collecting the trajectories is part of training.
    let wall_s = done.wall_s + collect_s;
    let record = TrainingRecord {
        wall_s,
        init,
        evaluation: vec![quality],
        jacobi_evaluation: Some(jacobi),
        eval_wall_s: eval_started.elapsed().as_secs_f64(),
        ..TrainingRecord::of_run(recipe_path, r, parameters, done, workers)
    };
    super::finish(out, &record)?;
    on(TrainEvent::Done { record: &record });
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_mask_the_converged_prefix() {
        let w = Window {
            prompt_len: 3,
            prefix: vec![1, 2, 3, 4],
            states: vec![vec![5, 9, 9]],
            fixed: vec![5, 6, 7],
        };
        let r = rows_of(&w, 0);
        assert_eq!(r.fixed, vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(r.state, vec![1, 2, 3, 4, 5, 9, 9]);
        // Token 1 of the window differs: the logits at prefix + 0 predict it.
        assert_eq!(r.from, 4);
        // AR: positions 2..=5 predict tokens 3..=6; consistency 4..=5.
        assert_eq!(counts(&r), (4, 2));
    }
}
