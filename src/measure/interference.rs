//! The interference meter: what the host did to a sample while it was
//! timed. Read at the sample's start and end, outside its timed interval,
//! like the energy meters.
//!
//! The headline figure is the share of the run's thread time that other
//! processes took: the time this process's threads sat runnable on a run
//! queue (`/proc/self/task/*/schedstat`, nanoseconds), capped by the CPU
//! time other processes used on this process's CPUs in the same interval
//! (the root cpuacct cgroup's per-CPU usage, nanoseconds, else
//! `/proc/stat`'s 10 ms ticks) and by the thread time the process did not
//! run (wall × threads − its CPU time), plus the steal time of those CPUs;
//! over wall time × threads. The caps keep out delays that are the run's
//! own (its threads waiting for each other, a helper thread waiting while
//! the decoding threads run on); the run-queue delay keeps out what others
//! ran on cores this run did not want. Beside it go involuntary
//! context switches (getrusage) and the process's own CPU time.
//! Scoring runs between samples, so sandboxed test programs never fall in
//! a timed interval.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The figure above which a method, and the run that holds it, is flagged
/// as disturbed by the host, in percent of its thread time. Measured on
/// the 2-core reference machine (reports/interference): quiet toy runs
/// give methods 0.0–3.1%; a busy loop on the other core of a 1-thread run
/// gives 4–38%, and moved speedups by up to half.
pub const DISTURBED_PCT: f64 = 5.0;

/// What the host did to one sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InterferenceReading {
    /// Time this process's threads waited runnable for a CPU, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_delay_ns: Option<u64>,
    /// Steal time of the CPUs this process may use, summed over them, ns,
    /// in whole ticks of `tick_ns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steal_ns: Option<u64>,
    /// The resolution of `steal_ns` (/proc/stat's tick).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_ns: Option<u64>,
    /// Involuntary context switches of this process's threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub involuntary_switches: Option<u64>,
    /// CPU time of this process, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ns: Option<u64>,
    /// CPU time that other processes took on the CPUs this process may
    /// use, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_cpu_ns: Option<u64>,
    /// `other_cpu_ns` comes from 10 ms ticks: too coarse to bound one
    /// short sample's delay, so it is shown, not used as a bound.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub other_cpu_from_ticks: bool,
    /// CPUs this process may use (its affinity mask).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<usize>,
}

/// The thread time other processes took from a sample, ns: the time this
/// process's threads waited on a run queue, bounded by the CPU time other
/// processes took and by the thread time this process did not run. Each
/// bound keeps out a delay that is not the host's: threads of the run
/// waiting for each other (more runnable pool threads than cores), and a
/// helper thread that waited while the decoding threads ran on. `None`
/// when the run-queue delay could not be read.
pub fn delay_ns(r: &InterferenceReading, wall_ns: u64, threads: usize) -> Option<f64> {
    let mut delay = r.run_delay_ns? as f64;
    if let Some(o) = r.other_cpu_ns.filter(|_| !r.other_cpu_from_ticks) {
        delay = delay.min(o as f64);
    }
    if let Some(c) = r.cpu_ns {
        let idle = (wall_ns as f64 * threads.max(1) as f64 - c as f64).max(0.0);
        delay = delay.min(idle);
    }
    Some(delay)
}

/// The steal time that ticks of `tick_ns` show beyond doubt: a sample much
/// shorter than a tick reads a whole tick or none, so a few ticks over
/// short samples may be one short steal; this takes two standard
/// deviations of that counting noise off (`s − 2·√(s·tick)`, ≥ 0). A long
/// burst of steal keeps nearly all of its time.
pub fn steal_beyond_doubt_ns(steal_ns: u64, tick_ns: u64) -> f64 {
    let s = steal_ns as f64;
    (s - 2.0 * (s * tick_ns as f64).sqrt()).max(0.0)
}

/// The thread time the host took from one sample: [`delay_ns`] plus its
/// steal beyond doubt. All the steal of this process's CPUs counts: an
/// idle CPU accrues almost none, so most of it is on the CPUs the run kept
/// busy.
pub fn lost_ns(r: &InterferenceReading, wall_ns: u64, threads: usize) -> Option<f64> {
    let steal = steal_beyond_doubt_ns(r.steal_ns.unwrap_or(0), r.tick_ns.unwrap_or(10_000_000));
    Some(delay_ns(r, wall_ns, threads)? + steal)
}

