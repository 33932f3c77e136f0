//! `pdbench bench`: raw prefill and decode speed of the backbone, in the
//! manner of llama-bench (pp = a prompt of N tokens in one forward, tg = N
//! single-token forwards), plus the harness overhead of the `ar` method.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::{Clock, DeviceSync, MonotonicClock, Probe, StopRule};
use crate::methods::{GenContext, MethodInstance, MethodModels};
use crate::model::{self, argmax_rows, FetchPolicy, Forward, LoadOptions, LoadedModel};
use crate::stats;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Models to measure (repeatable).
    #[arg(long = "model", default_value = crate::cli::DEFAULT_MODEL)]
    pub models: Vec<String>,
    /// Thread counts to measure, comma-separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Prompt length for the prefill test.
    #[arg(long, default_value_t = 64)]
    pub prefill: usize,
    /// Tokens for the decode test.
    #[arg(long, default_value_t = 128)]
    pub decode: usize,
    /// Measured repetitions of each test (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Also run the `ar` method through the runner's probe to measure the
    /// harness overhead.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub overhead: bool,
    /// Write results to PATH.json and PATH.md (PATH is kept whole).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRow {
    pub model: String,
    pub model_sha256: String,
    pub weight_types: Vec<(String, usize)>,
    pub threads: usize,
    pub test: String,
    pub tokens: usize,
    pub repeats: usize,
    pub tokens_per_s_mean: f64,
    pub tokens_per_s_sd: f64,
    pub tokens_per_s_all: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub pdbench_version: String,
    pub git: crate::results::GitInfo,
    pub argv: Vec<String>,
    pub host: crate::results::HostInfo,
    pub device: String,
    pub rows: Vec<BenchRow>,
}

/// Token ids away from the special tokens at either end of the vocabulary.
fn random_tokens(n: usize, vocab: usize, rng: &mut ChaCha20Rng) -> Vec<u32> {
    let hi = vocab.saturating_sub(1000).max(200);
    (0..n).map(|_| rng.random_range(100..hi) as u32).collect()
}

fn time_ns(
    clock: &dyn Clock,
    sync: &dyn DeviceSync,
    f: &mut dyn FnMut() -> Result<()>,
) -> Result<u64> {
    sync.sync().map_err(anyhow::Error::msg)?;
    let t0 = clock.now_ns();
    f()?;
    sync.sync().map_err(anyhow::Error::msg)?;
    Ok(clock.now_ns() - t0)
}

fn row(m: &LoadedModel, threads: usize, test: &str, tokens: usize, samples_ns: &[u64]) -> BenchRow {
    let tps: Vec<f64> = samples_ns
        .iter()
        .map(|&ns| tokens as f64 / (ns as f64 / 1e9))
        .collect();
    BenchRow {
        model: m.info.label.clone(),
        model_sha256: m
            .info
            .files
            .first()
            .map(|f| f.sha256.clone())
            .unwrap_or_default(),
        weight_types: m.info.weight_types.clone(),
        threads,
        test: test.into(),
        tokens,
        repeats: tps.len(),
        tokens_per_s_mean: stats::mean(&tps).unwrap_or(f64::NAN),
        tokens_per_s_sd: stats::std_dev(&tps).unwrap_or(0.0),
        tokens_per_s_all: tps,
    }
}

