/* cpu/weights.c, cpu/matmul*.c: sizes, validation, dequantisation and matrix
 * products on every weight format and every ISA path, against the generic path
 * and against a double-precision reference built from cpu/formats.h.
 *
 * Error bounds (normalised mean squared error, sum (y - ref)^2 / sum ref^2):
 *   ST_ACT_F32, generic vs double reference            < 1e-11
 *   ST_ACT_F32, SIMD vs generic                        < 1e-11 (summation order only)
 *   ST_ACT_Q8 (FP4), generic vs double reference       < 1e-4  (int8 activations per 128)
 *   ST_ACT_Q8, SIMD vs generic                         bit-identical (integer sums)
 *   any path, 1 vs 2 vs 3 threads                      bit-identical
 *   ST_ACT_F32, each ISA: n tokens in one call vs one
 *   token per call vs uneven chunks                    bit-identical (batch invariance)
 *   st_dequant_rows, every path                        bit-identical to formats.h
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/cpu.h"
#include "cpu/formats.h"
#include "cpu/matmul_internal.h"
#include "util.h"


typedef struct {
    st_weight w;
    void *data, *scale;
} owned_w;

/* kind 0: random typical values; 1: every code cycled along rows and columns */
static owned_w make_w(st_wfmt fmt, st_scale_fmt sf, int64_t rows, int64_t cols, int kind) {
    owned_w o = {.w = {.fmt = fmt, .rows = rows, .cols = cols, .scale_fmt = sf}};
    size_t db = st_weight_data_bytes(fmt, rows, cols), sb = st_weight_scale_bytes(fmt, sf, rows, cols);
    o.data = malloc(db);
    o.scale = sb ? malloc(sb) : NULL;
    uint8_t *d8 = o.data;
    for (size_t i = 0; i < db; i++) d8[i] = (uint8_t)tu_rnd();
    if (fmt == ST_WF_F32)
        for (int64_t i = 0; i < rows * cols; i++) ((float *)o.data)[i] = tu_frand();
    if (fmt == ST_WF_BF16)
        for (int64_t i = 0; i < rows * cols; i++) ((uint16_t *)o.data)[i] = st_f32_to_bf16(tu_frand());
    if (fmt == ST_WF_FP8) {
        for (int64_t i = 0; i < rows * cols; i++) {
            uint8_t b = kind ? (uint8_t)((i * 7 + i / cols) & 255) : (uint8_t)tu_rnd();
            if (!kind && (b & 0x7f) == 0x7f) b ^= 1; /* no NaN in random data */
            d8[i] = b;
        }
        int64_t ns = (int64_t)sb / (sf == ST_SCALE_F32 ? 4 : 1);
        for (int64_t i = 0; i < ns; i++) {
            if (sf == ST_SCALE_F32) ((float *)o.scale)[i] = ldexpf(1.0f + tu_frand() * 0.5f, (int)(tu_rnd() % 8) - 12);
            else ((uint8_t *)o.scale)[i] = (uint8_t)(127 - 12 + tu_rnd() % 8);
        }
    }
    if (fmt == ST_WF_FP4) {
        if (kind)
            for (size_t i = 0; i < db; i++) d8[i] = (uint8_t)(i * 17 + i / 7);
        for (size_t i = 0; i < sb; i++) ((uint8_t *)o.scale)[i] = (uint8_t)(127 - 8 + tu_rnd() % 6);
    }
    o.w.data = o.data;
    o.w.scale = o.scale;
    return o;
}
static void free_w(owned_w *o) { free(o->data); free(o->scale); }

