/* Saved prompt-prefix KV state (engine/kv_store.c): reuse gives the very
 * logits of computing the same chunks; the longest usable prefix is chosen;
 * corrupt, truncated and foreign files are ignored. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "base/base.h"
#include "engine/kv_store.h"
#include "util.h"

#define FIX "tests/data/fixtures/v4_tiny_a/official"

static void reuse_equals_recompute(void **state) {
    (void)state;
    char dir[64];
    assert_int_equal(tu_tmpdir(dir, sizeof dir, "/tmp/strata-kv-XXXXXX"), 0);
    st_model_opts o = {.numerics = ST_NUMERICS_OFFICIAL, .threads = 1, .quiet = true};
    st_model *m;
    assert_int_equal(st_model_load(FIX, &o, &m), 0);
    const int64_t V = m->vocab;
    int32_t ids[30];
    for (int i = 0; i < 30; i++) ids[i] = (i * 53 + 7) % (int32_t)V;
    uint64_t id = st_kv_model_id(FIX, 0);
    float *a = malloc((size_t)V * 4), *b = malloc((size_t)V * 4), *c = malloc((size_t)V * 4);
    st_seq *s;
    assert_int_equal(st_seq_new(m, &s), 0);
    /* save prefixes of 9 and 17 tokens (past the window of 7 and several compressed blocks) */
    assert_int_equal(st_seq_forward(s, ids, 9, a, false), 0);
    assert_int_equal(st_kv_save(s, ids, 9, a, id, dir), 0);
    assert_int_equal(st_seq_forward(s, ids + 9, 8, a, false), 0);
    assert_int_equal(st_kv_save(s, ids, 17, a, id, dir), 0);
    /* recompute in the same chunks: 9, 8, 13 */
    assert_int_equal(st_seq_forward(s, ids + 17, 13, c, false), 0);
    st_seq_reset(s);
    int64_t got;
    assert_int_equal(st_kv_load_prefix(s, ids, 30, id, dir, b, &got), 0);
    assert_int_equal(got, 17); /* the longest saved prefix */
    assert_int_equal(s->pos, 17);
    assert_memory_equal(a, b, (size_t)V * 4); /* the saved logits of token 17 */
    assert_int_equal(st_seq_forward(s, ids + 17, 13, b, false), 0);
    assert_memory_equal(b, c, (size_t)V * 4);
    /* a prompt that diverges after token 12 can use only the 9-token prefix */
    int32_t other[20];
    memcpy(other, ids, sizeof other);
    other[12] = (other[12] + 1) % (int32_t)V;
    assert_int_equal(st_kv_load_prefix(s, other, 20, id, dir, b, &got), 0);
    assert_int_equal(got, 9);
    /* another model identity sees nothing */
    assert_int_equal(st_kv_load_prefix(s, ids, 30, id ^ 1, dir, b, &got), 0);
    assert_int_equal(got, 0);
    /* corrupt the 17-token file: ignored (warning), falls back to none or 9 */
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[512];
    while ((e = readdir(d)))
        if (strstr(e->d_name, "-17.kv")) snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    closedir(d);
    FILE *f = fopen(path, "r+b");
    fseek(f, 200, SEEK_SET);
    int ch = fgetc(f);
    fseek(f, 200, SEEK_SET);
    fputc(ch ^ 0x40, f);
    fclose(f);
    assert_int_equal(st_kv_load_prefix(s, ids, 30, id, dir, b, &got), 0);
    assert_int_equal(got, 0);
    assert_int_equal(s->pos, 0);
    /* truncated */
    assert_int_equal(truncate(path, 100), 0);
    assert_int_equal(st_kv_load_prefix(s, ids, 30, id, dir, b, &got), 0);
    assert_int_equal(got, 0);
    /* a file of the previous format version (F32 entries), whole and checksummed: ignored */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(st_kv_load_prefix(s, ids, 30, id, dir, b, &got), 0);
    assert_int_equal(got, 9);
    d = opendir(dir);
    while ((e = readdir(d)))
        if (strstr(e->d_name, "-9.kv")) snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    closedir(d);
    char *buf;
    size_t len;
    assert_int_equal(st_read_file(path, 1 << 26, &buf, &len), 0);
    uint32_t version;
    memcpy(&version, buf + 4, 4);
    assert_int_equal(version, 2);
    version = 1;
    memcpy(buf + 4, &version, 4);
    uint64_t sum = XXH3_64bits(buf, len - 8);
    memcpy(buf + len - 8, &sum, 8);
    f = fopen(path, "wb");
    assert_int_equal(fwrite(buf, 1, len, f), len);
    fclose(f);
    free(buf);
    assert_int_equal(st_kv_load_prefix(s, ids, 30, id, dir, b, &got), 0);
    assert_int_equal(got, 0);
    assert_int_equal(tu_rmtree(dir), 0);
    free(a); free(b); free(c);
    st_seq_free(s);
    st_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(reuse_equals_recompute)};
    return cmocka_run_group_tests_name("kv_store", tests, NULL, NULL);
}
