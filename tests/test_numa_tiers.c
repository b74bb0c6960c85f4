/* NUMA tiers, wired (cpu/pool.c teams, cpu/numa.c owners, cpu/mem.c placement
 * records, offload/expert_nodes.c, the per-node dispatch of engine/moe.c), on
 * a synthetic two-node hwloc topology (STRATA_TOPOLOGY) so the multi-node path
 * runs on a one-node machine: pool teams run at once on their own threads
 * only; owners are contiguous, thread-proportional and agree with the split;
 * a node that does not exist here is recorded, not mbind'ed; with the tiny
 * fixture streaming through a few slots, every expert is computed from a slot
 * recorded on its owner node by that node's threads, each layer's experts use
 * both nodes, each node's budget holds, and the logits are bit-identical to
 * the one-node run and to the resident run; without a budget, every expert is
 * loaded once at load onto its node (copied from the page cache when warm,
 * read with O_DIRECT what is not) and never read again. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "base/base.h"
#include "cpu/mem.h"
#include "cpu/numa.h"
#include "cpu/pool.h"
#include "engine/model.h"
#include "engine/model_stream.h"
#include "engine/synth.h"
#include "offload/expert_nodes.h"
#include "offload/page_cache_copy.h"
#include "util.h"

#define TWO_NODES "pack:2 [numa(memory=8GB)] core:1 pu:1"
#define TWO_NODES_2C "pack:2 [numa(memory=8GB)] core:2 pu:1"

static char tmp[128], tiny[200];

static int setup(void **state) {
    (void)state;
    if (tu_tmpdir(tmp, sizeof tmp, "/var/tmp/strata-numa-XXXXXX")) return -1;
    snprintf(tiny, sizeof tiny, "%s/tiny", tmp);
    return tu_synth(st_synth_find("tiny"), tiny, 11, NULL) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    return tu_rmtree(tmp);
}

/* ---- pool teams -------------------------------------------------------------------------- */

typedef struct {
    _Atomic int seen[2][4];  /* [team][root thread]: jobs run */
    _Atomic int local[2][4]; /* [team][ith]: jobs run as team thread ith */
    _Atomic int bad_nth, leaders[2], observed[2][4];
    _Atomic int inside[2], overlap; /* teams really run at once: both inside together at least once */
} team_rec;

static void team_job(void *ctx, int ith, int nth) {
    team_rec *r = ((void **)ctx)[0];
    int team = (int)(intptr_t)((void **)ctx)[1];
    if (nth != 2) atomic_fetch_add(&r->bad_nth, 1);
    atomic_fetch_add(&r->seen[team][st_pool_thread_index()], 1);
    atomic_fetch_add(&r->local[team][ith], 1);
}

static void team_fn(void *ctx, int team, st_pool *tp) {
    team_rec *r = ctx;
    atomic_fetch_add(&r->leaders[team], 1);
    atomic_store(&r->inside[team], 1);
    void *args[2] = {r, (void *)(intptr_t)team};
    for (int k = 0; k < 20; k++) st_pool_run(tp, team_job, args);
    /* wait (up to 2 s) for the other team to be inside at the same time: never if teams ran one after the other */
    for (uint64_t t0 = st_time_ns(); !atomic_load(&r->inside[1 - team]) && !atomic_load(&r->overlap) &&
                                     st_time_ns() - t0 < 2000000000ull;)
        __builtin_ia32_pause();
    if (atomic_load(&r->inside[1 - team])) atomic_store(&r->overlap, 1);
    atomic_store(&r->inside[team], 0);
}

static void observe(void *ctx, int team, int thread) {
    team_rec *r = ctx;
    atomic_fetch_add(&r->observed[team][thread], 1);
}

static void count_job(void *ctx, int ith, int nth) {
    (void)nth;
    atomic_fetch_add(&((_Atomic int *)ctx)[ith], 1);
}

