/* offload/kv_pages.c: every get/span returns exactly the bytes appended
 * whatever the budgets (fast only, fast + DRAM, fast + DRAM + NVMe, NVMe
 * only), budgets are never exceeded (st_budget peak), pins survive appends and
 * other streams' traffic, resident streams never move, prefetch turns gets into
 * hits, truncate/reset bring the last page home, injected read faults come back
 * naming the spill file and offset (and the page is not lost), the spill file
 * has no name and is gone at close, bad input is an error, a 1M-entry
 * stream runs in well under the suite's time (throughput printed), the
 * counters of consecutive gets (pages and entries named again, pages missing)
 * are exact, a get waits out prefetched reads in flight instead of failing,
 * and a gather copies any set (its pages on every tier) at the least fast
 * budget, bad input and read faults reported as for get. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "cpu/mem.h"
#include "io/uring.h"
#include "offload/kv_pages.h"

#define KiB 1024ull
#define PAGE 4096ull

/* ---- deterministic entry bytes ---------------------------------------------------- */

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Entry `idx` of stream `s`, generation `gen` (after a truncate the same index holds new bytes). */
static void entry_bytes(uint8_t *out, size_t eb, int s, int64_t idx, int gen) {
    uint64_t seed = mix(((uint64_t)s << 48) ^ ((uint64_t)gen << 40) ^ (uint64_t)idx);
    for (size_t j = 0; j < eb; j += 8) {
        uint64_t v = mix(seed + j);
        memcpy(out + j, &v, ST_MIN(8, eb - j));
    }
}

static bool entry_ok(const void *p, size_t eb, int s, int64_t idx, int gen) {
    uint8_t want[4096];
    entry_bytes(want, eb, s, idx, gen);
    return memcmp(p, want, eb) == 0;
}

static void append_range(st_kv_pages *kv, int s, int64_t from, int64_t to, int gen) {
    size_t eb = st_kv_pages_entry_bytes(kv, s);
    uint8_t e[4096];
    for (int64_t i = from; i < to; i++) {
        entry_bytes(e, eb, s, i, gen);
        int64_t first;
        int rc = st_kv_pages_append(kv, s, e, 1, &first);
        if (rc) fail_msg("append %lld: %s", (long long)i, st_last_error());
        assert_int_equal(first, i);
    }
}

/* Every entry through a dense walk, one page pinned at a time. */
static void check_all_span(st_kv_pages *kv, int s, int gen) {
    size_t eb = st_kv_pages_entry_bytes(kv, s);
    int64_t count = st_kv_pages_count(kv, s), n;
    for (int64_t i = 0; i < count; i += n) {
        const void *p;
        int rc = st_kv_pages_span(kv, s, i, &p, &n);
        if (rc) fail_msg("span %lld: %s", (long long)i, st_last_error());
        assert_true(n >= 1 && i + n <= count);
        for (int64_t k = 0; k < n; k++)
            if (!entry_ok((const uint8_t *)p + k * eb, eb, s, i + k, gen)) fail_msg("entry %lld differs", (long long)(i + k));
        st_kv_pages_release(kv, s);
    }
}

/* Random gets touching at most `max_pages` distinct pages. */
static void check_random_gets(st_kv_pages *kv, int s, int gen, int rounds, int k, int max_pages, uint64_t seed) {
    size_t eb = st_kv_pages_entry_bytes(kv, s);
    int64_t count = st_kv_pages_count(kv, s), P = st_kv_pages_page_entries(kv, s), np = ST_DIV_UP(count, P);
    int32_t idx[256];
    const void *ptr[256];
    for (int r = 0; r < rounds; r++) {
        int64_t pages[16];
        for (int j = 0; j < max_pages; j++) pages[j] = (int64_t)(mix(seed++) % (uint64_t)np);
        for (int i = 0; i < k; i++) {
            int64_t pg = pages[mix(seed++) % (uint64_t)max_pages];
            int64_t hi = ST_MIN(count, (pg + 1) * P);
            idx[i] = (int32_t)(pg * P + (int64_t)(mix(seed++) % (uint64_t)(hi - pg * P)));
        }
        int rc = st_kv_pages_get(kv, s, idx, k, ptr);
        if (rc) fail_msg("get round %d: %s", r, st_last_error());
        for (int i = 0; i < k; i++)
            if (!entry_ok(ptr[i], eb, s, idx[i], gen)) fail_msg("round %d: entry %d differs", r, idx[i]);
    }
    st_kv_pages_release(kv, s);
}

static char *temp_dir(char *buf) {
    strcpy(buf, "/tmp/strata-kvpages-XXXXXX");
    assert_non_null(mkdtemp(buf));
    return buf;
}

static int dir_entries(const char *dir) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Descriptors of this process pointing at a file whose path starts with `prefix`. */
static int open_fds_under(const char *prefix) {
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        char link[PATH_MAX], path[600];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t len = readlink(path, link, sizeof link - 1);
        if (len <= 0) continue;
        link[len] = 0;
        n += strncmp(link, prefix, strlen(prefix)) == 0;
    }
    closedir(d);
    return n;
}

/* ---- the fixture: a temp spill directory, budgets, a store ---------------------------- */

typedef struct fixture {
    char dir[64];           /* temp directory for the spill file ("": none made) */
    st_budget *fast, *dram; /* "kv fast", "kv dram" (NULL: no DRAM tier) */
    st_kv_pages *kv;
} fixture;

/* Budgets of `fast` and `dram` bytes (dram 0: no DRAM tier) and a store over
 * them with the rest of the options from o (page size, spill directory, ...). */
static void fx_store(fixture *f, uint64_t fast, uint64_t dram, st_kv_pages_options o) {
    assert_int_equal(st_budget_new("kv fast", fast, &f->fast), 0);
    f->dram = NULL;
    if (dram) assert_int_equal(st_budget_new("kv dram", dram, &f->dram), 0);
    o.fast = f->fast;
    o.dram = f->dram;
    int rc = st_kv_pages_new(&o, &f->kv);
    if (rc) fail_msg("kv pages: %s", st_last_error());
}

/* The usual set-up: a temp directory, 4 KiB pages spilling into it. */
static void fx_open(fixture *f, uint64_t fast, uint64_t dram) {
    temp_dir(f->dir);
    fx_store(f, fast, dram, (st_kv_pages_options){.page_bytes = PAGE, .spill_dir = f->dir});
}

/* Frees the store, then the budgets (the store gives its frames back first). */
static void fx_free_store(fixture *f) {
    st_kv_pages_free(f->kv);
    st_budget_free(f->fast);
    st_budget_free(f->dram);
    f->kv = NULL;
    f->fast = f->dram = NULL;
}

