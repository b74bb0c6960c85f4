/* The emulated GPU device (offload/gpu_device.h): host memory stands in for
 * device memory, and every operation queued on a stream is only recorded; it
 * runs when the host waits for it (event sync, stream sync, every second
 * event_done query of an unfinished event, stream free). So a caller that
 * reads a result before waiting, or changes host memory a queued copy still
 * reads, gets wrong numbers here, as it would on a real GPU now and then.
 * Device memory is filled with 0xff (NaN floats) when allocated: reading
 * bytes nobody copied shows up in the results.
 * Host memory registration (page-locking) is recorded: copies are counted as
 * from pinned or pageable memory, and every registration goes to a log that
 * outlives the device (st_gpu_emu_pins) so tests can check what was pinned and
 * that it was unregistered once, while the memory was still there.
 * Must never: run queued work at enqueue time. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "offload/gpu_device.h"

bool st_gpu_emu_perturb;
bool st_gpu_emu_host_only;
bool st_gpu_emu_pin_fail;

static pthread_mutex_t pin_lock = PTHREAD_MUTEX_INITIALIZER;
static st_gpu_emu_pin *pin_log;
static int n_pin_log;
static int64_t cap_pin_log;

typedef enum { OP_COPY, OP_FFN } op_kind;

typedef struct emu_op {
    op_kind kind;
    void *dst;
    const void *src;
    size_t bytes;
    st_gpu_ffn ffn;
} emu_op;

typedef struct emu_stream {
    emu_op *q;        /* ops [done, queued) are pending */
    uint64_t queued, done, cap;
    int status;       /* first error of the stream's work (reported at the next wait) */
    char msg[256];
} emu_stream;

typedef struct emu_event {
    emu_stream *s; /* NULL: never recorded (done) */
    uint64_t seq;  /* done when s->done >= seq */
    unsigned queries;
} emu_event;

typedef struct emu_alloc { void *p; size_t bytes; } emu_alloc;

typedef struct emu_dev {
    st_gpu_host_ffn host_ffn;
    emu_alloc *allocs;
    int n_allocs;
    int64_t cap_allocs;
    emu_alloc *pins; /* host ranges registered now */
    int n_pins;
    int64_t cap_pins;
    st_gpu_emu_stats st;
} emu_dev;

static int emu_alloc_mem(void *ctx, size_t bytes, void **out) {
    emu_dev *d = ctx;
    *out = NULL;
    int rc = st_grow((void **)&d->allocs, &d->cap_allocs, d->n_allocs + 1, sizeof *d->allocs);
    if (rc) return rc;
    void *p = st_aligned_alloc(256, bytes ? bytes : 1);
    if (!p) return st_error(ST_ERR_NOMEM, "emulated GPU: out of memory for %zu bytes", bytes);
    memset(p, 0xff, bytes);
    d->allocs[d->n_allocs++] = (emu_alloc){p, bytes};
    d->st.allocated += bytes;
    d->st.peak = ST_MAX(d->st.peak, d->st.allocated);
    *out = p;
    return 0;
}

static void emu_free_mem(void *ctx, void *p) {
    emu_dev *d = ctx;
    if (!p) return;
    for (int i = 0; i < d->n_allocs; i++)
        if (d->allocs[i].p == p) {
            d->st.allocated -= d->allocs[i].bytes;
            d->allocs[i] = d->allocs[--d->n_allocs];
            free(p);
            return;
        }
    ST_ASSERT(!"emulated GPU: free of a pointer it did not allocate");
}

static int run_ffn(emu_dev *d, const st_gpu_ffn *f) {
    int rc = ST_ERR_UNSUPPORTED;
    if (st_gpu_compiled() && !st_gpu_emu_host_only) {
        rc = st_gpu_emulate_expert_ffn(f);
        if (!rc) d->st.ffn_kernel++;
    }
    if (rc == ST_ERR_UNSUPPORTED && d->host_ffn) { /* no kernels (or not built yet): the CPU's numbers */
        st_error_clear();
        rc = d->host_ffn(f);
        if (!rc) d->st.ffn_host++;
    }
    if (!rc && st_gpu_emu_perturb) /* a few percent on every output: survives every later rounding */
        for (int64_t i = 0; i < f->n * f->w2.rows; i++) f->o[i] *= 1.03125f;
    return rc;
}

/* Runs s's queued work up to op number `until`. */
static int run_until(emu_dev *d, emu_stream *s, uint64_t until) {
    if (s->done < until) d->st.deferred_runs++;
    while (s->done < until) {
        emu_op *op = &s->q[s->done % s->cap];
        int rc = 0;
        if (op->kind == OP_COPY) memcpy(op->dst, op->src, op->bytes);
        else rc = run_ffn(d, &op->ffn);
        if (rc && !s->status) {
            s->status = rc;
            snprintf(s->msg, sizeof s->msg, "%s", st_last_error());
        }
        s->done++;
        d->st.ops_run++;
    }
    if (s->status) {
        int rc = s->status;
        s->status = 0;
        return st_error(rc, "emulated GPU: %s", s->msg);
    }
    return 0;
}

