/* V4 attention (see attention.h).
 *
 * Projections run batched over the chunk; then tokens are walked in order,
 * because each token may complete a compressor block whose entry it can
 * already see. Walking in order makes prefill, chunked prefill and one-token
 * decode the same computation. Follows the official Attention / Compressor /
 * Indexer; MODEL.md lists the semantics. The per-sequence state and the
 * compressors live in compressor.c.
 */
#include "engine/attention.h"
#include "engine/attention_internal.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/attn.h"
#include "cpu/formats.h"
#include "cpu/quant.h"
#include "offload/kv_pages.h"

static int is_quantised(const st_weight *w) { return w->fmt == ST_WF_FP8 || w->fmt == ST_WF_FP4; }

void st_act_quant(const float *x, int64_t T, int64_t cols, float *xq) {
    if (xq != x) memcpy(xq, x, (size_t)(T * cols) * sizeof(float));
    if (cols % 128 == 0) st_quant_sim_e4m3(xq, T * cols, 128); /* rows hold whole blocks: one pass */
    else
        for (int64_t t = 0; t < T; t++) st_quant_sim_e4m3(xq + t * cols, cols, 128);
}

int st_linear(st_pool *pool, const st_weight *w, const float *x, int64_t T, float *y, st_numerics num) {
    if (num != ST_NUMERICS_OFFICIAL || !is_quantised(w)) return st_matmul(pool, w, x, T, y, ST_ACT_F32);
    size_t n = (size_t)T * (size_t)w->cols;
    float *xq = malloc(n * sizeof(float));
    if (!xq) return st_error(ST_ERR_NOMEM, "linear: out of memory for %zu activations", n);
    st_act_quant(x, T, w->cols, xq);
    int rc = st_matmul(pool, w, xq, T, y, ST_ACT_F32);
    free(xq);
    return rc;
}

/* st_linear with the activations already quantised once (xq, official numerics)
 * for every quantised weight that reads the same input. */
static int linear_pre(st_pool *pool, const st_weight *w, const float *x, const float *xq, int64_t T, float *y,
                      st_numerics num) {
    const bool q = num == ST_NUMERICS_OFFICIAL && is_quantised(w);
    return st_matmul(pool, w, q ? xq : x, T, y, ST_ACT_F32);
}

int st_weight_rows(const st_weight *w, int64_t r0, int64_t r1, st_weight *v) {
    *v = *w;
    v->rows = r1 - r0;
    const uint8_t *d = w->data, *s = w->scale;
    switch (w->fmt) {
    case ST_WF_F32: v->data = d + r0 * w->cols * 4; break;
    case ST_WF_BF16: v->data = d + r0 * w->cols * 2; break;
    case ST_WF_FP8:
        if (r0 % 128) return st_error(ST_ERR_UNSUPPORTED, "FP8 row view at row %lld (not a multiple of 128)", (long long)r0);
        v->data = d + r0 * w->cols;
        v->scale = s + (r0 / 128) * ST_DIV_UP(w->cols, 128) * (w->scale_fmt == ST_SCALE_F32 ? 4 : 1);
        break;
    case ST_WF_FP4:
        v->data = d + r0 * w->cols / 2;
        v->scale = s + r0 * (w->cols / 32);
        break;
    }
    return 0;
}

/* ---- attention over the candidates of one token ----------------------------------- */

typedef struct attn_job {
    const st_attn_w *w;
    const float *q;          /* (n_heads, head_dim) of this token */
    const void *const *cand; /* candidate KV rows: n_f32 F32 rows, then packed entries (st_attn_heads_kv) */
    int64_t n_cand, n_f32, rope;
    float *o;                /* (n_heads, head_dim) */
    float *scratch;          /* (n_heads, n_cand) */
    float *tile;             /* packed rows decoded a chunk at a time: (nth or 1, tile_len) */
    int64_t tile_len;
    bool tile_per_thread;    /* run by the pool: thread ith uses tile ith */
} attn_job;

static void attn_heads(void *ctx, int ith, int nth) {
    attn_job *j = ctx;
    const st_attn_w *w = j->w;
    const int64_t hd = w->head_dim, nc = j->n_cand;
    int64_t h0, h1;
    st_split(w->n_heads, ith, nth, 4, &h0, &h1); /* the kernels take heads four at a time */
    if (h1 > h0)
        st_attn_heads_kv(j->q + h0 * hd, h1 - h0, j->cand, j->n_f32, nc, hd, j->rope, 1.0f / sqrtf((float)hd),
                         w->sink + h0, j->tile + (j->tile_per_thread ? ith * j->tile_len : 0), j->scratch + h0 * nc,
                         j->o + h0 * hd);
}

