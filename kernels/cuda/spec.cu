// Greedy speculative decoding kept on the device: the draft's picks feed its next decode
// step and the verification's tokens without a trip through the host, and the acceptance
// rule runs here too, so that one small copy to the host ends each verification.
//
// The argmax follows the CPU sampler's greedy pick exactly: NaN counts as -inf, values are
// ordered as f32::total_cmp orders them (so -0 < +0), and ties go to the lowest id.
#include <cuda_runtime.h>
#include <limits.h>
#include <stdint.h>
#include <math.h>

#include "common.cuh"
#include "stream.cuh"

constexpr int PICK_THREADS = 1024;

// A key whose signed integer order is f32::total_cmp's order of the value.
__device__ __forceinline__ int order_key(float x) {
    if (isnan(x)) x = -INFINITY;
    int b = __float_as_int(x);
    return b >= 0 ? b : b ^ 0x7fffffff;
}

// Whether (ka, ia) is a better pick than (kb, ib): the higher key, then the lower id.
__device__ __forceinline__ bool better(int ka, int ia, int kb, int ib) {
    return ka > kb || (ka == kb && ia < ib);
}

// The argmax of one row of `vocab` logits, and the probability of that token at
// temperature 1 (how sure the model is), by the whole block.
__device__ void row_argmax(const float *__restrict__ x, int vocab, int *id_out,
                           float *top_out) {
    __shared__ int s_key[PICK_THREADS / 32], s_id[PICK_THREADS / 32];
    __shared__ float s_sum[PICK_THREADS / 32];
    __shared__ int best_id;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    int key = INT_MIN, id = INT_MAX;
    auto consider = [&](float v, int i) {
        int k = order_key(v);
        if (better(k, i, key, id)) {
            key = k;
            id = i;
        }
    };
    // 16-byte loads where the row allows (one block reads a whole row of ~128K logits, so
    // bytes in flight per thread set its time); ties still go to the lowest id, whatever
    // the order in which a thread meets its values.
    int n4 = reinterpret_cast<uintptr_t>(x) % 16 == 0 ? vocab / 4 : 0;
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
#pragma unroll 4
    for (int j = threadIdx.x; j < n4; j += blockDim.x) {
        float4 v = x4[j];
        consider(v.x, 4 * j);
        consider(v.y, 4 * j + 1);
        consider(v.z, 4 * j + 2);
        consider(v.w, 4 * j + 3);
    }
    for (int i = 4 * n4 + threadIdx.x; i < vocab; i += blockDim.x) consider(x[i], i);
    for (int o = 16; o > 0; o /= 2) {
        int k2 = __shfl_down_sync(0xffffffff, key, o);
        int i2 = __shfl_down_sync(0xffffffff, id, o);
        if (better(k2, i2, key, id)) {
            key = k2;
            id = i2;
        }
    }
    if (lane == 0) {
        s_key[warp] = key;
        s_id[warp] = id;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        key = s_key[0];
        id = s_id[0];
        for (int w = 1; w < warps; w++)
            if (better(s_key[w], s_id[w], key, id)) {
                key = s_key[w];
                id = s_id[w];
            }
        best_id = id;
    }
    __syncthreads();
    id = best_id;
    float mx = x[id];
    if (isnan(mx)) mx = -INFINITY;
    // sum(exp(l - max)); NaN logits count as impossible, as in the argmax.
    float s = 0.f;
    if (mx != -INFINITY)
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            float l = x[i];
            if (!isnan(l)) s += expf(l - mx);
        }
    for (int o = 16; o > 0; o /= 2) s += __shfl_down_sync(0xffffffff, s, o);
    if (lane == 0) s_sum[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.f;
        for (int w = 0; w < warps; w++) t += s_sum[w];
        *id_out = id;
        // Every logit -inf or NaN: nothing to be sure of.
        *top_out = t > 0.f ? 1.f / t : 0.f;
    }
}

__global__ void __launch_bounds__(PICK_THREADS)
argmax_rows_kernel(const float *__restrict__ x, int vocab, int *ids, float *top) {
    pdl_start();
    int r = blockIdx.x;
    row_argmax(x + (size_t)r * vocab, vocab, ids + r, top + r);
}

__global__ void __launch_bounds__(PICK_THREADS)
pick_kernel(const float *__restrict__ logits, int vocab, int *params, int next_pos,
            int *proposals, float *top, int i) {
    pdl_start();
    __shared__ int id;
    __shared__ float p;
    row_argmax(logits, vocab, &id, &p);
    __syncthreads();
    if (threadIdx.x == 0) {
        proposals[i] = id;
        top[i] = p;
        params[0] = next_pos;
        params[1] = id;
    }
}

// Plain greedy decoding's pick (no probability), over many blocks: one block read the
// ~128K logits of a vocabulary in about 20 us. Candidates are packed into one integer whose
// unsigned order is the pick's order (the value's order key, then the lower id), each
// block leaves its best, and the last block to finish takes the best of those.
constexpr int PICK_BLOCKS = 64, PICK_BLOCK_THREADS = 256;
__device__ unsigned long long pick_part[PICK_BLOCKS];
__device__ unsigned int pick_done;

__device__ __forceinline__ unsigned long long pick_pack(float v, int i) {
    return ((unsigned long long)((unsigned)order_key(v) ^ 0x80000000u) << 32) |
           (unsigned)(INT_MAX - i);
}

