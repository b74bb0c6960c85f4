/* Attention kernels, AVX-512 (see attn_internal.h). Heads go four at a time so
 * each candidate row is read once for four queries: scores take 4 heads x 4
 * rows per step (16 accumulators, reduced four at a time), weighted sums
 * 4 heads x 64 columns (16 accumulators). Indexer scores put the heads in the lanes (q transposed to
 * (d, H)), so one token's 64 head scores are 4 vectors and ReLU and the head
 * weights apply lane-wise before a single reduction. Widths that are not a
 * multiple of 16 take the generic code. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "cpu/attn_internal.h"

static inline float dot16(const float *a, const float *b, int64_t d) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= d; k += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 16), _mm512_loadu_ps(b + k + 16), s1);
    }
    if (k < d) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), s0);
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

/* The sums of four vectors as one __m128 {sum v0, sum v1, sum v2, sum v3}. */
static inline __m128 reduce4(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
    const __m256 a0 = _mm256_add_ps(_mm512_castps512_ps256(v0), _mm512_extractf32x8_ps(v0, 1));
    const __m256 a1 = _mm256_add_ps(_mm512_castps512_ps256(v1), _mm512_extractf32x8_ps(v1, 1));
    const __m256 a2 = _mm256_add_ps(_mm512_castps512_ps256(v2), _mm512_extractf32x8_ps(v2, 1));
    const __m256 a3 = _mm256_add_ps(_mm512_castps512_ps256(v3), _mm512_extractf32x8_ps(v3, 1));
    const __m128 b0 = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
    const __m128 b1 = _mm_add_ps(_mm256_castps256_ps128(a1), _mm256_extractf128_ps(a1, 1));
    const __m128 b2 = _mm_add_ps(_mm256_castps256_ps128(a2), _mm256_extractf128_ps(a2, 1));
    const __m128 b3 = _mm_add_ps(_mm256_castps256_ps128(a3), _mm256_extractf128_ps(a3, 1));
    return _mm_hadd_ps(_mm_hadd_ps(b0, b1), _mm_hadd_ps(b2, b3));
}

/* Scores of 4 heads against 4 rows: 16 accumulators, 8 loads per 16 FMAs. */
void st_attn_scores_avx512(const float *q, int64_t nh, const float *const *rows, int64_t n, int64_t d, float scale,
                           float *s) {
    if (d % 16) { st_attn_scores_generic(q, nh, rows, n, d, scale, s); return; }
    const __m128 vscale = _mm_set1_ps(scale);
    int64_t h = 0;
    for (; h + 4 <= nh; h += 4) {
        const float *q0 = q + h * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
        float *s0 = s + h * n, *s1 = s0 + n, *s2 = s1 + n, *s3 = s2 + n;
        int64_t c = 0;
        for (; c + 4 <= n; c += 4) {
            const float *r0 = rows[c], *r1 = rows[c + 1], *r2 = rows[c + 2], *r3 = rows[c + 3];
            __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00,
                   a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
            for (int64_t k = 0; k < d; k += 16) {
                const __m512 x0 = _mm512_loadu_ps(r0 + k), x1 = _mm512_loadu_ps(r1 + k), x2 = _mm512_loadu_ps(r2 + k),
                             x3 = _mm512_loadu_ps(r3 + k);
                __m512 w = _mm512_loadu_ps(q0 + k);
                a00 = _mm512_fmadd_ps(w, x0, a00);
                a01 = _mm512_fmadd_ps(w, x1, a01);
                a02 = _mm512_fmadd_ps(w, x2, a02);
                a03 = _mm512_fmadd_ps(w, x3, a03);
                w = _mm512_loadu_ps(q1 + k);
                a10 = _mm512_fmadd_ps(w, x0, a10);
                a11 = _mm512_fmadd_ps(w, x1, a11);
                a12 = _mm512_fmadd_ps(w, x2, a12);
                a13 = _mm512_fmadd_ps(w, x3, a13);
                w = _mm512_loadu_ps(q2 + k);
                a20 = _mm512_fmadd_ps(w, x0, a20);
                a21 = _mm512_fmadd_ps(w, x1, a21);
                a22 = _mm512_fmadd_ps(w, x2, a22);
                a23 = _mm512_fmadd_ps(w, x3, a23);
                w = _mm512_loadu_ps(q3 + k);
                a30 = _mm512_fmadd_ps(w, x0, a30);
                a31 = _mm512_fmadd_ps(w, x1, a31);
                a32 = _mm512_fmadd_ps(w, x2, a32);
                a33 = _mm512_fmadd_ps(w, x3, a33);
            }
            _mm_storeu_ps(s0 + c, _mm_mul_ps(reduce4(a00, a01, a02, a03), vscale));
            _mm_storeu_ps(s1 + c, _mm_mul_ps(reduce4(a10, a11, a12, a13), vscale));
            _mm_storeu_ps(s2 + c, _mm_mul_ps(reduce4(a20, a21, a22, a23), vscale));
            _mm_storeu_ps(s3 + c, _mm_mul_ps(reduce4(a30, a31, a32, a33), vscale));
        }
        for (; c < n; c++) {
            s0[c] = dot16(q0, rows[c], d) * scale;
            s1[c] = dot16(q1, rows[c], d) * scale;
            s2[c] = dot16(q2, rows[c], d) * scale;
            s3[c] = dot16(q3, rows[c], d) * scale;
        }
    }
    for (; h < nh; h++)
        for (int64_t c = 0; c < n; c++) s[h * n + c] = dot16(q + h * d, rows[c], d) * scale;
}

