// The feed-forward half of a decode step in one launch: RMSNorm, the gate and up products,
// SwiGLU, and the down product added to the residual.
//
// As separate launches, each product ramps up from nothing and drains to nothing, and the
// short kernels between them leave memory idle: on an H200 the plain separate launches of
// a layer's products cannot pass 74 % of the copy rate (docs/PERF.md, session 19). Here
// the blocks stay resident for the whole half-layer and every warp streams one unbroken
// sequence of weight steps: its gate/up rows, then its down rows. Weights never depend on
// activations, so the copies of the down rows start while the warp still decodes gate/up,
// and keep memory busy through the one grid-wide barrier (SwiGLU's output must be whole
// before any down row can use it).
//
// Every value is computed by the same instructions in the same order as the separate
// launches (rmsnorm_q8_kernel, the streaming matrix-vector kernel, swiglu_q8_kernel), so
// the two paths agree bit for bit: a decode step and the speculative decoder's batched
// verification (which runs the separate launches) see the same logits.
//
// Not the default (WICK_FFN=1 turns it on): on an H200 it decodes slower than the separate
// launches (Q4_0 llama3-8b tg128: 362 against 484 tok/s). ncu counts 365 warp instructions
// per KB of weights here against 253 in the matrix-vector kernel, and at 4.2 TB/s the
// latter alone already needs about every issue slot the GPU has: the next gain is fewer
// instructions per byte, not fewer launches (docs/PERF.md, session 20).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common.cuh"
#include "mma_s8.cuh"
#include "q8_unit.cuh"
#include "stream.cuh"
#include "stream_unit.cuh"
#include "wick_cuda.h"

