//! Finite-difference checks of every backward rule of the engine's reverse-mode autograd
//! (`engine/src/autograd`), plus its graph mechanics (accumulation over a DAG, errors, untracked
//! inputs).
//!
//! Method (`gradcheck`): for a function `f` of some f32 inputs, with an output of any shape, a fixed
//! pseudo-random projection `r` (values in [-1, 1), the output's shape) defines the scalar
//! `L(x) = Σ f(x)·r`. Autograd's dL/dx — `backward` of that scalar, built with the engine's own
//! `mul`, `flatten` and `sum` — is compared element by element with central differences of `L`,
//! accumulated in f64 from the f32 outputs. The stencil is the fourth-order central one,
//! `D = [8·(L(x+h) − L(x−h)) − (L(x+2h) − L(x−2h))] / 12h` with h = 1e-2: at the same truncation
//! error as the plain `(L(x+h) − L(x−h)) / 2h` at h = 1e-3 it divides the f32 rounding noise by ~10
//! (measured: worst error 2.5e-4 with the plain difference, 3.4e-5 with this one), which is what lets
//! the tolerance be 2e-4 rather than 2e-3.
//!
//! Tolerance: `|autograd − numeric| ≤ tol · max(1, |numeric|)`. Errors of the numeric side:
//!  - truncation, h⁴/30 · |L⁽⁵⁾| ≈ 3e-10 for the O(1) derivatives of these inputs (< 1e-6 for the
//!    sharpest, softmax of inputs up to ±3);
//!  - rounding of the outputs: those that depend on `x_j` carry ~u = 6e-8 relative error each (more
//!    after a chain of ops); outputs that do not are bit-identical at every stencil point and cancel.
//!    The stencil turns an error σ of L into ~√130·σ / 12h ≈ 95σ: ~1e-5 for element-wise ops, a few
//!    1e-5 for a row of a normalisation, a matmul or attention, ~1e-4 for the composed block;
//!  - the stencil points x ± h, x ± 2h are rounded to f32 (≤ 1.2e-7 for |x| ≤ 3): ≤ 1.6e-5·|f'|.
//!
//! The autograd side is exact up to f32 rounding (~1e-6 relative).
//!
//! So `TOL = 2e-4` for single ops (measured worst 3.4e-5: layer_norm, log_softmax, sdpa — a 6×
//! margin) and `TOL_BLOCK = 1e-3` for the composed transformer block (measured worst 2.4e-4), while a
//! wrong rule (a dropped term, a wrong sign or factor, a missing accumulation) is off by O(1)·|n|.
//! Each check prints its worst `error / tol` (`--nocapture`) to show the margin.
//!
//! Inputs are small, odd-sized (not multiples of the SIMD widths, with size-1 dims), often strided
//! views (transposed or narrowed), and at least 0.03 (> 2h) away from kinks (abs, relu, clamp,
//! maximum/minimum). The numeric side feeds packed copies of the inputs; the autograd side feeds the
//! views themselves.

mod common;

use common::*;
use nvg_engine::{ConvKernel, DType, Padding, Result, Tensor, Unary, rope_tables, sdpa};

/// Step h of the central differences (f32 inputs of magnitude ~1).
const EPS: f32 = 1e-2;
/// Tolerance of single ops and small graphs (see the module docs).
const TOL: f64 = 2e-4;
/// Tolerance of the composed transformer block (a long chain of f32 rounding; see the module docs).
const TOL_BLOCK: f64 = 1e-3;

// ------------------------------------------------------------------------------------------------
// The checker
// ------------------------------------------------------------------------------------------------

/// The fixed projection of a check's output.
fn projection(dims: &[usize]) -> Tensor {
    rand(dims, 0x5EED_CAFE)
}

