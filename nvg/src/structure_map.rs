//! Structure maps: the binary cluster tree of a stage, the per-token structure features that position
//! tokens in RoPE, and the balanced split that turns a structure score into the next stage's labels.
//!
//! Labels: at stage s every token carries a cluster id in `0..2^s`; cluster p splits into `2p` and
//! `2p + 1`, so `labels_s = labels_leaf >> (bits − s)` and bit k (MSB first) of a token's path is
//! `(labels_s >> (s − 1 − k)) & 1`.

use crate::config::Grid;
use anyhow::{Result, bail};
use nvg_engine::Tensor;
use std::cmp::Ordering;

/// Structure features of stage-`stage` labels (NVG-SPEC §3.3): per token `bits` values, `2·bit_k` for
/// the `stage` known bits and 1 ("unknown") for the rest. Row-major `[tokens, bits]`.
pub fn structure_features(grid: &Grid, labels: &[i64], stage: usize) -> Vec<f32> {
    let bits = grid.bits();
    let mut out = Vec::with_capacity(labels.len() * bits);
    for &label in labels {
        for k in 0..bits {
            out.push(if k < stage {
                2.0 * ((label >> (stage - 1 - k)) & 1) as f32
            } else {
                1.0
            });
        }
    }
    out
}

/// RoPE positions `[1 + Σ groups tokens, 3 + bits]` of one sequence: the class token (all ones), then one
/// group of image tokens per entry of `groups`, each `[type, features.., row, col]` with the entry's
/// token type (0 for content and noisy-structure tokens, 2 for canvas-condition tokens).
pub fn rope_positions(grid: &Grid, features: &[f32], groups: &[f32]) -> Vec<f32> {
    let (t, bits) = (grid.tokens(), grid.bits());
    let axes = 3 + bits;
    let mut pos = Vec::with_capacity((1 + groups.len() * t) * axes);
    pos.extend(std::iter::repeat_n(1.0, axes));
    for &kind in groups {
        for l in 0..t {
            let (r, c) = grid.row_col(l);
            pos.push(kind);
            pos.extend_from_slice(&features[l * bits..(l + 1) * bits]);
            pos.push(r as f32);
            pos.push(c as f32);
        }
    }
    pos
}

/// Labels of stage `stage` as a `[rows, tokens]` i64 tensor's rows, checked: every value in
/// `0..2^stage` and every cluster exactly `tokens / 2^stage` tokens (the tree is balanced).
pub fn check_labels(grid: &Grid, labels: &Tensor, stage: usize) -> Result<Vec<i64>> {
    let t = grid.tokens();
    if labels.rank() != 2 || labels.dims()[1] != t {
        bail!("stage-{stage} labels must be [batch, {t}], got {:?}", labels.dims());
    }
    let v = labels.to_i64_vec()?;
    let (clusters, size) = (grid.clusters(stage), grid.cluster_size(stage));
    for (row, chunk) in v.chunks(t).enumerate() {
        let mut count = vec![0usize; clusters];
        for &l in chunk {
            if l < 0 || l as usize >= clusters {
                bail!("stage-{stage} label {l} in row {row} is outside 0..{clusters}");
            }
            count[l as usize] += 1;
        }
        if let Some(p) = count.iter().position(|&c| c != size) {
            bail!(
                "stage-{stage} cluster {p} of row {row} has {} tokens, expected {size} (a balanced tree)",
                count[p]
            );
        }
    }
    Ok(v)
}

/// Ranks split scores: a NaN counts as larger than every number and equal values keep their order
/// (the stable order of tokens inside their parent).
fn score_order(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap(),
    }
}

