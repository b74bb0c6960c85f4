/* kernels/expert_ffn.cu: the routed expert FFN on the GPU must give the CPU's
 * bits exactly (memcmp), so an expert can move between the CPU and GPU tiers
 * without changing any logit.
 *
 * The CPU side is what the engine computes: reference numerics call
 * st_expert_ffn(..., ST_ACT_F32) (into y = -0.0, so y == o bit for bit);
 * official numerics replay engine/moe.c expert_apply through public calls
 * (st_matmul ST_ACT_F32, the SwiGLU loop with st_expf, st_round_bf16,
 * st_act_quant). Compared: st_gpu_emulate_expert_ffn (the kernels' own
 * __host__ __device__ code, CUDA builds) and the kernels on a GPU (skipped
 * without one), for every ISA this CPU runs, FP4 and FP8 (ue8m0 and F32
 * scales) experts, both numerics, n = 1, 3, 9, clamp off/on, coef NULL/set,
 * shapes whose sizes are multiples of 32 but not 64 (and FP8 ones that are not
 * even multiples of 8), and NaN codes / scales in w2 (NaN at the same outputs,
 * the others bit-identical). Without CUDA: every call reports ST_ERR_UNSUPPORTED.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/cpu.h"
#include "cpu/expf.h"
#include "cpu/formats.h"
#include "cpu/pool.h"
#include "cpu/quant.h"
#include "engine/attention.h"
#include "kernels/gpu.h"
#include "util.h"

static st_pool *pool;

static int setup(void **state) {
    (void)state;
    return st_pool_new(2, false, &pool);
}
static int teardown(void **state) {
    (void)state;
    st_pool_free(pool);
    st_cpu_set_isa(st_cpu_isa_best());
    return 0;
}

/* ---- random experts ---------------------------------------------------------- */

typedef enum { KIND_FP4, KIND_FP8_E8M0, KIND_FP8_F32 } kind;
static const char *kind_name[] = {"FP4", "FP8/ue8m0", "FP8/F32"};

static float unif(float lo, float hi) { return lo + (hi - lo) * (float)tu_rng_unif(); }

/* A weight (rows, cols) with realistic magnitudes: |w'| ~ 1 / sqrt(cols). */
static st_weight make_weight(kind k, int64_t rows, int64_t cols) {
    st_weight w = {.fmt = k == KIND_FP4 ? ST_WF_FP4 : ST_WF_FP8, .rows = rows, .cols = cols,
                   .scale_fmt = k == KIND_FP8_F32 ? ST_SCALE_F32 : ST_SCALE_E8M0};
    size_t db = st_weight_data_bytes(w.fmt, rows, cols), sb = st_weight_scale_bytes(w.fmt, w.scale_fmt, rows, cols);
    uint8_t *d = malloc(db), *s = malloc(sb);
    assert_non_null(d);
    assert_non_null(s);
    for (size_t i = 0; i < db; i++) {
        uint8_t b = (uint8_t)tu_rng_u64();
        if (w.fmt == ST_WF_FP8 && (b & 0x7f) == 0x7f) b ^= 1; /* no NaN codes */
        d[i] = b;
    }
    const int base = 127 - (w.fmt == ST_WF_FP4 ? 2 : 6) - (int)round(0.5 * log2((double)cols)); /* e2m1 ~ 2, e4m3 ~ 40 */
    if (k == KIND_FP8_F32)
        for (size_t i = 0; i < sb / 4; i++) ((float *)s)[i] = ldexpf(unif(1.0f, 2.0f), base - 127 + (int)(tu_rng_u64() % 3) - 1);
    else
        for (size_t i = 0; i < sb; i++) s[i] = (uint8_t)(base + (int)(tu_rng_u64() % 3) - 1);
    w.data = d;
    w.scale = s;
    return w;
}

static void free_weight(st_weight *w) {
    free((void *)w->data);
    free((void *)w->scale);
}

static st_gpu_mat gpu_mat(const st_weight *w, const void *data, const void *scale) {
    return (st_gpu_mat){.fmt = w->fmt, .data = data, .scale = scale, .rows = w->rows, .cols = w->cols,
                        .scale_f32 = w->scale_fmt == ST_SCALE_F32};
}

/* ---- the CPU's result --------------------------------------------------------- */

