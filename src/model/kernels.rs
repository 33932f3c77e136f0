//! CPU matmul kernels for GGUF block types (Q4_1, Q5_0, Q8_0, Q4_K, Q6_K).
//!
//! They compute exactly what candle computes when it decodes one token on
//! an AVX2 machine: activations are quantized by candle's own `from_float`,
//! each block's integer dot product is exact, and the float accumulation
//! follows candle's expressions in candle's order, one SIMD lane per output
//! column. Results are bit-identical to candle's single-row results, for
//! any number of rows: every row is computed alike, which keeps the
//! backbone row-invariant (see `attention`). Candle itself is not: its
//! Q6_K switches kernels between one row and many.
//!
//! What changes is speed. Weights are repacked at load time, byte for byte,
//! into tiles of 8 columns, so one step covers 8 columns with AVX2 (or
//! AVX512-VNNI) integer dot products, rows of a prefill share each unpacked
//! tile, and work is spread over candle's own thread pool.

use std::sync::Arc;

use candle_core::quantized::k_quants::{BlockQ8K, BlockQ8_0, BlockQ8_1};
use candle_core::quantized::{GgmlDType, GgmlType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

/// Columns per tile.
const TILE: usize = 8;
/// Activation rows that share one unpacking of a weight tile (prefill).
const ROWS: usize = 4;

#[repr(C)]
#[derive(Clone, Copy)]
struct Q4_1 {
    d: u16,
    m: u16,
    qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Q5_0 {
    d: u16,
    qh: [u8; 4],
    qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Q8_1 {
    d: u16,
    s: u16,
    qs: [i8; 32],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Q8_0 {
    d: u16,
    qs: [i8; 32],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Q4K {
    d: u16,
    dmin: u16,
    scales: [u8; 12],
    qs: [u8; 128],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Q6K {
    ql: [u8; 128],
    qh: [u8; 64],
    scales: [i8; 16],
    d: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Q8K {
    d: f32,
    qs: [i8; 256],
    bsums: [i16; 16],
}

/// Q8_K activations for Q6_K weights, with `bias[i]` = -32 × the sum of
/// quants `4i..4i+4`: Q6_K's -32 offset folded into the start value of a
/// VNNI lane, so `sum((q - 32) * a)` over a lane is one `dpbusd`, exactly.
#[derive(Clone, Copy)]
struct Q8KBias {
    q: Q8K,
    bias: [i32; 64],
}

const _: () = assert!(std::mem::size_of::<Q4K>() == 144);
const _: () = assert!(std::mem::size_of::<Q6K>() == 210);
const _: () = assert!(std::mem::size_of::<Q8K>() == std::mem::size_of::<BlockQ8K>());
const _: () = assert!(std::mem::align_of::<Q8K>() == std::mem::align_of::<BlockQ8K>());
const _: () = assert!(std::mem::size_of::<Q4_1>() == 20);
const _: () = assert!(std::mem::size_of::<Q5_0>() == 22);
const _: () = assert!(std::mem::size_of::<Q8_1>() == std::mem::size_of::<BlockQ8_1>());
const _: () = assert!(std::mem::size_of::<Q8_0>() == std::mem::size_of::<BlockQ8_0>());
const _: () = assert!(std::mem::align_of::<Q8_1>() == std::mem::align_of::<BlockQ8_1>());
const _: () = assert!(std::mem::align_of::<Q8_0>() == std::mem::align_of::<BlockQ8_0>());

/// One block of 8 weight columns (Q4_1): scales, mins, then each column's
/// 16 bytes of nibbles.
#[repr(C)]
#[derive(Clone, Copy)]
struct TileQ4_1 {
    d: [u16; TILE],
    m: [u16; TILE],
    qs: [[u8; 16]; TILE],
}

/// One block of 8 weight columns (Q5_0).
#[repr(C)]
#[derive(Clone, Copy)]
struct TileQ5_0 {
    d: [u16; TILE],
    qh: [u32; TILE],
    qs: [[u8; 16]; TILE],
}

/// One superblock of 8 Q4_K columns. Nibbles are regrouped so that a
/// 32-bit lane holds 4 values of one column: group `g` (elements
/// `8g..8g+8`) is `[column][4 bytes]`, low nibbles the first 4 elements,
/// high nibbles the next 4. The 6-bit scales and mins are unpacked to bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct TileQ4K {
    d: [u16; TILE],
    dmin: [u16; TILE],
    sc: [[u8; TILE]; 8],
    mn: [[u8; TILE]; 8],
    qs: [[u8; 32]; 32],
}

/// One superblock of 8 Q6_K columns, regrouped like candle's single-row
/// kernel reads it. For half `j` and lane `l` (elements `4l..4l+4` of each
/// 32-element chunk): `ql[j][p][l]` holds `[column][4 bytes]` of `ql`
/// (low nibbles chunk `p`, high nibbles chunk `p + 2`), `qh[j][l]` the 2-bit
/// high parts of all four chunks. Scales are `[group][column]`.
#[repr(C)]
#[derive(Clone, Copy)]
struct TileQ6K {
    d: [u16; TILE],
    sc: [[i8; TILE]; 16],
    ql: [[[[u8; 32]; 8]; 2]; 2],
    qh: [[[u8; 32]; 8]; 2],
}

/// One block of 8 Q8_0 columns, regrouped like candle's single-row kernel
/// reads it: `qs[l]` holds `[column][4 bytes]`, elements `4l..4l+4` of
/// each column (one 32-bit lane of candle's sums per column).
#[repr(C)]
#[derive(Clone, Copy)]
struct TileQ8_0 {
    d: [u16; TILE],
    qs: [[u8; 32]; 8],
}

/// One activation block prepared for the tiles: each half of the quants
/// duplicated into both 128-bit lanes (a lane per column of a pair), the
/// scale, and the offset term (Q8_1's `s`, or 16 × the quant sum for Q5_0).
#[repr(C, align(32))]
#[derive(Clone, Copy)]
struct Act {
    lo: [i8; 32],
    hi: [i8; 32],
    d: f32,
    offset: f32,
    offset_i: i32,
}

#[inline(always)]
fn h(x: u16) -> f32 {
    f16::from_bits(x).to_f32()
}

/// Which instruction set the integer dot products use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    None,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

pub fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::env::var_os("PDBENCH_NO_KERNELS").is_some() {
            return Isa::None;
        }
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("f16c")
            && is_x86_feature_detected!("fma");
        if avx2 && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
            return Isa::Avx512Vnni;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::None
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(detect)
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::None => "none",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => "avx512vnni",
        }
    }
}

/// The formats these kernels cover.
pub const FORMATS: [GgmlDType; 5] = [
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q6K,
];

/// The instruction sets this machine can run the kernels with, best by
/// feature flags first. Every one computes the same bits (the integer sums
/// are exact and the float steps the same), so which runs is a matter of
/// speed alone: one host's VNNI path may be slower than its AVX2 path.
pub fn candidate_isas() -> Vec<Isa> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if isa() == Isa::Avx512Vnni {
            v.push(Isa::Avx512Vnni);
        }
        if isa() != Isa::None {
            v.push(Isa::Avx2);
        }
    }
    v
}

/// Per format (in [`FORMATS`] order), the instruction set chosen for it,
/// when a start-up measurement has chosen (`measure::kernels::tune`).
static CHOSEN: std::sync::Mutex<[Option<Isa>; 5]> = std::sync::Mutex::new([None; 5]);

/// Records the start-up measurement's choice for `format`; weights loaded
/// afterwards use it. `isa` must be one of [`candidate_isas`].
pub fn choose_isa(format: GgmlDType, isa: Isa) {
    assert!(candidate_isas().contains(&isa), "{isa:?} runs here");
    if let Some(i) = FORMATS.iter().position(|&f| f == format) {
        CHOSEN.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(isa);
    }
}

/// The instruction set a new weight of `format` uses.
fn isa_for(format: GgmlDType) -> Isa {
    let chosen = FORMATS
        .iter()
        .position(|&f| f == format)
        .and_then(|i| CHOSEN.lock().unwrap_or_else(|e| e.into_inner())[i]);
    chosen.unwrap_or_else(isa)
}

#[derive(Clone)]
enum Packed {
    Q4_1(Arc<Vec<TileQ4_1>>),
    Q5_0(Arc<Vec<TileQ5_0>>),
    Q8_0(Arc<Vec<TileQ8_0>>),
    Q4K(Arc<Vec<TileQ4K>>),
    Q6K(Arc<Vec<TileQ6K>>),
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Packed::Q4_1(_) => "Q4_1",
            Packed::Q5_0(_) => "Q5_0",
            Packed::Q8_0(_) => "Q8_0",
            Packed::Q4K(_) => "Q4K",
            Packed::Q6K(_) => "Q6K",
        })
    }
}

