/* Benchmark helpers for memory-limited child processes: a memory cgroup
 * (v1 under /sys/fs/cgroup/memory, or v2 under /sys/fs/cgroup) that one child
 * joins before exec, and the page cache of a set of files (drop, pre-read,
 * measure what is resident). Linux only; every failure is reported, never
 * fatal: a bench that cannot limit memory says so and skips that baseline. */
#ifndef ST_BENCH_MEMCG_H
#define ST_BENCH_MEMCG_H

#include <stdbool.h>
#include <stdint.h>

typedef struct bench_memcg {
    char dir[256];  /* the group's directory; "" when none */
    bool v2;        /* memory.max / memory.peak instead of memory.limit_in_bytes / max_usage_in_bytes */
} bench_memcg;

/* Creates a fresh group named after this process and `tag`, with a memory
 * limit of limit_bytes (0: no limit, to measure a child's peak). 0, or
 * ST_ERR_UNSUPPORTED (no writable memory cgroup: message says where it looked)
 * or ST_ERR_IO. */
int bench_memcg_create(const char *tag, uint64_t limit_bytes, bench_memcg *g);
/* In a forked child before exec: moves the calling process into the group.
 * Only async-signal-safe calls. 0 or -errno. */
int bench_memcg_join(const bench_memcg *g);
/* Peak memory charged to the group (anonymous memory + page cache it faulted). */
uint64_t bench_memcg_peak(const bench_memcg *g);
/* Removes the group (it must have no tasks left). Safe on an empty struct. */
void bench_memcg_remove(bench_memcg *g);

/* Drops the files' cached pages (POSIX_FADV_DONTNEED; pages another process
 * has mapped stay). Returns the bytes still resident afterwards. */
uint64_t bench_cache_drop(const char *const *paths, int n);
/* Bytes of the files resident in the page cache now (mincore). */
uint64_t bench_cache_resident(const char *const *paths, int n);
/* Reads the files through the page cache; *bytes: read. 0 or ST_ERR_IO. */
int bench_cache_preread(const char *const *paths, int n, uint64_t *bytes);

#endif
