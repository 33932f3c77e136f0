//! The numbers of a report: per method (and per method × category) rows
//! from a run's samples, and the tables written from them.

use std::collections::{BTreeMap, BTreeSet};

use polars::prelude::*;

use crate::measure::{StepKind, StepRecord};
use crate::results::{Manifest, SampleRecord};
use crate::stats;

/// Bootstrap resamples of the report's intervals.
pub const BOOTSTRAP: usize = 2000;

/// Draft positions shown in the acceptance tables and CSV columns.
pub const POSITIONS: usize = 8;

/// One row of the summary: a method in a run, over all its samples or
/// over one category's.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodRow {
    pub run_id: String,
    pub suite: String,
    pub method: String,
    /// `None`: every category.
    pub category: Option<String>,
    pub samples: usize,
    pub tokens: u64,
    pub tokens_per_s_median: f64,
    pub tokens_per_s_q25: f64,
    pub tokens_per_s_q75: f64,
    pub ttft_ms_median: Option<f64>,
    pub mean_accepted_tokens: Option<f64>,
    /// Mean of the samples' drafting time per decode step, ms.
    pub draft_ms_per_step: Option<f64>,
    /// Mean of the samples' decode wall time per accepted (emitted) token, ms.
    pub decode_ms_per_token: Option<f64>,
    /// Mean over prompts of this method's tokens/s over `ar`'s on the same
    /// prompt and repeat.
    pub speedup_vs_ar: Option<f64>,
    /// Its bootstrap 95% interval over the paired prompts.
    pub speedup_ci: Option<(f64, f64)>,
    pub paired: usize,
    /// Mean of the suite scorer's `score` × 100 over scored samples.
    pub score_mean_x100: Option<f64>,
    /// Its bootstrap 95% interval over the samples.
    pub score_ci: Option<(f64, f64)>,
    /// Lossless methods at greedy settings: the share of samples whose
    /// tokens equal `ar`'s in the same run, percent.
    pub lossless_pct: Option<f64>,
    /// Mean forwards (target calls) per sample.
    pub forwards_per_sample: f64,
    /// Diffusion LMs: mean canvas positions committed per forward.
    pub canvas_tokens_per_step: Option<f64>,
    /// Diffusion LMs: mean Kendall τ-b of the decoding order against left
    /// to right.
    pub decoding_order_tau: Option<f64>,
    /// Mean energy per generated token, J, and mean power, W, where the
    /// run had an energy source.
    pub joules_per_token: Option<f64>,
    pub mean_watts: Option<f64>,
    /// Largest peak resident memory and GPU memory of the samples, bytes.
    pub peak_rss_bytes: Option<f64>,
    pub peak_gpu_mem_bytes: Option<f64>,
    /// Percent of the method's thread time the host took (run-queue delay
    /// and steal), over its samples; absent without readings.
    pub interference_pct: Option<f64>,
    /// What the decode steps add up to.
    pub steps: StepStats,
}

/// Per-step figures of a group of samples, from their step records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepStats {
    /// Position k (index k−1): decode steps whose draft reached k tokens
    /// with the k−1 before all accepted.
    pub reached: Vec<u64>,
    /// Of those, the steps that accepted position k too.
    pub accepted: Vec<u64>,
    /// Decode steps by tokens emitted per target forward (index n: steps
    /// that emitted n tokens from one forward).
    pub tokens_per_forward: Vec<u64>,
    pub decode_steps: u64,
    /// Decode step wall time, and the part before the draft was marked
    /// done (0 for methods without a drafting phase).
    pub step_ns: u64,
    pub draft_ns: u64,
}

impl StepStats {
    pub fn add(&mut self, steps: &[StepRecord]) {
        for s in steps.iter().filter(|s| s.kind == StepKind::Decode) {
            self.decode_steps += 1;
            self.step_ns += s.t_ns;
            self.draft_ns += s.draft_ns.unwrap_or(0).min(s.t_ns);
            // Steps of one forward; multi-forward steps (none today) would
            // blur the histogram, so they are left out of it.
            if s.target_calls == 1 {
                if self.tokens_per_forward.len() <= s.emitted {
                    self.tokens_per_forward.resize(s.emitted + 1, 0);
                }
                self.tokens_per_forward[s.emitted] += 1;
            }
            let depth = s.draft_depth.unwrap_or(s.proposed);
            let reach = depth.min(s.accepted + 1);
            if self.reached.len() < depth {
                self.reached.resize(depth, 0);
                self.accepted.resize(depth, 0);
            }
            for k in 0..reach {
                self.reached[k] += 1;
                if k < s.accepted {
                    self.accepted[k] += 1;
                }
            }
        }
    }

    /// Per draft position, the share of steps that reached it and
    /// accepted it (`None` where no step reached it).
    pub fn acceptance_by_position(&self) -> Vec<Option<f64>> {
        self.reached
            .iter()
            .zip(&self.accepted)
            .map(|(&r, &a)| (r > 0).then(|| a as f64 / r as f64))
            .collect()
    }

    pub fn draft_ms_per_step(&self) -> Option<f64> {
        (self.decode_steps > 0).then(|| self.draft_ns as f64 / self.decode_steps as f64 / 1e6)
    }