/// ggml's 6-bit scale/min unpacking for Q4_K superblocks.
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Whether these kernels take a `[n, k]` weight of `dtype`.
fn covers(dtype: GgmlDType, n: usize, k: usize) -> bool {
    let block = match dtype {
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => 32,
        GgmlDType::Q4K | GgmlDType::Q6K => 256,
        _ => return false,
    };
    k % block == 0
        && n % TILE == 0
        // candle takes its packed Q4_K kernel (whose arithmetic ours
        // reproduces) only for whole 16-column tiles.
        && !(dtype == GgmlDType::Q4K && n % 16 != 0)
        // Where k is a whole number of 256-blocks candle may take its own
        // repacked Q8_0 kernel (AVX-VNNI hosts), whose sums are grouped
        // otherwise; ours reproduces its per-column `vec_dot`, which it
        // runs for the rest (the LM heads of SmolLM2 and Qwen2.5-0.5B).
        && !(dtype == GgmlDType::Q8_0 && k % 256 == 0)
}

/// The kernel a CPU forward uses for a `[n, k]` weight of `dtype` on this
/// machine: pdbench's (`q4k avx512vnni`, ...) or `candle`.
pub fn kernel_for(dtype: GgmlDType, n: usize, k: usize) -> String {
    let isa = match isa_for(dtype) {
        Isa::None => return "candle".into(),
        isa => isa.name(),
    };
    if covers(dtype, n, k) {
        format!("{dtype:?} {isa}").to_lowercase()
    } else {
        "candle".into()
    }
}

/// One row of activations prepared by [`FastQ::prepare`].
pub struct PreparedRow(Acts);

/// Activations in the format a weight type's kernel reads.
enum Acts {
    Small(Vec<Act>),
    Q8_0(Vec<Q8_0>),
    K(Vec<Q8K>),
    KBias(Vec<Q8KBias>),
}

/// A repacked weight matrix `[n, k]`.
#[derive(Debug, Clone)]
pub(crate) struct FastQ {
    packed: Packed,
    isa: Isa,
    n: usize,
    k: usize,
}

fn cast_blocks<T: Copy>(bytes: &[u8]) -> &[T] {
    let size = std::mem::size_of::<T>();
    assert_eq!(
        bytes.len() % size,
        0,
        "block data is not a whole number of blocks"
    );
    assert_eq!(
        bytes.as_ptr() as usize % std::mem::align_of::<T>(),
        0,
        "misaligned block data"
    );
    // SAFETY: T is a repr(C) block of plain integers; length and alignment checked above.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / size) }
}

impl FastQ {
    /// Repacks `weight` when these kernels cover it on this machine.
    pub fn new(weight: &Arc<QTensor>) -> Option<Self> {
        Self::with_isa(weight, isa_for(weight.dtype()))
    }

