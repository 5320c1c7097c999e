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

/// One output row's share of a panel for one kernel tap `(ky, kx)`: panel columns `j..j + len`, of which
/// `lo..hi` read the input (from `src`, `src + stride`, ... within a channel plane) and the rest are
/// padding.
#[derive(Clone, Copy, Default)]
struct TapRun {
    j: usize,
    len: usize,
    lo: usize,
    hi: usize,
    src: usize,
}

impl Im2col<'_> {
    /// The panel's output pixels `j0..j0 + cols`, split at output-row boundaries, resolved for every
    /// kernel tap: `kh·kw` groups of `runs` entries. Everything that depends on the tap and the pixel but
    /// not on the channel is computed here, once per panel, so packing a row of B is table look-ups and
    /// copies.
    fn tap_runs(&self, j0: usize, cols: usize) -> (Vec<TapRun>, usize) {
        if cols == 0 {
            return (Vec::new(), 0);
        }
        // One run per output row the panel touches; entry (tap, run) at tap·runs + run.
        let runs = (j0 + cols - 1) / self.ow - j0 / self.ow + 1;
        let (st, pad_left, khw) = (self.stride, self.pad_left, self.kh * self.kw);
        let mut table = vec![TapRun::default(); khw * runs];
        let (mut j, mut run) = (0, 0);
        while j < cols {
            let (oy, ox0) = ((j0 + j) / self.ow, (j0 + j) % self.ow);
            let len = (self.ow - ox0).min(cols - j);
            for tap in 0..khw {
                let (ky, kx) = (tap / self.kw, tap % self.kw);
                // Output columns ox with 0 <= ox·stride + kx − pad_left < w read the input line.
                let ox_lo = pad_left.saturating_sub(kx).div_ceil(st);
                let ox_hi = (self.w + pad_left).saturating_sub(kx).div_ceil(st);
                let iy = (oy * st + ky).wrapping_sub(self.pad_top);
                let (lo, hi) = if iy < self.h {
                    let lo = ox_lo.saturating_sub(ox0).min(len);
                    (lo, ox_hi.saturating_sub(ox0).min(len).max(lo))
                } else {
                    (0, 0)
                };
                // Only read when lo < hi, where the input column is in range.
                let src = if lo < hi {
                    iy * self.w + (ox0 + lo) * st + kx - pad_left
                } else {
                    0
                };
                table[tap * runs + run] = TapRun { j, len, lo, hi, src };
            }
            j += len;
            run += 1;
        }
        debug_assert_eq!(run, runs);
        (table, runs)
    }
}

impl PackB for Im2col<'_> {
    fn pack_b(&self, k0: usize, kc: usize, j0: usize, cols: usize, nr: usize, dst: &mut [f32]) {
        let (table, runs) = self.tap_runs(j0, cols);
        let (khw, plane) = (self.kh * self.kw, self.h * self.w);
        // Row k of B is (channel k / khw, tap k % khw).
        let (mut ci, mut tap) = (k0 / khw, k0 % khw);
        for row in dst[..kc * nr].chunks_exact_mut(nr) {
            let x = &self.x[ci * plane..(ci + 1) * plane];
            row[cols..].fill(0.0);
            for r in &table[tap * runs..(tap + 1) * runs] {
                let out = &mut row[r.j..r.j + r.len];
                out[..r.lo].fill(0.0);
                out[r.hi..].fill(0.0);
                let n = r.hi - r.lo;
                if n == 0 {
                    continue;
                }
                if self.stride == 1 {
                    copy_run(&mut out[r.lo..r.hi], &x[r.src..r.src + n]);
                } else {
                    for (t, o) in out[r.lo..r.hi].iter_mut().enumerate() {
                        *o = x[r.src + t * self.stride];
                    }
                }
            }
            tap += 1;
            if tap == khw {
                tap = 0;
                ci += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Element `(row, pixel)` of the im2col matrix, straight from the definition.
    fn naive(im: &Im2col, row: usize, pix: usize) -> f32 {
        let khw = im.kh * im.kw;
        let (ci, ky, kx) = (row / khw, (row % khw) / im.kw, row % im.kw);
        let (oy, ox) = (pix / im.ow, pix % im.ow);
        let iy = (oy * im.stride + ky) as isize - im.pad_top as isize;
        let ix = (ox * im.stride + kx) as isize - im.pad_left as isize;
        if iy < 0 || ix < 0 || iy >= im.h as isize || ix >= im.w as isize {
            return 0.0;
        }
        im.x[ci * im.h * im.w + iy as usize * im.w + ix as usize]
    }

    #[test]
    fn packed_panels_match_the_im2col_definition() {
        // (c, h, w, kh, kw, stride, pad_top, pad_left, oh, ow): rows wider and narrower than a panel,
        // strides 1 and 2, asymmetric padding, taps that miss the input on some rows entirely.
        let geoms = [
            (3, 9, 7, 3, 3, 1, 1, 1, 9, 7),
            (2, 8, 8, 3, 3, 2, 0, 0, 4, 4),
            (4, 6, 5, 3, 3, 1, 2, 1, 6, 6),
            (2, 40, 3, 3, 3, 1, 0, 0, 38, 1),
            (3, 7, 11, 3, 2, 2, 1, 0, 4, 6),
            (2, 64, 64, 3, 3, 1, 1, 1, 64, 64),
            (1, 5, 5, 1, 1, 1, 0, 0, 5, 5),
        ];
        for (gi, &(c, h, w, kh, kw, stride, pad_top, pad_left, oh, ow)) in geoms.iter().enumerate() {
            let x: Vec<f32> = (0..c * h * w).map(|i| (i as f32 * 0.37 + gi as f32).sin()).collect();
            let im = Im2col {
                x: &x,
                h,
                w,
                kh,
                kw,
                stride,
                pad_top,
                pad_left,
                ow,
            };
            let (k, npix) = (c * kh * kw, oh * ow);
            for nr in [8usize, 16, 32] {
                // Panels at every offset step of 5 pixels, from every 4th row of B, partial widths too.
                for j0 in (0..npix).step_by(5) {
                    let cols = nr.min(npix - j0);
                    for k0 in (0..k).step_by(4) {
                        let kc = (k - k0).min(7);
                        let mut dst = vec![f32::NAN; kc * nr];
                        im.pack_b(k0, kc, j0, cols, nr, &mut dst);
                        for p in 0..kc {
                            for j in 0..nr {
                                let want = if j < cols { naive(&im, k0 + p, j0 + j) } else { 0.0 };
                                assert_eq!(
                                    dst[p * nr + j].to_bits(),
                                    want.to_bits(),
                                    "geometry {gi}, nr {nr}, panel at row {k0} + {p}, column {j0} + {j}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
