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
    /// Also profile a decode: the device is synchronised at the end of
    /// every phase of each forward (embedding, norms, projections,
    /// attention, MLP, LM head, argmax), to show where a token's time goes.
    #[arg(long)]
    pub profile: bool,
    /// Compute dtype for safetensors models (f32, bf16, f16; default: what
    /// `run` uses on the device), to match a peer's.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Also time each GGUF weight format's matvec kernel on the model's
    /// tensors, beside a streaming read of the same thread count.
    #[arg(long)]
    pub kernels: bool,
    /// Also time forwards of k new rows after a --prefill-token context,
    /// for each k here (the cost of verifying k drafted tokens), e.g. 1,2,4,8,16.
    #[arg(long, value_delimiter = ',')]
    pub widths: Vec<usize>,
    /// Skip the pp and tg tests (with --kernels or --widths).
    #[arg(long)]
    pub no_speed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRow {
    pub model: String,
    pub model_sha256: String,
    pub weight_types: Vec<(String, usize)>,
    /// Compute dtype of the activations (`f32` for GGUF).
    #[serde(default)]
    pub dtype: String,
    pub threads: usize,
    pub test: String,
    pub tokens: usize,
    pub repeats: usize,
    pub tokens_per_s_mean: f64,
    /// `None` with one measured repetition: no spread was measured.
    pub tokens_per_s_sd: Option<f64>,
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
    #[serde(default)]
    pub overhead: Vec<OverheadRow>,
    #[serde(default)]
    pub profile: Vec<ProfileRow>,
    /// Per model, each weight format and the kernel its CPU forward uses.
    #[serde(default)]
    pub kernels_used: Vec<KernelsUsed>,
    #[serde(default)]
    pub kernels: Vec<super::kernels::KernelRow>,
    #[serde(default)]
    pub widths: Vec<WidthRow>,
    /// The start-up measurement's instruction set per format (of the first
    /// thread count's process).
    #[serde(default)]
    pub kernel_choice: Vec<super::kernels::KernelChoice>,
}

/// Which kernel each of a model's weight formats runs on (`bench` prints it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KernelsUsed {
    pub model: String,
    /// (format, kernel, tensors)
    pub formats: Vec<(String, String, usize)>,
}

/// One forward of `width` new rows after `context` tokens (`--widths`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WidthRow {
    pub model: String,
    pub threads: usize,
    pub context: usize,
    pub width: usize,
    pub forward_ns_median: f64,
    pub forward_ns_all: Vec<f64>,
    /// forward_ns_median ÷ that of width 1 (when measured): what verifying
    /// `width` drafted tokens costs in decode steps.
    pub cost_vs_width_1: Option<f64>,
}

/// Where a decode's time goes (`--profile`), per token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileRow {
    pub model: String,
    pub dtype: String,
    pub threads: usize,
    /// Tokens decoded after the prompt while profiling.
    pub tokens: usize,
    pub phases: Vec<super::phase::PhaseTime>,
    /// The profiled decode's wall time per token (slowed by the
    /// synchronisations); compare with the unprofiled tg test.
    pub profiled_ns_per_token: f64,
}

/// The harness's own cost while decoding with `ar`, two ways.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverheadRow {
    pub model: String,
    pub threads: usize,
    /// Per token, what the `ar` method and the probe do besides the model
    /// forward (picking the token from the logits, the step record, the
    /// stop rule with stop strings), timed over many steps.
    pub harness_ns_per_token: f64,
    /// Per token, the median raw decode loop (forward plus argmax).
    pub decode_ns_per_token: f64,
    /// harness_ns_per_token ÷ decode_ns_per_token, in percent.
    pub harness_pct: f64,
    /// End to end, per interleaved pair of decodes: 1 − ar-method tokens/s
    /// ÷ raw tokens/s, in percent. Noisy on shared machines.
    pub paired_pct: Vec<f64>,
    pub paired_pct_median: f64,
}

