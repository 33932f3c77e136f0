//! `pdbench check`: whether a device computes what the CPU computes, and
//! whether every lossless method still emits `ar`'s tokens there.
//!
//! Two parts, per model:
//! - **Parity.** The model is loaded on the reference device (the CPU) and
//!   on the checked one. Logits are compared at every prompt position (one
//!   prefill forward) and at every decode step, teacher-forced along the
//!   reference's greedy tokens so that both devices see the same inputs.
//!   The checked device's argmax at each step is its greedy choice, so
//!   "greedy tokens equal" is exactly "every teacher-forced argmax equals
//!   the reference's".
//! - **Lossless.** Every registered lossless method whose models are at
//!   hand decodes the prompts on the checked device at greedy settings,
//!   against `ar` on the same device (TiDAR: against its own model's `ar`).
//!   The CPU backbone in f32 is row-invariant, so there any difference
//!   fails. Elsewhere (other devices, half precision on the CPU, both
//!   candle's batched kernels) a verify forward of several rows may round
//!   differently from one-row AR steps, so a difference passes only as a
//!   near tie: at the first differing position, `ar`'s own logit margin
//!   between the two tokens lies within the precision's noise bound.
//!   Anything else fails.
//!
//! Tolerances are fixed per precision ([`tolerance_for`]) from its
//! rounding step; the JSON records the measured figures beside them.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Args;
use rand::SeedableRng;
use serde::Serialize;

use crate::cli::{load_companion, load_head};
use crate::measure::{MonotonicClock, NoSync, Probe, StopRule};
use crate::methods::{self, Exactness, GenContext, MethodInstance, MethodModels, Need};
use crate::model::eagle::LoadedHead;
use crate::model::{self, FetchPolicy, Forward, LoadOptions, LoadedModel, LogitsAt};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The device to check: `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The device whose logits count as right.
    #[arg(long, default_value = "cpu")]
    pub reference: String,
    /// Model to check: a zoo name, a fetch name, a .gguf file or a
    /// hub-layout folder. A zoo model brings the zoo's drafters, so every
    /// lossless method is checked.
    #[arg(long, default_value = "toy-target")]
    pub model: String,
    /// Drafter for `sps` (same tokenizer as --model).
    #[arg(long)]
    pub draft: Option<String>,
    /// Compute dtype on the checked device for safetensors models (f32,
    /// bf16, f16; default: what `run` uses there). The reference is f32.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Dequantize GGUF weights to f32 on both devices.
    #[arg(long)]
    pub dequantize: bool,
    /// Prompts to check.
    #[arg(long, default_value_t = 4)]
    pub prompts: usize,
    /// Tokens decoded per prompt (EOS ignored).
    #[arg(long, default_value_t = 32)]
    pub tokens: usize,
    /// Check parity only.
    #[arg(long)]
    pub no_lossless: bool,
    /// Also write the full result as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Fail instead of fetching a registry model that is missing.
    #[arg(long)]
    pub no_fetch: bool,
    /// Instead of a device check, compare --model's greedy choices with a
    /// peer's greedy ids on the same GGUF (the JSON that
    /// scripts/peer/llamacpp-fixtures.sh writes), naming each position
    /// where they part and both margins (exit 1 unless all are near ties).
    #[arg(long, value_name = "FILE")]
    pub peer_tokens: Option<PathBuf>,
}

/// What a precision is held to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tolerance {
    /// `f32`, `bf16`, `f16` or `quantized`.
    pub precision: String,
    /// Largest |device − reference| logit difference in a row, over the
    /// row's largest |reference logit| (at least 1).
    pub max_rel_diff: f64,
    /// Share of rows whose argmax agrees.
    pub min_top1_agreement: f64,
    /// Whether the argmax may differ, and greedy tokens diverge, only at a
    /// near tie: where the reference's own margin between the two tokens
    /// is within `max_rel_diff` of the row's scale.
    pub flips_only_at_near_ties: bool,
    pub why: String,
}

impl Tolerance {
    /// The bound on a lossless method's difference from `ar` on one
    /// device: both compute there, only the kernels' summation order
    /// differs between a wide forward and one-row steps, so an eighth of
    /// the cross-device bound.
    pub fn same_device_tie(&self) -> f64 {
        self.max_rel_diff / 8.0
    }
}

/// The tolerance of a model loaded as `format` (`gguf`, `gguf
/// (dequantized)`, `safetensors`) in `dtype` on the checked device.
///
/// f32 is held to 1e-3 of the logit scale, the argmax and greedy tokens
/// differing only at near ties: only the kernels' summation order differs. Reduced precisions are held to 32
/// units of their rounding step (2^-mantissa bits: f16 3.1e-2, bf16 and
/// 8-bit activations 0.25) and 90% argmax agreement; greedy tokens are
/// reported, since a near tie may flip. A wrong mask, rope or cache gives
/// differences of the order of the logits themselves.
pub fn tolerance_for(format: &str, dtype: DType) -> Tolerance {
    let loose = |precision: &str, mantissa_bits: i32, why: &str| Tolerance {
        precision: precision.into(),
        max_rel_diff: 32.0 * 2f64.powi(-mantissa_bits),
        min_top1_agreement: 0.9,
        flips_only_at_near_ties: false,
        why: why.into(),
    };
    if format == "gguf" {
        return loose(
            "quantized",
            7,
            "both devices quantize activations to 8 bits before the integer dot products, with \
             different kernels and block sums; a device may also dequantize to a float matmul for \
             wide forwards",
        );
    }
    match dtype {
        DType::F16 => loose(
            "f16",
            10,
            "10 mantissa bits in weights and activations against the f32 reference",
        ),
        DType::BF16 => loose(
            "bf16",
            7,
            "7 mantissa bits in weights and activations against the f32 reference",
        ),
        d => Tolerance {
            precision: format!("{d:?}").to_lowercase(),
            max_rel_diff: 1e-3,
            min_top1_agreement: 0.0,
            flips_only_at_near_ties: true,
            why: "same weights and arithmetic; only the summation order of the kernels differs"
                .into(),
        },
    }
}

