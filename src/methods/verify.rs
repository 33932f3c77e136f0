//! Verification rules shared by the draft-then-verify methods: pure
//! functions over token ids and probability vectors, so that the
//! statistics are tested apart from any model.

use rand::Rng;
use rand_chacha::ChaCha20Rng;

use crate::sampling::sample_from;

/// Greedy verification: how many drafts match the target's argmax at the
/// position before them. `target_next[i]` is the target's choice after
/// the context plus `drafts[..i]`; it has one more entry than `drafts`, and
/// `target_next[n]` is the bonus token.
pub fn greedy_accepted(drafts: &[u32], target_next: &[u32]) -> usize {
    debug_assert_eq!(target_next.len(), drafts.len() + 1);
    drafts
        .iter()
        .zip(target_next)
        .take_while(|(d, t)| d == t)
        .count()
}

/// The result of verifying a chain of drafts.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Drafts kept, from the front.
    pub accepted: usize,
    /// The token that follows them: the target's correction after a
    /// rejection, or a bonus draw after full acceptance.
    pub next: u32,
}

/// Speculative sampling (Leviathan et al. 2023, Chen et al. 2023): draft `i`
/// drawn from `q[i]` is kept with probability `min(1, p[i][d] / q[i][d])`;
/// at the first rejection the next token is drawn from
/// `norm(max(0, p[i] - q[i]))`; after full acceptance from `p[k]`. The
/// emitted tokens are then distributed exactly as sampling from `p`.
///
/// `p` has one more row than `drafts`; rows may differ in length (a
/// drafter with a padded vocabulary): missing entries are zero.
pub fn speculative_verdict(
    drafts: &[u32],
    q: &[Vec<f32>],
    p: &[Vec<f32>],
    rng: &mut ChaCha20Rng,
) -> Verdict {
    debug_assert_eq!(q.len(), drafts.len());
    debug_assert_eq!(p.len(), drafts.len() + 1);
    for (i, &d) in drafts.iter().enumerate() {
        let pd = p[i].get(d as usize).copied().unwrap_or(0.0);
        let qd = q[i].get(d as usize).copied().unwrap_or(0.0);
        let keep = qd > 0.0 && (pd >= qd || rng.random::<f32>() < pd / qd);
        if !keep {
            return Verdict {
                accepted: i,
                next: sample_residual(&p[i], &q[i], rng),
            };
        }
    }
    let k = drafts.len();
    Verdict {
        accepted: k,
        next: sample_from(&p[k], rng),
    }
}

/// Draws from `norm(max(0, p - q))`, or from `p` where that is empty
/// (p == q, when rejection has probability zero anyway).
pub fn sample_residual(p: &[f32], q: &[f32], rng: &mut ChaCha20Rng) -> u32 {
    let residual: Vec<f32> = p
        .iter()
        .enumerate()
        .map(|(i, &pi)| (pi - q.get(i).copied().unwrap_or(0.0)).max(0.0))
        .collect();
    let sum: f32 = residual.iter().sum();
    if sum <= 0.0 || !sum.is_finite() {
        return sample_from(p, rng);
    }
    let r: Vec<f32> = residual.iter().map(|x| x / sum).collect();
    sample_from(&r, rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn greedy_accepts_the_matching_prefix() {
        assert_eq!(greedy_accepted(&[1, 2, 3], &[1, 2, 9, 4]), 2);
        assert_eq!(greedy_accepted(&[1, 2, 3], &[1, 2, 3, 4]), 3);
        assert_eq!(greedy_accepted(&[5], &[1, 2]), 0);
        assert_eq!(greedy_accepted(&[], &[7]), 0);
    }

    /// The first emitted token of one speculative step is distributed as
    /// `p[0]`, whatever the drafter's `q` (chi-square, 3 degrees of freedom).
    #[test]
    fn the_first_token_follows_the_target_distribution() {
        let p0 = vec![0.5f32, 0.3, 0.15, 0.05];
        let q0 = vec![0.1f32, 0.2, 0.3, 0.4];
        let p1 = vec![0.25f32; 4];
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let n = 40_000;
        let mut counts = [0usize; 4];
        let mut accepted = 0;
        for _ in 0..n {
            let d = sample_from(&q0, &mut rng);
            let v = speculative_verdict(
                &[d],
                std::slice::from_ref(&q0),
                &[p0.clone(), p1.clone()],
                &mut rng,
            );
            let first = if v.accepted == 1 { d } else { v.next };
            accepted += v.accepted;
            counts[first as usize] += 1;
        }
        let chi2: f64 = counts
            .iter()
            .zip(&p0)
            .map(|(&c, &p)| {
                let e = n as f64 * p as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        // 99.9th percentile of chi-square with 3 degrees of freedom.
        assert!(chi2 < 16.27, "chi2 {chi2}, counts {counts:?}");
        // Acceptance rate is sum(min(p, q)) = 0.1 + 0.2 + 0.15 + 0.05 = 0.5.
        let rate = accepted as f64 / n as f64;
        assert!((rate - 0.5).abs() < 0.02, "acceptance {rate}");
    }

    #[test]
    fn residual_of_equal_distributions_falls_back_to_p() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let p = vec![0.0f32, 1.0, 0.0];
        assert_eq!(sample_residual(&p, &p, &mut rng), 1);
        // A drafter with a shorter vocabulary.
        assert_eq!(sample_residual(&[0.2, 0.0, 0.8], &[0.2, 0.0], &mut rng), 2);
    }
}
