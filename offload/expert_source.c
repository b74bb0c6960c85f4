/* The expert stream (see expert_source.h): spans of each expert, the slot
 * cache sized from the budget, the multi-span io_uring transfer and the
 * layer-by-layer service of experts in residency order.
 * Must never: read an expert through a mapping or the page cache when O_DIRECT
 * works (except the warm copy, st_expert_stream_set_warm_copy: only pages the
 * cache already holds), hold memory beyond the slots it was given, or hand out
 * a slot whose load failed. */
#include "offload/expert_source.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "io/uring.h"
#include "offload/page_cache_copy.h"
#include "offload/slot_cache.h"

enum { ALIGN = 4096, MERGE_GAP = 64 * 1024, IO_MAX_DONE = 32, WARM_HOLES = 8 };

typedef struct span {
    uint64_t offset, length; /* in the file (aligned unless tail) */
    uint64_t slot_offset;    /* where it lands in the slot (4096-aligned) */
    int file;
    bool tail;               /* ends at end of file unaligned: read through the buffered engine */
} span;

typedef struct load_state {
    int pending, status;
    uint64_t bytes;
    char msg[256];
} load_state;

struct st_expert_stream {
    int n_layers, n_experts, n_pieces;
    int prefetch_depth;       /* the scheduler's loads in flight at most */
    /* per expert (layer * n_experts + expert) */
    span *spans;              /* (n_layers * n_experts * n_pieces) */
    uint8_t *n_spans;         /* (n_layers * n_experts) */
    uint64_t *piece_offset;   /* (n_layers * n_experts * n_pieces): piece start within the slot */
    uint64_t slot_bytes, expert_bytes, span_bytes;
    st_budget *own_budget, *budget;
    st_slot_cache *cache;
    st_io *io, *io_tail;      /* O_DIRECT engine; buffered engine for unaligned file tails (or NULL) */
    load_state *loads;        /* (n_slots) by tag = slot */
    st_transfer xfer;
    st_prefetch *pf;
    bool no_prefetch;
    bool serving_off; /* STRATA_CACHE_SERVING=0 (A/B runs): no st_slot_cache_set_serving */
    int64_t step;
    int step_need, last_step_need; /* experts begun in this step / in the previous one (all layers) */
    uint64_t reads, bytes_read;
    /* warm copy (set_warm_copy): buffered descriptors, loads done without a read, bytes copied */
    int *warm_fd;             /* (n_files) or NULL when off */
    int n_files;
    uint64_t *sync_done;      /* (n_slots) tags of loads finished at start, for the next poll */
    int n_sync_done;
    uint64_t bytes_copied;
    /* the layer being served */
    int layer, n_need, pos, group;
    int *need;                /* (n_experts) ascending */
    st_prefetch_batch batch;
    bool batch_open;
    uint64_t stall0;
};

static size_t eidx(const st_expert_stream *s, int layer, int expert) { return (size_t)layer * (size_t)s->n_experts + (size_t)expert; }
static int64_t deadline(const st_expert_stream *s, int layer) { return s->step * s->n_layers + layer; }

/* ---- the transfer: one key = its spans, done when every span is --------------------- */

/* 16 MiB is ~5 ms of this disk: about how long the engine takes to learn that a speculative read is
 * wrong (at 32 MiB, flash-2l read 133 MB per token at a 25% cache against 121 at 8 and 127 at 16,
 * with the same speed); bench io: 4 MiB pieces keep 0.92-0.99 of whole reads on a pack at 16 MiB */
enum { IO_PIECE = 4 << 20, IO_INFLIGHT = 16 << 20, IO_INFLIGHT_URGENT = 64 << 20 };

/* A size from the environment (A/B switches: "4M", "16777216", "0"), else dflt; a bad value
 * is reported and dflt kept. */
static size_t env_bytes(const char *name, size_t dflt) {
    const char *v = getenv(name);
    uint64_t b;
    if (!v) return dflt;
    if (st_parse_size(v, 0, name, &b)) { ST_WARN("%s (keeping %zu)", st_last_error(), dflt); st_error_clear(); return dflt; }
    return (size_t)b;
}

