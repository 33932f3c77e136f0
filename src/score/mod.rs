//! Scorers: a registry of named functions from an output text and a
//! sample's reference to per-sample scores. Suites name their scorer; runs
//! and `pdbench score` call it. A scorer never invents a number: a sample it
//! cannot judge is an error that names the sample, and a suite that cannot
//! be judged here uses `none`.

pub mod grammar;
pub mod gsm8k;
pub mod parallelbench;
pub mod sandbox;
pub mod text_metrics;

use std::collections::BTreeMap;

use serde_json::Value;

/// Per-sample scores by name. `score` is the headline, in [0, 1].
pub type Scores = BTreeMap<String, f64>;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScoreError {
    #[error("scorer `{scorer}`: the reference is not what it expects: {expected}")]
    BadReference {
        scorer: &'static str,
        expected: &'static str,
    },
    #[error("scorer `{scorer}` cannot run here: {detail}")]
    Unavailable {
        scorer: &'static str,
        detail: String,
    },
}

/// What scorers may need besides the output and the reference.
#[derive(Default)]
pub struct ScoreContext {
    pub grammar: grammar::LazyChecker,
}

impl ScoreContext {
    pub fn new(grammar: grammar::GrammarBackend) -> Self {
        Self {
            grammar: grammar::LazyChecker::new(grammar),
        }
    }

    /// ParallelBench's grammar check of `text` with this context's backend.
    fn grammar_ok(&self, scorer: &'static str, text: &str) -> Result<bool, ScoreError> {
        let unavailable = |e: grammar::GrammarError| ScoreError::Unavailable {
            scorer,
            detail: e.to_string(),
        };
        let checker = self.grammar.get().map_err(unavailable)?;
        grammar::passes(checker.as_ref(), text).map_err(unavailable)
    }

    /// Opens the grammar backend and checks one sentence, so that a run
    /// fails before decoding rather than at its first sample.
    pub fn probe(&self, spec: &ScorerSpec) -> Result<(), ScoreError> {
        if spec.uses_grammar {
            self.grammar_ok(spec.name, "This is a sentence.")?;
        }
        Ok(())
    }
}

pub type ScoreFn = fn(&ScoreContext, &str, &Value) -> Result<Scores, ScoreError>;

pub struct ScorerSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// `None` for `none`: outputs are recorded unscored.
    pub score: Option<ScoreFn>,
    /// Whether it calls the grammar checker (the manifest then names it).
    pub uses_grammar: bool,
    /// Why the headline `score` is never given, where a part of the metric
    /// cannot be computed here; the other parts are still recorded.
    pub unscored_reason: Option<&'static str>,
}

impl std::fmt::Debug for ScorerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScorerSpec")
            .field("name", &self.name)
            .finish()
    }
}

/// A metric with a lenient and a strict variant, as ParallelBench reports.
fn both(
    scorer: &'static str,
    expected: &'static str,
    f: fn(&str, &Value, bool) -> Option<f64>,
    output: &str,
    reference: &Value,
) -> Result<Scores, ScoreError> {
    let bad = || ScoreError::BadReference { scorer, expected };
    let lenient = f(output, reference, false).ok_or_else(bad)?;
    let strict = f(output, reference, true).ok_or_else(bad)?;
    Ok(Scores::from([
        ("score".to_string(), lenient),
        ("score_strict".to_string(), strict),
    ]))
}

macro_rules! lenient_and_strict {
    ($fn_name:ident, $scorer:literal, $expected:literal, $metric:path) => {
        fn $fn_name(
            _: &ScoreContext,
            output: &str,
            reference: &Value,
        ) -> Result<Scores, ScoreError> {
            both($scorer, $expected, $metric, output, reference)
        }
    };
}

