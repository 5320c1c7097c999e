// Counter-based random numbers on the device: the Philox4x32-10 function and transforms of
// engine/src/rng.rs, so element i of a draw equals the CPU's `RngStream::sample(dist, offset + i)`
// (uniforms exactly; the normal and Gumbel transforms go through f64 log/cos, which may differ from the
// host's libm in the last f64 bit, i.e. at most one f32 ulp after rounding).
#include "common.cuh"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

__device__ __forceinline__ void philox4x32_10(uint32_t k0, uint32_t k1, uint32_t c[4]) {
    for (int round = 0; round < 10; ++round) {
        unsigned long long p0 = (unsigned long long)PHILOX_M0 * c[0];
        unsigned long long p1 = (unsigned long long)PHILOX_M1 * c[2];
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = lo1;
        c[2] = n2;
        c[3] = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
}

// dist: 0 uniform [0, 1), 1 standard normal (Box–Muller, cosine branch), 2 standard Gumbel.
extern "C" __global__ void nvg_random_f32(float* __restrict__ out, long long n, unsigned long long seed,
                                          unsigned long long stream, unsigned long long offset, int dist) {
    const double two_m24 = 1.0 / 16777216.0;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        unsigned long long index = offset + (unsigned long long)e;
        uint32_t c[4] = {(uint32_t)index, (uint32_t)(index >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)};
        philox4x32_10((uint32_t)seed, (uint32_t)(seed >> 32), c);
        float v;
        if (dist == 0) {
            v = (float)((double)(c[0] >> 8) * two_m24);
        } else if (dist == 1) {
            double u1 = ((double)(c[0] >> 8) + 1.0) * two_m24;
            double u2 = (double)(c[1] >> 8) * two_m24;
            v = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
        } else {
            double u = ((double)(c[0] >> 8) + 0.5) * two_m24;
            v = (float)(-log(-log(u)));
        }
        out[e] = v;
    }
}
NVG_KERNEL(nvg_random_f32);
