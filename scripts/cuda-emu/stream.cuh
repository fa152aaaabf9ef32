// Host stand-in for kernels/cuda/stream.cuh: a launch runs the kernel through emu_run
// (harness.cpp), and programmatic dependent launch does not exist on the host.
#pragma once

#include <cuda_runtime.h>

#include "trace.cuh"  // no WICK_TRACE here: its stamps and marks compile to nothing

extern cudaStream_t wick_stream;

inline void pdl_start() {}
inline void pdl_trigger() {}
inline void pdl_wait() {}
extern bool wick_early;

template <class K, class... A>
cudaError_t wick_launch(K kernel, dim3 grid, dim3 block, size_t smem, A... args) {
    emu_run(kernel, emu_cfg(grid, block, smem), args...);
    return cudaSuccess;
}
