/* offload/slot_cache.c: slots come from a budget and never exceed it (peak
 * checked), pinned and loading slots are never evicted, a full cache refuses
 * instead of allocating, misuse is an error (not a crash), failed loads reach
 * waiters, wasted prefetch bytes are counted, wanted (predicted) keys are
 * evicted last and never by a prefetch, a kept subset (scan resistance)
 * survives rounds that name more keys than there are slots while LRU alone
 * keeps nothing, the blocking get through a
 * transfer, and 4 threads hammering 8 slots never see another key's bytes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/mem.h"
#include "offload/slot_cache.h"

#define KiB 1024ull

static st_slot_cache *make(int n, uint64_t bytes, st_budget *b) {
    st_slot_cache_options o = {.name = "test cache", .n_slots = n, .slot_bytes = bytes, .budget = b};
    st_slot_cache *c;
    assert_int_equal(st_slot_cache_new(&o, &c), 0);
    return c;
}

static void fill(void *buf, uint64_t key, size_t bytes) {
    uint64_t *p = buf;
    for (size_t i = 0; i < bytes / 8; i++) p[i] = key * 1000003u + i;
}
static bool holds(const void *buf, uint64_t key, size_t bytes) {
    const uint64_t *p = buf;
    for (size_t i = 0; i < bytes / 8; i++)
        if (p[i] != key * 1000003u + i) return false;
    return true;
}

/* Acquire + load (by hand) + keep pinned. */
static int load_pinned(st_slot_cache *c, uint64_t key) {
    int s, r = st_slot_cache_acquire(c, key, &s);
    assert_int_equal(r, ST_SLOT_LOAD);
    fill(st_slot_cache_buffer(c, s), key, 4096);
    assert_int_equal(st_slot_cache_complete(c, s, 0, 4096), 0);
    return s;
}

static void slots_from_budget(void **state) {
    (void)state;
    st_budget *b;
    /* 5000-byte slots take 8 KiB each: 10 fit in 84 KiB, not 11. */
    assert_int_equal(st_budget_new("dram test", 84 * KiB, &b), 0);
    st_slot_cache_options o = {.name = "fit", .slot_bytes = 5000, .budget = b};
    st_slot_cache *c;
    assert_int_equal(st_slot_cache_new(&o, &c), 0);
    assert_int_equal(st_slot_cache_slots(c), 10);
    assert_int_equal(st_budget_used(b), 80 * KiB);
    assert_int_equal(st_slot_cache_stride(5000), 8192);
    assert_true(((uintptr_t)st_slot_cache_buffer(c, 1) - (uintptr_t)st_slot_cache_buffer(c, 0)) == 8192);
    assert_int_equal((uintptr_t)st_slot_cache_buffer(c, 3) % 4096, 0);
    assert_null(st_slot_cache_buffer(c, 10));
    /* Churn far more keys than slots: the charge never moves. */
    uint64_t s = 3;
    for (int i = 0; i < 3000; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        int slot, r = st_slot_cache_acquire(c, (s >> 40) % 57, &slot);
        assert_true(r >= 0);
        if (r == ST_SLOT_LOAD) assert_int_equal(st_slot_cache_complete(c, slot, 0, 5000), 0);
        assert_int_equal(st_slot_cache_release(c, slot), 0);
    }
    assert_true(st_budget_peak(b) <= st_budget_limit(b));
    assert_int_equal(st_budget_peak(b), 80 * KiB);
    st_slot_cache_stats st;
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.accesses, 3000);
    assert_int_equal(st.hits + st.pending_hits + st.misses, 3000);
    assert_int_equal(st.misses, st.loads);
    assert_int_equal(st.evictions, st.loads - 10);
    st_slot_cache_free(c);
    assert_int_equal(st_budget_used(b), 0);

    /* Asked for more slots than fit: refused, nothing charged. */
    o.n_slots = 11;
    assert_int_equal(st_slot_cache_new(&o, &c), ST_ERR_BUDGET);
    assert_non_null(strstr(st_last_error(), "dram test"));
    assert_int_equal(st_budget_used(b), 0);
    assert_true(st_budget_peak(b) <= st_budget_limit(b));
    /* Not even one slot. */
    o.n_slots = 0;
    o.slot_bytes = 100 * KiB;
    assert_int_equal(st_slot_cache_new(&o, &c), ST_ERR_BUDGET);
    assert_non_null(strstr(st_last_error(), "less than one slot"));
    st_budget_free(b);
}

