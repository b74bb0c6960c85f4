/* The read engine's setup and teardown (API and design in io/uring.h):
 * opening the files (O_DIRECT with a per-file buffered fallback), the ring,
 * fixed files, the registered buffer pool, accessors and stats. The queue
 * (submit, issue, completions, cancel) is io/uring_queue.c.
 *
 * Must never: leave a descriptor or registered buffer behind on a failed open,
 * or free memory the kernel may still write into (st_io_close waits). */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"
#include "io/uring_internal.h"
#include "io/uring_probe.h"

enum { DEFAULT_DEPTH = 32, MAX_DEPTH = 4096, MIN_ALIGN = 4096 };
#define MAX_IOV_BYTES (1ull << 30) /* the kernel's limit for one registered buffer */
#define HUGE_BYTES (2ull << 20)

/* The O_DIRECT alignment this file asks for (offset and memory), 0 if the
 * file system says O_DIRECT is not supported, MIN_ALIGN if it cannot say. */
static size_t direct_alignment(int fd) {
#ifdef STATX_DIOALIGN
    struct statx stx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN)) {
        if (stx.stx_dio_offset_align == 0) return 0;
        size_t a = ST_MAX(stx.stx_dio_offset_align, stx.stx_dio_mem_align);
        return ST_MAX(a, (size_t)MIN_ALIGN);
    }
#endif
    (void)fd;
    return MIN_ALIGN;
}

static int open_file(st_io *io, int i, const char *path, bool buffered, int *refused, char *first_refusal, size_t len) {
    st_io_file *f = &io->files[i];
    f->path = strdup(path);
    if (!f->path) return st_error(ST_ERR_NOMEM, "io: no memory");
    f->fd_buffered = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd_buffered < 0)
        return st_error(errno == ENOENT ? ST_ERR_NOT_FOUND : ST_ERR_IO, "io: cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(f->fd_buffered, &st) != 0) return st_error(ST_ERR_IO, "io: %s: fstat: %s", path, strerror(errno));
    if (S_ISREG(st.st_mode)) {
        f->size = (uint64_t)st.st_size;
    } else if (S_ISBLK(st.st_mode)) {
        if (ioctl(f->fd_buffered, BLKGETSIZE64, &f->size) != 0)
            return st_error(ST_ERR_IO, "io: %s: cannot read the block device size: %s", path, strerror(errno));
    } else {
        return st_error(ST_ERR_INVALID, "io: %s: not a regular file or block device", path);
    }
    if (buffered) return 0;
    int fd = -1, err = EINVAL;
    if (!st_fault_nodirect(&io->faults, i)) {
        fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
        err = errno;
    }
    size_t align = fd >= 0 ? direct_alignment(fd) : 0;
    if (fd >= 0 && align == 0) { close(fd); fd = -1; err = EOPNOTSUPP; }
    if (fd < 0) {
        if (err != EINVAL && err != EOPNOTSUPP) return st_error(ST_ERR_IO, "io: cannot open %s with O_DIRECT: %s", path, strerror(err));
        if ((*refused)++ == 0) snprintf(first_refusal, len, "%s: %s", path, strerror(err));
        return 0;
    }
    f->fd_direct = fd;
    io->align = ST_MAX(io->align, align);
    return 0;
}

static void setup_ring(st_io *io, const st_io_options *opt) {
    const char *env = getenv("STRATA_IO_ENGINE");
    if (opt->force_pread || (env && !strcmp(env, "pread"))) return; /* asked for: no warning */
    st_uring_caps caps;
    st_uring_probe(&caps);
    const char *why = NULL;
    char reason[200];
    if (!caps.ring_ok) why = caps.reason;
    else if (caps.probe_ok && !(caps.ops & (1u << ST_URING_READ))) why = "the kernel lacks IORING_OP_READ (before 5.6)";
    if (!why) {
        /* room for one async cancel per read in the kernel beside the reads */
        int rc = io_uring_queue_init((unsigned)(2 * io->depth), &io->ring, 0);
        if (rc == 0) {
            io->use_ring = true;
            io->can_cancel = !caps.probe_ok || (caps.ops & (1u << ST_URING_ASYNC_CANCEL));
            io->can_read_fixed = !caps.probe_ok || (caps.ops & (1u << ST_URING_READ_FIXED));
            return;
        }
        snprintf(reason, sizeof reason, "io_uring_queue_init(%d): %s", 2 * io->depth, strerror(-rc));
        why = reason;
    }
    ST_WARN("io: io_uring unavailable (%s); reading with synchronous pread", why);
}

