//! 2-D convolution (k×k, stride, asymmetric zero padding, bias) and nearest-neighbour ×2 upsampling,
//! NCHW.

use super::{same_device, want_float};
use crate::Tensor;
use crate::autograd::Op;
use crate::cpu::conv::Im2col;
use crate::cpu::gemm::{self, Strided};
use crate::cpu::simd;
use crate::cpu::uninit::vec_written_by;
use crate::error::{Error, Result, fmt_shape};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Zero padding of a convolution input, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Padding {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Padding {
    /// The same padding on every side.
    pub fn uniform(p: usize) -> Self {
        Padding {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }
}

/// Which kernel `conv2d` runs on a CUDA device (the CPU has one implementation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKernel {
    /// im2col + GEMM unless the column buffer would exceed 2^28 floats (1 GiB), then direct.
    Auto,
    /// `nvg_conv2d_f32`: one thread per output element, no extra memory.
    Direct,
    /// `nvg_im2col_f32` into `[B, C·kh·kw, OH·OW]`, then the GEMM kernel and a broadcast bias add.
    Im2colGemm,
}

impl Tensor {
    /// Convolution of `self` (`[B, C, H, W]`) with `weight` (`[O, C, kh, kw]`), optional `bias` (`[O]`)
    /// → `[B, O, OH, OW]` with `OH = (H + top + bottom − kh)/stride + 1` (and likewise OW).
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, stride: usize, pad: Padding) -> Result<Tensor> {
        self.conv2d_with_kernel(weight, bias, stride, pad, ConvKernel::Auto)
    }

    /// [`Tensor::conv2d`] with an explicit device kernel (benchmarks and conformance tests compare them).
    pub fn conv2d_with_kernel(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        pad: Padding,
        kernel: ConvKernel,
    ) -> Result<Tensor> {
        let out = self.conv2d_untracked(weight, bias, stride, pad, kernel)?;
        let inputs: Vec<&Tensor> = [Some(self), Some(weight), bias].into_iter().flatten().collect();
        Ok(out.record(&inputs, || {
            Op::Conv2d(self.clone(), weight.clone(), bias.cloned(), stride, pad)
        }))
    }

    fn conv2d_untracked(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        pad: Padding,
        kernel: ConvKernel,
    ) -> Result<Tensor> {
        let op = "conv2d";
        same_device(op, self, weight)?;
        want_float(op, "input", self)?;
        want_float(op, "weight", weight)?;
        let [b, c, h, w] = self.dims_n::<4>(op)?;
        let [o, cw, kh, kw] = weight.dims_n::<4>(op)?;
        if cw != c {
            return Err(Error::shape(
                op,
                format!(
                    "weight {} expects {cw} input channels, input {} has {c}",
                    fmt_shape(weight.dims()),
                    fmt_shape(self.dims())
                ),
            ));
        }
        if stride == 0 {
            return Err(Error::arg(op, "stride must be at least 1"));
        }
        let (hp, wp) = (h + pad.top + pad.bottom, w + pad.left + pad.right);
        if kh == 0 || kw == 0 || hp < kh || wp < kw {
            return Err(Error::shape(
                op,
                format!(
                    "kernel {kh}×{kw} does not fit the padded input {hp}×{wp} (input {})",
                    fmt_shape(self.dims())
                ),
            ));
        }
        if let Some(bias) = bias {
            want_float(op, "bias", bias)?;
            super::want_shape(op, "bias", bias, &[o])?;
        }
        let (oh, ow) = ((hp - kh) / stride + 1, (wp - kw) / stride + 1);
        if !self.device().is_cpu() {
            return crate::cuda::ops::conv2d(self, weight, bias, stride, pad.top, pad.left, oh, ow, kernel);
        }
        let x = self.f32_data(op)?;
        let wt = weight.f32_data(op)?;
        let bv = bias.map(|t| t.f32_data(op)).transpose()?;
        let k = c * kh * kw;
        let npix = oh * ow;
        if b * o * npix == 0 {
            return Ok(Tensor::from_f32_as(Vec::new(), &[b, o, oh, ow], self.dtype()));
        }
        let isa = simd::isa();
        let image = |(bi, ob): (usize, &mut [MaybeUninit<f32>])| {
            let cols = Im2col {
                x: &x[bi * c * h * w..(bi + 1) * c * h * w],
                h,
                w,
                kh,
                kw,
                stride,
                pad_top: pad.top,
                pad_left: pad.left,
                ow,
            };
            let w = Strided::row_major(&wt, o, k);
            match &bv {
                Some(bv) => {
                    for (oc, row) in ob.chunks_mut(npix).enumerate() {
                        row.fill(MaybeUninit::new(bv[oc]));
                    }
                    // SAFETY: the bias fill above initialised the whole image.
                    let ob = unsafe { &mut *(ob as *mut [MaybeUninit<f32>] as *mut [f32]) };
                    gemm::gemm(isa, o, npix, k, &w, &cols, ob, npix, true);
                }
                None => gemm::gemm_uninit(isa, o, npix, k, &w, &cols, ob, npix),
            }
        };
        // SAFETY: each image's o·npix block is written in full, by the bias fill or by `gemm_uninit`.
        let out = unsafe { vec_written_by(b * o * npix, |out| out.chunks_mut(o * npix).enumerate().for_each(image)) };
        Ok(Tensor::from_f32_as(out, &[b, o, oh, ow], self.dtype()))
    }

    /// Nearest-neighbour upsampling by 2 of `[B, C, H, W]` → `[B, C, 2H, 2W]`.
    pub fn upsample_nearest2x(&self) -> Result<Tensor> {
        let out = self.upsample_nearest2x_untracked()?;
        Ok(out.record(&[self], || Op::Upsample2x(self.clone())))
    }

    fn upsample_nearest2x_untracked(&self) -> Result<Tensor> {
        let op = "upsample_nearest2x";
        want_float(op, "input", self)?;
        let [b, c, h, w] = self.dims_n::<4>(op)?;
        if !self.device().is_cpu() {
            return crate::cuda::ops::upsample2x(self);
        }
        let x = self.f32_data(op)?;
        let mut out = vec![0.0f32; b * c * 4 * h * w];
        if h * w > 0 {
            out.par_chunks_mut(4 * h * w)
                .zip(x.par_chunks(h * w))
                .for_each(|(o, plane)| {
                    for y in 0..2 * h {
                        let src = &plane[(y / 2) * w..(y / 2 + 1) * w];
                        for (xo, v) in o[y * 2 * w..(y + 1) * 2 * w].iter_mut().enumerate() {
                            *v = src[xo / 2];
                        }
                    }
                });
        }
        Ok(Tensor::from_f32_as(out, &[b, c, 2 * h, 2 * w], self.dtype()))
    }
}
