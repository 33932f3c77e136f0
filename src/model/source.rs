//! Resolving `--model SPEC` to files on disk: a fetch-registry name, a
//! local file or folder, or a hub id through hf-hub and its cache.

use std::path::{Path, PathBuf};

use crate::fetch;
use crate::store::Store;

use super::ModelError;

/// The files a model is made of.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelFiles {
    Gguf {
        file: PathBuf,
        /// A tokenizer.json beside it, preferred over the embedded vocabulary.
        tokenizer: Option<PathBuf>,
    },
    HfDir {
        dir: PathBuf,
        config: PathBuf,
        weights: Vec<PathBuf>,
        tokenizer: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedModel {
    /// What the user asked for.
    pub spec: String,
    /// A short display name.
    pub label: String,
    /// How it was found (registry, local, hub cache).
    pub origin: String,
    pub files: ModelFiles,
}

/// Whether resolving may download a registry model that is not present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchPolicy {
    Auto,
    Never,
}

pub fn resolve(
    spec: &str,
    store: &Store,
    policy: FetchPolicy,
    log: &mut dyn FnMut(&str),
) -> Result<ResolvedModel, ModelError> {
    let path = Path::new(spec);
    if path.exists() {
        let files = local_files(path)?;
        return Ok(ResolvedModel {
            spec: spec.into(),
            label: label_of(path),
            origin: "local".into(),
            files,
        });
    }
    if let Some(dir) = zoo_model(spec) {
        let files = local_files(&dir)?;
        return Ok(ResolvedModel {
            spec: spec.into(),
            label: spec.into(),
            origin: format!("pdbench zoo ({})", dir.display()),
            files,
        });
    }
    if let Some(item) = fetch::find(spec) {
        if item.kind == fetch::ItemKind::Model {
            let file = match fetch::present(store, item) {
                Some(p) => p,
                None if policy == FetchPolicy::Auto => {
                    log(&format!("{} is not in the store; fetching it", item.name));
                    fetch::fetch(store, item, log).map_err(|e| ModelError::Fetch(e.to_string()))?
                }
                None => {
                    let path = fetch::target_path(store, item);
                    if path.is_file() {
                        return Err(ModelError::StoreMismatch {
                            name: item.name.into(),
                            got: store
                                .sha256(&path)
                                .unwrap_or_else(|e| format!("an unreadable file ({e})")),
                            expected: item.sha256.into(),
                            path,
                        });
                    }
                    return Err(ModelError::NotFetched {
                        name: item.name.into(),
                        path,
                    });
                }
            };
            return Ok(ResolvedModel {
                spec: spec.into(),
                label: item.name.into(),
                origin: format!("pdbench fetch {}", item.name),
                files: ModelFiles::Gguf {
                    file,
                    tokenizer: None,
                },
            });
        }
    }
    if let Some(hub) = HubId::parse(spec) {
        return resolve_hub(spec, &hub);
    }
    let zoo = zoo_names();
    let names: Vec<&str> = fetch::ITEMS
        .iter()
        .filter(|i| i.kind == fetch::ItemKind::Model)
        .map(|i| i.name)
        .chain(zoo.iter().map(String::as_str))
        .collect();
    Err(ModelError::NotFound {
        spec: spec.into(),
        hint: crate::util::did_you_mean(spec, &names)
            .map(|s| format!("did you mean \"{s}\"? "))
            .unwrap_or_default(),
        known: names.join(", "),
    })
}

/// The folder of pdbench's own trained models: `models/toy/` in the
/// working directory, else the one in this crate's source tree.
pub fn zoo_dir() -> PathBuf {
    let local = PathBuf::from("models/toy");
    if local.is_dir() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/toy")
}

/// A zoo model by name (`toy-target`): a folder of [`zoo_dir`] with a
/// config.json.
pub fn zoo_model(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains(['/', '\\', '.']) {
        return None;
    }
    let dir = zoo_dir().join(name);
    dir.join("config.json").is_file().then_some(dir)
}

/// Names of the zoo's models.
pub fn zoo_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(zoo_dir())
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("config.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn label_of(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| path.display().to_string());
    name.strip_suffix(".gguf").map(String::from).unwrap_or(name)
}

