/* Attention kernels that read the official compact KV layouts directly:
 * - st_index_q_pack / st_index_scores_e2m1 (indexer scores with exact block
 *   dot products) against a plain scalar reference (decoded F32 keys, each
 *   32-block's dot product in double, which is exact, then the documented
 *   float sums), bit for bit on every ISA this CPU has, on odd shapes (partial
 *   and odd d, n not a multiple of the SIMD width, every n to 70, heads not a
 *   multiple of 4),
 *   scales at the ends of the range (subnormal results), and within F32
 *   rounding of the decode-then-F32 st_index_scores;
 * - st_attn_heads_kv / scores_kv / wsum_kv (packed e4m3 + bf16 KV rows read
 *   where they are stored) bit-identical to decoding every row first, on every
 *   ISA, with F32 rows first, row counts off the chunk and SIMD sizes, row
 *   and column ranges as the split path uses them; on AVX-512 and AVX2 these
 *   decode in registers inside the kernels (cpu/attn_avx*.c), checked
 *   over heads 1..9, many widths, NaN codes and every scale byte; weighted
 *   sums of heads 1..11 also against a per-lane fmaf chain;
 * - the e4m3 + bf16 row decoders of every ISA equal the generic one (and the
 *   scalar st_e4m3_to_f32) for all 256 codes under all 256 scale bytes;
 * - official-numerics logits of a synthetic tiny model that agree between the
 *   avx2 and avx512 kernels until the other kernels' last-bit differences flip
 *   a discrete choice (generic is left out: its bf16 matmul trips UBSan). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/attn.h"
#include "engine/model.h"
#include "util.h"
#include "cpu/cpu.h"
#include "cpu/formats.h"
#include "cpu/quant.h"


static const st_isa isas[] = {ST_ISA_GENERIC, ST_ISA_AVX2, ST_ISA_AVX512};

static size_t e2m1_stride(int64_t d) { return (size_t)((d + 1) / 2 + (d + 31) / 32); }

/* n random e2m1 rows; scale bytes in [lo, hi]. */
static uint8_t *random_keys(int64_t n, int64_t d, int lo, int hi) {
    const size_t stride = e2m1_stride(d);
    uint8_t *k = malloc((size_t)n * stride + 64);
    for (size_t i = 0; i < (size_t)n * stride; i++) k[i] = (uint8_t)tu_rng_u64();
    for (int64_t s = 0; s < n; s++) {
        if (d & 1) k[s * stride + d / 2] &= 0x0f; /* the unused high nibble of an odd row */
        for (int64_t b = 0; b < (d + 31) / 32; b++)
            k[s * stride + (d + 1) / 2 + b] = (uint8_t)(lo + (int)(tu_rng_u64() % (uint64_t)(hi - lo + 1)));
    }
    return k;
}

/* q (H, d): gaussian times 2^e_h, quantised as the official indexer does. */
static void random_q(float *q, int64_t H, int64_t d, int e_lo, int e_hi) {
    for (int64_t h = 0; h < H; h++) {
        const int e = e_lo + (int)(tu_rng_u64() % (uint64_t)(e_hi - e_lo + 1));
        for (int64_t i = 0; i < d; i++) q[h * d + i] = ldexpf(tu_rng_gauss(), e);
        if (h % 5 == 3) for (int64_t i = 0; i < ST_MIN(d, 32); i++) q[h * d + i] = 0; /* an all-zero block */
        st_quant_sim_e2m1(q + h * d, d, 32);
    }
}

/* The definition in cpu/attn.h computed plainly: keys decoded to F32 (exact),
 * a block's dot product in double (exact: 32 products of a few bits with
 * common scales) rounded once to float, then the float sums in order. */
static void ref_scores(const float *q, const float *w, const uint8_t *keys, int64_t H, int64_t d, int64_t n,
                       float *out) {
    const size_t stride = e2m1_stride(d);
    float *k = malloc((size_t)d * sizeof(float));
    for (int64_t s = 0; s < n; s++) {
        const uint8_t *row = keys + (size_t)s * stride;
        for (int64_t i = 0; i < d; i++) {
            const uint8_t nibble = (row[i / 2] >> (4 * (i & 1))) & 15;
            k[i] = st_e2m1_to_f32(nibble) * st_f32_from_bits((uint32_t)row[(d + 1) / 2 + i / 32] << 23);
        }
        float acc = 0.0f;
        for (int64_t h = 0; h < H; h++) {
            float score = 0.0f;
            for (int64_t b0 = 0; b0 < d; b0 += 32) {
                double dot = 0;
                for (int64_t i = b0; i < ST_MIN(d, b0 + 32); i++) dot += (double)q[h * d + i] * k[i];
                score = b0 ? score + (float)dot : (float)dot;
            }
            acc += (score > 0 ? score : 0.0f) * w[h];
        }
        out[s] = acc;
    }
    free(k);
}

