//! The measurement core: the only code in pdbench that reads a clock.
//!
//! Methods report step boundaries to a [`Probe`]; the probe synchronises
//! the device, timestamps, applies the stop rule to the emitted tokens and
//! keeps the per-step records.

pub mod bench;
pub mod energy;
pub mod interference;
pub mod kernels;
pub mod phase;
pub mod threads;

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// A monotonic nanosecond clock, behind a trait so tests can drive time.
pub trait Clock {
    fn now_ns(&self) -> u64;
}

/// Wall-clock time from `Instant`.
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

/// Waits for queued device work, so that a timestamp covers it.
pub trait DeviceSync {
    fn sync(&self) -> Result<(), String>;
}

impl DeviceSync for candle_core::Device {
    fn sync(&self) -> Result<(), String> {
        self.synchronize().map_err(|e| e.to_string())
    }
}

/// No device to wait for (tests, CPU-only code).
pub struct NoSync;

impl DeviceSync for NoSync {
    fn sync(&self) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// The forward over the prompt (and whatever it emits).
    Prefill,
    /// Every later step.
    Decode,
}

/// What a method reports at the end of one step.
#[derive(Debug, Clone)]
pub struct StepObservation<'a> {
    pub kind: StepKind,
    /// Draft tokens put up for verification.
    pub proposed: usize,
    /// The longest draft path, when `proposed` counts the nodes of a tree;
    /// `None` when the draft is one chain of `proposed` tokens.
    pub draft_depth: Option<usize>,
    /// Of those, how many the verifier kept.
    pub accepted: usize,
    /// Tokens the step adds to the output (accepted drafts plus any bonus
    /// or corrected token), in order.
    pub tokens: &'a [u32],
    pub target_calls: u32,
    pub draft_calls: u32,
    /// Positions the target verified in its forward (tree nodes, block size).
    pub verify_width: usize,
    /// The window or block the step works on, for methods that iterate
    /// over one (Jacobi windows, diffusion blocks); steps of one window
    /// share it.
    pub window: Option<u32>,
    /// Answer positions (0 = the first new token) the step committed, in
    /// the order it committed them, for methods that fill a canvas out of
    /// order (diffusion LMs); empty for left-to-right methods.
    pub positions: &'a [u32],
}

/// One recorded step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub kind: StepKind,
    pub proposed: usize,
    /// Tree drafts: the longest path (`proposed` counts nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_depth: Option<usize>,
    pub accepted: usize,
    /// Tokens added to the output after the stop rule.
    pub emitted: usize,
    pub target_calls: u32,
    pub draft_calls: u32,
    pub verify_width: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u32>,
    /// Canvas positions committed, in commit order (diffusion LMs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub positions: Vec<u32>,
    /// Duration of the step.
    pub t_ns: u64,
    /// Of `t_ns`, the time before the method marked its draft done.
    pub draft_ns: Option<u64>,
    /// End of the step, from the start of the sample.
    pub end_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token.
    Eos,
    /// A stop string appeared.
    Stop,
    /// max_new_tokens reached, or the method's fixed answer region (a
    /// diffusion canvas) filled without an EOS.
    Length,
}

/// When generation ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopRule {
    pub max_new_tokens: usize,
    pub eos_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
}

/// Whether the method should go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Decodes a token slice to text; used for stop strings.
pub type Detokenize<'a> = &'a dyn Fn(&[u32]) -> String;

/// The per-sample recorder handed to a method.
pub struct Probe<'a> {
    clock: &'a dyn Clock,
    device: &'a dyn DeviceSync,
    detok: Detokenize<'a>,
    rule: &'a StopRule,
    start_ns: u64,
    last_ns: u64,
    draft_mark_ns: Option<u64>,
    steps: Vec<StepRecord>,
    output: Vec<u32>,
    finish: Option<FinishReason>,
    first_token_ns: Option<u64>,
    sync_error: Option<String>,
    interrupt: Option<&'a std::sync::atomic::AtomicBool>,
    interrupted: bool,
    meters: Option<&'a mut energy::Meters>,
    meter_errors: Vec<String>,
}

