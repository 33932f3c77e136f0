//! Statistics as pure functions over slices.

/// Linear-interpolated quantile (numpy's default) of unsorted data.
pub fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

pub fn median(xs: &[f64]) -> Option<f64> {
    quantile(xs, 0.5)
}

pub fn mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        None
    } else {
        Some(xs.iter().sum::<f64>() / xs.len() as f64)
    }
}

/// Sample standard deviation.
pub fn std_dev(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs)?;
    Some((xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt())
}

pub fn geometric_mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() || xs.iter().any(|&x| x <= 0.0) {
        return None;
    }
    Some((xs.iter().map(|x| x.ln()).sum::<f64>() / xs.len() as f64).exp())
}

/// The mean of each cluster's values, in the order of the clusters' keys:
/// repeats and turns of one prompt are not independent draws, so a
/// bootstrap over prompts resamples these means, not the raw values.
pub fn cluster_means<K: Ord>(pairs: impl IntoIterator<Item = (K, f64)>) -> Vec<f64> {
    let mut sums: std::collections::BTreeMap<K, (f64, usize)> = Default::default();
    for (k, x) in pairs {
        let e = sums.entry(k).or_insert((0.0, 0));
        e.0 += x;
        e.1 += 1;
    }
    sums.into_values().map(|(s, n)| s / n as f64).collect()
}

/// The percentile bootstrap interval of the mean of `xs` at `level`
/// (0.95), from `resamples` draws seeded by `seed`.
pub fn bootstrap_mean_ci(
    xs: &[f64],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Option<(f64, f64)> {
    use rand::{Rng, SeedableRng};
    if xs.len() < 2 {
        return None;
    }
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let means: Vec<f64> = (0..resamples.max(1))
        .map(|_| {
            (0..xs.len())
                .map(|_| xs[rng.random_range(0..xs.len())])
                .sum::<f64>()
                / xs.len() as f64
        })
        .collect();
    let alpha = (1.0 - level) / 2.0;
    Some((quantile(&means, alpha)?, quantile(&means, 1.0 - alpha)?))
}

/// Kendall's τ-b between paired observations (ties in either variable
/// corrected for); `None` with fewer than two pairs or when either side is
/// constant. O(n²): decoding orders are a few hundred positions.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len().min(y.len());
    if n < 2 {
        return None;
    }
    let (mut concordant, mut discordant) = (0i64, 0i64);
    let (mut tied_x, mut tied_y) = (0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let dx = x[i].total_cmp(&x[j]) as i64;
            let dy = y[i].total_cmp(&y[j]) as i64;
            match (dx, dy) {
                (0, 0) => {}
                (0, _) => tied_x += 1,
                (_, 0) => tied_y += 1,
                _ if dx == dy => concordant += 1,
                _ => discordant += 1,
            }
        }
    }
    let a = (concordant + discordant + tied_x) as f64;
    let b = (concordant + discordant + tied_y) as f64;
    (a > 0.0 && b > 0.0).then(|| (concordant - discordant) as f64 / (a * b).sqrt())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_means_average_within_keys_in_key_order() {
        let m = super::cluster_means([("b", 1.0), ("a", 2.0), ("b", 3.0), ("a", 4.0), ("c", 5.0)]);
        assert_eq!(m, vec![3.0, 2.0, 5.0]);
        assert!(super::cluster_means(Vec::<(u8, f64)>::new()).is_empty());
    }

    use super::*;

    #[test]
    fn kendall_tau_b_on_known_cases() {
        let lr = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(kendall_tau_b(&lr, &lr), Some(1.0));
        assert_eq!(kendall_tau_b(&lr, &[3.0, 2.0, 1.0, 0.0]), Some(-1.0));
        assert_eq!(kendall_tau_b(&lr, &[1.0, 1.0, 1.0, 1.0]), None);
        // Two pairs tied in y only, eight concordant: 8 / sqrt(10 · 8)
        // (scipy.stats.kendalltau gives 0.8944271909999159).
        let t = kendall_tau_b(&[1.0, 2.0, 3.0, 4.0, 5.0], &[1.0, 1.0, 2.0, 3.0, 3.0]).unwrap();
        assert!((t - 8.0 / 80f64.sqrt()).abs() < 1e-12, "{t}");
        // scipy.stats.kendalltau([0,1,2,3], [1,0,3,2]) = 0.3333333333333333
        let t = kendall_tau_b(&lr, &[1.0, 0.0, 3.0, 2.0]).unwrap();
        assert!((t - 1.0 / 3.0).abs() < 1e-12, "{t}");
    }

    fn pt(config: &str, task: &str, score: f64, tps: f64) -> TaskPoint {
        TaskPoint {
            config: config.into(),
            task: task.into(),
            score_x100: score,
            tokens_per_step: tps,
            speedup: None,
        }
    }

    #[test]
    fn pbx_takes_the_fastest_configuration_that_keeps_the_score() {
        let points = vec![
            pt("ar", "copy", 100.0, 1.0),
            pt("ar", "sort", 90.0, 1.0),
            pt("k2", "copy", 90.0, 2.0),
            pt("k2", "sort", 80.0, 2.0),
            pt("k4", "copy", 70.0, 4.0),
            pt("k4", "sort", 50.0, 4.0),
            // Two samples of one task are averaged first.
            pt("k8", "copy", 40.0, 7.0),
            pt("k8", "copy", 60.0, 9.0),
            // A configuration that misses a task never qualifies.
            pt("k16", "copy", 100.0, 16.0),
        ];
        let (pb, summaries) = pb_scores(&points, &[90.0, 80.0, 70.0, 60.0, 50.0]);
        assert_eq!(
            pb,
            vec![
                (90.0, Some(1.0)),
                (80.0, Some(2.0)),
                (70.0, Some(2.0)),
                (60.0, Some(4.0)),
                (50.0, Some(4.0))
            ]
        );
        let k8 = summaries.iter().find(|c| c.config == "k8").unwrap();
        assert!(!k8.complete && k8.tasks == 1 && k8.mean_tokens_per_step == 8.0);
        assert!(
            !summaries
                .iter()
                .find(|c| c.config == "k16")
                .unwrap()
                .complete
        );
        assert_eq!(pb_scores(&[], &[90.0]).0, vec![(90.0, None)]);
    }

    #[test]
    fn quantiles_match_numpy_linear() {
        let xs = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(median(&xs), Some(2.5));
        assert_eq!(quantile(&xs, 0.25), Some(1.75));
        assert_eq!(quantile(&xs, 0.75), Some(3.25));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn means() {
        assert_eq!(mean(&[1.0, 2.0, 6.0]), Some(3.0));
        assert!((geometric_mean(&[1.0, 4.0]).unwrap() - 2.0).abs() < 1e-12);
        assert_eq!(geometric_mean(&[1.0, 0.0]), None);
        assert!((std_dev(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap() - 2.138).abs() < 1e-3);
    }
}

/// One (configuration, task) result: the task's mean score (0..100) and
/// its mean tokens per target forward.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPoint {
    pub config: String,
    pub task: String,
    pub score_x100: f64,
    pub tokens_per_step: f64,
    /// The task's mean tokens/s relative to `ar` on the same prompts, when
    /// the run has `ar`.
    pub speedup: Option<f64>,
}

