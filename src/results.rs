//! The results store: `results/<run-id>/manifest.json` and `samples.jsonl`.
//!
//! The manifest is replaced atomically (write, fsync, rename). Each sample
//! is appended as one line with a single write and an fsync, so a crash or
//! Ctrl-C loses at most the sample in flight; a torn last line is detected
//! and cut off on resume.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::measure::{FinishReason, StepRecord};
use crate::methods::MethodInstance;
use crate::model::ModelInfo;
use crate::suite::ResolvedSuite;

pub const MANIFEST: &str = "manifest.json";
pub const SAMPLES: &str = "samples.jsonl";
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{path} is not a pdbench run folder (no manifest.json)")]
    NotARun { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ResultsError + '_ {
    move |source| ResultsError::Io {
        path: path.to_path_buf(),
        cause: source,
    }
}

/// Replaces `path` with `bytes` so that readers see the old or the new
/// content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Complete,
    Interrupted,
    Failed,
}

impl RunStatus {
    /// The name the manifest uses.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Complete => "complete",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitInfo {
    pub commit: Option<String>,
    pub dirty: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    pub cpu_model: String,
    pub physical_cores: Option<usize>,
    pub logical_cores: usize,
    pub memory_bytes: u64,
    pub os: String,
    pub kernel: String,
    pub hostname: String,
    /// The SIMD features the kernels can use, as the CPU reports them
    /// (`avx2`, `avx512vnni`, ...): what makes speeds differ between hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_flags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `cpu` or `cuda:N`.
    pub name: String,
    pub threads: usize,
    /// True when the binary was built with the `cuda` feature.
    pub cuda_build: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunModels {
    pub target: ModelInfo,
    pub draft: Option<ModelInfo>,
    /// The EAGLE draft head, for runs with a method that needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_head: Option<crate::model::eagle::HeadInfo>,
    /// The consistency-trained model of `cllm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cllm: Option<ModelInfo>,
    /// The masked-diffusion LM of `dllm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dllm: Option<ModelInfo>,
    /// The Learn2PD filter of `learn2pd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<crate::model::filter::FilterInfo>,
    /// The aligned diffusion drafter of `deer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dllm_drafter: Option<ModelInfo>,
    /// The TiDAR-trained model of `tidar`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tidar: Option<ModelInfo>,
}

/// Everything needed to understand, compare and re-run a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub run_id: String,
    pub status: RunStatus,
    pub pdbench_version: String,
    pub git: GitInfo,
    pub argv: Vec<String>,
    pub created_unix_s: u64,
    pub updated_unix_s: u64,
    pub suite: ResolvedSuite,
    pub methods: Vec<MethodInstance>,
    pub models: RunModels,
    pub device: DeviceInfo,
    pub dtype: String,
    pub seed: u64,
    pub warmup: usize,
    pub repeats: usize,
    /// Only the first `limit` samples of the suite run, if set.
    pub limit: Option<usize>,
    pub max_new_tokens: usize,
    pub host: HostInfo,
    /// How samples are scored: the scorer and, for code, the sandbox.
    #[serde(default)]
    pub scoring: Option<crate::score::ScoringInfo>,
    /// Set when the run stopped early, with the reason.
    pub note: Option<String>,
    /// Energy and memory sources of the run, or why there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<crate::measure::energy::EnergyInfo>,
    /// The part of the work this run does, when sharded (`--shard K/N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// The order work items ran in. A manifest from before the field
    /// ran method by method, unless its `interleave` said otherwise.
    #[serde(default)]
    pub order: RunOrder,
    /// The boolean that recorded `--interleave` before `order` existed;
    /// read into `order`, never written.
    #[serde(default, rename = "interleave", skip_serializing)]
    pub legacy_interleave: bool,
    /// How the thread count was chosen, with the timings behind an
    /// automatic choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads_choice: Option<crate::measure::threads::ThreadsChoice>,
    /// What the interference meter reads on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interference_meter: Option<String>,
    /// The instruction set each GGUF format's kernels ran with, chosen by a
    /// start-up measurement (the same bits either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_choice: Option<Vec<crate::measure::kernels::KernelChoice>>,
}

/// The order a run decodes its work items in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RunOrder {
    /// Prompt by prompt, every method in turn, the order rotating each
    /// prompt: a slow spell of the host falls on every method alike.
    Interleaved,
    /// Method by method, as Spec-Bench does (and every run recorded
    /// before runs had an order).
    #[default]
    Method,
}

