/* cpu/expert.c: the routed/shared expert FFN on every ISA path and thread count,
 * against a double-precision reference of
 *   y += coef * w2(silu(min(w1 x, limit)) * clamp(w3 x, -limit, limit)).
 *
 * Error bounds (NMSE of the increment y_after - y_before against the reference):
 *   ST_ACT_F32, every path                      < 1e-10
 *   ST_ACT_Q8 (FP4 weights), every path         < 1e-3 (int8 activations into w1/w3 and w2)
 *   1, 2, 3 threads                             bit-identical
 *   ST_ACT_F32, each ISA: n tokens in one call
 *   vs one per call vs uneven chunks            bit-identical (batch invariance),
 *   for st_expert_ffn and st_experts_ffn
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/cpu.h"
#include "cpu/formats.h"
#include "util.h"


static st_weight make_w(st_wfmt fmt, int64_t rows, int64_t cols, int scale_e) {
    st_weight w = {.fmt = fmt, .rows = rows, .cols = cols, .scale_fmt = ST_SCALE_E8M0};
    size_t db = st_weight_data_bytes(fmt, rows, cols), sb = st_weight_scale_bytes(fmt, ST_SCALE_E8M0, rows, cols);
    uint8_t *d = malloc(db), *s = malloc(sb ? sb : 1);
    for (size_t i = 0; i < db; i++) {
        d[i] = (uint8_t)tu_rnd();
        if (fmt == ST_WF_FP8 && (d[i] & 0x7f) == 0x7f) d[i] = 0x70;
    }
    for (size_t i = 0; i < sb; i++) s[i] = (uint8_t)(scale_e + (int)(tu_rnd() % 3));
    w.data = d;
    w.scale = s;
    return w;
}
static void free_w(st_weight *w) { free((void *)w->data); free((void *)w->scale); }

static double ref_w(const st_weight *w, int64_t r, int64_t c) {
    const uint8_t *d = w->data, *s = w->scale;
    if (w->fmt == ST_WF_FP8)
        return (double)st_e4m3_to_f32(d[r * w->cols + c]) * st_e8m0_to_f32(s[(r / 128) * ((w->cols + 127) / 128) + c / 128]);
    uint8_t b = d[r * (w->cols / 2) + c / 2];
    return (double)st_e2m1_to_f32((uint8_t)(c & 1 ? b >> 4 : b & 15)) * st_e8m0_to_f32(s[r * (w->cols / 32) + c / 32]);
}

static void ref_expert(const st_expert_w *e, const float *x, int64_t n, const float *coef, float limit, double *out) {
    const int64_t inter = e->w1.rows, dim = e->w1.cols;
    double *h = malloc((size_t)inter * sizeof(double));
    for (int64_t t = 0; t < n; t++) {
        for (int64_t k = 0; k < inter; k++) {
            double g = 0, u = 0;
            for (int64_t c = 0; c < dim; c++) {
                g += ref_w(&e->w1, k, c) * x[t * dim + c];
                u += ref_w(&e->w3, k, c) * x[t * dim + c];
            }
            if (limit > 0) {
                g = fmin(g, limit);
                u = fmax(fmin(u, limit), -limit);
            }
            h[k] = g / (1.0 + exp(-g)) * u * (coef ? coef[t] : 1.0);
        }
        for (int64_t c = 0; c < dim; c++) {
            double s = 0;
            for (int64_t k = 0; k < inter; k++) s += ref_w(&e->w2, c, k) * h[k];
            out[t * dim + c] = s;
        }
    }
    free(h);
}

static st_pool *pools[4];
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

/* amp scales x so that w1 x and w3 x cross the limit for a good share of the hidden units */
static void check_expert(st_wfmt fmt, int64_t dim, int64_t inter, int64_t n, float limit, bool use_coef, float amp,
                         st_act act) {
    st_expert_w e = {make_w(fmt, inter, dim, 124), make_w(fmt, inter, dim, 124), make_w(fmt, dim, inter, 122)};
    float *x = malloc((size_t)(n * dim) * sizeof(float)), coef[64];
    for (int64_t i = 0; i < n * dim; i++) x[i] = tu_frand() * amp;
    for (int i = 0; i < 64; i++) coef[i] = 0.1f + 0.05f * (float)i;
    double *ref = malloc((size_t)(n * dim) * sizeof(double));
    ref_expert(&e, x, n, use_coef ? coef : NULL, limit, ref);
    float *y = malloc((size_t)(n * dim) * sizeof(float)), *y1 = malloc((size_t)(n * dim) * sizeof(float));
    double bound = act == ST_ACT_Q8 && fmt == ST_WF_FP4 ? 1e-3 : 1e-10;
    for (int isa = 0; isa <= (int)st_cpu_isa_best(); isa++) {
        assert_int_equal(st_cpu_set_isa((st_isa)isa), 0);
        for (int th = 1; th <= 3; th++) {
            for (int64_t i = 0; i < n * dim; i++) y[i] = 0.25f; /* accumulates into y */
            assert_int_equal(st_expert_ffn(pools[th], &e, x, n, use_coef ? coef : NULL, limit, y, act), 0);
            if (th == 1) memcpy(y1, y, (size_t)(n * dim) * sizeof(float));
            else if (memcmp(y, y1, (size_t)(n * dim) * sizeof(float)))
                fail_msg("%s: %d threads differ from 1", st_isa_name((st_isa)isa), th);
        }
        double err = 0, sig = 0;
        for (int64_t i = 0; i < n * dim; i++) {
            double d = (y1[i] - 0.25) - ref[i];
            err += d * d;
            sig += ref[i] * ref[i];
        }
        if (!(err / sig < bound))
            fail_msg("%s fmt %d n %lld limit %g act %d: NMSE %g >= %g", st_isa_name((st_isa)isa), fmt, (long long)n,
                     limit, act, err / sig, bound);
    }
    free_w(&e.w1); free_w(&e.w3); free_w(&e.w2);
    free(x); free(ref); free(y); free(y1);
}