    pub fn verify_ms_per_step(&self) -> Option<f64> {
        (self.decode_steps > 0)
            .then(|| (self.step_ns - self.draft_ns) as f64 / self.decode_steps as f64 / 1e6)
    }

    /// Whether the method drafts at all (so that acceptance means something).
    pub fn drafts(&self) -> bool {
        self.reached.first().is_some_and(|&r| r > 0)
    }
}

/// The scalar columns of a run's samples, read once.
pub(super) struct Cols {
    pub(super) method: Vec<String>,
    sample: Vec<String>,
    pub(super) category: Vec<String>,
    repeat: Vec<Option<f64>>,
    turn: Vec<Option<f64>>,
    pub(super) tps: Vec<Option<f64>>,
    ttft: Vec<Option<f64>>,
    tau: Vec<Option<f64>>,
    draft_ms: Vec<Option<f64>>,
    ms_per_token: Vec<Option<f64>>,
    pub(super) tokens: Vec<Option<f64>>,
    pub(super) score: Vec<Option<f64>>,
    pub(super) calls: Vec<Option<f64>>,
    canvas: Vec<Option<f64>>,
    order_tau: Vec<Option<f64>>,
    jpt: Vec<Option<f64>>,
    watts: Vec<Option<f64>>,
    rss: Vec<Option<f64>>,
    gpu_mem: Vec<Option<f64>>,
}

pub(super) type Key = (String, i64, i64);

fn f64s(df: &DataFrame, name: &str) -> Result<Vec<Option<f64>>, PolarsError> {
    let c = df.column(name)?.cast(&DataType::Float64)?;
    Ok(c.f64()?.into_iter().collect())
}

fn strs(df: &DataFrame, name: &str, missing: &str) -> Result<Vec<String>, PolarsError> {
    Ok(df
        .column(name)?
        .str()?
        .into_iter()
        .map(|s| s.unwrap_or(missing).to_string())
        .collect())
}

impl Cols {
    pub(super) fn read(df: &DataFrame) -> Result<Self, PolarsError> {
        Ok(Self {
            method: strs(df, "method", "")?,
            sample: strs(df, "sample_id", "")?,
            category: strs(df, "category", "–")?,
            repeat: f64s(df, "repeat")?,
            turn: f64s(df, "turn")?,
            tps: f64s(df, "tokens_per_s")?,
            ttft: f64s(df, "ttft_ns")?,
            tau: f64s(df, "mean_accepted_tokens")?,
            draft_ms: f64s(df, "draft_ms_per_step")?,
            ms_per_token: f64s(df, "decode_ms_per_token")?,
            tokens: f64s(df, "new_tokens")?,
            score: f64s(df, "score")?,
            calls: f64s(df, "target_calls")?,
            canvas: f64s(df, "canvas_tokens_per_step")?,
            order_tau: f64s(df, "decoding_order_tau")?,
            jpt: f64s(df, "joules_per_token")?,
            watts: f64s(df, "mean_watts")?,
            rss: f64s(df, "peak_rss_bytes")?,
            gpu_mem: f64s(df, "peak_gpu_mem_bytes")?,
        })
    }

    pub(super) fn key(&self, i: usize) -> Key {
        (
            self.sample[i].clone(),
            self.repeat[i].unwrap_or(0.0) as i64,
            self.turn[i].unwrap_or(0.0) as i64,
        )
    }

    /// Row `i`'s tokens/s over the baseline's on the same prompt; `None`
    /// without one, or where the ratio is not positive and finite (a
    /// zero-time sample carries no speed).
    pub(super) fn speedup(&self, baseline: &BTreeMap<Key, f64>, i: usize) -> Option<f64> {
        let r = self.tps[i]? / baseline.get(&self.key(i))?;
        (r > 0.0 && r.is_finite()).then_some(r)
    }

    fn of(&self, rows: &[usize], col: &[Option<f64>]) -> Vec<f64> {
        rows.iter().filter_map(|&i| col[i]).collect()
    }

    /// The baseline's tokens/s per prompt (sample, repeat, turn): what
    /// speedups are paired with. Empty without a baseline.
    pub(super) fn baseline_tokens_per_s(&self, baseline: Option<&str>) -> BTreeMap<Key, f64> {
        (0..self.method.len())
            .filter(|&i| Some(self.method[i].as_str()) == baseline)
            .filter_map(|i| Some((self.key(i), self.tps[i]?)))
            .collect()
    }
}

/// Method labels, the baseline first, then by name.
fn ordered<'a>(labels: impl Iterator<Item = &'a str>, baseline: Option<&str>) -> Vec<&'a str> {
    let mut names: Vec<&str> = labels.collect::<BTreeSet<_>>().into_iter().collect();
    names.sort_by_key(|n| (Some(*n) != baseline, n.to_string()));
    names
}

