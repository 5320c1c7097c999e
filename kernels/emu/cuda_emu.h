// Host emulation of the CUDA programming model for nvg-rs kernels.
//
// The same .cu sources that nvcc compiles to PTX are compiled by the host C++ compiler with NVG_EMU
// defined; this header supplies what CUDA C++ provides on the device. Every CUDA thread of a block runs
// as a fiber (ucontext) on one OS thread; the scheduler switches fibers round robin at barriers and warp
// collectives, and runs the blocks of a grid one after another. So:
//   - __shared__ variables are function-local thread_local statics: one instance per OS thread, shared
//     by every fiber of the block running the kernel there (blocks never overlap on one OS thread, and
//     launches on different OS threads, e.g. from parallel tests, get separate instances);
//   - __syncthreads() is a generation-counting barrier over the block's fibers;
//   - warp shuffles and votes exchange values through a per-warp buffer between two warp barriers;
//   - atomics are plain read-modify-writes (fibers never preempt each other).
// It is a correctness tool (CI runs every kernel through it), not a fast one.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <math.h>

// ---- execution-space qualifiers --------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static thread_local
#define __launch_bounds__(...)

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

namespace nvg_emu {
// The calling fiber's coordinates (set by the scheduler before it resumes a fiber).
struct ThreadState {
    uint3 thread_idx;
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
    unsigned int linear;  // linear thread index in the block
};
const ThreadState& current();
void sync_block();
void sync_warp();
void* dynamic_smem();
// Exchange slot of the calling lane in its warp (64 bits per lane).
uint64_t* warp_slots();
// Per-warp fragment exchange for the mma emulation: 8 words per lane.
uint32_t (*warp_fragments())[8];
unsigned int lane_count();  // active lanes in the calling warp
}  // namespace nvg_emu

#define threadIdx (nvg_emu::current().thread_idx)
#define blockIdx (nvg_emu::current().block_idx)
#define blockDim (nvg_emu::current().block_dim)
#define gridDim (nvg_emu::current().grid_dim)
static constexpr int warpSize = 32;

inline void __syncthreads() { nvg_emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { nvg_emu::sync_warp(); }

// Dynamic shared memory: kernels declare it with NVG_DYNAMIC_SMEM(type, name).
#define NVG_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(nvg_emu::dynamic_smem())

// ---- warp collectives --------------------------------------------------------------------------------
namespace nvg_emu {
template <typename T>
T exchange(T v, unsigned int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 64 bits");
    uint64_t* slots = warp_slots();
    unsigned int lane = current().linear % 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    slots[lane] = bits;
    sync_warp();
    uint64_t got = slots[src_lane < lane_count() ? src_lane : lane];
    sync_warp();  // nobody overwrites a slot before every lane has read
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}
}  // namespace nvg_emu

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int = 32) {
    return nvg_emu::exchange(v, (nvg_emu::current().linear % 32) ^ (unsigned)mask);
}
template <typename T>
inline T __shfl_sync(unsigned, T v, int src, int = 32) {
    return nvg_emu::exchange(v, (unsigned)src % 32);
}
template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned d, int = 32) {
    unsigned lane = nvg_emu::current().linear % 32;
    return nvg_emu::exchange(v, lane + d < 32 ? lane + d : lane);
}
inline unsigned __ballot_sync(unsigned, int pred) {
    uint64_t* slots = nvg_emu::warp_slots();
    unsigned lane = nvg_emu::current().linear % 32;
    slots[lane] = pred ? 1 : 0;
    nvg_emu::sync_warp();
    unsigned out = 0;
    for (unsigned i = 0; i < nvg_emu::lane_count(); ++i) out |= (slots[i] ? 1u : 0u) << i;
    nvg_emu::sync_warp();
    return out;
}
inline int __any_sync(unsigned m, int pred) { return __ballot_sync(m, pred) != 0; }
inline int __all_sync(unsigned m, int pred) {
    unsigned n = nvg_emu::lane_count();
    unsigned full = n == 32 ? 0xffffffffu : ((1u << n) - 1);
    return __ballot_sync(m, pred) == full;
}

