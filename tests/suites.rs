//! The shipped suites and ParallelBench: every suite file parses and loads,
//! prompts equal the messages ParallelBench's own code builds (fixtures made
//! by scripts/parallelbench_reference_messages.py), and ParallelBench's own
//! answers score 100 with pdbench's scorers.

use std::path::{Path, PathBuf};

use pdbench::store::Store;
use pdbench::suite::{self, parallelbench, DataSource};
use serde_json::Value;

/// The released ParallelBench data: `$PDBENCH_PARALLELBENCH` when set (as
/// the library reads it), else beside the repository (CI has it there).
fn pb_root() -> PathBuf {
    let p = std::env::var_os("PDBENCH_PARALLELBENCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/parallelbench"));
    assert!(
        p.is_dir(),
        "the ParallelBench test data is expected at {} (set $PDBENCH_PARALLELBENCH to its folder)",
        p.display()
    );
    p
}

fn suites_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("suites")
}

#[test]
fn every_shipped_suite_parses_and_parallelbench_suites_load() {
    let names = suite::list(&suites_dir());
    assert!(names.contains(&"smoke".to_string()));
    let store = Store::at(tempfile::tempdir().unwrap().path());
    let mut pb = 0;
    for name in &names {
        let path = suites_dir().join(format!("{name}.toml"));
        let def = suite::parse_def(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let DataSource::Parallelbench(task) = &def.source else {
            continue;
        };
        pb += 1;
        assert_eq!(def.name, format!("parallelbench/{task}"));
        let group = task.split('/').next().unwrap();
        let (tokens, stop) = match group {
            "waiting_line" => (32, "\n\n"),
            "waiting_line_n15" => (128, "\n\n"),
            "puzzle" => (64, "\n\n\n"),
            _ => (64, "\n\n"),
        };
        assert_eq!(def.max_new_tokens, tokens, "{name}");
        assert_eq!(def.stop, vec![stop.to_string()], "{name}");
        // Loading checks the scorer against the task's metric.
        let s = suite::load(path.to_str().unwrap(), &store, &mut |_| {})
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(s.n_samples >= 50, "{name}: {} samples", s.n_samples);
        assert!(s.task_config_sha256.is_some());
        // The list and puzzle tasks carry in-context examples; the
        // sentence, summary and paraphrase tasks have none.
        let with_icl = matches!(group, "waiting_line" | "waiting_line_n15" | "puzzle");
        assert!(
            s.samples.iter().all(|x| x.context.is_empty() != with_icl),
            "{name}: ICL turns"
        );
    }
    // 10 + 10 list tasks, 2 puzzles, 21 words_to_sentence variants (the
    // paper's easy/medium/hard and the n1..n7 ones), samsum, paraphrase.
    assert_eq!(pb, 45, "ParallelBench suites with implemented metrics");
}

#[test]
fn prompts_equal_parallelbench_messages() {
    let root = pb_root();
    let fixtures = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parallelbench_messages.jsonl"),
    )
    .unwrap();
    let mut checked = 0;
    for line in fixtures.lines() {
        let f: Value = serde_json::from_str(line).unwrap();
        let task = f["task"].as_str().unwrap();
        let index = f["index"].as_u64().unwrap() as usize;
        let (data, config) = parallelbench::task_files(&root, task);
        let cfg = parallelbench::read_task_config(&config, task).unwrap();
        assert_eq!(cfg.metric, f["metric"].as_str().unwrap());
        let row: Value = serde_json::from_str(
            std::fs::read_to_string(&data)
                .unwrap()
                .lines()
                .nth(index)
                .unwrap(),
        )
        .unwrap();
        let err = |d: String| suite::SuiteError::Prompt {
            suite: task.into(),
            detail: d,
        };
        let s = parallelbench::sample_from_row(task, &cfg, &row, index, true, &err).unwrap();
        let mut messages: Vec<Value> = s
            .context
            .iter()
            .map(|t| serde_json::json!({"role": t.role, "content": t.content}))
            .collect();
        messages.push(serde_json::json!({"role": "user", "content": s.prompt}));
        assert_eq!(Value::Array(messages), f["messages"], "{task} row {index}");
        assert_eq!(s.reference.as_ref(), Some(&f["answer"]));
        checked += 1;
    }
    assert!(checked >= 60, "{checked} fixture rows");
}

