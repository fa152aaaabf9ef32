// Causal attention over the KV cache (f16, Q8_0 or fp8, laid out as kv.cuh says) with
// grouped-query heads. Q8_0 rows are stored Hadamard-rotated, so the query is rotated the
// same way before it meets the keys, and the output, a sum of rotated values, is turned
// back at the end (src/kv/rotate.rs).
//
// Several query rows go to attention_tiled.cu, which shares each K/V row among the rows
// and the heads of a group. A single row (decode, and each row of a batch that must match
// decode) goes to attention_split.cuh, which splits the positions over blocks, where there
// are too few heads to fill the GPU; otherwise to one block per (query row, head): for f16
// caches and heads of 64 or 128, attention_lanes_kernel (which may also do RoPE and the
// cache store), for the rest the kernel below. Their warps walk their own shares of the
// cached positions with an online softmax (running max, running sum, running weighted sum
// of values), so they need no memory that grows with the context and their launch does not
// depend on the position: the decode step can be captured into a CUDA graph. At the end
// the warps' partial results are merged through shared memory.
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

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

// The weight of each of NW warps' partials (running max part_m, running sum part_l) in
// the merged result: its sum rescaled to the overall max, over the total. Lane w of the
// calling warp returns warp w's weight (0 past NW); every warp that calls gets the same
// bits. A warp that saw no position gets 0 without dividing: a zero dividend takes the
// division's slow path (see rope_angle).
template <int NW>
__device__ inline float merge_weight(const float *part_m, const float *part_l, int lane) {
    static_assert(NW <= 32, "one lane per warp's partial");
    float pm = lane < NW ? part_m[lane] : -INFINITY;
    float pl = lane < NW ? part_l[lane] : 0.f;
    float mx = warp_max(pm);  // every lane: the shuffles need all 32
    float e = pl > 0.f ? __expf(pm - mx) : 0.f;
    float total = warp_sum(pl * e);
    return lane < NW && e != 0.f ? e / total : 0.f;
}

// merge_weight into shared memory, called by one warp.
template <int NW>
__device__ inline void merge_weights(const float *part_m, const float *part_l, float *weight,
                                     int lane) {
    float w = merge_weight<NW>(part_m, part_l, lane);
    if (lane < NW) weight[lane] = w;
}

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
    int offset = state[0], n_sink, lo;
    kv_live(pos, capacity, keep, window, state[1], n_sink, lo);
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
    __shared__ float weight[ATT_WARPS];
    if (warp == 0) merge_weights<ATT_WARPS>(part_m, part_l, weight, lane);
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

// Single-row attention over an f16 cache with each warp on four positions at once: eight
// lanes per position, each lane holding 8 consecutive values of every 64 of the head, so
// that a key or value row arrives as one 16-byte load per lane and per 64 values. At
// decode's short contexts the former kernel's warps walked their positions one after
// another (four dependent load-and-reduce rounds at 64 positions); here one round covers
// 64 positions.
//
// Given k_new (a single row), RoPE and the cache store happen here too: q and k_new come
// unrotated, the block rotates its q head, the new position's key and value are taken from
// k_new and v_new (rounded to f16, as the cache would hold them), and the first block of
// each KV group stores them. That saves a decode step's layer one launch, and rows agree
// bit for bit with the two-launch path (rope_store_kernel, then this kernel from the cache).
constexpr int AL_WARPS = 16;
constexpr int AL_LANES = 8;                   // lanes per position
constexpr int AL_POS = 32 / AL_LANES;         // positions per warp per round

// Value c * 64 + sub * 8 + e of a head, for the lane's e-th value of chunk c.
__device__ inline int al_dim(int c, int sub, int e) { return c * 64 + sub * 8 + e; }

// Two floats as the f16 pair of one 32-bit word (the first in the low half).
__device__ inline uint32_t al_pack2(float a, float b) {
    return (uint32_t)__half_as_ushort(__float2half(a)) |
           ((uint32_t)__half_as_ushort(__float2half(b)) << 16);
}

// The lane's values of one head of an f32 row (h points at the head), as they are.
template <int CH>
__device__ inline void al_load_f32(const float *h, int sub, float *out) {
#pragma unroll
    for (int c = 0; c < CH; c++) {
        const float4 *p = reinterpret_cast<const float4 *>(h + al_dim(c, sub, 0));
        float4 a = p[0], b = p[1];
        float *o = out + 8 * c;
        o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w;
        o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
    }
}

