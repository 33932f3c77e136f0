//! Choosing the CPU thread count for a run: each model's decode step and a
//! verify-width forward, timed at every candidate count in a child process
//! of its own (candle sizes its pools once per process), and the fewest
//! threads within a tolerance of the fastest.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::{Clock, DeviceSync, MonotonicClock};
use crate::model::{self, FetchPolicy, Forward, LoadOptions, LoadedModel};
use crate::store::Store;

/// A count whose time is within this fraction of the fastest count's is as
/// good as it; the fewest such threads win (less exposed to a busy host,
/// and stable between quiet runs).
pub const TIE_TOLERANCE: f64 = 0.05;

/// The widest verify forward the probe times: wider drafts are rare, and
/// the choice between counts is settled well before.
pub const MAX_PROBE_WIDTH: usize = 16;

/// How long one probe child may take (loading and, on first use,
/// fetching the models included).
const PROBE_TIMEOUT_S: u64 = 900;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadsHow {
    /// `--threads N`.
    Given,
    /// Timed at the start of the run.
    Automatic,
    /// candle's default (its count of physical cores): a GPU run, or a
    /// probe that failed (the run's log says why).
    Default,
    /// Set by an earlier run in the same process (a sweep's first suite):
    /// the pools are sized once per process.
    Inherited,
}

/// One model's times at one thread count (medians).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadsTiming {
    pub threads: usize,
    pub model: String,
    /// A one-token forward after a 32-token context, ns.
    pub decode_step_ns: u64,
    /// A `verify_width`-token forward after the same context, ns; absent
    /// when the run's methods verify one token at a time.
    pub verify_ns: Option<u64>,
}

/// How a run's thread count was chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadsChoice {
    pub how: ThreadsHow,
    pub threads: usize,
    /// The widest forward the run's methods verify (drafts plus one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_width: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timings: Vec<ThreadsTiming>,
}

impl ThreadsChoice {
    pub fn given(threads: usize) -> Self {
        Self {
            how: ThreadsHow::Given,
            threads,
            verify_width: None,
            timings: vec![],
        }
    }

    pub fn inherited(threads: usize) -> Self {
        Self {
            how: ThreadsHow::Inherited,
            ..Self::given(threads)
        }
    }

    pub fn default_for_gpu(threads: usize) -> Self {
        Self {
            how: ThreadsHow::Default,
            ..Self::given(threads)
        }
    }

    /// One line for logs and reports.
    pub fn describe(&self) -> String {
        match self.how {
            ThreadsHow::Given => format!("{} threads (--threads)", self.threads),
            ThreadsHow::Default => format!("{} threads (candle's default)", self.threads),
            ThreadsHow::Inherited => format!(
                "{} threads (chosen by an earlier run in this process)",
                self.threads
            ),
            ThreadsHow::Automatic => {
                let totals = totals(&self.timings);
                let times = totals
                    .iter()
                    .map(|(t, ns)| format!("{t}: {:.2} ms", *ns as f64 / 1e6))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "{} threads (automatic: decode step{} summed over the models, by threads {times})",
                    self.threads,
                    match self.verify_width {
                        Some(w) if w > 1 => format!(" + {w}-token verify forward"),
                        _ => String::new(),
                    }
                )
            }
        }
    }
}

/// Thread counts worth timing on `cores` logical cores: 1, powers of two
/// and `cores` itself.
pub fn candidates(cores: usize) -> Vec<usize> {
    let cores = cores.max(1);
    let mut out: Vec<usize> = std::iter::successors(Some(1usize), |&t| Some(t * 2))
        .take_while(|&t| t < cores)
        .collect();
    out.push(cores);
    out
}

/// Per thread count, the summed time of every model's decode step and
/// verify forward, in ascending thread order.
pub fn totals(timings: &[ThreadsTiming]) -> Vec<(usize, u64)> {
    let mut out: std::collections::BTreeMap<usize, u64> = Default::default();
    for t in timings {
        *out.entry(t.threads).or_default() += t.decode_step_ns + t.verify_ns.unwrap_or(0);
    }
    out.into_iter().collect()
}

/// The fewest threads whose total is within `tolerance` of the fastest.
pub fn choose(timings: &[ThreadsTiming], tolerance: f64) -> Option<usize> {
    let totals = totals(timings);
    let best = totals.iter().map(|&(_, ns)| ns).min()?;
    totals
        .iter()
        .find(|&&(_, ns)| ns as f64 <= best as f64 * (1.0 + tolerance))
        .map(|&(t, _)| t)
}

