//! The runner: turns suite samples into prompts, runs every method over
//! them with warm-up, checks invariants, and writes each sample as soon as
//! it is done.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::measure::{check_invariants, Clock, DeviceSync, Measured, Probe, StepKind, StopRule};
use crate::methods::{GenContext, MethodError, MethodInstance, MethodModels};
use crate::model::{LoadedModel, ModelError};
use crate::results::{ResultsError, RunDir, SampleKey, SampleRecord};
use crate::suite::{self, ResolvedSuite, Sample, SuiteError};
use crate::util::fnv1a;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Suite(#[from] SuiteError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Method(#[from] MethodError),
    /// A method failed on a sample; the error says which. (The inner error
    /// is part of the message, not a `source`, so `{:#}` prints it once.)
    #[error("method {method}, sample {sample}: {error}")]
    Decode {
        method: String,
        sample: String,
        error: Box<MethodError>,
    },
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error("suite {suite}, sample {sample}: the prompt is {prompt_tokens} tokens, and with max_new_tokens {max_new_tokens}{} it needs {needed} positions, more than the context of {context} of model {model}", ahead.describe())]
    PromptTooLong {
        suite: String,
        sample: String,
        prompt_tokens: usize,
        max_new_tokens: usize,
        ahead: Box<Ahead>,
        needed: usize,
        context: usize,
        model: String,
    },
    #[error("suite {suite}, sample {sample}: the prompt encodes to no tokens")]
    EmptyPrompt { suite: String, sample: String },
    #[error("{0}")]
    Invariant(String),
    #[error("suite {suite}, sample {sample}: {detail}")]
    Score {
        suite: String,
        sample: String,
        detail: String,
    },
    #[error("{method}: sample {sample}: {detail}")]
    Measure {
        method: String,
        sample: String,
        detail: String,
    },
}

/// A sample with its prompt rendered and encoded.
#[derive(Debug, Clone)]
pub struct PreparedSample {
    pub sample: Sample,
    pub prompt_text: String,
    pub prompt_ids: Vec<u32>,
}

/// Positions kept free past max_new_tokens for a method whose parameters
/// do not bound how far past the output it forwards.
pub const DRAFT_MARGIN: usize = 64;

/// The positions past the output that a run's methods may forward, and
/// the method that forwards the most.
#[derive(Debug, Clone, PartialEq)]
pub struct Ahead {
    pub positions: usize,
    pub method: Option<String>,
    /// Whether a parameter bounds it (else it is [`DRAFT_MARGIN`]).
    pub bounded: bool,
}

impl Ahead {
    pub fn of(methods: &[MethodInstance]) -> Self {
        let mut out = Ahead {
            positions: 0,
            method: None,
            bounded: true,
        };
        for m in methods {
            let (n, bounded) = match (m.spec().positions_ahead)(&m.params) {
                Some(n) => (n, true),
                None => (DRAFT_MARGIN, false),
            };
            if out.method.is_none() || n > out.positions {
                out = Ahead {
                    positions: n,
                    method: Some(m.label.clone()),
                    bounded,
                };
            }
        }
        out
    }

    fn describe(&self) -> String {
        match (&self.method, self.positions) {
            (_, 0) | (None, _) => String::new(),
            (Some(m), n) if self.bounded => {
                format!(" (plus {n} for the drafts of method {m}, by its parameters)")
            }
            (Some(m), n) => format!(" (plus {n} kept free for the drafts of method {m})"),
        }
    }
}

/// Renders, encodes and length-checks the first `limit` samples.
/// The contexts a prompt, its token budget and the drafts ahead must fit,
/// as (model label, positions): the target's, each companion model's, and
/// the EAGLE head's, which has a rope table of its own.
pub fn contexts(
    target: &LoadedModel,
    companions: &[Option<&LoadedModel>],
    head: Option<&crate::model::eagle::LoadedHead>,
) -> Vec<(String, usize)> {
    std::iter::once(target)
        .chain(companions.iter().flatten().copied())
        .map(|m| {
            (
                m.info.label.clone(),
                m.model.config().max_position_embeddings,
            )
        })
        .chain(head.map(|h| (h.info.spec.clone(), h.head.max_positions())))
        .collect()
}

