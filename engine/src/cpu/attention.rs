//! Fused scaled-dot-product attention on the CPU, flash style: for each (batch, head, block of BQ
//! queries), scores against blocks of at most KV_BLOCK keys are computed with the GEMM micro-kernel,
//! soft-maxed online (running max and sum per query row) and multiplied into the output accumulator
//! right away. Memory per task is BQ × KV_BLOCK scores; the N×N matrix never exists.
//!
//! Optional segment ids restrict attention to keys of the query's own segment, so independent
//! sequences packed into one call (the stages of an image in training, CFG halves) stay independent.
//! Key blocks whose segment range cannot meet the query block's are skipped.

use super::gemm::{AlignedBuf, MicroKernel, SharedPtr, Strided, pack_a_block, pack_b_block};
use super::simd::{self, Isa};
use rayon::prelude::*;

/// Queries per task (a multiple of every kernel's MR).
const BQ: usize = 48;
/// Upper bound on keys per block; blocks are balanced and rounded to the kernel's NR. (Public so tests
/// can place sequence lengths on both sides of a block boundary.)
pub const KV_BLOCK: usize = 1024;

/// One (batch, head) slice of an attention operand: `rows × cols` at `offset` with strides.
#[derive(Clone, Copy)]
pub struct HeadView {
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// Describes a batched attention problem over strided operands. Element (b, h, n, d) of q lives at
/// `q_off(b, h) + n·q.row_stride + d·q.col_stride`, and likewise for k and v.
pub struct AttentionProblem<'a> {
    pub batch: usize,
    pub heads: usize,
    pub nq: usize,
    pub nk: usize,
    pub d: usize,
    pub dv: usize,
    pub scale: f32,
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    /// Offsets of each (b, h) slice; strides are shared by all slices.
    pub q_heads: Vec<HeadView>,
    pub k_heads: Vec<HeadView>,
    pub v_heads: Vec<HeadView>,
    /// Segment id of every query `[batch·nq]` and key `[batch·nk]`, or `None` for full attention.
    pub q_segments: Option<&'a [i64]>,
    pub k_segments: Option<&'a [i64]>,
}

struct Workspace {
    qpack: AlignedBuf,
    kpack: AlignedBuf,
    vpack: AlignedBuf,
    scores: AlignedBuf,
    ppack: AlignedBuf,
    acc: AlignedBuf,
    row_max: Vec<f32>,
    row_sum: Vec<f32>,
    /// The (b, h) whose K and V are packed in `kpack`/`vpack`.
    packed_head: Option<usize>,
}

