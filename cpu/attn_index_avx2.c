/* Indexer scores over packed e2m1 keys, AVX2 (contract in cpu/attn.h, same
 * bits as st_index_scores_e2m1_generic): the AVX-512 kernel's scheme on 8 keys
 * (cpu/attn_index_avx512.c), with vpmaddubsw + vpmaddwd for the u8 x s8 dot
 * products of 4 (pairs of 2 * 12 * 127 cannot saturate 16 bits). */
#include <immintrin.h>

#include "cpu/attn.h"
#include "cpu/attn_internal.h"

enum { MAX_NB = 16 };

void st_index_scores_e2m1_avx2(const st_index_q *q, const float *w, const uint8_t *keys, size_t stride, int64_t n,
                               float *out) {
    const int64_t H = q->H, d = q->d, nb = q->nb;
    if (nb > MAX_NB || stride * 8 + (size_t)d > ((size_t)1 << 30)) {
        st_index_scores_e2m1_generic(q, w, keys, stride, n, out);
        return;
    }
    const __m256i lut = _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0, 12, 13, 14, 15, 16,
                                         18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
    const __m256i nib = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    const __m256i offs = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)stride));
    const __m256 zero = _mm256_setzero_ps();
    __m256i kb[MAX_NB * 8];
    __m256 ks[MAX_NB];
    float tail[8];
    for (int64_t s0 = 0; s0 < n; s0 += 8) {
        const int64_t cnt = n - s0 >= 8 ? 8 : n - s0;
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)cnt), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const uint8_t *base = keys + (size_t)s0 * stride;
        for (int64_t b = 0; b < nb; b++) {
            for (int j = 0; j < 4; j++) {
                const __m256i x = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), (const int *)(base + b * 16 + 4 * j),
                                                              offs, m, 1);
                kb[b * 8 + 2 * j] = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, nib));
                kb[b * 8 + 2 * j + 1] = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi32(x, 4), nib));
            }
            const __m256i sc = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), (const int *)(base + d / 2 + b - 3),
                                                           offs, m, 1);
            ks[b] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_srli_epi32(sc, 24), 23));
        }
        __m256 acc = zero;
        for (int64_t h = 0; h < H; h++) {
            __m256 sh = zero;
            for (int64_t b = 0; b < nb; b++) {
                const int64_t i0 = h * nb + b;
                __m256i a = _mm256_set1_epi32(-q->corr[i0]);
                _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++) {
                    const __m256i pr = _mm256_maddubs_epi16(kb[b * 8 + j], _mm256_set1_epi32(q->perm[i0 * 8 + j]));
                    a = _mm256_add_epi32(a, _mm256_madd_epi16(pr, ones));
                }
                const __m256 t = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a), _mm256_set1_ps(q->scale[i0])), ks[b]);
                sh = b ? _mm256_add_ps(sh, t) : t;
            }
            /* max(x, 0) returns the 0 for NaN and for both zeros, as the C's x > 0 ? x : 0 */
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_max_ps(sh, zero), _mm256_set1_ps(w[h])));
        }
        if (cnt == 8) _mm256_storeu_ps(out + s0, acc);
        else {
            _mm256_storeu_ps(tail, acc);
            for (int64_t i = 0; i < cnt; i++) out[s0 + i] = tail[i];
        }
    }
}