static void expert_one_token(void **state) {
    (void)state;
    check_expert(ST_WF_FP4, 256, 96, 1, 10.0f, true, 1.0f, ST_ACT_F32);
    check_expert(ST_WF_FP8, 200, 130, 1, 10.0f, false, 1.0f, ST_ACT_F32);
}

static void expert_batch(void **state) {
    (void)state;
    check_expert(ST_WF_FP4, 256, 96, 5, 10.0f, true, 1.0f, ST_ACT_F32);   /* row kernels */
    check_expert(ST_WF_FP4, 256, 96, 21, 10.0f, true, 1.0f, ST_ACT_F32);  /* panel GEMM */
    check_expert(ST_WF_FP8, 200, 130, 13, 10.0f, true, 1.0f, ST_ACT_F32);
    check_expert(ST_WF_FP4, 256, 96, 21, 10.0f, true, 1.0f, ST_ACT_Q8);
}

/* Large activations: the clamp at 10 is active on many units; limit 0 disables it. */
static void expert_clamp(void **state) {
    (void)state;
    check_expert(ST_WF_FP4, 256, 64, 3, 10.0f, true, 40.0f, ST_ACT_F32);
    check_expert(ST_WF_FP4, 256, 64, 3, 0.0f, true, 40.0f, ST_ACT_F32);
    /* and the clamp really changes the result */
    st_expert_w e = {make_w(ST_WF_FP4, 64, 256, 124), make_w(ST_WF_FP4, 64, 256, 124), make_w(ST_WF_FP4, 256, 64, 122)};
    float x[256], y0[256] = {0}, y1[256] = {0};
    for (int i = 0; i < 256; i++) x[i] = tu_frand() * 40.0f;
    assert_int_equal(st_expert_ffn(pools[2], &e, x, 1, NULL, 10.0f, y0, ST_ACT_F32), 0);
    assert_int_equal(st_expert_ffn(pools[2], &e, x, 1, NULL, 0.0f, y1, ST_ACT_F32), 0);
    assert_true(memcmp(y0, y1, sizeof(y0)) != 0);
    free_w(&e.w1); free_w(&e.w3); free_w(&e.w2);
}