/* Exact dequantisation from formats.h, in double. */
static double ref_w(const st_weight *w, int64_t r, int64_t c) {
    const uint8_t *d = w->data;
    switch (w->fmt) {
    case ST_WF_F32: return ((const float *)w->data)[r * w->cols + c];
    case ST_WF_BF16: return st_bf16_to_f32(((const uint16_t *)w->data)[r * w->cols + c]);
    case ST_WF_FP8: {
        int64_t i = (r / 128) * ((w->cols + 127) / 128) + c / 128;
        double s = w->scale_fmt == ST_SCALE_F32 ? ((const float *)w->scale)[i] : st_e8m0_to_f32(((const uint8_t *)w->scale)[i]);
        return (double)st_e4m3_to_f32(d[r * w->cols + c]) * s;
    }
    case ST_WF_FP4: {
        uint8_t b = d[r * (w->cols / 2) + c / 2];
        return (double)st_e2m1_to_f32((uint8_t)(c & 1 ? b >> 4 : b & 15)) *
               st_e8m0_to_f32(((const uint8_t *)w->scale)[r * (w->cols / 32) + c / 32]);
    }
    }
    return 0;
}

static void ref_matmul(const st_weight *w, const float *x, int64_t n, double *y) {
    for (int64_t r = 0; r < w->rows; r++)
        for (int64_t t = 0; t < n; t++) {
            double s = 0;
            for (int64_t c = 0; c < w->cols; c++) s += ref_w(w, r, c) * x[t * w->cols + c];
            y[t * w->rows + r] = s;
        }
}

static double nmse_d(const float *y, const double *ref, int64_t n) {
    double e = 0, s = 0;
    for (int64_t i = 0; i < n; i++) { e += (y[i] - ref[i]) * (y[i] - ref[i]); s += ref[i] * ref[i]; }
    return s > 0 ? e / s : e;
}
static double nmse_f(const float *y, const float *ref, int64_t n) {
    double e = 0, s = 0;
    for (int64_t i = 0; i < n; i++) { e += ((double)y[i] - ref[i]) * ((double)y[i] - ref[i]); s += (double)ref[i] * ref[i]; }
    return s > 0 ? e / s : e;
}

static float *rand_x(int64_t count, float amp) {
    float *x = malloc((size_t)count * sizeof(float));
    for (int64_t i = 0; i < count; i++) x[i] = tu_frand() * amp;
    return x;
}

static st_pool *pools[4]; /* 1, 2, 3 threads; [0] unused */

static int setup(void **state) {
    (void)state;
    for (int t = 1; t <= 3; t++)
        if (st_pool_new(t, false, &pools[t])) return -1;
    return 0;
}
static int teardown(void **state) {
    (void)state;
    for (int t = 1; t <= 3; t++) st_pool_free(pools[t]);
    st_cpu_set_isa(st_cpu_isa_best());
    return 0;
}

/* ---- sizes and validation ---- */

static void sizes_and_check(void **state) {
    (void)state;
    assert_int_equal(st_weight_data_bytes(ST_WF_F32, 3, 5), 60);
    assert_int_equal(st_weight_data_bytes(ST_WF_BF16, 3, 5), 30);
    assert_int_equal(st_weight_data_bytes(ST_WF_FP8, 3, 5), 15);
    assert_int_equal(st_weight_data_bytes(ST_WF_FP4, 4, 64), 128);
    assert_int_equal(st_weight_scale_bytes(ST_WF_FP8, ST_SCALE_E8M0, 129, 300), 2 * 3);
    assert_int_equal(st_weight_scale_bytes(ST_WF_FP8, ST_SCALE_F32, 129, 300), 2 * 3 * 4);
    assert_int_equal(st_weight_scale_bytes(ST_WF_FP4, ST_SCALE_E8M0, 5, 96), 15);
    assert_int_equal(st_weight_scale_bytes(ST_WF_BF16, ST_SCALE_E8M0, 5, 96), 0);

    owned_w o = make_w(ST_WF_FP4, ST_SCALE_E8M0, 4, 64, 0);
    assert_int_equal(st_weight_check(&o.w, "blk.w1"), 0);
    o.w.cols = 48;
    assert_int_equal(st_weight_check(&o.w, "layers.3.ffn.experts.7.w1"), ST_ERR_UNSUPPORTED);
    assert_non_null(strstr(st_last_error(), "layers.3.ffn.experts.7.w1"));
    assert_non_null(strstr(st_last_error(), "32"));
    float x[48] = {0}, y[4];
    assert_int_equal(st_matmul(NULL, &o.w, x, 1, y, ST_ACT_F32), ST_ERR_UNSUPPORTED); /* refused, no crash */
    o.w.cols = 64;
    o.w.scale_fmt = ST_SCALE_F32;
    assert_int_equal(st_weight_check(&o.w, "t"), ST_ERR_UNSUPPORTED);
    o.w.scale_fmt = ST_SCALE_E8M0;
    o.w.scale = NULL;
    assert_int_equal(st_weight_check(&o.w, "t.scale"), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "t.scale"));
    o.w.scale = o.scale;
    o.w.rows = 0;
    assert_int_equal(st_weight_check(&o.w, "t"), ST_ERR_INVALID);
    o.w.rows = 4;
    o.w.fmt = (st_wfmt)9;
    assert_int_equal(st_weight_check(&o.w, "t"), ST_ERR_UNSUPPORTED);
    assert_int_equal(st_weight_check(NULL, "t"), ST_ERR_INVALID);
    o.w.fmt = ST_WF_FP4;
    assert_int_equal(st_matmul(NULL, &o.w, NULL, 1, y, ST_ACT_F32), ST_ERR_INVALID);
    assert_int_equal(st_matmul(NULL, &o.w, x, 0, y, ST_ACT_F32), 0);
    free_w(&o);
}

