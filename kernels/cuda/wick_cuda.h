/* The C interface of wick's CUDA kernels: the one header bindgen reads.
 *
 * Every function returns a cudaError_t as an int (0 = success) and launches on the
 * default stream unless it says otherwise. Pointers named d_* are device memory. Tensor
 * types are GGUF type ids (0 = F32, 1 = F16, 2 = Q4_0, 3 = Q4_1, 6 = Q5_0, 7 = Q5_1,
 * 8 = Q8_0, 10..=14 = Q2_K..Q6_K, 30 = BF16); quantized rows are whole blocks.
 */
#ifndef WICK_CUDA_H
#define WICK_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* --- device and memory --- */
int wick_cuda_device_count(int *count);
/* Selects `device`, writes its name (NUL-terminated, at most name_len bytes) and memory. */
int wick_cuda_init(int device, char *name, int name_len, size_t *total_mem, int *sm_major,
                   int *sm_minor);
const char *wick_cuda_error_string(int err);
int wick_cuda_malloc(void **d_ptr, size_t bytes);
int wick_cuda_free(void *d_ptr);
int wick_cuda_memset(void *d_ptr, int value, size_t bytes);
int wick_cuda_h2d(void *d_dst, const void *src, size_t bytes);
int wick_cuda_d2h(void *dst, const void *d_src, size_t bytes);
int wick_cuda_d2d(void *d_dst, const void *d_src, size_t bytes);
int wick_cuda_sync(void);
/* CUDA graphs of the stream's work: record between begin and end, then replay. */
int wick_graph_begin(void);
int wick_graph_end(void **exec);
int wick_graph_launch(void *exec);
int wick_graph_destroy(void *exec);
/* Events recorded on the stream, for timing single ops. */
int wick_event_create(void **event);
int wick_event_record(void *event);
int wick_event_elapsed(void *start, void *end, float *ms);
int wick_event_destroy(void *event);
/* Token ids for the host: a kernel writes one to the device address of slot `slot` (< 4,
 * pinned host memory), wick_id_post marks the slot behind the stream's work, and
 * wick_id_take waits for that mark and reads the id: the host queues more work between. */
int wick_id_slot(int slot, int32_t **d_ptr);
int wick_id_post(int slot);
int wick_id_take(int slot, int32_t *id);
/* 1 if kernels for `type` exist. */
int wick_cuda_supports_type(int type);

/* --- ops of the forward pass --- */
/* x[b] = dequantized row tokens[b] of table (rows of `dim`), for b < n. */
int wick_embed(int type, const void *d_table, int dim, const int32_t *d_tokens, int n,
               float *d_x);
/* out[b] = x[b] / rms(x[b]) * w, rows of `cols`; w is F32. */
int wick_rmsnorm(const float *d_x, const float *d_w, float eps, int rows, int cols,
                 float *d_out);
/* y[b][r] (+)= W[r] . x[b] for r < rows, b < nb; W holds `rows` rows of `cols` values
 * in GGUF blocks of `type`. With accumulate, adds to y (the residual connection). */
int wick_matmul(int type, const void *d_w, int rows, int cols, const float *d_x, int nb,
                float *d_y, int accumulate);
/* Rounds n f32 values (n a multiple of 32) to int8 blocks of 32: xq[i] = round(x[i] / d),
 * xd[i / 32] = d = amax / 127 of the block (rounded through f16, as the CPU's Q8_0). */
int wick_quantize_q8(const float *d_x, int n, int8_t *d_xq, float *d_xd);
/* 1 if wick_matvec_q8 takes weights of `type`. */
int wick_matvec_q8_supports(int type);
/* One weight of a wick_matvec_q8 launch: `rows` rows in d_w, results in d_y. */
typedef struct {
    const void *w;
    float *y;
    int rows;
} wick_mv_target;
/* An RMSNorm folded into wick_matvec_q8 (kernels/cuda/matvec_q8.cu), on either side of it.
 * Input side (in_ss not NULL): the int8 input is a folded norm's output, whose scales lack
 * each row's 1 / rms; in_ss holds, for each 32-value block of each input row, the sum of
 * squares of the values before the norm, and every result of that row is multiplied by
 * 1 / sqrt(sum / cols + eps).
 * Output side (norm not NULL; see wick_matvec_fold_applies): after y is written, each
 * block of 32 results of row b is multiplied by norm (one weight per result) and rounded to
 * int8 as wick_quantize_q8 rounds (out_q, and out_d unrounded), and the sum of squares of
 * the 32 values of y goes to out_ss: the next product's input side. */