lenient_and_strict!(
    list_match,
    "list_match_score",
    "a list, or a string holding one",
    parallelbench::list_match
);
lenient_and_strict!(
    list_shuffle,
    "list_shuffle_score",
    "an object with an `input` list",
    parallelbench::list_shuffle
);
lenient_and_strict!(
    list_random_insert,
    "list_random_insert_score",
    "an object with an `input` list and a `word`",
    parallelbench::list_random_insert
);
lenient_and_strict!(
    list_random_remove,
    "list_random_remove_score",
    "an object with an `input` list",
    parallelbench::list_random_remove
);
lenient_and_strict!(
    list_random_replace,
    "list_random_replace_score",
    "an object with an `input` list and a `word`",
    parallelbench::list_random_replace
);
lenient_and_strict!(
    sudoku,
    "sudoku_score",
    "the solved grid as a string",
    parallelbench::sudoku
);

fn gsm8k_exact(_: &ScoreContext, output: &str, reference: &Value) -> Result<Scores, ScoreError> {
    let bad = || ScoreError::BadReference {
        scorer: "gsm8k",
        expected: "GSM8K's answer text ending in `#### <number>`",
    };
    let s = gsm8k::score(output, reference.as_str().ok_or_else(bad)?).ok_or_else(bad)?;
    Ok(Scores::from([("score".to_string(), s)]))
}

/// HumanEval pass@1 for one sample: the prompt, the completion, the tests
/// and `check(entry_point)`, run in the sandbox.
fn humaneval(_: &ScoreContext, output: &str, reference: &Value) -> Result<Scores, ScoreError> {
    let field = |k: &str| reference.get(k).and_then(Value::as_str);
    let (Some(prompt), Some(test), Some(entry)) =
        (field("prompt"), field("test"), field("entry_point"))
    else {
        return Err(ScoreError::BadReference {
            scorer: "humaneval",
            expected: "the whole HumanEval row (`prompt`, `test`, `entry_point`); set reference_field = \"*\"",
        });
    };
    let program = format!("{prompt}{output}\n\n{test}\n\ncheck({entry})\n");
    let o = sandbox::run_python(&program, &sandbox::Limits::default()).map_err(|e| {
        ScoreError::Unavailable {
            scorer: "humaneval",
            detail: e.to_string(),
        }
    })?;
    Ok(Scores::from([
        ("score".to_string(), b(o.passed)),
        ("timed_out".to_string(), b(o.timed_out)),
    ]))
}

fn latin_square(_: &ScoreContext, output: &str, reference: &Value) -> Result<Scores, ScoreError> {
    let s = parallelbench::latin_square(output, reference).ok_or(ScoreError::BadReference {
        scorer: "latin_square_score",
        expected: "an object with a `symbols` list",
    })?;
    Ok(Scores::from([
        ("score".to_string(), s),
        ("score_strict".to_string(), s),
    ]))
}

fn b(x: bool) -> f64 {
    if x {
        1.0
    } else {
        0.0
    }
}

/// ParallelBench words_to_sentence: every word is a case-sensitive
/// substring of the output, and the output passes the grammar check.
fn sentence_to_words(
    ctx: &ScoreContext,
    output: &str,
    reference: &Value,
) -> Result<Scores, ScoreError> {
    const NAME: &str = "sentence_to_words_score";
    let words: Vec<&str> = reference
        .get("words")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_str).collect())
        .ok_or(ScoreError::BadReference {
            scorer: NAME,
            expected: "an object with a `words` list of strings",
        })?;
    let inclusion = words.iter().all(|w| output.contains(w));
    let grammar = ctx.grammar_ok(NAME, output)?;
    Ok(Scores::from([
        ("inclusion_score".to_string(), b(inclusion)),
        ("grammar_score".to_string(), b(grammar)),
        ("score".to_string(), b(inclusion && grammar)),
    ]))
}

