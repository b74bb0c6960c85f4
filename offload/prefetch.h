/* The prefetch scheduler: loads experts into a slot cache ahead of their use.
 *
 * Requests are (key, deadline, bytes). The deadline is a monotonic step
 * number: the engine uses token_index * n_layers + layer of the layer that
 * needs the expert, so "layer L+1 of this token" sorts before "layer 0 of the
 * next one". The engine:
 *   - as soon as the token id is known, requests the experts of the
 *     hash-routed layers (they are certain);
 *   - after layer L's router, applies layer L+1's gate to the current hidden
 *     state and calls st_prefetch_predict(step of L+1, predicted experts): the
 *     queued requests for that step that the new prediction no longer names
 *     are cancelled (superseded), the new ones queued;
 *   - calls st_prefetch_advance(step) when a layer starts (requests whose
 *     deadline has passed are dropped as stale) and st_prefetch_pump() when
 *     it has a moment (reaps finished loads, issues new ones);
 *   - serves the layer's experts with the batch API below: every chosen
 *     expert is pinned at once (missing ones start loading immediately), the
 *     resident ones are handed out first and the in-flight ones as they
 *     arrive; the engine computes each into its own buffer and combines them
 *     in ascending expert id, so results never depend on arrival order.
 * Queued requests are issued in deadline order (ties: first requested first)
 * through st_slot_cache_prefetch + the transfer, at most queue_depth prefetch
 * loads in flight at once; demand loads (a need that found nothing) start at
 * once, outside that budget, since the engine is waiting for them. A request
 * that finds its key resident or loading costs nothing. When no slot can be
 * freed (all pinned or loading) requests stay queued until one can.
 *
 * Cache policy: a key named by an open prediction (a request, or a prefetch
 * load until its use) is marked wanted in the slot cache (st_slot_cache_want),
 * so loads for other keys evict it only when nothing else is evictable; the
 * mark goes with the use, or when the prediction is superseded, settled or
 * its deadline passes.
 *
 * Statistics: at need, an expert is a hit (resident), late (requested but
 * still in flight or still queued: the time waited is stall time) or a miss
 * (never requested). Prediction accuracy = needed predictions / predictions
 * (a prediction is needed when its key is needed before its deadline has
 * passed). Wasted bytes = prefetched bytes evicted, failed or cancelled
 * before any use (counted by the slot cache).
 *
 * Threads: an st_prefetch is owned by one thread (the engine's, like st_io):
 * every st_prefetch_* call on it from that thread only. The slot cache below
 * stays shareable (other threads may use and release slots). The transfer is
 * only driven by the owner. Queue operations are linear in the queue length
 * (tens to a few hundred requests).
 */
#ifndef ST_OFFLOAD_PREFETCH_H
#define ST_OFFLOAD_PREFETCH_H

#include <stdbool.h>
#include <stdint.h>

#include "io/uring.h"
#include "offload/slot_cache.h"

typedef struct st_prefetch st_prefetch;

typedef struct st_prefetch_options {
    int queue_depth;       /* prefetch loads in flight at once, 1..4096; 0: 8 */
    bool cancel_in_flight; /* st_prefetch_cancel / superseded predictions also cancel started loads
                              (transfer's cancel); default: started loads finish (they may still be used) */
    int64_t horizon;       /* issue only requests with deadline < now + horizon (now: the last
                              st_prefetch_advance); 0: no limit. Loading far ahead into a small cache
                              evicts what is needed sooner (the policy does not know deadlines). */
    bool demand_first;     /* while a load for the current step (deadline <= now: demand loads and
                              requests of the layer being served) is in flight, issue nothing later:
                              speculative reads would share the disk with the reads the engine waits
                              for. Default: issue whenever the depth allows. */
} st_prefetch_options;

typedef struct st_prefetch_stats {
    uint64_t requests;      /* requests queued (a request for a queued key only moves its deadline) */
    uint64_t already;       /* ... found resident or loading when issued: no transfer */
    uint64_t issued;        /* prefetch transfers started */
    uint64_t issue_errors;  /* ... that the transfer refused or that failed */
    uint64_t superseded;    /* queued requests dropped by a newer prediction or st_prefetch_cancel */
    uint64_t stale;         /* queued requests dropped because their deadline passed */
    uint64_t cancelled_in_flight;
    uint64_t unneeded_in_flight; /* prefetch loads in flight when st_prefetch_settle proved them unneeded
                                    (they complete into the cache unless cancel_in_flight) */
    uint64_t needs;         /* experts needed (st_prefetch_need and batch entries) */
    uint64_t hits;          /* ... resident at need */
    uint64_t late;          /* ... requested but not resident at need (waited) */
    uint64_t late_queued;   /* ... of which still queued, not issued, at need */
    uint64_t misses;        /* ... never requested: a demand load */
    uint64_t demand_loads;  /* transfers started for needs (late_queued + misses) */
    uint64_t stall_ns;      /* time the owner waited for loads in need / batch_next */
    uint64_t predictions;   /* keys predicted (requests and predict entries) */
    uint64_t predictions_used;
    uint64_t bytes_loaded, wasted_bytes; /* from the slot cache */
    int queued, in_flight;  /* now */
} st_prefetch_stats;