/* Everything, and the (by then empty) temp directory. */
static void fx_close(fixture *f) {
    fx_free_store(f);
    if (f->dir[0]) rmdir(f->dir);
}

/* ---- tests --------------------------------------------------------------------------- */

/* The same 1000 odd-sized entries under four placements: bytes identical, budgets never exceeded. */
static void every_tier_returns_the_appended_bytes(void **state) {
    (void)state;
    fixture f = {0};
    temp_dir(f.dir);
    struct { uint64_t fast, dram; bool nvme; } cfg[] = {
        {UINT64_MAX, 0, false},   /* all resident */
        {6 * PAGE, 64 * PAGE, false}, /* fast + DRAM */
        {6 * PAGE, 3 * PAGE, true},   /* fast + DRAM + NVMe */
        {6 * PAGE, 0, true},          /* fast + NVMe */
    };
    for (size_t c = 0; c < ST_ARRAY_LEN(cfg); c++) {
        /* the last placement writes and reads the spill file through the page cache */
        fx_store(&f, cfg[c].fast, cfg[c].dram,
                 (st_kv_pages_options){.page_bytes = PAGE, .spill_dir = cfg[c].nvme ? f.dir : NULL, .spill_buffered = c == 3});
        st_kv_pages *kv = f.kv;
        st_budget *fast = f.fast, *dram = f.dram;
        int s;
        assert_int_equal(st_kv_pages_add_stream(kv, 100, false, "layer 2 csa", &s), 0); /* P = 40: pages end mid-4096 */
        assert_int_equal(st_kv_pages_page_entries(kv, s), 40);
        append_range(kv, s, 0, 1000, 0); /* 25 pages */
        st_kv_pages_stats st;
        st_kv_pages_get_stats(kv, &st);
        assert_int_equal(st.pages_fast + st.pages_dram + st.pages_nvme, 25);
        if (c == 0) assert_int_equal(st.pages_fast, 25);
        if (c == 1) { assert_true(st.spilled_dram >= 19); assert_int_equal(st.pages_nvme, 0); }
        if (c == 2) { assert_true(st.spilled_dram > 0); assert_true(st.pages_nvme >= 16); }
        if (c == 3) { assert_int_equal(st.spilled_dram, 0); assert_true(st.pages_nvme >= 19); }
        check_random_gets(kv, s, 0, 200, 32, 4, 1234 + c);
        check_all_span(kv, s, 0);
        st_kv_pages_get_stats(kv, &st);
        if (c >= 2) { assert_true(st.fetched_nvme > 0); assert_true(st.bytes_read >= st.fetched_nvme * PAGE); }
        if (c == 3) assert_false(st_io_file_direct(st_kv_pages_io(kv), 0));
        if (c == 1) assert_true(st.fetched_dram > 0);
        assert_true(st_budget_peak(fast) <= cfg[c].fast);
        if (dram) assert_true(st_budget_peak(dram) <= cfg[c].dram);
        st_kv_pages_free(kv);
        f.kv = NULL;
        assert_int_equal(st_budget_used(fast), 0);
        if (dram) assert_int_equal(st_budget_used(dram), 0);
        fx_free_store(&f);
    }
    assert_int_equal(dir_entries(f.dir), 0);
    fx_close(&f);
}

/* Resident streams (indexer keys) never move; a get's pointers stay valid and
 * unchanged while other streams and the same stream append and spill. */
static void pins_and_resident_streams_hold(void **state) {
    (void)state;
    fixture f = {0};
    fx_open(&f, 16 * PAGE, 0);
    st_kv_pages *kv = f.kv;
    int idx_keys, main_kv, other;
    assert_int_equal(st_kv_pages_add_stream(kv, 68, true, "layer 0 indexer keys", &idx_keys), 0);
    assert_int_equal(st_kv_pages_add_stream(kv, 256, false, "layer 0 csa", &main_kv), 0);
    assert_int_equal(st_kv_pages_add_stream(kv, 512, false, "layer 1 csa", &other), 0);
    append_range(kv, idx_keys, 0, 300, 0); /* 60 a page: 5 pages */
    append_range(kv, main_kv, 0, 64, 0);   /* 16 a page: 4 pages */
    const void *key0;
    int64_t n;
    assert_int_equal(st_kv_pages_span(kv, idx_keys, 0, &key0, &n), 0);
    assert_int_equal(n, 60);
    int32_t sel[3] = {5, 40, 17};
    const void *ptr[3];
    assert_int_equal(st_kv_pages_get(kv, main_kv, sel, 3, ptr), 0);
    /* 80 more pages of traffic through a 16-page budget */
    append_range(kv, other, 0, 8 * 40, 0);
    append_range(kv, main_kv, 64, 64 + 16 * 40, 0);
    for (int i = 0; i < 3; i++) assert_true(entry_ok(ptr[i], 256, main_kv, sel[i], 0));
    const void *again;
    assert_int_equal(st_kv_pages_span(kv, idx_keys, 0, &again, &n), 0);
    assert_ptr_equal(again, key0); /* resident: never moved */
    st_kv_pages_stats st;
    st_kv_pages_get_stats(kv, &st);
    assert_true(st.pages_nvme > 60);
    check_all_span(kv, idx_keys, 0);
    check_all_span(kv, main_kv, 0);
    check_all_span(kv, other, 0);
    check_random_gets(kv, main_kv, 0, 100, 24, 6, 99);
    assert_true(st_budget_peak(f.fast) <= 16 * PAGE);
    fx_close(&f);
}

/* Prefetch queues the reads; the get that follows finds every page in fast memory. */
static void prefetch_then_get_hits(void **state) {
    (void)state;
    fixture f = {0};
    fx_open(&f, 12 * PAGE, 0);
    st_kv_pages *kv = f.kv;
    int s;
    assert_int_equal(st_kv_pages_least_fast(kv), 0); /* no stream: nothing to keep */
    assert_int_equal(st_kv_pages_add_stream(kv, 64, false, "layer 5 csa", &s), 0);
    assert_int_equal(st_kv_pages_least_fast(kv), 2 * PAGE); /* its open page and one to read into */
    append_range(kv, s, 0, 64 * 50, 0); /* 50 pages */
    /* the last 12 pages (38..49) are home on the fast tier; these 6 are on NVMe */
    int32_t sel[8] = {0, 1, 64 * 7 + 3, 64 * 20, 64 * 20 + 63, 64 * 33 + 9, 64 * 31, 64 * 2 + 5};
    st_kv_pages_stats a, b;
    st_kv_pages_get_stats(kv, &a);
    assert_int_equal(st_kv_pages_prefetch(kv, s, sel, 8), 0);
    st_kv_pages_get_stats(kv, &b);
    assert_int_equal(b.prefetched - a.prefetched, 6); /* 6 distinct pages, all spilled */
    const void *ptr[8];
    assert_int_equal(st_kv_pages_get(kv, s, sel, 8, ptr), 0);
    st_kv_pages_get_stats(kv, &a);
    assert_int_equal(a.hits - b.hits, 6);
    assert_int_equal(a.fetched_nvme - b.fetched_nvme, 6);
    for (int i = 0; i < 8; i++) assert_true(entry_ok(ptr[i], 64, s, sel[i], 0));
    /* a second get of cached pages reads nothing */
    assert_int_equal(st_kv_pages_get(kv, s, sel, 8, ptr), 0);
    st_kv_pages_get_stats(kv, &b);
    assert_int_equal(b.fetched_nvme, a.fetched_nvme);
    assert_int_equal(b.hits - a.hits, 6);
    /* prefetching more pages than fit is advisory: no error, budget respected */
    int32_t many[40];
    for (int i = 0; i < 40; i++) many[i] = 64 * i + 1;
    st_kv_pages_release(kv, s);
    assert_int_equal(st_kv_pages_prefetch(kv, s, many, 40), 0);
    check_random_gets(kv, s, 0, 100, 16, 5, 7);
    assert_true(st_budget_peak(f.fast) <= 12 * PAGE);
    fx_close(&f);
}

