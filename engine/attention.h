/* V4 attention for one layer over a chunk of tokens: sliding window, learned
 * compressor (overlapping on CSA layers), lightning indexer top-k on CSA
 * layers, dense compressed attention on HCA layers, attention sink, partial
 * RoPE, inverse RoPE on the output and the grouped low-rank output projection. */
#ifndef ST_ENGINE_ATTENTION_H
#define ST_ENGINE_ATTENTION_H

#include "engine/layer.h"

/* Allocate / free / clear one layer's per-sequence state. Compressed entries
 * are stored as st_comp_entry_bytes(.., num) says. */
int st_layer_state_init(st_layer_state *s, const st_attn_w *w, st_numerics num);
void st_layer_state_free(st_layer_state *s);
void st_layer_state_reset(st_layer_state *s, const st_attn_w *w);

/* Bytes of one stored compressed entry of w. Reference numerics: d F32. Official
 * numerics, the official cache layout, which holds exactly the values the
 * official code rounds them to: a main entry is (d - rope_dims) e4m3 codes,
 * one ue8m0 scale byte per 64 of them, then rope_dims bf16 (583 bytes at d 512,
 * rope 64); an indexer key (w->rotate) is d e2m1 codes two to a byte (low
 * nibble first), then one ue8m0 scale byte per 32 (68 bytes at d 128). */
size_t st_comp_entry_bytes(const st_compressor_w *w, int64_t rope_dims, st_numerics num);
/* dst (entry_bytes) = v (w->d floats, the compressor's output before the
 * cache's rounding) in s's format; v is clobbered (indexer keys: Hadamard). */
void st_comp_entry_encode(const st_comp_state *s, const st_compressor_w *w, float *v, void *dst);
/* v (w->d floats) = the values the stored entry src holds (exact). */
void st_comp_entry_decode(const st_comp_state *s, const st_compressor_w *w, const void *src, float *v);

/* out (T, dim) = attention of xn (T, dim), the attn-normed inputs at positions
 * pos0 .. pos0+T-1; appends the chunk to the state. Chunks must be contiguous. */
int st_attn_forward(st_pool *pool, const st_attn_w *w, st_layer_state *s, const float *xn, int64_t T, int64_t pos0,
                    st_numerics num, float *out);

/* y (T, rows) = x . W^T with the official activation handling: in OFFICIAL
 * numerics, inputs of FP8/FP4 weights are first rounded to e4m3 per 128 with
 * power-of-two scales (act_quant). Shared by attention and MoE. */
int st_linear(st_pool *pool, const st_weight *w, const float *x, int64_t T, float *y, st_numerics num);

/* xq (T, cols) = x rounded as the official act_quant leaves it (e4m3, one
 * power-of-two scale per 128 of a row); xq may equal x. */
void st_act_quant(const float *x, int64_t T, int64_t cols, float *xq);

/* View of rows [r0, r1) of w (FP8 needs r0 % 128 == 0). */
int st_weight_rows(const st_weight *w, int64_t r0, int64_t r1, st_weight *view);

#endif
