/* DRAM read bandwidth with every thread of a pool: each thread streams its own
 * contiguous share of a buffer much larger than the last-level cache (SSE2
 * loads, which the baseline x86-64 build allows, plus software prefetch). */
#include <emmintrin.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "bench/bench.h"
#include "cpu/mem.h"
#include "cpu/pool.h"

typedef struct {
    const uint8_t *buf;
    size_t bytes;
    uint64_t sink[64];
} dram_ctx;

static void read_share(void *c, int ith, int nth) {
    dram_ctx *d = c;
    int64_t lo, hi;
    st_split((int64_t)d->bytes, ith, nth, 4096, &lo, &hi);
    __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = lo; i + 64 <= hi; i += 64) {
        const __m128i *p = (const __m128i *)(d->buf + i);
        /* the same software prefetch distance as the kernels: without it one
         * thread's stream leaves DRAM bandwidth unused on this class of CPU */
        _mm_prefetch((const char *)p + 8192, _MM_HINT_T0);
        a0 = _mm_add_epi64(a0, _mm_load_si128(p));
        a1 = _mm_add_epi64(a1, _mm_load_si128(p + 1));
        a2 = _mm_add_epi64(a2, _mm_load_si128(p + 2));
        a3 = _mm_add_epi64(a3, _mm_load_si128(p + 3));
    }
    __m128i s = _mm_add_epi64(_mm_add_epi64(a0, a1), _mm_add_epi64(a2, a3));
    d->sink[ith % 64] = (uint64_t)_mm_cvtsi128_si64(s);
}

double bench_dram_read_gbs(struct st_pool *pool, size_t bytes) {
    dram_ctx d = {.bytes = bytes & ~(size_t)4095};
    /* in 2 MiB pages where the kernel gives them, as the engine's resident weights are
     * (engine/model_load.c): with 4 KiB pages the TLB misses cost this loop ~20% here,
     * and the engine then read its weights faster than the limit said DRAM could */
    void *mem;
    if (st_mem_alloc(NULL, d.bytes, ST_MEM_DEFAULT, 0, &mem)) return 0;
    uint8_t *buf = mem;
    memset(buf, 1, d.bytes); /* fault every page in before timing */
    d.buf = buf;
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = st_time_s();
        st_pool_run(pool, read_share, &d);
        double gbs = (double)d.bytes / (st_time_s() - t0) / 1e9;
        if (gbs > best) best = gbs;
    }
    st_mem_free(NULL, buf, d.bytes);
    return best;
}
