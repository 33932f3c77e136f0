//! Objective `deer`: DEER's two-stage alignment (Cheng et al. 2025) of a
//! masked-diffusion drafter (the recipe's `init`) to a frozen AR target
//! (`target`).
//!
//! The target answers the first `distill_prompts` training prompts of each
//! task greedily; the drafter trains on those answers only, so it learns
//! the target's own choices (on random tasks, which of the valid answers
//! the target picks). Stage I: an answer (EOS-filled to the canvas) is cut
//! at a random point, the continuation masked with noise level t (loss
//! weights 1/t), the prefix kept clean. Stage II (the last
//! `stage2_fraction` of the steps): the whole continuation of R positions
//! is masked, as in one-step drafting, with weights α^(R−i) for the i-th
//! position after the boundary (DEER: α = 1.01). DEER appends a separator
//! token at the boundary; the toy vocabulary has none, and the run of
//! masks after the verified prefix marks it (the logits are shifted, so
//! the last verified token's row predicts the first draft).

use std::path::Path;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::objective::{
    Ar, EvalDecoding, MaskedDiffusion, Objective, ObjectiveParams, Pair, Specials, TokenBatch,
};
use super::{Recipe, TrainData, TrainError, TrainEvent, TrainingRecord};
use crate::methods::diffuspec::{argmax_draft, DiffusionDrafter};
use crate::model::{LoadedModel, Mask, ModelError, Transformer};
use crate::toy::{self, Split};

/// One stage of the alignment.
pub struct DeerStage {
    pub two: bool,
}

static STAGE_ONE: DeerStage = DeerStage { two: false };
static STAGE_TWO: DeerStage = DeerStage { two: true };

impl Objective for DeerStage {
    fn token_batch(
        &self,
        batch: &[&Pair],
        sp: Specials,
        p: &ObjectiveParams,
        rng: &mut ChaCha20Rng,
    ) -> candle_core::Result<TokenBatch> {
        let g = p.gen_len;
        let shift = usize::from(p.shift_logits);
        // Stratified noise levels, as masked-diffusion training draws them.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.shuffle(rng);
        let u: f64 = rng.random_range(0.0..1.0);
        let mut rows = Vec::with_capacity(batch.len());
        let mut targets = Vec::with_capacity(batch.len());
        let mut norm = 0f64;
        for (i, pair) in batch.iter().enumerate() {
            if pair.answer.len() + 1 > g {
                candle_core::bail!(
                    "an answer of {} tokens does not fit gen_len {g} (answer plus EOS)",
                    pair.answer.len()
                );
            }
            let n0 = pair.prompt.len();
            if shift == 1 && n0 == 0 {
                candle_core::bail!("shifted logits need a prompt before the answer");
            }
            let mut clean = pair.answer.clone();
            clean.resize(g, sp.eos);
            let cut = rng.random_range(0..=pair.answer.len());
            let mut noisy = clean.clone();
            let mut weight = vec![0f32; g];
            if self.two {
                let mut w = 1f64;
                for j in cut..g {
                    noisy[j] = sp.mask;
                    weight[j] = w as f32;
                    w /= p.deer_alpha;
                }
            } else {
                let t = 1e-3 + (1.0 - 1e-3) * ((order[i] as f64 + u) / batch.len() as f64);
                for j in cut..g {
                    if rng.random_bool(t) {
                        noisy[j] = sp.mask;
                        weight[j] = (1.0 / t) as f32;
                    }
                }
                if !weight.iter().any(|&w| w > 0.0) {
                    let j = rng.random_range(cut..g);
                    noisy[j] = sp.mask;
                    weight[j] = 1.0;
                }
            }
            norm += if self.two {
                weight.iter().map(|&w| w as f64).sum::<f64>()
            } else {
                (g - cut) as f64
            };
            let mut row = pair.prompt.clone();
            row.extend_from_slice(&noisy);
            let mut t = vec![(sp.pad, 0f32); row.len()];
            for j in cut..g {
                t[n0 + j - shift] = (clean[j], weight[j]);
            }
            rows.push(row);
            targets.push(t);
        }
        Ok(TokenBatch {
            masks: vec![Mask::Bidirectional; rows.len()],
            rows,
            positions: None,
            targets,
            norm: norm.max(1e-9),
        })
    }

    fn decode(
        &self,
        model: &Transformer,
        prompt: &[u32],
        sp: Specials,
        p: &ObjectiveParams,
        max_new: usize,
        d: &mut EvalDecoding<'_>,
    ) -> Result<(Vec<u32>, usize), ModelError> {
        MaskedDiffusion { block: false }.decode(model, prompt, sp, p, max_new, d)
    }

    /// The drafter is judged by its target's acceptance
    /// ([`DeerEvaluation`]), not as a standalone decoder.
    fn eval_parallelism(&self, _: &ObjectiveParams) -> Vec<usize> {
        Vec::new()
    }
}

/// Acceptance of a drafter by its target on the test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeerEvaluation {
    pub items: usize,
    pub rows: Vec<DeerEvalRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeerEvalRow {
    /// `init` (the drafter before alignment) or `aligned`.
    pub drafter: String,
    /// Draft block (K).
    pub block_len: usize,
    /// Greedy DEER: tokens per target forward (accepted drafts plus the
    /// target's token, EOS included) and mean accepted drafts per step.
    pub tokens_per_target_forward: f64,
    pub mean_accepted: f64,
}

