// Decoding a quarter of a 32-value unit, 8 values, so that four lanes share a unit and a
// warp's loads of weights and activations are contiguous.
#pragma once

#include "common.cuh"

// Values 8*part .. 8*part + 7 of 32-value unit `blk` of a row.
template <int TYPE>
__device__ inline void dequant8(const uint8_t *row, int blk, int part, float v[8]) {
    if constexpr (TYPE == T_F32) {
        const float4 *p = reinterpret_cast<const float4 *>(row) + (blk * 32 + part * 8) / 4;
        float4 a = p[0], b = p[1];
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
        v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else if constexpr (TYPE == T_F16 || TYPE == T_BF16) {
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = float_at<TYPE>(row, blk * 32 + part * 8 + i);
    } else if constexpr (TYPE == T_Q4_0) {
        // Low nibbles hold values 0..15, high nibbles 16..31.
        const uint8_t *b = row + (size_t)blk * 18;
        float d = f16_at(b);
        const uint16_t *q = reinterpret_cast<const uint16_t *>(b + 2 + (part & 1) * 8);
        int shift = (part >> 1) * 4;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint16_t w = q[i];
            v[2 * i] = (((w >> shift) & 0xf) - 8) * d;
            v[2 * i + 1] = (((w >> (8 + shift)) & 0xf) - 8) * d;
        }
    } else if constexpr (TYPE == T_Q4_1) {
        const uint8_t *b = row + (size_t)blk * 20;
        float d = f16_at(b), m = f16_at(b + 2);
        const uint32_t *q = reinterpret_cast<const uint32_t *>(b + 4 + (part & 1) * 8);
        int shift = (part >> 1) * 4;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            uint32_t w = q[i];
#pragma unroll
            for (int j = 0; j < 4; j++) v[4 * i + j] = ((w >> (8 * j + shift)) & 0xf) * d + m;
        }
    } else if constexpr (TYPE == T_Q8_0) {
        const uint8_t *b = row + (size_t)blk * 34;
        float d = f16_at(b);
        const uint16_t *q = reinterpret_cast<const uint16_t *>(b + 2 + part * 8);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint16_t w = q[i];
            v[2 * i] = (int8_t)(w & 0xff) * d;
            v[2 * i + 1] = (int8_t)(w >> 8) * d;
        }
    } else if constexpr (TYPE == T_Q4_K) {
        // Unit p = blk % 8 of a 144-byte super-block: one 6-bit scale and minimum, and the
        // low or high nibbles (by p % 2) of qs bytes 32 * (p / 2) ..; this quarter is 8 of
        // those bytes, 8-byte aligned.
        const uint8_t *b = row + (size_t)(blk / 8) * 144;
        int p = blk % 8;
        float d = f16_at(b), dmin = f16_at(b + 2);
        const uint8_t *sc = b + 4;
        int sv, mn;
        k4_scale_min(sc, p, sv, mn);
        float d1 = d * sv, m1 = dmin * mn;
        uint2 q = *reinterpret_cast<const uint2 *>(b + 16 + 32 * (p / 2) + 8 * part);
        int shift = 4 * (p % 2);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            v[i] = d1 * ((q.x >> (8 * i + shift)) & 0xf) - m1;
            v[4 + i] = d1 * ((q.y >> (8 * i + shift)) & 0xf) - m1;
        }
    } else if constexpr (TYPE == T_Q6_K) {
        // Unit p of a 210-byte super-block (ql[128], qh[64], scales[16], d): value l's low
        // nibble is in ql[64 * (p / 4) + 32 * (p % 2) + l] at bit 4 * ((p % 4) / 2), its top
        // two bits in qh[32 * (p / 4) + l] at bit 2 * (p % 4); one int8 scale per 16 values.
        const uint8_t *b = row + (size_t)(blk / 8) * 210;
        int p = blk % 8, half = p / 4, quarter = p % 4;
        float dl = f16_at(b + 208) * (float)(int8_t)b[192 + 2 * p + part / 2];
        const uint8_t *ql = b + 64 * half + 32 * (quarter % 2) + 8 * part;
        const uint8_t *qh = b + 128 + 32 * half + 8 * part;
        int sl = 4 * (quarter / 2), sh = 2 * quarter;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint32_t lw = u16_at(ql + 2 * i), hw = u16_at(qh + 2 * i);
#pragma unroll
            for (int k = 0; k < 2; k++) {
                int q = (int)(((lw >> (8 * k + sl)) & 0xf) | (((hw >> (8 * k + sh)) & 3) << 4));
                v[2 * i + k] = dl * (q - 32);
            }
        }
    } else {
        // Other types: decode the whole unit and keep this lane's quarter. Four times the
        // decode work, but the loads stay shared through L1.
        float all[32];
        dequant_block<TYPE>(row, blk, all);
        // Constant indices only, so `all` stays in registers.
#pragma unroll
        for (int i = 0; i < 8; i++)
            v[i] = part == 0 ? all[i] : part == 1 ? all[8 + i] : part == 2 ? all[16 + i] : all[24 + i];
    }
}
