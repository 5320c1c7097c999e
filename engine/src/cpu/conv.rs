//! Convolution as an implicit GEMM: `out[o, pixel] = Σ_(c,ky,kx) W[o, c, ky, kx] · x[c, iy, ix]`.
//! The weight is the A operand as stored (`[O, C·kh·kw]`); the B operand is the im2col matrix of the
//! image, which `Im2col` packs panel by panel straight from the image, so no im2col buffer exists.

use super::gemm::PackB;

/// Copies a short run. Runs are at most one panel (32 floats) long, where a `memcpy` call costs more
/// than the copy: full 16-float chunks go through fixed-size moves the compiler inlines.
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    let mut d = dst.chunks_exact_mut(16);
    let mut s = src.chunks_exact(16);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let v: [f32; 16] = sc.try_into().unwrap();
        dc.copy_from_slice(&v);
    }
    for (o, &v) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *o = v;
    }
}

/// The virtual `[C·kh·kw, OH·OW]` im2col matrix of one `[C, H, W]` image.
pub struct Im2col<'a> {
    pub x: &'a [f32],
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub ow: usize,
}

/// A stretch of a panel's columns that lies in one output row: panel columns `j..j+len` are output
/// pixels `(oy, ox0..ox0+len)`.
#[derive(Clone, Copy)]
struct Run {
    j: usize,
    oy: usize,
    ox0: usize,
    len: usize,
}

impl PackB for Im2col<'_> {
    fn pack_b(&self, k0: usize, kc: usize, j0: usize, cols: usize, nr: usize, dst: &mut [f32]) {
        // The panel's output pixels, split at output-row boundaries (once per panel, not per row of B).
        let mut runs: Vec<Run> = Vec::with_capacity(4);
        let mut j = 0;
        while j < cols {
            let pix = j0 + j;
            let (oy, ox0) = (pix / self.ow, pix % self.ow);
            let len = (self.ow - ox0).min(cols - j);
            runs.push(Run { j, oy, ox0, len });
            j += len;
        }
        let (st, hh, ww) = (self.stride as isize, self.h as isize, self.w as isize);
        let ceil_div = |a: isize| if a <= 0 { a / st } else { (a + st - 1) / st };
        // Row k0 of B is (channel, ky, kx); later rows advance kx, then ky, then the channel.
        let khw = self.kh * self.kw;
        let (mut ci, mut ky, mut kx) = (k0 / khw, (k0 % khw) / self.kw, k0 % self.kw);
        for p in 0..kc {
            let plane = &self.x[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            let row = &mut dst[p * nr..(p + 1) * nr];
            row[cols..].fill(0.0);
            // Output columns ox with 0 <= ox·stride + kx − pad_left < w read the input line; the others
            // are padding.
            let shift = self.pad_left as isize - kx as isize;
            let (ox_lo, ox_hi) = (ceil_div(shift), ceil_div(ww + shift));
            for r in &runs {
                let out = &mut row[r.j..r.j + r.len];
                let iy = (r.oy * self.stride + ky) as isize - self.pad_top as isize;
                if iy < 0 || iy >= hh {
                    out.fill(0.0);
                    continue;
                }
                let line = &plane[iy as usize * self.w..(iy as usize + 1) * self.w];
                let lo = (ox_lo - r.ox0 as isize).clamp(0, r.len as isize) as usize;
                let hi = ((ox_hi - r.ox0 as isize).clamp(0, r.len as isize) as usize).max(lo);
                out[..lo].fill(0.0);
                out[hi..].fill(0.0);
                if lo < hi {
                    let start = ((r.ox0 + lo) * self.stride + kx) - self.pad_left;
                    if self.stride == 1 {
                        copy_run(&mut out[lo..hi], &line[start..start + (hi - lo)]);
                    } else {
                        for (t, o) in out[lo..hi].iter_mut().enumerate() {
                            *o = line[start + t * self.stride];
                        }
                    }
                }
            }
            kx += 1;
            if kx == self.kw {
                kx = 0;
                ky += 1;
                if ky == self.kh {
                    ky = 0;
                    ci += 1;
                }
            }
        }
    }
}

