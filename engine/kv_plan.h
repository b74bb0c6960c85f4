/* KV-cache and weight accounting from a config alone (no weights needed):
 * what N tokens of context cost per layer kind, against a V3.2-style MLA cache,
 * and how the checkpoint's bytes split by tensor class. */
#ifndef ST_ENGINE_KV_PLAN_H
#define ST_ENGINE_KV_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/config.h"
#include "offload/plan.h"

typedef struct st_kv_plan {
    int64_t ctx;
    int n_layers[3];            /* per kind (window, CSA, HCA), main layers + MTP */
    double entry_bytes;         /* one main KV entry (583 in the official cache) */
    double index_key_bytes;     /* one indexer key (68 official) */
    uint64_t window_bytes;      /* all layers' rings */
    uint64_t kind_bytes[3];     /* compressed entries (+ indexer keys on CSA) per kind, excluding rings */
    uint64_t total_bytes;
    uint64_t v32_mla_bytes;     /* DeepSeek-V3.2's cache at the same context: 61 layers x 788 B/token */
    uint64_t same_depth_mla_bytes; /* a V3.2-style cache with this model's layer count */
} st_kv_plan;

/* f32: the cache kept in F32 (--kv-dtype f32) instead of the official layout. */
void st_kv_plan_compute(const st_config *cfg, int64_t ctx, bool f32, st_kv_plan *out);

typedef struct st_weight_plan {
    uint64_t routed, shared, attention, embed_head, other, total;
    uint64_t routed_one; /* one routed expert (w1, w2, w3 + scales) */
} st_weight_plan;

int st_weight_plan_compute(const st_config *cfg, st_weight_plan *out);

/* The placement plan's model side (offload/plan.h): bytes held and read by one decode
 * token per class (every pinned class, one embedding row, the window KV), layers,
 * experts and top_k. Leaves budgets, bandwidths and expert_use as they are. */
void st_plan_input_from_model(const st_config *cfg, const st_weight_plan *w, const st_kv_plan *kv, st_plan_input *in);

#endif
