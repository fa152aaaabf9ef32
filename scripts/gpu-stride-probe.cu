// Does the order in which decode's warps read their weight rows cost DRAM bandwidth? The
// streaming matrix-vector kernel (kernels/cuda/matvec_q8.cu) gives each warp two whole rows
// and copies them into its shared-memory ring 576 bytes at a time (a Q4_0 step), so at any
// moment the GPU reads thousands of 576-byte pieces a row apart. This times the same
// copies and ring, with the decoding left out, over the file's row-major layout and over
// a tile-major one (the eight rows of a block stored step by step, so one step of a block
// is 4,608 contiguous bytes), beside a plain coalesced read of the same bytes. Each launch
// reads a different buffer of a pool larger than L2, so nothing comes from L2.
//   nvcc -O3 -arch=sm_90a -o /tmp/stride scripts/gpu-stride-probe.cu && /tmp/stride
#include <cstdint>
#include <cstdio>
#include <cuda_runtime.h>

#include "gpu-read.cuh"

constexpr int WARPS = 4, STEP = 576, PIECES = STEP / 16, STRIDE = STEP + 16;

__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
    uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src));
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void wait_group() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

template <int R, int S>
__global__ void __launch_bounds__(WARPS * 32)
ring_read(const uint8_t *w, int rows, int rb, int tiled, unsigned *sink) {
    extern __shared__ __align__(16) uint8_t smem[];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int row0 = (blockIdx.x * WARPS + warp) * R;
    if (row0 >= rows) return;
    int n_steps = rb / STEP;
    uint8_t *ring = smem + warp * S * R * STRIDE;
    auto src = [&](int r, int st) -> const uint8_t * {
        if (!tiled) return w + (size_t)(row0 + r) * rb + (size_t)st * STEP;
        size_t lr = warp * R + r;
        return w + (((size_t)blockIdx.x * n_steps + st) * (WARPS * R) + lr) * STEP;
    };
    auto issue = [&](int st) {
        if (st < n_steps) {
            uint8_t *dst = ring + (st % S) * R * STRIDE;
            for (int r = 0; r < R; r++)
                for (int p = lane; p < PIECES; p += 32)
                    cp_async16(dst + r * STRIDE + 16 * p, src(r, st) + 16 * p);
        }
        commit();
    };
    for (int s = 0; s < S - 1; s++) issue(s);
    unsigned acc = 0;
    for (int st = 0; st < n_steps; st++) {
        issue(st + S - 1);
        wait_group<S - 1>();
        __syncwarp();
        const uint32_t *cur = reinterpret_cast<const uint32_t *>(ring + (st % S) * R * STRIDE);
        for (int r = 0; r < R; r++)
            for (int k = lane; k < STEP / 4; k += 32) acc ^= cur[r * STRIDE / 4 + k];
        __syncwarp();
    }
    if (acc == 0x12345678) *sink = acc;  // keeps the reads
}

// One launch of the ring kernel with R rows per warp and an S-step ring.
template <int R, int S>
void ring(const uint8_t *w, int rows, int rb, int tiled, unsigned *sink) {
    constexpr int smem = WARPS * S * R * STRIDE;
    static bool opted = false;
    if (!opted) {
        cudaFuncSetAttribute(ring_read<R, S>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        opted = true;
    }
    int blocks = (rows + WARPS * R - 1) / (WARPS * R);
    ring_read<R, S><<<blocks, WARPS * 32, smem>>>(w, rows, rb, tiled, sink);
}

int main() {
    int sms;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    const size_t pool = 3ull << 30;  // far beyond L2
    uint8_t *buf;
    unsigned *sink;
    if (cudaMalloc(&buf, pool) != cudaSuccess || cudaMalloc(&sink, 4) != cudaSuccess) {
        printf("cudaMalloc failed\n");
        return 1;
    }
    cudaMemset(buf, 1, pool);
    struct Shape { const char *name; int rows, rb; };
    // llama3-8b Q4_0 decode products: rows and row bytes.
    Shape shapes[] = {{"o 4096x4096", 4096, 2304},   {"qkv 6144x4096", 6144, 2304},
                      {"down 4096x14336", 4096, 8064}, {"gate+up 28672x4096", 28672, 2304}};
    const char *modes[] = {"R2 S4", "R2 S4 tiled", "R2 S2", "R2 S8", "R1 S4", "R1 S8", "R4 S4", "plain read"};
    const int n_modes = 8;
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    printf("us per launch (GB/s), back-to-back launches, each on bytes not in L2\n%-20s %6s", "product", "MB");
    for (const char *m : modes) printf(" %17s", m);
    printf("\n");
    for (const Shape &s : shapes) {
        size_t bytes = (size_t)s.rows * s.rb, copies = pool / bytes;
        printf("%-20s %6.1f", s.name, bytes / 1e6);
        for (int mode = 0; mode < n_modes; mode++) {
            const int reps = 200;
            auto launch = [&](int i) {
                const uint8_t *w = buf + (i % copies) * bytes;
                switch (mode) {
                    case 0: ring<2, 4>(w, s.rows, s.rb, 0, sink); break;
                    case 1: ring<2, 4>(w, s.rows, s.rb, 1, sink); break;
                    case 2: ring<2, 2>(w, s.rows, s.rb, 0, sink); break;
                    case 3: ring<2, 8>(w, s.rows, s.rb, 0, sink); break;
                    case 4: ring<1, 4>(w, s.rows, s.rb, 0, sink); break;
                    case 5: ring<1, 8>(w, s.rows, s.rb, 0, sink); break;
                    case 6: ring<4, 4>(w, s.rows, s.rb, 0, sink); break;
                    default: plain_read<<<sms * 8, 512>>>((const uint4 *)w, bytes / 16, sink);
                }
            };
            for (int i = 0; i < 20; i++) launch(i);
            cudaEventRecord(a);
            for (int i = 0; i < reps; i++) launch(i);
            cudaEventRecord(b);
            cudaEventSynchronize(b);
            float ms;
            cudaEventElapsedTime(&ms, a, b);
            double us = 1000.0 * ms / reps;
            printf(" %7.2f (%6.0f)", us, bytes / us / 1e3);
        }
        printf("\n");
    }
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) printf("error: %s\n", cudaGetErrorString(e));
    return 0;
}
