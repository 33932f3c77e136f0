//! Black-box tests of the `pdbench` binary: the run → results → report
//! path, resume after a crash, and clear errors (never a panic) on bad
//! input. They use tiny random models written in the hub layout, so they
//! need no downloads.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use pdbench::model::Architecture;
use predicates::prelude::*;

fn pdbench(home: &Path) -> Command {
    let mut c = Command::cargo_bin("pdbench").unwrap();
    // An empty store and hub cache: nothing is fetched or found by accident.
    c.env("PDBENCH_HOME", home.join("store"))
        .env("HF_HUB_CACHE", home.join("hub"))
        .env("HF_HUB_OFFLINE", "1")
        .env("RAYON_NUM_THREADS", "1");
    c
}

/// A failed command: exit 1, `Error: ` first, no panic, and every needle in
/// the message.
fn fails_with(cmd: &mut Command, needles: &[&str]) -> String {
    let out = cmd.assert().code(1).get_output().clone();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !err.contains("panicked"),
        "a panic instead of an error:\n{err}"
    );
    assert!(err.contains("Error: "), "no error line:\n{err}");
    for n in needles {
        assert!(err.contains(n), "the error does not mention {n:?}:\n{err}");
    }
    err
}

/// A world holding the run `base`: the toy suite's first 12 prompts with
/// `ar` and `pld`.
fn world_with_base() -> (World, PathBuf) {
    let w = World::new();
    w.toy_run(
        "base",
        &["--limit", "12", "--method", "ar", "--method", "pld"],
    )
    .assert()
    .success();
    let base = w.path("results/base");
    (w, base)
}

/// report.csv's rows over all categories, by method label: column → cell.
fn report_csv_overall(out: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut csv = csv::Reader::from_path(out.join("report.csv")).unwrap();
    let header = csv.headers().unwrap().clone();
    csv.records()
        .map(|r| {
            let r = r.unwrap();
            header
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        })
        .filter(|r| r["category"] == "all")
        .map(|r| (r["method"].clone(), r))
        .collect()
}

/// A command's stdout, given the exit code it must end with.
fn stdout_code(cmd: &mut Command, code: i32) -> String {
    let out = cmd.assert().code(code).get_output().clone();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The line of a Markdown table that starts with `prefix`.
fn table_row<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no row {prefix:?} in:\n{text}"))
}

/// A command that succeeds, and its stdout.
fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.assert().success().get_output().clone();
    String::from_utf8_lossy(&out.stdout).to_string()
}

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let w = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        common::tiny_model(&w.model(), Architecture::Llama, 1);
        common::tiny_suite(&w.path("suite"), 4, 6);
        w
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn model(&self) -> PathBuf {
        self.path("tiny-llama")
    }
    fn suite(&self) -> PathBuf {
        self.path("suite/tiny.toml")
    }
    fn cmd(&self) -> Command {
        pdbench(self.dir.path())
    }
    /// `pdbench run` of the tiny model on `suite`, into this world's results.
    fn run_suite(&self, suite: &Path) -> Command {
        let mut c = self.cmd();
        c.args(["run", "--model"])
            .arg(self.model())
            .arg("--suite")
            .arg(suite)
            .arg("--results-dir")
            .arg(self.path("results"));
        c
    }
    /// `pdbench report RUN --out OUT`.
    fn report(&self, run: &Path, out: &Path) -> Command {
        let mut c = self.cmd();
        c.arg("report").arg(run).arg("--out").arg(out);
        c
    }
    /// `pdbench run` on the toy suite, no warm-up, no report, as run `id`
    /// in this world's `results`.
    fn toy_run(&self, id: &str, extra: &[&str]) -> Command {
        let mut c = self.cmd();
        c.args(["run", "--suite", "toy", "--warmup", "0", "--no-report"])
            .args(["--run-id", id, "--results-dir"])
            .arg(self.path("results"))
            .args(extra);
        c
    }
    /// `pdbench compare BASE NEW` over this world's `results`.
    fn compare(&self, base: &str, new: &str) -> Command {
        let mut c = self.cmd();
        // These runs are made while other tests run beside them; the
        // interference refusal has tests of its own.
        c.args([
            "compare",
            base,
            new,
            "--max-interference",
            "100",
            "--results-dir",
        ])
        .arg(self.path("results"));
        c
    }
    fn run(&self, extra: &[&str]) -> Command {
        let mut c = self.cmd();
        c.arg("run")
            .arg("--model")
            .arg(self.model())
            .arg("--suite")
            .arg(self.suite())
            .arg("--results-dir")
            .arg(self.path("results"))
            .args(["--warmup", "1"])
            .args(extra);
        c
    }
}

fn read_lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn list_shows_methods_and_suites() {
    let home = tempfile::tempdir().unwrap();
    pdbench(home.path())
        .args(["list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("ar ").and(predicate::str::contains("smoke")));
}

#[test]
fn run_writes_manifest_and_samples_then_report_renders_them() {
    let w = World::new();
    w.run(&["--run-id", "r1", "--method", "ar", "--no-report"])
        .assert()
        .success();
    let run = w.path("results/r1");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["status"], "complete");
    assert_eq!(manifest["suite"]["def"]["name"], "tiny");
    assert_eq!(manifest["methods"][0]["id"], "ar");
    assert_eq!(manifest["device"]["name"], "cpu");
    assert!(manifest["host"]["logical_cores"].as_u64().unwrap() >= 1);
    let files = manifest["models"]["target"]["files"].as_array().unwrap();
    assert!(files
        .iter()
        .all(|f| f["sha256"].as_str().unwrap().len() == 64));
    let samples = read_lines(&run.join("samples.jsonl"));
    assert_eq!(samples.len(), 4, "four samples, warm-up not recorded");
    for s in &samples {
        let ids = s["output_ids"].as_array().unwrap();
        assert_eq!(s["new_tokens"].as_u64().unwrap() as usize, ids.len());
        let steps = s["steps"].as_array().unwrap();
        let emitted: u64 = steps.iter().map(|x| x["emitted"].as_u64().unwrap()).sum();
        assert_eq!(emitted as usize, ids.len());
        assert!(s["wall_ns"].as_u64().unwrap() > 0);
    }

    let out = w.path("rep");
    w.report(&run, &out)
        .assert()
        .success()
        .stdout(predicate::str::contains("| ar"));
    for f in [
        "report.md",
        "report.csv",
        "report.parquet",
        "report.tex",
        "tokens_per_s.png",
        "tokens_per_s.svg",
    ] {
        let p = out.join(f);
        assert!(
            p.is_file() && std::fs::metadata(&p).unwrap().len() > 0,
            "{f} missing"
        );
    }
    let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    for col in [
        "tokens_per_s_median",
        "speedup_ci_low",
        "score_ci_high",
        "lossless_pct",
    ] {
        assert!(header.contains(col), "{col} missing: {header}");
    }
    let tex = std::fs::read_to_string(out.join("report.tex")).unwrap();
    assert!(
        tex.contains("\\toprule") && tex.contains("Spec-Bench"),
        "{tex}"
    );
}

#[test]
fn resume_completes_an_interrupted_run_without_repeating_samples() {
    let w = World::new();
    w.run(&["--method", "ar", "--run-id", "r", "--no-report"])
        .assert()
        .success();
    let run = w.path("results/r");
    let samples = run.join("samples.jsonl");
    let full = std::fs::read_to_string(&samples).unwrap();
    let lines: Vec<&str> = full.lines().collect();
    // A crash after two samples, in the middle of writing the third.
    let torn = format!("{}\n{}\n{}", lines[0], lines[1], &lines[2][..20]);
    std::fs::write(&samples, torn).unwrap();
    let mpath = run.join("manifest.json");
    let m = std::fs::read_to_string(&mpath)
        .unwrap()
        .replace("\"complete\"", "\"running\"");
    std::fs::write(&mpath, m).unwrap();

    w.cmd()
        .args(["run", "--resume", run.to_str().unwrap(), "--no-report"])
        .assert()
        .success()
        .stderr(predicate::str::contains("2 samples already done"));
    let after = read_lines(&samples);
    assert_eq!(after.len(), 4);
    let ids: Vec<&str> = after
        .iter()
        .map(|s| s["sample_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["p0", "p1", "p2", "p3"],
        "finished samples kept, none repeated"
    );
    assert_eq!(
        serde_json::to_string(&after[0]).unwrap(),
        serde_json::to_string(&serde_json::from_str::<serde_json::Value>(lines[0]).unwrap())
            .unwrap(),
        "the first sample is the original record"
    );
    // Greedy decoding is deterministic: the resumed samples equal the first run's.
    let first: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(after[2]["output_ids"], first[2]["output_ids"]);
    let manifest = std::fs::read_to_string(&mpath).unwrap();
    assert!(manifest.contains("\"complete\""));
}

#[test]
fn a_second_run_with_the_same_id_is_refused() {
    let w = World::new();
    w.run(&["--run-id", "same", "--no-report"])
        .assert()
        .success();
    fails_with(
        &mut w.run(&["--run-id", "same", "--no-report"]),
        &["--run-id same", "--resume same"],
    );
}

#[test]
fn missing_model_file_is_a_clear_error() {
    let w = World::new();
    let mut c = w.cmd();
    c.args(["run", "--no-fetch", "--model"])
        .arg(w.path("nowhere/model.gguf"))
        .arg("--suite")
        .arg(w.suite());
    fails_with(&mut c, &["nowhere/model.gguf", "not a file, a folder"]);

    // A folder in the hub layout without its weights.
    std::fs::remove_file(w.model().join("model.safetensors")).unwrap();
    fails_with(&mut w.run(&[]), &["model.safetensors", "missing weights"]);
}

#[test]
fn corrupt_gguf_and_safetensors_are_clear_errors() {
    let w = World::new();
    let gguf = w.path("broken.gguf");
    std::fs::write(&gguf, b"GGUF\x03\x00\x00\x00 this is not a model").unwrap();
    let mut c = w.cmd();
    c.args(["run", "--model"])
        .arg(&gguf)
        .arg("--suite")
        .arg(w.suite());
    fails_with(&mut c, &["broken.gguf", "corrupt or truncated"]);

    // Truncate the safetensors file in the middle of its data.
    let st = w.model().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &mut w.run(&[]),
        &["model.safetensors", "corrupt or truncated"],
    );
}

#[test]
fn unknown_architecture_is_a_clear_error() {
    let w = World::new();
    let cfg = w.model().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["architectures"] = serde_json::json!(["MambaForCausalLM"]);
    v["model_type"] = serde_json::json!("mamba");
    std::fs::write(&cfg, v.to_string()).unwrap();
    fails_with(
        &mut w.run(&[]),
        &["config.json", "unknown architecture", "mamba"],
    );
}

#[test]
fn prompt_longer_than_the_context_is_a_clear_error() {
    let w = World::new();
    let dir = w.path("long");
    std::fs::create_dir_all(&dir).unwrap();
    let long = "a very long prompt ".repeat(40); // 760 byte tokens > 256
    std::fs::write(
        dir.join("data.jsonl"),
        format!("{}\n", serde_json::json!({"id": "long-1", "prompt": long})),
    )
    .unwrap();
    std::fs::write(
        dir.join("long.toml"),
        "name = \"long\"\nversion = \"1\"\nsource = { jsonl = \"data.jsonl\" }\nid_field = \"id\"\nprompt_field = \"prompt\"\nchat_template = \"none\"\nmax_new_tokens = 8\n",
    )
    .unwrap();
    let mut c = w.run_suite(&dir.join("long.toml"));
    fails_with(
        &mut c,
        &["sample long-1", "max_new_tokens 8", "context of 256"],
    );

    // A prompt that fits with its token budget runs with `ar`, which
    // forwards nothing past the output; a method whose drafts would not fit
    // is named with the room its parameters ask for.
    let near = "x".repeat(240);
    std::fs::write(
        dir.join("data.jsonl"),
        format!("{}\n", serde_json::json!({"id": "near-1", "prompt": near})),
    )
    .unwrap();
    w.run_suite(&dir.join("long.toml"))
        .args(["--method", "ar", "--warmup", "0", "--no-report"])
        .assert()
        .success();
    let mut c = w.run_suite(&dir.join("long.toml"));
    c.args([
        "--method",
        "pld",
        "--set",
        "pld.max_draft=16",
        "--no-report",
    ]);
    fails_with(
        &mut c,
        &[
            "sample near-1",
            "plus 16 for the drafts of method pld",
            "context of 256",
        ],
    );
}

#[test]
fn malformed_suite_names_the_field() {
    let w = World::new();
    let bad = w.path("suite/bad.toml");
    std::fs::write(
        &bad,
        "name = \"bad\"\nversion = \"1\"\nsource = { jsonl = \"data.jsonl\" }\nprompt_field = \"prompt\"\nmax_new_tokens = 8\nmax_new_tokenz = 9\n",
    )
    .unwrap();
    let mut c = w.run_suite(&bad);
    fails_with(&mut c, &["bad.toml", "max_new_tokenz"]);

    std::fs::write(
        &bad,
        "name = \"bad\"\nversion = \"1\"\nsource = { jsonl = \"data.jsonl\" }\nprompt_field = \"text\"\nmax_new_tokens = 8\n",
    )
    .unwrap();
    let mut c = w.run_suite(&bad);
    fails_with(&mut c, &["data.jsonl", "text"]);
}

#[test]
fn unknown_method_and_bad_params_are_clear_errors() {
    let w = World::new();
    fails_with(
        &mut w.run(&["--method", "ra"]),
        &["no method `ra`", "did you mean `ar`"],
    );
    fails_with(
        &mut w.run(&["--set", "ar.temprature=0.5"]),
        &["`ar`", "temprature"],
    );
    fails_with(
        &mut w.run(&["--set", "ar.temperature=-1"]),
        &["`ar`", "temperature"],
    );
    for (method, set, field) in [
        ("sps", "sps.draft_len=0", "draft_len"),
        ("pld", "pld.max_ngram=0", "max_ngram"),
        ("jacobi", "jacobi.window=0", "window"),
        ("lookahead", "lookahead.ngram=1", "ngram"),
    ] {
        let mut c = w.run(&["--method", method, "--set", set]);
        if method == "sps" {
            c.arg("--draft").arg(w.model());
        }
        fails_with(&mut c, &[&format!("`{method}`"), field]);
    }
    // Refused before the run began: no run folder was left behind.
    let results = w.path("results");
    let left: Vec<_> = std::fs::read_dir(&results)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "failed starts left {left:?}");
}

