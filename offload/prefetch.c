/* The prefetch scheduler (see prefetch.h): the deadline queue, issue within
 * the queue depth, demand loads, the layer batch and the io_uring transfer.
 * Owns no slot memory (the slot cache does) and never waits on anything but
 * the transfer and the cache's condition. */
#include "offload/prefetch.h"

#include <stdlib.h>
#include <string.h>

#include "base/base.h"

typedef struct request {
    uint64_t key;
    int64_t deadline;
    uint64_t bytes;
    uint64_t seq; /* order of arrival: ties in deadline go first-come first */
} request;

typedef struct prediction { uint64_t key; int64_t deadline; } prediction;

enum { NOT_IN_FLIGHT = 0, PREFETCH_LOAD = 1, DEMAND_LOAD = 2 };

struct st_prefetch {
    st_slot_cache *cache;
    st_transfer xfer;
    st_prefetch_options opt;
    int n_slots;
    request *queue;      /* (n_queue) unsorted: picked by linear scan */
    int n_queue, cap_queue;
    prediction *preds;   /* open predictions */
    int n_preds, cap_preds;
    uint64_t *gone;      /* (cap_gone) scratch: keys of dropped predictions */
    int cap_gone;
    uint8_t *in_flight;  /* (n_slots) NOT_IN_FLIGHT / PREFETCH_LOAD / DEMAND_LOAD */
    int64_t *load_deadline; /* (n_slots) deadline of the load in flight (demand: the step it was needed at) */
    int n_prefetching, n_demand;
    uint64_t seq;
    int64_t now;         /* the last st_prefetch_advance */
    st_prefetch_stats st;
};

static int grow(void **p, int *cap, int need, size_t elem) {
    if (need <= *cap) return 0;
    int c = *cap ? *cap * 2 : 64;
    while (c < need) c *= 2;
    void *g = realloc(*p, (size_t)c * elem);
    if (!g) return st_error(ST_ERR_NOMEM, "prefetch: out of memory for %d entries", c);
    *p = g;
    *cap = c;
    return 0;
}

static int find_queued(const st_prefetch *pf, uint64_t key) {
    for (int i = 0; i < pf->n_queue; i++)
        if (pf->queue[i].key == key) return i;
    return -1;
}

static void unqueue(st_prefetch *pf, int i) { pf->queue[i] = pf->queue[--pf->n_queue]; }

/* The cache may evict key like any other once no open prediction names it. */
static void unwant(st_prefetch *pf, uint64_t key) {
    for (int i = 0; i < pf->n_preds; i++)
        if (pf->preds[i].key == key) return;
    st_slot_cache_want(pf->cache, key, false);
}

/* Drops queued request i: a newer prediction or the layer's real routing no longer names it. */
static void supersede(st_prefetch *pf, int i) {
    uint64_t key = pf->queue[i].key;
    int64_t d = pf->queue[i].deadline;
    unqueue(pf, i);
    pf->st.superseded++;
    for (int j = 0; j < pf->n_preds; j++)
        if (pf->preds[j].key == key && pf->preds[j].deadline == d) { pf->preds[j] = pf->preds[--pf->n_preds]; break; }
    unwant(pf, key);
}

/* ---- transfer bookkeeping -------------------------------------------------------- */

static void finish(st_prefetch *pf, const st_transfer_done *d) {
    int s = (int)d->tag;
    if (s < 0 || s >= pf->n_slots || pf->in_flight[s] == NOT_IN_FLIGHT) {
        ST_WARN("prefetch: completion for tag %llu which is not in flight (ignored)", (unsigned long long)d->tag);
        return;
    }
    if (pf->in_flight[s] == PREFETCH_LOAD) {
        pf->n_prefetching--;
        if (d->status && d->status != ST_ERR_CANCELLED) pf->st.issue_errors++;
    } else {
        pf->n_demand--;
    }
    pf->in_flight[s] = NOT_IN_FLIGHT;
    if (st_slot_cache_complete(pf->cache, s, d->status, d->bytes)) ST_WARN("prefetch: %s", st_last_error());
}

