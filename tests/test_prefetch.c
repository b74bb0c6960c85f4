/* offload/prefetch.c: deadline order within the queue depth, cancellation by a
 * newer prediction, stale requests, hit/late/miss/stall/accuracy/wasted
 * accounting, the layer batch (resident experts first, combine independent of
 * arrival order), demand_first and horizon issue order, settle (the real
 * routing drops unneeded predictions), predicted keys protected from eviction, a full cache, transfer failures, a transfer completing on
 * another thread, and the io_uring transfer reading a real file. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "offload/prefetch.h"
#include "offload/slot_cache.h"

enum { SLOT = 4096, MAXF = 256 };

static void fill(void *buf, uint64_t key, size_t bytes) {
    float *p = buf;
    for (size_t i = 0; i < bytes / 4; i++) p[i] = (float)(key % 97) * 0.37f + (float)i * 1e-3f;
}
static bool holds(const void *buf, uint64_t key, size_t bytes) {
    float want[SLOT / 4];
    fill(want, key, bytes);
    return !memcmp(buf, want, bytes);
}

/* A manual transfer: loads start into `started` and finish when the test says
 * (fake_finish) or, when the scheduler blocks in poll with nothing finished,
 * the oldest started one finishes (time passes). */
typedef struct { uint64_t key, tag; void *dst; int status; } fake_load;
typedef struct {
    fake_load started[MAXF]; int n_started;  /* still running */
    st_transfer_done done[MAXF]; int n_done; /* finished, not reaped */
    uint64_t order[MAXF]; int n_order;       /* keys in start order */
    uint64_t fail_key, fail_start_key;
    int blocking_polls, cancels;
    uint64_t promoted[MAXF]; int n_promoted; /* keys of loads promoted while in flight */
} fake;

static void fake_finish_at(fake *f, int i, int status) {
    fake_load l = f->started[i];
    memmove(&f->started[i], &f->started[i + 1], (size_t)(f->n_started - i - 1) * sizeof l);
    f->n_started--;
    if (l.status) status = l.status;
    if (!status && l.key == f->fail_key) status = ST_ERR_IO;
    if (!status) fill(l.dst, l.key, SLOT);
    f->done[f->n_done++] = (st_transfer_done){l.tag, status, status ? 0 : SLOT};
}
static void fake_finish(fake *f, uint64_t key) {
    for (int i = 0; i < f->n_started; i++)
        if (f->started[i].key == key) { fake_finish_at(f, i, 0); return; }
    fail_msg("key %llu is not in flight", (unsigned long long)key);
}
static int fake_start(void *ctx, uint64_t key, void *dst, uint64_t bytes, uint64_t tag) {
    fake *f = ctx;
    if (key == f->fail_start_key) return st_error(ST_ERR_IO, "fake: refusing key %llu", (unsigned long long)key);
    assert_int_equal(bytes, SLOT);
    f->started[f->n_started++] = (fake_load){key, tag, dst, 0};
    f->order[f->n_order++] = key;
    return 0;
}
static int fake_poll(void *ctx, st_transfer_done *out, int max, int timeout_ms) {
    fake *f = ctx;
    if (f->n_done == 0 && timeout_ms != 0 && f->n_started > 0) {
        f->blocking_polls++;
        fake_finish_at(f, 0, 0);
    }
    int n = ST_MIN(max, f->n_done);
    memcpy(out, f->done, (size_t)n * sizeof *out);
    memmove(f->done, f->done + n, (size_t)(f->n_done - n) * sizeof *out);
    f->n_done -= n;
    return n;
}
static int fake_cancel(void *ctx, uint64_t tag) {
    fake *f = ctx;
    for (int i = 0; i < f->n_started; i++)
        if (f->started[i].tag == tag) { f->cancels++; fake_finish_at(f, i, ST_ERR_CANCELLED); return 0; }
    return ST_ERR_NOT_FOUND;
}

static int fake_promote(void *ctx, uint64_t tag) {
    fake *f = ctx;
    for (int i = 0; i < f->n_started; i++)
        if (f->started[i].tag == tag) { f->promoted[f->n_promoted++] = f->started[i].key; return 0; }
    return 0; /* finished, not reaped yet: nothing left to move */
}

typedef struct { st_slot_cache *c; st_prefetch *pf; fake f; st_transfer x; } rig;

static void rig_up(rig *r, int slots, int depth, bool cancel_in_flight) {
    memset(r, 0, sizeof *r);
    st_slot_cache_options o = {.name = "pf", .n_slots = slots, .slot_bytes = SLOT};
    assert_int_equal(st_slot_cache_new(&o, &r->c), 0);
    r->x = (st_transfer){fake_start, fake_poll, fake_cancel, &r->f, fake_promote};
    st_prefetch_options po = {.queue_depth = depth, .cancel_in_flight = cancel_in_flight};
    assert_int_equal(st_prefetch_new(r->c, &r->x, &po, &r->pf), 0);
}
static void rig_down(rig *r) {
    st_prefetch_free(r->pf);
    st_slot_cache_stats st;
    st_slot_cache_get_stats(r->c, &st);
    assert_int_equal(st.loading, 0); /* free reaped everything in flight */
    st_slot_cache_free(r->c);
}

