// Block layouts of GGUF tensor types as the GPU reads them, and small shared helpers.
// Layouts match src/quant/*.rs (and ggml) byte for byte.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "wick_cuda.h"

enum WickType {
    T_F32 = 0,
    T_F16 = 1,
    T_Q4_0 = 2,
    T_Q4_1 = 3,
    T_Q5_0 = 6,
    T_Q5_1 = 7,
    T_Q8_0 = 8,
    T_Q2_K = 10,
    T_Q3_K = 11,
    T_Q4_K = 12,
    T_Q5_K = 13,
    T_Q6_K = 14,
    T_BF16 = 30,
    // Not a ggml type: wick's fp8 KV cache (src/kv/fp8.rs), as src/kv/layout.rs numbers it.
    T_FP8 = 64,
};

__host__ __device__ constexpr bool is_kquant(int type) {
    return type == T_Q2_K || type == T_Q3_K || type == T_Q4_K || type == T_Q5_K ||
           type == T_Q6_K;
}

// Elements and bytes of one block of each supported type: a K-quant super-block holds
// 256 values. Float types are read 32 elements at a time, so a "block" of them is 32
// values. Kernels still work in 32-value units (see dequant_block); a row must be whole
// blocks.
__host__ __device__ constexpr int block_elems(int type) { return is_kquant(type) ? 256 : 32; }