static void check_shape(int64_t H, int64_t d, int64_t n, int q_elo, int q_ehi, int k_lo, int k_hi) {
    float *q = malloc((size_t)(H * d) * sizeof(float)), *w = malloc((size_t)H * sizeof(float));
    float *ref = malloc((size_t)n * sizeof(float)), *got = malloc((size_t)n * sizeof(float));
    random_q(q, H, d, q_elo, q_ehi);
    for (int64_t h = 0; h < H; h++) w[h] = tu_rng_gauss() * 0.3f;
    uint8_t *keys = random_keys(n, d, k_lo, k_hi);
    void *buf = aligned_alloc(64, st_index_q_bytes(H, d));
    st_index_q qp;
    assert_int_equal(st_index_q_pack(q, H, d, buf, &qp), 1);
    ref_scores(q, w, keys, H, d, n, ref);
    for (size_t ii = 0; ii < ST_ARRAY_LEN(isas); ii++) {
        if (st_cpu_set_isa(isas[ii])) continue;
        memset(got, 0xcc, (size_t)n * sizeof(float));
        st_index_scores_e2m1(&qp, w, keys, e2m1_stride(d), n, got);
        for (int64_t s = 0; s < n; s++)
            if (memcmp(&got[s], &ref[s], 4))
                fail_msg("%s H=%lld d=%lld n=%lld key %lld: %a, reference %a", st_isa_name(isas[ii]), (long long)H,
                         (long long)d, (long long)n, (long long)s, (double)got[s], (double)ref[s]);
        /* any sub-range of keys scores the same (tiles, thread splits) */
        const int64_t off = n / 3, len = n - off - n / 5;
        if (len > 0) {
            st_index_scores_e2m1(&qp, w, keys + (size_t)off * e2m1_stride(d), e2m1_stride(d), len, got);
            assert_memory_equal(got, ref + off, (size_t)len * sizeof(float));
        }
    }
    st_cpu_set_isa(st_cpu_isa_best());
    free(buf);
    free(keys);
    free(q);
    free(w);
    free(ref);
    free(got);
}

static void index_e2m1_equals_reference_on_every_isa(void **state) {
    (void)state;
    /* the shapes of the presets (tiny 4 x 32, mini 8 x 128, full 64 x 128), odd ones */
    const int64_t shapes[][3] = {{4, 32, 1},   {4, 32, 15},  {4, 32, 17},   {4, 32, 300}, {8, 128, 33},
                                 {64, 128, 37}, {3, 64, 21}, {5, 96, 9},    {6, 48, 19},  {2, 33, 18},
                                 {1, 7, 5},    {7, 160, 40}, {16, 544, 17}, {9, 64, 16}};
    for (size_t i = 0; i < ST_ARRAY_LEN(shapes); i++) check_shape(shapes[i][0], shapes[i][1], shapes[i][2], -3, 3, 118, 134);
}

/* The AVX-512 kernel takes keys 32 at a time (two groups of 16, each full or
 * masked) and heads four at a time over both groups, the AVX2 one 8 keys:
 * every key count from 1 to 70 (one, two, three groups and every partial
 * second group), head counts with and without a remainder, and d up to the
 * 16 blocks the kernels keep on the stack (17 takes the generic path). */
static void index_e2m1_every_key_count(void **state) {
    (void)state;
    const int64_t hd[][2] = {{4, 32}, {5, 32}, {1, 64}, {8, 128}, {3, 512}, {2, 544}};
    for (size_t i = 0; i < ST_ARRAY_LEN(hd); i++)
        for (int64_t n = 1; n <= 70; n += hd[i][1] > 128 ? 7 : 1) check_shape(hd[i][0], hd[i][1], n, -3, 3, 118, 134);
}

static void index_e2m1_range_ends(void **state) {
    (void)state;
    /* tiny q and key scales: block terms underflow into subnormals (one rounding
     * each, as in the reference); large ones up to overflow to Inf */
    check_shape(4, 64, 40, -40, -20, 1, 40);
    check_shape(8, 128, 24, 60, 100, 200, 250); /* keys decode finite up to 250 */
    check_shape(4, 32, 50, -60, 100, 0, 250);
}

/* Within F32 rounding of decode-then-F32 (the path it replaces): the F32 dot
 * products round at every step, the exact one only when adding blocks. */
static void index_e2m1_close_to_f32_path(void **state) {
    (void)state;
    const int64_t H = 8, d = 128, n = 200;
    float *q = malloc(H * d * sizeof(float)), w[8], *k = malloc(n * d * sizeof(float));
    float a[200], f[200];
    random_q(q, H, d, -2, 2);
    for (int h = 0; h < H; h++) w[h] = fabsf(tu_rng_gauss());
    uint8_t *keys = random_keys(n, d, 120, 130);
    st_e2m1_rows(keys, e2m1_stride(d), n, d, k);
    void *buf = aligned_alloc(64, st_index_q_bytes(H, d));
    st_index_q qp;
    assert_int_equal(st_index_q_pack(q, H, d, buf, &qp), 1);
    st_index_scores_e2m1(&qp, w, keys, e2m1_stride(d), n, a);
    st_index_scores(q, w, k, H, d, n, f);
    for (int64_t s = 0; s < n; s++) {
        double mag = 0; /* sum of |terms|: the scale of the rounding errors */
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < d; i++) mag += fabs((double)w[h] * q[h * d + i] * k[s * d + i]);
        assert_true(fabs((double)a[s] - f[s]) <= 1e-6 * mag + 1e-30);
    }
    free(buf);
    free(keys);
    free(q);
    free(k);
}