/// Rows of one run: per method over all samples, then per method ×
/// category when the run has two categories or more. `samples` are the
/// run's records (for steps and the lossless rate).
pub fn summarize(
    m: &Manifest,
    df: &DataFrame,
    samples: &[SampleRecord],
) -> Result<Vec<MethodRow>, PolarsError> {
    let c = Cols::read(df)?;
    let baseline = crate::methods::baseline_label(&m.methods);
    let ar = c.baseline_tokens_per_s(baseline);
    let cats: BTreeSet<&str> = c.category.iter().map(String::as_str).collect();
    let mut groups: Vec<Option<&str>> = vec![None];
    if cats.len() > 1 {
        groups.extend(cats.iter().map(|c| Some(*c)));
    }
    let mut out = Vec::new();
    for group in groups {
        // The lossless rate compares a method with `ar` on the group's
        // samples.
        let runs = crate::compare::by_method(
            samples
                .iter()
                .filter(|s| group.is_none_or(|g| s.category.as_deref().unwrap_or("–") == g))
                .cloned()
                .collect(),
        );
        for name in ordered(c.method.iter().map(String::as_str), baseline) {
            let rows: Vec<usize> = (0..c.method.len())
                .filter(|&i| c.method[i] == name && group.is_none_or(|g| c.category[i] == g))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let mut steps = StepStats::default();
            for s in runs.get(name).into_iter().flat_map(|r| r.values()) {
                steps.add(&s.steps);
            }
            let mut row = row_of(&c, &ar, &rows, steps);
            row.run_id = m.run_id.clone();
            row.suite = m.suite.def.name.clone();
            row.method = name.to_string();
            row.category = group.map(str::to_string);
            row.lossless_pct = crate::compare::lossless_rate(m, &runs, name);
            row.interference_pct = crate::measure::interference::summarize(
                runs.get(name)
                    .into_iter()
                    .flat_map(|r| r.values())
                    .filter_map(|s| s.interference.as_ref().map(|i| (i, s.wall_ns))),
                m.device.threads,
            )
            .map(|sum| sum.interference_pct);
            out.push(row);
        }
    }
    Ok(out)
}

fn row_of(c: &Cols, ar: &BTreeMap<Key, f64>, rows: &[usize], steps: StepStats) -> MethodRow {
    let t = c.of(rows, &c.tps);
    let ttft_ms: Vec<f64> = c.of(rows, &c.ttft).iter().map(|x| x / 1e6).collect();
    // Speedup: the geometric mean of per-prompt tokens/s ratios, the
    // average that suits ratios (one 40× outlier prompt cannot carry it,
    // and A over B is 1 over B over A). Per prompt, the log ratios of its
    // repeats and turns are averaged first, so that intervals resample
    // prompts, not correlated repeats of one prompt.
    let log_ratios = stats::cluster_means(
        rows.iter()
            .filter_map(|&i| Some((c.sample[i].clone(), c.speedup(ar, i)?.ln()))),
    );
    let scores = stats::cluster_means(
        rows.iter()
            .filter_map(|&i| Some((c.sample[i].clone(), 100.0 * c.score[i]?))),
    );
    MethodRow {
        run_id: String::new(),
        suite: String::new(),
        method: String::new(),
        category: None,
        samples: rows.len(),
        tokens: c.of(rows, &c.tokens).iter().sum::<f64>() as u64,
        tokens_per_s_median: stats::median(&t).unwrap_or(f64::NAN),
        tokens_per_s_q25: stats::quantile(&t, 0.25).unwrap_or(f64::NAN),
        tokens_per_s_q75: stats::quantile(&t, 0.75).unwrap_or(f64::NAN),
        ttft_ms_median: stats::median(&ttft_ms),
        mean_accepted_tokens: stats::mean(&c.of(rows, &c.tau)),
        draft_ms_per_step: stats::mean(&c.of(rows, &c.draft_ms)),
        decode_ms_per_token: stats::mean(&c.of(rows, &c.ms_per_token)),
        speedup_vs_ar: stats::mean(&log_ratios).map(f64::exp),
        speedup_ci: stats::bootstrap_mean_ci(&log_ratios, BOOTSTRAP, 0.95, 1)
            .map(|(lo, hi)| (lo.exp(), hi.exp())),
        paired: log_ratios.len(),
        score_mean_x100: stats::mean(&scores),
        score_ci: stats::bootstrap_mean_ci(&scores, BOOTSTRAP, 0.95, 2),
        lossless_pct: None,
        forwards_per_sample: stats::mean(&c.of(rows, &c.calls)).unwrap_or(f64::NAN),
        canvas_tokens_per_step: stats::mean(&c.of(rows, &c.canvas)),
        decoding_order_tau: stats::mean(&c.of(rows, &c.order_tau)),
        joules_per_token: stats::mean(&c.of(rows, &c.jpt)),
        mean_watts: stats::mean(&c.of(rows, &c.watts)),
        peak_rss_bytes: c.of(rows, &c.rss).into_iter().reduce(f64::max),
        peak_gpu_mem_bytes: c.of(rows, &c.gpu_mem).into_iter().reduce(f64::max),
        interference_pct: None,
        steps,
    }
}

pub fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "–".into(),
    }
}

fn fmt_times(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.2}×"),
        _ => "–".into(),
    }
}

