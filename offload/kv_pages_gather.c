/* KV page store, the gather (API in offload/kv_pages.h): a set of entries
 * copied into the caller's buffer a few pages at a time, for sets whose pages
 * a get cannot pin at once (a token's top-k at the least fast budget).
 *
 * Must never: copy from a page that is not fully read, keep a page of the
 * call pinned after it returns, or need more than one free fast frame. */
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "offload/kv_pages_internal.h"

/* Missing pages fetched (and pinned) together: their reads overlap, and a
 * larger budget is not drained to make room for them. */
enum { GATHER_BATCH = 8 };

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Copies the entries of one page's run keys[0..n) (all on page `pg`). */
static void copy_run(const kv_stream *s, int64_t pg, const int32_t *idx, const uint64_t *keys, int64_t n,
                     uint8_t *dst, size_t stride) {
    const uint8_t *base = s->pages[pg].fast;
    for (int64_t k = 0; k < n; k++) {
        const int64_t i = (int64_t)(uint32_t)keys[k];
        memcpy(dst + (size_t)i * stride, base + (size_t)(idx[i] % s->per_page) * s->entry_bytes, s->entry_bytes);
    }
}

/* End of the run of keys starting at k (same page). */
static int64_t run_end(const uint64_t *keys, int64_t n, int64_t k) {
    int64_t e = k + 1;
    while (e < n && keys[e] >> 32 == keys[k] >> 32) e++;
    return e;
}

/* Fetches and copies the missing runs starting at keys[*k]: up to GATHER_BATCH
 * pages, as many as fast frames can be had for (one at least), pinned to s
 * while their reads complete, copied, then unpinned. Advances *k past them. */
static int gather_batch(st_kv_pages *kv, int si, const int32_t *idx, const uint64_t *keys, const uint8_t *missing,
                        int64_t n, int64_t *k, uint8_t *dst, size_t stride) {
    kv_stream *s = &kv->streams[si];
    int rc = st_grow((void **)&s->pinned, &s->cap_pinned, GATHER_BATCH, sizeof *s->pinned);
    if (rc) return rc;
    kv->mark++; /* pages copied earlier are no longer this call's: their frames may go */
    int64_t from = *k, to = *k, pages = 0;
    for (; to < n && pages < GATHER_BATCH; to = run_end(keys, n, to)) {
        if (!missing[to]) continue;
        const int64_t pg = (int64_t)(keys[to] >> 32);
        const uint64_t h = kv_handle(si, pg);
        kv_page *p = &s->pages[pg];
        p->mark = kv->mark;
        if (!p->fast) {
            void *f;
            rc = kv_fast_frame(kv, h, &f);
            if (rc == ST_ERR_BUDGET && pages > 0) { st_error_clear(); rc = 0; break; } /* the batch is what fits */
            if (rc || (rc = kv_page_fill(kv, h, f))) break;
            kv->st.gather_fetched++;
        }
        kv_pin(kv, s, h);
        pages++;
    }
    int src = kv_submit_reads(kv); /* the batch's reads go out together */
    if (!rc) rc = src;
    for (int64_t r = 0; r < s->n_pinned && !rc; r++)
        if (kv_page_at(kv, s->pinned[r])->loading) rc = kv_wait(kv, s->pinned[r]);
    for (int64_t r = 0; r < s->n_pinned && !rc; r++)
        if (!kv_page_at(kv, s->pinned[r])->fast) rc = kv_read_failed(kv, s->pinned[r]);
    for (int64_t j = from; j < to && !rc; j = run_end(keys, n, j))
        if (missing[j]) copy_run(s, (int64_t)(keys[j] >> 32), idx, keys + j, run_end(keys, n, j) - j, dst, stride);
    kv_unpin_to(kv, s, 0);
    kv->st.gather_batches += !rc;
    *k = to;
    return rc;
}

int st_kv_pages_gather(st_kv_pages *kv, int stream, const int32_t *idx, int64_t n, void *dst, size_t stride) {
    kv_stream *s = kv_stream_of(kv, stream);
    if (!s) return kv_bad_stream(kv, stream);
    kv_unpin_to(kv, s, 0);
    if (n < 0 || n > INT32_MAX || (n && (!idx || !dst)))
        return st_error(ST_ERR_INVALID, "kv pages: stream '%s': gather needs 0..2^31-1 indices and a buffer, found %lld",
                        s->name, (long long)n);
    if (stride < s->entry_bytes)
        return st_error(ST_ERR_INVALID, "kv pages: stream '%s': gather stride %zu is below the entry size %zu", s->name,
                        stride, s->entry_bytes);
    if (n == 0) return 0;
    /* positions ordered by page: each page's entries are copied in one visit */
    int rc = st_grow((void **)&kv->gather_keys, &kv->cap_gather_keys, n + (n + 7) / 8, sizeof *kv->gather_keys);
    if (rc) return rc;
    uint64_t *keys = kv->gather_keys;
    uint8_t *missing = (uint8_t *)(keys + n); /* (n) per run start: the page was not in fast memory */
    for (int64_t i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= s->count)
            return st_error(ST_ERR_INVALID, "kv pages: stream '%s': gather index %d at position %lld is out of range (%lld entries)",
                            s->name, idx[i], (long long)i, (long long)s->count);
        keys[i] = (uint64_t)(idx[i] / s->per_page) << 32 | (uint64_t)i;
    }
    qsort(keys, (size_t)n, sizeof *keys, cmp_u64);
    kv->st.gathers++;
    /* what is in fast memory (or being read into it) first: copied before any frame is asked for,
     * so fetching the rest may take their frames */
    int64_t n_missing = 0;
    for (int64_t k = 0; k < n; k = run_end(keys, n, k)) {
        const int64_t pg = (int64_t)(keys[k] >> 32), e = run_end(keys, n, k);
        kv_page *p = &s->pages[pg];
        kv->st.gather_pages++;
        missing[k] = !p->fast;
        if (missing[k]) { n_missing++; continue; }
        kv->st.hits++;
        if (p->loading && (rc = kv_wait(kv, kv_handle(stream, pg)))) return rc;
        if (!p->fast) return kv_read_failed(kv, kv_handle(stream, pg)); /* a prefetch that failed */
        copy_run(s, pg, idx, keys + k, e - k, dst, stride);
    }
    for (int64_t k = 0; k < n && n_missing && !rc;) rc = gather_batch(kv, stream, idx, keys, missing, n, &k, dst, stride);
    return rc;
}