static void need_ok(rig *r, uint64_t key) {
    int s;
    assert_int_equal(st_prefetch_need(r->pf, key, &s), 0);
    assert_true(holds(st_slot_cache_buffer(r->c, s), key, SLOT));
    assert_int_equal(st_slot_cache_release(r->c, s), 0);
}

static void deadline_order_and_depth(void **state) {
    (void)state;
    rig r;
    rig_up(&r, 16, 2, false);
    assert_int_equal(st_prefetch_request(r.pf, 50, 5, 0), 0);
    assert_int_equal(st_prefetch_request(r.pf, 10, 1, 0), 0);
    assert_int_equal(st_prefetch_request(r.pf, 30, 3, 0), 0);
    assert_int_equal(st_prefetch_request(r.pf, 21, 2, 0), 0);
    assert_int_equal(st_prefetch_request(r.pf, 20, 2, 0), 0); /* same deadline: after 21 */
    assert_int_equal(st_prefetch_request(r.pf, 50, 0, 0), 0); /* again, earlier: moves up */
    assert_int_equal(st_prefetch_pump(r.pf), 0);
    assert_int_equal(r.f.n_order, 2); /* the depth */
    assert_int_equal(r.f.order[0], 50);
    assert_int_equal(r.f.order[1], 10);
    assert_int_equal(st_prefetch_pump(r.pf), 0);
    assert_int_equal(r.f.n_order, 2); /* nothing finished: nothing more */
    fake_finish(&r.f, 10);
    assert_int_equal(st_prefetch_pump(r.pf), 0);
    assert_int_equal(r.f.n_order, 3);
    assert_int_equal(r.f.order[2], 21);
    fake_finish(&r.f, 50);
    fake_finish(&r.f, 21);
    assert_int_equal(st_prefetch_pump(r.pf), 0);
    assert_int_equal(r.f.n_order, 5);
    assert_int_equal(r.f.order[3], 20);
    assert_int_equal(r.f.order[4], 30);
    st_prefetch_stats st;
    st_prefetch_get_stats(r.pf, &st);
    assert_int_equal(st.requests, 5);
    assert_int_equal(st.issued, 5);
    assert_int_equal(st.in_flight, 2);
    assert_int_equal(st.queued, 0);
    rig_down(&r);
}

/* A load the engine waits for is promoted at the transfer (its rest overtakes
 * speculative reads): a late prefetch when it is needed, a demand load when it
 * starts; a hit or a prefetch nobody waits for is not. */
static void waited_loads_are_promoted(void **state) {
    (void)state;
    rig r;
    rig_up(&r, 16, 4, false);
    assert_int_equal(st_prefetch_request(r.pf, 1, 1, 0), 0);
    assert_int_equal(st_prefetch_request(r.pf, 2, 1, 0), 0);
    assert_int_equal(st_prefetch_request(r.pf, 3, 1, 0), 0);
    assert_int_equal(st_prefetch_pump(r.pf), 0);
    assert_int_equal(r.f.n_order, 3);
    assert_int_equal(r.f.n_promoted, 0); /* speculative: not promoted */
    fake_finish(&r.f, 1);
    assert_int_equal(st_prefetch_pump(r.pf), 0); /* reaped: resident */
    need_ok(&r, 1);                       /* a hit: nothing to promote */
    assert_int_equal(r.f.n_promoted, 0);
    need_ok(&r, 3);                       /* still in flight: late, promoted before the wait */
    assert_int_equal(r.f.n_promoted, 1);
    assert_int_equal(r.f.promoted[0], 3);
    need_ok(&r, 9);                       /* never requested: a demand load, promoted as it starts */
    assert_int_equal(r.f.n_promoted, 2);
    assert_int_equal(r.f.promoted[1], 9);
    st_prefetch_stats st;
    st_prefetch_get_stats(r.pf, &st);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.late, 1);
    assert_int_equal(st.misses, 1);
    rig_down(&r);
}

