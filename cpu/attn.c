/* Attention kernels (see attn.h): the softmax with sink is shared; scores,
 * weighted sums and indexer scores come from the variant st_cpu_isa() picks
 * (cpu/attn_generic.c, cpu/attn_avx2.c, cpu/attn_avx512.c). */
#include "cpu/attn.h"

#include <string.h>

#include "cpu/attn_internal.h"
#include "cpu/cpu.h"

void st_attn_heads(const float *q, int64_t nh, const float *const *rows, int64_t n, int64_t d, float scale,
                   const float *sink, float *scratch, float *o) {
    if (nh <= 0) return;
    if (n <= 0) { memset(o, 0, (size_t)(nh * d) * sizeof(float)); return; }
    const st_isa isa = st_cpu_isa();
    if (isa == ST_ISA_AVX512) st_attn_scores_avx512(q, nh, rows, n, d, scale, scratch);
    else if (isa == ST_ISA_AVX2) st_attn_scores_avx2(q, nh, rows, n, d, scale, scratch);
    else st_attn_scores_generic(q, nh, rows, n, d, scale, scratch);
    for (int64_t h = 0; h < nh; h++) {
        if (isa == ST_ISA_AVX512) st_attn_softmax_avx512(scratch + h * n, n, sink[h]);
        else st_attn_softmax_generic(scratch + h * n, n, sink[h]);
    }
    if (isa == ST_ISA_AVX512) st_attn_wsum_avx512(scratch, nh, rows, n, d, o);
    else if (isa == ST_ISA_AVX2) st_attn_wsum_avx2(scratch, nh, rows, n, d, o);
    else st_attn_wsum_generic(scratch, nh, rows, n, d, o);
}

void st_attn_scores(const float *q, int64_t nh, const float *const *rows, int64_t n, int64_t d, float scale, float *s) {
    if (nh <= 0 || n <= 0) return;
    const st_isa isa = st_cpu_isa();
    if (isa == ST_ISA_AVX512) st_attn_scores_avx512(q, nh, rows, n, d, scale, s);
    else if (isa == ST_ISA_AVX2) st_attn_scores_avx2(q, nh, rows, n, d, scale, s);
    else st_attn_scores_generic(q, nh, rows, n, d, scale, s);
}

void st_attn_softmax(float *s, int64_t n, float sink) {
    if (n <= 0) return;
    if (st_cpu_isa() == ST_ISA_AVX512) st_attn_softmax_avx512(s, n, sink);
    else st_attn_softmax_generic(s, n, sink);
}

void st_attn_wsum(const float *p, int64_t nh, const float *const *rows, int64_t n, int64_t d, float *o) {
    if (nh <= 0) return;
    if (n <= 0) { memset(o, 0, (size_t)(nh * d) * sizeof(float)); return; }
    const st_isa isa = st_cpu_isa();
    if (isa == ST_ISA_AVX512) st_attn_wsum_avx512(p, nh, rows, n, d, o);
    else if (isa == ST_ISA_AVX2) st_attn_wsum_avx2(p, nh, rows, n, d, o);
    else st_attn_wsum_generic(p, nh, rows, n, d, o);
}

void st_attn_head(const float *q, const float *const *rows, int64_t n, int64_t d, float scale, float sink,
                  float *scratch, float *o) {
    st_attn_heads(q, 1, rows, n, d, scale, &sink, scratch, o);
}

void st_index_scores(const float *q, const float *w, const float *k, int64_t H, int64_t d, int64_t n, float *out) {
    if (n <= 0) return;
    switch (st_cpu_isa()) {
    case ST_ISA_AVX512: st_index_scores_avx512(q, w, k, H, d, n, out); break;
    case ST_ISA_AVX2: st_index_scores_avx2(q, w, k, H, d, n, out); break;
    default: st_index_scores_generic(q, w, k, H, d, n, out); break;
    }
}
