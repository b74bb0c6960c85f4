/* Small ops, AVX-512 variants (see cpu/ops_internal.h). Each keeps the rounding
 * of its _generic twin where that is cheap (RMSNorm tail, RoPE, Hadamard and
 * top-k give the same bits); softmax differs by its polynomial exp (< 2 ulp). */
#include <immintrin.h>
#include <math.h>

#include "cpu/ops_internal.h"

static inline __mmask16 tail_mask(int64_t rem) { return (__mmask16)((1u << rem) - 1); }

double st_sumsq_avx512(const float *x, int64_t n) {
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    int64_t i = 0;
    for (; i < n; i += 16) {
        __m512 v = i + 16 <= n ? _mm512_loadu_ps(x + i) : _mm512_maskz_loadu_ps(tail_mask(n - i), x + i);
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v)), hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
        a0 = _mm512_fmadd_pd(lo, lo, a0); /* a float squared is exact in double */
        a1 = _mm512_fmadd_pd(hi, hi, a1);
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
}

void st_scale_mul_avx512(const float *x, float r, const float *w, int64_t n, float *y) {
    __m512 vr = _mm512_set1_ps(r);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = i + 16 <= n ? 0xffff : tail_mask(n - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vr);
        if (w) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + i));
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

void st_scale_mul_bf16w_avx512(const float *x, float r, const uint16_t *w, int64_t n, float *y) {
    __m512 vr = _mm512_set1_ps(r);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = i + 16 <= n ? 0xffff : tail_mask(n - i);
        __m512i wi = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w + i));
        __m512 wf = _mm512_castsi512_ps(_mm512_slli_epi32(wi, 16));
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vr), wf));
    }
}

/* e^x for x <= 0 (Cephes expf polynomial, < 2 ulp); below ln(FLT_MIN) gives 0. */
static inline __m512 exp_nonpos(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.33654f);
    __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_max_ps(x, lo);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_mov_ps((__mmask16)~under, _mm512_scalef_ps(p, n));
}

void st_softmax_avx512(float *x, int64_t n) {
    __m512 vm = _mm512_set1_ps(-INFINITY);
    __mmask16 nan = 0;
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = i + 16 <= n ? 0xffff : tail_mask(n - i);
        __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, x + i);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        vm = _mm512_max_ps(vm, v);
    }
    float mx = _mm512_reduce_max_ps(vm);
    if (nan || mx == -INFINITY) { st_softmax_generic(x, n); return; } /* all NaN / all zero */
    __m512 vmx = _mm512_set1_ps(mx);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = i + 16 <= n ? 0xffff : tail_mask(n - i);
        __m512 e = _mm512_maskz_mov_ps(m, exp_nonpos(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmx)));
        _mm512_mask_storeu_ps(x + i, m, e);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    __m512 vs = _mm512_set1_ps((float)_mm512_reduce_add_pd(_mm512_add_pd(s0, s1)));
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = i + 16 <= n ? 0xffff : tail_mask(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_div_ps(_mm512_maskz_loadu_ps(m, x + i), vs));
    }
}

void st_rope_rotate_avx512(float *x, int64_t n_heads, int64_t head_stride, int64_t len, const float *cos2,
                           const float *sin2) {
    for (int64_t h = 0; h < n_heads; h++) {
        float *r = x + h * head_stride;
        for (int64_t d = 0; d < len; d += 16) {
            __mmask16 m = d + 16 <= len ? 0xffff : tail_mask(len - d);
            __m512 v = _mm512_maskz_loadu_ps(m, r + d);
            __m512 sw = _mm512_permute_ps(v, 0xB1); /* (b, a) of each pair */
            __m512 o = _mm512_add_ps(_mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, cos2 + d)),
                                     _mm512_mul_ps(sw, _mm512_maskz_loadu_ps(m, sin2 + d)));
            _mm512_mask_storeu_ps(r + d, m, o);
        }
    }
}

/* One butterfly stage of stride h < 16 inside a register: lanes with bit h clear
 * get a + b, the others a - b (b negated by its sign bit, so the bits match the
 * generic a - b). */
static inline __m512 stage_in_reg(__m512 v, __m512 sw, __mmask16 upper) {
    const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32((int)0x80000000u));
    return _mm512_add_ps(sw, _mm512_mask_xor_ps(v, upper, v, sign));
}

void st_hadamard_avx512(float *x, int64_t n_vec, int64_t n) {
    if (n < 16) { st_hadamard_generic(x, n_vec, n); return; }
    const __m512 scale = _mm512_set1_ps((float)(1.0 / sqrt((double)n)));
    for (int64_t vi = 0; vi < n_vec; vi++) {
        float *p = x + vi * n;
        for (int64_t i = 0; i < n; i += 16) {
            __m512 v = _mm512_loadu_ps(p + i);
            v = stage_in_reg(v, _mm512_permute_ps(v, 0xB1), 0xAAAA);
            v = stage_in_reg(v, _mm512_permute_ps(v, 0x4E), 0xCCCC);
            v = stage_in_reg(v, _mm512_shuffle_f32x4(v, v, 0xB1), 0xF0F0);
            v = stage_in_reg(v, _mm512_shuffle_f32x4(v, v, 0x4E), 0xFF00);
            _mm512_storeu_ps(p + i, v);
        }
        for (int64_t h = 16; h < n; h *= 2)
            for (int64_t i = 0; i < n; i += 2 * h)
                for (int64_t j = i; j < i + h; j += 16) {
                    __m512 a = _mm512_loadu_ps(p + j), b = _mm512_loadu_ps(p + j + h);
                    _mm512_storeu_ps(p + j, _mm512_add_ps(a, b));
                    _mm512_storeu_ps(p + j + h, _mm512_sub_ps(a, b));
                }
        for (int64_t i = 0; i < n; i += 16) _mm512_storeu_ps(p + i, _mm512_mul_ps(_mm512_loadu_ps(p + i), scale));
    }
}

/* Filter 16 candidates at a time against the heap's worst: only lanes that could
 * beat it (not below a number root, since an equal value may have a lower index;
 * every lane when the root is NaN) go through the exact offer, in index order. */
void st_topk_scan_avx512(const float *x, int64_t n, int64_t base, int64_t k, st_topk_item *h) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        float t = h[0].v;
        __mmask16 m = t != t ? (__mmask16)0xffff : _mm512_cmp_ps_mask(v, _mm512_set1_ps(t), _CMP_GE_OQ);
        while (m) {
            int j = __builtin_ctz(m);
            m &= m - 1;
            st_topk_offer(h, k, x[i + j], (int32_t)(base + i + j));
        }
    }
    for (; i < n; i++) st_topk_offer(h, k, x[i], (int32_t)(base + i));
}
