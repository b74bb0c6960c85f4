/* The forward pass over a chunk (see model.h): embedding into hc streams, then
 * per layer mHC -> RMSNorm -> attention -> mHC and mHC -> RMSNorm -> MoE -> mHC,
 * then hc_head -> norm -> head (F32). Long inputs run in chunks of m->chunk
 * tokens; the KV state carries everything across chunks. Batched decode runs
 * one token of each of B sequences through the same layer loop, batched
 * prefill several prompts: attention per sequence, everything else (the MoE
 * above all) once over all rows. */
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/quant.h"
#include "engine/attention.h"
#include "engine/model.h"
#include "offload/kv_pages.h"

#include <stdio.h>

int st_seq_new(const st_model *m, st_seq **out) {
    *out = NULL;
    st_seq *s = calloc(1, sizeof *s);
    if (!s) return st_error(ST_ERR_NOMEM, "sequence: out of memory");
    s->m = m;
    s->state = calloc((size_t)m->n_layers, sizeof *s->state);
    if (!s->state) { free(s); return st_error(ST_ERR_NOMEM, "sequence: out of memory"); }
    for (int l = 0; l < m->n_layers; l++) {
        int rc = st_layer_state_init(&s->state[l], &m->layers[l].attn, m->numerics);
        if (rc) { st_seq_free(s); return rc; }
    }
    *out = s;
    return 0;
}

void st_seq_free(st_seq *s) {
    if (!s) return;
    if (s->state)
        for (int l = 0; l < s->m->n_layers; l++) st_layer_state_free(&s->state[l]);
    free(s->state);
    st_kv_pages_free(s->kv); /* frames go back to the budgets before those are freed */
    st_budget_free(s->kv_fast);
    st_budget_free(s->kv_dram);
    free(s);
}

int st_seq_kv_tiering(st_seq *s, uint64_t fast_bytes, uint64_t dram_bytes, const char *spill_dir, uint64_t page_bytes) {
    if (s->kv || s->pos)
        return st_error(ST_ERR_INVALID, "kv tiering: only on a fresh sequence (it holds %lld tokens)", (long long)s->pos);
    if (!dram_bytes && !spill_dir) dram_bytes = UINT64_MAX;
    int rc = st_budget_new("kv fast (--kv-budget)", fast_bytes, &s->kv_fast);
    if (!rc && dram_bytes) rc = st_budget_new("kv dram", dram_bytes, &s->kv_dram);
    st_kv_pages_options o = {.page_bytes = page_bytes, .fast = s->kv_fast, .dram = s->kv_dram, .spill_dir = spill_dir};
    if (!rc) rc = st_kv_pages_new(&o, &s->kv);
    for (int l = 0; !rc && l < s->m->n_layers; l++) {
        const st_attn_w *w = &s->m->layers[l].attn;
        if (w->kind != ST_LAYER_CSA) continue;
        char name[64];
        snprintf(name, sizeof name, "layer %d csa", l);
        st_comp_state *cs = &s->state[l].comp;
        rc = st_kv_pages_add_stream(s->kv, cs->entry_bytes, false, name, &cs->stream);
        if (!rc) cs->pages = s->kv;
    }
    if (!rc) {
        st_kv_pages_stats ks;
        st_kv_pages_get_stats(s->kv, &ks);
        const uint64_t least = st_kv_pages_least_fast(s->kv);
        char a[32], b[32], c[32];
        if (fast_bytes < least)
            rc = st_error(ST_ERR_BUDGET, "KV fast budget (--kv-budget) %s is below the least this model's KV tiering works "
                          "with: %s (a %s page for each of its %d CSA layers to append to, and one to read): raise the KV "
                          "budget", st_fmt_size(fast_bytes, a, sizeof a), st_fmt_size(least, b, sizeof b),
                          st_fmt_size(ks.page_bytes, c, sizeof c), ks.streams);
    }
    if (rc) { /* back to plain arrays */
        for (int l = 0; l < s->m->n_layers; l++) s->state[l].comp.pages = NULL;
        st_kv_pages_free(s->kv);
        st_budget_free(s->kv_fast);
        st_budget_free(s->kv_dram);
        s->kv = NULL;
        s->kv_fast = s->kv_dram = NULL;
    }
    return rc;
}

void st_seq_reset(st_seq *s) {
    for (int l = 0; l < s->m->n_layers; l++) st_layer_state_reset(&s->state[l], &s->m->layers[l].attn);
    if (s->kv) st_kv_pages_reset(s->kv);
    s->pos = 0;
}