static void index_q_pack_rejects_what_is_not_e2m1(void **state) {
    (void)state;
    const int64_t H = 2, d = 64;
    float q[128];
    void *buf = aligned_alloc(64, st_index_q_bytes(H, d));
    st_index_q qp;
    for (int i = 0; i < 128; i++) q[i] = tu_rng_gauss();
    assert_int_equal(st_index_q_pack(q, H, d, buf, &qp), 0); /* not quantised */
    st_quant_sim_e2m1(q, 128, 32);
    assert_int_equal(st_index_q_pack(q, H, d, buf, &qp), 1);
    q[70] = NAN;
    assert_int_equal(st_index_q_pack(q, H, d, buf, &qp), 0);
    q[70] = INFINITY;
    assert_int_equal(st_index_q_pack(q, H, d, buf, &qp), 0);
    q[70] = 0;
    assert_int_equal(st_index_q_pack(q, H, d, buf, &qp), 1);
    /* any 4-bit integers times a power of two are exact too (e2m1 * 2 are some of them) */
    for (int i = 0; i < 128; i++) q[i] = (float)((int)(tu_rng_u64() % 31) - 15) * 0x1p-9f;
    q[0] = q[40] = q[64] = q[100] = 15 * 0x1p-9f;
    assert_int_equal(st_index_q_pack(q, H, d, buf, &qp), 1);
    q[5] = 0x1p-12f; /* finer than the block's unit */
    assert_int_equal(st_index_q_pack(q, H, d, buf, &qp), 0);
    free(buf);
}

/* ---- attention over packed KV rows ---- */

static size_t kv_stride(int64_t d, int64_t rope) { return (size_t)((d - rope) + (d - rope + 63) / 64 + 2 * rope); }

/* n packed KV rows (no NaN codes), scale bytes around 2^0. */
static uint8_t *random_kv(int64_t n, int64_t d, int64_t rope) {
    const int64_t nope = d - rope;
    const size_t stride = kv_stride(d, rope);
    uint8_t *k = malloc((size_t)n * stride);
    for (int64_t r = 0; r < n; r++) {
        uint8_t *e = k + (size_t)r * stride;
        for (int64_t i = 0; i < nope; i++) {
            e[i] = (uint8_t)tu_rng_u64();
            if ((e[i] & 0x7f) == 0x7f) e[i] ^= 1;
        }
        for (int64_t b = 0; b < (nope + 63) / 64; b++) e[nope + b] = (uint8_t)(118 + tu_rng_u64() % 8);
        for (int64_t i = 0; i < rope; i++) {
            const uint16_t h = st_f32_to_bf16(tu_rng_gauss());
            memcpy(e + nope + (nope + 63) / 64 + 2 * i, &h, 2);
        }
    }
    return k;
}

/* st_kv_rows_cols == the columns of st_kv_rows, any range, every ISA. */
static void kv_rows_cols_equal_full_rows(void **state) {
    (void)state;
    const int64_t shapes[][2] = {{64, 16}, {512, 64}, {80, 16}, {40, 8}, {130, 2}, {48, 0}};
    for (size_t si = 0; si < ST_ARRAY_LEN(shapes); si++) {
        const int64_t d = shapes[si][0], rope = shapes[si][1], n = 5;
        uint8_t *packed = random_kv(n, d, rope);
        float *full = malloc((size_t)(n * d) * sizeof(float)), *part = malloc((size_t)(n * d) * sizeof(float));
        for (size_t ii = 0; ii < ST_ARRAY_LEN(isas); ii++) {
            if (st_cpu_set_isa(isas[ii])) continue;
            st_kv_rows(packed, kv_stride(d, rope), n, d, rope, full);
            for (int64_t c0 = 0; c0 < d; c0 += (c0 % 3 ? 7 : 16))
                for (int64_t c1 = c0 + 1; c1 <= d; c1 += 13) {
                    st_kv_rows_cols(packed, kv_stride(d, rope), n, d, rope, c0, c1, part);
                    for (int64_t r = 0; r < n; r++)
                        if (memcmp(part + r * (c1 - c0), full + r * d + c0, (size_t)(c1 - c0) * sizeof(float)))
                            fail_msg("%s d=%lld rope=%lld cols [%lld, %lld) row %lld differ", st_isa_name(isas[ii]),
                                     (long long)d, (long long)rope, (long long)c0, (long long)c1, (long long)r);
                }
        }
        st_cpu_set_isa(st_cpu_isa_best());
        free(packed); free(full); free(part);
    }
}

/* Every e4m3 code (NaN codes 0x7f/0xff included) under every scale byte, odd
 * lengths and bf16 rope tails: st_kv_rows and st_kv_rows_cols on each ISA equal
 * the generic decoder bit for bit, and the generic decoder equals the scalar
 * st_e4m3_to_f32 times 2^(s-127) (scale byte 0 reads as 0, 255 as infinity). */
