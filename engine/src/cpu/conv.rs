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
