/* Attention kernels, AVX2 + FMA (see attn_internal.h): scores and weighted
 * sums over F32 rows or packed KV rows (one body each, instantiated with a
 * row loader), indexer scores. The packed KV row decoder (to F32 in memory)
 * is in cpu/attn_kv_avx2.c; the softmax is the generic one.
 *
 * A body reads a row's 8 columns through row8(), a load for F32 rows and
 * kv8() for packed ones, decoded in registers by the operations of
 * st_kv_rows_cols_avx2 (so to the same floats); `packed` is a constant of each
 * instance, so the compiler specialises it (no call per row), and both
 * instances run the same FMAs in the same order: packed rows give the bits of
 * decoding every row first and running the F32 kernel (tested). Scores: every
 * (head, row) dot product has two accumulators over 16 columns a step, then 8,
 * then one horizontal sum; heads go 4 per row, so a row is read (or decoded)
 * once for 4 heads. Weighted sums: up to 8 accumulators, 2 (F32) or 8
 * (packed) heads a block. Shapes whose width is not a multiple of 8 take the generic code. */
#include <immintrin.h>
#include <string.h>

#include "cpu/attn_internal.h"

static inline float hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/* Columns [k, k+8) of a packed row e (nope e4m3 codes, (nope + 63) / 64
 * scale bytes, the bf16 tail; d, rope multiples of 8, so the 8 columns are
 * all e4m3 in one 64-block or all bf16). Reads only the row. */
ST_ATTN_INLINE __m256 kv8(const uint8_t *e, int64_t k, int64_t nope) {
    if (k < nope) {
        const __m256i m7f = _mm256_set1_epi32(0x7f), m80 = _mm256_set1_epi32(0x80);
        const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(e + k)));
        const __m256i mag = _mm256_and_si256(c, m7f);
        const __m256i bits = _mm256_or_si256(_mm256_slli_epi32(mag, 20), _mm256_slli_epi32(_mm256_and_si256(c, m80), 24));
        const __m256 scale = _mm256_castsi256_ps(_mm256_set1_epi32((int)((uint32_t)e[nope + k / 64] << 23)));
        const __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(0x1p120f)), scale);
        return _mm256_blendv_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)),
                                _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, m7f)));
    }
    const uint8_t *rp = e + nope + (nope + 63) / 64 + 2 * (k - nope);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)rp)), 16));
}

/* The row loader of the bodies: columns [k, k+8) of row r, an F32 row (nope
 * unused) or a packed one. */
ST_ATTN_INLINE __m256 row8(const void *r, int64_t k, int64_t nope, const int packed) {
    return packed ? kv8((const uint8_t *)r, k, nope) : _mm256_loadu_ps((const float *)r + k);
}

/* a . row r */
ST_ATTN_INLINE float dot8(const float *a, const void *r, int64_t d, int64_t nope, const int packed) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= d; k += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), row8(r, k, nope, packed), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), row8(r, k + 8, nope, packed), s1);
    }
    if (k < d) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), row8(r, k, nope, packed), s0);
    return hsum8(_mm256_add_ps(s0, s1));
}

/* s[h * lds + c] = scale * q_h . rows[c]: the 4 heads from h0 against one row
 * at a time, dot8's accumulators named (an array of vectors stays in memory). */
ST_ATTN_INLINE void four_heads(const float *q, int64_t h0, const void *const *rows, int64_t n, int64_t d, int64_t nope,
                               float scale, float *s, int64_t lds, const int packed) {
    const float *q0 = q + h0 * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
    for (int64_t c = 0; c < n; c++) {
        const void *e = rows[c];
        __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
        int64_t k = 0;
        for (; k + 16 <= d; k += 16) {
            const __m256 x0 = row8(e, k, nope, packed), x1 = row8(e, k + 8, nope, packed);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + k), x0, a0);
            b0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + k + 8), x1, b0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + k), x0, a1);
            b1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + k + 8), x1, b1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + k), x0, a2);
            b2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + k + 8), x1, b2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + k), x0, a3);
            b3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + k + 8), x1, b3);
        }
        if (k < d) {
            const __m256 x0 = row8(e, k, nope, packed);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + k), x0, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + k), x0, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + k), x0, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + k), x0, a3);
        }
        s[h0 * lds + c] = hsum8(_mm256_add_ps(a0, b0)) * scale;
        s[(h0 + 1) * lds + c] = hsum8(_mm256_add_ps(a1, b1)) * scale;
        s[(h0 + 2) * lds + c] = hsum8(_mm256_add_ps(a2, b2)) * scale;
        s[(h0 + 3) * lds + c] = hsum8(_mm256_add_ps(a3, b3)) * scale;
    }
}

