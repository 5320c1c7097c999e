// SIMT GEMM, f32: C[z] = A[z] · B[z] for row-major A [M, K], B [K, N], C [M, N], batched over
// blockIdx.z with element strides between batch items (0 broadcasts an operand). 64×64 tiles per block
// of 16×16 threads, each thread computing 4×4 outputs from 16-deep slices staged in shared memory.
#include "common.cuh"

#define TILE 64
#define KTILE 16

extern "C" __global__ void nvg_gemm_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
                                        int m, int n, int k, long long stride_a, long long stride_b,
                                        long long stride_c) {
    __shared__ float as[KTILE][TILE];
    __shared__ float bs[KTILE][TILE];
    a += blockIdx.z * stride_a;
    b += blockIdx.z * stride_b;
    c += blockIdx.z * stride_c;
    int row0 = blockIdx.y * TILE, col0 = blockIdx.x * TILE;
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < k; k0 += KTILE) {
        // 256 threads load 64×16 of A (transposed into as[kk][row]) and 16×64 of B.
        for (int e = threadIdx.x; e < TILE * KTILE; e += 256) {
            int r = e / KTILE, kk = e % KTILE;
            int gr = row0 + r, gk = k0 + kk;
            as[kk][r] = gr < m && gk < k ? a[(long long)gr * k + gk] : 0.0f;
            int kb = e / TILE, cc = e % TILE;
            int gkb = k0 + kb, gc = col0 + cc;
            bs[kb][cc] = gkb < k && gc < n ? b[(long long)gkb * n + gc] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < KTILE; ++kk) {
            float av[4], bv[4];
            for (int i = 0; i < 4; ++i) av[i] = as[kk][ty * 4 + i];
            for (int j = 0; j < 4; ++j) bv[j] = bs[kk][tx * 4 + j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
            int r = row0 + ty * 4 + i, cc = col0 + tx * 4 + j;
            if (r < m && cc < n) c[(long long)r * n + cc] = acc[i][j];
        }
}
NVG_KERNEL(nvg_gemm_f32);