static void newer_prediction_cancels(void **state) {
    (void)state;
    rig r;
    rig_up(&r, 16, 1, false);
    uint64_t first[] = {1, 2, 3}, second[] = {1, 3, 4};
    assert_int_equal(st_prefetch_predict(r.pf, 10, first, 3, 0), 0);
    assert_int_equal(st_prefetch_request(r.pf, 9, 11, 0), 0); /* another deadline: untouched */
    assert_int_equal(st_prefetch_pump(r.pf), 0); /* 1 in flight, 2 3 queued */
    assert_int_equal(st_prefetch_predict(r.pf, 10, second, 3, 0), 0); /* 2 is no longer needed */
    st_prefetch_stats st;
    st_prefetch_get_stats(r.pf, &st);
    assert_int_equal(st.superseded, 1);
    assert_int_equal(st.queued, 4); /* 3, 4, 9 and 1 again (in flight: it will cost nothing when issued) */
    assert_int_equal(st_prefetch_cancel(r.pf, 4), 1);
    assert_int_equal(st_prefetch_cancel(r.pf, 4), 0);
    assert_int_equal(st_prefetch_cancel(r.pf, 777), 0);
    for (int i = 0; i < 3; i++) {
        fake_finish(&r.f, r.f.order[r.f.n_order - 1]);
        assert_int_equal(st_prefetch_pump(r.pf), 0);
    }
    assert_int_equal(r.f.n_order, 3);
    assert_int_equal(r.f.order[0], 1);
    assert_int_equal(r.f.order[1], 3);
    assert_int_equal(r.f.order[2], 9);
    /* Stale: requests whose step has passed are dropped, not issued. */
    assert_int_equal(st_prefetch_request(r.pf, 70, 12, 0), 0);
    assert_int_equal(st_prefetch_request(r.pf, 71, 13, 0), 0);
    st_prefetch_advance(r.pf, 13);
    st_prefetch_get_stats(r.pf, &st);
    assert_int_equal(st.stale, 1);
    assert_int_equal(st.queued, 1);
    rig_down(&r);

    /* cancel_in_flight: a superseded started load is cancelled, its bytes wasted. */
    rig_up(&r, 16, 4, true);
    assert_int_equal(st_prefetch_predict(r.pf, 5, first, 3, 0), 0);
    assert_int_equal(st_prefetch_pump(r.pf), 0);
    assert_int_equal(st_prefetch_predict(r.pf, 5, second, 3, 0), 0);
    st_prefetch_get_stats(r.pf, &st);
    assert_int_equal(st.superseded, 0); /* 2 had left the queue */
    assert_int_equal(st_prefetch_cancel(r.pf, 2), 0);
    st_prefetch_get_stats(r.pf, &st);
    assert_int_equal(st.cancelled_in_flight, 1);
    assert_int_equal(r.f.cancels, 1);
    assert_int_equal(st_prefetch_pump(r.pf), 0);
    int s;
    assert_int_equal(st_slot_cache_lookup(r.c, 2, &s), ST_SLOT_MISS);
    rig_down(&r);
}

static void accounting(void **state) {
    (void)state;
    rig r;
    rig_up(&r, 4, 1, false);
    assert_int_equal(st_prefetch_request(r.pf, 1, 0, 0), 0);
    assert_int_equal(st_prefetch_request(r.pf, 2, 0, 0), 0);
    assert_int_equal(st_prefetch_request(r.pf, 5, 1, 0), 0); /* predicted, never needed */
    assert_int_equal(st_prefetch_pump(r.pf), 0);            /* 1 in flight */
    fake_finish(&r.f, 1);
    assert_int_equal(st_prefetch_pump(r.pf), 0);            /* 1 resident, 2 in flight */
    need_ok(&r, 1); /* hit */
    need_ok(&r, 2); /* late: in flight, waited; its completion frees the depth for 5 */
    assert_int_equal(r.f.blocking_polls, 1);
    assert_int_equal(r.f.n_order, 3);
    assert_int_equal(r.f.order[2], 5);
    assert_int_equal(st_prefetch_request(r.pf, 6, 1, 0), 0); /* queued behind 5 (depth 1) */
    need_ok(&r, 6); /* late, still queued: loaded on demand */
    need_ok(&r, 3); /* miss */
    st_prefetch_stats st;
    st_prefetch_get_stats(r.pf, &st);
    assert_int_equal(st.needs, 4);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.late, 2);
    assert_int_equal(st.late_queued, 1);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.demand_loads, 2);
    assert_int_equal(st.issued, 3);
    assert_true(st.stall_ns > 0);
    /* 5 is still predicted (deadline 1): four other keys evict each other, not it */
    for (uint64_t k = 100; k < 104; k++) need_ok(&r, k);
    int s5;
    assert_int_equal(st_slot_cache_lookup(r.c, 5, &s5), ST_SLOT_HIT);
    assert_int_equal(st_slot_cache_release(r.c, s5), 0);
    /* ... which counted as its use; 7 is predicted, loaded, its step passes unused: then the
     * next loads evict it, wasted */
    assert_int_equal(st_prefetch_request(r.pf, 7, 1, 0), 0);
    assert_int_equal(st_prefetch_pump(r.pf), 0);
    fake_finish(&r.f, 7);
    assert_int_equal(st_prefetch_pump(r.pf), 0);
    st_prefetch_advance(r.pf, 2);
    for (uint64_t k = 200; k < 204; k++) need_ok(&r, k);
    st_prefetch_get_stats(r.pf, &st);
    assert_int_equal(st.predictions, 5);
    assert_int_equal(st.predictions_used, 3);
    assert_int_equal(st.wasted_bytes, SLOT); /* 7 only */
    assert_int_equal(st.needs, 12);
    assert_int_equal(st.needs, st.hits + st.late + st.misses);
    assert_int_equal(st.bytes_loaded, (uint64_t)SLOT * 14);
    rig_down(&r);
}