/* engine/moe.c expert_apply, official numerics, without the final y += o. */
static void cpu_official(const st_expert_w *e, const float *x, int64_t n, const float *coef, float limit, float *o) {
    const int64_t inter = e->w1.rows;
    float *g = malloc((size_t)(n * inter) * sizeof(float)), *u = malloc((size_t)(n * inter) * sizeof(float));
    assert_non_null(g);
    assert_non_null(u);
    assert_int_equal(st_matmul(pool, &e->w1, x, n, g, ST_ACT_F32), 0);
    assert_int_equal(st_matmul(pool, &e->w3, x, n, u, ST_ACT_F32), 0);
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < inter; k++) {
            float a = g[i * inter + k], c = u[i * inter + k];
            if (limit > 0) {
                if (a > limit) a = limit;
                if (c > limit) c = limit;
                if (c < -limit) c = -limit;
            }
            float h = a / (1.0f + st_expf(-a)) * c;
            if (coef) h *= coef[i];
            g[i * inter + k] = h;
        }
    st_round_bf16(g, n * inter);
    st_act_quant(g, n, inter, g);
    assert_int_equal(st_matmul(pool, &e->w2, g, n, o, ST_ACT_F32), 0);
    free(g);
    free(u);
}

static void cpu_reference(const st_expert_w *e, const float *x, int64_t n, const float *coef, float limit, float *o) {
    const int64_t dim = e->w2.rows;
    for (int64_t i = 0; i < n * dim; i++) o[i] = -0.0f; /* -0 + v == v for every v, -0 included */
    assert_int_equal(st_expert_ffn(pool, e, x, n, coef, limit, o, ST_ACT_F32), 0);
}

/* ---- one case on every ISA ------------------------------------------------------ */

typedef struct { kind k; int64_t dim, inter; } shape;

static void *to_device(const void *p, size_t bytes) {
    void *d = NULL;
    assert_int_equal(st_gpu_malloc(bytes, &d), 0);
    assert_int_equal(st_gpu_copy_to_device(d, p, bytes, NULL), 0);
    return d;
}

/* o on the GPU for the expert e (host weights copied over). */
static void gpu_run(const st_expert_w *e, st_gpu_ffn f, float *o) {
    const st_weight *ws[3] = {&e->w1, &e->w3, &e->w2};
    st_gpu_mat *ms[3] = {&f.w1, &f.w3, &f.w2};
    void *bufs[6];
    for (int i = 0; i < 3; i++) {
        bufs[2 * i] = to_device(ws[i]->data, st_weight_data_bytes(ws[i]->fmt, ws[i]->rows, ws[i]->cols));
        bufs[2 * i + 1] = to_device(ws[i]->scale, st_weight_scale_bytes(ws[i]->fmt, ws[i]->scale_fmt, ws[i]->rows, ws[i]->cols));
        *ms[i] = gpu_mat(ws[i], bufs[2 * i], bufs[2 * i + 1]);
    }
    const int64_t dim = e->w1.cols, inter = e->w1.rows;
    float *dx = to_device(f.x, (size_t)(f.n * dim) * sizeof(float));
    float *dc = f.coef ? to_device(f.coef, (size_t)f.n * sizeof(float)) : NULL;
    float *dout = NULL;
    void *dscr = NULL;
    assert_int_equal(st_gpu_malloc((size_t)(f.n * dim) * sizeof(float), (void **)&dout), 0);
    assert_int_equal(st_gpu_malloc(st_gpu_ffn_scratch_bytes(inter, f.n), &dscr), 0);
    f.x = dx, f.coef = dc, f.o = dout, f.scratch = dscr;
    st_gpu_stream *s = NULL;
    assert_int_equal(st_gpu_stream_new(&s), 0);
    assert_int_equal(st_gpu_expert_ffn(&f, s), 0);
    assert_int_equal(st_gpu_stream_sync(s), 0);
    assert_int_equal(st_gpu_copy_to_host(o, dout, (size_t)(f.n * dim) * sizeof(float), NULL), 0);
    st_gpu_stream_free(s);
    for (int i = 0; i < 6; i++) st_gpu_free(bufs[i]);
    st_gpu_free(dx);
    st_gpu_free(dc);
    st_gpu_free(dout);
    st_gpu_free(dscr);
}

static void report_mismatch(const char *where, const float *want, const float *got, int64_t count) {
    for (int64_t i = 0; i < count; i++)
        if (!(isnan(want[i]) && isnan(got[i])) && memcmp(&want[i], &got[i], 4)) {
            printf("%s: first difference at %lld: CPU %a, GPU %a\n", where, (long long)i, (double)want[i], (double)got[i]);
            break;
        }
}

