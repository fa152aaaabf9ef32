// Causal attention of several query rows at once (prefill, speculative verification) on
// f16 tensor cores: the flash-attention scheme, with every K/V row read once per block
// rather than once per (query row, head).
//
// One block per (KV head, 16 query vectors), where a query vector is one (row, query head)
// pair of that KV head's group, numbered row * group + head-in-group: the block's 16
// vectors form the M side of mma.sync m16n8k16, so the group's heads and neighbouring rows
// share every key and value they load. The block's warps split the keys: warp w takes
// tiles w, w + warps, ... of 32 keys, dequantizes each tile (f16, Q8_0 or fp8; the last two
// scaled in f32) into its own shared memory as f16, computes the 16 x 32 scores, folds
// them into its own online softmax (running max, sum and weighted sum of values per
// vector) and adds P V; at the end the warps' partial results are merged through shared
// memory. Nothing depends on the position at launch (it is read on the device), like the
// single-row kernel. Over a Q8_0 cache, whose rows are Hadamard-rotated
// (src/kv/rotate.rs), the queries are rotated as they are loaded and the output is turned
// back as it is written.
//
// The keys a block walks are the union of its rows' live positions (src/kv/layout.rs,
// `live`): sinks 0..n_sink and lo..=pos, where n_sink and lo only grow with pos, so the
// union is 0..n_sink(last row) followed by max(lo(first row), n_sink(last row))..=pos(last
// row). Each score is then masked by its own row's rule, which keeps the single-row
// kernel's semantics exactly, causal mask and window included.
//
// Fragments of mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 (PTX ISA, "Matrix
// Fragments for mma.m16n8k16 with floating point type"), for lane = 4 * g + t, each
// register holding 2 f16 at consecutive k (lower k in the lower half):
//   A (16 x 16): a0 = row g, k 2t..2t+1      a1 = row g + 8, k 2t..2t+1
//                a2 = row g, k 2t+8..2t+9    a3 = row g + 8, k 2t+8..2t+9
//   B (16 x 8):  b0 = col g, k 2t..2t+1      b1 = col g, k 2t+8..2t+9
//   C (16 x 8, f32): c0, c1 = row g, cols 2t, 2t+1; c2, c3 = row g + 8, cols 2t, 2t+1
// For S = Q K^T the rows are query vectors, k runs along the head and the columns are
// keys (B = K rows as stored, so b0 is one 32-bit word of a key row). For O += P V the rows
// are query vectors, k runs along keys and the columns along the head: the A fragments of
// P are the C fragments of S, converted to f16 (the usual flash-attention register reuse),
// and b0 takes two values of one head column from adjacent key rows.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "attention_tiled.cuh"
#include "common.cuh"
#include "kv.cuh"
#include "stream.cuh"

