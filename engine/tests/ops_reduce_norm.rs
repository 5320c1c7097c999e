//! Reductions (sum, mean, max, min, sum_all, argmax, cumsum), softmax / log_softmax and the
//! normalisations (layer_norm, rms_norm, group_norm) against naive f64 references over multi-indices.
//!
//! Tolerances (the reference is computed in f64 from the very same f32 inputs):
//! - sums (sum, mean, sum_all, cumsum): f32 accumulation error is bounded by a multiple of eps·Σ|x| over
//!   the summed terms; we allow 1e-6·Σ|x| (~8 eps·Σ|x|) plus 2 eps relative for the final roundings;
//! - max, min, argmax: exact;
//! - softmax: rtol 2e-6 (exp <= 2 ulp; the shift x - max rounds to 0.5 ulp of |x - max| <= 8, which is
//!   <= 5e-7 relative after exp; the normalising sum and product add ~2 ulp);
//! - log_softmax: |err| <= 4 eps·(|x| + |logsumexp|) + 1e-7 (a few roundings of quantities of that size);
//! - layer_norm / group_norm / rms_norm: |err| <= 4e-6·(|w|·(|x̂| + 1) + |b|), where x̂ is the normalised
//!   value (mean, variance and 1/sqrt each carry a few f32 roundings);
//! - bf16 / f16 outputs add one rounding to the storage type: unit roundoff 2^-8 (bf16) / 2^-11 (f16).

mod common;

use common::*;
use nvg_engine::{DType, Device, Tensor};

const EPS: f64 = f32::EPSILON as f64;

// ---------------------------------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------------------------------

fn storage_rtol(dt: DType) -> f64 {
    match dt {
        DType::F32 => 0.0,
        DType::BF16 => 1.0 / 256.0,
        DType::F16 => 1.0 / 2048.0,
        other => panic!("not a float dtype: {other}"),
    }
}

fn storage_atol(dt: DType) -> f64 {
    match dt {
        DType::F16 => 3.0e-8,
        _ => 0.0,
    }
}

/// Element-wise check with a per-element tolerance; equal infinities and NaN-for-NaN match.
#[track_caller]
fn check_with(got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = g as f64 == w || (g.is_nan() && w.is_nan()) || (g as f64 - w).abs() <= tol(i);
        assert!(ok, "{what}: element {i}: got {g:e}, want {w:e} (tol {:e})", tol(i));
    }
}

fn tensor(data: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_slice(data, dims).unwrap()
}

/// Row-major values of `data` with dims permuted (output dim k is input dim perm[k]).
fn permute_ref<T: Copy>(data: &[T], dims: &[usize], perm: &[usize]) -> (Vec<T>, Vec<usize>) {
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let out = (0..data.len())
        .map(|i| {
            let o = unravel(i, &out_dims);
            let mut src = vec![0; dims.len()];
            for (k, &p) in perm.iter().enumerate() {
                src[p] = o[k];
            }
            data[ravel(&src, dims)]
        })
        .collect();
    (out, out_dims)
}

/// Row-major values of `data[.., start..start+len, ..]` along `dim`.
fn narrow_ref<T: Copy>(data: &[T], dims: &[usize], dim: usize, start: usize, len: usize) -> (Vec<T>, Vec<usize>) {
    let mut out_dims = dims.to_vec();
    out_dims[dim] = len;
    let n: usize = out_dims.iter().product();
    let out = (0..n)
        .map(|i| {
            let mut idx = unravel(i, &out_dims);
            idx[dim] += start;
            data[ravel(&idx, dims)]
        })
        .collect();
    (out, out_dims)
}

/// Row-major values of `data` (shape `dims`, same rank as `to`) broadcast to `to`.
fn broadcast_ref<T: Copy>(data: &[T], dims: &[usize], to: &[usize]) -> Vec<T> {
    assert_eq!(dims.len(), to.len());
    let n: usize = to.iter().product();
    (0..n)
        .map(|i| {
            let idx: Vec<usize> = unravel(i, to)
                .iter()
                .zip(dims)
                .map(|(&x, &d)| if d == 1 { 0 } else { x })
                .collect();
            data[ravel(&idx, dims)]
        })
        .collect()
}

/// The lines of `data` along dim `d`, in row-major order of the remaining dims.
fn lines<T: Copy>(data: &[T], dims: &[usize], d: usize) -> Vec<Vec<T>> {
    let mut od = dims.to_vec();
    od[d] = 1;
    let n: usize = od.iter().product();
    (0..n)
        .map(|i| {
            let mut idx = unravel(i, &od);
            (0..dims[d])
                .map(|r| {
                    idx[d] = r;
                    data[ravel(&idx, dims)]
                })
                .collect()
        })
        .collect()
}

/// Applies `f` to every line along `d` and writes the results back in place (for cumsum, softmax).
fn map_lines<T: Copy, R: Copy + Default>(data: &[T], dims: &[usize], d: usize, f: impl Fn(&[T]) -> Vec<R>) -> Vec<R> {
    let mut od = dims.to_vec();
    od[d] = 1;
    let mut out = vec![R::default(); data.len()];
    for i in 0..od.iter().product::<usize>() {
        let mut idx = unravel(i, &od);
        let line: Vec<T> = (0..dims[d])
            .map(|r| {
                idx[d] = r;
                data[ravel(&idx, dims)]
            })
            .collect();
        for (r, v) in f(&line).into_iter().enumerate() {
            idx[d] = r;
            out[ravel(&idx, dims)] = v;
        }
    }
    out
}

fn reduced_dims(dims: &[usize], d: usize, keepdim: bool) -> Vec<usize> {
    let mut out = dims.to_vec();
    if keepdim {
        out[d] = 1;
    } else {
        out.remove(d);
    }
    out
}

fn sum64(line: &[f32]) -> f64 {
    line.iter().map(|&v| v as f64).sum()
}

fn abs_sum64(line: &[f32]) -> f64 {
    line.iter().map(|&v| (v as f64).abs()).sum()
}

/// max/min with NaN propagation (PyTorch): NaN if any element is NaN.
fn max_ref(line: &[f32]) -> f64 {
    if line.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    line.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64))
}

fn min_ref(line: &[f32]) -> f64 {
    if line.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    line.iter().fold(f64::INFINITY, |a, &b| a.min(b as f64))
}

/// First index of the maximum; the first NaN wins over every number.
fn argmax_ref(line: &[f32]) -> i64 {
    if let Some(p) = line.iter().position(|v| v.is_nan()) {
        return p as i64;
    }
    let mut best = 0;
    for (i, &v) in line.iter().enumerate() {
        if v > line[best] {
            best = i;
        }
    }
    best as i64
}

const SHAPES: [&[usize]; 10] = [
    &[1],
    &[3],
    &[17],
    &[257],
    &[3, 17],
    &[1, 5],
    &[5, 1],
    &[2, 3, 4],
    &[3, 1, 33],
    &[2, 5, 7, 3],
];

