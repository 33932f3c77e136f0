//! `pdbench compare BASE NEW`: a verdict per method and metric for nightly
//! CI, by criterion's rule. The relative change of a time figure gets a
//! bootstrap confidence interval (prompts resampled, paired where both runs
//! hold the same prompts); it counts as improved or regressed only when the
//! whole interval lies beyond the noise threshold. Any drop in the
//! lossless rate, or a score drop beyond a set number of points, is a
//! regression. Reads results files only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::results::{Manifest, RunDir, SampleRecord};

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Results(#[from] crate::results::ResultsError),
    #[error("{base} and {new} are not comparable: {reasons}; pass --force to compare them anyway")]
    NotComparable {
        base: String,
        new: String,
        reasons: String,
    },
    #[error("not comparable: host interference: {runs} (above --max-interference {threshold_pct}%; the host took run-queue or steal time while these samples were timed); re-run on a quiet machine, or with fewer --threads, or pass --force to compare them anyway{also}")]
    Interference {
        runs: String,
        threshold_pct: f64,
        also: String,
    },
    #[error("{base} holds no samples of the methods both runs name; there is nothing to compare against")]
    EmptyBase { base: String },
    #[error("{base} and {new} share no method label ({base_labels} vs {new_labels}); nothing to compare")]
    NothingShared {
        base: String,
        new: String,
        base_labels: String,
        new_labels: String,
    },
    #[error("writing {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// The rule's settings.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Relative change a time figure must clear, whole CI, to count (0.03).
    pub noise: f64,
    /// Score points (×100) a mean may drop before it is a regression.
    pub score_drop_points: f64,
    pub resamples: usize,
    /// Confidence level of the interval (0.95).
    pub level: f64,
    pub seed: u64,
    /// Percent of a method's thread time the host may take before its run
    /// is not comparable.
    pub max_interference_pct: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            noise: 0.03,
            score_drop_points: 1.0,
            resamples: 2000,
            level: 0.95,
            seed: 0,
            max_interference_pct: crate::measure::interference::DISTURBED_PCT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Improved,
    NoChange,
    Regressed,
    /// Too few prompts for an interval that means anything.
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Improved => "improved",
            Verdict::NoChange => "no change",
            Verdict::Regressed => "regressed",
            Verdict::Inconclusive => "too few prompts",
        }
    }
}

/// One method's metric in both runs.
#[derive(Debug, Clone, Serialize)]
pub struct MetricChange {
    pub method: String,
    pub metric: &'static str,
    pub base: f64,
    pub new: f64,
    /// Relative change (new / base − 1) for time figures, the difference
    /// in points for scores and rates.
    pub change: f64,
    /// The change's bootstrap interval, for time figures.
    pub ci: Option<(f64, f64)>,
    pub verdict: Verdict,
}

/// The bootstrap interval of `mean(new) / mean(base) − 1`. Paired: `base`
/// and `new` are the same prompts in the same order, resampled together;
/// otherwise each run is resampled on its own. Returns (estimate, low,
/// high). Pure: the same seed gives the same interval.
pub fn bootstrap_relative_change(
    base: &[f64],
    new: &[f64],
    paired: bool,
    resamples: usize,
    level: f64,
    seed: u64,
) -> Option<(f64, f64, f64)> {
    use rand::{Rng, SeedableRng};
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    if base.is_empty() || new.is_empty() || (paired && base.len() != new.len()) {
        return None;
    }
    let (mb, mn) = (mean(base), mean(new));
    if mb <= 0.0 {
        return None;
    }
    let estimate = mn / mb - 1.0;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let mut stats = Vec::with_capacity(resamples);
    for _ in 0..resamples.max(1) {
        let (mut sb, mut sn) = (0.0, 0.0);
        if paired {
            for _ in 0..base.len() {
                let i = rng.random_range(0..base.len());
                sb += base[i];
                sn += new[i];
            }
            sb /= base.len() as f64;
            sn /= new.len() as f64;
        } else {
            for _ in 0..base.len() {
                sb += base[rng.random_range(0..base.len())];
            }
            for _ in 0..new.len() {
                sn += new[rng.random_range(0..new.len())];
            }
            sb /= base.len() as f64;
            sn /= new.len() as f64;
        }
        if sb > 0.0 {
            stats.push(sn / sb - 1.0);
        }
    }
    let alpha = (1.0 - level) / 2.0;
    let lo = crate::stats::quantile(&stats, alpha)?;
    let hi = crate::stats::quantile(&stats, 1.0 - alpha)?;
    Some((estimate, lo, hi))
}

