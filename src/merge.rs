//! `pdbench merge SHARD...`: joins the shards of a run (`run --shard K/N`)
//! into one run folder. Shards must agree on everything that decides a
//! sample (commit, models by sha256, suite, resolved method configs, seed,
//! budget, device), be complete, and cover 1..N exactly once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::results::{Manifest, RunDir, RunStatus, SampleRecord};

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Results(#[from] crate::results::ResultsError),
    #[error("{path}: not a shard (its manifest has no `shard`; it was not run with --shard K/N)")]
    NotAShard { path: PathBuf },
    #[error("the shards disagree: {0}")]
    Disagree(String),
    #[error("{path}: shard {shard} is {status:?}, not complete; finish it with `pdbench run --resume {path}`")]
    Incomplete {
        path: PathBuf,
        shard: String,
        status: RunStatus,
    },
    #[error("{path}: sample {key} is in more than one shard")]
    Duplicate { path: PathBuf, key: String },
    #[error("--out {path}: already holds a run")]
    OutExists { path: PathBuf },
    #[error("{path}: shard {shard} is marked complete but its samples.jsonl holds {done} of its {expected} work items{torn}; re-run the shard (`pdbench run --resume` does not redo a run marked complete)")]
    LostSamples {
        path: PathBuf,
        shard: String,
        done: usize,
        expected: usize,
        torn: &'static str,
    },
}

/// What must be equal across shards, as (field, JSON value).
fn identity(m: &Manifest) -> Vec<(&'static str, serde_json::Value)> {
    fn j<T: serde::Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
    }
    vec![
        ("pdbench_version", j(&m.pdbench_version)),
        ("git", j(&m.git)),
        // Paths may differ between machines; contents may not.
        (
            "suite",
            j(&(
                &m.suite.def,
                &m.suite.file_sha256,
                &m.suite.data_sha256,
                &m.suite.task_config_sha256,
            )),
        ),
        ("methods", j(&m.methods)),
        ("models", serde_json::Value::from(digests(&j(&m.models)))),
        ("device", j(&m.device)),
        ("dtype", j(&m.dtype)),
        ("seed", j(&m.seed)),
        ("warmup", j(&m.warmup)),
        ("repeats", j(&m.repeats)),
        ("limit", j(&m.limit)),
        ("max_new_tokens", j(&m.max_new_tokens)),
        ("order", j(&m.order)),
    ]
}

/// What differs between two JSON values, for an error message: the
/// differing keys of objects (`threads: 2 vs 1`), else both values, cut to
/// a readable length.
fn difference(a: &serde_json::Value, b: &serde_json::Value) -> String {
    fn brief(v: &serde_json::Value) -> String {
        let s = v.to_string();
        if s.chars().count() > 120 {
            format!("{}…", s.chars().take(120).collect::<String>())
        } else {
            s
        }
    }
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .filter(|k| x.get(*k) != y.get(*k))
                .map(|k| {
                    let v = |o: &serde_json::Map<String, serde_json::Value>| {
                        o.get(k).map_or("absent".to_string(), brief)
                    };
                    format!("{k}: {} vs {}", v(x), v(y))
                })
                .collect::<Vec<_>>()
                .join("; ")
        }
        _ => format!("{} vs {}", brief(a), brief(b)),
    }
}

/// Every `sha256` in a JSON value, in order: what identifies the models
/// whatever their paths.
fn digests(v: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    match v {
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                if k == "sha256" {
                    out.push(x.clone());
                } else {
                    out.extend(digests(x));
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| out.extend(digests(x))),
        _ => {}
    }
    out
}