/// Token ids away from the special tokens at either end of the
/// vocabulary (a tenth of it, at most 100 below and 1000 above; small
/// vocabularies such as the toy zoo's 70 keep their middle).
fn random_tokens(n: usize, vocab: usize, rng: &mut ChaCha20Rng) -> Vec<u32> {
    let lo = (vocab / 10).min(100);
    let hi = vocab.saturating_sub((vocab / 10).min(1000)).max(lo + 1);
    (0..n).map(|_| rng.random_range(lo..hi) as u32).collect()
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
        dtype: m.info.dtype.clone(),
        threads,
        test: test.into(),
        tokens,
        repeats: tps.len(),
        tokens_per_s_mean: stats::mean(&tps).unwrap_or(f64::NAN),
        tokens_per_s_sd: stats::std_dev(&tps),
        tokens_per_s_all: tps,
    }
}

/// Decodes `a.decode` tokens after the prompt with every phase of each
/// forward timed (see [`super::phase`]).
fn profile_decode(
    a: &BenchArgs,
    m: &LoadedModel,
    threads: usize,
    prompt: &[u32],
) -> Result<ProfileRow> {
    let clock = MonotonicClock::new();
    let dev = m.model.device().clone();
    let mut cache = m.model.new_cache(prompt.len() + a.decode + 8)?;
    let out = m.model.forward(&mut cache, &Forward::causal(prompt, 0))?;
    let mut tok = argmax_rows(out.logits.as_ref().expect("logits"))?[0];
    super::phase::start();
    let ns = time_ns(&clock, &dev, &mut || {
        for _ in 0..a.decode {
            let pos = cache.len();
            let out = m.model.forward(&mut cache, &Forward::causal(&[tok], pos))?;
            tok = argmax_rows(out.logits.as_ref().expect("logits"))?[0];
            super::phase::mark(&dev, "argmax+copy");
        }
        Ok(())
    });
    let phases = super::phase::finish();
    let ns = ns?;
    Ok(ProfileRow {
        model: m.info.label.clone(),
        dtype: m.info.dtype.clone(),
        threads,
        tokens: a.decode,
        phases,
        profiled_ns_per_token: ns as f64 / a.decode as f64,
    })
}

fn bench_model(
    a: &BenchArgs,
    m: &LoadedModel,
    threads: usize,
) -> Result<(Vec<BenchRow>, Option<OverheadRow>)> {
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
        let mut decoder = (inst.spec().build)(&inst.params, &MethodModels::target_only(m))?;
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
        let paired_pct: Vec<f64> = raw
            .iter()
            .zip(&via)
            .map(|(&r, &v)| 100.0 * (1.0 - r as f64 / v as f64))
            .collect();
        let raw_f: Vec<f64> = raw.iter().map(|&x| x as f64).collect();
        let decode_ns_per_token = stats::median(&raw_f).unwrap_or(f64::NAN) / (a.decode - 1) as f64;
        let harness_ns_per_token = harness_ns_per_token(m, &prompt, &clock, &dev)?;
        let overhead = OverheadRow {
            model: m.info.label.clone(),
            threads,
            harness_ns_per_token,
            decode_ns_per_token,
            harness_pct: 100.0 * harness_ns_per_token / decode_ns_per_token,
            paired_pct_median: stats::median(&paired_pct).unwrap_or(f64::NAN),
            paired_pct,
        };
        return Ok((rows, Some(overhead)));
    }
    Ok((rows, None))
}

