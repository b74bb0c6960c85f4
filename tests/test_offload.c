/* Routed experts streamed from the checkpoint (offload/expert_source.c +
 * engine/model_stream.c): logits bit-identical with every expert resident and
 * with budgets that force streaming (tiny: 2-3 slots, safetensors, pack and the
 * fused transformers layout; mini: a quarter of its expert bytes), prefetch on
 * and off, prefill and token-by-token decode; prefetch statistics (hash layers
 * are always predicted exactly, counts add up; the refined prediction is the
 * routing when attention adds nothing); injected read errors name the
 * file and the expert; the budget's peak never exceeds the limit; a child
 * `strata run` with a small --dram-budget has a peak RSS far below the resident
 * run's; --trace writes a file `strata bench policies` replays. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/model.h"
#include "engine/model_stream.h"
#include "engine/pack_convert.h"
#include "engine/synth.h"
#include "engine/tensor_names.h"
#include "offload/plan.h"
#include "offload/trace.h"
#include "util.h"

static char tmp[128], tiny[200], tiny_pack[200], mini[200];
static const char *bin;
static bool asan;

static int setup(void **state) {
    (void)state;
    bin = tu_strata_bin();
    asan = getenv("STRATA_ASAN") != NULL;
    if (tu_tmpdir(tmp, sizeof tmp, "/var/tmp/strata-offload-XXXXXX")) return -1;
    snprintf(tiny, sizeof tiny, "%s/tiny", tmp);
    snprintf(tiny_pack, sizeof tiny_pack, "%s/tiny.pack", tmp);
    snprintf(mini, sizeof mini, "%s/mini", tmp);
    st_convert_opts co = {.quiet = true, .split = 2, .force = true};
    if (st_synth_write(st_synth_find("tiny"), tiny, 11, NULL, true) || st_pack_convert(tiny, tiny_pack, &co, NULL)) {
        fprintf(stderr, "setup: %s\n", st_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    return tu_rmtree(tmp);
}

static st_model *load(const char *path, const st_model_opts *extra) { return tu_load(path, extra, 2); }

/* Prefill of n tokens (all positions) then `decode` single tokens; every logit
 * of every step into one array. */

/* Every streaming configuration against the resident model, bit for bit. */
static void identical(const char *path, const st_model_opts *variants, int n_variants, int n, int decode) {
    st_model *m = load(path, NULL);
    int32_t ids[64];
    tu_ids(m, ids, n, 0);
    float *want = tu_prefill_decode(m, ids, n, decode);
    size_t count = (size_t)(n + decode) * (size_t)m->vocab;
    st_stream_stats ss;
    assert_int_equal(st_model_offload_stats(m, &ss), ST_ERR_NOT_FOUND);
    st_model_free(m);
    for (int v = 0; v < n_variants; v++) {
        m = load(path, &variants[v]);
        assert_int_equal(st_model_offload_stats(m, &ss), 0);
        if (variants[v].expert_slots) assert_int_equal(ss.n_slots, variants[v].expert_slots);
        float *got = tu_prefill_decode(m, ids, n, decode);
        char what[300];
        snprintf(what, sizeof what, "%s, variant %d (%d slots, prefetch %s)", path, v, ss.n_slots,
                 variants[v].no_prefetch ? "off" : "on");
        tu_assert_same_bits(want, got, count, what);
        st_model_offload_stats(m, &ss);
        assert_true(ss.pf.needs > 0);
        assert_true(ss.bytes_read > 0);
        free(got);
        st_model_free(m);
    }
    free(want);
}

static void tiny_bit_identical(void **state) {
    (void)state;
    st_model_opts v[] = {{.expert_slots = 2}, {.expert_slots = 3}, {.expert_slots = 3, .no_prefetch = true},
                         {.expert_slots = 5, .cache_policy = 2}, {.expert_cache = 64 << 10, .prefetch_depth = 1}};
    identical(tiny, v, (int)ST_ARRAY_LEN(v), 24, 6);
}

/* Reads in small pieces with a small cap on the bytes in the kernel (most of a
 * load waits in the io engine's queue): demand loads and late prefetches are
 * promoted ahead of speculative ones, the caps hold (urgent reads may go deeper),
 * the logits do not move. */