// Those values rotated by the angles in `cs` (sine and cosine of each pair, pairs past
// rope_dims left alone) when it is given, and rounded through f16 when `round`.
template <int CH>
__device__ inline void al_finish(float *v, int sub, const float2 *cs, int rope_dims,
                                 bool round) {
#pragma unroll
    for (int c = 0; c < CH; c++) {
        float *o = v + 8 * c;
        if (cs) {
#pragma unroll
            for (int e = 0; e < 8; e += 2) {
                int i = al_dim(c, sub, e) / 2;
                if (2 * i < rope_dims) rope_rotate(o[e], o[e + 1], cs[i].x, cs[i].y);
            }
        }
        if (round) {
#pragma unroll
            for (int e = 0; e < 8; e++) o[e] = __half2float(__float2half(o[e]));
        }
    }
}

template <int CH>
__device__ inline void al_head_f32(const float *h, int sub, const float2 *cs, int rope_dims,
                                   bool round, float *out) {
    al_load_f32<CH>(h, sub, out);
    al_finish<CH>(out, sub, cs, rope_dims, round);
}

// A key or value row's lane values as f16 pairs, to be turned into floats by al_unpack
// once they are needed (so that the load stays in flight until then).
template <int CH>
__device__ inline void al_load_raw(const uint8_t *row, int sub, uint4 *raw) {
#pragma unroll
    for (int c = 0; c < CH; c++)
        raw[c] = *reinterpret_cast<const uint4 *>(row + (size_t)al_dim(c, sub, 0) * 2);
}

template <int CH>
__device__ inline void al_unpack(const uint4 *raw, float *out) {
#pragma unroll
    for (int c = 0; c < CH; c++) {
        uint32_t w[4] = {raw[c].x, raw[c].y, raw[c].z, raw[c].w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            out[8 * c + 2 * i] = __half2float(__ushort_as_half((unsigned short)(w[i] & 0xffff)));
            out[8 * c + 2 * i + 1] = __half2float(__ushort_as_half((unsigned short)(w[i] >> 16)));
        }
    }
}

