// Matrix-matrix products for prefill batches above 64 tokens on f16 tensor cores.
//
// The int8 kernels of gemm_q8.cu multiply one 32-value unit at a time and scale each
// unit's integer sum by its weight and activation scales: three or more f32 instructions
// per product value per unit, which leaves the tensor cores idle most of the time (an
// H100 profile of the 128-token int8 kernel: 24 instructions per mma, the tensor pipe
// active 14 % of the time). Here the scales are applied before the tensor cores instead:
//   - activations are rounded to int8 as for the int8 kernels (wick_quantize_q8 and the
//     fused ops that write its format), then turned into f16 values q * d once per
//     product (wick_q8_to_f16), so the 8-bit rounding is the one the CPU's fast path and
//     the int8 kernels make, plus an f16 rounding of each product q * d;
//   - weights are decoded per block tile into f16 values d * q + m (one rounding each),
//     in shared memory, once for all 128 tokens of the tile;
//   - mma.sync m16n8k16 (f16 x f16 -> f32) then sums whole rows with no per-unit work.
// The tile is that of gemm_q8_wide2_kernel: BM = 64 rows by 128 tokens, four warps of 32
// rows by 64 tokens; raw weight bytes come by cp.async a stage (8 units, a K-quant
// super-block) at a time into the raw tile of gemm_raw.cuh; each stage is decoded and
// multiplied in two halves of 128 values, so the f16 tiles stay small enough for two blocks
// per SM. Per half-stage: decode into the f16 weight tile, barrier, start the copies of
// the next half's activations (double-buffered) and, after a stage's second half, the
// next stage's raw weights; multiply; wait; barrier.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>

#include "common.cuh"
#include "gemm_raw.cuh"
#include "mma_s8.cuh"
#include "q8_unit.cuh"
#include "stream.cuh"
#include "wick_cuda.h"

