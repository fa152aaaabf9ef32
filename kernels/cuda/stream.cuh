// The one stream every kernel and copy goes on. A non-default stream, so that a decode step
// can be captured into a CUDA graph and replayed.
//
// Kernels go through `launch`, which on Hopper marks each launch as a programmatic
// dependent of the one before (PDL): the next kernel's blocks are scheduled while the
// previous kernel drains, and each block waits in pdl_wait until its predecessor has
// finished and its writes are visible. A decode step is ~350 mostly short kernels, and the
// gap between two of them otherwise costs about as much as a small kernel itself.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "trace.cuh"

extern cudaStream_t wick_stream;
extern bool wick_pdl;  // set by wick_cuda_init: compute capability 9.0+, WICK_PDL not "0"
// Kernels that read weights before pdl_wait (WICK_EARLY not "0"; set by wick_cuda_init).
extern bool wick_early;

// pdl_start in two halves, for kernels that have work to do before waiting: reads of
// memory that no kernel writes (weights) may go between them.
__device__ inline void pdl_trigger() {
    WICK_TRACE_STAMP(0);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ inline void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    WICK_TRACE_STAMP(1);
}

// Every kernel starts with these two (or pdl_start). Waiting is what makes PDL safe: no
// kernel reads or writes memory before the kernel launched before it has completed (so,
// transitively, every earlier kernel). Without a programmatic launch both are no-ops.
__device__ inline void pdl_start() {
    pdl_trigger();
    pdl_wait();
}

template <typename... Params, typename... Args>
inline cudaError_t wick_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                          Args &&...args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = wick_stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = wick_pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}