/* Reaps what is finished; timeout_ms as in st_transfer.poll (only blocks while
 * something is in flight). Returns the count or the transfer's failure. */
static int reap(st_prefetch *pf, int timeout_ms) {
    if (pf->n_prefetching + pf->n_demand == 0) timeout_ms = 0;
    st_transfer_done done[32];
    int n = pf->xfer.poll(pf->xfer.ctx, done, (int)ST_ARRAY_LEN(done), timeout_ms);
    if (n < 0) return st_error_prefix(n, "prefetch: reaping loads: ");
    for (int i = 0; i < n; i++) finish(pf, &done[i]);
    return n;
}

static int start(st_prefetch *pf, uint64_t key, int s, int kind, int64_t deadline) {
    int rc = pf->xfer.start(pf->xfer.ctx, key, st_slot_cache_buffer(pf->cache, s), st_slot_cache_slot_bytes(pf->cache), (uint64_t)s);
    if (rc) {
        st_slot_cache_complete(pf->cache, s, rc, 0);
        return rc;
    }
    pf->in_flight[s] = (uint8_t)kind;
    pf->load_deadline[s] = deadline;
    if (kind == PREFETCH_LOAD) pf->n_prefetching++;
    else pf->n_demand++;
    /* for the step being served (a demand load, a hash layer's or a later group's request): not
     * speculative, so it goes ahead of the reads that are (st_prefetch_advance does the same for
     * loads that become current while in flight) */
    if (deadline <= pf->now && pf->xfer.promote) pf->xfer.promote(pf->xfer.ctx, (uint64_t)s);
    return 0;
}

/* Loads in flight that the current step waits for (demand_first). */
static bool urgent_in_flight(const st_prefetch *pf) {
    if (pf->n_demand > 0) return true;
    for (int s = 0; s < pf->n_slots; s++)
        if (pf->in_flight[s] == PREFETCH_LOAD && pf->load_deadline[s] <= pf->now) return true;
    return false;
}

/* Issues queued requests, earliest deadline first, up to the depth. */
static void issue(st_prefetch *pf) {
    while (pf->n_prefetching < pf->opt.queue_depth && pf->n_queue > 0) {
        int best = 0;
        for (int i = 1; i < pf->n_queue; i++) {
            const request *a = &pf->queue[i], *b = &pf->queue[best];
            if (a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq)) best = i;
        }
        if (pf->opt.horizon > 0 && pf->queue[best].deadline >= pf->now + pf->opt.horizon) return;
        if (pf->opt.demand_first && pf->queue[best].deadline > pf->now && urgent_in_flight(pf)) return;
        int64_t best_deadline = pf->queue[best].deadline;
        uint64_t key = pf->queue[best].key;
        int s, r = st_slot_cache_prefetch(pf->cache, key, &s);
        if (r == ST_ERR_BUDGET) return; /* nothing evictable now: retry at the next pump */
        unqueue(pf, best);
        if (r == ST_SLOT_HIT || r == ST_SLOT_PENDING) { pf->st.already++; continue; }
        if (r != ST_SLOT_LOAD) { pf->st.issue_errors++; continue; }
        if (start(pf, key, s, PREFETCH_LOAD, best_deadline)) {
            ST_DEBUG("prefetch: %s", st_last_error());
            pf->st.issue_errors++;
            continue;
        }
        st_slot_cache_want(pf->cache, key, true); /* until its use: not the victim of the next load */
        pf->st.issued++;
    }
}

int st_prefetch_pump(st_prefetch *pf) {
    int n = reap(pf, 0);
    if (n < 0) return n;
    issue(pf);
    return 0;
}

/* ---- requests ---------------------------------------------------------------------- */

