//! Single-precision matrix multiply, `C (+)= A·B`, in the BLIS style:
//!
//! ```text
//! for pc in K by KC:            KC: as deep as ~1.5 MiB of packed A allows
//!   for ic in M by MC:          A block  MC×KC packed into MR-tall panels, shared    (L2)
//!     parallel over NR-wide column panels jr of C:
//!       pack B panel KC×NR into the task's own buffer                               (L1)
//!       for ir: MR×NR register tile (+)= A panel · B panel
//! ```
//!
//! Operands are read through the `PackA`/`PackB` traits, so strided views (a transposed weight, a
//! head of a packed QKV tensor) and virtual matrices (the im2col view of a convolution) are packed
//! straight from where they live without an intermediate copy. The register tile ("micro-kernel") is
//! chosen per instruction set at run time: 12×32 with AVX-512, 6×16 with AVX2+FMA, 4×16 portable.

use super::simd::Isa;
use rayon::prelude::*;

/// Largest A block in rows: NVG's CFG batches (514 and 1026 tokens) fit one block, which is cheaper
/// than packing every B panel twice; the depth then shrinks to keep the block near `A_BLOCK_BYTES`.
const MC_MAX: usize = 1056;
/// Bytes of packed A a block should take: half of a 2 MiB L2 (514 rows × 512 deep for NVG's GEMMs).
const A_BLOCK_BYTES: usize = 1 << 20;
/// Shallowest block depth (shallower blocks re-read C too often).
const KC_MIN: usize = 256;

/// Block depth for an A block of `mc` rows: about as deep as the L2 budget allows, so that C is read
/// and written as few times as possible, with K split into equal blocks (rounded to the nearest count,
/// so K = 1024 is two blocks of 512 rather than three of 342).
fn block_depth(k: usize, mc: usize) -> usize {
    let target = (A_BLOCK_BYTES / (4 * mc.max(1))).max(KC_MIN);
    let blocks = ((k + target / 2) / target).max(1);
    k.div_ceil(blocks)
}

/// Below this many multiply-adds the call runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// A source of rows of the A operand: packs an MR-tall panel, `dst[p·mr + i] = A(i0+i, k0+p)`,
/// with rows `h..mr` zero.
pub trait PackA: Sync {
    fn pack_a(&self, i0: usize, h: usize, k0: usize, kc: usize, mr: usize, dst: &mut [f32]);
}

/// A source of columns of the B operand: packs an NR-wide panel, `dst[p·nr + j] = B(k0+p, j0+j)`,
/// with columns `w..nr` zero.
pub trait PackB: Sync {
    fn pack_b(&self, k0: usize, kc: usize, j0: usize, w: usize, nr: usize, dst: &mut [f32]);
}

/// A strided matrix view: element (i, j) is `data[offset + i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Strided<'a> {
    /// Panics if the view reaches outside `data` (callers build views from validated layouts).
    pub fn new(data: &'a [f32], offset: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        if rows > 0 && cols > 0 {
            let last = offset + (rows - 1) * rs + (cols - 1) * cs;
            assert!(
                last < data.len(),
                "strided view ends at {last}, data has {}",
                data.len()
            );
        }
        Strided {
            data,
            offset,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// A packed row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Strided::new(data, 0, rows, cols, cols, 1)
    }

    /// The transpose of this view (no copy).
    pub fn t(self) -> Self {
        Strided {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }

    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        debug_assert!(i < self.rows && j < self.cols);
        // SAFETY: `new` checked that every (i, j) inside the view is inside `data`.
        unsafe { *self.data.get_unchecked(self.offset + i * self.rs + j * self.cs) }
    }
}