/* The fused FFN equals three st_matmul calls and the SwiGLU written out, bit for bit. */
static void expert_equals_matmuls(void **state) {
    (void)state;
    const int64_t dim = 256, inter = 96, n = 11;
    st_expert_w e = {make_w(ST_WF_FP4, inter, dim, 124), make_w(ST_WF_FP4, inter, dim, 124), make_w(ST_WF_FP4, dim, inter, 122)};
    float *x = malloc(n * dim * sizeof(float)), *g = malloc(n * inter * sizeof(float)), *u = malloc(n * inter * sizeof(float));
    float *o = malloc(n * dim * sizeof(float)), *y = calloc(n * dim, sizeof(float)), coef[11];
    for (int64_t i = 0; i < n * dim; i++) x[i] = tu_frand() * 8.0f;
    for (int i = 0; i < n; i++) coef[i] = 0.3f + 0.1f * (float)i;
    for (int isa = 0; isa <= (int)st_cpu_isa_best(); isa++)
        for (int a = 0; a < 2; a++) {
            st_act act = a ? ST_ACT_Q8 : ST_ACT_F32;
            assert_int_equal(st_cpu_set_isa((st_isa)isa), 0);
            assert_int_equal(st_matmul(pools[2], &e.w1, x, n, g, act), 0);
            assert_int_equal(st_matmul(pools[2], &e.w3, x, n, u, act), 0);
            for (int64_t i = 0; i < n; i++)
                for (int64_t k = 0; k < inter; k++) {
                    float ga = g[i * inter + k], ub = u[i * inter + k];
                    ga = ga > 10.0f ? 10.0f : ga;
                    ub = ub > 10.0f ? 10.0f : ub < -10.0f ? -10.0f : ub;
                    g[i * inter + k] = ga / (1.0f + expf(-ga)) * ub * coef[i];
                }
            assert_int_equal(st_matmul(pools[2], &e.w2, g, n, o, act), 0);
            memset(y, 0, n * dim * sizeof(float));
            assert_int_equal(st_expert_ffn(pools[3], &e, x, n, coef, 10.0f, y, act), 0);
            for (int64_t i = 0; i < n * dim; i++) o[i] = 0.0f + o[i];
            assert_memory_equal(y, o, n * dim * sizeof(float));
        }
    free_w(&e.w1); free_w(&e.w3); free_w(&e.w2);
    free(x); free(g); free(u); free(o); free(y);
}

/* Several experts in one call equal one st_expert_ffn call per expert, in order, bit for bit. */
static void experts_multi_equals_single(void **state) {
    (void)state;
    enum { NE = 3 };
    const int64_t dim = 256, inter = 64;
    st_expert_w ex[NE];
    const st_expert_w *ep[NE];
    for (int k = 0; k < NE; k++) {
        ex[k] = (st_expert_w){make_w(ST_WF_FP4, inter, dim, 124), make_w(ST_WF_FP4, inter, dim, 124), make_w(ST_WF_FP4, dim, inter, 122)};
        ep[k] = &ex[k];
    }
    for (int64_t n = 1; n <= 9; n += 8) {
        float *x = malloc(n * dim * sizeof(float)), *y0 = malloc(n * dim * sizeof(float)), *y1 = malloc(n * dim * sizeof(float));
        float coef[NE * 9];
        for (int64_t i = 0; i < n * dim; i++) x[i] = tu_frand() * 4.0f;
        for (int i = 0; i < NE * 9; i++) coef[i] = 0.05f * (float)(i + 1);
        for (int isa = 0; isa <= (int)st_cpu_isa_best(); isa++)
            for (int a = 0; a < 2; a++) {
                st_act act = a ? ST_ACT_Q8 : ST_ACT_F32;
                assert_int_equal(st_cpu_set_isa((st_isa)isa), 0);
                for (int64_t i = 0; i < n * dim; i++) y0[i] = y1[i] = 0.5f;
                for (int k = 0; k < NE; k++) assert_int_equal(st_expert_ffn(pools[1], ep[k], x, n, coef + k * n, 10.0f, y0, act), 0);
                assert_int_equal(st_experts_ffn(pools[3], ep, NE, x, n, coef, 10.0f, y1, act), 0);
                assert_memory_equal(y0, y1, n * dim * sizeof(float));
            }
        free(x); free(y0); free(y1);
    }
    ex[1].w2.cols = 32;
    float x[256] = {0}, y[256] = {0};
    assert_int_equal(st_experts_ffn(pools[2], ep, NE, x, 1, NULL, 10.0f, y, ST_ACT_F32), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "expert 1 of 3"));
    for (int k = 0; k < NE; k++) { free_w(&ex[k].w1); free_w(&ex[k].w3); free_w(&ex[k].w2); }
}

