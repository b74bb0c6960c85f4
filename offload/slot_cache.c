/* The slot cache (see slot_cache.h): fixed slots, key index, refcounts, states
 * and the wait condition. Owns the slot memory and the policy; never starts
 * I/O by itself (the caller or st_slot_cache_get drives the transfer) and
 * never allocates slot memory after creation, so it cannot exceed its budget. */
#include "offload/slot_cache.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/base.h"
#include "offload/keymap.h"

typedef struct slot {
    uint64_t key;      /* valid unless EMPTY */
    uint64_t bytes;    /* bytes placed by the last successful load */
    int refs;          /* pins */
    int status;        /* EMPTY after a failed load: that load's status, for pinned waiters */
    uint8_t state;     /* st_slot_state */
    bool prefetched;   /* loaded ahead of use ... */
    bool used;         /* ... and used since (wasted-bytes accounting) */
    bool wanted;       /* predicted for an upcoming use: evicted only when nothing else can be */
    bool transient;    /* outside the kept subset (st_slot_cache_set_keep): evicted first */
    uint32_t uses;     /* demand uses since it entered its slot */
} slot;

struct st_slot_cache {
    char name[64];
    pthread_mutex_t mu;
    pthread_cond_t done;   /* broadcast at every completion */
    int n;
    uint64_t slot_bytes, stride;
    uint8_t *mem;          /* (n, stride) bytes, NULL with no_memory */
    uint64_t mem_bytes;
    bool own_mem;
    st_budget *budget;
    slot *slots;           /* (n) */
    int *free_list;        /* (n) slots that are EMPTY with no pins */
    int n_free;
    int n_wanted;          /* slots with wanted set */
    int keep;              /* kept-subset target (0: off) */
    int n_kept;            /* occupied slots (LOADING / RESIDENT) that are not transient */
    int serving;           /* st_slot_cache_set_serving: its unwanted keys go first (-1: off) */
    st_policy_evictable_fn serving_filter; /* pick(): the filter in force */
    st_keymap index;       /* key -> slot, for every LOADING / RESIDENT slot */
    st_policy *policy;
    uint64_t tick;         /* logical clock: +1 per acquire / lookup / prefetch */
    st_slot_cache_stats st;
};

uint64_t st_slot_cache_stride(uint64_t slot_bytes) { return ST_ALIGN_UP(slot_bytes, 4096); }

static bool evictable(void *ctx, int s) {
    const slot *sl = &((st_slot_cache *)ctx)->slots[s];
    return sl->state == ST_SLOT_RESIDENT && sl->refs == 0;
}

static bool evictable_unwanted(void *ctx, int s) { return evictable(ctx, s) && !((st_slot_cache *)ctx)->slots[s].wanted; }

static bool evictable_unwanted_transient(void *ctx, int s) {
    return evictable_unwanted(ctx, s) && ((st_slot_cache *)ctx)->slots[s].transient;
}

static bool of_serving_layer(void *ctx, int s) {
    st_slot_cache *c = ctx;
    return c->serving_filter(ctx, s) && st_cache_key_layer(c->slots[s].key) == c->serving;
}

/* Locked. The policy's victim among the slots `ok` accepts, a key of the layer
 * being served first (st_slot_cache_set_serving), or -1. */
static int pick(st_slot_cache *c, st_policy_evictable_fn ok) {
    if (c->serving >= 0) {
        c->serving_filter = ok;
        int s = c->policy->ops->victim(c->policy, of_serving_layer, c);
        if (s >= 0) return s;
    }
    return c->policy->ops->victim(c->policy, ok, c);
}

/* Locked. Empties a slot that holds a key; it becomes free when unpinned. */
static void drop_key(st_slot_cache *c, int s) {
    slot *sl = &c->slots[s];
    ST_ASSERT(sl->state != ST_SLOT_EMPTY);
    if (sl->prefetched && !sl->used) {
        c->st.wasted_loads++;
        c->st.wasted_bytes += sl->bytes;
    }
    if (sl->wanted) { sl->wanted = false; c->n_wanted--; }
    if (!sl->transient) c->n_kept--;
    sl->transient = false;
    bool had = st_keymap_del(&c->index, sl->key);
    ST_ASSERT(had);
    c->policy->ops->remove(c->policy, s);
    sl->state = ST_SLOT_EMPTY;
    if (sl->refs == 0) c->free_list[c->n_free++] = s;
}

