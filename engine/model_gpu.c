/* The model's GPU tier (see model_gpu.h): sizes the slots for the largest
 * routed expert, charges everything to --gpu-mem, and serves the resident
 * experts through st_expert_source.get when nothing streams (the forward pass
 * only hands a source to the MoE when get is set). Must never change what the
 * forward pass computes: the tier only decides where an expert runs.
 *
 * Where a miss runs (gpu_experts.h): on the device when it has at least min_rows
 * token rows, else on the CPU (and copied in afterwards). min_rows: st_model_opts
 * .gpu_min_rows, else STRATA_GPU_MIN_ROWS=N (tests, A/B), else the cost model
 * st_gpu_min_rows_model with stated defaults: PCIe 25 GB/s host->device (a
 * PCIe 4 x16 link's practical rate; faster links only make the device win
 * earlier), DRAM 40 GB/s, and the CPU's expert FFN per thread of the pool by
 * ISA: AVX-512 500 GFLOP/s (`strata bench kernels --threads 2` here: fp4_gemm
 * 1008 GFLOP/s on 2 threads with vpdpbusd; fp8_gemm 366), AVX2 125, generic 16
 * (both rates err on the CPU's side: a miss goes to the device only when that
 * clearly pays). A V4-Pro FP4 expert (7168 x 3072, ~34.6 MB) then goes from 11
 * rows on 2 AVX-512 threads, 84 on 16: decode stays on the CPU, prefill chunks
 * and large batches go to the device.
 *
 * With every expert resident in DRAM, the next layer's predicted experts are
 * copied to the device ahead of their use (resident_routed; off with
 * st_model_opts.no_prefetch / --prefetch off).
 *
 * The DRAM the copies read is page-locked at attach (pin_dram), so they overlap
 * the CPU's work instead of being staged by the driver; the tier undoes it when
 * it is freed, which st_model_free does before the DRAM tier. */
#include "engine/model_gpu.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "base/base.h"
#include "cpu/mem.h"
#include "cpu/pool.h"
#include "engine/model_stream.h"
#include "offload/expert_nodes.h"
#include "offload/expert_source.h"

static int resident_get(void *ctx, int layer, int expert, const st_expert_w **out) {
    st_model *m = ctx;
    *out = &m->layers[layer].moe.experts[expert];
    return 0;
}

static void resident_put(void *ctx, int layer, int expert) { (void)ctx, (void)layer, (void)expert; }

/* Every expert resident in DRAM (their copies never go): right after layer `layer` routed, the
 * next layer's gate on this layer's input predicts its experts (st_moe_predict, as the DRAM
 * stream does) and those the device does not hold are copied in on the copy stream while this
 * layer computes; a step that needs most experts gains nothing (its misses are many-row ones,
 * computed on the device anyway) and predicts nothing. */
static int resident_routed(void *ctx, int layer, const float *xn, const int32_t *tokens, int64_t T, const int32_t *ids) {
    (void)ids;
    st_model *m = ctx;
    st_gpu_experts *g = m->experts.gpu;
    if (!g || layer + 1 >= m->n_layers) return 0;
    const st_moe_w *nw = &m->layers[layer + 1].moe;
    const int K = nw->top_k, E = nw->n_experts;
    if (T * K >= E) return 0;
    int32_t *p = malloc((size_t)(T * K) * sizeof *p);
    float *w = malloc((size_t)(T * K) * sizeof *w);
    bool *mark = malloc((size_t)E * sizeof *mark);
    int *predicted = malloc((size_t)E * sizeof *predicted), n = 0;
    int rc = !p || !w || !mark || !predicted ? st_error(ST_ERR_NOMEM, "GPU tier: out of memory for a prediction") : 0;
    if (!rc) rc = st_moe_predict(m->pool, nw, xn, tokens, T, ST_MOE_PREDICT_TOP, p, w, mark, predicted, &n);
    for (int i = 0; i < n && !rc; i++) {
        const int e = predicted[i], r = st_gpu_experts_prefetch(g, layer + 1, e, &nw->experts[e]);
        if (r < 0) rc = r;
    }
    free(p);
    free(w);
    free(mark);
    free(predicted);
    return rc;
}

#define PCIE_BYTES_PER_S 25e9
#define DRAM_BYTES_PER_S 40e9

