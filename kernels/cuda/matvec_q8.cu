// Matrix-vector products for decode and small batches, on 8-bit activations.
//
// Decode reads every weight byte once per token, so its speed is memory bandwidth. Two
// things keep the kernel at that limit: nothing but weights comes from DRAM (activations
// are rounded to int8 blocks once per call, four times smaller than f32, and read through
// L1), and no block ever waits at a barrier (no shared-memory staging): each warp owns one
// weight row and streams it with several loads in flight. Products use dp4a, four int8
// multiply-adds per instruction, as llama.cpp's CUDA and CPU paths do; activations are
// rounded exactly as the CPU's fast path rounds them to Q8_0 (scale amax / 127, stored as
// f16), so the two backends agree up to summation order.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "bulk_copy.cuh"
#include "common.cuh"
#include "mma_s8.cuh"
#include "q8_unit.cuh"
#include "quantize_q8.cuh"
#include "stream.cuh"
#include "stream_unit.cuh"
#include "wick_cuda.h"

constexpr int MV_WARPS = 4;  // rows per block; small blocks keep every SM busy
constexpr int MV_NB = 8;     // activation rows per pass over the weights

// One warp per 32 values.
__global__ void quantize_q8_kernel(const float *__restrict__ x, int n_blocks,
                                   int8_t *__restrict__ xq, float *__restrict__ xd) {
    pdl_start();
    int blk = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (blk >= n_blocks) return;
    quantize_q8_lane(x[(size_t)blk * 32 + lane], blk, lane, xq, xd);
}

// A folded norm's input side (wick_mv_fold): 1 / rms of input row b from the sums of
// squares of its 32-value blocks. `partial` is this lane's sum of blocks lane, lane + 32,
// ... when the caller added them up as it went (`have`), else it is summed here in the
// same order, so that every kernel and batch shape gets the same bits.
__device__ inline float fold_rms_scale(const wick_mv_fold &f, int b, int n_units, int lane,
                                       float partial, bool have) {
    if (!have) {
        partial = 0.f;
        for (int u = lane; u < n_units; u += 32) partial += f.in_ss[(size_t)b * n_units + u];
    }
    return rsqrtf(warp_sum(partial) / (n_units * 32) + f.eps);
}

// y[b][r] (+)= W[r] . x[b] for b < nb, with x as int8 blocks (xq, one scale per 32 in xd).
// One warp per weight row, each lane a whole 32-value unit (lane l takes units l, l + 32,
// ...), so a warp's loads cover 32 contiguous units and each lane has a whole unit's bytes
// in flight per step: decode is bound by how many bytes are in flight, and quarter units
// per lane left the memory system idle. No block ever waits at a barrier.
// Up to three weights that share the input go in one launch (WeightGroup), the grid's
// blocks dealt out to them in order.

template <int TYPE, int NB, int UNR>
__global__ void __launch_bounds__(MV_WARPS * 32)
matvec_q8_kernel(WeightGroup t, int cols, const int8_t *__restrict__ xq,
                 const float *__restrict__ xd, int nb, int accumulate, wick_mv_fold f) {
    pdl_start();
    int ti = blockIdx.x >= t.first[1] ? (blockIdx.x >= t.first[2] ? 2 : 1) : 0;
    const uint8_t *__restrict__ w = pick3(t.w, ti);
    float *__restrict__ y = pick3(t.y, ti);
    int rows = pick3(t.rows, ti);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int row = (blockIdx.x - pick3(t.first, ti)) * MV_WARPS + warp;
    if (row >= rows) return;
    int n_units = cols / 32;
    const uint8_t *wr = w + (size_t)row * row_bytes(TYPE, cols);
    for (int b0 = 0; b0 < nb; b0 += NB) {
        float acc[NB];
#pragma unroll
        for (int j = 0; j < NB; j++) acc[j] = 0.f;
#pragma unroll UNR
        for (int u = lane; u < n_units; u += 32) {
            Unit q;
            load_unit<TYPE>(wr, u, q);
#pragma unroll
            for (int j = 0; j < NB; j++) {
                if (b0 + j < nb) {
                    const int4 *xr =
                        reinterpret_cast<const int4 *>(xq + (size_t)(b0 + j) * cols + u * 32);
                    int4 xa = xr[0], xb = xr[1];
                    int s0 = __dp4a(q.w[0], xa.x, __dp4a(q.w[1], xa.y,
                             __dp4a(q.w[2], xa.z, __dp4a(q.w[3], xa.w, 0))));
                    int s1 = __dp4a(q.w[4], xb.x, __dp4a(q.w[5], xb.y,
                             __dp4a(q.w[6], xb.z, __dp4a(q.w[7], xb.w, 0))));
                    float v = q.d0 * (float)s0 + q.d1 * (float)s1;
                    if constexpr (has_min<TYPE>()) {
                        int sx = __dp4a(0x01010101, xa.x, __dp4a(0x01010101, xa.y,
                                 __dp4a(0x01010101, xa.z, __dp4a(0x01010101, xa.w, 0))));
                        sx = __dp4a(0x01010101, xb.x, __dp4a(0x01010101, xb.y,
                             __dp4a(0x01010101, xb.z, __dp4a(0x01010101, xb.w, sx))));
                        v += q.m * (float)sx;
                    }
                    acc[j] += xd[(size_t)(b0 + j) * n_units + u] * v;
                }
            }
        }
#pragma unroll
        for (int j = 0; j < NB; j++) {
            if (b0 + j < nb) {
                float s = warp_sum(acc[j]);
                if (f.in_ss) s *= fold_rms_scale(f, b0 + j, n_units, lane, 0.f, false);
                if (lane == 0) {
                    float *o = y + (size_t)(b0 + j) * rows + row;
                    *o = accumulate ? *o + s : s;
                }
            }
        }
    }
}