pub fn prepare_samples(
    suite: &ResolvedSuite,
    limit: Option<usize>,
    max_new_tokens: usize,
    target: &LoadedModel,
    contexts: &[(String, usize)],
    ahead: &Ahead,
) -> Result<Vec<PreparedSample>, RunError> {
    let n = limit.unwrap_or(usize::MAX).min(suite.samples.len());
    let mut out = Vec::with_capacity(n);
    for s in &suite.samples[..n] {
        let text = suite::render_prompt(&suite.def, s, &target.tokenizer, &target.info.label)?;
        let ids = target.tokenizer.encode(&text)?;
        if ids.is_empty() {
            return Err(RunError::EmptyPrompt {
                suite: suite.def.name.clone(),
                sample: s.id.clone(),
            });
        }
        for (model, context) in contexts {
            let needed = ids.len() + max_new_tokens + ahead.positions;
            if needed > *context {
                return Err(RunError::PromptTooLong {
                    suite: suite.def.name.clone(),
                    sample: s.id.clone(),
                    prompt_tokens: ids.len(),
                    max_new_tokens,
                    ahead: Box::new(ahead.clone()),
                    needed,
                    context: *context,
                    model: model.clone(),
                });
            }
        }
        out.push(PreparedSample {
            sample: s.clone(),
            prompt_text: text,
            prompt_ids: ids,
        });
    }
    Ok(out)
}

pub struct RunPlan<'a> {
    pub suite_name: String,
    /// The suite's definition: later turns of a conversation are rendered
    /// while the run goes.
    pub suite_def: &'a crate::suite::SuiteDef,
    /// The suite's scorer; every recorded sample is scored with it.
    pub scorer: &'static crate::score::ScorerSpec,
    pub score_ctx: &'a crate::score::ScoreContext,
    pub samples: &'a [PreparedSample],
    pub methods: &'a [MethodInstance],
    pub target: &'a LoadedModel,
    pub draft: Option<&'a LoadedModel>,
    pub head: Option<&'a crate::model::eagle::LoadedHead>,
    pub consistency: Option<&'a LoadedModel>,
    pub dllm: Option<&'a LoadedModel>,
    pub filter: Option<&'a crate::model::filter::LoadedFilter>,
    pub dllm_drafter: Option<&'a LoadedModel>,
    pub tidar: Option<&'a LoadedModel>,
    /// Only this shard's work items.
    pub shard: Option<crate::results::Shard>,
    /// Prompts outer and methods inner (rotating), or method by method.
    pub order: crate::results::RunOrder,
    /// CPU threads the run decodes with: the width of its thread time.
    pub threads: usize,
    pub seed: u64,
    pub warmup: usize,
    pub repeats: usize,
    pub rule: StopRule,
}

/// What the runner reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    MethodStart {
        label: &'a str,
        todo: usize,
        skipped: usize,
    },
    WarmupDone {
        label: &'a str,
        samples: usize,
    },
    Sample {
        record: &'a SampleRecord,
        done: usize,
        todo: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    Interrupted,
}

/// The seed of one sample, independent of the order samples run in.
pub fn sample_seed(run_seed: u64, method: &str, sample_id: &str, repeat: usize) -> u64 {
    fnv1a(&[
        &run_seed.to_le_bytes(),
        method.as_bytes(),
        sample_id.as_bytes(),
        &(repeat as u64).to_le_bytes(),
    ])
}