static void small_io_pieces(void **state) {
    (void)state;
    setenv("STRATA_IO_PIECE", "4096", 1);
    setenv("STRATA_IO_INFLIGHT", "8192", 1);
    setenv("STRATA_IO_INFLIGHT_URGENT", "16384", 1);
    st_model_opts v[] = {{.expert_slots = 3}, {.expert_slots = 2, .no_prefetch = true}};
    identical(tiny, v, (int)ST_ARRAY_LEN(v), 12, 6);
    st_model *m = load(tiny, &v[0]);
    int32_t ids[12];
    tu_ids(m, ids, 12, 0);
    free(tu_prefill_decode(m, ids, 12, 6));
    st_stream_stats ss;
    assert_int_equal(st_model_offload_stats(m, &ss), 0);
    print_message("pieces of 4 KiB, 8 KiB in the kernel (16 KiB urgent): %llu loads promoted, peak %llu bytes in flight, %llu demand loads\n",
                  (unsigned long long)ss.io_promoted, (unsigned long long)ss.io_peak_inflight,
                  (unsigned long long)ss.pf.demand_loads);
    assert_true(ss.pf.demand_loads > 0);
    assert_true(ss.io_promoted > 0);
    assert_true(ss.io_peak_inflight <= 16384);
    st_model_free(m);
    unsetenv("STRATA_IO_PIECE");
    unsetenv("STRATA_IO_INFLIGHT");
    unsetenv("STRATA_IO_INFLIGHT_URGENT");
}

static void tiny_pack_bit_identical(void **state) {
    (void)state;
    st_model_opts v[] = {{.expert_slots = 2}, {.expert_slots = 4, .no_prefetch = true}};
    identical(tiny_pack, v, (int)ST_ARRAY_LEN(v), 20, 4);
}

/* transformers naming: w1/w3 are slices of a fused tensor, w2 of another: several spans an expert */
static void fused_layout_bit_identical(void **state) {
    (void)state;
    st_model_opts v[] = {{.expert_slots = 2}, {.expert_slots = 3, .no_prefetch = true}};
    identical("tests/data/fixtures/v4_tiny_b", v, (int)ST_ARRAY_LEN(v), 12, 3);
}

static void make_mini(void) {
    if (access(mini, F_OK) == 0) return;
    st_synth_preset p = *st_synth_find("mini");
    p.with_tokenizer = false;
    if (st_synth_write(&p, mini, 5, NULL, true)) fail_msg("synth mini: %s", st_last_error());
}

static void mini_quarter_budget_bit_identical(void **state) {
    (void)state;
    make_mini();
    st_model *m = load(mini, NULL);
    uint64_t quarter = st_model_routed_bytes(m) / 4;
    st_model_free(m);
    st_model_opts v[] = {{.expert_cache = quarter}, {.expert_cache = quarter, .no_prefetch = true}};
    identical(mini, v, asan ? 1 : 2, asan ? 6 : 16, asan ? 2 : 6);
    /* the cache holds what it was given and no more */
    m = load(mini, &v[0]);
    st_stream_stats ss;
    assert_int_equal(st_model_offload_stats(m, &ss), 0);
    assert_true(ss.cache_bytes <= quarter);
    assert_true(ss.cache_bytes + ss.slot_bytes > quarter); /* as many slots as fit */
    assert_true(ss.budget_peak <= quarter);
    st_model_free(m);
}