// The streaming kernel (the default): the same products, the same order of additions per
// row, but weights reach the lanes through shared memory. The kernel above issues nine to
// sixteen 2-byte loads per unit at an 18- or 34-byte stride, and those keep the L1 pipe
// busy long before DRAM is (ncu: L1 87 %, DRAM 34 %). Here each warp copies its rows into
// its own shared-memory ring with cp.async: 16-byte copies, consecutive lanes consecutive
// bytes, S - 1 steps in flight per warp, L1 bypassed. A step is the 32 units a warp decodes
// at once (64 for Q6_K, whose 4 super-blocks of 210 bytes are not whole 16-byte pieces).
// Lanes then decode their unit from shared memory with aligned 32-bit loads. Only
// __syncwarp orders copies and reads: a warp's ring is its own, and no block barrier
// exists, so warps never wait for one another.
//
// A warp takes R rows: each activation load then serves R rows, which is what a batch
// pays for (an activation unit is 32 + 4 bytes per batch row against 18 weight bytes).
// Lane l still decodes units l, l + 32, ... of each row, and each row's sum is the
// same expression in the same order for any R, NB and nb: a row of a batch is bitwise
// the row computed alone (the speculative decoder's verification relies on it).
//
// On Hopper (BULK), lane 0 fills a slot with one bulk copy per row, and an mbarrier per
// slot tells the lanes when its bytes have landed (bulk_copy.cuh): a few instructions per
// step where cp.async took one per lane per 16 bytes.
// In an anonymous namespace, as gemm_q8.cu's kernels: `smem` is then the same name there.
namespace {

constexpr int MS_WARPS = 4;

// Ring steps per copy on the bulk path: each step has a fixed cost (a copy per row, a
// barrier wait, the loop), so small steps are paired, to about a kilobyte per row. A warp
// of the SwiGLU epilogue (SWI) takes four rows, already a kilobyte or more a step.
// SWI: 0 none, 1 the SwiGLU epilogue, 2 the same with slots packed tight (no word past a
// step's end: the decoder's read past it lands in the next slot, or past the ring, and
// its bits go unused) for three blocks an SM.
template <int TYPE, bool BULK, int SWI = 0>
__host__ __device__ constexpr int ms_group() {
    return BULK && !SWI && ms_bytes<TYPE>() < 1024 ? 2 : 1;
}
template <int TYPE, bool BULK, int SWI = 0>
__host__ __device__ constexpr int ms_step_stride() {
    return ms_group<TYPE, BULK, SWI>() * ms_bytes<TYPE>() + (SWI == 2 ? 0 : 16);
}
// Warps of a block that folds a norm into its output: with two rows a warp, a block owns
// one whole 32-value block of the output, which it can then round to int8 itself.
constexpr int MS_FOLD_WARPS = 16;
// The SwiGLU epilogue's blocks: 16 warps, each taking gate rows i and i + 1 and up rows i
// and i + 1, so that a block owns one whole 32-value block of SwiGLU's output.
constexpr int MS_SWI_WARPS = 16, MS_SWI_R = 4;

// Results a block owns whole blocks of 32 of: a warp's R rows, or with SWI its R / 2 pairs.
template <int R, int W, int SWI>
__host__ __device__ constexpr bool ms_owns_block() {
    return (SWI ? W * R / 2 : W * R) == 32;
}

template <int TYPE, int R, int S, bool BULK, int W = MS_WARPS, int SWI = 0>
__host__ __device__ constexpr int ms_ring_smem() {
    return W * S * R * ms_step_stride<TYPE, BULK, SWI>() + (BULK ? W * S * 8 : 0);
}
// The ring, and where a folding block gathers its 32 results of each batch row.
template <int TYPE, int NB, int R, int S, bool BULK, int W = MS_WARPS, int SWI = 0>
__host__ __device__ constexpr int ms_smem() {
    return ms_ring_smem<TYPE, R, S, BULK, W, SWI>() +
           (ms_owns_block<R, W, SWI>() ? NB * 32 * 4 : 0);
}

template <int TYPE, int NB, int R, int S, bool BULK, int W, bool FIN, int SWI>
__device__ __forceinline__ void matvec_q8_stream(WeightGroup t, int cols,
                                                 const int8_t *__restrict__ xq,
                                                 const float *__restrict__ xd, int nb,
                                                 int accumulate, int early,
                                                 const wick_mv_fold &f) {
    pdl_trigger();
    extern __shared__ __align__(16) uint8_t smem[];
    constexpr int G = ms_group<TYPE, BULK, SWI>();
    constexpr int UNITS = G * ms_units<TYPE>(), BYTES = G * ms_bytes<TYPE>(), PIECES = BYTES / 16;
    constexpr int STRIDE = ms_step_stride<TYPE, BULK, SWI>();
    static_assert(!SWI || (BULK && R % 2 == 0), "the SwiGLU epilogue: bulk copies, row pairs");
    // With SWI, target 0 is gate and 1 is up, and every block takes both.
    int ti = SWI ? 0 : blockIdx.x >= t.first[1] ? (blockIdx.x >= t.first[2] ? 2 : 1) : 0;
    const uint8_t *__restrict__ w = pick3(t.w, ti);
    float *__restrict__ y = pick3(t.y, ti);
    int rows = pick3(t.rows, ti);
    // Bulk copies take their operands in uniform registers: every value they depend on
    // must be visibly the same across the warp, or the compiler loops over the lanes'
    // distinct values around each copy. Hence the warp index broadcast from lane 0.
    int warp = __shfl_sync(~0u, threadIdx.x / 32, 0), lane = threadIdx.x % 32;
    int block = blockIdx.x - pick3(t.first, ti);
    // With SWI, rows r < R / 2 of a warp are gate rows row0 + r, the others up rows
    // row0 + r - R / 2 (the launcher checks that every row is present).
    int row0 = (block * W + warp) * (SWI ? R / 2 : R);
    // Warp-uniform, and nothing below waits for other warps.
    bool active = row0 < rows;
    int nr = SWI ? R : rows - row0 < R ? rows - row0 : R;
    uint8_t *ring = smem + (size_t)warp * S * R * STRIDE;
    // A folding block (W * R == 32, every row present: the launcher checks) gathers its
    // results here; warp j then rounds batch row j's block of 32.
    constexpr bool FOLD = !SWI && ms_owns_block<R, W, SWI>();
    constexpr bool OWN_SWI = SWI && ms_owns_block<R, W, SWI>();
    static_assert(!SWI || OWN_SWI, "a SwiGLU block rounds whole blocks of 32");
    // A folded norm's input side: single rows have kernels of their own for it (FIN), so
    // that the others keep the code (and registers) they had without it.
    const float *__restrict__ in_ss = NB > 1 || FIN ? f.in_ss : nullptr;
    float *gathered = reinterpret_cast<float *>(smem + ms_ring_smem<TYPE, R, S, BULK, W, SWI>());
    size_t rb = row_bytes(TYPE, cols);  // a multiple of 16 (the launcher checks)
    int row_pieces = (int)(rb / 16);
    int n_units = cols / 32, n_steps = (n_units + UNITS - 1) / UNITS;
    const uint4 *wr = reinterpret_cast<const uint4 *>(w + (size_t)row0 * rb);
    // Where row r of a SwiGLU warp starts.
    const uint8_t *gate0 = t.w[0] + (size_t)row0 * rb, *up0 = t.w[1] + (size_t)row0 * rb;
    constexpr int HALF = R > 1 ? R / 2 : 1;  // R is even with SWI
    auto row_src = [&](int r) { return (r < HALF ? gate0 : up0) + (size_t)(r % HALF) * rb; };
    // The ring's slot of each step counts on across passes over the weights (a bulk
    // slot's barrier phase is the number of times the slot was filled before).
    uint32_t base = 0;
    uint32_t ring_s = smem_addr(ring);
    uint32_t bars_s = smem_addr(smem) + W * S * R * STRIDE + warp * S * 8;
    if constexpr (BULK) {
        if (lane == 0) {
#pragma unroll
            for (int s = 0; s < S; s++) mbar_init(bars_s + 8 * s);
            mbar_init_fence();
        }
        __syncwarp();
    }

    // Copies step `st` into its slot; with cp.async, always commits a group (maybe
    // empty), so that "all but the newest S - 1 groups" is always the step about to be read.
    auto issue = [&](int st) {
        if constexpr (BULK) {
            if (st < n_steps && lane == 0) {
                uint32_t slot = (base + st) % S;
                uint32_t off = (uint32_t)st * BYTES;
                uint32_t n = (uint32_t)rb - off < (uint32_t)BYTES ? (uint32_t)rb - off : BYTES;
                uint32_t bar = bars_s + 8 * slot;
                mbar_expect(bar, n * nr);
                if constexpr (SWI) {
#pragma unroll
                    for (int r = 0; r < R; r++)
                        bulk_copy(ring_s + (slot * R + r) * STRIDE, row_src(r) + off, n, bar);
                } else {
                    const uint8_t *src = reinterpret_cast<const uint8_t *>(wr) + off;
#pragma unroll
                    for (int r = 0; r < R; r++)
                        if (r < nr)
                            bulk_copy(ring_s + (slot * R + r) * STRIDE, src + r * rb, n, bar);
                }
            }
            return;
        }
        if (st < n_steps) {
            uint8_t *dst = ring + ((base + st) % S) * R * STRIDE;
#pragma unroll
            for (int r = 0; r < R; r++) {
                if (r < nr) {
                    const uint4 *src = wr + (size_t)r * row_pieces;
#pragma unroll
                    for (int p0 = 0; p0 < PIECES; p0 += 32) {
                        int p = p0 + lane, g = st * PIECES + p;
                        if (p < PIECES) {
                            bool ok = g < row_pieces;  // the row's last step may be partial
                            cp_async16(dst + r * STRIDE + 16 * p, ok ? src + g : src, ok);
                        }
                    }
                }
            }
        }
        cp_async_commit();
    };

    // Weights are never written, so the first steps' copies may start before the kernel
    // launched before this one has finished (PDL): under a short kernel such as RMSNorm,
    // the first wave's rows are already on their way when it ends.
    if (early && active) {
#pragma unroll
        for (int s = 0; s < S - 1; s++) issue(s);
    }
    // The norm's weight is never written either.
    float norm_w = FOLD && f.norm && warp < NB ? f.norm[block * 32 + lane] : 0.f;
    pdl_wait();
    if (!active) return;
    for (int b0 = 0; b0 < nb; b0 += NB) {
        // An accumulated output's old value, loaded now so that its round trip overlaps
        // the weights' rather than following the last step (decode's o and down products:
        // the last warps of a product wait on it). Lane (r * NB + j) % 32 holds (r, j).
        constexpr bool HOIST = R * NB <= 4;
        float old[HOIST ? R : 1][HOIST ? NB : 1];
        if constexpr (HOIST) {
#pragma unroll
            for (int r = 0; r < R; r++)
#pragma unroll
                for (int j = 0; j < NB; j++)
                    old[r][j] = accumulate && r < nr && b0 + j < nb && lane == (r * NB + j) % 32
                                    ? y[(size_t)(b0 + j) * rows + row0 + r]
                                    : 0.f;
        }
        if (b0 > 0 || !early) {
#pragma unroll
            for (int s = 0; s < S - 1; s++) issue(s);
        }
        float acc[R][NB];
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int j = 0; j < NB; j++) acc[r][j] = 0.f;
        // A folded norm's sums of squares, added up with the activations of a single row.
        float ss_part = 0.f;
#pragma unroll 1
        for (int st = 0; st < n_steps; st++) {
            issue(st + S - 1);
            // One activation row (decode): its units for this step are loaded before the
            // wait, so that their round trip overlaps the weights' instead of following it
            // (the wait is a compiler barrier). Q4_0 tg128 on an H200 about 495 -> 523,
            // the down product 18.3 -> 14.8 us (docs/PERF.md, session 21).
            constexpr int UL = UNITS / 32;
            int4 pxa[UL], pxb[UL];
            float pxs[UL];
            if constexpr (NB == 1) {
#pragma unroll
                for (int g = 0; g < UL; g++) {
                    int u = st * UNITS + 32 * g + lane;
                    if (u < n_units) {
                        const int4 *xr = reinterpret_cast<const int4 *>(xq + u * 32);
                        pxa[g] = xr[0];
                        pxb[g] = xr[1];
                        pxs[g] = xd[u];
                        if (in_ss) ss_part += in_ss[u];
                    }
                }
            }
            uint32_t slot = (base + st) % S;
            if constexpr (BULK) {
                mbar_wait(bars_s + 8 * slot, ((base + st) / S) & 1);
            } else {
                cp_async_wait<S - 1>();
                __syncwarp();
            }
            const uint8_t *cur = ring + slot * R * STRIDE;
#pragma unroll
            for (int g = 0; g < UNITS / 32; g++) {
                int ul = 32 * g + lane, u = st * UNITS + ul;
                if (u < n_units) {
                    Unit q[R];
#pragma unroll
                    for (int r = 0; r < R; r++)
                        if (r < nr) smem_unit<TYPE>(cur + r * STRIDE, ul, q[r]);
#pragma unroll
                    for (int j = 0; j < NB; j++) {
                        if (b0 + j < nb) {
                            const int4 *xr = reinterpret_cast<const int4 *>(
                                xq + (size_t)(b0 + j) * cols + u * 32);
                            int4 xa, xb;
                            float xs;
                            if constexpr (NB == 1) {
                                xa = pxa[g];
                                xb = pxb[g];
                                xs = pxs[g];
                            } else {
                                xa = xr[0];
                                xb = xr[1];
                                xs = xd[(size_t)(b0 + j) * n_units + u];
                            }
                            int sx = unit_act_sum<TYPE>(xa, xb);
#pragma unroll
                            for (int r = 0; r < R; r++) {
                                if (r < nr)
                                    acc[r][j] = unit_dot<TYPE>(q[r], xa, xb, xs, sx, acc[r][j]);
                            }
                        }
                    }
                }
            }
            // Every lane is done with this slot before the next iteration refills it.
            __syncwarp();
        }
        if constexpr (!BULK) cp_async_wait<0>();
        base += n_steps;
        if constexpr (SWI) {
            // The same sums and scaling as the separate products, then swiglu_q8_kernel's
            // expression and rounding: the same bits as the separate launches.
#pragma unroll
            for (int j = 0; j < NB; j++) {
                if (b0 + j < nb) {
                    float rms = in_ss ? fold_rms_scale(f, b0 + j, n_units, lane, ss_part, NB == 1)
                                      : 1.f;
#pragma unroll
                    for (int k = 0; k < R / 2; k++) {
                        float g = warp_sum(acc[k][j]), u = warp_sum(acc[k + R / 2][j]);
                        if (in_ss) {
                            g *= rms;
                            u *= rms;
                        }
                        if (lane == (k * NB + j) % 32)
                            gathered[j * 32 + warp * (R / 2) + k] = g / (1.f + __expf(-g)) * u;
                    }
                }
            }
            __syncthreads();
            if (warp < NB && b0 + warp < nb) {
                float v = gathered[warp * 32 + lane];
                size_t blk = (size_t)(b0 + warp) * (rows / 32) + block;
                y[blk * 32 + lane] = v;
                quantize_q8_lane(v, blk, lane, f.out_q, f.out_d);
            }
            // The next pass's results go where this one's were read.
            __syncthreads();
        } else {
#pragma unroll
            for (int j = 0; j < NB; j++) {
                float rms = in_ss && b0 + j < nb
                                ? fold_rms_scale(f, b0 + j, n_units, lane, ss_part, NB == 1)
                                : 1.f;
#pragma unroll
                for (int r = 0; r < R; r++) {
                    if (r < nr && b0 + j < nb) {
                        float s = warp_sum(acc[r][j]);
                        if (in_ss) s *= rms;
                        if (lane == (r * NB + j) % 32) {
                            float *o = y + (size_t)(b0 + j) * rows + row0 + r;
                            float v;
                            if constexpr (HOIST)
                                v = accumulate ? old[r][j] + s : s;
                            else
                                v = accumulate ? *o + s : s;
                            *o = v;
                            if constexpr (FOLD) gathered[j * 32 + warp * R + r] = v;
                        }
                    }
                }
            }
            if constexpr (FOLD) {
                if (f.norm) {
                    __syncthreads();
                    if (warp < NB && b0 + warp < nb) {
                        // Rounded as quantize_q8_lane rounds, before the norm's 1 / rms, which
                        // needs every block's sum: the next product applies it (fold_rms_scale).
                        float v = gathered[warp * 32 + lane], u = v * norm_w;
                        float d = warp_max(fabsf(u)) / 127.f;
                        float id = d != 0.f ? 1.f / d : 0.f;
                        size_t blk = (size_t)(b0 + warp) * (rows / 32) + block;
                        f.out_q[blk * 32 + lane] = (int8_t)roundf(u * id);
                        float ss = warp_sum(v * v);
                        if (lane == 0) {
                            f.out_d[blk] = d;
                            f.out_ss[blk] = ss;
                        }
                    }
                    // The next pass's results go where this one's were read.
                    __syncthreads();
                }
            }
        }
    }
}

