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
// temperature 1 (how sure the model is) when top_out is given, by the whole block.
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
    // Plain greedy decoding needs no probability: a second pass over the row saved.
    if (!top_out) {
        if (threadIdx.x == 0) *id_out = id;
        return;
    }
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
    row_argmax(logits, vocab, &id, top ? &p : nullptr);
    __syncthreads();
    if (threadIdx.x == 0) {
        proposals[i] = id;
        if (top) top[i] = p;
        params[0] = next_pos;
        params[1] = id;
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