static void pinned_never_evicted(void **state) {
    (void)state;
    st_slot_cache *c = make(3, 4096, NULL);
    int a = load_pinned(c, 1), b = load_pinned(c, 2), d = load_pinned(c, 3);
    int s;
    assert_int_equal(st_slot_cache_acquire(c, 4, &s), ST_ERR_BUDGET);
    assert_non_null(strstr(st_last_error(), "all 3 slots are pinned"));
    assert_int_equal(st_slot_cache_prefetch(c, 4, &s), ST_ERR_BUDGET);
    assert_int_equal(st_slot_cache_release(c, b), 0);
    assert_int_equal(st_slot_cache_acquire(c, 4, &s), ST_SLOT_LOAD);
    assert_int_equal(s, b); /* the only unpinned slot */
    /* Key 4 is LOADING and pinned, 1 and 3 pinned: the cache is full again. */
    int t;
    assert_int_equal(st_slot_cache_release(c, s), 0);
    assert_int_equal(st_slot_cache_acquire(c, 5, &t), ST_ERR_BUDGET); /* loading, even unpinned, stays */
    assert_int_equal(st_slot_cache_complete(c, s, 0, 4096), 0);
    assert_true(holds(st_slot_cache_buffer(c, a), 1, 4096));
    assert_true(holds(st_slot_cache_buffer(c, d), 3, 4096));
    assert_int_equal(st_slot_cache_lookup(c, 1, &t), ST_SLOT_HIT);
    assert_int_equal(t, a);
    assert_int_equal(st_slot_cache_release(c, t), 0);
    assert_int_equal(st_slot_cache_lookup(c, 2, &t), ST_SLOT_MISS);
    assert_int_equal(t, -1);
    int refs;
    assert_int_equal(st_slot_cache_slot_info(c, a, NULL, NULL, &refs), 0);
    assert_int_equal(refs, 1);
    st_slot_cache_stats st;
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.full, 3);
    assert_int_equal(st.pinned, 2);
    assert_int_equal(st.resident, 3);
    assert_int_equal(st_slot_cache_evict(c, 1), ST_ERR_BUDGET); /* pinned */
    assert_int_equal(st_slot_cache_release(c, a), 0);
    assert_int_equal(st_slot_cache_release(c, d), 0);
    assert_int_equal(st_slot_cache_evict(c, 1), 0);
    assert_int_equal(st_slot_cache_evict(c, 1), ST_ERR_NOT_FOUND);
    st_slot_cache_free(c);
}

