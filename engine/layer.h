/* One V4 block's weights and per-sequence state, as the forward pass sees them.
 *
 * Weights point into the checkpoint (mmap) or into buffers the loader owns;
 * small vectors (norms, sinks, ape, hc) are F32 copies made at load.
 * Shapes are in comments: (rows, cols) as stored.
 */
#ifndef ST_ENGINE_LAYER_H
#define ST_ENGINE_LAYER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu/cpu.h"
#include "engine/mhc.h"

typedef enum { ST_NUMERICS_OFFICIAL = 0, ST_NUMERICS_REFERENCE = 1 } st_numerics;
typedef enum { ST_LAYER_WINDOW = 0, ST_LAYER_CSA = 1, ST_LAYER_HCA = 2 } st_layer_kind;

/* Learned pooling of `ratio` tokens into one compressed entry of width d. */
typedef struct st_compressor_w {
    int ratio;
    bool overlap;        /* CSA: blocks overlap, weights are 2d wide */
    bool rotate;         /* indexer keys: Hadamard + FP4 simulation instead of FP8 */
    int64_t d;           /* entry width (head_dim, or index_head_dim) */
    st_weight wkv;       /* (coff*d, dim) */
    st_weight wgate;     /* (coff*d, dim) */
    const float *ape;    /* (ratio, coff*d) */
    float *norm;         /* (d) */
} st_compressor_w;

typedef struct st_indexer_w {
    int n_heads;           /* index_n_heads */
    int64_t head_dim;      /* index_head_dim */
    int topk;              /* index_topk */
    st_weight wq_b;        /* (n_heads*head_dim, q_lora_rank) */
    st_weight weights_proj;/* (n_heads, dim) */
    st_compressor_w comp;  /* rotate = true, d = head_dim */
} st_indexer_w;

typedef struct st_attn_w {
    st_layer_kind kind;
    int n_heads, o_groups, window;
    int64_t head_dim, rope_dims, q_lora_rank, o_lora_rank;
    float eps;
    st_weight wq_a;      /* (q_lora_rank, dim) */
    float *q_norm;       /* (q_lora_rank) */
    st_weight wq_b;      /* (n_heads*head_dim, q_lora_rank) */
    st_weight wkv;       /* (head_dim, dim) */
    float *kv_norm;      /* (head_dim) */
    st_weight wo_a;      /* (o_groups*o_lora_rank, n_heads*head_dim/o_groups) */
    st_weight wo_b;      /* (dim, o_groups*o_lora_rank) */
    const float *sink;   /* (n_heads) */
    float *inv_freq;     /* (rope_dims/2): plain theta on window layers, compress theta + YaRN otherwise */
    st_compressor_w comp;/* kind != WINDOW */
    st_indexer_w idx;    /* kind == CSA */
} st_attn_w;

typedef struct st_moe_w {
    int n_experts, top_k;
    bool hash;                /* experts from tid2eid[token] */
    int score_func;           /* 0 sqrtsoftplus, 1 softmax, 2 sigmoid */
    float route_scale, swiglu_limit;
    st_weight gate;           /* (n_experts, dim) */
    const float *gate_bias;   /* (n_experts) or NULL on hash layers */
    int64_t *tid2eid;         /* (vocab, top_k) on hash layers */
    st_expert_w *experts;     /* (n_experts) */
    st_expert_w shared;       /* one shared expert; n_shared == 0: rows = 0 */
    bool has_shared;
} st_moe_w;

typedef struct st_layer_w {
    int index;
    st_attn_w attn;
    st_moe_w moe;
    float *attn_norm, *ffn_norm; /* (dim) */
    st_hc_site hc_attn, hc_ffn;
} st_layer_w;

/* Per-sequence state of one compressor: the partial block and the entries. */
typedef struct st_comp_state {
    float *kv_state, *score_state; /* (coff*ratio, coff*d) */
    void *entries;                 /* (cap, entry_bytes); with pages: room to encode the entry appended */
    float *row;                    /* (d) the entry being built */
    size_t entry_bytes;            /* stored entry: d F32, or (official numerics) the official compact layout */
    bool packed;                   /* entries are compact (see st_comp_entry_encode) */
    int64_t rope_dims;             /* trailing rope dims of a main entry (kept in bf16 when packed) */
    int64_t n_entries, cap;
    struct st_kv_pages *pages;     /* KV tiering (CSA main entries): the entries live there; NULL: in entries */
    int stream;                    /* this state's stream in pages */
} st_comp_state;

typedef struct st_layer_state {
    float *window;      /* (window, head_dim) ring: position p at p % window */
    st_comp_state comp; /* main compressed KV */
    st_comp_state icomp;/* indexer keys */
} st_layer_state;

#endif
