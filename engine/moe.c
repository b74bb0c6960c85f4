/* MoE (see moe.h), after the official Gate / Expert / MoE: scores in F32,
 * bias only for selection, weights normalised over the chosen experts (no eps)
 * and scaled; experts summed in F32 in ascending expert order, then the shared
 * expert, so the result never depends on which experts were resident first,
 * nor on which were computed on the GPU tier (each expert into its own rows,
 * summed after the device's work is waited for). */
#include "engine/moe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/quant.h"
#include "engine/attention.h"
#include "offload/gpu_experts.h"

static float softplusf(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

int st_moe_route(st_pool *pool, const st_moe_w *w, const float *xn, const int32_t *tokens, int64_t T, int32_t *ids,
                 float *weights) {
    const int E = w->n_experts, K = w->top_k;
    float *sc = malloc((size_t)T * (size_t)E * sizeof(float)), *sel = malloc((size_t)E * sizeof(float));
    if (!sc || !sel) { free(sc); free(sel); return st_error(ST_ERR_NOMEM, "router: out of memory"); }
    int rc = st_matmul(pool, &w->gate, xn, T, sc, ST_ACT_F32);
    for (int64_t t = 0; !rc && t < T; t++) {
        float *s = sc + t * E;
        if (w->score_func == 1) st_softmax(s, E);
        else
            for (int e = 0; e < E; e++) s[e] = w->score_func == 2 ? 1.0f / (1.0f + expf(-s[e])) : sqrtf(softplusf(s[e]));
        int32_t *it = ids + t * K;
        if (w->hash) {
            for (int k = 0; k < K; k++) {
                int64_t e = w->tid2eid[(int64_t)tokens[t] * K + k];
                if (e < 0 || e >= E) {
                    rc = st_error(ST_ERR_FORMAT, "tid2eid[%d][%d] = %lld is not an expert id (< %d)", tokens[t], k,
                                  (long long)e, E);
                    break;
                }
                it[k] = (int32_t)e;
            }
            if (rc) break; /* it[] is not filled: no weights from it */
        } else {
            for (int e = 0; e < E; e++) sel[e] = s[e] + (w->gate_bias ? w->gate_bias[e] : 0.0f);
            st_topk(sel, E, K, it, NULL);
        }
        float sum = 0;
        for (int k = 0; k < K; k++) sum += s[it[k]];
        for (int k = 0; k < K; k++) {
            float v = s[it[k]];
            if (w->score_func != 1) v /= sum;
            weights[t * K + k] = v * w->route_scale;
        }
    }
    free(sc);
    free(sel);
    return rc;
}

int st_moe_predict(st_pool *pool, const st_moe_w *w, const float *xn, const int32_t *tokens, int64_t T, int top,
                   int32_t *ids, float *weights, bool *mark, int *out, int *n_out) {
    const int K = w->top_k;
    *n_out = 0;
    int rc = st_moe_route(pool, w, xn, tokens, T, ids, weights);
    if (rc) return rc;
    memset(mark, 0, (size_t)w->n_experts * sizeof *mark);
    for (int64_t t = 0; t < T; t++)
        for (int k = 0; k < K; k++) {
            const float *wt = weights + t * K;
            int rank = 0;
            for (int j = 0; j < K; j++) rank += wt[j] > wt[k] || (wt[j] == wt[k] && j < k);
            const int e = ids[t * K + k];
            if (rank >= top || mark[e]) continue;
            mark[e] = true;
            out[(*n_out)++] = e;
        }
    return 0;
}

/* Scratch of one MoE call, sized for T tokens. */
typedef struct moe_bufs {
    int32_t *ids;   /* (T, K) */
    float *wts;     /* (T, K) */
    float *xq;      /* (T, dim) official: act_quant(xn) */
    float *xg, *yg; /* (T, dim) gathered inputs / outputs of one expert */
    float *g, *u;   /* (T, inter) */
    float *o;       /* (T, dim) */
    float *cg;      /* (T) */
    int64_t *rows;  /* (T) */
} moe_bufs;

static int is_quantised(const st_weight *w) { return w->fmt == ST_WF_FP8 || w->fmt == ST_WF_FP4; }

/* One expert on n gathered tokens: y (n, dim) += coef * w2(swiglu(w1 x, w3 x)).
 * Official numerics: x is already act_quant-ed when w1/w3 are quantised (the
 * caller gathers from the quantised copy); the hidden is weighted in F32, cast
 * to bf16 and act_quant-ed before a quantised w2, as the official Expert does. */
static int expert_apply(st_pool *pool, const st_expert_w *e, const float *x, int64_t n, const float *coef, float limit,
                        st_numerics num, moe_bufs *b, float *y) {
    if (num != ST_NUMERICS_OFFICIAL) return st_expert_ffn(pool, e, x, n, coef, limit, y, ST_ACT_F32);
    const int64_t inter = e->w1.rows, dim = e->w2.rows;
    float *g = b->g, *u = b->u, *o = b->o;
    int rc;
    if ((rc = st_matmul(pool, &e->w1, x, n, g, ST_ACT_F32)) || (rc = st_matmul(pool, &e->w3, x, n, u, ST_ACT_F32)))
        return rc;
    st_swiglu(g, u, n, inter, 0, inter, coef, limit);
    st_round_bf16(g, n * inter);
    if (is_quantised(&e->w2)) st_act_quant(g, n, inter, g);
    if ((rc = st_matmul(pool, &e->w2, g, n, o, ST_ACT_F32))) return rc;
    for (int64_t i = 0; i < n * dim; i++) y[i] += o[i];
    return 0;
}

static void bufs_free(moe_bufs *b) {
    free(b->ids); free(b->wts); free(b->xq); free(b->xg); free(b->yg); free(b->g); free(b->u); free(b->o);
    free(b->cg); free(b->rows);
}

#define ALLOC(p, n) ((p) = malloc((size_t)(n) * sizeof(*(p))), (p) != NULL)

static st_weight weight_of(const st_gpu_mat *m) {
    return (st_weight){.fmt = (st_wfmt)m->fmt, .rows = m->rows, .cols = m->cols, .data = m->data, .scale = m->scale,
                       .scale_fmt = m->scale_f32 ? ST_SCALE_F32 : ST_SCALE_E8M0};
}

int st_moe_expert_host(const st_gpu_ffn *f) {
    const st_expert_w e = {.w1 = weight_of(&f->w1), .w3 = weight_of(&f->w3), .w2 = weight_of(&f->w2)};
    const int64_t n = f->n, inter = e.w1.rows, dim = e.w2.rows;
    moe_bufs b = {0};
    int rc = ST_ERR_NOMEM;
    if (!ALLOC(b.g, n * inter) || !ALLOC(b.u, n * inter) || !ALLOC(b.o, n * dim)) {
        rc = st_error(rc, "MoE: out of memory for %lld rows of an expert", (long long)n);
    } else {
        memset(f->o, 0, (size_t)(n * dim) * sizeof(float)); /* 0 + o, as the CPU path's rows of ye */
        rc = expert_apply(NULL, &e, f->x, n, f->coef, f->limit,
                          f->official ? ST_NUMERICS_OFFICIAL : ST_NUMERICS_REFERENCE, &b, f->o);
    }
    bufs_free(&b);
    return rc;
}

void (*st_moe_node_hook)(int layer, int expert, int node, const st_expert_w *w);

/* Several NUMA nodes: each node's team computes that node's experts into their own rows of ye. */
typedef struct node_job {
    const st_moe_w *w;
    int layer;
    const st_expert_source *src;
    const float *xn, *xq;
    st_numerics num;
    const int64_t *first, *rows;
    const float *coef;
    float *ye, *xd; /* xd: (TK, dim) the device's gathered rows (a GPU tier), valid until its end() */
    int64_t T;
    int rc[64];
    char msg[64][256]; /* a team's error message (st_last_error is per thread) */
} node_job;

static void node_experts(void *ctx, int node, st_pool *team) {
    node_job *j = ctx;
    const int64_t dim = j->w->gate.cols, T = j->T;
    int64_t inter = 0;
    for (int x = 0; x < j->w->n_experts; x++) inter = ST_MAX(inter, j->w->experts[x].w1.rows);
    moe_bufs b = {0};
    int r = ST_ERR_NOMEM, e;
    const st_expert_w *ew;
    b.xg = malloc((size_t)(T * dim) * sizeof(float));
    b.g = malloc((size_t)(T * inter) * sizeof(float));
    b.u = malloc((size_t)(T * inter) * sizeof(float));
    b.o = malloc((size_t)(T * dim) * sizeof(float));
    if (!b.xg || !b.g || !b.u || !b.o) r = st_error(r, "MoE: out of memory for node %d", node);
    else
        while ((r = j->src->next_on(j->src->ctx, j->layer, node, &e, &ew)) == 1) {
            const int64_t o = j->first[e], n = j->first[e + 1] - o;
            const float *xs = j->num == ST_NUMERICS_OFFICIAL && is_quantised(&ew->w1) ? j->xq : j->xn;
            /* a GPU tier's miss with many rows: copied in from this node's DRAM copy and computed
             * on the device (the copy landed before the copy is released); refused: the CPU's */
            if (j->src->gpu && st_gpu_experts_wants_device(j->src->gpu, n)) {
                float *xd = j->xd + o * dim;
                for (int64_t i = 0; i < n; i++) memcpy(xd + i * dim, xs + j->rows[o + i] * dim, (size_t)dim * sizeof(float));
                r = st_gpu_experts_miss_sync(j->src->gpu, j->layer, e, ew, xd, n, j->coef + o, j->w->swiglu_limit,
                                             j->num == ST_NUMERICS_OFFICIAL, j->ye + o * dim);
                if (r != 0) {
                    if (st_moe_node_hook) st_moe_node_hook(j->layer, e, node, ew);
                    if (j->src->put) j->src->put(j->src->ctx, j->layer, e);
                    if (r < 0) break;
                    r = 0;
                    continue;
                }
            }
            for (int64_t i = 0; i < n; i++) memcpy(b.xg + i * dim, xs + j->rows[o + i] * dim, (size_t)dim * sizeof(float));
            memset(j->ye + o * dim, 0, (size_t)(n * dim) * sizeof(float));
            r = expert_apply(team, ew, b.xg, n, j->coef + o, j->w->swiglu_limit, j->num, &b, j->ye + o * dim);
            /* a GPU tier's miss: copied in from this node's DRAM copy before it is released */
            if (!r && j->src->gpu && (r = st_gpu_experts_admit_sync(j->src->gpu, j->layer, e, ew)) > 0) r = 0;
            if (st_moe_node_hook) st_moe_node_hook(j->layer, e, node, ew);
            if (j->src->put) j->src->put(j->src->ctx, j->layer, e);
            if (r) break;
        }
    if (r < 0) snprintf(j->msg[node], sizeof j->msg[node], "%s", st_last_error());
    j->rc[node] = r < 0 ? r : 0;
    bufs_free(&b);
}

/* The CPU's next expert: the source's next() in residency order, or (a source with get() only,
 * with a GPU tier) ascending ids that have rows and are not on the device. */
static int next_cpu_expert(const st_expert_source *src, int layer, const int64_t *first, int E, int *cursor,
                           int *e, const st_expert_w **ew) {
    if (src->next) return src->next(src->ctx, layer, e, ew);
    while (*cursor < E) {
        const int x = (*cursor)++;
        if (first[x + 1] == first[x] || st_gpu_experts_placed(src->gpu, layer, x)) continue;
        int rc = src->get(src->ctx, layer, x, ew);
        if (rc) return rc;
        *e = x;
        return 1;
    }
    return 0;
}

/* The experts the GPU tier holds (st_gpu_experts_begin placed them), queued on the device: rows
 * gathered into xd (TK, dim, host, valid until the tier's end), outputs into their rows of ye. */
static int experts_on_gpu(const st_moe_w *w, int layer, const st_expert_source *src, const moe_bufs *b,
                          const float *xn, const int64_t *first, const int64_t *rows, const float *coef, float *xd,
                          float *ye, st_numerics num) {
    const int64_t dim = w->gate.cols;
    for (int e = 0; e < w->n_experts; e++) {
        const int64_t o = first[e], n = first[e + 1] - o;
        if (!n || !st_gpu_experts_placed(src->gpu, layer, e)) continue;
        const st_expert_w *ew = &w->experts[e]; /* shapes and formats (its bytes are on the device) */
        const float *xs = num == ST_NUMERICS_OFFICIAL && is_quantised(&ew->w1) ? b->xq : xn;
        for (int64_t i = 0; i < n; i++) memcpy(xd + (o + i) * dim, xs + rows[o + i] * dim, (size_t)dim * sizeof(float));
        int rc = st_gpu_experts_run(src->gpu, e, ew, xd + o * dim, n, coef + o, w->swiglu_limit,
                                    num == ST_NUMERICS_OFFICIAL, ye + o * dim);
        if (rc) return rc;
    }
    return 0;
}

/* Offload (src->next, or a GPU tier): each expert into its own rows of ye, the GPU tier's
 * on the device while the CPU computes the others in the order the source has them resident;
 * summed into out in ascending id afterwards, the same additions in the same order as the
 * ascending loop of st_moe_forward. */
static int shared_expert(st_pool *pool, const st_moe_w *w, moe_bufs *b, const float *xn, int64_t T, st_numerics num);

static int experts_as_resident(st_pool *pool, const st_moe_w *w, int layer, const st_expert_source *src, moe_bufs *b,
                               const float *xn, int64_t T, st_numerics num, float *out) {
    const int E = w->n_experts, K = w->top_k;
    const int64_t dim = w->gate.cols, TK = T * K;
    st_gpu_experts *gpu = src->gpu;
    int64_t *first = calloc((size_t)E + 1, sizeof *first), *rows = malloc((size_t)TK * sizeof *rows);
    float *coef = malloc((size_t)TK * sizeof *coef), *ye = malloc((size_t)(TK * dim) * sizeof *ye);
    float *xd = gpu ? malloc((size_t)(TK * dim) * sizeof *xd) : NULL;
    int r = ST_ERR_NOMEM, e, cursor = 0;
    if (!first || !rows || !coef || !ye || (gpu && !xd)) { r = st_error(r, "MoE: out of memory for a chunk of %lld tokens", (long long)T); goto done; }
    for (int64_t i = 0; i < TK; i++) first[b->ids[i] + 1]++;
    for (int x = 0; x < E; x++) first[x + 1] += first[x];
    int64_t *cur = malloc((size_t)E * sizeof *cur);
    if (!cur) { r = st_error(ST_ERR_NOMEM, "MoE: out of memory"); goto done; }
    memcpy(cur, first, (size_t)E * sizeof *cur);
    for (int64_t t = 0; t < T; t++)
        for (int k = 0; k < K; k++) {
            int64_t at = cur[b->ids[t * K + k]]++;
            rows[at] = t;
            coef[at] = b->wts[t * K + k];
        }
    free(cur);
    if (gpu && (r = experts_on_gpu(w, layer, src, b, xn, first, rows, coef, xd, ye, num))) goto done;
    /* the shared expert (into b->yg, added last by the caller) while the device works and the
     * source's reads are in flight */
    if (w->has_shared && (r = shared_expert(pool, w, b, xn, T, num))) goto done;
    const st_expert_w *ew;
    if (src->n_nodes > 1 && src->n_nodes <= 64 && src->next_on) { /* node i's threads on node i's experts */
        node_job *j = calloc(1, sizeof *j);
        if (!j) { r = st_error(ST_ERR_NOMEM, "MoE: out of memory"); goto done; }
        *j = (node_job){.w = w, .layer = layer, .src = src, .xn = xn, .xq = b->xq, .num = num, .first = first,
                        .rows = rows, .coef = coef, .ye = ye, .xd = xd, .T = T};
        st_pool_run_teams(pool, node_experts, j);
        r = 0;
        for (int n = 0; n < src->n_nodes && !r; n++)
            if (j->rc[n]) r = st_error(j->rc[n], "%s", j->msg[n]);
        free(j);
        if (r) goto done;
    }
    while ((r = next_cpu_expert(src, layer, first, E, &cursor, &e, &ew)) == 1) {
        const int64_t o = first[e], n = first[e + 1] - o;
        const float *xs = num == ST_NUMERICS_OFFICIAL && is_quantised(&ew->w1) ? b->xq : xn;
        /* a miss of the GPU tier with many rows (the cost model, gpu_experts.h): copied in and
         * computed on the device, both queued on its FFN stream, while the CPU goes on with the
         * other misses; the source may reuse the DRAM copy (put, next) once the copy has landed */
        if (gpu && st_gpu_experts_wants_device(gpu, n)) {
            for (int64_t i = 0; i < n; i++) memcpy(xd + (o + i) * dim, xs + rows[o + i] * dim, (size_t)dim * sizeof(float));
            r = st_gpu_experts_miss(gpu, layer, e, ew, xd + o * dim, n, coef + o, w->swiglu_limit,
                                    num == ST_NUMERICS_OFFICIAL, ye + o * dim);
            if (r != 0) {
                int r2 = r > 0 ? st_gpu_experts_miss_landed(gpu) : 0;
                if (src->put) src->put(src->ctx, layer, e);
                if (r < 0 || (r = r2)) goto done;
                continue;
            }
        }
        /* a miss of the GPU tier: its copy to the device runs while the CPU computes it from the
         * same DRAM bytes, and has landed before the source may reuse them (next() or put()) */
        if (gpu && (r = st_gpu_experts_admit(gpu, layer, e, ew)) < 0) goto done;
        for (int64_t i = 0; i < n; i++) memcpy(b->xg + i * dim, xs + rows[o + i] * dim, (size_t)dim * sizeof(float));
        memset(ye + o * dim, 0, (size_t)(n * dim) * sizeof(float));
        r = expert_apply(pool, ew, b->xg, n, coef + o, w->swiglu_limit, num, b, ye + o * dim);
        int r2 = gpu ? st_gpu_experts_admit_done(gpu) : 0;
        if (src->put) src->put(src->ctx, layer, e);
        if (r || (r = r2)) goto done;
    }
    if (!r && gpu) r = st_gpu_experts_end(gpu); /* the device's rows of ye are written from here on */
    for (int64_t i = 0; !r && i < TK; i++) {
        float *y = out + rows[i] * dim;
        const float *yi = ye + i * dim;
        for (int64_t k = 0; k < dim; k++) y[k] += yi[k];
    }
done:
    if (gpu) { /* nothing queued may outlive ye and xd */
        int r2 = st_gpu_experts_end(gpu);
        if (!r) r = r2;
    }
    free(first); free(rows); free(coef); free(ye); free(xd);
    return r;
}

/* The GPU tier's demand uses of this layer: its chosen experts that the device holds are
 * pinned there (st_gpu_experts_begin), before the source is told the layer's experts. */
static int gpu_begin(const st_moe_w *w, int layer, st_gpu_experts *gpu, const int32_t *ids, int64_t TK) {
    const int E = w->n_experts;
    int *list = malloc((size_t)E * sizeof *list);
    bool *mark = calloc((size_t)E, sizeof *mark);
    int rc = 0, n = 0;
    if (!list || !mark) rc = st_error(ST_ERR_NOMEM, "MoE: out of memory");
    for (int64_t i = 0; !rc && i < TK; i++) mark[ids[i]] = true;
    for (int e = 0; !rc && e < E; e++)
        if (mark[e]) list[n++] = e;
    if (!rc) rc = st_gpu_experts_begin(gpu, layer, list, n, NULL);
    free(list);
    free(mark);
    return rc;
}

/* The shared expert of all T tokens into b->yg (T, dim). */
static int shared_expert(st_pool *pool, const st_moe_w *w, moe_bufs *b, const float *xn, int64_t T, st_numerics num) {
    const int64_t dim = w->gate.cols;
    memset(b->yg, 0, (size_t)(T * dim) * sizeof(float));
    const float *xs = num == ST_NUMERICS_OFFICIAL && is_quantised(&w->shared.w1) ? b->xq : xn;
    return expert_apply(pool, &w->shared, xs, T, NULL, w->swiglu_limit, num, b, b->yg);
}

int st_moe_forward(st_pool *pool, const st_moe_w *w, int layer, const st_expert_source *src, const float *xn,
                   const int32_t *tokens, int64_t T, st_numerics num, float *out) {
    const int E = w->n_experts, K = w->top_k;
    const int64_t dim = w->gate.cols;
    const bool official = num == ST_NUMERICS_OFFICIAL;
    st_gpu_experts *gpu = src ? src->gpu : NULL;
    int64_t inter = w->has_shared ? w->shared.w1.rows : 0;
    for (int e = 0; e < E; e++) inter = ST_MAX(inter, w->experts[e].w1.rows);
    moe_bufs b = {0};
    int rc = ST_ERR_NOMEM;
    if (!ALLOC(b.ids, T * K) || !ALLOC(b.wts, T * K) || !ALLOC(b.xg, T * dim) || !ALLOC(b.yg, T * dim) ||
        !ALLOC(b.cg, T) || !ALLOC(b.rows, T) ||
        (official && (!ALLOC(b.xq, T * dim) || !ALLOC(b.g, T * inter) || !ALLOC(b.u, T * inter) || !ALLOC(b.o, T * dim)))) {
        rc = st_error(rc, "MoE: out of memory for a chunk of %lld tokens", (long long)T);
        goto done;
    }
    if ((rc = st_moe_route(pool, w, xn, tokens, T, b.ids, b.wts))) goto done;
    if (gpu && (rc = gpu_begin(w, layer, gpu, b.ids, T * K))) goto done;
    if (src && src->routed && (rc = src->routed(src->ctx, layer, xn, tokens, T, b.ids))) goto done;
    /* official: every quantised expert reads act_quant(xn): quantise once */
    if (official) st_act_quant(xn, T, dim, b.xq);
    memset(out, 0, (size_t)(T * dim) * sizeof(float));
    /* each expert into its own rows, summed after (the source's residency order, the GPU tier);
     * there the shared expert runs first, while reads are in flight and the device works; it is
     * still added last, so the sums are the same as below */
    const bool by_rows = src && (src->next || gpu);
    const bool shared_first = by_rows && w->has_shared;
    if (by_rows && (rc = experts_as_resident(pool, w, layer, src, &b, xn, T, num, out))) goto done;
    for (int e = 0; e < E && !by_rows; e++) {
        int64_t n = 0;
        for (int64_t t = 0; t < T; t++)
            for (int k = 0; k < K; k++)
                if (b.ids[t * K + k] == e) {
                    b.rows[n] = t;
                    b.cg[n] = b.wts[t * K + k];
                    n++;
                }
        if (!n) continue;
        const st_expert_w *ew = &w->experts[e];
        if (src && (rc = src->get(src->ctx, layer, e, &ew))) goto done;
        const float *xs = official && is_quantised(&ew->w1) ? b.xq : xn;
        for (int64_t i = 0; i < n; i++) memcpy(b.xg + i * dim, xs + b.rows[i] * dim, (size_t)dim * sizeof(float));
        memset(b.yg, 0, (size_t)(n * dim) * sizeof(float));
        rc = expert_apply(pool, ew, b.xg, n, b.cg, w->swiglu_limit, num, &b, b.yg);
        if (src) src->put(src->ctx, layer, e);
        if (rc) goto done;
        for (int64_t i = 0; i < n; i++) {
            float *o = out + b.rows[i] * dim;
            const float *yi = b.yg + i * dim;
            for (int64_t k = 0; k < dim; k++) o[k] += yi[k];
        }
    }
    if (w->has_shared) {
        if (!shared_first && (rc = shared_expert(pool, w, &b, xn, T, num))) goto done;
        for (int64_t i = 0; i < T * dim; i++) out[i] += b.yg[i];
    }
done:
    if (gpu) { /* a failure before the experts ran: the layer's pins go */
        int r2 = st_gpu_experts_end(gpu);
        if (!rc) rc = r2;
    }
    bufs_free(&b);
    return rc;
}