/// ParallelBench samsum: ROUGE-L F1 (with stemming) against the reference
/// summary, times the grammar check; ROUGE-1/2 are recorded beside it.
fn summary(ctx: &ScoreContext, output: &str, reference: &Value) -> Result<Scores, ScoreError> {
    const NAME: &str = "summary_score";
    let target =
        reference
            .get("summary")
            .and_then(Value::as_str)
            .ok_or(ScoreError::BadReference {
                scorer: NAME,
                expected: "an object with a `summary` string",
            })?;
    let prediction = output.trim();
    let r = text_metrics::rouge(prediction, target.trim(), true);
    let grammar = !prediction.is_empty() && ctx.grammar_ok(NAME, prediction)?;
    Ok(Scores::from([
        ("rouge1_score".to_string(), r.rouge1.fmeasure),
        ("rouge2_score".to_string(), r.rouge2.fmeasure),
        ("rougeL_score".to_string(), r.rouge_l.fmeasure),
        ("grammar_score".to_string(), b(grammar)),
        ("score".to_string(), r.rouge_l.fmeasure * b(grammar)),
    ]))
}

const BERTSCORE_UNAVAILABLE: &str = "BERTScore-F1 needs the roberta-large model, which cannot be reached here; inv_bleu_score and grammar_score are recorded, the task score is not";

/// ParallelBench paraphrase: (1 − BLEU against the source) × BERTScore-F1
/// × grammar. BERTScore is not available, so only its other factors are
/// recorded and the headline `score` is left out.
fn paraphrase(ctx: &ScoreContext, output: &str, reference: &Value) -> Result<Scores, ScoreError> {
    const NAME: &str = "paraphrase_score";
    let source = reference
        .get("text")
        .and_then(Value::as_str)
        .ok_or(ScoreError::BadReference {
            scorer: NAME,
            expected: "an object with the source sentence as `text`",
        })?;
    let prediction = output.trim();
    let (inv_bleu, grammar) = if prediction.is_empty() {
        (0.0, false)
    } else {
        (
            1.0 - text_metrics::bleu(prediction, &[source]),
            ctx.grammar_ok(NAME, prediction)?,
        )
    };
    Ok(Scores::from([
        ("inv_bleu_score".to_string(), inv_bleu),
        ("grammar_score".to_string(), b(grammar)),
    ]))
}

fn toy(_: &ScoreContext, output: &str, reference: &Value) -> Result<Scores, ScoreError> {
    let s = crate::toy::score(output, reference).ok_or(ScoreError::BadReference {
        scorer: "toy",
        expected: "a toy reference (`task`, `answer`, `check`) from the toy generator",
    })?;
    Ok(Scores::from([("score".to_string(), s)]))
}

/// Every scorer, by name.
pub static SCORERS: &[ScorerSpec] = &[
    ScorerSpec {
        name: "none",
        description: "not scored (speed only)",
        score: None,
        uses_grammar: false,
        unscored_reason: None,
    },
    ScorerSpec {
        name: "list_match_score",
        description: "ParallelBench: the output list equals the answer list",
        score: Some(list_match),
        uses_grammar: false,
        unscored_reason: None,
    },
    ScorerSpec {
        name: "list_shuffle_score",
        description: "ParallelBench: a permutation of the input that differs from it",
        score: Some(list_shuffle),
        uses_grammar: false,
        unscored_reason: None,
    },
    ScorerSpec {
        name: "list_random_insert_score",
        description: "ParallelBench: the input with `word` inserted anywhere",
        score: Some(list_random_insert),
        uses_grammar: false,
        unscored_reason: None,
    },
    ScorerSpec {
        name: "list_random_remove_score",
        description: "ParallelBench: the input with any one item removed",
        score: Some(list_random_remove),
        uses_grammar: false,
        unscored_reason: None,
    },
    ScorerSpec {
        name: "list_random_replace_score",
        description: "ParallelBench: the input with any one item replaced by `word`",
        score: Some(list_random_replace),
        uses_grammar: false,
        unscored_reason: None,
    },
    ScorerSpec {
        name: "latin_square_score",
        description: "ParallelBench: a valid latin square over the symbols",
        score: Some(latin_square),
        uses_grammar: false,
        unscored_reason: None,
    },
    ScorerSpec {
        name: "humaneval",
        description: "HumanEval pass@1: prompt + completion + tests, run in a sandbox",
        score: Some(humaneval),
        uses_grammar: false,
        unscored_reason: None,
    },
    ScorerSpec {
        name: "gsm8k",
        description: "GSM8K: the last number of the output equals the answer after ####",
        score: Some(gsm8k_exact),
        uses_grammar: false,
        unscored_reason: None,
    },
    ScorerSpec {
        name: "sudoku_score",
        description: "ParallelBench: the solved 4x4 sudoku grid",
        score: Some(sudoku),
        uses_grammar: false,
        unscored_reason: None,
    },
    ScorerSpec {
        name: "toy",
        description: "toy tasks: exact match where the answer is unique, ParallelBench's checks where it is not",
        score: Some(toy),
        uses_grammar: false,
        unscored_reason: None,
    },
    ScorerSpec {
        name: "sentence_to_words_score",
        description: "ParallelBench: every given word appears, and the sentence passes the grammar check",
        score: Some(sentence_to_words),
        uses_grammar: true,
        unscored_reason: None,
    },
    ScorerSpec {
        name: "summary_score",
        description: "ParallelBench: ROUGE-L F1 (stemmed) against the reference summary × grammar check",
        score: Some(summary),
        uses_grammar: true,
        unscored_reason: None,
    },
    ScorerSpec {
        name: "paraphrase_score",
        description: "ParallelBench: (1 − BLEU vs the source) × BERTScore-F1 × grammar; BERTScore is unavailable, so only its factors are recorded",
        score: Some(paraphrase),
        uses_grammar: true,
        unscored_reason: Some(BERTSCORE_UNAVAILABLE),
    },
];

