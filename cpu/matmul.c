/* Matrix products y = x . W^T on every weight format (see cpu.h): validation,
 * activation preparation (BF16 -> F32, Q8 quantisation), per-thread scratch and
 * the split of output rows over the pool. No arithmetic here: the kernels live
 * in matmul_<isa>.c and are picked at call time from st_cpu_isa().
 *
 * Threads get whole rows (never part of a dot product), so y is bit-identical
 * for any thread count and any order in which they take the rows. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/formats.h"
#include "cpu/matmul_internal.h"

#define SERIAL_MACS (1ll << 16) /* below this much work, waking the pool costs more than it saves */

const st_mm_kernels *st_mm_active(void) {
    switch (st_cpu_isa()) {
    case ST_ISA_AVX512: return &st_mm_avx512;
    case ST_ISA_AVX2: return &st_mm_avx2;
    default: return &st_mm_generic;
    }
}

size_t st_mm_scratch_bytes(int64_t cols) {
    size_t kpad = (size_t)ST_ALIGN_UP(cols, ST_Q8_BLOCK);
    return 256 * kpad + (256 << 10); /* panels of 32 rows x kpad, plus the GEMM's partial sums */
}

/* ---- per-thread scratch, kept between calls, freed when the thread exits ---- */

typedef struct { void *p; size_t size; } scratch_buf;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *v) {
    scratch_buf *b = v;
    if (b) free(b->p);
    free(b);
}
static void scratch_init(void) { pthread_key_create(&scratch_key, scratch_free); }

static void *thread_scratch(size_t size) {
    pthread_once(&scratch_once, scratch_init);
    scratch_buf *b = pthread_getspecific(scratch_key);
    if (!b) {
        if (!(b = calloc(1, sizeof(*b)))) return NULL;
        pthread_setspecific(scratch_key, b);
    }
    if (b->size < size) {
        free(b->p);
        b->size = 0;
        if (!(b->p = st_aligned_alloc(64, size))) return NULL;
        b->size = size;
    }
    return b->p;
}

/* ---- jobs (also used by expert.c) ---- */

static int alloc_q8(st_mm_job *j) {
    j->q8 = true;
    j->nkb = ST_DIV_UP(j->w->cols, ST_Q8_BLOCK);
    j->kpad = j->nkb * ST_Q8_BLOCK;
    uint8_t *xq = st_aligned_alloc(64, (size_t)(j->n * j->kpad));
    float *xs = malloc((size_t)(j->n * j->nkb) * sizeof(float));
    if (!xq || !xs) {
        free(xq);
        free(xs);
        return st_error(ST_ERR_NOMEM, "matmul: no memory for %lld quantised activations", (long long)j->n);
    }
    j->xq = xq;
    j->xs = xs;
    j->own_q8 = true;
    return 0;
}

static int64_t xt_len(const st_mm_job *j) { return j->kern->xt_len ? j->kern->xt_len(j->w, j->n) : 0; }

/* Prepared-activation buffers come back to a small per-thread cache: a fresh
 * multi-MiB allocation per call costs page faults worth several percent of a GEMM. */
#define XT_CACHE 4
#define XT_CACHE_MAX ((size_t)32 << 20) /* larger buffers go back to the allocator */
typedef struct { scratch_buf slot[XT_CACHE]; } xt_cache;
static pthread_key_t xt_key;
static pthread_once_t xt_once = PTHREAD_ONCE_INIT;

static void xt_cache_free(void *v) {
    xt_cache *c = v;
    for (int i = 0; c && i < XT_CACHE; i++) free(c->slot[i].p);
    free(c);
}
static void xt_init(void) { pthread_key_create(&xt_key, xt_cache_free); }

static float *xt_get(size_t size) {
    pthread_once(&xt_once, xt_init);
    xt_cache *c = pthread_getspecific(xt_key);
    int best = -1;
    for (int i = 0; c && i < XT_CACHE; i++) /* the smallest cached buffer that fits */
        if (c->slot[i].p && c->slot[i].size >= size && (best < 0 || c->slot[i].size < c->slot[best].size)) best = i;
    if (best < 0) return st_aligned_alloc(64, size);
    float *p = c->slot[best].p;
    c->slot[best] = (scratch_buf){0};
    return p;
}

static void xt_put(float *p, size_t size) {
    if (!p) return;
    xt_cache *c = size <= XT_CACHE_MAX ? pthread_getspecific(xt_key) : NULL;
    if (!c && size <= XT_CACHE_MAX && (c = calloc(1, sizeof(*c)))) pthread_setspecific(xt_key, c);
    if (!c) { free(p); return; }
    int slot = 0; /* an empty slot, else the smallest buffer */
    for (int i = 0; i < XT_CACHE; i++) {
        if (!c->slot[i].p) { slot = i; break; }
        if (c->slot[i].size < c->slot[slot].size) slot = i;
    }
    if (c->slot[slot].p && c->slot[slot].size >= size) { free(p); return; }
    free(c->slot[slot].p);
    c->slot[slot] = (scratch_buf){p, size};
}

