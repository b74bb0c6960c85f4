/* `strata synth --config` and a sweep of unusual configurations through the
 * whole engine. Each variant is the tiny preset's config.json with a few
 * fields changed (cJSON), parsed and synthesised at run time (< 3 MB each).
 * For each: finite, non-flat logits in both numerics; chunked prefill (1, 3)
 * and token-by-token decode equal one prefill to 1e-5 of the logit range (the
 * bound of test_model); 1 and 3 threads, and every ISA this CPU has, within
 * 1e-4 of the range of the 2-thread best-ISA run; streamed experts (1 slot,
 * 2 slots, a quarter of the experts) bit-identical to resident. Then the
 * refusals of synth --config and odd budgets/inputs of run and logits. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "cpu/cpu.h"
#include "engine/config.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "engine/synth.h"
#include "util.h"

#define T_TOKENS 24
#define T_MAX 300
#define VOCAB 500 /* not a multiple of 64 */

static char root[256];

typedef struct variant {
    const char *name;
    const char *json; /* fields over the base config */
    int T;            /* tokens (0: T_TOKENS) */
} variant;

/* base: tiny's sizes, vocab 500, layers window/CSA/HCA/CSA, one hash layer */
static const variant variants[] = {
    {"dim96_inter96_q40_allhash_kE", "{\"hidden_size\":96,\"moe_intermediate_size\":96,\"q_lora_rank\":40,"
     "\"num_hash_layers\":4,\"num_experts_per_tok\":8}", 0},
    {"hd48_rope16_olora17_og4", "{\"head_dim\":48,\"qk_rope_head_dim\":16,\"o_lora_rank\":17,\"o_groups\":4}", 0},
    {"heads1_index_heads1", "{\"num_attention_heads\":1,\"o_groups\":1,\"index_n_heads\":1}", 0},
    {"heads3_index_heads3_hc3", "{\"num_attention_heads\":3,\"o_groups\":3,\"index_n_heads\":3,\"index_head_dim\":64,"
     "\"qk_rope_head_dim\":8,\"hc_mult\":3}", 0},
    {"hca_ratios_1_2_3_5_w1", "{\"compress_ratios\":[1,2,3,5],\"sliding_window\":1}", 0},
    {"hc16_sinkhorn1_swiglu0", "{\"hc_mult\":16,\"hc_sinkhorn_iters\":1,\"swiglu_limit\":0}", 0},
    /* past the window and two 128-token HCA entries; many CSA entries against a small top-k */
    {"long_w128_hca128", "{\"sliding_window\":128,\"compress_ratios\":[128,4,0,128],\"index_topk\":40}", 260},
    {"long_w3_csa_topk2", "{\"sliding_window\":3,\"compress_ratios\":[4,4,2,4],\"index_topk\":2}", 100},
    {"no_rope_scaling_csa_topk1", "{\"rope_scaling\":null,\"sliding_window\":1,\"compress_ratios\":[4,4,4,4],\"index_topk\":1}", 0},
    {"hd512_heads2", "{\"head_dim\":512,\"qk_rope_head_dim\":64,\"index_head_dim\":128,\"num_attention_heads\":2,\"o_groups\":1}", 0},
    {"window_only_hash0_w1", "{\"num_hash_layers\":0,\"compress_ratios\":[0,0,0,0],\"sliding_window\":1}", 0},
    {"all_csa_hash2_w3_topk64_og1",
     "{\"num_hash_layers\":2,\"compress_ratios\":[4,4,4,4],\"sliding_window\":3,\"index_topk\":64,\"o_groups\":1}", 0},
    {"all_hca_w128_og4_hd32",
     "{\"compress_ratios\":[128,16,128,2],\"sliding_window\":128,\"o_groups\":4,\"head_dim\":32,\"qk_rope_head_dim\":8}", 0},
    {"one_expert_no_shared_hc1_softmax",
     "{\"n_routed_experts\":1,\"num_experts_per_tok\":1,\"n_shared_experts\":0,\"hc_mult\":1,\"scoring_func\":\"softmax\","
     "\"num_hash_layers\":0}", 0},
    {"e64_top64_shared2_sigmoid_mtp",
     "{\"n_routed_experts\":64,\"num_experts_per_tok\":64,\"n_shared_experts\":2,\"scoring_func\":\"sigmoid\","
     "\"norm_topk_prob\":false,\"num_nextn_predict_layers\":1,\"compress_ratios\":[0,4,128,4,4],"
     "\"moe_intermediate_size\":32}", 12},
    {"e16_top1_hd128_w5_hc2_mtp",
     "{\"n_routed_experts\":16,\"num_experts_per_tok\":1,\"head_dim\":128,\"qk_rope_head_dim\":64,\"index_head_dim\":128,"
     "\"sliding_window\":5,\"hc_mult\":2,\"num_nextn_predict_layers\":1,\"compress_ratios\":[0,4,128,4,0]}", 0},
};

