//! ParallelBench tasks from the released test data: each task's rows
//! (`<group>/<task>.jsonl`) and its prompt and metric from the group's
//! `task_config.yaml`. Prompts are built as ParallelBench builds them:
//! `prompt.format(**row["input"])` with Python's semantics, then the
//! two-character sequence `\n` becomes a newline; each in-context example
//! is an earlier user turn and an assistant turn holding its answer (or
//! the answer's `example` when the answer is an object).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::pyformat;
use super::{Sample, SuiteError, Turn};

/// The hub dataset the released data comes from.
pub const HUB_DATASET: &str = "furiosa-ai/ParallelBench";

/// What pdbench reads of a task's entry in `task_config.yaml`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct TaskConfig {
    pub prompt: String,
    pub metric: String,
}

/// Where the released data lives, first match wins:
/// `$PDBENCH_PARALLELBENCH`; `../shared/parallelbench` beside the working
/// directory or beside this crate's source tree; the dataset's snapshot in
/// the hf-hub cache, downloading the task's rows and config into it when
/// the hub can be reached (and `HF_HUB_OFFLINE` is not set). Otherwise
/// the error says where the files go.
pub fn data_root(task: &str) -> Result<PathBuf, SuiteError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("PDBENCH_PARALLELBENCH") {
        // An explicit choice is the only candidate: never fall through.
        let p = PathBuf::from(p);
        return if p.is_dir() {
            Ok(p)
        } else {
            Err(SuiteError::DataUnavailable {
                what: format!("ParallelBench task {task}"),
                detail: format!(
                    "$PDBENCH_PARALLELBENCH is {}, which is not a folder",
                    p.display()
                ),
            })
        };
    }
    candidates.push(PathBuf::from("../shared/parallelbench"));
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/parallelbench"));
    let cache = crate::model::source::hub_cache();
    let repo = hf_hub::Repo::with_revision(
        HUB_DATASET.to_string(),
        hf_hub::RepoType::Dataset,
        "main".to_string(),
    );
    let (rows_file, config_file) = hub_files(task);
    if let Some(root) = cached_root(&cache, task) {
        candidates.push(root);
    }
    for c in &candidates {
        if c.join(&rows_file).is_file() {
            return Ok(c.clone());
        }
    }
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
    let mut hub_error = if offline {
        "HF_HUB_OFFLINE is set".to_string()
    } else {
        String::new()
    };
    if !offline {
        let fetched = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
            .with_progress(false)
            .with_retries(0)
            .build()
            .map_err(|e| e.to_string())
            .and_then(|api| {
                let r = api.repo(repo.clone());
                r.get(&config_file).map_err(|e| e.to_string())?;
                r.get(&rows_file).map_err(|e| e.to_string())
            });
        match fetched.map(|p| snapshot_root(&p, task)) {
            Ok(Some(root)) => return Ok(root),
            Ok(None) => hub_error = "the hub returned an unexpected path".into(),
            Err(e) => hub_error = format!("the hub could not be reached ({e})"),
        }
    }
    Err(SuiteError::DataUnavailable {
        what: format!("ParallelBench task {task}"),
        detail: format!(
            "looked in {}; {hub_error}; download the hub dataset {HUB_DATASET} (`huggingface-cli download --repo-type dataset {HUB_DATASET}`) into the hf-hub cache at {}, or point $PDBENCH_PARALLELBENCH at a folder holding {task}.jsonl and its task_config.yaml",
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            cache.path().join(repo.folder_name()).display()
        ),
    })
}

/// The task's rows file and its group's config file, as paths in the
/// dataset repository.
fn hub_files(task: &str) -> (String, String) {
    let (rows, config) = task_files(Path::new(""), task);
    (
        rows.to_string_lossy().into_owned(),
        config.to_string_lossy().into_owned(),
    )
}

/// The snapshot folder that holds `<group>/<task>.jsonl` at `rows`.
fn snapshot_root(rows: &Path, task: &str) -> Option<PathBuf> {
    let depth = task.matches('/').count() + 1;
    rows.ancestors().nth(depth).map(Path::to_path_buf)
}

/// The snapshot of the hub dataset in an hf-hub cache that holds the task's
/// rows, if any.
pub fn cached_root(cache: &hf_hub::Cache, task: &str) -> Option<PathBuf> {
    let repo = hf_hub::Repo::with_revision(
        HUB_DATASET.to_string(),
        hf_hub::RepoType::Dataset,
        "main".to_string(),
    );
    let rows = cache.repo(repo).get(&hub_files(task).0)?;
    snapshot_root(&rows, task)
}

/// The task's rows and its group's config file.
pub fn task_files(root: &Path, task: &str) -> (PathBuf, PathBuf) {
    let data = root.join(format!("{task}.jsonl"));
    let group = task.split('/').next().unwrap_or(task);
    (data, root.join(group).join("task_config.yaml"))
}