static void misuse_is_an_error(void **state) {
    (void)state;
    st_slot_cache *c = make(2, 4096, NULL);
    int s = load_pinned(c, 9);
    assert_int_equal(st_slot_cache_release(c, s), 0);
    assert_int_equal(st_slot_cache_release(c, s), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "not pinned"));
    assert_int_equal(st_slot_cache_release(c, 7), ST_ERR_INVALID);
    assert_int_equal(st_slot_cache_release(c, -1), ST_ERR_INVALID);
    assert_int_equal(st_slot_cache_complete(c, s, 0, 1), ST_ERR_INVALID); /* resident, not loading */
    assert_non_null(strstr(st_last_error(), "not loading"));
    assert_int_equal(st_slot_cache_complete(c, 1, 0, 1), ST_ERR_INVALID);  /* empty */
    assert_int_equal(st_slot_cache_wait(c, s, 0), ST_ERR_INVALID);         /* not pinned */
    assert_int_equal(st_slot_cache_slot_info(c, 2, NULL, NULL, NULL), ST_ERR_INVALID);
    st_slot_cache_free(c);

    st_slot_cache_options o = {.n_slots = 2, .slot_bytes = 0};
    assert_int_equal(st_slot_cache_new(&o, &c), ST_ERR_INVALID);
    o = (st_slot_cache_options){.n_slots = -1, .slot_bytes = 64};
    assert_int_equal(st_slot_cache_new(&o, &c), ST_ERR_INVALID);
    o = (st_slot_cache_options){.n_slots = 0, .slot_bytes = 64};
    assert_int_equal(st_slot_cache_new(&o, &c), ST_ERR_INVALID); /* fit-the-budget without a budget */
    o = (st_slot_cache_options){.n_slots = 2, .slot_bytes = 64, .policy = (st_policy_kind)42};
    assert_int_equal(st_slot_cache_new(&o, &c), ST_ERR_INVALID);
    o = (st_slot_cache_options){.n_slots = 2, .slot_bytes = 64, .policy = ST_POLICY_BELADY, .policy_options = {.n_future = 4}};
    assert_int_equal(st_slot_cache_new(&o, &c), ST_ERR_INVALID);
    st_slot_cache_free(NULL);
}

static void failed_load_reaches_waiters(void **state) {
    (void)state;
    st_slot_cache *c = make(2, 4096, NULL);
    int s, t;
    assert_int_equal(st_slot_cache_acquire(c, 5, &s), ST_SLOT_LOAD);
    assert_int_equal(st_slot_cache_acquire(c, 5, &t), ST_SLOT_PENDING);
    assert_int_equal(s, t);
    assert_int_equal(st_slot_cache_wait(c, t, 0), 1);  /* still loading */
    assert_int_equal(st_slot_cache_wait(c, t, 20), 1); /* times out */
    assert_int_equal(st_slot_cache_complete(c, s, ST_ERR_IO, 0), 0);
    assert_int_equal(st_slot_cache_wait(c, t, -1), ST_ERR_IO);
    assert_non_null(strstr(st_last_error(), "failed"));
    int x;
    assert_int_equal(st_slot_cache_lookup(c, 5, &x), ST_SLOT_MISS);
    /* Both pins still held: the slot is not reused yet. */
    assert_int_equal(st_slot_cache_acquire(c, 6, &x), ST_SLOT_LOAD);
    assert_true(x != s);
    assert_int_equal(st_slot_cache_acquire(c, 7, &x), ST_ERR_BUDGET);
    assert_int_equal(st_slot_cache_release(c, s), 0);
    assert_int_equal(st_slot_cache_release(c, t), 0);
    assert_int_equal(st_slot_cache_acquire(c, 7, &x), ST_SLOT_LOAD);
    assert_int_equal(x, s);
    st_slot_cache_stats st;
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.failed_loads, 1);
    assert_int_equal(st.loading, 2);
    assert_int_equal(st_slot_cache_complete(c, x, 0, 1), 0);
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.loading, 1);
    st_slot_cache_free(c); /* warns: still pinned and loading (a caller bug, not a crash) */
}

typedef struct { st_slot_cache *c; int slot; } completer;

static bool present(st_slot_cache *c, uint64_t key) {
    for (int s = 0; s < st_slot_cache_slots(c); s++) {
        st_slot_state state;
        uint64_t k;
        assert_int_equal(st_slot_cache_slot_info(c, s, &state, &k, NULL), 0);
        if (state != ST_SLOT_EMPTY && k == key) return true;
    }
    return false;
}

/* Wanted keys (predicted uses) are evicted after every other evictable key, by
 * demand loads only; a prefetch refuses rather than evict one; a use clears the
 * mark, and so does the key leaving its slot. */