/* The base config text plus `over`'s fields; the caller frees. */
static char *config_text(const char *over) {
    const st_synth_preset *tiny = st_synth_find("tiny");
    assert_non_null(tiny);
    char buf[8192];
    assert_int_equal(st_synth_config_json(tiny, buf, sizeof buf), 0);
    cJSON *c = cJSON_Parse(buf), *o = cJSON_Parse(over), *f;
    assert_non_null(c);
    assert_non_null(o);
    cJSON_ReplaceItemInObject(c, "vocab_size", cJSON_CreateNumber(VOCAB));
    cJSON_ReplaceItemInObject(c, "num_hidden_layers", cJSON_CreateNumber(4));
    cJSON *r = cJSON_CreateArray();
    const int base_ratios[] = {0, 4, 128, 4};
    for (int i = 0; i < 4; i++) cJSON_AddItemToArray(r, cJSON_CreateNumber(base_ratios[i]));
    cJSON_ReplaceItemInObject(c, "compress_ratios", r);
    cJSON_ArrayForEach(f, o) {
        cJSON_DeleteItemFromObject(c, f->string);
        cJSON_AddItemToObject(c, f->string, cJSON_Duplicate(f, true));
    }
    char *txt = cJSON_Print(c);
    cJSON_Delete(c);
    cJSON_Delete(o);
    return txt;
}

/* Synthesises `over`'s config into root/name through st_config_parse + st_synth_from_config. */
static void synth_variant(const char *name, const char *over, char *dir, size_t cap) {
    char *txt = config_text(over);
    st_config cfg;
    if (st_config_parse(txt, strlen(txt), name, &cfg)) fail_msg("%s: %s", name, st_last_error());
    st_synth_preset p;
    if (st_synth_from_config(&cfg, name, &p)) fail_msg("%s: %s", name, st_last_error());
    st_config_free(&cfg);
    snprintf(dir, cap, "%s/%s", root, name);
    assert_int_equal(tu_synth(&p, dir, 3, NULL), 0);
    free(txt);
}

static float *logits_of(st_model *m, const int32_t *ids, int64_t T) {
    st_seq *s;
    assert_int_equal(st_seq_new(m, &s), 0);
    float *lg = malloc((size_t)(T * m->vocab) * sizeof(float));
    assert_non_null(lg);
    if (st_seq_forward(s, ids, T, lg, true)) fail_msg("forward: %s", st_last_error());
    st_seq_free(s);
    return lg;
}

static float *run(const char *dir, const st_model_opts *o, int threads, const int32_t *ids, int T) {
    st_model *m = tu_load(dir, o, threads);
    float *lg = logits_of(m, ids, T);
    st_model_free(m);
    return lg;
}

static double err_over_range(const float *a, const float *ref, int64_t n) {
    float lo = INFINITY, hi = -INFINITY;
    double e = 0;
    for (int64_t i = 0; i < n; i++) {
        lo = fminf(lo, ref[i]);
        hi = fmaxf(hi, ref[i]);
        e = fmax(e, isfinite(a[i]) ? fabs((double)a[i] - ref[i]) : INFINITY);
    }
    return e / (hi - lo);
}

/* Three prompts (the first T, 1 and 7 tokens) prefilled together, then one
 * batched decode step: bit-identical to each sequence alone. */
