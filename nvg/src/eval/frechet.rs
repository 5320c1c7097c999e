//! The Fréchet distance between two sets of feature vectors, each summarised by its mean and covariance
//! (the FID formula on our own classifier's features):
//!
//! `FD = |μ1 − μ2|² + Tr(Σ1) + Tr(Σ2) − 2·Tr((Σ1·Σ2)^{1/2})`.
//!
//! Everything is f64. `Tr((Σ1·Σ2)^{1/2})` is computed without a non-symmetric matrix square root:
//! `Σ1·Σ2` is similar to the symmetric positive semi-definite `M = Σ1^{1/2}·Σ2·Σ1^{1/2}`, so the trace is
//! `Σ sqrt(λ_i)` over the eigenvalues of `M` (those within rounding of 0 taken as 0); `Σ1^{1/2}` and the eigenvalues of `M` both come
//! from a cyclic Jacobi eigen-decomposition of a symmetric matrix ([`symmetric_eigen`]), which is
//! accurate to a few ulps of the largest eigenvalue and fast enough at 128×128 (milliseconds).

use anyhow::{Result, ensure};

/// Mean and covariance of a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    /// Vector length.
    pub dim: usize,
    /// Number of vectors summarised.
    pub count: usize,
    pub mean: Vec<f64>,
    /// `dim × dim`, row-major, symmetric: the unbiased covariance (`1 / (N − 1)`, as `numpy.cov`).
    pub cov: Vec<f64>,
}

impl FeatureStats {
    /// Statistics of `rows` (`count × dim` values, row-major); needs at least two rows.
    pub fn from_rows(rows: &[f32], dim: usize) -> Result<FeatureStats> {
        ensure!(dim > 0, "feature statistics: the feature width is 0");
        ensure!(
            rows.len().is_multiple_of(dim),
            "feature statistics: {} values are not rows of {dim}",
            rows.len()
        );
        let n = rows.len() / dim;
        FeatureStats::weighted(rows, dim, &vec![1.0; n])
    }

    /// Statistics of `rows` with a non-negative weight per row (e.g. to give a real set the class mix of a
    /// generated one): the weighted mean and the unbiased weighted covariance with reliability weights,
    /// `Σ w_i (x_i − μ)(x_i − μ)ᵀ / (1 − Σ w_i²)` for weights normalised to sum 1. With equal weights this
    /// is exactly [`FeatureStats::from_rows`]. `count` is the number of rows with a positive weight.
    pub fn weighted(rows: &[f32], dim: usize, weights: &[f64]) -> Result<FeatureStats> {
        ensure!(dim > 0, "feature statistics: the feature width is 0");
        ensure!(
            rows.len() == weights.len() * dim,
            "feature statistics: {} values for {} weighted rows of {dim}",
            rows.len(),
            weights.len()
        );
        ensure!(
            weights.iter().all(|w| w.is_finite() && *w >= 0.0),
            "feature statistics: weights must be finite and non-negative"
        );
        let count = weights.iter().filter(|w| **w > 0.0).count();
        ensure!(
            count >= 2,
            "feature statistics need at least 2 feature vectors, got {count}"
        );
        let total: f64 = weights.iter().sum();
        let w: Vec<f64> = weights.iter().map(|x| x / total).collect();
        ensure!(
            rows.iter().all(|v| v.is_finite()),
            "feature statistics: the features contain NaN or infinity"
        );
        let mut mean = vec![0.0f64; dim];
        for (row, wi) in rows.chunks_exact(dim).zip(&w) {
            for (m, x) in mean.iter_mut().zip(row) {
                *m += wi * *x as f64;
            }
        }
        let mut cov = vec![0.0f64; dim * dim];
        let mut centred = vec![0.0f64; dim];
        for (row, wi) in rows.chunks_exact(dim).zip(&w) {
            if *wi == 0.0 {
                continue;
            }
            for ((c, x), m) in centred.iter_mut().zip(row).zip(&mean) {
                *c = *x as f64 - m;
            }
            for i in 0..dim {
                let a = wi * centred[i];
                let out = &mut cov[i * dim..i * dim + i + 1];
                for (o, c) in out.iter_mut().zip(&centred[..=i]) {
                    *o += a * c;
                }
            }
        }
        let sum_sq: f64 = w.iter().map(|x| x * x).sum();
        let norm = 1.0 / (1.0 - sum_sq);
        for i in 0..dim {
            for j in 0..=i {
                let v = cov[i * dim + j] * norm;
                cov[i * dim + j] = v;
                cov[j * dim + i] = v;
            }
        }
        Ok(FeatureStats { dim, count, mean, cov })
    }
}

