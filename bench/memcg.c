/* Memory cgroup for a benchmark child and page-cache control of files (see memcg.h). */
#include "bench/memcg.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"

static const char *const V1_ROOT = "/sys/fs/cgroup/memory", *const V2_ROOT = "/sys/fs/cgroup";

static int write_file(const char *dir, const char *name, const char *text) {
    char p[320];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    ssize_t n = write(fd, text, strlen(text));
    int err = n < 0 ? -errno : 0;
    close(fd);
    return err;
}

static uint64_t read_u64(const char *dir, const char *name) {
    char p[320], buf[64] = {0};
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 ? strtoull(buf, NULL, 10) : 0;
}

static bool exists(const char *dir, const char *name) {
    char p[320];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

int bench_memcg_create(const char *tag, uint64_t limit_bytes, bench_memcg *g) {
    memset(g, 0, sizeof *g);
    const char *root;
    if (exists(V1_ROOT, "memory.limit_in_bytes")) root = V1_ROOT;
    else if (exists(V2_ROOT, "cgroup.controllers") && exists(V2_ROOT, "cgroup.subtree_control")) {
        root = V2_ROOT;
        g->v2 = true;
    } else {
        return st_error(ST_ERR_UNSUPPORTED, "no memory cgroup: neither %s/memory.limit_in_bytes (v1) nor %s/cgroup.controllers (v2)",
                        V1_ROOT, V2_ROOT);
    }
    snprintf(g->dir, sizeof g->dir, "%s/strata-bench-%ld-%s", root, (long)getpid(), tag);
    if (mkdir(g->dir, 0755) && errno != EEXIST) {
        int e = errno;
        g->dir[0] = 0;
        return st_error(ST_ERR_UNSUPPORTED, "memory cgroup %s is not writable: mkdir: %s", root, strerror(e));
    }
    if (g->v2 && !exists(g->dir, "memory.max")) {
        bench_memcg_remove(g);
        return st_error(ST_ERR_UNSUPPORTED, "cgroup v2 at %s: the memory controller is not enabled for children", root);
    }
    if (limit_bytes) {
        char v[32];
        snprintf(v, sizeof v, "%llu", (unsigned long long)limit_bytes);
        int rc = write_file(g->dir, g->v2 ? "memory.max" : "memory.limit_in_bytes", v);
        if (rc) {
            int e = -rc;
            bench_memcg_remove(g);
            return st_error(ST_ERR_IO, "memory cgroup: setting the limit to %s bytes: %s", v, strerror(e));
        }
    }
    return 0;
}

int bench_memcg_join(const bench_memcg *g) {
    char pid[24], *p = pid + sizeof pid;
    *--p = 0;
    long v = (long)getpid();
    do { *--p = (char)('0' + v % 10); v /= 10; } while (v);
    return write_file(g->dir, "cgroup.procs", p);
}

uint64_t bench_memcg_peak(const bench_memcg *g) {
    if (!g->dir[0]) return 0;
    return read_u64(g->dir, g->v2 ? "memory.peak" : "memory.max_usage_in_bytes");
}

void bench_memcg_remove(bench_memcg *g) {
    if (!g->dir[0]) return;
    /* a v1 group whose last task just exited may take a moment to be empty */
    for (int i = 0; i < 50 && rmdir(g->dir) && errno == EBUSY; i++) usleep(20000);
    g->dir[0] = 0;
}

/* Calls fn on each file's descriptor; sums what fn returns. */
static uint64_t for_files(const char *const *paths, int n, uint64_t (*fn)(int fd, uint64_t size)) {
    uint64_t s = 0;
    for (int i = 0; i < n; i++) {
        int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        struct stat st;
        if (!fstat(fd, &st) && st.st_size > 0) s += fn(fd, (uint64_t)st.st_size);
        close(fd);
    }
    return s;
}

static uint64_t resident_fd(int fd, uint64_t size) {
    void *p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return 0;
    const uint64_t page = 4096, n = (size + page - 1) / page;
    unsigned char *v = malloc(n);
    uint64_t r = 0;
    if (v && !mincore(p, size, v))
        for (uint64_t i = 0; i < n; i++) r += (v[i] & 1) ? page : 0;
    free(v);
    munmap(p, size);
    return r;
}

static uint64_t drop_fd(int fd, uint64_t size) {
    (void)size;
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    return 0;
}

uint64_t bench_cache_resident(const char *const *paths, int n) { return for_files(paths, n, resident_fd); }

uint64_t bench_cache_drop(const char *const *paths, int n) {
    for_files(paths, n, drop_fd);
    return bench_cache_resident(paths, n);
}

int bench_cache_preread(const char *const *paths, int n, uint64_t *bytes) {
    enum { BUF = 8 << 20 };
    char *buf = malloc(BUF);
    if (!buf) return st_error(ST_ERR_NOMEM, "pre-read: out of memory");
    *bytes = 0;
    for (int i = 0; i < n; i++) {
        int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            free(buf);
            return st_error(ST_ERR_IO, "pre-read %s: %s", paths[i], strerror(e));
        }
        posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        ssize_t k;
        while ((k = read(fd, buf, BUF)) > 0) *bytes += (uint64_t)k;
        int e = k < 0 ? errno : 0;
        close(fd);
        if (e) { free(buf); return st_error(ST_ERR_IO, "pre-read %s: %s", paths[i], strerror(e)); }
    }
    free(buf);
    return 0;
}