/// Runs attention; `out` is `[batch, nq, heads, dv]` row-major.
pub fn attention(isa: Isa, p: &AttentionProblem, out: &mut [f32]) {
    assert_eq!(out.len(), p.batch * p.nq * p.heads * p.dv);
    if p.nq == 0 || p.dv == 0 {
        return;
    }
    let kern = MicroKernel::for_isa(isa);
    let (mr, nr) = (kern.mr, kern.nr);
    debug_assert_eq!(BQ % mr, 0);
    let nk_pad = p.nk.div_ceil(nr) * nr;
    let dv_pad = p.dv.div_ceil(nr) * nr;
    // Balanced key blocks, each a whole number of NR panels.
    let nblocks = p.nk.div_ceil(KV_BLOCK).max(1);
    let block = (p.nk.div_ceil(nblocks)).div_ceil(nr) * nr;
    let q_blocks = p.nq.div_ceil(BQ);
    let tasks = p.batch * p.heads * q_blocks;
    // Segment range [min, max] of each key block of each batch element, for skipping.
    let k_ranges: Option<Vec<(i64, i64)>> = p.k_segments.map(|seg| {
        let mut r = Vec::with_capacity(p.batch * nblocks);
        for b in 0..p.batch {
            for kb in (0..p.nk).step_by(block.max(1)) {
                let s = &seg[b * p.nk + kb..b * p.nk + (kb + block).min(p.nk)];
                r.push((*s.iter().min().unwrap(), *s.iter().max().unwrap()));
            }
        }
        r
    });
    let blocks_per_batch = if p.nk == 0 { 0 } else { p.nk.div_ceil(block) };
    let out_ptr = SharedPtr::new(out);

    let new_ws = || Workspace {
        qpack: AlignedBuf::new(BQ * p.d),
        kpack: AlignedBuf::new(nk_pad * p.d),
        vpack: AlignedBuf::new(p.nk * dv_pad),
        scores: AlignedBuf::new(BQ * block),
        ppack: AlignedBuf::new(BQ * block),
        acc: AlignedBuf::new(BQ * dv_pad),
        row_max: vec![0.0; BQ],
        row_sum: vec![0.0; BQ],
        packed_head: None,
    };

    let task = |ws: &mut Workspace, t: usize| {
        let (bh, qb) = (t / q_blocks, t % q_blocks);
        let b = bh / p.heads;
        let q0 = qb * BQ;
        let rows = BQ.min(p.nq - q0);
        let (qh, kh, vh) = (p.q_heads[bh], p.k_heads[bh], p.v_heads[bh]);

        // K as the B operand of Q·Kᵀ (depth d, one column per key) and V as the B operand of P·V
        // (depth = keys): packed once per (batch, head) and reused by consecutive query blocks.
        if ws.packed_head != Some(bh) && p.nk > 0 {
            let kt = Strided::new(p.k, kh.offset, p.d, p.nk, kh.col_stride, kh.row_stride);
            pack_b_block(&kt, kern, 0, p.d, 0, p.nk, ws.kpack.as_mut_slice(), false);
            let vm = Strided::new(p.v, vh.offset, p.nk, p.dv, vh.row_stride, vh.col_stride);
            pack_b_block(&vm, kern, 0, p.nk, 0, p.dv, ws.vpack.as_mut_slice(), false);
            ws.packed_head = Some(bh);
        }
        // Q block, pre-multiplied by the softmax scale.
        let qm = Strided::new(
            p.q,
            qh.offset + q0 * qh.row_stride,
            rows,
            p.d,
            qh.row_stride,
            qh.col_stride,
        );
        pack_a_block(&qm, kern, 0, rows, 0, p.d, ws.qpack.as_mut_slice(), false);
        for v in ws.qpack.as_mut_slice().iter_mut() {
            *v *= p.scale;
        }
        ws.row_max[..rows].fill(f32::NEG_INFINITY);
        ws.row_sum[..rows].fill(0.0);
        ws.acc.as_mut_slice().fill(0.0);
        let q_panels = rows.div_ceil(mr);
        let q_seg = p.q_segments.map(|s| &s[b * p.nq + q0..b * p.nq + q0 + rows]);
        let q_range = q_seg.map(|s| (*s.iter().min().unwrap(), *s.iter().max().unwrap()));

        for kbi in 0..blocks_per_batch {
            let k0 = kbi * block;
            let len = block.min(p.nk - k0);
            if let (Some((lo, hi)), Some(kr)) = (q_range, &k_ranges) {
                let (klo, khi) = kr[b * blocks_per_batch + kbi];
                if khi < lo || klo > hi {
                    continue;
                }
            }
            let k_panels = len.div_ceil(nr);
            let lds = k_panels * nr;
            // S = (scale·Q) · Kᵀ for this key block.
            let scores = ws.scores.as_mut_slice();
            for jp in 0..k_panels {
                let kpanel = &ws.kpack.as_slice()[(k0 / nr + jp) * p.d * nr..(k0 / nr + jp + 1) * p.d * nr];
                for ip in 0..q_panels {
                    let apanel = &ws.qpack.as_slice()[ip * p.d * mr..(ip + 1) * p.d * mr];
                    // SAFETY: the tile lies inside `scores` (BQ × block, row stride lds ≤ block).
                    unsafe {
                        let dst = scores.as_mut_ptr().add(ip * mr * lds + jp * nr);
                        kern.run(p.d, apanel, kpanel, dst, lds, mr, nr, false);
                    }
                }
            }
            // Online softmax over the block; scores become probabilities in place.
            for i in 0..rows {
                let row = &mut scores[i * lds..i * lds + len];
                if let (Some(qs), Some(ks)) = (q_seg, p.k_segments) {
                    let own = qs[i];
                    let keys = &ks[b * p.nk + k0..b * p.nk + k0 + len];
                    for (s, &kseg) in row.iter_mut().zip(keys) {
                        if kseg != own {
                            *s = f32::NEG_INFINITY;
                        }
                    }
                }
                let bmax = simd::max(isa, row);
                let m_old = ws.row_max[i];
                let m_new = m_old.max(bmax);
                if m_new == f32::NEG_INFINITY {
                    row.fill(0.0);
                    continue;
                }
                let corr = if m_old == f32::NEG_INFINITY {
                    0.0
                } else {
                    simd::exp(m_old - m_new)
                };
                ws.row_sum[i] = ws.row_sum[i] * corr + simd::exp_shift_sum(isa, row, m_new);
                ws.row_max[i] = m_new;
                if corr != 1.0 {
                    for a in &mut ws.acc.as_mut_slice()[i * dv_pad..(i + 1) * dv_pad] {
                        *a *= corr;
                    }
                }
            }
            // acc += P · V[k0..k0+len].
            let pm = Strided::new(scores, 0, rows, len, lds, 1);
            pack_a_block(&pm, kern, 0, rows, 0, len, ws.ppack.as_mut_slice(), false);
            let acc = ws.acc.as_mut_slice();
            for jp in 0..dv_pad / nr {
                let vpanel = &ws.vpack.as_slice()[jp * p.nk * nr + k0 * nr..jp * p.nk * nr + (k0 + len) * nr];
                for ip in 0..q_panels {
                    let apanel = &ws.ppack.as_slice()[ip * len * mr..(ip + 1) * len * mr];
                    // SAFETY: the tile lies inside `acc` (BQ × dv_pad).
                    unsafe {
                        let dst = acc.as_mut_ptr().add(ip * mr * dv_pad + jp * nr);
                        kern.run(len, apanel, vpanel, dst, dv_pad, mr, nr, true);
                    }
                }
            }
        }
        // out[b, q0+i, h, :] = acc[i] / row_sum[i].
        let h = bh % p.heads;
        for i in 0..rows {
            let inv = 1.0 / ws.row_sum[i];
            let base = ((b * p.nq + q0 + i) * p.heads + h) * p.dv;
            // SAFETY: this (b, q, h) row of `out` belongs to this task alone.
            let dst = unsafe { out_ptr.slice(base, p.dv) };
            for (o, &a) in dst.iter_mut().zip(&ws.acc.as_slice()[i * dv_pad..i * dv_pad + p.dv]) {
                *o = a * inv;
            }
        }
    };
    (0..tasks).into_par_iter().for_each_init(new_ws, task);
}

