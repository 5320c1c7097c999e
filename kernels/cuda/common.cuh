// Shared by every nvg-rs kernel: the device/host-emulation switch and block-level reductions.
// Kernels are `extern "C"` (unmangled names, found by name in the PTX and in the emulator) and take
// f32 tensors as contiguous row-major buffers; the engine makes operands contiguous before a launch.
#pragma once

#ifdef NVG_EMU
#include "../emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
#define NVG_KERNEL(name)
#define NVG_DYNAMIC_SMEM(T, name) extern __shared__ T name[]
#endif

#include <stdint.h>

#define FULL_MASK 0xffffffffu

// The bf16 bits (round to nearest even) of an f32.
__device__ __forceinline__ unsigned short bf16_bits(float x) {
#ifdef NVG_EMU
    return __float2bfloat16(x).bits;
#else
    return __bfloat16_as_ushort(__float2bfloat16(x));
#endif
}

// Two bf16 values in one 32-bit register, the lower-index element in the low half (PTX .bf16x2).
__device__ __forceinline__ uint32_t pack_bf16x2(unsigned short lo, unsigned short hi) {
    return (uint32_t)lo | ((uint32_t)hi << 16);
}

// D = A·B + C on one m16n8k16 tile with bf16 inputs and f32 accumulation (tensor cores; emulated
// lane by lane on the host). Fragment layout: see nvg_emu::mma_bf16_16816 in emu/cuda_emu.h.
__device__ __forceinline__ void mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
#ifdef NVG_EMU
    nvg_emu::mma_bf16_16816(d, a, b, c);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); `scratch` holds 32 floats of shared
// memory. Every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// Shapes and element strides of a two-operand broadcast (the engine's `BroadcastArg`): the output has
// `dims`; a and b are read at strides sa, sb (0 along broadcast dimensions).
struct Broadcast {
    int rank;
    long long dims[8];
    long long sa[8];
    long long sb[8];
};

// The offsets into a and b of the output element i.
__device__ __forceinline__ void broadcast_offsets(const Broadcast& bc, long long i, long long* ia, long long* ib) {
    long long rem = i, a = 0, b = 0;
    for (int d = bc.rank - 1; d >= 0; --d) {
        long long c = rem % bc.dims[d];
        rem /= bc.dims[d];
        a += c * bc.sa[d];
        b += c * bc.sb[d];
    }
    *ia = a;
    *ib = b;
}
