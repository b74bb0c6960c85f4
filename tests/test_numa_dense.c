/* NUMA placement of the dense weights (engine/model_load.c, cpu/mem.c
 * st_mem_place_range, cpu/matmul.c st_row_split): ranges of one allocation
 * placed on different nodes and recorded; and the tiny model on a synthetic
 * two-node topology (STRATA_TOPOLOGY), where the per-node expert streams make
 * the pool's teams: its dense matrices' rows are cut in proportion to the
 * teams' threads, each part recorded on its team's node, each part computed
 * by its team's threads, and the logits are bit-identical to the one-node run. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cpu/matmul_internal.h"
#include "cpu/mem.h"
#include "cpu/pool.h"
#include "engine/model.h"
#include "engine/synth.h"
#include "util.h"

#define TWO_NODES_2C "pack:2 [numa(memory=8GB)] core:2 pu:1"

static char tmp[128], tiny[200];

static int setup(void **state) {
    (void)state;
    if (tu_tmpdir(tmp, sizeof tmp, "/var/tmp/strata-numa-dense-XXXXXX")) return -1;
    snprintf(tiny, sizeof tiny, "%s/tiny", tmp);
    return tu_synth(st_synth_find("tiny"), tiny, 5, NULL) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    return tu_rmtree(tmp);
}

static void place_ranges(void **state) {
    (void)state;
    st_mem_set_virtual_nodes(2); /* node 1 does not exist here: recorded, not mbind'ed */
    void *p;
    const uint64_t len = 4u << 20;
    assert_int_equal(st_mem_alloc(NULL, len, ST_MEM_DEFAULT, 0, &p), 0);
    st_mem_placement pl;
    assert_int_equal(st_mem_placement_of(p, &pl), ST_ERR_NOT_FOUND); /* a default allocation has none */
    assert_int_equal(st_mem_place_range(p, len / 2, 0), 0);
    assert_int_equal(st_mem_place_range((uint8_t *)p + len / 2, len / 2, 1), 0);
    assert_int_equal(st_mem_placement_of((uint8_t *)p + 4095, &pl), 0);
    assert_int_equal(pl.node, 0);
    assert_int_equal(st_mem_placement_of((uint8_t *)p + len / 2, &pl), 0);
    assert_int_equal(pl.node, 1);
    assert_false(pl.bound);
    assert_int_equal(st_mem_placement_of((uint8_t *)p + len - 1, &pl), 0);
    assert_int_equal(pl.node, 1);
    /* not whole pages; a node this process cannot use */
    assert_int_equal(st_mem_place_range((uint8_t *)p + 100, 4096, 0), ST_ERR_INVALID);
    assert_int_equal(st_mem_place_range(p, 5000, 0), ST_ERR_INVALID);
    assert_int_equal(st_mem_place_range(p, 4096, 7), ST_ERR_INVALID);
    st_error_clear();
    st_mem_free(NULL, p, len); /* forgets the ranges with it */
    assert_int_equal(st_mem_placement_of((uint8_t *)p + len / 2, &pl), ST_ERR_NOT_FOUND);
    assert_int_equal(st_mem_placement_of(p, &pl), ST_ERR_NOT_FOUND);
    st_mem_set_virtual_nodes(0);
}

/* blocks of the head computed by a thread of the other team */
static const st_weight *watched;
static _Atomic int head_wrong, head_blocks;
static int64_t head_cut;

static void head_observer(const st_weight *w, int64_t r0, int64_t r1) {
    if (w->data != watched->data) return; /* another matrix */
    const int th = st_pool_thread_index(), team = th < 1 ? 0 : 1; /* 2 threads: one per node */
    if (r1 - r0 > 0 && (team == 0 ? r1 > head_cut : r0 < head_cut)) atomic_fetch_add(&head_wrong, 1);
    atomic_fetch_add(&head_blocks, 1);
}

static float *logits(st_model *m, int n) {
    int32_t ids[48];
    for (int i = 0; i < n; i++) ids[i] = (int32_t)((i * 37 + 5) % m->vocab);
    st_seq *s;
    assert_int_equal(st_seq_new(m, &s), 0);
    float *lg = malloc((size_t)n * (size_t)m->vocab * sizeof(float));
    if (st_seq_forward(s, ids, n, lg, true)) fail_msg("forward: %s", st_last_error());
    st_seq_free(s);
    return lg;
}

static void dense_rows_on_their_nodes(void **state) {
    (void)state;
    if (!st_mem_hugepages()) skip(); /* dense matrices stay in the file mapping without THP: nothing to place */
    const int n = 40;
    st_model *one = tu_load(tiny, NULL, 2);
    assert_null(one->head.split); /* one node: no teams, no split */
    float *want = logits(one, n);
    const int64_t vocab = one->vocab;
    st_model_free(one);

    setenv("STRATA_TOPOLOGY", TWO_NODES_2C, 1);
    st_model *m = tu_load(tiny, NULL, 2);
    unsetenv("STRATA_TOPOLOGY");
    assert_int_equal(st_pool_team_count(m->pool), 2);
    const st_row_split *sp = m->head.split;
    assert_non_null(sp);
    assert_int_equal(sp->n, 2);
    assert_int_equal(sp->first[0], 0);
    assert_int_equal(sp->first[2], m->head.rows);
    assert_int_equal(sp->first[1] % ST_ROW_SPLIT_ALIGN, 0);
    assert_true(sp->first[1] >= m->head.rows / 4 && sp->first[1] <= m->head.rows * 3 / 4); /* 1 thread each: halves */
    const uint64_t row_bytes = st_weight_data_bytes(m->head.fmt, 1, m->head.cols);
    st_mem_placement pl;
    assert_int_equal(st_mem_placement_of(m->head.data, &pl), 0);
    assert_int_equal(pl.node, 0);
    assert_int_equal(st_mem_placement_of((const uint8_t *)m->head.data + (uint64_t)sp->first[1] * row_bytes, &pl), 0);
    assert_int_equal(pl.node, 1);
    assert_int_equal(st_mem_placement_of((const uint8_t *)m->head.data + (uint64_t)sp->first[1] * row_bytes - 1, &pl), 0);
    assert_int_equal(pl.node, 0);

    watched = &m->head;
    head_cut = sp->first[1];
    atomic_store(&head_wrong, 0);
    atomic_store(&head_blocks, 0);
    st_mm_rows_observer = head_observer;
    float *got = logits(m, n);
    st_mm_rows_observer = NULL;
    assert_true(atomic_load(&head_blocks) > 0);
    assert_int_equal(atomic_load(&head_wrong), 0);
    for (int64_t i = 0; i < (int64_t)n * vocab; i++)
        if (memcmp(&want[i], &got[i], sizeof(float)))
            fail_msg("logit %lld differs: %.9g (one node) vs %.9g (two nodes, rows split)", (long long)i, (double)want[i],
                     (double)got[i]);
    free(want);
    free(got);
    st_model_free(m);
    st_mem_set_virtual_nodes(0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(place_ranges),
        cmocka_unit_test(dense_rows_on_their_nodes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