/* A toy "expert": out[j] = sum of the weights times x, for a few rows. */
static void apply(const float *w, const float *x, float *out) {
    for (int j = 0; j < 8; j++) {
        float a = 0;
        for (int i = 0; i < 64; i++) a += w[j * 64 + i] * x[i];
        out[j] = a;
    }
}

static void batch_runs_resident_first(void **state) {
    (void)state;
    float x[64], combined[2][8];
    for (int i = 0; i < 64; i++) x[i] = (float)(i % 7) - 3.1f;
    uint64_t keys[] = {3, 5, 7, 9};
    for (int order = 0; order < 2; order++) {
        rig r;
        rig_up(&r, 8, 4, false);
        need_ok(&r, 3);
        need_ok(&r, 7);
        assert_int_equal(st_prefetch_request(r.pf, 5, 0, 0), 0);
        assert_int_equal(st_prefetch_pump(r.pf), 0); /* 5 in flight; 9 will be a miss */
        int polls = r.f.blocking_polls;
        st_prefetch_batch b;
        assert_int_equal(st_prefetch_batch_begin(r.pf, &b, keys, 4), 0);
        assert_int_equal(r.f.n_started, 2);
        int idx, s, seen[4], n = 0;
        float outs[4][8];
        for (int k = 0; k < 2; k++) { /* the resident ones, in ascending order, without waiting */
            assert_int_equal(st_prefetch_batch_next(r.pf, &b, &idx, &s), 1);
            seen[n++] = idx;
            apply(st_slot_cache_buffer(r.c, s), x, outs[idx]);
        }
        assert_int_equal(seen[0], 0);
        assert_int_equal(seen[1], 2);
        assert_int_equal(r.f.blocking_polls, polls); /* nothing waited for */
        fake_finish(&r.f, order == 0 ? 5 : 9); /* arrival order differs between the runs */
        for (int k = 0; k < 2; k++) {
            assert_int_equal(st_prefetch_batch_next(r.pf, &b, &idx, &s), 1);
            seen[n++] = idx;
            assert_true(holds(st_slot_cache_buffer(r.c, s), keys[idx], SLOT));
            apply(st_slot_cache_buffer(r.c, s), x, outs[idx]);
        }
        assert_int_equal(seen[2], order == 0 ? 1 : 3);
        assert_int_equal(st_prefetch_batch_next(r.pf, &b, &idx, &s), 0);
        /* Combine in ascending expert id, whatever the arrival order. */
        memset(combined[order], 0, sizeof combined[order]);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 8; j++) combined[order][j] += outs[i][j] * (0.1f + (float)i);
        st_slot_cache_stats cs;
        st_slot_cache_get_stats(r.c, &cs);
        assert_int_equal(cs.pinned, 4);
        st_prefetch_batch_end(r.pf, &b);
        st_slot_cache_get_stats(r.c, &cs);
        assert_int_equal(cs.pinned, 0);
        st_prefetch_stats st;
        st_prefetch_get_stats(r.pf, &st);
        assert_int_equal(st.hits, 2);
        assert_int_equal(st.late, 1);
        assert_int_equal(st.misses, 2 + 1);
        rig_down(&r);
    }
    assert_memory_equal(combined[0], combined[1], sizeof combined[0]);
}