namespace {

// As rmsnorm_q8_kernel's blocks, so each block sums the norm's squares in the same order.
constexpr int FF_WARPS = 8;
constexpr int FF_R = 2;  // rows a warp decodes at once: gate i with up i, or two down rows

template <int TG, int TD>
__host__ __device__ constexpr int ff_slot() {  // bytes of one ring step, either phase
    return FF_R * (ms_stride<TG>() > ms_stride<TD>() ? ms_stride<TG>() : ms_stride<TD>());
}
// Blocks per SM: decoding from shared memory is latency-bound at 16 warps an SM (ncu: 1.9
// TB/s of an H200's 4.8, 6.6 cycles a warp between instructions).
constexpr int FF_BLOCKS = 3;
// Ring depth: as deep as fits in shared memory with FF_BLOCKS blocks an SM, each also
// holding the activations of a 14336-wide hidden layer (16 KB).
template <int TG, int TD>
__host__ __device__ constexpr int ff_depth() {
    constexpr int d = (220 * 1024 / FF_BLOCKS - 17 * 1024) / (FF_WARPS * ff_slot<TG, TD>());
    return d > 8 ? 8 : d < 2 ? 2 : d;
}

__device__ inline unsigned load_acquire(const unsigned *p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// Every block of the grid waits here until all have arrived; writes before it are visible
// to reads after it. The last block to arrive resets the count and bumps the generation
// the others wait on, so the counter is ready for the next launch with no host reset.
// Only correct while every block is resident, which the launcher's grid size ensures.
__device__ inline void grid_sync(unsigned *bar) {
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned gen = load_acquire(bar + 1);
        __threadfence();
        if (atomicAdd(bar, 1u) == gridDim.x - 1) {
            atomicExch(bar, 0u);
            __threadfence();
            atomicAdd(bar + 1, 1u);
        } else {
            // A block that never arrives (not resident) would hang the GPU: after about
            // two seconds the kernel fails instead, and the host reports the error.
            long long t0 = clock64();
            while (load_acquire(bar + 1) == gen) {
                __nanosleep(64);
                if (clock64() - t0 > 4000000000LL) __trap();
            }
        }
        __threadfence();
    }
    __syncthreads();
}

// One step (ms_units values per row) of up to FF_R rows held at `cur`, against activations
// in shared memory: the streaming kernel's inner loop for one batch row, the same
// operations in the same order.
template <int TYPE>
__device__ inline void ff_step(const uint8_t *cur, int st, int n_units, int nr, const int8_t *aq,
                               const float *ad, float (&acc)[FF_R]) {
    constexpr int UNITS = ms_units<TYPE>(), STRIDE = ms_stride<TYPE>();
    int lane = threadIdx.x % 32;
#pragma unroll
    for (int g = 0; g < UNITS / 32; g++) {
        int ul = 32 * g + lane, u = st * UNITS + ul;
        if (u < n_units) {
            Unit q[FF_R];
#pragma unroll
            for (int r = 0; r < FF_R; r++)
                if (r < nr) smem_unit<TYPE>(cur + r * STRIDE, ul, q[r]);
            const int4 *xr = reinterpret_cast<const int4 *>(aq + u * 32);
            int4 xa = xr[0], xb = xr[1];
            float xs = ad[u];
            int sx = unit_act_sum<TYPE>(xa, xb);
#pragma unroll
            for (int r = 0; r < FF_R; r++)
                if (r < nr) acc[r] = unit_dot<TYPE>(q[r], xa, xb, xs, sx, acc[r]);
        }
    }
}

// Copies one step of up to FF_R rows (row r at rows[r], `row_pieces` 16-byte pieces each)
// into `dst`.
template <int TYPE>
__device__ inline void ff_issue(uint8_t *dst, const uint4 *r0, const uint4 *r1, int nr, int st,
                                int row_pieces) {
    constexpr int PIECES = ms_bytes<TYPE>() / 16, STRIDE = ms_stride<TYPE>();
    int lane = threadIdx.x % 32;
#pragma unroll
    for (int r = 0; r < FF_R; r++) {
        if (r < nr) {
            const uint4 *src = r == 0 ? r0 : r1;
#pragma unroll
            for (int p0 = 0; p0 < PIECES; p0 += 32) {
                int p = p0 + lane, g = st * PIECES + p;
                if (p < PIECES) {
                    bool ok = g < row_pieces;  // a row's last step may be partial
                    cp_async16(dst + r * STRIDE + 16 * p, ok ? src + g : src, ok);
                }
            }
        }
    }
}

// Rounds n values (a multiple of 32) to int8 blocks in shared memory (aq, ad), as
// quantize_q8_lane rounds them, each value x[i] first taken as x[i] * scale * w[i] when w
// is given (RMSNorm's output). Eight threads share a block, four values each, and every
// thread has all its loads of a round in flight: a warp rounding block after block waits
// for L2 once per block, which cost more than the products it fed.
__device__ inline void round_to_smem(const float *__restrict__ x, const float *__restrict__ w,
                                     float scale, int n, int8_t *aq, float *ad) {
    constexpr int K = 8;  // float4s per thread per round
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
    const float4 *w4 = reinterpret_cast<const float4 *>(w);
    int n4 = n / 4;
    for (int base = 0; base < n4; base += K * blockDim.x) {
        float4 v[K];
#pragma unroll
        for (int k = 0; k < K; k++) {
            int f = base + k * blockDim.x + threadIdx.x;
            v[k] = f < n4 ? __ldcg(x4 + f) : make_float4(0.f, 0.f, 0.f, 0.f);
            if (w != nullptr && f < n4) {
                float4 m = w4[f];
                v[k] = make_float4(v[k].x * scale * m.x, v[k].y * scale * m.y,
                                   v[k].z * scale * m.z, v[k].w * scale * m.w);
            }
        }
#pragma unroll
        for (int k = 0; k < K; k++) {
            int f = base + k * blockDim.x + threadIdx.x;
            float4 a = v[k];
            float amax = fmaxf(fmaxf(fabsf(a.x), fabsf(a.y)), fmaxf(fabsf(a.z), fabsf(a.w)));
            // The 8 threads of a block are 8 consecutive lanes (blockDim and the round's
            // base are multiples of 8); every lane shuffles, in range or not.
#pragma unroll
            for (int o = 1; o < 8; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, o));
            float d = amax / 127.f;
            float id = d != 0.f ? 1.f / d : 0.f;
            if (f < n4) {
                char4 q = make_char4((int8_t)roundf(a.x * id), (int8_t)roundf(a.y * id),
                                     (int8_t)roundf(a.z * id), (int8_t)roundf(a.w * id));
                reinterpret_cast<char4 *>(aq)[f] = q;
                if (f % 8 == 0) ad[f / 8] = __half2float(__float2half(d));
            }
        }
    }
}