/* ---- dequantisation: bit-exact on every path, every code ---- */

static void check_dequant(const st_weight *w) {
    float *out = malloc((size_t)(w->rows * w->cols) * sizeof(float));
    for (int isa = 0; isa <= (int)st_cpu_isa_best(); isa++) {
        assert_int_equal(st_cpu_set_isa((st_isa)isa), 0);
        memset(out, 0xcd, (size_t)(w->rows * w->cols) * sizeof(float));
        st_dequant_rows(w, 1, w->rows, out);
        for (int64_t r = 1; r < w->rows; r++)
            for (int64_t c = 0; c < w->cols; c++) {
                float want = (float)ref_w(w, r, c), got = out[(r - 1) * w->cols + c];
                if (isnan(want)) { assert_true(isnan(got)); continue; }
                if (st_f32_bits(want) != st_f32_bits(got))
                    fail_msg("%s fmt %d (%lld,%lld): got %a want %a", st_isa_name((st_isa)isa), w->fmt,
                             (long long)r, (long long)c, got, want);
            }
    }
    free(out);
}

static void dequant_every_code(void **state) {
    (void)state;
    for (int f = 0; f < 4; f++) {
        int64_t cols = f == ST_WF_FP4 ? 352 : 300;
        owned_w o = make_w((st_wfmt)f, ST_SCALE_E8M0, 131, cols, 1);
        if (f == ST_WF_FP8) /* scale extremes: 2^-127, 2^127, NaN */
            for (int i = 0; i < 6; i++) ((uint8_t *)o.scale)[i] = (uint8_t[]){0, 254, 255, 1, 127, 130}[i];
        if (f == ST_WF_FP4)
            for (int64_t i = 0; i < 131 * 11; i++) ((uint8_t *)o.scale)[i] = (uint8_t)(i * 37);
        check_dequant(&o.w);
        free_w(&o);
    }
    owned_w o = make_w(ST_WF_FP8, ST_SCALE_F32, 200, 260, 1);
    check_dequant(&o.w);
    free_w(&o);
}

/* ---- products ---- */