/// Logit differences over a set of rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LogitStats {
    pub rows: usize,
    pub max_abs_diff: f64,
    pub mean_abs_diff: f64,
    /// The largest of each row's max |diff| / max(1, max |reference|).
    pub max_rel_diff: f64,
    pub top1_agree: usize,
    /// Over rows whose argmax differs: the largest reference margin between
    /// the two tokens, over the row's scale (0 without such rows).
    pub max_flip_margin_rel: f64,
    #[serde(skip)]
    sum_abs: f64,
    #[serde(skip)]
    values: usize,
}

impl LogitStats {
    pub fn add_row(&mut self, reference: &[f32], got: &[f32]) {
        let mut row_max = 0f64;
        let mut scale = 1f64;
        for (&r, &g) in reference.iter().zip(got) {
            let d = (r as f64 - g as f64).abs();
            // NaN anywhere makes the row infinitely wrong.
            let d = if d.is_nan() { f64::INFINITY } else { d };
            row_max = row_max.max(d);
            self.sum_abs += d;
            scale = scale.max((r as f64).abs());
        }
        if reference.len() != got.len() {
            row_max = f64::INFINITY;
        }
        self.values += reference.len();
        self.rows += 1;
        self.max_abs_diff = self.max_abs_diff.max(row_max);
        self.max_rel_diff = self.max_rel_diff.max(row_max / scale);
        self.mean_abs_diff = self.sum_abs / self.values.max(1) as f64;
        let (ra, ga) = (model::argmax(reference), model::argmax(got));
        if reference.len() == got.len() && ra == ga {
            self.top1_agree += 1;
        } else {
            let m = margin(reference, ra, ga) / scale;
            let m = if m.is_nan() { f64::INFINITY } else { m };
            self.max_flip_margin_rel = self.max_flip_margin_rel.max(m);
        }
    }

    pub fn top1_agreement(&self) -> f64 {
        if self.rows == 0 {
            return 1.0;
        }
        self.top1_agree as f64 / self.rows as f64
    }
}

/// Where a device's greedy choice first left the reference's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Divergence {
    pub prompt: usize,
    /// Index among the decoded tokens.
    pub position: usize,
    pub reference_token: u32,
    pub device_token: u32,
    /// The reference's logit of its token minus that of the device's token:
    /// small means a near tie that rounding may flip.
    pub reference_margin: f64,
    /// `reference_margin` over the row's scale (its largest |logit|, at
    /// least 1).
    pub reference_margin_rel: f64,
}

/// A divergence at `position` of `prompt` where the reference chose
/// `reference_token` from `logits` and the other side `device_token`.
fn divergence(
    prompt: usize,
    position: usize,
    logits: &[f32],
    reference_token: u32,
    device_token: u32,
) -> Divergence {
    let m = margin(logits, reference_token, device_token);
    let rel = m / row_scale(logits);
    Divergence {
        prompt,
        position,
        reference_token,
        device_token,
        reference_margin: m,
        reference_margin_rel: if rel.is_nan() { f64::INFINITY } else { rel },
    }
}

