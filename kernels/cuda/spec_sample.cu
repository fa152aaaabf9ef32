// Sampled speculative decoding kept on the device (temperature > 0): the draft samples each
// token here, keeping the distribution q it drew from, and after the verification the
// acceptance rule of speculative sampling runs here too, so that one small copy to the
// host ends each verification, as in greedy speculation (spec.cu).
//
// Every step follows the CPU sampler (src/sample) operation for operation, so that the
// device draws from the same distribution: NaN logits count as -inf, top-k keeps the k
// largest (ties to the lower id), top-p keeps the shortest best-first prefix whose
// probability at temperature 1 reaches p, min-p drops logits below the best + ln(min_p),
// then softmax at the temperature in double precision. Random numbers come from the same
// generator as the CPU's (xoshiro256**, seeded through SplitMix64, 53-bit uniforms), so a
// host sampler seeded alike draws the same numbers, which the self-test uses to compare
// the kernels with the host's rule (src/spec/accept.rs).
//
// The distributions are small (at most WICK_SAMPLE_CAP candidates survive top-k), so each
// fits in one block's shared memory; the steps whose rounding depends on the order of a sum
// run on one thread, in the CPU's order.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "stream.cuh"
#include "wick_cuda.h"

constexpr int SAMPLE_THREADS = 1024;
constexpr int CAP = WICK_SAMPLE_CAP;

// --- the CPU's random numbers ---

__device__ __forceinline__ uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// xoshiro256** on a state in device memory; one thread at a time.
__device__ uint64_t rng_next(uint64_t *s) {
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

__device__ double rng_uniform(uint64_t *s) {
    return (double)(rng_next(s) >> 11) * (1.0 / (double)(1ull << 53));
}

__global__ void seed_kernel(uint64_t *state, uint64_t seed) {
    pdl_start();
    if (threadIdx.x != 0) return;
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) {
        x += 0x9e3779b97f4a7c15ull;
        uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        state[i] = z ^ (z >> 31);
    }
}

// --- block-wide helpers ---

// A logit as the CPU sampler sees it.
__device__ __forceinline__ float clean(float x) { return isnan(x) ? -INFINITY : x; }

// An unsigned key whose order is f32::total_cmp's order of the (cleaned) value.
__device__ __forceinline__ uint32_t ukey(float x) {
    int b = __float_as_int(clean(x));
    return (uint32_t)(b >= 0 ? b : b ^ 0x7fffffff) ^ 0x80000000u;
}

__device__ __forceinline__ uint32_t pow2_at_least(uint32_t n) {
    uint32_t p = 1;
    while (p < n) p *= 2;
    return p;
}

// Sorts s[0..n) ascending, n a power of two up to CAP; every thread of the block calls it.
__device__ void block_sort(uint64_t *s, int n) {
    for (int k = 2; k <= n; k *= 2)
        for (int j = k / 2; j > 0; j /= 2) {
            for (int i = threadIdx.x; i < n; i += blockDim.x) {
                int l = i ^ j;
                if (l > i) {
                    bool up = (i & k) == 0;
                    uint64_t a = s[i], b = s[l];
                    if ((a > b) == up) {
                        s[i] = b;
                        s[l] = a;
                    }
                }
            }
            __syncthreads();
        }
}

// A sort key that orders by `key` descending, then by id ascending.
__device__ __forceinline__ uint64_t desc_then_id(uint32_t key, int id) {
    return ((uint64_t)(~key) << 32) | (uint32_t)id;
}

// Shared scratch of a block computing one distribution.
struct RowScratch {
    uint64_t sort[CAP];
    double w[CAP];
    float logit[CAP];
    int hist[256];
    int slot, ties, prefix, remaining, tie_count, n;
    double total;
};