// ---- mma.sync ------------------------------------------------------------------------------------
namespace nvg_emu {
inline float bf16_bits_to_float(uint32_t bits16) {
    uint32_t u = bits16 << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 with the PTX fragment layout: lane = 4·g + t;
// a: {A[g][2t..2t+1]}, {A[g+8][2t..]}, {A[g][2t+8..]}, {A[g+8][2t+8..]}; b: {B[2t..2t+1][g]},
// {B[2t+8..2t+9][g]}; c, d: C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1] (low half = lower index).
// Every lane publishes its fragments, then computes its four outputs from the whole tiles.
inline void mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    uint32_t(*frag)[8] = warp_fragments();
    unsigned lane = current().linear % 32;
    for (int i = 0; i < 4; ++i) frag[lane][i] = a[i];
    frag[lane][4] = b[0];
    frag[lane][5] = b[1];
    sync_warp();
    float A[16][16], B[16][8];
    for (unsigned l = 0; l < 32; ++l) {
        unsigned g = l / 4, t = l % 4;
        const uint32_t* f = frag[l];
        for (int h = 0; h < 2; ++h) {
            A[g][2 * t + h] = bf16_bits_to_float((f[0] >> (16 * h)) & 0xffff);
            A[g + 8][2 * t + h] = bf16_bits_to_float((f[1] >> (16 * h)) & 0xffff);
            A[g][2 * t + 8 + h] = bf16_bits_to_float((f[2] >> (16 * h)) & 0xffff);
            A[g + 8][2 * t + 8 + h] = bf16_bits_to_float((f[3] >> (16 * h)) & 0xffff);
            B[2 * t + h][g] = bf16_bits_to_float((f[4] >> (16 * h)) & 0xffff);
            B[2 * t + 8 + h][g] = bf16_bits_to_float((f[5] >> (16 * h)) & 0xffff);
        }
    }
    sync_warp();  // fragments read by every lane before anyone reuses the buffer
    unsigned g = lane / 4, t = lane % 4;
    const unsigned rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) {
        float s = c[i];
        for (int k = 0; k < 16; ++k) s += A[rows[i]][k] * B[k][cols[i]];
        d[i] = s;
    }
}
}  // namespace nvg_emu

// ---- atomics (fibers never preempt each other) -----------------------------------------------------
template <typename T>
inline T atomicAdd(T* p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
    T old = *p;
    *p = old > v ? old : v;
    return old;
}
template <typename T>
inline T atomicMin(T* p, T v) {
    T old = *p;
    *p = old < v ? old : v;
    return old;
}

// ---- math intrinsics ---------------------------------------------------------------------------------
// CUDA's integer min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }

// ---- bf16 storage type -------------------------------------------------------------------------------
struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {  // round to nearest even, NaN kept quiet
    uint32_t u;
    std::memcpy(&u, &f, 4);
    __nv_bfloat16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        h.bits = (uint16_t)((u >> 16) | 0x40);
    } else {
        h.bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return h;
}

// ---- kernel registration -------------------------------------------------------------------------
namespace nvg_emu {
using Trampoline = void (*)(void** args);
void register_kernel(const char* name, Trampoline t);

template <typename... A, size_t... I>
void invoke_with(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}
template <typename... A>
void invoke(void (*k)(A...), void** args) {
    invoke_with(k, args, std::index_sequence_for<A...>{});
}
struct Registrar {
    Registrar(const char* name, Trampoline t) { register_kernel(name, t); }
};
}  // namespace nvg_emu

// Makes kernel `name` launchable by name in the emulator (a no-op in device builds).
#define NVG_KERNEL(name)                                                                       \
    static nvg_emu::Registrar nvg_emu_registrar_##name(#name, [](void** args) {               \
        nvg_emu::invoke(name, args);                                                           \
    })