namespace {

// Keys per warp tile.
constexpr int KT = 32;
constexpr int MAX_WARPS = 8;

__device__ __forceinline__ void mma_f16(float c[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                        uint32_t a3, uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t word(const __half *p) { return *(const uint32_t *)p; }

__device__ __forceinline__ uint32_t pack(__half lo, __half hi) {
    return (uint32_t)__half_as_ushort(lo) | (uint32_t)__half_as_ushort(hi) << 16;
}

__device__ __forceinline__ uint32_t pack(__half2 h) { return pack(__low2half(h), __high2half(h)); }

// Values e..e+7 of a stored row (e a multiple of 8, so they lie in one Q8_0 block; f16
// rows are 16-byte aligned and fp8 rows 4-byte aligned, see attention_tiled_fits), as f16.
template <int TYPE>
__device__ __forceinline__ uint4 load8(const uint8_t *row, int e) {
    if constexpr (TYPE == T_FP8) {
        // Scaled in f32: the scale is a power of two that may lie outside f16's range.
        float d = *(const float *)row;
        const uint32_t *bytes = (const uint32_t *)(row + 4 + e);
        uint32_t w[4];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            uint32_t four = bytes[i];
#pragma unroll
            for (int j = 0; j < 2; j++) {
                uint32_t two = four >> (16 * j);
                w[2 * i + j] = pack(__float2half(d * fp8_to_float(two & 0xff)),
                                    __float2half(d * fp8_to_float((two >> 8) & 0xff)));
            }
        }
        return make_uint4(w[0], w[1], w[2], w[3]);
    } else if constexpr (TYPE == T_Q8_0) {
        const uint8_t *blk = row + (e / 32) * 34;
        float d = __half2float(*(const __half *)blk);
        const uint16_t *qs = (const uint16_t *)(blk + 2 + e % 32);
        uint32_t w[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint16_t two = qs[i];
            w[i] = pack(__float2half(d * (float)(int8_t)(two & 0xff)),
                        __float2half(d * (float)(int8_t)(two >> 8)));
        }
        return make_uint4(w[0], w[1], w[2], w[3]);
    } else {
        return *(const uint4 *)(row + (size_t)e * 2);
    }
}

// D: the head size rounded up to a multiple of 16 (the padding is zeros in Q, K and V).
template <int TYPE, int D>
__global__ void __launch_bounds__(MAX_WARPS * 32)
attention_tiled_kernel(const float *q, const uint8_t *kc, const uint8_t *vc, const int *pos0p,
                       const int32_t *state, int n, int n_heads, int n_kv_heads, int head_dim,
                       int capacity, int keep, int window, float *out) {
    pdl_start();
    // Rows of D halves padded by 8 so that the 8 rows a fragment load touches fall in
    // different banks.
    constexpr int SK = D + 8;
    extern __shared__ __align__(16) uint8_t smem[];
    const int nw = blockDim.x / 32;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    __half *qs = (__half *)smem;
    // Per warp: its K tile then its V tile; after the walk, its 16 x D partial output.
    __half *ks = qs + 16 * SK + warp * 2 * KT * SK;
    __half *vs = ks + KT * SK;
    float *ml = (float *)(qs + 16 * SK + nw * 2 * KT * SK);  // [warp][vector] {m, l}

    const int group = n_heads / n_kv_heads;
    const int kvh = blockIdx.y;
    const int v0 = blockIdx.x * 16;
    const int n_vec = n * group;
    const int pos0 = *pos0p;
    const int kv_dim = n_kv_heads * head_dim;
    const size_t rb = kv_row_bytes(TYPE, kv_dim);
    const int kv_off = kvh * head_dim;
    const int offset = state[0], floor_ = state[1];

    // The block's queries, scaled by log2(e) / sqrt(head_dim) so that the softmax is exp2,
    // and Hadamard-rotated to meet Q8_0 keys (src/kv/rotate.rs). A rotation chunk (at most
    // 32, dividing the head and so dividing D) is an aligned group of lanes holding one
    // vector's values: 16 * D is a multiple of the block, so every lane runs every round.
    const float qscale = rsqrtf((float)head_dim) * 1.4426950408889634f;
    const int rot = kv_rot_chunk(TYPE, head_dim);
    for (int i = threadIdx.x; i < 16 * D; i += blockDim.x) {
        int v = i / D, d = i % D, vg = v0 + v;
        float x = 0.f;
        if (vg < n_vec && d < head_dim) {
            int row = vg / group, h = kvh * group + vg % group;
            x = q[((size_t)row * n_heads + h) * head_dim + d] * qscale;
        }
        if (rot > 1) x = kv_hadamard(x, lane, rot);
        qs[v * SK + d] = __float2half(x);
    }

    // The union of the rows' live positions: key u is position u below n_s, else
    // u_lo + (u - n_s).
    const int r_first = v0 / group, r_last = min(v0 + 15, n_vec - 1) / group;
    int ns_first, lo_first, n_s, lo_last;
    kv_live(pos0 + r_first, capacity, keep, window, floor_, ns_first, lo_first);
    kv_live(pos0 + r_last, capacity, keep, window, floor_, n_s, lo_last);
    const int u_lo = max(lo_first, n_s);
    const int n_union = n_s + max(0, pos0 + r_last + 1 - u_lo);

    // This lane's two vectors (g and g + 8): their position and live range. A vector past
    // the last row sees nothing (position -1).
    int my_pos[2], my_ns[2], my_lo[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int vg = v0 + g + 8 * h;
        my_pos[h] = -1;
        my_ns[h] = my_lo[h] = 0;
        if (vg < n_vec) {
            my_pos[h] = pos0 + vg / group;
            kv_live(my_pos[h], capacity, keep, window, floor_, my_ns[h], my_lo[h]);
        }
    }
    __syncthreads();

    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    // Running max (log2 units) of vectors g and g + 8, and this lane's share of their sums.
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    const int n_tiles = (n_union + KT - 1) / KT;
    for (int tile = warp; tile < n_tiles; tile += nw) {
        const int u0 = tile * KT;
        // Lane j finds the slot of key j; the copy below asks it by shuffle.
        int my_u = u0 + lane;
        int my_slot = -1;
        if (my_u < n_union) {
            int p = my_u < n_s ? my_u : u_lo + (my_u - n_s);
            my_slot = kv_slot(p, capacity, keep, offset);
        }
        __syncwarp();  // the previous tile's fragment loads are done
        constexpr int CPR = D / 8;  // chunks of 8 values per row
        // KT * CPR is a multiple of 32, so every lane takes part in every shuffle.
#pragma unroll 4
        for (int i = lane; i < KT * CPR; i += 32) {
            int j = i / CPR, e = (i % CPR) * 8;
            int slot = __shfl_sync(0xffffffffu, my_slot, j);
            uint4 kx = make_uint4(0, 0, 0, 0), vx = kx;
            // Keys past the union are zeros, so that P V sees 0 * 0, never 0 * NaN.
            if (slot >= 0 && e < head_dim) {
                size_t at = (size_t)slot * rb;
                kx = load8<TYPE>(kc + at, kv_off + e);
                vx = load8<TYPE>(vc + at, kv_off + e);
            }
            *(uint4 *)(ks + j * SK + e) = kx;
            *(uint4 *)(vs + j * SK + e) = vx;
        }
        __syncwarp();

        // S = Q K^T for the 16 vectors and the tile's 32 keys.
        float s[KT / 8][4];
#pragma unroll
        for (int j = 0; j < KT / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            const __half *qa = qs + g * SK + kk * 16 + 2 * t;
            uint32_t a0 = word(qa), a1 = word(qa + 8 * SK), a2 = word(qa + 8),
                     a3 = word(qa + 8 * SK + 8);
#pragma unroll
            for (int j = 0; j < KT / 8; j++) {
                const __half *kb = ks + (j * 8 + g) * SK + kk * 16 + 2 * t;
                mma_f16(s[j], a0, a1, a2, a3, word(kb), word(kb + 8));
            }
        }

        // Mask by each vector's own row, then the online softmax. s[j][e] is vector
        // g + 8 * (e / 2), key j * 8 + 2t + e % 2.
        float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < KT / 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int h = e / 2, u = u0 + j * 8 + 2 * t + e % 2;
                int p = u < n_s ? u : u_lo + (u - n_s);
                bool seen = u < n_union && p <= my_pos[h] && (p < my_ns[h] || p >= my_lo[h]);
                if (!seen) s[j][e] = -INFINITY;
                tmax[h] = fmaxf(tmax[h], s[j][e]);
            }
        }
        float c[2], base[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            // The 4 lanes of a group hold the same two vectors.
            tmax[h] = fmaxf(tmax[h], __shfl_xor_sync(0xffffffffu, tmax[h], 1));
            tmax[h] = fmaxf(tmax[h], __shfl_xor_sync(0xffffffffu, tmax[h], 2));
            float m_new = fmaxf(m[h], tmax[h]);
            // While a vector has seen nothing, exponents are taken against 0 so that
            // -inf - -inf never makes a NaN.
            base[h] = m_new == -INFINITY ? 0.f : m_new;
            c[h] = exp2f(m[h] - base[h]);
            m[h] = m_new;
            l[h] *= c[h];
        }
        // P as the A fragments of P V: k-step ks covers keys 16 ks..16 ks + 15, that is
        // score tiles 2 ks (a0, a1) and 2 ks + 1 (a2, a3). The sums take the rounded
        // weights, the ones P V multiplies by.
        uint32_t pa[KT / 16][4];
#pragma unroll
        for (int j = 0; j < KT / 8; j++) {
            __half2 lo = __floats2half2_rn(exp2f(s[j][0] - base[0]), exp2f(s[j][1] - base[0]));
            __half2 hi = __floats2half2_rn(exp2f(s[j][2] - base[1]), exp2f(s[j][3] - base[1]));
            float2 fl = __half22float2(lo), fh = __half22float2(hi);
            l[0] += fl.x + fl.y;
            l[1] += fh.x + fh.y;
            pa[j / 2][(j % 2) * 2] = pack(lo);
            pa[j / 2][(j % 2) * 2 + 1] = pack(hi);
        }
#pragma unroll
        for (int i = 0; i < D / 8; i++) {
            o[i][0] *= c[0];
            o[i][1] *= c[0];
            o[i][2] *= c[1];
            o[i][3] *= c[1];
        }
        // O += P V: b0 = V[keys 16 ks + 2t, +1][column 8 i + g], b1 the same 8 keys on.
#pragma unroll
        for (int kk = 0; kk < KT / 16; kk++) {
#pragma unroll
            for (int i = 0; i < D / 8; i++) {
                const __half *vb = vs + (kk * 16 + 2 * t) * SK + i * 8 + g;
                mma_f16(o[i], pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3],
                        pack(vb[0], vb[SK]), pack(vb[8 * SK], vb[9 * SK]));
            }
        }
    }

    // Merge the warps. Each first completes its sums over the 4 lanes of a group, then
    // leaves m, l and its 16 x D output (in its own, now idle, tile memory).