static void register_with_ring(st_io *io) {
    int n = 2 * io->n_files;
    int *fds = malloc((size_t)n * sizeof *fds);
    if (fds) {
        for (int i = 0; i < io->n_files; i++) {
            fds[2 * i] = io->files[i].fd_direct >= 0 ? io->files[i].fd_direct : io->files[i].fd_buffered;
            fds[2 * i + 1] = io->files[i].fd_buffered;
        }
        int rc = io_uring_register_files(&io->ring, fds, (unsigned)n);
        io->fixed_files = rc == 0;
        if (rc) ST_INFO("io: registering %d files failed (%s): using plain descriptors", n, strerror(-rc));
        free(fds);
    }
    if (io->n_iov && io->can_read_fixed) {
        int rc = io_uring_register_buffers(&io->ring, io->iov, (unsigned)io->n_iov);
        io->fixed_buffers = rc == 0;
        char sz[32];
        size_t total = 0;
        for (int i = 0; i < io->n_iov; i++) total += io->iov[i].iov_len;
        if (rc) ST_WARN("io: cannot register %s of read buffers (%s%s): reading without fixed buffers",
                        st_fmt_size(total, sz, sizeof sz), strerror(-rc), -rc == ENOMEM ? ": RLIMIT_MEMLOCK?" : "");
    }
}

static int setup_buffers(st_io *io, const st_io_options *opt) {
    size_t pool = ST_ALIGN_UP(opt->buffer_bytes, io->align);
    int chunks = pool ? (int)ST_DIV_UP(pool, MAX_IOV_BYTES) : 0;
    if (opt->n_regions < 0 || (opt->n_regions && !opt->regions)) return st_error(ST_ERR_INVALID, "io: bad region list");
    io->iov = calloc((size_t)(chunks + opt->n_regions) + 1, sizeof *io->iov);
    if (!io->iov) return st_error(ST_ERR_NOMEM, "io: no memory");
    if (pool) {
        /* 2 MiB pages where the kernel gives them: a read's bio then has one
         * segment per 2 MiB instead of per 4 KiB page, so a 13 MB expert is a
         * few large device requests instead of ~50 of ~254 pages each (the
         * virtio queue's max_segments) */
        const bool huge = pool >= HUGE_BYTES && !getenv("STRATA_IO_NO_HUGEPAGE");
        if (huge) pool = ST_ALIGN_UP(pool, HUGE_BYTES);
        io->pool = st_aligned_alloc(huge ? HUGE_BYTES : io->align, pool);
        if (io->pool && huge) (void)madvise(io->pool, pool, MADV_HUGEPAGE); /* best effort: 4 KiB pages otherwise */
        if (!io->pool) { char sz[32]; return st_error(ST_ERR_NOMEM, "io: no memory for a %s read buffer pool", st_fmt_size(pool, sz, sizeof sz)); }
        io->pool_bytes = pool;
        for (size_t at = 0; at < pool; at += MAX_IOV_BYTES)
            io->iov[io->n_iov++] = (struct iovec){io->pool + at, ST_MIN(MAX_IOV_BYTES, pool - at)};
    }
    for (int i = 0; i < opt->n_regions; i++) {
        if (!opt->regions[i].ptr || !opt->regions[i].bytes || opt->regions[i].bytes > MAX_IOV_BYTES)
            return st_error(ST_ERR_INVALID, "io: region %d: needs a pointer and 1 byte .. 1 GiB, found %p, %zu bytes", i,
                            opt->regions[i].ptr, opt->regions[i].bytes);
        io->iov[io->n_iov++] = (struct iovec){opt->regions[i].ptr, opt->regions[i].bytes};
    }
    return 0;
}

/* max_piece and max_inflight_bytes, once the files' O_DIRECT alignment is known. */
static int check_pieces(st_io *io, const st_io_options *opt) {
    io->piece_max = opt->max_piece ? opt->max_piece : ST_IO_MAX_PIECE;
    io->max_inflight_bytes = opt->max_inflight_bytes;
    io->max_inflight_urgent_bytes = !opt->max_inflight_bytes ? 0
                                    : ST_MAX(opt->max_inflight_bytes, opt->max_inflight_urgent_bytes);
    if (opt->max_piece > ST_IO_MAX_PIECE)
        return st_error(ST_ERR_INVALID, "io: max_piece must be at most %llu bytes (1 GiB, one read op), found %zu",
                        (unsigned long long)ST_IO_MAX_PIECE, opt->max_piece);
    for (int i = 0; opt->max_piece && i < io->n_files; i++)
        if (st_io_file_is_direct(&io->files[i]) && opt->max_piece % io->align)
            return st_error(ST_ERR_INVALID,
                            "io: %s: max_piece %zu is not a multiple of the O_DIRECT alignment (%zu bytes): "
                            "pieces of an aligned request must stay aligned",
                            io->files[i].path, opt->max_piece, io->align);
    return 0;
}

