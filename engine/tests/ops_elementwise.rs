//! Element-wise ops against naive f64 references: every `Unary` variant, every `Binary` variant with
//! NumPy broadcasting (f32, bf16, f16 and exact i64), affine / add_scalar / mul_scalar / powf, clamp.
//!
//! Tolerances (relative to the f64 value computed from the very same f32 inputs):
//! - correctly rounded IEEE ops (neg, abs, sqr, sqrt, relu, add, sub, mul, div, maximum, minimum, recip,
//!   clamp): one f32 rounding, rtol = f32::EPSILON (2^-23, twice the unit roundoff);
//! - rsqrt (1/sqrt, two roundings): rtol 3e-7; affine (x·m + a, two roundings): |err| <= eps·(|x·m| + |y|);
//! - transcendental (exp is the engine's Cephes polynomial, <= 2 ulp; tanh, sigmoid, silu built on it;
//!   log, sin, cos, powf from libm): rtol 1e-6 (~8 ulp);
//! - gelu_tanh: the argument y = sqrt(2/pi)(x + 0.044715x^3) carries ~3 roundings, and exp(-2y) turns an
//!   absolute error in 2y into a relative error of the result, so rtol = 1e-6 + 5e-7·|2y|;
//! - bf16 / f16 outputs add one rounding to the storage type: unit roundoff 2^-8 (bf16) / 2^-11 (f16).

mod common;

use common::*;
use nvg_engine::{Binary, DType, Device, Tensor, Unary};

const EPS: f64 = f32::EPSILON as f64;

// ---------------------------------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------------------------------

/// Unit roundoff of one rounding to a float storage dtype (0 for f32, whose rounding the op tolerance
/// already covers).
fn storage_rtol(dt: DType) -> f64 {
    match dt {
        DType::F32 => 0.0,
        DType::BF16 => 1.0 / 256.0,
        DType::F16 => 1.0 / 2048.0,
        other => panic!("not a float dtype: {other}"),
    }
}

/// Absolute floor of one rounding to `dt` (f16 subnormals are spaced 2^-24 apart).
fn storage_atol(dt: DType) -> f64 {
    match dt {
        DType::F16 => 3.0e-8,
        _ => 0.0,
    }
}

/// Like `assert_close64`, but equal infinities and signed zeros match and the tolerance is per element.
#[track_caller]
fn check_with(got: &[f32], want: &[f64], tol: impl Fn(usize, f64) -> f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = g as f64 == w || (g.is_nan() && w.is_nan()) || (g as f64 - w).abs() <= tol(i, w);
        assert!(ok, "{what}: element {i}: got {g:e}, want {w:e} (tol {:e})", tol(i, w));
    }
}

#[track_caller]
fn check(got: &[f32], want: &[f64], atol: f64, rtol: f64, what: &str) {
    check_with(got, want, |_, w| atol + rtol * w.abs(), what);
}

/// Row-major values of `data` (shape `dims`) with dims permuted: output dim k is input dim perm[k].
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

/// NumPy broadcast shape, written independently of the engine.
fn broadcast_shape_ref(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
            let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
            assert!(
                da == db || da == 1 || db == 1,
                "test bug: {a:?} and {b:?} do not broadcast"
            );
            da.max(db)
        })
        .collect()
}

/// Flat position in an operand of shape `dims` for a multi-index of the broadcast output.
fn operand_pos(out_idx: &[usize], dims: &[usize]) -> usize {
    let lead = out_idx.len() - dims.len();
    let idx: Vec<usize> = dims
        .iter()
        .enumerate()
        .map(|(k, &d)| if d == 1 { 0 } else { out_idx[lead + k] })
        .collect();
    ravel(&idx, dims)
}

/// Row-major values of `data` (shape `dims`) broadcast to `to`.
fn broadcast_ref<T: Copy>(data: &[T], dims: &[usize], to: &[usize]) -> Vec<T> {
    let n: usize = to.iter().product();
    (0..n).map(|i| data[operand_pos(&unravel(i, to), dims)]).collect()
}

/// Naive broadcast binary op over multi-indices.
fn binary_ref<T: Copy, R>(a: &[T], ad: &[usize], b: &[T], bd: &[usize], f: impl Fn(T, T) -> R) -> (Vec<R>, Vec<usize>) {
    let od = broadcast_shape_ref(ad, bd);
    let n: usize = od.iter().product();
    let out = (0..n)
        .map(|i| {
            let idx = unravel(i, &od);
            f(a[operand_pos(&idx, ad)], b[operand_pos(&idx, bd)])
        })
        .collect();
    (out, od)
}

/// `values(n, seed)` with `f` applied (test inputs in an op's domain).
fn vals_map(n: usize, seed: u64, f: impl Fn(f32) -> f32) -> Vec<f32> {
    values(n, seed).into_iter().map(f).collect()
}

fn tensor(data: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_slice(data, dims).unwrap()
}

fn itensor(data: &[i64], dims: &[usize]) -> Tensor {
    Tensor::from_slice(data, dims).unwrap()
}

// ---------------------------------------------------------------------------------------------------
// Unary ops
// ---------------------------------------------------------------------------------------------------

const UNARY: [Unary; 15] = [
    Unary::Neg,
    Unary::Abs,
    Unary::Exp,
    Unary::Log,
    Unary::Sqrt,
    Unary::Rsqrt,
    Unary::Recip,
    Unary::Sqr,
    Unary::Tanh,
    Unary::Sin,
    Unary::Cos,
    Unary::Sigmoid,
    Unary::Silu,
    Unary::GeluTanh,
    Unary::Relu,
];

const GELU_K: f64 = 0.797_884_560_802_865_4; // sqrt(2/pi)

/// The f64 definition of each op.
fn unary_ref(op: Unary, x: f64) -> f64 {
    match op {
        Unary::Neg => -x,
        Unary::Abs => x.abs(),
        Unary::Exp => x.exp(),
        Unary::Log => x.ln(),
        Unary::Sqrt => x.sqrt(),
        Unary::Rsqrt => 1.0 / x.sqrt(),
        Unary::Recip => 1.0 / x,
        Unary::Sqr => x * x,
        Unary::Tanh => x.tanh(),
        Unary::Sin => x.sin(),
        Unary::Cos => x.cos(),
        Unary::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Unary::Silu => x / (1.0 + (-x).exp()),
        // 0.5·x·(1 + tanh(y)) written as x·sigmoid(2y) (the same function): in f64, 1 + tanh(y) cancels to 0
        // for y < -19, which would make the reference useless for large negative x.
        Unary::GeluTanh => x / (1.0 + (-2.0 * GELU_K * (x + 0.044715 * x * x * x)).exp()),
        Unary::Relu => {
            if x > 0.0 {
                x
            } else {
                0.0
            }
        }
    }
}