/// A local `.gguf` file, or a folder in the hub layout (or holding one GGUF).
pub fn local_files(path: &Path) -> Result<ModelFiles, ModelError> {
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "gguf") {
            let tok = path.with_file_name("tokenizer.json");
            return Ok(ModelFiles::Gguf {
                file: path.to_path_buf(),
                tokenizer: tok.is_file().then_some(tok),
            });
        }
        if path.extension().is_some_and(|e| e == "safetensors") {
            if let Some(dir) = path.parent() {
                return hf_dir(dir);
            }
        }
        return Err(ModelError::UnknownFormat {
            path: path.to_path_buf(),
        });
    }
    if path.join("config.json").is_file() {
        return hf_dir(path);
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| ModelError::io(path, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => local_files(one),
        [] => Err(ModelError::UnknownFormat {
            path: path.to_path_buf(),
        }),
        many => Err(ModelError::Ambiguous {
            path: path.to_path_buf(),
            candidates: many.iter().map(|p| p.display().to_string()).collect(),
        }),
    }
}

/// config.json + model.safetensors (or a sharded index) + tokenizer.json.
fn hf_dir(dir: &Path) -> Result<ModelFiles, ModelError> {
    let config = dir.join("config.json");
    if !config.is_file() {
        return Err(ModelError::MissingFile {
            path: config,
            what: "the model's config.json".into(),
        });
    }
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let weights = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        shards_from_index(&index)?
    } else if dir.join("pytorch_model.bin").is_file() {
        return Err(ModelError::UnknownFormat {
            path: dir.join("pytorch_model.bin"),
        });
    } else {
        return Err(ModelError::MissingFile {
            path: single,
            what: "weights (model.safetensors or model.safetensors.index.json)".into(),
        });
    };
    let tokenizer = dir.join("tokenizer.json");
    if !tokenizer.is_file() {
        return Err(ModelError::MissingFile {
            path: tokenizer,
            what: "the tokenizer (tokenizer.json)".into(),
        });
    }
    Ok(ModelFiles::HfDir {
        dir: dir.to_path_buf(),
        config,
        weights,
        tokenizer,
    })
}

fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Corrupt {
        path: index.to_path_buf(),
        detail: format!("not JSON: {e}"),
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::BadConfig {
            path: index.to_path_buf(),
            field: "weight_map".into(),
            expected: "an object from tensor names to shard files".into(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    files.sort();
    files.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for f in files {
        let p = dir.join(&f);
        if !p.is_file() {
            return Err(ModelError::MissingFile {
                path: p,
                what: format!("shard {f} named in {}", index.display()),
            });
        }
        out.push(p);
    }
    Ok(out)
}

/// `org/name`, optionally `@revision` and `:file.gguf`.
#[derive(Debug, Clone, PartialEq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
    pub file: Option<String>,
}

impl HubId {
    pub fn parse(spec: &str) -> Option<Self> {
        let (rest, file) = match spec.split_once(':') {
            Some((r, f)) if f.ends_with(".gguf") => (r, Some(f.to_string())),
            Some(_) => return None,
            None => (spec, None),
        };
        let (repo, revision) = match rest.split_once('@') {
            Some((r, v)) => (r, v.to_string()),
            None => (rest, "main".to_string()),
        };
        let mut parts = repo.split('/');
        let (org, name) = (parts.next()?, parts.next()?);
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if parts.next().is_some() || !ok(org) || !ok(name) {
            return None;
        }
        Some(Self {
            repo: repo.to_string(),
            revision,
            file,
        })
    }
}

pub(crate) fn hub_cache() -> hf_hub::Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(p) => hf_hub::Cache::new(PathBuf::from(p)),
        None => hf_hub::Cache::from_env(),
    }
}