/// Times the per-step work of the `ar` method and the runner's probe
/// outside the model forward, on real logits of the model: the token pick
/// ([`crate::sampling::SamplingParams::pick`], as `ar` calls it) and
/// `Probe::commit` with the stop rule checking HumanEval's stop strings.
fn harness_ns_per_token(
    m: &LoadedModel,
    prompt: &[u32],
    clock: &dyn Clock,
    dev: &dyn DeviceSync,
) -> Result<f64> {
    const STEPS: usize = 256;
    let mut cache = m.model.new_cache(prompt.len())?;
    let out = m.model.forward(&mut cache, &Forward::causal(prompt, 0))?;
    let row = out.logits.context("logits")?.squeeze(0)?;
    let rule = StopRule {
        max_new_tokens: STEPS + 1,
        eos_ids: vec![],
        stop_strings: ["\ndef ", "\nclass ", "\nif __name__", "\nprint("]
            .map(String::from)
            .to_vec(),
    };
    let tok = m.tokenizer.clone();
    let detok = move |ids: &[u32]| tok.decode(ids).unwrap_or_default();
    let sampling = crate::sampling::SamplingParams::default();
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let mut probe = Probe::start(clock, dev, &detok, &rule);
    // Tokens of real text, so the stop-string window decodes like a run's.
    let text: Vec<u32> = prompt.iter().rev().copied().cycle().take(STEPS).collect();
    let ns = time_ns(clock, dev, &mut || {
        for &t in &text {
            let picked = sampling.pick(&row, &mut rng)?;
            std::hint::black_box(picked);
            probe.commit(super::StepObservation {
                kind: super::StepKind::Decode,
                proposed: 0,
                draft_depth: None,
                accepted: 0,
                tokens: &[t],
                target_calls: 1,
                draft_calls: 0,
                verify_width: 1,
                window: None,
                positions: &[],
            });
        }
        Ok(())
    })?;
    Ok(ns as f64 / STEPS as f64)
}

