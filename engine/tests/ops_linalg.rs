//! Integration tests of the matrix-product ops on the CPU: `matmul` (2-d, batched, broadcast batch
//! dims, strided operands), `linear`, `conv2d` and `upsample_nearest2x`, each against a naive f64
//! reference written with plain loops, plus the error cases.
//!
//! Tolerances: an f32 GEMM over K terms is checked element-wise against
//! `|got − want| ≤ GEMM_TOL · (1 + Σ_p |a_ip·b_pj|)` (GEMM_TOL = 1e-5), i.e. a bound relative to the
//! magnitude of the terms summed, which stays meaningful where the exact result cancels to ~0. bf16
//! results additionally allow the final rounding to bf16 (relative 2⁻⁸).

mod common;

use common::*;
use nvg_engine::{DType, Device, Padding, Tensor};

/// Relative tolerance of an f32 dot product against the sum of the absolute values of its terms.
const GEMM_TOL: f64 = 1e-5;
/// Relative error of a value rounded to bf16 (2⁻⁸, twice the round-to-nearest bound).
const BF16_RTOL: f64 = 1.0 / 256.0;

/// A naive result: the exact (f64) values and, per element, Σ|terms| for the tolerance bound.
struct Reference {
    dims: Vec<usize>,
    want: Vec<f64>,
    mag: Vec<f64>,
}

/// Checks `got` against `r`: dims equal and `|got − want| ≤ tol·(1 + mag) + out_rtol·|want|`.
#[track_caller]
fn check(got: &Tensor, r: &Reference, tol: f64, out_rtol: f64, what: &str) {
    assert_eq!(got.dims(), &r.dims[..], "{what}: output shape");
    let g = vals(got);
    assert_eq!(g.len(), r.want.len(), "{what}: length");
    for (i, ((&g, &w), &m)) in g.iter().zip(&r.want).zip(&r.mag).enumerate() {
        let bound = tol * (1.0 + m) + out_rtol * w.abs();
        assert!(
            (g as f64 - w).abs() <= bound,
            "{what}: element {i} (index {:?}): got {g}, want {w} (bound {bound:e})",
            unravel(i, &r.dims)
        );
    }
}

/// Position in `own` (a right-aligned, possibly size-1-broadcast batch shape) of batch index `idx`.
fn batch_index(idx: &[usize], own: &[usize]) -> usize {
    let lead = idx.len() - own.len();
    let mine: Vec<usize> = own
        .iter()
        .enumerate()
        .map(|(i, &d)| if d == 1 { 0 } else { idx[lead + i] })
        .collect();
    ravel(&mine, own)
}

/// NumPy broadcast of two batch shapes (test-side implementation).
fn broadcast(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
            let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
            assert!(da == db || da == 1 || db == 1, "test bug: {a:?} vs {b:?}");
            da.max(db)
        })
        .collect()
}

/// `a · b` by the definition, with NumPy batch broadcasting. Reads the operands' logical values.
fn naive_matmul(a: &Tensor, b: &Tensor) -> Reference {
    let (ad, bd) = (a.dims(), b.dims());
    let (ra, rb) = (ad.len(), bd.len());
    let (m, k, n) = (ad[ra - 2], ad[ra - 1], bd[rb - 1]);
    assert_eq!(k, bd[rb - 2]);
    let (av, bv) = (vals(a), vals(b));
    let (abatch, bbatch) = (&ad[..ra - 2], &bd[..rb - 2]);
    let batch = broadcast(abatch, bbatch);
    let nb: usize = batch.iter().product();
    let mut want = vec![0.0f64; nb * m * n];
    let mut mag = vec![0.0f64; nb * m * n];
    for bi in 0..nb {
        let idx = unravel(bi, &batch);
        let a0 = batch_index(&idx, abatch) * m * k;
        let b0 = batch_index(&idx, bbatch) * k * n;
        let c0 = bi * m * n;
        for i in 0..m {
            let (w, g) = (
                &mut want[c0 + i * n..c0 + (i + 1) * n],
                &mut mag[c0 + i * n..c0 + (i + 1) * n],
            );
            for p in 0..k {
                let x = av[a0 + i * k + p] as f64;
                let row = &bv[b0 + p * n..b0 + (p + 1) * n];
                for j in 0..n {
                    let t = x * row[j] as f64;
                    w[j] += t;
                    g[j] += t.abs();
                }
            }
        }
    }
    let mut dims = batch;
    dims.extend_from_slice(&[m, n]);
    Reference { dims, want, mag }
}