/// The token ids of turn `turn` (≥ 1) of a sample: the conversation so far
/// with the model's own earlier answers, then the next user turn.
fn later_turn_ids(
    plan: &RunPlan<'_>,
    s: &PreparedSample,
    answers: &[String],
    turn: usize,
) -> Result<Vec<u32>, RunError> {
    let mut convo = s.sample.clone();
    let users = std::iter::once(&s.sample.prompt).chain(&s.sample.followups);
    for (user, answer) in users.zip(answers).take(turn) {
        convo.context.push(crate::suite::Turn::user(user));
        convo.context.push(crate::suite::Turn::assistant(answer));
    }
    convo.prompt = s.sample.followups[turn - 1].clone();
    let text = suite::render_prompt(
        plan.suite_def,
        &convo,
        &plan.target.tokenizer,
        &plan.target.info.label,
    )?;
    let ids = plan.target.tokenizer.encode(&text)?;
    let companions = [
        plan.draft,
        plan.consistency,
        plan.dllm,
        plan.dllm_drafter,
        plan.tidar,
    ];
    let ahead = Ahead::of(plan.methods);
    for (model, context) in contexts(plan.target, &companions, plan.head) {
        let needed = ids.len() + plan.rule.max_new_tokens + ahead.positions;
        if needed > context {
            return Err(RunError::PromptTooLong {
                suite: plan.suite_name.clone(),
                sample: format!("{} turn {}", s.sample.id, turn + 1),
                prompt_tokens: ids.len(),
                max_new_tokens: plan.rule.max_new_tokens,
                ahead: Box::new(ahead),
                needed,
                context,
                model,
            });
        }
    }
    Ok(ids)
}

#[allow(clippy::too_many_arguments)]
pub fn execute(
    plan: &RunPlan<'_>,
    dir: &RunDir,
    done: &HashMap<SampleKey, String>,
    clock: &dyn Clock,
    device: &dyn DeviceSync,
    meters: &mut crate::measure::energy::Meters,
    interrupt: &AtomicBool,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Outcome, RunError> {
    let tok = plan.target.tokenizer.clone();
    let detok = move |ids: &[u32]| tok.decode(ids).unwrap_or_default();
    let per_method = plan.samples.len() * plan.repeats;
    let ctx = UnitContext {
        plan,
        dir,
        done,
        clock,
        device,
        interrupt,
        detok: &detok,
    };
    // Each method's work items (prompt index, repeat), in the run's order:
    // method, prompt, repeat. A shard keeps the positions it holds.
    let mut lanes: Vec<Lane<'_>> = Vec::new();
    for (method_index, inst) in plan.methods.iter().enumerate() {
        let units: Vec<(usize, usize)> = (0..plan.samples.len())
            .flat_map(|i| (0..plan.repeats).map(move |r| (i, r)))
            .filter(|&(i, r)| {
                plan.shard
                    .is_none_or(|sh| sh.holds(method_index * per_method + i * plan.repeats + r))
            })
            .collect();
        let total: usize = units.iter().map(|&(i, _)| turns(&plan.samples[i])).sum();
        let todo = units
            .iter()
            .map(|&(i, r)| {
                let s = &plan.samples[i];
                (0..turns(s))
                    .filter(|&t| !done.contains_key(&unit_key(inst, s, r, t)))
                    .count()
            })
            .sum::<usize>();
        lanes.push(Lane {
            inst,
            units,
            total,
            todo,
            n_done: 0,
            decoder: None,
        });
    }
    if plan.order == crate::results::RunOrder::Method {
        for lane in &mut lanes {
            if start_lane(&ctx, lane, on_event)? {
                return Ok(Outcome::Interrupted);
            }
            let units = lane.units.clone();
            for (i, repeat) in units {
                if run_unit(&ctx, lane, i, repeat, meters, on_event)? {
                    return Ok(Outcome::Interrupted);
                }
            }
            // Its memory (caches, drafts) goes before the next method's.
            lane.decoder = None;
        }
        return Ok(Outcome::Complete);
    }
    // Interleaved: every method is built and warmed first; then prompt by
    // prompt, each method in turn, the order rotating by one each prompt,
    // so that a slow spell of the host falls on every method alike.
    for lane in &mut lanes {
        if start_lane(&ctx, lane, on_event)? {
            return Ok(Outcome::Interrupted);
        }
    }
    let m = lanes.len();
    for i in 0..plan.samples.len() {
        for repeat in 0..plan.repeats {
            for k in 0..m {
                let lane = &mut lanes[(k + i) % m];
                if lane.decoder.is_none() || !lane.units.contains(&(i, repeat)) {
                    continue;
                }
                if run_unit(&ctx, lane, i, repeat, meters, on_event)? {
                    return Ok(Outcome::Interrupted);
                }
            }
        }
    }
    Ok(Outcome::Complete)
}

fn turns(s: &PreparedSample) -> usize {
    1 + s.sample.followups.len()
}

fn unit_key(inst: &MethodInstance, s: &PreparedSample, repeat: usize, turn: usize) -> SampleKey {
    (inst.label.clone(), s.sample.id.clone(), repeat, turn)
}

/// What every work item of a run shares.
struct UnitContext<'a> {
    plan: &'a RunPlan<'a>,
    dir: &'a RunDir,
    done: &'a HashMap<SampleKey, String>,
    clock: &'a dyn Clock,
    device: &'a dyn DeviceSync,
    interrupt: &'a AtomicBool,
    detok: crate::measure::Detokenize<'a>,
}