static void expert_bad_shapes(void **state) {
    (void)state;
    st_expert_w e = {make_w(ST_WF_FP4, 64, 256, 124), make_w(ST_WF_FP4, 64, 256, 124), make_w(ST_WF_FP4, 256, 96, 122)};
    float x[256] = {0}, y[256] = {0};
    assert_int_equal(st_expert_ffn(pools[1], &e, x, 1, NULL, 10.0f, y, ST_ACT_F32), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "w2"));
    e.w2.cols = 64;
    e.w1.cols = 250; /* FP4 needs cols % 32 == 0 */
    assert_int_equal(st_expert_ffn(pools[1], &e, x, 1, NULL, 10.0f, y, ST_ACT_F32), ST_ERR_UNSUPPORTED);
    assert_non_null(strstr(st_last_error(), "expert w1"));
    e.w1.cols = 256;
    assert_int_equal(st_expert_ffn(pools[1], NULL, x, 1, NULL, 10.0f, y, ST_ACT_F32), ST_ERR_INVALID);
    assert_int_equal(st_expert_ffn(pools[1], &e, x, 0, NULL, 10.0f, y, ST_ACT_F32), 0);
    free_w(&e.w1); free_w(&e.w3); free_w(&e.w2);
}


/* ---- batch invariance: token i's output never depends on the batch it came in ---- */

static int64_t rnd_in(int64_t lo, int64_t hi) { return lo + (int64_t)(tu_rnd() % (uint32_t)(hi - lo + 1)); }

/* y += FFN of tokens [0, n) through calls of the given sizes (cycling; 0 ends).
 * ne == 0: st_expert_ffn on e[0]; else st_experts_ffn on ne experts. coef (max(ne, 1), n). */
static void ffn_in_chunks(const st_expert_w *const *e, int ne, const float *x, int64_t n, int64_t dim, const float *coef,
                          const int *sizes, float *y, int pool) {
    int nk = ne ? ne : 1;
    float *c = malloc((size_t)(nk * n) * sizeof(float));
    int64_t t = 0;
    for (int i = 0; t < n; i = sizes[i + 1] ? i + 1 : 0) {
        int64_t len = sizes[i] < n - t ? sizes[i] : n - t;
        for (int k = 0; k < nk; k++) memcpy(c + k * len, coef + k * n + t, (size_t)len * sizeof(float));
        if (ne) assert_int_equal(st_experts_ffn(pools[pool], e, ne, x + t * dim, len, c, 10.0f, y + t * dim, ST_ACT_F32), 0);
        else assert_int_equal(st_expert_ffn(pools[pool], e[0], x + t * dim, len, c, 10.0f, y + t * dim, ST_ACT_F32), 0);
        t += len;
    }
    free(c);
}

