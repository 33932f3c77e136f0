//! `pdbench train --recipe NAME`: trains a small llama-family model with
//! candle-nn on the toy tasks and writes it in the hub layout
//! (config.json, model.safetensors, tokenizer.json, tokenizer_config.json)
//! with a training record (training.json): the recipe, seed, version, loss
//! curve, wall time and the final evaluation on the test split.
//!
//! Data order and noise are drawn from the seed and the step number, and
//! checkpoints hold the weights and the optimizer's moments, so an
//! interrupted training resumes on the same path.

pub mod adamw;
pub mod consistency;
pub mod deer;
pub mod fast;
pub mod filter;
pub mod head;
pub mod objective;
pub mod tidar;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::model::{Architecture, ModelConfig, Transformer};
use crate::toy::{self, Split, ToyParams};
use objective::{ObjectiveParams, Pair, Specials};

/// The architecture part of a recipe: the llama-family config, less what
/// the toy vocabulary fixes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSpec {
    #[serde(default = "default_arch")]
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

fn default_arch() -> Architecture {
    Architecture::Llama
}
fn default_ctx() -> usize {
    128
}
fn default_theta() -> f64 {
    10_000.0
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Training items per task (train split).
    pub train_per_task: usize,
    /// Test items per task for the final evaluation.
    #[serde(default = "default_eval")]
    pub eval_per_task: usize,
    /// Generator seed (the `toy` suite uses 2026 for its test split).
    #[serde(default = "default_data_seed")]
    pub seed: u64,
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Relative sampling weight per task (1 where absent): harder tasks
    /// can get more of the steps.
    #[serde(default)]
    pub task_weights: BTreeMap<String, f64>,
}

fn default_eval() -> usize {
    20
}
fn default_data_seed() -> u64 {
    2026
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSpec {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    /// The cosine schedule ends at `lr * min_lr_ratio`.
    #[serde(default = "default_min_lr")]
    pub min_lr_ratio: f64,
    #[serde(default = "default_clip")]
    pub grad_clip: f64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Rows per micro-batch: a step's batch is sorted by length and cut
    /// into micro-batches, each padded to its own longest row and shared
    /// out to the CPU threads (candle's small matmuls leave a second core
    /// idle otherwise). The loss is the whole batch's either way.
    #[serde(default = "default_micro")]
    pub micro_batch: usize,
}

fn default_micro() -> usize {
    8
}

fn default_min_lr() -> f64 {
    0.1
}
fn default_clip() -> f64 {
    1.0
}
fn default_wd() -> f64 {
    0.01
}

/// A recipe file (`recipes/NAME.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// See [`objective::OBJECTIVES`].
    pub objective: String,
    #[serde(default)]
    pub objective_params: ObjectiveParams,
    /// Output folder, relative to the recipe file's folder's parent
    /// (the repository root for `recipes/`).
    pub output: String,
    pub seed: u64,
    /// Start from this model's weights (a hub-layout folder with
    /// model.safetensors, relative like `output`) instead of random ones:
    /// how Dream-7B was adapted from Qwen2.5-7B. Its tensors must have the
    /// recipe's names and shapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// Head objectives (`eagle`): the frozen model the head drafts for
    /// (relative like `output`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The architecture (every objective but `learn2pd`, whose filter is
    /// sized by `objective_params`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ArchSpec>,
    pub data: DataSpec,
    pub optim: OptimSpec,
    #[serde(default = "default_ckpt")]
    pub checkpoint_every: usize,
    #[serde(default = "default_log")]
    pub log_every: usize,
}

