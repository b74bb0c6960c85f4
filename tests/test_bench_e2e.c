/* bench/memcg.c (memory cgroup for a child, page cache of files) and
 * `strata bench e2e` run end to end on a tiny synthetic model: every
 * configuration runs and reports, the goals are printed. Runs the binary named
 * by $STRATA_BIN (set by make test). The cgroup test skips where no memory
 * cgroup is writable (not root, or none mounted). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/base.h"
#include "bench/memcg.h"
#include "engine/synth.h"
#include "util.h"

static char dir[64];

static int setup(void **state) {
    (void)state;
    if (tu_tmpdir(dir, sizeof dir, "/tmp/strata-bench-e2e-XXXXXX")) return -1;
    char m[128];
    snprintf(m, sizeof m, "%s/m", dir);
    return tu_synth(st_synth_find("tiny"), m, 3, NULL) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    return tu_rmtree(dir);
}

/* A child that joins g and touches `mib` MiB of anonymous memory; its wait status. */
static int child_touching(const bench_memcg *g, int mib) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (bench_memcg_join(g)) _exit(3);
        const size_t n = (size_t)mib << 20;
        volatile char *p = malloc(n);
        if (!p) _exit(4);
        for (size_t i = 0; i < n; i += 4096) p[i] = 1;
        _exit(0);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return st;
}

static void memcg_limits_a_child(void **state) {
    (void)state;
    bench_memcg g;
    if (bench_memcg_create("test", 64ull << 20, &g)) {
        st_error_clear();
        skip(); /* no writable memory cgroup here */
    }
    char path[300];
    snprintf(path, sizeof path, "%s", g.dir);
    /* within the limit: runs, and the group saw its memory */
    int st = child_touching(&g, 16);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_true(bench_memcg_peak(&g) >= 16ull << 20);
    /* 4x over the limit with no swap: the kernel kills it */
    st = child_touching(&g, 256);
    bool killed = WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL;
    bench_memcg_remove(&g);
    assert_true(killed);
    assert_int_equal(access(path, F_OK), -1); /* removed */
    bench_memcg_remove(&g);                    /* twice: a no-op */
}

static void page_cache_drop_and_preread(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/file.bin", dir);
    const size_t n = 8u << 20;
    char *buf = malloc(n);
    assert_non_null(buf);
    memset(buf, 7, n);
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, n), (ssize_t)n);
    assert_int_equal(fsync(fd), 0); /* clean pages can be dropped */
    close(fd);
    free(buf);
    const char *paths[] = {path};
    struct statfs sf;
    assert_int_equal(statfs(dir, &sf), 0);
    const bool tmpfs = sf.f_type == 0x01021994; /* TMPFS_MAGIC: its pages are the file, they never drop */
    if (!tmpfs) assert_true(bench_cache_drop(paths, 1) <= (1u << 20)); /* readahead of a neighbour may stay */
    uint64_t got = 0;
    assert_int_equal(bench_cache_preread(paths, 1, &got), 0);
    assert_int_equal(got, n);
    assert_int_equal(bench_cache_resident(paths, 1), n);
    if (!tmpfs) assert_int_equal(bench_cache_drop(paths, 1), 0);
    /* a missing file is counted as nothing, a pre-read of it is an error naming it */
    const char *missing[] = {"/nonexistent/strata"};
    assert_int_equal(bench_cache_resident(missing, 1), 0);
    assert_int_equal(bench_cache_preread(missing, 1, &got), ST_ERR_IO);
    assert_non_null(strstr(st_last_error(), "/nonexistent/strata"));
}

static int count(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

/* The value after `label` on the first line that starts (after spaces) with it. */
static double row_value(const char *out, const char *label) {
    const char *p = strstr(out, label);
    assert_non_null(p);
    return strtod(p + strlen(label), NULL);
}

static void bench_runs_every_configuration(void **state) {
    (void)state;
    const char *bin = getenv("STRATA_BIN");
    char cmd[512], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s bench e2e --model %s/m -n 6 --prompt 4 --budgets 25,50 --nvme-seconds 0.2 2>&1",
             bin ? bin : "build/strata", dir);
    int rc = tu_run(cmd, &out);
    if (rc) fprintf(stderr, "%s\n", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "DRAM read: "));
    assert_non_null(strstr(out, "NVMe read: "));
    assert_true(row_value(out, "all in DRAM") > 0);
    assert_int_equal(count(out, "budget 25%: expert cache"), 1);
    assert_int_equal(count(out, "budget 50%: expert cache"), 1);
    /* both streaming configurations ran at both budgets with a decode speed */
    assert_int_equal(count(out, "(b) prefetch off"), 2);
    assert_int_equal(count(out, "stream, prefetch on"), 2);
    const char *b25 = strstr(out, "budget 25%: expert cache"), *b50 = strstr(out, "budget 50%: expert cache");
    assert_true(row_value(b25, "(b) prefetch off") > 0 && row_value(b25, "stream, prefetch on") > 0);
    assert_true(row_value(b50, "(b) prefetch off") > 0 && row_value(b50, "stream, prefetch on") > 0);
    /* the mmap baseline ran or says why not */
    assert_int_equal(count(out, "(c) mmap + page cache"), 2);
    assert_null(strstr(out, "prefetch off         failed"));
    assert_null(strstr(out, "prefetch on          failed"));
    /* the three goals at each budget, and the summary */
    assert_int_equal(count(out, "prefetch removes >= half of the on-demand stall"), 2);
    assert_int_equal(count(out, "achieved >= 0.8 x cost model"), 2);
    assert_int_equal(count(out, "streaming beats mmap + page cache"), 2);
    assert_int_equal(count(out, "physical floor max(0, NVMe"), 2);
    assert_non_null(strstr(out, "goals over budgets 25%,50%: "));
    free(out);
    /* usage errors */
    snprintf(cmd, sizeof cmd, "%s bench e2e --model %s/m --budgets 0,120 2>&1", bin ? bin : "build/strata", dir);
    assert_int_equal(tu_run(cmd, &out), 2);
    assert_non_null(strstr(out, "--budgets"));
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(memcg_limits_a_child),
        cmocka_unit_test(page_cache_drop_and_preread),
        cmocka_unit_test(bench_runs_every_configuration),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