// Single rows with a folded norm's input ask for six blocks an SM (at most 80 registers),
// as many as the rings' shared memory allows: left free, ptxas gave the Q4_0 kernel 94
// registers, five blocks fitted, and decode lost 4 % (docs/PERF.md, session 25).
template <int TYPE, int NB, int R, int S, bool BULK, int W, bool FIN = false, int SWI = 0>
__global__ void __launch_bounds__(W * 32, W == MS_WARPS && FIN ? 6 : SWI == 2 ? 3 : 1)
matvec_q8_stream_kernel(WeightGroup t, int cols, const int8_t *__restrict__ xq,
                        const float *__restrict__ xd, int nb, int accumulate, int early,
                        wick_mv_fold f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    // Launchers take the bulk path only from compute capability 9.0 (wick_bulk), so the
    // older architectures' machine code leaves it out: compiling it for all of them made
    // CI's CUDA build take 41 minutes (the file alone, for sm_80: 4 m 12 s, 2 m 36 s now).
    if constexpr (BULK)
        __trap();
    else
#endif
        matvec_q8_stream<TYPE, NB, R, S, BULK, W, FIN, SWI>(t, cols, xq, xd, nb, accumulate,
                                                           early, f);
}

}  // namespace

extern "C" int wick_matvec_q8_supports(int type) {
    return type == T_Q4_0 || type == T_Q4_1 || type == T_Q5_0 || type == T_Q5_1 ||
           type == T_Q8_0 || type == T_Q4_K || type == T_Q5_K || type == T_Q6_K;
}