/// What a run manifest records about scoring.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoringInfo {
    pub scorer: String,
    /// For scorers that run code: the isolation this machine gave it and
    /// the limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Value>,
    /// For scorers that check grammar: the backend that judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grammar: Option<grammar::GrammarInfo>,
    /// Why the headline score is not given, where it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unscored_reason: Option<String>,
}

impl ScoringInfo {
    pub fn of(scorer: &str, ctx: &ScoreContext) -> Self {
        let spec = find(scorer);
        let sandbox = (scorer == "humaneval").then(|| {
            serde_json::json!({
                "isolation": sandbox::isolation(),
                "limits": sandbox::Limits::default(),
            })
        });
        Self {
            scorer: scorer.to_string(),
            sandbox,
            grammar: spec
                .filter(|s| s.uses_grammar)
                .map(|_| ctx.grammar.backend.info()),
            unscored_reason: spec.and_then(|s| s.unscored_reason).map(String::from),
        }
    }
}

pub fn find(name: &str) -> Option<&'static ScorerSpec> {
    SCORERS.iter().find(|s| s.name == name)
}

#[derive(Debug, thiserror::Error)]
pub enum ScoreFileError {
    #[error("{path}: {cause}")]
    Io {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} line {line}: {detail}")]
    Row {
        path: std::path::PathBuf,
        line: usize,
        detail: String,
    },
    #[error("suite {suite} uses scorer `none`: its outputs are not scored here")]
    Unscored { suite: String },
}

/// Mean scores (×100) of one group of outputs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupScores {
    pub method: String,
    pub category: String,
    pub samples: usize,
    /// Score name to mean × 100.
    pub means: BTreeMap<String, f64>,
}

