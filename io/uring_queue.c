/* The read engine's queue (API and design in io/uring.h): request slots and
 * their pieces, the per-file urgent and normal FIFOs (urgent first, each
 * round-robin over files) issued within the queue depth and the in-flight
 * byte cap, completion handling (short reads advanced and requeued, EOF and
 * errors reported with file, offset and errno, O_DIRECT refused at read time
 * -> buffered), cancel, promote, poll/wait, and the synchronous pread path
 * with the same order and pieces.
 *
 * Must never: mark a read done before every byte of it was read, deliver a
 * request's completion while one of its pieces is in the kernel (the caller
 * reuses the memory), or block in st_io_submit / st_io_poll on the io_uring
 * path. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"
#include "io/uring_internal.h"

enum { MAX_RETRIES = 8, NORMAL = 0, URGENT = 1 };
#define CANCEL_USER_DATA UINT64_MAX
#define MESSAGE_BYTES sizeof ((st_io_completion *)0)->message

/* ---- slots, pieces and FIFOs ---- */

static int grow_slots(st_io *io, int need) {
    int free_count = 0;
    for (int32_t i = io->free_head; i >= 0; i = io->slots[i].next) free_count++;
    if (free_count >= need) return 0;
    int n = ST_MAX(io->n_slots * 2, io->n_slots + need - free_count);
    n = ST_MAX(n, 2 * io->depth);
    st_io_slot *s = realloc(io->slots, (size_t)n * sizeof *s);
    if (!s) return st_error(ST_ERR_NOMEM, "io: no memory for %d read slots", n);
    memset(s + io->n_slots, 0, (size_t)(n - io->n_slots) * sizeof *s);
    for (int i = n - 1; i >= io->n_slots; i--) {
        s[i].next = io->free_head;
        io->free_head = i;
    }
    io->slots = s;
    io->n_slots = n;
    return 0;
}

/* At least one free piece (pieces are addressed by index: realloc is fine). */
static int reserve_piece(st_io *io) {
    if (io->piece_free >= 0) return 0;
    int n = ST_MAX(2 * io->n_pieces, 2 * io->depth);
    st_io_piece *p = realloc(io->pieces, (size_t)n * sizeof *p);
    if (!p) return st_error(ST_ERR_NOMEM, "io: no memory for %d read pieces", n);
    memset(p + io->n_pieces, 0, (size_t)(n - io->n_pieces) * sizeof *p);
    for (int i = n - 1; i >= io->n_pieces; i--) {
        p[i].next = io->piece_free;
        io->piece_free = i;
    }
    io->pieces = p;
    io->n_pieces = n;
    return 0;
}

static void piece_release(st_io *io, int32_t k) {
    io->pieces[k].next = io->piece_free;
    io->piece_free = k;
}

static void fifo_push(st_io *io, int32_t i, bool front) {
    st_io_slot *s = &io->slots[i];
    st_io_fifo *q = &io->files[s->req.file].q[s->urgent];
    s->queued = true;
    io->pending_count++;
    if (q->head < 0) { s->next = -1; q->head = q->tail = i; return; }
    if (front) { s->next = q->head; q->head = i; return; }
    s->next = -1;
    io->slots[q->tail].next = i;
    q->tail = i;
}

static void fifo_remove(st_io *io, int32_t i) {
    st_io_slot *s = &io->slots[i];
    st_io_fifo *q = &io->files[s->req.file].q[s->urgent];
    int32_t prev = -1;
    for (int32_t j = q->head; j >= 0; prev = j, j = io->slots[j].next) {
        if (j != i) continue;
        if (prev < 0) q->head = s->next;
        else io->slots[prev].next = s->next;
        if (q->tail == j) q->tail = prev;
        s->queued = false;
        io->pending_count--;
        return;
    }
    ST_ASSERT(!"queued request missing from its file's FIFO");
}

/* The request the next piece comes from: the urgent FIFOs first, then the
 * normal ones, each round-robin over the files so reads spread over devices. */
