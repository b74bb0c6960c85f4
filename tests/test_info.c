/* `strata info` (run as a program: STRATA_BIN, else the strata beside this
 * suite's directory) and the io_uring / O_DIRECT probe it reports. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <cJSON.h>
#include <dirent.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/base.h"
#include "io/uring_probe.h"
#include "kernels/gpu.h"
#include "util.h"

static char strata_bin[PATH_MAX];

static void find_strata(void) {
    const char *env = getenv("STRATA_BIN");
    if (env && *env) {
        snprintf(strata_bin, sizeof strata_bin, "%s", env);
        return;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) n = 0;
    self[n] = 0;
    /* BUILD/tests/test_info -> BUILD/strata */
    snprintf(strata_bin, sizeof strata_bin, "%s/../strata", dirname(self));
}

/* Runs `strata ARGS`, returns its exit code; *out gets stdout (free it). */
static int run_strata(const char *args, char **out) {
    char cmd[PATH_MAX + 256];
    snprintf(cmd, sizeof cmd, "'%s' %s 2>/dev/null", strata_bin, args);
    return tu_run(cmd, out);
}

static const cJSON *item(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) print_error("missing field \"%s\"\n", key);
    assert_non_null(v);
    return v;
}

static double number(const cJSON *o, const char *key) {
    const cJSON *v = item(o, key);
    assert_true(cJSON_IsNumber(v));
    return v->valuedouble;
}

static const char *string(const cJSON *o, const char *key) {
    const cJSON *v = item(o, key);
    assert_true(cJSON_IsString(v));
    return v->valuestring;
}

static void info_json_is_complete_and_sane(void **state) {
    (void)state;
    if (access(strata_bin, X_OK) != 0) fail_msg("strata binary not found at %s (set STRATA_BIN)", strata_bin);
    char *out;
    assert_int_equal(run_strata("info --json", &out), 0);
    cJSON *root = cJSON_Parse(out);
    if (!root) fail_msg("strata info --json printed something that is not JSON:\n%s", out);
    assert_string_equal(string(root, "version"), st_version());

    const cJSON *cpu = item(root, "cpu");
    assert_true(strlen(string(cpu, "model")) > 0);
    assert_true(cJSON_IsArray(item(cpu, "features")));
    const char *k = string(cpu, "kernels");
    assert_true(!strcmp(k, "generic") || !strcmp(k, "avx2") || !strcmp(k, "avx512"));
    double cores = number(cpu, "cores"), pus = number(cpu, "pus");
    assert_true(cores >= 1 && pus >= cores && number(cpu, "packages") >= 1);

    const cJSON *numa = item(root, "numa");
    double nodes = number(numa, "count");
    assert_true(nodes >= 1);
    const cJSON *node_list = item(numa, "nodes"), *node;
    assert_int_equal(cJSON_GetArraySize(node_list), (int)nodes);
    cJSON_ArrayForEach(node, node_list) assert_true(number(node, "memory_bytes") > 0);
    assert_true(number(numa, "memory_bytes") >= 64.0 * 1024 * 1024);

    const cJSON *hp = item(root, "huge_pages"), *sz;
    cJSON_ArrayForEach(sz, item(hp, "sizes")) {
        assert_true(number(sz, "size_bytes") >= 2.0 * 1024 * 1024);
        assert_true(number(sz, "free") <= number(sz, "total"));
    }
    assert_true(strlen(string(hp, "transparent")) > 0);

    const cJSON *io = item(root, "io"), *u = item(io, "io_uring"), *od = item(io, "o_direct");
    assert_true(cJSON_IsBool(item(u, "available")));
    if (!cJSON_IsTrue(item(u, "available"))) assert_true(strlen(string(u, "reason")) > 0);
    assert_true(cJSON_IsArray(item(u, "ops")));
    assert_true(cJSON_IsBool(item(od, "supported")));
    if (!cJSON_IsTrue(item(od, "supported"))) assert_true(strlen(string(od, "reason")) > 0);

    const cJSON *gpu = item(root, "gpu");
    assert_int_equal(cJSON_IsTrue(item(gpu, "cuda_compiled")), st_gpu_compiled());
    const char *reason;
    int count = st_gpu_device_count(&reason);
    assert_int_equal((int)number(gpu, "count"), count);
    assert_int_equal(cJSON_GetArraySize(item(gpu, "devices")), count);
    if (count == 0) assert_string_equal(string(gpu, "reason"), reason), assert_true(strlen(reason) > 0);

    const cJSON *lib = item(root, "libraries");
    const char *names[] = {"hwloc", "libnuma", "openblas", "liburing", "cjson", "xxhash", "pcre2", "utf8proc", "cuda_runtime"};
    for (size_t i = 0; i < ST_ARRAY_LEN(names); i++) assert_true(strlen(string(lib, names[i])) > 0);
    assert_string_equal(string(lib, "cjson"), cJSON_Version());
    assert_true(strncmp(string(lib, "openblas"), "OpenBLAS", 8) == 0);
    if (!st_gpu_compiled()) assert_string_equal(string(lib, "cuda_runtime"), "not compiled in");
    cJSON_Delete(root);
    free(out);
}