/* Indexer over a group of consecutive tokens of the chunk: the visible keys are
 * cut in tiles that stay in cache while every query of the group scores them
 * (prefill reads each key once per group instead of once per token). A key's
 * score does not depend on the tile (kernel contract, tested), so this is the
 * per-token computation. */
enum { INDEX_GROUP = 8, INDEX_TILE = 512 };
enum { KV_PREFETCH_AHEAD = 1 }; /* tokens read ahead: more would hold fast frames the next get needs (in-flight pages cannot be dropped) */
enum { HCA_DECODE_MIN_T = 4 }; /* chunks of more tokens decode the packed HCA entries once for all of them */

typedef struct index_job {
    const st_indexer_w *ix;
    const st_comp_state *ks;     /* the keys: ks->entries (n_keys, entry_bytes) */
    float *dq;                   /* (nth, INDEX_TILE, head_dim) keys of a tile, decoded (packed keys) */
    const st_index_q *qp;        /* (g) the queries as integer codes (packed keys, e2m1 q) or NULL */
    const float *iq, *iw;        /* (g, n_heads, head_dim), (g, n_heads) */
    const int64_t *n_vis;        /* (g) keys visible to each query */
    int64_t g, n_max;
    float *scores;               /* (g, n_max) */
    int32_t *sel;                /* (g, topk) */
} index_job;

static void index_rows(void *ctx, int ith, int nth) {
    index_job *j = ctx;
    const int64_t hd = j->ix->head_dim, H = j->ix->n_heads;
    int64_t s0, s1;
    st_split(j->n_max, ith, nth, 16, &s0, &s1);
    const st_comp_state *ks = j->ks;
    for (int64_t a = s0; a < s1; a += INDEX_TILE) {
        const int64_t b = ST_MIN(s1, a + INDEX_TILE);
        const float *keys = (const float *)ks->entries + a * hd;
        if (j->qp) { /* exact block dot products straight from the packed keys */
            const uint8_t *src = (const uint8_t *)ks->entries + (size_t)a * ks->entry_bytes;
            for (int64_t q = 0; q < j->g; q++) {
                const int64_t e = ST_MIN(b, j->n_vis[q]);
                if (e > a) st_index_scores_e2m1(&j->qp[q], j->iw + q * H, src, ks->entry_bytes, e - a, j->scores + q * j->n_max + a);
            }
            continue;
        }
        if (ks->packed) { /* decoded once per tile for the whole group */
            float *dq = j->dq + (int64_t)ith * INDEX_TILE * hd;
            st_comp_entries_decode(ks, &j->ix->comp, (const uint8_t *)ks->entries + (size_t)a * ks->entry_bytes, b - a, dq);
            keys = dq;
        }
        for (int64_t q = 0; q < j->g; q++) {
            const int64_t e = ST_MIN(b, j->n_vis[q]);
            if (e > a)
                st_index_scores(j->iq + q * H * hd, j->iw + q * H, keys, H, hd, e - a, j->scores + q * j->n_max + a);
        }
    }
}

static void index_topk(void *ctx, int ith, int nth) {
    index_job *j = ctx;
    const int64_t topk = j->ix->topk;
    for (int64_t q = ith; q < j->g; q += nth) {
        const int64_t k = ST_MIN(topk, j->n_vis[q]);
        if (k > 0) st_topk(j->scores + q * j->n_max, j->n_vis[q], k, j->sel + q * topk, NULL);
    }
}

/* sel (T, topk) = top-k key ids of every token of the chunk; n_vis (T). */
static void index_select_chunk(st_pool *pool, const st_indexer_w *ix, const st_comp_state *ks, float *dq,
                               unsigned char *qbuf, const float *iq, const float *iw, const int64_t *n_vis, int64_t T,
                               float *scores, int32_t *sel) {
    const int64_t H = ix->n_heads, hd = ix->head_dim;
    const size_t qbytes = st_index_q_bytes(H, hd);
    st_index_q qp[INDEX_GROUP];
    for (int64_t t0 = 0; t0 < T; t0 += INDEX_GROUP) {
        const int64_t g = ST_MIN(INDEX_GROUP, T - t0);
        /* official numerics: q is e2m1 too, so the scores come exactly from integer codes
         * (a q that is not, e.g. non-finite, takes the decode-then-F32 path) */
        bool exact = qbuf != NULL;
        for (int64_t q = 0; exact && q < g; q++)
            exact = st_index_q_pack(iq + (t0 + q) * H * hd, H, hd, qbuf + (size_t)q * qbytes, &qp[q]);
        index_job j = {.ix = ix, .ks = ks, .dq = dq, .qp = exact ? qp : NULL, .iq = iq + t0 * H * hd, .iw = iw + t0 * H,
                       .n_vis = n_vis + t0, .g = g, .n_max = n_vis[t0 + g - 1], .scores = scores,
                       .sel = sel + t0 * ix->topk};
        if (j.n_max * g >= 256) {
            st_pool_run(pool, index_rows, &j);
            if (g == 1 && n_vis[t0] >= ST_TOPK_POOL_MIN) /* a decoded token: its one row over every thread */
                st_topk_pool(pool, scores, n_vis[t0], ST_MIN((int64_t)ix->topk, n_vis[t0]), j.sel, NULL);
            else
                st_pool_run(pool, index_topk, &j);
        }
        else { index_rows(&j, 0, 1); index_topk(&j, 0, 1); }
    }
}

