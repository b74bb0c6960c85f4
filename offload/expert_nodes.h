/* The expert stream per NUMA node: on several nodes the DRAM expert cache is
 * one st_expert_stream per node (its slots allocated and mbind'ed on that
 * node, its budget that node's share), every expert of a layer is owned by
 * one node (cpu/numa.h st_numa_plan_owner: contiguous, thread-proportional, so
 * each layer's experts are spread over every node) and is loaded only into its
 * node's slots; the model's thread pool is pinned node-major and split into
 * one team per node, so node i's threads compute node i's experts
 * (st_expert_nodes_next_on from that node's team leader, concurrently with the
 * other nodes: each node's stream is touched by one thread at a time).
 *
 * On one node (or --numa off / N) this is one stream and a thin pass-through:
 * the same calls, the same results. The calls mirror expert_source.h; begin,
 * request and predict take the layer's experts and hand each node its own.
 */
#ifndef ST_OFFLOAD_EXPERT_NODES_H
#define ST_OFFLOAD_EXPERT_NODES_H

#include "cpu/pool.h"
#include "offload/expert_source.h"

#define ST_NODES_MAX 64

typedef struct st_expert_nodes st_expert_nodes;

/* numa: 0 auto (every node of the machine, or of the synthetic topology in
 * STRATA_TOPOLOGY), -1 off (one cache, no mbind), n > 0: everything on node
 * n - 1. pool (may be NULL: one node): pinned and split into teams when there
 * are several nodes (and pinned to node n - 1 with --numa N). The budget of
 * o (cache_bytes / n_slots) is shared out in proportion to each node's
 * threads; every node gets at least 2 slots. */
int st_expert_nodes_new(const st_stream_desc *d, const st_stream_opts *o, int numa, st_pool *pool,
                        st_expert_nodes **out);
/* Also removes the pool's teams. NULL is a no-op. */
void st_expert_nodes_free(st_expert_nodes *s);

int st_expert_nodes_count(const st_expert_nodes *s);
/* The node (index < count) owning (layer, expert). */
int st_expert_nodes_owner(const st_expert_nodes *s, int layer, int expert);
/* The OS NUMA node number of node i (what its slots were mbind'ed to). */
int st_expert_nodes_os_node(const st_expert_nodes *s, int node);
st_expert_stream *st_expert_nodes_stream(const st_expert_nodes *s, int node);
st_budget *st_expert_nodes_budget(const st_expert_nodes *s, int node);

void st_expert_nodes_step(st_expert_nodes *s);
int st_expert_nodes_request(st_expert_nodes *s, int layer, const int *experts, int n);
int st_expert_nodes_predict(st_expert_nodes *s, int layer, const int *experts, int n);
int st_expert_nodes_pump(st_expert_nodes *s);
/* experts ascending; hit (may be NULL) as in st_expert_stream_begin. */
int st_expert_nodes_begin(st_expert_nodes *s, int layer, const int *experts, int n, bool *hit);
/* Node after node: 1 with the next expert of the layer, 0 when every node has
 * handed out all of its experts (the one-thread path and the close of a layer). */
int st_expert_nodes_next(st_expert_nodes *s, int *expert, const void **pieces);
/* Node `node`'s next expert (1), 0 when it has none left. Only from one thread per node. */
int st_expert_nodes_next_on(st_expert_nodes *s, int node, int *expert, const void **pieces);
/* Ends every node's layer; returns the time stalled (ns): the longest node's wait, as the
 * nodes wait at the same time. get_stats reports the sum of these (wall time). */
uint64_t st_expert_nodes_end(st_expert_nodes *s);

/* Summed over nodes (slot_bytes, expert_bytes, span_bytes: the largest). */
void st_expert_nodes_get_stats(const st_expert_nodes *s, st_stream_stats *out);
int st_expert_nodes_slots(const st_expert_nodes *s);
/* Every node's st_expert_stream_set_warm_copy (paths NULL: off). */
int st_expert_nodes_set_warm_copy(st_expert_nodes *s, const char *const *paths);

#endif
