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

// Tensor-core GEMM: C[z] = bf16(A[z]) · bf16(B[z]) with f32 accumulation, for f32 row-major A [M, K],
// B [K, N], C [M, N] (batched like nvg_gemm_f32). A block of 4 warps computes a 64×64 tile; each warp a
// 32×32 quarter as 2×4 m16n8k16 mma tiles, from 16-deep slices converted to bf16 in shared memory.
#define TC_TILE 64
#define TC_K 16
#define TC_PAD 8  // shared-memory row padding (bank conflicts)

extern "C" __global__ void nvg_gemm_bf16tc_f32(const float* __restrict__ a, const float* __restrict__ b,
                                               float* __restrict__ c, int m, int n, int k, long long stride_a,
                                               long long stride_b, long long stride_c) {
    __shared__ unsigned short as[TC_TILE][TC_K + TC_PAD];
    __shared__ unsigned short bs[TC_K][TC_TILE + TC_PAD];
    a += blockIdx.z * stride_a;
    b += blockIdx.z * stride_b;
    c += blockIdx.z * stride_c;
    int row0 = blockIdx.y * TC_TILE, col0 = blockIdx.x * TC_TILE;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int g = lane / 4, t = lane % 4;
    int wm = (warp / 2) * 32, wn = (warp % 2) * 32;  // the warp's quarter of the tile
    float acc[2][4][4] = {};
    for (int k0 = 0; k0 < k; k0 += TC_K) {
        for (int e = threadIdx.x; e < TC_TILE * TC_K; e += 128) {
            int r = e / TC_K, kk = e % TC_K;
            int gr = row0 + r, gk = k0 + kk;
            as[r][kk] = bf16_bits(gr < m && gk < k ? a[(long long)gr * k + gk] : 0.0f);
            int kb = e / TC_TILE, cc = e % TC_TILE;
            int gkb = k0 + kb, gc = col0 + cc;
            bs[kb][cc] = bf16_bits(gkb < k && gc < n ? b[(long long)gkb * n + gc] : 0.0f);
        }
        __syncthreads();
        uint32_t fa[2][4], fb[4][2];
        for (int mi = 0; mi < 2; ++mi) {
            int r = wm + mi * 16 + g;
            fa[mi][0] = pack_bf16x2(as[r][2 * t], as[r][2 * t + 1]);
            fa[mi][1] = pack_bf16x2(as[r + 8][2 * t], as[r + 8][2 * t + 1]);
            fa[mi][2] = pack_bf16x2(as[r][2 * t + 8], as[r][2 * t + 9]);
            fa[mi][3] = pack_bf16x2(as[r + 8][2 * t + 8], as[r + 8][2 * t + 9]);
        }
        for (int ni = 0; ni < 4; ++ni) {
            int cc = wn + ni * 8 + g;
            fb[ni][0] = pack_bf16x2(bs[2 * t][cc], bs[2 * t + 1][cc]);
            fb[ni][1] = pack_bf16x2(bs[2 * t + 8][cc], bs[2 * t + 9][cc]);
        }
        for (int mi = 0; mi < 2; ++mi)
            for (int ni = 0; ni < 4; ++ni) mma_bf16_16816(acc[mi][ni], fa[mi], fb[ni], acc[mi][ni]);
        __syncthreads();
    }
    for (int mi = 0; mi < 2; ++mi)
        for (int ni = 0; ni < 4; ++ni)
            for (int i = 0; i < 4; ++i) {
                int r = row0 + wm + mi * 16 + g + (i >= 2 ? 8 : 0);
                int cc = col0 + wn + ni * 8 + 2 * t + (i % 2);
                if (r < m && cc < n) c[(long long)r * n + cc] = acc[mi][ni][i];
            }
}
NVG_KERNEL(nvg_gemm_bf16tc_f32);
