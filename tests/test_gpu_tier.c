/* The GPU tier at run time (offload/gpu_experts.c, offload/gpu_device*.c,
 * engine/moe.c, engine/model_gpu.c), tested through the emulated device
 * (STRATA_GPU=emulate: host memory, queued work deferred until the host waits):
 * logits bit-identical (memcmp) to the run without a GPU tier, official and
 * reference numerics, with every expert fitting on the device, with a few
 * slots (evictions every step), combined with DRAM streaming (3 slots), batched
 * decode and prefill of several sequences, 1-3 threads; the device bytes never
 * exceed --gpu-mem; a budget below one slot + buffers is refused naming
 * --gpu-mem and the least size; counters add up (hits + misses = the uses a
 * get-counting source sees without the tier; every use of a repeated prompt
 * hits); a perturbed device FFN changes the logits (the device path is used);
 * `strata run --gpu-mem` prints the GPU tier and the same ids (and --json its
 * object); experts larger than a launch run in pieces; the emulated device
 * defers its work and keeps order; the tier's rules (one open layer, only
 * placed experts run, a miss refused when every slot is pinned). Misses with
 * many rows computed on the device (copied in first): thresholds 1 / 2 / never
 * (st_model_opts.gpu_min_rows, STRATA_GPU_MIN_ROWS) in every configuration above,
 * same logits; the counters say they happened when expected (prefill with 2:
 * some, decode with 2: none, 1: every miss that got a slot, never: none), a
 * perturbed device FFN changes a fresh tier's first chunk only when its misses
 * run there, the cost model's numbers. With every expert resident in DRAM the
 * next layer's predicted experts are prefetched to the device (decode of the wide
 * model: 32 hits become 75, same logits; none with --prefetch off or streaming).
 * On a machine
 * with a CUDA device the logits test runs on it too (skip elsewhere). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "engine/model.h"
#include "engine/model_gpu.h"
#include "engine/model_stream.h"
#include "engine/moe.h"
#include "engine/synth.h"
#include "offload/gpu_device.h"
#include "util.h"

static char tmp[128], tiny[200], wide[200];
static const char *bin;

static int setup(void **state) {
    (void)state;
    bin = tu_strata_bin();
    setenv("STRATA_GPU", "emulate", 1);
    if (tu_tmpdir(tmp, sizeof tmp, "/var/tmp/strata-gputier-XXXXXX")) return -1;
    snprintf(tiny, sizeof tiny, "%s/tiny", tmp);
    snprintf(wide, sizeof wide, "%s/wide", tmp);
    /* tiny with more, larger experts and more of them per token */
    st_synth_preset p = *st_synth_find("tiny");
    p.name = "tiny-wide";
    p.n_experts = 16;
    p.top_k = 3;
    p.moe_inter = 96;
    return tu_synth(st_synth_find("tiny"), tiny, 21, NULL) || tu_synth(&p, wide, 22, NULL) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    return tu_rmtree(tmp);
}

enum { N_PROMPT = 20, N_DECODE = 6 };

