// Writing rows into the KV cache, and re-rotating keys for a context shift. f16 and Q8_0:
// one warp per 32 values of a row, so a Q8_0 block (and the Hadamard chunks of its keys and
// values, src/kv/rotate.rs) is one warp. fp8: one block per row, whose scale needs the whole
// row's largest value.
#include <cuda_runtime.h>

#include "common.cuh"
#include "kv.cuh"
#include "stream.cuh"

template <int TYPE>
__global__ void kv_store_kernel(const float *k, const float *v, uint8_t *kc, uint8_t *vc,
                                const int32_t *pos0p, const int32_t *state, int kv_dim,
                                int capacity, int keep, int rot) {
    pdl_start();
    int b = blockIdx.y;
    int slot = kv_slot(*pos0p + b, capacity, keep, state[0]);
    size_t rb = kv_row_bytes(TYPE, kv_dim);
    int e = blockIdx.x * 32 + threadIdx.x;
    bool valid = e < kv_dim;
    size_t src = (size_t)b * kv_dim + e;
    float kx = valid ? k[src] : 0.f, vx = valid ? v[src] : 0.f;
    // The cache holds H k / n and H v / n (src/kv/rotate.rs, `to_cache`); 1/n is exact.
    if (rot > 1) {
        kx = kv_hadamard(kx, threadIdx.x, rot) * (1.f / rot);
        vx = kv_hadamard(vx, threadIdx.x, rot) * (1.f / rot);
    }
    kv_put<TYPE>(kc + slot * rb, e, kx, valid);
    kv_put<TYPE>(vc + slot * rb, e, vx, valid);
}

// RoPE and the cache store in one launch (a decode step's layer pays one launch instead of
// two). A warp takes 32 consecutive values of one row of q, k or v: RoPE pairs are adjacent
// values, so a lane gets its partner by a shuffle; the arithmetic is rope_kernel's (and
// the CPU's), so the rotated q and k are the same bits as the two-launch path.
constexpr int ROPE_STORE_WARPS = 4;

template <int TYPE>
__global__ void __launch_bounds__(ROPE_STORE_WARPS * 32)
rope_store_kernel(float *q, float *k, const float *v, uint8_t *kc, uint8_t *vc,
                  const int32_t *pos0p, const int32_t *state, int q_dim, int kv_dim,
                  int head_dim, int rope_dims, float theta, int capacity, int keep, int rot) {
    pdl_start();
    int b = blockIdx.y, lane = threadIdx.x % 32;
    int chunk = blockIdx.x * ROPE_STORE_WARPS + threadIdx.x / 32;
    int q_chunks = (q_dim + 31) / 32, kv_chunks = (kv_dim + 31) / 32;
    if (chunk >= q_chunks + 2 * kv_chunks) return;  // whole warps leave together
    int pos = *pos0p + b;
    int part = chunk < q_chunks ? 0 : chunk < q_chunks + kv_chunks ? 1 : 2;
    int dim = part == 0 ? q_dim : kv_dim;
    int e = (chunk - (part == 0 ? 0 : part == 1 ? q_chunks : q_chunks + kv_chunks)) * 32 + lane;
    bool valid = e < dim;
    float *row = part == 0 ? q + (size_t)b * q_dim : k + (size_t)b * kv_dim;
    float x = valid ? (part == 2 ? v[(size_t)b * kv_dim + e] : row[e]) : 0.f;
    if (part < 2) {
        float other = __shfl_xor_sync(0xffffffff, x, 1);
        bool even = e % 2 == 0;
        float a = even ? x : other, c = even ? other : x;
        if (valid) rope_pair_rn(a, c, (e % head_dim) / 2, rope_dims, theta, pos);
        x = even ? a : c;
        if (valid) row[e] = x;
        if (part == 0) return;
    }
    // The cache holds H k / n and H v / n, as in kv_store_kernel.
    if (rot > 1) x = kv_hadamard(x, lane, rot) * (1.f / rot);
    int slot = kv_slot(pos, capacity, keep, state[0]);
    uint8_t *cache = (part == 1 ? kc : vc) + (size_t)slot * kv_row_bytes(TYPE, kv_dim);
    kv_put<TYPE>(cache, e, x, valid);
}

