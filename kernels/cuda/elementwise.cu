// Element-wise unary and broadcasting binary ops on f32 (op codes match the engine's `Unary` and
// `Binary` enums, in declaration order).
#include "common.cuh"

__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float unary_op(int op, float x) {
    switch (op) {
        case 0: return -x;                                   // neg
        case 1: return fabsf(x);                             // abs
        case 2: return expf(x);                              // exp
        case 3: return logf(x);                              // log
        case 4: return sqrtf(x);                             // sqrt
        case 5: return 1.0f / sqrtf(x);                      // rsqrt
        case 6: return 1.0f / x;                             // recip
        case 7: return x * x;                                // sqr
        case 8: return tanhf(x);                             // tanh
        case 9: return sinf(x);                              // sin
        case 10: return cosf(x);                             // cos
        case 11: return sigmoid_f(x);                        // sigmoid
        case 12: return x * sigmoid_f(x);                    // silu
        case 13: {                                           // gelu (tanh approximation)
            float y = 0.7978845608f * (x + 0.044715f * x * x * x);
            return x / (1.0f + expf(-2.0f * y));
        }
        default: return x > 0.0f ? x : 0.0f;                 // relu
    }
}

extern "C" __global__ void nvg_unary_f32(const float* __restrict__ x, float* __restrict__ y, long long n, int op) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = unary_op(op, x[i]);
}
NVG_KERNEL(nvg_unary_f32);

__device__ __forceinline__ float binary_op(int op, float a, float b) {
    switch (op) {
        case 0: return a + b;
        case 1: return a - b;
        case 2: return a * b;
        case 3: return a / b;
        case 4: return a != a || b != b ? a + b : fmaxf(a, b);  // NaN propagates
        default: return a != a || b != b ? a + b : fminf(a, b);
    }
}

extern "C" __global__ void nvg_binary_f32(const float* __restrict__ a, const float* __restrict__ b,
                                          float* __restrict__ out, long long n, int op, Broadcast bc) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long ia, ib;
        broadcast_offsets(bc, i, &ia, &ib);
        out[i] = binary_op(op, a[ia], b[ib]);
    }
}
NVG_KERNEL(nvg_binary_f32);

// y = x / v (a true division, as the CPU backend computes it).
extern "C" __global__ void nvg_div_scalar_f32(const float* __restrict__ x, float* __restrict__ y, long long n, float v) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = x[i] / v;
}
NVG_KERNEL(nvg_div_scalar_f32);

// y = x^e (powf, as the CPU's f32::powf).
extern "C" __global__ void nvg_powf_f32(const float* __restrict__ x, float* __restrict__ y, long long n, float e) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = powf(x[i], e);
}
NVG_KERNEL(nvg_powf_f32);

// y = x·mul + add.
extern "C" __global__ void nvg_affine_f32(const float* __restrict__ x, float* __restrict__ y, long long n, float mul,
                                          float add) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = x[i] * mul + add;
}
NVG_KERNEL(nvg_affine_f32);

// y = min if x < min, max if x > max, else x (NaN passes through, as on the CPU).
extern "C" __global__ void nvg_clamp_f32(const float* __restrict__ x, float* __restrict__ y, long long n, float lo,
                                         float hi) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float v = x[i];
        y[i] = v < lo ? lo : (v > hi ? hi : v);
    }
}
NVG_KERNEL(nvg_clamp_f32);

// For every coordinate c of `dims` (n elements): dst[dst_offset + Σ c_d·sb[d]] = src[offset + Σ c_d·sa[d]].
// Packs strided views (sb = row-major strides) and places a tensor into a slice of another (cat).
extern "C" __global__ void nvg_strided_copy_f32(const float* __restrict__ src, float* __restrict__ dst, long long n,
                                                long long offset, long long dst_offset, Broadcast layout) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long rem = i, at = offset, to = dst_offset;
        for (int d = layout.rank - 1; d >= 0; --d) {
            long long c = rem % layout.dims[d];
            at += c * layout.sa[d];
            to += c * layout.sb[d];
            rem /= layout.dims[d];
        }
        dst[to] = src[at];
    }
}
NVG_KERNEL(nvg_strided_copy_f32);

// bf16 storage ↔ f32 compute: device tensors stored as bf16 are widened before a kernel runs and the
// result rounded back (round to nearest even), as the CPU backend does.
extern "C" __global__ void nvg_bf16_to_f32(const unsigned short* __restrict__ x, float* __restrict__ y, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        unsigned int u = (unsigned int)x[i] << 16;
        float f;
        memcpy(&f, &u, 4);
        y[i] = f;
    }
}
NVG_KERNEL(nvg_bf16_to_f32);

extern "C" __global__ void nvg_f32_to_bf16(const float* __restrict__ x, unsigned short* __restrict__ y, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = bf16_bits(x[i]);
}
NVG_KERNEL(nvg_f32_to_bf16);