__device__ __forceinline__ unsigned long long warp_max_u64(unsigned long long v) {
    for (int o = 16; o > 0; o /= 2) {
        unsigned long long w = __shfl_xor_sync(0xffffffff, v, o);
        v = w > v ? w : v;
    }
    return v;
}

__global__ void __launch_bounds__(PICK_BLOCK_THREADS)
pick_many_kernel(const float *__restrict__ x, int vocab, int *params, int next_pos, int *out) {
    pdl_start();
    __shared__ unsigned long long s_best[PICK_BLOCK_THREADS / 32];
    __shared__ bool last;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int t = blockIdx.x * blockDim.x + threadIdx.x, stride = gridDim.x * blockDim.x;
    unsigned long long best = 0;  // below every candidate: a key is never INT_MIN
    auto consider = [&](float v, int i) {
        unsigned long long c = pick_pack(v, i);
        best = c > best ? c : best;
    };
    int n4 = reinterpret_cast<uintptr_t>(x) % 16 == 0 ? vocab / 4 : 0;
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
    for (int j = t; j < n4; j += stride) {
        float4 v = x4[j];
        consider(v.x, 4 * j);
        consider(v.y, 4 * j + 1);
        consider(v.z, 4 * j + 2);
        consider(v.w, 4 * j + 3);
    }
    for (int i = 4 * n4 + t; i < vocab; i += stride) consider(x[i], i);
    best = warp_max_u64(best);
    if (lane == 0) s_best[warp] = best;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 0; w < PICK_BLOCK_THREADS / 32; w++) best = s_best[w] > best ? s_best[w] : best;
        pick_part[blockIdx.x] = best;
        __threadfence();
        last = atomicAdd(&pick_done, 1) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last || warp != 0) return;
    __threadfence();
    unsigned long long b = 0;
    for (int i = lane; i < gridDim.x; i += 32) {
        unsigned long long p = ((volatile unsigned long long *)pick_part)[i];
        b = p > b ? p : b;
    }
    b = warp_max_u64(b);
    if (lane == 0) {
        int id = INT_MAX - (int)(unsigned)(b & 0xffffffffu);
        *out = id;
        params[0] = next_pos;
        params[1] = id;
        pick_done = 0;  // for the next pick, which the stream orders after this one
    }
}

__global__ void stage_kernel(int *params, int pos0, int first, const int *proposals, int n) {
    pdl_start();
    if (threadIdx.x == 0) {
        params[0] = pos0;
        params[1] = first;
    }
    for (int j = threadIdx.x; j < n; j += blockDim.x) params[2 + j] = proposals[j];
}

__global__ void judge_kernel(const int *target, const int *proposals, const float *top, int n,
                             int draft_min, float p_min, int *out) {
    pdl_start();
    if (threadIdx.x != 0) return;
    int valid = n;
    for (int i = draft_min; i < n; i++)
        if (top[i] < p_min) {
            valid = i;
            break;
        }
    int acc = 0;
    while (acc < valid && target[acc] == proposals[acc]) acc++;
    out[0] = valid;
    out[1] = acc;
    out[2] = target[acc];
    for (int j = 0; j < n; j++) out[3 + j] = proposals[j];
}

static int threads_for(int vocab) {
    int t = 32;
    while (t < PICK_THREADS && t < vocab) t *= 2;
    return t;
}

extern "C" int wick_argmax_rows(const float *x, int rows, int vocab, int *ids, float *top) {
    if (rows <= 0 || vocab <= 0) return (int)cudaErrorInvalidValue;
    wick_launch(argmax_rows_kernel, rows, threads_for(vocab), 0,
                    x, vocab, ids, top);
    return (int)cudaGetLastError();
}

extern "C" int wick_spec_pick(const float *logits, int vocab, int *params, int next_pos,
                              int *proposals, float *top, int i) {
    if (vocab <= 0) return (int)cudaErrorInvalidValue;
    if (!top) {
        int blocks = (vocab + 4 * PICK_BLOCK_THREADS - 1) / (4 * PICK_BLOCK_THREADS);
        blocks = blocks < PICK_BLOCKS ? blocks : PICK_BLOCKS;
        wick_launch(pick_many_kernel, blocks, PICK_BLOCK_THREADS, 0, logits, vocab, params,
                    next_pos, proposals + i);
        return (int)cudaGetLastError();
    }
    wick_launch(pick_kernel, 1, threads_for(vocab), 0,
                    logits, vocab, params, next_pos,
                                                          proposals, top, i);
    return (int)cudaGetLastError();
}

extern "C" int wick_spec_stage(int *params, int pos0, int first, const int *proposals, int n) {
    wick_launch(stage_kernel, 1, 64, 0,
                    params, pos0, first, proposals, n);
    return (int)cudaGetLastError();
}

extern "C" int wick_spec_judge(const float *rows, int vocab, const int *proposals,
                               const float *top, int n, int draft_min, float p_min,
                               int *target_ids, float *target_top, int *out) {
    if (n < 0 || vocab <= 0) return (int)cudaErrorInvalidValue;
    wick_launch(argmax_rows_kernel, n + 1, threads_for(vocab), 0,
                    rows, vocab, target_ids,
                                                                      target_top);
    wick_launch(judge_kernel, 1, 32, 0,
                    target_ids, proposals, top, n, draft_min, p_min,
                                           out);
    return (int)cudaGetLastError();
}
