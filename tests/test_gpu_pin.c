/* The GPU tier's page-locked DRAM (engine/model_gpu.c pin_dram,
 * offload/gpu_experts.c pin_host, the emulated device's registration log),
 * through the emulated device (STRATA_GPU=emulate): after load, every byte the
 * tier may copy from (each routed expert's w1/w3/w2 data and scales: the
 * checkpoint's mapping when resident, read-only; the DRAM expert cache's slots
 * as the source hands them out when streaming, one range per NUMA node's cache)
 * lies in a registered page-aligned range, in fewer ranges than experts; every
 * expert byte copied to the device came from registered memory; after
 * st_model_free every range was unregistered exactly once, and while its
 * memory was still there (the emulated unregister reads every page: memory
 * already freed faults or ASan reports it). A refused registration is one
 * warning naming the range and size, nothing stays registered, copies are
 * pageable, and the logits are the same bits as without a GPU tier. The
 * emulated device's own rules: unaligned or overlapping ranges refused, copies
 * counted as pinned or pageable. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/model.h"
#include "engine/model_gpu.h"
#include "offload/gpu_device.h"
#include "util.h"

static char tmp[128], tiny[200];

static int setup(void **state) {
    (void)state;
    setenv("STRATA_GPU", "emulate", 1);
    if (tu_tmpdir(tmp, sizeof tmp, "/var/tmp/strata-gpupin-XXXXXX")) return -1;
    snprintf(tiny, sizeof tiny, "%s/tiny", tmp);
    return tu_synth(st_synth_find("tiny"), tiny, 31, NULL) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    return tu_rmtree(tmp);
}

enum { N_PROMPT = 16, N_DECODE = 5 };

/* The logits of the run without a GPU tier (with o's DRAM tier). */
static float *reference(const st_model_opts *o, int threads, size_t *count) {
    st_model_opts plain = *o;
    plain.gpu_mem = 0;
    st_model *m = tu_load(tiny, &plain, threads);
    int32_t ids[N_PROMPT];
    tu_ids(m, ids, N_PROMPT, 0);
    float *want = tu_prefill_decode(m, ids, N_PROMPT, N_DECODE);
    *count = (size_t)(N_PROMPT + N_DECODE) * (size_t)m->vocab;
    st_model_free(m);
    return want;
}

/* [p, p + bytes) lies in one registration of log[0..n) still open, read_only as expected. */
static void assert_pinned(const st_gpu_emu_pin *log, int n, const void *p, uint64_t bytes, bool read_only, const char *what,
                          int layer, int expert) {
    if (!bytes) return;
    assert_non_null(p);
    const uintptr_t a = (uintptr_t)p;
    for (int i = 0; i < n; i++) {
        const uintptr_t lo = (uintptr_t)log[i].p;
        if (!log[i].unregistered && a >= lo && a + bytes <= lo + log[i].bytes) {
            assert_int_equal(log[i].read_only, read_only);
            return;
        }
    }
    fail_msg("layer %d expert %d %s: %p (%llu bytes) lies in no registered range", layer, expert, what, p,
             (unsigned long long)bytes);
}

static void assert_expert_pinned(const st_gpu_emu_pin *log, int n, const st_expert_w *x, bool read_only, int l, int e) {
    const st_weight *ws[3] = {&x->w1, &x->w3, &x->w2};
    const char *names[3][2] = {{"w1", "w1 scale"}, {"w3", "w3 scale"}, {"w2", "w2 scale"}};
    for (int i = 0; i < 3; i++) {
        const st_weight *w = ws[i];
        assert_pinned(log, n, w->data, st_weight_data_bytes(w->fmt, w->rows, w->cols), read_only, names[i][0], l, e);
        if (w->scale)
            assert_pinned(log, n, w->scale, st_weight_scale_bytes(w->fmt, w->scale_fmt, w->rows, w->cols), read_only,
                          names[i][1], l, e);
    }
}

/* The expert bytes the tier's copies read for bytes_copied (which counts slot layouts, with their
 * alignment): every routed expert of tiny has one shape. */