/// What a finished sample measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub output: Vec<u32>,
    pub finish: Option<FinishReason>,
    pub steps: Vec<StepRecord>,
    pub wall_ns: u64,
    pub ttft_ns: Option<u64>,
    /// Energy and memory over the sample, where the run has meters.
    pub energy: energy::EnergyReading,
    /// Meters that failed to read (the figure is left out, not zeroed).
    pub energy_errors: Vec<String>,
}

impl<'a> Probe<'a> {
    /// Synchronises the device and starts the sample's clock.
    pub fn start(
        clock: &'a dyn Clock,
        device: &'a dyn DeviceSync,
        detok: Detokenize<'a>,
        rule: &'a StopRule,
    ) -> Self {
        let sync_error = device.sync().err();
        let now = clock.now_ns();
        Self {
            clock,
            device,
            detok,
            rule,
            start_ns: now,
            last_ns: now,
            draft_mark_ns: None,
            steps: Vec::new(),
            output: Vec::new(),
            finish: None,
            first_token_ns: None,
            sync_error,
            interrupt: None,
            interrupted: false,
            meters: None,
            meter_errors: Vec::new(),
        }
    }

    /// Reads `meters` at the sample's start and end, outside the timed
    /// interval: the clock restarts after they are read.
    pub fn with_meters(mut self, meters: &'a mut energy::Meters) -> Self {
        self.meter_errors = meters.begin();
        self.meters = Some(meters);
        let now = self.stamp();
        self.start_ns = now;
        self.last_ns = now;
        self
    }

    /// Stops the sample at the next step once `flag` is set (Ctrl-C).
    pub fn with_interrupt(mut self, flag: &'a std::sync::atomic::AtomicBool) -> Self {
        self.interrupt = Some(flag);
        self
    }

    /// Whether the sample was cut short by an interrupt; such a sample is
    /// incomplete and must not be recorded.
    pub fn was_interrupted(&self) -> bool {
        self.interrupted
    }

    fn stamp(&mut self) -> u64 {
        if let Err(e) = self.device.sync() {
            self.sync_error.get_or_insert(e);
        }
        self.clock.now_ns()
    }

    /// Tokens emitted so far (after the stop rule).
    pub fn output(&self) -> &[u32] {
        &self.output
    }

    /// How many more tokens the output may take.
    pub fn remaining(&self) -> usize {
        self.rule.max_new_tokens.saturating_sub(self.output.len())
    }

    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Marks the end of the drafting part of the current step.
    pub fn mark_draft_done(&mut self) {
        let now = self.stamp();
        self.draft_mark_ns = Some(now);
    }

