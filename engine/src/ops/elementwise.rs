//! Element-wise ops: unary maps, binary ops with NumPy broadcasting, scalar ops, clamp.
//! Floats compute in f32 and keep their dtype; binary ops on i64 compute in i64.

use super::{PAR_MIN_ELEMS, same_device};
use crate::autograd::Op;
use crate::cpu::simd::{self, Isa};
use crate::error::{Error, Result, fmt_shape};
use crate::layout::{Layout, broadcast_shapes};
use crate::{DType, Tensor};
use rayon::prelude::*;

/// A unary float map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Recip,
    Sqr,
    Tanh,
    Sin,
    Cos,
    Sigmoid,
    Silu,
    /// GELU with the tanh approximation (what NVG's MLPs use).
    GeluTanh,
    Relu,
}

impl Unary {
    pub fn name(self) -> &'static str {
        match self {
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

    /// The scalar definition (the CPU kernel; vectorises where the body is plain arithmetic).
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Unary::Neg => -x,
            Unary::Abs => x.abs(),
            Unary::Exp => simd::exp(x),
            Unary::Log => x.ln(),
            Unary::Sqrt => x.sqrt(),
            Unary::Rsqrt => 1.0 / x.sqrt(),
            Unary::Recip => 1.0 / x,
            Unary::Sqr => x * x,
            Unary::Tanh => simd::tanh(x),
            Unary::Sin => x.sin(),
            Unary::Cos => x.cos(),
            Unary::Sigmoid => simd::sigmoid(x),
            Unary::Silu => simd::silu(x),
            Unary::GeluTanh => simd::gelu_tanh(x),
            // NaN stays NaN (PyTorch's convention).
            Unary::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
        }
    }
}

/// A binary op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
}

impl Binary {
    pub fn name(self) -> &'static str {
        match self {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
            Binary::Div => "div",
            Binary::Maximum => "maximum",
            Binary::Minimum => "minimum",
        }
    }

    #[inline(always)]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div => a / b,
            // A NaN on either side wins, as in torch.maximum / torch.minimum.
            Binary::Maximum => {
                if a.is_nan() || a > b {
                    a
                } else {
                    b
                }
            }
            Binary::Minimum => {
                if a.is_nan() || a < b {
                    a
                } else {
                    b
                }
            }
        }
    }

    /// Integer version; division truncates toward zero and division by zero is an error upstream.
    #[inline(always)]
    fn apply_i64(self, a: i64, b: i64) -> i64 {
        match self {
            Binary::Add => a.wrapping_add(b),
            Binary::Sub => a.wrapping_sub(b),
            Binary::Mul => a.wrapping_mul(b),
            Binary::Div => a.wrapping_div(b),
            Binary::Maximum => a.max(b),
            Binary::Minimum => a.min(b),
        }
    }
}

/// Applies `f` over `src` into a new vector, in parallel chunks when large.
pub(crate) fn par_map(src: &[f32], f: impl Fn(f32) -> f32 + Sync + Copy) -> Vec<f32> {
    let isa = simd::isa();
    let mut out = vec![0.0f32; src.len()];
    if src.len() >= PAR_MIN_ELEMS {
        out.par_chunks_mut(1 << 14)
            .zip(src.par_chunks(1 << 14))
            .for_each(|(o, s)| simd::map(isa, s, o, f));
    } else {
        simd::map(isa, src, &mut out, f);
    }
    out
}

/// The per-row plan of a broadcast binary op: both operands broadcast to `dims`, dimensions merged
/// where both layouts allow, then visited as rows of the last merged dimension.
struct BroadcastRows {
    len: usize,
    stride_a: usize,
    stride_b: usize,
    starts: Vec<(usize, usize)>,
}

