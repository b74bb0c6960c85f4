/* Routed/shared expert FFN: y += coef * w2(silu(min(w1 x, limit)) * clamp(w3 x)),
 * for a batch of tokens, on the matrix kernels of cpu/matmul.c. The SwiGLU and
 * the coefficient (st_swiglu, cpu/swiglu.c) are computed in F32 per hidden
 * unit, so results are the same for any thread count (and equal to three
 * st_matmul calls). */
#include <math.h>
#include <stdlib.h>

#include <stdatomic.h>

#include "base/base.h"
#include "cpu/cpu.h"
#include "cpu/matmul_internal.h"

static int check_expert(const st_expert_w *e) {
    int rc;
    if (!e) return st_error(ST_ERR_INVALID, "expert: no weights");
    if ((rc = st_weight_check(&e->w1, "expert w1")) || (rc = st_weight_check(&e->w3, "expert w3")) ||
        (rc = st_weight_check(&e->w2, "expert w2")))
        return rc;
    if (e->w1.rows != e->w3.rows || e->w1.cols != e->w3.cols || e->w2.rows != e->w1.cols || e->w2.cols != e->w1.rows)
        return st_error(ST_ERR_INVALID,
                        "expert: shapes do not chain: w1 (%lld, %lld), w3 (%lld, %lld), w2 (%lld, %lld); expected "
                        "w1 = w3 = (inter, dim), w2 = (dim, inter)",
                        (long long)e->w1.rows, (long long)e->w1.cols, (long long)e->w3.rows, (long long)e->w3.cols,
                        (long long)e->w2.rows, (long long)e->w2.cols);
    return 0;
}

/* One pool run per half: each thread computes its hidden units' rows of w1 and
 * w3 and their SwiGLU (no barrier between), then its output rows of w2 added
 * into y. Rows are split like st_matmul's, so results match it bit for bit. */
typedef struct {
    st_mm_job j1, j3, j2;
    const float *coef;
    float limit;
    float *y; /* (n, dim) */
    _Atomic int failed;
} ffn_ctx;

static void up_task(void *c, int ith, int nth) {
    ffn_ctx *f = c;
    int64_t lo, hi, inter = f->j1.w->rows;
    st_split(inter, ith, nth, ST_MM_ROW_ALIGN, &lo, &hi);
    if (lo >= hi) return;
    if (st_mm_job_rows(&f->j1, lo, hi) || st_mm_job_rows(&f->j3, lo, hi)) { atomic_store(&f->failed, 1); return; }
    st_swiglu(f->j1.y, f->j3.y, f->j1.n, inter, lo, hi, f->coef, f->limit);
}

static void down_task(void *c, int ith, int nth) {
    ffn_ctx *f = c;
    int64_t lo, hi, dim = f->j2.w->rows;
    st_split(dim, ith, nth, ST_MM_ROW_ALIGN, &lo, &hi);
    if (lo >= hi) return;
    if (st_mm_job_rows(&f->j2, lo, hi)) { atomic_store(&f->failed, 1); return; }
    for (int64_t i = 0; i < f->j2.n; i++)
        for (int64_t r = lo; r < hi; r++) f->y[i * dim + r] += f->j2.y[i * dim + r];
}

int st_expert_ffn(st_pool *pool, const st_expert_w *e, const float *x, int64_t n, const float *coef, float limit,
                  float *y, st_act act) {
    int rc = check_expert(e);
    if (rc) return rc;
    if (n < 0 || (n > 0 && (!x || !y))) return st_error(ST_ERR_INVALID, "expert: bad arguments (n = %lld)", (long long)n);
    if (n == 0) return 0;
    const int64_t inter = e->w1.rows, dim = e->w1.cols;
    float *g = malloc((size_t)(n * inter) * sizeof(float)), *u = malloc((size_t)(n * inter) * sizeof(float));
    float *o = malloc((size_t)(n * dim) * sizeof(float));
    ffn_ctx f = {.coef = coef, .limit = limit, .y = y};
    if (!g || !u || !o) {
        rc = st_error(ST_ERR_NOMEM, "expert: no memory for %lld tokens", (long long)n);
        goto done;
    }
    /* w1 and w3 read the same activations: prepared (Q8, GEMM layout) once when the formats allow */
    if ((rc = st_mm_job_init(&f.j1, &e->w1, x, n, g, act)) || (rc = st_mm_job_init_from(&f.j3, &e->w3, u, act, &f.j1)))
        goto done;
    st_mm_job_prepare(pool, &f.j1);
    st_mm_job_prepare(pool, &f.j3);
    st_pool_run(pool, up_task, &f);
    if (atomic_load(&f.failed)) goto nomem;
    if ((rc = st_mm_job_init(&f.j2, &e->w2, g, n, o, act))) goto done;
    st_mm_job_prepare(pool, &f.j2);
    st_pool_run(pool, down_task, &f);
    if (atomic_load(&f.failed)) goto nomem;
    goto done;
nomem:
    rc = st_error(ST_ERR_NOMEM, "expert: no memory for kernel scratch");
done:
    st_mm_job_free(&f.j3);
    st_mm_job_free(&f.j1);
    st_mm_job_free(&f.j2);
    free(g);
    free(u);
    free(o);
    return rc;
}

/* ---- several experts on the same tokens (decode): two pool runs in all ---- */

typedef struct {
    st_mm_job *up1, *up3, *down; /* (ne) each */
    int ne;
    const float *coef;           /* (ne, n) or NULL */
    float limit;
    float *y;
    _Atomic int failed;
} multi_ctx;

