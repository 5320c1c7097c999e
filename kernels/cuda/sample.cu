// Drawing one category per row of logits (engine op `sample_categorical`; the CPU reference is
// engine/src/ops/sample.rs, which this follows step by step): temperature, a stable descending sort
// (bitonic, NaN first, ties in index order), top-k and top-p (nucleus) filtering, and a multinomial draw
// from the row's uniform by the cumulative distribution in index order. Probabilities are summed in f64;
// the block sums each thread's contiguous chunk, then the chunk totals in thread order, so the result
// is deterministic and differs from the CPU's left-to-right sum only by rounding.
//
// One block of SAMPLE_THREADS threads per row (grid-stride over rows). `scratch` holds, per block, three
// arrays of n_pad 4-byte words (n_pad = the next power of two ≥ n): sorted values, their indices, and
// the filtered values in index order.
#include "common.cuh"

#define SAMPLE_THREADS 256

// Whether (a, ia) comes before (b, ib) in descending order: NaN first, then larger values, ties by index.
__device__ __forceinline__ bool ranks_before(float a, int ia, float b, int ib) {
    bool na = a != a, nb = b != b;
    if (na != nb) return na;
    if (!na && a != b) return a > b;
    return ia < ib;
}

// Exclusive prefix of `v` over the block in thread order (thread 0 adds the totals in a fixed order);
// `*total` gets the block's sum. `partial` holds blockDim.x + 1 doubles of shared memory.
__device__ __forceinline__ double block_exclusive_scan(double v, double* partial, double* total) {
    partial[threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        double acc = 0.0;
        for (int t = 0; t < (int)blockDim.x; ++t) {
            double x = partial[t];
            partial[t] = acc;
            acc += x;
        }
        partial[blockDim.x] = acc;
    }
    __syncthreads();
    double before = partial[threadIdx.x];
    *total = partial[blockDim.x];
    __syncthreads();  // `partial` is reused by the next call
    return before;
}

extern "C" __global__ void nvg_sample_rows_f32(const float* __restrict__ logits, const float* __restrict__ uniforms,
                                               long long* __restrict__ out, float* __restrict__ scratch,
                                               long long rows, int n, int n_pad, float temperature, int top_k,
                                               float top_p) {
    __shared__ double partial[SAMPLE_THREADS + 1];
    __shared__ float reduce[32];
    __shared__ int found, last;
    float* keys = scratch + (long long)blockIdx.x * 3 * n_pad;
    int* order = (int*)(keys + n_pad);
    float* filtered = keys + 2 * (long long)n_pad;
    int tid = threadIdx.x, nt = blockDim.x;
    int chunk = (n_pad + nt - 1) / nt;
    int c0 = min(tid * chunk, n), c1 = min(c0 + chunk, n);  // this thread's ranks / indices (real ones)
    float t = fmaxf(temperature, 1e-5f);
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* x = logits + r * n;
        for (int i = tid; i < n_pad; i += nt) {
            keys[i] = i < n ? x[i] / t : -INFINITY;  // padding sorts after every real entry
            order[i] = i;
        }
        __syncthreads();
        for (int k = 2; k <= n_pad; k <<= 1) {
            for (int j = k >> 1; j > 0; j >>= 1) {
                for (int i = tid; i < n_pad; i += nt) {
                    int p = i ^ j;
                    if (p > i) {
                        float a = keys[i], b = keys[p];
                        int ia = order[i], ib = order[p];
                        bool swap = (i & k) == 0 ? ranks_before(b, ib, a, ia) : ranks_before(a, ia, b, ib);
                        if (swap) {
                            keys[i] = b;
                            keys[p] = a;
                            order[i] = ib;
                            order[p] = ia;
                        }
                    }
                }
                __syncthreads();
            }
        }
        // Top-k: values below the k-th largest drop out (ties with it stay).
        float kth = (top_k > 0 && top_k < n) ? keys[top_k - 1] : -INFINITY;
        __syncthreads();
        for (int i = tid; i < n; i += nt)
            if (keys[i] < kth) keys[i] = -INFINITY;
        __syncthreads();
        // Top-p: a rank drops out when the probability mass before it already exceeds p.
        if (top_p < 1.0f) {
            float m = keys[0];
            double s = 0.0;
            for (int i = c0; i < c1; ++i) s += exp((double)(keys[i] - m));
            double z, unused;
            block_exclusive_scan(s, partial, &z);
            double q = 0.0;
            for (int i = c0; i < c1; ++i) q += exp((double)(keys[i] - m)) / z;
            double cum = block_exclusive_scan(q, partial, &unused);
            for (int i = c0; i < c1; ++i) {
                double e = exp((double)(keys[i] - m)) / z;
                if (i > 0 && cum > (double)top_p) keys[i] = -INFINITY;
                cum += e;
            }
            __syncthreads();
        }
        for (int i = tid; i < n; i += nt) filtered[order[i]] = keys[i];
        __syncthreads();
        // The draw: the first index whose cumulative probability exceeds u·Σp.
        float mx = -INFINITY;
        for (int i = c0; i < c1; ++i) mx = fmaxf(mx, filtered[i]);
        mx = block_max(mx, reduce);
        double s = 0.0;
        for (int i = c0; i < c1; ++i) s += exp((double)(filtered[i] - mx));
        double z;
        double acc = block_exclusive_scan(s, partial, &z);
        double target = (double)uniforms[r] * z;
        if (tid == 0) {
            found = n;
            last = -1;
        }
        __syncthreads();
        int my_found = n, my_last = -1;
        for (int i = c0; i < c1; ++i) {
            double p = exp((double)(filtered[i] - mx));
            if (p > 0.0) {
                acc += p;
                my_last = i;
                if (acc > target && my_found == n) my_found = i;
            }
        }
        if (my_found < n) atomicMin(&found, my_found);
        if (my_last >= 0) atomicMax(&last, my_last);
        __syncthreads();
        if (tid == 0) out[r] = found < n ? found : (last >= 0 ? last : order[0]);
        __syncthreads();  // scratch and shared state are reused by the next row
    }
}
NVG_KERNEL(nvg_sample_rows_f32);