static void batch_matches(st_model *m, const int32_t *ids, int T, const float *full, const char *what) {
    enum { B = 3 };
    const int64_t lens[B] = {T, 1, 7};
    int32_t all[T_MAX + 8], next[B] = {3, VOCAB - 1, 0};
    memcpy(all, ids, (size_t)T * sizeof *all);
    all[T] = ids[1];
    memcpy(all + T + 1, ids + 2, 7 * sizeof *all);
    st_seq *s[B];
    static float got[B * VOCAB], want[B * VOCAB], step[B * VOCAB];
    for (int i = 0; i < B; i++) assert_int_equal(st_seq_new(m, &s[i]), 0);
    if (st_seq_prefill_batch(s, all, lens, B, got)) fail_msg("%s: batch prefill: %s", what, st_last_error());
    if (memcmp(got, full + (int64_t)(T - 1) * VOCAB, VOCAB * sizeof(float))) fail_msg("%s: batched prefill differs", what);
    if (st_seq_forward_batch(s, next, B, step)) fail_msg("%s: batch decode: %s", what, st_last_error());
    for (int i = 0; i < B; i++) {
        st_seq *one;
        assert_int_equal(st_seq_new(m, &one), 0);
        const int64_t off = i == 0 ? 0 : i == 1 ? T : T + 1;
        assert_int_equal(st_seq_forward(one, all + off, lens[i], want + i * VOCAB, false), 0);
        if (memcmp(want + i * VOCAB, got + i * VOCAB, VOCAB * sizeof(float)))
            fail_msg("%s: sequence %d batched prefill differs from alone", what, i);
        assert_int_equal(st_seq_forward(one, &next[i], 1, want + i * VOCAB, false), 0);
        if (memcmp(want + i * VOCAB, step + i * VOCAB, VOCAB * sizeof(float)))
            fail_msg("%s: sequence %d batched decode differs from alone", what, i);
        st_seq_free(one);
    }
    for (int i = 0; i < B; i++) st_seq_free(s[i]);
}

static void check_variant(const variant *v) {
    char dir[512];
    synth_variant(v->name, v->json, dir, sizeof dir);
    const int T = v->T ? v->T : T_TOKENS;
    int32_t ids[T_MAX];
    for (int i = 0; i < T; i++) ids[i] = (i * 37 + 11) % VOCAB;
    ids[5] = VOCAB - 1;
    const int64_t n = (int64_t)T * VOCAB;
    st_config cfg;
    assert_int_equal(st_config_load(dir, &cfg), 0);
    const int E = cfg.n_routed_experts;
    st_config_free(&cfg);
    float *ref = NULL; /* reference numerics' logits, first */
    for (int pass = 0; pass < 2; pass++) {
        const int num = 1 - pass;
        st_model_opts o = {.numerics = (st_numerics)num};
        st_model *m = tu_load(dir, &o, 2);
        float *full = logits_of(m, ids, T);
        float lo = INFINITY, hi = -INFINITY;
        for (int64_t i = 0; i < n; i++) {
            if (!isfinite(full[i])) fail_msg("%s num %d: logit %lld is %g", v->name, num, (long long)i, full[i]);
            lo = fminf(lo, full[i]);
            hi = fmaxf(hi, full[i]);
        }
        if (!(hi - lo > 0.5 && hi - lo < 200)) fail_msg("%s num %d: logit range %g", v->name, num, hi - lo);
        const int64_t chunks[] = {1, 3};
        for (size_t c = 0; c < ST_ARRAY_LEN(chunks); c++) {
            m->chunk = chunks[c];
            float *lg = logits_of(m, ids, T);
            double e = err_over_range(lg, full, n);
            if (!(e < 1e-5)) fail_msg("%s num %d chunk %lld: %g", v->name, num, (long long)chunks[c], e);
            free(lg);
        }
        m->chunk = 2048;
        st_seq *s;
        assert_int_equal(st_seq_new(m, &s), 0);
        float one[VOCAB];
        for (int t = 0; t < T; t++) {
            assert_int_equal(st_seq_forward(s, &ids[t], 1, one, false), 0);
            double e = err_over_range(one, full + (int64_t)t * VOCAB, VOCAB);
            if (!(e < 1e-5)) fail_msg("%s num %d decode position %d: %g", v->name, num, t, e);
        }
        st_seq_free(s);
        batch_matches(m, ids, T, full, v->name);
        st_model_free(m);
        /* thread counts and ISAs */
        const int threads[] = {1, 3};
        for (size_t k = 0; num == 0 && k < ST_ARRAY_LEN(threads); k++) { /* same code in both numerics */
            float *lg = run(dir, &o, threads[k], ids, T);
            if (memcmp(lg, full, (size_t)n * sizeof(float)))
                fail_msg("%s num %d: %d threads differ from 2 (%g)", v->name, num, threads[k], err_over_range(lg, full, n));
            free(lg);
        }
        for (int isa = 0; isa < (int)st_cpu_isa_best(); isa++) {
            assert_int_equal(st_cpu_set_isa((st_isa)isa), 0);
            float *lg = run(dir, &o, 2, ids, T);
            st_cpu_set_isa(st_cpu_isa_best());
            double e = err_over_range(lg, full, n);
            /* reference numerics: rounding only. Official numerics quantise activations and
             * KV to FP8/FP4: an ulp of matmul rounding that flips one code changes every value
             * after it by a quantisation step, so two ISAs differ by up to the quantisation
             * error itself (seen: 0.10 of the range where official vs reference is 0.10) */
            const double bound = num == 1 ? 1e-5 : fmax(1e-4, 1.5 * err_over_range(full, ref, n));
            if (!(e < bound)) fail_msg("%s num %d %s: %g (bound %g)", v->name, num, st_isa_name((st_isa)isa), e, bound);
            free(lg);
        }
        /* streamed experts: bit-identical to resident */
        const int slots[] = {2, 3, ST_MAX(2, E / 4)}; /* the stream needs 2 */
        for (size_t k = 0; num == 0 && k < ST_ARRAY_LEN(slots); k++) {
            st_model_opts so = o;
            so.expert_slots = slots[k];
            float *lg = run(dir, &so, 2, ids, T);
            if (memcmp(lg, full, (size_t)n * sizeof(float)))
                fail_msg("%s: %d expert slots differ from resident (%g)", v->name, slots[k], err_over_range(lg, full, n));
            free(lg);
        }
        if (num == 1) ref = full;
        else free(full);
    }
    free(ref);
}