/// `x · Wᵀ + b` by the definition: x `[..., in]`, weight `[out, in]`.
fn naive_linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Reference {
    let (out_f, in_f) = (w.dims()[0], w.dims()[1]);
    let xv = vals(x);
    let wv = vals(w);
    let bv = bias.map(vals);
    let rows: usize = x.dims()[..x.rank() - 1].iter().product();
    let mut want = vec![0.0f64; rows * out_f];
    let mut mag = vec![0.0f64; rows * out_f];
    for r in 0..rows {
        for o in 0..out_f {
            let (mut s, mut a) = (0.0f64, 0.0f64);
            if let Some(bv) = &bv {
                s = bv[o] as f64;
                a = s.abs();
            }
            for p in 0..in_f {
                let t = xv[r * in_f + p] as f64 * wv[o * in_f + p] as f64;
                s += t;
                a += t.abs();
            }
            want[r * out_f + o] = s;
            mag[r * out_f + o] = a;
        }
    }
    let mut dims = x.dims().to_vec();
    *dims.last_mut().unwrap() = out_f;
    Reference { dims, want, mag }
}

/// Convolution by the definition: zero padding, `stride`, NCHW.
fn naive_conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, pad: Padding) -> Reference {
    let (xd, wd) = (x.dims(), w.dims());
    let (b, c, h, wi) = (xd[0], xd[1], xd[2], xd[3]);
    let (o, kh, kw) = (wd[0], wd[2], wd[3]);
    let oh = (h + pad.top + pad.bottom - kh) / stride + 1;
    let ow = (wi + pad.left + pad.right - kw) / stride + 1;
    let (xv, wv) = (vals(x), vals(w));
    let bv = bias.map(vals);
    let mut want = vec![0.0f64; b * o * oh * ow];
    let mut mag = vec![0.0f64; b * o * oh * ow];
    for bi in 0..b {
        for oc in 0..o {
            for y in 0..oh {
                for xo in 0..ow {
                    let (mut s, mut a) = match &bv {
                        Some(bv) => (bv[oc] as f64, (bv[oc] as f64).abs()),
                        None => (0.0, 0.0),
                    };
                    for ci in 0..c {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (y * stride + ky) as isize - pad.top as isize;
                                let ix = (xo * stride + kx) as isize - pad.left as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wi as isize {
                                    continue;
                                }
                                let xval = xv[((bi * c + ci) * h + iy as usize) * wi + ix as usize] as f64;
                                let t = xval * wv[((oc * c + ci) * kh + ky) * kw + kx] as f64;
                                s += t;
                                a += t.abs();
                            }
                        }
                    }
                    let at = ((bi * o + oc) * oh + y) * ow + xo;
                    want[at] = s;
                    mag[at] = a;
                }
            }
        }
    }
    Reference {
        dims: vec![b, o, oh, ow],
        want,
        mag,
    }
}

/// `rand(dims, seed)`, then stored with layout `t`: false = packed, true = last two dims transposed.
fn operand(dims: &[usize], seed: u64, transposed: bool) -> Tensor {
    if transposed {
        rand_strided(dims, seed)
    } else {
        rand(dims, seed)
    }
}

// ---------------------------------------------------------------------------------------------------
// matmul
// ---------------------------------------------------------------------------------------------------

#[test]
fn matmul_2d_matches_naive_on_odd_shapes_and_all_transpose_layouts() {
    // (m, n, k): tiny, odd, K crossing the 512-deep block, tall-thin, wide, and every m of the
    // unpacked few-rows path (m ≤ 6) next to the first packed size (7).
    let shapes = [
        (1, 1, 1),
        (5, 7, 3),
        (13, 33, 257),
        (100, 3, 600),
        (3, 100, 40),
        (37, 65, 300),
        (1, 70, 530),
        (2, 17, 9),
        (6, 33, 64),
        (7, 33, 64),
        (12, 32, 16),
        (25, 49, 1),
    ];
    for (s, &(m, n, k)) in shapes.iter().enumerate() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = operand(&[m, k], 10 + s as u64, ta);
            let b = operand(&[k, n], 50 + s as u64, tb);
            let got = a.matmul(&b).unwrap();
            assert_eq!(got.dtype(), DType::F32);
            check(
                &got,
                &naive_matmul(&a, &b),
                GEMM_TOL,
                0.0,
                &format!("{m}x{k}·{k}x{n} (a transposed {ta}, b transposed {tb})"),
            );
        }
    }
}

#[test]
fn matmul_batched_matches_naive_per_matrix() {
    for (batch, m, k, n) in [(vec![4], 5, 7, 3), (vec![2, 3], 13, 65, 9), (vec![3], 70, 40, 33)] {
        let mut ad = batch.clone();
        ad.extend([m, k]);
        let mut bd = batch.clone();
        bd.extend([k, n]);
        for (ta, tb) in [(false, false), (true, true)] {
            let a = operand(&ad, 3, ta);
            let b = operand(&bd, 4, tb);
            check(
                &a.matmul(&b).unwrap(),
                &naive_matmul(&a, &b),
                GEMM_TOL,
                0.0,
                &format!("{ad:?}·{bd:?} (transposed {ta}/{tb})"),
            );
        }
    }
}