/// Eigenvalues (ascending) and eigenvectors of a symmetric `n × n` matrix `a` (row-major; only
/// symmetric input is meaningful, the lower triangle is mirrored from the upper one on entry), by the
/// cyclic Jacobi method. Column `k` of the returned `n × n` matrix (row-major) is the unit eigenvector of
/// eigenvalue `k`.
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    ensure!(
        a.len() == n * n,
        "symmetric_eigen: {} values for a {n}×{n} matrix",
        a.len()
    );
    ensure!(
        a.iter().all(|v| v.is_finite()),
        "symmetric_eigen: the matrix contains NaN or infinity"
    );
    let mut m = a.to_vec();
    for i in 0..n {
        for j in 0..i {
            m[i * n + j] = m[j * n + i];
        }
    }
    let mut v = vec![0.0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = m.iter().map(|x| x * x).sum::<f64>().sqrt();
    if scale > 0.0 {
        for _sweep in 0..100 {
            let off: f64 = (0..n)
                .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
                .map(|(i, j)| m[i * n + j] * m[i * n + j])
                .sum::<f64>()
                .sqrt();
            if off <= 1e-15 * scale {
                break;
            }
            for p in 0..n {
                for q in p + 1..n {
                    let apq = m[p * n + q];
                    if apq == 0.0 {
                        continue;
                    }
                    let (app, aqq) = (m[p * n + p], m[q * n + q]);
                    // tan of the rotation angle that zeroes (p, q) (Numerical Recipes' stable form).
                    let theta = (aqq - app) / (2.0 * apq);
                    let t = if theta.abs() > 1e150 {
                        0.5 / theta
                    } else {
                        theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                    };
                    let c = 1.0 / (t * t + 1.0).sqrt();
                    let s = t * c;
                    // A ← Jᵀ A J on rows/columns p and q.
                    for k in 0..n {
                        let (akp, akq) = (m[k * n + p], m[k * n + q]);
                        m[k * n + p] = c * akp - s * akq;
                        m[k * n + q] = s * akp + c * akq;
                    }
                    for k in 0..n {
                        let (apk, aqk) = (m[p * n + k], m[q * n + k]);
                        m[p * n + k] = c * apk - s * aqk;
                        m[q * n + k] = s * apk + c * aqk;
                    }
                    m[p * n + q] = 0.0;
                    m[q * n + p] = 0.0;
                    for k in 0..n {
                        let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                        v[k * n + p] = c * vkp - s * vkq;
                        v[k * n + q] = s * vkp + c * vkq;
                    }
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[i * n + i].total_cmp(&m[j * n + j]));
    let values: Vec<f64> = order.iter().map(|&i| m[i * n + i]).collect();
    let mut vectors = vec![0.0f64; n * n];
    for (k, &i) in order.iter().enumerate() {
        for r in 0..n {
            vectors[r * n + k] = v[r * n + i];
        }
    }
    Ok((values, vectors))
}

/// Square roots of the eigenvalues of a positive semi-definite matrix, with every eigenvalue within
/// rounding of 0 (`λ ≤ n·ε·max|λ|`, negative ones included) taken as exactly 0.
///
/// A covariance of fewer vectors than dimensions is singular: its null-space eigenvalues come out of any
/// eigen-solver as rounding noise of order `ε·λ_max`, and their square roots (`~1e-8·sqrt(λ_max)` each)
/// would add up to a visible error over a hundred dimensions.
fn psd_roots(values: &[f64]) -> Vec<f64> {
    let top = values.iter().fold(0.0f64, |m, l| m.max(l.abs()));
    let tol = values.len() as f64 * f64::EPSILON * top;
    values.iter().map(|&l| if l > tol { l.sqrt() } else { 0.0 }).collect()
}

/// The symmetric square root `V·diag(sqrt(λ))·Vᵀ` of a symmetric positive semi-definite matrix
/// (eigenvalues within rounding of 0, including negative ones, count as 0).
pub fn psd_sqrt(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let (values, vectors) = symmetric_eigen(a, n)?;
    let roots = psd_roots(&values);
    let mut out = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..n).map(|k| vectors[i * n + k] * roots[k] * vectors[j * n + k]).sum();
            out[i * n + j] = s;
            out[j * n + i] = s;
        }
    }
    Ok(out)
}

