// Image-shaped kernels (NCHW, f32): direct 2-D convolution (any kernel size, stride, asymmetric zero
// padding, optional bias), nearest-neighbour ×2 upsampling and group norm — what the VQ decoder and the
// Phi canvas update use.
#include "common.cuh"

// out[b, o, y, x] = bias[o] + Σ_{c, ky, kx} w[o, c, ky, kx] · in[b, c, y·s + ky − pad_top, x·s + kx − pad_left]
// (zero outside the image). One thread per output element.
extern "C" __global__ void nvg_conv2d_f32(const float* __restrict__ in, const float* __restrict__ w,
                                          const float* __restrict__ bias, float* __restrict__ out, int b, int c, int h,
                                          int wd, int o, int kh, int kw, int stride, int pad_top, int pad_left,
                                          int oh, int ow) {
    long long total = (long long)b * o * oh * ow;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        int x = (int)(e % ow);
        int y = (int)((e / ow) % oh);
        int oc = (int)((e / ((long long)ow * oh)) % o);
        int bi = (int)(e / ((long long)ow * oh * o));
        float s = 0.0f;
        for (int ci = 0; ci < c; ++ci) {
            const float* plane = in + ((long long)bi * c + ci) * h * wd;
            const float* wk = w + ((long long)oc * c + ci) * kh * kw;
            for (int ky = 0; ky < kh; ++ky) {
                int iy = y * stride + ky - pad_top;
                if (iy < 0 || iy >= h) continue;
                for (int kx = 0; kx < kw; ++kx) {
                    int ix = x * stride + kx - pad_left;
                    if (ix < 0 || ix >= wd) continue;
                    s += wk[ky * kw + kx] * plane[(long long)iy * wd + ix];
                }
            }
        }
        out[e] = bias ? s + bias[oc] : s;
    }
}
NVG_KERNEL(nvg_conv2d_f32);

// cols[b, (ci·kh + ky)·kw + kx, y·ow + x] = in[b, ci, y·s + ky − pad_top, x·s + kx − pad_left] (zero
// outside the image): the convolution as a GEMM, weight [O, C·kh·kw] · cols[b]. One thread per element of
// cols; consecutive threads write consecutive output pixels.
extern "C" __global__ void nvg_im2col_f32(const float* __restrict__ in, float* __restrict__ cols, int b, int c, int h,
                                          int wd, int kh, int kw, int stride, int pad_top, int pad_left, int oh,
                                          int ow) {
    long long pixels = (long long)oh * ow;
    long long rows = (long long)c * kh * kw;
    long long total = (long long)b * rows * pixels;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        long long p = e % pixels;
        long long r = (e / pixels) % rows;
        long long bi = e / (pixels * rows);
        int x = (int)(p % ow), y = (int)(p / ow);
        int kx = (int)(r % kw), ky = (int)((r / kw) % kh), ci = (int)(r / ((long long)kw * kh));
        int iy = y * stride + ky - pad_top, ix = x * stride + kx - pad_left;
        cols[e] = (iy >= 0 && iy < h && ix >= 0 && ix < wd) ? in[((bi * c + ci) * h + iy) * wd + ix] : 0.0f;
    }
}
NVG_KERNEL(nvg_im2col_f32);

// The adjoint of im2col: in[b, ci, iy, ix] = Σ cols[b, (ci·kh + ky)·kw + kx, y·ow + x] over the window
// positions (ky, kx) and output pixels (y, x) that read that input pixel (iy = y·s + ky − pad_top, ix
// likewise) — the input gradient of a convolution from Wᵀ·g. One thread per input element gathers its
// terms in a fixed order (no atomics: deterministic).
extern "C" __global__ void nvg_col2im_f32(const float* __restrict__ cols, float* __restrict__ in, int b, int c, int h,
                                          int wd, int kh, int kw, int stride, int pad_top, int pad_left, int oh,
                                          int ow) {
    long long pixels = (long long)oh * ow;
    long long rows = (long long)c * kh * kw;
    long long total = (long long)b * c * h * wd;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        int ix = (int)(e % wd), iy = (int)((e / wd) % h);
        long long ci = (e / ((long long)wd * h)) % c, bi = e / ((long long)wd * h * c);
        const float* base = cols + bi * rows * pixels;
        float s = 0.0f;
        for (int ky = 0; ky < kh; ++ky) {
            int yn = iy + pad_top - ky;
            if (yn < 0 || yn % stride != 0 || yn / stride >= oh) continue;
            for (int kx = 0; kx < kw; ++kx) {
                int xn = ix + pad_left - kx;
                if (xn < 0 || xn % stride != 0 || xn / stride >= ow) continue;
                s += base[((ci * kh + ky) * kw + kx) * pixels + (long long)(yn / stride) * ow + xn / stride];
            }
        }
        in[e] = s;
    }
}
NVG_KERNEL(nvg_col2im_f32);

// out[p, y, x] = in[p, y/2, x/2] over `planes` planes of h × w.
extern "C" __global__ void nvg_upsample2x_f32(const float* __restrict__ in, float* __restrict__ out, long long planes,
                                              int h, int w) {
    long long total = planes * 4 * h * w;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        int x = (int)(e % (2 * w));
        int y = (int)((e / (2 * w)) % (2 * h));
        long long p = e / (4LL * h * w);
        out[e] = in[(p * h + y / 2) * w + x / 2];
    }
}
NVG_KERNEL(nvg_upsample2x_f32);

// Group norm of [B, C, spatial]: one block per (b, group) reduces the group's cg·spatial values
// (two passes: mean, then variance), then normalises with the per-channel weight / bias (may be null).
extern "C" __global__ void nvg_group_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                              const float* __restrict__ bias, float* __restrict__ y, int b, int c,
                                              long long spatial, int groups, float eps) {
    __shared__ float scratch[32];
    int bi = blockIdx.x / groups, g = blockIdx.x % groups;
    int cg = c / groups;
    long long len = (long long)cg * spatial;
    const float* xs = x + ((long long)bi * c + (long long)g * cg) * spatial;
    float* ys = y + ((long long)bi * c + (long long)g * cg) * spatial;
    float s = 0.0f;
    for (long long i = threadIdx.x; i < len; i += blockDim.x) s += xs[i];
    float mean = block_sum(s, scratch) / (float)len;
    float v = 0.0f;
    for (long long i = threadIdx.x; i < len; i += blockDim.x) {
        float d = xs[i] - mean;
        v += d * d;
    }
    float rstd = 1.0f / sqrtf(block_sum(v, scratch) / (float)len + eps);
    for (long long i = threadIdx.x; i < len; i += blockDim.x) {
        int ch = g * cg + (int)(i / spatial);
        float t = (xs[i] - mean) * rstd;
        if (w) t *= w[ch];
        if (bias) t += bias[ch];
        ys[i] = t;
    }
}
NVG_KERNEL(nvg_group_norm_f32);