/// `Σ f(xs)·r` in f64 from the f32 outputs.
fn project(f: &impl Fn(&[Tensor]) -> Result<Tensor>, xs: &[Tensor], r: &[f32], dims: &[usize]) -> f64 {
    let y = f(xs).expect("forward");
    assert_eq!(y.dims(), dims, "the output shape must not depend on the values");
    vals(&y).iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Central differences of `Σ f(xs)·r` with respect to every element of `inputs[i]` (fed packed).
fn numeric_grad(
    f: &impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    i: usize,
    r: &[f32],
    dims: &[usize],
) -> Vec<f64> {
    let mut xs: Vec<Tensor> = inputs.iter().map(|t| t.contiguous().unwrap()).collect();
    let shape = inputs[i].dims().to_vec();
    let base = vals(&inputs[i]);
    (0..base.len())
        .map(|j| {
            let mut at = |v: f32| {
                let mut p = base.clone();
                p[j] = v;
                xs[i] = Tensor::from_vec(p, &shape).unwrap();
                project(f, &xs, r, dims)
            };
            let x = base[j];
            let d1 = at(x + EPS) - at(x - EPS);
            let d2 = at(x + 2.0 * EPS) - at(x - 2.0 * EPS);
            (8.0 * d1 - d2) / (12.0 * EPS as f64)
        })
        .collect()
}

/// Asserts `|got − want| ≤ tol·max(1, |want|)`; returns the worst `error / bound`.
#[track_caller]
fn assert_grad(what: &str, got: &[f32], want: &[f64], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: gradient length");
    let mut worst = 0.0f64;
    for (j, (&a, &n)) in got.iter().zip(want).enumerate() {
        let bound = tol * n.abs().max(1.0);
        let err = (a as f64 - n).abs();
        assert!(
            err <= bound,
            "{what}: element {j}: autograd {a}, finite differences {n} (|diff| {err:.3e} > {bound:.3e})"
        );
        worst = worst.max(err / bound);
    }
    worst
}

/// Checks autograd's gradient of `Σ f(inputs)·r` with respect to every input against central
/// differences (see the module docs). Also checks that recording a graph does not change the
/// forward values.
#[track_caller]
fn gradcheck(what: &str, inputs: &[Tensor], tol: f64, f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let leaves: Vec<Tensor> = inputs.iter().map(Tensor::requires_grad).collect();
    let y = f(&leaves).unwrap_or_else(|e| panic!("{what}: forward: {e}"));
    assert!(y.is_tracked(), "{what}: the output of tracked inputs is tracked");
    let plain = f(inputs).unwrap();
    assert!(!plain.is_tracked(), "{what}: untracked inputs record nothing");
    assert_eq!(
        vals(&y).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        vals(&plain).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "{what}: recording changed the forward values"
    );
    let dims = y.dims().to_vec();
    let r = projection(&dims);
    let prod = y.mul(&r).unwrap();
    let loss = if prod.rank() == 0 {
        prod
    } else {
        prod.flatten(0, prod.rank() - 1).unwrap().sum(0, false).unwrap()
    };
    let grads = loss.backward().unwrap_or_else(|e| panic!("{what}: backward: {e}"));
    let rv = vals(&r);
    let mut worst = 0.0f64;
    for (i, (x, leaf)) in inputs.iter().zip(&leaves).enumerate() {
        let g = grads
            .get(leaf)
            .unwrap_or_else(|| panic!("{what}: input {i} received no gradient"));
        assert_eq!(g.dims(), x.dims(), "{what}: shape of the gradient of input {i}");
        let want = numeric_grad(&f, inputs, i, &rv, &dims);
        worst = worst.max(assert_grad(&format!("{what}, input {i}"), &vals(g), &want, tol));
    }
    eprintln!("{what}: worst error {worst:.3} of the tolerance {tol:.0e}");
}

// ------------------------------------------------------------------------------------------------
// Inputs
// ------------------------------------------------------------------------------------------------

/// `values` scaled to [-s, s).
fn scaled(dims: &[usize], seed: u64, s: f32) -> Tensor {
    rand(dims, seed).mul_scalar(s).unwrap()
}

/// Values in [0.5, 1.5): the domain of log, sqrt, rsqrt, recip, non-integer powers.
fn positive(dims: &[usize], seed: u64) -> Tensor {
    rand(dims, seed).affine(0.5, 1.0).unwrap()
}

/// Values in [-1, 1) at least 0.05 away from every kink (the stencil reaches 2h = 0.02).
fn away_from(dims: &[usize], seed: u64, kinks: &[f32]) -> Tensor {
    let mut v = values(dims.iter().product(), seed);
    for x in &mut v {
        for &k in kinks {
            if (*x - k).abs() < 0.05 {
                *x = if *x >= k { k + 0.05 } else { k - 0.05 };
            }
        }
    }
    Tensor::from_vec(v, dims).unwrap()
}

/// Multiples of 0.1 in [-1, 1] plus `offset` plus a jitter of at most ±0.01: a tensor of offset 0.05
/// and one of offset 0 differ by at least 0.03 > 2h everywhere (maximum/minimum away from ties).
fn quantised(dims: &[usize], seed: u64, offset: f32) -> Tensor {
    let n = dims.iter().product();
    let v: Vec<f32> = values(n, seed)
        .iter()
        .zip(values(n, seed ^ 0x9E37))
        .map(|(&a, b)| (a * 10.0).round() / 10.0 + offset + 0.01 * b)
        .collect();
    Tensor::from_vec(v, dims).unwrap()
}

/// A `[rows, cols]` view narrowed out of a wider tensor (not contiguous).
fn narrowed(rows: usize, cols: usize, seed: u64) -> Tensor {
    let t = rand(&[rows, cols + 3], seed).narrow(1, 2, cols).unwrap();
    assert!(!t.is_contiguous());
    t
}

/// The message of a failed `backward` (`Gradients` is not `Debug`, so `common::err_msg` does not fit).
#[track_caller]
fn backward_err(r: Result<nvg_engine::Gradients>) -> String {
    match r {
        Ok(_) => panic!("expected backward to fail"),
        Err(e) => e.to_string(),
    }
}

fn ids(v: &[i64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap()
}

// ------------------------------------------------------------------------------------------------
// Views and copies
// ------------------------------------------------------------------------------------------------

#[test]
fn reshape_unsqueeze_squeeze_unflatten_flatten() {
    // A transposed input: reshape has to copy (a `contiguous` node, then a view).
    gradcheck("reshape of a strided view", &[rand_strided(&[3, 5], 1)], TOL, |t| {
        t[0].reshape(&[5, 3])
    });
    gradcheck("reshape to rank 1", &[rand(&[2, 1, 7], 2)], TOL, |t| {
        t[0].reshape(&[14])
    });
    gradcheck("flatten of a permuted view", &[rand(&[2, 3, 5], 3)], TOL, |t| {
        t[0].transpose(0, 2)?.flatten(1, 2)
    });
    gradcheck("squeeze, unsqueeze", &[rand(&[3, 1, 4], 4)], TOL, |t| {
        t[0].squeeze(1)?.unsqueeze(0)?.unsqueeze(3)?.mul_scalar(1.5)
    });
    gradcheck("unflatten of a narrowed view", &[narrowed(3, 6, 5)], TOL, |t| {
        t[0].unflatten(1, &[2, 3])?.transpose(0, 2)
    });
    // Rows narrowed out of a packed tensor are a packed block at an offset: reshape stays a view.
    gradcheck("reshape of a row block at an offset", &[rand(&[5, 3], 165)], TOL, |t| {
        let rows = t[0].narrow(0, 1, 3)?;
        assert!(rows.is_contiguous());
        rows.reshape(&[9])
    });
    gradcheck(
        "unsqueeze, squeeze of a strided view",
        &[rand_strided(&[3, 4], 166)],
        TOL,
        |t| t[0].unsqueeze(1)?.unsqueeze(3)?.squeeze(1)?.mul_scalar(0.5),
    );
}

#[test]
fn permute_and_transpose() {
    gradcheck("permute", &[rand(&[2, 3, 5], 6)], TOL, |t| t[0].permute(&[2, 0, 1]));
    gradcheck(
        "transpose of a strided view",
        &[rand_strided(&[4, 3, 5], 7)],
        TOL,
        |t| t[0].transpose(0, -1),
    );
    // Two permutations in a row: the gradient has to undo both, in reverse order.
    gradcheck("permute twice", &[rand(&[2, 3, 1, 5], 8)], TOL, |t| {
        t[0].permute(&[3, 1, 0, 2])?.permute(&[1, 3, 2, 0])?.contiguous()
    });
}

#[test]
fn narrow_split_chunk() {
    gradcheck("narrow inside", &[rand(&[4, 7], 9)], TOL, |t| t[0].narrow(1, 2, 3));
    gradcheck("narrow at the start", &[rand(&[5, 3], 10)], TOL, |t| {
        t[0].narrow(0, 0, 2)
    });
    gradcheck("narrow to the end", &[rand(&[5, 3], 11)], TOL, |t| t[0].narrow(0, 1, 4));
    gradcheck("narrow of a narrowed view", &[narrowed(3, 7, 12)], TOL, |t| {
        t[0].narrow(1, 1, 5)?.narrow(0, 1, 2)
    });
    // The middle part is unused: its gradient must be exactly zero (checked by the numeric side too).
    gradcheck(
        "split, parts reordered and one dropped",
        &[rand(&[5, 9], 13)],
        TOL,
        |t| {
            let p = t[0].split(1, &[2, 3, 4])?;
            Tensor::cat(&[&p[2], &p[0]], 1)
        },
    );
    gradcheck("chunk of a strided view", &[rand_strided(&[6, 5], 14)], TOL, |t| {
        let c = t[0].chunk(3, 0)?;
        c[0].mul(&c[2])?.add(&c[1])
    });
}

#[test]
fn broadcast_as_sums_over_broadcast_dims() {
    gradcheck("broadcast_as, new and size-1 dims", &[rand(&[3, 1, 5], 15)], TOL, |t| {
        t[0].broadcast_as(&[2, 3, 4, 5])
    });
    gradcheck("broadcast_as of a vector", &[rand(&[7], 16)], TOL, |t| {
        t[0].broadcast_as(&[3, 7])
    });
    gradcheck("broadcast_as of a single element", &[rand(&[1], 17)], TOL, |t| {
        t[0].broadcast_as(&[2, 1, 3])?.contiguous()
    });
}

#[test]
fn contiguous_and_float_casts() {
    gradcheck(
        "contiguous of a transposed view",
        &[rand_strided(&[4, 3], 18)],
        TOL,
        |t| {
            let c = t[0].contiguous()?;
            assert!(c.is_contiguous());
            Ok(c)
        },
    );
    gradcheck("contiguous of a narrowed view", &[narrowed(2, 5, 19)], TOL, |t| {
        t[0].contiguous()
    });
    // f32 → f32 is the identity; f32 → f16 → f32 is piecewise constant (finite differences are
    // meaningless), so its gradient is checked against its definition: the cast's gradient passes
    // through, rounded to the dtype of the tensor it belongs to on the way (f16, then f32).
    let x = rand(&[3, 5], 20).requires_grad();
    let r = projection(&[3, 5]);
    let y = x.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap();
    let loss = y.mul(&r).unwrap().flatten(0, 1).unwrap().sum(0, false).unwrap();
    let g = loss.backward().unwrap();
    let gx = g.get(&x).expect("a gradient through the casts");
    assert_eq!(gx.dtype(), DType::F32);
    // Twice f16's unit roundoff (2⁻¹¹), and an absolute 1e-7 for values in f16's subnormal range.
    assert_close(
        &vals(gx),
        &vals(&r),
        1e-7,
        1.0 / 1024.0,
        "f32 → f16 → f32 passes the gradient through",
    );
}

#[test]
fn bf16_input_through_to_dtype() {
    // A bf16 leaf cast to f32 and then through f32 ops: its gradient equals the f32 gradient of the
    // same function at the same (bf16-representable) values, up to the gradient's own rounding to
    // bf16 (relative 2⁻⁸) — the numeric side perturbs the f32 copy, as bf16 cannot hold x ± h.
    let w = rand(&[6, 11], 21);
    let f = |t: &[Tensor]| t[0].linear(&w, None)?.tanh();
    let xb = rand(&[3, 11], 22).to_dtype(DType::BF16).unwrap();
    let x32 = xb.to_dtype(DType::F32).unwrap();
    let leaf = xb.requires_grad();
    let y = f(&[leaf.to_dtype(DType::F32).unwrap()]).unwrap();
    let r = projection(y.dims());
    let loss = y.mul(&r).unwrap().flatten(0, 1).unwrap().sum(0, false).unwrap();
    let grads = loss.backward().unwrap();
    let g = grads.get(&leaf).expect("the bf16 leaf gets a gradient");
    assert_eq!(g.dims(), xb.dims());
    let want = numeric_grad(&f, &[x32], 0, &vals(&r), y.dims());
    // bf16's unit roundoff is 2⁻⁹: twice that, plus far more than the numeric side's error.
    let worst = assert_grad("bf16 leaf", &vals(g), &want, 1.0 / 256.0);
    eprintln!("bf16 leaf: worst error {worst:.3} of the tolerance 2⁻⁸");
}

#[test]
fn cat_and_stack() {
    let inputs = [rand(&[2, 3, 4], 23), rand_strided(&[2, 5, 4], 24), rand(&[2, 1, 4], 25)];
    gradcheck("cat along a middle dim, one input strided", &inputs, TOL, |t| {
        Tensor::cat(&[&t[0], &t[1], &t[2]], 1)
    });
    gradcheck(
        "cat along the last dim",
        &[rand(&[3, 2], 26), rand(&[3, 5], 27)],
        TOL,
        |t| Tensor::cat(&[&t[1], &t[0]], -1),
    );
    // One input three times: its gradient accumulates the three slices.
    gradcheck("cat of one input three times", &[rand(&[3, 2], 28)], TOL, |t| {
        Tensor::cat(&[&t[0], &t[0].mul_scalar(2.0)?, &t[0]], 0)
    });
    let pair = [rand(&[3, 5], 29), narrowed(3, 5, 30)];
    gradcheck("stack in the middle", &pair, TOL, |t| Tensor::stack(&[&t[0], &t[1]], 1));
    gradcheck("stack at the end", &pair, TOL, |t| {
        Tensor::stack(&[&t[1], &t[0], &t[1]], 2)
    });
}

// ------------------------------------------------------------------------------------------------
// Element-wise ops
// ------------------------------------------------------------------------------------------------

#[test]
fn every_unary_op() {
    // 3 × 37: rows not a multiple of any SIMD width.
    let dims = [3, 37];
    let cases: [(Unary, Tensor); 15] = [
        (Unary::Neg, scaled(&dims, 31, 2.0)),
        (Unary::Abs, away_from(&dims, 32, &[0.0])),
        (Unary::Exp, scaled(&dims, 33, 2.0)),
        (Unary::Log, positive(&dims, 34)),
        (Unary::Sqrt, positive(&dims, 35)),
        (Unary::Rsqrt, positive(&dims, 36)),
        (Unary::Recip, positive(&dims, 37)),
        (Unary::Sqr, scaled(&dims, 38, 2.0)),
        (Unary::Tanh, scaled(&dims, 39, 2.0)),
        (Unary::Sin, scaled(&dims, 40, 3.0)),
        (Unary::Cos, scaled(&dims, 41, 3.0)),
        (Unary::Sigmoid, scaled(&dims, 42, 4.0)),
        (Unary::Silu, scaled(&dims, 43, 4.0)),
        (Unary::GeluTanh, scaled(&dims, 44, 3.0)),
        (Unary::Relu, away_from(&dims, 45, &[0.0])),
    ];
    for (op, x) in cases {
        gradcheck(op.name(), &[x], TOL, |t| t[0].unary(op));
    }
    // The named front-ends record the same nodes; one on a strided input.
    gradcheck("gelu_tanh of a strided view", &[rand_strided(&[5, 3], 46)], TOL, |t| {
        t[0].gelu_tanh()
    });
    gradcheck("silu ∘ exp ∘ tanh", &[rand(&[2, 9], 47)], TOL, |t| {
        t[0].tanh()?.exp()?.silu()
    });
}

#[test]
fn binary_ops_with_broadcasting() {
    // [3, 1, 5] ⊕ [4, 1] → [3, 4, 5]: both sides broadcast.
    let (da, db) = ([3, 1, 5], [4, 1]);
    gradcheck("add", &[rand(&da, 48), rand(&db, 49)], TOL, |t| t[0].add(&t[1]));
    gradcheck("sub", &[rand(&da, 50), rand(&db, 51)], TOL, |t| t[0].sub(&t[1]));
    gradcheck("mul", &[rand(&da, 52), rand(&db, 53)], TOL, |t| t[0].mul(&t[1]));
    gradcheck("div", &[rand(&da, 54), positive(&db, 55)], TOL, |t| t[0].div(&t[1]));
    gradcheck(
        "div by a negative",
        &[rand(&db, 56), positive(&da, 57).neg().unwrap()],
        TOL,
        |t| t[0].div(&t[1]),
    );
    // Operands at least 0.01 apart everywhere: no ties.
    let (qa, qb) = (quantised(&da, 58, 0.05), quantised(&db, 59, 0.0));
    gradcheck("maximum", &[qa.clone(), qb.clone()], TOL, |t| t[0].maximum(&t[1]));
    gradcheck("minimum", &[qa, qb], TOL, |t| t[0].minimum(&t[1]));
    // A strided operand and a row vector.
    gradcheck(
        "mul of a strided view by a vector",
        &[rand_strided(&[4, 5], 60), rand(&[5], 61)],
        TOL,
        |t| t[0].mul(&t[1]),
    );
    gradcheck(
        "sub of a single element",
        &[rand(&[1], 62), narrowed(3, 4, 63)],
        TOL,
        |t| t[0].sub(&t[1]),
    );
    // A rank-0 operand broadcasts to everything; its gradient is the sum over all elements.
    gradcheck(
        "mul by a rank-0 tensor",
        &[rand(&[2, 3], 167), Tensor::scalar(0.7)],
        TOL,
        |t| t[0].mul(&t[1]),
    );
}

#[test]
fn an_input_used_twice_accumulates() {
    gradcheck("x·x", &[rand(&[3, 7], 64)], TOL, |t| t[0].mul(&t[0]));
    gradcheck("x / (x + 2)", &[rand(&[5], 65)], TOL, |t| {
        t[0].div(&t[0].add_scalar(2.0)?)
    });
    gradcheck(
        "x − x·a with a broadcast",
        &[rand(&[2, 3], 66), rand(&[3], 67)],
        TOL,
        |t| t[0].sub(&t[0].mul(&t[1])?),
    );
    // maximum(x, x) = x: every element is a tie, split ½/½ between the two (identical) operands.
    gradcheck("maximum(x, x)", &[rand(&[4, 3], 68)], TOL, |t| t[0].maximum(&t[0]));
    gradcheck("minimum(x, x)", &[rand(&[4, 3], 69)], TOL, |t| t[0].minimum(&t[0]));
}

#[test]
fn maximum_and_minimum_split_ties_evenly() {
    // Distinct leaves with equal values: each receives half the gradient (PyTorch's rule).
    let v = rand(&[2, 3], 70);
    let (a, b) = (v.requires_grad(), v.requires_grad());
    for is_max in [true, false] {
        let y = if is_max { a.maximum(&b) } else { a.minimum(&b) }.unwrap();
        let g = y.flatten(0, 1).unwrap().sum(0, false).unwrap().backward().unwrap();
        assert_eq!(vals(g.get(&a).unwrap()), vec![0.5; 6]);
        assert_eq!(vals(g.get(&b).unwrap()), vec![0.5; 6]);
    }
}

#[test]
fn scalar_ops_powf_clamp() {
    let x = || rand(&[3, 11], 71);
    gradcheck("affine", &[x()], TOL, |t| t[0].affine(1.7, -0.3));
    gradcheck("add_scalar", &[x()], TOL, |t| t[0].add_scalar(0.25));
    gradcheck("mul_scalar", &[x()], TOL, |t| t[0].mul_scalar(-1.5));
    gradcheck("div_scalar", &[x()], TOL, |t| t[0].div_scalar(3.0));
    gradcheck("div_scalar by a small negative", &[x()], TOL, |t| t[0].div_scalar(-0.4));
    gradcheck("powf 2.5", &[positive(&[3, 11], 72)], TOL, |t| t[0].powf(2.5));
    gradcheck("powf −1.5", &[positive(&[3, 11], 73)], TOL, |t| t[0].powf(-1.5));
    gradcheck("powf 3 of both signs", &[x()], TOL, |t| t[0].powf(3.0));
    gradcheck("clamp", &[away_from(&[3, 11], 74, &[-0.5, 0.4])], TOL, |t| {
        t[0].clamp(-0.5, 0.4)
    });
    gradcheck("clamp, one-sided in practice", &[x()], TOL, |t| t[0].clamp(-5.0, 5.0));
}

// ------------------------------------------------------------------------------------------------
// Matrix products
// ------------------------------------------------------------------------------------------------

#[test]
fn matmul_batched_and_broadcast() {
    gradcheck("matmul 2-d", &[rand(&[3, 5], 75), rand(&[5, 7], 76)], TOL, |t| {
        t[0].matmul(&t[1])
    });
    gradcheck(
        "matmul m = 1, odd k and n",
        &[rand(&[1, 17], 77), rand(&[17, 9], 78)],
        TOL,
        |t| t[0].matmul(&t[1]),
    );
    // [2, 1, 3, 5] · [4, 5, 6] → [2, 4, 3, 6]: both operands broadcast over batch dims.
    gradcheck(
        "matmul with batch dims broadcast on both sides",
        &[rand(&[2, 1, 3, 5], 79), rand(&[4, 5, 6], 80)],
        TOL,
        |t| t[0].matmul(&t[1]),
    );
    gradcheck(
        "matmul of a 2-d lhs and a batched rhs",
        &[rand(&[3, 5], 81), rand(&[2, 5, 4], 82)],
        TOL,
        |t| t[0].matmul(&t[1]),
    );
    gradcheck(
        "matmul of strided views",
        &[rand_strided(&[2, 3, 5], 83), narrowed(5, 4, 84)],
        TOL,
        |t| t[0].matmul(&t[1]),
    );
    // x·xᵀ: one input on both sides.
    gradcheck("x·xᵀ", &[rand(&[4, 6], 85)], TOL, |t| {
        t[0].matmul(&t[0].transpose(0, 1)?)
    });
}

#[test]
fn linear_with_and_without_bias() {
    gradcheck(
        "linear with bias, rank 3",
        &[rand(&[2, 3, 5], 86), rand(&[7, 5], 87), rand(&[7], 88)],
        TOL,
        |t| t[0].linear(&t[1], Some(&t[2])),
    );
    gradcheck(
        "linear without bias",
        &[rand(&[4, 17], 89), rand(&[3, 17], 90)],
        TOL,
        |t| t[0].linear(&t[1], None),
    );
    gradcheck(
        "linear of strided views",
        &[rand_strided(&[3, 5], 91), rand_strided(&[2, 5], 92), rand(&[2], 93)],
        TOL,
        |t| t[0].linear(&t[1], Some(&t[2])),
    );
    gradcheck(
        "linear, one output feature",
        &[rand(&[1, 6], 94), rand(&[1, 6], 95), rand(&[1], 96)],
        TOL,
        |t| t[0].linear(&t[1], Some(&t[2])),
    );
}

// ------------------------------------------------------------------------------------------------
// Normalisations
// ------------------------------------------------------------------------------------------------

#[test]
fn layer_norm_every_affine_combination() {
    let x = || scaled(&[4, 13], 97, 2.0);
    let (w, b) = (|| rand(&[13], 98).add_scalar(1.0).unwrap(), || rand(&[13], 99));
    gradcheck("layer_norm with weight and bias", &[x(), w(), b()], TOL, |t| {
        t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5)
    });
    gradcheck("layer_norm with weight only", &[x(), w()], TOL, |t| {
        t[0].layer_norm(Some(&t[1]), None, 1e-5)
    });
    gradcheck("layer_norm with bias only", &[x(), b()], TOL, |t| {
        t[0].layer_norm(None, Some(&t[1]), 1e-5)
    });
    gradcheck("layer_norm without affine", &[x()], TOL, |t| {
        t[0].layer_norm(None, None, 1e-5)
    });
    gradcheck(
        "layer_norm of a strided view, large eps",
        &[rand_strided(&[3, 2, 7], 100), rand(&[7], 101)],
        TOL,
        |t| t[0].layer_norm(Some(&t[1]), None, 0.1),
    );
}

#[test]
fn rms_norm() {
    gradcheck("rms_norm", &[rand(&[3, 2, 11], 102), rand(&[11], 103)], TOL, |t| {
        t[0].rms_norm(&t[1], 1e-6)
    });
    gradcheck(
        "rms_norm of a strided view, large eps",
        &[rand_strided(&[5, 6], 104), rand(&[6], 105)],
        TOL,
        |t| t[0].rms_norm(&t[1], 0.1),
    );
}

// ------------------------------------------------------------------------------------------------
// Attention
// ------------------------------------------------------------------------------------------------

/// RoPE tables for `n` tokens with 2 position axes of widths 2 and 4 (6 head dims), per batch
/// (`[b, n, 3]`) or shared (`[n, 3]`, `b = 0`).
fn tables(b: usize, n: usize, seed: u64) -> (Tensor, Tensor) {
    let dims: Vec<usize> = if b == 0 { vec![n, 2] } else { vec![b, n, 2] };
    let pos = rand(&dims, seed).mul_scalar(6.0).unwrap();
    rope_tables(&pos, &[2, 4], 100.0).unwrap()
}

#[test]
fn rope_per_batch_and_shared_tables() {
    let (cos, sin) = tables(2, 5, 106);
    // [B, N, H, D] storage seen as [B, H, N, D]: a strided input.
    let x = rand(&[2, 5, 3, 6], 107).transpose(1, 2).unwrap();
    gradcheck("rope, per-batch tables, strided input", &[x], TOL, |t| {
        t[0].rope(&cos, &sin)
    });
    let (cos, sin) = tables(0, 4, 108);
    gradcheck("rope, shared tables", &[rand(&[3, 1, 4, 6], 109)], TOL, |t| {
        t[0].rope(&cos, &sin)
    });
}

#[test]
fn sdpa_q_k_v() {
    // Nq ≠ Nk, Dv ≠ D, an explicit scale; q a transposed view.
    let q = rand(&[2, 5, 3, 4], 110).transpose(1, 2).unwrap();
    let (k, v) = (scaled(&[2, 3, 7, 4], 111, 1.5), rand(&[2, 3, 7, 6], 112));
    gradcheck("sdpa, cross-attention, scale 0.7", &[q, k, v], TOL, |t| {
        sdpa(&t[0], &t[1], &t[2], Some(0.7), None)
    });
    // Self-attention from one fused projection [B, N, 3·H·D]: q, k, v are strided views of one input.
    let (h, d) = (2, 4);
    gradcheck(
        "sdpa of a fused qkv input",
        &[scaled(&[2, 5, 3 * h * d], 113, 1.5)],
        TOL,
        |t| {
            let p = t[0].chunk(3, -1)?;
            let heads = |x: &Tensor| x.unflatten(-1, &[h, d])?.transpose(1, 2);
            sdpa(&heads(&p[0])?, &heads(&p[1])?, &heads(&p[2])?, None, None)
        },
    );
    gradcheck(
        "sdpa, one query and one key",
        &[
            rand(&[1, 1, 1, 3], 114),
            rand(&[1, 1, 1, 3], 115),
            rand(&[1, 1, 1, 2], 116),
        ],
        TOL,
        |t| sdpa(&t[0], &t[1], &t[2], None, None),
    );
}

// ------------------------------------------------------------------------------------------------
// Convolution, group norm, upsampling (NCHW)
// ------------------------------------------------------------------------------------------------

fn pad(top: usize, bottom: usize, left: usize, right: usize) -> Padding {
    Padding {
        top,
        bottom,
        left,
        right,
    }
}

#[test]
fn conv2d_stride_padding_bias() {
    gradcheck(
        "conv2d 3×3 stride 1 pad 1 with bias",
        &[
            rand(&[2, 3, 5, 6], 171),
            scaled(&[4, 3, 3, 3], 172, 0.5),
            rand(&[4], 173),
        ],
        TOL,
        |t| t[0].conv2d(&t[1], Some(&t[2]), 1, Padding::uniform(1)),
    );
    // 7×5 → 3×2: the last input row and column are read by no output (their gradient is zero).
    gradcheck(
        "conv2d 3×3 stride 2, padding top 0 bottom 1 left 0 right 1, no bias",
        &[rand(&[2, 3, 7, 5], 174), scaled(&[3, 3, 3, 3], 175, 0.5)],
        TOL,
        |t| t[0].conv2d(&t[1], None, 2, pad(0, 1, 0, 1)),
    );
    gradcheck(
        "conv2d 1×1 with bias",
        &[
            rand(&[2, 5, 3, 4], 176),
            scaled(&[3, 5, 1, 1], 177, 0.5),
            rand(&[3], 178),
        ],
        TOL,
        |t| t[0].conv2d(&t[1], Some(&t[2]), 1, Padding::uniform(0)),
    );
    // An NHWC-stored input seen as NCHW, a non-square kernel, odd sizes, uneven padding.
    let x = rand(&[2, 7, 5, 3], 179).permute(&[0, 3, 1, 2]).unwrap();
    assert!(!x.is_contiguous());
    gradcheck(
        "conv2d of a permuted input, 3×2 kernel, padding 1/2/0/1, bias",
        &[x, scaled(&[2, 3, 3, 2], 180, 0.5), rand(&[2], 181)],
        TOL,
        |t| t[0].conv2d(&t[1], Some(&t[2]), 1, pad(1, 2, 0, 1)),
    );
    // Stride 3 with a 2×2 kernel skips input pixels; a transposed (strided) weight view.
    gradcheck(
        "conv2d 2×2 stride 3, padding 2/0/1/2, strided weight",
        &[
            rand(&[1, 2, 8, 7], 182),
            rand_strided(&[3, 2, 2, 2], 183),
            rand(&[3], 184),
        ],
        TOL,
        |t| t[0].conv2d(&t[1], Some(&t[2]), 3, pad(2, 0, 1, 2)),
    );
    // Padding wider than the image: some kernel taps read only zeros.
    gradcheck(
        "conv2d 3×3 of a 2×1 image, padding 2",
        &[rand(&[3, 2, 2, 1], 185), scaled(&[2, 2, 3, 3], 186, 0.5)],
        TOL,
        |t| t[0].conv2d(&t[1], None, 1, Padding::uniform(2)),
    );
    // Stride 1 takes the input gradient as a convolution with the flipped kernel unless a side is
    // padded by the kernel size or more; then (as for strides > 1) col2im.
    gradcheck(
        "conv2d 3×3 stride 1, padding 3/0/1/2 (col2im)",
        &[
            rand(&[2, 3, 4, 5], 219),
            scaled(&[2, 3, 3, 3], 220, 0.5),
            rand(&[2], 221),
        ],
        TOL,
        |t| t[0].conv2d(&t[1], Some(&t[2]), 1, pad(3, 0, 1, 2)),
    );
    gradcheck(
        "conv2d 1×1 stride 1, padding 1 (col2im)",
        &[rand(&[1, 4, 3, 2], 222), scaled(&[3, 4, 1, 1], 223, 0.5)],
        TOL,
        |t| t[0].conv2d(&t[1], None, 1, Padding::uniform(1)),
    );
    // The explicit-kernel entry point records the same node.
    gradcheck(
        "conv2d_with_kernel Im2colGemm",
        &[
            rand(&[1, 3, 4, 5], 187),
            scaled(&[2, 3, 3, 3], 188, 0.5),
            rand(&[2], 189),
        ],
        TOL,
        |t| t[0].conv2d_with_kernel(&t[1], Some(&t[2]), 2, Padding::uniform(1), ConvKernel::Im2colGemm),
    );
}

#[test]
fn conv2d_only_tracked_inputs_get_gradients() {
    // An untracked image (a first layer): only the weight and bias get gradients, the same as when
    // everything is tracked.
    let (x, w, b) = (rand(&[2, 3, 6, 5], 190), rand(&[4, 3, 3, 3], 191), rand(&[4], 192));
    let r = projection(&[2, 4, 3, 3]);
    let loss = |x: &Tensor, w: &Tensor, b: &Tensor| {
        let y = x.conv2d(w, Some(b), 2, pad(1, 0, 1, 1)).unwrap();
        y.mul(&r).unwrap().flatten(0, 3).unwrap().sum(0, false).unwrap()
    };
    let (wl, bl) = (w.requires_grad(), b.requires_grad());
    let g = loss(&x, &wl, &bl).backward().unwrap();
    assert_eq!(g.len(), 2);
    let (xa, wa, ba) = (x.requires_grad(), w.requires_grad(), b.requires_grad());
    let all = loss(&xa, &wa, &ba).backward().unwrap();
    assert_eq!(vals(g.get(&wl).unwrap()), vals(all.get(&wa).unwrap()));
    assert_eq!(vals(g.get(&bl).unwrap()), vals(all.get(&ba).unwrap()));
    // An untracked weight: only the image.
    let xl = x.requires_grad();
    let g = loss(&xl, &w, &b).backward().unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(vals(g.get(&xl).unwrap()), vals(all.get(&xa).unwrap()));
}

#[test]
fn group_norm_with_and_without_affine() {
    let w = |c: usize, seed: u64| rand(&[c], seed).add_scalar(1.0).unwrap();
    gradcheck(
        "group_norm 3 groups, weight and bias",
        &[scaled(&[2, 6, 3, 5], 193, 2.0), w(6, 194), rand(&[6], 195)],
        TOL,
        |t| t[0].group_norm(3, Some(&t[1]), Some(&t[2]), 1e-5),
    );
    gradcheck(
        "group_norm 1 group, weight only, [B, C, L]",
        &[scaled(&[3, 4, 7], 196, 2.0), w(4, 197)],
        TOL,
        |t| t[0].group_norm(1, Some(&t[1]), None, 1e-5),
    );
    // One channel per group (instance norm), a strided view.
    gradcheck(
        "group_norm 5 groups of one channel, bias only, strided view",
        &[rand_strided(&[2, 5, 3, 4], 198), rand(&[5], 199)],
        TOL,
        |t| t[0].group_norm(5, None, Some(&t[1]), 1e-5),
    );
    gradcheck(
        "group_norm 2 groups without affine, large eps",
        &[rand(&[2, 4, 2, 3], 200)],
        TOL,
        |t| t[0].group_norm(2, None, None, 0.1),
    );
    gradcheck(
        "group_norm 2 groups of 3 channels, 1×1 spatial, affine",
        &[scaled(&[4, 6, 1, 1], 201, 2.0), w(6, 202), rand(&[6], 203)],
        TOL,
        |t| t[0].group_norm(2, Some(&t[1]), Some(&t[2]), 1e-5),
    );
}

#[test]
fn upsample_nearest2x_sums_each_block() {
    gradcheck("upsample_nearest2x", &[rand(&[2, 3, 4, 5], 204)], TOL, |t| {
        t[0].upsample_nearest2x()
    });
    gradcheck(
        "upsample_nearest2x of a strided view, 3×1",
        &[rand_strided(&[1, 2, 3, 1], 205)],
        TOL,
        |t| t[0].upsample_nearest2x(),
    );
    // Large enough for the parallel path.
    let x = rand(&[2, 4, 64, 65], 206).requires_grad();
    let y = x.upsample_nearest2x().unwrap();
    let r = projection(y.dims());
    let g = y
        .mul(&r)
        .unwrap()
        .flatten(0, 3)
        .unwrap()
        .sum(0, false)
        .unwrap()
        .backward()
        .unwrap();
    let rv = vals(&r);
    let (h, w) = (64, 65);
    let want: Vec<f32> = (0..2 * 4 * h * w)
        .map(|i| {
            let (p, y, x) = (i / (h * w), i / w % h, i % w);
            let at = |dy: usize, dx: usize| rv[p * 4 * h * w + (2 * y + dy) * 2 * w + 2 * x + dx];
            (at(0, 0) + at(0, 1)) + (at(1, 0) + at(1, 1))
        })
        .collect();
    assert_eq!(vals(g.get(&x).unwrap()), want);
}

/// conv (stride 2) → group_norm → silu → upsample → conv → mean of squares: the layers of a small conv
/// autoencoder. Every tensor is an input of the check. The chain is short enough for the single-op
/// tolerance (measured worst 0.14 of it); its gradients are 0.04–0.8 in size, so a wrong term
/// anywhere is far outside it.
#[test]
fn conv_autoencoder_block_end_to_end() {
    let inputs = [
        rand(&[2, 3, 6, 7], 207),                 // 0 image
        scaled(&[6, 3, 3, 3], 208, 0.5),          // 1 conv 1 weight
        scaled(&[6], 209, 0.1),                   // 2 conv 1 bias
        rand(&[6], 210).add_scalar(1.0).unwrap(), // 3 group_norm weight
        scaled(&[6], 211, 0.1),                   // 4 group_norm bias
        scaled(&[3, 6, 3, 3], 212, 0.3),          // 5 conv 2 weight
        scaled(&[3], 213, 0.1),                   // 6 conv 2 bias
    ];
    gradcheck("conv autoencoder block", &inputs, TOL, |t| {
        // [2, 3, 6, 7] → [2, 6, 3, 4] → ×2 → [2, 6, 6, 8] → [2, 3, 6, 8].
        let h = t[0].conv2d(&t[1], Some(&t[2]), 2, pad(1, 1, 1, 2))?;
        let h = h.group_norm(3, Some(&t[3]), Some(&t[4]), 1e-5)?.silu()?;
        let y = h
            .upsample_nearest2x()?
            .conv2d(&t[5], Some(&t[6]), 1, Padding::uniform(1))?;
        y.sqr()?.flatten(0, 3)?.mean(0, false)
    });
}

/// bf16 activations and weights (an f32 bias and norm affine): gradients are f32 and equal the f32
/// gradients at the same (bf16) values, up to the bf16 rounding of the intermediates.
#[test]
fn bf16_conv_group_norm_upsample() {
    let bf = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
    let f = |t: &[Tensor]| {
        let h = t[0].conv2d(&t[1], Some(&t[2]), 1, Padding::uniform(1))?;
        let h = h.group_norm(2, Some(&t[3]), Some(&t[4]), 1e-5)?.upsample_nearest2x()?;
        h.to_dtype(DType::F32)
    };
    let inputs = [
        bf(rand(&[2, 3, 5, 4], 214)),
        bf(scaled(&[4, 3, 3, 3], 215, 0.5)),
        rand(&[4], 216),
        rand(&[4], 217).add_scalar(1.0).unwrap(),
        rand(&[4], 218),
    ];
    let leaves: Vec<Tensor> = inputs.iter().map(Tensor::requires_grad).collect();
    let y = f(&leaves).unwrap();
    assert_eq!(y.dims(), [2, 4, 10, 8]);
    let r = projection(y.dims());
    let grads = y
        .mul(&r)
        .unwrap()
        .flatten(0, 3)
        .unwrap()
        .sum(0, false)
        .unwrap()
        .backward()
        .unwrap();
    let f32s: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(DType::F32).unwrap()).collect();
    let f32_fn = |t: &[Tensor]| {
        let h = t[0].conv2d(&t[1], Some(&t[2]), 1, Padding::uniform(1))?;
        h.group_norm(2, Some(&t[3]), Some(&t[4]), 1e-5)?.upsample_nearest2x()
    };
    let mut worst = 0.0f64;
    for (i, leaf) in leaves.iter().enumerate() {
        let g = grads.get(leaf).unwrap_or_else(|| panic!("input {i} got no gradient"));
        assert_eq!(g.dtype(), DType::F32);
        let want = numeric_grad(&f32_fn, &f32s, i, &vals(&r), y.dims());
        worst = worst.max(assert_grad(&format!("bf16, input {i}"), &vals(g), &want, 1.0 / 64.0));
    }
    eprintln!("bf16 conv block: worst error {worst:.3} of the tolerance 2⁻⁶");
}