static int xfer_start(void *ctx, uint64_t key, void *dst, uint64_t bytes, uint64_t tag) {
    st_expert_stream *s = ctx;
    int layer = st_cache_key_layer(key), expert = st_cache_key_index(key);
    if (layer < 0 || layer >= s->n_layers || expert < 0 || expert >= s->n_experts)
        return st_error(ST_ERR_NOT_FOUND, "expert stream: no expert %d of layer %d", expert, layer);
    size_t e = eidx(s, layer, expert);
    const span *sp = &s->spans[e * (size_t)s->n_pieces];
    int n = s->n_spans[e], n_main = 0, n_tail = 0;
    st_io_read main[ST_STREAM_MAX_PIECES * WARM_HOLES], tail[ST_STREAM_MAX_PIECES];
    uint64_t copied = 0;
    for (int i = 0; i < n; i++) {
        if (sp[i].slot_offset + sp[i].length > bytes) return st_error(ST_ERR_INTERNAL, "expert stream: span beyond the slot");
        st_io_read r = {.file = sp[i].file, .offset = sp[i].offset, .length = (size_t)sp[i].length,
                        .dst = (char *)dst + sp[i].slot_offset, .tag = tag};
        if (s->warm_fd && s->warm_fd[r.file] >= 0 && st_io_file_direct(s->io, r.file)) {
            /* warm copy: the resident pages from the page cache, O_DIRECT reads for the rest only */
            st_extent_hole h[WARM_HOLES];
            int nh;
            uint64_t c;
            int rc = st_page_cache_copy(s->warm_fd[r.file], r.offset, r.length, r.dst, h, sp[i].tail ? 1 : WARM_HOLES, &nh, &c);
            if (rc) return rc;
            if (nh == 0) { copied += c; continue; }
            if (!sp[i].tail) {
                copied += c;
                for (int k = 0; k < nh; k++)
                    main[n_main++] = (st_io_read){.file = r.file, .offset = r.offset + h[k].offset, .length = (size_t)h[k].length,
                                                  .dst = (char *)r.dst + h[k].offset, .tag = tag};
                continue;
            } /* an unaligned tail with a hole: read whole through the buffered engine */
        }
        if (sp[i].tail) tail[n_tail++] = r;
        else main[n_main++] = r;
    }
    load_state *ls = &s->loads[tag];
    *ls = (load_state){.pending = n_main + n_tail, .bytes = copied};
    s->bytes_copied += copied;
    if (n_main + n_tail == 0) { /* all copied: done now, reported by the next poll */
        s->sync_done[s->n_sync_done++] = tag;
        return 0;
    }
    int rc = n_main ? st_io_submit(s->io, main, n_main) : 0;
    if (!rc && n_tail && (rc = st_io_submit(s->io_tail, tail, n_tail)) && n_main) {
        /* the main reads are in: let them finish as a failed load */
        st_io_cancel(s->io, tag);
        ls->pending = n_main;
        ls->status = rc;
        snprintf(ls->msg, sizeof ls->msg, "%s", st_last_error());
        return 0;
    }
    return rc;
}

static int reap_engine(st_expert_stream *s, st_io *io, st_transfer_done *out, int max, int timeout_ms) {
    if (!io) return 0;
    st_io_completion c[IO_MAX_DONE];
    max = ST_MIN(max, IO_MAX_DONE);
    int n = timeout_ms == 0 || st_io_outstanding(io) == 0 ? st_io_poll(io, c, max) : st_io_wait(io, c, max, 1, timeout_ms);
    if (n < 0) return n;
    int done = 0;
    for (int i = 0; i < n; i++) {
        load_state *ls = &s->loads[c[i].tag];
        if (c[i].status && !ls->status) {
            ls->status = c[i].status;
            snprintf(ls->msg, sizeof ls->msg, "%s", c[i].message[0] ? c[i].message : "read failed");
        }
        if (!c[i].status) {
            ls->bytes += c[i].bytes;
            s->reads++;
            s->bytes_read += c[i].bytes;
        }
        if (--ls->pending == 0) out[done++] = (st_transfer_done){c[i].tag, ls->status, ls->status ? 0 : ls->bytes};
    }
    return done;
}

