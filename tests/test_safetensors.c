/* io/safetensors: streaming writer round trip, shards with an index, and every
 * corruption case giving its specific error (never a crash; run under ASan by
 * `make asan`). Files live in a mkdtemp directory that is removed after. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"
#include "io/safetensors.h"

static char dir[64];

static const char *p(const char *name) {
    static char buf[4][400];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static int setup(void **state) {
    (void)state;
    strcpy(dir, "/tmp/strata-sft-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') unlink(p(e->d_name));
    if (d) closedir(d);
    return rmdir(dir);
}

/* A raw file: 8-byte length of `header` (as given), header, then data. */
static void raw_file(const char *name, uint64_t hlen, const char *header, const void *data, size_t dlen) {
    FILE *f = fopen(p(name), "wb");
    assert_non_null(f);
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)(hlen >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    if (dlen) fwrite(data, 1, dlen, f);
    fclose(f);
}

static void raw(const char *name, const char *header, size_t dlen) {
    static uint8_t zeros[4096];
    raw_file(name, strlen(header), header, zeros, dlen);
}

static void expect_open_error(const char *name, int status, const char *needle) {
    st_sft *s = (st_sft *)1;
    int rc = st_sft_open(p(name), &s);
    if (rc != status || !strstr(st_last_error(), needle))
        fail_msg("%s: rc %d (want %d), message \"%s\" (want \"%s\")", name, rc, status, st_last_error(), needle);
    assert_null(s);
}

