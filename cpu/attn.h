/* Attention kernels of the forward pass: a query head's scores over a set of
 * candidate KV rows (the same row is key and value, as in DeepSeek-V4's MQA),
 * softmax with a learned sink logit that has no value, the weighted sum; and
 * the lightning indexer's scores. cpu/attn.c dispatches to the _generic,
 * _avx2 and _avx512 variants by st_cpu_isa(). No allocation. */
#ifndef ST_CPU_ATTN_H
#define ST_CPU_ATTN_H

#include <stddef.h>
#include <stdint.h>

/* For each of nh heads h: s_c = scale * (q_h . rows[c]) for c < n,
 * p = softmax over {s_c} and sink[h] (the sink takes probability mass but adds
 * no value), o_h = sum_c p_c rows[c]. q (nh, d), o (nh, d), rows[c] (d),
 * scratch (nh * n) floats. n == 0 gives o_h = 0. */
void st_attn_heads(const float *q, int64_t nh, const float *const *rows, int64_t n, int64_t d, float scale,
                   const float *sink, float *scratch, float *o);
/* The three stages of st_attn_heads, for callers that split one token's work
 * over threads. st_attn_heads == scores, softmax of each head, wsum; and it
 * stays bit-identical when scores run on row ranges that start at multiples
 * of 4 and wsum on column ranges (rows shifted, d' = width) that start at
 * multiples of 16 with widths that are multiples of 16 (tested).
 * s (nh, n) = scale * q . rows[c]; s[0..n) -> softmax with sink;
 * o (nh, d) = sum_c p (nh, n)[h][c] * rows[c]. */
void st_attn_scores(const float *q, int64_t nh, const float *const *rows, int64_t n, int64_t d, float scale, float *s);
void st_attn_softmax(float *s, int64_t n, float sink);
void st_attn_wsum(const float *p, int64_t nh, const float *const *rows, int64_t n, int64_t d, float *o);

/* One head: st_attn_heads with nh = 1. */
void st_attn_head(const float *q, const float *const *rows, int64_t n, int64_t d, float scale, float sink,
                  float *scratch, float *o);

/* Indexer scores: out[s] = sum_h w[h] * max(0, q_h . k_s) for s < n.
 * q (H, d), w (H), k (n, d) contiguous rows. */
void st_index_scores(const float *q, const float *w, const float *k, int64_t H, int64_t d, int64_t n, float *out);

/* Compact KV rows (the official cache layouts), decoded exactly; row r starts
 * at src + r * stride, x is (rows, d). ue8m0 scale byte s: 2^(s-127).
 * e2m1 row: d codes two a byte (low nibble first), then a scale per 32
 * (a last partial block has its own). */
void st_e2m1_rows(const uint8_t *src, size_t stride, int64_t rows, int64_t d, float *x);
/* KV row: d - rope e4m3 codes (0x7f/0xff: NaN), a scale per 64 of them, then
 * rope bf16 (little endian, unaligned). */
void st_kv_rows(const uint8_t *src, size_t stride, int64_t rows, int64_t d, int64_t rope, float *x);

#endif