fn bench_model(a: &BenchArgs, m: &LoadedModel, threads: usize) -> Result<Vec<BenchRow>> {
    let clock = MonotonicClock::new();
    let dev = m.model.device().clone();
    let mut rng = ChaCha20Rng::seed_from_u64(1234);
    let vocab = m.model.config().vocab_size;
    let prompt = random_tokens(a.prefill, vocab, &mut rng);
    let mut cache = m.model.new_cache(a.prefill + a.decode + 8)?;
    let mut rows = Vec::new();

    // pp: one forward over the prompt from an empty cache.
    let mut pp = Vec::new();
    for i in 0..=a.repeats {
        let ns = time_ns(&clock, &dev, &mut || {
            cache.clear();
            let out = m.model.forward(&mut cache, &Forward::causal(&prompt, 0))?;
            argmax_rows(out.logits.as_ref().expect("logits"))?;
            Ok(())
        })?;
        if i > 0 {
            pp.push(ns);
        }
    }
    rows.push(row(m, threads, &format!("pp{}", a.prefill), a.prefill, &pp));

    // tg: single-token forwards from an empty cache, each argmax feeding the next.
    let mut tg = Vec::new();
    for i in 0..=a.repeats {
        let ns = time_ns(&clock, &dev, &mut || {
            cache.clear();
            let mut tok = prompt[0];
            for pos in 0..a.decode {
                let out = m.model.forward(&mut cache, &Forward::causal(&[tok], pos))?;
                tok = argmax_rows(out.logits.as_ref().expect("logits"))?[0];
            }
            Ok(())
        })?;
        if i > 0 {
            tg.push(ns);
        }
    }
    rows.push(row(m, threads, &format!("tg{}", a.decode), a.decode, &tg));

    if a.overhead {
        // The same decode after the prompt, raw and through the `ar` method
        // with the runner's probe: the gap is the harness's own cost. The
        // two alternate, so that drift in the machine's speed hits both.
        let inst = MethodInstance::new("ar", None, &serde_json::Value::Null)?;
        let mut decoder = (inst.spec().build)(
            &inst.params,
            &MethodModels {
                target: m,
                draft: None,
            },
        )?;
        let rule = StopRule {
            max_new_tokens: a.decode,
            eos_ids: vec![],
            stop_strings: vec![],
        };
        let tok = m.tokenizer.clone();
        let detok = move |ids: &[u32]| tok.decode(ids).unwrap_or_default();
        let (mut raw, mut via) = (Vec::new(), Vec::new());
        for i in 0..=a.repeats {
            cache.clear();
            let out = m.model.forward(&mut cache, &Forward::causal(&prompt, 0))?;
            let first = argmax_rows(out.logits.as_ref().expect("logits"))?[0];
            let ns = time_ns(&clock, &dev, &mut || {
                let mut tok = first;
                for _ in 1..a.decode {
                    let pos = cache.len();
                    let out = m.model.forward(&mut cache, &Forward::causal(&[tok], pos))?;
                    tok = argmax_rows(out.logits.as_ref().expect("logits"))?[0];
                }
                Ok(())
            })?;

            let mut rng = ChaCha20Rng::seed_from_u64(0);
            let mut probe = Probe::start(&clock, &dev, &detok, &rule);
            decoder.generate(
                &prompt,
                &mut GenContext {
                    probe: &mut probe,
                    rng: &mut rng,
                },
            )?;
            let measured = probe.finish().map_err(anyhow::Error::msg)?;
            let ttft = measured.ttft_ns.context("ar emitted nothing")?;
            if i > 0 {
                raw.push(ns);
                via.push(measured.wall_ns - ttft);
            }
        }
        rows.push(row(
            m,
            threads,
            "decode-after-prompt-raw",
            a.decode - 1,
            &raw,
        ));
        rows.push(row(
            m,
            threads,
            "decode-after-prompt-ar-method",
            a.decode - 1,
            &via,
        ));
    }
    Ok(rows)
}

pub fn run(a: BenchArgs) -> Result<i32> {
    let rows = match a.threads.as_slice() {
        [] => anyhow::bail!("--threads: expected at least one thread count"),
        [t] => bench_in_process(&a, *t)?,
        many => {
            // candle sizes its thread pools once per process, so each thread
            // count gets a process of its own.
            let mut rows = Vec::new();
            for &t in many {
                rows.extend(bench_in_child(&a, t)?);
            }
            rows
        }
    };
    let spec = crate::env::DeviceSpec::parse(&a.device)?;
    let report = BenchReport {
        pdbench_version: env!("CARGO_PKG_VERSION").into(),
        git: crate::env::git_info(),
        argv: std::env::args().collect(),
        host: crate::env::host_info(),
        device: spec.name(),
        rows,
    };
    let md = markdown(&report);
    println!("{md}");
    if let Some(out) = &a.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let json = with_suffix(out, "json");
        std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
        let mdp = with_suffix(out, "md");
        std::fs::write(&mdp, &md)?;
        eprintln!("wrote {} and {}", json.display(), mdp.display());
    }
    Ok(0)
}

