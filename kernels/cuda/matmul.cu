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

constexpr int WARPS = 4;
constexpr int NB = 8;  // activation rows per pass over a weight row

// One warp per weight row. Lane 4g + p decodes values 8p..8p+7 of unit g, g + 8, ...: a
// warp reads 8 consecutive units of weights and 256 consecutive activations per step, all
// coalesced, and each weight byte is decoded once per pass of NB activation rows.
template <int TYPE>
__global__ void __launch_bounds__(WARPS * 32)
matmul_kernel(const uint8_t *__restrict__ w, int rows, int cols, const float *__restrict__ x,
              int nb, float *__restrict__ y, int accumulate) {
    int row = blockIdx.x * WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    int group = lane / 4, part = lane % 4;
    int n_units = cols / 32;
    const uint8_t *wr = w + (size_t)row * row_bytes(TYPE, cols);
    for (int b0 = 0; b0 < nb; b0 += NB) {
        float acc[NB];
#pragma unroll
        for (int j = 0; j < NB; j++) acc[j] = 0.f;
        for (int u = group; u < n_units; u += 8) {
            float v[8];
            dequant8<TYPE>(wr, u, part, v);
            int off = u * 32 + part * 8;
#pragma unroll
            for (int j = 0; j < NB; j++) {
                if (b0 + j < nb) {
                    const float4 *xr =
                        reinterpret_cast<const float4 *>(x + (size_t)(b0 + j) * cols + off);
                    float4 a = xr[0], c = xr[1];
                    acc[j] += v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w +
                              v[4] * c.x + v[5] * c.y + v[6] * c.z + v[7] * c.w;
                }
            }
        }
        // Float rows (such as a 172-wide FFN) may end in a partial unit.
        if constexpr (is_float_type(TYPE)) {
            int i = n_units * 32 + lane;
            if (i < cols) {
                float wv = float_at<TYPE>(wr, i);
#pragma unroll
                for (int j = 0; j < NB; j++)
                    if (b0 + j < nb) acc[j] += wv * x[(size_t)(b0 + j) * cols + i];
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

extern "C" int wick_matmul(int type, const void *w, int rows, int cols, const float *x, int nb,
                           float *y, int accumulate) {
    // Quantized rows are whole blocks (256 values for K-quants); float rows need 16-byte
    // aligned activation rows.
    if (is_float_type(type) ? cols % 4 != 0 : cols % block_elems(type) != 0)
        return (int)cudaErrorInvalidValue;
    dim3 grid((rows + WARPS - 1) / WARPS), block(WARPS * 32);
#define LAUNCH(T)                                                                       \
    matmul_kernel<T><<<grid, block, 0, wick_stream>>>((const uint8_t *)w, rows, cols, x, nb, y, accumulate)
    WICK_DISPATCH_TYPE(type, LAUNCH)
#undef LAUNCH
    return (int)cudaGetLastError();
}
