/* Tiered, paged store for compressed KV entries (KV tiering).
 *
 * One store serves every layer of one sequence: each layer's compressed entries
 * are a *stream* (st_kv_pages_add_stream), an append-only array of fixed-size
 * entries (entry_bytes: d F32 in reference numerics, the official compact
 * layout in official numerics: engine/attention.h st_comp_entry_bytes, 583 B at d 512)
 * cut into pages of P = page_bytes / entry_bytes entries. Every page occupies
 * one frame of page_bytes (a multiple of 4096) on the tier that holds it:
 *
 *   fast  frames charged to the `fast` budget (--kv-budget): where the attention
 *         code reads entries;
 *   dram  frames charged to the `dram` budget (NULL: no DRAM tier);
 *   nvme  slots of one private spill file in `spill_dir` (NULL: no NVMe tier),
 *         created at the first spill, unlinked right after it is opened (no
 *         name left behind, even on a crash after that), written with pwrite
 *         (O_DIRECT where the file system allows), read back through io/uring.h.
 *
 * Resident streams (HCA entries, indexer keys) never leave the fast tier and
 * their pointers never move. Spillable streams (CSA main entries) move down
 * when a fast frame is needed and none is free: first a clean cached copy is
 * dropped (LRU among fetched pages: no I/O), else the oldest page (by creation,
 * over all spillable streams) moves to DRAM, whose oldest page moves to NVMe
 * when DRAM is full (with no DRAM tier, or a full one that cannot make room,
 * the page goes straight to NVMe). Pages read back from NVMe go to the fast
 * tier only (DRAM is not a second-level cache). Spill writes are synchronous
 * (pwrite in the call that needed the frame: append, get, prefetch, span).
 * The last page of every stream (being appended) always stays in fast memory.
 * Spilled pages are immutable, so a page fetched back is a clean cache copy.
 *
 * Budgets are hard limits: a frame is allocated only when its budget allows
 * (st_mem_alloc); otherwise something is evicted; frames, once allocated, stay
 * charged for reuse until st_kv_pages_free; reads in flight (prefetch) are
 * waited for, their copies then dropped like any other; when nothing can be (all
 * pinned, or no lower tier has room) the call fails with ST_ERR_BUDGET and a
 * message naming the budget, what it holds and what was asked. Nothing is
 * ever allocated past a limit, not even transiently.
 *
 * Pinning: pointers returned by get/span point into fast frames that are
 * pinned (never evicted or moved) until the next st_kv_pages_get(),
 * st_kv_pages_release(), st_kv_pages_truncate() or st_kv_pages_reset() on the
 * SAME stream (or st_kv_pages_free). Calls on other streams and appends to any
 * stream, this one included, leave them valid. Release a stream's pins as soon
 * as its attention is computed: pins of every stream share the fast budget.
 *
 * Results never depend on placement: the bytes behind a pointer are exactly
 * the bytes appended, wherever the page has been.
 *
 * Consecutive tokens (STRATA_KV_STATS=1: a summary on stderr at free, and the
 * get_* counters): their top-k overlaps (flash-2l on ~6.7K tokens of real
 * text: 60% of a CSA layer's entries were chosen by the token before too; the
 * tiny fixture of tests/test_kv_tiering.c: 59% of the pages), but the fetched
 * copies kept in the LRU already serve that overlap: of the 535 pages its gets
 * found missing, 1 had been named by the get before. The wait is for pages no
 * earlier token named, known only once the indexer has run (bench longctx at
 * 1M with random entries: 3% of pages named again, none missing at the get:
 * all queued right after the top-k, then waited for).
 *
 * Errors: 0 or a negative st_status; the message (st_last_error) names the
 * stream, the page and, for I/O, the spill file, offset and errno. A failed
 * read leaves the page where it was (a later call reads it again).
 *
 * Threads: one thread at a time per store (like st_io); no internal locks.
 */
#ifndef ST_OFFLOAD_KV_PAGES_H
#define ST_OFFLOAD_KV_PAGES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu/mem.h"

typedef struct st_kv_pages st_kv_pages;