static int32_t next_request(const st_io *io, int *cls, int *file) {
    for (int c = URGENT; c >= NORMAL; c--)
        for (int k = 0; k < io->n_files; k++) {
            int f = (io->rr[c] + k) % io->n_files;
            if (io->files[f].q[c].head >= 0) {
                *cls = c;
                *file = f;
                return io->files[f].q[c].head;
            }
        }
    return -1;
}

/* Bytes the request's next piece asks for. */
static uint64_t next_piece_bytes(const st_io *io, const st_io_slot *s) {
    if (s->redo >= 0) return io->pieces[s->redo].len - io->pieces[s->redo].done;
    return ST_MIN(s->req.length - s->cut, io->piece_max);
}

/* Takes the next piece of queued request i (head of FIFO (cls, file)): a
 * requeued remainder first, else a new piece at `cut`. Needs reserve_piece. */
static int32_t take_piece(st_io *io, int32_t i, int cls, int file) {
    st_io_slot *s = &io->slots[i];
    int32_t k = s->redo;
    if (k >= 0) {
        s->redo = io->pieces[k].next;
    } else {
        k = io->piece_free;
        ST_ASSERT(k >= 0);
        io->piece_free = io->pieces[k].next;
        st_io_piece *p = &io->pieces[k];
        uint32_t gen = p->gen + 1;
        memset(p, 0, sizeof *p);
        p->gen = gen;
        p->slot = i;
        p->off = s->cut;
        p->len = ST_MIN(s->req.length - s->cut, io->piece_max);
        s->cut += p->len;
    }
    io->pieces[k].next = -1;
    if (s->redo < 0 && s->cut >= s->req.length) fifo_remove(io, i); /* its last piece: leaves the queue */
    io->rr[cls] = (file + 1) % io->n_files;
    return k;
}

/* Drops what the request still has queued (not what is in the kernel). */
static void drop_queued(st_io *io, int32_t i) {
    st_io_slot *s = &io->slots[i];
    if (s->queued) fifo_remove(io, i);
    while (s->redo >= 0) {
        int32_t k = s->redo;
        s->redo = io->pieces[k].next;
        piece_release(io, k);
    }
    s->cut = s->req.length; /* nothing more is cut */
}

static void set_message(st_io_slot *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_message(st_io_slot *s, const char *fmt, ...) {
    if (!s->message) s->message = malloc(MESSAGE_BYTES);
    if (!s->message) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->message, MESSAGE_BYTES, fmt, ap);
    va_end(ap);
}

/* Moves the request to the done FIFO with the status it holds. */
static void complete(st_io *io, int32_t i, int status, int err) {
    st_io_slot *s = &io->slots[i];
    ST_ASSERT(s->state == SLOT_ACTIVE && s->inflight == 0 && !s->queued && s->redo < 0);
    s->state = SLOT_DONE;
    s->status = status;
    s->err = err;
    if (status == ST_ERR_CANCELLED) io->stats.cancelled++;
    else if (status) io->stats.errors++;
    else { io->stats.reads_done++; io->stats.bytes_done += s->req.length; }
    s->next = -1;
    if (io->done_tail >= 0) io->slots[io->done_tail].next = i;
    else io->done_head = i;
    io->done_tail = i;
}

static void complete_cancelled(st_io *io, int32_t i) {
    st_io_slot *s = &io->slots[i];
    set_message(s, "io: %s: read of %zu bytes at offset %llu cancelled (%llu bytes of it read)", io->files[s->req.file].path,
                s->req.length, (unsigned long long)s->req.offset, (unsigned long long)s->done);
    complete(io, i, ST_ERR_CANCELLED, ECANCELED);
}

/* Completes the request once nothing of it is in the kernel and it is done,
 * failed or cancelled. */
static void settle(st_io *io, int32_t i) {
    st_io_slot *s = &io->slots[i];
    if (s->state != SLOT_ACTIVE || s->inflight > 0) return;
    if (s->failed) complete(io, i, s->status, s->err);
    else if (s->done >= s->req.length) complete(io, i, 0, 0);
    else if (s->cancel) { drop_queued(io, i); complete_cancelled(io, i); }
}