static void kv_decode_every_code_and_scale(void **state) {
    (void)state;
    const int64_t shapes[][2] = {{256 + 16, 16}, {250 + 3, 3}, {37, 0}, {64 + 64, 64}, {200 + 1, 1}};
    for (size_t si = 0; si < ST_ARRAY_LEN(shapes); si++) {
        const int64_t d = shapes[si][0], rope = shapes[si][1], nope = d - rope, n = 256;
        const size_t stride = kv_stride(d, rope);
        uint8_t *packed = malloc((size_t)n * stride);
        for (int64_t r = 0; r < n; r++) { /* row r: scale bytes r, r+1, ..; codes rotated by r */
            uint8_t *e = packed + (size_t)r * stride;
            for (int64_t i = 0; i < nope; i++) e[i] = (uint8_t)(i + r * 7);
            for (int64_t b = 0; b < (nope + 63) / 64; b++) e[nope + b] = (uint8_t)(r + b);
            for (int64_t i = 0; i < rope; i++) {
                const uint16_t h = (uint16_t)(i % 5 == 4 ? 0x7fc0 + i : st_f32_to_bf16(tu_rng_gauss())); /* a NaN too */
                memcpy(e + nope + (nope + 63) / 64 + 2 * i, &h, 2);
            }
        }
        float *ref = malloc((size_t)(n * d) * sizeof(float)), *got = malloc((size_t)(n * d + 1) * sizeof(float));
        assert_int_equal(st_cpu_set_isa(ST_ISA_GENERIC), 0);
        st_kv_rows(packed, stride, n, d, rope, ref);
        for (int64_t r = 0; r < n; r++)
            for (int64_t i = 0; i < nope; i++) {
                const uint8_t code = packed[(size_t)r * stride + i], sb = packed[(size_t)r * stride + nope + i / 64];
                const float sc = sb == 0 ? 0.0f : sb == 255 ? INFINITY : ldexpf(1.0f, sb - 127);
                const float want = st_e4m3_to_f32(code) * sc, v = ref[r * d + i];
                if (isnan(want) != isnan(v) || (!isnan(want) && memcmp(&want, &v, sizeof v)))
                    fail_msg("generic decode of code 0x%02x scale %d: %a, want %a", code, sb, (double)v, (double)want);
            }
        for (size_t ii = 1; ii < ST_ARRAY_LEN(isas); ii++) {
            if (st_cpu_set_isa(isas[ii])) continue;
            memset(got, 0xa5, (size_t)(n * d + 1) * sizeof(float));
            st_kv_rows(packed, stride, n, d, rope, got);
            if (memcmp(ref, got, (size_t)(n * d) * sizeof(float)))
                fail_msg("%s st_kv_rows d=%lld rope=%lld differs from generic", st_isa_name(isas[ii]), (long long)d,
                         (long long)rope);
            const int64_t ranges[][2] = {{0, d}, {8, d - 1}, {16, nope}, {nope / 16 * 16, d}, {0, 5}, {24, 33}};
            for (size_t ri = 0; ri < ST_ARRAY_LEN(ranges); ri++) {
                const int64_t c0 = ranges[ri][0], c1 = ranges[ri][1], w = c1 - c0;
                if (c1 <= c0) continue;
                memset(got, 0xa5, (size_t)(n * d + 1) * sizeof(float));
                st_kv_rows_cols(packed, stride, n, d, rope, c0, c1, got);
                for (int64_t r = 0; r < n; r++)
                    if (memcmp(got + r * w, ref + r * d + c0, (size_t)w * sizeof(float)))
                        fail_msg("%s st_kv_rows_cols d=%lld rope=%lld [%lld, %lld) row %lld differs",
                                 st_isa_name(isas[ii]), (long long)d, (long long)rope, (long long)c0, (long long)c1,
                                 (long long)r);
                /* nothing written past the range */
                const uint32_t canary = 0xa5a5a5a5u;
                assert_memory_equal(got + n * w, &canary, sizeof canary);
            }
        }
        st_cpu_set_isa(st_cpu_isa_best());
        free(packed); free(ref); free(got);
    }
}

/* st_attn_heads_kv / scores_kv / wsum_kv == decode every row, then the F32
 * kernels, bit for bit, on every ISA: nf F32 rows first, n - nf packed. */
