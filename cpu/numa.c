/* NUMA placement (see numa.h) on an hwloc topology, real or synthetic. Only
 * describes and plans: never binds threads or memory itself (cpu/pool.c pins,
 * cpu/mem.c places). */
#include "cpu/numa.h"

#include <hwloc.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"

struct st_numa {
    int n_nodes, n_cores;
    bool synthetic;
    st_numa_node *nodes;
    int *core_pu; /* all nodes' core_pu arrays, back to back */
};

struct st_numa_plan {
    int n_nodes, n_threads;
    int *first, *count; /* (n_nodes) */
    st_numa_thread *threads; /* (n_threads) */
};

int st_numa_new(const char *synthetic, st_numa **out) {
    *out = NULL;
    hwloc_topology_t t;
    if (hwloc_topology_init(&t) != 0) return st_error(ST_ERR_NOMEM, "hwloc: cannot initialise a topology");
    if (synthetic && hwloc_topology_set_synthetic(t, synthetic) != 0) {
        hwloc_topology_destroy(t);
        return st_error(ST_ERR_INVALID, "hwloc synthetic topology \"%s\": invalid description", synthetic);
    }
    if (hwloc_topology_load(t) != 0) {
        hwloc_topology_destroy(t);
        return st_error(ST_ERR_UNSUPPORTED, "hwloc: cannot load the %s topology", synthetic ? "synthetic" : "machine");
    }
    hwloc_obj_type_t unit = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE) > 0 ? HWLOC_OBJ_CORE : HWLOC_OBJ_PU;
    int n_units = hwloc_get_nbobjs_by_type(t, unit), n_numa = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE);
    int n_nodes = n_numa > 0 ? n_numa : 1;
    st_numa *m = calloc(1, sizeof *m);
    int *owner = malloc(sizeof(int) * (size_t)(n_units > 0 ? n_units : 1));
    if (m) {
        m->nodes = calloc((size_t)n_nodes, sizeof *m->nodes);
        m->core_pu = calloc((size_t)(n_units > 0 ? n_units : 1), sizeof(int));
    }
    if (!m || !owner || !m->nodes || !m->core_pu) {
        free(owner);
        st_numa_free(m);
        hwloc_topology_destroy(t);
        return st_error(ST_ERR_NOMEM, "numa: out of memory describing %d nodes", n_nodes);
    }
    m->n_nodes = n_nodes;
    /* each core belongs to the first node whose locality covers it (nodes that share
     * CPUs, like HBM + DRAM, must not count a core twice); cores outside every
     * node go to node 0 */
    for (int c = 0; c < n_units; c++) {
        hwloc_obj_t core = hwloc_get_obj_by_type(t, unit, (unsigned)c);
        owner[c] = 0;
        for (int n = 0; n < n_numa; n++) {
            hwloc_obj_t nd = hwloc_get_obj_by_type(t, HWLOC_OBJ_NUMANODE, (unsigned)n);
            if (nd->cpuset && core->cpuset && hwloc_bitmap_isincluded(core->cpuset, nd->cpuset)) { owner[c] = n; break; }
        }
    }
    int at = 0;
    for (int n = 0; n < n_nodes; n++) {
        st_numa_node *node = &m->nodes[n];
        hwloc_obj_t nd = n_numa > 0 ? hwloc_get_obj_by_type(t, HWLOC_OBJ_NUMANODE, (unsigned)n) : NULL;
        node->os_index = nd ? (int)nd->os_index : 0;
        node->memory_bytes = nd ? nd->attr->numanode.local_memory : hwloc_get_root_obj(t)->total_memory;
        node->core_pu = m->core_pu + at;
        for (int c = 0; c < n_units; c++) {
            if (owner[c] != n) continue;
            hwloc_obj_t core = hwloc_get_obj_by_type(t, unit, (unsigned)c);
            int first = hwloc_bitmap_first(core->cpuset);
            m->core_pu[at++] = first >= 0 ? first : c;
            node->n_cores++;
            node->n_pus += ST_MAX(hwloc_bitmap_weight(core->cpuset), 1);
        }
    }
    m->n_cores = at;
    m->synthetic = synthetic != NULL;
    free(owner);
    hwloc_topology_destroy(t);
    *out = m;
    return 0;
}

int st_numa_new_env(st_numa **out) {
    const char *env = getenv("STRATA_TOPOLOGY");
    int rc = st_numa_new(env && *env ? env : NULL, out);
    return rc ? st_error_prefix(rc, "STRATA_TOPOLOGY: ") : 0;
}

bool st_numa_is_synthetic(const st_numa *m) { return m->synthetic; }

void st_numa_free(st_numa *m) {
    if (!m) return;
    free(m->nodes);
    free(m->core_pu);
    free(m);
}

int st_numa_node_count(const st_numa *m) { return m->n_nodes; }
const st_numa_node *st_numa_node_at(const st_numa *m, int i) { return i >= 0 && i < m->n_nodes ? &m->nodes[i] : NULL; }
int st_numa_core_count(const st_numa *m) { return m->n_cores; }

/* ---- plan ------------------------------------------------------------------------ */

void st_numa_plan_free(st_numa_plan *p) {
    if (!p) return;
    free(p->first);
    free(p->count);
    free(p->threads);
    free(p);
}

