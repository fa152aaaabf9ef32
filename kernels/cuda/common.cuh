// Block layouts of GGUF tensor types as the GPU reads them, and small shared helpers.
// Layouts match src/quant/*.rs (and ggml) byte for byte.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#include "wick_cuda.h"

enum WickType {
    T_F32 = 0,
    T_F16 = 1,
    T_Q4_0 = 2,
    T_Q4_1 = 3,
    T_Q8_0 = 8,
    T_BF16 = 30,
};

// Elements and bytes of one block of each supported type. Float types are read 32
// elements at a time, so a "block" of them is 32 values.
__host__ __device__ inline int block_elems(int) { return 32; }

__host__ __device__ inline int block_bytes(int type) {
    switch (type) {
        case T_F32: return 128;
        case T_F16: return 64;
        case T_BF16: return 64;
        case T_Q4_0: return 18;
        case T_Q4_1: return 20;
        case T_Q8_0: return 34;
        default: return 0;
    }
}

__host__ __device__ constexpr bool is_float_type(int type) {
    return type == T_F32 || type == T_F16 || type == T_BF16;
}

__host__ __device__ inline int elem_bytes(int type) { return type == T_F32 ? 4 : 2; }

// Bytes of one row of `cols` values. Float rows may end in a partial "block".
__host__ __device__ inline size_t row_bytes(int type, int cols) {
    return is_float_type(type) ? (size_t)cols * elem_bytes(type)
                               : (size_t)(cols / 32) * block_bytes(type);
}

// One value of a float-typed row.
template <int TYPE>
__device__ inline float float_at(const uint8_t *row, int i) {
    if constexpr (TYPE == T_F32) return reinterpret_cast<const float *>(row)[i];
    else if constexpr (TYPE == T_F16) return __half2float(reinterpret_cast<const __half *>(row)[i]);
    else return __bfloat162float(reinterpret_cast<const __nv_bfloat16 *>(row)[i]);
}

__device__ inline float f16_at(const uint8_t *p) {
    return __half2float(*reinterpret_cast<const __half *>(p));
}

// Decodes the 32 values of block `blk` into v. Blocks sit at 2-byte aligned offsets
// (every block size is even), so 16-bit loads are always legal.
template <int TYPE>
__device__ inline void dequant_block(const uint8_t *row, int blk, float v[32]) {
    const uint8_t *b = row + (size_t)blk * block_bytes(TYPE);
    if constexpr (TYPE == T_F32) {
        const float4 *p = reinterpret_cast<const float4 *>(b);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            float4 x = p[i];
            v[4 * i] = x.x; v[4 * i + 1] = x.y; v[4 * i + 2] = x.z; v[4 * i + 3] = x.w;
        }
    } else if constexpr (TYPE == T_F16) {
        const __half2 *p = reinterpret_cast<const __half2 *>(b);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float2 x = __half22float2(p[i]);
            v[2 * i] = x.x; v[2 * i + 1] = x.y;
        }
    } else if constexpr (TYPE == T_BF16) {
        const __nv_bfloat162 *p = reinterpret_cast<const __nv_bfloat162 *>(b);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float2 x = __bfloat1622float2(p[i]);
            v[2 * i] = x.x; v[2 * i + 1] = x.y;
        }
    } else if constexpr (TYPE == T_Q4_0) {
        float d = f16_at(b);
        const uint16_t *q = reinterpret_cast<const uint16_t *>(b + 2);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            uint16_t w = q[i];
            v[2 * i] = ((w & 0xf) - 8) * d;
            v[2 * i + 16] = (((w >> 4) & 0xf) - 8) * d;
            v[2 * i + 1] = (((w >> 8) & 0xf) - 8) * d;
            v[2 * i + 17] = ((w >> 12) - 8) * d;
        }
    } else if constexpr (TYPE == T_Q4_1) {
        float d = f16_at(b), m = f16_at(b + 2);
        const uint32_t *q = reinterpret_cast<const uint32_t *>(b + 4);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint32_t w = q[i];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint32_t byte = (w >> (8 * j)) & 0xff;
                v[4 * i + j] = (byte & 0xf) * d + m;
                v[4 * i + j + 16] = (byte >> 4) * d + m;
            }
        }
    } else if constexpr (TYPE == T_Q8_0) {
        float d = f16_at(b);
        const uint16_t *q = reinterpret_cast<const uint16_t *>(b + 2);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            uint16_t w = q[i];
            v[2 * i] = (int8_t)(w & 0xff) * d;
            v[2 * i + 1] = (int8_t)(w >> 8) * d;
        }
    }
}

__device__ inline float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffff, x, o);
    return x;
}

__device__ inline float warp_max(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, o));
    return x;
}

// Dispatches a templated launch on a runtime type id; returns cudaErrorInvalidValue for
// a type with no kernels.
#define WICK_DISPATCH_TYPE(type, LAUNCH)                  \
    switch (type) {                                       \
        case T_F32: LAUNCH(T_F32); break;                 \
        case T_F16: LAUNCH(T_F16); break;                 \
        case T_BF16: LAUNCH(T_BF16); break;               \
        case T_Q4_0: LAUNCH(T_Q4_0); break;               \
        case T_Q4_1: LAUNCH(T_Q4_1); break;               \
        case T_Q8_0: LAUNCH(T_Q8_0); break;               \
        default: return (int)cudaErrorInvalidValue;       \
    }