static void full_cache_and_failures(void **state) {
    (void)state;
    rig r;
    rig_up(&r, 2, 2, false);
    uint64_t keys[] = {1, 2, 3};
    st_prefetch_batch b;
    assert_int_equal(st_prefetch_batch_begin(r.pf, &b, keys, 3), ST_ERR_BUDGET); /* 3 pins, 2 slots */
    st_slot_cache_stats cs;
    st_slot_cache_get_stats(r.c, &cs);
    assert_int_equal(cs.pinned, 0);
    assert_int_equal(st_prefetch_batch_begin(r.pf, &b, keys, 65), ST_ERR_INVALID);

    /* A load that fails reaches the need; the transfer refusing to start too. */
    r.f.fail_key = 40;
    r.f.fail_start_key = 41;
    int s;
    assert_int_equal(st_prefetch_need(r.pf, 40, &s), ST_ERR_IO);
    assert_int_equal(s, -1);
    assert_int_equal(st_prefetch_need(r.pf, 41, &s), ST_ERR_IO);
    assert_non_null(strstr(st_last_error(), "refusing key 41"));
    assert_int_equal(st_prefetch_request(r.pf, 41, 0, 0), 0);
    assert_int_equal(st_prefetch_request(r.pf, 40, 0, 0), 0);
    assert_int_equal(st_prefetch_pump(r.pf), 0);
    while (r.f.n_started) fake_finish_at(&r.f, 0, 0);
    assert_int_equal(st_prefetch_pump(r.pf), 0);
    st_prefetch_stats st;
    st_prefetch_get_stats(r.pf, &st);
    assert_int_equal(st.issue_errors, 2);
    st_slot_cache_get_stats(r.c, &cs);
    assert_int_equal(cs.pinned, 0);
    assert_int_equal(cs.loading, 0);
    need_ok(&r, 7); /* still works */
    rig_down(&r);

    st_prefetch *pf;
    st_prefetch_options po = {.queue_depth = 5000};
    assert_int_equal(st_prefetch_new(r.c, &r.x, &po, &pf), ST_ERR_INVALID);
    st_prefetch_free(NULL);
}

/* ---- a transfer finishing on its own thread ------------------------------------------ */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    fake_load q[MAXF]; int n_q;
    st_transfer_done done[MAXF]; int n_done;
    bool stop;
    int delay_us;
    pthread_t th;
} threaded;

static void *worker(void *p) {
    threaded *t = p;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (!t->n_q && !t->stop) pthread_cond_wait(&t->cv, &t->mu);
        if (t->stop && !t->n_q) break;
        fake_load l = t->q[0];
        memmove(t->q, t->q + 1, (size_t)--t->n_q * sizeof l);
        pthread_mutex_unlock(&t->mu);
        usleep((useconds_t)t->delay_us);
        fill(l.dst, l.key, SLOT);
        pthread_mutex_lock(&t->mu);
        t->done[t->n_done++] = (st_transfer_done){l.tag, 0, SLOT};
        pthread_cond_broadcast(&t->cv);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}
static int th_start(void *ctx, uint64_t key, void *dst, uint64_t bytes, uint64_t tag) {
    threaded *t = ctx;
    pthread_mutex_lock(&t->mu);
    t->q[t->n_q++] = (fake_load){key, tag, dst, 0};
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    return 0;
}
static int th_poll(void *ctx, st_transfer_done *out, int max, int timeout_ms) {
    threaded *t = ctx;
    pthread_mutex_lock(&t->mu);
    while (timeout_ms != 0 && !t->n_done && t->n_q + 1 > 0) {
        pthread_cond_wait(&t->cv, &t->mu);
        if (timeout_ms > 0) break;
    }
    int n = ST_MIN(max, t->n_done);
    memcpy(out, t->done, (size_t)n * sizeof *out);
    memmove(t->done, t->done + n, (size_t)(t->n_done - n) * sizeof *out);
    t->n_done -= n;
    pthread_mutex_unlock(&t->mu);
    return n;
}

static void threaded_transfer(void **state) {
    (void)state;
    threaded t = {.delay_us = 3000};
    pthread_mutex_init(&t.mu, NULL);
    pthread_cond_init(&t.cv, NULL);
    pthread_create(&t.th, NULL, worker, &t);
    st_slot_cache *c;
    st_slot_cache_options o = {.name = "threaded", .n_slots = 6, .slot_bytes = SLOT, .policy = ST_POLICY_LFRU};
    assert_int_equal(st_slot_cache_new(&o, &c), 0);
    st_transfer x = {th_start, th_poll, NULL, &t, NULL};
    st_prefetch *pf;
    st_prefetch_options po = {.queue_depth = 2};
    assert_int_equal(st_prefetch_new(c, &x, &po, &pf), 0);
    /* 12 steps of 3 experts out of 10, the next step predicted (right 2 times in 3). */
    for (int step = 0; step < 12; step++) {
        st_prefetch_advance(pf, step);
        uint64_t keys[3] = {(uint64_t)step % 10, (uint64_t)(step * 3 + 1) % 10, (uint64_t)(step * 7 + 2) % 10};
        if (keys[1] == keys[0]) keys[1] = (keys[1] + 1) % 10;
        while (keys[2] == keys[0] || keys[2] == keys[1]) keys[2] = (keys[2] + 1) % 10;
        int n1 = step + 1;
        uint64_t next[3] = {(uint64_t)n1 % 10, (uint64_t)(n1 * 3 + 1) % 10, 9};
        assert_int_equal(st_prefetch_predict(pf, step + 1, next, 3, 0), 0);
        assert_int_equal(st_prefetch_pump(pf), 0);
        st_prefetch_batch b;
        assert_int_equal(st_prefetch_batch_begin(pf, &b, keys, 3), 0);
        int idx, s, got = 0;
        while (st_prefetch_batch_next(pf, &b, &idx, &s) == 1) {
            assert_true(holds(st_slot_cache_buffer(c, s), keys[idx], SLOT));
            got++;
        }
        assert_int_equal(got, 3);
        st_prefetch_batch_end(pf, &b);
    }
    st_prefetch_stats st;
    st_prefetch_get_stats(pf, &st);
    assert_int_equal(st.needs, 36);
    assert_int_equal(st.needs, st.hits + st.late + st.misses);
    assert_true(st.hits > 0);
    assert_true(st.stall_ns >= 2000000); /* at least one 3 ms load was waited for */
    st_prefetch_free(pf);
    pthread_mutex_lock(&t.mu);
    t.stop = true;
    pthread_cond_broadcast(&t.cv);
    pthread_mutex_unlock(&t.mu);
    pthread_join(t.th, NULL);
    st_slot_cache_free(c);
}

