// Kernels that only backward passes and optimisers need, each the device twin of a CPU loop in
// engine/src/autograd/kernels.rs or engine/src/optim (same formulas, in f32).
#include "common.cuh"

__device__ __forceinline__ float sigmoid_grad_base(float x) { return 1.0f / (1.0f + expf(-x)); }

// g · f'(x) for the unary op `op` (codes of the engine's `Unary`, in declaration order), from its
// input x and output y, as `unary_backward` computes it on the CPU.
__device__ __forceinline__ float unary_grad(int op, float x, float y, float g) {
    switch (op) {
        case 0: return -g;                                          // neg
        case 1: return x > 0.0f ? g : (x < 0.0f ? -g : 0.0f);      // abs
        case 2: return g * y;                                       // exp
        case 3: return g / x;                                       // log
        case 4: return g * 0.5f / y;                                // sqrt
        case 5: return g * -0.5f * y * y * y;                       // rsqrt
        case 6: return -g * y * y;                                  // recip
        case 7: return g * 2.0f * x;                                // sqr
        case 8: return g * (1.0f - y * y);                          // tanh
        case 9: return g * cosf(x);                                 // sin
        case 10: return -g * sinf(x);                               // cos
        case 11: return g * y * (1.0f - y);                         // sigmoid
        case 12: {                                                  // silu
            float s = sigmoid_grad_base(x);
            return g * s * (1.0f + x * (1.0f - s));
        }
        case 13: {                                                  // gelu (tanh approximation)
            const float c = 0.7978846f, a = 0.044715f;
            float t = tanhf(c * (x + a * x * x * x));
            return g * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * c * (1.0f + 3.0f * a * x * x));
        }
        default: return x > 0.0f ? g : 0.0f;                        // relu
    }
}

extern "C" __global__ void nvg_unary_backward_f32(const float* __restrict__ x, const float* __restrict__ y,
                                                  const float* __restrict__ g, float* __restrict__ out, long long n,
                                                  int op) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = unary_grad(op, x[i], y[i], g[i]);
}
NVG_KERNEL(nvg_unary_backward_f32);

// g where lo ≤ x ≤ hi, 0 elsewhere (NaN x: 0).
extern "C" __global__ void nvg_clamp_backward_f32(const float* __restrict__ x, const float* __restrict__ g,
                                                  float* __restrict__ out, long long n, float lo, float hi) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = x[i] >= lo && x[i] <= hi ? g[i] : 0.0f;
}
NVG_KERNEL(nvg_clamp_backward_f32);

// The share of maximum(a, b)'s (is_max = 1) or minimum's gradient that goes to a, on the broadcast
// shape: 1 where a wins, 0 where b wins, ½ on ties (PyTorch's rule).
extern "C" __global__ void nvg_extremum_weight_f32(const float* __restrict__ a, const float* __restrict__ b,
                                                   float* __restrict__ out, long long n, int is_max, Broadcast bc) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long ia, ib;
        broadcast_offsets(bc, i, &ia, &ib);
        float x = a[ia], y = b[ib];
        out[i] = x == y ? 0.5f : ((x > y) == (is_max != 0) ? 1.0f : 0.0f);
    }
}
NVG_KERNEL(nvg_extremum_weight_f32);

// The gradient of index_select along a dimension: out `[outer, size, inner]` (zeros on entry) gets
// g `[outer, m, inner]`'s slice j added at ids[j]. Atomic adds: repeated ids sum in a varying order.
extern "C" __global__ void nvg_index_add_f32(float* __restrict__ out, const long long* __restrict__ ids,
                                             const float* __restrict__ g, long long outer, long long m,
                                             long long size, long long inner) {
    long long n = outer * m * inner;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        long long k = e % inner, j = (e / inner) % m, o = e / (inner * m);
        long long id = ids[j];
        if (id >= 0 && id < size) atomicAdd(out + (o * size + id) * inner + k, g[e]);
    }
}
NVG_KERNEL(nvg_index_add_f32);

// PyTorch's scalar lerp: start + w·(end − start) for |w| < 0.5, else end − (end − start)·(1 − w).
__device__ __forceinline__ float lerp_f(float start, float end, float w) {
    return fabsf(w) < 0.5f ? start + w * (end - start) : end - (end - start) * (1.0f - w);
}

// One AdamW step (engine/src/optim/adamw.rs, PyTorch's order of operations), out of place:
// p' = p·decay + neg_step·m' / (sqrt(v')/bc2_sqrt + eps), m' = lerp(m, g, w1), v' = v·β2 + c2·g·g.
// decay is 1 for parameters without weight decay.
extern "C" __global__ void nvg_adamw_f32(const float* __restrict__ p, const float* __restrict__ m,
                                         const float* __restrict__ v, const float* __restrict__ g,
                                         float* __restrict__ p_out, float* __restrict__ m_out,
                                         float* __restrict__ v_out, long long n, float decay, float w1, float beta2,
                                         float c2, float neg_step, float bc2_sqrt, float eps) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float gi = g[i];
        float mi = lerp_f(m[i], gi, w1);
        float vi = v[i] * beta2 + c2 * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p_out[i] = p[i] * decay + neg_step * mi / denom;
        m_out[i] = mi;
        v_out[i] = vi;
    }
}
NVG_KERNEL(nvg_adamw_f32);

// out = lerp(a, b, w) element-wise (the EMA update).
extern "C" __global__ void nvg_lerp_f32(const float* __restrict__ a, const float* __restrict__ b,
                                        float* __restrict__ out, long long n, float w) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = lerp_f(a[i], b[i], w);
}
NVG_KERNEL(nvg_lerp_f32);
