/* The GPU expert tier (see gpu_experts.h): device memory charged to the
 * --gpu-mem budget, the slot cache over it, one stream for the FFNs and their
 * activations and one for expert copies, and the per-layer pins.
 * Owns every device allocation it makes; never allocates device memory after
 * creation. */
#include "offload/gpu_experts.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/mem.h"
#include "offload/slot_cache.h"

#define PIECE_ALIGN 256
#define DEFAULT_ROWS 256

struct st_gpu_experts {
    const st_gpu_dev *dev;
    st_gpu_experts_opts o;
    st_budget *budget;
    void *slot_mem;                 /* (n_slots, stride) bytes */
    uint64_t slot_mem_bytes, stride;
    float *x, *coef, *out;          /* (rows, dim), (rows), (rows, dim) */
    void *scratch;
    uint64_t x_bytes, coef_bytes, out_bytes, scratch_bytes;
    void *compute, *copy;           /* streams */
    void *copy_done;                /* event: the admitted expert's bytes have landed */
    void *miss_copied;              /* event on the FFN stream: miss()'s copies have landed */
    void *pf_copied;                /* event on the copy stream: prefetch()'s copies have landed */
    st_slot_cache *cache;
    bool *resident;                 /* (n_layers, n_experts): held by a RESIDENT slot */
    uint64_t *slot_key;             /* (n_slots): key loaded into the slot, UINT64_MAX: none */
    /* the open layer */
    bool open;
    int layer;
    int *slot_of;                   /* (n_experts): pinned slot of a placed expert, -1: not placed */
    int *pinned, n_pinned;          /* (n_experts) */
    int admit_slot;                 /* slot whose copy is in flight, -1: none */
    uint64_t admit_bytes;
    int *loading, n_loading;        /* (n_experts): slots miss() is filling, completed at miss_landed/end */
    uint64_t *loading_bytes;        /* (n_experts) */
    int *pf_slot, n_pf;             /* (n_slots): slots prefetch() is filling, completed at begin */
    uint64_t *pf_bytes;             /* (n_slots) */
    bool *pf_unused;                /* (n_slots): loaded by prefetch, not used since */
    void **host_pins;               /* (n_host_pins) host ranges pin_host registered */
    int n_host_pins;
    int64_t cap_host_pins;
    st_gpu_tier_stats st;
    pthread_mutex_t mu;             /* admit_sync from several threads */
};

static int prefetch_complete(st_gpu_experts *g);
static uint64_t align_up(uint64_t v) { return ST_ALIGN_UP(v, (uint64_t)PIECE_ALIGN); }

uint64_t st_gpu_expert_layout(const st_expert_w *e, uint64_t off[6]) {
    const st_weight *w[3] = {&e->w1, &e->w3, &e->w2};
    uint64_t at = 0;
    for (int i = 0; i < 3; i++) {
        off[2 * i] = at;
        at = align_up(at + st_weight_data_bytes(w[i]->fmt, w[i]->rows, w[i]->cols));
        off[2 * i + 1] = at;
        at = align_up(at + st_weight_scale_bytes(w[i]->fmt, w[i]->scale_fmt, w[i]->rows, w[i]->cols));
    }
    return at;
}

static int64_t rows_of(const st_gpu_experts_opts *o) { return o->rows > 0 ? o->rows : DEFAULT_ROWS; }

uint64_t st_gpu_experts_buffer_bytes(const st_gpu_dev *dev, const st_gpu_experts_opts *o) {
    const uint64_t rows = (uint64_t)rows_of(o), dim = (uint64_t)o->dim;
    return 2 * align_up(rows * dim * sizeof(float)) + align_up(rows * sizeof(float)) +
           align_up(dev->ops->ffn_scratch_bytes(dev->ctx, o->inter, (int64_t)rows));
}

/* Device memory charged to the budget first. */
static int dev_alloc(st_gpu_experts *g, uint64_t bytes, void **out) {
    *out = NULL;
    int rc = st_budget_reserve(g->budget, bytes);
    if (rc) return rc;
    if ((rc = g->dev->ops->alloc(g->dev->ctx, (size_t)bytes, out))) {
        st_budget_release(g->budget, bytes);
        return rc;
    }
    return 0;
}

static void dev_free(st_gpu_experts *g, void *p, uint64_t bytes) {
    if (!p) return;
    g->dev->ops->free(g->dev->ctx, p);
    st_budget_release(g->budget, bytes);
}

