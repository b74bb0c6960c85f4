/* Between attention.c and compressor.c: the compressor's rounding, decoding
 * and feeding steps the attention of a chunk calls. Internal to engine/. */
#ifndef ST_ENGINE_ATTENTION_INTERNAL_H
#define ST_ENGINE_ATTENTION_INTERNAL_H

#include "engine/layer.h"

/* Round a main-KV vector (d) the way the official cache stores it: nope dims
 * e4m3 with a power-of-two scale per 64, rope dims bf16. */
void st_kv_quant_sim(float *v, int64_t d, int64_t rope_dims);
/* An indexer vector (d): Hadamard, then e2m1 with a power-of-two scale per 32. */
void st_index_quant_sim(float *v, int64_t d);
/* v (n, w->d) = the values of n consecutive stored entries at src (exact). */
void st_comp_entries_decode(const st_comp_state *s, const st_compressor_w *w, const void *src, int64_t n, float *v);

/* Rows [0, n) of s's entries decoded into out, split over a pool (st_pool_fn). */
typedef struct st_comp_decode_job {
    const st_comp_state *s;
    const st_compressor_w *w;
    int64_t n;
    float *out; /* (n, d) */
} st_comp_decode_job;
void st_comp_decode_rows(void *ctx, int ith, int nth);

/* Feeds token p's kv and score rows (coff * d each); when p completes a block,
 * appends the block's entry to s (its array, or its KV pages). */
int st_comp_feed(const st_compressor_w *w, st_comp_state *s, const float *kv, const float *score, int64_t p,
                 const float *inv_freq, int64_t rope_dims, float eps, st_numerics num);

#endif