#[test]
fn cuda_on_a_cpu_build_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let w = World::new();
    fails_with(
        &mut w.run(&["--device", "cuda:0"]),
        &["--device cuda:0", "built without CUDA"],
    );
    fails_with(
        &mut w.run(&["--device", "tpu"]),
        &["--device tpu", "expected"],
    );
}

#[test]
fn drafter_with_another_tokenizer_is_refused() {
    let w = World::new();
    let other = w.path("other-draft");
    common::tiny_model(&other, Architecture::Qwen2, 2);
    // Same size, different vocabulary: two byte tokens swap ids.
    let tp = other.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tp).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = ("a", "b");
    let (ia, ib) = (vocab[a].clone(), vocab[b].clone());
    vocab.insert(a.into(), ib);
    vocab.insert(b.into(), ia);
    std::fs::write(&tp, tok.to_string()).unwrap();
    let mut c = w.run(&[]);
    c.arg("--draft").arg(&other);
    fails_with(&mut c, &["--draft", "do not share a tokenizer"]);
}

/// `dllm` without a diffusion LM, with an AR model in its place, or with
/// parameters that do not fit fails with the flag or field and what was
/// expected; on the zoo it runs and the manifest records the model.
#[test]
fn dllm_needs_a_masked_diffusion_model() {
    let w = World::new();
    fails_with(&mut w.run(&["--method", "dllm"]), &["dllm", "--dllm"]);
    let zoo = |extra: &[&str]| {
        let mut c = w.cmd();
        c.args(["run", "--suite", "toy", "--limit", "2", "--warmup", "0"])
            .arg("--results-dir")
            .arg(w.path("results"))
            .args(extra);
        c
    };
    fails_with(
        &mut zoo(&["--method", "dllm", "--dllm", "toy-target"]),
        &["--dllm toy-target", "not a masked-diffusion LM"],
    );
    fails_with(
        &mut zoo(&[
            "--method",
            "dllm",
            "--dllm",
            "toy-bdllm",
            "--set",
            "dllm.block_length=8",
        ]),
        &["block_length", "blocks of 4"],
    );
    fails_with(
        &mut zoo(&["--method", "dllm", "--set", "dllm.tokens_per_step=0"]),
        &["dllm", "tokens_per_step", "at least 1"],
    );
    fails_with(
        &mut zoo(&[
            "--method",
            "dllm",
            "--set",
            "dllm.strategy=\"threshold\"",
            "--set",
            "dllm.tokens_per_step=2",
        ]),
        &["dllm", "tokens_per_step", "top-k"],
    );
    fails_with(
        &mut zoo(&["--method", "dllm", "--set", "dllm.cache=\"full\""]),
        &["dllm", "cache", "dual"],
    );
    // The other diffusion-side models are checked for what they are.
    fails_with(
        &mut zoo(&["--method", "tidar", "--tidar", "toy-dllm"]),
        &["--tidar toy-dllm", "not a TiDAR-trained model"],
    );
    fails_with(
        &mut zoo(&["--method", "deer", "--dllm-drafter", "toy-tidar"]),
        &["--dllm-drafter toy-tidar", "not a masked-diffusion LM"],
    );
    fails_with(
        &mut zoo(&[
            "--method",
            "diffuspec",
            "--set",
            "diffuspec.draft_len_max=2",
        ]),
        &["diffuspec", "draft_len_max", "draft_len_min"],
    );
    zoo(&[
        "--method",
        "dllm",
        "--dllm",
        "toy-bdllm",
        "--set",
        "dllm.cache=\"prefix\"",
        "--run-id",
        "bdllm",
        "--no-report",
    ])
    .assert()
    .success();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(w.path("results/bdllm/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["models"]["dllm"]["diffusion"]["block_size"], 4);
    assert_eq!(manifest["methods"][0]["params"]["cache"], "prefix");
    assert_eq!(manifest["methods"][0]["params"]["tokens_per_step"], 1);
}

/// DiffuSpec's ablations run from the command line: `--no-cps` and
/// `--no-adl` switch them off in every `diffuspec` instance (the manifest
/// records it), and name what is missing in a run without one.
#[test]
fn diffuspec_ablations_run_from_flags() {
    let w = World::new();
    let zoo = |extra: &[&str]| {
        let mut c = w.cmd();
        c.args(["run", "--suite", "toy", "--limit", "2", "--warmup", "0"])
            .arg("--results-dir")
            .arg(w.path("results"))
            .args(extra);
        c
    };
    fails_with(
        &mut zoo(&["--method", "ar", "--no-cps"]),
        &["--no-cps", "diffuspec"],
    );
    zoo(&[
        "--method",
        "diffuspec",
        "--no-cps",
        "--no-adl",
        "--run-id",
        "ablation",
        "--no-report",
    ])
    .assert()
    .success();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(w.path("results/ablation/manifest.json")).unwrap(),
    )
    .unwrap();
    let params = &manifest["methods"][0]["params"];
    assert_eq!(
        (&params["cps"], &params["adl"]),
        (&json_false(), &json_false())
    );
    assert_eq!(manifest["models"]["dllm"]["label"], "toy-dllm");
}

fn json_false() -> serde_json::Value {
    serde_json::Value::Bool(false)
}

/// `eagle` without a head, with a head of another size, or with a folder
/// that holds no weights fails with the flag and what was expected; a
/// head that fits runs and the manifest records its files.
#[test]
fn eagle_needs_a_head_that_fits_the_target() {
    let w = World::new();
    fails_with(
        &mut w.run(&["--method", "eagle"]),
        &["eagle", "--draft-head"],
    );
    let mut small = pdbench::model::random::tiny_config(Architecture::Llama);
    small.hidden_size = 32;
    small.num_attention_heads = 2;
    small.num_key_value_heads = 2;
    pdbench::model::random::write_random_head(&w.path("small-head"), &small, 48, 1).unwrap();
    let mut c = w.run(&["--method", "eagle"]);
    c.arg("--draft-head").arg(w.path("small-head"));
    fails_with(&mut c, &["--draft-head", "hidden_size", "64"]);
    std::fs::create_dir_all(w.path("no-weights")).unwrap();
    std::fs::copy(
        w.path("small-head/config.json"),
        w.path("no-weights/config.json"),
    )
    .unwrap();
    let mut c = w.run(&["--method", "eagle"]);
    c.arg("--draft-head").arg(w.path("no-weights"));
    fails_with(
        &mut c,
        &["--draft-head", "model.safetensors or pytorch_model.bin"],
    );

    let cfg = pdbench::model::random::tiny_config(Architecture::Llama);
    pdbench::model::random::write_random_head(&w.path("head"), &cfg, 48, 2).unwrap();
    let mut c = w.run(&["--method", "eagle", "--method", "ar", "--run-id", "eagle"]);
    c.arg("--draft-head").arg(w.path("head"));
    c.assert().success();
    let run = w.path("results/eagle");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["models"]["draft_head"]["files"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let samples = read_lines(&run.join("samples.jsonl"));
    let ids = |m: &str| -> Vec<serde_json::Value> {
        samples
            .iter()
            .filter(|s| s["method"] == m)
            .map(|s| s["output_ids"].clone())
            .collect()
    };
    assert_eq!(ids("eagle").len(), 4);
    assert_eq!(ids("eagle"), ids("ar"), "eagle is lossless through the CLI");

    // A hub id resolves from the hf-hub cache layout, as released heads
    // would be downloaded; an absent one says what to put where.
    let repo = w.path("hub/models--head-org--tiny-head");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(w.path("head").join(f), snap.join(f)).unwrap();
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    w.run(&[
        "--method",
        "eagle",
        "--draft-head",
        "head-org/tiny-head",
        "--run-id",
        "hub-head",
    ])
    .assert()
    .success();
    fails_with(
        &mut w.run(&["--method", "eagle", "--draft-head", "head-org/absent"]),
        &[
            "--draft-head",
            "head-org/absent",
            "config.json",
            "models--head-org--absent",
        ],
    );
}

/// A hub id resolves from a local folder in hf-hub's cache layout
/// (`models--org--name/snapshots/<commit>` plus `refs/main`); one that is not
/// there, with the hub out of reach, says what to download and where.
#[test]
fn hub_ids_resolve_from_the_hf_hub_cache_layout() {
    let w = World::new();
    let repo = w.path("hub/models--tiny-org--tiny-llama");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(w.model().join(f), snap.join(f)).unwrap();
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();

    w.cmd()
        .args(["models", "show", "tiny-org/tiny-llama"])
        .assert()
        .success()
        .stdout(predicate::str::contains("hub tiny-org/tiny-llama@main"));
    let mut c = w.cmd();
    c.args(["run", "--model", "tiny-org/tiny-llama", "--suite"])
        .arg(w.suite())
        .arg("--results-dir")
        .arg(w.path("results"))
        .args(["--run-id", "hub", "--no-report"]);
    c.assert().success();

    fails_with(
        w.cmd().args(["models", "show", "someone/absent-model"]),
        &[
            "someone/absent-model",
            "cannot be reached",
            "config.json",
            "models--someone--absent-model",
        ],
    );
}

#[test]
fn report_on_a_folder_that_is_not_a_run_is_a_clear_error() {
    let w = World::new();
    std::fs::create_dir_all(w.path("empty")).unwrap();
    fails_with(
        w.cmd().args(["report", w.path("empty").to_str().unwrap()]),
        &["empty", "not a pdbench run folder"],
    );
    // One run given twice (here under two spellings) would repeat its rows.
    w.run(&["--method", "ar", "--run-id", "r", "--no-report"])
        .assert()
        .success();
    let run = w.path("results/r");
    let again = w.path("results/../results/r");
    fails_with(
        w.cmd().arg("report").arg(&run).arg(&again),
        &["the same run is given twice"],
    );
}

#[test]
fn methods_file_runs_each_labelled_instance() {
    let w = World::new();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("methods/ar-greedy-and-sampled.toml");
    let mut c = w.run(&["--run-id", "mf", "--no-report"]);
    c.arg("--methods-file").arg(&file);
    c.assert().success();
    let run = w.path("results/mf");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    let methods = manifest["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 2);
    assert_eq!(methods[1]["label"], "ar-t07");
    assert_eq!(methods[1]["params"]["temperature"], 0.7);
    assert_eq!(
        methods[1]["params"]["top_k"], 0,
        "defaults are recorded too"
    );
    let samples = read_lines(&run.join("samples.jsonl"));
    assert_eq!(samples.len(), 8);
    assert_eq!(
        samples.iter().filter(|s| s["method"] == "ar-t07").count(),
        4
    );
}

/// `pdbench score` judges saved outputs with the suite's scorer and loads
/// no model; a run of such a suite records each sample's scores.
#[test]
fn score_command_scores_saved_outputs_without_a_model() {
    let w = World::new();
    let dir = w.path("lists");
    std::fs::create_dir_all(&dir).unwrap();
    let rows = [
        ("a", "people", r#"["Ann Lee", "Bo Chen"]"#),
        ("b", "people", r#"["Cy Dunn", "Di Ma", "Ed Roe"]"#),
        ("c", "pets", r#"["Rex"]"#),
    ];
    let data: String = rows
        .iter()
        .map(|(id, cat, ans)| {
            format!(
                "{}\n",
                serde_json::json!({"id": id, "cat": cat, "prompt": format!("copy {ans}"), "answer": ans})
            )
        })
        .collect();
    std::fs::write(dir.join("data.jsonl"), data).unwrap();
    std::fs::write(
        dir.join("lists.toml"),
        "name = \"lists\"\nversion = \"1\"\nsource = { jsonl = \"data.jsonl\" }\nid_field = \"id\"\nprompt_field = \"prompt\"\ncategory_field = \"cat\"\nreference_field = \"answer\"\nchat_template = \"none\"\nmax_new_tokens = 4\nscorer = \"list_match_score\"\n",
    )
    .unwrap();
    let outputs = dir.join("outputs.jsonl");
    std::fs::write(
        &outputs,
        concat!(
            r#"{"sample_id": "a", "method": "m", "output_text": "Sure: [\"Ann Lee\", \"Bo Chen\"]"}"#, "\n",
            r#"{"sample_id": "b", "method": "m", "output_text": "[Cy Dunn, Di Ma, Ed Roe]"}"#, "\n",
            r#"{"sample_id": "c", "method": "m", "output_text": "[\"Rex\", \"Rex\"]"}"#, "\n",
        ),
    )
    .unwrap();
    let json = dir.join("scores.json");
    let mut c = w.cmd();
    c.args(["score", "--suite"])
        .arg(dir.join("lists.toml"))
        .arg("--outputs")
        .arg(&outputs)
        .arg("--out")
        .arg(&json)
        // No model anywhere: nothing to load.
        .env("PDBENCH_HOME", w.path("no-store"));
    c.assert().success();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let group = |cat: &str| {
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["category"] == cat)
            .unwrap()
            .clone()
    };
    assert_eq!(group("all")["samples"], 3);
    assert!((group("all")["means"]["score"].as_f64().unwrap() - 200.0 / 3.0).abs() < 1e-9);
    assert!((group("all")["means"]["score_strict"].as_f64().unwrap() - 100.0 / 3.0).abs() < 1e-9);
    assert_eq!(group("people")["means"]["score"], 100.0);
    assert_eq!(group("pets")["means"]["score"], 0.0);

    // An id the suite does not hold names the file and line.
    std::fs::write(
        &outputs,
        "{\"sample_id\": \"a\", \"output\": \"[]\"}\n{\"sample_id\": \"zz\", \"output\": \"[]\"}\n",
    )
    .unwrap();
    fails_with(
        w.cmd()
            .args(["score", "--suite"])
            .arg(dir.join("lists.toml"))
            .arg("--outputs")
            .arg(&outputs),
        &["outputs.jsonl line 2", "\"zz\""],
    );

    // A run of the suite scores every sample it records.
    let mut c = w.run_suite(&dir.join("lists.toml"));
    c.args(["--method", "ar", "--run-id", "scored", "--no-report"]);
    c.assert().success();
    let samples = read_lines(&w.path("results/scored/samples.jsonl"));
    assert_eq!(samples.len(), 3);
    for s in &samples {
        let score = s["score"].as_f64().expect("scored");
        assert!(score == 0.0 || score == 1.0);
        assert!(s["scores"]["score_strict"].is_number());
    }
}

#[test]
fn scorer_without_a_reference_field_is_refused() {
    let w = World::new();
    let suite = w.path("suite/noref.toml");
    std::fs::write(
        &suite,
        "name = \"noref\"\nversion = \"1\"\nsource = { jsonl = \"data.jsonl\" }\nprompt_field = \"prompt\"\nmax_new_tokens = 4\nscorer = \"list_match_score\"\n",
    )
    .unwrap();
    let mut c = w.run_suite(&suite);
    fails_with(&mut c, &["noref.toml", "reference_field"]);
    std::fs::write(
        &suite,
        "name = \"noref\"\nversion = \"1\"\nsource = { jsonl = \"data.jsonl\" }\nprompt_field = \"prompt\"\nmax_new_tokens = 4\nscorer = \"list_mach_score\"\n",
    )
    .unwrap();
    let mut c = w.run_suite(&suite);
    fails_with(&mut c, &["noref.toml", "did you mean \"list_match_score\""]);
}

#[test]
fn safetensors_models_run_in_f32_bf16_and_f16() {
    let w = World::new();
    for dtype in ["f32", "bf16", "f16"] {
        let id = format!("dt-{dtype}");
        w.run(&[
            "--method",
            "ar",
            "--dtype",
            dtype,
            "--run-id",
            &id,
            "--no-report",
        ])
        .assert()
        .success();
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(w.path(&format!("results/{id}/manifest.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(m["dtype"], dtype);
        assert_eq!(
            read_lines(&w.path(&format!("results/{id}/samples.jsonl"))).len(),
            4
        );
    }
    fails_with(
        &mut w.run(&["--dtype", "f8"]),
        &["--dtype f8", "f32, bf16 or f16"],
    );
}

/// A sharded checkpoint (model.safetensors.index.json) loads like a single
/// file and decodes the same tokens.
#[test]
fn sharded_safetensors_decode_like_the_single_file() {
    let w = World::new();
    let sharded = w.path("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(w.model().join(f), sharded.join(f)).unwrap();
    }
    let tensors = candle_core::safetensors::load(
        w.model().join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let shard: std::collections::HashMap<String, candle_core::Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, sharded.join(&file)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), serde_json::json!(file));
        }
    }
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();

    w.run(&["--run-id", "single", "--no-report"])
        .assert()
        .success();
    let mut c = w.cmd();
    c.args(["run", "--model"])
        .arg(&sharded)
        .arg("--suite")
        .arg(w.suite())
        .arg("--results-dir")
        .arg(w.path("results"))
        .args(["--run-id", "sharded", "--no-report"]);
    c.assert().success();
    let ids = |run: &str| -> Vec<serde_json::Value> {
        read_lines(&w.path(&format!("results/{run}/samples.jsonl")))
            .into_iter()
            .map(|s| s["output_ids"].clone())
            .collect()
    };
    assert_eq!(ids("single"), ids("sharded"));
    let manifest = std::fs::read_to_string(w.path("results/sharded/manifest.json")).unwrap();
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "tokenizer_config.json",
    ] {
        assert!(manifest.contains(f), "the manifest records {f}");
    }

    // A shard the index names but the folder lacks.
    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    let mut c = w.cmd();
    c.args(["run", "--model"])
        .arg(&sharded)
        .arg("--suite")
        .arg(w.suite());
    fails_with(
        &mut c,
        &[
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
        ],
    );
}

#[test]
fn missing_parallelbench_data_is_a_clear_error() {
    let w = World::new();
    let mut c = w.run_suite(Path::new("suites/parallelbench/waiting_line/copy.toml"));
    c.env("PDBENCH_PARALLELBENCH", w.path("nowhere"));
    fails_with(
        &mut c,
        &[
            "ParallelBench task waiting_line/copy",
            "PDBENCH_PARALLELBENCH",
            "nowhere",
        ],
    );
}

/// Grammar-checked ParallelBench tasks: `pdbench score` names the checker
/// it used, says why paraphrases have no task score, and a bad or dead
/// `--grammar` backend is a clear error.
#[test]
fn text_tasks_record_their_grammar_backend() {
    let w = World::new();
    let outputs = w.path("samsum.jsonl");
    std::fs::write(
        &outputs,
        concat!(
            r#"{"sample_id": "0", "output_text": "Steve and Rob will talk about the new Dream Theater album after they listen to it."}"#, "\n",
            r#"{"sample_id": "1", "output_text": ""}"#, "\n",
        ),
    )
    .unwrap();
    let json = w.path("scores.json");
    let out = w
        .cmd()
        .args([
            "score",
            "--suite",
            "parallelbench/paraphrase_summarize/samsum",
            "--outputs",
        ])
        .arg(&outputs)
        .arg("--out")
        .arg(&json)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let stdout = String::from_utf8_lossy(&out);
    assert!(stdout.contains("grammar: harper-core"), "{stdout}");
    assert!(stdout.contains("rougeL_score"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["scoring"]["grammar"]["backend"], "harper-core");
    assert_eq!(v["scoring"]["grammar"]["language"], "en-US");
    let all = &v["groups"][0]["means"];
    assert!(all["rougeL_score"].as_f64().unwrap() > 10.0, "{all}");

    let para = w.path("para.jsonl");
    std::fs::write(
        &para,
        concat!(
            r#"{"sample_id": "0", "output_text": "Can you identify this sweater?"}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = w
        .cmd()
        .args([
            "score",
            "--suite",
            "parallelbench/paraphrase_summarize/chatgpt-paraphrases",
            "--outputs",
        ])
        .arg(&para)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let stdout = String::from_utf8_lossy(&out);
    assert!(stdout.contains("unscored: BERTScore"), "{stdout}");
    assert!(stdout.contains("inv_bleu_score"), "{stdout}");

    fails_with(
        w.cmd()
            .args([
                "score",
                "--suite",
                "parallelbench/paraphrase_summarize/samsum",
                "--grammar",
                "lt",
                "--outputs",
            ])
            .arg(&outputs),
        &["--grammar", "languagetool=URL"],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    fails_with(
        w.cmd()
            .args([
                "score",
                "--suite",
                "parallelbench/paraphrase_summarize/samsum",
                "--grammar",
            ])
            .arg(format!("languagetool=http://127.0.0.1:{port}"))
            .arg("--outputs")
            .arg(&outputs),
        &["samsum.jsonl line 1", &format!("http://127.0.0.1:{port}")],
    );
}

/// `pdbench run` with no model or suite runs the toy suite on the zoo's
/// target with every method the zoo supports, scores it and reports; and
/// the `ar` baseline's greedy tokens on the zoo are a fixed regression
/// test (tests/fixtures/toy_target_ar_greedy.jsonl, written by
/// `PDBENCH_BLESS=1 cargo test --release --test cli embedded_default`).
#[test]
fn the_embedded_default_runs_the_toy_suite_on_the_zoo() {
    let w = World::new();
    let mut c = w.cmd();
    c.args([
        "run",
        "--limit",
        "45",
        "--run-id",
        "default",
        "--results-dir",
    ])
    .arg(w.path("results"));
    let out = c.assert().success().get_output().clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| ar |"), "{stdout}");
    let run = w.path("results/default");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["suite"]["def"]["name"], "toy");
    assert_eq!(manifest["models"]["target"]["label"], "toy-target");
    assert!(manifest["suite"]["data_file"]
        .as_str()
        .unwrap()
        .starts_with("generator:toy"));
    assert!(run.join("report/report.md").is_file());
    let samples = read_lines(&run.join("samples.jsonl"));
    assert_eq!(samples.iter().filter(|s| s["method"] == "ar").count(), 45);
    let scored: Vec<f64> = samples
        .iter()
        .map(|s| s["score"].as_f64().unwrap())
        .collect();
    let mean = scored.iter().sum::<f64>() / scored.len() as f64;
    assert!(
        mean > 0.8,
        "toy-target scores {mean} on the first 45 toy samples"
    );

    let got: Vec<serde_json::Value> = samples
        .iter()
        .filter(|s| s["method"] == "ar")
        .map(|s| serde_json::json!({"sample_id": s["sample_id"], "output_ids": s["output_ids"]}))
        .collect();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/toy_target_ar_greedy.jsonl");
    if std::env::var_os("PDBENCH_BLESS").is_some() {
        let text: String = got.iter().map(|v| format!("{v}\n")).collect();
        std::fs::write(&fixture, text).unwrap();
    }
    let want = read_lines(&fixture);
    assert_eq!(got, want, "ar's greedy tokens on toy-target changed");

    // Every method the zoo supports ran, the lossless ones with ar's
    // tokens, and the report carries the cost-aware columns.
    let ar_ids: std::collections::HashMap<String, serde_json::Value> = samples
        .iter()
        .filter(|s| s["method"] == "ar")
        .map(|s| {
            (
                s["sample_id"].as_str().unwrap().to_string(),
                s["output_ids"].clone(),
            )
        })
        .collect();
    assert_eq!(
        manifest["models"]["draft_head"]["files"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "the zoo's EAGLE head is recorded"
    );
    // cllm decodes with toy-cllm in the target's place.
    assert_eq!(manifest["models"]["cllm"]["label"], "toy-cllm");
    assert_eq!(samples.iter().filter(|s| s["method"] == "cllm").count(), 45);
    // dllm decodes with toy-dllm, one canvas position per step by
    // default, and records the order it filled the canvas in.
    assert_eq!(manifest["models"]["dllm"]["label"], "toy-dllm");
    assert_eq!(manifest["models"]["dllm"]["diffusion"]["mask_token_id"], 3);
    let dllm: Vec<_> = samples.iter().filter(|s| s["method"] == "dllm").collect();
    assert_eq!(dllm.len(), 45);
    for s in &dllm {
        assert_eq!(s["canvas_tokens_per_step"].as_f64(), Some(1.0));
        let tau = s["decoding_order_tau"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&tau), "{tau}");
        assert_eq!(s["steps"].as_array().unwrap().len(), 32, "32 forwards");
    }
    let dllm_score: f64 = dllm
        .iter()
        .map(|s| s["score"].as_f64().unwrap())
        .sum::<f64>()
        / dllm.len() as f64;
    assert!(dllm_score > 0.8, "toy-dllm scores {dllm_score}");
    // learn2pd adds the zoo's filter and end-of-text prediction: fewer
    // forwards than dllm on every sample.
    assert_eq!(manifest["models"]["filter"]["config"]["block_length"], 32);
    let calls = |m: &str| -> std::collections::HashMap<String, u64> {
        samples
            .iter()
            .filter(|s| s["method"] == m)
            .map(|s| {
                (
                    s["sample_id"].as_str().unwrap().to_string(),
                    s["target_calls"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let (base, fast) = (calls("dllm"), calls("learn2pd"));
    assert_eq!(fast.len(), 45);
    for (id, n) in &fast {
        assert!(
            *n < base[id],
            "learn2pd took {n} forwards on {id}, dllm {}",
            base[id]
        );
    }
    // The diffusion-side drafters: the manifest records the zoo's DEER
    // drafter and TiDAR model, and every step of DiffuSpec's and DEER's
    // carries more than one token on average.
    assert_eq!(manifest["models"]["dllm_drafter"]["label"], "toy-deer");
    assert_eq!(manifest["models"]["tidar"]["label"], "toy-tidar");
    assert_eq!(manifest["models"]["tidar"]["diffusion"]["family"], "tidar");
    let diffuspec = manifest["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "diffuspec")
        .unwrap();
    assert_eq!(
        diffuspec["params"]["draft_len_max"], 12,
        "the toy suite scales DiffuSpec's draft lengths"
    );
    assert_eq!(
        samples.iter().filter(|s| s["method"] == "tidar").count(),
        45
    );
    for method in [
        "sps",
        "eagle",
        "pld",
        "jacobi",
        "lookahead",
        "diffuspec",
        "deer",
    ] {
        let rows: Vec<_> = samples.iter().filter(|s| s["method"] == method).collect();
        assert_eq!(rows.len(), 45, "{method} did not run on every sample");
        for s in rows {
            assert_eq!(
                s["output_ids"],
                ar_ids[s["sample_id"].as_str().unwrap()],
                "{method} differs from ar on {}",
                s["sample_id"]
            );
            assert!(s["decode_ms_per_token"].as_f64().is_some_and(|x| x > 0.0));
        }
    }
    let sps_draft: Vec<f64> = samples
        .iter()
        .filter(|s| s["method"] == "sps")
        .filter_map(|s| s["draft_ms_per_step"].as_f64())
        .collect();
    assert_eq!(sps_draft.len(), 45, "sps records its drafting time");
    assert!(samples
        .iter()
        .filter(|s| s["method"] == "ar")
        .all(|s| s["draft_ms_per_step"].is_null()));
    let report = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    assert!(report.contains("draft ms/step") && report.contains("decode ms per accepted token"));
    // Spec-Bench's per-category table, and the notes on what is lossy.
    assert!(report.contains("## By category (Spec-Bench's table)"));
    assert!(report.contains("## Acceptance by draft position"));
    assert!(
        report.contains("| family | AUP | points kept |"),
        "{report}"
    );
    // Every figure, as PNG and SVG, linked from the report.
    for stem in [
        "tokens_per_s",
        "speedup",
        "tau_distribution",
        "acceptance_by_position",
        "step_time",
        "quality_speed",
        "quality_wallclock",
    ] {
        for ext in ["png", "svg"] {
            let f = run.join(format!("report/{stem}.{ext}"));
            assert!(
                std::fs::metadata(&f).is_ok_and(|m| m.len() > 1000),
                "{} missing or empty",
                f.display()
            );
        }
        assert!(
            report.contains(&format!("]({stem}.png)")),
            "{stem} not linked"
        );
    }
    // The per-category rows in Parquet: one row per method over all
    // categories and one per method × category, with acceptance by
    // position for drafting methods only.
    use polars::prelude::SerReader;
    let frame = polars::prelude::ParquetReader::new(
        std::fs::File::open(run.join("report/report.parquet")).unwrap(),
    )
    .finish()
    .unwrap();
    let methods: std::collections::BTreeSet<&str> = samples
        .iter()
        .map(|s| s["method"].as_str().unwrap())
        .collect();
    let cats: std::collections::BTreeSet<&str> = samples
        .iter()
        .map(|s| s["category"].as_str().unwrap())
        .collect();
    assert!(cats.len() > 1);
    assert_eq!(frame.height(), methods.len() * (1 + cats.len()));
    let method = frame.column("method").unwrap().str().unwrap().clone();
    let category = frame.column("category").unwrap().str().unwrap().clone();
    let pos1 = frame
        .column("acceptance_pos1")
        .unwrap()
        .f64()
        .unwrap()
        .clone();
    for i in 0..frame.height() {
        let (m, c, a) = (
            method.get(i).unwrap(),
            category.get(i).unwrap(),
            pos1.get(i),
        );
        match m {
            "ar" | "dllm" | "learn2pd" => assert_eq!(a, None, "{m}/{c}"),
            "sps" if c == "all" => assert!(a.is_some_and(|a| a > 0.0 && a <= 1.0), "{a:?}"),
            _ => {}
        }
    }
    let careful = report.lines().find(|l| l.starts_with("- Lossy:")).unwrap();
    assert!(
        careful.contains("`dllm`") && !careful.contains("`sps`"),
        "{careful}"
    );
    // Lossless methods are marked equal to ar on every sample.
    for method in ["sps", "pld", "deer", "diffuspec"] {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {method} |")))
            .unwrap();
        assert!(row.ends_with("| 100% |"), "{row}");
    }
    // Jacobi reports its iterations per window: at least one per window,
    // at most the window's 16 positions.
    for s in samples.iter().filter(|s| s["method"] == "jacobi") {
        let it = s["iterations_per_window"].as_f64().unwrap();
        assert!((1.0..=16.0).contains(&it), "{it}");
    }
}

/// Hostile completions score 0 and scoring goes on to the next sample.
#[test]
fn hostile_humaneval_completions_score_zero_and_scoring_goes_on() {
    let w = World::new();
    let dir = w.path("he");
    std::fs::create_dir_all(&dir).unwrap();
    let row = |id: &str| {
        serde_json::json!({
            "task_id": id,
            "prompt": "def add(a, b):\n",
            "entry_point": "add",
            "test": "def check(f):\n    assert f(2, 3) == 5\n",
        })
        .to_string()
    };
    let escape = w.path("escaped.txt");
    let completions = [
        ("good", "    return a + b\n".to_string()),
        ("loop", "    while True:\n        pass\n".to_string()),
        ("fork", "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n".to_string()),
        ("alloc", "    x = bytearray(64 * 1024**3)\n    return a + b\n".to_string()),
        ("write", format!("    open({:?}, 'w').write('x')\n    return a + b\n", escape.display().to_string())),
        ("net", "    import socket\n    socket.create_connection(('1.1.1.1', 80), timeout=3)\n    return a + b\n".to_string()),
    ];
    let data: String = completions.iter().map(|(id, _)| row(id) + "\n").collect();
    std::fs::write(dir.join("data.jsonl"), data).unwrap();
    std::fs::write(
        dir.join("he.toml"),
        "name = \"he\"\nversion = \"1\"\nsource = { jsonl = \"data.jsonl\" }\nid_field = \"task_id\"\nprompt_field = \"prompt\"\nreference_field = \"*\"\nchat_template = \"none\"\nmax_new_tokens = 8\nscorer = \"humaneval\"\n",
    )
    .unwrap();
    let outputs: String = completions
        .iter()
        .map(|(id, c)| {
            serde_json::json!({"sample_id": id, "method": id, "output_text": c}).to_string() + "\n"
        })
        .collect();
    std::fs::write(dir.join("outputs.jsonl"), outputs).unwrap();
    let json = dir.join("scores.json");
    let mut c = w.cmd();
    c.args(["score", "--suite"])
        .arg(dir.join("he.toml"))
        .arg("--outputs")
        .arg(dir.join("outputs.jsonl"))
        .arg("--out")
        .arg(&json);
    c.assert().success();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for g in v["groups"].as_array().unwrap() {
        if g["category"] != "all" {
            continue;
        }
        let want = if g["method"] == "good" { 100.0 } else { 0.0 };
        // Writing outside the sandbox fails when pdbench can drop to its own
        // uid (root); elsewhere the write may land but is never credited as
        // a pass of someone else's work: the test still passes or fails on
        // the function alone.
        if g["method"] == "write" && !pdbench::score::sandbox::isolation().dedicated_uid {
            continue;
        }
        assert_eq!(g["means"]["score"], want, "{}", g["method"]);
    }
    if pdbench::score::sandbox::isolation().dedicated_uid {
        assert!(!escape.exists(), "the sandbox wrote outside its directory");
    }
}

#[test]
fn chat_templates_by_name_and_a_missing_model_template() {
    let w = World::new();
    let suite = |template: &str| {
        let p = w.path(&format!("suite/chat-{template}.toml"));
        std::fs::write(
            &p,
            format!("name = \"chat\"\nversion = \"1\"\nsource = {{ jsonl = \"data.jsonl\" }}\nid_field = \"id\"\nprompt_field = \"prompt\"\nchat_template = \"{template}\"\nmax_new_tokens = 2\n"),
        )
        .unwrap();
        p
    };
    // The tiny model ships no chat template: `model` is a clear error...
    fails_with(&mut w.run_suite(&suite("model")), &["ships none", "chatml"]);
    // ...and a named one renders ChatML.
    let mut c = w.run_suite(&suite("chatml"));
    c.args(["--run-id", "chatml", "--no-report"]);
    c.assert().success();
    let m = std::fs::read_to_string(w.path("results/chatml/manifest.json")).unwrap();
    assert!(m.contains("\"chat_template\": \"chatml\""));
    fails_with(
        &mut w.run_suite(&suite("vicuna")),
        &["chat_template", "vicuna", "smollm2"],
    );
}

/// Spec-Bench's question.jsonl, from --data: both turns are answered, the
/// second with the model's first answer in the conversation, and a resume
/// after the first turn decodes only the second.
#[test]
fn spec_bench_file_runs_both_turns_and_resumes_between_them() {
    let w = World::new();
    let data = w.path("question.jsonl");
    let rows = [
        (81, "writing", ["Hi there.", "Say more."]),
        (82, "coding", ["def f", "And g?"]),
    ];
    let text: String = rows
        .iter()
        .map(|(id, cat, turns)| {
            serde_json::json!({"question_id": id, "category": cat, "turns": turns}).to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&data, text).unwrap();
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("suites/spec-bench.toml");
    // Without --data the suite says what it needs.
    fails_with(&mut w.run_suite(&suite), &["spec-bench", "--data"]);

    let mut c = w.run_suite(&suite);
    c.arg("--data").arg(&data).args([
        "--method",
        "ar",
        "--run-id",
        "sb",
        "--no-report",
        "--max-new-tokens",
        "6",
    ]);
    // spec-bench.toml asks for the model's template: give the tiny model one.
    std::fs::write(
        w.model().join("tokenizer_config.json"),
        serde_json::json!({
            "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "add_bos_token": true,
            "chat_template": pdbench::model::chat::named_template("chatml").unwrap(),
        })
        .to_string(),
    )
    .unwrap();
    c.assert().success();
    let samples = w.path("results/sb/samples.jsonl");
    let recs = read_lines(&samples);
    assert_eq!(recs.len(), 4, "two samples × two turns");
    for id in ["81", "82"] {
        let t: Vec<&serde_json::Value> = recs.iter().filter(|r| r["sample_id"] == id).collect();
        assert_eq!(t[0]["turn"], 0);
        assert_eq!(t[1]["turn"], 1);
        let (p0, p1) = (
            t[0]["prompt_tokens"].as_u64().unwrap(),
            t[1]["prompt_tokens"].as_u64().unwrap(),
        );
        let answer0 = t[0]["output_text"].as_str().unwrap().len() as u64;
        assert!(
            p1 > p0 + answer0,
            "turn 2's prompt holds turn 1 and its answer ({p0}, {answer0}, {p1})"
        );
        assert_eq!(
            t[0]["category"],
            if id == "81" { "writing" } else { "coding" }
        );
    }

    // Crash after sample 82's first turn: resume decodes its second turn
    // only, from the recorded first answer.
    let full = std::fs::read_to_string(&samples).unwrap();
    let keep: Vec<&str> = full.lines().take(3).collect();
    std::fs::write(&samples, keep.join("\n") + "\n").unwrap();
    w.cmd()
        .args(["run", "--resume"])
        .arg(w.path("results/sb"))
        .arg("--no-report")
        .assert()
        .success()
        .stderr(predicate::str::contains("3 samples already done"));
    let after = read_lines(&samples);
    assert_eq!(after.len(), 4);
    assert_eq!(
        after[3]["output_ids"], recs[3]["output_ids"],
        "the same second answer"
    );
    assert_eq!(after[3]["prompt_tokens"], recs[3]["prompt_tokens"]);
}

/// Copies a run folder (manifest and samples) to `to`, editing each sample
/// line and the manifest on the way; a sample edited to null is dropped.
fn copy_run(
    from: &Path,
    to: &Path,
    edit_sample: impl Fn(&mut serde_json::Value),
    edit_manifest: impl Fn(&mut serde_json::Value),
) {
    std::fs::create_dir_all(to).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(from.join("manifest.json")).unwrap())
            .unwrap();
    m["run_id"] = serde_json::json!(to.file_name().unwrap().to_str().unwrap());
    edit_manifest(&mut m);
    std::fs::write(to.join("manifest.json"), m.to_string()).unwrap();
    let mut out = String::new();
    for mut s in read_lines(&from.join("samples.jsonl")) {
        edit_sample(&mut s);
        if !s.is_null() {
            out.push_str(&format!("{s}\n"));
        }
    }
    std::fs::write(to.join("samples.jsonl"), out).unwrap();
}

/// `compare` for nightly CI: a copy of a run is "no change" (exit 0); a
/// method made 20% slower, or one that lost a token of `ar`'s, regresses
/// (exit 1, named in the summary and the JUnit XML); runs of different
/// target models are refused with the reason (exit 2) unless --force, and
/// so is a missing run. A new run that lost a method or was cut short
/// regresses in `samples`; one or a few prompts give time figures no
/// verdict.
#[test]
fn compare_gives_ci_verdicts_and_refuses_what_does_not_compare() {
    let w = World::new();
    let results = w.path("results");
    w.cmd()
        .args(["run", "--suite", "toy", "--limit", "12", "--warmup", "0"])
        .args([
            "--method",
            "ar",
            "--method",
            "pld",
            "--run-id",
            "base",
            "--no-report",
        ])
        .arg("--results-dir")
        .arg(&results)
        .assert()
        .success();
    let base = results.join("base");
    let compare = |new: &str, extra: &[&str]| {
        let mut c = w.cmd();
        c.args([
            "compare",
            "base",
            new,
            "--max-interference",
            "100",
            "--results-dir",
        ])
        .arg(&results)
        .args(extra);
        c
    };
    copy_run(&base, &results.join("same"), |_| {}, |_| {});
    let out = compare("same", &[]).assert().code(0).get_output().clone();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("no regression"), "{text}");
    assert!(text.contains("| pld | tokens_per_s |"), "{text}");

    copy_run(
        &base,
        &results.join("slower"),
        |s| {
            if s["method"] == "pld" {
                let t = s["tokens_per_s"].as_f64().unwrap();
                s["tokens_per_s"] = serde_json::json!(t * 0.8);
            }
        },
        |_| {},
    );
    let junit = w.path("junit.xml");
    let out = compare("slower", &["--junit", junit.to_str().unwrap()])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let row = text
        .lines()
        .find(|l| l.starts_with("| pld | tokens_per_s |"))
        .unwrap();
    assert!(row.contains("regressed") && row.contains("-20.0%"), "{row}");
    assert!(text
        .lines()
        .any(|l| l.starts_with("| ar | tokens_per_s |") && l.contains("no change")));
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("failures=\"1\"")
            && xml.contains("<failure message=\"tokens_per_s regressed\"")
    );

    // One pld sample loses a token of ar's.
    let edited = std::cell::Cell::new(false);
    copy_run(
        &base,
        &results.join("lossy"),
        |s| {
            if s["method"] == "pld" && !edited.get() {
                s["output_ids"][0] = serde_json::json!(4);
                edited.set(true);
            }
        },
        |_| {},
    );
    let out = compare("lossy", &[]).assert().code(1).get_output().clone();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let row = text
        .lines()
        .find(|l| l.starts_with("| pld | lossless_pct |"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("regressed"), "{row}");

    copy_run(
        &base,
        &results.join("other-model"),
        |_| {},
        |m| m["models"]["target"]["files"][0]["sha256"] = serde_json::json!("0".repeat(64)),
    );
    let out = compare("other-model", &[])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("not comparable") && err.contains("sha256") && err.contains("--force"),
        "{err}"
    );
    let out = compare("other-model", &["--force"])
        .assert()
        .code(0)
        .get_output()
        .clone();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Compared with --force"));

    // Tonight's run lost pld, or was interrupted after a few samples.
    copy_run(
        &base,
        &results.join("no-pld"),
        |s| {
            if s["method"] == "pld" {
                *s = serde_json::Value::Null;
            }
        },
        |_| {},
    );
    let out = compare("no-pld", &[]).assert().code(1).get_output().clone();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let row = text
        .lines()
        .find(|l| l.starts_with("| pld | samples |"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        row.contains("| 12.000 | 0.000 |") && row.contains("regressed"),
        "{row}"
    );
    let kept = std::cell::Cell::new(0);
    copy_run(
        &base,
        &results.join("cut-short"),
        |s| {
            kept.set(kept.get() + 1);
            if kept.get() > 3 {
                *s = serde_json::Value::Null;
            }
        },
        |m| m["status"] = serde_json::json!("interrupted"),
    );
    let out = compare("cut-short", &["--junit", junit.to_str().unwrap()])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("is interrupted, not complete"), "{text}");
    let time_rows: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("| tokens_per_s |") || l.contains("| ttft_ms |"))
        .collect();
    assert!(
        !time_rows.is_empty() && time_rows.iter().all(|l| l.contains("too few prompts")),
        "{text}"
    );
    assert!(text.contains("| ar | samples |") && text.contains("regressed"));
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("samples are missing from the new run") && xml.contains("<skipped"));
    assert!(!xml.contains("skipped=\"0\""), "{xml}");

    let out = compare("nowhere", &[])
        .assert()
        .code(2)
        .get_output()
        .clone();
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));
}

/// `compare` refuses runs over other prompt sets (--limit, --repeats,
/// shard) with the reason, and labels that do not meet; it fails a new run
/// that did not complete even when every base sample is there; it scores
/// over the samples both runs hold; it says when a label's parameters
/// changed.
#[test]
fn compare_refuses_other_prompt_sets_and_fails_unfinished_runs() {
    let (w, base) = world_with_base();
    let results = w.path("results");
    let compare = |b: &str, n: &str| w.compare(b, n);
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    let stdout = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();

    for (name, key, value, says) in [
        (
            "fewer",
            "limit",
            serde_json::json!(6),
            "--limit differs (12 vs 6: 12 vs 6 prompts)",
        ),
        (
            "twice",
            "repeats",
            serde_json::json!(2),
            "--repeats differs (1 vs 2)",
        ),
        (
            "half",
            "shard",
            serde_json::json!({"index": 0, "count": 2}),
            "shard 1/2",
        ),
    ] {
        copy_run(
            &base,
            &results.join(name),
            |_| {},
            |m| m[key] = value.clone(),
        );
        let out = compare("base", name).assert().code(2).get_output().clone();
        let err = stderr(&out);
        assert!(
            err.contains("not comparable") && err.contains(says),
            "{err}"
        );
    }

    copy_run(
        &base,
        &results.join("renamed"),
        |s| s["method"] = serde_json::json!(format!("{}-b", s["method"].as_str().unwrap())),
        |m| {
            for i in m["methods"].as_array_mut().unwrap() {
                i["label"] = serde_json::json!(format!("{}-b", i["label"].as_str().unwrap()));
            }
        },
    );
    let out = compare("base", "renamed")
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = stderr(&out);
    assert!(
        err.contains("share no method label") && err.contains("ar, pld vs ar-b, pld-b"),
        "{err}"
    );

    // Every sample is there, but the run was killed before it ended.
    copy_run(
        &base,
        &results.join("unfinished"),
        |_| {},
        |m| m["status"] = serde_json::json!("running"),
    );
    let text = stdout_code(&mut compare("base", "unfinished"), 1);
    let row = table_row(&text, "| (run) | complete |");
    assert!(
        row.contains("| complete | running |") && row.contains("regressed"),
        "{row}"
    );
    // ... and against a base that is just as unfinished.
    assert!(stdout_code(&mut compare("unfinished", "unfinished"), 1)
        .contains("| (run) | complete | running | running |"));

    // The base failed three ar prompts the new run does not hold: the
    // score is taken over the nine both hold, so it does not move.
    let zeroed = std::cell::Cell::new(0);
    copy_run(
        &base,
        &results.join("hard"),
        |s| {
            if s["method"] == "ar" && zeroed.get() < 3 {
                s["score"] = serde_json::json!(0.0);
                zeroed.set(zeroed.get() + 1);
            }
        },
        |_| {},
    );
    let dropped = std::cell::Cell::new(0);
    copy_run(
        &results.join("hard"),
        &results.join("easy"),
        |s| {
            if s["method"] == "ar" && dropped.get() < 3 {
                *s = serde_json::Value::Null;
                dropped.set(dropped.get() + 1);
            }
        },
        |_| {},
    );
    let text = stdout_code(&mut compare("hard", "easy"), 1);
    let row = table_row(&text, "| ar | score_x100 |");
    assert!(
        row.contains("| 100.000 | 100.000 |") && row.contains("no change"),
        "{row}"
    );

    copy_run(
        &base,
        &results.join("retuned"),
        |_| {},
        |m| {
            for i in m["methods"].as_array_mut().unwrap() {
                if i["label"] == "pld" {
                    i["params"]["max_draft"] = serde_json::json!(3);
                }
            }
        },
    );
    let out = compare("base", "retuned")
        .assert()
        .code(0)
        .get_output()
        .clone();
    let text = stdout(&out);
    assert!(
        text.contains("the parameters differ: `pld`") && text.contains("\"max_draft\":3"),
        "{text}"
    );
}

/// `audit` re-runs part of a recorded run from its manifest: an untouched
/// run reproduces (exit 0); a recorded sample whose tokens no longer match
/// is reported with its id and first differing position (exit 1); a run
/// whose model file changed cannot be audited, and the error names the
/// file.
#[test]
fn audit_reruns_from_the_manifest_and_reports_mismatches() {
    let w = World::new();
    let results = w.path("results");
    w.cmd()
        .args(["run", "--suite", "toy", "--limit", "6", "--warmup", "0"])
        .args([
            "--method",
            "ar",
            "--method",
            "pld",
            "--run-id",
            "rec",
            "--no-report",
        ])
        .arg("--results-dir")
        .arg(&results)
        .assert()
        .success();
    let audit = |run: &str, out: &str, extra: &[&str]| {
        let mut c = w.cmd();
        c.args(["audit", run, "--limit", "3", "--results-dir"])
            .arg(&results)
            .arg("--out")
            .arg(w.path(out))
            .args(extra);
        c
    };
    let ok = audit("rec", "a1", &[])
        .assert()
        .code(0)
        .get_output()
        .clone();
    let text = String::from_utf8_lossy(&ok.stdout).to_string();
    assert!(
        text.contains("**reproduced**") && text.contains("6 samples"),
        "{text}"
    );
    assert!(w.path("a1/audit.md").is_file() && w.path("a1/audit.json").is_file());
    fails_with(
        &mut audit("rec", "a0", &["--method", "eagle"]),
        &["--method eagle", "ar, pld"],
    );

    // A recorded pld sample that no longer matches what pld emits.
    let tampered = results.join("tampered");
    let edited = std::cell::RefCell::new(None::<String>);
    copy_run(
        &results.join("rec"),
        &tampered,
        |s| {
            if s["method"] == "pld" && edited.borrow().is_none() {
                s["output_ids"][2] = serde_json::json!(4);
                *edited.borrow_mut() = Some(s["sample_id"].as_str().unwrap().to_string());
            }
        },
        |_| {},
    );
    let id = edited.take().unwrap();
    let bad = audit("tampered", "a2", &[])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let text = String::from_utf8_lossy(&bad.stdout).to_string();
    assert!(text.contains("not reproduced"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("| pld | {id} | 0 | 0 | 2 |"))),
        "{text}"
    );

    // The target's weights changed since the run.
    copy_run(
        &results.join("rec"),
        &results.join("moved"),
        |_| {},
        |m| m["models"]["target"]["files"][4]["sha256"] = serde_json::json!("0".repeat(64)),
    );
    fails_with(
        &mut audit("moved", "a3", &[]),
        &[
            "auditing",
            "changed since the run started",
            "toy-target/model.safetensors has sha256",
        ],
    );
    // It left no half-made folder behind: the same --out works next time.
    assert!(!w.path("a3").exists());
    audit("rec", "a3", &[]).assert().code(0);
}

/// `run --shard K/N` splits a run's work items over N processes; `merge`
/// joins them into a run equal to the unsharded one (times aside), and
/// refuses shards that are missing or that disagree.
#[test]
fn three_shards_merge_into_the_unsharded_run() {
    let w = World::new();
    let results = w.path("results");
    let run = |id: &str, extra: &[&str]| {
        let mut c = w.cmd();
        c.args(["run", "--suite", "toy", "--limit", "8", "--warmup", "0"])
            .args(["--method", "ar", "--method", "pld", "--method", "sps"])
            .args(["--set", "sps.draft_len=3", "--run-id", id, "--no-report"])
            .arg("--results-dir")
            .arg(&results)
            .args(extra);
        c
    };
    run("whole", &[]).assert().success();
    // Three processes at once, as three machines would.
    let mut children: Vec<std::process::Child> = (1..=3)
        .map(|k| {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pdbench"));
            // The environment `pdbench()` gives every other command here.
            c.env("PDBENCH_HOME", w.path("store"))
                .env("HF_HUB_CACHE", w.path("hub"))
                .env("HF_HUB_OFFLINE", "1")
                .env("RAYON_NUM_THREADS", "1")
                .args(["run", "--suite", "toy", "--limit", "8", "--warmup", "0"])
                .args(["--method", "ar", "--method", "pld", "--method", "sps"])
                // Three at once on one machine: each run's own automatic
                // thread choice could differ, and merge refuses that.
                .args([
                    "--set",
                    "sps.draft_len=3",
                    "--threads",
                    "1",
                    "--no-report",
                    "--shard",
                ])
                .arg(format!("{k}/3"))
                .arg("--run-id")
                .arg(format!("shard{k}"))
                .arg("--results-dir")
                .arg(&results)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            c.spawn().unwrap()
        })
        .collect();
    for c in &mut children {
        assert!(c.wait().unwrap().success());
    }
    let merge = |shards: &[&str], out: &str| {
        let mut c = w.cmd();
        c.arg("merge")
            .args(shards)
            .arg("--results-dir")
            .arg(&results)
            .arg("--out")
            .arg(results.join(out));
        c
    };
    merge(&["shard1", "shard2", "shard3"], "merged")
        .assert()
        .success();
    // Equal to the unsharded run except for times.
    let strip = |path: &Path| -> std::collections::BTreeMap<String, serde_json::Value> {
        read_lines(path)
            .into_iter()
            .map(|mut s| {
                let key = format!("{}/{}/{}", s["method"], s["sample_id"], s["repeat"]);
                let o = s.as_object_mut().unwrap();
                for k in [
                    "wall_ns",
                    "ttft_ns",
                    "tokens_per_s",
                    "decode_tokens_per_s",
                    "draft_ms_per_step",
                    "decode_ms_per_token",
                    // Measurements like times: memory and energy.
                    "peak_rss_bytes",
                    "peak_gpu_mem_bytes",
                    "cpu_energy_j",
                    "gpu_energy_j",
                    "joules_per_token",
                    "mean_watts",
                    "interference",
                    "interference_pct",
                ] {
                    o.remove(k);
                }
                for st in o["steps"].as_array_mut().unwrap() {
                    let st = st.as_object_mut().unwrap();
                    for k in ["t_ns", "draft_ns", "end_ns"] {
                        st.remove(k);
                    }
                }
                (key, s)
            })
            .collect()
    };
    let whole = strip(&results.join("whole/samples.jsonl"));
    let merged = strip(&results.join("merged/samples.jsonl"));
    assert_eq!(whole.len(), 24);
    assert_eq!(merged, whole);
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(results.join("merged/manifest.json")).unwrap(),
    )
    .unwrap();
    assert!(m["shard"].is_null() && m["status"] == "complete", "{m}");
    assert!(results.join("merged/report/report.md").is_file());

    fails_with(
        &mut merge(&["shard1", "shard3"], "m2"),
        &["shard(s) 2/3 missing"],
    );
    run(
        "other",
        &["--shard", "2/3", "--seed", "5", "--threads", "1"],
    )
    .assert()
    .success();
    fails_with(
        &mut merge(&["shard1", "other", "shard3"], "m3"),
        &["field `seed`", "other", "5 vs 0"],
    );
    fails_with(
        &mut merge(&["whole"], "m4"),
        &["not a shard", "--shard K/N"],
    );
    // A shard marked complete that lost its last record, or whose last
    // line is torn, does not merge into a "complete" run.
    copy_run(
        &results.join("shard3"),
        &results.join("lost3"),
        |_| {},
        |_| {},
    );
    let s3 = results.join("lost3/samples.jsonl");
    let text = std::fs::read_to_string(&s3).unwrap();
    let kept: Vec<&str> = text.lines().collect();
    std::fs::write(&s3, format!("{}\n", kept[..kept.len() - 1].join("\n"))).unwrap();
    fails_with(
        &mut merge(&["shard1", "shard2", "lost3"], "m5"),
        &["lost3", "shard 3/3", "holds 7 of its 8 work items"],
    );
    std::fs::write(&s3, &text[..text.len() - 30]).unwrap();
    fails_with(
        &mut merge(&["shard1", "shard2", "lost3"], "m6"),
        &["holds 7 of its 8 work items", "torn line"],
    );
    assert!(!results.join("m5").exists() && !results.join("m6").exists());
    // report says so of a run marked complete that lost a record.
    let out = w.path("lost-report");
    w.report(&results.join("lost3"), &out).assert().success();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains(
            "`lost3` is marked complete, yet its samples.jsonl holds 7 of the 8 work items"
        ) && md.contains("torn"),
        "{md}"
    );
    // A malformed --shard is a usage error (clap's exit 2), with the form.
    let out = run("bad", &["--shard", "4/3"])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shard") && err.contains("K/N"), "{err}");
}

/// `sweep` expands a grid (arrays are axes) into one run per suite with
/// every configuration and a combined report with the quality-speed
/// plane; `--shard` splits each suite's run for `merge`; a bad value names
/// the grid entry and field.
#[test]
fn sweep_expands_a_grid_into_runs_and_shards_them() {
    let w = World::new();
    let file = w.path("sweep.toml");
    std::fs::write(
        &file,
        r#"
name = "sw"
suites = ["toy"]
model = "toy-target"
# Shards that time their own thread counts may differ and not merge.
run_args = ["--threads", "1"]
[[grid]]
method = "ar"
[[grid]]
method = "dllm"
tokens_per_step = [4, 32]
"#,
    )
    .unwrap();
    let results = w.path("results");
    let sweep = |extra: &[&str]| {
        let mut c = w.cmd();
        c.arg("sweep")
            .arg(&file)
            .args(["--limit", "4", "--results-dir"])
            .arg(&results)
            .args(extra);
        c
    };
    sweep(&[]).assert().success();
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(results.join("sw-toy/manifest.json")).unwrap(),
    )
    .unwrap();
    let labels: Vec<&str> = m["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        ["ar", "dllm[tokens_per_step=32]", "dllm[tokens_per_step=4]"]
    );
    assert_eq!(m["methods"][1]["params"]["tokens_per_step"], 32);
    assert!(results.join("sw-report/quality_speed.png").is_file());
    assert!(results.join("sw-report/report.md").is_file());

    sweep(&["--shard", "1/2"]).assert().success();
    sweep(&["--shard", "2/2"]).assert().success();
    let shard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(results.join("sw-toy-shard2of2/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(shard["shard"]["index"], 1);
    w.cmd()
        .args([
            "merge",
            "sw-toy-shard1of2",
            "sw-toy-shard2of2",
            "--no-report",
        ])
        .arg("--results-dir")
        .arg(&results)
        .arg("--out")
        .arg(results.join("sw-merged"))
        .assert()
        .success();
    let ids = |p: &str| -> std::collections::BTreeMap<String, serde_json::Value> {
        read_lines(&results.join(p).join("samples.jsonl"))
            .into_iter()
            .map(|s| {
                (
                    format!("{}/{}", s["method"], s["sample_id"]),
                    s["output_ids"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(ids("sw-merged"), ids("sw-toy"));

    // The grid changed: the old run folder is not resumed as if it were
    // this sweep's, dry run or not.
    std::fs::write(
        &file,
        "name = \"sw\"\nsuites = [\"toy\"]\nmodel = \"toy-target\"\n[[grid]]\nmethod = \"ar\"\n[[grid]]\nmethod = \"dllm\"\ntokens_per_step = [1, 2]\n",
    )
    .unwrap();
    for extra in [&[][..], &["--dry-run"][..]] {
        fails_with(
            &mut sweep(extra),
            &[
                "sw-toy holds a run of another sweep configuration",
                "dllm[tokens_per_step=1]",
            ],
        );
    }
    // Two suites that would share a run folder, and a suite that is not
    // there, are refused before anything runs.
    std::fs::create_dir_all(w.path("c")).unwrap();
    let toy =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("suites/toy.toml"))
            .unwrap();
    std::fs::write(w.path("c/t.toml"), &toy).unwrap();
    std::fs::write(w.path("c-t.toml"), &toy).unwrap();
    std::fs::write(
        &file,
        format!(
            "name = \"two\"\nsuites = [{:?}, {:?}]\n[[grid]]\nmethod = \"ar\"\n",
            w.path("c/t.toml").display().to_string(),
            w.path("c-t.toml").display().to_string()
        ),
    )
    .unwrap();
    fails_with(&mut sweep(&["--dry-run"]), &["map to the same run folder"]);
    std::fs::write(
        &file,
        "name = \"sw\"\nsuites = [\"no-such-suite\"]\n[[grid]]\nmethod = \"ar\"\n",
    )
    .unwrap();
    fails_with(&mut sweep(&["--dry-run"]), &["no-such-suite"]);

    std::fs::write(
        &file,
        "name = \"sw\"\nsuites = [\"toy\"]\n[[grid]]\nmethod = \"dllm\"\ntokens_per_step = [2, 0]\n",
    )
    .unwrap();
    fails_with(
        &mut sweep(&[]),
        &["grid entry 1", "dllm", "tokens_per_step"],
    );
}

/// Without an energy source (no NVML, no readable RAPL: this machine and
/// CI) the manifest records why and the report says so; with a readable
/// powercap tree (a fake one here) every sample carries its CPU energy,
/// and the report shows the source.
#[test]
fn energy_is_recorded_where_a_source_exists_and_explained_where_not() {
    let w = World::new();
    w.run(&["--method", "ar", "--run-id", "plain", "--no-report"])
        .env("PDBENCH_POWERCAP_ROOT", w.path("no-powercap"))
        .assert()
        .success();
    let run = w.path("results/plain");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    assert!(m["energy"]["gpu"]["source"].is_null());
    assert!(m["energy"]["gpu"]["unavailable_reason"]
        .as_str()
        .unwrap()
        .contains("not a GPU"));
    assert!(m["energy"]["cpu"]["unavailable_reason"]
        .as_str()
        .unwrap()
        .contains("no RAPL package zone"));
    for s in read_lines(&run.join("samples.jsonl")) {
        assert!(s.get("cpu_energy_j").is_none() && s.get("joules_per_token").is_none());
    }
    let out = w.path("rep-plain");
    w.report(&run, &out).assert().success();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Energy and memory"), "{md}");
    assert!(
        md.contains("CPU energy unavailable: no RAPL package zone"),
        "{md}"
    );

    // A powercap tree with one package whose counter reads.
    let pc = w.path("powercap/intel-rapl:0");
    std::fs::create_dir_all(&pc).unwrap();
    std::fs::write(pc.join("energy_uj"), "123456789\n").unwrap();
    std::fs::write(pc.join("max_energy_range_uj"), "262143328850\n").unwrap();
    w.run(&["--method", "ar", "--run-id", "rapl", "--no-report"])
        .env("PDBENCH_POWERCAP_ROOT", w.path("powercap"))
        .assert()
        .success();
    let run = w.path("results/rapl");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["energy"]["cpu"]["source"], "rapl");
    assert_eq!(m["energy"]["cpu"]["detail"], "RAPL intel-rapl:0");
    // The fake counter stands still: an idle power of 0 W, read, not assumed.
    assert_eq!(m["energy"]["cpu"]["idle_watts"].as_f64(), Some(0.0));
    for s in read_lines(&run.join("samples.jsonl")) {
        assert_eq!(s["cpu_energy_j"].as_f64(), Some(0.0));
        assert!(s["joules_per_token"].as_f64().is_some());
    }
    // The report's CSV carries the energy and memory columns with values.
    let out = w.path("rapl-report");
    w.cmd()
        .arg("report")
        .arg(&run)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let mut csv = csv::Reader::from_path(out.join("report.csv")).unwrap();
    let header = csv.headers().unwrap().clone();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("{name} missing: {header:?}"))
    };
    let (jpt, rss) = (col("joules_per_token"), col("peak_rss_bytes"));
    let row = csv.records().next().unwrap().unwrap();
    assert_eq!(row[jpt].parse::<f64>().ok(), Some(0.0), "{row:?}");
    assert!(row[rss].parse::<f64>().unwrap() > 0.0, "{row:?}");
}

/// `pdbench check` on the CPU against itself: parity is exact, and every
/// lossless method of the registry decodes the zoo's prompts to `ar`'s
/// tokens (TiDAR to its own model's); the JSON records each of them.
#[test]
fn check_passes_every_lossless_zoo_method_on_the_cpu() {
    let w = World::new();
    let out = w.path("check/toy.json");
    w.cmd()
        .args(["check", "--prompts", "3", "--tokens", "16", "--out"])
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("PASS"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["passed"], true);
    assert_eq!(v["device"], "cpu");
    let c = &v["check"];
    assert_eq!(c["tolerance"]["precision"], "f32");
    assert_eq!(c["parity"]["prefill"]["max_abs_diff"], 0.0);
    assert_eq!(c["parity"]["decode"]["rows"], 3 * 15);
    assert_eq!(c["parity"]["greedy_equal_prompts"], 3);
    let want: Vec<&str> = pdbench::methods::METHODS
        .iter()
        .filter(|m| m.exactness == pdbench::methods::Exactness::Lossless && m.id != "ar")
        .map(|m| m.id)
        .collect();
    let checked = c["lossless"].as_array().unwrap();
    let got: Vec<&str> = checked
        .iter()
        .map(|l| l["method"].as_str().unwrap())
        .collect();
    assert_eq!(got, want);
    for l in checked {
        assert_eq!(l["equal_prompts"], 3, "{l}");
        // CPU f32: bit-exact is required, and nothing is a near tie.
        assert_eq!(l["row_invariant"], true, "{l}");
        assert!(l["near_ties"].as_array().unwrap().is_empty(), "{l}");
        assert!(l["failures"].as_array().unwrap().is_empty(), "{l}");
        let ar_of = if l["method"] == "tidar" {
            "toy-tidar"
        } else {
            "toy-target"
        };
        assert_eq!(l["ar_model"], ar_of);
    }
    // Drafting methods do draft: some steps carry several tokens.
    let sps = checked.iter().find(|l| l["method"] == "sps").unwrap();
    assert!(sps["tokens_per_step"].as_f64().unwrap() > 1.2, "{sps}");
}

/// Half precision on the CPU runs candle's batched attention with the mask
/// as a bias: the path CUDA takes. Its logits stay within the f16 bound of
/// the f32 reference, and every lossless method still equals `ar` (before
/// the bias was built for it, that path attended to every position).
#[test]
fn check_passes_the_device_attention_path_in_f16_on_the_cpu() {
    let w = World::new();
    let out = w.path("f16.json");
    w.cmd()
        .args([
            "check",
            "--dtype",
            "f16",
            "--prompts",
            "3",
            "--tokens",
            "16",
            "--out",
        ])
        .arg(&out)
        .assert()
        .success();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let c = &v["check"];
    assert_eq!(c["tolerance"]["precision"], "f16");
    let rel = c["parity"]["decode"]["max_rel_diff"].as_f64().unwrap();
    // Half precision does differ from f32 (the check compared something).
    assert!(rel > 0.0, "{rel}");
    for l in c["lossless"].as_array().unwrap() {
        assert!(l["failures"].as_array().unwrap().is_empty(), "{l}");
        // candle's batched kernels: held to the same-device tie bound.
        assert_eq!(l["row_invariant"], false, "{l}");
    }
}

/// A model outside the zoo brings no drafters: the methods that need none
/// are checked; bad flags are errors that name them.
#[test]
fn check_on_a_hub_folder_and_its_errors() {
    let w = World::new();
    w.cmd()
        .args(["check", "--prompts", "2", "--tokens", "8", "--model"])
        .arg(w.model())
        .assert()
        .success()
        .stdout(predicate::str::contains("| pld |").and(predicate::str::contains("sps").not()));
    // Its 4 query heads share 2 KV heads: f16 takes the grouped attention
    // that devices run.
    w.cmd()
        .args([
            "check",
            "--dtype",
            "f16",
            "--prompts",
            "2",
            "--tokens",
            "8",
            "--model",
        ])
        .arg(w.model())
        .assert()
        .success()
        .stdout(predicate::str::contains("f16 tolerance"));
    fails_with(
        w.cmd()
            .args(["check", "--tokens", "100000", "--model"])
            .arg(w.model()),
        &["--tokens 100000", "context of 256"],
    );
    fails_with(w.cmd().args(["check", "--dtype", "f64"]), &["--dtype f64"]);
    if !cfg!(feature = "cuda") {
        fails_with(
            w.cmd().args(["check", "--device", "cuda:0"]),
            &["--device cuda:0", "built without CUDA"],
        );
    }
}

/// `pdbench bench` measures prefill and decode per thread count (each in a
/// child process), and `--profile` splits a decoded token's time into the
/// forward's phases: each per-layer phase once per layer and token, and
/// the phases adding up to no more than the profiled wall time.
#[test]
fn bench_measures_and_profiles_a_decode() {
    let w = World::new();
    let out = w.path("bench/tiny");
    w.cmd()
        .args([
            "bench",
            "--threads",
            "1,2",
            "--prefill",
            "8",
            "--decode",
            "6",
        ])
        .args([
            "--repeats",
            "1",
            "--overhead",
            "false",
            "--profile",
            "--dtype",
            "f32",
        ])
        .arg("--model")
        .arg(w.model())
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "Where a decoded token's time goes",
        ));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.path("bench/tiny.json")).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "pp and tg per thread count");
    for r in rows {
        assert_eq!(r["dtype"], "f32");
        assert!(r["tokens_per_s_mean"].as_f64().unwrap() > 0.0, "{r}");
    }
    let profiles = v["profile"].as_array().unwrap();
    assert_eq!(profiles.len(), 2, "one per thread count");
    let layers = pdbench::model::random::tiny_config(Architecture::Llama).num_hidden_layers as u64;
    for p in profiles {
        let phases = p["phases"].as_array().unwrap();
        let marks = |name: &str| {
            phases
                .iter()
                .find(|x| x["phase"] == name)
                .unwrap_or_else(|| panic!("no {name} phase in {p}"))["marks"]
                .as_u64()
                .unwrap()
        };
        for name in ["qkv", "attention", "o_proj", "mlp"] {
            assert_eq!(marks(name), layers * 6, "{name}");
        }
        assert_eq!(marks("norm"), 2 * layers * 6);
        assert_eq!(marks("lm_head"), 6);
        assert_eq!(marks("argmax+copy"), 6);
        let total: u64 = phases.iter().map(|x| x["total_ns"].as_u64().unwrap()).sum();
        let wall = p["profiled_ns_per_token"].as_f64().unwrap() * 6.0;
        assert!(
            total > 0 && total as f64 <= wall,
            "{total} ns in phases, {wall} ns wall"
        );
    }
}

/// Bad `bench` and `models export` input: errors that name the flag.
#[test]
fn bench_and_export_errors_name_the_flag() {
    let w = World::new();
    fails_with(
        w.cmd()
            .args(["bench", "--prefill", "0", "--model"])
            .arg(w.model()),
        &["--prefill 0"],
    );
    fails_with(
        w.cmd()
            .args(["bench", "--decode", "1", "--model"])
            .arg(w.model()),
        &["--decode 1", "at least 2"],
    );
    // A GGUF computes in f32: --dtype bf16 is refused, not ignored.
    let gguf = common::fetched("smollm2-135m");
    fails_with(
        w.cmd()
            .args(["bench", "--dtype", "bf16", "--threads", "1", "--model"])
            .arg(&gguf),
        &["--dtype bf16", "GGUF"],
    );
    fails_with(
        w.cmd()
            .args(["models", "export"])
            .arg(w.model())
            .arg("--out")
            .arg(w.path("x")),
        &["models export", "already a Hugging Face folder"],
    );
    // An export never overwrites a model folder.
    std::fs::create_dir_all(w.path("taken")).unwrap();
    std::fs::write(w.path("taken/config.json"), "{}").unwrap();
    fails_with(
        w.cmd()
            .args(["models", "export"])
            .arg(&gguf)
            .arg("--out")
            .arg(w.path("taken")),
        &["--out", "taken", "already holds a model (config.json)"],
    );
    assert_eq!(
        std::fs::read_to_string(w.path("taken/config.json")).unwrap(),
        "{}"
    );
}

/// A report says when its run was not on the row-invariant CPU f32 path
/// (equal-to-ar rates may then reflect near ties), and only then.
#[test]
fn report_flags_runs_off_the_bit_exact_path() {
    let w = World::new();
    let note = "Equal to ar: on `half` (cpu, f16)";
    w.run(&[
        "--run-id", "half", "--dtype", "f16", "--method", "ar", "--method", "pld",
    ])
    .assert()
    .success();
    let md = std::fs::read_to_string(w.path("results/half/report/report.md")).unwrap();
    assert!(md.contains(note), "{md}");
    w.run(&["--run-id", "full", "--method", "ar", "--method", "pld"])
        .assert()
        .success();
    let md = std::fs::read_to_string(w.path("results/full/report/report.md")).unwrap();
    assert!(!md.contains("Equal to ar: on"), "{md}");
}

/// Every zoo method on candle's batched path (f16 on the CPU: the kernels
/// a GPU runs, masks as additive biases): each decodes, `ar` still solves
/// the toy tasks, and every lossless method's tokens stay within `ar`'s
/// (a wrong mask or cache on this path garbles all of them).
#[test]
fn every_zoo_method_runs_on_the_device_path_in_f16() {
    let w = World::new();
    w.cmd()
        .args([
            "run",
            "--dtype",
            "f16",
            "--limit",
            "6",
            "--run-id",
            "f16",
            "--no-report",
        ])
        .arg("--results-dir")
        .arg(w.path("results"))
        .assert()
        .success();
    let samples = read_lines(&w.path("results/f16/samples.jsonl"));
    let mut by_method: std::collections::BTreeMap<String, Vec<&serde_json::Value>> =
        Default::default();
    for s in &samples {
        by_method
            .entry(s["method"].as_str().unwrap().to_string())
            .or_default()
            .push(s);
    }
    let registered = pdbench::methods::METHODS.len();
    assert_eq!(by_method.len(), registered, "{:?}", by_method.keys());
    for (m, ss) in &by_method {
        assert_eq!(ss.len(), 6, "{m}");
    }
    let score = |m: &str| {
        let ss = &by_method[m];
        ss.iter().map(|s| s["score"].as_f64().unwrap()).sum::<f64>() / ss.len() as f64
    };
    assert!(score("ar") >= 5.0 / 6.0, "ar scores {} in f16", score("ar"));
    for m in ["sps", "eagle", "pld", "deer", "diffuspec"] {
        assert!(
            score(m) >= score("ar") - 1.0 / 6.0,
            "{m} scores {}",
            score(m)
        );
    }
}

/// A reader that goes away (`pdbench list | head -1`) ends pdbench quietly,
/// as it does other Unix tools, never with a panic.
#[test]
#[cfg(unix)]
fn a_closed_stdout_is_not_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let w = World::new();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("pdbench"))
        .env("PDBENCH_HOME", w.path("store"))
        .arg("list")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );
}

