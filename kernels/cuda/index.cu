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