fn fmt_speedup(r: &MethodRow) -> String {
    match (r.speedup_vs_ar, r.speedup_ci) {
        (Some(v), Some((lo, hi))) => format!("{v:.2}× [{lo:.2}–{hi:.2}] ({} prompts)", r.paired),
        (Some(v), None) => format!("{v:.2}× ({} prompts)", r.paired),
        _ => "–".into(),
    }
}

fn fmt_score(r: &MethodRow) -> String {
    match (r.score_mean_x100, r.score_ci) {
        (Some(v), Some((lo, hi))) => format!("{v:.1} [{lo:.1}–{hi:.1}]"),
        (v, _) => fmt_opt(v, 1),
    }
}

fn fmt_pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |p| format!("{p:.0}%"))
}

/// A Markdown table from a header and rows of cells.
fn md_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|", header.join(" | "));
    s.push_str(&"---|".repeat(header.len()));
    s.push('\n');
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

/// The label of a row in tables that mix runs.
pub fn row_label(r: &MethodRow, multi: bool) -> String {
    if multi {
        format!("{}/{}", r.run_id, r.method)
    } else {
        r.method.clone()
    }
}

/// The run lines, the host-interference alerts and the main table of
/// report.md.
pub fn markdown(manifests: &[Manifest], rows: &[MethodRow], alerts: &[String]) -> String {
    let mut s = String::from("# pdbench report\n\n");
    for m in manifests {
        s.push_str(&format!(
            "- run `{}`: suite **{}** v{} ({} samples{}), model **{}** ({}, {}), device {} ({} threads{}), {} order, seed {}, max_new_tokens {}, warm-up {} prompt(s) not recorded, status {}\n",
            m.run_id,
            m.suite.def.name,
            m.suite.def.version,
            m.prompts(),
            if m.repeats > 1 { format!(" × {} repeats", m.repeats) } else { String::new() },
            m.models.target.label,
            m.models.target.format,
            m.models.target.dtype,
            m.device.name,
            m.device.threads,
            match m.threads_choice.as_ref().map(|c| c.how) {
                Some(crate::measure::threads::ThreadsHow::Automatic) => ", chosen by timing",
                _ => "",
            },
            m.order.as_str(),
            m.seed,
            m.max_new_tokens,
            m.warmup,
            m.status.as_str(),
        ));
        if let Some(sc) = &m.scoring {
            s.push_str(&format!("  - scorer `{}`", sc.scorer));
            if let Some(g) = &sc.grammar {
                s.push_str(&format!(
                    "; grammar checked by {} {} ({}{})",
                    g.backend,
                    g.version,
                    g.language,
                    g.url
                        .as_deref()
                        .map(|u| format!(", {u}"))
                        .unwrap_or_default()
                ));
            }
            match (&sc.unscored_reason, sc.scorer.as_str()) {
                (Some(why), _) => s.push_str(&format!("; **unscored**: {why}")),
                (None, "none") => s.push_str("; outputs are not scored (speed only)"),
                _ => {}
            }
            s.push('\n');
        }
    }
    for a in alerts {
        s.push_str(&format!("\n> **{a}**\n"));
    }
    let multi = manifests.len() > 1;
    let overall: Vec<&MethodRow> = rows.iter().filter(|r| r.category.is_none()).collect();
    let mut header: Vec<String> = if multi { vec!["run".into()] } else { vec![] };
    header.extend(
        [
            "method",
            "samples",
            "tokens",
            "tokens/s median",
            "tokens/s IQR",
            "TTFT median (ms)",
            "mean accepted tokens τ",
            "draft ms/step",
            "decode ms per accepted token",
            "speedup vs ar [95% CI]",
            "score ×100 [95% CI]",
            "equal to ar",
        ]
        .map(String::from),
    );
    let cells: Vec<Vec<String>> = overall
        .iter()
        .map(|r| {
            let mut c: Vec<String> = if multi {
                vec![r.run_id.clone()]
            } else {
                vec![]
            };
            c.extend([
                r.method.clone(),
                r.samples.to_string(),
                r.tokens.to_string(),
                format!("{:.1}", r.tokens_per_s_median),
                format!("{:.1}–{:.1}", r.tokens_per_s_q25, r.tokens_per_s_q75),
                fmt_opt(r.ttft_ms_median, 1),
                fmt_opt(r.mean_accepted_tokens, 2),
                fmt_opt(r.draft_ms_per_step, 3),
                fmt_opt(r.decode_ms_per_token, 3),
                fmt_speedup(r),
                fmt_score(r),
                fmt_pct(r.lossless_pct),
            ]);
            c
        })
        .collect();
    s.push('\n');
    s.push_str(&md_table(&header, &cells));
    s.push_str(
        "\ntokens/s is new tokens over the device-synchronised wall time of a sample, prefill included. \
         τ is tokens per target forward over decode steps, bonus token included (Spec-Bench's convention), the mean over samples of each sample's τ. \
         Draft ms/step is the time a step spent drafting before verification; decode ms per accepted token is \
         decode-step wall time per token added to the output, the cost-aware figure beside τ. \
         Speedup is the geometric mean over prompts of tokens/s relative to `ar` on the same prompt and repeat \
         (a prompt's log ratios over repeats and turns averaged first), so that a few outlier prompts cannot carry it. \
         Intervals are percentile bootstraps (2000 resamples) over prompts. \
         \"Equal to ar\" is, for lossless methods at greedy settings, the share of samples whose tokens equal `ar`'s; \
         other methods (lossy ones, or ones that decode with a model of their own) are not held to it.\n",
    );
    s.push_str(&acceptance_markdown(&overall, multi));
    s.push_str(&diffusion_markdown(&overall, multi));
    s
}

