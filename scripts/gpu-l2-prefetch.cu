// Does an L2 prefetch issued by one kernel make the next kernel's reads faster? Times a
// plain read of 4, 16 and 32 MB right after: nothing (cold), a full read of the same bytes
// (L2 warm), bulk L2 prefetches (cp.async.bulk.prefetch.L2, sm_90) from 132 or 4 blocks,
// and one prefetch.global.L2 per 128-byte line; a 30 us spin between lets prefetches land,
// as a short kernel between two products would (docs/PERF.md, session 15). Hopper only:
//   nvcc -O3 -arch=sm_90a -o /tmp/l2pf scripts/gpu-l2-prefetch.cu && /tmp/l2pf
#include <cstdio>
#include <cuda_runtime.h>

#include "gpu-read.cuh"

__global__ void bulk_prefetch(const char *p, size_t bytes) {
    size_t slots = (size_t)gridDim.x * blockDim.x, per = (bytes / slots + 15) & ~15ull;
    size_t lo = per * (blockIdx.x * blockDim.x + threadIdx.x), hi = lo + per < bytes ? lo + per : bytes;
    for (size_t o = lo; o < hi; o += 16384) {
        size_t e = o + 16384 < hi ? o + 16384 : hi;
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + o), "r"((unsigned)(e - o))
                     : "memory");
    }
}

__global__ void line_prefetch(const char *p, size_t bytes) {
    for (size_t o = (blockIdx.x * blockDim.x + threadIdx.x) * 128ull; o < bytes;
         o += (size_t)gridDim.x * blockDim.x * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(p + o));
}

__global__ void spin(long cycles) {
    long t0 = clock64();
    while (clock64() - t0 < cycles) {
    }
}

int main() {
    const size_t big = 1ull << 30, flush_bytes = 256ull << 20;
    char *buf, *flush;
    unsigned *sink;
    cudaMalloc(&buf, big);
    cudaMalloc(&flush, flush_bytes);
    cudaMalloc(&sink, 4);
    cudaMemset(buf, 1, big);
    cudaMemset(flush, 2, flush_bytes);
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    const char *names[] = {"cold", "read before", "bulk prefetch, 132 blocks", "line prefetch",
                           "bulk prefetch, 4 blocks"};
    for (size_t sz : {4ull << 20, 16ull << 20, 32ull << 20}) {
        for (int mode = 0; mode < 5; mode++) {
            float best = 1e9f;
            for (int rep = 0; rep < 5; rep++) {
                char *x = buf + (size_t)rep * (64ull << 20);
                plain_read<<<sms * 8, 256>>>((const uint4 *)flush, flush_bytes / 16, sink);  // evicts
                if (mode == 1) plain_read<<<sms * 8, 256>>>((const uint4 *)x, sz / 16, sink);
                if (mode == 2) bulk_prefetch<<<sms, 32>>>(x, sz);
                if (mode == 3) line_prefetch<<<sms * 4, 256>>>(x, sz);
                if (mode == 4) bulk_prefetch<<<4, 32>>>(x, sz);
                spin<<<1, 32>>>(30 * 1755);  // about 30 us
                cudaEventRecord(a);
                plain_read<<<sms * 8, 256>>>((const uint4 *)x, sz / 16, sink);
                cudaEventRecord(b);
                cudaEventSynchronize(b);
                float ms;
                cudaEventElapsedTime(&ms, a, b);
                if (ms < best) best = ms;
            }
            printf("%3zu MB %-26s %7.2f us  %6.0f GB/s\n", sz >> 20, names[mode], best * 1e3,
                   sz / (best * 1e-3) / 1e9);
        }
    }
    for (int blocks : {4, 132, 528}) {
        cudaEventRecord(a);
        bulk_prefetch<<<blocks, 32>>>(buf, 64ull << 20);
        cudaEventRecord(b);
        cudaEventSynchronize(b);
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        printf("bulk prefetch kernel, 64 MB from %d blocks: %.2f us\n", blocks, ms * 1e3);
    }
    cudaError_t e = cudaGetLastError();
    printf("%s\n", cudaGetErrorString(e));
    return e == cudaSuccess ? 0 : 1;
}
