// Quantized matrix products: y[b][r] (+)= W[r] . x[b].
//
// Weights stay in their GGUF blocks and are decoded in registers, so each weight byte
// crosses memory once per call whatever the batch: one warp owns one weight row, each lane
// decodes whole 32-value blocks and dots them with up to NB activation rows at once.
// Activations stay f32 (no 8-bit rounding), so this is the math of the CPU's exact path.
#include <cuda_runtime.h>

#include "common.cuh"
#include "stream.cuh"

constexpr int WARPS = 4;
constexpr int NB = 8;  // activation rows per pass over a weight row

template <int TYPE>
__global__ void __launch_bounds__(WARPS * 32)
matmul_kernel(const uint8_t *__restrict__ w, int rows, int cols, const float *__restrict__ x,
              int nb, float *__restrict__ y, int accumulate) {
    int row = blockIdx.x * WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    int n_blocks = cols / 32;
    const uint8_t *wr = w + (size_t)row * row_bytes(TYPE, cols);
    for (int b0 = 0; b0 < nb; b0 += NB) {
        float acc[NB];
#pragma unroll
        for (int j = 0; j < NB; j++) acc[j] = 0.f;
        for (int blk = lane; blk < n_blocks; blk += 32) {
            float v[32];
            dequant_block<TYPE>(wr, blk, v);
#pragma unroll
            for (int j = 0; j < NB; j++) {
                if (b0 + j >= nb) break;
                const float4 *xr =
                    reinterpret_cast<const float4 *>(x + (size_t)(b0 + j) * cols + blk * 32);
                float s = 0.f;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    float4 xv = xr[i];
                    s += v[4 * i] * xv.x + v[4 * i + 1] * xv.y + v[4 * i + 2] * xv.z +
                         v[4 * i + 3] * xv.w;
                }
                acc[j] += s;
            }
        }
        // Float rows (such as a 172-wide FFN) may end in a partial block.
        if constexpr (is_float_type(TYPE)) {
            int i = n_blocks * 32 + lane;
            if (i < cols) {
                float wv = float_at<TYPE>(wr, i);
#pragma unroll
                for (int j = 0; j < NB; j++) {
                    if (b0 + j >= nb) break;
                    acc[j] += wv * x[(size_t)(b0 + j) * cols + i];
                }
            }
        }
#pragma unroll
        for (int j = 0; j < NB; j++) {
            if (b0 + j >= nb) break;
            float s = warp_sum(acc[j]);
            if (lane == 0) {
                float *o = y + (size_t)(b0 + j) * rows + row;
                *o = accumulate ? *o + s : s;
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