/// Scores saved outputs against a suite without loading any model. Each
/// line of `outputs` is a JSON object with the sample's id (`sample_id` or
/// `id`) and its text (`output_text` or `output`), and optionally a
/// `method`; a run's `samples.jsonl` is such a file. Groups are (method,
/// category), plus an `all` category per method.
pub fn score_outputs(
    suite: &crate::suite::ResolvedSuite,
    outputs: &std::path::Path,
    ctx: &ScoreContext,
) -> Result<Vec<GroupScores>, ScoreFileError> {
    let spec = find(&suite.def.scorer).expect("suite scorers are validated");
    let f = spec.score.ok_or_else(|| ScoreFileError::Unscored {
        suite: suite.def.name.clone(),
    })?;
    let text = std::fs::read_to_string(outputs).map_err(|source| ScoreFileError::Io {
        path: outputs.to_path_buf(),
        cause: source,
    })?;
    let by_id: std::collections::HashMap<&str, &crate::suite::Sample> =
        suite.samples.iter().map(|s| (s.id.as_str(), s)).collect();
    // (method, category) -> (count, sums)
    let mut groups: BTreeMap<(String, String), (usize, BTreeMap<String, f64>)> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = |detail: String| ScoreFileError::Row {
            path: outputs.to_path_buf(),
            line: i + 1,
            detail,
        };
        let v: Value =
            serde_json::from_str(line).map_err(|e| row(format!("not valid JSON: {e}")))?;
        let field = |names: &[&str]| -> Result<String, ScoreFileError> {
            names
                .iter()
                .find_map(|n| match v.get(*n) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Number(x)) => Some(x.to_string()),
                    _ => None,
                })
                .ok_or_else(|| {
                    row(format!(
                        "expected a string field `{}`",
                        names.join("` or `")
                    ))
                })
        };
        let id = field(&["sample_id", "id"])?;
        let output = field(&["output_text", "output"])?;
        let method = field(&["method"]).unwrap_or_else(|_| "-".into());
        let sample = by_id.get(id.as_str()).ok_or_else(|| {
            row(format!(
                "sample id \"{id}\" is not in suite {} ({})",
                suite.def.name, suite.data_file
            ))
        })?;
        let reference = sample
            .reference
            .as_ref()
            .ok_or_else(|| row(format!("sample \"{id}\" has no reference in the suite")))?;
        let scores =
            f(ctx, &output, reference).map_err(|e| row(format!("sample \"{id}\": {e}")))?;
        let category = sample.category.clone().unwrap_or_else(|| "-".into());
        for cat in [category, "all".to_string()] {
            let g = groups.entry((method.clone(), cat)).or_default();
            g.0 += 1;
            for (k, x) in &scores {
                *g.1.entry(k.clone()).or_default() += x;
            }
        }
    }
    Ok(groups
        .into_iter()
        .map(|((method, category), (n, sums))| GroupScores {
            method,
            category,
            samples: n,
            means: sums
                .into_iter()
                .map(|(k, s)| (k, 100.0 * s / n as f64))
                .collect(),
        })
        .collect())
}

/// A Markdown table of group scores.
pub fn markdown(suite: &str, scorer: &str, groups: &[GroupScores]) -> String {
    let keys: std::collections::BTreeSet<&String> =
        groups.iter().flat_map(|g| g.means.keys()).collect();
    let mut s = format!(
        "suite {suite}, scorer {scorer} (mean × 100)\n\n| method | category | samples | {} |\n|---|---|---|{}\n",
        keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" | "),
        "---|".repeat(keys.len())
    );
    for g in groups {
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            g.method,
            g.category,
            g.samples,
            keys.iter()
                .map(|k| g
                    .means
                    .get(*k)
                    .map(|x| format!("{x:.1}"))
                    .unwrap_or_else(|| "–".into()))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_findable() {
        for (i, s) in SCORERS.iter().enumerate() {
            assert!(SCORERS[..i].iter().all(|t| t.name != s.name), "{}", s.name);
            assert_eq!(find(s.name).unwrap().name, s.name);
        }
        assert!(find("bleu").is_none());
    }

    #[test]
    fn bad_references_are_errors_not_zeros() {
        let f = find("list_shuffle_score").unwrap().score.unwrap();
        let ctx = ScoreContext::default();
        let f = |o: &str, r: &Value| f(&ctx, o, r);
        let e = f("[A, B]", &serde_json::json!(3)).unwrap_err();
        assert!(e.to_string().contains("`input` list"), "{e}");
        let ok = f("[\"B\", \"A\"]", &serde_json::json!({"input": ["A", "B"]})).unwrap();
        assert_eq!(ok["score"], 1.0);
        assert_eq!(ok["score_strict"], 1.0);
    }
}