#[test]
fn segment_mean_with_an_empty_segment() {
    // Segment 3 is empty in batch 0, segment 0 in batch 1.
    let labels = Tensor::from_vec(vec![0i64, 2, 1, 0, 2, 2, 0, 1, 1, 3, 2, 3, 1, 2], &[2, 7]).unwrap();
    gradcheck("segment_mean", &[rand(&[2, 7, 3], 117)], TOL, |t| {
        t[0].segment_mean(&labels, 4)
    });
    let flat = Tensor::from_vec(vec![1i64, 0, 1, 1, 0], &[5]).unwrap();
    gradcheck(
        "segment_mean of a strided view, rank 2",
        &[rand_strided(&[5, 4], 118)],
        TOL,
        |t| t[0].segment_mean(&flat, 2),
    );
}

#[test]
fn index_select_embedding_gather() {
    // Repeated ids accumulate; unselected rows get zero.
    gradcheck("index_select dim 1, repeated ids", &[rand(&[2, 6, 3], 119)], TOL, |t| {
        t[0].index_select(1, &ids(&[4, 0, 4, 2, 4]))
    });
    gradcheck(
        "index_select dim 0 of a strided view",
        &[rand_strided(&[5, 3], 120)],
        TOL,
        |t| t[0].index_select(0, &ids(&[3, 3, 1])),
    );
    let tok = Tensor::from_vec(vec![5i64, 1, 1, 0, 5, 5], &[2, 3]).unwrap();
    gradcheck("embedding", &[rand(&[6, 4], 121)], TOL, |t| t[0].embedding(&tok));
    let index = Tensor::from_vec(vec![4i64, 0, 4, 1, 2, 2, 2, 3, 0, 1, 3, 3], &[3, 4]).unwrap();
    gradcheck("gather dim 1", &[rand(&[3, 5], 122)], TOL, |t| t[0].gather(1, &index));
    let index = Tensor::from_vec(vec![2i64, 0, 1, 0, 0, 3], &[2, 3]).unwrap();
    gradcheck(
        "gather dim 0 of a strided view",
        &[rand_strided(&[4, 3], 123)],
        TOL,
        |t| t[0].gather(0, &index),
    );
    // The index may be smaller than the input outside `dim` too.
    let index = Tensor::from_vec(vec![1i64, 4, 4, 0, 3, 2], &[2, 3]).unwrap();
    gradcheck("gather with a smaller index", &[rand(&[3, 5], 168)], TOL, |t| {
        t[0].gather(1, &index)
    });
}

