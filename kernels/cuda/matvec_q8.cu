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
#include "q8_unit.cuh"
#include "quantize_q8.cuh"
#include "stream.cuh"
#include "wick_cuda.h"

constexpr int MV_WARPS = 4;  // rows per block; small blocks keep every SM busy
constexpr int MV_NB = 8;     // activation rows per pass over the weights

// One warp per 32 values.
__global__ void quantize_q8_kernel(const float *__restrict__ x, int n_blocks,
                                   int8_t *__restrict__ xq, float *__restrict__ xd) {
    pdl_start();
    int blk = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (blk >= n_blocks) return;
    quantize_q8_lane(x[(size_t)blk * 32 + lane], blk, lane, xq, xd);
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
    pdl_start();
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
    wick_launch(quantize_q8_kernel, (n_blocks + per_block - 1) / per_block, per_block * 32, 0,
                x, n_blocks, xq, xd);
    return (int)cudaGetLastError();
}

// Shape of the launch, for tuning runs of the self-test: 0 is the default.
static int mv_variant = 0;
extern "C" void wick_matvec_q8_variant(int v) { mv_variant = v; }

template <int TYPE, int NB, int UNR>
static void launch_mv(const MvTargets &t, int cols, const int8_t *xq, const float *xd, int nb,
                      int accumulate) {
    int n = t.first_block[3];
    wick_launch(matvec_q8_kernel<TYPE, NB, UNR>, n, MV_WARPS * 32, 0, t, cols, xq, xd, nb,
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
