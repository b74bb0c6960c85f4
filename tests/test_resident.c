/* Decode reading its weights from DRAM (engine/model_load.c make_resident,
 * cpu/matmul.c row blocks, cpu/mem.c st_mem_populate / st_mem_drop_pages):
 *   - st_matmul hands rows out in blocks from a shared counter: on every ISA,
 *     1, 2 and 3 threads give bit-identical y, and y matches a double
 *     reference to NMSE < 1e-11, for shapes whose blocks are limited by bytes
 *     (BF16, F32) and rows that are not a multiple of the block.
 *   - at load, the dense matrices leave the checkpoint's file mapping for
 *     anonymous memory (when huge pages can be had), and the logits are
 *     bit-identical to a load that keeps them mapped (STRATA_DENSE_COPY=0).
 *   - weights left in the mapping have their page-table entries present right
 *     after load (/proc/self/pagemap bit 63), before anything reads them.
 *   - st_mem_drop_pages keeps the bytes readable and drops only whole pages.
 *   - st_mem_populate_cached fills the page tables of cached pages only and
 *     reads nothing into the page cache.
 *   - st_mem_limit (what populating may fill) is at most RAM, and inside a
 *     memory cgroup limited to 300 MiB it is that limit.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/base.h"
#include "bench/memcg.h"
#include "cpu/cpu.h"
#include "cpu/formats.h"
#include "cpu/mem.h"
#include "engine/model.h"
#include "strata.h"
#include "util.h"

#define FIXTURE "tests/data/fixtures/v4_tiny_a"


/* ---- row blocks ---- */

static void check_blocks(st_wfmt fmt, int64_t rows, int64_t cols) {
    const size_t db = st_weight_data_bytes(fmt, rows, cols);
    void *data = malloc(db);
    float *x = malloc((size_t)cols * sizeof(float)), *y1 = malloc((size_t)rows * sizeof(float)),
          *y = malloc((size_t)rows * sizeof(float));
    double *ref = calloc((size_t)rows, sizeof(double));
    assert_true(data && x && y1 && y && ref);
    for (int64_t i = 0; i < rows * cols; i++) {
        float v = tu_frand();
        if (fmt == ST_WF_BF16) ((uint16_t *)data)[i] = st_f32_to_bf16(v);
        else ((float *)data)[i] = v;
    }
    for (int64_t k = 0; k < cols; k++) x[k] = tu_frand();
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < cols; k++) {
            double w = fmt == ST_WF_BF16 ? st_bf16_to_f32(((uint16_t *)data)[r * cols + k]) : ((float *)data)[r * cols + k];
            ref[r] += w * x[k];
        }
    st_weight w = {.fmt = fmt, .rows = rows, .cols = cols, .data = data};
    st_pool *pools[4] = {0};
    for (int t = 1; t <= 3; t++) assert_int_equal(st_pool_new(t, false, &pools[t]), 0);
    for (int isa = 0; isa <= (int)st_cpu_isa_best(); isa++) {
        assert_int_equal(st_cpu_set_isa((st_isa)isa), 0);
        for (int t = 1; t <= 3; t++) {
            memset(t == 1 ? y1 : y, 0xcd, (size_t)rows * sizeof(float));
            assert_int_equal(st_matmul(pools[t], &w, x, 1, t == 1 ? y1 : y, ST_ACT_F32), 0);
            if (t > 1 && memcmp(y, y1, (size_t)rows * sizeof(float)))
                fail_msg("%s fmt %d (%lld, %lld): %d threads differ from 1", st_isa_name((st_isa)isa), fmt,
                         (long long)rows, (long long)cols, t);
        }
        double num = 0, den = 0;
        for (int64_t r = 0; r < rows; r++) {
            num += (y1[r] - ref[r]) * (y1[r] - ref[r]);
            den += ref[r] * ref[r];
        }
        if (!(num / den < 1e-11)) fail_msg("%s fmt %d: NMSE vs double %g", st_isa_name((st_isa)isa), fmt, num / den);
    }
    st_cpu_set_isa(st_cpu_isa_best());
    for (int t = 1; t <= 3; t++) st_pool_free(pools[t]);
    free(data); free(x); free(y1); free(y); free(ref);
}

static void matmul_row_blocks(void **state) {
    (void)state;
    check_blocks(ST_WF_BF16, 1601, 8192); /* 16 KiB rows: 128-row blocks, 13 of them, the last short */
    check_blocks(ST_WF_F32, 1100, 2048);  /* 8 KiB rows */
    check_blocks(ST_WF_BF16, 45, 200);    /* fewer rows than one block per thread */
}