/// Acceptance by draft position, for the methods that draft.
fn acceptance_markdown(rows: &[&MethodRow], multi: bool) -> String {
    let drafting: Vec<&&MethodRow> = rows.iter().filter(|r| r.steps.drafts()).collect();
    if drafting.is_empty() {
        return String::new();
    }
    let deepest = drafting
        .iter()
        .map(|r| r.steps.reached.len())
        .max()
        .unwrap_or(0);
    let width = deepest.min(POSITIONS);
    let mut header = vec!["method".to_string(), "decode steps".into()];
    header.extend((1..=width).map(|k| format!("pos {k}")));
    let cells: Vec<Vec<String>> = drafting
        .iter()
        .map(|r| {
            let acc = r.steps.acceptance_by_position();
            let mut c = vec![row_label(r, multi), r.steps.decode_steps.to_string()];
            c.extend((0..width).map(|k| fmt_pct(acc.get(k).copied().flatten().map(|a| 100.0 * a))));
            c
        })
        .collect();
    let cut = if deepest > POSITIONS {
        format!(" Drafts here reach {deepest} positions; the table, report.csv and report.parquet stop at {POSITIONS}.")
    } else {
        String::new()
    };
    format!(
        "\n## Acceptance by draft position\n\n{}\nPosition k: of the decode steps whose draft reached k tokens with the k−1 before all accepted, the share that accepted the k-th too (tree drafts count depth).{cut} See acceptance_by_position.png.\n",
        md_table(&header, &cells)
    )
}

fn diffusion_markdown(rows: &[&MethodRow], multi: bool) -> String {
    let canvas: Vec<&&MethodRow> = rows
        .iter()
        .filter(|r| r.canvas_tokens_per_step.is_some())
        .collect();
    if canvas.is_empty() {
        return String::new();
    }
    let header = [
        "method",
        "forwards per sample",
        "canvas tokens per step",
        "decoding order τ",
    ]
    .map(String::from);
    let cells: Vec<Vec<String>> = canvas
        .iter()
        .map(|r| {
            vec![
                row_label(r, multi),
                format!("{:.1}", r.forwards_per_sample),
                fmt_opt(r.canvas_tokens_per_step, 2),
                fmt_opt(r.decoding_order_tau, 2),
            ]
        })
        .collect();
    format!(
        "\n## Diffusion decoding\n\n{}\nCanvas tokens per step: answer-canvas positions committed per forward, the fill after EOS \
         included (τ above counts only the answer's tokens). Decoding order τ: Kendall's τ-b between the \
         step that committed a position and the position; 1 is left to right.\n",
        md_table(&header, &cells)
    )
}

/// What the host took from each method while its samples were timed, per
/// run, with the threshold and what to do when a method is over it.
pub fn interference_markdown(
    runs: &[(
        &Manifest,
        Vec<(String, crate::measure::interference::InterferenceSummary)>,
    )],
) -> String {
    use crate::measure::interference::DISTURBED_PCT;
    if runs.iter().all(|(_, r)| r.is_empty()) {
        return String::new();
    }
    let multi = runs.len() > 1;
    let mut header: Vec<String> = if multi { vec!["run".into()] } else { vec![] };
    header.extend(
        [
            "method",
            "samples",
            "thread time lost to the host",
            "worst sample",
            "involuntary switches/s",
            "other processes' CPU share",
            "own CPU / (wall × threads)",
            "flag",
        ]
        .map(String::from),
    );
    let pct = |x: Option<f64>| x.map_or("–".into(), |p| format!("{p:.1}%"));
    let mut cells = Vec::new();
    for (m, sums) in runs {
        for (label, x) in sums {
            let mut c: Vec<String> = if multi {
                vec![m.run_id.clone()]
            } else {
                vec![]
            };
            c.extend([
                label.clone(),
                x.samples.to_string(),
                format!("{:.2}%", x.interference_pct),
                format!("{:.1}%", x.max_sample_pct),
                x.involuntary_switches_per_s
                    .map_or("–".into(), |v| format!("{v:.1}")),
                pct(x.other_cpu_pct),
                pct(x.cpu_pct),
                if x.disturbed() {
                    "**disturbed**".into()
                } else {
                    "ok".into()
                },
            ]);
            cells.push(c);
        }
    }
    let threads: Vec<String> = runs
        .iter()
        .map(|(m, _)| match &m.threads_choice {
            Some(c) => format!("`{}`: {}", m.run_id, c.describe()),
            None => format!("`{}`: {} threads", m.run_id, m.device.threads),
        })
        .collect();
    format!(
        "\n## Host interference\n\n{}\nThread time lost to the host: the time this process's threads sat runnable waiting for a CPU \
         (per-thread run-queue delay) plus the steal time of its CPUs, over wall time × threads, summed over a method's timed samples. \
         A method above {DISTURBED_PCT}% is flagged as disturbed, and `compare` refuses a run that holds one: its speedups may be the host's, not the method's. \
         Re-run on a quiet machine (or with fewer `--threads`). Other processes' CPU share is their CPU time on this process's CPUs \
         (/proc/stat, 10 ms ticks), shown for context: it need not slow a run that has a core to itself. Threads: {}.\n",
        md_table(&header, &cells),
        threads.join("; ")
    )
}