typedef struct {
    const float *in_ss;
    float eps;
    const float *norm;
    int8_t *out_q;
    float *out_d;
    float *out_ss;
} wick_mv_fold;
/* As wick_matmul for 1 to 3 weights of one type that share the input x (rows of `cols`),
 * given as wick_quantize_q8's output for nb rows: the bandwidth-bound path for decode and
 * small batches. fold may be NULL. */
int wick_matvec_q8(int type, const wick_mv_target *targets, int n_targets, int cols,
                   const int8_t *d_xq, const float *d_xd, int nb, int accumulate,
                   const wick_mv_fold *fold);
/* 1 if wick_matvec_q8 can fold a norm into its output for one weight of `type` at d_w with
 * `rows` rows of `cols` (rows a multiple of 32, rows 16-byte aligned, a Hopper GPU, and not
 * a K-quant, where folding was measured slower). */
int wick_matvec_fold_applies(int type, const void *d_w, int rows, int cols);
/* 1 if wick_matvec_q8_swiglu takes gate and up weights of `type` at d_gate and d_up, `rows`
 * rows of `cols` each (rows a multiple of 32, rows 16-byte aligned, a Hopper GPU, and not
 * Q8_0 or a K-quant, where it was measured slower). */
int wick_matvec_swiglu_applies(int type, const void *d_gate, const void *d_up, int rows,
                               int cols);
/* The gate and up products of nb input rows (as wick_matvec_q8 takes them; in may be NULL
 * or a folded norm's input side), then SwiGLU, in one launch: h[b][i] = silu(g) * u, also
 * written as wick_quantize_q8 writes it (d_hq, d_hd: apart from d_xq and d_xd). The same
 * bits as wick_matvec_q8 of both weights, then wick_swiglu_q8. */
int wick_matvec_q8_swiglu(int type, const void *d_gate, const void *d_up, int rows, int cols,
                          const int8_t *d_xq, const float *d_xd, int nb, const wick_mv_fold *in,
                          float *d_h, int8_t *d_hq, float *d_hd);
/* wick_rmsnorm, also writing its output as wick_quantize_q8 does (cols a multiple of 32). */
int wick_rmsnorm_q8(const float *d_x, const float *d_w, float eps, int rows, int cols,
                    float *d_out, int8_t *d_xq, float *d_xd);
/* wick_swiglu, also writing the result as wick_quantize_q8 does (n a multiple of 32). */
int wick_swiglu_q8(float *d_g, const float *d_u, int n, int8_t *d_xq, float *d_xd);
/* Selects a launch shape of wick_matvec_q8 (0 = default), for tuning runs. */
void wick_matvec_q8_variant(int v);
/* 1 if wick_gemm_q8 takes weights of `type`. */
int wick_gemm_q8_supports(int type);
/* As wick_matvec_q8 on int8 tensor cores (sm_80+), for prefill batches (any nb >= 1, meant
 * for 17 and up). d_ws is scratch for partial sums of a product split along the rows of W:
 * ws_floats of it are used as needed (more splits when it holds more), none if NULL. */
int wick_gemm_q8(int type, const void *d_w, int rows, int cols, const int8_t *d_xq,
                 const float *d_xd, int nb, float *d_y, int accumulate, float *d_ws,
                 size_t ws_floats);
/* Selects wick_gemm_q8's kernels (0 = default: the 64-token one up to 64 tokens, the
 * 128-token one above; 1 = the 128-token one from 17 tokens; 2 = the 64-token one only),
 * for timing runs. */
void wick_gemm_q8_variant(int v);
/* 1 if wick_gemm_f16 takes this product: weights of a wick_gemm_q8 type at d_w with rows
 * 4-byte aligned, nb above 64, and a GPU with the shared memory for it (sm_80, sm_90). */
int wick_gemm_f16_applies(int type, const void *d_w, int cols, int nb);
/* Warps per block of wick_gemm_f16's kernel: 8 (default) or 4, for timing runs. */
void wick_gemm_f16_warps(int n);
/* wick_quantize_q8's output (n values, a multiple of 32) as f16 values q * d, for
 * wick_gemm_f16. */
int wick_q8_to_f16(const int8_t *d_xq, const float *d_xd, int n, void *d_xh);
/* As wick_gemm_q8 on f16 tensor cores for 1 to 3 weights of one type over the same
 * activations (one launch where they fill the GPU together), from wick_q8_to_f16's
 * output: weights decoded to f16 (scales applied) once per block tile, rows summed without
 * per-unit scaling. */
int wick_gemm_f16(int type, const wick_mv_target *targets, int n_targets, int cols,
                  const void *d_xh, int nb, int accumulate, float *d_ws, size_t ws_floats);
