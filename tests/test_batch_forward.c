/* st_seq_forward_batch (engine/forward.c): one token of each of B sequences at
 * different positions gives, row for row, the same logits bit for bit as each
 * sequence decoding alone, in official and reference numerics, with every
 * expert resident and with expert caches small enough to force streaming;
 * batch membership and row order change from step to step. The MoE sees the
 * batch as one call: the step hook gets all B tokens and each expert is
 * fetched at most once per layer per step. st_seq_prefill_batch prefills
 * several prompts together with the same logits as one by one. Bad batches
 * are refused. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "engine/model.h"
#include "engine/model_stream.h"
#include "util.h"

#define MODEL "tests/data/fixtures/v4_tiny_a/official"
#define NSEQ 5
#define STEPS 14

static const int prompt_len[NSEQ] = {1, 3, 6, 9, 13}; /* crosses the window (7) and compression blocks (4, 7) */

static int32_t token_of(int seq, int k, int64_t vocab) { return (int32_t)((seq * 977 + k * 131 + 7) % vocab); }

static st_model *load(st_numerics num, const st_model_opts *extra) {
    st_model_opts o = extra ? *extra : (st_model_opts){0};
    o.numerics = num;
    return tu_load(MODEL, &o, 2);
}

static void prefill(st_model *m, st_seq **s, int i) {
    int32_t ids[32];
    for (int k = 0; k < prompt_len[i]; k++) ids[k] = token_of(i, k, m->vocab);
    assert_int_equal(st_seq_new(m, s), 0);
    if (st_seq_forward(*s, ids, prompt_len[i], NULL, false)) fail_msg("prefill: %s", st_last_error());
}

/* want (NSEQ, STEPS, vocab): every sequence decoding alone */
static float *sequential(st_model *m) {
    const size_t V = (size_t)m->vocab;
    float *want = malloc((size_t)NSEQ * STEPS * V * sizeof(float));
    for (int i = 0; i < NSEQ; i++) {
        st_seq *s;
        prefill(m, &s, i);
        for (int k = 0; k < STEPS; k++) {
            int32_t t = token_of(i, 100 + k, m->vocab);
            if (st_seq_forward(s, &t, 1, want + ((size_t)i * STEPS + k) * V, false)) fail_msg("decode: %s", st_last_error());
        }
        st_seq_free(s);
    }
    return want;
}

/* The same token streams, decoded in batches whose membership and row order
 * change every round; compares each row with want. */
static void batched_matches(st_model *m, const float *want, const char *what) {
    const size_t V = (size_t)m->vocab;
    st_seq *s[NSEQ];
    int done[NSEQ] = {0};
    for (int i = 0; i < NSEQ; i++) prefill(m, &s[i], i);
    float *lg = malloc((size_t)NSEQ * V * sizeof(float));
    for (int round = 0, left = NSEQ * STEPS; left > 0; round++) {
        st_seq *rows[NSEQ];
        int which[NSEQ], B = 0;
        int32_t toks[NSEQ];
        for (int j = 0; j < NSEQ; j++) {
            int i = (j + round) % NSEQ;          /* rotating row order */
            if (done[i] == STEPS || (round + i) % 4 == 3) continue; /* sits this round out */
            rows[B] = s[i];
            which[B] = i;
            toks[B] = token_of(i, 100 + done[i], m->vocab);
            B++;
        }
        if (!B) continue;
        if (st_seq_forward_batch(rows, toks, B, lg)) fail_msg("%s: batch: %s", what, st_last_error());
        for (int r = 0; r < B; r++) {
            int i = which[r];
            const float *w = want + ((size_t)i * STEPS + done[i]) * V;
            if (memcmp(w, lg + r * V, V * sizeof(float))) {
                size_t at = 0;
                while (!memcmp(&w[at], &lg[r * V + at], sizeof(float))) at++;
                fail_msg("%s: round %d, row %d of %d (sequence %d, step %d): logit %zu is %.9g, alone %.9g", what, round,
                         r, B, i, done[i], at, (double)lg[r * V + at], (double)w[at]);
            }
            assert_int_equal(s[i]->pos, prompt_len[i] + done[i] + 1);
            done[i]++;
            left--;
        }
    }
    free(lg);
    for (int i = 0; i < NSEQ; i++) st_seq_free(s[i]);
}

static void bit_identical(st_numerics num) {
    st_model *m = load(num, NULL);
    float *want = sequential(m);
    batched_matches(m, want, num == ST_NUMERICS_OFFICIAL ? "official, resident" : "reference, resident");
    st_model_free(m);
    /* streamed experts: 2 and 3 slots of the fixture's 8 per layer, prefetch on and off */
    st_model_opts v[] = {{.expert_slots = 2}, {.expert_slots = 3, .no_prefetch = true}};
    for (size_t k = 0; k < ST_ARRAY_LEN(v); k++) {
        m = load(num, &v[k]);
        st_stream_stats ss;
        assert_int_equal(st_model_offload_stats(m, &ss), 0);
        char what[96];
        snprintf(what, sizeof what, "%s, %d expert slots", num == ST_NUMERICS_OFFICIAL ? "official" : "reference", ss.n_slots);
        batched_matches(m, want, what);
        st_model_offload_stats(m, &ss);
        assert_true(ss.bytes_read > 0);
        st_model_free(m);
    }
    free(want);
}

