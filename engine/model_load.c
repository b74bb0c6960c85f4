/* Loading a checkpoint into an st_model: config, tensors bound by canonical
 * name with every shape checked against the config, RoPE tables, the pool.
 * Owns the checkpoint handle and every buffer it allocates; st_model_free
 * releases them. Never runs anything on a model that failed a check. The
 * weights that stay in DRAM are placed by model_resident.c. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/formats.h"
#include "cpu/mem.h"
#include "cpu/numa.h"
#include "engine/config.h"
#include "engine/model.h"
#include "engine/model_bind.h"
#include "engine/model_load_internal.h"
#include "engine/model_gpu.h"
#include "engine/model_stream.h"
#include "engine/tensor_names.h"
#include "io/safetensors.h"


int st_loader_own(loader *ld, void *p) {
    if (ld->n_owned == ld->cap_owned) {
        int cap = ld->cap_owned ? ld->cap_owned * 2 : 256;
        void **o = realloc(ld->owned, (size_t)cap * sizeof *o);
        if (!o) return st_error(ST_ERR_NOMEM, "loader: out of memory");
        ld->owned = o;
        ld->cap_owned = cap;
    }
    ld->owned[ld->n_owned++] = p;
    return 0;
}

static int bind_lookup(void *ctx, const char *name, st_bind_tensor *out) {
    loader *ld = ctx;
    st_tensor_view v;
    int rc = st_checkpoint_lookup(ld->ck, name, &v);
    if (rc) return rc;
    out->dtype = v.dtype;
    out->ndim = v.ndim;
    for (int i = 0; i < v.ndim && i < 8; i++) out->shape[i] = v.shape[i];
    out->data = v.data;
    return 0;
}

/* F32 copy helpers that record ownership. */
static int vec(loader *ld, const st_bind_src *src, float **dst, int64_t n1, int64_t n2, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static int vec(loader *ld, const st_bind_src *src, float **dst, int64_t n1, int64_t n2, const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int rc = st_bind_f32(src, name, n1, n2, dst);
    return rc ? rc : st_loader_own(ld, *dst);
}

static int mat(const st_bind_src *src, st_weight *w, int64_t rows, int64_t cols, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int mat(const st_bind_src *src, st_weight *w, int64_t rows, int64_t cols, const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return st_bind_matrix(src, name, rows, cols, w);
}

/* An F32 matrix (rows, cols) owned by the loader, wrapped as an st_weight. */
static int f32_weight(loader *ld, const st_bind_src *src, st_weight *w, int64_t rows, int64_t cols, const char *name) {
    float *v;
    int rc = vec(ld, src, &v, rows, cols, "%s", name);
    if (rc) return rc;
    *w = (st_weight){.fmt = ST_WF_F32, .rows = rows, .cols = cols, .data = v};
    return 0;
}

/* wo_a is applied per group of o_lora_rank rows: FP8 row views need the group
 * boundary on a 128-row block; otherwise dequantise it (the official code runs
 * it dequantised anyway). */
static int prepare_wo_a(loader *ld, st_weight *w, int64_t group_rows) {
    if (w->fmt != ST_WF_FP8 || group_rows % 128 == 0) return 0;
    float *v = malloc((size_t)(w->rows * w->cols) * sizeof(float));
    if (!v) return st_error(ST_ERR_NOMEM, "wo_a: out of memory");
    st_dequant_rows(w, 0, w->rows, v);
    *w = (st_weight){.fmt = ST_WF_F32, .rows = w->rows, .cols = w->cols, .data = v};
    return st_loader_own(ld, v);
}

static int bind_compressor(loader *ld, const st_bind_src *src, st_compressor_w *c, const char *pre, int ratio,
                           int64_t d, bool overlap, bool rotate, int64_t dim) {
    const int64_t w = (overlap ? 2 : 1) * d;
    c->ratio = ratio;
    c->overlap = overlap;
    c->rotate = rotate;
    c->d = d;
    int rc;
    if ((rc = mat(src, &c->wkv, w, dim, "%s.wkv", pre)) || (rc = mat(src, &c->wgate, w, dim, "%s.wgate", pre))) return rc;
    float *ape;
    if ((rc = vec(ld, src, &ape, ratio, w, "%s.ape", pre))) return rc;
    c->ape = ape;
    return vec(ld, src, &c->norm, d, -1, "%s.norm.weight", pre);
}

static int rope_table(loader *ld, const st_config *cfg, bool compressed, float **out) {
    st_rope_cfg rc = {.rope_dims = cfg->rope_head_dim, .theta = compressed ? cfg->compress_rope_theta : cfg->rope_theta};
    if (compressed && cfg->rope_factor > 0 && cfg->original_seq_len > 0) {
        rc.yarn = cfg->yarn;
        rc.factor = cfg->rope_factor;
        rc.original_max_pos = cfg->original_seq_len;
        rc.beta_fast = cfg->beta_fast;
        rc.beta_slow = cfg->beta_slow;
    }
    float *f = malloc((size_t)(cfg->rope_head_dim / 2) * sizeof(float));
    if (!f) return st_error(ST_ERR_NOMEM, "rope: out of memory");
    st_rope_inv_freq(&rc, f);
    *out = f;
    return st_loader_own(ld, f);
}


/* A hash layer's table: every entry an expert id, distinct within a token's row
 * (the MoE groups a step's tokens by expert and counts each pair once; a
 * repeated or out-of-range id corrupted the heap). */
static int check_tid2eid(const int64_t *t, int64_t vocab, int64_t K, int64_t E, const char *name) {
    int64_t *seen = malloc((size_t)E * sizeof *seen); /* seen[e] = 1 + the last row that listed e */
    if (!seen) return st_error(ST_ERR_NOMEM, "out of memory");
    for (int64_t e = 0; e < E; e++) seen[e] = 0;
    int rc = 0;
    for (int64_t r = 0; r < vocab && !rc; r++)
        for (int64_t k = 0; k < K && !rc; k++) {
            const int64_t e = t[r * K + k];
            if (e < 0 || e >= E)
                rc = st_error(ST_ERR_FORMAT, "%s: token %lld, entry %lld: expected an expert id in [0, %lld), found %lld",
                              name, (long long)r, (long long)k, (long long)E, (long long)e);
            else if (seen[e] == r + 1)
                rc = st_error(ST_ERR_FORMAT, "%s: token %lld lists expert %lld twice (expected %lld distinct experts)",
                              name, (long long)r, (long long)e, (long long)K);
            else seen[e] = r + 1;
        }
    free(seen);
    return rc;
}
static int bind_layer(loader *ld, const st_bind_src *src, const st_config *cfg, int i, st_layer_w *L, float *rope_plain,
                      float *rope_comp) {
    const int64_t dim = cfg->dim, hd = cfg->head_dim, H = cfg->n_heads, hc = cfg->hc_mult;
    const int64_t mix = (2 + hc) * hc;
    int rc;
    L->index = i;
    for (int s = 0; s < 2; s++) {
        const char *site = s ? "ffn" : "attn";
        st_hc_site *h = s ? &L->hc_ffn : &L->hc_attn;
        char nm[96];
        snprintf(nm, sizeof nm, "layers.%d.hc_%s_fn", i, site);
        float *base, *scale;
        if ((rc = f32_weight(ld, src, &h->fn, mix, hc * dim, nm)) ||
            (rc = vec(ld, src, &base, mix, -1, "layers.%d.hc_%s_base", i, site)) ||
            (rc = vec(ld, src, &scale, 3, -1, "layers.%d.hc_%s_scale", i, site)))
            return rc;
        h->base = base;
        h->scale = scale;
    }
    if ((rc = vec(ld, src, &L->attn_norm, dim, -1, "layers.%d.attn_norm.weight", i)) ||
        (rc = vec(ld, src, &L->ffn_norm, dim, -1, "layers.%d.ffn_norm.weight", i)))
        return rc;

    st_attn_w *a = &L->attn;
    a->kind = (st_layer_kind)cfg->layer_kind[i];
    a->n_heads = (int)H;
    a->o_groups = cfg->o_groups;
    a->window = cfg->window_size;
    a->head_dim = hd;
    a->rope_dims = cfg->rope_head_dim;
    a->q_lora_rank = cfg->q_lora_rank;
    a->o_lora_rank = cfg->o_lora_rank;
    a->eps = cfg->norm_eps;
    a->inv_freq = a->kind == ST_LAYER_WINDOW ? rope_plain : rope_comp;
    char pre[64];
    snprintf(pre, sizeof pre, "layers.%d.attn", i);
    float *sink;
    if ((rc = mat(src, &a->wq_a, cfg->q_lora_rank, dim, "%s.wq_a", pre)) ||
        (rc = vec(ld, src, &a->q_norm, cfg->q_lora_rank, -1, "%s.q_norm.weight", pre)) ||
        (rc = mat(src, &a->wq_b, H * hd, cfg->q_lora_rank, "%s.wq_b", pre)) ||
        (rc = mat(src, &a->wkv, hd, dim, "%s.wkv", pre)) ||
        (rc = vec(ld, src, &a->kv_norm, hd, -1, "%s.kv_norm.weight", pre)) ||
        (rc = mat(src, &a->wo_a, (int64_t)cfg->o_groups * cfg->o_lora_rank, H * hd / cfg->o_groups, "%s.wo_a", pre)) ||
        (rc = prepare_wo_a(ld, &a->wo_a, cfg->o_lora_rank)) ||
        (rc = mat(src, &a->wo_b, dim, (int64_t)cfg->o_groups * cfg->o_lora_rank, "%s.wo_b", pre)) ||
        (rc = vec(ld, src, &sink, H, -1, "%s.attn_sink", pre)))
        return rc;
    a->sink = sink;
    if (a->kind != ST_LAYER_WINDOW) {
        const bool csa = a->kind == ST_LAYER_CSA;
        char cp[96];
        snprintf(cp, sizeof cp, "%s.compressor", pre);
        if ((rc = bind_compressor(ld, src, &a->comp, cp, cfg->compress_ratio[i], hd, csa, false, dim))) return rc;
        if (csa) {
            st_indexer_w *x = &a->idx;
            x->n_heads = cfg->index_n_heads;
            x->head_dim = cfg->index_head_dim;
            x->topk = cfg->index_topk;
            snprintf(cp, sizeof cp, "%s.indexer.compressor", pre);
            if ((rc = mat(src, &x->wq_b, (int64_t)x->n_heads * x->head_dim, cfg->q_lora_rank, "%s.indexer.wq_b", pre)) ||
                (rc = mat(src, &x->weights_proj, x->n_heads, dim, "%s.indexer.weights_proj", pre)) ||
                (rc = bind_compressor(ld, src, &x->comp, cp, cfg->compress_ratio[i], x->head_dim, true, true, dim)))
                return rc;
        }
    }

    st_moe_w *m = &L->moe;
    const int64_t E = cfg->n_routed_experts, K = cfg->n_activated_experts, I = cfg->moe_inter_dim;
    m->n_experts = (int)E;
    m->top_k = (int)K;
    m->hash = i < cfg->n_hash_layers;
    m->score_func = cfg->score_func;
    m->route_scale = cfg->route_scale;
    m->swiglu_limit = cfg->swiglu_limit;
    snprintf(pre, sizeof pre, "layers.%d.ffn", i);
    if ((rc = mat(src, &m->gate, E, dim, "%s.gate", pre))) return rc;
    char nm[128];
    if (m->hash) {
        snprintf(nm, sizeof nm, "%s.gate.tid2eid", pre);
        if ((rc = st_bind_i64(src, nm, cfg->vocab_size, K, &m->tid2eid)) || (rc = st_loader_own(ld, m->tid2eid))) return rc;
        if ((rc = check_tid2eid(m->tid2eid, cfg->vocab_size, K, E, nm))) return rc;
    } else {
        float *bias;
        if ((rc = vec(ld, src, &bias, E, -1, "%s.gate.bias", pre))) return rc;
        m->gate_bias = bias;
    }
    m->experts = calloc((size_t)E, sizeof *m->experts);
    if (!m->experts || (rc = st_loader_own(ld, m->experts))) return m->experts ? rc : st_error(ST_ERR_NOMEM, "out of memory");
    for (int64_t e = 0; e < E; e++) {
        st_expert_w *x = &m->experts[e];
        if ((rc = mat(src, &x->w1, I, dim, "%s.experts.%lld.w1", pre, (long long)e)) ||
            (rc = mat(src, &x->w2, dim, I, "%s.experts.%lld.w2", pre, (long long)e)) ||
            (rc = mat(src, &x->w3, I, dim, "%s.experts.%lld.w3", pre, (long long)e)))
            return rc;
    }
    m->has_shared = cfg->n_shared_experts > 0;
    if (m->has_shared) {
        const int64_t SI = I * cfg->n_shared_experts;
        if ((rc = mat(src, &m->shared.w1, SI, dim, "%s.shared_experts.w1", pre)) ||
            (rc = mat(src, &m->shared.w2, dim, SI, "%s.shared_experts.w2", pre)) ||
            (rc = mat(src, &m->shared.w3, SI, dim, "%s.shared_experts.w3", pre)))
            return rc;
    }
    return 0;
}

/* Bytes one decode token reads: everything but the routed experts and the
 * embedding table, plus top_k average routed experts and one embedding row. */
static uint64_t decode_bytes(const st_model *m) {
    st_weight row = m->embed;
    row.rows = 1; /* one embedding row, in whatever format the table is stored */
    uint64_t b = st_weight_bytes(&m->head) + st_weight_bytes(&m->hc_head.fn) + st_weight_bytes(&row);
    for (int l = 0; l < m->n_layers; l++) {
        const st_layer_w *L = &m->layers[l];
        const st_attn_w *a = &L->attn;
        b += st_weight_bytes(&L->hc_attn.fn) + st_weight_bytes(&L->hc_ffn.fn);
        b += st_weight_bytes(&a->wq_a) + st_weight_bytes(&a->wq_b) + st_weight_bytes(&a->wkv) + st_weight_bytes(&a->wo_a) +
             st_weight_bytes(&a->wo_b);
        if (a->kind != ST_LAYER_WINDOW) b += st_weight_bytes(&a->comp.wkv) + st_weight_bytes(&a->comp.wgate);
        if (a->kind == ST_LAYER_CSA)
            b += st_weight_bytes(&a->idx.wq_b) + st_weight_bytes(&a->idx.weights_proj) + st_weight_bytes(&a->idx.comp.wkv) +
                 st_weight_bytes(&a->idx.comp.wgate);
        const st_moe_w *mo = &L->moe;
        b += st_weight_bytes(&mo->gate);
        if (mo->has_shared) b += st_weight_bytes(&mo->shared.w1) + st_weight_bytes(&mo->shared.w2) + st_weight_bytes(&mo->shared.w3);
        const st_expert_w *e = &mo->experts[0];
        b += (uint64_t)mo->top_k * (st_weight_bytes(&e->w1) + st_weight_bytes(&e->w2) + st_weight_bytes(&e->w3));
    }
    return b;
}

static uint64_t expert_bytes(const st_expert_w *e) { return st_weight_bytes(&e->w1) + st_weight_bytes(&e->w2) + st_weight_bytes(&e->w3); }

/* DRAM the model holds whatever the budget: every weight but the routed
 * experts (read through the mapping or copied), tid2eid tables, small vectors. */
static uint64_t pinned_bytes(const st_model *m, const st_config *cfg) {
    uint64_t b = st_weight_bytes(&m->embed) + st_weight_bytes(&m->head) + st_weight_bytes(&m->hc_head.fn) + (uint64_t)m->dim * 4;
    for (int l = 0; l < m->n_layers; l++) {
        const st_layer_w *L = &m->layers[l];
        const st_attn_w *a = &L->attn;
        const st_moe_w *mo = &L->moe;
        b += st_weight_bytes(&L->hc_attn.fn) + st_weight_bytes(&L->hc_ffn.fn) + (uint64_t)m->dim * 8;
        b += st_weight_bytes(&a->wq_a) + st_weight_bytes(&a->wq_b) + st_weight_bytes(&a->wkv) + st_weight_bytes(&a->wo_a) +
             st_weight_bytes(&a->wo_b);
        if (a->kind != ST_LAYER_WINDOW) b += st_weight_bytes(&a->comp.wkv) + st_weight_bytes(&a->comp.wgate);
        if (a->kind == ST_LAYER_CSA)
            b += st_weight_bytes(&a->idx.wq_b) + st_weight_bytes(&a->idx.weights_proj) + st_weight_bytes(&a->idx.comp.wkv) +
                 st_weight_bytes(&a->idx.comp.wgate);
        b += st_weight_bytes(&mo->gate) + (uint64_t)mo->n_experts * 4;
        if (mo->hash) b += (uint64_t)cfg->vocab_size * (uint64_t)mo->top_k * sizeof(int64_t);
        if (mo->has_shared) b += expert_bytes(&mo->shared);
    }
    return b;
}

uint64_t st_model_routed_bytes(const st_model *m) {
    uint64_t routed = 0;
    for (int l = 0; l < m->n_layers; l++)
        for (int e = 0; e < m->layers[l].moe.n_experts; e++) routed += expert_bytes(&m->layers[l].moe.experts[e]);
    return routed;
}

/* NUMA nodes the pool's threads run on (--numa auto), 1 when not several. */
static int thread_nodes(const st_model *m) {
    st_numa *numa = NULL;
    st_numa_plan *plan = NULL;
    int active = 0;
    if (!st_numa_new_env(&numa) && !st_numa_plan_new(numa, st_pool_size(m->pool), &plan))
        active = st_numa_plan_active_nodes(plan);
    st_error_clear(); /* no topology: one node */
    st_numa_plan_free(plan);
    st_numa_free(numa);
    return ST_MAX(active, 1);
}

/* Every routed expert fits, but the threads run on several NUMA nodes: the
 * per-node expert streams hold all of them, each in the memory of the node
 * whose threads compute it, read there once at load (not the page cache's
 * pages, which sit wherever the kernel put them). */
static int experts_on_their_nodes(st_model *m, loader *ld, const st_model_opts *o, int nodes, uint64_t budget_left) {
    st_model_opts per_node = *o;
    /* every expert a slot, plus a few per node for the split's rounding (or what the budget leaves) */
    if (budget_left) per_node.expert_cache = budget_left;
    else per_node.expert_slots = m->n_layers * m->layers[0].moe.n_experts + 4 * nodes;
    int rc = st_model_stream_attach(m, ld->ck, &ld->cfg, &per_node, per_node.expert_cache, &ld->stream);
    if (!rc) rc = st_model_stream_preload(ld->stream, !o->quiet);
    return rc;
}

uint64_t st_model_default_dram_budget(uint64_t *available) {
    const uint64_t avail = st_mem_available();
    if (available) *available = avail;
    return avail / 10 * 9;
}

/* With a DRAM budget that cannot hold every routed expert (or an explicit
 * expert cache), the experts stream from the checkpoint into slots. */
static int place_experts(st_model *m, loader *ld, const st_model_opts *o) {
    uint64_t routed = st_model_routed_bytes(m), cache = o->expert_cache;
    if (!cache && !o->expert_slots) {
        const int nodes = o->numa == 0 && !getenv("STRATA_NUMA_MAPPED") ? thread_nodes(m) : 1;
        const uint64_t pinned = pinned_bytes(m, &ld->cfg);
        char a[32], b[32], c[32];
        uint64_t budget = o->dram_budget;
        /* no budget given: everything resident when it fits in 90% of the memory available now
           (the rest for KV, activations and the system), else that 90% becomes the budget, so a
           model larger than memory streams its experts instead of paging through the mapping */
        uint64_t avail = 0;
        const uint64_t room = budget || o->dram_unlimited ? 0 : st_model_default_dram_budget(&avail);
        const bool automatic = avail && pinned + routed > room;
        if (automatic) {
            if (pinned >= room)
                return st_error(ST_ERR_BUDGET, "the weights that stay in DRAM (%s: attention, shared experts, "
                                "embeddings, head, routers) do not fit in 90%% of the memory available (%s of %s); "
                                "routed experts need more on top (%s in all)", st_fmt_size(pinned, a, sizeof a),
                                st_fmt_size(room, b, sizeof b), st_fmt_size(avail, c, sizeof c),
                                st_fmt_size(routed, (char[32]){0}, 32));
            budget = room;
            ST_WARN("the weights (%s) do not fit in 90%% of the memory available (%s): routed experts stream from "
                    "the checkpoint through a DRAM budget of %s (--dram-budget SIZE sets it)",
                    st_fmt_size(pinned + routed, a, sizeof a), st_fmt_size(avail, b, sizeof b),
                    st_fmt_size(budget, c, sizeof c));
        }
        if (!budget) return nodes > 1 ? experts_on_their_nodes(m, ld, o, nodes, 0) : 0;
        if (budget >= pinned + routed) /* everything fits: no streaming */
            return nodes > 1 ? experts_on_their_nodes(m, ld, o, nodes, budget - pinned) : 0;
        if (budget <= pinned)
            return st_error(ST_ERR_BUDGET, "DRAM budget %s is below the weights that stay in DRAM (%s: attention, shared "
                            "experts, embeddings, head, routers); routed experts need more on top (%s in all)",
                            st_fmt_size(budget, a, sizeof a), st_fmt_size(pinned, b, sizeof b),
                            st_fmt_size(routed, c, sizeof c));
        cache = budget - pinned;
        int rc = st_model_stream_attach(m, ld->ck, &ld->cfg, o, cache, &ld->stream);
        if (rc == ST_ERR_BUDGET) { /* say where the expert cache's bytes came from */
            char why[512];
            snprintf(why, sizeof why, "%s", st_last_error());
            return st_error(rc, "DRAM budget %s%s leaves %s for routed experts after the weights that stay in DRAM (%s): %s",
                            st_fmt_size(budget, a, sizeof a), automatic ? " (90% of the memory available)" : "",
                            st_fmt_size(cache, c, sizeof c), st_fmt_size(pinned, b, sizeof b), why);
        }
        return rc;
    }
    return st_model_stream_attach(m, ld->ck, &ld->cfg, o, cache, &ld->stream);
}

/* --numa N names a node of this machine (or of STRATA_TOPOLOGY) even when nothing streams:
 * a typo must not pass silently because the model happened to fit. */
static int check_numa_node(int node) {
    st_numa *numa = NULL;
    int rc = st_numa_new_env(&numa);
    if (rc) return rc;
    bool found = false;
    for (int i = 0; i < st_numa_node_count(numa); i++) found |= st_numa_node_at(numa, i)->os_index == node;
    st_numa_free(numa);
    return found ? 0 : st_error(ST_ERR_INVALID, "--numa %d: this machine has no NUMA node %d", node, node);
}

int st_model_load(const char *path, const st_model_opts *opts, st_model **out) {
    *out = NULL;
    st_model *m = calloc(1, sizeof *m);
    loader *ld = calloc(1, sizeof *ld);
    if (!m || !ld) { free(m); free(ld); return st_error(ST_ERR_NOMEM, "model: out of memory"); }
    m->loader = ld;
    int rc;
    if ((rc = st_config_load(path, &ld->cfg))) goto fail;
    const st_config *cfg = &ld->cfg;
    if ((rc = st_config_check_engine(cfg, "config"))) goto fail;
    if ((rc = st_checkpoint_open(path, cfg, &ld->ck))) goto fail;
    if ((rc = st_checkpoint_check(ld->ck, cfg))) goto fail;
    st_bind_src src = {.lookup = bind_lookup, .ctx = ld};

    m->n_layers = cfg->n_layers;
    m->dim = cfg->dim;
    m->vocab = cfg->vocab_size;
    m->norm_eps = cfg->norm_eps;
    m->hcd = (st_hc_dims){.hc = cfg->hc_mult, .dim = cfg->dim, .sinkhorn_iters = cfg->hc_sinkhorn_iters,
                          .hc_eps = cfg->hc_eps, .norm_eps = cfg->norm_eps};
    m->numerics = opts ? opts->numerics : ST_NUMERICS_OFFICIAL;
    m->chunk = opts && opts->chunk > 0 ? opts->chunk : 2048;
    float *rope_plain, *rope_comp;
    if ((rc = rope_table(ld, cfg, false, &rope_plain)) || (rc = rope_table(ld, cfg, true, &rope_comp))) goto fail;
    m->layers = calloc((size_t)m->n_layers, sizeof *m->layers);
    if (!m->layers) { rc = st_error(ST_ERR_NOMEM, "model: out of memory"); goto fail; }
    for (int i = 0; i < m->n_layers; i++)
        if ((rc = bind_layer(ld, &src, cfg, i, &m->layers[i], rope_plain, rope_comp))) goto fail;
    float *base, *scale;
    if ((rc = st_bind_matrix(&src, "embed", cfg->vocab_size, cfg->dim, &m->embed)) ||
        (rc = st_bind_matrix(&src, "head", cfg->vocab_size, cfg->dim, &m->head)) ||
        (rc = vec(ld, &src, &m->norm, cfg->dim, -1, "norm.weight")) ||
        (rc = f32_weight(ld, &src, &m->hc_head.fn, cfg->hc_mult, (int64_t)cfg->hc_mult * cfg->dim, "hc_head_fn")) ||
        (rc = vec(ld, &src, &base, cfg->hc_mult, -1, "hc_head_base")) ||
        (rc = vec(ld, &src, &scale, 1, -1, "hc_head_scale")))
        goto fail;
    m->hc_head.base = base;
    m->hc_head.scale = scale;
    if (opts && opts->numa > 0 && (rc = check_numa_node(opts->numa - 1))) goto fail;
    if ((rc = st_pool_new(opts ? opts->threads : 0, true, &m->pool))) goto fail;
    m->bytes_per_token = decode_bytes(m);
    if (opts && (rc = place_experts(m, ld, opts))) goto fail;
    if ((rc = st_loader_make_resident(m, ld, opts))) goto fail;
    if ((rc = st_model_gpu_attach(m, opts))) goto fail;
    *out = m;
    return 0;
fail:
    /* name the model once: the checkpoint reader's errors often start with the path already */
    if (strncmp(st_last_error(), path, strlen(path)) != 0) st_error_prefix(rc, "%s: ", path);
    st_model_free(m);
    return rc;
}

void st_model_free(st_model *m) {
    if (!m) return;
    st_model_gpu_detach(m); /* before the DRAM tier its copies come from */
    loader *ld = m->loader;
    if (ld) {
        st_model_stream_free(ld->stream);
        for (int i = 0; i < ld->n_owned; i++) free(ld->owned[i]);
        for (int i = 0; i < ld->n_copies; i++) st_mem_free(NULL, ld->copies[i].p, ld->copies[i].bytes);
        free(ld->copies);
        free(ld->owned);
        st_checkpoint_close(ld->ck);
        st_config_free(&ld->cfg);
        free(ld);
    }
    st_pool_free(m->pool);
    free(m->layers);
    free(m);
}