#pragma unroll
    for (int h = 0; h < 2; h++) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }
    __syncwarp();
    float *ob = (float *)ks;
#pragma unroll
    for (int i = 0; i < D / 8; i++) {
        int col = i * 8 + 2 * t;
        ob[g * D + col] = o[i][0];
        ob[g * D + col + 1] = o[i][1];
        ob[(g + 8) * D + col] = o[i][2];
        ob[(g + 8) * D + col + 1] = o[i][3];
    }
    if (t == 0) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            ml[(warp * 16 + g + 8 * h) * 2] = m[h];
            ml[(warp * 16 + g + 8 * h) * 2 + 1] = l[h];
        }
    }
    __syncthreads();
    // Q8_0 values are stored rotated, so is the output: turned back in the same lane
    // groups as the queries were rotated in.
    for (int i = threadIdx.x; i < 16 * D; i += blockDim.x) {
        int v = i / D, d = i % D, vg = v0 + v;
        bool valid = vg < n_vec && d < head_dim;
        float x = 0.f;
        if (valid) {
            float mx = -INFINITY;
            for (int w = 0; w < nw; w++) mx = fmaxf(mx, ml[(w * 16 + v) * 2]);
            float total = 0.f, acc = 0.f;
            for (int w = 0; w < nw; w++) {
                float lw = ml[(w * 16 + v) * 2 + 1];
                if (lw > 0.f) {
                    float f = exp2f(ml[(w * 16 + v) * 2] - mx);
                    const float *obw = (const float *)(qs + 16 * SK + w * 2 * KT * SK);
                    total += lw * f;
                    acc += obw[v * D + d] * f;
                }
            }
            x = acc / total;
        }
        if (rot > 1) x = kv_hadamard(x, lane, rot);
        if (valid) {
            int row = vg / group, h = kvh * group + vg % group;
            out[((size_t)row * n_heads + h) * head_dim + d] = x;
        }
    }
}