typedef struct fwd_bufs {
    float *x, *y, *f, *post, *comb, *mixes;
    /* refine_next (NULL for long chunks: no refinement): the residual as mixed by the next layer's
     * attention side with a zero output (rows, hc, dim), and its own hc_ffn pre-mix outputs */
    float *xp, *ry, *rpost, *rcomb, *rmixes;
    bool attn_pre_ready; /* y, post, comb hold the next layer's hc_attn pre-mix of x (refine_next made it) */
} fwd_bufs;

enum { REFINE_MAX_ROWS = 64 }; /* larger steps need most experts: predictions do not pay */

static void bufs_free(fwd_bufs *b) {
    free(b->x); free(b->y); free(b->f); free(b->post); free(b->comb); free(b->mixes);
    free(b->xp); free(b->ry); free(b->rpost); free(b->rcomb); free(b->rmixes);
}

/* Scratch for `rows` token rows at once. */
static int bufs_alloc(fwd_bufs *b, const st_model *m, int64_t rows) {
    const int64_t hc = m->hcd.hc, dim = m->dim, mix = (2 + hc) * hc;
    *b = (fwd_bufs){0};
    b->x = malloc((size_t)(rows * hc * dim) * sizeof(float));
    b->y = malloc((size_t)(rows * dim) * sizeof(float));
    b->f = malloc((size_t)(rows * dim) * sizeof(float));
    b->post = malloc((size_t)(rows * hc) * sizeof(float));
    b->comb = malloc((size_t)(rows * hc * hc) * sizeof(float));
    b->mixes = malloc((size_t)(rows * mix) * sizeof(float));
    const bool refine = m->experts.refine && rows <= REFINE_MAX_ROWS;
    if (refine) {
        b->xp = malloc((size_t)(rows * hc * dim) * sizeof(float));
        b->ry = malloc((size_t)(rows * dim) * sizeof(float));
        b->rpost = malloc((size_t)(rows * hc) * sizeof(float));
        b->rcomb = malloc((size_t)(rows * hc * hc) * sizeof(float));
        b->rmixes = malloc((size_t)(rows * mix) * sizeof(float));
    }
    if (b->x && b->y && b->f && b->post && b->comb && b->mixes &&
        (!refine || (b->xp && b->ry && b->rpost && b->rcomb && b->rmixes)))
        return 0;
    bufs_free(b);
    *b = (fwd_bufs){0};
    return st_error(ST_ERR_NOMEM, "forward: out of memory for %lld rows", (long long)rows);
}

/* Layer l's MoE input as it would be if l's attention output were zero: l's
 * attention-side hc mixing of the residual b->x as it is now (hc_pre for post
 * and comb, hc_post with a zero output into b->xp), then its hc_ffn pre-mix and
 * ffn_norm (into b->ry). Handed to the expert source as a prediction of l's
 * experts while l's attention runs; exact when that attention adds nothing.
 * The hc_attn pre-mix is the one layer l starts with: it stays in b->y, post
 * and comb for it (attn_pre_ready). b->f is free here (the MoE output is added).
 * Skipped for hash layers (certain already) and steps that need most experts. */
static int refine_next(const st_model *m, int l, const int32_t *tokens, int64_t T, fwd_bufs *b) {
    const st_layer_w *L = &m->layers[l];
    const int64_t dim = m->dim, sd = (int64_t)m->hcd.hc * dim;
    const bool official = m->numerics == ST_NUMERICS_OFFICIAL;
    if (L->moe.hash || !b->xp || T * L->moe.top_k >= L->moe.n_experts) return 0;
    int rc = st_hc_pre(m->pool, &m->hcd, &L->hc_attn, b->x, T, b->y, b->post, b->comb, b->mixes);
    if (rc) return rc;
    b->attn_pre_ready = true;
    memset(b->f, 0, (size_t)(T * dim) * sizeof(float));
    st_hc_post(&m->hcd, b->f, b->x, b->post, b->comb, T, b->xp);
    if (official) st_round_bf16(b->xp, T * sd);
    if ((rc = st_hc_pre(m->pool, &m->hcd, &L->hc_ffn, b->xp, T, b->ry, b->rpost, b->rcomb, b->rmixes))) return rc;
    for (int64_t t = 0; t < T; t++) st_rmsnorm(b->ry + t * dim, L->ffn_norm, dim, m->norm_eps, b->ry + t * dim);
    if (official) st_round_bf16(b->ry, T * dim);
    return m->experts.refine(m->experts.ctx, l, b->ry, tokens, T);
}