/* exp(x) for x <= 0 (scores minus their max): x = n ln2 + r, |r| <= ln2/2,
 * e^r by a degree-6 Taylor polynomial (relative error < 2e-7), times 2^n by
 * scalef, which underflows gracefully to 0 for very negative x. */
static inline __m512 exp_nonpos(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

void st_attn_softmax_avx512(float *s, int64_t n, float sink) {
    __m512 vm = _mm512_set1_ps(sink);
    int64_t c = 0;
    for (; c + 16 <= n; c += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(s + c));
    float mx = _mm512_reduce_max_ps(vm);
    for (; c < n; c++) mx = s[c] > mx ? s[c] : mx;
    const __m512 m = _mm512_set1_ps(mx);
    __m512 den = _mm512_setzero_ps();
    for (c = 0; c + 16 <= n; c += 16) {
        const __m512 e = exp_nonpos(_mm512_sub_ps(_mm512_loadu_ps(s + c), m));
        _mm512_storeu_ps(s + c, e);
        den = _mm512_add_ps(den, e);
    }
    if (c < n) {
        const __mmask16 k = (__mmask16)((1u << (n - c)) - 1u);
        const __m512 e = exp_nonpos(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + c), m));
        _mm512_mask_storeu_ps(s + c, k, e);
        den = _mm512_add_ps(den, _mm512_maskz_mov_ps(k, e));
    }
    const float total = _mm512_reduce_add_ps(den) + expf(sink - mx);
    const __m512 inv = _mm512_set1_ps(1.0f / total);
    for (c = 0; c + 16 <= n; c += 16) _mm512_storeu_ps(s + c, _mm512_mul_ps(_mm512_loadu_ps(s + c), inv));
    if (c < n) {
        const __mmask16 k = (__mmask16)((1u << (n - c)) - 1u);
        _mm512_mask_storeu_ps(s + c, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + c), inv));
    }
}

/* The accumulator of o[k..k+16): 0, or o's value when accumulating. */
static inline __m512 acc_init(int acc, const float *o) { return acc ? _mm512_loadu_ps(o) : _mm512_setzero_ps(); }

