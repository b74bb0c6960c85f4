/* Attention kernels (see attn.h): the softmax with sink is shared; scores,
 * weighted sums and indexer scores come from the variant st_cpu_isa() picks
 * (cpu/attn_generic.c, cpu/attn_avx2.c, cpu/attn_avx512.c). */
#include "cpu/attn.h"

#include <math.h>
#include <string.h>

#include "base/base.h"
#include "cpu/attn_internal.h"
#include "cpu/cpu.h"
#include "cpu/formats.h"

void st_attn_heads(const float *q, int64_t nh, const float *const *rows, int64_t n, int64_t d, float scale,
                   const float *sink, float *scratch, float *o) {
    if (nh <= 0) return;
    if (n <= 0) { memset(o, 0, (size_t)(nh * d) * sizeof(float)); return; }
    const st_isa isa = st_cpu_isa();
    if (isa == ST_ISA_AVX512) st_attn_scores_avx512(q, nh, rows, n, d, scale, scratch);
    else if (isa == ST_ISA_AVX2) st_attn_scores_avx2(q, nh, rows, n, d, scale, scratch);
    else st_attn_scores_generic(q, nh, rows, n, d, scale, scratch);
    for (int64_t h = 0; h < nh; h++) {
        if (isa == ST_ISA_AVX512) st_attn_softmax_avx512(scratch + h * n, n, sink[h]);
        else st_attn_softmax_generic(scratch + h * n, n, sink[h]);
    }
    if (isa == ST_ISA_AVX512) st_attn_wsum_avx512(scratch, n, nh, rows, n, d, 0, o);
    else if (isa == ST_ISA_AVX2) st_attn_wsum_avx2(scratch, n, nh, rows, n, d, 0, o);
    else st_attn_wsum_generic(scratch, n, nh, rows, n, d, 0, o);
}

void st_attn_scores(const float *q, int64_t nh, const float *const *rows, int64_t n, int64_t d, float scale, float *s) {
    if (nh <= 0 || n <= 0) return;
    const st_isa isa = st_cpu_isa();
    if (isa == ST_ISA_AVX512) st_attn_scores_avx512(q, nh, rows, n, d, scale, s);
    else if (isa == ST_ISA_AVX2) st_attn_scores_avx2(q, nh, rows, n, d, scale, s);
    else st_attn_scores_generic(q, nh, rows, n, d, scale, s);
}

void st_attn_softmax(float *s, int64_t n, float sink) {
    if (n <= 0) return;
    if (st_cpu_isa() == ST_ISA_AVX512) st_attn_softmax_avx512(s, n, sink);
    else st_attn_softmax_generic(s, n, sink);
}

void st_attn_wsum(const float *p, int64_t nh, const float *const *rows, int64_t n, int64_t d, float *o) {
    if (nh <= 0) return;
    if (n <= 0) { memset(o, 0, (size_t)(nh * d) * sizeof(float)); return; }
    const st_isa isa = st_cpu_isa();
    if (isa == ST_ISA_AVX512) st_attn_wsum_avx512(p, n, nh, rows, n, d, 0, o);
    else if (isa == ST_ISA_AVX2) st_attn_wsum_avx2(p, n, nh, rows, n, d, 0, o);
    else st_attn_wsum_generic(p, n, nh, rows, n, d, 0, o);
}

void st_attn_head(const float *q, const float *const *rows, int64_t n, int64_t d, float scale, float sink,
                  float *scratch, float *o) {
    st_attn_heads(q, 1, rows, n, d, scale, &sink, scratch, o);
}

void st_index_scores(const float *q, const float *w, const float *k, int64_t H, int64_t d, int64_t n, float *out) {
    if (n <= 0) return;
    switch (st_cpu_isa()) {
    case ST_ISA_AVX512: st_index_scores_avx512(q, w, k, H, d, n, out); break;
    case ST_ISA_AVX2: st_index_scores_avx2(q, w, k, H, d, n, out); break;
    default: st_index_scores_generic(q, w, k, H, d, n, out); break;
    }
}

/* e4m3 code -> f32 on the bits, so the loop vectorises: the 7 magnitude bits
 * shifted into an f32's exponent/mantissa are the value times 2^-120 (e4m3
 * subnormals become f32 subnormals, exactly); 0x7f/0xff are NaN. Equal to
 * st_e4m3_to_f32 for every code (tested). */