static void kv_attention_equals_decode_first(void **state) {
    (void)state;
    const int64_t shapes[][5] = {/* nh, d, rope, n, nf */
                                 {4, 64, 16, 300, 8},   {4, 64, 16, 5, 8},    {4, 64, 16, 131, 0},  {8, 128, 64, 70, 13},
                                 {6, 96, 32, 67, 3},    {5, 80, 16, 129, 7},  {4, 40, 8, 33, 2},    {16, 512, 64, 150, 128},
                                 {3, 48, 0, 64, 64},    {4, 64, 16, 1030, 8}};
    for (size_t si = 0; si < ST_ARRAY_LEN(shapes); si++) {
        const int64_t nh = shapes[si][0], d = shapes[si][1], rope = shapes[si][2], n = shapes[si][3];
        const int64_t nf = ST_MIN(n, shapes[si][4]);
        const size_t stride = kv_stride(d, rope);
        uint8_t *packed = random_kv(n, d, rope);
        float *f32 = malloc((size_t)(n * d) * sizeof(float)), *dec = malloc((size_t)(n * d) * sizeof(float));
        float *q = malloc((size_t)(nh * d) * sizeof(float)), *sink = malloc((size_t)nh * sizeof(float));
        for (int64_t i = 0; i < n * d; i++) f32[i] = tu_rng_gauss();
        for (int64_t i = 0; i < nh * d; i++) q[i] = tu_rng_gauss();
        for (int64_t h = 0; h < nh; h++) sink[h] = tu_rng_gauss();
        const void **rows = malloc((size_t)n * sizeof(void *));
        const float **drows = malloc((size_t)n * sizeof(float *));
        for (int64_t c = 0; c < n; c++) {
            if (c < nf) {
                rows[c] = drows[c] = f32 + c * d;
            } else { /* odd shapes: stored rows in reverse order (CSA's top-k are scattered) */
                const int64_t r = si % 2 ? n - 1 - (c - nf) : c;
                rows[c] = packed + (size_t)r * stride;
                st_kv_rows(packed + (size_t)r * stride, stride, 1, d, rope, dec + c * d);
                drows[c] = dec + c * d;
            }
        }
        float *tile = malloc(st_attn_kv_tile_floats(nh, d) * sizeof(float));
        float *s1 = malloc((size_t)(nh * n) * sizeof(float)), *s2 = malloc((size_t)(nh * n) * sizeof(float));
        float *o1 = malloc((size_t)(nh * d) * sizeof(float)), *o2 = malloc((size_t)(nh * d) * sizeof(float));
        const float scale = 0.125f;
        for (size_t ii = 0; ii < ST_ARRAY_LEN(isas); ii++) {
            if (st_cpu_set_isa(isas[ii])) continue;
            st_attn_heads(q, nh, drows, n, d, scale, sink, s1, o1);
            st_attn_heads_kv(q, nh, rows, nf, n, d, rope, scale, sink, tile, s2, o2);
            if (memcmp(o1, o2, (size_t)(nh * d) * sizeof(float)))
                fail_msg("%s nh=%lld d=%lld n=%lld nf=%lld: st_attn_heads_kv differs", st_isa_name(isas[ii]),
                         (long long)nh, (long long)d, (long long)n, (long long)nf);
            /* scores on a row range starting at a multiple of 4, as the split path runs them */
            const int64_t r0 = (n / 3) / 4 * 4, len = n - r0;
            st_attn_scores(q, nh, drows + r0, len, d, scale, s1);
            st_attn_scores_kv(q, nh, rows + r0, ST_MIN(len, ST_MAX(0, nf - r0)), len, d, rope, scale, tile, s2);
            assert_memory_equal(s1, s2, (size_t)(nh * len) * sizeof(float));
            /* weighted sums on a column range: p any weights (nh, n) */
            for (int64_t i = 0; i < nh * n; i++) s1[i] = (float)tu_rng_unif();
            const int64_t k0 = d >= 32 ? 16 : 0, width = d >= 32 ? d - 16 : d;
            const float **shift = malloc((size_t)n * sizeof(float *));
            for (int64_t c = 0; c < n; c++) shift[c] = drows[c] + k0;
            st_attn_wsum(s1, nh, shift, n, width, o1);
            st_attn_wsum_kv(s1, nh, rows, nf, n, d, rope, k0, width, tile, o2);
            assert_memory_equal(o1, o2, (size_t)(nh * width) * sizeof(float));
            free(shift);
        }
        st_cpu_set_isa(st_cpu_isa_best());
        free(packed); free(f32); free(dec); free(q); free(sink); free(rows); free(drows);
        free(tile); free(s1); free(s2); free(o1); free(o2);
    }
}

/* Packed rows with every code possible (NaN codes if nan) and scale bytes in
 * [lo, hi]. */
static uint8_t *random_kv_codes(int64_t n, int64_t d, int64_t rope, bool nan, int lo, int hi) {
    const int64_t nope = d - rope;
    uint8_t *k = random_kv(n, d, rope);
    for (int64_t r = 0; r < n; r++) {
        uint8_t *e = k + (size_t)r * kv_stride(d, rope);
        if (nan) e[tu_rng_u64() % (uint64_t)ST_MAX(nope, 1)] |= 0x7f;
        for (int64_t b = 0; b < (nope + 63) / 64; b++) e[nope + b] = (uint8_t)(lo + (int)(tu_rng_u64() % (uint64_t)(hi - lo + 1)));
    }
    return k;
}

/* a and b (n) the same bits, except that a NaN may be any NaN: with NaN inputs
 * the payload and sign of the result depend on which operand of an FMA the
 * compiler puts first, which nothing fixes. */