/* ---- NVMe -> DRAM through the read engine ---------------------------------------------- */

typedef struct { uint64_t n_keys; } extents;
static int locate(void *ctx, uint64_t key, int *file, uint64_t *offset, uint64_t *length) {
    const extents *e = ctx;
    if (key >= e->n_keys + 1) return st_error(ST_ERR_NOT_FOUND, "no extent for key %llu", (unsigned long long)key);
    *file = 0;
    *offset = key * SLOT;
    *length = SLOT;
    return 0;
}

static void uring_transfer(void **state) {
    (void)state;
    char path[] = "/tmp/strata_prefetch_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    enum { KEYS = 12 };
    float buf[SLOT / 4];
    for (uint64_t k = 0; k < KEYS; k++) {
        fill(buf, k, SLOT);
        assert_int_equal(write(fd, buf, SLOT), SLOT);
    }
    close(fd);
    const char *paths[] = {path};
    st_io *io;
    st_io_options io_opt = {.queue_depth = 4, .buffered = true};
    assert_int_equal(st_io_open(paths, 1, &io_opt, &io), 0);
    extents e = {KEYS}; /* key KEYS lies past the end of the file: truncated */
    st_uring_transfer *ut;
    st_transfer x;
    assert_int_equal(st_uring_transfer_new(io, locate, &e, &ut, &x), 0);
    st_slot_cache *c;
    st_slot_cache_options o = {.name = "nvme", .n_slots = 5, .slot_bytes = SLOT};
    assert_int_equal(st_slot_cache_new(&o, &c), 0);
    st_prefetch *pf;
    /* Two steps ahead: all 12 up front with no horizon would let later prefetches evict
     * earlier ones from the 5 slots before their use. */
    assert_int_equal(st_prefetch_new(c, &x, &(st_prefetch_options){.queue_depth = 3, .horizon = 2}, &pf), 0);
    for (uint64_t k = 0; k < KEYS; k++) assert_int_equal(st_prefetch_request(pf, k, (int64_t)k, 0), 0);
    for (uint64_t k = 0; k < KEYS; k++) {
        st_prefetch_advance(pf, (int64_t)k);
        assert_int_equal(st_prefetch_pump(pf), 0);
        int s;
        assert_int_equal(st_prefetch_need(pf, k, &s), 0);
        assert_true(holds(st_slot_cache_buffer(c, s), k, SLOT));
        assert_int_equal(st_slot_cache_release(c, s), 0);
    }
    int s;
    assert_int_equal(st_prefetch_need(pf, KEYS, &s), ST_ERR_FORMAT); /* past the end */
    assert_int_equal(st_prefetch_need(pf, KEYS + 5, &s), ST_ERR_NOT_FOUND);
    st_prefetch_stats st;
    st_prefetch_get_stats(pf, &st);
    assert_int_equal(st.needs, KEYS + 2);
    assert_int_equal(st.hits + st.late, KEYS);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.issued, KEYS);
    assert_int_equal(st.bytes_loaded, (uint64_t)KEYS * SLOT);
    st_prefetch_free(pf);
    st_slot_cache_free(c);
    st_uring_transfer_free(ut);
    st_io_close(io);
    unlink(path);
}


static void rig_up_opts(rig *r, int slots, const st_prefetch_options *po) {
    memset(r, 0, sizeof *r);
    st_slot_cache_options o = {.name = "pf", .n_slots = slots, .slot_bytes = SLOT};
    assert_int_equal(st_slot_cache_new(&o, &r->c), 0);
    r->x = (st_transfer){fake_start, fake_poll, fake_cancel, &r->f, fake_promote};
    assert_int_equal(st_prefetch_new(r->c, &r->x, po, &r->pf), 0);
}