/// Greedy DEER on the target's answers: with greedy verification, the
/// target's continuation of a prefix of its own greedy answer is the rest
/// of that answer, so acceptance is the match of each one-step draft with
/// it. Returns (steps, accepted drafts, tokens).
fn deer_on_answer(
    drafter: &mut DiffusionDrafter,
    prompt: &[u32],
    answer: &[u32],
    eos: u32,
    k: usize,
) -> Result<(usize, usize, usize), TrainError> {
    let mut full = answer.to_vec();
    full.push(eos);
    let (mut at, mut steps, mut accepted) = (0usize, 0usize, 0usize);
    // The first token comes from the target's prefill, as in `deer`.
    let mut seq = prompt.to_vec();
    seq.push(full[0]);
    at += 1;
    while at < full.len() {
        let rows = drafter
            .distributions("deer", &seq, prompt.len(), k, &[])
            .map_err(|e| TrainError::Data(e.to_string()))?;
        let drafts = argmax_draft(&rows, &[eos]);
        let a = drafts
            .iter()
            .zip(&full[at..])
            .take_while(|(d, t)| d == t)
            .count();
        steps += 1;
        accepted += a;
        let take = (a + 1).min(full.len() - at);
        seq.extend_from_slice(&full[at..at + take]);
        at += take;
    }
    Ok((steps, accepted, full.len()))
}

fn evaluate_deer(
    target: &Transformer,
    drafters: &[(&str, &LoadedModel)],
    r: &Recipe,
    workers: usize,
) -> Result<DeerEvaluation, TrainError> {
    let tok = super::tokenizer();
    let sp = super::specials();
    let test = toy::generate(&super::toy_params(r, Split::Test, r.data.eval_per_task))
        .map_err(|e| TrainError::Data(e.to_string()))?;
    let p = &r.objective_params;
    let answers = super::on_workers(test.len(), workers, |i| -> Result<_, TrainError> {
        let prompt = super::encode(&tok, &test[i].prompt)?;
        let (answer, _) = Ar.decode(
            target,
            &prompt,
            sp,
            p,
            p.gen_len - 1,
            &mut EvalDecoding::greedy(1),
        )?;
        Ok((prompt, answer))
    })
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::new();
    for k in [8, p.gen_len] {
        for &(name, m) in drafters {
            let per = super::on_workers(answers.len(), workers, |i| {
                let mut d = DiffusionDrafter::new(m, "deer")
                    .map_err(|e| TrainError::Data(e.to_string()))?;
                deer_on_answer(&mut d, &answers[i].0, &answers[i].1, sp.eos, k)
            });
            let (mut steps, mut acc, mut tokens) = (0, 0, 0);
            for x in per {
                let (s, a, t) = x?;
                steps += s;
                acc += a;
                tokens += t;
            }
            // The prefill's forward yields the first token of each item.
            let forwards = steps + answers.len();
            rows.push(DeerEvalRow {
                drafter: name.into(),
                block_len: k,
                tokens_per_target_forward: tokens as f64 / forwards as f64,
                mean_accepted: acc as f64 / steps.max(1) as f64,
            });
        }
    }
    Ok(DeerEvaluation {
        items: answers.len(),
        rows,
    })
}

pub(crate) fn train_deer(
    recipe_path: &Path,
    r: &Recipe,
    out: &Path,
    device: &candle_core::Device,
    stop: &std::sync::atomic::AtomicBool,
    on: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<TrainingRecord, TrainError> {
    let single = super::SingleThreadedKernels::enter();
    let workers = candle_core::utils::get_num_threads().max(1);
    let target_dir = super::target_dir(recipe_path, r).expect("validated when loading");
    let init_dir = super::init_dir(recipe_path, r).expect("validated when loading");
    let target = super::load_trained(&target_dir, device)?;
    let init = super::load_trained(&init_dir, device)?;
    if init.info.diffusion.is_none() {
        return Err(TrainError::Recipe {
            path: recipe_path.to_path_buf(),
            detail: format!(
                "field `init`: {} is not a masked-diffusion LM (DEER aligns a diffusion drafter)",
                init_dir.display()
            ),
        });
    }
    let data = TrainData::load(recipe_path, r)?;
    on(TrainEvent::Collecting {
        what: "the target's greedy answers to the training prompts",
    });
    let sp = super::specials();
    let p = r.objective_params;
    let mut groups = Vec::new();
    for (task, pairs) in data.groups() {
        let take: Vec<&Pair> = pairs.iter().take(p.distill_prompts.max(1)).collect();
        let answered = super::on_workers(take.len(), workers, |i| -> Result<Pair, TrainError> {
            let (answer, _) = Ar.decode(
                &target.model,
                &take[i].prompt,
                sp,
                &p,
                p.gen_len - 1,
                &mut EvalDecoding::greedy(1),
            )?;
            Ok(Pair {
                prompt: take[i].prompt.clone(),
                answer,
            })
        })
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
        groups.push((task.clone(), answered));
    }
    let distilled = data.with_pairs(groups);
    let stage2_from = ((1.0 - p.stage2_fraction) * r.optim.steps as f64).round() as usize;
    let at_step = move |step: usize| -> &'static dyn Objective {
        if step < stage2_from {
            &STAGE_ONE
        } else {
            &STAGE_TWO
        }
    };
    let mut record = super::train_model_with(
        &at_step,
        &STAGE_TWO,
        distilled,
        recipe_path,
        r,
        out,
        device,
        stop,
        on,
        &mut |aligned, record| {
            record.deer_evaluation = Some(evaluate_deer(
                &target.model,
                &[("init", &init), ("aligned", aligned)],
                r,
                workers,
            )?);
            Ok(())
        },
    )?;
    record.target = Some(super::InitRecord {
        path: target_dir.display().to_string(),
        sha256: crate::store::sha256_bytes(
            &std::fs::read(target_dir.join("model.safetensors"))
                .map_err(super::io(&target_dir.join("model.safetensors")))?,
        ),
    });
    super::finish(out, &record)?;
    drop(single);
    Ok(record)
}