pub fn run(a: BenchArgs) -> Result<i32> {
    if a.prefill == 0 {
        anyhow::bail!("--prefill 0: expected at least 1 prompt token");
    }
    if a.decode < 1 + usize::from(a.overhead) {
        anyhow::bail!(
            "--decode {}: expected at least {} tokens{}",
            a.decode,
            1 + usize::from(a.overhead),
            if a.overhead {
                " (the overhead test decodes after the first)"
            } else {
                ""
            }
        );
    }
    if a.repeats == 0 {
        anyhow::bail!("--repeats 0: expected at least 1 measured repetition");
    }
    if a.widths.contains(&0) {
        anyhow::bail!("--widths: expected widths of at least 1, got 0");
    }
    let got = match a.threads.as_slice() {
        [] => anyhow::bail!("--threads: expected at least one thread count"),
        [t] => bench_in_process(&a, *t)?,
        many => {
            // candle sizes its thread pools once per process, so each thread
            // count gets a process of its own.
            let mut all = Measurements::default();
            for &t in many {
                all.extend(bench_in_child(&a, t)?);
            }
            all
        }
    };
    let spec = crate::env::DeviceSpec::parse(&a.device)?;
    let report = BenchReport {
        pdbench_version: env!("CARGO_PKG_VERSION").into(),
        git: crate::env::git_info(),
        argv: std::env::args().collect(),
        host: crate::env::host_info(),
        device: spec.name(),
        rows: got.rows,
        overhead: got.overhead,
        profile: got.profile,
        kernels_used: got.kernels_used,
        kernels: got.kernels,
        widths: got.widths,
        kernel_choice: got.kernel_choice,
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
#[derive(Default)]
struct Measurements {
    rows: Vec<BenchRow>,
    overhead: Vec<OverheadRow>,
    profile: Vec<ProfileRow>,
    kernels_used: Vec<KernelsUsed>,
    kernels: Vec<super::kernels::KernelRow>,
    widths: Vec<WidthRow>,
    kernel_choice: Vec<super::kernels::KernelChoice>,
}

impl Measurements {
    fn extend(&mut self, o: Measurements) {
        self.rows.extend(o.rows);
        self.overhead.extend(o.overhead);
        self.profile.extend(o.profile);
        for k in o.kernels_used {
            if !self.kernels_used.contains(&k) {
                self.kernels_used.push(k);
            }
        }
        self.kernels.extend(o.kernels);
        self.widths.extend(o.widths);
        if self.kernel_choice.is_empty() {
            self.kernel_choice = o.kernel_choice;
        }
    }
}

fn bench_in_child(a: &BenchArgs, threads: usize) -> Result<Measurements> {
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
        .arg(&a.device);
    if let Some(d) = &a.dtype {
        cmd.arg("--dtype").arg(d);
    }
    if a.profile {
        cmd.arg("--profile");
    }
    if a.kernels {
        cmd.arg("--kernels");
    }
    if a.no_speed {
        cmd.arg("--no-speed");
    }
    if !a.widths.is_empty() {
        let w: Vec<String> = a.widths.iter().map(|w| w.to_string()).collect();
        cmd.arg("--widths").arg(w.join(","));
    }
    cmd.arg("--out")
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
    Ok(Measurements {
        rows: report.rows,
        overhead: report.overhead,
        profile: report.profile,
        kernels_used: report.kernels_used,
        kernels: report.kernels,
        widths: report.widths,
        kernel_choice: report.kernel_choice,
    })
}

fn bench_in_process(a: &BenchArgs, threads: usize) -> Result<Measurements> {
    let threads = crate::env::set_threads(Some(threads));
    let choice = super::kernels::tune();
    let store = Store::from_env();
    let spec = crate::env::DeviceSpec::parse(&a.device)?;
    let device = spec.open()?;
    let mut out = Measurements {
        kernel_choice: choice,
        ..Default::default()
    };
    for spec_str in &a.models {
        let m = model::load(
            spec_str,
            &store,
            FetchPolicy::Auto,
            &LoadOptions {
                device: device.clone(),
                dtype: a
                    .dtype
                    .as_deref()
                    .map(crate::cli::parse_dtype)
                    .transpose()?,
                ..Default::default()
            },
            &mut |s| eprintln!("{s}"),
        )?;
        let gguf = m
            .info
            .files
            .iter()
            .map(|f| PathBuf::from(&f.path))
            .find(|p| p.extension().is_some_and(|e| e == "gguf"));
        if let Some(path) = &gguf {
            let used = kernels_used(&m.info.label, path)?;
            eprintln!(
                "{}: {}",
                used.model,
                used.formats
                    .iter()
                    .map(|(f, k, n)| format!("{f} ×{n} → {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            out.kernels_used.push(used);
        }
        let r = if a.no_speed {
            vec![]
        } else {
            let (r, o) = bench_model(a, &m, threads)?;
            out.overhead.extend(o);
            r
        };
        if a.profile {
            let mut rng = ChaCha20Rng::seed_from_u64(1234);
            let prompt = random_tokens(a.prefill, m.model.config().vocab_size, &mut rng);
            out.profile.push(profile_decode(a, &m, threads, &prompt)?);
        }
        if !a.widths.is_empty() {
            out.widths.extend(bench_widths(a, &m, threads)?);
        }
        if a.kernels {
            match &gguf {
                Some(path) => out.kernels.extend(super::kernels::bench_kernels(
                    &m.info.label,
                    path,
                    threads,
                    a.repeats,
                )?),
                None => eprintln!("{}: --kernels: not a GGUF model, skipped", m.info.label),
            }
        }
        for x in &r {
            eprintln!(
                "{} t={} {}: {:.1}{} tokens/s",
                x.model,
                x.threads,
                x.test,
                x.tokens_per_s_mean,
                x.tokens_per_s_sd
                    .map_or(" (one repetition)".into(), |sd| format!(" ± {sd:.1}"))
            );
        }
        out.rows.extend(r);
    }
    Ok(out)
}

/// Each weight format of the GGUF at `path` and the kernel it runs on.
fn kernels_used(label: &str, path: &std::path::Path) -> Result<KernelsUsed> {
    use candle_core::quantized::gguf_file;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let ct =
        gguf_file::Content::read(&mut f).with_context(|| format!("reading {}", path.display()))?;
    let mut formats: Vec<(String, String, usize)> = Vec::new();
    for info in ct.tensor_infos.values() {
        let dims = info.shape.dims();
        if dims.len() != 2 {
            continue;
        }
        let format = format!("{:?}", info.ggml_dtype);
        let kernel = crate::model::kernels::kernel_for(info.ggml_dtype, dims[0], dims[1]);
        match formats
            .iter_mut()
            .find(|(f, k, _)| *f == format && *k == kernel)
        {
            Some(x) => x.2 += 1,
            None => formats.push((format, kernel, 1)),
        }
    }
    formats.sort();
    Ok(KernelsUsed {
        model: label.into(),
        formats,
    })
}

/// `--widths`: forwards of k new rows (logits at every row, as a verifier
/// asks) after a context of `--prefill` tokens, the cache cut back after
/// each; median of `--repeats` after one warm-up.
fn bench_widths(a: &BenchArgs, m: &LoadedModel, threads: usize) -> Result<Vec<WidthRow>> {
    let clock = MonotonicClock::new();
    let dev = m.model.device().clone();
    let mut rng = ChaCha20Rng::seed_from_u64(4321);
    let vocab = m.model.config().vocab_size;
    let max_w = a.widths.iter().copied().max().unwrap_or(1);
    let context = random_tokens(a.prefill, vocab, &mut rng);
    let rows_in = random_tokens(max_w, vocab, &mut rng);
    let mut cache = m.model.new_cache(a.prefill + max_w + 1)?;
    m.model.forward(&mut cache, &Forward::causal(&context, 0))?;
    let mut out = Vec::new();
    for &w in &a.widths {
        if w == 0 {
            anyhow::bail!("--widths: expected widths of at least 1, got 0");
        }
        let mut samples = Vec::new();
        for i in 0..=a.repeats {
            cache.truncate(a.prefill)?;
            let ns = time_ns(&clock, &dev, &mut || {
                let out = m.model.forward(
                    &mut cache,
                    &Forward::causal(&rows_in[..w], a.prefill).with_logits(model::LogitsAt::All),
                )?;
                argmax_rows(out.logits.as_ref().expect("logits"))?;
                Ok(())
            })?;
            if i > 0 {
                samples.push(ns as f64);
            }
        }
        let median = stats::median(&samples).unwrap_or(f64::NAN);
        eprintln!(
            "{} t={threads} width {w} after {}: {:.2} ms per forward",
            m.info.label,
            a.prefill,
            median / 1e6
        );
        out.push(WidthRow {
            model: m.info.label.clone(),
            threads,
            context: a.prefill,
            width: w,
            forward_ns_median: median,
            forward_ns_all: samples,
            cost_vs_width_1: None,
        });
    }
    if let Some(one) = out
        .iter()
        .find(|r| r.width == 1)
        .map(|r| r.forward_ns_median)
    {
        for r in &mut out {
            r.cost_vs_width_1 = Some(r.forward_ns_median / one);
        }
    }
    Ok(out)
}

pub fn markdown(r: &BenchReport) -> String {
    let mut s = format!(
        "pdbench {} ({}), {} on {} ({} logical cores; {})\n",
        r.pdbench_version,
        r.git
            .commit
            .as_deref()
            .map(|c| &c[..c.len().min(10)])
            .unwrap_or("unknown commit"),
        r.device,
        r.host.cpu_model,
        r.host.logical_cores,
        if r.host.cpu_flags.is_empty() {
            "CPU flags not recorded".to_string()
        } else {
            r.host.cpu_flags.join(" ")
        }
    );
    if !r.kernel_choice.is_empty() {
        s.push_str(&format!(
            "\nKernel instruction sets, chosen by a start-up measurement (ns per block on an L2-resident weight): {}\n",
            r.kernel_choice
                .iter()
                .map(|c| format!(
                    "{} → {} ({})",
                    c.format,
                    c.isa,
                    c.candidates
                        .iter()
                        .map(|(i, ns)| format!("{i} {ns:.2}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    for k in &r.kernels_used {
        s.push_str(&format!(
            "\nKernels, {}: {}\n",
            k.model,
            k.formats
                .iter()
                .map(|(f, kernel, n)| format!("{f} ({n} tensors) → {kernel}"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if !r.rows.is_empty() {
        s.push_str(
            "\n| model | dtype | threads | test | tokens/s | ± sd |\n|---|---|---|---|---|---|\n",
        );
    }
    for x in &r.rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {} |\n",
            x.model,
            x.dtype,
            x.threads,
            x.test,
            x.tokens_per_s_mean,
            x.tokens_per_s_sd
                .map_or("–".into(), |sd| format!("{sd:.1}"))
        ));
    }
    if !r.overhead.is_empty() {
        s.push_str(
            "\nHarness overhead while decoding with `ar` (time outside model forwards):\n\n| model | threads | harness µs/token | decode ms/token | harness share | end to end, median of pairs |\n|---|---|---|---|---|---|\n",
        );
        for o in &r.overhead {
            s.push_str(&format!(
                "| {} | {} | {:.1} | {:.2} | {:.2}% | {:+.1}% |\n",
                o.model,
                o.threads,
                o.harness_ns_per_token / 1e3,
                o.decode_ns_per_token / 1e6,
                o.harness_pct,
                o.paired_pct_median
            ));
        }
    }
    if !r.kernels.is_empty() {
        s.push_str(
            "\nEach format's matvec on the model's tensors (one decode step's worth), beside a streaming read of the same thread count; hot = one L2-resident slice, compute alone:\n\n| model | threads | format | kernel | tensors | MB per pass | pass ms | GB/s | stream GB/s | % of stream | hot ns/block | hot cycles/block | stream ns/block |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for k in &r.kernels {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.1} | {:.2} | {:.1} | {:.1} | {:.0}% | {:.1} | {} | {:.1} |\n",
                k.model,
                k.threads,
                k.format,
                k.kernel,
                k.tensors,
                k.bytes as f64 / 1e6,
                k.pass_ns / 1e6,
                k.pass_gb_per_s,
                k.stream_gb_per_s,
                k.pct_of_stream,
                k.hot_ns_per_block,
                k.hot_cycles_per_block.map_or("–".into(), |c| format!("{c:.0}")),
                k.stream_ns_per_block
            ));
        }
    }
    if !r.widths.is_empty() {
        s.push_str(
            "\nThe verification cost curve: one forward of k new rows (logits at each) after the context:\n\n| model | threads | context | k | ms per forward | cost(k) ÷ cost(1) |\n|---|---|---|---|---|---|\n",
        );
        for w in &r.widths {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:.2} | {} |\n",
                w.model,
                w.threads,
                w.context,
                w.width,
                w.forward_ns_median / 1e6,
                w.cost_vs_width_1.map_or("–".into(), |c| format!("{c:.2}"))
            ));
        }
    }
    for p in &r.profile {
        let total: u64 = p.phases.iter().map(|x| x.total_ns).sum();
        s.push_str(&format!(
            "\nWhere a decoded token's time goes: {} ({}, {} thread(s)), {} tokens after the prompt, the device synchronised after every phase ({:.1} µs/token profiled):\n\n| phase | µs/token | share | marks/token |\n|---|---|---|---|\n",
            p.model,
            p.dtype,
            p.threads,
            p.tokens,
            p.profiled_ns_per_token / 1e3
        ));
        for x in &p.phases {
            s.push_str(&format!(
                "| {} | {:.1} | {:.1}% | {:.0} |\n",
                x.phase,
                x.total_ns as f64 / 1e3 / p.tokens as f64,
                100.0 * x.total_ns as f64 / total.max(1) as f64,
                x.marks as f64 / p.tokens as f64
            ));
        }
    }
    s
}

#[cfg(test)]
mod random_token_tests {
    use super::*;

    #[test]
    fn random_tokens_stay_inside_small_and_large_vocabularies() {
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        for vocab in [2usize, 70, 49_152, 151_936] {
            let t = random_tokens(500, vocab, &mut rng);
            assert!(t.iter().all(|&x| (x as usize) < vocab), "{vocab}");
        }
        let big = random_tokens(500, 151_936, &mut rng);
        assert!(big.iter().all(|&x| (100..150_936).contains(&x)));
    }
}