/* Rotates q (n rows of n_heads heads) and k (n rows of n_kv_heads heads) in place for
 * positions *d_pos0.., llama.cpp's normal mode (adjacent pairs). The position is read on
 * the device, so a recorded graph replays at any position. */
int wick_rope(float *d_q, float *d_k, const int32_t *d_pos0, int n, int n_heads,
              int n_kv_heads, int head_dim, int rope_dims, float theta);
/* KV caches: `type` is F16, Q8_0 (blocks of 32 along each row of kv_dim values, keys and
 * values Hadamard-rotated in chunks that divide head_dim, src/kv/rotate.rs) or FP8 (64: an f32
 * scale, then kv_dim e4m3 bytes, kv_dim a multiple of 4, src/kv/fp8.rs). The
 * layout is src/kv/layout.rs's: capacity slots, the first `keep` positions fixed, the rest
 * at keep + (p - keep + offset) % (capacity - keep); window > 0 is a sliding window (keep
 * 0). d_state holds the layer's {offset, floor}, read on the device. */
/* Stores n rows of k and v for positions *d_pos0.. into one layer's caches. */
int wick_kv_store(int type, const float *d_k, const float *d_v, void *d_kcache,
                  void *d_vcache, const int32_t *d_pos0, const int32_t *d_state, int n,
                  int kv_dim, int head_dim, int capacity, int keep);
/* wick_rope, then wick_kv_store, in one launch: F16 and Q8_0 caches only (FP8 rows need a
 * whole block each). q and k are left rotated, as wick_rope leaves them. */
int wick_rope_store(int type, float *d_q, float *d_k, const float *d_v, void *d_kcache,
                    void *d_vcache, const int32_t *d_pos0, const int32_t *d_state, int n,
                    int n_heads, int n_kv_heads, int head_dim, int rope_dims, float theta,
                    int capacity, int keep);
/* Rotates the stored keys of positions p0..p0+count by `by` positions (a context shift),
 * with the layout's `offset` before the shift. */
int wick_kv_shift(int type, void *d_kcache, int p0, int count, int kv_dim, int head_dim,
                  int rope_dims, float theta, float by, int capacity, int keep, int offset);
/* Causal attention of n query rows at positions *d_pos0.. over the live cached positions
 * of one layer, with grouped-query heads; head_dim at most 256. Single rows use
 * d_scratch (scratch_floats floats) for the partial results of their position slices,
 * and, given d_xq (else null), may also write the output rounded to int8 blocks of 32
 * (d_xq, d_xd as wick_quantize_q8), setting *rounded to 1 when they did. */
int wick_attention(int type, const float *d_q, const void *d_kcache, const void *d_vcache,
                   const int32_t *d_pos0, const int32_t *d_state, int n, int n_heads,
                   int n_kv_heads, int head_dim, int capacity, int keep, int window,
                   float *d_out, float *d_scratch, size_t scratch_floats, int8_t *d_xq,
                   float *d_xd, int *rounded);
/* Whether wick_attention_rope takes a single row of this shape (F16 caches, head_dim 64
 * or 128, where single rows do not go to the split kernel). */
int wick_attention_rope_applies(int type, const void *d_kcache, const void *d_vcache, int n,
                                int n_heads, int head_dim);
/* wick_rope_store and wick_attention for one row (n = 1) in one launch: d_q and d_k come
 * unrotated and are left so; the new position's key (rotated) and value are stored in the
 * caches and used as the cache would return them. Same results, bit for bit. */
int wick_attention_rope(int type, const float *d_q, const float *d_k, const float *d_v,
                        void *d_kcache, void *d_vcache, const int32_t *d_pos0,
                        const int32_t *d_state, int n_heads, int n_kv_heads, int head_dim,
                        int rope_dims, float theta, int capacity, int keep, int window,
                        float *d_out, int8_t *d_xq, float *d_xd, int *rounded);
/* Single-row attention: old_kernel 1 = the former one-block-per-head kernel, 0 = the
 * split one (default) with `splits` slices per KV head (0 = from the SM count). */
void wick_attention_decode(int old_kernel, int splits);
/* Selects wick_attention's kernel for n > 1: 0 = the tiled tensor-core one (default),
 * 1 = the single-row one, for timing runs. */
void wick_attention_variant(int v);
/* g = silu(g) * u over n values. */
int wick_swiglu(float *d_g, const float *d_u, int n);

/* --- greedy speculative decoding on the device (spec.cu) --- */
/* Argmax of each of `rows` rows of `vocab` logits into ids[r] (NaN counts as -inf, ties go
 * to the lowest id, as the CPU's greedy sampler), and that token's probability at
 * temperature 1 into top[r]. */