    pub fn with_isa(weight: &Arc<QTensor>, isa: Isa) -> Option<Self> {
        if isa == Isa::None || !matches!(weight.device(), Device::Cpu) {
            return None;
        }
        let (n, k) = weight.shape().dims2().ok()?;
        if !covers(weight.dtype(), n, k) {
            return None;
        }
        let block = weight.dtype().block_size();
        let nb = k / block;
        let data = weight.data().ok()?;
        let packed = match weight.dtype() {
            GgmlDType::Q4_1 => {
                let b = cast_blocks::<Q4_1>(&data);
                let mut tiles = Vec::with_capacity(n / TILE * nb);
                for g in 0..n / TILE {
                    for blk in 0..nb {
                        let col = |c: usize| &b[(g * TILE + c) * nb + blk];
                        tiles.push(TileQ4_1 {
                            d: std::array::from_fn(|c| col(c).d),
                            m: std::array::from_fn(|c| col(c).m),
                            qs: std::array::from_fn(|c| col(c).qs),
                        });
                    }
                }
                Packed::Q4_1(Arc::new(tiles))
            }
            GgmlDType::Q5_0 => {
                let b = cast_blocks::<Q5_0>(&data);
                let mut tiles = Vec::with_capacity(n / TILE * nb);
                for g in 0..n / TILE {
                    for blk in 0..nb {
                        let col = |c: usize| &b[(g * TILE + c) * nb + blk];
                        tiles.push(TileQ5_0 {
                            d: std::array::from_fn(|c| col(c).d),
                            qh: std::array::from_fn(|c| u32::from_le_bytes(col(c).qh)),
                            qs: std::array::from_fn(|c| col(c).qs),
                        });
                    }
                }
                Packed::Q5_0(Arc::new(tiles))
            }
            GgmlDType::Q8_0 => {
                let b = cast_blocks::<Q8_0>(&data);
                let mut tiles = Vec::with_capacity(n / TILE * nb);
                for g in 0..n / TILE {
                    for blk in 0..nb {
                        let col = |c: usize| &b[(g * TILE + c) * nb + blk];
                        let mut qs = [[0u8; 32]; 8];
                        for (l, lane) in qs.iter_mut().enumerate() {
                            for c in 0..TILE {
                                for i in 0..4 {
                                    lane[4 * c + i] = col(c).qs[4 * l + i] as u8;
                                }
                            }
                        }
                        tiles.push(TileQ8_0 {
                            d: std::array::from_fn(|c| col(c).d),
                            qs,
                        });
                    }
                }
                Packed::Q8_0(Arc::new(tiles))
            }
            GgmlDType::Q4K => {
                let b = cast_blocks::<Q4K>(&data);
                let mut tiles = Vec::with_capacity(n / TILE * nb);
                for g in 0..n / TILE {
                    for blk in 0..nb {
                        let col = |c: usize| &b[(g * TILE + c) * nb + blk];
                        let mut t = TileQ4K {
                            d: std::array::from_fn(|c| col(c).d),
                            dmin: std::array::from_fn(|c| col(c).dmin),
                            sc: [[0; TILE]; 8],
                            mn: [[0; TILE]; 8],
                            qs: [[0; 32]; 32],
                        };
                        for c in 0..TILE {
                            let x = col(c);
                            for sub in 0..8 {
                                let (sc, mn) = scale_min_k4(sub, &x.scales);
                                t.sc[sub][c] = sc;
                                t.mn[sub][c] = mn;
                            }
                            let mut vals = [0u8; 256];
                            for ch in 0..4 {
                                for j in 0..32 {
                                    vals[ch * 64 + j] = x.qs[ch * 32 + j] & 0x0F;
                                    vals[ch * 64 + 32 + j] = x.qs[ch * 32 + j] >> 4;
                                }
                            }
                            for grp in 0..32 {
                                for j in 0..4 {
                                    t.qs[grp][c * 4 + j] =
                                        vals[grp * 8 + j] | (vals[grp * 8 + j + 4] << 4);
                                }
                            }
                        }
                        tiles.push(t);
                    }
                }
                Packed::Q4K(Arc::new(tiles))
            }
            GgmlDType::Q6K => {
                let b = cast_blocks::<Q6K>(&data);
                let mut tiles = Vec::with_capacity(n / TILE * nb);
                for g in 0..n / TILE {
                    for blk in 0..nb {
                        let col = |c: usize| &b[(g * TILE + c) * nb + blk];
                        let mut t = TileQ6K {
                            d: std::array::from_fn(|c| col(c).d),
                            sc: [[0; TILE]; 16],
                            ql: [[[[0; 32]; 8]; 2]; 2],
                            qh: [[[0; 32]; 8]; 2],
                        };
                        for c in 0..TILE {
                            let x = col(c);
                            for grp in 0..16 {
                                t.sc[grp][c] = x.scales[grp];
                            }
                            for j in 0..2 {
                                for l in 0..8 {
                                    for b4 in 0..4 {
                                        for p in 0..2 {
                                            t.ql[j][p][l][c * 4 + b4] =
                                                x.ql[j * 64 + p * 32 + 4 * l + b4];
                                        }
                                        t.qh[j][l][c * 4 + b4] = x.qh[j * 32 + 4 * l + b4];
                                    }
                                }
                            }
                        }
                        tiles.push(t);
                    }
                }
                Packed::Q6K(Arc::new(tiles))
            }
            _ => return None,
        };
        Some(Self { packed, isa, n, k })
    }

    /// The format and instruction set, e.g. `q4k avx512vnni`.
    pub fn kernel_name(&self) -> String {
        let isa = self.isa.name();
        let dtype = match self.packed {
            Packed::Q4_1(_) => GgmlDType::Q4_1,
            Packed::Q5_0(_) => GgmlDType::Q5_0,
            Packed::Q8_0(_) => GgmlDType::Q8_0,
            Packed::Q4K(_) => GgmlDType::Q4K,
            Packed::Q6K(_) => GgmlDType::Q6K,
        };
        format!("{dtype:?} {isa}").to_lowercase()
    }

    /// `[n, k]`.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes of repacked weights in the first `groups` tiles of 8 columns
    /// (all when `None`): what one pass over them reads.
    pub fn packed_bytes(&self, groups: Option<usize>) -> usize {
        let (per_tile, block) = match &self.packed {
            Packed::Q4_1(_) => (std::mem::size_of::<TileQ4_1>(), 32),
            Packed::Q5_0(_) => (std::mem::size_of::<TileQ5_0>(), 32),
            Packed::Q8_0(_) => (std::mem::size_of::<TileQ8_0>(), 32),
            Packed::Q4K(_) => (std::mem::size_of::<TileQ4K>(), 256),
            Packed::Q6K(_) => (std::mem::size_of::<TileQ6K>(), 256),
        };
        let groups = groups.unwrap_or(self.n / TILE).min(self.n / TILE);
        groups * (self.k / block) * per_tile
    }

    /// One row `x` (`k` values) times the first `groups` column tiles (all
    /// when `None`) into `dst`, activation quantization included: the unit
    /// the kernel microbenchmark times.
    pub fn matvec(&self, x: &[f32], groups: Option<usize>, dst: &mut [f32]) {
        let acts = self.prepare(x);
        self.matvec_prepared(&acts, groups, dst);
    }

    /// One row `x` quantized as this format's kernel reads it.
    pub fn prepare(&self, x: &[f32]) -> PreparedRow {
        assert_eq!(x.len(), self.k, "one row of k values");
        PreparedRow(match &self.packed {
            Packed::Q4_1(_) => Acts::Small(prepare_q8_1(x, 1, self.k)),
            Packed::Q5_0(_) => Acts::Small(prepare_q8_0(x, 1, self.k)),
            Packed::Q8_0(_) => Acts::Q8_0(quantize_q8_0(x, 1, self.k)),
            Packed::Q4K(_) => Acts::K(prepare_q8k(x, 1, self.k)),
            Packed::Q6K(_) => Acts::KBias(prepare_q8k_bias(x, 1, self.k)),
        })
    }

    /// [`Self::matvec`] without the quantization: the kernel alone.
    pub fn matvec_prepared(&self, acts: &PreparedRow, groups: Option<usize>, dst: &mut [f32]) {
        let groups = groups.unwrap_or(self.n / TILE).min(self.n / TILE);
        assert!(dst.len() >= groups * TILE, "room for the columns");
        self.run_groups(&acts.0, 1, groups, self.n, dst);
    }

