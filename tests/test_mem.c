/* cpu/mem.c and cpu/numa.c: budgets (limits, peak, thread safety, messages), NUMA-placed
 * allocations (policy really applied, checked with get_mempolicy), 2 MiB
 * alignment and THP eligibility (checked in /proc/self/smaps), fallbacks; NUMA
 * topology, thread assignment and item split on synthetic hwloc machines and
 * on this one. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <numa.h>
#include <numaif.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "base/base.h"
#include "cpu/mem.h"
#include "cpu/numa.h"
#include "cpu/pool.h"

#define MiB (1ull << 20)

static void budget_limits_and_messages(void **state) {
    (void)state;
    st_budget *b;
    assert_int_equal(st_budget_new("dram0", 10 * MiB, &b), 0);
    assert_string_equal(st_budget_name(b), "dram0");
    assert_int_equal(st_budget_reserve(b, 6 * MiB), 0);
    assert_int_equal(st_budget_reserve(b, 3 * MiB), 0);
    assert_int_equal(st_budget_used(b), 9 * MiB);
    assert_int_equal(st_budget_reserve(b, 2 * MiB), ST_ERR_BUDGET);
    const char *msg = st_last_error(); /* names the budget, the request and what is in use */
    assert_non_null(strstr(msg, "dram0"));
    assert_non_null(strstr(msg, "2.00 MiB"));
    assert_non_null(strstr(msg, "9.00 MiB"));
    assert_non_null(strstr(msg, "10.00 MiB"));
    assert_int_equal(st_budget_used(b), 9 * MiB); /* a refusal charges nothing */
    assert_int_equal(st_budget_reserve(b, UINT64_MAX), ST_ERR_BUDGET); /* no overflow */
    st_budget_release(b, 6 * MiB);
    assert_int_equal(st_budget_used(b), 3 * MiB);
    assert_int_equal(st_budget_peak(b), 9 * MiB);
    assert_int_equal(st_budget_available(b), 7 * MiB);
    assert_int_equal(st_budget_reserve(b, 7 * MiB), 0); /* exactly up to the limit */
    assert_int_equal(st_budget_peak(b), 10 * MiB);
    assert_int_equal(st_budget_reserve(b, 1), ST_ERR_BUDGET);
    st_budget_release(b, 10 * MiB);
    assert_int_equal(st_budget_used(b), 0);
    assert_int_equal(st_budget_limit(b), 10 * MiB);
    st_budget_free(b);
    st_budget_free(NULL);
}

typedef struct { st_budget *b; _Atomic int over, refused; } hammer_ctx;
static void hammer(void *p, int ith, int nth) {
    hammer_ctx *c = p;
    uint64_t s = 12345 + (uint64_t)ith * 777;
    for (int i = 0; i < 20000; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t n = 1 + (s >> 40) % 4096;
        if (st_budget_reserve(c->b, n) == 0) {
            if (st_budget_used(c->b) > st_budget_limit(c->b)) atomic_fetch_add(&c->over, 1);
            for (int spin = 0; spin < 50; spin++) __builtin_ia32_pause(); /* hold it a while: contention */
            st_budget_release(c->b, n);
        } else {
            atomic_fetch_add(&c->refused, 1);
        }
    }
}

static void budget_thread_safe(void **state) {
    (void)state;
    st_pool *pool;
    assert_int_equal(st_pool_new(4, false, &pool), 0);
    hammer_ctx c = {0};
    assert_int_equal(st_budget_new("shared", 6000, &c.b), 0); /* two requests of > 3000 do not fit */
    st_pool_run(pool, hammer, &c);
    assert_int_equal(atomic_load(&c.over), 0);
    assert_int_equal(st_budget_used(c.b), 0);
    assert_true(st_budget_peak(c.b) <= 6000);
    print_message("threads: 4, refusals: %d of 80000\n", atomic_load(&c.refused));
    st_budget_free(c.b);
    st_pool_free(pool);
}

/* The smaps block of the mapping holding p: returns the value of `field` (kB), -1 if absent. */
static long smaps_field(const void *p, const char *field) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    bool in = false;
    long v = -1;
    size_t fl = strlen(field);
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            if (in) break;
            in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
        } else if (in && !strncmp(line, field, fl) && line[fl] == ':') {
            v = strtol(line + fl + 1, NULL, 10);
        }
    }
    fclose(f);
    return v;
}