template <int TYPE, int D>
int launch(const float *q, const uint8_t *kc, const uint8_t *vc, const int32_t *pos0,
           const int32_t *state, int n, int n_heads, int n_kv_heads, int head_dim,
           int capacity, int keep, int window, float *out) {
    constexpr int SK = D + 8;
    constexpr size_t FIXED = 16 * SK * sizeof(__half);
    constexpr size_t PER_WARP = 2 * KT * SK * sizeof(__half) + 16 * 2 * sizeof(float);
    static_assert(16 * D * sizeof(float) <= 2 * KT * SK * sizeof(__half),
                  "a warp's partial output fits its tile memory");
    auto kernel = attention_tiled_kernel<TYPE, D>;
    // Above 48 KiB a block must opt in; once per instantiation (not a stream operation,
    // so also legal while a graph records).
    static int max_smem = 0;
    if (max_smem == 0) {
        int dev = 0, optin = 0;
        cudaError_t e = cudaGetDevice(&dev);
        if (e == cudaSuccess)
            e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
        if (e == cudaSuccess)
            e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
        if (e != cudaSuccess) return (int)e;
        max_smem = optin;
    }
    int m_tiles = (n * (n_heads / n_kv_heads) + 15) / 16;
    // 4 warps per block, 8 when the blocks alone are fewer than the SMs (a few rows over a
    // long context), as shared memory allows.
    int nw = m_tiles * n_kv_heads < sm_count() ? MAX_WARPS : 4;
    while (nw > 1 && FIXED + nw * PER_WARP > (size_t)max_smem) nw /= 2;
    size_t smem = FIXED + nw * PER_WARP;
    if (smem > (size_t)max_smem) return (int)cudaErrorInvalidValue;
    dim3 grid(m_tiles, n_kv_heads);
    wick_launch(kernel, grid, nw * 32, smem, q, kc, vc, pos0, state, n, n_heads, n_kv_heads,
                                                 head_dim, capacity, keep, window, out);
    return (int)cudaGetLastError();
}

