/* The model side of expert streaming (see model_stream.h): where each expert's
 * tensors are in the checkpoint, the st_expert_source hooks the forward pass
 * calls (step: hash-routed layers' experts from the token ids; routed: this
 * layer's experts and the next layer's prediction from the current hidden
 * state; refine: the next layer's prediction again from its MoE input as it
 * would be without its attention, while that attention runs; next: experts
 * in residency order), and the trace of a run. STRATA_NO_REFINE=1 turns refine
 * off (A/B measurements).
 * Must never: dereference an expert's checkpoint mapping, or change what the
 * forward pass computes (predictions only move bytes). */
#include "engine/model_stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "engine/model_gpu.h"
#include "io/pack.h"
#include "offload/expert_nodes.h"
#include "offload/gpu_experts.h"
#include "offload/trace.h"

struct st_model_stream {
    st_model *m;
    st_checkpoint *ck;
    int n_layers, n_experts, top_k, n_pieces;
    st_expert_nodes *es;    /* one expert stream per NUMA node (one on one node) */
    const char **paths;
    int n_files;
    st_expert_w cur;        /* the expert handed out last (pointers into its slot) */
    st_expert_w cur_on[ST_NODES_MAX]; /* the same per node (next_on, from that node's threads) */
    int cur_layer;
    bool single;            /* get(): a one-expert layer is open */
    /* chunk being run */
    const int32_t *tokens;
    int64_t T, T_cap, token_index, next_token_index;
    int32_t *pred;          /* (n_layers, T_cap, top_k): predicted experts per token, -1 = none */
    float *pred_w;          /* (T_cap, top_k) */
    const int32_t *ids;     /* this layer's routing (T, top_k) */
    int *need, n_need;      /* this layer's distinct experts, ascending */
    int *predicted;         /* (n_experts) the experts a prediction names (routed: in token order; refine: ascending) */
    bool *hit;              /* (n_experts) */
    bool *mark;             /* (n_experts) */
    uint64_t layer_t0;
    st_trace_writer *trace;
};

/* ---- where the bytes are ---------------------------------------------------------- */


static const char *const piece_names[6] = {"w1.weight", "w1.scale", "w3.weight", "w3.scale", "w2.weight", "w2.scale"};

static int ms_locate(void *ctx, int layer, int expert, st_stream_piece *pieces) {
    st_model_stream *ms = ctx;
    int step = ms->n_pieces == 6 ? 1 : 2; /* without scales: weights only */
    for (int i = 0, p = 0; i < 6; i += step, p++) {
        char name[160];
        snprintf(name, sizeof name, "layers.%d.ffn.experts.%d.%s", layer, expert, piece_names[i]);
        st_tensor_view v;
        int rc = st_checkpoint_locate(ms->ck, name, &v);
        if (rc == ST_ERR_NOT_FOUND) return st_error(rc, "tensor %s: missing", name);
        if (rc) return rc;
        pieces[p] = (st_stream_piece){.file = v.shard, .offset = v.file_offset, .bytes = v.nbytes};
    }
    return 0;
}

/* The descriptor of (layer, expert) with its tensors at pieces (in slot memory). */
static void bind_pieces(st_model_stream *ms, int layer, int expert, const void **pieces, st_expert_w *dst) {
    st_expert_w w = ms->m->layers[layer].moe.experts[expert];
    st_weight *order[3] = {&w.w1, &w.w3, &w.w2};
    for (int i = 0; i < 3; i++) {
        if (ms->n_pieces == 6) {
            order[i]->data = pieces[2 * i];
            order[i]->scale = pieces[2 * i + 1];
        } else {
            order[i]->data = pieces[i];
        }
    }
    *dst = w;
}

/* ---- the hooks ------------------------------------------------------------------------ */

static int grow_chunk(st_model_stream *ms, int64_t T) {
    if (T <= ms->T_cap) return 0;
    size_t K = (size_t)ms->top_k;
    int32_t *p = realloc(ms->pred, (size_t)ms->n_layers * (size_t)T * K * sizeof *p);
    if (!p) return st_error(ST_ERR_NOMEM, "expert stream: out of memory for %lld tokens", (long long)T);
    ms->pred = p;
    float *pw = realloc(ms->pred_w, (size_t)T * K * sizeof *pw);
    if (!pw) return st_error(ST_ERR_NOMEM, "expert stream: out of memory");
    ms->pred_w = pw;
    ms->T_cap = T;
    return 0;
}