#[test]
fn sum_and_mean() {
    let x = || rand_strided(&[3, 4, 5], 124);
    for keepdim in [false, true] {
        for dim in [0isize, 1, -1] {
            gradcheck(&format!("sum dim {dim} keepdim {keepdim}"), &[x()], TOL, |t| {
                t[0].sum(dim, keepdim)
            });
            gradcheck(&format!("mean dim {dim} keepdim {keepdim}"), &[x()], TOL, |t| {
                t[0].mean(dim, keepdim)
            });
        }
    }
    gradcheck("sum over a size-1 dim", &[rand(&[3, 1, 2], 125)], TOL, |t| {
        t[0].sum(1, false)
    });
}

#[test]
fn softmax_and_log_softmax() {
    gradcheck("softmax last dim", &[scaled(&[3, 7], 126, 3.0)], TOL, |t| {
        t[0].softmax(-1)
    });
    gradcheck(
        "softmax middle dim of a strided view",
        &[scaled(&[4, 5, 3], 127, 3.0).transpose(0, 2).unwrap()],
        TOL,
        |t| t[0].softmax(1),
    );
    gradcheck("log_softmax last dim", &[scaled(&[3, 7], 128, 3.0)], TOL, |t| {
        t[0].log_softmax(-1)
    });
    gradcheck("log_softmax first dim", &[scaled(&[4, 5], 129, 3.0)], TOL, |t| {
        t[0].log_softmax(0)
    });
    gradcheck("softmax over one element", &[rand(&[3, 1], 130)], TOL, |t| {
        t[0].softmax(-1)
    });
}

