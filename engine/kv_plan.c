/* KV and weight accounting (see kv_plan.h).
 *
 * Official cache entry: the nope dims in e4m3 with one ue8m0 scale byte per 64,
 * the rope dims in bf16 (448 + 7 + 128 = 583 bytes at head_dim 512). Indexer
 * key: e2m1 with one scale byte per 32 (64 + 4 = 68 bytes at 128). A layer of
 * ratio m stores ctx/m entries; CSA adds one indexer key per entry; every layer
 * keeps a ring of window entries. V3.2's MLA cache: 656 bytes (512 fp8 + 4 F32
 * scales + 64 bf16 rope) plus a 132-byte indexer key per token per layer. */
#include "engine/kv_plan.h"

#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "engine/tensor_names.h"

void st_kv_plan_compute(const st_config *cfg, int64_t ctx, bool f32, st_kv_plan *p) {
    memset(p, 0, sizeof *p);
    p->ctx = ctx;
    const int64_t hd = cfg->head_dim, rd = cfg->rope_head_dim, id = cfg->index_head_dim;
    p->entry_bytes = f32 ? 4.0 * (double)hd : (double)(hd - rd) + (double)ST_DIV_UP(hd - rd, 64) + 2.0 * (double)rd;
    p->index_key_bytes = f32 ? 4.0 * (double)id : (double)id / 2 + (double)ST_DIV_UP(id, 32);
    const int n = cfg->n_layers + cfg->n_mtp_layers;
    for (int i = 0; i < n; i++) {
        int k = cfg->layer_kind[i], m = cfg->compress_ratio[i];
        p->n_layers[k]++;
        p->window_bytes += (uint64_t)((double)ST_MIN((int64_t)cfg->window_size, ctx) * p->entry_bytes);
        if (k == ST_ATTN_WINDOW || m <= 0) continue;
        double entries = (double)(ctx / m);
        double b = entries * p->entry_bytes + (k == ST_ATTN_CSA ? entries * p->index_key_bytes : 0);
        p->kind_bytes[k] += (uint64_t)b;
    }
    p->total_bytes = p->window_bytes + p->kind_bytes[ST_ATTN_CSA] + p->kind_bytes[ST_ATTN_HCA];
    p->v32_mla_bytes = (uint64_t)(788.0 * 61.0 * (double)ctx);
    p->same_depth_mla_bytes = (uint64_t)(788.0 * (double)n * (double)ctx);
}

static uint64_t matrix_bytes(st_weight_kind k, int64_t r, int64_t c) {
    switch (k) {
    case ST_WK_FP8: return (uint64_t)(r * c) + (uint64_t)(ST_DIV_UP(r, 128) * ST_DIV_UP(c, 128));
    case ST_WK_FP4: return (uint64_t)(r * c / 2) + (uint64_t)(r * (c / 32));
    case ST_WK_BF16: return (uint64_t)(r * c * 2);
    case ST_WK_F32: return (uint64_t)(r * c * 4);
    }
    return 0;
}

int st_weight_plan_compute(const st_config *cfg, st_weight_plan *w) {
    memset(w, 0, sizeof *w);
    st_tensor_spec *specs;
    int n;
    int rc = st_tensor_specs(cfg, 0, &specs, &n);
    if (rc) return rc;
    for (int i = 0; i < n; i++) {
        const st_tensor_spec *s = &specs[i];
        int64_t r = s->shape[0], c = s->ndim > 1 ? s->shape[1] : 1;
        uint64_t b = s->family == ST_TF_MATRIX ? matrix_bytes(s->preferred, r, c)
                     : s->family == ST_TF_INDEX ? (uint64_t)(r * c * 8)
                                                : (uint64_t)(r * c * (strstr(s->name, "norm") ? 2 : 4));
        if (strstr(s->name, ".experts.")) {
            w->routed += b;
            if (!strncmp(s->name, "layers.0.ffn.experts.0.", 23)) w->routed_one += b;
        } else if (strstr(s->name, "shared_experts")) w->shared += b;
        else if (strstr(s->name, ".attn.")) w->attention += b;
        else if (!strcmp(s->name, "embed.weight") || !strcmp(s->name, "head.weight")) w->embed_head += b;
        else w->other += b;
        w->total += b;
    }
    free(specs);
    return 0;
}

void st_plan_input_from_model(const st_config *cfg, const st_weight_plan *w, const st_kv_plan *kv, st_plan_input *in) {
    uint64_t embed = (uint64_t)cfg->vocab_size * (uint64_t)cfg->dim * 2; /* bf16 table */
    if (embed > w->embed_head) embed = w->embed_head / 2;
    in->class_bytes[ST_PLAN_ATTENTION] = in->class_read[ST_PLAN_ATTENTION] = w->attention;
    in->class_bytes[ST_PLAN_SHARED] = in->class_read[ST_PLAN_SHARED] = w->shared;
    in->class_bytes[ST_PLAN_NORMS_ROUTERS] = in->class_read[ST_PLAN_NORMS_ROUTERS] = w->other;
    in->class_bytes[ST_PLAN_EMBED] = embed;
    in->class_read[ST_PLAN_EMBED] = (uint64_t)cfg->dim * 2;
    in->class_bytes[ST_PLAN_HEAD] = in->class_read[ST_PLAN_HEAD] = w->embed_head - embed;
    in->class_bytes[ST_PLAN_WINDOW_KV] = in->class_read[ST_PLAN_WINDOW_KV] = kv->window_bytes;
    in->n_layers = cfg->n_layers;
    in->n_experts = cfg->n_routed_experts;
    in->top_k = cfg->n_activated_experts;
    in->expert_bytes = w->routed_one;
}