static void pool_teams_run_on_their_threads(void **state) {
    (void)state;
    st_pool *p;
    assert_int_equal(st_pool_new(4, false, &p), 0);
    int bad_first[2] = {0, 1}, bad_count[2] = {2, 2};
    assert_int_equal(st_pool_set_teams(p, 2, bad_first, bad_count), ST_ERR_INVALID); /* overlap */
    int short_count[2] = {2, 1}, first[2] = {0, 2}, count[2] = {2, 2};
    assert_int_equal(st_pool_set_teams(p, 2, first, short_count), ST_ERR_INVALID); /* not every thread */
    assert_int_equal(st_pool_set_teams(p, 2, first, count), 0);
    assert_int_equal(st_pool_team_count(p), 2);
    for (int rep = 0; rep < 30; rep++) {
        team_rec *r = calloc(1, sizeof *r);
        st_pool_set_observer(p, observe, r);
        st_pool_run_teams(p, team_fn, r);
        assert_int_equal(r->bad_nth, 0);
        for (int t = 0; t < 2; t++) {
            assert_int_equal(r->leaders[t], 1);
            for (int i = 0; i < 2; i++) assert_int_equal(r->local[t][i], 20); /* every job on both team threads */
            for (int th = 0; th < 4; th++) {
                bool mine = th >= first[t] && th < first[t] + count[t];
                assert_int_equal(r->seen[t][th], mine ? 20 : 0); /* and only on them */
                assert_int_equal(r->observed[t][th], mine ? 20 : 0);
            }
        }
        if (rep == 0) assert_int_equal(r->overlap, 1); /* the two teams were inside at the same time */
        st_pool_set_observer(p, NULL, NULL);
        free(r);
    }
    /* teams removed: a plain run uses all four threads again */
    assert_int_equal(st_pool_set_teams(p, 1, NULL, NULL), 0);
    assert_int_equal(st_pool_team_count(p), 1);
    _Atomic int hits[4] = {0};
    st_pool_run(p, count_job, hits);
    for (int i = 0; i < 4; i++) assert_int_equal(hits[i], 1);
    assert_int_equal(st_pool_thread_index(), -1); /* outside a job */
    st_pool_free(p);
}

/* ---- owners and virtual nodes -------------------------------------------------------------- */

static void owners_are_balanced_and_stable(void **state) {
    (void)state;
    st_numa *m;
    assert_int_equal(st_numa_new(TWO_NODES_2C, &m), 0);
    assert_true(st_numa_is_synthetic(m));
    for (int threads = 1; threads <= 5; threads++) {
        st_numa_plan *p;
        assert_int_equal(st_numa_plan_new(m, threads, &p), 0);
        for (int n = 1; n <= 40; n++) {
            int owner[40], per[2] = {0, 0};
            assert_int_equal(st_numa_plan_split(p, n, NULL, owner, NULL), 0);
            for (int i = 0; i < n; i++) {
                int o = st_numa_plan_owner(p, n, i);
                assert_int_equal(o, owner[i]); /* the same answer as the split */
                assert_true(i == 0 || o >= st_numa_plan_owner(p, n, i - 1)); /* contiguous */
                per[o]++;
            }
            int f0, c0, f1, c1;
            st_numa_plan_node_threads(p, 0, &f0, &c0);
            st_numa_plan_node_threads(p, 1, &f1, &c1);
            /* in proportion to threads, within one item */
            double want0 = (double)n * c0 / threads;
            assert_true(per[0] >= want0 - 1 && per[0] <= want0 + 1);
            if (c1 && n >= 2 * threads) assert_true(per[1] > 0);
            if (!c1) assert_int_equal(per[1], 0);
        }
        st_numa_plan_free(p);
    }
    /* --numa N: every thread on node N */
    st_numa_plan *p;
    assert_int_equal(st_numa_plan_new_on(m, 3, 1, &p), 0);
    int f, c;
    st_numa_plan_node_threads(p, 1, &f, &c);
    assert_int_equal(f, 0);
    assert_int_equal(c, 3);
    for (int t = 0; t < 3; t++) assert_int_equal(st_numa_plan_thread(p, t).node, 1);
    st_numa_plan_free(p);
    assert_int_equal(st_numa_plan_new_on(m, 3, 2, &p), ST_ERR_INVALID);
    st_numa_free(m);
}

