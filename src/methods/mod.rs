//! The method registry: one explicit static table of decoding methods.
//!
//! A method sees only the model layer (forwards with masks, the KV cache,
//! hidden states) and reports each step to the measurement core's probe.
//! It never reads a clock.

pub mod ar;
pub mod chain;
pub mod cllm;
pub mod deer;
pub mod diffuspec;
pub mod dllm;
pub mod eagle;
pub mod jacobi;
pub mod learn2pd;
pub mod lookahead;
pub mod ngram;
pub mod pld;
pub mod sps;
pub mod tidar;
pub mod tree;
pub mod verify;

use rand_chacha::ChaCha20Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::measure::Probe;
use crate::model::{LoadedModel, ModelError};

/// What a method needs besides the target model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    DraftModel,
    DraftHead,
    /// A consistency-trained model that decodes in the target's place.
    ConsistencyModel,
    /// A masked-diffusion LM that decodes in the target's place.
    DiffusionModel,
    Filter,
    /// A masked-diffusion LM aligned to the target as its drafter (DEER).
    DiffusionDrafter,
    /// A TiDAR-trained model that decodes in the target's place.
    TidarModel,
}

/// How a method's output relates to the target's AR output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exactness {
    /// Greedy output equals greedy AR token for token; sampling keeps the
    /// target's distribution.
    Lossless,
    /// Output may differ from AR.
    Lossy,
}

/// The models a method is built with.
pub struct MethodModels<'a> {
    pub target: &'a LoadedModel,
    pub draft: Option<&'a LoadedModel>,
    pub head: Option<&'a crate::model::eagle::LoadedHead>,
    pub consistency: Option<&'a LoadedModel>,
    pub dllm: Option<&'a LoadedModel>,
    pub filter: Option<&'a crate::model::filter::LoadedFilter>,
    pub dllm_drafter: Option<&'a LoadedModel>,
    pub tidar: Option<&'a LoadedModel>,
}

impl<'a> MethodModels<'a> {
    /// A target and nothing else (what `ar` and the drafter-free methods
    /// need); struct update adds the rest.
    pub fn target_only(target: &'a LoadedModel) -> Self {
        Self {
            target,
            draft: None,
            head: None,
            consistency: None,
            dllm: None,
            filter: None,
            dllm_drafter: None,
            tidar: None,
        }
    }
}

/// Per-sample state a method may use besides the probe.
pub struct GenContext<'p, 'a> {
    pub probe: &'p mut Probe<'a>,
    /// Seeded per sample, so results do not depend on sample order.
    pub rng: &'p mut ChaCha20Rng,
}

/// A built method, ready to decode samples one after another.
pub trait Decoder {
    /// Decodes a continuation of `prompt`, committing every step to
    /// `ctx.probe` until it answers `Flow::Stop`.
    fn generate(&mut self, prompt: &[u32], ctx: &mut GenContext<'_, '_>)
        -> Result<(), MethodError>;
}

#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("method `{method}`: parameter {detail}")]
    Params { method: String, detail: String },
    #[error("method `{method}` needs {need}; {hint}")]
    Missing {
        method: String,
        need: String,
        hint: String,
    },
    #[error("method `{method}`: {detail}")]
    Other { method: String, detail: String },
    #[error("no method `{id}` is registered; {hint}registered: {registered}")]
    Unknown {
        id: String,
        hint: String,
        registered: String,
    },
}

impl MethodError {
    /// The same error naming the instance's label beside its method id,
    /// where they differ (`[ar-t07] method = "ar"` in a methods file), so
    /// that the user finds the table at fault.
    pub fn labelled(self, label: &str, id: &str) -> Self {
        if label == id {
            return self;
        }
        let name = |method: String| {
            if method == id {
                format!("{label} ({id})")
            } else {
                method
            }
        };
        match self {
            MethodError::Params { method, detail } => MethodError::Params {
                method: name(method),
                detail,
            },
            MethodError::Missing { method, need, hint } => MethodError::Missing {
                method: name(method),
                need,
                hint,
            },
            MethodError::Other { method, detail } => MethodError::Other {
                method: name(method),
                detail,
            },
            other => other,
        }
    }
}

pub struct MethodSpec {
    pub id: &'static str,
    pub description: &'static str,
    pub needs: &'static [Need],
    pub exactness: Exactness,
    /// Parses user parameters (unknown keys are errors) and returns them
    /// with every default filled in.
    pub resolve_params: fn(&serde_json::Value) -> Result<serde_json::Value, String>,
    pub build: fn(&serde_json::Value, &MethodModels<'_>) -> Result<Box<dyn Decoder>, MethodError>,
    /// From resolved parameters: how many positions past the output a
    /// step may forward (drafts under verification), which the context
    /// must hold beside the prompt and the token budget; `None` where no
    /// parameter bounds it (the runner then keeps a general margin).
    pub positions_ahead: fn(&serde_json::Value) -> Option<usize>,
}

/// A resolved parameter as a count.
fn count(params: &serde_json::Value, name: &str) -> Option<usize> {
    params[name].as_u64().map(|n| n as usize)
}

impl std::fmt::Debug for MethodSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodSpec").field("id", &self.id).finish()
    }
}

