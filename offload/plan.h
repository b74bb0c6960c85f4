/* The placement plan and its decode cost model.
 *
 * Made once from the model's shapes, the tier budgets and the tiers' measured
 * read bandwidths: the classes every token reads (attention, shared experts,
 * norms, routers, embeddings, head) and the window KV are pinned on the fastest
 * tier with room, in that order; then routed experts by expected use (uses per
 * token; uniform top_k / n_experts when unknown) fill what is left of the fast
 * tiers (on DRAM: the expert cache); the rest stays on NVMe.
 *
 * Cost model of one decode token: each tier reads its bytes at its bandwidth;
 * an expert that lives on NVMe is read from NVMe and then once from DRAM (it is
 * computed in its slot). With overlap (prefetch) the token takes the slowest
 * tier's time; without, the sum. Knows bytes and tiers, not the model.
 */
#ifndef ST_OFFLOAD_PLAN_H
#define ST_OFFLOAD_PLAN_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { ST_TIER_GPU = 0, ST_TIER_DRAM = 1, ST_TIER_NVME = 2, ST_TIER_COUNT = 3 } st_tier_kind;

const char *st_tier_name(st_tier_kind t); /* "gpu", "dram", "nvme" */

enum { ST_PLAN_ATTENTION = 0, ST_PLAN_SHARED, ST_PLAN_NORMS_ROUTERS, ST_PLAN_EMBED, ST_PLAN_HEAD, ST_PLAN_WINDOW_KV,
       ST_PLAN_CLASSES };
const char *st_plan_class_name(int c); /* "attention", "shared experts", ... */

typedef struct st_plan_input {
    uint64_t class_bytes[ST_PLAN_CLASSES];     /* held */
    uint64_t class_read[ST_PLAN_CLASSES];      /* read by one decode token (embeddings: one row) */
    int n_layers, n_experts, top_k;            /* routed experts per layer, chosen per token */
    uint64_t expert_bytes;                     /* one routed expert */
    const double *expert_use;                  /* (n_layers * n_experts) uses per token, NULL: uniform */
    uint64_t budget[ST_TIER_COUNT];            /* bytes; gpu 0: no GPU; nvme 0: unlimited */
    double bandwidth[ST_TIER_COUNT];           /* bytes per second */
} st_plan_input;

typedef struct st_plan {
    int class_tier[ST_PLAN_CLASSES];           /* where each pinned class lives */
    uint64_t bytes[ST_TIER_COUNT];             /* held per tier */
    int64_t experts[ST_TIER_COUNT];            /* routed experts homed per tier */
    uint64_t expert_cache_bytes;               /* DRAM left for routed experts */
    double read[ST_TIER_COUNT];                /* bytes one decode token reads per tier */
    double fast_share;                         /* fraction of routed-expert reads served by GPU/DRAM */
    double seconds_overlap, seconds_serial;    /* one decode token */
    double tok_s, tok_s_serial;
    /* The prediction: the same with the data dependency of decoding: the next
     * token's expert reads can start only once the head has picked that token,
     * so the head's read (on its tier) does not overlap them; everything else
     * does. Between the two above: the best any engine does without guessing
     * the next token (tok_s is the bound with the next token known early). */
    double seconds_dependent, tok_s_dependent;
} st_plan;

/* 0, or ST_ERR_BUDGET when the pinned classes do not fit the GPU + DRAM
 * budgets (message: what is needed and what is there), ST_ERR_INVALID. */
int st_plan_compute(const st_plan_input *in, st_plan *out);

#endif
