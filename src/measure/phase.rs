//! Where a forward's time goes, for `pdbench bench --profile`.
//!
//! The backbone marks the end of each phase of a forward (embedding, norms,
//! projections, attention, MLP, LM head). While a profile records on this
//! thread, each mark synchronises the device and charges the time since
//! the previous mark to its phase, so a GPU's queued kernels are paid by
//! the phase that launched them. The synchronisations slow the forward
//! down; the profile says where time goes, not how fast a step is (bench's
//! unprofiled tests say that). The forward's set-up before its first
//! phase (request checks, mask and rope tables) is charged to no phase, so
//! the phases add up to a little less than the profiled wall time.
//! Outside a profile a mark is one thread-local read.

use std::cell::RefCell;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::{Clock, MonotonicClock};

struct Recorder {
    clock: MonotonicClock,
    last_ns: u64,
    /// Phases in first-seen order: (name, total ns, marks).
    phases: Vec<(&'static str, u64, u64)>,
}

thread_local! {
    static PROFILE: RefCell<Option<Recorder>> = const { RefCell::new(None) };
}

/// One phase's share of the profiled forwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseTime {
    pub phase: String,
    pub total_ns: u64,
    /// How many times the phase ended: per forward for `embed` and
    /// `lm_head`, per layer and forward for the others (`norm` twice).
    pub marks: u64,
}

fn sync(device: &Device) {
    // A failed sync shows up in the forward itself; the profile goes on.
    let _ = device.synchronize();
}

/// Starts recording on this thread (replacing a recording in progress).
pub fn start() {
    let clock = MonotonicClock::new();
    let last_ns = clock.now_ns();
    PROFILE.with(|p| {
        *p.borrow_mut() = Some(Recorder {
            clock,
            last_ns,
            phases: Vec::new(),
        })
    });
}

/// Whether this thread records a profile.
pub fn recording() -> bool {
    PROFILE.with(|p| p.borrow().is_some())
}

/// Restarts the interval without charging it: the start of a forward, so
/// that the time between forwards is not charged to its first phase.
pub fn begin(device: &Device) {
    if !recording() {
        return;
    }
    sync(device);
    PROFILE.with(|p| {
        if let Some(r) = p.borrow_mut().as_mut() {
            r.last_ns = r.clock.now_ns();
        }
    });
}

/// Ends `phase`: charges it the time since the previous mark.
pub fn mark(device: &Device, phase: &'static str) {
    if !recording() {
        return;
    }
    sync(device);
    PROFILE.with(|p| {
        if let Some(r) = p.borrow_mut().as_mut() {
            let now = r.clock.now_ns();
            let dt = now.saturating_sub(r.last_ns);
            r.last_ns = now;
            match r.phases.iter_mut().find(|(name, _, _)| *name == phase) {
                Some(e) => {
                    e.1 += dt;
                    e.2 += 1;
                }
                None => r.phases.push((phase, dt, 1)),
            }
        }
    });
}

/// Stops recording and returns the phases in first-seen order.
pub fn finish() -> Vec<PhaseTime> {
    PROFILE.with(|p| {
        p.borrow_mut()
            .take()
            .map(|r| {
                r.phases
                    .into_iter()
                    .map(|(phase, total_ns, marks)| PhaseTime {
                        phase: phase.to_string(),
                        total_ns,
                        marks,
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_charge_their_phase_in_first_seen_order() {
        let d = Device::Cpu;
        mark(&d, "ignored");
        assert!(finish().is_empty(), "nothing is recorded before start");
        start();
        for _ in 0..3 {
            begin(&d);
            std::thread::sleep(std::time::Duration::from_millis(2));
            mark(&d, "b");
            mark(&d, "a");
        }
        let p = finish();
        assert_eq!(
            p.iter().map(|x| x.phase.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
        assert_eq!(p[0].marks, 3);
        assert!(p[0].total_ns >= 6_000_000, "{p:?}");
        assert!(p[1].total_ns < p[0].total_ns);
        assert!(!recording());
    }
}