/* Write three tensors in odd chunks (spanning boundaries), read them back. */
static void round_trip(void **state) {
    (void)state;
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t b[4] = {0x3f80, 0x4000, 0xbf80, 0};
    int64_t c[4] = {7, -8, 1LL << 40, 0};
    uint8_t all[24 + 8 + 32];
    memcpy(all, a, 24);
    memcpy(all + 24, b, 8);
    memcpy(all + 32, c, 32);
    st_sft_writer *w;
    assert_int_equal(st_sft_writer_new(p("rt.safetensors"), &w), 0);
    assert_int_equal(st_sft_writer_metadata(w, "format", "pt"), 0);
    assert_int_equal(st_sft_writer_declare(w, "a.weight", ST_SFT_F32, 2, (int64_t[]){2, 3}), 0);
    assert_int_equal(st_sft_writer_declare(w, "empty", ST_SFT_F32, 2, (int64_t[]){0, 3}), 0);
    assert_int_equal(st_sft_writer_declare(w, "b \"quoted\"", ST_SFT_BF16, 1, (int64_t[]){4}), 0);
    assert_int_equal(st_sft_writer_declare(w, "c", ST_SFT_I64, 2, (int64_t[]){2, 2}), 0);
    assert_int_equal(st_sft_writer_declare(w, "c", ST_SFT_I64, 1, (int64_t[]){1}), ST_ERR_INVALID);
    assert_string_equal(st_sft_writer_current(w), "a.weight");
    assert_int_equal(st_sft_writer_write(w, all, 5), 0);
    assert_int_equal(st_sft_writer_write(w, all + 5, 22), 0); /* into b */
    assert_string_equal(st_sft_writer_current(w), "b \"quoted\"");
    assert_int_equal(st_sft_writer_declare(w, "late", ST_SFT_U8, 1, (int64_t[]){1}), ST_ERR_INVALID);
    assert_int_equal(st_sft_writer_write(w, all + 27, sizeof all - 27), 0);
    assert_null(st_sft_writer_current(w));
    assert_int_equal(st_sft_writer_write(w, all, 1), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "past the last declared tensor"));
    assert_int_equal(access(p("rt.safetensors"), F_OK), -1); /* not visible before finish */
    assert_int_equal(st_sft_writer_finish(w), 0);

    st_sft *s;
    assert_int_equal(st_sft_open(p("rt.safetensors"), &s), 0);
    assert_int_equal(st_sft_count(s), 4);
    assert_int_equal(st_sft_shard_count(s), 1);
    assert_string_equal(st_sft_metadata(s, "format"), "pt");
    assert_null(st_sft_metadata(s, "nope"));
    const st_sft_tensor *ta = st_sft_find(s, "a.weight"), *tb = st_sft_find(s, "b \"quoted\""), *tc = st_sft_find(s, "c");
    assert_non_null(ta);
    assert_non_null(tb);
    assert_non_null(tc);
    assert_null(st_sft_find(s, "missing"));
    assert_int_equal(ta->dtype, ST_SFT_F32);
    assert_int_equal(ta->ndim, 2);
    assert_int_equal(ta->shape[0], 2);
    assert_int_equal(ta->shape[1], 3);
    assert_int_equal(ta->nbytes, 24);
    assert_int_equal(ta->offset % 8, 0); /* header padded to 8 */
    assert_int_equal(tb->dtype, ST_SFT_BF16);
    assert_int_equal(tc->dtype, ST_SFT_I64);
    const st_sft_tensor *te = st_sft_find(s, "empty");
    assert_non_null(te);
    assert_int_equal(te->nbytes, 0);
    const void *d;
    assert_int_equal(st_sft_data(s, ta, &d), 0);
    assert_memory_equal(d, a, 24);
    assert_int_equal(st_sft_data(s, tc, &d), 0);
    assert_memory_equal(d, c, 32);
    assert_int_equal(st_sft_data(s, te, &d), 0);
    assert_non_null(d);
    uint16_t got[2];
    assert_int_equal(st_sft_pread(s, tb, 4, got, 4), 0);
    assert_memory_equal(got, b + 2, 4);
    assert_int_equal(st_sft_pread(s, tb, 6, got, 4), ST_ERR_INVALID);
    assert_int_equal(st_sft_pread(s, tb, UINT64_MAX, got, 2), ST_ERR_INVALID);
    assert_int_equal(st_sft_shard_size(s, 0), (uint64_t)(tc->offset + 32));
    st_sft_close(s);
    st_sft_close(NULL);

    /* a whole file from memory; a short stream is refused and leaves nothing */
    st_sft_write_tensor t[1] = {{.name = "x", .dtype = ST_SFT_F32, .ndim = 1, .shape = {6}, .data = a}};
    assert_int_equal(st_sft_write_file(p("one.safetensors"), t, 1), 0);
    assert_int_equal(st_sft_writer_new(p("short.safetensors"), &w), 0);
    assert_int_equal(st_sft_writer_declare(w, "x", ST_SFT_F32, 1, (int64_t[]){6}), 0);
    assert_int_equal(st_sft_writer_write(w, a, 8), 0);
    assert_int_equal(st_sft_writer_finish(w), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "tensor x got 8 of its 24 bytes"));
    assert_int_equal(access(p("short.safetensors"), F_OK), -1);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", p("short.safetensors"), (int)getpid());
    assert_int_equal(access(tmp, F_OK), -1);
    assert_int_equal(st_sft_writer_new(p("gone.safetensors"), &w), 0);
    st_sft_writer_abort(w);
    st_sft_writer_abort(NULL);
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", p("gone.safetensors"), (int)getpid());
    assert_int_equal(access(tmp, F_OK), -1);
    unlink(p("one.safetensors"));
    unlink(p("rt.safetensors"));
}