struct FfnArgs {
    float *x;             // the residual: normed, then the down product added
    const float *norm_w;  // RMSNorm's weight
    float eps;
    const uint8_t *gate, *up, *down;
    float *h;             // SwiGLU's output (ffn values), read back by every block
    int dim, ffn;
    unsigned *bar;        // two zeroed words: the grid barrier's count and generation
};

// Where a warp is in its sequence of steps: phase 1 (gate/up pairs), then phase 2 (pairs of
// down rows). Advanced one step at a time, so no division per step.
struct FfCursor {
    int phase, task, st;  // task: index into this warp's own tasks of the phase
};

template <int TG, int TD, int S>
__global__ void __launch_bounds__(FF_WARPS * 32, FF_BLOCKS)
ffn_decode_kernel(FfnArgs a) {
    extern __shared__ __align__(16) uint8_t smem[];
    constexpr int SLOT = ff_slot<TG, TD>();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int n_warps = gridDim.x * FF_WARPS;
    const int gw = blockIdx.x * FF_WARPS + warp;
    uint8_t *ring = smem + (size_t)warp * S * SLOT;
    int act_max = a.dim > a.ffn ? a.dim : a.ffn;
    int8_t *aq = reinterpret_cast<int8_t *>(smem + (size_t)FF_WARPS * S * SLOT);
    float *ad = reinterpret_cast<float *>(aq + ((act_max + 15) & ~15));

    // Phase 1: pair i (gate row i, up row i) for i = gw, gw + n_warps, ...
    // Phase 2: down rows 2p and 2p + 1 for p = n_warps - 1 - gw, ... (in reverse, so the
    // warps with one phase-1 pair fewer get the down rows first).
    const int units1 = a.dim / 32, units2 = a.ffn / 32;
    const int steps1 = (units1 + ms_units<TG>() - 1) / ms_units<TG>();
    const int steps2 = (units2 + ms_units<TD>() - 1) / ms_units<TD>();
    const int pairs2 = (a.dim + 1) / 2, g2 = n_warps - 1 - gw;
    const int n1 = gw < a.ffn ? (a.ffn - gw + n_warps - 1) / n_warps : 0;
    const int n2 = g2 < pairs2 ? (pairs2 - g2 + n_warps - 1) / n_warps : 0;
    const size_t rb1 = row_bytes(TG, a.dim), rb2 = row_bytes(TD, a.ffn);
    const int pieces1 = (int)(rb1 / 16), pieces2 = (int)(rb2 / 16);

    auto advance = [&](FfCursor &c) {
        if (++c.st == (c.phase == 1 ? steps1 : steps2)) {
            c.st = 0;
            if (++c.task == n1 && c.phase == 1) {
                c.phase = 2;
                c.task = 0;
            }
        }
    };
    // A phase-1 cursor exists only while pairs remain.
    auto done = [&](const FfCursor &c) { return c.phase == 2 && c.task >= n2; };
    // Issues the copies of the step at cursor c into ring slot `slot`; always commits a group
    // (maybe empty), so that "all but the newest S - 1 groups" is the step about to be read.
    auto issue = [&](const FfCursor &c, int slot) {
        if (!done(c)) {
            uint8_t *dst = ring + slot * SLOT;
            if (c.phase == 1) {
                size_t i = (size_t)gw + (size_t)c.task * n_warps;
                ff_issue<TG>(dst, reinterpret_cast<const uint4 *>(a.gate + i * rb1),
                             reinterpret_cast<const uint4 *>(a.up + i * rb1), 2, c.st, pieces1);
            } else {
                int p = g2 + c.task * n_warps;
                const uint4 *r0 = reinterpret_cast<const uint4 *>(a.down + (size_t)(2 * p) * rb2);
                ff_issue<TD>(dst, r0, r0 + pieces2, a.dim - 2 * p < 2 ? 1 : 2, c.st, pieces2);
            }
        }
        cp_async_commit();
    };

    // A warp with no phase-1 pair starts in phase 2.
    FfCursor ahead = {n1 > 0 ? 1 : 2, 0, 0}, cur = ahead;
    // Weights are never written: their first copies go out before the norm's loads.
    int ahead_slot = 0;
#pragma unroll 1
    for (int s = 0; s < S - 1; s++) {
        issue(ahead, ahead_slot);
        advance(ahead);
        ahead_slot = ahead_slot + 1 == S ? 0 : ahead_slot + 1;
    }

    // RMSNorm of the residual into int8 blocks in this block's shared memory, summed as
    // rmsnorm_q8_kernel's blocks sum it (as many warps, the same function).
    round_to_smem(a.x, a.norm_w, block_rms_scale<FF_WARPS>(a.x, a.dim, a.eps), a.dim, aq, ad);
    __syncthreads();

    int cur_slot = 0;
    float acc[FF_R] = {0.f, 0.f};
    float old = 0.f;  // phase 2: the residual's old value of row 2p + lane (lanes 0, 1)
    bool synced = false;
#pragma unroll 1
    while (true) {
        if (cur.phase == 2 && !synced) {
            // SwiGLU's output is whole once every block has arrived; then each block rounds
            // it to int8 blocks in its own shared memory, as swiglu_q8_kernel would (the
            // same values: a block's largest magnitude does not depend on the order).
            grid_sync(a.bar);
            round_to_smem(a.h, nullptr, 1.f, a.ffn, aq, ad);
            __syncthreads();
            synced = true;
        }
        if (done(cur)) break;
        issue(ahead, ahead_slot);
        advance(ahead);
        ahead_slot = ahead_slot + 1 == S ? 0 : ahead_slot + 1;
        cp_async_wait<S - 1>();
        __syncwarp();
        const uint8_t *slot = ring + cur_slot * SLOT;
        if (cur.phase == 1) {
            ff_step<TG>(slot, cur.st, units1, 2, aq, ad, acc);
        } else {
            int p = g2 + cur.task * n_warps, nr = a.dim - 2 * p < 2 ? 1 : 2;
            if (cur.st == 0) old = lane < nr ? a.x[2 * p + lane] : 0.f;
            ff_step<TD>(slot, cur.st, units2, nr, aq, ad, acc);
        }
        // Every lane is done with this slot before a later step refills it.
        __syncwarp();
        cur_slot = cur_slot + 1 == S ? 0 : cur_slot + 1;
        bool last = cur.st + 1 == (cur.phase == 1 ? steps1 : steps2);
        if (last) {
            float s0 = warp_sum(acc[0]), s1 = warp_sum(acc[1]);
            if (cur.phase == 1) {
                if (lane == 0) {
                    size_t i = (size_t)gw + (size_t)cur.task * n_warps;
                    a.h[i] = s0 / (1.f + __expf(-s0)) * s1;
                }
            } else {
                int p = g2 + cur.task * n_warps, nr = a.dim - 2 * p < 2 ? 1 : 2;
                if (lane < nr) a.x[2 * p + lane] = old + (lane == 0 ? s0 : s1);
            }
            acc[0] = acc[1] = 0.f;
        }
        if (cur.phase == 1 && last && cur.task + 1 == n1) {
            // The last gate/up pair: the kernel after this one may be scheduled now.
            pdl_trigger();
        }
        advance(cur);
    }
    cp_async_wait<0>();
}

