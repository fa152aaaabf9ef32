// Can the decode products' way of reading weights reach the copy rate when nothing else
// is done? The skeleton of matvec_q8.cu's streaming kernel on its bulk path (blocks of 4
// warps, 2 rows a warp, a 4-slot ring of 1,152-byte steps per row filled by one lane's bulk
// copies, an mbarrier per slot), with the decoding replaced by WORK dummy instructions per
// lane and step (the real step loop is about 300), timed on a layer's four Q4_0 products
// of llama3-8b against a plain streaming read of the same bytes. Each run reads bytes that
// are not in L2. Hopper only:
//   nvcc -O3 -arch=sm_90a -o /tmp/pattern scripts/gpu-stream-pattern.cu && /tmp/pattern
#include <cstdint>
#include <cstdio>
#include <cuda_runtime.h>

#include "../kernels/cuda/bulk_copy.cuh"
#include "gpu-read.cuh"

constexpr int WARPS = 4, R = 2, S = 4, STEP = 1152, STRIDE = STEP + 16;
constexpr int SMEM = WARPS * S * R * STRIDE + WARPS * S * 8;

template <int WORK>
__global__ void __launch_bounds__(WARPS * 32) stream_rows(const uint8_t *w, int rows, int rb,
                                                          unsigned *sink) {
    extern __shared__ __align__(16) uint8_t smem[];
    int warp = __shfl_sync(~0u, threadIdx.x / 32, 0), lane = threadIdx.x % 32;
    int row0 = (blockIdx.x * WARPS + warp) * R;
    if (row0 >= rows) return;
    uint8_t *ring = smem + warp * S * R * STRIDE;
    uint32_t ring_s = smem_addr(ring);
    uint32_t bars = smem_addr(smem) + WARPS * S * R * STRIDE + warp * S * 8;
    if (lane == 0) {
        for (int s = 0; s < S; s++) mbar_init(bars + 8 * s);
        mbar_init_fence();
    }
    __syncwarp();
    int n_steps = (rb + STEP - 1) / STEP;
    const uint8_t *src = w + (size_t)row0 * rb;
    auto issue = [&](int st) {
        if (st < n_steps && lane == 0) {
            uint32_t slot = st & (S - 1), off = (uint32_t)st * STEP;
            uint32_t n = (uint32_t)rb - off < (uint32_t)STEP ? (uint32_t)rb - off : STEP;
            mbar_expect(bars + 8 * slot, n * R);
            for (int r = 0; r < R; r++)
                bulk_copy(ring_s + (slot * R + r) * STRIDE, src + (size_t)r * rb + off, n,
                          bars + 8 * slot);
        }
    };
    for (int s = 0; s < S - 1; s++) issue(s);
    unsigned a0 = lane, a1 = lane * 3, a2 = lane * 5, a3 = lane * 7;
#pragma unroll 1
    for (int st = 0; st < n_steps; st++) {
        issue(st + S - 1);
        uint32_t slot = st & (S - 1);
        mbar_wait(bars + 8 * slot, (st / S) & 1);
        const uint32_t *cur = reinterpret_cast<const uint32_t *>(ring + slot * R * STRIDE);
        // One word per lane, row and unit, where the decoder reads its units.
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int g = 0; g < 2; g++) a0 += cur[r * STRIDE / 4 + ((32 * g + lane) * 18) / 4];
        // Four independent chains, as the decoder's rows and units give it.
#pragma unroll
        for (int i = 0; i < WORK / 4; i++) {
            a0 = a0 * 1664525u + a1;
            a1 = a1 * 22695477u + a2;
            a2 = a2 * 1103515245u + a3;
            a3 = a3 * 134775813u + a0;
        }
        __syncwarp();
    }
    if ((a0 ^ a1 ^ a2 ^ a3) == 0x12345678u) *sink = a0;
}

template <int WORK>
static void run_stream(const uint8_t *w, int rows, int rb, unsigned *sink) {
    cudaFuncSetAttribute(stream_rows<WORK>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
    int blocks = (rows + WARPS * R - 1) / (WARPS * R);
    stream_rows<WORK><<<blocks, WARPS * 32, SMEM>>>(w, rows, rb, sink);
}

int main() {
    const size_t big = 2ull << 30;  // runs rotate through it, so no run starts in L2
    uint8_t *buf;
    unsigned *sink;
    if (cudaMalloc(&buf, big) != cudaSuccess) return 1;
    cudaMalloc(&sink, 4);
    cudaMemset(buf, 1, big);
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    struct Case {
        const char *name;
        int rows, rb;
    } cases[] = {{"gate+up 28672x4096", 28672, 2304},
                 {"down 4096x14336", 4096, 8064},
                 {"q/k/v 6144x4096", 6144, 2304},
                 {"o 4096x4096", 4096, 2304}};
    const int works[] = {0, 64, 128, 256};
    printf("product              MB   | GB/s: plain read  ring, dummy instructions per step: 0  64  128  256\n");
    size_t at = 0;
    for (const Case &c : cases) {
        size_t bytes = (size_t)c.rows * c.rb;
        printf("%-19s %5.1f  |", c.name, bytes / 1e6);
        for (int m = -1; m < 4; m++) {
            float best = 1e9f;
            for (int rep = 0; rep < 6; rep++) {
                if (at + bytes > big) at = 0;
                const uint8_t *w = buf + at;
                at += (bytes + 255) & ~255ull;
                cudaEventRecord(a);
                if (m < 0)
                    plain_read<<<sms * 8, 256>>>((const uint4 *)w, bytes / 16, sink);
                else if (works[m] == 0)
                    run_stream<0>(w, c.rows, c.rb, sink);
                else if (works[m] == 64)
                    run_stream<64>(w, c.rows, c.rb, sink);
                else if (works[m] == 128)
                    run_stream<128>(w, c.rows, c.rb, sink);
                else
                    run_stream<256>(w, c.rows, c.rb, sink);
                cudaEventRecord(b);
                cudaEventSynchronize(b);
                float ms;
                cudaEventElapsedTime(&ms, a, b);
                if (rep > 0 && ms < best) best = ms;
            }
            cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) {
                printf(" %s\n", cudaGetErrorString(e));
                return 1;
            }
            printf(" %7.0f", bytes / (best * 1e-3) / 1e9);
            if (m < 0) printf("  ");
        }
        printf("\n");
    }
    return 0;
}
