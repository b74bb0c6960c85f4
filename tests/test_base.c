/* base/: size parsing, error messages, number formats, thread pool. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>

#include "base/base.h"
#include "cpu/formats.h"
#include "cpu/pool.h"

static void parse_sizes(void **state) {
    (void)state;
    uint64_t v;
    assert_int_equal(st_parse_size("4096", 0, "x", &v), 0); assert_int_equal(v, 4096);
    assert_int_equal(st_parse_size("512M", 0, "x", &v), 0); assert_int_equal(v, 512ull << 20);
    assert_int_equal(st_parse_size("1.5GiB", 0, "x", &v), 0); assert_int_equal(v, 3ull << 29);
    assert_int_equal(st_parse_size("25%", 1000, "x", &v), 0); assert_int_equal(v, 250);
    assert_int_equal(st_parse_size("25%", 0, "--dram-budget", &v), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "--dram-budget"));
    assert_int_equal(st_parse_size("12Q", 0, "x", &v), ST_ERR_INVALID);
    assert_int_equal(st_parse_size("-3", 0, "x", &v), ST_ERR_INVALID);
    assert_int_equal(st_parse_size("", 0, "x", &v), ST_ERR_INVALID);
}

static void error_prefix(void **state) {
    (void)state;
    st_error(ST_ERR_FORMAT, "tensor %s bad", "a.b");
    st_error_prefix(ST_ERR_FORMAT, "file %s: ", "x.safetensors");
    assert_string_equal(st_last_error(), "file x.safetensors: tensor a.b bad");
}

static void e4m3_all_codes(void **state) {
    (void)state;
    for (int b = 0; b < 256; b++) {
        float f = st_e4m3_to_f32((uint8_t)b);
        if ((b & 0x7f) == 0x7f) { assert_true(isnan(f)); continue; }
        assert_int_equal(st_f32_to_e4m3(f) & ((b & 0x7f) ? 0xff : 0x7f), b & ((b & 0x7f) ? 0xff : 0x7f));
    }
    assert_true(st_e4m3_to_f32(0x7e) == 448.0f);
    assert_true(st_e4m3_to_f32(0x01) == ldexpf(1, -9));
    assert_int_equal(st_f32_to_e4m3(1e6f), 0x7e);
    assert_int_equal(st_f32_to_e4m3(-1e6f), 0xfe);
    /* halfway between 1.0 and 1.125 rounds to even (1.0) */
    assert_int_equal(st_f32_to_e4m3(1.0625f), st_f32_to_e4m3(1.0f));
}

static void e2m1_and_e8m0(void **state) {
    (void)state;
    for (int n = 0; n < 16; n++) assert_int_equal(st_f32_to_e2m1(st_e2m1_to_f32((uint8_t)n)) & (n & 7 ? 15 : 7), n & (n & 7 ? 15 : 7));
    assert_true(st_e2m1_to_f32(7) == 6.0f && st_e2m1_to_f32(15) == -6.0f);
    assert_int_equal(st_f32_to_e2m1(2.5f), 4); /* tie 2 vs 3 -> even mantissa (2) */
    assert_true(st_e8m0_to_f32(127) == 1.0f);
    assert_true(st_e8m0_to_f32(254) == ldexpf(1, 127));
    assert_true(st_e8m0_to_f32(1) == ldexpf(1, -126));
    assert_true(st_e8m0_to_f32(0) == ldexpf(1, -127));
    assert_true(isnan(st_e8m0_to_f32(255)));
    assert_true(st_bf16_to_f32(st_f32_to_bf16(1.0f)) == 1.0f);
    assert_int_equal(st_f32_to_bf16(1.00390625f), 0x3f80); /* tie to even */
}

typedef struct { _Atomic long sum; int64_t n; } pool_ctx;
static void pool_work(void *c, int ith, int nth) {
    pool_ctx *p = c;
    int64_t lo, hi;
    st_split(p->n, ith, nth, 1, &lo, &hi);
    long s = 0;
    for (int64_t i = lo; i < hi; i++) s += i;
    atomic_fetch_add(&p->sum, s);
}

static void pool_runs_all_items(void **state) {
    (void)state;
    for (int nth = 1; nth <= 4; nth++) {
        st_pool *pool;
        assert_int_equal(st_pool_new(nth, nth <= 2, &pool), 0);
        assert_int_equal(st_pool_size(pool), nth);
        for (int rep = 0; rep < 200; rep++) {
            pool_ctx c = {.n = 1000 + rep};
            st_pool_run(pool, pool_work, &c);
            assert_int_equal(c.sum, (long)c.n * (c.n - 1) / 2);
        }
        st_pool_free(pool);
    }
    st_pool_free(NULL);
    pool_ctx c = {.n = 10};
    st_pool_run(NULL, pool_work, &c);
    assert_int_equal(c.sum, 45);
}

static void split_covers(void **state) {
    (void)state;
    for (int nth = 1; nth < 7; nth++) {
        int64_t prev = 0;
        for (int i = 0; i < nth; i++) {
            int64_t lo, hi;
            st_split(1000, i, nth, 32, &lo, &hi);
            assert_int_equal(lo, prev);
            assert_true(lo % 32 == 0 || lo == 1000);
            prev = hi;
        }
        assert_int_equal(prev, 1000);
    }
}

/* st_grow: doubles (at least 16, at least what is needed), keeps the contents, leaves a large enough array alone. */
static void grow_arrays(void **state) {
    (void)state;
    int *v = NULL;
    int64_t cap = 0;
    assert_int_equal(st_grow((void **)&v, &cap, 5, sizeof *v), 0);
    assert_int_equal(cap, 16);
    for (int i = 0; i < 16; i++) v[i] = i;
    int *before = v;
    assert_int_equal(st_grow((void **)&v, &cap, 16, sizeof *v), 0);
    assert_ptr_equal(v, before);
    assert_int_equal(cap, 16);
    assert_int_equal(st_grow((void **)&v, &cap, 17, sizeof *v), 0);
    assert_int_equal(cap, 32);
    assert_int_equal(st_grow((void **)&v, &cap, 100, sizeof *v), 0);
    assert_int_equal(cap, 100);
    for (int i = 0; i < 16; i++) assert_int_equal(v[i], i);
    free(v);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(grow_arrays),
        cmocka_unit_test(parse_sizes),   cmocka_unit_test(error_prefix),        cmocka_unit_test(e4m3_all_codes),
        cmocka_unit_test(e2m1_and_e8m0), cmocka_unit_test(pool_runs_all_items), cmocka_unit_test(split_covers),
    };
    return cmocka_run_group_tests_name("base", tests, NULL, NULL);
}