/* ---- one read piece: issue and result ---- */

static uint64_t piece_user_data(const st_io *io, int32_t k) { return (uint64_t)io->pieces[k].gen << 32 | (uint32_t)k; }

/* Asks the kernel to cancel the request's pieces it holds (best effort: they
 * may finish normally). */
static void cancel_in_kernel(st_io *io, int32_t i) {
    if (!io->use_ring || !io->can_cancel || io->slots[i].inflight == 0) return;
    for (int32_t k = 0; k < io->n_pieces; k++) {
        if (!io->pieces[k].inflight || io->pieces[k].slot != i) continue;
        struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
        if (!sqe && io_uring_submit(&io->ring) >= 0) sqe = io_uring_get_sqe(&io->ring);
        if (!sqe) return; /* the pieces complete normally */
        io_uring_prep_cancel64(sqe, piece_user_data(io, k), 0);
        io_uring_sqe_set_data64(sqe, CANCEL_USER_DATA);
        io->cancels_inflight++;
    }
}

/* Records the request's failure (the first one; for end of file the earliest)
 * and stops it: queued pieces dropped, pieces in the kernel cancelled. */
static void fail(st_io *io, int32_t i, int status, int err) {
    st_io_slot *s = &io->slots[i];
    s->failed = true;
    s->status = status;
    s->err = err;
    drop_queued(io, i);
    cancel_in_kernel(io, i);
}


static int find_fixed_buffer(const st_io *io, const uint8_t *p, size_t len) {
    if (!io->fixed_buffers) return -1;
    for (int b = 0; b < io->n_iov; b++) {
        const uint8_t *base = io->iov[b].iov_base;
        if (p >= base && p + len <= base + io->iov[b].iov_len) return b;
    }
    return -1;
}

/* Marks piece k as in the kernel; fills where it reads from and into.
 * Returns the descriptor (or fixed index) to read from. */
static int prepare_piece(st_io *io, int32_t k, bool fixed_index, uint8_t **dst, uint64_t *off) {
    st_io_piece *p = &io->pieces[k];
    st_io_slot *s = &io->slots[p->slot];
    st_io_file *f = &io->files[s->req.file];
    p->direct = st_io_file_is_direct(f) && !p->buffered;
    p->issue_len = (uint32_t)(p->len - p->done);
    p->inflight = true;
    *dst = (uint8_t *)s->req.dst + p->off + p->done;
    *off = s->req.offset + p->off + p->done;
    s->inflight++;
    io->inflight++;
    io->inflight_bytes += p->issue_len;
    io->stats.peak_inflight_bytes = ST_MAX(io->stats.peak_inflight_bytes, io->inflight_bytes);
    io->stats.pieces++;
    if (fixed_index) return 2 * s->req.file + (p->direct ? 0 : 1);
    return p->direct ? f->fd_direct : f->fd_buffered;
}

/* The piece's remainder waits to be issued again, ahead of the request's
 * next pieces (the request goes back to the front of its FIFO). */
static void requeue_piece(st_io *io, int32_t k) {
    st_io_piece *p = &io->pieces[k];
    int32_t i = p->slot;
    st_io_slot *s = &io->slots[i];
    if (s->cancel || s->failed) { piece_release(io, k); settle(io, i); return; }
    /* O_DIRECT needs the remainder aligned; after an odd short read it is not. */
    uint64_t off = s->req.offset + p->off + p->done;
    uintptr_t dst = (uintptr_t)s->req.dst + p->off + p->done;
    if (off % io->align || (p->len - p->done) % io->align || dst % io->align) p->buffered = true;
    p->next = -1;
    int32_t *link = &s->redo;
    while (*link >= 0) link = &io->pieces[*link].next;
    *link = k;
    if (!s->queued) fifo_push(io, i, true);
}

