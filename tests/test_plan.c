/* KV and weight accounting from configs alone (engine/kv_plan.c and
 * `strata plan`): MODEL.md's figures for V4-Flash and V4-Pro at 1M tokens. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/config.h"
#include "engine/kv_plan.h"
#include "util.h"

#define GIB 1073741824.0

static void flash_and_pro_at_1m(void **state) {
    (void)state;
    st_config c;
    st_kv_plan p;
    assert_int_equal(st_config_load("tests/data/config/flash_official.json", &c), 0);
    st_kv_plan_compute(&c, 1048576, false, &p);
    assert_true(p.entry_bytes == 583 && p.index_key_bytes == 68);
    assert_int_equal(p.n_layers[ST_ATTN_CSA], 21);
    assert_int_equal(p.n_layers[ST_ATTN_HCA], 20);
    assert_true(fabs(p.total_bytes / GIB - 3.4) < 0.05);               /* MODEL.md: about 3.4 GiB */
    assert_true(fabs(p.v32_mla_bytes / GIB - 46.9) < 0.1);             /* about 46.9 GiB */
    assert_true(fabs(100.0 * p.total_bytes / p.v32_mla_bytes - 7.3) < 0.1);
    /* per token per layer: CSA about 163, HCA about 4.6 */
    assert_true(fabs(p.kind_bytes[ST_ATTN_CSA] / 21.0 / 1048576 - 163) < 0.5);
    assert_true(fabs(p.kind_bytes[ST_ATTN_HCA] / 20.0 / 1048576 - 4.6) < 0.1);
    assert_true(p.window_bytes == (uint64_t)(44 * 128 * 583));
    st_config_free(&c);
    assert_int_equal(st_config_load("tests/data/config/pro_official.json", &c), 0);
    st_kv_plan_compute(&c, 1048576, false, &p);
    assert_true(fabs(p.total_bytes / GIB - 4.9) < 0.05);
    assert_true(fabs(100.0 * p.total_bytes / p.v32_mla_bytes - 10.5) < 0.1);
    /* F32 cache: 2048 bytes an entry, 512 an indexer key */
    st_kv_plan f, o;
    st_kv_plan_compute(&c, 4096, true, &f);
    st_kv_plan_compute(&c, 4096, false, &o);
    assert_true(f.entry_bytes == 2048 && f.index_key_bytes == 512);
    assert_true(f.total_bytes > 3 * o.total_bytes); /* 2048/583 on entries, 512/68 on keys */
    st_weight_plan w;
    assert_int_equal(st_weight_plan_compute(&c, &w), 0);
    assert_true(w.routed_one == 3ull * (3072 * 7168 / 2 + 3072 * 7168 / 32)); /* FP4 + ue8m0 per 32 */
    assert_true(w.routed == w.routed_one * 384ull * 61);
    st_config_free(&c);
}

static void plan_json_from_the_binary(void **state) {
    (void)state;
    char cmd[512], *buf;
    snprintf(cmd, sizeof cmd, "%s plan --model tests/data/config/flash_official.json --ctx 1M --json", tu_strata_bin());
    assert_int_equal(tu_run(cmd, &buf), 0);
    cJSON *j = cJSON_Parse(buf), *kv = cJSON_GetObjectItem(j, "kv");
    assert_non_null(kv);
    double total = cJSON_GetObjectItem(kv, "total_bytes")->valuedouble;
    assert_true(fabs(total / GIB - 3.4) < 0.05);
    assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(kv, "by_kind"), "csa"));
    assert_true(cJSON_GetObjectItem(kv, "v32_mla_bytes")->valuedouble > total * 10);
    cJSON_Delete(j);
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(flash_and_pro_at_1m), cmocka_unit_test(plan_json_from_the_binary)};
    return cmocka_run_group_tests_name("plan", tests, NULL, NULL);
}