extern "C" int wick_quantize_q8(const float *x, int n, int8_t *xq, float *xd) {
    if (n % 32 != 0) return (int)cudaErrorInvalidValue;
    int n_blocks = n / 32;
    constexpr int per_block = 8;  // warps
    wick_launch(quantize_q8_kernel, (n_blocks + per_block - 1) / per_block, per_block * 32, 0,
                x, n_blocks, xq, xd);
    return (int)cudaGetLastError();
}

// Which kernel and shape, for A/B runs of the self-test (WICK_MV): 0 = the streaming
// kernel with rows per warp and ring depth chosen by size (default), 1 = the direct
// kernel, 2..5 = the streaming kernel with R rows per warp and an S-step ring fixed:
// 2 = R1 S8, 3 = R2 S4, 4 = R4 S4, 5 = R1 S4.
static int mv_variant = 0;
extern "C" void wick_matvec_q8_variant(int v) { mv_variant = v; }

template <int TYPE, int NB>
static int launch_old(const WeightGroup &t, int cols, const int8_t *xq, const float *xd, int nb,
                      int accumulate, const wick_mv_fold &f) {
    // Its batch passes stay at most MV_NB rows wide, as it always ran.
    constexpr int ONB = NB > MV_NB ? MV_NB : NB;
    WeightGroup u = t;
    for (int i = 0; i < 3; i++)
        u.first[i + 1] = u.first[i] + (u.rows[i] + MV_WARPS - 1) / MV_WARPS;
    wick_launch(matvec_q8_kernel<TYPE, ONB, 1>, u.first[3], MV_WARPS * 32, 0, u, cols, xq,
                xd, nb, accumulate, f);
    return 0;
}

