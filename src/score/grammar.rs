//! Grammar checking behind one trait, for ParallelBench's sentence,
//! summary and paraphrase metrics ("no issue found" is a pass).
//!
//! Two backends:
//! - `harper`: the embedded `harper-core` checker, American English, the
//!   default here because it needs no network and no Java. It flags fewer
//!   and different things than LanguageTool, so its numbers are not the
//!   paper's; style-only lint kinds are not counted as issues.
//! - `languagetool=URL`: a LanguageTool server's `/v2/check` over HTTP,
//!   en-US, which is what ParallelBench itself uses.
//!
//! The run manifest and `pdbench score` record which backend judged.

use std::sync::{Arc, Mutex};

/// One issue a checker found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GrammarIssue {
    /// Character offset into the checked text.
    pub offset_chars: usize,
    pub len_chars: usize,
    /// The backend's rule or lint kind.
    pub rule: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GrammarError {
    #[error("LanguageTool at {url}: {detail} (start a server, e.g. `java -cp languagetool-server.jar org.languagetool.server.HTTPServer --port 8081`, or use --grammar harper)")]
    LanguageTool { url: String, detail: String },
    #[error("--grammar `{given}`: expected `harper` or `languagetool=URL` (e.g. languagetool=http://localhost:8081)")]
    BadSpec { given: String },
}

/// Which backend scores grammar, as the CLI names it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GrammarBackend {
    #[default]
    Harper,
    LanguageTool {
        url: String,
    },
}

impl std::str::FromStr for GrammarBackend {
    type Err = GrammarError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || GrammarError::BadSpec { given: s.into() };
        match s.split_once('=') {
            None if s == "harper" => Ok(Self::Harper),
            Some(("languagetool", url))
                if url.starts_with("http://") || url.starts_with("https://") =>
            {
                Ok(Self::LanguageTool {
                    url: url.trim_end_matches('/').to_string(),
                })
            }
            _ => Err(bad()),
        }
    }
}

/// What the manifest records about the grammar backend.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GrammarInfo {
    pub backend: String,
    pub version: String,
    pub language: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Issue kinds that are not counted (style preferences, not errors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_kinds: Vec<String>,
}

pub trait GrammarChecker: Send + Sync {
    fn info(&self) -> GrammarInfo;
    /// The issues found in `text`.
    fn issues(&self, text: &str) -> Result<Vec<GrammarIssue>, GrammarError>;
}

/// ParallelBench's `grammar_check`: the trimmed text is non-empty and has
/// no issue.
pub fn passes(checker: &dyn GrammarChecker, text: &str) -> Result<bool, GrammarError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(false);
    }
    Ok(checker.issues(t)?.is_empty())
}

impl GrammarBackend {
    pub fn info(&self) -> GrammarInfo {
        match self {
            Self::Harper => HarperChecker::static_info(),
            Self::LanguageTool { url } => LanguageToolChecker::info_for(url),
        }
    }

    pub fn open(&self) -> Result<Box<dyn GrammarChecker>, GrammarError> {
        Ok(match self {
            Self::Harper => Box::new(HarperChecker::new()),
            Self::LanguageTool { url } => Box::new(LanguageToolChecker { url: url.clone() }),
        })
    }
}

/// harper-core's curated dictionary and lint set, American English.
pub struct HarperChecker {
    linter: Mutex<harper_core::linting::LintGroup>,
}

/// Lint kinds that express a preference, not an error.
const HARPER_IGNORED: &[harper_core::linting::LintKind] = &[
    harper_core::linting::LintKind::Style,
    harper_core::linting::LintKind::Readability,
    harper_core::linting::LintKind::Enhancement,
];

impl HarperChecker {
    pub fn new() -> Self {
        let dict = harper_core::spell::FstDictionary::curated();
        Self {
            linter: Mutex::new(harper_core::linting::LintGroup::new_curated(
                dict,
                harper_core::Dialect::American,
            )),
        }
    }

    fn static_info() -> GrammarInfo {
        GrammarInfo {
            backend: "harper-core".into(),
            version: HARPER_VERSION.into(),
            language: "en-US".into(),
            url: None,
            ignored_kinds: HARPER_IGNORED.iter().map(|k| format!("{k:?}")).collect(),
        }
    }
}

impl Default for HarperChecker {
    fn default() -> Self {
        Self::new()
    }
}

/// Kept in step with Cargo.toml by a test.
pub const HARPER_VERSION: &str = "3.0.0";

impl GrammarChecker for HarperChecker {
    fn info(&self) -> GrammarInfo {
        Self::static_info()
    }