/* Runs st_matmul on every ISA and thread count; checks the bounds in the header. */
static void check_matmul(const st_weight *w, int64_t n, st_act act, float amp) {
    const int64_t ny = n * w->rows;
    float *x = rand_x(n * w->cols, amp);
    double *ref = malloc((size_t)ny * sizeof(double));
    float *yg = malloc((size_t)ny * sizeof(float)), *y = malloc((size_t)ny * sizeof(float)),
          *y1 = malloc((size_t)ny * sizeof(float));
    ref_matmul(w, x, n, ref);
    bool q8 = act == ST_ACT_Q8 && w->fmt == ST_WF_FP4;
    for (int isa = 0; isa <= (int)st_cpu_isa_best(); isa++) {
        assert_int_equal(st_cpu_set_isa((st_isa)isa), 0);
        for (int th = 1; th <= 3; th++) {
            memset(y, 0xcd, (size_t)ny * sizeof(float));
            assert_int_equal(st_matmul(pools[th], w, x, n, y, act), 0);
            if (th == 1) memcpy(y1, y, (size_t)ny * sizeof(float));
            else if (memcmp(y, y1, (size_t)ny * sizeof(float)))
                fail_msg("%s fmt %d n %lld: %d threads differ from 1", st_isa_name((st_isa)isa), w->fmt, (long long)n, th);
        }
        double e_ref = nmse_d(y1, ref, ny);
        if (isa == 0) {
            memcpy(yg, y1, (size_t)ny * sizeof(float));
            double bound = q8 ? 1e-4 : 1e-11;
            if (!(e_ref < bound)) fail_msg("generic fmt %d n %lld act %d: NMSE vs double %g >= %g", w->fmt, (long long)n, act, e_ref, bound);
        } else if (q8) {
            if (memcmp(y1, yg, (size_t)ny * sizeof(float)))
                fail_msg("%s Q8 fmt %d n %lld: not bit-identical to generic (NMSE %g)", st_isa_name((st_isa)isa), w->fmt,
                         (long long)n, nmse_f(y1, yg, ny));
        } else {
            double e = nmse_f(y1, yg, ny);
            if (!(e < 1e-11)) fail_msg("%s fmt %d n %lld: NMSE vs generic %g", st_isa_name((st_isa)isa), w->fmt, (long long)n, e);
        }
    }
    free(x); free(ref); free(yg); free(y); free(y1);
}

static void matmul_every_format(void **state) {
    (void)state;
    static const int64_t ns[] = {1, 3, 17, 40};
    for (int f = 0; f < 4; f++)
        for (size_t i = 0; i < ST_ARRAY_LEN(ns); i++) {
            /* rows and cols off the 32/128 block sizes (FP4: cols % 32 == 0, not % 128) */
            int64_t rows = 45 + 90 * (int64_t)(i & 1), cols = f == ST_WF_FP4 ? 352 : f == ST_WF_FP8 ? 300 : 77;
            owned_w o = make_w((st_wfmt)f, ST_SCALE_E8M0, rows, cols, 0);
            check_matmul(&o.w, ns[i], ST_ACT_F32, 1.0f);
            if (f == ST_WF_FP4) check_matmul(&o.w, ns[i], ST_ACT_Q8, 1.0f);
            free_w(&o);
        }
    owned_w o = make_w(ST_WF_FP8, ST_SCALE_F32, 150, 200, 0); /* V3-style F32 block scales */
    check_matmul(&o.w, 1, ST_ACT_F32, 1.0f);
    check_matmul(&o.w, 20, ST_ACT_F32, 1.0f);
    free_w(&o);
}

static void matmul_every_code(void **state) {
    (void)state;
    /* FP4: every nibble in every position, scale extremes 2^-127 and 2^113 (sums stay finite) */
    owned_w o = make_w(ST_WF_FP4, ST_SCALE_E8M0, 70, 256, 1);
    for (int64_t i = 0; i < 70 * 8; i++) ((uint8_t *)o.scale)[i] = (uint8_t)(i < 8 ? 0 : i < 16 ? 240 : 100 + i % 40);
    check_matmul(&o.w, 1, ST_ACT_F32, 1.0f);
    check_matmul(&o.w, 19, ST_ACT_F32, 1.0f);
    check_matmul(&o.w, 19, ST_ACT_Q8, 1.0f);
    free_w(&o);
    /* FP8: every code but NaN (448, subnormals, -0) */
    o = make_w(ST_WF_FP8, ST_SCALE_E8M0, 140, 290, 1);
    for (int64_t i = 0; i < 140 * 290; i++)
        if ((((uint8_t *)o.data)[i] & 0x7f) == 0x7f) ((uint8_t *)o.data)[i] = 0x7e;
    check_matmul(&o.w, 1, ST_ACT_F32, 1.0f);
    check_matmul(&o.w, 13, ST_ACT_F32, 1.0f);
    free_w(&o);
}