static bool same_bits_or_nan(const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (isnan(a[i]) ? !isnan(b[i]) : memcmp(a + i, b + i, sizeof(float))) return false;
    return true;
}

/* The kernels that decode packed rows in registers (AVX-512) or through the
 * tile (others) == decode every row, then st_attn_scores / st_attn_wsum, bit
 * for bit on every ISA: heads 1..9 (the 4-head groups and the rest), row
 * counts around 4, 64 and the chunk, F32 rows first in counts that leave a
 * mixed chunk, the row ranges (multiples of 4) and 16-column ranges the split
 * path gives 2..4 threads, NaN codes (NaN where the reference has NaN) and
 * scale bytes 0..255. */
static void kv_kernels_equal_decode_first_every_shape(void **state) {
    (void)state;
    const int64_t dims[][2] = {{64, 16}, {128, 64}, {96, 32}, {512, 64}, {80, 0}, {64, 48}, {40, 8}, {72, 24}, {24, 8}};
    const int64_t ns[] = {1, 3, 4, 5, 63, 64, 65, 131, 257};
    for (size_t di = 0; di < ST_ARRAY_LEN(dims); di++) {
        const int64_t d = dims[di][0], rope = dims[di][1];
        const size_t stride = kv_stride(d, rope);
        for (size_t ni = 0; ni < ST_ARRAY_LEN(ns); ni++) {
            const int64_t n = ns[ni], nh = 1 + (int64_t)((di * 5 + ni) % 9), nf = (int64_t)(ni % 4 == 1 ? 0 : (ni * 13) % 70);
            const int64_t nfe = ST_MIN(n, nf);
            const bool nan = ni % 3 == 2;
            uint8_t *packed = ni % 2 ? random_kv_codes(n, d, rope, nan, 0, 255) : random_kv_codes(n, d, rope, nan, 100, 140);
            if (n == 257) /* every scale byte in every block position */
                for (int64_t r = 0; r < n; r++)
                    for (int64_t b = 0; b < (d - rope + 63) / 64; b++)
                        packed[(size_t)r * stride + (size_t)(d - rope + b)] = (uint8_t)(r + 37 * b);
            float *dec = malloc((size_t)(n * d) * sizeof(float)), *q = malloc((size_t)(nh * d) * sizeof(float));
            float *p = malloc((size_t)(nh * n) * sizeof(float));
            const void **rows = malloc((size_t)n * sizeof(void *));
            const float **drows = malloc((size_t)n * sizeof(float *)), **shift = malloc((size_t)n * sizeof(float *));
            for (int64_t i = 0; i < nh * d; i++) q[i] = tu_rng_gauss();
            for (int64_t i = 0; i < nh * n; i++) p[i] = (float)tu_rng_unif();
            float *tile = malloc(st_attn_kv_tile_floats(nh, d) * sizeof(float));
            float *s1 = malloc((size_t)(nh * n) * sizeof(float)), *s2 = malloc((size_t)(nh * n) * sizeof(float));
            float *o1 = malloc((size_t)(nh * d) * sizeof(float)), *o2 = malloc((size_t)(nh * d) * sizeof(float));
            for (size_t ii = 0; ii < ST_ARRAY_LEN(isas); ii++) {
                if (st_cpu_set_isa(isas[ii])) continue;
                for (int64_t c = 0; c < n; c++) { /* F32 rows: the decoded values of other stored rows */
                    const int64_t r = (c * 7 + 3) % n;
                    st_kv_rows(packed + (size_t)r * stride, stride, 1, d, rope, dec + c * d);
                    drows[c] = dec + c * d;
                    rows[c] = c < nfe ? (const void *)(dec + c * d) : (const void *)(packed + (size_t)r * stride);
                }
                /* every column (st_attn_heads_kv: widths that are not a multiple of 16) */
                st_attn_wsum(p, nh, drows, n, d, o1);
                st_attn_wsum_kv(p, nh, rows, nfe, n, d, rope, 0, d, tile, o2);
                if (!same_bits_or_nan(o1, o2, nh * d))
                    fail_msg("%s wsum nh=%lld d=%lld rope=%lld n=%lld nf=%lld all columns differ", st_isa_name(isas[ii]),
                             (long long)nh, (long long)d, (long long)rope, (long long)n, (long long)nfe);
                for (int nth = 1; nth <= 4; nth++)
                    for (int ith = 0; ith < nth; ith++) {
                        const int64_t r0 = (n * ith / nth) / 4 * 4, r1 = ith + 1 == nth ? n : (n * (ith + 1) / nth) / 4 * 4;
                        if (r1 > r0) {
                            st_attn_scores(q, nh, drows + r0, r1 - r0, d, 0.125f, s1);
                            st_attn_scores_kv(q, nh, rows + r0, ST_MIN(r1 - r0, ST_MAX(0, nfe - r0)), r1 - r0, d, rope,
                                              0.125f, tile, s2);
                            if (!same_bits_or_nan(s1, s2, nh * (r1 - r0)))
                                fail_msg("%s scores nh=%lld d=%lld rope=%lld n=%lld nf=%lld rows [%lld, %lld) differ",
                                         st_isa_name(isas[ii]), (long long)nh, (long long)d, (long long)rope,
                                         (long long)n, (long long)nfe, (long long)r0, (long long)r1);
                        }
                        const int64_t k0 = (d / 16 * ith / nth) * 16, k1 = (d / 16 * (ith + 1) / nth) * 16;
                        if (k1 <= k0) continue;
                        for (int64_t c = 0; c < n; c++) shift[c] = drows[c] + k0;
                        st_attn_wsum(p, nh, shift, n, k1 - k0, o1);
                        st_attn_wsum_kv(p, nh, rows, nfe, n, d, rope, k0, k1 - k0, tile, o2);
                        if (!same_bits_or_nan(o1, o2, nh * (k1 - k0)))
                            fail_msg("%s wsum nh=%lld d=%lld rope=%lld n=%lld nf=%lld cols [%lld, %lld) differ",
                                     st_isa_name(isas[ii]), (long long)nh, (long long)d, (long long)rope, (long long)n,
                                     (long long)nfe, (long long)k0, (long long)k1);
                    }
            }
            st_cpu_set_isa(st_cpu_isa_best());
            free(packed); free(dec); free(q); free(p); free(rows); free(drows); free(shift);
            free(tile); free(s1); free(s2); free(o1); free(o2);
        }
    }
}