/// One method's share of a run: its work items and, while it runs, its
/// decoder.
struct Lane<'a> {
    inst: &'a MethodInstance,
    units: Vec<(usize, usize)>,
    total: usize,
    todo: usize,
    n_done: usize,
    decoder: Option<Box<dyn crate::methods::Decoder>>,
}

/// Announces a method, and builds and warms its decoder when it has work
/// left. Returns whether the run was interrupted.
fn start_lane(
    ctx: &UnitContext<'_>,
    lane: &mut Lane<'_>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<bool, RunError> {
    let plan = ctx.plan;
    let inst = lane.inst;
    on_event(Event::MethodStart {
        label: &inst.label,
        todo: lane.todo,
        skipped: lane.total - lane.todo,
    });
    if lane.todo == 0 {
        return Ok(false);
    }
    let models = MethodModels {
        target: plan.target,
        draft: plan.draft,
        head: plan.head,
        consistency: plan.consistency,
        dllm: plan.dllm,
        filter: plan.filter,
        dllm_drafter: plan.dllm_drafter,
        tidar: plan.tidar,
    };
    let mut decoder = (inst.spec().build)(&inst.params, &models)?;
    // Warm-up: the first prompts, never recorded.
    let n_warm = plan.warmup.min(plan.samples.len());
    for s in &plan.samples[..n_warm] {
        let mut rng = ChaCha20Rng::seed_from_u64(sample_seed(plan.seed, "warmup", &s.sample.id, 0));
        let mut probe = Probe::start(ctx.clock, ctx.device, ctx.detok, &plan.rule);
        decoder
            .generate(
                &s.prompt_ids,
                &mut GenContext {
                    probe: &mut probe,
                    rng: &mut rng,
                },
            )
            .map_err(|error| RunError::Decode {
                method: inst.label.clone(),
                sample: format!("{} (warm-up)", s.sample.id),
                error: Box::new(error),
            })?;
        let _ = probe.finish();
        if ctx.interrupt.load(Ordering::SeqCst) {
            return Ok(true);
        }
    }
    on_event(Event::WarmupDone {
        label: &inst.label,
        samples: n_warm,
    });
    lane.decoder = Some(decoder);
    Ok(false)
}

