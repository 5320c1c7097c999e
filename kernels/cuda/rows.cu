// Row-wise kernels over the last dimension of a [rows, cols] f32 matrix: one block per row.
// Sum, softmax / log-softmax, layer norm and RMS norm, each with the statistics in f32 and a
// two-level (warp shuffle, then shared memory) reduction.
#include "common.cuh"

extern "C" __global__ void nvg_sum_rows_f32(const float* __restrict__ x, float* __restrict__ y, int rows, int cols) {
    __shared__ float scratch[32];
    const float* r = x + (long long)blockIdx.x * cols;
    float s = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) s += r[j];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) y[blockIdx.x] = s;
}
NVG_KERNEL(nvg_sum_rows_f32);

extern "C" __global__ void nvg_softmax_rows_f32(const float* __restrict__ x, float* __restrict__ y, int rows, int cols,
                                                int log_softmax) {
    __shared__ float scratch[32];
    const float* r = x + (long long)blockIdx.x * cols;
    float* o = y + (long long)blockIdx.x * cols;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, r[j]);
    m = block_max(m, scratch);
    float s = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) s += expf(r[j] - m);
    s = block_sum(s, scratch);
    if (log_softmax) {
        float ls = logf(s);
        for (int j = threadIdx.x; j < cols; j += blockDim.x) o[j] = r[j] - m - ls;
    } else {
        for (int j = threadIdx.x; j < cols; j += blockDim.x) o[j] = expf(r[j] - m) / s;
    }
}
NVG_KERNEL(nvg_softmax_rows_f32);

// weight / bias may be null (no affine).
extern "C" __global__ void nvg_layer_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                              const float* __restrict__ b, float* __restrict__ y, int rows, int cols,
                                              float eps) {
    __shared__ float scratch[32];
    const float* r = x + (long long)blockIdx.x * cols;
    float* o = y + (long long)blockIdx.x * cols;
    float s = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) s += r[j];
    float mean = block_sum(s, scratch) / cols;
    float v = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        float d = r[j] - mean;
        v += d * d;
    }
    float rstd = 1.0f / sqrtf(block_sum(v, scratch) / cols + eps);
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        float t = (r[j] - mean) * rstd;
        if (w) t *= w[j];
        if (b) t += b[j];
        o[j] = t;
    }
}
NVG_KERNEL(nvg_layer_norm_f32);

extern "C" __global__ void nvg_rms_norm_f32(const float* __restrict__ x, const float* __restrict__ scale,
                                            float* __restrict__ y, int rows, int cols, float eps) {
    __shared__ float scratch[32];
    const float* r = x + (long long)blockIdx.x * cols;
    float* o = y + (long long)blockIdx.x * cols;
    float s = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) s += r[j] * r[j];
    float inv = 1.0f / sqrtf(block_sum(s, scratch) / cols + eps);
    for (int j = threadIdx.x; j < cols; j += blockDim.x) o[j] = r[j] * inv * scale[j];
}
NVG_KERNEL(nvg_rms_norm_f32);