static void wanted_keys_evicted_last(void **state) {
    (void)state;
    st_slot_cache *c = make(3, 4096, NULL);
    for (uint64_t k = 1; k <= 3; k++) assert_int_equal(st_slot_cache_release(c, load_pinned(c, k)), 0); /* LRU: 1 oldest */
    assert_int_equal(st_slot_cache_want(c, 9, true), ST_SLOT_MISS); /* not cached: nothing */
    assert_int_equal(st_slot_cache_want(c, 1, true), ST_SLOT_HIT);
    assert_int_equal(st_slot_cache_want(c, 1, true), ST_SLOT_HIT); /* twice: still one mark */
    assert_int_equal(st_slot_cache_want(c, 2, true), ST_SLOT_HIT);
    st_slot_cache_stats st;
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.wanted, 2);
    assert_int_equal(st_slot_cache_release(c, load_pinned(c, 4)), 0); /* LRU would take 1: takes 3 */
    assert_true(present(c, 1) && present(c, 2) && !present(c, 3));
    int s;
    assert_int_equal(st_slot_cache_want(c, 4, true), ST_SLOT_HIT);
    assert_int_equal(st_slot_cache_prefetch(c, 5, &s), ST_ERR_BUDGET); /* only wanted keys left */
    assert_int_equal(st_slot_cache_release(c, load_pinned(c, 6)), 0);  /* a demand load takes the LRU one: 1 */
    assert_false(present(c, 1));
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.wanted_evictions, 1);
    assert_int_equal(st.wanted, 2); /* 2 and 4; 1 left with its slot */
    assert_int_equal(st_slot_cache_acquire(c, 2, &s), ST_SLOT_HIT); /* the predicted use */
    assert_int_equal(st_slot_cache_release(c, s), 0);
    assert_int_equal(st_slot_cache_want(c, 4, false), ST_SLOT_HIT);
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.wanted, 0);
    assert_int_equal(st_slot_cache_prefetch(c, 5, &s), ST_SLOT_LOAD); /* nothing protected now */
    assert_int_equal(st_slot_cache_complete(c, s, 0, 4096), 0);
    st_slot_cache_free(c);
}

/* One round uses keys base..base+n-1 once each, in order (acquire, load when
 * absent, release): hits counted. */
static int round_of_uses(st_slot_cache *c, uint64_t base, int n) {
    int hits = 0;
    for (int i = 0; i < n; i++) {
        int s, r = st_slot_cache_acquire(c, base + (uint64_t)i, &s);
        assert_true(r == ST_SLOT_HIT || r == ST_SLOT_LOAD);
        if (r == ST_SLOT_LOAD) assert_int_equal(st_slot_cache_complete(c, s, 0, 4096), 0);
        hits += r == ST_SLOT_HIT;
        assert_int_equal(st_slot_cache_release(c, s), 0);
    }
    return hits;
}

/* 8 slots, rounds of the same 12 keys (a decode step of a large batch needing
 * more experts than the cache holds): LRU evicts each key before its next
 * round (0 hits), a kept subset of 5 hits on its 5 every round while the
 * other 7 keys stream through the 3 transient slots. Kept keys are evicted
 * after transient ones, never by a prefetch, and wanted marks still come
 * last; keep 0 makes every key ordinary again. */