template <int HD>
__global__ void __launch_bounds__(AL_WARPS * 32)
attention_lanes_kernel(const float *q, uint8_t *kc, uint8_t *vc, const int *pos0p,
                       const int32_t *state, int n_heads, int n_kv_heads, int capacity,
                       int keep, int window, float *out, int8_t *xq, float *xd,
                       const float *k_new, const float *v_new, int rope_dims, float theta) {
    constexpr int CH = HD / 64, DPL = 8 * CH;
    pdl_start();
    WICK_TRACE_CLOCK(t0);
    __shared__ float part_m[AL_WARPS], part_l[AL_WARPS];
    __shared__ float part_acc[AL_WARPS][HD];
    int b = blockIdx.y, h = blockIdx.x;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int grp = lane / AL_LANES, sub = lane % AL_LANES;
    int group = n_heads / n_kv_heads, kvh = h / group;
    int kv_dim = n_kv_heads * HD;
    size_t rb = (size_t)kv_dim * 2, head_off = (size_t)kvh * HD * 2;
    const bool fused = k_new != nullptr;
    const float *kn_row = fused ? k_new + (size_t)b * kv_dim + kvh * HD : nullptr;
    const float *vn_row = fused ? v_new + (size_t)b * kv_dim + kvh * HD : nullptr;
    // Every read that the first round of positions needs is issued before any of them is
    // used, so that the block waits for memory twice (the position and q, then the rows
    // that depend on the position) rather than once a step: the step used to load q only
    // after the angles, then the new row, then the cached rows (docs/PERF.md, session 27).
    int pos = *pos0p + b;
    int offset = state[0], floor = state[1];
    float qv[DPL];
    al_load_f32<CH>(q + ((size_t)b * n_heads + h) * HD, sub, qv);
    int n_sink, lo;
    kv_live(pos, capacity, keep, window, floor, n_sink, lo);
    int n_live = n_sink + pos + 1 - lo;
    // This lane group's position in the first round, and whether it is the new one.
    int j_first = min(warp * AL_POS + grp, n_live - 1);
    int t_first = j_first < n_sink ? j_first : lo + (j_first - n_sink);
    const bool store = fused && h % group == 0 && warp == 0 && grp == 0;
    const bool new_first = fused && t_first == pos;
    float kn[DPL], vn[DPL];
    if (store || new_first) {
        al_load_f32<CH>(kn_row, sub, kn);
        al_load_f32<CH>(vn_row, sub, vn);
    }
    uint4 k_raw[CH], v_raw[CH];
    if (warp * AL_POS < n_live && !new_first) {
        size_t at = (size_t)kv_slot(t_first, capacity, keep, offset) * rb + head_off;
        al_load_raw<CH>(kc + at, sub, k_raw);
        al_load_raw<CH>(vc + at, sub, v_raw);
    }
    // The pairs' angles, once per block: one thread each, rather than every lane computing
    // eight of them in a row before its first position.
    __shared__ float2 angles[HD / 2];
    const float2 *cs = fused ? angles : nullptr;
    if (fused) {
        for (int i = threadIdx.x; i < HD / 2 && 2 * i < rope_dims; i += blockDim.x) {
            float sn, co;
            rope_angle(i, rope_dims, theta, pos, sn, co);
            angles[i] = make_float2(sn, co);
        }
        __syncthreads();
    }
    WICK_TRACE_MARK(2, t0);

    al_finish<CH>(qv, sub, cs, rope_dims, false);
    // The new row as the cache holds it (rotated key, both rounded to f16).
    if (store || new_first) {
        al_finish<CH>(kn, sub, cs, rope_dims, true);
        al_finish<CH>(vn, sub, nullptr, 0, true);
    }
    // The fused store: the first block of each KV group writes the new row, the same f16
    // values that every block of the group uses for it below.
    if (store) {
        size_t at = (size_t)kv_slot(pos, capacity, keep, offset) * rb + head_off;
#pragma unroll
        for (int c = 0; c < CH; c++) {
            const float *k8 = kn + 8 * c, *v8 = vn + 8 * c;
            size_t e = at + (size_t)al_dim(c, sub, 0) * 2;
            *reinterpret_cast<uint4 *>(kc + e) =
                make_uint4(al_pack2(k8[0], k8[1]), al_pack2(k8[2], k8[3]),
                           al_pack2(k8[4], k8[5]), al_pack2(k8[6], k8[7]));
            *reinterpret_cast<uint4 *>(vc + e) =
                make_uint4(al_pack2(v8[0], v8[1]), al_pack2(v8[2], v8[3]),
                           al_pack2(v8[4], v8[5]), al_pack2(v8[6], v8[7]));
        }
    }
    WICK_TRACE_MARK(3, t0);

    float scale = rsqrtf((float)HD);
    float m = -INFINITY, l = 0.f, acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[i] = 0.f;
    // Warp-uniform rounds (the reductions shuffle across the whole warp).
    for (int j0 = warp * AL_POS; j0 < n_live; j0 += AL_WARPS * AL_POS) {
        int j = j0 + grp;
        if (j >= n_live) j = n_live - 1;  // a spare group redoes a position, then drops it
        int t = j < n_sink ? j : lo + (j - n_sink);
        float kf[DPL], vf[DPL];
        if (j0 == warp * AL_POS && new_first) {
#pragma unroll
            for (int i = 0; i < DPL; i++) kf[i] = kn[i], vf[i] = vn[i];
        } else if (fused && t == pos) {
            al_head_f32<CH>(kn_row, sub, cs, rope_dims, true, kf);
            al_head_f32<CH>(vn_row, sub, nullptr, 0, true, vf);
        } else {
            if (j0 != warp * AL_POS) {
                size_t at = (size_t)kv_slot(t, capacity, keep, offset) * rb + head_off;
                al_load_raw<CH>(kc + at, sub, k_raw);
                al_load_raw<CH>(vc + at, sub, v_raw);
            }
            al_unpack<CH>(k_raw, kf);
            al_unpack<CH>(v_raw, vf);
        }
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < DPL; i++) s = __fmaf_rn(qv[i], kf[i], s);
        // A butterfly: every lane of the eight ends with the same bits.
#pragma unroll
        for (int o = 1; o < AL_LANES; o *= 2) s += __shfl_xor_sync(0xffffffff, s, o);
        if (j0 + grp < n_live) {
            s *= scale;
            float m_new = fmaxf(m, s);
            float c = __expf(m - m_new), p = __expf(s - m_new);
            l = l * c + p;
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[i] = acc[i] * c + p * vf[i];
            m = m_new;
        }
    }
    WICK_TRACE_MARK(4, t0);
    // The warp's four position groups into one, by a butterfly over the groups (both
    // partners compute the same products and sum them, so they stay equal).