static uint64_t copied_expert_bytes(const st_model *m, uint64_t bytes_copied) {
    uint64_t off[6], layout = 0, real = 0;
    for (int l = 0; l < m->n_layers; l++)
        for (int e = 0; e < m->layers[l].moe.n_experts; e++) {
            const st_expert_w x = m->layers[0].moe.experts[0]; /* shapes only (streaming: data is NULL) */
            const uint64_t b = st_gpu_expert_layout(&m->layers[l].moe.experts[e], off);
            if (layout && b != layout) fail_msg("experts of different shapes");
            layout = b;
            const st_weight *ws[3] = {&x.w1, &x.w3, &x.w2};
            real = 0;
            for (int i = 0; i < 3; i++)
                real += st_weight_data_bytes(ws[i]->fmt, ws[i]->rows, ws[i]->cols) +
                        st_weight_scale_bytes(ws[i]->fmt, ws[i]->scale_fmt, ws[i]->rows, ws[i]->cols);
        }
    assert_int_equal(bytes_copied % layout, 0);
    return bytes_copied / layout * real;
}

/* Loads with o, checks what is registered (streaming: the experts as the source hands them out,
 * i.e. in its slots), runs the logits (same bits as without the tier, every expert byte copied
 * from registered memory), frees, checks each range was unregistered once. ranges: expected
 * count (0: any, fewer than the experts). */
static void pinned_run(const st_model_opts *o, int threads, bool streaming, int ranges) {
    size_t count;
    float *want = reference(o, threads, &count);
    st_gpu_emu_pins_reset();
    st_model *m = tu_load(tiny, o, threads);
    assert_non_null(m->experts.gpu);
    const st_gpu_emu_pin *log;
    const int n = st_gpu_emu_pins(&log);
    const int keys = m->n_layers * m->layers[0].moe.n_experts;
    if (ranges) assert_int_equal(n, ranges);
    else assert_true(n >= 1 && n < keys);
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        assert_int_equal((uintptr_t)log[i].p % page, 0);
        assert_int_equal(log[i].bytes % page, 0);
        assert_int_equal(log[i].unregistered, 0);
        total += log[i].bytes;
    }
    st_gpu_tier_stats gs;
    assert_int_equal(st_model_gpu_stats(m, &gs), 0);
    assert_int_equal(gs.pinned_ranges, n);
    assert_int_equal(gs.pinned_bytes, total);
    for (int l = 0; l < m->n_layers; l++)
        for (int e = 0; e < m->layers[l].moe.n_experts; e++) {
            if (!streaming) {
                assert_expert_pinned(log, n, &m->layers[l].moe.experts[e], true, l, e);
                continue;
            }
            assert_null(m->layers[l].moe.experts[e].w1.data); /* nothing reads the mapping */
            const st_expert_w *x;
            assert_int_equal(m->experts.get(m->experts.ctx, l, e, &x), 0);
            assert_expert_pinned(log, n, x, false, l, e);
            m->experts.put(m->experts.ctx, l, e);
        }
    int32_t ids[N_PROMPT];
    tu_ids(m, ids, N_PROMPT, 0);
    float *got = tu_prefill_decode(m, ids, N_PROMPT, N_DECODE);
    tu_assert_same_bits(want, got, count, streaming ? "pinned, streaming" : "pinned, resident");
    st_gpu_emu_stats es;
    assert_int_equal(st_gpu_emu_get_stats(st_gpu_experts_device(m->experts.gpu), &es), 0);
    assert_int_equal(st_model_gpu_stats(m, &gs), 0);
    assert_true(gs.bytes_copied > 0);
    assert_int_equal(es.copied_pinned, copied_expert_bytes(m, gs.bytes_copied)); /* every expert byte from pinned DRAM, activations not */
    assert_int_equal(es.pinned_ranges, n);
    st_model_free(m);
    assert_int_equal(st_gpu_emu_pins(&log), n);
    for (int i = 0; i < n; i++)
        if (log[i].unregistered != 1) fail_msg("range %d (%p, %zu bytes) unregistered %d times", i, log[i].p, log[i].bytes, log[i].unregistered);
    free(want);
    free(got);
}