static double cpu_flops_per_thread(void) {
    switch (st_cpu_isa()) {
    case ST_ISA_AVX512: return 500e9;
    case ST_ISA_AVX2: return 125e9;
    default: return 16e9;
    }
}

/* The rows from which a miss runs on the device (see the top). */
static int min_rows(const st_model *m, const st_model_opts *o, uint64_t bytes, int64_t dim, int64_t inter, int64_t *out) {
    if (o->gpu_min_rows > 0) {
        *out = o->gpu_min_rows;
        return 0;
    }
    const char *env = getenv("STRATA_GPU_MIN_ROWS");
    if (env && *env) {
        char *end;
        errno = 0;
        long long v = strtoll(env, &end, 10);
        if (errno || *end || v <= 0)
            return st_error(ST_ERR_INVALID, "STRATA_GPU_MIN_ROWS: expected a positive number of token rows, found '%s'", env);
        *out = v;
        return 0;
    }
    const double flops = cpu_flops_per_thread() * (double)ST_MAX(st_pool_size(m->pool), 1);
    *out = st_gpu_min_rows_model(bytes, dim, inter, flops, DRAM_BYTES_PER_S, PCIE_BYTES_PER_S);
    return 0;
}

/* ---- page-locked DRAM ----
 * A copy from pageable memory is staged by the driver through its own pinned
 * buffer and is synchronous for the host: no overlap with the CPU's work. The
 * copies read an expert's DRAM copy: the DRAM expert cache's slots when experts
 * stream (one allocation per NUMA node's stream, registered whole), else the
 * resident experts where the loader left them, views of the checkpoint's
 * read-only mapping (registered read-only as page-aligned ranges merged where
 * they touch: a layer's experts lie together in a checkpoint, so a few ranges,
 * not one per tensor). A refusal (the pinned-memory limit, a mapping the driver
 * does not take) is one warning; the rest stays pageable and the run goes on. */
typedef struct host_range { uintptr_t lo, hi; } host_range;
typedef struct range_list { host_range *r; int n; int64_t cap; } range_list;

static int add_range(range_list *l, const void *p, uint64_t bytes, uintptr_t page) {
    if (!p || !bytes) return 0;
    int rc = st_grow((void **)&l->r, &l->cap, l->n + 1, sizeof *l->r);
    if (rc) return rc;
    const uintptr_t a = (uintptr_t)p;
    l->r[l->n++] = (host_range){a / page * page, (a + bytes + page - 1) / page * page};
    return 0;
}