static size_t xt_bytes(const st_mm_job *j) { return (size_t)j->n * (size_t)j->xt_ld * sizeof(float); }

static int alloc_xt(st_mm_job *j, int64_t len) {
    float *xt = xt_get((size_t)j->n * (size_t)len * sizeof(float));
    if (!xt) return st_error(ST_ERR_NOMEM, "matmul: no memory for %lld prepared activations", (long long)j->n);
    j->xt = xt;
    j->xt_ld = len;
    j->own_xt = true;
    return 0;
}

int st_mm_job_init(st_mm_job *j, const st_weight *w, const float *x, int64_t n, float *y, st_act act) {
    *j = (st_mm_job){.w = w, .x = x, .n = n, .y = y, .ldy = w->rows, .kern = st_mm_active()};
    if (act == ST_ACT_Q8 && w->fmt == ST_WF_FP4) return alloc_q8(j);
    int64_t len = xt_len(j);
    return len > 0 ? alloc_xt(j, len) : 0;
}

int st_mm_job_init_from(st_mm_job *j, const st_weight *w, float *y, st_act act, const st_mm_job *src) {
    *j = (st_mm_job){.w = w, .x = src->x, .n = src->n, .y = y, .ldy = w->rows, .kern = st_mm_active()};
    ST_ASSERT(w->cols == src->w->cols);
    if (act == ST_ACT_Q8 && w->fmt == ST_WF_FP4) {
        if (!src->q8) return alloc_q8(j);
        j->q8 = true;
        j->xq = src->xq;
        j->xs = src->xs;
        j->kpad = src->kpad;
        j->nkb = src->nkb;
        return 0;
    }
    int64_t len = xt_len(j);
    if (len <= 0) return 0;
    /* the layout depends on the format only (same columns, same ISA) */
    if (src->xt && src->kern == j->kern && src->w->fmt == w->fmt && src->xt_ld == len) {
        j->xt = src->xt;
        j->xt_ld = len;
        return 0;
    }
    return alloc_xt(j, len);
}

void st_mm_job_free(st_mm_job *j) {
    if (j->own_q8) {
        free((void *)j->xq);
        free((void *)j->xs);
    }
    if (j->own_xt) xt_put((float *)j->xt, xt_bytes(j));
    j->xq = NULL;
    j->xs = NULL;
    j->xt = NULL;
    j->own_q8 = j->own_xt = false;
}

static void prepare_task(void *c, int ith, int nth) {
    st_mm_job *j = c;
    int64_t lo, hi;
    st_split(j->n, ith, nth, 1, &lo, &hi);
    if (lo >= hi) return;
    if (j->own_q8) j->kern->quant_x(j->x, j->w->cols, lo, hi, (uint8_t *)j->xq, (float *)j->xs, j->kpad, j->nkb);
    if (j->own_xt) j->kern->prep_x(j->w, j->x, lo, hi, (float *)j->xt, j->xt_ld);
}

void st_mm_job_prepare(st_pool *pool, st_mm_job *j) {
    if (j->own_q8 || j->own_xt) st_pool_run(pool, prepare_task, j);
}

int st_mm_job_rows(const st_mm_job *j, int64_t r0, int64_t r1) {
    if (r0 >= r1) return 0;
    void *scratch = thread_scratch(st_mm_scratch_bytes(j->w->cols));
    if (!scratch) return ST_ERR_NOMEM;
    (j->q8 ? j->kern->rows_q8 : j->kern->rows)(j, r0, r1, scratch);
    return 0;
}

/* Output rows are handed out in blocks from a shared counter rather than split
 * evenly up front: on a shared machine one thread often loses its core for a
 * while, and with a fixed split the whole product waits for it (the decode
 * head, 1 GB BF16, under load: mean 47 -> 33 ms in an interleaved A/B). Blocks
 * stay large enough that each thread still streams long runs of a weight (the
 * prefetch running past a block's end is then a few percent at most). */
#define MM_BLOCK_BYTES ((int64_t)2 << 20) /* most weight bytes per block */
#define MM_BLOCKS_PER_THREAD 4            /* fewest blocks per thread, for balance */

typedef struct {
    const st_mm_job *job;
    int64_t block; /* rows per block, a multiple of ST_MM_ROW_ALIGN */
    int64_t end;   /* rows [next's start, end) */
    _Atomic int64_t next;
    _Atomic int failed;
} mm_ctx;

static int64_t block_rows(const st_weight *w, int64_t rows, int nth) {
    const int64_t row_bytes = ST_MAX((int64_t)st_weight_data_bytes(w->fmt, 1, w->cols), 1);
    int64_t b = ST_MIN(MM_BLOCK_BYTES / row_bytes, ST_DIV_UP(rows, (int64_t)nth * MM_BLOCKS_PER_THREAD));
    return ST_MAX(ST_ALIGN_UP(b, ST_MM_ROW_ALIGN), ST_MM_ROW_ALIGN);
}