static void kept_subset_survives_overflowing_rounds(void **state) {
    (void)state;
    st_slot_cache *c = make(8, 4096, NULL);
    round_of_uses(c, 100, 12);
    for (int r = 0; r < 3; r++) assert_int_equal(round_of_uses(c, 100, 12), 0); /* LRU: a cyclic scan never hits */
    st_slot_cache_set_keep(c, 5);
    st_slot_cache_stats st;
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.keep, 5);
    assert_int_equal(st.kept, 8); /* setting a target evicts nothing: the subset shrinks by evictions */
    /* above its target the subset shrinks in LRU order (104, 105, 106 go); 107..111 stay */
    round_of_uses(c, 100, 12);
    for (int r = 0; r < 4; r++) assert_int_equal(round_of_uses(c, 100, 12), 5);
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.kept, 5);
    assert_true(st.transient_evictions >= 4 * 7);
    for (uint64_t k = 107; k < 112; k++) assert_true(present(c, k)); /* the kept subset */
    assert_true(present(c, 104) && present(c, 105) && present(c, 106)); /* the transient slots: the last 3 streamed */
    /* a prefetch takes the LRU transient slot (104), never a kept one; with every transient key wanted it refuses */
    int s;
    assert_int_equal(st_slot_cache_prefetch(c, 500, &s), ST_SLOT_LOAD);
    assert_int_equal(st_slot_cache_complete(c, s, 0, 4096), 0);
    assert_false(present(c, 104));
    for (uint64_t k = 107; k < 112; k++) assert_true(present(c, k));
    const uint64_t transient[3] = {105, 106, 500};
    for (int i = 0; i < 3; i++) assert_int_equal(st_slot_cache_want(c, transient[i], true), ST_SLOT_HIT);
    assert_int_equal(st_slot_cache_prefetch(c, 501, &s), ST_ERR_BUDGET);
    /* a demand load takes the LRU unwanted kept key (107) before any wanted transient one */
    uint64_t before = st.kept_evictions;
    assert_int_equal(st_slot_cache_release(c, load_pinned(c, 502)), 0);
    assert_false(present(c, 107));
    for (int i = 0; i < 3; i++) assert_true(present(c, transient[i]));
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.kept_evictions, before + 1);
    assert_int_equal(st.wanted_evictions, 0);
    /* keep 0: plain LRU among unwanted keys again, nothing transient */
    st_slot_cache_set_keep(c, 0);
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.keep, 0);
    assert_int_equal(st.kept, 8);
    for (int i = 0; i < 8; i++) {
        st_slot_state ss;
        uint64_t k;
        assert_int_equal(st_slot_cache_slot_info(c, i, &ss, &k, NULL), 0);
        st_slot_cache_want(c, k, false);
    }
    assert_int_equal(st_slot_cache_prefetch(c, 503, &s), ST_SLOT_LOAD); /* the LRU key, transient before: 105 */
    assert_int_equal(st_slot_cache_complete(c, s, 0, 4096), 0);
    assert_false(present(c, 105));
    st_slot_cache_free(c);
}

/* A transient key used again while the subset has room is promoted into it. */
static void transient_key_used_again_is_promoted(void **state) {
    (void)state;
    st_slot_cache *c = make(4, 4096, NULL);
    st_slot_cache_set_keep(c, 2);
    assert_int_equal(round_of_uses(c, 1, 4), 0); /* 1, 2 kept; 3, 4 transient */
    st_slot_cache_stats st;
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.kept, 2);
    assert_int_equal(st_slot_cache_evict(c, 1), 0); /* room in the subset */
    assert_int_equal(round_of_uses(c, 4, 1), 1);    /* 4 used again: promoted */
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.kept, 2);
    assert_int_equal(st.promotions, 1);
    assert_int_equal(round_of_uses(c, 3, 1), 1);    /* 3 used again, subset full: stays transient */
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.promotions, 1);
    /* two new keys: 10 takes the free slot (transient: the subset is full), 11 evicts the LRU
     * transient key, 3, and never the kept 2 although it was used longer ago */
    assert_int_equal(round_of_uses(c, 10, 2), 0);
    assert_false(present(c, 3));
    assert_true(present(c, 2) && present(c, 4) && present(c, 10) && present(c, 11));
    st_slot_cache_free(c);
}

static void *complete_later(void *p) {
    completer *k = p;
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    fill(st_slot_cache_buffer(k->c, k->slot), 77, 4096);
    st_slot_cache_complete(k->c, k->slot, 0, 4096);
    return NULL;
}

static void wait_wakes_on_other_thread(void **state) {
    (void)state;
    st_slot_cache *c = make(2, 4096, NULL);
    completer k = {c, -1};
    assert_int_equal(st_slot_cache_acquire(c, 77, &k.slot), ST_SLOT_LOAD);
    pthread_t th;
    pthread_create(&th, NULL, complete_later, &k);
    double t0 = st_time_s();
    assert_int_equal(st_slot_cache_wait(c, k.slot, 5000), 0);
    assert_true(st_time_s() - t0 < 4.0);
    assert_true(holds(st_slot_cache_buffer(c, k.slot), 77, 4096));
    pthread_join(th, NULL);
    assert_int_equal(st_slot_cache_release(c, k.slot), 0);
    st_slot_cache_free(c);
}