template <int TYPE>
int launch_type(const float *q, const uint8_t *kc, const uint8_t *vc, const int32_t *pos0,
                const int32_t *state, int n, int n_heads, int n_kv_heads, int head_dim,
                int capacity, int keep, int window, float *out) {
#define ARGS q, kc, vc, pos0, state, n, n_heads, n_kv_heads, head_dim, capacity, keep, window, out
    if (head_dim <= 16) return launch<TYPE, 16>(ARGS);
    if (head_dim <= 32) return launch<TYPE, 32>(ARGS);
    if (head_dim <= 64) return launch<TYPE, 64>(ARGS);
    if (head_dim <= 96) return launch<TYPE, 96>(ARGS);
    if (head_dim <= 128) return launch<TYPE, 128>(ARGS);
    return launch<TYPE, 256>(ARGS);
#undef ARGS
}

}  // namespace

bool attention_tiled_fits(int type, const void *kc, const void *vc, int n_heads,
                          int n_kv_heads, int head_dim) {
    // Loads move 8 values at a time (16-byte aligned for f16: kv_dim is then a multiple
    // of 8 and the cache allocations are aligned).
    // fp8 rows (a 4-byte scale, then kv_dim bytes) are 4-byte aligned when kv_dim is a
    // multiple of 4, as the cache requires.
    uintptr_t base = (uintptr_t)kc | (uintptr_t)vc;
    bool aligned = type == T_F16 ? base % 16 == 0 : type == T_FP8 ? base % 4 == 0 : true;
    return (type == T_F16 || type == T_Q8_0 || type == T_FP8) && head_dim % 8 == 0 &&
           head_dim <= 256 &&
           n_kv_heads > 0 && n_heads % n_kv_heads == 0 && aligned;
}

int attention_tiled(int type, const float *q, const void *kc, const void *vc,
                    const int32_t *pos0, const int32_t *state, int n, int n_heads,
                    int n_kv_heads, int head_dim, int capacity, int keep, int window,
                    float *out) {
    const uint8_t *k = (const uint8_t *)kc, *v = (const uint8_t *)vc;
    if (type == T_Q8_0)
        return launch_type<T_Q8_0>(q, k, v, pos0, state, n, n_heads, n_kv_heads, head_dim,
                                   capacity, keep, window, out);
    if (type == T_FP8)
        return launch_type<T_FP8>(q, k, v, pos0, state, n, n_heads, n_kv_heads, head_dim,
                                  capacity, keep, window, out);
    return launch_type<T_F16>(q, k, v, pos0, state, n, n_heads, n_kv_heads, head_dim, capacity,
                              keep, window, out);
}