static void expert_batch_invariant(void **state) {
    (void)state;
    enum { NE = 3 };
    static const int64_t ns[] = {1, 2, 3, 5, 8, 17, 64, 130};
    static const int one[] = {1, 0}, uneven[] = {5, 3, 11, 1, 9, 2, 0}, big[] = {64, 7, 13, 0};
    for (int isa = 0; isa <= (int)st_cpu_isa_best(); isa++) {
        assert_int_equal(st_cpu_set_isa((st_isa)isa), 0);
        for (int f = 0; f < 2; f++) {
            st_wfmt fmt = f ? ST_WF_FP4 : ST_WF_FP8;
            /* odd shapes: FP4 needs multiples of 32, FP8 takes any */
            int64_t dim = fmt == ST_WF_FP4 ? 32 * rnd_in(2, 5) : rnd_in(70, 160);
            int64_t inter = fmt == ST_WF_FP4 ? 32 * rnd_in(1, 3) : rnd_in(20, 100);
            st_expert_w ex[NE];
            const st_expert_w *ep[NE];
            for (int k = 0; k < NE; k++) {
                ex[k] = (st_expert_w){make_w(fmt, inter, dim, 124), make_w(fmt, inter, dim, 124), make_w(fmt, dim, inter, 122)};
                ep[k] = &ex[k];
            }
            for (size_t i = 0; i < ST_ARRAY_LEN(ns); i++) {
                const int64_t n = ns[i];
                float *x = malloc((size_t)(n * dim) * sizeof(float)), *coef = malloc((size_t)(NE * n) * sizeof(float));
                float *ya = malloc((size_t)(n * dim) * sizeof(float)), *yb = malloc((size_t)(n * dim) * sizeof(float));
                for (int64_t q = 0; q < n * dim; q++) x[q] = tu_frand() * 8.0f; /* the clamp at 10 acts on some units */
                for (int64_t q = 0; q < NE * n; q++) coef[q] = 0.05f + 0.3f * (tu_frand() + 1.0f);
                for (int multi = 0; multi < 2; multi++) {
                    int ne = multi ? NE : 0;
                    for (int64_t q = 0; q < n * dim; q++) ya[q] = 0.25f;
                    ffn_in_chunks(ep, ne, x, n, dim, coef, (const int[]){(int)n, 0}, ya, 1 + (int)(i % 3));
                    for (int mode = 0; mode < 3; mode++) {
                        for (int64_t q = 0; q < n * dim; q++) yb[q] = 0.25f;
                        ffn_in_chunks(ep, ne, x, n, dim, coef, mode == 0 ? one : mode == 1 ? uneven : big, yb, mode == 0 ? 1 : 3 - mode);
                        for (int64_t q = 0; q < n * dim; q++)
                            if (st_f32_bits(ya[q]) != st_f32_bits(yb[q]))
                                fail_msg("%s %s %s dim %lld inter %lld: n %lld at once vs %s: token %lld col %lld: %a vs %a",
                                         st_isa_name((st_isa)isa), multi ? "st_experts_ffn" : "st_expert_ffn",
                                         f ? "FP4" : "FP8", (long long)dim, (long long)inter, (long long)n,
                                         mode == 0 ? "one at a time" : "uneven chunks", (long long)(q / dim),
                                         (long long)(q % dim), ya[q], yb[q]);
                    }
                }
                free(x); free(coef); free(ya); free(yb);
            }
            for (int k = 0; k < NE; k++) { free_w(&ex[k].w1); free_w(&ex[k].w3); free_w(&ex[k].w2); }
        }
    }
}

int main(void) {
    tu_rng_set(0x2545F4914F6CDD1Dull); /* this suite's stream */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(expert_one_token),
        cmocka_unit_test(expert_batch),
        cmocka_unit_test(expert_clamp),
        cmocka_unit_test(expert_equals_matmuls),
        cmocka_unit_test(experts_multi_equals_single),
        cmocka_unit_test(expert_bad_shapes),
        cmocka_unit_test(expert_batch_invariant),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
