/* The slot cache: one mechanism for every tier pair (NVMe -> DRAM now,
 * DRAM -> GPU with the CUDA backend).
 *
 * N fixed-size slots (slot_bytes = the largest extent, e.g. the largest routed
 * expert) hold copies of slow-tier objects named by a 64-bit key (for experts:
 * st_cache_key_expert(layer, expert)). A slot is
 *   EMPTY     no key;
 *   LOADING   reserved for a key whose bytes are being brought in;
 *   RESIDENT  the key's bytes are in the slot's buffer.
 * Users pin what they read (acquire: refcount + 1) and unpin it (release).
 * A slot that is pinned or LOADING is never evicted; when every slot is, a
 * request for a new key fails with ST_ERR_BUDGET (nothing is allocated beyond
 * the slots: the caller waits for a release or a completion and retries).
 *
 * Memory: all slots are one allocation made at creation from a cpu/mem.h
 * budget (or caller memory, e.g. GPU buffers the caller charged itself), so the
 * cache can never hold more than its budget; it never allocates slot memory
 * afterwards.
 *
 * Loading is driven from outside: the cache reserves a slot (LOADING), the
 * caller copies or reads the key's bytes into st_slot_cache_buffer(slot) by any
 * means (the st_transfer below, io_uring, cudaMemcpyAsync) and reports the
 * result with st_slot_cache_complete(). Eviction choices belong to a policy
 * (offload/policy.h).
 *
 * Threads: every function may be called from any thread (one mutex; a
 * condition variable wakes st_slot_cache_wait() at each completion). Policies
 * run under the mutex.
 *
 * Misuse (releasing an unpinned slot, completing a slot that is not loading,
 * bad slot numbers) returns ST_ERR_INVALID with a message; ST_ASSERT only
 * guards the cache's own invariants.
 */
#ifndef ST_OFFLOAD_SLOT_CACHE_H
#define ST_OFFLOAD_SLOT_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu/mem.h"
#include "offload/policy.h"

/* The key of routed expert `expert` of layer `layer` (both >= 0). */
static inline uint64_t st_cache_key_expert(int layer, int expert) {
    return ((uint64_t)(uint32_t)layer << 32) | (uint32_t)expert;
}
static inline int st_cache_key_layer(uint64_t key) { return (int)(key >> 32); }
static inline int st_cache_key_index(uint64_t key) { return (int)(uint32_t)key; }

/* ---- the backing transfer ---------------------------------------------------
 * "Bring key's bytes into dst", asynchronously: how slots get filled. The same
 * interface serves NVMe -> DRAM (io/uring.h: see st_uring_transfer in
 * offload/prefetch.h) and DRAM -> GPU (a stream copy + event). Loads started by
 * the cache's helpers use the slot number as the tag.
 */
typedef struct st_transfer_done {
    uint64_t tag;   /* the tag given to start */
    int status;     /* 0, or a negative st_status (ST_ERR_CANCELLED when cancelled) */
    uint64_t bytes; /* bytes placed in dst */
} st_transfer_done;

typedef struct st_transfer {
    /* Starts bringing `key` into dst (capacity `bytes`). Returns 0 once started
     * (exactly one completion will follow) or a negative status (none will). */
    int (*start)(void *ctx, uint64_t key, void *dst, uint64_t bytes, uint64_t tag);
    /* Reaps up to max finished transfers. timeout_ms 0: never blocks; > 0:
     * waits up to that long for at least one; < 0: waits without limit (only
     * while something is in flight). Returns the count or a negative status. */
    int (*poll)(void *ctx, st_transfer_done *out, int max, int timeout_ms);
    /* Optional (NULL: transfers always run to the end). Asks to stop a started
     * transfer; its completion still arrives (ST_ERR_CANCELLED or 0). */
    int (*cancel)(void *ctx, uint64_t tag);
    void *ctx;
    /* Optional (NULL: transfers keep their order). The transfer is now waited
     * for: what of it has not started moving goes ahead of other transfers. */
    int (*promote)(void *ctx, uint64_t tag);
} st_transfer;

/* ---- the cache --------------------------------------------------------------- */

typedef struct st_slot_cache st_slot_cache;

typedef enum { ST_SLOT_EMPTY = 0, ST_SLOT_LOADING = 1, ST_SLOT_RESIDENT = 2 } st_slot_state;

/* Results of acquire / lookup / prefetch (>= 0; errors are negative). */
typedef enum {
    ST_SLOT_HIT = 0,     /* resident */
    ST_SLOT_PENDING = 1, /* being loaded: st_slot_cache_wait() */
    ST_SLOT_LOAD = 2,    /* was absent: a slot is now LOADING for the key; YOU load it and complete it */
    ST_SLOT_MISS = 3,    /* lookup only: absent, nothing reserved */
} st_slot_result;