static void virtual_node_recorded_not_bound(void **state) {
    (void)state;
    st_budget *b;
    assert_int_equal(st_budget_new("numa test", 64 << 20, &b), 0);
    int real = st_mem_numa_nodes(), ghost = real > 0 ? real : 1; /* a node this machine does not have */
    void *p;
    assert_int_equal(st_mem_alloc(b, 3 << 20, ST_MEM_NODE, ghost, &p), ST_ERR_INVALID);
    st_mem_set_virtual_nodes(ghost + 1);
    assert_int_equal(st_mem_alloc(b, 3 << 20, ST_MEM_NODE, ghost, &p), 0);
    st_mem_placement pl;
    assert_int_equal(st_mem_placement_of((char *)p + (2 << 20), &pl), 0);
    assert_int_equal(pl.node, ghost);
    assert_false(pl.bound);
    ((char *)p)[0] = 1; /* usable memory */
    void *q;
    assert_int_equal(st_mem_alloc(b, 8192, ST_MEM_NODE, 0, &q), 0);
    assert_int_equal(st_mem_placement_of(q, &pl), 0);
    assert_int_equal(pl.node, 0);
    assert_int_equal(pl.bound, real > 0); /* a real node is mbind'ed where NUMA works */
    assert_int_equal(st_mem_placement_of((char *)q + 8192, &pl) == 0 && pl.node == 0, 0); /* past its end */
    st_mem_free(b, p, 3 << 20);
    st_mem_free(b, q, 8192);
    assert_int_equal(st_mem_placement_of(p, &pl), ST_ERR_NOT_FOUND);
    st_mem_set_virtual_nodes(0);
    assert_int_equal(st_mem_alloc(b, 4096, ST_MEM_NODE, ghost, &p), ST_ERR_INVALID);
    assert_int_equal(st_budget_used(b), 0);
    st_budget_free(b);
}

/* ---- the model on two synthetic nodes ------------------------------------------------------ */

enum { MAX_L = 8, MAX_E = 16 };
static struct {
    pthread_mutex_t mu;
    const st_model *m;
    int computed[MAX_L][MAX_E]; /* times computed */
    int node_of[MAX_L][MAX_E];  /* node that computed it (-1 none) */
    int wrong_owner, wrong_slot, wrong_thread, calls;
    int team_threads[2][8];     /* observer: jobs per (team, thread) */
    int lo[2], hi[2];           /* node i's threads [lo, hi) */
    const st_expert_nodes *en;
} rec = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void node_hook(int layer, int expert, int node, const st_expert_w *w) {
    pthread_mutex_lock(&rec.mu);
    rec.calls++;
    if (layer < MAX_L && expert < MAX_E) {
        rec.computed[layer][expert]++;
        rec.node_of[layer][expert] = node;
    }
    if (st_expert_nodes_owner(rec.en, layer, expert) != node) rec.wrong_owner++;
    st_mem_placement pl;
    if (st_mem_placement_of(w->w1.data, &pl) || pl.node != st_expert_nodes_os_node(rec.en, node) ||
        st_mem_placement_of(w->w2.data, &pl) || pl.node != st_expert_nodes_os_node(rec.en, node))
        rec.wrong_slot++;
    int th = st_pool_thread_index();
    if (node < 0 || node > 1 || th < rec.lo[node] || th >= rec.hi[node]) rec.wrong_thread++;
    pthread_mutex_unlock(&rec.mu);
}

static void team_observer(void *ctx, int team, int thread) {
    (void)ctx;
    pthread_mutex_lock(&rec.mu);
    if (team >= 0 && team < 2 && thread >= 0 && thread < 8) rec.team_threads[team][thread]++;
    pthread_mutex_unlock(&rec.mu);
}

static st_model *load(const st_model_opts *extra, int threads) { return tu_load(tiny, extra, threads); }

/* Prefill of n (<= 64) fixed ids, then `decode` tokens: every logit (tu_prefill_decode). */
static float *run(st_model *m, int n, int decode) {
    int32_t ids[64];
    tu_ids(m, ids, n, 0);
    return tu_prefill_decode(m, ids, n, decode);
}