namespace {

constexpr int FBN = 128;         // tokens per block
constexpr int HK = 128;          // values per half-stage
constexpr int HSTRIDE = HK + 8;  // halves per row of the f16 tiles: the 16 spare bytes put
                                 // the 8 rows of one ldmatrix in distinct banks

template <int TYPE>
struct F16Smem {
    static constexpr int RAW =
        BM * (raw_stride<16>(TYPE) > raw_stride<4>(TYPE) ? raw_stride<16>(TYPE) : raw_stride<4>(TYPE));
    static constexpr int A = BM * HSTRIDE * 2;   // decoded weights of a half-stage
    static constexpr int B = FBN * HSTRIDE * 2;  // activations of a half-stage, one of two
    static constexpr int TOTAL = RAW + A + 2 * B;
    static_assert(RAW % 16 == 0 && A % 16 == 0, "16-byte alignment");
    // Two blocks per SM on sm_90 (228 KiB, 1 KiB of it reserved per block).
    static_assert(2 * (TOTAL + 1024) <= 228 * 1024, "two blocks per SM");
};

// Up to three weights in one launch (WeightGroup): weight i owns the row blocks
// first[i] <= blockIdx.y < first[i + 1] (first[n] and above: INT_MAX).

// NW warps: 4 of 32 rows by 64 tokens, or 8 of 32 by 32 (twice the warps per SM to hide
// latency with, at 128 registers per thread).
template <int TYPE, int V, int NW>
__global__ void __launch_bounds__(NW * 32, 2)
gemm_f16_kernel(const WeightGroup grp, int cols, const __half *__restrict__ xh, int nb,
                int accumulate, float *__restrict__ part, int n_slices) {
    pdl_start();
    // Selects rather than an indexed parameter array, which would go through local memory.
    const int by = blockIdx.y;
    const int gi = by >= grp.first[2] ? 2 : by >= grp.first[1] ? 1 : 0;
    const uint8_t *__restrict__ w = gi == 2 ? grp.w[2] : gi == 1 ? grp.w[1] : grp.w[0];
    float *__restrict__ y = gi == 2 ? grp.y[2] : gi == 1 ? grp.y[1] : grp.y[0];
    const int rows = gi == 2 ? grp.rows[2] : gi == 1 ? grp.rows[1] : grp.rows[0];
    const int r0 = (by - (gi == 2 ? grp.first[2] : gi == 1 ? grp.first[1] : 0)) * BM;
    static_assert(V == 16 || V == 4, "cp.async moves 16 or 4 bytes");
    using L = F16Smem<TYPE>;
    constexpr int NT = NW * 32;
    constexpr int TN = FBN / (NW / 2);  // tokens per warp
    constexpr int NN = TN / 8;          // n-tiles per warp
    constexpr int RS = raw_stride<V>(TYPE);
    constexpr int B_CHUNKS = FBN * HK * 2 / 16 / NT;  // 16-byte activation chunks
    static_assert(B_CHUNKS * NT * 16 == FBN * HK * 2, "activation chunks per thread");
    constexpr int A_UNITS = BM * (HK / 32) / NT;  // (row, unit) decodes per thread
    static_assert(A_UNITS * NT == BM * (HK / 32), "weight units per thread");

    extern __shared__ __align__(16) uint8_t smem[];
    uint8_t *raw = smem;
    __half *sa = reinterpret_cast<__half *>(smem + L::RAW);
    __half *sb0 = reinterpret_cast<__half *>(smem + L::RAW + L::A);

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int wm = warp % 2, wn = warp / 2;
    const int t0 = blockIdx.x * FBN;
    const int n_units = cols / 32;
    const int n_stages = (n_units + SU - 1) / SU;
    const int st0 = (int)((long)blockIdx.z * n_stages / n_slices);
    const int st1 = (int)((long)(blockIdx.z + 1) * n_stages / n_slices);
    const size_t rb = row_bytes(TYPE, cols);

    // Activations of half-stage s (values s * HK..) into buffer b, token rows of HSTRIDE
    // halves; tokens past nb and values past the row read as zero.
    auto copy_b = [&](int s, int b) {
        __half *sb = sb0 + b * (FBN * HSTRIDE);
#pragma unroll
        for (int i = 0; i < B_CHUNKS; i++) {
            int c = tid + i * NT, tok = c / (HK / 8), q = c % (HK / 8);
            int k = s * HK + q * 8;
            bool ok = t0 + tok < nb && k < cols;
            cp_async16(sb + tok * HSTRIDE + 8 * q, ok ? xh + (size_t)(t0 + tok) * cols + k : xh,
                       ok);
        }
    };

    // Half h of the raw stage st into the f16 weight tile: row `row`, unit u at halves
    // 32 * (u % 4).. of the row. Units past the row are zero.
    auto decode_a = [&](int st, int h) {
#pragma unroll
        for (int i = 0; i < A_UNITS; i++) {
            int q = tid + i * NT, row = q / (HK / 32), uu = q % (HK / 32);
            int u = (HK / 32) * h + uu;
            Unit un;
            raw_unit<TYPE, V>(raw + row * RS, st, u, r0 + row < rows && st * SU + u < n_units, un);
            const uint32_t d0 = f16x2_splat(un.d0), d1 = f16x2_splat(un.d1);
            const uint32_t m = f16x2_splat(un.m);
            uint32_t hv[16];
#pragma unroll
            for (int j = 0; j < 8; j++)
                s8x4_to_f16((uint32_t)un.w[j], j < 4 ? d0 : d1, m, hv[2 * j], hv[2 * j + 1]);
            uint4 *dst = reinterpret_cast<uint4 *>(sa + row * HSTRIDE + 32 * uu);
#pragma unroll
            for (int j = 0; j < 4; j++)
                dst[j] = make_uint4(hv[4 * j], hv[4 * j + 1], hv[4 * j + 2], hv[4 * j + 3]);
        }
    };

    float acc[2][NN][4];
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < NN; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[m][n][e] = 0.f;

    // ldmatrix addresses: lane 8j + r gives row r of matrix j. A (16 x 16 per m): matrices
    // (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15); B (two
    // n-tiles of 8 tokens per load): (tokens 0-7, k 0-7), (tokens 0-7, k 8-15), (tokens
    // 8-15, k 0-7), (tokens 8-15, k 8-15).
    const int lj = lane / 8, lr = lane % 8;
    const int a_off = (wm * 32 + lr + 8 * (lj % 2)) * HSTRIDE + 8 * (lj / 2);
    const int b_off = (wn * TN + lr + 8 * (lj / 2)) * HSTRIDE + 8 * (lj % 2);
    auto compute = [&](int b) {
        const __half *sb = sb0 + b * (FBN * HSTRIDE);
#pragma unroll
        for (int ks = 0; ks < HK / 16; ks++) {
            uint32_t a[2][4];
            ldsm_x4(a[0], sa + a_off + 16 * ks);
            ldsm_x4(a[1], sa + a_off + 16 * HSTRIDE + 16 * ks);
#pragma unroll
            for (int np = 0; np < NN / 2; np++) {
                uint32_t bb[4];
                ldsm_x4(bb, sb + b_off + np * 16 * HSTRIDE + 16 * ks);
#pragma unroll
                for (int h = 0; h < 2; h++)
#pragma unroll
                    for (int m = 0; m < 2; m++)
                        mma_f16(acc[m][2 * np + h], a[m], bb[2 * h], bb[2 * h + 1]);
            }
        }
    };

    // Half-stages s0 <= s < s1 of this slice; every branch is uniform over the block.
    const int s0 = 2 * st0, s1 = 2 * st1;
    if (s0 < s1) {
        copy_raw<TYPE, V, NT>(raw, w, rows, rb, r0, st0, tid);
        copy_b(s0, 0);
        cp_async_commit();
        cp_async_wait<0>();
    }
    __syncthreads();
    for (int s = s0; s < s1; s++) {
        const int st = s / 2, h = s % 2, cur = (s - s0) % 2;
        decode_a(st, h);
        __syncthreads();  // the weight tile is complete; after a second half, raw is free
        if (h == 1 && st + 1 < st1) copy_raw<TYPE, V, NT>(raw, w, rows, rb, r0, st + 1, tid);
        if (s + 1 < s1) copy_b(s + 1, cur ^ 1);  // last read before the last barrier
        cp_async_commit();
        compute(cur);
        cp_async_wait<0>();
        __syncthreads();  // reads of the weight tile and buffer cur are done; copies landed
    }

#pragma unroll
    for (int m = 0; m < 2; m++) {
#pragma unroll
        for (int n = 0; n < NN; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int row = r0 + wm * 32 + 16 * m + g + 8 * (e / 2);
                int tok = t0 + wn * TN + 8 * n + 2 * t + e % 2;
                if (row < rows && tok < nb) {
                    if (n_slices == 1) {
                        float *o = y + (size_t)tok * rows + row;
                        *o = accumulate ? *o + acc[m][n][e] : acc[m][n][e];
                    } else {
                        part[((size_t)blockIdx.z * nb + tok) * rows + row] = acc[m][n][e];
                    }
                }
            }
        }
    }
}

