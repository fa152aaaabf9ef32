// Causal attention over the KV cache (f16, Q8_0 or fp8, laid out as kv.cuh says) with
// grouped-query heads. Q8_0 rows are stored Hadamard-rotated, so the query is rotated the
// same way before it meets the keys, and the output, a sum of rotated values, is turned
// back at the end (src/kv/rotate.rs).
//
// Several query rows go to attention_tiled.cu, which shares each K/V row among the rows
// and the heads of a group. A single row (decode, and each row of a batch that must match
// decode) goes to attention_split.cuh, which splits the positions over blocks. The kernel
// below is the former single-row one, kept to compare (wick_attention_decode): one block
// per (query row, head). Each warp walks its own share of the cached positions with an online softmax
// (running max, running sum, running weighted sum of values), so the kernel needs no
// memory that grows with the context and its launch does not depend on the position: the
// decode step can be captured into a CUDA graph. At the end the warps' partial results are
// merged through shared memory.
#include <cuda_runtime.h>

#include "attention_split.cuh"
#include "attention_tiled.cuh"
#include "common.cuh"
#include "kv.cuh"
#include "quantize_q8.cuh"
#include "stream.cuh"

// Warps per (row, head): each walks 1/16 of the positions, so a long decode context is
// covered by 16 independent chains of loads rather than 4.
constexpr int ATT_WARPS = 16;
constexpr int MAX_HEAD_DIM = 256;
constexpr int PER_LANE = MAX_HEAD_DIM / 32;

template <int TYPE>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attention_kernel(const float *q, const uint8_t *kc, const uint8_t *vc, const int *pos0p,
                 const int32_t *state, int n_heads, int n_kv_heads, int head_dim, int capacity,
                 int keep, int window, float *out, int8_t *xq, float *xd) {
    pdl_start();
    __shared__ float part_m[ATT_WARPS], part_l[ATT_WARPS];
    __shared__ float part_acc[ATT_WARPS][MAX_HEAD_DIM];
    int b = blockIdx.y, h = blockIdx.x;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int pos = *pos0p + b;
    int kv_dim = n_kv_heads * head_dim;
    int kv_off = (h / (n_heads / n_kv_heads)) * head_dim;
    // Each lane owns values lane, lane + 32, ... of the head (none past head_dim, which
    // may be smaller than a warp: stories260K's heads are 8 wide).

    const float *qr = q + ((size_t)b * n_heads + h) * head_dim;
    float qv[PER_LANE], acc[PER_LANE];
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        qv[i] = lane + 32 * i < head_dim ? qr[lane + 32 * i] : 0.f;
        acc[i] = 0.f;
    }
    // Chunks of at most 32 that divide the head: lane groups of one register, and lanes
    // past a short head hold zeros and mix only with each other.
    const int rot = kv_rot_chunk(TYPE, head_dim);
    if (rot > 1) {
#pragma unroll
        for (int i = 0; i < PER_LANE; i++)
            if (32 * i < head_dim) qv[i] = kv_hadamard(qv[i], lane, rot);
    }
    float scale = rsqrtf((float)head_dim);
    // The live positions: sinks 0..n_sink, then lo..=pos (src/kv/layout.rs, `live`).
    int offset = state[0], floor = state[1];
    int n_sink, lo;
    if (window > 0) {
        n_sink = 0;
        lo = max(max(pos + 1 - window, 0), floor);
    } else {
        n_sink = min(keep, pos + 1);
        lo = max(n_sink, pos + 1 - (capacity - keep));
    }
    int n_live = n_sink + pos + 1 - lo;
    size_t rb = kv_row_bytes(TYPE, kv_dim);
    float m = -INFINITY, l = 0.f;
    for (int j = warp; j < n_live; j += ATT_WARPS) {
        int t = j < n_sink ? j : lo + (j - n_sink);
        size_t slot = (size_t)kv_slot(t, capacity, keep, offset) * rb;
        const uint8_t *kr = kc + slot;
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < PER_LANE; i++)
            if (lane + 32 * i < head_dim) s += qv[i] * kv_at<TYPE>(kr, kv_off + lane + 32 * i);
        s = warp_sum(s) * scale;
        float m_new = fmaxf(m, s);
        float c = __expf(m - m_new), p = __expf(s - m_new);
        l = l * c + p;
        const uint8_t *vr = vc + slot;