/* Is key in a slot (resident or loading)? Looks without counting a use. */
static bool cached(rig *r, uint64_t key) {
    for (int s = 0; s < st_slot_cache_slots(r->c); s++) {
        st_slot_state state;
        uint64_t k;
        assert_int_equal(st_slot_cache_slot_info(r->c, s, &state, &k, NULL), 0);
        if (state != ST_SLOT_EMPTY && k == key) return true;
    }
    return false;
}

/* demand_first: a demand load goes to the transfer at once, ahead of speculative
 * requests queued before it, and later-step requests wait while it is in flight;
 * requests for the current step do not. */
static void demand_first_order(void **state) {
    (void)state;
    rig r;
    st_prefetch_options po = {.queue_depth = 2, .demand_first = true};
    rig_up_opts(&r, 16, &po);
    st_prefetch_advance(r.pf, 10);
    assert_int_equal(st_prefetch_request(r.pf, 1, 11, 0), 0);
    assert_int_equal(st_prefetch_request(r.pf, 2, 11, 0), 0);
    assert_int_equal(st_prefetch_request(r.pf, 3, 11, 0), 0);
    assert_int_equal(st_prefetch_pump(r.pf), 0); /* nothing urgent yet: 1 and 2 start */
    assert_int_equal(r.f.n_order, 2);
    fake_finish(&r.f, 1);
    fake_finish(&r.f, 2);
    /* the step's need of 9 (never requested) starts before the queued 3 */
    st_prefetch_batch b;
    uint64_t keys[] = {9};
    assert_int_equal(st_prefetch_batch_begin(r.pf, &b, keys, 1), 0);
    assert_int_equal(r.f.n_order, 3);
    assert_int_equal(r.f.order[2], 9);
    assert_int_equal(st_prefetch_pump(r.pf), 0);
    assert_int_equal(r.f.n_order, 3); /* 3 (step 11) waits: 9 is in flight */
    assert_int_equal(st_prefetch_request(r.pf, 4, 10, 0), 0); /* this step's: not held back */
    assert_int_equal(st_prefetch_pump(r.pf), 0);
    assert_int_equal(r.f.n_order, 4);
    assert_int_equal(r.f.order[3], 4);
    int idx, slot;
    assert_int_equal(st_prefetch_batch_next(r.pf, &b, &idx, &slot), 1); /* waits for 9 */
    assert_int_equal(idx, 0);
    assert_true(holds(st_slot_cache_buffer(r.c, slot), 9, SLOT));
    st_prefetch_batch_end(r.pf, &b);
    fake_finish(&r.f, 4);
    assert_int_equal(st_prefetch_pump(r.pf), 0); /* nothing urgent left: 3 goes */
    assert_int_equal(r.f.n_order, 5);
    assert_int_equal(r.f.order[4], 3);
    st_prefetch_stats st;
    st_prefetch_get_stats(r.pf, &st);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.demand_loads, 1);
    assert_int_equal(st.issued, 4);
    rig_down(&r);

    /* without demand_first the depth is the only limit: 3 starts beside the demand load */
    po.demand_first = false;
    rig_up_opts(&r, 16, &po);
    st_prefetch_advance(r.pf, 10);
    assert_int_equal(st_prefetch_request(r.pf, 3, 11, 0), 0);
    assert_int_equal(st_prefetch_batch_begin(r.pf, &b, keys, 1), 0);
    assert_int_equal(r.f.n_order, 2);
    assert_int_equal(r.f.order[0], 9);
    assert_int_equal(r.f.order[1], 3);
    st_prefetch_batch_end(r.pf, &b);
    rig_down(&r);
}

/* horizon: requests at or beyond now + horizon wait for the steps to come closer. */
static void horizon_holds_far_requests(void **state) {
    (void)state;
    rig r;
    st_prefetch_options po = {.queue_depth = 8, .horizon = 2};
    rig_up_opts(&r, 16, &po);
    st_prefetch_advance(r.pf, 10);
    assert_int_equal(st_prefetch_request(r.pf, 1, 12, 0), 0);
    assert_int_equal(st_prefetch_request(r.pf, 2, 11, 0), 0);
    assert_int_equal(st_prefetch_pump(r.pf), 0);
    assert_int_equal(r.f.n_order, 1);
    assert_int_equal(r.f.order[0], 2);
    st_prefetch_advance(r.pf, 11);
    assert_int_equal(st_prefetch_pump(r.pf), 0);
    assert_int_equal(r.f.n_order, 2);
    assert_int_equal(r.f.order[1], 1);
    rig_down(&r);
}

/* settle: the layer's real routing drops queued predictions it did not choose
 * (counted, never issued) and counts the unneeded ones already in flight, which
 * finish into the cache (or are cancelled with cancel_in_flight). */
