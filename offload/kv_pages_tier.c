/* KV page store, the tier side (API and design in offload/kv_pages.h): frames
 * from budgets, the LRU of cached copies, moving the oldest pages down
 * (fast -> DRAM -> spill file), the private spill file, reads through the io
 * engine and their completions.
 *
 * Must never: allocate a frame its budget refuses, evict a pinned page, a page
 * whose read is in flight, a stream's last page or a page of the current
 * call's set, or report a page in fast memory before its read completed. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "offload/kv_pages_internal.h"

/* ---- LRU of cached copies ----------------------------------------------------------- */

void kv_lru_remove(st_kv_pages *kv, uint64_t h) {
    kv_page *p = kv_page_at(kv, h);
    if (!p->in_lru) return;
    if (p->lru_prev != KV_NONE) kv_page_at(kv, p->lru_prev)->lru_next = p->lru_next;
    else kv->lru_head = p->lru_next;
    if (p->lru_next != KV_NONE) kv_page_at(kv, p->lru_next)->lru_prev = p->lru_prev;
    else kv->lru_tail = p->lru_prev;
    p->in_lru = false;
    p->lru_prev = p->lru_next = KV_NONE;
}

void kv_lru_push(st_kv_pages *kv, uint64_t h) {
    kv_page *p = kv_page_at(kv, h);
    ST_ASSERT(p->fast && p->home != HOME_FAST && !p->loading && !p->pins);
    kv_lru_remove(kv, h);
    p->lru_prev = kv->lru_tail;
    p->lru_next = KV_NONE;
    if (kv->lru_tail != KV_NONE) kv_page_at(kv, kv->lru_tail)->lru_next = h;
    else kv->lru_head = h;
    kv->lru_tail = h;
    p->in_lru = true;
}

/* ---- frames --------------------------------------------------------------------------- */

void kv_frame_put(st_kv_pages *kv, int tier, void *frame) {
    frame_list *f = &kv->frames[tier];
    /* the list never needs more room than frames exist; grown when each was made */
    ST_ASSERT(f->n < f->cap);
    f->v[f->n++] = frame;
}

/* A frame from the tier's free list or a new one within its budget: 0, or
 * ST_ERR_BUDGET (nothing allocated, message cleared) / another error. */
static int frame_take(st_kv_pages *kv, int tier, void **out) {
    frame_list *f = &kv->frames[tier];
    if (f->n) { *out = f->v[--f->n]; return 0; }
    if (tier == TIER_DRAM && !kv->budget[TIER_DRAM]) return ST_ERR_BUDGET;
    int rc = st_grow((void **)&f->v, &f->cap, (int64_t)f->allocated + 1, sizeof *f->v);
    if (rc) return rc;
    rc = st_mem_alloc(kv->budget[tier], kv->page_bytes, ST_MEM_DEFAULT, 0, out);
    if (rc == ST_ERR_BUDGET) st_error_clear();
    if (!rc) f->allocated++;
    return rc;
}

/* ---- the spill file --------------------------------------------------------------------- */

static int spill_open(st_kv_pages *kv) {
    if (kv->io) return 0;
    if (!kv->spill_dir)
        return st_error(ST_ERR_BUDGET, "kv pages: the DRAM tier is full (or absent) and no spill directory is set");
    int n = snprintf(kv->spill_path, sizeof kv->spill_path, "%s/strata-kv-XXXXXX", kv->spill_dir);
    if (n < 0 || (size_t)n >= sizeof kv->spill_path)
        return st_error(ST_ERR_INVALID, "kv pages: spill directory path too long: %s", kv->spill_dir);
    int fd = mkostemp(kv->spill_path, O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        kv->spill_path[0] = 0;
        return st_error(ST_ERR_IO, "kv pages: cannot create a spill file in %s: %s", kv->spill_dir, strerror(e));
    }
    kv->fd_buffered = kv->fd_write = fd;
    if (!kv->spill_buffered) {
        int dfd = open(kv->spill_path, O_RDWR | O_DIRECT | O_CLOEXEC);
        if (dfd >= 0) kv->fd_write = dfd;
    }
    st_io_options o = {.queue_depth = kv->io_depth, .buffered = kv->spill_buffered, .faults = kv->faults};
    const char *path = kv->spill_path;
    int rc = st_io_open(&path, 1, &o, &kv->io);
    unlink(kv->spill_path); /* private from here on: the blocks go when the descriptors close */
    if (rc) {
        kv->io = NULL;
        return st_error_prefix(rc, "kv pages: spill file: ");
    }
    if (st_io_file_direct(kv->io, 0) && st_io_alignment(kv->io) > 4096 && kv->page_bytes % st_io_alignment(kv->io)) {
        /* the device wants more alignment than a page slot has: read through the page cache */
        st_io_close(kv->io);
        o.buffered = true;
        if ((rc = st_io_open(&path, 1, &o, &kv->io))) {
            kv->io = NULL;
            return st_error_prefix(rc, "kv pages: spill file: ");
        }
    }
    return 0;
}