/// The name each op must report (checked literally, not via `Unary::name`).
fn unary_literal_name(op: Unary) -> &'static str {
    match op {
        Unary::Neg => "neg",
        Unary::Abs => "abs",
        Unary::Exp => "exp",
        Unary::Log => "log",
        Unary::Sqrt => "sqrt",
        Unary::Rsqrt => "rsqrt",
        Unary::Recip => "recip",
        Unary::Sqr => "sqr",
        Unary::Tanh => "tanh",
        Unary::Sin => "sin",
        Unary::Cos => "cos",
        Unary::Sigmoid => "sigmoid",
        Unary::Silu => "silu",
        Unary::GeluTanh => "gelu_tanh",
        Unary::Relu => "relu",
    }
}

/// The named method of each op.
fn unary_method(x: &Tensor, op: Unary) -> nvg_engine::Result<Tensor> {
    match op {
        Unary::Neg => x.neg(),
        Unary::Abs => x.abs(),
        Unary::Exp => x.exp(),
        Unary::Log => x.log(),
        Unary::Sqrt => x.sqrt(),
        Unary::Rsqrt => x.rsqrt(),
        Unary::Recip => x.recip(),
        Unary::Sqr => x.sqr(),
        Unary::Tanh => x.tanh(),
        Unary::Sin => x.sin(),
        Unary::Cos => x.cos(),
        Unary::Sigmoid => x.sigmoid(),
        Unary::Silu => x.silu(),
        Unary::GeluTanh => x.gelu_tanh(),
        Unary::Relu => x.relu(),
    }
}

/// Maps base values in [-1, 1) into an interesting part of the op's domain.
fn unary_domain(op: Unary, v: f32) -> f32 {
    match op {
        Unary::Log | Unary::Sqrt | Unary::Rsqrt => v.abs() * 50.0 + 1e-3,
        Unary::Exp => v * 20.0,
        Unary::Sin | Unary::Cos => v * 10.0,
        Unary::Sigmoid | Unary::Silu => v * 30.0,
        Unary::GeluTanh => v * 8.0,
        Unary::Tanh => v * 6.0,
        _ => v * 8.0,
    }
}

/// A milder domain for reduced-precision storage (no f16 overflow, no huge reciprocals).
fn unary_domain_small(op: Unary, v: f32) -> f32 {
    match op {
        Unary::Log | Unary::Sqrt | Unary::Rsqrt => v.abs() * 4.0 + 0.05,
        Unary::Recip => v.signum() * (v.abs() * 3.0 + 0.25),
        _ => v * 4.0,
    }
}

/// The f32 tolerance of `op` at input `x` (see the file header).
fn unary_tol(op: Unary, x: f64, want: f64) -> f64 {
    let rtol = match op {
        Unary::Neg | Unary::Abs | Unary::Relu => 0.0,
        Unary::Sqr | Unary::Sqrt | Unary::Recip => EPS,
        Unary::Rsqrt => 3e-7,
        Unary::Exp | Unary::Log | Unary::Tanh | Unary::Sin | Unary::Cos | Unary::Sigmoid | Unary::Silu => 1e-6,
        Unary::GeluTanh => 1e-6 + 5e-7 * (2.0 * GELU_K * (x + 0.044715 * x * x * x)).abs(),
    };
    // Results below f32's normal range lose relative precision.
    rtol * want.abs() + 1e-37
}

#[track_caller]
fn check_unary(op: Unary, input: &[f32], got: &[f32], what: &str) {
    // A finite reference beyond f32's range is what f32 rounds it to (+-inf).
    let want: Vec<f64> = input
        .iter()
        .map(|&x| {
            let w = unary_ref(op, x as f64);
            if (w as f32).is_infinite() { w as f32 as f64 } else { w }
        })
        .collect();
    check_with(got, &want, |i, w| unary_tol(op, input[i] as f64, w), what);
}

#[test]
fn unary_ops_match_f64_reference_on_odd_sizes_and_size_one_dims() {
    let shapes: [&[usize]; 8] = [&[], &[1], &[3], &[17], &[33], &[257], &[3, 1, 17], &[1, 1]];
    for op in UNARY {
        for (si, dims) in shapes.iter().enumerate() {
            let n: usize = dims.iter().product();
            let input = vals_map(n, 100 + si as u64, |v| unary_domain(op, v));
            let x = tensor(&input, dims);
            for (how, y) in [("method", unary_method(&x, op)), ("unary()", x.unary(op))] {
                let y = y.unwrap();
                assert_eq!(y.dims(), *dims, "{op:?} {how} shape");
                assert_eq!(y.dtype(), DType::F32, "{op:?} {how} dtype");
                check_unary(op, &input, &vals(&y), &format!("{op:?} {how} on {dims:?}"));
            }
        }
    }
}

#[test]
fn unary_ops_special_values_match_f64_reference() {
    let common_inputs = [0.0f32, -0.0, 1.0, -1.0, 1e-30, -1e-30, 1e-40, 50.0, -50.0, 87.0, -87.0];
    for op in UNARY {
        let extra: Vec<f32> = match op {
            Unary::Exp => vec![
                88.7,
                88.8,
                -103.9,
                -104.5,
                f32::INFINITY,
                f32::NEG_INFINITY,
                -87.5,
                80.0,
            ],
            Unary::Log => vec![f32::INFINITY, f32::MIN_POSITIVE, 1.0 + f32::EPSILON, 3e38, -1.0],
            Unary::Sqrt | Unary::Rsqrt => vec![f32::INFINITY, f32::MIN_POSITIVE, 3e38, 4.0, -4.0],
            Unary::Recip => vec![f32::INFINITY, f32::NEG_INFINITY, 3e38, -1e-38],
            Unary::Tanh => vec![f32::INFINITY, f32::NEG_INFINITY, 0.624, 0.626, -0.625, 9.0, 20.0],
            Unary::Sigmoid => vec![f32::INFINITY, f32::NEG_INFINITY, 100.0, -100.0, -88.0, 17.0],
            Unary::Silu => vec![f32::INFINITY, 100.0, -100.0, -88.0, 17.0],
            Unary::GeluTanh => vec![f32::INFINITY, -10.0, -12.0, 12.0, 100.0, 1e-3, -1e-3, 3.0],
            Unary::Relu => vec![f32::INFINITY, f32::NEG_INFINITY],
            _ => vec![f32::INFINITY, f32::NEG_INFINITY, 1e20, -1e20],
        };
        let input: Vec<f32> = common_inputs.iter().copied().chain(extra).collect();
        let x = tensor(&input, &[input.len()]);
        let y = unary_method(&x, op).unwrap();
        check_unary(op, &input, &vals(&y), &format!("{op:?} special values {input:?}"));
    }
}