/// ParallelBench's reference answers are correct outputs: each scores 1,
/// leniently and strictly, on every row of every task pdbench scores.
#[test]
fn reference_answers_score_full_marks() {
    let store = Store::at(tempfile::tempdir().unwrap().path());
    for name in suite::list(&suites_dir()) {
        if !name.starts_with("parallelbench/") {
            continue;
        }
        let s = suite::load(
            suites_dir().join(format!("{name}.toml")).to_str().unwrap(),
            &store,
            &mut |_| {},
        )
        .unwrap();
        let spec = pdbench::score::find(&s.def.scorer).unwrap();
        if spec.uses_grammar {
            continue; // see text_tasks_score_their_references below
        }
        let f = spec.score.unwrap();
        let ctx = pdbench::score::ScoreContext::default();
        for sample in &s.samples {
            let r = sample.reference.as_ref().unwrap();
            let answer = match r {
                Value::String(a) => a.clone(),
                other => other["example"].as_str().unwrap().to_string(),
            };
            let scores = f(&ctx, &answer, r).unwrap();
            assert_eq!(
                scores["score"], 1.0,
                "{name} sample {}: {answer}",
                sample.id
            );
            assert_eq!(scores["score_strict"], 1.0, "{name} sample {}", sample.id);
        }
    }
}

/// The text tasks against their references: an example sentence holds all
/// its words; a reference summary has ROUGE-L 1 against itself; copying
/// the source sentence is no paraphrase (1 − BLEU = 0), while the
/// released ChatGPT paraphrases are new wording. Paraphrases never get a
/// headline score (BERTScore is unavailable).
#[test]
fn text_tasks_score_their_references() {
    let store = Store::at(tempfile::tempdir().unwrap().path());
    let ctx = pdbench::score::ScoreContext::default();
    let load = |name: &str| {
        suite::load(
            suites_dir().join(format!("{name}.toml")).to_str().unwrap(),
            &store,
            &mut |_| {},
        )
        .unwrap()
    };
    let scorer =
        |s: &suite::ResolvedSuite| pdbench::score::find(&s.def.scorer).unwrap().score.unwrap();

    let s = load("parallelbench/words_to_sentence/easy");
    let f = scorer(&s);
    let r = s.samples[0].reference.as_ref().unwrap();
    let example = r["example"].as_str().unwrap();
    let sc = f(&ctx, example, r).unwrap();
    assert_eq!(
        (sc["inclusion_score"], sc["grammar_score"], sc["score"]),
        (1.0, 1.0, 1.0)
    );
    let sc = f(&ctx, "I love to throw the ball.", r).unwrap();
    assert_eq!((sc["inclusion_score"], sc["score"]), (0.0, 0.0));
    // Case-sensitive, as ParallelBench's `word in prediction`.
    let sc = f(&ctx, &example.replace("dog", "Dog"), r).unwrap();
    assert_eq!(sc["inclusion_score"], 0.0);
    assert_eq!(f(&ctx, "", r).unwrap()["score"], 0.0);

    let s = load("parallelbench/paraphrase_summarize/samsum");
    let f = scorer(&s);
    let mut grammatical = 0;
    for sample in &s.samples {
        let r = sample.reference.as_ref().unwrap();
        let sc = f(&ctx, r["summary"].as_str().unwrap(), r).unwrap();
        assert!((sc["rougeL_score"] - 1.0).abs() < 1e-12, "{}", sample.id);
        assert_eq!(sc["score"], sc["grammar_score"]);
        grammatical += sc["grammar_score"] as usize;
        assert_eq!(f(&ctx, "  ", r).unwrap()["score"], 0.0);
    }
    // Human-written summaries are mostly clean English; names the
    // dictionary lacks are flagged, as LanguageTool's speller flags them.
    assert!(
        grammatical >= 60,
        "{grammatical} of 100 reference summaries pass"
    );

    let s = load("parallelbench/paraphrase_summarize/chatgpt-paraphrases");
    let spec = pdbench::score::find(&s.def.scorer).unwrap();
    assert!(spec.unscored_reason.unwrap().contains("BERTScore"));
    let f = spec.score.unwrap();
    let mut novel = 0;
    for sample in &s.samples {
        let r = sample.reference.as_ref().unwrap();
        let source = r["text"].as_str().unwrap();
        let sc = f(&ctx, source, r).unwrap();
        assert!(!sc.contains_key("score"), "no headline without BERTScore");
        if source.split_whitespace().count() >= 4 {
            assert!(
                sc["inv_bleu_score"].abs() < 1e-12,
                "{}: {source}",
                sample.id
            );
        }
        let examples = r["examples"].as_str().unwrap();
        let first = examples
            .trim_start_matches("['")
            .split("', '")
            .next()
            .unwrap();
        novel += usize::from(f(&ctx, first, r).unwrap()["inv_bleu_score"] > 0.5);
    }
    assert!(
        novel >= 80,
        "{novel} of 100 ChatGPT paraphrases differ from their source"
    );
}