/// A row's largest |logit|, at least 1.
fn row_scale(logits: &[f32]) -> f64 {
    logits.iter().fold(1f64, |a, &x| a.max((x as f64).abs()))
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parity {
    pub prompts: usize,
    pub tokens_per_prompt: usize,
    pub prefill: LogitStats,
    pub decode: LogitStats,
    pub greedy_equal_prompts: usize,
    pub divergences: Vec<Divergence>,
    /// Why parity fails; empty when it passes.
    pub failures: Vec<String>,
}

/// `x <= bound`, false for NaN.
fn within(x: f64, bound: f64) -> bool {
    matches!(
        x.partial_cmp(&bound),
        Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
    )
}

/// Why `prefill`, `decode` and the greedy outcome break `tol`; empty when
/// they do not.
pub fn judge_parity(
    tol: &Tolerance,
    prefill: &LogitStats,
    decode: &LogitStats,
    divergences: &[Divergence],
) -> Vec<String> {
    let mut why = Vec::new();
    for (name, s) in [("prefill", prefill), ("decode", decode)] {
        if !within(s.max_rel_diff, tol.max_rel_diff) {
            why.push(format!(
                "{name} logits differ by {:.3e} of their scale (max |diff| {:.3e}); the {} bound is {:.2e}",
                s.max_rel_diff, s.max_abs_diff, tol.precision, tol.max_rel_diff
            ));
        }
    }
    let rows = prefill.rows + decode.rows;
    let agree = prefill.top1_agree + decode.top1_agree;
    let share = if rows == 0 {
        1.0
    } else {
        agree as f64 / rows as f64
    };
    if share < tol.min_top1_agreement {
        why.push(format!(
            "argmax agrees on {agree} of {rows} rows ({:.1}%); the {} bound is {:.0}%",
            100.0 * share,
            tol.precision,
            100.0 * tol.min_top1_agreement
        ));
    }
    if tol.flips_only_at_near_ties {
        let flip = prefill.max_flip_margin_rel.max(decode.max_flip_margin_rel);
        if !within(flip, tol.max_rel_diff) {
            why.push(format!(
                "the argmax differs where the reference's margin is {flip:.3e} of the row's scale, beyond the {} near-tie bound {:.2e}",
                tol.precision, tol.max_rel_diff
            ));
        }
        let beyond: Vec<&Divergence> = divergences
            .iter()
            .filter(|d| !within(d.reference_margin_rel, tol.max_rel_diff))
            .collect();
        if let Some(d) = beyond.first() {
            why.push(format!(
                "greedy tokens differ beyond a near tie in {} prompt(s); first: prompt {} at token {} ({} vs {} on the reference, whose margin there is {:.3e} of the row's scale)",
                beyond.len(),
                d.prompt,
                d.position,
                d.device_token,
                d.reference_token,
                d.reference_margin_rel
            ));
        }
    }
    why
}

/// One lossless method on the checked device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LosslessCheck {
    pub method: String,
    /// The model whose `ar` output it must equal.
    pub ar_model: String,
    pub prompts: usize,
    /// Prompts whose tokens equal the `ar` method's.
    pub equal_prompts: usize,
    /// Whether the backbone is row-invariant here, so that every token
    /// must be `ar`'s bit for bit (no near ties).
    pub row_invariant: bool,
    /// Positions where the method's token is not `ar`'s argmax given the
    /// method's own earlier tokens, but within the same-device near-tie
    /// bound (never where the backbone is row-invariant).
    pub near_ties: Vec<Divergence>,
    pub tokens_per_step: f64,
    pub failures: Vec<String>,
}

/// One model's check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelCheck {
    pub model: String,
    pub format: String,
    pub dtype: String,
    pub tolerance: Tolerance,
    pub parity: Parity,
    pub lossless: Vec<LosslessCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    pub device: String,
    pub reference: String,
    pub pdbench_version: String,
    pub check: ModelCheck,
    pub passed: bool,
}

impl ModelCheck {
    pub fn passed(&self) -> bool {
        self.parity.failures.is_empty() && self.lossless.iter().all(|l| l.failures.is_empty())
    }
}