static int cmp_range(const void *a, const void *b) {
    const host_range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Sorts and merges ranges that overlap or touch. */
static void merge_ranges(range_list *l) {
    if (!l->n) return;
    qsort(l->r, (size_t)l->n, sizeof *l->r, cmp_range);
    int k = 0;
    for (int i = 1; i < l->n; i++) {
        if (l->r[i].lo <= l->r[k].hi) l->r[k].hi = ST_MAX(l->r[k].hi, l->r[i].hi);
        else l->r[++k] = l->r[i];
    }
    l->n = k + 1;
}

/* The DRAM the tier's copies read (see above), page-locked. Only an error for
 * lack of host memory; a refusal by the device is a warning. */
static int pin_dram(st_model *m, st_gpu_experts *g) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    range_list l = {0};
    int rc = 0;
    const st_expert_nodes *en = st_model_expert_nodes(m);
    const bool read_only = !en; /* the checkpoint's mapping */
    if (en) {
        for (int i = 0; i < st_expert_nodes_count(en) && !rc; i++) {
            uint64_t bytes;
            void *p = st_expert_stream_slot_memory(st_expert_nodes_stream(en, i), &bytes);
            rc = add_range(&l, p, bytes, page);
        }
    } else {
        for (int layer = 0; layer < m->n_layers && !rc; layer++)
            for (int e = 0; e < m->layers[layer].moe.n_experts && !rc; e++) {
                const st_expert_w *x = &m->layers[layer].moe.experts[e];
                const st_weight *ws[3] = {&x->w1, &x->w3, &x->w2};
                for (int i = 0; i < 3 && !rc; i++) {
                    const st_weight *w = ws[i];
                    rc = add_range(&l, w->data, st_weight_data_bytes(w->fmt, w->rows, w->cols), page);
                    if (!rc && w->scale) rc = add_range(&l, w->scale, st_weight_scale_bytes(w->fmt, w->scale_fmt, w->rows, w->cols), page);
                }
            }
    }
    if (!en) merge_ranges(&l); /* the caches' allocations stay apart even where they happen to touch */
    uint64_t total = 0, done = 0;
    for (int i = 0; i < l.n; i++) total += l.r[i].hi - l.r[i].lo;
    const uint64_t ram = st_mem_limit();
    if (!rc && ram && total > ram / 10 * 9) { /* e.g. --dram-budget unlimited on a model larger than memory */
        char a[32], b[32];
        ST_WARN("GPU tier: the DRAM experts are copied from (%s, %s) do not fit in this process's memory (%s): "
                "not page-locked; their copies to the device are staged by the driver", st_fmt_size(total, a, sizeof a),
                read_only ? "the checkpoint's mapping" : "the DRAM expert cache", st_fmt_size(ram, b, sizeof b));
        l.n = 0;
    }
    for (int i = 0; i < l.n && !rc; i++) {
        const uint64_t bytes = l.r[i].hi - l.r[i].lo;
        if (st_gpu_experts_pin_host(g, (void *)l.r[i].lo, bytes, read_only)) {
            char a[32], b[32], c[32];
            ST_WARN("GPU tier: page-locking the DRAM experts are copied from failed at %p (%s, %s): %s; "
                    "%d of %d ranges (%s of %s) stay pageable: their copies to the device are staged by the "
                    "driver and do not overlap the CPU's work", (void *)l.r[i].lo, st_fmt_size(bytes, a, sizeof a),
                    read_only ? "the checkpoint's mapping" : "the DRAM expert cache", st_last_error(), l.n - i, l.n,
                    st_fmt_size(total - done, b, sizeof b), st_fmt_size(total, c, sizeof c));
            st_error_clear();
            break; /* the next would meet the same limit */
        }
        done += bytes;
    }
    free(l.r);
    return rc;
}

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
    /* every expert resident in DRAM (no source streams them): a miss's DRAM copy never goes */
    go.dram_stays = !m->experts.get;
    if ((rc = min_rows(m, o, go.slot_bytes, go.dim, go.inter, &go.min_rows))) {
        st_gpu_dev_free(dev);
        return rc;
    }
    st_gpu_experts *g;
    if ((rc = st_gpu_experts_new(dev, &go, &g))) {
        st_gpu_dev_free(dev);
        return rc;
    }
    if ((rc = pin_dram(m, g))) { /* before the source below: it reads the loader's experts */
        st_gpu_experts_free(g);
        st_gpu_dev_free(dev);
        return rc;
    }
    m->experts.gpu = g;
    if (!m->experts.get)
        m->experts = (st_expert_source){.get = resident_get, .put = resident_put, .ctx = m, .gpu = g,
                                        .routed = o->no_prefetch ? NULL : resident_routed};
    st_gpu_tier_stats s;
    st_gpu_experts_get_stats(g, &s);
    char mr[32] = "never", d[32];
    if (s.min_rows < INT64_MAX) snprintf(mr, sizeof mr, "%lld", (long long)s.min_rows);
    ST_INFO("GPU tier (%s): %d expert slots of %s, launches of %lld token rows, %s in all of --gpu-mem %s; "
            "a miss of >= %s rows is computed there; %s of DRAM page-locked in %d ranges", s.device, s.n_slots,
            st_fmt_size(s.slot_bytes, a, sizeof a), (long long)s.rows, st_fmt_size(s.used, b, sizeof b),
            st_fmt_size(s.budget, c, sizeof c), mr, st_fmt_size(s.pinned_bytes, d, sizeof d), s.pinned_ranges);
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
    snprintf(buf, len, "GPU (%s) %d slots (%s of --gpu-mem %s), hit %.1f%% of %llu, %llu misses computed there, "
             "prefetched %llu (%llu used), copied %s", s.device, s.n_slots, st_fmt_size(s.peak, a, sizeof a),
             st_fmt_size(s.budget, b, sizeof b), s.uses ? 100.0 * (double)s.hits / (double)s.uses : 0.0,
             (unsigned long long)s.uses, (unsigned long long)s.device_misses, (unsigned long long)s.prefetched,
             (unsigned long long)s.prefetch_hits, st_fmt_size(s.bytes_copied, c, sizeof c));
}
