/* Copying a file extent out of the page cache where its pages are resident
 * (a warm machine: the checkpoint was read before), leaving the pages that
 * are not for the caller to read from disk (O_DIRECT). Residency comes from
 * mincore on a read-only mapping of the extent (nothing is faulted in); the
 * copy is a pread on a buffered descriptor, so the bytes are the file's
 * whichever way they come (a page evicted between the two is just read).
 */
#ifndef ST_OFFLOAD_PAGE_CACHE_COPY_H
#define ST_OFFLOAD_PAGE_CACHE_COPY_H

#include <stdint.h>

typedef struct st_extent_hole {
    uint64_t offset, length; /* file bytes still to read; offset relative to the extent's start */
} st_extent_hole;

/* Copies the resident pages of [offset, offset + length) of fd (buffered,
 * read-only) into dst (length bytes) and lists in holes[0..*n_holes) the
 * parts not copied, ascending, each starting on a page boundary of the file
 * and ending on one or at the extent's end (at most max_holes >= 1: when more
 * are needed the last one runs to the end; copied pages inside it are read
 * again). *copied: bytes copied. 0, or ST_ERR_IO (message names the file
 * descriptor's offset and errno; dst may be partly written). Where mincore or
 * mmap is refused, nothing is copied and the whole extent is one hole. */
int st_page_cache_copy(int fd, uint64_t offset, uint64_t length, void *dst, st_extent_hole *holes, int max_holes,
                       int *n_holes, uint64_t *copied);

/* Bytes of [offset, offset + length) of fd resident in the page cache (-1 if unknown). */
int64_t st_page_cache_resident(int fd, uint64_t offset, uint64_t length);

#endif
