/* KV page store, the stream side (API and design in offload/kv_pages.h):
 * streams, append, prefetch, get and span with pinning, truncate and reset.
 * Frames, eviction and the spill file are in offload/kv_pages_tier.c.
 *
 * Owns: which bytes an index names. Must never: hand out a pointer to a page
 * that is not pinned and fully read, or to bytes other than the ones appended. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "offload/kv_pages_internal.h"

int st_kv_pages_new(const st_kv_pages_options *opt, st_kv_pages **out) {
    *out = NULL;
    st_kv_pages_options o = opt ? *opt : (st_kv_pages_options){0};
    if (!o.page_bytes) o.page_bytes = 64 * 1024;
    if (o.page_bytes % 4096)
        return st_error(ST_ERR_INVALID, "kv pages: page_bytes must be a multiple of 4096, found %llu",
                        (unsigned long long)o.page_bytes);
    if (o.io_depth < 0 || o.io_depth > 4096)
        return st_error(ST_ERR_INVALID, "kv pages: io_depth must be 0..4096, found %d", o.io_depth);
    st_kv_pages *kv = calloc(1, sizeof *kv);
    if (!kv) return st_error(ST_ERR_NOMEM, "kv pages: out of memory");
    kv->page_bytes = o.page_bytes;
    kv->budget[TIER_FAST] = o.fast;
    kv->budget[TIER_DRAM] = o.dram;
    kv->spill_buffered = o.spill_buffered;
    kv->io_depth = o.io_depth ? o.io_depth : 64;
    kv->readahead = o.readahead == 0 ? 4 : ST_MAX(o.readahead, 0);
    kv->fd_write = kv->fd_buffered = -1;
    const char *measure = getenv("STRATA_KV_STATS");
    kv->measure = measure && *measure && *measure != '0';
    kv->lru_head = kv->lru_tail = KV_NONE;
    kv->mark = 1; /* pages start at 0: in no call's set */
    kv->st.page_bytes = o.page_bytes;
    kv->comps = calloc((size_t)kv->io_depth, sizeof *kv->comps);
    kv->spill_dir = o.spill_dir ? strdup(o.spill_dir) : NULL;
    kv->faults = o.io_faults ? strdup(o.io_faults) : NULL;
    if (!kv->comps || (o.spill_dir && !kv->spill_dir) || (o.io_faults && !kv->faults)) {
        st_kv_pages_free(kv);
        return st_error(ST_ERR_NOMEM, "kv pages: out of memory");
    }
    *out = kv;
    return 0;
}

void st_kv_pages_free(st_kv_pages *kv) {
    if (!kv) return;
    if (kv->measure && kv->st.gets) { /* what the tiers did over the store's life */
        const st_kv_pages_stats *t = &kv->st;
        fprintf(stderr, "kv pages: %llu gets, %.1f entries each (%.1f%% named by the stream's previous get), %.1f pages "
                        "each (%.1f%% named by the previous get), %.1f%% missing "
                        "from fast memory (%.1f%% missing and named before); %llu gathers (%.1f pages each, %llu fetched in %llu batches); "
                        "fetched %llu dram + %llu nvme (%.1f MiB read), prefetched %llu, dropped %llu, stall %.1f ms, spill writes %.1f ms\n",
                (unsigned long long)t->gets, (double)t->get_entries / (double)t->gets,
                100.0 * (double)t->get_entry_repeat / (double)ST_MAX(t->get_entries, 1), (double)t->get_pages / (double)t->gets,
                100.0 * (double)t->get_repeat / (double)ST_MAX(t->get_pages, 1),
                100.0 * (double)t->get_missing / (double)ST_MAX(t->get_pages, 1),
                100.0 * (double)t->get_missing_repeat / (double)ST_MAX(t->get_pages, 1), (unsigned long long)t->gathers,
                (double)t->gather_pages / (double)ST_MAX(t->gathers, 1), (unsigned long long)t->gather_fetched,
                (unsigned long long)t->gather_batches, (unsigned long long)t->fetched_dram,
                (unsigned long long)t->fetched_nvme, (double)t->bytes_read / 1048576.0, (unsigned long long)t->prefetched,
                (unsigned long long)t->dropped, (double)t->stall_ns / 1e6, (double)t->write_ns / 1e6);
    }
    kv_tier_close(kv);
    for (int i = 0; i < kv->n_streams; i++) {
        free(kv->streams[i].name);
        free(kv->streams[i].pages);
        free(kv->streams[i].pinned);
        free(kv->streams[i].prev_idx);
    }
    free(kv->streams);
    free(kv->free_slots);
    free(kv->comps);
    free(kv->reqs);
    free(kv->scratch);
    free(kv->gather_keys);
    free(kv->spill_dir);
    free(kv->faults);
    free(kv);
}