static void alloc_charges_aligns_and_zeroes(void **state) {
    (void)state;
    st_budget *b;
    assert_int_equal(st_budget_new("dram", 64 * MiB, &b), 0);
    void *small, *big;
    assert_int_equal(st_mem_alloc(b, 100, ST_MEM_DEFAULT, 0, &small), 0);
    assert_int_equal(st_budget_used(b), 4096); /* charged by the 4 KiB page */
    assert_int_equal((uintptr_t)small % 4096, 0);
    assert_int_equal(st_mem_alloc(b, 5 * MiB + 3, ST_MEM_DEFAULT, 0, &big), 0);
    assert_int_equal(st_budget_used(b), 4096 + st_mem_charge(5 * MiB + 3));
    assert_int_equal((uintptr_t)big % (2 * MiB), 0);
    unsigned char *u = big;
    for (uint64_t i = 0; i < 5 * MiB + 3; i += 4093) assert_int_equal(u[i], 0);
    memset(big, 0xab, 5 * MiB + 3);
    if (st_mem_hugepages()) {
        long elig = smaps_field(big, "THPeligible");
        if (elig >= 0) assert_int_equal(elig, 1); /* madvise(MADV_HUGEPAGE) took */
        print_message("THP: AnonHugePages %ld kB of the 5 MiB buffer\n", smaps_field(big, "AnonHugePages"));
    }
    void *x;
    assert_int_equal(st_mem_alloc(b, 60 * MiB, ST_MEM_DEFAULT, 0, &x), ST_ERR_BUDGET);
    assert_null(x);
    assert_non_null(strstr(st_last_error(), "dram"));
    st_mem_free(b, big, 5 * MiB + 3);
    st_mem_free(b, small, 100);
    st_mem_free(b, NULL, 100);
    assert_int_equal(st_budget_used(b), 0);
    assert_int_equal(st_mem_alloc(b, 0, ST_MEM_DEFAULT, 0, &x), ST_ERR_INVALID);
    assert_int_equal(st_mem_alloc(b, 10, (st_mem_policy)9, 0, &x), ST_ERR_INVALID);
    assert_int_equal(st_mem_alloc(NULL, 10, ST_MEM_DEFAULT, 0, &x), 0); /* uncounted */
    st_mem_free(NULL, x, 10);
    st_budget_free(b);
}

/* Can this process mbind at all (containers may refuse with EPERM)? */
static bool mbind_allowed(void) {
    if (numa_available() < 0) return false;
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned long mask = 1;
    bool ok = mbind(p, 4096, MPOL_PREFERRED, &mask, 64, 0) == 0;
    munmap(p, 4096);
    return ok;
}

static void numa_policies_applied(void **state) {
    (void)state;
    int nodes = st_mem_numa_nodes();
    if (nodes == 0 || !mbind_allowed()) { print_message("NUMA or mbind unavailable here\n"); skip(); }
    st_budget *b;
    assert_int_equal(st_budget_new("numa", 64 * MiB, &b), 0);
    const st_mem_policy pol[3] = {ST_MEM_NODE, ST_MEM_INTERLEAVE, ST_MEM_LOCAL};
    const int want_mode[3] = {MPOL_PREFERRED, MPOL_INTERLEAVE, MPOL_LOCAL};
    struct bitmask *allowed = numa_get_mems_allowed();
    for (int node = 0; node < nodes; node++) {
        if (!numa_bitmask_isbitset(allowed, (unsigned)node)) continue;
        for (int i = 0; i < 3; i++) {
            void *p;
            assert_int_equal(st_mem_alloc(b, 4 * MiB, pol[i], node, &p), 0);
            memset(p, 1, 4 * MiB);
            int mode = -1;
            unsigned long mask[16] = {0};
            assert_int_equal(get_mempolicy(&mode, mask, sizeof mask * 8, p, MPOL_F_ADDR), 0);
            /* old kernels report MPOL_LOCAL as MPOL_PREFERRED with an empty mask */
            assert_true(mode == want_mode[i] || (want_mode[i] == MPOL_LOCAL && mode == MPOL_PREFERRED && !mask[0]));
            if (pol[i] == ST_MEM_NODE) assert_true(mask[node / 64] & (1ul << (node % 64)));
            int where = -1;
            assert_int_equal(get_mempolicy(&where, NULL, 0, p, MPOL_F_NODE | MPOL_F_ADDR), 0);
            assert_true(where >= 0 && where < nodes);
            if (pol[i] == ST_MEM_NODE && nodes == 1) assert_int_equal(where, node);
            st_mem_free(b, p, 4 * MiB);
        }
    }
    numa_bitmask_free(allowed);
    void *p;
    assert_int_equal(st_mem_alloc(b, 4096, ST_MEM_NODE, nodes + 7, &p), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "NUMA node"));
    assert_int_equal(st_mem_alloc(b, 4096, ST_MEM_NODE, -1, &p), ST_ERR_INVALID);
    assert_int_equal(st_budget_used(b), 0);
    st_budget_free(b);
}

