/* The expert stream: routed experts served from files (the NVMe tier) through
 * a DRAM slot cache of a hard byte budget, loaded ahead of use by the prefetch
 * scheduler (offload/prefetch.h) over the io_uring read engine (O_DIRECT).
 *
 * Knows bytes, files and keys (layer, expert), not the model: the engine
 * describes each expert as up to ST_STREAM_MAX_PIECES tensors (file, offset,
 * bytes), e.g. w1/w3/w2 .weight + .scale, and turns the piece pointers this
 * stream hands out into its weight descriptors. Pieces of one expert that lie
 * close together in one file are read as one 4096-aligned span (a pack extent
 * is exactly one span); others as separate spans. Every span is read into the
 * slot at a 4096-aligned place, so O_DIRECT reads go straight into the slot and
 * the file's page cache / mapping is never touched.
 *
 * Deadlines are steps: step * n_layers + layer, where step counts forward
 * chunks (st_expert_stream_step). The engine, per chunk:
 *   step(...)                      a chunk starts (queued requests of past steps go stale)
 *   request(layer, experts)        certain experts (hash-routed layers, from token ids)
 *   per layer: begin(layer, experts) right after the router: queued predictions for
 *                                  this layer the router did not choose are dropped
 *                                  (never read), the layer's experts are pinned
 *                                  (missing ones start loading at once), then
 *              predict(layer + 1, experts) the next layer's predicted experts
 *              next(...) until 0   experts in the order they are resident
 *              end()               releases the pins, closes the layer's numbers
 * When a layer needs more experts than fit at once, they are served in groups
 * of at most (slots - 1, 64) in ascending id; later groups are requested with
 * the current deadline so they stream while the first ones compute. begin
 * marks the layer's cached experts wanted (st_slot_cache_want: evicted last),
 * so the loads of its first groups do not evict what its later groups use.
 * When a step needs more experts than there are slots (a large batch), half
 * the slots hold a kept subset (st_slot_cache_set_keep) that survives from
 * step to step, and the layer's groups (half the other slots each) stream
 * through the rest.
 *
 * Reads reach the kernel in pieces of 4 MiB, 16 MiB at a time (io/uring.h
 * max_piece, max_inflight_bytes: 0.92-0.99 of whole-read throughput on a pack);
 * the rest waits in the io engine's queue, where the loads the engine waits
 * for (demand loads, late prefetches: st_transfer.promote) overtake the
 * speculative ones. STRATA_IO_PIECE / STRATA_IO_INFLIGHT (bytes, 0: off) change
 * this for A/B measurements.
 *
 * Threads: one owner thread (the engine's), like st_prefetch.
 */
#ifndef ST_OFFLOAD_EXPERT_SOURCE_H
#define ST_OFFLOAD_EXPERT_SOURCE_H

#include <stdbool.h>
#include <stdint.h>

#include "cpu/mem.h"
#include "offload/policy.h"
#include "offload/prefetch.h"

#define ST_STREAM_MAX_PIECES 8

typedef struct st_stream_piece {
    int file;        /* index into the description's paths */
    uint64_t offset; /* absolute byte offset in that file */
    uint64_t bytes;  /* > 0 */
} st_stream_piece;

typedef struct st_stream_desc {
    int n_layers, n_experts;
    int n_pieces;                   /* tensors per expert, 1..ST_STREAM_MAX_PIECES */
    const char *const *paths;       /* files the pieces live in */
    int n_files;
    /* Fills pieces[0..n_pieces) of (layer, expert). 0 or an error (message set). */
    int (*locate)(void *ctx, int layer, int expert, st_stream_piece *pieces);
    void *ctx;
} st_stream_desc;

typedef struct st_stream_opts {
    uint64_t cache_bytes;   /* slot memory: as many slots as fit (at least 2 are needed) */
    int n_slots;            /* > 0: exactly this many slots instead */
    st_budget *budget;      /* charged for the slots; NULL: the stream makes one of cache_bytes
                               (unlimited when only n_slots is given) */
    st_policy_kind policy;  /* eviction (default LRU) */
    bool no_prefetch;       /* predictions and requests are ignored: demand loads only */
    int queue_depth;        /* prefetch loads in flight; 0: 8 */
    int io_depth;           /* reads in the kernel; 0: 32 */
    bool buffered;          /* never O_DIRECT (tests on tmpfs do this by themselves) */
    const char *faults;     /* io fault rules (io/uring.h); NULL: STRATA_IO_FAULTS */
    st_mem_policy mem_policy;
    int node;
} st_stream_opts;