/* One synthetic two-node run of the tiny model: placement checks, then its logits. */
static float *two_node_run(const char *topology, int threads, const st_model_opts *o, int n, int decode) {
    setenv("STRATA_TOPOLOGY", topology, 1);
    st_model *m = load(o, threads);
    unsetenv("STRATA_TOPOLOGY");
    const st_expert_nodes *en = st_model_expert_nodes(m);
    assert_non_null(en);
    assert_int_equal(st_expert_nodes_count(en), 2);
    assert_int_equal(st_pool_team_count(m->pool), 2);
    int E = m->layers[0].moe.n_experts, L = m->n_layers;
    assert_true(E <= MAX_E && L <= MAX_L);
    memset(rec.computed, 0, sizeof rec.computed);
    memset(rec.team_threads, 0, sizeof rec.team_threads);
    rec.wrong_owner = rec.wrong_slot = rec.wrong_thread = rec.calls = 0;
    rec.en = en;
    for (int node = 0; node < 2; node++) {
        assert_int_equal(st_expert_nodes_os_node(en, node), node);
        rec.lo[node] = node * threads / 2;
        rec.hi[node] = (node + 1) * threads / 2;
        int per = 0; /* each layer's experts are split over both nodes, half each */
        for (int e = 0; e < E; e++) per += st_expert_nodes_owner(en, 0, e) == node;
        assert_int_equal(per, E / 2);
    }
    st_pool_set_observer(m->pool, team_observer, NULL);
    st_moe_node_hook = node_hook;
    float *lg = run(m, n, decode);
    st_moe_node_hook = NULL;
    st_pool_set_observer(m->pool, NULL, NULL);
    assert_true(rec.calls > 0);
    assert_int_equal(rec.wrong_owner, 0);  /* computed by its owner node */
    assert_int_equal(rec.wrong_slot, 0);   /* from a slot recorded on that node */
    assert_int_equal(rec.wrong_thread, 0); /* on a thread of that node */
    for (int t = 0; t < 2; t++)
        for (int th = 0; th < 8; th++) {
            bool mine = th >= rec.lo[t] && th < rec.hi[t];
            if (!mine) assert_int_equal(rec.team_threads[t][th], 0); /* team jobs only on the node's threads
               (the tiny model's matrices are below the size that runs parallel: mostly the leader's own) */
        }
    for (int l = 0; l < L; l++) { /* both nodes worked in every layer */
        bool used[2] = {false, false};
        for (int e = 0; e < E; e++)
            if (rec.computed[l][e]) used[rec.node_of[l][e]] = true;
        if (!used[0] || !used[1]) fail_msg("layer %d: experts computed on node 0: %d, node 1: %d", l, used[0], used[1]);
    }
    /* per-node budgets: each node's slots within its share */
    st_stream_stats ss;
    assert_int_equal(st_model_offload_stats(m, &ss), 0);
    uint64_t limits = 0, node_stall_sum = 0, node_stall_max = 0;
    for (int node = 0; node < 2; node++) {
        st_budget *b = st_expert_nodes_budget(en, node);
        assert_true(st_budget_peak(b) <= st_budget_limit(b));
        assert_true(st_budget_used(b) > 0);
        if (o->expert_cache) limits += st_budget_limit(b);
        st_stream_stats ns;
        st_expert_stream_get_stats(st_expert_nodes_stream(en, node), &ns);
        assert_true(ns.n_slots >= 2);
        assert_true(ns.pf.needs > 0); /* each node's cache served experts */
        node_stall_sum += ns.pf.stall_ns;
        node_stall_max = ST_MAX(node_stall_max, ns.pf.stall_ns);
    }
    /* the nodes share the disk: together they keep one stream's reads in flight (defaults 32, 8) */
    assert_int_equal(ss.io_depth, 32);
    assert_int_equal(ss.prefetch_depth, 8);
    /* they wait at the same time: the run stalled at most the nodes' sum, at least the longest */
    assert_true(ss.pf.stall_ns <= node_stall_sum);
    assert_true(ss.pf.stall_ns >= node_stall_max);
    if (o->expert_cache) assert_int_equal(limits, o->expert_cache);
    if (o->expert_slots) assert_int_equal(ss.n_slots, ST_MAX(o->expert_slots, 4));
    st_model_free(m);
    return lg;
}