fn default_ckpt() -> usize {
    200
}
fn default_log() -> usize {
    25
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("recipe \"{name}\" not found: no file {path} (known recipes: {known})")]
    NotFound {
        name: String,
        path: PathBuf,
        known: String,
    },
    #[error("{path}: {detail}")]
    Recipe { path: PathBuf, detail: String },
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("training: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("training: {0}")]
    Model(#[from] crate::model::ModelError),
    #[error("{0}")]
    Data(String),
    #[error("training interrupted at step {step}; the checkpoint in {dir} resumes it (run the same command again)")]
    Interrupted { step: usize, dir: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        cause: source,
    }
}

/// The folder of shipped recipes.
pub fn recipes_dir() -> PathBuf {
    let local = PathBuf::from("recipes");
    if local.is_dir() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("recipes")
}

pub fn list_recipes() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(recipes_dir())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_suffix(".toml")
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A recipe by name (`recipes/NAME.toml`) or path.
pub fn load_recipe(name_or_path: &str) -> Result<(PathBuf, Recipe), TrainError> {
    let p = Path::new(name_or_path);
    let path = if p.is_file() {
        p.to_path_buf()
    } else {
        let f = recipes_dir().join(format!("{name_or_path}.toml"));
        if !f.is_file() {
            return Err(TrainError::NotFound {
                name: name_or_path.into(),
                path: f,
                known: list_recipes().join(", "),
            });
        }
        f
    };
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let r: Recipe = toml::from_str(&text).map_err(|e| TrainError::Recipe {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    let bad = |detail: String| TrainError::Recipe {
        path: path.clone(),
        detail,
    };
    if let Some(o) = objective::find(&r.objective) {
        let head = matches!(o.trains, objective::Trains::EagleHead);
        if head && r.target.is_none() {
            return Err(bad(format!(
                "field `target`: objective \"{}\" trains a head for a frozen target; name its model folder",
                r.objective
            )));
        }
        let deer = matches!(o.trains, objective::Trains::Deer);
        if deer && (r.target.is_none() || r.init.is_none()) {
            return Err(bad(format!(
                "fields `init` and `target`: objective \"{}\" aligns a diffusion LM (init) to a frozen AR target; name both model folders",
                r.objective
            )));
        }
        let filter = matches!(o.trains, objective::Trains::Learn2pdFilter);
        if filter && r.init.is_none() {
            return Err(bad(format!(
                "field `init`: objective \"{}\" trains a filter for a diffusion LM; name its model folder",
                r.objective
            )));
        }
        if filter && r.model.is_some() {
            return Err(bad(format!(
                "field `model`: objective \"{}\" trains a filter, sized by objective_params.filter_hidden and block_size; it takes no [model]",
                r.objective
            )));
        }
        if !filter && r.model.is_none() {
            return Err(bad(format!(
                "field `model`: objective \"{}\" needs the [model] architecture",
                r.objective
            )));
        }
        if matches!(o.trains, objective::Trains::Consistency) && r.init.is_none() {
            return Err(bad(format!(
                "field `init`: objective \"{}\" trains a model on its own Jacobi trajectories; name the model to start from",
                r.objective
            )));
        }
        if !head && !deer && r.target.is_some() {
            return Err(bad(format!(
                "field `target`: objective \"{}\" trains a model, not a head; it takes no target",
                r.objective
            )));
        }
    } else {
        return Err(bad(format!(
            "field `objective`: unknown \"{}\"; expected one of {}",
            r.objective,
            objective::OBJECTIVES
                .iter()
                .map(|o| o.name)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if r.model.as_ref().is_some_and(|m| {
        m.num_attention_heads == 0
            || m.hidden_size % m.num_attention_heads != 0
            || m.num_key_value_heads == 0
            || m.num_attention_heads % m.num_key_value_heads != 0
            || (m.hidden_size / m.num_attention_heads) % 2 != 0
    }) {
        return Err(bad(
            "field `model`: hidden_size must split into an even head_dim per attention head, and heads into key-value groups".into(),
        ));
    }
    for (task, w) in &r.data.task_weights {
        if toy::is_deterministic(task).is_none() {
            return Err(bad(format!(
                "field `data.task_weights`: unknown task \"{task}\"; expected one of {}",
                toy::TASKS
                    .iter()
                    .map(|t| t.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if !(w.is_finite() && *w >= 0.0) {
            return Err(bad(format!(
                "field `data.task_weights.{task}`: expected a weight >= 0, got {w}"
            )));
        }
    }
    if r.optim.steps == 0 || r.optim.batch_size == 0 || r.optim.lr <= 0.0 {
        return Err(bad(
            "field `optim`: steps, batch_size and lr must be positive".into(),
        ));
    }
    let ls = r.objective_params.label_smoothing;
    if !(0.0..1.0).contains(&ls) {
        return Err(bad(format!(
            "field `objective_params.label_smoothing`: expected a number in [0, 1), got {ls}"
        )));
    }
    if r.objective_params.block_size == 0
        || r.objective_params.gen_len == 0
        || r.objective_params.window == 0
        || r.objective_params.filter_hidden == 0
    {
        return Err(bad(
            "field `objective_params`: gen_len, block_size, window and filter_hidden must be positive".into(),
        ));
    }
    Ok((path, r))
}

/// The output folder of a recipe: relative paths are taken from the
/// repository root (the parent of `recipes/`).
pub fn output_dir(recipe_path: &Path, r: &Recipe) -> PathBuf {
    from_root(recipe_path, &r.output)
}

/// The model a recipe starts from, if any (relative as `output`).
pub fn init_dir(recipe_path: &Path, r: &Recipe) -> Option<PathBuf> {
    r.init.as_deref().map(|i| from_root(recipe_path, i))
}

/// The frozen target of a head recipe, if any (relative as `output`).
pub fn target_dir(recipe_path: &Path, r: &Recipe) -> Option<PathBuf> {
    r.target.as_deref().map(|t| from_root(recipe_path, t))
}

fn from_root(recipe_path: &Path, rel: &str) -> PathBuf {
    let p = Path::new(rel);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let root = recipe_path
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    root.join(p)
}

pub fn model_config(r: &Recipe) -> ModelConfig {
    let m = r
        .model
        .as_ref()
        .expect("recipes of model objectives have [model] (checked on load)");
    ModelConfig {
        architecture: m.architecture,
        vocab_size: toy::vocab().len(),
        hidden_size: m.hidden_size,
        intermediate_size: m.intermediate_size,
        num_hidden_layers: m.num_hidden_layers,
        num_attention_heads: m.num_attention_heads,
        num_key_value_heads: m.num_key_value_heads,
        head_dim: m.hidden_size / m.num_attention_heads,
        max_position_embeddings: m.max_position_embeddings,
        rms_norm_eps: 1e-5,
        rope_theta: m.rope_theta,
        rope_scaling: None,
        rope_interleaved: false,
        qkv_bias: m.architecture == Architecture::Qwen2,
        tie_word_embeddings: m.tie_word_embeddings,
    }
}

/// Initial weights by HF tensor name: N(0, 0.02), residual outputs scaled
/// down by depth, norm gains 1, biases 0.
fn init_weights(cfg: &ModelConfig, seed: u64) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    let mut put = |name: String, shape: Vec<usize>, std: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = if std == 0.0 {
            vec![0.0; n]
        } else if std < 0.0 {
            vec![1.0; n]
        } else {
            let d = Normal::new(0.0, std).expect("valid");
            (0..n).map(|_| d.sample(&mut rng)).collect()
        };
        out.insert(name, (shape, v));
    };
    let (h, i, v, d) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.vocab_size,
        cfg.head_dim,
    );
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let std = 0.02;
    let resid = 0.02 / (2.0 * cfg.num_hidden_layers as f32).sqrt();
    put("model.embed_tokens.weight".into(), vec![v, h], std);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.self_attn.q_proj.weight"), vec![nh * d, h], std);
        put(
            format!("{p}.self_attn.k_proj.weight"),
            vec![nkv * d, h],
            std,
        );
        put(
            format!("{p}.self_attn.v_proj.weight"),
            vec![nkv * d, h],
            std,
        );
        put(
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, nh * d],
            resid,
        );
        if cfg.qkv_bias {
            put(format!("{p}.self_attn.q_proj.bias"), vec![nh * d], 0.0);
            put(format!("{p}.self_attn.k_proj.bias"), vec![nkv * d], 0.0);
            put(format!("{p}.self_attn.v_proj.bias"), vec![nkv * d], 0.0);
        }
        put(format!("{p}.mlp.gate_proj.weight"), vec![i, h], std);
        put(format!("{p}.mlp.up_proj.weight"), vec![i, h], std);
        put(format!("{p}.mlp.down_proj.weight"), vec![h, i], resid);
        put(format!("{p}.input_layernorm.weight"), vec![h], -1.0);
        put(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            -1.0,
        );
    }
    put("model.norm.weight".into(), vec![h], -1.0);
    if !cfg.tie_word_embeddings {
        put("lm_head.weight".into(), vec![v, h], std);
    }
    out
}

/// Learning rate at `step` (0-based): linear warm-up, then cosine decay to
/// `lr * min_lr_ratio`.
pub fn lr_at(o: &OptimSpec, step: usize) -> f64 {
    if step < o.warmup_steps {
        return o.lr * (step + 1) as f64 / o.warmup_steps as f64;
    }
    let span = (o.steps - o.warmup_steps).max(1) as f64;
    let progress = ((step - o.warmup_steps) as f64 / span).min(1.0);
    let min = o.lr * o.min_lr_ratio;
    min + (o.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// One point of the loss curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    pub step: usize,
    /// Mean training loss over the steps since the previous point.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// Scores of the final evaluation at one parallelism.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub tokens_per_step: usize,
    pub items: usize,
    /// Mean score × 100 per task.
    pub per_task: BTreeMap<String, f64>,
    /// Mean over the tasks with a unique answer, × 100 (none if no such
    /// task was evaluated).
    pub deterministic: Option<f64>,
    /// Mean over the tasks with many right answers (valid answers), × 100.
    pub random: Option<f64>,
    /// Generated tokens over model forwards.
    pub tokens_per_forward: f64,
}

/// The model a training started from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitRecord {
    pub path: String,
    /// sha256 of its model.safetensors.
    pub sha256: String,
}

/// Fully parallel sampling against a closed form: ParallelBench's case
/// study of random replacement in a list of n names. Sampling every
/// position at once from its marginal keeps the original name with
/// probability (n−1)/n and writes the new one with 1/n, so an answer is
/// valid (exactly one name replaced) with probability n·(1/n)·((n−1)/n)^(n−1):
/// 4/9 = 44.4% for n = 3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClosedFormCheck {
    pub task: String,
    pub list_len: usize,
    pub tokens_per_step: usize,
    pub temperature: f64,
    pub items: usize,
    /// Valid answers, %.
    pub valid_pct: f64,
    /// What independent per-position sampling from exact marginals gives, %.
    pub closed_form_pct: f64,
}

/// training.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    pub recipe: Recipe,
    pub recipe_file: String,
    pub seed: u64,
    pub pdbench_version: String,
    pub parameters: usize,
    pub steps_done: usize,
    pub loss_curve: Vec<LossPoint>,
    /// Training wall time, summed over resumed sessions.
    pub wall_s: f64,
    pub threads: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitRecord>,
    /// The frozen target a head was trained for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<InitRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evaluation: Vec<EvalResult>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub closed_form_checks: Vec<ClosedFormCheck>,
    /// Jacobi decoding's tokens per forward before and after consistency
    /// training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jacobi_evaluation: Option<consistency::JacobiEvaluation>,
    /// A draft head's agreement with its target (head objectives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_evaluation: Option<head::HeadEvaluation>,
    /// A Learn2PD filter against its diffusion LM's baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_evaluation: Option<filter::FilterEvaluation>,
    /// A DEER drafter's acceptance by its target, before and after the
    /// alignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deer_evaluation: Option<deer::DeerEvaluation>,
    /// Wall time of the final evaluation.
    #[serde(default)]
    pub eval_wall_s: f64,
}

impl TrainingRecord {
    /// What every objective records of its run; evaluations are empty.
    pub(crate) fn of_run(
        recipe_path: &Path,
        r: &Recipe,
        parameters: usize,
        done: Optimised,
        threads: usize,
    ) -> Self {
        Self {
            recipe: r.clone(),
            recipe_file: recipe_path.display().to_string(),
            seed: r.seed,
            pdbench_version: env!("CARGO_PKG_VERSION").into(),
            parameters,
            steps_done: done.steps_done,
            loss_curve: done.loss_curve,
            wall_s: done.wall_s,
            threads,
            init: None,
            target: None,
            evaluation: Vec::new(),
            closed_form_checks: Vec::new(),
            jacobi_evaluation: None,
            head_evaluation: None,
            filter_evaluation: None,
            deer_evaluation: None,
            eval_wall_s: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    adam_t: u64,
    loss_curve: Vec<LossPoint>,
    wall_s: f64,
    recipe: Recipe,
}

pub(crate) fn tokenizer() -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_bytes(toy::tokenizer_json().to_string())
        .expect("the toy tokenizer is valid")
}

pub(crate) fn encode(tok: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>, TrainError> {
    Ok(tok
        .encode(text, false)
        .map_err(|e| TrainError::Data(format!("toy tokenizer: {e}")))?
        .get_ids()
        .to_vec())
}

pub(crate) fn specials() -> Specials {
    Specials {
        pad: toy::special_id("<pad>"),
        eos: toy::special_id("<eos>"),
        mask: toy::special_id("<mask>"),
    }
}

/// A model folder (a trained model, an `init` or a `target`) through the
/// loader every checkpoint goes through, in f32, never fetching.
pub(crate) fn load_trained(
    dir: &Path,
    device: &Device,
) -> Result<crate::model::LoadedModel, TrainError> {
    let store = crate::store::Store::at(std::env::temp_dir().join("pdbench-train-store"));
    Ok(crate::model::load(
        &dir.display().to_string(),
        &store,
        crate::model::FetchPolicy::Never,
        &crate::model::LoadOptions {
            device: device.clone(),
            dtype: Some(DType::F32),
            ..Default::default()
        },
        &mut |_| {},
    )?)
}

/// Writes `vars` to `dir/model.safetensors` atomically.
pub(crate) fn save_weights(dir: &Path, vars: &[(String, Var)]) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tensors: HashMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let st = dir.join("model.safetensors");
    let tmp = dir.join("model.safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, &st).map_err(io(&st))
}

/// Writes the model folder: weights from `vars`, config, tokenizer files.
fn write_model_folder(
    dir: &Path,
    cfg: &ModelConfig,
    r: &Recipe,
    vars: &[(String, Var)],
) -> Result<(), TrainError> {
    save_weights(dir, vars)?;
    let sp = specials();
    let mut config = cfg.to_hf_json();
    config["bos_token_id"] = serde_json::json!(toy::special_id("<bos>"));
    config["eos_token_id"] = serde_json::json!(sp.eos);
    config["pad_token_id"] = serde_json::json!(sp.pad);
    config["mask_token_id"] = serde_json::json!(sp.mask);
    config["pdbench_objective"] = serde_json::json!(r.objective);
    config["pdbench_objective_params"] = serde_json::to_value(r.objective_params).expect("json");
    let write = |name: &str, v: &serde_json::Value| -> Result<(), TrainError> {
        let p = dir.join(name);
        crate::results::write_atomic(
            &p,
            serde_json::to_string_pretty(v).expect("json").as_bytes(),
        )
        .map_err(io(&p))
    };
    write("config.json", &config)?;
    write("tokenizer.json", &toy::tokenizer_json())?;
    write(
        "tokenizer_config.json",
        &serde_json::json!({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                            "mask_token": "<mask>", "add_bos_token": false}),
    )?;
    write(
        "generation_config.json",
        &serde_json::json!({"eos_token_id": sp.eos, "pad_token_id": sp.pad}),
    )?;
    Ok(())
}

/// What `train` reports as it goes.
pub enum TrainEvent<'a> {
    Resumed {
        step: usize,
    },
    /// Collecting what an objective trains on from the init model (Jacobi
    /// trajectories, decoding steps).
    Collecting {
        what: &'static str,
    },
    Progress {
        step: usize,
        steps: usize,
        loss: f64,
        lr: f64,
        steps_per_s: f64,
    },
    Evaluating {
        tokens_per_step: usize,
    },
    Done {
        record: &'a TrainingRecord,
    },
}

/// Keeps freed tensor buffers in the heap instead of returning them to the
/// kernel: candle's backward allocates and frees megabyte buffers every
/// op, and glibc's default mmap/munmap of each cost a third of the
/// training time in page faults here.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes glibc's allocator thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// A recipe's training pairs, grouped by task; a batch row draws a task by
/// its weight, then an item of it.
pub(crate) struct TrainData {
    groups: Vec<(String, Vec<Pair>)>,
    task_dist: rand_distr::weighted::WeightedIndex<f64>,
}

/// The generator settings of a recipe's split.
pub(crate) fn toy_params(r: &Recipe, split: Split, per_task: usize) -> ToyParams {
    ToyParams {
        split,
        per_task,
        seed: r.data.seed,
        tasks: r.data.tasks.clone(),
        list_len: [3, 5],
        distinct: split != Split::Train,
    }
}

impl TrainData {
    pub(crate) fn load(recipe_path: &Path, r: &Recipe) -> Result<Self, TrainError> {
        let tok = tokenizer();
        let items = toy::generate(&toy_params(r, Split::Train, r.data.train_per_task))
            .map_err(|e| TrainError::Data(e.to_string()))?;
        let mut by_task: BTreeMap<String, Vec<Pair>> = BTreeMap::new();
        for it in &items {
            by_task.entry(it.task.clone()).or_default().push(Pair {
                prompt: encode(&tok, &it.prompt)?,
                answer: encode(&tok, &it.answer)?,
            });
        }
        let groups: Vec<(String, Vec<Pair>)> = by_task.into_iter().collect();
        let weights: Vec<f64> = groups
            .iter()
            .map(|(t, _)| r.data.task_weights.get(t).copied().unwrap_or(1.0))
            .collect();
        let task_dist =
            rand_distr::weighted::WeightedIndex::new(&weights).map_err(|e| TrainError::Recipe {
                path: recipe_path.to_path_buf(),
                detail: format!("field `data.task_weights`: {e}"),
            })?;
        Ok(Self { groups, task_dist })
    }

    /// The batch of `step` as (task group, item) indices: it depends only
    /// on the seed and the step.
    pub(crate) fn batch_indices(&self, r: &Recipe, step: usize) -> Vec<(usize, usize)> {
        let mut rng = ChaCha20Rng::seed_from_u64(
            r.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (step as u64).wrapping_add(1),
        );
        (0..r.optim.batch_size)
            .map(|_| {
                let g = self.task_dist.sample(&mut rng);
                (g, rng.random_range(0..self.groups[g].1.len()))
            })
            .collect()
    }

    /// The batch of `step`.
    pub(crate) fn batch(&self, r: &Recipe, step: usize) -> Vec<&Pair> {
        self.batch_indices(r, step)
            .into_iter()
            .map(|(g, i)| &self.groups[g].1[i])
            .collect()
    }

    /// The pairs by task.
    pub(crate) fn groups(&self) -> &[(String, Vec<Pair>)] {
        &self.groups
    }

    /// The same tasks, weighted alike, with other pairs (a task's list
    /// must not be empty).
    pub(crate) fn with_pairs(&self, groups: Vec<(String, Vec<Pair>)>) -> Self {
        debug_assert_eq!(groups.len(), self.groups.len());
        Self {
            groups,
            task_dist: self.task_dist.clone(),
        }
    }
}

/// What the optimisation loop leaves behind.
pub(crate) struct Optimised {
    pub steps_done: usize,
    pub loss_curve: Vec<LossPoint>,
    /// Summed over resumed sessions.
    pub wall_s: f64,
}

/// The loop every objective shares: resume from `out/checkpoint/` when it
/// holds one of the same recipe, then AdamW steps with clipping and the
/// schedule, checkpoints, progress events, and a checkpoint on `stop`.
/// `grads(batch, step)` returns the batch's loss and gradients by name.
#[allow(clippy::too_many_arguments)]
pub(crate) fn optimise(
    recipe_path: &Path,
    r: &Recipe,
    out: &Path,
    device: &Device,
    named: &[(String, Var)],
    data: &TrainData,
    stop: &std::sync::atomic::AtomicBool,
    on: &mut dyn FnMut(TrainEvent<'_>),
    grads: &mut dyn FnMut(&[&Pair], usize) -> candle_core::Result<(f64, NamedGrads)>,
) -> Result<Optimised, TrainError> {
    let mut opt = adamw::AdamW::new(
        named.to_vec(),
        adamw::AdamWParams {
            weight_decay: r.optim.weight_decay,
            ..Default::default()
        },
    )?;
    let ckpt = out.join("checkpoint");
    let mut step = 0usize;
    let mut loss_curve = Vec::new();
    let mut wall_before = 0.0;
    let state_path = ckpt.join("state.json");
    if state_path.is_file() {
        let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
        let st: CheckpointState = serde_json::from_str(&text).map_err(|e| TrainError::Recipe {
            path: state_path.clone(),
            detail: format!("not a checkpoint state: {e}"),
        })?;
        if st.recipe != *r {
            return Err(TrainError::Recipe {
                path: state_path.clone(),
                detail: format!(
                    "the checkpoint is of a different recipe; delete {} to start over",
                    ckpt.display()
                ),
            });
        }
        let weights = candle_core::safetensors::load(ckpt.join("weights.safetensors"), device)?;
        for (name, var) in named {
            let t = weights.get(name).ok_or_else(|| TrainError::Recipe {
                path: ckpt.join("weights.safetensors"),
                detail: format!("lacks tensor {name}"),
            })?;
            var.set(t)?;
        }
        let moments = candle_core::safetensors::load(ckpt.join("optimizer.safetensors"), device)?;
        opt.load_state(&moments, st.adam_t)?;
        step = st.step;
        loss_curve = st.loss_curve;
        wall_before = st.wall_s;
        on(TrainEvent::Resumed { step });
    }

    let save_checkpoint = |step: usize,
                           opt: &adamw::AdamW,
                           loss_curve: &[LossPoint],
                           wall_s: f64|
     -> Result<(), TrainError> {
        std::fs::create_dir_all(&ckpt).map_err(io(&ckpt))?;
        let weights: HashMap<String, Tensor> = named
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        for (file, tensors) in [
            ("weights.safetensors", weights),
            ("optimizer.safetensors", opt.state()),
        ] {
            let tmp = ckpt.join(format!("{file}.tmp"));
            candle_core::safetensors::save(&tensors, &tmp)?;
            std::fs::rename(&tmp, ckpt.join(file)).map_err(io(&ckpt))?;
        }
        let st = CheckpointState {
            step,
            adam_t: opt.t,
            loss_curve: loss_curve.to_vec(),
            wall_s,
            recipe: r.clone(),
        };
        crate::results::write_atomic(
            &state_path,
            serde_json::to_string(&st).expect("json").as_bytes(),
        )
        .map_err(io(&state_path))
    };

    let session = Instant::now();
    let mut acc = (0.0f64, 0usize, 0.0f64);
    let mut last_log = Instant::now();
    let mut steps_since_log = 0usize;
    while step < r.optim.steps {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            save_checkpoint(
                step,
                &opt,
                &loss_curve,
                wall_before + session.elapsed().as_secs_f64(),
            )?;
            return Err(TrainError::Interrupted { step, dir: ckpt });
        }
        let batch = data.batch(r, step);
        let (l, g) = grads(&batch, step)?;
        let norm = opt.grad_norm(&g)?;
        let scale = if norm > r.optim.grad_clip {
            r.optim.grad_clip / norm
        } else {
            1.0
        };
        let lr = lr_at(&r.optim, step);
        opt.step(&g, lr, scale)?;
        if !l.is_finite() {
            return Err(TrainError::Data(format!(
                "the loss became {l} at step {step}; lower optim.lr in {}",
                recipe_path.display()
            )));
        }
        acc = (acc.0 + l, acc.1 + 1, acc.2 + norm);
        step += 1;
        steps_since_log += 1;
        if step.is_multiple_of(r.log_every) || step == r.optim.steps {
            let mean = acc.0 / acc.1 as f64;
            loss_curve.push(LossPoint {
                step,
                loss: mean,
                lr,
                grad_norm: acc.2 / acc.1 as f64,
            });
            let dt = last_log.elapsed().as_secs_f64().max(1e-9);
            on(TrainEvent::Progress {
                step,
                steps: r.optim.steps,
                loss: mean,
                lr,
                steps_per_s: steps_since_log as f64 / dt,
            });
            acc = (0.0, 0, 0.0);
            last_log = Instant::now();
            steps_since_log = 0;
        }
        if step.is_multiple_of(r.checkpoint_every) && step < r.optim.steps {
            save_checkpoint(
                step,
                &opt,
                &loss_curve,
                wall_before + session.elapsed().as_secs_f64(),
            )?;
        }
    }
    Ok(Optimised {
        steps_done: step,
        loss_curve,
        wall_s: wall_before + session.elapsed().as_secs_f64(),
    })
}

/// Writes training.json and drops the checkpoint, once the output is
/// complete.
pub(crate) fn finish(out: &Path, record: &TrainingRecord) -> Result<(), TrainError> {
    let rp = out.join("training.json");
    crate::results::write_atomic(
        &rp,
        serde_json::to_string_pretty(record)
            .expect("json")
            .as_bytes(),
    )
    .map_err(io(&rp))?;
    let ckpt = out.join("checkpoint");
    if ckpt.is_dir() {
        std::fs::remove_dir_all(&ckpt).map_err(io(&ckpt))?;
    }
    Ok(())
}

/// Trains a recipe into `out`; resumes from `out/checkpoint/` when it
/// holds a checkpoint of the same recipe. `stop` is polled between steps.
pub fn train(
    recipe_path: &Path,
    r: &Recipe,
    out: &Path,
    device: &Device,
    stop: &std::sync::atomic::AtomicBool,
    on: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<TrainingRecord, TrainError> {
    keep_freed_memory();
    match objective::find(&r.objective)
        .expect("validated when loading")
        .trains
    {
        objective::Trains::Model(obj) => train_model(obj, recipe_path, r, out, device, stop, on),
        objective::Trains::EagleHead => {
            head::train_eagle_head(recipe_path, r, out, device, stop, on)
        }
        objective::Trains::Consistency => {
            consistency::train_consistency(recipe_path, r, out, device, stop, on)
        }
        objective::Trains::Learn2pdFilter => {
            filter::train_learn2pd_filter(recipe_path, r, out, device, stop, on)
        }
        objective::Trains::Deer => deer::train_deer(recipe_path, r, out, device, stop, on),
    }
}

/// The recipe's model as trainable variables: random weights by the
/// seed, or the `init` model's.
pub(crate) fn model_vars(
    recipe_path: &Path,
    r: &Recipe,
    cfg: &ModelConfig,
    out: &Path,
    device: &Device,
) -> Result<(Transformer, Vec<(String, Var)>, Option<InitRecord>), TrainError> {
    let varmap = candle_nn::VarMap::new();
    let mut named: Vec<(String, Var)> = Vec::new();
    {
        let mut vars = varmap.data().lock().expect("varmap lock");
        for (name, (shape, v)) in init_weights(cfg, r.seed) {
            let var = Var::from_tensor(&Tensor::from_vec(v, shape, device)?)?;
            vars.insert(name.clone(), var.clone());
            named.push((name, var));
        }
    }
    let init = match init_dir(recipe_path, r) {
        None => None,
        Some(dir) => Some(load_init(&dir, &named, device)?),
    };
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, device);
    let model = Transformer::from_var_builder(vb, cfg, &out.display().to_string())?;
    Ok((model, named, init))
}

fn train_model(
    obj: &'static dyn objective::Objective,
    recipe_path: &Path,
    r: &Recipe,
    out: &Path,
    device: &Device,
    stop: &std::sync::atomic::AtomicBool,
    on: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<TrainingRecord, TrainError> {
    let single = SingleThreadedKernels::enter();
    let data = TrainData::load(recipe_path, r)?;
    let record = train_model_with(
        &|_| obj,
        obj,
        data,
        recipe_path,
        r,
        out,
        device,
        stop,
        on,
        &mut |_, _| Ok(()),
    )?;
    drop(single);
    Ok(record)
}

/// The model training every token-level objective shares: `at_step(step)`
/// is the objective of each step (objectives with stages switch), `eval`
/// the one whose decoding the final evaluation runs; `extend` adds an
/// objective's own evaluation of the trained model to the record. The
/// caller has entered [`SingleThreadedKernels`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_model_with(
    at_step: &dyn Fn(usize) -> &'static dyn objective::Objective,
    obj: &'static dyn objective::Objective,
    data: TrainData,
    recipe_path: &Path,
    r: &Recipe,
    out: &Path,
    device: &Device,
    stop: &std::sync::atomic::AtomicBool,
    on: &mut dyn FnMut(TrainEvent<'_>),
    extend: &mut dyn FnMut(
        &crate::model::LoadedModel,
        &mut TrainingRecord,
    ) -> Result<(), TrainError>,
) -> Result<TrainingRecord, TrainError> {
    // Parallelism comes from micro-batches on worker threads; candle's own
    // kernels run single-threaded inside them.
    let workers = candle_core::utils::get_num_threads().max(1);
    let cfg = model_config(r);
    cfg.validate(recipe_path)?;
    let tok = tokenizer();
    let sp = specials();
    let (model, named, init) = model_vars(recipe_path, r, &cfg, out, device)?;
    let parameters: usize = named.iter().map(|(_, v)| v.elem_count()).sum();
    let fast_path = FastPath::new(&cfg, &named, device);

    let done = optimise(
        recipe_path,
        r,
        out,
        device,
        &named,
        &data,
        stop,
        on,
        &mut |batch: &[&Pair], step: usize| {
            batch_gradients(
                at_step(step),
                &model,
                &named,
                batch,
                StepContext {
                    sp,
                    params: &r.objective_params,
                    micro_batch: r.optim.micro_batch,
                    workers,
                    seed: r.seed,
                    step,
                    fast: fast_path.as_ref(),
                },
            )
        },
    )?;
    write_model_folder(out, &cfg, r, &named)?;

    // Final evaluation, through the same loader as any checkpoint.
    let loaded = load_trained(out, device)?;
    let test = toy::generate(&toy_params(r, Split::Test, r.data.eval_per_task))
        .map_err(|e| TrainError::Data(e.to_string()))?;
    let eval_started = Instant::now();
    let mut evaluation = Vec::new();
    for k in obj.eval_parallelism(&r.objective_params) {
        on(TrainEvent::Evaluating { tokens_per_step: k });
        evaluation.push(evaluate(
            obj,
            &loaded.model,
            &tok,
            &test,
            &r.objective_params,
            k,
            workers,
        )?);
    }
    let mut closed_form_checks = Vec::new();
    let replace_trained =
        r.data.tasks.is_empty() || r.data.tasks.iter().any(|t| t == "replace_random");
    if let (Some(k), true) = (obj.full_parallelism(&r.objective_params), replace_trained) {
        closed_form_checks.push(replace_check(obj, &loaded.model, &tok, r, k)?);
    }
    let eval_wall_s = eval_started.elapsed().as_secs_f64();
    let mut record = TrainingRecord {
        init,
        evaluation,
        closed_form_checks,
        eval_wall_s,
        ..TrainingRecord::of_run(recipe_path, r, parameters, done, workers)
    };
    let extra_started = Instant::now();
    extend(&loaded, &mut record)?;
    record.eval_wall_s += extra_started.elapsed().as_secs_f64();
    finish(out, &record)?;
    on(TrainEvent::Done { record: &record });
    Ok(record)
}

/// Makes candle's kernels single-threaded while alive, restoring the
/// settings on drop. candle reads RAYON_NUM_THREADS at every matmul, and
/// sizes its spinning elementwise pool from CANDLE_NUM_THREADS once, at
/// its first use: training must enter this before any tensor work, or that
/// pool's spinning workers compete with ours for the cores.
pub(crate) struct SingleThreadedKernels(Vec<(&'static str, Option<String>)>);

impl SingleThreadedKernels {
    pub(crate) fn enter() -> Self {
        let vars = ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"];
        let before = vars.map(|k| (k, std::env::var(k).ok())).to_vec();
        for k in vars {
            std::env::set_var(k, "1");
        }
        Self(before)
    }
}

impl Drop for SingleThreadedKernels {
    fn drop(&mut self) {
        for (k, v) in &self.0 {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
}

/// What a training step needs besides the model and the batch.
struct StepContext<'a> {
    sp: Specials,
    params: &'a ObjectiveParams,
    micro_batch: usize,
    workers: usize,
    seed: u64,
    step: usize,
    /// The hand-written CPU pass, where it applies.
    fast: Option<&'a FastPath>,
}

/// Gradients by parameter name.
pub type NamedGrads = HashMap<String, Tensor>;

/// The hand-written CPU forward/backward ([`fast`]) for a llama-family
/// model whose every parameter it knows: the shapes, the rope tables and
/// the parameter names in its order.
struct FastPath {
    dims: fast::Dims,
    names: Vec<String>,
    /// cos/sin per position, `max_positions × head_dim/2`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl FastPath {
    /// `None` where the pass does not apply (a device, another dtype or
    /// parameters it does not know), so that autograd computes the step.
    fn new(cfg: &ModelConfig, named: &[(String, Var)], device: &Device) -> Option<Self> {
        if !device.is_cpu() || cfg.rope_interleaved || cfg.rope_scaling.is_some() {
            return None;
        }
        let dims = fast::Dims::of(cfg);
        let names = dims.names();
        if named
            .iter()
            .any(|(n, v)| !names.contains(n) || v.dtype() != DType::F32)
        {
            return None;
        }
        let inv = crate::model::config::rope_inv_freq(cfg);
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in 0..cfg.max_position_embeddings {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Some(Self {
            dims,
            names,
            cos,
            sin,
        })
    }

    /// The current weights, in the pass's order.
    fn params(&self, named: &[(String, Var)]) -> candle_core::Result<fast::Params> {
        let by_name: HashMap<&str, &Var> = named.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let mut out = Vec::with_capacity(self.names.len());
        for n in &self.names {
            out.push(match by_name.get(n.as_str()) {
                Some(v) => v.as_tensor().flatten_all()?.to_vec1::<f32>()?,
                None => Vec::new(),
            });
        }
        Ok(fast::Params(out))
    }

    /// Loss sum and gradients of one token batch.
    fn loss_and_grads(
        &self,
        w: &fast::Params,
        tb: &objective::TokenBatch,
        pad: u32,
    ) -> candle_core::Result<(f64, fast::Params)> {
        let p = tb.padded(pad);
        let half = self.dims.head_dim / 2;
        let max = self.cos.len() / half.max(1);
        if let Some(&bad) = p.positions.iter().find(|&&q| q as usize >= max) {
            candle_core::bail!("position {bad} is past the model's {max} positions");
        }
        let table = |t: &[f32]| -> Vec<f32> {
            p.positions
                .iter()
                .flat_map(|&q| t[q as usize * half..][..half].iter().copied())
                .collect()
        };
        let (cos, sin) = (table(&self.cos), table(&self.sin));
        Ok(fast::loss_and_grads(
            &self.dims,
            w,
            &fast::Batch {
                rows: p.rows,
                len: p.len,
                ids: &p.ids,
                bias: &p.bias,
                cos: &cos,
                sin: &sin,
                targets: &p.targets,
                weights: &p.weights,
            },
        ))
    }
}

/// `f(i)` for every `i < n`, taken by `workers` threads largest `i` first
/// (length-sorted micro-batches: the longest first), returned in index
/// order, so that results never depend on which thread ran what.
pub(crate) fn on_workers<T: Send>(
    n: usize,
    workers: usize,
    f: impl Fn(usize) -> T + Sync,
) -> Vec<T> {
    let slots: Vec<std::sync::Mutex<Option<T>>> =
        (0..n).map(|_| std::sync::Mutex::new(None)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || loop {
        let taken = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if taken >= n {
            break;
        }
        let i = n - 1 - taken;
        let r = f(i);
        *slots[i].lock().expect("worker slot") = Some(r);
    };
    let workers = workers.clamp(1, n.max(1));
    if workers == 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(work);
            }
        });
    }
    slots
        .into_iter()
        .map(|s| {
            s.into_inner()
                .expect("worker slot")
                .expect("every index ran")
        })
        .collect()
}

/// One micro-batch's loss sum, normaliser and gradients.
enum MicroGrads {
    Autograd(candle_core::backprop::GradStore),
    Fast(fast::Params),
}

type MicroResult = candle_core::Result<(f64, f64, MicroGrads)>;

/// The batch's loss and its gradients. The batch is sorted by length and
/// cut into micro-batches (less padding), which `workers` threads take
/// longest first; each micro-batch draws its noise from (seed, step,
/// index), and gradients are summed in index order, so the result does not
/// depend on which thread computed what.
fn batch_gradients(
    obj: &dyn objective::Objective,
    model: &Transformer,
    named: &[(String, Var)],
    batch: &[&Pair],
    cx: StepContext<'_>,
) -> candle_core::Result<(f64, NamedGrads)> {
    let mut sorted: Vec<&Pair> = batch.to_vec();
    sorted.sort_by_key(|p| p.prompt.len() + p.answer.len());
    let chunks: Vec<&[&Pair]> = sorted.chunks(cx.micro_batch.max(1)).collect();
    let weights = match cx.fast {
        Some(f) => Some(f.params(named)?),
        None => None,
    };
    let results = on_workers(chunks.len(), cx.workers, |i| -> MicroResult {
        let mut rng = ChaCha20Rng::seed_from_u64(
            cx.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (cx.step as u64)
                    .wrapping_add(1)
                    .wrapping_mul(0xD1B5_4A32_D192_ED03)
                ^ (i as u64).wrapping_add(1),
        );
        obj.token_batch(chunks[i], cx.sp, cx.params, &mut rng)
            .and_then(|tb| match (cx.fast, &weights) {
                (Some(f), Some(w)) => {
                    let (sum, g) = f.loss_and_grads(w, &tb, cx.sp.pad)?;
                    Ok((sum, tb.norm, MicroGrads::Fast(g)))
                }
                _ => {
                    let t = objective::autograd_loss(model, &tb, cx.sp.pad)?;
                    let grads = t.sum.backward()?;
                    Ok((
                        t.sum.to_scalar::<f32>()? as f64,
                        t.norm,
                        MicroGrads::Autograd(grads),
                    ))
                }
            })
    });
    let done = results
        .into_iter()
        .collect::<candle_core::Result<Vec<_>>>()?;
    let total_norm: f64 = done.iter().map(|d| d.1).sum::<f64>().max(1e-12);
    let loss = done.iter().map(|d| d.0).sum::<f64>() / total_norm;
    let mut out = NamedGrads::new();
    match cx.fast {
        Some(f) => {
            let mut sum: Option<fast::Params> = None;
            for (_, _, g) in done {
                let MicroGrads::Fast(g) = g else {
                    unreachable!("one path per step")
                };
                match &mut sum {
                    None => sum = Some(g),
                    Some(s) => s.add_assign(&g),
                }
            }
            let sum = sum.expect("a non-empty batch");
            let by_name: HashMap<&str, &Var> = named.iter().map(|(n, v)| (n.as_str(), v)).collect();
            for (name, g) in f.names.iter().zip(sum.0) {
                if let Some(v) = by_name.get(name.as_str()) {
                    let g: Vec<f32> = g
                        .into_iter()
                        .map(|x| (x as f64 / total_norm) as f32)
                        .collect();
                    out.insert(name.clone(), Tensor::from_vec(g, v.shape(), v.device())?);
                }
            }
        }
        None => {
            let mut stores: Vec<_> = done
                .into_iter()
                .map(|d| match d.2 {
                    MicroGrads::Autograd(g) => g,
                    MicroGrads::Fast(_) => unreachable!("one path per step"),
                })
                .collect();
            out = sum_stores(named, &mut stores, total_norm)?;
        }
    }
    Ok((loss, out))
}

/// Each variable's gradient summed over autograd stores in their order,
/// over `divisor`.
pub(crate) fn sum_stores(
    named: &[(String, Var)],
    stores: &mut [candle_core::backprop::GradStore],
    divisor: f64,
) -> candle_core::Result<NamedGrads> {
    let mut out = NamedGrads::new();
    for (name, var) in named {
        let mut g: Option<Tensor> = None;
        for st in stores.iter_mut() {
            if let Some(o) = st.remove(var.as_tensor()) {
                g = Some(match g {
                    Some(g) => (g + o)?,
                    None => o,
                });
            }
        }
        if let Some(g) = g {
            out.insert(name.clone(), (g / divisor)?);
        }
    }
    Ok(out)
}

/// Greedy decoding of the test items at `tokens_per_step`, scored by the
/// toy scorer. Items are shared out to `workers` threads; the sums are
/// taken in item order, so the result does not depend on the threads.
pub fn evaluate(
    obj: &dyn objective::Objective,
    model: &Transformer,
    tok: &tokenizers::Tokenizer,
    test: &[toy::Item],
    p: &ObjectiveParams,
    tokens_per_step: usize,
    workers: usize,
) -> Result<EvalResult, TrainError> {
    let sp = specials();
    let scored = on_workers(
        test.len(),
        workers,
        |i| -> Result<(f64, usize, usize), TrainError> {
            let it = &test[i];
            let prompt = encode(tok, &it.prompt)?;
            let (answer, calls) = obj.decode(
                model,
                &prompt,
                sp,
                p,
                48,
                &mut objective::EvalDecoding::greedy(tokens_per_step),
            )?;
            let text = tok
                .decode(&answer, true)
                .map_err(|e| TrainError::Data(format!("toy tokenizer: {e}")))?;
            Ok((
                toy::score(&text, &it.reference).unwrap_or(0.0),
                answer.len() + 1,
                calls,
            ))
        },
    );
    let mut per_task: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let (mut gen_tokens, mut forwards) = (0usize, 0usize);
    for (it, r) in test.iter().zip(scored) {
        let (s, tokens, calls) = r?;
        gen_tokens += tokens;
        forwards += calls;
        let e = per_task.entry(it.task.clone()).or_default();
        e.0 += s;
        e.1 += 1;
    }
    let per_task: BTreeMap<String, f64> = per_task
        .into_iter()
        .map(|(t, (s, n))| (t, 100.0 * s / n as f64))
        .collect();
    let mean_of = |det: bool| {
        let v: Vec<f64> = per_task
            .iter()
            .filter(|(t, _)| toy::is_deterministic(t) == Some(det))
            .map(|(_, &s)| s)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    Ok(EvalResult {
        tokens_per_step,
        items: test.len(),
        deterministic: mean_of(true),
        random: mean_of(false),
        per_task,
        tokens_per_forward: gen_tokens as f64 / forwards.max(1) as f64,
    })
}

/// Reads a recipe's starting weights into `named`, checking every tensor's
/// presence and shape.
fn load_init(
    dir: &Path,
    named: &[(String, Var)],
    device: &Device,
) -> Result<InitRecord, TrainError> {
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).map_err(io(&file))?;
    let bad = |detail: String| TrainError::Recipe {
        path: file.clone(),
        detail: format!("field `init`: {detail}"),
    };
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    for (name, var) in named {
        let t = tensors
            .get(name)
            .ok_or_else(|| bad(format!("lacks tensor {name}, which the recipe's model has")))?;
        if t.dims() != var.dims() {
            return Err(bad(format!(
                "tensor {name} has shape {:?}, the recipe's model needs {:?}",
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t.to_dtype(DType::F32)?)?;
    }
    Ok(InitRecord {
        path: dir.display().to_string(),
        sha256: crate::store::sha256_bytes(&bytes),
    })
}

/// [`ClosedFormCheck`] on 3-name random replacement: test items sampled at
/// temperature 1 with the whole answer region decoded in one forward.
fn replace_check(
    obj: &dyn objective::Objective,
    model: &Transformer,
    tok: &tokenizers::Tokenizer,
    r: &Recipe,
    tokens_per_step: usize,
) -> Result<ClosedFormCheck, TrainError> {
    const N: usize = 3;
    const ITEMS: usize = 300;
    let items = toy::generate(&ToyParams {
        split: Split::Test,
        per_task: ITEMS,
        seed: r.data.seed,
        tasks: vec!["replace_random".into()],
        list_len: [N, N],
        distinct: true,
    })
    .map_err(|e| TrainError::Data(e.to_string()))?;
    let mut rng = ChaCha20Rng::seed_from_u64(r.seed ^ 0x44_44);
    let mut valid = 0.0;
    for it in &items {
        let prompt = encode(tok, &it.prompt)?;
        let (answer, _) = obj.decode(
            model,
            &prompt,
            specials(),
            &r.objective_params,
            48,
            &mut objective::EvalDecoding {
                tokens_per_step,
                sample: Some(&mut rng),
            },
        )?;
        let text = tok
            .decode(&answer, true)
            .map_err(|e| TrainError::Data(format!("toy tokenizer: {e}")))?;
        valid += toy::score(&text, &it.reference).unwrap_or(0.0);
    }
    let n = N as f64;
    Ok(ClosedFormCheck {
        task: "replace_random".into(),
        list_len: N,
        tokens_per_step,
        temperature: 1.0,
        items: items.len(),
        valid_pct: 100.0 * valid / items.len() as f64,
        closed_form_pct: 100.0 * n * (1.0 / n) * ((n - 1.0) / n).powi(N as i32 - 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ExplicitMask;
    use crate::model::Mask;
    use objective::TokenBatch;

    fn tiny(arch: Architecture, tied: bool) -> ModelConfig {
        ModelConfig {
            architecture: arch,
            vocab_size: 23,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 4,
            max_position_embeddings: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            rope_interleaved: false,
            qkv_bias: arch == Architecture::Qwen2,
            tie_word_embeddings: tied,
        }
    }

    /// The hand-written pass computes candle autograd's loss and gradients,
    /// with grouped-query attention, qkv biases, an untied head, padding,
    /// causal, bidirectional and explicit masks and explicit positions.
    #[test]
    fn the_fast_pass_matches_autograd() {
        for (arch, tied) in [(Architecture::Llama, true), (Architecture::Qwen2, false)] {
            let cfg = tiny(arch, tied);
            let mut rng = ChaCha20Rng::seed_from_u64(3);
            let varmap = candle_nn::VarMap::new();
            let mut named = Vec::new();
            {
                let mut data = varmap.data().lock().unwrap();
                for (name, (shape, v)) in init_weights(&cfg, 1) {
                    // Random values everywhere, biases and gains included.
                    let v: Vec<f32> = v.iter().map(|_| rng.random_range(-0.5..0.5)).collect();
                    let var = Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
                        .unwrap();
                    data.insert(name.clone(), var.clone());
                    named.push((name, var));
                }
            }
            if !tied {
                assert!(named.iter().any(|(n, _)| n == "lm_head.weight"));
            }
            let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let model = Transformer::from_var_builder(vb, &cfg, "test").unwrap();
            let mut explicit = ExplicitMask::new(7, 7);
            for q in 0..7 {
                for k in 0..7 {
                    explicit.set(q, k, k <= q || (k + q) % 3 == 0);
                }
            }
            let rows: Vec<Vec<u32>> = vec![
                (0..9).map(|i| (i * 5 + 1) % 23).collect(),
                (0..5).map(|i| (i * 7 + 2) % 23).collect(),
                (0..7).map(|i| (i * 3 + 4) % 23).collect(),
            ];
            let targets: Vec<Vec<(u32, f32)>> = rows
                .iter()
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .map(|(j, &t)| {
                            (
                                (t * 2 + 1) % 23,
                                if j % 3 == 1 { 0.0 } else { 0.5 + j as f32 },
                            )
                        })
                        .collect()
                })
                .collect();
            let tb = TokenBatch {
                positions: Some(vec![
                    (0..9).collect(),
                    vec![3, 4, 5, 6, 7],
                    vec![0, 1, 2, 3, 1, 2, 3],
                ]),
                masks: vec![Mask::Causal, Mask::Bidirectional, Mask::Explicit(explicit)],
                rows,
                targets,
                norm: 1.0,
            };
            let want = objective::autograd_loss(&model, &tb, 0).unwrap();
            let grads = want.sum.backward().unwrap();
            let fp = FastPath::new(&cfg, &named, &Device::Cpu).expect("the pass applies");
            let w = fp.params(&named).unwrap();
            let (sum, got) = fp.loss_and_grads(&w, &tb, 0).unwrap();
            let want_sum = want.sum.to_scalar::<f32>().unwrap() as f64;
            assert!(
                (sum - want_sum).abs() < 1e-4 * want_sum.abs().max(1.0),
                "{sum} vs {want_sum}"
            );
            let by_name: HashMap<&str, &Var> = named.iter().map(|(n, v)| (n.as_str(), v)).collect();
            for (name, g) in fp.names.iter().zip(&got.0) {
                let Some(v) = by_name.get(name.as_str()) else {
                    assert!(g.is_empty(), "{name}");
                    continue;
                };
                let want = grads
                    .get(v.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let scale = want.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
                let diff = want
                    .iter()
                    .zip(g)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    diff < 1e-4 * scale,
                    "{arch:?} {name}: max |Δ| {diff} (scale {scale})"
                );
            }
        }
    }

    /// The fast pass at the zoo target's shapes (head_dim 32, MHA, the toy
    /// vocabulary), its initial weights and answer-length rows: blocked
    /// kernels take other paths at these sizes than at the tiny ones.
    #[test]
    fn the_fast_pass_matches_autograd_at_the_targets_shapes() {
        let (_, r) = load_recipe("toy-target").unwrap();
        let cfg = model_config(&r);
        let varmap = candle_nn::VarMap::new();
        let mut named = Vec::new();
        {
            let mut data = varmap.data().lock().unwrap();
            for (name, (shape, v)) in init_weights(&cfg, 5) {
                let var =
                    Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap();
                data.insert(name.clone(), var.clone());
                named.push((name, var));
            }
        }
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = Transformer::from_var_builder(vb, &cfg, "test").unwrap();
        let v = cfg.vocab_size as u32;
        let lens = [41usize, 23, 37, 12];
        let rows: Vec<Vec<u32>> = lens
            .iter()
            .enumerate()
            .map(|(r, &n)| (0..n).map(|i| ((i * 7 + r * 13 + 3) as u32) % v).collect())
            .collect();
        let targets: Vec<Vec<(u32, f32)>> = rows
            .iter()
            .map(|row| {
                row.iter()
                    .enumerate()
                    .map(|(j, &t)| ((t * 3 + 1) % v, if j < 5 { 0.0 } else { 1.0 }))
                    .collect()
            })
            .collect();
        let tb = TokenBatch {
            positions: None,
            masks: vec![Mask::Causal; rows.len()],
            rows,
            targets,
            norm: 100.0,
        };
        let want = objective::autograd_loss(&model, &tb, 0).unwrap();
        let grads = want.sum.backward().unwrap();
        let fp = FastPath::new(&cfg, &named, &Device::Cpu).expect("the pass applies");
        let w = fp.params(&named).unwrap();
        let (sum, got) = fp.loss_and_grads(&w, &tb, 0).unwrap();
        let want_sum = want.sum.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (sum - want_sum).abs() < 1e-4 * want_sum.abs().max(1.0),
            "{sum} vs {want_sum}"
        );
        let by_name: HashMap<&str, &Var> = named.iter().map(|(n, v)| (n.as_str(), v)).collect();
        for (name, g) in fp.names.iter().zip(&got.0) {
            let Some(v) = by_name.get(name.as_str()) else {
                continue;
            };
            let want = grads
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let scale = want.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
            let diff = want
                .iter()
                .zip(g)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff < 1e-3 * scale,
                "{name}: max |Δ| {diff} (scale {scale})"
            );
        }
    }
}
