/* Per-instruction-set entry points of the attention kernels (cpu/attn.c
 * dispatches; contract in cpu/attn.h). Every variant has the semantics of its
 * _generic one; the order of the sums may differ.
 * st_attn_scores: s (nh, n) = scale * q (nh, d) . rows[c].
 * st_attn_softmax: s (n) -> exp(s - m) / (sum exp(s - m) + exp(sink - m)), m = max(s, sink).
 * st_attn_wsum:   o (nh, d) = sum_c p[h * ldp + c] * rows[c], c < n; acc: the sums
 *                 start from o's values instead of 0 (rows taken in chunks give the
 *                 same bits as one call).
 * Also the pieces the AVX2 and AVX-512 files share to write each kernel body
 * once for F32 and packed rows (ST_ATTN_INLINE, WS_*, ST_ATTN_WSUM_DRIVER). */
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

/* For the ISA files' kernel bodies: instances with constant parameters
 * (row loader, head and vector counts) must be inlined to be specialised. */
#define ST_ATTN_INLINE static inline __attribute__((always_inline))
/* The weighted-sum bodies keep NH x NV accumulators as named variables
 * a<h><v> (arrays of vectors may live in memory at -O2): these expand a
 * statement X for every head h < 8 and vector v < 4; WS_ON says which exist
 * in an instance (NH, NV constants in scope), the others are dead code. */
#define WS_V(X, h) X(h, 0) X(h, 1) X(h, 2) X(h, 3)
#define WS_HV(X) WS_V(X, 0) WS_V(X, 1) WS_V(X, 2) WS_V(X, 3) WS_V(X, 4) WS_V(X, 5) WS_V(X, 6) WS_V(X, 7)
#define WS_H(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define WS_ON(h, v) ((h) < NH && (v) < NV)

/* The weighted-sum driver over an ISA's block kernel
 * wsum_block(p, ldp, rows, c0, c1, kc, nope, from_o, o, ldo, NH, NV, packed)
 * (NH heads x NV vectors of VW columns from row column kc, rows [c0, c1),
 * o (NH, ldo), sums from o's values if from_o): defines wsum_body, which
 * takes rows 256 (packed, ~100-200 bytes) or 64 (F32) at a time (the rows of
 * a block stay in L1 while every column and head block reads them; the sums
 * go through o between blocks, exactly), heads G at a time and then the
 * nh % G left in one block, and per head block NV = 4, 2 or 1 vectors (at
 * most ACC accumulators), then 1 for the last columns (not 2: measured
 * slower on 4 heads, where it saves no decode). Every output lane stays one
 * chain of FMAs over the rows in order, so none of this blocking changes a
 * bit. */
#define ST_ATTN_WSUM_DRIVER(VW, ACC)                                                                                 \
    ST_ATTN_INLINE void wsum_heads(const float *p, int64_t ldp, const void *const *rows, int64_t c0, int64_t c1,     \
                                   int64_t col0, int64_t w, int64_t nope, int from_o, float *o, const int NH,        \
                                   const int packed) {                                                               \
        const int NV = NH * 4 <= (ACC) ? 4 : NH * 2 <= (ACC) ? 2 : 1;                                                \
        int64_t k = 0;                                                                                               \
        for (; k + (VW) * NV <= w; k += (VW) * NV)                                                                   \
            wsum_block(p, ldp, rows, c0, c1, col0 + k, nope, from_o, o + k, w, NH, NV, packed);                      \
        for (; k < w; k += (VW)) wsum_block(p, ldp, rows, c0, c1, col0 + k, nope, from_o, o + k, w, NH, 1, packed);  \
    }                                                                                                                \
    ST_ATTN_INLINE void wsum_body(const float *p, int64_t ldp, int64_t nh, const void *const *rows, int64_t n,       \
                                  int64_t col0, int64_t w, int64_t nope, int acc, float *o, const int G,             \
                                  const int packed) {                                                                \
        const int64_t ROWS = packed ? 256 : 64;                                                                      \
        int64_t c0 = 0;                                                                                              \
        do { /* at least once: n == 0 gives o = 0 (or leaves o) */                                                   \
            const int64_t c1 = n - c0 < ROWS ? n : c0 + ROWS;                                                        \
            const int from_o = acc || c0 > 0;                                                                        \
            int64_t h = 0;                                                                                           \
            for (; h + G <= nh; h += G)                                                                              \
                wsum_heads(p + h * ldp, ldp, rows, c0, c1, col0, w, nope, from_o, o + h * w, G, packed);             \
            const float *ph = p + h * ldp;                                                                           \
            float *oh = o + h * w;                                                                                   \
            switch (nh - h) {                                                                                        \
            case 1: wsum_heads(ph, ldp, rows, c0, c1, col0, w, nope, from_o, oh, 1, packed); break;                  \
            case 2: wsum_heads(ph, ldp, rows, c0, c1, col0, w, nope, from_o, oh, 2, packed); break;                  \
            case 3: wsum_heads(ph, ldp, rows, c0, c1, col0, w, nope, from_o, oh, 3, packed); break;                  \
            case 4: wsum_heads(ph, ldp, rows, c0, c1, col0, w, nope, from_o, oh, 4, packed); break;                  \
            case 5: wsum_heads(ph, ldp, rows, c0, c1, col0, w, nope, from_o, oh, 5, packed); break;                  \
            case 6: wsum_heads(ph, ldp, rows, c0, c1, col0, w, nope, from_o, oh, 6, packed); break;                  \
            case 7: wsum_heads(ph, ldp, rows, c0, c1, col0, w, nope, from_o, oh, 7, packed); break;                  \
            default: break;                                                                                          \
            }                                                                                                        \
            c0 = c1;                                                                                                 \
        } while (c0 < n);                                                                                            \
    }

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

/* Attention over packed KV rows decoded in registers (cpu/attn_avx512.c);
 * d and rope multiples of 16. scores: s[h * lds + c] as st_attn_scores_avx512
 * on the decoded rows; wsum: st_attn_wsum_avx512 on their columns
 * [col0, col0 + width) (col0, width multiples of 16), o (nh, width). */
void st_attn_scores_kv_avx512(const float *q, int64_t nh, const uint8_t *const *rows, int64_t n, int64_t d,
                              int64_t rope, float scale, float *s, int64_t lds);
/* st_attn_scores_avx2 / st_attn_wsum_avx2 on the decoded rows
 * (cpu/attn_avx2.c); d, rope, col0 and width multiples of 8. */
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
