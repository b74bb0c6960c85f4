/* Packed KV rows decoded to F32 in memory, AVX-512: the e4m3 + bf16 rows of
 * the official cache (st_kv_rows, st_kv_rows_cols) and the e2m1 rows of the
 * indexer keys (st_e2m1_rows); layouts and contract in cpu/attn.h. The
 * attention kernels decode packed rows in registers instead (kv16 in
 * cpu/attn_avx512.c, to the same floats). */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "cpu/attn_internal.h"

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