/* The counters that measure consecutive gets (what read-ahead could win): distinct pages
 * named, those the stream's previous get named too, those not in fast memory; with
 * STRATA_KV_STATS the same for entries. */
static void get_counts_overlap_and_missing(void **state) {
    (void)state;
    fixture f = {0};
    setenv("STRATA_KV_STATS", "1", 1);
    fx_open(&f, 12 * PAGE, 0);
    unsetenv("STRATA_KV_STATS");
    st_kv_pages *kv = f.kv;
    int s, r;
    assert_int_equal(st_kv_pages_add_stream(kv, 64, false, "layer 1 csa", &s), 0);
    assert_int_equal(st_kv_pages_add_stream(kv, 64, false, "layer 3 csa", &r), 0);
    append_range(kv, s, 0, 64 * 30, 0); /* pages 0..17 spilled, 18..29 fast (minus what r takes) */
    append_range(kv, r, 0, 64 * 2, 0);
    const void *ptr[4];
    int32_t a[3] = {5, 64 * 40 / 2, 6}, b[3] = {64 * 20 / 2 + 1, 64 * 4, 6}, c[1] = {64 * 29};
    st_kv_pages_stats st;
    assert_int_equal(st_kv_pages_get(kv, s, a, 3, ptr), 0); /* pages 0, 20: page 0 on NVMe */
    assert_int_equal(st_kv_pages_get(kv, r, c, 0, ptr), 0);  /* another stream between: not "previous" */
    assert_int_equal(st_kv_pages_get(kv, s, b, 3, ptr), 0); /* pages 10, 4, 0: page 0 again, 10 and 4 on NVMe */
    for (int i = 0; i < 3; i++) assert_true(entry_ok(ptr[i], 64, s, b[i], 0));
    st_kv_pages_get_stats(kv, &st);
    assert_int_equal(st.gets, 3);
    assert_int_equal(st.get_pages, 5);
    assert_int_equal(st.get_repeat, 1);  /* page 0 */
    assert_int_equal(st.get_missing, 3); /* 0 (first get), 10 and 4 */
    assert_int_equal(st.get_entries, 6);
    assert_int_equal(st.get_entry_repeat, 1); /* entry 6 */
    assert_true(st_budget_peak(f.fast) <= 12 * PAGE);
    fx_close(&f);
}

/* Prefetch is advisory: its reads in flight hold fast frames nothing may take, so a get
 * that needs them waits for those reads and drops their copies instead of failing. */
static void get_waits_out_prefetched_frames(void **state) {
    (void)state;
    fixture f = {0};
    fx_open(&f, 4 * PAGE, 0);
    st_kv_pages *kv = f.kv;
    int s;
    assert_int_equal(st_kv_pages_add_stream(kv, 64, false, "layer 2 csa", &s), 0);
    append_range(kv, s, 0, 64 * 10, 0); /* pages 0..5 on NVMe, 6..9 fast (9: the tail) */
    int32_t pre[2] = {1, 64 + 1}, sel[2] = {64 * 2 + 7, 64 * 3 + 9};
    assert_int_equal(st_kv_pages_prefetch(kv, s, pre, 2), 0); /* pages 0, 1 in flight: 6, 7 spilled for them */
    const void *ptr[2];
    int rc = st_kv_pages_get(kv, s, sel, 2, ptr); /* pages 2, 3: 8 spilled, then only 0 and 1's frames */
    if (rc) fail_msg("get: %s", st_last_error());
    for (int i = 0; i < 2; i++) assert_true(entry_ok(ptr[i], 64, s, sel[i], 0));
    st_kv_pages_stats st;
    st_kv_pages_get_stats(kv, &st);
    assert_true(st.dropped >= 1); /* a prefetched copy gave its frame */
    assert_true(st_budget_peak(f.fast) <= 4 * PAGE);
    check_random_gets(kv, s, 0, 50, 2, 3, 11);
    fx_close(&f);
}

