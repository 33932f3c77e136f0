//! `pdbench report`: tables and a chart from results folders. It reads
//! files only and never loads a model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plotters::prelude::*;
use polars::prelude::*;

use crate::results::{Manifest, ResultsError, RunDir};
use crate::stats;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error("{path}: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("chart {path}: {detail}")]
    Plot { path: PathBuf, detail: String },
    #[error("no samples in {0}; nothing to report")]
    Empty(String),
}

/// One row of the summary table: a method in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodRow {
    pub run_id: String,
    pub method: String,
    pub samples: usize,
    pub tokens: u64,
    pub tokens_per_s_median: f64,
    pub tokens_per_s_q25: f64,
    pub tokens_per_s_q75: f64,
    pub ttft_ms_median: Option<f64>,
    pub mean_accepted_tokens: Option<f64>,
    /// Mean of the samples' drafting time per decode step, ms.
    pub draft_ms_per_step: Option<f64>,
    /// Mean of the samples' decode wall time per emitted token, ms.
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
}

/// The scalar columns of samples.jsonl that reports use.
fn sample_schema() -> Schema {
    Schema::from_iter([
        Field::new("method".into(), DataType::String),
        Field::new("sample_id".into(), DataType::String),
        Field::new("category".into(), DataType::String),
        Field::new("repeat".into(), DataType::Int64),
        Field::new("turn".into(), DataType::Int64),
        Field::new("new_tokens".into(), DataType::Int64),
        Field::new("wall_ns".into(), DataType::Int64),
        Field::new("ttft_ns".into(), DataType::Int64),
        Field::new("tokens_per_s".into(), DataType::Float64),
        Field::new("mean_accepted_tokens".into(), DataType::Float64),
        Field::new("draft_ms_per_step".into(), DataType::Float64),
        Field::new("decode_ms_per_token".into(), DataType::Float64),
        Field::new("target_calls".into(), DataType::Int64),
        Field::new("score".into(), DataType::Float64),
        Field::new("canvas_tokens_per_step".into(), DataType::Float64),
        Field::new("decoding_order_tau".into(), DataType::Float64),
    ])
}

/// Reads a run's samples into a DataFrame with polars.
pub fn read_samples_frame(run: &RunDir) -> Result<DataFrame, ReportError> {
    let p = run.samples_path();
    let err = |detail: String| ReportError::Read {
        path: p.clone(),
        detail,
    };
    // A torn last line (crash mid-write) is left out, as on resume.
    let bytes = std::fs::read(&p).map_err(|e| err(e.to_string()))?;
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if end == 0 {
        return Err(ReportError::Empty(p.display().to_string()));
    }
    let cursor = std::io::Cursor::new(bytes[..end].to_vec());
    JsonLineReader::new(cursor)
        .with_schema(Arc::new(sample_schema()))
        .finish()
        .map_err(|e| err(format!("not readable as pdbench samples: {e}")))
}

fn f64s(df: &DataFrame, name: &str) -> Result<Vec<Option<f64>>, PolarsError> {
    let c = df.column(name)?.cast(&DataType::Float64)?;
    Ok(c.f64()?.into_iter().collect())
}

fn strs(df: &DataFrame, name: &str) -> Result<Vec<String>, PolarsError> {
    Ok(df
        .column(name)?
        .str()?
        .into_iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect())
}

/// Per-method rows of one run.
/// Bootstrap resamples of the report's intervals.
const BOOTSTRAP: usize = 2000;