/// Percent of the thread time (wall × threads) the host took.
pub fn interference_pct(r: &InterferenceReading, wall_ns: u64, threads: usize) -> Option<f64> {
    let denom = wall_ns as f64 * threads.max(1) as f64;
    if denom <= 0.0 {
        return None;
    }
    Some(100.0 * lost_ns(r, wall_ns, threads)? / denom)
}

/// Totals over samples: (percent of thread time lost, involuntary switches
/// per second, other processes' CPU share of this process's CPUs in
/// percent, this process's CPU time over wall × threads in percent).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InterferenceSummary {
    /// Samples with a reading.
    pub samples: usize,
    pub interference_pct: f64,
    /// The worst single sample's figure.
    pub max_sample_pct: f64,
    pub involuntary_switches_per_s: Option<f64>,
    pub other_cpu_pct: Option<f64>,
    pub cpu_pct: Option<f64>,
}

impl InterferenceSummary {
    /// Over the default threshold.
    pub fn disturbed(&self) -> bool {
        self.over(DISTURBED_PCT)
    }

    pub fn over(&self, threshold_pct: f64) -> bool {
        self.interference_pct > threshold_pct
    }
}

/// Time-weighted totals over `(reading, wall_ns)` pairs at `threads`;
/// `None` when no sample has a reading.
pub fn summarize<'a>(
    readings: impl IntoIterator<Item = (&'a InterferenceReading, u64)>,
    threads: usize,
) -> Option<InterferenceSummary> {
    let threads = threads.max(1);
    let (mut n, mut lost, mut wall, mut worst) = (0usize, 0.0, 0.0, 0.0f64);
    let (mut steal, mut tick) = (0u64, 10_000_000u64);
    let (mut switches, mut switch_wall) = (0.0, 0.0);
    let (mut other, mut other_denom) = (0.0, 0.0);
    let (mut cpu, mut cpu_wall) = (0.0, 0.0);
    for (r, wall_ns) in readings {
        let Some(d) = delay_ns(r, wall_ns, threads) else {
            continue;
        };
        n += 1;
        lost += d;
        steal += r.steal_ns.unwrap_or(0);
        tick = r.tick_ns.unwrap_or(tick);
        wall += wall_ns as f64;
        if let Some(p) = interference_pct(r, wall_ns, threads) {
            worst = worst.max(p);
        }
        if let Some(s) = r.involuntary_switches {
            switches += s as f64;
            switch_wall += wall_ns as f64;
        }
        if let (Some(o), Some(c)) = (r.other_cpu_ns, r.cpus) {
            other += o as f64;
            other_denom += wall_ns as f64 * c as f64;
        }
        if let Some(c) = r.cpu_ns {
            cpu += c as f64;
            cpu_wall += wall_ns as f64;
        }
    }
    if n == 0 || wall <= 0.0 {
        return None;
    }
    // The steal is judged over the method's total, where ticks add up.
    lost += steal_beyond_doubt_ns(steal, tick);
    let t = threads as f64;
    Some(InterferenceSummary {
        samples: n,
        interference_pct: 100.0 * lost / (wall * t),
        max_sample_pct: worst,
        involuntary_switches_per_s: (switch_wall > 0.0).then(|| switches / (switch_wall / 1e9)),
        other_cpu_pct: (other_denom > 0.0).then(|| 100.0 * other / other_denom),
        cpu_pct: (cpu_wall > 0.0).then(|| 100.0 * cpu / (cpu_wall * t)),
    })
}

/// Cumulative counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Per thread id: run-queue delay, ns.
    pub run_delay_ns: Option<HashMap<u32, u64>>,
    pub involuntary_switches: Option<u64>,
    pub cpu_ns: Option<u64>,
    /// Every task's CPU time on the CPUs in the affinity mask, ns (the
    /// root cpuacct cgroup).
    pub host_cpu_ns: Option<u64>,
    /// Busy and steal ticks summed over the CPUs in the affinity mask.
    pub busy_ticks: Option<u64>,
    pub steal_ticks: Option<u64>,
    pub cpus: Option<usize>,
}