static void numa_disabled_falls_back(void **state) {
    (void)state;
    st_mem_set_numa_enabled(false); /* as STRATA_NUMA=0, or numa_available() < 0 */
    assert_int_equal(st_mem_numa_nodes(), 0);
    st_budget *b;
    assert_int_equal(st_budget_new("fallback", 16 * MiB, &b), 0);
    void *p;
    assert_int_equal(st_mem_alloc(b, 3 * MiB, ST_MEM_NODE, 3, &p), 0); /* any node: placement is skipped */
    memset(p, 7, 3 * MiB);
    int mode = -1;
    if (numa_available() >= 0) {
        assert_int_equal(get_mempolicy(&mode, NULL, 0, p, MPOL_F_ADDR), 0);
        assert_int_equal(mode, MPOL_DEFAULT); /* no mbind happened */
    }
    st_mem_free(b, p, 3 * MiB);
    assert_int_equal(st_mem_alloc(b, 1 * MiB, ST_MEM_INTERLEAVE, 0, &p), 0);
    st_mem_free(b, p, 1 * MiB);
    assert_int_equal(st_budget_used(b), 0);
    assert_int_equal(st_budget_peak(b), st_mem_charge(3 * MiB));
    st_budget_free(b);
    st_mem_set_numa_enabled(true);
}


/* ---- NUMA placement ------------------------------------------------------------ */

static void numa_two_nodes_synthetic(void **state) {
    (void)state;
    st_numa *m;
    assert_int_equal(st_numa_new("pack:2 [numa(memory=8GB)] core:4 pu:2", &m), 0);
    assert_int_equal(st_numa_node_count(m), 2);
    assert_int_equal(st_numa_core_count(m), 8);
    for (int n = 0; n < 2; n++) {
        const st_numa_node *nd = st_numa_node_at(m, n);
        assert_int_equal(nd->os_index, n);
        assert_int_equal(nd->n_cores, 4);
        assert_int_equal(nd->n_pus, 8);
        assert_int_equal(nd->memory_bytes, 8000000000ull);
        for (int c = 0; c < 4; c++) assert_int_equal(nd->core_pu[c], n * 8 + c * 2); /* first PU of each core */
    }
    assert_null(st_numa_node_at(m, 2));

    st_numa_plan *p;
    assert_int_equal(st_numa_plan_new(m, 8, &p), 0); /* one per core, node-major */
    for (int t = 0; t < 8; t++) {
        st_numa_thread th = st_numa_plan_thread(p, t);
        assert_int_equal(th.node, t / 4);
        assert_int_equal(th.core, t % 4);
        assert_int_equal(th.pu_os, (t / 4) * 8 + (t % 4) * 2);
    }
    int first, count;
    st_numa_plan_node_threads(p, 1, &first, &count);
    assert_int_equal(first, 4); assert_int_equal(count, 4);
    /* 384 equal experts: 192 each, contiguous */
    int owner[384];
    uint64_t bytes[2];
    assert_int_equal(st_numa_plan_split(p, 384, NULL, owner, bytes), 0);
    for (int i = 0; i < 384; i++) assert_int_equal(owner[i], i < 192 ? 0 : 1);
    assert_int_equal(bytes[0], 192); assert_int_equal(bytes[1], 192);
    st_numa_plan_free(p);

    assert_int_equal(st_numa_plan_new(m, 3, &p), 0); /* 1.5 + 1.5: the tie goes to node 0 */
    st_numa_plan_node_threads(p, 0, &first, &count);
    assert_int_equal(first, 0); assert_int_equal(count, 2);
    st_numa_plan_node_threads(p, 1, &first, &count);
    assert_int_equal(first, 2); assert_int_equal(count, 1);
    assert_int_equal(st_numa_plan_split(p, 384, NULL, owner, bytes), 0); /* items follow threads: 2 : 1 */
    assert_int_equal(bytes[0], 256); assert_int_equal(bytes[1], 128);
    st_numa_plan_free(p);

    assert_int_equal(st_numa_plan_new(m, 20, &p), 0); /* more threads than cores: wrap within the node */
    for (int t = 0; t < 20; t++) {
        st_numa_thread th = st_numa_plan_thread(p, t);
        assert_int_equal(th.node, t / 10);
        assert_int_equal(th.core, (t % 10) % 4);
    }
    /* unequal sizes: contiguous ranges, each node within one item of its half */
    uint64_t sizes[101], total = 0, maxs = 0;
    for (int i = 0; i < 101; i++) { sizes[i] = 1000 + (uint64_t)(i * 7919 % 5000); total += sizes[i]; maxs = ST_MAX(maxs, sizes[i]); }
    int own[101];
    assert_int_equal(st_numa_plan_split(p, 101, sizes, own, bytes), 0);
    for (int i = 1; i < 101; i++) assert_true(own[i] >= own[i - 1]);
    assert_int_equal(bytes[0] + bytes[1], total);
    assert_true(llabs((long long)bytes[0] - (long long)total / 2) <= (long long)maxs / 2 + 1);
    st_numa_plan_free(p);
    assert_int_equal(st_numa_plan_new(m, 0, &p), ST_ERR_INVALID);
    st_numa_free(m);
    st_numa_free(NULL);
    st_numa_plan_free(NULL);
}