/* Weighted sums of every head count from packed rows (on AVX-512 and AVX2 in
 * registers, 8 heads a block, then the rest): each output lane must be the
 * chain of fmaf over the rows in order from 0, o = fmaf(p, x, o), which is
 * what the F32 kernels of those ISAs compute, so it is also checked against
 * st_attn_wsum on the decoded rows (every ISA). Heads 1..11 (a block of 8
 * and 1..3 more), row counts around the 4/8-row unrolls and the 64-row
 * blocks, F32 rows first (a mixed chunk, then the packed rows carry on from
 * its sums), all columns and the 16-column (AVX2 also 8-column) ranges a
 * split over 1..4 threads gives. */
static void kv_wsum_every_head_count(void **state) {
    (void)state;
    const int64_t dims[][2] = {{64, 16}, {128, 64}, {48, 16}, {96, 32}, {24, 8}};
    const int64_t ns[] = {1, 2, 3, 5, 7, 9, 63, 64, 65, 130, 200};
    for (size_t di = 0; di < ST_ARRAY_LEN(dims); di++)
        for (int64_t nh = 1; nh <= 11; nh++) {
            const int64_t d = dims[di][0], rope = dims[di][1], n = ns[(size_t)(nh + (int64_t)di) % ST_ARRAY_LEN(ns)];
            const int64_t nf = nh % 3 == 0 ? ST_MIN(n, 1 + nh) : 0;
            const size_t stride = kv_stride(d, rope);
            uint8_t *packed = random_kv_codes(n, d, rope, nh == 7, 100, 140);
            float *dec = malloc((size_t)(n * d) * sizeof(float)), *p = malloc((size_t)(nh * n) * sizeof(float));
            float *ref = malloc((size_t)(nh * d) * sizeof(float)), *o = malloc((size_t)(nh * d) * sizeof(float));
            float *o32 = malloc((size_t)(nh * d) * sizeof(float));
            float *tile = malloc(st_attn_kv_tile_floats(nh, d) * sizeof(float));
            const void **rows = malloc((size_t)n * sizeof(void *));
            const float **shift = malloc((size_t)n * sizeof(float *));
            st_cpu_set_isa(ST_ISA_GENERIC);
            for (int64_t c = 0; c < n; c++) { /* stored rows scattered, as CSA's top-k */
                const int64_t r = (c * 5 + 2) % n;
                st_kv_rows(packed + (size_t)r * stride, stride, 1, d, rope, dec + c * d);
                rows[c] = c < nf ? (const void *)(dec + c * d) : (const void *)(packed + (size_t)r * stride);
            }
            for (int64_t i = 0; i < nh * n; i++) p[i] = (float)tu_rng_gauss();
            for (size_t ii = 0; ii < ST_ARRAY_LEN(isas); ii++) {
                if (st_cpu_set_isa(isas[ii])) continue;
                const int64_t unit = isas[ii] == ST_ISA_AVX2 && d % 16 ? 8 : 16;
                for (int nth = 0; nth <= 4; nth++)
                    for (int ith = 0; ith < ST_MAX(nth, 1); ith++) {
                        /* nth 0: every column (widths not a multiple of 16 included) */
                        const int64_t k0 = nth ? (d / unit * ith / nth) * unit : 0;
                        const int64_t k1 = nth ? (d / unit * (ith + 1) / nth) * unit : d, w = k1 - k0;
                        if (w <= 0) continue;
                        for (int64_t h = 0; h < nh; h++)
                            for (int64_t j = 0; j < w; j++) {
                                float acc = 0.0f;
                                for (int64_t c = 0; c < n; c++) acc = fmaf(p[h * n + c], dec[c * d + k0 + j], acc);
                                ref[h * w + j] = acc;
                            }
                        for (int64_t c = 0; c < n; c++) shift[c] = dec + c * d + k0;
                        st_attn_wsum_kv(p, nh, rows, nf, n, d, rope, k0, w, tile, o);
                        st_attn_wsum(p, nh, shift, n, w, o32);
                        if (!same_bits_or_nan(o32, o, nh * w))
                            fail_msg("%s nh=%lld d=%lld n=%lld nf=%lld cols [%lld, %lld): packed != F32 kernel",
                                     st_isa_name(isas[ii]), (long long)nh, (long long)d, (long long)n, (long long)nf,
                                     (long long)k0, (long long)k1);
                        const int64_t vec = isas[ii] == ST_ISA_AVX512 ? 16 : 8; /* narrower: the generic code */
                        if (isas[ii] != ST_ISA_GENERIC && w % vec == 0 && !same_bits_or_nan(ref, o, nh * w))
                            fail_msg("%s nh=%lld d=%lld n=%lld nf=%lld cols [%lld, %lld): != fmaf chain",
                                     st_isa_name(isas[ii]), (long long)nh, (long long)d, (long long)n, (long long)nf,
                                     (long long)k0, (long long)k1);
                    }
            }
            st_cpu_set_isa(st_cpu_isa_best());
            free(packed); free(dec); free(p); free(ref); free(o); free(o32); free(tile); free(rows); free(shift);
        }
}