/* A NaN weight code (e4m3 0x7f/0xff) or NaN scale makes exactly its rows NaN. */
static void nan_codes_propagate(void **state) {
    (void)state;
    owned_w o = make_w(ST_WF_FP8, ST_SCALE_E8M0, 64, 256, 0);
    ((uint8_t *)o.data)[5 * 256 + 200] = 0x7f;
    ((uint8_t *)o.data)[9 * 256 + 3] = 0xff;
    owned_w q = make_w(ST_WF_FP4, ST_SCALE_E8M0, 64, 256, 0);
    ((uint8_t *)q.scale)[7 * 8 + 5] = 255;
    for (int isa = 0; isa <= (int)st_cpu_isa_best(); isa++) {
        assert_int_equal(st_cpu_set_isa((st_isa)isa), 0);
        for (int64_t n = 1; n <= 20; n += 19) {
            float *x = rand_x(n * 256, 1.0f), *y = malloc((size_t)(n * 64) * sizeof(float));
            for (int a = 0; a < 2; a++) {
                const st_weight *w = a ? &q.w : &o.w;
                assert_int_equal(st_matmul(pools[2], w, x, n, y, a ? ST_ACT_Q8 : ST_ACT_F32), 0);
                for (int64_t t = 0; t < n; t++)
                    for (int64_t r = 0; r < 64; r++) {
                        bool want_nan = a ? r == 7 : (r == 5 || r == 9);
                        if (want_nan != (bool)isnan(y[t * 64 + r]))
                            fail_msg("%s %s n %lld row %lld: NaN expected %d", st_isa_name((st_isa)isa), a ? "fp4" : "fp8",
                                     (long long)n, (long long)r, want_nan);
                    }
            }
            free(x); free(y);
        }
    }
    free_w(&o); free_w(&q);
}

static void bf16_activations(void **state) {
    (void)state;
    owned_w o = make_w(ST_WF_FP8, ST_SCALE_E8M0, 50, 256, 0);
    int64_t n = 9;
    uint16_t *xb = malloc((size_t)(n * 256) * sizeof(uint16_t));
    float *x = malloc((size_t)(n * 256) * sizeof(float)), *y = malloc((size_t)(n * 50) * sizeof(float)),
          *yb = malloc((size_t)(n * 50) * sizeof(float));
    for (int64_t i = 0; i < n * 256; i++) { xb[i] = st_f32_to_bf16(tu_frand()); x[i] = st_bf16_to_f32(xb[i]); }
    for (int isa = 0; isa <= (int)st_cpu_isa_best(); isa++) {
        assert_int_equal(st_cpu_set_isa((st_isa)isa), 0);
        assert_int_equal(st_matmul(pools[2], &o.w, x, n, y, ST_ACT_F32), 0);
        assert_int_equal(st_matmul_bf16(pools[2], &o.w, xb, n, yb, ST_ACT_F32), 0);
        assert_memory_equal(y, yb, (size_t)(n * 50) * sizeof(float));
    }
    free(xb); free(x); free(y); free(yb); free_w(&o);
}

/* Large enough for the SIMD paths' full tiles and several threads' shares. */
static void matmul_large_shapes(void **state) {
    (void)state;
    owned_w o = make_w(ST_WF_FP4, ST_SCALE_E8M0, 256, 1024, 0);
    check_matmul(&o.w, 1, ST_ACT_F32, 1.0f);
    check_matmul(&o.w, 30, ST_ACT_F32, 1.0f);
    check_matmul(&o.w, 30, ST_ACT_Q8, 1.0f);
    free_w(&o);
    o = make_w(ST_WF_FP8, ST_SCALE_E8M0, 200, 1000, 0);
    check_matmul(&o.w, 1, ST_ACT_F32, 1.0f);
    check_matmul(&o.w, 26, ST_ACT_F32, 1.0f);
    free_w(&o);
}


/* ---- batch invariance: y[t] never depends on n or on the kernel the dispatcher picks ---- */

static int64_t rnd_in(int64_t lo, int64_t hi) { return lo + (int64_t)(tu_rnd() % (uint32_t)(hi - lo + 1)); }