static void sweep(void **state) {
    (void)state;
    for (size_t i = 0; i < ST_ARRAY_LEN(variants); i++) {
        print_message("  %s\n", variants[i].name);
        check_variant(&variants[i]);
    }
}

static int files_equal(const char *a, const char *b) {
    char *x, *y;
    size_t lx, ly;
    if (st_read_file(a, 1 << 26, &x, &lx)) return 0;
    if (st_read_file(b, 1 << 26, &y, &ly)) { free(x); return 0; }
    int eq = lx == ly && !memcmp(x, y, lx);
    free(x);
    free(y);
    return eq;
}

/* strata synth --config of the tiny preset's own config.json writes the same
 * checkpoint; configs it cannot write or the engine cannot run are refused
 * naming the field, before anything is written. */
static void synth_config_command(void **state) {
    (void)state;
    const char *bin = tu_strata_bin();
    char cmd[2048], *out;
    snprintf(cmd, sizeof cmd, "%s synth --preset tiny --out %s/preset --seed 5 --quiet 2>&1 && "
             "%s synth --config %s/preset/config.json --out %s/cfg --seed 5 --quiet 2>&1", bin, root, bin, root, root);
    int rc = tu_run(cmd, &out);
    if (rc) fail_msg("%s", out);
    free(out);
    const char *files[] = {"model.safetensors", "config.json"};
    for (int i = 0; i < 2; i++) {
        char a[512], b[512];
        snprintf(a, sizeof a, "%s/preset/%s", root, files[i]);
        snprintf(b, sizeof b, "%s/cfg/%s", root, files[i]);
        if (!files_equal(a, b)) fail_msg("%s differs between --preset tiny and --config of its config.json", files[i]);
    }
    const struct { const char *over, *expect; } bad[] = {
        {"{\"tie_word_embeddings\":true}", "tie_word_embeddings"},
        {"{\"index_head_dim\":96}", "index_head_dim = 96"},
        {"{\"hc_mult\":17}", "hc_mult = 17"},
        {"{\"num_hidden_layers\":65,\"compress_ratios\":[]}", "compress_ratios"},
        {"{\"num_experts_per_tok\":9}", "num_experts_per_tok = 9"},
    };
    for (size_t i = 0; i < ST_ARRAY_LEN(bad); i++) {
        char *txt = config_text(bad[i].over), path[512];
        snprintf(path, sizeof path, "%s/bad%zu.json", root, i);
        assert_int_equal(st_write_file_atomic(path, txt, strlen(txt)), 0);
        free(txt);
        snprintf(cmd, sizeof cmd, "%s synth --config %s --out %s/bad%zu --quiet 2>&1; test ! -e %s/bad%zu/config.json",
                 bin, path, root, i, root, i);
        rc = tu_run(cmd, &out);
        if (rc || !strstr(out, bad[i].expect)) fail_msg("%s: rc %d, wanted '%s' in: %s", bad[i].over, rc, bad[i].expect, out);
        free(out);
    }
    /* bad command lines */
    const struct { const char *args, *expect; } cli[] = {
        {"--preset tiny --config x.json", "one of --preset NAME or --config FILE"},
        {"--config /nonexistent.json", "/nonexistent.json"},
        {"--preset tiny --seed 12x", "--seed must be an integer"},
        {"--preset tiny --seed -1", "--seed must be an integer"},
    };
    for (size_t i = 0; i < ST_ARRAY_LEN(cli); i++) {
        snprintf(cmd, sizeof cmd, "%s synth %s --out %s/y --quiet 2>&1; test ! -e %s/y", bin, cli[i].args, root, root);
        rc = tu_run(cmd, &out);
        if (rc || !strstr(out, cli[i].expect)) fail_msg("synth %s: rc %d, wanted '%s' in: %s", cli[i].args, rc, cli[i].expect, out);
        free(out);
    }
    /* a transformers-scheme config (F32 weights declared): the published format, which loads */
    snprintf(cmd, sizeof cmd, "%s synth --config tests/data/config/small_transformers.json --out %s/tf --quiet 2>&1",
             bin, root);
    rc = tu_run(cmd, &out); /* its CSA ratio 2 has no official-layout spelling (CSA iff 4) */
    if (rc != 1 || !strstr(out, "layer 1 is csa with ratio 2")) fail_msg("transformers config: rc %d: %s", rc, out);
    free(out);
    snprintf(cmd, sizeof cmd, "sed 's/\"compressed_sparse_attention\": 2/\"compressed_sparse_attention\": 4/' "
             "tests/data/config/small_transformers.json > %s/tf.json && %s synth --config %s/tf.json --out %s/tf --quiet 2>&1 "
             "&& %s logits --model %s/tf --ids 1,2,3 --threads 2 2>&1", root, bin, root, root, bin, root);
    rc = tu_run(cmd, &out);
    if (rc || !strstr(out, "synth writes the published format") || !strstr(out, "position 2"))
        fail_msg("transformers config: rc %d: %s", rc, out);
    free(out);
    /* more blocks than synth writes, and a checkpoint bigger than the disk */
    char *txt = config_text("{\"num_hidden_layers\":70,\"compress_ratios\":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,"
                            "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,"
                            "0,0,0,0]}"),
         path[512];
    st_config cfg;
    st_synth_preset p;
    assert_int_equal(st_config_parse(txt, strlen(txt), "big", &cfg), 0);
    assert_int_equal(st_synth_from_config(&cfg, "big", &p), ST_ERR_UNSUPPORTED);
    assert_non_null(strstr(st_last_error(), "num_hidden_layers"));
    st_config_free(&cfg);
    free(txt);
    txt = config_text("{\"hidden_size\":1048576,\"vocab_size\":1000000}");
    snprintf(path, sizeof path, "%s/huge.json", root);
    assert_int_equal(st_write_file_atomic(path, txt, strlen(txt)), 0);
    free(txt);
    snprintf(cmd, sizeof cmd, "%s synth --config %s --out %s/huge --quiet 2>&1; ls %s/huge | wc -l", bin, path, root, root);
    rc = tu_run(cmd, &out);
    if (!strstr(out, "GB free") || !strstr(out, "\n0\n")) fail_msg("huge: %s", out);
    free(out);
}

