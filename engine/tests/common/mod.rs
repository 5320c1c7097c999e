//! Helpers shared by the engine's op tests: deterministic test data, strided (non-contiguous) inputs
//! and tolerance checks. Naive reference implementations live beside the tests that use them.
#![allow(dead_code)]

use nvg_engine::{DType, Tensor};

/// Deterministic pseudo-random values in [-1, 1) (a simple LCG keyed by `seed`), so failures
/// reproduce without depending on the engine's own RNG.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// An f32 tensor of shape `dims` filled with `values(.., seed)`.
pub fn rand(dims: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(values(dims.iter().product(), seed), dims).unwrap()
}

/// A tensor equal to `rand(dims, seed)` but stored transposed in its last two dims (so the view is
/// not contiguous). Requires rank >= 2.
pub fn rand_strided(dims: &[usize], seed: u64) -> Tensor {
    let r = dims.len();
    let mut swapped = dims.to_vec();
    swapped.swap(r - 1, r - 2);
    let base = rand(dims, seed);
    // Store the transposed data, then view it transposed back: same values, strided layout.
    let stored = base.transpose(-1, -2).unwrap().contiguous().unwrap();
    let view = stored.transpose(-1, -2).unwrap();
    assert!(!view.is_contiguous() || dims[r - 1] == 1 || dims[r - 2] == 1);
    assert_eq!(view.dims(), dims);
    view
}

/// Row-major f32 values of any float tensor.
pub fn vals(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec().unwrap()
}

/// Asserts `|got - want| <= atol + rtol·|want|` element-wise, with a message naming the first bad index.
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan()) || g == w;
        assert!(ok, "{what}: element {i}: got {g}, want {w} (atol {atol}, rtol {rtol})");
    }
}

/// Same for f64 references.
#[track_caller]
pub fn assert_close64(got: &[f32], want: &[f64], atol: f64, rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g as f64 - w).abs() <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan());
        assert!(ok, "{what}: element {i}: got {g}, want {w} (atol {atol}, rtol {rtol})");
    }
}

/// Row-major multi-index of flat position `i` in `dims`.
pub fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        idx[d] = i % dims[d];
        i /= dims[d];
    }
    idx
}

/// Flat position of a multi-index in `dims`.
pub fn ravel(idx: &[usize], dims: &[usize]) -> usize {
    idx.iter().zip(dims).fold(0, |acc, (&i, &d)| acc * d + i)
}

/// The error message of a failed op (panics if the op succeeded).
#[track_caller]
pub fn err_msg<T: std::fmt::Debug>(r: nvg_engine::Result<T>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

/// Float dtypes to run dtype-generic checks over.
pub const FLOAT_DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// A pre-norm transformer block on `t[0]` `[B, N, c]` with `h` heads, its parameters `t[1..14]`:
/// layer_norm (t1, t2) → qkv linear (t3, t4) → split → heads → rms_norm (q: t5, k: t6) → rope (q, k) →
/// sdpa → output linear (t7, t8) → residual → layer_norm (t9) → linear (t10, t11) → gelu → linear
/// (t12, t13) → residual. Shared by the gradient checks of the CPU and of the device rules.
pub fn transformer_block(t: &[Tensor], cos: &Tensor, sin: &Tensor, h: usize) -> nvg_engine::Result<Tensor> {
    let x = &t[0];
    let c = *x.dims().last().unwrap();
    let d = c / h;
    let a = x
        .layer_norm(Some(&t[1]), Some(&t[2]), 1e-6)?
        .linear(&t[3], Some(&t[4]))?;
    let qkv = a.split(-1, &[c, c, c])?;
    let heads = |p: &Tensor| p.unflatten(-1, &[h, d])?.transpose(1, 2);
    let q = heads(&qkv[0])?.rms_norm(&t[5], 1e-6)?.rope(cos, sin)?;
    let k = heads(&qkv[1])?.rms_norm(&t[6], 1e-6)?.rope(cos, sin)?;
    let v = heads(&qkv[2])?;
    let att = nvg_engine::sdpa(&q, &k, &v, None, None)?
        .transpose(1, 2)?
        .flatten(2, 3)?;
    let x = x.add(&att.linear(&t[7], Some(&t[8]))?)?;
    let m = x.layer_norm(Some(&t[9]), None, 1e-6)?.linear(&t[10], Some(&t[11]))?;
    x.add(&m.gelu_tanh()?.linear(&t[12], Some(&t[13]))?)
}
