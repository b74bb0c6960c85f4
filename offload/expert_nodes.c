/* The expert stream per NUMA node (see expert_nodes.h): the nodes and threads
 * from cpu/numa.c, one st_expert_stream per node with its share of the budget
 * and its slots on its node, each layer's experts split among the node
 * streams by owner. Must never: load an expert into another node's slots,
 * exceed a node's budget, or change what is computed (placement only). */
#include "offload/expert_nodes.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/numa.h"

struct st_expert_nodes {
    int n_nodes, n_experts;
    st_expert_stream *streams[ST_NODES_MAX];
    st_budget *budgets[ST_NODES_MAX];
    int os_node[ST_NODES_MAX];
    int *owner;          /* (n_experts): the node of expert e, the same in every layer */
    int *part;           /* (n_experts) scratch: one node's experts */
    bool *part_hit;      /* (n_experts) */
    int serving;         /* st_expert_nodes_next: the node being drained */
    st_pool *teams_of;   /* the pool this split into teams (removed at free) */
    bool virtual_nodes;  /* st_mem_set_virtual_nodes was set (undone at free) */
    uint64_t stall_ns;   /* several nodes: per layer the longest node's wait, summed (wall time) */
};

/* Shares of `total` in proportion to weight[i] (largest remainder, lower index on ties). */
static void share_out(uint64_t total, const int *weight, int n, uint64_t *out) {
    uint64_t wsum = 0, given = 0;
    for (int i = 0; i < n; i++) wsum += (uint64_t)weight[i];
    long double rem[ST_NODES_MAX];
    for (int i = 0; i < n; i++) {
        long double x = (long double)total * weight[i] / (long double)wsum;
        out[i] = (uint64_t)x;
        rem[i] = x - (long double)out[i];
        given += out[i];
    }
    for (; given < total; given++) {
        int best = 0;
        for (int i = 1; i < n; i++)
            if (rem[i] > rem[best]) best = i;
        out[best]++;
        rem[best] = -1;
    }
}

/* Node i's share of total (share_out). */
static uint64_t share_of(uint64_t total, const int *weight, int n, int i) {
    uint64_t out[ST_NODES_MAX];
    share_out(total, weight, n, out);
    return out[i];
}

static int one_stream(st_expert_nodes *s, const st_stream_desc *d, const st_stream_opts *o) {
    s->n_nodes = 1;
    s->os_node[0] = o->mem_policy == ST_MEM_NODE ? o->node : 0;
    return st_expert_stream_new(d, o, &s->streams[0]);
}

