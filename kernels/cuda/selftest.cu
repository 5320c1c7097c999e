// Kernels that test the execution model itself (used by kernels/tests/emu.rs on the host emulation and
// by the GPU check on a device): barriers, shared memory, warp shuffles and votes, dynamic shared memory.
#include "common.cuh"

// out[i] = in[n − 1 − i] within one block, through shared memory and a barrier.
extern "C" __global__ void nvg_selftest_reverse(const float* in, float* out, int n) {
    __shared__ float buf[1024];
    int t = threadIdx.x;
    if (t < n) buf[t] = in[blockIdx.x * n + t];
    __syncthreads();
    if (t < n) out[blockIdx.x * n + t] = buf[n - 1 - t];
}
NVG_KERNEL(nvg_selftest_reverse);

// Per warp: out[lane] = sum of the warp's values (xor shuffles), out2[lane] = value of lane ^ 1,
// ballot of (value > 0) in out_ballot[warp].
extern "C" __global__ void nvg_selftest_warp(const float* in, float* sum, float* swapped, unsigned* ballot) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    float v = in[t];
    sum[t] = warp_sum(v);
    swapped[t] = __shfl_xor_sync(FULL_MASK, v, 1);
    unsigned b = __ballot_sync(FULL_MASK, v > 0.0f);
    if (threadIdx.x % 32 == 0) ballot[t / 32] = b;
}
NVG_KERNEL(nvg_selftest_warp);

// Block sum through dynamic shared memory (blockDim.x floats).
extern "C" __global__ void nvg_selftest_dynamic_smem(const float* in, float* out) {
    NVG_DYNAMIC_SMEM(float, buf);
    buf[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s /= 2) {
        if ((int)threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = buf[0];
}
NVG_KERNEL(nvg_selftest_dynamic_smem);

// A kernel bug on purpose: only even threads reach the barrier (the emulator must report it).
extern "C" __global__ void nvg_selftest_divergent_barrier(float* out) {
    if (threadIdx.x % 2 == 0) __syncthreads();
    out[threadIdx.x] = 1.0f;
}
NVG_KERNEL(nvg_selftest_divergent_barrier);