#[test]
fn matmul_broadcasts_batch_dims_numpy_style() {
    let cases: [(&[usize], &[usize]); 6] = [
        (&[2, 1, 5, 7], &[3, 7, 4]),      // → [2, 3, 5, 4]
        (&[5, 7], &[2, 3, 7, 4]),         // 2-d lhs shared by every batch
        (&[2, 3, 5, 7], &[7, 4]),         // 2-d rhs (a weight) shared by every batch
        (&[1, 3, 8, 16], &[2, 1, 16, 9]), // both sides broadcast
        (&[4, 1, 1, 3], &[1, 5, 3, 1]),   // 1×1 outputs
        (&[3, 1, 40, 20], &[1, 2, 20, 30]),
    ];
    for (ad, bd) in cases {
        let a = rand(ad, 21);
        let b = rand(bd, 22);
        let want = naive_matmul(&a, &b);
        let got = a.matmul(&b).unwrap();
        check(&got, &want, GEMM_TOL, 0.0, &format!("{ad:?}·{bd:?}"));
    }
    // The shape named in the brief, spelled out.
    let got = rand(&[2, 1, 6, 5], 1).matmul(&rand(&[3, 5, 7], 2)).unwrap();
    assert_eq!(got.dims(), &[2, 3, 6, 7]);
}

#[test]
fn matmul_reads_permuted_narrowed_and_broadcast_operands() {
    // Heads of a fused [B, N, 3, H, D] tensor: q·kᵀ per (batch, head), all views.
    let (b, n, h, d) = (2, 19, 3, 24);
    let fused = rand(&[b, n, 3, h, d], 7);
    let q = fused
        .narrow(2, 0, 1)
        .unwrap()
        .squeeze(2)
        .unwrap()
        .permute(&[0, 2, 1, 3])
        .unwrap();
    let k = fused
        .narrow(2, 1, 1)
        .unwrap()
        .squeeze(2)
        .unwrap()
        .permute(&[0, 2, 3, 1])
        .unwrap();
    assert!(!q.is_contiguous() && !k.is_contiguous());
    assert_eq!(k.dims(), &[b, h, d, n]);
    check(
        &q.matmul(&k).unwrap(),
        &naive_matmul(&q, &k),
        GEMM_TOL,
        0.0,
        "fused q·kᵀ",
    );

    // Narrowed last dim (rows longer than the view) and narrowed rows, for few and many rows.
    for m in [3, 41] {
        let a = rand(&[m + 4, 90], 8).narrow(1, 5, 70).unwrap().narrow(0, 2, m).unwrap();
        let bm = rand(&[70, 50], 9).narrow(1, 10, 33).unwrap();
        check(
            &a.matmul(&bm).unwrap(),
            &naive_matmul(&a, &bm),
            GEMM_TOL,
            0.0,
            &format!("narrowed m={m}"),
        );
    }

    // Neither stride is 1 (every other element of a [M, K, 2] buffer), on both sides.
    for m in [4, 30] {
        let a = rand(&[m, 45, 2], 11).narrow(2, 1, 1).unwrap().squeeze(2).unwrap();
        let bm = rand(&[45, 2, 26], 12).narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
        let bm = bm
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap()
            .transpose(0, 1)
            .unwrap();
        let bs = rand(&[45, 26, 3], 13).narrow(2, 2, 1).unwrap().squeeze(2).unwrap();
        assert_eq!(a.layout().strides(), &[90, 2]);
        assert_eq!(bs.layout().strides(), &[78, 3]);
        check(
            &a.matmul(&bm).unwrap(),
            &naive_matmul(&a, &bm),
            GEMM_TOL,
            0.0,
            &format!("stride-2 a, m={m}"),
        );
        check(
            &a.matmul(&bs).unwrap(),
            &naive_matmul(&a, &bs),
            GEMM_TOL,
            0.0,
            &format!("stride-2 a and b, m={m}"),
        );
    }

    // Stride-0 (broadcast) rows of a and columns of b.
    for m in [2, 20] {
        let a = rand(&[1, 31], 14).broadcast_as(&[m, 31]).unwrap();
        let bm = rand(&[31, 1], 15).broadcast_as(&[31, 18]).unwrap();
        check(
            &a.matmul(&bm).unwrap(),
            &naive_matmul(&a, &bm),
            GEMM_TOL,
            0.0,
            &format!("broadcast m={m}"),
        );
        let bfull = rand(&[31, 18], 16);
        check(
            &a.matmul(&bfull).unwrap(),
            &naive_matmul(&a, &bfull),
            GEMM_TOL,
            0.0,
            &format!("broadcast a, m={m}"),
        );
    }
}

#[test]
fn matmul_large_514x1024_by_1024x300_matches_naive() {
    let a = rand(&[514, 1024], 31);
    let b = rand(&[1024, 300], 32);
    check(
        &a.matmul(&b).unwrap(),
        &naive_matmul(&a, &b),
        GEMM_TOL,
        0.0,
        "514x1024·1024x300",
    );
    // The same product with a stored as its transpose (the weight-gradient layout).
    let at = rand_strided(&[514, 1024], 31);
    let got = at.matmul(&b).unwrap();
    check(
        &got,
        &naive_matmul(&a, &b),
        GEMM_TOL,
        0.0,
        "transposed 514x1024·1024x300",
    );
}