int st_kv_pages_add_stream(st_kv_pages *kv, size_t entry_bytes, bool resident, const char *name, int *stream) {
    if (!kv || !stream) return st_error(ST_ERR_INVALID, "kv pages: add_stream needs a store and a result");
    name = name ? name : "kv";
    if (entry_bytes == 0 || entry_bytes > kv->page_bytes)
        return st_error(ST_ERR_INVALID, "kv pages: stream '%s': entry_bytes must be 1..%llu (the page size), found %zu", name,
                        (unsigned long long)kv->page_bytes, entry_bytes);
    if (kv->n_streams >= (1 << 20)) return st_error(ST_ERR_INVALID, "kv pages: too many streams");
    int64_t cap = kv->cap_streams;
    int rc = st_grow((void **)&kv->streams, &cap, kv->n_streams + 1, sizeof *kv->streams);
    if (rc) return rc;
    kv->cap_streams = (int)cap;
    kv_stream *s = &kv->streams[kv->n_streams];
    memset(s, 0, sizeof *s);
    if (!(s->name = strdup(name))) return st_error(ST_ERR_NOMEM, "kv pages: out of memory");
    s->entry_bytes = entry_bytes;
    s->per_page = (int64_t)(kv->page_bytes / entry_bytes);
    s->io_bytes = ST_ALIGN_UP((size_t)s->per_page * entry_bytes, 4096);
    s->resident = resident;
    *stream = kv->n_streams++;
    kv->st.streams = kv->n_streams;
    return 0;
}

kv_stream *kv_stream_of(const st_kv_pages *kv, int stream) {
    return kv && stream >= 0 && stream < kv->n_streams ? &kv->streams[stream] : NULL;
}
int kv_bad_stream(const st_kv_pages *kv, int stream) {
    return st_error(ST_ERR_INVALID, "kv pages: no stream %d (the store has %d)", stream, kv ? kv->n_streams : 0);
}

int64_t st_kv_pages_count(const st_kv_pages *kv, int stream) {
    kv_stream *s = kv_stream_of(kv, stream);
    return s ? s->count : 0;
}
int64_t st_kv_pages_page_entries(const st_kv_pages *kv, int stream) {
    kv_stream *s = kv_stream_of(kv, stream);
    return s ? s->per_page : 0;
}
size_t st_kv_pages_entry_bytes(const st_kv_pages *kv, int stream) {
    kv_stream *s = kv_stream_of(kv, stream);
    return s ? s->entry_bytes : 0;
}
const char *st_kv_pages_spill_path(const st_kv_pages *kv) { return kv->spill_path; }
struct st_io *st_kv_pages_io(st_kv_pages *kv) { return kv->io; }

/* ---- pins ------------------------------------------------------------------------------ */

void kv_pin(st_kv_pages *kv, kv_stream *s, uint64_t h) {
    ST_ASSERT(s->n_pinned < s->cap_pinned);
    s->pinned[s->n_pinned++] = h;
    kv_page_at(kv, h)->pins++;
    kv_lru_remove(kv, h);
}

void kv_unpin_to(st_kv_pages *kv, kv_stream *s, int64_t keep) {
    while (s->n_pinned > keep) {
        uint64_t h = s->pinned[--s->n_pinned];
        kv_page *p = kv_page_at(kv, h);
        ST_ASSERT(p->pins > 0);
        if (--p->pins == 0 && p->fast && p->home != HOME_FAST && !p->loading) kv_lru_push(kv, h);
    }
}