/// The logits of one row as f32 values on the host.
fn row(t: &candle_core::Tensor, i: usize) -> Result<Vec<f32>> {
    use candle_core::IndexOp;
    Ok(t.i(i)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// Prefill logits at every prompt position, then `n` single-token steps
/// fed `feed` (or, when `feed` is empty, the model's own argmax); returns
/// (prefill rows, the logits that chose each decoded token, the tokens).
type Trace = (Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<u32>);

fn trace(m: &LoadedModel, prompt: &[u32], n: usize, feed: &[u32]) -> Result<Trace> {
    let mut cache = m.model.new_cache(prompt.len() + n + 1)?;
    let out = m.model.forward(
        &mut cache,
        &Forward::causal(prompt, 0).with_logits(LogitsAt::All),
    )?;
    let logits = out.logits.context("a forward that asked for logits")?;
    // One copy to the host for all rows, not one per row.
    let prefill: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    let mut steps = vec![prefill.last().cloned().unwrap_or_default()];
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let own = model::argmax(&steps[i]);
        tokens.push(own);
        if i + 1 == n {
            break;
        }
        let tok = feed.get(i).copied().unwrap_or(own);
        let pos = cache.len();
        let out = m.model.forward(&mut cache, &Forward::causal(&[tok], pos))?;
        steps.push(row(out.logits.as_ref().context("last logits")?, 0)?);
    }
    Ok((prefill, steps, tokens))
}

/// Compares `device` against `reference` on `prompts`.
pub fn parity(
    reference: &LoadedModel,
    device: &LoadedModel,
    tol: &Tolerance,
    prompts: &[Vec<u32>],
    n: usize,
) -> Result<Parity> {
    let mut prefill = LogitStats::default();
    let mut decode = LogitStats::default();
    let mut divergences = Vec::new();
    let mut equal = 0;
    for (p, prompt) in prompts.iter().enumerate() {
        let (r_pre, r_steps, r_tokens) = trace(reference, prompt, n, &[])?;
        let (d_pre, d_steps, d_tokens) = trace(device, prompt, n, &r_tokens)?;
        for (r, d) in r_pre.iter().zip(&d_pre) {
            prefill.add_row(r, d);
        }
        // The last prefill row is also decode step 0's; count it once.
        for (r, d) in r_steps.iter().zip(&d_steps).skip(1) {
            decode.add_row(r, d);
        }
        match crate::audit::first_difference(&r_tokens, &d_tokens) {
            None => equal += 1,
            Some(i) => divergences.push(divergence(p, i, &r_steps[i], r_tokens[i], d_tokens[i])),
        }
    }
    let failures = judge_parity(tol, &prefill, &decode, &divergences);
    Ok(Parity {
        prompts: prompts.len(),
        tokens_per_prompt: n,
        prefill,
        decode,
        greedy_equal_prompts: equal,
        divergences,
        failures,
    })
}

fn margin(logits: &[f32], a: u32, b: u32) -> f64 {
    let at = |t: u32| logits.get(t as usize).copied().unwrap_or(f32::NAN) as f64;
    at(a) - at(b)
}

/// Decodes `n` tokens of `prompt` with `inst`, EOS ignored.
pub fn decode(
    inst: &MethodInstance,
    models: &MethodModels<'_>,
    prompt: &[u32],
    n: usize,
    seed: u64,
) -> Result<crate::measure::Measured> {
    let mut dec = (inst.spec().build)(&inst.params, models)
        .with_context(|| format!("building method `{}`", inst.label))?;
    let rule = StopRule {
        max_new_tokens: n,
        eos_ids: vec![],
        stop_strings: vec![],
    };
    let clock = MonotonicClock::new();
    let detok = |_: &[u32]| String::new();
    let mut probe = Probe::start(&clock, &NoSync, &detok, &rule);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    dec.generate(
        prompt,
        &mut GenContext {
            probe: &mut probe,
            rng: &mut rng,
        },
    )
    .with_context(|| {
        format!(
            "method `{}` decoding prompt of {} tokens",
            inst.label,
            prompt.len()
        )
    })?;
    let measured = probe.finish().map_err(anyhow::Error::msg)?;
    crate::measure::check_invariants(&inst.label, &measured, &rule).map_err(anyhow::Error::msg)?;
    Ok(measured)
}

/// The models the lossless part builds methods with.
pub struct Companions {
    pub draft: Option<LoadedModel>,
    pub head: Option<LoadedHead>,
    pub dllm: Option<LoadedModel>,
    pub dllm_drafter: Option<LoadedModel>,
    pub tidar: Option<LoadedModel>,
}

impl Companions {
    fn has(&self, need: Need) -> bool {
        match need {
            Need::DraftModel => self.draft.is_some(),
            Need::DraftHead => self.head.is_some(),
            Need::DiffusionModel => self.dllm.is_some(),
            Need::DiffusionDrafter => self.dllm_drafter.is_some(),
            Need::TidarModel => self.tidar.is_some(),
            // Lossy methods only.
            Need::ConsistencyModel | Need::Filter => false,
        }
    }

    fn models<'a>(&'a self, target: &'a LoadedModel) -> MethodModels<'a> {
        MethodModels {
            target,
            draft: self.draft.as_ref(),
            head: self.head.as_ref(),
            consistency: None,
            dllm: self.dllm.as_ref(),
            filter: None,
            dllm_drafter: self.dllm_drafter.as_ref(),
            tidar: self.tidar.as_ref(),
        }
    }
}

/// Every lossless method whose models are at hand, against `ar` on the
/// same device: `ar` is teacher-forced along the method's own output, and
/// at every position the method's token must be `ar`'s argmax. Where the
/// backbone is row-invariant that is all; elsewhere a token
/// within the same-device near-tie bound of `ar`'s is recorded and passes.
/// A method that fails to decode is a failure of its own, not of the check.
pub fn lossless(
    target: &LoadedModel,
    companions: &Companions,
    tol: &Tolerance,
    prompts: &[Vec<u32>],
    n: usize,
) -> Result<Vec<LosslessCheck>> {
    let ar = MethodInstance::new("ar", None, &serde_json::json!({}))?;
    let ar_outputs = |m: &LoadedModel| -> Result<Vec<Vec<u32>>> {
        let models = MethodModels::target_only(m);
        prompts
            .iter()
            .enumerate()
            .map(|(p, prompt)| Ok(decode(&ar, &models, prompt, n, p as u64)?.output))
            .collect()
    };
    let target_ar = ar_outputs(target)?;
    let tidar_ar = companions.tidar.as_ref().map(ar_outputs).transpose()?;
    let models = companions.models(target);
    let mut out = Vec::new();
    for spec in methods::METHODS {
        if spec.exactness != Exactness::Lossless || spec.id == "ar" {
            continue;
        }
        if !spec.needs.iter().all(|n| companions.has(*n)) {
            continue;
        }
        let inst = MethodInstance::new(spec.id, None, &serde_json::json!({}))?;
        // TiDAR decodes with its own model: its AR output is the bar.
        let (ar_model, want) = match (&companions.tidar, &tidar_ar) {
            (Some(t), Some(w)) if spec.needs.contains(&Need::TidarModel) => (t, w),
            _ => (target, &target_ar),
        };
        let exact = ar_model.model.row_invariant();
        let (mut equal, mut near_ties, mut failures) = (0, Vec::new(), Vec::new());
        let (mut steps, mut tokens) = (0usize, 0usize);
        for (p, prompt) in prompts.iter().enumerate() {
            let got = match decode(&inst, &models, prompt, n, p as u64) {
                Ok(m) => m,
                Err(e) => {
                    failures.push(format!("prompt {p}: {e:#}"));
                    continue;
                }
            };
            steps += got.steps.len();
            tokens += got.output.len();
            if got.output == want[p] {
                equal += 1;
            }
            let (_, ar_steps, _) = trace(ar_model, prompt, got.output.len(), &got.output)?;
            for (i, (&tok, logits)) in got.output.iter().zip(&ar_steps).enumerate() {
                let best = model::argmax(logits);
                if tok == best {
                    continue;
                }
                let d = divergence(p, i, logits, best, tok);
                if near_tie(d.reference_margin_rel, tol, exact) {
                    near_ties.push(d);
                } else {
                    failures.push(format!(
                        "prompt {p}: token {i} is {tok} where ar's argmax after the same tokens is {best}; ar's margin there is {:.3e} of the row's scale{}",
                        d.reference_margin_rel,
                        if exact {
                            String::from(" (the backbone is row-invariant here: any difference is a bug)")
                        } else {
                            format!(", beyond the {} same-device bound {:.2e}", tol.precision, tol.same_device_tie())
                        }
                    ));
                    // Later tokens follow from this one; one report a prompt.
                    break;
                }
            }
        }
        out.push(LosslessCheck {
            method: spec.id.to_string(),
            ar_model: ar_model.info.label.clone(),
            prompts: prompts.len(),
            equal_prompts: equal,
            row_invariant: exact,
            near_ties,
            tokens_per_step: tokens as f64 / steps.max(1) as f64,
            failures,
        });
    }
    Ok(out)
}

/// Whether a lossless method's token, where `ar`'s margin over it is
/// `margin_rel` of the row's scale, is rounding at a near tie on one
/// device. Never where the backbone is `exact` (row-invariant).
pub fn near_tie(margin_rel: f64, tol: &Tolerance, exact: bool) -> bool {
    !exact && margin_rel >= 0.0 && margin_rel <= tol.same_device_tie()
}

/// Prompts for `m`: the toy generator's test items for a zoo model, fixed
/// questions (in the chat template where the model has one) otherwise.
pub fn prompts_for(m: &LoadedModel, zoo: bool, count: usize) -> Result<Vec<Vec<u32>>> {
    let texts: Vec<String> = if zoo {
        let p: crate::toy::ToyParams = serde_json::from_value(serde_json::json!({
            "split": "test",
            "per_task": count.div_ceil(crate::toy::TASKS.len()).max(1),
            "seed": 7
        }))?;
        let mut items: Vec<(usize, usize, String)> = crate::toy::generate(&p)?
            .into_iter()
            .enumerate()
            .map(|(i, it)| (i % p.per_task, i / p.per_task, it.prompt))
            .collect();
        // Spread over the tasks: item k of every task before item k + 1.
        items.sort();
        items.into_iter().map(|(_, _, t)| t).take(count).collect()
    } else {
        let questions = [
            "Write a Python function that checks whether a number is prime.",
            "Explain in three sentences why the sky is blue.",
            "List five fruits and one fact about each.",
            "A train travels 120 km in 1.5 hours. What is its average speed?",
            "Translate 'good morning, how are you?' into French and Spanish.",
            "Summarise the rules of chess in one paragraph.",
        ];
        let mut out = Vec::new();
        for q in questions.iter().cycle().take(count) {
            out.push(match m.tokenizer.chat_template.as_deref() {
                Some(tpl) => {
                    model::chat::render(tpl, &[model::chat::Message::new("user", q)], "", "", true)?
                }
                None => q.to_string(),
            });
        }
        out
    };
    texts.iter().map(|t| Ok(m.tokenizer.encode(t)?)).collect()
}

fn load(
    spec: &str,
    store: &Store,
    policy: FetchPolicy,
    opts: &LoadOptions,
    what: &str,
) -> Result<LoadedModel> {
    model::load(spec, store, policy, opts, &mut |s| eprintln!("{s}"))
        .with_context(|| format!("loading {what} {spec} on {}", device_name(&opts.device)))
}

fn device_name(d: &candle_core::Device) -> String {
    match d {
        candle_core::Device::Cpu => "cpu".into(),
        other => format!("{other:?}"),
    }
}

pub fn run(a: CheckArgs) -> Result<i32> {
    crate::env::set_threads(a.threads);
    crate::measure::kernels::tune();
    let store = Store::from_env();
    let policy = if a.no_fetch {
        FetchPolicy::Never
    } else {
        FetchPolicy::Auto
    };
    if a.prompts == 0 || a.tokens == 0 {
        bail!("--prompts and --tokens must be at least 1");
    }
    let dev_spec = crate::env::DeviceSpec::parse(&a.device).context("--device")?;
    let ref_spec = crate::env::DeviceSpec::parse(&a.reference).context("--reference")?;
    let dtype = a
        .dtype
        .as_deref()
        .map(crate::cli::parse_dtype)
        .transpose()?;
    let ref_opts = LoadOptions {
        device: ref_spec.open()?,
        dtype: Some(DType::F32),
        tokenizer: None,
        dequantize: a.dequantize,
    };
    let dev_opts = LoadOptions {
        device: dev_spec.open()?,
        dtype,
        tokenizer: None,
        dequantize: a.dequantize,
    };
    if let Some(file) = &a.peer_tokens {
        return peer_check(&a, file, &store, policy, &dev_opts);
    }
    let reference = load(&a.model, &store, policy, &ref_opts, "--model")?;
    let target = load(&a.model, &store, policy, &dev_opts, "--model")?;
    let zoo = model::source::zoo_model(&a.model).is_some();
    let prompts = prompts_for(&target, zoo, a.prompts)?;
    let ctx = target.info.config.max_position_embeddings;
    if let Some(p) = prompts.iter().find(|p| p.len() + a.tokens > ctx) {
        bail!(
            "--tokens {}: a prompt of {} tokens plus the tokens to decode exceeds {}'s context of {ctx}",
            a.tokens,
            p.len(),
            a.model
        );
    }
    let tol = tolerance_for(&target.info.format, target.model.dtype());
    eprintln!(
        "check: {} on {} against {} ({}, {} tolerance)",
        a.model, a.device, a.reference, target.info.format, tol.precision
    );
    let parity = parity(&reference, &target, &tol, &prompts, a.tokens)?;
    drop(reference);
    let lossless = if a.no_lossless {
        vec![]
    } else {
        let zoo_companion = |name: &'static str| {
            zoo.then_some(name)
                .filter(|n| model::source::zoo_model(n).is_some())
        };
        let draft = match a.draft.as_deref().or_else(|| zoo_companion("toy-draft")) {
            Some(d) => Some(load_companion(
                &store, "--draft", d, &target, &dev_opts, policy,
            )?),
            None => None,
        };
        let head = zoo_companion("toy-eagle")
            .map(|h| load_head(h, &target, &dev_opts))
            .transpose()?;
        let comp = |name: &'static str, flag: &str| -> Result<Option<LoadedModel>> {
            zoo_companion(name)
                .map(|n| load_companion(&store, flag, n, &target, &dev_opts, policy))
                .transpose()
        };
        let companions = Companions {
            draft,
            head,
            dllm: comp("toy-dllm", "--dllm")?,
            dllm_drafter: comp("toy-deer", "--dllm-drafter")?,
            tidar: comp("toy-tidar", "--tidar")?,
        };
        lossless(&target, &companions, &tol, &prompts, a.tokens)?
    };
    let check = ModelCheck {
        model: a.model.clone(),
        format: target.info.format.clone(),
        dtype: target.info.dtype.clone(),
        tolerance: tol,
        parity,
        lossless,
    };
    let report = CheckReport {
        device: dev_spec.name(),
        reference: ref_spec.name(),
        pdbench_version: env!("CARGO_PKG_VERSION").into(),
        passed: check.passed(),
        check,
    };
    print!("{}", markdown(&report));
    if let Some(out) = &a.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--out: creating {}", dir.display()))?;
        }
        crate::results::write_atomic(out, serde_json::to_string_pretty(&report)?.as_bytes())
            .with_context(|| format!("--out: writing {}", out.display()))?;
    }
    Ok(i32::from(!report.passed))
}