/* T token rows through the model: sequence i owns rows [first[i], first[i+1])
 * (consecutive tokens of it, from its position on): one sequence's prefill
 * chunk or single decode, one token of each (batched decode), or several
 * prompts at once (batched prefill). Every op but attention runs over all T
 * rows at once; attention runs per sequence on its own state at its own
 * position. The row kernels are batch-invariant (cpu/cpu.h), so a row's result
 * does not depend on which other rows share the call. logits: (T, vocab) when
 * all_positions, else (nseq, vocab): the last row of each sequence. */
static int run_rows(st_seq *const *seqs, int nseq, const int64_t *first, const int32_t *tokens, float *logits,
                    bool all_positions, fwd_bufs *b) {
    const st_model *m = seqs[0]->m;
    const int hc = m->hcd.hc;
    const int64_t dim = m->dim, sd = (int64_t)hc * dim, T = first[nseq];
    const bool official = m->numerics == ST_NUMERICS_OFFICIAL;
    int rc;
    for (int i = 0; i < nseq; i++)
        for (int64_t t = first[i]; t < first[i + 1]; t++) {
            if (tokens[t] < 0 || tokens[t] >= m->vocab)
                return st_error(ST_ERR_INVALID, "token id %d at position %lld%s is outside the vocabulary (0..%lld)",
                                tokens[t], (long long)(seqs[i]->pos + t - first[i]), nseq > 1 ? " of a batch row" : "",
                                (long long)m->vocab - 1);
            st_dequant_rows(&m->embed, tokens[t], tokens[t] + 1, b->y + t * dim);
            for (int h = 0; h < hc; h++) memcpy(b->x + t * sd + h * dim, b->y + t * dim, (size_t)dim * sizeof(float));
        }
    b->attn_pre_ready = false;
    if (m->experts.step && (rc = m->experts.step(m->experts.ctx, tokens, T))) return rc;
    for (int l = 0; l < m->n_layers; l++) {
        const st_layer_w *L = &m->layers[l];
        /* attention */
        if (!b->attn_pre_ready && (rc = st_hc_pre(m->pool, &m->hcd, &L->hc_attn, b->x, T, b->y, b->post, b->comb, b->mixes)))
            return rc;
        b->attn_pre_ready = false;
        for (int64_t t = 0; t < T; t++) st_rmsnorm(b->y + t * dim, L->attn_norm, dim, m->norm_eps, b->y + t * dim);
        if (official) st_round_bf16(b->y, T * dim);
        for (int i = 0; i < nseq; i++) {
            st_seq *s = seqs[i];
            const int64_t r0 = first[i], n = first[i + 1] - r0;
            if ((rc = st_attn_forward(m->pool, &L->attn, &s->state[l], b->y + r0 * dim, n, s->pos, m->numerics,
                                      b->f + r0 * dim))) {
                return nseq == 1 ? st_error_prefix(rc, "layer %d attention: ", l)
                                 : st_error_prefix(rc, "layer %d attention (batch row %d): ", l, i);
            }
        }
        if (official) st_round_bf16(b->f, T * dim);
        st_hc_post(&m->hcd, b->f, b->x, b->post, b->comb, T, b->x);
        if (official) st_round_bf16(b->x, T * sd);
        /* MoE: once over every row (expert-major: each expert fetched once for all of them) */
        if ((rc = st_hc_pre(m->pool, &m->hcd, &L->hc_ffn, b->x, T, b->y, b->post, b->comb, b->mixes))) return rc;
        for (int64_t t = 0; t < T; t++) st_rmsnorm(b->y + t * dim, L->ffn_norm, dim, m->norm_eps, b->y + t * dim);
        if (official) st_round_bf16(b->y, T * dim);
        const st_expert_source *src = m->experts.get ? &m->experts : NULL;
        if ((rc = st_moe_forward(m->pool, &L->moe, l, src, b->y, tokens, T, m->numerics, b->f)))
            return st_error_prefix(rc, "layer %d MoE: ", l);
        if (official) st_round_bf16(b->f, T * dim);
        st_hc_post(&m->hcd, b->f, b->x, b->post, b->comb, T, b->x);
        if (official) st_round_bf16(b->x, T * sd);
        if (src && src->refine && l + 1 < m->n_layers && (rc = refine_next(m, l + 1, tokens, T, b)))
            return st_error_prefix(rc, "layer %d expert prediction: ", l + 1);
    }
    if (logits) {
        /* the rows whose logits are wanted, packed at the front of b->x (it is not needed after) */
        int64_t n = all_positions ? T : nseq;
        if (!all_positions)
            for (int i = 0; i < nseq; i++)
                if (first[i + 1] - 1 != i) memmove(b->x + i * sd, b->x + (first[i + 1] - 1) * sd, (size_t)sd * sizeof(float));
        if ((rc = st_hc_head(m->pool, &m->hcd, &m->hc_head, b->x, n, b->y, b->mixes))) return rc;
        for (int64_t t = 0; t < n; t++) st_rmsnorm(b->y + t * dim, m->norm, dim, m->norm_eps, b->y + t * dim);
        if (official) st_round_bf16(b->y, n * dim);
        if ((rc = st_matmul(m->pool, &m->head, b->y, n, logits, ST_ACT_F32))) return rc;
    }
    for (int i = 0; i < nseq; i++) seqs[i]->pos += first[i + 1] - first[i];
    return 0;
}

