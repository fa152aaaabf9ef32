// The KV cache layout on the device, the same as src/kv/layout.rs: the first `keep`
// positions have fixed slots, the rest rotate through the others displaced by an offset
// that grows on each context shift; a sliding-window layer (window > 0) keeps no sinks and
// reads only its last `window` positions at or above its floor. The offset and floor live
// in device memory (`state`), so a recorded decode graph sees them change.
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

#include "common.cuh"

// Only the types a KV cache can have.
__host__ __device__ inline size_t kv_row_bytes(int type, int kv_dim) {
    return type == T_Q8_0 ? (size_t)kv_dim / 32 * 34 : (size_t)kv_dim * 2;
}

__device__ inline int kv_slot(int p, int capacity, int keep, int offset) {
    return p < keep ? p : keep + (int)(((long long)(p - keep) + offset) % (capacity - keep));
}

// Value e of a stored row.
template <int TYPE>
__device__ inline float kv_at(const uint8_t *row, int e) {
    if constexpr (TYPE == T_Q8_0) {
        const uint8_t *blk = row + (e / 32) * 34;
        return __half2float(*(const __half *)blk) * (float)(int8_t)blk[2 + e % 32];
    } else {
        return __half2float(((const __half *)row)[e]);
    }
}

// Stores value e = 32 * k + lane of a row, called by all 32 lanes of a warp together (a
// Q8_0 block's scale comes from all of its values). Rounds as src/quant/legacy.rs does:
// d = max|x| / 127, q = round-half-even(x / d).
template <int TYPE>
__device__ inline void kv_put(uint8_t *row, int e, float x, bool valid) {
    if constexpr (TYPE == T_Q8_0) {
        float amax = warp_max(valid ? fabsf(x) : 0.f);
        float d = amax / 127.f;
        float id = d != 0.f ? 1.f / d : 0.f;
        uint8_t *blk = row + (e / 32) * 34;
        if (valid) {
            if (e % 32 == 0) *(__half *)blk = __float2half(d);
            blk[2 + e % 32] = (uint8_t)(int8_t)rintf(x * id);
        }
    } else {
        if (valid) ((__half *)row)[e] = __float2half(x);
    }
}
