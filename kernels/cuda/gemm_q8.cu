// Matrix-matrix products for prefill (batches above 16 tokens) on int8 tensor cores.
//
// Decode streams weights once per token and is bound by memory; a 64-token batch does 64
// times the arithmetic per weight byte, which CUDA cores cannot keep up with (the f32
// kernel runs prefill two orders of magnitude below the memory limit). Here weights are
// decoded to int8 once per block and multiplied against the int8 activations of
// wick_quantize_q8 with mma.sync m16n8k32 (s8 x s8 -> s32), one 32-value unit at a time,
// so that each unit's integer sum is scaled by its own weight and activation scales, as
// the matrix-vector kernel and the CPU's fast path do. This is the scheme of llama.cpp's
// "MMQ" kernels, written afresh.
//
// The 64-token kernel (batches up to 64; the wide kernel below takes larger ones): a block
// owns BM = 64 weight rows and all (up to 64) tokens, and walks its share of the row in
// stages of 8 units (256 values):
//   1. raw weight bytes of the next stage and its activations are loaded into registers
//      (so the loads are in flight during 2 and 3),
//   2. the current stage's raw bytes in shared memory are decoded to int8 words plus
//      per-unit scales (load_unit, shared with matvec_q8.cu),
//   3. each warp multiplies its 16 rows by every token with tensor cores,
//   4. the registers of step 1 are stored to shared memory for the next stage.
// Weights are read from DRAM exactly once per call. When the rows alone give too few
// blocks to fill the GPU (a 1024-row projection is 16 blocks), the stages are also split
// over gridDim.y; each slice writes partial sums to a workspace that a second kernel adds
// up in a fixed order, so results do not depend on timing.
//
// Fragments of mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 (PTX ISA, "Matrix
// Fragments for mma.m16n8k32"), for lane = 4 * g + t (g = groupID, t = threadID_in_group),
// each register holding 4 int8 at consecutive k (lowest k in the lowest byte):
//   A (16 x 32, rows = weight rows): a0 = row g,     k 4t..4t+3
//                                    a1 = row g + 8, k 4t..4t+3
//                                    a2 = row g,     k 16+4t..16+4t+3
//                                    a3 = row g + 8, k 16+4t..16+4t+3
//   B (32 x 8, cols = tokens):       b0 = token g,   k 4t..4t+3
//                                    b1 = token g,   k 16+4t..16+4t+3
//   C (16 x 8, s32):                 c0 = (row g, token 2t),     c1 = (row g, token 2t+1)
//                                    c2 = (row g + 8, token 2t), c3 = (row g + 8, token 2t+1)
// m16n8k16 (s8) is the first half of that: A = {a0, a1}, B = {b0}, same C. Q6_K, with a
// scale per 16 values, runs it twice per unit: ({a0, a1}, {b0}) and ({a2, a3}, {b1}).
// A k-word (4 values) of a unit is word t or t + 4 of that unit's 8 words in shared memory,
// so every fragment register is one aligned 32-bit shared load.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "common.cuh"
#include "gemm_raw.cuh"
#include "mma_s8.cuh"
#include "q8_unit.cuh"
#include "stream.cuh"

namespace {

constexpr int WSTRIDE = SU * 8 + 4;  // words per row of a decoded tile; the 4 spare words
                                     // put the 8 rows of one fragment load in distinct banks
constexpr int SSTRIDE = BM + 4;      // floats per unit of the weight-scale tables

// Shared memory of one block, in bytes, laid out in this order.
template <int TYPE, int NT>
struct Smem {
    static constexpr int BN = 8 * NT;
    static constexpr int XSTRIDE = BN + 4;  // floats per unit of the activation scales
    static constexpr int RAW = round16(BM * (stage_bytes(TYPE) + 2));  // see raw_stride
    static constexpr int W = BM * WSTRIDE * 4;
    static constexpr int X = BN * WSTRIDE * 4;
    static constexpr int WD = SU * SSTRIDE * 4;
    static constexpr int WD1 = TYPE == T_Q6_K ? WD : 0;
    static constexpr int WM = has_min<TYPE>() ? WD : 0;
    static constexpr int XD = SU * XSTRIDE * 4;
    static constexpr int XM = has_min<TYPE>() ? XD : 0;
    static constexpr int TOTAL = RAW + W + X + WD + WD1 + WM + XD + XM;
};

// |c| < 2^22 (at most 32 * 128 * 128 per unit), so adding c to the bits of 1.5 * 2^23 is
// exact: two full-rate instructions instead of a quarter-rate I2F.
__device__ __forceinline__ float i2f(int c) {
    return __int_as_float(c + 0x4B400000) - 12582912.f;
}

// The same from a sum that already has the bits of 1.5 * 2^23 added (by the tensor core).
__device__ __forceinline__ float i2f_bits(int c) { return __int_as_float(c) - 12582912.f; }

// The register slots of fetch_raw, by the alignment of rows (see raw_stride): slot p holds
// bytes p * sizeof(slot).. of the raw tile, the block's 64 rows back to back, raw_stride
// bytes each.
template <int V>
struct Slot {
    using T = uint32_t;
};
template <>
struct Slot<16> {
    using T = uint4;
};

// Step 1 of both kernels: the raw bytes of stage st of rows r0.. into registers, slot
// tid + i * THREADS in wr[i]. Rows past the matrix and bytes past the row (a last stage of
// fewer than 8 units) read as zero.
template <int TYPE, int V, int N>
__device__ inline void fetch_raw(typename Slot<V>::T (&wr)[N], const uint8_t *__restrict__ w,
                                 int rows, size_t rb, int r0, int st, int tid) {
    constexpr int S = stage_bytes(TYPE), RS = raw_stride<V>(TYPE);
    constexpr int N_SLOTS = BM * RS / (int)sizeof(typename Slot<V>::T);
#pragma unroll
    for (int i = 0; i < N; i++) {
        int p = tid + i * THREADS;
        if constexpr (V == 16) {
            uint4 v = make_uint4(0, 0, 0, 0);
            int f = p * 16, row = f / S, off = f % S;
            if (p < N_SLOTS && r0 + row < rows && (size_t)st * S + off < rb)
                v = *reinterpret_cast<const uint4 *>(w + (size_t)(r0 + row) * rb +
                                                     (size_t)st * S + off);
            wr[i] = v;
        } else if constexpr (V == 4) {
            uint32_t v = 0;
            int row = p / (RS / 4);
            size_t off = (size_t)st * S / 4 * 4 + 4 * (p % (RS / 4));
            if (p < N_SLOTS && r0 + row < rows && off < rb)
                v = *reinterpret_cast<const uint32_t *>(w + (size_t)(r0 + row) * rb + off);
            wr[i] = v;
        } else {
            uint32_t v = 0;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int f = p * 4 + 2 * h, row = f / S, off = f % S;
                if (p < N_SLOTS && r0 + row < rows && (size_t)st * S + off < rb)
                    v |= (uint32_t)*reinterpret_cast<const uint16_t *>(
                             w + (size_t)(r0 + row) * rb + (size_t)st * S + off)
                         << (16 * h);
            }
            wr[i] = v;
        }
    }
}