int st_seq_forward(st_seq *s, const int32_t *tokens, int64_t T, float *logits, bool all_positions) {
    const st_model *m = s->m;
    if (T <= 0) return st_error(ST_ERR_INVALID, "no tokens to run");
    const int64_t C = ST_MIN(T, m->chunk > 0 ? m->chunk : T);
    fwd_bufs b;
    int rc = bufs_alloc(&b, m, C);
    for (int64_t t0 = 0; !rc && t0 < T; t0 += C) {
        int64_t n = ST_MIN(C, T - t0);
        bool last = t0 + n == T;
        float *lg = NULL;
        if (logits && all_positions) lg = logits + t0 * m->vocab;
        else if (logits && last) lg = logits;
        const int64_t first[2] = {0, n};
        rc = run_rows(&s, 1, first, tokens + t0, lg, all_positions, &b);
    }
    bufs_free(&b);
    return rc;
}

/* Checks the batch's sequences: one model, each at most once. */
static int check_batch(st_seq *const *seqs, int B, const char *what) {
    if (B <= 0) return st_error(ST_ERR_INVALID, "%s: no sequences (B = %d)", what, B);
    for (int i = 0; i < B; i++) {
        if (seqs[i]->m != seqs[0]->m) return st_error(ST_ERR_INVALID, "%s: sequence %d belongs to another model", what, i);
        for (int j = 0; j < i; j++)
            if (seqs[j] == seqs[i]) return st_error(ST_ERR_INVALID, "%s: sequence %d is also row %d", what, i, j);
    }
    return 0;
}

int st_seq_forward_batch(st_seq *const *seqs, const int32_t *tokens, int B, float *logits) {
    int rc0 = check_batch(seqs, B, "batch forward");
    if (rc0) return rc0;
    const st_model *m = seqs[0]->m;
    fwd_bufs b;
    int64_t *first = malloc(((size_t)B + 1) * sizeof *first);
    int rc = first ? bufs_alloc(&b, m, B) : st_error(ST_ERR_NOMEM, "batch forward: out of memory");
    if (!rc) {
        for (int i = 0; i <= B; i++) first[i] = i;
        rc = run_rows(seqs, B, first, tokens, logits, true, &b);
        bufs_free(&b);
    }
    free(first);
    return rc;
}

int st_seq_prefill_batch(st_seq *const *seqs, const int32_t *tokens, const int64_t *lens, int B, float *logits) {
    int rc = check_batch(seqs, B, "batch prefill");
    if (rc) return rc;
    const st_model *m = seqs[0]->m;
    int64_t total = 0;
    for (int i = 0; i < B; i++) {
        if (lens[i] <= 0) return st_error(ST_ERR_INVALID, "batch prefill: sequence %d has no tokens", i);
        total += lens[i];
    }
    const int64_t chunk = m->chunk > 0 ? m->chunk : total, V = m->vocab;
    int64_t *first = malloc(((size_t)B + 1) * sizeof *first);
    if (!first) return st_error(ST_ERR_NOMEM, "batch prefill: out of memory");
    fwd_bufs b = {0};
    bool have_bufs = false;
    int64_t off = 0;
    for (int i = 0; !rc && i < B;) {
        if (lens[i] > chunk) { /* longer than a chunk: alone, in chunks */
            rc = st_seq_forward(seqs[i], tokens + off, lens[i], logits ? logits + (size_t)i * (size_t)V : NULL, false);
            off += lens[i++];
            continue;
        }
        int j = i; /* sequences i..j-1 together, at most a chunk of rows */
        first[0] = 0;
        while (j < B && lens[j] <= chunk && first[j - i] + lens[j] <= chunk) { first[j - i + 1] = first[j - i] + lens[j]; j++; }
        if (!have_bufs && !(rc = bufs_alloc(&b, m, ST_MIN(chunk, total)))) have_bufs = true;
        if (!rc) rc = run_rows(seqs + i, j - i, first, tokens + off, logits ? logits + (size_t)i * (size_t)V : NULL, false, &b);
        off += first[j - i];
        i = j;
    }
    if (have_bufs) bufs_free(&b);
    free(first);
    return rc;
}
