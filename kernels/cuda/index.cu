// Indexing kernels: row gather (index_select / embedding), segment mean by integer labels (the
// content head's cluster means), and argmax over the last dimension. Indices are i64 and were
// validated by the engine before the launch.
#include "common.cuh"

// out[o, j, i] = x[o, ids[j], i] for x [outer, size, inner].
extern "C" __global__ void nvg_index_select_f32(const float* __restrict__ x, const long long* __restrict__ ids,
                                                float* __restrict__ out, long long outer, long long size,
                                                long long inner, long long n_ids) {
    long long n = outer * n_ids * inner;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        long long i = e % inner, j = (e / inner) % n_ids, o = e / (inner * n_ids);
        out[e] = x[(o * size + ids[j]) * inner + i];
    }
}
NVG_KERNEL(nvg_index_select_f32);

// out[b, s, c] = mean of x[b, t, c] over tokens t with labels[b, t] = s (0 for an empty segment).
// One thread per (b, s, c).
extern "C" __global__ void nvg_segment_mean_f32(const float* __restrict__ x, const long long* __restrict__ labels,
                                                float* __restrict__ out, int batch, int n, int c, int segments) {
    long long total = (long long)batch * segments * c;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        int ch = (int)(e % c);
        int s = (int)((e / c) % segments);
        int bi = (int)(e / ((long long)c * segments));
        float sum = 0.0f;
        int count = 0;
        for (int t = 0; t < n; ++t) {
            if (labels[(long long)bi * n + t] == s) {
                sum += x[((long long)bi * n + t) * c + ch];
                count++;
            }
        }
        out[e] = count > 0 ? sum / count : 0.0f;
    }
}
NVG_KERNEL(nvg_segment_mean_f32);

// out[r] = index of the largest value of row r (first on ties; NaN ranks highest), one thread per row.
extern "C" __global__ void nvg_argmax_rows_f32(const float* __restrict__ x, long long* __restrict__ out, long long rows,
                                               int cols) {
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += (long long)gridDim.x * blockDim.x) {
        const float* row = x + r * cols;
        int best = 0;
        float bv = row[0];
        for (int j = 1; j < cols; ++j) {
            float v = row[j];
            if (bv == bv && (v > bv || v != v)) {
                best = j;
                bv = v;
            }
        }
        out[r] = best;
    }
}
NVG_KERNEL(nvg_argmax_rows_f32);

// Shape of a gather / scatter: the index tensor's dims and the source's (packed) strides, rank ≤ 8.
struct GatherShape {
    int rank;
    long long dims[8];
    long long src_strides[8];
    long long unused[8];  // keeps the layout of common.cuh's Broadcast, which the engine marshals
};

// Offset in the packed source of index position e: e's coordinates with coordinate `dim` replaced by
// the index value.
__device__ __forceinline__ long long gather_offset(const GatherShape& g, int dim, long long e, long long id) {
    long long off = 0;
    for (int a = g.rank - 1; a >= 0; --a) {
        long long c = e % g.dims[a];
        e /= g.dims[a];
        off += (a == dim ? id : c) * g.src_strides[a];
    }
    return off;
}

// PyTorch gather: out[e] = src[offset(e)], a plain copy of T (any dtype of that width).
template <typename T>
__device__ __forceinline__ void gather_words(const T* __restrict__ src, const long long* __restrict__ ids,
                                             T* __restrict__ out, long long n, GatherShape g, int dim) {
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x)
        out[e] = src[gather_offset(g, dim, e, ids[e])];
}

#define GATHER(T, SUFFIX)                                                                                    \
    extern "C" __global__ void nvg_gather_##SUFFIX(const T* __restrict__ src, const long long* __restrict__ ids, \
                                                   T* __restrict__ out, long long n, GatherShape g, int dim) {  \
        gather_words<T>(src, ids, out, n, g, dim);                                                           \
    }                                                                                                        \
    NVG_KERNEL(nvg_gather_##SUFFIX);

GATHER(unsigned char, w8)
GATHER(unsigned short, w16)
GATHER(unsigned int, w32)
GATHER(unsigned long long, w64)

// PyTorch scatter_add into `out` (a copy of the destination made by the engine): out[offset(e)] += src[e].
// Atomic adds: with repeated indices the f32 summation order on a GPU varies from run to run (the
// result differs from the CPU's in-order sum by rounding); with distinct indices it is exact. The i64
// variant is exact in any order (two's-complement addition).
extern "C" __global__ void nvg_scatter_add_f32(float* __restrict__ out, const long long* __restrict__ ids,
                                               const float* __restrict__ src, long long n, GatherShape g, int dim) {
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x)
        atomicAdd(out + gather_offset(g, dim, e, ids[e]), src[e]);
}
NVG_KERNEL(nvg_scatter_add_f32);

extern "C" __global__ void nvg_scatter_add_i64(unsigned long long* __restrict__ out, const long long* __restrict__ ids,
                                               const unsigned long long* __restrict__ src, long long n, GatherShape g,
                                               int dim) {
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x)
        atomicAdd(out + gather_offset(g, dim, e, ids[e]), src[e]);
}
NVG_KERNEL(nvg_scatter_add_i64);
