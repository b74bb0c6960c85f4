/* Internals of the read engine shared by io/uring.c (engine) and
 * io/uring_fault.c (fault rules). Nothing outside io/uring*.c includes this. */
#ifndef ST_IO_URING_INTERNAL_H
#define ST_IO_URING_INTERNAL_H

#include <liburing.h>

#include "io/uring.h"

typedef enum { FAULT_EIO, FAULT_ENOSPC, FAULT_EINVAL, FAULT_SHORT, FAULT_NODIRECT } st_fault_kind;

typedef struct st_fault {
    st_fault_kind kind;
    int file;         /* -1: every file */
    uint64_t offset;
    uint64_t bytes;   /* FAULT_SHORT: bytes the piece returns */
} st_fault;

typedef struct st_fault_set {
    st_fault *rules;
    int n;
} st_fault_set;

/* Parses `spec` (grammar in io/uring.h) into *out (replacing nothing on error). */
int st_fault_parse(const char *spec, st_fault_set *out);
void st_fault_free(st_fault_set *set);
/* Does a nodirect rule refuse O_DIRECT for this file? */
bool st_fault_nodirect(const st_fault_set *set, int file);
/* The result a read piece (file, offset, length; `direct`: through the O_DIRECT
 * descriptor) reports after the faults: `res` is what the kernel returned
 * (bytes or -errno). */
int64_t st_fault_apply(const st_fault_set *set, int file, bool direct, uint64_t offset, uint64_t length, int64_t res);

#define ST_IO_MAX_PIECE (1ull << 30) /* one read op at most (the sqe length is 32 bits) */

enum { SLOT_FREE, SLOT_ACTIVE, SLOT_DONE };

/* One request (one st_io_read, one completion). Its bytes are cut into pieces
 * in order (`cut` moves forward); a piece that came back short waits on `redo`
 * and is issued again before `cut` moves on. */
typedef struct st_io_slot {
    st_io_read req;
    uint64_t cut;         /* bytes of req already cut into pieces */
    uint64_t done;        /* bytes placed in req.dst by the pieces so far */
    uint64_t eof_got;     /* status ST_ERR_FORMAT: bytes before the end of file */
    uint32_t gen;         /* bumped on reuse */
    uint8_t state;
    bool queued;          /* in its file's urgent or normal FIFO (has pieces to issue) */
    bool urgent;          /* queued in the urgent FIFO */
    bool cancel;          /* cancelled: issue nothing more, complete once the kernel holds no piece */
    bool failed;          /* status/err/message set: likewise */
    int32_t redo;         /* pieces to issue again (short reads, retries), -1 ends */
    int inflight;         /* pieces in the kernel */
    int32_t next;         /* FIFO / done FIFO / free list link, -1 ends */
    int status, err;
    char *message;        /* heap, only on error */
} st_io_slot;

/* One read operation's worth of a request: [off, off + len) of it, `done`
 * bytes of which are read; the rest is what the next op asks for. */
typedef struct st_io_piece {
    int32_t slot;
    uint32_t gen;         /* bumped on reuse: user_data = gen << 32 | index */
    uint64_t off;         /* from the request's offset */
    uint64_t len;         /* <= ST_IO_MAX_PIECE */
    uint64_t done;
    uint32_t issue_len;   /* bytes asked by the op in the kernel */
    bool inflight;
    bool direct;          /* the op in the kernel went through the O_DIRECT descriptor */
    bool buffered;        /* the remainder is unaligned: buffered descriptor */
    uint8_t retries;      /* EAGAIN/EINTR re-issues */
    int32_t next;         /* redo list / free list link, -1 ends */
} st_io_piece;

typedef struct st_io_fifo { int32_t head, tail; } st_io_fifo;

typedef struct st_io_file {
    char *path;
    int fd_direct;        /* -1 when O_DIRECT was refused at open */
    bool direct_refused;  /* an O_DIRECT read was refused (EINVAL): buffered from now on */
    int fd_buffered;
    uint64_t size;
    st_io_fifo q[2];      /* queued requests (slot indices): [0] normal, [1] urgent */
} st_io_file;

struct st_io {
    st_io_file *files;
    int n_files;
    int depth;
    size_t align;
    bool use_ring, fixed_files, direct_warned, can_cancel, can_read_fixed;
    struct io_uring ring;

    struct iovec *iov;    /* registered buffers (pool chunks + caller regions) */
    int n_iov;
    bool fixed_buffers;
    uint8_t *pool;
    size_t pool_bytes;

    uint64_t piece_max;   /* bytes of one piece (max_piece, or ST_IO_MAX_PIECE) */
    uint64_t max_inflight_bytes; /* 0: no limit but the depth */
    uint64_t max_inflight_urgent_bytes; /* while the next piece is urgent (>= max_inflight_bytes) */
    uint64_t inflight_bytes;     /* bytes asked by the ops in the kernel */

    st_io_slot *slots;
    int n_slots;
    int32_t free_head;
    int32_t done_head, done_tail;
    st_io_piece *pieces;
    int n_pieces;
    int32_t piece_free;
    int rr[2];            /* next file to issue from, per class (normal, urgent) */
    int inflight;         /* pieces in the kernel (not counting cancel requests) */
    int cancels_inflight; /* async cancel requests in the kernel */
    int outstanding;      /* submitted, not reaped */
    int pending_count;    /* requests queued (with pieces to issue) */

    st_fault_set faults;
    st_io_stats stats;
};

static inline bool st_io_file_is_direct(const st_io_file *f) { return f->fd_direct >= 0 && !f->direct_refused; }

/* Drops queued pieces and waits until the kernel holds none (io/uring_queue.c). */
void st_io_drain(st_io *io);

#endif