static void corrupt_files(void **state) {
    (void)state;
    FILE *f = fopen(p("tiny.safetensors"), "wb");
    fwrite("abc", 1, 3, f);
    fclose(f);
    expect_open_error("tiny.safetensors", ST_ERR_FORMAT, "shorter than the 8-byte header length");
    raw_file("past.safetensors", 1000, "{}", NULL, 0);
    expect_open_error("past.safetensors", ST_ERR_FORMAT, "header length 1000 goes past the end of the file");
    raw_file("absurd.safetensors", 1ull << 62, "{}", NULL, 0);
    expect_open_error("absurd.safetensors", ST_ERR_FORMAT, "is absurd");
    /* no tensors at all (a metadata-only header): opens, holds nothing (fuzzing found the
     * overlap sort called on the NULL table: undefined behaviour under UBSan) */
    raw("empty.safetensors", "{\"__metadata__\": {\"format\": \"pt\"}}", 0);
    st_sft *none;
    assert_int_equal(st_sft_open(p("empty.safetensors"), &none), 0);
    assert_int_equal(st_sft_count(none), 0);
    assert_null(st_sft_find(none, "a"));
    st_sft_close(none);
    raw("badjson.safetensors", "{\"a\": {\"dtype\": \"F32\", ", 0);
    expect_open_error("badjson.safetensors", ST_ERR_FORMAT, "header is not valid JSON");
    raw("array.safetensors", "[1, 2]  ", 0);
    expect_open_error("array.safetensors", ST_ERR_FORMAT, "header is not a JSON object");
    raw("nodtype.safetensors", "{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4);
    expect_open_error("nodtype.safetensors", ST_ERR_FORMAT, "tensor a: missing or non-string dtype");
    raw("unkdtype.safetensors", "{\"a\": {\"dtype\": \"F12\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4);
    expect_open_error("unkdtype.safetensors", ST_ERR_FORMAT, "tensor a: unknown dtype \"F12\"");
    raw("badshape.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1, -2], \"data_offsets\": [0, 4]}}", 4);
    expect_open_error("badshape.safetensors", ST_ERR_FORMAT, "tensor a: shape[1] is not a non-negative integer");
    raw("noshape.safetensors", "{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4);
    expect_open_error("noshape.safetensors", ST_ERR_FORMAT, "tensor a: missing or non-list shape");
    raw("badoff.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4);
    expect_open_error("badoff.safetensors", ST_ERR_FORMAT, "data_offsets is not a list of two integers");
    raw("backoff.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 0]}}", 4);
    expect_open_error("backoff.safetensors", ST_ERR_FORMAT, "end before they begin");
    raw("mismatch.safetensors", "{\"a\": {\"dtype\": \"BF16\", \"shape\": [2, 3], \"data_offsets\": [0, 8]}}", 8);
    expect_open_error("mismatch.safetensors", ST_ERR_FORMAT, "tensor a: BF16 [2, 3] needs 12 bytes, data_offsets [0, 8] hold 8");
    raw("huge.safetensors",
        "{\"a\": {\"dtype\": \"F64\", \"shape\": [4294967296, 4294967296, 4], \"data_offsets\": [0, 8]}}", 8);
    expect_open_error("huge.safetensors", ST_ERR_FORMAT, "is too large");
    raw("pastend.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", 12);
    expect_open_error("pastend.safetensors", ST_ERR_FORMAT, "go past the end of the data area (12 bytes");
    raw("overlap.safetensors",
        "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
        " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", 12);
    expect_open_error("overlap.safetensors", ST_ERR_FORMAT, "tensors a [0, 8) and b [4, 12) overlap");
    raw("dup.safetensors",
        "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
        " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 8);
    expect_open_error("dup.safetensors", ST_ERR_FORMAT, "tensor a appears twice");
    raw("meta.safetensors", "{\"__metadata__\": [1]}", 0);
    expect_open_error("meta.safetensors", ST_ERR_FORMAT, "__metadata__ is not an object");
    expect_open_error("nothing-here.safetensors", ST_ERR_NOT_FOUND, "no such file");

    /* truncating a valid file by any amount is caught */
    float v[64] = {0};
    st_sft_write_tensor t[2] = {{.name = "w", .dtype = ST_SFT_F32, .ndim = 2, .shape = {8, 4}, .data = v},
                                {.name = "z", .dtype = ST_SFT_F32, .ndim = 1, .shape = {32}, .data = v}};
    assert_int_equal(st_sft_write_file(p("trunc.safetensors"), t, 2), 0);
    struct stat sb;
    assert_int_equal(stat(p("trunc.safetensors"), &sb), 0);
    for (off_t cut = 1; cut < sb.st_size; cut += 7) {
        assert_int_equal(truncate(p("trunc.safetensors"), sb.st_size - cut), 0);
        st_sft *s;
        assert_int_equal(st_sft_open(p("trunc.safetensors"), &s), ST_ERR_FORMAT);
    }
    /* the file shrinking after open: pread reports it, no crash */
    assert_int_equal(st_sft_write_file(p("trunc.safetensors"), t, 2), 0);
    st_sft *s;
    assert_int_equal(st_sft_open(p("trunc.safetensors"), &s), 0);
    assert_int_equal(truncate(p("trunc.safetensors"), sb.st_size - 64), 0);
    float back[32];
    assert_int_equal(st_sft_pread(s, st_sft_find(s, "z"), 0, back, sizeof back), ST_ERR_IO);
    assert_non_null(strstr(st_last_error(), "unexpected end of file"));
    st_sft_close(s);

    /* random byte damage anywhere in a header: an error or a valid open, never a crash */
    assert_int_equal(st_sft_write_file(p("fuzz.safetensors"), t, 2), 0);
    char *orig;
    size_t len;
    assert_int_equal(st_read_file(p("fuzz.safetensors"), 1 << 20, &orig, &len), 0);
    srand(12345);
    for (int it = 0; it < 400; it++) {
        char *m = malloc(len);
        memcpy(m, orig, len);
        for (int k = 0; k < 1 + it % 4; k++) m[(size_t)rand() % ST_MIN(len, (size_t)200)] = (char)rand();
        FILE *fw = fopen(p("fuzz2.safetensors"), "wb");
        fwrite(m, 1, len, fw);
        fclose(fw);
        free(m);
        if (st_sft_open(p("fuzz2.safetensors"), &s) == 0) {
            for (int i = 0; i < st_sft_count(s); i++) {
                const void *d;
                const st_sft_tensor *ti = st_sft_at(s, i);
                assert_true(ti->offset + ti->nbytes <= st_sft_shard_size(s, 0));
                assert_int_equal(st_sft_data(s, ti, &d), 0);
                volatile uint8_t sum = 0;
                for (uint64_t b = 0; b < ti->nbytes; b++) sum += ((const uint8_t *)d)[b];
            }
            st_sft_close(s);
        }
    }
    free(orig);
}

static void shards_and_index(void **state) {
    (void)state;
    char sub[200];
    snprintf(sub, sizeof sub, "%s/ck", dir);
    assert_int_equal(mkdir(sub, 0755), 0);
    float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    st_sft_write_tensor s1[2] = {{.name = "layers.0.w", .dtype = ST_SFT_F32, .ndim = 1, .shape = {4}, .data = v},
                                 {.name = "layers.0.b", .dtype = ST_SFT_F32, .ndim = 1, .shape = {2}, .data = v + 4}};
    st_sft_write_tensor s2[1] = {{.name = "head", .dtype = ST_SFT_F32, .ndim = 2, .shape = {2, 4}, .data = v}};
    char f1[300], f2[300], idx[300];
    snprintf(f1, sizeof f1, "%s/model-00001-of-00002.safetensors", sub);
    snprintf(f2, sizeof f2, "%s/model-00002-of-00002.safetensors", sub);
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", sub);
    assert_int_equal(st_sft_write_file(f1, s1, 2), 0);
    assert_int_equal(st_sft_write_file(f2, s2, 1), 0);

    /* without an index: every *.safetensors in the directory */
    st_sft *s;
    assert_int_equal(st_sft_open(sub, &s), 0);
    assert_int_equal(st_sft_count(s), 3);
    assert_int_equal(st_sft_shard_count(s), 2);
    st_sft_close(s);

    const char *names[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    assert_int_equal(st_sft_write_index(sub, names, 2), 0);
    assert_int_equal(st_sft_open(sub, &s), 0);
    assert_int_equal(st_sft_count(s), 3);
    const st_sft_tensor *h = st_sft_find(s, "head");
    assert_non_null(h);
    assert_int_equal(h->shard, 1);
    assert_non_null(strstr(st_sft_shard_path(s, h->shard), "00002"));
    assert_true(st_sft_shard_fd(s, 1) >= 0);
    const void *d;
    assert_int_equal(st_sft_data(s, h, &d), 0);
    assert_memory_equal(d, v, 32);
    float b[2];
    assert_int_equal(st_sft_pread(s, st_sft_find(s, "layers.0.b"), 0, b, 8), 0);
    assert_memory_equal(b, v + 4, 8);
    st_sft_close(s);
    char *text;
    size_t len;
    assert_int_equal(st_read_file(idx, 1 << 20, &text, &len), 0);
    assert_non_null(strstr(text, "\"total_size\": 56"));
    free(text);

    /* index naming a tensor the shard lacks */
    FILE *f = fopen(idx, "w");
    fprintf(f, "{\"weight_map\": {\"head\": \"%s\", \"ghost\": \"%s\"}}", names[1], names[1]);
    fclose(f);
    assert_int_equal(st_sft_open(sub, &s), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "lists tensor ghost in model-00002-of-00002.safetensors, which has no such tensor"));
    /* index pointing at the wrong shard */
    f = fopen(idx, "w");
    fprintf(f, "{\"weight_map\": {\"head\": \"%s\", \"layers.0.b\": \"%s\", \"layers.0.w\": \"%s\"}}", names[1], names[0],
            names[1]);
    fclose(f);
    assert_int_equal(st_sft_open(sub, &s), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "lists tensor layers.0.w in model-00002-of-00002.safetensors, but it is in"));
    /* index escaping the directory, and a non-object index */
    f = fopen(idx, "w");
    fprintf(f, "{\"weight_map\": {\"head\": \"../x.safetensors\"}}");
    fclose(f);
    assert_int_equal(st_sft_open(sub, &s), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "not a file in this directory"));
    f = fopen(idx, "w");
    fprintf(f, "[]");
    fclose(f);
    assert_int_equal(st_sft_open(sub, &s), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "no weight_map object"));
    /* missing shard */
    assert_int_equal(st_sft_write_index(sub, names, 2), 0);
    assert_int_equal(unlink(f2), 0);
    assert_int_equal(st_sft_open(sub, &s), ST_ERR_NOT_FOUND);
    assert_non_null(strstr(st_last_error(), "weight_map lists tensor head in a missing shard"));
    /* the same tensor in two shards */
    st_sft_write_tensor dup[1] = {{.name = "layers.0.w", .dtype = ST_SFT_F32, .ndim = 1, .shape = {4}, .data = v}};
    assert_int_equal(st_sft_write_file(f2, dup, 1), 0);
    assert_int_equal(st_sft_write_index(sub, names, 2), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "tensor layers.0.w is in two shards"));
    unlink(idx);
    assert_int_equal(st_sft_open(sub, &s), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "tensor layers.0.w is in two shards"));
    unlink(f1);
    unlink(f2);
    assert_int_equal(st_sft_open(sub, &s), ST_ERR_NOT_FOUND);
    assert_non_null(strstr(st_last_error(), "no model.safetensors.index.json and no *.safetensors"));
    rmdir(sub);
}

static void dtype_names(void **state) {
    (void)state;
    for (int i = 0; i < ST_SFT_DTYPE_COUNT; i++) {
        st_sft_dtype d;
        assert_int_equal(st_sft_dtype_parse(st_sft_dtype_name((st_sft_dtype)i), &d), 0);
        assert_int_equal(d, i);
        assert_true(st_sft_dtype_size(d) >= 1);
    }
    st_sft_dtype d;
    assert_int_equal(st_sft_dtype_parse("F8_E4M3FN", &d), ST_ERR_NOT_FOUND);
    assert_int_equal(st_sft_dtype_size(ST_SFT_BF16), 2);
    assert_int_equal(st_sft_dtype_size(ST_SFT_I64), 8);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dtype_names),
        cmocka_unit_test(round_trip),
        cmocka_unit_test(corrupt_files),
        cmocka_unit_test(shards_and_index),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