/* " (piece 3 of 7 of a 14680064-byte read at offset 0)" when the request has several pieces, else "". */
static const char *piece_note(const st_io *io, const st_io_slot *s, const st_io_piece *p, char *buf, size_t n) {
    if (s->req.length <= io->piece_max) return "";
    snprintf(buf, n, " (piece %llu of %llu of a %zu-byte read at offset %llu)", (unsigned long long)(p->off / io->piece_max + 1),
             (unsigned long long)ST_DIV_UP(s->req.length, io->piece_max), s->req.length, (unsigned long long)s->req.offset);
    return buf;
}

static void piece_result(st_io *io, int32_t k, int64_t res) {
    st_io_piece *p = &io->pieces[k];
    int32_t i = p->slot;
    st_io_slot *s = &io->slots[i];
    st_io_file *f = &io->files[s->req.file];
    ST_ASSERT(p->inflight && s->inflight > 0);
    p->inflight = false;
    s->inflight--;
    io->inflight--;
    io->inflight_bytes -= p->issue_len;
    uint64_t off = s->req.offset + p->off + p->done;
    res = st_fault_apply(&io->faults, s->req.file, p->direct, off, p->issue_len, res);
    char note[160];
    if (res > 0) { /* bytes arrived, whatever becomes of the request */
        p->done += (uint64_t)res;
        s->done += (uint64_t)res;
        if ((uint64_t)res < p->issue_len) io->stats.short_reads++;
    }
    if (s->failed || res == -ECANCELED || (s->cancel && res == -EINTR)) {
        if (res == -ECANCELED) s->cancel = true;
        piece_release(io, k);
        settle(io, i);
    } else if ((res == -EAGAIN || res == -EINTR) && p->retries < MAX_RETRIES) {
        p->retries++;
        io->stats.retries++;
        requeue_piece(io, k);
    } else if (res == -EINVAL && p->direct) {
        /* the file system took O_DIRECT at open but refuses the read: page cache from now on */
        if (!f->direct_refused) io->stats.direct_fallbacks++;
        f->direct_refused = true;
        if (!io->direct_warned)
            ST_WARN("io: %s: O_DIRECT read of %u bytes at offset %llu refused (%s); reading this file through the page cache",
                    f->path, p->issue_len, (unsigned long long)off, strerror(EINVAL));
        io->direct_warned = true;
        p->buffered = true;
        requeue_piece(io, k);
    } else if (res < 0) {
        int e = (int)-res;
        set_message(s, "io: %s: read of %u bytes at offset %llu failed: %s (errno %d)%s%s", f->path, p->issue_len,
                    (unsigned long long)off, strerror(e), e, p->done ? " (after a partial read)" : "",
                    piece_note(io, s, p, note, sizeof note));
        fail(io, i, ST_ERR_IO, e);
        piece_release(io, k);
        settle(io, i);
    } else if (res == 0) {
        uint64_t got = p->off + p->done;
        if (!s->failed || (s->status == ST_ERR_FORMAT && got < s->eof_got)) {
            struct stat st;
            long long now = fstat(f->fd_buffered, &st) == 0 ? (long long)st.st_size : -1;
            set_message(s,
                        "io: %s: unexpected end of file: read of %zu bytes at offset %llu got %llu bytes "
                        "(file is %lld bytes, %llu at open): truncated",
                        f->path, s->req.length, (unsigned long long)s->req.offset, (unsigned long long)got, now,
                        (unsigned long long)f->size);
            s->eof_got = got;
            fail(io, i, ST_ERR_FORMAT, 0);
        }
        piece_release(io, k);
        settle(io, i);
    } else if (p->done >= p->len) {
        piece_release(io, k);
        settle(io, i);
    } else {
        requeue_piece(io, k);
    }
}

/* ---- the io_uring path ---- */

static struct io_uring_sqe *get_sqe(st_io *io) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
    if (!sqe && io_uring_submit(&io->ring) >= 0) sqe = io_uring_get_sqe(&io->ring);
    return sqe;
}