// The distribution the CPU sampler draws from for the logits x[0..vocab) (`Sampler::probs`
// without a repeat penalty): ids[0..*count) and probs, most likely first. Every thread of
// the block calls it; the results are valid after it returns, for every thread.
__device__ void row_dist(const float *__restrict__ x, int vocab, wick_sample_cfg cfg,
                         RowScratch &s, int *ids, float *probs, int *count) {
    int k = cfg.k < vocab ? cfg.k : vocab;
    // The k-th largest key, a byte at a time from the top: the radix select. `remaining`
    // ends as how many of the keys equal to it top-k keeps.
    if (threadIdx.x == 0) {
        s.prefix = 0;
        s.remaining = k;
    }
    uint32_t mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) s.hist[b] = 0;
        __syncthreads();
        uint32_t prefix = (uint32_t)s.prefix;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            uint32_t u = ukey(x[i]);
            if ((u & mask) == prefix) atomicAdd(&s.hist[(u >> shift) & 255], 1);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int cum = 0, want = s.remaining, b = 255;
            for (; b > 0; b--) {
                if (cum + s.hist[b] >= want) break;
                cum += s.hist[b];
            }
            s.prefix = (int)(prefix | ((uint32_t)b << shift));
            s.remaining = want - cum;
            s.tie_count = s.hist[b];
            s.slot = 0;
            s.ties = 0;
        }
        mask |= 255u << shift;
        __syncthreads();
    }
    uint32_t kth = (uint32_t)s.prefix;
    int take_ties = s.remaining, tie_count = s.tie_count, above = k - take_ties;
    // Keys above the k-th all survive; slots are handed out in any order, the sort below
    // orders them. Ties survive whole unless there are too many, when the lowest ids win.
    bool all_ties = tie_count == take_ties;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        uint32_t u = ukey(x[i]);
        if (u > kth) {
            s.sort[atomicAdd(&s.slot, 1)] = desc_then_id(u, i);
        } else if (u == kth && all_ties) {
            s.sort[above + atomicAdd(&s.ties, 1)] = desc_then_id(u, i);
        }
    }
    if (!all_ties && threadIdx.x == 0) {
        int t = 0;
        for (int i = 0; i < vocab && t < take_ties; i++)
            if (ukey(x[i]) == kth) s.sort[above + t++] = desc_then_id(kth, i);
    }
    int n2 = (int)pow2_at_least((uint32_t)k);
    for (int i = k + threadIdx.x; i < n2; i += blockDim.x) s.sort[i] = ~0ull;
    __syncthreads();
    block_sort(s.sort, n2);
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        int id = (int)(uint32_t)s.sort[j];
        ids[j] = id;
        s.logit[j] = clean(x[id]);
    }
    __syncthreads();
    float max = s.logit[0];
    int n = k;
    if (cfg.top_p < 1.f) {
        for (int j = threadIdx.x; j < n; j += blockDim.x) s.w[j] = exp((double)(s.logit[j] - max));
        __syncthreads();
        if (threadIdx.x == 0) {
            double total = 0.0, cum = 0.0;
            for (int j = 0; j < n; j++) total += s.w[j];
            int keep = n;
            for (int j = 0; j < n; j++) {
                cum += s.w[j] / total;
                if (cum >= (double)cfg.top_p) {
                    keep = j + 1;
                    break;
                }
            }
            s.n = keep;
        }
        __syncthreads();
        n = s.n;
    }
    if (cfg.min_p_on) {
        float cut = max + cfg.ln_min_p;
        if (threadIdx.x == 0) {
            int keep = n;
            for (int j = 0; j < n; j++)
                if (s.logit[j] < cut) {
                    keep = j;
                    break;
                }
            s.n = keep > 1 ? keep : 1;
        }
        __syncthreads();
        n = s.n;
    }
    if (max == -INFINITY) {
        // Every token impossible: all the mass on the first, as the CPU does.
        if (threadIdx.x == 0) {
            probs[0] = 1.f;
            *count = 1;
        }
        __syncthreads();
        return;
    }
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        s.w[j] = exp((double)(s.logit[j] - max) * cfg.inv_t);
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int j = 0; j < n; j++) total += s.w[j];
        s.total = total;
        *count = n;
    }
    __syncthreads();
    double total = s.total;
    // The CPU sums the weights in double but keeps each as f32 before dividing.
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        probs[j] = (float)((double)(float)s.w[j] / total);
    __syncthreads();
}

// `Sampler::draw_from`: one uniform, walked down the probabilities in their order.
__device__ int draw(const int *ids, const float *probs, int n, uint64_t *rng) {
    double r = rng_uniform(rng);
    for (int j = 0; j < n; j++) {
        r -= (double)probs[j];
        if (r < 0.0) return ids[j];
    }
    return n > 0 ? ids[n - 1] : 0;
}

// --- kernels ---

// Draft token i: sampled from `logits` into proposals[i], staged as the next decode step's
// token, its distribution spread over q's row i, and its top probability (the draft's
// confidence, for --draft-p-min) into top[i].
__global__ void __launch_bounds__(SAMPLE_THREADS)
sample_pick_kernel(const float *__restrict__ logits, int vocab, wick_sample_cfg cfg,
                   uint64_t *rng, int *params, int next_pos, int *proposals, float *top,
                   float *q, int i) {
    pdl_start();
    __shared__ RowScratch s;
    __shared__ int ids[CAP], count, pick;
    __shared__ float probs[CAP];
    row_dist(logits, vocab, cfg, s, ids, probs, &count);
    float *row = q + (size_t)i * vocab;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) row[j] = 0.f;
    if (threadIdx.x == 0) {
        pick = draw(ids, probs, count, rng);
        proposals[i] = pick;
        top[i] = probs[0];
        params[0] = next_pos;
        params[1] = pick;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < count; j += blockDim.x) row[ids[j]] = probs[j];
}

