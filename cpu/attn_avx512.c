/* Attention kernels, AVX-512 (see attn_internal.h): scores and weighted sums
 * over F32 rows or packed KV rows (one body each, instantiated with a row
 * loader), softmax with sink, indexer scores. The packed KV row decoders
 * (to F32 in memory) are in cpu/attn_kv_avx512.c.
 *
 * Scores take 4 heads x 4 rows per step (16 accumulators, reduced four at a
 * time); weighted sums up to 8 heads x 32 columns or 4 heads x 64 (16
 * accumulators) over 256 packed or 64 F32 rows at a time. A body reads a row's 16 columns
 * through row16(), a load for F32 rows and kv16() for packed ones, decoded in
 * registers to the floats st_kv_rows_avx512 gives; `packed` is a constant of
 * each instance, so the compiler specialises it (no call per row), and both
 * instances run the same FMAs in the same order: packed rows give the bits of
 * decoding every row first and running the F32 kernel (tested). Indexer
 * scores put the heads in the lanes (q transposed to (d, H)), so one token's
 * 64 head scores are 4 vectors and ReLU and the head weights apply lane-wise
 * before a single reduction. Widths that are not a multiple of 16 take the
 * generic code. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "cpu/attn_internal.h"

/* Columns [k, k+16) of a packed row e (nope = d - rope e4m3 codes, then
 * (nope + 63) / 64 scale bytes, then the bf16 tail; d, rope multiples of 16,
 * so the 16 columns are all e4m3 in one 64-block or all bf16). Reads only the
 * row. The same floats as st_kv_rows_avx512 by fewer operations: the codes
 * sign-extended and shifted put sign and magnitude in place at once; the NaN
 * codes are a byte compare whose mask the last multiply takes; and for scale
 * bytes s <= 134 (and 0: scale 0, 255: infinity) 2^120 * 2^(s-127) is exact,
 * so one multiply rounds the exact product exactly as two do (the first,
 * by 2^120, is exact). */
ST_ATTN_INLINE __m512 kv16(const uint8_t *e, int64_t k, int64_t nope) {
    if (k < nope) {
        const __m128i b = _mm_loadu_si128((const __m128i *)(e + k));
        const __mmask16 num = _mm_cmpneq_epi8_mask(_mm_or_si128(b, _mm_set1_epi8((char)0x80)), _mm_set1_epi8((char)0xff));
        const __m512 x = _mm512_castsi512_ps(
            _mm512_and_si512(_mm512_slli_epi32(_mm512_cvtepi8_epi32(b), 20), _mm512_set1_epi32((int)0x87f00000u)));
        const uint32_t sb = e[nope + k / 64];
        uint32_t factor; /* the bits of 2^120 * scale */
        if (sb - 1u < 134u) factor = (sb + 120u) << 23;
        else if (sb == 0) factor = 0;
        else if (sb == 255) factor = 0x7f800000u;
        else { /* 2^120 * scale would overflow where the value does not: two multiplies */
            const __m512 scale = _mm512_castsi512_ps(_mm512_set1_epi32((int)(sb << 23)));
            return _mm512_mask_mul_ps(_mm512_set1_ps(NAN), num, _mm512_mul_ps(x, _mm512_set1_ps(0x1p120f)), scale);
        }
        return _mm512_mask_mul_ps(_mm512_set1_ps(NAN), num, x, _mm512_castsi512_ps(_mm512_set1_epi32((int)factor)));
    }
    const uint8_t *rp = e + nope + (nope + 63) / 64 + 2 * (k - nope);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)rp)), 16));
}

/* The row loader of the bodies: columns [k, k+16) of row r, an F32 row
 * (nope unused) or a packed one. */
ST_ATTN_INLINE __m512 row16(const void *r, int64_t k, int64_t nope, const int packed) {
    return packed ? kv16((const uint8_t *)r, k, nope) : _mm512_loadu_ps((const float *)r + k);
}

/* a . row r: two accumulators over alternate 16 columns. */
ST_ATTN_INLINE float dot16(const float *a, const void *r, int64_t d, int64_t nope, const int packed) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= d; k += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), row16(r, k, nope, packed), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 16), row16(r, k + 16, nope, packed), s1);
    }
    if (k < d) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), row16(r, k, nope, packed), s0);
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

