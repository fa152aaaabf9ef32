// The KV cache layout on the device, the same as src/kv/layout.rs: the first `keep`
// positions have fixed slots, the rest rotate through the others displaced by an offset
// that grows on each context shift; a sliding-window layer (window > 0) keeps no sinks and
// reads only its last `window` positions at or above its floor. The offset and floor live
// in device memory (`state`), so a recorded decode graph sees them change.
//
// Rows are f16, Q8_0 (Hadamard-rotated, src/kv/rotate.rs) or fp8 (a power-of-two f32
// scale, then one e4m3 byte per value, src/kv/fp8.rs).
#pragma once

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

#include "common.cuh"

// Only the types a KV cache can have.
__host__ __device__ inline size_t kv_row_bytes(int type, int kv_dim) {
    return type == T_Q8_0  ? (size_t)kv_dim / 32 * 34
           : type == T_FP8 ? 4 + (size_t)kv_dim
                           : (size_t)kv_dim * 2;
}

// The live positions of a query at p (src/kv/layout.rs, `live`): sinks 0..ns, then lo..=p.
// A sliding-window layer (window > 0) keeps no sinks and nothing below its floor.
__device__ inline void kv_live(int p, int capacity, int keep, int window, int floor, int &ns,
                               int &lo) {
    if (window > 0) {
        ns = 0;
        lo = max(max(p + 1 - window, 0), floor);
    } else {
        ns = min(keep, p + 1);
        lo = max(ns, p + 1 - (capacity - keep));
    }
}

// offset is the ring's rotation, in [0, capacity - keep) (src/kv/layout.rs), so the sum
// fits 32 unsigned bits: a 64-bit remainder is a long software division, and single-row
// attention computes one per cached position.
__device__ inline int kv_slot(int p, int capacity, int keep, int offset) {
    return p < keep ? p
                    : keep + (int)(((unsigned)(p - keep) + (unsigned)offset) %
                                   (unsigned)(capacity - keep));
}

// The chunk rows are Hadamard-rotated in (src/kv/rotate.rs, `chunk`): the largest power
// of two dividing head_dim, at most 32, for Q8_0; 1 (none) otherwise.
__host__ __device__ inline int kv_rot_chunk(int type, int head_dim) {
    if (type != T_Q8_0 || head_dim <= 0) return 1;
    int low = head_dim & -head_dim;
    return low < 32 ? low : 32;
}

// The unnormalized Walsh-Hadamard transform of the n-chunks of a warp's 32 values, lane i
// holding value i (n a power of two up to 32, the same in every lane; all lanes call it).
// The very additions of src/kv/rotate.rs's `hadamard`, in the same order: at stage m the
// lane with bit m clear keeps a + b, its partner a - b.
__device__ inline float kv_hadamard(float x, int lane, int n) {
    for (int m = 1; m < n; m *= 2) {
        float other = __shfl_xor_sync(0xffffffff, x, m);
        x = (lane & m) ? other - x : x + other;
    }
    return x;
}

// RoPE of the pair (a, c) = values 2i, 2i + 1 of a head at position pos, with the CPU's
// arithmetic (src/backend/cpu/ops.rs): each product and sum rounded on its own, so that no
// kernel's compilation contracts them differently and every path rotates alike.
// In two halves for kernels that share one pair's angle among threads: the angle, then the
// rotation by it.
__device__ inline void rope_angle(int i, int rope_dims, float theta, int pos, float &s,
                                  float &co) {
    // The first pair's exponent is -0 / rope_dims, and a zero dividend sends a whole warp
    // into the division's slow path: a call that misses the instruction cache, on decode
    // attention's critical path (ncu, session 22). theta^0 is 1 either way.
    float f = i == 0 ? 1.f : powf(theta, -2.0f * i / rope_dims);
    sincosf(pos * f, &s, &co);
}
__device__ inline void rope_rotate(float &a, float &c, float s, float co) {
    float x = a, y = c;
    a = __fsub_rn(__fmul_rn(x, co), __fmul_rn(y, s));
    c = __fadd_rn(__fmul_rn(x, s), __fmul_rn(y, co));
}
__device__ inline void rope_pair_rn(float &a, float &c, int i, int rope_dims, float theta,
                                    int pos) {
    if (2 * i >= rope_dims) return;
    float s, co;
    rope_angle(i, rope_dims, theta, pos, s, co);
    rope_rotate(a, c, s, co);
}

// An e4m3 byte as f32 (exact).
__device__ inline float fp8_to_float(uint8_t b) {
    __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)b, __NV_E4M3);
    return __half2float(__half(h));
}

// f32 to e4m3, rounded to nearest even, saturating (src/kv/fp8.rs, `encode`).
__device__ inline uint8_t float_to_fp8(float x) {
    return (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}

// The scale of an fp8 row whose largest magnitude is amax, as f32 bits: 2^(E - 7) for amax
// in [2^E, 2^(E+1)), at least 2^-126 (src/kv/fp8.rs, `scale_bits`).
__device__ inline uint32_t fp8_scale_bits(float amax) {
    int e = (int)((__float_as_uint(amax) >> 23) & 0xff) - 7;
    return (uint32_t)(e < 1 ? 1 : e) << 23;
}

// Its inverse, also a power of two.
__device__ inline float fp8_inv_scale(uint32_t bits) {
    return __uint_as_float((254u - (bits >> 23)) << 23);
}

// Value e of a stored row.
template <int TYPE>
__device__ inline float kv_at(const uint8_t *row, int e) {
    if constexpr (TYPE == T_Q8_0) {
        const uint8_t *blk = row + (e / 32) * 34;
        return __half2float(*(const __half *)blk) * (float)(int8_t)blk[2 + e % 32];
    } else if constexpr (TYPE == T_FP8) {
        return fp8_to_float(row[4 + e]) * *(const float *)row;
    } else {
        return __half2float(((const __half *)row)[e]);
    }
}

// Stores value e = 32 * k + lane of a row, called by all 32 lanes of a warp together (a
// Q8_0 block's scale comes from all of its values). Rounds as src/quant/legacy.rs does:
// d = max|x| / 127, q = round-half-even(x / d). Not for fp8, whose scale spans the row
// (kv.cu has its own kernels for it).
template <int TYPE>
__device__ inline void kv_put(uint8_t *row, int e, float x, bool valid) {
    static_assert(TYPE != T_FP8, "fp8 rows are written by a whole block");
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
