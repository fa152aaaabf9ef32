// Single-row attention split over the positions (flash-decoding). One (row, head) block per
// query head leaves most of the GPU idle on a small model (SmolLM2: 9 heads, 9 blocks on
// 132 SMs) and has every head of a group read the same K/V rows. Here a block takes one KV
// head with the query heads of its group (up to SPLIT_GROUP of them, so each K/V row is
// read once per group) and one slice of the live positions; it writes a partial result
// (max, sum, unnormalized weighted values) per head to a scratch buffer, and a second
// kernel merges the slices in a fixed order.
//
// The number of slices is fixed at launch from the SM count and the heads, never from the
// position: the decode step is a recorded CUDA graph, so each block finds its slice from
// *pos0p and the layer state in device memory, and a slice past the live positions writes
// a neutral partial. A row's result depends only on its position and the cache, never on
// the rows launched beside it, so a verification row (Backend::set_row_exact) is bit for
// bit the decode step at its position.
#pragma once

#include <cuda_runtime.h>

#include "common.cuh"
#include "kv.cuh"
#include "quantize_q8.cuh"
#include "stream.cuh"

constexpr int SPLIT_WARPS = 4;
// Slices per (row, KV head), at most; and the fewest positions a slice takes, so that a
// short context does not spread over blocks that each do almost nothing.
constexpr int SPLIT_MAX = 128;
constexpr int SPLIT_MIN_CHUNK = 16;

// Query heads a block takes; a group of more is split over several blocks. Values per lane
// (PL) times heads is what the registers hold twice (query and accumulator).
template <int PL>
__host__ __device__ constexpr int split_group() {
    return PL >= 8 ? 4 : 8;
}

// The live positions: sinks 0..n_sink, then lo..=pos (src/kv/layout.rs, `live`).
__device__ inline void split_live(int pos, const int32_t *state, int capacity, int keep,
                                  int window, int *n_sink, int *lo, int *offset) {
    *offset = state[0];
    kv_live(pos, capacity, keep, window, state[1], *n_sink, *lo);
}

// Partials of row b, head h, slice s: part_ml[2 * i] = max, [2 * i + 1] = sum of
// exponentials (0 for an empty slice), part_acc[i * head_dim + d] = weighted values,
// with i = (b * n_heads + h) * splits + s and b counted from the launch's first row.
template <int TYPE, int PL>
__global__ void __launch_bounds__(SPLIT_WARPS * 32)
attention_split_kernel(const float *q, const uint8_t *kc, const uint8_t *vc, const int *pos0p,
                       int row0, const int32_t *state, int n_heads, int n_kv_heads,
                       int head_dim, int capacity, int keep, int window, int splits,
                       float *part_ml, float *part_acc) {
    pdl_start();
    constexpr int GM = split_group<PL>();
    __shared__ float sh_m[SPLIT_WARPS][GM], sh_l[SPLIT_WARPS][GM];
    __shared__ float sh_acc[SPLIT_WARPS][GM][PL * 32];
    const int group = n_heads / n_kv_heads;
    const int gchunks = (group + GM - 1) / GM;
    const int kvh = blockIdx.x / gchunks;
    const int h0 = kvh * group + (int)(blockIdx.x % gchunks) * GM;
    const int ng = min(GM, (kvh + 1) * group - h0);
    const int split = blockIdx.y, b = row0 + (int)blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int pos = *pos0p + b;

    int n_sink, lo, offset;
    split_live(pos, state, capacity, keep, window, &n_sink, &lo, &offset);
    const int n_live = n_sink + pos + 1 - lo;
    const int chunk = max(SPLIT_MIN_CHUNK, (n_live + splits - 1) / splits);
    const int j0 = split * chunk, j1 = min(n_live, j0 + chunk);
    // Partials are indexed by the row within the launch.
    const size_t pi0 = ((size_t)blockIdx.z * n_heads + h0) * splits + split;
    if (j0 >= j1) {
        // Nothing to read: a neutral partial, which the merge skips.
        if (threadIdx.x < ng) {
            part_ml[2 * (pi0 + (size_t)threadIdx.x * splits)] = -INFINITY;
            part_ml[2 * (pi0 + (size_t)threadIdx.x * splits) + 1] = 0.f;
        }
        return;
    }

    const int kv_off = kvh * head_dim;
    const float *qr = q + ((size_t)b * n_heads + h0) * head_dim;
    float qv[GM][PL], acc[GM][PL], m[GM], l[GM];
#pragma unroll
    for (int g = 0; g < GM; g++) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int i = 0; i < PL; i++) {
            qv[g][i] = g < ng && lane + 32 * i < head_dim ? qr[g * head_dim + lane + 32 * i] : 0.f;
            acc[g][i] = 0.f;
        }
    }
    // Q8_0 keys are stored rotated: rotate the query alike (see attention.cu).
    const int rot = kv_rot_chunk(TYPE, head_dim);
    if (rot > 1) {
#pragma unroll
        for (int g = 0; g < GM; g++)
#pragma unroll
            for (int i = 0; i < PL; i++)
                if (32 * i < head_dim) qv[g][i] = kv_hadamard(qv[g][i], lane, rot);
    }
    const float scale = rsqrtf((float)head_dim);
    const size_t rb = kv_row_bytes(TYPE, n_kv_heads * head_dim);
    // Two positions per trip, so that the loads of the second overlap the first's sums.
