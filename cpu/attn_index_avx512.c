/* Indexer scores over packed e2m1 keys, AVX-512 VNNI (contract in cpu/attn.h,
 * same bits as st_index_scores_e2m1_generic). Lanes are 16 keys: each packed
 * key dword (8 nibbles) is brought to the 16 lanes (rows loaded whole and
 * transposed; gathers for a last partial group), its low and high nibbles
 * looked up (vpshufb) to 2 * e2m1 + 12 as u8, and vpdpbusd multiplies them by
 * one head's 4 q codes broadcast (s8); the +12 offset is taken out by starting
 * the accumulator at -12 * sum(q codes). Heads go four at a time so each
 * decoded key vector is loaded once for four of them. */
#include <immintrin.h>

#include "cpu/attn.h"
#include "cpu/attn_internal.h"

enum { MAX_NB = 16 }; /* d <= 512: the decoded keys of 16 rows stay on the stack */

/* 128-bit lane L = the 16 bytes at src of key 4L + k (of 16 keys stride apart). */
static inline __m512i load4keys(const uint8_t *src, size_t stride, int k) {
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(src + (size_t)k * stride)));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(src + (size_t)(4 + k) * stride)), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(src + (size_t)(8 + k) * stride)), 2);
    return _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(src + (size_t)(12 + k) * stride)), 3);
}

static inline __m512 block_term(__m512i idot, float qscale, __m512 kscale) {
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(idot), _mm512_set1_ps(qscale)), kscale);
}

void st_index_scores_e2m1_avx512(const st_index_q *q, const float *w, const uint8_t *keys, size_t stride,
                                 int64_t n, float *out) {
    const int64_t H = q->H, d = q->d, nb = q->nb;
    if (nb > MAX_NB || stride * 16 + (size_t)d > ((size_t)1 << 30)) {
        st_index_scores_e2m1_generic(q, w, keys, stride, n, out);
        return;
    }
    const __m512i lut = _mm512_broadcast_i32x4(_mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
    const __m512i nib = _mm512_set1_epi8(0x0f);
    const __m512i offs = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32((int)stride));
    const __m512 zero = _mm512_setzero_ps();
    __m512i kb[MAX_NB * 8]; /* (nb, 8): 16 keys' u8 codes, 4 elements a lane */
    __m512 ks[MAX_NB];      /* (nb): 16 keys' block scales */
    for (int64_t s0 = 0; s0 < n; s0 += 16) {
        const __mmask16 m = n - s0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - s0)) - 1u);
        const uint8_t *base = keys + (size_t)s0 * stride;
        for (int64_t b = 0; b < nb; b++) {
            __m512i x[4]; /* x[j] lane l: packed dword j of the block of key s0 + l */
            if (m == 0xffff) { /* 16 rows of 16 bytes loaded whole and transposed (fewer uops than gathers) */
                __m512i z[4];
                for (int k = 0; k < 4; k++) z[k] = load4keys(base + b * 16, stride, k);
                const __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]), t1 = _mm512_unpackhi_epi32(z[0], z[1]);
                const __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]), t3 = _mm512_unpackhi_epi32(z[2], z[3]);
                x[0] = _mm512_unpacklo_epi64(t0, t2);
                x[1] = _mm512_unpackhi_epi64(t0, t2);
                x[2] = _mm512_unpacklo_epi64(t1, t3);
                x[3] = _mm512_unpackhi_epi64(t1, t3);
            } else {
                for (int j = 0; j < 4; j++)
                    x[j] = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, offs, base + b * 16 + 4 * j, 1);
            }
            for (int j = 0; j < 4; j++) {
                kb[b * 8 + 2 * j] = _mm512_shuffle_epi8(lut, _mm512_and_si512(x[j], nib));
                kb[b * 8 + 2 * j + 1] = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi32(x[j], 4), nib));
            }
            /* the scale byte is the top byte of the dword ending at it (d >= 32: inside the row) */
            const __m512i sc = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, offs, base + d / 2 + b - 3, 1);
            ks[b] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_srli_epi32(sc, 24), 23));
        }
        __m512 acc = zero;
        int64_t h = 0;
        for (; h + 4 <= H; h += 4) {
            __m512 s[4];
            for (int64_t b = 0; b < nb; b++) {
                const int64_t i0 = (h * nb + b), i1 = i0 + nb, i2 = i1 + nb, i3 = i2 + nb;
                const int32_t *p0 = q->perm + i0 * 8, *p1 = q->perm + i1 * 8, *p2 = q->perm + i2 * 8,
                              *p3 = q->perm + i3 * 8;
                __m512i a0 = _mm512_set1_epi32(-q->corr[i0]), a1 = _mm512_set1_epi32(-q->corr[i1]),
                        a2 = _mm512_set1_epi32(-q->corr[i2]), a3 = _mm512_set1_epi32(-q->corr[i3]);
                for (int j = 0; j < 8; j++) {
                    const __m512i k = kb[b * 8 + j];
                    a0 = _mm512_dpbusd_epi32(a0, k, _mm512_set1_epi32(p0[j]));
                    a1 = _mm512_dpbusd_epi32(a1, k, _mm512_set1_epi32(p1[j]));
                    a2 = _mm512_dpbusd_epi32(a2, k, _mm512_set1_epi32(p2[j]));
                    a3 = _mm512_dpbusd_epi32(a3, k, _mm512_set1_epi32(p3[j]));
                }
                const __m512 t0 = block_term(a0, q->scale[i0], ks[b]), t1 = block_term(a1, q->scale[i1], ks[b]),
                             t2 = block_term(a2, q->scale[i2], ks[b]), t3 = block_term(a3, q->scale[i3], ks[b]);
                if (b == 0) { s[0] = t0; s[1] = t1; s[2] = t2; s[3] = t3; }
                else {
                    s[0] = _mm512_add_ps(s[0], t0);
                    s[1] = _mm512_add_ps(s[1], t1);
                    s[2] = _mm512_add_ps(s[2], t2);
                    s[3] = _mm512_add_ps(s[3], t3);
                }
            }
            for (int i = 0; i < 4; i++)
                acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_max_ps(s[i], zero), _mm512_set1_ps(w[h + i])));
        }
        for (; h < H; h++) {
            __m512 sh = zero;
            for (int64_t b = 0; b < nb; b++) {
                const int64_t i0 = h * nb + b;
                __m512i a0 = _mm512_set1_epi32(-q->corr[i0]);
                for (int j = 0; j < 8; j++) a0 = _mm512_dpbusd_epi32(a0, kb[b * 8 + j], _mm512_set1_epi32(q->perm[i0 * 8 + j]));
                const __m512 t = block_term(a0, q->scale[i0], ks[b]);
                sh = b ? _mm512_add_ps(sh, t) : t;
            }
            acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_max_ps(sh, zero), _mm512_set1_ps(w[h])));
        }
        _mm512_mask_storeu_ps(out + s0, m, acc);
    }
}
