/* The whole model against transformers' fixtures (tests/data/fixtures, made by
 * tests/tools/gen_fixtures.py): reference numerics to 1e-4 of the logit range
 * in both checkpoint layouts; official numerics bounded by KL divergence and
 * top-1 agreement; incremental decode and chunked prefill equal to one
 * prefill; synth determinism; clear errors for broken checkpoints. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/fidelity.h"
#include "engine/model.h"
#include "engine/synth.h"
#include "util.h"

#define FIXTURES "tests/data/fixtures"

typedef struct fixture_seq {
    int32_t *ids;
    int64_t T, V;
    float *logits; /* (T, V) transformers F32 */
    double py_kl, py_top1; /* the official Python code's default numerics vs transformers */
} fixture_seq;

typedef struct fixture {
    fixture_seq seq[4];
    int n;
} fixture;

static void fixture_load(const char *name, fixture *f) {
    memset(f, 0, sizeof *f);
    char path[512], *json;
    snprintf(path, sizeof path, FIXTURES "/%s/fixture.json", name);
    assert_int_equal(st_read_file(path, 1 << 24, &json, NULL), 0);
    /* Python's json writes Infinity, which is not JSON: blank it to a number */
    for (char *p = strstr(json, "Infinity"); p; p = strstr(p, "Infinity")) memcpy(p, "1e308   ", 8);
    cJSON *root = cJSON_Parse(json);
    assert_non_null(root);
    cJSON *seqs = cJSON_GetObjectItem(root, "sequences"), *s;
    cJSON_ArrayForEach(s, seqs) {
        fixture_seq *q = &f->seq[f->n];
        cJSON *ids = cJSON_GetObjectItem(s, "ids"), *id;
        q->T = cJSON_GetArraySize(ids);
        q->V = (int64_t)cJSON_GetObjectItem(s, "vocab")->valuedouble;
        q->ids = malloc((size_t)q->T * sizeof(int32_t));
        int64_t k = 0;
        cJSON_ArrayForEach(id, ids) q->ids[k++] = (int32_t)id->valuedouble;
        cJSON *o = cJSON_GetObjectItem(s, "official_default_numerics_vs_transformers");
        q->py_kl = cJSON_GetObjectItem(o, "mean_kl")->valuedouble;
        q->py_top1 = cJSON_GetObjectItem(o, "top1_agreement")->valuedouble;
        snprintf(path, sizeof path, FIXTURES "/%s/%s", name, cJSON_GetObjectItem(s, "logits")->valuestring);
        char *bin;
        size_t len;
        assert_int_equal(st_read_file(path, 1 << 26, &bin, &len), 0);
        assert_int_equal(len, (size_t)(q->T * q->V) * sizeof(float));
        q->logits = (float *)bin;
        f->n++;
    }
    cJSON_Delete(root);
    free(json);
}

static void fixture_free(fixture *f) {
    for (int i = 0; i < f->n; i++) { free(f->seq[i].ids); free(f->seq[i].logits); }
}

static st_model *load(const char *dir, st_numerics num, int64_t chunk) {
    st_model_opts o = {.numerics = num, .chunk = chunk};
    return tu_load(dir, &o, 2);
}

static float *run_all(st_model *m, const int32_t *ids, int64_t T) {
    st_seq *s;
    assert_int_equal(st_seq_new(m, &s), 0);
    float *lg = malloc((size_t)(T * m->vocab) * sizeof(float));
    assert_int_equal(st_seq_forward(s, ids, T, lg, true), 0);
    st_seq_free(s);
    return lg;
}

static double max_err_over_range(const float *a, const float *ref, int64_t n) {
    float lo = INFINITY, hi = -INFINITY;
    double e = 0;
    for (int64_t i = 0; i < n; i++) {
        lo = fminf(lo, ref[i]);
        hi = fmaxf(hi, ref[i]);
        e = fmax(e, fabs((double)a[i] - ref[i]));
    }
    return e / (hi - lo);
}

static void reference_matches(const char *name, const char *sub) {
    fixture f;
    fixture_load(name, &f);
    char dir[256];
    snprintf(dir, sizeof dir, FIXTURES "/%s%s", name, sub);
    st_model *m = load(dir, ST_NUMERICS_REFERENCE, 0);
    for (int i = 0; i < f.n; i++) {
        assert_int_equal(m->vocab, f.seq[i].V);
        float *lg = run_all(m, f.seq[i].ids, f.seq[i].T);
        double e = max_err_over_range(lg, f.seq[i].logits, f.seq[i].T * f.seq[i].V);
        print_message("  %s%s seq%d: max |strata - transformers| / range = %.3g (bound 1e-4)\n", name, sub, i, e);
        assert_true(e < 1e-4);
        free(lg);
    }
    st_model_free(m);
    fixture_free(&f);
}