/* May the next piece (`bytes`, of the urgent class or not) go to the kernel now? */
static bool room_for(const st_io *io, uint64_t bytes, bool urgent) {
    if (io->inflight >= io->depth) return false;
    const uint64_t cap = urgent ? io->max_inflight_urgent_bytes : io->max_inflight_bytes;
    return !cap || io->inflight == 0 || io->inflight_bytes + bytes <= cap;
}

static int issue_ring(st_io *io) {
    bool queued = false;
    while (io->pending_count > 0) {
        int cls, file;
        int32_t i = next_request(io, &cls, &file);
        /* in order: a piece that does not fit waits, nothing smaller overtakes it */
        if (!room_for(io, next_piece_bytes(io, &io->slots[i]), cls == URGENT)) break;
        int rc = reserve_piece(io);
        if (rc) return rc;
        struct io_uring_sqe *sqe = get_sqe(io);
        if (!sqe) break;
        int32_t k = take_piece(io, i, cls, file);
        uint8_t *dst;
        uint64_t off;
        int fd = prepare_piece(io, k, io->fixed_files, &dst, &off);
        uint32_t len = io->pieces[k].issue_len;
        int buf = find_fixed_buffer(io, dst, len);
        if (buf >= 0) io_uring_prep_read_fixed(sqe, fd, dst, len, off, buf);
        else io_uring_prep_read(sqe, fd, dst, len, off);
        if (io->fixed_files) sqe->flags |= IOSQE_FIXED_FILE;
        io_uring_sqe_set_data64(sqe, piece_user_data(io, k));
        queued = true;
    }
    if (!queued && !io_uring_sq_ready(&io->ring)) return 0;
    int rc = io_uring_submit(&io->ring);
    /* EAGAIN/EBUSY: the kernel is short of resources now; the SQEs stay queued */
    if (rc < 0 && rc != -EAGAIN && rc != -EBUSY && rc != -EINTR)
        return st_error(ST_ERR_IO, "io: io_uring_submit: %s", strerror(-rc));
    return 0;
}

static void handle_cqe(st_io *io, uint64_t ud, int res) {
    if (ud == CANCEL_USER_DATA) { io->cancels_inflight--; return; }
    int32_t k = (int32_t)(uint32_t)ud;
    ST_ASSERT(k >= 0 && k < io->n_pieces && io->pieces[k].inflight && io->pieces[k].gen == (uint32_t)(ud >> 32));
    piece_result(io, k, res);
}

static int reap_ring(st_io *io) {
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&io->ring, head, cqe) {
        handle_cqe(io, cqe->user_data, cqe->res);
        n++;
    }
    io_uring_cq_advance(&io->ring, n);
    return (int)n;
}

/* ---- the synchronous path: the same pieces in the same order, one at a time ---- */

static int run_pread(st_io *io, int limit) {
    while (limit-- > 0 && io->pending_count > 0) {
        int rc = reserve_piece(io);
        if (rc) return rc;
        int cls, file;
        int32_t i = next_request(io, &cls, &file);
        int32_t k = take_piece(io, i, cls, file);
        uint8_t *dst;
        uint64_t off;
        int fd = prepare_piece(io, k, false, &dst, &off);
        ssize_t r = pread(fd, dst, io->pieces[k].issue_len, (off_t)off);
        piece_result(io, k, r < 0 ? -(int64_t)errno : (int64_t)r);
    }
    return 0;
}

/* Moves completions forward without blocking. */
static int progress(st_io *io) {
    if (!io->use_ring) return run_pread(io, io->depth);
    int rc = 0;
    do {
        rc = issue_ring(io);
    } while (!rc && reap_ring(io) > 0);
    return rc;
}

/* ---- public queue API ---- */