fn broadcast_rows(la: &Layout, lb: &Layout) -> BroadcastRows {
    // Joint collapse: merge dim i into i+1's run when both layouts are packed across the boundary.
    let dims = la.dims();
    let (sa, sb) = (la.strides(), lb.strides());
    let mut md: Vec<usize> = Vec::new();
    let mut ma: Vec<usize> = Vec::new();
    let mut mb: Vec<usize> = Vec::new();
    for i in 0..dims.len() {
        if dims[i] == 1 {
            continue;
        }
        if let (Some(d), Some(a), Some(b)) = (md.last_mut(), ma.last_mut(), mb.last_mut())
            && *a == sa[i] * dims[i]
            && *b == sb[i] * dims[i]
        {
            *d *= dims[i];
            *a = sa[i];
            *b = sb[i];
            continue;
        }
        md.push(dims[i]);
        ma.push(sa[i]);
        mb.push(sb[i]);
    }
    if md.is_empty() {
        md.push(1);
        ma.push(1);
        mb.push(1);
    }
    let r = md.len();
    let (len, stride_a, stride_b) = (md[r - 1], ma[r - 1], mb[r - 1]);
    let outer: usize = md[..r - 1].iter().product();
    let mut starts = Vec::with_capacity(outer);
    let mut idx = vec![0usize; r - 1];
    let (mut oa, mut ob) = (la.offset(), lb.offset());
    for _ in 0..outer {
        starts.push((oa, ob));
        for d in (0..r - 1).rev() {
            idx[d] += 1;
            oa += ma[d];
            ob += mb[d];
            if idx[d] < md[d] {
                break;
            }
            oa -= ma[d] * md[d];
            ob -= mb[d] * md[d];
            idx[d] = 0;
        }
    }
    BroadcastRows {
        len,
        stride_a,
        stride_b,
        starts,
    }
}

#[inline(always)]
fn binary_row(
    isa: Isa,
    op: Binary,
    a: &[f32],
    b: &[f32],
    plan: &BroadcastRows,
    start: (usize, usize),
    out: &mut [f32],
) {
    let (oa, ob) = start;
    let n = out.len();
    match (plan.stride_a, plan.stride_b) {
        (1, 1) => simd::zip(isa, &a[oa..oa + n], &b[ob..ob + n], out, |x, y| op.apply(x, y)),
        (1, 0) => {
            let y = b[ob];
            simd::map(isa, &a[oa..oa + n], out, |x| op.apply(x, y))
        }
        (0, 1) => {
            let x = a[oa];
            simd::map(isa, &b[ob..ob + n], out, |y| op.apply(x, y))
        }
        (sa, sb) => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = op.apply(a[oa + i * sa], b[ob + i * sb]);
            }
        }
    }
}

impl Tensor {
    /// Applies a unary float op element-wise.
    pub fn unary(&self, op: Unary) -> Result<Tensor> {
        let out = self.unary_untracked(op)?;
        Ok(out.record_with_output(&[self], |y| Op::Unary(self.clone(), y, op)))
    }