/* ---- attention of the chunk's tokens --------------------------------------------------- */

/* Candidates of token t (position p): the window (positions p-W+1..p, read
 * from the chunk's own rows or, before the chunk, from the ring as it was when
 * the chunk began) then the compressed entries it sees. */
typedef struct chunk_attn {
    const st_attn_w *w;
    st_layer_state *s;
    const float *q, *kv;     /* (T, n_heads*head_dim), (T, head_dim) */
    const int64_t *n_main;   /* (T) main compressed entries visible */
    const int32_t *sel;      /* (T, topk) on CSA layers */
    const int64_t *n_sel;    /* (T) */
    int64_t pos0, T, max_cand;
    float *o;                /* (T, n_heads*head_dim) */
    const void **cand;       /* (nth, max_cand) */
    float *scratch;          /* (nth, max_cand * n_heads) */
    const void **paged;      /* (topk) */
    unsigned char *gathered; /* (topk, entry_bytes): the top-k copied when the budget cannot pin it at once */
    float *tile;             /* (nth, tile_len): packed rows decoded a chunk at a time */
    int64_t tile_len;
    const float *hca;        /* (n_entries, head_dim): packed HCA entries decoded once (prefill), or NULL */
    float *split_tmp;        /* (nth, split_len) for split_attn; NULL: never split */
    int64_t split_len;
    st_numerics num;
    int rc;
} chunk_attn;

/* Candidates of token t into cand; *n_f32: how many of them (the first) are
 * F32 rows, the rest being packed entries the kernels decode as they go. */
static int64_t token_cands(const chunk_attn *c, int64_t t, const void **cand, int64_t *n_f32) {
    const st_attn_w *w = c->w;
    const st_layer_state *s = c->s;
    const int64_t hd = w->head_dim, W = w->window, p = c->pos0 + t;
    int64_t nc = 0;
    for (int64_t q = ST_MAX(0, p - W + 1); q <= p; q++)
        cand[nc++] = q >= c->pos0 ? c->kv + (q - c->pos0) * hd : s->window + (q % W) * hd;
    const st_comp_state *cs = &s->comp;
    *n_f32 = nc;
    if (w->kind == ST_LAYER_CSA && !cs->pages) {
        const int32_t *sel = c->sel + t * w->idx.topk;
        for (int64_t i = 0; i < c->n_sel[t]; i++)
            cand[nc++] = (const uint8_t *)cs->entries + (size_t)sel[i] * cs->entry_bytes;
    } else if (w->kind == ST_LAYER_HCA) {
        const bool stored = cs->packed && !c->hca;
        for (int64_t i = 0; i < c->n_main[t]; i++)
            cand[nc++] = stored ? (const void *)((const uint8_t *)cs->entries + (size_t)i * cs->entry_bytes)
                                : (const void *)((cs->packed ? c->hca : (const float *)cs->entries) + i * hd);
        if (!stored) *n_f32 = nc;
    }
    if (!cs->packed) *n_f32 = nc;
    return nc;
}

static void token_finish(const chunk_attn *c, int64_t t) {
    const st_attn_w *w = c->w;
    const int64_t qh = (int64_t)w->n_heads * w->head_dim;
    float *ot = c->o + t * qh;
    if (c->num == ST_NUMERICS_OFFICIAL) st_round_bf16(ot, qh);
    st_rope_apply(ot, w->n_heads, w->head_dim, (int)w->rope_dims, w->inv_freq, c->pos0 + t, true);
    if (c->num == ST_NUMERICS_OFFICIAL) st_round_bf16(ot, qh);
}

