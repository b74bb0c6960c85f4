/* The weights that stay in DRAM for the whole run (see model_load.c): the
 * dense matrices copied into huge-page memory (on several NUMA nodes, each
 * matrix's rows split over the nodes whose threads compute them), and the
 * mapping populated where the page cache already holds it. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/mem.h"
#include "engine/model_load_internal.h"
#include "engine/model_stream.h"
#include "offload/expert_nodes.h"

/* ----
 * Weights that stay in DRAM for the whole run (everything but the embedding
 * table, and the routed experts when they do not stream) are read by every
 * decode token. Left as views of the checkpoint's file mapping, each 4 KiB page
 * costs a minor fault the first time a token touches it (the routed experts
 * fault in over the first hundreds of tokens: a tenth of the CPU time of a
 * 48-token run of flash-2l), and every read goes through 4 KiB TLB entries
 * (the 1 GB BF16 head: ~5% slower than from huge pages, interleaved A/B).
 * So at load:
 *  - the dense matrices (head, attention, compressors, indexer, router, shared
 *    experts) are copied, one at a time, into anonymous 2 MiB huge-page memory
 *    (the DRAM tier; interleaved over the NUMA nodes, or on --numa N's node),
 *    and the checkpoint pages they came from are dropped from this process's
 *    page tables, so the two copies coexist for one matrix at most. The
 *    pinned-bytes budget already counts these bytes. Only where huge pages can
 *    be had (else the mapping is as good) and unless STRATA_DENSE_COPY=0.
 *  - whatever is still read through the mapping and already in the page cache
 *    is populated (MADV_POPULATE_READ): page tables filled once, nothing
 *    faults later (what is not cached is still read from disk on first use).
 * Neither changes a single value the kernels read. */

static bool dense_copy_wanted(void) {
    const char *env = getenv("STRATA_DENSE_COPY");
    if (env && (!strcmp(env, "0") || !strcmp(env, "off"))) return false;
    return st_mem_hugepages();
}

/* Pieces of at most 8 MiB, shared out to the pool threads in order: copied to
 * dst (then dropped from the mapping) or, dst NULL, only populated. */
typedef struct { uint8_t *dst; const uint8_t *src; uint64_t len; } byte_piece;
typedef struct { byte_piece *p; int n, cap; } piece_list;
typedef struct { const piece_list *l; _Atomic int next; _Atomic uint64_t done; } piece_work;

#define PIECE_BYTES (8ull << 20)

static int add_pieces(piece_list *l, uint8_t *dst, const void *src, uint64_t len) {
    for (uint64_t off = 0; src && off < len; off += PIECE_BYTES) {
        if (l->n == l->cap) {
            int cap = l->cap ? l->cap * 2 : 256;
            byte_piece *p = realloc(l->p, (size_t)cap * sizeof *p);
            if (!p) return st_error(ST_ERR_NOMEM, "loader: out of memory");
            l->p = p;
            l->cap = cap;
        }
        l->p[l->n++] = (byte_piece){dst ? dst + off : NULL, (const uint8_t *)src + off, ST_MIN(PIECE_BYTES, len - off)};
    }
    return 0;
}

static void piece_task(void *c, int ith, int nth) {
    piece_work *w = c;
    for (int i; (i = atomic_fetch_add(&w->next, 1)) < w->l->n;) {
        const byte_piece *p = &w->l->p[i];
        /* copies: one pass over the page tables, then read; the rest: only what the page cache
         * holds (a load that is not followed by decode, e.g. for shapes, must not read every expert) */
        atomic_fetch_add(&w->done, p->dst ? st_mem_populate(p->src, p->len) : st_mem_populate_cached(p->src, p->len));
        if (p->dst) {
            memcpy(p->dst, p->src, p->len);
            st_mem_drop_pages(p->src, p->len);
        }
    }
}

/* Runs and empties l; returns the bytes populated. */
static uint64_t run_pieces(st_pool *pool, piece_list *l) {
    piece_work w = {.l = l};
    st_pool_run(pool, piece_task, &w);
    l->n = 0;
    return atomic_load(&w.done);
}

static bool owned_by_loader(const loader *ld, const void *p) {
    for (int i = 0; i < ld->n_owned; i++)
        if (ld->owned[i] == p) return true;
    return false;
}

/* ---- NUMA: dense rows on the node that computes them ----
 * On several nodes the per-node expert streams split the pool into teams, one
 * per node with threads (offload/expert_nodes.c, in the NUMA plan's node
 * order). A dense matrix is then cut into row parts in proportion to the
 * teams' threads, each part placed in its team's node memory, and st_matmul
 * computes each part on its team (cpu/cpu.h st_row_split): every weight byte
 * a decode token reads is local, with no copy per node. */
