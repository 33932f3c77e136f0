//! Energy and memory beside time: GPU energy through NVML (the device's
//! total-energy counter, or a ≥ 20 Hz power sampler integrated where the
//! counter is missing), CPU energy through the powercap interface (RAPL),
//! and a sample's peak resident memory. Every source that cannot be read
//! is recorded with its reason; nothing is ever recorded as zero.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Where an energy figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergySource {
    /// NVML's total-energy counter (millijoules; Volta and newer).
    NvmlCounter,
    /// NVML power readings sampled in the background and integrated.
    NvmlPowerSamples,
    /// The powercap interface's package energy counters (RAPL).
    Rapl,
}

/// One energy source of a run, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub source: Option<EnergySource>,
    /// What was read (device, counter files).
    pub detail: Option<String>,
    /// Set when `source` is `None`.
    pub unavailable_reason: Option<String>,
    /// Mean power over an idle interval before the run, W.
    pub idle_watts: Option<f64>,
}

impl SourceInfo {
    fn unavailable(reason: String) -> Self {
        Self {
            source: None,
            detail: None,
            unavailable_reason: Some(reason),
            idle_watts: None,
        }
    }
}

/// The GPU's identity and settings at the start of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub name: String,
    pub uuid: String,
    pub driver_version: String,
    pub cuda_driver_version: Option<String>,
    pub power_limit_w: Option<f64>,
    pub sm_clock_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
}

/// What the manifest records about energy and memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyInfo {
    pub gpu: SourceInfo,
    pub cpu: SourceInfo,
    pub gpu_device: Option<GpuInfo>,
    /// How peak resident memory is read, or why it is not.
    pub peak_rss: String,
}

/// A sample's energy and memory figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnergyReading {
    pub gpu_j: Option<f64>,
    pub cpu_j: Option<f64>,
    pub peak_gpu_mem_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
    /// What the host did to the sample (run-queue delay, steal, other
    /// processes), where the run meters it.
    pub interference: Option<super::interference::InterferenceReading>,
}

/// A cumulative energy counter read at the measurement core's timestamps.
pub trait EnergyMeter: Send {
    /// Starts an interval.
    fn begin(&mut self) -> Result<(), String>;
    /// Ends it: joules spent since `begin`, and the peak device memory in
    /// it where the meter sees one.
    fn end(&mut self) -> Result<(f64, Option<u64>), String>;
}

/// The trapezoid integral of power samples (ns, W) over [t0, t1], with
/// the trace interpolated at both ends; `None` when the samples do not
/// cover the interval.
pub fn integrate_power(samples: &[(u64, f64)], t0: u64, t1: u64) -> Option<f64> {
    if t1 < t0 || samples.len() < 2 {
        return None;
    }
    let first = samples.first()?.0;
    let last = samples.last()?.0;
    if t0 < first || t1 > last {
        return None;
    }
    let at = |t: u64| -> f64 {
        let i = samples.partition_point(|s| s.0 <= t);
        if i == 0 {
            return samples[0].1;
        }
        if i >= samples.len() {
            return samples[samples.len() - 1].1;
        }
        let (a, b) = (samples[i - 1], samples[i]);
        let f = (t - a.0) as f64 / (b.0 - a.0).max(1) as f64;
        a.1 + f * (b.1 - a.1)
    };
    let mut pts: Vec<(u64, f64)> = vec![(t0, at(t0))];
    pts.extend(samples.iter().copied().filter(|s| s.0 > t0 && s.0 < t1));
    pts.push((t1, at(t1)));
    Some(
        pts.windows(2)
            .map(|w| (w[1].0 - w[0].0) as f64 / 1e9 * (w[0].1 + w[1].1) / 2.0)
            .sum(),
    )
}

/// RAPL through powercap: the package zones (`intel-rapl:N`, not their
/// subzones, which the package already counts), each counter unwrapped at
/// its `max_energy_range_uj`.
pub struct RaplMeter {
    zones: Vec<RaplZone>,
}