// The target's distribution of each row (one block per row), compacted: row r's ids and
// probabilities at r * CAP, their count at cnt[r].
__global__ void __launch_bounds__(SAMPLE_THREADS)
sample_rows_kernel(const float *__restrict__ rows, int vocab, wick_sample_cfg cfg, int *ids,
                   float *probs, int *cnt) {
    pdl_start();
    __shared__ RowScratch s;
    int r = blockIdx.x;
    row_dist(rows + (size_t)r * vocab, vocab, cfg, s, ids + (size_t)r * CAP,
             probs + (size_t)r * CAP, cnt + r);
}

// Speculative sampling's acceptance rule (`Judge::judge`), position by position: keep the
// drafted x when p(x) >= q(x), else with probability p(x) / q(x); at the first rejection
// draw from normalize(max(0, p - q)) instead, and after a draft kept whole draw the bonus
// token from p. q is dense rows of `vocab`, or null for one-hot drafts (greedy or n-gram).
__global__ void __launch_bounds__(SAMPLE_THREADS)
accept_kernel(const int *p_ids, const float *p_probs, const int *p_cnt, const float *q,
              int vocab, const int *proposals, const float *top, int n, int draft_min,
              float p_min, uint64_t *rng, int *out) {
    pdl_start();
    __shared__ uint64_t sort[CAP];
    __shared__ float w[CAP];
    __shared__ int wid[CAP];
    __shared__ int valid, accepted, reject, m, n2, next;
    __shared__ double total;
    if (threadIdx.x == 0) {
        valid = n;
        for (int i = draft_min; i < n; i++)
            if (top[i] < p_min) {
                valid = i;
                break;
            }
        accepted = 0;
        reject = 0;
        next = -1;
        // Keep or reject each proposal in order, until the first rejection.
        for (int i = 0; i < valid; i++) {
            const int *ids = p_ids + (size_t)i * CAP;
            const float *pr = p_probs + (size_t)i * CAP;
            int x = proposals[i];
            float px = 0.f;
            for (int j = 0; j < p_cnt[i]; j++)
                if (ids[j] == x) {
                    px = pr[j];
                    break;
                }
            float qx = q ? q[(size_t)i * vocab + x] : 1.f;
            if ((double)px >= (double)qx || rng_uniform(rng) * (double)qx < (double)px) {
                accepted++;
                continue;
            }
            reject = 1;
            break;
        }
    }
    __syncthreads();
    int a = accepted;
    const int *ids = p_ids + (size_t)a * CAP;
    const float *pr = p_probs + (size_t)a * CAP;
    int cnt = p_cnt[a];
    if (reject) {
        // The residual max(0, p - q) over p's support, in p's order (the order its sum
        // rounds in on the CPU), then normalized and sorted as `Probs::set_weights` does.
        int x = proposals[a];
        for (int j = threadIdx.x; j < cnt; j += blockDim.x) {
            int id = ids[j];
            float qw = q ? q[(size_t)a * vocab + id] : (id == x ? 1.f : 0.f);
            w[j] = fmaxf(pr[j] - qw, 0.f);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int k = 0;
            double t = 0.0;
            for (int j = 0; j < cnt; j++)
                if (w[j] > 0.f) {
                    t += (double)w[j];
                    w[k] = w[j];
                    wid[k] = ids[j];
                    k++;
                }
            m = k;
            total = t;
            n2 = (int)pow2_at_least((uint32_t)k);
        }
        __syncthreads();
        for (int j = threadIdx.x; j < n2; j += blockDim.x) {
            if (j < m) {
                float v = (float)((double)w[j] / total);
                sort[j] = desc_then_id((uint32_t)__float_as_int(v), wid[j]);
            } else {
                sort[j] = ~0ull;
            }
        }
        __syncthreads();
        if (m > 0) block_sort(sort, n2);
        if (threadIdx.x == 0 && m > 0) {
            double r = rng_uniform(rng);
            int pick = (int)(uint32_t)sort[m - 1];
            for (int j = 0; j < m; j++) {
                r -= (double)__int_as_float((int)~(uint32_t)(sort[j] >> 32));
                if (r < 0.0) {
                    pick = (int)(uint32_t)sort[j];
                    break;
                }
            }
            next = pick;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        // The bonus token after a draft kept whole, or p itself when rounding left no
        // residual.
        if (next < 0) next = draw(ids, pr, cnt, rng);
        out[0] = valid;
        out[1] = a;
        out[2] = next;
        for (int j = 0; j < n; j++) out[3 + j] = proposals[j];
    }
}

// Plain decoding (one forward pass per token) with its pick on the device: masked tokens
// become impossible first, in the logits themselves (a kernel of their own, so that the
// pick's read-only loads never see a stale value).
__global__ void mask_kernel(float *logits, const int *ids, int n) {
    pdl_start();
    for (int j = threadIdx.x; j < n; j += blockDim.x) logits[ids[j]] = -INFINITY;
}

// Plain decoding's sampled pick, `Sampler::sample` to the operation: the same distribution
// as row_dist, but drawn as `Sampler::draw` draws (the weights rounded to f32, one uniform
// scaled by their double total, the last token with any weight if rounding leaves a
// sliver; no uniform at all when every token is impossible), so that the device continues
// the host sampler's stream token for token. The pick is staged as the next decode step's
// token at next_pos and written to out[0] for the host.
__global__ void __launch_bounds__(SAMPLE_THREADS)
plain_sample_kernel(const float *__restrict__ logits, int vocab, wick_sample_cfg cfg,
                    uint64_t *rng, int *params, int next_pos, int *out) {
    pdl_start();
    __shared__ RowScratch s;
    __shared__ int ids[CAP], count;
    __shared__ float probs[CAP];
    row_dist(logits, vocab, cfg, s, ids, probs, &count);
    if (threadIdx.x != 0) return;
    int pick = ids[0];
    if (s.logit[0] != -INFINITY) {
        // Never fused into the first subtraction: the host rounds the product alone.
        double r = __dmul_rn(rng_uniform(rng), s.total);
        int j = 0;
        for (; j < count; j++) {
            r -= (double)(float)s.w[j];
            if (r < 0.0) break;
        }
        if (j < count) {
            pick = ids[j];
        } else {
            for (j = count - 1; j >= 0; j--)
                if ((float)s.w[j] > 0.f) {
                    pick = ids[j];
                    break;
                }
        }
    }
    out[0] = pick;
    params[0] = next_pos;
    params[1] = pick;
}

// --- the C interface ---

static bool cfg_ok(wick_sample_cfg cfg, int vocab) {
    return vocab > 0 && cfg.k > 0 && (cfg.k <= CAP || vocab <= CAP);
}

extern "C" int wick_sample_seed(uint64_t *state, uint64_t seed) {
    wick_launch(seed_kernel, 1, 32, 0, state, seed);
    return (int)cudaGetLastError();
}

extern "C" int wick_spec_pick_sampled(const float *logits, int vocab, wick_sample_cfg cfg,
                                      uint64_t *rng, int *params, int next_pos,
                                      int *proposals, float *top, float *q, int i) {
    if (!cfg_ok(cfg, vocab)) return (int)cudaErrorInvalidValue;
    wick_launch(sample_pick_kernel, 1, SAMPLE_THREADS, 0, logits, vocab, cfg, rng, params,
                next_pos, proposals, top, q, i);
    return (int)cudaGetLastError();
}

extern "C" int wick_sample_rows(const float *rows, int n_rows, int vocab, wick_sample_cfg cfg,
                                int *ids, float *probs, int *cnt) {
    if (!cfg_ok(cfg, vocab) || n_rows <= 0) return (int)cudaErrorInvalidValue;
    wick_launch(sample_rows_kernel, n_rows, SAMPLE_THREADS, 0, rows, vocab, cfg, ids, probs,
                cnt);
    return (int)cudaGetLastError();
}

extern "C" int wick_spec_accept(const int *p_ids, const float *p_probs, const int *p_cnt,
                                const float *q, int vocab, const int *proposals,
                                const float *top, int n, int draft_min, float p_min,
                                uint64_t *rng, int *out) {
    if (n < 0 || vocab <= 0) return (int)cudaErrorInvalidValue;
    wick_launch(accept_kernel, 1, SAMPLE_THREADS, 0, p_ids, p_probs, p_cnt, q, vocab,
                proposals, top, n, draft_min, p_min, rng, out);
    return (int)cudaGetLastError();
}

extern "C" int wick_mask_logits(float *logits, const int *ids, int n) {
    if (n < 0) return (int)cudaErrorInvalidValue;
    if (n == 0) return 0;
    wick_launch(mask_kernel, 1, 64, 0, logits, ids, n);
    return (int)cudaGetLastError();
}

extern "C" int wick_plain_sample(const float *logits, int vocab, wick_sample_cfg cfg,
                                 uint64_t *rng, int *params, int next_pos, int *out) {
    if (!cfg_ok(cfg, vocab)) return (int)cudaErrorInvalidValue;
    wick_launch(plain_sample_kernel, 1, SAMPLE_THREADS, 0, logits, vocab, cfg, rng, params,
                next_pos, out);
    return (int)cudaGetLastError();
}