impl RunOrder {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunOrder::Interleaved => "interleaved",
            RunOrder::Method => "method",
        }
    }
}

/// Shard `index` (0-based) of `count`: the work items (method × prompt ×
/// repeat, in the run's order) whose position modulo `count` is `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `K/N` with 1 ≤ K ≤ N.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("expected K/N with 1 <= K <= N (such as 2/3), got {s:?}");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n): (usize, usize) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if k == 0 || k > n {
            return Err(bad());
        }
        Ok(Self {
            index: k - 1,
            count: n,
        })
    }

    pub fn holds(&self, item: usize) -> bool {
        item % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.count)
    }
}

impl Manifest {
    /// The prompts the run decodes: the suite's, cut to `--limit`.
    pub fn prompts(&self) -> usize {
        self.limit
            .unwrap_or(self.suite.n_samples)
            .min(self.suite.n_samples)
    }

    /// The work items (method × prompt × repeat) the run was given; a
    /// shard's own share when sharded. A complete run holds a record of
    /// every turn of each.
    pub fn work_items(&self) -> usize {
        let total = self.methods.len() * self.prompts() * self.repeats;
        match self.shard {
            Some(sh) => (0..total).filter(|&i| sh.holds(i)).count(),
            None => total,
        }
    }
}

/// The work items (method, sample, repeat) among records that hold every
/// turn: as many as the most any record of their sample shows (a
/// conversation that lost its later turns is not done).
pub fn work_items_done(samples: &[SampleRecord]) -> usize {
    use std::collections::{BTreeMap, BTreeSet};
    let mut turns_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut items: BTreeMap<(&str, &str, usize), BTreeSet<usize>> = BTreeMap::new();
    for s in samples {
        let t = turns_of.entry(&s.sample_id).or_default();
        *t = (*t).max(s.turn + 1);
        items
            .entry((&s.method, &s.sample_id, s.repeat))
            .or_default()
            .insert(s.turn);
    }
    items
        .iter()
        .filter(|((_, id, _), turns)| turns.len() >= turns_of[id])
        .count()
}

/// Each method's interference summary over its samples, in the manifest's
/// method order; methods without readings are left out.
pub fn interference_by_method(
    m: &Manifest,
    samples: &[SampleRecord],
) -> Vec<(String, crate::measure::interference::InterferenceSummary)> {
    m.methods
        .iter()
        .filter_map(|inst| {
            let readings = samples
                .iter()
                .filter(|s| s.method == inst.label)
                .filter_map(|s| s.interference.as_ref().map(|r| (r, s.wall_ns)));
            crate::measure::interference::summarize(readings, m.device.threads)
                .map(|sum| (inst.label.clone(), sum))
        })
        .collect()
}

/// The methods of a run that the host disturbed beyond `threshold_pct`,
/// as one clause each (`ar lost 23.1% of its thread time to the host`).
pub fn disturbed_methods(
    m: &Manifest,
    samples: &[SampleRecord],
    threshold_pct: f64,
) -> Vec<String> {
    interference_by_method(m, samples)
        .into_iter()
        .filter(|(_, s)| s.over(threshold_pct))
        .map(|(label, s)| {
            format!(
                "{label} lost {:.1}% of its thread time to the host",
                s.interference_pct
            )
        })
        .collect()
}

/// (method label, sample id, repeat, turn): what a record answers.
pub type SampleKey = (String, String, usize, usize);

