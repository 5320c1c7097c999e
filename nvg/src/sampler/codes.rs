//! Drawing one code per cluster from its logits (the official `sample`): greedy for top-k = 1, else
//! temperature, top-k and top-p (nucleus) filtering and one multinomial draw.

/// How codes are drawn at one stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodeSampling {
    pub temperature: f32,
    /// Keep the k most likely codes; 0 = all; 1 = greedy (argmax).
    pub top_k: usize,
    /// Keep the smallest set of most likely codes whose probability exceeds p (always at least one);
    /// 1 = all.
    pub top_p: f32,
}

/// Index of the largest value (the first one on ties; a NaN counts as largest).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate().skip(1) {
        let b = row[best];
        if !b.is_nan() && (v > b || v.is_nan()) {
            best = i;
        }
    }
    best
}

/// One code for a row of logits; `u` ∈ [0, 1) is the row's uniform draw (unused when greedy).
pub fn sample_code(row: &[f32], s: CodeSampling, u: f32) -> i64 {
    if s.top_k == 1 {
        return argmax(row) as i64;
    }
    let temperature = s.temperature.max(1e-5);
    let mut l: Vec<f32> = row.iter().map(|&x| x / temperature).collect();
    let mut order: Vec<usize> = (0..l.len()).collect();
    // Descending, stable (ties keep index order), NaN first.
    order.sort_by(|&a, &b| {
        l[b].partial_cmp(&l[a])
            .unwrap_or_else(|| l[b].is_nan().cmp(&l[a].is_nan()))
    });
    if s.top_k > 0 && s.top_k < l.len() {
        // Keep logits >= the k-th largest (ties with it survive, as in the official filter).
        let kth = l[order[s.top_k - 1]];
        for v in l.iter_mut() {
            if *v < kth {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    if s.top_p < 1.0 {
        let m = l[order[0]];
        let exps: Vec<f64> = order.iter().map(|&i| ((l[i] - m) as f64).exp()).collect();
        let z: f64 = exps.iter().sum();
        // Drop a code when the probability mass before it already exceeds p (the crossing code stays).
        let mut cum = 0.0;
        for (rank, &i) in order.iter().enumerate() {
            if rank > 0 && cum > s.top_p as f64 {
                l[i] = f32::NEG_INFINITY;
            }
            cum += exps[rank] / z;
        }
    }
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let probs: Vec<f64> = l.iter().map(|&x| ((x - m) as f64).exp()).collect();
    let z: f64 = probs.iter().sum();
    let target = u as f64 * z;
    let mut acc = 0.0;
    let mut last = order[0];
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            acc += p;
            last = i;
            if acc > target {
                return i as i64;
            }
        }
    }
    last as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREEDY: CodeSampling = CodeSampling {
        temperature: 1.0,
        top_k: 1,
        top_p: 1.0,
    };

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(sample_code(&[0.1, 3.0, 3.0, -1.0], GREEDY, 0.9), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_draw() {
        let row = [4.0, 3.0, 2.0, 1.0, 0.0];
        let k2 = CodeSampling {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
        };
        for u in [0.0, 0.3, 0.6, 0.99] {
            assert!(sample_code(&row, k2, u) < 2);
        }
        // p(first) ≈ 0.64 > 0.5: only the first code survives.
        let p = CodeSampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
        };
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(sample_code(&row, p, u), 0);
        }
        // The draw follows the cumulative distribution in index order.
        let all = CodeSampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        };
        assert_eq!(sample_code(&[0.0, 0.0], all, 0.25), 0);
        assert_eq!(sample_code(&[0.0, 0.0], all, 0.75), 1);
    }
}