void (*st_mm_rows_observer)(const st_weight *w, int64_t r0, int64_t r1);

static void rows_task(void *c, int ith, int nth) {
    (void)ith, (void)nth;
    mm_ctx *m = c;
    for (;;) {
        int64_t lo = atomic_fetch_add_explicit(&m->next, m->block, memory_order_relaxed);
        if (lo >= m->end) return;
        int64_t hi = ST_MIN(lo + m->block, m->end);
        if (st_mm_rows_observer) st_mm_rows_observer(m->job->w, lo, hi);
        if (st_mm_job_rows(m->job, lo, hi)) { atomic_store(&m->failed, 1); return; }
    }
}

/* NUMA: each part of a split weight computed by the team on whose node it lives. */
_Static_assert(ST_ROW_SPLIT_ALIGN % ST_MM_ROW_ALIGN == 0, "split cuts fall on panel boundaries");
typedef struct {
    const st_mm_job *job;
    mm_ctx part[ST_ROW_SPLIT_MAX];
} split_ctx;

static void team_rows(void *c, int team, st_pool *team_pool) {
    split_ctx *s = c;
    const st_row_split *sp = s->job->w->split;
    mm_ctx *m = &s->part[team];
    const int64_t r0 = sp->first[team], r1 = sp->first[team + 1];
    m->job = s->job;
    m->block = block_rows(s->job->w, r1 - r0, st_pool_size(team_pool));
    m->end = r1;
    atomic_store(&m->next, r0);
    atomic_store(&m->failed, 0);
    st_pool_run(team_pool, rows_task, m);
}

static bool split_usable(st_pool *pool, const st_weight *w) {
    const st_row_split *sp = w->split;
    if (!pool || !sp || sp->n < 2 || sp->n > ST_ROW_SPLIT_MAX || st_pool_team_count(pool) != sp->n) return false;
    if (sp->first[0] != 0 || sp->first[sp->n] != w->rows) return false;
    for (int i = 0; i < sp->n; i++)
        if (sp->first[i] > sp->first[i + 1] || (i && sp->first[i] % ST_ROW_SPLIT_ALIGN)) return false;
    return true;
}

static int matmul_f32(st_pool *pool, const st_weight *w, const float *x, int64_t n, float *y, st_act act) {
    st_mm_job job;
    int rc = st_mm_job_init(&job, w, x, n, y, act);
    if (rc) return rc;
    if ((double)w->rows * (double)w->cols * (double)n < (double)SERIAL_MACS) pool = NULL;
    st_mm_job_prepare(pool, &job);
    bool failed = false;
    if (split_usable(pool, w)) {
        split_ctx s = {.job = &job};
        st_pool_run_teams(pool, team_rows, &s);
        for (int i = 0; i < w->split->n; i++) failed |= atomic_load(&s.part[i].failed) != 0;
    } else {
        mm_ctx m = {.job = &job, .block = pool ? block_rows(w, w->rows, st_pool_size(pool)) : w->rows, .end = w->rows};
        st_pool_run(pool, rows_task, &m);
        failed = atomic_load(&m.failed) != 0;
    }
    st_mm_job_free(&job);
    if (failed)
        return st_error(ST_ERR_NOMEM, "matmul: no memory for %zu bytes of kernel scratch", st_mm_scratch_bytes(w->cols));
    return 0;
}

static int check_args(const st_weight *w, const void *x, int64_t n, const float *y, st_act act) {
    int rc = st_weight_check(w, "matmul weight");
    if (rc) return rc;
    if (n < 0 || (n > 0 && (!x || !y)))
        return st_error(ST_ERR_INVALID, "matmul: bad arguments (n = %lld, x %s, y %s)", (long long)n,
                        x ? "set" : "NULL", y ? "set" : "NULL");
    if ((unsigned)act > ST_ACT_Q8) return st_error(ST_ERR_INVALID, "matmul: unknown activation mode %d", (int)act);
    return 0;
}

int st_matmul(st_pool *pool, const st_weight *w, const float *x, int64_t n, float *y, st_act act) {
    int rc = check_args(w, x, n, y, act);
    if (rc || n == 0) return rc;
    return matmul_f32(pool, w, x, n, y, act);
}

int st_matmul_bf16(st_pool *pool, const st_weight *w, const uint16_t *x, int64_t n, float *y, st_act act) {
    int rc = check_args(w, x, n, y, act);
    if (rc || n == 0) return rc;
    size_t count = (size_t)n * (size_t)w->cols;
    float *xf = st_aligned_alloc(64, count * sizeof(float));
    if (!xf) return st_error(ST_ERR_NOMEM, "matmul: no memory for %lld BF16 activations", (long long)n);
    for (size_t i = 0; i < count; i++) xf[i] = st_bf16_to_f32(x[i]);
    rc = matmul_f32(pool, w, xf, n, y, act);
    free(xf);
    return rc;
}