int st_io_open(const char *const *paths, int n_files, const st_io_options *options, st_io **out) {
    if (!out) return st_error(ST_ERR_INVALID, "io: st_io_open needs an output pointer");
    *out = NULL;
    st_io_options none = {0};
    const st_io_options *opt = options ? options : &none;
    if (!paths || n_files <= 0) return st_error(ST_ERR_INVALID, "io: st_io_open needs at least one file, found %d", n_files);
    if (opt->queue_depth < 0 || opt->queue_depth > MAX_DEPTH)
        return st_error(ST_ERR_INVALID, "io: queue depth must be 1..%d, found %d", MAX_DEPTH, opt->queue_depth);
    st_io *io = calloc(1, sizeof *io);
    if (!io) return st_error(ST_ERR_NOMEM, "io: no memory");
    io->depth = opt->queue_depth ? opt->queue_depth : DEFAULT_DEPTH;
    io->align = MIN_ALIGN;
    io->free_head = io->done_head = io->done_tail = io->piece_free = -1;
    io->n_files = n_files;
    io->files = calloc((size_t)n_files, sizeof *io->files);
    int status = io->files ? 0 : st_error(ST_ERR_NOMEM, "io: no memory");
    for (int i = 0; !status && i < n_files; i++) {
        io->files[i].fd_direct = io->files[i].fd_buffered = -1;
        for (int c = 0; c < 2; c++) io->files[i].q[c].head = io->files[i].q[c].tail = -1;
    }
    const char *faults = opt->faults ? opt->faults : getenv("STRATA_IO_FAULTS");
    if (!status) {
        status = st_fault_parse(faults, &io->faults);
        if (status && !opt->faults) st_error_prefix(status, "STRATA_IO_FAULTS: ");
    }
    int refused = 0;
    char first_refusal[512] = "";
    for (int i = 0; !status && i < n_files; i++) {
        if (!paths[i]) status = st_error(ST_ERR_INVALID, "io: path %d is NULL", i);
        else status = open_file(io, i, paths[i], opt->buffered, &refused, first_refusal, sizeof first_refusal);
    }
    if (!status && refused) {
        io->direct_warned = true;
        io->stats.direct_fallbacks = (uint64_t)refused;
        ST_WARN("io: O_DIRECT refused for %d of %d file%s (%s); reading %s through the page cache", refused, n_files,
                n_files > 1 ? "s" : "", first_refusal, refused > 1 ? "them" : "it");
    }
    if (!status) status = check_pieces(io, opt);
    if (!status) status = setup_buffers(io, opt);
    if (!status) setup_ring(io, opt);
    if (!status && io->use_ring) register_with_ring(io);
    if (status) {
        st_io_close(io);
        return status;
    }
    *out = io;
    return 0;
}

void st_io_close(st_io *io) {
    if (!io) return;
    st_io_drain(io);
    if (io->use_ring) io_uring_queue_exit(&io->ring);
    for (int i = 0; io->files && i < io->n_files; i++) {
        if (io->files[i].fd_direct >= 0) close(io->files[i].fd_direct);
        if (io->files[i].fd_buffered >= 0) close(io->files[i].fd_buffered);
        free(io->files[i].path);
    }
    for (int i = 0; i < io->n_slots; i++) free(io->slots[i].message);
    free(io->slots);
    free(io->pieces);
    free(io->files);
    free(io->iov);
    free(io->pool);
    st_fault_free(&io->faults);
    free(io);
}

void *st_io_buffer(st_io *io, size_t *bytes) {
    if (bytes) *bytes = io ? io->pool_bytes : 0;
    return io ? io->pool : NULL;
}
size_t st_io_alignment(const st_io *io) { return io->align; }
int st_io_file_count(const st_io *io) { return io->n_files; }
static bool valid_file(const st_io *io, int file) { return file >= 0 && file < io->n_files; }
uint64_t st_io_file_size(const st_io *io, int file) { return valid_file(io, file) ? io->files[file].size : 0; }
bool st_io_file_direct(const st_io *io, int file) { return valid_file(io, file) && st_io_file_is_direct(&io->files[file]); }
const char *st_io_file_path(const st_io *io, int file) { return valid_file(io, file) ? io->files[file].path : NULL; }
int st_io_outstanding(const st_io *io) { return io->outstanding; }

int st_io_set_faults(st_io *io, const char *spec) { return st_fault_parse(spec, &io->faults); }

void st_io_get_stats(const st_io *io, st_io_stats *out) {
    *out = io->stats;
    out->backend = io->use_ring ? "io_uring" : "pread";
    out->files = io->n_files;
    out->direct_files = 0;
    for (int i = 0; i < io->n_files; i++) out->direct_files += st_io_file_is_direct(&io->files[i]);
    out->fixed_files = io->fixed_files;
    out->fixed_buffers = io->fixed_buffers;
    out->queue_depth = io->depth;
    out->inflight_bytes = io->inflight_bytes;
    out->max_piece = io->piece_max < ST_IO_MAX_PIECE ? (size_t)io->piece_max : 0;
    out->max_inflight_bytes = (size_t)io->max_inflight_bytes;
}
