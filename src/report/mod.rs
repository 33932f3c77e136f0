//! `pdbench report`: tables and figures from results folders. It reads
//! files only and never loads a model.

mod plot;
mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::prelude::*;

use crate::results::{Manifest, ResultsError, RunDir};
use crate::stats;

pub use plot::{family, pareto_front};
pub use table::{summarize, MethodRow, StepStats};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error("{path}: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error("{path}: the same run is given twice (as {first}); each run's rows would show twice")]
    SameRunTwice { path: PathBuf, first: PathBuf },
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("chart {path}: {detail}")]
    Plot { path: PathBuf, detail: String },
    #[error("no samples in {0}; nothing to report")]
    Empty(String),
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
        Field::new("joules_per_token".into(), DataType::Float64),
        Field::new("mean_watts".into(), DataType::Float64),
        Field::new("peak_rss_bytes".into(), DataType::Int64),
        Field::new("peak_gpu_mem_bytes".into(), DataType::Int64),
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
    let c = table::Cols::read(df)?;
    let ar = c.baseline_tokens_per_s(crate::methods::baseline_label(&m.methods));
    // Per (method, task): scores, tokens per forward, speedups.
    type Series = (Vec<f64>, Vec<f64>, Vec<f64>);
    let mut by: BTreeMap<(&str, &str), Series> = BTreeMap::new();
    for i in 0..c.method.len() {
        let task = if per_category {
            c.category[i].as_str()
        } else {
            suite.as_str()
        };
        let e = by.entry((c.method[i].as_str(), task)).or_default();
        if let Some(sc) = c.score[i] {
            e.0.push(100.0 * sc);
        }
        if let (Some(t), Some(calls)) = (c.tokens[i], c.calls[i]) {
            if calls > 0.0 {
                e.1.push(t / calls);
            }
        }
        if let Some(r) = c.speedup(&ar, i) {
            e.2.push(r);
        }
    }
    Ok(by
        .into_iter()
        .filter_map(|((label, task), (sc, tpf, speedup))| {
            Some(stats::TaskPoint {
                config: format!("{} / {label}", m.models.target.label),
                task: task.to_string(),
                score_x100: stats::mean(&sc)?,
                tokens_per_step: stats::mean(&tpf)?,
                speedup: stats::geometric_mean(&speedup),
            })
        })
        .collect())
}

/// PBx thresholds the report states.
const PB_THRESHOLDS: [f64; 4] = [90.0, 80.0, 70.0, 60.0];

/// The method label of a ParallelBench configuration (`model / label`).
fn config_label(config: &str) -> &str {
    config.rsplit(" / ").next().unwrap_or(config)
}

/// AUP per family of configurations (complete ones), with the points it
/// kept and the family's points; y_max is the best mean score of all.
fn aup_by_family(summaries: &[stats::ConfigSummary]) -> Vec<(String, f64, usize, usize)> {
    let complete: Vec<&stats::ConfigSummary> = summaries.iter().filter(|c| c.complete).collect();
    let y_max = complete
        .iter()
        .map(|c| c.mean_score_x100)
        .filter(|y| y.is_finite())
        .fold(f64::MIN, f64::max);
    let mut by: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for c in &complete {
        by.entry(family(config_label(&c.config)))
            .or_default()
            .push((c.mean_tokens_per_step, c.mean_score_x100));
    }
    by.into_iter()
        .filter_map(|(f, pts)| {
            let (score, kept) = stats::aup(&pts, y_max, 3.0, 5.0)?;
            Some((f, score, kept, pts.len()))
        })
        .collect()
}