static void reference_a_transformers_layout(void **s) { (void)s; reference_matches("v4_tiny_a", ""); }
static void reference_a_official_layout(void **s) { (void)s; reference_matches("v4_tiny_a", "/official"); }
static void reference_b_transformers_layout(void **s) { (void)s; reference_matches("v4_tiny_b", ""); }
static void reference_b_official_layout(void **s) { (void)s; reference_matches("v4_tiny_b", "/official"); }

/* Official numerics (FP8 cache, FP4 indexer, activation quantisation) against
 * the F32 reference: mean KL at most twice, top-1 at most 0.1 below what the
 * official Python code itself reaches on the same fixture. */
static void official_numerics_bounded(const char *name) {
    fixture f;
    fixture_load(name, &f);
    char dir[256];
    snprintf(dir, sizeof dir, FIXTURES "/%s/official", name);
    st_model *m = load(dir, ST_NUMERICS_OFFICIAL, 0);
    double kl = 0, py_kl = 0, py_top1 = 0;
    int64_t agree = 0, n = 0;
    for (int i = 0; i < f.n; i++) {
        float *lg = run_all(m, f.seq[i].ids, f.seq[i].T);
        st_logits_kl_top1(f.seq[i].logits, lg, f.seq[i].T, f.seq[i].V, &kl, &agree);
        py_kl += f.seq[i].py_kl * (double)f.seq[i].T;
        py_top1 += f.seq[i].py_top1 * (double)f.seq[i].T;
        n += f.seq[i].T;
        free(lg);
    }
    kl /= (double)n;
    py_kl /= (double)n;
    py_top1 /= (double)n;
    double top1 = (double)agree / (double)n;
    print_message("  %s official numerics: mean KL %.4f (python official %.4f), top-1 %.3f (python %.3f)\n", name, kl,
                  py_kl, top1, py_top1);
    assert_true(kl <= 2 * py_kl);
    assert_true(top1 >= py_top1 - 0.1);
    assert_true(kl > 0); /* the simulation is on: it must differ from F32 */
    st_model_free(m);
    fixture_free(&f);
}

static void official_a(void **s) { (void)s; official_numerics_bounded("v4_tiny_a"); }
static void official_b(void **s) { (void)s; official_numerics_bounded("v4_tiny_b"); }

/* Prefill once == prefill in chunks == prefill one token then decode. */
static void incremental_equals_prefill(void **state) {
    (void)state;
    fixture f;
    fixture_load("v4_tiny_a", &f);
    const fixture_seq *q = &f.seq[0];
    for (int num = 0; num < 2; num++) {
        st_model *m = load(FIXTURES "/v4_tiny_a/official", (st_numerics)num, 0);
        float *full = run_all(m, q->ids, q->T);
        int64_t chunks[] = {1, 3, 8, 29};
        for (size_t c = 0; c < ST_ARRAY_LEN(chunks); c++) {
            m->chunk = chunks[c];
            float *lg = run_all(m, q->ids, q->T);
            double e = max_err_over_range(lg, full, q->T * q->V);
            assert_true(e < 1e-5);
            free(lg);
        }
        m->chunk = 0;
        /* token by token through st_seq_forward's decode path */
        st_seq *s;
        assert_int_equal(st_seq_new(m, &s), 0);
        float *one = malloc((size_t)q->V * sizeof(float));
        double worst = 0;
        for (int64_t t = 0; t < q->T; t++) {
            assert_int_equal(st_seq_forward(s, &q->ids[t], 1, one, false), 0);
            worst = fmax(worst, max_err_over_range(one, full + t * q->V, q->V));
        }
        assert_true(worst < 1e-5);
        /* reset starts a new sequence with no trace of the old one */
        st_seq_reset(s);
        assert_int_equal(st_seq_forward(s, q->ids, 5, one, false), 0);
        assert_true(max_err_over_range(one, full + 4 * q->V, q->V) < 1e-5);
        free(one);
        st_seq_free(s);
        free(full);
        st_model_free(m);
    }
    fixture_free(&f);
}

static char *tmpdir(void) {
    char *d = strdup("/tmp/strata-model-XXXXXX");
    assert_non_null(mkdtemp(d));
    return d;
}

