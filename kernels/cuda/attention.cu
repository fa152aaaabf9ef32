// Causal attention over the f16 KV cache with grouped-query heads.
//
// One block per (query row, head): scores for every cached position go to shared memory,
// then a block-wide softmax, then each thread accumulates one output dimension. Simple
// and exact; the tiled flash-attention kernels replace it for long contexts.
#include <cuda_runtime.h>

#include "common.cuh"

constexpr int ATT_THREADS = 128;

__device__ float block_reduce(float v, float *red, bool is_max) {
    v = is_max ? warp_max(v) : warp_sum(v);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float r = threadIdx.x < ATT_THREADS / 32 ? red[threadIdx.x] : (is_max ? -INFINITY : 0.f);
        r = is_max ? warp_max(r) : warp_sum(r);
        if (threadIdx.x == 0) red[0] = r;
    }
    __syncthreads();
    float out = red[0];
    __syncthreads();
    return out;
}

__global__ void __launch_bounds__(ATT_THREADS)
attention_kernel(const float *q, const __half *kc, const __half *vc, int pos0, int n_heads,
                 int n_kv_heads, int head_dim, int capacity, float *out) {
    extern __shared__ float smem[];  // head_dim query values, then pos + 1 scores
    __shared__ float red[32];
    int b = blockIdx.y, h = blockIdx.x;
    int pos = pos0 + b;
    int kv_dim = n_kv_heads * head_dim;
    int kvh = h / (n_heads / n_kv_heads);
    float *qs = smem, *scores = smem + head_dim;
    const float *qr = q + ((size_t)b * n_heads + h) * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += ATT_THREADS) qs[i] = qr[i];
    __syncthreads();

    float scale = rsqrtf((float)head_dim);
    float mx = -INFINITY;
    for (int t = threadIdx.x; t <= pos; t += ATT_THREADS) {
        const __half2 *kr =
            reinterpret_cast<const __half2 *>(kc + (size_t)(t % capacity) * kv_dim + kvh * head_dim);
        float s = 0.f;
        for (int i = 0; i < head_dim / 2; i++) {
            float2 kv = __half22float2(kr[i]);
            s += qs[2 * i] * kv.x + qs[2 * i + 1] * kv.y;
        }
        s *= scale;
        scores[t] = s;
        mx = fmaxf(mx, s);
    }
    mx = block_reduce(mx, red, true);
    float sum = 0.f;
    for (int t = threadIdx.x; t <= pos; t += ATT_THREADS) {
        float e = __expf(scores[t] - mx);
        scores[t] = e;
        sum += e;
    }
    sum = block_reduce(sum, red, false);
    float inv = 1.f / sum;
    float *o = out + ((size_t)b * n_heads + h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += ATT_THREADS) {
        float acc = 0.f;
        const __half *vcol = vc + kvh * head_dim + d;
        for (int t = 0; t <= pos; t++) acc += scores[t] * __half2float(vcol[(size_t)(t % capacity) * kv_dim]);
        o[d] = acc * inv;
    }
}

extern "C" int wick_attention(const float *q, const uint16_t *kc, const uint16_t *vc, int pos0,
                              int n, int n_heads, int n_kv_heads, int head_dim, int capacity,
                              float *out) {
    size_t shared = (size_t)(head_dim + pos0 + n) * sizeof(float);
    static size_t raised = 48 * 1024;
    if (shared > raised) {
        cudaError_t e = cudaFuncSetAttribute(attention_kernel,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int)shared);
        if (e != cudaSuccess) return (int)e;
        raised = shared;
    }
    dim3 grid(n_heads, n);
    attention_kernel<<<grid, ATT_THREADS, shared>>>(q, (const __half *)kc, (const __half *)vc,
                                                   pos0, n_heads, n_kv_heads, head_dim,
                                                   capacity, out);
    return (int)cudaGetLastError();
}