/// The ParallelBench section: per-configuration averages and PBx.
pub fn parallelbench_markdown(points: &[stats::TaskPoint]) -> String {
    let tasks: std::collections::BTreeSet<&str> = points.iter().map(|p| p.task.as_str()).collect();
    let (pb, summaries) = stats::pb_scores(points, &PB_THRESHOLDS);
    let mut s = format!(
        "\n## ParallelBench\n\n{} task(s). Score: the mean over tasks of each task's mean score (×100). Tokens per step: new tokens over target forwards, from token ids, averaged per task, then over tasks. Speedup: wall-clock tokens/s over `ar`'s on the same prompts, the geometric mean per task, then over tasks. A configuration is a model and method label: runs of one configuration pool (each ParallelBench task is a run of its own).\n\n| configuration | tasks | mean score | tokens per step | speedup vs ar |\n|---|---|---|---|---|\n",
        tasks.len()
    );
    for c in &summaries {
        s.push_str(&format!(
            "| {} | {}{} | {:.1} | {:.2} | {} |\n",
            c.config,
            c.tasks,
            if c.complete {
                ""
            } else {
                " (incomplete: not in PBx)"
            },
            c.mean_score_x100,
            c.mean_tokens_per_step,
            c.mean_speedup.map_or("–".into(), |v| format!("{v:.2}×")),
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
    let aup = aup_by_family(&summaries);
    if !aup.is_empty() {
        s.push_str("\nAUP (d3LLM's accuracy under parallelism) per family of configurations: the area under its score against tokens per step, each point weighted by min(exp(−3(1 − y/y_max)), 1), y_max the best mean score here; points more than 5 below the family's score at its lowest parallelism are left out. Higher is better; a single configuration scores tokens per step × score.\n\n| family | AUP | points kept |\n|---|---|---|\n");
        for (f, score, kept, n) in &aup {
            s.push_str(&format!("| {f} | {score:.1} | {kept} of {n} |\n"));
        }
    }
    s
}

/// What a reader must know before comparing the rows: which methods are
/// lossy or decode with a model of their own, and which runs are not
/// scored for quality.
fn honesty_notes(manifests: &[Manifest], coverage: &[Coverage]) -> String {
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
    for m in manifests {
        match crate::methods::baseline_label(&m.methods) {
            None => s.push_str(&format!(
                "- `{}` has no `ar`, so no speedups; add `--method ar` for a baseline.\n",
                m.run_id
            )),
            Some(b) if crate::methods::greedy_baseline_label(&m.methods).is_none() => {
                s.push_str(&format!(
                    "- `{}`: speedups are over `{b}`, which samples; no method is held to greedy `ar` tokens.\n",
                    m.run_id
                ))
            }
            Some(_) => {}
        }
    }
    for (m, c) in manifests.iter().zip(coverage) {
        let torn = if c.torn {
            "; its last line is torn (a crash mid-write) and is left out"
        } else {
            ""
        };
        if m.status == crate::results::RunStatus::Complete && (c.done < c.expected || c.torn) {
            s.push_str(&format!(
                "- `{}` is marked complete, yet its samples.jsonl holds {} of the {} work items (method × prompt × repeat) its manifest lists{torn}: records were lost after the run; its rows cover what is left.\n",
                m.run_id, c.done, c.expected
            ));
        } else if m.status != crate::results::RunStatus::Complete {
            let missing = if c.without_samples.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} not started, so not in the tables)",
                    c.without_samples.join(", ")
                )
            };
            s.push_str(&format!(
                "- `{}` is {}: {} of {} work items (method × prompt × repeat) done{missing}{torn}; `pdbench run --resume` completes it.\n",
                m.run_id,
                m.status.as_str(),
                c.done,
                c.expected
            ));
        }
    }
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
    // Bit-exactness with `ar` is by construction only on the CPU in f32.
    let inexact: Vec<String> = manifests
        .iter()
        .filter(|m| m.device.name != "cpu" || m.models.target.dtype != "f32")
        .map(|m| {
            format!(
                "`{}` ({}, {})",
                m.run_id, m.device.name, m.models.target.dtype
            )
        })
        .collect();
    if !inexact.is_empty() {
        s.push_str(&format!(
            "- Equal to ar: on {}, a verify forward of several rows may round differently from `ar`'s one-row steps, so a lossless method's rate below 100% can come from near ties; `pdbench check --device …` tells ties from bugs.\n",
            inexact.join(", ")
        ));
    }
    if s.is_empty() {
        s
    } else {
        format!("\n## Read with care\n\n{s}")
    }
}

/// How much of its work a run's samples.jsonl holds.
struct Coverage {
    done: usize,
    expected: usize,
    torn: bool,
    /// Labels of the manifest with no sample yet: absent from the tables.
    without_samples: Vec<String>,
}