static void two_nodes_bit_identical_streaming(void **state) {
    (void)state;
    const int n = 16, decode = 4;
    st_model *m = load(NULL, 2);
    size_t count = (size_t)(n + decode) * (size_t)m->vocab;
    float *resident = run(m, n, decode);
    st_model_free(m);
    st_model_opts v[] = {{.expert_slots = 4}, {.expert_slots = 6, .no_prefetch = true}, {.expert_cache = 160 << 10}};
    for (int i = 0; i < (int)ST_ARRAY_LEN(v); i++) {
        m = load(&v[i], 2); /* one node: this machine */
        assert_int_equal(st_expert_nodes_count(st_model_expert_nodes(m)), 1);
        float *one = run(m, n, decode);
        st_model_free(m);
        char what[128];
        snprintf(what, sizeof what, "variant %d, one node vs resident", i);
        tu_assert_same_bits(resident, one, count, what);
        float *two = two_node_run(TWO_NODES, 2, &v[i], n, decode);
        snprintf(what, sizeof what, "variant %d, two synthetic nodes (1 thread each) vs one node", i);
        tu_assert_same_bits(one, two, count, what);
        free(two);
        two = two_node_run(TWO_NODES_2C, 4, &v[i], n, decode);
        snprintf(what, sizeof what, "variant %d, two synthetic nodes (2 threads each) vs one node", i);
        tu_assert_same_bits(one, two, count, what);
        free(two);
        free(one);
    }
    free(resident);
}

/* The checkpoint's files (tiny: a handful) and what each of them does: read
 * through (warm), drop from the page cache (cold: fdatasync + DONTNEED, which
 * not every file system honours), count its resident bytes, or its bytes. */
enum { FILES_WARM, FILES_COLD, FILES_RESIDENT, FILES_BYTES };
static uint64_t checkpoint_files(int what) {
    DIR *d = opendir(tiny);
    assert_non_null(d);
    uint64_t total = 0;
    for (struct dirent *de; (de = readdir(d));) {
        char path[512];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", tiny, de->d_name);
        if (stat(path, &st) || !S_ISREG(st.st_mode) || st.st_size == 0) continue;
        if (what == FILES_BYTES) {
            total += (uint64_t)st.st_size;
            continue;
        }
        int fd = open(path, O_RDONLY);
        assert_true(fd >= 0);
        if (what == FILES_WARM) {
            static char buf[1 << 16];
            while (read(fd, buf, sizeof buf) > 0) {}
        } else if (what == FILES_COLD) {
            fdatasync(fd);
            posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        } else {
            int64_t r = st_page_cache_resident(fd, 0, (uint64_t)st.st_size);
            assert_true(r >= 0);
            total += (uint64_t)r;
        }
        close(fd);
    }
    closedir(d);
    return total;
}

/* No budget on two nodes: every expert is loaded at load into the memory of the
 * node that computes it (not left in the page cache's mapping), computed there,
 * never read again; logits equal the one-node resident run's. The load reads
 * each expert with O_DIRECT (STRATA_PRELOAD_COLD=1), or, warm (the files read
 * just before), copies every byte from the page cache and reads nothing; cold
 * (dropped from the cache where the file system lets it), reads what is not
 * cached; the same bytes every way. */