#pragma unroll
    for (int o = AL_LANES; o < 32; o *= 2) {
        float m2 = __shfl_xor_sync(0xffffffff, m, o), l2 = __shfl_xor_sync(0xffffffff, l, o);
        float mx = fmaxf(m, m2);
        float c1 = l > 0.f ? __expf(m - mx) : 0.f, c2 = l2 > 0.f ? __expf(m2 - mx) : 0.f;
        l = __fadd_rn(__fmul_rn(l, c1), __fmul_rn(l2, c2));
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            float a2 = __shfl_xor_sync(0xffffffff, acc[i], o);
            acc[i] = __fadd_rn(__fmul_rn(acc[i], c1), __fmul_rn(a2, c2));
        }
        m = l > 0.f ? mx : -INFINITY;
    }
    if (lane == 0) {
        part_m[warp] = m;
        part_l[warp] = l;
    }
    if (grp == 0) {
#pragma unroll
        for (int c = 0; c < CH; c++)
#pragma unroll
            for (int e = 0; e < 8; e++) part_acc[warp][al_dim(c, sub, e)] = acc[8 * c + e];
    }
    WICK_TRACE_MARK(5, t0);
    __syncthreads();
    WICK_TRACE_MARK(6, t0);
    // A thread per output value. Each warp that writes some computes the warps' weights
    // itself (the same bits in each) rather than waiting at a second barrier for one warp
    // to share them.
    if (warp * 32 >= HD) return;
    float my_weight = merge_weight<AL_WARPS>(part_m, part_l, lane);
    WICK_TRACE_MARK(7, t0);
    int d = threadIdx.x;
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < AL_WARPS; w++)
        v += part_acc[w][d] * __shfl_sync(0xffffffff, my_weight, w);
    out[((size_t)b * n_heads + h) * HD + d] = v;
    if (xq) quantize_q8_lane(v, (((size_t)b * n_heads + h) * HD + d) / 32, lane, xq, xd);
    WICK_TRACE_MARK(8, t0);
}

// WICK_ATT_LANES=0 keeps single rows on attention_kernel, to compare.
static bool att_lanes() {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("WICK_ATT_LANES");
        on = !(e && strcmp(e, "0") == 0);
    }
    return on != 0;
}

// Whether single rows of this shape go to attention_lanes_kernel.
static bool lanes_apply(int type, const void *kc, const void *vc, int head_dim) {
    return att_lanes() && type == T_F16 && (head_dim == 64 || head_dim == 128) &&
           (uintptr_t)kc % 16 == 0 && (uintptr_t)vc % 16 == 0;
}

static int launch_lanes(const float *q, const void *kc, const void *vc, const int32_t *pos0,
                        const int32_t *state, int n, int n_heads, int n_kv_heads, int head_dim,
                        int capacity, int keep, int window, float *out, int8_t *xq, float *xd,
                        const float *k_new, const float *v_new, int rope_dims, float theta) {
    dim3 grid(n_heads, n);
#define LAUNCH(HD)                                                                         \
    wick_launch(attention_lanes_kernel<HD>, grid, AL_WARPS * 32, 0, q, (uint8_t *)kc,      \
                (uint8_t *)vc, pos0, state, n_heads, n_kv_heads, capacity, keep, window,   \
                out, xq, xd, k_new, v_new, rope_dims, theta)
    if (head_dim == 64)
        LAUNCH(64);
    else
        LAUNCH(128);
#undef LAUNCH
    return (int)cudaGetLastError();
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
    if (head_dim % 32) xq = nullptr;
    *rounded = xq != nullptr;
    if (!xq) xd = nullptr;
    if (lanes_apply(type, kc, vc, head_dim))
        return launch_lanes(q, kc, vc, pos0, state, n, n_heads, n_kv_heads, head_dim, capacity,
                            keep, window, out, xq, xd, nullptr, nullptr, 0, 0.f);
    dim3 grid(n_heads, n);
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

extern "C" int wick_attention_rope_applies(int type, const void *kc, const void *vc, int n,
                                           int n_heads, int head_dim) {
    // Where wick_attention would send a single row to the split kernel, so does this.
    bool split = !att_decode_old && (split_override != 0 || n_heads * 8 < sm_count());
    return n == 1 && !split && lanes_apply(type, kc, vc, head_dim);
}

extern "C" int wick_attention_rope(int type, const float *q, const float *k, const float *v,
                                   void *kc, void *vc, const int32_t *pos0,
                                   const int32_t *state, int n_heads, int n_kv_heads,
                                   int head_dim, int rope_dims, float theta, int capacity,
                                   int keep, int window, float *out, int8_t *xq, float *xd,
                                   int *rounded) {
    *rounded = 0;
    if (!wick_attention_rope_applies(type, kc, vc, 1, n_heads, head_dim) || capacity <= keep ||
        n_kv_heads <= 0 || n_heads % n_kv_heads != 0 || rope_dims % 2 != 0)
        return (int)cudaErrorInvalidValue;
    *rounded = xq != nullptr;
    if (!xq) xd = nullptr;
    return launch_lanes(q, kc, vc, pos0, state, 1, n_heads, n_kv_heads, head_dim, capacity, keep,
                        window, out, xq, xd, k, v, rope_dims, theta);
}