/* Distinct experts of ids (n entries) into out (n_experts), ascending. */
static int distinct_into(st_model_stream *ms, const int32_t *ids, int64_t n, int *out) {
    memset(ms->mark, 0, (size_t)ms->n_experts);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < ms->n_experts) ms->mark[ids[i]] = true;
    int k = 0;
    for (int e = 0; e < ms->n_experts; e++)
        if (ms->mark[e]) out[k++] = e;
    return k;
}

/* ... into ms->need: the current layer's experts (or a step's certain ones). */
static int distinct(st_model_stream *ms, const int32_t *ids, int64_t n) { return distinct_into(ms, ids, n, ms->need); }

/* Predictions skip the experts the GPU tier holds now: the device computes them, no DRAM copy
 * is needed (should one be evicted before its use, it is a demand load). Returns the count kept. */
static int drop_gpu_held(st_model_stream *ms, int layer, int *experts, int n) {
    int k = 0;
    for (int i = 0; i < n; i++)
        if (!st_gpu_experts_holds(ms->m->experts.gpu, layer, experts[i])) experts[k++] = experts[i];
    return k;
}

static int32_t *pred_of(st_model_stream *ms, int layer) { return ms->pred + (size_t)layer * (size_t)ms->T_cap * (size_t)ms->top_k; }

static int ms_step(void *ctx, const int32_t *tokens, int64_t T) {
    st_model_stream *ms = ctx;
    int rc = grow_chunk(ms, T);
    if (rc) return rc;
    ms->tokens = tokens;
    ms->T = T;
    ms->token_index = ms->next_token_index;
    ms->next_token_index += T;
    for (size_t i = 0; i < (size_t)ms->n_layers * (size_t)ms->T_cap * (size_t)ms->top_k; i++) ms->pred[i] = -1;
    st_expert_nodes_step(ms->es);
    /* hash-routed layers: the experts follow from the token ids, queued now (they are certain) */
    const int K = ms->top_k;
    for (int l = 0; l < ms->n_layers; l++) {
        const st_moe_w *mw = &ms->m->layers[l].moe;
        if (!mw->hash) continue;
        int32_t *p = pred_of(ms, l);
        for (int64_t t = 0; t < T; t++)
            for (int k = 0; k < K; k++) {
                int64_t e = tokens[t] >= 0 && tokens[t] < ms->m->vocab ? mw->tid2eid[(int64_t)tokens[t] * K + k] : -1;
                p[t * K + k] = e >= 0 && e < ms->n_experts ? (int32_t)e : -1;
            }
        int n = drop_gpu_held(ms, l, ms->need, distinct(ms, p, T * K));
        if ((rc = st_expert_nodes_request(ms->es, l, ms->need, n))) return rc;
    }
    return 0;
}

static int ms_routed(void *ctx, int layer, const float *xn, const int32_t *tokens, int64_t T, const int32_t *ids) {
    st_model_stream *ms = ctx;
    if (ms->single) { st_expert_nodes_end(ms->es); ms->single = false; }
    if (T > ms->T_cap || ms->tokens != tokens) { /* called without step (a caller that drives moe alone) */
        int rc = ms_step(ctx, tokens, T);
        if (rc) return rc;
    }
    ms->layer_t0 = st_time_ns();
    ms->ids = ids;
    ms->cur_layer = layer;
    ms->n_need = distinct(ms, ids, T * ms->top_k);
    /* the experts the GPU tier computes this layer need no DRAM copy */
    int kept = 0;
    for (int i = 0; i < ms->n_need; i++)
        if (!st_gpu_experts_placed(ms->m->experts.gpu, layer, ms->need[i])) ms->need[kept++] = ms->need[i];
    ms->n_need = kept;
    int rc = st_expert_nodes_begin(ms->es, layer, ms->need, ms->n_need, ms->hit);
    if (rc) return rc;
    /* layer + 1's gate on this layer's input: its likely experts load while these compute */
    if (layer + 1 < ms->n_layers) {
        const st_moe_w *nw = &ms->m->layers[layer + 1].moe;
        int32_t *p = pred_of(ms, layer + 1);
        if (!nw->hash) { /* only each token's most confident predictions (ST_MOE_PREDICT_TOP) */
            int n;
            if ((rc = st_moe_predict(ms->m->pool, nw, xn, tokens, T, ST_MOE_PREDICT_TOP, p, ms->pred_w, ms->mark,
                                     ms->predicted, &n)))
                return rc;
            n = drop_gpu_held(ms, layer + 1, ms->predicted, n); /* computed there */
            if ((rc = st_expert_nodes_predict(ms->es, layer + 1, ms->predicted, ST_MIN(n, ST_PREFETCH_BATCH_MAX * 4))))
                return rc;
        }
    }
    return 0;
}