/* y of tokens [0, n) through calls of the given sizes (sizes cycle; 0 ends). */
static void matmul_in_chunks(st_pool *pool, const st_weight *w, const float *x, int64_t n, const int *sizes, float *y) {
    int64_t t = 0;
    for (int i = 0; t < n; i = sizes[i + 1] ? i + 1 : 0) {
        int64_t c = sizes[i] < n - t ? sizes[i] : n - t;
        assert_int_equal(st_matmul(pool, w, x + t * w->cols, c, y + t * w->rows, ST_ACT_F32), 0);
        t += c;
    }
}

static void check_invariance(const st_weight *w, const char *what) {
    static const int64_t ns[] = {1, 2, 3, 5, 8, 17, 64, 130};
    static const int uneven[] = {5, 3, 11, 1, 9, 2, 0}, big[] = {64, 7, 13, 0};
    for (size_t i = 0; i < ST_ARRAY_LEN(ns); i++) {
        const int64_t n = ns[i], ny = n * w->rows;
        float *x = rand_x(n * w->cols, 2.0f), *ya = malloc((size_t)ny * sizeof(float)),
              *yb = malloc((size_t)ny * sizeof(float));
        st_pool *pool = pools[1 + (int)(i % 3)];
        assert_int_equal(st_matmul(pool, w, x, n, ya, ST_ACT_F32), 0);
        for (int mode = 0; mode < 3; mode++) {
            memset(yb, 0xcd, (size_t)ny * sizeof(float));
            static const int one[] = {1, 0};
            matmul_in_chunks(pools[mode == 0 ? 1 : 3 - mode], w, x, n, mode == 0 ? one : mode == 1 ? uneven : big, yb);
            for (int64_t k = 0; k < ny; k++)
                if (st_f32_bits(ya[k]) != st_f32_bits(yb[k]) && !(isnan(ya[k]) && isnan(yb[k])))
                    fail_msg("%s %s (%lld, %lld): n %lld at once vs %s: token %lld row %lld: %a vs %a",
                             st_isa_name(st_cpu_isa()), what, (long long)w->rows, (long long)w->cols, (long long)n,
                             mode == 0 ? "one at a time" : "uneven chunks", (long long)(k / w->rows),
                             (long long)(k % w->rows), ya[k], yb[k]);
        }
        free(x); free(ya); free(yb);
    }
}

static void matmul_batch_invariant(void **state) {
    (void)state;
    static const char *names[] = {"F32", "BF16", "FP8", "FP4"};
    for (int isa = 0; isa <= (int)st_cpu_isa_best(); isa++) {
        assert_int_equal(st_cpu_set_isa((st_isa)isa), 0);
        for (int f = 0; f < 4; f++)
            for (int s = 0; s < 3; s++) {
                /* odd shapes: rows off the panel heights, cols off every chunk and block size */
                int64_t rows = s == 0 ? rnd_in(1, 7) : rnd_in(30, 140);
                int64_t cols = f == ST_WF_FP4 ? 32 * rnd_in(1, 13) : s == 2 ? rnd_in(129, 420) : rnd_in(1, 128);
                owned_w o = make_w((st_wfmt)f, ST_SCALE_E8M0, rows, cols, 0);
                check_invariance(&o.w, names[f]);
                free_w(&o);
            }
        owned_w o = make_w(ST_WF_FP8, ST_SCALE_F32, 150, 333, 0); /* F32 block scales: w' rounds */
        check_invariance(&o.w, "FP8 (F32 scales)");
        free_w(&o);
        o = make_w(ST_WF_FP8, ST_SCALE_E8M0, 40, 200, 0); /* NaN codes: NaN rows on every path */
        ((uint8_t *)o.data)[3 * 200 + 150] = 0x7f;
        check_invariance(&o.w, "FP8 (NaN code)");
        free_w(&o);
    }
}

/* ---- NUMA row split (cpu/cpu.h st_row_split) ----
 * A pool of 4 threads in two teams of 2: with a split weight, every block of
 * rows is computed by a thread of the team owning those rows, and the result
 * is bit-identical to the whole pool's; a split the pool's teams do not match
 * (or a malformed one) is ignored. */
static _Atomic int split_wrong, split_blocks;
static _Atomic int64_t split_cut;