void st_kv_pages_release(st_kv_pages *kv, int stream) {
    kv_stream *s = kv_stream_of(kv, stream);
    if (s) kv_unpin_to(kv, s, 0);
}

int kv_read_failed(st_kv_pages *kv, uint64_t h) {
    kv_stream *s = &kv->streams[kv_handle_stream(h)];
    if (kv->err_handle == h)
        return st_error(kv->err_status, "kv pages: stream '%s' page %lld: %s", s->name, (long long)kv_handle_page(h),
                        kv->err_msg);
    return st_error(ST_ERR_IO, "kv pages: stream '%s' page %lld: read from %s failed", s->name,
                    (long long)kv_handle_page(h), kv->spill_path);
}

/* ---- fetching -------------------------------------------------------------------------- */

/* Starts bringing pages hs[0..n) (distinct) into fast memory without
 * pinning: DRAM pages copied now, NVMe reads queued and submitted. Stops
 * quietly at the first page no frame can be found for. The pages are marked
 * with kv->mark (kept from eviction by this call) all at once, or, when
 * `in_order` (readahead: earlier pages matter more), each as it is reached. */
static int prefetch_pages(st_kv_pages *kv, const uint64_t *hs, int64_t n, bool in_order) {
    for (int64_t i = 0; i < n && !in_order; i++) {
        kv_page_at(kv, hs[i])->mark = kv->mark;
        if (kv_page_at(kv, hs[i])->in_lru) kv_lru_push(kv, hs[i]); /* the set's cached copies go last */
    }
    int rc = 0;
    for (int64_t i = 0; i < n && !rc; i++) {
        kv_page *p = kv_page_at(kv, hs[i]);
        p->mark = kv->mark;
        if (in_order && p->in_lru) kv_lru_push(kv, hs[i]);
        if (p->fast) continue;
        void *f;
        rc = kv_fast_frame(kv, hs[i], &f);
        if (rc == ST_ERR_BUDGET) { st_error_clear(); rc = 0; break; }
        if (rc) break;
        kv->st.prefetched++;
        rc = kv_page_fill(kv, hs[i], f);
        if (!rc && p->home == HOME_DRAM) kv_lru_push(kv, hs[i]);
    }
    int src = kv_submit_reads(kv);
    return rc ? rc : src;
}

/* Brings pages hs[0..n) (distinct, marked with kv->mark) into fast memory and
 * pins them to s; waits for their reads. On failure this call's pins are dropped. */
static int bring(st_kv_pages *kv, kv_stream *s, const uint64_t *hs, int64_t n) {
    const int64_t keep = s->n_pinned;
    int rc = st_grow((void **)&s->pinned, &s->cap_pinned, keep + n, sizeof *s->pinned);
    if (rc) return rc;
    for (int64_t i = 0; i < n; i++)
        if (kv_page_at(kv, hs[i])->fast) { kv_pin(kv, s, hs[i]); kv->st.hits++; }
    for (int64_t i = 0; i < n && !rc; i++) {
        kv_page *p = kv_page_at(kv, hs[i]);
        if (p->fast) continue;
        void *f;
        if ((rc = kv_fast_frame(kv, hs[i], &f)) || (rc = kv_page_fill(kv, hs[i], f))) break;
        kv_pin(kv, s, hs[i]);
    }
    int src = kv_submit_reads(kv); /* every read is queued before the first wait */
    if (!rc) rc = src;
    for (int64_t i = 0; i < n && !rc; i++)
        if (kv_page_at(kv, hs[i])->loading) rc = kv_wait(kv, hs[i]);
    uint64_t failed = KV_NONE; /* report the page whose error message was kept, else the first that failed */
    for (int64_t i = 0; i < n && !rc && failed != kv->err_handle; i++)
        if (!kv_page_at(kv, hs[i])->fast && (failed == KV_NONE || hs[i] == kv->err_handle)) failed = hs[i];
    if (!rc && failed != KV_NONE) rc = kv_read_failed(kv, failed);
    if (rc) kv_unpin_to(kv, s, keep);
    return rc;
}