static void resident_mapping_pinned(void **state) {
    (void)state;
    pinned_run(&(st_model_opts){.gpu_mem = 256 << 20}, 1, false, 0);
    pinned_run(&(st_model_opts){.gpu_mem = 256 << 20, .gpu_slots = 3}, 2, false, 0);
}

static void streaming_slots_pinned(void **state) {
    (void)state;
    pinned_run(&(st_model_opts){.gpu_mem = 256 << 20, .gpu_slots = 4, .expert_slots = 3}, 1, true, 1);
    pinned_run(&(st_model_opts){.gpu_mem = 256 << 20, .expert_slots = 2, .no_prefetch = true}, 1, true, 1);
    /* two NUMA nodes (a team of threads each): one expert cache per node, each registered; then every
     * expert in DRAM on its node (the per-node caches hold them all: still their slots) */
    setenv("STRATA_TOPOLOGY", "pack:2 [numa(memory=8GB)] core:1 pu:1", 1);
    pinned_run(&(st_model_opts){.gpu_mem = 256 << 20, .gpu_slots = 4, .expert_slots = 3}, 2, true, 2);
    pinned_run(&(st_model_opts){.gpu_mem = 256 << 20, .gpu_slots = 4}, 2, true, 2);
    unsetenv("STRATA_TOPOLOGY");
}

/* Runs f with stderr going to a file; returns what it wrote (free it). */
static char *stderr_of(st_model *(*f)(const st_model_opts *), const st_model_opts *o, st_model **out) {
    char path[300];
    snprintf(path, sizeof path, "%s/stderr.txt", tmp);
    fflush(stderr);
    const int saved = dup(2), fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    *out = f(o);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char *buf = calloc(1, 1 << 16);
    assert_non_null(buf);
    size_t got = fread(buf, 1, (1 << 16) - 1, fp);
    buf[got] = 0;
    fclose(fp);
    return buf;
}

static st_model *load_tiny(const st_model_opts *o) { return tu_load(tiny, o, 1); }

static void refused_registration_warns(void **state) {
    (void)state;
    const st_model_opts variants[] = {{.gpu_mem = 256 << 20, .gpu_slots = 3}, {.gpu_mem = 256 << 20, .gpu_slots = 4, .expert_slots = 3}};
    for (size_t v = 0; v < ST_ARRAY_LEN(variants); v++) {
        size_t count;
        float *want = reference(&variants[v], 1, &count);
        st_gpu_emu_pins_reset();
        st_gpu_emu_pin_fail = true;
        st_model *m;
        char *err = stderr_of(load_tiny, &variants[v], &m);
        st_gpu_emu_pin_fail = false;
        const char *w = strstr(err, "page-locking");
        if (!w || !strstr(w, "stay pageable") || !strstr(w, "0x") || !strstr(w, "st_gpu_emu_pin_fail"))
            fail_msg("no warning naming the range refused: %s", err);
        if (strstr(w + 1, "page-locking")) fail_msg("more than one warning: %s", err);
        if (!strstr(w, v ? "DRAM expert cache" : "checkpoint's mapping")) fail_msg("warning without the memory's kind: %s", err);
        free(err);
        const st_gpu_emu_pin *log;
        assert_int_equal(st_gpu_emu_pins(&log), 0);
        int32_t ids[N_PROMPT];
        tu_ids(m, ids, N_PROMPT, 0);
        float *got = tu_prefill_decode(m, ids, N_PROMPT, N_DECODE);
        tu_assert_same_bits(want, got, count, "registration refused: pageable copies");
        st_gpu_tier_stats gs;
        st_gpu_emu_stats es;
        assert_int_equal(st_model_gpu_stats(m, &gs), 0);
        assert_int_equal(st_gpu_emu_get_stats(st_gpu_experts_device(m->experts.gpu), &es), 0);
        assert_int_equal(gs.pinned_ranges, 0);
        assert_true(gs.bytes_copied > 0);
        assert_int_equal(es.copied_pinned, 0);
        assert_true(es.copied_pageable > copied_expert_bytes(m, gs.bytes_copied)); /* the experts and the activations */
        st_model_free(m);
        free(want);
        free(got);
    }
}

