// What happens between two decode steps? A step is a recorded graph of ~260 launches
// chained by PDL; after it, outside the graph, the pick (one small launch) and an event the
// host waits on. The host queues the next step before it waits for this one's event, as
// `wick gen` does (spec::Plain::next_ahead). What does the boundary between two steps
// cost? (A mean in the trace summary once made it look like 65 us: docs/PERF.md, session
// 24.) This times the gap with %globaltimer stamps taken by the first block of every
// launch, as it starts and as it ends, for:
//   graph sizes of 8, 64 and 260 launches (16 blocks of 128 threads each);
//   the pick writing its result to device memory or to mapped, pinned host memory;
//   no pick at all (the graph, then the event).
// Hopper only:
//   nvcc -O3 -arch=sm_90a -o /tmp/gap scripts/gpu-graph-gap.cu && /tmp/gap
#include <cstdio>
#include <cuda_runtime.h>
#include <vector>

#include "../kernels/cuda/stream.cuh"

cudaStream_t wick_stream;
bool wick_pdl = true, wick_early;

struct Stamp {
    unsigned long long start, end;
    int kind;  // 0: a graph's first launch, 1: another launch of the graph, 2: the pick
    int pad;
};

__device__ inline unsigned long long now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}

__device__ unsigned stamp_count;

__device__ inline void stamp(Stamp *st, int cap, int kind, unsigned long long t0) {
    unsigned i = atomicAdd(&stamp_count, 1u);
    if (i < (unsigned)cap) st[i] = {t0, now(), kind, 0};
}

// One link of the chain: waits for the one before, reads what it wrote, writes.
__global__ void link(int first, float *buf, Stamp *st, int cap) {
    pdl_trigger();
    pdl_wait();
    unsigned long long t0 = now();
    float v = buf[blockIdx.x];
    buf[blockIdx.x] = v + 1.f;
    __syncthreads();
    if (blockIdx.x == 0 && threadIdx.x == 0) stamp(st, cap, first ? 0 : 1, t0);
}

// The pick's shape: one block that reads the step's output and writes one int.
__global__ void pick(const float *buf, int *out, Stamp *st, int cap) {
    pdl_start();
    unsigned long long t0 = now();
    __shared__ float s;
    if (threadIdx.x == 0) s = buf[0];
    __syncthreads();
    if (threadIdx.x == 0) {
        *out = (int)s;
        stamp(st, cap, 2, t0);
    }
}

int main() {
    cudaSetDeviceFlags(cudaDeviceMapHost);
    cudaStreamCreateWithFlags(&wick_stream, cudaStreamNonBlocking);
    cudaStream_t s = wick_stream;
    float *buf;
    cudaMalloc(&buf, 4096 * 4);
    cudaMemset(buf, 0, 4096 * 4);
    int *dev_out, *host_out, *mapped_out;
    cudaMalloc(&dev_out, 16);
    cudaHostAlloc(&host_out, 16, cudaHostAllocMapped);
    cudaHostGetDevicePointer(&mapped_out, host_out, 0);
    const int cap = 1 << 16, steps = 40;
    Stamp *st;
    cudaMalloc(&st, cap * sizeof(Stamp));
    std::vector<Stamp> h(cap);
    cudaEvent_t ev[steps];
    for (auto &e : ev) cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
    printf("launches  pick      | gap after a step (us): mean  min  max | step (us)\n");
    for (int n : {8, 64, 260})
        for (int mode = 0; mode < 3; mode++) {  // 0 no pick, 1 pick to device, 2 pick to host
            cudaGraph_t g;
            cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
            for (int i = 0; i < n; i++) wick_launch(link, 16, 128, 0, i == 0, buf, st, cap);
            cudaStreamEndCapture(s, &g);
            cudaGraphExec_t ge;
            cudaGraphInstantiate(&ge, g, 0);
            unsigned zero = 0;
            cudaMemcpyToSymbol(stamp_count, &zero, 4);
            cudaDeviceSynchronize();
            // Queued one step ahead of the host, as wick's greedy generation is.
            for (int k = 0; k < steps; k++) {
                cudaGraphLaunch(ge, s);
                if (mode) wick_launch(pick, 1, 1024, 0, (const float *)buf,
                                      mode == 1 ? dev_out : mapped_out, st, cap);
                cudaEventRecord(ev[k], s);
                if (k > 0) cudaEventSynchronize(ev[k - 1]);
            }
            cudaDeviceSynchronize();
            cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) {
                printf("error: %s\n", cudaGetErrorString(e));
                return 1;
            }
            unsigned count;
            cudaMemcpyFromSymbol(&count, stamp_count, 4);
            count = count < (unsigned)cap ? count : cap;
            cudaMemcpy(h.data(), st, count * sizeof(Stamp), cudaMemcpyDeviceToHost);
            // Gap: from the end of the launch before a graph's first launch to its start,
            // skipping the first steps (warm-up).
            double sum = 0, mn = 1e18, mx = 0, first_start = 0, last_start = 0;
            int gaps = 0, starts = 0;
            for (unsigned i = 1; i < count; i++) {
                if (h[i].kind != 0) continue;
                starts++;
                if (starts < 5) continue;
                if (starts == 5) first_start = (double)h[i].start;
                last_start = (double)h[i].start;
                double gap = ((double)h[i].start - (double)h[i - 1].end) / 1000.0;
                sum += gap;
                mn = gap < mn ? gap : mn;
                mx = gap > mx ? gap : mx;
                gaps++;
            }
            const char *names[] = {"none", "to device", "to host"};
            printf("%8d  %-9s | %6.2f %6.2f %6.2f | %8.2f\n", n, names[mode], sum / gaps, mn, mx,
                   (last_start - first_start) / 1000.0 / (gaps - 1));
            cudaGraphExecDestroy(ge);
            cudaGraphDestroy(g);
        }
    return 0;
}
