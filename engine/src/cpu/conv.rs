//! Convolution as an implicit GEMM: `out[o, pixel] = Σ_(c,ky,kx) W[o, c, ky, kx] · x[c, iy, ix]`.
//! The weight is the A operand as stored (`[O, C·kh·kw]`); the B operand is the im2col matrix of the
//! image, which `Im2col` packs panel by panel straight from the image, so no im2col buffer exists.

use super::gemm::PackB;

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

impl PackB for Im2col<'_> {
    fn pack_b(&self, k0: usize, kc: usize, j0: usize, cols: usize, nr: usize, dst: &mut [f32]) {
        let khw = self.kh * self.kw;
        for p in 0..kc {
            let kk = k0 + p;
            let (ci, r) = (kk / khw, kk % khw);
            let (ky, kx) = (r / self.kw, r % self.kw);
            let plane = &self.x[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            let row = &mut dst[p * nr..(p + 1) * nr];
            row[cols..].fill(0.0);
            // Walk the output pixels j0..j0+cols one output row at a time.
            let mut j = 0;
            while j < cols {
                let pix = j0 + j;
                let (oy, ox0) = (pix / self.ow, pix % self.ow);
                let run = (self.ow - ox0).min(cols - j);
                let iy = (oy * self.stride + ky) as isize - self.pad_top as isize;
                let out = &mut row[j..j + run];
                if iy < 0 || iy >= self.h as isize {
                    out.fill(0.0);
                } else {
                    let line = &plane[iy as usize * self.w..(iy as usize + 1) * self.w];
                    // Output columns t with 0 <= (ox0+t)·stride + kx − pad_left < w read the line; the
                    // others are padding.
                    let first = |t: usize| ((ox0 + t) * self.stride + kx) as isize - self.pad_left as isize;
                    let lo = (0..run).find(|&t| first(t) >= 0).unwrap_or(run);
                    let hi = (lo..run).find(|&t| first(t) >= self.w as isize).unwrap_or(run);
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    if lo < hi {
                        let start = first(lo) as usize;
                        if self.stride == 1 {
                            out[lo..hi].copy_from_slice(&line[start..start + (hi - lo)]);
                        } else {
                            for (t, o) in out[lo..hi].iter_mut().enumerate() {
                                *o = line[start + t * self.stride];
                            }
                        }
                    }
                }
                j += run;
            }
        }
    }
}