/// The balanced cluster split (`cluster` in the official code, NVG-SPEC §3.5), for one image.
///
/// Tokens are grouped by their stage-`stage` cluster (raster order inside a cluster). In every
/// cluster, `p = (clamp(score, −1, 1) + 1) / Σ(clamp + 1)`; with Gumbel noise `g` the ranking key is
/// `ln(p + 1e−8) + g`, else `p`. The top half of each cluster gets bit 1: `label' = 2·label + bit`.
///
/// Deterministic tie rule (the official `torch.topk` order is implementation-defined): among equal
/// keys the token earlier in the cluster's raster order ranks higher, and a NaN key (a cluster whose
/// scores all clamp to −1 gives 0/0) counts as larger than any number — so an all-NaN cluster keeps
/// its first half. The split is exactly balanced whatever the scores.
pub fn cluster_split(grid: &Grid, labels: &[i64], scores: &[f32], stage: usize, gumbel: Option<&[f32]>) -> Vec<i64> {
    let t = grid.tokens();
    assert!(
        labels.len() == t && scores.len() == t,
        "cluster_split: one label and score per token"
    );
    let (clusters, size) = (grid.clusters(stage), grid.cluster_size(stage));
    // Tokens grouped by cluster, raster order inside (a stable counting sort).
    let mut members: Vec<Vec<usize>> = vec![Vec::with_capacity(size); clusters];
    for (l, &c) in labels.iter().enumerate() {
        members[c as usize].push(l);
    }
    let mut next = vec![0i64; t];
    for (cluster, toks) in members.iter().enumerate() {
        let clamped: Vec<f32> = toks.iter().map(|&l| scores[l].clamp(-1.0, 1.0) + 1.0).collect();
        let sum: f32 = clamped.iter().sum();
        let key: Vec<f32> = clamped
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let p = c / sum;
                match gumbel {
                    Some(g) => (p + 1e-8).ln() + g[toks[i]],
                    None => p,
                }
            })
            .collect();
        let mut rank: Vec<usize> = (0..toks.len()).collect();
        rank.sort_by(|&a, &b| score_order(key[b], key[a])); // stable: ties keep raster order
        for (r, &i) in rank.iter().enumerate() {
            let bit = (r < toks.len() / 2) as i64;
            next[toks[i]] = 2 * cluster as i64 + bit;
        }
    }
    next
}

/// Which child of each split of a cluster tree is named `2p` (bit 0) and which `2p + 1`. The tree (the
/// partition at every stage) is the same either way; only the names, i.e. the structure bits the
/// generator sees and predicts, differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildOrder {
    /// The official rule (NVG-SPEC §2.6 `reorganize`): the child merged earlier (the closer pair) is
    /// `2p`. Which side of a split that is depends on the image, so a bit's value carries almost no
    /// information on its own and the structure flow must learn to agree on it across tokens.
    Merge,
    /// Our extension: the child lying farther out from the grid centre (larger sum of squared distances
    /// of its tokens; ties keep the merge order) is `2p`, so bit 0 means "the outer part" everywhere and
    /// a token's position already predicts its bits.
    OutsideFirst,
}

/// Leaf labels `leaf` (a structure map in the merge order of the tokenizer) renamed by `order`. Stage s
/// of the result is `result >> (bits − s)` as always, and every stage has exactly the same clusters.
pub fn order_children(grid: &Grid, leaf: &[i64], order: ChildOrder) -> Vec<i64> {
    if order == ChildOrder::Merge {
        return leaf.to_vec();
    }
    let (t, bits, side) = (grid.tokens(), grid.bits(), grid.side() as i64);
    // Squared distance from the centre in doubled coordinates (exact integers).
    let outwardness: Vec<i64> = (0..t)
        .map(|l| {
            let (r, c) = grid.row_col(l);
            let (dr, dc) = (2 * r as i64 - (side - 1), 2 * c as i64 - (side - 1));
            dr * dr + dc * dc
        })
        .collect();
    let mut renamed = vec![0i64; t];
    for s in 0..bits {
        let shift = bits - 1 - s;
        // Old stage-(s+1) clusters: their outwardness; a child's sibling is `child ^ 1`.
        let mut sum = vec![0i64; 2 << s];
        for (l, &old) in leaf.iter().enumerate() {
            sum[(old >> shift) as usize] += outwardness[l];
        }
        for (l, &old) in leaf.iter().enumerate() {
            let child = (old >> shift) as usize;
            let bit = match sum[child].cmp(&sum[child ^ 1]) {
                Ordering::Greater => 0,
                Ordering::Less => 1,
                Ordering::Equal => (child & 1) as i64,
            };
            renamed[l] = 2 * renamed[l] + bit;
        }
    }
    renamed
}