/* Layer `layer`'s experts predicted again from its MoE input without its
 * attention (forward.c: refine_next): replaces the prediction routed() made
 * from the previous layer's input; queued loads it no longer names are
 * dropped before they reach the disk. */
static int ms_refine(void *ctx, int layer, const float *xn, const int32_t *tokens, int64_t T) {
    st_model_stream *ms = ctx;
    const int K = ms->top_k;
    if (layer <= 0 || layer >= ms->n_layers || T > ms->T_cap || ms->tokens != tokens) return 0;
    /* a step that needs most experts, or more than half the slots, gains nothing from predictions:
     * their reads would evict what the step itself uses */
    if ((int64_t)T * K >= ms->n_experts || (int64_t)T * K * 2 > st_expert_nodes_slots(ms->es)) return 0;
    const st_moe_w *w = &ms->m->layers[layer].moe;
    int32_t *p = pred_of(ms, layer);
    int rc = st_moe_route(ms->m->pool, w, xn, tokens, T, p, ms->pred_w);
    if (rc) return rc;
    /* all of each token's experts: on flash-2l this prediction had 98, 95, 93, 70, 65 and 51% of
     * its ranks right (the one from the previous layer's input 65, 60, 42, 21, 33, 28%) */
    int n = distinct_into(ms, p, T * K, ms->predicted);
    n = drop_gpu_held(ms, layer, ms->predicted, n);
    return st_expert_nodes_predict(ms->es, layer, ms->predicted, n);
}

static int write_trace(st_model_stream *ms, int layer, uint64_t stall_ns) {
    double layer_us = (double)(st_time_ns() - ms->layer_t0) / 1e3;
    const int K = ms->top_k;
    const int32_t *p = pred_of(ms, layer);
    for (int64_t t = 0; t < ms->T; t++) {
        st_trace_record r = {.token_index = ms->token_index + t, .token_id = ms->tokens[t], .layer = layer,
                             .has_hits = true, .wait_us = (double)stall_ns / 1e3, .layer_us = layer_us};
        for (int k = 0; k < K && k < ST_TRACE_MAX_EXPERTS; k++) {
            int e = ms->ids[t * K + k];
            r.chosen[r.n_chosen] = e;
            for (int i = 0; i < ms->n_need; i++)
                if (ms->need[i] == e && ms->hit[i]) r.hit_mask |= 1ull << r.n_chosen;
            r.n_chosen++;
            if (p[t * K + k] >= 0) r.predicted[r.n_predicted++] = p[t * K + k];
        }
        int rc = st_trace_write(ms->trace, &r);
        if (rc) return rc;
    }
    return 0;
}

static int ms_next(void *ctx, int layer, int *expert, const st_expert_w **out) {
    st_model_stream *ms = ctx;
    const void *pieces[ST_STREAM_MAX_PIECES];
    int r = st_expert_nodes_next(ms->es, expert, pieces);
    if (r == 1) {
        bind_pieces(ms, layer, *expert, pieces, &ms->cur);
        *out = &ms->cur;
        return 1;
    }
    uint64_t stall = st_expert_nodes_end(ms->es);
    if (r == 0 && ms->trace) r = write_trace(ms, layer, stall);
    return r;
}

/* Node `node`'s next expert, from that node's team (st_moe_forward with several nodes). */
static int ms_next_on(void *ctx, int layer, int node, int *expert, const st_expert_w **out) {
    st_model_stream *ms = ctx;
    const void *pieces[ST_STREAM_MAX_PIECES];
    int r = st_expert_nodes_next_on(ms->es, node, expert, pieces);
    if (r == 1) {
        bind_pieces(ms, layer, *expert, pieces, &ms->cur_on[node]);
        *out = &ms->cur_on[node];
    }
    return r;
}

/* One expert outside a layer batch (callers without `next`): pinned until put. */
static int ms_get(void *ctx, int layer, int expert, const st_expert_w **out) {
    st_model_stream *ms = ctx;
    if (layer < 0 || layer >= ms->n_layers || expert < 0 || expert >= ms->n_experts)
        return st_error(ST_ERR_INVALID, "expert stream: no expert %d in layer %d", expert, layer);
    int rc = st_expert_nodes_begin(ms->es, layer, &expert, 1, NULL);
    const void *pieces[ST_STREAM_MAX_PIECES];
    int e;
    if (!rc && (rc = st_expert_nodes_next(ms->es, &e, pieces)) == 1) {
        bind_pieces(ms, layer, expert, pieces, &ms->cur);
        ms->single = true;
        *out = &ms->cur;
        return 0;
    }
    st_expert_nodes_end(ms->es);
    return rc ? rc : st_error(ST_ERR_INTERNAL, "expert stream: layer %d expert %d was not handed out", layer, expert);
}

