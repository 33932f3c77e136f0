//! `pdbench bench --kernels`: each GGUF weight format's matvec on its own,
//! on the model's real tensors, beside the bandwidth of the same bytes.
//!
//! Decoding one token reads every weight once, so a kernel that keeps up
//! with memory runs a pass over its format's tensors in bytes ÷ bandwidth.
//! Three figures tell whether it does: the pass over all of the format's
//! tensors (streamed from memory), the host's streaming read measured in
//! the same process and thread count, and a hot pass over one slice that
//! stays in L2 (compute alone, also in cycles per block).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use serde::{Deserialize, Serialize};

use super::{Clock, MonotonicClock};
use crate::model::kernels::FastQ;

/// Bytes of packed weights a hot pass reads: inside a 1 MiB L2 with room to
/// spare, and enough work to time.
const HOT_BYTES: usize = 256 << 10;
/// Bytes the streaming read covers: far beyond any last-level cache here.
const STREAM_BYTES: usize = 512 << 20;

/// One format's matvec kernel on one model, at one thread count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelRow {
    pub model: String,
    pub threads: usize,
    /// GGUF block type (`Q4K`, `Q6K`, ...).
    pub format: String,
    /// The kernel that ran: pdbench's (format and instruction set) or
    /// `candle` where pdbench has none for the tensor.
    pub kernel: String,
    pub tensors: usize,
    /// Weight blocks (32 or 256 values of one output column) per pass.
    pub blocks: usize,
    /// Bytes one pass over the format's tensors reads.
    pub bytes: usize,
    /// Median wall time of a pass over all the format's tensors.
    pub pass_ns: f64,
    pub pass_gb_per_s: f64,
    /// The host's streaming read, same process and thread count.
    pub stream_gb_per_s: f64,
    /// pass_gb_per_s ÷ stream_gb_per_s, in percent: 100 is memory-bound.
    pub pct_of_stream: f64,
    /// A pass over one L2-resident slice, per block, activations quantized
    /// beforehand: the kernel's compute alone.
    pub hot_ns_per_block: f64,
    /// `hot_ns_per_block` in core cycles (the clock estimated by a chain of
    /// dependent adds); `None` off x86-64.
    pub hot_cycles_per_block: Option<f64>,
    /// The core clock the cycles are counted in, estimated in this run.
    #[serde(default)]
    pub core_ghz: Option<f64>,
    /// What a pass would take at the streaming bandwidth, per block.
    pub stream_ns_per_block: f64,
}

/// A weight the backbone multiplies by in each decoded token.
struct Weight {
    fast: Option<FastQ>,
    q: Arc<QTensor>,
    k: usize,
    bytes: usize,
    blocks: usize,
}

impl Weight {
    fn pass(&self, x: &[f32], x_t: &Tensor, dst: &mut [f32]) -> Result<()> {
        match &self.fast {
            Some(f) => f.matvec(x, None, dst),
            None => {
                let y = QMatMul::QTensor(self.q.clone()).forward(x_t)?;
                std::hint::black_box(y);
            }
        }
        Ok(())
    }
}

fn dtype_name(d: GgmlDType) -> String {
    format!("{d:?}")
}