template <int TYPE, int NB, int R, int S, bool BULK, int W = MS_WARPS, bool FIN = false>
static int launch_stream(const WeightGroup &t, int cols, const int8_t *xq, const float *xd,
                         int nb, int accumulate, const wick_mv_fold &f) {
    constexpr int SMEM = ms_smem<TYPE, NB, R, S, BULK, W>();
    auto kernel = matvec_q8_stream_kernel<TYPE, NB, R, S, BULK, W, FIN>;
    static bool opted = false;
    if (!opted) {
        cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
        if (e != cudaSuccess) return (int)e;
        opted = true;
    }
    WeightGroup u = t;
    for (int i = 0; i < 3; i++)
        u.first[i + 1] = u.first[i] + (u.rows[i] + W * R - 1) / (W * R);
    wick_launch(kernel, u.first[3], W * 32, SMEM, u, cols, xq, xd, nb, accumulate,
                wick_early ? 1 : 0, f);
    return 0;
}

template <int TYPE, int NB, int R, int S>
static int launch_stream(const WeightGroup &t, int cols, const int8_t *xq, const float *xd,
                         int nb, int accumulate, const wick_mv_fold &f) {
    if (!wick_bulk) {
        // Norms fold only where bulk copies are (wick_matvec_fold_applies).
        if (NB == 1 && f.in_ss) return (int)cudaErrorInvalidValue;
        return launch_stream<TYPE, NB, R, S, false>(t, cols, xq, xd, nb, accumulate, f);
    }
    if (NB == 1 && f.in_ss)
        return launch_stream<TYPE, NB, R, S, true, MS_WARPS, true>(t, cols, xq, xd, nb,
                                                                 accumulate, f);
    return launch_stream<TYPE, NB, R, S, true>(t, cols, xq, xd, nb, accumulate, f);
}