static void ms_put(void *ctx, int layer, int expert) {
    st_model_stream *ms = ctx;
    if (ms->single) {
        st_expert_nodes_end(ms->es);
        ms->single = false;
    }
    (void)layer;
    (void)expert;
}

/* ---- attach ------------------------------------------------------------------------------ */

void st_model_stream_free(st_model_stream *ms) {
    if (!ms) return;
    st_expert_nodes_free(ms->es);
    if (ms->trace && st_trace_writer_close(ms->trace)) ST_WARN("trace: %s", st_last_error());
    free(ms->paths);
    free(ms->pred);
    free(ms->pred_w);
    free(ms->need);
    free(ms->predicted);
    free(ms->hit);
    free(ms->mark);
    free(ms);
}

int st_model_stream_attach(st_model *m, st_checkpoint *ck, const st_config *cfg, const st_model_opts *o,
                           uint64_t cache_bytes, st_model_stream **out) {
    *out = NULL;
    st_model_stream *ms = calloc(1, sizeof *ms);
    if (!ms) return st_error(ST_ERR_NOMEM, "expert stream: out of memory");
    ms->m = m;
    ms->ck = ck;
    ms->n_layers = m->n_layers;
    ms->n_experts = cfg->n_routed_experts;
    ms->top_k = cfg->n_activated_experts;
    const st_expert_w *e0 = &m->layers[0].moe.experts[0];
    ms->n_pieces = e0->w1.scale ? 6 : 3;
    int rc = ST_ERR_NOMEM;
    ms->need = calloc((size_t)ms->n_experts, sizeof *ms->need);
    ms->predicted = calloc((size_t)ms->n_experts, sizeof *ms->predicted);
    ms->hit = calloc((size_t)ms->n_experts, sizeof *ms->hit);
    ms->mark = calloc((size_t)ms->n_experts, sizeof *ms->mark);
    if (!ms->need || !ms->predicted || !ms->hit || !ms->mark) { rc = st_error(rc, "expert stream: out of memory"); goto fail; }
    for (int l = 0; l < m->n_layers; l++)
        for (int e = 0; e < ms->n_experts; e++) {
            const st_expert_w *x = &m->layers[l].moe.experts[e];
            if ((x->w1.scale != NULL) != (ms->n_pieces == 6) || (x->w2.scale != NULL) != (ms->n_pieces == 6) ||
                (x->w3.scale != NULL) != (ms->n_pieces == 6)) {
                rc = st_error(ST_ERR_UNSUPPORTED, "expert stream: layer %d expert %d mixes quantised and plain "
                              "tensors with the other experts", l, e);
                goto fail;
            }
        }
    struct st_pack *pk = st_checkpoint_pack(ck);
    st_sft *sf = st_checkpoint_files(ck);
    ms->n_files = pk ? st_pack_file_count(pk) : st_sft_shard_count(sf);
    if (!(ms->paths = calloc((size_t)ms->n_files, sizeof *ms->paths))) { rc = st_error(rc, "out of memory"); goto fail; }
    for (int f = 0; f < ms->n_files; f++) ms->paths[f] = pk ? st_pack_file_path(pk, f) : st_sft_shard_path(sf, f);
    st_stream_desc d = {.n_layers = m->n_layers, .n_experts = ms->n_experts, .n_pieces = ms->n_pieces,
                        .paths = ms->paths, .n_files = ms->n_files, .locate = ms_locate, .ctx = ms};
    st_stream_opts so = {.cache_bytes = cache_bytes, .n_slots = o->expert_slots, .policy = (st_policy_kind)o->cache_policy,
                         .no_prefetch = o->no_prefetch, .queue_depth = o->prefetch_depth, .io_depth = o->io_depth};
    if ((rc = st_expert_nodes_new(&d, &so, o->numa, m->pool, &ms->es))) goto fail; /* --numa: nodes, teams, budgets */
    if (o->trace_path) {
        st_trace_header h = {.version = ST_TRACE_VERSION, .n_layers = m->n_layers, .n_experts = ms->n_experts,
                             .top_k = ms->top_k};
        st_stream_stats ss;
        st_expert_nodes_get_stats(ms->es, &ss);
        h.expert_bytes = ss.expert_bytes;
        snprintf(h.source, sizeof h.source, "strata run: %d slots, prefetch %s", ss.n_slots, o->no_prefetch ? "off" : "on");
        if ((rc = st_trace_writer_open(o->trace_path, &h, &ms->trace))) goto fail;
    }
    /* from now on nothing reads the experts through the checkpoint's mapping */
    for (int l = 0; l < m->n_layers; l++)
        for (int e = 0; e < ms->n_experts; e++) {
            st_expert_w *x = &m->layers[l].moe.experts[e];
            x->w1.data = x->w2.data = x->w3.data = NULL;
            x->w1.scale = x->w2.scale = x->w3.scale = NULL;
        }
    m->experts = (st_expert_source){.get = ms_get, .put = ms_put, .ctx = ms, .routed = ms_routed, .next = ms_next,
                                    .step = ms_step, .refine = o->no_prefetch || getenv("STRATA_NO_REFINE") ? NULL : ms_refine /* A/B switch */, .n_nodes = st_expert_nodes_count(ms->es), .next_on = ms_next_on};
    *out = ms;
    return 0;
fail:
    st_model_stream_free(ms);
    return rc;
}