static void split_observer(const st_weight *w, int64_t r0, int64_t r1) {
    (void)w;
    const int th = st_pool_thread_index(), team = th < 2 ? 0 : 1;
    const int64_t cut = atomic_load(&split_cut);
    if (th < 0 || (team == 0 ? r1 > cut : r0 < cut)) atomic_fetch_add(&split_wrong, 1);
    atomic_fetch_add(&split_blocks, 1);
}

static void matmul_row_split(void **state) {
    (void)state;
    st_pool *pool;
    assert_int_equal(st_pool_new(4, false, &pool), 0);
    const int first[2] = {0, 2}, count[2] = {2, 2};
    assert_int_equal(st_pool_set_teams(pool, 2, first, count), 0);
    const struct { st_wfmt f; st_scale_fmt sf; const char *name; } fmts[] = {
        {ST_WF_F32, ST_SCALE_E8M0, "F32"}, {ST_WF_BF16, ST_SCALE_E8M0, "BF16"}, {ST_WF_FP8, ST_SCALE_E8M0, "FP8"},
        {ST_WF_FP8, ST_SCALE_F32, "FP8 (F32 scales)"}, {ST_WF_FP4, ST_SCALE_E8M0, "FP4"}};
    const int64_t rows = 1000, cols = 256;
    float *x = malloc(3 * cols * sizeof(float)), *y0 = malloc(3 * rows * sizeof(float)), *y1 = malloc(3 * rows * sizeof(float));
    for (int64_t i = 0; i < 3 * cols; i++) x[i] = tu_frand();
    for (size_t f = 0; f < ST_ARRAY_LEN(fmts); f++)
        for (int n = 1; n <= 3; n += 2)
            for (int act = 0; act <= 1; act++) {
                owned_w o = make_w(fmts[f].f, fmts[f].sf, rows, cols, 0);
                assert_int_equal(st_matmul(pool, &o.w, x, n, y0, (st_act)act), 0); /* no split: the whole pool */
                st_row_split sp = {.n = 2, .first = {0, 512, rows}};
                o.w.split = &sp;
                atomic_store(&split_cut, 512);
                atomic_store(&split_wrong, 0);
                atomic_store(&split_blocks, 0);
                st_mm_rows_observer = split_observer;
                memset(y1, 0xff, (size_t)(n * rows) * sizeof(float));
                assert_int_equal(st_matmul(pool, &o.w, x, n, y1, (st_act)act), 0);
                st_mm_rows_observer = NULL;
                if (memcmp(y0, y1, (size_t)(n * rows) * sizeof(float)))
                    fail_msg("%s n=%d act=%d: the split changed the result", fmts[f].name, n, act);
                assert_true(atomic_load(&split_blocks) >= 2);
                assert_int_equal(atomic_load(&split_wrong), 0);
                /* ignored: three parts on two teams, a cut off the panel grid, parts out of order */
                const st_row_split bad[] = {{.n = 3, .first = {0, 320, 640, rows}}, {.n = 2, .first = {0, 500, rows}},
                                            {.n = 2, .first = {0, rows + 32, rows}}};
                for (size_t b = 0; b < ST_ARRAY_LEN(bad); b++) {
                    o.w.split = &bad[b];
                    memset(y1, 0xff, (size_t)(n * rows) * sizeof(float));
                    assert_int_equal(st_matmul(pool, &o.w, x, n, y1, (st_act)act), 0);
                    assert_memory_equal(y0, y1, (size_t)(n * rows) * sizeof(float));
                }
                free_w(&o);
            }
    free(x);
    free(y0);
    free(y1);
    st_pool_free(pool);
}

int main(void) {
    tu_rng_set(88172645463325252ull); /* this suite's stream */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sizes_and_check),
        cmocka_unit_test(dequant_every_code),
        cmocka_unit_test(matmul_every_format),
        cmocka_unit_test(matmul_every_code),
        cmocka_unit_test(nan_codes_propagate),
        cmocka_unit_test(bf16_activations),
        cmocka_unit_test(matmul_large_shapes),
        cmocka_unit_test(matmul_batch_invariant),
        cmocka_unit_test(matmul_row_split),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
