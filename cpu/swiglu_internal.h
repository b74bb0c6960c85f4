/* Per-instruction-set SwiGLU rows (cpu/swiglu.c dispatches): g[k] =
 * silu(min(g[k], limit)) * clamp(u[k], -limit, limit) (* *c when c is not NULL)
 * for k < len; limit <= 0: no clamp. Every variant gives the generic one's bits. */
#ifndef ST_CPU_SWIGLU_INTERNAL_H
#define ST_CPU_SWIGLU_INTERNAL_H

#include <stdint.h>

void st_swiglu_row_generic(float *g, const float *u, int64_t len, const float *c, float limit);
void st_swiglu_row_avx2(float *g, const float *u, int64_t len, const float *c, float limit);
void st_swiglu_row_avx512(float *g, const float *u, int64_t len, const float *c, float limit);

#endif
