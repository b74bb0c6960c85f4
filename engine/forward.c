/* The forward pass over a chunk (see model.h): embedding into hc streams, then
 * per layer mHC -> RMSNorm -> attention -> mHC and mHC -> RMSNorm -> MoE -> mHC,
 * then hc_head -> norm -> head (F32). Long inputs run in chunks of m->chunk
 * tokens; the KV state carries everything across chunks. Batched decode runs
 * one token of each of B sequences through the same layer loop: attention per
 * sequence, everything else (the MoE above all) once over the B rows. */
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
} fwd_bufs;

static void bufs_free(fwd_bufs *b) {
    free(b->x); free(b->y); free(b->f); free(b->post); free(b->comb); free(b->mixes);
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
    if (b->x && b->y && b->f && b->post && b->comb && b->mixes) return 0;
    bufs_free(b);
    *b = (fwd_bufs){0};
    return st_error(ST_ERR_NOMEM, "forward: out of memory for %lld rows", (long long)rows);
}

/* T token rows through the model. nseq == 1: T consecutive tokens of seqs[0]
 * (prefill chunk or single decode); nseq > 1: one token of each sequence
 * (T == nseq, batched decode). Every op but attention runs over all T rows at
 * once; attention runs per sequence on its own state at its own position. The
 * row kernels are batch-invariant (cpu/cpu.h), so a row's result does not
 * depend on which other rows share the call. logits: (T, vocab) when
 * all_positions (always with nseq > 1), else (1, vocab) for the last row. */
static int run_rows(st_seq *const *seqs, int nseq, const int32_t *tokens, int64_t T, float *logits, bool all_positions,
                    fwd_bufs *b) {
    const st_model *m = seqs[0]->m;
    const int hc = m->hcd.hc;
    const int64_t dim = m->dim, sd = (int64_t)hc * dim, per = nseq == 1 ? T : 1; /* rows per sequence */
    const bool official = m->numerics == ST_NUMERICS_OFFICIAL;
    int rc;
    for (int64_t t = 0; t < T; t++) {
        const st_seq *s = seqs[t / per];
        if (tokens[t] < 0 || tokens[t] >= m->vocab)
            return st_error(ST_ERR_INVALID, "token id %d at position %lld is outside the vocabulary (0..%lld)",
                            tokens[t], (long long)(s->pos + t % per), (long long)m->vocab - 1);
        st_dequant_rows(&m->embed, tokens[t], tokens[t] + 1, b->y + t * dim);
        for (int i = 0; i < hc; i++) memcpy(b->x + t * sd + i * dim, b->y + t * dim, (size_t)dim * sizeof(float));
    }
    if (m->experts.step && (rc = m->experts.step(m->experts.ctx, tokens, T))) return rc;
    for (int l = 0; l < m->n_layers; l++) {
        const st_layer_w *L = &m->layers[l];
        /* attention */
        if ((rc = st_hc_pre(m->pool, &m->hcd, &L->hc_attn, b->x, T, b->y, b->post, b->comb, b->mixes))) return rc;
        for (int64_t t = 0; t < T; t++) st_rmsnorm(b->y + t * dim, L->attn_norm, dim, m->norm_eps, b->y + t * dim);
        if (official) st_round_bf16(b->y, T * dim);
        for (int i = 0; i < nseq; i++) {
            st_seq *s = seqs[i];
            const int64_t r0 = (int64_t)i * per;
            if ((rc = st_attn_forward(m->pool, &L->attn, &s->state[l], b->y + r0 * dim, per, s->pos, m->numerics,
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
    }
    if (logits) {
        int64_t first = all_positions || nseq > 1 ? 0 : T - 1, n = T - first;
        if ((rc = st_hc_head(m->pool, &m->hcd, &m->hc_head, b->x + first * sd, n, b->y, b->mixes))) return rc;
        for (int64_t t = 0; t < n; t++) st_rmsnorm(b->y + t * dim, m->norm, dim, m->norm_eps, b->y + t * dim);
        if (official) st_round_bf16(b->y, n * dim);
        if ((rc = st_matmul(m->pool, &m->head, b->y, n, logits, ST_ACT_F32))) return rc;
    }
    for (int i = 0; i < nseq; i++) seqs[i]->pos += per;
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
        rc = run_rows(&s, 1, tokens + t0, n, lg, all_positions, &b);
    }
    bufs_free(&b);
    return rc;
}

int st_seq_forward_batch(st_seq *const *seqs, const int32_t *tokens, int B, float *logits) {
    if (B <= 0) return st_error(ST_ERR_INVALID, "batch forward: no sequences (B = %d)", B);
    const st_model *m = seqs[0]->m;
    for (int i = 0; i < B; i++) {
        if (seqs[i]->m != m) return st_error(ST_ERR_INVALID, "batch forward: sequence %d belongs to another model", i);
        for (int j = 0; j < i; j++)
            if (seqs[j] == seqs[i]) return st_error(ST_ERR_INVALID, "batch forward: sequence %d is also row %d", i, j);
    }
    fwd_bufs b;
    int rc = bufs_alloc(&b, m, B);
    if (!rc) {
        rc = run_rows(seqs, B, tokens, B, logits, true, &b);
        bufs_free(&b);
    }
    return rc;
}