/* Budgets are hard: what cannot fit is an error naming the budget, nothing stays pinned. */
static void budgets_are_hard_limits(void **state) {
    (void)state;
    fixture f = {0};
    /* no spill directory: fast 4 pages + DRAM 2 pages hold 6 pages, the 7th fails */
    fx_store(&f, 4 * PAGE, 2 * PAGE, (st_kv_pages_options){.page_bytes = PAGE});
    st_kv_pages *kv = f.kv;
    int s;
    assert_int_equal(st_kv_pages_add_stream(kv, 1024, false, "layer 9 csa", &s), 0);
    append_range(kv, s, 0, 24, 0);
    uint8_t e[1024];
    entry_bytes(e, 1024, s, 24, 0);
    assert_int_equal(st_kv_pages_append(kv, s, e, 1, NULL), ST_ERR_BUDGET);
    assert_non_null(strstr(st_last_error(), "kv dram"));
    assert_non_null(strstr(st_last_error(), "no spill directory"));
    assert_int_equal(st_kv_pages_count(kv, s), 24);
    /* all or none: a multi-entry append that fails half way leaves nothing behind */
    uint8_t big[8 * 1024];
    for (int i = 0; i < 8; i++) entry_bytes(big + i * 1024, 1024, s, 18 + i, 0);
    assert_int_equal(st_kv_pages_truncate(kv, s, 18), 0); /* 5 pages: DRAM 0-1, fast 2-4 */
    assert_int_equal(st_kv_pages_append(kv, s, big, 8, NULL), ST_ERR_BUDGET);
    assert_int_equal(st_kv_pages_count(kv, s), 18);
    check_all_span(kv, s, 0);
    /* a get needing more pages than the fast budget can pin (pages 0-4, 4 frames) */
    int32_t sel[5] = {0, 4, 8, 12, 16};
    const void *ptr[5];
    assert_int_equal(st_kv_pages_get(kv, s, sel, 5, ptr), ST_ERR_BUDGET);
    assert_non_null(strstr(st_last_error(), "kv fast"));
    /* nothing stays pinned by the failure: page 1's copy needs page 0's frame back */
    int32_t sel2[2] = {4, 8};
    assert_int_equal(st_kv_pages_get(kv, s, sel2, 2, ptr), 0);
    for (int i = 0; i < 2; i++) assert_true(entry_ok(ptr[i], 1024, s, sel2[i], 0));
    assert_true(st_budget_peak(f.fast) <= 4 * PAGE);
    assert_true(st_budget_peak(f.dram) <= 2 * PAGE);
    fx_free_store(&f);
    /* a budget below one page refuses the first append (and the message names that budget) */
    st_budget *tiny;
    assert_int_equal(st_budget_new("kv tiny", PAGE - 1, &tiny), 0);
    assert_int_equal(st_kv_pages_new(&(st_kv_pages_options){.page_bytes = PAGE, .fast = tiny}, &kv), 0);
    assert_int_equal(st_kv_pages_add_stream(kv, 16, false, "x", &s), 0);
    assert_int_equal(st_kv_pages_append(kv, s, e, 1, NULL), ST_ERR_BUDGET);
    assert_non_null(strstr(st_last_error(), "kv tiny"));
    assert_int_equal(st_budget_peak(tiny), 0);
    st_kv_pages_free(kv);
    st_budget_free(tiny);
}

/* Injected read faults come back naming the spill file and offset; the page is not lost. */
static void io_faults_propagate(void **state) {
    (void)state;
    fixture f = {0};
    fx_open(&f, 4 * PAGE, 0);
    st_kv_pages *kv = f.kv;
    int s;
    assert_int_equal(st_kv_pages_add_stream(kv, 128, false, "layer 3 csa", &s), 0);
    append_range(kv, s, 0, 32 * 10, 0); /* 10 pages, the oldest spilled first: page 0 -> slot 0, page 1 -> slot 1 */
    assert_non_null(st_kv_pages_io(kv));
    assert_int_equal(st_io_set_faults(st_kv_pages_io(kv), "eio@4096"), 0);
    int32_t sel[2] = {0, 32 + 5};
    const void *ptr[2];
    assert_int_equal(st_kv_pages_get(kv, s, sel, 2, ptr), ST_ERR_IO);
    const char *msg = st_last_error();
    assert_non_null(strstr(msg, st_kv_pages_spill_path(kv)));
    assert_non_null(strstr(msg, "offset 4096"));
    assert_non_null(strstr(msg, "layer 3 csa"));
    assert_non_null(strstr(msg, "page 1"));
    assert_non_null(strstr(msg, "errno 5"));
    /* a truncated-looking read is a format error, never zero-filled bytes */
    assert_int_equal(st_io_set_faults(st_kv_pages_io(kv), "short@4096:0"), 0);
    assert_int_equal(st_kv_pages_get(kv, s, sel, 2, ptr), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "offset 4096"));
    /* two pages fail in one get: the message's page and offset belong together */
    assert_int_equal(st_io_set_faults(st_kv_pages_io(kv), "eio@12288,eio@16384"), 0);
    int32_t sel34[2] = {96 + 1, 128 + 1};
    assert_int_equal(st_kv_pages_get(kv, s, sel34, 2, ptr), ST_ERR_IO);
    msg = st_last_error();
    if (strstr(msg, "page 3:")) assert_non_null(strstr(msg, "offset 12288 "));
    else assert_non_null(strstr(msg, "page 4:")), assert_non_null(strstr(msg, "offset 16384 "));
    /* faults gone: the same page reads back intact */
    assert_int_equal(st_io_set_faults(st_kv_pages_io(kv), NULL), 0);
    assert_int_equal(st_kv_pages_get(kv, s, sel, 2, ptr), 0);
    for (int i = 0; i < 2; i++) assert_true(entry_ok(ptr[i], 128, s, sel[i], 0));
    st_kv_pages_stats st;
    st_kv_pages_get_stats(kv, &st);
    assert_int_equal(st.io_errors, 4);
    /* a failed prefetch is reported by the get that needs the page */
    st_kv_pages_release(kv, s);
    assert_int_equal(st_io_set_faults(st_kv_pages_io(kv), "eio@8192"), 0);
    int32_t two = 64 + 1;
    assert_int_equal(st_kv_pages_prefetch(kv, s, &two, 1), 0);
    assert_int_equal(st_kv_pages_get(kv, s, &two, 1, ptr), ST_ERR_IO);
    assert_non_null(strstr(st_last_error(), "offset 8192"));
    fx_free_store(&f);

    /* the options' fault rules (same grammar as STRATA_IO_FAULTS) reach the spill file's reader */
    fx_store(&f, 4 * PAGE, 0, (st_kv_pages_options){.page_bytes = PAGE, .spill_dir = f.dir, .io_faults = "eio@0"});
    kv = f.kv;
    assert_int_equal(st_kv_pages_add_stream(kv, 128, false, "layer 4 csa", &s), 0);
    append_range(kv, s, 0, 32 * 10, 0);
    assert_int_equal(st_kv_pages_get(kv, s, sel, 1, ptr), ST_ERR_IO);
    assert_non_null(strstr(st_last_error(), "offset 0 "));
    const void *p;
    int64_t n;
    assert_int_equal(st_kv_pages_span(kv, s, 32, &p, &n), 0); /* page 1 is fine */
    assert_true(entry_ok(p, 128, s, 32, 0));
    st_kv_pages_free(kv);
    f.kv = NULL;
    assert_int_equal(st_budget_used(f.fast), 0);
    fx_free_store(&f);

    /* a spill directory that does not exist: the error names it */
    fx_store(&f, 2 * PAGE, 0, (st_kv_pages_options){.page_bytes = PAGE, .spill_dir = "/nonexistent/strata-kv-dir"});
    kv = f.kv;
    assert_int_equal(st_kv_pages_add_stream(kv, 2048, false, "layer 0 csa", &s), 0);
    uint8_t e[2048];
    int rc = 0;
    for (int i = 0; i < 8 && !rc; i++) { entry_bytes(e, 2048, s, i, 0); rc = st_kv_pages_append(kv, s, e, 1, NULL); }
    assert_int_equal(rc, ST_ERR_IO);
    assert_non_null(strstr(st_last_error(), "/nonexistent/strata-kv-dir"));
    fx_close(&f);
}