typedef struct st_slot_cache_options {
    const char *name;        /* for messages, e.g. "dram experts"; NULL: "slot cache" */
    int n_slots;             /* > 0; 0: as many as the budget has room for (needs a budget) */
    uint64_t slot_bytes;     /* capacity of one slot (> 0 unless no_memory); slots are 4096-aligned */
    st_budget *budget;       /* charged for the slots (NULL: uncounted); creation fails with ST_ERR_BUDGET when they do not fit */
    st_mem_policy mem_policy;/* placement of the slots (cpu/mem.h) */
    int node;                /* for ST_MEM_NODE */
    void *memory;            /* caller memory of n_slots * st_slot_cache_stride(slot_bytes) bytes
                                (already charged by the caller, e.g. GPU); NULL: allocate from budget */
    bool no_memory;          /* bookkeeping only (trace replay): buffers are NULL, nothing charged */
    st_policy_kind policy;   /* eviction policy (default LRU) ... */
    st_policy_options policy_options; /* ... and its options */
    st_policy *custom_policy;/* instead of policy/policy_options: this one, owned by the cache from
                                the call on (freed by st_slot_cache_free, or by new on failure) */
} st_slot_cache_options;

typedef struct st_slot_cache_stats {
    uint64_t accesses;       /* demand uses: acquire, and lookups that pinned */
    uint64_t hits;           /* ... found resident */
    uint64_t pending_hits;   /* ... found loading */
    uint64_t misses;         /* ... absent (acquire reserved a slot) */
    uint64_t full;           /* acquire/prefetch refused: every slot pinned or loading */
    uint64_t loads;          /* slots reserved for loading (demand + prefetch) */
    uint64_t prefetch_loads; /* ... of which by st_slot_cache_prefetch */
    uint64_t failed_loads;   /* completed with an error (cancelled included) */
    uint64_t evictions;
    uint64_t bytes_loaded;   /* sum of bytes of successful completions */
    uint64_t wasted_loads;   /* prefetched, then evicted / failed / cancelled before any demand use */
    uint64_t wasted_bytes;   /* their bytes */
    uint64_t wanted_evictions; /* evictions of a wanted key (nothing else was evictable) */
    uint64_t transient_evictions; /* evictions of a transient key (st_slot_cache_set_keep) */
    uint64_t kept_evictions; /* evictions of a kept key while a keep target was set */
    uint64_t promotions;     /* transient keys that a repeated use moved into the kept subset */
    int resident, loading, pinned; /* slots in each situation now */
    int wanted;              /* slots marked wanted now */
    int kept, keep;          /* keys in the kept subset now; the target (0: off) */
} st_slot_cache_stats;

/* Bytes between consecutive slots: slot_bytes rounded up to 4096. */
uint64_t st_slot_cache_stride(uint64_t slot_bytes);

/* 0, ST_ERR_INVALID (options), ST_ERR_BUDGET (slots do not fit: the message
 * names the budget), ST_ERR_NOMEM. */
int st_slot_cache_new(const st_slot_cache_options *opt, st_slot_cache **out);
/* Frees slot memory (returning the budget's charge) and the policy. Slots still
 * pinned or loading are a caller bug: reported with a warning. NULL is a no-op. */
void st_slot_cache_free(st_slot_cache *c);

/* Demand use of `key`:
 *   ST_SLOT_HIT      resident; slot pinned.
 *   ST_SLOT_PENDING  loading; slot pinned; st_slot_cache_wait() before reading.
 *   ST_SLOT_LOAD     absent; a slot is reserved (LOADING) and pinned: load it, then
 *                    st_slot_cache_complete(); on failure the slot stays pinned until released.
 *   ST_ERR_BUDGET    absent and every slot is pinned or loading; nothing pinned.
 * Every pinned result needs one st_slot_cache_release(). */
int st_slot_cache_acquire(st_slot_cache *c, uint64_t key, int *slot);
/* Like acquire but never reserves: HIT / PENDING (pinned, counted as a use) or
 * ST_SLOT_MISS (nothing pinned, nothing counted). */
int st_slot_cache_lookup(st_slot_cache *c, uint64_t key, int *slot);
/* Load ahead of use (not a use, nothing pinned):
 *   ST_SLOT_LOAD     a slot is LOADING for key: load it and complete it.
 *   ST_SLOT_HIT / ST_SLOT_PENDING  already there: nothing to do.
 *   ST_ERR_BUDGET    no slot can be freed now (wanted keys are not evicted for a prefetch). */