static void two_nodes_resident_experts_on_their_nodes(void **state) {
    (void)state;
    const int n = 12, decode = 4;
    st_model *m = load(NULL, 2);
    assert_null(st_model_expert_nodes(m)); /* one node: the mapping, no stream */
    const size_t count = (size_t)(n + decode) * (size_t)m->vocab;
    const int all = m->n_layers * m->layers[0].moe.n_experts;
    float *resident = run(m, n, decode);
    st_model_free(m);
    /* all read with O_DIRECT: the reference byte count */
    setenv("STRATA_TOPOLOGY", TWO_NODES, 1);
    setenv("STRATA_PRELOAD_COLD", "1", 1);
    m = load(NULL, 2);
    unsetenv("STRATA_PRELOAD_COLD");
    unsetenv("STRATA_TOPOLOGY");
    assert_int_equal(st_expert_nodes_count(st_model_expert_nodes(m)), 2);
    st_stream_stats at_load, after;
    assert_int_equal(st_model_offload_stats(m, &at_load), 0);
    assert_int_equal(at_load.reads, (uint64_t)all); /* each expert read once, at load */
    assert_int_equal(at_load.bytes_copied, 0);
    assert_int_equal(at_load.direct_files, at_load.files); /* /var/tmp: O_DIRECT works, or the count means nothing */
    const uint64_t expert_bytes = at_load.bytes_read;
    assert_true(expert_bytes >= (uint64_t)all * at_load.expert_bytes / 2);
    free(run(m, n, decode));
    assert_int_equal(st_model_offload_stats(m, &after), 0);
    assert_int_equal(after.reads, (uint64_t)all);                 /* nothing read after the load */
    assert_int_equal(after.pf.misses, at_load.pf.misses);         /* every need a hit */
    assert_true(after.pf.hits > at_load.pf.hits);
    st_model_free(m);
    /* warm: every page cached (checked with mincore), nothing read with O_DIRECT */
    checkpoint_files(FILES_WARM);
    const bool all_cached = checkpoint_files(FILES_RESIDENT) == checkpoint_files(FILES_BYTES);
    setenv("STRATA_TOPOLOGY", TWO_NODES, 1);
    m = load(NULL, 2);
    unsetenv("STRATA_TOPOLOGY");
    assert_int_equal(st_model_offload_stats(m, &at_load), 0);
    assert_int_equal(at_load.bytes_copied + at_load.bytes_read, expert_bytes);
    if (all_cached) {
        assert_int_equal(at_load.reads, 0);
        assert_int_equal(at_load.bytes_read, 0);
        assert_int_equal(at_load.bytes_copied, expert_bytes);
    } else {
        print_message("warm: the page cache did not keep the whole checkpoint (memory pressure?); sum checked only\n");
    }
    float *two = run(m, n, decode);
    assert_int_equal(st_model_offload_stats(m, &after), 0);
    assert_int_equal(after.reads, at_load.reads);                 /* nothing read after the load */
    assert_int_equal(after.pf.misses, at_load.pf.misses);
    st_model_free(m);
    tu_assert_same_bits(resident, two, count, "two nodes, experts copied from the page cache vs one-node resident");
    free(two);
    /* cold: what the cache lost is read with O_DIRECT */
    checkpoint_files(FILES_COLD);
    const bool dropped = checkpoint_files(FILES_RESIDENT) < checkpoint_files(FILES_BYTES);
    two = two_node_run(TWO_NODES, 2, &(st_model_opts){0}, n, decode);
    tu_assert_same_bits(resident, two, count, "two nodes, experts preloaded cold vs one-node resident");
    free(two);
    checkpoint_files(FILES_COLD);
    setenv("STRATA_TOPOLOGY", TWO_NODES, 1);
    m = load(NULL, 2);
    unsetenv("STRATA_TOPOLOGY");
    assert_int_equal(st_model_offload_stats(m, &at_load), 0);
    /* the loader's own reads of the checkpoint may bring pages back before the preload:
     * the cold path is proved in stream_warm_copy_cached_and_cold, here the sum */
    assert_int_equal(at_load.bytes_copied + at_load.bytes_read, expert_bytes);
    if (!dropped) print_message("cold: DONTNEED dropped nothing on this file system\n");
    st_model_free(m);
    free(resident);
}

/* ---- warm copy, one stream ------------------------------------------------------------------ */

enum { WC_EXPERTS = 8, WC_PIECE = 150001 }; /* unaligned pieces: spans merge, the last one ends unaligned */

