//! The machine a run happens on: device selection, threads, host facts.

use candle_core::Device;

use crate::results::{DeviceInfo, GitInfo, HostInfo};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("--device {given}: expected `cpu`, `cuda` or `cuda:N`")]
    Syntax { given: String },
    #[error("--device {given}: this pdbench binary was built without CUDA; build one with `scripts/build-cuda.sh` (cargo build --release --features cuda)")]
    NotBuilt { given: String },
    #[error("--device {given}: CUDA device {ordinal} could not be opened: {detail}")]
    Open {
        given: String,
        ordinal: usize,
        detail: String,
    },
}

/// A parsed `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Result<Self, DeviceError> {
        let syntax = || DeviceError::Syntax { given: s.into() };
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(syntax)?;
                n.parse().map(Self::Cuda).map_err(|_| syntax())
            }
        }
    }

    pub fn name(&self) -> String {
        match self {
            Self::Cpu => "cpu".into(),
            Self::Cuda(n) => format!("cuda:{n}"),
        }
    }

    pub fn open(&self) -> Result<Device, DeviceError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(DeviceError::NotBuilt { given: self.name() });
                }
                Device::new_cuda(*n).map_err(|e| DeviceError::Open {
                    given: self.name(),
                    ordinal: *n,
                    detail: e.to_string(),
                })
            }
        }
    }
}

/// The thread count this process's pools were given, once given.
static THREADS_SET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// The thread count set earlier in this process (a sweep's first run),
/// which a later run in it cannot change.
pub fn threads_already_set() -> Option<usize> {
    THREADS_SET.get().copied()
}

/// Sets the CPU thread count for candle and rayon. Must run before any
/// parallel work starts: candle sizes its pools once per process, so a
/// second call keeps the first count (and says so when asked for another).
pub fn set_threads(n: Option<usize>) -> usize {
    if let Some(&fixed) = THREADS_SET.get() {
        if n.is_some_and(|n| n != fixed) {
            eprintln!(
                "warning: this process's thread pools have {fixed} threads already; {} threads cannot be set now",
                n.unwrap_or(fixed)
            );
        }
        return fixed;
    }
    if let Some(n) = n {
        let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
        if cores > 0 && n > cores {
            eprintln!(
                "warning: --threads {n} is above this machine's {cores} logical cores; the threads take turns, and timings suffer"
            );
        }
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    let t = candle_core::utils::get_num_threads();
    let _ = THREADS_SET.set(t);
    t
}

pub fn device_info(spec: &DeviceSpec, threads: usize) -> DeviceInfo {
    DeviceInfo {
        name: spec.name(),
        threads,
        cuda_build: cfg!(feature = "cuda"),
    }
}

pub fn host_info() -> HostInfo {
    use sysinfo::System;
    let mut sys = System::new();
    sys.refresh_memory();
    sys.refresh_cpu_all();
    let cpu_model = sys
        .cpus()
        .first()
        .map(|c| c.brand().trim().to_string())
        .unwrap_or_default();
    HostInfo {
        cpu_model,
        physical_cores: System::physical_core_count(),
        logical_cores: sys.cpus().len(),
        memory_bytes: sys.total_memory(),
        os: System::long_os_version().unwrap_or_else(|| std::env::consts::OS.into()),
        kernel: System::kernel_version().unwrap_or_default(),
        hostname: System::host_name().unwrap_or_default(),
        cpu_flags: cpu_flags(),
    }
}

/// The instruction-set features this binary was compiled to assume
/// (`.cargo/config.toml` builds with target-cpu=native) that this CPU
/// lacks, as an error that says what to do.
pub fn check_build_features() -> anyhow::Result<()> {
    #[allow(unused_mut)]
    let mut missing: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! need {
            ($($f:tt),*) => {$(
                if cfg!(target_feature = $f) && !std::arch::is_x86_feature_detected!($f) {
                    missing.push($f);
                }
            )*};
        }
        need!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "bmi2",
            "avxvnni",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512dq",
            "avx512vnni",
            "avx512bf16",
            "avx512vbmi"
        );
    }
    if missing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "this pdbench binary was built for CPU features this machine lacks ({}): \
             .cargo/config.toml builds with target-cpu=native, so build pdbench on the host \
             that runs it (or set RUSTFLAGS=\"-C target-cpu=x86-64-v3\" for a portable AVX2 build)",
            missing.join(", ")
        )
    }
}

/// The SIMD features of this CPU that matter to the kernels.
pub fn cpu_flags() -> Vec<String> {
    #[allow(unused_mut)]
    let mut flags: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! have {
            ($($f:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($f) {
                    flags.push($f);
                }
            )*};
        }
        have!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avxvnni",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16",
            "avx512vbmi"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! have {
            ($($f:tt),*) => {$(
                if std::arch::is_aarch64_feature_detected!($f) {
                    flags.push($f);
                }
            )*};
        }
        have!("neon", "dotprod", "i8mm", "sve");
    }
    flags.into_iter().map(String::from).collect()
}

/// The commit this binary was built from, recorded by build.rs.
pub fn git_info() -> GitInfo {
    let commit = option_env!("PDBENCH_GIT_COMMIT")
        .filter(|s| !s.is_empty())
        .map(String::from);
    let dirty = option_env!("PDBENCH_GIT_DIRTY").and_then(|s| match s {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    });
    GitInfo { commit, dirty }
}
