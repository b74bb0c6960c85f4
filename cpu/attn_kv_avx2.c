/* Packed KV rows decoded to F32 in memory, AVX2 (st_kv_rows_cols; layout and
 * contract in cpu/attn.h). The attention kernels decode packed rows in
 * registers instead (kv8 in cpu/attn_avx2.c, by the same operations). */
#include <immintrin.h>
#include <string.h>

#include "cpu/attn_internal.h"

/* Packed KV rows (layout in cpu/attn.h), 8 columns at a time, the same
 * operations as the generic decoder: the e4m3 magnitude bits moved into an
 * f32's exponent/mantissa are the value times 2^-120 (subnormal codes become
 * f32 subnormals, exactly), times 2^120, times the block's ue8m0 scale;
 * 0x7f/0xff are NaN. bf16: the top half of an f32. Partial vectors go through
 * a small copy (no read or write past the row). c0 a multiple of 8, so every
 * 8 e4m3 columns sit in one 64-block. */
static inline void store8(float *x, __m256 v, int64_t m) {
    if (m >= 8) { _mm256_storeu_ps(x, v); return; }
    float tmp[8];
    _mm256_storeu_ps(tmp, v);
    memcpy(x, tmp, (size_t)m * sizeof(float));
}

void st_kv_rows_cols_avx2(const uint8_t *src, size_t stride, int64_t rows, int64_t d, int64_t rope, int64_t c0,
                          int64_t c1, float *x) {
    const int64_t nope = d - rope, w = c1 - c0, e1 = c1 < nope ? c1 : nope, r0 = c0 > nope ? c0 : nope;
    const __m256i m7f = _mm256_set1_epi32(0x7f), m80 = _mm256_set1_epi32(0x80);
    const __m256 two120 = _mm256_set1_ps(0x1p120f), nan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000));
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *e = src + (size_t)r * stride;
        float *xr = x + r * w;
        for (int64_t k = c0; k < e1; k += 8) {
            const int64_t m = e1 - k;
            uint64_t b8 = 0;
            memcpy(&b8, e + k, (size_t)(m < 8 ? m : 8));
            const __m256i c = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)b8));
            const __m256i mag = _mm256_and_si256(c, m7f);
            const __m256i bits = _mm256_or_si256(_mm256_slli_epi32(mag, 20), _mm256_slli_epi32(_mm256_and_si256(c, m80), 24));
            const __m256 scale = _mm256_castsi256_ps(_mm256_set1_epi32((int)((uint32_t)e[nope + k / 64] << 23)));
            __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_castsi256_ps(bits), two120), scale);
            v = _mm256_blendv_ps(v, nan, _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, m7f)));
            store8(xr + (k - c0), v, m);
        }
        const uint8_t *rp = e + nope + (nope + 63) / 64;
        for (int64_t k = r0; k < c1; k += 8) {
            const int64_t m = c1 - k;
            __m128i h = _mm_setzero_si128();
            memcpy(&h, rp + 2 * (k - nope), (size_t)(m < 8 ? m : 8) * 2);
            const __m256i bits = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
            store8(xr + (k - c0), _mm256_castsi256_ps(bits), m);
        }
    }
}