void st_attn_wsum_avx512(const float *p, int64_t ldp, int64_t nh, const float *const *rows, int64_t n, int64_t d,
                         int acc, float *o) {
    if (d % 16) { st_attn_wsum_generic(p, ldp, nh, rows, n, d, acc, o); return; }
    int64_t h = 0;
    for (; h + 4 <= nh; h += 4) {
        const float *p0 = p + h * ldp, *p1 = p0 + ldp, *p2 = p1 + ldp, *p3 = p2 + ldp;
        float *o0 = o + h * d, *o1 = o0 + d, *o2 = o1 + d, *o3 = o2 + d;
        int64_t k = 0;
        for (; k + 64 <= d; k += 64) {
            /* explicit accumulators: arrays of vectors may live in memory at -O2 */
            __m512 a00 = acc_init(acc, o0 + k), a01 = acc_init(acc, o0 + k + 16), a02 = acc_init(acc, o0 + k + 32),
                   a03 = acc_init(acc, o0 + k + 48), a10 = acc_init(acc, o1 + k), a11 = acc_init(acc, o1 + k + 16),
                   a12 = acc_init(acc, o1 + k + 32), a13 = acc_init(acc, o1 + k + 48), a20 = acc_init(acc, o2 + k),
                   a21 = acc_init(acc, o2 + k + 16), a22 = acc_init(acc, o2 + k + 32), a23 = acc_init(acc, o2 + k + 48),
                   a30 = acc_init(acc, o3 + k), a31 = acc_init(acc, o3 + k + 16), a32 = acc_init(acc, o3 + k + 32),
                   a33 = acc_init(acc, o3 + k + 48);
            for (int64_t c = 0; c < n; c++) {
                const float *v = rows[c] + k;
                const __m512 x0 = _mm512_loadu_ps(v), x1 = _mm512_loadu_ps(v + 16), x2 = _mm512_loadu_ps(v + 32),
                             x3 = _mm512_loadu_ps(v + 48);
                __m512 b = _mm512_set1_ps(p0[c]);
                a00 = _mm512_fmadd_ps(b, x0, a00);
                a01 = _mm512_fmadd_ps(b, x1, a01);
                a02 = _mm512_fmadd_ps(b, x2, a02);
                a03 = _mm512_fmadd_ps(b, x3, a03);
                b = _mm512_set1_ps(p1[c]);
                a10 = _mm512_fmadd_ps(b, x0, a10);
                a11 = _mm512_fmadd_ps(b, x1, a11);
                a12 = _mm512_fmadd_ps(b, x2, a12);
                a13 = _mm512_fmadd_ps(b, x3, a13);
                b = _mm512_set1_ps(p2[c]);
                a20 = _mm512_fmadd_ps(b, x0, a20);
                a21 = _mm512_fmadd_ps(b, x1, a21);
                a22 = _mm512_fmadd_ps(b, x2, a22);
                a23 = _mm512_fmadd_ps(b, x3, a23);
                b = _mm512_set1_ps(p3[c]);
                a30 = _mm512_fmadd_ps(b, x0, a30);
                a31 = _mm512_fmadd_ps(b, x1, a31);
                a32 = _mm512_fmadd_ps(b, x2, a32);
                a33 = _mm512_fmadd_ps(b, x3, a33);
            }
            _mm512_storeu_ps(o0 + k, a00);
            _mm512_storeu_ps(o0 + k + 16, a01);
            _mm512_storeu_ps(o0 + k + 32, a02);
            _mm512_storeu_ps(o0 + k + 48, a03);
            _mm512_storeu_ps(o1 + k, a10);
            _mm512_storeu_ps(o1 + k + 16, a11);
            _mm512_storeu_ps(o1 + k + 32, a12);
            _mm512_storeu_ps(o1 + k + 48, a13);
            _mm512_storeu_ps(o2 + k, a20);
            _mm512_storeu_ps(o2 + k + 16, a21);
            _mm512_storeu_ps(o2 + k + 32, a22);
            _mm512_storeu_ps(o2 + k + 48, a23);
            _mm512_storeu_ps(o3 + k, a30);
            _mm512_storeu_ps(o3 + k + 16, a31);
            _mm512_storeu_ps(o3 + k + 32, a32);
            _mm512_storeu_ps(o3 + k + 48, a33);
        }
        for (; k < d; k += 16) {
            __m512 a0 = acc_init(acc, o0 + k), a1 = acc_init(acc, o1 + k), a2 = acc_init(acc, o2 + k),
                   a3 = acc_init(acc, o3 + k);
            for (int64_t c = 0; c < n; c++) {
                const __m512 x = _mm512_loadu_ps(rows[c] + k);
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(p0[c]), x, a0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(p1[c]), x, a1);
                a2 = _mm512_fmadd_ps(_mm512_set1_ps(p2[c]), x, a2);
                a3 = _mm512_fmadd_ps(_mm512_set1_ps(p3[c]), x, a3);
            }
            _mm512_storeu_ps(o0 + k, a0);
            _mm512_storeu_ps(o1 + k, a1);
            _mm512_storeu_ps(o2 + k, a2);
            _mm512_storeu_ps(o3 + k, a3);
        }
    }
    for (; h < nh; h++) {
        const float *ph = p + h * ldp;
        for (int64_t k = 0; k < d; k += 16) {
            __m512 a0 = acc_init(acc, o + h * d + k);
            for (int64_t c = 0; c < n; c++) a0 = _mm512_fmadd_ps(_mm512_set1_ps(ph[c]), _mm512_loadu_ps(rows[c] + k), a0);
            _mm512_storeu_ps(o + h * d + k, a0);
        }
    }
}