#[test]
fn matmul_of_bf16_operands_returns_bf16_close_to_naive() {
    let a = rand(&[2, 37, 70], 41).to_dtype(DType::BF16).unwrap();
    let b = rand_strided(&[70, 29], 42).to_dtype(DType::BF16).unwrap();
    let got = a.matmul(&b).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    // The reference uses the bf16 inputs' exact values; the output is rounded to bf16 once.
    check(&got, &naive_matmul(&a, &b), GEMM_TOL, BF16_RTOL, "bf16 matmul");
}

#[test]
fn matmul_with_empty_inner_dim_is_zeros() {
    let a = Tensor::zeros(&[3, 0], DType::F32, Device::Cpu).unwrap();
    let b = Tensor::zeros(&[0, 4], DType::F32, Device::Cpu).unwrap();
    let got = a.matmul(&b).unwrap();
    assert_eq!(got.dims(), &[3, 4]);
    assert_eq!(vals(&got), vec![0.0; 12]);
}

#[test]
fn matmul_inner_dimension_mismatch_is_an_error_naming_both_shapes() {
    let m = err_msg(rand(&[3, 2], 1).matmul(&rand(&[3, 2], 2)));
    assert!(m.contains("matmul") && m.matches("[3, 2]").count() == 2, "{m}");
    let m = err_msg(rand(&[4, 5, 6], 1).matmul(&rand(&[4, 7, 2], 2)));
    assert!(
        m.contains("matmul") && m.contains("[4, 5, 6]") && m.contains("[4, 7, 2]"),
        "{m}"
    );
}

#[test]
fn matmul_non_broadcasting_batch_dims_is_an_error_naming_both_shapes() {
    let m = err_msg(rand(&[2, 3, 4], 1).matmul(&rand(&[3, 4, 5], 2)));
    assert!(m.contains("matmul") && m.contains("broadcast"), "{m}");
    // The operands' shapes, not only their batch parts ("[2] and [3]"), so the user can find them.
    assert!(m.contains("[2, 3, 4]") && m.contains("[3, 4, 5]"), "{m}");
}

#[test]
fn matmul_rank1_operands_are_an_error_naming_the_shapes() {
    let m = err_msg(rand(&[3], 1).matmul(&rand(&[3, 2], 2)));
    assert!(m.contains("matmul") && m.contains("[3]") && m.contains("[3, 2]"), "{m}");
    let m = err_msg(rand(&[2, 3], 1).matmul(&rand(&[3], 2)));
    assert!(m.contains("matmul") && m.contains("[2, 3]") && m.contains("[3]"), "{m}");
}

#[test]
fn matmul_of_integer_or_mixed_dtypes_is_a_dtype_error() {
    let a = Tensor::from_vec((0..6i64).collect::<Vec<_>>(), &[2, 3]).unwrap();
    let b = Tensor::from_vec((0..6i64).collect::<Vec<_>>(), &[3, 2]).unwrap();
    let m = err_msg(a.matmul(&b));
    assert!(m.contains("matmul") && m.contains("i64"), "{m}");
    let m = err_msg(rand(&[2, 3], 1).matmul(&b));
    assert!(m.contains("matmul") && m.contains("i64"), "{m}");
    let m = err_msg(rand(&[2, 3], 1).matmul(&rand(&[3, 2], 2).to_dtype(DType::BF16).unwrap()));
    assert!(m.contains("matmul") && m.contains("bf16") && m.contains("f32"), "{m}");
}

// ---------------------------------------------------------------------------------------------------
// linear
// ---------------------------------------------------------------------------------------------------

#[test]
fn linear_matches_naive_for_few_and_many_rows_with_and_without_bias() {
    // Rows 1..=6 take the unpacked few-rows path, more rows the packed GEMM.
    for rows in [1, 2, 3, 4, 5, 6, 7, 48, 300] {
        for (in_f, out_f) in [(37, 5), (64, 130), (300, 33)] {
            let x = rand(&[rows, in_f], rows as u64);
            let w = rand(&[out_f, in_f], 100 + in_f as u64);
            let b = rand(&[out_f], 200 + out_f as u64);
            let what = format!("{rows} rows, {in_f} → {out_f}");
            let got = x.linear(&w, None).unwrap();
            check(
                &got,
                &naive_linear(&x, &w, None),
                GEMM_TOL,
                0.0,
                &format!("{what}, no bias"),
            );
            let got = x.linear(&w, Some(&b)).unwrap();
            check(
                &got,
                &naive_linear(&x, &w, Some(&b)),
                GEMM_TOL,
                0.0,
                &format!("{what}, bias"),
            );
        }
    }
}