pub fn summarize(run_id: &str, df: &DataFrame) -> Result<Vec<MethodRow>, PolarsError> {
    let method = strs(df, "method")?;
    let sample = strs(df, "sample_id")?;
    let repeat = f64s(df, "repeat")?;
    let turn = f64s(df, "turn")?;
    let tps = f64s(df, "tokens_per_s")?;
    let ttft = f64s(df, "ttft_ns")?;
    let tau = f64s(df, "mean_accepted_tokens")?;
    let draft_ms = f64s(df, "draft_ms_per_step")?;
    let ms_per_token = f64s(df, "decode_ms_per_token")?;
    let tokens = f64s(df, "new_tokens")?;
    let score = f64s(df, "score")?;
    let calls = f64s(df, "target_calls")?;
    let canvas = f64s(df, "canvas_tokens_per_step")?;
    let order_tau = f64s(df, "decoding_order_tau")?;
    let mean_of = |rows: &[usize], col: &[Option<f64>]| {
        stats::mean(&rows.iter().filter_map(|&i| col[i]).collect::<Vec<_>>())
    };
    let mut by_method: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, m) in method.iter().enumerate() {
        by_method.entry(m.as_str()).or_default().push(i);
    }
    let key = |i: usize| {
        (
            sample[i].clone(),
            repeat[i].unwrap_or(0.0) as i64,
            turn[i].unwrap_or(0.0) as i64,
        )
    };
    let ar: BTreeMap<_, f64> = by_method
        .get("ar")
        .map(|rows| {
            rows.iter()
                .filter_map(|&i| tps[i].map(|t| (key(i), t)))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    // `ar` first, then the rest by name.
    let mut names: Vec<&str> = by_method.keys().copied().collect();
    names.sort_by_key(|n| (*n != "ar", n.to_string()));
    for name in names {
        let rows = &by_method[name];
        let t: Vec<f64> = rows.iter().filter_map(|&i| tps[i]).collect();
        let ttft_ms: Vec<f64> = rows
            .iter()
            .filter_map(|&i| ttft[i])
            .map(|x| x / 1e6)
            .collect();
        let taus: Vec<f64> = rows.iter().filter_map(|&i| tau[i]).collect();
        let ratios: Vec<f64> = rows
            .iter()
            .filter_map(|&i| Some(tps[i]? / ar.get(&key(i))?))
            .collect();
        let scores: Vec<f64> = rows
            .iter()
            .filter_map(|&i| score[i].map(|x| 100.0 * x))
            .collect();
        out.push(MethodRow {
            run_id: run_id.to_string(),
            method: name.to_string(),
            samples: rows.len(),
            tokens: rows.iter().filter_map(|&i| tokens[i]).sum::<f64>() as u64,
            tokens_per_s_median: stats::median(&t).unwrap_or(f64::NAN),
            tokens_per_s_q25: stats::quantile(&t, 0.25).unwrap_or(f64::NAN),
            tokens_per_s_q75: stats::quantile(&t, 0.75).unwrap_or(f64::NAN),
            ttft_ms_median: stats::median(&ttft_ms),
            mean_accepted_tokens: stats::mean(&taus),
            draft_ms_per_step: stats::mean(
                &rows.iter().filter_map(|&i| draft_ms[i]).collect::<Vec<_>>(),
            ),
            decode_ms_per_token: stats::mean(
                &rows
                    .iter()
                    .filter_map(|&i| ms_per_token[i])
                    .collect::<Vec<_>>(),
            ),
            speedup_vs_ar: stats::mean(&ratios),
            speedup_ci: stats::bootstrap_mean_ci(&ratios, BOOTSTRAP, 0.95, 1),
            paired: ratios.len(),
            score_mean_x100: stats::mean(&scores),
            score_ci: stats::bootstrap_mean_ci(&scores, BOOTSTRAP, 0.95, 2),
            lossless_pct: None,
            forwards_per_sample: mean_of(rows, &calls).unwrap_or(f64::NAN),
            canvas_tokens_per_step: mean_of(rows, &canvas),
            decoding_order_tau: mean_of(rows, &order_tau),
        });
    }
    Ok(out)
}

/// Spec-Bench's table for one run: per method, the speedup over `ar` in
/// each category (the mean over its prompts of the paired tokens/s ratio),
/// then τ and the overall speedup. `None` when the run has fewer than two
/// categories or no `ar`.
pub fn category_markdown(df: &DataFrame) -> Result<Option<String>, PolarsError> {
    let method = strs(df, "method")?;
    let sample = strs(df, "sample_id")?;
    let category = df
        .column("category")?
        .str()?
        .into_iter()
        .map(|c| c.unwrap_or("–").to_string())
        .collect::<Vec<_>>();
    let repeat = f64s(df, "repeat")?;
    let turn = f64s(df, "turn")?;
    let tps = f64s(df, "tokens_per_s")?;
    let tau = f64s(df, "mean_accepted_tokens")?;
    let key = |i: usize| {
        (
            sample[i].clone(),
            repeat[i].unwrap_or(0.0) as i64,
            turn[i].unwrap_or(0.0) as i64,
        )
    };
    let ar: BTreeMap<_, f64> = (0..method.len())
        .filter(|&i| method[i] == "ar")
        .filter_map(|i| tps[i].map(|t| (key(i), t)))
        .collect();
    let cats: Vec<String> = category
        .iter()
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if ar.is_empty() || cats.len() < 2 {
        return Ok(None);
    }
    let mut names: Vec<&str> = method
        .iter()
        .map(|m| m.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    names.sort_by_key(|n| (*n != "ar", n.to_string()));
    let mut s = String::from("\n## By category (Spec-Bench's table)\n\n| method |");
    for c in &cats {
        s.push_str(&format!(" {c} |"));
    }
    s.push_str(" mean accepted tokens τ | overall |\n|---|");
    for _ in 0..cats.len() + 2 {
        s.push_str("---|");
    }
    s.push('\n');
    for name in names {
        let rows: Vec<usize> = (0..method.len()).filter(|&i| method[i] == name).collect();
        let ratio = |i: usize| Some(tps[i]? / ar.get(&key(i))?);
        s.push_str(&format!("| {name} |"));
        for c in &cats {
            let r: Vec<f64> = rows
                .iter()
                .filter(|&&i| &category[i] == c)
                .filter_map(|&i| ratio(i))
                .collect();
            s.push_str(&format!(" {} |", fmt_times(stats::mean(&r))));
        }
        let taus: Vec<f64> = rows.iter().filter_map(|&i| tau[i]).collect();
        let all: Vec<f64> = rows.iter().filter_map(|&i| ratio(i)).collect();
        s.push_str(&format!(
            " {} | {} |\n",
            fmt_opt(stats::mean(&taus), 2),
            fmt_times(stats::mean(&all))
        ));
    }
    s.push_str(
        "\nSpeedup over `ar` per category: the mean over the category's prompts of tokens/s relative to `ar` on the same prompt. τ: tokens per target forward over decode steps, the bonus token included.\n",
    );
    Ok(Some(s))
}

fn fmt_times(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.2}×"),
        _ => "–".into(),
    }
}