/* H == 64 heads in 4 vectors; q transposed once per call. */
/* The sums of 16 vectors: lane i = sum of v[i]. Every v[i] goes through the
 * same tree of adds whatever its position, so a key's score does not depend
 * on where it sits in a call. */
static inline __m512 reduce16(const __m512 *v) {
    __m512 a[8], b[4];
    for (int i = 0; i < 8; i++)
        a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        b[i] = _mm512_add_ps(_mm512_shuffle_ps(a[2 * i], a[2 * i + 1], 0x44), _mm512_shuffle_ps(a[2 * i], a[2 * i + 1], 0xEE));
    /* b[i]: per 128-bit lane L, {v[4i] .. v[4i+3]} partial sums over L */
    const __m512 c0 = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], 0x88), _mm512_shuffle_f32x4(b[0], b[1], 0xDD));
    const __m512 c1 = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], 0x88), _mm512_shuffle_f32x4(b[2], b[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(c0, c1, 0x88), _mm512_shuffle_f32x4(c0, c1, 0xDD));
}

/* Few heads (H divides 16, d a multiple of 16): 16/H keys per step, each
 * (key, head) dot product a 16-lane vector, the 16 reduced at once. */
static inline __attribute__((always_inline)) void index_scores_few_heads(const float *q, const float *w,
                                                                        const float *k, int64_t H, int64_t d,
                                                                        int64_t n, float *out) {
    const int64_t KS = 16 / H; /* keys per step */
    const __m512 zero = _mm512_setzero_ps();
    _Alignas(64) float lanes[16];
    for (int64_t s = 0; s < n; s += KS) {
        __m512 v[16];
        for (int64_t j = 0; j < KS; j++) {
            const float *kj = k + (s + j < n ? s + j : s) * d;
            for (int64_t h = 0; h < H; h++) {
                const float *qh = q + h * d;
                __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(qh), _mm512_loadu_ps(kj));
                for (int64_t c = 16; c < d; c += 16)
                    acc = _mm512_fmadd_ps(_mm512_loadu_ps(qh + c), _mm512_loadu_ps(kj + c), acc);
                v[j * H + h] = acc;
            }
        }
        _mm512_store_ps(lanes, _mm512_max_ps(reduce16(v), zero));
        for (int64_t j = 0; j < KS && s + j < n; j++) {
            float acc = 0;
            for (int64_t h = 0; h < H; h++) acc += lanes[j * H + h] * w[h];
            out[s + j] = acc;
        }
    }
}