#[test]
fn linear_applies_over_several_leading_dims() {
    for lead in [vec![1, 1, 1], vec![2, 3], vec![2, 3, 5], vec![4, 1, 25]] {
        let mut dims = lead.clone();
        dims.push(48);
        let x = rand(&dims, 5);
        let w = rand(&[20, 48], 6);
        let b = rand(&[20], 7);
        let got = x.linear(&w, Some(&b)).unwrap();
        let mut want_dims = lead.clone();
        want_dims.push(20);
        assert_eq!(got.dims(), &want_dims[..]);
        check(
            &got,
            &naive_linear(&x, &w, Some(&b)),
            GEMM_TOL,
            0.0,
            &format!("leading {lead:?}"),
        );
    }
}

#[test]
fn linear_reads_strided_inputs() {
    let w = rand(&[19, 40], 9);
    let b = rand(&[19], 10);
    for rows in [3, 5, 60] {
        // A narrow of the last dim: rows longer than the features.
        let x = rand(&[rows, 2, 55], 11).narrow(2, 6, 40).unwrap();
        assert!(!x.is_contiguous());
        check(
            &x.linear(&w, Some(&b)).unwrap(),
            &naive_linear(&x, &w, Some(&b)),
            GEMM_TOL,
            0.0,
            &format!("narrowed, {rows}x2 rows"),
        );
        // Stored transposed: features are the strided dim.
        let xt = rand_strided(&[rows, 40], 12);
        check(
            &xt.linear(&w, None).unwrap(),
            &naive_linear(&xt, &w, None),
            GEMM_TOL,
            0.0,
            &format!("transposed, {rows} rows"),
        );
        // Leading dims that do not merge into one stride (a permute of them).
        let xp = rand(&[rows, 3, 40], 13).permute(&[1, 0, 2]).unwrap();
        check(
            &xp.linear(&w, Some(&b)).unwrap(),
            &naive_linear(&xp, &w, Some(&b)),
            GEMM_TOL,
            0.0,
            &format!("permuted, 3x{rows} rows"),
        );
        // A head of a fused tensor: leading dims merge (stride 3·40) but rows are not packed.
        let xh = rand(&[rows, 3, 40], 14).narrow(1, 2, 1).unwrap();
        check(
            &xh.linear(&w, None).unwrap(),
            &naive_linear(&xh, &w, None),
            GEMM_TOL,
            0.0,
            &format!("fused head, {rows} rows"),
        );
    }
}

#[test]
fn linear_reads_strided_weights() {
    let x_few = rand(&[4, 33], 1);
    let x_many = rand(&[50, 33], 2);
    let ws = [
        ("transposed", rand_strided(&[21, 33], 3)),
        ("narrowed", rand(&[21, 40], 4).narrow(1, 7, 33).unwrap()),
        (
            "stride 2",
            rand(&[21, 33, 2], 5).narrow(2, 1, 1).unwrap().squeeze(2).unwrap(),
        ),
    ];
    for (name, w) in &ws {
        for x in [&x_few, &x_many] {
            let got = x.linear(w, None).unwrap();
            check(
                &got,
                &naive_linear(x, w, None),
                GEMM_TOL,
                0.0,
                &format!("{name} weight, {} rows", x.dims()[0]),
            );
        }
    }
}

#[test]
fn linear_of_bf16_input_returns_bf16() {
    let x = rand(&[3, 9, 64], 1).to_dtype(DType::BF16).unwrap();
    let w = rand(&[16, 64], 2).to_dtype(DType::BF16).unwrap();
    let b = rand(&[16], 3).to_dtype(DType::BF16).unwrap();
    let got = x.linear(&w, Some(&b)).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    check(
        &got,
        &naive_linear(&x, &w, Some(&b)),
        GEMM_TOL,
        BF16_RTOL,
        "bf16 linear",
    );
}

#[test]
fn linear_with_zero_in_features_returns_the_bias_per_row() {
    let x = Tensor::zeros(&[5, 0], DType::F32, Device::Cpu).unwrap();
    let w = Tensor::zeros(&[3, 0], DType::F32, Device::Cpu).unwrap();
    let b = rand(&[3], 1);
    let got = x.linear(&w, Some(&b)).unwrap();
    assert_eq!(got.dims(), &[5, 3]);
    let got = got.to_f32_vec().unwrap();
    assert_eq!(got, vals(&b).repeat(5));
}

#[test]
fn linear_with_zero_out_features_and_bias_is_empty() {
    let x = rand(&[4, 6], 1);
    let w = Tensor::zeros(&[0, 6], DType::F32, Device::Cpu).unwrap();
    let b = Tensor::zeros(&[0], DType::F32, Device::Cpu).unwrap();
    let got = x.linear(&w, Some(&b)).unwrap();
    assert_eq!(got.dims(), &[4, 0]);
}