int st_prefetch_request(st_prefetch *pf, uint64_t key, int64_t deadline, uint64_t bytes) {
    if (grow((void **)&pf->preds, &pf->cap_preds, pf->n_preds + 1, sizeof *pf->preds) ||
        grow((void **)&pf->gone, &pf->cap_gone, pf->cap_preds, sizeof *pf->gone))
        return ST_ERR_NOMEM;
    pf->preds[pf->n_preds++] = (prediction){key, deadline};
    pf->st.predictions++;
    /* a key already cached is protected from eviction right away (its request may wait in the queue) */
    st_slot_cache_want(pf->cache, key, true);
    int i = find_queued(pf, key);
    if (i >= 0) {
        if (deadline < pf->queue[i].deadline) pf->queue[i].deadline = deadline;
        return 0;
    }
    if (grow((void **)&pf->queue, &pf->cap_queue, pf->n_queue + 1, sizeof *pf->queue)) return ST_ERR_NOMEM;
    pf->queue[pf->n_queue++] = (request){key, deadline, bytes ? bytes : st_slot_cache_slot_bytes(pf->cache), ++pf->seq};
    pf->st.requests++;
    return 0;
}

static void cancel_started(st_prefetch *pf, uint64_t key) {
    if (!pf->opt.cancel_in_flight || !pf->xfer.cancel) return;
    for (int s = 0; s < pf->n_slots; s++) {
        uint64_t k;
        if (pf->in_flight[s] != PREFETCH_LOAD || st_slot_cache_slot_info(pf->cache, s, NULL, &k, NULL) || k != key) continue;
        if (pf->xfer.cancel(pf->xfer.ctx, (uint64_t)s) == 0) pf->st.cancelled_in_flight++;
    }
}

int st_prefetch_cancel(st_prefetch *pf, uint64_t key) {
    int i = find_queued(pf, key);
    cancel_started(pf, key);
    if (i < 0) return 0;
    supersede(pf, i);
    return 1;
}

int st_prefetch_predict(st_prefetch *pf, int64_t deadline, const uint64_t *keys, int n, uint64_t bytes) {
    for (int i = 0; i < pf->n_queue;) {
        bool keep = pf->queue[i].deadline != deadline;
        for (int j = 0; !keep && j < n; j++) keep = keys[j] == pf->queue[i].key;
        if (keep) { i++; continue; }
        cancel_started(pf, pf->queue[i].key);
        supersede(pf, i);
    }
    for (int j = 0; j < n; j++) {
        int rc = st_prefetch_request(pf, keys[j], deadline, bytes);
        if (rc) return rc;
    }
    return 0;
}

static bool named(const uint64_t *keys, int n, uint64_t key) {
    for (int j = 0; j < n; j++)
        if (keys[j] == key) return true;
    return false;
}

/* Drops the open predictions matching (deadline < before, or == at and not in keys) and
 * clears the cache's mark of keys no remaining prediction names. */
static void drop_predictions(st_prefetch *pf, int64_t before, int64_t at, const uint64_t *keys, int n) {
    int m = 0, n_gone = 0;
    for (int i = 0; i < pf->n_preds; i++) {
        prediction p = pf->preds[i];
        if (p.deadline < before || (p.deadline == at && !named(keys, n, p.key))) {
            if (n_gone < pf->cap_gone) pf->gone[n_gone++] = p.key;
            else st_slot_cache_want(pf->cache, p.key, false); /* no room to check: unmark */
        } else {
            pf->preds[m++] = p;
        }
    }
    pf->n_preds = m;
    for (int i = 0; i < n_gone; i++) unwant(pf, pf->gone[i]);
}