/// A configuration's averages over tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigSummary {
    pub config: String,
    pub tasks: usize,
    pub mean_score_x100: f64,
    pub mean_tokens_per_step: f64,
    /// The geometric mean over tasks of the wall-clock speedup over `ar`
    /// (ratios average geometrically); `None` when a task lacks one.
    pub mean_speedup: Option<f64>,
    /// Whether it covers every task seen in the input; only those count
    /// for PBx.
    pub complete: bool,
}

/// ParallelBench's PBx: for each threshold x, the highest mean tokens per
/// step among configurations whose mean score over all tasks is ≥ x
/// (`None` when none is). Points of one (config, task) are averaged
/// first; a configuration that misses a task is summarised but never
/// qualifies.
pub fn pb_scores(
    points: &[TaskPoint],
    thresholds: &[f64],
) -> (Vec<(f64, Option<f64>)>, Vec<ConfigSummary>) {
    use std::collections::{BTreeMap, BTreeSet};
    let all_tasks: BTreeSet<&str> = points.iter().map(|p| p.task.as_str()).collect();
    type Cols = (Vec<f64>, Vec<f64>, Vec<Option<f64>>);
    let mut by: BTreeMap<&str, BTreeMap<&str, Cols>> = BTreeMap::new();
    for p in points {
        let e = by.entry(&p.config).or_default().entry(&p.task).or_default();
        e.0.push(p.score_x100);
        e.1.push(p.tokens_per_step);
        e.2.push(p.speedup);
    }
    let summaries: Vec<ConfigSummary> = by
        .iter()
        .map(|(config, tasks)| {
            let scores: Vec<f64> = tasks.values().filter_map(|t| mean(&t.0)).collect();
            let tps: Vec<f64> = tasks.values().filter_map(|t| mean(&t.1)).collect();
            let speedups: Option<Vec<f64>> = tasks
                .values()
                .map(|t| {
                    t.2.iter()
                        .copied()
                        .collect::<Option<Vec<f64>>>()
                        .and_then(|v| geometric_mean(&v))
                })
                .collect();
            ConfigSummary {
                config: config.to_string(),
                tasks: tasks.len(),
                mean_score_x100: mean(&scores).unwrap_or(f64::NAN),
                mean_tokens_per_step: mean(&tps).unwrap_or(f64::NAN),
                mean_speedup: speedups.and_then(|v| geometric_mean(&v)),
                complete: tasks.len() == all_tasks.len(),
            }
        })
        .collect();
    let pb = thresholds
        .iter()
        .map(|&x| {
            let best = summaries
                .iter()
                .filter(|c| c.complete && c.mean_score_x100 >= x)
                .map(|c| c.mean_tokens_per_step)
                .fold(None, |acc: Option<f64>, t| {
                    Some(acc.map_or(t, |a| a.max(t)))
                });
            (x, best)
        })
        .collect();
    (pb, summaries)
}