/// Every GSM8K reference ends in `#### <number>`, so every sample can be
/// scored; the data set is fetched into the store on first use.
#[test]
fn gsm8k_references_all_parse() {
    let s = suite::load("gsm8k", &Store::from_env(), &mut |l| eprintln!("{l}")).unwrap();
    assert_eq!(s.n_samples, 1319);
    for sample in &s.samples {
        let r = sample.reference.as_ref().and_then(Value::as_str).unwrap();
        assert!(
            pdbench::score::gsm8k::reference_number(r).is_some(),
            "sample {}: {r}",
            sample.id
        );
    }
    let f = pdbench::score::find("gsm8k").unwrap().score.unwrap();
    let first = s.samples[0].reference.as_ref().unwrap();
    assert_eq!(
        f(&Default::default(), "She makes $18 every day.", first).unwrap()["score"],
        1.0
    );
    assert_eq!(
        f(&Default::default(), "She makes $19 every day.", first).unwrap()["score"],
        0.0
    );
}

/// HumanEval's canonical solutions pass in the sandbox and an empty body
/// fails: pass@1 scoring judges the code, not the sandbox.
#[test]
fn humaneval_canonical_solutions_pass_and_stubs_fail() {
    let s = suite::load("humaneval", &Store::from_env(), &mut |l| eprintln!("{l}")).unwrap();
    assert_eq!(s.n_samples, 164);
    let f = pdbench::score::find("humaneval").unwrap().score.unwrap();
    let samples = &s.samples;
    let results: Vec<(String, f64, f64)> = std::thread::scope(|scope| {
        let chunks: Vec<_> = samples
            .chunks(samples.len().div_ceil(4))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|x| {
                            let r = x.reference.as_ref().unwrap();
                            let good = r["canonical_solution"].as_str().unwrap();
                            let pass = f(&Default::default(), good, r).unwrap()["score"];
                            let stub = f(&Default::default(), "    pass\n", r).unwrap()["score"];
                            (x.id.clone(), pass, stub)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        chunks.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let failed: Vec<&String> = results
        .iter()
        .filter(|r| r.1 != 1.0)
        .map(|r| &r.0)
        .collect();
    assert!(
        failed.is_empty(),
        "canonical solutions that failed: {failed:?}"
    );
    let stub_passes = results.iter().filter(|r| r.2 == 1.0).count();
    assert!(
        stub_passes <= 2,
        "{stub_passes} empty bodies passed their tests"
    );
}

#[test]
fn mt_bench_has_two_turns_per_question() {
    let s = suite::load("mt-bench", &Store::from_env(), &mut |l| eprintln!("{l}")).unwrap();
    assert_eq!(s.n_samples, 80);
    assert!(
        s.samples.iter().all(|x| x.followups.len() == 1),
        "every question has a second turn"
    );
    let cats: std::collections::BTreeSet<_> = s
        .samples
        .iter()
        .filter_map(|x| x.category.clone())
        .collect();
    assert_eq!(cats.len(), 8, "{cats:?}");
}

/// A generator source names the file and `source.generator` when the
/// generator or its parameters are wrong.
#[test]
fn bad_generator_sources_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path().join("store"));
    let base = std::fs::read_to_string(suites_dir().join("toy.toml")).unwrap();
    for (name, from, to, needle) in [
        (
            "a.toml",
            "name = \"toy\", split",
            "name = \"toys\", split",
            "unknown generator \"toys\"",
        ),
        (
            "b.toml",
            "per_task = 20",
            "per_task = 20, colour = 1",
            "colour",
        ),
        (
            "c.toml",
            "seed = 2026",
            "seed = 2026, tasks = [\"sorting\"]",
            "`sorting`",
        ),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, base.replace(from, to)).unwrap();
        let e = suite::load(p.to_str().unwrap(), &store, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(name) && e.contains("source.generator") && e.contains(needle),
            "{e}"
        );
    }
    let ok = suite::load(
        suites_dir().join("toy.toml").to_str().unwrap(),
        &store,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(ok.n_samples, 300);
    assert!(ok.data_file.starts_with("generator:toy"));
}