/// Per (model/method, task) points of a ParallelBench run: the mean score
/// × 100 and the mean tokens per target forward, from token ids.
pub fn parallelbench_points(
    m: &Manifest,
    df: &DataFrame,
) -> Result<Vec<stats::TaskPoint>, PolarsError> {
    let suite = &m.suite.def.name;
    // A ParallelBench suite is one task; the toy suite's categories are
    // its task families.
    let per_category = suite == "toy";
    if !suite.starts_with("parallelbench/") && !per_category {
        return Ok(vec![]);
    }
    let method = strs(df, "method")?;
    let category = strs(df, "category")?;
    let score = f64s(df, "score")?;
    let tokens = f64s(df, "new_tokens")?;
    let calls = f64s(df, "target_calls")?;
    let mut by: BTreeMap<(&str, &str), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for i in 0..method.len() {
        let task = if per_category {
            category[i].as_str()
        } else {
            suite.as_str()
        };
        let e = by.entry((method[i].as_str(), task)).or_default();
        if let Some(sc) = score[i] {
            e.0.push(100.0 * sc);
        }
        if let (Some(t), Some(c)) = (tokens[i], calls[i]) {
            if c > 0.0 {
                e.1.push(t / c);
            }
        }
    }
    Ok(by
        .into_iter()
        .filter_map(|((label, task), (sc, tps))| {
            Some(stats::TaskPoint {
                config: format!("{} / {label}", m.models.target.label),
                task: task.to_string(),
                score_x100: stats::mean(&sc)?,
                tokens_per_step: stats::mean(&tps)?,
            })
        })
        .collect())
}

/// The ParallelBench section: per-configuration averages and PBx.
pub fn parallelbench_markdown(points: &[stats::TaskPoint]) -> String {
    let tasks: std::collections::BTreeSet<&str> = points.iter().map(|p| p.task.as_str()).collect();
    let (pb, summaries) = stats::pb_scores(points, &[90.0, 80.0, 70.0, 60.0]);
    let mut s = format!(
        "\n## ParallelBench\n\n{} task(s). Score: the mean over tasks of each task's mean score (×100). Tokens per step: new tokens over target forwards, from token ids, averaged per task, then over tasks.\n\n| configuration | tasks | mean score | tokens per step |\n|---|---|---|---|\n",
        tasks.len()
    );
    for c in &summaries {
        s.push_str(&format!(
            "| {} | {}{} | {:.1} | {:.2} |\n",
            c.config,
            c.tasks,
            if c.complete {
                ""
            } else {
                " (incomplete: not in PBx)"
            },
            c.mean_score_x100,
            c.mean_tokens_per_step
        ));
    }
    s.push_str("\nPBx, the highest tokens per step among the configurations that keep a mean score ≥ x over all tasks: ");
    s.push_str(
        &pb.iter()
            .map(|(x, v)| match v {
                Some(t) => format!("PB{x:.0} = {t:.2}"),
                None => format!("PB{x:.0} = –"),
            })
            .collect::<Vec<_>>()
            .join(", "),
    );
    s.push('\n');
    s
}