#pragma unroll
        for (int i = 0; i < PER_LANE; i++)
            if (lane + 32 * i < head_dim)
                acc[i] = acc[i] * c + p * kv_at<TYPE>(vr, kv_off + lane + 32 * i);
        m = m_new;
    }
    if (lane == 0) {
        part_m[warp] = m;
        part_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < PER_LANE; i++)
        if (lane + 32 * i < head_dim) part_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();

    // Merge the warps: each warp's weight (its partial rescaled to the overall max, over
    // the total) is computed once, by one warp's lanes, rather than by every thread in a
    // chain of sixteen exponentials: at decode's short contexts that chain was about a fifth
    // of this kernel's time in a decode step (docs/PERF.md, session 15). A warp that saw no
    // position has l = 0 and acc = 0.
    static_assert(ATT_WARPS <= 32, "one lane per warp's partial");
    __shared__ float weight[ATT_WARPS];
    if (warp == 0) {
        float pm = lane < ATT_WARPS ? part_m[lane] : -INFINITY;
        float pl = lane < ATT_WARPS ? part_l[lane] : 0.f;
        float mx = warp_max(pm);  // every lane: the shuffles need all 32
        float e = pl > 0.f ? __expf(pm - mx) : 0.f;
        float total = warp_sum(pl * e);
        if (lane < ATT_WARPS) weight[lane] = e / total;
    }
    __syncthreads();
    // One value per thread (the block is wider than any head), so that a warp's lanes
    // hold a Hadamard chunk of the output to turn back.
    static_assert(MAX_HEAD_DIM <= ATT_WARPS * 32, "a thread per output value");
    float *o = out + ((size_t)b * n_heads + h) * head_dim;
    int d = threadIdx.x;
    float v = 0.f;
    if (d < head_dim) {
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) v += part_acc[w][d] * weight[w];
    }
    if (rot > 1 && warp * 32 < head_dim) v = kv_hadamard(v, lane, rot);
    if (d < head_dim) o[d] = v;
    // With xq (heads whole blocks of 32), the output rounded to int8 for the o projection
    // here, which saves that product a launch of its own.
    if (xq && warp * 32 < head_dim)
        quantize_q8_lane(v, (((size_t)b * n_heads + h) * head_dim + d) / 32, lane, xq, xd);
}

// 1 sends every call to the single-row kernel (for timing one against the other).
static int att_variant = 0;
// 1: single rows go to the former one-block-per-head kernel rather than the split one.
static int att_decode_old = 0;

extern "C" void wick_attention_variant(int v) { att_variant = v; }

extern "C" void wick_attention_decode(int old_kernel, int splits) {
    att_decode_old = old_kernel;
    split_override = splits;
}

extern "C" int wick_attention(int type, const float *q, const void *kc, const void *vc,
                              const int32_t *pos0, const int32_t *state, int n, int n_heads,
                              int n_kv_heads, int head_dim, int capacity, int keep, int window,
                              float *out, float *scratch, size_t scratch_floats, int8_t *xq,
                              float *xd, int *rounded) {
    *rounded = 0;
    if (head_dim > MAX_HEAD_DIM || capacity <= keep) return (int)cudaErrorInvalidValue;
    if (n > 1 && att_variant == 0 &&
        attention_tiled_fits(type, kc, vc, n_heads, n_kv_heads, head_dim))
        return attention_tiled(type, q, kc, vc, pos0, state, n, n_heads, n_kv_heads, head_dim,
                               capacity, keep, window, out);
    // Split only where the heads alone leave most SMs idle: with 32 heads (llama3-8b) the
    // one-block-per-head kernel decoded faster on an H100 at short contexts (313 against
    // 299 tok/s); with 9 (SmolLM2) it used 9 SMs. A number in WICK_ATT_DECODE (or -1 from
    // set_attention_decode: the automatic count) forces splits.
    const bool few_heads = split_override != 0 || n_heads * 8 < sm_count();
    if (!att_decode_old && few_heads &&
        attention_splits(n_heads, n_kv_heads, head_dim, scratch_floats) > 0)
        return attention_split(type, q, kc, vc, pos0, state, n, n_heads, n_kv_heads, head_dim,
                               capacity, keep, window, out, scratch, scratch_floats, xq, xd,
                               rounded);
    dim3 grid(n_heads, n);
    if (head_dim % 32) xq = nullptr;
    *rounded = xq != nullptr;
    if (!xq) xd = nullptr;
#define LAUNCH(T)                                                                          \
    wick_launch(attention_kernel<T>, grid, ATT_WARPS * 32, 0,                           \
        q, (const uint8_t *)kc, (const uint8_t *)vc, pos0, state, n_heads, n_kv_heads,      \
        head_dim, capacity, keep, window, out, xq, xd)
    if (type == T_Q8_0)
        LAUNCH(T_Q8_0);
    else if (type == T_FP8)
        LAUNCH(T_FP8);
    else if (type == T_F16)
        LAUNCH(T_F16);
    else
        return (int)cudaErrorInvalidValue;
#undef LAUNCH
    return (int)cudaGetLastError();
}