int st_prefetch_settle(st_prefetch *pf, int64_t deadline, const uint64_t *keys, int n) {
    int dropped = 0;
    for (int i = 0; i < pf->n_queue;) {
        if (pf->queue[i].deadline != deadline || named(keys, n, pf->queue[i].key)) { i++; continue; }
        supersede(pf, i);
        dropped++;
    }
    for (int s = 0; s < pf->n_slots; s++) {
        uint64_t k;
        if (pf->in_flight[s] != PREFETCH_LOAD || pf->load_deadline[s] != deadline ||
            st_slot_cache_slot_info(pf->cache, s, NULL, &k, NULL) || named(keys, n, k))
            continue;
        pf->st.unneeded_in_flight++;
        if (pf->opt.cancel_in_flight && pf->xfer.cancel && pf->xfer.cancel(pf->xfer.ctx, (uint64_t)s) == 0)
            pf->st.cancelled_in_flight++;
    }
    drop_predictions(pf, INT64_MIN, deadline, keys, n);
    return dropped;
}

void st_prefetch_advance(st_prefetch *pf, int64_t now) {
    pf->now = now;
    /* loads for the layer that is now served are no longer speculative: they go first */
    for (int s = 0; pf->xfer.promote && s < pf->n_slots; s++)
        if (pf->in_flight[s] == PREFETCH_LOAD && pf->load_deadline[s] <= now) pf->xfer.promote(pf->xfer.ctx, (uint64_t)s);
    for (int i = 0; i < pf->n_queue;) {
        if (pf->queue[i].deadline < now) { unqueue(pf, i); pf->st.stale++; }
        else i++;
    }
    drop_predictions(pf, now, INT64_MIN, NULL, 0);
}

/* ---- needs --------------------------------------------------------------------------- */

/* A need for key: pins it and starts its load when absent; never waits for the
 * load itself (only, when no slot is free, for some load to finish). */
static int pin(st_prefetch *pf, uint64_t key, int *slot) {
    int r;
    while ((r = st_slot_cache_acquire(pf->cache, key, slot)) == ST_ERR_BUDGET && pf->n_prefetching + pf->n_demand > 0) {
        int n = reap(pf, -1);
        if (n < 0) return n;
    }
    if (r < 0) return r;
    pf->st.needs++;
    for (int i = 0; i < pf->n_preds; i++)
        if (pf->preds[i].key == key) {
            pf->st.predictions_used++;
            pf->preds[i] = pf->preds[--pf->n_preds];
            break;
        }
    if (r == ST_SLOT_HIT) { pf->st.hits++; return 0; }
    if (r == ST_SLOT_PENDING) { /* a prefetch still on its way: what is left of it goes first now */
        pf->st.late++;
        if (pf->xfer.promote && pf->in_flight[*slot] == PREFETCH_LOAD) pf->xfer.promote(pf->xfer.ctx, (uint64_t)*slot);
        return 0;
    }
    int q = find_queued(pf, key);
    if (q >= 0) {
        pf->st.late++;
        pf->st.late_queued++;
        unqueue(pf, q);
    } else {
        pf->st.misses++;
    }
    pf->st.demand_loads++;
    int rc = start(pf, key, *slot, DEMAND_LOAD, pf->now); /* deadline now: promoted ahead of speculative reads */
    if (rc) {
        st_slot_cache_release(pf->cache, *slot);
        *slot = -1;
        return st_error_prefix(rc, "prefetch: loading key %#llx (layer %d, expert %d): ", (unsigned long long)key,
                               st_cache_key_layer(key), st_cache_key_index(key));
    }
    return 0;
}

/* Waits for something to arrive: a load of ours, or another thread's completion. */
static int wait_some(st_prefetch *pf, int slot) {
    if (pf->n_prefetching + pf->n_demand > 0) {
        int n = reap(pf, -1);
        if (n < 0) return n;
        issue(pf);
        return 0;
    }
    st_slot_cache_wait(pf->cache, slot, 10); /* the caller rechecks the slot (and sees a failure) */
    return 0;
}

int st_prefetch_need(st_prefetch *pf, uint64_t key, int *slot) {
    uint64_t t0 = st_time_ns();
    *slot = -1;
    int s, rc = pin(pf, key, &s);
    if (rc) return rc;
    while ((rc = st_slot_cache_wait(pf->cache, s, 0)) == 1)
        if ((rc = wait_some(pf, s))) break;
    pf->st.stall_ns += st_time_ns() - t0;
    if (rc) {
        st_slot_cache_release(pf->cache, s);
        return rc;
    }
    *slot = s;
    return 0;
}