/// The labels of every stage (`stages` lists of `tokens`) from leaf labels.
pub fn stage_labels(grid: &Grid, leaf: &[i64]) -> Vec<Vec<i64>> {
    (0..grid.stages())
        .map(|s| leaf.iter().map(|l| l >> (grid.bits() - s)).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random cluster tree: a random permutation of the tokens as leaf labels.
    fn random_leaf(grid: &Grid, seed: u64) -> Vec<i64> {
        let rng = nvg_engine::rng::RngStream::new(seed, 0);
        let mut leaf: Vec<i64> = (0..grid.tokens() as i64).collect();
        for i in (1..leaf.len()).rev() {
            let j = rng.words(i as u64)[0] as usize % (i + 1);
            leaf.swap(i, j);
        }
        leaf
    }

    /// Whether two labellings of one stage make the same clusters (a bijection between the names).
    fn same_partition(a: &[i64], b: &[i64]) -> bool {
        let mut ab = std::collections::HashMap::new();
        let mut ba = std::collections::HashMap::new();
        a.iter()
            .zip(b)
            .all(|(x, y)| *ab.entry(x).or_insert(y) == y && *ba.entry(y).or_insert(x) == x)
    }

    #[test]
    fn outside_first_renames_every_split_without_changing_the_clusters() {
        for side in [2, 4, 8, 16] {
            let g = Grid::new(side).unwrap();
            let centre = (g.side() as f64 - 1.0) / 2.0;
            let out = |l: usize| {
                let (r, c) = g.row_col(l);
                (r as f64 - centre).powi(2) + (c as f64 - centre).powi(2)
            };
            for seed in 0..20 {
                let leaf = random_leaf(&g, seed);
                let renamed = order_children(&g, &leaf, ChildOrder::OutsideFirst);
                let (old, new) = (stage_labels(&g, &leaf), stage_labels(&g, &renamed));
                for s in 0..g.stages() {
                    assert!(same_partition(&old[s], &new[s]), "side {side} seed {seed} stage {s}");
                }
                // Every split: child 2p lies at least as far out as 2p + 1 (mean of squared distances).
                for (s, labels) in new.iter().enumerate().skip(1) {
                    let mut sum = vec![0.0f64; 1 << s];
                    for (l, &c) in labels.iter().enumerate() {
                        sum[c as usize] += out(l);
                    }
                    assert!(
                        sum.chunks(2).all(|p| p[0] >= p[1] - 1e-9),
                        "side {side} seed {seed} stage {s}"
                    );
                }
                // Renaming is a function of the tree alone: renaming again changes nothing.
                assert_eq!(order_children(&g, &renamed, ChildOrder::OutsideFirst), renamed);
                assert_eq!(order_children(&g, &leaf, ChildOrder::Merge), leaf);
            }
        }
        // 2×2 by hand: tokens 0 1 / 2 3 paired as {0, 3} (leaves 0, 1) and {1, 2} (leaves 2, 3). Every
        // token is equally far out, so the ties keep the merge order.
        let g = Grid::new(2).unwrap();
        assert_eq!(
            order_children(&g, &[0, 2, 3, 1], ChildOrder::OutsideFirst),
            vec![0, 2, 3, 1]
        );
        // 4×4: leaves list the 4 centre tokens, then the border in raster order. Stage 1: {centre, top
        // row} is first in merge order but lies less far out than the rest of the border, so it becomes
        // cluster 1; stage 2 splits it into the top row (2) and the centre (3), and the rest of the
        // border into the bottom row (0, its corners lie farther out) and the side tokens (1).
        let g = Grid::new(4).unwrap();
        let inner = |l: usize| {
            let (r, c) = g.row_col(l);
            (1..3).contains(&r) && (1..3).contains(&c)
        };
        let order: Vec<usize> = (0..16)
            .filter(|&l| inner(l))
            .chain((0..16).filter(|&l| !inner(l)))
            .collect();
        let mut leaf = vec![0i64; 16];
        for (i, &l) in order.iter().enumerate() {
            leaf[l] = i as i64;
        }
        let renamed = order_children(&g, &leaf, ChildOrder::OutsideFirst);
        for (l, &name) in renamed.iter().enumerate() {
            let expect = if inner(l) {
                3
            } else if l < 4 {
                2
            } else if l >= 12 {
                0
            } else {
                1
            };
            assert_eq!(name >> 2, expect, "token {l}");
        }
    }

    #[test]
    fn features_mark_known_bits_msb_first_and_unknown_as_one() {
        let g = Grid::official();
        // Label 5 at stage 3 is path 101.
        let f = structure_features(&g, &[5], 3);
        assert_eq!(f, vec![2.0, 0.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(structure_features(&g, &[0], 0), vec![1.0; 8]);
    }

    /// Bits (label & 1) of the tokens of cluster 0 of a stage-`stage` labelling where cluster c holds
    /// tokens c·size..(c+1)·size.
    fn split_bits(stage: usize, scores: &[f32]) -> Vec<i64> {
        let g = Grid::official();
        let labels: Vec<i64> = (0..256).map(|l| (l / g.cluster_size(stage)) as i64).collect();
        cluster_split(&g, &labels, scores, stage, None)
            .iter()
            .map(|l| l & 1)
            .collect()
    }

    #[test]
    fn tied_scores_send_the_earlier_tokens_of_a_cluster_to_the_first_half() {
        // Every score clamps to +1: all p are equal; the first 128 tokens in raster order win.
        let bits = split_bits(0, &[1.5; 256]);
        assert!(bits[..128].iter().all(|&b| b == 1) && bits[128..].iter().all(|&b| b == 0));
        // A tie straddling the split: in a 4-token cluster (stage 6), three scores clamp to +1 (2.0, 1.0,
        // 9.0) for two places; the two earlier tokens win.
        let mut scores = vec![0.0f32; 256];
        scores[..4].copy_from_slice(&[2.0, 1.0, 9.0, -0.5]);
        assert_eq!(split_bits(6, &scores)[..4], [1, 1, 0, 0]);
        // Stage 7 pairs tied at +1 or at −1: the first token of the pair gets bit 1 (what CPU PyTorch does).
        let bits = split_bits(7, &[1.0; 256]);
        assert!(bits.chunks(2).all(|p| p == [1, 0]));
    }

    #[test]
    fn a_cluster_whose_scores_all_clamp_to_minus_one_splits_as_all_equal() {
        // p = 0/0 = NaN for every token: ranked as all equal, so the first half of the cluster wins.
        let mut scores: Vec<f32> = (0..256).map(|l| (l as f32 * 0.37).sin()).collect();
        scores[64..128].fill(-3.0); // cluster 1 of stage 2
        let bits = split_bits(2, &scores);
        assert!(bits[64..96].iter().all(|&b| b == 1) && bits[96..128].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_split_stays_exactly_balanced_whatever_the_scores() {
        let g = Grid::official();
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0, -1.0, 0.0, 5.0, -5.0];
        for stage in 0..8 {
            let labels: Vec<i64> = (0..256).map(|l| (((l * 97) % 256) >> (8 - stage)) as i64).collect();
            let scores: Vec<f32> = (0..256).map(|l| specials[(l * 31 + stage) % specials.len()]).collect();
            let next = cluster_split(&g, &labels, &scores, stage, None);
            for c in 0..g.clusters(stage + 1) {
                assert_eq!(
                    next.iter().filter(|&&x| x == c as i64).count(),
                    g.cluster_size(stage + 1),
                    "stage {stage}"
                );
            }
            assert!(next.iter().zip(&labels).all(|(n, l)| n >> 1 == *l));
        }
    }

    #[test]
    fn split_is_balanced_and_nests_under_the_parent() {
        let g = Grid::official();
        let labels: Vec<i64> = (0..256).map(|l| (l % 4) as i64).collect();
        let scores: Vec<f32> = (0..256).map(|l| ((l * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let next = cluster_split(&g, &labels, &scores, 2, None);
        for c in 0..8 {
            assert_eq!(next.iter().filter(|&&x| x == c).count(), 32);
        }
        for (l, &n) in next.iter().enumerate() {
            assert_eq!(n >> 1, labels[l]);
        }
    }
}