#pragma unroll 2
    for (int j = j0 + warp; j < j1; j += SPLIT_WARPS) {
        int t = j < n_sink ? j : lo + (j - n_sink);
        size_t slot = (size_t)kv_slot(t, capacity, keep, offset) * rb;
        const uint8_t *kr = kc + slot, *vr = vc + slot;
        float kx[PL], vx[PL];
#pragma unroll
        for (int i = 0; i < PL; i++) {
            bool in = lane + 32 * i < head_dim;
            kx[i] = in ? kv_at<TYPE>(kr, kv_off + lane + 32 * i) : 0.f;
            vx[i] = in ? kv_at<TYPE>(vr, kv_off + lane + 32 * i) : 0.f;
        }
#pragma unroll
        for (int g = 0; g < GM; g++) {
            if (g >= ng) break;
            float s = 0.f;
#pragma unroll
            for (int i = 0; i < PL; i++) s += qv[g][i] * kx[i];
            s = warp_sum(s) * scale;
            float m_new = fmaxf(m[g], s);
            float c = __expf(m[g] - m_new), p = __expf(s - m_new);
            l[g] = l[g] * c + p;
#pragma unroll
            for (int i = 0; i < PL; i++) acc[g][i] = acc[g][i] * c + p * vx[i];
            m[g] = m_new;
        }
    }
#pragma unroll
    for (int g = 0; g < GM; g++) {
        if (lane == 0) {
            sh_m[warp][g] = m[g];
            sh_l[warp][g] = l[g];
        }
#pragma unroll
        for (int i = 0; i < PL; i++) sh_acc[warp][g][lane + 32 * i] = acc[g][i];
    }
    __syncthreads();

    // Merge the warps, in warp order, for each (head, value).
    for (int e = threadIdx.x; e < ng * head_dim; e += SPLIT_WARPS * 32) {
        int g = e / head_dim, d = e % head_dim;
        float mx = -INFINITY;
        for (int w = 0; w < SPLIT_WARPS; w++)
            if (sh_l[w][g] > 0.f) mx = fmaxf(mx, sh_m[w][g]);
        float sum = 0.f, v = 0.f;
        for (int w = 0; w < SPLIT_WARPS; w++)
            if (sh_l[w][g] > 0.f) {
                float f = __expf(sh_m[w][g] - mx);
                sum += sh_l[w][g] * f;
                v += sh_acc[w][g][d] * f;
            }
        size_t pi = pi0 + (size_t)g * splits;
        part_acc[pi * head_dim + d] = v;
        if (d == 0) {
            part_ml[2 * pi] = mx;
            part_ml[2 * pi + 1] = sum;
        }
    }
}

// Merges the slices of row row0 + blockIdx.y (partials row blockIdx.y), head blockIdx.x,
// in slice order: one thread per output value (the block a whole number of warps, so that
// the lanes of a warp hold a Hadamard chunk of the output to turn back). With xq, heads
// being whole int8 blocks of 32, it also rounds the output for the product that follows
// (the o projection), as wick_quantize_q8 would.
__global__ void __launch_bounds__(256)
attention_combine_kernel(const float *part_ml, const float *part_acc, int row0, int n_heads,
                         int head_dim, int splits, int rot, float *out, int8_t *xq,
                         float *xd) {
    pdl_start();
    const int h = blockIdx.x, b = row0 + (int)blockIdx.y;
    const int d = threadIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const size_t p0 = ((size_t)blockIdx.y * n_heads + h) * splits;
    const float *ml = part_ml + 2 * p0;
    float mx = -INFINITY;
    for (int s = 0; s < splits; s++)
        if (ml[2 * s + 1] > 0.f) mx = fmaxf(mx, ml[2 * s]);
    float total = 0.f, v = 0.f;
    for (int s = 0; s < splits; s++) {
        float l = ml[2 * s + 1];
        if (l > 0.f) {
            float f = __expf(ml[2 * s] - mx);
            total += l * f;
            if (d < head_dim) v += part_acc[(p0 + s) * head_dim + d] * f;
        }
    }
    v /= total;
    if (rot > 1 && warp * 32 < head_dim) v = kv_hadamard(v, lane, rot);
    const size_t o = ((size_t)b * n_heads + h) * head_dim;
    if (d < head_dim) out[o + d] = v;
    if (xq) quantize_q8_lane(v, (o + d) / 32, lane, xq, xd);
}

