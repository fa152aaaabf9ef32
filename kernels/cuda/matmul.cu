// Quantized matrix products: y[b][r] (+)= W[r] . x[b].
//
// Weights stay in their GGUF blocks and are decoded in registers, so each weight byte
// crosses memory once per call whatever the batch: one warp owns one weight row, each lane
// decodes whole 32-value blocks and dots them with up to NB activation rows at once.
// Activations stay f32 (no 8-bit rounding), so this is the math of the CPU's exact path.
#include <cuda_runtime.h>

#include "common.cuh"
#include "dequant8.cuh"
#include "stream.cuh"

constexpr int WARPS = 8;
constexpr int NB = 8;        // activation rows per pass over a weight row
constexpr int CHUNK = 1024;  // activation columns staged in shared memory at a time

// Each block owns WARPS * ROWS_PER_WARP weight rows and stages a chunk of the activations in shared
// memory, so every activation value is read from L2 once per block rather than once per
// row. Within a warp, lane 4g + p decodes values 8p..8p+7 of units g, g + 8, ...: weight
// loads are contiguous across the warp and shared-memory reads are conflict-free. Each
// weight byte is decoded once per pass of NB activation rows.
// ROWS_PER_WARP is 1 for single-token products (more warps in flight over the weights,
// which is what a memory-bound decode needs) and 2 for batches (each staged activation
// chunk and each decoded unit serve two rows).
template <int TYPE, int ROWS_PER_WARP>
__global__ void __launch_bounds__(WARPS * 32)
matmul_kernel(const uint8_t *__restrict__ w, int rows, int cols, const float *__restrict__ x,
              int nb, float *__restrict__ y, int accumulate) {
    pdl_start();
    __shared__ __align__(16) float xs[NB][CHUNK];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int group = lane / 4, part = lane % 4;
    int row0 = (blockIdx.x * WARPS + warp) * ROWS_PER_WARP;
    int n_units = cols / 32;
    for (int b0 = 0; b0 < nb; b0 += NB) {
        int nbp = min(NB, nb - b0);
        float acc[ROWS_PER_WARP][NB];
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; r++)
#pragma unroll
            for (int j = 0; j < NB; j++) acc[r][j] = 0.f;
        for (int c0 = 0; c0 < n_units * 32; c0 += CHUNK) {
            int cl = min(CHUNK, n_units * 32 - c0);
            __syncthreads();
            for (int i = threadIdx.x; i < nbp * cl / 4; i += WARPS * 32) {
                int j = i / (cl / 4), k = i % (cl / 4);
                reinterpret_cast<float4 *>(xs[j])[k] =
                    reinterpret_cast<const float4 *>(x + (size_t)(b0 + j) * cols + c0)[k];
            }
            __syncthreads();
            // Two units of each of the warp's rows per step, all loaded before any math,
            // so four independent weight loads are in flight per lane.
            int nu = cl / 32;
            for (int u = group; u < nu; u += 16) {
                float v[ROWS_PER_WARP][2][8];
#pragma unroll
                for (int r = 0; r < ROWS_PER_WARP; r++) {
#pragma unroll
                    for (int k = 0; k < 2; k++) {
                        int uu = u + 8 * k;
                        if (row0 + r < rows && uu < nu) {
                            const uint8_t *wr = w + (size_t)(row0 + r) * row_bytes(TYPE, cols);
                            dequant8<TYPE>(wr, c0 / 32 + uu, part, v[r][k]);
                        } else {
#pragma unroll
                            for (int i = 0; i < 8; i++) v[r][k][i] = 0.f;
                        }
                    }
                }
#pragma unroll
                for (int k = 0; k < 2; k++) {
                    int uu = u + 8 * k;
                    if (uu >= nu) break;
#pragma unroll
                    for (int j = 0; j < NB; j++) {
                        if (j < nbp) {
                            const float4 *xr =
                                reinterpret_cast<const float4 *>(&xs[j][uu * 32 + part * 8]);
                            float4 a = xr[0], c = xr[1];
#pragma unroll
                            for (int r = 0; r < ROWS_PER_WARP; r++) {
                                const float *vv = v[r][k];
                                acc[r][j] += vv[0] * a.x + vv[1] * a.y + vv[2] * a.z +
                                             vv[3] * a.w + vv[4] * c.x + vv[5] * c.y +
                                             vv[6] * c.z + vv[7] * c.w;
                            }
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; r++) {
            int row = row0 + r;
            if (row >= rows) continue;
            // Float rows (such as a 172-wide FFN) may end in a partial unit.
            if constexpr (is_float_type(TYPE)) {
                int i = n_units * 32 + lane;
                if (i < cols) {
                    float wv = float_at<TYPE>(w + (size_t)row * row_bytes(TYPE, cols), i);
#pragma unroll
                    for (int j = 0; j < NB; j++)
                        if (j < nbp) acc[r][j] += wv * x[(size_t)(b0 + j) * cols + i];
                }
            }
#pragma unroll
            for (int j = 0; j < NB; j++) {
                if (j < nbp) {
                    float s = warp_sum(acc[r][j]);
                    if (lane == 0) {
                        float *o = y + (size_t)(b0 + j) * rows + row;
                        *o = accumulate ? *o + s : s;
                    }
                }
            }
        }
    }
}

extern "C" int wick_matmul(int type, const void *w, int rows, int cols, const float *x, int nb,
                           float *y, int accumulate) {
    // Quantized rows are whole blocks (256 values for K-quants); float rows need 16-byte
    // aligned activation rows.
    if (is_float_type(type) ? cols % 4 != 0 : cols % block_elems(type) != 0)
        return (int)cudaErrorInvalidValue;
    int rpw = nb == 1 ? 1 : 2;
    dim3 grid((rows + WARPS * rpw - 1) / (WARPS * rpw)), block(WARPS * 32);
#define LAUNCH(T)                                                                          \
    if (rpw == 1)                                                                          \
        wick_launch(matmul_kernel<T, 1>, grid, block, 0, (const uint8_t *)w, rows, cols, \
                                                             x, nb, y, accumulate);        \
    else                                                                                   \
        wick_launch(matmul_kernel<T, 2>, grid, block, 0, (const uint8_t *)w, rows, cols, \
                                                             x, nb, y, accumulate)
    WICK_DISPATCH_TYPE(type, LAUNCH)
#undef LAUNCH
    return (int)cudaGetLastError();
}
