// A weight row's step as the streaming matrix-vector kernel (matvec_q8.cu) holds it in
// shared memory, and the decoding of one 32-value unit from there.
#pragma once

#include <cuda_runtime.h>

#include "common.cuh"
#include "q8_unit.cuh"

template <int TYPE>
__host__ __device__ constexpr int ms_units() {  // units per step
    return TYPE == T_Q6_K ? 64 : 32;
}
template <int TYPE>
__host__ __device__ constexpr int ms_bytes() {  // bytes per step, a multiple of 16
    return TYPE == T_Q4_0 ? 576 : TYPE == T_Q4_1 ? 640 : TYPE == T_Q5_0 ? 704
         : TYPE == T_Q5_1 ? 768 : TYPE == T_Q8_0 ? 1088 : TYPE == T_Q4_K ? 576
         : TYPE == T_Q5_K ? 704 : 1680;
}
// A row's slot in the ring: one step plus a word that decoding may read past its end.
template <int TYPE>
__host__ __device__ constexpr int ms_stride() {
    return ms_bytes<TYPE>() + 16;
}

// N words at byte `off` (2-byte aligned) of a 4-byte-aligned slot s in shared memory, by
// N + 1 aligned loads and funnel shifts (one 32-bit load instead of two 16-bit ones per
// word). The alignment is taken from off alone: a lane's unit, and so off, is the same
// in every ring step, so its arithmetic stays out of the step loop.
template <int N>
__device__ inline void smem_words(const uint8_t *s, int off, uint32_t *out) {
    const uint32_t *a = reinterpret_cast<const uint32_t *>(s) + (off >> 2);
    int sh = 8 * (off & 3);
    uint32_t prev = a[0];
#pragma unroll
    for (int i = 0; i < N; i++) {
        uint32_t next = a[i + 1];
        out[i] = __funnelshift_r(prev, next, sh);
        prev = next;
    }
}

// Bytes v - bias of bytes v < 2 * bias, bias a power of two up to 0x40 in each byte: two
// integer instructions where __vsubss4 is emulated with several (the same bytes, since
// nothing saturates). v + (0x80 - bias) stays below 0x100 in every byte, so no carry
// crosses bytes, and flipping bit 7 subtracts 0x80 modulo 256.
__device__ inline int sub_bias(uint32_t v, uint32_t bias) {
    return (int)((v + (0x80808080u - bias)) ^ 0x80808080u);
}

// What smem_unit leaves added to every weight: Q4_0's nibbles stay unsigned (0..15), and
// unit_dot subtracts 8 times the activations' sum, the same integer as the signed product:
// two instructions a word saved (16 a unit and row) for one a unit and row. Fewer
// instructions per byte gained little on their own (docs/PERF.md, session 21).
template <int TYPE>
__host__ __device__ constexpr int smem_offset() {
    return TYPE == T_Q4_0 ? 8 : 0;
}