/* 16 FMAs of 4 query heads against 4 rows' columns x0..x3 at k. */
#define FMA_4X4(k)                                                                                                     \
    do {                                                                                                               \
        __m512 w = _mm512_loadu_ps(q0 + (k));                                                                          \
        a00 = _mm512_fmadd_ps(w, x0, a00); a01 = _mm512_fmadd_ps(w, x1, a01);                                          \
        a02 = _mm512_fmadd_ps(w, x2, a02); a03 = _mm512_fmadd_ps(w, x3, a03);                                          \
        w = _mm512_loadu_ps(q1 + (k));                                                                                 \
        a10 = _mm512_fmadd_ps(w, x0, a10); a11 = _mm512_fmadd_ps(w, x1, a11);                                          \
        a12 = _mm512_fmadd_ps(w, x2, a12); a13 = _mm512_fmadd_ps(w, x3, a13);                                          \
        w = _mm512_loadu_ps(q2 + (k));                                                                                 \
        a20 = _mm512_fmadd_ps(w, x0, a20); a21 = _mm512_fmadd_ps(w, x1, a21);                                          \
        a22 = _mm512_fmadd_ps(w, x2, a22); a23 = _mm512_fmadd_ps(w, x3, a23);                                          \
        w = _mm512_loadu_ps(q3 + (k));                                                                                 \
        a30 = _mm512_fmadd_ps(w, x0, a30); a31 = _mm512_fmadd_ps(w, x1, a31);                                          \
        a32 = _mm512_fmadd_ps(w, x2, a32); a33 = _mm512_fmadd_ps(w, x3, a33);                                          \
    } while (0)

/* s[h * lds + c] = scale * q_h . rows[c]: heads 4 at a time against rows 4 at
 * a time from the first (16 accumulators, 8 loads or decodes per 16 FMAs,
 * reduce4), the last n % 4 rows and the last nh % 4 heads by dot16. Columns
 * in order, [0, nope) then [nope, d) (for packed rows the e4m3 and the bf16
 * ones, each loop with one kind of decode; F32 rows pass nope = d). */
ST_ATTN_INLINE void scores_body(const float *q, int64_t nh, const void *const *rows, int64_t n, int64_t d, int64_t nope,
                           float scale, float *s, int64_t lds, const int packed) {
    const __m128 vscale = _mm_set1_ps(scale);
    int64_t h = 0;
    for (; h + 4 <= nh; h += 4) {
        const float *q0 = q + h * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
        float *s0 = s + h * lds, *s1 = s0 + lds, *s2 = s1 + lds, *s3 = s2 + lds;
        int64_t c = 0;
        for (; c + 4 <= n; c += 4) {
            const void *r0 = rows[c], *r1 = rows[c + 1], *r2 = rows[c + 2], *r3 = rows[c + 3];
            __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00,
                   a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
            int64_t k = 0;
            for (; k < nope; k += 16) {
                const __m512 x0 = row16(r0, k, nope, packed), x1 = row16(r1, k, nope, packed),
                             x2 = row16(r2, k, nope, packed), x3 = row16(r3, k, nope, packed);
                FMA_4X4(k);
            }
            for (; k < d; k += 16) {
                const __m512 x0 = row16(r0, k, nope, packed), x1 = row16(r1, k, nope, packed),
                             x2 = row16(r2, k, nope, packed), x3 = row16(r3, k, nope, packed);
                FMA_4X4(k);
            }
            _mm_storeu_ps(s0 + c, _mm_mul_ps(reduce4(a00, a01, a02, a03), vscale));
            _mm_storeu_ps(s1 + c, _mm_mul_ps(reduce4(a10, a11, a12, a13), vscale));
            _mm_storeu_ps(s2 + c, _mm_mul_ps(reduce4(a20, a21, a22, a23), vscale));
            _mm_storeu_ps(s3 + c, _mm_mul_ps(reduce4(a30, a31, a32, a33), vscale));
        }
        for (; c < n; c++) {
            s0[c] = dot16(q0, rows[c], d, nope, packed) * scale;
            s1[c] = dot16(q1, rows[c], d, nope, packed) * scale;
            s2[c] = dot16(q2, rows[c], d, nope, packed) * scale;
            s3[c] = dot16(q3, rows[c], d, nope, packed) * scale;
        }
    }
    for (; h < nh; h++)
        for (int64_t c = 0; c < n; c++) s[h * lds + c] = dot16(q + h * d, rows[c], d, nope, packed) * scale;
}