    /// `x` `[.., k]` f32 on the CPU to `[.., n]`; `None` when the input is
    /// not one these kernels take (candle's path then runs).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
            return Ok(None);
        }
        let dims = x.dims().to_vec();
        if dims.last() != Some(&self.k) {
            return Ok(None);
        }
        let x = x.contiguous()?;
        let m = x.elem_count() / self.k;
        let lhs = x.flatten_all()?.to_vec1::<f32>()?;
        let mut dst = vec![0f32; m * self.n];
        let acts = match &self.packed {
            Packed::Q4_1(_) => Acts::Small(prepare_q8_1(&lhs, m, self.k)),
            Packed::Q5_0(_) => Acts::Small(prepare_q8_0(&lhs, m, self.k)),
            Packed::Q8_0(_) => Acts::Q8_0(quantize_q8_0(&lhs, m, self.k)),
            Packed::Q4K(_) => Acts::K(prepare_q8k(&lhs, m, self.k)),
            Packed::Q6K(_) => Acts::KBias(prepare_q8k_bias(&lhs, m, self.k)),
        };
        self.run(&acts, m, &mut dst);
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = self.n;
        Ok(Some(Tensor::from_vec(dst, out_dims, &Device::Cpu)?))
    }

    fn run(&self, acts: &Acts, m: usize, dst: &mut [f32]) {
        self.run_groups(acts, m, self.n / TILE, self.n, dst)
    }

    /// `m` rows times the first `groups` column tiles, into rows of `n`.
    fn run_groups(&self, acts: &Acts, m: usize, groups: usize, n: usize, dst: &mut [f32]) {
        let nb = match &self.packed {
            Packed::Q4K(_) | Packed::Q6K(_) => self.k / 256,
            _ => self.k / 32,
        };
        let row_tiles = m.div_ceil(ROWS);
        let dst_ptr = dst.as_mut_ptr() as usize;
        let isa = self.isa;
        let packed = &self.packed;
        super::pool::execute_chunked(row_tiles * groups, |items| {
            let mut items = items.peekable();
            while let Some(item) = items.next() {
                let (rt, g) = (item / groups, item % groups);
                // One row and the next item the next group: two groups'
                // accumulation chains side by side (Q4_K; the same bits).
                if let (Packed::Q4K(t), Acts::K(a), 1) = (packed, acts, m) {
                    if items.peek() == Some(&(item + 1)) && g + 1 < groups {
                        items.next();
                        let mut out = [[[0f32; TILE]; ROWS]; 2];
                        tile_q4k_pair(
                            isa,
                            [&t[g * nb..(g + 1) * nb], &t[(g + 1) * nb..(g + 2) * nb]],
                            &a[..nb],
                            nb,
                            &mut out,
                        );
                        // SAFETY: columns g*TILE..(g+2)*TILE of row 0 belong to these items.
                        unsafe {
                            let p = (dst_ptr as *mut f32).add(g * TILE);
                            std::ptr::copy_nonoverlapping(out[0][0].as_ptr(), p, TILE);
                            std::ptr::copy_nonoverlapping(out[1][0].as_ptr(), p.add(TILE), TILE);
                        }
                        continue;
                    }
                }
                let r0 = rt * ROWS;
                let rows = ROWS.min(m - r0);
                let mut out = [[0f32; TILE]; ROWS];
                // This item's column group of tiles and its rows' activations.
                let (w, x) = (g * nb..(g + 1) * nb, r0 * nb..(r0 + rows) * nb);
                match (packed, acts) {
                    (Packed::Q4_1(t), Acts::Small(a)) => {
                        tile_q4_1(isa, &t[w], &a[x], nb, rows, &mut out)
                    }
                    (Packed::Q5_0(t), Acts::Small(a)) => {
                        tile_q5_0(isa, &t[w], &a[x], nb, rows, &mut out)
                    }
                    (Packed::Q8_0(t), Acts::Q8_0(a)) => {
                        tile_q8_0(isa, &t[w], &a[x], nb, rows, &mut out)
                    }
                    (Packed::Q4K(t), Acts::K(a)) => tile_q4k(isa, &t[w], &a[x], nb, rows, &mut out),
                    (Packed::Q6K(t), Acts::KBias(a)) => {
                        tile_q6k(isa, &t[w], &a[x], nb, rows, &mut out)
                    }
                    _ => unreachable!("activations are prepared for the weight type"),
                }
                for (r, o) in out.iter().enumerate().take(rows) {
                    // SAFETY: each (row, column) of dst belongs to exactly one item.
                    unsafe {
                        let p = (dst_ptr as *mut f32).add((r0 + r) * n + g * TILE);
                        std::ptr::copy_nonoverlapping(o.as_ptr(), p, TILE);
                    }
                }
            }
        });
    }
}

fn split_halves(qs: &[i8; 32]) -> ([i8; 32], [i8; 32]) {
    let mut lo = [0i8; 32];
    let mut hi = [0i8; 32];
    lo[..16].copy_from_slice(&qs[..16]);
    lo[16..].copy_from_slice(&qs[..16]);
    hi[..16].copy_from_slice(&qs[16..]);
    hi[16..].copy_from_slice(&qs[16..]);
    (lo, hi)
}

/// Fills `out`, `m` rows of `per_row` items, with `f(row, row's items)`;
/// the rows of a prefill spread over candle's pool, since quantizing them
/// one after another is serial work beside parallel matmuls (spread, a
/// 64-token prefill of Qwen2.5-0.5B on 2 threads runs 7% faster).
fn for_rows<T: Send>(out: &mut [T], m: usize, per_row: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    assert_eq!(out.len(), m * per_row, "rows × items per row");
    if m < 2 || per_row == 0 {
        for (r, o) in out.chunks_mut(per_row.max(1)).enumerate() {
            f(r, o);
        }
        return;
    }
    let ptr = out.as_mut_ptr() as usize;
    super::pool::execute_chunked(m, |rows| {
        for r in rows {
            // SAFETY: rows are disjoint slices of `out`, each given to one call.
            let o = unsafe {
                std::slice::from_raw_parts_mut((ptr as *mut T).add(r * per_row), per_row)
            };
            f(r, o);
        }
    });
}

/// Activations of the small-block weight types: candle quantizes each row
/// to `B` (Q8_1 or Q8_0) with its own code, so the blocks match, and
/// `to_act` lays each block out for the tiles.
fn prepare_small<B: GgmlType + Send + Sync>(
    lhs: &[f32],
    m: usize,
    k: usize,
    to_act: impl Fn(&B) -> Act + Sync,
) -> Vec<Act> {
    let nb = k / 32;
    let zero = Act {
        lo: [0; 32],
        hi: [0; 32],
        d: 0.0,
        offset: 0.0,
        offset_i: 0,
    };
    let mut out = vec![zero; m * nb];
    for_rows(&mut out, m, nb, |r, acts| {
        let mut blocks = vec![B::zeros(); nb];
        B::from_float(&lhs[r * k..(r + 1) * k], &mut blocks);
        for (a, b) in acts.iter_mut().zip(&blocks) {
            *a = to_act(b);
        }
    });
    out
}

/// Q8_1 activations (for Q4_1 weights).
fn prepare_q8_1(lhs: &[f32], m: usize, k: usize) -> Vec<Act> {
    prepare_small::<BlockQ8_1>(lhs, m, k, |b| {
        // SAFETY: identical size and alignment (asserted above), plain data.
        let b: &Q8_1 = unsafe { &*(b as *const BlockQ8_1 as *const Q8_1) };
        let (lo, hi) = split_halves(&b.qs);
        Act {
            lo,
            hi,
            d: h(b.d),
            offset: h(b.s),
            offset_i: 0,
        }
    })
}

/// Q8_0 activations for Q5_0 weights; `offset_i` is 16 × the quant sum,
/// for Q5_0's -16.
fn prepare_q8_0(lhs: &[f32], m: usize, k: usize) -> Vec<Act> {
    prepare_small::<BlockQ8_0>(lhs, m, k, |b| {
        // SAFETY: identical size and alignment (asserted above), plain data.
        let b: &Q8_0 = unsafe { &*(b as *const BlockQ8_0 as *const Q8_0) };
        let (lo, hi) = split_halves(&b.qs);
        let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
        Act {
            lo,
            hi,
            d: h(b.d),
            offset: 0.0,
            offset_i: 16 * sum,
        }
    })
}