/// Decodes, records and scores the turns of one work item (prompt `i`,
/// `repeat`) that are not done yet. Returns whether the run was
/// interrupted.
fn run_unit(
    ctx: &UnitContext<'_>,
    lane: &mut Lane<'_>,
    i: usize,
    repeat: usize,
    meters: &mut crate::measure::energy::Meters,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<bool, RunError> {
    let plan = ctx.plan;
    let inst = lane.inst;
    let s = &plan.samples[i];
    let Some(decoder) = lane.decoder.as_mut() else {
        return Ok(false);
    };
    // The model's answers so far in this conversation.
    let mut answers: Vec<String> = Vec::new();
    for turn in 0..turns(s) {
        if let Some(text) = ctx.done.get(&unit_key(inst, s, repeat, turn)) {
            answers.push(text.clone());
            continue;
        }
        if ctx.interrupt.load(Ordering::SeqCst) {
            return Ok(true);
        }
        let later;
        let prompt_ids = if turn == 0 {
            &s.prompt_ids
        } else {
            later = later_turn_ids(plan, s, &answers, turn)?;
            &later
        };
        let seed = match turn {
            0 => sample_seed(plan.seed, &inst.label, &s.sample.id, repeat),
            t => sample_seed(
                plan.seed,
                &inst.label,
                &format!("{}\u{0}turn{t}", s.sample.id),
                repeat,
            ),
        };
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut probe = Probe::start(ctx.clock, ctx.device, ctx.detok, &plan.rule)
            .with_interrupt(ctx.interrupt)
            .with_meters(meters);
        decoder
            .generate(
                prompt_ids,
                &mut GenContext {
                    probe: &mut probe,
                    rng: &mut rng,
                },
            )
            .map_err(|error| RunError::Decode {
                method: inst.label.clone(),
                sample: s.sample.id.clone(),
                error: Box::new(error),
            })?;
        if probe.was_interrupted() {
            // The sample in flight is the one a Ctrl-C may lose.
            return Ok(true);
        }
        let measured = probe.finish().map_err(|detail| RunError::Measure {
            method: inst.label.clone(),
            sample: s.sample.id.clone(),
            detail,
        })?;
        check_invariants(&inst.label, &measured, &plan.rule).map_err(RunError::Invariant)?;
        let mut record = make_record(
            inst,
            s,
            repeat,
            turn,
            prompt_ids.len(),
            seed,
            &measured,
            &plan.rule,
            &plan.target.tokenizer,
            plan.threads,
        )?;
        score_record(&mut record, &s.sample, plan)?;
        ctx.dir.append_sample(&record)?;
        answers.push(record.output_text.clone());
        lane.n_done += 1;
        on_event(Event::Sample {
            record: &record,
            done: lane.n_done,
            todo: lane.todo,
        });
    }
    Ok(false)
}

/// Scores a record's text with the suite's scorer.
fn score_record(
    record: &mut SampleRecord,
    sample: &Sample,
    plan: &RunPlan<'_>,
) -> Result<(), RunError> {
    let Some(f) = plan.scorer.score else {
        return Ok(());
    };
    let err = |detail: String| RunError::Score {
        suite: plan.suite_name.clone(),
        sample: sample.id.clone(),
        detail,
    };
    let reference = sample
        .reference
        .as_ref()
        .ok_or_else(|| err("has no reference to score against".into()))?;
    let scores =
        f(plan.score_ctx, &record.output_text, reference).map_err(|e| err(e.to_string()))?;
    record.score = scores.get("score").copied();
    record.scores = scores;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn make_record(
    inst: &MethodInstance,
    s: &PreparedSample,
    repeat: usize,
    turn: usize,
    prompt_tokens: usize,
    seed: u64,
    m: &Measured,
    rule: &StopRule,
    tok: &crate::model::TextTokenizer,
    threads: usize,
) -> Result<SampleRecord, RunError> {
    let n = m.output.len();
    let secs = m.wall_ns as f64 / 1e9;
    let decode_tokens_per_s = match m.ttft_ns {
        Some(t) if n > 1 && m.wall_ns > t => Some((n - 1) as f64 / ((m.wall_ns - t) as f64 / 1e9)),
        _ => None,
    };
    let decode: Vec<_> = m
        .steps
        .iter()
        .filter(|s| s.kind == StepKind::Decode)
        .collect();
    let dec_tokens: usize = decode.iter().map(|s| s.emitted).sum();
    let dec_calls: u64 = decode.iter().map(|s| s.target_calls as u64).sum();
    let dec_ns: u64 = decode.iter().map(|s| s.t_ns).sum();
    let drafts: Vec<u64> = decode.iter().filter_map(|s| s.draft_ns).collect();
    let windows: std::collections::BTreeSet<u32> = decode.iter().filter_map(|s| s.window).collect();
    let windowed = decode.iter().filter(|s| s.window.is_some()).count();
    // Canvas positions against the step that committed them.
    let mut order: (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let mut canvas_forwards = 0u64;
    for (i, s) in m.steps.iter().enumerate() {
        if !s.positions.is_empty() {
            canvas_forwards += s.target_calls as u64;
        }
        for &p in &s.positions {
            order.0.push(p as f64);
            order.1.push(i as f64);
        }
    }
    let mut text = tok.decode(&m.output)?;
    if let Some(cut) = rule
        .stop_strings
        .iter()
        .filter_map(|s| text.find(s.as_str()))
        .min()
    {
        text.truncate(cut);
    }
    // The GPU's energy where measured, else the CPU packages'.
    let joules = m.energy.gpu_j.or(m.energy.cpu_j);
    Ok(SampleRecord {
        method: inst.label.clone(),
        method_id: inst.id.clone(),
        sample_id: s.sample.id.clone(),
        category: s.sample.category.clone(),
        repeat,
        turn,
        seed,
        prompt_tokens,
        new_tokens: n,
        finish_reason: m.finish,
        wall_ns: m.wall_ns,
        ttft_ns: m.ttft_ns,
        tokens_per_s: if secs > 0.0 { n as f64 / secs } else { 0.0 },
        decode_tokens_per_s,
        target_calls: m.steps.iter().map(|s| s.target_calls as u64).sum(),
        draft_calls: m.steps.iter().map(|s| s.draft_calls as u64).sum(),
        mean_accepted_tokens: (dec_calls > 0).then(|| dec_tokens as f64 / dec_calls as f64),
        draft_ms_per_step: (!drafts.is_empty())
            .then(|| drafts.iter().sum::<u64>() as f64 / drafts.len() as f64 / 1e6),
        decode_ms_per_token: (dec_tokens > 0).then(|| dec_ns as f64 / dec_tokens as f64 / 1e6),
        iterations_per_window: (!windows.is_empty())
            .then(|| windowed as f64 / windows.len() as f64),
        canvas_tokens_per_step: (canvas_forwards > 0 && !order.0.is_empty())
            .then(|| order.0.len() as f64 / canvas_forwards as f64),
        decoding_order_tau: crate::stats::kendall_tau_b(&order.0, &order.1),
        gpu_energy_j: m.energy.gpu_j,
        cpu_energy_j: m.energy.cpu_j,
        joules_per_token: joules.and_then(|j| (n > 0).then(|| j / n as f64)),
        mean_watts: joules.and_then(|j| (secs > 0.0).then(|| j / secs)),
        peak_gpu_mem_bytes: m.energy.peak_gpu_mem_bytes,
        peak_rss_bytes: m.energy.peak_rss_bytes,
        energy_errors: m.energy_errors.clone(),
        interference_pct: m
            .energy
            .interference
            .as_ref()
            .and_then(|r| crate::measure::interference::interference_pct(r, m.wall_ns, threads)),
        interference: m.energy.interference.clone(),
        output_ids: m.output.clone(),
        output_text: text,
        score: None,
        scores: Default::default(),
        steps: m.steps.clone(),
    })
}
