/* The public API (include/strata.h) used as a client would: only that header. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata.h"

#define FIX "tests/data/fixtures/v4_tiny_b/official"

static void open_eval_reset(void **state) {
    (void)state;
    st_open_options o = {.numerics = ST_NUMERICS_MODE_REFERENCE, .threads = 2};
    st_model *m = NULL;
    assert_int_equal(st_model_open(FIX, &o, &m), 0);
    int64_t V = st_model_vocab_size(m);
    assert_int_equal(V, 127);
    st_session *s;
    assert_int_equal(st_session_new(m, &s), 0);
    int32_t ids[6] = {3, 17, 99, 4, 60, 2};
    float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
    assert_int_equal(st_session_eval(s, ids, 6, a), 0);
    assert_int_equal(st_session_position(s), 6);
    st_session_reset(s);
    assert_int_equal(st_session_position(s), 0);
    assert_int_equal(st_session_eval(s, ids, 3, NULL), 0);
    assert_int_equal(st_session_eval(s, ids + 3, 3, b), 0);
    for (int64_t v = 0; v < V; v++) assert_true(fabsf(a[v] - b[v]) < 1e-4f);
    int32_t bad = 1000;
    assert_int_equal(st_session_eval(s, &bad, 1, b), ST_ERR_INVALID);
    assert_true(strlen(st_last_error()) > 0);
    free(a);
    free(b);
    st_session_free(s);
    st_model_close(m);
}

static void errors_and_null_safety(void **state) {
    (void)state;
    st_model *m = (st_model *)1;
    assert_true(st_model_open("/nonexistent", NULL, &m) < 0);
    assert_null(m);
    assert_non_null(strstr(st_last_error(), "/nonexistent"));
    st_open_options o = {.numerics = (st_numerics_mode)7};
    assert_int_equal(st_model_open(FIX, &o, &m), ST_ERR_INVALID);
    st_model_close(NULL);
    st_session_free(NULL);
    assert_string_equal(st_version(), STRATA_VERSION_STRING);
    assert_string_equal(st_status_str(ST_ERR_BUDGET), "memory budget exceeded");
}

/* st_session_kv_tiering: identical logits with the CSA entries paged through a
 * small fast budget, a DRAM limit and a spill file; refused on a used session. */
static void kv_tiering_same_logits(void **state) {
    (void)state;
    st_open_options o = {.numerics = ST_NUMERICS_MODE_OFFICIAL, .threads = 2};
    st_model *m = NULL;
    assert_int_equal(st_model_open("tests/data/fixtures/v4_tiny_a/official", &o, &m), 0);
    const int64_t V = st_model_vocab_size(m), N = 2400; /* 600 CSA entries of 57 bytes (official layout): 9 pages of 4 KiB */
    int32_t *ids = malloc((size_t)N * sizeof *ids);
    for (int64_t i = 0; i < N; i++) ids[i] = (int32_t)((i * 2654435761u + 3) % (uint32_t)V);
    float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
    st_session *s;
    assert_int_equal(st_session_new(m, &s), 0);
    assert_int_equal(st_session_eval(s, ids, N - 1, NULL), 0);
    assert_int_equal(st_session_eval(s, ids + N - 1, 1, a), 0);
    st_session_free(s);

    char dir[] = "/tmp/strata-api-kv-XXXXXX";
    assert_non_null(mkdtemp(dir));
    st_kv_tiering_options kv = {.fast_bytes = 6 * 4096, .dram_bytes = 2 * 4096, .spill_dir = dir, .page_bytes = 4096};
    assert_int_equal(st_session_new(m, &s), 0);
    assert_int_equal(st_session_kv_tiering(s, &kv), 0);
    assert_int_equal(st_session_eval(s, ids, N - 1, NULL), 0);
    assert_int_equal(st_session_eval(s, ids + N - 1, 1, b), 0);
    assert_memory_equal(a, b, (size_t)V * sizeof(float));
    /* only on a fresh session; bad sizes are refused */
    assert_int_equal(st_session_kv_tiering(s, &kv), ST_ERR_INVALID);
    st_session_reset(s);
    st_session_free(s);
    assert_int_equal(st_session_new(m, &s), 0);
    st_kv_tiering_options bad = {.fast_bytes = 0};
    assert_int_equal(st_session_kv_tiering(s, &bad), ST_ERR_INVALID);
    bad = (st_kv_tiering_options){.fast_bytes = 1 << 20, .page_bytes = 5000};
    assert_int_equal(st_session_kv_tiering(s, &bad), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "4096"));
    assert_int_equal(st_session_kv_tiering(s, NULL), ST_ERR_INVALID);
    /* a budget below an open page per CSA layer plus one to read: refused at once, naming the least */
    bad = (st_kv_tiering_options){.fast_bytes = 4096, .page_bytes = 4096};
    assert_int_equal(st_session_kv_tiering(s, &bad), ST_ERR_BUDGET);
    assert_non_null(strstr(st_last_error(), "is below the least"));
    assert_int_equal(st_session_eval(s, ids, 8, NULL), 0); /* the session still works, untiered */
    st_session_free(s);
    assert_int_equal(rmdir(dir), 0); /* the spill file was unlinked at creation */
    free(a); free(b); free(ids);
    st_model_close(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(open_eval_reset), cmocka_unit_test(errors_and_null_safety),
                                       cmocka_unit_test(kv_tiering_same_logits)};
    return cmocka_run_group_tests_name("api", tests, NULL, NULL);
}
