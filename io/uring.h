/* The read engine: streams routed experts and cold KV from NVMe into memory.
 *
 * One st_io is opened over a set of files (a pack split over several devices is
 * several files). Each file is opened O_RDONLY|O_DIRECT; where the file system
 * refuses O_DIRECT (tmpfs, some FUSE) that file is read through the page cache
 * and the engine warns once. Files are registered with the ring (fixed files);
 * the engine owns a pool of registered 4096-aligned memory (fixed buffers) and
 * the caller may register its own regions at open.
 *
 * Reads are queued without blocking. The engine owns the order in which
 * queued bytes reach the kernel; the kernel only sees what the limits let in:
 *   - `queue_depth` read ops and, if set, `max_inflight_bytes` bytes in the
 *     kernel at once (at least one piece always goes, however large); while
 *     the next piece is urgent, `max_inflight_urgent_bytes` if set;
 *   - with `max_piece` set, a request is cut into pieces of at most that many
 *     bytes, issued in order; otherwise a request is one read op;
 *   - per file, a FIFO of urgent requests and a FIFO of normal ones; the next
 *     piece comes from the urgent FIFOs when any holds one, round-robin over
 *     the files, else from the normal FIFOs, round-robin over the files (reads
 *     that span several devices keep all of them busy; urgency wins across
 *     files). A request's pieces come one after another from the head of its
 *     FIFO; the request leaves the FIFO when its last piece is issued.
 * So most queued bytes stay in the engine's queue, where an urgent read
 * (st_io_read.urgent, st_io_promote) overtakes them and st_io_cancel drops
 * them; only pieces already in the kernel are beyond reach (they finish, or
 * get an async cancel).
 * Every submitted read produces exactly one completion (success, error or
 * cancelled), after the last of its pieces is back from the kernel (the caller
 * may reuse the destination at once), reaped with st_io_poll (never blocks) or
 * st_io_wait (timeout). An error in one piece fails the request: its queued
 * pieces are dropped, those in the kernel cancelled and waited for.
 *
 * Alignment: on an O_DIRECT file, offset, length and destination must be
 * multiples of st_io_alignment() (4096 unless the file system asks for more).
 * Unaligned requests are REFUSED at submit with ST_ERR_INVALID (never widened
 * behind the caller's back): the pack format aligns every extent to 4096.
 * Buffered files accept any offset/length/destination.
 *
 * Short reads of a piece are advanced and the remainder requeued ahead of the
 * request's next pieces (on the file's buffered descriptor when the remainder
 * is no longer aligned). A read that reaches end
 * of file before `length` bytes is an error naming the file, offset, expected
 * and found lengths (ST_ERR_FORMAT: the file is truncated); the destination
 * is never silently zero-filled. I/O errors are ST_ERR_IO with the errno.
 *
 * Read pool: from 2 MiB on it is 2 MiB-aligned and madvise(MADV_HUGEPAGE)'d,
 * so an O_DIRECT read's pages are physically contiguous in 2 MiB runs and the
 * block layer builds few large requests (on this machine's virtio disk,
 * max_segments 254: ~2.7 MiB requests instead of ~0.9 MiB with 4 KiB pages,
 * measured ~1.5-2x the throughput of fio's 4 KiB-page buffers on 13 MB
 * reads). STRATA_IO_NO_HUGEPAGE=1 turns this off (A/B measurements).
 *
 * Where io_uring is unavailable (old kernel, sysctl, seccomp: io/uring_probe.h)
 * the same API runs on synchronous pread with one warning, in the same order
 * (urgent first) and with the same pieces, one at a time, from st_io_poll/wait.
 *
 * Threads: an st_io is owned by one thread at a time: submit, cancel, poll and
 * wait must not run concurrently on the same st_io (no internal locks). The
 * owning thread typically submits and reaps; hand-over between threads needs
 * the caller's own synchronisation. Separate st_io objects are independent.
 *
 * Fault injection (tests): rules set with st_io_set_faults() or, at open, the
 * `faults` option or the STRATA_IO_FAULTS environment variable. Off unless
 * configured. Grammar, comma-separated:
 *   eio@OFFSET[#FILE]        a read piece covering OFFSET fails with EIO
 *   enospc@OFFSET[#FILE]     ... fails with ENOSPC
 *   einval@OFFSET[#FILE]     an O_DIRECT read piece covering OFFSET fails with EINVAL (refused at
 *                             read time: the file falls back to buffered reads)
 *   short@OFFSET:BYTES[#FILE] a read piece starting exactly at OFFSET returns
 *                             only BYTES bytes (0: looks like end of file)
 *   nodirect@FILE            O_DIRECT open of file FILE (index, or * for all)
 *                             is refused with EINVAL
 * FILE is the file's index in the open list; without #FILE a rule applies to
 * every file. OFFSET/BYTES are decimal or 0x hex bytes. Faults are applied in
 * the completion path (after the real read) and at open. A "read piece" is one
 * read op: a piece of max_piece bytes, or the remainder of one after a short read.
 */