/* The spill file never has a name in the directory and its blocks go at close. */
static void spill_file_is_private(void **state) {
    (void)state;
    fixture f = {0};
    fx_open(&f, 3 * PAGE, 0);
    st_kv_pages *kv = f.kv;
    const char *dir = f.dir;
    int s;
    assert_int_equal(st_kv_pages_add_stream(kv, 512, false, "layer 0 csa", &s), 0);
    assert_int_equal(open_fds_under(dir), 0);
    append_range(kv, s, 0, 8 * 12, 0);
    assert_true(strncmp(st_kv_pages_spill_path(kv), dir, strlen(dir)) == 0);
    assert_int_equal(dir_entries(dir), 0); /* unlinked while open */
    assert_true(open_fds_under(dir) >= 1);
    st_kv_pages_free(kv);
    f.kv = NULL;
    assert_int_equal(open_fds_under(dir), 0); /* closed: the blocks are freed */
    assert_int_equal(dir_entries(dir), 0);
    fx_free_store(&f);
    assert_int_equal(rmdir(dir), 0);
}

/* Truncate to mid-page (that page on NVMe / DRAM), append new bytes, reset. */
static void truncate_and_reset(void **state) {
    (void)state;
    fixture f = {0};
    fx_open(&f, 8 * PAGE, 4 * PAGE);
    st_kv_pages *kv = f.kv;
    int s, t;
    assert_int_equal(st_kv_pages_add_stream(kv, 200, false, "layer 1 csa", &s), 0); /* P = 20 */
    assert_int_equal(st_kv_pages_add_stream(kv, 32, true, "layer 1 indexer keys", &t), 0);
    append_range(kv, s, 0, 500, 0);
    append_range(kv, t, 0, 500, 0);
    st_kv_pages_stats st;
    st_kv_pages_get_stats(kv, &st);
    assert_true(st.pages_nvme > 0);
    /* 123 -> page 6, long spilled to NVMe; then 230 -> page 11 */
    assert_int_equal(st_kv_pages_truncate(kv, s, 123), 0);
    assert_int_equal(st_kv_pages_count(kv, s), 123);
    append_range(kv, s, 123, 300, 1);
    size_t eb = 200;
    int64_t n;
    for (int64_t i = 0; i < 300; i += n) {
        const void *p;
        assert_int_equal(st_kv_pages_span(kv, s, i, &p, &n), 0);
        for (int64_t k = 0; k < n; k++)
            assert_true(entry_ok((const uint8_t *)p + k * eb, eb, s, i + k, i + k < 123 ? 0 : 1));
        st_kv_pages_release(kv, s);
    }
    assert_int_equal(st_kv_pages_truncate(kv, t, 250), 0);
    check_all_span(kv, t, 0);
    assert_int_equal(st_kv_pages_truncate(kv, s, 301), ST_ERR_INVALID);
    assert_int_equal(st_kv_pages_reset(kv), 0);
    assert_int_equal(st_kv_pages_count(kv, s), 0);
    assert_int_equal(st_kv_pages_count(kv, t), 0);
    st_kv_pages_get_stats(kv, &st);
    assert_int_equal(st.pages_fast + st.pages_dram + st.pages_nvme + st.pages_cached, 0);
    append_range(kv, s, 0, 400, 2); /* frames and spill slots are reused */
    check_random_gets(kv, s, 2, 50, 20, 3, 5);
    check_all_span(kv, s, 2);
    assert_true(st_budget_peak(f.fast) <= 8 * PAGE);
    assert_true(st_budget_peak(f.dram) <= 4 * PAGE);
    fx_close(&f);
}

static void bad_input_is_an_error(void **state) {
    (void)state;
    st_kv_pages *kv;
    st_kv_pages_options o = {.page_bytes = 5000};
    assert_int_equal(st_kv_pages_new(&o, &kv), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "5000"));
    assert_int_equal(st_kv_pages_new(NULL, &kv), 0);
    int s;
    assert_int_equal(st_kv_pages_add_stream(kv, 0, false, "zero", &s), ST_ERR_INVALID);
    assert_int_equal(st_kv_pages_add_stream(kv, 65537, false, "wide", &s), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "wide"));
    assert_int_equal(st_kv_pages_add_stream(kv, 583, false, "official", &s), 0);
    assert_int_equal(st_kv_pages_page_entries(kv, s), 65536 / 583);
    append_range(kv, s, 0, 300, 0);
    int32_t bad[2] = {3, 300};
    const void *ptr[2];
    assert_int_equal(st_kv_pages_get(kv, s, bad, 2, ptr), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "index 300"));
    bad[1] = -1;
    assert_int_equal(st_kv_pages_prefetch(kv, s, bad, 2), ST_ERR_INVALID);
    assert_int_equal(st_kv_pages_get(kv, 7, bad, 1, ptr), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "stream 7"));
    const void *p;
    int64_t n;
    assert_int_equal(st_kv_pages_span(kv, s, 300, &p, &n), ST_ERR_INVALID);
    assert_int_equal(st_kv_pages_append(kv, s, NULL, 1, NULL), ST_ERR_INVALID);
    assert_int_equal(st_kv_pages_truncate(kv, s, -1), ST_ERR_INVALID);
    assert_int_equal(st_kv_pages_get(kv, s, bad, 0, ptr), 0);
    check_all_span(kv, s, 0);
    st_kv_pages_free(kv);
    st_kv_pages_free(NULL);
}

/* ---- gather: a set no get can pin at once, copied a few pages at a time ----------------------- */

/* st_kv_pages_gather returns the appended bytes of any set (every page of the
 * stream, any order, repeats) whose pages are home on the fast tier, in DRAM
 * and in the spill file: at the least fast budget, where a get of the set is
 * refused, one missing page at a time; with room, missing pages are fetched
 * together. Bytes between entries (stride) are left alone, nothing stays pinned,
 * budgets are never exceeded. */
