//! Instruction-set detection and vectorisable scalar math.
//!
//! The math functions here use only arithmetic, comparisons and bit casts, so LLVM vectorises the loops
//! that call them; the `*_loop` drivers compile those loops once per instruction set (AVX-512, AVX2+FMA,
//! baseline) and pick one at run time. Nothing assumes the build machine's CPU.

use std::sync::OnceLock;

/// The vector instruction set the CPU kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F/VL/BW/DQ with FMA.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// Whatever the compilation target guarantees (SSE2 on x86-64).
    Baseline,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2+fma",
            Isa::Baseline => "baseline",
        }
    }

    /// Every instruction set this CPU can run, best first (tests run each kernel variant).
    pub fn available() -> Vec<Isa> {
        let best = isa();
        [Isa::Avx512, Isa::Avx2, Isa::Baseline]
            .into_iter()
            .filter(|&i| match best {
                Isa::Avx512 => true,
                Isa::Avx2 => i != Isa::Avx512,
                Isa::Baseline => i == Isa::Baseline,
            })
            .collect()
    }
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let forced = std::env::var("NVG_CPU_ISA").ok();
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let avx512 = avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq");
        let best = if avx512 {
            Isa::Avx512
        } else if avx2 {
            Isa::Avx2
        } else {
            Isa::Baseline
        };
        // NVG_CPU_ISA=avx2|baseline caps the instruction set (for benchmarking the fallbacks).
        match forced.as_deref() {
            Some("baseline") => Isa::Baseline,
            Some("avx2") if best != Isa::Baseline => Isa::Avx2,
            _ => best,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Isa::Baseline
    }
}

/// The best instruction set of this CPU (detected once).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(detect)
}

// ---------------------------------------------------------------------------------------------------
// Scalar math written to vectorise
// ---------------------------------------------------------------------------------------------------

/// e^x with at most 2 ulps error where the result is a normal number; 0 below -103.97 (where even
/// subnormals underflow), +inf above 88.72, NaN for NaN. (Cephes `expf` polynomial on r = x − n·ln2,
/// |r| ≤ ln2/2; 2^n is applied as two factors built from exponent bits so no step overflows.)
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_impl::<false>(x)
}

/// `exp` with fused multiply-adds in the polynomial: for loops compiled with FMA enabled (elsewhere
/// `mul_add` is a slow library call).
#[inline(always)]
fn exp_fma(x: f32) -> f32 {
    exp_impl::<true>(x)
}