/// d3LLM's AUP (accuracy under parallelism) of one method's curve: points
/// (ρ tokens per forward, y accuracy ×100), sorted by ρ, keep those with
/// y ≥ y₁ − `y_min_offset` (y₁ the accuracy at the lowest ρ); then
/// AUP = ρ₁·y₁ + Σᵢ (ρᵢ − ρᵢ₋₁)·(yᵢ·W(yᵢ) + yᵢ₋₁·W(yᵢ₋₁))/2 with
/// W(y) = min(exp(−α(1 − y/y_max)), 1). The defaults are α = 3 and an
/// offset of 5 points. Returns the score and the number of points kept;
/// `None` without a point with ρ > 0.
pub fn aup(
    points: &[(f64, f64)],
    y_max: f64,
    alpha: f64,
    y_min_offset: f64,
) -> Option<(f64, usize)> {
    let mut pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(r, y)| *r > 0.0 && r.is_finite() && y.is_finite())
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let y_1 = pts.first()?.1;
    let kept: Vec<(f64, f64)> = pts
        .into_iter()
        .filter(|p| p.1 >= y_1 - y_min_offset)
        .collect();
    let w = |y: f64| (-alpha * (1.0 - y / y_max)).exp().min(1.0);
    let mut score = kept[0].0 * kept[0].1;
    for pair in kept.windows(2) {
        let ((r0, y0), (r1, y1)) = (pair[0], pair[1]);
        score += 0.5 * (r1 - r0) * (y1 * w(y1) + y0 * w(y0));
    }
    Some((score, kept.len()))
}

#[cfg(test)]
mod aup_tests {
    use super::aup;

    #[test]
    fn aup_matches_the_definition_by_hand() {
        // One point: ρ·y.
        assert_eq!(aup(&[(1.0, 90.0)], 90.0, 3.0, 5.0), Some((90.0, 1)));
        // At y_max every weight is 1: a trapezoid.
        let (s, n) = aup(&[(2.0, 80.0), (1.0, 80.0)], 80.0, 3.0, 5.0).unwrap();
        assert_eq!(n, 2);
        assert!((s - (80.0 + 80.0)).abs() < 1e-9, "{s}");
        // Below y_max the weight discounts: y=70, y_max=80 → W = e^{-3/8}.
        let (s, _) = aup(&[(1.0, 72.0), (3.0, 70.0)], 80.0, 3.0, 5.0).unwrap();
        let w = |y: f64| (-3.0 * (1.0 - y / 80.0f64)).exp();
        let want = 72.0 + 0.5 * 2.0 * (70.0 * w(70.0) + 72.0 * w(72.0));
        assert!((s - want).abs() < 1e-9, "{s} vs {want}");
        // A point more than 5 points below y₁ is left out.
        let (s, n) = aup(&[(1.0, 90.0), (4.0, 80.0)], 90.0, 3.0, 5.0).unwrap();
        assert_eq!((s, n), (90.0, 1));
        assert_eq!(aup(&[], 90.0, 3.0, 5.0), None);
    }
}