// Eight activations per thread: xh = f16(q * d).
__global__ void q8_to_f16_kernel(const int8_t *__restrict__ xq, const float *__restrict__ xd,
                                 int n, __half *__restrict__ xh) {
    pdl_start();
    int i = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    const float d = xd[i / 32];
    const int2 q = *reinterpret_cast<const int2 *>(xq + i);
    __half v[8];
#pragma unroll
    for (int j = 0; j < 8; j++)
        v[j] = __float2half((float)(int8_t)((j < 4 ? q.x : q.y) >> (8 * (j % 4))) * d);
    *reinterpret_cast<uint4 *>(xh + i) = *reinterpret_cast<const uint4 *>(v);
}

// Warps per block of the f16 kernel (wick_gemm_f16_warps): 4 or 8.
int f16_warps = 8;

// One launch over the n weights of `grp` (first[] filled in here), split along the stages
// when the blocks are too few (then n must be 1: the partial sums have one weight's shape).
template <int TYPE, int V, int NW>
int launch_f16(WeightGroup grp, int n, int cols, const __half *xh, int nb, int accumulate, float *ws,
               size_t ws_floats) {
    constexpr int SMEM = F16Smem<TYPE>::TOTAL;
    auto kernel = gemm_f16_kernel<TYPE, V, NW>;
    static bool opted = false;
    if (cudaError_t e = opt_in_smem(kernel, SMEM, opted)) return (int)e;
    int row_blocks = 0;
    for (int i = 0; i < 4; i++) {
        grp.first[i] = i < n ? row_blocks : INT_MAX;
        if (i < n) row_blocks += (grp.rows[i] + BM - 1) / BM;
    }
    int tok_blocks = (nb + FBN - 1) / FBN;
    int n_stages = (cols / 32 + SU - 1) / SU;
    int slices = n > 1 ? 1
                       : pick_slices((long)tok_blocks * row_blocks, n_stages, nb, grp.rows[0],
                                     ws, ws_floats);
    if (row_blocks > 65535 || slices > 65535) return (int)cudaErrorInvalidValue;
    wick_launch(kernel, dim3(tok_blocks, row_blocks, slices), NW * 32, SMEM, grp, cols, xh, nb,
                accumulate, ws, slices);
    reduce_slices(ws, nb, grp.rows[0], slices, grp.y[0], accumulate);
    return (int)cudaGetLastError();
}

