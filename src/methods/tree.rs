//! Draft trees (EAGLE-2's dynamic tree): the nodes a drafter expands, the
//! selection of the best `total` by cumulative log-probability, the mask
//! and rope positions of the one target forward that verifies them, and
//! the accept rules. Pure functions over ids and probabilities, so that
//! they are tested apart from any model.

use rand::Rng;
use rand_chacha::ChaCha20Rng;

use crate::model::ExplicitMask;
use crate::sampling::sample_from;

/// A drafted token; `parent` indexes the tree's nodes, `None` is the root
/// (the last emitted token, which the target has not read yet).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub token: u32,
    pub parent: Option<usize>,
    /// 1 for the root's children.
    pub depth: usize,
    /// Sum of the draft log-probabilities along the path.
    pub score: f32,
}

/// The `k` largest entries of `row` as (index, value), largest first,
/// lowest index first on ties.
pub fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in row.iter().enumerate() {
        if best.len() == k && best.last().is_some_and(|&(_, w)| v <= w) {
            continue;
        }
        let at = best.partition_point(|&(_, w)| w >= v);
        best.insert(at, (i as u32, v));
        best.truncate(k);
    }
    best
}

/// `log_softmax` of one row.
pub fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
    row.iter().map(|&x| x - lse).collect()
}

/// Picks the best `total` of `candidates` by score (ancestors first on
/// ties), keeping only nodes whose parent is kept. Returns the kept
/// nodes in depth order with parents re-indexed into the result: the
/// order of the verify chunk after the root.
pub fn select(candidates: &[Node], total: usize) -> Vec<Node> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&candidates[a], &candidates[b]);
        y.score
            .total_cmp(&x.score)
            .then(x.depth.cmp(&y.depth))
            .then(a.cmp(&b))
    });
    let mut kept = vec![false; candidates.len()];
    let mut n = 0;
    for &i in &order {
        if n == total {
            break;
        }
        if candidates[i].parent.is_none_or(|p| kept[p]) {
            kept[i] = true;
            n += 1;
        }
    }
    let mut chosen: Vec<usize> = (0..candidates.len()).filter(|&i| kept[i]).collect();
    chosen.sort_by_key(|&i| (candidates[i].depth, i));
    let mut new_index = vec![usize::MAX; candidates.len()];
    for (j, &i) in chosen.iter().enumerate() {
        new_index[i] = j;
    }
    chosen
        .iter()
        .map(|&i| Node {
            parent: candidates[i].parent.map(|p| new_index[p]),
            ..candidates[i].clone()
        })
        .collect()
}

/// The mask of a verify forward at cache position `base` over the root
/// and `nodes` (in order): every row sees the cache before `base`, the
/// root, its ancestors and itself.
pub fn verify_mask(base: usize, nodes: &[Node]) -> ExplicitMask {
    let rows = nodes.len() + 1;
    let mut m = ExplicitMask::new(rows, base + rows);
    for r in 0..rows {
        for c in 0..=base {
            m.set(r, c, true);
        }
    }
    for (i, _) in nodes.iter().enumerate() {
        let mut cur = Some(i);
        while let Some(j) = cur {
            m.set(i + 1, base + 1 + j, true);
            cur = nodes[j].parent;
        }
    }
    m
}

/// Rope positions of the verify chunk: the root at `base`, each node at
/// `base + depth`.
pub fn verify_positions(base: usize, nodes: &[Node]) -> Vec<u32> {
    std::iter::once(base as u32)
        .chain(nodes.iter().map(|n| (base + n.depth) as u32))
        .collect()
}

/// The children of `parent` (`None`: the root) in draft order: best
/// score first.
pub fn children(nodes: &[Node], parent: Option<usize>) -> Vec<usize> {
    let mut c: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].parent == parent)
        .collect();
    c.sort_by(|&a, &b| nodes[b].score.total_cmp(&nodes[a].score).then(a.cmp(&b)));
    c
}

/// An accepted path: node indices from the root down, and the token
/// after them.
#[derive(Debug, Clone, PartialEq)]
pub struct PathVerdict {
    pub path: Vec<usize>,
    pub next: u32,
}

/// Greedy: follow the child whose token is the target's argmax at each
/// row (`target_next[0]` for the root, `target_next[1 + i]` for node i).
pub fn greedy_path(nodes: &[Node], target_next: &[u32]) -> PathVerdict {
    let mut path = Vec::new();
    let mut row = 0;
    loop {
        let want = target_next[row];
        let parent = path.last().copied();
        match children(nodes, parent)
            .into_iter()
            .find(|&c| nodes[c].token == want)
        {
            Some(c) => {
                path.push(c);
                row = c + 1;
            }
            None => return PathVerdict { path, next: want },
        }
    }
}

