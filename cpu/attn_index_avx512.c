/* Indexer scores over packed e2m1 keys, AVX-512 VNNI (contract in cpu/attn.h,
 * same bits as st_index_scores_e2m1_generic). Lanes are 16 keys: each packed
 * key dword (8 nibbles) is brought to the 16 lanes (rows loaded whole and
 * transposed; gathers for a partial group), its low and high nibbles looked up
 * (vpshufb) to 2 * e2m1 + 12 as u8, and vpdpbusd multiplies them by one head's
 * 4 q codes broadcast (s8); the +12 offset is taken out by starting the
 * accumulator at -12 * sum(q codes). Keys go 32 at a time (two groups of 16)
 * and heads four at a time, so each broadcast q dword feeds two vpdpbusd and
 * each decoded key vector four (software prefetch of the rows ahead measured
 * no gain: the sequential rows suit the hardware prefetcher). Per lane the
 * float operations are the generic kernel's, in its order. */
#include <immintrin.h>

#include "cpu/attn.h"
#include "cpu/attn_internal.h"

enum { MAX_NB = 16 };       /* d <= 512: the decoded keys of 32 rows stay on the stack */

/* 128-bit lane L = the 16 bytes at src of key 4L + k (of 16 keys stride apart). */
static inline __m512i load4keys(const uint8_t *src, size_t stride, int k) {
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(src + (size_t)k * stride)));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(src + (size_t)(4 + k) * stride)), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(src + (size_t)(8 + k) * stride)), 2);
    return _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(src + (size_t)(12 + k) * stride)), 3);
}

/* kb (nb, 8) = the u8 codes of 16 keys (mask m) at base, 4 elements a lane;
 * ks (nb) = their block scales. */
static inline void decode16(const uint8_t *base, size_t stride, int64_t d, int64_t nb, __mmask16 m, __m512i offs,
                            __m512i *kb, __m512 *ks) {
    const __m512i lut = _mm512_broadcast_i32x4(_mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
    const __m512i nib = _mm512_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; b++) {
        __m512i x0, x1, x2, x3; /* xj lane l: packed dword j of the block of key l */
        if (m == 0xffff) { /* 16 rows of 16 bytes loaded whole and transposed (fewer uops than gathers) */
            const __m512i z0 = load4keys(base + b * 16, stride, 0), z1 = load4keys(base + b * 16, stride, 1);
            const __m512i z2 = load4keys(base + b * 16, stride, 2), z3 = load4keys(base + b * 16, stride, 3);
            const __m512i t0 = _mm512_unpacklo_epi32(z0, z1), t1 = _mm512_unpackhi_epi32(z0, z1);
            const __m512i t2 = _mm512_unpacklo_epi32(z2, z3), t3 = _mm512_unpackhi_epi32(z2, z3);
            x0 = _mm512_unpacklo_epi64(t0, t2);
            x1 = _mm512_unpackhi_epi64(t0, t2);
            x2 = _mm512_unpacklo_epi64(t1, t3);
            x3 = _mm512_unpackhi_epi64(t1, t3);
        } else {
            const __m512i z = _mm512_setzero_si512();
            x0 = _mm512_mask_i32gather_epi32(z, m, offs, base + b * 16, 1);
            x1 = _mm512_mask_i32gather_epi32(z, m, offs, base + b * 16 + 4, 1);
            x2 = _mm512_mask_i32gather_epi32(z, m, offs, base + b * 16 + 8, 1);
            x3 = _mm512_mask_i32gather_epi32(z, m, offs, base + b * 16 + 12, 1);
        }
        __m512i *k = kb + b * 8;
        k[0] = _mm512_shuffle_epi8(lut, _mm512_and_si512(x0, nib));
        k[1] = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi32(x0, 4), nib));
        k[2] = _mm512_shuffle_epi8(lut, _mm512_and_si512(x1, nib));
        k[3] = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi32(x1, 4), nib));
        k[4] = _mm512_shuffle_epi8(lut, _mm512_and_si512(x2, nib));
        k[5] = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi32(x2, 4), nib));
        k[6] = _mm512_shuffle_epi8(lut, _mm512_and_si512(x3, nib));
        k[7] = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi32(x3, 4), nib));
        /* the scale byte is the top byte of the dword ending at it (d >= 32: inside the row) */
        const __m512i sc = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, offs, base + d / 2 + b - 3, 1);
        ks[b] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_srli_epi32(sc, 24), 23));
    }
}

static inline __m512 block_term(__m512i idot, float qscale, __m512 kscale) {
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(idot), _mm512_set1_ps(qscale)), kscale);
}

/* score += relu(s) * w, the generic kernel's operations (max returns the 0 for NaN and both zeros). */
static inline __m512 add_head(__m512 acc, __m512 s, float w) {
    return _mm512_add_ps(acc, _mm512_mul_ps(_mm512_max_ps(s, _mm512_setzero_ps()), _mm512_set1_ps(w)));
}