/// Rows quantized block by block by candle's `from_float`, reinterpreted
/// as our mirror `T` of candle's block type `B`.
fn quantize_rows<B: GgmlType + Send + Sync, T>(lhs: &[f32], m: usize, k: usize) -> Vec<T> {
    const { assert!(std::mem::size_of::<B>() == std::mem::size_of::<T>()) };
    const { assert!(std::mem::align_of::<B>() == std::mem::align_of::<T>()) };
    let nb = k / B::BLCK_SIZE;
    let mut blocks = vec![B::zeros(); m * nb];
    for_rows(&mut blocks, m, nb, |r, row| {
        B::from_float(&lhs[r * k..(r + 1) * k], row)
    });
    let mut blocks = std::mem::ManuallyDrop::new(blocks);
    // SAFETY: same size and alignment (asserted above); both are plain data.
    unsafe {
        Vec::from_raw_parts(
            blocks.as_mut_ptr() as *mut T,
            blocks.len(),
            blocks.capacity(),
        )
    }
}

/// Q8_0 activations as candle quantizes them for a Q8_0 weight.
fn quantize_q8_0(lhs: &[f32], m: usize, k: usize) -> Vec<Q8_0> {
    quantize_rows::<BlockQ8_0, Q8_0>(lhs, m, k)
}

/// Q8_K activations, quantized by candle's own code.
fn prepare_q8k(lhs: &[f32], m: usize, k: usize) -> Vec<Q8K> {
    quantize_rows::<BlockQ8K, Q8K>(lhs, m, k)
}

/// Q8_K activations with the quad sums Q6_K's VNNI lanes start from.
fn prepare_q8k_bias(lhs: &[f32], m: usize, k: usize) -> Vec<Q8KBias> {
    prepare_q8k(lhs, m, k)
        .into_iter()
        .map(|q| Q8KBias {
            bias: std::array::from_fn(|i| {
                -32 * q.qs[4 * i..4 * i + 4]
                    .iter()
                    .map(|&v| v as i32)
                    .sum::<i32>()
            }),
            q,
        })
        .collect()
}

/// One instruction set's build of a tile kernel: `$features` enabled on
/// the function (so the kernel's intrinsics inline) and the row count as a
/// const, since the rows' sums live in registers.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_build {
    ($fn:ident, $features:literal, $vnni:literal, $kernel:ident, $tile:ty, $act:ty) => {
        #[target_feature(enable = $features)]
        unsafe fn $fn(
            t: &[$tile],
            a: &[$act],
            nb: usize,
            rows: usize,
            out: &mut [[f32; TILE]; ROWS],
        ) {
            match rows {
                1 => x86::$kernel::<$vnni, 1>(t, a, nb, out),
                2 => x86::$kernel::<$vnni, 2>(t, a, nb, out),
                3 => x86::$kernel::<$vnni, 3>(t, a, nb, out),
                _ => x86::$kernel::<$vnni, 4>(t, a, nb, out),
            }
        }
    };
}

/// Returns the VNNI or the AVX2 build's call, as `isa` says (nothing for
/// `Isa::None`).
#[cfg(target_arch = "x86_64")]
macro_rules! by_isa {
    ($isa:expr, $vnni:expr, $avx2:expr) => {
        // SAFETY: `isa` was detected on this machine.
        match $isa {
            Isa::Avx512Vnni => return unsafe { $vnni },
            Isa::Avx2 => return unsafe { $avx2 },
            Isa::None => {}
        }
    };
}

/// The entry point of a tile kernel `x86::$kernel::<VNNI, R>`: its AVX2 or
/// AVX512-VNNI build, as the machine has.
macro_rules! tile_entry {
    ($name:ident, $kernel:ident, $tile:ty, $act:ty) => {
        fn $name(
            isa: Isa,
            t: &[$tile],
            acts: &[$act],
            nb: usize,
            rows: usize,
            out: &mut [[f32; TILE]; ROWS],
        ) {
            #[cfg(target_arch = "x86_64")]
            {
                tile_build!(avx2, "avx2,f16c,fma", false, $kernel, $tile, $act);
                tile_build!(
                    vnni,
                    "avx2,f16c,fma,avx512vnni,avx512vl",
                    true,
                    $kernel,
                    $tile,
                    $act
                );
                by_isa!(
                    isa,
                    vnni(t, acts, nb, rows, out),
                    avx2(t, acts, nb, rows, out)
                );
            }
            let _ = (isa, t, acts, nb, rows, out);
            unreachable!("FastQ is not built without a kernel ISA")
        }
    };
}

tile_entry!(tile_q4_1, q4_1, TileQ4_1, Act);
tile_entry!(tile_q5_0, q5_0, TileQ5_0, Act);
tile_entry!(tile_q8_0, q8_0, TileQ8_0, Q8_0);
tile_entry!(tile_q4k, q4k_one, TileQ4K, Q8K);