static int wc_locate(void *ctx, int layer, int expert, st_stream_piece *pieces) {
    (void)ctx;
    (void)layer;
    for (int p = 0; p < 3; p++)
        pieces[p] = (st_stream_piece){.file = 0, .offset = (uint64_t)(expert * 3 + p) * WC_PIECE, .bytes = WC_PIECE};
    return 0;
}

/* Loads every expert of the file (warm copy on or off), checks each piece's bytes against the file's. */
static void wc_load_all(const char *path, const uint8_t *want, bool warm, st_stream_stats *out) {
    const char *paths[1] = {path};
    st_stream_desc d = {.n_layers = 1, .n_experts = WC_EXPERTS, .n_pieces = 3, .paths = paths, .n_files = 1, .locate = wc_locate};
    st_stream_opts o = {.n_slots = WC_EXPERTS};
    st_expert_stream *s;
    if (st_expert_stream_new(&d, &o, &s)) fail_msg("%s", st_last_error());
    if (warm) assert_int_equal(st_expert_stream_set_warm_copy(s, paths), 0);
    int all[WC_EXPERTS], e, seen = 0;
    for (int i = 0; i < WC_EXPERTS; i++) all[i] = i;
    const void *pieces[ST_STREAM_MAX_PIECES];
    assert_int_equal(st_expert_stream_begin(s, 0, all, WC_EXPERTS, NULL), 0);
    int r;
    while ((r = st_expert_stream_next(s, &e, pieces)) == 1) {
        for (int p = 0; p < 3; p++)
            if (memcmp(pieces[p], want + (size_t)(e * 3 + p) * WC_PIECE, WC_PIECE)) fail_msg("expert %d piece %d differs", e, p);
        seen++;
    }
    if (r) fail_msg("%s", st_last_error());
    st_expert_stream_end(s);
    assert_int_equal(seen, WC_EXPERTS);
    st_expert_stream_get_stats(s, out);
    assert_int_equal(out->direct_files, 1); /* /var/tmp: else the O_DIRECT counts mean nothing */
    st_expert_stream_free(s);
}

/* The warm copy takes the cached pages from the page cache and reads only the
 * others with O_DIRECT (mincore proves which are cached); cold it reads all;
 * the bytes are the file's every way. */
static void stream_warm_copy_cached_and_cold(void **state) {
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "%s/experts.bin", tmp);
    const size_t size = (size_t)WC_EXPERTS * 3 * WC_PIECE;
    uint8_t *want = malloc(size);
    for (size_t i = 0; i < size; i++) want[i] = (uint8_t)(i * 2654435761u >> 13);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(want, 1, size, f), size);
    fclose(f);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    /* all with O_DIRECT: the reference byte count */
    st_stream_stats cold, warm, half;
    wc_load_all(path, want, false, &cold);
    assert_int_equal(cold.bytes_copied, 0);
    const uint64_t total = cold.bytes_read;
    assert_true(total >= size);
    /* warm: the whole file cached */
    char buf[1 << 16];
    for (off_t o = 0; pread(fd, buf, sizeof buf, o) > 0; o += (off_t)sizeof buf) {}
    if (st_page_cache_resident(fd, 0, size) == (int64_t)size) {
        wc_load_all(path, want, true, &warm);
        assert_int_equal(warm.reads, 0);
        assert_int_equal(warm.bytes_read, 0);
        assert_int_equal(warm.bytes_copied, total);
    }
    /* cold: dropped (where the file system lets it), then the first quarter cached again */
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    if (st_page_cache_resident(fd, 0, size) == 0) {
        wc_load_all(path, want, true, &warm);
        assert_int_equal(warm.bytes_copied, 0);
        assert_int_equal(warm.bytes_read, total);
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM); /* no readahead: only what is read gets cached */
        for (off_t o = 0; o < (off_t)size / 4; o += (off_t)sizeof buf) assert_true(pread(fd, buf, sizeof buf, o) > 0);
        const int64_t cached = st_page_cache_resident(fd, 0, size);
        assert_true(cached > 0 && cached < (int64_t)size / 2);
        wc_load_all(path, want, true, &half);
        assert_true(half.bytes_copied > 0);
        assert_true(half.bytes_read > 0);
        assert_int_equal(half.bytes_copied + half.bytes_read, total);
        /* only pages that were cached (a page two experts share is in both their spans) */
        assert_true(half.bytes_copied <= (uint64_t)cached + 2 * WC_EXPERTS * 4096);
    } else {
        print_message("DONTNEED dropped nothing on this file system: cold paths not checked\n");
    }
    close(fd);
    unlink(path);
    free(want);
}