static int enqueue(emu_dev *d, emu_stream *s, const emu_op *op) {
    if (!s) return st_error(ST_ERR_INVALID, "emulated GPU: work needs a stream");
    if (s->queued - s->done == s->cap) { /* ring full: grow it, keeping the pending ops in order */
        uint64_t cap = s->cap ? 2 * s->cap : 64;
        emu_op *q = malloc(cap * sizeof *q);
        if (!q) return st_error(ST_ERR_NOMEM, "emulated GPU: out of memory");
        for (uint64_t i = s->done; i < s->queued; i++) q[i % cap] = s->q[i % s->cap];
        free(s->q);
        s->q = q;
        s->cap = cap;
    }
    s->q[s->queued % s->cap] = *op;
    s->queued++;
    d->st.ops_queued++;
    return 0;
}

static int emu_stream_new(void *ctx, void **out) {
    (void)ctx;
    *out = calloc(1, sizeof(emu_stream));
    return *out ? 0 : st_error(ST_ERR_NOMEM, "emulated GPU: out of memory");
}

static int emu_stream_sync(void *ctx, void *stream) {
    emu_stream *s = stream;
    return s ? run_until(ctx, s, s->queued) : 0;
}

static void emu_stream_free(void *ctx, void *stream) {
    emu_stream *s = stream;
    if (!s) return;
    if (emu_stream_sync(ctx, s)) ST_WARN("%s", st_last_error());
    free(s->q);
    free(s);
}

static bool pinned(const emu_dev *d, const void *host, size_t bytes) {
    const uintptr_t a = (uintptr_t)host;
    for (int i = 0; i < d->n_pins; i++) {
        const uintptr_t p = (uintptr_t)d->pins[i].p;
        if (a >= p && a - p <= d->pins[i].bytes && bytes <= d->pins[i].bytes - (a - p)) return true;
    }
    return false;
}

static int emu_copy_to_device(void *ctx, void *dev, const void *host, size_t bytes, void *stream) {
    emu_dev *d = ctx;
    if (pinned(d, host, bytes)) d->st.copied_pinned += bytes;
    else d->st.copied_pageable += bytes;
    return enqueue(ctx, stream, &(emu_op){.kind = OP_COPY, .dst = dev, .src = host, .bytes = bytes});
}

/* Reads a byte of every page: the range must be memory this process can read. */
static void touch(const void *p, size_t bytes) {
    const volatile uint8_t *b = p;
    uint8_t sum = 0;
    for (size_t off = 0; off < bytes; off += 4096) sum ^= b[off];
    (void)sum;
}

static int emu_host_register(void *ctx, void *host, size_t bytes, bool read_only) {
    emu_dev *d = ctx;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (st_gpu_emu_pin_fail)
        return st_error(ST_ERR_NOMEM, "emulated GPU: pin %p (%zu bytes): refused (st_gpu_emu_pin_fail)", host, bytes);
    if (!host || !bytes || (uintptr_t)host % page || bytes % page)
        return st_error(ST_ERR_INVALID, "emulated GPU: pin %p (%zu bytes): expected a non-empty page-aligned range", host, bytes);
    const uintptr_t a = (uintptr_t)host;
    for (int i = 0; i < d->n_pins; i++) {
        const uintptr_t p = (uintptr_t)d->pins[i].p;
        if (a < p + d->pins[i].bytes && p < a + bytes)
            return st_error(ST_ERR_INVALID, "emulated GPU: pin %p (%zu bytes): overlaps the registered %p (%zu bytes)",
                            host, bytes, d->pins[i].p, d->pins[i].bytes);
    }
    touch(host, bytes);
    int rc = st_grow((void **)&d->pins, &d->cap_pins, d->n_pins + 1, sizeof *d->pins);
    if (rc) return rc;
    pthread_mutex_lock(&pin_lock);
    if ((rc = st_grow((void **)&pin_log, &cap_pin_log, n_pin_log + 1, sizeof *pin_log))) {
        pthread_mutex_unlock(&pin_lock);
        return rc;
    }
    pin_log[n_pin_log++] = (st_gpu_emu_pin){.p = host, .bytes = bytes, .read_only = read_only};
    pthread_mutex_unlock(&pin_lock);
    d->pins[d->n_pins++] = (emu_alloc){host, bytes};
    d->st.pinned_ranges = d->n_pins;
    return 0;
}

static void emu_host_unregister(void *ctx, void *host) {
    emu_dev *d = ctx;
    if (!host) return;
    pthread_mutex_lock(&pin_lock); /* the latest registration of host: counts a second unregister too */
    for (int i = n_pin_log - 1; i >= 0; i--)
        if (pin_log[i].p == host) {
            pin_log[i].unregistered++;
            break;
        }
    pthread_mutex_unlock(&pin_lock);
    for (int i = 0; i < d->n_pins; i++)
        if (d->pins[i].p == host) {
            touch(host, d->pins[i].bytes); /* still there: it is unregistered before being freed */
            d->pins[i] = d->pins[--d->n_pins];
            d->st.pinned_ranges = d->n_pins;
            return;
        }
    ST_WARN("emulated GPU: unpin %p: not registered", host);
}