/// Sampling (EAGLE's recursive rejection over siblings): at each node,
/// the children, drafted deterministically, are tried in order; child x
/// is kept with probability p(x) under the target's distribution at that
/// row, renormalised after each rejection (x's mass set to zero). With no
/// child kept, the next token is drawn from what is left. Each emitted
/// token is then distributed as the target's `p`. `p_at(row)` gives the
/// target's distribution at a verify row.
pub fn sampled_path(
    nodes: &[Node],
    p_at: &mut dyn FnMut(usize) -> Vec<f32>,
    rng: &mut ChaCha20Rng,
) -> PathVerdict {
    let mut path = Vec::new();
    let mut row = 0;
    loop {
        let mut p = p_at(row);
        let parent = path.last().copied();
        let mut kept = None;
        for c in children(nodes, parent) {
            let t = nodes[c].token as usize;
            let px = p.get(t).copied().unwrap_or(0.0);
            if px > 0.0 && rng.random::<f32>() < px {
                kept = Some(c);
                break;
            }
            if let Some(x) = p.get_mut(t) {
                *x = 0.0;
            }
            let sum: f32 = p.iter().sum();
            if sum <= 0.0 || !sum.is_finite() {
                break;
            }
            p.iter_mut().for_each(|x| *x /= sum);
        }
        match kept {
            Some(c) => {
                path.push(c);
                row = c + 1;
            }
            None => {
                return PathVerdict {
                    path,
                    next: sample_from(&p, rng),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn node(token: u32, parent: Option<usize>, depth: usize, score: f32) -> Node {
        Node {
            token,
            parent,
            depth,
            score,
        }
    }

    #[test]
    fn top_k_keeps_the_largest_first() {
        assert_eq!(
            top_k(&[0.1, 0.5, 0.3, 0.5, -1.0], 3),
            vec![(1, 0.5), (3, 0.5), (2, 0.3)]
        );
        assert_eq!(top_k(&[1.0], 4), vec![(0, 1.0)]);
    }

    #[test]
    fn selection_keeps_the_best_nodes_with_their_ancestors() {
        // Root children 0 (-0.1) and 1 (-2.0); 0's children 2 (-0.3) and
        // 3 (-3.0); 2's child 4 (-0.35).
        let c = vec![
            node(10, None, 1, -0.1),
            node(11, None, 1, -2.0),
            node(12, Some(0), 2, -0.3),
            node(13, Some(0), 2, -3.0),
            node(14, Some(2), 3, -0.35),
        ];
        let s = select(&c, 3);
        let tokens: Vec<u32> = s.iter().map(|n| n.token).collect();
        assert_eq!(tokens, vec![10, 12, 14]);
        assert_eq!(s[1].parent, Some(0));
        assert_eq!(s[2].parent, Some(1));
        // A child scoring as well as its parent still comes after it.
        let tie = vec![node(1, None, 1, -0.5), node(2, Some(0), 2, -0.5)];
        assert_eq!(select(&tie, 1)[0].token, 1);
    }

    #[test]
    fn the_verify_mask_shows_each_node_its_ancestors_only() {
        let nodes = vec![
            node(5, None, 1, -0.1),
            node(6, None, 1, -0.2),
            node(7, Some(0), 2, -0.3),
        ];
        let m = verify_mask(2, &nodes);
        let row = |r: usize| (0..m.cols).map(|c| m.get(r, c)).collect::<Vec<_>>();
        assert_eq!(row(0), vec![true, true, true, false, false, false]);
        assert_eq!(row(1), vec![true, true, true, true, false, false]);
        assert_eq!(row(2), vec![true, true, true, false, true, false]);
        assert_eq!(row(3), vec![true, true, true, true, false, true]);
        assert_eq!(verify_positions(2, &nodes), vec![2, 3, 3, 4]);
    }

    #[test]
    fn greedy_follows_the_target_down_the_tree() {
        let nodes = vec![
            node(5, None, 1, -0.1),
            node(6, None, 1, -0.2),
            node(7, Some(1), 2, -0.3),
        ];
        // Target: after root 6, after node0 x, after node1 7, after node2 9.
        let v = greedy_path(&nodes, &[6, 0, 7, 9]);
        assert_eq!(
            v,
            PathVerdict {
                path: vec![1, 2],
                next: 9
            }
        );
        let v = greedy_path(&nodes, &[8, 0, 0, 0]);
        assert_eq!(
            v,
            PathVerdict {
                path: vec![],
                next: 8
            }
        );
    }

    /// The first emitted token follows the target's distribution whatever
    /// the tree offers (chi-square, 3 degrees of freedom).
    #[test]
    fn sampling_over_siblings_keeps_the_target_distribution() {
        let p0 = vec![0.4f32, 0.3, 0.2, 0.1];
        let nodes = vec![node(3, None, 1, -0.1), node(1, None, 1, -0.5)];
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let n = 40_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            let v = sampled_path(
                &nodes,
                &mut |row| if row == 0 { p0.clone() } else { vec![0.25; 4] },
                &mut rng,
            );
            let first = match v.path.first() {
                Some(&i) => nodes[i].token,
                None => v.next,
            };
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
        assert!(chi2 < 16.27, "chi2 {chi2}, counts {counts:?}");
    }
}