/* Tokens split over the threads; each token's heads go in the same groups as
 * the one-token path (attn_heads for every (ith, nth)), so results match it. */
static void attn_tokens(void *ctx, int ith, int nth) {
    chunk_attn *c = ctx;
    int64_t t0, t1;
    st_split(c->T, ith, nth, 1, &t0, &t1);
    const void **cand = c->cand + ith * c->max_cand;
    float *scratch = c->scratch + ith * c->max_cand * c->w->n_heads;
    const int64_t qh = (int64_t)c->w->n_heads * c->w->head_dim;
    for (int64_t t = t0; t < t1; t++) {
        attn_job job = {.w = c->w, .q = c->q + t * qh, .cand = cand, .o = c->o + t * qh, .scratch = scratch,
                        .rope = c->s->comp.rope_dims, .tile = c->tile + ith * c->tile_len, .tile_len = c->tile_len};
        job.n_cand = token_cands(c, t, cand, &job.n_f32);
        for (int i = 0; i < nth; i++) attn_heads(&job, i, nth);
        token_finish(c, t);
    }
}

/* One token's attention over many candidates with few heads (the heads alone
 * would leave threads idle): scores on row ranges, softmax per head, weighted
 * sums on 16-column ranges, one stage per pool run; bit-identical to
 * st_attn_heads (cpu/attn.h). */
typedef struct split_attn {
    const attn_job *j;
    float *tmp;           /* (nth, tmp_len) */
    int64_t tmp_len;
} split_attn;

static void split_scores(void *ctx, int ith, int nth) {
    split_attn *sa = ctx;
    const attn_job *j = sa->j;
    const int64_t n = j->n_cand, H = j->w->n_heads, hd = j->w->head_dim;
    const int64_t r0 = (n * ith / nth) / 4 * 4, r1 = ith + 1 == nth ? n : (n * (ith + 1) / nth) / 4 * 4;
    if (r1 <= r0) return;
    float *tmp = sa->tmp + ith * sa->tmp_len;
    st_attn_scores_kv(j->q, H, j->cand + r0, ST_MIN(r1 - r0, ST_MAX(0, j->n_f32 - r0)), r1 - r0, hd, j->rope,
                      1.0f / sqrtf((float)hd), j->tile + ith * j->tile_len, tmp);
    for (int64_t h = 0; h < H; h++) memcpy(j->scratch + h * n + r0, tmp + h * (r1 - r0), (size_t)(r1 - r0) * sizeof(float));
}

static void split_softmax(void *ctx, int ith, int nth) {
    split_attn *sa = ctx;
    const attn_job *j = sa->j;
    for (int64_t h = ith; h < j->w->n_heads; h += nth) st_attn_softmax(j->scratch + h * j->n_cand, j->n_cand, j->w->sink[h]);
}

static void split_wsum(void *ctx, int ith, int nth) {
    split_attn *sa = ctx;
    const attn_job *j = sa->j;
    const int64_t n = j->n_cand, H = j->w->n_heads, hd = j->w->head_dim;
    const int64_t k0 = (hd / 16 * ith / nth) * 16, k1 = (hd / 16 * (ith + 1) / nth) * 16;
    if (k1 <= k0) return;
    float *tmp = sa->tmp + ith * sa->tmp_len;
    st_attn_wsum_kv(j->scratch, H, j->cand, j->n_f32, n, hd, j->rope, k0, k1 - k0, j->tile + ith * j->tile_len, tmp);
    for (int64_t h = 0; h < H; h++) memcpy(j->o + h * hd + k0, tmp + h * (k1 - k0), (size_t)(k1 - k0) * sizeof(float));
}

/* Queues the reads of the pages of sel[0..n) that already exist (an entry the
 * token itself completes is appended later, into the fast tail page). */
static int prefetch_existing(st_comp_state *cs, const int32_t *sel, int64_t n) {
    int32_t have[64];
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        if (sel[i] < cs->n_entries) have[k++] = sel[i];
        if (k == (int64_t)ST_ARRAY_LEN(have) || (i + 1 == n && k)) {
            int rc = st_kv_pages_prefetch(cs->pages, cs->stream, have, k);
            if (rc) return rc;
            k = 0;
        }
    }
    return 0;
}

/* The token's top-k entries when the KV fast budget cannot pin all their pages
 * at once: copied into `gathered` by the store a few pages at a time (it works
 * at the least budget), ptrs pointed at the copies. Same bytes, so the same
 * results, only slower: warned about once. */
