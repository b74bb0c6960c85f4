/* Small ops, AVX2 variants (see cpu/ops_internal.h). Same rounding as the
 * _generic twins for RMSNorm's tail, RoPE, Hadamard and top-k; softmax uses a
 * polynomial exp (< 2 ulp). Tails shorter than a vector go through the generic code. */
#include <immintrin.h>
#include <math.h>

#include "cpu/ops_internal.h"

static inline double hsum_pd(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

double st_sumsq_avx2(const float *x, int64_t n) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        a0 = _mm256_fmadd_pd(lo, lo, a0); /* a float squared is exact in double */
        a1 = _mm256_fmadd_pd(hi, hi, a1);
    }
    return hsum_pd(_mm256_add_pd(a0, a1)) + st_sumsq_generic(x + i, n - i);
}

void st_scale_mul_avx2(const float *x, float r, const float *w, int64_t n, float *y) {
    __m256 vr = _mm256_set1_ps(r);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vr);
        if (w) v = _mm256_mul_ps(v, _mm256_loadu_ps(w + i));
        _mm256_storeu_ps(y + i, v);
    }
    st_scale_mul_generic(x + i, r, w ? w + i : NULL, n - i, y + i);
}

void st_scale_mul_bf16w_avx2(const float *x, float r, const uint16_t *w, int64_t n, float *y) {
    __m256 vr = _mm256_set1_ps(r);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i wi = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + i)));
        __m256 wf = _mm256_castsi256_ps(_mm256_slli_epi32(wi, 16));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vr), wf));
    }
    st_scale_mul_bf16w_generic(x + i, r, w + i, n - i, y + i);
}

/* e^x for x <= 0 (Cephes expf polynomial, < 2 ulp); below ln(FLT_MIN) gives 0. */
static inline __m256 exp_nonpos(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.33654f);
    __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
    x = _mm256_max_ps(x, lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^n for n in [-126, 0]: build the exponent field directly */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(keep, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

void st_softmax_avx2(float *x, int64_t n) {
    if (n < 8) { st_softmax_generic(x, n); return; }
    __m256 vm = _mm256_set1_ps(-INFINITY), unord = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        unord = _mm256_or_ps(unord, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        vm = _mm256_max_ps(vm, v);
    }
    float lanes[8], mx = -INFINITY;
    _mm256_storeu_ps(lanes, vm);
    for (int j = 0; j < 8; j++) mx = lanes[j] > mx ? lanes[j] : mx;
    bool nan = _mm256_movemask_ps(unord) != 0;
    for (; i < n; i++) { mx = x[i] > mx ? x[i] : mx; nan |= x[i] != x[i]; }
    if (nan || mx == -INFINITY) { st_softmax_generic(x, n); return; } /* all NaN / all zero */
    __m256 vmx = _mm256_set1_ps(mx);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = exp_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmx));
        _mm256_storeu_ps(x + i, e);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double s = hsum_pd(_mm256_add_pd(s0, s1));
    int64_t tail = i;
    if (tail < n) { /* the last < 8 through a padded vector, so every value uses the same exp */
        float buf[8];
        for (int j = 0; j < 8; j++) buf[j] = tail + j < n ? x[tail + j] : mx;
        _mm256_storeu_ps(buf, exp_nonpos(_mm256_sub_ps(_mm256_loadu_ps(buf), vmx)));
        for (int64_t j = 0; tail + j < n; j++) { x[tail + j] = buf[j]; s += buf[j]; }
    }
    float sf = (float)s;
    __m256 vs = _mm256_set1_ps(sf);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_div_ps(_mm256_loadu_ps(x + i), vs));
    for (; i < n; i++) x[i] /= sf;
}

void st_rope_rotate_avx2(float *x, int64_t n_heads, int64_t head_stride, int64_t len, const float *cos2,
                         const float *sin2) {
    int64_t vec = len / 8 * 8;
    for (int64_t h = 0; h < n_heads; h++) {
        float *r = x + h * head_stride;
        for (int64_t d = 0; d < vec; d += 8) {
            __m256 v = _mm256_loadu_ps(r + d);
            __m256 sw = _mm256_permute_ps(v, 0xB1); /* (b, a) of each pair */
            __m256 o = _mm256_add_ps(_mm256_mul_ps(v, _mm256_loadu_ps(cos2 + d)),
                                     _mm256_mul_ps(sw, _mm256_loadu_ps(sin2 + d)));
            _mm256_storeu_ps(r + d, o);
        }
    }
    if (vec < len) st_rope_rotate_generic(x + vec, n_heads, head_stride, len - vec, cos2 + vec, sin2 + vec);
}

/* One butterfly stage of stride h < 8 inside a register: lanes with bit h clear
 * get a + b, the others a - b (b negated by its sign bit: same bits as generic). */
static inline __m256 stage_in_reg(__m256 v, __m256 sw, __m256 sign_upper) {
    return _mm256_add_ps(sw, _mm256_xor_ps(v, sign_upper));
}

void st_hadamard_avx2(float *x, int64_t n_vec, int64_t n) {
    if (n < 8) { st_hadamard_generic(x, n_vec, n); return; }
    const int S = (int)0x80000000u;
    const __m256 s1 = _mm256_castsi256_ps(_mm256_setr_epi32(0, S, 0, S, 0, S, 0, S));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, S, S, 0, 0, S, S));
    const __m256 s4 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, 0, 0, S, S, S, S));
    const __m256 scale = _mm256_set1_ps((float)(1.0 / sqrt((double)n)));
    for (int64_t vi = 0; vi < n_vec; vi++) {
        float *p = x + vi * n;
        for (int64_t i = 0; i < n; i += 8) {
            __m256 v = _mm256_loadu_ps(p + i);
            v = stage_in_reg(v, _mm256_permute_ps(v, 0xB1), s1);
            v = stage_in_reg(v, _mm256_permute_ps(v, 0x4E), s2);
            v = stage_in_reg(v, _mm256_permute2f128_ps(v, v, 0x01), s4);
            _mm256_storeu_ps(p + i, v);
        }
        for (int64_t h = 8; h < n; h *= 2)
            for (int64_t i = 0; i < n; i += 2 * h)
                for (int64_t j = i; j < i + h; j += 8) {
                    __m256 a = _mm256_loadu_ps(p + j), b = _mm256_loadu_ps(p + j + h);
                    _mm256_storeu_ps(p + j, _mm256_add_ps(a, b));
                    _mm256_storeu_ps(p + j + h, _mm256_sub_ps(a, b));
                }
        for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(p + i, _mm256_mul_ps(_mm256_loadu_ps(p + i), scale));
    }
}

/* Filter 8 candidates at a time against the heap's worst (see the AVX-512 twin). */
void st_topk_scan_avx2(const float *x, int64_t n, int64_t base, int64_t k, st_topk_item *h) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        float t = h[0].v;
        unsigned m = t != t ? 0xffu : (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(t), _CMP_GE_OQ));
        while (m) {
            int j = __builtin_ctz(m);
            m &= m - 1;
            st_topk_offer(h, k, x[i + j], (int32_t)(base + i + j));
        }
    }
    for (; i < n; i++) st_topk_offer(h, k, x[i], (int32_t)(base + i));
}