static bool same(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

static void gpu_stats(const st_model *m, st_gpu_tier_stats *gs) {
    if (st_model_gpu_stats(m, gs)) fail_msg("no GPU tier attached");
}

static void emu_stats(const st_model *m, st_gpu_emu_stats *es) {
    assert_int_equal(st_gpu_emu_get_stats(st_gpu_experts_device(m->experts.gpu), es), 0);
}

/* The device bytes of one slot and of the buffers, from a tier with room for everything. */
static void tier_sizes(const char *path, uint64_t *slot, uint64_t *buffers) {
    st_model *m = tu_load(path, &(st_model_opts){.gpu_mem = 256 << 20}, 1);
    st_gpu_tier_stats gs;
    gpu_stats(m, &gs);
    *slot = gs.slot_bytes;
    *buffers = gs.buffer_bytes;
    st_model_free(m);
}

/* Every GPU configuration against the model without a GPU tier, bit for bit. */
static void identical(const char *path, st_numerics num, int threads) {
    uint64_t slot, buffers;
    tier_sizes(path, &slot, &buffers);
    st_model *m = tu_load(path, &(st_model_opts){.numerics = num}, threads);
    assert_null(m->experts.gpu);
    int32_t ids[N_PROMPT];
    tu_ids(m, ids, N_PROMPT, 0);
    float *want = tu_prefill_decode(m, ids, N_PROMPT, N_DECODE);
    const size_t count = (size_t)(N_PROMPT + N_DECODE) * (size_t)m->vocab;
    const int keys = m->n_layers * m->layers[0].moe.n_experts, part = keys * 3 / 10, fifth = keys / 5;
    st_model_free(m);
    const struct {
        const char *name;
        st_model_opts o;
    } v[] = {
        {"every expert fits", {.gpu_mem = 256 << 20}},
        {"30% of the experts (exact budget)", {.gpu_mem = buffers + (uint64_t)part * slot}},
        {"2 slots: a miss evicts every time", {.gpu_mem = buffers + 2 * slot}},
        {"20% of the experts, LFU", {.gpu_mem = 64 << 20, .gpu_slots = fifth, .cache_policy = 1}},
        {"streaming from NVMe, 3 DRAM slots, 30% on the GPU", {.gpu_mem = buffers + (uint64_t)part * slot, .expert_slots = 3}},
        {"streaming, 2 DRAM slots, every expert on the GPU", {.gpu_mem = 256 << 20, .expert_slots = 2, .no_prefetch = true}},
        {"prefill chunks of 10, 2 rows per device FFN launch (experts in pieces)", {.gpu_mem = 256 << 20, .chunk = 10, .gpu_rows = 2}},
        {"two NUMA nodes, 3 DRAM slots each, 30% on the GPU", {.gpu_mem = buffers + (uint64_t)part * slot, .expert_slots = 3}},
        {"two NUMA nodes, every expert in DRAM on its node, 30% on the GPU", {.gpu_mem = buffers + (uint64_t)part * slot}},
        /* where a miss runs: from 1 row (every miss on the device), 2, never */
        {"misses of >= 1 row on the device, 30% on the GPU", {.gpu_mem = buffers + (uint64_t)part * slot, .gpu_min_rows = 1}},
        {"misses of >= 2 rows on the device, 3 slots", {.gpu_mem = buffers + 3 * slot, .gpu_min_rows = 2}},
        {"misses never on the device, every expert fits", {.gpu_mem = 256 << 20, .gpu_min_rows = INT64_MAX}},
        {"misses of >= 1 row on the device, streaming, 2 DRAM slots, 3 GPU slots",
         {.gpu_mem = buffers + 3 * slot, .expert_slots = 2, .gpu_min_rows = 1}},
        {"misses of >= 2 rows on the device, prefill chunks of 10, 3 rows per launch, streaming, 3 DRAM slots",
         {.gpu_mem = 256 << 20, .chunk = 10, .gpu_rows = 3, .expert_slots = 3, .gpu_min_rows = 2}},
        {"two NUMA nodes, misses of >= 1 row on the device, 3 DRAM slots each, 30% on the GPU",
         {.gpu_mem = buffers + (uint64_t)part * slot, .expert_slots = 3, .gpu_min_rows = 1}},
        {"two NUMA nodes, misses of >= 2 rows on the device, every expert in DRAM on its node",
         {.gpu_mem = buffers + (uint64_t)part * slot, .gpu_min_rows = 2}},
    };
    for (size_t i = 0; i < ST_ARRAY_LEN(v); i++) {
        st_model_opts o = v[i].o;
        o.numerics = num;
        const bool numa = strstr(v[i].name, "NUMA") != NULL;
        if (numa && threads < 2) continue; /* a team per node */
        if (numa) setenv("STRATA_TOPOLOGY", "pack:2 [numa(memory=8GB)] core:1 pu:1", 1);
        m = tu_load(path, &o, threads);
        unsetenv("STRATA_TOPOLOGY");
        if (numa) assert_int_equal(m->experts.n_nodes, 2);
        float *got = tu_prefill_decode(m, ids, N_PROMPT, N_DECODE);
        char what[300];
        snprintf(what, sizeof what, "%s, %s numerics, %d threads, %s", path, num ? "reference" : "official", threads, v[i].name);
        tu_assert_same_bits(want, got, count, what);
        st_gpu_tier_stats gs;
        st_gpu_emu_stats es;
        gpu_stats(m, &gs);
        emu_stats(m, &es);
        if (gs.n_slots > 3) assert_true(gs.hits > 0); /* 2-3 slots of 5 layers: the next use of a key comes too late */
        assert_int_equal(gs.hits + gs.misses, gs.uses);
        assert_true(gs.admitted > 0);
        assert_true(gs.admitted + gs.refused <= gs.misses);
        assert_true(gs.peak <= o.gpu_mem);
        assert_true(es.peak <= o.gpu_mem);                 /* what the device itself saw allocated */
        assert_int_equal(es.peak, gs.peak);
        assert_int_equal(es.ffn_host + es.ffn_kernel, gs.ffn_launches);
        if (o.gpu_rows) assert_true(gs.ffn_launches > gs.hits); /* some expert had more rows than a launch */
        assert_true(es.deferred_runs > 0);                  /* work waited for, not run at enqueue */
        if (o.gpu_slots) assert_int_equal(gs.n_slots, o.gpu_slots);
        if (gs.n_slots < keys) assert_true(gs.evictions > 0);
        /* the rule: with 1, a miss runs on the CPU only when no slot could be had; never: none;
         * 2: the prefill (20 tokens, several rows per expert) sends some, not every one */
        assert_true(gs.device_misses <= gs.admitted);
        if (o.gpu_min_rows == 1) {
            assert_int_equal(gs.min_rows, 1);
            assert_int_equal(gs.device_misses + gs.refused, gs.misses);
            assert_int_equal(gs.device_misses, gs.admitted);
        } else if (o.gpu_min_rows == INT64_MAX) {
            assert_int_equal(gs.device_misses, 0);
        } else if (o.gpu_min_rows == 2) {
            assert_true(gs.device_misses > 0);
            assert_true(gs.device_misses < gs.misses);
        }
        st_stream_stats ss;
        if (o.expert_slots) { /* the DRAM tier is asked only for what the device does not compute */
            assert_int_equal(st_model_offload_stats(m, &ss), 0);
            assert_int_equal(ss.pf.needs, gs.misses);
        }
        print_message("%s: %d slots, %llu uses, %llu hits, %llu admitted, %llu misses computed there (from %lld rows), "
                      "%llu evictions, %llu B copied, peak %llu of %llu B; "
                      "FFN by kernel emulation %llu, by the CPU %llu\n", what, gs.n_slots, (unsigned long long)gs.uses,
                      (unsigned long long)gs.hits, (unsigned long long)gs.admitted, (unsigned long long)gs.device_misses,
                      (long long)gs.min_rows, (unsigned long long)gs.evictions,
                      (unsigned long long)gs.bytes_copied, (unsigned long long)gs.peak, (unsigned long long)o.gpu_mem,
                      (unsigned long long)es.ffn_kernel, (unsigned long long)es.ffn_host);
        free(got);
        st_model_free(m);
    }
    free(want);
}

static void tiny_official(void **state) {
    (void)state;
    identical(tiny, ST_NUMERICS_OFFICIAL, 2);
}

static void tiny_reference(void **state) {
    (void)state;
    identical(tiny, ST_NUMERICS_REFERENCE, 2);
}

static void wide_both_numerics(void **state) {
    (void)state;
    identical(wide, ST_NUMERICS_OFFICIAL, 2);
    identical(wide, ST_NUMERICS_REFERENCE, 2);
}

static void tiny_threads(void **state) {
    (void)state;
    identical(tiny, ST_NUMERICS_OFFICIAL, 1);
    identical(tiny, ST_NUMERICS_OFFICIAL, 3);
}

/* Batched decode and prefill of several sequences (several tokens per expert). */
static void batches(void **state) {
    (void)state;
    enum { B = 4, LEN = 7, STEPS = 4 };
    uint64_t slot, buffers;
    tier_sizes(tiny, &slot, &buffers);
    const st_model_opts variants[] = {{0}, {.gpu_mem = 256 << 20}, {.gpu_mem = buffers + 28 * slot},
                                      {.gpu_mem = buffers + 28 * slot, .expert_slots = 3},
                                      {.gpu_mem = buffers + 28 * slot, .gpu_min_rows = 1},
                                      {.gpu_mem = buffers + 20 * slot, .expert_slots = 3, .gpu_min_rows = 2},
                                      {.gpu_mem = buffers + 28 * slot, .gpu_min_rows = INT64_MAX}};
    float *want = NULL;
    for (size_t v = 0; v < ST_ARRAY_LEN(variants); v++) {
        st_model *m = tu_load(tiny, &variants[v], 2);
        st_seq *seqs[B];
        int32_t toks[B * LEN];
        int64_t lens[B];
        for (int b = 0; b < B; b++) {
            assert_int_equal(st_seq_new(m, &seqs[b]), 0);
            lens[b] = LEN - b;
        }
        tu_ids(m, toks, B * LEN, 3);
        const size_t V = (size_t)m->vocab, count = (size_t)(STEPS + 1) * B * V;
        float *got = malloc(count * sizeof(float));
        if (st_seq_prefill_batch(seqs, toks, lens, B, got)) fail_msg("prefill batch: %s", st_last_error());
        for (int s = 0; s < STEPS; s++) {
            int32_t t[B];
            for (int b = 0; b < B; b++) t[b] = toks[(s * 5 + b * 3) % (B * LEN)];
            if (st_seq_forward_batch(seqs, t, B, got + (size_t)(s + 1) * B * V)) fail_msg("batch: %s", st_last_error());
        }
        if (!want) want = got;
        else {
            char what[100];
            snprintf(what, sizeof what, "batch of %d, variant %zu", B, v);
            tu_assert_same_bits(want, got, count, what);
            st_gpu_tier_stats gs;
            gpu_stats(m, &gs);
            /* fewer slots than keys: a step of 4 sequences uses most of the 40 keys, LRU may keep none */
            if (gs.n_slots >= 28) assert_true(gs.hits > 0); /* 20 slots: the LRU cycle of a step keeps none */
            assert_true(gs.admitted > 0);
            assert_int_equal(gs.hits + gs.misses, gs.uses);
            assert_true(gs.peak <= variants[v].gpu_mem);
            /* prefill of up to 7 tokens of 4 sequences and decode of 4: several rows per expert */
            if (variants[v].gpu_min_rows == INT64_MAX) assert_int_equal(gs.device_misses, 0);
            else if (variants[v].gpu_min_rows) assert_true(gs.device_misses > 0); /* 0: the cost model's figure */
            if (variants[v].gpu_min_rows == 1) assert_int_equal(gs.device_misses + gs.refused, gs.misses);
            print_message("%s: %d slots, %llu uses, %llu hits, %llu misses computed there, %llu evictions\n", what,
                          gs.n_slots, (unsigned long long)gs.uses, (unsigned long long)gs.hits,
                          (unsigned long long)gs.device_misses, (unsigned long long)gs.evictions);
            free(got);
        }
        for (int b = 0; b < B; b++) st_seq_free(seqs[b]);
        st_model_free(m);
    }
    free(want);
}

/* Counts the uses a get-only source sees (one get per expert with rows, per layer call). */
typedef struct counting { st_model *m; uint64_t gets; } counting;
static int count_get(void *ctx, int layer, int expert, const st_expert_w **out) {
    counting *c = ctx;
    c->gets++;
    *out = &c->m->layers[layer].moe.experts[expert];
    return 0;
}
static void count_put(void *ctx, int layer, int expert) { (void)ctx, (void)layer, (void)expert; }

/* hits + misses = the uses without the tier; the CPU computes exactly the misses; a repeated
 * prompt with room for every expert hits every time. */
static void counters(void **state) {
    (void)state;
    st_model *m = tu_load(tiny, NULL, 2);
    counting plain = {.m = m};
    m->experts = (st_expert_source){.get = count_get, .put = count_put, .ctx = &plain};
    int32_t ids[N_PROMPT];
    tu_ids(m, ids, N_PROMPT, 1);
    free(tu_prefill_decode(m, ids, N_PROMPT, N_DECODE));
    m->experts = (st_expert_source){0};
    st_model_free(m);

    m = tu_load(tiny, &(st_model_opts){.gpu_mem = 256 << 20}, 2);
    counting cpu = {.m = m};
    st_gpu_experts *g = m->experts.gpu;
    m->experts = (st_expert_source){.get = count_get, .put = count_put, .ctx = &cpu, .gpu = g};
    free(tu_prefill_decode(m, ids, N_PROMPT, N_DECODE));
    st_gpu_tier_stats a, b;
    gpu_stats(m, &a);
    assert_int_equal(a.uses, plain.gets);
    assert_int_equal(a.hits + a.misses, a.uses);
    assert_int_equal(cpu.gets, a.misses);
    assert_int_equal(a.admitted, a.misses); /* room for all: every miss is copied in */
    assert_int_equal(a.refused, 0);
    free(tu_prefill_decode(m, ids, N_PROMPT, N_DECODE)); /* the same prompt again: everything is on the device */
    gpu_stats(m, &b);
    assert_int_equal(b.uses - a.uses, plain.gets);
    assert_int_equal(b.hits - a.hits, plain.gets);
    assert_int_equal(cpu.gets, a.misses);
    print_message("%llu uses, first run %llu hits, repeated %llu of %llu\n", (unsigned long long)a.uses,
                  (unsigned long long)a.hits, (unsigned long long)(b.hits - a.hits), (unsigned long long)(b.uses - a.uses));
    m->experts = (st_expert_source){.get = NULL, .gpu = g}; /* st_model_free detaches the tier */
    st_model_free(m);
}

/* The device's FFN output, perturbed by one bit, must show in the logits: proof that the
 * compared runs computed experts on the device. */
static void perturbed_device_changes_logits(void **state) {
    (void)state;
    st_model *m = tu_load(tiny, NULL, 2);
    int32_t ids[N_PROMPT];
    tu_ids(m, ids, N_PROMPT, 0);
    float *want = tu_prefill_decode(m, ids, N_PROMPT, N_DECODE);
    const size_t count = (size_t)(N_PROMPT + N_DECODE) * (size_t)m->vocab;
    st_model_free(m);
    for (int host_only = 0; host_only < 2; host_only++) {
        st_gpu_emu_host_only = host_only;
        m = tu_load(tiny, &(st_model_opts){.gpu_mem = 256 << 20}, 2);
        float *ok = tu_prefill_decode(m, ids, N_PROMPT, N_DECODE);
        assert_true(same(want, ok, count));
        st_model_free(m);
        st_gpu_emu_perturb = true;
        m = tu_load(tiny, &(st_model_opts){.gpu_mem = 256 << 20}, 2);
        float *bad = tu_prefill_decode(m, ids, N_PROMPT, N_DECODE);
        st_gpu_emu_perturb = false;
        st_gpu_tier_stats gs;
        gpu_stats(m, &gs);
        assert_true(gs.hits > 0);
        assert_false(same(want, bad, count));
        free(ok);
        free(bad);
        st_model_free(m);
    }
    st_gpu_emu_host_only = false;
    free(want);
}

/* Where a miss runs: a prefill of 16 tokens with threshold 2 sends misses to the device, the
 * decode after it (one row per expert) none; with threshold 1 the decode's misses go too; the
 * logits are the same each time. The emulated FFN perturbed changes the first chunk's logits
 * when its misses run on the device (a fresh tier has no hits in it), and not when they never do. */
static void misses_on_the_device(void **state) {
    (void)state;
    enum { P = 16, D = 6 };
    st_model *m = tu_load(tiny, NULL, 2);
    int32_t ids[P];
    tu_ids(m, ids, P, 4);
    float *want = tu_prefill_decode(m, ids, P, D);
    const size_t V = (size_t)m->vocab, count = (size_t)(P + D) * V;
    st_model_free(m);
    const int64_t thresholds[] = {2, 1};
    for (int i = 0; i < 2; i++) {
        m = tu_load(tiny, &(st_model_opts){.gpu_mem = 256 << 20, .gpu_slots = 12, .gpu_min_rows = thresholds[i]}, 2);
        float *got = tu_prefill_decode(m, ids, P, 0);
        st_gpu_tier_stats pre, all;
        gpu_stats(m, &pre);
        free(got);
        st_model_free(m);
        m = tu_load(tiny, &(st_model_opts){.gpu_mem = 256 << 20, .gpu_slots = 12, .gpu_min_rows = thresholds[i]}, 2);
        got = tu_prefill_decode(m, ids, P, D);
        gpu_stats(m, &all);
        tu_assert_same_bits(want, got, count, thresholds[i] == 2 ? "threshold 2" : "threshold 1");
        assert_true(pre.device_misses > 0);
        assert_true(pre.device_misses <= pre.misses);
        if (thresholds[i] == 2) {
            assert_true(pre.device_misses < pre.misses);          /* some experts got a single row */
            assert_int_equal(all.device_misses, pre.device_misses); /* decode: one row each */
            assert_true(all.misses > pre.misses);                   /* ... and its misses ran on the CPU */
        } else {
            assert_int_equal(pre.device_misses, pre.misses);
            assert_int_equal(all.device_misses, all.misses);        /* 12 slots, 8 experts a layer: none refused */
        }
        print_message("threshold %lld: prefill %llu misses, %llu on the device; with decode %llu, %llu\n",
                      (long long)thresholds[i], (unsigned long long)pre.misses, (unsigned long long)pre.device_misses,
                      (unsigned long long)all.misses, (unsigned long long)all.device_misses);
        free(got);
        st_model_free(m);
    }
    /* the first chunk only: every use is a miss of a fresh tier */
    st_gpu_emu_perturb = true;
    m = tu_load(tiny, &(st_model_opts){.gpu_mem = 256 << 20, .gpu_min_rows = 1, .no_prefetch = true}, 2);
    float *bad = tu_prefill_decode(m, ids, P, 0);
    st_gpu_tier_stats gs;
    gpu_stats(m, &gs);
    assert_int_equal(gs.hits, 0);
    assert_int_equal(gs.device_misses, gs.misses);
    st_model_free(m);
    m = tu_load(tiny, &(st_model_opts){.gpu_mem = 256 << 20, .gpu_min_rows = INT64_MAX, .no_prefetch = true}, 2);
    float *cpu = tu_prefill_decode(m, ids, P, 0);
    gpu_stats(m, &gs);
    st_gpu_emu_perturb = false;
    assert_int_equal(gs.hits, 0);
    assert_int_equal(gs.device_misses, 0);
    st_model_free(m);
    assert_false(same(want, bad, (size_t)P * V));
    tu_assert_same_bits(want, cpu, (size_t)P * V, "perturbed device, misses never there");
    free(bad);
    free(cpu);
    free(want);
}

/* Every expert resident in DRAM: the next layer's predicted experts are copied to the device
 * ahead of their use; decode with 12 slots gets hits from them, the same logits, and the same
 * with --prefetch off (none prefetched); a streaming source is never prefetched from. */
static void prefetch_next_layer(void **state) {
    (void)state;
    enum { P = 6, D = 10 };
    st_model *m = tu_load(wide, NULL, 2);
    int32_t ids[P];
    tu_ids(m, ids, P, 5);
    float *want = tu_prefill_decode(m, ids, P, D);
    const size_t count = (size_t)(P + D) * (size_t)m->vocab;
    st_model_free(m);
    const st_model_opts v[] = {{.gpu_mem = 256 << 20, .gpu_slots = 24, .gpu_min_rows = INT64_MAX},
                               {.gpu_mem = 256 << 20, .gpu_slots = 24, .gpu_min_rows = INT64_MAX, .no_prefetch = true},
                               {.gpu_mem = 256 << 20, .gpu_slots = 24, .gpu_min_rows = 2},
                               {.gpu_mem = 256 << 20, .gpu_slots = 24, .expert_slots = 3}};
    uint64_t hits[4];
    for (int i = 0; i < 4; i++) {
        m = tu_load(wide, &v[i], 2);
        float *got = tu_prefill_decode(m, ids, P, D);
        char what[64];
        snprintf(what, sizeof what, "prefetch variant %d", i);
        tu_assert_same_bits(want, got, count, what);
        st_gpu_tier_stats gs;
        gpu_stats(m, &gs);
        hits[i] = gs.hits;
        assert_int_equal(gs.hits + gs.misses, gs.uses);
        assert_true(gs.prefetch_hits <= gs.prefetched);
        assert_true(gs.prefetch_hits <= gs.hits);
        assert_true(gs.peak <= v[i].gpu_mem);
        if (v[i].no_prefetch || v[i].expert_slots) assert_int_equal(gs.prefetched, 0);
        else {
            assert_true(gs.prefetched > 0);
            assert_true(gs.prefetch_hits > 0);
        }
        print_message("%s: %llu uses, %llu hits, %llu prefetched, %llu of them used, %llu misses computed there\n", what,
                      (unsigned long long)gs.uses, (unsigned long long)gs.hits, (unsigned long long)gs.prefetched,
                      (unsigned long long)gs.prefetch_hits, (unsigned long long)gs.device_misses);
        free(got);
        st_model_free(m);
    }
    assert_true(hits[0] > hits[1]); /* the prefetched experts' hits are more than they displace */
    free(want);
}

/* A budget below one slot + the buffers of a one-row launch is refused, naming --gpu-mem and
 * that least size; the least size itself works (one slot, one row per launch, same logits); a
 * budget between gets fewer rows per launch than 256. */
static void budget_too_small(void **state) {
    (void)state;
    uint64_t slot, buffers;
    tier_sizes(tiny, &slot, &buffers);
    st_model *m = tu_load(tiny, &(st_model_opts){.gpu_mem = 256 << 20}, 1);
    const st_gpu_experts_opts one_row = {.dim = m->dim, .inter = m->layers[0].moe.experts[0].w1.rows, .rows = 1};
    const uint64_t least = slot + st_gpu_experts_buffer_bytes(st_gpu_experts_device(m->experts.gpu), &one_row);
    st_model_free(m);
    m = tu_load(tiny, NULL, 1);
    int32_t ids[12];
    tu_ids(m, ids, 12, 2);
    float *want = tu_prefill_decode(m, ids, 12, 3);
    const size_t count = (size_t)15 * (size_t)m->vocab;
    st_model_free(m);
    st_model_opts o = {.gpu_mem = least - 1, .threads = 1, .quiet = true};
    m = NULL;
    assert_int_equal(st_model_load(tiny, &o, &m), ST_ERR_BUDGET);
    assert_null(m);
    char fmt[32];
    st_fmt_size(least, fmt, sizeof fmt);
    const char *msg = st_last_error();
    if (!strstr(msg, "--gpu-mem") || !strstr(msg, fmt)) fail_msg("message without --gpu-mem or %s: %s", fmt, msg);
    o.gpu_mem = least;
    m = tu_load(tiny, &o, 1);
    st_gpu_tier_stats gs;
    gpu_stats(m, &gs);
    assert_int_equal(gs.n_slots, 1);
    assert_int_equal(gs.rows, 1);
    assert_true(gs.peak <= o.gpu_mem);
    float *got = tu_prefill_decode(m, ids, 12, 3);
    tu_assert_same_bits(want, got, count, "least --gpu-mem: 1 slot, 1 row per launch");
    free(got);
    st_model_free(m);
    o.gpu_mem = slot + buffers / 3; /* room for fewer rows than 256 */
    m = tu_load(tiny, &o, 1);
    gpu_stats(m, &gs);
    assert_true(gs.rows > 1 && gs.rows < 256);
    assert_true(gs.peak <= o.gpu_mem);
    st_model_free(m);
    o.gpu_slots = 3; /* more slots than the budget holds */
    o.gpu_mem = least + slot;
    assert_int_equal(st_model_load(tiny, &o, &m), ST_ERR_BUDGET);
    free(want);
}

static char *run_cli(const char *env, const char *extra) {
    char cmd[1024], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s %s run --model %s --ids 5,9,14,200,7,3,88,41 -n 8 --threads 2 %s 2>&1", env, bin,
             tiny, extra);
    int rc = tu_run(cmd, &out);
    if (rc) fail_msg("%s: exit %d: %s", cmd, rc, out);
    return out;
}

