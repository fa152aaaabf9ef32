// The small ops of a forward pass: embedding lookup, RMSNorm, RoPE, and SwiGLU.
#include <cuda_runtime.h>

#include "common.cuh"
#include "kv.cuh"
#include "quantize_q8.cuh"
#include "stream.cuh"

template <int TYPE>
__global__ void embed_kernel(const uint8_t *table, int dim, const int32_t *tokens, float *x) {
    pdl_start();
    int b = blockIdx.y;
    const uint8_t *row = table + (size_t)tokens[b] * row_bytes(TYPE, dim);
    float *o = x + (size_t)b * dim;
    if constexpr (is_float_type(TYPE)) {
        // One value per thread: float rows need not be whole blocks.
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < dim; i += gridDim.x * blockDim.x)
            o[i] = float_at<TYPE>(row, i);
    } else {
        int blk = blockIdx.x * blockDim.x + threadIdx.x;
        if (blk >= dim / 32) return;
        float v[32];
        dequant_block<TYPE>(row, blk, v);
#pragma unroll
        for (int i = 0; i < 32; i++) o[blk * 32 + i] = v[i];
    }
}

extern "C" int wick_embed(int type, const void *table, int dim, const int32_t *tokens, int n,
                          float *x) {
    if ((!is_float_type(type) && dim % block_elems(type) != 0) || n <= 0)
        return (int)cudaErrorInvalidValue;
    int n_blk = dim / 32;
    dim3 grid((n_blk + 63) / 64 + 1, n), block(64);
#define LAUNCH(T) wick_launch(embed_kernel<T>, grid, block, 0, (const uint8_t *)table, dim, tokens, x)
    WICK_DISPATCH_TYPE(type, LAUNCH)
#undef LAUNCH
    return (int)cudaGetLastError();
}

// One block per row: sum of squares by the block, then the scaled write.
__global__ void rmsnorm_kernel(const float *x, const float *w, float eps, int cols,
                               float *out) {
    pdl_start();
    __shared__ float partial[32];
    const float *xr = x + (size_t)blockIdx.x * cols;
    float ss = 0.f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) ss += xr[i] * xr[i];
    ss = warp_sum(ss);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.f;
        v = warp_sum(v);
        if (threadIdx.x == 0) partial[0] = v;
    }
    __syncthreads();
    float scale = rsqrtf(partial[0] / cols + eps);
    float *o = out + (size_t)blockIdx.x * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = xr[i] * scale * w[i];
}

// As rmsnorm_kernel, and each warp writes one whole 32-value block so it can round it to
// int8 for the matrix product that follows. A decode step has one row: so that more than
// one SM works on it, blocks split the row's blocks among them, each summing the squares of
// the whole row itself (16 KB from L2 for a 4096-wide row: cheaper than a second launch).
constexpr int NORM_Q8_WARPS = 8;

__global__ void __launch_bounds__(NORM_Q8_WARPS * 32)
rmsnorm_q8_kernel(const float *x, const float *w, float eps, int cols, float *out, int8_t *xq,
                  float *xd) {
    pdl_trigger();
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_blk = cols / 32;
    int c = blockIdx.y * NORM_Q8_WARPS + warp, i = c * 32 + lane;
    // The norm's weight is never written, so its load may start before the kernel launched
    // before this one has finished (PDL): one round trip less after the wait.
    float wi = c < n_blk ? w[i] : 0.f;
    pdl_wait();
    const float *xr = x + (size_t)blockIdx.x * cols;
    float scale = block_rms_scale<NORM_Q8_WARPS>(xr, cols, eps);
    if (c >= n_blk) return;
    float v = xr[i] * scale * wi;
    out[(size_t)blockIdx.x * cols + i] = v;
    quantize_q8_lane(v, (size_t)blockIdx.x * n_blk + c, lane, xq, xd);
}

extern "C" int wick_rmsnorm_q8(const float *x, const float *w, float eps, int rows, int cols,
                               float *out, int8_t *xq, float *xd) {
    if (cols % 32 != 0) return (int)cudaErrorInvalidValue;
    int n_blk = cols / 32;
    dim3 grid(rows, (n_blk + NORM_Q8_WARPS - 1) / NORM_Q8_WARPS);
    wick_launch(rmsnorm_q8_kernel, grid, NORM_Q8_WARPS * 32, 0, x, w, eps, cols, out, xq,
                                                                    xd);
    return (int)cudaGetLastError();
}

extern "C" int wick_rmsnorm(const float *x, const float *w, float eps, int rows, int cols,
                            float *out) {
    wick_launch(rmsnorm_kernel, rows, 256, 0, x, w, eps, cols, out);
    return (int)cudaGetLastError();
}

// One thread per rotated pair of q or k; pairs past the rotated dims are left alone.
__global__ void rope_kernel(float *q, float *k, const int *pos0p, int n_heads, int n_kv_heads,
                            int head_dim, int rope_dims, float theta) {
    pdl_start();
    int b = blockIdx.y;
    int pos = *pos0p + b;
    int q_pairs = n_heads * head_dim / 2, kv_pairs = n_kv_heads * head_dim / 2;
    int kv_dim = n_kv_heads * head_dim;
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < q_pairs + kv_pairs;
         p += gridDim.x * blockDim.x) {
        bool is_q = p < q_pairs;
        int pp = is_q ? p : p - q_pairs;
        int i = pp % (head_dim / 2);  // pair index inside the head
        if (2 * i >= rope_dims) continue;
        float *row = is_q ? q + (size_t)b * n_heads * head_dim : k + (size_t)b * kv_dim;
        float a = row[2 * pp], c = row[2 * pp + 1];
        rope_pair_rn(a, c, i, rope_dims, theta, pos);
        row[2 * pp] = a;
        row[2 * pp + 1] = c;
    }
}

extern "C" int wick_rope(float *q, float *k, const int32_t *pos0, int n, int n_heads,
                         int n_kv_heads, int head_dim, int rope_dims, float theta) {
    int pairs = (n_heads + n_kv_heads) * head_dim / 2;
    dim3 grid((pairs + 127) / 128, n), block(128);
    wick_launch(rope_kernel, grid, block, 0, q, k, pos0, n_heads, n_kv_heads, head_dim,
                                                 rope_dims, theta);
    return (int)cudaGetLastError();
}

__global__ void swiglu_kernel(float *g, const float *u, int n) {
    pdl_start();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float x = g[i];
        g[i] = x / (1.f + __expf(-x)) * u[i];
    }
}

extern "C" int wick_swiglu(float *g, const float *u, int n) {
    wick_launch(swiglu_kernel, (n + 255) / 256, 256, 0, g, u, n);
    return (int)cudaGetLastError();
}

// One warp per 32 values, which it also rounds to int8 for the down projection.
__global__ void swiglu_q8_kernel(float *g, const float *u, int n_blk, int8_t *xq, float *xd) {
    pdl_start();
    int blk = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (blk >= n_blk) return;
    size_t i = (size_t)blk * 32 + lane;
    float x = g[i];
    float v = x / (1.f + __expf(-x)) * u[i];
    g[i] = v;
    quantize_q8_lane(v, blk, lane, xq, xd);
}

extern "C" int wick_swiglu_q8(float *g, const float *u, int n, int8_t *xq, float *xd) {
    if (n % 32 != 0) return (int)cudaErrorInvalidValue;
    int n_blk = n / 32;
    wick_launch(swiglu_q8_kernel, (n_blk + 7) / 8, 256, 0, g, u, n_blk, xq, xd);
    return (int)cudaGetLastError();
}