static int xfer_poll(void *ctx, st_transfer_done *out, int max, int timeout_ms) {
    st_expert_stream *s = ctx;
    if (s->n_sync_done && max > 0) { /* warm copies finished at start */
        int k = ST_MIN(max, s->n_sync_done);
        for (int i = 0; i < k; i++) out[i] = (st_transfer_done){s->sync_done[i], 0, s->loads[s->sync_done[i]].bytes};
        memmove(s->sync_done, s->sync_done + k, (size_t)(s->n_sync_done - k) * sizeof *s->sync_done);
        s->n_sync_done -= k;
        return k;
    }
    int n = reap_engine(s, s->io_tail, out, max, 0);
    if (n < 0) return n;
    if (n == 0 && timeout_ms != 0 && st_io_outstanding(s->io) == 0 && s->io_tail && st_io_outstanding(s->io_tail))
        return reap_engine(s, s->io_tail, out, max, timeout_ms);
    int m = reap_engine(s, s->io, out + n, max - n, n ? 0 : timeout_ms);
    return m < 0 ? m : n + m;
}

static int xfer_cancel(void *ctx, uint64_t tag) {
    st_expert_stream *s = ctx;
    st_io_cancel(s->io, tag);
    if (s->io_tail) st_io_cancel(s->io_tail, tag);
    return 0;
}

/* A load the engine waits for (demand, or a late prefetch): its pieces not yet
 * in the kernel overtake the speculative ones. */
static int xfer_promote(void *ctx, uint64_t tag) {
    st_expert_stream *s = ctx;
    st_io_promote(s->io, tag);
    if (s->io_tail) st_io_promote(s->io_tail, tag);
    return 0;
}

/* ---- spans ----------------------------------------------------------------------------- */