static int gather_copies(st_comp_state *cs, const int32_t *sel, int64_t n, unsigned char *gathered, const void **ptrs) {
    static atomic_flag warned = ATOMIC_FLAG_INIT;
    if (!atomic_flag_test_and_set(&warned))
        ST_WARN("%s; the top-k entries are copied a few pages at a time instead (slower: raise --kv-budget)", st_last_error());
    st_error_clear();
    const size_t eb = cs->entry_bytes;
    int rc = st_kv_pages_gather(cs->pages, cs->stream, sel, n, gathered, eb);
    for (int64_t i = 0; i < n && !rc; i++) ptrs[i] = gathered + (size_t)i * eb;
    return rc;
}

/* One token at a time, heads over the threads (decode, or paged CSA entries:
 * a stream holds one token's pins at a time). */
static int attn_sequential(st_pool *pool, chunk_attn *c) {
    const int64_t qh = (int64_t)c->w->n_heads * c->w->head_dim;
    st_comp_state *cs = &c->s->comp;
    for (int64_t t = 0; t < c->T; t++) {
        int64_t n_f32;
        int64_t nc = token_cands(c, t, c->cand, &n_f32);
        if (c->w->kind == ST_LAYER_CSA && cs->pages) {
            const int32_t *sel = c->sel + t * c->w->idx.topk;
            int rc = st_kv_pages_get(cs->pages, cs->stream, sel, c->n_sel[t], c->paged);
            if (rc == ST_ERR_BUDGET) rc = gather_copies(cs, sel, c->n_sel[t], c->gathered, c->paged);
            if (rc) return rc;
            for (int64_t i = 0; i < c->n_sel[t]; i++) c->cand[nc++] = c->paged[i];
            if (!cs->packed) n_f32 = nc;
            /* the next tokens' reads go out now and overlap this token's attention (prefetch is
             * advisory: pages it cannot place without touching pinned ones are left for their get) */
            for (int64_t u = t + 1; u < ST_MIN(c->T, t + 1 + KV_PREFETCH_AHEAD); u++)
                if ((rc = st_kv_pages_prefetch(cs->pages, cs->stream, c->sel + u * c->w->idx.topk, c->n_sel[u])))
                    return rc;
        }
        attn_job job = {.w = c->w, .q = c->q + t * qh, .cand = c->cand, .n_cand = nc, .n_f32 = n_f32,
                        .rope = cs->rope_dims, .o = c->o + t * qh, .scratch = c->scratch, .tile = c->tile,
                        .tile_len = c->tile_len, .tile_per_thread = true};
        const int nth = st_pool_size(pool);
        if (c->split_tmp && nc >= 1024 && c->w->n_heads < 4 * nth) {
            split_attn sa = {.j = &job, .tmp = c->split_tmp, .tmp_len = c->split_len};
            st_pool_run(pool, split_scores, &sa);
            st_pool_run(pool, split_softmax, &sa);
            st_pool_run(pool, split_wsum, &sa);
        } else {
            st_pool_run(pool, attn_heads, &job);
        }
        if (cs->pages) st_kv_pages_release(cs->pages, cs->stream);
        token_finish(c, t);
    }
    return 0;
}

/* ---- the layer ---------------------------------------------------------------------- */

typedef struct attn_bufs {
    float *xq, *qa, *qaq, *q, *kv, *ckv, *csc, *iq, *iw, *ikv, *isc, *o, *og, *oa, *res, *scratch, *iscores;
    float *idq, *hca;      /* packed entries decoded: index tiles, HCA (n, hd) for prefill */
    float *kvtile;         /* (nth, st_attn_kv_tile_floats): packed CSA/HCA rows decoded a chunk at a time */
    unsigned char *iqp;    /* (INDEX_GROUP, st_index_q_bytes) indexer queries as integer codes (packed keys) */
    int32_t *sel;       /* (T, topk) */
    int64_t *n_main, *n_idx, *n_sel; /* (T) each */
    float *split_tmp;
    const void **cand;
    const void **paged; /* (topk) entry pointers from kv_pages */
    unsigned char *gathered; /* (topk, entry_bytes) see gather_copies */
} attn_bufs;

/* Work buffers come from a per-thread arena of blocks that decode calls
 * (a few tokens) keep and reuse, so a decoded token allocates nothing once
 * the arena has grown to the context; prefill chunks give theirs back (their
 * size is the chunk's, and the malloc is shared by the chunk's tokens). */
typedef struct ws_block {
    struct ws_block *next;
    size_t cap, used;
    _Alignas(64) unsigned char data[];
} ws_block;

static _Thread_local ws_block *ws_blocks;