/* Hash-routed layers are predicted exactly from the token ids; the counts add up. */
static void prefetch_statistics(void **state) {
    (void)state;
    char trace[300];
    snprintf(trace, sizeof trace, "%s/tiny.trace", tmp);
    st_model_opts o = {.expert_slots = 8, .trace_path = trace};
    st_model *m = load(tiny, &o);
    int32_t ids[16];
    tu_ids(m, ids, 16, 0);
    float *lg = tu_prefill_decode(m, ids, 4, 12);
    free(lg);
    st_stream_stats ss;
    assert_int_equal(st_model_offload_stats(m, &ss), 0);
    const st_prefetch_stats *p = &ss.pf;
    assert_int_equal(p->needs, p->hits + p->late + p->misses);
    assert_true(p->predictions_used <= p->predictions);
    assert_true(p->predictions > 0 && p->predictions_used > 0);
    /* hit or late is the disk's timing (a read in flight at need is late); a prediction in use was
     * queued, in flight or resident at need, so some need was served ahead of demand either way */
    assert_true(p->hits + p->late > 0);
    print_message("needs %llu: hits %llu, late %llu, misses %llu\n", (unsigned long long)p->needs,
                  (unsigned long long)p->hits, (unsigned long long)p->late, (unsigned long long)p->misses);
    assert_true(ss.budget_peak <= ss.cache_bytes + 4096);
    const int n_layers = m->n_layers, n_hash = 1; /* tiny: the first layer routes by hash */
    assert_true(m->layers[0].moe.hash && !m->layers[1].moe.hash);
    st_model_free(m); /* closes the trace */

    st_trace_header h;
    st_trace_record *r;
    size_t n;
    assert_int_equal(st_trace_load(trace, &h, &r, &n), 0);
    assert_int_equal(h.n_layers, n_layers);
    assert_int_equal(n, (size_t)(16 * n_layers));
    int hash_records = 0, hash_hits = 0, hash_chosen = 0;
    for (size_t i = 0; i < n; i++) {
        if (r[i].layer >= n_hash) continue;
        hash_records++;
        /* every chosen expert of a hash layer was predicted: the prediction is the routing */
        for (int c = 0; c < r[i].n_chosen; c++) {
            bool found = false;
            for (int q = 0; q < r[i].n_predicted; q++) found |= r[i].predicted[q] == r[i].chosen[c];
            assert_true(found);
            hash_chosen++;
            hash_hits += (r[i].hit_mask >> c) & 1;
        }
    }
    assert_int_equal(hash_records, 16);
    /* tiny's attention takes microseconds, a read tens of them: some are still in flight (late, not missed) */
    print_message("hash layer: %d of %d chosen experts resident at need\n", hash_hits, hash_chosen);
    free(r);

    /* the bench replays the file */
    char cmd[600], *out;
    /* leaks of the bench itself are its suite's business (test_trace), not this replay's */
    snprintf(cmd, sizeof cmd, "ASAN_OPTIONS=detect_leaks=0 %s bench policies --trace %s 2>&1", bin, trace);
    if (tu_run(cmd, &out)) fail_msg("%s: %s", cmd, out);
    assert_non_null(strstr(out, "lru"));
    free(out);
}

/* The refined prediction (forward.c refine_next: layer l's MoE input computed
 * as if l's attention output were zero) is exact when that output is zero: with
 * every non-hash layer's wo_b zeroed, each decoded token's predicted experts are
 * the routing itself, and the logits stay those of the resident model. */
static void refined_prediction_exact_without_attention(void **state) {
    (void)state;
    char trace[300];
    snprintf(trace, sizeof trace, "%s/refine.trace", tmp);
    st_model *res = load(tiny, NULL);
    st_model_opts o = {.expert_slots = 4, .trace_path = trace}; /* room for a token's 2 experts twice */
    st_model *m = load(tiny, &o);
    assert_non_null(m->experts.refine);
    void *zeros[16] = {0};
    for (int l = 0; l < m->n_layers && l < 16; l++) {
        if (m->layers[l].moe.hash) continue;
        st_weight *w[2] = {&res->layers[l].attn.wo_b, &m->layers[l].attn.wo_b};
        zeros[l] = calloc(1, st_weight_data_bytes(w[0]->fmt, w[0]->rows, w[0]->cols));
        assert_non_null(zeros[l]);
        w[0]->data = w[1]->data = zeros[l];
    }
    int32_t ids[8];
    tu_ids(m, ids, 8, 0);
    const int prompt = 4, decode = 10;
    float *want = tu_prefill_decode(res, ids, prompt, decode), *got = tu_prefill_decode(m, ids, prompt, decode);
    tu_assert_same_bits(want, got, (size_t)(prompt + decode) * (size_t)m->vocab, "zero attention output, streamed");
    free(want);
    free(got);
    const int top_k = m->layers[1].moe.top_k;
    st_model_free(m);
    st_model_free(res);
    for (int l = 0; l < 16; l++) free(zeros[l]);
    st_trace_header h;
    st_trace_record *r;
    size_t n;
    assert_int_equal(st_trace_load(trace, &h, &r, &n), 0);
    int checked = 0;
    for (size_t i = 0; i < n; i++) {
        if (r[i].token_index < prompt || r[i].layer < 1) continue; /* decode steps, layers after the hash one */
        assert_int_equal(r[i].n_predicted, top_k);
        for (int c = 0; c < r[i].n_chosen; c++) {
            bool found = false;
            for (int q = 0; q < r[i].n_predicted; q++) found |= r[i].predicted[q] == r[i].chosen[c];
            if (!found) fail_msg("token %lld layer %d: chosen expert %d was not predicted", (long long)r[i].token_index, r[i].layer, r[i].chosen[c]);
        }
        checked++;
    }
    assert_int_equal(checked, decode * (h.n_layers - 1));
    free(r);
}