/* Heads h..h+3 over two groups of 16 keys (a: kb, ks; b: kb + nb * 8, ks + nb): *acc_a, *acc_b += their terms. */
static inline void heads4(const st_index_q *q, const float *w, int64_t h, const __m512i *kb, const __m512 *ks,
                          __m512 *acc_a, __m512 *acc_b) {
    const int64_t nb = q->nb;
    const __m512i *kb2 = kb + nb * 8;
    const __m512 *ks2 = ks + nb;
    __m512 sa[4] = {0}, sb[4] = {0}; /* set at block 0 */
    for (int64_t b = 0; b < nb; b++) {
        const int64_t i0 = h * nb + b;
        __m512i a[4], c[4];
        _Pragma("GCC unroll 8") for (int i = 0; i < 4; i++) a[i] = c[i] = _mm512_set1_epi32(-q->corr[i0 + i * nb]);
        _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++) {
            const __m512i ka = kb[b * 8 + j], kc = kb2[b * 8 + j];
            _Pragma("GCC unroll 8") for (int i = 0; i < 4; i++) {
                const __m512i qv = _mm512_set1_epi32(q->perm[(i0 + i * nb) * 8 + j]);
                a[i] = _mm512_dpbusd_epi32(a[i], ka, qv);
                c[i] = _mm512_dpbusd_epi32(c[i], kc, qv);
            }
        }
        _Pragma("GCC unroll 8") for (int i = 0; i < 4; i++) {
            const float qs = q->scale[i0 + i * nb];
            const __m512 ta = block_term(a[i], qs, ks[b]), tc = block_term(c[i], qs, ks2[b]);
            sa[i] = b ? _mm512_add_ps(sa[i], ta) : ta;
            sb[i] = b ? _mm512_add_ps(sb[i], tc) : tc;
        }
    }
    _Pragma("GCC unroll 8") for (int i = 0; i < 4; i++) {
        *acc_a = add_head(*acc_a, sa[i], w[h + i]);
        *acc_b = add_head(*acc_b, sb[i], w[h + i]);
    }
}

/* Head h over one group of 16 keys. */
static inline __m512 head1(const st_index_q *q, const float *w, int64_t h, const __m512i *kb, const __m512 *ks,
                           __m512 acc) {
    const int64_t nb = q->nb;
    __m512 sh = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const int64_t i0 = h * nb + b;
        __m512i a = _mm512_set1_epi32(-q->corr[i0]);
        _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++) a = _mm512_dpbusd_epi32(a, kb[b * 8 + j], _mm512_set1_epi32(q->perm[i0 * 8 + j]));
        const __m512 t = block_term(a, q->scale[i0], ks[b]);
        sh = b ? _mm512_add_ps(sh, t) : t;
    }
    return add_head(acc, sh, w[h]);
}

static inline __mmask16 lanes(int64_t left) {
    return left >= 16 ? (__mmask16)0xffff : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u);
}

void st_index_scores_e2m1_avx512(const st_index_q *q, const float *w, const uint8_t *keys, size_t stride,
                                 int64_t n, float *out) {
    const int64_t H = q->H, d = q->d, nb = q->nb;
    if (nb > MAX_NB || stride * 32 + (size_t)d > ((size_t)1 << 30)) {
        st_index_scores_e2m1_generic(q, w, keys, stride, n, out);
        return;
    }
    const __m512i offs = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32((int)stride));
    __m512i kb[2 * MAX_NB * 8]; /* (2, nb, 8): two groups of 16 keys' u8 codes, 4 elements a lane */
    __m512 ks[2 * MAX_NB];      /* (2, nb): their block scales */
    for (int64_t s0 = 0; s0 < n; s0 += 32) {
        const __mmask16 ma = lanes(n - s0), mb = lanes(n - s0 - 16);
        const uint8_t *base = keys + (size_t)s0 * stride;
        decode16(base, stride, d, nb, ma, offs, kb, ks);
        if (mb) decode16(base + 16 * stride, stride, d, nb, mb, offs, kb + nb * 8, ks + nb);
        __m512 acc_a = _mm512_setzero_ps(), acc_b = _mm512_setzero_ps();
        int64_t h = 0;
        if (mb) {
            for (; h + 4 <= H; h += 4) heads4(q, w, h, kb, ks, &acc_a, &acc_b);
            for (; h < H; h++) {
                acc_a = head1(q, w, h, kb, ks, acc_a);
                acc_b = head1(q, w, h, kb + nb * 8, ks + nb, acc_b);
            }
        } else {
            for (; h < H; h++) acc_a = head1(q, w, h, kb, ks, acc_a);
        }
        _mm512_mask_storeu_ps(out + s0, ma, acc_a);
        if (mb) _mm512_mask_storeu_ps(out + s0 + 16, mb, acc_b);
    }
}