typedef struct preload_job {
    st_model_stream *ms;
    st_progress *pg;
    int rc[ST_NODES_MAX];
    char msg[ST_NODES_MAX][320];
} preload_job;

/* Node `team`'s experts of every layer into its stream, from that node's team leader (the
 * nodes' streams are independent: the nodes load at once, each copy or read on its own thread). */
static void preload_node(void *ctx, int team, st_pool *tp) {
    (void)tp;
    preload_job *j = ctx;
    st_model_stream *ms = j->ms;
    st_expert_stream *s = st_expert_nodes_stream(ms->es, team);
    int *mine = malloc((size_t)ms->n_experts * sizeof *mine), k = 0, rc = 0;
    if (!mine) rc = st_error(ST_ERR_NOMEM, "expert preload: out of memory");
    for (int e = 0; mine && e < ms->n_experts; e++)
        if (st_expert_nodes_owner(ms->es, 0, e) == team) mine[k++] = e;
    for (int l = 0; !rc && l < ms->n_layers; l++) {
        int e;
        const void *pieces[ST_STREAM_MAX_PIECES];
        if (!(rc = st_expert_stream_begin(s, l, mine, k, NULL)))
            while ((rc = st_expert_stream_next(s, &e, pieces)) == 1) {}
        st_expert_stream_end(s);
        if (team == 0) st_progress_update(j->pg, (uint64_t)l + 1);
    }
    if (rc < 0) snprintf(j->msg[team], sizeof j->msg[team], "%s", st_last_error());
    j->rc[team] = rc < 0 ? rc : 0;
    free(mine);
}

/* Every routed expert into its node's slots, once, the nodes at the same time.
 * On a warm machine (the checkpoint in the page cache: a second run) the
 * cached pages are copied instead of read again from disk (150 GB of
 * V4-Flash at 3 GB/s is ~50 s); only what the cache does not hold is read,
 * with O_DIRECT. The bytes are the file's either way. STRATA_PRELOAD_COLD=1
 * reads everything, STRATA_PRELOAD_SERIAL=1 loads the nodes one after the
 * other from this thread (A/B). */
