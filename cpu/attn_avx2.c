/* Attention kernels, AVX2 + FMA (see attn_internal.h): 8-wide dot products
 * with two accumulators, weighted sums 32 columns at a time. Shapes whose
 * width is not a multiple of 8 take the generic code. */
#include <immintrin.h>
#include <string.h>

#include "cpu/attn_internal.h"

static inline float hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

static inline float dot8(const float *a, const float *b, int64_t d) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= d; k += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), s1);
    }
    if (k < d) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
    return hsum8(_mm256_add_ps(s0, s1));
}

void st_attn_scores_avx2(const float *q, int64_t nh, const float *const *rows, int64_t n, int64_t d, float scale,
                         float *s) {
    if (d % 8) { st_attn_scores_generic(q, nh, rows, n, d, scale, s); return; }
    for (int64_t h = 0; h < nh; h++)
        for (int64_t c = 0; c < n; c++) s[h * n + c] = dot8(q + h * d, rows[c], d) * scale;
}

void st_attn_wsum_avx2(const float *p, int64_t ldp, int64_t nh, const float *const *rows, int64_t n, int64_t d,
                       int acc, float *o) {
    if (d % 8) { st_attn_wsum_generic(p, ldp, nh, rows, n, d, acc, o); return; }
    for (int64_t h = 0; h < nh; h++) {
        const float *ph = p + h * ldp;
        int64_t k = 0;
        for (; k + 32 <= d; k += 32) {
            float *oh0 = o + h * d + k;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            if (acc) {
                a0 = _mm256_loadu_ps(oh0);
                a1 = _mm256_loadu_ps(oh0 + 8);
                a2 = _mm256_loadu_ps(oh0 + 16);
                a3 = _mm256_loadu_ps(oh0 + 24);
            }
            for (int64_t c = 0; c < n; c++) {
                const __m256 pc = _mm256_broadcast_ss(ph + c);
                const float *v = rows[c] + k;
                a0 = _mm256_fmadd_ps(pc, _mm256_loadu_ps(v), a0);
                a1 = _mm256_fmadd_ps(pc, _mm256_loadu_ps(v + 8), a1);
                a2 = _mm256_fmadd_ps(pc, _mm256_loadu_ps(v + 16), a2);
                a3 = _mm256_fmadd_ps(pc, _mm256_loadu_ps(v + 24), a3);
            }
            float *oh = o + h * d + k;
            _mm256_storeu_ps(oh, a0);
            _mm256_storeu_ps(oh + 8, a1);
            _mm256_storeu_ps(oh + 16, a2);
            _mm256_storeu_ps(oh + 24, a3);
        }
        for (; k < d; k += 8) {
            __m256 a0 = acc ? _mm256_loadu_ps(o + h * d + k) : _mm256_setzero_ps();
            for (int64_t c = 0; c < n; c++) a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(ph + c), _mm256_loadu_ps(rows[c] + k), a0);
            _mm256_storeu_ps(o + h * d + k, a0);
        }
    }
}

void st_index_scores_avx2(const float *q, const float *w, const float *k, int64_t H, int64_t d, int64_t n, float *out) {
    if (d % 8) { st_index_scores_generic(q, w, k, H, d, n, out); return; }
    for (int64_t s = 0; s < n; s++) {
        float acc = 0;
        for (int64_t h = 0; h < H; h++) {
            float v = dot8(q + h * d, k + s * d, d);
            if (v > 0) acc += v * w[h];
        }
        out[s] = acc;
    }
}
