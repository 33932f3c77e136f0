//! A token n-gram model fitted on the run's own text (DiffuSpec's path
//! score): interpolated Witten-Bell estimates, so every token has a
//! probability and nothing outside the sample is needed.

use std::collections::HashMap;

/// Counts of every n-gram (n ≤ order) of the text pushed so far.
#[derive(Debug, Clone)]
pub struct NgramModel {
    order: usize,
    vocab: usize,
    /// History (up to order − 1 tokens) -> (next token -> count).
    next: HashMap<Vec<u32>, HashMap<u32, u32>>,
    history: Vec<u32>,
}

impl NgramModel {
    pub fn new(order: usize, vocab: usize) -> Self {
        Self {
            order: order.max(1),
            vocab: vocab.max(1),
            next: HashMap::new(),
            history: Vec::new(),
        }
    }

    pub fn clear(&mut self) {
        self.next.clear();
        self.history.clear();
    }

    /// Appends tokens to the text, counting the n-grams that end at each.
    pub fn extend(&mut self, tokens: &[u32]) {
        for &t in tokens {
            for n in 0..self.order {
                if n > self.history.len() {
                    break;
                }
                let h = self.history[self.history.len() - n..].to_vec();
                *self.next.entry(h).or_default().entry(t).or_default() += 1;
            }
            self.history.push(t);
        }
    }

    /// The text pushed so far.
    pub fn text(&self) -> &[u32] {
        &self.history
    }

    /// p(token | context), from the last order − 1 tokens of `context`:
    /// `(c(h, w) + T(h)·p(w | h')) / (c(h) + T(h))`, with T(h) the number
    /// of distinct tokens seen after h and h' the history one shorter;
    /// unigrams are add-one smoothed over the vocabulary.
    pub fn prob(&self, context: &[u32], token: u32) -> f64 {
        let n = (self.order - 1).min(context.len());
        self.prob_from(&context[context.len() - n..], token)
    }

    fn prob_from(&self, h: &[u32], token: u32) -> f64 {
        let lower = if h.is_empty() {
            None
        } else {
            Some(self.prob_from(&h[1..], token))
        };
        match self.next.get(h) {
            None => lower.unwrap_or(1.0 / self.vocab as f64),
            Some(follow) => {
                let total: u32 = follow.values().sum();
                let c = follow.get(&token).copied().unwrap_or(0) as f64;
                match lower {
                    Some(lower) => {
                        let types = follow.len() as f64;
                        (c + types * lower) / (total as f64 + types)
                    }
                    None => (c + 1.0) / (total as f64 + self.vocab as f64),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_sum_to_one_after_any_context() {
        let mut m = NgramModel::new(3, 6);
        m.extend(&[1, 2, 3, 1, 2, 4, 1, 2, 3]);
        for ctx in [&[][..], &[1], &[1, 2], &[2, 4], &[5, 5], &[3, 1, 2]] {
            let s: f64 = (0..6).map(|t| m.prob(ctx, t)).sum();
            assert!((s - 1.0).abs() < 1e-9, "context {ctx:?}: {s}");
        }
    }

    #[test]
    fn seen_continuations_beat_unseen_ones() {
        let mut m = NgramModel::new(3, 50);
        m.extend(&[7, 8, 9, 7, 8, 9, 7, 8]);
        assert!(m.prob(&[7, 8], 9) > 0.5);
        assert!(m.prob(&[7, 8], 9) > 10.0 * m.prob(&[7, 8], 10));
        // Nothing seen: uniform.
        let empty = NgramModel::new(3, 50);
        assert!((empty.prob(&[1, 2], 3) - 0.02).abs() < 1e-12);
    }
}