/* HBM-like memory-only nodes share their package's CPUs: cores count once, on the
 * first node; nodes without cores get neither threads nor items. */
static void numa_memory_only_nodes(void **state) {
    (void)state;
    st_numa *m;
    assert_int_equal(st_numa_new("pack:2 [numa(memory=8GB)] [numa(memory=2GB)] core:2 pu:1", &m), 0);
    assert_int_equal(st_numa_node_count(m), 4);
    assert_int_equal(st_numa_core_count(m), 4);
    const int cores[4] = {2, 0, 2, 0};
    for (int n = 0; n < 4; n++) assert_int_equal(st_numa_node_at(m, n)->n_cores, cores[n]);
    assert_int_equal(st_numa_node_at(m, 1)->memory_bytes, 2000000000ull);
    st_numa_plan *p;
    assert_int_equal(st_numa_plan_new(m, 4, &p), 0);
    int first, count;
    for (int n = 0; n < 4; n++) {
        st_numa_plan_node_threads(p, n, &first, &count);
        assert_int_equal(count, cores[n]);
    }
    assert_int_equal(st_numa_plan_node_count(p), 4);
    assert_int_equal(st_numa_plan_active_nodes(p), 2); /* the memory-only nodes get no threads */
    int owner[10];
    uint64_t bytes[4];
    assert_int_equal(st_numa_plan_split(p, 10, NULL, owner, bytes), 0);
    assert_int_equal(bytes[0], 5); assert_int_equal(bytes[1], 0);
    assert_int_equal(bytes[2], 5); assert_int_equal(bytes[3], 0);
    for (int i = 0; i < 10; i++) assert_int_equal(owner[i], i < 5 ? 0 : 2);
    st_numa_plan_free(p);
    st_numa_free(m);
}

static void numa_one_node_and_this_machine(void **state) {
    (void)state;
    st_numa *m;
    assert_int_equal(st_numa_new("pack:1 [numa(memory=4GB)] core:6 pu:1", &m), 0);
    assert_int_equal(st_numa_node_count(m), 1);
    st_numa_plan *p;
    assert_int_equal(st_numa_plan_new(m, 4, &p), 0);
    int owner[7];
    assert_int_equal(st_numa_plan_split(p, 7, NULL, owner, NULL), 0);
    for (int i = 0; i < 7; i++) assert_int_equal(owner[i], 0);
    for (int t = 0; t < 4; t++) assert_int_equal(st_numa_plan_thread(p, t).core, t);
    st_numa_plan_free(p);
    st_numa_free(m);

    assert_int_equal(st_numa_new("pack:2 [numa(memory=zz)] bogus:3", &m), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "bogus:3"));

    assert_int_equal(st_numa_new(NULL, &m), 0); /* the real machine */
    int nodes = st_numa_node_count(m), cores = 0;
    assert_true(nodes >= 1);
    for (int n = 0; n < nodes; n++) cores += st_numa_node_at(m, n)->n_cores;
    assert_int_equal(cores, st_numa_core_count(m));
    assert_int_equal(cores, st_cpu_core_count());
    if (numa_available() >= 0) assert_int_equal(nodes, numa_num_configured_nodes());
    assert_int_equal(st_numa_plan_new(m, cores, &p), 0);
    for (int t = 0; t < cores; t++) {
        st_numa_thread th = st_numa_plan_thread(p, t);
        assert_true(th.pu_os >= 0);
        assert_true(th.node >= 0 && th.node < nodes);
    }
    print_message("this machine: %d NUMA node(s), %d cores, node 0 %.1f GiB\n", nodes, cores,
                  st_numa_node_at(m, 0)->memory_bytes / (double)(1ull << 30));
    st_numa_plan_free(p);
    st_numa_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(budget_limits_and_messages),
        cmocka_unit_test(budget_thread_safe),
        cmocka_unit_test(alloc_charges_aligns_and_zeroes),
        cmocka_unit_test(numa_policies_applied),
        cmocka_unit_test(numa_disabled_falls_back),
        cmocka_unit_test(numa_two_nodes_synthetic),
        cmocka_unit_test(numa_memory_only_nodes),
        cmocka_unit_test(numa_one_node_and_this_machine),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