__host__ __device__ inline int block_bytes(int type) {
    switch (type) {
        case T_F32: return 128;
        case T_F16: return 64;
        case T_BF16: return 64;
        case T_Q4_0: return 18;
        case T_Q4_1: return 20;
        case T_Q5_0: return 22;
        case T_Q5_1: return 24;
        case T_Q8_0: return 34;
        case T_Q2_K: return 84;
        case T_Q3_K: return 110;
        case T_Q4_K: return 144;
        case T_Q5_K: return 176;
        case T_Q6_K: return 210;
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
                               : (size_t)(cols / block_elems(type)) * block_bytes(type);
}

// One value of a float-typed row.
template <int TYPE>
__device__ inline float float_at(const uint8_t *row, int i) {
    if constexpr (TYPE == T_F32) return reinterpret_cast<const float *>(row)[i];
    else if constexpr (TYPE == T_F16) return __half2float(reinterpret_cast<const __half *>(row)[i]);
    else return __bfloat162float(reinterpret_cast<const __nv_bfloat16 *>(row)[i]);
}

#ifdef __CUDA_ARCH__
#define WICK_UNROLL _Pragma("unroll")
#else
#define WICK_UNROLL
#endif

__host__ __device__ inline float f16_at(const uint8_t *p) {
    return __half2float(*reinterpret_cast<const __half *>(p));
}

// The 6-bit scale and minimum of part p (0..8) of a Q4_K or Q5_K super-block, from its 12
// scale bytes `sc` (scale_min_k4 in src/quant/kquants/mod.rs).
__host__ __device__ inline void k4_scale_min(const uint8_t *sc, int p, int &scale, int &min) {
    if (p < 4) {
        scale = sc[p] & 63;
        min = sc[p + 4] & 63;
    } else {
        scale = (sc[p + 4] & 0xf) | ((sc[p - 4] >> 6) << 4);
        min = (sc[p + 4] >> 4) | ((sc[p] >> 6) << 4);
    }
}

__host__ __device__ inline uint32_t u16_at(const uint8_t *p) {
    return *reinterpret_cast<const uint16_t *>(p);
}

// Decodes the 32 values of unit `blk` of a row into v. For 32-value types a unit is a
// block; for K-quants it is part blk % 8 (values 32 * (blk % 8) ..) of super-block
// blk / 8, so every kernel can treat a row as cols / 32 units whatever the type.
//
// Blocks sit at 2-byte aligned offsets (every block size is even), so 16-bit loads are
// always legal. Wider loads are used only where the block size makes them so: Q4_1,
// Q5_1 and Q2_K blocks are multiples of 4 bytes, Q4_K and Q5_K of 16. Q5_0 (22), Q3_K
// (110) and Q6_K (210) get 16-bit loads only.
//
// __host__ too so that the decoders can be checked against the CPU on a machine
// without a GPU. The host compiler would warn at every `#pragma unroll`, hence
// WICK_UNROLL.
template <int TYPE>
__host__ __device__ inline void dequant_block(const uint8_t *row, int blk, float v[32]) {
    const uint8_t *b = is_kquant(TYPE) ? row + (size_t)(blk / 8) * block_bytes(TYPE)
                                       : row + (size_t)blk * block_bytes(TYPE);
    const int part = blk % 8;
    if constexpr (TYPE == T_F32) {
        const float4 *p = reinterpret_cast<const float4 *>(b);
        WICK_UNROLL
        for (int i = 0; i < 8; i++) {
            float4 x = p[i];
            v[4 * i] = x.x; v[4 * i + 1] = x.y; v[4 * i + 2] = x.z; v[4 * i + 3] = x.w;
        }
    } else if constexpr (TYPE == T_F16) {
        const __half2 *p = reinterpret_cast<const __half2 *>(b);
        WICK_UNROLL
        for (int i = 0; i < 16; i++) {
            float2 x = __half22float2(p[i]);
            v[2 * i] = x.x; v[2 * i + 1] = x.y;
        }
    } else if constexpr (TYPE == T_BF16) {
        const __nv_bfloat162 *p = reinterpret_cast<const __nv_bfloat162 *>(b);
        WICK_UNROLL
        for (int i = 0; i < 16; i++) {
            float2 x = __bfloat1622float2(p[i]);
            v[2 * i] = x.x; v[2 * i + 1] = x.y;
        }
    } else if constexpr (TYPE == T_Q4_0) {
        float d = f16_at(b);
        const uint16_t *q = reinterpret_cast<const uint16_t *>(b + 2);
        WICK_UNROLL
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
        WICK_UNROLL
        for (int i = 0; i < 4; i++) {
            uint32_t w = q[i];
            WICK_UNROLL
            for (int j = 0; j < 4; j++) {
                uint32_t byte = (w >> (8 * j)) & 0xff;
                v[4 * i + j] = (byte & 0xf) * d + m;
                v[4 * i + j + 16] = (byte >> 4) * d + m;
            }
        }
    } else if constexpr (TYPE == T_Q8_0) {
        float d = f16_at(b);
        const uint16_t *q = reinterpret_cast<const uint16_t *>(b + 2);
        WICK_UNROLL
        for (int i = 0; i < 16; i++) {
            uint16_t w = q[i];
            v[2 * i] = (int8_t)(w & 0xff) * d;
            v[2 * i + 1] = (int8_t)(w >> 8) * d;
        }
    } else if constexpr (TYPE == T_Q5_0) {
        // d, qh[4] (bit j: high bit of value j), qs[16] (value j low nibble of byte j,
        // value j + 16 high nibble).
        float d = f16_at(b);
        uint32_t qh = u16_at(b + 2) | (u16_at(b + 4) << 16);
        WICK_UNROLL
        for (int i = 0; i < 8; i++) {
            uint32_t w = u16_at(b + 6 + 2 * i);
            WICK_UNROLL
            for (int k = 0; k < 2; k++) {
                int j = 2 * i + k;
                uint32_t byte = (w >> (8 * k)) & 0xff;
                int lo = (byte & 0xf) | (((qh >> j) & 1) << 4);
                int hi = (byte >> 4) | (((qh >> (j + 16)) & 1) << 4);
                v[j] = (lo - 16) * d;
                v[j + 16] = (hi - 16) * d;
            }
        }
    } else if constexpr (TYPE == T_Q5_1) {
        // d, m, then Q5_0's qh and qs.
        float d = f16_at(b), m = f16_at(b + 2);
        uint32_t qh = *reinterpret_cast<const uint32_t *>(b + 4);
        const uint32_t *q = reinterpret_cast<const uint32_t *>(b + 8);
        WICK_UNROLL
        for (int i = 0; i < 4; i++) {
            uint32_t w = q[i];
            WICK_UNROLL
            for (int k = 0; k < 4; k++) {
                int j = 4 * i + k;
                uint32_t byte = (w >> (8 * k)) & 0xff;
                uint32_t lo = (byte & 0xf) | (((qh >> j) & 1) << 4);
                uint32_t hi = (byte >> 4) | (((qh >> (j + 16)) & 1) << 4);
                v[j] = lo * d + m;
                v[j + 16] = hi * d + m;
            }
        }
    } else if constexpr (TYPE == T_Q4_K || TYPE == T_Q5_K) {
        // d, dmin, scales[12], [Q5_K: qh[32]], qs[128]. Part p has one 6-bit scale and
        // minimum (scale_min_k4 in src/quant/kquants/mod.rs); its low nibbles are those of
        // qs bytes 32 * (p / 2) .. + 32, low or high half by p % 2; Q5_K's fifth bit of
        // value l is bit p of qh[l].
        float d = f16_at(b), dmin = f16_at(b + 2);
        const uint8_t *sc = b + 4;
        int s, mn;
        k4_scale_min(sc, part, s, mn);
        float d1 = d * s, m1 = dmin * mn;
        constexpr int QS = TYPE == T_Q4_K ? 16 : 48;
        const uint4 *q = reinterpret_cast<const uint4 *>(b + QS + 32 * (part / 2));
        const uint4 *h = reinterpret_cast<const uint4 *>(b + 16);
        const int shift = 4 * (part % 2);
        WICK_UNROLL
        for (int i = 0; i < 2; i++) {
            uint4 x = q[i];
            uint32_t qw[4] = {x.x, x.y, x.z, x.w}, hw[4];
            if constexpr (TYPE == T_Q5_K) {
                uint4 y = h[i];
                hw[0] = y.x; hw[1] = y.y; hw[2] = y.z; hw[3] = y.w;
            }
            WICK_UNROLL
            for (int j = 0; j < 16; j++) {
                uint32_t q4 = (qw[j / 4] >> (8 * (j % 4) + shift)) & 0xf;
                if constexpr (TYPE == T_Q5_K) q4 |= ((hw[j / 4] >> (8 * (j % 4) + part)) & 1) << 4;
                v[16 * i + j] = d1 * q4 - m1;
            }
        }
    } else if constexpr (TYPE == T_Q6_K) {
        // ql[128], qh[64], scales[16] (int8, one per 16 values), d. Part p = 4 * half +
        // quarter: value l's low nibble is in ql[64 * half + 32 * (quarter % 2) + l] at bit
        // 4 * (quarter / 2), its top two bits in qh[32 * half + l] at bit 2 * quarter.
        float d = f16_at(b + 208);
        const int half = part / 4, quarter = part % 4;
        const uint8_t *ql = b + 64 * half + 32 * (quarter % 2);
        const uint8_t *qh = b + 128 + 32 * half;
        const int sl = 4 * (quarter / 2), sh = 2 * quarter;
        uint32_t scw = u16_at(b + 192 + 2 * part);
        float dl[2] = {d * (float)(int8_t)(scw & 0xff), d * (float)(int8_t)(scw >> 8)};
        WICK_UNROLL
        for (int i = 0; i < 16; i++) {
            uint32_t lw = u16_at(ql + 2 * i), hw = u16_at(qh + 2 * i);
            WICK_UNROLL
            for (int k = 0; k < 2; k++) {
                int q = (int)(((lw >> (8 * k + sl)) & 0xf) | (((hw >> (8 * k + sh)) & 3) << 4));
                v[2 * i + k] = dl[i / 8] * (q - 32);
            }
        }
    } else if constexpr (TYPE == T_Q3_K) {
        // hmask[32], qs[64], scales[12], d. Value l of part p = 4 * half + quarter: low two
        // bits in qs[32 * half + l] at bit 2 * quarter; bit p of hmask[l] clear subtracts 4.
        // Scale j (one per 16 values, j = 2 * p + l / 16) is 6 bits: low nibble from byte j
        // (j < 8) or the high nibble of byte j - 8, top two bits at 2 * (j / 4) of byte
        // 8 + j % 4; it is stored biased by 32.
        float d = f16_at(b + 108);
        const int half = part / 4, quarter = part % 4;
        const uint8_t *hm = b;
        const uint8_t *qs = b + 32 + 32 * half;
        const uint8_t *sc = b + 96;
        float dl[2];
        WICK_UNROLL
        for (int k = 0; k < 2; k++) {
            int j = 2 * part + k;
            int lo = j < 8 ? sc[j] & 0xf : sc[j - 8] >> 4;
            int hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
            dl[k] = d * (float)((lo | (hi << 4)) - 32);
        }
        WICK_UNROLL
        for (int i = 0; i < 16; i++) {
            uint32_t qw = u16_at(qs + 2 * i), hw = u16_at(hm + 2 * i);
            WICK_UNROLL
            for (int k = 0; k < 2; k++) {
                int q = (int)((qw >> (8 * k + 2 * quarter)) & 3) -
                        (((hw >> (8 * k + part)) & 1) ? 0 : 4);
                v[2 * i + k] = dl[i / 8] * q;
            }
        }
    } else if constexpr (TYPE == T_Q2_K) {
        // scales[16] (one per 16 values: scale low nibble, minimum high nibble), qs[64],
        // d, dmin. Value l of part p = 4 * half + quarter is in qs[32 * half + l] at bit
        // 2 * quarter.
        float d = f16_at(b + 80), dmin = f16_at(b + 82);
        const int half = part / 4, quarter = part % 4;
        const uint32_t *q = reinterpret_cast<const uint32_t *>(b + 16 + 32 * half);
        uint32_t scw = u16_at(b + 2 * part);
        float dl[2], ml[2];
        WICK_UNROLL
        for (int k = 0; k < 2; k++) {
            uint32_t s = (scw >> (8 * k)) & 0xff;
            dl[k] = d * (float)(s & 0xf);
            ml[k] = dmin * (float)(s >> 4);
        }
        WICK_UNROLL
        for (int i = 0; i < 8; i++) {
            uint32_t w = q[i];
            WICK_UNROLL
            for (int k = 0; k < 4; k++)
                v[4 * i + k] = dl[i / 4] * ((w >> (8 * k + 2 * quarter)) & 3) - ml[i / 4];
        }
    }
}

// Streaming multiprocessors of the current device (100 if the query fails), for grids that
// must fill the GPU. Queried once.
inline int sm_count() {
    static int n = 0;
    if (n == 0) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
            n <= 0)
            n = 100;
    }
    return n;
}