/// `PATH.ext`, keeping dots already in the name (`qwen2.5-coder-1.5b`).
fn with_suffix(path: &std::path::Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Runs `pdbench bench` for one thread count in a child process and returns
/// its rows.
fn bench_in_child(a: &BenchArgs, threads: usize) -> Result<Vec<BenchRow>> {
    let tmp = std::env::temp_dir().join(format!("pdbench-bench-{}-t{threads}", std::process::id()));
    let exe = std::env::current_exe().context("locating the pdbench binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("bench");
    for m in &a.models {
        cmd.arg("--model").arg(m);
    }
    cmd.arg("--threads")
        .arg(threads.to_string())
        .arg("--prefill")
        .arg(a.prefill.to_string())
        .arg("--decode")
        .arg(a.decode.to_string())
        .arg("--repeats")
        .arg(a.repeats.to_string())
        .arg("--overhead")
        .arg(a.overhead.to_string())
        .arg("--device")
        .arg(&a.device)
        .arg("--out")
        .arg(&tmp)
        .stdout(std::process::Stdio::null());
    let status = cmd.status().context("starting a bench child process")?;
    if !status.success() {
        anyhow::bail!("bench with --threads {threads} failed ({status})");
    }
    let json = with_suffix(&tmp, "json");
    let text =
        std::fs::read_to_string(&json).with_context(|| format!("reading {}", json.display()))?;
    let _ = std::fs::remove_file(&json);
    let _ = std::fs::remove_file(with_suffix(&tmp, "md"));
    let report: BenchReport =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
    Ok(report.rows)
}

fn bench_in_process(a: &BenchArgs, threads: usize) -> Result<Vec<BenchRow>> {
    let threads = crate::env::set_threads(Some(threads));
    let store = Store::from_env();
    let spec = crate::env::DeviceSpec::parse(&a.device)?;
    let device = spec.open()?;
    let mut rows = Vec::new();
    for spec_str in &a.models {
        let m = model::load(
            spec_str,
            &store,
            FetchPolicy::Auto,
            &LoadOptions {
                device: device.clone(),
                ..Default::default()
            },
            &mut |s| eprintln!("{s}"),
        )?;
        let r = bench_model(a, &m, threads)?;
        for x in &r {
            eprintln!(
                "{} t={} {}: {:.1} ± {:.1} tokens/s",
                x.model, x.threads, x.test, x.tokens_per_s_mean, x.tokens_per_s_sd
            );
        }
        rows.extend(r);
    }
    Ok(rows)
}

pub fn markdown(r: &BenchReport) -> String {
    let mut s = format!(
        "pdbench {} ({}), {} on {} ({} logical cores)\n\n| model | threads | test | tokens/s | ± sd |\n|---|---|---|---|---|\n",
        r.pdbench_version,
        r.git.commit.as_deref().map(|c| &c[..c.len().min(10)]).unwrap_or("unknown commit"),
        r.device,
        r.host.cpu_model,
        r.host.logical_cores
    );
    for x in &r.rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} |\n",
            x.model, x.threads, x.test, x.tokens_per_s_mean, x.tokens_per_s_sd
        ));
    }
    let mut overhead = Vec::new();
    for raw in r
        .rows
        .iter()
        .filter(|x| x.test == "decode-after-prompt-raw")
    {
        if let Some(via) = r.rows.iter().find(|x| {
            x.test == "decode-after-prompt-ar-method"
                && x.model == raw.model
                && x.threads == raw.threads
        }) {
            overhead.push(format!(
                "{} t={}: {:.2}%",
                raw.model,
                raw.threads,
                100.0 * (1.0 - via.tokens_per_s_mean / raw.tokens_per_s_mean)
            ));
        }
    }
    if !overhead.is_empty() {
        s.push_str(&format!(
            "\nHarness overhead (1 − ar-method decode tokens/s ÷ raw decode tokens/s): {}\n",
            overhead.join("; ")
        ));
    }
    s
}
