/* NUMA placement: which cores and memory each NUMA node has, which node each
 * compute thread runs on, and which node owns each item (an expert's DRAM copy
 * lives on the node whose threads compute it).
 *
 * Works on the real machine or on an hwloc synthetic description, so the
 * multi-node logic is testable on a one-node box. Knows nothing of models.
 */
#ifndef ST_CPU_NUMA_H
#define ST_CPU_NUMA_H

#include <stdbool.h>
#include <stdint.h>

typedef struct st_numa st_numa;

typedef struct st_numa_node {
    int os_index;          /* the kernel's node number (what mbind takes) */
    int n_cores;           /* cores whose PUs are local to this node (each core counted once) */
    int n_pus;             /* hardware threads of those cores */
    uint64_t memory_bytes; /* local memory */
    const int *core_pu;    /* (n_cores) OS index of the first PU of each core, for pinning */
} st_numa_node;

/* synthetic NULL: this machine; else an hwloc 2 synthetic description, e.g.
 * "pack:2 [numa(memory=8GB)] core:4 pu:2". ST_ERR_INVALID names a bad description. */
int st_numa_new(const char *synthetic, st_numa **out);
/* The machine, or the synthetic description in STRATA_TOPOLOGY when set (a
 * hidden testing switch: the multi-node paths run on a one-node machine). */
int st_numa_new_env(st_numa **out);
/* Built from a synthetic description (its PUs and nodes are not this machine's:
 * never pin to them, and mbind only to nodes that exist). */
bool st_numa_is_synthetic(const st_numa *numa);
void st_numa_free(st_numa *numa);
int st_numa_node_count(const st_numa *numa);
const st_numa_node *st_numa_node_at(const st_numa *numa, int i); /* i in [0, count) */
int st_numa_core_count(const st_numa *numa);

/* ---- threads and items ------------------------------------------------------------ */

typedef struct st_numa_thread {
    int node;   /* index into the node list (not the OS number) */
    int core;   /* index into that node's cores */
    int pu_os;  /* OS index of the PU to pin to */
} st_numa_thread;

typedef struct st_numa_plan st_numa_plan;

/* n_threads > 0 compute threads spread over nodes in proportion to their cores
 * (largest remainder), node-major: node 0's threads are 0..c0-1, node 1's next,
 * and so on. Within a node thread j takes core j (wrapping when there are more
 * threads than cores). Nodes without cores get no threads. */
int st_numa_plan_new(const st_numa *numa, int n_threads, st_numa_plan **out);
/* The same with every thread on node `node` alone (--numa N); ST_ERR_INVALID
 * when there is no such node or it has no cores. */
int st_numa_plan_new_on(const st_numa *numa, int n_threads, int node, st_numa_plan **out);
void st_numa_plan_free(st_numa_plan *plan);
int st_numa_plan_thread_count(const st_numa_plan *plan);
st_numa_thread st_numa_plan_thread(const st_numa_plan *plan, int ith);
/* The threads serving node i: [*first, *first + *count) (count may be 0). */
void st_numa_plan_node_threads(const st_numa_plan *plan, int node, int *first, int *count);

int st_numa_plan_node_count(const st_numa_plan *plan); /* the topology's nodes (some may have no threads) */
int st_numa_plan_active_nodes(const st_numa_plan *plan); /* ... of them, those with threads */

/* Owner of item `item` of n_items (e.g. an expert of a layer): the same
 * contiguous, thread-proportional split as st_numa_plan_split with equal sizes,
 * so every layer's experts are spread over every node that has threads, and
 * the answer never changes for a given plan. */
int st_numa_plan_owner(const st_numa_plan *plan, int64_t n_items, int64_t item);

/* Split items 0..n_items-1 (sizes in bytes, NULL: all equal) across nodes in
 * proportion to each node's threads, as contiguous id ranges in node order:
 * item i goes to the node whose share of the total bytes holds the middle of
 * item i. owner[i] gets the node index; node_bytes[node] (may be NULL) the sum. */
int st_numa_plan_split(const st_numa_plan *plan, int64_t n_items, const uint64_t *sizes, int *owner,
                       uint64_t *node_bytes);

#endif