/* Several nodes: teams, owners, a stream per node. */
static int node_streams(st_expert_nodes *s, const st_stream_desc *d, const st_stream_opts *o, const st_numa *numa,
                        const st_numa_plan *plan, st_pool *pool) {
    int first[ST_NODES_MAX], count[ST_NODES_MAX], pu[1024], node_of[ST_NODES_MAX], max_os = 0;
    int n = 0, total = st_numa_plan_thread_count(plan);
    for (int i = 0; i < st_numa_plan_node_count(plan); i++) {
        int f, c;
        st_numa_plan_node_threads(plan, i, &f, &c);
        if (c == 0) continue;
        if (n == ST_NODES_MAX) return st_error(ST_ERR_UNSUPPORTED, "numa: more than %d nodes with threads", ST_NODES_MAX);
        first[n] = f;
        count[n] = c;
        node_of[i] = n;
        s->os_node[n] = st_numa_node_at(numa, i)->os_index;
        max_os = ST_MAX(max_os, s->os_node[n]);
        n++;
    }
    s->n_nodes = n;
    int rc = st_pool_set_teams(pool, n, first, count);
    if (rc) return rc;
    s->teams_of = pool;
    if (st_numa_is_synthetic(numa)) {
        st_mem_set_virtual_nodes(max_os + 1); /* nodes that are not this machine's: recorded, not mbind'ed */
        s->virtual_nodes = true;
    } else if (total <= (int)ST_ARRAY_LEN(pu)) {
        for (int t = 0; t < total; t++) pu[t] = st_numa_plan_thread(plan, t).pu_os;
        st_pool_pin_threads(pool, pu);
    }
    for (int e = 0; e < s->n_experts; e++) s->owner[e] = node_of[st_numa_plan_owner(plan, s->n_experts, e)];
    uint64_t bytes[ST_NODES_MAX] = {0}, slots[ST_NODES_MAX] = {0};
    uint64_t cache = o->cache_bytes ? o->cache_bytes : o->budget ? st_budget_limit(o->budget) : 0;
    if (cache) share_out(cache, count, n, bytes);
    if (o->n_slots) share_out((uint64_t)o->n_slots, count, n, slots);
    for (int i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "dram expert cache, node %d", s->os_node[i]);
        uint64_t limit = o->n_slots ? UINT64_MAX : bytes[i];
        if ((rc = st_budget_new(name, limit, &s->budgets[i]))) return rc;
        st_stream_opts so = *o;
        so.cache_bytes = o->n_slots ? 0 : bytes[i];
        so.n_slots = o->n_slots ? (int)ST_MAX(slots[i], 2) : 0;
        so.budget = s->budgets[i];
        so.mem_policy = ST_MEM_NODE;
        so.node = s->os_node[i];
        /* the nodes' streams share the disks: the reads in flight, all nodes together, stay
         * what one stream would have (io 32, prefetch 8 by default), split like the threads */
        so.io_depth = (int)ST_MAX(4, share_of(o->io_depth ? o->io_depth : 32, count, n, i));
        so.queue_depth = (int)ST_MAX(1, share_of(o->queue_depth ? o->queue_depth : 8, count, n, i));
        if ((rc = st_expert_stream_new(d, &so, &s->streams[i]))) {
            char c[32], b[32];
            if (rc == ST_ERR_BUDGET && !o->n_slots) /* refused, never over the budget: say what would fit */
                return st_error_prefix(rc, "expert cache %s split over %d NUMA nodes: every node needs at least 2 expert "
                                           "slots (raise the expert cache, or --numa off / --numa N for one node); "
                                           "node %d's share %s (%d of %d threads): ",
                                       st_fmt_size(cache, c, sizeof c), n, s->os_node[i], st_fmt_size(bytes[i], b, sizeof b),
                                       count[i], total);
            return st_error_prefix(rc, "NUMA node %d (%d of %d threads): ", s->os_node[i], count[i], total);
        }
    }
    return 0;
}

int st_expert_nodes_new(const st_stream_desc *d, const st_stream_opts *o, int numa_mode, st_pool *pool,
                        st_expert_nodes **out) {
    *out = NULL;
    if (!d || d->n_experts <= 0) return st_error(ST_ERR_INVALID, "expert stream: bad description");
    st_expert_nodes *s = calloc(1, sizeof *s);
    if (!s) return st_error(ST_ERR_NOMEM, "expert stream: out of memory");
    s->n_experts = d->n_experts;
    s->owner = calloc((size_t)d->n_experts, sizeof *s->owner);
    s->part = calloc((size_t)d->n_experts, sizeof *s->part);
    s->part_hit = calloc((size_t)d->n_experts, sizeof *s->part_hit);
    st_numa *numa = NULL;
    st_numa_plan *plan = NULL;
    st_stream_opts so = o ? *o : (st_stream_opts){0};
    int rc = 0;
    if (!s->owner || !s->part || !s->part_hit) { rc = st_error(ST_ERR_NOMEM, "expert stream: out of memory"); goto done; }
    if (numa_mode < 0) { /* off: no binding anywhere */
        st_mem_set_numa_enabled(false);
        rc = one_stream(s, d, &so);
        goto done;
    }
    int threads = st_pool_size(pool);
    if ((rc = st_numa_new_env(&numa))) goto done;
    if (numa_mode > 0) { /* node N: its memory, its cores */
        so.mem_policy = ST_MEM_NODE;
        so.node = numa_mode - 1;
        int idx = -1;
        for (int i = 0; i < st_numa_node_count(numa); i++)
            if (st_numa_node_at(numa, i)->os_index == numa_mode - 1) idx = i;
        if (idx < 0) { rc = st_error(ST_ERR_INVALID, "--numa %d: this machine has no NUMA node %d", numa_mode - 1, numa_mode - 1); goto done; }
        if (st_numa_is_synthetic(numa)) { st_mem_set_virtual_nodes(numa_mode); s->virtual_nodes = true; }
        if ((rc = st_numa_plan_new_on(numa, threads, idx, &plan))) goto done;
        if (pool && !st_numa_is_synthetic(numa) && threads <= 1024) {
            int pu[1024];
            for (int t = 0; t < threads; t++) pu[t] = st_numa_plan_thread(plan, t).pu_os;
            st_pool_pin_threads(pool, pu);
        }
        rc = one_stream(s, d, &so);
        goto done;
    }
    if ((rc = st_numa_plan_new(numa, threads, &plan))) goto done;
    rc = st_numa_plan_active_nodes(plan) > 1 && pool ? node_streams(s, d, &so, numa, plan, pool) : one_stream(s, d, &so);
done:
    st_numa_plan_free(plan);
    st_numa_free(numa);
    if (rc) { st_expert_nodes_free(s); return rc; }
    *out = s;
    return 0;
}