/// Every (dim, keepdim) to test for a rank: each dim both as a positive and as a negative index.
fn dim_cases(rank: usize) -> Vec<(isize, usize, bool)> {
    let mut out = Vec::new();
    for d in 0..rank {
        for keepdim in [false, true] {
            out.push((d as isize, d, keepdim));
            out.push((d as isize - rank as isize, d, keepdim));
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Red {
    Sum,
    Mean,
    Max,
    Min,
}

fn run_red(x: &Tensor, r: Red, dim: isize, keepdim: bool) -> nvg_engine::Result<Tensor> {
    match r {
        Red::Sum => x.sum(dim, keepdim),
        Red::Mean => x.mean(dim, keepdim),
        Red::Max => x.max(dim, keepdim),
        Red::Min => x.min(dim, keepdim),
    }
}

/// Checks one reduction of a tensor whose row-major values are `data` (shape `dims`) against the f64
/// reference, with `extra_rtol`/`extra_atol` for a storage rounding.
#[track_caller]
fn check_red(x: &Tensor, data: &[f32], dims: &[usize], r: Red, case: (isize, usize, bool), dt: DType) {
    let (dim, d, keepdim) = case;
    let what = format!("{r:?}(dim {dim}, keepdim {keepdim}) of {dims:?} {dt}");
    let y = run_red(x, r, dim, keepdim).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(y.dims(), reduced_dims(dims, d, keepdim).as_slice(), "{what}: shape");
    assert_eq!(y.dtype(), dt, "{what}: dtype");
    let ls = lines(data, dims, d);
    let n = dims[d] as f64;
    let (want, abs): (Vec<f64>, Vec<f64>) = ls
        .iter()
        .map(|l| match r {
            Red::Sum => (sum64(l), abs_sum64(l)),
            Red::Mean => (sum64(l) / n, abs_sum64(l) / n),
            Red::Max => (max_ref(l), 0.0),
            Red::Min => (min_ref(l), 0.0),
        })
        .unzip();
    let (sr, sa) = (storage_rtol(dt), storage_atol(dt));
    // Mean rounds twice in the storage dtype (the sum, then the scaled sum).
    let sr = if r == Red::Mean { 2.0 * sr } else { sr };
    check_with(
        &vals(&y),
        &want,
        |i| 1e-6 * abs[i] + (2.0 * EPS + sr) * want[i].abs() + sa,
        &what,
    );
}

// ---------------------------------------------------------------------------------------------------
// sum / mean / max / min
// ---------------------------------------------------------------------------------------------------

#[test]
fn sum_mean_max_min_match_f64_reference_for_every_dim_keepdim_and_negative_dim() {
    for (k, dims) in SHAPES.iter().enumerate() {
        let data = values(dims.iter().product(), 1000 + k as u64);
        let x = tensor(&data, dims);
        for r in [Red::Sum, Red::Mean, Red::Max, Red::Min] {
            for (dim, d, keepdim) in dim_cases(dims.len()) {
                check_red(&x, &data, dims, r, (dim, d, keepdim), DType::F32);
            }
        }
    }
}

#[test]
fn sum_mean_max_min_hand_checked_values() {
    let x = tensor(&[1.0, -2.0, 3.0, 4.0, 5.0, -6.0], &[2, 3]);
    assert_eq!(vals(&x.sum(1, false).unwrap()), vec![2.0, 3.0]);
    assert_eq!(vals(&x.sum(0, true).unwrap()), vec![5.0, 3.0, -3.0]);
    assert_eq!(x.sum(0, true).unwrap().dims(), &[1, 3]);
    assert_eq!(vals(&x.mean(-1, false).unwrap()), vec![2.0 / 3.0, 1.0]);
    assert_eq!(vals(&x.max(1, false).unwrap()), vec![3.0, 5.0]);
    assert_eq!(vals(&x.min(-2, false).unwrap()), vec![1.0, -2.0, -6.0]);
    // All -inf / +inf lines reduce to the infinity, not to a sentinel.
    let inf = tensor(&[f32::NEG_INFINITY, f32::NEG_INFINITY], &[2]);
    assert_eq!(vals(&inf.max(0, false).unwrap()), vec![f32::NEG_INFINITY]);
    let pinf = tensor(&[f32::INFINITY, f32::INFINITY], &[2]);
    assert_eq!(vals(&pinf.min(0, false).unwrap()), vec![f32::INFINITY]);
}

#[test]
fn max_min_propagate_nan_wherever_it_appears() {
    // Along a contiguous line (inner == 1): NaN first, in the middle, last, followed by larger values.
    for (pos, len) in [(0usize, 5usize), (2, 5), (4, 5), (0, 33), (16, 33)] {
        let mut data: Vec<f32> = (0..len).map(|i| i as f32).collect();
        data[pos] = f32::NAN;
        let x = tensor(&data, &[len]);
        let mx = vals(&x.max(0, false).unwrap());
        let mn = vals(&x.min(0, false).unwrap());
        assert!(mx[0].is_nan(), "max of {data:?} must be NaN, got {mx:?}");
        assert!(mn[0].is_nan(), "min of {data:?} must be NaN, got {mn:?}");
    }
    // Along a strided dim (inner > 1): column c has its NaN in row c.
    let mut data = values(5 * 4, 3);
    for c in 0..4 {
        data[c * 4 + c] = f32::NAN;
    }
    let x = tensor(&data, &[5, 4]);
    for r in [Red::Max, Red::Min] {
        let v = vals(&run_red(&x, r, 0, false).unwrap());
        assert!(
            v.iter().all(|v| v.is_nan()),
            "{r:?} over dim 0 must be NaN in every column, got {v:?}"
        );
    }
}

#[test]
fn reductions_on_strided_permuted_narrowed_and_broadcast_views() {
    let s = rand_strided(&[7, 17], 21);
    let sdata = values(7 * 17, 21);
    let base = values(4 * 5 * 6, 22);
    let p = tensor(&base, &[4, 5, 6]).permute(&[2, 0, 1]).unwrap();
    let (pdata, pdims) = permute_ref(&base, &[4, 5, 6], &[2, 0, 1]);
    let n = tensor(&base, &[4, 5, 6]).narrow(1, 1, 3).unwrap();
    let (ndata, ndims) = narrow_ref(&base, &[4, 5, 6], 1, 1, 3);
    let b = tensor(&base[..5], &[1, 5]).broadcast_as(&[4, 5]).unwrap();
    let bdata = broadcast_ref(&base[..5], &[1, 5], &[4, 5]);
    let cases: [(&Tensor, &[f32], &[usize]); 4] = [
        (&s, &sdata, &[7, 17]),
        (&p, &pdata, &pdims),
        (&n, &ndata, &ndims),
        (&b, &bdata, &[4, 5]),
    ];
    for (x, data, dims) in cases {
        assert!(!x.is_contiguous());
        for r in [Red::Sum, Red::Mean, Red::Max, Red::Min] {
            for (dim, d, keepdim) in dim_cases(dims.len()) {
                check_red(x, data, dims, r, (dim, d, keepdim), DType::F32);
            }
        }
    }
}

#[test]
fn reductions_large_inputs_use_parallel_path() {
    // [3, 257, 100] (77100 elements): dim 1 runs the parallel strided path, dim 2 the parallel
    // contiguous-line path, dim 0 the sequential one. [70001] reduces one long line.
    let big: [&[usize]; 3] = [&[3, 257, 100], &[257, 300], &[70001]];
    for (k, dims) in big.iter().enumerate() {
        let data = values(dims.iter().product(), 40 + k as u64);
        let x = tensor(&data, dims);
        for r in [Red::Sum, Red::Mean, Red::Max, Red::Min] {
            for d in 0..dims.len() {
                check_red(&x, &data, dims, r, (d as isize, d, false), DType::F32);
            }
        }
    }
}

#[test]
fn one_row_reductions_split_by_columns_fold_each_column_in_row_order_on_any_thread_count() {
    // [1, 1000, 300] over dim 1 (a bias gradient's shape): 300 columns split into tasks of 64; every
    // output must be exactly the in-order f32 fold of its column, with 1 thread and with 3.
    let (rows, cols) = (1000, 300);
    let data = values(rows * cols, 77);
    let x = tensor(&data, &[1, rows, cols]);
    let mut sum = data[..cols].to_vec();
    let mut max = sum.clone();
    let mut min = sum.clone();
    for r in 1..rows {
        for c in 0..cols {
            let v = data[r * cols + c];
            sum[c] += v;
            max[c] = max[c].max(v);
            min[c] = min[c].min(v);
        }
    }
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let (s, mx, mn) = pool.install(|| {
            (
                vals(&x.sum(1, false).unwrap()),
                vals(&x.max(1, false).unwrap()),
                vals(&x.min(1, false).unwrap()),
            )
        });
        assert_eq!(s, sum, "sum over rows, {threads} threads");
        assert_eq!(mx, max, "max over rows, {threads} threads");
        assert_eq!(mn, min, "min over rows, {threads} threads");
    }
}

#[test]
fn reductions_keep_bf16_and_f16_dtype_within_storage_precision() {
    for dt in [DType::BF16, DType::F16] {
        for dims in [&[3usize, 17][..], &[2, 5, 7, 3], &[3, 257, 100]] {
            let x = rand(dims, 50).to_dtype(dt).unwrap();
            let data = vals(&x);
            for r in [Red::Sum, Red::Mean, Red::Max, Red::Min] {
                for (dim, d, keepdim) in dim_cases(dims.len()) {
                    check_red(&x, &data, dims, r, (dim, d, keepdim), dt);
                }
            }
        }
    }
}

#[test]
fn reductions_over_tensors_with_zero_sized_dims_do_not_panic() {
    // [2, 3, 0]: reducing dim 1 leaves [2, 0]; reducing the empty dim 2 with sum gives zeros.
    let x = Tensor::zeros(&[2, 3, 0], DType::F32, Device::Cpu).unwrap();
    for r in [Red::Sum, Red::Mean, Red::Max, Red::Min] {
        let y = std::panic::catch_unwind(|| run_red(&x, r, 1, false));
        match y {
            Err(_) => panic!("{r:?} over dim 1 of [2, 3, 0] panicked"),
            Ok(y) => assert_eq!(y.unwrap().dims(), &[2, 0], "{r:?}"),
        }
    }
    let s = x.sum(2, false).unwrap();
    assert_eq!(s.dims(), &[2, 3]);
    assert_eq!(vals(&s), vec![0.0; 6]);
    assert_eq!(x.sum_all().unwrap(), 0.0);
    assert_eq!(x.argmax(1, false).unwrap().dims(), &[2, 0]);
    assert_eq!(x.cumsum(1).unwrap().dims(), &[2, 3, 0]);
}

#[test]
fn reductions_reject_out_of_range_dims_naming_op_dim_and_shape() {
    let x = rand(&[2, 3], 1);
    type Op = fn(&Tensor, isize) -> nvg_engine::Result<Tensor>;
    let ops: [(&str, Op); 8] = [
        ("sum", |x, d| x.sum(d, false)),
        ("mean", |x, d| x.mean(d, true)),
        ("max", |x, d| x.max(d, false)),
        ("min", |x, d| x.min(d, true)),
        ("argmax", |x, d| x.argmax(d, false)),
        ("cumsum", |x, d| x.cumsum(d)),
        ("softmax", |x, d| x.softmax(d)),
        ("log_softmax", |x, d| x.log_softmax(d)),
    ];
    for (name, op) in ops {
        for dim in [2isize, -3, 100] {
            let msg = err_msg(op(&x, dim));
            assert!(msg.contains(name), "{name}({dim}): {msg}");
            assert!(msg.contains("[2, 3]"), "{name}({dim}): {msg} must show the shape");
            let without_shape = msg.replace("[2, 3]", "");
            assert!(
                without_shape.contains(&dim.to_string()),
                "{name}({dim}): {msg} must show the dim"
            );
        }
    }
}

#[test]
fn reductions_reject_integer_tensors_and_empty_max_naming_op() {
    let i = Tensor::arange(0, 6).reshape(&[2, 3]).unwrap();
    type Op = fn(&Tensor) -> nvg_engine::Result<Tensor>;
    let ops: [(&str, Op); 7] = [
        ("sum", |x| x.sum(0, false)),
        ("mean", |x| x.mean(0, false)),
        ("max", |x| x.max(0, false)),
        ("min", |x| x.min(0, false)),
        ("argmax", |x| x.argmax(0, false)),
        ("softmax", |x| x.softmax(-1)),
        ("log_softmax", |x| x.log_softmax(-1)),
    ];
    for (name, op) in ops {
        let msg = err_msg(op(&i));
        assert!(msg.contains(name) && msg.contains("i64"), "{name}: {msg}");
    }
    let msg = err_msg(i.sum_all());
    assert!(msg.contains("sum_all") && msg.contains("i64"), "{msg}");
    // max / min / mean / argmax over an empty dim have no value.
    let e = Tensor::zeros(&[3, 0], DType::F32, Device::Cpu).unwrap();
    for (name, r) in [
        ("max", e.max(1, false)),
        ("min", e.min(1, false)),
        ("mean", e.mean(1, false)),
        ("argmax", e.argmax(1, false)),
    ] {
        let msg = err_msg(r);
        assert!(msg.contains(name) && msg.contains("[3, 0]"), "{name}: {msg}");
    }
}

// ---------------------------------------------------------------------------------------------------
// sum_all
// ---------------------------------------------------------------------------------------------------

#[test]
fn sum_all_matches_f64_reference_on_odd_sizes_views_large_and_reduced_dtypes() {
    let check = |x: &Tensor, data: &[f32], extra: f64, what: &str| {
        let got = x.sum_all().unwrap();
        let want = sum64(data);
        let tol = 1e-6 * abs_sum64(data) + (2.0 * EPS + extra) * want.abs();
        assert!(
            (got as f64 - want).abs() <= tol,
            "{what}: got {got}, want {want} (tol {tol:e})"
        );
    };
    for (k, dims) in [&[1usize][..], &[3], &[17], &[257], &[3, 1, 33], &[70001], &[257, 273]]
        .iter()
        .enumerate()
    {
        let data = values(dims.iter().product(), 70 + k as u64);
        check(&tensor(&data, dims), &data, 0.0, &format!("sum_all {dims:?}"));
    }
    check(&rand_strided(&[33, 17], 5), &values(33 * 17, 5), 0.0, "sum_all strided");
    let base = values(105, 6);
    let (pdata, _) = permute_ref(&base, &[3, 5, 7], &[2, 1, 0]);
    check(
        &tensor(&base, &[3, 5, 7]).permute(&[2, 1, 0]).unwrap(),
        &pdata,
        0.0,
        "sum_all permuted",
    );
    let (ndata, _) = narrow_ref(&base, &[3, 5, 7], 2, 1, 5);
    check(
        &tensor(&base, &[3, 5, 7]).narrow(2, 1, 5).unwrap(),
        &ndata,
        0.0,
        "sum_all narrowed",
    );
    let bdata = broadcast_ref(&base[..7], &[1, 7], &[9, 7]);
    check(
        &tensor(&base[..7], &[1, 7]).broadcast_as(&[9, 7]).unwrap(),
        &bdata,
        0.0,
        "sum_all broadcast",
    );
    // Reduced dtypes: the sum of the stored values, accumulated in f32 (sum_all returns f32).
    for dt in [DType::BF16, DType::F16] {
        let x = rand(&[257, 3], 8).to_dtype(dt).unwrap();
        check(&x, &vals(&x), 0.0, &format!("sum_all {dt}"));
    }
}

// ---------------------------------------------------------------------------------------------------
// argmax
// ---------------------------------------------------------------------------------------------------

#[test]
fn argmax_ties_go_to_lowest_index_and_first_nan_wins() {
    let n = f32::NAN;
    let ni = f32::NEG_INFINITY;
    #[rustfmt::skip]
    let data = [
        1.0, 5.0, 5.0, 2.0,
        7.0, 7.0, 7.0, 7.0,
        n,   1.0, n,   9.0,
        0.0, ni,  9.0, n,
    ];
    let x = tensor(&data, &[4, 4]);
    let a = x.argmax(1, false).unwrap();
    assert_eq!(a.dtype(), DType::I64);
    assert_eq!(a.dims(), &[4]);
    assert_eq!(a.to_i64_vec().unwrap(), vec![1, 0, 0, 3]);
    let a0 = x.argmax(0, true).unwrap();
    assert_eq!(a0.dims(), &[1, 4]);
    assert_eq!(a0.to_i64_vec().unwrap(), vec![2, 1, 2, 3]);
    let a1 = x.argmax(-1, true).unwrap();
    assert_eq!(a1.dims(), &[4, 1]);
    assert_eq!(a1.to_i64_vec().unwrap(), vec![1, 0, 0, 3]);
    // All -inf: index 0.
    let m = tensor(&[ni, ni, ni], &[3]).argmax(0, false).unwrap();
    assert_eq!(m.dims(), &[] as &[usize]);
    assert_eq!(m.to_i64_vec().unwrap(), vec![0]);
}

/// Values quantised to multiples of 0.25 in [-1, 1], so ties are frequent; a few NaNs when `nans`.
fn tie_values(n: usize, seed: u64, nans: bool) -> Vec<f32> {
    values(n, seed)
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if nans && i % 37 == 11 {
                f32::NAN
            } else {
                (v * 4.0).round() / 4.0
            }
        })
        .collect()
}