int st_prefetch_batch_begin(st_prefetch *pf, st_prefetch_batch *b, const uint64_t *keys, int n) {
    memset(b, 0, sizeof *b);
    if (n < 0 || n > ST_PREFETCH_BATCH_MAX)
        return st_error(ST_ERR_INVALID, "prefetch batch: expected 0..%d keys, found %d", ST_PREFETCH_BATCH_MAX, n);
    for (int i = 0; i < n; i++) {
        int rc = pin(pf, keys[i], &b->slots[i]);
        if (rc) {
            st_prefetch_batch_end(pf, b);
            return rc;
        }
        b->keys[i] = keys[i];
        b->n = i + 1;
    }
    issue(pf); /* the rest of the depth goes to what comes next */
    return 0;
}

int st_prefetch_batch_next(st_prefetch *pf, st_prefetch_batch *b, int *index, int *slot) {
    *index = -1;
    *slot = -1;
    int rc;
    if (b->n_handed == b->n) return 0;
    /* loads that finished while the engine computed: reap them and refill the disk's queue now,
     * not only when the engine runs out of resident experts */
    if (pf->n_prefetching + pf->n_demand > 0) {
        rc = reap(pf, 0);
        if (rc < 0) return rc;
        issue(pf);
    }
    uint64_t t0 = st_time_ns();
    bool waited = false;
    for (;;) {
        int pending = -1;
        for (int i = 0; i < b->n; i++) {
            if (b->handed[i]) continue;
            rc = st_slot_cache_wait(pf->cache, b->slots[i], 0);
            if (rc == 1) { if (pending < 0) pending = i; continue; }
            b->handed[i] = true;
            b->n_handed++;
            *index = i;
            if (rc == 0) { *slot = b->slots[i]; rc = 1; }
            goto out;
        }
        waited = true;
        if ((rc = wait_some(pf, b->slots[pending]))) goto out;
    }
out:
    if (waited) pf->st.stall_ns += st_time_ns() - t0;
    return rc;
}

void st_prefetch_batch_end(st_prefetch *pf, st_prefetch_batch *b) {
    for (int i = 0; i < b->n; i++)
        if (b->slots[i] >= 0 && st_slot_cache_release(pf->cache, b->slots[i])) ST_WARN("prefetch batch: %s", st_last_error());
    b->n = 0;
    b->n_handed = 0;
}

void st_prefetch_get_stats(const st_prefetch *pf, st_prefetch_stats *out) {
    *out = pf->st;
    st_slot_cache_stats cs;
    st_slot_cache_get_stats(pf->cache, &cs);
    out->bytes_loaded = cs.bytes_loaded;
    out->wasted_bytes = cs.wasted_bytes;
    out->queued = pf->n_queue;
    out->in_flight = pf->n_prefetching + pf->n_demand;
}

int st_prefetch_new(st_slot_cache *cache, const st_transfer *xfer, const st_prefetch_options *opt, st_prefetch **out) {
    *out = NULL;
    st_prefetch_options o = opt ? *opt : (st_prefetch_options){0};
    if (!o.queue_depth) o.queue_depth = 8;
    if (o.horizon < 0) return st_error(ST_ERR_INVALID, "prefetch: expected horizon >= 0, found %lld", (long long)o.horizon);
    if (o.queue_depth < 1 || o.queue_depth > 4096)
        return st_error(ST_ERR_INVALID, "prefetch: expected queue_depth in 1..4096, found %d", o.queue_depth);
    if (!cache || !xfer || !xfer->start || !xfer->poll)
        return st_error(ST_ERR_INVALID, "prefetch: needs a slot cache and a transfer with start and poll");
    st_prefetch *pf = calloc(1, sizeof *pf);
    int n = st_slot_cache_slots(cache);
    if (!pf || !(pf->in_flight = calloc((size_t)n, 1)) || !(pf->load_deadline = calloc((size_t)n, sizeof *pf->load_deadline))) {
        if (pf) free(pf->in_flight);
        free(pf);
        return st_error(ST_ERR_NOMEM, "prefetch: out of memory");
    }
    pf->cache = cache;
    pf->xfer = *xfer;
    pf->opt = o;
    pf->n_slots = n;
    *out = pf;
    return 0;
}