static void multi_up_task(void *c, int ith, int nth) {
    multi_ctx *m = c;
    int64_t lo, hi, inter = m->up1[0].w->rows;
    st_split(inter, ith, nth, ST_MM_ROW_ALIGN, &lo, &hi);
    if (lo >= hi) return;
    for (int k = 0; k < m->ne; k++) {
        if (st_mm_job_rows(&m->up1[k], lo, hi) || st_mm_job_rows(&m->up3[k], lo, hi)) { atomic_store(&m->failed, 1); return; }
        st_swiglu(m->up1[k].y, m->up3[k].y, m->up1[k].n, inter, lo, hi, m->coef ? m->coef + k * m->up1[k].n : NULL, m->limit);
    }
}

static void multi_down_task(void *c, int ith, int nth) {
    multi_ctx *m = c;
    int64_t lo, hi, dim = m->down[0].w->rows, n = m->down[0].n;
    st_split(dim, ith, nth, ST_MM_ROW_ALIGN, &lo, &hi);
    if (lo >= hi) return;
    for (int k = 0; k < m->ne; k++) { /* expert order: the same sums as one st_expert_ffn per expert */
        if (st_mm_job_rows(&m->down[k], lo, hi)) { atomic_store(&m->failed, 1); return; }
        const float *o = m->down[k].y;
        for (int64_t i = 0; i < n; i++)
            for (int64_t r = lo; r < hi; r++) m->y[i * dim + r] += o[i * dim + r];
    }
}

int st_experts_ffn(st_pool *pool, const st_expert_w *const *e, int ne, const float *x, int64_t n, const float *coef,
                   float limit, float *y, st_act act) {
    if (ne < 0 || (ne > 0 && !e)) return st_error(ST_ERR_INVALID, "experts: bad expert list (%d)", ne);
    if (ne == 0 || n == 0) return 0;
    if (n < 0 || !x || !y) return st_error(ST_ERR_INVALID, "experts: bad arguments (n = %lld)", (long long)n);
    int rc;
    for (int k = 0; k < ne; k++) {
        if ((rc = check_expert(e[k]))) return st_error_prefix(rc, "expert %d of %d: ", k, ne);
        if (e[k]->w1.rows != e[0]->w1.rows || e[k]->w1.cols != e[0]->w1.cols)
            return st_error(ST_ERR_INVALID, "experts: expert %d is (%lld, %lld), expert 0 (%lld, %lld); one call needs one shape",
                            k, (long long)e[k]->w1.rows, (long long)e[k]->w1.cols, (long long)e[0]->w1.rows,
                            (long long)e[0]->w1.cols);
    }
    const int64_t inter = e[0]->w1.rows, dim = e[0]->w1.cols;
    multi_ctx m = {.ne = ne, .coef = coef, .limit = limit, .y = y};
    m.up1 = calloc((size_t)ne, sizeof(st_mm_job));
    m.up3 = calloc((size_t)ne, sizeof(st_mm_job));
    m.down = calloc((size_t)ne, sizeof(st_mm_job));
    float *g = malloc((size_t)(ne * n * inter) * sizeof(float)), *u = malloc((size_t)(ne * n * inter) * sizeof(float));
    float *o = malloc((size_t)(ne * n * dim) * sizeof(float));
    rc = 0;
    if (!m.up1 || !m.up3 || !m.down || !g || !u || !o) {
        rc = st_error(ST_ERR_NOMEM, "experts: no memory for %d experts x %lld tokens", ne, (long long)n);
        goto done;
    }
    /* activations prepared once (Q8, GEMM layout) and borrowed by every w1/w3 job whose format allows */
    for (int k = 0; k < ne && !rc; k++) {
        float *gk = g + k * n * inter, *uk = u + k * n * inter;
        if (k == 0) rc = st_mm_job_init(&m.up1[0], &e[0]->w1, x, n, gk, act);
        else rc = st_mm_job_init_from(&m.up1[k], &e[k]->w1, gk, act, &m.up1[0]);
        if (!rc) rc = st_mm_job_init_from(&m.up3[k], &e[k]->w3, uk, act, &m.up1[0]);
    }
    if (rc) goto done;
    for (int k = 0; k < ne; k++) {
        st_mm_job_prepare(pool, &m.up1[k]);
        st_mm_job_prepare(pool, &m.up3[k]);
    }
    st_pool_run(pool, multi_up_task, &m);
    if (atomic_load(&m.failed)) { rc = st_error(ST_ERR_NOMEM, "experts: no memory for kernel scratch"); goto done; }
    for (int k = 0; k < ne && !rc; k++) rc = st_mm_job_init(&m.down[k], &e[k]->w2, g + k * n * inter, n, o + k * n * dim, act);
    if (rc) goto done;
    for (int k = 0; k < ne; k++) st_mm_job_prepare(pool, &m.down[k]);
    st_pool_run(pool, multi_down_task, &m);
    if (atomic_load(&m.failed)) rc = st_error(ST_ERR_NOMEM, "experts: no memory for kernel scratch");
done:
    for (int k = 0; k < ne; k++) { /* frees only what each job owns */
        if (m.up1) st_mm_job_free(&m.up1[k]);
        if (m.up3) st_mm_job_free(&m.up3[k]);
        if (m.down) st_mm_job_free(&m.down[k]);
    }
    free(m.up1);
    free(m.up3);
    free(m.down);
    free(g);
    free(u);
    free(o);
    return rc;
}