#[inline(always)]
fn exp_impl<const FMA: bool>(x: f32) -> f32 {
    let fma = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAX: f32 = 88.722_84;
    const MIN: f32 = -103.972_08;
    let xc = x.clamp(MIN, MAX);
    let n = fma(xc, LOG2E, 0.5).floor();
    let r = fma(-n, LN2_LO, fma(-n, LN2_HI, xc));
    let mut p = 1.987_569_1e-4_f32;
    p = fma(p, r, 1.398_199_9e-3);
    p = fma(p, r, 8.333_452e-3);
    p = fma(p, r, 4.166_579_6e-2);
    p = fma(p, r, 1.666_666_5e-1);
    p = fma(p, r, 0.5);
    let e = fma(p * r, r, r) + 1.0;
    // 2^n = 2^n1 · 2^n2 with n1, n2 in [-75, 64]; adding 1.5·2^23 puts an integer in the low mantissa bits.
    let pow2 = |k: f32| f32::from_bits((k + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    let n1 = (n * 0.5).floor();
    let y = e * pow2(n1) * pow2(n - n1);
    if x > MAX {
        f32::INFINITY
    } else if x < MIN {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// x · sigmoid(x).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// GELU with the tanh approximation: 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))).
/// Uses 0.5(1 + tanh(y)) = sigmoid(2y), which keeps full relative precision for small |x|.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // sqrt(2/pi)
    let y = K * (x + 0.044_715 * x * x * x);
    x / (1.0 + exp(-2.0 * y))
}

/// tanh(x): Cephes' odd polynomial for |x| < 0.625, else sign(x)·(1 − 2/(e^{2|x|} + 1)).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let t = if a < 0.625 {
        let z = a * a;
        let p = (((-5.704_988_7e-3 * z + 2.063_908_8e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z - 0.333_332_8;
        a + a * z * p
    } else {
        1.0 - 2.0 / (exp(2.0 * a) + 1.0)
    };
    t.copysign(x)
}

// ---------------------------------------------------------------------------------------------------
// Loop drivers compiled per instruction set
// ---------------------------------------------------------------------------------------------------

/// Defines `pub fn $name(isa, args..)`, which runs the `#[inline(always)]` loop `$imp` compiled for
/// the given instruction set (AVX-512, AVX2+FMA) or, for `Isa::Baseline`, runs `$fallback`.
macro_rules! per_isa {
    ($(#[$doc:meta])* fn $name:ident<$($gen:ident: $bound:path),*>($($arg:ident: $ty:ty),*) -> $ret:ty = $imp:path, fallback $fb:path) => {
        $(#[$doc])*
        pub fn $name<$($gen: $bound),*>(isa: Isa, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
            unsafe fn avx512<$($gen: $bound),*>($($arg: $ty),*) -> $ret {
                $imp($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<$($gen: $bound),*>($($arg: $ty),*) -> $ret {
                $imp($($arg),*)
            }
            match isa {
                // SAFETY: `Isa::Avx512`/`Avx2` are only produced after run-time feature detection.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2($($arg),*) },
                _ => $fb($($arg),*),
            }
        }
    };
}

#[inline(always)]
fn map_loop(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
    assert_eq!(src.len(), dst.len(), "map: lengths differ");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(s);
    }
}

#[inline(always)]
fn zip_loop(a: &[f32], b: &[f32], dst: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    assert!(a.len() == dst.len() && b.len() == dst.len(), "zip: lengths differ");
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = f(x, y);
    }
}

#[inline(always)]
fn sum_loop(x: &[f32]) -> f32 {
    // 16 independent partial sums: vectorises and keeps rounding error low.
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    let mut s = 0.0;
    for &r in rest {
        s += r;
    }
    let mut h = 0.0;
    for a in acc {
        h += a;
    }
    h + s
}

#[inline(always)]
fn max_loop(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(rest) {
        m = if v > m { v } else { m };
    }
    m
}

#[inline(always)]
fn exp_shift_sum_loop<const FMA: bool>(x: &mut [f32], shift: f32) -> f32 {
    let exp = if FMA { exp_fma } else { exp };
    let mut acc = [0.0f32; 16];
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        for i in 0..16 {
            c[i] = exp(c[i] - shift);
            acc[i] += c[i];
        }
    }
    let mut s = 0.0;
    for v in chunks.into_remainder() {
        *v = exp(*v - shift);
        s += *v;
    }
    acc.iter().sum::<f32>() + s
}

per_isa! {
    /// `dst[i] = f(src[i])`, vectorised for the instruction set. `f` must be plain arithmetic (see
    /// `exp`) to vectorise; it is correct either way.
    fn map<F: Fn(f32) -> f32>(src: &[f32], dst: &mut [f32], f: F) -> () = map_loop, fallback map_loop
}

per_isa! {
    /// `dst[i] = f(a[i], b[i])`, vectorised like `map`.
    fn zip<F: Fn(f32, f32) -> f32>(a: &[f32], b: &[f32], dst: &mut [f32], f: F) -> () = zip_loop, fallback zip_loop
}

/// d/dx SiLU(x) · g.
#[inline(always)]
pub fn silu_grad(x: f32, g: f32) -> f32 {
    let s = sigmoid(x);
    g * s * (1.0 + x * (1.0 - s))
}

/// d/dx GELU_tanh(x) · g, with y = x/2 · (1 + tanh(c·(x + a·x³))).
#[inline(always)]
pub fn gelu_tanh_grad(x: f32, g: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/π)
    const A: f32 = 0.044_715;
    let t = tanh(C * (x + A * x * x * x));
    g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * A * x * x))
}

// The activation gradients as loops of their own: a closure this large passed to `zip` is not inlined
// into the vectorised loop (it stayed an out-of-line call per element, 8% of a training step).
#[inline(always)]
fn silu_grad_loop(x: &[f32], g: &[f32], dst: &mut [f32]) {
    for ((d, &x), &g) in dst.iter_mut().zip(x).zip(g) {
        *d = silu_grad(x, g);
    }
}

#[inline(always)]
fn gelu_tanh_grad_loop(x: &[f32], g: &[f32], dst: &mut [f32]) {
    for ((d, &x), &g) in dst.iter_mut().zip(x).zip(g) {
        *d = gelu_tanh_grad(x, g);
    }
}

per_isa! {
    /// `dst[i] = silu_grad(x[i], g[i])`.
    fn silu_backward<>(x: &[f32], g: &[f32], dst: &mut [f32]) -> () = silu_grad_loop, fallback silu_grad_loop
}

per_isa! {
    /// `dst[i] = gelu_tanh_grad(x[i], g[i])`.
    fn gelu_tanh_backward<>(x: &[f32], g: &[f32], dst: &mut [f32]) -> () = gelu_tanh_grad_loop, fallback gelu_tanh_grad_loop
}

per_isa! {
    /// Sum of a slice with 16 running partial sums.
    fn sum<>(x: &[f32]) -> f32 = sum_loop, fallback sum_loop
}

per_isa! {
    /// Largest element, ignoring NaNs (−inf for an empty or all-NaN slice). For softmax shifts, where a
    /// NaN input poisons the result anyway.
    fn max<>(x: &[f32]) -> f32 = max_loop, fallback max_loop
}

per_isa! {
    /// `x[i] = e^(x[i] − shift)` in place; returns the sum of the new values (the softmax denominator).
    fn exp_shift_sum<>(x: &mut [f32], shift: f32) -> f32 = exp_shift_sum_loop::<true>, fallback exp_shift_sum_loop::<false>
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulps_of_libm() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp(x), want)).max(ulps(exp_fma(x), want));
            x += 0.0137;
        }
        assert!(worst <= 2, "worst error {worst} ulps");
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(1000.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn activations_match_f64_formulas() {
        let mut x = -12.0f32;
        while x < 12.0 {
            let xd = x as f64;
            let sig = 1.0 / (1.0 + (-xd).exp());
            let y = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3));
            // 0.5x(1 + tanh y) written as x/(1 + e^{-2y}) so that f64 keeps the tail where 1 + tanh y underflows.
            let gelu = xd / (1.0 + (-2.0 * y).exp());
            assert!(
                (sigmoid(x) as f64 - sig).abs() <= 2e-7 * sig.abs().max(1e-30) + 1e-38,
                "sigmoid({x})"
            );
            assert!(
                (silu(x) as f64 - xd * sig).abs() <= 3e-7 * (xd * sig).abs() + 1e-30,
                "silu({x})"
            );
            // The f32 rounding of the cubic argument y is amplified by |2y| through the exponential.
            let tol = 3e-7 * (1.0 + 2.0 * y.abs());
            assert!(
                (gelu_tanh(x) as f64 - gelu).abs() <= tol * gelu.abs() + 1e-30,
                "gelu({x}) = {} vs {gelu}",
                gelu_tanh(x)
            );
            assert!(
                (tanh(x) as f64 - xd.tanh()).abs() <= 3e-7 * xd.tanh().abs() + 1e-30,
                "tanh({x})"
            );
            x += 0.0173;
        }
    }

    #[test]
    fn every_isa_gives_the_same_map_and_close_sums() {
        let src: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let mut want = vec![0.0; src.len()];
        map(Isa::Baseline, &src, &mut want, gelu_tanh);
        let s0 = sum(Isa::Baseline, &want);
        for isa in Isa::available() {
            let mut got = vec![0.0; src.len()];
            map(isa, &src, &mut got, gelu_tanh);
            for (g, w) in got.iter().zip(&want) {
                assert!(ulps(*g, *w) <= 1, "{isa:?}");
            }
            assert!((sum(isa, &got) - s0).abs() < 1e-4 * s0.abs().max(1.0));
        }
    }
}