/// `pdbench probe-threads`: the timings of one thread count, for the run
/// that spawned it.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Models to time (repeatable): the run's target and companions.
    #[arg(long = "model", required = true)]
    pub models: Vec<String>,
    #[arg(long)]
    pub threads: usize,
    #[arg(long, default_value_t = 1)]
    pub width: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub dtype: Option<String>,
    #[arg(long)]
    pub dequantize: bool,
    #[arg(long)]
    pub no_fetch: bool,
    /// The run's `--tokenizer`, for the first model (the target).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Write the timings here as JSON.
    #[arg(long)]
    pub out: PathBuf,
}

/// Times each model's decode step and verify forward: medians of 7 after
/// 2 unrecorded ones, each from the same cache position.
pub fn time_model(m: &LoadedModel, width: usize, threads: usize) -> Result<ThreadsTiming> {
    let clock = MonotonicClock::new();
    let dev = m.model.device().clone();
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let vocab = m.model.config().vocab_size as u32;
    let context: Vec<u32> = (0..32)
        .map(|_| rng.random_range(vocab / 4..vocab / 2))
        .collect();
    let mut cache = m.model.new_cache(32 + width.max(1) + 8)?;
    m.model.forward(&mut cache, &Forward::causal(&context, 0))?;
    let mut time = |tokens: &[u32]| -> Result<u64> {
        let mut ns = Vec::new();
        for i in 0..9 {
            dev.sync().map_err(anyhow::Error::msg)?;
            let t0 = clock.now_ns();
            m.model.forward(&mut cache, &Forward::causal(tokens, 32))?;
            dev.sync().map_err(anyhow::Error::msg)?;
            let t = clock.now_ns() - t0;
            cache.truncate(32)?;
            if i >= 2 {
                ns.push(t);
            }
        }
        ns.sort_unstable();
        Ok(ns[ns.len() / 2])
    };
    let decode_step_ns = time(&context[..1])?;
    let verify_ns = if width > 1 {
        let tokens: Vec<u32> = context.iter().copied().cycle().take(width).collect();
        Some(time(&tokens)?)
    } else {
        None
    };
    Ok(ThreadsTiming {
        threads,
        model: m.info.label.clone(),
        decode_step_ns,
        verify_ns,
    })
}

/// The child's side: load the models at `--threads` and time them.
pub fn probe(a: ProbeArgs) -> Result<i32> {
    let threads = crate::env::set_threads(Some(a.threads));
    crate::measure::kernels::tune();
    let store = Store::from_env();
    let spec = crate::env::DeviceSpec::parse(&a.device)?;
    let opts = LoadOptions {
        device: spec.open()?,
        dtype: a
            .dtype
            .as_deref()
            .map(crate::cli::parse_dtype)
            .transpose()?,
        tokenizer: None,
        dequantize: a.dequantize,
    };
    let mut out = Vec::new();
    for (i, s) in a.models.iter().enumerate() {
        let opts = LoadOptions {
            tokenizer: if i == 0 { a.tokenizer.clone() } else { None },
            ..opts.clone()
        };
        let policy = if a.no_fetch {
            FetchPolicy::Never
        } else {
            FetchPolicy::Auto
        };
        let m = model::load(s, &store, policy, &opts, &mut |l| eprintln!("{l}"))
            .with_context(|| format!("loading model {s}"))?;
        out.push(time_model(&m, a.width, threads)?);
    }
    crate::results::write_atomic(&a.out, serde_json::to_string(&out)?.as_bytes())
        .with_context(|| format!("writing {}", a.out.display()))?;
    Ok(0)
}

/// What the probe children load: the run's models and how.
pub struct ProbeModels<'a> {
    /// The target first, then the companions that decode.
    pub specs: Vec<String>,
    pub device: &'a str,
    pub dtype: Option<&'a str>,
    pub dequantize: bool,
    pub no_fetch: bool,
    pub tokenizer: Option<&'a std::path::Path>,
}