    fn unary_untracked(&self, op: Unary) -> Result<Tensor> {
        if !self.device().is_cpu() {
            return crate::cuda::ops::unary(self, op);
        }
        let x = self.f32_data(op.name())?;
        // One monomorphised loop per op: a closure that matches on `op` per element is too big to
        // inline into the vectorised loop and runs scalar, a call per element.
        macro_rules! each {
            ($($variant:ident),*) => {
                match op {
                    $(Unary::$variant => par_map(&x, |v| Unary::$variant.apply(v)),)*
                }
            };
        }
        let out = each!(
            Neg, Abs, Exp, Log, Sqrt, Rsqrt, Recip, Sqr, Tanh, Sin, Cos, Sigmoid, Silu, GeluTanh, Relu
        );
        Ok(Tensor::from_f32_as(out, self.dims(), self.dtype()))
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary(Unary::Neg)
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(Unary::Abs)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(Unary::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary(Unary::Log)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(Unary::Sqrt)
    }
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary(Unary::Rsqrt)
    }
    pub fn recip(&self) -> Result<Tensor> {
        self.unary(Unary::Recip)
    }
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary(Unary::Sqr)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(Unary::Tanh)
    }
    pub fn sin(&self) -> Result<Tensor> {
        self.unary(Unary::Sin)
    }
    pub fn cos(&self) -> Result<Tensor> {
        self.unary(Unary::Cos)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(Unary::Sigmoid)
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(Unary::Silu)
    }
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.unary(Unary::GeluTanh)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(Unary::Relu)
    }

    /// `self (op) rhs` with NumPy broadcasting. Both operands must have the same dtype: a float
    /// dtype (computed in f32, stored as that dtype) or i64.
    pub fn binary(&self, rhs: &Tensor, op: Binary) -> Result<Tensor> {
        let out = self.binary_untracked(rhs, op)?;
        Ok(out.record(&[self, rhs], || Op::Binary(self.clone(), rhs.clone(), op)))
    }

    fn binary_untracked(&self, rhs: &Tensor, op: Binary) -> Result<Tensor> {
        let name = op.name();
        same_device(name, self, rhs)?;
        if self.dtype() != rhs.dtype() {
            return Err(Error::dtype(
                name,
                format!(
                    "both operands of dtype {} (shapes {} and {})",
                    self.dtype(),
                    fmt_shape(self.dims()),
                    fmt_shape(rhs.dims())
                ),
                rhs.dtype(),
            ));
        }
        let dims = broadcast_shapes(name, self.dims(), rhs.dims())?;
        if !self.device().is_cpu() || !rhs.device().is_cpu() {
            return crate::cuda::ops::binary(self, rhs, op, &dims);
        }
        let la = self.layout().broadcast_to(name, &dims)?;
        let lb = rhs.layout().broadcast_to(name, &dims)?;
        let n: usize = dims.iter().product();
        if n == 0 {
            return Tensor::zeros(&dims, self.dtype(), self.device());
        }
        let plan = broadcast_rows(&la, &lb);
        match self.dtype() {
            DType::I64 => {
                let (a, b) = (self.cpu_storage(name)?, rhs.cpu_storage(name)?);
                let (a, b) = (a.as_slice::<i64>().unwrap(), b.as_slice::<i64>().unwrap());
                let mut out = Vec::with_capacity(n);
                for &(oa, ob) in &plan.starts {
                    for i in 0..plan.len {
                        let y = b[ob + i * plan.stride_b];
                        if op == Binary::Div && y == 0 {
                            return Err(Error::arg(
                                name,
                                format!(
                                    "integer division by zero ({} / {})",
                                    fmt_shape(self.dims()),
                                    fmt_shape(rhs.dims())
                                ),
                            ));
                        }
                        out.push(op.apply_i64(a[oa + i * plan.stride_a], y));
                    }
                }
                Tensor::from_vec(out, &dims)
            }
            DType::F32 => {
                let (a, b) = (self.cpu_storage(name)?, rhs.cpu_storage(name)?);
                let (a, b) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
                Ok(Tensor::from_f32_as(binary_f32(op, a, b, &plan, n), &dims, DType::F32))
            }
            dt if dt.is_float() => {
                // Reduced-precision storage: widen both operands (packed), then run the f32 path.
                let a = self.broadcast_as(&dims)?.f32_data(name)?.into_owned();
                let b = rhs.broadcast_as(&dims)?.f32_data(name)?.into_owned();
                let packed = Layout::contiguous(&dims);
                let plan = broadcast_rows(&packed, &packed);
                Ok(Tensor::from_f32_as(binary_f32(op, &a, &b, &plan, n), &dims, dt))
            }
            dt => Err(Error::dtype(name, "a float or i64 tensor", dt)),
        }
    }

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, Binary::Add)
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, Binary::Sub)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, Binary::Mul)
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, Binary::Div)
    }
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, Binary::Maximum)
    }
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, Binary::Minimum)
    }

    fn affine_named(&self, op: &'static str, mul: f32, add: f32) -> Result<Tensor> {
        if !self.device().is_cpu() {
            let out = crate::cuda::ops::affine(self, mul, add)?;
            return Ok(out.record(&[self], || Op::Affine(self.clone(), mul)));
        }
        let x = self.f32_data(op)?;
        let out = Tensor::from_f32_as(par_map(&x, move |v| v * mul + add), self.dims(), self.dtype());
        Ok(out.record(&[self], || Op::Affine(self.clone(), mul)))
    }

    /// `self · mul + add` element-wise (float tensors).
    pub fn affine(&self, mul: f32, add: f32) -> Result<Tensor> {
        self.affine_named("affine", mul, add)
    }

    pub fn add_scalar(&self, v: f32) -> Result<Tensor> {
        self.affine_named("add_scalar", 1.0, v)
    }

    pub fn mul_scalar(&self, v: f32) -> Result<Tensor> {
        self.affine_named("mul_scalar", v, 0.0)
    }

    /// `self / v` element-wise (a true division, not a multiplication by 1/v, which rounds differently).
    pub fn div_scalar(&self, v: f32) -> Result<Tensor> {
        let out = self.div_scalar_untracked(v)?;
        Ok(out.record(&[self], || Op::DivScalar(self.clone(), v)))
    }

    fn div_scalar_untracked(&self, v: f32) -> Result<Tensor> {
        if !self.device().is_cpu() {
            return crate::cuda::ops::div_scalar(self, v);
        }
        let x = self.f32_data("div_scalar")?;
        Ok(Tensor::from_f32_as(
            par_map(&x, move |a| a / v),
            self.dims(),
            self.dtype(),
        ))
    }

    /// `self^e` element-wise (float tensors).
    pub fn powf(&self, e: f32) -> Result<Tensor> {
        let out = self.powf_untracked(e)?;
        Ok(out.record(&[self], || Op::Powf(self.clone(), e)))
    }

    fn powf_untracked(&self, e: f32) -> Result<Tensor> {
        if !self.device().is_cpu() {
            return crate::cuda::ops::powf(self, e);
        }
        let x = self.f32_data("powf")?;
        Ok(Tensor::from_f32_as(
            par_map(&x, move |v| v.powf(e)),
            self.dims(),
            self.dtype(),
        ))
    }

    /// Clamps every element to `[min, max]` (NaN stays NaN).
    pub fn clamp(&self, min: f32, max: f32) -> Result<Tensor> {
        let out = self.clamp_untracked(min, max)?;
        Ok(out.record(&[self], || Op::Clamp(self.clone(), min, max)))
    }

    fn clamp_untracked(&self, min: f32, max: f32) -> Result<Tensor> {
        if min > max {
            return Err(Error::arg("clamp", format!("min {min} > max {max}")));
        }
        if !self.device().is_cpu() {
            return crate::cuda::ops::clamp(self, min, max);
        }
        let x = self.f32_data("clamp")?;
        let f = move |v: f32| {
            if v < min {
                min
            } else if v > max {
                max
            } else {
                v
            }
        };
        Ok(Tensor::from_f32_as(par_map(&x, f), self.dims(), self.dtype()))
    }
}

fn binary_f32(op: Binary, a: &[f32], b: &[f32], plan: &BroadcastRows, n: usize) -> Vec<f32> {
    let isa = simd::isa();
    let mut out = vec![0.0f32; n];
    let len = plan.len;
    if n >= PAR_MIN_ELEMS && plan.starts.len() > 1 {
        out.par_chunks_mut(len)
            .zip(plan.starts.par_iter())
            .for_each(|(o, &st)| binary_row(isa, op, a, b, plan, st, o));
    } else if n >= PAR_MIN_ELEMS {
        // One long row: split it.
        let (oa, ob) = plan.starts[0];
        out.par_chunks_mut(1 << 14).enumerate().for_each(|(c, o)| {
            let off = c << 14;
            binary_row(
                isa,
                op,
                a,
                b,
                plan,
                (oa + off * plan.stride_a, ob + off * plan.stride_b),
                o,
            );
        });
    } else {
        for (o, &st) in out.chunks_mut(len).zip(&plan.starts) {
            binary_row(isa, op, a, b, plan, st, o);
        }
    }
    out
}