extern "C" int wick_rope_store(int type, float *q, float *k, const float *v, void *kc, void *vc,
                               const int32_t *pos0, const int32_t *state, int n, int n_heads,
                               int n_kv_heads, int head_dim, int rope_dims, float theta,
                               int capacity, int keep) {
    int q_dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim;
    if (n <= 0 || head_dim <= 0 || head_dim % 2 != 0 || capacity <= keep ||
        (type != T_F16 && type != T_Q8_0) || (type == T_Q8_0 && kv_dim % 32 != 0))
        return (int)cudaErrorInvalidValue;
    int chunks = (q_dim + 31) / 32 + 2 * ((kv_dim + 31) / 32);
    dim3 grid((chunks + ROPE_STORE_WARPS - 1) / ROPE_STORE_WARPS, n), block(ROPE_STORE_WARPS * 32);
    int rot = kv_rot_chunk(type, head_dim);
    if (type == T_Q8_0)
        wick_launch(rope_store_kernel<T_Q8_0>, grid, block, 0, q, k, v, (uint8_t *)kc,
                    (uint8_t *)vc, pos0, state, q_dim, kv_dim, head_dim, rope_dims, theta,
                    capacity, keep, rot);
    else
        wick_launch(rope_store_kernel<T_F16>, grid, block, 0, q, k, v, (uint8_t *)kc,
                    (uint8_t *)vc, pos0, state, q_dim, kv_dim, head_dim, rope_dims, theta,
                    capacity, keep, rot);
    return (int)cudaGetLastError();
}

constexpr int FP8_THREADS = 256;

// The largest of each thread's x over the block (every thread gets it).
__device__ float block_max(float x) {
    __shared__ float part[FP8_THREADS / 32];
    x = warp_max(x);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = x;
    __syncthreads();
    float m = 0.f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) m = fmaxf(m, part[w]);
    __syncthreads();
    return m;
}

// Row x (kv_dim values) to an fp8 row: scale, then bytes (src/kv/fp8.rs, `encode_row`).
__device__ void fp8_store_row(const float *x, uint8_t *row, int kv_dim) {
    float amax = 0.f;
    for (int e = threadIdx.x; e < kv_dim; e += blockDim.x) amax = fmaxf(amax, fabsf(x[e]));
    uint32_t bits = fp8_scale_bits(block_max(amax));
    float inv = fp8_inv_scale(bits);
    if (threadIdx.x == 0) *(uint32_t *)row = bits;
    for (int e = threadIdx.x; e < kv_dim; e += blockDim.x) row[4 + e] = float_to_fp8(x[e] * inv);
}

// One block per row of the batch.
__global__ void kv_store_fp8_kernel(const float *k, const float *v, uint8_t *kc, uint8_t *vc,
                                    const int32_t *pos0p, const int32_t *state, int kv_dim,
                                    int capacity, int keep) {
    pdl_start();
    int b = blockIdx.x;
    int slot = kv_slot(*pos0p + b, capacity, keep, state[0]);
    size_t at = (size_t)slot * kv_row_bytes(T_FP8, kv_dim);
    fp8_store_row(k + (size_t)b * kv_dim, kc + at, kv_dim);
    fp8_store_row(v + (size_t)b * kv_dim, vc + at, kv_dim);
}

extern "C" int wick_kv_store(int type, const float *k, const float *v, void *kc, void *vc,
                             const int32_t *pos0, const int32_t *state, int n, int kv_dim,
                             int head_dim, int capacity, int keep) {
    if (n <= 0 || (type == T_Q8_0 && kv_dim % 32 != 0) || (type == T_FP8 && kv_dim % 4 != 0) ||
        capacity <= keep || head_dim <= 0 || kv_dim % head_dim != 0)
        return (int)cudaErrorInvalidValue;
    if (type == T_FP8) {
        wick_launch(kv_store_fp8_kernel, n, FP8_THREADS, 0,
                    k, v, (uint8_t *)kc, (uint8_t *)vc, pos0, state, kv_dim, capacity, keep);
        return (int)cudaGetLastError();
    }
    dim3 grid((kv_dim + 31) / 32, n), block(32);
    int rot = kv_rot_chunk(type, head_dim);
    if (type == T_Q8_0)
        wick_launch(kv_store_kernel<T_Q8_0>, grid, block, 0,
                    k, v, (uint8_t *)kc, (uint8_t *)vc, pos0, state, kv_dim, capacity, keep, rot);
    else if (type == T_F16)
        wick_launch(kv_store_kernel<T_F16>, grid, block, 0,
                    k, v, (uint8_t *)kc, (uint8_t *)vc, pos0, state, kv_dim, capacity, keep, rot);
    else
        return (int)cudaErrorInvalidValue;
    return (int)cudaGetLastError();
}

// RoPE by `by` positions of the pair (a, b) = values e, e + 1 (e even) of a row: the
// CPU's formula (powf of theta, then the angle), so both round alike.
__device__ inline void rope_pair(float &a, float &b, int e, int head_dim, int rope_dims,
                                 float theta, float by) {
    int i = (e % head_dim) / 2;
    if (2 * i >= rope_dims) return;
    float f = powf(theta, -2.0f * i / rope_dims);
    float s, c;
    sincosf(by * f, &s, &c);
    float x = a, y = b;
    a = x * c - y * s;
    b = x * s + y * c;
}