/// Criterion's rule on a relative change where `higher_is_better` says
/// which way is good: improved or regressed only when the whole interval
/// lies beyond `noise` on that side.
pub fn time_verdict(lo: f64, hi: f64, noise: f64, higher_is_better: bool) -> Verdict {
    let (good_lo, good_hi) = if higher_is_better {
        (lo, hi)
    } else {
        (-hi, -lo)
    };
    if good_lo > noise {
        Verdict::Improved
    } else if good_hi < -noise {
        Verdict::Regressed
    } else {
        Verdict::NoChange
    }
}

/// Why two runs do not compare, if they do not.
pub fn comparability(base: &Manifest, new: &Manifest) -> Vec<String> {
    let mut why = Vec::new();
    let files = |m: &Manifest| -> Vec<String> {
        m.models
            .target
            .files
            .iter()
            .map(|f| f.sha256.clone())
            .collect()
    };
    if files(base) != files(new) {
        why.push(format!(
            "the target models differ by sha256 ({} vs {})",
            base.models.target.spec, new.models.target.spec
        ));
    }
    if base.suite.def.name != new.suite.def.name || base.suite.def.version != new.suite.def.version
    {
        why.push(format!(
            "the suites differ ({} v{} vs {} v{})",
            base.suite.def.name, base.suite.def.version, new.suite.def.name, new.suite.def.version
        ));
    } else if base.suite.data_sha256 != new.suite.data_sha256 {
        why.push(format!(
            "suite {}'s data differ by sha256",
            base.suite.def.name
        ));
    }
    if base.device.name != new.device.name || base.device.threads != new.device.threads {
        // An automatic choice matches only the same choice.
        let how = |m: &Manifest| match &m.threads_choice {
            Some(c) if c.how == crate::measure::threads::ThreadsHow::Automatic => " (automatic)",
            _ => "",
        };
        why.push(format!(
            "the devices differ ({} with {} threads{} vs {} with {} threads{})",
            base.device.name,
            base.device.threads,
            how(base),
            new.device.name,
            new.device.threads,
            how(new)
        ));
    }
    if base.max_new_tokens != new.max_new_tokens {
        why.push(format!(
            "max_new_tokens differs ({} vs {})",
            base.max_new_tokens, new.max_new_tokens
        ));
    }
    if base.dtype != new.dtype {
        why.push(format!(
            "the dtypes differ ({} vs {})",
            base.dtype, new.dtype
        ));
    }
    // Runs over different prompt sets: a shorter new run would show only
    // as missing samples, with no reason given.
    // The prompts run, however --limit spelled them (none and 400 on a
    // 300-prompt suite are the same 300).
    if base.prompts() != new.prompts() {
        let limit = |m: &Manifest| m.limit.map_or("all".to_string(), |n| n.to_string());
        why.push(format!(
            "--limit differs ({} vs {}: {} vs {} prompts)",
            limit(base),
            limit(new),
            base.prompts(),
            new.prompts()
        ));
    }
    if base.repeats != new.repeats {
        why.push(format!(
            "--repeats differs ({} vs {})",
            base.repeats, new.repeats
        ));
    }
    let shard = |m: &Manifest| {
        m.shard.map_or("whole run".to_string(), |s| {
            format!("shard {}/{}", s.index + 1, s.count)
        })
    };
    if base.shard != new.shard {
        why.push(format!(
            "the shards differ ({} vs {}; merge the shards first)",
            shard(base),
            shard(new)
        ));
    }
    why
}

/// Labels both runs hold whose resolved parameters differ: compared, but
/// the summary says so.
pub fn changed_params(base: &Manifest, new: &Manifest) -> Vec<String> {
    base.methods
        .iter()
        .filter_map(|b| {
            let n = new.methods.iter().find(|n| n.label == b.label)?;
            (b.id != n.id || b.params != n.params).then(|| {
                format!(
                    "`{}` ({} {} vs {} {})",
                    b.label, b.id, b.params, n.id, n.params
                )
            })
        })
        .collect()
}