static void info_text_help_and_bad_options(void **state) {
    (void)state;
    char *out;
    assert_int_equal(run_strata("info", &out), 0);
    assert_non_null(strstr(out, "cpu:"));
    assert_non_null(strstr(out, "numa:"));
    assert_non_null(strstr(out, "io_uring:"));
    assert_non_null(strstr(out, "gpu:"));
    assert_non_null(strstr(out, "libraries:"));
    free(out);
    assert_int_equal(run_strata("info --help", &out), 0);
    assert_non_null(strstr(out, "usage: strata info"));
    free(out);
    assert_int_equal(run_strata("info --bogus", &out), 2);
    free(out);
    assert_int_equal(run_strata("info --dir", &out), 2); /* --dir needs a value */
    free(out);
    /* an unusable --dir is reported in the output, not a failure */
    assert_int_equal(run_strata("info --json --dir /nonexistent/strata-dir", &out), 0);
    cJSON *root = cJSON_Parse(out);
    assert_non_null(root);
    const cJSON *od = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "io"), "o_direct");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(od, "supported")));
    assert_non_null(strstr(cJSON_GetStringValue(cJSON_GetObjectItem(od, "reason")), "/nonexistent/strata-dir"));
    cJSON_Delete(root);
    free(out);
}

static void uring_probe_is_consistent(void **state) {
    (void)state;
    st_uring_caps c;
    memset(&c, 0x55, sizeof c);
    assert_int_equal(st_uring_probe(&c), 0);
    if (!c.ring_ok) {
        assert_true(c.ring_errno > 0 && strlen(c.reason) > 0);
        assert_false(c.nop_ok || c.probe_ok);
        assert_int_equal(c.ops, 0);
        return;
    }
    assert_string_equal(c.reason, "");
    assert_true(c.nop_ok);
    if (c.probe_ok) {
        assert_true(c.ops & (1u << ST_URING_NOP)); /* a probe that denies NOP is not believed */
        assert_true(c.ops & (1u << ST_URING_READV)); /* READV predates the probe (5.1) */
    } else {
        assert_int_equal(c.ops, 0);
    }
    assert_string_equal(st_uring_op_name(ST_URING_READ_FIXED), "READ_FIXED");
    assert_string_equal(st_uring_op_name(ST_URING_OP_COUNT), "?");
    char buf[32];
    assert_true(strlen(st_uring_lib_version(buf, sizeof buf)) > 0);
}

static int count_probe_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, ".strata-odirect-", 16)) n++;
    closedir(d);
    return n;
}

static void odirect_probe_answers_cleanly(void **state) {
    (void)state;
    int before = count_probe_files(".");
    int rc = st_odirect_probe(".");
    assert_true(rc == 0 || rc == ST_ERR_UNSUPPORTED || rc == ST_ERR_IO);
    assert_int_equal(count_probe_files("."), before); /* the probe file is gone */

    assert_int_equal(st_odirect_probe("/nonexistent/strata-dir"), ST_ERR_NOT_FOUND);
    assert_non_null(strstr(st_last_error(), "/nonexistent/strata-dir"));
    assert_int_equal(st_odirect_probe("/proc/self/status"), ST_ERR_IO); /* a file, not a directory */
    assert_non_null(strstr(st_last_error(), "not a directory"));
    assert_int_equal(st_odirect_probe(NULL), ST_ERR_NOT_FOUND);

    /* tmpfs refuses O_DIRECT on most kernels (6.6+ accepts it): either answer is
     * fine, but it must be one of the two and leave nothing behind */
    struct statfs fs;
    if (statfs("/dev/shm", &fs) == 0 && fs.f_type == 0x01021994 /* TMPFS_MAGIC */ && access("/dev/shm", W_OK) == 0) {
        int shm_before = count_probe_files("/dev/shm");
        rc = st_odirect_probe("/dev/shm");
        assert_true(rc == 0 || rc == ST_ERR_UNSUPPORTED);
        if (rc) assert_non_null(strstr(st_last_error(), "O_DIRECT"));
        assert_int_equal(count_probe_files("/dev/shm"), shm_before);
    }
}

int main(void) {
    find_strata();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(info_json_is_complete_and_sane),
        cmocka_unit_test(info_text_help_and_bad_options),
        cmocka_unit_test(uring_probe_is_consistent),
        cmocka_unit_test(odirect_probe_answers_cleanly),
    };
    return cmocka_run_group_tests_name("info", tests, NULL, NULL);
}
