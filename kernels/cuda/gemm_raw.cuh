// What the tensor-core product kernels share (gemm_q8.cu: int8 products; gemm_f16.cu: f16
// products): the block's weight tile, raw weight bytes staged in shared memory stage by
// stage, and the split of a product's stages over blocks (split-K) with its fixed-order sum.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include "common.cuh"
#include "mma_s8.cuh"
#include "q8_unit.cuh"
#include "stream.cuh"

namespace {

constexpr int BM = 64;  // weight rows per block
constexpr int THREADS = 128;
constexpr int SU = 8;  // units per stage (one K-quant super-block)

__host__ __device__ constexpr int unit_bytes(int type) {
    return type == T_Q4_0 ? 18 : type == T_Q4_1 ? 20 : type == T_Q5_0 ? 22
         : type == T_Q5_1 ? 24 : type == T_Q8_0 ? 34 : type == T_Q4_K ? 144
         : type == T_Q5_K ? 176 : 210;
}

// Bytes of one row's stage: 8 blocks of 32-value types, one super-block of K-quants.
__host__ __device__ constexpr int stage_bytes(int type) {
    return is_kquant(type) ? unit_bytes(type) : SU * unit_bytes(type);
}

__host__ __device__ constexpr int round16(int n) { return (n + 15) / 16 * 16; }

// Raw weight bytes move by cp.async in slots of V bytes, by the alignment of rows (GGUF
// blocks of 18, 34 and 210 bytes are only 2-byte aligned): V = 16 where rows and stages
// are 16-byte aligned, V = 4 where rows are 4-byte aligned, V = 2 (two 2-byte loads per
// 4-byte slot, through registers) for any row. A stage that starts past a slot boundary is
// loaded from that slot on, so a raw tile row is longer than the stage: V = 4 adds 2 bytes
// (a stage then starts 0 or 2 bytes into its row); V = 16 with stages that are not
// multiples of 16 bytes (Q6_K on 16-byte aligned rows) loads the 16-byte words that cover
// the stage, up to 14 bytes before it.
template <int V>
__host__ __device__ constexpr int raw_stride(int type) {
    return stage_bytes(type) % V == 0 ? stage_bytes(type)
         : V == 4                     ? stage_bytes(type) + 2
         : V == 16                    ? round16(stage_bytes(type) + 14)
                                      : stage_bytes(type);
}

// Where stage st of a row starts in its raw tile row.
template <int V>
__host__ __device__ constexpr int raw_shift(int type, int st) {
    return V == 2 ? 0 : (int)((size_t)st * stage_bytes(type) % V);
}

// The raw bytes of stage st of rows r0.. (of rb bytes each) into the raw tile by cp.async
// (V = 16 or 4) by NT threads, slot p at byte V * p; rows past the matrix and bytes past the row are
// zero-filled. Only whole slots of the row are read (rows end on a slot boundary), so no
// load leaves the weight buffer.
template <int TYPE, int V, int NT = THREADS>
__device__ inline void copy_raw(uint8_t *raw, const uint8_t *__restrict__ w, int rows,
                                size_t rb, int r0, int st, int tid) {
    constexpr int S = stage_bytes(TYPE), RS = raw_stride<V>(TYPE);
    constexpr int N_SLOTS = BM * RS / V;
    static_assert(N_SLOTS * V == BM * RS, "raw tile");
#pragma unroll
    for (int i = 0; i < (N_SLOTS + NT - 1) / NT; i++) {
        int p = tid + i * NT;
        if (p < N_SLOTS) {
            const int row = p / (RS / V);
            const size_t off = (size_t)st * S / V * V + V * (p % (RS / V));
            bool ok = r0 + row < rows && off < rb;
            const uint8_t *src = ok ? w + (size_t)(r0 + row) * rb + off : w;
            if constexpr (V == 16) cp_async16(raw + 16 * p, src, ok);
            else cp_async4(raw + 4 * p, src, ok);
        }
    }
}

// Unit u of a row of the raw tile holding stage st (load_unit), or zeros where `live` is
// false (rows past the matrix, units past the row).
template <int TYPE, int V>
__device__ inline void raw_unit(const uint8_t *raw_row, int st, int u, bool live, Unit &un) {
    if (live) {
        load_unit<TYPE>(raw_row + raw_shift<V>(TYPE, st), u, un);
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++) un.w[j] = 0;
        un.d0 = un.d1 = un.m = 0.f;
    }
}

// Above 48 KiB a block must opt in to its shared memory; once per kernel (`opted`, a
// static of the caller), and not a stream operation, so also legal while a graph records.
template <typename K>
inline cudaError_t opt_in_smem(K kernel, int smem, bool &opted) {
    if (opted) return cudaSuccess;
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    opted = e == cudaSuccess;
    return e;
}

// y (+)= the sum of n_slices partial products, in slice order.
__global__ void gemm_reduce_kernel(const float *__restrict__ part, int n, int n_slices,
                                   float *__restrict__ y, int accumulate) {
    pdl_start();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = 0.f;
    for (int k = 0; k < n_slices; k++) s += part[(size_t)k * n + i];
    y[i] = accumulate ? y[i] + s : s;
}

// Slices of the stages (gridDim.z or .y) for `blocks` output tiles: enough blocks for
// about two per SM, each slice at least two stages long, and the partial sums (nb x rows
// per slice) within the workspace.
inline int pick_slices(long blocks, int n_stages, int nb, int rows, const float *ws,
                       size_t ws_floats) {
    long target = 2 * sm_count();
    long slices = blocks >= target ? 1 : (target + blocks - 1) / blocks;
    slices = std::min(slices, (long)std::max(1, n_stages / 2));
    size_t per_slice = (size_t)nb * rows;
    if (ws == nullptr || per_slice == 0) return 1;
    return (int)std::min((size_t)slices, std::max((size_t)1, ws_floats / per_slice));
}

// After a product launched with `slices` slices: their sum into y.
inline void reduce_slices(const float *ws, int nb, int rows, int slices, float *y,
                          int accumulate) {
    if (slices > 1) {
        size_t n = (size_t)nb * rows;
        wick_launch(gemm_reduce_kernel, (unsigned)((n + 255) / 256), 256, 0, ws, (int)n,
                    slices, y, accumulate);
    }
}

}  // namespace