// Rotates the stored keys of positions p0.. by `by` positions (RoPE pairs are adjacent
// values, so each lane swaps with its neighbour), with the layout before the shift. A
// rotated Q8_0 key is turned back (H (H k / n) = k), re-rotated, and turned again.
template <int TYPE>
__global__ void kv_shift_kernel(uint8_t *kc, int p0, int kv_dim, int head_dim, int rope_dims,
                                float theta, float by, int capacity, int keep, int offset,
                                int rot) {
    pdl_start();
    int slot = kv_slot(p0 + blockIdx.y, capacity, keep, offset);
    uint8_t *row = kc + slot * kv_row_bytes(TYPE, kv_dim);
    int e = blockIdx.x * 32 + threadIdx.x;
    bool valid = e < kv_dim;
    float x = valid ? kv_at<TYPE>(row, e) : 0.f;
    if (rot > 1) x = kv_hadamard(x, threadIdx.x, rot);
    float other = __shfl_xor_sync(0xffffffff, x, 1);
    int i = (e % head_dim) / 2;
    if (valid && 2 * i < rope_dims) {
        // Same formula as the CPU (powf of theta, then the angle), so both round alike.
        float f = powf(theta, -2.0f * i / rope_dims);
        float s, c;
        sincosf(by * f, &s, &c);
        x = e % 2 == 0 ? x * c - other * s : other * s + x * c;
    }
    if (rot > 1) x = kv_hadamard(x, threadIdx.x, rot) * (1.f / rot);
    kv_put<TYPE>(row, e, x, valid);
}

// The same for fp8, one block per position: every thread takes pairs, decodes and rotates
// them once to find the row's new largest value, then again to store them under the new
// scale (each thread rewrites only its own pairs, and the old scale was read before the
// first barrier).
__global__ void kv_shift_fp8_kernel(uint8_t *kc, int p0, int kv_dim, int head_dim,
                                    int rope_dims, float theta, float by, int capacity,
                                    int keep, int offset) {
    pdl_start();
    int slot = kv_slot(p0 + blockIdx.x, capacity, keep, offset);
    uint8_t *row = kc + (size_t)slot * kv_row_bytes(T_FP8, kv_dim);
    float scale = *(const float *)row;
    float amax = 0.f;
    for (int e = 2 * threadIdx.x; e < kv_dim; e += 2 * blockDim.x) {
        float a = fp8_to_float(row[4 + e]) * scale, b = fp8_to_float(row[5 + e]) * scale;
        rope_pair(a, b, e, head_dim, rope_dims, theta, by);
        amax = fmaxf(amax, fmaxf(fabsf(a), fabsf(b)));
    }
    uint32_t bits = fp8_scale_bits(block_max(amax));
    float inv = fp8_inv_scale(bits);
    for (int e = 2 * threadIdx.x; e < kv_dim; e += 2 * blockDim.x) {
        float a = fp8_to_float(row[4 + e]) * scale, b = fp8_to_float(row[5 + e]) * scale;
        rope_pair(a, b, e, head_dim, rope_dims, theta, by);
        row[4 + e] = float_to_fp8(a * inv);
        row[5 + e] = float_to_fp8(b * inv);
    }
    if (threadIdx.x == 0) *(uint32_t *)row = bits;
}

extern "C" int wick_kv_shift(int type, void *kc, int p0, int count, int kv_dim, int head_dim,
                             int rope_dims, float theta, float by, int capacity, int keep,
                             int offset) {
    if (count <= 0) return 0;
    if (kv_dim % (type == T_FP8 ? 4 : 32) != 0 || head_dim % 2 != 0 || capacity <= keep)
        return (int)cudaErrorInvalidValue;
    if (type == T_FP8) {
        wick_launch(kv_shift_fp8_kernel, count, FP8_THREADS, 0,
                    (uint8_t *)kc, p0, kv_dim, head_dim, rope_dims, theta, by, capacity, keep, offset);
        return (int)cudaGetLastError();
    }
    dim3 grid(kv_dim / 32, count), block(32);
    int rot = kv_rot_chunk(type, head_dim);
    if (type == T_Q8_0)
        wick_launch(kv_shift_kernel<T_Q8_0>, grid, block, 0,
                    (uint8_t *)kc, p0, kv_dim, head_dim, rope_dims, theta, by, capacity, keep, offset,
            rot);
    else if (type == T_F16)
        wick_launch(kv_shift_kernel<T_F16>, grid, block, 0,
                    (uint8_t *)kc, p0, kv_dim, head_dim, rope_dims, theta, by, capacity, keep, offset,
            rot);
    else
        return (int)cudaErrorInvalidValue;
    return (int)cudaGetLastError();
}