/// Output pixels per task when a whole im2col matrix is written out (rows are split across threads).
const MATERIALISE_TASK: usize = 1 << 14;

impl Im2col<'_> {
    /// Writes the whole `[rows, npix]` im2col matrix (`rows = C·kh·kw`, `npix = OH·OW`) row-major into
    /// `dst`: the backward pass multiplies by its transpose, which the GEMM reads from a buffer.
    pub fn materialise(&self, rows: usize, npix: usize, dst: &mut [f32]) {
        use rayon::prelude::*;
        let dst = &mut dst[..rows * npix];
        if dst.is_empty() {
            return;
        }
        // Packing one panel `npix` wide is writing the rows of the matrix one after the other.
        let per_task = (MATERIALISE_TASK / npix).max(1);
        let work =
            |(t, chunk): (usize, &mut [f32])| self.pack_b(t * per_task, chunk.len() / npix, 0, npix, npix, chunk);
        if rows > per_task {
            dst.par_chunks_mut(per_task * npix).enumerate().for_each(work);
        } else {
            work((0, dst));
        }
    }
}

/// The geometry of a convolution of one `[C, H, W]` image into `[O, OH, OW]`.
#[derive(Clone, Copy, Debug)]
pub struct ConvGeom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    /// Output columns `ox` whose input column `ox·stride + kx − pad_left` lies in `0..w`.
    fn valid_ox(&self, kx: usize) -> std::ops::Range<usize> {
        let s = self.stride;
        let lo = self.pad_left.saturating_sub(kx).div_ceil(s);
        // ox·s + kx < w + pad_left  ⇔  ox < (w + pad_left − kx) / s, rounded up.
        let hi = (self.w + self.pad_left).saturating_sub(kx).div_ceil(s).min(self.ow);
        lo.min(hi)..hi
    }
}

/// col2im, the adjoint of [`Im2col`]: adds each element of the `[C·kh·kw, OH·OW]` matrix `cols` into
/// the pixel of the `[C, H, W]` image `dx` it was read from (padding reads are dropped). Channels are
/// independent (each writes its own plane) and run in parallel; each pixel sums its contributions in
/// a fixed order (ky, kx, oy, ox), so the result does not depend on the thread count.
pub fn col2im_add(g: &ConvGeom, cols: &[f32], dx: &mut [f32]) {
    use rayon::prelude::*;
    let (plane, npix) = (g.h * g.w, g.oh * g.ow);
    let khw = g.kh * g.kw;
    assert!(cols.len() >= g.c * khw * npix && dx.len() >= g.c * plane);
    if plane == 0 || npix == 0 {
        return;
    }
    let channel = |(ci, img): (usize, &mut [f32])| {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &cols[(ci * khw + ky * g.kw + kx) * npix..][..npix];
                let oxs = g.valid_ox(kx);
                if oxs.is_empty() {
                    continue;
                }
                for oy in 0..g.oh {
                    let iy = oy * g.stride + ky;
                    if iy < g.pad_top || iy - g.pad_top >= g.h {
                        continue;
                    }
                    let line = &mut img[(iy - g.pad_top) * g.w..][..g.w];
                    let src = &row[oy * g.ow + oxs.start..oy * g.ow + oxs.end];
                    let ix0 = oxs.start * g.stride + kx - g.pad_left;
                    // Every `ix0 + t·stride` for t < src.len() is below w (`valid_ox`).
                    for (d, &s) in line[ix0..].iter_mut().step_by(g.stride).zip(src) {
                        *d += s;
                    }
                }
            }
        }
    };
    let dx = &mut dx[..g.c * plane];
    if g.c * khw * npix >= MATERIALISE_TASK {
        dx.par_chunks_mut(plane).enumerate().for_each(channel);
    } else {
        dx.chunks_mut(plane).enumerate().for_each(channel);
    }
}