static int spill_write(st_kv_pages *kv, uint64_t h, const void *src) {
    kv_stream *s = &kv->streams[kv_handle_stream(h)];
    kv_page *p = kv_page_at(kv, h);
    int rc = spill_open(kv);
    if (rc) return rc;
    int64_t slot = kv->n_free_slots ? kv->free_slots[--kv->n_free_slots] : kv->n_slots;
    uint64_t off = (uint64_t)slot * kv->page_bytes;
    uint64_t t0 = st_time_ns();
    size_t done = 0;
    while (done < s->io_bytes) {
        ssize_t w = pwrite(kv->fd_write, (const uint8_t *)src + done, s->io_bytes - done, (off_t)(off + done));
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EINVAL && kv->fd_write != kv->fd_buffered) {
            close(kv->fd_write); /* O_DIRECT refused at write time: the page cache from now on */
            kv->fd_write = kv->fd_buffered;
            continue;
        }
        if (w <= 0) {
            int e = w < 0 ? errno : ENOSPC;
            if (slot < kv->n_slots) kv->free_slots[kv->n_free_slots++] = slot;
            return st_error(ST_ERR_IO, "kv pages: %s: write of %zu bytes at offset %llu (stream '%s' page %lld): %s",
                            kv->spill_path, s->io_bytes - done, (unsigned long long)(off + done), s->name,
                            (long long)kv_handle_page(h), strerror(e));
        }
        done += (size_t)w;
    }
    kv->st.write_ns += st_time_ns() - t0;
    if (slot == kv->n_slots) {
        if ((rc = st_grow((void **)&kv->free_slots, &kv->cap_free_slots, kv->n_slots + 1, sizeof(int64_t)))) return rc;
        kv->n_slots++;
    }
    p->slot = slot;
    kv->st.spilled_nvme++;
    kv->st.bytes_written += s->io_bytes;
    return 0;
}

/* ---- moving the oldest pages down --------------------------------------------------------- */

/* The oldest page whose home is `home` that may move: not a stream's last
 * page, not pinned, not in the current call's set. KV_NONE when none. */
static uint64_t oldest(st_kv_pages *kv, int home) {
    uint64_t best = KV_NONE, best_seq = UINT64_MAX;
    for (int si = 0; si < kv->n_streams; si++) {
        kv_stream *s = &kv->streams[si];
        if (s->resident) continue;
        int64_t *cur = home == HOME_FAST ? &s->fast_cursor : &s->dram_cursor;
        while (*cur < s->n_pages && s->pages[*cur].home != home) (*cur)++;
        for (int64_t i = *cur; i < s->n_pages - 1; i++) {
            kv_page *p = &s->pages[i];
            if (p->home != home) continue;
            if (home == HOME_FAST && (p->pins || p->mark == kv->mark)) continue;
            if (p->seq < best_seq) { best_seq = p->seq; best = kv_handle(si, i); }
            break;
        }
    }
    return best;
}

/* A DRAM frame, moving the oldest DRAM page to the spill file when the DRAM
 * budget is full. ST_ERR_BUDGET when there is no room and nothing to move. */
static int dram_frame(st_kv_pages *kv, void **out) {
    int rc = frame_take(kv, TIER_DRAM, out);
    if (rc != ST_ERR_BUDGET) return rc;
    uint64_t h = oldest(kv, HOME_DRAM);
    if (h == KV_NONE || !kv->spill_dir) return ST_ERR_BUDGET;
    kv_page *p = kv_page_at(kv, h);
    if ((rc = spill_write(kv, h, p->dram))) return rc;
    *out = p->dram;
    p->dram = NULL;
    p->home = HOME_NVME;
    return 0;
}

/* Moves the oldest spillable fast-home page down (DRAM if it has room or can
 * make some, else the spill file) and frees its fast frame. 1 moved, 0 no
 * candidate, < 0 error. */
