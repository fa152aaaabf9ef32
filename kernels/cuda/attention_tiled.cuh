// The tensor-core attention of several query rows (attention_tiled.cu), which
// wick_attention dispatches to.
#pragma once

#include <stdint.h>

// Whether attention_tiled takes this cache type, head shape and cache pointers.
bool attention_tiled_fits(int type, const void *kc, const void *vc, int n_heads,
                          int n_kv_heads, int head_dim);
// As wick_attention, for any n >= 1 (meant for n > 1).
int attention_tiled(int type, const float *q, const void *kc, const void *vc,
                    const int32_t *pos0, const int32_t *state, int n, int n_heads,
                    int n_kv_heads, int head_dim, int capacity, int keep, int window,
                    float *out);
