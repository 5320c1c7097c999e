//! Granularity clustering (NVG-SPEC §2.6): the structure maps of an image, from its encoder features.
//!
//! Bottom-up, tokens are paired greedily by distance — closest pair first, then the closest pair of
//! what is left, until every cluster has a partner — and each new cluster is represented by the centroid
//! of the *original* features of all its tokens; this repeats until one cluster remains. A cluster's raw
//! label at a level is its merge order. Top-down, labels are then renumbered so that cluster p of stage
//! s splits into 2p and 2p + 1 at stage s + 1 (the child with the smaller raw label gets 2p).
//!
//! Ties: pairs are ranked by (distance, lower token index, higher token index), which is what the official
//! row-major `argmin` over a symmetric distance matrix picks. Distances are exact Euclidean in f64 (the
//! official code uses `torch.cdist` in f32, whose matmul formulation can flip near-ties; the fixtures
//! check that no pick is closer than 2e-5 relative).

use anyhow::{Result, bail};

/// Labels of every stage `[stages][T]` (stage s in `0..2^s`) for one image's features `[T, C]` (raster
/// token order). `T` must be a power of two.
pub fn cluster(features: &[f32], tokens: usize, channels: usize) -> Result<Vec<Vec<i64>>> {
    if !tokens.is_power_of_two() || tokens < 2 || features.len() != tokens * channels {
        bail!(
            "clustering needs a power-of-two token count and [tokens, channels] features; got {tokens} tokens, {} values",
            features.len()
        );
    }
    let bits = tokens.trailing_zeros() as usize;
    // raw[level][token]: merge order of the token's cluster at that level (level `bits` = token index).
    let mut raw = vec![vec![0i64; tokens]; bits + 1];
    raw[bits] = (0..tokens as i64).collect();
    let mut members: Vec<Vec<usize>> = (0..tokens).map(|l| vec![l]).collect();
    let mut reps: Vec<Vec<f64>> = (0..tokens)
        .map(|l| {
            features[l * channels..(l + 1) * channels]
                .iter()
                .map(|&v| v as f64)
                .collect()
        })
        .collect();
    for it in 1..=bits {
        let n = members.len();
        let mut pairs: Vec<(f64, usize, usize)> = Vec::with_capacity(n * (n - 1) / 2);
        for a in 0..n {
            for b in a + 1..n {
                let d: f64 = reps[a].iter().zip(&reps[b]).map(|(x, y)| (x - y) * (x - y)).sum();
                pairs.push((d.sqrt(), a, b));
            }
        }
        pairs.sort_unstable_by(|p, q| p.0.total_cmp(&q.0).then(p.1.cmp(&q.1)).then(p.2.cmp(&q.2)));
        let mut used = vec![false; n];
        let mut merged: Vec<Vec<usize>> = Vec::with_capacity(n / 2);
        for &(_, a, b) in &pairs {
            if used[a] || used[b] {
                continue;
            }
            used[a] = true;
            used[b] = true;
            let m = merged.len() as i64;
            let mut group = members[a].clone();
            group.extend_from_slice(&members[b]);
            for &tok in &group {
                raw[bits - it][tok] = m;
            }
            merged.push(group);
            if merged.len() == n / 2 {
                break;
            }
        }
        reps = merged
            .iter()
            .map(|g| {
                let mut c = vec![0.0f64; channels];
                for &tok in g {
                    for (ci, &v) in c.iter_mut().zip(&features[tok * channels..(tok + 1) * channels]) {
                        *ci += v as f64;
                    }
                }
                c.iter_mut().for_each(|v| *v /= g.len() as f64);
                c
            })
            .collect();
        members = merged;
    }
    Ok(relabel(&raw))
}

/// Top-down renumbering: the two children of new cluster p become 2p (smaller raw label) and 2p + 1.
fn relabel(raw: &[Vec<i64>]) -> Vec<Vec<i64>> {
    let tokens = raw[0].len();
    let mut out = vec![vec![0i64; tokens]; raw.len()];
    for level in 1..raw.len() {
        let clusters = 1usize << level;
        // For each raw child label, its parent's new label; then each parent's two children in raw order.
        let mut parent_of = vec![-1i64; clusters];
        for l in 0..tokens {
            parent_of[raw[level][l] as usize] = out[level - 1][l];
        }
        let mut new_of = vec![0i64; clusters];
        let mut seen = vec![0usize; clusters / 2];
        for (child, &p) in parent_of.iter().enumerate() {
            // Raw labels are visited in increasing order, so the first child seen is the smaller one.
            new_of[child] = 2 * p + seen[p as usize] as i64;
            seen[p as usize] += 1;
        }
        for l in 0..tokens {
            out[level][l] = new_of[raw[level][l] as usize];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_nest_and_clusters_are_balanced() {
        let (t, c) = (64, 5);
        let f: Vec<f32> = (0..t * c).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
        let labels = cluster(&f, t, c).unwrap();
        assert_eq!(labels.len(), 7);
        for s in 0..7 {
            for (l, &lab) in labels[s].iter().enumerate() {
                assert_eq!(lab, labels[6][l] >> (6 - s));
            }
            for k in 0..1i64 << s {
                assert_eq!(labels[s].iter().filter(|&&x| x == k).count(), t >> s);
            }
        }
    }

    #[test]
    fn the_closest_tokens_merge_first() {
        // Tokens 0 and 3 are nearly equal, 1 and 2 are far apart: (0, 3) is merge 0 → raw label 0.
        let f = [0.0, 10.0, -10.0, 0.01];
        let labels = cluster(&f, 4, 1).unwrap();
        assert_eq!(labels[1][0], labels[1][3]);
        assert_ne!(labels[1][0], labels[1][1]);
    }
}