void st_expert_nodes_free(st_expert_nodes *s) {
    if (!s) return;
    for (int i = 0; i < s->n_nodes; i++) {
        st_expert_stream_free(s->streams[i]);
        st_budget_free(s->budgets[i]);
    }
    if (s->teams_of) st_pool_set_teams(s->teams_of, 1, NULL, NULL);
    if (s->virtual_nodes) st_mem_set_virtual_nodes(0);
    free(s->owner);
    free(s->part);
    free(s->part_hit);
    free(s);
}

int st_expert_nodes_count(const st_expert_nodes *s) { return s->n_nodes; }
int st_expert_nodes_owner(const st_expert_nodes *s, int layer, int expert) {
    (void)layer;
    return expert >= 0 && expert < s->n_experts ? s->owner[expert] : 0;
}
int st_expert_nodes_os_node(const st_expert_nodes *s, int node) { return s->os_node[node]; }
st_expert_stream *st_expert_nodes_stream(const st_expert_nodes *s, int node) { return s->streams[node]; }
st_budget *st_expert_nodes_budget(const st_expert_nodes *s, int node) { return s->budgets[node]; }

/* ---- the calls, node by node ------------------------------------------------------------ */

/* experts[0..n) owned by node into s->part (order kept); returns the count. */
static int part_of(st_expert_nodes *s, int node, const int *experts, int n) {
    int k = 0;
    for (int i = 0; i < n; i++)
        if (experts[i] >= 0 && experts[i] < s->n_experts && s->owner[experts[i]] == node) s->part[k++] = experts[i];
    return k;
}

void st_expert_nodes_step(st_expert_nodes *s) {
    for (int i = 0; i < s->n_nodes; i++) st_expert_stream_step(s->streams[i]);
}

int st_expert_nodes_request(st_expert_nodes *s, int layer, const int *experts, int n) {
    if (s->n_nodes == 1) return st_expert_stream_request(s->streams[0], layer, experts, n);
    int rc = 0;
    for (int i = 0; !rc && i < s->n_nodes; i++) rc = st_expert_stream_request(s->streams[i], layer, s->part, part_of(s, i, experts, n));
    return rc;
}

int st_expert_nodes_predict(st_expert_nodes *s, int layer, const int *experts, int n) {
    if (s->n_nodes == 1) return st_expert_stream_predict(s->streams[0], layer, experts, n);
    int rc = 0;
    for (int i = 0; !rc && i < s->n_nodes; i++) rc = st_expert_stream_predict(s->streams[i], layer, s->part, part_of(s, i, experts, n));
    return rc;
}

int st_expert_nodes_pump(st_expert_nodes *s) {
    int rc = 0;
    for (int i = 0; !rc && i < s->n_nodes; i++) rc = st_expert_stream_pump(s->streams[i]);
    return rc;
}