static void prefetch_off_counts_no_predictions(void **state) {
    (void)state;
    st_model_opts o = {.expert_slots = 3, .no_prefetch = true};
    st_model *m = load(tiny, &o);
    int32_t ids[8];
    tu_ids(m, ids, 8, 0);
    free(tu_prefill_decode(m, ids, 8, 4));
    st_stream_stats ss;
    assert_int_equal(st_model_offload_stats(m, &ss), 0);
    assert_int_equal(ss.pf.predictions, 0);
    assert_int_equal(ss.pf.late, 0);
    assert_int_equal(ss.pf.needs, ss.pf.hits + ss.pf.misses);
    assert_true(ss.pf.misses > 0);
    st_model_free(m);
}

/* An EIO on layer 2's experts: a clear error naming the file and the expert, never logits. */
static void read_errors_name_the_file(void **state) {
    (void)state;
    st_model *m = load(tiny, NULL);
    st_config cfg;
    assert_int_equal(st_config_load(tiny, &cfg), 0);
    st_checkpoint *ck;
    assert_int_equal(st_checkpoint_open(tiny, &cfg, &ck), 0);
    char rules[4096] = "", name[128];
    int len = 0;
    for (int e = 0; e < m->layers[2].moe.n_experts; e++) {
        st_tensor_view v;
        snprintf(name, sizeof name, "layers.2.ffn.experts.%d.w2.weight", e);
        assert_int_equal(st_checkpoint_locate(ck, name, &v), 0);
        len += snprintf(rules + len, sizeof rules - (size_t)len, "%seio@%llu", len ? "," : "", (unsigned long long)v.file_offset);
    }
    st_checkpoint_close(ck);
    st_config_free(&cfg);
    st_model_free(m);
    setenv("STRATA_IO_FAULTS", rules, 1);
    st_model_opts o = {.expert_slots = 3};
    m = load(tiny, &o);
    unsetenv("STRATA_IO_FAULTS");
    st_seq *s;
    assert_int_equal(st_seq_new(m, &s), 0);
    int32_t ids[6];
    tu_ids(m, ids, 6, 0);
    float *lg = malloc((size_t)m->vocab * sizeof(float));
    int rc = st_seq_forward(s, ids, 6, lg, false);
    assert_true(rc < 0);
    const char *msg = st_last_error();
    if (!strstr(msg, "model.safetensors") || !strstr(msg, "layer 2") || !strstr(msg, "expert"))
        fail_msg("the error should name the file and the expert: %s", msg);
    free(lg);
    st_seq_free(s);
    st_model_free(m);
}

static void budget_too_small_is_refused(void **state) {
    (void)state;
    st_model_opts o = {.dram_budget = 4096};
    st_model *m = NULL;
    o.quiet = true;
    int rc = st_model_load(tiny, &o, &m);
    assert_int_equal(rc, ST_ERR_BUDGET);
    assert_null(m);
    assert_non_null(strstr(st_last_error(), "DRAM budget"));
    o = (st_model_opts){.expert_cache = 4096, .quiet = true};
    assert_int_equal(st_model_load(tiny, &o, &m), ST_ERR_BUDGET);
    assert_non_null(strstr(st_last_error(), "slot"));
    /* a budget that holds everything: no streaming at all */
    o = (st_model_opts){.dram_budget = 1ull << 40, .quiet = true};
    assert_int_equal(st_model_load(tiny, &o, &m), 0);
    st_stream_stats ss;
    assert_int_equal(st_model_offload_stats(m, &ss), ST_ERR_NOT_FOUND);
    st_model_free(m);
}

/* ---- the stream alone, on a file of known bytes ---------------------------------------- */

static uint8_t byte_at(uint64_t off) { return (uint8_t)(off * 31 + 7 + (off >> 9)); }

/* 2 layers x 3 experts x 2 pieces: close pieces (one span), far pieces (two
 * spans), and the last piece ending unaligned at the end of the file. */
static st_stream_piece file_pieces[2][3][2];
static const uint64_t FILE_BYTES = 3 * 65536 * 3 + 1000;

static int file_locate(void *ctx, int layer, int expert, st_stream_piece *p) {
    (void)ctx;
    p[0] = file_pieces[layer][expert][0];
    p[1] = file_pieces[layer][expert][1];
    return 0;
}