#[test]
fn unary_ops_propagate_nan() {
    for op in UNARY {
        let x = tensor(&[f32::NAN, 1.0, f32::NAN], &[3]);
        let y = vals(&unary_method(&x, op).unwrap());
        assert!(
            y[0].is_nan() && y[2].is_nan(),
            "{op:?}(NaN) must be NaN (as in PyTorch), got {y:?}"
        );
    }
}

#[test]
fn unary_ops_large_inputs_use_parallel_path() {
    // 257·273 = 70161 > 65536 elements, not a multiple of the 16384-element parallel chunk.
    let dims = [257usize, 273];
    for op in UNARY {
        let input = vals_map(257 * 273, 7, |v| unary_domain(op, v));
        let x = tensor(&input, &dims);
        let y = unary_method(&x, op).unwrap();
        assert_eq!(y.dims(), &dims);
        check_unary(op, &input, &vals(&y), &format!("{op:?} large contiguous"));
        // The same data viewed transposed (strided gather feeding the parallel map).
        let xt = x.transpose(0, 1).unwrap();
        let (input_t, dims_t) = permute_ref(&input, &dims, &[1, 0]);
        let yt = unary_method(&xt, op).unwrap();
        assert_eq!(yt.dims(), dims_t.as_slice());
        check_unary(op, &input_t, &vals(&yt), &format!("{op:?} large transposed"));
    }
}

#[test]
fn unary_ops_on_strided_permuted_narrowed_and_broadcast_views() {
    for (k, op) in UNARY.into_iter().enumerate() {
        let seed = 300 + k as u64;
        let f = |v: f32| unary_domain(op, v);
        // rand_strided: raw values in [-1, 1) (NaN outside the domain of log/sqrt/rsqrt, on both sides).
        let xs = rand_strided(&[17, 33], seed);
        assert!(!xs.is_contiguous());
        let raw = values(17 * 33, seed);
        check_unary(
            op,
            &raw,
            &vals(&unary_method(&xs, op).unwrap()),
            &format!("{op:?} rand_strided"),
        );
        // The same storage trick with values mapped into the op's domain.
        let base = vals_map(17 * 33, seed, f);
        let stored = tensor(&base, &[17, 33]).transpose(0, 1).unwrap().contiguous().unwrap();
        let xs_view = stored.transpose(0, 1).unwrap();
        assert!(!xs_view.is_contiguous());
        check_unary(
            op,
            &base,
            &vals(&unary_method(&xs_view, op).unwrap()),
            &format!("{op:?} strided"),
        );

        // permute of a [3, 5, 7] tensor to [7, 3, 5].
        let dims = [3usize, 5, 7];
        let data = vals_map(105, seed + 1, f);
        let xp = tensor(&data, &dims).permute(&[2, 0, 1]).unwrap();
        let (pdata, pdims) = permute_ref(&data, &dims, &[2, 0, 1]);
        let yp = unary_method(&xp, op).unwrap();
        assert_eq!(yp.dims(), pdims.as_slice());
        check_unary(op, &pdata, &vals(&yp), &format!("{op:?} permuted"));

        // narrow (offset view) of the middle dim.
        let xn = tensor(&data, &dims).narrow(1, 1, 3).unwrap();
        let (ndata, ndims) = narrow_ref(&data, &dims, 1, 1, 3);
        let yn = unary_method(&xn, op).unwrap();
        assert_eq!(yn.dims(), ndims.as_slice());
        check_unary(op, &ndata, &vals(&yn), &format!("{op:?} narrowed"));

        // broadcast_as of [4, 1, 5] to [4, 3, 5] (stride-0 dim).
        let bdata = vals_map(20, seed + 2, f);
        let xb = tensor(&bdata, &[4, 1, 5]).broadcast_as(&[4, 3, 5]).unwrap();
        let bexp = broadcast_ref(&bdata, &[4, 1, 5], &[4, 3, 5]);
        let yb = unary_method(&xb, op).unwrap();
        assert_eq!(yb.dims(), &[4, 3, 5]);
        check_unary(op, &bexp, &vals(&yb), &format!("{op:?} broadcast view"));
    }
}

#[test]
fn unary_ops_keep_bf16_and_f16_dtype_within_storage_precision() {
    for dt in [DType::BF16, DType::F16] {
        for op in UNARY {
            let dims = [3usize, 1, 37];
            let x = tensor(&vals_map(111, 42, |v| unary_domain_small(op, v)), &dims)
                .to_dtype(dt)
                .unwrap();
            // The reference starts from the values actually stored (rounded to `dt`).
            let stored = vals(&x);
            let y = unary_method(&x, op).unwrap();
            assert_eq!(y.dtype(), dt, "{op:?} must keep dtype {dt}");
            assert_eq!(y.dims(), &dims);
            let want: Vec<f64> = stored.iter().map(|&v| unary_ref(op, v as f64)).collect();
            check_with(
                &vals(&y),
                &want,
                |i, w| unary_tol(op, stored[i] as f64, w) + storage_rtol(dt) * w.abs() + storage_atol(dt),
                &format!("{op:?} on {dt}"),
            );
        }
    }
}