static void wasted_prefetch_bytes(void **state) {
    (void)state;
    st_slot_cache *c = make(2, 4096, NULL);
    int s, x;
    assert_int_equal(st_slot_cache_prefetch(c, 1, &s), ST_SLOT_LOAD);
    assert_int_equal(st_slot_cache_prefetch(c, 1, &x), ST_SLOT_PENDING);
    assert_int_equal(st_slot_cache_complete(c, s, 0, 3000), 0);
    assert_int_equal(st_slot_cache_prefetch(c, 1, &x), ST_SLOT_HIT);
    assert_int_equal(st_slot_cache_prefetch(c, 2, &s), ST_SLOT_LOAD);
    assert_int_equal(st_slot_cache_complete(c, s, 0, 2000), 0);
    assert_int_equal(st_slot_cache_acquire(c, 2, &x), ST_SLOT_HIT); /* 2 is used */
    assert_int_equal(st_slot_cache_release(c, x), 0);
    int z = load_pinned(c, 3); /* evicts 1, never used: wasted */
    int y;
    assert_int_equal(st_slot_cache_prefetch(c, 4, &y), ST_SLOT_LOAD); /* evicts 2, used: not wasted */
    assert_int_equal(st_slot_cache_complete(c, y, ST_ERR_CANCELLED, 1000), 0); /* a cancelled prefetch is wasted */
    st_slot_cache_stats st;
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.wasted_loads, 2);
    assert_int_equal(st.wasted_bytes, 4000);
    assert_int_equal(st.prefetch_loads, 3);
    assert_int_equal(st.bytes_loaded, 3000 + 2000 + 4096);
    assert_int_equal(st.accesses, 2); /* prefetches are not uses */
    assert_int_equal(st_slot_cache_release(c, z), 0);
    st_slot_cache_free(c);
}

/* A synchronous transfer: start copies at once; poll hands back what started. */
typedef struct { st_transfer_done q[64]; int n; int fail_key; } sync_xfer;
static int sync_start(void *ctx, uint64_t key, void *dst, uint64_t bytes, uint64_t tag) {
    sync_xfer *x = ctx;
    if ((int)key == x->fail_key) return ST_ERR_IO;
    fill(dst, key, bytes);
    x->q[x->n++] = (st_transfer_done){tag, 0, bytes};
    return 0;
}
static int sync_poll(void *ctx, st_transfer_done *out, int max, int timeout_ms) {
    sync_xfer *x = ctx;
    int n = ST_MIN(max, x->n);
    memcpy(out, x->q, (size_t)n * sizeof *out);
    memmove(x->q, x->q + n, (size_t)(x->n - n) * sizeof *out);
    x->n -= n;
    return n;
}

static void get_through_transfer(void **state) {
    (void)state;
    st_slot_cache *c = make(2, 8192, NULL);
    sync_xfer x = {.fail_key = 13};
    st_transfer xf = {sync_start, sync_poll, NULL, &x, NULL};
    int s;
    for (int rep = 0; rep < 2; rep++) {
        assert_int_equal(st_slot_cache_get(c, 11, &xf, &s), 0);
        assert_true(holds(st_slot_cache_buffer(c, s), 11, 8192));
        assert_int_equal(st_slot_cache_release(c, s), 0);
    }
    assert_int_equal(st_slot_cache_get(c, 13, &xf, &s), ST_ERR_IO);
    assert_int_equal(s, -1);
    st_slot_cache_stats st;
    st_slot_cache_get_stats(c, &st);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.failed_loads, 1);
    assert_int_equal(st.pinned, 0);
    st_slot_cache_free(c);
}

/* ---- 4 threads, 8 slots, 24 keys ---------------------------------------------------------- */