/* Odd inputs and budgets through strata run / logits: each works or says why, naming sizes. */
static void odd_inputs_and_budgets(void **state) {
    (void)state;
    char dir[512], cmd[2048], *out;
    synth_variant("cli", "{\"compress_ratios\":[4,0,128,4]}", dir, sizeof dir);
    const char *bin = tu_strata_bin();
    const struct { const char *args; int rc; const char *expect; } cases[] = {
        {"run --ids 1,2,3 -n 0", 0, "decode 0 tokens"},
        {"run --ids 7 -n 2", 0, "prefill 1 tokens"},
        {"run --ids 499 -n 1", 0, "prefill 1 tokens"},
        {"run --ids 3,500 -n 1", 1, "token id 500 at position 1 is outside the vocabulary (0..499)"},
        {"logits --ids 500", 1, "outside the vocabulary"},
        {"run --ids '' -n 1", 2, "no token ids"},
        {"run --ids 1,2 -n 1 --dram-budget 1K", 1, "is below the weights that stay in DRAM"},
        {"run --ids 1,2 -n 1 --expert-cache 1K", 1, "less than one slot of 12.00 KiB"},
        {"run --ids 1,2 -n 1 --expert-cache 12K", 1, "at least 2 are needed"},
        {"run --ids 1,2,3,4,5,6 -n 1 --kv-budget 1K", 1, "KV tiering works with|raise the KV budget"}, /* at load or at the first page */
        {"run --ids 1,2,3,4,5,6 -n 2 --kv-budget 192K", 0, "decode 2 tokens"},
        {"run --ids 1,2 -n 2 --expert-cache 24K", 0, "decode 2 tokens"},
    };
    for (size_t i = 0; i < ST_ARRAY_LEN(cases); i++) {
        snprintf(cmd, sizeof cmd, "%s %s --model %s --threads 2 --quiet 2>&1", bin, cases[i].args, dir);
        int rc = tu_run(cmd, &out);
        char alt[128];
        snprintf(alt, sizeof alt, "%s", cases[i].expect);
        char *bar = strchr(alt, '|');
        if (bar) *bar = 0;
        if (rc != cases[i].rc || !(strstr(out, alt) || (bar && strstr(out, bar + 1))))
            fail_msg("strata %s: rc %d (want %d), wanted '%s' in: %s", cases[i].args, rc, cases[i].rc, cases[i].expect, out);
        free(out);
    }
    /* a DRAM budget just above the weights that stay in DRAM: the message says where the
     * expert cache's few bytes came from (it named only 'dram expert cache') */
    snprintf(cmd, sizeof cmd, "%s run --ids 1,2 -n 1 --dram-budget 1K --model %s --threads 2 --quiet 2>&1", bin, dir);
    assert_int_equal(tu_run(cmd, &out), 1);
    const char *p = strstr(out, "stay in DRAM (");
    assert_non_null(p);
    double pinned_kib = strtod(p + strlen("stay in DRAM ("), NULL);
    assert_true(pinned_kib > 100 && strstr(p, "KiB"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s run --ids 1,2 -n 1 --dram-budget %dK --model %s --threads 2 --quiet 2>&1", bin,
             (int)ceil(pinned_kib) + 4, dir);
    assert_int_equal(tu_run(cmd, &out), 1);
    if (!strstr(out, "for routed experts after the weights that stay in DRAM") || !strstr(out, "less than one slot"))
        fail_msg("dram budget just above the pinned weights: %s", out);
    free(out);
}

/* tests/tools/gen_config_fixtures.py: transformers' logits for a config the two
 * fixtures of test_model do not have (sigmoid scores, two hash layers, index_topk
 * above the entries, a one-token window, one head per output group); reference
 * numerics within 1e-4 of the logit range, in both checkpoint layouts. */
static void transformers_fixture(void **state) {
    (void)state;
    const char *fx = "tests/data/fixtures/v4_cfg_sigmoid";
    char path[512], *json;
    snprintf(path, sizeof path, "%s/fixture.json", fx);
    assert_int_equal(st_read_file(path, 1 << 24, &json, NULL), 0);
    for (char *p = strstr(json, "Infinity"); p; p = strstr(p, "Infinity")) memcpy(p, "1e308   ", 8);
    cJSON *root_j = cJSON_Parse(json), *seq;
    assert_non_null(root_j);
    const char *layouts[] = {"", "/official"};
    for (int l = 0; l < 2; l++) {
        snprintf(path, sizeof path, "%s%s", fx, layouts[l]);
        st_model_opts o = {.numerics = ST_NUMERICS_REFERENCE};
        st_model *m = tu_load(path, &o, 2);
        int k = 0;
        cJSON_ArrayForEach(seq, cJSON_GetObjectItem(root_j, "sequences")) {
            cJSON *ids_j = cJSON_GetObjectItem(seq, "ids"), *id;
            const int64_t T = cJSON_GetArraySize(ids_j), V = (int64_t)cJSON_GetObjectItem(seq, "vocab")->valuedouble;
            assert_int_equal(V, m->vocab);
            int32_t *ids = malloc((size_t)T * sizeof *ids);
            int64_t t = 0;
            cJSON_ArrayForEach(id, ids_j) ids[t++] = (int32_t)id->valuedouble;
            snprintf(path, sizeof path, "%s/%s", fx, cJSON_GetObjectItem(seq, "logits")->valuestring);
            char *bin;
            size_t len;
            assert_int_equal(st_read_file(path, 1 << 26, &bin, &len), 0);
            assert_int_equal(len, (size_t)(T * V) * sizeof(float));
            float *lg = logits_of(m, ids, T);
            double e = err_over_range(lg, (const float *)bin, T * V);
            print_message("  v4_cfg_sigmoid%s seq%d: max |strata - transformers| / range = %.3g (bound 1e-4)\n",
                          layouts[l], k++, e);
            assert_true(e < 1e-4);
            free(lg);
            free(bin);
            free(ids);
        }
        st_model_free(m);
    }
    cJSON_Delete(root_j);
    free(json);
}

/* The sampler before its whole-vocabulary sort: st_topk of every logit, then the same draw. */
static int32_t sample_by_topk(st_sampler *s, const float *logits) {
    st_topk(logits, s->n_vocab, s->n_vocab, s->order, s->probs);
    return st_sampler_draw(s, s->n_vocab);
}

/* Sampling a whole vocabulary (no top-k) gave ~50 tok/s decode on a 129K
 * vocabulary: st_topk heap-sorted every logit, ~20 ms a token. Now a radix sort
 * in the same order (ties by lower id, -0 == +0, NaN last): the same tokens. */
static void sampler_whole_vocabulary(void **state) {
    (void)state;
    const int64_t n = 129280;
    float *l = malloc((size_t)n * sizeof *l);
    assert_non_null(l);
    tu_rng_seed(11);
    for (int64_t i = 0; i < n; i++) l[i] = (float)(tu_rnd() % 4000) / 400.0f - 5.0f; /* many ties */
    l[7] = -0.0f, l[8] = 0.0f, l[9] = NAN, l[10] = -INFINITY, l[11] = 5.0f, l[12] = 5.0f, l[n - 1] = NAN;
    const float temps[] = {0.05f, 0.6f, 2.0f}, top_p[] = {0, 0.5f};
    for (size_t t = 0; t < ST_ARRAY_LEN(temps); t++)
        for (size_t p = 0; p < ST_ARRAY_LEN(top_p); p++) {
            st_sampler_cfg c = {.temperature = temps[t], .top_p = top_p[p], .seed = 5 + t};
            st_sampler a, b;
            assert_int_equal(st_sampler_init(&a, &c, n), 0);
            assert_int_equal(st_sampler_init(&b, &c, n), 0);
            for (int d = 0; d < 30; d++) {
                int32_t x = st_sampler_sample(&a, l), y = sample_by_topk(&b, l);
                if (x != y) fail_msg("temperature %g top_p %g draw %d: %d, the st_topk order gives %d", temps[t], top_p[p], d, x, y);
            }
            st_sampler_release(&a);
            st_sampler_release(&b);
        }
    /* the cost: 30 draws, well under the old 20 ms each (not under sanitizers) */
    st_sampler_cfg c = {.temperature = 0.6f, .seed = 1};
    st_sampler a;
    assert_int_equal(st_sampler_init(&a, &c, n), 0);
    double t0 = st_time_s();
    for (int d = 0; d < 30; d++) st_sampler_sample(&a, l);
    double ms = (st_time_s() - t0) / 30 * 1e3;
    print_message("  whole-vocabulary sample: %.2f ms\n", ms);
    if (!getenv("STRATA_ASAN")) assert_true(ms < 8.0);
    st_sampler_release(&a);
    free(l);
}

/* Overwrites element `at` of the I64 tensor `name` in a single-file safetensors checkpoint. */
static void patch_i64(const char *path, const char *name, int64_t at, int64_t value) {
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    uint64_t hlen;
    assert_int_equal(fread(&hlen, 8, 1, f), 1);
    char *h = calloc(1, hlen + 1);
    assert_int_equal(fread(h, 1, hlen, f), hlen);
    cJSON *j = cJSON_Parse(h), *t = cJSON_GetObjectItem(j, name);
    assert_non_null(t);
    const int64_t off = (int64_t)cJSON_GetArrayItem(cJSON_GetObjectItem(t, "data_offsets"), 0)->valuedouble;
    assert_int_equal(fseek(f, (long)(8 + hlen + off + at * 8), SEEK_SET), 0);
    assert_int_equal(fwrite(&value, 8, 1, f), 1);
    fclose(f);
    cJSON_Delete(j);
    free(h);
}

/* A hash layer's tid2eid with an id out of range, negative, or repeated in a
 * token's row: refused at load naming the tensor and token (the repeated id
 * corrupted the heap, an out-of-range one read past the router's scores). */
static void bad_tid2eid_refused(void **state) {
    (void)state;
    char dir[512], path[600];
    synth_variant("tid2eid", "{\"num_hash_layers\":2}", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const struct { const char *tensor; int64_t at, value; const char *expect; } bad[] = {
        {"layers.0.ffn.gate.tid2eid", 0, 99, "token 0, entry 0: expected an expert id in [0, 8), found 99"},
        {"layers.1.ffn.gate.tid2eid", 3, -1, "token 1, entry 1: expected an expert id in [0, 8), found -1"},
        {"layers.1.ffn.gate.tid2eid", 15, -2, NULL}, /* set below to repeat entry 14 */
    };
    for (size_t i = 0; i < ST_ARRAY_LEN(bad); i++) {
        char *again = NULL;
        if (i == 2) { /* token 7: both entries the same expert */
            st_model_opts q = {.quiet = true};
            st_model *ok = NULL;
            assert_int_equal(st_model_load(dir, &q, &ok), 0);
            const int64_t e = ok->layers[1].moe.tid2eid[14];
            st_model_free(ok);
            patch_i64(path, bad[i].tensor, 15, e);
            again = malloc(128);
            snprintf(again, 128, "token 7 lists expert %lld twice", (long long)e);
        } else {
            patch_i64(path, bad[i].tensor, bad[i].at, bad[i].value);
        }
        st_model_opts o = {.quiet = true};
        st_model *m = NULL;
        assert_int_equal(st_model_load(dir, &o, &m), ST_ERR_FORMAT);
        assert_null(m);
        const char *want = again ? again : bad[i].expect;
        if (!strstr(st_last_error(), want) || !strstr(st_last_error(), bad[i].tensor))
            fail_msg("wanted '%s' in: %s", want, st_last_error());
        free(again);
        synth_variant("tid2eid", "{\"num_hash_layers\":2}", dir, sizeof dir); /* whole again */
    }
}

static int setup(void **state) {
    (void)state;
    return tu_tmpdir(root, sizeof root, "/tmp/strata-synthcfg-XXXXXX");
}

static int teardown(void **state) {
    (void)state;
    return tu_rmtree(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sampler_whole_vocabulary),
        cmocka_unit_test(bad_tid2eid_refused),
        cmocka_unit_test(transformers_fixture),
        cmocka_unit_test(synth_config_command),
        cmocka_unit_test(odd_inputs_and_budgets),
        cmocka_unit_test(sweep),
    };
    return cmocka_run_group_tests_name("synth_config", tests, setup, teardown);
}