/* Locked. A slot for `key` in state LOADING, or -1 when none can be freed. */
static int take_slot(st_slot_cache *c, uint64_t key, bool prefetched) {
    int s;
    if (c->n_free > 0) {
        s = c->free_list[--c->n_free];
    } else {
        /* the policy's choice among keys nobody predicted (transient ones first when a kept
         * subset is held; a prefetch never evicts a kept key then); a predicted one only for a
         * demand load when nothing else is left (a prefetch never evicts a predicted key) */
        /* (a subset above its target, e.g. right after the target was set, shrinks first, by the
         * policy's order) */
        s = -1;
        bool protect = c->keep > 0 && c->n_kept <= c->keep;
        if (protect) s = pick(c, evictable_unwanted_transient);
        if (s < 0 && !(prefetched && protect)) s = pick(c, c->n_wanted ? evictable_unwanted : evictable);
        if (s < 0 && c->n_wanted && !prefetched) s = pick(c, evictable);
        if (s < 0) return -1;
        if (c->slots[s].wanted) c->st.wanted_evictions++;
        if (c->slots[s].transient) c->st.transient_evictions++;
        else if (c->keep > 0) c->st.kept_evictions++;
        ST_ASSERT(s < c->n && evictable(c, s));
        drop_key(c, s);
        c->st.evictions++;
        ST_ASSERT(c->n_free > 0 && c->free_list[c->n_free - 1] == s);
        c->n_free--;
    }
    slot *sl = &c->slots[s];
    ST_ASSERT(sl->state == ST_SLOT_EMPTY && sl->refs == 0);
    /* joins the kept subset while it has room (every key does when keep is off) */
    bool transient = c->keep > 0 && c->n_kept >= c->keep;
    *sl = (slot){.key = key, .state = ST_SLOT_LOADING, .prefetched = prefetched, .transient = transient};
    if (!transient) c->n_kept++;
    /* The index was sized for n keys at creation: this never allocates. */
    int rc = st_keymap_put(&c->index, key, s);
    ST_ASSERT(rc == 0);
    c->st.loads++;
    if (prefetched) c->st.prefetch_loads++;
    c->policy->ops->insert(c->policy, s, key, c->tick);
    return s;
}

static int full_error(st_slot_cache *c, uint64_t key) {
    return st_error(ST_ERR_BUDGET, "%s: no slot for key %#llx (layer %d, expert %d): all %d slots are pinned or loading",
                    c->name, (unsigned long long)key, st_cache_key_layer(key), st_cache_key_index(key), c->n);
}

static int use_existing(st_slot_cache *c, int s) {
    slot *sl = &c->slots[s];
    sl->refs++;
    sl->used = true;
    if (sl->wanted) { sl->wanted = false; c->n_wanted--; } /* the prediction came true */
    if (sl->uses++ > 0 && sl->transient && c->n_kept < c->keep) { /* used again: worth keeping */
        sl->transient = false;
        c->n_kept++;
        c->st.promotions++;
    }
    c->st.accesses++;
    c->policy->ops->access(c->policy, s, sl->key, c->tick);
    if (sl->state == ST_SLOT_RESIDENT) { c->st.hits++; return ST_SLOT_HIT; }
    c->st.pending_hits++;
    return ST_SLOT_PENDING;
}

