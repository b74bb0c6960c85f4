/* The model's GPU tier (see model_gpu.h): sizes the slots for the largest
 * routed expert, charges everything to --gpu-mem, and serves the resident
 * experts through st_expert_source.get when nothing streams (the forward pass
 * only hands a source to the MoE when get is set). Must never change what the
 * forward pass computes: the tier only decides where an expert runs. */
#include "engine/model_gpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"

static int resident_get(void *ctx, int layer, int expert, const st_expert_w **out) {
    st_model *m = ctx;
    *out = &m->layers[layer].moe.experts[expert];
    return 0;
}

static void resident_put(void *ctx, int layer, int expert) { (void)ctx, (void)layer, (void)expert; }

int st_model_gpu_attach(st_model *m, const st_model_opts *o) {
    if (!o || !o->gpu_mem) return 0;
    char a[32], b[32], c[32];
    st_gpu_dev *dev = NULL;
    const char *why = "";
    int rc = st_gpu_dev_open(st_moe_expert_host, &dev, &why);
    if (rc) return rc;
    if (!dev) {
        ST_WARN("--gpu-mem %s: no GPU (%s): DRAM and NVMe tiers only", st_fmt_size(o->gpu_mem, a, sizeof a), why);
        return 0;
    }
    const int E = m->layers[0].moe.n_experts;
    st_gpu_experts_opts go = {.budget = o->gpu_mem, .n_slots = o->gpu_slots, .n_layers = m->n_layers, .n_experts = E,
                              .dim = m->dim, .rows = o->gpu_rows, .max_rows = ST_MIN(m->chunk, 256), .policy = (st_policy_kind)o->cache_policy,
                              .isa = (int)st_cpu_isa()};
    bool gpu_formats = true;
    for (int l = 0; l < m->n_layers; l++)
        for (int e = 0; e < E; e++) {
            const st_expert_w *x = &m->layers[l].moe.experts[e];
            uint64_t off[6];
            go.slot_bytes = ST_MAX(go.slot_bytes, st_gpu_expert_layout(x, off));
            go.inter = ST_MAX(go.inter, x->w1.rows);
            go.dim = ST_MAX(go.dim, ST_MAX(x->w1.cols, x->w2.rows));
            const st_weight *ws[3] = {&x->w1, &x->w3, &x->w2};
            for (int i = 0; i < 3; i++) gpu_formats &= ws[i]->fmt == ST_WF_FP4 || ws[i]->fmt == ST_WF_FP8;
        }
    if (!gpu_formats && strcmp(dev->ops->name, "emulated")) { /* the CUDA FFN takes FP4/FP8 experts only */
        ST_WARN("--gpu-mem %s: the routed experts are not all FP4/FP8: DRAM and NVMe tiers only",
                st_fmt_size(o->gpu_mem, a, sizeof a));
        st_gpu_dev_free(dev);
        return 0;
    }
    st_gpu_experts *g;
    if ((rc = st_gpu_experts_new(dev, &go, &g))) {
        st_gpu_dev_free(dev);
        return rc;
    }
    m->experts.gpu = g;
    if (!m->experts.get) m->experts = (st_expert_source){.get = resident_get, .put = resident_put, .ctx = m, .gpu = g};
    st_gpu_tier_stats s;
    st_gpu_experts_get_stats(g, &s);
    ST_INFO("GPU tier (%s): %d expert slots of %s, launches of %lld token rows, %s in all of --gpu-mem %s", s.device,
            s.n_slots, st_fmt_size(s.slot_bytes, a, sizeof a), (long long)s.rows, st_fmt_size(s.used, b, sizeof b),
            st_fmt_size(s.budget, c, sizeof c));
    return 0;
}

void st_model_gpu_detach(st_model *m) {
    if (!m || !m->experts.gpu) return;
    st_gpu_experts *g = m->experts.gpu;
    st_gpu_dev *dev = (st_gpu_dev *)st_gpu_experts_device(g);
    st_gpu_experts_free(g);
    st_gpu_dev_free(dev);
    if (m->experts.get == resident_get) m->experts = (st_expert_source){0};
    else m->experts.gpu = NULL;
}

int st_model_gpu_stats(const st_model *m, st_gpu_tier_stats *out) {
    if (!m->experts.gpu) return ST_ERR_NOT_FOUND;
    st_gpu_experts_get_stats(m->experts.gpu, out);
    return 0;
}

void st_model_gpu_summary(const st_model *m, char *buf, size_t len) {
    st_gpu_tier_stats s;
    if (len) buf[0] = 0;
    if (st_model_gpu_stats(m, &s)) return;
    char a[32], b[32], c[32];
    snprintf(buf, len, "GPU (%s) %d slots (%s of --gpu-mem %s), hit %.1f%% of %llu, copied %s", s.device, s.n_slots,
             st_fmt_size(s.peak, a, sizeof a), st_fmt_size(s.budget, b, sizeof b),
             s.uses ? 100.0 * (double)s.hits / (double)s.uses : 0.0, (unsigned long long)s.uses,
             st_fmt_size(s.bytes_copied, c, sizeof c));
}