/* End to end: a synthetic tiny model's official-numerics logits over a prompt
 * long enough that the indexer picks 3 of up to 50 keys, on every ISA. The
 * other kernels (matmul, norms) differ across ISAs in the last bits, which
 * after some tokens flips a discrete choice; until then the logits agree. */
static void official_logits_independent_of_isa(void **state) {
    (void)state;
    char dir[256];
    assert_int_equal(tu_tmpdir(dir, sizeof dir, "/tmp/strata-packed-XXXXXX"), 0);
    const st_synth_preset *p = st_synth_find("tiny");
    assert_non_null(p);
    assert_int_equal(tu_synth(p, dir, 11, NULL), 0);
    enum { T = 200 };
    int32_t ids[T];
    float *lg[3] = {0};
    /* from avx2 up: generic's bf16 matmul reads unaligned uint16 (UBSan stops it; reported) */
    for (size_t ii = 1; ii < ST_ARRAY_LEN(isas); ii++) {
        if (st_cpu_set_isa(isas[ii])) continue;
        st_model_opts o = {.numerics = ST_NUMERICS_OFFICIAL};
        st_model *m = tu_load(dir, &o, 2);
        for (int i = 0; i < T; i++) ids[i] = (int32_t)((i * 37 + 11) % m->vocab);
        st_seq *s;
        assert_int_equal(st_seq_new(m, &s), 0);
        lg[ii] = malloc((size_t)(T * m->vocab) * sizeof(float));
        assert_int_equal(st_seq_forward(s, ids, T, lg[ii], true), 0);
        if (ii > 1 && lg[1]) {
            double lo = INFINITY, hi = -INFINITY;
            for (int64_t i = 0; i < T * m->vocab; i++) {
                lo = fmin(lo, lg[1][i]);
                hi = fmax(hi, lg[1][i]);
            }
            /* the first token whose logits differ by more than the other kernels' lane
             * orders do (a last-bit difference that flipped a discrete choice: a q
             * code, a routed expert) */
            int64_t first = T;
            for (int64_t t = 0; t < T && first == T; t++)
                for (int64_t i = 0; i < m->vocab; i++)
                    if (fabs((double)lg[ii][t * m->vocab + i] - lg[1][t * m->vocab + i]) > 1e-5 * (hi - lo)) {
                        first = t;
                        break;
                    }
            print_message("  %s vs avx2: logits within 1e-5 of the range up to token %lld\n", st_isa_name(isas[ii]),
                          (long long)first);
            assert_true(first >= 24); /* by then the indexer picks 3 of 6 keys in each CSA layer */
        }
        st_seq_free(s);
        st_model_free(m);
    }
    st_cpu_set_isa(st_cpu_isa_best());
    for (int i = 0; i < 3; i++) free(lg[i]);
    tu_rmtree(dir);
}

int main(void) {
    tu_rng_set(0x2545F4914F6CDD1Dull); /* this suite's stream */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(index_e2m1_equals_reference_on_every_isa),
        cmocka_unit_test(index_e2m1_every_key_count),
        cmocka_unit_test(index_e2m1_range_ends),
        cmocka_unit_test(index_e2m1_close_to_f32_path),
        cmocka_unit_test(index_q_pack_rejects_what_is_not_e2m1),
        cmocka_unit_test(kv_rows_cols_equal_full_rows),
        cmocka_unit_test(kv_decode_every_code_and_scale),
        cmocka_unit_test(kv_attention_equals_decode_first),
        cmocka_unit_test(kv_kernels_equal_decode_first_every_shape),
        cmocka_unit_test(kv_wsum_every_head_count),
        cmocka_unit_test(official_logits_independent_of_isa),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