typedef struct st_kv_pages_options {
    uint64_t page_bytes;    /* frame size, multiple of 4096; 0: 64 KiB */
    st_budget *fast;        /* fast tier (--kv-budget); NULL: unlimited (never spills) */
    st_budget *dram;        /* DRAM tier; NULL: none (fast spills straight to NVMe) */
    const char *spill_dir;  /* NVMe tier: directory for the spill file; NULL: none */
    bool spill_buffered;    /* never use O_DIRECT on the spill file */
    const char *io_faults;  /* fault rules for the spill file's reads (io/uring.h grammar);
                               NULL: STRATA_IO_FAULTS or none */
    int io_depth;           /* reads in flight; 0: 64 */
    int readahead;          /* span(): pages after a fetched one to queue too; 0: 4, < 0: none */
} st_kv_pages_options;

typedef struct st_kv_pages_stats {
    uint64_t page_bytes;
    int streams;
    /* where pages are now (a page fetched back counts in both its home and cached) */
    uint64_t pages_fast;       /* home on the fast tier (never spilled, or made writable again) */
    uint64_t pages_cached;     /* fast copies of pages whose home is dram or nvme */
    uint64_t pages_dram, pages_nvme;
    uint64_t bytes_fast;       /* frames held on each tier, free ones included (== budget charge) */
    uint64_t bytes_dram;
    uint64_t bytes_nvme;       /* spill file size */
    /* traffic since creation */
    uint64_t spilled_dram;     /* pages moved fast -> dram */
    uint64_t spilled_nvme;     /* pages written to the spill file */
    uint64_t bytes_written;
    uint64_t write_ns;         /* time in pwrite */
    uint64_t fetched_dram;     /* pages copied dram -> fast */
    uint64_t fetched_nvme;     /* pages read back from the spill file */
    uint64_t bytes_read;
    uint64_t prefetched;       /* fetches started by prefetch/readahead */
    uint64_t hits;             /* pages a get/span found in fast memory (resident, cached or in flight) */
    uint64_t dropped;          /* cached copies evicted */
    uint64_t stall_ns;         /* time get/span waited for reads */
    uint64_t gets;             /* st_kv_pages_get calls */
    uint64_t get_pages;        /* distinct pages those calls named */
    uint64_t get_repeat;       /* of them, named by the previous get on the same stream too */
    uint64_t get_missing;      /* of them, not in fast memory (nor being read) when the get began */
    uint64_t get_missing_repeat; /* ... and named by the previous get (what read-ahead could have fetched) */
    uint64_t get_entries;      /* with STRATA_KV_STATS set: entries the gets named */
    uint64_t get_entry_repeat; /* ... of them, named by the previous get on the same stream too */
    uint64_t gathers;          /* st_kv_pages_gather calls */
    uint64_t gather_pages;     /* distinct pages those calls named */
    uint64_t gather_fetched;   /* of those pages, fetched by the gather (not in fast memory) */
    uint64_t gather_batches;   /* groups of such pages fetched together (pinned at once) */
    uint64_t io_errors;
} st_kv_pages_stats;

/* 0, ST_ERR_INVALID (page_bytes not a multiple of 4096), ST_ERR_NOMEM. Nothing
 * is allocated on any tier until entries are appended. */
int st_kv_pages_new(const st_kv_pages_options *opt, st_kv_pages **out);
/* Waits for reads in flight, frees every frame (budgets get their bytes back),
 * closes the spill file (already unlinked: its blocks are freed). NULL is a no-op. */
void st_kv_pages_free(st_kv_pages *kv);

/* A new empty stream of entries of entry_bytes (1..page_bytes). name (copied)
 * appears in messages ("layer 3 csa"). resident: never leaves the fast tier.
 * *stream is its number (0, 1, ... in order of creation). */
int st_kv_pages_add_stream(st_kv_pages *kv, size_t entry_bytes, bool resident, const char *name, int *stream);
/* The least fast budget the store works with: every stream keeps its last
 * (open) page fast, and one more frame to read a page into. A get needs every
 * page it names pinned at once; st_kv_pages_gather works at this least
 * whatever the pages named. 0 without streams. */
uint64_t st_kv_pages_least_fast(const st_kv_pages *kv);
int64_t st_kv_pages_count(const st_kv_pages *kv, int stream);        /* entries appended */
int64_t st_kv_pages_page_entries(const st_kv_pages *kv, int stream); /* P */
size_t st_kv_pages_entry_bytes(const st_kv_pages *kv, int stream);