// ------------------------------------------------------------------------------------------------
// Composed graphs
// ------------------------------------------------------------------------------------------------

#[test]
fn transformer_block_end_to_end() {
    // [B, N, C] = [2, 5, 8], 2 heads of 4: layer_norm → qkv linear → split → heads → rms_norm (q, k)
    // → rope (q, k) → sdpa → output linear → residual → layer_norm → linear → gelu → linear →
    // residual. Every tensor is an input of the check.
    let (b, n, c, h) = (2usize, 5usize, 8usize, 2usize);
    let d = c / h;
    let pos = rand(&[n, 2], 131).mul_scalar(4.0).unwrap();
    let (cos, sin) = rope_tables(&pos, &[2, 2], 100.0).unwrap();
    let inputs = [
        rand(&[b, n, c], 132),                    // 0 x
        rand(&[c], 133).add_scalar(1.0).unwrap(), // 1 ln1 weight
        scaled(&[c], 134, 0.1),                   // 2 ln1 bias
        scaled(&[3 * c, c], 135, 0.5),            // 3 qkv weight
        scaled(&[3 * c], 136, 0.1),               // 4 qkv bias
        rand(&[d], 137).add_scalar(1.0).unwrap(), // 5 q scale
        rand(&[d], 138).add_scalar(1.0).unwrap(), // 6 k scale
        scaled(&[c, c], 139, 0.5),                // 7 out weight
        scaled(&[c], 140, 0.1),                   // 8 out bias
        rand(&[c], 141).add_scalar(1.0).unwrap(), // 9 ln2 weight
        scaled(&[2 * c, c], 142, 0.5),            // 10 mlp up weight
        scaled(&[2 * c], 143, 0.1),               // 11 mlp up bias
        scaled(&[c, 2 * c], 144, 0.5),            // 12 mlp down weight
        scaled(&[c], 145, 0.1),                   // 13 mlp down bias
    ];
    gradcheck("transformer block", &inputs, TOL_BLOCK, |t| {
        transformer_block(t, &cos, &sin, h)
    });
}