/// An I/O error is said once: `Error: {:#}` prints a cause chain, so an
/// error that puts its cause into its own message must not also chain it.
/// A config.json that is not JSON says so, with the position.
#[test]
fn errors_say_their_cause_once() {
    let w = World::new();
    let missing = w.path("nowhere.jsonl");
    let err = fails_with(
        &mut w.run(&["--data", missing.to_str().unwrap()]),
        &["nowhere.jsonl", "no such file"],
    );
    assert_eq!(err.matches("no such file").count(), 1, "{err}");

    std::fs::write(w.model().join("config.json"), "{\n  not json").unwrap();
    fails_with(
        &mut w.run(&[]),
        &[
            "config.json",
            "expected a HF config.json: not valid JSON",
            "line 2",
        ],
    );
}

/// The report's speedup is the geometric mean over prompts of tokens/s
/// ratios: one prompt where `ar` stalled (50× slower, a page fault or a
/// busy host) moves it by the 12th root of 50, not by 50/12.
#[test]
fn speedup_is_a_geometric_mean_that_one_outlier_cannot_carry() {
    let (w, base) = world_with_base();
    let results = w.path("results");
    let stalled = std::cell::Cell::new(false);
    copy_run(
        &base,
        &results.join("stall"),
        |s| {
            if s["method"] == "ar" && !stalled.get() {
                let t = s["tokens_per_s"].as_f64().unwrap();
                s["tokens_per_s"] = serde_json::json!(t / 50.0);
                stalled.set(true);
            }
        },
        |_| {},
    );
    let samples = read_lines(&results.join("stall").join("samples.jsonl"));
    let tps = |m: &str| -> BTreeMap<String, f64> {
        samples
            .iter()
            .filter(|s| s["method"] == m)
            .map(|s| {
                (
                    s["sample_id"].as_str().unwrap().to_string(),
                    s["tokens_per_s"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (ar, pld) = (tps("ar"), tps("pld"));
    let ratios: Vec<f64> = ar.iter().map(|(k, a)| pld[k] / a).collect();
    assert_eq!(ratios.len(), 12);
    let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / 12.0).exp();
    let arith = ratios.iter().sum::<f64>() / 12.0;
    assert!(
        arith > 2.0 * geo,
        "the outlier should matter: {arith} vs {geo}"
    );

    let out = w.path("rep");
    w.report(&results.join("stall"), &out).assert().success();
    let rows = report_csv_overall(&out);
    let row = &rows["pld"];
    let speedup: f64 = row["speedup_vs_ar"].parse().unwrap();
    assert!(
        (speedup / geo - 1.0).abs() < 1e-9,
        "report {speedup} vs geometric mean {geo} (arithmetic {arith})"
    );
    let (lo, hi): (f64, f64) = (
        row["speedup_ci_low"].parse().unwrap(),
        row["speedup_ci_high"].parse().unwrap(),
    );
    assert!(lo <= speedup && speedup <= hi, "{lo} {speedup} {hi}");

    // Two runs in one report: each run's category section is a heading of
    // the same level naming the run (25 prompts span two categories).
    for id in ["c1", "c2"] {
        w.cmd()
            .args(["run", "--suite", "toy", "--limit", "25", "--warmup", "0"])
            .args([
                "--method",
                "ar",
                "--run-id",
                id,
                "--no-report",
                "--results-dir",
            ])
            .arg(&results)
            .assert()
            .success();
    }
    let both = w.path("both");
    w.cmd()
        .arg("report")
        .arg(results.join("c1"))
        .arg(results.join("c2"))
        .arg("--out")
        .arg(&both)
        .assert()
        .success();
    let md = std::fs::read_to_string(both.join("report.md")).unwrap();
    assert!(
        md.contains("## By category (Spec-Bench's table): run `c1`")
            && md.contains("## By category (Spec-Bench's table): run `c2`")
            && !md.contains("### run"),
        "{md}"
    );
}

/// The baseline is the greedy `ar` method, whatever its label: the label
/// `ar` cannot name another method, and a run whose `ar` is labelled
/// otherwise (as a sweep labels it) still gets speedups. Methods-file
/// errors name the file and the label.
#[test]
fn the_baseline_is_chosen_by_method_and_methods_file_errors_name_the_table() {
    let w = World::new();
    let file = w.path("methods.toml");
    std::fs::write(&file, "[ar]\nmethod = \"pld\"\n[slow]\nmethod = \"ar\"\n").unwrap();
    let run = |file: &Path| {
        let mut c = w.cmd();
        c.args(["run", "--suite", "toy", "--limit", "6", "--warmup", "0"])
            .arg("--methods-file")
            .arg(file)
            .args(["--results-dir", w.path("results").to_str().unwrap()]);
        c
    };
    fails_with(
        &mut run(&file),
        &["methods.toml: [ar]", "must be method `ar`, not `pld`"],
    );
    assert!(
        !w.path("results").exists() || std::fs::read_dir(w.path("results")).unwrap().count() == 0
    );

    std::fs::write(
        &file,
        "[ar-greedy]\nmethod = \"ar\"\n[ar-t07]\nmethod = \"ar\"\ntop_p = 1.5\n",
    )
    .unwrap();
    fails_with(
        &mut run(&file),
        &["methods.toml", "`ar-t07 (ar)`", "top_p", "1.5"],
    );
    fails_with(
        w.cmd().args(["run", "--suite", "toy", "--method", "nope"]),
        &["no method `nope` is registered", "registered: ar"],
    );

    std::fs::write(
        &file,
        "[ar-hot]\nmethod = \"ar\"\ntemperature = 0.7\n[ar-greedy]\nmethod = \"ar\"\n[pld]\n",
    )
    .unwrap();
    run(&file)
        .args(["--run-id", "r", "--no-report"])
        .assert()
        .success();
    let out = w.path("rep");
    w.report(&w.path("results/r"), &out).assert().success();
    let rows = report_csv_overall(&out);
    let speedup = |label: &str| rows[label]["speedup_vs_ar"].clone();
    assert_eq!(speedup("ar-greedy").parse::<f64>().unwrap(), 1.0);
    assert!(speedup("pld").parse::<f64>().unwrap() > 0.0, "{rows:?}");
    // Sampled `ar` is compared with the greedy baseline too.
    assert!(speedup("ar-hot").parse::<f64>().is_ok(), "{rows:?}");
    // pld's tokens equal the greedy `ar`'s.
    assert_eq!(rows["pld"]["lossless_pct"], "100.0", "{rows:?}");
}

/// SIGTERM (a CI cancel, a scheduler's time limit) is handled like Ctrl-C:
/// the run ends marked `interrupted` with whole samples, and `--resume`
/// completes it.
#[cfg(unix)]
#[test]
fn sigterm_marks_the_run_interrupted_and_resume_completes_it() {
    let w = World::new();
    let results = w.path("results");
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("pdbench"))
        .env("PDBENCH_HOME", w.path("store"))
        .env("HF_HUB_OFFLINE", "1")
        .env("RAYON_NUM_THREADS", "1")
        .args(["run", "--suite", "toy", "--limit", "60", "--warmup", "0"])
        // Method by method, so that `ar` has not started when it is cut.
        .args(["--order", "method"])
        .args([
            "--method",
            "dllm",
            "--method",
            "ar",
            "--run-id",
            "t",
            "--no-report",
            "--results-dir",
        ])
        .arg(&results)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let samples = results.join("t").join("samples.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&samples).map_or(0, |s| s.lines().count()) < 2 {
        assert!(started.elapsed().as_secs() < 120, "no samples after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signalling a child this test spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(130), "{status:?}");
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(results.join("t").join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["status"], "interrupted");
    let done = read_lines(&samples).len();
    assert!((2..60).contains(&done), "{done} samples");
    // The report of the unfinished run says how far it got and which
    // method has not started.
    let out = w.path("rep");
    w.report(&results.join("t"), &out).assert().success();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains(&format!("`t` is interrupted: {done} of 120 work items"))
            && md.contains("(`ar` not started, so not in the tables)"),
        "{md}"
    );
    w.cmd()
        .args([
            "run",
            "--resume",
            results.join("t").to_str().unwrap(),
            "--no-report",
        ])
        .assert()
        .success();
    assert_eq!(read_lines(&samples).len(), 120);
}

/// `pdbench models` lists the zoo with each model's role and the flag that
/// takes it; `models show` works on heads and filters (no tokenizer of
/// their own) as on language models.
#[test]
fn models_lists_the_zoo_and_shows_heads_and_filters() {
    let w = World::new();
    let out = w
        .cmd()
        .arg("models")
        .assert()
        .success()
        .get_output()
        .clone();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for (name, flag) in [
        ("toy-eagle", "--draft-head"),
        ("toy-learn2pd", "--filter"),
        ("toy-tidar", "--tidar"),
        ("toy-deer", "--dllm-drafter"),
        ("toy-target", "--model"),
    ] {
        assert!(
            text.lines().any(|l| l.contains(name) && l.contains(flag)),
            "{name} {flag}:\n{text}"
        );
    }
    let text = stdout_of(w.cmd().args(["models", "show", "toy-eagle"]));
    assert!(
        text.contains("\"parameters\"") && text.contains("--draft-head toy-eagle"),
        "{text}"
    );
    let text = stdout_of(w.cmd().args(["models", "show", "toy-learn2pd"]));
    assert!(
        text.contains("\"block_length\": 32") && text.contains("--filter toy-learn2pd"),
        "{text}"
    );
}

/// A companion model no method uses is not loaded, and the run says so;
/// more threads than cores draw a warning.
#[test]
fn unused_companions_and_oversubscribed_threads_are_warned_about() {
    let w = World::new();
    let over = (std::thread::available_parallelism().unwrap().get() + 1).to_string();
    let out = w
        .cmd()
        .args(["run", "--suite", "toy", "--limit", "2", "--warmup", "0"])
        .args([
            "--method",
            "ar",
            "--draft",
            "toy-draft",
            "--filter",
            "toy-learn2pd",
        ])
        .args([
            "--threads",
            &over,
            "--run-id",
            "w",
            "--no-report",
            "--results-dir",
        ])
        .arg(w.path("results"))
        .assert()
        .success()
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("warning: --draft toy-draft: no method of this run uses it (only sps do)")
            && err.contains("warning: --filter toy-learn2pd")
            && err.contains(&format!("warning: --threads {over} is above")),
        "{err}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.path("results/w/manifest.json")).unwrap())
            .unwrap();
    assert!(m["models"]["draft"].is_null(), "{}", m["models"]);
    // An ablation switch beside a --set that asks the opposite.
    w.cmd()
        .args(["run", "--suite", "toy", "--limit", "1", "--warmup", "0"])
        .args([
            "--method",
            "diffuspec",
            "--set",
            "diffuspec.cps=true",
            "--no-cps",
        ])
        .args(["--no-report", "--results-dir"])
        .arg(w.path("results"))
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "warning: --no-cps overrides --set diffuspec.cps=true",
        ));
    // A parameter the token budget overrides is named.
    w.cmd()
        .args(["run", "--suite", "toy", "--limit", "1", "--warmup", "0"])
        .args(["--method", "dllm", "--set", "dllm.gen_length=64"])
        .args(["--max-new-tokens", "16", "--no-report", "--results-dir"])
        .arg(w.path("results"))
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "warning: dllm: gen_length 64 is above max_new_tokens 16",
        ));
}