fn rows_frame(rows: &[MethodRow]) -> Result<DataFrame, PolarsError> {
    let opt = |f: fn(&MethodRow) -> Option<f64>| rows.iter().map(f).collect::<Vec<_>>();
    DataFrame::new(vec![
        Column::new(
            "run_id".into(),
            rows.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "method".into(),
            rows.iter().map(|r| r.method.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "samples".into(),
            rows.iter().map(|r| r.samples as u64).collect::<Vec<_>>(),
        ),
        Column::new(
            "tokens".into(),
            rows.iter().map(|r| r.tokens).collect::<Vec<_>>(),
        ),
        Column::new(
            "tokens_per_s_median".into(),
            rows.iter()
                .map(|r| r.tokens_per_s_median)
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "tokens_per_s_q25".into(),
            rows.iter().map(|r| r.tokens_per_s_q25).collect::<Vec<_>>(),
        ),
        Column::new(
            "tokens_per_s_q75".into(),
            rows.iter().map(|r| r.tokens_per_s_q75).collect::<Vec<_>>(),
        ),
        Column::new("ttft_ms_median".into(), opt(|r| r.ttft_ms_median)),
        Column::new(
            "mean_accepted_tokens".into(),
            opt(|r| r.mean_accepted_tokens),
        ),
        Column::new("draft_ms_per_step".into(), opt(|r| r.draft_ms_per_step)),
        Column::new("decode_ms_per_token".into(), opt(|r| r.decode_ms_per_token)),
        Column::new("speedup_vs_ar".into(), opt(|r| r.speedup_vs_ar)),
        Column::new("speedup_ci_low".into(), opt(|r| r.speedup_ci.map(|c| c.0))),
        Column::new("speedup_ci_high".into(), opt(|r| r.speedup_ci.map(|c| c.1))),
        Column::new("score_mean_x100".into(), opt(|r| r.score_mean_x100)),
        Column::new("score_ci_low".into(), opt(|r| r.score_ci.map(|c| c.0))),
        Column::new("score_ci_high".into(), opt(|r| r.score_ci.map(|c| c.1))),
        Column::new("lossless_pct".into(), opt(|r| r.lossless_pct)),
        Column::new(
            "forwards_per_sample".into(),
            rows.iter()
                .map(|r| r.forwards_per_sample)
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "canvas_tokens_per_step".into(),
            opt(|r| r.canvas_tokens_per_step),
        ),
        Column::new("decoding_order_tau".into(), opt(|r| r.decoding_order_tau)),
        Column::new(
            "paired_prompts".into(),
            rows.iter().map(|r| r.paired as u64).collect::<Vec<_>>(),
        ),
    ])
}

fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "–".into(),
    }
}

