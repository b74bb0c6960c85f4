/* Per-instruction-set entry points of the attention kernels (cpu/attn.c
 * dispatches; contract in cpu/attn.h). Every variant has the semantics of its
 * _generic one; the order of the sums may differ.
 * st_attn_scores: s (nh, n) = scale * q (nh, d) . rows[c].
 * st_attn_softmax: s (n) -> exp(s - m) / (sum exp(s - m) + exp(sink - m)), m = max(s, sink).
 * st_attn_wsum:   o (nh, d) = sum_c p[h * ldp + c] * rows[c], c < n; acc: the sums
 *                 start from o's values instead of 0 (rows taken in chunks give the
 *                 same bits as one call). */
#ifndef ST_CPU_ATTN_INTERNAL_H
#define ST_CPU_ATTN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#define ST_ATTN_DECLARE(sfx)                                                                                     \
    void st_attn_scores_##sfx(const float *q, int64_t nh, const float *const *rows, int64_t n, int64_t d,        \
                              float scale, float *s);                                                             \
    void st_attn_softmax_##sfx(float *s, int64_t n, float sink);                                                \
    void st_attn_wsum_##sfx(const float *p, int64_t ldp, int64_t nh, const float *const *rows, int64_t n,       \
                            int64_t d, int acc, float *o);                                                     \
    void st_index_scores_##sfx(const float *q, const float *w, const float *k, int64_t H, int64_t d, int64_t n,  \
                               float *out);

ST_ATTN_DECLARE(generic)
ST_ATTN_DECLARE(avx2)
ST_ATTN_DECLARE(avx512)

/* Compact KV rows (contract in cpu/attn.h); e2m1: d a multiple of 32. */
void st_e2m1_rows_avx512(const uint8_t *src, size_t stride, int64_t rows, int64_t d, float *x);
void st_kv_rows_avx512(const uint8_t *src, size_t stride, int64_t rows, int64_t d, int64_t rope, float *x);
/* c0 a multiple of 16 */
void st_kv_rows_cols_avx512(const uint8_t *src, size_t stride, int64_t rows, int64_t d, int64_t rope, int64_t c0,
                            int64_t c1, float *x);
/* c0 a multiple of 8 */
void st_kv_rows_cols_avx2(const uint8_t *src, size_t stride, int64_t rows, int64_t d, int64_t rope, int64_t c0,
                          int64_t c1, float *x);

/* Attention over packed KV rows decoded in registers (cpu/attn_kv_avx512.c);
 * d and rope multiples of 16. scores: s[h * lds + c] as st_attn_scores_avx512
 * on the decoded rows; wsum: st_attn_wsum_avx512 on their columns
 * [col0, col0 + width) (col0, width multiples of 16), o (nh, width). */
void st_attn_scores_kv_avx512(const float *q, int64_t nh, const uint8_t *const *rows, int64_t n, int64_t d,
                              int64_t rope, float scale, float *s, int64_t lds);
/* st_attn_scores_avx2 / st_attn_wsum_avx2 on the decoded rows
 * (cpu/attn_kv_avx2.c); d, rope, col0 and width multiples of 8. */
void st_attn_scores_kv_avx2(const float *q, int64_t nh, const uint8_t *const *rows, int64_t n, int64_t d,
                            int64_t rope, float scale, float *s, int64_t lds);
void st_attn_wsum_kv_avx2(const float *p, int64_t ldp, int64_t nh, const uint8_t *const *rows, int64_t n, int64_t d,
                          int64_t rope, int64_t col0, int64_t width, int acc, float *o);
void st_attn_wsum_kv_avx512(const float *p, int64_t ldp, int64_t nh, const uint8_t *const *rows, int64_t n,
                            int64_t d, int64_t rope, int64_t col0, int64_t width, int acc, float *o);

/* Indexer scores over packed keys (contract in cpu/attn.h); d a multiple of 32. */
struct st_index_q;
void st_index_scores_e2m1_avx2(const struct st_index_q *q, const float *w, const uint8_t *keys, size_t stride,
                               int64_t n, float *out);
void st_index_scores_e2m1_avx512(const struct st_index_q *q, const float *w, const uint8_t *keys, size_t stride,
                                 int64_t n, float *out);

#endif