typedef struct st_stream_stats {
    st_prefetch_stats pf;         /* needs, hits, late, misses, stall_ns, wasted_bytes, ... */
    int n_slots;
    uint64_t slot_bytes;          /* one slot (4096-aligned stride) */
    uint64_t cache_bytes;         /* n_slots * slot_bytes: the memory held */
    uint64_t budget_peak;         /* peak bytes charged to the budget */
    uint64_t expert_bytes;        /* bytes of one expert's tensors (the largest) */
    uint64_t span_bytes;          /* bytes read per expert (aligned spans, the largest) */
    uint64_t reads, bytes_read;   /* completed span reads */
    uint64_t bytes_copied;        /* bytes copied from the page cache instead (set_warm_copy) */
    uint64_t wanted_evictions;    /* slot cache: evictions of a wanted (predicted / needed) expert */
    uint64_t kept_evictions;      /* slot cache: evictions from the kept subset (st_slot_cache_set_keep) */
    int io_depth;                 /* reads in the kernel at most (several nodes: summed) */
    uint64_t io_promoted;         /* loads moved ahead of speculative ones (st_io_promote) */
    uint64_t io_peak_inflight;    /* most bytes in the kernel at once (several nodes: summed) */
    int prefetch_depth;           /* prefetch loads in flight at most (several nodes: summed) */
    const char *io_backend;       /* "io_uring" or "pread" */
    int direct_files, files;
} st_stream_stats;

typedef struct st_expert_stream st_expert_stream;

/* Locates every expert, sizes and allocates the slots, opens the files.
 * 0, ST_ERR_BUDGET (fewer than 2 slots fit: message names budget and slot
 * size), ST_ERR_INVALID, ST_ERR_NOMEM, ST_ERR_IO / ST_ERR_NOT_FOUND (files). */
int st_expert_stream_new(const st_stream_desc *d, const st_stream_opts *o, st_expert_stream **out);
/* Stops loads in flight and frees everything (NULL is a no-op). */
void st_expert_stream_free(st_expert_stream *s);

/* A forward chunk starts (step numbers increase by one per call). */
void st_expert_stream_step(st_expert_stream *s);
/* Experts certainly needed by `layer` in the current step (hash routing). */
int st_expert_stream_request(st_expert_stream *s, int layer, const int *experts, int n);
/* A prediction of `layer`'s experts in the current step: queued requests for
 * that layer not named again are cancelled. */
int st_expert_stream_predict(st_expert_stream *s, int layer, const int *experts, int n);
/* Issues queued loads and reaps finished ones; never blocks. */
int st_expert_stream_pump(st_expert_stream *s);

/* The layer needs experts[0..n) (ascending, distinct, n <= n_experts). Pins
 * the first group. hit (may be NULL): hit[i] = experts[i] was resident. */
int st_expert_stream_begin(st_expert_stream *s, int layer, const int *experts, int n, bool *hit);
/* The next expert to compute: 1 with *expert and pieces[0..n_pieces) pointing
 * at its tensors in the slot (valid until the next call of next or end), 0
 * when every expert was handed out, or a load's failure (message names the
 * file, offset and error, and the layer and expert). */
int st_expert_stream_next(st_expert_stream *s, int *expert, const void **pieces);
/* Releases the layer's pins. Returns the time stalled in this layer (ns). */
uint64_t st_expert_stream_end(st_expert_stream *s);

void st_expert_stream_get_stats(const st_expert_stream *s, st_stream_stats *out);
/* Warm copy on (paths: the description's files, opened again buffered) or off
 * (NULL): each load copies the pages of its spans that the page cache holds
 * (a warm machine) and reads only the rest with O_DIRECT; the bytes are the
 * file's either way. For a preload; off by default (it costs a mincore per span). */
int st_expert_stream_set_warm_copy(st_expert_stream *s, const char *const *paths);
int st_expert_stream_slots(const st_expert_stream *s);
/* The slots' memory: one allocation of *bytes (page multiples) the loads land in
 * and the experts are handed out from (e.g. for a GPU tier to page-lock). */
void *st_expert_stream_slot_memory(const st_expert_stream *s, uint64_t *bytes);

#endif