/// The reading between two snapshots. A thread that started in between
/// counts from zero; one that ended is left out (the pools' threads live
/// as long as the process).
pub fn difference(a: &Counters, b: &Counters, tick_ns: u64) -> InterferenceReading {
    let run_delay_ns = match (&a.run_delay_ns, &b.run_delay_ns) {
        (Some(a), Some(b)) => Some(
            b.iter()
                .map(|(tid, &end)| end.saturating_sub(a.get(tid).copied().unwrap_or(0)))
                .sum(),
        ),
        _ => None,
    };
    let sub = |x: Option<u64>, y: Option<u64>| Some(y?.saturating_sub(x?));
    let cpu_ns = sub(a.cpu_ns, b.cpu_ns);
    // Nanoseconds where the cgroup gives them, else ticks.
    let exact_ns = sub(a.host_cpu_ns, b.host_cpu_ns);
    let busy_ns = exact_ns.or_else(|| sub(a.busy_ticks, b.busy_ticks).map(|t| t * tick_ns));
    InterferenceReading {
        run_delay_ns,
        steal_ns: sub(a.steal_ticks, b.steal_ticks).map(|t| t * tick_ns),
        tick_ns: Some(tick_ns),
        involuntary_switches: sub(a.involuntary_switches, b.involuntary_switches),
        cpu_ns,
        other_cpu_ns: match (busy_ns, cpu_ns) {
            (Some(busy), Some(own)) => Some(busy.saturating_sub(own)),
            _ => None,
        },
        other_cpu_from_ticks: exact_ns.is_none() && busy_ns.is_some(),
        cpus: b.cpus,
    }
}

/// The per-CPU usage (ns) of cpuacct.usage_percpu summed over `cpus`.
pub fn parse_usage_percpu(text: &str, cpus: &[usize]) -> Option<u64> {
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    cpus.iter().map(|&c| v.get(c).copied()).sum()
}

/// The root cpuacct cgroup's per-CPU usage file, where cgroup v1 mounts it.
const CPUACCT_PERCPU: &str = "/sys/fs/cgroup/cpuacct/cpuacct.usage_percpu";

/// The run-queue delay (second field) of a schedstat line.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Busy (user, nice, system, irq, softirq) and steal ticks summed over the
/// `cpuN` lines of /proc/stat whose N is in `cpus`.
pub fn parse_proc_stat(text: &str, cpus: &[usize]) -> Option<(u64, u64)> {
    let (mut busy, mut steal, mut seen) = (0u64, 0u64, 0usize);
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(name) = f.next() else { continue };
        let Some(n) = name
            .strip_prefix("cpu")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if !cpus.contains(&n) {
            continue;
        }
        let v: Vec<u64> = f.map_while(|x| x.parse().ok()).collect();
        if v.len() < 8 {
            return None;
        }
        // user nice system idle iowait irq softirq steal
        busy += v[0] + v[1] + v[2] + v[5] + v[6];
        steal += v[7];
        seen += 1;
    }
    (seen == cpus.len() && seen > 0).then_some((busy, steal))
}

/// Whether this process's cpuacct cgroup (v1) is the root, whose usage
/// counts every task on the machine; a container's own cgroup would miss
/// its neighbours.
pub fn cpuacct_at_root(proc_self_cgroup: &str) -> bool {
    proc_self_cgroup.lines().any(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        ctrls.split(',').any(|c| c == "cpuacct") && path.trim() == "/"
    })
}

/// Reads the host's counters; sources that cannot be read stay `None`.
pub struct Meter {
    cpus: Vec<usize>,
    tick_ns: u64,
    /// Whether the root cpuacct cgroup is this process's (see
    /// [`cpuacct_at_root`]).
    cpuacct: bool,
    start: Option<Counters>,
}

impl Meter {
    pub fn open() -> Self {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Self {
            cpus: affinity_cpus(),
            tick_ns: if hz > 0 {
                1_000_000_000 / hz as u64
            } else {
                10_000_000
            },
            cpuacct: std::fs::read_to_string("/proc/self/cgroup")
                .is_ok_and(|t| cpuacct_at_root(&t)),
            start: None,
        }
    }