// A product that folds a norm into its output: blocks of 16 warps of two rows, each block
// one 32-value block of the output. Bulk copies only (the Hopper path decode takes), so the
// older architectures compile none of these kernels.
constexpr int FOLD_R = 2, FOLD_S = 4;

// Products of K-quant weights fold at a loss (H200, Q4_K_M tg128 picked on device 491 ->
// 483; Q4_0 547 -> 570, Q8_0 391 -> 394: docs/PERF.md, session 25), so they keep the
// separate norm, and have no folding kernels.
__host__ __device__ constexpr bool fold_pays(int type) { return !is_kquant(type); }

template <int TYPE>
static bool fold_fits() {
    return (size_t)ms_smem<TYPE, 16, FOLD_R, FOLD_S, true, MS_FOLD_WARPS>() <= smem_optin();
}

template <int TYPE, int NB>
static int launch_shape(const WeightGroup &t, int cols, const int8_t *xq, const float *xd, int nb,
                        int accumulate, const wick_mv_fold &f) {
    if constexpr (fold_pays(TYPE)) {
        if (f.norm)
            return launch_stream<TYPE, NB, FOLD_R, FOLD_S, true, MS_FOLD_WARPS>(t, cols, xq, xd,
                                                                              nb, accumulate, f);
    } else if (f.norm) {
        return (int)cudaErrorInvalidValue;
    }
    // The streaming kernel copies whole 16-byte pieces of 16-byte aligned rows.
    bool aligned = row_bytes(TYPE, cols) % 16 == 0;
    for (int i = 0; i < 3; i++) aligned = aligned && (uintptr_t)t.w[i] % 16 == 0;
    int v = aligned ? mv_variant : 1;
    // Kernel alone, the streaming kernel lost to the direct one on 4096-row matrices (H100:
    // 8.6 against 6.7 us at 4096x4096), but sending those to the direct kernel made the whole
    // decode step slower (Q8_0 tg128 209 -> 191 tok/s, Q4_0 313 -> 308), so every aligned
    // shape streams (docs/PERF.md).
    if (v == 0) {
        // Rows per warp: activation loads shared by more rows, as long as the grid still
        // gives every SM two blocks; one row per warp gets a deeper ring instead, to keep
        // as many bytes in flight per SM. Sixteen batch rows times four weight rows would
        // not fit in registers.
        int total = t.rows[0] + t.rows[1] + t.rows[2];
        int r_max = nb == 1 || NB == 16 ? 2 : 4, want = 2 * sm_count();
        int r = 1;
        while (r < r_max && (total + MS_WARPS * 2 * r - 1) / (MS_WARPS * 2 * r) >= want) r *= 2;
        v = r == 1 ? 2 : r == 2 ? 3 : 4;
    }
    switch (v) {
        case 1: return launch_old<TYPE, NB>(t, cols, xq, xd, nb, accumulate, f);
        case 3: return launch_stream<TYPE, NB, 2, 4>(t, cols, xq, xd, nb, accumulate, f);
        case 4: return launch_stream<TYPE, NB, 4, 4>(t, cols, xq, xd, nb, accumulate, f);
        case 5: return launch_stream<TYPE, NB, 1, 4>(t, cols, xq, xd, nb, accumulate, f);
        default: return launch_stream<TYPE, NB, 1, 8>(t, cols, xq, xd, nb, accumulate, f);
    }
}

