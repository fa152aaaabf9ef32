// A launch timeline for builds with WICK_CUDA_TRACE=1 (build.rs defines WICK_TRACE): the
// first block of every kernel stamps the global timer as it starts and as its pdl_wait
// returns (the kernel before it has finished), tagged with the launch's grid id. A
// decode step is a recorded graph with PDL overlap, which per-op events (WICK_PROFILE)
// cannot see and ncu serialises away; this shows where its time goes. Other builds
// compile none of it.
#pragma once

#if WICK_TRACE
struct WickTraceRec {
    unsigned long long grid, ns;  // ns: the global timer, or for a mark its clock count
    unsigned kind;  // 0 started, 1 released from pdl_wait, 2 and up a kernel's own marks
    unsigned blocks, threads, pad;
};
constexpr unsigned WICK_TRACE_CAP = 1u << 19;
extern __device__ WickTraceRec wick_trace_buf[WICK_TRACE_CAP];
extern __device__ unsigned wick_trace_n;

// Appends one record, from the first block's thread 0 only.
__device__ inline void wick_trace_record(unsigned kind, unsigned long long value) {
    if ((blockIdx.x | blockIdx.y | blockIdx.z | threadIdx.x) != 0) return;
    unsigned long long grid;
    asm volatile("mov.u64 %0, %%gridid;" : "=l"(grid));
    unsigned i = atomicAdd(&wick_trace_n, 1u);
    if (i < WICK_TRACE_CAP)
        wick_trace_buf[i] = {grid, value, kind, gridDim.x * gridDim.y * gridDim.z, blockDim.x, 0};
}
__device__ inline void wick_trace_stamp(unsigned kind) {
    unsigned long long ns;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
    wick_trace_record(kind, ns);
}
#define WICK_TRACE_STAMP(kind) wick_trace_stamp(kind)
// A point inside a kernel (kind 2 and up): the SM clocks since a start of the kernel's own
// choosing (WICK_TRACE_CLOCK), for the phases of one kernel.
#define WICK_TRACE_CLOCK(t) long long t = clock64()
#define WICK_TRACE_MARK(kind, t0) wick_trace_record(kind, clock64() - (t0))
#else
#define WICK_TRACE_STAMP(kind)
#define WICK_TRACE_CLOCK(t)
#define WICK_TRACE_MARK(kind, t0)
#endif
