/* Thread pool: n threads (the caller is thread 0), each pinned to one core with
 * hwloc when asked. Work is split as (ith, nth) like ggml. Idle workers sleep on a
 * condition variable after a short spin, so an idle pool costs no CPU.
 * One st_pool_run at a time per pool (not reentrant).
 */
#ifndef ST_CPU_POOL_H
#define ST_CPU_POOL_H

#include <stdbool.h>
#include <stdint.h>

typedef struct st_pool st_pool;
typedef void (*st_pool_fn)(void *ctx, int ith, int nth);

/* n_threads <= 0: one per core of the machine (hwloc), capped by STRATA_THREADS.
 * pin: bind thread i to core i (a warning, not an error, where refused). */
int st_pool_new(int n_threads, bool pin, st_pool **out);
void st_pool_free(st_pool *pool);
int st_pool_size(const st_pool *pool);
/* Runs fn(ctx, ith, nth) for ith in [0, nth) and returns when all have finished.
 * pool may be NULL: fn(ctx, 0, 1) on the caller. */
void st_pool_run(st_pool *pool, st_pool_fn fn, void *ctx);

/* ---- teams: the threads of one NUMA node -----------------------------------------
 * A pool may be split into teams of consecutive threads (team i: threads
 * [first[i], first[i] + count[i]), team 0 starting at 0, together every
 * thread). st_pool_run_teams runs fn_team(ctx, i, team_pool) once per team, on
 * the team's first thread, all teams at once; team_pool is a pool of that
 * team's threads only (st_pool_run on it splits work over them alone). Without
 * teams (or with one) fn_team(ctx, 0, pool) runs on the caller: the one-node
 * path costs nothing more. */
typedef void (*st_pool_team_fn)(void *ctx, int team, st_pool *team_pool);
/* n_teams <= 1 removes the teams. ST_ERR_INVALID unless the teams tile [0, size). */
int st_pool_set_teams(st_pool *pool, int n_teams, const int *first, const int *count);
int st_pool_team_count(const st_pool *pool); /* 1 without teams */
int st_pool_team_size(const st_pool *pool, int team); /* its threads (0: no such team) */
void st_pool_run_teams(st_pool *pool, st_pool_team_fn fn, void *ctx);
/* Pins thread i to OS PU pu_os[i] (i < size; a warning where refused). */
void st_pool_pin_threads(st_pool *pool, const int *pu_os);
/* Tests: the calling thread's index in its root pool while it runs a job (the
 * caller of st_pool_run is 0), -1 outside any job; and an observer called with
 * (team, thread index) each time a thread runs a job of a team pool. */
int st_pool_thread_index(void);
void st_pool_set_observer(st_pool *pool, void (*fn)(void *ctx, int team, int thread), void *ctx);

/* Contiguous share [*lo, *hi) of n items for thread ith of nth, rounded to `align`. */
static inline void st_split(int64_t n, int ith, int nth, int64_t align, int64_t *lo, int64_t *hi) {
    int64_t blocks = (n + align - 1) / align;
    int64_t b0 = blocks * ith / nth, b1 = blocks * (ith + 1) / nth;
    *lo = b0 * align < n ? b0 * align : n;
    *hi = b1 * align < n ? b1 * align : n;
}

/* Number of cores hwloc sees (physical cores; PUs if cores are unknown). */
int st_cpu_core_count(void);

#endif