/// The model's per-token weights, by format.
fn weights_by_format(path: &Path) -> Result<Vec<(String, Vec<Weight>)>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let ct =
        gguf_file::Content::read(&mut f).with_context(|| format!("reading {}", path.display()))?;
    let tied = !ct.tensor_infos.contains_key("output.weight");
    let mut names: Vec<&String> = ct
        .tensor_infos
        .iter()
        .filter(|(name, info)| {
            info.shape.dims().len() == 2 && (name.as_str() != "token_embd.weight" || tied)
        })
        .map(|(n, _)| n)
        .collect();
    names.sort();
    let mut out: Vec<(String, Vec<Weight>)> = Vec::new();
    for name in names {
        let q = Arc::new(ct.tensor(&mut f, name, &Device::Cpu)?);
        let dtype = q.dtype();
        if matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            continue;
        }
        let (n, k) = q.shape().dims2()?;
        let blocks = n * k / dtype.block_size();
        let bytes = n * k / dtype.block_size() * dtype.type_size();
        let w = Weight {
            fast: FastQ::new(&q),
            q,
            k,
            bytes,
            blocks,
        };
        let key = format!(
            "{}{}",
            dtype_name(dtype),
            if w.fast.is_some() { "" } else { " (candle)" }
        );
        match out.iter_mut().find(|(f, _)| *f == key) {
            Some((_, v)) => v.push(w),
            None => out.push((key, vec![w])),
        }
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The host's streaming read in GB/s at the pool's thread count: a sum over
/// `STREAM_BYTES`, best of three after one warm-up.
pub fn stream_gb_per_s(clock: &dyn Clock) -> f64 {
    let words = STREAM_BYTES / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let chunks = 64;
    let per = words / chunks;
    let mut best = 0f64;
    for rep in 0..4 {
        let t0 = clock.now_ns();
        let total = std::sync::atomic::AtomicU64::new(0);
        crate::model::pool::execute_chunked(chunks, |range| {
            let mut s = 0u64;
            for c in range {
                // Eight independent sums, so the adds keep up with memory.
                let mut acc = [0u64; 8];
                for w in buf[c * per..(c + 1) * per].chunks_exact(8) {
                    for i in 0..8 {
                        acc[i] = acc[i].wrapping_add(w[i]);
                    }
                }
                s = acc.iter().fold(s, |a, &b| a.wrapping_add(b));
            }
            total.fetch_add(s, std::sync::atomic::Ordering::Relaxed);
        });
        std::hint::black_box(total.into_inner());
        let ns = (clock.now_ns() - t0) as f64;
        if rep > 0 {
            best = best.max((per * chunks * 8) as f64 / ns);
        }
    }
    best
}

/// Core cycles per nanosecond, from a chain of dependent 64-bit multiplies
/// (3 cycles each on Intel cores since Nehalem and on AMD Zen; a chain of
/// adds will not do, as recent Intel cores fold immediate adds at rename).
pub fn cycles_per_ns(clock: &dyn Clock) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        const ITERS: u64 = 10_000_000;
        let mut best = 0f64;
        for _ in 0..3 {
            let t0 = clock.now_ns();
            // SAFETY: plain register arithmetic and a loop; no memory.
            unsafe {
                std::arch::asm!(
                    "2:",
                    "imul {x}, {x}", "imul {x}, {x}", "imul {x}, {x}", "imul {x}, {x}",
                    "imul {x}, {x}", "imul {x}, {x}", "imul {x}, {x}", "imul {x}, {x}",
                    "dec {n}",
                    "jnz 2b",
                    n = inout(reg) ITERS => _,
                    x = inout(reg) 3u64 => _,
                    options(nomem, nostack),
                );
            }
            let ns = (clock.now_ns() - t0) as f64;
            best = best.max(3.0 * 8.0 * ITERS as f64 / ns);
        }
        Some(best)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = clock;
        None
    }
}