static int cmp_piece(const void *a, const void *b) {
    const st_stream_piece *x = *(st_stream_piece *const *)a, *y = *(st_stream_piece *const *)b;
    if (x->file != y->file) return x->file < y->file ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Groups the pieces of one expert into aligned spans laid out in the slot. */
static int plan_expert(st_expert_stream *s, const st_stream_desc *d, int layer, int expert, const uint64_t *file_size,
                       uint64_t *slot_need) {
    st_stream_piece pieces[ST_STREAM_MAX_PIECES], *order[ST_STREAM_MAX_PIECES];
    int rc = d->locate(d->ctx, layer, expert, pieces);
    if (rc) return st_error_prefix(rc, "expert stream: layer %d expert %d: ", layer, expert);
    uint64_t bytes = 0;
    for (int i = 0; i < s->n_pieces; i++) {
        const st_stream_piece *p = &pieces[i];
        if (p->file < 0 || p->file >= d->n_files || p->bytes == 0 || p->offset + p->bytes > file_size[p->file])
            return st_error(ST_ERR_FORMAT, "expert stream: layer %d expert %d piece %d: bytes [%llu, +%llu) of file %d are "
                            "not inside %s (%llu bytes)", layer, expert, i, (unsigned long long)p->offset,
                            (unsigned long long)p->bytes, p->file, p->file >= 0 && p->file < d->n_files ? d->paths[p->file] : "?",
                            p->file >= 0 && p->file < d->n_files ? (unsigned long long)file_size[p->file] : 0ull);
        order[i] = &pieces[i];
        bytes += p->bytes;
    }
    s->expert_bytes = ST_MAX(s->expert_bytes, bytes);
    qsort(order, (size_t)s->n_pieces, sizeof *order, cmp_piece);
    size_t e = eidx(s, layer, expert);
    span *sp = &s->spans[e * (size_t)s->n_pieces];
    int n = 0;
    uint64_t slot_off = 0, span_total = 0;
    for (int i = 0; i < s->n_pieces; i++) {
        const st_stream_piece *p = order[i];
        uint64_t end = p->offset + p->bytes;
        if (n && sp[n - 1].file == p->file && p->offset <= sp[n - 1].offset + sp[n - 1].length + MERGE_GAP) {
            span *c = &sp[n - 1];
            uint64_t new_end = ST_MAX(c->offset + c->length, ST_ALIGN_UP(end, ALIGN));
            c->length = new_end - c->offset;
        } else {
            if (n) slot_off += ST_ALIGN_UP(sp[n - 1].length, ALIGN);
            uint64_t a = p->offset / ALIGN * ALIGN;
            sp[n++] = (span){.offset = a, .length = ST_ALIGN_UP(end, ALIGN) - a, .slot_offset = slot_off, .file = p->file};
        }
        /* the piece lands at its distance from the span's start */
        size_t pi = (size_t)(p - pieces);
        s->piece_offset[e * (size_t)s->n_pieces + pi] = sp[n - 1].slot_offset + (p->offset - sp[n - 1].offset);
    }
    for (int i = 0; i < n; i++) {
        if (sp[i].offset + sp[i].length > file_size[sp[i].file]) {
            sp[i].length = file_size[sp[i].file] - sp[i].offset; /* the file ends unaligned inside this span */
            sp[i].tail = true;
        }
        span_total += sp[i].length;
    }
    s->n_spans[e] = (uint8_t)n;
    s->span_bytes = ST_MAX(s->span_bytes, span_total);
    *slot_need = sp[n - 1].slot_offset + ST_ALIGN_UP(sp[n - 1].length, ALIGN);
    return 0;
}

/* ---- life ------------------------------------------------------------------------------ */

int st_expert_stream_new(const st_stream_desc *d, const st_stream_opts *o, st_expert_stream **out) {
    *out = NULL;
    st_stream_opts opt = o ? *o : (st_stream_opts){0};
    if (!d || d->n_layers <= 0 || d->n_experts <= 0 || d->n_pieces < 1 || d->n_pieces > ST_STREAM_MAX_PIECES ||
        d->n_files < 1 || !d->paths || !d->locate)
        return st_error(ST_ERR_INVALID, "expert stream: bad description");
    if (!opt.n_slots && !opt.cache_bytes && !opt.budget)
        return st_error(ST_ERR_INVALID, "expert stream: needs a cache size, a slot count or a budget");
    st_expert_stream *s = calloc(1, sizeof *s);
    if (!s) return st_error(ST_ERR_NOMEM, "expert stream: out of memory");
    s->n_layers = d->n_layers;
    s->n_experts = d->n_experts;
    s->n_pieces = d->n_pieces;
    s->no_prefetch = opt.no_prefetch;
    const char *serving = getenv("STRATA_CACHE_SERVING");
    s->serving_off = serving && !strcmp(serving, "0");
    s->layer = -1;
    size_t ne = (size_t)d->n_layers * (size_t)d->n_experts;
    int rc = ST_ERR_NOMEM;
    uint64_t *fsize = calloc((size_t)d->n_files, sizeof *fsize);
    s->spans = calloc(ne * (size_t)d->n_pieces, sizeof *s->spans);
    s->piece_offset = calloc(ne * (size_t)d->n_pieces, sizeof *s->piece_offset);
    s->n_spans = calloc(ne, 1);
    s->need = calloc((size_t)d->n_experts, sizeof *s->need);
    if (!fsize || !s->spans || !s->piece_offset || !s->n_spans || !s->need) {
        rc = st_error(ST_ERR_NOMEM, "expert stream: out of memory for %zu experts", ne);
        goto fail;
    }
    /* reads go to the kernel in pieces, a few MiB at a time: enough to keep the disk busy, while the
     * rest waits in the engine's queue where a read the engine waits for overtakes speculative ones
     * (xfer_promote) and a prediction proved wrong is dropped before it costs disk time */
    st_io_options io_opt = {.queue_depth = opt.io_depth ? opt.io_depth : 32, .buffered = opt.buffered, .faults = opt.faults,
                            .max_piece = env_bytes("STRATA_IO_PIECE", IO_PIECE),
                            .max_inflight_bytes = env_bytes("STRATA_IO_INFLIGHT", IO_INFLIGHT),
                            .max_inflight_urgent_bytes = env_bytes("STRATA_IO_INFLIGHT_URGENT", IO_INFLIGHT_URGENT)};
    if ((rc = st_io_open(d->paths, d->n_files, &io_opt, &s->io))) goto fail;
    for (int f = 0; f < d->n_files; f++) fsize[f] = st_io_file_size(s->io, f);
    bool tails = false;
    for (int l = 0; l < d->n_layers; l++)
        for (int e = 0; e < d->n_experts; e++) {
            uint64_t need = 0;
            if ((rc = plan_expert(s, d, l, e, fsize, &need))) goto fail;
            s->slot_bytes = ST_MAX(s->slot_bytes, need);
            const span *sp = &s->spans[eidx(s, l, e) * (size_t)s->n_pieces];
            for (int i = 0; i < s->n_spans[eidx(s, l, e)]; i++) tails |= sp[i].tail && st_io_file_direct(s->io, sp[i].file);
        }
    if (tails) {
        st_io_options t = io_opt;
        t.buffered = true;
        t.queue_depth = 8;
        if ((rc = st_io_open(d->paths, d->n_files, &t, &s->io_tail))) goto fail;
    } else {
        /* no unaligned tail: spans that end at end of file are aligned there; read them through the main engine */
        for (size_t i = 0; i < ne * (size_t)d->n_pieces; i++) s->spans[i].tail = false;
    }
    s->budget = opt.budget;
    if (!s->budget) {
        uint64_t lim = opt.cache_bytes ? opt.cache_bytes : UINT64_MAX;
        if ((rc = st_budget_new("dram expert cache", lim, &s->own_budget))) goto fail;
        s->budget = s->own_budget;
    }
    st_slot_cache_options co = {.name = "dram experts", .n_slots = opt.n_slots, .slot_bytes = s->slot_bytes,
                                .budget = s->budget, .mem_policy = opt.mem_policy, .node = opt.node, .policy = opt.policy};
    if ((rc = st_slot_cache_new(&co, &s->cache))) goto fail;
    int n_slots = st_slot_cache_slots(s->cache);
    if (n_slots < 2) {
        char a[32], b[32];
        rc = st_error(ST_ERR_BUDGET, "expert stream: budget '%s' (%s) holds %d slot(s) of %s: at least 2 are needed",
                      st_budget_name(s->budget), st_fmt_size(st_budget_limit(s->budget), a, sizeof a), n_slots,
                      st_fmt_size(st_slot_cache_stride(s->slot_bytes), b, sizeof b));
        goto fail;
    }
    /* fault the slots in now: an O_DIRECT read into untouched memory makes the
     * kernel fault and zero (huge) pages under the read, serialising reads that
     * land in the same huge page; the budget is held from here on anyway */
    for (int i = 0; i < n_slots; i++) {
        volatile char *b = st_slot_cache_buffer(s->cache, i);
        for (uint64_t k = 0; k < s->slot_bytes; k += ALIGN) b[k] = 0;
    }
    s->n_files = d->n_files;
    s->sync_done = calloc((size_t)n_slots, sizeof *s->sync_done);
    if (!s->sync_done || !(s->loads = calloc((size_t)n_slots, sizeof *s->loads))) { rc = st_error(ST_ERR_NOMEM, "expert stream: out of memory"); goto fail; }
    s->xfer = (st_transfer){xfer_start, xfer_poll, xfer_cancel, s, xfer_promote};
    /* cancel_in_flight: a started prefetch the router proved unneeded gives up the pieces it has
     * not read yet (most of it, with reads in pieces) instead of taking disk time from needed ones */
    st_prefetch_options po = {.queue_depth = opt.queue_depth ? opt.queue_depth : 8, .horizon = 2,
                              .demand_first = true, .cancel_in_flight = true};
    s->prefetch_depth = po.queue_depth;
    if ((rc = st_prefetch_new(s->cache, &s->xfer, &po, &s->pf))) goto fail;
    free(fsize);
    *out = s;
    return 0;
fail:
    free(fsize);
    st_expert_stream_free(s);
    return rc;
}

void st_expert_stream_free(st_expert_stream *s) {
    if (!s) return;
    if (s->batch_open) st_prefetch_batch_end(s->pf, &s->batch);
    st_prefetch_free(s->pf);
    st_io_close(s->io_tail);
    st_io_close(s->io);
    st_slot_cache_free(s->cache);
    st_budget_free(s->own_budget);
    st_expert_stream_set_warm_copy(s, NULL);
    free(s->sync_done);
    free(s->loads);
    free(s->spans);
    free(s->piece_offset);
    free(s->n_spans);
    free(s->need);
    free(s);
}

/* ---- steps, requests, predictions ----------------------------------------------------- */

void st_expert_stream_step(st_expert_stream *s) {
    s->step++;
    s->last_step_need = s->step_need;
    s->step_need = 0;
    st_prefetch_advance(s->pf, deadline(s, 0));
}

static int queue_keys(st_expert_stream *s, int layer, const int *experts, int n, bool replace) {
    if (s->no_prefetch || layer < 0 || layer >= s->n_layers) return 0;
    uint64_t keys[256];
    if (n > (int)ST_ARRAY_LEN(keys)) n = (int)ST_ARRAY_LEN(keys);
    int k = 0;
    for (int i = 0; i < n; i++)
        if (experts[i] >= 0 && experts[i] < s->n_experts) keys[k++] = st_cache_key_expert(layer, experts[i]);
    int rc = 0;
    if (replace) rc = st_prefetch_predict(s->pf, deadline(s, layer), keys, k, s->span_bytes);
    else
        for (int i = 0; !rc && i < k; i++) rc = st_prefetch_request(s->pf, keys[i], deadline(s, layer), s->span_bytes);
    return rc ? rc : st_prefetch_pump(s->pf);
}

int st_expert_stream_request(st_expert_stream *s, int layer, const int *experts, int n) {
    return queue_keys(s, layer, experts, n, false);
}
int st_expert_stream_predict(st_expert_stream *s, int layer, const int *experts, int n) {
    return queue_keys(s, layer, experts, n, true);
}
int st_expert_stream_pump(st_expert_stream *s) { return st_prefetch_pump(s->pf); }

/* ---- one layer ---------------------------------------------------------------------------- */

/* Slots outside the kept subset when a step overflows the cache: half. On flash-2l at batch 32
 * (269 experts a step, 127 slots) a kept fraction of 0.5 read the fewest bytes per token (0.3: +5%,
 * 0.4: +3%, 0.6: +4%, 0.7: +6%; LRU alone: +14%); a larger subset leaves groups too small to hide
 * the loads of the next behind the compute of the current. */
static int rotating_slots(int n_slots) { return ST_MAX(2, n_slots - n_slots / 2); }

static int open_group(st_expert_stream *s) {
    int n = ST_MIN(s->group, s->n_need - s->pos);
    uint64_t keys[ST_PREFETCH_BATCH_MAX];
    for (int i = 0; i < n; i++) keys[i] = st_cache_key_expert(s->layer, s->need[s->pos + i]);
    int rc = st_prefetch_batch_begin(s->pf, &s->batch, keys, n);
    if (rc) return st_error_prefix(rc, "layer %d: ", s->layer);
    s->batch_open = true;
    /* the next group streams while this one computes, into the slots left over */
    int rest = s->n_need - s->pos - n;
    int ahead = s->no_prefetch ? 0 : ST_MIN(rest, st_slot_cache_slots(s->cache) - n);
    for (int i = 0; i < ahead; i++)
        if ((rc = st_prefetch_request(s->pf, st_cache_key_expert(s->layer, s->need[s->pos + n + i]), deadline(s, s->layer),
                                      s->span_bytes)))
            return rc;
    return st_prefetch_pump(s->pf);
}

int st_expert_stream_begin(st_expert_stream *s, int layer, const int *experts, int n, bool *hit) {
    if (s->batch_open) st_expert_stream_end(s);
    if (layer < 0 || layer >= s->n_layers || n < 0 || n > s->n_experts)
        return st_error(ST_ERR_INVALID, "expert stream: layer %d with %d experts", layer, n);
    for (int i = 0; i < n; i++)
        if (experts[i] < 0 || experts[i] >= s->n_experts || (i && experts[i] <= experts[i - 1]))
            return st_error(ST_ERR_INVALID, "expert stream: layer %d: experts must be distinct, ascending, < %d", layer,
                            s->n_experts);
    st_prefetch_advance(s->pf, deadline(s, layer));
    if (!s->no_prefetch) {
        /* the router has spoken: queued predictions for this layer it did not choose are never read */
        uint64_t keys[ST_PREFETCH_BATCH_MAX * 4];
        int k = 0;
        for (int i = 0; i < n && k < (int)ST_ARRAY_LEN(keys); i++) keys[k++] = st_cache_key_expert(layer, experts[i]);
        if (k == n) st_prefetch_settle(s->pf, deadline(s, layer), keys, k);
    }
    /* Its unwanted experts give up their slots first: used again only a step later. */
    st_slot_cache_set_serving(s->cache, s->serving_off ? -1 : layer);
    /* The layer's whole set is known: its cached experts are wanted (evicted last), so the
     * loads of its first groups do not evict the ones its later groups use. */
    for (int i = 0; i < n; i++) st_slot_cache_want(s->cache, st_cache_key_expert(layer, experts[i]), true);
    /* A step that needs more experts than there are slots would make LRU evict every expert
     * before its next step: hold a kept subset then, and stream the rest through the others. */
    s->step_need += n;
    int est = ST_MAX(s->last_step_need, ST_MAX(s->step_need, n * s->n_layers));
    int n_slots = st_slot_cache_slots(s->cache);
    bool overflow = est > n_slots && n_slots >= 3;
    st_slot_cache_set_keep(s->cache, overflow ? n_slots - rotating_slots(n_slots) : 0);
    st_prefetch_pump(s->pf);
    if (hit) {
        memset(hit, 0, (size_t)n * sizeof *hit);
        for (int sl = 0, ns = st_slot_cache_slots(s->cache); sl < ns; sl++) {
            st_slot_state st;
            uint64_t key;
            if (st_slot_cache_slot_info(s->cache, sl, &st, &key, NULL) || st != ST_SLOT_RESIDENT ||
                st_cache_key_layer(key) != layer)
                continue;
            int e = st_cache_key_index(key), lo = 0, hi = n - 1;
            while (lo <= hi) {
                int mid = (lo + hi) / 2;
                if (experts[mid] == e) { hit[mid] = true; break; }
                if (experts[mid] < e) lo = mid + 1;
                else hi = mid - 1;
            }
        }
    }
    st_prefetch_stats ps;
    st_prefetch_get_stats(s->pf, &ps);
    s->stall0 = ps.stall_ns;
    s->layer = layer;
    s->n_need = n;
    s->pos = 0;
    memcpy(s->need, experts, (size_t)n * sizeof *experts);
    /* with a kept subset, groups share the other slots: one computes while the next loads */
    s->group = ST_MAX(1, ST_MIN(ST_PREFETCH_BATCH_MAX, overflow ? rotating_slots(n_slots) / 2 : n_slots - 1));
    return n ? open_group(s) : 0;
}

int st_expert_stream_next(st_expert_stream *s, int *expert, const void **pieces) {
    *expert = -1;
    while (s->batch_open) {
        int idx, slot;
        int r = st_prefetch_batch_next(s->pf, &s->batch, &idx, &slot);
        if (r == 1) {
            int e = st_cache_key_index(s->batch.keys[idx]);
            const char *buf = st_slot_cache_buffer(s->cache, slot);
            const uint64_t *po = &s->piece_offset[eidx(s, s->layer, e) * (size_t)s->n_pieces];
            for (int i = 0; i < s->n_pieces; i++) pieces[i] = buf + po[i];
            *expert = e;
            return 1;
        }
        if (r < 0) {
            int e = idx >= 0 ? st_cache_key_index(s->batch.keys[idx]) : -1;
            int sl = idx >= 0 ? s->batch.slots[idx] : -1;
            const char *msg = sl >= 0 && s->loads[sl].msg[0] ? s->loads[sl].msg : st_last_error();
            return st_error(r, "layer %d expert %d: loading from the NVMe tier failed: %s", s->layer, e, msg);
        }
        int done = s->batch.n;
        st_prefetch_batch_end(s->pf, &s->batch);
        s->batch_open = false;
        s->pos += done;
        if (s->pos >= s->n_need) break;
        int rc = open_group(s);
        if (rc) return rc;
    }
    return 0;
}

uint64_t st_expert_stream_end(st_expert_stream *s) {
    if (s->batch_open) st_prefetch_batch_end(s->pf, &s->batch);
    s->batch_open = false;
    /* experts never handed out (an early end) give up the mark begin set */
    for (int i = s->pos; i < s->n_need; i++) st_slot_cache_want(s->cache, st_cache_key_expert(s->layer, s->need[i]), false);
    s->pos = s->n_need;
    st_prefetch_stats ps;
    st_prefetch_get_stats(s->pf, &ps);
    return ps.stall_ns - s->stall0;
}

int st_expert_stream_slots(const st_expert_stream *s) { return st_slot_cache_slots(s->cache); }

void *st_expert_stream_slot_memory(const st_expert_stream *s, uint64_t *bytes) {
    *bytes = (uint64_t)st_slot_cache_slots(s->cache) * st_slot_cache_stride(s->slot_bytes);
    return st_slot_cache_buffer(s->cache, 0);
}

void st_expert_stream_get_stats(const st_expert_stream *s, st_stream_stats *out) {
    memset(out, 0, sizeof *out);
    st_prefetch_get_stats(s->pf, &out->pf);
    out->n_slots = st_slot_cache_slots(s->cache);
    out->slot_bytes = st_slot_cache_stride(s->slot_bytes);
    out->cache_bytes = (uint64_t)out->n_slots * out->slot_bytes;
    out->budget_peak = st_budget_peak(s->budget);
    out->expert_bytes = s->expert_bytes;
    out->span_bytes = s->span_bytes;
    out->reads = s->reads;
    out->bytes_read = s->bytes_read;
    out->bytes_copied = s->bytes_copied;
    st_slot_cache_stats cs;
    st_slot_cache_get_stats(s->cache, &cs);
    out->wanted_evictions = cs.wanted_evictions;
    out->kept_evictions = cs.kept_evictions;
    st_io_stats is;
    st_io_get_stats(s->io, &is);
    out->io_backend = is.backend;
    out->io_depth = is.queue_depth;
    out->io_promoted = is.promoted;
    out->io_peak_inflight = is.peak_inflight_bytes;
    out->prefetch_depth = s->prefetch_depth;
    out->files = is.files;
    out->direct_files = is.direct_files;
}

int st_expert_stream_set_warm_copy(st_expert_stream *s, const char *const *paths) {
    if (s->warm_fd) {
        for (int f = 0; f < s->n_files; f++)
            if (s->warm_fd[f] >= 0) close(s->warm_fd[f]);
        free(s->warm_fd);
        s->warm_fd = NULL;
    }
    if (!paths) return 0;
    if (!(s->warm_fd = malloc((size_t)s->n_files * sizeof *s->warm_fd))) return st_error(ST_ERR_NOMEM, "expert stream: out of memory");
    for (int f = 0; f < s->n_files; f++) s->warm_fd[f] = open(paths[f], O_RDONLY | O_CLOEXEC); /* -1: read it as before */
    return 0;
}