void st_gpu_experts_free(st_gpu_experts *g) {
    if (!g) return;
    if (g->open && st_gpu_experts_end(g)) ST_WARN("GPU tier: %s", st_last_error());
    if (g->n_pf && prefetch_complete(g)) ST_WARN("GPU tier: %s", st_last_error());
    const st_gpu_dev_ops *ops = g->dev->ops;
    ops->stream_free(g->dev->ctx, g->compute);
    ops->stream_free(g->dev->ctx, g->copy);
    ops->event_free(g->dev->ctx, g->copy_done);
    ops->event_free(g->dev->ctx, g->miss_copied);
    ops->event_free(g->dev->ctx, g->pf_copied);
    /* the streams are done with every copy: unlock the host memory before its owner frees it */
    for (int i = 0; i < g->n_host_pins; i++) ops->host_unregister(g->dev->ctx, g->host_pins[i]);
    free(g->host_pins);
    st_slot_cache_free(g->cache);
    dev_free(g, g->slot_mem, g->slot_mem_bytes);
    dev_free(g, g->x, g->x_bytes);
    dev_free(g, g->coef, g->coef_bytes);
    dev_free(g, g->out, g->out_bytes);
    dev_free(g, g->scratch, g->scratch_bytes);
    st_budget_free(g->budget);
    free(g->resident);
    free(g->slot_key);
    free(g->slot_of);
    free(g->pinned);
    free(g->loading);
    free(g->loading_bytes);
    free(g->pf_slot);
    free(g->pf_bytes);
    free(g->pf_unused);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

int st_gpu_experts_new(const st_gpu_dev *dev, const st_gpu_experts_opts *opts, st_gpu_experts **out) {
    *out = NULL;
    st_gpu_experts_opts oo = *opts;
    const st_gpu_experts_opts *o = &oo;
    if (!dev || !o->budget || o->n_layers <= 0 || o->n_experts <= 0 || !o->slot_bytes || o->dim <= 0 || o->inter <= 0)
        return st_error(ST_ERR_INVALID, "GPU tier: expected a device, a budget, layers, experts and shapes");
    const uint64_t stride = st_slot_cache_stride(o->slot_bytes);
    const int want = o->n_slots > 0 ? o->n_slots : 1;
    if (oo.rows <= 0) /* a small budget gets smaller launches before it is refused */
        for (oo.rows = oo.max_rows > 0 ? oo.max_rows : DEFAULT_ROWS;
             oo.rows > 1 && o->budget < stride * (uint64_t)want + st_gpu_experts_buffer_bytes(dev, o); oo.rows /= 2) {}
    const uint64_t buffers = st_gpu_experts_buffer_bytes(dev, o);
    char a[32], b[32], c[32], d[32];
    if (o->budget < stride * (uint64_t)want + buffers) {
        return st_error(ST_ERR_BUDGET, "--gpu-mem %s is too small for the GPU expert tier: it needs at least %s "
                        "(%d expert slot%s of %s and %s of FFN buffers for %lld token row%s)",
                        st_fmt_size(o->budget, a, sizeof a), st_fmt_size(stride * (uint64_t)want + buffers, b, sizeof b),
                        want, want > 1 ? "s" : "", st_fmt_size(stride, c, sizeof c), st_fmt_size(buffers, d, sizeof d),
                        (long long)rows_of(o), rows_of(o) > 1 ? "s" : "");
    }
    st_gpu_experts *g = calloc(1, sizeof *g);
    if (!g) return st_error(ST_ERR_NOMEM, "GPU tier: out of memory");
    g->dev = dev;
    g->o = *o;
    pthread_mutex_init(&g->mu, NULL);
    g->stride = stride;
    g->admit_slot = -1;
    const size_t keys = (size_t)o->n_layers * (size_t)o->n_experts;
    int rc = ST_ERR_NOMEM;
    g->resident = calloc(keys, sizeof *g->resident);
    g->slot_of = malloc((size_t)o->n_experts * sizeof *g->slot_of);
    g->pinned = malloc((size_t)o->n_experts * sizeof *g->pinned);
    g->loading = malloc((size_t)o->n_experts * sizeof *g->loading);
    g->loading_bytes = malloc((size_t)o->n_experts * sizeof *g->loading_bytes);
    if (!g->resident || !g->slot_of || !g->pinned || !g->loading || !g->loading_bytes) { rc = st_error(rc, "GPU tier: out of memory"); goto fail; }
    for (int e = 0; e < o->n_experts; e++) g->slot_of[e] = -1;
    if ((rc = st_budget_new("--gpu-mem", o->budget, &g->budget))) goto fail;
    const uint64_t rows = (uint64_t)rows_of(o), dim = (uint64_t)o->dim;
    g->x_bytes = g->out_bytes = align_up(rows * dim * sizeof(float));
    g->coef_bytes = align_up(rows * sizeof(float));
    g->scratch_bytes = align_up(dev->ops->ffn_scratch_bytes(dev->ctx, o->inter, (int64_t)rows));
    if ((rc = dev_alloc(g, g->x_bytes, (void **)&g->x)) || (rc = dev_alloc(g, g->out_bytes, (void **)&g->out)) ||
        (rc = dev_alloc(g, g->coef_bytes, (void **)&g->coef)) ||
        (g->scratch_bytes && (rc = dev_alloc(g, g->scratch_bytes, &g->scratch))))
        goto fail;
    uint64_t fit = (o->budget - st_budget_used(g->budget)) / stride;
    int n = o->n_slots > 0 ? o->n_slots : (int)ST_MIN(fit, (uint64_t)keys);
    g->slot_mem_bytes = stride * (uint64_t)n;
    if ((rc = dev_alloc(g, g->slot_mem_bytes, &g->slot_mem))) goto fail;
    g->pf_slot = malloc((size_t)n * sizeof *g->pf_slot);
    g->pf_bytes = malloc((size_t)n * sizeof *g->pf_bytes);
    g->pf_unused = calloc((size_t)n, sizeof *g->pf_unused);
    if (!(g->slot_key = malloc((size_t)n * sizeof *g->slot_key)) || !g->pf_slot || !g->pf_bytes || !g->pf_unused) { rc = st_error(ST_ERR_NOMEM, "GPU tier: out of memory"); goto fail; }
    for (int i = 0; i < n; i++) g->slot_key[i] = UINT64_MAX;
    st_slot_cache_options so = {.name = "gpu experts", .n_slots = n, .slot_bytes = o->slot_bytes,
                                .memory = g->slot_mem, .policy = o->policy};
    if ((rc = st_slot_cache_new(&so, &g->cache))) goto fail;
    const st_gpu_dev_ops *ops = dev->ops;
    if ((rc = ops->stream_new(dev->ctx, &g->compute)) || (rc = ops->stream_new(dev->ctx, &g->copy)) ||
        (rc = ops->event_new(dev->ctx, &g->copy_done)) || (rc = ops->event_new(dev->ctx, &g->miss_copied)) ||
        (rc = ops->event_new(dev->ctx, &g->pf_copied)))
        goto fail;
    g->st.device = ops->name;
    g->st.n_slots = n;
    g->st.slot_bytes = stride;
    g->st.buffer_bytes = g->x_bytes + g->out_bytes + g->coef_bytes + g->scratch_bytes;
    g->st.rows = rows_of(o);
    g->st.budget = o->budget;
    g->st.min_rows = o->min_rows > 0 ? o->min_rows : INT64_MAX;
    *out = g;
    return 0;
fail:
    st_gpu_experts_free(g);
    return rc;
}

static uint64_t key_of(int layer, int expert) { return st_cache_key_expert(layer, expert); }
static size_t idx(const st_gpu_experts *g, int layer, int expert) { return (size_t)layer * (size_t)g->o.n_experts + (size_t)expert; }

static bool valid(const st_gpu_experts *g, int layer, int expert) {
    return layer >= 0 && layer < g->o.n_layers && expert >= 0 && expert < g->o.n_experts;
}

static int start_load(st_gpu_experts *g, int layer, int expert, const st_expert_w *w, void *stream, void *event,
                      int *slot, uint64_t *bytes, bool *refused);

int st_gpu_experts_prefetch(st_gpu_experts *g, int layer, int expert, const st_expert_w *w) {
    if (!valid(g, layer, expert)) return st_error(ST_ERR_INVALID, "GPU tier: no expert %d in layer %d", expert, layer);
    if (g->open && g->layer == layer)
        return st_error(ST_ERR_INVALID, "GPU tier: prefetch of expert %d of the open layer %d", expert, layer);
    if (g->resident[idx(g, layer, expert)] || g->n_pf >= g->st.n_slots) return 0;
    int slot;
    bool refused;
    uint64_t bytes;
    int r = start_load(g, layer, expert, w, g->copy, g->pf_copied, &slot, &bytes, &refused);
    if (r <= 0) return r; /* on its way already, or every slot pinned */
    g->pf_slot[g->n_pf] = slot;
    g->pf_bytes[g->n_pf++] = bytes;
    return 1;
}

/* Waits for prefetch()'s copies; their slots become resident and unpinned. */
static int prefetch_complete(st_gpu_experts *g) {
    if (!g->n_pf) return 0;
    int rc = g->dev->ops->event_sync(g->dev->ctx, g->pf_copied);
    for (int i = 0; i < g->n_pf; i++) {
        const int slot = g->pf_slot[i];
        const uint64_t key = g->slot_key[slot];
        st_slot_cache_complete(g->cache, slot, rc, rc ? 0 : g->pf_bytes[i]);
        st_slot_cache_release(g->cache, slot);
        if (rc) {
            g->slot_key[slot] = UINT64_MAX;
            continue;
        }
        g->resident[idx(g, st_cache_key_layer(key), st_cache_key_index(key))] = true;
        g->pf_unused[slot] = true;
        g->st.prefetched++;
        g->st.bytes_copied += g->pf_bytes[i];
    }
    g->n_pf = 0;
    return rc;
}

int st_gpu_experts_begin(st_gpu_experts *g, int layer, const int *experts, int n, bool *on_gpu) {
    if (g->open) return st_error(ST_ERR_INVALID, "GPU tier: layer %d begins while layer %d is open", layer, g->layer);
    int rc = prefetch_complete(g); /* predicted experts of this layer: hits from here on */
    if (rc) return rc;
    g->open = true;
    g->layer = layer;
    g->n_pinned = 0;
    for (int i = 0; i < n; i++) {
        const int e = experts[i];
        if (on_gpu) on_gpu[i] = false;
        if (!valid(g, layer, e)) return st_error(ST_ERR_INVALID, "GPU tier: no expert %d in layer %d", e, layer);
        if (g->slot_of[e] >= 0) return st_error(ST_ERR_INVALID, "GPU tier: expert %d named twice in layer %d", e, layer);
        g->st.uses++;
        int slot, r = st_slot_cache_lookup(g->cache, key_of(layer, e), &slot);
        if (r == ST_SLOT_PENDING) { /* every load is waited for by its admit_done: cannot happen; be safe */
            int w = st_slot_cache_wait(g->cache, slot, -1);
            if (w) { st_slot_cache_release(g->cache, slot); r = ST_SLOT_MISS; }
        }
        if (r == ST_SLOT_HIT || r == ST_SLOT_PENDING) {
            g->slot_of[e] = slot;
            g->pinned[g->n_pinned++] = e;
            g->st.hits++;
            if (g->pf_unused[slot]) g->st.prefetch_hits++;
            g->pf_unused[slot] = false;
            if (on_gpu) on_gpu[i] = true;
        } else if (r == ST_SLOT_MISS) {
            g->st.misses++;
        } else {
            return r;
        }
    }
    return 0;
}

bool st_gpu_experts_placed(const st_gpu_experts *g, int layer, int expert) {
    return g && g->open && g->layer == layer && expert >= 0 && expert < g->o.n_experts && g->slot_of[expert] >= 0;
}

bool st_gpu_experts_holds(st_gpu_experts *g, int layer, int expert) {
    return g && valid(g, layer, expert) && g->resident[idx(g, layer, expert)];
}

static st_gpu_mat mat_at(const st_weight *w, const char *base, uint64_t data_off, uint64_t scale_off) {
    const bool scaled = st_weight_scale_bytes(w->fmt, w->scale_fmt, w->rows, w->cols) > 0;
    return (st_gpu_mat){.fmt = (int)w->fmt, .data = base + data_off, .scale = scaled ? base + scale_off : NULL,
                        .rows = w->rows, .cols = w->cols, .scale_f32 = w->scale_fmt == ST_SCALE_F32};
}

int st_gpu_experts_run(st_gpu_experts *g, int expert, const st_expert_w *shape, const float *x, int64_t n,
                       const float *coef, float limit, bool official, float *o) {
    if (!st_gpu_experts_placed(g, g->layer, expert))
        return st_error(ST_ERR_INVALID, "GPU tier: expert %d of layer %d is not on the device", expert, g->layer);
    const int64_t dim_in = shape->w1.cols, dim_out = shape->w2.rows, inter = shape->w1.rows;
    if (dim_in > g->o.dim || dim_out > g->o.dim || inter > g->o.inter)
        return st_error(ST_ERR_INVALID, "GPU tier: expert %d of layer %d (%lld x %lld) is larger than the buffers (%lld x %lld)",
                        expert, g->layer, (long long)inter, (long long)dim_in, (long long)g->o.inter, (long long)g->o.dim);
    uint64_t off[6];
    st_gpu_expert_layout(shape, off);
    const char *base = st_slot_cache_buffer(g->cache, g->slot_of[expert]);
    st_gpu_ffn f = {.w1 = mat_at(&shape->w1, base, off[0], off[1]), .w3 = mat_at(&shape->w3, base, off[2], off[3]),
                    .w2 = mat_at(&shape->w2, base, off[4], off[5]), .x = g->x, .coef = coef ? g->coef : NULL,
                    .limit = limit, .official = official, .isa = g->o.isa, .o = g->out, .scratch = g->scratch};
    const st_gpu_dev_ops *ops = g->dev->ops;
    void *ctx = g->dev->ctx;
    const int64_t cap = rows_of(&g->o);
    int rc = 0;
    /* the stream orders the pieces: each reuses x, coef, o and scratch after the one before */
    for (int64_t r0 = 0; r0 < n && !rc; r0 += cap) {
        const int64_t m = ST_MIN(cap, n - r0);
        const size_t xb = (size_t)(m * dim_in) * sizeof(float), ob = (size_t)(m * dim_out) * sizeof(float);
        f.n = m;
        if ((rc = ops->copy_to_device(ctx, g->x, x + r0 * dim_in, xb, g->compute))) break;
        if (coef && (rc = ops->copy_to_device(ctx, g->coef, coef + r0, (size_t)m * sizeof(float), g->compute))) break;
        if ((rc = ops->expert_ffn(ctx, &f, g->compute))) break;
        rc = ops->copy_to_host(ctx, o + r0 * dim_out, g->out, ob, g->compute);
        g->st.act_bytes += xb + ob + (coef ? (size_t)m * sizeof(float) : 0);
        g->st.ffn_launches++;
    }
    return rc;
}

/* A slot for (layer, expert) by the policy, its victim leaving the device: 1 (*slot acquired,
 * to be loaded), 0 none (every slot pinned: refused; or the expert is there already). */
static int take_slot(st_gpu_experts *g, int layer, int expert, int *slot, bool *refused) {
    int r = st_slot_cache_acquire(g->cache, key_of(layer, expert), slot);
    *refused = r == ST_ERR_BUDGET;
    if (r == ST_ERR_BUDGET) { /* every slot pinned by this layer's hits */
        st_error_clear();
        return 0;
    }
    if (r < 0) return r;
    if (r != ST_SLOT_LOAD) { /* already there (a caller admitting a hit): nothing to copy */
        st_slot_cache_release(g->cache, *slot);
        return 0;
    }
    if (g->slot_key[*slot] != UINT64_MAX) /* the policy's victim leaves the device */
        g->resident[idx(g, st_cache_key_layer(g->slot_key[*slot]), st_cache_key_index(g->slot_key[*slot]))] = false;
    g->slot_key[*slot] = UINT64_MAX;
    g->pf_unused[*slot] = false;
    return 1;
}

/* Queues the copy of w's bytes into slot on stream; *bytes: the expert's bytes. */
static int copy_in(st_gpu_experts *g, int slot, int layer, int expert, const st_expert_w *w, void *stream, uint64_t *bytes) {
    uint64_t off[6];
    *bytes = st_gpu_expert_layout(w, off);
    const st_weight *ws[3] = {&w->w1, &w->w3, &w->w2};
    char *base = st_slot_cache_buffer(g->cache, slot);
    const st_gpu_dev_ops *ops = g->dev->ops;
    int rc = 0;
    for (int i = 0; i < 3 && !rc; i++) {
        const st_weight *x = ws[i];
        uint64_t db = st_weight_data_bytes(x->fmt, x->rows, x->cols), sb = st_weight_scale_bytes(x->fmt, x->scale_fmt, x->rows, x->cols);
        if (*bytes > g->o.slot_bytes || (db && !x->data) || (sb && !x->scale))
            rc = st_error(ST_ERR_INVALID, "GPU tier: layer %d expert %d: %s", layer, expert,
                          *bytes > g->o.slot_bytes ? "larger than a slot" : "its DRAM copy has no bytes");
        if (!rc && db) rc = ops->copy_to_device(g->dev->ctx, base + off[2 * i], x->data, (size_t)db, stream);
        if (!rc && sb) rc = ops->copy_to_device(g->dev->ctx, base + off[2 * i + 1], x->scale, (size_t)sb, stream);
    }
    return rc;
}

/* A slot for (layer, expert) by the policy, its bytes copied in on `stream` and `event`
 * recorded after them: 1 started (*slot, *bytes), 0 nothing to do (on its way already,
 * or every slot pinned: *refused), < 0 an error (the slot given back). */
static int start_load(st_gpu_experts *g, int layer, int expert, const st_expert_w *w, void *stream, void *event,
                      int *slot, uint64_t *bytes, bool *refused) {
    int r = take_slot(g, layer, expert, slot, refused);
    if (r <= 0) return r;
    int rc = copy_in(g, *slot, layer, expert, w, stream, bytes);
    if (!rc) rc = g->dev->ops->event_record(g->dev->ctx, event, stream);
    if (rc) {
        st_slot_cache_complete(g->cache, *slot, rc, 0);
        st_slot_cache_release(g->cache, *slot);
        return rc;
    }
    g->slot_key[*slot] = key_of(layer, expert);
    return 1;
}

int st_gpu_experts_admit(st_gpu_experts *g, int layer, int expert, const st_expert_w *w) {
    if (!valid(g, layer, expert)) return st_error(ST_ERR_INVALID, "GPU tier: no expert %d in layer %d", expert, layer);
    int rc = st_gpu_experts_admit_done(g); /* one copy in flight at a time */
    if (rc) return rc;
    int slot;
    bool refused;
    uint64_t bytes;
    int r = start_load(g, layer, expert, w, g->copy, g->copy_done, &slot, &bytes, &refused);
    if (refused) g->st.refused++;
    if (r <= 0) return r;
    g->admit_slot = slot;
    g->admit_bytes = bytes;
    return 1;
}

int64_t st_gpu_min_rows_model(uint64_t expert_bytes, int64_t dim, int64_t inter, double cpu_flops, double dram_bw,
                              double pcie_bw) {
    const double copy = (double)expert_bytes / pcie_bw, read = (double)expert_bytes / dram_bw;
    const double per_row = 6.0 * (double)dim * (double)inter / cpu_flops;
    if (read > copy) return 2; /* DRAM slower than PCIe: the CPU loses at any row count */
    const double r = floor(copy / per_row) + 1; /* the least r with r * per_row > copy */
    return r >= 1e15 ? INT64_MAX : ST_MAX((int64_t)r, 2);
}

bool st_gpu_experts_wants_device(const st_gpu_experts *g, int64_t n) {
    return g && n > 0 && n >= g->st.min_rows;
}

/* miss()'s slots: loaded (rc 0: resident from now on) or failed. They stay pinned until end(). */
static void complete_loading(st_gpu_experts *g, int rc) {
    for (int i = 0; i < g->n_loading; i++) {
        const int slot = g->loading[i];
        const uint64_t key = g->slot_key[slot];
        st_slot_cache_complete(g->cache, slot, rc, rc ? 0 : g->loading_bytes[i]);
        if (rc) {
            g->slot_key[slot] = UINT64_MAX;
            continue;
        }
        g->resident[idx(g, st_cache_key_layer(key), st_cache_key_index(key))] = true;
        g->st.admitted++;
        g->st.device_misses++;
        g->st.bytes_copied += g->loading_bytes[i];
    }
    g->n_loading = 0;
}

int st_gpu_experts_miss(st_gpu_experts *g, int layer, int expert, const st_expert_w *w, const float *x, int64_t n,
                        const float *coef, float limit, bool official, float *o) {
    if (!g->open || g->layer != layer || !valid(g, layer, expert))
        return st_error(ST_ERR_INVALID, "GPU tier: expert %d of layer %d is not a miss of the open layer", expert, layer);
    if (g->slot_of[expert] >= 0)
        return st_error(ST_ERR_INVALID, "GPU tier: expert %d of layer %d is on the device already", expert, layer);
    if (w->w1.cols > g->o.dim || w->w2.rows > g->o.dim || w->w1.rows > g->o.inter) return 0; /* not for these buffers */
    int slot;
    bool refused;
    uint64_t bytes;
    /* the copy and the FFN on one stream: the FFN starts when the bytes have landed, no host wait */
    int r = start_load(g, layer, expert, w, g->compute, g->miss_copied, &slot, &bytes, &refused);
    if (r <= 0) return r; /* refused: counted by the admit() of the CPU's computation */
    g->loading[g->n_loading] = slot;
    g->loading_bytes[g->n_loading++] = bytes;
    g->slot_of[expert] = slot; /* placed and pinned until end(), as a hit */
    g->pinned[g->n_pinned++] = expert;
    const int rc = st_gpu_experts_run(g, expert, w, x, n, coef, limit, official, o);
    return rc ? rc : 1;
}

int st_gpu_experts_miss_landed(st_gpu_experts *g) {
    if (!g->n_loading || g->o.dram_stays) return 0;
    int rc = g->dev->ops->event_sync(g->dev->ctx, g->miss_copied);
    complete_loading(g, rc);
    return rc;
}

int st_gpu_experts_miss_sync(st_gpu_experts *g, int layer, int expert, const st_expert_w *w, const float *x, int64_t n,
                             const float *coef, float limit, bool official, float *o) {
    pthread_mutex_lock(&g->mu);
    int r = st_gpu_experts_miss(g, layer, expert, w, x, n, coef, limit, official, o);
    if (r >= 0) {
        int r2 = st_gpu_experts_miss_landed(g);
        if (r2) r = r2;
    }
    pthread_mutex_unlock(&g->mu);
    return r;
}

int st_gpu_experts_admit_done(st_gpu_experts *g) {
    const int slot = g->admit_slot;
    if (slot < 0) return 0;
    g->admit_slot = -1;
    int rc = g->dev->ops->event_sync(g->dev->ctx, g->copy_done);
    st_slot_cache_complete(g->cache, slot, rc, rc ? 0 : g->admit_bytes);
    st_slot_cache_release(g->cache, slot);
    const uint64_t key = g->slot_key[slot];
    if (rc) {
        g->slot_key[slot] = UINT64_MAX;
        return rc;
    }
    g->resident[idx(g, st_cache_key_layer(key), st_cache_key_index(key))] = true;
    g->st.admitted++;
    g->st.bytes_copied += g->admit_bytes;
    return 0;
}

int st_gpu_experts_admit_sync(st_gpu_experts *g, int layer, int expert, const st_expert_w *w) {
    pthread_mutex_lock(&g->mu);
    int r = st_gpu_experts_admit(g, layer, expert, w);
    if (r >= 0) {
        int r2 = st_gpu_experts_admit_done(g);
        if (r2) r = r2;
    }
    pthread_mutex_unlock(&g->mu);
    return r;
}

int st_gpu_experts_end(st_gpu_experts *g) {
    if (!g->open) return 0;
    int rc = st_gpu_experts_admit_done(g);
    int r2 = g->dev->ops->stream_sync(g->dev->ctx, g->compute);
    if (!rc) rc = r2;
    complete_loading(g, r2); /* miss()'s copies have landed with the stream */
    for (int i = 0; i < g->n_pinned; i++) {
        int e = g->pinned[i];
        st_slot_cache_release(g->cache, g->slot_of[e]);
        g->slot_of[e] = -1;
    }
    g->n_pinned = 0;
    g->open = false;
    return rc;
}

void st_gpu_experts_get_stats(st_gpu_experts *g, st_gpu_tier_stats *out) {
    *out = g->st;
    st_slot_cache_stats cs;
    st_slot_cache_get_stats(g->cache, &cs);
    out->evictions = cs.evictions;
    out->used = st_budget_used(g->budget);
    out->peak = st_budget_peak(g->budget);
}

int st_gpu_experts_pin_host(st_gpu_experts *g, void *p, uint64_t bytes, bool read_only) {
    int rc = st_grow((void **)&g->host_pins, &g->cap_host_pins, g->n_host_pins + 1, sizeof *g->host_pins);
    if (rc) return rc;
    rc = g->dev->ops->host_register(g->dev->ctx, p, (size_t)bytes, read_only);
    if (rc) return rc;
    g->host_pins[g->n_host_pins++] = p;
    g->st.pinned_ranges = g->n_host_pins;
    g->st.pinned_bytes += bytes;
    return 0;
}

const st_gpu_dev *st_gpu_experts_device(const st_gpu_experts *g) { return g->dev; }