static void check_pieces(int layer, int expert, const void **pieces) {
    for (int i = 0; i < 2; i++) {
        const st_stream_piece *p = &file_pieces[layer][expert][i];
        const uint8_t *b = pieces[i];
        for (uint64_t k = 0; k < p->bytes; k++)
            if (b[k] != byte_at(p->offset + k)) fail_msg("layer %d expert %d piece %d byte %llu wrong", layer, expert, i, (unsigned long long)k);
    }
}

static void stream_serves_the_file_bytes(void **state) {
    (void)state;
    char path[300];
    snprintf(path, sizeof path, "%s/experts.bin", tmp);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (uint64_t i = 0; i < FILE_BYTES; i++) fputc(byte_at(i), f);
    fclose(f);
    for (int l = 0; l < 2; l++)
        for (int e = 0; e < 3; e++) {
            uint64_t base = (uint64_t)(l * 3 + e) * 32768 + 100;
            file_pieces[l][e][0] = (st_stream_piece){0, base + 1000, 5000};
            /* expert 1: its second piece far away (own span); others right behind the first */
            file_pieces[l][e][1] = (st_stream_piece){0, e == 1 ? 200000 + (uint64_t)l * 7000 + 13 : base + 6100, 777};
        }
    file_pieces[1][2][1] = (st_stream_piece){0, FILE_BYTES - 300, 300}; /* ends at the unaligned end of file */
    const char *paths[] = {path};
    st_stream_desc d = {.n_layers = 2, .n_experts = 3, .n_pieces = 2, .paths = paths, .n_files = 1, .locate = file_locate};
    st_stream_opts o = {.n_slots = 3};
    st_expert_stream *s;
    if (st_expert_stream_new(&d, &o, &s)) fail_msg("%s", st_last_error());
    st_stream_stats ss;
    st_expert_stream_get_stats(s, &ss);
    assert_int_equal(ss.n_slots, 3);
    assert_int_equal(ss.expert_bytes, 5777);

    /* certain experts, loaded ahead: all resident at need */
    st_expert_stream_step(s);
    int want0[] = {0, 2};
    assert_int_equal(st_expert_stream_request(s, 0, want0, 2), 0);
    /* until both reads are done: a busy shared disk can take seconds, more than the ~1 s of 5000 x 200 us polls */
    for (const double t_end = st_time_s() + 60; st_time_s() < t_end;) {
        assert_int_equal(st_expert_stream_pump(s), 0);
        st_expert_stream_get_stats(s, &ss);
        if (!ss.pf.in_flight && !ss.pf.queued) break;
        usleep(200);
    }
    assert_int_equal(ss.pf.in_flight + ss.pf.queued, 0);
    bool hit[3];
    assert_int_equal(st_expert_stream_begin(s, 0, want0, 2, hit), 0);
    assert_true(hit[0] && hit[1]);
    const void *pieces[ST_STREAM_MAX_PIECES];
    int e, seen = 0;
    while (st_expert_stream_next(s, &e, pieces) == 1) {
        check_pieces(0, e, pieces);
        seen |= 1 << e;
    }
    assert_int_equal(seen, 5);
    st_expert_stream_end(s);

    /* three experts through three slots: served in groups, every byte right */
    int want1[] = {0, 1, 2};
    assert_int_equal(st_expert_stream_begin(s, 1, want1, 3, hit), 0);
    assert_false(hit[0] || hit[1] || hit[2]);
    seen = 0;
    int r;
    while ((r = st_expert_stream_next(s, &e, pieces)) == 1) {
        check_pieces(1, e, pieces);
        seen |= 1 << e;
    }
    assert_int_equal(r, 0);
    assert_int_equal(seen, 7);
    st_expert_stream_end(s);
    st_expert_stream_get_stats(s, &ss);
    assert_int_equal(ss.pf.needs, 5);
    assert_in_range(ss.pf.hits, 2, 3); /* the third of layer 1 may arrive (read ahead) before its group opens */
    assert_int_equal(ss.pf.needs, ss.pf.hits + ss.pf.late + ss.pf.misses);
    assert_true(ss.budget_peak <= ss.cache_bytes + 4096);
    st_expert_stream_free(s);
}