// Unit ul of a step held in shared memory at s (16-byte aligned): load_unit's result, but
// for the offset smem_offset leaves in every weight.
template <int TYPE>
__device__ inline void smem_unit(const uint8_t *s, int ul, Unit &q) {
    if constexpr (TYPE == T_Q4_0) {
        const uint8_t *b = s + 18 * ul;
        uint32_t v[4];
        smem_words<4>(s, 18 * ul + 2, v);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            q.w[i] = (int)(v[i] & 0x0f0f0f0f);
            q.w[4 + i] = (int)((v[i] >> 4) & 0x0f0f0f0f);
        }
        q.d0 = q.d1 = f16_at(b);
        q.m = 0.f;
    } else if constexpr (TYPE == T_Q8_0) {
        const uint8_t *b = s + 34 * ul;
        uint32_t v[8];
        smem_words<8>(s, 34 * ul + 2, v);
#pragma unroll
        for (int i = 0; i < 8; i++) q.w[i] = (int)v[i];
        q.d0 = q.d1 = f16_at(b);
        q.m = 0.f;
    } else if constexpr (TYPE == T_Q6_K) {
        int off = (ul / 8) * 210;
        const uint8_t *b = s + off;
        int p = ul % 8, half = p / 4, qr = p % 4;
        uint32_t l[8], h[8];
        smem_words<8>(s, off + 64 * half + 32 * (qr % 2), l);
        smem_words<8>(s, off + 128 + 32 * half, h);
        int sl = 4 * (qr / 2), sh = 2 * qr;
#pragma unroll
        for (int i = 0; i < 8; i++)
            q.w[i] = sub_bias(((l[i] >> sl) & 0x0f0f0f0f) | (((h[i] >> sh) & 0x03030303) << 4),
                              0x20202020);
        float d = f16_at(b + 208);
        q.d0 = d * (float)(int8_t)b[192 + 2 * p];
        q.d1 = d * (float)(int8_t)b[193 + 2 * p];
        q.m = 0.f;
    } else {
        // Q4_1 units (20 bytes) and Q4_K and Q5_K super-blocks (144, 176) are 4- and
        // 16-byte aligned; Q5_0 and Q5_1 units load by 2-byte halves.
        load_unit<TYPE>(s, ul, q);
    }
}

// The activation sum that a unit's minimum or smem_offset multiplies (0 for types with
// neither).
template <int TYPE>
__device__ inline int unit_act_sum(int4 xa, int4 xb) {
    if constexpr (!has_min<TYPE>() && smem_offset<TYPE>() == 0) return 0;
    int sa = __dp4a(0x01010101, xa.x, __dp4a(0x01010101, xa.y,
             __dp4a(0x01010101, xa.z, __dp4a(0x01010101, xa.w, 0))));
    int sb = __dp4a(0x01010101, xb.x, __dp4a(0x01010101, xb.y,
             __dp4a(0x01010101, xb.z, __dp4a(0x01010101, xb.w, 0))));
    return sa + sb;
}

// acc + xs * (k . x) for one weight unit from smem_unit and one activation unit (xa, xb
// its 32 int8 values, xs its scale, sx unit_act_sum). The one expression of both streaming
// kernels, so a row's sum has the same bits in either: a batch row as the row alone, the
// fused feed-forward kernel as the separate launches. Spelled out so that no instantiation
// contracts differently.
template <int TYPE>
__device__ inline float unit_dot(const Unit &k, int4 xa, int4 xb, float xs, int sx, float acc) {
    if constexpr (TYPE != T_Q6_K) {
        // One scale for all 32 values (d0 == d1): one integer sum, one conversion. Two
        // chains of four, not one of eight: a warp waits on each link's latency, and
        // decode has few warps an SM for the small products.
        int s0 = __dp4a(k.w[0], xa.x, __dp4a(k.w[1], xa.y, __dp4a(k.w[2], xa.z,
                 __dp4a(k.w[3], xa.w, -smem_offset<TYPE>() * sx))));
        int s1 = __dp4a(k.w[4], xb.x, __dp4a(k.w[5], xb.y, __dp4a(k.w[6], xb.z,
                 __dp4a(k.w[7], xb.w, 0))));
        float v = __fmul_rn(k.d0, (float)(s0 + s1));
        if constexpr (has_min<TYPE>()) v = __fmaf_rn(k.m, (float)sx, v);
        return __fmaf_rn(xs, v, acc);
    }
    int s0 = __dp4a(k.w[0], xa.x, __dp4a(k.w[1], xa.y,
             __dp4a(k.w[2], xa.z, __dp4a(k.w[3], xa.w, 0))));
    int s1 = __dp4a(k.w[4], xb.x, __dp4a(k.w[5], xb.y,
             __dp4a(k.w[6], xb.z, __dp4a(k.w[7], xb.w, 0))));
    float v = __fmaf_rn(k.d1, (float)s1, __fmul_rn(k.d0, (float)s0));
    if constexpr (has_min<TYPE>()) v = __fmaf_rn(k.m, (float)sx, v);
    return __fmaf_rn(xs, v, acc);
}