struct RaplZone {
    energy: PathBuf,
    range_uj: u64,
    start_uj: u64,
}

fn read_u64(p: &Path) -> Result<u64, String> {
    let s = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    s.trim()
        .parse()
        .map_err(|_| format!("{}: expected an integer, got {:?}", p.display(), s.trim()))
}

impl RaplMeter {
    /// Opens the package zones under `root` (`/sys/class/powercap`).
    pub fn open(root: &Path) -> Result<(Self, String), String> {
        let entries = std::fs::read_dir(root)
            .map_err(|e| format!("no RAPL package zone under {} ({e})", root.display()))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("intel-rapl:") && n.matches(':').count() == 1)
            .collect();
        names.sort();
        if names.is_empty() {
            return Err(format!("no RAPL package zone under {}", root.display()));
        }
        let mut zones = Vec::new();
        for n in &names {
            let dir = root.join(n);
            let energy = dir.join("energy_uj");
            let start_uj = read_u64(&energy)?;
            let range_uj = read_u64(&dir.join("max_energy_range_uj"))?;
            zones.push(RaplZone {
                energy,
                range_uj,
                start_uj,
            });
        }
        Ok((Self { zones }, format!("RAPL {}", names.join(", "))))
    }
}

impl EnergyMeter for RaplMeter {
    fn begin(&mut self) -> Result<(), String> {
        for z in &mut self.zones {
            z.start_uj = read_u64(&z.energy)?;
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(f64, Option<u64>), String> {
        let mut uj = 0u64;
        for z in &self.zones {
            let now = read_u64(&z.energy)?;
            // One wrap at most between two reads of a sample.
            uj += if now >= z.start_uj {
                now - z.start_uj
            } else {
                z.range_uj - z.start_uj + now
            };
        }
        Ok((uj as f64 / 1e6, None))
    }
}

/// NVML on one GPU: the energy counter where the device has one, else
/// the integral of a background power sampler (50 Hz); the sampler also
/// tracks peak memory.
pub struct NvmlMeter {
    nvml: Arc<nvml_wrapper::Nvml>,
    index: u32,
    counter: bool,
    start_mj: u64,
    start_ns: u64,
    origin: Instant,
    trace: Arc<Mutex<Vec<(u64, f64, u64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

/// Sampling period of the power sampler (50 Hz; the issue asks ≥ 20 Hz).
const SAMPLE_PERIOD: Duration = Duration::from_millis(20);

impl NvmlMeter {
    pub fn open(index: u32) -> Result<(Self, GpuInfo, EnergySource), String> {
        let nvml = nvml_wrapper::Nvml::init()
            .map_err(|e| format!("NVML is not available ({e}); no GPU energy or memory"))?;
        let nvml = Arc::new(nvml);
        let d = nvml
            .device_by_index(index)
            .map_err(|e| format!("NVML device {index}: {e}"))?;
        let counter = d.total_energy_consumption().is_ok();
        let info = GpuInfo {
            name: d.name().unwrap_or_default(),
            uuid: d.uuid().unwrap_or_default(),
            driver_version: nvml.sys_driver_version().unwrap_or_default(),
            cuda_driver_version: nvml
                .sys_cuda_driver_version()
                .ok()
                .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10)),
            power_limit_w: d.enforced_power_limit().ok().map(|mw| mw as f64 / 1e3),
            sm_clock_mhz: d
                .clock_info(nvml_wrapper::enum_wrappers::device::Clock::SM)
                .ok(),
            mem_clock_mhz: d
                .clock_info(nvml_wrapper::enum_wrappers::device::Clock::Memory)
                .ok(),
        };
        let origin = Instant::now();
        let trace = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (nvml, trace, stop) = (nvml.clone(), trace.clone(), stop.clone());
            std::thread::spawn(move || {
                let Ok(d) = nvml.device_by_index(index) else {
                    return;
                };
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = origin.elapsed().as_nanos() as u64;
                    let w = d
                        .power_usage()
                        .map(|mw| mw as f64 / 1e3)
                        .unwrap_or(f64::NAN);
                    let mem = d.memory_info().map(|m| m.used).unwrap_or(0);
                    if let Ok(mut tr) = trace.lock() {
                        tr.push((t, w, mem));
                        // Keep the last ten minutes.
                        if tr.len() > 30_000 {
                            tr.drain(..10_000);
                        }
                    }
                    std::thread::sleep(SAMPLE_PERIOD);
                }
            })
        };
        let source = if counter {
            EnergySource::NvmlCounter
        } else {
            EnergySource::NvmlPowerSamples
        };
        Ok((
            Self {
                nvml,
                index,
                counter,
                start_mj: 0,
                start_ns: 0,
                origin,
                trace,
                stop,
                sampler: Some(sampler),
            },
            info,
            source,
        ))
    }