static void gather_copies_any_set_at_the_least_budget(void **state) {
    (void)state;
    struct { uint64_t fast_pages, dram_pages; bool buffered; } cfg[] = {
        {3, 6, false}, /* least for two streams; DRAM (3 of its pages, 3 of the other stream) then NVMe */
        {3, 0, true},  /* least; NVMe only, through the page cache */
        {10, 2, false} /* room for a few pages at once */
    };
    enum { N = 150, STRIDE = 112 };
    fixture f = {0};
    temp_dir(f.dir);
    for (size_t c = 0; c < ST_ARRAY_LEN(cfg); c++) {
        const bool least = cfg[c].fast_pages == 3;
        fx_store(&f, cfg[c].fast_pages * PAGE, cfg[c].dram_pages * PAGE,
                 (st_kv_pages_options){.page_bytes = PAGE, .spill_dir = f.dir, .spill_buffered = cfg[c].buffered});
        st_kv_pages *kv = f.kv;
        int s, r;
        assert_int_equal(st_kv_pages_add_stream(kv, 100, false, "layer 2 csa", &s), 0); /* P = 40 */
        assert_int_equal(st_kv_pages_add_stream(kv, 64, false, "layer 4 csa", &r), 0);
        if (least) assert_int_equal(st_kv_pages_least_fast(kv), 3 * PAGE);
        append_range(kv, s, 0, 40 * 12, 0); /* 12 pages */
        append_range(kv, r, 0, 64 * 3 + 5, 0);
        st_kv_pages_stats a, b;
        st_kv_pages_get_stats(kv, &a);
        assert_true(a.pages_nvme > 0);
        if (cfg[c].dram_pages) assert_true(a.pages_dram > 0);
        /* every page once, then random entries; shuffled; the last 10 repeat the first 10 */
        int32_t idx[N];
        uint64_t seed = 77 + c;
        for (int i = 0; i < 12; i++) idx[i] = (int32_t)(i * 40 + (int)(mix(seed++) % 40));
        for (int i = 12; i < N - 10; i++) idx[i] = (int32_t)(mix(seed++) % 480);
        for (int i = N - 11; i > 0; i--) {
            int j = (int)(mix(seed++) % (uint64_t)(i + 1));
            int32_t t = idx[i];
            idx[i] = idx[j];
            idx[j] = t;
        }
        for (int i = 0; i < 10; i++) idx[N - 10 + i] = idx[i];
        const void *ptr[N];
        if (least) { /* the 12 pages cannot be pinned at once next to the two open pages */
            assert_int_equal(st_kv_pages_get(kv, s, idx, N, ptr), ST_ERR_BUDGET);
            st_error_clear();
        }
        static uint8_t out[N * STRIDE];
        memset(out, 0xab, sizeof out);
        st_kv_pages_get_stats(kv, &a);
        int rc = st_kv_pages_gather(kv, s, idx, N, out, STRIDE);
        if (rc) fail_msg("config %zu: gather: %s", c, st_last_error());
        for (int i = 0; i < N; i++) {
            if (!entry_ok(out + i * STRIDE, 100, s, idx[i], 0)) fail_msg("config %zu: position %d (entry %d) differs", c, i, idx[i]);
            for (int k = 100; k < STRIDE; k++) assert_int_equal(out[i * STRIDE + k], 0xab);
        }
        st_kv_pages_get_stats(kv, &b);
        assert_int_equal(b.gathers - a.gathers, 1);
        assert_int_equal(b.gather_pages - a.gather_pages, 12);
        const uint64_t missing = 12 - (b.hits - a.hits);
        assert_true(missing >= 6);
        assert_int_equal(b.gather_fetched - a.gather_fetched, missing);
        assert_true(b.fetched_nvme > a.fetched_nvme);
        /* (with room, making it spills the fast tier into DRAM, whose pages go on to NVMe first) */
        if (least && cfg[c].dram_pages) assert_true(b.fetched_dram > a.fetched_dram);
        if (least) assert_int_equal(b.gather_batches - a.gather_batches, missing); /* one frame: one page at a time */
        else assert_true(b.gather_batches - a.gather_batches < missing);            /* several pages a batch */
        /* nothing stays pinned: the other stream's spilled first page needs the free frame */
        int32_t one = 3;
        rc = st_kv_pages_get(kv, r, &one, 1, ptr);
        if (rc) fail_msg("config %zu: get after gather: %s", c, st_last_error());
        assert_true(entry_ok(ptr[0], 64, r, 3, 0));
        st_kv_pages_release(kv, r);
        /* a gather drops the stream's earlier pins first (a get's) */
        assert_int_equal(st_kv_pages_get(kv, s, idx, 1, ptr), 0);
        assert_int_equal(st_kv_pages_gather(kv, s, idx, N, out, STRIDE), 0);
        for (int i = 0; i < N; i++) assert_true(entry_ok(out + i * STRIDE, 100, s, idx[i], 0));
        assert_true(st_budget_peak(f.fast) <= cfg[c].fast_pages * PAGE);
        if (f.dram) assert_true(st_budget_peak(f.dram) <= cfg[c].dram_pages * PAGE);
        fx_free_store(&f);
    }
    assert_int_equal(dir_entries(f.dir), 0);
    fx_close(&f);
}

/* Bad input is ST_ERR_INVALID naming it; a failed read of the spill file (injected
 * through the io fault hook) comes back naming the file, offset, stream and page,
 * also when the read was a prefetch's; the page is not lost. At the least budget. */
