/* AVX2 SwiGLU rows (cpu/swiglu_internal.h): st_expf on 4 doubles at a time,
 * the same IEEE operations as cpu/expf.h in the same order (no FMA). */
#include <immintrin.h>
#include <math.h>

#include "cpu/swiglu_internal.h"

/* st_expf of 4 floats widened to double, before its final rounding; x within [-104, 88.8]. */
static inline __m256d expf_core(__m256d x) {
    const __m256d shifter = _mm256_set1_pd(0x1.8p52);
    const __m256d kd = _mm256_sub_pd(_mm256_add_pd(_mm256_mul_pd(x, _mm256_set1_pd(0x1.71547652b82fep+0)), shifter), shifter);
    const __m256d r = _mm256_sub_pd(_mm256_sub_pd(x, _mm256_mul_pd(kd, _mm256_set1_pd(0x1.62e42feep-1))),
                                    _mm256_mul_pd(kd, _mm256_set1_pd(0x1.a39ef35793c76p-33)));
#define STEP(c) p = _mm256_add_pd(_mm256_mul_pd(p, r), _mm256_set1_pd(c))
    __m256d p = _mm256_set1_pd(0x1.1eed8eff8d898p-29);
    STEP(0x1.ae64567f544e4p-26); STEP(0x1.27e4fb7789f5cp-22); STEP(0x1.71de3a556c734p-19);
    STEP(0x1.a01a01a01a01ap-16); STEP(0x1.a01a01a01a01ap-13); STEP(0x1.6c16c16c16c17p-10);
    STEP(0x1.1111111111111p-7); STEP(0x1.5555555555555p-5); STEP(0x1.5555555555555p-3);
    STEP(0x1p-1); STEP(0x1p+0); STEP(0x1p+0);
#undef STEP
    const __m256i k = _mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(kd));
    const __m256d two_k = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(k, _mm256_set1_epi64x(1023)), 52));
    return _mm256_mul_pd(p, two_k);
}

/* st_expf of 8 floats. */
static inline __m256 expf8(__m256 x) {
    const __m256 xc = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.8f)), _mm256_set1_ps(-104.0f));
    const __m128 lo = _mm256_cvtpd_ps(expf_core(_mm256_cvtps_pd(_mm256_castps256_ps128(xc))));
    const __m128 hi = _mm256_cvtpd_ps(expf_core(_mm256_cvtps_pd(_mm256_extractf128_ps(xc, 1))));
    __m256 e = _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
    e = _mm256_blendv_ps(e, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(0x1.62e42ep+6f), _CMP_GT_OQ));
    e = _mm256_blendv_ps(e, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(-104.0f), _CMP_LT_OQ));
    return _mm256_blendv_ps(e, _mm256_add_ps(x, x), _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

void st_swiglu_row_avx2(float *g, const float *u, int64_t len, const float *c, float limit) {
    const __m256 lim = _mm256_set1_ps(limit), nlim = _mm256_set1_ps(-limit), one = _mm256_set1_ps(1.0f);
    const __m256 cv = _mm256_set1_ps(c ? *c : 1.0f), sign = _mm256_set1_ps(-0.0f);
    int64_t k = 0;
    for (; k + 8 <= len; k += 8) {
        __m256 a = _mm256_loadu_ps(g + k), b = _mm256_loadu_ps(u + k);
        if (limit > 0) { /* min/max return their second operand when either is NaN: a NaN stays NaN */
            a = _mm256_min_ps(lim, a);
            b = _mm256_max_ps(nlim, _mm256_min_ps(lim, b));
        }
        const __m256 e = expf8(_mm256_xor_ps(a, sign));
        __m256 h = _mm256_mul_ps(_mm256_div_ps(a, _mm256_add_ps(one, e)), b);
        if (c) h = _mm256_mul_ps(h, cv);
        _mm256_storeu_ps(g + k, h);
    }
    if (k < len) st_swiglu_row_generic(g + k, u + k, len - k, c, limit);
}