static int check_read(const st_io *io, const st_io_read *r, int k) {
    if (r->file < 0 || r->file >= io->n_files)
        return st_error(ST_ERR_INVALID, "io: read %d: file index %d out of range (0..%d)", k, r->file, io->n_files - 1);
    const st_io_file *f = &io->files[r->file];
    if (!r->length || !r->dst)
        return st_error(ST_ERR_INVALID, "io: %s: read %d at offset %llu: needs a length > 0 and a destination, found %zu bytes into %p",
                        f->path, k, (unsigned long long)r->offset, r->length, r->dst);
    if (r->offset + r->length < r->offset) return st_error(ST_ERR_INVALID, "io: %s: read %d: offset + length overflows", f->path, k);
    if (st_io_file_is_direct(f) && (r->offset % io->align || r->length % io->align || (uintptr_t)r->dst % io->align))
        return st_error(ST_ERR_INVALID,
                        "io: %s: read of %zu bytes at offset %llu into %p: O_DIRECT needs offset, length and "
                        "destination aligned to %zu bytes",
                        f->path, r->length, (unsigned long long)r->offset, r->dst, io->align);
    return 0;
}

static int32_t enqueue(st_io *io, const st_io_read *r) {
    int32_t i = io->free_head;
    st_io_slot *s = &io->slots[i];
    io->free_head = s->next;
    uint32_t gen = s->gen + 1;
    memset(s, 0, sizeof *s);
    s->gen = gen;
    s->req = *r;
    s->redo = -1;
    s->state = SLOT_ACTIVE;
    s->urgent = r->urgent;
    if (r->urgent) io->stats.urgent++;
    fifo_push(io, i, false);
    io->outstanding++;
    return i;
}

int st_io_submit(st_io *io, const st_io_read *reqs, int n) {
    if (n < 0 || (n && !reqs)) return st_error(ST_ERR_INVALID, "io: st_io_submit: bad request list (%d)", n);
    for (int k = 0; k < n; k++) {
        int rc = check_read(io, &reqs[k], k);
        if (rc) return rc;
    }
    int rc = grow_slots(io, n);
    if (rc) return rc;
    for (int k = 0; k < n; k++) enqueue(io, &reqs[k]);
    return io->use_ring ? issue_ring(io) : 0;
}

int st_io_cancel(st_io *io, uint64_t tag) {
    int dropped = 0;
    for (int32_t i = 0; i < io->n_slots; i++) {
        st_io_slot *s = &io->slots[i];
        if (s->state != SLOT_ACTIVE || s->req.tag != tag || s->cancel) continue;
        s->cancel = true;
        if (s->failed) continue; /* already stopping */
        drop_queued(io, i);
        if (s->inflight == 0) {
            settle(io, i);
            dropped++;
        } else {
            cancel_in_kernel(io, i);
        }
    }
    if (io->use_ring && io_uring_sq_ready(&io->ring)) io_uring_submit(&io->ring);
    return dropped;
}

int st_io_promote(st_io *io, uint64_t tag) {
    int promoted = 0;
    for (int32_t i = 0; i < io->n_slots; i++) {
        st_io_slot *s = &io->slots[i];
        if (s->state != SLOT_ACTIVE || s->req.tag != tag || s->urgent || s->cancel || s->failed) continue;
        bool queued = s->queued;
        if (queued) fifo_remove(io, i);
        s->urgent = true; /* also for remainders of its pieces in the kernel */
        if (queued) {
            fifo_push(io, i, false);
            promoted++;
        }
    }
    io->stats.promoted += (uint64_t)promoted;
    return promoted;
}

static st_io_slot *take_done(st_io *io, int32_t i, int32_t prev) {
    st_io_slot *s = &io->slots[i];
    if (prev < 0) io->done_head = s->next;
    else io->slots[prev].next = s->next;
    if (io->done_tail == i) io->done_tail = prev;
    return s;
}

static void release(st_io *io, int32_t i) {
    st_io_slot *s = &io->slots[i];
    free(s->message);
    s->message = NULL;
    s->state = SLOT_FREE;
    s->next = io->free_head;
    io->free_head = i;
    io->outstanding--;
}