static int plan_build(const st_numa *m, int n_threads, int only, st_numa_plan **out) {
    *out = NULL;
    if (n_threads <= 0) return st_error(ST_ERR_INVALID, "numa plan: %d threads, expected at least 1", n_threads);
    if (m->n_cores <= 0) return st_error(ST_ERR_UNSUPPORTED, "numa plan: the topology has no cores");
    st_numa_plan *p = calloc(1, sizeof *p);
    if (p) {
        p->first = calloc((size_t)m->n_nodes, sizeof(int));
        p->count = calloc((size_t)m->n_nodes, sizeof(int));
        p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    }
    if (!p || !p->first || !p->count || !p->threads) {
        st_numa_plan_free(p);
        return st_error(ST_ERR_NOMEM, "numa plan: out of memory for %d threads", n_threads);
    }
    p->n_nodes = m->n_nodes;
    p->n_threads = n_threads;
    /* largest remainder: floor shares first, then the biggest remainders (lower node on ties) */
    int given = 0;
    int64_t *rem = calloc((size_t)m->n_nodes, sizeof *rem);
    if (!rem) { st_numa_plan_free(p); return st_error(ST_ERR_NOMEM, "numa plan: out of memory"); }
    int cores = only >= 0 ? m->nodes[only].n_cores : m->n_cores;
    for (int n = 0; n < m->n_nodes; n++) {
        int64_t num = only < 0 || n == only ? (int64_t)n_threads * m->nodes[n].n_cores : 0;
        p->count[n] = (int)(num / cores);
        rem[n] = num % cores;
        given += p->count[n];
    }
    for (; given < n_threads; given++) {
        int best = -1;
        for (int n = 0; n < m->n_nodes; n++)
            if (m->nodes[n].n_cores > 0 && (only < 0 || n == only) && (best < 0 || rem[n] > rem[best])) best = n;
        p->count[best]++;
        rem[best] = -1;
    }
    free(rem);
    int t = 0;
    for (int n = 0; n < m->n_nodes; n++) {
        p->first[n] = t;
        for (int j = 0; j < p->count[n]; j++, t++) {
            int core = j % m->nodes[n].n_cores;
            p->threads[t] = (st_numa_thread){.node = n, .core = core, .pu_os = m->nodes[n].core_pu[core]};
        }
    }
    *out = p;
    return 0;
}

int st_numa_plan_new(const st_numa *m, int n_threads, st_numa_plan **out) {
    return plan_build(m, n_threads, -1, out);
}

int st_numa_plan_new_on(const st_numa *m, int n_threads, int node, st_numa_plan **out) {
    *out = NULL;
    if (node < 0 || node >= m->n_nodes || m->nodes[node].n_cores <= 0)
        return st_error(ST_ERR_INVALID, "numa: node %d is not a node with cores (this machine has %d node(s))", node,
                        m->n_nodes);
    return plan_build(m, n_threads, node, out);
}

int st_numa_plan_thread_count(const st_numa_plan *p) { return p->n_threads; }
int st_numa_plan_node_count(const st_numa_plan *p) { return p->n_nodes; }

int st_numa_plan_active_nodes(const st_numa_plan *p) {
    int active = 0;
    for (int i = 0; i < p->n_nodes; i++) active += p->count[i] > 0;
    return active;
}

int st_numa_plan_owner(const st_numa_plan *p, int64_t n_items, int64_t item) {
    /* node n owns the items whose middle falls in its share [T_before, T_before + count) / n_threads */
    long double mid = ((long double)item + 0.5L) / (long double)n_items * (long double)p->n_threads;
    int before = 0, last = p->n_nodes - 1;
    while (last > 0 && p->count[last] == 0) last--;
    for (int n = 0; n < last; n++) {
        if (p->count[n] > 0 && mid < (long double)(before + p->count[n])) return n;
        before += p->count[n];
    }
    return last;
}

st_numa_thread st_numa_plan_thread(const st_numa_plan *p, int ith) {
    ST_ASSERT(ith >= 0 && ith < p->n_threads);
    return p->threads[ith];
}

void st_numa_plan_node_threads(const st_numa_plan *p, int node, int *first, int *count) {
    bool ok = node >= 0 && node < p->n_nodes;
    *first = ok ? p->first[node] : 0;
    *count = ok ? p->count[node] : 0;
}

int st_numa_plan_split(const st_numa_plan *p, int64_t n_items, const uint64_t *sizes, int *owner,
                       uint64_t *node_bytes) {
    if (n_items < 0) return st_error(ST_ERR_INVALID, "numa split: %lld items", (long long)n_items);
    if (node_bytes) memset(node_bytes, 0, sizeof *node_bytes * (size_t)p->n_nodes);
    long double total = 0;
    for (int64_t i = 0; i < n_items; i++) total += sizes ? (long double)sizes[i] : 1.0L;
    bool equal = total == 0; /* all sizes 0: split by count */
    if (equal) total = (long double)n_items;
    long double cum = 0;
    int node = 0, threads_before = 0, last = p->n_nodes - 1;
    while (last > 0 && p->count[last] == 0) last--; /* no items for trailing nodes without threads */
    for (int64_t i = 0; i < n_items; i++) {
        long double sz = sizes && !equal ? (long double)sizes[i] : 1.0L;
        long double mid = cum + sz / 2;
        /* node n's share of the bytes ends at total * (threads of nodes <= n) / threads */
        while (node < last &&
               (p->count[node] == 0 || mid >= total * (threads_before + p->count[node]) / p->n_threads)) {
            threads_before += p->count[node];
            node++;
        }
        owner[i] = node;
        if (node_bytes) node_bytes[node] += sizes ? sizes[i] : 1;
        cum += sz;
    }
    return 0;
}