/* NaN: outputs NaN at the same places; the others bit-identical (NaN payloads may differ). */
static bool same_nan_aware(const float *want, const float *got, int64_t count) {
    for (int64_t i = 0; i < count; i++)
        if (isnan(want[i]) ? !isnan(got[i]) : memcmp(&want[i], &got[i], 4)) return false;
    return true;
}

/* Output row of w2 that poison_w2 makes NaN. */
#define POISON_ROW 5

/* A NaN into row POISON_ROW of w2: an e4m3 NaN code (FP8) or a NaN ue8m0 scale (FP4). */
static void poison_w2(st_weight *w2) {
    if (w2->fmt == ST_WF_FP8) ((uint8_t *)w2->data)[POISON_ROW * w2->cols + w2->cols - 1] = 0xff;
    else ((uint8_t *)w2->scale)[POISON_ROW * (w2->cols / 32) + w2->cols / 32 - 1] = 255;
}

/* Runs every (numerics, n, clamp/coef) combination of one shape on the active
 * ISA; gpu: on the device, else the emulation; poison: with poison_w2. Returns
 * the number of cases. */
static int run_shape(const shape *sh, bool gpu, bool poison) {
    int cases = 0;
    st_expert_w e = {make_weight(sh->k, sh->inter, sh->dim), make_weight(sh->k, sh->inter, sh->dim),
                     make_weight(sh->k, sh->dim, sh->inter)};
    if (poison) poison_w2(&e.w2);
    const int64_t ns[] = {1, 3, 9}, nmax = 9, dim = sh->dim, inter = sh->inter;
    float *x = malloc((size_t)(nmax * dim) * sizeof(float)), *coef = malloc((size_t)nmax * sizeof(float));
    float *want = malloc((size_t)(nmax * dim) * sizeof(float)), *got = malloc((size_t)(nmax * dim) * sizeof(float));
    void *scratch = malloc(st_gpu_ffn_scratch_bytes(inter, nmax));
    assert_true(x && coef && want && got && scratch);
    for (int official = 0; official <= 1; official++)
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
            for (int variant = 0; variant < 2; variant++) { /* 0: no clamp, no coef; 1: both */
                const int64_t n = ns[ni];
                for (int64_t i = 0; i < n * dim; i++) x[i] = unif(-3.0f, 3.0f); /* g, u ~ 1.5: the clamp at 1 bites */
                for (int64_t i = 0; i < n; i++) coef[i] = unif(0.05f, 1.0f);
                if (official) st_act_quant(x, n, dim, x);
                const float limit = variant ? 1.0f : 0.0f;
                const float *c = variant ? coef : NULL;
                if (official) cpu_official(&e, x, n, c, limit, want);
                else cpu_reference(&e, x, n, c, limit, want);
                st_gpu_ffn f = {.w1 = gpu_mat(&e.w1, e.w1.data, e.w1.scale), .w3 = gpu_mat(&e.w3, e.w3.data, e.w3.scale),
                                .w2 = gpu_mat(&e.w2, e.w2.data, e.w2.scale), .x = x, .n = n, .coef = c, .limit = limit,
                                .official = official, .isa = st_cpu_isa(), .o = got, .scratch = scratch};
                memset(got, 0xff, (size_t)(n * dim) * sizeof(float));
                if (gpu) gpu_run(&e, f, got);
                else assert_int_equal(st_gpu_emulate_expert_ffn(&f), 0);
                char where[160];
                snprintf(where, sizeof where, "%s %s: %s dim %lld inter %lld, %s, n %lld, %s", gpu ? "GPU" : "emulation",
                         st_isa_name(st_cpu_isa()), kind_name[sh->k], (long long)dim, (long long)inter,
                         official ? "official" : "reference", (long long)n, variant ? "limit 1 + coef" : "plain");
                for (int64_t i = 0; i < n * dim; i++) assert_true(!!isnan(want[i]) == (poison && i % dim == POISON_ROW));
                if (poison ? !same_nan_aware(want, got, n * dim) : memcmp(want, got, (size_t)(n * dim) * sizeof(float))) {
                    report_mismatch(where, want, got, n * dim);
                    fail_msg("%s: not bit-identical", where);
                }
                cases++;
            }
    free(x); free(coef); free(want); free(got); free(scratch);
    free_weight(&e.w1); free_weight(&e.w3); free_weight(&e.w2);
    return cases;
}

