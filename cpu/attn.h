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
/* Columns [c0, c1) of the same rows: x (rows, c1 - c0), equal to st_kv_rows's. */
void st_kv_rows_cols(const uint8_t *src, size_t stride, int64_t rows, int64_t d, int64_t rope, int64_t c0, int64_t c1,
                     float *x);

/* ---- indexer scores over packed keys, exact block dot products ----
 * In official numerics the indexer's q and keys are both e2m1 values with a
 * power-of-two scale per 32, so within a block every product is an integer
 * times 2^(sq+sk): a block's dot product is an exact integer (int8 dot
 * products) times an exact power of two. st_index_q holds one token's q
 * (H, d) in that form; the scores are defined, on every ISA, as
 *   t_hb = ((float)idot_hb * qscale_hb) * kscale_sb   (exact unless under/overflow)
 *   score_h = ((t_h0 + t_h1) + t_h2) + ...             (blocks in order)
 *   out[s] = ((0 + relu(score_0) * w0) + relu(score_1) * w1) + ...   (heads in order)
 * so generic, avx2 and avx512 give the same bits (tested). */
typedef struct st_index_q {
    int64_t H, d, nb;      /* nb = ceil(d / 32) blocks a head */
    int8_t *codes;         /* (H, nb * 32): q / 2^e_hb, small integers, zero past d */
    float *scale;          /* (H, nb): 2^(e_hb - 1) (the -1: keys hold 2 * e2m1 as integers) */
    int32_t *corr;         /* (H, nb): 12 * sum of the block's codes (keys are offset by +12 for u8 x s8) */
    int32_t *perm;         /* (H, nb, 8): the block's codes 4 at a time in the order the SIMD key decode gives */
} st_index_q;

/* Bytes of the buffer st_index_q_pack needs for (H, d), 64-byte multiple. */
size_t st_index_q_bytes(int64_t H, int64_t d);
/* q (H, d) -> *out, pointing into buf (st_index_q_bytes, 8-byte aligned).
 * Returns 1 when every 32-block of q is made of integers in units of 2^(e-4)
 * (amax < 2^e, so |code| < 16; true of e2m1-quantised q) with the unit in
 * range, else 0 (use the F32 path). */
int st_index_q_pack(const float *q, int64_t H, int64_t d, void *buf, st_index_q *out);
/* out[s] (n) = the scores above of q against the n e2m1 rows at keys (row s at
 * keys + s * stride, layout of st_e2m1_rows). w (H). No allocation. */
void st_index_scores_e2m1(const st_index_q *q, const float *w, const uint8_t *keys, size_t stride, int64_t n,
                          float *out);
/* The same, portable C, whatever st_cpu_isa() says (the reference of the tests). */
void st_index_scores_e2m1_generic(const st_index_q *q, const float *w, const uint8_t *keys, size_t stride,
                                  int64_t n, float *out);

/* ---- attention over packed KV rows ----
 * Candidates rows[0..nf) are F32 rows (d), rows[nf..n) packed KV rows
 * (st_kv_rows layout with d, rope). The packed rows are decoded a few at a
 * time into tile (st_attn_kv_tile_floats(nh, d) floats, the caller's) and
 * the F32 kernels run on them (on AVX-512 and AVX2 with d and rope multiples
 * of 16 or 8, decoded in registers inside the kernels instead): the results are bit-identical to decoding
 * every row first and calling st_attn_heads / st_attn_scores / st_attn_wsum
 * (tested), with no decoded copy of all the rows. wsum_kv computes columns
 * [col0, col0 + width) of o (nh, width) (the split of st_attn_wsum over
 * column ranges). */
size_t st_attn_kv_tile_floats(int64_t nh, int64_t d);
void st_attn_heads_kv(const float *q, int64_t nh, const void *const *rows, int64_t nf, int64_t n, int64_t d,
                      int64_t rope, float scale, const float *sink, float *tile, float *scratch, float *o);
void st_attn_scores_kv(const float *q, int64_t nh, const void *const *rows, int64_t nf, int64_t n, int64_t d,
                       int64_t rope, float scale, float *tile, float *s);
void st_attn_wsum_kv(const float *p, int64_t nh, const void *const *rows, int64_t nf, int64_t n, int64_t d,
                     int64_t rope, int64_t col0, int64_t width, float *tile, float *o);

#endif
