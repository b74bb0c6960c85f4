/* Attention scores and weighted sums over packed KV rows (st_kv_rows layout),
 * AVX2, with the rows decoded in registers: each 8 columns are decoded by the operations of
 * st_kv_rows_cols_avx2 (so to the same floats) and go straight into the two
 * accumulators of st_attn_scores_avx2's dot product of every head, in its
 * order (16 columns a step, then 8, then the same horizontal sum), so the
 * scores are bit-identical to decode-then-F32 (tested), a row decoded once for
 * 4 heads and never stored; weighted sums below. Needs d and rope multiples
 * of 8; cpu/attn_kv.c checks. */
#include <immintrin.h>

#include "cpu/attn_internal.h"

/* Columns [k, k+8) of a packed row e (nope e4m3 codes, (nope + 63) / 64
 * scale bytes, the bf16 tail). Reads only the row. */
static inline __attribute__((always_inline)) __m256 kv8(const uint8_t *e, int64_t k, int64_t nope) {
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

/* hsum8 of attn_avx2.c */
static inline float hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/* s[h * lds + c] for the 4 heads from h0: two accumulators each, named (an
 * array of vectors stays in memory). */
static void four_heads_kv(const float *q, int64_t h0, const uint8_t *const *rows, int64_t n, int64_t d,
                          int64_t nope, float scale, float *s, int64_t lds) {
    const float *q0 = q + h0 * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
    for (int64_t c = 0; c < n; c++) {
        const uint8_t *e = rows[c];
        __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
        int64_t k = 0;
        for (; k + 16 <= d; k += 16) {
            const __m256 x0 = kv8(e, k, nope), x1 = kv8(e, k + 8, nope);
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
            const __m256 x0 = kv8(e, k, nope);
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

/* The same for one head. */
static void one_head_kv(const float *qh, const uint8_t *const *rows, int64_t n, int64_t d, int64_t nope, float scale,
                        float *sh) {
    for (int64_t c = 0; c < n; c++) {
        const uint8_t *e = rows[c];
        __m256 a0 = _mm256_setzero_ps(), b0 = a0;
        int64_t k = 0;
        for (; k + 16 <= d; k += 16) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + k), kv8(e, k, nope), a0);
            b0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + k + 8), kv8(e, k + 8, nope), b0);
        }
        if (k < d) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + k), kv8(e, k, nope), a0);
        sh[c] = hsum8(_mm256_add_ps(a0, b0)) * scale;
    }
}

void st_attn_scores_kv_avx2(const float *q, int64_t nh, const uint8_t *const *rows, int64_t n, int64_t d,
                            int64_t rope, float scale, float *s, int64_t lds) {
    const int64_t nope = d - rope;
    int64_t h = 0;
    for (; h + 4 <= nh; h += 4) four_heads_kv(q, h, rows, n, d, nope, scale, s, lds);
    for (; h < nh; h++) one_head_kv(q + h * d, rows, n, d, nope, scale, s + h * lds);
}

/* st_attn_wsum_avx2 over columns [col0, col0 + width) of the packed rows:
 * o (nh, width); col0 and width multiples of 8. Every output lane is the same
 * chain of FMAs over the rows in order, from 0 or o's value, as in the F32
 * kernel, so the blocking (4 heads x 16 columns here, the row's 16 columns
 * decoded once for the 4 heads) does not change a bit. */
void st_attn_wsum_kv_avx2(const float *p, int64_t ldp, int64_t nh, const uint8_t *const *rows, int64_t n, int64_t d,
                          int64_t rope, int64_t col0, int64_t width, int acc, float *o) {
    const int64_t nope = d - rope, w = width;
    int64_t h = 0;
    for (; h + 4 <= nh; h += 4) {
        const float *p0 = p + h * ldp, *p1 = p0 + ldp, *p2 = p1 + ldp, *p3 = p2 + ldp;
        float *o0 = o + h * w, *o1 = o0 + w, *o2 = o1 + w, *o3 = o2 + w;
        int64_t k = 0;
        for (; k + 16 <= w; k += 16) {
            __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
            if (acc) {
                a0 = _mm256_loadu_ps(o0 + k); b0 = _mm256_loadu_ps(o0 + k + 8);
                a1 = _mm256_loadu_ps(o1 + k); b1 = _mm256_loadu_ps(o1 + k + 8);
                a2 = _mm256_loadu_ps(o2 + k); b2 = _mm256_loadu_ps(o2 + k + 8);
                a3 = _mm256_loadu_ps(o3 + k); b3 = _mm256_loadu_ps(o3 + k + 8);
            }
            for (int64_t c = 0; c < n; c++) {
                const __m256 x0 = kv8(rows[c], col0 + k, nope), x1 = kv8(rows[c], col0 + k + 8, nope);
                __m256 pc = _mm256_broadcast_ss(p0 + c);
                a0 = _mm256_fmadd_ps(pc, x0, a0); b0 = _mm256_fmadd_ps(pc, x1, b0);
                pc = _mm256_broadcast_ss(p1 + c);
                a1 = _mm256_fmadd_ps(pc, x0, a1); b1 = _mm256_fmadd_ps(pc, x1, b1);
                pc = _mm256_broadcast_ss(p2 + c);
                a2 = _mm256_fmadd_ps(pc, x0, a2); b2 = _mm256_fmadd_ps(pc, x1, b2);
                pc = _mm256_broadcast_ss(p3 + c);
                a3 = _mm256_fmadd_ps(pc, x0, a3); b3 = _mm256_fmadd_ps(pc, x1, b3);
            }
            _mm256_storeu_ps(o0 + k, a0); _mm256_storeu_ps(o0 + k + 8, b0);
            _mm256_storeu_ps(o1 + k, a1); _mm256_storeu_ps(o1 + k + 8, b1);
            _mm256_storeu_ps(o2 + k, a2); _mm256_storeu_ps(o2 + k + 8, b2);
            _mm256_storeu_ps(o3 + k, a3); _mm256_storeu_ps(o3 + k + 8, b3);
        }
        if (k < w) { /* 8 columns left */
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            if (acc) {
                a0 = _mm256_loadu_ps(o0 + k); a1 = _mm256_loadu_ps(o1 + k);
                a2 = _mm256_loadu_ps(o2 + k); a3 = _mm256_loadu_ps(o3 + k);
            }
            for (int64_t c = 0; c < n; c++) {
                const __m256 x0 = kv8(rows[c], col0 + k, nope);
                a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + c), x0, a0);
                a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + c), x0, a1);
                a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(p2 + c), x0, a2);
                a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(p3 + c), x0, a3);
            }
            _mm256_storeu_ps(o0 + k, a0); _mm256_storeu_ps(o1 + k, a1);
            _mm256_storeu_ps(o2 + k, a2); _mm256_storeu_ps(o3 + k, a3);
        }
    }
    for (; h < nh; h++) {
        const float *ph = p + h * ldp;
        float *oh = o + h * w;
        for (int64_t k = 0; k < w; k += 8) {
            __m256 a0 = acc ? _mm256_loadu_ps(oh + k) : _mm256_setzero_ps();
            for (int64_t c = 0; c < n; c++) a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(ph + c), kv8(rows[c], col0 + k, nope), a0);
            _mm256_storeu_ps(oh + k, a0);
        }
    }
}