int st_expert_nodes_begin(st_expert_nodes *s, int layer, const int *experts, int n, bool *hit) {
    s->serving = 0;
    if (s->n_nodes == 1) return st_expert_stream_begin(s->streams[0], layer, experts, n, hit);
    if (n < 0 || n > s->n_experts) return st_error(ST_ERR_INVALID, "expert stream: layer %d with %d experts", layer, n);
    for (int i = 0; i < n; i++)
        if (experts[i] < 0 || experts[i] >= s->n_experts)
            return st_error(ST_ERR_INVALID, "expert stream: layer %d: expert %d is not < %d", layer, experts[i], s->n_experts);
    for (int node = 0; node < s->n_nodes; node++) {
        int k = part_of(s, node, experts, n);
        int rc = st_expert_stream_begin(s->streams[node], layer, s->part, k, hit ? s->part_hit : NULL);
        if (rc) return rc;
        for (int i = 0, j = 0; hit && i < n && j < k; i++) /* both ascending: scatter the node's hits back */
            if (experts[i] == s->part[j]) hit[i] = s->part_hit[j++];
    }
    return 0;
}

int st_expert_nodes_next_on(st_expert_nodes *s, int node, int *expert, const void **pieces) {
    return st_expert_stream_next(s->streams[node], expert, pieces);
}

int st_expert_nodes_next(st_expert_nodes *s, int *expert, const void **pieces) {
    for (; s->serving < s->n_nodes; s->serving++) {
        int r = st_expert_stream_next(s->streams[s->serving], expert, pieces);
        if (r) return r;
    }
    return 0;
}

uint64_t st_expert_nodes_end(st_expert_nodes *s) {
    /* the nodes' teams wait at the same time: the layer stalled as long as the longest wait */
    uint64_t stall = 0;
    for (int i = 0; i < s->n_nodes; i++) stall = ST_MAX(stall, st_expert_stream_end(s->streams[i]));
    s->stall_ns += stall;
    return stall;
}

int st_expert_nodes_set_warm_copy(st_expert_nodes *s, const char *const *paths) {
    int rc = 0;
    for (int i = 0; !rc && i < s->n_nodes; i++) rc = st_expert_stream_set_warm_copy(s->streams[i], paths);
    return rc;
}

int st_expert_nodes_slots(const st_expert_nodes *s) {
    int n = 0;
    for (int i = 0; i < s->n_nodes; i++) n += st_expert_stream_slots(s->streams[i]);
    return n;
}

void st_expert_nodes_get_stats(const st_expert_nodes *s, st_stream_stats *out) {
    st_expert_stream_get_stats(s->streams[0], out);
    for (int i = 1; i < s->n_nodes; i++) {
        st_stream_stats x;
        st_expert_stream_get_stats(s->streams[i], &x);
        /* the counters: every uint64_t before `queued` */
        uint64_t *a = (uint64_t *)&out->pf;
        const uint64_t *b = (const uint64_t *)&x.pf;
        for (size_t k = 0; k < offsetof(st_prefetch_stats, queued) / sizeof(uint64_t); k++) a[k] += b[k];
        out->pf.queued += x.pf.queued;
        out->pf.in_flight += x.pf.in_flight;
        out->n_slots += x.n_slots;
        out->slot_bytes = ST_MAX(out->slot_bytes, x.slot_bytes);
        out->cache_bytes += x.cache_bytes;
        out->budget_peak += x.budget_peak;
        out->expert_bytes = ST_MAX(out->expert_bytes, x.expert_bytes);
        out->span_bytes = ST_MAX(out->span_bytes, x.span_bytes);
        out->reads += x.reads;
        out->bytes_read += x.bytes_read;
        out->bytes_copied += x.bytes_copied;
        out->wanted_evictions += x.wanted_evictions;
        out->kept_evictions += x.kept_evictions;
        out->io_depth += x.io_depth;
        out->io_promoted += x.io_promoted;
        out->io_peak_inflight += x.io_peak_inflight;
        out->prefetch_depth += x.prefetch_depth;
        out->files += x.files;
        out->direct_files += x.direct_files;
    }
    if (s->n_nodes > 1) out->pf.stall_ns = s->stall_ns; /* wall time, not the sum over nodes */
}