/* `strata run --gpu-mem` under STRATA_GPU=emulate: the tiers part names the GPU tier, the
 * generated ids are the same as without it; a budget too small is a clear error. */
static void cli_run(void **state) {
    (void)state;
    char *plain = run_cli("STRATA_GPU=off", ""), *gpu = run_cli("STRATA_GPU=emulate", "--gpu-mem 1M");
    if (!strstr(gpu, "GPU (emulated)")) fail_msg("no GPU tier in: %s", gpu);
    char *a = strchr(plain, '\n'), *b = strstr(gpu, "\n[prefill");
    assert_non_null(a);
    assert_non_null(b);
    /* the ids line is the line before the summary */
    char *ids_plain = plain, *ids_gpu = b;
    while (ids_gpu > gpu && ids_gpu[-1] != '\n') ids_gpu--;
    if (ids_gpu > gpu) { /* b points at "\n[prefill": step back over the ids line */
        ids_gpu--;
        while (ids_gpu > gpu && ids_gpu[-1] != '\n') ids_gpu--;
    }
    size_t n = strcspn(ids_plain, "\n");
    if (strncmp(ids_plain, ids_gpu, n)) fail_msg("ids differ:\n%s\n---\n%s", plain, gpu);
    char *js = run_cli("STRATA_GPU=emulate", "--gpu-mem 1M --json");
    if (!strstr(js, "\"gpu\":{\"device\":\"emulated\"") || !strstr(js, "\"hits\":")) fail_msg("no gpu object in: %s", js);
    free(js);
    /* STRATA_GPU_MIN_ROWS: 1 sends every miss to the device, a huge one none; a bad value is an error */
    char *every = run_cli("STRATA_GPU=emulate STRATA_GPU_MIN_ROWS=1", "--gpu-mem 1M --json");
    char *never = run_cli("STRATA_GPU=emulate STRATA_GPU_MIN_ROWS=1000000000", "--gpu-mem 1M --json");
    if (!strstr(every, "\"device_misses\":") || strstr(every, "\"device_misses\":0,") || !strstr(every, "\"min_rows\":1,"))
        fail_msg("STRATA_GPU_MIN_ROWS=1: no misses on the device in: %s", every);
    if (!strstr(never, "\"device_misses\":0,")) fail_msg("STRATA_GPU_MIN_ROWS=1000000000: misses on the device in: %s", never);
    char *text = run_cli("STRATA_GPU=emulate STRATA_GPU_MIN_ROWS=1", "--gpu-mem 1M");
    if (!strstr(text, "misses computed there")) fail_msg("no device misses in the summary: %s", text);
    free(every);
    free(never);
    free(text);
    char *off = run_cli("STRATA_GPU=off", "--gpu-mem 1M");
    if (strstr(off, "GPU (emulated)") || strstr(off, "GPU (cuda)")) fail_msg("STRATA_GPU=off still has a GPU tier: %s", off);
    if (!strstr(off, "warning: --gpu-mem 1.00 MiB: no GPU (STRATA_GPU=off)")) fail_msg("no warning that --gpu-mem is unused: %s", off);
    char cmd[1024], *out = NULL;
    snprintf(cmd, sizeof cmd, "STRATA_GPU=emulate %s run --model %s --ids 5,9 -n 2 --gpu-mem 4K 2>&1", bin, tiny);
    assert_int_not_equal(tu_run(cmd, &out), 0);
    if (!strstr(out, "--gpu-mem") || !strstr(out, "at least")) fail_msg("unclear refusal: %s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "STRATA_GPU=emulate STRATA_GPU_MIN_ROWS=lots %s run --model %s --ids 5,9 -n 2 --gpu-mem 1M 2>&1", bin, tiny);
    assert_int_not_equal(tu_run(cmd, &out), 0);
    if (!strstr(out, "STRATA_GPU_MIN_ROWS") || !strstr(out, "'lots'")) fail_msg("unclear refusal: %s", out);
    free(out);
    free(plain);
    free(gpu);
    free(off);
}

/* The emulated device runs nothing at enqueue: copies land at the wait (event_done says "not
 * yet" first), in order, through a queue that grows; device memory starts as 0xff; an FFN
 * with no way to run fails at the wait; every byte is returned. */
static void emulated_device_defers(void **state) {
    (void)state;
    st_gpu_dev *dev;
    assert_int_equal(st_gpu_dev_emulated_new(NULL, &dev), 0);
    const st_gpu_dev_ops *ops = dev->ops;
    void *ctx = dev->ctx, *s, *ev;
    uint32_t *d;
    assert_int_equal(ops->alloc(ctx, 64, (void **)&d), 0);
    assert_int_equal(d[0], 0xffffffffu);
    assert_int_equal(ops->stream_new(ctx, &s), 0);
    assert_int_equal(ops->event_new(ctx, &ev), 0);
    uint32_t vals[100], back = 7;
    for (uint32_t i = 0; i < 100; i++) { /* 100 copies to one place: more than the first ring holds */
        vals[i] = i;
        assert_int_equal(ops->copy_to_device(ctx, d, &vals[i], 4, s), 0);
    }
    assert_int_equal(ops->copy_to_host(ctx, &back, d, 4, s), 0);
    assert_int_equal(ops->event_record(ctx, ev, s), 0);
    assert_int_equal(d[0], 0xffffffffu); /* nothing ran yet */
    assert_int_equal(back, 7);
    assert_int_equal(ops->event_done(ctx, ev), 0);
    assert_int_equal(ops->event_done(ctx, ev), 1);
    assert_int_equal(d[0], 99); /* in order */
    assert_int_equal(back, 99);
    st_gpu_emu_stats es;
    assert_int_equal(st_gpu_emu_get_stats(dev, &es), 0);
    assert_int_equal(es.ops_queued, 101);
    assert_int_equal(es.ops_run, 101);
    assert_int_equal(es.peak, 64);
    st_gpu_emu_host_only = true; /* and no host FFN: the FFN cannot run */
    st_gpu_ffn f = {.x = (float *)d, .o = (float *)d, .n = 1};
    assert_int_equal(ops->expert_ffn(ctx, &f, s), 0);
    assert_int_equal(ops->stream_sync(ctx, s), ST_ERR_UNSUPPORTED);
    st_gpu_emu_host_only = false;
    assert_int_equal(ops->stream_sync(ctx, s), 0); /* reported once */
    ops->event_free(ctx, ev);
    ops->stream_free(ctx, s);
    ops->free(ctx, d);
    assert_int_equal(st_gpu_emu_get_stats(dev, &es), 0);
    assert_int_equal(es.allocated, 0);
    st_gpu_dev_free(dev);
}

/* The tier's rules without a model: a layer opens once, only placed experts run on the
 * device, a miss is refused when every slot is pinned by the layer's hits, and a budget
 * below one slot + buffers is refused. */
static void tier_rules(void **state) {
    (void)state;
    st_gpu_dev *dev;
    assert_int_equal(st_gpu_dev_emulated_new(st_moe_expert_host, &dev), 0);
    const int64_t dim = 64, inter = 64;
    st_expert_w e = {.w1 = {.fmt = ST_WF_FP4, .rows = inter, .cols = dim}, .w3 = {.fmt = ST_WF_FP4, .rows = inter, .cols = dim},
                     .w2 = {.fmt = ST_WF_FP4, .rows = dim, .cols = inter}};
    uint64_t off[6], bytes = st_gpu_expert_layout(&e, off);
    uint8_t *host = calloc(1, bytes); /* zero weights: e2m1 0, scales 2^-127 */
    st_weight *ws[3] = {&e.w1, &e.w3, &e.w2};
    for (int i = 0; i < 3; i++) {
        ws[i]->data = host + off[2 * i];
        ws[i]->scale = host + off[2 * i + 1];
    }
    st_gpu_experts_opts o = {.budget = 1 << 20, .n_slots = 1, .n_layers = 2, .n_experts = 4, .slot_bytes = bytes,
                             .dim = dim, .inter = inter, .rows = 4};
    st_gpu_experts *g;
    assert_int_equal(st_gpu_experts_new(dev, &o, &g), 0);
    int one = 0, two[2] = {0, 1};
    bool on[2];
    assert_int_equal(st_gpu_experts_begin(g, 0, &one, 1, on), 0);
    assert_false(on[0]);
    assert_int_equal(st_gpu_experts_begin(g, 1, &one, 1, on), ST_ERR_INVALID); /* layer 0 is open */
    float x[4 * 64] = {0}, c[4] = {1, 1, 1, 1}, y[4 * 64];
    assert_int_equal(st_gpu_experts_run(g, 0, &e, x, 4, c, 0, true, y), ST_ERR_INVALID); /* not placed */
    assert_int_equal(st_gpu_experts_admit(g, 0, 0, &e), 1);
    assert_false(st_gpu_experts_holds(g, 0, 0)); /* not before its copy has landed */
    assert_int_equal(st_gpu_experts_admit_done(g), 0);
    assert_true(st_gpu_experts_holds(g, 0, 0));
    assert_int_equal(st_gpu_experts_end(g), 0);
    assert_int_equal(st_gpu_experts_begin(g, 0, two, 2, on), 0);
    assert_true(on[0]);
    assert_false(on[1]);
    assert_int_equal(st_gpu_experts_run(g, 0, &e, x, 4, c, 0, true, y), 0);
    assert_int_equal(st_gpu_experts_admit(g, 0, 1, &e), 0); /* the only slot is pinned by expert 0 */
    assert_int_equal(st_gpu_experts_end(g), 0);
    for (int i = 0; i < 4 * 64; i++) assert_true(y[i] == 0.0f); /* zero weights: written, and zero */
    st_gpu_tier_stats gs;
    st_gpu_experts_get_stats(g, &gs);
    assert_int_equal(gs.uses, 3);
    assert_int_equal(gs.hits, 1);
    assert_int_equal(gs.misses, 2);
    assert_int_equal(gs.admitted, 1);
    assert_int_equal(gs.refused, 1);
    assert_int_equal(gs.bytes_copied, bytes);
    assert_int_equal(gs.device_misses, 0);
    /* a miss computed on the device: refused while the only slot is pinned, an error for a placed
     * expert, else it evicts, copies in and runs; resident once its copy has landed */
    assert_int_equal(st_gpu_experts_begin(g, 0, two, 2, on), 0);
    assert_true(on[0]);
    assert_int_equal(st_gpu_experts_miss(g, 0, 0, &e, x, 4, c, 0, true, y), ST_ERR_INVALID); /* a hit */
    assert_int_equal(st_gpu_experts_miss(g, 0, 1, &e, x, 4, c, 0, true, y), 0);             /* no slot */
    assert_int_equal(st_gpu_experts_end(g), 0);
    int three = 3;
    assert_int_equal(st_gpu_experts_begin(g, 1, &three, 1, on), 0);
    assert_false(on[0]);
    for (int i = 0; i < 4 * 64; i++) y[i] = 1.0f;
    assert_int_equal(st_gpu_experts_miss(g, 1, 3, &e, x, 4, c, 0, true, y), 1);
    assert_true(st_gpu_experts_placed(g, 1, 3));
    assert_false(st_gpu_experts_holds(g, 0, 0)); /* the victim */
    assert_false(st_gpu_experts_holds(g, 1, 3)); /* not before its copy has landed */
    assert_int_equal(st_gpu_experts_miss_landed(g), 0);
    assert_true(st_gpu_experts_holds(g, 1, 3));
    assert_int_equal(st_gpu_experts_end(g), 0);
    for (int i = 0; i < 4 * 64; i++) assert_true(y[i] == 0.0f); /* the device's FFN wrote them */
    st_gpu_experts_get_stats(g, &gs);
    assert_int_equal(gs.device_misses, 1);
    assert_int_equal(gs.admitted, 2);
    assert_int_equal(gs.bytes_copied, 2 * bytes);
    assert_int_equal(gs.ffn_launches, 2);
    assert_false(st_gpu_experts_wants_device(g, 4)); /* min_rows 0: never */
    /* prefetch: not of the open layer; lands at the next begin(), whose use of it is a hit */
    assert_int_equal(st_gpu_experts_begin(g, 1, &three, 1, on), 0);
    assert_true(on[0]);
    assert_int_equal(st_gpu_experts_prefetch(g, 1, 2, &e), ST_ERR_INVALID);
    assert_int_equal(st_gpu_experts_prefetch(g, 0, 2, &e), 0); /* the only slot is pinned */
    assert_int_equal(st_gpu_experts_end(g), 0);
    int two_only = 2;
    assert_int_equal(st_gpu_experts_prefetch(g, 0, 2, &e), 1);
    assert_false(st_gpu_experts_holds(g, 0, 2));
    assert_int_equal(st_gpu_experts_prefetch(g, 0, 2, &e), 0); /* on its way already */
    assert_int_equal(st_gpu_experts_begin(g, 0, &two_only, 1, on), 0);
    assert_true(on[0]);
    assert_true(st_gpu_experts_holds(g, 0, 2));
    assert_false(st_gpu_experts_holds(g, 1, 3)); /* the victim */
    assert_int_equal(st_gpu_experts_end(g), 0);
    st_gpu_experts_get_stats(g, &gs);
    assert_int_equal(gs.prefetched, 1);
    assert_int_equal(gs.prefetch_hits, 1);
    assert_int_equal(gs.bytes_copied, 3 * bytes);
    assert_int_equal(st_gpu_experts_prefetch(g, 1, 3, &e), 1); /* in flight at free: waited for */
    st_gpu_experts_free(g);
    o.n_slots = 0;
    o.budget = st_gpu_experts_buffer_bytes(dev, &o) + 4095; /* less than one slot (4 KiB stride) */
    assert_int_equal(st_gpu_experts_new(dev, &o, &g), ST_ERR_BUDGET);
    assert_non_null(strstr(st_last_error(), "--gpu-mem"));
    st_gpu_emu_stats es;
    assert_int_equal(st_gpu_emu_get_stats(dev, &es), 0);
    assert_int_equal(es.allocated, 0);
    st_gpu_dev_free(dev);
    free(host);
}

/* The cost model: a V4-Pro FP4 expert (7168 x 3072, ~34.6 MB) over PCIe at 25 GB/s takes 1.38 ms;
 * 64 threads at 32 GFLOP/s each do a row in 64.5 us: 22 rows is the least the CPU is slower at;
 * 2 AVX-512 threads at the default 500 GFLOP/s each: 11. 2 threads at 32: the floor, 2; DRAM
 * slower than PCIe: 2; a CPU that never loses: never. */
static void cost_model(void **state) {
    (void)state;
    const uint64_t b = 34603008;
    assert_int_equal(st_gpu_min_rows_model(b, 7168, 3072, 64 * 32e9, 40e9, 25e9), 22);
    assert_int_equal(st_gpu_min_rows_model(b, 7168, 3072, 2 * 500e9, 40e9, 25e9), 11);
    assert_int_equal(st_gpu_min_rows_model(b, 7168, 3072, 16 * 500e9, 40e9, 25e9), 84);
    assert_int_equal(st_gpu_min_rows_model(b, 7168, 3072, 2 * 32e9, 40e9, 25e9), 2);
    assert_int_equal(st_gpu_min_rows_model(b, 7168, 3072, 64 * 32e9, 10e9, 25e9), 2);
    assert_int_equal(st_gpu_min_rows_model(b, 7168, 3072, 1e30, 40e9, 25e9), INT64_MAX);
    /* the least: one row fewer is not slower on the CPU */
    const double copy = (double)b / 25e9, row = 6.0 * 7168 * 3072 / (64 * 32e9);
    assert_true(22 * row > copy && 21 * row <= copy);
}

/* The real device where there is one: the same logits with the CUDA kernels. */
static void cuda_device(void **state) {
    (void)state;
    const char *why;
    if (st_gpu_device_count(&why) <= 0) {
        print_message("no CUDA device (%s)\n", why);
        skip();
    }
    setenv("STRATA_GPU", "cuda", 1);
    st_model *m = tu_load(tiny, NULL, 2);
    int32_t ids[N_PROMPT];
    tu_ids(m, ids, N_PROMPT, 0);
    float *want = tu_prefill_decode(m, ids, N_PROMPT, N_DECODE);
    const size_t count = (size_t)(N_PROMPT + N_DECODE) * (size_t)m->vocab;
    st_model_free(m);
    m = tu_load(tiny, &(st_model_opts){.gpu_mem = 64 << 20, .gpu_slots = 3}, 2);
    float *got = tu_prefill_decode(m, ids, N_PROMPT, N_DECODE);
    st_gpu_tier_stats gs;
    gpu_stats(m, &gs);
    assert_string_equal(gs.device, "cuda");
    assert_true(gs.hits > 0);
    setenv("STRATA_GPU", "emulate", 1);
    tu_assert_same_bits(want, got, count, "CUDA device, 3 slots");
    free(want);
    free(got);
    st_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tiny_official),
        cmocka_unit_test(tiny_reference),
        cmocka_unit_test(tiny_threads),
        cmocka_unit_test(wide_both_numerics),
        cmocka_unit_test(batches),
        cmocka_unit_test(counters),
        cmocka_unit_test(perturbed_device_changes_logits),
        cmocka_unit_test(misses_on_the_device),
        cmocka_unit_test(prefetch_next_layer),
        cmocka_unit_test(budget_too_small),
        cmocka_unit_test(cli_run),
        cmocka_unit_test(emulated_device_defers),
        cmocka_unit_test(tier_rules),
        cmocka_unit_test(cost_model),
        cmocka_unit_test(cuda_device),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