#[test]
fn gradients_accumulate_over_a_dag() {
    // x feeds four nodes, a = exp(x) feeds three, and the branches meet again.
    gradcheck("dag", &[rand(&[3, 4], 146), rand(&[4], 147)], TOL, |t| {
        let (x, w) = (&t[0], &t[1]);
        let a = x.exp()?;
        let b = a.mul(x)?;
        let c = b.sin()?.add(&a.mul(w)?)?;
        let d = c.softmax(-1)?.mul(&x.tanh()?)?;
        let e = a.sum(0, true)?.broadcast_as(&[3, 4])?.div_scalar(4.0)?;
        Tensor::cat(&[&d.sub(&e)?, &a.mul(&x.sigmoid()?)?], 0)
    });
}

#[test]
fn backward_is_repeatable_and_backward_with_seeds_a_tensor() {
    let x = rand(&[3, 5], 148).requires_grad();
    let w = rand(&[4, 5], 149).requires_grad();
    let y = x.linear(&w, None).unwrap().tanh().unwrap();
    let r = projection(&[3, 4]);
    let loss = y.mul(&r).unwrap().flatten(0, 1).unwrap().sum(0, false).unwrap();
    let (g1, g2) = (loss.backward().unwrap(), loss.backward().unwrap());
    assert_eq!(g1.len(), 2);
    for leaf in [&x, &w] {
        assert_eq!(
            vals(g1.get(leaf).unwrap()),
            vals(g2.get(leaf).unwrap()),
            "the graph is reusable"
        );
    }
    // backward_with(r) on y is the backward of Σ y·r.
    let g3 = y.backward_with(r.clone()).unwrap();
    for leaf in [&x, &w] {
        assert_close(
            &vals(g3.get(leaf).unwrap()),
            &vals(g1.get(leaf).unwrap()),
            1e-6,
            1e-5,
            "backward_with",
        );
    }
    // A one-element tensor of any rank is a scalar.
    let s = x.sum(1, true).unwrap().sum(0, true).unwrap();
    assert_eq!(s.dims(), [1, 1]);
    let g = s.backward().unwrap();
    assert_eq!(vals(g.get(&x).unwrap()), vec![1.0; 15]);
}