pub fn markdown(manifests: &[Manifest], rows: &[MethodRow]) -> String {
    let mut s = String::from("# pdbench report\n\n");
    for m in manifests {
        s.push_str(&format!(
            "- run `{}`: suite **{}** v{} ({} samples{}), model **{}** ({}, {}), device {} ({} threads), seed {}, max_new_tokens {}, warm-up {} prompt(s) not recorded, status {:?}\n",
            m.run_id,
            m.suite.def.name,
            m.suite.def.version,
            m.limit.unwrap_or(m.suite.n_samples).min(m.suite.n_samples),
            if m.repeats > 1 { format!(" × {} repeats", m.repeats) } else { String::new() },
            m.models.target.label,
            m.models.target.format,
            m.models.target.dtype,
            m.device.name,
            m.device.threads,
            m.seed,
            m.max_new_tokens,
            m.warmup,
            m.status,
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
    let multi = manifests.len() > 1;
    s.push_str("\n| ");
    if multi {
        s.push_str("run | ");
    }
    s.push_str("method | samples | tokens | tokens/s median | tokens/s IQR | TTFT median (ms) | mean accepted tokens τ | draft ms/step | decode ms/token | speedup vs ar [95% CI] | score ×100 [95% CI] | equal to ar |\n|");
    let ncol = if multi { 13 } else { 12 };
    for _ in 0..ncol {
        s.push_str("---|");
    }
    s.push('\n');
    for r in rows {
        s.push_str("| ");
        if multi {
            s.push_str(&format!("{} | ", r.run_id));
        }
        s.push_str(&format!(
            "{} | {} | {} | {:.1} | {:.1}–{:.1} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.method,
            r.samples,
            r.tokens,
            r.tokens_per_s_median,
            r.tokens_per_s_q25,
            r.tokens_per_s_q75,
            fmt_opt(r.ttft_ms_median, 1),
            fmt_opt(r.mean_accepted_tokens, 2),
            fmt_opt(r.draft_ms_per_step, 3),
            fmt_opt(r.decode_ms_per_token, 3),
            match (r.speedup_vs_ar, r.speedup_ci) {
                (Some(v), Some((lo, hi))) =>
                    format!("{v:.2}× [{lo:.2}–{hi:.2}] ({} prompts)", r.paired),
                (Some(v), None) => format!("{v:.2}× ({} prompts)", r.paired),
                _ => "–".into(),
            },
            match (r.score_mean_x100, r.score_ci) {
                (Some(v), Some((lo, hi))) => format!("{v:.1} [{lo:.1}–{hi:.1}]"),
                (v, _) => fmt_opt(v, 1),
            },
            match r.lossless_pct {
                Some(p) => format!("{p:.0}%"),
                None => "–".into(),
            },
        ));
    }
    s.push_str(
        "\ntokens/s is new tokens over the device-synchronised wall time of a sample, prefill included. \
         τ is tokens per target forward over decode steps, bonus token included (Spec-Bench's convention). \
         Draft ms/step is the time a step spent drafting before verification; decode ms/token is decode-step \
         wall time per emitted token, the cost-aware figure beside τ. \
         Speedup is the mean over prompts of tokens/s relative to `ar` on the same prompt and repeat. \
         Intervals are percentile bootstraps (2000 resamples) of the mean over prompts. \
         \"Equal to ar\" is, for lossless methods at greedy settings, the share of samples whose tokens equal `ar`'s; \
         other methods (lossy ones, or ones that decode with a model of their own) are not held to it.\n",
    );
    let canvas: Vec<&MethodRow> = rows
        .iter()
        .filter(|r| r.canvas_tokens_per_step.is_some())
        .collect();
    if !canvas.is_empty() {
        s.push_str("\n## Diffusion decoding\n\n| ");
        if multi {
            s.push_str("run | ");
        }
        s.push_str("method | forwards per sample | canvas tokens per step | decoding order τ |\n|");
        for _ in 0..if multi { 5 } else { 4 } {
            s.push_str("---|");
        }
        s.push('\n');
        for r in canvas {
            s.push_str("| ");
            if multi {
                s.push_str(&format!("{} | ", r.run_id));
            }
            s.push_str(&format!(
                "{} | {:.1} | {} | {} |\n",
                r.method,
                r.forwards_per_sample,
                fmt_opt(r.canvas_tokens_per_step, 2),
                fmt_opt(r.decoding_order_tau, 2),
            ));
        }
        s.push_str(
            "\nCanvas tokens per step: answer-canvas positions committed per forward, the fill after EOS \
             included (τ above counts only the answer's tokens). Decoding order τ: Kendall's τ-b between the \
             step that committed a position and the position; 1 is left to right.\n",
        );
    }
    s
}

/// What a reader must know before comparing the rows: which methods are
/// lossy or decode with a model of their own, and which runs are not
/// scored for quality.
fn honesty_notes(manifests: &[Manifest]) -> String {
    let mut lossy = Vec::new();
    let mut own = Vec::new();
    for m in manifests {
        for inst in &m.methods {
            let Ok(spec) = crate::methods::find(&inst.id) else {
                continue;
            };
            let own_model = spec.needs.iter().any(|n| {
                matches!(
                    n,
                    crate::methods::Need::TidarModel | crate::methods::Need::ConsistencyModel
                )
            });
            if own_model {
                own.push(format!("`{}`", inst.label));
            } else if spec.exactness == crate::methods::Exactness::Lossy {
                lossy.push(format!("`{}`", inst.label));
            }
        }
    }
    lossy.dedup();
    own.dedup();
    let mut s = String::new();
    if !lossy.is_empty() {
        s.push_str(&format!(
            "- Lossy: {} may emit other tokens than `ar`; judge their speed beside their score.\n",
            lossy.join(", ")
        ));
    }
    if !own.is_empty() {
        s.push_str(&format!(
            "- {} decode with a model of their own (its greedy AR output, not the target's).\n",
            own.join(", ")
        ));
    }
    let unscored: Vec<String> = manifests
        .iter()
        .filter(|m| {
            m.scoring
                .as_ref()
                .is_some_and(|sc| sc.scorer == "none" || sc.unscored_reason.is_some())
        })
        .map(|m| format!("`{}` ({})", m.run_id, m.suite.def.name))
        .collect();
    if !unscored.is_empty() {
        s.push_str(&format!(
            "- Not judged for quality: {} has no quality scorer; its rows compare speed only.\n",
            unscored.join(", ")
        ));
    }
    if s.is_empty() {
        s
    } else {
        format!("\n## Read with care\n\n{s}")
    }
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
        "% pdbench report: \\usepackage{booktabs}\n\\begin{table}[t]\n\\centering\n\\small\n\\begin{tabular}{lrrrll}\n\\toprule\n",
    );
    s.push_str("Method & $\\tau$ & tokens/s & TTFT (ms) & Speedup [95\\% CI] & Score [95\\% CI] \\\\\n\\midrule\n");
    for r in rows {
        let method = if manifests.len() > 1 {
            format!("{}/{}", esc(&r.run_id), esc(&r.method))
        } else {
            esc(&r.method)
        };
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
            "{method} & {} & {:.1} & {} & {speedup} & {score} \\\\\n",
            num(r.mean_accepted_tokens, 2),
            r.tokens_per_s_median,
            num(r.ttft_ms_median, 1),
        ));
    }
    s.push_str(&format!(
        "\\bottomrule\n\\end{{tabular}}\n\\caption{{{what}. $\\tau$: mean accepted tokens per target forward over decode steps, the bonus token included (Spec-Bench's convention). Tokens/s: median over samples, prefill included. Speedup: mean over prompts of tokens/s relative to AR on the same prompt, with a bootstrap 95\\% interval. Score $\\times 100$, with a bootstrap 95\\% interval.}}\n\\end{{table}}\n"
    ));
    s
}

