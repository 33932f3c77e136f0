//! Sweep files: a grid over method parameters and suites, expanded into
//! runs. In a `[[grid]]` entry, `method` names the registered method, and
//! every other key is one of its parameters: an array is an axis of the
//! grid, anything else a fixed value. Each suite gets one run holding every
//! configuration, so that its report draws the quality-speed curve.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("reading {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{path}: grid entry {entry} ({method}): {detail}")]
    Config {
        path: PathBuf,
        entry: usize,
        method: String,
        detail: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    pub name: String,
    /// Suite names or paths; one run each.
    pub suites: Vec<String>,
    /// Target model (default: the embedded toy model).
    #[serde(default)]
    pub model: Option<String>,
    /// Other `pdbench run` arguments every run gets (`["--draft",
    /// "toy-draft"]`).
    #[serde(default)]
    pub run_args: Vec<String>,
    pub grid: Vec<toml::Table>,
}

/// One configuration of the grid: a label unique in the sweep, the method
/// id and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub label: String,
    pub method: String,
    pub params: toml::Table,
}

fn short(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The cartesian product of one grid entry's axes, in file order (the
/// last axis varies fastest).
fn expand_entry(entry: &toml::Table) -> Result<(String, Vec<toml::Table>), String> {
    let method = match entry.get("method") {
        Some(toml::Value::String(m)) => m.clone(),
        _ => return Err("field `method`: expected a method id string".into()),
    };
    let mut fixed = toml::Table::new();
    let mut axes: Vec<(String, Vec<toml::Value>)> = Vec::new();
    for (k, v) in entry {
        if k == "method" {
            continue;
        }
        match v {
            toml::Value::Array(values) => {
                if values.is_empty() {
                    return Err(format!("field `{k}`: an axis needs at least one value"));
                }
                axes.push((k.clone(), values.clone()));
            }
            other => {
                fixed.insert(k.clone(), other.clone());
            }
        }
    }
    let mut out = vec![fixed];
    for (k, values) in &axes {
        out = out
            .into_iter()
            .flat_map(|t| {
                values.iter().map(move |v| {
                    let mut t = t.clone();
                    t.insert(k.clone(), v.clone());
                    t
                })
            })
            .collect();
    }
    Ok((method, out))
}

/// Every configuration of the sweep, checked against its method's params.
pub fn expand(path: &Path, f: &SweepFile) -> Result<Vec<Config>, SweepError> {
    let mut out: Vec<Config> = Vec::new();
    for (i, entry) in f.grid.iter().enumerate() {
        let err = |method: &str, detail: String| SweepError::Config {
            path: path.to_path_buf(),
            entry: i + 1,
            method: method.to_string(),
            detail,
        };
        let (method, tables) = expand_entry(entry).map_err(|d| err("?", d))?;
        let axes: Vec<&String> = entry
            .iter()
            .filter(|(_, v)| v.is_array())
            .map(|(k, _)| k)
            .collect();
        for params in tables {
            let json = serde_json::to_value(&params).map_err(|e| err(&method, e.to_string()))?;
            crate::methods::MethodInstance::new(&method, None, &json)
                .map_err(|e| err(&method, e.to_string()))?;
            let mut label = method.clone();
            if !axes.is_empty() {
                let parts: Vec<String> = axes
                    .iter()
                    .map(|k| format!("{k}={}", short(&params[k.as_str()])))
                    .collect();
                label = format!("{method}[{}]", parts.join(","));
            }
            // Two entries may give the same values: number them apart.
            let base = label.clone();
            let mut n = 2;
            while out.iter().any(|c| c.label == label) {
                label = format!("{base}#{n}");
                n += 1;
            }
            out.push(Config {
                label,
                method: method.clone(),
                params,
            });
        }
    }
    Ok(out)
}

pub fn load(path: &Path) -> Result<(SweepFile, Vec<Config>), SweepError> {
    let text = std::fs::read_to_string(path).map_err(|source| SweepError::Io {
        path: path.to_path_buf(),
        cause: source,
    })?;
    let f: SweepFile = toml::from_str(&text).map_err(|e| SweepError::Parse {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    if f.suites.is_empty() || f.grid.is_empty() {
        return Err(SweepError::Parse {
            path: path.to_path_buf(),
            detail: "expected at least one suite in `suites` and one `[[grid]]` entry".into(),
        });
    }
    let configs = expand(path, &f)?;
    Ok((f, configs))
}

/// The methods file of the sweep's configurations (`--methods-file`).
pub fn methods_toml(configs: &[Config]) -> String {
    let mut doc = toml::Table::new();
    for c in configs {
        let mut t = c.params.clone();
        t.insert("method".into(), toml::Value::String(c.method.clone()));
        doc.insert(c.label.clone(), toml::Value::Table(t));
    }
    toml::to_string(&doc).expect("a table serialises")
}

/// A run id for a suite of the sweep (path characters replaced).
pub fn run_id(sweep: &str, suite: &str) -> String {
    let stem = Path::new(suite)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| suite.to_string());
    let clean: String = format!(
        "{sweep}-{}",
        if suite.contains('/') { suite } else { &stem }
    )
    .chars()
    .map(|c| {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            c
        } else {
            '-'
        }
    })
    .collect();
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_axes_and_labels_name_their_values() {
        let f: SweepFile = toml::from_str(
            r#"
            name = "s"
            suites = ["toy"]
            [[grid]]
            method = "dllm"
            strategy = "threshold"
            threshold = [0.7, 0.9]
            [[grid]]
            method = "sps"
            draft_len = [2, 4]
            temperature = [0.0, 1.0]
            [[grid]]
            method = "ar"
            "#,
        )
        .unwrap();
        let c = expand(Path::new("s.toml"), &f).unwrap();
        let labels: Vec<&str> = c.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "dllm[threshold=0.7]",
                "dllm[threshold=0.9]",
                "sps[draft_len=2,temperature=0.0]",
                "sps[draft_len=2,temperature=1.0]",
                "sps[draft_len=4,temperature=0.0]",
                "sps[draft_len=4,temperature=1.0]",
                "ar"
            ]
        );
        assert_eq!(c[1].params["strategy"].as_str(), Some("threshold"));
        let text = methods_toml(&c);
        let back: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(back.len(), 7);
    }

    #[test]
    fn a_bad_value_names_the_entry_and_field() {
        let f: SweepFile = toml::from_str(
            r#"
            name = "s"
            suites = ["toy"]
            [[grid]]
            method = "ar"
            [[grid]]
            method = "dllm"
            tokens_per_step = [2, 0]
            "#,
        )
        .unwrap();
        let e = expand(Path::new("s.toml"), &f).unwrap_err().to_string();
        assert!(
            e.contains("grid entry 2") && e.contains("tokens_per_step"),
            "{e}"
        );
    }

    #[test]
    fn run_ids_are_path_safe() {
        assert_eq!(run_id("sw", "toy"), "sw-toy");
        assert_eq!(
            run_id("sw", "parallelbench/waiting_line/copy"),
            "sw-parallelbench-waiting_line-copy"
        );
    }
}