#[track_caller]
fn check_argmax(x: &Tensor, data: &[f32], dims: &[usize], dim: isize, d: usize, keepdim: bool, what: &str) {
    let y = x.argmax(dim, keepdim).unwrap();
    assert_eq!(y.dtype(), DType::I64, "{what}");
    assert_eq!(y.dims(), reduced_dims(dims, d, keepdim).as_slice(), "{what}");
    let want: Vec<i64> = lines(data, dims, d).iter().map(|l| argmax_ref(l)).collect();
    assert_eq!(y.to_i64_vec().unwrap(), want, "{what} (dim {dim}, keepdim {keepdim})");
}

#[test]
fn argmax_matches_reference_for_every_dim_with_ties_and_nans() {
    for (k, dims) in SHAPES.iter().enumerate() {
        for nans in [false, true] {
            let data = tie_values(dims.iter().product(), 200 + k as u64, nans);
            let x = tensor(&data, dims);
            for (dim, d, keepdim) in dim_cases(dims.len()) {
                check_argmax(
                    &x,
                    &data,
                    dims,
                    dim,
                    d,
                    keepdim,
                    &format!("argmax {dims:?} nans {nans}"),
                );
            }
        }
    }
}

#[test]
fn argmax_on_views_large_inputs_and_reduced_dtypes() {
    // Strided and permuted views.
    let s = rand_strided(&[17, 33], 9);
    let sdata = values(17 * 33, 9);
    for (dim, d, keepdim) in dim_cases(2) {
        check_argmax(&s, &sdata, &[17, 33], dim, d, keepdim, "argmax strided");
    }
    let base = tie_values(4 * 5 * 6, 10, true);
    let p = tensor(&base, &[4, 5, 6]).permute(&[1, 2, 0]).unwrap();
    let (pdata, pdims) = permute_ref(&base, &[4, 5, 6], &[1, 2, 0]);
    for (dim, d, keepdim) in dim_cases(3) {
        check_argmax(&p, &pdata, &pdims, dim, d, keepdim, "argmax permuted");
    }
    let nw = tensor(&base, &[4, 5, 6]).narrow(2, 2, 3).unwrap();
    let (ndata, ndims) = narrow_ref(&base, &[4, 5, 6], 2, 2, 3);
    check_argmax(&nw, &ndata, &ndims, 1, 1, false, "argmax narrowed");
    // A broadcast dim is all ties: index 0.
    let b = tensor(&base[..6], &[1, 6]).broadcast_as(&[5, 6]).unwrap();
    assert_eq!(b.argmax(0, false).unwrap().to_i64_vec().unwrap(), vec![0; 6]);
    // Large.
    let dims = [257usize, 300];
    let data = tie_values(257 * 300, 11, false);
    let x = tensor(&data, &dims);
    for d in 0..2 {
        check_argmax(&x, &data, &dims, d as isize, d, false, "argmax large");
    }
    // bf16 / f16: rounding to storage creates ties; the reference uses the stored values.
    for dt in [DType::BF16, DType::F16] {
        let near_one: Vec<f32> = values(9 * 257, 12).iter().map(|v| 1.0 + v * 1e-3).collect();
        let x = tensor(&near_one, &[9, 257]).to_dtype(dt).unwrap();
        let data = vals(&x);
        for (dim, d, keepdim) in dim_cases(2) {
            check_argmax(&x, &data, &[9, 257], dim, d, keepdim, &format!("argmax {dt}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// cumsum
// ---------------------------------------------------------------------------------------------------

#[track_caller]
fn check_cumsum(x: &Tensor, data: &[f32], dims: &[usize], dim: isize, d: usize, dt: DType, what: &str) {
    let y = x.cumsum(dim).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(y.dims(), dims, "{what}");
    assert_eq!(y.dtype(), dt, "{what}");
    let want = map_lines(data, dims, d, |l| {
        let mut acc = 0.0f64;
        l.iter()
            .map(|&v| {
                acc += v as f64;
                acc
            })
            .collect()
    });
    let abs = map_lines(data, dims, d, |l| {
        let mut acc = 0.0f64;
        l.iter()
            .map(|&v| {
                acc += (v as f64).abs();
                acc
            })
            .collect()
    });
    let sr = storage_rtol(dt);
    check_with(
        &vals(&y),
        &want,
        |i| 1e-6 * abs[i] + (2.0 * EPS + sr) * want[i].abs() + storage_atol(dt),
        &format!("{what} (dim {dim})"),
    );
}

#[test]
fn cumsum_f32_matches_f64_running_sum_along_every_dim() {
    for (k, dims) in SHAPES.iter().enumerate() {
        let data = values(dims.iter().product(), 300 + k as u64);
        let x = tensor(&data, dims);
        for (dim, d, keepdim) in dim_cases(dims.len()) {
            if keepdim {
                continue;
            }
            check_cumsum(&x, &data, dims, dim, d, DType::F32, &format!("cumsum {dims:?}"));
        }
    }
    // Views and a large input.
    let s = rand_strided(&[17, 33], 13);
    let sdata = values(17 * 33, 13);
    for d in 0..2 {
        check_cumsum(&s, &sdata, &[17, 33], d as isize, d, DType::F32, "cumsum strided");
    }
    let base = values(105, 14);
    let p = tensor(&base, &[3, 5, 7]).permute(&[2, 0, 1]).unwrap();
    let (pdata, pdims) = permute_ref(&base, &[3, 5, 7], &[2, 0, 1]);
    for d in 0..3 {
        check_cumsum(&p, &pdata, &pdims, d as isize, d, DType::F32, "cumsum permuted");
    }
    let b = tensor(&base[..7], &[1, 7]).broadcast_as(&[4, 7]).unwrap();
    let bdata = broadcast_ref(&base[..7], &[1, 7], &[4, 7]);
    check_cumsum(&b, &bdata, &[4, 7], 0, 0, DType::F32, "cumsum broadcast");
    let dims = [3usize, 257, 100];
    let data = values(3 * 257 * 100, 15);
    let x = tensor(&data, &dims);
    for d in 0..3 {
        check_cumsum(&x, &data, &dims, d as isize, d, DType::F32, "cumsum large");
    }
}

#[test]
fn cumsum_keeps_bf16_and_f16_dtype_within_storage_precision() {
    for dt in [DType::BF16, DType::F16] {
        let x = rand(&[3, 33, 5], 16).to_dtype(dt).unwrap();
        let data = vals(&x);
        for (dim, d, keepdim) in dim_cases(3) {
            if !keepdim {
                check_cumsum(&x, &data, &[3, 33, 5], dim, d, dt, &format!("cumsum {dt}"));
            }
        }
    }
}

#[test]
fn cumsum_i64_is_exact_along_every_dim_and_on_views() {
    // Magnitudes beyond 2^53 so a detour through f32/f64 would show.
    let big = 1i64 << 55;
    let data: Vec<i64> = (0..2 * 5 * 7)
        .map(|i: i64| if i % 3 == 0 { big + i } else { -(i * 7919) % 1000 })
        .collect();
    let dims = [2usize, 5, 7];
    let x = Tensor::from_slice(&data, &dims).unwrap();
    for (dim, d, keepdim) in dim_cases(3) {
        if keepdim {
            continue;
        }
        let y = x.cumsum(dim).unwrap();
        assert_eq!(y.dtype(), DType::I64);
        assert_eq!(y.dims(), &dims);
        let want = map_lines(&data, &dims, d, |l| {
            let mut acc = 0i64;
            l.iter()
                .map(|&v| {
                    acc += v;
                    acc
                })
                .collect()
        });
        assert_eq!(y.to_i64_vec().unwrap(), want, "cumsum i64 dim {dim}");
    }
    // A permuted (non-contiguous) i64 view.
    let p = x.permute(&[2, 0, 1]).unwrap();
    let (pdata, pdims) = permute_ref(&data, &dims, &[2, 0, 1]);
    let want = map_lines(&pdata, &pdims, 2, |l| {
        let mut acc = 0i64;
        l.iter()
            .map(|&v| {
                acc += v;
                acc
            })
            .collect()
    });
    assert_eq!(p.cumsum(-1).unwrap().to_i64_vec().unwrap(), want);
    assert_eq!(
        Tensor::arange(1, 6).cumsum(0).unwrap().to_i64_vec().unwrap(),
        vec![1, 3, 6, 10, 15]
    );
}

#[test]
fn cumsum_i64_overflow_wraps_like_add_instead_of_panicking() {
    // Binary add on i64 wraps (i64::MAX + 1 == i64::MIN); a running sum must not panic where add doesn't.
    let x = Tensor::from_slice(&[i64::MAX, 1, 1], &[3]).unwrap();
    let r = std::panic::catch_unwind(|| x.cumsum(0));
    match r {
        Err(_) => panic!("cumsum of [i64::MAX, 1, 1] panicked on overflow"),
        Ok(y) => assert_eq!(y.unwrap().to_i64_vec().unwrap(), vec![i64::MAX, i64::MIN, i64::MIN + 1]),
    }
}

// ---------------------------------------------------------------------------------------------------
// softmax / log_softmax
// ---------------------------------------------------------------------------------------------------

fn softmax_line(l: &[f32]) -> Vec<f64> {
    let m = l.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
    let e: Vec<f64> = l.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// (log_softmax, logsumexp) per element.
fn log_softmax_line(l: &[f32]) -> Vec<(f64, f64)> {
    let m = l.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
    let s: f64 = l.iter().map(|&v| (v as f64 - m).exp()).sum();
    let lse = m + s.ln();
    l.iter().map(|&v| (v as f64 - m - s.ln(), lse)).collect()
}

#[track_caller]
fn check_softmax(x: &Tensor, data: &[f32], dims: &[usize], dim: isize, d: usize, dt: DType, what: &str) {
    let (sr, sa) = (storage_rtol(dt), storage_atol(dt));
    let y = x.softmax(dim).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(y.dims(), dims, "{what}");
    assert_eq!(y.dtype(), dt, "{what}");
    let want = map_lines(data, dims, d, softmax_line);
    check_with(
        &vals(&y),
        &want,
        |i| (2e-6 + sr) * want[i].abs() + 1e-30 + sa,
        &format!("softmax {what} dim {dim}"),
    );

    let y = x.log_softmax(dim).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(y.dims(), dims, "{what}");
    assert_eq!(y.dtype(), dt, "{what}");
    let wl = map_lines(data, dims, d, log_softmax_line);
    let want: Vec<f64> = wl.iter().map(|p| p.0).collect();
    check_with(
        &vals(&y),
        &want,
        |i| 4.0 * EPS * ((data[i] as f64).abs() + wl[i].1.abs()) + 1e-7 + sr * want[i].abs() + sa,
        &format!("log_softmax {what} dim {dim}"),
    );
}

#[test]
fn softmax_and_log_softmax_last_dim_match_f64_reference() {
    let shapes: [&[usize]; 7] = [&[1], &[3], &[17], &[257], &[2, 33], &[3, 1], &[4, 3, 17]];
    for (k, dims) in shapes.iter().enumerate() {
        let data: Vec<f32> = values(dims.iter().product(), 400 + k as u64)
            .iter()
            .map(|v| v * 4.0)
            .collect();
        let x = tensor(&data, dims);
        let r = dims.len();
        check_softmax(&x, &data, dims, -1, r - 1, DType::F32, &format!("{dims:?}"));
        check_softmax(&x, &data, dims, r as isize - 1, r - 1, DType::F32, &format!("{dims:?}"));
    }
}

#[test]
fn softmax_and_log_softmax_middle_and_leading_dims_match_f64_reference() {
    for (k, dims) in [&[4usize, 17, 5][..], &[2, 33, 3, 2], &[5, 1, 3], &[17, 9]]
        .iter()
        .enumerate()
    {
        let data: Vec<f32> = values(dims.iter().product(), 500 + k as u64)
            .iter()
            .map(|v| v * 4.0)
            .collect();
        let x = tensor(&data, dims);
        for d in 0..dims.len() {
            check_softmax(&x, &data, dims, d as isize, d, DType::F32, &format!("{dims:?}"));
            check_softmax(
                &x,
                &data,
                dims,
                d as isize - dims.len() as isize,
                d,
                DType::F32,
                &format!("{dims:?}"),
            );
        }
    }
}

#[test]
fn softmax_and_log_softmax_on_views_large_inputs_and_reduced_dtypes() {
    let s = rand_strided(&[17, 33], 31);
    let sdata = values(17 * 33, 31);
    for d in 0..2 {
        check_softmax(&s, &sdata, &[17, 33], d as isize, d, DType::F32, "strided");
    }
    let base = values(4 * 5 * 6, 32);
    let p = tensor(&base, &[4, 5, 6]).permute(&[2, 0, 1]).unwrap();
    let (pdata, pdims) = permute_ref(&base, &[4, 5, 6], &[2, 0, 1]);
    for d in 0..3 {
        check_softmax(&p, &pdata, &pdims, d as isize, d, DType::F32, "permuted");
    }
    let n = tensor(&base, &[4, 5, 6]).narrow(2, 1, 4).unwrap();
    let (ndata, ndims) = narrow_ref(&base, &[4, 5, 6], 2, 1, 4);
    check_softmax(&n, &ndata, &ndims, -1, 2, DType::F32, "narrowed");
    let b = tensor(&base[..6], &[1, 6]).broadcast_as(&[3, 6]).unwrap();
    let bdata = broadcast_ref(&base[..6], &[1, 6], &[3, 6]);
    check_softmax(&b, &bdata, &[3, 6], -1, 1, DType::F32, "broadcast rows");
    check_softmax(&b, &bdata, &[3, 6], 0, 0, DType::F32, "broadcast column (uniform)");
    // Large: 300·257 = 77100 elements over the last dim runs the parallel row path.
    let dims = [300usize, 257];
    let data: Vec<f32> = values(300 * 257, 33).iter().map(|v| v * 4.0).collect();
    let x = tensor(&data, &dims);
    check_softmax(&x, &data, &dims, -1, 1, DType::F32, "large");
    check_softmax(&x, &data, &dims, 0, 0, DType::F32, "large dim 0");
    for dt in [DType::BF16, DType::F16] {
        let scaled: Vec<f32> = values(3 * 33 * 5, 34).iter().map(|v| v * 4.0).collect();
        let x = tensor(&scaled, &[3, 33, 5]).to_dtype(dt).unwrap();
        let data = vals(&x);
        for d in 0..3 {
            check_softmax(&x, &data, &[3, 33, 5], d as isize, d, dt, &format!("{dt}"));
        }
    }
}

#[test]
fn softmax_is_shift_invariant_for_large_logits_and_handles_masked_entries() {
    // Logits around 1000 overflow exp without the max shift.
    let data: Vec<f32> = values(3 * 17, 35).iter().map(|v| 1000.0 + v * 4.0).collect();
    let x = tensor(&data, &[3, 17]);
    check_softmax(&x, &data, &[3, 17], -1, 1, DType::F32, "logits near 1000");
    let neg: Vec<f32> = data.iter().map(|v| -v).collect();
    check_softmax(
        &tensor(&neg, &[3, 17]),
        &neg,
        &[3, 17],
        -1,
        1,
        DType::F32,
        "logits near -1000",
    );
    // -inf entries (masked) get probability 0 and log-probability -inf.
    let ni = f32::NEG_INFINITY;
    let m = tensor(&[0.0, ni, 1.0, ni, ni, ni, ni, 2.0], &[2, 4]);
    let sm = vals(&m.softmax(-1).unwrap());
    let e = (1.0f64).exp();
    let want = [1.0 / (1.0 + e), 0.0, e / (1.0 + e), 0.0, 0.0, 0.0, 0.0, 1.0];
    check_with(&sm, &want, |i| 2e-6 * want[i], "masked softmax");
    let lsm = vals(&m.log_softmax(-1).unwrap());
    assert_eq!(lsm[1], f32::NEG_INFINITY);
    assert_eq!(lsm[7], 0.0);
    assert!((lsm[0] as f64 - (1.0 / (1.0 + e)).ln()).abs() < 1e-6);
    // A fully masked row is undefined: NaN, as in PyTorch.
    let all = tensor(&[ni, ni, ni, 1.0, 2.0, 3.0], &[2, 3]);
    let sm = vals(&all.softmax(-1).unwrap());
    assert!(sm[..3].iter().all(|v| v.is_nan()), "{sm:?}");
    assert!(sm[3..].iter().all(|v| v.is_finite()), "{sm:?}");
    // A NaN anywhere in a row makes the whole row NaN (PyTorch); other rows are unaffected.
    let nan = tensor(&[1.0, f32::NAN, 2.0, 3.0, 1.0, 2.0, 3.0, 4.0], &[2, 4]);
    for (name, y) in [("softmax", nan.softmax(-1)), ("log_softmax", nan.log_softmax(-1))] {
        let v = vals(&y.unwrap());
        assert!(v[..4].iter().all(|v| v.is_nan()), "{name}: {v:?}");
        assert!(v[4..].iter().all(|v| v.is_finite()), "{name}: {v:?}");
    }
}

// ---------------------------------------------------------------------------------------------------
// layer_norm
// ---------------------------------------------------------------------------------------------------

/// Reference layer norm over the last dim (biased variance), in f64.
fn layer_norm_ref(data: &[f32], width: usize, w: Option<&[f32]>, b: Option<&[f32]>, eps: f32) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(data.len());
    for row in data.chunks(width) {
        let n = width as f64;
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for (j, &v) in row.iter().enumerate() {
            let xh = (v as f64 - mean) * rstd;
            let wj = w.map_or(1.0, |w| w[j] as f64);
            let bj = b.map_or(0.0, |b| b[j] as f64);
            // (value, tolerance scale |w|(|x̂| + 1) + |b|)
            out.push((xh * wj + bj, wj.abs() * (xh.abs() + 1.0) + bj.abs()));
        }
    }
    out
}

#[track_caller]
fn check_norm(got: &Tensor, want: &[(f64, f64)], dt: DType, what: &str) {
    let (sr, sa) = (storage_rtol(dt), storage_atol(dt));
    let w: Vec<f64> = want.iter().map(|p| p.0).collect();
    check_with(&vals(got), &w, |i| 4e-6 * want[i].1 + sr * w[i].abs() + sa, what);
}

#[test]
fn layer_norm_with_and_without_weight_and_bias_matches_f64_reference() {
    let shapes: [&[usize]; 7] = [&[1], &[3], &[17], &[4, 33], &[2, 3, 257], &[5, 1], &[3, 1, 16]];
    for (k, dims) in shapes.iter().enumerate() {
        let width = *dims.last().unwrap();
        let data = values(dims.iter().product(), 600 + k as u64);
        let x = tensor(&data, dims);
        let wv: Vec<f32> = values(width, 601 + k as u64).iter().map(|v| v + 1.0).collect();
        let bv = values(width, 602 + k as u64);
        let (w, b) = (tensor(&wv, &[width]), tensor(&bv, &[width]));
        // A large eps (0.25) tells sqrt(var + eps) apart from sqrt(var) + eps.
        for eps in [1e-5f32, 0.25, 0.0] {
            if eps == 0.0 && width == 1 {
                continue; // zero variance with zero eps: 0/0
            }
            for (wo, bo) in [(None, None), (Some(&w), None), (None, Some(&b)), (Some(&w), Some(&b))] {
                let y = x.layer_norm(wo, bo, eps).unwrap();
                assert_eq!(y.dims(), *dims);
                assert_eq!(y.dtype(), DType::F32);
                let want = layer_norm_ref(&data, width, wo.map(|_| wv.as_slice()), bo.map(|_| bv.as_slice()), eps);
                let what = format!(
                    "layer_norm {dims:?} eps {eps} weight {} bias {}",
                    wo.is_some(),
                    bo.is_some()
                );
                check_norm(&y, &want, DType::F32, &what);
            }
        }
    }
}

#[test]
fn layer_norm_on_views_large_inputs_and_reduced_dtypes() {
    let eps = 1e-5;
    // Strided: the normalised (last) dim has stride 17 in storage.
    let s = rand_strided(&[17, 33], 41);
    let wv = values(33, 42);
    let bv = values(33, 43);
    let (w, b) = (tensor(&wv, &[33]), tensor(&bv, &[33]));
    let want = layer_norm_ref(&values(17 * 33, 41), 33, Some(&wv), Some(&bv), eps);
    check_norm(
        &s.layer_norm(Some(&w), Some(&b), eps).unwrap(),
        &want,
        DType::F32,
        "layer_norm strided",
    );
    // Permuted and narrowed views; a broadcast view (all rows equal).
    let base = values(5 * 7 * 33, 44);
    let p = tensor(&base, &[33, 5, 7]).permute(&[1, 2, 0]).unwrap();
    let (pdata, _) = permute_ref(&base, &[33, 5, 7], &[1, 2, 0]);
    let want = layer_norm_ref(&pdata, 33, Some(&wv), None, eps);
    check_norm(
        &p.layer_norm(Some(&w), None, eps).unwrap(),
        &want,
        DType::F32,
        "layer_norm permuted",
    );
    let n = tensor(&base, &[7, 5, 33]).narrow(1, 1, 3).unwrap();
    let (ndata, _) = narrow_ref(&base, &[7, 5, 33], 1, 1, 3);
    let want = layer_norm_ref(&ndata, 33, None, Some(&bv), eps);
    check_norm(
        &n.layer_norm(None, Some(&b), eps).unwrap(),
        &want,
        DType::F32,
        "layer_norm narrowed",
    );
    let bc = tensor(&base[..33], &[1, 33]).broadcast_as(&[4, 33]).unwrap();
    let bdata = broadcast_ref(&base[..33], &[1, 33], &[4, 33]);
    let want = layer_norm_ref(&bdata, 33, Some(&wv), Some(&bv), eps);
    check_norm(
        &bc.layer_norm(Some(&w), Some(&b), eps).unwrap(),
        &want,
        DType::F32,
        "layer_norm broadcast",
    );
    // Large: [257, 257] (66049 elements) takes the parallel row path.
    let data = values(257 * 257, 45);
    let wl = values(257, 46);
    let bl = values(257, 47);
    let y = tensor(&data, &[257, 257])
        .layer_norm(Some(&tensor(&wl, &[257])), Some(&tensor(&bl, &[257])), eps)
        .unwrap();
    check_norm(
        &y,
        &layer_norm_ref(&data, 257, Some(&wl), Some(&bl), eps),
        DType::F32,
        "layer_norm large",
    );
    // bf16 / f16 input, weight and bias: the output keeps the input dtype.
    for dt in [DType::BF16, DType::F16] {
        let x = rand(&[3, 5, 33], 48).to_dtype(dt).unwrap();
        let w = tensor(&wv, &[33]).to_dtype(dt).unwrap();
        let b = tensor(&bv, &[33]).to_dtype(dt).unwrap();
        let y = x.layer_norm(Some(&w), Some(&b), eps).unwrap();
        assert_eq!(y.dtype(), dt);
        assert_eq!(y.dims(), &[3, 5, 33]);
        let want = layer_norm_ref(&vals(&x), 33, Some(&vals(&w)), Some(&vals(&b)), eps);
        check_norm(&y, &want, dt, &format!("layer_norm {dt}"));
    }
}

#[test]
fn layer_norm_rejects_bad_weight_bias_eps_and_dtypes_naming_op_and_shapes() {
    let x = rand(&[3, 5], 1);
    let w4 = rand(&[4], 2);
    let w5 = rand(&[5], 3);
    let msg = err_msg(x.layer_norm(Some(&w4), None, 1e-5));
    for needle in ["layer_norm", "weight", "[5]", "[4]"] {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
    let msg = err_msg(x.layer_norm(Some(&w5), Some(&rand(&[1, 5], 4)), 1e-5));
    for needle in ["layer_norm", "bias", "[5]", "[1, 5]"] {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
    let msg = err_msg(x.layer_norm(None, None, -0.5));
    assert!(
        msg.contains("layer_norm") && msg.contains("eps") && msg.contains("-0.5"),
        "{msg}"
    );
    let msg = err_msg(x.layer_norm(None, None, f32::NAN));
    assert!(msg.contains("layer_norm") && msg.contains("eps"), "{msg}");
    let wi = Tensor::arange(0, 5);
    let msg = err_msg(x.layer_norm(Some(&wi), None, 1e-5));
    assert!(msg.contains("layer_norm") && msg.contains("i64"), "{msg}");
    let xi = Tensor::arange(0, 6).reshape(&[2, 3]).unwrap();
    let msg = err_msg(xi.layer_norm(None, None, 1e-5));
    assert!(msg.contains("layer_norm") && msg.contains("i64"), "{msg}");
    let msg = err_msg(Tensor::scalar(1.0).layer_norm(None, None, 1e-5));
    assert!(msg.contains("layer_norm"), "{msg}");
}

// ---------------------------------------------------------------------------------------------------
// rms_norm
// ---------------------------------------------------------------------------------------------------

fn rms_norm_ref(data: &[f32], width: usize, scale: &[f32], eps: f32) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(data.len());
    for row in data.chunks(width) {
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / width as f64;
        let r = 1.0 / (ms + eps as f64).sqrt();
        for (&v, &s) in row.iter().zip(scale) {
            let xh = v as f64 * r;
            out.push((xh * s as f64, (s as f64).abs() * (xh.abs() + 1.0)));
        }
    }
    out
}

#[test]
fn rms_norm_matches_f64_reference_on_odd_widths_views_large_and_reduced_dtypes() {
    let shapes: [&[usize]; 6] = [&[1], &[3], &[17], &[4, 33], &[2, 3, 257], &[5, 1]];
    for (k, dims) in shapes.iter().enumerate() {
        let width = *dims.last().unwrap();
        let data = values(dims.iter().product(), 700 + k as u64);
        let sv: Vec<f32> = values(width, 701 + k as u64).iter().map(|v| v + 1.0).collect();
        for eps in [1e-6f32, 0.25] {
            let y = tensor(&data, dims).rms_norm(&tensor(&sv, &[width]), eps).unwrap();
            assert_eq!(y.dims(), *dims);
            assert_eq!(y.dtype(), DType::F32);
            check_norm(
                &y,
                &rms_norm_ref(&data, width, &sv, eps),
                DType::F32,
                &format!("rms_norm {dims:?} eps {eps}"),
            );
        }
    }
    let sv = values(33, 71);
    let sc = tensor(&sv, &[33]);
    let s = rand_strided(&[17, 33], 72);
    let want = rms_norm_ref(&values(17 * 33, 72), 33, &sv, 1e-5);
    check_norm(&s.rms_norm(&sc, 1e-5).unwrap(), &want, DType::F32, "rms_norm strided");
    let base = values(4 * 33 * 3, 73);
    let p = tensor(&base, &[33, 4, 3]).permute(&[1, 2, 0]).unwrap();
    let (pdata, _) = permute_ref(&base, &[33, 4, 3], &[1, 2, 0]);
    check_norm(
        &p.rms_norm(&sc, 1e-5).unwrap(),
        &rms_norm_ref(&pdata, 33, &sv, 1e-5),
        DType::F32,
        "rms_norm permuted",
    );
    let bc = tensor(&base[..33], &[1, 33]).broadcast_as(&[3, 33]).unwrap();
    let bdata = broadcast_ref(&base[..33], &[1, 33], &[3, 33]);
    check_norm(
        &bc.rms_norm(&sc, 1e-5).unwrap(),
        &rms_norm_ref(&bdata, 33, &sv, 1e-5),
        DType::F32,
        "rms_norm broadcast",
    );
    // Large: 300·257 = 77100 elements.
    let data = values(300 * 257, 74);
    let sl = values(257, 75);
    let y = tensor(&data, &[300, 257]).rms_norm(&tensor(&sl, &[257]), 1e-5).unwrap();
    check_norm(&y, &rms_norm_ref(&data, 257, &sl, 1e-5), DType::F32, "rms_norm large");
    for dt in [DType::BF16, DType::F16] {
        let x = rand(&[5, 33], 76).to_dtype(dt).unwrap();
        let s = sc.to_dtype(dt).unwrap();
        let y = x.rms_norm(&s, 1e-5).unwrap();
        assert_eq!(y.dtype(), dt);
        check_norm(
            &y,
            &rms_norm_ref(&vals(&x), 33, &vals(&s), 1e-5),
            dt,
            &format!("rms_norm {dt}"),
        );
    }
}

#[test]
fn rms_norm_rejects_bad_scale_eps_and_dtypes_naming_op_and_shapes() {
    let x = rand(&[3, 5], 1);
    let msg = err_msg(x.rms_norm(&rand(&[4], 2), 1e-5));
    for needle in ["rms_norm", "scale", "[5]", "[4]"] {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
    let msg = err_msg(x.rms_norm(&rand(&[5, 1], 2), 1e-5));
    assert!(msg.contains("rms_norm") && msg.contains("[5, 1]"), "{msg}");
    let msg = err_msg(x.rms_norm(&rand(&[5], 2), -1e-3));
    assert!(msg.contains("rms_norm") && msg.contains("eps"), "{msg}");
    let msg = err_msg(x.rms_norm(&Tensor::arange(0, 5), 1e-5));
    assert!(msg.contains("rms_norm") && msg.contains("i64"), "{msg}");
    let xi = Tensor::arange(0, 5).reshape(&[1, 5]).unwrap();
    let msg = err_msg(xi.rms_norm(&rand(&[5], 2), 1e-5));
    assert!(msg.contains("rms_norm") && msg.contains("i64"), "{msg}");
}

// ---------------------------------------------------------------------------------------------------
// group_norm
// ---------------------------------------------------------------------------------------------------

/// Reference group norm of `[B, C, *spatial]` (row-major `data`), in f64.
fn group_norm_ref(
    data: &[f32],
    dims: &[usize],
    groups: usize,
    w: Option<&[f32]>,
    b: Option<&[f32]>,
    eps: f32,
) -> Vec<(f64, f64)> {
    let (bn, c) = (dims[0], dims[1]);
    let spatial: usize = dims[2..].iter().product();
    let cg = c / groups;
    let mut out = vec![(0.0, 0.0); data.len()];
    for bi in 0..bn {
        for g in 0..groups {
            // Every (channel, position) of this (batch, group).
            let idx: Vec<usize> = (g * cg..(g + 1) * cg)
                .flat_map(|ch| (0..spatial).map(move |s| (bi * c + ch) * spatial + s))
                .collect();
            let n = idx.len() as f64;
            let mean = idx.iter().map(|&i| data[i] as f64).sum::<f64>() / n;
            let var = idx.iter().map(|&i| (data[i] as f64 - mean).powi(2)).sum::<f64>() / n;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            for &i in &idx {
                let ch = (i / spatial) % c;
                let xh = (data[i] as f64 - mean) * rstd;
                let wj = w.map_or(1.0, |w| w[ch] as f64);
                let bj = b.map_or(0.0, |b| b[ch] as f64);
                out[i] = (xh * wj + bj, wj.abs() * (xh.abs() + 1.0) + bj.abs());
            }
        }
    }
    out
}

#[test]
fn group_norm_uses_per_batch_and_group_statistics_and_per_channel_affine() {
    let cases: [(&[usize], usize); 6] = [
        (&[2, 6, 5, 3], 3),
        (&[3, 4], 2),
        (&[1, 8, 33], 4),
        (&[2, 6, 17], 1),
        (&[2, 6, 17], 6),
        (&[3, 3, 1, 1], 3),
    ];
    for (k, (dims, groups)) in cases.iter().enumerate() {
        let c = dims[1];
        let data = values(dims.iter().product(), 800 + k as u64);
        let x = tensor(&data, dims);
        let wv: Vec<f32> = values(c, 801 + k as u64).iter().map(|v| v + 1.0).collect();
        let bv = values(c, 802 + k as u64);
        let (w, b) = (tensor(&wv, &[c]), tensor(&bv, &[c]));
        for eps in [1e-5f32, 0.25] {
            for (wo, bo) in [(None, None), (Some(&w), None), (None, Some(&b)), (Some(&w), Some(&b))] {
                let y = x.group_norm(*groups, wo, bo, eps).unwrap();
                assert_eq!(y.dims(), *dims);
                assert_eq!(y.dtype(), DType::F32);
                let want = group_norm_ref(
                    &data,
                    dims,
                    *groups,
                    wo.map(|_| wv.as_slice()),
                    bo.map(|_| bv.as_slice()),
                    eps,
                );
                let what = format!(
                    "group_norm {dims:?} groups {groups} eps {eps} weight {} bias {}",
                    wo.is_some(),
                    bo.is_some()
                );
                check_norm(&y, &want, DType::F32, &what);
            }
        }
    }
}

#[test]
fn group_norm_on_views_large_inputs_and_reduced_dtypes() {
    let eps = 1e-5;
    // [2, 32, 33, 33] = 69696 elements, 8 groups.
    let dims = [2usize, 32, 33, 33];
    let data = values(dims.iter().product(), 81);
    let wv = values(32, 82);
    let bv = values(32, 83);
    let (w, b) = (tensor(&wv, &[32]), tensor(&bv, &[32]));
    let y = tensor(&data, &dims).group_norm(8, Some(&w), Some(&b), eps).unwrap();
    check_norm(
        &y,
        &group_norm_ref(&data, &dims, 8, Some(&wv), Some(&bv), eps),
        DType::F32,
        "group_norm large",
    );
    // Strided spatial dims.
    let s = rand_strided(&[2, 4, 5, 7], 84);
    let want = group_norm_ref(
        &values(2 * 4 * 5 * 7, 84),
        &[2, 4, 5, 7],
        2,
        Some(&wv[..4]),
        Some(&bv[..4]),
        eps,
    );
    let y = s
        .group_norm(2, Some(&tensor(&wv[..4], &[4])), Some(&tensor(&bv[..4], &[4])), eps)
        .unwrap();
    check_norm(&y, &want, DType::F32, "group_norm strided");
    // Channels-last storage viewed as [B, C, H, W] (permuted).
    let base = values(2 * 5 * 3 * 6, 85);
    let p = tensor(&base, &[2, 5, 3, 6]).permute(&[0, 3, 1, 2]).unwrap();
    let (pdata, pdims) = permute_ref(&base, &[2, 5, 3, 6], &[0, 3, 1, 2]);
    let y = p.group_norm(3, None, None, eps).unwrap();
    check_norm(
        &y,
        &group_norm_ref(&pdata, &pdims, 3, None, None, eps),
        DType::F32,
        "group_norm permuted",
    );
    // Narrowed channels.
    let n = tensor(&base, &[2, 6, 15]).narrow(1, 1, 4).unwrap();
    let (ndata, ndims) = narrow_ref(&base, &[2, 6, 15], 1, 1, 4);
    let y = n.group_norm(2, None, None, eps).unwrap();
    check_norm(
        &y,
        &group_norm_ref(&ndata, &ndims, 2, None, None, eps),
        DType::F32,
        "group_norm narrowed",
    );
    for dt in [DType::BF16, DType::F16] {
        let x = rand(&[2, 6, 17], 86).to_dtype(dt).unwrap();
        let w = tensor(&wv[..6], &[6]).to_dtype(dt).unwrap();
        let b = tensor(&bv[..6], &[6]).to_dtype(dt).unwrap();
        let y = x.group_norm(3, Some(&w), Some(&b), eps).unwrap();
        assert_eq!(y.dtype(), dt);
        let want = group_norm_ref(&vals(&x), &[2, 6, 17], 3, Some(&vals(&w)), Some(&vals(&b)), eps);
        check_norm(&y, &want, dt, &format!("group_norm {dt}"));
    }
}

#[test]
fn group_norm_rejects_indivisible_channels_bad_rank_zero_groups_and_bad_weight() {
    let x = rand(&[2, 6, 5], 1);
    let msg = err_msg(x.group_norm(4, None, None, 1e-5));
    assert!(msg.contains("group_norm"), "{msg}");
    assert!(msg.contains("6 channels") && msg.contains("4 groups"), "{msg}");
    let msg = err_msg(x.group_norm(0, None, None, 1e-5));
    assert!(msg.contains("group_norm") && msg.contains("0 groups"), "{msg}");
    let msg = err_msg(rand(&[6], 1).group_norm(2, None, None, 1e-5));
    assert!(msg.contains("group_norm") && msg.contains("[6]"), "{msg}");
    let msg = err_msg(x.group_norm(3, Some(&rand(&[5], 2)), None, 1e-5));
    for needle in ["group_norm", "weight", "[6]", "[5]"] {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
    let msg = err_msg(x.group_norm(3, None, Some(&rand(&[2, 3], 2)), 1e-5));
    for needle in ["group_norm", "bias", "[6]", "[2, 3]"] {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
    let xi = Tensor::arange(0, 12).reshape(&[2, 6]).unwrap();
    let msg = err_msg(xi.group_norm(3, None, None, 1e-5));
    assert!(msg.contains("group_norm") && msg.contains("i64"), "{msg}");
}

#[test]
fn group_norm_rejects_negative_or_nan_eps_like_layer_norm() {
    let x = rand(&[2, 6, 5], 1);
    for eps in [-0.5f32, f32::NAN] {
        let r = x.group_norm(3, None, None, eps);
        let msg = err_msg(r);
        assert!(msg.contains("group_norm") && msg.contains("eps"), "eps {eps}: {msg}");
    }
}