int st_model_stream_preload(st_model_stream *ms, bool progress) {
    int *all = malloc((size_t)ms->n_experts * sizeof *all), rc = 0;
    if (!all) return st_error(ST_ERR_NOMEM, "expert preload: out of memory");
    for (int e = 0; e < ms->n_experts; e++) all[e] = e;
    const char *cold = getenv("STRATA_PRELOAD_COLD");
    if (!(cold && *cold && *cold != '0')) rc = st_expert_nodes_set_warm_copy(ms->es, ms->paths);
    st_stream_stats s0, s1;
    st_expert_nodes_get_stats(ms->es, &s0);
    uint64_t t0 = st_time_ns();
    st_progress pg;
    st_progress_begin(&pg, "experts to their NUMA nodes", (uint64_t)ms->n_layers, false, !progress);
    const int nodes = st_expert_nodes_count(ms->es);
    const char *serial = getenv("STRATA_PRELOAD_SERIAL"); /* A/B: the nodes one after the other, from here */
    const bool teams = nodes > 1 && st_pool_team_count(ms->m->pool) == nodes && !(serial && *serial && *serial != '0');
    if (!rc && teams) {
        preload_job *j = calloc(1, sizeof *j);
        if (!j) rc = st_error(ST_ERR_NOMEM, "expert preload: out of memory");
        else {
            j->ms = ms;
            j->pg = &pg;
            st_pool_run_teams(ms->m->pool, preload_node, j);
            for (int i = 0; !rc && i < nodes; i++)
                if (j->rc[i]) rc = st_error(j->rc[i], "node %d: %s", st_expert_nodes_os_node(ms->es, i), j->msg[i]);
            free(j);
        }
    }
    for (int l = 0; !rc && !teams && l < ms->n_layers; l++) { /* one node (or no teams): here */
        int e;
        const void *pieces[ST_STREAM_MAX_PIECES];
        if (!(rc = st_expert_nodes_begin(ms->es, l, all, ms->n_experts, NULL)))
            while ((rc = st_expert_nodes_next(ms->es, &e, pieces)) == 1) {}
        st_expert_nodes_end(ms->es);
        st_progress_update(&pg, (uint64_t)l + 1);
    }
    st_progress_end(&pg);
    st_expert_nodes_set_warm_copy(ms->es, NULL);
    free(all);
    if (rc < 0) return st_error_prefix(rc, "expert preload: ");
    st_expert_nodes_get_stats(ms->es, &s1);
    char a[32], b[32];
    double secs = (double)(st_time_ns() - t0) / 1e9;
    if (progress) /* after the bar, also when stderr is not a terminal (logs of runs) */
        fprintf(stderr, "experts preloaded in %.1f s on %d node(s): %s copied from the page cache, %s read from disk\n",
                secs, nodes, st_fmt_size(s1.bytes_copied - s0.bytes_copied, a, sizeof a),
                st_fmt_size(s1.bytes_read - s0.bytes_read, b, sizeof b));
    return 0;
}

struct st_expert_nodes *st_model_expert_nodes(const st_model *m) {
    return m->experts.get == ms_get ? ((st_model_stream *)m->experts.ctx)->es : NULL;
}

/* ---- numbers -------------------------------------------------------------------------------- */

int st_model_offload_stats(const st_model *m, st_stream_stats *out) {
    if (m->experts.get != ms_get) return ST_ERR_NOT_FOUND;
    st_expert_nodes_get_stats(((st_model_stream *)m->experts.ctx)->es, out);
    return 0;
}

static void dram_summary(const st_model *m, double elapsed_s, char *buf, size_t len);

/* The DRAM / NVMe tiers' line, then the GPU tier's (engine/model_gpu.c) when there is one. */
void st_model_offload_summary(const st_model *m, double elapsed_s, char *buf, size_t len) {
    dram_summary(m, elapsed_s, buf, len);
    size_t n = strlen(buf);
    if (m->experts.gpu && n + 3 < len) {
        snprintf(buf + n, len - n, "; ");
        st_model_gpu_summary(m, buf + n + 2, len - n - 2);
    }
}

static void dram_summary(const st_model *m, double elapsed_s, char *buf, size_t len) {
    st_stream_stats s;
    if (st_model_offload_stats(m, &s)) { snprintf(buf, len, "all weights in DRAM"); return; }
    char a[32], b[32], c[32];
    const st_prefetch_stats *p = &s.pf;
    double needs = p->needs ? (double)p->needs : 1.0;
    int n = snprintf(buf, len, "experts: DRAM %d slots (%s), hit %.1f%%, late %.1f%%, miss %.1f%%", s.n_slots,
                     st_fmt_size(s.cache_bytes, a, sizeof a), 100.0 * (double)p->hits / needs,
                     100.0 * (double)p->late / needs, 100.0 * (double)p->misses / needs);
    if (n < 0 || (size_t)n >= len) return;
    if (elapsed_s > 0)
        n += snprintf(buf + n, len - (size_t)n, ", stall %.1f%%", 100.0 * (double)p->stall_ns / 1e9 / elapsed_s);
    if (n < 0 || (size_t)n >= len) return;
    snprintf(buf + n, len - (size_t)n, ", wasted %s, NVMe read %s (%s%s)", st_fmt_size(p->wasted_bytes, b, sizeof b),
             st_fmt_size(s.bytes_read, c, sizeof c), s.io_backend ? s.io_backend : "?",
             s.direct_files == s.files ? ", O_DIRECT" : ", buffered");
}