/* Appends n entries (n * entry_bytes bytes). *first (may be NULL) gets the
 * index of the first one. May spill (I/O errors come back here). All or none:
 * on failure the stream holds what it held before (n == 1 always; for n > 1
 * the entries that were added are truncated away again). */
int st_kv_pages_append(st_kv_pages *kv, int stream, const void *entries, int64_t n, int64_t *first);

/* Queues the fetch of the pages holding idx[0..n) that are not in fast memory
 * (each page once): DRAM pages are copied at once, NVMe pages are read
 * asynchronously. Advisory: pages for which no fast frame can be had without
 * touching pinned ones are skipped. 0, ST_ERR_INVALID (index out of range),
 * or an error from queuing a read. */
int st_kv_pages_prefetch(st_kv_pages *kv, int stream, const int32_t *idx, int64_t n);

/* ptrs[i] = the bytes of entry idx[i] (indices in any order, repeats allowed),
 * in fast memory. Releases the stream's earlier pins first, then pins every
 * page used (see Pinning above), fetching the missing ones (batched: every
 * read is queued before the first wait) and waiting for reads in flight.
 * 0; ST_ERR_INVALID (index out of range: message names it); ST_ERR_BUDGET
 * (the distinct pages of this call do not fit the fast budget next to the
 * other pins and the tail pages); ST_ERR_IO / ST_ERR_FORMAT (a read failed:
 * file, offset, errno). On failure nothing of this call stays pinned. */
int st_kv_pages_get(st_kv_pages *kv, int stream, const int32_t *idx, int64_t n, const void **ptrs);

/* Copies entries idx[0..n) (any order, repeats allowed) into dst: entry
 * idx[i] at dst + i * stride (stride >= the stream's entry_bytes). The way to
 * read a set of pages that a get cannot pin at once: pages already in fast
 * memory are copied first, then the missing ones are fetched a few at a time
 * (at most 8 pages pinned together; one at the least budget), copied and
 * unpinned, their frames free for the next ones. Releases the stream's
 * earlier pins first and leaves nothing of this call pinned. Same bytes as a
 * get. 0; ST_ERR_INVALID (stream, stride, or an index out of range: message
 * names it); ST_ERR_BUDGET (not even one frame to read into); ST_ERR_IO /
 * ST_ERR_FORMAT (a read failed: file, offset, errno; a read of a page
 * prefetched earlier that failed is reported here, as by get). On failure
 * dst is partly written. */
int st_kv_pages_gather(st_kv_pages *kv, int stream, const int32_t *idx, int64_t n, void *dst, size_t stride);

/* Dense walk (HCA-style, or scoring every indexer key): *ptr = entry `first`,
 * *n = how many entries from there on share its page (contiguous, >= 1).
 * ADDS that page to the stream's pins (does not release earlier ones): a walk
 * may keep every span, or call st_kv_pages_release between pages to hold one
 * at a time. When the page had to be fetched, the next `readahead` pages are
 * queued too. Errors as for get. Typical walk:
 *     for (int64_t i = 0, n; i < count; i += n) { st_kv_pages_span(kv, s, i, &p, &n); use p[0..n) }
 * For resident streams the pointers never move until truncate/reset. */
int st_kv_pages_span(st_kv_pages *kv, int stream, int64_t first, const void **ptr, int64_t *n);

/* Drops the stream's pins (pointers from get/span on it become invalid). */
void st_kv_pages_release(st_kv_pages *kv, int stream);

/* Keeps the first n entries (n <= count) and forgets the rest (KV reuse of a
 * common prefix). The page that becomes the last one is brought back to the
 * fast tier (it is appended to again). Drops the stream's pins. */
int st_kv_pages_truncate(st_kv_pages *kv, int stream, int64_t n);
/* Every stream back to 0 entries; frames stay allocated for reuse. */
int st_kv_pages_reset(st_kv_pages *kv);

void st_kv_pages_get_stats(const st_kv_pages *kv, st_kv_pages_stats *out);
/* The spill file's path ("" before the first NVMe spill; the name is already
 * unlinked, it is for messages) and its read engine (NULL before): tests use
 * st_io_set_faults on it. */
const char *st_kv_pages_spill_path(const st_kv_pages *kv);
struct st_io *st_kv_pages_io(st_kv_pages *kv);

#endif
