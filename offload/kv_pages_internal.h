/* Internals of the KV page store shared by offload/kv_pages.c (streams, get,
 * span, truncate), offload/kv_pages_gather.c (copies a page at a time) and
 * offload/kv_pages_tier.c (frames, eviction, spill file, reads). Nothing
 * outside offload/kv_pages*.c includes this. */
#ifndef ST_OFFLOAD_KV_PAGES_INTERNAL_H
#define ST_OFFLOAD_KV_PAGES_INTERNAL_H

#include "io/uring.h"
#include "offload/kv_pages.h"

enum { HOME_FAST = 0, HOME_DRAM = 1, HOME_NVME = 2 };
enum { TIER_FAST = 0, TIER_DRAM = 1 };
#define KV_NONE UINT64_MAX
#define KV_PAGE_BITS 40 /* a page handle is stream << 40 | page number */

typedef struct kv_page {
    uint8_t *fast;             /* frame on the fast tier: home copy, cached copy or read in flight; NULL */
    uint8_t *dram;             /* frame on the DRAM tier (home there); NULL */
    int64_t slot;              /* spill file slot (home there), -1 */
    uint64_t seq;              /* creation order over the store: "oldest" */
    uint64_t mark;             /* == kv->mark: part of the current call's set (not to be evicted by it) */
    uint64_t last_get;         /* the stream's get (kv_stream.gets) that named it last; 0: none */
    uint64_t lru_prev, lru_next;
    int32_t pins;
    uint8_t home;
    bool loading;              /* a read into `fast` is in flight */
    bool in_lru;               /* cached copy, unpinned, not loading */
} kv_page;

typedef struct kv_stream {
    char *name;
    size_t entry_bytes;
    int64_t per_page;          /* P entries a page */
    size_t io_bytes;           /* ALIGN_UP(P * entry_bytes, 4096): bytes written / read per page */
    bool resident;
    int64_t count;             /* entries */
    kv_page *pages;            /* (n_pages) */
    int64_t n_pages, cap_pages;
    int64_t fast_cursor;       /* no page below is home FAST */
    int64_t dram_cursor;       /* no page below is home DRAM */
    uint64_t *pinned;          /* page handles pinned by get/span (repeats allowed) */
    int64_t n_pinned, cap_pinned;
    uint64_t gets;             /* get calls on this stream */
    int32_t *prev_idx;         /* STRATA_KV_STATS: the previous get's indices, ascending */
    int64_t n_prev, cap_prev;
} kv_stream;

typedef struct frame_list {
    void **v;
    int64_t n, cap;
    uint64_t allocated;        /* frames of this tier in existence (free or not) */
} frame_list;

struct st_kv_pages {
    uint64_t page_bytes;
    st_budget *budget[2];      /* TIER_FAST (NULL: uncounted), TIER_DRAM (NULL: no DRAM tier) */
    char *spill_dir;
    char *faults;
    bool spill_buffered;
    bool measure;                /* STRATA_KV_STATS: entry overlap of consecutive gets, summary at free */
    int io_depth, readahead;

    kv_stream *streams;
    int n_streams, cap_streams;
    frame_list frames[2];
    uint64_t lru_head, lru_tail; /* cached copies, head = least recently used */
    uint64_t seq, mark;

    /* NVMe tier */
    char spill_path[4096];
    int fd_write, fd_buffered;   /* fd_write: O_DIRECT when possible, else == fd_buffered */
    st_io *io;
    int64_t n_slots;
    int64_t *free_slots;
    int64_t n_free_slots, cap_free_slots;
    int inflight;
    st_io_completion *comps;     /* (io_depth) */
    st_io_read *reqs;
    int64_t n_reqs, cap_reqs;
    uint64_t err_handle;         /* page whose last read failed, and why */
    int err_status;
    char err_msg[320];

    uint64_t *scratch;           /* distinct pages of one call */
    int64_t cap_scratch;
    uint64_t *gather_keys;       /* gather: page << 32 | position, sorted by page */
    int64_t cap_gather_keys;

    st_kv_pages_stats st;
};

static inline uint64_t kv_handle(int stream, int64_t page) { return ((uint64_t)stream << KV_PAGE_BITS) | (uint64_t)page; }
static inline int kv_handle_stream(uint64_t h) { return (int)(h >> KV_PAGE_BITS); }
static inline int64_t kv_handle_page(uint64_t h) { return (int64_t)(h & ((1ull << KV_PAGE_BITS) - 1)); }
static inline kv_page *kv_page_at(st_kv_pages *kv, uint64_t h) {
    return &kv->streams[kv_handle_stream(h)].pages[kv_handle_page(h)];
}

/* kv_pages.c */
kv_stream *kv_stream_of(const st_kv_pages *kv, int stream); /* NULL: no such stream */
int kv_bad_stream(const st_kv_pages *kv, int stream);       /* ST_ERR_INVALID naming it */
/* Adds page h (in fast memory) to s's pins (room in s->pinned reserved by the caller). */
void kv_pin(st_kv_pages *kv, kv_stream *s, uint64_t h);
/* Drops s's pins after the first `keep`; unpinned cached copies join the LRU. */
void kv_unpin_to(st_kv_pages *kv, kv_stream *s, int64_t keep);
/* The error of page h's failed read: the kept message (file, offset, errno), else ST_ERR_IO. */
int kv_read_failed(st_kv_pages *kv, uint64_t h);

/* kv_pages_tier.c */
void kv_lru_remove(st_kv_pages *kv, uint64_t h);
void kv_lru_push(st_kv_pages *kv, uint64_t h); /* as most recently used */
void kv_frame_put(st_kv_pages *kv, int tier, void *frame);
/* A fast frame for page h of stream s, evicting (cached copies, then the
 * oldest spillable pages, then, after waiting for reads in flight, the copies
 * they made) as needed. ST_ERR_BUDGET when nothing can move. */
int kv_fast_frame(st_kv_pages *kv, uint64_t h, void **out);
/* Queue (asynchronously) / perform (synchronously, `sync`) the read of NVMe
 * page h into its (already set) fast frame. */
int kv_queue_read(st_kv_pages *kv, uint64_t h);
/* Page h (not in fast memory) gets fast frame `frame`: copied from its DRAM home
 * now, or its read queued (kv_submit_reads sends it); when queueing fails the
 * frame goes back and the page stays without one. */
int kv_page_fill(st_kv_pages *kv, uint64_t h, void *frame);
int kv_submit_reads(st_kv_pages *kv);
int kv_read_sync(st_kv_pages *kv, uint64_t h);
/* Reaps completions until page h is no longer loading (h == KV_NONE: until
 * nothing is in flight). Time counted as stall. */
int kv_wait(st_kv_pages *kv, uint64_t h);
/* Frees every copy of page h (fast frame, DRAM frame, spill slot). */
void kv_page_drop_all(st_kv_pages *kv, uint64_t h);
void kv_tier_close(st_kv_pages *kv);

#endif
