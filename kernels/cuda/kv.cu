// Writing rows into the KV cache, and re-rotating keys for a context shift. One warp per
// 32 values of a row, so a Q8_0 block is one warp.
#include <cuda_runtime.h>

#include "common.cuh"
#include "kv.cuh"
#include "stream.cuh"

template <int TYPE>
__global__ void kv_store_kernel(const float *k, const float *v, uint8_t *kc, uint8_t *vc,
                                const int32_t *pos0p, const int32_t *state, int kv_dim,
                                int capacity, int keep) {
    pdl_start();
    int b = blockIdx.y;
    int slot = kv_slot(*pos0p + b, capacity, keep, state[0]);
    size_t rb = kv_row_bytes(TYPE, kv_dim);
    int e = blockIdx.x * 32 + threadIdx.x;
    bool valid = e < kv_dim;
    size_t src = (size_t)b * kv_dim + e;
    kv_put<TYPE>(kc + slot * rb, e, valid ? k[src] : 0.f, valid);
    kv_put<TYPE>(vc + slot * rb, e, valid ? v[src] : 0.f, valid);
}

extern "C" int wick_kv_store(int type, const float *k, const float *v, void *kc, void *vc,
                             const int32_t *pos0, const int32_t *state, int n, int kv_dim,
                             int capacity, int keep) {
    if (n <= 0 || (type == T_Q8_0 && kv_dim % 32 != 0) || capacity <= keep)
        return (int)cudaErrorInvalidValue;
    dim3 grid((kv_dim + 31) / 32, n), block(32);
    if (type == T_Q8_0)
        wick_launch(kv_store_kernel<T_Q8_0>, grid, block, 0,
            k, v, (uint8_t *)kc, (uint8_t *)vc, pos0, state, kv_dim, capacity, keep);
    else if (type == T_F16)
        wick_launch(kv_store_kernel<T_F16>, grid, block, 0,
            k, v, (uint8_t *)kc, (uint8_t *)vc, pos0, state, kv_dim, capacity, keep);
    else
        return (int)cudaErrorInvalidValue;
    return (int)cudaGetLastError();
}

// Rotates the stored keys of positions p0.. by `by` positions (RoPE pairs are adjacent
// values, so each lane swaps with its neighbour), with the layout before the shift.
template <int TYPE>
__global__ void kv_shift_kernel(uint8_t *kc, int p0, int kv_dim, int head_dim, int rope_dims,
                                float theta, float by, int capacity, int keep, int offset) {
    pdl_start();
    int slot = kv_slot(p0 + blockIdx.y, capacity, keep, offset);
    uint8_t *row = kc + slot * kv_row_bytes(TYPE, kv_dim);
    int e = blockIdx.x * 32 + threadIdx.x;
    bool valid = e < kv_dim;
    float x = valid ? kv_at<TYPE>(row, e) : 0.f;
    float other = __shfl_xor_sync(0xffffffff, x, 1);
    int i = (e % head_dim) / 2;
    if (valid && 2 * i < rope_dims) {
        // Same formula as the CPU (powf of theta, then the angle), so both round alike.
        float f = powf(theta, -2.0f * i / rope_dims);
        float s, c;
        sincosf(by * f, &s, &c);
        x = e % 2 == 0 ? x * c - other * s : other * s + x * c;
    }
    kv_put<TYPE>(row, e, x, valid);
}

extern "C" int wick_kv_shift(int type, void *kc, int p0, int count, int kv_dim, int head_dim,
                             int rope_dims, float theta, float by, int capacity, int keep,
                             int offset) {
    if (count <= 0) return 0;
    if (kv_dim % 32 != 0 || head_dim % 2 != 0 || capacity <= keep)
        return (int)cudaErrorInvalidValue;
    dim3 grid(kv_dim / 32, count), block(32);
    if (type == T_Q8_0)
        wick_launch(kv_shift_kernel<T_Q8_0>, grid, block, 0,
            (uint8_t *)kc, p0, kv_dim, head_dim, rope_dims, theta, by, capacity, keep, offset);
    else if (type == T_F16)
        wick_launch(kv_shift_kernel<T_F16>, grid, block, 0,
            (uint8_t *)kc, p0, kv_dim, head_dim, rope_dims, theta, by, capacity, keep, offset);
    else
        return (int)cudaErrorInvalidValue;
    return (int)cudaGetLastError();
}