static int files_equal(const char *a, const char *b) {
    char *x, *y;
    size_t lx, ly;
    if (st_read_file(a, 1 << 28, &x, &lx) || st_read_file(b, 1 << 28, &y, &ly)) return 0;
    int eq = lx == ly && !memcmp(x, y, lx);
    free(x);
    free(y);
    return eq;
}

static void synth_is_deterministic_and_runs(void **state) {
    (void)state;
    char *d = tmpdir(), a[300], b[300], c[300], fa[400], fb[400], fc[400];
    snprintf(a, sizeof a, "%s/a", d);
    snprintf(b, sizeof b, "%s/b", d);
    snprintf(c, sizeof c, "%s/c", d);
    const st_synth_preset *p = st_synth_find("tiny");
    assert_non_null(p);
    assert_int_equal(st_synth_write(p, a, 7, NULL, true), 0);
    assert_int_equal(st_synth_write(p, b, 7, NULL, true), 0);
    assert_int_equal(st_synth_write(p, c, 8, NULL, true), 0);
    snprintf(fa, sizeof fa, "%s/model.safetensors", a);
    snprintf(fb, sizeof fb, "%s/model.safetensors", b);
    snprintf(fc, sizeof fc, "%s/model.safetensors", c);
    assert_true(files_equal(fa, fb));
    assert_false(files_equal(fa, fc));
    st_model *m = load(a, ST_NUMERICS_OFFICIAL, 0);
    int32_t ids[40];
    for (int i = 0; i < 40; i++) ids[i] = (i * 37 + 11) % (int)m->vocab;
    float *lg = run_all(m, ids, 40);
    double mn = INFINITY, mx = -INFINITY;
    for (int64_t i = 0; i < 40 * m->vocab; i++) {
        assert_true(isfinite(lg[i]));
        mn = fmin(mn, lg[i]);
        mx = fmax(mx, lg[i]);
    }
    assert_true(mx - mn > 1.0 && mx - mn < 100.0); /* sane, not flat, not exploding */
    free(lg);
    st_model_free(m);
    assert_int_equal(tu_rmtree(d), 0);
    free(d);
}

/* A tensor of the wrong shape and a missing tensor: refused by name. */
static void broken_checkpoints_are_refused(void **state) {
    (void)state;
    char *d = tmpdir(), cmd[1024];
    snprintf(cmd, sizeof cmd, "cp -r " FIXTURES "/v4_tiny_b/official/. '%s/' && sed -i 's/\"q_lora_rank\": *[0-9]*/\"q_lora_rank\": 40/' '%s/config.json'", d, d);
    assert_int_equal(system(cmd), 0);
    st_model_opts o = {.quiet = true};
    st_model *m = NULL;
    assert_int_not_equal(st_model_load(d, &o, &m), 0);
    assert_null(m);
    assert_non_null(strstr(st_last_error(), "wq_a"));
    /* a truncated shard */
    snprintf(cmd, sizeof cmd, "cp " FIXTURES "/v4_tiny_b/official/config.json '%s/' && truncate -s 5000 '%s/model.safetensors'", d, d);
    assert_int_equal(system(cmd), 0);
    assert_int_not_equal(st_model_load(d, &o, &m), 0);
    assert_null(m);
    assert_true(strlen(st_last_error()) > 10);
    /* no config at all */
    assert_int_not_equal(st_model_load("/nonexistent/strata", &o, &m), 0);
    assert_int_equal(tu_rmtree(d), 0);
    free(d);
}

static void bad_token_ids_are_refused(void **state) {
    (void)state;
    st_model *m = load(FIXTURES "/v4_tiny_b/official", ST_NUMERICS_OFFICIAL, 0);
    st_seq *s;
    assert_int_equal(st_seq_new(m, &s), 0);
    int32_t ids[2] = {3, (int32_t)m->vocab};
    assert_int_equal(st_seq_forward(s, ids, 2, NULL, false), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "outside the vocabulary"));
    st_seq_free(s);
    st_model_free(m);
}

int main(void) {
    if (access(FIXTURES, R_OK)) { fprintf(stderr, "run from the repository root\n"); return 1; }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reference_a_transformers_layout), cmocka_unit_test(reference_a_official_layout),
        cmocka_unit_test(reference_b_transformers_layout), cmocka_unit_test(reference_b_official_layout),
        cmocka_unit_test(official_a),                      cmocka_unit_test(official_b),
        cmocka_unit_test(incremental_equals_prefill),      cmocka_unit_test(synth_is_deterministic_and_runs),
        cmocka_unit_test(broken_checkpoints_are_refused),  cmocka_unit_test(bad_token_ids_are_refused),
    };
    return cmocka_run_group_tests_name("model", tests, NULL, NULL);
}