    /// Ends a step: timestamps it, appends its tokens under the stop rule,
    /// and says whether to go on.
    pub fn commit(&mut self, obs: StepObservation<'_>) -> Flow {
        let now = self.stamp();
        let before = self.output.len();
        if self.finish.is_none() {
            self.append(obs.tokens);
        }
        let emitted = self.output.len() - before;
        if emitted > 0 && self.first_token_ns.is_none() {
            self.first_token_ns = Some(now - self.start_ns);
        }
        let draft_ns = self
            .draft_mark_ns
            .take()
            .map(|m| m.saturating_sub(self.last_ns));
        self.steps.push(StepRecord {
            kind: obs.kind,
            proposed: obs.proposed,
            draft_depth: obs.draft_depth,
            accepted: obs.accepted,
            emitted,
            target_calls: obs.target_calls,
            draft_calls: obs.draft_calls,
            verify_width: obs.verify_width,
            window: obs.window,
            positions: obs.positions.to_vec(),
            t_ns: now - self.last_ns,
            draft_ns,
            end_ns: now - self.start_ns,
        });
        self.last_ns = now;
        if self
            .interrupt
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst))
        {
            self.interrupted = true;
            return Flow::Stop;
        }
        if self.finish.is_some() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    fn append(&mut self, tokens: &[u32]) {
        for &t in tokens {
            if self.output.len() >= self.rule.max_new_tokens {
                self.finish = Some(FinishReason::Length);
                return;
            }
            // EOS is kept in the output ids: it was generated and paid for,
            // as in HF generate; the text leaves it out.
            self.output.push(t);
            if self.rule.eos_ids.contains(&t) {
                self.finish = Some(FinishReason::Eos);
                return;
            }
            if !self.rule.stop_strings.is_empty() && self.stop_string_hit() {
                self.finish = Some(FinishReason::Stop);
                return;
            }
        }
        if self.output.len() >= self.rule.max_new_tokens {
            self.finish = Some(FinishReason::Length);
        }
    }

    /// Whether a stop string ends within the text of the newest token. Only
    /// a window of recent tokens is decoded, so this stays cheap.
    fn stop_string_hit(&self) -> bool {
        let longest = self
            .rule
            .stop_strings
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(0);
        let window = (longest + 8).min(self.output.len());
        let n = self.output.len();
        let with = (self.detok)(&self.output[n - window..]);
        let without = (self.detok)(&self.output[n - window..n - 1]);
        self.rule
            .stop_strings
            .iter()
            .any(|s| with.contains(s.as_str()) && !without.contains(s.as_str()))
    }

    /// Ends a sample whose fixed answer region (a diffusion canvas shorter
    /// than max_new_tokens) is filled without an EOS: the output is all the
    /// method can produce.
    pub fn end_of_canvas(&mut self) {
        if self.finish.is_none() {
            self.finish = Some(FinishReason::Length);
        }
    }

    /// Ends the sample.
    pub fn finish(mut self) -> Result<Measured, String> {
        let now = self.stamp();
        let (energy, mut energy_errors) = match self.meters.take() {
            Some(m) => m.end(),
            None => Default::default(),
        };
        energy_errors.splice(0..0, self.meter_errors);
        if let Some(e) = self.sync_error {
            return Err(format!("device synchronisation failed: {e}"));
        }
        Ok(Measured {
            output: self.output,
            finish: self.finish,
            steps: self.steps,
            wall_ns: now - self.start_ns,
            ttft_ns: self.first_token_ns,
            energy,
            energy_errors,
        })
    }
}