/* Marks the distinct pages of idx[0..n) into kv->scratch; *m gets their count. */
static int collect(st_kv_pages *kv, int si, const int32_t *idx, int64_t n, int64_t *m) {
    kv_stream *s = &kv->streams[si];
    int rc = st_grow((void **)&kv->scratch, &kv->cap_scratch, n, sizeof *kv->scratch);
    if (rc) return rc;
    kv->mark++;
    *m = 0;
    for (int64_t i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= s->count)
            return st_error(ST_ERR_INVALID, "kv pages: stream '%s': index %d at position %lld is out of range (%lld entries)",
                            s->name, idx[i], (long long)i, (long long)s->count);
        int64_t pg = idx[i] / s->per_page;
        kv_page *p = &s->pages[pg];
        if (p->mark != kv->mark) { p->mark = kv->mark; kv->scratch[(*m)++] = kv_handle(si, pg); }
    }
    return 0;
}

int st_kv_pages_prefetch(st_kv_pages *kv, int stream, const int32_t *idx, int64_t n) {
    kv_stream *s = kv_stream_of(kv, stream);
    if (!s) return kv_bad_stream(kv, stream);
    if (n < 0 || (n && !idx)) return st_error(ST_ERR_INVALID, "kv pages: prefetch needs n >= 0 indices");
    int64_t m;
    int rc = collect(kv, stream, idx, n, &m);
    return rc ? rc : prefetch_pages(kv, kv->scratch, m, false);
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* STRATA_KV_STATS: how many of idx[0..n) the stream's previous get named too. */
static int measure_overlap(st_kv_pages *kv, kv_stream *s, const int32_t *idx, int64_t n) {
    int32_t *cur = malloc((size_t)ST_MAX(n, 1) * sizeof *cur);
    if (!cur) return st_error(ST_ERR_NOMEM, "kv pages: out of memory");
    memcpy(cur, idx, (size_t)n * sizeof *cur);
    qsort(cur, (size_t)n, sizeof *cur, cmp_i32);
    for (int64_t i = 0, j = 0; i < n && j < s->n_prev;) {
        if (cur[i] == s->prev_idx[j]) { kv->st.get_entry_repeat++; i++; j++; }
        else if (cur[i] < s->prev_idx[j]) i++;
        else j++;
    }
    kv->st.get_entries += (uint64_t)n;
    free(s->prev_idx);
    s->prev_idx = cur;
    s->n_prev = s->cap_prev = n;
    return 0;
}

int st_kv_pages_get(st_kv_pages *kv, int stream, const int32_t *idx, int64_t n, const void **ptrs) {
    kv_stream *s = kv_stream_of(kv, stream);
    if (!s) return kv_bad_stream(kv, stream);
    kv_unpin_to(kv, s, 0);
    if (n < 0 || (n && (!idx || !ptrs))) return st_error(ST_ERR_INVALID, "kv pages: get needs n >= 0 indices and room for pointers");
    int64_t m;
    int rc = collect(kv, stream, idx, n, &m);
    if (rc) return rc;
    s->gets++;
    kv->st.gets++;
    kv->st.get_pages += (uint64_t)m;
    int64_t repeat = 0;
    for (int64_t i = 0; i < m; i++) {
        kv_page *p = kv_page_at(kv, kv->scratch[i]);
        const bool again = p->last_get && p->last_get + 1 == s->gets;
        repeat += again;
        kv->st.get_missing += !p->fast;
        kv->st.get_missing_repeat += !p->fast && again;
        p->last_get = s->gets;
    }
    kv->st.get_repeat += (uint64_t)repeat;
    if (kv->measure && (rc = measure_overlap(kv, s, idx, n))) return rc;
    if ((rc = bring(kv, s, kv->scratch, m))) return rc;
    for (int64_t i = 0; i < n; i++)
        ptrs[i] = s->pages[idx[i] / s->per_page].fast + (size_t)(idx[i] % s->per_page) * s->entry_bytes;
    return 0;
}

int st_kv_pages_span(st_kv_pages *kv, int stream, int64_t first, const void **ptr, int64_t *n) {
    kv_stream *s = kv_stream_of(kv, stream);
    if (!s) return kv_bad_stream(kv, stream);
    if (!ptr || !n) return st_error(ST_ERR_INVALID, "kv pages: span needs room for the pointer and count");
    if (first < 0 || first >= s->count)
        return st_error(ST_ERR_INVALID, "kv pages: stream '%s': span at %lld is out of range (%lld entries)", s->name,
                        (long long)first, (long long)s->count);
    const int64_t pg = first / s->per_page;
    uint64_t h = kv_handle(stream, pg);
    kv->mark++;
    s->pages[pg].mark = kv->mark;
    const bool was_fast = s->pages[pg].fast != NULL;
    if (!was_fast && kv->readahead > 0) {
        /* queue this page and the next ones together, then wait for this one alone */
        int64_t last = ST_MIN(pg + kv->readahead, s->n_pages - 1), m = 0;
        int rc = st_grow((void **)&kv->scratch, &kv->cap_scratch, last - pg + 1, sizeof *kv->scratch);
        if (rc) return rc;
        for (int64_t i = pg; i <= last; i++) kv->scratch[m++] = kv_handle(stream, i);
        if ((rc = prefetch_pages(kv, kv->scratch, m, true))) return rc;
        kv->st.prefetched -= s->pages[pg].fast ? 1 : 0; /* this one was demanded, not prefetched */
    }
    const uint64_t hits = kv->st.hits;
    int rc = bring(kv, s, &h, 1);
    if (!was_fast) kv->st.hits = hits; /* fetched by this call: not a hit */
    if (rc) return rc;
    const int64_t at = first % s->per_page;
    *ptr = s->pages[pg].fast + (size_t)at * s->entry_bytes;
    *n = ST_MIN(s->per_page - at, s->count - first);
    return 0;
}

/* ---- append, truncate --------------------------------------------------------------------------- */

/* The stream's last page back home on the fast tier (it is written to). */
static int tail_home_fast(st_kv_pages *kv, int si) {
    kv_stream *s = &kv->streams[si];
    const int64_t pg = s->n_pages - 1;
    uint64_t h = kv_handle(si, pg);
    kv_page *p = &s->pages[pg];
    if (p->home == HOME_FAST) return 0;
    int rc = p->loading ? kv_wait(kv, h) : 0;
    if (rc) return rc;
    if (!p->fast) {
        void *f;
        if ((rc = kv_fast_frame(kv, h, &f))) return rc;
        p->fast = f;
        if (p->home == HOME_DRAM) {
            memcpy(f, p->dram, s->io_bytes);
            kv->st.fetched_dram++;
        } else {
            if ((rc = kv_read_sync(kv, h))) return rc;
            if (!p->fast) return kv_read_failed(kv, h);
        }
    }
    kv_lru_remove(kv, h);
    if (p->dram) kv_frame_put(kv, TIER_DRAM, p->dram);
    if (p->slot >= 0) kv->free_slots[kv->n_free_slots++] = p->slot;
    p->dram = NULL;
    p->slot = -1;
    p->home = HOME_FAST;
    s->fast_cursor = ST_MIN(s->fast_cursor, pg);
    return 0;
}

int st_kv_pages_truncate(st_kv_pages *kv, int stream, int64_t n) {
    kv_stream *s = kv_stream_of(kv, stream);
    if (!s) return kv_bad_stream(kv, stream);
    if (n < 0 || n > s->count)
        return st_error(ST_ERR_INVALID, "kv pages: stream '%s': cannot truncate to %lld entries (it has %lld)", s->name,
                        (long long)n, (long long)s->count);
    int rc = kv->io ? kv_wait(kv, KV_NONE) : 0; /* no read may land in a frame given away below */
    if (rc) return rc;
    kv_unpin_to(kv, s, 0);
    const int64_t keep = ST_DIV_UP(n, s->per_page);
    for (int64_t i = keep; i < s->n_pages; i++) kv_page_drop_all(kv, kv_handle(stream, i));
    s->n_pages = keep;
    s->count = n;
    s->fast_cursor = ST_MIN(s->fast_cursor, keep);
    s->dram_cursor = ST_MIN(s->dram_cursor, keep);
    return n % s->per_page ? tail_home_fast(kv, stream) : 0;
}

int st_kv_pages_reset(st_kv_pages *kv) {
    int rc = 0;
    for (int i = 0; kv && i < kv->n_streams; i++) {
        int r = st_kv_pages_truncate(kv, i, 0);
        if (!rc) rc = r;
    }
    return rc;
}

static int append_some(st_kv_pages *kv, int si, const uint8_t *src, int64_t n) {
    kv_stream *s = &kv->streams[si];
    while (n > 0) {
        int rc;
        if (s->count == s->n_pages * s->per_page) {
            if ((rc = st_grow((void **)&s->pages, &s->cap_pages, s->n_pages + 1, sizeof *s->pages))) return rc;
            void *f;
            if ((rc = kv_fast_frame(kv, kv_handle(si, s->n_pages), &f))) return rc;
            s->pages[s->n_pages++] = (kv_page){.fast = f, .slot = -1, .seq = kv->seq++, .home = HOME_FAST,
                                               .lru_prev = KV_NONE, .lru_next = KV_NONE};
        } else if ((rc = tail_home_fast(kv, si))) {
            return rc;
        }
        kv_page *p = &s->pages[s->n_pages - 1];
        int64_t at = s->count % s->per_page, k = ST_MIN(n, s->per_page - at);
        memcpy(p->fast + (size_t)at * s->entry_bytes, src, (size_t)k * s->entry_bytes);
        s->count += k;
        n -= k;
        src += (size_t)k * s->entry_bytes;
    }
    return 0;
}

int st_kv_pages_append(st_kv_pages *kv, int stream, const void *entries, int64_t n, int64_t *first) {
    kv_stream *s = kv_stream_of(kv, stream);
    if (!s) return kv_bad_stream(kv, stream);
    if (n < 0 || (n && !entries)) return st_error(ST_ERR_INVALID, "kv pages: stream '%s': append needs n >= 0 entries", s->name);
    if (s->count + n > INT32_MAX)
        return st_error(ST_ERR_INVALID, "kv pages: stream '%s': %lld + %lld entries exceed the 2^31 - 1 a stream holds", s->name,
                        (long long)s->count, (long long)n);
    const int64_t start = s->count;
    if (first) *first = start;
    kv->mark++;
    int rc = append_some(kv, stream, entries, n);
    if (rc && s->count != start) { /* all or none */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", st_last_error());
        st_kv_pages_truncate(kv, stream, start);
        st_error(rc, "%s", msg);
    }
    return rc;
}

/* ---- stats ------------------------------------------------------------------------------------------ */

uint64_t st_kv_pages_least_fast(const st_kv_pages *kv) {
    return kv->n_streams ? ((uint64_t)kv->n_streams + 1) * kv->page_bytes : 0;
}

void st_kv_pages_get_stats(const st_kv_pages *kv, st_kv_pages_stats *out) {
    *out = kv->st;
    out->pages_fast = out->pages_cached = out->pages_dram = out->pages_nvme = 0;
    for (int i = 0; i < kv->n_streams; i++)
        for (int64_t j = 0; j < kv->streams[i].n_pages; j++) {
            const kv_page *p = &kv->streams[i].pages[j];
            out->pages_fast += p->home == HOME_FAST;
            out->pages_cached += p->home != HOME_FAST && p->fast && !p->loading;
            out->pages_dram += p->home == HOME_DRAM;
            out->pages_nvme += p->home == HOME_NVME;
        }
    out->bytes_fast = kv->frames[TIER_FAST].allocated * kv->page_bytes;
    out->bytes_dram = kv->frames[TIER_DRAM].allocated * kv->page_bytes;
    out->bytes_nvme = (uint64_t)kv->n_slots * kv->page_bytes;
}