/// The Q4_K kernel on two column groups at one row (decoding).
fn tile_q4k_pair(
    isa: Isa,
    t: [&[TileQ4K]; 2],
    acts: &[Q8K],
    nb: usize,
    out: &mut [[[f32; TILE]; ROWS]; 2],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,f16c,fma")]
        unsafe fn avx2(
            t: [&[TileQ4K]; 2],
            a: &[Q8K],
            nb: usize,
            out: &mut [[[f32; TILE]; ROWS]; 2],
        ) {
            x86::q4k::<false, 1, 2>(t, a, nb, out)
        }
        #[target_feature(enable = "avx2,f16c,fma,avx512vnni,avx512vl")]
        unsafe fn vnni(
            t: [&[TileQ4K]; 2],
            a: &[Q8K],
            nb: usize,
            out: &mut [[[f32; TILE]; ROWS]; 2],
        ) {
            x86::q4k::<true, 1, 2>(t, a, nb, out)
        }
        by_isa!(isa, vnni(t, acts, nb, out), avx2(t, acts, nb, out));
    }
    let _ = (isa, t, acts, nb, out);
    unreachable!("FastQ is not built without a kernel ISA")
}
tile_entry!(tile_q6k, q6k, TileQ6K, Q8KBias);

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Asks for the tile `PREFETCH_TILES` ahead (possibly in the next
    /// column group, which the same thread usually takes next). Decoding is
    /// bound by how fast weights stream in; the hardware prefetcher alone
    /// stops at page boundaries. Prefetches never fault, so running past
    /// the end of the weights is harmless.
    #[inline(always)]
    unsafe fn prefetch_ahead<T>(tile: &T) {
        const PREFETCH_TILES: usize = 2;
        let size = std::mem::size_of::<T>();
        let base = (tile as *const T as *const i8).wrapping_add(PREFETCH_TILES * size);
        let mut off = 0;
        while off < size {
            _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(off));
            off += 64;
        }
    }

    /// Sum of u8 × i8 products into 8 i32 lanes, exactly.
    #[inline(always)]
    unsafe fn dot<const VNNI: bool>(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        if VNNI {
            _mm256_dpbusd_epi32(acc, w, a)
        } else {
            // Products pair up within i16 for weights <= 31, so no saturation.
            _mm256_add_epi32(
                acc,
                _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1)),
            )
        }
    }

    /// Four pair-vectors (two columns each, 4 partial sums per column) to
    /// the 8 column sums in column order.
    #[inline(always)]
    unsafe fn reduce(p: [__m256i; 4]) -> __m256i {
        let s = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
        _mm256_permutevar8x32_epi32(s, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// Byte i of the result is 0x10 where the selected bit of the pair is
    /// set; `ctl` picks which source byte feeds each output byte.
    #[inline(always)]
    unsafe fn high_bits(pair: u64, ctl: __m256i) -> __m256i {
        let v = _mm256_shuffle_epi8(_mm256_set1_epi64x(pair as i64), ctl);
        let v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
        _mm256_and_si256(
            _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1)),
            _mm256_set1_epi8(0x10),
        )
    }

    #[inline(always)]
    pub(super) unsafe fn q4_1<const VNNI: bool, const R: usize>(
        t: &[TileQ4_1],
        acts: &[Act],
        nb: usize,
        out: &mut [[f32; TILE]; ROWS],
    ) {
        let rows = R;
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, tile) in t.iter().enumerate() {
            prefetch_ahead(tile);
            let mut lo = [_mm256_setzero_si256(); 4];
            let mut hi = [_mm256_setzero_si256(); 4];
            for j in 0..4 {
                let q = _mm256_loadu_si256(tile.qs[2 * j].as_ptr() as *const __m256i);
                lo[j] = _mm256_and_si256(q, m4);
                hi[j] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(tile.d.as_ptr() as *const __m128i));
            let mn = _mm256_cvtph_ps(_mm_loadu_si128(tile.m.as_ptr() as *const __m128i));
            for r in 0..rows {
                let a = &acts[r * nb + b];
                let alo = _mm256_load_si256(a.lo.as_ptr() as *const __m256i);
                let ahi = _mm256_load_si256(a.hi.as_ptr() as *const __m256i);
                let mut p = [_mm256_setzero_si256(); 4];
                for j in 0..4 {
                    p[j] = dot::<VNNI>(dot::<VNNI>(p[j], lo[j], alo), hi[j], ahi);
                }
                let f = _mm256_cvtepi32_ps(reduce(p));
                // candle: sumi as f32 * d_x * d_y + m_x * s_y, then sumf += it.
                let term = _mm256_add_ps(
                    _mm256_mul_ps(_mm256_mul_ps(f, d), _mm256_set1_ps(a.d)),
                    _mm256_mul_ps(mn, _mm256_set1_ps(a.offset)),
                );
                acc[r] = _mm256_add_ps(acc[r], term);
            }
        }
        for r in 0..rows {
            _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
        }
    }

    #[inline(always)]
    pub(super) unsafe fn q5_0<const VNNI: bool, const R: usize>(
        t: &[TileQ5_0],
        acts: &[Act],
        nb: usize,
        out: &mut [[f32; TILE]; ROWS],
    ) {
        let rows = R;
        let m4 = _mm256_set1_epi8(0x0F);
        // Source bytes for elements 0..16 (bits 0..16) and 16..32 of each
        // column of a pair packed as qh_c | qh_{c+1} << 32.
        let ctl_lo = _mm256_set_epi64x(
            0x0505050505050505,
            0x0404040404040404,
            0x0101010101010101,
            0,
        );
        let ctl_hi = _mm256_set_epi64x(
            0x0707070707070707,
            0x0606060606060606,
            0x0303030303030303,
            0x0202020202020202,
        );
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, tile) in t.iter().enumerate() {
            prefetch_ahead(tile);
            let mut lo = [_mm256_setzero_si256(); 4];
            let mut hi = [_mm256_setzero_si256(); 4];
            for j in 0..4 {
                let q = _mm256_loadu_si256(tile.qs[2 * j].as_ptr() as *const __m256i);
                let pair = tile.qh[2 * j] as u64 | (tile.qh[2 * j + 1] as u64) << 32;
                lo[j] = _mm256_or_si256(_mm256_and_si256(q, m4), high_bits(pair, ctl_lo));
                hi[j] = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                    high_bits(pair, ctl_hi),
                );
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(tile.d.as_ptr() as *const __m128i));
            for r in 0..rows {
                let a = &acts[r * nb + b];
                let alo = _mm256_load_si256(a.lo.as_ptr() as *const __m256i);
                let ahi = _mm256_load_si256(a.hi.as_ptr() as *const __m256i);
                let mut p = [_mm256_setzero_si256(); 4];
                for j in 0..4 {
                    p[j] = dot::<VNNI>(dot::<VNNI>(p[j], lo[j], alo), hi[j], ahi);
                }
                // sum((u - 16) * a) = sum(u * a) - 16 * sum(a), exactly.
                let isum = _mm256_sub_epi32(reduce(p), _mm256_set1_epi32(a.offset_i));
                let f = _mm256_cvtepi32_ps(isum);
                // candle: sumf += sumi as f32 * d_x * d_y.
                acc[r] = _mm256_add_ps(
                    acc[r],
                    _mm256_mul_ps(_mm256_mul_ps(f, d), _mm256_set1_ps(a.d)),
                );
            }
        }
        for r in 0..rows {
            _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
        }
    }

    /// Four activation bytes at `off`, in every 32-bit lane.
    #[inline(always)]
    unsafe fn bcast4(qs: &[i8], off: usize) -> __m256i {
        _mm256_set1_epi32(std::ptr::read_unaligned(qs.as_ptr().add(off) as *const i32))
    }

    /// candle's packed Q4_K kernel, per column lane: for each 32-element
    /// sub-block, `acc = fma(isum, (d * sc) * dall, acc)` then
    /// `acc = fnmadd(dmin * mn, dall * bsum, acc)`. `G` column groups at
    /// once: each lane's accumulation is one serial chain of FMAs, so a
    /// second group's chain keeps the core busy while the first waits.
    #[inline(always)]
    pub(super) unsafe fn q4k<const VNNI: bool, const R: usize, const G: usize>(
        t: [&[TileQ4K]; G],
        acts: &[Q8K],
        nb: usize,
        out: &mut [[[f32; TILE]; ROWS]; G],
    ) {
        let rows = R;
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm256_setzero_ps(); R]; G];
        for b in 0..nb {
            let mut d = [_mm256_setzero_ps(); G];
            let mut dmin = [_mm256_setzero_ps(); G];
            for g in 0..G {
                let tile = &t[g][b];
                prefetch_ahead(tile);
                d[g] = _mm256_cvtph_ps(_mm_loadu_si128(tile.d.as_ptr() as *const __m128i));
                dmin[g] = _mm256_cvtph_ps(_mm_loadu_si128(tile.dmin.as_ptr() as *const __m128i));
            }
            for sub in 0..8 {
                for g in 0..G {
                    let tile = &t[g][b];
                    let sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                        tile.sc[sub].as_ptr() as *const __m128i,
                    )));
                    let mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                        tile.mn[sub].as_ptr() as *const __m128i,
                    )));
                    let scale = _mm256_mul_ps(d[g], sc);
                    let min = _mm256_mul_ps(dmin[g], mn);
                    let mut lo = [_mm256_setzero_si256(); 4];
                    let mut hi = [_mm256_setzero_si256(); 4];
                    for g4 in 0..4 {
                        let w =
                            _mm256_loadu_si256(tile.qs[sub * 4 + g4].as_ptr() as *const __m256i);
                        lo[g4] = _mm256_and_si256(w, m4);
                        hi[g4] = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
                    }
                    for r in 0..rows {
                        let a = &acts[r * nb + b];
                        let isum = if VNNI {
                            // Two chains of four: one chain of eight dependent
                            // dot products would wait on their latency.
                            let mut even = _mm256_setzero_si256();
                            let mut odd = _mm256_setzero_si256();
                            for g4 in 0..4 {
                                let off = sub * 32 + g4 * 8;
                                even = dot::<VNNI>(even, lo[g4], bcast4(&a.qs, off));
                                odd = dot::<VNNI>(odd, hi[g4], bcast4(&a.qs, off + 4));
                            }
                            _mm256_add_epi32(even, odd)
                        } else {
                            // Eight u4 x i8 pair sums stay within i16 (8 * 3840 < 32767),
                            // so they add exactly before one widening madd.
                            let mut s16 = _mm256_setzero_si256();
                            for g4 in 0..4 {
                                let off = sub * 32 + g4 * 8;
                                s16 = _mm256_add_epi16(
                                    s16,
                                    _mm256_maddubs_epi16(lo[g4], bcast4(&a.qs, off)),
                                );
                                s16 = _mm256_add_epi16(
                                    s16,
                                    _mm256_maddubs_epi16(hi[g4], bcast4(&a.qs, off + 4)),
                                );
                            }
                            _mm256_madd_epi16(s16, _mm256_set1_epi16(1))
                        };
                        let dall = a.d;
                        let f = _mm256_cvtepi32_ps(isum);
                        acc[g][r] = _mm256_fmadd_ps(
                            f,
                            _mm256_mul_ps(scale, _mm256_set1_ps(dall)),
                            acc[g][r],
                        );
                        let bsum = (a.bsums[sub * 2] as i32 + a.bsums[sub * 2 + 1] as i32) as f32;
                        acc[g][r] = _mm256_fnmadd_ps(min, _mm256_set1_ps(dall * bsum), acc[g][r]);
                    }
                }
            }
        }
        for g in 0..G {
            for r in 0..rows {
                _mm256_storeu_ps(out[g][r].as_mut_ptr(), acc[g][r]);
            }
        }
    }

    /// [`q4k`] on one column group.
    #[inline(always)]
    pub(super) unsafe fn q4k_one<const VNNI: bool, const R: usize>(
        t: &[TileQ4K],
        acts: &[Q8K],
        nb: usize,
        out: &mut [[f32; TILE]; ROWS],
    ) {
        let mut o = [*out];
        q4k::<VNNI, R, 1>([t], acts, nb, &mut o);
        *out = o[0];
    }

    /// candle's single-row Q6_K kernel (`vec_dot_q6k_q8k`), per column: eight
    /// i32 lane sums per superblock (lane `l` covers elements `4l..4l+4` of
    /// each 32-element chunk), `acc_l = fma(y.d * x.d, lane_l, acc_l)`, and
    /// at the end candle's horizontal sum of the eight lanes. A lane's
    /// integer is `sum(scale * (q - 32) * a)` however it is formed: candle's
    /// i16 pair sums (the AVX2 build), or with VNNI one `dpbusd` starting
    /// from the activations' `bias` times the scale (fewer instructions).
    #[inline(always)]
    pub(super) unsafe fn q6k<const VNNI: bool, const R: usize>(
        t: &[TileQ6K],
        acts: &[Q8KBias],
        nb: usize,
        out: &mut [[f32; TILE]; ROWS],
    ) {
        let rows = R;
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        let m32 = _mm256_set1_epi8(32);
        let mut acc = [[_mm256_setzero_ps(); 8]; R];
        for (b, tile) in t.iter().enumerate() {
            prefetch_ahead(tile);
            let xd = _mm256_cvtph_ps(_mm_loadu_si128(tile.d.as_ptr() as *const __m128i));
            // Per-group scales: with VNNI one i32 per column; otherwise as
            // i16, repeated for the two i16 lanes of a column's 32-bit lane.
            let mut sc = [_mm256_setzero_si256(); 16];
            for (grp, s) in sc.iter_mut().enumerate() {
                let v = _mm_loadl_epi64(tile.sc[grp].as_ptr() as *const __m128i);
                *s = if VNNI {
                    _mm256_cvtepi8_epi32(v)
                } else {
                    let v = _mm_cvtepi8_epi16(v);
                    _mm256_set_m128i(_mm_unpackhi_epi16(v, v), _mm_unpacklo_epi16(v, v))
                };
            }
            let mut d = [_mm256_setzero_ps(); R];
            for (r, d) in d.iter_mut().enumerate() {
                *d = _mm256_mul_ps(_mm256_set1_ps(acts[r * nb + b].q.d), xd);
            }
            // Lane by lane, so that only one lane's sums per row are live
            // (all eight for four rows would not fit in the registers).
            for l in 0..8 {
                let mut lane = [_mm256_setzero_si256(); R];
                for j in 0..2 {
                    let h = _mm256_loadu_si256(tile.qh[j][l].as_ptr() as *const __m256i);
                    let hb = [
                        _mm256_and_si256(_mm256_slli_epi16(h, 4), m30),
                        _mm256_and_si256(_mm256_slli_epi16(h, 2), m30),
                        _mm256_and_si256(h, m30),
                        _mm256_and_si256(_mm256_srli_epi16(h, 2), m30),
                    ];
                    let ql0 = _mm256_loadu_si256(tile.ql[j][0][l].as_ptr() as *const __m256i);
                    let ql1 = _mm256_loadu_si256(tile.ql[j][1][l].as_ptr() as *const __m256i);
                    let q = [
                        _mm256_or_si256(_mm256_and_si256(ql0, m4), hb[0]),
                        _mm256_or_si256(_mm256_and_si256(ql1, m4), hb[1]),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), hb[2]),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), hb[3]),
                    ];
                    for (r, lane) in lane.iter_mut().enumerate() {
                        let a = &acts[r * nb + b];
                        for (x, qx) in q.iter().enumerate() {
                            let quad = j * 32 + x * 8 + l;
                            let av = bcast4(&a.q.qs, 4 * quad);
                            let s = sc[8 * j + 2 * x + l / 4];
                            let sum = if VNNI {
                                let start = _mm256_set1_epi32(a.bias[quad]);
                                _mm256_mullo_epi32(_mm256_dpbusd_epi32(start, *qx, av), s)
                            } else {
                                let p = _mm256_sub_epi16(
                                    _mm256_maddubs_epi16(*qx, av),
                                    _mm256_maddubs_epi16(m32, av),
                                );
                                _mm256_madd_epi16(s, p)
                            };
                            *lane = _mm256_add_epi32(*lane, sum);
                        }
                    }
                }
                for r in 0..rows {
                    acc[r][l] = _mm256_fmadd_ps(d[r], _mm256_cvtepi32_ps(lane[r]), acc[r][l]);
                }
            }
        }
        for r in 0..rows {
            hsum8_store(&acc[r], &mut out[r]);
        }
    }

    /// candle's single-row Q8_0 kernel (`vec_dot_q8_0_q8_0`), per column:
    /// lane `l` sums the products of elements `4l..4l+4` of each block as
    /// candle does (`|w|` times `a` carrying `w`'s sign; the pairs stay
    /// within i16, so VNNI's sums are the same integers),
    /// `acc_l = fma(x.d * y.d, lane_l, acc_l)`, then candle's horizontal
    /// sum of the eight lanes.
    #[inline(always)]
    pub(super) unsafe fn q8_0<const VNNI: bool, const R: usize>(
        t: &[TileQ8_0],
        acts: &[Q8_0],
        nb: usize,
        out: &mut [[f32; TILE]; ROWS],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); 8]; R];
        for (b, tile) in t.iter().enumerate() {
            prefetch_ahead(tile);
            let xd = _mm256_cvtph_ps(_mm_loadu_si128(tile.d.as_ptr() as *const __m128i));
            let mut d = [_mm256_setzero_ps(); R];
            for (r, d) in d.iter_mut().enumerate() {
                *d = _mm256_mul_ps(xd, _mm256_set1_ps(h(acts[r * nb + b].d)));
            }
            for (l, q) in tile.qs.iter().enumerate() {
                let w = _mm256_loadu_si256(q.as_ptr() as *const __m256i);
                let aw = _mm256_sign_epi8(w, w);
                for r in 0..R {
                    let sa = _mm256_sign_epi8(bcast4(&acts[r * nb + b].qs, 4 * l), w);
                    let lane = if VNNI {
                        _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sa)
                    } else {
                        _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sa), ones)
                    };
                    acc[r][l] = _mm256_fmadd_ps(d[r], _mm256_cvtepi32_ps(lane), acc[r][l]);
                }
            }
        }
        for r in 0..R {
            hsum8_store(&acc[r], &mut out[r]);
        }
    }

    /// candle's hsum_float_8 for 8 columns at once, one column per lane:
    /// (x4 + x0, x5 + x1, x6 + x2, x7 + x3), then (r0 + r2) + (r1 + r3).
    #[inline(always)]
    unsafe fn hsum8_store(a: &[__m256; 8], out: &mut [f32; TILE]) {
        let r0 = _mm256_add_ps(a[4], a[0]);
        let r1 = _mm256_add_ps(a[5], a[1]);
        let r2 = _mm256_add_ps(a[6], a[2]);
        let r3 = _mm256_add_ps(a[7], a[3]);
        let s = _mm256_add_ps(_mm256_add_ps(r0, r2), _mm256_add_ps(r1, r3));
        _mm256_storeu_ps(out.as_mut_ptr(), s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::Module;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    fn isas() -> Vec<Isa> {
        let mut v = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
                v.push(Isa::Avx2);
            }
            if detect() == Isa::Avx512Vnni {
                v.push(Isa::Avx512Vnni);
            }
        }
        v
    }

    /// Our kernels against candle's QMatMul, bit for bit: every row equals
    /// candle's result for that row alone, for decode and prefill shapes,
    /// with every instruction set this machine has.
    #[test]
    fn bit_identical_to_candle_single_rows() {
        for dtype in [
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            for (m, k, n) in [
                (1, 256, 32),
                (1, 768, 192),
                (5, 256, 80),
                (17, 512, 64),
                (4, 1024, 128),
                (3, 256, 24),
                // An odd number of column groups at one row: pairs, then one.
                (1, 512, 48),
            ] {
                let w =
                    Tensor::from_vec(random(n * k, 1 + m as u64), (n, k), &Device::Cpu).unwrap();
                let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
                let x =
                    Tensor::from_vec(random(m * k, 7 + n as u64), (1, m, k), &Device::Cpu).unwrap();
                let qm = QMatMul::from_arc(q.clone()).unwrap();
                let mut want: Vec<f32> = Vec::new();
                for r in 0..m {
                    let row = x.narrow(1, r, 1).unwrap();
                    want.extend(
                        qm.forward(&row)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap(),
                    );
                }
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                for isa in isas() {
                    let Some(fast) = FastQ::with_isa(&q, isa) else {
                        assert!(
                            dtype == GgmlDType::Q4K && n % 16 != 0,
                            "{dtype:?} n={n} should be supported"
                        );
                        continue;
                    };
                    let got: Vec<f32> = fast
                        .forward(&x)
                        .unwrap()
                        .expect("taken")
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{dtype:?} m={m} k={k} n={n} isa={isa:?}"
                    );
                }
            }
        }
    }

    /// Q8_0 where candle runs its per-column `vec_dot` (k not a whole
    /// number of 256-blocks): SmolLM2's and Qwen2.5-0.5B's LM heads.
    #[test]
    fn q8_0_bit_identical_to_candle_single_rows() {
        for (m, k, n) in [
            (1, 576, 64),
            (1, 896, 40),
            (5, 96, 16),
            (17, 160, 24),
            (4, 32, 8),
        ] {
            let w = Tensor::from_vec(random(n * k, 11 + k as u64), (n, k), &Device::Cpu).unwrap();
            let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
            let x = Tensor::from_vec(random(m * k, 5 + n as u64), (1, m, k), &Device::Cpu).unwrap();
            let qm = QMatMul::from_arc(q.clone()).unwrap();
            let mut want: Vec<u32> = Vec::new();
            for r in 0..m {
                let row = qm.forward(&x.narrow(1, r, 1).unwrap()).unwrap();
                want.extend(
                    row.flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|f| f.to_bits()),
                );
            }
            for isa in isas() {
                let fast = FastQ::with_isa(&q, isa).expect("Q8_0 with k % 256 != 0 is taken");
                let got: Vec<u32> = fast
                    .forward(&x)
                    .unwrap()
                    .expect("taken")
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|f| f.to_bits())
                    .collect();
                assert_eq!(got, want, "Q8_0 m={m} k={k} n={n} isa={isa:?}");
            }
        }
    }

    #[test]
    fn unsupported_shapes_fall_back() {
        let w = Tensor::from_vec(random(12 * 64, 3), (12, 64), &Device::Cpu).unwrap();
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap());
        assert!(
            FastQ::new(&q).is_none(),
            "12 columns is not a whole number of tiles"
        );
        let w = Tensor::from_vec(random(16 * 256, 3), (16, 256), &Device::Cpu).unwrap();
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        assert!(
            FastQ::new(&q).is_none(),
            "Q8_0 over whole 256-blocks is left to candle's own kernels"
        );
    }
}