#[test]
fn unary_ops_reject_integer_tensors_naming_the_op_and_dtype() {
    let x = Tensor::arange(0, 6).reshape(&[2, 3]).unwrap();
    for op in UNARY {
        assert_eq!(op.name(), unary_literal_name(op));
        for r in [unary_method(&x, op), x.unary(op)] {
            let msg = err_msg(r);
            assert!(
                msg.contains(unary_literal_name(op)),
                "{op:?}: message {msg:?} must name the op"
            );
            assert!(msg.contains("i64"), "{op:?}: message {msg:?} must name the dtype");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Binary ops
// ---------------------------------------------------------------------------------------------------

const BINARY: [Binary; 6] = [
    Binary::Add,
    Binary::Sub,
    Binary::Mul,
    Binary::Div,
    Binary::Maximum,
    Binary::Minimum,
];

fn binary_literal_name(op: Binary) -> &'static str {
    match op {
        Binary::Add => "add",
        Binary::Sub => "sub",
        Binary::Mul => "mul",
        Binary::Div => "div",
        Binary::Maximum => "maximum",
        Binary::Minimum => "minimum",
    }
}

fn binary_method(a: &Tensor, b: &Tensor, op: Binary) -> nvg_engine::Result<Tensor> {
    match op {
        Binary::Add => a.add(b),
        Binary::Sub => a.sub(b),
        Binary::Mul => a.mul(b),
        Binary::Div => a.div(b),
        Binary::Maximum => a.maximum(b),
        Binary::Minimum => a.minimum(b),
    }
}

fn binary_f64(op: Binary, a: f64, b: f64) -> f64 {
    match op {
        Binary::Add => a + b,
        Binary::Sub => a - b,
        Binary::Mul => a * b,
        Binary::Div => a / b,
        Binary::Maximum => a.max(b),
        Binary::Minimum => a.min(b),
    }
}

/// Truncating integer semantics, computed with i128 so the reference itself cannot overflow.
fn binary_i128(op: Binary, a: i64, b: i64) -> i64 {
    let (a, b) = (a as i128, b as i128);
    let r = match op {
        Binary::Add => a + b,
        Binary::Sub => a - b,
        Binary::Mul => a * b,
        Binary::Div => a / b,
        Binary::Maximum => a.max(b),
        Binary::Minimum => a.min(b),
    };
    r as i64 // wraps like two's complement arithmetic
}

/// Runs `op` on f32 tensors `a` (values `av`, shape `ad`) and `b`, via the named method and `binary()`,
/// and checks shape, dtype and values (one f32 rounding) against the f64 reference.
#[track_caller]
fn check_binary_f32(op: Binary, a: &Tensor, av: &[f32], ad: &[usize], b: &Tensor, bv: &[f32], bd: &[usize]) {
    let (want, od) = binary_ref(av, ad, bv, bd, |x, y| binary_f64(op, x as f64, y as f64));
    for (how, r) in [("method", binary_method(a, b, op)), ("binary()", a.binary(b, op))] {
        let y = r.unwrap_or_else(|e| panic!("{op:?} {ad:?} with {bd:?}: {e}"));
        assert_eq!(y.dims(), od.as_slice(), "{op:?} {how} shape for {ad:?} with {bd:?}");
        assert_eq!(y.dtype(), DType::F32);
        check(&vals(&y), &want, 0.0, EPS, &format!("{op:?} {how} {ad:?} with {bd:?}"));
    }
}

#[test]
fn binary_ops_broadcast_both_operands_like_numpy() {
    let pairs: [(&[usize], &[usize]); 14] = [
        (&[3, 1, 5], &[4, 1]),
        (&[4, 1], &[3, 1, 5]),
        (&[2, 3, 4], &[4]),
        (&[2, 3, 4], &[1]),
        (&[1], &[2, 3, 4]),
        (&[], &[3, 17]),
        (&[3, 17], &[]),
        (&[3, 1], &[1, 33]),
        (&[2, 1, 3, 1], &[1, 5, 1, 7]),
        (&[5, 1, 1], &[1, 1, 9]),
        (&[17], &[17]),
        (&[257], &[257]),
        (&[1, 1], &[1, 1]),
        (&[33, 1], &[33]),
    ];
    for op in BINARY {
        for (k, (ad, bd)) in pairs.iter().enumerate() {
            let av = vals_map(ad.iter().product(), 10 + k as u64, |v| v * 4.0);
            // Divisors kept away from zero so the quotient is finite; signs still mixed.
            let bv = vals_map(bd.iter().product(), 50 + k as u64, |v| v * 4.0 + v.signum() * 0.125);
            check_binary_f32(op, &tensor(&av, ad), &av, ad, &tensor(&bv, bd), &bv, bd);
        }
    }
}

#[test]
fn binary_ops_broadcast_middle_and_leading_dims_hand_checked() {
    // [2, 3, 1] + [3, 1]... explicit numbers a person can verify.
    let a = tensor(&[1.0, 2.0, 3.0, 10.0, 20.0, 30.0], &[2, 3, 1]);
    let b = tensor(&[100.0, 200.0, 300.0, 400.0], &[1, 4]);
    let y = a.add(&b).unwrap();
    assert_eq!(y.dims(), &[2, 3, 4]);
    let v = vals(&y);
    assert_eq!(&v[..4], &[101.0, 201.0, 301.0, 401.0]);
    assert_eq!(&v[20..], &[130.0, 230.0, 330.0, 430.0]);
    let d = tensor(&[8.0, 6.0], &[2, 1])
        .div(&tensor(&[2.0, 4.0, -8.0], &[3]))
        .unwrap();
    assert_eq!(d.dims(), &[2, 3]);
    assert_eq!(vals(&d), vec![4.0, 2.0, -1.0, 3.0, 1.5, -0.75]);
    let s = tensor(&[5.0], &[1])
        .sub(&tensor(&[1.0, 2.0, 3.0, 4.0], &[2, 2]))
        .unwrap();
    assert_eq!(s.dims(), &[2, 2]);
    assert_eq!(vals(&s), vec![4.0, 3.0, 2.0, 1.0]);
}

#[test]
fn binary_ops_on_strided_permuted_narrowed_and_broadcast_views() {
    for (k, op) in BINARY.into_iter().enumerate() {
        let seed = 700 + 10 * k as u64;
        // Strided (stored transposed) with a contiguous operand of the same shape.
        let a = rand_strided(&[17, 33], seed);
        let av = values(17 * 33, seed);
        let bv = vals_map(17 * 33, seed + 1, |v| v + v.signum() * 0.125);
        check_binary_f32(op, &a, &av, &[17, 33], &tensor(&bv, &[17, 33]), &bv, &[17, 33]);
        // Strided on the right, broadcast [33] on the left.
        let cv = values(33, seed + 2);
        let b = rand_strided(&[17, 33], seed + 3);
        let bv2: Vec<f32> = values(17 * 33, seed + 3);
        check_binary_f32(op, &tensor(&cv, &[33]), &cv, &[33], &b, &bv2, &[17, 33]);

        // Permuted [3, 5, 7] -> [7, 3, 5] against a broadcast [3, 1].
        let dims = [3usize, 5, 7];
        let pv = values(105, seed + 4);
        let p = tensor(&pv, &dims).permute(&[2, 0, 1]).unwrap();
        let (pvv, pd) = permute_ref(&pv, &dims, &[2, 0, 1]);
        let qv = vals_map(3, seed + 5, |v| v + v.signum() * 0.125);
        check_binary_f32(op, &p, &pvv, &pd, &tensor(&qv, &[3, 1]), &qv, &[3, 1]);

        // Narrowed (offset + strided) view of dim 2 against a permuted view of the same shape.
        let n = tensor(&pv, &dims).narrow(2, 2, 4).unwrap();
        let (nv, nd) = narrow_ref(&pv, &dims, 2, 2, 4);
        let mdims = [4usize, 5, 3];
        let mv = vals_map(60, seed + 6, |v| v + v.signum() * 0.125);
        let m = tensor(&mv, &mdims).permute(&[2, 1, 0]).unwrap();
        let (mvv, md) = permute_ref(&mv, &mdims, &[2, 1, 0]);
        assert_eq!(nd, md);
        check_binary_f32(op, &n, &nv, &nd, &m, &mvv, &md);

        // An explicit broadcast_as view (stride 0 inside the operand) with a transposed operand.
        let bcv = values(5, seed + 7);
        let bc = tensor(&bcv, &[1, 5]).broadcast_as(&[4, 5]).unwrap();
        let bce = broadcast_ref(&bcv, &[1, 5], &[4, 5]);
        let tv = vals_map(20, seed + 8, |v| v + v.signum() * 0.125);
        let t = tensor(&tv, &[5, 4]).transpose(0, 1).unwrap();
        let (tvv, td) = permute_ref(&tv, &[5, 4], &[1, 0]);
        check_binary_f32(op, &bc, &bce, &[4, 5], &t, &tvv, &td);
        // Broadcast view combined with further broadcasting: [4, 5] view with [3, 1, 1].
        let ev = vals_map(3, seed + 9, |v| v + v.signum() * 0.125);
        check_binary_f32(op, &bc, &bce, &[4, 5], &tensor(&ev, &[3, 1, 1]), &ev, &[3, 1, 1]);
    }
}

#[test]
fn binary_ops_large_inputs_use_parallel_paths() {
    for (k, op) in BINARY.into_iter().enumerate() {
        let seed = 900 + 10 * k as u64;
        let nz = |v: f32| v + v.signum() * 0.125;
        // Many rows: [257, 257] with a [257] row vector.
        let av = values(257 * 257, seed);
        let bv = vals_map(257, seed + 1, nz);
        check_binary_f32(
            op,
            &tensor(&av, &[257, 257]),
            &av,
            &[257, 257],
            &tensor(&bv, &[257]),
            &bv,
            &[257],
        );
        // One long contiguous row with a scalar-shaped [1] operand (on either side).
        let lv = values(70001, seed + 2);
        let sv = [0.375f32];
        check_binary_f32(op, &tensor(&lv, &[70001]), &lv, &[70001], &tensor(&sv, &[1]), &sv, &[1]);
        check_binary_f32(op, &tensor(&sv, &[1]), &sv, &[1], &tensor(&lv, &[70001]), &lv, &[70001]);
        // One long strided row: column 1 of a [70001, 2] tensor, viewed as [1, 70001] (stride 2).
        let wv = values(70001 * 2, seed + 3);
        let w = tensor(&wv, &[70001, 2])
            .transpose(0, 1)
            .unwrap()
            .narrow(0, 1, 1)
            .unwrap();
        let (wt, wtd) = permute_ref(&wv, &[70001, 2], &[1, 0]);
        let (wn, wnd) = narrow_ref(&wt, &wtd, 0, 1, 1);
        let zv = vals_map(70001, seed + 4, nz);
        check_binary_f32(op, &w, &wn, &wnd, &tensor(&zv, &[70001]), &zv, &[70001]);
        // Both operands broadcast: [33, 1, 257] with [1, 9, 1] (76329 elements).
        let xv = values(33 * 257, seed + 5);
        let yv = vals_map(9, seed + 6, nz);
        check_binary_f32(
            op,
            &tensor(&xv, &[33, 1, 257]),
            &xv,
            &[33, 1, 257],
            &tensor(&yv, &[1, 9, 1]),
            &yv,
            &[1, 9, 1],
        );
    }
}

#[test]
fn binary_ops_keep_bf16_and_f16_dtype_within_storage_precision() {
    let cases: [(&[usize], &[usize]); 3] = [(&[3, 1, 5], &[4, 1]), (&[2, 3, 4], &[1]), (&[257, 257], &[257])];
    for dt in [DType::BF16, DType::F16] {
        for op in BINARY {
            for (k, (ad, bd)) in cases.iter().enumerate() {
                let a = rand(ad, 20 + k as u64).affine(4.0, 0.0).unwrap().to_dtype(dt).unwrap();
                let b = tensor(
                    &vals_map(bd.iter().product(), 30 + k as u64, |v| v * 4.0 + v.signum() * 0.125),
                    bd,
                )
                .to_dtype(dt)
                .unwrap();
                let (av, bv) = (vals(&a), vals(&b));
                let (want, od) = binary_ref(&av, ad, &bv, bd, |x, y| binary_f64(op, x as f64, y as f64));
                let y = binary_method(&a, &b, op).unwrap();
                assert_eq!(y.dtype(), dt, "{op:?} must keep dtype {dt}");
                assert_eq!(y.dims(), od.as_slice());
                check(
                    &vals(&y),
                    &want,
                    storage_atol(dt),
                    EPS + storage_rtol(dt),
                    &format!("{op:?} {ad:?} with {bd:?} on {dt}"),
                );
            }
        }
    }
    // A reduced-precision strided operand goes through the same widening path.
    let stored = rand(&[17, 9], 3).to_dtype(DType::BF16).unwrap();
    let a = stored.transpose(0, 1).unwrap();
    assert!(!a.is_contiguous());
    let (av, _) = permute_ref(&vals(&stored), &[17, 9], &[1, 0]);
    let b = rand(&[17], 4).to_dtype(DType::BF16).unwrap();
    let bv = vals(&b);
    let (want, _) = binary_ref(&av, &[9, 17], &bv, &[17], |x, y| x as f64 * y as f64);
    let y = a.mul(&b).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    check(
        &vals(&y),
        &want,
        0.0,
        EPS + storage_rtol(DType::BF16),
        "bf16 strided mul",
    );
}

#[test]
fn binary_ops_on_i64_compute_exactly_in_i64() {
    // Values beyond 2^53 (not representable in f64/f32) prove the arithmetic is integer.
    let big = (1i64 << 60) + 1;
    let av: Vec<i64> = vec![big, -7, 7, -8, 0, 13, i64::MAX - 3, 5, -1, 1 << 40, 9, -9];
    let bv: Vec<i64> = vec![2, -2, 3, 1];
    let pairs: [(&[usize], &[usize]); 3] = [(&[3, 4], &[4]), (&[3, 1, 4], &[2, 1]), (&[12], &[1])];
    for op in BINARY {
        for (ad, bd) in pairs {
            let bvals: Vec<i64> = bv.iter().cycle().take(bd.iter().product()).copied().collect();
            let a = itensor(&av, ad);
            let b = itensor(&bvals, bd);
            let (want, od) = binary_ref(&av, ad, &bvals, bd, |x, y| binary_i128(op, x, y));
            for r in [binary_method(&a, &b, op), a.binary(&b, op)] {
                let y = r.unwrap();
                assert_eq!(y.dtype(), DType::I64, "{op:?} on i64 must stay i64");
                assert_eq!(y.dims(), od.as_slice());
                assert_eq!(y.to_i64_vec().unwrap(), want, "{op:?} {ad:?} with {bd:?}");
            }
        }
    }
    // Exact spot checks: truncating division, large sums, wrapping add.
    let q = itensor(&[-7, 7, -7, 7], &[4])
        .div(&itensor(&[2, -2, -2, 2], &[4]))
        .unwrap();
    assert_eq!(q.to_i64_vec().unwrap(), vec![-3, -3, 3, 3]);
    let s = itensor(&[big], &[1]).add(&itensor(&[1], &[1])).unwrap();
    assert_eq!(s.to_i64_vec().unwrap(), vec![big + 1]);
    let w = itensor(&[i64::MAX], &[1]).add(&itensor(&[1], &[1])).unwrap();
    assert_eq!(w.to_i64_vec().unwrap(), vec![i64::MIN], "i64 add wraps");
    // Non-contiguous i64 operands: a permuted [4, 3] view and a broadcast_as view.
    let base: Vec<i64> = (0..12).map(|i| i * 1_000_000_007 - 5).collect();
    let p = itensor(&base, &[4, 3]).transpose(0, 1).unwrap();
    let (pv, pd) = permute_ref(&base, &[4, 3], &[1, 0]);
    let r = itensor(&[3, -4, 5], &[3, 1]).broadcast_as(&[3, 4]).unwrap();
    let rv = broadcast_ref(&[3i64, -4, 5], &[3, 1], &[3, 4]);
    for op in BINARY {
        let (want, _) = binary_ref(&pv, &pd, &rv, &[3, 4], |x, y| binary_i128(op, x, y));
        let y = binary_method(&p, &r, op).unwrap();
        assert_eq!(y.to_i64_vec().unwrap(), want, "{op:?} on i64 views");
    }
}

#[test]
fn binary_i64_division_by_zero_is_an_error() {
    let a = itensor(&[1, 2, 3, 4, 5, 6], &[2, 3]);
    // The zero only appears through broadcasting.
    let b = itensor(&[1, 0, 2], &[3]);
    let msg = err_msg(a.div(&b));
    assert!(msg.contains("div"), "{msg}");
    assert!(msg.contains("zero"), "{msg}");
    let msg = err_msg(a.binary(&itensor(&[0], &[1]), Binary::Div));
    assert!(msg.contains("div") && msg.contains("zero"), "{msg}");
    // Float division by zero is IEEE, not an error.
    let f = tensor(&[1.0, -1.0, 0.0], &[3]).div(&tensor(&[0.0], &[1])).unwrap();
    let v = vals(&f);
    assert_eq!(v[0], f32::INFINITY);
    assert_eq!(v[1], f32::NEG_INFINITY);
    assert!(v[2].is_nan());
}

#[test]
fn binary_i64_min_divided_by_minus_one_does_not_panic() {
    // i64::MIN / -1 overflows; Rust's `/` panics on it in every build profile. The op must either wrap
    // (like its add/sub/mul, giving i64::MIN) or return an error naming the op; never panic.
    let a = itensor(&[i64::MIN, 6], &[2]);
    let b = itensor(&[-1], &[1]);
    let r = std::panic::catch_unwind(|| a.div(&b));
    match r {
        Err(_) => panic!("div of i64::MIN by -1 panicked instead of wrapping or returning an error"),
        Ok(Ok(t)) => assert_eq!(t.to_i64_vec().unwrap(), vec![i64::MIN, -6]),
        Ok(Err(e)) => assert!(e.to_string().contains("div"), "{e}"),
    }
}

#[test]
fn binary_ops_on_empty_tensors_return_empty_results() {
    let cases: [(&[usize], &[usize], &[usize]); 4] = [
        (&[0], &[0], &[0]),
        (&[3, 0], &[3, 0], &[3, 0]),
        (&[0, 4], &[4], &[0, 4]),
        (&[2, 1, 3], &[0, 1], &[2, 0, 3]),
    ];
    for op in BINARY {
        for (ad, bd, od) in cases {
            let a = rand(ad, 1);
            let b = rand(bd, 2);
            let r = std::panic::catch_unwind(|| binary_method(&a, &b, op));
            let y = match r {
                Ok(r) => r.unwrap(),
                Err(_) => panic!("{op:?} on empty f32 {ad:?} with {bd:?} panicked"),
            };
            assert_eq!(y.dims(), od, "{op:?} on {ad:?} with {bd:?}");
            assert_eq!(y.numel(), 0);
            let ai = Tensor::zeros(ad, DType::I64, Device::Cpu).unwrap();
            let bi = Tensor::ones(bd, DType::I64, Device::Cpu).unwrap();
            let r = std::panic::catch_unwind(|| binary_method(&ai, &bi, op));
            let yi = match r {
                Ok(r) => r.unwrap(),
                Err(_) => panic!("{op:?} on empty i64 {ad:?} with {bd:?} panicked"),
            };
            assert_eq!(yi.dims(), od);
        }
    }
}

#[test]
fn binary_maximum_minimum_propagate_nan_like_torch() {
    // torch.maximum / torch.minimum: "If one of the elements being compared is a NaN, then that element
    // is returned." (f32::max would silently drop the NaN.)
    let a = tensor(&[f32::NAN, 1.0, f32::NAN, 2.0], &[4]);
    let b = tensor(&[0.0, f32::NAN, f32::NAN, 3.0], &[4]);
    for op in [Binary::Maximum, Binary::Minimum] {
        let v = vals(&binary_method(&a, &b, op).unwrap());
        assert!(
            v[0].is_nan() && v[1].is_nan() && v[2].is_nan(),
            "{op:?} lost a NaN: {v:?}"
        );
        assert_eq!(v[3], if op == Binary::Maximum { 3.0 } else { 2.0 });
    }
}

#[test]
fn binary_ops_reject_shapes_that_do_not_broadcast_naming_op_and_shapes() {
    let pairs: [(&[usize], &[usize]); 4] = [
        (&[3, 2], &[3]),
        (&[2, 3], &[3, 2]),
        (&[4], &[5]),
        (&[2, 3, 4], &[2, 1, 3]),
    ];
    for op in BINARY {
        for (ad, bd) in pairs {
            for (a, b) in [
                (rand(ad, 1), rand(bd, 2)),
                (
                    rand(ad, 1).to_dtype(DType::I64).unwrap(),
                    rand(bd, 2).to_dtype(DType::I64).unwrap(),
                ),
            ] {
                let msg = err_msg(binary_method(&a, &b, op));
                assert!(msg.contains(binary_literal_name(op)), "{op:?}: {msg}");
                assert!(msg.contains(&format!("{ad:?}")), "{op:?}: {msg} must show {ad:?}");
                assert!(msg.contains(&format!("{bd:?}")), "{op:?}: {msg} must show {bd:?}");
                let msg2 = err_msg(a.binary(&b, op));
                assert!(msg2.contains(binary_literal_name(op)), "{op:?}: {msg2}");
            }
        }
    }
}

#[test]
fn binary_ops_reject_mismatched_dtypes_naming_op_shapes_and_dtypes() {
    let f = rand(&[2, 3], 1);
    let i = Tensor::arange(0, 3);
    let h = rand(&[3], 2).to_dtype(DType::BF16).unwrap();
    for op in BINARY {
        assert_eq!(op.name(), binary_literal_name(op));
        let name = binary_literal_name(op);
        let msg = err_msg(binary_method(&f, &i, op));
        for needle in [name, "f32", "i64", "[2, 3]", "[3]"] {
            assert!(msg.contains(needle), "{op:?} f32 with i64: {msg:?} lacks {needle:?}");
        }
        let msg = err_msg(binary_method(&i, &f, op));
        for needle in [name, "f32", "i64"] {
            assert!(msg.contains(needle), "{op:?} i64 with f32: {msg:?} lacks {needle:?}");
        }
        let msg = err_msg(binary_method(&f, &h, op));
        for needle in [name, "f32", "bf16"] {
            assert!(msg.contains(needle), "{op:?} f32 with bf16: {msg:?} lacks {needle:?}");
        }
    }
}

#[test]
fn binary_ops_reject_u8_operands_naming_op_and_dtype() {
    let a = Tensor::from_vec(vec![1u8, 2, 3], &[3]).unwrap();
    for op in BINARY {
        let msg = err_msg(binary_method(&a, &a, op));
        assert!(
            msg.contains(binary_literal_name(op)) && msg.contains("u8"),
            "{op:?}: {msg}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// affine, add_scalar, mul_scalar, powf
// ---------------------------------------------------------------------------------------------------

/// x·m + a evaluated as two f32 roundings: |err| <= eps·(|x·m| + |y|).
#[track_caller]
fn check_affine(got: &[f32], input: &[f32], m: f32, a: f32, extra_rtol: f64, extra_atol: f64, what: &str) {
    let want: Vec<f64> = input.iter().map(|&x| x as f64 * m as f64 + a as f64).collect();
    check_with(
        got,
        &want,
        |i, w| EPS * ((input[i] as f64 * m as f64).abs() + w.abs()) + extra_rtol * w.abs() + extra_atol,
        what,
    );
}

#[test]
fn affine_add_scalar_mul_scalar_match_f64_reference() {
    let params = [(2.5f32, -0.75f32), (-1.0, 0.0), (0.0, 3.0), (1e-3, 1e3), (1.0, 0.1)];
    let shapes: [&[usize]; 6] = [&[], &[1], &[17], &[3, 1, 33], &[257], &[257, 273]];
    for (k, dims) in shapes.iter().enumerate() {
        let input = values(dims.iter().product(), 60 + k as u64);
        let x = tensor(&input, dims);
        for (m, a) in params {
            let y = x.affine(m, a).unwrap();
            assert_eq!(y.dims(), *dims);
            check_affine(
                &vals(&y),
                &input,
                m,
                a,
                0.0,
                0.0,
                &format!("affine({m}, {a}) on {dims:?}"),
            );
        }
        check_affine(
            &vals(&x.add_scalar(-0.3).unwrap()),
            &input,
            1.0,
            -0.3,
            0.0,
            0.0,
            "add_scalar",
        );
        check_affine(
            &vals(&x.mul_scalar(7.25).unwrap()),
            &input,
            7.25,
            0.0,
            0.0,
            0.0,
            "mul_scalar",
        );
    }
    // Non-contiguous inputs.
    let s = rand_strided(&[33, 17], 5);
    check_affine(
        &vals(&s.affine(3.0, 1.0).unwrap()),
        &values(33 * 17, 5),
        3.0,
        1.0,
        0.0,
        0.0,
        "affine strided",
    );
    let base = values(105, 6);
    let p = tensor(&base, &[3, 5, 7]).permute(&[1, 2, 0]).unwrap();
    let (pv, _) = permute_ref(&base, &[3, 5, 7], &[1, 2, 0]);
    check_affine(
        &vals(&p.mul_scalar(-2.0).unwrap()),
        &pv,
        -2.0,
        0.0,
        0.0,
        0.0,
        "mul_scalar permuted",
    );
    let n = tensor(&base, &[3, 5, 7]).narrow(2, 3, 4).unwrap();
    let (nv, _) = narrow_ref(&base, &[3, 5, 7], 2, 3, 4);
    check_affine(
        &vals(&n.add_scalar(0.5).unwrap()),
        &nv,
        1.0,
        0.5,
        0.0,
        0.0,
        "add_scalar narrowed",
    );
    let b = tensor(&base[..7], &[7]).broadcast_as(&[2, 7]).unwrap();
    let bv = broadcast_ref(&base[..7], &[7], &[2, 7]);
    check_affine(
        &vals(&b.affine(0.5, 0.25).unwrap()),
        &bv,
        0.5,
        0.25,
        0.0,
        0.0,
        "affine broadcast view",
    );
}

const POW_EXPONENTS: [f32; 7] = [2.0, 3.0, 0.5, -1.5, 1.0 / 3.0, 0.0, -2.0];

#[test]
fn powf_matches_f64_for_integer_fractional_and_negative_exponents() {
    for (k, dims) in [&[17usize][..], &[3, 1, 33], &[257, 273]].iter().enumerate() {
        let n: usize = dims.iter().product();
        // Positive bases for every exponent.
        let pos = vals_map(n, 80 + k as u64, |v| v.abs() * 8.0 + 0.01);
        let x = tensor(&pos, dims);
        for e in POW_EXPONENTS {
            let y = x.powf(e).unwrap();
            assert_eq!(y.dims(), *dims);
            let want: Vec<f64> = pos.iter().map(|&v| (v as f64).powf(e as f64)).collect();
            check(&vals(&y), &want, 0.0, 1e-6, &format!("powf({e}) on {dims:?}"));
        }
    }
    // Negative bases: integer exponents are defined, fractional ones give NaN (as in f64 / PyTorch).
    let neg = [-2.0f32, -0.5, -3.0];
    let x = tensor(&neg, &[3]);
    for e in [2.0f32, 3.0, -1.0, 0.5] {
        let want: Vec<f64> = neg.iter().map(|&v| (v as f64).powf(e as f64)).collect();
        check(
            &vals(&x.powf(e).unwrap()),
            &want,
            0.0,
            1e-6,
            &format!("powf({e}) of negatives"),
        );
    }
    // Zero with a negative exponent is +inf; anything to the 0 is 1.
    let z = tensor(&[0.0, 5.0], &[2]);
    assert_eq!(vals(&z.powf(-1.0).unwrap())[0], f32::INFINITY);
    assert_eq!(vals(&z.powf(0.0).unwrap()), vec![1.0, 1.0]);
    // Strided input (mixed signs, so integer exponents only).
    let s = rand_strided(&[9, 33], 8);
    let sv = values(9 * 33, 8);
    for e in [2.0f32, 3.0] {
        let want: Vec<f64> = sv.iter().map(|&v| (v as f64).powf(e as f64)).collect();
        check(
            &vals(&s.powf(e).unwrap()),
            &want,
            1e-37,
            1e-6,
            &format!("powf({e}) strided"),
        );
    }
}

#[test]
fn scalar_ops_and_clamp_keep_bf16_and_f16_dtype_within_storage_precision() {
    for dt in [DType::BF16, DType::F16] {
        let x = rand(&[5, 1, 33], 9).affine(4.0, 0.0).unwrap().to_dtype(dt).unwrap();
        let xv = vals(&x);
        let r = storage_rtol(dt);
        let at = storage_atol(dt);

        let y = x.affine(1.5, -0.25).unwrap();
        assert_eq!(y.dtype(), dt);
        check_affine(&vals(&y), &xv, 1.5, -0.25, r, at, &format!("affine on {dt}"));
        let y = x.add_scalar(0.75).unwrap();
        assert_eq!(y.dtype(), dt);
        check_affine(&vals(&y), &xv, 1.0, 0.75, r, at, &format!("add_scalar on {dt}"));
        let y = x.mul_scalar(-3.0).unwrap();
        assert_eq!(y.dtype(), dt);
        check_affine(&vals(&y), &xv, -3.0, 0.0, r, at, &format!("mul_scalar on {dt}"));

        let y = x.abs().unwrap().powf(1.5).unwrap();
        assert_eq!(y.dtype(), dt);
        let want: Vec<f64> = xv.iter().map(|&v| (v.abs() as f64).powf(1.5)).collect();
        check(&vals(&y), &want, at, 1e-6 + r, &format!("powf on {dt}"));

        let y = x.clamp(-1.3, 0.7).unwrap();
        assert_eq!(y.dtype(), dt);
        let want: Vec<f64> = xv.iter().map(|&v| (v as f64).clamp(-1.3, 0.7)).collect();
        check(&vals(&y), &want, at, r, &format!("clamp on {dt}"));
    }
}

#[test]
fn scalar_ops_and_clamp_reject_integer_tensors_naming_the_op() {
    let i = Tensor::arange(0, 4).reshape(&[2, 2]).unwrap();
    let cases: [(&str, nvg_engine::Result<Tensor>); 5] = [
        ("affine", i.affine(2.0, 1.0)),
        ("add_scalar", i.add_scalar(1.0)),
        ("mul_scalar", i.mul_scalar(2.0)),
        ("powf", i.powf(2.0)),
        ("clamp", i.clamp(0.0, 1.0)),
    ];
    for (name, r) in cases {
        let msg = err_msg(r);
        assert!(msg.contains(name) && msg.contains("i64"), "{name}: {msg}");
    }
    let u = Tensor::from_vec(vec![1u8, 2], &[2]).unwrap();
    let msg = err_msg(u.clamp(0.0, 1.0));
    assert!(msg.contains("clamp") && msg.contains("u8"), "{msg}");
}

// ---------------------------------------------------------------------------------------------------
// clamp
// ---------------------------------------------------------------------------------------------------

fn clamp_ref(x: f32, lo: f32, hi: f32) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else if x < lo {
        lo as f64
    } else if x > hi {
        hi as f64
    } else {
        x as f64
    }
}

#[test]
fn clamp_matches_reference_keeps_nan_and_handles_infinite_bounds() {
    let bounds = [
        (-0.5f32, 0.25f32),
        (0.1, 0.1),
        (f32::NEG_INFINITY, 0.0),
        (0.0, f32::INFINITY),
        (-2.0, 2.0),
    ];
    for (k, dims) in [&[1usize][..], &[17], &[3, 1, 33], &[257, 273]].iter().enumerate() {
        let mut input = values(dims.iter().product(), 90 + k as u64);
        input[0] = f32::NAN;
        if input.len() > 2 {
            input[1] = f32::INFINITY;
            input[2] = f32::NEG_INFINITY;
        }
        let x = tensor(&input, dims);
        for (lo, hi) in bounds {
            let y = x.clamp(lo, hi).unwrap();
            assert_eq!(y.dims(), *dims);
            let want: Vec<f64> = input.iter().map(|&v| clamp_ref(v, lo, hi)).collect();
            check(&vals(&y), &want, 0.0, 0.0, &format!("clamp({lo}, {hi}) on {dims:?}"));
        }
    }
    // Views.
    let s = rand_strided(&[17, 9], 4);
    let want: Vec<f64> = values(17 * 9, 4).iter().map(|&v| clamp_ref(v, -0.2, 0.3)).collect();
    check(&vals(&s.clamp(-0.2, 0.3).unwrap()), &want, 0.0, 0.0, "clamp strided");
    let base = values(60, 5);
    let p = tensor(&base, &[3, 4, 5])
        .permute(&[2, 0, 1])
        .unwrap()
        .narrow(0, 1, 3)
        .unwrap();
    let (pv, pd) = permute_ref(&base, &[3, 4, 5], &[2, 0, 1]);
    let (nv, _) = narrow_ref(&pv, &pd, 0, 1, 3);
    let want: Vec<f64> = nv.iter().map(|&v| clamp_ref(v, -0.1, 0.1)).collect();
    check(
        &vals(&p.clamp(-0.1, 0.1).unwrap()),
        &want,
        0.0,
        0.0,
        "clamp permuted+narrowed",
    );
    let b = tensor(&base[..5], &[5, 1]).broadcast_as(&[5, 3]).unwrap();
    let bv = broadcast_ref(&base[..5], &[5, 1], &[5, 3]);
    let want: Vec<f64> = bv.iter().map(|&v| clamp_ref(v, 0.0, 0.5)).collect();
    check(
        &vals(&b.clamp(0.0, 0.5).unwrap()),
        &want,
        0.0,
        0.0,
        "clamp broadcast view",
    );
}

#[test]
fn clamp_with_min_greater_than_max_is_an_error_naming_both_bounds() {
    let x = rand(&[3, 2], 1);
    let msg = err_msg(x.clamp(2.0, 1.0));
    assert!(msg.contains("clamp"), "{msg}");
    assert!(msg.contains('2') && msg.contains('1'), "{msg} must show both bounds");
    let msg = err_msg(x.clamp(0.5, -0.5));
    assert!(
        msg.contains("clamp") && msg.contains("0.5") && msg.contains("-0.5"),
        "{msg}"
    );
}

#[test]
fn div_scalar_is_a_true_division_not_a_reciprocal_multiply() {
    // 1.608 has no exact reciprocal: x / 1.608 and x * (1 / 1.608) differ in the last bit for some x.
    let x = rand(&[4096], 77).mul_scalar(10.0).unwrap();
    let got = vals(&x.div_scalar(1.608).unwrap());
    let want: Vec<f32> = vals(&x).iter().map(|v| v / 1.608).collect();
    assert_eq!(got, want);
    let recip: Vec<f32> = vals(&x).iter().map(|v| v * (1.0 / 1.608f32)).collect();
    assert_ne!(
        got, recip,
        "test data should tell division from multiplication by the reciprocal"
    );
    let msg = err_msg(Tensor::arange(0, 3).div_scalar(2.0));
    assert!(msg.contains("div_scalar") && msg.contains("i64"), "{msg}");
}
