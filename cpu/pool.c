/* Thread pool (see pool.h). Spin briefly, then sleep: decode issues thousands of
 * small parallel ops per token, so waking through a futex each time would cost
 * more than the ops; an idle pool must still not burn a core. */
#include "pool.h"

#include <hwloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"

#define SPIN_ITERS 20000 /* ~50-100 us of pause before sleeping */

struct st_pool {
    int nth;
    /* teams (st_pool_run_teams): a team is an st_pool of no threads of its own whose
     * members are the parent's workers, borrowed for one st_pool_run_teams */
    st_pool *parent;         /* team: the root pool; NULL for a root */
    int team, base;          /* team: its index and its first thread in the root */
    unsigned gen0;           /* team: gen when the current st_pool_run_teams started */
    int n_teams;
    st_pool *teams;          /* (n_teams), NULL: no teams */
    int *team_of;            /* (nth) */
    st_pool_team_fn team_fn;
    void *team_ctx;
    void (*observer)(void *ctx, int team, int thread);
    void *observer_ctx;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    _Atomic unsigned gen;
    _Atomic int pending;
    _Atomic bool stop;
    st_pool_fn fn;
    void *ctx;
    hwloc_topology_t topo;
    bool pin;
};

typedef struct { st_pool *pool; int ith; } worker_arg;

static _Thread_local int tls_thread = -1; /* index in the root pool while running a job */

/* Waits (spin, then sleep) until p->gen moves past `seen` or p->stop; returns gen. */
static unsigned wait_gen(st_pool *p, unsigned seen) {
    unsigned g;
    int spins = 0;
    while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen && spins < SPIN_ITERS &&
           !atomic_load(&p->stop)) {
        __builtin_ia32_pause();
        spins++;
    }
    if (g == seen) {
        pthread_mutex_lock(&p->mu);
        while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop)) pthread_cond_wait(&p->wake, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
    return g;
}

static void done_one(st_pool *p) {
    if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
}

static void pin_self(st_pool *p, int ith) {
    if (!p->pin || !p->topo) return;
    int ncores = hwloc_get_nbobjs_by_type(p->topo, HWLOC_OBJ_CORE);
    hwloc_obj_type_t t = ncores > 0 ? HWLOC_OBJ_CORE : HWLOC_OBJ_PU;
    int n = hwloc_get_nbobjs_by_type(p->topo, t);
    if (n <= 0) return;
    hwloc_obj_t obj = hwloc_get_obj_by_type(p->topo, t, (unsigned)(ith % n));
    if (!obj || !obj->cpuset) return;
    hwloc_cpuset_t set = hwloc_bitmap_dup(obj->cpuset);
    hwloc_bitmap_singlify(set);
    if (hwloc_set_cpubind(p->topo, set, HWLOC_CPUBIND_THREAD) != 0 && ith == 0)
        ST_WARN("could not pin threads to cores; running unpinned");
    hwloc_bitmap_free(set);
}

static void *worker_main(void *arg) {
    worker_arg a = *(worker_arg *)arg;
    free(arg);
    st_pool *p = a.pool;
    pin_self(p, a.ith);
    tls_thread = a.ith;
    unsigned seen = 0;
    for (;;) {
        unsigned g = wait_gen(p, seen);
        if (atomic_load(&p->stop)) return NULL;
        seen = g;
        p->fn(p->ctx, a.ith, p->nth);
        done_one(p);
    }
}

int st_cpu_core_count(void) {
    hwloc_topology_t t;
    if (hwloc_topology_init(&t) != 0) return 1;
    int n = 1;
    if (hwloc_topology_load(t) == 0) {
        n = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE);
        if (n <= 0) n = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PU);
    }
    hwloc_topology_destroy(t);
    return n > 0 ? n : 1;
}

int st_pool_new(int n_threads, bool pin, st_pool **out) {
    *out = NULL;
    st_pool *p = calloc(1, sizeof *p);
    if (!p) return st_error(ST_ERR_NOMEM, "thread pool: out of memory");
    if (hwloc_topology_init(&p->topo) != 0 || hwloc_topology_load(p->topo) != 0) {
        ST_WARN("hwloc could not read the topology; threads are not pinned");
        p->topo = NULL;
    }
    if (n_threads <= 0) {
        n_threads = p->topo ? hwloc_get_nbobjs_by_type(p->topo, HWLOC_OBJ_CORE) : 1;
        if (n_threads <= 0) n_threads = 1;
        const char *env = getenv("STRATA_THREADS");
        if (env && atoi(env) > 0) n_threads = atoi(env);
    }
    p->nth = n_threads;
    p->pin = pin;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->threads) { st_pool_free(p); return st_error(ST_ERR_NOMEM, "thread pool: out of memory"); }
    pin_self(p, 0);
    for (int i = 1; i < n_threads; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (!a) { p->nth = i; st_pool_free(p); return st_error(ST_ERR_NOMEM, "thread pool: out of memory"); }
        a->pool = p;
        a->ith = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, a) != 0) {
            free(a);
            p->nth = i;
            st_pool_free(p);
            return st_error(ST_ERR_INTERNAL, "thread pool: cannot start thread %d", i);
        }
    }
    *out = p;
    return 0;
}

static void teams_free(st_pool *p) {
    for (int t = 0; p->teams && t < p->n_teams; t++) {
        pthread_mutex_destroy(&p->teams[t].mu);
        pthread_cond_destroy(&p->teams[t].wake);
        pthread_cond_destroy(&p->teams[t].done);
    }
    free(p->teams);
    free(p->team_of);
    p->teams = NULL;
    p->team_of = NULL;
    p->n_teams = 0;
}