#[test]
fn linear_wrong_in_features_is_an_error_naming_both_shapes() {
    let m = err_msg(rand(&[4, 5], 1).linear(&rand(&[3, 6], 2), None));
    assert!(
        m.contains("linear") && m.contains("[4, 5]") && m.contains("[3, 6]"),
        "{m}"
    );
    let m = err_msg(rand(&[2, 7, 5], 1).linear(&rand(&[5, 7], 2), None));
    assert!(
        m.contains("linear") && m.contains("[2, 7, 5]") && m.contains("[5, 7]"),
        "{m}"
    );
}

#[test]
fn linear_wrong_bias_length_is_an_error_naming_both_shapes() {
    let m = err_msg(rand(&[4, 5], 1).linear(&rand(&[3, 5], 2), Some(&rand(&[4], 3))));
    assert!(
        m.contains("linear") && m.contains("bias") && m.contains("[3]") && m.contains("[4]"),
        "{m}"
    );
    let m = err_msg(rand(&[4, 5], 1).linear(&rand(&[3, 5], 2), Some(&rand(&[1, 3], 3))));
    assert!(m.contains("linear") && m.contains("[1, 3]"), "{m}");
}

#[test]
fn linear_with_non_2d_weight_or_integer_input_is_an_error() {
    let m = err_msg(rand(&[4, 5], 1).linear(&rand(&[2, 3, 5], 2), None));
    assert!(m.contains("linear") && m.contains("[2, 3, 5]"), "{m}");
    let xi = Tensor::from_vec(vec![1i64; 10], &[2, 5]).unwrap();
    let m = err_msg(xi.linear(&rand(&[3, 5], 2), None));
    assert!(m.contains("linear") && m.contains("i64"), "{m}");
}

// ---------------------------------------------------------------------------------------------------
// conv2d
// ---------------------------------------------------------------------------------------------------

struct ConvCase {
    b: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: Padding,
    bias: bool,
}

fn pad(top: usize, bottom: usize, left: usize, right: usize) -> Padding {
    Padding {
        top,
        bottom,
        left,
        right,
    }
}

#[test]
fn conv2d_matches_naive_over_kernels_strides_and_paddings() {
    #[rustfmt::skip]
    let cases = [
        ConvCase { b: 1, c: 3, o: 5, h: 7, w: 9, kh: 1, kw: 1, stride: 1, pad: Padding::default(), bias: false },
        ConvCase { b: 3, c: 9, o: 17, h: 5, w: 6, kh: 1, kw: 1, stride: 2, pad: Padding::default(), bias: true },
        ConvCase { b: 2, c: 3, o: 5, h: 9, w: 7, kh: 3, kw: 3, stride: 1, pad: Padding::uniform(1), bias: true },
        ConvCase { b: 2, c: 5, o: 10, h: 11, w: 13, kh: 3, kw: 3, stride: 2, pad: pad(0, 1, 0, 1), bias: true },
        ConvCase { b: 1, c: 12, o: 7, h: 8, w: 8, kh: 3, kw: 3, stride: 2, pad: pad(0, 1, 0, 1), bias: false },
        ConvCase { b: 2, c: 4, o: 3, h: 6, w: 5, kh: 3, kw: 3, stride: 1, pad: pad(2, 0, 1, 3), bias: true },
        ConvCase { b: 1, c: 7, o: 6, h: 10, w: 9, kh: 3, kw: 3, stride: 2, pad: Padding::default(), bias: false },
        ConvCase { b: 2, c: 6, o: 9, h: 7, w: 11, kh: 3, kw: 2, stride: 2, pad: pad(1, 0, 0, 1), bias: true },
        ConvCase { b: 1, c: 1, o: 1, h: 3, w: 3, kh: 3, kw: 3, stride: 1, pad: Padding::default(), bias: true },
        ConvCase { b: 2, c: 16, o: 24, h: 17, w: 15, kh: 3, kw: 3, stride: 1, pad: Padding::uniform(1), bias: true },
        // Output rows of 1 and 2 pixels: one B panel spans many output rows.
        ConvCase { b: 1, c: 3, o: 4, h: 40, w: 3, kh: 3, kw: 3, stride: 1, pad: Padding::default(), bias: true },
        ConvCase { b: 2, c: 2, o: 5, h: 37, w: 2, kh: 3, kw: 2, stride: 1, pad: pad(1, 1, 1, 0), bias: false },
        // Large enough for the parallel GEMM path (O·OH·OW·C·9 ≫ 2¹⁸).
        ConvCase { b: 2, c: 30, o: 41, h: 25, w: 23, kh: 3, kw: 3, stride: 1, pad: Padding::uniform(1), bias: true },
        ConvCase { b: 1, c: 30, o: 41, h: 25, w: 23, kh: 3, kw: 3, stride: 2, pad: pad(0, 1, 0, 1), bias: false },
    ];
    for (i, cs) in cases.iter().enumerate() {
        let x = rand(&[cs.b, cs.c, cs.h, cs.w], 300 + i as u64);
        let w = rand(&[cs.o, cs.c, cs.kh, cs.kw], 400 + i as u64);
        let bias = cs.bias.then(|| rand(&[cs.o], 500 + i as u64));
        let got = x.conv2d(&w, bias.as_ref(), cs.stride, cs.pad).unwrap();
        let want = naive_conv2d(&x, &w, bias.as_ref(), cs.stride, cs.pad);
        let what = format!(
            "case {i}: x {:?}, w {:?}, stride {}, {:?}, bias {}",
            x.dims(),
            w.dims(),
            cs.stride,
            cs.pad,
            cs.bias
        );
        check(&got, &want, GEMM_TOL, 0.0, &what);
    }
}

