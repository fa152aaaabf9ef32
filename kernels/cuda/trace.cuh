// A launch timeline for builds with WICK_CUDA_TRACE=1 (build.rs defines WICK_TRACE): the
// first block of every kernel stamps the global timer as it starts and as its pdl_wait
// returns (the kernel before it has finished), tagged with the launch's grid id. A
// decode step is a recorded graph with PDL overlap, which per-op events (WICK_PROFILE)
// cannot see and ncu serialises away; this shows where its time goes. Other builds
// compile none of it.
#pragma once

#if WICK_TRACE
struct WickTraceRec {
    unsigned long long grid, ns;
    unsigned kind;  // 0 started, 1 released from pdl_wait
    unsigned blocks, threads, pad;
};
constexpr unsigned WICK_TRACE_CAP = 1u << 19;
extern __device__ WickTraceRec wick_trace_buf[WICK_TRACE_CAP];
extern __device__ unsigned wick_trace_n;

__device__ inline void wick_trace_stamp(unsigned kind) {
    if ((blockIdx.x | blockIdx.y | blockIdx.z | threadIdx.x) != 0) return;
    unsigned long long ns, grid;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
    asm volatile("mov.u64 %0, %%gridid;" : "=l"(grid));
    unsigned i = atomicAdd(&wick_trace_n, 1u);
    if (i < WICK_TRACE_CAP)
        wick_trace_buf[i] = {grid, ns, kind, gridDim.x * gridDim.y * gridDim.z, blockDim.x, 0};
}
// A point inside a kernel (kind 2 and up): the first block's thread 0 records `cycles`,
// the SM clocks since a start of the kernel's own choosing, for the phases of one kernel.
__device__ inline void wick_trace_mark(unsigned kind, long long cycles) {
    if ((blockIdx.x | blockIdx.y | blockIdx.z | threadIdx.x) != 0) return;
    unsigned long long grid;
    asm volatile("mov.u64 %0, %%gridid;" : "=l"(grid));
    unsigned i = atomicAdd(&wick_trace_n, 1u);
    if (i < WICK_TRACE_CAP)
        wick_trace_buf[i] = {grid, (unsigned long long)cycles, kind,
                             gridDim.x * gridDim.y * gridDim.z, blockDim.x, 0};
}
#define WICK_TRACE_STAMP(kind) wick_trace_stamp(kind)
#define WICK_TRACE_CLOCK(t) long long t = clock64()
#define WICK_TRACE_MARK(kind, t0) wick_trace_mark(kind, clock64() - (t0))
#else
#define WICK_TRACE_STAMP(kind)
#define WICK_TRACE_CLOCK(t)
#define WICK_TRACE_MARK(kind, t0)
#endif