/// Writes report.md, report.csv and tokens_per_s.{png,svg} into `out`.
pub fn write_report(runs: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let mut manifests = Vec::new();
    let mut rows = Vec::new();
    let mut pb_points = Vec::new();
    let mut by_category = Vec::new();
    for p in runs {
        let dir = RunDir::open(p)?;
        let m = dir.read_manifest()?;
        let df = read_samples_frame(&dir)?;
        let read_err = |e: PolarsError| ReportError::Read {
            path: dir.samples_path(),
            detail: e.to_string(),
        };
        let mut r = summarize(&m.run_id, &df).map_err(read_err)?;
        if let Some(t) = category_markdown(&df).map_err(read_err)? {
            by_category.push((m.run_id.clone(), t));
        }
        let (samples, _) = dir.read_samples()?;
        for row in &mut r {
            row.lossless_pct = crate::compare::lossless_rate_of(&m, &samples, &row.method);
        }
        pb_points.extend(parallelbench_points(&m, &df).map_err(read_err)?);
        rows.extend(r);
        manifests.push(m);
    }
    std::fs::create_dir_all(out).map_err(|source| ReportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, source }
    };
    let md = out.join("report.md");
    let mut text = markdown(&manifests, &rows);
    for (run_id, t) in &by_category {
        if by_category.len() > 1 {
            text.push_str(&format!("\n### run `{run_id}`\n"));
        }
        text.push_str(t);
    }
    text.push_str(&honesty_notes(&manifests));
    let mut files = vec![md.clone()];
    if !pb_points.is_empty() {
        text.push_str(&parallelbench_markdown(&pb_points));
        let (_, summaries) = stats::pb_scores(&pb_points, &[]);
        for (path, svg) in [
            (out.join("quality_speed.png"), false),
            (out.join("quality_speed.svg"), true),
        ] {
            let size = (1100, 720);
            let drawn = if svg {
                draw_quality_speed(SVGBackend::new(&path, size), &summaries)
            } else {
                draw_quality_speed(BitMapBackend::new(&path, size), &summaries)
            };
            drawn.map_err(|detail| ReportError::Plot {
                path: path.clone(),
                detail,
            })?;
            files.push(path);
        }
        text.push_str("\n![score against tokens per step](quality_speed.png)\n");
    }
    std::fs::write(&md, text).map_err(io(&md))?;
    let csv = out.join("report.csv");
    let mut frame = rows_frame(&rows).map_err(|e| ReportError::Read {
        path: csv.clone(),
        detail: e.to_string(),
    })?;
    let mut f = std::fs::File::create(&csv).map_err(io(&csv))?;
    CsvWriter::new(&mut f)
        .finish(&mut frame)
        .map_err(|e| ReportError::Read {
            path: csv.clone(),
            detail: e.to_string(),
        })?;
    let title = match manifests.as_slice() {
        [m] => format!(
            "{} on {} ({}, {} threads)",
            m.models.target.label, m.suite.def.name, m.device.name, m.device.threads
        ),
        _ => "pdbench runs".into(),
    };
    let png = out.join("tokens_per_s.png");
    let svg = out.join("tokens_per_s.svg");
    let labelled: Vec<(String, &MethodRow)> = rows
        .iter()
        .map(|r| {
            let l = if manifests.len() > 1 {
                format!("{}/{}", r.run_id, r.method)
            } else {
                r.method.clone()
            };
            (l, r)
        })
        .collect();
    let size = (960, 120 + 60 * labelled.len() as u32);
    draw_tokens_per_s(BitMapBackend::new(&png, size), &title, &labelled).map_err(|detail| {
        ReportError::Plot {
            path: png.clone(),
            detail,
        }
    })?;
    draw_tokens_per_s(SVGBackend::new(&svg, size), &title, &labelled).map_err(|detail| {
        ReportError::Plot {
            path: svg.clone(),
            detail,
        }
    })?;
    let tex = out.join("report.tex");
    std::fs::write(&tex, latex(&manifests, &rows)).map_err(io(&tex))?;
    files.extend([csv, png, svg, tex]);
    Ok(files)
}

