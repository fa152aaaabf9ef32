// Rounding activations to int8 blocks of 32, shared by the kernels that produce them (the
// quantize kernel, and RMSNorm and SwiGLU, which write int8 beside their f32 output so the
// next matrix product needs no launch of its own).
#pragma once

#include <cuda_fp16.h>

#include "common.cuh"

// Called by all 32 lanes of a warp, lane i holding value i of block `blk`:
// q = round(v / d) with d = amax / 127, stored through f16 as the CPU's Q8_0.
__device__ inline void quantize_q8_lane(float v, size_t blk, int lane, int8_t *xq, float *xd) {
    float amax = warp_max(fabsf(v));
    float d = amax / 127.f;
    float id = d != 0.f ? 1.f / d : 0.f;
    xq[blk * 32 + lane] = (int8_t)roundf(v * id);
    if (lane == 0) xd[blk] = __half2float(__float2half(d));
}