/// Per label, the samples keyed by (sample id, repeat, turn).
pub(crate) type ByMethod = BTreeMap<String, BTreeMap<(String, usize, usize), SampleRecord>>;

pub(crate) fn by_method(samples: Vec<SampleRecord>) -> ByMethod {
    let mut out: ByMethod = BTreeMap::new();
    for s in samples {
        out.entry(s.method.clone())
            .or_default()
            .insert((s.sample_id.clone(), s.repeat, s.turn), s);
    }
    out
}

/// The share of a lossless method's samples whose tokens equal `ar`'s in
/// the same run, in percent; `None` without a greedy `ar` to compare with
/// or for methods not registered as lossless.
pub(crate) fn lossless_rate(m: &Manifest, runs: &ByMethod, label: &str) -> Option<f64> {
    lossless_rate_over(m, runs, label, |_| true)
}

/// [`lossless_rate`] over the samples whose keys `keep` accepts.
fn lossless_rate_over(
    m: &Manifest,
    runs: &ByMethod,
    label: &str,
    keep: impl Fn(&(String, usize, usize)) -> bool,
) -> Option<f64> {
    let inst = m.methods.iter().find(|i| i.label == label)?;
    let spec = crate::methods::find(&inst.id).ok()?;
    // Methods that decode with a model of their own (TiDAR's) match that
    // model's AR, not the run's `ar`.
    let own_model = spec.needs.iter().any(|n| {
        matches!(
            n,
            crate::methods::Need::TidarModel | crate::methods::Need::ConsistencyModel
        )
    });
    if spec.exactness != crate::methods::Exactness::Lossless || inst.id == "ar" || own_model {
        return None;
    }
    let greedy = |p: &serde_json::Value| p["temperature"].as_f64().unwrap_or(0.0) <= 0.0;
    if !greedy(&inst.params) {
        return None;
    }
    let ar = runs.get(crate::methods::greedy_baseline_label(&m.methods)?)?;
    let mine = runs.get(label)?;
    let pairs: Vec<bool> = mine
        .iter()
        .filter(|(k, _)| keep(k))
        .filter_map(|(k, s)| ar.get(k).map(|a| a.output_ids == s.output_ids))
        .collect();
    (!pairs.is_empty())
        .then(|| 100.0 * pairs.iter().filter(|&&x| x).count() as f64 / pairs.len() as f64)
}

/// [`lossless_rate`] of one method from a run's samples.
pub fn lossless_rate_of(m: &Manifest, samples: &[SampleRecord], label: &str) -> Option<f64> {
    lossless_rate(m, &by_method(samples.to_vec()), label)
}

/// The method column of rows about the whole run.
pub const RUN_ROW: &str = "(run)";

fn is_time_metric(metric: &str) -> bool {
    TIME_METRICS.iter().any(|m| m.0 == metric)
}

/// Fewer prompts than this give a time figure no verdict: a bootstrap
/// over one or a few prompts yields a narrow interval that is mostly noise.
pub const MIN_PROMPTS: usize = 5;