/// Every registered method. Adding a method is one entry here.
pub static METHODS: &[MethodSpec] = &[
    ar::SPEC,
    sps::SPEC,
    eagle::SPEC,
    pld::SPEC,
    jacobi::SPEC,
    cllm::SPEC,
    lookahead::SPEC,
    dllm::SPEC,
    learn2pd::SPEC,
    diffuspec::SPEC,
    deer::SPEC,
    tidar::SPEC,
];

pub fn find(id: &str) -> Result<&'static MethodSpec, MethodError> {
    METHODS.iter().find(|m| m.id == id).ok_or_else(|| {
        let ids: Vec<&str> = METHODS.iter().map(|m| m.id).collect();
        let hint = crate::util::did_you_mean(id, &ids)
            .map(|s| format!("did you mean `{s}`? "))
            .unwrap_or_default();
        MethodError::Unknown {
            id: id.to_string(),
            hint,
            registered: ids.join(", "),
        }
    })
}

/// Deserialises params strictly; the error names the field (`cache:
/// unknown variant ...`), which serde alone leaves out for enums.
pub fn parse_params<P: DeserializeOwned>(v: &serde_json::Value) -> Result<P, String> {
    let v = if v.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        v.clone()
    };
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

/// Deserialises a params struct strictly and serialises it back with its
/// defaults, so that manifests record every value a run used.
pub fn resolve_with<P: DeserializeOwned + Serialize>(
    v: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let p: P = parse_params(v)?;
    serde_json::to_value(&p).map_err(|e| e.to_string())
}

pub fn params_of<P: DeserializeOwned>(
    method: &str,
    v: &serde_json::Value,
) -> Result<P, MethodError> {
    parse_params(v).map_err(|detail| MethodError::Params {
        method: method.to_string(),
        detail,
    })
}

/// One configured method in a run: a registered id with resolved params,
/// under a label that is unique in the run.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct MethodInstance {
    pub label: String,
    pub id: String,
    pub params: serde_json::Value,
}

impl MethodInstance {
    pub fn new(
        id: &str,
        label: Option<&str>,
        params: &serde_json::Value,
    ) -> Result<Self, MethodError> {
        let spec = find(id)?;
        let label = label.unwrap_or(id);
        let params = (spec.resolve_params)(params).map_err(|detail| {
            MethodError::Params {
                method: id.to_string(),
                detail,
            }
            .labelled(label, id)
        })?;
        Ok(Self {
            label: label.to_string(),
            id: id.to_string(),
            params,
        })
    }

    pub fn spec(&self) -> &'static MethodSpec {
        find(&self.id).expect("instances are made from registered ids")
    }
}

/// The run's baseline for speedups: an `ar` instance, chosen by method id
/// and never by label alone. A greedy one comes first (the one labelled
/// `ar`, else the first: a sweep labels it `ar[...]`); a run that samples
/// everything takes its `ar` the same way.
pub fn baseline_label(methods: &[MethodInstance]) -> Option<&str> {
    greedy_baseline_label(methods).or_else(|| pick_ar(methods, |_| true))
}

/// The greedy `ar` instance that lossless methods' tokens are held to.
pub fn greedy_baseline_label(methods: &[MethodInstance]) -> Option<&str> {
    pick_ar(methods, |i| {
        i.params["temperature"].as_f64().unwrap_or(0.0) <= 0.0
    })
}

fn pick_ar(methods: &[MethodInstance], keep: impl Fn(&MethodInstance) -> bool) -> Option<&str> {
    let mut ars = methods.iter().filter(|i| i.id == "ar" && keep(i));
    let first = ars.clone().next()?;
    Some(
        ars.find(|i| i.label == "ar")
            .unwrap_or(first)
            .label
            .as_str(),
    )
}

/// The argmax of each row of `[rows, vocab]` logits, first index on ties
/// (as `ar` picks). On a GPU only the ids are copied back.
pub(crate) fn argmax_per_row(logits: &candle_core::Tensor) -> Result<Vec<u32>, MethodError> {
    if logits.device().is_cpu() {
        return Ok(crate::model::argmax_rows(logits)?);
    }
    Ok(logits
        .argmax_keepdim(candle_core::D::Minus1)?
        .flatten_all()?
        .to_vec1::<u32>()?)
}