static int spill_fast(st_kv_pages *kv) {
    uint64_t h = oldest(kv, HOME_FAST);
    if (h == KV_NONE) return 0;
    kv_page *p = kv_page_at(kv, h);
    kv_stream *s = &kv->streams[kv_handle_stream(h)];
    void *d;
    int rc = kv->budget[TIER_DRAM] ? dram_frame(kv, &d) : ST_ERR_BUDGET;
    if (rc == 0) {
        memcpy(d, p->fast, s->io_bytes);
        p->dram = d;
        p->home = HOME_DRAM;
        if (kv_handle_page(h) < s->dram_cursor) s->dram_cursor = kv_handle_page(h);
        kv->st.spilled_dram++;
    } else if (rc == ST_ERR_BUDGET) {
        if (!kv->spill_dir && kv->budget[TIER_DRAM]) {
            char l[32], u[32];
            st_budget *b = kv->budget[TIER_DRAM];
            return st_error(ST_ERR_BUDGET, "kv pages: DRAM budget '%s' (limit %s, %s used) is full and no spill directory is set",
                            st_budget_name(b), st_fmt_size(st_budget_limit(b), l, sizeof l), st_fmt_size(st_budget_used(b), u, sizeof u));
        }
        if ((rc = spill_write(kv, h, p->fast))) return rc;
        p->home = HOME_NVME;
    } else {
        return rc;
    }
    kv_frame_put(kv, TIER_FAST, p->fast);
    p->fast = NULL;
    return 1;
}

static int no_room(st_kv_pages *kv, uint64_t h) {
    kv_stream *s = &kv->streams[kv_handle_stream(h)];
    int64_t pinned = 0, resident = 0, tails = 0;
    for (int i = 0; i < kv->n_streams; i++) {
        kv_stream *t = &kv->streams[i];
        for (int64_t j = 0; j < t->n_pages; j++) {
            if (!t->pages[j].fast) continue;
            if (t->resident) resident++;
            else if (j == t->n_pages - 1) tails++;
            else if (t->pages[j].pins || t->pages[j].loading || t->pages[j].mark == kv->mark) pinned++;
        }
    }
    char l[32], u[32];
    st_budget *b = kv->budget[TIER_FAST];
    return st_error(ST_ERR_BUDGET,
                    "kv pages: stream '%s' page %lld: no fast frame of %llu bytes: budget '%s' (limit %s, %s used) holds "
                    "%lld pages of resident streams, %lld last pages, %lld pages pinned or in use by this call; "
                    "nothing else can move (raise the KV budget)",
                    s->name, (long long)kv_handle_page(h), (unsigned long long)kv->page_bytes, b ? st_budget_name(b) : "-",
                    b ? st_fmt_size(st_budget_limit(b), l, sizeof l) : "-", b ? st_fmt_size(st_budget_used(b), u, sizeof u) : "-",
                    (long long)resident, (long long)tails, (long long)pinned);
}

int kv_fast_frame(st_kv_pages *kv, uint64_t h, void **out) {
    for (;;) {
        int rc = frame_take(kv, TIER_FAST, out);
        if (rc != ST_ERR_BUDGET) return rc;
        uint64_t v = kv->lru_head;
        if (v != KV_NONE && kv_page_at(kv, v)->mark != kv->mark) { /* a clean copy: no I/O to drop */
            kv_page *p = kv_page_at(kv, v);
            kv_lru_remove(kv, v);
            kv_frame_put(kv, TIER_FAST, p->fast);
            p->fast = NULL;
            kv->st.dropped++;
            continue;
        }
        rc = spill_fast(kv);
        if (rc < 0) return rc;
        if (rc == 0 && kv->inflight > 0) {
            /* reads in flight (prefetch, span readahead) hold frames nothing may take: once back, those
             * not in this call's set are cached copies that can be dropped */
            if ((rc = kv_wait(kv, KV_NONE))) return rc;
            continue;
        }
        if (rc == 0) return no_room(kv, h);
    }
}

/* ---- reads ------------------------------------------------------------------------------------ */

int kv_queue_read(st_kv_pages *kv, uint64_t h) {
    kv_page *p = kv_page_at(kv, h);
    kv_stream *s = &kv->streams[kv_handle_stream(h)];
    ST_ASSERT(p->home == HOME_NVME && p->fast && kv->io);
    int rc = st_grow((void **)&kv->reqs, &kv->cap_reqs, kv->n_reqs + 1, sizeof *kv->reqs);
    if (rc) return rc;
    kv->reqs[kv->n_reqs++] = (st_io_read){.file = 0, .offset = (uint64_t)p->slot * kv->page_bytes,
                                          .length = s->io_bytes, .dst = p->fast, .tag = h};
    p->loading = true;
    return 0;
}

