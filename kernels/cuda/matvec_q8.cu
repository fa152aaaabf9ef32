// Matrix-vector products for decode and small batches, on 8-bit activations.
//
// Decode reads every weight byte once per token, so its speed is memory bandwidth. Two
// things keep the kernel at that limit: nothing but weights comes from DRAM (activations
// are rounded to int8 blocks once per call, four times smaller than f32, and read through
// L1), and no block ever waits at a barrier (no shared-memory staging): each warp owns one
// weight row and streams it with several loads in flight. Products use dp4a, four int8
// multiply-adds per instruction, as llama.cpp's CUDA and CPU paths do; activations are
// rounded exactly as the CPU's fast path rounds them to Q8_0 (scale amax / 127, stored as
// f16), so the two backends agree up to summation order.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common.cuh"
#include "quantize_q8.cuh"
#include "stream.cuh"
#include "wick_cuda.h"

constexpr int MV_WARPS = 4;  // rows per block; small blocks keep every SM busy
constexpr int MV_NB = 8;     // activation rows per pass over the weights

// One warp per 32 values.
__global__ void quantize_q8_kernel(const float *__restrict__ x, int n_blocks,
                                   int8_t *__restrict__ xq, float *__restrict__ xd) {
    int blk = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (blk >= n_blocks) return;
    quantize_q8_lane(x[(size_t)blk * 32 + lane], blk, lane, xq, xd);
}

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
    } else if constexpr (TYPE == T_Q8_0) {
        const uint8_t *b = row + (size_t)u * 34;
#pragma unroll
        for (int i = 0; i < 8; i++) q.w[i] = load_u32_2(b + 2 + 4 * i);
        q.d0 = q.d1 = f16_at(b);
        q.m = 0.f;
    } else if constexpr (TYPE == T_Q4_K) {
        // Unit p of a 144-byte super-block: a 6-bit scale and minimum, and the low or high
        // nibbles of 32 bytes.
        const uint8_t *b = row + (size_t)(u / 8) * 144;
        int p = u % 8;
        const uint8_t *sc = b + 4;
        int sv, mn;
        if (p < 4) {
            sv = sc[p] & 63;
            mn = sc[p + 4] & 63;
        } else {
            sv = (sc[p + 4] & 0xf) | ((sc[p - 4] >> 6) << 4);
            mn = (sc[p + 4] >> 4) | ((sc[p] >> 6) << 4);
        }
        const uint4 *qs = reinterpret_cast<const uint4 *>(b + 16 + 32 * (p / 2));
        uint4 a = qs[0], c = qs[1];
        uint32_t words[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
        int shift = 4 * (p % 2);
#pragma unroll
        for (int i = 0; i < 8; i++) q.w[i] = (int)((words[i] >> shift) & 0x0f0f0f0f);
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

template <int TYPE>
__host__ __device__ constexpr bool has_min() {
    return TYPE == T_Q4_1 || TYPE == T_Q4_K;
}

// y[b][r] (+)= W[r] . x[b] for b < nb, with x as int8 blocks (xq, one scale per 32 in xd).
// One warp per weight row, each lane a whole 32-value unit (lane l takes units l, l + 32,
// ...), so a warp's loads cover 32 contiguous units and each lane has a whole unit's bytes
// in flight per step: decode is bound by how many bytes are in flight, and quarter units
// per lane left the memory system idle. No block ever waits at a barrier.
// Up to three weights that share the input (q/k/v, gate/up) go in one launch: the
// grid's blocks are dealt out to them in order, which saves launches and lets the small
// K and V products fill the GPU alongside Q.
struct MvTargets {
    const uint8_t *w[3];
    float *y[3];
    int rows[3];
    int first_block[4];
};

template <int TYPE, int NB, int UNR>
__global__ void __launch_bounds__(MV_WARPS * 32)
matvec_q8_kernel(MvTargets t, int cols, const int8_t *__restrict__ xq,
                 const float *__restrict__ xd, int nb, int accumulate) {
    int ti = blockIdx.x >= t.first_block[1] ? (blockIdx.x >= t.first_block[2] ? 2 : 1) : 0;
    const uint8_t *__restrict__ w = t.w[ti];
    float *__restrict__ y = t.y[ti];
    int rows = t.rows[ti];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int row = (blockIdx.x - t.first_block[ti]) * MV_WARPS + warp;
    if (row >= rows) return;
    int n_units = cols / 32;
    const uint8_t *wr = w + (size_t)row * row_bytes(TYPE, cols);
    for (int b0 = 0; b0 < nb; b0 += NB) {
        float acc[NB];
#pragma unroll
        for (int j = 0; j < NB; j++) acc[j] = 0.f;
#pragma unroll UNR
        for (int u = lane; u < n_units; u += 32) {
            Unit q;
            load_unit<TYPE>(wr, u, q);
#pragma unroll
            for (int j = 0; j < NB; j++) {
                if (b0 + j < nb) {
                    const int4 *xr =
                        reinterpret_cast<const int4 *>(xq + (size_t)(b0 + j) * cols + u * 32);
                    int4 xa = xr[0], xb = xr[1];
                    int s0 = __dp4a(q.w[0], xa.x, __dp4a(q.w[1], xa.y,
                             __dp4a(q.w[2], xa.z, __dp4a(q.w[3], xa.w, 0))));
                    int s1 = __dp4a(q.w[4], xb.x, __dp4a(q.w[5], xb.y,
                             __dp4a(q.w[6], xb.z, __dp4a(q.w[7], xb.w, 0))));
                    float v = q.d0 * (float)s0 + q.d1 * (float)s1;
                    if constexpr (has_min<TYPE>()) {
                        int sx = __dp4a(0x01010101, xa.x, __dp4a(0x01010101, xa.y,
                                 __dp4a(0x01010101, xa.z, __dp4a(0x01010101, xa.w, 0))));
                        sx = __dp4a(0x01010101, xb.x, __dp4a(0x01010101, xb.y,
                             __dp4a(0x01010101, xb.z, __dp4a(0x01010101, xb.w, sx))));
                        v += q.m * (float)sx;
                    }
                    acc[j] += xd[(size_t)(b0 + j) * n_units + u] * v;
                }
            }
        }
#pragma unroll
        for (int j = 0; j < NB; j++) {
            if (b0 + j < nb) {
                float s = warp_sum(acc[j]);
                if (lane == 0) {
                    float *o = y + (size_t)(b0 + j) * rows + row;
                    *o = accumulate ? *o + s : s;
                }
            }
        }
    }
}

extern "C" int wick_matvec_q8_supports(int type) {
    return type == T_Q4_0 || type == T_Q4_1 || type == T_Q8_0 || type == T_Q4_K ||
           type == T_Q6_K;
}

extern "C" int wick_quantize_q8(const float *x, int n, int8_t *xq, float *xd) {
    if (n % 32 != 0) return (int)cudaErrorInvalidValue;
    int n_blocks = n / 32;
    constexpr int per_block = 8;  // warps
    quantize_q8_kernel<<<(n_blocks + per_block - 1) / per_block, per_block * 32, 0,
                         wick_stream>>>(x, n_blocks, xq, xd);
    return (int)cudaGetLastError();
}

// Shape of the launch, for tuning runs of the self-test: 0 is the default.
static int mv_variant = 0;
extern "C" void wick_matvec_q8_variant(int v) { mv_variant = v; }

template <int TYPE, int NB, int UNR>
static void launch_mv(const MvTargets &t, int cols, const int8_t *xq, const float *xd, int nb,
                      int accumulate) {
    int n = t.first_block[3];
    matvec_q8_kernel<TYPE, NB, UNR><<<n, MV_WARPS * 32, 0, wick_stream>>>(t, cols, xq, xd, nb,
                                                                          accumulate);
}

template <int TYPE, int NB>
static void launch_shape(const MvTargets &t, int cols, const int8_t *xq, const float *xd, int nb,
                         int accumulate) {
    switch (mv_variant) {
        // Unrolling the unit loop further measured slower on an H200 (PERF.md).
        case 1: launch_mv<TYPE, NB, 2>(t, cols, xq, xd, nb, accumulate); break;
        case 2: launch_mv<TYPE, NB, 4>(t, cols, xq, xd, nb, accumulate); break;
        default: launch_mv<TYPE, NB, 1>(t, cols, xq, xd, nb, accumulate); break;
    }
}

template <int TYPE>
static void launch_type(const MvTargets &t, int cols, const int8_t *xq, const float *xd, int nb,
                        int accumulate) {
    if (nb == 1) launch_shape<TYPE, 1>(t, cols, xq, xd, nb, accumulate);
    else if (nb == 2) launch_shape<TYPE, 2>(t, cols, xq, xd, nb, accumulate);
    else if (nb <= 4) launch_shape<TYPE, 4>(t, cols, xq, xd, nb, accumulate);
    else launch_shape<TYPE, MV_NB>(t, cols, xq, xd, nb, accumulate);
}

extern "C" int wick_matvec_q8(int type, const wick_mv_target *targets, int n_targets, int cols,
                              const int8_t *xq, const float *xd, int nb, int accumulate) {
    if (!wick_matvec_q8_supports(type) || cols % block_elems(type) != 0 || n_targets < 1 ||
        n_targets > 3)
        return (int)cudaErrorInvalidValue;
    MvTargets t = {};
    for (int i = 0; i < 3; i++) {
        const wick_mv_target &g = targets[i < n_targets ? i : n_targets - 1];
        t.w[i] = (const uint8_t *)g.w;
        t.y[i] = g.y;
        t.rows[i] = i < n_targets ? g.rows : 0;
        t.first_block[i + 1] = t.first_block[i] + (t.rows[i] + MV_WARPS - 1) / MV_WARPS;
    }
    switch (type) {
        case T_Q4_0: launch_type<T_Q4_0>(t, cols, xq, xd, nb, accumulate); break;
        case T_Q4_1: launch_type<T_Q4_1>(t, cols, xq, xd, nb, accumulate); break;
        case T_Q8_0: launch_type<T_Q8_0>(t, cols, xq, xd, nb, accumulate); break;
        case T_Q4_K: launch_type<T_Q4_K>(t, cols, xq, xd, nb, accumulate); break;
        case T_Q6_K: launch_type<T_Q6_K>(t, cols, xq, xd, nb, accumulate); break;
        default: return (int)cudaErrorInvalidValue;
    }
    return (int)cudaGetLastError();
}