// Scratch floats a row of partials takes.
inline size_t attention_split_row_floats(int n_heads, int head_dim, int splits) {
    return (size_t)n_heads * splits * (head_dim + 2);
}

// 0: from the SM count, where attention.cu splits at all; -1: from the SM count, always;
// otherwise this many (capped), for tuning.
static int split_override = 0;

// The slices per (row, KV head group) for this shape: enough blocks for about four per SM,
// no more than the scratch holds for one row; 0 if it cannot hold one slice.
inline int attention_splits(int n_heads, int n_kv_heads, int head_dim, size_t scratch_floats) {
    int pl = head_dim <= 32 ? 1 : head_dim <= 64 ? 2 : head_dim <= 128 ? 4 : 8;
    int gm = pl >= 8 ? split_group<8>() : split_group<1>();
    int gchunks = (n_heads / n_kv_heads + gm - 1) / gm;
    int s = split_override > 0 ? split_override
                               : (4 * sm_count() + n_kv_heads * gchunks - 1) / (n_kv_heads * gchunks);
    s = min(max(s, 1), SPLIT_MAX);
    size_t per = attention_split_row_floats(n_heads, head_dim, 1);
    return (int)min((size_t)s, scratch_floats / per);
}

// Single-row attention of n rows through the split kernel, in launches of as many rows as
// the scratch holds. Rows are independent, so how they are grouped changes nothing. xq
// (or null) takes the output rounded to int8 when heads are whole blocks of 32; *rounded
// says whether it did.
inline int attention_split(int type, const float *q, const void *kc, const void *vc,
                           const int32_t *pos0, const int32_t *state, int n, int n_heads,
                           int n_kv_heads, int head_dim, int capacity, int keep, int window,
                           float *out, float *scratch, size_t scratch_floats, int8_t *xq,
                           float *xd, int *rounded) {
    int splits = attention_splits(n_heads, n_kv_heads, head_dim, scratch_floats);
    if (splits < 1 || n_heads % n_kv_heads) return (int)cudaErrorInvalidValue;
    size_t per_row = attention_split_row_floats(n_heads, head_dim, splits);
    int rows_per = (int)min((size_t)n, scratch_floats / per_row);
    float *part_ml = scratch;
    float *part_acc = scratch + 2 * (size_t)rows_per * n_heads * splits;
    int pl = head_dim <= 32 ? 1 : head_dim <= 64 ? 2 : head_dim <= 128 ? 4 : 8;
    int gm = pl >= 8 ? split_group<8>() : split_group<1>();
    int gchunks = (n_heads / n_kv_heads + gm - 1) / gm;
    int rot = kv_rot_chunk(type, head_dim);
    int comb_threads = (head_dim + 31) / 32 * 32;
    if (head_dim % 32) xq = nullptr;
    *rounded = xq != nullptr;
    if (!xq) xd = nullptr;
    for (int r0 = 0; r0 < n; r0 += rows_per) {
        int rows = min(rows_per, n - r0);
        float *ml = part_ml, *acc = part_acc;
        dim3 grid(n_kv_heads * gchunks, splits, rows);
        cudaError_t e = cudaSuccess;
#define LAUNCH(T, PL)                                                                       \
    e = wick_launch(attention_split_kernel<T, PL>, grid, SPLIT_WARPS * 32, 0, q,            \
                    (const uint8_t *)kc, (const uint8_t *)vc, pos0, r0, state, n_heads,     \
                    n_kv_heads, head_dim, capacity, keep, window, splits, ml, acc)
#define BY_PL(T)                   \
    if (pl == 1) LAUNCH(T, 1);     \
    else if (pl == 2) LAUNCH(T, 2); \
    else if (pl == 4) LAUNCH(T, 4); \
    else LAUNCH(T, 8);
        if (type == T_Q8_0) {
            BY_PL(T_Q8_0)
        } else if (type == T_FP8) {
            BY_PL(T_FP8)
        } else if (type == T_F16) {
            BY_PL(T_F16)
        } else {
            return (int)cudaErrorInvalidValue;
        }
#undef BY_PL
#undef LAUNCH
        if (e != cudaSuccess) return (int)e;
        e = wick_launch(attention_combine_kernel, dim3(n_heads, rows), comb_threads, 0,
                        (const float *)ml, (const float *)acc, r0, n_heads, head_dim, splits,
                        rot, out, xq, xd);
        if (e != cudaSuccess) return (int)e;
    }
    return (int)cudaGetLastError();
}