    fn counter_mj(&self) -> Result<u64, String> {
        self.nvml
            .device_by_index(self.index)
            .and_then(|d| d.total_energy_consumption())
            .map_err(|e| format!("NVML energy counter: {e}"))
    }
}

impl EnergyMeter for NvmlMeter {
    fn begin(&mut self) -> Result<(), String> {
        self.start_ns = self.origin.elapsed().as_nanos() as u64;
        if self.counter {
            self.start_mj = self.counter_mj()?;
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(f64, Option<u64>), String> {
        let end_ns = self.origin.elapsed().as_nanos() as u64;
        let joules = if self.counter {
            Some((self.counter_mj()?.saturating_sub(self.start_mj)) as f64 / 1e3)
        } else {
            None
        };
        // Let the sampler take a reading past the end of the interval.
        if !self.counter {
            std::thread::sleep(SAMPLE_PERIOD * 2);
        }
        let trace = self.trace.lock().map_err(|_| "power sampler poisoned")?;
        let inside: Vec<&(u64, f64, u64)> = trace
            .iter()
            .filter(|s| s.0 >= self.start_ns && s.0 <= end_ns)
            .collect();
        let peak_mem = inside.iter().map(|s| s.2).max();
        let joules = match joules {
            Some(j) => j,
            None => {
                let pts: Vec<(u64, f64)> = trace
                    .iter()
                    .filter(|s| s.1.is_finite())
                    .map(|s| (s.0, s.1))
                    .collect();
                integrate_power(&pts, self.start_ns, end_ns).ok_or_else(|| {
                    "the power samples do not cover the sample; it was shorter than the sampler's start"
                        .to_string()
                })?
            }
        };
        Ok((joules, peak_mem))
    }
}

impl Drop for NvmlMeter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.sampler.take() {
            let _ = h.join();
        }
    }
}

/// Peak resident memory of this process over an interval: Linux's VmHWM,
/// reset at the start through /proc/self/clear_refs.
pub struct PeakRss {
    available: bool,
}

fn vm_hwm_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl PeakRss {
    pub fn open() -> (Self, String) {
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        match (reset, vm_hwm_bytes()) {
            (true, Some(_)) => (
                Self { available: true },
                "VmHWM of /proc/self/status, reset per sample".into(),
            ),
            _ => (
                Self { available: false },
                "unavailable: /proc/self/status VmHWM cannot be read and reset (Linux only)".into(),
            ),
        }
    }

    pub fn begin(&self) {
        if self.available {
            let _ = std::fs::write("/proc/self/clear_refs", "5");
        }
    }

    pub fn end(&self) -> Option<u64> {
        self.available.then(vm_hwm_bytes).flatten()
    }
}

/// The run's meters: GPU (NVML), CPU (RAPL), peak RSS and the host's
/// interference.
pub struct Meters {
    pub gpu: Option<Box<dyn EnergyMeter>>,
    pub cpu: Option<Box<dyn EnergyMeter>>,
    pub rss: PeakRss,
    pub host: Option<super::interference::Meter>,
}

