/* Attention over packed KV rows (st_kv_rows layout: e4m3 codes, a ue8m0 scale
 * per 64, bf16 rope tail), AVX-512, with the rows decoded in registers: each
 * 16 columns are decoded to the same floats as st_kv_rows_avx512 gives (by
 * fewer operations, see kv16) and fed straight to the FMAs of st_attn_scores_avx512 /
 * st_attn_wsum_avx512, in their order (4 heads x 4 rows with the same
 * reductions; 4 heads x 64 or 16 columns), so the results are bit-identical
 * to decode-then-F32 (tested) without writing the decoded rows to a tile and
 * reading them back. Needs d and rope multiples of 16 (every 16 columns all
 * e4m3 in one 64-block, or all bf16); cpu/attn_kv.c checks. */
#include <immintrin.h>
#include <math.h>

#include "cpu/attn_internal.h"

/* Columns [k, k+16) of a packed row e (nope = d - rope e4m3 codes, then
 * (nope + 63) / 64 scale bytes, then the bf16 tail). Reads only the row.
 * The same floats as st_kv_rows_avx512 by fewer operations: the codes
 * sign-extended and shifted put sign and magnitude in place at once; the NaN
 * codes are a byte compare whose mask the last multiply takes; and for scale
 * bytes s <= 134 (and 0: scale 0, 255: infinity) 2^120 * 2^(s-127) is exact,
 * so one multiply rounds the exact product exactly as two do (the first,
 * by 2^120, is exact). */
static inline __attribute__((always_inline)) __m512 kv16(const uint8_t *e, int64_t k, int64_t nope) {
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

/* dot16 of attn_avx512.c with b a packed row. */
static inline float dot16_kv(const float *a, const uint8_t *e, int64_t d, int64_t nope) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= d; k += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), kv16(e, k, nope), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 16), kv16(e, k + 16, nope), s1);
    }
    if (k < d) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), kv16(e, k, nope), s0);
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

/* reduce4 of attn_avx512.c */
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

void st_attn_scores_kv_avx512(const float *q, int64_t nh, const uint8_t *const *rows, int64_t n, int64_t d,
                              int64_t rope, float scale, float *s, int64_t lds) {
    const int64_t nope = d - rope;
    const __m128 vscale = _mm_set1_ps(scale);
    int64_t h = 0;
    for (; h + 4 <= nh; h += 4) {
        const float *q0 = q + h * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
        float *s0 = s + h * lds, *s1 = s0 + lds, *s2 = s1 + lds, *s3 = s2 + lds;
        int64_t c = 0;
        for (; c + 4 <= n; c += 4) {
            const uint8_t *r0 = rows[c], *r1 = rows[c + 1], *r2 = rows[c + 2], *r3 = rows[c + 3];
            __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00,
                   a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
            int64_t k = 0;
            for (; k < nope; k += 16) { /* e4m3 columns; the same k order as the F32 kernel */
                const __m512 x0 = kv16(r0, k, nope), x1 = kv16(r1, k, nope), x2 = kv16(r2, k, nope),
                             x3 = kv16(r3, k, nope);
                FMA_4X4(k);
            }
            for (; k < d; k += 16) { /* bf16 columns */
                const __m512 x0 = kv16(r0, k, nope), x1 = kv16(r1, k, nope), x2 = kv16(r2, k, nope),
                             x3 = kv16(r3, k, nope);
                FMA_4X4(k);
            }
            _mm_storeu_ps(s0 + c, _mm_mul_ps(reduce4(a00, a01, a02, a03), vscale));
            _mm_storeu_ps(s1 + c, _mm_mul_ps(reduce4(a10, a11, a12, a13), vscale));
            _mm_storeu_ps(s2 + c, _mm_mul_ps(reduce4(a20, a21, a22, a23), vscale));
            _mm_storeu_ps(s3 + c, _mm_mul_ps(reduce4(a30, a31, a32, a33), vscale));
        }
        for (; c < n; c++) {
            s0[c] = dot16_kv(q0, rows[c], d, nope) * scale;
            s1[c] = dot16_kv(q1, rows[c], d, nope) * scale;
            s2[c] = dot16_kv(q2, rows[c], d, nope) * scale;
            s3[c] = dot16_kv(q3, rows[c], d, nope) * scale;
        }
    }
    for (; h < nh; h++)
        for (int64_t c = 0; c < n; c++) s[h * lds + c] = dot16_kv(q + h * d, rows[c], d, nope) * scale;
}

static inline __m512 acc_init(int acc, const float *o) { return acc ? _mm512_loadu_ps(o) : _mm512_setzero_ps(); }

/* st_attn_wsum_avx512 over columns [col0, col0 + width) of the packed rows:
 * o (nh, width); col0 and width multiples of 16. */