static void *ws_alloc(size_t bytes) {
    bytes = (bytes + 63) & ~(size_t)63;
    for (ws_block *b = ws_blocks; b; b = b->next)
        if (b->cap - b->used >= bytes) {
            void *p = b->data + b->used;
            b->used += bytes;
            return p;
        }
    size_t cap = bytes > ((size_t)1 << 20) ? bytes : (size_t)1 << 20;
    ws_block *b = malloc(sizeof *b + cap);
    if (!b) return NULL;
    b->cap = cap;
    b->used = bytes;
    b->next = ws_blocks;
    ws_blocks = b;
    return b->data;
}

/* End of a call: blocks are kept for the next decode step (T small), freed after a prefill chunk. */
static void ws_release(int64_t T) {
    size_t total = 0;
    int n = 0;
    for (ws_block *b = ws_blocks; b; b = b->next) { total += b->used; n++; }
    if (T <= 4 && n <= 1) {
        if (ws_blocks) ws_blocks->used = 0;
        return;
    }
    while (ws_blocks) {
        ws_block *next = ws_blocks->next;
        free(ws_blocks);
        ws_blocks = next;
    }
    /* decode that outgrew its block: one block for all, with room to grow (a context grows every step) */
    if (T <= 4 && ws_alloc(total + total / 4)) ws_blocks->used = 0;
}

#define ALLOC(p, n) ((p) = ws_alloc((size_t)(n) * sizeof(*(p))), (p) != NULL)

