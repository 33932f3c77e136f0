//! The local store: fetched models and data sets, and a cache of file
//! digests. It lives in `$PDBENCH_HOME`, or `.pdbench/` in the working
//! directory (gitignored).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::tokenizer::hex;

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// `$PDBENCH_HOME`, or `./.pdbench`.
    pub fn from_env() -> Self {
        let root = std::env::var_os("PDBENCH_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".pdbench"));
        Self { root }
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn downloads_dir(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// The sha256 of a file, cached by (size, mtime) so that multi-GB
    /// models are hashed once.
    pub fn sha256(&self, path: &Path) -> std::io::Result<String> {
        let meta = std::fs::metadata(path)?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let key = std::fs::canonicalize(path)?.display().to_string();
        let cache_path = self.root.join("digests.json");
        let mut cache: BTreeMap<String, CachedDigest> = std::fs::read_to_string(&cache_path)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        if let Some(c) = cache.get(&key) {
            if c.bytes == meta.len() && c.mtime_ns == mtime_ns {
                return Ok(c.sha256.clone());
            }
        }
        let digest = sha256_file(path)?;
        cache.insert(
            key,
            CachedDigest {
                bytes: meta.len(),
                mtime_ns,
                sha256: digest.clone(),
            },
        );
        // The cache is an optimisation: failing to write it is not an error.
        if std::fs::create_dir_all(&self.root).is_ok() {
            if let Ok(text) = serde_json::to_string_pretty(&cache) {
                let _ = crate::results::write_atomic(&cache_path, text.as_bytes());
            }
        }
        Ok(digest)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedDigest {
    bytes: u64,
    mtime_ns: u64,
    sha256: String,
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}