template <int TG, int TD>
int launch_ffn(const FfnArgs &a) {
    constexpr int S = ff_depth<TG, TD>();
    auto kernel = ffn_decode_kernel<TG, TD, S>;
    int act_max = a.dim > a.ffn ? a.dim : a.ffn;
    size_t smem = (size_t)FF_WARPS * S * ff_slot<TG, TD>() + ((act_max + 15) & ~15) +
                  (size_t)(act_max / 32) * 4;
    static int blocks_per_sm = 0;
    static size_t opted = 0;
    if (opted != smem) {
        cudaError_t e =
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return (int)e;
        // The occupancy query assumes the largest shared-memory carveout, but the driver
        // is free to pick a smaller one that holds fewer blocks (it chose 200 KB for two
        // blocks of 93 KB), and blocks that are never resident leave the others waiting
        // at the grid barrier forever. Asking for the largest makes the two agree.
        e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                 cudaSharedmemCarveoutMaxShared);
        if (e != cudaSuccess) return (int)e;
        e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, FF_WARPS * 32,
                                                          smem);
        if (e != cudaSuccess) return (int)e;
        if (blocks_per_sm < 1) return (int)cudaErrorInvalidConfiguration;
        opted = smem;
    }
    // Every block must be resident at once for the grid barrier. Not a programmatic (PDL)
    // launch: blocks launched early onto SMs still running the previous kernel get that
    // kernel's carveout, which an SM cannot change until it drains, so only two of three
    // blocks fitted and the grid barrier never opened. The kernel after this one is still
    // launched early.
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = blocks_per_sm * sm_count();
    cfg.blockDim = FF_WARPS * 32;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = wick_stream;
    return (int)cudaLaunchKernelEx(&cfg, kernel, a);
}

}  // namespace