void st_attn_wsum_kv_avx512(const float *p, int64_t ldp, int64_t nh, const uint8_t *const *rows, int64_t n,
                            int64_t d, int64_t rope, int64_t col0, int64_t width, int acc, float *o) {
    const int64_t nope = d - rope, w = width;
    int64_t h = 0;
    for (; h + 4 <= nh; h += 4) {
        const float *p0 = p + h * ldp, *p1 = p0 + ldp, *p2 = p1 + ldp, *p3 = p2 + ldp;
        float *o0 = o + h * w, *o1 = o0 + w, *o2 = o1 + w, *o3 = o2 + w;
        int64_t k = 0;
        for (; k + 64 <= w; k += 64) {
            __m512 a00 = acc_init(acc, o0 + k), a01 = acc_init(acc, o0 + k + 16), a02 = acc_init(acc, o0 + k + 32),
                   a03 = acc_init(acc, o0 + k + 48), a10 = acc_init(acc, o1 + k), a11 = acc_init(acc, o1 + k + 16),
                   a12 = acc_init(acc, o1 + k + 32), a13 = acc_init(acc, o1 + k + 48), a20 = acc_init(acc, o2 + k),
                   a21 = acc_init(acc, o2 + k + 16), a22 = acc_init(acc, o2 + k + 32), a23 = acc_init(acc, o2 + k + 48),
                   a30 = acc_init(acc, o3 + k), a31 = acc_init(acc, o3 + k + 16), a32 = acc_init(acc, o3 + k + 32),
                   a33 = acc_init(acc, o3 + k + 48);
            const int64_t kc = col0 + k;
            for (int64_t c = 0; c < n; c++) {
                const uint8_t *e = rows[c];
                const __m512 x0 = kv16(e, kc, nope), x1 = kv16(e, kc + 16, nope), x2 = kv16(e, kc + 32, nope),
                             x3 = kv16(e, kc + 48, nope);
                __m512 b = _mm512_set1_ps(p0[c]);
                a00 = _mm512_fmadd_ps(b, x0, a00); a01 = _mm512_fmadd_ps(b, x1, a01);
                a02 = _mm512_fmadd_ps(b, x2, a02); a03 = _mm512_fmadd_ps(b, x3, a03);
                b = _mm512_set1_ps(p1[c]);
                a10 = _mm512_fmadd_ps(b, x0, a10); a11 = _mm512_fmadd_ps(b, x1, a11);
                a12 = _mm512_fmadd_ps(b, x2, a12); a13 = _mm512_fmadd_ps(b, x3, a13);
                b = _mm512_set1_ps(p2[c]);
                a20 = _mm512_fmadd_ps(b, x0, a20); a21 = _mm512_fmadd_ps(b, x1, a21);
                a22 = _mm512_fmadd_ps(b, x2, a22); a23 = _mm512_fmadd_ps(b, x3, a23);
                b = _mm512_set1_ps(p3[c]);
                a30 = _mm512_fmadd_ps(b, x0, a30); a31 = _mm512_fmadd_ps(b, x1, a31);
                a32 = _mm512_fmadd_ps(b, x2, a32); a33 = _mm512_fmadd_ps(b, x3, a33);
            }
            _mm512_storeu_ps(o0 + k, a00); _mm512_storeu_ps(o0 + k + 16, a01);
            _mm512_storeu_ps(o0 + k + 32, a02); _mm512_storeu_ps(o0 + k + 48, a03);
            _mm512_storeu_ps(o1 + k, a10); _mm512_storeu_ps(o1 + k + 16, a11);
            _mm512_storeu_ps(o1 + k + 32, a12); _mm512_storeu_ps(o1 + k + 48, a13);
            _mm512_storeu_ps(o2 + k, a20); _mm512_storeu_ps(o2 + k + 16, a21);
            _mm512_storeu_ps(o2 + k + 32, a22); _mm512_storeu_ps(o2 + k + 48, a23);
            _mm512_storeu_ps(o3 + k, a30); _mm512_storeu_ps(o3 + k + 16, a31);
            _mm512_storeu_ps(o3 + k + 32, a32); _mm512_storeu_ps(o3 + k + 48, a33);
        }
        for (; k < w; k += 16) {
            __m512 a0 = acc_init(acc, o0 + k), a1 = acc_init(acc, o1 + k), a2 = acc_init(acc, o2 + k),
                   a3 = acc_init(acc, o3 + k);
            for (int64_t c = 0; c < n; c++) {
                const __m512 x = kv16(rows[c], col0 + k, nope);
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
        for (int64_t k = 0; k < w; k += 16) {
            __m512 a0 = acc_init(acc, o + h * w + k);
            for (int64_t c = 0; c < n; c++) a0 = _mm512_fmadd_ps(_mm512_set1_ps(ph[c]), kv16(rows[c], col0 + k, nope), a0);
            _mm512_storeu_ps(o + h * w + k, a0);
        }
    }
}