/// Checks that the shards form one run: the same identity, one shard
/// count, each index once, all complete.
pub fn check(shards: &[(PathBuf, Manifest)]) -> Result<usize, MergeError> {
    let Some((first_path, first)) = shards.first() else {
        return Err(MergeError::Disagree("no shards given".into()));
    };
    let mut seen = BTreeSet::new();
    let mut count = None;
    for (path, m) in shards {
        let sh = m
            .shard
            .ok_or_else(|| MergeError::NotAShard { path: path.clone() })?;
        match count {
            None => count = Some(sh.count),
            Some(c) if c != sh.count => {
                return Err(MergeError::Disagree(format!(
                    "{} is shard {sh} but {} is one of {c}",
                    path.display(),
                    first_path.display()
                )))
            }
            _ => {}
        }
        if !seen.insert(sh.index) {
            return Err(MergeError::Disagree(format!(
                "shard {sh} is given twice ({})",
                path.display()
            )));
        }
        for ((field, a), (_, b)) in identity(first).iter().zip(identity(m)) {
            if *a != b {
                return Err(MergeError::Disagree(format!(
                    "field `{field}` of {} differs from {}'s ({})",
                    path.display(),
                    first_path.display(),
                    difference(&b, a)
                )));
            }
        }
        if m.status != RunStatus::Complete {
            return Err(MergeError::Incomplete {
                path: path.clone(),
                shard: sh.to_string(),
                status: m.status.clone(),
            });
        }
    }
    let count = count.expect("at least one shard");
    let missing: Vec<String> = (0..count)
        .filter(|i| !seen.contains(i))
        .map(|i| format!("{}/{count}", i + 1))
        .collect();
    if !missing.is_empty() {
        return Err(MergeError::Disagree(format!(
            "shard(s) {} missing",
            missing.join(", ")
        )));
    }
    Ok(count)
}

/// Merges shard folders into `out`: one manifest (no shard) and every
/// sample, method by method in the run's order.
pub fn merge(
    shard_dirs: &[PathBuf],
    out: &Path,
    argv: Vec<String>,
    now: u64,
) -> Result<Manifest, MergeError> {
    let mut shards = Vec::new();
    for p in shard_dirs {
        let d = RunDir::open(p)?;
        shards.push((p.clone(), d.read_manifest()?));
    }
    let count = check(&shards)?;
    if out.join(crate::results::MANIFEST).exists() {
        return Err(MergeError::OutExists {
            path: out.to_path_buf(),
        });
    }
    let mut samples: Vec<SampleRecord> = Vec::new();
    let mut keys = BTreeSet::new();
    for (p, m) in &shards {
        let (rows, torn) = RunDir::open(p)?.read_samples()?;
        // A shard that lost records (a torn last line, a file cut short)
        // must not merge into a run marked complete.
        let (done, expected) = (crate::results::work_items_done(&rows), m.work_items());
        if done < expected || torn {
            return Err(MergeError::LostSamples {
                path: p.clone(),
                shard: m.shard.map(|s| s.to_string()).unwrap_or_default(),
                done,
                expected,
                torn: if torn {
                    " and ends in a torn line (a crash mid-write)"
                } else {
                    ""
                },
            });
        }
        for r in rows {
            if !keys.insert(r.key()) {
                return Err(MergeError::Duplicate {
                    path: p.clone(),
                    key: format!("{:?}", r.key()),
                });
            }
            samples.push(r);
        }
    }
    let mut merged = shards[0].1.clone();
    let order: Vec<String> = merged.methods.iter().map(|m| m.label.clone()).collect();
    samples.sort_by_key(|s| {
        order
            .iter()
            .position(|l| *l == s.method)
            .unwrap_or(usize::MAX)
    });
    merged.run_id = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "merged".into());
    merged.shard = None;
    merged.argv = argv;
    merged.created_unix_s = shards
        .iter()
        .map(|s| s.1.created_unix_s)
        .min()
        .unwrap_or(now);
    merged.updated_unix_s = now;
    merged.note = Some(format!(
        "merged from {count} shards: {}",
        shard_dirs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let dir = RunDir::create(out)?;
    for s in &samples {
        dir.append_sample(s)?;
    }
    dir.write_manifest(&merged)?;
    Ok(merged)
}