#ifndef ST_IO_URING_H
#define ST_IO_URING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct st_io st_io;

typedef struct st_io_region {
    void *ptr;    /* caller memory to register as a fixed buffer (4096-aligned for O_DIRECT) */
    size_t bytes;
} st_io_region;

typedef struct st_io_options {
    int queue_depth;              /* reads in the kernel at once, 1..4096; 0: 32 */
    size_t buffer_bytes;          /* engine-owned registered pool (rounded up to 4096; from 2 MiB on, rounded
                                     up to 2 MiB and in transparent huge pages where the kernel gives them,
                                     so one read is a few large device requests); 0: none */
    const st_io_region *regions;  /* caller regions registered as fixed buffers, may be NULL */
    int n_regions;
    bool buffered;                /* never use O_DIRECT */
    bool force_pread;             /* use the synchronous pread path even where io_uring works */
    const char *faults;           /* fault rules (grammar above); NULL: STRATA_IO_FAULTS or none */
    size_t max_piece;             /* bytes of one read op: requests are cut into pieces of at most this
                                     (a multiple of st_io_alignment() when a file is O_DIRECT, <= 1 GiB);
                                     0: one read op per request */
    size_t max_inflight_bytes;    /* bytes in the kernel at once (at least one piece always goes);
                                     0: only queue_depth limits */
    size_t max_inflight_urgent_bytes; /* the same bound while the next piece is urgent (> max_inflight_bytes:
                                     reads the caller waits for may fill the disk's queue deeper than
                                     speculative ones); 0: max_inflight_bytes */
} st_io_options;

typedef struct st_io_read {
    int file;          /* index into the paths given to st_io_open */
    uint64_t offset;   /* byte offset in that file */
    size_t length;     /* bytes to read, > 0 */
    void *dst;         /* destination, `length` bytes */
    uint64_t tag;      /* caller's tag, returned in the completion and used by st_io_cancel/st_io_promote */
    bool urgent;       /* its pieces go ahead of every normal piece not yet in the kernel, on every file
                          (urgent ones: FIFO per file, files taking turns piece by piece) */
} st_io_read;

typedef struct st_io_completion {
    uint64_t tag;
    int file;
    uint64_t offset;   /* the request's offset */
    size_t length;     /* the request's length */
    size_t bytes;      /* bytes placed in dst (== length when status is 0; on failure, what the pieces read) */
    int status;        /* 0; ST_ERR_IO (err set); ST_ERR_FORMAT (end of file: truncated); ST_ERR_CANCELLED */
    int err;           /* errno of an I/O failure (EIO, ENOSPC, ...), else 0 */
    char message[256]; /* "" on success; else names file, offset, length and errno */
} st_io_completion;