/// Writes report.md, report.csv, report.parquet, report.tex and the
/// figures (PNG and SVG) into `out`.
pub fn write_report(runs: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>, ReportError> {
    for (i, p) in runs.iter().enumerate() {
        let same = |q: &PathBuf| match (std::fs::canonicalize(p), std::fs::canonicalize(q)) {
            (Ok(a), Ok(b)) => a == b,
            _ => p == q,
        };
        if let Some(first) = runs[..i].iter().find(|q| same(q)) {
            return Err(ReportError::SameRunTwice {
                path: p.clone(),
                first: first.clone(),
            });
        }
    }
    let mut manifests = Vec::new();
    let mut interference = Vec::new();
    let mut coverage = Vec::new();
    let mut rows = Vec::new();
    let mut pb_points = Vec::new();
    let mut by_category = Vec::new();
    for p in runs {
        let dir = RunDir::open(p)?;
        let m = dir.read_manifest()?;
        // The record reader first: its errors name the line.
        let (samples, torn) = dir.read_samples()?;
        coverage.push(Coverage {
            done: crate::results::work_items_done(&samples),
            expected: m.work_items(),
            torn,
            without_samples: m
                .methods
                .iter()
                .filter(|i| !samples.iter().any(|s| s.method == i.label))
                .map(|i| format!("`{}`", i.label))
                .collect(),
        });
        let df = read_samples_frame(&dir)?;
        let read_err = |e: PolarsError| ReportError::Read {
            path: dir.samples_path(),
            detail: e.to_string(),
        };
        let r = summarize(&m, &df, &samples).map_err(read_err)?;
        let t = table::category_markdown(&r);
        if !t.is_empty() {
            by_category.push((m.run_id.clone(), t));
        }
        pb_points.extend(parallelbench_points(&m, &df).map_err(read_err)?);
        rows.extend(r);
        interference.push(crate::results::interference_by_method(&m, &samples));
        manifests.push(m);
    }
    std::fs::create_dir_all(out).map_err(|source| ReportError::Io {
        path: out.to_path_buf(),
        cause: source,
    })?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io {
            path,
            cause: source,
        }
    };
    let plot_err = |(path, detail): (PathBuf, String)| ReportError::Plot { path, detail };
    let multi = manifests.len() > 1;
    let alerts: Vec<String> = manifests
        .iter()
        .zip(&interference)
        .filter_map(|(m, sums)| {
            let hit: Vec<String> = sums
                .iter()
                .filter(|(_, x)| x.disturbed())
                .map(|(l, x)| format!("{l} {:.1}%", x.interference_pct))
                .collect();
            (!hit.is_empty()).then(|| {
                format!(
                    "Run `{}` was disturbed by the host: {} of the thread time lost (threshold {}%). Its speedups may be the host's, not the methods'; re-run on a quiet machine or with fewer --threads (see Host interference).",
                    m.run_id,
                    hit.join(", "),
                    crate::measure::interference::DISTURBED_PCT
                )
            })
        })
        .collect();
    let mut text = table::markdown(&manifests, &rows, &alerts);
    for (run_id, t) in &by_category {
        // Several runs: each run's section names it in its own heading.
        let heading = "\n## By category (Spec-Bench's table)\n";
        if by_category.len() > 1 {
            if t.starts_with(heading) {
                text.push_str(&t.replacen(
                    heading,
                    &format!("\n## By category (Spec-Bench's table): run `{run_id}`\n"),
                    1,
                ));
            } else {
                text.push_str(&format!("\n## By category: run `{run_id}`\n"));
                text.push_str(t);
            }
        } else {
            text.push_str(t);
        }
    }
    text.push_str(&table::energy_markdown(&manifests, &rows));
    text.push_str(&table::interference_markdown(
        &manifests.iter().zip(interference).collect::<Vec<_>>(),
    ));
    text.push_str(&honesty_notes(&manifests, &coverage));
    let md = out.join("report.md");
    let mut files = vec![md.clone()];

    // Figures over every category.
    let title = match manifests.as_slice() {
        [m] => format!("{} on {}", m.models.target.label, m.suite.def.name),
        _ => "pdbench runs".into(),
    };
    let overall: Vec<(String, &MethodRow)> = rows
        .iter()
        .filter(|r| r.category.is_none())
        .map(|r| (table::row_label(r, multi), r))
        .collect();
    let mut figures: Vec<(&str, String)> = Vec::new();
    files.extend(
        plot::render(
            out,
            "tokens_per_s",
            &plot::HBars::tokens_per_s(&title, &overall),
        )
        .map_err(plot_err)?,
    );
    figures.push((
        "tokens_per_s",
        format!(
            "Median tokens/s per method, whiskers the interquartile range ({}, {} threads).",
            manifests[0].device.name, manifests[0].device.threads
        ),
    ));
    if let Some(f) = plot::HBars::speedup(&title, &overall) {
        files.extend(plot::render(out, "speedup", &f).map_err(plot_err)?);
        figures.push(("speedup", "Speedup over `ar`, paired by prompt, with bootstrap 95% intervals; the red line is 1×.".into()));
    }
    if let Some(f) = plot::Stacked::tau_distribution(&title, &overall) {
        files.extend(plot::render(out, "tau_distribution", &f).map_err(plot_err)?);
        figures.push((
            "tau_distribution",
            "The distribution behind τ: decode steps by the tokens one target forward added."
                .into(),
        ));
    }
    if let Some(f) = plot::Acceptance::new(&title, &overall) {
        files.extend(plot::render(out, "acceptance_by_position", &f).map_err(plot_err)?);
        figures.push((
            "acceptance_by_position",
            "Acceptance by draft position, given the earlier positions were accepted.".into(),
        ));
    }
    if let Some(f) = plot::Stacked::step_time(&title, &overall) {
        files.extend(plot::render(out, "step_time", &f).map_err(plot_err)?);
        figures.push(("step_time", "Mean decode step split into drafting and verification, with τ: a method pays off when τ outgrows its step's cost over `ar`'s.".into()));
    }
    if !pb_points.is_empty() {
        text.push_str(&parallelbench_markdown(&pb_points));
        let (pb, summaries) = stats::pb_scores(&pb_points, &PB_THRESHOLDS);
        let aup = aup_by_family(&summaries);
        let point = |c: &stats::ConfigSummary, x: f64| plot::PlanePoint {
            label: config_label(&c.config).to_string(),
            family: family(config_label(&c.config)),
            x,
            y: c.mean_score_x100,
        };
        // PBx marks that share a value share one mark.
        let mut marks: Vec<(Vec<f64>, f64)> = Vec::new();
        for (x, v) in pb.iter().filter_map(|(x, v)| Some((*x, (*v)?))) {
            match marks.iter_mut().find(|(_, w)| *w == v) {
                Some((ts, _)) => ts.push(x),
                None => marks.push((vec![x], v)),
            }
        }
        let plane = plot::Plane {
            title: "Quality against parallelism (ParallelBench's plane)".into(),
            x_desc: "tokens per step (new tokens per target forward, log scale)".into(),
            points: summaries
                .iter()
                .map(|c| point(c, c.mean_tokens_per_step))
                .collect(),
            pbx: marks,
            family_notes: aup
                .iter()
                .map(|(f, a, _, _)| (f.clone(), format!("(AUP {a:.0})")))
                .collect(),
        };
        files.extend(plot::render(out, "quality_speed", &plane).map_err(plot_err)?);
        figures.push(("quality_speed", "Mean score against tokens per step, the Pareto front joined, PBx marked, AUP per family in the legend.".into()));
        if summaries
            .iter()
            .filter(|c| c.mean_speedup.is_some())
            .count()
            > 1
        {
            let wall = plot::Plane {
                title: "Quality against wall-clock speedup".into(),
                x_desc: "speedup over ar (tokens/s ratio on the same prompts, log scale)".into(),
                points: summaries
                    .iter()
                    .filter_map(|c| Some(point(c, c.mean_speedup?)))
                    .collect(),
                pbx: vec![],
                family_notes: vec![],
            };
            files.extend(plot::render(out, "quality_wallclock", &wall).map_err(plot_err)?);
            figures.push(("quality_wallclock", "Mean score against wall-clock speedup on this device: what tokens per step buys once each step's cost is paid.".into()));
        }
    }
    text.push_str("\n## Figures\n");
    for (stem, caption) in &figures {
        text.push_str(&format!(
            "\n![{stem}]({stem}.png)\n\n{caption} ({stem}.png, {stem}.svg)\n"
        ));
    }
    std::fs::write(&md, text).map_err(io(&md))?;

    let table_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: PolarsError| ReportError::Read {
            path,
            detail: e.to_string(),
        }
    };
    let csv = out.join("report.csv");
    let mut frame = table::rows_frame(&rows).map_err(table_err(&csv))?;
    let mut f = std::fs::File::create(&csv).map_err(io(&csv))?;
    CsvWriter::new(&mut f)
        .finish(&mut frame)
        .map_err(table_err(&csv))?;
    let parquet = out.join("report.parquet");
    let f = std::fs::File::create(&parquet).map_err(io(&parquet))?;
    ParquetWriter::new(f)
        .finish(&mut frame)
        .map_err(table_err(&parquet))?;
    let tex = out.join("report.tex");
    std::fs::write(&tex, table::latex(&manifests, &rows)).map_err(io(&tex))?;
    files.extend([csv, parquet, tex]);
    Ok(files)
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
            speedup: None,
        };
        let md = parallelbench_markdown(&[
            pt("m / ar", "parallelbench/waiting_line/copy", 100.0, 1.0),
            pt("m / ar", "parallelbench/waiting_line/sort", 70.0, 1.0),
            pt("m / fast", "parallelbench/waiting_line/copy", 60.0, 3.5),
        ]);
        assert!(md.contains("2 task(s)"), "{md}");
        assert!(md.contains("| m / ar | 2 | 85.0 | 1.00 | – |"), "{md}");
        assert!(
            md.contains("| m / fast | 1 (incomplete: not in PBx) | 60.0 | 3.50 | – |"),
            "{md}"
        );
        assert!(
            md.contains("PB90 = –, PB80 = 1.00, PB70 = 1.00, PB60 = 1.00"),
            "{md}"
        );
    }
}