static void gather_bad_input_and_read_errors(void **state) {
    (void)state;
    fixture f = {0};
    fx_open(&f, 2 * PAGE, 0);
    st_kv_pages *kv = f.kv;
    int s;
    assert_int_equal(st_kv_pages_add_stream(kv, 128, false, "layer 3 csa", &s), 0); /* P = 32 */
    assert_int_equal(st_kv_pages_least_fast(kv), 2 * PAGE);
    append_range(kv, s, 0, 32 * 10, 0); /* pages 0..8 spilled, page k to slot k */
    uint8_t out[4 * 128];
    int32_t bad[3] = {5, 320, 7};
    assert_int_equal(st_kv_pages_gather(kv, s, bad, 3, out, 128), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "index 320 at position 1"));
    assert_non_null(strstr(st_last_error(), "layer 3 csa"));
    bad[1] = -2;
    assert_int_equal(st_kv_pages_gather(kv, s, bad, 3, out, 128), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "index -2"));
    assert_int_equal(st_kv_pages_gather(kv, 9, bad, 1, out, 128), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "stream 9"));
    assert_int_equal(st_kv_pages_gather(kv, s, bad, 1, out, 100), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "stride 100"));
    assert_int_equal(st_kv_pages_gather(kv, s, bad, -1, out, 128), ST_ERR_INVALID);
    assert_int_equal(st_kv_pages_gather(kv, s, bad, 1, NULL, 128), ST_ERR_INVALID);
    assert_int_equal(st_kv_pages_gather(kv, s, NULL, 0, NULL, 128), 0);

    int32_t sel[4] = {64 + 2, 5, 32 + 7, 2}; /* pages 2, 0, 1, 0 */
    assert_int_equal(st_io_set_faults(st_kv_pages_io(kv), "eio@4096"), 0);
    assert_int_equal(st_kv_pages_gather(kv, s, sel, 4, out, 128), ST_ERR_IO);
    const char *msg = st_last_error();
    assert_non_null(strstr(msg, st_kv_pages_spill_path(kv)));
    assert_non_null(strstr(msg, "offset 4096"));
    assert_non_null(strstr(msg, "layer 3 csa"));
    assert_non_null(strstr(msg, "page 1"));
    assert_non_null(strstr(msg, "errno 5"));
    /* a read that comes back short is a format error, never zero-filled bytes */
    assert_int_equal(st_io_set_faults(st_kv_pages_io(kv), "short@8192:0"), 0);
    assert_int_equal(st_kv_pages_gather(kv, s, sel, 4, out, 128), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "offset 8192"));
    assert_non_null(strstr(st_last_error(), "page 2"));
    /* faults gone: the same pages read back intact (and nothing stayed pinned) */
    assert_int_equal(st_io_set_faults(st_kv_pages_io(kv), NULL), 0);
    int rc = st_kv_pages_gather(kv, s, sel, 4, out, 128);
    if (rc) fail_msg("gather: %s", st_last_error());
    for (int i = 0; i < 4; i++) assert_true(entry_ok(out + i * 128, 128, s, sel[i], 0));
    /* a prefetch whose read failed is reported by the gather that needs the page */
    assert_int_equal(st_io_set_faults(st_kv_pages_io(kv), "eio@12288"), 0);
    int32_t three = 96 + 1;
    assert_int_equal(st_kv_pages_prefetch(kv, s, &three, 1), 0);
    assert_int_equal(st_kv_pages_gather(kv, s, &three, 1, out, 128), ST_ERR_IO);
    assert_non_null(strstr(st_last_error(), "offset 12288"));
    assert_non_null(strstr(st_last_error(), "page 3"));
    assert_int_equal(st_io_set_faults(st_kv_pages_io(kv), NULL), 0);
    assert_int_equal(st_kv_pages_gather(kv, s, &three, 1, out, 128), 0);
    assert_true(entry_ok(out, 128, s, three, 0));
    st_kv_pages_stats st;
    st_kv_pages_get_stats(kv, &st);
    assert_int_equal(st.io_errors, 3);
    assert_true(st_budget_peak(f.fast) <= 2 * PAGE);
    fx_close(&f);
}

/* 1M entries of 16 bytes through a 1 MiB fast budget, 4 MiB of DRAM and NVMe,
 * appended one at a time as the engine does; then top-k style gets and a dense
 * walk. Prints throughput; must stay quick. */
static void million_entries_run_quickly(void **state) {
    (void)state;
    fixture f = {0};
    temp_dir(f.dir);
    const bool asan = getenv("STRATA_ASAN") != NULL;
    const int64_t N = 1 << 20;
    fx_store(&f, 1024 * KiB, 4096 * KiB, (st_kv_pages_options){.spill_dir = f.dir}); /* 64 KiB pages: 4096 entries */
    st_kv_pages *kv = f.kv;
    int s;
    assert_int_equal(st_kv_pages_add_stream(kv, 16, false, "long csa", &s), 0);
    double t0 = st_time_s();
    uint8_t e[16];
    for (int64_t i = 0; i < N; i++) {
        entry_bytes(e, 16, s, i, 0);
        if (st_kv_pages_append(kv, s, e, 1, NULL)) fail_msg("append %lld: %s", (long long)i, st_last_error());
    }
    double t_append = st_time_s() - t0;
    st_kv_pages_stats a, b;
    st_kv_pages_get_stats(kv, &a);
    assert_int_equal(a.pages_fast + a.pages_dram + a.pages_nvme, 256);
    assert_true(a.pages_nvme >= 256 - 16 - 64);
    t0 = st_time_s();
    check_random_gets(kv, s, 0, 2000, 64, 8, 42);
    double t_get = st_time_s() - t0;
    st_kv_pages_get_stats(kv, &b);
    t0 = st_time_s();
    check_all_span(kv, s, 0);
    double t_walk = st_time_s() - t0;
    st_kv_pages_stats c;
    st_kv_pages_get_stats(kv, &c);
    double walk_mb = (double)(c.bytes_read - b.bytes_read) / 1e6;
    printf("[ kv pages ] 1M x 16 B appends: %.3f s (%.1f M entries/s; %llu pages to DRAM, %llu to NVMe, "
           "%.1f MB written at %.0f MB/s in pwrite)\n",
           t_append, N / t_append / 1e6, (unsigned long long)a.spilled_dram, (unsigned long long)a.spilled_nvme,
           a.bytes_written / 1e6, a.write_ns ? a.bytes_written / (a.write_ns / 1e9) / 1e6 : 0.0);
    printf("[ kv pages ] 2000 gets of 64 entries over <= 8 pages: %.3f s (%.1f us/get; %llu pages from NVMe, "
           "%llu from DRAM, %llu hits, stall %.3f s)\n",
           t_get, t_get / 2000 * 1e6, (unsigned long long)(b.fetched_nvme - a.fetched_nvme),
           (unsigned long long)(b.fetched_dram - a.fetched_dram), (unsigned long long)(b.hits - a.hits),
           (b.stall_ns - a.stall_ns) / 1e9);
    printf("[ kv pages ] dense walk of 1M entries (readahead 4): %.3f s, %.1f MB read from NVMe at %.0f MB/s\n", t_walk,
           walk_mb, walk_mb / t_walk);
    assert_true(st_budget_peak(f.fast) <= 1024 * KiB);
    assert_true(st_budget_peak(f.dram) <= 4096 * KiB);
    /* the store's own work must stay quick; waits on the device (stalls, pwrite) are the shared
     * disk's and vary with what else runs on it */
    const double io_wait = (c.stall_ns + c.write_ns) / 1e9;
    printf("[ kv pages ] total %.3f s, of which waiting on the spill device %.3f s\n", t_append + t_get + t_walk, io_wait);
    assert_true(t_append + t_get + t_walk - io_wait < (asan ? 30.0 : 3.0));
    fx_close(&f);
}

/* ---- the engine's use, end to end ---------------------------------------------------------- */

typedef struct sim {
    st_kv_pages *kv;
    int main_kv, keys; /* CSA main entries (spillable), indexer keys (resident) */
} sim;

enum { SIM_D = 64, SIM_ID = 32, SIM_K = 12, SIM_STEPS = 700 };

static void sim_vec(float *v, int64_t n, uint64_t seed) {
    for (int64_t i = 0; i < n; i++) v[i] = (float)((int64_t)(mix(seed + (uint64_t)i) % 2001) - 1000) / 1000.0f;
}

/* One decode step as engine/attention.c does it: a block completes (one main
 * entry, one indexer key), the indexer scores every key (dense walk of the
 * resident stream), picks the top k, the selected main entries are prefetched
 * and read with get, and attention is computed from the pointers.
 * ref != NULL: the same from plain arrays (ref_main (steps, D), ref_keys (steps, ID)). */