typedef struct st_io_stats {
    const char *backend;    /* "io_uring" or "pread" */
    int files, direct_files;
    bool fixed_files, fixed_buffers;
    int queue_depth;
    uint64_t reads_done, bytes_done;  /* successful requests and their bytes */
    uint64_t pieces;                  /* read operations issued (pieces + requeued remainders) */
    uint64_t short_reads, retries, errors, cancelled, direct_fallbacks;
    uint64_t urgent;                  /* requests submitted urgent */
    uint64_t promoted;                /* requests made urgent by st_io_promote */
    uint64_t inflight_bytes;          /* bytes in the kernel now */
    uint64_t peak_inflight_bytes;     /* most bytes in the kernel at once since open (pread: largest op) */
    size_t max_piece, max_inflight_bytes; /* the options in force (0: off) */
} st_io_stats;

/* Opens `n_files` paths for reading. 0 or ST_ERR_NOT_FOUND / ST_ERR_IO (message
 * names the path and errno), ST_ERR_INVALID (options, fault rules), ST_ERR_NOMEM. */
int st_io_open(const char *const *paths, int n_files, const st_io_options *opt, st_io **out);
/* Cancels what is queued, waits for reads still in the kernel (they write into
 * caller memory), frees everything. NULL is a no-op. Unreaped completions are dropped. */
void st_io_close(st_io *io);

/* The engine's registered pool (NULL, 0 when buffer_bytes was 0). */
void *st_io_buffer(st_io *io, size_t *bytes);
size_t st_io_alignment(const st_io *io);
int st_io_file_count(const st_io *io);
uint64_t st_io_file_size(const st_io *io, int file); /* size at open */
bool st_io_file_direct(const st_io *io, int file);
const char *st_io_file_path(const st_io *io, int file);

/* Queues n reads (all or none). Never blocks; issues to the kernel as the queue
 * depth allows. 0, or ST_ERR_INVALID (bad file index, zero length, NULL dst,
 * unaligned O_DIRECT request: message says which) / ST_ERR_NOMEM. */
int st_io_submit(st_io *io, const st_io_read *reqs, int n);
/* Cancels every outstanding read with this tag. Queued pieces are dropped at
 * once; pieces in the kernel get an async cancel. A request with no piece in
 * the kernel completes at once as cancelled; one with pieces in the kernel
 * completes when they are back (as cancelled, or normally when every one of
 * its pieces was in the kernel and finished anyway). Each still yields one
 * completion. Returns how many completed at once (dropped before reaching the
 * kernel, or with their pieces there already back) (>= 0). */
int st_io_cancel(st_io *io, uint64_t tag);
/* Makes every queued (not yet in the kernel) piece of the outstanding requests
 * with this tag urgent: they go ahead of every normal piece, behind the urgent
 * ones queued before. Pieces already in the kernel are unaffected. Returns how
 * many requests were promoted (>= 0; already urgent or fully issued ones are
 * not counted). */
int st_io_promote(st_io *io, uint64_t tag);
/* Reaps up to `max` finished reads without blocking (also issues queued ones).
 * Returns the count (>= 0) or a negative status if the ring itself failed. */
int st_io_poll(st_io *io, st_io_completion *out, int max);
/* Like st_io_poll but blocks until at least `min` (<= max, <= outstanding) are
 * reaped or `timeout_ms` passes (< 0: no limit). Returns the count reaped. */
int st_io_wait(st_io *io, st_io_completion *out, int max, int min, int timeout_ms);
/* Submitted reads not yet reaped. */
int st_io_outstanding(const st_io *io);
/* Reads one extent and waits for it alone (other completions stay queued for
 * the caller). Returns the completion's status; the message goes to st_last_error(). */
int st_io_read_sync(st_io *io, int file, uint64_t offset, size_t length, void *dst);

/* Replaces the fault rules (NULL or "" clears them). 0 or ST_ERR_INVALID naming the bad rule. */
int st_io_set_faults(st_io *io, const char *spec);
void st_io_get_stats(const st_io *io, st_io_stats *out);

#endif