/* The emulated device's registration rules and copy accounting, without a model. */
static void emulated_registration_rules(void **state) {
    (void)state;
    st_gpu_dev *dev;
    assert_int_equal(st_gpu_dev_emulated_new(NULL, &dev), 0);
    const st_gpu_dev_ops *ops = dev->ops;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uint8_t *host = st_aligned_alloc(page, 8 * page);
    assert_non_null(host);
    memset(host, 7, 8 * page);
    st_gpu_emu_pins_reset();
    assert_int_equal(ops->host_register(dev->ctx, host + 1, page, false), ST_ERR_INVALID);      /* unaligned start */
    assert_int_equal(ops->host_register(dev->ctx, host, page + 1, false), ST_ERR_INVALID);      /* unaligned size */
    assert_int_equal(ops->host_register(dev->ctx, host, 4 * page, false), 0);
    assert_int_equal(ops->host_register(dev->ctx, host + 3 * page, 2 * page, false), ST_ERR_INVALID); /* overlap */
    assert_int_equal(ops->host_register(dev->ctx, host + 4 * page, 2 * page, true), 0);         /* touching: fine */
    const st_gpu_emu_pin *log;
    assert_int_equal(st_gpu_emu_pins(&log), 2);
    assert_true(log[1].read_only && !log[0].read_only);
    void *d, *s;
    assert_int_equal(ops->alloc(dev->ctx, 3 * page, &d), 0);
    assert_int_equal(ops->stream_new(dev->ctx, &s), 0);
    assert_int_equal(ops->copy_to_device(dev->ctx, d, host + page, 3 * page, s), 0);     /* inside the first */
    assert_int_equal(ops->copy_to_device(dev->ctx, d, host + 3 * page, 2 * page, s), 0); /* across two ranges: pageable */
    assert_int_equal(ops->copy_to_device(dev->ctx, d, host + 6 * page, page, s), 0);     /* outside */
    st_gpu_emu_stats es;
    assert_int_equal(st_gpu_emu_get_stats(dev, &es), 0);
    assert_int_equal(es.copied_pinned, 3 * page);
    assert_int_equal(es.copied_pageable, 3 * page);
    assert_int_equal(es.pinned_ranges, 2);
    ops->host_unregister(dev->ctx, host);
    ops->host_unregister(dev->ctx, host + 4 * page);
    assert_int_equal(st_gpu_emu_get_stats(dev, &es), 0);
    assert_int_equal(es.pinned_ranges, 0);
    assert_int_equal(st_gpu_emu_pins(&log), 2);
    assert_int_equal(log[0].unregistered, 1);
    assert_int_equal(log[1].unregistered, 1);
    ops->host_unregister(dev->ctx, host); /* twice: counted (and warned) */
    assert_int_equal(log[0].unregistered, 2);
    st_gpu_emu_pin_fail = true;
    assert_int_equal(ops->host_register(dev->ctx, host, page, false), ST_ERR_NOMEM);
    st_gpu_emu_pin_fail = false;
    ops->stream_free(dev->ctx, s);
    ops->free(dev->ctx, d);
    st_gpu_dev_free(dev);
    free(host);
    st_gpu_emu_pins_reset();
}

/* Without CUDA compiled in (or without a device) pinning is ST_ERR_UNSUPPORTED, never a crash. */
static void no_gpu_register_unsupported(void **state) {
    (void)state;
    if (st_gpu_device_count(NULL) > 0) skip();
    char buf[64];
    assert_int_equal(st_gpu_host_register(buf, sizeof buf, false), ST_ERR_UNSUPPORTED);
    st_error_clear();
    st_gpu_host_unregister(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(resident_mapping_pinned),
        cmocka_unit_test(streaming_slots_pinned),
        cmocka_unit_test(refused_registration_warns),
        cmocka_unit_test(emulated_registration_rules),
        cmocka_unit_test(no_gpu_register_unsupported),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