/// One decoded sample, as written to `samples.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub method: String,
    pub method_id: String,
    pub sample_id: String,
    pub category: Option<String>,
    pub repeat: usize,
    /// Which user turn of a multi-turn sample this answers (0 = the first).
    #[serde(default)]
    pub turn: usize,
    pub seed: u64,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub finish_reason: Option<FinishReason>,
    pub wall_ns: u64,
    pub ttft_ns: Option<u64>,
    /// new_tokens over wall time.
    pub tokens_per_s: f64,
    /// Tokens after the first over the time after it.
    pub decode_tokens_per_s: Option<f64>,
    pub target_calls: u64,
    pub draft_calls: u64,
    /// Decode-step tokens per target forward (Spec-Bench's τ: the bonus
    /// token included, the prefill step excluded).
    pub mean_accepted_tokens: Option<f64>,
    /// Mean drafting time of the decode steps that marked one, in ms: what
    /// the draft costs before the target verifies.
    #[serde(default)]
    pub draft_ms_per_step: Option<f64>,
    /// Decode-step wall time per emitted token, in ms: the cost-aware
    /// figure beside τ (more accepted tokens can still be slower).
    #[serde(default)]
    pub decode_ms_per_token: Option<f64>,
    /// Mean decode steps per window, for methods whose steps record one
    /// (Jacobi: iterations to the fixed point; accepted drafts per step
    /// are its fast-forwarded tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations_per_window: Option<f64>,
    /// Canvas positions committed per forward, for methods that fill a
    /// canvas (diffusion LMs; the trailing EOS fill included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canvas_tokens_per_step: Option<f64>,
    /// Kendall's τ-b between the step that committed each canvas position
    /// and the position: 1 is strictly left to right.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoding_order_tau: Option<f64>,
    /// GPU energy over the sample (NVML), J; absent without a source (the
    /// manifest's `energy` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_energy_j: Option<f64>,
    /// CPU package energy over the sample (RAPL), J.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_energy_j: Option<f64>,
    /// Energy per generated token (GPU where measured, else CPU), J.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joules_per_token: Option<f64>,
    /// Mean power over the sample's wall time (same source), W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_watts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_gpu_mem_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// Meters that failed on this sample.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub energy_errors: Vec<String>,
    /// What the host did to the sample while it was timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interference: Option<crate::measure::interference::InterferenceReading>,
    /// Of the sample's thread time (wall × the run's threads), the percent
    /// the host took: run-queue delay and steal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interference_pct: Option<f64>,
    pub output_ids: Vec<u32>,
    pub output_text: String,
    /// The suite scorer's headline score in [0, 1]; `None` when unscored.
    pub score: Option<f64>,
    /// Every score the scorer gives (`score`, `score_strict`, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub scores: crate::score::Scores,
    pub steps: Vec<StepRecord>,
}

impl SampleRecord {
    pub fn key(&self) -> SampleKey {
        (
            self.method.clone(),
            self.sample_id.clone(),
            self.repeat,
            self.turn,
        )
    }
}