/// The configurations on the Pareto front of (tokens per step, score):
/// none other is at least as fast and as good, and better in one.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| {
            let (x, y) = points[i];
            !points
                .iter()
                .any(|&(a, b)| a >= x && b >= y && (a > x || b > y))
        })
        .collect();
    front.sort_by(|&a, &b| points[a].0.total_cmp(&points[b].0));
    front
}

/// ParallelBench's plane: mean score against mean tokens per step, one
/// marker per configuration coloured by its family (the label without its
/// last `-` part), the Pareto front joined and labelled.
fn draw_quality_speed<DB: DrawingBackend>(
    backend: DB,
    configs: &[stats::ConfigSummary],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    register_fonts();
    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let pts: Vec<(f64, f64)> = configs
        .iter()
        .map(|c| (c.mean_tokens_per_step, c.mean_score_x100))
        .collect();
    let max_x = pts
        .iter()
        .map(|p| p.0)
        .filter(|x| x.is_finite())
        .fold(1.0, f64::max);
    let min_x = pts
        .iter()
        .map(|p| p.0)
        .filter(|x| x.is_finite() && *x > 0.0)
        .fold(1.0, f64::min);
    // The score axis starts below the lowest point (in tens), not at 0,
    // so that close scores stay apart.
    let min_y = pts
        .iter()
        .map(|p| p.1)
        .filter(|y| y.is_finite())
        .fold(100.0, f64::min);
    let min_y = (((min_y - 5.0) / 10.0).floor() * 10.0).clamp(0.0, 90.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Quality against parallelism (ParallelBench's plane)",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(65)
        .build_cartesian_2d((min_x * 0.7..max_x * 2.5).log_scale(), min_y..105.0)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&|x| format!("{x:.1}"))
        .x_desc("tokens per step (new tokens per target forward, log scale)")
        .y_desc("mean score over tasks (×100)")
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())?;
    let family = |c: &stats::ConfigSummary| -> String {
        let label = c.config.rsplit(" / ").next().unwrap_or(&c.config);
        match label.rsplit_once('-') {
            Some((f, _)) => f.to_string(),
            None => label.to_string(),
        }
    };
    let mut families: Vec<String> = configs.iter().map(family).collect();
    families.sort();
    families.dedup();
    for (k, fam) in families.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let series: Vec<(f64, f64)> = configs
            .iter()
            .zip(&pts)
            .filter(|(c, _)| &family(c) == fam)
            .map(|(_, &p)| p)
            .collect();
        chart
            .draw_series(series.iter().map(|&p| Circle::new(p, 6, color.filled())))
            .map_err(|e| e.to_string())?
            .label(fam.clone())
            .legend(move |(x, y)| Circle::new((x + 8, y), 6, color.filled()));
    }
    let front = pareto_front(&pts);
    chart
        .draw_series(LineSeries::new(
            front.iter().map(|&i| pts[i]),
            BLACK.stroke_width(1),
        ))
        .map_err(|e| e.to_string())?;
    // Configurations at one point share a label.
    let mut labelled: Vec<(usize, usize)> = Vec::new();
    for &i in &front {
        match labelled.iter_mut().find(|(j, _)| pts[*j] == pts[i]) {
            Some((_, n)) => *n += 1,
            None => labelled.push((i, 0)),
        }
    }
    chart
        .draw_series(labelled.iter().map(|&(i, more)| {
            let name = configs[i]
                .config
                .rsplit(" / ")
                .next()
                .unwrap_or(&configs[i].config);
            let label = if more > 0 {
                format!("{name} (+{more} here)")
            } else {
                name.to_string()
            };
            Text::new(label, (pts[i].0 * 1.04, pts[i].1 + 1.5), ("sans-serif", 13))
        }))
        .map_err(|e| e.to_string())?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// plotters draws text with ab_glyph, which needs the font bytes; DejaVu