/// Attention by the definition (materialises the scores), f64 accumulation: the reference the fused
/// kernel is tested against.
pub fn attention_reference(p: &AttentionProblem) -> Vec<f32> {
    let mut out = vec![0.0f32; p.batch * p.nq * p.heads * p.dv];
    for b in 0..p.batch {
        for h in 0..p.heads {
            let bh = b * p.heads + h;
            let (qh, kh, vh) = (p.q_heads[bh], p.k_heads[bh], p.v_heads[bh]);
            for i in 0..p.nq {
                let mut s = vec![f64::NEG_INFINITY; p.nk];
                for (j, sj) in s.iter_mut().enumerate() {
                    if let (Some(qs), Some(ks)) = (p.q_segments, p.k_segments)
                        && qs[b * p.nq + i] != ks[b * p.nk + j]
                    {
                        continue;
                    }
                    let mut dot = 0.0f64;
                    for d in 0..p.d {
                        dot += p.q[qh.offset + i * qh.row_stride + d * qh.col_stride] as f64
                            * p.k[kh.offset + j * kh.row_stride + d * kh.col_stride] as f64;
                    }
                    *sj = dot * p.scale as f64;
                }
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = s
                    .iter()
                    .map(|&x| if x == f64::NEG_INFINITY { 0.0 } else { (x - m).exp() })
                    .collect();
                let z: f64 = w.iter().sum();
                for e in 0..p.dv {
                    let mut acc = 0.0f64;
                    for (j, &wj) in w.iter().enumerate() {
                        acc += wj * p.v[vh.offset + j * vh.row_stride + e * vh.col_stride] as f64;
                    }
                    out[((b * p.nq + i) * p.heads + h) * p.dv + e] = (acc / z) as f32;
                }
            }
        }
    }
    out
}
