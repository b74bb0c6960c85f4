/* AVX-512 SwiGLU rows (cpu/swiglu_internal.h): st_expf on 8 doubles at a time,
 * the same IEEE operations as cpu/expf.h in the same order (no FMA). */
#include <immintrin.h>
#include <math.h>

#include "cpu/swiglu_internal.h"

/* st_expf of 8 floats widened to double, before its final rounding; x must be
 * within [-104, 88.8] (the caller clamps, then blends the special cases). */
static inline __m512d expf_core(__m512d x) {
    const __m512d shifter = _mm512_set1_pd(0x1.8p52);
    const __m512d kd = _mm512_sub_pd(_mm512_add_pd(_mm512_mul_pd(x, _mm512_set1_pd(0x1.71547652b82fep+0)), shifter), shifter);
    const __m512d r = _mm512_sub_pd(_mm512_sub_pd(x, _mm512_mul_pd(kd, _mm512_set1_pd(0x1.62e42feep-1))),
                                    _mm512_mul_pd(kd, _mm512_set1_pd(0x1.a39ef35793c76p-33)));
#define STEP(c) p = _mm512_add_pd(_mm512_mul_pd(p, r), _mm512_set1_pd(c))
    __m512d p = _mm512_set1_pd(0x1.1eed8eff8d898p-29);
    STEP(0x1.ae64567f544e4p-26); STEP(0x1.27e4fb7789f5cp-22); STEP(0x1.71de3a556c734p-19);
    STEP(0x1.a01a01a01a01ap-16); STEP(0x1.a01a01a01a01ap-13); STEP(0x1.6c16c16c16c17p-10);
    STEP(0x1.1111111111111p-7); STEP(0x1.5555555555555p-5); STEP(0x1.5555555555555p-3);
    STEP(0x1p-1); STEP(0x1p+0); STEP(0x1p+0);
#undef STEP
    const __m512i k = _mm512_cvtepi32_epi64(_mm512_cvtpd_epi32(kd));
    const __m512d two_k = _mm512_castsi512_pd(_mm512_slli_epi64(_mm512_add_epi64(k, _mm512_set1_epi64(1023)), 52));
    return _mm512_mul_pd(p, two_k);
}

/* st_expf of 16 floats. */
static inline __m512 expf16(__m512 x) {
    const __m512 xc = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.8f)), _mm512_set1_ps(-104.0f));
    const __m256 lo = _mm512_cvtpd_ps(expf_core(_mm512_cvtps_pd(_mm512_castps512_ps256(xc))));
    const __m256 hi = _mm512_cvtpd_ps(expf_core(_mm512_cvtps_pd(_mm512_extractf32x8_ps(xc, 1))));
    __m512 e = _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
    e = _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(x, _mm512_set1_ps(0x1.62e42ep+6f), _CMP_GT_OQ), _mm512_set1_ps(INFINITY));
    e = _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(x, _mm512_set1_ps(-104.0f), _CMP_LT_OQ), _mm512_setzero_ps());
    return _mm512_mask_add_ps(e, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x, x);
}

void st_swiglu_row_avx512(float *g, const float *u, int64_t len, const float *c, float limit) {
    const __m512 lim = _mm512_set1_ps(limit), nlim = _mm512_set1_ps(-limit), one = _mm512_set1_ps(1.0f);
    const __m512 cv = _mm512_set1_ps(c ? *c : 1.0f);
    for (int64_t k = 0; k < len; k += 16) {
        const __mmask16 m = len - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (len - k)) - 1);
        __m512 a = _mm512_maskz_loadu_ps(m, g + k), b = _mm512_maskz_loadu_ps(m, u + k);
        if (limit > 0) { /* min/max return their second operand when either is NaN: a NaN stays NaN */
            a = _mm512_min_ps(lim, a);
            b = _mm512_max_ps(nlim, _mm512_min_ps(lim, b));
        }
        const __m512 e = expf16(_mm512_xor_ps(a, _mm512_set1_ps(-0.0f))); /* -a */
        __m512 h = _mm512_mul_ps(_mm512_div_ps(a, _mm512_add_ps(one, e)), b);
        if (c) h = _mm512_mul_ps(h, cv);
        _mm512_mask_storeu_ps(g + k, m, h);
    }
}