// Where gemm_q8_wide2_kernel keeps row `row` (0..63) of a unit's weight scales: lane g of
// warp wm reads its four rows wm * 32 + 16 m + 8 h + g (m, h = 0, 1) as one float4.
__device__ __forceinline__ int wpos(int row) {
    return (row / 32) * 32 + (row % 8) * 4 + ((row % 32) / 16) * 2 + (row % 16) / 8;
}

// Step 2 of all three kernels: the raw bytes of stage st (fetch_raw, stored to `raw`) to
// int8 words in `sw` and scales in `swd` / `swd1` / `swm`, one (row, unit) per thread and
// pass; with PERM the scales of a unit are in wpos order.
template <int TYPE, int V, bool PERM = false>
__device__ inline void decode_raw(const uint8_t *raw, int *sw, float *swd, float *swd1,
                                  float *swm, int rows, int r0, int st, int n_units, int tid) {
    constexpr int RS = raw_stride<V>(TYPE);
#pragma unroll
    for (int i = 0; i < BM * SU / THREADS; i++) {
        int q = tid + i * THREADS, row = q / SU, u = q % SU;
        Unit un;
        raw_unit<TYPE, V>(raw + row * RS, st, u, r0 + row < rows && st * SU + u < n_units, un);
        int4 *dst = reinterpret_cast<int4 *>(sw + row * WSTRIDE + 8 * u);
        dst[0] = make_int4(un.w[0], un.w[1], un.w[2], un.w[3]);
        dst[1] = make_int4(un.w[4], un.w[5], un.w[6], un.w[7]);
        const int sr = u * SSTRIDE + (PERM ? wpos(row) : row);
        swd[sr] = un.d0;
        if constexpr (TYPE == T_Q6_K) swd1[sr] = un.d1;
        if constexpr (has_min<TYPE>()) swm[sr] = un.m;
    }
}

template <int TYPE, int NT, int V>
__global__ void __launch_bounds__(THREADS)
gemm_q8_kernel(const uint8_t *__restrict__ w, int rows, int cols,
               const int8_t *__restrict__ xq, const float *__restrict__ xd, int nb,
               float *__restrict__ y, int accumulate, float *__restrict__ part,
               int n_slices) {
    pdl_start();
    using L = Smem<TYPE, NT>;
    using SlotT = typename Slot<V>::T;
    constexpr int BN = L::BN, XSTRIDE = L::XSTRIDE;
    constexpr int S = stage_bytes(TYPE), RS = raw_stride<V>(TYPE);
    constexpr int SLOT = sizeof(SlotT);
    constexpr int N_SLOTS = BM * RS / SLOT;  // RS * 64 is a multiple of 16
    static_assert(N_SLOTS * SLOT == BM * RS && BM * RS <= L::RAW, "raw tile");
    constexpr int SLOTS_PER_THREAD = (N_SLOTS + THREADS - 1) / THREADS;
    constexpr int X_CHUNKS = BN * SU * 32 / 16 / THREADS;  // 16-byte activation chunks
    constexpr int XD_PER_THREAD = BN * SU / THREADS;
    static_assert(X_CHUNKS * THREADS == BN * SU * 2, "activation chunks per thread");
    static_assert(XD_PER_THREAD * THREADS == BN * SU, "activation scales per thread");

    extern __shared__ __align__(16) uint8_t smem[];
    uint8_t *raw = smem;
    int *sw = reinterpret_cast<int *>(smem + L::RAW);
    int *sx = reinterpret_cast<int *>(smem + L::RAW + L::W);
    float *swd = reinterpret_cast<float *>(smem + L::RAW + L::W + L::X);
    float *swd1 = reinterpret_cast<float *>(smem + L::RAW + L::W + L::X + L::WD);
    float *swm = reinterpret_cast<float *>(smem + L::RAW + L::W + L::X + L::WD + L::WD1);
    float *sxd =
        reinterpret_cast<float *>(smem + L::RAW + L::W + L::X + L::WD + L::WD1 + L::WM);
    float *sxm = reinterpret_cast<float *>(smem + L::RAW + L::W + L::X + L::WD + L::WD1 +
                                           L::WM + L::XD);

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int r0 = blockIdx.x * BM;
    const int n_units = cols / 32;
    const int n_stages = (n_units + SU - 1) / SU;
    const int st0 = (int)((long)blockIdx.y * n_stages / n_slices);
    const int st1 = (int)((long)(blockIdx.y + 1) * n_stages / n_slices);
    const size_t rb = row_bytes(TYPE, cols);

    SlotT wr[SLOTS_PER_THREAD];
    int4 xr[X_CHUNKS];
    float xdr[XD_PER_THREAD];

    // Step 1: the raw bytes and activations of stage st into registers. Rows past the
    // matrix, bytes past the row (a last stage of fewer than 8 units) and tokens past nb
    // read as zero.
    auto fetch = [&](int st) {
        fetch_raw<TYPE, V>(wr, w, rows, rb, r0, st, tid);
#pragma unroll
        for (int i = 0; i < X_CHUNKS; i++) {
            int c = tid + i * THREADS, tok = c / (2 * SU), k = st * SU * 32 + (c % (2 * SU)) * 16;
            int4 v = make_int4(0, 0, 0, 0);
            if (tok < nb && k < cols)
                v = *reinterpret_cast<const int4 *>(xq + (size_t)tok * cols + k);
            xr[i] = v;
        }
#pragma unroll
        for (int i = 0; i < XD_PER_THREAD; i++) {
            int c = tid + i * THREADS, tok = c / SU, u = st * SU + c % SU;
            xdr[i] = tok < nb && u < n_units ? xd[(size_t)tok * n_units + u] : 0.f;
        }
    };

    // Step 4: registers to shared memory. Activations go straight to their tile (token
    // rows of WSTRIDE words), their scales to [unit][token].
    auto store = [&]() {
#pragma unroll
        for (int i = 0; i < SLOTS_PER_THREAD; i++) {
            int p = tid + i * THREADS;
            if (p < N_SLOTS) reinterpret_cast<SlotT *>(raw)[p] = wr[i];
        }
#pragma unroll
        for (int i = 0; i < X_CHUNKS; i++) {
            int c = tid + i * THREADS, tok = c / (2 * SU), q = c % (2 * SU);
            *reinterpret_cast<int4 *>(sx + tok * WSTRIDE + 4 * q) = xr[i];
        }
#pragma unroll
        for (int i = 0; i < XD_PER_THREAD; i++) {
            int c = tid + i * THREADS;
            sxd[(c % SU) * XSTRIDE + c / SU] = xdr[i];
        }
    };

    // Step 2: raw bytes to int8 words and scales, one (row, unit) per thread and pass;
    // for types with an offset, also each (token, unit)'s d_x * sum of its int8 values.
    auto decode = [&](int st) {
        decode_raw<TYPE, V>(raw, sw, swd, swd1, swm, rows, r0, st, n_units, tid);
        if constexpr (has_min<TYPE>()) {
#pragma unroll
            for (int i = 0; i < XD_PER_THREAD; i++) {
                int c = tid + i * THREADS, tok = c / SU, u = c % SU;
                const int4 *src = reinterpret_cast<const int4 *>(sx + tok * WSTRIDE + 8 * u);
                int4 a = src[0], b = src[1];
                int s = __dp4a(0x01010101, a.x, __dp4a(0x01010101, a.y,
                        __dp4a(0x01010101, a.z, __dp4a(0x01010101, a.w, 0))));
                s = __dp4a(0x01010101, b.x, __dp4a(0x01010101, b.y,
                    __dp4a(0x01010101, b.z, __dp4a(0x01010101, b.w, s))));
                sxm[u * XSTRIDE + tok] = sxd[u * XSTRIDE + tok] * (float)s;
            }
        }
    };

    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[n][e] = 0.f;

    // Step 3: this warp's rows wrow, wrow + 8 (per lane: g and g + 8 of the warp's 16).
    const int wrow = warp * 16 + g;
    auto compute = [&]() {
#pragma unroll
        for (int u = 0; u < SU; u++) {
            const int *wa = sw + wrow * WSTRIDE + 8 * u + t;
            int a0 = wa[0], a1 = wa[8 * WSTRIDE], a2 = wa[4], a3 = wa[8 * WSTRIDE + 4];
            float dw0 = swd[u * SSTRIDE + wrow], dw1 = swd[u * SSTRIDE + wrow + 8];
            float dh0 = 0.f, dh1 = 0.f, m0 = 0.f, m1 = 0.f;
            if constexpr (TYPE == T_Q6_K) {
                dh0 = swd1[u * SSTRIDE + wrow];
                dh1 = swd1[u * SSTRIDE + wrow + 8];
            }
            if constexpr (has_min<TYPE>()) {
                m0 = swm[u * SSTRIDE + wrow];
                m1 = swm[u * SSTRIDE + wrow + 8];
            }
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const int *xb = sx + (8 * n + g) * WSTRIDE + 8 * u + t;
                int b0 = xb[0], b1 = xb[4];
                float2 dx = *reinterpret_cast<const float2 *>(sxd + u * XSTRIDE + 8 * n + 2 * t);
                int c[4];
                if constexpr (TYPE == T_Q6_K) {
                    int e[4];
                    mma_k16(c, a0, a1, b0);
                    mma_k16(e, a2, a3, b1);
                    acc[n][0] += dx.x * (dw0 * i2f(c[0]) + dh0 * i2f(e[0]));
                    acc[n][1] += dx.y * (dw0 * i2f(c[1]) + dh0 * i2f(e[1]));
                    acc[n][2] += dx.x * (dw1 * i2f(c[2]) + dh1 * i2f(e[2]));
                    acc[n][3] += dx.y * (dw1 * i2f(c[3]) + dh1 * i2f(e[3]));
                } else {
                    mma_k32(c, a0, a1, a2, a3, b0, b1);
                    acc[n][0] += dw0 * dx.x * i2f(c[0]);
                    acc[n][1] += dw0 * dx.y * i2f(c[1]);
                    acc[n][2] += dw1 * dx.x * i2f(c[2]);
                    acc[n][3] += dw1 * dx.y * i2f(c[3]);
                    if constexpr (has_min<TYPE>()) {
                        float2 xm =
                            *reinterpret_cast<const float2 *>(sxm + u * XSTRIDE + 8 * n + 2 * t);
                        acc[n][0] += m0 * xm.x;
                        acc[n][1] += m0 * xm.y;
                        acc[n][2] += m1 * xm.x;
                        acc[n][3] += m1 * xm.y;
                    }
                }
            }
        }
    };

    // Every branch below is uniform over the block, so the barriers are too.
    if (st0 < st1) {
        fetch(st0);
        store();
    }
    __syncthreads();
    for (int st = st0; st < st1; st++) {
        bool more = st + 1 < st1;
        if (more) fetch(st + 1);
        decode(st);
        __syncthreads();
        compute();
        __syncthreads();
        if (more) {
            store();
            __syncthreads();
        }
    }

