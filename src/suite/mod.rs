//! Suites: TOML files in `suites/` that say where prompts come from and how
//! they are turned into model input. Behaviour (templates, scorers) is Rust,
//! referenced by name.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod parallelbench;
pub mod pyformat;

use crate::fetch;
use crate::model::chat::{self, Message};

/// One earlier turn of a conversation (in-context examples).
pub use crate::model::chat::Message as Turn;
use crate::model::TextTokenizer;
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSource {
    /// A JSONL file (optionally .gz), relative to the suite file.
    Jsonl(String),
    /// A `pdbench fetch` data set.
    Fetch(String),
    /// A ParallelBench task (`group/task`, e.g. `waiting_line/copy`) from
    /// the released test data; see [`parallelbench::data_root`].
    Parallelbench(String),
    /// A JSONL file the user passes with `--data`; the text says which.
    User(String),
    /// Rows made by a generator, by name, with its parameters (see
    /// [`GENERATORS`]).
    Generator(GeneratorSpec),
}

/// `source = { generator = { name = "toy", split = "test", ... } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorSpec {
    pub name: String,
    /// The generator's own parameters; it checks them.
    #[serde(flatten)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

pub struct GeneratorEntry {
    pub name: &'static str,
    pub description: &'static str,
    /// Parameters to JSONL rows (`id`, `task`, `prompt`, `reference`).
    pub generate: fn(&serde_json::Value) -> Result<Vec<serde_json::Value>, String>,
}

fn toy_rows(params: &serde_json::Value) -> Result<Vec<serde_json::Value>, String> {
    let p: crate::toy::ToyParams =
        serde_json::from_value(params.clone()).map_err(|e| format!("parameters: {e}"))?;
    let items = crate::toy::generate(&p).map_err(|e| e.to_string())?;
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, it)| {
            serde_json::json!({"id": format!("{}-{i}", it.task), "task": it.task,
                               "prompt": it.prompt, "reference": it.reference})
        })
        .collect())
}

/// Every generator, by name.
pub static GENERATORS: &[GeneratorEntry] = &[GeneratorEntry {
    name: "toy",
    description: "pdbench's toy tasks (waiting line, sudoku, latin squares, digits, additions): split, per_task, seed, tasks, list_len",
    generate: toy_rows,
}];

/// Which user turns of a row are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Turns {
    /// The first (or only) one.
    #[default]
    First,
    /// Every turn of a list-valued prompt field, each answered in turn with
    /// the model's earlier answers in the conversation (MT-Bench,
    /// Spec-Bench).
    All,
}

/// How a suite uses in-context examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Icl {
    /// None are sent.
    #[default]
    None,
    /// Each example is an earlier user turn and an assistant turn with its
    /// answer (ParallelBench's `input.icl_examples`).
    EarlierTurn,
}

/// A suite file, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteDef {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    pub source: DataSource,
    /// The field holding a sample's id; `None` numbers the rows.
    #[serde(default)]
    pub id_field: Option<String>,
    /// The field holding the prompt text (JSONL and fetched sources).
    #[serde(default)]
    pub prompt_field: Option<String>,
    #[serde(default)]
    pub category_field: Option<String>,
    /// The field holding each sample's reference for the scorer; `*` is
    /// the whole row.
    #[serde(default)]
    pub reference_field: Option<String>,
    /// How a row becomes the user message (see [`PROMPT_TEMPLATES`]).
    #[serde(default = "default_prompt_template")]
    pub prompt_template: String,
    /// `model`: the model's own chat template; `none`: the raw text.
    #[serde(default = "default_chat_template")]
    pub chat_template: String,
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// In-context examples.
    #[serde(default)]
    pub icl: Icl,
    /// Which user turns are decoded.
    #[serde(default)]
    pub turns: Turns,
    pub max_new_tokens: usize,
    #[serde(default)]
    pub stop: Vec<String>,
    /// The scorer, by name (see [`crate::score::SCORERS`]).
    #[serde(default = "default_scorer")]
    pub scorer: String,
    /// Method parameters for this suite's scale, by method id (DiffuSpec's
    /// draft lengths for short answers); values the user sets win, and the
    /// manifest records the result with each method.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub method_params: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
}

