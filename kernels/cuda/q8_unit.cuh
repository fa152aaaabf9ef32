// One 32-value unit of a weight row as int8 words plus scales: the shared decoder of the
// int8-activation kernels (matvec_q8.cu for decode, gemm_q8.cu for prefill). `row` may
// point to global or shared memory.
#pragma once

#include "common.cuh"

__device__ inline int load_u32_2(const uint8_t *p) {
    // Two-byte aligned: GGUF blocks of 18, 34 and 210 bytes leave wider loads misaligned.
    const uint16_t *h = reinterpret_cast<const uint16_t *>(p);
    return (int)((uint32_t)h[0] | ((uint32_t)h[1] << 16));
}

// One lane's 32-value unit: 8 words of 4 int8 weights, word k pairing with activations
// 4k..4k+3; scales for the unit's first and second 16 values (equal except in Q6_K), and
// the weight offset per value (`m`, multiplied by the activation sum; 0 where none).
struct Unit {
    int w[8];
    float d0, d1, m;
};

template <int TYPE>
__device__ inline void load_unit(const uint8_t *row, int u, Unit &q) {
    if constexpr (TYPE == T_Q4_0 || TYPE == T_Q4_1) {
        // Byte i holds value i (low nibble) and value i + 16 (high nibble).
        constexpr int BYTES = TYPE == T_Q4_0 ? 18 : 20, QS = TYPE == T_Q4_0 ? 2 : 4;
        const uint8_t *b = row + (size_t)u * BYTES;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int v = TYPE == T_Q4_0 ? load_u32_2(b + QS + 4 * i)
                                   : *reinterpret_cast<const int *>(b + QS + 4 * i);
            int lo = v & 0x0f0f0f0f, hi = (v >> 4) & 0x0f0f0f0f;
            q.w[i] = TYPE == T_Q4_0 ? __vsubss4(lo, 0x08080808) : lo;
            q.w[4 + i] = TYPE == T_Q4_0 ? __vsubss4(hi, 0x08080808) : hi;
        }
        q.d0 = q.d1 = f16_at(b);
        q.m = TYPE == T_Q4_0 ? 0.f : f16_at(b + 2);
    } else if constexpr (TYPE == T_Q5_0 || TYPE == T_Q5_1) {
        // d, [Q5_1: m], qh (bit j: value j's fifth bit), then qs as Q4_0's; Q5_0 values are
        // offset by 16. Blocks of 22 bytes are only 2-byte aligned.
        constexpr int BYTES = TYPE == T_Q5_0 ? 22 : 24, QH = TYPE == T_Q5_0 ? 2 : 4;
        const uint8_t *b = row + (size_t)u * BYTES;
        const uint32_t qh = (uint32_t)load_u32_2(b + QH);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int v = load_u32_2(b + QH + 4 + 4 * i);
            // Four bits of qh to bit 4 of four bytes (the shifted copies do not overlap).
            int h_lo = (int)((((qh >> (4 * i)) & 0xf) * 0x00204081u & 0x01010101u) << 4);
            int h_hi = (int)((((qh >> (16 + 4 * i)) & 0xf) * 0x00204081u & 0x01010101u) << 4);
            int lo = (v & 0x0f0f0f0f) | h_lo, hi = ((v >> 4) & 0x0f0f0f0f) | h_hi;
            q.w[i] = TYPE == T_Q5_0 ? __vsubss4(lo, 0x10101010) : lo;
            q.w[4 + i] = TYPE == T_Q5_0 ? __vsubss4(hi, 0x10101010) : hi;
        }
        q.d0 = q.d1 = f16_at(b);
        q.m = TYPE == T_Q5_0 ? 0.f : f16_at(b + 2);
    } else if constexpr (TYPE == T_Q8_0) {
        const uint8_t *b = row + (size_t)u * 34;
#pragma unroll
        for (int i = 0; i < 8; i++) q.w[i] = load_u32_2(b + 2 + 4 * i);
        q.d0 = q.d1 = f16_at(b);
        q.m = 0.f;
    } else if constexpr (TYPE == T_Q4_K || TYPE == T_Q5_K) {
        // Unit p of a 144-byte (Q4_K) or 176-byte (Q5_K) super-block: a 6-bit scale and
        // minimum, the low or high nibbles of 32 bytes of qs, and for Q5_K the fifth bit of
        // value l in bit p of qh[l] (qh: 32 bytes after the scales, before qs).
        constexpr int BYTES = TYPE == T_Q4_K ? 144 : 176, QS = TYPE == T_Q4_K ? 16 : 48;
        const uint8_t *b = row + (size_t)(u / 8) * BYTES;
        int p = u % 8;
        const uint8_t *sc = b + 4;
        int sv, mn;
        k4_scale_min(sc, p, sv, mn);
        const uint4 *qs = reinterpret_cast<const uint4 *>(b + QS + 32 * (p / 2));
        uint4 a = qs[0], c = qs[1];
        uint32_t words[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
        int shift = 4 * (p % 2);
#pragma unroll
        for (int i = 0; i < 8; i++) q.w[i] = (int)((words[i] >> shift) & 0x0f0f0f0f);
        if constexpr (TYPE == T_Q5_K) {
            const uint4 *qh = reinterpret_cast<const uint4 *>(b + 16);
            uint4 e = qh[0], f = qh[1];
            uint32_t hw[8] = {e.x, e.y, e.z, e.w, f.x, f.y, f.z, f.w};
#pragma unroll
            for (int i = 0; i < 8; i++) q.w[i] |= (int)(((hw[i] >> p) & 0x01010101) << 4);
        }
        q.d0 = q.d1 = f16_at(b) * sv;
        q.m = -f16_at(b + 2) * mn;
    } else if constexpr (TYPE == T_Q6_K) {
        // Unit p of a 210-byte super-block: value l's low nibble in
        // ql[64 * (p / 4) + 32 * (p % 2) + l] at bit 4 * ((p % 4) / 2), its top two bits in
        // qh[32 * (p / 4) + l] at bit 2 * (p % 4); one int8 scale per 16 values.
        const uint8_t *b = row + (size_t)(u / 8) * 210;
        int p = u % 8, half = p / 4, qr = p % 4;
        const uint8_t *ql = b + 64 * half + 32 * (qr % 2);
        const uint8_t *qh = b + 128 + 32 * half;
        int sl = 4 * (qr / 2), sh = 2 * qr;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            uint32_t l = load_u32_2(ql + 4 * i), h = load_u32_2(qh + 4 * i);
            q.w[i] = __vsubss4((int)(((l >> sl) & 0x0f0f0f0f) | (((h >> sh) & 0x03030303) << 4)),
                               0x20202020);
        }
        float d = f16_at(b + 208);
        q.d0 = d * (float)(int8_t)b[192 + 2 * p];
        q.d1 = d * (float)(int8_t)b[193 + 2 * p];
        q.m = 0.f;
    }
}

// Up to three weights of one type over the same activations, run in one launch (q/k/v,
// gate/up): weight i owns the blocks first[i] <= b < first[i + 1] of the grid dimension
// its kernel deals out, so the small K and V products fill the GPU alongside Q.
struct WeightGroup {
    const uint8_t *w[3];
    float *y[3];
    int rows[3];
    int first[4];
};

// Entry i < 3 of an array inside a kernel parameter, by selects: indexing a parameter with
// a run-time value makes the compiler copy the whole struct to local memory in every
// thread first (the streaming matrix-vector kernel stored and reloaded 80 bytes of stack
// per thread; without them Q4_0 decode on an H100 went from 355 to 400 tok/s).
template <typename T>
__device__ inline T pick3(const T *a, int i) {
    return i == 2 ? a[2] : i == 1 ? a[1] : a[0];
}

template <int TYPE>
__host__ __device__ constexpr bool has_min() {
    return TYPE == T_Q4_1 || TYPE == T_Q5_1 || TYPE == T_Q4_K || TYPE == T_Q5_K;
}