/// `check --peer-tokens`: `a.model` beside a peer's greedy ids.
fn peer_check(
    a: &CheckArgs,
    file: &std::path::Path,
    store: &Store,
    policy: FetchPolicy,
    opts: &LoadOptions,
) -> Result<i32> {
    let peer = crate::peer::PeerTokens::read(file).context("--peer-tokens")?;
    let m = load(&a.model, store, policy, opts, "--model")?;
    if !m.info.files.iter().any(|f| f.sha256 == peer.gguf_sha256) {
        bail!(
            "--peer-tokens {}: made on a file with sha256 {}, which is not --model {}'s",
            file.display(),
            peer.gguf_sha256,
            a.model
        );
    }
    let got = crate::peer::compare(&m, &peer)
        .with_context(|| format!("--peer-tokens {}", file.display()))?;
    println!(
        "check: {} beside {} ({}), near tie = both margins <= {} logits\n{}",
        a.model,
        peer.peer,
        peer.cpu_model,
        crate::peer::NEAR_TIE_LOGITS,
        got.describe()
    );
    if let Some(out) = &a.out {
        crate::results::write_atomic(out, serde_json::to_string_pretty(&got)?.as_bytes())
            .with_context(|| format!("--out: writing {}", out.display()))?;
    }
    Ok(i32::from(!got.agrees()))
}