fn default_prompt_template() -> String {
    "plain".into()
}
fn default_chat_template() -> String {
    "model".into()
}
fn default_scorer() -> String {
    "none".into()
}

/// Prompt templates by name: a row to the user message.
pub static PROMPT_TEMPLATES: &[(&str, &str)] = &[
    ("plain", "the prompt field as it is"),
    (
        "parallelbench",
        "the task's prompt from task_config.yaml, formatted with the row's `input` (Python str.format)",
    ),
];

pub static CHAT_TEMPLATES: &[(&str, &str)] = &[
    (
        "model",
        "the chat template shipped with the model (GGUF metadata or tokenizer_config.json)",
    ),
    ("none", "the raw prompt text, no chat markup"),
];

#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("suite \"{name}\" not found: no file {path} (known suites: {known})")]
    NotFound {
        name: String,
        path: PathBuf,
        known: String,
    },
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{path}: field `{field}`: {detail}")]
    Field {
        path: PathBuf,
        field: String,
        detail: String,
    },
    #[error("{path} line {line}: {detail}")]
    Row {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("suite {suite} needs data set {item}, which could not be fetched: {detail}")]
    Fetch {
        suite: String,
        item: String,
        detail: String,
    },
    #[error("suite {suite}: {detail}")]
    Prompt { suite: String, detail: String },
    #[error("{what} is not available here: {detail}")]
    DataUnavailable { what: String, detail: String },
}

/// One prompt of a suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub id: String,
    pub category: Option<String>,
    /// The final user message.
    pub prompt: String,
    /// Earlier turns (in-context examples), oldest first.
    #[serde(default)]
    pub context: Vec<Turn>,
    /// Later user turns, each sent after the model's answer to the one
    /// before.
    #[serde(default)]
    pub followups: Vec<String>,
    pub reference: Option<serde_json::Value>,
}

/// A loaded suite: its definition, where it came from, and its samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedSuite {
    pub def: SuiteDef,
    pub file: String,
    pub file_sha256: String,
    pub data_file: String,
    pub data_sha256: String,
    /// A ParallelBench task's entry in its task_config.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_config: Option<parallelbench::TaskConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_config_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_config_sha256: Option<String>,
    pub n_samples: usize,
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// The folder of shipped suites: `suites/` in the working directory, else
/// the one in this crate's source tree.
pub fn suites_dir() -> PathBuf {
    let local = PathBuf::from("suites");
    if local.is_dir() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("suites")
}