#pragma unroll
    for (int n = 0; n < NT; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int row = r0 + wrow + 8 * (e / 2), tok = 8 * n + 2 * t + e % 2;
            if (row < rows && tok < nb) {
                if (n_slices == 1) {
                    float *o = y + (size_t)tok * rows + row;
                    *o = accumulate ? *o + acc[n][e] : acc[n][e];
                } else {
                    part[((size_t)blockIdx.y * nb + tok) * rows + row] = acc[n][e];
                }
            }
        }
    }
}

// Batches above 64 tokens: the same per-unit scheme, with a block tile of BM = 64 weight
// rows by WBN = 128 tokens, so each decoded weight stage serves twice the tokens, and the
// token tiles of one weight tile run side by side (blockIdx.x), sharing its bytes in L2.
// The four warps split the tile 2 x 2, 32 rows by 64 tokens each, so every activation
// fragment feeds two row fragments (the 64-token kernel's warps own 16 rows and reload
// the activations per 16 rows). Fragments come from ldmatrix, four registers per
// instruction. Activations and their scales are copied to shared memory with cp.async,
// double-buffered, so the next stage's copy runs under this stage's decode and math; raw
// weights still pass through registers (their loads also in flight meanwhile), as in the
// 64-token kernel, because decoding needs them in shared memory only briefly.
constexpr int WBN = 128;               // tokens per block
constexpr int WXSTRIDE = WBN + 4;      // floats per unit of the activation-scale tables

template <int TYPE>
struct WideSmem {
    static constexpr int RAW = round16(BM * (stage_bytes(TYPE) + 2));
    static constexpr int W = BM * WSTRIDE * 4;
    static constexpr int X = WBN * WSTRIDE * 4;  // one of two buffers
    static constexpr int WD = SU * SSTRIDE * 4;
    static constexpr int WD1 = TYPE == T_Q6_K ? WD : 0;
    static constexpr int WM = has_min<TYPE>() ? WD : 0;
    static constexpr int XD = SU * WXSTRIDE * 4;  // one of two buffers
    static constexpr int XM = has_min<TYPE>() ? XD : 0;
    static constexpr int TOTAL = RAW + W + 2 * X + WD + WD1 + WM + 2 * XD + XM;
};