void st_prefetch_free(st_prefetch *pf) {
    if (!pf) return;
    pf->n_queue = 0;
    if (pf->xfer.cancel)
        for (int s = 0; s < pf->n_slots; s++)
            if (pf->in_flight[s]) pf->xfer.cancel(pf->xfer.ctx, (uint64_t)s);
    while (pf->n_prefetching + pf->n_demand > 0)
        if (reap(pf, -1) < 0) {
            ST_WARN("prefetch: %s (%d loads abandoned in flight)", st_last_error(), pf->n_prefetching + pf->n_demand);
            break;
        }
    free(pf->queue);
    free(pf->preds);
    free(pf->gone);
    free(pf->in_flight);
    free(pf->load_deadline);
    free(pf);
}

/* ---- the io_uring transfer ----------------------------------------------------------- */

struct st_uring_transfer {
    st_io *io;
    st_extent_fn locate;
    void *ctx;
};

static int uring_start(void *ctx, uint64_t key, void *dst, uint64_t bytes, uint64_t tag) {
    st_uring_transfer *t = ctx;
    st_io_read r = {.dst = dst, .tag = tag};
    uint64_t length;
    int rc = t->locate(t->ctx, key, &r.file, &r.offset, &length);
    if (rc) return rc;
    if (length == 0 || length > bytes)
        return st_error(ST_ERR_INVALID, "uring transfer: key %#llx: expected an extent of 1..%llu bytes (the slot), found %llu",
                        (unsigned long long)key, (unsigned long long)bytes, (unsigned long long)length);
    r.length = (size_t)length;
    return st_io_submit(t->io, &r, 1);
}

static int uring_poll(void *ctx, st_transfer_done *out, int max, int timeout_ms) {
    st_uring_transfer *t = ctx;
    st_io_completion c[32];
    max = ST_MIN(max, (int)ST_ARRAY_LEN(c));
    int n = timeout_ms == 0 || st_io_outstanding(t->io) == 0 ? st_io_poll(t->io, c, max)
                                                              : st_io_wait(t->io, c, max, 1, timeout_ms);
    for (int i = 0; i < n; i++) {
        if (c[i].status && c[i].status != ST_ERR_CANCELLED) ST_WARN("uring transfer: %s", c[i].message);
        out[i] = (st_transfer_done){c[i].tag, c[i].status, c[i].bytes};
    }
    return n;
}

static int uring_cancel(void *ctx, uint64_t tag) {
    st_io_cancel(((st_uring_transfer *)ctx)->io, tag);
    return 0;
}

static int uring_promote(void *ctx, uint64_t tag) {
    st_io_promote(((st_uring_transfer *)ctx)->io, tag);
    return 0;
}

int st_uring_transfer_new(st_io *io, st_extent_fn locate, void *ctx, st_uring_transfer **out, st_transfer *xfer) {
    *out = NULL;
    if (!io || !locate) return st_error(ST_ERR_INVALID, "uring transfer: needs a read engine and a locate function");
    st_uring_transfer *t = malloc(sizeof *t);
    if (!t) return st_error(ST_ERR_NOMEM, "uring transfer: out of memory");
    *t = (st_uring_transfer){io, locate, ctx};
    *xfer = (st_transfer){uring_start, uring_poll, uring_cancel, t, uring_promote};
    *out = t;
    return 0;
}

void st_uring_transfer_free(st_uring_transfer *t) { free(t); }