#[test]
fn a_long_chain_does_not_overflow_the_stack() {
    // The graph walk is iterative: 20 000 nodes in a row are fine. d/dx of x·1.0001ⁿ is 1.0001ⁿ,
    // up to the rounding of n f32 multiplications (each ≤ 6e-8 relative: ≤ 1.2e-3 in all).
    let n = 20_000;
    let x = rand(&[3], 169).requires_grad();
    let mut y = x.clone();
    for _ in 0..n {
        y = y.mul_scalar(1.0001).unwrap();
    }
    let g = y.sum(0, false).unwrap().backward().unwrap();
    let want = 1.0001f64.powi(n) as f32;
    assert_close(
        &vals(g.get(&x).unwrap()),
        &[want; 3],
        0.0,
        2e-3,
        "a chain of 20 000 nodes",
    );
}

/// A bf16 leaf reached by paths of different dtypes (a cast of a narrowed view and a cast of the
/// whole; bf16 arithmetic; a gather): gradients are f32 on every path, so they accumulate and combine,
/// and the leaf gets one f32 gradient.
#[test]
fn bf16_leaf_through_mixed_paths() {
    let x = rand(&[3, 4], 170).to_dtype(DType::BF16).unwrap();
    let leaf = x.requires_grad();
    let total = |t: Tensor| t.flatten(0, t.rank() - 1).unwrap().sum(0, false).unwrap();
    let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let mut failures = Vec::new();
    // Σ over cat(x[0..2], x) in f32: d/dx = 2 on the first two rows, 1 on the last.
    let y = total(Tensor::cat(&[&f32s(&leaf.narrow(0, 0, 2).unwrap()), &f32s(&leaf)], 0).unwrap());
    match y.backward() {
        Ok(g) => {
            assert_eq!(g.get(&leaf).unwrap().dtype(), DType::F32);
            assert_eq!(
                vals(g.get(&leaf).unwrap()),
                [[2.0f32; 8].as_slice(), &[1.0; 4]].concat()
            )
        }
        Err(e) => failures.push(format!("narrow + to_dtype: {e}")),
    }
    // Σ x² in bf16: d/dx = 2x.
    let y = total(leaf.mul(&leaf).unwrap());
    match y.backward() {
        Ok(g) => assert_close(
            &vals(g.get(&leaf).unwrap()),
            &vals(&x.mul_scalar(2.0).unwrap()),
            0.0,
            1.0 / 128.0,
            "2x",
        ),
        Err(e) => failures.push(format!("bf16 x·x: {e}")),
    }
    // Σ gather(x, 1, [[0], [1], [1]]) in f32: d/dx = 1 at the gathered entries.
    let index = Tensor::from_vec(vec![0i64, 1, 1], &[3, 1]).unwrap();
    let y = total(f32s(&leaf.gather(1, &index).unwrap()));
    match y.backward() {
        Ok(g) => assert_eq!(
            vals(g.get(&leaf).unwrap()),
            [1.0f32, 0., 0., 0., 0., 1., 0., 0., 0., 1., 0., 0.]
        ),
        Err(e) => failures.push(format!("bf16 gather: {e}")),
    }
    assert!(failures.is_empty(), "backward failed:\n{}", failures.join("\n"));
}