/* Uses cache and xfer (both must outlive the scheduler). xfer must carry only
 * this scheduler's loads (tag = slot). 0, ST_ERR_INVALID, ST_ERR_NOMEM. */
int st_prefetch_new(st_slot_cache *cache, const st_transfer *xfer, const st_prefetch_options *opt, st_prefetch **out);
/* Drops the queue, cancels (when the transfer can) and reaps every load in
 * flight, so no transfer writes into the cache afterwards. NULL is a no-op. */
void st_prefetch_free(st_prefetch *pf);

/* Queues a load of key needed at `deadline` (bytes: its size, for accounting;
 * 0: the slot size). A key already queued keeps the earlier deadline. Counts
 * one prediction. 0 or ST_ERR_NOMEM. */
int st_prefetch_request(st_prefetch *pf, uint64_t key, int64_t deadline, uint64_t bytes);
/* A (new) prediction of the keys needed at `deadline`: queued requests for
 * that deadline not among keys are cancelled, keys are requested. */
int st_prefetch_predict(st_prefetch *pf, int64_t deadline, const uint64_t *keys, int n, uint64_t bytes);
/* The real needs of `deadline` are known (keys: e.g. the layer's routing):
 * queued requests for that deadline not among keys are dropped (superseded,
 * never issued), open predictions for it not among keys are closed, and
 * prefetch loads in flight for it that keys do not name are counted
 * (unneeded_in_flight) and, with cancel_in_flight, cancelled; otherwise they
 * complete into the cache as ordinary entries, after the demand loads
 * (demand_first). Returns the number of queued requests dropped. */
int st_prefetch_settle(st_prefetch *pf, int64_t deadline, const uint64_t *keys, int n);
/* Cancels a queued (not yet issued) request for key: 1 when one was dropped, 0
 * when none was queued. With cancel_in_flight, a started prefetch of key is
 * asked to stop as well (counted when the transfer accepts). */
int st_prefetch_cancel(st_prefetch *pf, uint64_t key);
/* The current step: queued requests and open predictions with deadline < now are dropped. */
void st_prefetch_advance(st_prefetch *pf, int64_t now);
/* Reaps finished loads and issues queued requests up to the depth. Never blocks.
 * 0 or the transfer's failure. */
int st_prefetch_pump(st_prefetch *pf);

/* Blocks until key is resident and pinned (*slot); release it with
 * st_slot_cache_release. 0, the load's failure, or ST_ERR_BUDGET when every
 * slot is pinned and nothing is in flight. */
int st_prefetch_need(st_prefetch *pf, uint64_t key, int *slot);

/* ---- one layer's experts ------------------------------------------------------ */

enum { ST_PREFETCH_BATCH_MAX = 64 };

typedef struct st_prefetch_batch {
    int n;
    uint64_t keys[ST_PREFETCH_BATCH_MAX];
    int slots[ST_PREFETCH_BATCH_MAX];     /* pinned slot of keys[i] */
    bool handed[ST_PREFETCH_BATCH_MAX];   /* returned by batch_next */
    int n_handed;
} st_prefetch_batch;

/* Pins every key (n <= ST_PREFETCH_BATCH_MAX), starting loads for the missing
 * ones. On failure nothing stays pinned. */
int st_prefetch_batch_begin(st_prefetch *pf, st_prefetch_batch *b, const uint64_t *keys, int n);
/* The lowest-indexed entry that is resident and not yet handed out, waiting
 * for a load when none is: 1 (*index into keys, *slot), 0 when all were
 * handed out, or a load's failure (its entry is then handed out as failed). */
int st_prefetch_batch_next(st_prefetch *pf, st_prefetch_batch *b, int *index, int *slot);
/* Releases every pin of the batch. */
void st_prefetch_batch_end(st_prefetch *pf, st_prefetch_batch *b);

void st_prefetch_get_stats(const st_prefetch *pf, st_prefetch_stats *out);

/* ---- NVMe -> DRAM: the transfer over the io_uring read engine -----------------
 * Where a key's bytes live in the opened files: file index, offset, length
 * (<= the slot size; 4096-aligned for O_DIRECT files, as pack extents are).
 * Returns 0 or a negative status (unknown key: ST_ERR_NOT_FOUND). */
typedef int (*st_extent_fn)(void *ctx, uint64_t key, int *file, uint64_t *offset, uint64_t *length);

typedef struct st_uring_transfer st_uring_transfer;
/* Fills *xfer with a transfer reading through io (owned by the caller, driven
 * only through xfer from then on). Read failures are logged with the read
 * engine's message (file, offset, errno) and reported as the status. */
int st_uring_transfer_new(st_io *io, st_extent_fn locate, void *ctx, st_uring_transfer **out, st_transfer *xfer);
void st_uring_transfer_free(st_uring_transfer *t);

#endif