/* st_seq_prefill_batch: the NSEQ prompts prefilled together give each one's
 * last-position logits, and then decode, bit for bit as prefilled alone;
 * resident, with a chunk that splits the batch (the 13-token prompt is longer
 * than it and runs alone), and with streamed experts. */
static void prefill_batch_matches(st_numerics num, const st_model_opts *o, const char *what) {
    st_model *m = load(num, o);
    const size_t V = (size_t)m->vocab;
    enum { DECODE = 3 };
    float *want = malloc((size_t)NSEQ * (1 + DECODE) * V * sizeof(float)), *got = malloc((size_t)NSEQ * (1 + DECODE) * V * sizeof(float));
    int32_t all[64], ids[32];
    int64_t lens[NSEQ], off = 0;
    st_seq *s[NSEQ];
    for (int i = 0; i < NSEQ; i++) {
        for (int k = 0; k < prompt_len[i]; k++) ids[k] = all[off + k] = token_of(i, k, m->vocab);
        lens[i] = prompt_len[i];
        off += lens[i];
        assert_int_equal(st_seq_new(m, &s[i]), 0);
        if (st_seq_forward(s[i], ids, lens[i], want + (size_t)i * (1 + DECODE) * V, false)) fail_msg("%s: %s", what, st_last_error());
    }
    for (int pass = 0; pass < 2; pass++) { /* pass 0: decode after the single prefills; 1: after the batched one */
        float *out = pass ? got : want;
        if (pass) {
            float *lg = malloc((size_t)NSEQ * V * sizeof(float));
            for (int i = 0; i < NSEQ; i++) st_seq_reset(s[i]);
            if (st_seq_prefill_batch(s, all, lens, NSEQ, lg)) fail_msg("%s: batch prefill: %s", what, st_last_error());
            for (int i = 0; i < NSEQ; i++) memcpy(got + (size_t)i * (1 + DECODE) * V, lg + (size_t)i * V, V * sizeof(float));
            free(lg);
        }
        for (int i = 0; i < NSEQ; i++)
            for (int k = 0; k < DECODE; k++) {
                int32_t t = token_of(i, 200 + k, m->vocab);
                if (st_seq_forward(s[i], &t, 1, out + ((size_t)i * (1 + DECODE) + 1 + k) * V, false)) fail_msg("%s: %s", what, st_last_error());
            }
    }
    for (size_t x = 0; x < (size_t)NSEQ * (1 + DECODE) * V; x++)
        if (memcmp(&want[x], &got[x], sizeof(float)))
            fail_msg("%s: sequence %zu step %zu logit %zu: %.9g alone vs %.9g batched", what, x / ((1 + DECODE) * V),
                     x / V % (1 + DECODE), x % V, (double)want[x], (double)got[x]);
    for (int i = 0; i < NSEQ; i++) st_seq_free(s[i]);
    free(want);
    free(got);
    st_model_free(m);
}

static void prefill_batch_bit_identical(void **state) {
    (void)state;
    st_model_opts chunk10 = {.chunk = 10}, streamed = {.expert_slots = 3}, both = {.chunk = 10, .expert_slots = 2};
    for (int n = 0; n < 2; n++) {
        st_numerics num = n ? ST_NUMERICS_REFERENCE : ST_NUMERICS_OFFICIAL;
        prefill_batch_matches(num, NULL, n ? "reference, resident" : "official, resident");
        prefill_batch_matches(num, &chunk10, n ? "reference, chunk 10" : "official, chunk 10");
        prefill_batch_matches(num, &streamed, n ? "reference, 3 expert slots" : "official, 3 expert slots");
        prefill_batch_matches(num, &both, n ? "reference, chunk 10, 2 slots" : "official, chunk 10, 2 slots");
    }
    /* bad input is refused */
    st_model *m = load(ST_NUMERICS_OFFICIAL, NULL);
    st_seq *s[2];
    assert_int_equal(st_seq_new(m, &s[0]), 0);
    int32_t t[2] = {1, 2};
    int64_t lens[2] = {2, 0};
    assert_int_equal(st_seq_prefill_batch(s, t, lens, 0, NULL), ST_ERR_INVALID);
    s[1] = s[0];
    lens[1] = 1;
    assert_int_equal(st_seq_prefill_batch(s, t, lens, 2, NULL), ST_ERR_INVALID); /* the same sequence twice */
    assert_int_equal(st_seq_new(m, &s[1]), 0);
    lens[1] = 0;
    assert_int_equal(st_seq_prefill_batch(s, t, lens, 2, NULL), ST_ERR_INVALID); /* an empty prompt */
    st_seq_free(s[0]);
    st_seq_free(s[1]);
    st_model_free(m);
}