/// Energy per token, mean power (and above idle) and peak memory per
/// method, with each run's sources; a run without an energy source says
/// why instead of showing zeros.
pub fn energy_markdown(manifests: &[Manifest], rows: &[MethodRow]) -> String {
    let multi = manifests.len() > 1;
    let mut s = String::from("\n## Energy and memory\n\n");
    for m in manifests {
        let Some(e) = &m.energy else {
            s.push_str(&format!(
                "- run `{}`: not recorded (the run predates energy metering)\n",
                m.run_id
            ));
            continue;
        };
        let src = |name: &str, x: &crate::measure::energy::SourceInfo| match (
            &x.source,
            &x.unavailable_reason,
        ) {
            (Some(src), _) => format!(
                "{name} energy from {src:?}{}{}",
                x.detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
                x.idle_watts
                    .map(|w| format!(", idle {w:.1} W"))
                    .unwrap_or_default()
            ),
            (None, Some(why)) => format!("{name} energy unavailable: {why}"),
            (None, None) => format!("{name} energy unavailable"),
        };
        s.push_str(&format!(
            "- run `{}`: {}; {}; peak RSS: {}\n",
            m.run_id,
            src("GPU", &e.gpu),
            src("CPU", &e.cpu),
            e.peak_rss
        ));
    }
    let idle = |r: &MethodRow| {
        let m = manifests.iter().find(|m| m.run_id == r.run_id)?;
        let e = m.energy.as_ref()?;
        e.gpu.idle_watts.or(e.cpu.idle_watts)
    };
    let mib = |b: Option<f64>| fmt_opt(b.map(|x| x / (1024.0 * 1024.0)), 0);
    let header = [
        "method",
        "J per token",
        "mean W",
        "W above idle",
        "peak RSS (MiB)",
        "peak GPU memory (MiB)",
    ]
    .map(String::from);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .filter(|r| r.category.is_none())
        .map(|r| {
            vec![
                row_label(r, multi),
                fmt_opt(r.joules_per_token, 4),
                fmt_opt(r.mean_watts, 1),
                fmt_opt(r.mean_watts.zip(idle(r)).map(|(w, i)| w - i), 1),
                mib(r.peak_rss_bytes),
                mib(r.peak_gpu_mem_bytes),
            ]
        })
        .collect();
    s.push('\n');
    s.push_str(&md_table(&header, &cells));
    s.push_str("\nEnergy is the GPU's where measured (NVML), else the CPU packages' (RAPL), over each sample's timed interval; – where the run has no source.\n");
    s
}

/// Spec-Bench's table for one run (speedup per category, then τ and the
/// overall speedup), and every other figure per category in a folded
/// table. Empty when the run has fewer than two categories.
pub fn category_markdown(run_rows: &[MethodRow]) -> String {
    let cats: Vec<&str> = run_rows
        .iter()
        .filter_map(|r| r.category.as_deref())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if cats.len() < 2 {
        return String::new();
    }
    let overall: Vec<&MethodRow> = run_rows.iter().filter(|r| r.category.is_none()).collect();
    let cell = |method: &str, cat: &str| {
        run_rows
            .iter()
            .find(|r| r.method == method && r.category.as_deref() == Some(cat))
    };
    let mut s = String::new();
    if overall.iter().any(|r| r.speedup_vs_ar.is_some()) {
        let mut header = vec!["method".to_string()];
        header.extend(cats.iter().map(|c| c.to_string()));
        header.extend(["mean accepted tokens τ".into(), "overall".into()]);
        let cells: Vec<Vec<String>> = overall
            .iter()
            .map(|r| {
                let mut c = vec![r.method.clone()];
                c.extend(
                    cats.iter()
                        .map(|k| fmt_times(cell(&r.method, k).and_then(|x| x.speedup_vs_ar))),
                );
                c.push(fmt_opt(r.mean_accepted_tokens, 2));
                c.push(fmt_times(r.speedup_vs_ar));
                c
            })
            .collect();
        s.push_str(&format!(
            "\n## By category (Spec-Bench's table)\n\n{}\nSpeedup over `ar` per category: the geometric mean over the category's prompts of tokens/s relative to `ar` on the same prompt. τ: tokens per target forward over decode steps, the bonus token included.\n",
            md_table(&header, &cells)
        ));
    }
    let header = [
        "method",
        "category",
        "samples",
        "τ",
        "tokens/s median",
        "TTFT median (ms)",
        "decode ms per accepted token",
        "acceptance pos 1–3",
        "speedup vs ar [95% CI]",
        "score ×100 [95% CI]",
        "equal to ar",
    ]
    .map(String::from);
    let mut cells = Vec::new();
    for r in &overall {
        for k in &cats {
            let Some(x) = cell(&r.method, k) else {
                continue;
            };
            let acc = x.steps.acceptance_by_position();
            cells.push(vec![
                x.method.clone(),
                k.to_string(),
                x.samples.to_string(),
                fmt_opt(x.mean_accepted_tokens, 2),
                format!("{:.1}", x.tokens_per_s_median),
                fmt_opt(x.ttft_ms_median, 1),
                fmt_opt(x.decode_ms_per_token, 3),
                if x.steps.drafts() {
                    (0..3)
                        .map(|i| fmt_pct(acc.get(i).copied().flatten().map(|a| 100.0 * a)))
                        .collect::<Vec<_>>()
                        .join(" / ")
                } else {
                    "–".into()
                },
                fmt_speedup(x),
                fmt_score(x),
                fmt_pct(x.lossless_pct),
            ]);
        }
    }
    s.push_str(&format!(
        "\n<details><summary>Every figure per method × category ({} rows; also in report.csv and report.parquet)</summary>\n\n{}\n</details>\n",
        cells.len(),
        md_table(&header, &cells)
    ));
    s
}