int st_slot_cache_prefetch(st_slot_cache *c, uint64_t key, int *slot);
/* Ends a load: status 0 makes the slot RESIDENT (bytes: how many were placed);
 * a negative status empties it (waiters get that status). Wakes waiters.
 * ST_ERR_INVALID when the slot is not LOADING. */
int st_slot_cache_complete(st_slot_cache *c, int slot, int status, uint64_t bytes);
/* Waits (the caller must hold a pin on slot) until it is no longer loading.
 * 0: resident; the load's negative status when it failed; 1: timeout_ms passed
 * (< 0: no limit); ST_ERR_INVALID when the slot is not pinned. */
int st_slot_cache_wait(st_slot_cache *c, int slot, int timeout_ms);
/* Unpins. ST_ERR_INVALID when the slot is not pinned (double release). */
int st_slot_cache_release(st_slot_cache *c, int slot);
/* Drops an unpinned resident key (e.g. its bytes changed). 0, ST_ERR_NOT_FOUND,
 * ST_ERR_BUDGET when it is pinned or loading. */
int st_slot_cache_evict(st_slot_cache *c, uint64_t key);

/* Marks the key (when it is cached) as predicted for an upcoming use, or
 * clears the mark: eviction passes over wanted slots while any other slot is
 * evictable (the policy ranks within each group), and a prefetch never evicts
 * one (st_slot_cache_prefetch reports ST_ERR_BUDGET instead). A demand use (acquire,
 * lookup) and the key leaving its slot clear the mark. Returns ST_SLOT_HIT /
 * ST_SLOT_PENDING (cached, marked) or ST_SLOT_MISS (not cached: nothing done). */
int st_slot_cache_want(st_slot_cache *c, uint64_t key, bool wanted);

/* Scan resistance, for when one round of uses (e.g. a decode step of a large
 * batch) names more keys than there are slots and LRU would evict every key
 * before its next round. keep > 0: a key entering a slot joins the KEPT subset
 * while it has fewer than `keep` members, otherwise it is TRANSIENT; a
 * transient key used again (a demand use after its first) is promoted when
 * the subset has room. Eviction then takes, in order: unwanted transient keys,
 * unwanted kept keys (demand loads only: a prefetch never evicts a kept key),
 * wanted keys (demand only, as above). So the kept subset stays resident round
 * after round and keeps hitting while the rest streams through the other
 * slots. keep <= 0 (the default): off, every key is ranked by the policy alone
 * (keys are never transient). Changing keep never evicts anything; a subset
 * larger than a new target (every key is kept while keep is off) shrinks
 * first: while it is above the target, eviction is the policy's plain order
 * (unwanted keys first). keep is clamped to slots - 1. */
void st_slot_cache_set_keep(st_slot_cache *c, int keep);

/* Layer-cyclic use (a decode step serves layers 0..L-1 in turn, keys made by
 * st_cache_key_expert): `layer` is the one being served now. A slot is then
 * taken from this layer's keys that are not wanted (st_slot_cache_want) before
 * any other layer's, at each step of the order above, in the policy's order
 * within it: those keys are used again only after every other layer's turn,
 * whereas the oldest keys (LRU's victims) belong to the layers served next.
 * Keeps each layer's share of the slots steady (flash-2l, 8 sequences, a 25%
 * cache: LRU alone hits 18% of needs where the cache's share of the experts
 * would give 25%). -1 (the default): off. */
void st_slot_cache_set_serving(st_slot_cache *c, int layer);

/* The slot's buffer (NULL with no_memory); stable for the cache's life. */
void *st_slot_cache_buffer(const st_slot_cache *c, int slot);
int st_slot_cache_slots(const st_slot_cache *c);
uint64_t st_slot_cache_slot_bytes(const st_slot_cache *c);
const char *st_slot_cache_policy_name(const st_slot_cache *c);
/* Snapshot of one slot (for tests and diagnostics): state, key (when not EMPTY)
 * and refcount. ST_ERR_INVALID for a bad slot number. */
int st_slot_cache_slot_info(st_slot_cache *c, int slot, st_slot_state *state, uint64_t *key, int *refs);
void st_slot_cache_get_stats(st_slot_cache *c, st_slot_cache_stats *out);

/* Blocking convenience for one thread that owns `xfer`: acquire key, load it
 * through xfer when absent (other completions reaped meanwhile are applied to
 * their slots: xfer must only carry loads of this cache, tagged by slot) and
 * wait until resident. 0 with *slot pinned, or the failure (nothing pinned). */
int st_slot_cache_get(st_slot_cache *c, uint64_t key, const st_transfer *xfer, int *slot);
/* Applies reaped completions (tag = slot) with st_slot_cache_complete. */
void st_slot_cache_complete_all(st_slot_cache *c, const st_transfer_done *done, int n);

#endif