/// The run's side: one child per candidate count, then the choice, set
/// for this process. A probe that fails (a model that will not load, say)
/// leaves candle's default, with a warning: loading the models for the
/// run then reports the cause.
pub fn choose_threads(
    models: &ProbeModels<'_>,
    width: usize,
    log: &mut dyn FnMut(&str),
) -> ThreadsChoice {
    match probe_children(models, width) {
        Ok(timings) => match choose(&timings, TIE_TOLERANCE) {
            Some(threads) => {
                let choice = ThreadsChoice {
                    how: ThreadsHow::Automatic,
                    threads: crate::env::set_threads(Some(threads)),
                    verify_width: Some(width),
                    timings,
                };
                log(&format!("threads: {}", choice.describe()));
                choice
            }
            None => ThreadsChoice::default_for_gpu(crate::env::set_threads(None)),
        },
        Err(e) => {
            let threads = crate::env::set_threads(None);
            log(&format!(
                "warning: the thread probe failed ({e:#}); using {threads} threads"
            ));
            ThreadsChoice::default_for_gpu(threads)
        }
    }
}

fn probe_children(pm: &ProbeModels<'_>, width: usize) -> Result<Vec<ThreadsTiming>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let exe = std::env::current_exe().context("locating the pdbench binary")?;
    let dir = tempfile::tempdir().context("creating a folder for the thread probe")?;
    let mut timings = Vec::new();
    for t in candidates(cores) {
        let out = dir.path().join(format!("t{t}.json"));
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("probe-threads")
            .arg("--threads")
            .arg(t.to_string())
            .arg("--width")
            .arg(width.to_string())
            .arg("--device")
            .arg(pm.device)
            .arg("--out")
            .arg(&out)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        for m in &pm.specs {
            cmd.arg("--model").arg(m);
        }
        if let Some(d) = pm.dtype {
            cmd.arg("--dtype").arg(d);
        }
        if pm.dequantize {
            cmd.arg("--dequantize");
        }
        if pm.no_fetch {
            cmd.arg("--no-fetch");
        }
        if let Some(t) = pm.tokenizer {
            cmd.arg("--tokenizer").arg(t);
        }
        let err_path = dir.path().join(format!("t{t}.err"));
        cmd.stderr(std::fs::File::create(&err_path).context("creating the probe's log")?);
        let mut child = cmd.spawn().context("starting pdbench probe-threads")?;
        // A probe that hangs (a stuck fetch, say) must not hold the run.
        let clock = MonotonicClock::new();
        let status = loop {
            if let Some(st) = child.try_wait().context("waiting for the thread probe")? {
                break st;
            }
            if clock.now_ns() > PROBE_TIMEOUT_S * 1_000_000_000 {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("at {t} threads: no answer after {PROBE_TIMEOUT_S} s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        if !status.success() {
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            anyhow::bail!("at {t} threads: {}", last.trim());
        }
        let text =
            std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
        let rows: Vec<ThreadsTiming> =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", out.display()))?;
        timings.extend(rows);
    }
    Ok(timings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(threads: usize, model: &str, d: u64, v: Option<u64>) -> ThreadsTiming {
        ThreadsTiming {
            threads,
            model: model.into(),
            decode_step_ns: d,
            verify_ns: v,
        }
    }

    #[test]
    fn candidates_are_one_powers_of_two_and_all_cores() {
        assert_eq!(candidates(1), vec![1]);
        assert_eq!(candidates(2), vec![1, 2]);
        assert_eq!(candidates(6), vec![1, 2, 4, 6]);
        assert_eq!(candidates(8), vec![1, 2, 4, 8]);
        assert_eq!(candidates(0), vec![1]);
    }

    #[test]
    fn the_fewest_threads_within_the_tolerance_win() {
        // Summed over both models: 1 → 300, 2 → 200, 4 → 195.
        let ts = [
            t(1, "a", 100, Some(100)),
            t(1, "b", 100, None),
            t(2, "a", 70, Some(60)),
            t(2, "b", 70, None),
            t(4, "a", 65, Some(60)),
            t(4, "b", 70, None),
        ];
        assert_eq!(totals(&ts), vec![(1, 300), (2, 200), (4, 195)]);
        assert_eq!(choose(&ts, 0.05), Some(2));
        assert_eq!(choose(&ts, 0.0), Some(4));
        // A small model: one thread is fastest outright.
        assert_eq!(
            choose(&[t(1, "a", 10, None), t(2, "a", 18, None)], 0.05),
            Some(1)
        );
        assert_eq!(choose(&[], 0.05), None);
    }
}
