//! Token selection: greedy, or seeded temperature / top-k / top-p sampling.

use rand::Rng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::model::argmax;

/// How a token is chosen from logits. `temperature = 0` is greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 selects the argmax (greedy); otherwise logits are divided by it.
    #[serde(default)]
    pub temperature: f64,
    /// Keep only the k most likely tokens (0 = off).
    #[serde(default)]
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1 = off).
    #[serde(default = "one")]
    pub top_p: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!(
                "temperature: expected a number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!(
                "top_p: expected a number in (0, 1], got {}",
                self.top_p
            ));
        }
        Ok(())
    }

    /// The distribution sampling draws from (after temperature, top-k and
    /// top-p), as probabilities over the whole vocabulary. Speculative
    /// methods compare these between drafter and target.
    pub fn distribution(&self, logits: &[f32]) -> Vec<f32> {
        let n = logits.len();
        if self.is_greedy() {
            let mut p = vec![0f32; n];
            p[argmax(logits) as usize] = 1.0;
            return p;
        }
        let t = self.temperature as f32;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut p: Vec<f32> = logits.iter().map(|&l| ((l - max) / t).exp()).collect();
        if self.top_k > 0 && self.top_k < n {
            let mut sorted: Vec<f32> = p.clone();
            let kth = n - self.top_k;
            sorted.select_nth_unstable_by(kth, |a, b| a.total_cmp(b));
            let cutoff = sorted[kth];
            // Ties at the cutoff are kept in id order until k are kept.
            let mut kept = 0;
            for x in p.iter_mut() {
                if *x > cutoff {
                    kept += 1;
                }
            }
            let mut ties_left = self.top_k - kept;
            for x in p.iter_mut() {
                if *x < cutoff {
                    *x = 0.0;
                } else if *x == cutoff {
                    if ties_left > 0 {
                        ties_left -= 1;
                    } else {
                        *x = 0.0;
                    }
                }
            }
        }
        let sum: f32 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= sum);
        if self.top_p < 1.0 {
            let mut idx: Vec<usize> = (0..n).filter(|&i| p[i] > 0.0).collect();
            idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            let mut cum = 0f32;
            let mut keep = vec![false; n];
            for &i in &idx {
                keep[i] = true;
                cum += p[i];
                if cum as f64 >= self.top_p {
                    break;
                }
            }
            for (x, k) in p.iter_mut().zip(&keep) {
                if !k {
                    *x = 0.0;
                }
            }
            let sum: f32 = p.iter().sum();
            p.iter_mut().for_each(|x| *x /= sum);
        }
        p
    }

    /// Chooses a token. Greedy never touches the RNG.
    /// The next token from one row of logits (`[vocab]`, on any device).
    pub fn pick(
        &self,
        row: &candle_core::Tensor,
        rng: &mut ChaCha20Rng,
    ) -> candle_core::Result<u32> {
        if self.is_greedy() {
            if row.device().is_cpu() {
                // candle's CPU argmax wakes rayon's pool, whose spinning
                // threads then compete with the next forward's workers.
                return Ok(argmax(&row.to_vec1::<f32>()?));
            }
            // On a GPU the argmax there keeps the copy to one id.
            return Ok(row
                .argmax_keepdim(candle_core::D::Minus1)?
                .to_vec1::<u32>()?[0]);
        }
        Ok(self.sample(&row.to_vec1::<f32>()?, rng))
    }

    pub fn sample(&self, logits: &[f32], rng: &mut ChaCha20Rng) -> u32 {
        if self.is_greedy() {
            return argmax(logits);
        }
        sample_from(&self.distribution(logits), rng)
    }
}

/// Draws an index from a probability vector by inverse CDF.
pub fn sample_from(p: &[f32], rng: &mut ChaCha20Rng) -> u32 {
    let u: f32 = rng.random::<f32>();
    let mut cum = 0f32;
    let mut last_nonzero = 0;
    for (i, &x) in p.iter().enumerate() {
        if x > 0.0 {
            last_nonzero = i;
            cum += x;
            if u < cum {
                return i as u32;
            }
        }
    }
    last_nonzero as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn greedy_is_argmax_first_on_ties() {
        let p = SamplingParams::default();
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        assert_eq!(p.sample(&[0.0, 3.0, 3.0, 1.0], &mut rng), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for _ in 0..50 {
            assert_eq!(p.sample(&[0.5, 2.0, 1.9, -1.0], &mut rng), 1);
        }
    }

    #[test]
    fn top_p_keeps_smallest_covering_set() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
        };
        let d = p.distribution(&[(0.6f32).ln(), (0.3f32).ln(), (0.1f32).ln()]);
        assert!(
            (d[0] - 1.0).abs() < 1e-6 && d[1] == 0.0 && d[2] == 0.0,
            "{d:?}"
        );
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_matches_distribution() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        };
        let logits = [(0.2f32).ln(), (0.5f32).ln(), (0.3f32).ln()];
        let draw = |seed| {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            (0..4000)
                .map(|_| p.sample(&logits, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        let d = draw(4);
        let f1 = d.iter().filter(|&&t| t == 1).count() as f64 / d.len() as f64;
        assert!((f1 - 0.5).abs() < 0.03, "frequency of token 1 was {f1}");
    }
}