static int copy_done(st_io *io, st_io_completion *out, int max) {
    int n = 0;
    while (n < max && io->done_head >= 0) {
        int32_t i = io->done_head;
        st_io_slot *s = take_done(io, i, -1);
        st_io_completion *c = &out[n++];
        c->tag = s->req.tag;
        c->file = s->req.file;
        c->offset = s->req.offset;
        c->length = s->req.length;
        c->bytes = (size_t)s->done;
        c->status = s->status;
        c->err = s->err;
        snprintf(c->message, sizeof c->message, "%s", s->status && s->message ? s->message : s->status ? st_status_str(s->status) : "");
        release(io, i);
    }
    return n;
}

int st_io_poll(st_io *io, st_io_completion *out, int max) {
    int rc = progress(io);
    if (rc) return rc;
    return max > 0 && out ? copy_done(io, out, max) : 0;
}

/* Blocks until something completes or `deadline` (st_time_s, < 0: none) passes.
 * 1: progress possible, 0: timed out or nothing outstanding, < 0: ring failure. */
static int wait_some(st_io *io, double deadline) {
    if (!io->use_ring) return io->pending_count > 0;
    if (io->inflight + io->cancels_inflight == 0) return 0;
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts;
    if (deadline >= 0) {
        double left = deadline - st_time_s();
        if (left <= 0) return 0;
        ts.tv_sec = (long long)left;
        ts.tv_nsec = (long long)((left - (double)ts.tv_sec) * 1e9);
    }
    int rc = io_uring_wait_cqe_timeout(&io->ring, &cqe, deadline >= 0 ? &ts : NULL);
    if (rc == -ETIME) return 0;
    if (rc < 0 && rc != -EINTR) return st_error(ST_ERR_IO, "io: waiting for completions: %s", strerror(-rc));
    return 1;
}

int st_io_wait(st_io *io, st_io_completion *out, int max, int min, int timeout_ms) {
    if (!out || max <= 0) return st_error(ST_ERR_INVALID, "io: st_io_wait needs room for completions");
    min = ST_MIN(min, max);
    double deadline = timeout_ms < 0 ? -1 : st_time_s() + timeout_ms / 1000.0;
    int n = st_io_poll(io, out, max);
    while (n >= 0 && n < min) {
        int rc = wait_some(io, deadline);
        if (rc <= 0) return rc < 0 ? rc : n;
        rc = st_io_poll(io, out + n, max - n);
        if (rc < 0) return rc;
        n += rc;
    }
    return n;
}

int st_io_read_sync(st_io *io, int file, uint64_t offset, size_t length, void *dst) {
    st_io_read r = {.file = file, .offset = offset, .length = length, .dst = dst};
    int rc = check_read(io, &r, 0);
    if (!rc) rc = grow_slots(io, 1);
    if (rc) return rc;
    int32_t i = enqueue(io, &r);
    uint32_t gen = io->slots[i].gen;
    while (rc >= 0 && io->slots[i].state != SLOT_DONE) {
        rc = progress(io);
        if (!rc && io->slots[i].state != SLOT_DONE) rc = wait_some(io, -1);
    }
    ST_ASSERT(io->slots[i].gen == gen);
    if (rc < 0 && io->slots[i].state != SLOT_DONE) return rc; /* the ring failed: the slot stays outstanding */
    int32_t prev = -1;
    for (int32_t j = io->done_head; j != i; j = io->slots[j].next) prev = j;
    st_io_slot *s = take_done(io, i, prev);
    int status = s->status;
    if (status) st_error(status, "%s", s->message ? s->message : st_status_str(status));
    release(io, i);
    return status;
}

void st_io_drain(st_io *io) {
    for (int32_t i = 0; i < io->n_slots; i++) {
        st_io_slot *s = &io->slots[i];
        if (s->state != SLOT_ACTIVE) continue;
        s->cancel = true;
        drop_queued(io, i);
        settle(io, i);
    }
    if (!io->use_ring) return;
    /* the kernel may still be writing into caller memory: wait for every piece */
    while (io->inflight + io->cancels_inflight > 0) {
        reap_ring(io);
        if (io->inflight + io->cancels_inflight == 0) break;
        io_uring_submit_and_wait(&io->ring, 1);
    }
}