static void official_bit_identical(void **state) { (void)state; bit_identical(ST_NUMERICS_OFFICIAL); }
static void reference_bit_identical(void **state) { (void)state; bit_identical(ST_NUMERICS_REFERENCE); }

/* An expert source around the model's own experts that records what the
 * forward pass asks of it. */
typedef struct spy {
    st_model *m;
    st_expert_source inner; /* the model's (get == NULL: the loader's pointers) */
    int steps;
    int64_t last_T;
    int gets[8][64];        /* (layer, expert) fetches in the current step */
    int worst;              /* most fetches of one expert in one layer in one step */
} spy;

static int spy_step(void *ctx, const int32_t *tokens, int64_t T) {
    spy *p = ctx;
    p->steps++;
    p->last_T = T;
    memset(p->gets, 0, sizeof p->gets);
    return p->inner.step ? p->inner.step(p->inner.ctx, tokens, T) : 0;
}

static int spy_get(void *ctx, int layer, int expert, const st_expert_w **out) {
    spy *p = ctx;
    int n = ++p->gets[layer][expert];
    if (n > p->worst) p->worst = n;
    if (p->inner.get) return p->inner.get(p->inner.ctx, layer, expert, out);
    *out = &p->m->layers[layer].moe.experts[expert];
    return 0;
}

static void spy_put(void *ctx, int layer, int expert) {
    spy *p = ctx;
    if (p->inner.put) p->inner.put(p->inner.ctx, layer, expert);
}

static void one_moe_call_per_step(void **state) {
    (void)state;
    st_model *m = load(ST_NUMERICS_REFERENCE, NULL);
    assert_true(m->n_layers <= 8 && m->layers[1].moe.n_experts <= 64);
    spy p = {.m = m, .inner = m->experts};
    m->experts = (st_expert_source){.get = spy_get, .put = spy_put, .step = spy_step, .ctx = &p};
    st_seq *s[NSEQ];
    int32_t toks[NSEQ];
    for (int i = 0; i < NSEQ; i++) {
        prefill(m, &s[i], i);
        toks[i] = token_of(i, 50, m->vocab);
    }
    float *lg = malloc((size_t)NSEQ * (size_t)m->vocab * sizeof(float));
    p.steps = 0;
    p.worst = 0;
    for (int k = 0; k < 3; k++) assert_int_equal(st_seq_forward_batch(s, toks, NSEQ, lg), 0);
    assert_int_equal(p.steps, 3);       /* the hook once per batched step ... */
    assert_int_equal(p.last_T, NSEQ);   /* ... with every row's token */
    assert_int_equal(p.worst, 1);       /* each expert fetched once per layer for the whole batch */
    free(lg);
    for (int i = 0; i < NSEQ; i++) st_seq_free(s[i]);
    m->experts = p.inner;
    st_model_free(m);
}

static void bad_batches_refused(void **state) {
    (void)state;
    st_model *m = load(ST_NUMERICS_REFERENCE, NULL), *m2 = load(ST_NUMERICS_REFERENCE, NULL);
    st_seq *a, *b, *c;
    assert_int_equal(st_seq_new(m, &a), 0);
    assert_int_equal(st_seq_new(m, &b), 0);
    assert_int_equal(st_seq_new(m2, &c), 0);
    float *lg = malloc(3 * (size_t)m->vocab * sizeof(float));
    int32_t toks[3] = {1, 2, 3};
    st_seq *dup[2] = {a, a}, *mixed[2] = {a, c}, *ok[2] = {a, b};
    assert_int_equal(st_seq_forward_batch(ok, toks, 0, lg), ST_ERR_INVALID);
    assert_int_equal(st_seq_forward_batch(dup, toks, 2, lg), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "sequence 1"));
    assert_int_equal(st_seq_forward_batch(mixed, toks, 2, lg), ST_ERR_INVALID);
    int32_t bad[2] = {1, (int32_t)m->vocab};
    assert_int_equal(st_seq_forward_batch(ok, bad, 2, lg), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "vocabulary"));
    assert_int_equal(a->pos, 0);
    assert_int_equal(st_seq_forward_batch(ok, toks, 2, lg), 0);
    assert_int_equal(a->pos, 1);
    assert_int_equal(b->pos, 1);
    free(lg);
    st_seq_free(a);
    st_seq_free(b);
    st_seq_free(c);
    st_model_free(m);
    st_model_free(m2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(official_bit_identical),
        cmocka_unit_test(reference_bit_identical),
        cmocka_unit_test(prefill_batch_bit_identical),
        cmocka_unit_test(one_moe_call_per_step),
        cmocka_unit_test(bad_batches_refused),
    };
    return cmocka_run_group_tests_name("batch_forward", tests, NULL, NULL);
}