// ------------------------------------------------------------------------------------------------
// Errors and untracked tensors
// ------------------------------------------------------------------------------------------------

#[test]
fn backward_of_a_non_scalar_is_an_error() {
    let y = rand(&[2, 3], 150).requires_grad().mul_scalar(2.0).unwrap();
    let msg = backward_err(y.backward());
    assert!(msg.contains("scalar") && msg.contains("[2, 3]"), "{msg}");
    let msg = backward_err(y.backward_with(rand(&[3, 2], 151)));
    assert!(msg.contains("backward"), "{msg}");
    let msg = backward_err(rand(&[1], 152).exp().unwrap().backward());
    assert!(msg.contains("not tracked"), "{msg}");
}

#[test]
fn backward_through_an_op_without_a_rule_names_it() {
    let x2 = || rand(&[3, 4], 154).requires_grad();
    // Every unsupported op, then supported ops down to a scalar.
    let cases: Vec<(&str, Tensor)> = vec![
        ("cumsum", x2().cumsum(1).unwrap()),
        ("max", x2().max(1, false).unwrap()),
        ("min", x2().min(0, true).unwrap()),
        ("topk", x2().topk(2, -1).unwrap().0),
        ("scatter_add", {
            let index = Tensor::from_vec(vec![0i64, 2, 2, 1], &[1, 4]).unwrap();
            Tensor::zeros(&[3, 4], DType::F32, nvg_engine::Device::Cpu)
                .unwrap()
                .scatter_add(0, &index, &rand(&[1, 4], 158).requires_grad())
                .unwrap()
        }),
        ("sdpa with segment ids", {
            let q = rand(&[1, 1, 3, 2], 159).requires_grad();
            let seg = Tensor::from_vec(vec![0i64, 0, 1], &[1, 3]).unwrap();
            sdpa(&q, &q, &q, None, Some((&seg, &seg))).unwrap()
        }),
    ];
    for (name, y) in cases {
        assert!(y.is_tracked(), "{name}: the output of a tracked input is marked");
        let loss = y
            .tanh()
            .unwrap()
            .flatten(0, y.rank() - 1)
            .unwrap()
            .sum(0, false)
            .unwrap();
        let msg = backward_err(loss.backward());
        assert!(msg.contains(&format!("`{name}`")), "{name}: {msg}");
    }
    // Gradients for the rope tables are refused by name too.
    let (cos, sin) = tables(0, 3, 160);
    let y = rand(&[1, 1, 3, 6], 161).rope(&cos.requires_grad(), &sin).unwrap();
    let msg = backward_err(y.flatten(0, 3).unwrap().sum(0, false).unwrap().backward());
    assert!(msg.contains("rope"), "{msg}");
}

#[test]
fn untracked_inputs_get_no_gradient() {
    let x = rand(&[3, 4], 162).requires_grad();
    let c = rand(&[3, 4], 163); // a constant
    let unused = rand(&[2], 164).requires_grad();
    let y = x.mul(&c).unwrap().add(&c.exp().unwrap()).unwrap();
    assert!(!c.exp().unwrap().is_tracked());
    let g = y.flatten(0, 1).unwrap().sum(0, false).unwrap().backward().unwrap();
    assert_eq!(g.len(), 1, "only the leaf x");
    assert_close(&vals(g.get(&x).unwrap()), &vals(&c), 0.0, 0.0, "d(x·c)/dx = c");
    assert!(g.get(&c).is_none(), "an untracked input");
    assert!(g.get(&unused).is_none(), "a leaf the output does not depend on");
    assert!(g.get(&x.detach()).is_none(), "a detached copy is not the leaf");
    // Each requires_grad makes a new leaf, even from the same values.
    let x2 = x.requires_grad();
    let y = x.mul_scalar(2.0).unwrap().add(&x2.mul_scalar(3.0).unwrap()).unwrap();
    let g = y.flatten(0, 1).unwrap().sum(0, false).unwrap().backward().unwrap();
    assert_eq!(vals(g.get(&x).unwrap()), vec![2.0; 12]);
    assert_eq!(vals(g.get(&x2).unwrap()), vec![3.0; 12]);
    // A detached intermediate cuts the graph.
    let y = x.exp().unwrap().detach().mul(&x).unwrap();
    let g = y.flatten(0, 1).unwrap().sum(0, false).unwrap().backward().unwrap();
    assert_close(&vals(g.get(&x).unwrap()), &vals(&x.exp().unwrap()), 0.0, 0.0, "detach");
}