void st_index_scores_avx512(const float *q, const float *w, const float *k, int64_t H, int64_t d, int64_t n, float *out) {
    enum { NH = 64, MAXD = 256 };
    if (H <= 16 && 16 % H == 0 && d % 16 == 0 && d > 0) {
        /* constant shapes unroll and keep the 16 vectors in registers */
        if (H == 4 && d == 32) index_scores_few_heads(q, w, k, 4, 32, n, out);
        else if (H == 8 && d == 128) index_scores_few_heads(q, w, k, 8, 128, n, out);
        else if (H == 4 && d == 64) index_scores_few_heads(q, w, k, 4, 64, n, out);
        else if (H == 8 && d == 64) index_scores_few_heads(q, w, k, 8, 64, n, out);
        else if (H == 16 && d == 128) index_scores_few_heads(q, w, k, 16, 128, n, out);
        else index_scores_few_heads(q, w, k, H, d, n, out);
        return;
    }
    if (H != NH || d > MAXD) {
        if (d % 16 == 0)
            for (int64_t s = 0; s < n; s++) {
                float acc = 0;
                for (int64_t h = 0; h < H; h++) {
                    float v = dot16(q + h * d, k + s * d, d);
                    if (v > 0) acc += v * w[h];
                }
                out[s] = acc;
            }
        else st_index_scores_generic(q, w, k, H, d, n, out);
        return;
    }
    _Alignas(64) float qt[MAXD * NH]; /* (d, H) */
    for (int64_t h = 0; h < NH; h++)
        for (int64_t c = 0; c < d; c++) qt[c * NH + h] = q[h * d + c];
    const __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16), w2 = _mm512_loadu_ps(w + 32),
                 w3 = _mm512_loadu_ps(w + 48), zero = _mm512_setzero_ps();
    int64_t s = 0;
    for (; s + 2 <= n; s += 2) {
        const float *k0 = k + s * d, *k1 = k0 + d;
        __m512 a0 = zero, a1 = zero, a2 = zero, a3 = zero, b0 = zero, b1 = zero, b2 = zero, b3 = zero;
        for (int64_t c = 0; c < d; c++) {
            const float *qc = qt + c * NH;
            const __m512 q0 = _mm512_load_ps(qc), q1 = _mm512_load_ps(qc + 16), q2 = _mm512_load_ps(qc + 32),
                         q3 = _mm512_load_ps(qc + 48);
            const __m512 x = _mm512_set1_ps(k0[c]), y = _mm512_set1_ps(k1[c]);
            a0 = _mm512_fmadd_ps(q0, x, a0);
            a1 = _mm512_fmadd_ps(q1, x, a1);
            a2 = _mm512_fmadd_ps(q2, x, a2);
            a3 = _mm512_fmadd_ps(q3, x, a3);
            b0 = _mm512_fmadd_ps(q0, y, b0);
            b1 = _mm512_fmadd_ps(q1, y, b1);
            b2 = _mm512_fmadd_ps(q2, y, b2);
            b3 = _mm512_fmadd_ps(q3, y, b3);
        }
        __m512 ta = _mm512_mul_ps(_mm512_max_ps(a0, zero), w0), tb = _mm512_mul_ps(_mm512_max_ps(b0, zero), w0);
        ta = _mm512_fmadd_ps(_mm512_max_ps(a1, zero), w1, ta);
        tb = _mm512_fmadd_ps(_mm512_max_ps(b1, zero), w1, tb);
        ta = _mm512_fmadd_ps(_mm512_max_ps(a2, zero), w2, ta);
        tb = _mm512_fmadd_ps(_mm512_max_ps(b2, zero), w2, tb);
        ta = _mm512_fmadd_ps(_mm512_max_ps(a3, zero), w3, ta);
        tb = _mm512_fmadd_ps(_mm512_max_ps(b3, zero), w3, tb);
        out[s] = _mm512_reduce_add_ps(ta);
        out[s + 1] = _mm512_reduce_add_ps(tb);
    }
    for (; s < n; s++) {
        const float *k0 = k + s * d;
        __m512 a0 = zero, a1 = zero, a2 = zero, a3 = zero;
        for (int64_t c = 0; c < d; c++) {
            const float *qc = qt + c * NH;
            const __m512 x = _mm512_set1_ps(k0[c]);
            a0 = _mm512_fmadd_ps(_mm512_load_ps(qc), x, a0);
            a1 = _mm512_fmadd_ps(_mm512_load_ps(qc + 16), x, a1);
            a2 = _mm512_fmadd_ps(_mm512_load_ps(qc + 32), x, a2);
            a3 = _mm512_fmadd_ps(_mm512_load_ps(qc + 48), x, a3);
        }
        __m512 t = _mm512_mul_ps(_mm512_max_ps(a0, zero), w0);
        t = _mm512_fmadd_ps(_mm512_max_ps(a1, zero), w1, t);
        t = _mm512_fmadd_ps(_mm512_max_ps(a2, zero), w2, t);
        t = _mm512_fmadd_ps(_mm512_max_ps(a3, zero), w3, t);
        out[s] = _mm512_reduce_add_ps(t);
    }
}