int wick_argmax_rows(const float *d_x, int rows, int vocab, int32_t *d_ids, float *d_top);
/* Draft token i: the argmax of d_logits into d_proposals[i] (its probability into d_top[i];
 * with d_top null, none, by a kernel over many blocks),
 * and staged as the next decode step's token at position next_pos: d_params = {pos, token}
 * as the forward pass reads them. */
int wick_spec_pick(const float *d_logits, int vocab, int32_t *d_params, int next_pos,
                   int32_t *d_proposals, float *d_top, int i);
/* Stages a verification: d_params = {pos0, first, d_proposals[0..n]}. */
int wick_spec_stage(int32_t *d_params, int pos0, int first, const int32_t *d_proposals, int n);
/* Judges n proposals against n + 1 rows of target logits: the draft is cut at the first
 * i >= draft_min whose d_top[i] < p_min (`valid` proposals), then the longest prefix of
 * those on which the target's argmax agrees is accepted, and the target's argmax after it
 * is the next token. d_out = {valid, accepted, next, d_proposals[0..n]}. d_target_ids and
 * d_target_top are scratch for n + 1 rows. */
int wick_spec_judge(const float *d_rows, int vocab, const int32_t *d_proposals,
                    const float *d_top, int n, int draft_min, float p_min,
                    int32_t *d_target_ids, float *d_target_top, int32_t *d_out);

/* --- sampled speculation (spec_sample.cu) --- */
/* Most candidates a distribution sampled on the device may keep after top-k. */
#define WICK_SAMPLE_CAP 1024
/* The CPU sampler's settings without the repeat penalty: top-k keeps k candidates (the
 * vocabulary when k is larger; at most WICK_SAMPLE_CAP unless the vocabulary is smaller),
 * top-p is off at >= 1, min-p applies when min_p_on (ln_min_p = ln(min_p), computed on the
 * host as the CPU does), and inv_t = 1 / temperature. */
typedef struct wick_sample_cfg {
    int k;
    float top_p;
    float ln_min_p;
    int min_p_on;
    double inv_t;
} wick_sample_cfg;
/* Seeds a random state of 4 u64 as the CPU sampler's generator is seeded. */
int wick_sample_seed(uint64_t *d_state, uint64_t seed);
/* Draft token i sampled from d_logits with d_rng: into d_proposals[i], its distribution
 * into row i of d_q (rows of vocab, zero off the support), its top probability into
 * d_top[i], and staged as the next decode step's token at next_pos (d_params = {pos, token}). */
int wick_spec_pick_sampled(const float *d_logits, int vocab, wick_sample_cfg cfg,
                           uint64_t *d_rng, int32_t *d_params, int next_pos,
                           int32_t *d_proposals, float *d_top, float *d_q, int i);
/* The sampling distribution of each of n_rows rows: row r's candidates, most likely first,
 * at d_ids/d_probs + r * WICK_SAMPLE_CAP, their count at d_cnt[r]. */
int wick_sample_rows(const float *d_rows, int n_rows, int vocab, wick_sample_cfg cfg,
                     int32_t *d_ids, float *d_probs, int32_t *d_cnt);
/* Speculative sampling's acceptance of n proposals against the target's distributions
 * (n + 1 rows from wick_sample_rows) and the draft's (rows of d_q, or one-hot at the
 * proposals when d_q is null), after the draft_min / p_min cut as wick_spec_judge, with
 * random numbers from d_rng. d_out = {valid, accepted, next, d_proposals[0..n]}. */
int wick_spec_accept(const int32_t *d_p_ids, const float *d_p_probs, const int32_t *d_p_cnt,
                     const float *d_q, int vocab, const int32_t *d_proposals,
                     const float *d_top, int n, int draft_min, float p_min, uint64_t *d_rng,
                     int32_t *d_out);

/* --- plain decoding's pick on the device (spec_sample.cu) --- */
/* Sets d_logits[d_ids[j]] = -inf for j < n: tokens never to pick. */
int wick_mask_logits(float *d_logits, const int32_t *d_ids, int n);
/* The CPU sampler's sampled pick (`Sampler::sample`: the distribution of wick_sample_rows,
 * drawn with d_rng exactly as the host draws), into d_out[0] and staged as the next decode
 * step's token at next_pos (d_params = {pos, token}). */
int wick_plain_sample(const float *d_logits, int vocab, wick_sample_cfg cfg, uint64_t *d_rng,
                      int32_t *d_params, int next_pos, int32_t *d_out);

#ifdef __cplusplus
}
#endif

#endif
