// RoPE from a per-token position table: x [B, H, N, D] (contiguous), cos/sin [B or 1, N, D/2]; pair p of
// a head is (2p, 2p+1), rotated by the table's angle. One thread per pair.
#include "common.cuh"

extern "C" __global__ void nvg_rope_f32(const float* __restrict__ x, const float* __restrict__ cos_t,
                                        const float* __restrict__ sin_t, float* __restrict__ y, int b, int h, int n,
                                        int d, int table_batched) {
    long long pairs = (long long)b * h * n * (d / 2);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < pairs; i += (long long)gridDim.x * blockDim.x) {
        int p = (int)(i % (d / 2));
        long long row = i / (d / 2);  // (bi, hi, ni)
        int ni = (int)(row % n);
        int bi = (int)(row / ((long long)n * h));
        long long t = ((table_batched ? (long long)bi * n : 0) + ni) * (d / 2) + p;
        float c = cos_t[t], s = sin_t[t];
        float x0 = x[row * d + 2 * p], x1 = x[row * d + 2 * p + 1];
        y[row * d + 2 * p] = c * x0 - s * x1;
        y[row * d + 2 * p + 1] = s * x0 + c * x1;
    }
}
NVG_KERNEL(nvg_rope_f32);