/* Compact KV rows (layouts in cpu/attn.h). e2m1: the 16 values times the
 * block's scale sit in one register and a permute looks 16 nibbles up at once;
 * the even (low) and odd (high) nibbles are interleaved back in order by
 * two-source permutes. e4m3: the magnitude bits moved into an f32's
 * exponent/mantissa give the value times 2^-120 (subnormal codes become f32
 * subnormals, exactly); codes 0x7f/0xff are NaN. bf16: the top half of an f32.
 * Partial vectors go through a small copy (no read past the row) and a masked store. */
static inline __m128i load16_bytes(const uint8_t *src, int64_t m) {
    uint8_t tail[16] = {0};
    if (m < 16) src = memcpy(tail, src, (size_t)m);
    return _mm_loadu_si128((const __m128i *)src);
}

static inline __mmask16 first_mask(int64_t m) { return (__mmask16)(m < 16 ? (1u << m) - 1 : 0xffffu); }

static inline void e2m1_row(const uint8_t *codes, const uint8_t *scales, int64_t n, float *x) {
    const __m512 lut = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f, -1.5f,
                                      -2.0f, -3.0f, -4.0f, -6.0f);
    const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const __m512i nib = _mm512_set1_epi32(15);
    for (int64_t b = 0; b < n / 32; b++) {
        const __m512 sl = _mm512_mul_ps(lut, _mm512_castsi512_ps(_mm512_set1_epi32((int)((uint32_t)scales[b] << 23))));
        const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + b * 16)));
        const __m512 even = _mm512_permutexvar_ps(_mm512_and_si512(bytes, nib), sl);
        const __m512 odd = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), sl);
        _mm512_storeu_ps(x + b * 32, _mm512_permutex2var_ps(even, lo_idx, odd));
        _mm512_storeu_ps(x + b * 32 + 16, _mm512_permutex2var_ps(even, hi_idx, odd));
    }
}