/// Row-major `n × n` product.
fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            if aik == 0.0 {
                continue;
            }
            let (row, brow) = (&mut out[i * n..(i + 1) * n], &b[k * n..(k + 1) * n]);
            for (o, x) in row.iter_mut().zip(brow) {
                *o += aik * x;
            }
        }
    }
    out
}

/// `Tr((Σ1·Σ2)^{1/2})` for symmetric positive semi-definite `Σ1`, `Σ2` (`n × n`, row-major).
pub fn trace_sqrt_product(s1: &[f64], s2: &[f64], n: usize) -> Result<f64> {
    let r = psd_sqrt(s1, n)?;
    let m = matmul(&matmul(&r, s2, n), &r, n);
    let (values, _) = symmetric_eigen(&m, n)?;
    Ok(psd_roots(&values).iter().sum())
}

/// The parts of a Fréchet distance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrechetDistance {
    /// `|μ1 − μ2|² + Tr(Σ1) + Tr(Σ2) − 2·Tr((Σ1·Σ2)^{1/2})`, clamped at 0 (rounding can leave −1e-12).
    pub distance: f64,
    /// The mean term `|μ1 − μ2|²`.
    pub mean_term: f64,
    /// The covariance term `Tr(Σ1 + Σ2 − 2(Σ1Σ2)^{1/2})`.
    pub cov_term: f64,
}

/// The Fréchet distance between two feature distributions summarised by their statistics.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<FrechetDistance> {
    ensure!(
        a.dim == b.dim,
        "Fréchet distance between features of different widths ({} and {})",
        a.dim,
        b.dim
    );
    let n = a.dim;
    let mean_term: f64 = a.mean.iter().zip(&b.mean).map(|(x, y)| (x - y) * (x - y)).sum();
    let trace = |c: &[f64]| -> f64 { (0..n).map(|i| c[i * n + i]).sum() };
    let cross = trace_sqrt_product(&a.cov, &b.cov, n)?;
    let cov_term = trace(&a.cov) + trace(&b.cov) - 2.0 * cross;
    Ok(FrechetDistance {
        distance: (mean_term + cov_term).max(0.0),
        mean_term,
        cov_term,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_diagonalises_a_known_matrix() {
        // Eigenvalues of [[2, 1], [1, 2]] are 1 and 3.
        let (values, vectors) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2).unwrap();
        assert!(
            (values[0] - 1.0).abs() < 1e-14 && (values[1] - 3.0).abs() < 1e-14,
            "{values:?}"
        );
        let s = std::f64::consts::FRAC_1_SQRT_2;
        assert!((vectors[1].abs() - s).abs() < 1e-14 && (vectors[3].abs() - s).abs() < 1e-14);
    }

    #[test]
    fn psd_sqrt_squares_back() {
        let a = [4.0, 2.0, 0.0, 2.0, 3.0, 1.0, 0.0, 1.0, 2.0];
        let r = psd_sqrt(&a, 3).unwrap();
        let back = matmul(&r, &r, 3);
        for (x, y) in back.iter().zip(&a) {
            assert!((x - y).abs() < 1e-12, "{back:?}");
        }
    }
}