static void numa_modes(void **state) {
    (void)state;
    /* --numa 1 on the synthetic machine: one cache on node 1, no teams */
    setenv("STRATA_TOPOLOGY", TWO_NODES, 1);
    st_model_opts o = {.expert_slots = 3, .numa = 2};
    st_model *m = load(&o, 2);
    const st_expert_nodes *en = st_model_expert_nodes(m);
    assert_int_equal(st_expert_nodes_count(en), 1);
    assert_int_equal(st_expert_nodes_os_node(en, 0), 1);
    assert_int_equal(st_pool_team_count(m->pool), 1);
    float *lg = run(m, 8, 1);
    free(lg);
    st_model_free(m);
    /* a node the machine does not have: a clear error */
    o.numa = 5;
    st_model_opts oo = o;
    oo.threads = 2;
    oo.quiet = true;
    assert_int_equal(st_model_load(tiny, &oo, &m), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "no NUMA node 4"));
    /* the same when everything is resident (nothing streams): still refused, not ignored */
    st_model_opts resident = {.numa = 5, .threads = 2, .quiet = true};
    assert_int_equal(st_model_load(tiny, &resident, &m), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "no NUMA node 4"));
    /* a bad description names the variable */
    setenv("STRATA_TOPOLOGY", "pack:2 [numa(memory=zz)] bogus:3", 1);
    o.numa = 0;
    oo = o;
    oo.threads = 2;
    oo.quiet = true;
    assert_int_equal(st_model_load(tiny, &oo, &m), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "STRATA_TOPOLOGY"));
    unsetenv("STRATA_TOPOLOGY");
}

/* Two nodes each need 2 expert slots: a cache too small for that is refused with
 * a message saying so (never a cache over the budget); 4 slots' worth fits. */
static void small_cache_over_two_nodes(void **state) {
    (void)state;
    st_model_opts o1 = {.expert_slots = 2, .numa = -1};
    st_model *m = load(&o1, 1);
    st_stream_stats ss;
    assert_int_equal(st_model_offload_stats(m, &ss), 0);
    const uint64_t slot = ss.cache_bytes / (uint64_t)ss.n_slots;
    st_model_free(m);
    setenv("STRATA_TOPOLOGY", TWO_NODES, 1);
    for (int k = 1; k <= 3; k++) {
        st_model_opts o = {.expert_cache = (uint64_t)k * slot, .threads = 2, .quiet = true};
        assert_int_equal(st_model_load(tiny, &o, &m), ST_ERR_BUDGET);
        assert_non_null(strstr(st_last_error(), "split over 2 NUMA nodes: every node needs at least 2 expert slots"));
    }
    st_model_opts o = {.expert_cache = 4 * slot};
    m = load(&o, 2);
    unsetenv("STRATA_TOPOLOGY");
    const st_expert_nodes *en = st_model_expert_nodes(m);
    assert_int_equal(st_expert_nodes_count(en), 2);
    assert_int_equal(st_model_offload_stats(m, &ss), 0);
    assert_int_equal(ss.n_slots, 4);
    assert_true(ss.cache_bytes <= 4 * slot);
    st_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pool_teams_run_on_their_threads),
        cmocka_unit_test(owners_are_balanced_and_stable),
        cmocka_unit_test(virtual_node_recorded_not_bound),
        cmocka_unit_test(two_nodes_bit_identical_streaming),
        cmocka_unit_test(two_nodes_resident_experts_on_their_nodes),
        cmocka_unit_test(stream_warm_copy_cached_and_cold),
        cmocka_unit_test(numa_modes),
        cmocka_unit_test(small_cache_over_two_nodes),
    };
    return cmocka_run_group_tests_name("numa_tiers", tests, setup, teardown);
}
