// Attention softmax(q·kᵀ·scale)·v that never materialises the score matrix: one thread per query row
// keeps the running maximum, denominator and output row (online softmax) while it walks the keys.
// Optional segment ids restrict a query to keys of its own segment (packed independent sequences).
// q [B, H, Nq, D], k [B, H, Nk, D], v [B, H, Nk, Dv] contiguous; out [B, Nq, H, Dv] (so that the
// heads of a token are adjacent, as the CPU backend stores them). D, Dv ≤ 128.
//
// `nvg_attention_f32` is the correctness baseline (any head dim up to 128, no shared memory);
// `nvg_attention_tiled_d{16,32,64}` is the fast path for equal q/k/v head dims (NVG's is 64).
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

// Flash-style tiled attention (SIMT). A block of ATT_TILE_Q threads owns ATT_TILE_Q consecutive queries
// of one (batch, head); each thread keeps its query row, running maximum, denominator and output row in
// registers. The block walks the keys in tiles of ATT_TILE_K rows of K and V (and their segment ids)
// staged in shared memory, so each K/V element is read from global memory once per block instead of
// once per query. Within a tile, scores are taken ATT_CHUNK at a time so the running maximum is
// corrected once per chunk rather than once per key. Grid: (ceil(Nq / ATT_TILE_Q), B·H).
#define ATT_TILE_Q 64
#define ATT_TILE_K 64
#define ATT_CHUNK 8

template <int D>
__device__ __forceinline__ void attention_tiled(const float* __restrict__ q, const float* __restrict__ k,
                                                const float* __restrict__ v, const long long* __restrict__ q_seg,
                                                const long long* __restrict__ k_seg, float* __restrict__ out,
                                                int h, int nq, int nk, float scale, float (*ks)[D],
                                                float (*vs)[D], long long* segs) {
    int bh = blockIdx.y, bi = bh / h, hi = bh % h;
    int qi = blockIdx.x * ATT_TILE_Q + threadIdx.x;
    bool active = qi < nq;
    const float* kb = k + (long long)bh * nk * D;
    const float* vb = v + (long long)bh * nk * D;
    float qr[D], acc[D];
    for (int j = 0; j < D; ++j) {
        qr[j] = active ? q[((long long)bh * nq + qi) * D + j] * scale : 0.0f;
        acc[j] = 0.0f;
    }
    long long seg = (q_seg && active) ? q_seg[(long long)bi * nq + qi] : 0;
    float m = -INFINITY, l = 0.0f;
    for (int t0 = 0; t0 < nk; t0 += ATT_TILE_K) {
        int tk = min(ATT_TILE_K, nk - t0);
        for (int e = threadIdx.x; e < tk * D; e += blockDim.x) {
            ks[e / D][e % D] = kb[(long long)t0 * D + e];
            vs[e / D][e % D] = vb[(long long)t0 * D + e];
        }
        for (int e = threadIdx.x; e < tk; e += blockDim.x) segs[e] = k_seg ? k_seg[(long long)bi * nk + t0 + e] : 0;
        __syncthreads();
        if (active) {
            for (int c0 = 0; c0 < tk; c0 += ATT_CHUNK) {
                float s[ATT_CHUNK];
                float cmax = -INFINITY;
                for (int c = 0; c < ATT_CHUNK; ++c) {
                    int key = c0 + c;
                    float sc = -INFINITY;  // past the tile or another segment: weight exp(−inf) = 0
                    if (key < tk && segs[key] == seg) {
                        sc = 0.0f;
                        for (int j = 0; j < D; ++j) sc += qr[j] * ks[key][j];
                    }
                    s[c] = sc;
                    cmax = fmaxf(cmax, sc);
                }
                if (cmax == -INFINITY) continue;  // no visible key in this chunk
                float m_new = fmaxf(m, cmax);
                float correction = expf(m - m_new);  // 0 while m = −inf
                l *= correction;
                for (int j = 0; j < D; ++j) acc[j] *= correction;
                for (int c = 0; c < ATT_CHUNK; ++c) {
                    float p = expf(s[c] - m_new);
                    if (p == 0.0f) continue;
                    l += p;
                    for (int j = 0; j < D; ++j) acc[j] += p * vs[c0 + c][j];
                }
                m = m_new;
            }
        }
        __syncthreads();  // the tile is overwritten next
    }
    if (active) {
        float* o = out + (((long long)bi * nq + qi) * h + hi) * D;
        for (int j = 0; j < D; ++j) o[j] = acc[j] / l;  // no visible key: 0/0 = NaN, as on the CPU
    }
}

#define ATTENTION_TILED(D)                                                                                    \
    extern "C" __global__ void nvg_attention_tiled_d##D(                                                      \
        const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,                \
        const long long* __restrict__ q_seg, const long long* __restrict__ k_seg, float* __restrict__ out,    \
        int h, int nq, int nk, float scale) {                                                                 \
        __shared__ float ks[ATT_TILE_K][D];                                                                   \
        __shared__ float vs[ATT_TILE_K][D];                                                                   \
        __shared__ long long segs[ATT_TILE_K];                                                                \
        attention_tiled<D>(q, k, v, q_seg, k_seg, out, h, nq, nk, scale, ks, vs, segs);                       \
    }                                                                                                         \
    NVG_KERNEL(nvg_attention_tiled_d##D);

ATTENTION_TILED(16)
ATTENTION_TILED(32)
ATTENTION_TILED(64)