/// The EAGLE head has a rope table of its own: a prompt that fits the
/// target but not the head is refused before the run starts, naming the
/// head, not left to fail mid-run.
#[test]
fn a_prompt_beyond_the_eagle_heads_context_is_refused_up_front() {
    let w = World::new();
    let head = w.path("short-head");
    std::fs::create_dir_all(&head).unwrap();
    let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/toy/toy-eagle");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(zoo.join(f), head.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(head.join("config.json")).unwrap()).unwrap();
    cfg["max_position_embeddings"] = serde_json::json!(24);
    std::fs::write(head.join("config.json"), cfg.to_string()).unwrap();
    fails_with(
        w.cmd()
            .args(["run", "--suite", "toy", "--limit", "2", "--method", "eagle"])
            .arg("--draft-head")
            .arg(&head)
            .arg("--results-dir")
            .arg(w.path("results")),
        &["copy-0", "more than the context of 24", "short-head"],
    );
    assert!(
        !w.path("results").exists() || std::fs::read_dir(w.path("results")).unwrap().count() == 0
    );
}

/// The default order decodes prompt by prompt, each method in turn with
/// the order rotating: the same tokens as `--order method` (greedy), the
/// records in the interleaved order, the order recorded in the manifest,
/// and a cut-short run resumes in its recorded order, also from a
/// manifest written before the order field existed.
#[test]
fn interleaved_runs_rotate_methods_per_prompt_and_resume() {
    let w = World::new();
    let results = w.path("results");
    let run = |id: &str, extra: &[&str]| {
        w.cmd()
            .args(["run", "--suite", "toy", "--limit", "6", "--warmup", "1"])
            .args(["--method", "ar", "--method", "pld", "--method", "sps"])
            .args([
                "--threads",
                "1",
                "--run-id",
                id,
                "--no-report",
                "--results-dir",
            ])
            .arg(&results)
            .args(extra)
            .assert()
            .success();
    };
    run("plain", &["--order", "method"]);
    run("mixed", &[]);
    // The old flag still runs, as the default.
    run("old-flag", &["--interleave"]);
    let order = |id: &str| -> Vec<(String, String)> {
        read_lines(&results.join(id).join("samples.jsonl"))
            .iter()
            .map(|s| {
                (
                    s["method"].as_str().unwrap().to_string(),
                    s["sample_id"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let mixed = order("mixed");
    let methods: Vec<&str> = mixed.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        &methods[..9],
        ["ar", "pld", "sps", "pld", "sps", "ar", "sps", "ar", "pld"],
        "{mixed:?}"
    );
    assert_eq!(order("old-flag"), mixed);
    let plain = order("plain");
    assert!(plain[..6].iter().all(|(m, _)| m == "ar"), "{plain:?}");
    let ids = |id: &str| -> BTreeMap<String, serde_json::Value> {
        read_lines(&results.join(id).join("samples.jsonl"))
            .into_iter()
            .map(|s| {
                (
                    format!("{}/{}", s["method"], s["sample_id"]),
                    s["output_ids"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(ids("mixed"), ids("plain"));
    let manifest = |id: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(results.join(id).join("manifest.json")).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(manifest("mixed")["order"], "interleaved");
    assert_eq!(manifest("plain")["order"], "method");
    assert!(manifest("mixed").get("interleave").is_none());

    // Cut after 5 records (mid-round), the manifest rewritten as an older
    // pdbench wrote it (`interleave: true`, no `order`), then resumed:
    // every record once, in the interleaved order.
    let cut = |id: &str, legacy: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let samples = results.join(id).join("samples.jsonl");
        let text = std::fs::read_to_string(&samples).unwrap();
        let kept: Vec<&str> = text.lines().take(5).collect();
        std::fs::write(&samples, format!("{}\n", kept.join("\n"))).unwrap();
        let mut m = manifest(id);
        let o = m.as_object_mut().unwrap();
        o.insert("status".into(), "interrupted".into());
        o.remove("order");
        legacy(o);
        std::fs::write(
            results.join(id).join("manifest.json"),
            serde_json::to_string_pretty(&m).unwrap(),
        )
        .unwrap();
        w.cmd()
            .args([
                "run",
                "--resume",
                results.join(id).to_str().unwrap(),
                "--no-report",
            ])
            .assert()
            .success();
        assert_eq!(read_lines(&samples).len(), 18);
    };
    cut("mixed", &|o| {
        o.insert("interleave".into(), true.into());
    });
    assert_eq!(order("mixed"), mixed);
    assert_eq!(ids("mixed"), ids("plain"));
    assert_eq!(manifest("mixed")["order"], "interleaved");
    // A manifest with neither field ran method by method, and resumes so.
    cut("plain", &|_| {});
    assert_eq!(order("plain"), plain);
    assert_eq!(manifest("plain")["order"], "method");
}

/// Under `nohup` (SIGHUP ignored at start) a hangup does not stop a run.
#[cfg(unix)]
#[test]
fn a_run_started_under_nohup_ignores_hangups() {
    use std::os::unix::process::CommandExt;
    let w = World::new();
    let results = w.path("results");
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("pdbench"));
    cmd.env("PDBENCH_HOME", w.path("store"))
        .env("HF_HUB_OFFLINE", "1")
        .env("RAYON_NUM_THREADS", "1")
        .args(["run", "--suite", "toy", "--limit", "30", "--warmup", "0"])
        .args([
            "--method",
            "dllm",
            "--run-id",
            "h",
            "--no-report",
            "--results-dir",
        ])
        .arg(&results)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: only signal(2) between fork and exec, as nohup does.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let samples = results.join("h").join("samples.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&samples).map_or(0, |s| s.lines().count()) < 2 {
        assert!(started.elapsed().as_secs() < 120, "no samples after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signalling a child this test spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGHUP);
    }
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success(), "{status:?}");
    assert_eq!(read_lines(&samples).len(), 30);
}

/// Review mends: an empty baseline does not pass compare; --limit values
/// that name the same prompts compare; a run whose every method samples
/// still gets speedups over its `ar`, with a note; a bad --set is blamed
/// on the --set, not on the methods file.
#[test]
fn empty_baselines_same_prompt_sets_sampled_baselines_and_set_errors() {
    let (w, base) = world_with_base();
    let results = w.path("results");
    let compare = |b: &str, n: &str| w.compare(b, n);
    copy_run(
        &base,
        &results.join("empty"),
        |s| *s = serde_json::Value::Null,
        |m| m["status"] = serde_json::json!("failed"),
    );
    let out = compare("empty", "base")
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("empty holds no samples"), "{err}");
    // No limit on a 12-prompt suite is --limit 12.
    copy_run(
        &base,
        &results.join("nolimit"),
        |_| {},
        |m| {
            m["limit"] = serde_json::Value::Null;
            m["suite"]["n_samples"] = serde_json::json!(12);
        },
    );
    compare("base", "nolimit").assert().code(0);

    w.cmd()
        .args(["run", "--suite", "toy", "--limit", "12", "--warmup", "0"])
        .args(["--method", "ar", "--method", "pld", "--run-id", "hot"])
        .args([
            "--set",
            "ar.temperature=0.7",
            "--set",
            "pld.temperature=0.7",
        ])
        .args(["--results-dir"])
        .arg(&results)
        .assert()
        .success();
    let md = std::fs::read_to_string(results.join("hot/report/report.md")).unwrap();
    let row = md.lines().find(|l| l.starts_with("| pld |")).unwrap();
    assert!(row.contains("× ["), "{row}");
    assert!(md.contains("speedups are over `ar`, which samples"), "{md}");

    let file = w.path("m.toml");
    std::fs::write(&file, "[ar]\n[pld]\nmax_ngram = 2\n").unwrap();
    fails_with(
        w.cmd()
            .args(["run", "--suite", "toy", "--limit", "2", "--methods-file"])
            .arg(&file)
            .args(["--set", "pld.max_draft=0", "--results-dir"])
            .arg(&results),
        &["m.toml [pld] with --set pld.max_draft=0", "max_draft"],
    );
}

/// The interference meter: every sample carries its reading and figure,
/// and the manifest says what the meter reads. A run one of whose methods
/// the host disturbed (here ar's readings are set to 30% of its thread
/// time lost, a busy neighbour's mark) is flagged in the report, with the
/// figure and what to do, and refused by `compare` (exit 2, "not
/// comparable: host interference", either side), unless `--force` or a
/// looser `--max-interference`. Three copies of an undisturbed run are
/// not flagged.
#[test]
fn host_interference_is_recorded_flagged_and_refused() {
    let (w, base) = world_with_base();
    let results = w.path("results");
    let recs = read_lines(&base.join("samples.jsonl"));
    assert!(!recs.is_empty());
    for r in &recs {
        let i = &r["interference"];
        assert!(i["run_delay_ns"].is_u64() && i["cpu_ns"].is_u64(), "{r}");
        assert!(r["interference_pct"].as_f64().unwrap() >= 0.0, "{r}");
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("manifest.json")).unwrap())
            .unwrap();
    assert!(
        m["interference_meter"]
            .as_str()
            .unwrap()
            .contains("run-queue delay"),
        "{}",
        m["interference_meter"]
    );
    let threads = m["device"]["threads"].as_u64().unwrap();
    // Undisturbed copies: the readings zeroed (the real ones came from a
    // machine busy with other tests).
    let quiet = |s: &mut serde_json::Value| {
        s["interference"]["run_delay_ns"] = 0.into();
        s["interference"]["steal_ns"] = 0.into();
    };
    // ar's threads waited 30% of their time while other processes ran,
    // and ran 70% of it.
    let hit = move |s: &mut serde_json::Value| {
        quiet(s);
        if s["method"] == "ar" {
            let thread_ns = s["wall_ns"].as_u64().unwrap() * threads;
            let i = &mut s["interference"];
            i["run_delay_ns"] = (thread_ns * 3 / 10).into();
            i["other_cpu_ns"] = thread_ns.into();
            i["cpu_ns"] = (thread_ns * 7 / 10).into();
        }
    };
    for id in ["quiet-1", "quiet-2", "quiet-3"] {
        copy_run(&base, &results.join(id), quiet, |_| {});
    }
    copy_run(&base, &results.join("busy"), hit, |_| {});
    let compare = |b: &str, n: &str, extra: &[&str]| {
        let mut c = w.cmd();
        c.args(["compare", b, n, "--results-dir"])
            .arg(&results)
            .args(extra);
        c
    };
    compare("quiet-1", "quiet-2", &[]).assert().code(0);
    compare("quiet-1", "quiet-3", &[]).assert().code(0);
    for (b, n) in [("quiet-1", "busy"), ("busy", "quiet-1")] {
        let out = compare(b, n, &[]).assert().code(2).get_output().clone();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not comparable: host interference")
                && err.contains("ar lost 30.0% of its thread time")
                && err.contains("--force"),
            "{err}"
        );
        assert!(!err.contains("pld lost"), "{err}");
    }
    let out = compare("quiet-1", "busy", &["--force"])
        .assert()
        .code(0)
        .get_output()
        .clone();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("host interference in new"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    compare("quiet-1", "busy", &["--max-interference", "40"])
        .assert()
        .code(0);
    compare("quiet-1", "busy", &["--max-interference=nan"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--max-interference"));

    // The report flags the disturbed run and method; quiet ones are not.
    for (id, flagged) in [("quiet-1", false), ("busy", true)] {
        let out = w.path(&format!("report-{id}"));
        w.cmd()
            .args(["report", id, "--results-dir"])
            .arg(&results)
            .arg("--out")
            .arg(&out)
            .assert()
            .success();
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(md.contains("## Host interference"), "{md}");
        assert_eq!(md.contains("was disturbed by the host"), flagged, "{md}");
        let ar = table_row(&md, "| ar |");
        let ar_row = md
            .lines()
            .filter(|l| l.starts_with("| ar |") && l.contains('%'))
            .last()
            .unwrap();
        assert_eq!(ar_row.contains("**disturbed**"), flagged, "{ar} / {ar_row}");
        let csv = report_csv_overall(&out);
        let pct: f64 = csv["ar"]["interference_pct"].parse().unwrap();
        if flagged {
            assert!((pct - 30.0).abs() < 1e-3, "{pct}");
        } else {
            assert_eq!(pct, 0.0);
        }
    }
}

/// With no --threads a run times its models at 1 and all cores in child
/// processes and records the choice with its timings; --threads N is
/// recorded as given; a resume keeps the recorded count.
#[test]
fn threads_are_chosen_by_timing_and_recorded() {
    let w = World::new();
    let results = w.path("results");
    w.toy_run(
        "auto",
        &["--limit", "2", "--method", "ar", "--method", "sps"],
    )
    .assert()
    .success()
    .stderr(predicates::str::contains("threads: "));
    let manifest = |id: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(results.join(id).join("manifest.json")).unwrap(),
        )
        .unwrap()
    };
    let m = manifest("auto");
    let c = &m["threads_choice"];
    assert_eq!(c["how"], "automatic", "{c}");
    assert_eq!(c["threads"], m["device"]["threads"]);
    let timings = c["timings"].as_array().unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    let counts: std::collections::BTreeSet<u64> = timings
        .iter()
        .map(|t| t["threads"].as_u64().unwrap())
        .collect();
    assert!(
        counts.contains(&1) && counts.contains(&(cores as u64)),
        "{c}"
    );
    // The target and sps's drafter, each with a decode step and a
    // verify-width forward.
    let models: std::collections::BTreeSet<&str> = timings
        .iter()
        .map(|t| t["model"].as_str().unwrap())
        .collect();
    assert_eq!(models.len(), 2, "{c}");
    assert!(
        timings
            .iter()
            .all(|t| t["decode_step_ns"].as_u64().unwrap() > 0
                && t["verify_ns"].as_u64().unwrap() > 0)
    );
    assert!(c["verify_width"].as_u64().unwrap() > 1);

    w.toy_run(
        "given",
        &["--limit", "2", "--method", "ar", "--threads", "1"],
    )
    .assert()
    .success();
    let m = manifest("given");
    assert_eq!(m["threads_choice"]["how"], "given");
    assert_eq!(m["device"]["threads"], 1);
    // The kernels' instruction set per GGUF format, from the start-up
    // measurement, on a CPU run (none where the machine has no kernels).
    if cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("avx2") {
        let k = m["kernel_choice"].as_array().expect("kernel_choice");
        assert_eq!(k.len(), 5, "{k:?}");
        assert!(k
            .iter()
            .all(|c| c["isa"] == "avx2" || c["isa"] == "avx512vnni"));
    }
}