template <int TYPE>
static int launch_type(const WeightGroup &t, int cols, const int8_t *xq, const float *xd, int nb,
                       int accumulate, const wick_mv_fold &f) {
    if (nb == 1) return launch_shape<TYPE, 1>(t, cols, xq, xd, nb, accumulate, f);
    if (nb == 2) return launch_shape<TYPE, 2>(t, cols, xq, xd, nb, accumulate, f);
    if (nb <= 4) return launch_shape<TYPE, 4>(t, cols, xq, xd, nb, accumulate, f);
    if (nb <= 8) return launch_shape<TYPE, MV_NB>(t, cols, xq, xd, nb, accumulate, f);
    // Up to 16 rows in one pass over the weights; row_exact batches beyond in passes of 16.
    return launch_shape<TYPE, 16>(t, cols, xq, xd, nb, accumulate, f);
}

#define WICK_MV_TYPES(X) X(T_Q4_0) X(T_Q4_1) X(T_Q5_0) X(T_Q5_1) X(T_Q8_0) X(T_Q4_K) X(T_Q5_K) X(T_Q6_K)

extern "C" int wick_matvec_fold_applies(int type, const void *w, int rows, int cols) {
    if (!wick_bulk || !wick_matvec_q8_supports(type) || !fold_pays(type) || rows % 32 != 0 ||
        cols % block_elems(type) != 0 || row_bytes(type, cols) % 16 != 0 || (uintptr_t)w % 16 != 0)
        return 0;
    switch (type) {
#define FITS(T) case T: return fold_fits<T>() ? 1 : 0;
        WICK_MV_TYPES(FITS)
#undef FITS
        default: return 0;
    }
}

// Gate and up with SwiGLU in the epilogue (SWI): blocks of 16 warps, each warp gate rows i,
// i + 1 and up rows i, i + 1, so a block owns 32 of SwiGLU's outputs and rounds them to
// int8 itself. The SwiGLU launch between gate/up and down goes. Steps are not paired
// (ms_group): four rows of unpaired steps are as many bytes a step as two rows of paired
// ones. The ring has two steps so that two blocks share an SM (Q4_0's single rows, slots
// packed tight, three): H200, Q4_0 tg128 picked on device 570 with the separate launches,
// 548 with a ring of four steps (one block an SM), 578 with three, 596 with two, 599 with
// two packed tight (docs/PERF.md, session 26).
constexpr int SWI_S = 2;

// Q8_0 and K-quant gate/up lose with it (Q8_0 398 -> 396, Q4_K_M 493 -> 470: one block an
// SM for Q8_0's steps, and K-quant decoding wants more warps), so they keep the separate
// launches, and have no SwiGLU kernels.
__host__ __device__ constexpr bool swi_pays(int type) {
    return !is_kquant(type) && type != T_Q8_0;
}

template <int TYPE, int NB, int SWI = 1>
__host__ __device__ constexpr int swi_smem() {
    return ms_smem<TYPE, NB, MS_SWI_R, SWI_S, true, MS_SWI_WARPS, SWI>();
}
template <int TYPE>
__host__ __device__ constexpr bool swi_compiles() {
    return swi_pays(TYPE) && swi_smem<TYPE, 16>() <= 227 * 1024;
}
// Whether three blocks of single rows fit an SM with slots packed tight (1 KB of each
// block's shared memory is the system's).
template <int TYPE>
__host__ __device__ constexpr bool swi_tight() {
    return 3 * (swi_smem<TYPE, 1, 2>() + 1024) <= 228 * 1024;
}