void st_attn_scores_avx512(const float *q, int64_t nh, const float *const *rows, int64_t n, int64_t d, float scale,
                           float *s) {
    if (d % 16) { st_attn_scores_generic(q, nh, rows, n, d, scale, s); return; }
    scores_body(q, nh, (const void *const *)rows, n, d, d, scale, s, n, 0);
}

void st_attn_scores_kv_avx512(const float *q, int64_t nh, const uint8_t *const *rows, int64_t n, int64_t d,
                              int64_t rope, float scale, float *s, int64_t lds) {
    scores_body(q, nh, (const void *const *)rows, n, d, d - rope, scale, s, lds, 1);
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

/* ---- weighted sums ----
 * o[h * w + j] (+)= sum_c p[h * ldp + c] * row_c[col0 + j]: heads x columns
 * in registers (up to 16 accumulators a<h><v>, WS_* in attn_internal.h), each
 * row's columns loaded or decoded once for every head of the block; rows,
 * heads and columns blocked by ST_ATTN_WSUM_DRIVER (attn_internal.h). */
#define WS_INIT(h, v) __m512 a##h##v = WS_ON(h, v) && from_o ? _mm512_loadu_ps(o + (h) * ldo + 16 * (v)) : zero;
#define WS_FMA(h, v) if (WS_ON(h, v)) a##h##v = _mm512_fmadd_ps(b, x##v, a##h##v);
#define WS_P(h) const float *p##h = p + ((h) < NH ? (h) : 0) * ldp; /* no multiply a row */
#define WS_HEAD(h) if ((h) < NH) { const __m512 b = _mm512_set1_ps(p##h[c]); WS_V(WS_FMA, h) }
#define WS_STORE(h, v) if (WS_ON(h, v)) _mm512_storeu_ps(o + (h) * ldo + 16 * (v), a##h##v);

/* NH heads x NV * 16 columns from row column kc, rows [c0, c1); o (NH, ldo). */
ST_ATTN_INLINE void wsum_block(const float *p, int64_t ldp, const void *const *rows, int64_t c0, int64_t c1,
                               int64_t kc, int64_t nope, int from_o, float *o, int64_t ldo, const int NH, const int NV,
                               const int packed) {
    const __m512 zero = _mm512_setzero_ps();
    WS_HV(WS_INIT)
    WS_H(WS_P)
    for (int64_t c = c0; c < c1; c++) {
        const void *r = rows[c];
        const __m512 x0 = row16(r, kc, nope, packed), x1 = NV > 1 ? row16(r, kc + 16, nope, packed) : zero,
                     x2 = NV > 2 ? row16(r, kc + 32, nope, packed) : zero,
                     x3 = NV > 3 ? row16(r, kc + 48, nope, packed) : zero;
        WS_H(WS_HEAD)
    }
    WS_HV(WS_STORE)
}

ST_ATTN_WSUM_DRIVER(16, 16)

void st_attn_wsum_avx512(const float *p, int64_t ldp, int64_t nh, const float *const *rows, int64_t n, int64_t d,
                         int acc, float *o) {
    if (d % 16) { st_attn_wsum_generic(p, ldp, nh, rows, n, d, acc, o); return; }
    wsum_body(p, ldp, nh, (const void *const *)rows, n, 0, d, d, acc, o, 4, 0);
}

/* st_attn_wsum_avx512 over columns [col0, col0 + width) of the packed rows:
 * o (nh, width); col0 and width multiples of 16. 8 heads a block: a row's
 * columns decoded once for 8 heads. */
void st_attn_wsum_kv_avx512(const float *p, int64_t ldp, int64_t nh, const uint8_t *const *rows, int64_t n,
                            int64_t d, int64_t rope, int64_t col0, int64_t width, int acc, float *o) {
    wsum_body(p, ldp, nh, (const void *const *)rows, n, col0, width, d - rope, acc, o, 8, 1);
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
                    float v = dot16(q + h * d, k + s * d, d, d, 0);
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
