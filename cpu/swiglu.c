/* SwiGLU of expert hidden units, g = silu(min(g, limit)) * clamp(u, -limit, limit)
 * (* coef), the same bits on every instruction set and on the GPU: e^x is
 * st_expf (cpu/expf.h), whose IEEE double operations the SIMD variants
 * (cpu/swiglu_avx2.c, cpu/swiglu_avx512.c) perform lane by lane in the same
 * order, and the float steps are single IEEE operations. Owns the run-time
 * choice of the variant and the scalar reference. */
#include "cpu/swiglu_internal.h"

#include "cpu/cpu.h"
#include "cpu/expf.h"

void st_swiglu_row_generic(float *g, const float *u, int64_t len, const float *c, float limit) {
    for (int64_t k = 0; k < len; k++) {
        float a = g[k], b = u[k];
        if (limit > 0) {
            a = a > limit ? limit : a;
            b = b > limit ? limit : b < -limit ? -limit : b;
        }
        const float h = a / (1.0f + st_expf(-a)) * b;
        g[k] = c ? h * *c : h;
    }
}

void st_swiglu(float *g, const float *u, int64_t n, int64_t inter, int64_t k0, int64_t k1, const float *coef,
               float limit) {
    if (k1 <= k0) return;
    const st_isa isa = st_cpu_isa();
    for (int64_t i = 0; i < n; i++) {
        float *gi = g + i * inter + k0;
        const float *ui = u + i * inter + k0, *c = coef ? coef + i : NULL;
        if (isa == ST_ISA_AVX512) st_swiglu_row_avx512(gi, ui, k1 - k0, c, limit);
        else if (isa == ST_ISA_AVX2) st_swiglu_row_avx2(gi, ui, k1 - k0, c, limit);
        else st_swiglu_row_generic(gi, ui, k1 - k0, c, limit);
    }
}