/// Names of the suites in a folder and its subfolders (`group/name`).
pub fn list(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if p.is_dir() && name != "data" {
                walk(&p, &format!("{prefix}{name}/"), out);
            } else if let Some(stem) = name.strip_suffix(".toml") {
                out.push(format!("{prefix}{stem}"));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out.sort();
    out
}

/// A suite by name (a file in `suites/`) or by path.
pub fn locate(name_or_path: &str) -> Result<PathBuf, SuiteError> {
    let p = Path::new(name_or_path);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    let dir = suites_dir();
    let f = dir.join(format!("{name_or_path}.toml"));
    if f.is_file() {
        return Ok(f);
    }
    Err(SuiteError::NotFound {
        name: name_or_path.into(),
        path: f,
        known: list(&dir).join(", "),
    })
}

pub fn parse_def(path: &Path) -> Result<SuiteDef, SuiteError> {
    let text = std::fs::read_to_string(path).map_err(|source| SuiteError::Io {
        path: path.to_path_buf(),
        cause: source,
    })?;
    let def: SuiteDef = toml::from_str(&text).map_err(|e| SuiteError::Parse {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let field = |f: &str, detail: String| SuiteError::Field {
        path: path.to_path_buf(),
        field: f.into(),
        detail,
    };
    let names = |t: &[(&str, &str)]| t.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    if !PROMPT_TEMPLATES
        .iter()
        .any(|(n, _)| *n == def.prompt_template)
    {
        return Err(field(
            "prompt_template",
            format!(
                "unknown \"{}\"; expected one of {}",
                def.prompt_template,
                names(PROMPT_TEMPLATES)
            ),
        ));
    }
    if !CHAT_TEMPLATES.iter().any(|(n, _)| *n == def.chat_template)
        && chat::named_template(&def.chat_template).is_none()
    {
        return Err(field(
            "chat_template",
            format!(
                "unknown \"{}\"; expected one of {}, {}",
                def.chat_template,
                names(CHAT_TEMPLATES),
                chat::NAMED_TEMPLATES
                    .iter()
                    .map(|(n, _, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    for (id, params) in &def.method_params {
        crate::methods::MethodInstance::new(id, None, &serde_json::Value::Object(params.clone()))
            .map_err(|e| field(&format!("method_params.{id}"), e.to_string()))?;
    }
    if crate::score::find(&def.scorer).is_none() {
        let known: Vec<&str> = crate::score::SCORERS.iter().map(|s| s.name).collect();
        return Err(field(
            "scorer",
            format!(
                "unknown \"{}\"; {}expected one of {}",
                def.scorer,
                crate::util::did_you_mean(&def.scorer, &known)
                    .map(|s| format!("did you mean \"{s}\"? "))
                    .unwrap_or_default(),
                known.join(", ")
            ),
        ));
    }
    if def.scorer != "none" && def.reference_field.is_none() {
        return Err(field(
            "reference_field",
            format!(
                "scorer \"{}\" needs each sample's reference; name the field that holds it",
                def.scorer
            ),
        ));
    }
    let pb_source = matches!(def.source, DataSource::Parallelbench(_));
    let pb_template = def.prompt_template == "parallelbench";
    if pb_source != pb_template {
        return Err(field(
            "prompt_template",
            "\"parallelbench\" goes with source = { parallelbench = \"group/task\" }, and only with it".into(),
        ));
    }
    if !pb_source && def.prompt_field.is_none() {
        return Err(field(
            "prompt_field",
            "missing: name the field that holds each row's prompt".into(),
        ));
    }
    if def.max_new_tokens == 0 {
        return Err(field(
            "max_new_tokens",
            "expected a positive integer".into(),
        ));
    }
    if def.stop.iter().any(|s| s.is_empty()) {
        return Err(field("stop", "stop strings must not be empty".into()));
    }
    Ok(def)
}

/// Loads a suite and its samples, fetching its data set if needed.
pub fn load(
    name_or_path: &str,
    store: &Store,
    log: &mut dyn FnMut(&str),
) -> Result<ResolvedSuite, SuiteError> {
    load_with_data(name_or_path, None, store, log)
}

/// Loads a suite, reading its rows from `data` instead of its own source
/// when given (`pdbench run --data`).
pub fn load_with_data(
    name_or_path: &str,
    data: Option<&Path>,
    store: &Store,
    log: &mut dyn FnMut(&str),
) -> Result<ResolvedSuite, SuiteError> {
    let path = locate(name_or_path)?;
    let def = parse_def(&path)?;
    if let DataSource::Parallelbench(task) = &def.source {
        if data.is_some() {
            return Err(SuiteError::Field {
                path,
                field: "source".into(),
                detail: "a ParallelBench task reads its released data; --data does not apply (set $PDBENCH_PARALLELBENCH to read another copy)".into(),
            });
        }
        let task = task.clone();
        return load_parallelbench(path, def, &task, store);
    }
    let sha = |p: &Path| {
        store.sha256(p).map_err(|source| SuiteError::Io {
            path: p.to_path_buf(),
            cause: source,
        })
    };
    let data_path = match (&def.source, data) {
        (_, Some(d)) => {
            if !d.is_file() {
                return Err(SuiteError::Io {
                    path: d.to_path_buf(),
                    cause: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "--data: no such file",
                    ),
                });
            }
            d.to_path_buf()
        }
        (DataSource::Parallelbench(_), None) => unreachable!("handled above"),
        (DataSource::Generator(spec), None) => {
            let field = |detail: String| SuiteError::Field {
                path: path.clone(),
                field: "source.generator".into(),
                detail,
            };
            let g = GENERATORS
                .iter()
                .find(|g| g.name == spec.name)
                .ok_or_else(|| {
                    field(format!(
                        "unknown generator \"{}\"; expected one of {}",
                        spec.name,
                        GENERATORS
                            .iter()
                            .map(|g| g.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            let rows = (g.generate)(&serde_json::Value::Object(spec.params.clone()))
                .map_err(|e| field(format!("{}: {e}", spec.name)))?;
            let mut text = String::new();
            for r in &rows {
                text.push_str(&r.to_string());
                text.push('\n');
            }
            let label = PathBuf::from(format!(
                "generator:{}{}",
                spec.name,
                serde_json::Value::Object(spec.params.clone())
            ));
            let samples = samples_from_text(&def, &text, &label)?;
            let digest = {
                use sha2::Digest;
                let d = sha2::Sha256::digest(text.as_bytes());
                d.iter().map(|b| format!("{b:02x}")).collect::<String>()
            };
            return Ok(ResolvedSuite {
                file_sha256: sha(&path)?,
                data_sha256: digest,
                file: path.display().to_string(),
                data_file: label.display().to_string(),
                task_config: None,
                task_config_file: None,
                task_config_sha256: None,
                n_samples: samples.len(),
                def,
                samples,
            });
        }
        (DataSource::User(what), None) => {
            return Err(SuiteError::DataUnavailable {
                what: format!("suite {}", def.name),
                detail: format!("it reads a file you provide: pass --data PATH ({what})"),
            })
        }
        (DataSource::Jsonl(rel), None) => path.parent().unwrap_or(Path::new(".")).join(rel),
        (DataSource::Fetch(item), None) => {
            let it = fetch::lookup(item).map_err(|e| SuiteError::Field {
                path: path.clone(),
                field: "source.fetch".into(),
                detail: e.to_string(),
            })?;
            fetch::fetch(store, it, log).map_err(|e| SuiteError::Fetch {
                suite: def.name.clone(),
                item: item.clone(),
                detail: e.to_string(),
            })?
        }
    };
    let samples = read_samples(&def, &data_path)?;
    Ok(ResolvedSuite {
        file_sha256: sha(&path)?,
        data_sha256: sha(&data_path)?,
        file: path.display().to_string(),
        data_file: data_path.display().to_string(),
        task_config: None,
        task_config_file: None,
        task_config_sha256: None,
        n_samples: samples.len(),
        def,
        samples,
    })
}

fn load_parallelbench(
    path: PathBuf,
    def: SuiteDef,
    task: &str,
    store: &Store,
) -> Result<ResolvedSuite, SuiteError> {
    let root = parallelbench::data_root(task)?;
    let (data_path, config_path) = parallelbench::task_files(&root, task);
    let cfg = parallelbench::read_task_config(&config_path, task)?;
    if cfg.metric != def.scorer {
        return Err(SuiteError::Field {
            path: path.clone(),
            field: "scorer".into(),
            detail: format!(
                "\"{}\", but {} gives task {task} the metric \"{}\"",
                def.scorer,
                config_path.display(),
                cfg.metric
            ),
        });
    }
    let text = read_text(&data_path)?;
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row_err = |detail: String| SuiteError::Row {
            path: data_path.clone(),
            line: i + 1,
            detail,
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| row_err(format!("not valid JSON: {e}")))?;
        samples.push(parallelbench::sample_from_row(
            task,
            &cfg,
            &v,
            samples.len(),
            def.icl == Icl::EarlierTurn,
            &row_err,
        )?);
    }
    if samples.is_empty() {
        return Err(SuiteError::Parse {
            path: data_path,
            detail: "holds no samples".into(),
        });
    }
    let sha = |p: &Path| {
        store.sha256(p).map_err(|source| SuiteError::Io {
            path: p.to_path_buf(),
            cause: source,
        })
    };
    Ok(ResolvedSuite {
        file_sha256: sha(&path)?,
        data_sha256: sha(&data_path)?,
        task_config_sha256: Some(sha(&config_path)?),
        file: path.display().to_string(),
        data_file: data_path.display().to_string(),
        task_config_file: Some(config_path.display().to_string()),
        task_config: Some(cfg),
        n_samples: samples.len(),
        def,
        samples,
    })
}

fn read_text(path: &Path) -> Result<String, SuiteError> {
    let io = |source| SuiteError::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(f)
            .read_to_string(&mut text)
            .map_err(io)?;
    } else {
        f.read_to_string(&mut text).map_err(io)?;
    }
    Ok(text)
}

pub fn read_samples(def: &SuiteDef, path: &Path) -> Result<Vec<Sample>, SuiteError> {
    let text = read_text(path)?;
    samples_from_text(def, &text, path)
}

/// Samples from JSONL text; errors name `path` and the line.
fn samples_from_text(def: &SuiteDef, text: &str, path: &Path) -> Result<Vec<Sample>, SuiteError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let row_err = |detail: String| SuiteError::Row {
            path: path.to_path_buf(),
            line: line_no,
            detail,
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| row_err(format!("not valid JSON: {e}")))?;
        let text_field = |f: &str| -> Result<String, SuiteError> {
            match v.get(f) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                // MT-Bench style: the first of a list of turns.
                Some(serde_json::Value::Array(a)) if a.first().is_some_and(|x| x.is_string()) => {
                    Ok(a[0].as_str().unwrap_or_default().to_string())
                }
                Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                Some(other) => Err(row_err(format!(
                    "field `{f}` is {other}, expected a string"
                ))),
                None => Err(row_err(format!("field `{f}` is missing"))),
            }
        };
        let id = match &def.id_field {
            Some(f) => text_field(f)?,
            None => out.len().to_string(),
        };
        if !seen.insert(id.clone()) {
            return Err(row_err(format!("duplicate sample id \"{id}\"")));
        }
        let prompt_field = def
            .prompt_field
            .as_deref()
            .expect("validated for row sources");
        let followups = match (def.turns, v.get(prompt_field)) {
            (Turns::All, Some(serde_json::Value::Array(turns))) => turns
                .iter()
                .skip(1)
                .enumerate()
                .map(|(k, t)| {
                    t.as_str().map(String::from).ok_or_else(|| {
                        row_err(format!(
                            "field `{prompt_field}` turn {}: expected a string",
                            k + 2
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => Vec::new(),
        };
        let category = match &def.category_field {
            Some(f) => Some(text_field(f)?),
            None => None,
        };
        let reference = match def.reference_field.as_deref() {
            // The whole row (HumanEval needs its prompt, tests and entry point).
            Some("*") => Some(v.clone()),
            Some(f) => Some(
                v.get(f)
                    .cloned()
                    .ok_or_else(|| row_err(format!("field `{f}` is missing")))?,
            ),
            None => None,
        };
        out.push(Sample {
            id,
            category,
            prompt: text_field(prompt_field)?,
            context: Vec::new(),
            followups,
            reference,
        });
    }
    if out.is_empty() {
        return Err(SuiteError::Parse {
            path: path.to_path_buf(),
            detail: "holds no samples".into(),
        });
    }
    Ok(out)
}

/// The exact text sent to the model for a sample.
pub fn render_prompt(
    suite: &SuiteDef,
    sample: &Sample,
    tok: &TextTokenizer,
    model_label: &str,
) -> Result<String, SuiteError> {
    // Templates shape `sample.prompt` when the suite loads; here the turns
    // become model input.
    let user = sample.prompt.clone();
    match suite.chat_template.as_str() {
        // Raw text: earlier turns, then the prompt, a blank line apart.
        "none" => Ok(sample
            .context
            .iter()
            .map(|t| t.content.as_str())
            .chain([user.as_str()])
            .collect::<Vec<_>>()
            .join("\n\n")),
        name => {
            let template = match name {
                "model" => tok.chat_template.as_deref().ok_or_else(|| SuiteError::Prompt {
                    suite: suite.name.clone(),
                    detail: format!(
                        "asks for the model's chat template, but model {model_label} ships none; set chat_template to one of pdbench's ({}) or \"none\"",
                        chat::NAMED_TEMPLATES
                            .iter()
                            .map(|(n, _, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })?,
                other => chat::named_template(other).expect("validated when parsed"),
            };
            let mut messages = Vec::new();
            if let Some(s) = &suite.system_prompt {
                messages.push(Message::new("system", s));
            }
            messages.extend(sample.context.iter().cloned());
            messages.push(Message::user(&user));
            let tokstr = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
            chat::render(
                template,
                &messages,
                &tokstr(tok.bos_id),
                &tokstr(tok.eos_ids.first().copied()),
                true,
            )
            .map_err(|e| SuiteError::Prompt {
                suite: suite.name.clone(),
                detail: e.to_string(),
            })
        }
    }
}