#[test]
fn conv2d_output_size_follows_the_padded_formula() {
    // OH = (H + top + bottom − kh)/stride + 1: 8 + 0 + 1 − 3 = 6 → 6/2 + 1 = 4 (floor), 9 + 1 + 0 − 3 = 7 → 4.
    let x = rand(&[1, 2, 8, 9], 1);
    let w = rand(&[3, 2, 3, 3], 2);
    let got = x.conv2d(&w, None, 2, pad(0, 1, 1, 0)).unwrap();
    assert_eq!(got.dims(), &[1, 3, 4, 4]);
}

#[test]
fn conv2d_reads_strided_input_and_weight() {
    let x = rand_strided(&[2, 5, 9, 11], 1);
    let w = rand_strided(&[6, 5, 3, 3], 2);
    let b = rand(&[8], 3).narrow(0, 1, 6).unwrap();
    let got = x.conv2d(&w, Some(&b), 2, pad(1, 0, 0, 1)).unwrap();
    check(
        &got,
        &naive_conv2d(&x, &w, Some(&b), 2, pad(1, 0, 0, 1)),
        GEMM_TOL,
        0.0,
        "strided conv",
    );
    // Channels of an NHWC buffer viewed as NCHW.
    let xp = rand(&[2, 9, 11, 5], 4).permute(&[0, 3, 1, 2]).unwrap();
    let got = xp.conv2d(&w, None, 1, Padding::uniform(1)).unwrap();
    check(
        &got,
        &naive_conv2d(&xp, &w, None, 1, Padding::uniform(1)),
        GEMM_TOL,
        0.0,
        "NHWC-viewed conv",
    );
}

#[test]
fn conv2d_of_bf16_returns_bf16() {
    let x = rand(&[1, 4, 7, 6], 1).to_dtype(DType::BF16).unwrap();
    let w = rand(&[5, 4, 3, 3], 2).to_dtype(DType::BF16).unwrap();
    let b = rand(&[5], 3).to_dtype(DType::BF16).unwrap();
    let got = x.conv2d(&w, Some(&b), 1, Padding::uniform(1)).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    check(
        &got,
        &naive_conv2d(&x, &w, Some(&b), 1, Padding::uniform(1)),
        GEMM_TOL,
        BF16_RTOL,
        "bf16 conv",
    );
}

#[test]
fn conv2d_with_zero_output_channels_is_empty() {
    let w = Tensor::zeros(&[0, 2, 3, 3], DType::F32, Device::Cpu).unwrap();
    let got = rand(&[1, 2, 5, 5], 1).conv2d(&w, None, 1, Padding::uniform(1)).unwrap();
    assert_eq!(got.dims(), &[1, 0, 5, 5]);
}

#[test]
fn conv2d_channel_mismatch_is_an_error_naming_both_shapes() {
    let m = err_msg(rand(&[1, 3, 8, 8], 1).conv2d(&rand(&[4, 2, 3, 3], 2), None, 1, Padding::uniform(1)));
    assert!(
        m.contains("conv2d") && m.contains("[1, 3, 8, 8]") && m.contains("[4, 2, 3, 3]"),
        "{m}"
    );
}

#[test]
fn conv2d_kernel_larger_than_padded_input_is_an_error() {
    let m = err_msg(rand(&[1, 1, 2, 2], 1).conv2d(&rand(&[1, 1, 3, 3], 2), None, 1, Padding::default()));
    assert!(
        m.contains("conv2d") && m.contains("[1, 1, 2, 2]") && m.contains('3'),
        "{m}"
    );
    // Padding on one side only is not enough in the other dimension either.
    let m = err_msg(rand(&[1, 1, 5, 1], 1).conv2d(&rand(&[1, 1, 3, 3], 2), None, 1, pad(0, 0, 1, 0)));
    assert!(m.contains("conv2d") && m.contains("[1, 1, 5, 1]"), "{m}");
    // Exactly fitting is fine: 1 + 1 + 1 = 3.
    let ok = rand(&[1, 1, 5, 1], 1)
        .conv2d(&rand(&[1, 1, 3, 3], 2), None, 1, pad(0, 0, 1, 1))
        .unwrap();
    assert_eq!(ok.dims(), &[1, 1, 3, 1]);
}