/// Checks what every method must satisfy; the error names the method.
pub fn check_invariants(method: &str, m: &Measured, rule: &StopRule) -> Result<(), String> {
    let fail = |what: String| Err(format!("method `{method}` broke an invariant: {what}"));
    let emitted: usize = m.steps.iter().map(|s| s.emitted).sum();
    if emitted != m.output.len() {
        return fail(format!(
            "its steps emitted {emitted} tokens but the output has {}",
            m.output.len()
        ));
    }
    for (i, s) in m.steps.iter().enumerate() {
        if s.accepted > s.proposed {
            return fail(format!(
                "step {i} accepted {} of {} proposed tokens",
                s.accepted, s.proposed
            ));
        }
    }
    if m.output.len() > rule.max_new_tokens {
        return fail(format!(
            "{} tokens exceed max_new_tokens {}",
            m.output.len(),
            rule.max_new_tokens
        ));
    }
    if m.finish.is_none() {
        return fail("it returned before the stop rule ended the sample".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct FakeClock(Cell<u64>);
    impl Clock for FakeClock {
        fn now_ns(&self) -> u64 {
            let t = self.0.get();
            self.0.set(t + 10);
            t
        }
    }

    fn obs(tokens: &[u32]) -> StepObservation<'_> {
        StepObservation {
            kind: StepKind::Decode,
            proposed: tokens.len().saturating_sub(1),
            draft_depth: None,
            accepted: tokens.len().saturating_sub(1),
            tokens,
            target_calls: 1,
            draft_calls: 0,
            verify_width: 1,
            window: None,
            positions: &[],
        }
    }

    fn detok(ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| char::from(b'a' + (i % 26) as u8))
            .collect()
    }

    #[test]
    fn stops_at_eos_and_length() {
        let clock = FakeClock(Cell::new(0));
        let rule = StopRule {
            max_new_tokens: 5,
            eos_ids: vec![99],
            stop_strings: vec![],
        };
        let mut p = Probe::start(&clock, &NoSync, &detok, &rule);
        assert_eq!(p.commit(obs(&[1, 2])), Flow::Continue);
        assert_eq!(p.commit(obs(&[3, 99, 4])), Flow::Stop);
        let m = p.finish().unwrap();
        assert_eq!(m.output, vec![1, 2, 3, 99]);
        assert_eq!(m.finish, Some(FinishReason::Eos));
        assert_eq!(m.steps[1].emitted, 2);
        check_invariants("t", &m, &rule).unwrap();

        let mut p = Probe::start(&clock, &NoSync, &detok, &rule);
        p.commit(obs(&[1, 2, 3, 4, 5, 6, 7]));
        let m = p.finish().unwrap();
        assert_eq!(m.output.len(), 5);
        assert_eq!(m.finish, Some(FinishReason::Length));
    }

    #[test]
    fn stop_string_cuts_at_the_token_that_completes_it() {
        let clock = FakeClock(Cell::new(0));
        // 'c' = 2, 'd' = 3
        let rule = StopRule {
            max_new_tokens: 50,
            eos_ids: vec![],
            stop_strings: vec!["cd".into()],
        };
        let mut p = Probe::start(&clock, &NoSync, &detok, &rule);
        assert_eq!(p.commit(obs(&[0, 2])), Flow::Continue);
        assert_eq!(p.commit(obs(&[3, 4, 5])), Flow::Stop);
        let m = p.finish().unwrap();
        assert_eq!(m.output, vec![0, 2, 3]);
        assert_eq!(m.finish, Some(FinishReason::Stop));
    }

    #[test]
    fn times_and_ttft_come_from_the_clock() {
        let clock = FakeClock(Cell::new(1000));
        let rule = StopRule {
            max_new_tokens: 2,
            eos_ids: vec![],
            stop_strings: vec![],
        };
        let mut p = Probe::start(&clock, &NoSync, &detok, &rule);
        p.commit(StepObservation {
            kind: StepKind::Prefill,
            ..obs(&[])
        });
        p.commit(obs(&[1]));
        p.commit(obs(&[2]));
        let m = p.finish().unwrap();
        // start at 1000, stamps at 1010, 1020, 1030, finish at 1040
        assert_eq!(
            m.steps.iter().map(|s| s.t_ns).collect::<Vec<_>>(),
            vec![10, 10, 10]
        );
        assert_eq!(m.ttft_ns, Some(20));
        assert_eq!(m.wall_ns, 40);
    }

    #[test]
    fn invariant_violations_name_the_method() {
        let rule = StopRule {
            max_new_tokens: 4,
            eos_ids: vec![],
            stop_strings: vec![],
        };
        let mut m = Measured {
            output: vec![1, 2],
            finish: Some(FinishReason::Length),
            steps: vec![],
            wall_ns: 1,
            ttft_ns: None,
            energy: Default::default(),
            energy_errors: vec![],
        };
        let e = check_invariants("fancy", &m, &rule).unwrap_err();
        assert!(e.contains("`fancy`") && e.contains("emitted 0"), "{e}");
        m.steps.push(StepRecord {
            kind: StepKind::Decode,
            proposed: 1,
            draft_depth: None,
            accepted: 2,
            emitted: 2,
            target_calls: 1,
            draft_calls: 0,
            verify_width: 1,
            window: None,
            positions: vec![],
            t_ns: 1,
            draft_ns: None,
            end_ns: 1,
        });
        let e = check_invariants("fancy", &m, &rule).unwrap_err();
        assert!(e.contains("accepted 2 of 1"), "{e}");
        m.steps[0].accepted = 1;
        m.finish = None;
        assert!(check_invariants("fancy", &m, &rule)
            .unwrap_err()
            .contains("before the stop rule"));
    }
}