/// Time (and energy) figures: (metric, value of a sample, higher is
/// better). Energy is compared only where both runs recorded it.
type TimeMetric = (&'static str, fn(&SampleRecord) -> Option<f64>, bool);

const TIME_METRICS: &[TimeMetric] = &[
    ("tokens_per_s", |s| Some(s.tokens_per_s), true),
    ("ttft_ms", |s| s.ttft_ns.map(|t| t as f64 / 1e6), false),
    ("decode_ms_per_token", |s| s.decode_ms_per_token, false),
    ("joules_per_token", |s| s.joules_per_token, false),
];

/// Every method label of the base run, compared metric by metric with the
/// new run. A base sample the new run lacks (a method dropped, a run cut
/// short) is a regression of `samples`: a nightly run that lost work must
/// not pass.
pub fn compare_runs(
    base_m: &Manifest,
    base: Vec<SampleRecord>,
    new_m: &Manifest,
    new: Vec<SampleRecord>,
    t: Thresholds,
) -> Vec<MetricChange> {
    let (base, new) = (by_method(base), by_method(new));
    let empty = BTreeMap::new();
    let mut out = Vec::new();
    // A new run that did not finish fails, even against a base run that
    // did not either: its missing samples would otherwise go unseen.
    let complete =
        |m: &Manifest| f64::from(u8::from(m.status == crate::results::RunStatus::Complete));
    out.push(MetricChange {
        method: RUN_ROW.into(),
        metric: "complete",
        base: complete(base_m),
        new: complete(new_m),
        change: complete(new_m) - complete(base_m),
        ci: None,
        verdict: if complete(new_m) < 1.0 {
            Verdict::Regressed
        } else if complete(base_m) < 1.0 {
            Verdict::Improved
        } else {
            Verdict::NoChange
        },
    });
    for (label, b) in &base {
        let n = new.get(label).unwrap_or(&empty);
        // `samples`: the base run's samples, and how many of them the new
        // run holds too.
        let missing = b.keys().filter(|k| !n.contains_key(*k)).count();
        out.push(MetricChange {
            method: label.clone(),
            metric: "samples",
            base: b.len() as f64,
            new: (b.len() - missing) as f64,
            change: -(missing as f64),
            ci: None,
            verdict: if missing > 0 {
                Verdict::Regressed
            } else {
                Verdict::NoChange
            },
        });
        if n.is_empty() {
            continue;
        }
        // Paired over the samples both runs decoded; a prompt's repeats and
        // turns are averaged, so the bootstrap resamples prompts.
        let shared: Vec<&(String, usize, usize)> =
            b.keys().filter(|k| n.contains_key(*k)).collect();
        let paired = !shared.is_empty();
        for (i, &(metric, value, higher)) in TIME_METRICS.iter().enumerate() {
            let (xs, ys) = if paired {
                let both: Vec<(&String, f64, f64)> = shared
                    .iter()
                    .filter_map(|k| Some((&k.0, value(&b[*k])?, value(&n[*k])?)))
                    .collect();
                (
                    crate::stats::cluster_means(both.iter().map(|(p, x, _)| (*p, *x))),
                    crate::stats::cluster_means(both.iter().map(|(p, _, y)| (*p, *y))),
                )
            } else {
                let per_prompt = |r: &BTreeMap<(String, usize, usize), SampleRecord>| {
                    crate::stats::cluster_means(
                        r.iter().filter_map(|(k, s)| Some((k.0.clone(), value(s)?))),
                    )
                };
                (per_prompt(b), per_prompt(n))
            };
            if xs.is_empty() || ys.is_empty() {
                continue;
            }
            let seed = t.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let too_few = xs.len().min(ys.len()) < MIN_PROMPTS;
            let interval = bootstrap_relative_change(&xs, &ys, paired, t.resamples, t.level, seed);
            let (change, ci, verdict) = match interval {
                Some((est, lo, hi)) if !too_few => {
                    (est, Some((lo, hi)), time_verdict(lo, hi, t.noise, higher))
                }
                Some((est, _, _)) => (est, None, Verdict::Inconclusive),
                None => continue,
            };
            out.push(MetricChange {
                method: label.clone(),
                metric,
                base: crate::stats::mean(&xs).unwrap_or(0.0),
                new: crate::stats::mean(&ys).unwrap_or(0.0),
                change,
                ci,
                verdict,
            });
        }
        // Scores and lossless rates over the samples both runs hold: a
        // run cut short must not move them by leaving hard prompts out.
        let both_scored: Vec<(f64, f64)> = shared
            .iter()
            .filter_map(|k| Some((b[*k].score?, n[*k].score?)))
            .collect();
        let sb: Vec<f64> = both_scored.iter().map(|p| p.0).collect();
        let sn: Vec<f64> = both_scored.iter().map(|p| p.1).collect();
        if let (Some(mb), Some(mn)) = (crate::stats::mean(&sb), crate::stats::mean(&sn)) {
            let (mb, mn) = (100.0 * mb, 100.0 * mn);
            out.push(MetricChange {
                method: label.clone(),
                metric: "score_x100",
                base: mb,
                new: mn,
                change: mn - mb,
                ci: None,
                verdict: if mn - mb < -t.score_drop_points {
                    Verdict::Regressed
                } else if mn - mb > t.score_drop_points {
                    Verdict::Improved
                } else {
                    Verdict::NoChange
                },
            });
        }
        let in_both = |k: &(String, usize, usize)| b.contains_key(k) && n.contains_key(k);
        if let (Some(rb), Some(rn)) = (
            lossless_rate_over(base_m, &base, label, in_both),
            lossless_rate_over(new_m, &new, label, in_both),
        ) {
            out.push(MetricChange {
                method: label.clone(),
                metric: "lossless_pct",
                base: rb,
                new: rn,
                change: rn - rb,
                ci: None,
                verdict: if rn < rb {
                    Verdict::Regressed
                } else if rn > rb {
                    Verdict::Improved
                } else {
                    Verdict::NoChange
                },
            });
        }
    }
    out
}

/// The Markdown summary: one row per method and metric, regressions
/// first.
pub fn markdown(
    base: &Manifest,
    new: &Manifest,
    changes: &[MetricChange],
    t: Thresholds,
    forced: &[String],
) -> String {
    let regressed = changes
        .iter()
        .filter(|c| c.verdict == Verdict::Regressed)
        .count();
    let improved = changes
        .iter()
        .filter(|c| c.verdict == Verdict::Improved)
        .count();
    let inconclusive = changes
        .iter()
        .filter(|c| c.verdict == Verdict::Inconclusive)
        .count();
    let mut s = format!(
        "# pdbench compare\n\nbase `{}` → new `{}`: **{}** ({regressed} regressed, {improved} improved, {} no change, {inconclusive} with too few prompts)\n\n",
        base.run_id,
        new.run_id,
        if regressed > 0 { "regression" } else { "no regression" },
        changes.len() - regressed - improved - inconclusive
    );
    for (which, m) in [("base", base), ("new", new)] {
        if m.status != crate::results::RunStatus::Complete {
            s.push_str(&format!(
                "The {which} run `{}` is {}, not complete.\n\n",
                m.run_id,
                m.status.as_str()
            ));
        }
    }
    let compared: BTreeSet<&str> = changes.iter().map(|c| c.method.as_str()).collect();
    let only_new: Vec<&str> = new
        .methods
        .iter()
        .map(|i| i.label.as_str())
        .filter(|l| !compared.contains(l))
        .collect();
    if !only_new.is_empty() {
        s.push_str(&format!(
            "Only in the new run, so not compared: {}.\n\n",
            only_new.join(", ")
        ));
    }
    if !forced.is_empty() {
        s.push_str(&format!(
            "Compared with --force although {}.\n\n",
            forced.join("; ")
        ));
    }
    let changed = changed_params(base, new);
    if !changed.is_empty() {
        s.push_str(&format!(
            "Compared under the same label although the parameters differ: {}.\n\n",
            changed.join("; ")
        ));
    }
    s.push_str("| method | metric | base | new | change | 95% CI | verdict |\n|---|---|---|---|---|---|---|\n");
    let mut sorted: Vec<&MetricChange> = changes.iter().collect();
    sorted.sort_by_key(|c| match c.verdict {
        Verdict::Regressed => 0,
        Verdict::Improved => 1,
        Verdict::Inconclusive => 2,
        Verdict::NoChange => 3,
    });
    for c in sorted {
        let (change, ci) = match c.ci {
            Some((lo, hi)) => (
                format!("{:+.1}%", 100.0 * c.change),
                format!("{:+.1}% … {:+.1}%", 100.0 * lo, 100.0 * hi),
            ),
            None if is_time_metric(c.metric) => (format!("{:+.1}%", 100.0 * c.change), "–".into()),
            None if c.metric == "samples" => (format!("{:+}", c.change as i64), "–".into()),
            None if c.metric == "complete" => ("–".into(), "–".into()),
            None => (format!("{:+.1} points", c.change), "–".into()),
        };
        let (vb, vn) = if c.metric == "complete" {
            (base.status.as_str().into(), new.status.as_str().into())
        } else {
            (format!("{:.3}", c.base), format!("{:.3}", c.new))
        };
        s.push_str(&format!(
            "| {} | {} | {vb} | {vn} | {} | {} | {} |\n",
            c.method,
            c.metric,
            change,
            ci,
            c.verdict.as_str()
        ));
    }
    s.push_str(&format!(
        "\nTime figures (tokens/s, TTFT, decode ms per token) are paired by prompt; the {:.0}% interval of the relative change of the mean comes from {} bootstrap resamples of the prompts, and a change counts only when the whole interval lies beyond ±{:.1}%. A prompt's repeats and turns are averaged first; with fewer than {MIN_PROMPTS} prompts a time figure gets no verdict. A score drop of more than {:.1} points, any drop in the lossless rate (the share of a lossless method's samples equal to `ar`'s tokens), any base sample missing from the new run (`samples`: the base run's count, then how many the new run holds), and a new run that did not complete are regressions. Scores and lossless rates are taken over the samples both runs hold.\n",
        100.0 * t.level,
        t.resamples,
        100.0 * t.noise,
        t.score_drop_points
    ));
    s
}

/// JUnit XML: one test case per method and metric, a failure per
/// regression.
pub fn junit(changes: &[MetricChange]) -> String {
    let esc = |x: &str| {
        x.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let failures = changes
        .iter()
        .filter(|c| c.verdict == Verdict::Regressed)
        .count();
    let skipped = changes
        .iter()
        .filter(|c| c.verdict == Verdict::Inconclusive)
        .count();
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"pdbench compare\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\">\n",
        changes.len()
    );
    for c in changes {
        s.push_str(&format!(
            "  <testcase classname=\"{}\" name=\"{}\">",
            esc(&c.method),
            c.metric
        ));
        if c.verdict == Verdict::Regressed {
            let detail = match c.ci {
                Some((lo, hi)) => format!(
                    "{} → {}: {:+.1}% (95% CI {:+.1}% … {:+.1}%)",
                    c.base,
                    c.new,
                    100.0 * c.change,
                    100.0 * lo,
                    100.0 * hi
                ),
                None if c.metric == "complete" => {
                    "the new run did not complete (see its manifest's status and note)".into()
                }
                None if c.metric == "samples" => format!(
                    "{} of the base run's {} samples are missing from the new run",
                    c.base - c.new,
                    c.base
                ),
                None => format!("{} → {}: {:+.1} points", c.base, c.new, c.change),
            };
            s.push_str(&format!(
                "<failure message=\"{} regressed\">{}</failure>",
                c.metric,
                esc(&detail)
            ));
        }
        if c.verdict == Verdict::Inconclusive {
            s.push_str(&format!(
                "<skipped message=\"fewer than {MIN_PROMPTS} prompts\"/>"
            ));
        }
        s.push_str("</testcase>\n");
    }
    s.push_str("</testsuite>\n");
    s
}

/// What `compare` found, for the command to print and to exit on.
pub struct Outcome {
    pub markdown: String,
    pub changes: Vec<MetricChange>,
}

impl Outcome {
    pub fn regressed(&self) -> bool {
        self.changes.iter().any(|c| c.verdict == Verdict::Regressed)
    }
}

/// Reads both runs, checks they compare (unless `force`) and compares
/// them.
pub fn compare(
    base: &Path,
    new: &Path,
    t: Thresholds,
    force: bool,
) -> Result<Outcome, CompareError> {
    let (bd, nd) = (RunDir::open(base)?, RunDir::open(new)?);
    let (bm, nm) = (bd.read_manifest()?, nd.read_manifest()?);
    let why = comparability(&bm, &nm);
    let labels =
        |m: &Manifest| -> BTreeSet<String> { m.methods.iter().map(|i| i.label.clone()).collect() };
    let (bs, _) = bd.read_samples()?;
    let (ns, _) = nd.read_samples()?;
    // Only the methods compared: a disturbed method one run alone holds
    // changes no verdict.
    let shared_labels: BTreeSet<String> = labels(&bm).intersection(&labels(&nm)).cloned().collect();
    let mut disturbed = Vec::new();
    for (which, path, m, samples) in [("base", base, &bm, &bs), ("new", new, &nm, &ns)] {
        let compared: Vec<crate::results::SampleRecord> = samples
            .iter()
            .filter(|s| shared_labels.contains(&s.method))
            .cloned()
            .collect();
        let hit = crate::results::disturbed_methods(m, &compared, t.max_interference_pct);
        if !hit.is_empty() {
            disturbed.push(format!("{which} {}: {}", path.display(), hit.join(", ")));
        }
    }
    // Host interference first: it says why a re-run, not a new baseline,
    // is the cure; other reasons follow it.
    if !disturbed.is_empty() && !force {
        return Err(CompareError::Interference {
            runs: disturbed.join("; "),
            threshold_pct: t.max_interference_pct,
            also: if why.is_empty() {
                String::new()
            } else {
                format!("; the runs also differ: {}", why.join("; "))
            },
        });
    }
    if !why.is_empty() && !force {
        return Err(CompareError::NotComparable {
            base: base.display().to_string(),
            new: new.display().to_string(),
            reasons: why.join("; "),
        });
    }
    if labels(&bm).is_disjoint(&labels(&nm)) {
        return Err(CompareError::NothingShared {
            base: base.display().to_string(),
            new: new.display().to_string(),
            base_labels: labels(&bm).into_iter().collect::<Vec<_>>().join(", "),
            new_labels: labels(&nm).into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    // A broken baseline (no samples of what both runs hold) must not pass.
    let shared = labels(&bm)
        .intersection(&labels(&nm))
        .cloned()
        .collect::<BTreeSet<_>>();
    if !bs.iter().any(|s| shared.contains(&s.method)) {
        return Err(CompareError::EmptyBase {
            base: base.display().to_string(),
        });
    }
    let changes = compare_runs(&bm, bs, &nm, ns, t);
    let forced = if force {
        why.into_iter()
            .chain(
                disturbed
                    .iter()
                    .map(|d| format!("host interference in {d}")),
            )
            .collect()
    } else {
        Vec::new()
    };
    Ok(Outcome {
        markdown: markdown(&bm, &nm, &changes, t, &forced),
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    fn draw(n: usize, mean: f64, sd: f64, rng: &mut rand_chacha::ChaCha20Rng) -> Vec<f64> {
        let d = Normal::new(mean, sd).unwrap();
        (0..n).map(|_| d.sample(rng)).collect()
    }

    /// A 10% slowdown at n = 50 (tokens/s per prompt with 5% noise) is a
    /// regression: the whole interval lies below −3%.
    #[test]
    fn a_ten_percent_slowdown_at_fifty_samples_is_caught() {
        let mut caught = 0;
        for seed in 0..20 {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            let base = draw(50, 100.0, 5.0, &mut rng);
            let new = draw(50, 90.0, 4.5, &mut rng);
            let (est, lo, hi) =
                bootstrap_relative_change(&base, &new, false, 2000, 0.95, seed).unwrap();
            assert!((est + 0.1).abs() < 0.03, "{est}");
            caught += usize::from(time_verdict(lo, hi, 0.03, true) == Verdict::Regressed);
        }
        assert_eq!(caught, 20);
    }

    /// Identical distributions give "no change" in at least 95 of 100
    /// seeded trials.
    #[test]
    fn identical_distributions_give_no_change() {
        let mut quiet = 0;
        for seed in 0..100 {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1000 + seed);
            let base = draw(50, 100.0, 10.0, &mut rng);
            let new = draw(50, 100.0, 10.0, &mut rng);
            let (_, lo, hi) =
                bootstrap_relative_change(&base, &new, false, 1000, 0.95, seed).unwrap();
            quiet += usize::from(time_verdict(lo, hi, 0.03, true) == Verdict::NoChange);
        }
        assert!(quiet >= 95, "{quiet} of 100");
    }

    #[test]
    fn pairing_narrows_the_interval() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        // Prompts differ a lot from each other; the change is 2% on each.
        let base = draw(40, 100.0, 30.0, &mut rng);
        let new: Vec<f64> = base.iter().map(|x| x * 1.02).collect();
        let (_, lo_p, hi_p) = bootstrap_relative_change(&base, &new, true, 1000, 0.95, 1).unwrap();
        let (_, lo_u, hi_u) = bootstrap_relative_change(&base, &new, false, 1000, 0.95, 1).unwrap();
        assert!(
            hi_p - lo_p < 0.01 && hi_u - lo_u > 0.1,
            "{lo_p}..{hi_p} vs {lo_u}..{hi_u}"
        );
    }

    #[test]
    fn lower_is_better_flips_the_sides() {
        assert_eq!(time_verdict(0.05, 0.2, 0.03, false), Verdict::Regressed);
        assert_eq!(time_verdict(-0.2, -0.05, 0.03, false), Verdict::Improved);
        assert_eq!(time_verdict(-0.05, 0.01, 0.03, true), Verdict::NoChange);
    }
}