    fn issues(&self, text: &str) -> Result<Vec<GrammarIssue>, GrammarError> {
        use harper_core::linting::Linter;
        let doc = harper_core::Document::new_plain_english_curated(text);
        let lints = self
            .linter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lint(&doc);
        Ok(lints
            .into_iter()
            .filter(|l| !HARPER_IGNORED.contains(&l.lint_kind))
            .map(|l| GrammarIssue {
                offset_chars: l.span.start,
                len_chars: l.span.end.saturating_sub(l.span.start),
                rule: format!("{:?}", l.lint_kind),
                message: l.message,
            })
            .collect())
    }
}

/// A LanguageTool server, queried as language_tool_python does: a form
/// POST of `language` and `text` to `/v2/check`.
pub struct LanguageToolChecker {
    pub url: String,
}

impl LanguageToolChecker {
    fn info_for(url: &str) -> GrammarInfo {
        GrammarInfo {
            backend: "languagetool".into(),
            version: "server".into(),
            language: "en-US".into(),
            url: Some(url.into()),
            ignored_kinds: vec![],
        }
    }
}

#[derive(serde::Deserialize)]
struct LtResponse {
    matches: Vec<LtMatch>,
}

#[derive(serde::Deserialize)]
struct LtMatch {
    #[serde(default)]
    message: String,
    offset: usize,
    length: usize,
    #[serde(default)]
    rule: Option<LtRule>,
}

#[derive(serde::Deserialize)]
struct LtRule {
    id: String,
}

impl GrammarChecker for LanguageToolChecker {
    fn info(&self) -> GrammarInfo {
        Self::info_for(&self.url)
    }

    fn issues(&self, text: &str) -> Result<Vec<GrammarIssue>, GrammarError> {
        let err = |detail: String| GrammarError::LanguageTool {
            url: self.url.clone(),
            detail,
        };
        let endpoint = format!("{}/v2/check", self.url);
        let body = ureq::post(&endpoint)
            .timeout(std::time::Duration::from_secs(60))
            .send_form(&[("language", "en-US"), ("text", text)])
            .map_err(|e| err(e.to_string()))?
            .into_string()
            .map_err(|e| err(format!("reading the reply: {e}")))?;
        let r: LtResponse = serde_json::from_str(&body)
            .map_err(|e| err(format!("the reply is not a /v2/check answer ({e})")))?;
        Ok(r.matches
            .into_iter()
            .map(|m| GrammarIssue {
                offset_chars: m.offset,
                len_chars: m.length,
                rule: m.rule.map(|r| r.id).unwrap_or_default(),
                message: m.message,
            })
            .collect())
    }
}

/// A checker opened on first use and shared, since harper's dictionary
/// takes most of a second to load.
#[derive(Default)]
pub struct LazyChecker {
    pub backend: GrammarBackend,
    opened: std::sync::OnceLock<Arc<dyn GrammarChecker>>,
}

impl LazyChecker {
    pub fn new(backend: GrammarBackend) -> Self {
        Self {
            backend,
            opened: Default::default(),
        }
    }

    pub fn get(&self) -> Result<Arc<dyn GrammarChecker>, GrammarError> {
        if let Some(c) = self.opened.get() {
            return Ok(c.clone());
        }
        let c: Arc<dyn GrammarChecker> = Arc::from(self.backend.open()?);
        Ok(self.opened.get_or_init(|| c).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_specs_parse_or_name_the_flag() {
        assert_eq!(
            "harper".parse::<GrammarBackend>().unwrap(),
            GrammarBackend::Harper
        );
        assert_eq!(
            "languagetool=http://localhost:8081/"
                .parse::<GrammarBackend>()
                .unwrap(),
            GrammarBackend::LanguageTool {
                url: "http://localhost:8081".into()
            }
        );
        for bad in [
            "",
            "lt",
            "languagetool",
            "languagetool=localhost:8081",
            "harper=x",
        ] {
            let e = bad.parse::<GrammarBackend>().unwrap_err().to_string();
            assert!(e.contains("--grammar"), "{e}");
        }
    }

    #[test]
    fn harper_version_matches_the_manifest_dependency() {
        let toml = include_str!("../../Cargo.toml");
        assert!(
            toml.contains(&format!("harper-core = \"={HARPER_VERSION}\"")),
            "Cargo.toml pins harper-core to {HARPER_VERSION}"
        );
    }

    #[test]
    fn harper_passes_clean_text_and_flags_errors() {
        let c = HarperChecker::new();
        assert!(passes(&c, "I love to throw the ball for my dog at the park.").unwrap());
        assert!(!passes(&c, "We went to the the store.").unwrap());
        assert!(!passes(&c, "She recieved a leter yesterday.").unwrap());
        assert!(!passes(&c, "   ").unwrap());
        // Style preferences (an Oxford comma) are not errors.
        assert!(passes(&c, "Mike, Tom and Ben will go for a beer.").unwrap());
    }
}