void st_pool_free(st_pool *p) {
    if (!p) return;
    teams_free(p);
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->nth; i++)
        if (p->threads && p->threads[i]) pthread_join(p->threads[i], NULL);
    free(p->threads);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    if (p->topo) hwloc_topology_destroy(p->topo);
    free(p);
}

int st_pool_size(const st_pool *p) { return p ? p->nth : 1; }

void st_pool_run(st_pool *p, st_pool_fn fn, void *ctx) {
    if (!p) { fn(ctx, 0, 1); return; }
    int saved = tls_thread;
    if (p->parent) {
        if (p->parent->observer) p->parent->observer(p->parent->observer_ctx, p->team, tls_thread);
    } else {
        tls_thread = 0;
    }
    if (p->nth == 1) { fn(ctx, 0, 1); tls_thread = saved; return; }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->pending, p->nth - 1);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, p->nth);
    int spins = 0;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0 && spins < SPIN_ITERS) {
        __builtin_ia32_pause();
        spins++;
    }
    if (atomic_load(&p->pending) > 0) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->pending) > 0) pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
    tls_thread = saved;
}

/* ---- teams ------------------------------------------------------------------------------ */

int st_pool_thread_index(void) { return tls_thread; }

void st_pool_set_observer(st_pool *p, void (*fn)(void *ctx, int team, int thread), void *ctx) {
    p->observer = fn;
    p->observer_ctx = ctx;
}

int st_pool_team_count(const st_pool *p) { return p && p->n_teams > 1 ? p->n_teams : 1; }
int st_pool_team_size(const st_pool *p, int team) {
    if (!p || p->n_teams <= 1) return team == 0 ? st_pool_size(p) : 0;
    return team >= 0 && team < p->n_teams ? p->teams[team].nth : 0;
}

int st_pool_set_teams(st_pool *p, int n_teams, const int *first, const int *count) {
    if (p->parent) return st_error(ST_ERR_INVALID, "thread pool: a team cannot have teams");
    if (n_teams <= 1) { teams_free(p); return 0; }
    for (int t = 0, at = 0; t < n_teams; at += count[t], t++)
        if (first[t] != at || count[t] < 1 || (t == n_teams - 1 && at + count[t] != p->nth))
            return st_error(ST_ERR_INVALID, "thread pool: team %d (threads %d..%d) does not continue the tiling of %d threads",
                            t, first[t], first[t] + count[t] - 1, p->nth);
    st_pool *teams = calloc((size_t)n_teams, sizeof *teams);
    int *team_of = calloc((size_t)p->nth, sizeof *team_of);
    if (!teams || !team_of) { free(teams); free(team_of); return st_error(ST_ERR_NOMEM, "thread pool: out of memory"); }
    teams_free(p);
    for (int t = 0; t < n_teams; t++) {
        st_pool *tp = &teams[t];
        tp->parent = p;
        tp->team = t;
        tp->base = first[t];
        tp->nth = count[t];
        pthread_mutex_init(&tp->mu, NULL);
        pthread_cond_init(&tp->wake, NULL);
        pthread_cond_init(&tp->done, NULL);
        for (int i = 0; i < count[t]; i++) team_of[first[t] + i] = t;
    }
    p->teams = teams;
    p->team_of = team_of;
    p->n_teams = n_teams;
    return 0;
}

/* A member of a team (not its first thread): serves the team's jobs until the
 * team's function has returned. */
static void team_member(st_pool *tp, int local) {
    unsigned seen = tp->gen0;
    for (;;) {
        unsigned g = wait_gen(tp, seen);
        if (g == seen) return; /* stop: the leader only sets it once its last job has finished */
        seen = g;
        if (tp->parent->observer) tp->parent->observer(tp->parent->observer_ctx, tp->team, tls_thread);
        tp->fn(tp->ctx, local, tp->nth);
        done_one(tp);
    }
}

static void team_entry(void *ctx, int ith, int nth) {
    (void)nth;
    st_pool *p = ctx;
    st_pool *tp = &p->teams[p->team_of[ith]];
    int local = ith - tp->base;
    if (local) { team_member(tp, local); return; }
    p->team_fn(p->team_ctx, tp->team, tp);
    pthread_mutex_lock(&tp->mu);
    atomic_store(&tp->stop, true);
    pthread_cond_broadcast(&tp->wake);
    pthread_mutex_unlock(&tp->mu);
}

void st_pool_run_teams(st_pool *p, st_pool_team_fn fn, void *ctx) {
    if (!p || p->n_teams <= 1) { fn(ctx, 0, p); return; }
    p->team_fn = fn;
    p->team_ctx = ctx;
    for (int t = 0; t < p->n_teams; t++) {
        atomic_store(&p->teams[t].stop, false);
        p->teams[t].gen0 = atomic_load(&p->teams[t].gen);
    }
    st_pool_run(p, team_entry, p);
}

typedef struct { st_pool *p; const int *pu; } pin_job;

static void pin_to(void *ctx, int ith, int nth) {
    (void)nth;
    pin_job *j = ctx;
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (!set) return;
    hwloc_bitmap_only(set, (unsigned)j->pu[ith]);
    if (hwloc_set_cpubind(j->p->topo, set, HWLOC_CPUBIND_THREAD) != 0)
        ST_WARN("could not pin thread %d to PU %d; it runs unpinned", ith, j->pu[ith]);
    hwloc_bitmap_free(set);
}

void st_pool_pin_threads(st_pool *p, const int *pu_os) {
    if (!p || !p->topo || p->parent) return;
    pin_job j = {p, pu_os};
    st_pool_run(p, pin_to, &j);
}