/* ---- where the model's weights live ---- */

/* Whether p lies in a mapping of a file (/proc/self/maps: inode != 0). */
static bool in_file_mapping(const void *p) {
    FILE *f = fopen("/proc/self/maps", "r");
    assert_non_null(f);
    char line[512];
    bool file = false, found = false;
    while (!found && fgets(line, sizeof line, f)) {
        unsigned long lo, hi, inode;
        if (sscanf(line, "%lx-%lx %*s %*s %*s %lu", &lo, &hi, &inode) == 3 && (uintptr_t)p >= lo && (uintptr_t)p < hi) {
            found = true;
            file = inode != 0;
        }
    }
    fclose(f);
    assert_true(found);
    return file;
}

/* Every page of [p, p + len) has a present page-table entry in this process. */
static bool pages_present(const void *p, size_t len) {
    int fd = open("/proc/self/pagemap", O_RDONLY);
    assert_true(fd >= 0);
    bool all = true;
    for (uintptr_t a = (uintptr_t)p & ~4095ul; all && a < (uintptr_t)p + len; a += 4096) {
        uint64_t e = 0;
        assert_int_equal(pread(fd, &e, 8, (off_t)(a / 4096 * 8)), 8);
        all = (e >> 63) & 1;
    }
    close(fd);
    return all;
}

static float *logits_of(const st_model *m, const int32_t *ids, int n) {
    st_seq *s;
    assert_int_equal(st_seq_new(m, &s), 0);
    float *lg = malloc((size_t)(n * m->vocab) * sizeof(float));
    assert_non_null(lg);
    assert_int_equal(st_seq_forward(s, ids, n, lg, true), 0);
    st_seq_free(s);
    return lg;
}

static void dense_weights_copied_logits_identical(void **state) {
    (void)state;
    if (!st_mem_hugepages()) skip(); /* no copies without huge pages (THP "never") */
    const int32_t ids[] = {1, 7, 42, 3, 100, 5};
    const int n = (int)ST_ARRAY_LEN(ids);
    st_model_opts o = {.quiet = true};
    st_model *mapped, *copied;
    setenv("STRATA_DENSE_COPY", "0", 1);
    assert_int_equal(st_model_load(FIXTURE, &o, &mapped), 0);
    unsetenv("STRATA_DENSE_COPY");
    assert_int_equal(st_model_load(FIXTURE, &o, &copied), 0);
    assert_true(in_file_mapping(mapped->head.data));
    assert_false(in_file_mapping(copied->head.data));
    for (int l = 0; l < copied->n_layers; l++) {
        assert_false(in_file_mapping(copied->layers[l].attn.wq_b.data));
        if (copied->layers[l].attn.wq_b.scale) assert_false(in_file_mapping(copied->layers[l].attn.wq_b.scale));
        assert_true(in_file_mapping(copied->layers[l].moe.experts[0].w1.data)); /* routed experts stay mapped */
    }
    assert_true(in_file_mapping(copied->embed.data)); /* one row per token: not copied */
    float *a = logits_of(mapped, ids, n), *b = logits_of(copied, ids, n);
    assert_memory_equal(a, b, (size_t)(n * mapped->vocab) * sizeof(float));
    free(a); free(b);
    st_model_free(mapped);
    st_model_free(copied);
}

static bool populate_supported(void) {
    void *p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    bool ok = st_mem_populate(p, 4096) == 4096;
    munmap(p, 4096);
    return ok;
}

static void mapped_weights_populated_at_load(void **state) {
    (void)state;
    if (!populate_supported()) skip(); /* kernel before 5.14: weights fault in on first use instead */
    st_model_opts o = {.quiet = true};
    st_model *m;
    setenv("STRATA_DENSE_COPY", "0", 1);
    assert_int_equal(st_model_load(FIXTURE, &o, &m), 0);
    unsetenv("STRATA_DENSE_COPY");
    const st_weight *head = &m->head;
    assert_true(in_file_mapping(head->data));
    assert_true(pages_present(head->data, st_weight_data_bytes(head->fmt, head->rows, head->cols)));
    for (int l = 0; l < m->n_layers; l++)
        for (int e = 0; e < m->layers[l].moe.n_experts; e++) {
            const st_weight *w = &m->layers[l].moe.experts[e].w2;
            assert_true(pages_present(w->data, st_weight_data_bytes(w->fmt, w->rows, w->cols)));
        }
    st_model_free(m);
}