/// A run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn create(path: &Path) -> Result<Self, ResultsError> {
        std::fs::create_dir_all(path).map_err(io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn open(path: &Path) -> Result<Self, ResultsError> {
        if !path.join(MANIFEST).is_file() {
            return Err(ResultsError::NotARun {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.path.join(MANIFEST)
    }

    pub fn samples_path(&self) -> PathBuf {
        self.path.join(SAMPLES)
    }

    pub fn write_manifest(&self, m: &Manifest) -> Result<(), ResultsError> {
        let p = self.manifest_path();
        let text = serde_json::to_string_pretty(m).expect("manifest serialises");
        write_atomic(&p, text.as_bytes()).map_err(io(&p))
    }

    pub fn read_manifest(&self) -> Result<Manifest, ResultsError> {
        let p = self.manifest_path();
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        let mut m: Manifest = serde_json::from_str(&text).map_err(|e| ResultsError::Parse {
            path: p.clone(),
            detail: format!("not a pdbench manifest: {e}"),
        })?;
        if m.legacy_interleave {
            m.order = RunOrder::Interleaved;
            m.legacy_interleave = false;
        }
        Ok(m)
    }

    /// Appends one sample as a single line, durably.
    pub fn append_sample(&self, r: &SampleRecord) -> Result<(), ResultsError> {
        let p = self.samples_path();
        let mut line = serde_json::to_vec(r).expect("sample serialises");
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(io(&p))?;
        f.write_all(&line).map_err(io(&p))?;
        f.sync_data().map_err(io(&p))?;
        Ok(())
    }

    /// Reads every complete sample. A torn last line (a crash mid-write) is
    /// reported, not an error; any other bad line is.
    pub fn read_samples(&self) -> Result<(Vec<SampleRecord>, bool), ResultsError> {
        let p = self.samples_path();
        if !p.exists() {
            return Ok((vec![], false));
        }
        let bytes = std::fs::read(&p).map_err(io(&p))?;
        parse_samples(&p, &bytes)
    }

    /// Cuts a torn last line so that appends continue on a clean boundary.
    pub fn repair(&self) -> Result<bool, ResultsError> {
        let p = self.samples_path();
        if !p.exists() {
            return Ok(false);
        }
        let bytes = std::fs::read(&p).map_err(io(&p))?;
        let keep = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => 0,
        };
        if keep == bytes.len() {
            return Ok(false);
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(io(&p))?;
        f.set_len(keep as u64).map_err(io(&p))?;
        f.sync_all().map_err(io(&p))?;
        Ok(true)
    }

    /// Finished records by key, with their output text (a later turn of a
    /// conversation needs the earlier answers).
    pub fn done(&self) -> Result<HashMap<SampleKey, String>, ResultsError> {
        Ok(self
            .read_samples()?
            .0
            .into_iter()
            .map(|r| (r.key(), r.output_text))
            .collect())
    }
}

fn parse_samples(path: &Path, bytes: &[u8]) -> Result<(Vec<SampleRecord>, bool), ResultsError> {
    let mut out = Vec::new();
    let mut torn = false;
    let ends_clean = bytes.last().is_none_or(|&b| b == b'\n');
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let n = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let last = i + 1 == n;
        match serde_json::from_slice::<SampleRecord>(line) {
            Ok(r) => out.push(r),
            Err(_) if last && !ends_clean => torn = true,
            Err(e) => {
                return Err(ResultsError::Parse {
                    path: path.to_path_buf(),
                    detail: format!("line {}: not a sample record: {e}", i + 1),
                })
            }
        }
    }
    Ok((out, torn))
}

/// A run id from the time and a short random suffix.
/// A run id given by hand: one plain folder name under the results folder,
/// so that a run can neither land in the results folder itself nor outside
/// it.
pub fn parse_run_id(id: &str) -> Result<String, String> {
    let plain = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if id.is_empty() || !plain || id.starts_with('.') {
        return Err(format!(
            "expected a folder name of letters, digits, '.', '_' and '-' that does not start with '.', got {id:?}"
        ));
    }
    Ok(id.to_string())
}

pub fn new_run_id(now_unix_s: u64, entropy: u64) -> String {
    let days = now_unix_s / 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    let secs = now_unix_s % 86_400;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{:04x}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        entropy & 0xffff
    )
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_given_run_ids_are_plain_folder_names() {
        for good in ["nightly-2026-12-05", "he_1", "a.b", "20261122-140316-abcd"] {
            assert_eq!(parse_run_id(good).as_deref(), Ok(good));
        }
        for bad in ["", ".", "..", "../escape", "a/b", "a\\b", ".hidden", "a b"] {
            assert!(parse_run_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn run_ids_are_dated() {
        // 2026-11-22 14:03:16 UTC
        assert_eq!(new_run_id(1_795_356_196, 0xabcd), "20261122-140316-abcd");
    }

    #[test]
    fn torn_tail_is_detected_not_fatal() {
        let rec = r#"{"method":"ar","method_id":"ar","sample_id":"0","category":null,"repeat":0,"seed":1,"prompt_tokens":3,"new_tokens":1,"finish_reason":"length","wall_ns":5,"ttft_ns":5,"tokens_per_s":1.0,"decode_tokens_per_s":null,"target_calls":1,"draft_calls":0,"mean_accepted_tokens":null,"output_ids":[1],"output_text":"a","score":null,"steps":[]}"#;
        let bytes = format!("{rec}\n{}", &rec[..40]);
        let (rows, torn) = parse_samples(Path::new("x"), bytes.as_bytes()).unwrap();
        assert_eq!(rows.len(), 1);
        assert!(torn);
        let bad = format!("{}\n{rec}\n", &rec[..40]);
        assert!(parse_samples(Path::new("x"), bad.as_bytes()).is_err());
    }

    /// A two-turn conversation counts as done only with both turns.
    #[test]
    fn a_work_item_is_done_with_every_turn() {
        let rec = |method: &str, id: &str, turn: usize| -> SampleRecord {
            serde_json::from_str(&format!(
                r#"{{"method":"{method}","method_id":"ar","sample_id":"{id}","category":null,"repeat":0,"turn":{turn},"seed":1,"prompt_tokens":3,"new_tokens":1,"finish_reason":"length","wall_ns":5,"ttft_ns":5,"tokens_per_s":1.0,"decode_tokens_per_s":null,"target_calls":1,"draft_calls":0,"mean_accepted_tokens":null,"output_ids":[1],"output_text":"a","score":null,"steps":[]}}"#
            ))
            .unwrap()
        };
        let all = vec![
            rec("ar", "q1", 0),
            rec("ar", "q1", 1),
            rec("pld", "q1", 0),
            rec("pld", "q1", 1),
            rec("ar", "q2", 0),
            rec("ar", "q2", 1),
            rec("pld", "q2", 0),
        ];
        // pld lost q2's second turn.
        assert_eq!(work_items_done(&all), 3);
        assert_eq!(work_items_done(&all[..6]), 3);
        assert_eq!(work_items_done(&all[..4]), 2);
    }
}
