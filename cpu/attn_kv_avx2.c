/* Attention scores over packed KV rows (st_kv_rows layout), AVX2, with the
 * rows decoded in registers: each 8 columns are decoded by the operations of
 * st_kv_rows_cols_avx2 (so to the same floats) and go straight into the two
 * accumulators of st_attn_scores_avx2's dot product of every head, in its
 * order (16 columns a step, then 8, then the same horizontal sum), so the
 * scores are bit-identical to decode-then-F32 (tested), a row decoded once for
 * 4 heads and never stored. Needs d and rope multiples of 8; cpu/attn_kv.c
 * checks. */
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

/* s[h * lds + c] for heads [h0, h0 + H), H <= 4 a constant after inlining. */
static inline __attribute__((always_inline)) void heads_kv(const float *q, int64_t h0, int H, const uint8_t *const *rows,
                                                           int64_t n, int64_t d, int64_t nope, float scale, float *s,
                                                           int64_t lds) {
    for (int64_t c = 0; c < n; c++) {
        const uint8_t *e = rows[c];
        __m256 s0[4], s1[4];
        for (int i = 0; i < H; i++) s0[i] = s1[i] = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 16 <= d; k += 16) {
            const __m256 x0 = kv8(e, k, nope), x1 = kv8(e, k + 8, nope);
            for (int i = 0; i < H; i++) {
                const float *qh = q + (h0 + i) * d;
                s0[i] = _mm256_fmadd_ps(_mm256_loadu_ps(qh + k), x0, s0[i]);
                s1[i] = _mm256_fmadd_ps(_mm256_loadu_ps(qh + k + 8), x1, s1[i]);
            }
        }
        if (k < d) {
            const __m256 x0 = kv8(e, k, nope);
            for (int i = 0; i < H; i++) s0[i] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (h0 + i) * d + k), x0, s0[i]);
        }
        for (int i = 0; i < H; i++) s[(h0 + i) * lds + c] = hsum8(_mm256_add_ps(s0[i], s1[i])) * scale;
    }
}

void st_attn_scores_kv_avx2(const float *q, int64_t nh, const uint8_t *const *rows, int64_t n, int64_t d,
                            int64_t rope, float scale, float *s, int64_t lds) {
    const int64_t nope = d - rope;
    int64_t h = 0;
    for (; h + 4 <= nh; h += 4) heads_kv(q, h, 4, rows, n, d, nope, scale, s, lds);
    for (; h < nh; h++) heads_kv(q, h, 1, rows, n, d, nope, scale, s, lds);
}