template <int TYPE, int V>
__global__ void __launch_bounds__(THREADS, 2)
gemm_q8_wide_kernel(const uint8_t *__restrict__ w, int rows, int cols,
                    const int8_t *__restrict__ xq, const float *__restrict__ xd, int nb,
                    float *__restrict__ y, int accumulate, float *__restrict__ part,
                    int n_slices) {
    pdl_start();
    using L = WideSmem<TYPE>;
    using SlotT = typename Slot<V>::T;
    constexpr int S = stage_bytes(TYPE), RS = raw_stride<V>(TYPE);
    constexpr int SLOT = sizeof(SlotT);
    constexpr int N_SLOTS = BM * RS / SLOT;
    static_assert(N_SLOTS * SLOT == BM * RS && BM * RS <= L::RAW, "raw tile");
    constexpr int SLOTS_PER_THREAD = (N_SLOTS + THREADS - 1) / THREADS;
    constexpr int X_CHUNKS = WBN * SU * 2 / THREADS;  // 16-byte activation chunks
    constexpr int XD_PER_THREAD = WBN * SU / THREADS;
    static_assert(X_CHUNKS * THREADS == WBN * SU * 2, "activation chunks per thread");
    static_assert(XD_PER_THREAD * THREADS == WBN * SU, "activation scales per thread");

    extern __shared__ __align__(16) uint8_t smem[];
    uint8_t *raw = smem;
    int *sw = reinterpret_cast<int *>(smem + L::RAW);
    int *sx0 = reinterpret_cast<int *>(smem + L::RAW + L::W);
    uint8_t *rest = smem + L::RAW + L::W + 2 * L::X;
    float *swd = reinterpret_cast<float *>(rest);
    float *swd1 = reinterpret_cast<float *>(rest + L::WD);
    float *swm = reinterpret_cast<float *>(rest + L::WD + L::WD1);
    float *sxd0 = reinterpret_cast<float *>(rest + L::WD + L::WD1 + L::WM);
    float *sxm = reinterpret_cast<float *>(rest + L::WD + L::WD1 + L::WM + 2 * L::XD);

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int wm = warp % 2, wn = warp / 2;
    const int t0 = blockIdx.x * WBN, r0 = blockIdx.y * BM;
    const int n_units = cols / 32;
    const int n_stages = (n_units + SU - 1) / SU;
    const int st0 = (int)((long)blockIdx.z * n_stages / n_slices);
    const int st1 = (int)((long)(blockIdx.z + 1) * n_stages / n_slices);
    const size_t rb = row_bytes(TYPE, cols);

    SlotT wr[SLOTS_PER_THREAD];

    // Raw weight bytes of stage st into registers (as the 64-token kernel's fetch).
    auto fetch_w = [&](int st) {
        fetch_raw<TYPE, V>(wr, w, rows, rb, r0, st, tid);
    };
    auto store_w = [&]() {
#pragma unroll
        for (int i = 0; i < SLOTS_PER_THREAD; i++) {
            int p = tid + i * THREADS;
            if (p < N_SLOTS) reinterpret_cast<SlotT *>(raw)[p] = wr[i];
        }
    };

    // Activations of stage st (token rows of WSTRIDE words) and their scales ([unit][token])
    // into buffer b, asynchronously; tokens past nb and values past the row read as zero.
    auto copy_x = [&](int st, int b) {
        int *sx = sx0 + b * (WBN * WSTRIDE);
        float *sxd = sxd0 + b * (SU * WXSTRIDE);
#pragma unroll
        for (int i = 0; i < X_CHUNKS; i++) {
            int c = tid + i * THREADS, tok = c / (2 * SU), q = c % (2 * SU);
            int k = st * SU * 32 + q * 16;
            bool ok = t0 + tok < nb && k < cols;
            cp_async16(sx + tok * WSTRIDE + 4 * q, ok ? xq + (size_t)(t0 + tok) * cols + k : xq,
                       ok);
        }
#pragma unroll
        for (int i = 0; i < XD_PER_THREAD; i++) {
            int c = tid + i * THREADS, tok = c / SU, u = st * SU + c % SU;
            bool ok = t0 + tok < nb && u < n_units;
            cp_async4(sxd + (c % SU) * WXSTRIDE + tok,
                      ok ? xd + (size_t)(t0 + tok) * n_units + u : xd, ok);
        }
        cp_async_commit();
    };

    // Raw bytes to int8 words and scales, one (row, unit) per thread and pass.
    auto decode_w = [&](int st) {
        decode_raw<TYPE, V>(raw, sw, swd, swd1, swm, rows, r0, st, n_units, tid);
    };

    // For types with an offset: each (token, unit)'s d_x * sum of its int8 values.
    auto x_sums = [&](int b) {
        const int *sx = sx0 + b * (WBN * WSTRIDE);
        const float *sxd = sxd0 + b * (SU * WXSTRIDE);
#pragma unroll
        for (int i = 0; i < XD_PER_THREAD; i++) {
            int c = tid + i * THREADS, tok = c / SU, u = c % SU;
            const int4 *src = reinterpret_cast<const int4 *>(sx + tok * WSTRIDE + 8 * u);
            int4 a = src[0], e = src[1];
            int s = __dp4a(0x01010101, a.x, __dp4a(0x01010101, a.y,
                    __dp4a(0x01010101, a.z, __dp4a(0x01010101, a.w, 0))));
            s = __dp4a(0x01010101, e.x, __dp4a(0x01010101, e.y,
                __dp4a(0x01010101, e.z, __dp4a(0x01010101, e.w, s))));
            sxm[u * WXSTRIDE + tok] = sxd[u * WXSTRIDE + tok] * (float)s;
        }
    };

    float acc[2][8][4];
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[m][n][e] = 0.f;

    // This warp's rows wm * 32 + 16 m + (g, g + 8) and tokens wn * 64 + 8 n + (2t, 2t + 1).
    // ldmatrix addresses: lane 8j + r gives row r of matrix j. For A, matrices 0..3 are
    // (rows 0-7, k 0-15), (rows 8-15, k 0-15), (rows 0-7, k 16-31), (rows 8-15, k 16-31):
    // a0..a3 of the fragment. For B, (n, k 0-15), (n, k 16-31), (n + 1, k 0-15),
    // (n + 1, k 16-31): b0, b1 of two token fragments.
    const int lj = lane / 8, lr = lane % 8;
    const int a_off = (wm * 32 + lr + 8 * (lj % 2)) * WSTRIDE + 4 * (lj / 2);
    const int b_off = (wn * 64 + lr + 8 * (lj / 2)) * WSTRIDE + 4 * (lj % 2);
    auto compute = [&](int b) {
        const int *sx = sx0 + b * (WBN * WSTRIDE);
        const float *sxd = sxd0 + b * (SU * WXSTRIDE);
#pragma unroll
        for (int u = 0; u < SU; u++) {
            uint32_t a[2][4];
            float dw[2][2], dh[2][2], mw[2][2];
#pragma unroll
            for (int m = 0; m < 2; m++) {
                ldsm_x4(a[m], sw + a_off + m * 16 * WSTRIDE + 8 * u);
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    int row = wm * 32 + 16 * m + g + 8 * h;
                    dw[m][h] = swd[u * SSTRIDE + row];
                    dh[m][h] = TYPE == T_Q6_K ? swd1[u * SSTRIDE + row] : 0.f;
                    mw[m][h] = has_min<TYPE>() ? swm[u * SSTRIDE + row] : 0.f;
                }
            }
#pragma unroll
            for (int np = 0; np < 4; np++) {
                uint32_t bb[4];
                ldsm_x4(bb, sx + b_off + np * 16 * WSTRIDE + 8 * u);
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    int n = 2 * np + h, col = u * WXSTRIDE + wn * 64 + 8 * n + 2 * t;
                    int b0 = bb[2 * h], b1 = bb[2 * h + 1];
                    float2 dx = *reinterpret_cast<const float2 *>(sxd + col);
                    float2 xm = make_float2(0.f, 0.f);
                    if constexpr (has_min<TYPE>())
                        xm = *reinterpret_cast<const float2 *>(sxm + col);
#pragma unroll
                    for (int m = 0; m < 2; m++) {
                        int c[4];
                        float *o = acc[m][n];
                        if constexpr (TYPE == T_Q6_K) {
                            int e[4];
                            mma_k16(c, a[m][0], a[m][1], b0);
                            mma_k16(e, a[m][2], a[m][3], b1);
                            o[0] += dx.x * (dw[m][0] * i2f(c[0]) + dh[m][0] * i2f(e[0]));
                            o[1] += dx.y * (dw[m][0] * i2f(c[1]) + dh[m][0] * i2f(e[1]));
                            o[2] += dx.x * (dw[m][1] * i2f(c[2]) + dh[m][1] * i2f(e[2]));
                            o[3] += dx.y * (dw[m][1] * i2f(c[3]) + dh[m][1] * i2f(e[3]));
                        } else {
                            mma_k32(c, a[m][0], a[m][1], a[m][2], a[m][3], b0, b1);
                            o[0] += dw[m][0] * dx.x * i2f(c[0]);
                            o[1] += dw[m][0] * dx.y * i2f(c[1]);
                            o[2] += dw[m][1] * dx.x * i2f(c[2]);
                            o[3] += dw[m][1] * dx.y * i2f(c[3]);
                            if constexpr (has_min<TYPE>()) {
                                o[0] += mw[m][0] * xm.x;
                                o[1] += mw[m][0] * xm.y;
                                o[2] += mw[m][1] * xm.x;
                                o[3] += mw[m][1] * xm.y;
                            }
                        }
                    }
                }
            }
        }
    };

    // Every branch below is uniform over the block, so the barriers are too. Per stage:
    // start the next stage's copies, decode this one's weights, wait for this one's
    // activations, multiply, and park the next raw weights in shared memory.
    if (st0 < st1) {
        copy_x(st0, 0);
        fetch_w(st0);
        store_w();
    }
    __syncthreads();
    for (int st = st0; st < st1; st++) {
        const int cur = (st - st0) % 2;
        const bool more = st + 1 < st1;
        if (more) {
            copy_x(st + 1, cur ^ 1);  // buffer cur ^ 1 was last read before the last barrier
            fetch_w(st + 1);
        }
        decode_w(st);
        if (more) cp_async_wait<1>();
        else cp_async_wait<0>();
        __syncthreads();  // sw and this stage's activations are complete; raw is free
        if constexpr (has_min<TYPE>()) {
            x_sums(cur);
            __syncthreads();
        }
        compute(cur);
        if (more) store_w();
        __syncthreads();  // reads of sw, sxm and buffer cur are done; raw holds stage st + 1
    }