static inline float e4m3_bits_to_f32(uint8_t b) {
    const uint32_t mag = b & 0x7fu;
    const float v = st_f32_from_bits((mag << 20) | ((uint32_t)(b & 0x80u) << 24)) * 0x1p120f;
    return mag == 0x7fu ? NAN : v;
}

static void e4m3_row(const uint8_t *codes, const uint8_t *scales, int64_t n, float *x) {
    for (int64_t b0 = 0; b0 < n; b0 += 64) {
        const int64_t b1 = b0 + 64 < n ? b0 + 64 : n;
        const float scale = st_f32_from_bits((uint32_t)scales[b0 / 64] << 23);
        for (int64_t i = b0; i < b1; i++) x[i] = e4m3_bits_to_f32(codes[i]) * scale;
    }
}

static void e2m1_row(const uint8_t *codes, const uint8_t *scales, int64_t n, float *x) {
    for (int64_t b0 = 0; b0 < n; b0 += 32) { /* the 16 values times the block's scale (exact: a power of two), a lookup a nibble */
        const int64_t b1 = b0 + 32 < n ? b0 + 32 : n;
        const float scale = st_f32_from_bits((uint32_t)scales[b0 / 32] << 23);
        float lut[16];
        for (int c = 0; c < 16; c++) lut[c] = st_e2m1_to_f32((uint8_t)c) * scale;
        int64_t i = b0;
        for (; i + 1 < b1; i += 2) {
            const uint8_t byte = codes[i / 2];
            x[i] = lut[byte & 15];
            x[i + 1] = lut[byte >> 4];
        }
        if (i < b1) x[i] = lut[codes[i / 2] & 15];
    }
}

void st_e2m1_rows(const uint8_t *src, size_t stride, int64_t rows, int64_t d, float *x) {
    if (st_cpu_isa() == ST_ISA_AVX512 && d % 32 == 0) { st_e2m1_rows_avx512(src, stride, rows, d, x); return; }
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *e = src + (size_t)r * stride;
        e2m1_row(e, e + (d + 1) / 2, d, x + r * d);
    }
}

void st_kv_rows_cols(const uint8_t *src, size_t stride, int64_t rows, int64_t d, int64_t rope, int64_t c0, int64_t c1,
                     float *x) {
    if (c1 <= c0) return;
    if (st_cpu_isa() == ST_ISA_AVX512 && c0 % 16 == 0) {
        st_kv_rows_cols_avx512(src, stride, rows, d, rope, c0, c1, x);
        return;
    }
    if (st_cpu_isa() == ST_ISA_AVX2 && c0 % 8 == 0) {
        st_kv_rows_cols_avx2(src, stride, rows, d, rope, c0, c1, x);
        return;
    }
    const int64_t nope = d - rope, w = c1 - c0;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *e = src + (size_t)r * stride, *rp = e + nope + (nope + 63) / 64;
        float *xr = x + r * w;
        for (int64_t i = c0; i < ST_MIN(c1, nope); i++)
            xr[i - c0] = e4m3_bits_to_f32(e[i]) * st_f32_from_bits((uint32_t)e[nope + i / 64] << 23);
        for (int64_t i = ST_MAX(c0, nope); i < c1; i++) {
            uint16_t h;
            memcpy(&h, rp + 2 * (i - nope), 2);
            xr[i - c0] = st_bf16_to_f32(h);
        }
    }
}

void st_kv_rows(const uint8_t *src, size_t stride, int64_t rows, int64_t d, int64_t rope, float *x) {
    if (st_cpu_isa() == ST_ISA_AVX512) { st_kv_rows_avx512(src, stride, rows, d, rope, x); return; }
    if (st_cpu_isa() == ST_ISA_AVX2) { st_kv_rows_cols_avx2(src, stride, rows, d, rope, 0, d, x); return; }
    const int64_t nope = d - rope;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *e = src + (size_t)r * stride, *rp = e + nope + (nope + 63) / 64;
        e4m3_row(e, e + nope, nope, x + r * d);
        for (int64_t i = 0; i < rope; i++) {
            uint16_t h;
            memcpy(&h, rp + 2 * i, 2);
            x[r * d + nope + i] = st_bf16_to_f32(h);
        }
    }
}