int st_attn_forward(st_pool *pool, const st_attn_w *w, st_layer_state *s, const float *xn, int64_t T, int64_t pos0,
                    st_numerics num, float *out) {
    const int64_t H = w->n_heads, hd = w->head_dim, rd = w->rope_dims, W = w->window;
    const int64_t qh = H * hd, G = w->o_groups, R = w->o_lora_rank, gin = qh / G;
    const bool has_comp = w->kind != ST_LAYER_WINDOW, csa = w->kind == ST_LAYER_CSA;
    const int coff = has_comp && w->comp.overlap ? 2 : 1;
    const int64_t icoff = csa && w->idx.comp.overlap ? 2 : 1;
    const int64_t max_vis = has_comp ? (pos0 + T) / w->comp.ratio + 1 : 0;
    const int64_t max_ivis = csa ? (pos0 + T) / w->idx.comp.ratio + 1 : 0;
    /* candidates of one token: the window, then top-k (CSA) or every entry (HCA) */
    const int64_t max_cand = W + (csa ? (int64_t)w->idx.topk : max_vis);
    const int nth = st_pool_size(pool) > 0 ? st_pool_size(pool) : 1;
    if (has_comp && s->comp.packed != (num == ST_NUMERICS_OFFICIAL))
        return st_error(ST_ERR_INVALID, "attention: the layer's KV state was made for %s numerics, not %s",
                        s->comp.packed ? "official" : "reference", num == ST_NUMERICS_OFFICIAL ? "official" : "reference");
    attn_bufs b = {0};
    int rc = ST_ERR_NOMEM;
    if (!ALLOC(b.qa, T * w->q_lora_rank) || !ALLOC(b.q, T * qh) || !ALLOC(b.kv, T * hd) || !ALLOC(b.o, T * qh) ||
        !ALLOC(b.og, T * gin) || !ALLOC(b.oa, T * G * R) || !ALLOC(b.res, T * R) ||
        !ALLOC(b.scratch, max_cand * H * nth) || !ALLOC(b.cand, max_cand * nth) || !ALLOC(b.n_main, T))
        goto oom;
    if (has_comp && (!ALLOC(b.ckv, T * coff * hd) || !ALLOC(b.csc, T * coff * hd))) goto oom;
    /* one token split over the threads (decode over many entries) */
    const int64_t split_len = H * (ST_MAX(max_cand / nth + 8, hd));
    const bool can_split = nth > 1 && hd % 16 == 0 && max_cand >= 1024 && T < 2 * nth;
    if (can_split && !ALLOC(b.split_tmp, nth * split_len)) goto oom;
    const int64_t tile_len = (int64_t)st_attn_kv_tile_floats(H, hd);
    if (!ALLOC(b.kvtile, nth * tile_len)) goto oom;
    if (csa) {
        const int64_t ih = w->idx.n_heads, id = w->idx.head_dim;
        if (!ALLOC(b.iq, T * ih * id) || !ALLOC(b.iw, T * ih) || !ALLOC(b.ikv, T * icoff * id) ||
            !ALLOC(b.isc, T * icoff * id) || !ALLOC(b.iscores, ST_MIN(T, (int64_t)INDEX_GROUP) * max_ivis) ||
            !ALLOC(b.sel, T * w->idx.topk) || !ALLOC(b.n_idx, T) || !ALLOC(b.n_sel, T))
            goto oom;
        if (s->comp.pages && (!ALLOC(b.paged, w->idx.topk) || !ALLOC(b.gathered, (size_t)w->idx.topk * s->comp.entry_bytes)))
            goto oom;
        if (s->icomp.packed && !ALLOC(b.idq, nth * INDEX_TILE * id)) goto oom;
        if (s->icomp.packed && !ALLOC(b.iqp, INDEX_GROUP * st_index_q_bytes(ih, id))) goto oom;
    }

    const bool official = num == ST_NUMERICS_OFFICIAL;
    /* official: act_quant of x and of the q latent once for every FP8 weight that reads them */
    const float *xq = xn, *qaq = NULL;
    if (official) {
        if (!ALLOC(b.xq, T * w->wq_a.cols) || !ALLOC(b.qaq, T * w->q_lora_rank)) goto oom;
        st_act_quant(xn, T, w->wq_a.cols, b.xq);
        xq = b.xq;
    }
    /* q = RoPE(rmsnorm_heads(wq_b(q_norm(wq_a x)))) */
    if ((rc = linear_pre(pool, &w->wq_a, xn, xq, T, b.qa, num))) goto done;
    for (int64_t t = 0; t < T; t++) {
        st_rmsnorm(b.qa + t * w->q_lora_rank, w->q_norm, w->q_lora_rank, w->eps, b.qa + t * w->q_lora_rank);
        if (num == ST_NUMERICS_OFFICIAL) st_round_bf16(b.qa + t * w->q_lora_rank, w->q_lora_rank);
    }
    qaq = b.qa;
    if (official) {
        st_act_quant(b.qa, T, w->q_lora_rank, b.qaq);
        qaq = b.qaq;
    }
    if ((rc = linear_pre(pool, &w->wq_b, b.qa, qaq, T, b.q, num))) goto done;
    for (int64_t t = 0; t < T; t++) {
        float *qt = b.q + t * qh;
        for (int64_t h = 0; h < H; h++) st_rmsnorm(qt + h * hd, NULL, hd, w->eps, qt + h * hd);
        st_rope_apply(qt, H, hd, (int)rd, w->inv_freq, pos0 + t, false);
    }
    /* kv = RoPE(kv_norm(wkv x)), stored as the cache stores it */
    if ((rc = linear_pre(pool, &w->wkv, xn, xq, T, b.kv, num))) goto done;
    for (int64_t t = 0; t < T; t++) {
        float *kt = b.kv + t * hd;
        st_rmsnorm(kt, w->kv_norm, hd, w->eps, kt);
        if (num == ST_NUMERICS_OFFICIAL) st_round_bf16(kt, hd);
        st_rope_apply(kt, 1, hd, (int)rd, w->inv_freq, pos0 + t, false);
        if (num == ST_NUMERICS_OFFICIAL) st_kv_quant_sim(kt, hd, rd);
    }
    if (has_comp) {
        if ((rc = st_matmul(pool, &w->comp.wkv, xn, T, b.ckv, ST_ACT_F32))) goto done;
        if ((rc = st_matmul(pool, &w->comp.wgate, xn, T, b.csc, ST_ACT_F32))) goto done;
    }
    if (csa) {
        const st_indexer_w *ix = &w->idx;
        const int64_t ih = ix->n_heads, id = ix->head_dim;
        if ((rc = linear_pre(pool, &ix->wq_b, b.qa, qaq, T, b.iq, num))) goto done;
        for (int64_t t = 0; t < T; t++) {
            float *qt = b.iq + t * ih * id;
            st_rope_apply(qt, ih, id, (int)rd, w->inv_freq, pos0 + t, false);
            if (num == ST_NUMERICS_OFFICIAL)
                for (int64_t h = 0; h < ih; h++) st_index_quant_sim(qt + h * id, id);
        }
        if ((rc = st_matmul(pool, &ix->weights_proj, xn, T, b.iw, ST_ACT_F32))) goto done;
        const float wscale = (1.0f / sqrtf((float)id)) * (1.0f / sqrtf((float)ih));
        for (int64_t i = 0; i < T * ih; i++) {
            if (num == ST_NUMERICS_OFFICIAL) st_round_bf16(b.iw + i, 1);
            b.iw[i] *= wscale;
        }
        if ((rc = st_matmul(pool, &ix->comp.wkv, xn, T, b.ikv, ST_ACT_F32))) goto done;
        if ((rc = st_matmul(pool, &ix->comp.wgate, xn, T, b.isc, ST_ACT_F32))) goto done;
    }

    /* compressors in token order (a token may complete a block it then sees);
     * the indexer's first, so that with paged entries the reads of the first
     * token's top-k are queued before the main compressor runs */
    if (csa) {
        const int64_t id = w->idx.head_dim;
        for (int64_t t = 0; t < T; t++) {
            if ((rc = st_comp_feed(&w->idx.comp, &s->icomp, b.ikv + t * icoff * id, b.isc + t * icoff * id, pos0 + t,
                                w->inv_freq, rd, w->eps, num)))
                goto done;
            b.n_idx[t] = s->icomp.n_entries;
            b.n_sel[t] = ST_MIN((int64_t)w->idx.topk, b.n_idx[t]);
        }
        index_select_chunk(pool, &w->idx, &s->icomp, b.idq, b.iqp, b.iq, b.iw, b.n_idx, T, b.iscores, b.sel);
        if (s->comp.pages && (rc = prefetch_existing(&s->comp, b.sel, b.n_sel[0]))) goto done;
    }
    for (int64_t t = 0; t < T; t++) {
        if (has_comp && (rc = st_comp_feed(&w->comp, &s->comp, b.ckv + t * coff * hd, b.csc + t * coff * hd, pos0 + t,
                                        w->inv_freq, rd, w->eps, num)))
            goto done;
        b.n_main[t] = has_comp ? s->comp.n_entries : 0;
    }
    /* HCA entries: a prefill chunk's tokens each read a prefix of them, so they are decoded
     * once; a decode step's token reads them where they are stored (same bits) */
    if (w->kind == ST_LAYER_HCA && s->comp.packed && T > HCA_DECODE_MIN_T) {
        const int64_t n = s->comp.n_entries;
        if (!ALLOC(b.hca, ST_MAX(n, 1) * hd)) goto oom;
        st_comp_decode_job dj = {.s = &s->comp, .w = &w->comp, .n = n, .out = b.hca};
        if (n >= 256) st_pool_run(pool, st_comp_decode_rows, &dj);
        else st_comp_decode_rows(&dj, 0, 1);
    }
    chunk_attn ca = {.w = w, .s = s, .q = b.q, .kv = b.kv, .n_main = b.n_main, .sel = b.sel, .n_sel = b.n_sel,
                     .pos0 = pos0, .T = T, .max_cand = max_cand, .o = b.o, .cand = b.cand, .scratch = b.scratch,
                     .paged = b.paged, .gathered = b.gathered, .tile = b.kvtile, .tile_len = tile_len, .hca = b.hca, .split_tmp = b.split_tmp,
                     .split_len = split_len, .num = num};
    if ((csa && s->comp.pages) || T < 2 * nth) {
        if ((rc = attn_sequential(pool, &ca))) goto done;
    } else {
        st_pool_run(pool, attn_tokens, &ca);
    }
    /* the ring takes the chunk's last W rows */
    for (int64_t p = ST_MAX(pos0, pos0 + T - W); p < pos0 + T; p++)
        memcpy(s->window + (p % W) * hd, b.kv + (p - pos0) * hd, (size_t)hd * sizeof(float));

    /* grouped low-rank output: group g's heads -> o_lora_rank each, concatenated -> wo_b */
    for (int64_t g = 0; g < G; g++) {
        st_weight wg;
        if ((rc = st_weight_rows(&w->wo_a, g * R, (g + 1) * R, &wg))) goto done;
        for (int64_t t = 0; t < T; t++) memcpy(b.og + t * gin, b.o + t * qh + g * gin, (size_t)gin * sizeof(float));
        if ((rc = st_matmul(pool, &wg, b.og, T, b.res, ST_ACT_F32))) goto done;
        for (int64_t t = 0; t < T; t++) memcpy(b.oa + t * G * R + g * R, b.res + t * R, (size_t)R * sizeof(float));
    }
    if (num == ST_NUMERICS_OFFICIAL) st_round_bf16(b.oa, T * G * R);
    rc = st_linear(pool, &w->wo_b, b.oa, T, out, num);
    goto done;
oom:
    rc = st_error(ST_ERR_NOMEM, "attention: out of memory for a chunk of %lld tokens (sliding_window %d, index_topk %d, "
                  "%lld compressed entries)", (long long)T, w->window, w->kind == ST_LAYER_CSA ? w->idx.topk : 0,
                  (long long)s->comp.n_entries);
done:
    if (s->comp.pages) st_kv_pages_release(s->comp.pages, s->comp.stream);
    ws_release(T);
    return rc;
}