/// Sans ships in assets/ so charts render the same everywhere.
fn register_fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// Horizontal bars of median tokens/s with IQR whiskers, one per method.
fn draw_tokens_per_s<DB: DrawingBackend>(
    backend: DB,
    title: &str,
    rows: &[(String, &MethodRow)],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    register_fonts();
    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let max_x = rows
        .iter()
        .map(|(_, r)| r.tokens_per_s_q75.max(r.tokens_per_s_median))
        .filter(|x| x.is_finite())
        .fold(1.0f64, f64::max)
        * 1.15;
    let n = rows.len();
    let label_width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(4) as u32 * 9 + 20;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(label_width.clamp(60, 360))
        .build_cartesian_2d(0f64..max_x, (0..n).into_segmented())
        .map_err(|e| e.to_string())?;
    let labels: Vec<String> = rows.iter().map(|(l, _)| l.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("tokens/s (median, whiskers: interquartile range)")
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())?;
    let color = RGBColor(52, 101, 164);
    chart
        .draw_series(rows.iter().enumerate().map(|(i, (_, r))| {
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (r.tokens_per_s_median, SegmentValue::Exact(i + 1)),
                ],
                color.mix(0.75).filled(),
            );
            bar.set_margin(10, 10, 0, 0);
            bar
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, (_, r))| {
            PathElement::new(
                vec![
                    (r.tokens_per_s_q25, SegmentValue::CenterOf(i)),
                    (r.tokens_per_s_q75, SegmentValue::CenterOf(i)),
                ],
                BLACK.stroke_width(2),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, (_, r))| {
            Text::new(
                format!("{:.1}", r.tokens_per_s_median),
                (
                    r.tokens_per_s_q75.max(r.tokens_per_s_median) + max_x * 0.01,
                    SegmentValue::CenterOf(i),
                ),
                ("sans-serif", 15),
            )
        }))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallelbench_section_lists_configurations_and_pbx() {
        let pt = |config: &str, task: &str, score: f64, tps: f64| stats::TaskPoint {
            config: config.into(),
            task: task.into(),
            score_x100: score,
            tokens_per_step: tps,
        };
        let md = parallelbench_markdown(&[
            pt("m / ar", "parallelbench/waiting_line/copy", 100.0, 1.0),
            pt("m / ar", "parallelbench/waiting_line/sort", 70.0, 1.0),
            pt("m / fast", "parallelbench/waiting_line/copy", 60.0, 3.5),
        ]);
        assert!(md.contains("2 task(s)"), "{md}");
        assert!(md.contains("| m / ar | 2 | 85.0 | 1.00 |"), "{md}");
        assert!(
            md.contains("| m / fast | 1 (incomplete: not in PBx) | 60.0 | 3.50 |"),
            "{md}"
        );
        assert!(
            md.contains("PB90 = –, PB80 = 1.00, PB70 = 1.00, PB60 = 1.00"),
            "{md}"
        );
    }
}
