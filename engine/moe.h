/* V4 MoE for one layer over a chunk: router (sqrt-softplus scores, selection
 * bias, hash routing on the first layers), routed experts and the shared one. */
#ifndef ST_ENGINE_MOE_H
#define ST_ENGINE_MOE_H

#include "engine/layer.h"

/* Where routed expert weights come from: the offload layer serves them; the
 * default serves the loader's pointers. get() may block until the expert is
 * resident; put() releases it. */
typedef struct st_expert_source {
    int (*get)(void *ctx, int layer, int expert, const st_expert_w **out);
    void (*put)(void *ctx, int layer, int expert);
    void *ctx;
    /* Optional offload hooks (NULL: not called; offload/expert_source.h).
     * step: a forward chunk starts with these tokens (hash-routed layers' experts are known).
     * routed: right after layer `layer` routed its T tokens (xn (T, dim) its normalised input,
     *   ids (T, top_k)): the source starts this layer's loads and predicts the next layer's.
     * next: this layer's next expert to compute, in the order they become resident: 1 with
     *   *expert and *out (valid until the next call), 0 when all were handed out. When set,
     *   st_moe_forward uses it instead of get() and sums the experts in ascending id after. */
    int (*step)(void *ctx, const int32_t *tokens, int64_t T);
    int (*routed)(void *ctx, int layer, const float *xn, const int32_t *tokens, int64_t T, const int32_t *ids);
    int (*next)(void *ctx, int layer, int *expert, const st_expert_w **out);
    /* refine (optional): layer `layer`'s MoE input as it would be if that layer's attention added
     * nothing (xn (T, dim): its hc_ffn pre-mix and ffn_norm of the residual after layer - 1): a
     * better prediction of its experts than routed() made one layer earlier, while the attention
     * still runs. Only moves bytes. */
    int (*refine)(void *ctx, int layer, const float *xn, const int32_t *tokens, int64_t T);
    /* n_nodes > 1 with next_on: the experts live on NUMA nodes and the pool has one team per node
     * (cpu/pool.h); node i's team leader takes node i's experts with next_on (1, or 0 when it has
     * none left), all nodes at once; next() then closes the layer. Sums stay in ascending id. */
    int n_nodes;
    int (*next_on)(void *ctx, int layer, int node, int *expert, const st_expert_w **out);
    /* gpu (optional): the DRAM -> GPU tier (offload/gpu_experts.h). The chosen experts it holds
     * are computed there while the CPU computes the others (get()/next() never hand those out);
     * a miss with at least the tier's min_rows token rows is copied in and computed there too,
     * the others on the CPU and then admitted from their DRAM copy. Sums stay in ascending id. */
    struct st_gpu_experts *gpu;
} st_expert_source;

/* Tests: called by the thread that computed routed expert `expert` of `layer` on NUMA node
 * `node` (per-node path only), with the descriptor it computed from. NULL: not called. */
extern void (*st_moe_node_hook)(int layer, int expert, int node, const st_expert_w *w);

/* The CPU's computation of one routed expert for the emulated GPU device (offload/gpu_device.h
 * st_gpu_host_ffn): f's pointers are host memory; o (n, dim) is written, not accumulated. */
struct st_gpu_ffn;
int st_moe_expert_host(const struct st_gpu_ffn *f);

/* Routing of T tokens: ids (T, top_k) and weights (T, top_k). */
int st_moe_route(st_pool *pool, const st_moe_w *w, const float *xn, const int32_t *tokens, int64_t T,
                 int32_t *ids, float *weights);

/* The experts a layer is likely to choose, for prefetching: w's routing of T tokens of
 * normalised input xn into ids (T, top_k) and weights (T, top_k) (scratch the caller
 * keeps, e.g. for a trace), then each token's `top` most confident choices (highest
 * weight, ties to the earlier choice), distinct, in token order: *n_out of them into
 * out (n_experts). mark (n_experts) is scratch. */
int st_moe_predict(st_pool *pool, const st_moe_w *w, const float *xn, const int32_t *tokens, int64_t T, int top,
                   int32_t *ids, float *weights, bool *mark, int *out, int *n_out);
/* Each token's choices a prefetch keeps: the top 2 by routing weight (on flash-2l the top 2 of
 * 6 were wasted 8 times in 32 tokens, all 6 ~44 times; every wasted read shares the disk or
 * the link with the reads the engine waits for, and evicts a useful expert). */
enum { ST_MOE_PREDICT_TOP = 2 };

/* out (T, dim) = MoE(xn). tokens: the raw token ids (hash routing). */
int st_moe_forward(st_pool *pool, const st_moe_w *w, int layer, const st_expert_source *src, const float *xn,
                   const int32_t *tokens, int64_t T, st_numerics num, float *out);

#endif