/// The task's entry in `task_config.yaml`.
pub fn read_task_config(path: &Path, task: &str) -> Result<TaskConfig, SuiteError> {
    let text = std::fs::read_to_string(path).map_err(|source| SuiteError::Io {
        path: path.to_path_buf(),
        cause: source,
    })?;
    let all: serde_json::Map<String, Value> =
        serde_norway::from_str(&text).map_err(|e| SuiteError::Parse {
            path: path.to_path_buf(),
            detail: format!("not a YAML mapping of tasks: {e}"),
        })?;
    let entry = all.get(task).ok_or_else(|| SuiteError::Field {
        path: path.to_path_buf(),
        field: task.to_string(),
        detail: format!(
            "no such task; the file defines {}",
            all.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    })?;
    serde_json::from_value(entry.clone()).map_err(|e| SuiteError::Field {
        path: path.to_path_buf(),
        field: task.to_string(),
        detail: format!("expected `prompt` and `metric` strings: {e}"),
    })
}

fn render(template: &str, input: &Value) -> Result<String, String> {
    let fields = input
        .as_object()
        .ok_or_else(|| "`input` is not an object".to_string())?;
    pyformat::format(template, fields)
        .map(|s| s.replace("\\n", "\n"))
        .map_err(|e| e.to_string())
}

/// One row as a sample: the prompt, the in-context turns, and the answer
/// as the reference. Rows are numbered from 0 in file order.
pub fn sample_from_row(
    task: &str,
    cfg: &TaskConfig,
    row: &Value,
    index: usize,
    with_icl: bool,
    row_err: &dyn Fn(String) -> SuiteError,
) -> Result<Sample, SuiteError> {
    let input = row
        .get("input")
        .ok_or_else(|| row_err("field `input` is missing".into()))?;
    let answer = row
        .get("answer")
        .ok_or_else(|| row_err("field `answer` is missing".into()))?;
    let prompt = render(&cfg.prompt, input).map_err(|e| row_err(format!("`input`: {e}")))?;
    let mut context = Vec::new();
    if with_icl {
        if let Some(examples) = input.get("icl_examples") {
            let examples = examples
                .as_array()
                .ok_or_else(|| row_err("`input.icl_examples` is not a list".into()))?;
            for (k, ex) in examples.iter().enumerate() {
                let at = |d: String| row_err(format!("`input.icl_examples[{k}]`: {d}"));
                let user = render(
                    &cfg.prompt,
                    ex.get("input").ok_or_else(|| at("no `input`".into()))?,
                )
                .map_err(at)?;
                let assistant = match ex.get("answer") {
                    Some(Value::String(s)) => s.clone(),
                    Some(a) => a
                        .get("example")
                        .and_then(Value::as_str)
                        .ok_or_else(|| at("the answer has no `example` string".into()))?
                        .to_string(),
                    None => return Err(at("no `answer`".into())),
                };
                context.push(Turn::user(&user));
                context.push(Turn::assistant(&assistant));
            }
        }
    }
    Ok(Sample {
        id: index.to_string(),
        category: Some(task.to_string()),
        prompt,
        context,
        followups: Vec::new(),
        reference: Some(answer.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot of the hub dataset in an hf-hub cache is found by the
    /// same layout that `huggingface-cli download` leaves.
    #[test]
    fn hub_cache_snapshots_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let cache = hf_hub::Cache::new(dir.path().to_path_buf());
        assert_eq!(cached_root(&cache, "waiting_line/copy"), None);
        let repo = dir.path().join("datasets--furiosa-ai--ParallelBench");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
        let snap = repo.join("snapshots/0123abcd");
        std::fs::create_dir_all(snap.join("waiting_line")).unwrap();
        std::fs::write(snap.join("waiting_line/copy.jsonl"), "{}\n").unwrap();
        assert_eq!(cached_root(&cache, "waiting_line/copy"), Some(snap.clone()));
        assert_eq!(cached_root(&cache, "waiting_line/sort"), None);
    }
    use serde_json::json;

    #[test]
    fn rows_become_prompts_as_parallelbench_builds_them() {
        let cfg = TaskConfig {
            prompt: "A new person \"{word}\" joins at {index}:\\n{context}\nAnswer only.\n".into(),
            metric: "list_match_score".into(),
        };
        let row = json!({
            "input": {
                "context": "[\"A\", \"B\"]", "word": "W", "index": 1,
                "icl_examples": [
                    {"input": {"context": "[\"C\"]", "word": "V", "index": 0},
                     "answer": "[\"V\", \"C\"]"},
                    {"input": {"context": "[\"D\"]", "word": "U", "index": 1},
                     "answer": {"input": ["D"], "example": "[\"D\", \"U\"]"}}
                ]
            },
            "answer": "[\"A\", \"W\", \"B\"]"
        });
        let err = |d: String| SuiteError::Prompt {
            suite: "t".into(),
            detail: d,
        };
        let s = sample_from_row("waiting_line/insert_index", &cfg, &row, 7, true, &err).unwrap();
        assert_eq!(s.id, "7");
        assert_eq!(s.category.as_deref(), Some("waiting_line/insert_index"));
        assert_eq!(
            s.prompt,
            "A new person \"W\" joins at 1:\n[\"A\", \"B\"]\nAnswer only.\n"
        );
        assert_eq!(
            s.context,
            vec![
                Turn::user("A new person \"V\" joins at 0:\n[\"C\"]\nAnswer only.\n"),
                Turn::assistant("[\"V\", \"C\"]"),
                Turn::user("A new person \"U\" joins at 1:\n[\"D\"]\nAnswer only.\n"),
                Turn::assistant("[\"D\", \"U\"]"),
            ]
        );
        assert_eq!(s.reference, Some(json!("[\"A\", \"W\", \"B\"]")));
        let s = sample_from_row("t", &cfg, &row, 0, false, &err).unwrap();
        assert!(s.context.is_empty());

        let bad = json!({"input": {"context": "x"}, "answer": "y"});
        let e = sample_from_row("t", &cfg, &bad, 0, true, &err).unwrap_err();
        assert!(e.to_string().contains("`word`"), "{e}");
    }
}