int st_gpu_emu_pins(const st_gpu_emu_pin **out) {
    pthread_mutex_lock(&pin_lock);
    *out = pin_log;
    int n = n_pin_log;
    pthread_mutex_unlock(&pin_lock);
    return n;
}

void st_gpu_emu_pins_reset(void) {
    pthread_mutex_lock(&pin_lock);
    free(pin_log);
    pin_log = NULL;
    n_pin_log = cap_pin_log = 0;
    pthread_mutex_unlock(&pin_lock);
}

static int emu_copy_to_host(void *ctx, void *host, const void *dev, size_t bytes, void *stream) {
    return enqueue(ctx, stream, &(emu_op){.kind = OP_COPY, .dst = host, .src = dev, .bytes = bytes});
}

static int emu_event_new(void *ctx, void **out) {
    (void)ctx;
    *out = calloc(1, sizeof(emu_event));
    return *out ? 0 : st_error(ST_ERR_NOMEM, "emulated GPU: out of memory");
}

static void emu_event_free(void *ctx, void *event) {
    (void)ctx;
    free(event);
}

static int emu_event_record(void *ctx, void *event, void *stream) {
    (void)ctx;
    emu_event *e = event;
    emu_stream *s = stream;
    if (!e || !s) return st_error(ST_ERR_INVALID, "emulated GPU: event record needs an event and a stream");
    e->s = s;
    e->seq = s->queued;
    e->queries = 0;
    return 0;
}

static int emu_event_done(void *ctx, void *event) {
    emu_event *e = event;
    if (!e->s || e->s->done >= e->seq) return 1;
    if (e->queries++ % 2 == 0) return 0; /* not yet: callers must cope with that */
    int rc = run_until(ctx, e->s, e->seq);
    return rc ? rc : 1;
}

static int emu_event_sync(void *ctx, void *event) {
    emu_event *e = event;
    return e->s ? run_until(ctx, e->s, e->seq) : 0;
}

static int emu_expert_ffn(void *ctx, const st_gpu_ffn *f, void *stream) {
    if (!f->x || !f->o || f->n < 0) return st_error(ST_ERR_INVALID, "emulated GPU: expert FFN without x or o");
    return enqueue(ctx, stream, &(emu_op){.kind = OP_FFN, .ffn = *f});
}

/* The kernels' scratch, but never less than the hidden activations (n, inter) x 2 a GPU
 * needs: the budget is then meaningful even while the kernels report 0. */
static size_t emu_scratch_bytes(void *ctx, int64_t inter, int64_t n) {
    (void)ctx;
    size_t k = st_gpu_compiled() ? st_gpu_ffn_scratch_bytes(inter, n) : 0;
    return ST_MAX(k, (size_t)(2 * inter * n) * sizeof(float));
}

static void emu_destroy(void *ctx) {
    emu_dev *d = ctx;
    if (d->n_allocs) ST_WARN("emulated GPU: %d allocation(s) not freed", d->n_allocs);
    if (d->n_pins) ST_WARN("emulated GPU: %d host range(s) still registered", d->n_pins);
    free(d->pins);
    for (int i = 0; i < d->n_allocs; i++) free(d->allocs[i].p);
    free(d->allocs);
    free(d);
}

static const st_gpu_dev_ops emu_ops = {
    .name = "emulated",
    .alloc = emu_alloc_mem, .free = emu_free_mem,
    .stream_new = emu_stream_new, .stream_free = emu_stream_free, .stream_sync = emu_stream_sync,
    .copy_to_device = emu_copy_to_device, .copy_to_host = emu_copy_to_host,
    .host_register = emu_host_register, .host_unregister = emu_host_unregister,
    .event_new = emu_event_new, .event_free = emu_event_free, .event_record = emu_event_record,
    .event_done = emu_event_done, .event_sync = emu_event_sync,
    .expert_ffn = emu_expert_ffn, .ffn_scratch_bytes = emu_scratch_bytes, .destroy = emu_destroy,
};

int st_gpu_dev_emulated_new(st_gpu_host_ffn host_ffn, st_gpu_dev **out) {
    *out = NULL;
    st_gpu_dev *dev = calloc(1, sizeof *dev);
    emu_dev *d = calloc(1, sizeof *d);
    if (!dev || !d) { free(dev); free(d); return st_error(ST_ERR_NOMEM, "emulated GPU: out of memory"); }
    d->host_ffn = host_ffn;
    *dev = (st_gpu_dev){.ops = &emu_ops, .ctx = d};
    *out = dev;
    return 0;
}

int st_gpu_emu_get_stats(const st_gpu_dev *dev, st_gpu_emu_stats *out) {
    if (!dev || dev->ops != &emu_ops) return st_error(ST_ERR_INVALID, "not an emulated GPU device");
    *out = ((const emu_dev *)dev->ctx)->st;
    return 0;
}