static void settle_drops_unneeded(void **state) {
    (void)state;
    for (int cancel = 0; cancel < 2; cancel++) {
        rig r;
        st_prefetch_options po = {.queue_depth = 2, .cancel_in_flight = cancel};
        rig_up_opts(&r, 16, &po);
        uint64_t guess[] = {1, 2, 3, 4, 5}, real[] = {2, 3, 9};
        assert_int_equal(st_prefetch_predict(r.pf, 7, guess, 5, 0), 0);
        assert_int_equal(st_prefetch_request(r.pf, 50, 8, 0), 0); /* another step: untouched */
        assert_int_equal(st_prefetch_pump(r.pf), 0);               /* 1, 2 in flight; 3 4 5 50 queued */
        st_prefetch_advance(r.pf, 7);
        assert_int_equal(st_prefetch_settle(r.pf, 7, real, 3), 2); /* 4 and 5 */
        st_prefetch_stats st;
        st_prefetch_get_stats(r.pf, &st);
        assert_int_equal(st.superseded, 2);
        assert_int_equal(st.unneeded_in_flight, 1); /* 1 */
        assert_int_equal(st.cancelled_in_flight, cancel);
        assert_int_equal(st.queued, 2); /* 3 and 50 */
        while (r.f.n_started) {
            fake_finish(&r.f, r.f.started[0].key);
            assert_int_equal(st_prefetch_pump(r.pf), 0);
        }
        assert_int_equal(r.f.n_order, 4);
        assert_int_equal(r.f.order[2], 3);
        assert_int_equal(r.f.order[3], 50);
        for (int i = 0; i < r.f.n_order; i++) assert_true(r.f.order[i] != 4 && r.f.order[i] != 5);
        assert_int_equal(cached(&r, 1), !cancel); /* finished into the cache unless cancelled */
        st_prefetch_get_stats(r.pf, &st);
        assert_int_equal(st.issued, 4);
        assert_int_equal(st.wasted_bytes, cancel ? 0 : 0); /* nothing evicted yet */
        assert_int_equal(st.predictions_used, 0);
        need_ok(&r, 2);
        need_ok(&r, 3);
        st_prefetch_get_stats(r.pf, &st);
        assert_int_equal(st.hits, 2);
        assert_int_equal(st.predictions_used, 2);
        rig_down(&r);
    }
}

/* The cache sees predictions: a key requested for a coming step is passed over
 * by eviction until its step passes; the prefetched-but-unused key likewise. */
static void predicted_keys_survive_eviction(void **state) {
    (void)state;
    rig r;
    st_prefetch_options po = {.queue_depth = 4};
    rig_up_opts(&r, 4, &po);
    for (uint64_t k = 1; k <= 4; k++) need_ok(&r, k); /* LRU order: 1 oldest */
    assert_int_equal(st_prefetch_request(r.pf, 1, 3, 0), 0); /* resident: costs nothing, marked */
    need_ok(&r, 5);
    assert_true(cached(&r, 1));
    assert_false(cached(&r, 2)); /* the next in LRU order went instead */
    st_slot_cache_stats cs;
    st_slot_cache_get_stats(r.c, &cs);
    assert_int_equal(cs.wanted, 1);
    st_prefetch_advance(r.pf, 4); /* its step passed unused: an ordinary key again */
    st_slot_cache_get_stats(r.c, &cs);
    assert_int_equal(cs.wanted, 0);
    need_ok(&r, 6);
    assert_false(cached(&r, 1));
    /* every evictable slot wanted: the policy's choice among them (counted) */
    uint64_t ks[] = {3, 4, 5, 6};
    assert_int_equal(st_prefetch_predict(r.pf, 9, ks, 4, 0), 0);
    need_ok(&r, 7);
    st_slot_cache_get_stats(r.c, &cs);
    assert_int_equal(cs.wanted_evictions, 1);
    assert_int_equal(cs.wanted, 3);
    /* a use clears the mark */
    need_ok(&r, 4);
    need_ok(&r, 5);
    st_slot_cache_get_stats(r.c, &cs);
    assert_true(cs.wanted <= 1);
    rig_down(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(deadline_order_and_depth),
        cmocka_unit_test(waited_loads_are_promoted),
        cmocka_unit_test(newer_prediction_cancels),
        cmocka_unit_test(accounting),
        cmocka_unit_test(demand_first_order),
        cmocka_unit_test(horizon_holds_far_requests),
        cmocka_unit_test(settle_drops_unneeded),
        cmocka_unit_test(predicted_keys_survive_eviction),
        cmocka_unit_test(batch_runs_resident_first),
        cmocka_unit_test(full_cache_and_failures),
        cmocka_unit_test(threaded_transfer),
        cmocka_unit_test(uring_transfer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