static inline void e4m3_row(const uint8_t *codes, const uint8_t *scales, int64_t n, float *x) {
    const __m512i m7f = _mm512_set1_epi32(0x7f), m80 = _mm512_set1_epi32(0x80);
    const __m512 two120 = _mm512_set1_ps(0x1p120f), nan = _mm512_set1_ps(NAN);
    for (int64_t b0 = 0; b0 < n; b0 += 64) {
        const __m512 scale = _mm512_castsi512_ps(_mm512_set1_epi32((int)((uint32_t)scales[b0 / 64] << 23)));
        const int64_t len = n - b0 < 64 ? n - b0 : 64;
        for (int64_t k = 0; k < len; k += 16) {
            const int64_t m = len - k;
            const __m512i c = _mm512_cvtepu8_epi32(load16_bytes(codes + b0 + k, m));
            const __m512i mag = _mm512_and_si512(c, m7f);
            const __m512i bits = _mm512_or_si512(_mm512_slli_epi32(mag, 20), _mm512_slli_epi32(_mm512_and_si512(c, m80), 24));
            __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_castsi512_ps(bits), two120), scale);
            v = _mm512_mask_mov_ps(v, _mm512_cmpeq_epi32_mask(mag, m7f), nan);
            _mm512_mask_storeu_ps(x + b0 + k, first_mask(m), v);
        }
    }
}

static inline void bf16_row(const uint8_t *src, int64_t n, float *x) {
    for (int64_t k = 0; k < n; k += 16) {
        const int64_t m = n - k;
        __m256i h;
        if (m >= 16) {
            h = _mm256_loadu_si256((const __m256i *)(src + 2 * k));
        } else {
            uint16_t tail[16] = {0};
            memcpy(tail, src + 2 * k, (size_t)m * 2);
            h = _mm256_loadu_si256((const __m256i *)tail);
        }
        const __m512i bits = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
        _mm512_mask_storeu_ps(x + k, first_mask(m), _mm512_castsi512_ps(bits));
    }
}

void st_e2m1_rows_avx512(const uint8_t *src, size_t stride, int64_t rows, int64_t d, float *x) {
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *e = src + (size_t)r * stride;
        e2m1_row(e, e + d / 2, d, x + r * d);
    }
}

void st_kv_rows_cols_avx512(const uint8_t *src, size_t stride, int64_t rows, int64_t d, int64_t rope, int64_t c0,
                            int64_t c1, float *x) {
    const int64_t nope = d - rope, w = c1 - c0, e1 = c1 < nope ? c1 : nope, r0 = c0 > nope ? c0 : nope;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *e = src + (size_t)r * stride;
        /* e4m3 columns [c0, e1) in 16s from c0 (a multiple of 16: inside one 64-block each) */
        const __m512i m7f = _mm512_set1_epi32(0x7f), m80 = _mm512_set1_epi32(0x80);
        const __m512 two120 = _mm512_set1_ps(0x1p120f), nan = _mm512_set1_ps(NAN);
        for (int64_t k = c0; k < e1; k += 16) {
            const int64_t m = e1 - k;
            const __m512 scale = _mm512_castsi512_ps(_mm512_set1_epi32((int)((uint32_t)e[nope + k / 64] << 23)));
            const __m512i c = _mm512_cvtepu8_epi32(load16_bytes(e + k, m));
            const __m512i mag = _mm512_and_si512(c, m7f);
            const __m512i bits = _mm512_or_si512(_mm512_slli_epi32(mag, 20), _mm512_slli_epi32(_mm512_and_si512(c, m80), 24));
            __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_castsi512_ps(bits), two120), scale);
            v = _mm512_mask_mov_ps(v, _mm512_cmpeq_epi32_mask(mag, m7f), nan);
            _mm512_mask_storeu_ps(x + r * w + (k - c0), first_mask(m), v);
        }
        if (c1 > r0) bf16_row(e + nope + (nope + 63) / 64 + 2 * (r0 - nope), c1 - r0, x + r * w + (r0 - c0));
    }
}

void st_kv_rows_avx512(const uint8_t *src, size_t stride, int64_t rows, int64_t d, int64_t rope, float *x) {
    const int64_t nope = d - rope;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *e = src + (size_t)r * stride;
        e4m3_row(e, e + nope, nope, x + r * d);
        bf16_row(e + nope + (nope + 63) / 64, rope, x + r * d + nope);
    }
}