int kv_page_fill(st_kv_pages *kv, uint64_t h, void *frame) {
    kv_page *p = kv_page_at(kv, h);
    p->fast = frame;
    if (p->home == HOME_DRAM) {
        memcpy(frame, p->dram, kv->streams[kv_handle_stream(h)].io_bytes);
        kv->st.fetched_dram++;
        return 0;
    }
    int rc = kv_queue_read(kv, h);
    if (rc) {
        kv_frame_put(kv, TIER_FAST, frame);
        p->fast = NULL;
    }
    return rc;
}

int kv_submit_reads(st_kv_pages *kv) {
    if (!kv->n_reqs) return 0;
    int rc = st_io_submit(kv->io, kv->reqs, (int)kv->n_reqs);
    if (rc) { /* none was queued: give the frames back */
        for (int64_t i = 0; i < kv->n_reqs; i++) {
            kv_page *p = kv_page_at(kv, kv->reqs[i].tag);
            p->loading = false;
            kv_frame_put(kv, TIER_FAST, p->fast);
            p->fast = NULL;
        }
    } else {
        kv->inflight += (int)kv->n_reqs;
    }
    kv->n_reqs = 0;
    return rc;
}

static void on_done(st_kv_pages *kv, const st_io_completion *c) {
    kv_page *p = kv_page_at(kv, c->tag);
    kv->inflight--;
    p->loading = false;
    if (c->status == 0) {
        kv->st.fetched_nvme++;
        kv->st.bytes_read += c->bytes;
        if (!p->pins) kv_lru_push(kv, c->tag);
        return;
    }
    kv->st.io_errors++;
    kv_frame_put(kv, TIER_FAST, p->fast);
    p->fast = NULL;
    kv->err_handle = c->tag;
    kv->err_status = c->status;
    snprintf(kv->err_msg, sizeof kv->err_msg, "%s", c->message[0] ? c->message : st_status_str(c->status));
}

int kv_wait(st_kv_pages *kv, uint64_t h) {
    uint64_t t0 = st_time_ns();
    int rc = 0;
    while (kv->inflight > 0 && (h == KV_NONE || kv_page_at(kv, h)->loading)) {
        int n = st_io_wait(kv->io, kv->comps, kv->io_depth, 1, -1);
        if (n < 0) { rc = st_error_prefix(n, "kv pages: waiting for spill file reads: "); break; }
        for (int i = 0; i < n; i++) on_done(kv, &kv->comps[i]);
    }
    kv->st.stall_ns += st_time_ns() - t0;
    return rc;
}

int kv_read_sync(st_kv_pages *kv, uint64_t h) {
    int rc = kv_queue_read(kv, h);
    if (!rc) rc = kv_submit_reads(kv);
    if (!rc) rc = kv_wait(kv, h);
    return rc;
}

/* ---- dropping pages, closing ----------------------------------------------------------------- */

void kv_page_drop_all(st_kv_pages *kv, uint64_t h) {
    kv_page *p = kv_page_at(kv, h);
    ST_ASSERT(!p->loading);
    kv_lru_remove(kv, h);
    if (p->fast) kv_frame_put(kv, TIER_FAST, p->fast);
    if (p->dram) kv_frame_put(kv, TIER_DRAM, p->dram);
    if (p->slot >= 0) kv->free_slots[kv->n_free_slots++] = p->slot;
    p->fast = p->dram = NULL;
    p->slot = -1;
}

void kv_tier_close(st_kv_pages *kv) {
    st_io_close(kv->io); /* waits for reads still writing into frames */
    kv->io = NULL;
    for (int i = 0; i < kv->n_streams; i++)
        for (int64_t j = 0; j < kv->streams[i].n_pages; j++) {
            kv_page *p = &kv->streams[i].pages[j];
            if (p->fast) kv_frame_put(kv, TIER_FAST, p->fast);
            if (p->dram) kv_frame_put(kv, TIER_DRAM, p->dram);
            p->fast = p->dram = NULL;
        }
    if (kv->fd_write >= 0 && kv->fd_write != kv->fd_buffered) close(kv->fd_write);
    if (kv->fd_buffered >= 0) close(kv->fd_buffered);
    kv->fd_write = kv->fd_buffered = -1;
    for (int t = 0; t < 2; t++) {
        frame_list *f = &kv->frames[t];
        for (int64_t i = 0; i < f->n; i++) st_mem_free(kv->budget[t], f->v[i], kv->page_bytes);
        free(f->v);
        memset(f, 0, sizeof *f);
    }
}