typedef struct { st_slot_cache *c; int id; _Atomic int *bad; _Atomic int *full; } hammer_arg;

static void *hammer(void *p) {
    hammer_arg *a = p;
    uint64_t s = 99 + (uint64_t)a->id * 7919;
    for (int i = 0; i < 3000; i++) {
        int held[2], n_held = 0, want = 1 + i % 2;
        for (int j = 0; j < want; j++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            uint64_t key = 1 + (s >> 40) % 24;
            int slot, r = st_slot_cache_acquire(a->c, key, &slot);
            if (r == ST_ERR_BUDGET) { atomic_fetch_add(a->full, 1); sched_yield(); continue; }
            if (r < 0) { atomic_fetch_add(a->bad, 1); continue; }
            if (r == ST_SLOT_LOAD) {
                fill(st_slot_cache_buffer(a->c, slot), key, 512);
                st_slot_cache_complete(a->c, slot, 0, 512);
            } else if (st_slot_cache_wait(a->c, slot, -1) != 0) {
                atomic_fetch_add(a->bad, 1);
            }
            if (!holds(st_slot_cache_buffer(a->c, slot), key, 512)) atomic_fetch_add(a->bad, 1);
            held[n_held++] = slot;
            if (!holds(st_slot_cache_buffer(a->c, slot), key, 512)) atomic_fetch_add(a->bad, 1);
        }
        sched_yield();
        for (int j = 0; j < n_held; j++)
            if (st_slot_cache_release(a->c, held[j])) atomic_fetch_add(a->bad, 1);
    }
    return NULL;
}

static void threads_hammer(void **state) {
    (void)state;
    for (int k = 0; k < ST_POLICY_BELADY; k++) {
        st_slot_cache_options o = {.name = "hammer", .n_slots = 8, .slot_bytes = 512, .policy = (st_policy_kind)k};
        st_slot_cache *c;
        assert_int_equal(st_slot_cache_new(&o, &c), 0);
        _Atomic int bad = 0, full = 0;
        pthread_t th[4];
        hammer_arg args[4];
        for (int t = 0; t < 4; t++) {
            args[t] = (hammer_arg){c, t, &bad, &full};
            pthread_create(&th[t], NULL, hammer, &args[t]);
        }
        for (int t = 0; t < 4; t++) pthread_join(th[t], NULL);
        assert_int_equal(atomic_load(&bad), 0);
        st_slot_cache_stats st;
        st_slot_cache_get_stats(c, &st);
        assert_int_equal(st.pinned, 0);
        assert_int_equal(st.loading, 0);
        assert_int_equal(st.accesses, st.hits + st.pending_hits + st.misses);
        assert_int_equal(st.full, (uint64_t)atomic_load(&full));
        assert_true(st.hits > 0 && st.misses > 0);
        st_slot_cache_free(c);
    }
}

/* st_slot_cache_set_serving: the layer being served gives up its own unwanted
 * keys before the older keys of other layers (LRU's choice), falls back to the
 * policy's order when it has none, and -1 turns it off. */
