/* Page-cache copy of a file extent (see page_cache_copy.h): residency by
 * mincore on a PROT_READ mapping, resident runs copied with pread, the rest
 * returned as holes. Must never: fault a page in through the mapping, or
 * report bytes as copied that did not come from the file. */
#include "offload/page_cache_copy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/base.h"

/* The residency of the pages covering the extent: *vec (one byte per page, bit 0 = resident),
 * *first_skip = bytes of the first page before offset. 0, or nonzero when unknown. */
static int residency(int fd, uint64_t offset, uint64_t length, unsigned char **vec, size_t *n_pages, uint64_t *first_skip) {
    long ps = sysconf(_SC_PAGESIZE);
    if (ps <= 0 || length == 0) return -1;
    uint64_t page = (uint64_t)ps, start = offset / page * page, end = (offset + length + page - 1) / page * page;
    size_t n = (size_t)((end - start) / page);
    void *map = mmap(NULL, (size_t)(end - start), PROT_READ, MAP_SHARED, fd, (off_t)start);
    if (map == MAP_FAILED) return -1;
    unsigned char *v = malloc(n);
    int rc = !v || mincore(map, (size_t)(end - start), v) ? -1 : 0;
    munmap(map, (size_t)(end - start));
    if (rc) { free(v); return -1; }
    *vec = v;
    *n_pages = n;
    *first_skip = offset - start;
    return 0;
}

int64_t st_page_cache_resident(int fd, uint64_t offset, uint64_t length) {
    unsigned char *v;
    size_t n;
    uint64_t skip;
    if (residency(fd, offset, length, &v, &n, &skip)) return -1;
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), bytes = 0;
    for (size_t i = 0; i < n; i++) {
        if (!(v[i] & 1)) continue;
        uint64_t a = ST_MAX(i * page, skip), b = ST_MIN((i + 1) * page, skip + length);
        bytes += b - a;
    }
    free(v);
    return (int64_t)bytes;
}

static int copy_run(int fd, uint64_t offset, uint64_t length, char *dst) {
    while (length) {
        ssize_t r = pread(fd, dst, (size_t)ST_MIN(length, 1u << 30), (off_t)offset);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            return st_error(ST_ERR_IO, "page cache copy: read of %llu bytes at offset %llu: %s", (unsigned long long)length,
                            (unsigned long long)offset, r < 0 ? strerror(errno) : "end of file");
        offset += (uint64_t)r;
        length -= (uint64_t)r;
        dst += r;
    }
    return 0;
}

int st_page_cache_copy(int fd, uint64_t offset, uint64_t length, void *dst, st_extent_hole *holes, int max_holes,
                       int *n_holes, uint64_t *copied) {
    *n_holes = 0;
    *copied = 0;
    if (length == 0) return 0;
    unsigned char *v;
    size_t n;
    uint64_t skip;
    if (max_holes < 1 || residency(fd, offset, length, &v, &n, &skip)) {
        holes[(*n_holes)++] = (st_extent_hole){0, length};
        return 0;
    }
    const uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    int rc = 0;
    for (size_t i = 0; i < n && !rc;) {
        bool res = v[i] & 1;
        size_t j = i;
        while (j < n && (bool)(v[j] & 1) == res) j++;
        /* the run [i, j) of pages, clipped to the extent (relative to its start) */
        uint64_t a = i * page > skip ? i * page - skip : 0, b = ST_MIN(j * page - skip, length);
        if (res) {
            if ((rc = copy_run(fd, offset + a, b - a, (char *)dst + a)) == 0) *copied += b - a;
        } else if (*n_holes == max_holes - 1 && j < n) { /* the last hole allowed: to the end */
            holes[(*n_holes)++] = (st_extent_hole){a, length - a};
            break;
        } else {
            holes[(*n_holes)++] = (st_extent_hole){a, b - a};
        }
        i = j;
    }
    free(v);
    return rc;
}