/* The plan: pinned classes first, experts by use into what DRAM has left, exact cost arithmetic. */
static void plan_places_and_costs(void **state) {
    (void)state;
    double use[2 * 4] = {0.5, 0.25, 0.125, 0.125, 0.5, 0.25, 0.125, 0.125}; /* uses per token, 2 layers x 4 experts */
    st_plan_input in = {.class_bytes = {1000, 200, 50, 4000, 750, 0}, .class_read = {1000, 200, 50, 10, 750, 0},
                        .n_layers = 2, .n_experts = 4, .top_k = 1, .expert_bytes = 100, .expert_use = use,
                        .budget = {0, 6000 + 250, 0}, .bandwidth = {0, 1e4, 1e3}};
    st_plan p;
    assert_int_equal(st_plan_compute(&in, &p), 0);
    assert_int_equal(p.expert_cache_bytes, 250);
    assert_int_equal(p.experts[ST_TIER_DRAM], 2); /* the two 0.5-use experts */
    assert_int_equal(p.experts[ST_TIER_NVME], 6);
    assert_int_equal(p.bytes[ST_TIER_DRAM], 6000 + 200);
    assert_true(fabs(p.fast_share - 1.0 / 2.0) < 1e-12);
    /* DRAM: 2010 pinned + 100 from its experts + 100 of NVMe experts computed in slots; NVMe 100 */
    assert_true(fabs(p.read[ST_TIER_DRAM] - 2210) < 1e-9 && fabs(p.read[ST_TIER_NVME] - 100) < 1e-9);
    assert_true(fabs(p.seconds_overlap - 0.221) < 1e-12 && fabs(p.seconds_serial - 0.321) < 1e-12);
    assert_true(fabs(p.seconds_dependent - 0.221) < 1e-12); /* DRAM-bound: the head's read overlaps nothing anyway */
    in.bandwidth[ST_TIER_NVME] = 500; /* NVMe-bound: 0.2 s of reads after the head's 0.075 s, not beside them */
    assert_int_equal(st_plan_compute(&in, &p), 0);
    assert_true(fabs(p.seconds_overlap - 0.221) < 1e-12 && fabs(p.seconds_dependent - (0.075 + 0.2)) < 1e-12);
    assert_true(fabs(p.tok_s_dependent - 1 / 0.275) < 1e-9);
    in.bandwidth[ST_TIER_NVME] = 1e3;
    in.budget[ST_TIER_DRAM] = 5000; /* the pinned classes alone need 6000 */
    assert_int_equal(st_plan_compute(&in, &p), ST_ERR_BUDGET);
    assert_non_null(strstr(st_last_error(), "embeddings"));
}

/* Peak RSS (KiB) of `strata run` in a child. */
static long child_rss_kib(const char *args) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "exec %s run --model %s --ids 5,77,300,1024,9,4000,12,13,14,15,16,17,18,19,20,21 -n 8 "
             "--threads 2 --json %s > /dev/null", bin, mini, args);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int st;
    struct rusage ru;
    assert_int_equal(wait4(pid, &st, 0, &ru), pid);
    if (!WIFEXITED(st) || WEXITSTATUS(st)) fail_msg("%s: exit status %d", cmd, WEXITSTATUS(st));
    return ru.ru_maxrss;
}

static void streamed_run_peak_rss(void **state) {
    (void)state;
    if (asan) skip(); /* the sanitizer's shadow memory swamps the difference */
    make_mini();
    st_model *m = load(mini, NULL);
    uint64_t routed = st_model_routed_bytes(m);
    st_model_free(m);
    char args[128], a[32];
    snprintf(args, sizeof args, "--expert-cache %llu", (unsigned long long)(routed / 8));
    long resident = child_rss_kib(""), streamed = child_rss_kib(args);
    print_message("peak RSS: resident %ld KiB, expert cache %s: %ld KiB (routed experts %llu KiB)\n", resident,
                  st_fmt_size(routed / 8, a, sizeof a), streamed, (unsigned long long)(routed >> 10));
    /* the resident run maps (nearly) every expert it routes to; the streamed one holds an eighth of them */
    assert_true((uint64_t)(resident - streamed) * 1024 > routed / 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(stream_serves_the_file_bytes),
        cmocka_unit_test(tiny_bit_identical),
        cmocka_unit_test(small_io_pieces),
        cmocka_unit_test(tiny_pack_bit_identical),
        cmocka_unit_test(fused_layout_bit_identical),
        cmocka_unit_test(mini_quarter_budget_bit_identical),
        cmocka_unit_test(prefetch_statistics),
        cmocka_unit_test(refined_prediction_exact_without_attention),
        cmocka_unit_test(prefetch_off_counts_no_predictions),
        cmocka_unit_test(read_errors_name_the_file),
        cmocka_unit_test(budget_too_small_is_refused),
        cmocka_unit_test(plan_places_and_costs),
        cmocka_unit_test(streamed_run_peak_rss),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
