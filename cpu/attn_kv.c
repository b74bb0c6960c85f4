/* Attention over candidate rows of which the last ones are packed KV rows (the
 * official cache layout, st_kv_rows): the packed rows are decoded a chunk at a
 * time (only the columns a call needs) into a caller's tile that stays in
 * cache, and the F32 kernels run on the chunk, so there is no decoded copy of every entry in memory and the
 * results are bit-identical to decoding every row first (contract in attn.h).
 * On AVX-512 and AVX2 (d and rope multiples of the vector), the chunks made
 * only of packed rows skip the tile: the scores and weighted-sum kernels of
 * cpu/attn_avx512.c / attn_avx2.c (one body for F32 and packed rows) decode
 * them in registers, with the same bits. */
#include <stdbool.h>
#include <string.h>

#include "base/base.h"
#include "cpu/attn.h"
#include "cpu/attn_internal.h"
#include "cpu/cpu.h"

/* Rows a chunk: a multiple of 4, so the scores kernels group rows (4 at a time
 * from the start of a call) as they would in one call. */
enum { KV_CHUNK = 64 };

/* The packed rows can be decoded in registers (cpu/attn_avx512.c,
 * cpu/attn_avx2.c): the F32 kernel of the ISA takes the width (AVX-512
 * d % 16, AVX2 d % 8) and every SIMD vector of columns is all e4m3 in one
 * 64-block or all bf16 (rope a multiple of the vector). */
static bool in_registers(st_isa isa, int64_t d, int64_t rope) {
    if (isa == ST_ISA_AVX512) return d % 16 == 0 && rope % 16 == 0;
    return isa == ST_ISA_AVX2 && d % 8 == 0 && rope % 8 == 0;
}

size_t st_attn_kv_tile_floats(int64_t nh, int64_t d) { return (size_t)(KV_CHUNK * (d + nh)); }

/* ptr[0..len) = rows c0.. of the candidates, columns [col0, col0 + width):
 * F32 rows shifted, packed rows decoded into tile (len, width) (runs of
 * consecutive stored rows in one call). */
static void chunk_rows(const void *const *rows, int64_t nf, int64_t c0, int64_t len, int64_t d, int64_t rope,
                       int64_t col0, int64_t width, float *tile, const float **ptr) {
    const size_t stride = (size_t)((d - rope) + (d - rope + 63) / 64 + 2 * rope);
    for (int64_t c = 0; c < len;) {
        if (c0 + c < nf) {
            ptr[c] = (const float *)rows[c0 + c] + col0;
            c++;
            continue;
        }
        const uint8_t *first = rows[c0 + c];
        int64_t run = 1;
        while (c + run < len && (const uint8_t *)rows[c0 + c + run] == first + (size_t)run * stride) run++;
        st_kv_rows_cols(first, stride, run, d, rope, col0, col0 + width, tile + c * width);
        for (int64_t i = 0; i < run; i++) ptr[c + i] = tile + (c + i) * width;
        c += run;
    }
}

void st_attn_scores_kv(const float *q, int64_t nh, const void *const *rows, int64_t nf, int64_t n, int64_t d,
                       int64_t rope, float scale, float *tile, float *s) {
    if (nh <= 0 || n <= 0) return;
    if (nf >= n) { st_attn_scores(q, nh, (const float *const *)rows, n, d, scale, s); return; }
    const float *ptr[KV_CHUNK];
    float *tmp = tile + KV_CHUNK * d; /* (nh, len) scores of a chunk */
    const st_isa isa = st_cpu_isa();
    const bool fused = in_registers(isa, d, rope);
    for (int64_t c0 = 0; c0 < n; c0 += KV_CHUNK) {
        if (fused && c0 >= nf) { /* the rest, rows in groups of 4 from c0 as in chunks */
            const uint8_t *const *packed = (const uint8_t *const *)rows + c0;
            if (isa == ST_ISA_AVX512) st_attn_scores_kv_avx512(q, nh, packed, n - c0, d, rope, scale, s + c0, n);
            else st_attn_scores_kv_avx2(q, nh, packed, n - c0, d, rope, scale, s + c0, n);
            return;
        }
        const int64_t len = ST_MIN(KV_CHUNK, n - c0);
        chunk_rows(rows, nf, c0, len, d, rope, 0, d, tile, ptr);
        st_attn_scores(q, nh, ptr, len, d, scale, tmp);
        for (int64_t h = 0; h < nh; h++) memcpy(s + h * n + c0, tmp + h * len, (size_t)len * sizeof(float));
    }
}

void st_attn_wsum_kv(const float *p, int64_t nh, const void *const *rows, int64_t nf, int64_t n, int64_t d,
                     int64_t rope, int64_t col0, int64_t width, float *tile, float *o) {
    if (nh <= 0) return;
    if (n <= 0) { memset(o, 0, (size_t)(nh * width) * sizeof(float)); return; }
    const st_isa isa = st_cpu_isa();
    const float *ptr[KV_CHUNK];
    const int64_t vec = isa == ST_ISA_AVX512 ? 16 : 8; /* columns a vector */
    const bool fused = in_registers(isa, d, rope) && col0 % vec == 0 && width % vec == 0;
    for (int64_t c0 = 0; c0 < n; c0 += KV_CHUNK) {
        const int acc = c0 > 0; /* later chunks add to the sums so far, in row order */
        if (fused && c0 >= nf) {
            const uint8_t *const *packed = (const uint8_t *const *)rows + c0;
            if (isa == ST_ISA_AVX512) st_attn_wsum_kv_avx512(p + c0, n, nh, packed, n - c0, d, rope, col0, width, acc, o);
            else st_attn_wsum_kv_avx2(p + c0, n, nh, packed, n - c0, d, rope, col0, width, acc, o);
            return;
        }
        const int64_t len = ST_MIN(KV_CHUNK, n - c0);
        chunk_rows(rows, nf, c0, len, d, rope, col0, width, tile, ptr);
        if (isa == ST_ISA_AVX512) st_attn_wsum_avx512(p + c0, n, nh, ptr, len, width, acc, o);
        else if (isa == ST_ISA_AVX2) st_attn_wsum_avx2(p + c0, n, nh, ptr, len, width, acc, o);
        else st_attn_wsum_generic(p + c0, n, nh, ptr, len, width, acc, o);
    }
}

void st_attn_heads_kv(const float *q, int64_t nh, const void *const *rows, int64_t nf, int64_t n, int64_t d,
                      int64_t rope, float scale, const float *sink, float *tile, float *scratch, float *o) {
    if (nh <= 0) return;
    if (n <= 0) { memset(o, 0, (size_t)(nh * d) * sizeof(float)); return; }
    st_attn_scores_kv(q, nh, rows, nf, n, d, rope, scale, tile, scratch);
    for (int64_t h = 0; h < nh; h++) st_attn_softmax(scratch + h * n, n, sink[h]);
    st_attn_wsum_kv(scratch, nh, rows, nf, n, d, rope, 0, d, tile, o);
}