    /// What the meter can read on this host, or why not, for the manifest.
    pub fn describe(&self) -> String {
        let c = self.snapshot();
        let mut parts = vec![];
        parts.push(match c.run_delay_ns {
            Some(_) => "run-queue delay per thread (/proc/self/task/*/schedstat)".to_string(),
            None => "no run-queue delay (/proc/self/task/*/schedstat unreadable): no interference figure".to_string(),
        });
        if c.host_cpu_ns.is_some() {
            parts.push(format!(
                "other processes' CPU time on {} CPU(s) ({CPUACCT_PERCPU})",
                self.cpus.len()
            ));
        } else if c.busy_ticks.is_some() {
            parts.push(format!(
                "other processes' CPU time on {} CPU(s) (/proc/stat, 10 ms ticks: shown, not a bound)",
                self.cpus.len()
            ));
        }
        if c.steal_ticks.is_some() {
            parts.push("steal (/proc/stat)".into());
        }
        if c.involuntary_switches.is_some() {
            parts.push("involuntary switches (getrusage)".into());
        }
        parts.join("; ")
    }

    pub fn snapshot(&self) -> Counters {
        let run_delay_ns = read_run_delays(Path::new("/proc/self/task"));
        let (busy_ticks, steal_ticks) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_proc_stat(&t, &self.cpus))
            .unzip();
        // SAFETY: getrusage and clock_gettime write only into the structs
        // passed to them.
        let (involuntary_switches, cpu_ns) = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            let sw =
                (libc::getrusage(libc::RUSAGE_SELF, &mut ru) == 0).then(|| ru.ru_nivcsw as u64);
            let mut ts: libc::timespec = std::mem::zeroed();
            let cpu = (libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) == 0)
                .then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            (sw, cpu)
        };
        let host_cpu_ns = self
            .cpuacct
            .then(|| std::fs::read_to_string(CPUACCT_PERCPU).ok())
            .flatten()
            .and_then(|t| parse_usage_percpu(&t, &self.cpus));
        Counters {
            run_delay_ns,
            involuntary_switches,
            cpu_ns,
            host_cpu_ns,
            busy_ticks,
            steal_ticks,
            cpus: (!self.cpus.is_empty()).then_some(self.cpus.len()),
        }
    }

    pub fn begin(&mut self) {
        self.start = Some(self.snapshot());
    }

    /// The reading since `begin`.
    pub fn end(&mut self) -> Option<InterferenceReading> {
        let a = self.start.take()?;
        let b = self.snapshot();
        Some(difference(&a, &b, self.tick_ns))
    }
}