typedef struct node_teams {
    int n;                         /* teams (0: no split) */
    int os_node[ST_ROW_SPLIT_MAX]; /* the node of team i */
    int threads[ST_ROW_SPLIT_MAX];
} node_teams;

/* The teams the per-node expert streams made (offload/expert_nodes.c), with
 * each one's node and threads; none when the pool has no teams. */
static node_teams pool_node_teams(const st_model *m) {
    node_teams t = {0};
    const st_expert_nodes *en = st_model_expert_nodes(m);
    const int teams = st_pool_team_count(m->pool);
    if (!en || teams < 2 || teams > ST_ROW_SPLIT_MAX || st_expert_nodes_count(en) != teams) return t;
    for (int i = 0; i < teams; i++) {
        t.os_node[i] = st_expert_nodes_os_node(en, i);
        t.threads[i] = st_pool_team_size(m->pool, i);
    }
    t.n = teams;
    return t;
}

/* Row cuts of w for the teams, in proportion to their threads, each cut a
 * multiple of ST_ROW_SPLIT_ALIGN rows and of 2 MiB (4 KiB for smaller
 * matrices) of data. false: too small for every team to get a part. */
static bool split_rows(const st_weight *w, const node_teams *t, st_row_split *sp) {
    const int64_t row_bytes = (int64_t)st_weight_data_bytes(w->fmt, 1, w->cols);
    int total = 0;
    for (int i = 0; i < t->n; i++) total += t->threads[i];
    if (t->n < 2 || row_bytes <= 0 || total <= 0) return false;
    static const int64_t pages[] = {2 << 20, 4096};
    for (size_t p = 0; p < ST_ARRAY_LEN(pages); p++) {
        const int64_t page_rows = pages[p] / st_gcd64(pages[p], row_bytes),
                      align = page_rows / st_gcd64(page_rows, ST_ROW_SPLIT_ALIGN) * ST_ROW_SPLIT_ALIGN;
        *sp = (st_row_split){.n = t->n};
        bool ok = true;
        for (int i = 1, before = 0; i < t->n; i++) {
            before += t->threads[i - 1];
            int64_t cut = (w->rows * before / total + align / 2) / align * align;
            sp->first[i] = cut;
            ok &= cut > sp->first[i - 1] && cut < w->rows;
        }
        sp->first[t->n] = w->rows;
        if (ok) return true;
    }
    return false;
}

/* Allocates w's DRAM copy (data, then scales at a 64-byte boundary), queues the
 * copy in l and points w at it (valid once l has run). No memory for it: w
 * stays a view of the mapping (a warning, once). teams (n > 1): the copy's rows
 * go to the teams' nodes and w gets the split. */
static int plan_copy(loader *ld, piece_list *l, st_weight *w, st_mem_policy policy, int node, const node_teams *teams) {
    if (!w->data || owned_by_loader(ld, w->data)) return 0; /* e.g. wo_a dequantised: already a copy */
    const uint64_t db = st_weight_data_bytes(w->fmt, w->rows, w->cols),
                   sb = w->scale ? st_weight_scale_bytes(w->fmt, w->scale_fmt, w->rows, w->cols) : 0,
                   off = ST_ALIGN_UP(db, 64), total = off + sb;
    if (ld->n_copies == ld->cap_copies) {
        int cap = ld->cap_copies ? ld->cap_copies * 2 : 64;
        dram_copy *c = realloc(ld->copies, (size_t)cap * sizeof *c);
        if (!c) return st_error(ST_ERR_NOMEM, "loader: out of memory");
        ld->copies = c;
        ld->cap_copies = cap;
    }
    st_row_split split, *kept = NULL;
    const bool split_ok = teams->n > 1 && split_rows(w, teams, &split);
    if (split_ok) {
        if (!(kept = malloc(sizeof *kept))) return st_error(ST_ERR_NOMEM, "loader: out of memory");
        *kept = split;
        int rc = st_loader_own(ld, kept);
        if (rc) { free(kept); return rc; }
        policy = ST_MEM_DEFAULT; /* the parts are placed below, before the copy touches them */
    }
    void *p;
    if (st_mem_alloc(NULL, total, policy, node, &p)) {
        static atomic_flag warned = ATOMIC_FLAG_INIT;
        if (!atomic_flag_test_and_set(&warned)) ST_WARN("%s: weights stay in the checkpoint's mapping", st_last_error());
        st_error_clear();
        return 0;
    }
    ld->copies[ld->n_copies++] = (dram_copy){p, total};
    if (split_ok) {
        const uint64_t row_bytes = st_weight_data_bytes(w->fmt, 1, w->cols), end = st_mem_charge(total);
        for (int i = 0; i < split.n; i++) { /* the last part takes the scales too (small) */
            uint64_t lo = (uint64_t)split.first[i] * row_bytes, hi = i + 1 < split.n ? (uint64_t)split.first[i + 1] * row_bytes : end;
            int rc = st_mem_place_range((uint8_t *)p + lo, hi - lo, teams->os_node[i]);
            if (rc) return st_error_prefix(rc, "loader: NUMA part %d of a %lld-row matrix: ", i, (long long)w->rows);
        }
        w->split = kept;
    }
    int rc = add_pieces(l, p, w->data, db);
    if (!rc) rc = add_pieces(l, (uint8_t *)p + off, w->scale, sb);
    if (rc) return rc;
    w->data = p;
    w->scale = sb ? (uint8_t *)p + off : NULL;
    return 0;
}