impl Meters {
    /// Opens what this machine can read: NVML on `cuda:N` devices, RAPL
    /// under `powercap_root`. What cannot be read carries its reason.
    pub fn open(device_name: &str, powercap_root: &Path) -> (Self, EnergyInfo) {
        let (gpu, gpu_info, gpu_device) = match device_name.strip_prefix("cuda:") {
            None => (
                None,
                SourceInfo::unavailable(format!("device {device_name} is not a GPU")),
                None,
            ),
            Some(i) => match NvmlMeter::open(i.parse().unwrap_or(0)) {
                Ok((m, info, source)) => (
                    Some(Box::new(m) as Box<dyn EnergyMeter>),
                    SourceInfo {
                        source: Some(source),
                        detail: Some(format!("{} ({})", info.name, info.uuid)),
                        unavailable_reason: None,
                        idle_watts: None,
                    },
                    Some(info),
                ),
                Err(why) => (None, SourceInfo::unavailable(why), None),
            },
        };
        let (cpu, cpu_info) = match RaplMeter::open(powercap_root) {
            Ok((m, detail)) => (
                Some(Box::new(m) as Box<dyn EnergyMeter>),
                SourceInfo {
                    source: Some(EnergySource::Rapl),
                    detail: Some(detail),
                    unavailable_reason: None,
                    idle_watts: None,
                },
            ),
            Err(why) => (None, SourceInfo::unavailable(why)),
        };
        let (rss, rss_info) = PeakRss::open();
        (
            Self {
                gpu,
                cpu,
                rss,
                host: Some(super::interference::Meter::open()),
            },
            EnergyInfo {
                gpu: gpu_info,
                cpu: cpu_info,
                gpu_device,
                peak_rss: rss_info,
            },
        )
    }

    /// No meters (tests, `bench`).
    pub fn none() -> Self {
        Self {
            gpu: None,
            cpu: None,
            rss: PeakRss { available: false },
            host: None,
        }
    }

    pub fn begin(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for m in [&mut self.gpu, &mut self.cpu].into_iter().flatten() {
            if let Err(e) = m.begin() {
                errors.push(e);
            }
        }
        self.rss.begin();
        // Last, so that its interval hugs the timed one.
        if let Some(h) = &mut self.host {
            h.begin();
        }
        errors
    }

    /// Ends the interval; a meter that fails to read gives `None` and its
    /// error.
    pub fn end(&mut self) -> (EnergyReading, Vec<String>) {
        let mut errors = Vec::new();
        let mut r = EnergyReading {
            interference: self.host.as_mut().and_then(|h| h.end()),
            ..Default::default()
        };
        if let Some(m) = &mut self.gpu {
            match m.end() {
                Ok((j, mem)) => {
                    r.gpu_j = Some(j);
                    r.peak_gpu_mem_bytes = mem;
                }
                Err(e) => errors.push(e),
            }
        }
        if let Some(m) = &mut self.cpu {
            match m.end() {
                Ok((j, _)) => r.cpu_j = Some(j),
                Err(e) => errors.push(e),
            }
        }
        r.peak_rss_bytes = self.rss.end();
        (r, errors)
    }