fn read_run_delays(task_dir: &Path) -> Option<HashMap<u32, u64>> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir(task_dir).ok()?.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // A thread that ends between the listing and the read is skipped.
        if let Some(d) = std::fs::read_to_string(e.path().join("schedstat"))
            .ok()
            .as_deref()
            .and_then(parse_schedstat)
        {
            out.insert(tid, d);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The CPUs this process may run on.
fn affinity_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills the set it is given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_sums_the_affine_cpus_only() {
        let text = "cpu  30 0 6 100 1 0 1 9 0 0\n\
                    cpu0 10 0 2 50 1 0 0 4 0 0\n\
                    cpu1 20 0 4 50 0 0 1 5 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(parse_proc_stat(text, &[0, 1]), Some((37, 9)));
        assert_eq!(parse_proc_stat(text, &[1]), Some((25, 5)));
        // A CPU of the mask that /proc/stat does not list: no figure.
        assert_eq!(parse_proc_stat(text, &[0, 2]), None);
        assert_eq!(parse_schedstat("123 4567 89\n"), Some(4567));
        assert_eq!(parse_usage_percpu("100 250 7 \n", &[0, 1]), Some(350));
        assert_eq!(parse_usage_percpu("100 250 7 \n", &[2]), Some(7));
        assert_eq!(parse_usage_percpu("100 250\n", &[3]), None);
        assert!(cpuacct_at_root("3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n"));
        assert!(cpuacct_at_root("4:cpu,cpuacct:/\n"));
        assert!(!cpuacct_at_root("4:cpu,cpuacct:/docker/abc\n0::/\n"));
        assert!(!cpuacct_at_root("0::/\n"));
        assert_eq!(parse_schedstat("garbage"), None);
    }

    #[test]
    fn difference_counts_new_threads_from_zero_and_other_cpu_net_of_own() {
        let a = Counters {
            run_delay_ns: Some(HashMap::from([(1, 100), (2, 50)])),
            involuntary_switches: Some(3),
            cpu_ns: Some(1_000_000_000),
            host_cpu_ns: None,
            busy_ticks: Some(1000),
            steal_ticks: Some(10),
            cpus: Some(2),
        };
        let b = Counters {
            // thread 2 ended; thread 3 started
            run_delay_ns: Some(HashMap::from([(1, 400), (3, 25)])),
            involuntary_switches: Some(7),
            cpu_ns: Some(1_200_000_000),
            host_cpu_ns: None,
            busy_ticks: Some(1050),
            steal_ticks: Some(12),
            cpus: Some(2),
        };
        let r = difference(&a, &b, 10_000_000);
        assert!(r.other_cpu_from_ticks);
        assert_eq!(r.run_delay_ns, Some(325));
        assert_eq!(r.involuntary_switches, Some(4));
        assert_eq!(r.cpu_ns, Some(200_000_000));
        // ticks: 50 ticks = 500 ms busy, 200 ms of it ours
        assert_eq!(r.other_cpu_ns, Some(300_000_000));
        assert_eq!(r.steal_ns, Some(20_000_000));
        // The cgroup's nanoseconds win over the ticks.
        let (mut a, mut b) = (a, b);
        a.host_cpu_ns = Some(5_000_000_000);
        b.host_cpu_ns = Some(5_250_000_001);
        let r = difference(&a, &b, 10_000_000);
        assert_eq!(r.other_cpu_ns, Some(50_000_001));
        assert!(!r.other_cpu_from_ticks);
    }

    #[test]
    fn the_figure_is_lost_thread_time_over_wall_times_threads() {
        let r = InterferenceReading {
            run_delay_ns: Some(50_000_000),
            steal_ns: Some(0),
            cpus: Some(2),
            ..Default::default()
        };
        // 50 / (100 × 2)
        assert!((interference_pct(&r, 100_000_000, 2).unwrap() - 25.0).abs() < 1e-9);
        // 50 / 100
        assert!((interference_pct(&r, 100_000_000, 1).unwrap() - 50.0).abs() < 1e-9);
        // Steal adds what its ticks show beyond doubt: 100 ms in 1 ms
        // ticks is 100 − 2·√100 = 80 ms.
        let stolen = InterferenceReading {
            steal_ns: Some(100_000_000),
            tick_ns: Some(1_000_000),
            ..r.clone()
        };
        assert!((interference_pct(&stolen, 1_000_000_000, 1).unwrap() - 13.0).abs() < 1e-9);
        // Run-queue delay beyond what other processes ran is the run's
        // own threads waiting for each other: not the host's.
        let own = InterferenceReading {
            other_cpu_ns: Some(5_000_000),
            steal_ns: Some(0),
            ..r.clone()
        };
        assert!((interference_pct(&own, 100_000_000, 2).unwrap() - 2.5).abs() < 1e-9);
        // Other processes on a core the run did not want: no delay, no loss.
        let beside = InterferenceReading {
            run_delay_ns: Some(0),
            other_cpu_ns: Some(100_000_000),
            steal_ns: Some(0),
            ..r.clone()
        };
        assert_eq!(interference_pct(&beside, 100_000_000, 1), Some(0.0));
        // Ticks are too coarse to bound a sample: 0 ticks of others do not
        // erase a measured delay.
        let ticks = InterferenceReading {
            other_cpu_ns: Some(0),
            other_cpu_from_ticks: true,
            ..r.clone()
        };
        assert!((interference_pct(&ticks, 100_000_000, 1).unwrap() - 50.0).abs() < 1e-9);
        // A helper thread that waited while the one decoding thread ran on
        // (the process ran 99 of 100 ms): 1 ms lost at most.
        let helper = InterferenceReading {
            run_delay_ns: Some(50_000_000),
            other_cpu_ns: Some(100_000_000),
            cpu_ns: Some(99_000_000),
            steal_ns: Some(0),
            ..r.clone()
        };
        assert!((interference_pct(&helper, 100_000_000, 1).unwrap() - 1.0).abs() < 1e-9);
        let none = InterferenceReading::default();
        assert_eq!(interference_pct(&none, 100, 1), None);
        assert_eq!(interference_pct(&r, 0, 1), None);
    }

    #[test]
    fn steal_counts_only_beyond_the_noise_of_its_ticks() {
        let tick = 10_000_000;
        // One tick, or four, over short samples may be one short steal.
        assert_eq!(steal_beyond_doubt_ns(0, tick), 0.0);
        assert_eq!(steal_beyond_doubt_ns(tick, tick), 0.0);
        assert_eq!(steal_beyond_doubt_ns(4 * tick, tick), 0.0);
        assert!((steal_beyond_doubt_ns(9 * tick, tick) - 3.0 * tick as f64).abs() < 1.0);
        // A burst keeps nearly all of it: 10 s in 10 ms ticks loses 0.63 s.
        let burst = steal_beyond_doubt_ns(1000 * tick, tick);
        assert!(
            (burst - (1e10 - 2.0 * 1e5 * 10f64.sqrt() * 1e3)).abs() < 1e3,
            "{burst}"
        );
        // Over a method, the ticks of its samples add up before the bound:
        // 100 samples of 100 ms, each with 2 ticks (20%), flag it, though
        // one sample's 2 ticks alone would not.
        let r = InterferenceReading {
            run_delay_ns: Some(0),
            steal_ns: Some(2 * tick),
            tick_ns: Some(tick),
            cpus: Some(1),
            ..Default::default()
        };
        assert_eq!(interference_pct(&r, 100_000_000, 1), Some(0.0));
        let s = summarize((0..100).map(|_| (&r, 100_000_000)), 1).unwrap();
        assert!(
            s.interference_pct > 17.0 && s.interference_pct < 20.0,
            "{s:?}"
        );
    }

    #[test]
    fn summaries_weight_samples_by_time() {
        let quiet = InterferenceReading {
            run_delay_ns: Some(0),
            involuntary_switches: Some(0),
            cpu_ns: Some(1800),
            other_cpu_ns: Some(0),
            cpus: Some(2),
            ..Default::default()
        };
        // Its threads waited 300 ns, others ran 400 ns, and it ran 80 of
        // its 200 ns of thread time: 120 ns lost.
        let hit = InterferenceReading {
            run_delay_ns: Some(300),
            involuntary_switches: Some(10),
            cpu_ns: Some(80),
            other_cpu_ns: Some(400),
            cpus: Some(2),
            ..Default::default()
        };
        // walls of 900 and 100 ns at 2 threads: 120 ns lost of 2000
        let s = summarize([(&quiet, 900), (&hit, 100)], 2).unwrap();
        assert_eq!(s.samples, 2);
        assert!((s.interference_pct - 6.0).abs() < 1e-9, "{s:?}");
        assert!((s.max_sample_pct - 60.0).abs() < 1e-9);
        assert!((s.other_cpu_pct.unwrap() - 20.0).abs() < 1e-9);
        assert!((s.cpu_pct.unwrap() - 94.0).abs() < 1e-9);
        assert!(s.disturbed() && s.over(5.9) && !s.over(6.1));
        let s = summarize([(&quiet, 900)], 2).unwrap();
        assert!(!s.disturbed());
        assert_eq!(summarize([(&InterferenceReading::default(), 5)], 1), None);
    }

    #[test]
    fn a_live_meter_reads_this_process() {
        let mut m = Meter::open();
        m.begin();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let r = m.end().unwrap();
        if cfg!(target_os = "linux") {
            assert!(r.run_delay_ns.is_some() && r.cpu_ns.is_some(), "{r:?}");
            assert!(r.cpu_ns.unwrap() > 0);
        }
    }
}