static void serving_layer_gives_up_its_own_keys_first(void **state) {
    (void)state;
    st_slot_cache *c = make(4, 4096, NULL);
    const uint64_t a0 = st_cache_key_expert(1, 0), a1 = st_cache_key_expert(1, 1), b0 = st_cache_key_expert(0, 0),
                   b1 = st_cache_key_expert(0, 1), b2 = st_cache_key_expert(0, 2), b3 = st_cache_key_expert(0, 3),
                   b4 = st_cache_key_expert(0, 4);
    const uint64_t order[4] = {a0, a1, b0, b1}; /* LRU: layer 1's keys oldest */
    for (int i = 0; i < 4; i++) assert_int_equal(st_slot_cache_release(c, load_pinned(c, order[i])), 0);
    st_slot_cache_set_serving(c, 0);
    assert_int_equal(st_slot_cache_want(c, b0, true), ST_SLOT_HIT); /* layer 0 needs b0 now */
    assert_int_equal(st_slot_cache_release(c, load_pinned(c, b2)), 0);
    assert_false(present(c, b1)); /* layer 0's unwanted key, not LRU's a0 */
    assert_true(present(c, a0) && present(c, a1) && present(c, b0));
    assert_int_equal(st_slot_cache_want(c, b2, true), ST_SLOT_HIT);
    int s;
    assert_int_equal(st_slot_cache_prefetch(c, b3, &s), ST_SLOT_LOAD); /* no layer-0 key left: LRU's a0 */
    assert_int_equal(st_slot_cache_complete(c, s, 0, 4096), 0);
    assert_false(present(c, a0));
    assert_true(present(c, a1) && present(c, b0) && present(c, b2) && present(c, b3));
    st_slot_cache_set_serving(c, -1); /* off: plain LRU among unwanted keys (a1, then b3) */
    assert_int_equal(st_slot_cache_release(c, load_pinned(c, b4)), 0);
    assert_false(present(c, a1));
    st_slot_cache_free(c);
}

/* Layer-cyclic decode steps (2 layers of 32 experts, 4 random ones each per
 * step, 12 slots: a step's 8 fit, with room for a third of the history): with
 * LRU alone a layer finds little more than its previous step's 4 (its older
 * keys are the oldest of all, the first the other layer's loads evict): 14%
 * hits where the cache's share of the experts gives 18.75%; serving the layer
 * keeps each layer's share, and the hit rate comes to that share. */
static double cyclic_hit_rate(bool serving, uint64_t seed) {
    st_slot_cache *c = make(12, 4096, NULL);
    uint64_t x = seed;
    int hits = 0, needs = 0;
    for (int step = 0; step < 2000; step++)
        for (int l = 0; l < 2; l++) {
            int need[4], n = 0;
            while (n < 4) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                int e = (int)(x % 32), dup = 0;
                for (int i = 0; i < n; i++) dup |= need[i] == e;
                if (!dup) need[n++] = e;
            }
            st_slot_cache_set_serving(c, serving ? l : -1);
            for (int i = 0; i < n; i++) st_slot_cache_want(c, st_cache_key_expert(l, need[i]), true);
            for (int i = 0; i < n; i++) {
                int s, r = st_slot_cache_acquire(c, st_cache_key_expert(l, need[i]), &s);
                assert_true(r == ST_SLOT_HIT || r == ST_SLOT_LOAD);
                if (r == ST_SLOT_LOAD) assert_int_equal(st_slot_cache_complete(c, s, 0, 4096), 0);
                if (step >= 100) hits += r == ST_SLOT_HIT, needs++;
                assert_int_equal(st_slot_cache_release(c, s), 0);
            }
        }
    st_slot_cache_free(c);
    return (double)hits / needs;
}

static void serving_keeps_each_layers_share(void **state) {
    (void)state;
    double lru = cyclic_hit_rate(false, 88172645463325252ull), served = cyclic_hit_rate(true, 88172645463325252ull);
    print_message("cyclic layers, 12 slots of 64 keys: hit rate %.3f with LRU alone, %.3f serving the layer (share 0.1875)\n",
                  lru, served);
    assert_true(lru < 0.16);
    assert_true(served > 0.17 && served < 0.21);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(slots_from_budget),
        cmocka_unit_test(pinned_never_evicted),
        cmocka_unit_test(misuse_is_an_error),
        cmocka_unit_test(failed_load_reaches_waiters),
        cmocka_unit_test(wait_wakes_on_other_thread),
        cmocka_unit_test(wasted_prefetch_bytes),
        cmocka_unit_test(wanted_keys_evicted_last),
        cmocka_unit_test(kept_subset_survives_overflowing_rounds),
        cmocka_unit_test(transient_key_used_again_is_promoted),
        cmocka_unit_test(get_through_transfer),
        cmocka_unit_test(serving_layer_gives_up_its_own_keys_first),
        cmocka_unit_test(serving_keeps_each_layers_share),
        cmocka_unit_test(threads_hammer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