// 16-byte slots where rows and stages allow (Q6_K stages, 210 bytes, take them on 16-byte
// aligned rows, see raw_stride), else 4-byte slots on 4-byte aligned rows; 0 where neither.
template <int TYPE>
int slot_bytes(const void *w, int cols) {
    size_t rb = row_bytes(TYPE, cols);
    if (rb % 16 == 0 && (uintptr_t)w % 16 == 0) return 16;
    if (rb % 4 == 0 && (uintptr_t)w % 4 == 0) return 4;
    return 0;
}

template <int TYPE>
int launch_group(const WeightGroup &grp, int n, int cols, const __half *xh, int nb, int accumulate,
                 float *ws, size_t ws_floats) {
    int v = 16;
    for (int i = 0; i < n; i++) v = std::min(v, slot_bytes<TYPE>(grp.w[i], cols));
    if (v == 0) return (int)cudaErrorMisalignedAddress;
    if (f16_warps == 8)
        return v == 16 ? launch_f16<TYPE, 16, 8>(grp, n, cols, xh, nb, accumulate, ws, ws_floats)
                       : launch_f16<TYPE, 4, 8>(grp, n, cols, xh, nb, accumulate, ws, ws_floats);
    return v == 16 ? launch_f16<TYPE, 16, 4>(grp, n, cols, xh, nb, accumulate, ws, ws_floats)
                   : launch_f16<TYPE, 4, 4>(grp, n, cols, xh, nb, accumulate, ws, ws_floats);
}

// The weights in one launch when together they give every SM two blocks (so no split is
// needed), else one launch each.
template <int TYPE>
int launch_type_f16(const wick_mv_target *targets, int n, int cols, const __half *xh, int nb,
                    int accumulate, float *ws, size_t ws_floats) {
    WeightGroup grp = {};
    long blocks = 0;
    for (int i = 0; i < n; i++) {
        grp.w[i] = (const uint8_t *)targets[i].w;
        grp.y[i] = targets[i].y;
        grp.rows[i] = targets[i].rows;
        blocks += (long)(targets[i].rows + BM - 1) / BM * ((nb + FBN - 1) / FBN);
    }
    if (n == 1 || blocks >= 2L * sm_count())
        return launch_group<TYPE>(grp, n, cols, xh, nb, accumulate, ws, ws_floats);
    for (int i = 0; i < n; i++) {
        WeightGroup one = {};
        one.w[0] = grp.w[i];
        one.y[0] = grp.y[i];
        one.rows[0] = grp.rows[i];
        int e = launch_group<TYPE>(one, 1, cols, xh, nb, accumulate, ws, ws_floats);
        if (e != 0) return e;
    }
    return 0;
}