ST_ATTN_INLINE void scores_body(const float *q, int64_t nh, const void *const *rows, int64_t n, int64_t d, int64_t nope,
                                float scale, float *s, int64_t lds, const int packed) {
    int64_t h = 0;
    for (; h + 4 <= nh; h += 4) four_heads(q, h, rows, n, d, nope, scale, s, lds, packed);
    for (; h < nh; h++)
        for (int64_t c = 0; c < n; c++) s[h * lds + c] = dot8(q + h * d, rows[c], d, nope, packed) * scale;
}

void st_attn_scores_avx2(const float *q, int64_t nh, const float *const *rows, int64_t n, int64_t d, float scale,
                         float *s) {
    if (d % 8) { st_attn_scores_generic(q, nh, rows, n, d, scale, s); return; }
    scores_body(q, nh, (const void *const *)rows, n, d, d, scale, s, n, 0);
}

/* d and rope multiples of 8 */
void st_attn_scores_kv_avx2(const float *q, int64_t nh, const uint8_t *const *rows, int64_t n, int64_t d,
                            int64_t rope, float scale, float *s, int64_t lds) {
    scores_body(q, nh, (const void *const *)rows, n, d, d - rope, scale, s, lds, 1);
}

/* ---- weighted sums ----
 * o[h * w + j] (+)= sum_c p[h * ldp + c] * row_c[col0 + j]: heads x columns
 * in registers (up to 8 accumulators a<h><v>, WS_* in attn_internal.h), each
 * row's columns loaded or decoded once for every head of the block; rows,
 * heads and columns blocked by ST_ATTN_WSUM_DRIVER (attn_internal.h). */
#define WS_INIT(h, v) __m256 a##h##v = WS_ON(h, v) && from_o ? _mm256_loadu_ps(o + (h) * ldo + 8 * (v)) : zero;
#define WS_FMA(h, v) if (WS_ON(h, v)) a##h##v = _mm256_fmadd_ps(b, x##v, a##h##v);
#define WS_P(h) const float *p##h = p + ((h) < NH ? (h) : 0) * ldp; /* no multiply a row */
#define WS_HEAD(h) if ((h) < NH) { const __m256 b = _mm256_broadcast_ss(p##h + c); WS_V(WS_FMA, h) }
#define WS_STORE(h, v) if (WS_ON(h, v)) _mm256_storeu_ps(o + (h) * ldo + 8 * (v), a##h##v);

/* NH heads x NV * 8 columns from row column kc, rows [c0, c1); o (NH, ldo). */
ST_ATTN_INLINE void wsum_block(const float *p, int64_t ldp, const void *const *rows, int64_t c0, int64_t c1,
                               int64_t kc, int64_t nope, int from_o, float *o, int64_t ldo, const int NH, const int NV,
                               const int packed) {
    const __m256 zero = _mm256_setzero_ps();
    WS_HV(WS_INIT)
    WS_H(WS_P)
    for (int64_t c = c0; c < c1; c++) {
        const void *r = rows[c];
        const __m256 x0 = row8(r, kc, nope, packed), x1 = NV > 1 ? row8(r, kc + 8, nope, packed) : zero,
                     x2 = NV > 2 ? row8(r, kc + 16, nope, packed) : zero,
                     x3 = NV > 3 ? row8(r, kc + 24, nope, packed) : zero;
        WS_H(WS_HEAD)
    }
    WS_HV(WS_STORE)
}

ST_ATTN_WSUM_DRIVER(8, 8)

/* F32 rows 2 heads a block (x 32 columns): 4 heads x 16 was faster on rows
 * in L2 but slower on rows from memory, 1 head (as before) the reverse. */
void st_attn_wsum_avx2(const float *p, int64_t ldp, int64_t nh, const float *const *rows, int64_t n, int64_t d,
                       int acc, float *o) {
    if (d % 8) { st_attn_wsum_generic(p, ldp, nh, rows, n, d, acc, o); return; }
    wsum_body(p, ldp, nh, (const void *const *)rows, n, 0, d, d, acc, o, 2, 0);
}

/* st_attn_wsum_avx2 over columns [col0, col0 + width) of the packed rows:
 * o (nh, width); col0 and width multiples of 8. 8 heads a block: a row's 8
 * columns decoded once for 8 heads. */
void st_attn_wsum_kv_avx2(const float *p, int64_t ldp, int64_t nh, const uint8_t *const *rows, int64_t n, int64_t d,
                          int64_t rope, int64_t col0, int64_t width, int acc, float *o) {
    wsum_body(p, ldp, nh, (const void *const *)rows, n, col0, width, d - rope, acc, o, 8, 1);
}

void st_index_scores_avx2(const float *q, const float *w, const float *k, int64_t H, int64_t d, int64_t n, float *out) {
    if (d % 8) { st_index_scores_generic(q, w, k, H, d, n, out); return; }
    for (int64_t s = 0; s < n; s++) {
        float acc = 0;
        for (int64_t h = 0; h < H; h++) {
            float v = dot8(q + h * d, k + s * d, d, d, 0);
            if (v > 0) acc += v * w[h];
        }
        out[s] = acc;
    }
}