static void drop_pages_keeps_bytes(void **state) {
    (void)state;
    char path[] = "/tmp/strata-resident-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    uint8_t buf[4 * 4096];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)(i * 13 + 1);
    assert_int_equal(write(fd, buf, sizeof buf), (ssize_t)sizeof buf);
    const uint8_t *p = mmap(NULL, sizeof buf, PROT_READ, MAP_PRIVATE, fd, 0);
    assert_true(p != MAP_FAILED);
    if (populate_supported()) {
        assert_int_equal(st_mem_populate(p, sizeof buf), sizeof buf);
        assert_true(pages_present(p, sizeof buf));
    }
    (void)*(volatile const uint8_t *)(p);
    (void)*(volatile const uint8_t *)(p + 3 * 4096);
    st_mem_drop_pages(p + 100, 3 * 4096); /* whole pages inside: 1 and 2 only */
    assert_true(pages_present(p, 1));
    assert_true(pages_present(p + 3 * 4096, 1));
    assert_false(pages_present(p + 4096, 1));
    assert_memory_equal(p, buf, sizeof buf); /* still readable, same bytes */
    munmap((void *)p, sizeof buf);
    close(fd);
    unlink(path);
}

/* Page i of p is in the page cache. */
static bool cached(const uint8_t *p, int i) {
    unsigned char v = 0;
    assert_int_equal(mincore((void *)(p + (size_t)i * 4096), 4096, &v), 0);
    return v & 1;
}

static void populate_cached_reads_nothing(void **state) {
    (void)state;
    if (!populate_supported()) skip();
    char path[] = "build/strata-resident-XXXXXX"; /* not /tmp: tmpfs pages cannot leave the cache */
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    uint8_t buf[4 * 4096];
    memset(buf, 7, sizeof buf);
    assert_int_equal(write(fd, buf, sizeof buf), (ssize_t)sizeof buf);
    assert_int_equal(fdatasync(fd), 0);
    /* the whole file out of the cache, then pages 0 and 1 back in without readahead */
    assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM), 0);
    assert_int_equal(pread(fd, buf, 2 * 4096, 0), 2 * 4096);
    const uint8_t *p = mmap(NULL, sizeof buf, PROT_READ, MAP_PRIVATE, fd, 0);
    assert_true(p != MAP_FAILED);
    const bool evicted = !cached(p, 2) && !cached(p, 3);
    if (evicted) {
        assert_true(cached(p, 0) && cached(p, 1));
        assert_int_equal(st_mem_populate_cached(p, sizeof buf), 2 * 4096);
        assert_true(pages_present(p, 2 * 4096));
        assert_false(pages_present(p + 2 * 4096, 1));
        assert_false(cached(p, 2) || cached(p, 3)); /* nothing was read */
    }
    munmap((void *)p, sizeof buf);
    close(fd);
    unlink(path);
    if (!evicted) skip(); /* this file system keeps the pages cached */
}

static void mem_limit_follows_cgroup(void **state) {
    (void)state;
    const uint64_t ram = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    assert_true(st_mem_limit() > 0 && st_mem_limit() <= ram);
    bench_memcg g;
    const uint64_t limit = 300ull << 20;
    if (bench_memcg_create("resident", limit, &g)) { st_error_clear(); skip(); } /* no writable memory cgroup */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        uint64_t got = bench_memcg_join(&g) == 0 ? st_mem_limit() : 0;
        _exit(write(fds[1], &got, sizeof got) == sizeof got ? 0 : 1);
    }
    uint64_t got = 0;
    assert_int_equal(read(fds[0], &got, sizeof got), (ssize_t)sizeof got);
    int st;
    waitpid(pid, &st, 0);
    close(fds[0]);
    close(fds[1]);
    bench_memcg_remove(&g);
    assert_int_equal(got, limit);
}

int main(void) {
    tu_rng_set(0x243f6a8885a308d3ull); /* this suite's stream */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(matmul_row_blocks),
        cmocka_unit_test(dense_weights_copied_logits_identical),
        cmocka_unit_test(mapped_weights_populated_at_load),
        cmocka_unit_test(drop_pages_keeps_bytes),
        cmocka_unit_test(populate_cached_reads_nothing),
        cmocka_unit_test(mem_limit_follows_cgroup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