    /// Mean power of each source over an idle `interval` (before a run).
    pub fn idle_watts(&mut self, info: &mut EnergyInfo, interval: Duration) {
        if self.gpu.is_none() && self.cpu.is_none() {
            return;
        }
        self.begin();
        std::thread::sleep(interval);
        let (r, _) = self.end();
        let secs = interval.as_secs_f64();
        info.gpu.idle_watts = r.gpu_j.map(|j| j / secs);
        info.cpu.idle_watts = r.cpu_j.map(|j| j / secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_integrator_recovers_a_known_integral() {
        // P(t) = 100 + 50·sin(2πt) W sampled at 50 Hz for 2 s: the integral
        // over [0.25 s, 1.75 s] is 150 J + 50/(2π)·(cos(π/2) − cos(3.5π)) = 150 J.
        let trace: Vec<(u64, f64)> = (0..=100)
            .map(|i| {
                let t = i as f64 * 0.02;
                (
                    (t * 1e9) as u64,
                    100.0 + 50.0 * (2.0 * std::f64::consts::PI * t).sin(),
                )
            })
            .collect();
        let j = integrate_power(&trace, 250_000_000, 1_750_000_000).unwrap();
        assert!((j - 150.0).abs() < 0.05, "{j}");
        // A constant 30 W for 0.5 s, with ends between samples.
        let flat: Vec<(u64, f64)> = (0..10).map(|i| (i * 100_000_000, 30.0)).collect();
        let j = integrate_power(&flat, 123_000_000, 623_000_000).unwrap();
        assert!((j - 15.0).abs() < 1e-9, "{j}");
        // Outside the trace: no figure rather than a made-up one.
        assert_eq!(integrate_power(&flat, 0, 2_000_000_000), None);
        assert_eq!(integrate_power(&flat[..1], 0, 0), None);
    }

    fn zone(root: &Path, name: &str, uj: u64, range: u64) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("energy_uj"), format!("{uj}\n")).unwrap();
        std::fs::write(d.join("max_energy_range_uj"), format!("{range}\n")).unwrap();
    }

    #[test]
    fn rapl_sums_packages_unwraps_counters_and_skips_subzones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        zone(root, "intel-rapl:0", 1_000_000, 10_000_000);
        zone(root, "intel-rapl:1", 9_500_000, 10_000_000);
        // A subzone (core) counted within its package: left out.
        zone(root, "intel-rapl:0:0", 5, 10_000_000);
        let (mut m, detail) = RaplMeter::open(root).unwrap();
        assert_eq!(detail, "RAPL intel-rapl:0, intel-rapl:1");
        m.begin().unwrap();
        std::fs::write(root.join("intel-rapl:0/energy_uj"), "3500000").unwrap();
        // Package 1 wrapped: 0.5 J to the range, then 1 J.
        std::fs::write(root.join("intel-rapl:1/energy_uj"), "1000000").unwrap();
        std::fs::write(root.join("intel-rapl:0:0/energy_uj"), "9999999").unwrap();
        let (j, mem) = m.end().unwrap();
        assert!((j - 4.0).abs() < 1e-9, "{j}");
        assert_eq!(mem, None);
    }

    #[test]
    fn without_sources_every_figure_is_a_reason_not_a_zero() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, info) = Meters::open("cpu", dir.path());
        assert!(info.gpu.source.is_none());
        assert!(info
            .gpu
            .unavailable_reason
            .as_deref()
            .unwrap()
            .contains("not a GPU"));
        assert!(info.cpu.source.is_none());
        assert!(info
            .cpu
            .unavailable_reason
            .as_deref()
            .unwrap()
            .contains("no RAPL"));
        m.begin();
        let (r, errors) = m.end();
        assert!(errors.is_empty());
        assert_eq!((r.gpu_j, r.cpu_j), (None, None));
        // A GPU name without NVML (this machine, CI) degrades the same way.
        let (_, info) = Meters::open("cuda:0", dir.path());
        if info.gpu.source.is_none() {
            assert!(info.gpu.unavailable_reason.unwrap().contains("NVML"));
        }
        // An unreadable counter file names itself.
        let root = dir.path().join("pc");
        zone(&root, "intel-rapl:0", 1, 10);
        std::fs::write(root.join("intel-rapl:0/energy_uj"), "n/a").unwrap();
        let e = RaplMeter::open(&root).err().unwrap();
        assert!(
            e.contains("energy_uj") && e.contains("expected an integer"),
            "{e}"
        );
    }
}