/// Every format's kernel on the GGUF at `path`, at the current pool size.
pub fn bench_kernels(
    label: &str,
    path: &Path,
    threads: usize,
    repeats: usize,
) -> Result<Vec<KernelRow>> {
    let clock = MonotonicClock::new();
    let stream = stream_gb_per_s(&clock);
    let ghz = cycles_per_ns(&clock);
    let mut rows = Vec::new();
    for (format, weights) in weights_by_format(path)? {
        let max_k = weights.iter().map(|w| w.k).max().unwrap_or(0);
        let max_n = weights
            .iter()
            .map(|w| w.q.shape().dims()[0])
            .max()
            .unwrap_or(0);
        let x: Vec<f32> = (0..max_k)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let x_for = |k: usize| &x[..k];
        let tensors: Vec<Tensor> = weights
            .iter()
            .map(|w| Tensor::from_slice(x_for(w.k), (1, w.k), &Device::Cpu))
            .collect::<candle_core::Result<_>>()?;
        let mut dst = vec![0f32; max_n];
        let bytes: usize = weights.iter().map(|w| w.bytes).sum();
        let blocks: usize = weights.iter().map(|w| w.blocks).sum();
        let mut pass = Vec::new();
        for rep in 0..=repeats {
            let t0 = clock.now_ns();
            for (w, t) in weights.iter().zip(&tensors) {
                w.pass(x_for(w.k), t, &mut dst)?;
            }
            let ns = (clock.now_ns() - t0) as f64;
            if rep > 0 {
                pass.push(ns);
            }
        }
        let pass_ns = median(pass);
        // Hot: the first tiles of the largest tensor that fit HOT_BYTES.
        let hot = weights
            .iter()
            .filter(|w| w.fast.is_some())
            .max_by_key(|w| w.bytes)
            .map(|w| {
                let f = w.fast.as_ref().expect("filtered");
                let per_group = f.packed_bytes(Some(1)).max(1);
                let groups = (HOT_BYTES / per_group).max(1);
                let (_, k) = f.shape();
                let block_elems = w.q.dtype().block_size();
                let hot_blocks = groups * 8 * k / block_elems;
                let reps = (64 << 20) / (groups * per_group).max(1) + 1;
                let acts = f.prepare(x_for(k));
                let mut samples = Vec::new();
                for rep in 0..=repeats.max(3) {
                    let t0 = clock.now_ns();
                    for _ in 0..reps {
                        f.matvec_prepared(&acts, Some(groups), &mut dst);
                    }
                    let ns = (clock.now_ns() - t0) as f64;
                    if rep > 0 {
                        samples.push(ns / (reps * hot_blocks) as f64);
                    }
                }
                median(samples)
            })
            .unwrap_or(f64::NAN);
        let gbps = bytes as f64 / pass_ns;
        let kernel = weights
            .iter()
            .find_map(|w| w.fast.as_ref().map(|f| f.kernel_name()))
            .unwrap_or_else(|| "candle".into());
        rows.push(KernelRow {
            model: label.into(),
            threads,
            format: format.split(' ').next().unwrap_or("").into(),
            kernel,
            tensors: weights.len(),
            blocks,
            bytes,
            pass_ns,
            pass_gb_per_s: gbps,
            stream_gb_per_s: stream,
            pct_of_stream: 100.0 * gbps / stream,
            hot_ns_per_block: hot,
            hot_cycles_per_block: ghz.filter(|_| hot.is_finite()).map(|g| hot * g),
            core_ghz: ghz,
            stream_ns_per_block: bytes as f64 / stream / blocks as f64,
        });
    }
    Ok(rows)
}

/// The start-up measurement's choice of instruction set for one format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelChoice {
    /// GGUF block type (`Q4K`, ...).
    pub format: String,
    /// The instruction set chosen (`avx512vnni`, `avx2`).
    pub isa: String,
    /// Each candidate and its time per weight block (the best of the
    /// rounds), on an L2-resident synthetic weight.
    pub candidates: Vec<(String, f64)>,
}

/// Rounds of the start-up measurement; candidates alternate within each.
const TUNE_ROUNDS: usize = 5;
/// A candidate must beat the flags' first choice by this much to replace
/// it, so that noise does not flip the choice from run to run.
const TUNE_MARGIN: f64 = 0.03;

/// Chooses, once per process, the faster instruction set for each format
/// by timing each candidate on an L2-resident weight of that format
/// (`[128, 2048]`, or `[128, 2080]` for the 32-blocks). Every candidate
/// computes the same bits, so the choice changes speed, never results.
/// Call it before loading models (after the pool is sized); returns the
/// choices, which runs record in their manifest.
pub fn tune() -> Vec<KernelChoice> {
    static DONE: std::sync::OnceLock<Vec<KernelChoice>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| tune_now().unwrap_or_default()).clone()
}

