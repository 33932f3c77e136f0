//! `pdbench audit RUN`: whether a recorded run still reproduces. The
//! command re-runs a subset of the run from its manifest (the same model
//! files by sha256, the same resolved method configs and seeds) into a new
//! folder; this module compares the two runs: every sample's tokens (all
//! methods are deterministic given their seeds), the lossless rates, and
//! the environments.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::results::{Manifest, SampleRecord};

/// A sample whose tokens differ from the recorded ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mismatch {
    pub method: String,
    pub sample_id: String,
    pub repeat: usize,
    pub turn: usize,
    /// The first output position where the tokens differ (the shorter
    /// length when one is a prefix of the other).
    pub first_difference: usize,
    pub recorded_tokens: usize,
    pub audited_tokens: usize,
}

/// What the audit found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditResult {
    pub audited_samples: usize,
    pub mismatches: Vec<Mismatch>,
    /// Per method: the lossless rate recorded and audited (percent).
    pub lossless: BTreeMap<String, (f64, f64)>,
    /// What differs between the two runs' environments.
    pub environment: Vec<String>,
}

impl AuditResult {
    pub fn reproduced(&self) -> bool {
        self.mismatches.is_empty() && self.lossless.values().all(|(a, b)| a == b)
    }
}

/// The first index where `a` and `b` differ, if they do.
pub fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(a.iter().zip(b).take_while(|(x, y)| x == y).count())
}

/// Environment fields that differ (version, commit, device, host).
pub fn environment_differences(recorded: &Manifest, audited: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff = |what: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{what}: {a} → {b}"));
        }
    };
    diff(
        "pdbench version",
        recorded.pdbench_version.clone(),
        audited.pdbench_version.clone(),
    );
    diff(
        "git commit",
        format!("{:?}", recorded.git),
        format!("{:?}", audited.git),
    );
    diff(
        "device",
        format!(
            "{} ({} threads)",
            recorded.device.name, recorded.device.threads
        ),
        format!(
            "{} ({} threads)",
            audited.device.name, audited.device.threads
        ),
    );
    diff(
        "host",
        serde_json::to_string(&recorded.host).unwrap_or_default(),
        serde_json::to_string(&audited.host).unwrap_or_default(),
    );
    out
}

/// Compares the audited samples with the recorded ones.
pub fn audit(
    recorded_m: &Manifest,
    recorded: &[SampleRecord],
    audited_m: &Manifest,
    audited: &[SampleRecord],
) -> AuditResult {
    let by_key: BTreeMap<_, &SampleRecord> = recorded.iter().map(|s| (s.key(), s)).collect();
    let mut mismatches = Vec::new();
    for s in audited {
        let Some(r) = by_key.get(&s.key()) else {
            continue;
        };
        if let Some(at) = first_difference(&r.output_ids, &s.output_ids) {
            mismatches.push(Mismatch {
                method: s.method.clone(),
                sample_id: s.sample_id.clone(),
                repeat: s.repeat,
                turn: s.turn,
                first_difference: at,
                recorded_tokens: r.output_ids.len(),
                audited_tokens: s.output_ids.len(),
            });
        }
    }
    // The lossless rates over the audited prompts only.
    let keys: std::collections::BTreeSet<_> = audited.iter().map(|s| s.key()).collect();
    let subset: Vec<SampleRecord> = recorded
        .iter()
        .filter(|s| keys.contains(&s.key()))
        .cloned()
        .collect();
    let mut lossless = BTreeMap::new();
    for inst in &audited_m.methods {
        if let (Some(a), Some(b)) = (
            crate::compare::lossless_rate_of(recorded_m, &subset, &inst.label),
            crate::compare::lossless_rate_of(audited_m, audited, &inst.label),
        ) {
            lossless.insert(inst.label.clone(), (a, b));
        }
    }
    AuditResult {
        audited_samples: audited.len(),
        mismatches,
        lossless,
        environment: environment_differences(recorded_m, audited_m),
    }
}

pub fn markdown(recorded: &Manifest, r: &AuditResult, audit_dir: &str) -> String {
    let mut s = format!(
        "# pdbench audit\n\nrun `{}`, {} samples re-run into `{audit_dir}`: **{}**\n\n",
        recorded.run_id,
        r.audited_samples,
        if r.reproduced() {
            "reproduced"
        } else {
            "not reproduced"
        }
    );
    if r.mismatches.is_empty() {
        s.push_str("Every audited sample's tokens equal the recorded ones.\n");
    } else {
        s.push_str(&format!(
            "{} sample(s) differ:\n\n| method | sample | repeat | turn | first differing position | tokens recorded | tokens now |\n|---|---|---|---|---|---|---|\n",
            r.mismatches.len()
        ));
        for m in &r.mismatches {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                m.method,
                m.sample_id,
                m.repeat,
                m.turn,
                m.first_difference,
                m.recorded_tokens,
                m.audited_tokens
            ));
        }
    }
    if !r.lossless.is_empty() {
        s.push_str("\n| lossless method | samples equal to `ar` then | now |\n|---|---|---|\n");
        for (m, (a, b)) in &r.lossless {
            s.push_str(&format!("| {m} | {a:.1}% | {b:.1}% |\n"));
        }
    }
    s.push_str("\nEnvironment: ");
    if r.environment.is_empty() {
        s.push_str("the same pdbench version, commit, device and host.\n");
    } else {
        s.push('\n');
        for e in &r.environment {
            s.push_str(&format!("- {e}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_finds_the_position() {
        assert_eq!(first_difference(&[1, 2, 3], &[1, 2, 3]), None);
        assert_eq!(first_difference(&[1, 2, 3], &[1, 9, 3]), Some(1));
        assert_eq!(first_difference(&[1, 2], &[1, 2, 3]), Some(2));
        assert_eq!(first_difference(&[], &[4]), Some(0));
    }
}