template <int TYPE, int NB, int SWI>
static int launch_swiglu(const WeightGroup &t, int cols, const int8_t *xq, const float *xd,
                         int nb, const wick_mv_fold &f) {
    constexpr int SMEM = swi_smem<TYPE, NB, SWI>();
    auto kernel = matvec_q8_stream_kernel<TYPE, NB, MS_SWI_R, SWI_S, true, MS_SWI_WARPS,
                                          NB == 1, SWI>;
    static bool opted = false;
    if (!opted) {
        cudaError_t e =
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
        if (e != cudaSuccess) return (int)e;
        opted = true;
    }
    wick_launch(kernel, t.rows[0] / 32, MS_SWI_WARPS * 32, SMEM, t, cols, xq, xd, nb, 0,
                wick_early ? 1 : 0, f);
    return 0;
}

template <int TYPE>
static int launch_swiglu_type(const WeightGroup &t, int cols, const int8_t *xq, const float *xd,
                              int nb, const wick_mv_fold &f) {
    if constexpr (swi_compiles<TYPE>()) {
        // Packing changes where the bytes sit, not the sums: every shape has the same bits.
        if (nb == 1) return launch_swiglu<TYPE, 1, swi_tight<TYPE>() ? 2 : 1>(t, cols, xq, xd, nb, f);
        if (nb == 2) return launch_swiglu<TYPE, 2, 1>(t, cols, xq, xd, nb, f);
        if (nb <= 4) return launch_swiglu<TYPE, 4, 1>(t, cols, xq, xd, nb, f);
        if (nb <= 8) return launch_swiglu<TYPE, 8, 1>(t, cols, xq, xd, nb, f);
        return launch_swiglu<TYPE, 16, 1>(t, cols, xq, xd, nb, f);
    }
    return (int)cudaErrorInvalidValue;
}

template <int TYPE>
static bool swi_fits() {
    if constexpr (swi_compiles<TYPE>()) return (size_t)swi_smem<TYPE, 16>() <= smem_optin();
    return false;
}

extern "C" int wick_matvec_swiglu_applies(int type, const void *w_gate, const void *w_up,
                                          int rows, int cols) {
    if (!wick_bulk || !wick_matvec_q8_supports(type) || rows % 32 != 0 ||
        cols % block_elems(type) != 0 || row_bytes(type, cols) % 16 != 0 ||
        (uintptr_t)w_gate % 16 != 0 || (uintptr_t)w_up % 16 != 0)
        return 0;
    switch (type) {
#define FITS(T) case T: return swi_fits<T>() ? 1 : 0;
        WICK_MV_TYPES(FITS)
#undef FITS
        default: return 0;
    }
}

extern "C" int wick_matvec_q8_swiglu(int type, const void *w_gate, const void *w_up, int rows,
                                     int cols, const int8_t *xq, const float *xd, int nb,
                                     const wick_mv_fold *in, float *h, int8_t *hq, float *hd) {
    if (!wick_matvec_swiglu_applies(type, w_gate, w_up, rows, cols) || nb < 1)
        return (int)cudaErrorInvalidValue;
    wick_mv_fold f = in ? *in : wick_mv_fold{};
    f.norm = nullptr;
    f.out_q = hq;
    f.out_d = hd;
    f.out_ss = nullptr;
    WeightGroup t = {};
    t.w[0] = (const uint8_t *)w_gate;
    t.w[1] = t.w[2] = (const uint8_t *)w_up;
    t.y[0] = t.y[1] = t.y[2] = h;
    t.rows[0] = rows;
    int e = 0;
    switch (type) {
#define LAUNCH(T) case T: e = launch_swiglu_type<T>(t, cols, xq, xd, nb, f); break;
        WICK_MV_TYPES(LAUNCH)
#undef LAUNCH
        default: return (int)cudaErrorInvalidValue;
    }
    return e ? e : (int)cudaGetLastError();
}

extern "C" int wick_matvec_q8(int type, const wick_mv_target *targets, int n_targets, int cols,
                              const int8_t *xq, const float *xd, int nb, int accumulate,
                              const wick_mv_fold *fold) {
    if (!wick_matvec_q8_supports(type) || cols % block_elems(type) != 0 || n_targets < 1 ||
        n_targets > 3)
        return (int)cudaErrorInvalidValue;
    wick_mv_fold f = fold ? *fold : wick_mv_fold{};
    if (f.norm && (n_targets != 1 || !wick_matvec_fold_applies(type, targets[0].w, targets[0].rows, cols)))
        return (int)cudaErrorInvalidValue;
    WeightGroup t = {};
    for (int i = 0; i < 3; i++) {
        const wick_mv_target &g = targets[i < n_targets ? i : n_targets - 1];
        t.w[i] = (const uint8_t *)g.w;
        t.y[i] = g.y;
        t.rows[i] = i < n_targets ? g.rows : 0;
    }
    int e = 0;
    switch (type) {
#define LAUNCH(T) case T: e = launch_type<T>(t, cols, xq, xd, nb, accumulate, f); break;
        WICK_MV_TYPES(LAUNCH)
#undef LAUNCH
        default: return (int)cudaErrorInvalidValue;
    }
    return e ? e : (int)cudaGetLastError();
}