fn tune_now() -> Result<Vec<KernelChoice>> {
    use crate::model::kernels::{candidate_isas, choose_isa, FORMATS};
    let isas = candidate_isas();
    if isas.len() < 2 {
        return Ok(isas
            .first()
            .map(|isa| {
                FORMATS
                    .iter()
                    .map(|f| KernelChoice {
                        format: dtype_name(*f),
                        isa: isa.name().into(),
                        candidates: vec![],
                    })
                    .collect()
            })
            .unwrap_or_default());
    }
    let clock = MonotonicClock::new();
    let mut out = Vec::new();
    for format in FORMATS {
        let (n, k) = if format.block_size() == 256 {
            (128, 2048)
        } else {
            (128, 2080)
        };
        let values: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.618).sin()).collect();
        let w = Tensor::from_vec(values, (n, k), &Device::Cpu)?;
        let q = Arc::new(QTensor::quantize(&w, format)?);
        let x: Vec<f32> = (0..k).map(|i| ((i as f32) * 0.377).cos()).collect();
        let fasts: Vec<FastQ> = isas
            .iter()
            .filter_map(|&isa| FastQ::with_isa(&q, isa))
            .collect();
        if fasts.len() != isas.len() {
            continue;
        }
        let blocks = (n * k / format.block_size()) as f64;
        let acts = fasts[0].prepare(&x);
        let mut dst = vec![0f32; n];
        let reps = 32;
        let mut best = vec![f64::INFINITY; fasts.len()];
        for round in 0..=TUNE_ROUNDS {
            for (i, f) in fasts.iter().enumerate() {
                let t0 = clock.now_ns();
                for _ in 0..reps {
                    f.matvec_prepared(&acts, None, &mut dst);
                }
                let ns = (clock.now_ns() - t0) as f64 / (reps as f64 * blocks);
                if round > 0 {
                    best[i] = best[i].min(ns);
                }
            }
        }
        let fastest = (0..best.len())
            .min_by(|&a, &b| best[a].total_cmp(&best[b]))
            .unwrap_or(0);
        let pick = if best[fastest] < best[0] * (1.0 - TUNE_MARGIN) {
            fastest
        } else {
            0
        };
        choose_isa(format, isas[pick]);
        out.push(KernelChoice {
            format: dtype_name(format),
            isa: isas[pick].name().into(),
            candidates: isas
                .iter()
                .map(|i| i.name().to_string())
                .zip(best)
                .collect(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::{candidate_isas, kernel_for, FORMATS};

    #[test]
    fn the_clock_estimate_is_a_plausible_core_clock() {
        if let Some(ghz) = cycles_per_ns(&MonotonicClock::new()) {
            assert!((0.5..7.0).contains(&ghz), "{ghz} GHz");
        }
    }

    #[test]
    fn tuning_picks_a_candidate_per_format_and_the_kernels_use_it() {
        let isas = candidate_isas();
        let choices = tune();
        if isas.is_empty() {
            assert!(choices.is_empty());
            return;
        }
        assert_eq!(choices.len(), FORMATS.len(), "{choices:?}");
        for (c, f) in choices.iter().zip(FORMATS) {
            assert_eq!(c.format, dtype_name(f));
            assert!(isas.iter().any(|i| i.name() == c.isa), "{c:?}");
            if isas.len() > 1 {
                assert_eq!(c.candidates.len(), isas.len());
                assert!(c
                    .candidates
                    .iter()
                    .all(|(_, ns)| ns.is_finite() && *ns > 0.0));
            }
            // The weights loaded afterwards report the chosen set.
            let (n, k) = if f.block_size() == 256 {
                (16, 512)
            } else {
                (16, 96)
            };
            assert_eq!(
                kernel_for(f, n, k),
                format!("{} {}", dtype_name(f).to_lowercase(), c.isa)
            );
        }
    }

    #[test]
    fn every_candidate_computes_the_same_bits() {
        for format in FORMATS {
            let (n, k) = if format.block_size() == 256 {
                (32, 1024)
            } else {
                (32, 1056)
            };
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.3)
                .collect();
            let q = Arc::new(
                QTensor::quantize(&Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap(), format)
                    .unwrap(),
            );
            let x: Vec<f32> = (0..k)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                .collect();
            let outs: Vec<Vec<u32>> = candidate_isas()
                .into_iter()
                .filter_map(|isa| FastQ::with_isa(&q, isa))
                .map(|f| {
                    let mut y = vec![0f32; n];
                    f.matvec(&x, None, &mut y);
                    y.iter().map(|v| v.to_bits()).collect()
                })
                .collect();
            assert!(outs.windows(2).all(|p| p[0] == p[1]), "{format:?}");
        }
    }
}
