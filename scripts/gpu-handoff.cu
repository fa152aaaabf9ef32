// What does handing off from one kernel to the next cost inside a recorded graph? A decode
// step is ~300 launches in a chain, each waiting for the one before. Times a chain of N
// launches (blocks of 128 threads, each block reading what the block before wrote) with
// two ways to wait:
//   pdl:  programmatic launch, griddepcontrol.wait (the kernel before has completed and
//         its memory is flushed), as every wick kernel waits today;
//   flag: programmatic launch, no griddepcontrol.wait; each block of the kernel before
//         fences and adds one to a counter as it ends, and thread 0 of each block spins
//         until the counter holds the kernel before's block count.
// and for reference plain launches (no PDL). Dynamic shared memory per block limits how
// many blocks an SM holds, as the products' rings do. Hopper only:
//   nvcc -O3 -arch=sm_90a -o /tmp/handoff scripts/gpu-handoff.cu && /tmp/handoff
#include <cstdio>
#include <cuda_runtime.h>

#include "../kernels/cuda/stream.cuh"

constexpr int N = 256;  // launches in the chain

__device__ inline unsigned ld_acquire(const unsigned *p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// mode 0: plain or pdl wait (griddepcontrol.wait is a no-op without a programmatic launch);
// mode 1: flag wait.
template <int MODE>
__global__ void link(int i, int prev_blocks, float *buf, unsigned *cnt) {
    extern __shared__ float smem[];
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if constexpr (MODE == 0) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
    } else {
        if (i > 0 && threadIdx.x == 0)
            while (ld_acquire(cnt + i - 1) < (unsigned)prev_blocks) __nanosleep(32);
        __syncthreads();
    }
    // A dependent read and a write per block: the chain is real.
    if (threadIdx.x == 0) {
        float v = i > 0 ? buf[(size_t)(i - 1) * 4096 + blockIdx.x % prev_blocks] : 0.f;
        smem[0] = v;
        buf[(size_t)i * 4096 + blockIdx.x] = v + 1.f;
    }
    if constexpr (MODE == 1) {
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            atomicAdd(cnt + i, 1u);
        }
    }
}

// The launch path of every wick kernel (kernels/cuda/stream.cuh), with PDL switched per chain.
cudaStream_t wick_stream;
bool wick_pdl, wick_early;

template <int MODE>
static void launch(int i, int blocks, int prev, size_t smem, bool pdl, float *buf, unsigned *cnt) {
    wick_pdl = pdl;
    wick_launch(link<MODE>, blocks, 128, smem, i, prev, buf, cnt);
}

int main() {
    float *buf;
    unsigned *cnt;
    cudaMalloc(&buf, (size_t)N * 4096 * 4);
    cudaMalloc(&cnt, N * 4);
    cudaStreamCreateWithFlags(&wick_stream, cudaStreamNonBlocking);
    cudaStream_t s = wick_stream;
    for (int m = 0; m < 2; m++)
        cudaFuncSetAttribute(m ? (void *)link<1> : (void *)link<0>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024);
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    const char *names[] = {"plain", "pdl", "flag"};
    printf("blocks  smem_KB  alternating  | us per launch: plain  pdl  flag\n");
    // Alternating block counts mimic a step's mix of small kernels and products.
    for (int blocks : {16, 132, 396, 1024})
        for (int smem_kb : {0, 37})
            for (int alt = 0; alt < 2; alt++) {
                printf("%6d  %7d  %11s  |", blocks, smem_kb, alt ? "with 16" : "no");
                for (int mode = 0; mode < 3; mode++) {
                    cudaGraph_t g;
                    cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
                    cudaMemsetAsync(cnt, 0, N * 4, s);
                    for (int i = 0; i < N; i++) {
                        int nb = alt && i % 2 ? 16 : blocks;
                        int prev = i == 0 ? 1 : alt && (i - 1) % 2 ? 16 : blocks;
                        size_t sm = smem_kb ? (size_t)smem_kb * 1024 : 16;
                        if (mode == 2)
                            launch<1>(i, nb, prev, sm, true, buf, cnt);
                        else
                            launch<0>(i, nb, prev, sm, mode == 1, buf, cnt);
                    }
                    cudaStreamEndCapture(s, &g);
                    cudaGraphExec_t ge;
                    if (cudaGraphInstantiate(&ge, g, 0) != cudaSuccess) {
                        printf(" instantiate failed\n");
                        return 1;
                    }
                    float best = 1e9f;
                    for (int rep = 0; rep < 12; rep++) {
                        cudaEventRecord(a, s);
                        cudaGraphLaunch(ge, s);
                        cudaEventRecord(b, s);
                        cudaEventSynchronize(b);
                        float ms;
                        cudaEventElapsedTime(&ms, a, b);
                        if (rep >= 2 && ms < best) best = ms;
                    }
                    cudaError_t e = cudaGetLastError();
                    if (e != cudaSuccess) {
                        printf(" %s: %s\n", names[mode], cudaGetErrorString(e));
                        return 1;
                    }
                    printf("  %6.2f", best * 1000.f / N);
                    cudaGraphExecDestroy(ge);
                    cudaGraphDestroy(g);
                }
                printf("\n");
            }
    return 0;
}