template <int TYPE>
bool f16_applies(const void *w, int cols) {
    return (size_t)F16Smem<TYPE>::TOTAL <= smem_optin() && slot_bytes<TYPE>(w, cols) != 0;
}

}  // namespace

extern "C" void wick_gemm_f16_warps(int n) { f16_warps = n == 8 ? 8 : 4; }

extern "C" int wick_gemm_f16_applies(int type, const void *w, int cols, int nb) {
    if (nb <= 64 || cols % block_elems(type) != 0) return 0;
    switch (type) {
        case T_Q4_0: return f16_applies<T_Q4_0>(w, cols);
        case T_Q4_1: return f16_applies<T_Q4_1>(w, cols);
        case T_Q5_0: return f16_applies<T_Q5_0>(w, cols);
        case T_Q5_1: return f16_applies<T_Q5_1>(w, cols);
        case T_Q8_0: return f16_applies<T_Q8_0>(w, cols);
        case T_Q4_K: return f16_applies<T_Q4_K>(w, cols);
        case T_Q5_K: return f16_applies<T_Q5_K>(w, cols);
        case T_Q6_K: return f16_applies<T_Q6_K>(w, cols);
        default: return 0;
    }
}

extern "C" int wick_q8_to_f16(const int8_t *xq, const float *xd, int n, void *xh) {
    if (n % 32 != 0 || n < 1) return (int)cudaErrorInvalidValue;
    int threads = n / 8;
    wick_launch(q8_to_f16_kernel, (threads + 255) / 256, 256, 0, xq, xd, n, (__half *)xh);
    return (int)cudaGetLastError();
}

extern "C" int wick_gemm_f16(int type, const wick_mv_target *targets, int n_targets, int cols,
                             const void *xh, int nb, int accumulate, float *ws,
                             size_t ws_floats) {
    if (n_targets < 1 || n_targets > 3) return (int)cudaErrorInvalidValue;
    for (int i = 0; i < n_targets; i++)
        if (!wick_gemm_f16_applies(type, targets[i].w, cols, nb) || targets[i].rows < 1)
            return (int)cudaErrorInvalidValue;
    const __half *x = (const __half *)xh;
    switch (type) {
        case T_Q4_0: return launch_type_f16<T_Q4_0>(targets, n_targets, cols, x, nb, accumulate, ws, ws_floats);
        case T_Q4_1: return launch_type_f16<T_Q4_1>(targets, n_targets, cols, x, nb, accumulate, ws, ws_floats);
        case T_Q5_0: return launch_type_f16<T_Q5_0>(targets, n_targets, cols, x, nb, accumulate, ws, ws_floats);
        case T_Q5_1: return launch_type_f16<T_Q5_1>(targets, n_targets, cols, x, nb, accumulate, ws, ws_floats);
        case T_Q8_0: return launch_type_f16<T_Q8_0>(targets, n_targets, cols, x, nb, accumulate, ws, ws_floats);
        case T_Q4_K: return launch_type_f16<T_Q4_K>(targets, n_targets, cols, x, nb, accumulate, ws, ws_floats);
        case T_Q5_K: return launch_type_f16<T_Q5_K>(targets, n_targets, cols, x, nb, accumulate, ws, ws_floats);
        case T_Q6_K: return launch_type_f16<T_Q6_K>(targets, n_targets, cols, x, nb, accumulate, ws, ws_floats);
        default: return (int)cudaErrorInvalidValue;
    }
}