static const shape SHAPES[] = {
    {KIND_FP4, 96, 224}, {KIND_FP4, 160, 224}, {KIND_FP4, 224, 96},
    {KIND_FP8_E8M0, 96, 224}, {KIND_FP8_E8M0, 160, 224}, {KIND_FP8_E8M0, 100, 200},
    {KIND_FP8_F32, 160, 224}, {KIND_FP8_F32, 100, 72},
};

static void every_isa(bool gpu) {
    tu_rng_seed(gpu ? 11 : 7);
    int cases = 0, isas = 0;
    for (int isa = ST_ISA_GENERIC; isa <= (int)st_cpu_isa_best(); isa++) {
        assert_int_equal(st_cpu_set_isa((st_isa)isa), 0);
        for (size_t s = 0; s < sizeof SHAPES / sizeof SHAPES[0]; s++) cases += run_shape(&SHAPES[s], gpu, false);
        cases += run_shape(&SHAPES[0], gpu, true);  /* FP4: a NaN scale */
        cases += run_shape(&SHAPES[3], gpu, true);  /* FP8: a NaN code */
        isas++;
    }
    st_cpu_set_isa(st_cpu_isa_best());
    printf("%s: %d cases bit-identical on %d ISA(s)\n", gpu ? "GPU" : "emulation", cases, isas);
}

/* ---- tests ------------------------------------------------------------------------- */

static void emulation_matches_cpu_bits(void **state) {
    (void)state;
    if (!st_gpu_compiled()) return; /* no kernels to emulate: see stubs_report_unsupported */
    every_isa(false);
}

static void gpu_matches_cpu_bits(void **state) {
    (void)state;
    if (st_gpu_device_count(NULL) == 0) skip(); /* no GPU here */
    every_isa(true);
}

static void bad_arguments_are_rejected(void **state) {
    (void)state;
    if (!st_gpu_compiled()) return;
    st_weight a = make_weight(KIND_FP4, 64, 96), b = make_weight(KIND_FP4, 96, 64);
    float x[96] = {0}, o[96], scratch[256];
    st_gpu_ffn f = {.w1 = gpu_mat(&a, a.data, a.scale), .w3 = gpu_mat(&a, a.data, a.scale), .w2 = gpu_mat(&b, b.data, b.scale),
                    .x = x, .n = 1, .isa = ST_ISA_AVX2, .o = o, .scratch = scratch};
    assert_true(st_gpu_ffn_scratch_bytes(64, 1) <= sizeof scratch);
    assert_int_equal(st_gpu_emulate_expert_ffn(&f), 0);
    st_gpu_ffn bad = f;
    bad.w2.rows = 95;
    assert_int_equal(st_gpu_emulate_expert_ffn(&bad), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "w2"));
    bad = f;
    bad.w1.fmt = ST_WF_BF16;
    assert_int_equal(st_gpu_emulate_expert_ffn(&bad), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "format"));
    bad = f;
    bad.isa = 7;
    assert_int_equal(st_gpu_emulate_expert_ffn(&bad), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "isa 7"));
    bad = f;
    bad.scratch = NULL;
    assert_int_equal(st_gpu_emulate_expert_ffn(&bad), ST_ERR_INVALID);
    assert_int_equal(st_gpu_emulate_expert_ffn(NULL), ST_ERR_INVALID);
    if (st_gpu_device_count(NULL) == 0) assert_int_equal(st_gpu_expert_ffn(&f, NULL), ST_ERR_UNSUPPORTED);
    free_weight(&a);
    free_weight(&b);
}

static void stubs_report_unsupported(void **state) {
    (void)state;
    if (st_gpu_compiled()) return; /* the CUDA build is checked above */
    st_gpu_ffn f = {0};
    assert_int_equal(st_gpu_expert_ffn(&f, NULL), ST_ERR_UNSUPPORTED);
    assert_int_equal(st_gpu_emulate_expert_ffn(&f), ST_ERR_UNSUPPORTED);
    assert_non_null(strstr(st_last_error(), "not compiled in"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(stubs_report_unsupported),
        cmocka_unit_test(bad_arguments_are_rejected),
        cmocka_unit_test(emulation_matches_cpu_bits),
        cmocka_unit_test(gpu_matches_cpu_bits),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