#[test]
fn conv2d_stride_zero_is_an_error() {
    let m = err_msg(rand(&[1, 2, 4, 4], 1).conv2d(&rand(&[3, 2, 1, 1], 2), None, 0, Padding::default()));
    assert!(m.contains("conv2d") && m.contains("stride"), "{m}");
}

#[test]
fn conv2d_wrong_bias_or_rank_is_an_error_naming_the_shapes() {
    let m =
        err_msg(rand(&[1, 2, 4, 4], 1).conv2d(&rand(&[3, 2, 1, 1], 2), Some(&rand(&[4], 3)), 1, Padding::default()));
    assert!(
        m.contains("conv2d") && m.contains("bias") && m.contains("[3]") && m.contains("[4]"),
        "{m}"
    );
    let m = err_msg(rand(&[2, 4, 4], 1).conv2d(&rand(&[3, 2, 1, 1], 2), None, 1, Padding::default()));
    assert!(m.contains("conv2d") && m.contains("[2, 4, 4]"), "{m}");
    let m = err_msg(rand(&[1, 2, 4, 4], 1).conv2d(&rand(&[3, 2, 1], 2), None, 1, Padding::default()));
    assert!(m.contains("conv2d") && m.contains("[3, 2, 1]"), "{m}");
}

// ---------------------------------------------------------------------------------------------------
// upsample_nearest2x
// ---------------------------------------------------------------------------------------------------

fn naive_upsample(x: &Tensor) -> Vec<f32> {
    let d = x.dims();
    let (planes, h, w) = (d[0] * d[1], d[2], d[3]);
    let v = vals(x);
    let mut out = Vec::with_capacity(planes * 4 * h * w);
    for p in 0..planes {
        for y in 0..2 * h {
            for xo in 0..2 * w {
                out.push(v[(p * h + y / 2) * w + xo / 2]);
            }
        }
    }
    out
}

#[test]
fn upsample_nearest2x_repeats_each_pixel_in_a_2x2_block() {
    for dims in [[1, 1, 1, 1], [2, 3, 5, 7], [1, 4, 8, 1], [3, 2, 1, 9], [1, 2, 64, 65]] {
        let x = rand(&dims, 1);
        let got = x.upsample_nearest2x().unwrap();
        assert_eq!(got.dims(), &[dims[0], dims[1], 2 * dims[2], 2 * dims[3]]);
        assert_eq!(vals(&got), naive_upsample(&x), "{dims:?}");
    }
    // Strided input and bf16 (exact: the values are copied).
    let xs = rand_strided(&[2, 3, 5, 4], 2);
    assert_eq!(vals(&xs.upsample_nearest2x().unwrap()), naive_upsample(&xs), "strided");
    let xb = rand(&[1, 2, 3, 5], 3).to_dtype(DType::BF16).unwrap();
    let got = xb.upsample_nearest2x().unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    assert_eq!(vals(&got), naive_upsample(&xb), "bf16");
}

#[test]
fn upsample_nearest2x_of_non_4d_input_is_an_error_naming_the_shape() {
    let m = err_msg(rand(&[3, 5, 7], 1).upsample_nearest2x());
    assert!(m.contains("upsample_nearest2x") && m.contains("[3, 5, 7]"), "{m}");
}

// ---------------------------------------------------------------------------------------------------
// Batch invariance: a row's result must not depend on the other rows (an image must come out the same
// whatever batch it is generated in).
// ---------------------------------------------------------------------------------------------------

#[test]
fn linear_rows_are_bit_identical_whatever_the_batch_around_them() {
    // K = 1100 spans several packed blocks whose depth depends on the row count; every output must
    // still be the same fused multiply-add chain.
    for (k, n) in [(40, 70), (600, 37), (1100, 45)] {
        let big = rand(&[1030, k], 9000 + k as u64);
        let w = rand(&[n, k], 9100 + k as u64);
        let b = rand(&[n], 9200 + k as u64);
        let all = vals(&big.linear(&w, Some(&b)).unwrap());
        for (start, m) in [(0, 1), (5, 2), (7, 6), (0, 7), (3, 13), (100, 48), (0, 514), (200, 830)] {
            let part = big.narrow(0, start, m).unwrap();
            let got = vals(&part.linear(&w, Some(&b)).unwrap());
            let want = &all[start * n..(start + m) * n];
            assert!(
                got == want,
                "K={k}: rows {start}..{} differ when computed in a batch of {m}",
                start + m
            );
        }
    }
}

#[test]
fn batched_matmul_equals_each_matrix_alone_bit_for_bit() {
    let a = rand(&[5, 33, 300], 9300);
    let b = rand(&[5, 300, 21], 9301);
    let all = vals(&a.matmul(&b).unwrap());
    for i in 0..5 {
        let one = vals(&a.narrow(0, i, 1).unwrap().matmul(&b.narrow(0, i, 1).unwrap()).unwrap());
        assert!(one == all[i * 33 * 21..(i + 1) * 33 * 21], "matrix {i}");
    }
}
