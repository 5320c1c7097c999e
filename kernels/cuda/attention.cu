// Attention softmax(q·kᵀ·scale)·v that never materialises the score matrix: one thread per query row
// keeps the running maximum, denominator and output row (online softmax) while it walks the keys.
// Optional segment ids restrict a query to keys of its own segment (packed independent sequences).
// q [B, H, Nq, D], k [B, H, Nk, D], v [B, H, Nk, Dv] contiguous; out [B, Nq, H, Dv] (so that the
// heads of a token are adjacent, as the CPU backend stores them). D, Dv ≤ 128.
//
// This is the correctness baseline (SIMT, no shared-memory tiling, no tensor cores); the fast path is
// future work (docs/cuda.md).
#include "common.cuh"

#define MAX_HEAD_DIM 128

extern "C" __global__ void nvg_attention_f32(const float* __restrict__ q, const float* __restrict__ k,
                                             const float* __restrict__ v, const long long* __restrict__ q_seg,
                                             const long long* __restrict__ k_seg, float* __restrict__ out, int b,
                                             int h, int nq, int nk, int d, int dv, float scale) {
    long long rows = (long long)b * h * nq;
    for (long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x; row < rows;
         row += (long long)gridDim.x * blockDim.x) {
        int qi = (int)(row % nq);
        int hi = (int)((row / nq) % h);
        int bi = (int)(row / ((long long)nq * h));
        const float* qr = q + row * d;
        const float* kb = k + ((long long)bi * h + hi) * nk * d;
        const float* vb = v + ((long long)bi * h + hi) * nk * dv;
        long long seg = q_seg ? q_seg[(long long)bi * nq + qi] : 0;
        float m = -INFINITY, l = 0.0f;
        float acc[MAX_HEAD_DIM];
        for (int j = 0; j < dv; ++j) acc[j] = 0.0f;
        for (int key = 0; key < nk; ++key) {
            if (k_seg && k_seg[(long long)bi * nk + key] != seg) continue;
            const float* kr = kb + (long long)key * d;
            float s = 0.0f;
            for (int j = 0; j < d; ++j) s += qr[j] * kr[j];
            s *= scale;
            float m_new = fmaxf(m, s);
            float correction = expf(m - m_new);  // 0 on the first key (m = −inf)
            float p = expf(s - m_new);
            l = l * correction + p;
            const float* vr = vb + (long long)key * dv;
            for (int j = 0; j < dv; ++j) acc[j] = acc[j] * correction + p * vr[j];
            m = m_new;
        }
        float* o = out + (((long long)bi * nq + qi) * h + hi) * dv;
        for (int j = 0; j < dv; ++j) o[j] = acc[j] / l;  // no key: 0/0 = NaN, as on the CPU
    }
}
NVG_KERNEL(nvg_attention_f32);