/// The check as Markdown: the tolerance, parity figures and one row per
/// lossless method.
pub fn markdown(r: &CheckReport) -> String {
    let c = &r.check;
    let p = &c.parity;
    let t = &c.tolerance;
    let mut s = format!(
        "# pdbench check: {} on {} against {}\n\n{} ({}), {} tolerance: max relative logit difference {:.2e}, {}; lossless methods within {:.2e} of ar's margin where not bit-exact. Why: {}.\n\n",
        c.model,
        r.device,
        r.reference,
        c.format,
        c.dtype,
        t.precision,
        t.max_rel_diff,
        if t.flips_only_at_near_ties {
            "argmax and greedy tokens differing only at near ties".to_string()
        } else {
            format!("argmax agreement ≥ {:.0}%, greedy tokens reported", 100.0 * t.min_top1_agreement)
        },
        t.same_device_tie(),
        t.why
    );
    s.push_str("| logits | rows | max abs diff | mean abs diff | max rel diff | argmax agrees |\n|---|---:|---:|---:|---:|---:|\n");
    for (name, st) in [("prefill", &p.prefill), ("decode", &p.decode)] {
        s.push_str(&format!(
            "| {name} | {} | {:.3e} | {:.3e} | {:.3e} | {:.1}% |\n",
            st.rows,
            st.max_abs_diff,
            st.mean_abs_diff,
            st.max_rel_diff,
            100.0 * st.top1_agreement()
        ));
    }
    s.push_str(&format!(
        "\nGreedy tokens equal on {} of {} prompts ({} tokens each).\n",
        p.greedy_equal_prompts, p.prompts, p.tokens_per_prompt
    ));
    for d in &p.divergences {
        s.push_str(&format!(
            "- prompt {}: token {} is {} here, {} on the reference (reference margin {:.3e})\n",
            d.prompt, d.position, d.device_token, d.reference_token, d.reference_margin
        ));
    }
    if !c.lossless.is_empty() {
        s.push_str(
            "\n| method | equals ar of | prompts equal | near ties | tokens/step | verdict |\n|---|---|---:|---:|---:|---|\n",
        );
        for l in &c.lossless {
            s.push_str(&format!(
                "| {} | {} | {}/{} | {} | {:.2} | {} |\n",
                l.method,
                l.ar_model,
                l.equal_prompts,
                l.prompts,
                l.near_ties.len(),
                l.tokens_per_step,
                if l.failures.is_empty() {
                    "pass"
                } else {
                    "FAIL"
                }
            ));
        }
    }
    let failures: Vec<String> = p
        .failures
        .iter()
        .map(|f| format!("parity: {f}"))
        .chain(
            c.lossless
                .iter()
                .flat_map(|l| l.failures.iter().map(move |f| format!("{}: {f}", l.method))),
        )
        .collect();
    if failures.is_empty() {
        s.push_str("\nPASS\n");
    } else {
        s.push_str("\nFAIL\n");
        for f in failures {
            s.push_str(&format!("- {f}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(pairs: &[(&[f32], &[f32])]) -> LogitStats {
        let mut s = LogitStats::default();
        for (r, g) in pairs {
            s.add_row(r, g);
        }
        s
    }

    #[test]
    fn identical_rows_pass_every_tolerance() {
        let s = stats(&[(&[1.0, 5.0, -2.0], &[1.0, 5.0, -2.0])]);
        assert_eq!(s.max_abs_diff, 0.0);
        assert_eq!(s.top1_agreement(), 1.0);
        for tol in [
            tolerance_for("safetensors", DType::F32),
            tolerance_for("gguf", DType::F32),
            tolerance_for("safetensors", DType::BF16),
        ] {
            assert!(judge_parity(&tol, &s, &s, &[]).is_empty());
        }
    }

    #[test]
    fn differences_are_relative_to_the_rows_scale() {
        // 0.02 on a row whose largest logit is 20: 1e-3 of its scale.
        let s = stats(&[(&[20.0, 1.0], &[20.02, 1.0])]);
        assert!((s.max_abs_diff - 0.02).abs() < 1e-5);
        assert!((s.max_rel_diff - 1e-3).abs() < 1e-6);
        // Rows with small logits are held to an absolute bound (scale 1).
        let small = stats(&[(&[0.1, 0.2], &[0.1, 0.2005])]);
        assert!((small.max_rel_diff - 5e-4).abs() < 1e-6);
    }

    #[test]
    fn f32_fails_what_bf16_allows() {
        let pre = stats(&[(&[10.0, 1.0, 0.0], &[10.1, 1.0, 0.0])]);
        let f32 = tolerance_for("safetensors", DType::F32);
        let bf16 = tolerance_for("safetensors", DType::BF16);
        let why = judge_parity(&f32, &pre, &LogitStats::default(), &[]);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].contains("prefill") && why[0].contains("f32"),
            "{why:?}"
        );
        assert!(judge_parity(&bf16, &pre, &LogitStats::default(), &[]).is_empty());
    }

    #[test]
    fn f32_allows_flips_only_at_near_ties() {
        let f32 = tolerance_for("safetensors", DType::F32);
        // A tie at scale 10 flipped by 2e-4: within 1e-3 of the scale.
        let tie = stats(&[(&[10.0, 10.0002], &[10.0002, 10.0])]);
        assert_eq!(tie.top1_agree, 0);
        let d = divergence(2, 5, &[10.0, 10.0002], 1, 0);
        assert!((d.reference_margin_rel - 2e-5).abs() < 1e-6, "{d:?}");
        assert!(judge_parity(&f32, &tie, &LogitStats::default(), &[d]).is_empty());
        // A margin of 0.1 of the scale is no tie: the argmax may not flip,
        // and greedy tokens may not diverge there.
        let wide = stats(&[(&[10.0, 11.0], &[11.5, 10.9])]);
        let d = divergence(2, 5, &[10.0, 11.0], 1, 0);
        let why = judge_parity(
            &f32,
            &wide,
            &LogitStats::default(),
            std::slice::from_ref(&d),
        );
        assert!(why.iter().any(|w| w.contains("argmax differs")), "{why:?}");
        assert!(
            why.iter().any(|w| w.contains("prompt 2 at token 5")),
            "{why:?}"
        );
        // Quantized weights report a divergence but do not fail on it.
        let q = tolerance_for("gguf", DType::F32);
        let ok = stats(&[(&[3.0, 1.0], &[3.01, 1.0])]);
        assert!(judge_parity(&q, &ok, &ok, &[d]).is_empty());
        // But their argmax must mostly agree.
        let flips = stats(&[(&[3.0, 2.9], &[2.9, 3.0]), (&[1.0, 0.0], &[1.0, 0.0])]);
        let why = judge_parity(&q, &flips, &LogitStats::default(), &[]);
        assert!(
            why.iter().any(|w| w.contains("argmax agrees on 1 of 2")),
            "{why:?}"
        );
    }

    #[test]
    fn nan_and_shape_mismatches_fail() {
        let nan = stats(&[(&[1.0, 2.0], &[1.0, f32::NAN])]);
        assert!(nan.max_rel_diff.is_infinite());
        let short = stats(&[(&[1.0, 2.0], &[1.0])]);
        assert!(short.max_rel_diff.is_infinite());
        let q = tolerance_for("gguf", DType::F32);
        assert!(!judge_parity(&q, &nan, &short, &[]).is_empty());
    }

    #[test]
    fn only_small_margins_off_a_row_invariant_backbone_are_near_ties() {
        let f32 = tolerance_for("safetensors", DType::F32);
        // The same-device bound is an eighth of the cross-device one.
        assert_eq!(f32.same_device_tie(), 1.25e-4);
        assert!(near_tie(1e-4, &f32, false));
        assert!(!near_tie(2e-4, &f32, false));
        // A row-invariant backbone: no difference is a tie there.
        assert!(!near_tie(0.0, &f32, true));
        // A NaN margin (a token out of range) is never a tie.
        assert!(!near_tie(f64::NAN, &f32, false));
        let bf16 = tolerance_for("safetensors", DType::BF16);
        assert!(near_tie(0.03, &bf16, false));
        assert!(!near_tie(0.05, &bf16, false));
    }

    #[test]
    fn dequantized_gguf_is_held_to_f32() {
        let bound = |f: &str, d| tolerance_for(f, d).max_rel_diff;
        assert_eq!(bound("safetensors", DType::F32), 1e-3);
        assert_eq!(bound("safetensors", DType::F16), 32.0 / 1024.0);
        assert_eq!(bound("safetensors", DType::BF16), 0.25);
        assert_eq!(bound("gguf", DType::F32), 0.25);
        assert_eq!(
            tolerance_for("gguf (dequantized)", DType::F32).precision,
            "f32"
        );
        assert_eq!(tolerance_for("gguf", DType::F32).precision, "quantized");
        assert_eq!(tolerance_for("safetensors", DType::F16).precision, "f16");
    }
}