// The pairs of (gate/up type, down type) with a fused kernel: the mixes of llama.cpp's
// quantizer for the types it writes most.
#define WICK_FFN_PAIRS(X)      \
    X(T_Q4_0, T_Q4_0)          \
    X(T_Q4_1, T_Q4_1)          \
    X(T_Q8_0, T_Q8_0)          \
    X(T_Q4_K, T_Q4_K)          \
    X(T_Q4_K, T_Q6_K)          \
    X(T_Q5_K, T_Q5_K)          \
    X(T_Q5_K, T_Q6_K)          \
    X(T_Q6_K, T_Q6_K)

extern "C" int wick_ffn_decode_supports(int gate_type, int down_type) {
#define PAIR(G, D) if (gate_type == G && down_type == D) return 1;
    WICK_FFN_PAIRS(PAIR)
#undef PAIR
    return 0;
}

extern "C" int wick_ffn_decode(int gate_type, int down_type, float *x, const float *norm_w,
                               float eps, const void *gate, const void *up, const void *down,
                               int dim, int ffn, float *h, unsigned *barrier) {
    if (!wick_ffn_decode_supports(gate_type, down_type) || dim % 256 != 0 || ffn % 256 != 0)
        return (int)cudaErrorInvalidValue;
    // The ring copies whole 16-byte pieces of 16-byte aligned rows.
    bool aligned = row_bytes(gate_type, dim) % 16 == 0 && row_bytes(down_type, ffn) % 16 == 0;
    for (const void *p : {gate, up, down}) aligned = aligned && (uintptr_t)p % 16 == 0;
    if (!aligned) return (int)cudaErrorInvalidValue;
    FfnArgs a = {x, norm_w, eps, (const uint8_t *)gate, (const uint8_t *)up,
                 (const uint8_t *)down, h, dim, ffn, barrier};
    int e = (int)cudaErrorInvalidValue;
#define PAIR(G, D) \
    if (gate_type == G && down_type == D) e = launch_ffn<G, D>(a);
    WICK_FFN_PAIRS(PAIR)
#undef PAIR
    return e ? e : (int)cudaGetLastError();
}