int st_slot_cache_acquire(st_slot_cache *c, uint64_t key, int *slot_out) {
    *slot_out = -1;
    pthread_mutex_lock(&c->mu);
    c->tick++;
    const int64_t *found = st_keymap_find(&c->index, key);
    int rc;
    if (found) {
        *slot_out = (int)*found;
        rc = use_existing(c, *slot_out);
    } else {
        int s = take_slot(c, key, false);
        if (s < 0) {
            c->st.full++;
            pthread_mutex_unlock(&c->mu);
            return full_error(c, key);
        }
        slot *sl = &c->slots[s];
        sl->refs = 1;
        sl->used = true;
        sl->uses = 1;
        c->st.accesses++;
        c->st.misses++;
        c->policy->ops->access(c->policy, s, key, c->tick);
        *slot_out = s;
        rc = ST_SLOT_LOAD;
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int st_slot_cache_lookup(st_slot_cache *c, uint64_t key, int *slot_out) {
    *slot_out = -1;
    pthread_mutex_lock(&c->mu);
    const int64_t *found = st_keymap_find(&c->index, key);
    int rc = ST_SLOT_MISS;
    if (found) {
        c->tick++;
        *slot_out = (int)*found;
        rc = use_existing(c, *slot_out);
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int st_slot_cache_prefetch(st_slot_cache *c, uint64_t key, int *slot_out) {
    *slot_out = -1;
    pthread_mutex_lock(&c->mu);
    c->tick++;
    const int64_t *found = st_keymap_find(&c->index, key);
    int rc;
    if (found) {
        *slot_out = (int)*found;
        rc = c->slots[*found].state == ST_SLOT_RESIDENT ? ST_SLOT_HIT : ST_SLOT_PENDING;
    } else {
        int s = take_slot(c, key, true);
        if (s < 0) {
            c->st.full++;
            pthread_mutex_unlock(&c->mu);
            return full_error(c, key);
        }
        *slot_out = s;
        rc = ST_SLOT_LOAD;
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

static int bad_slot(const st_slot_cache *c, const char *what, int s) {
    return st_error(ST_ERR_INVALID, "%s: %s: expected a slot in 0..%d, found %d", c->name, what, c->n - 1, s);
}

int st_slot_cache_complete(st_slot_cache *c, int s, int status, uint64_t bytes) {
    if (s < 0 || s >= c->n) return bad_slot(c, "complete", s);
    pthread_mutex_lock(&c->mu);
    slot *sl = &c->slots[s];
    if (sl->state != ST_SLOT_LOADING) {
        int state = sl->state;
        pthread_mutex_unlock(&c->mu);
        return st_error(ST_ERR_INVALID, "%s: complete of slot %d which is not loading (state %s)", c->name, s,
                        state == ST_SLOT_EMPTY ? "empty" : "resident");
    }
    if (status == 0) {
        sl->state = ST_SLOT_RESIDENT;
        sl->bytes = bytes;
        c->st.bytes_loaded += bytes;
    } else {
        c->st.failed_loads++;
        sl->bytes = bytes;  /* what a cancelled prefetch moved for nothing */
        sl->status = status < 0 ? status : ST_ERR_IO;
        drop_key(c, s);
    }
    pthread_cond_broadcast(&c->done);
    pthread_mutex_unlock(&c->mu);
    return 0;
}

int st_slot_cache_wait(st_slot_cache *c, int s, int timeout_ms) {
    if (s < 0 || s >= c->n) return bad_slot(c, "wait", s);
    struct timespec until;
    if (timeout_ms > 0) {
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) { until.tv_sec++; until.tv_nsec -= 1000000000L; }
    }
    pthread_mutex_lock(&c->mu);
    slot *sl = &c->slots[s];
    if (sl->refs <= 0) {
        pthread_mutex_unlock(&c->mu);
        return st_error(ST_ERR_INVALID, "%s: wait on slot %d which the caller has not pinned", c->name, s);
    }
    int rc = 0;
    while (sl->state == ST_SLOT_LOADING) {
        if (timeout_ms == 0) { rc = 1; break; }
        if (timeout_ms < 0) pthread_cond_wait(&c->done, &c->mu);
        else if (pthread_cond_timedwait(&c->done, &c->mu, &until) == ETIMEDOUT && sl->state == ST_SLOT_LOADING) { rc = 1; break; }
    }
    if (rc == 0 && sl->state == ST_SLOT_EMPTY) rc = sl->status;
    uint64_t key = sl->key;
    pthread_mutex_unlock(&c->mu);
    if (rc < 0)
        return st_error(rc, "%s: load of key %#llx (layer %d, expert %d) failed: %s", c->name, (unsigned long long)key,
                        st_cache_key_layer(key), st_cache_key_index(key), st_status_str(rc));
    return rc;
}

int st_slot_cache_release(st_slot_cache *c, int s) {
    if (s < 0 || s >= c->n) return bad_slot(c, "release", s);
    pthread_mutex_lock(&c->mu);
    slot *sl = &c->slots[s];
    if (sl->refs <= 0) {
        pthread_mutex_unlock(&c->mu);
        return st_error(ST_ERR_INVALID, "%s: release of slot %d which is not pinned (released twice?)", c->name, s);
    }
    if (--sl->refs == 0 && sl->state == ST_SLOT_EMPTY) c->free_list[c->n_free++] = s;
    pthread_mutex_unlock(&c->mu);
    return 0;
}

int st_slot_cache_evict(st_slot_cache *c, uint64_t key) {
    pthread_mutex_lock(&c->mu);
    const int64_t *found = st_keymap_find(&c->index, key);
    int rc = 0;
    if (!found) rc = ST_ERR_NOT_FOUND;
    else if (!evictable(c, (int)*found)) rc = ST_ERR_BUDGET;
    else {
        drop_key(c, (int)*found);
        c->st.evictions++;
    }
    pthread_mutex_unlock(&c->mu);
    if (rc == ST_ERR_NOT_FOUND) return st_error(rc, "%s: evict: key %#llx is not cached", c->name, (unsigned long long)key);
    if (rc) return st_error(rc, "%s: evict: key %#llx is pinned or loading", c->name, (unsigned long long)key);
    return 0;
}

void st_slot_cache_set_keep(st_slot_cache *c, int keep) {
    pthread_mutex_lock(&c->mu);
    c->keep = keep <= 0 ? 0 : ST_MIN(keep, c->n - 1);
    if (!c->keep) { /* off: every key is ordinary again */
        for (int i = 0; i < c->n; i++) c->slots[i].transient = false;
        c->n_kept = 0;
        for (int i = 0; i < c->n; i++) c->n_kept += c->slots[i].state != ST_SLOT_EMPTY;
    }
    pthread_mutex_unlock(&c->mu);
}

void st_slot_cache_set_serving(st_slot_cache *c, int layer) {
    pthread_mutex_lock(&c->mu);
    c->serving = layer < 0 ? -1 : layer;
    pthread_mutex_unlock(&c->mu);
}

int st_slot_cache_want(st_slot_cache *c, uint64_t key, bool wanted) {
    pthread_mutex_lock(&c->mu);
    const int64_t *found = st_keymap_find(&c->index, key);
    int rc = ST_SLOT_MISS;
    if (found) {
        slot *sl = &c->slots[*found];
        rc = sl->state == ST_SLOT_RESIDENT ? ST_SLOT_HIT : ST_SLOT_PENDING;
        if (sl->wanted != wanted) c->n_wanted += wanted ? 1 : -1;
        sl->wanted = wanted;
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

void *st_slot_cache_buffer(const st_slot_cache *c, int s) {
    if (!c->mem || s < 0 || s >= c->n) return NULL;
    return c->mem + (uint64_t)s * c->stride;
}

int st_slot_cache_slots(const st_slot_cache *c) { return c->n; }
uint64_t st_slot_cache_slot_bytes(const st_slot_cache *c) { return c->slot_bytes; }
const char *st_slot_cache_policy_name(const st_slot_cache *c) { return st_policy_name(c->policy); }

int st_slot_cache_slot_info(st_slot_cache *c, int s, st_slot_state *state, uint64_t *key, int *refs) {
    if (s < 0 || s >= c->n) return bad_slot(c, "slot_info", s);
    pthread_mutex_lock(&c->mu);
    const slot *sl = &c->slots[s];
    if (state) *state = (st_slot_state)sl->state;
    if (key) *key = sl->state == ST_SLOT_EMPTY ? 0 : sl->key;
    if (refs) *refs = sl->refs;
    pthread_mutex_unlock(&c->mu);
    return 0;
}

void st_slot_cache_get_stats(st_slot_cache *c, st_slot_cache_stats *out) {
    pthread_mutex_lock(&c->mu);
    *out = c->st;
    out->resident = out->loading = out->pinned = 0;
    out->wanted = c->n_wanted;
    out->kept = c->n_kept;
    out->keep = c->keep;
    for (int i = 0; i < c->n; i++) {
        out->resident += c->slots[i].state == ST_SLOT_RESIDENT;
        out->loading += c->slots[i].state == ST_SLOT_LOADING;
        out->pinned += c->slots[i].refs > 0;
    }
    pthread_mutex_unlock(&c->mu);
}

int st_slot_cache_new(const st_slot_cache_options *opt, st_slot_cache **out) {
    *out = NULL;
    st_policy *custom = opt->custom_policy;
    const char *name = opt->name ? opt->name : "slot cache";
    int rc;
    st_slot_cache *c = NULL;
    if (opt->n_slots < 0) { rc = st_error(ST_ERR_INVALID, "%s: expected n_slots >= 0, found %d", name, opt->n_slots); goto fail; }
    if (!opt->no_memory && opt->slot_bytes == 0) { rc = st_error(ST_ERR_INVALID, "%s: expected slot_bytes > 0, found 0", name); goto fail; }
    if (opt->no_memory && opt->memory) { rc = st_error(ST_ERR_INVALID, "%s: memory given with no_memory", name); goto fail; }
    uint64_t stride = st_slot_cache_stride(opt->slot_bytes);
    int n = opt->n_slots;
    if (n == 0) {
        if (!opt->budget || opt->no_memory || opt->memory) {
            rc = st_error(ST_ERR_INVALID, "%s: n_slots 0 (fit the budget) needs a budget and cache-allocated memory", name);
            goto fail;
        }
        uint64_t fit = st_budget_available(opt->budget) / stride;
        if (fit == 0) {
            char a[32], s[32];
            rc = st_error(ST_ERR_BUDGET, "%s: budget %s has %s available, less than one slot of %s", name,
                          st_budget_name(opt->budget), st_fmt_size(st_budget_available(opt->budget), a, sizeof a),
                          st_fmt_size(stride, s, sizeof s));
            goto fail;
        }
        n = fit > (1u << 30) ? (1 << 30) : (int)fit;
    }
    c = calloc(1, sizeof *c);
    if (!c) { rc = st_error(ST_ERR_NOMEM, "%s: out of memory", name); goto fail; }
    snprintf(c->name, sizeof c->name, "%s", name);
    c->n = n;
    c->serving = -1;
    c->slot_bytes = opt->slot_bytes;
    c->stride = stride;
    c->budget = opt->budget;
    c->slots = calloc((size_t)n, sizeof *c->slots);
    c->free_list = malloc((size_t)n * sizeof *c->free_list);
    if (!c->slots || !c->free_list || st_keymap_init(&c->index, (size_t)n)) {
        rc = st_error(ST_ERR_NOMEM, "%s: out of memory for %d slots", name, n);
        goto fail;
    }
    for (int i = 0; i < n; i++) c->free_list[i] = n - 1 - i; /* slot 0 is taken first */
    c->n_free = n;
    if (custom) {
        c->policy = custom;
        custom = NULL;
    } else if ((rc = st_policy_new(opt->policy, n, &opt->policy_options, &c->policy))) {
        st_error_prefix(rc, "%s: ", name);
        goto fail;
    }
    if (opt->memory) {
        c->mem = opt->memory;
    } else if (!opt->no_memory) {
        if (stride > UINT64_MAX / (uint64_t)n) { rc = st_error(ST_ERR_INVALID, "%s: %d slots of %llu bytes overflow", name, n, (unsigned long long)stride); goto fail; }
        c->mem_bytes = stride * (uint64_t)n;
        void *p;
        if ((rc = st_mem_alloc(opt->budget, c->mem_bytes, opt->mem_policy, opt->node, &p))) {
            st_error_prefix(rc, "%s: %d slots: ", name, n);
            c->mem_bytes = 0;
            goto fail;
        }
        c->mem = p;
        c->own_mem = true;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->done, NULL);
    *out = c;
    return 0;
fail:
    st_policy_free(custom);
    if (c) {
        st_policy_free(c->policy);
        st_keymap_destroy(&c->index);
        free(c->slots); free(c->free_list);
        free(c);
    }
    return rc;
}

void st_slot_cache_free(st_slot_cache *c) {
    if (!c) return;
    st_slot_cache_stats s;
    st_slot_cache_get_stats(c, &s);
    if (s.pinned || s.loading) ST_WARN("%s: freed with %d slots pinned and %d loading", c->name, s.pinned, s.loading);
    if (c->own_mem) st_mem_free(c->budget, c->mem, c->mem_bytes);
    st_policy_free(c->policy);
    st_keymap_destroy(&c->index);
    free(c->slots); free(c->free_list);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->done);
    free(c);
}

void st_slot_cache_complete_all(st_slot_cache *c, const st_transfer_done *done, int n) {
    for (int i = 0; i < n; i++)
        if (st_slot_cache_complete(c, (int)done[i].tag, done[i].status, done[i].bytes))
            ST_WARN("%s", st_last_error());
}

int st_slot_cache_get(st_slot_cache *c, uint64_t key, const st_transfer *xfer, int *slot_out) {
    int s, rc = st_slot_cache_acquire(c, key, &s);
    *slot_out = -1;
    if (rc < 0) return rc;
    if (rc == ST_SLOT_LOAD) {
        int st = xfer->start(xfer->ctx, key, st_slot_cache_buffer(c, s), c->slot_bytes, (uint64_t)s);
        if (st) {
            st_slot_cache_complete(c, s, st, 0);
            st_slot_cache_release(c, s);
            return st_error_prefix(st, "%s: starting the load of key %#llx: ", c->name, (unsigned long long)key);
        }
    }
    st_transfer_done done[16];
    while ((rc = st_slot_cache_wait(c, s, 0)) == 1) {
        /* Our own loads only advance when reaped; another thread's load wakes the wait. */
        int n = xfer->poll(xfer->ctx, done, (int)ST_ARRAY_LEN(done), 10);
        if (n < 0) { rc = n; break; }
        st_slot_cache_complete_all(c, done, n);
        if (n == 0 && (rc = st_slot_cache_wait(c, s, 10)) != 1) break;
    }
    if (rc) {
        st_slot_cache_release(c, s);
        return rc;
    }
    *slot_out = s;
    return 0;
}