/* Calls f on every matrix a decode token may read (the routed experts only
 * when with_experts; never the embedding table: one row per token). */
#define FOR_RESIDENT_WEIGHTS(m, with_experts, f)                                                                \
    do {                                                                                                        \
        f(&(m)->head);                                                                                          \
        for (int l_ = 0; l_ < (m)->n_layers; l_++) {                                                            \
            st_layer_w *L_ = &(m)->layers[l_];                                                                  \
            st_attn_w *a_ = &L_->attn;                                                                          \
            st_weight *ws_[] = {&a_->wq_a, &a_->wq_b, &a_->wkv, &a_->wo_a, &a_->wo_b, &a_->comp.wkv,            \
                                &a_->comp.wgate, &a_->idx.wq_b, &a_->idx.weights_proj, &a_->idx.comp.wkv,        \
                                &a_->idx.comp.wgate, &L_->moe.gate, &L_->moe.shared.w1, &L_->moe.shared.w2,      \
                                &L_->moe.shared.w3};                                                            \
            for (size_t i_ = 0; i_ < sizeof ws_ / sizeof *ws_; i_++) f(ws_[i_]);                               \
            for (int e_ = 0; (with_experts) && e_ < L_->moe.n_experts; e_++) {                                  \
                f(&L_->moe.experts[e_].w1);                                                                     \
                f(&L_->moe.experts[e_].w2);                                                                     \
                f(&L_->moe.experts[e_].w3);                                                                     \
            }                                                                                                   \
        }                                                                                                       \
    } while (0)

int st_loader_make_resident(st_model *m, loader *ld, const st_model_opts *o) {
    const bool experts = ld->stream == NULL;
    piece_list l = {0};
    int rc = 0;
    double t0 = st_time_s();
    uint64_t copied = 0;
    if (dense_copy_wanted()) {
        st_mem_policy policy = ST_MEM_DEFAULT;
        int node = 0;
        if (o && o->numa > 0) policy = ST_MEM_NODE, node = o->numa - 1;
        else if ((!o || o->numa == 0) && st_mem_numa_nodes() > 1) policy = ST_MEM_INTERLEAVE;
        const node_teams teams = !o || o->numa == 0 ? pool_node_teams(m) : (node_teams){0};
        /* one matrix at a time: its mapping pages are dropped before the next is read */
#define COPY(w) if (!rc && !(rc = plan_copy(ld, &l, (w), policy, node, &teams))) copied += run_pieces(m->pool, &l)
        FOR_RESIDENT_WEIGHTS(m, false, COPY);
#undef COPY
    }
    /* what is left in the mapping (the routed experts; populating the copies costs nothing,
     * their pages are present), unless it cannot all fit in memory */
    uint64_t want = 0, populated = 0;
#define COUNT(w) want += (w)->data ? st_weight_bytes(w) : 0
    FOR_RESIDENT_WEIGHTS(m, experts, COUNT);
#undef COUNT
    const uint64_t ram = st_mem_limit(); /* the memory cgroup's limit, if lower than RAM */
    if (!rc && ram && want > ram / 10 * 9) {
        char a[32], b[32];
        ST_DEBUG("resident weights (%s) do not fit in this process's memory (%s): the mapping is not populated",
                 st_fmt_size(want, a, sizeof a), st_fmt_size(ram, b, sizeof b));
    } else if (!rc) {
#define POPULATE(w)                                                                                                    \
    if (!rc && !(rc = add_pieces(&l, NULL, (w)->data, st_weight_data_bytes((w)->fmt, (w)->rows, (w)->cols))))       \
        rc = add_pieces(&l, NULL, (w)->scale, st_weight_scale_bytes((w)->fmt, (w)->scale_fmt, (w)->rows, (w)->cols));
        FOR_RESIDENT_WEIGHTS(m, experts, POPULATE);
#undef POPULATE
        if (!rc) populated = run_pieces(m->pool, &l);
    }
    free(l.p);
    char a[32], b[32];
    ST_DEBUG("resident weights: %d dense matrices (%s) copied to DRAM, %s of mappings populated, in %.2f s",
             ld->n_copies, st_fmt_size(copied, a, sizeof a), st_fmt_size(populated, b, sizeof b), st_time_s() - t0);
    return rc;
}