static void sim_step(sim *m, int64_t t, float *ref_main, float *ref_keys, float *out) {
    float e[SIM_D], k[SIM_ID], q[SIM_D], iq[SIM_ID];
    sim_vec(e, SIM_D, 1000003ull * (uint64_t)t);
    sim_vec(k, SIM_ID, 7000003ull * (uint64_t)t + 1);
    sim_vec(q, SIM_D, 9000011ull * (uint64_t)t + 2);
    sim_vec(iq, SIM_ID, 5000011ull * (uint64_t)t + 3);
    const int64_t n = t + 1;
    static float scores[SIM_STEPS];
    if (m) {
        assert_int_equal(st_kv_pages_append(m->kv, m->main_kv, e, 1, NULL), 0);
        assert_int_equal(st_kv_pages_append(m->kv, m->keys, k, 1, NULL), 0);
        int64_t cnt;
        for (int64_t i = 0; i < n; i += cnt) {
            const void *p;
            assert_int_equal(st_kv_pages_span(m->kv, m->keys, i, &p, &cnt), 0);
            for (int64_t j = 0; j < cnt; j++) {
                float acc = 0;
                for (int c = 0; c < SIM_ID; c++) acc += iq[c] * ((const float *)p)[j * SIM_ID + c];
                scores[i + j] = acc;
            }
        }
        st_kv_pages_release(m->kv, m->keys);
    } else {
        memcpy(ref_main + t * SIM_D, e, sizeof e);
        memcpy(ref_keys + t * SIM_ID, k, sizeof k);
        for (int64_t i = 0; i < n; i++) {
            float acc = 0;
            for (int c = 0; c < SIM_ID; c++) acc += iq[c] * ref_keys[i * SIM_ID + c];
            scores[i] = acc;
        }
    }
    int32_t sel[SIM_K];
    const int k_sel = (int)ST_MIN(SIM_K, n);
    for (int j = 0; j < k_sel; j++) { /* top k by repeated max (ties: lowest index) */
        int32_t best = -1;
        for (int64_t i = 0; i < n; i++) {
            bool taken = false;
            for (int u = 0; u < j; u++) taken |= sel[u] == i;
            if (!taken && (best < 0 || scores[i] > scores[best])) best = (int32_t)i;
        }
        sel[j] = best;
    }
    const float *cand[SIM_K];
    if (m) {
        assert_int_equal(st_kv_pages_prefetch(m->kv, m->main_kv, sel, k_sel), 0);
        int rc = st_kv_pages_get(m->kv, m->main_kv, sel, k_sel, (const void **)cand);
        if (rc) fail_msg("step %lld: %s", (long long)t, st_last_error());
    } else {
        for (int j = 0; j < k_sel; j++) cand[j] = ref_main + (int64_t)sel[j] * SIM_D;
    }
    float w[SIM_K], mx = -INFINITY, den = 0;
    for (int j = 0; j < k_sel; j++) {
        w[j] = 0;
        for (int c = 0; c < SIM_D; c++) w[j] += q[c] * cand[j][c];
        mx = w[j] > mx ? w[j] : mx;
    }
    for (int j = 0; j < k_sel; j++) { w[j] = expf(w[j] - mx); den += w[j]; }
    for (int c = 0; c < SIM_D; c++) {
        float o = 0;
        for (int j = 0; j < k_sel; j++) o += w[j] / den * cand[j][c];
        out[c] = o;
    }
    if (m) st_kv_pages_release(m->kv, m->main_kv);
}

/* Attention from get() pointers is bit-identical to attention from plain arrays,
 * with everything resident and with a budget that keeps ~1/3 of the main KV on DRAM/NVMe. */
static void attention_from_pages_is_bit_identical(void **state) {
    (void)state;
    fixture f = {0};
    temp_dir(f.dir);
    float *ref_main = malloc(SIM_STEPS * SIM_D * sizeof(float)), *ref_keys = malloc(SIM_STEPS * SIM_ID * sizeof(float));
    float *want = malloc(SIM_STEPS * SIM_D * sizeof(float)), got[SIM_D];
    assert_non_null(ref_main); assert_non_null(ref_keys); assert_non_null(want);
    for (int64_t t = 0; t < SIM_STEPS; t++) sim_step(NULL, t, ref_main, ref_keys, want + t * SIM_D);
    /* main: 16 entries a page (44 pages); keys: 32 a page (22 pages, resident) */
    const uint64_t fast_limits[2] = {UINT64_MAX, 48 * PAGE};
    for (int c = 0; c < 2; c++) {
        fx_store(&f, fast_limits[c], 4 * PAGE, (st_kv_pages_options){.page_bytes = PAGE, .spill_dir = f.dir});
        sim m = {.kv = f.kv};
        assert_int_equal(st_kv_pages_add_stream(m.kv, SIM_D * sizeof(float), false, "layer 0 csa", &m.main_kv), 0);
        assert_int_equal(st_kv_pages_add_stream(m.kv, SIM_ID * sizeof(float), true, "layer 0 indexer keys", &m.keys), 0);
        for (int64_t t = 0; t < SIM_STEPS; t++) {
            sim_step(&m, t, NULL, NULL, got);
            if (memcmp(got, want + t * SIM_D, sizeof got)) fail_msg("budget %d: step %lld differs", c, (long long)t);
        }
        st_kv_pages_stats st;
        st_kv_pages_get_stats(m.kv, &st);
        if (c == 0) assert_int_equal(st.spilled_dram + st.spilled_nvme, 0);
        else { assert_true(st.spilled_nvme > 0); assert_true(st.fetched_nvme + st.fetched_dram > 0); }
        assert_true(st_budget_peak(f.fast) <= fast_limits[c]);
        assert_true(st_budget_peak(f.dram) <= 4 * PAGE);
        fx_free_store(&f);
    }
    free(ref_main); free(ref_keys); free(want);
    fx_close(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_tier_returns_the_appended_bytes),
        cmocka_unit_test(pins_and_resident_streams_hold),
        cmocka_unit_test(prefetch_then_get_hits),
        cmocka_unit_test(get_counts_overlap_and_missing),
        cmocka_unit_test(get_waits_out_prefetched_frames),
        cmocka_unit_test(budgets_are_hard_limits),
        cmocka_unit_test(io_faults_propagate),
        cmocka_unit_test(spill_file_is_private),
        cmocka_unit_test(truncate_and_reset),
        cmocka_unit_test(bad_input_is_an_error),
        cmocka_unit_test(gather_copies_any_set_at_the_least_budget),
        cmocka_unit_test(gather_bad_input_and_read_errors),
        cmocka_unit_test(million_entries_run_quickly),
        cmocka_unit_test(attention_from_pages_is_bit_identical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