/// Resolves a hub id from the local hub cache, downloading through the hub
/// API when it can be reached.
fn resolve_hub(spec: &str, id: &HubId) -> Result<ResolvedModel, ModelError> {
    let cache = hub_cache();
    let repo = hf_hub::Repo::with_revision(
        id.repo.clone(),
        hf_hub::RepoType::Model,
        id.revision.clone(),
    );
    let cached = cache.repo(repo.clone());
    let wanted: Vec<String> = match &id.file {
        Some(f) => vec![f.clone()],
        None => vec!["config.json".into(), "tokenizer.json".into()],
    };
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for f in &wanted {
        match cached.get(f) {
            Some(p) => found.push(p),
            None => missing.push(f.clone()),
        }
    }
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
    if !missing.is_empty() && !offline {
        // The hub may be reachable: try to download what is missing.
        if let Ok(api) = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
            .with_progress(false)
            .with_retries(0)
            .build()
        {
            let api_repo = api.repo(repo.clone());
            let mut still = Vec::new();
            for f in &missing {
                if api_repo.get(f).is_err() {
                    still.push(f.clone());
                }
            }
            if still.is_empty() && id.file.is_none() {
                // Weights: a single file or the shards named by the index.
                if api_repo.get("model.safetensors").is_err() {
                    if let Ok(index) = api_repo.get("model.safetensors.index.json") {
                        for shard in shards_from_index_names(&index) {
                            let _ = api_repo.get(&shard);
                        }
                    }
                }
            }
            missing = still;
        }
    }
    if !missing.is_empty() {
        let snapshot_dir = cache
            .path()
            .join(repo.folder_name())
            .join("snapshots")
            .join("<commit>");
        return Err(ModelError::HubUnavailable(Box::new(
            super::HubUnavailable {
                repo: id.repo.clone(),
                revision: id.revision.clone(),
                missing,
                cache_dir: cache.path().clone(),
                snapshot_dir,
            },
        )));
    }
    let first = cached.get(&wanted[0]).expect("found above or downloaded");
    let files = match &id.file {
        Some(_) => local_files(&first)?,
        None => hf_dir(first.parent().unwrap_or(Path::new(".")))?,
    };
    Ok(ResolvedModel {
        spec: spec.into(),
        label: id.repo.rsplit('/').next().unwrap_or(&id.repo).to_string(),
        origin: format!(
            "hub {}@{} (hf-hub cache {})",
            id.repo,
            id.revision,
            cache.path().display()
        ),
        files,
    })
}

/// The folder of an EAGLE draft head: a local folder, a zoo name, or a hub
/// id (`yuhuili/EAGLE-Qwen2-7B-Instruct`) resolved through the hf-hub
/// cache, downloading `config.json` and the weights (`model.safetensors`
/// or `pytorch_model.bin`) when the hub can be reached.
pub fn resolve_head_dir(spec: &str) -> Result<PathBuf, ModelError> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if let Some(dir) = zoo_model(spec) {
        return Ok(dir);
    }
    let Some(id) = HubId::parse(spec).filter(|h| h.file.is_none()) else {
        return Err(ModelError::MissingFile {
            path: path.to_path_buf(),
            what: "a draft head: a folder with config.json and model.safetensors or pytorch_model.bin, a zoo head, or a hub id".into(),
        });
    };
    let cache = hub_cache();
    let repo = hf_hub::Repo::with_revision(
        id.repo.clone(),
        hf_hub::RepoType::Model,
        id.revision.clone(),
    );
    let cached = cache.repo(repo.clone());
    let weights = ["model.safetensors", "pytorch_model.bin"];
    let have = |c: &hf_hub::CacheRepo| {
        c.get("config.json")
            .filter(|_| weights.iter().any(|w| c.get(w).is_some()))
    };
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
    if have(&cached).is_none() && !offline {
        if let Ok(api) = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
            .with_progress(false)
            .with_retries(0)
            .build()
        {
            let api_repo = api.repo(repo.clone());
            if api_repo.get("config.json").is_ok() {
                for w in weights {
                    if api_repo.get(w).is_ok() {
                        break;
                    }
                }
            }
        }
    }
    match have(&cached) {
        Some(config) => Ok(config.parent().unwrap_or(Path::new(".")).to_path_buf()),
        None => {
            let mut missing = Vec::new();
            if cached.get("config.json").is_none() {
                missing.push("config.json".to_string());
            }
            missing.push("model.safetensors or pytorch_model.bin".to_string());
            Err(ModelError::HubUnavailable(Box::new(
                super::HubUnavailable {
                    repo: id.repo.clone(),
                    revision: id.revision.clone(),
                    missing,
                    cache_dir: cache.path().clone(),
                    snapshot_dir: cache
                        .path()
                        .join(repo.folder_name())
                        .join("snapshots")
                        .join("<commit>"),
                },
            )))
        }
    }
}

fn shards_from_index_names(index: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(index) else {
        return vec![];
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return vec![];
    };
    let mut out: Vec<String> = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.values()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}
