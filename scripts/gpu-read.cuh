// A plain coalesced read of n 16-byte words, bypassing L1: the reference speed that the
// microbenchmarks in scripts/gpu-*.cu hold their reading patterns against.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

__global__ void plain_read(const uint4 *p, size_t n, unsigned *sink) {
    uint4 acc = {0, 0, 0, 0};
    for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint4 v;
        asm volatile("ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                     : "l"(p + i));
        acc.x ^= v.x, acc.y ^= v.y, acc.z ^= v.z, acc.w ^= v.w;
    }
    if ((acc.x ^ acc.y ^ acc.z ^ acc.w) == 0x12345678) *sink = 1;  // keeps the loads
}