impl PackA for Strided<'_> {
    fn pack_a(&self, i0: usize, h: usize, k0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
        let dst = &mut dst[..kc * mr];
        if h < mr {
            dst.fill(0.0);
        }
        if self.rs == 1 {
            // Columns are contiguous: each p copies a run of h values.
            for p in 0..kc {
                let base = self.offset + (k0 + p) * self.cs + i0;
                dst[p * mr..p * mr + h].copy_from_slice(&self.data[base..base + h]);
            }
        } else if self.cs == 1 {
            // Rows are contiguous (row-major activations): transpose h rows into the panel.
            let base = self.offset + i0 * self.rs + k0;
            transpose_rows(self.data, base, self.rs, h, kc, mr, dst);
        } else {
            for i in 0..h {
                for p in 0..kc {
                    dst[p * mr + i] = self.at(i0 + i, k0 + p);
                }
            }
        }
    }
}

impl PackB for Strided<'_> {
    /// Packing a column panel of B is packing a row panel of Bᵀ.
    fn pack_b(&self, k0: usize, kc: usize, j0: usize, w: usize, nr: usize, dst: &mut [f32]) {
        self.t().pack_a(j0, w, k0, kc, nr, dst)
    }
}

/// `dst[p·ld + r] = src[base + r·stride + p]` for r < rows, p < len: turns `rows` contiguous runs
/// into a p-major panel. 8×8 blocks go through an in-register transpose where AVX is available.
fn transpose_rows(src: &[f32], base: usize, stride: usize, rows: usize, len: usize, ld: usize, dst: &mut [f32]) {
    assert!(rows <= ld && dst.len() >= len * ld);
    if rows > 0 && len > 0 {
        assert!(base + (rows - 1) * stride + len <= src.len());
    }
    let mut r0 = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        while r0 + 8 <= rows {
            // SAFETY: AVX is present; the asserts above bound every read and write.
            unsafe { x86::transpose_8_rows(src, base + r0 * stride, stride, len, ld, &mut dst[r0..]) };
            r0 += 8;
        }
        if r0 + 4 <= rows {
            // SAFETY: as above.
            unsafe { x86::transpose_4_rows(src, base + r0 * stride, stride, len, ld, &mut dst[r0..]) };
            r0 += 4;
        }
    }
    for r in r0..rows {
        let row = &src[base + r * stride..base + r * stride + len];
        for (p, &v) in row.iter().enumerate() {
            dst[p * ld + r] = v;
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Micro-kernels: a full MR×NR tile, C = A_panel·B_panel (+ C when `acc`).
// ---------------------------------------------------------------------------------------------------

type KernelFn = unsafe fn(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, acc: bool);

/// A register-tile kernel and its tile size.
///
/// With `acc`, a kernel loads the C tile into its accumulators and continues: every element of C is
/// one fused multiply-add chain over k in order, starting from C's initial value (0 or a bias), no
/// matter how K is split into blocks, how many rows A has, or where a row sits in a tile. Products are
/// therefore batch-invariant: a row of `x·Wᵀ` is bit-identical whether `x` holds 1 row or 1000, which
/// is what makes an image independent of the batch it is generated in. (The portable kernel has no
/// FMA and differs from the AVX kernels in the last bits, but is batch-invariant the same way.)
#[derive(Clone, Copy)]
pub struct MicroKernel {
    pub mr: usize,
    pub nr: usize,
    f: KernelFn,
}

impl MicroKernel {
    /// The best kernel for `isa`.
    pub fn for_isa(isa: Isa) -> MicroKernel {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => MicroKernel {
                mr: 12,
                nr: 32,
                f: x86::kernel_avx512_12x32,
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => MicroKernel {
                mr: 6,
                nr: 16,
                f: x86::kernel_avx2_6x16,
            },
            _ => MicroKernel {
                mr: 4,
                nr: 16,
                f: kernel_portable_4x16,
            },
        }
    }

    /// Computes one tile. `a` holds `kc·mr` packed values, `b` holds `kc·nr`; `c` points at the tile's
    /// top-left element of a row-major matrix with row stride `ldc`, valid for `h` rows and `w` columns.
    /// Partial tiles go through a scratch tile so the kernel only ever sees full ones.
    ///
    /// # Safety
    /// `c` must be valid for reads and writes of `h` rows of `w` elements at row stride `ldc`.
    #[inline]
    pub unsafe fn run(&self, kc: usize, a: &[f32], b: &[f32], c: *mut f32, ldc: usize, h: usize, w: usize, acc: bool) {
        debug_assert!(a.len() >= kc * self.mr && b.len() >= kc * self.nr);
        unsafe {
            if h == self.mr && w == self.nr {
                (self.f)(kc, a.as_ptr(), b.as_ptr(), c, ldc, acc);
            } else {
                // The scratch tile starts from C's valid part, so the arithmetic is exactly that of a full
                // tile (padding rows and columns are computed and thrown away).
                let mut tile = [0.0f32; 12 * 32];
                if acc {
                    for i in 0..h {
                        for j in 0..w {
                            tile[i * self.nr + j] = *c.add(i * ldc + j);
                        }
                    }
                }
                (self.f)(kc, a.as_ptr(), b.as_ptr(), tile.as_mut_ptr(), self.nr, acc);
                for i in 0..h {
                    for j in 0..w {
                        *c.add(i * ldc + j) = tile[i * self.nr + j];
                    }
                }
            }
        }
    }
}

/// Portable kernel (LLVM vectorises it for the baseline target). Uses plain multiply-add: without FMA
/// hardware `mul_add` is a library call, so its results differ from the FMA kernels in the last bits.
unsafe fn kernel_portable_4x16(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, acc: bool) {
    const MR: usize = 4;
    const NR: usize = 16;
    let mut r = [[0.0f32; NR]; MR];
    unsafe {
        if acc {
            for (i, ri) in r.iter_mut().enumerate() {
                ri.copy_from_slice(std::slice::from_raw_parts(c.add(i * ldc), NR));
            }
        }
        let a = std::slice::from_raw_parts(a, kc * MR);
        let b = std::slice::from_raw_parts(b, kc * NR);
        for p in 0..kc {
            let bp = &b[p * NR..p * NR + NR];
            for i in 0..MR {
                let av = a[p * MR + i];
                for j in 0..NR {
                    r[i][j] += av * bp[j];
                }
            }
        }
        for (i, ri) in r.iter().enumerate() {
            std::slice::from_raw_parts_mut(c.add(i * ldc), NR).copy_from_slice(ri);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Transposes 8 rows (`src[base + r·stride ..][..len]`) into `dst[p·ld + r]`, 8×8 blocks at a time.
    /// Caller guarantees AVX and that all reads and writes are in bounds.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn transpose_8_rows(
        src: &[f32],
        base: usize,
        stride: usize,
        len: usize,
        ld: usize,
        dst: &mut [f32],
    ) {
        let s = src.as_ptr();
        let d = dst.as_mut_ptr();
        let mut p = 0;
        unsafe {
            while p + 8 <= len {
                let row = |r: usize| _mm256_loadu_ps(s.add(base + r * stride + p));
                let (r0, r1, r2, r3, r4, r5, r6, r7) = (row(0), row(1), row(2), row(3), row(4), row(5), row(6), row(7));
                let t0 = _mm256_unpacklo_ps(r0, r1);
                let t1 = _mm256_unpackhi_ps(r0, r1);
                let t2 = _mm256_unpacklo_ps(r2, r3);
                let t3 = _mm256_unpackhi_ps(r2, r3);
                let t4 = _mm256_unpacklo_ps(r4, r5);
                let t5 = _mm256_unpackhi_ps(r4, r5);
                let t6 = _mm256_unpacklo_ps(r6, r7);
                let t7 = _mm256_unpackhi_ps(r6, r7);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let out = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (q, v) in out.iter().enumerate() {
                    _mm256_storeu_ps(d.add((p + q) * ld), *v);
                }
                p += 8;
            }
            for p in p..len {
                for r in 0..8 {
                    *d.add(p * ld + r) = *s.add(base + r * stride + p);
                }
            }
        }
    }

    /// Like `transpose_8_rows` for 4 rows (4×8 blocks, two shuffle stages, 128-bit stores).
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn transpose_4_rows(
        src: &[f32],
        base: usize,
        stride: usize,
        len: usize,
        ld: usize,
        dst: &mut [f32],
    ) {
        let s = src.as_ptr();
        let d = dst.as_mut_ptr();
        let mut p = 0;
        unsafe {
            while p + 8 <= len {
                let row = |r: usize| _mm256_loadu_ps(s.add(base + r * stride + p));
                let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                let t0 = _mm256_unpacklo_ps(r0, r1);
                let t1 = _mm256_unpackhi_ps(r0, r1);
                let t2 = _mm256_unpacklo_ps(r2, r3);
                let t3 = _mm256_unpackhi_ps(r2, r3);
                // u_q holds column q in its low half and column q+4 in its high half.
                let u = [
                    _mm256_shuffle_ps::<0x44>(t0, t2),
                    _mm256_shuffle_ps::<0xEE>(t0, t2),
                    _mm256_shuffle_ps::<0x44>(t1, t3),
                    _mm256_shuffle_ps::<0xEE>(t1, t3),
                ];
                for (q, v) in u.iter().enumerate() {
                    _mm_storeu_ps(d.add((p + q) * ld), _mm256_castps256_ps128(*v));
                    _mm_storeu_ps(d.add((p + q + 4) * ld), _mm256_extractf128_ps::<1>(*v));
                }
                p += 8;
            }
            for p in p..len {
                for r in 0..4 {
                    *d.add(p * ld + r) = *s.add(base + r * stride + p);
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel_avx512_12x32(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        acc: bool,
    ) {
        const MR: usize = 12;
        let mut r = [[_mm512_setzero_ps(); 2]; MR];
        let (mut ap, mut bp) = (a, b);
        unsafe {
            if acc {
                // Continue C's fused multiply-add chain (see `MicroKernel`).
                for (i, ri) in r.iter_mut().enumerate() {
                    ri[0] = _mm512_loadu_ps(c.add(i * ldc));
                    ri[1] = _mm512_loadu_ps(c.add(i * ldc + 16));
                }
            }
            for _ in 0..kc {
                let b0 = _mm512_loadu_ps(bp);
                let b1 = _mm512_loadu_ps(bp.add(16));
                for (i, ri) in r.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(i));
                    ri[0] = _mm512_fmadd_ps(av, b0, ri[0]);
                    ri[1] = _mm512_fmadd_ps(av, b1, ri[1]);
                }
                ap = ap.add(MR);
                bp = bp.add(32);
            }
            for (i, ri) in r.iter().enumerate() {
                _mm512_storeu_ps(c.add(i * ldc), ri[0]);
                _mm512_storeu_ps(c.add(i * ldc + 16), ri[1]);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_avx2_6x16(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, acc: bool) {
        const MR: usize = 6;
        let mut r = [[_mm256_setzero_ps(); 2]; MR];
        let (mut ap, mut bp) = (a, b);
        unsafe {
            if acc {
                for (i, ri) in r.iter_mut().enumerate() {
                    ri[0] = _mm256_loadu_ps(c.add(i * ldc));
                    ri[1] = _mm256_loadu_ps(c.add(i * ldc + 8));
                }
            }
            for _ in 0..kc {
                let b0 = _mm256_loadu_ps(bp);
                let b1 = _mm256_loadu_ps(bp.add(8));
                for (i, ri) in r.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ap.add(i));
                    ri[0] = _mm256_fmadd_ps(av, b0, ri[0]);
                    ri[1] = _mm256_fmadd_ps(av, b1, ri[1]);
                }
                ap = ap.add(MR);
                bp = bp.add(16);
            }
            for (i, ri) in r.iter().enumerate() {
                _mm256_storeu_ps(c.add(i * ldc), ri[0]);
                _mm256_storeu_ps(c.add(i * ldc + 8), ri[1]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Packed buffers
// ---------------------------------------------------------------------------------------------------

/// A zeroed f32 buffer whose usable part starts on a 64-byte boundary (whole cache lines for the
/// kernels' vector loads).
pub struct AlignedBuf {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let buf = vec![0.0f32; len + 16];
        let misalign = (buf.as_ptr() as usize / 4) % 16;
        let start = (16 - misalign) % 16;
        AlignedBuf { buf, start, len }
    }
    pub fn as_slice(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// Packs rows `i0..i0+mc`, depth `k0..k0+kc` of A into MR-panels.
pub fn pack_a_block(
    a: &impl PackA,
    kern: MicroKernel,
    i0: usize,
    mc: usize,
    k0: usize,
    kc: usize,
    dst: &mut [f32],
    par: bool,
) {
    let (mr, panel) = (kern.mr, kc * kern.mr);
    let work = |(ip, chunk): (usize, &mut [f32])| {
        let r0 = ip * mr;
        a.pack_a(i0 + r0, mr.min(mc - r0), k0, kc, mr, chunk);
    };
    let panels = mc.div_ceil(mr);
    if par {
        dst[..panels * panel].par_chunks_mut(panel).enumerate().for_each(work);
    } else {
        dst[..panels * panel].chunks_mut(panel).enumerate().for_each(work);
    }
}

/// Packs depth `k0..k0+kc`, columns `j0..j0+nc` of B into NR-panels.
pub fn pack_b_block(
    b: &impl PackB,
    kern: MicroKernel,
    k0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    dst: &mut [f32],
    par: bool,
) {
    let (nr, panel) = (kern.nr, kc * kern.nr);
    let work = |(jp, chunk): (usize, &mut [f32])| {
        let c0 = jp * nr;
        b.pack_b(k0, kc, j0 + c0, nr.min(nc - c0), nr, chunk);
    };
    let panels = nc.div_ceil(nr);
    if par {
        dst[..panels * panel].par_chunks_mut(panel).enumerate().for_each(work);
    } else {
        dst[..panels * panel].chunks_mut(panel).enumerate().for_each(work);
    }
}

/// A raw pointer to an output buffer that parallel tasks share; each task writes a disjoint region.
#[derive(Clone, Copy)]
pub struct SharedPtr {
    ptr: *mut f32,
    len: usize,
}
// SAFETY: users only write disjoint regions from different tasks (checked at each use site).
unsafe impl Send for SharedPtr {}
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    pub fn new(buf: &mut [f32]) -> Self {
        SharedPtr {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// Over a buffer that is not initialised yet: only writes may go through it until they have
    /// covered what is later read.
    pub fn new_uninit(buf: &mut [std::mem::MaybeUninit<f32>]) -> Self {
        SharedPtr {
            ptr: buf.as_mut_ptr().cast::<f32>(),
            len: buf.len(),
        }
    }

    /// Pointer to element `offset`.
    ///
    /// # Safety
    /// `offset` must be within the buffer; writes through it must not race with other tasks.
    pub unsafe fn at(&self, offset: usize) -> *mut f32 {
        debug_assert!(offset <= self.len);
        unsafe { self.ptr.add(offset) }
    }

    /// `len` elements from `start`.
    ///
    /// # Safety
    /// No other task may access the same elements while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start + len <= self.len);
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// `C[m×n] = A[m×k]·B[k×n]` (`accumulate`: `C += A·B`), C row-major with row stride `ldc`.
///
/// Each task owns one NR-wide column panel of C: it packs its B panel into a buffer of its own (so the
/// panel is hot in L1 when the kernel reads it, and no pass over all of B separates the threads) and
/// sweeps it against every MR panel of the shared A block.
pub fn gemm(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &impl PackA,
    b: &impl PackB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY: `c` is an initialised slice.
    unsafe { gemm_into(isa, m, n, k, a, b, SharedPtr::new(c), ldc, accumulate) }
}

/// `C = A·B` into a C that is not initialised yet (a fresh output buffer): every element of the m×n
/// block (row stride `ldc`) is written; elements between rows (`n..ldc`) are left as they are.
pub fn gemm_uninit(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &impl PackA,
    b: &impl PackB,
    c: &mut [std::mem::MaybeUninit<f32>],
    ldc: usize,
) {
    // SAFETY: with `accumulate` false the GEMM reads no element of C before it has written it: the
    // first K block's micro-kernels store without loading C (`MicroKernel::run` with `acc` false), and
    // later K blocks add to what the first one wrote.
    unsafe { gemm_into(isa, m, n, k, a, b, SharedPtr::new_uninit(c), ldc, false) }
}

/// The GEMM on a C given as a shared pointer.
///
/// # Safety
/// `c` must point to a buffer of at least `(m − 1)·ldc + n` elements (checked) that nothing else
/// accesses during the call; if `accumulate` is true its m×n block must be initialised.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &impl PackA,
    b: &impl PackB,
    cptr: SharedPtr,
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && cptr.len >= (m - 1) * ldc + n, "gemm: C is too small");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: (i, j) lies inside the buffer (asserted above).
                    unsafe { cptr.at(i * ldc + j).write(0.0) };
                }
            }
        }
        return;
    }
    let kern = MicroKernel::for_isa(isa);
    let (mr, nr) = (kern.mr, kern.nr);
    let threads = rayon::current_num_threads();
    let par = m * n * k >= PARALLEL_MIN_MACS && threads > 1;
    let mc_max = MC_MAX - MC_MAX % mr;
    let kc_max = block_depth(k, mc_max.min(m.div_ceil(mr) * mr));
    let mut apack = AlignedBuf::new(mc_max.min(m.div_ceil(mr) * mr) * kc_max);
    let np_n = n.div_ceil(nr);

    for pc in (0..k).step_by(kc_max) {
        let kc = kc_max.min(k - pc);
        let acc = accumulate || pc > 0;
        for ic in (0..m).step_by(mc_max) {
            let mc = mc_max.min(m - ic);
            pack_a_block(a, kern, ic, mc, pc, kc, apack.as_mut_slice(), par);
            let ap = apack.as_slice();
            let np_m = mc.div_ceil(mr);
            // Split the MR panels into groups only when there are too few NR panels to go round
            // (each group then packs its own copy of the B panel).
            let groups = if par {
                (4 * threads).div_ceil(np_n).clamp(1, np_m)
            } else {
                1
            };
            let per_group = np_m.div_ceil(groups);
            let task = |bbuf: &mut AlignedBuf, t: usize| {
                let (jp, g) = (t / groups, t % groups);
                let j = jp * nr;
                let w = nr.min(n - j);
                let bpanel = &mut bbuf.as_mut_slice()[..kc * nr];
                b.pack_b(pc, kc, j, w, nr, bpanel);
                for ip in g * per_group..((g + 1) * per_group).min(np_m) {
                    let i = ip * mr;
                    let apanel = &ap[ip * kc * mr..(ip + 1) * kc * mr];
                    // SAFETY: tile (ic+i, j) of C lies inside `c` (checked above) and no other task
                    // writes it.
                    unsafe {
                        let dst = cptr.at((ic + i) * ldc + j);
                        kern.run(kc, apanel, bpanel, dst, ldc, mr.min(mc - i), w, acc);
                    }
                }
            };
            let new_buf = || AlignedBuf::new(kc_max * nr);
            if par {
                (0..np_n * groups).into_par_iter().for_each_init(new_buf, task);
            } else {
                let mut buf = new_buf();
                (0..np_n * groups).for_each(|t| task(&mut buf, t));
            }
        }
    }
}

/// `C = A·B` (or `C += A·B`) for strided operands.
pub fn matmul(isa: Isa, a: Strided, b: Strided, c: &mut [f32], ldc: usize, accumulate: bool) {
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions");
    gemm(isa, a.rows, b.cols, a.cols, &a, &b, c, ldc, accumulate);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &Strided, b: &Strided) -> Vec<f64> {
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] += a.at(i, p) as f64 * b.at(p, j) as f64;
                }
            }
        }
        c
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn packed_a_panels_match_the_definition_for_every_layout_and_tile_width() {
        // dst[p·mr + i] = A[i0 + i, k0 + p], zero past h: column-contiguous views (runs copied as
        // they are), row-contiguous views (the transposes) and general strides, full and partial panels.
        let (rows, cols) = (40, 37);
        let d = data(rows * cols * 2, 3);
        let views = [
            Strided::row_major(&d, rows, cols),
            Strided::row_major(&d, cols, rows).t(),
            Strided::new(&d, 1, rows, cols, 2 * cols, 2),
        ];
        for a in views {
            for mr in [4, 6, 12, 16, 32] {
                for h in [mr, mr - 1, 1] {
                    let (i0, k0, kc) = (rows - h, 5, 29);
                    let mut got = vec![f32::NAN; kc * mr];
                    a.pack_a(i0, h, k0, kc, mr, &mut got);
                    for p in 0..kc {
                        for i in 0..mr {
                            let want = if i < h { a.at(i0 + i, k0 + p) } else { 0.0 };
                            assert_eq!(got[p * mr + i], want, "mr {mr} h {h}: (p {p}, i {i})");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_kernel_matches_naive_on_odd_shapes_and_layouts() {
        for isa in Isa::available() {
            for &(m, n, k) in &[
                (1, 1, 1),
                (5, 7, 3),
                (13, 33, 257),
                (37, 65, 300),
                (3, 100, 40),
                (100, 3, 600),
            ] {
                let ad = data(m * k, 1);
                let bd = data(k * n, 2);
                for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
                    let a = if a_t {
                        Strided::row_major(&ad, k, m).t()
                    } else {
                        Strided::row_major(&ad, m, k)
                    };
                    let b = if b_t {
                        Strided::row_major(&bd, n, k).t()
                    } else {
                        Strided::row_major(&bd, k, n)
                    };
                    let want = naive(m, n, k, &a, &b);
                    for acc in [false, true] {
                        let ldc = n + 3;
                        let mut c = vec![0.5f32; m * ldc];
                        matmul(isa, a, b, &mut c, ldc, acc);
                        for i in 0..m {
                            for j in 0..n {
                                let w = want[i * n + j] + if acc { 0.5 } else { 0.0 };
                                let g = c[i * ldc + j] as f64;
                                assert!(
                                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                                    "{isa:?} {m}x{n}x{k} {a_t} {b_t} {acc}: ({i},{j}) {g} vs {w}"
                                );
                            }
                            for j in n..ldc {
                                assert_eq!(c[i * ldc + j], 0.5, "padding column written");
                            }
                        }
                    }
                }
            }
        }
    }

    /// `gemm_uninit` must write every element of C before reading any: C starts as NaN (a stand-in
    /// for garbage), so a single read-before-write would poison the result. Shapes cover partial tiles,
    /// k = 0, several K blocks (m = 1056 makes the block depth 256 < k) and the parallel path.
    #[test]
    fn gemm_into_an_uninitialised_buffer_equals_gemm_into_zeros() {
        for isa in Isa::available() {
            for &(m, n, k) in &[(1, 1, 1), (5, 7, 0), (13, 33, 257), (1056, 20, 600), (37, 65, 300)] {
                let (ad, bd) = (data(m * k, 3), data(k * n, 4));
                let a = Strided::row_major(&ad, m, k);
                let b = Strided::row_major(&bd, k, n);
                let mut want = vec![0.0f32; m * n];
                gemm(isa, m, n, k, &a, &b, &mut want, n, false);
                let mut c = vec![std::mem::MaybeUninit::new(f32::NAN); m * n];
                gemm_uninit(isa, m, n, k, &a, &b, &mut c, n);
                // SAFETY: every element was initialised (to NaN) before the call.
                let got: Vec<f32> = c.iter().map(|x| unsafe { x.assume_init() }).collect();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "{isa:?} {m}x{n}x{k}: element {i}: {g} vs {w}");
                }
            }
        }
    }
}