/// The rows as one frame, for CSV and Parquet: `category` is `all` on the
/// rows over every category.
pub fn rows_frame(rows: &[MethodRow]) -> Result<DataFrame, PolarsError> {
    let opt = |f: &dyn Fn(&MethodRow) -> Option<f64>| rows.iter().map(f).collect::<Vec<_>>();
    let num = |f: &dyn Fn(&MethodRow) -> f64| rows.iter().map(f).collect::<Vec<_>>();
    let text = |f: &dyn Fn(&MethodRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let count = |f: &dyn Fn(&MethodRow) -> u64| rows.iter().map(f).collect::<Vec<_>>();
    let mut cols = vec![
        Column::new("run_id".into(), text(&|r| r.run_id.clone())),
        Column::new("suite".into(), text(&|r| r.suite.clone())),
        Column::new("method".into(), text(&|r| r.method.clone())),
        Column::new(
            "category".into(),
            text(&|r| r.category.clone().unwrap_or_else(|| "all".into())),
        ),
        Column::new("samples".into(), count(&|r| r.samples as u64)),
        Column::new("tokens".into(), count(&|r| r.tokens)),
        Column::new(
            "tokens_per_s_median".into(),
            num(&|r| r.tokens_per_s_median),
        ),
        Column::new("tokens_per_s_q25".into(), num(&|r| r.tokens_per_s_q25)),
        Column::new("tokens_per_s_q75".into(), num(&|r| r.tokens_per_s_q75)),
        Column::new("ttft_ms_median".into(), opt(&|r| r.ttft_ms_median)),
        Column::new(
            "mean_accepted_tokens".into(),
            opt(&|r| r.mean_accepted_tokens),
        ),
        Column::new("draft_ms_per_step".into(), opt(&|r| r.draft_ms_per_step)),
        Column::new(
            "decode_ms_per_token".into(),
            opt(&|r| r.decode_ms_per_token),
        ),
        Column::new("speedup_vs_ar".into(), opt(&|r| r.speedup_vs_ar)),
        Column::new("speedup_ci_low".into(), opt(&|r| r.speedup_ci.map(|c| c.0))),
        Column::new(
            "speedup_ci_high".into(),
            opt(&|r| r.speedup_ci.map(|c| c.1)),
        ),
        Column::new("score_mean_x100".into(), opt(&|r| r.score_mean_x100)),
        Column::new("score_ci_low".into(), opt(&|r| r.score_ci.map(|c| c.0))),
        Column::new("score_ci_high".into(), opt(&|r| r.score_ci.map(|c| c.1))),
        Column::new("lossless_pct".into(), opt(&|r| r.lossless_pct)),
        Column::new(
            "forwards_per_sample".into(),
            num(&|r| r.forwards_per_sample),
        ),
        Column::new(
            "canvas_tokens_per_step".into(),
            opt(&|r| r.canvas_tokens_per_step),
        ),
        Column::new("decoding_order_tau".into(), opt(&|r| r.decoding_order_tau)),
        Column::new("paired_prompts".into(), count(&|r| r.paired as u64)),
        Column::new("decode_steps".into(), count(&|r| r.steps.decode_steps)),
        Column::new(
            "step_draft_ms".into(),
            opt(&|r| r.steps.draft_ms_per_step()),
        ),
        Column::new(
            "step_verify_ms".into(),
            opt(&|r| r.steps.verify_ms_per_step()),
        ),
        // Empty where no source recorded them (the manifest's `energy`
        // says why), never zero.
        Column::new("joules_per_token".into(), opt(&|r| r.joules_per_token)),
        Column::new("mean_watts".into(), opt(&|r| r.mean_watts)),
        Column::new("peak_rss_bytes".into(), opt(&|r| r.peak_rss_bytes)),
        Column::new("peak_gpu_mem_bytes".into(), opt(&|r| r.peak_gpu_mem_bytes)),
        Column::new("interference_pct".into(), opt(&|r| r.interference_pct)),
    ];
    for k in 0..POSITIONS {
        cols.push(Column::new(
            format!("acceptance_pos{}", k + 1).into(),
            opt(&|r| r.steps.acceptance_by_position().get(k).copied().flatten()),
        ));
    }
    DataFrame::new(cols)
}

/// The summary as a LaTeX table (booktabs), for papers.
pub fn latex(manifests: &[Manifest], rows: &[MethodRow]) -> String {
    let esc = |x: &str| {
        x.replace('\\', "\\textbackslash{}")
            .replace('_', "\\_")
            .replace('&', "\\&")
            .replace('%', "\\%")
            .replace('#', "\\#")
            .replace('$', "\\$")
            .replace('{', "\\{")
            .replace('}', "\\}")
    };
    let num = |x: Option<f64>, d: usize| match x {
        Some(v) if v.is_finite() => format!("{v:.d$}"),
        _ => "--".into(),
    };
    let what = match manifests {
        [m] => format!(
            "{} on {} ({}, {} threads)",
            esc(&m.models.target.label),
            esc(&m.suite.def.name),
            esc(&m.device.name),
            m.device.threads
        ),
        _ => "pdbench runs".into(),
    };
    let mut s = String::from(
        "% pdbench report: \\usepackage{booktabs}\n\\begin{table}[t]\n\\centering\n\\small\n\\begin{tabular}{lrrrrll}\n\\toprule\n",
    );
    s.push_str("Method & $\\tau$ & tokens/s & TTFT (ms) & ms/token & Speedup [95\\% CI] & Score [95\\% CI] \\\\\n\\midrule\n");
    for r in rows.iter().filter(|r| r.category.is_none()) {
        let method = esc(&row_label(r, manifests.len() > 1));
        let speedup = match (r.speedup_vs_ar, r.speedup_ci) {
            (Some(v), Some((lo, hi))) => format!("{v:.2}$\\times$ [{lo:.2}, {hi:.2}]"),
            (Some(v), None) => format!("{v:.2}$\\times$"),
            _ => "--".into(),
        };
        let score = match (r.score_mean_x100, r.score_ci) {
            (Some(v), Some((lo, hi))) => format!("{v:.1} [{lo:.1}, {hi:.1}]"),
            (v, _) => num(v, 1),
        };
        s.push_str(&format!(
            "{method} & {} & {:.1} & {} & {} & {speedup} & {score} \\\\\n",
            num(r.mean_accepted_tokens, 2),
            r.tokens_per_s_median,
            num(r.ttft_ms_median, 1),
            num(r.decode_ms_per_token, 3),
        ));
    }
    s.push_str(&format!(
        "\\bottomrule\n\\end{{tabular}}\n\\caption{{{what}. $\\tau$: mean accepted tokens per target forward over decode steps, the bonus token included (Spec-Bench's convention). Tokens/s: median over samples, prefill included. ms/token: decode wall time per accepted token. Speedup: geometric mean over prompts of tokens/s relative to AR on the same prompt, with a bootstrap 95\\% interval. Score $\\times 100$, with a bootstrap 95\\% interval.}}\n\\end{{table}}\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(proposed: usize, depth: Option<usize>, accepted: usize, emitted: usize) -> StepRecord {
        StepRecord {
            kind: StepKind::Decode,
            proposed,
            draft_depth: depth,
            accepted,
            emitted,
            target_calls: 1,
            draft_calls: 1,
            verify_width: proposed + 1,
            window: None,
            positions: vec![],
            t_ns: 10_000_000,
            draft_ns: Some(4_000_000),
            end_ns: 0,
        }
    }

    #[test]
    fn acceptance_is_conditional_on_reaching_the_position() {
        let mut s = StepStats::default();
        // Chains of 4: all accepted, 2 accepted, none accepted.
        s.add(&[
            step(4, None, 4, 5),
            step(4, None, 2, 3),
            step(4, None, 0, 1),
        ]);
        // Position 1 reached 3×, accepted 2×; position 2 reached 2×,
        // accepted 2×; position 3 reached 2× (the second chain reached it
        // and rejected it), accepted 1×; position 4: 1 of 1.
        assert_eq!(s.reached, vec![3, 2, 2, 1]);
        assert_eq!(s.accepted, vec![2, 2, 1, 1]);
        let a = s.acceptance_by_position();
        assert!((a[0].unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(a[2], Some(0.5));
        assert_eq!(s.tokens_per_forward, vec![0, 1, 0, 1, 0, 1]);
        assert_eq!(s.draft_ms_per_step(), Some(4.0));
        assert_eq!(s.verify_ms_per_step(), Some(6.0));
        // A tree of 25 nodes and depth 5 offers 5 positions, not 25.
        let mut t = StepStats::default();
        t.add(&[step(25, Some(5), 5, 6)]);
        assert_eq!(t.reached.len(), 5);
        // Methods without drafts have no acceptance.
        let mut ar = StepStats::default();
        ar.add(&[step(0, None, 0, 1)]);
        assert!(!ar.drafts());
    }
}
