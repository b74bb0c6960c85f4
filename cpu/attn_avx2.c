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

/* Packed KV rows (layout in cpu/attn.h), 8 columns at a time, the same
 * operations as the generic decoder: the e4m3 magnitude bits moved into an
 * f32's exponent/mantissa are the value times 2^-120 (subnormal codes become
 * f32 subnormals, exactly), times 2^120, times the block's ue8m0 scale;
 * 0x7f/0xff are NaN. bf16: the top half of an f32. Partial vectors go through
 * a small copy (no read or write past the row). c0 a multiple of 8, so every
 * 8 e4m3 columns sit in one 64-block. */
static inline void store8(float *x, __m256 v, int64_t m) {
    if (m >= 8) { _mm256_storeu_ps(x, v); return; }
    float tmp[8];
    _mm256_storeu_ps(tmp, v);
    memcpy(x, tmp, (size_t)m * sizeof(float));
}

void st_kv_rows_cols_avx2(const uint8_t *src, size_t stride, int64_t rows, int64_t d, int64_t rope, int64_t c0,
                          int64_t c1, float *x) {
    const int64_t nope = d - rope, w = c1 - c0, e1 = c1 < nope ? c1 : nope, r0 = c0 > nope ? c0 : nope;
    const __m256i m7f = _mm256_set1_epi32(0x7f), m80 = _mm256_set1_epi32(0x80);
    const __m256 two120 = _mm256_set1_ps(0x1p120f), nan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000));
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *e = src + (size_t)r * stride;
        float *xr = x + r * w;
        for (int64_t k = c0; k < e1; k += 8) {
            const int64_t m = e1 - k;
            uint64_t b8 = 0;
            memcpy(&b8, e + k, (size_t)(m < 8 ? m : 8));
            const __m256i c = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)b8));
            const __m256i mag = _mm256_and_si256(c, m7f);
            const __m256i bits = _mm256_or_si256(_mm256_slli_epi32(mag, 20), _mm256_slli_epi32(_mm256_and_si256(c, m80), 24));
            const __m256 scale = _mm256_castsi256_ps(_mm256_set1_epi32((int)((uint32_t)e[nope + k / 64] << 23)));
            __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_castsi256_ps(bits), two120), scale);
            v = _mm256_blendv_ps(v, nan, _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, m7f)));
            store8(xr + (k - c0), v, m);
        }
        const uint8_t *rp = e + nope + (nope + 63) / 64;
        for (int64_t k = r0; k < c1; k += 8) {
            const int64_t m = c1 - k;
            __m128i h = _mm_setzero_si128();
            memcpy(&h, rp + 2 * (k - nope), (size_t)(m < 8 ? m : 8) * 2);
            const __m256i bits = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
            store8(xr + (k - c0), _mm256_castsi256_ps(bits), m);
        }
    }
}