// Shared memory a block may opt into (0 if the query fails): the 128-token tensor-core
// kernels' ~105-113 KiB fit sm_80 and sm_90, not sm_86 or sm_89 (99 KiB).
inline size_t smem_optin() {
    static int n = -1;
    if (n < 0) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
                cudaSuccess)
            n = 0;
    }
    return (size_t)n;
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

// 1 / rms(x) for a row of `cols` f32 values (a multiple of 4), summed by a whole block of
// WARPS warps in a fixed order, so every block that norms the row gets the same bits
// (rmsnorm_q8_kernel's blocks, and the fused feed-forward kernel's). Once per kernel: the
// partial sums' shared array is not guarded against a second call.
template <int WARPS>
__device__ inline float block_rms_scale(const float *xr, int cols, float eps) {
    __shared__ float partial[WARPS];
    const float4 *x4 = reinterpret_cast<const float4 *>(xr);
    float ss = 0.f;
    for (int j = threadIdx.x; j < cols / 4; j += blockDim.x) {
        float4 v = x4[j];
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    ss = warp_sum(ss);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int j = 0; j < WARPS; j++) total += partial[j];
    return rsqrtf(total / cols + eps);
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
        case T_Q5_0: LAUNCH(T_Q5_0); break;               \
        case T_Q5_1: LAUNCH(T_Q5_1); break;               \
        case T_Q8_0: LAUNCH(T_Q8_0); break;               \
        case T_Q2_K: LAUNCH(T_Q2_K); break;               \
        case T_Q3_K: LAUNCH(T_Q3_K); break;               \
        case T_Q4_K: LAUNCH(T_Q4_K); break;               \
        case T_Q5_K: LAUNCH(T_Q5_K); break;               \
        case T_Q6_K: LAUNCH(T_Q6_K); break;               \
        default: return (int)cudaErrorInvalidValue;       \
    }