#pragma unroll
    for (int m = 0; m < 2; m++) {
#pragma unroll
        for (int n = 0; n < 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int row = r0 + wm * 32 + 16 * m + g + 8 * (e / 2);
                int tok = t0 + wn * 64 + 8 * n + 2 * t + e % 2;
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

// The second 128-token kernel (gemm_variant 3 and 4): the wide kernel's tile and warps,
// reworked where the wide kernel spends its time:
//   - raw weight bytes go to shared memory by cp.async, not through registers: the wide
//     kernel holds them (up to 36 registers) across the whole multiply, which leaves it at
//     255 registers with spills for Q8_0 and Q6_K;
//   - the per-unit scaling epilogue, most of the instructions of the multiply, takes three
//     instead of four per product for Q4_0/Q8_0 and five instead of eight for Q6_K: the
//     tensor core starts its sum from the bits of 1.5 * 2^23 (the C operand), so a result
//     reads as a float 1.5 * 2^23 + sum and one FADD converts it;
//   - a lane's weight scales of a unit are one float4 load, its activation scales four
//     (scales are stored in the order lanes read them, wpos and xpos), not four and eight;
//   - types with an offset (Q4_1, Q4_K) sum their activations while weights decode, so a
//     stage has two barriers, not three.
// Shared memory stays that of the wide kernel (two blocks per SM on sm_80 and sm_90).
// Rows aligned to only 2 bytes (no cp.async size fits) take the wide kernel.
constexpr int X2STRIDE = WBN;  // floats per unit of the activation-scale tables (xpos order)
constexpr int MAGIC = 0x4B400000;  // the bits of 1.5 * 2^23

// Where token `tok` (0..127) of a unit's activation scales is kept: lane t of the warps of
// token half wn reads tokens wn * 64 + 8 n + 2 t + e (n = 0..7, e = 0, 1) as four float4,
// float4 j holding n = 2 j, 2 j + 1; j is swizzled by bit 1 of t so that the four lanes t
// reading one j fall in distinct banks.
__device__ __forceinline__ int xpos(int tok) {
    int r = tok % 64, n = r / 8, t = (r % 8) / 2;
    return (tok / 64) * 64 + t * 16 + 4 * ((n / 2) ^ ((t >> 1) & 1)) + (n % 2) * 2 + r % 2;
}

template <int TYPE>
struct Wide2Smem {
    static constexpr int RAW = BM * raw_stride<16>(TYPE);  // at least raw_stride<4>
    static constexpr int W = BM * WSTRIDE * 4;
    static constexpr int X = WBN * WSTRIDE * 4;  // one of two buffers
    static constexpr int WD = SU * SSTRIDE * 4;
    static constexpr int WD1 = TYPE == T_Q6_K ? WD : 0;
    static constexpr int WM = has_min<TYPE>() ? WD : 0;
    static constexpr int XD = SU * X2STRIDE * 4;  // one of two buffers
    static constexpr int XM = has_min<TYPE>() ? XD : 0;
    static constexpr int TOTAL = RAW + W + 2 * X + WD + WD1 + WM + 2 * XD + XM;
    static_assert(RAW % 16 == 0 && WD % 16 == 0 && XD % 16 == 0, "float4 alignment");
    // Two blocks per SM on sm_90 (228 KiB, 1 KiB of it reserved per block), as the
    // kernel's launch bounds promise; types that need more (Q5_1) take the wide kernel.
    static constexpr bool TWO_PER_SM = 2 * (TOTAL + 1024) <= 228 * 1024;
};

// UNROLL: units of a stage unrolled in the multiply; 1 holds fewer registers (ptxas
// spills less at 255), 2 gives the scheduler more independent loads (both selectable).
template <int TYPE, int V, int UNROLL>
__global__ void __launch_bounds__(THREADS, 2)
gemm_q8_wide2_kernel(const uint8_t *__restrict__ w, int rows, int cols,
                     const int8_t *__restrict__ xq, const float *__restrict__ xd, int nb,
                     float *__restrict__ y, int accumulate, float *__restrict__ part,
                     int n_slices) {
    pdl_start();
    static_assert(V == 16 || V == 4, "cp.async moves 16 or 4 bytes");
    using L = Wide2Smem<TYPE>;
    static_assert(BM * raw_stride<V>(TYPE) <= L::RAW, "raw tile");
    constexpr int X_CHUNKS = WBN * SU * 2 / THREADS;  // 16-byte activation chunks
    constexpr int XD_PER_THREAD = WBN * SU / THREADS;
    static_assert(X_CHUNKS * THREADS == WBN * SU * 2, "activation chunks per thread");
    static_assert(XD_PER_THREAD * THREADS == WBN * SU, "activation scales per thread");

    extern __shared__ __align__(16) uint8_t smem[];
    uint8_t *raw = smem;
    int *sw = reinterpret_cast<int *>(smem + L::RAW);
    int *sx0 = reinterpret_cast<int *>(smem + L::RAW + L::W);
    uint8_t *rest = smem + L::RAW + L::W + 2 * L::X;
    float *swd = reinterpret_cast<float *>(rest);
    float *swd1 = reinterpret_cast<float *>(rest + L::WD);
    float *swm = reinterpret_cast<float *>(rest + L::WD + L::WD1);
    float *sxd0 = reinterpret_cast<float *>(rest + L::WD + L::WD1 + L::WM);
    float *sxm = reinterpret_cast<float *>(rest + L::WD + L::WD1 + L::WM + 2 * L::XD);

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int wm = warp % 2, wn = warp / 2;
    const int t0 = blockIdx.x * WBN, r0 = blockIdx.y * BM;
    const int n_units = cols / 32;
    const int n_stages = (n_units + SU - 1) / SU;
    const int st0 = (int)((long)blockIdx.z * n_stages / n_slices);
    const int st1 = (int)((long)(blockIdx.z + 1) * n_stages / n_slices);
    const size_t rb = row_bytes(TYPE, cols);

    auto copy_w = [&](int st) { copy_raw<TYPE, V>(raw, w, rows, rb, r0, st, tid); };

    // Activations of stage st (token rows of WSTRIDE words) and their scales ([unit][xpos])
    // into buffer b; tokens past nb and values past the row read as zero.
    auto copy_x = [&](int st, int b) {
        int *sx = sx0 + b * (WBN * WSTRIDE);
        float *sxd = sxd0 + b * (SU * X2STRIDE);
#pragma unroll
        for (int i = 0; i < X_CHUNKS; i++) {
            int c = tid + i * THREADS, tok = c / (2 * SU), q = c % (2 * SU);
            int k = st * SU * 32 + q * 16;
            bool ok = t0 + tok < nb && k < cols;
            cp_async16(sx + tok * WSTRIDE + 4 * q, ok ? xq + (size_t)(t0 + tok) * cols + k : xq,
                       ok);
        }
#pragma unroll
        for (int i = 0; i < XD_PER_THREAD; i++) {
            int c = tid + i * THREADS, tok = c / SU, u = st * SU + c % SU;
            bool ok = t0 + tok < nb && u < n_units;
            cp_async4(sxd + (c % SU) * X2STRIDE + xpos(tok),
                      ok ? xd + (size_t)(t0 + tok) * n_units + u : xd, ok);
        }
    };

    // For types with an offset: each (token, unit)'s d_x * sum of its int8 values.
    auto x_sums = [&](int b) {
        const int *sx = sx0 + b * (WBN * WSTRIDE);
        const float *sxd = sxd0 + b * (SU * X2STRIDE);
#pragma unroll
        for (int i = 0; i < XD_PER_THREAD; i++) {
            int c = tid + i * THREADS, tok = c / SU, u = c % SU;
            const int4 *src = reinterpret_cast<const int4 *>(sx + tok * WSTRIDE + 8 * u);
            int4 a = src[0], e = src[1];
            int s = __dp4a(0x01010101, a.x, __dp4a(0x01010101, a.y,
                    __dp4a(0x01010101, a.z, __dp4a(0x01010101, a.w, 0))));
            s = __dp4a(0x01010101, e.x, __dp4a(0x01010101, e.y,
                __dp4a(0x01010101, e.z, __dp4a(0x01010101, e.w, s))));
            int at = u * X2STRIDE + xpos(tok);
            sxm[at] = sxd[at] * (float)s;
        }
    };

    float acc[2][8][4];
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[m][n][e] = 0.f;

    // Fragments as in the wide kernel: this warp's rows wm * 32 + 16 m + (g, g + 8) and
    // tokens wn * 64 + 8 n + (2t, 2t + 1), by ldmatrix.
    const int lj = lane / 8, lr = lane % 8;
    const int a_off = (wm * 32 + lr + 8 * (lj % 2)) * WSTRIDE + 4 * (lj / 2);
    const int b_off = (wn * 64 + lr + 8 * (lj / 2)) * WSTRIDE + 4 * (lj % 2);
    const int w_at = wm * 32 + g * 4;  // wpos of row wm * 32 + g
    const int x_at = wn * 64 + t * 16;
    const int x_sw = (t >> 1) & 1;
    auto compute = [&](int b) {
        const int *sx = sx0 + b * (WBN * WSTRIDE);
        const float *sxd = sxd0 + b * (SU * X2STRIDE);
#pragma unroll UNROLL
        for (int u = 0; u < SU; u++) {
            uint32_t a[2][4];
            ldsm_x4(a[0], sw + a_off + 8 * u);
            ldsm_x4(a[1], sw + a_off + 16 * WSTRIDE + 8 * u);
            // (m, h) = (0, 0), (0, 1), (1, 0), (1, 1) in x, y, z, w
            const float4 dw = *reinterpret_cast<const float4 *>(swd + u * SSTRIDE + w_at);
            float4 dh = make_float4(0.f, 0.f, 0.f, 0.f), mw = dh;
            if constexpr (TYPE == T_Q6_K)
                dh = *reinterpret_cast<const float4 *>(swd1 + u * SSTRIDE + w_at);
            if constexpr (has_min<TYPE>())
                mw = *reinterpret_cast<const float4 *>(swm + u * SSTRIDE + w_at);
            const float dwr[2][2] = {{dw.x, dw.y}, {dw.z, dw.w}};
            const float dhr[2][2] = {{dh.x, dh.y}, {dh.z, dh.w}};
            const float mwr[2][2] = {{mw.x, mw.y}, {mw.z, mw.w}};
#pragma unroll
            for (int np = 0; np < 4; np++) {
                uint32_t bb[4];
                ldsm_x4(bb, sx + b_off + np * 16 * WSTRIDE + 8 * u);
                const int xo = u * X2STRIDE + x_at + 4 * (np ^ x_sw);
                const float4 dx4 = *reinterpret_cast<const float4 *>(sxd + xo);
                float4 xm4 = make_float4(0.f, 0.f, 0.f, 0.f);
                if constexpr (has_min<TYPE>()) xm4 = *reinterpret_cast<const float4 *>(sxm + xo);
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int n = 2 * np + h;
                    const int b0 = bb[2 * h], b1 = bb[2 * h + 1];
                    const float dx0 = h ? dx4.z : dx4.x, dx1 = h ? dx4.w : dx4.y;
                    const float xm0 = h ? xm4.z : xm4.x, xm1 = h ? xm4.w : xm4.y;
#pragma unroll
                    for (int m = 0; m < 2; m++) {
                        int c[4];
                        float *o = acc[m][n];
                        const float d0 = dwr[m][0], d1 = dwr[m][1];
                        if constexpr (TYPE == T_Q6_K) {
                            int e[4];
                            mma_k16_c(c, a[m][0], a[m][1], b0, MAGIC);
                            mma_k16_c(e, a[m][2], a[m][3], b1, MAGIC);
                            const float h0 = dhr[m][0], h1 = dhr[m][1];
                            o[0] += dx0 * (d0 * i2f_bits(c[0]) + h0 * i2f_bits(e[0]));
                            o[1] += dx1 * (d0 * i2f_bits(c[1]) + h0 * i2f_bits(e[1]));
                            o[2] += dx0 * (d1 * i2f_bits(c[2]) + h1 * i2f_bits(e[2]));
                            o[3] += dx1 * (d1 * i2f_bits(c[3]) + h1 * i2f_bits(e[3]));
                        } else {
                            mma_k32_c(c, a[m][0], a[m][1], a[m][2], a[m][3], b0, b1, MAGIC);
                            o[0] += d0 * dx0 * i2f_bits(c[0]);
                            o[1] += d0 * dx1 * i2f_bits(c[1]);
                            o[2] += d1 * dx0 * i2f_bits(c[2]);
                            o[3] += d1 * dx1 * i2f_bits(c[3]);
                            if constexpr (has_min<TYPE>()) {
                                o[0] += mwr[m][0] * xm0;
                                o[1] += mwr[m][0] * xm1;
                                o[2] += mwr[m][1] * xm0;
                                o[3] += mwr[m][1] * xm1;
                            }
                        }
                    }
                }
            }
        }
    };

    // Per stage, with every branch uniform over the block: decode this stage's raw weights
    // (and sum its activations), barrier, start the next stage's copies into the raw tile
    // and the other activation buffer, multiply, wait for the copies, barrier.
    if (st0 < st1) {
        copy_w(st0);
        copy_x(st0, 0);
        cp_async_commit();
        cp_async_wait<0>();
    }
    __syncthreads();
    for (int st = st0; st < st1; st++) {
        const int cur = (st - st0) % 2;
        decode_raw<TYPE, V, true>(raw, sw, swd, swd1, swm, rows, r0, st, n_units, tid);
        if constexpr (has_min<TYPE>()) x_sums(cur);
        __syncthreads();  // sw, its scales and sxm are complete; raw is free
        if (st + 1 < st1) {
            copy_w(st + 1);
            copy_x(st + 1, cur ^ 1);  // buffer cur ^ 1 was last read before the last barrier
            cp_async_commit();
        }
        compute(cur);
        cp_async_wait<0>();
        __syncthreads();  // reads of sw, sxm and buffer cur are done; stage st + 1 has landed
    }

#pragma unroll
    for (int m = 0; m < 2; m++) {
#pragma unroll
        for (int n = 0; n < 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int row = r0 + wm * 32 + 16 * m + g + 8 * (e / 2);
                int tok = t0 + wn * 64 + 8 * n + 2 * t + e % 2;
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

template <int TYPE, int NT, int V>
int launch(const uint8_t *w, int rows, int cols, const int8_t *xq, const float *xd, int nb,
           float *y, int accumulate, float *ws, size_t ws_floats) {
    constexpr int SMEM = Smem<TYPE, NT>::TOTAL;
    auto kernel = gemm_q8_kernel<TYPE, NT, V>;
    static bool opted = false;
    if (cudaError_t e = opt_in_smem(kernel, SMEM, opted)) return (int)e;
    int row_blocks = (rows + BM - 1) / BM;
    int n_stages = (cols / 32 + SU - 1) / SU;
    int slices = std::min(65535, pick_slices(row_blocks, n_stages, nb, rows, ws, ws_floats));
    wick_launch(kernel, dim3(row_blocks, slices), THREADS, SMEM, w, rows, cols, xq, xd, nb, y,
                accumulate, ws, slices);
    reduce_slices(ws, nb, rows, slices, y, accumulate);
    return (int)cudaGetLastError();
}

template <int TYPE>
bool wide_fits() {
    return (size_t)std::max(WideSmem<TYPE>::TOTAL, Wide2Smem<TYPE>::TOTAL) <= smem_optin();
}

// U2 = 0: gemm_q8_wide_kernel; 1 or 2: gemm_q8_wide2_kernel with UNROLL = U2 (same grid).
template <int TYPE, int V, int U2>
int launch_wide(const uint8_t *w, int rows, int cols, const int8_t *xq, const float *xd, int nb,
                float *y, int accumulate, float *ws, size_t ws_floats) {
    constexpr int SMEM = U2 ? Wide2Smem<TYPE>::TOTAL : WideSmem<TYPE>::TOTAL;
    auto kernel = [] {
        if constexpr (U2 > 0) return gemm_q8_wide2_kernel<TYPE, V, U2>;
        else return gemm_q8_wide_kernel<TYPE, V>;
    }();
    static bool opted = false;
    if (cudaError_t e = opt_in_smem(kernel, SMEM, opted)) return (int)e;
    int tok_blocks = (nb + WBN - 1) / WBN;
    int row_blocks = (rows + BM - 1) / BM;
    int n_stages = (cols / 32 + SU - 1) / SU;
    int slices = pick_slices((long)tok_blocks * row_blocks, n_stages, nb, rows, ws, ws_floats);
    if (row_blocks > 65535 || slices > 65535) return (int)cudaErrorInvalidValue;
    wick_launch(kernel, dim3(tok_blocks, row_blocks, slices), THREADS, SMEM, w, rows, cols, xq,
                xd, nb, y, accumulate, ws, slices);
    reduce_slices(ws, nb, rows, slices, y, accumulate);
    return (int)cudaGetLastError();
}

// 0: the 64-token kernel up to 64 tokens, the wide2 one (UNROLL 1) above; 1: the wide one
// from 17 tokens; 2: the 64-token kernel only, for timing runs; 3 and 4: as 0 and 1 with
// wide2; 5: as 3 with UNROLL 2; 6: as 0 with the wide kernel (the default before wide2,
// which measured 13-17 % faster at pp512 on an H100, docs/PERF.md). Rows aligned to only
// 2 bytes keep the wide kernel.
// Where the wide kernels do not fit the GPU's shared memory, batches above 64 run as
// launches of 64 tokens.
int gemm_variant = 0;

template <int TYPE, int V, int U2>
int launch_wide2(const uint8_t *w, int rows, int cols, const int8_t *xq, const float *xd,
                 int nb, float *y, int accumulate, float *ws, size_t ws_floats) {
    // Q6_K stages are not 16-byte multiples, but 16-byte aligned rows take 16-byte copies
    // (raw_stride).
    if constexpr (V == 4 && TYPE == T_Q6_K) {
        if (row_bytes(TYPE, cols) % 16 == 0 && (uintptr_t)w % 16 == 0)
            return launch_wide<TYPE, 16, U2>(w, rows, cols, xq, xd, nb, y, accumulate, ws,
                                             ws_floats);
    }
    return launch_wide<TYPE, V, U2>(w, rows, cols, xq, xd, nb, y, accumulate, ws, ws_floats);
}

template <int TYPE, int V>
int launch_nt(const uint8_t *w, int rows, int cols, const int8_t *xq, const float *xd, int nb,
              float *y, int accumulate, float *ws, size_t ws_floats) {
    const bool wide = gemm_variant != 2 && wide_fits<TYPE>();
    if (!wide && nb > 64) {
        for (int t0 = 0; t0 < nb; t0 += 64) {
            int e = launch_nt<TYPE, V>(w, rows, cols, xq + (size_t)t0 * cols,
                                       xd + (size_t)t0 * (cols / 32), std::min(64, nb - t0),
                                       y + (size_t)t0 * rows, accumulate, ws, ws_floats);
            if (e != 0) return e;
        }
        return 0;
    }
    if (wide && (nb > 64 || ((gemm_variant == 1 || gemm_variant == 4) && nb > 16))) {
        if constexpr (V != 2 && Wide2Smem<TYPE>::TWO_PER_SM) {
            if (gemm_variant == 0 || (gemm_variant >= 3 && gemm_variant != 6))
                return gemm_variant == 5
                           ? launch_wide2<TYPE, V, 2>(w, rows, cols, xq, xd, nb, y, accumulate,
                                                      ws, ws_floats)
                           : launch_wide2<TYPE, V, 1>(w, rows, cols, xq, xd, nb, y, accumulate,
                                                      ws, ws_floats);
        }
        return launch_wide<TYPE, V, 0>(w, rows, cols, xq, xd, nb, y, accumulate, ws, ws_floats);
    }
    if (nb <= 32)
        return launch<TYPE, 4, V>(w, rows, cols, xq, xd, nb, y, accumulate, ws, ws_floats);
    return launch<TYPE, 8, V>(w, rows, cols, xq, xd, nb, y, accumulate, ws, ws_floats);
}

// The widest slots the rows' alignment allows (see Slot). Stages of every type but Q6_K
// (210-byte super-blocks) are multiples of 16 bytes; Q4_K rows always are.
template <int TYPE>
int launch_type(const uint8_t *w, int rows, int cols, const int8_t *xq, const float *xd,
                int nb, float *y, int accumulate, float *ws, size_t ws_floats) {
    size_t rb = row_bytes(TYPE, cols);
    if constexpr (stage_bytes(TYPE) % 16 == 0) {
        if (rb % 16 == 0 && (uintptr_t)w % 16 == 0)
            return launch_nt<TYPE, 16>(w, rows, cols, xq, xd, nb, y, accumulate, ws, ws_floats);
    }
    if constexpr (TYPE == T_Q4_K || TYPE == T_Q5_K) {
        return (int)cudaErrorMisalignedAddress;  // a cudaMalloc buffer is 256-byte aligned
    } else {
        if (rb % 4 == 0 && (uintptr_t)w % 4 == 0)
            return launch_nt<TYPE, 4>(w, rows, cols, xq, xd, nb, y, accumulate, ws, ws_floats);
        return launch_nt<TYPE, 2>(w, rows, cols, xq, xd, nb, y, accumulate, ws, ws_floats);
    }
}

}  // namespace

extern "C" void wick_gemm_q8_variant(int v) { gemm_variant = v; }

extern "C" int wick_gemm_q8_supports(int type) {
    return type == T_Q4_0 || type == T_Q4_1 || type == T_Q5_0 || type == T_Q5_1 ||
           type == T_Q8_0 || type == T_Q4_K || type == T_Q5_K || type == T_Q6_K;
}

extern "C" int wick_gemm_q8(int type, const void *w, int rows, int cols, const int8_t *xq,
                            const float *xd, int nb, float *y, int accumulate, float *ws,
                            size_t ws_floats) {
    if (!wick_gemm_q8_supports(type) || cols % block_elems(type) != 0 || nb < 1 || rows < 1)
        return (int)cudaErrorInvalidValue;
    const uint8_t *wb = (const uint8_t *)w;
    switch (type) {
        case T_Q4_0: return launch_type<T_Q4_0>(wb, rows, cols, xq, xd, nb, y, accumulate, ws, ws_floats);
        case T_Q4_1: return launch_type<T_Q4_1>(wb, rows, cols, xq, xd, nb, y, accumulate, ws, ws_floats);
        case T_Q5_0: return launch_type<T_Q5_0>(wb, rows, cols, xq, xd, nb, y, accumulate, ws, ws_floats);
        case T_Q5_1: return launch_type<T_Q5_1>(wb, rows, cols, xq, xd, nb, y, accumulate, ws, ws_floats);
        case T_Q8_0: return launch_type<T_Q8_0>(wb, rows, cols, xq, xd, nb, y, accumulate, ws, ws_floats);
        case T_Q4_K: return launch_type<T_Q4_K>(wb, rows, cols, xq, xd, nb, y, accumulate, ws, ws_floats);
        case T_Q5_K: return launch_type<T_Q5_K>(wb, rows, cols, xq, xd, nb, y, accumulate, ws, ws_floats);
        case T_Q6_K: return launch_type<T_Q6_K>(wb, rows, cols, xq, xd, nb, y, accumulate, ws, ws_floats);
        default: return (int)cudaErrorInvalidValue;
    }
}
