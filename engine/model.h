/* The loaded model and a sequence running through it.
 *
 * st_model owns the weights' descriptors (pointing into the checkpoint's
 * mmap, plus small F32 copies) and the thread pool; st_seq owns one
 * sequence's KV state. The forward pass never allocates model-sized memory.
 */
#ifndef ST_ENGINE_MODEL_H
#define ST_ENGINE_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/layer.h"
#include "engine/moe.h"

typedef struct st_model {
    int n_layers;
    int64_t dim, vocab;
    float norm_eps;
    st_hc_dims hcd;
    st_numerics numerics;
    int64_t chunk;            /* prefill chunk (tokens) */
    st_layer_w *layers;       /* (n_layers) */
    st_weight embed;          /* (vocab, dim) */
    st_weight head;           /* (vocab, dim) */
    float *norm;              /* (dim) */
    st_hc_site hc_head;       /* fn (hc, hc*dim), base (hc), scale (1) */
    st_pool *pool;
    st_expert_source experts; /* get == NULL: the loader's pointers */
    uint64_t bytes_per_token; /* weight bytes one decode token reads (active experts + the rest) */
    void *loader;             /* owned by model_load.c */
} st_model;

typedef struct st_seq {
    const st_model *m;
    st_layer_state *state; /* (n_layers) */
    int64_t pos;           /* tokens consumed */
    struct st_kv_pages *kv;/* KV tiering store (st_seq_kv_tiering); NULL: every entry in the state arrays */
    struct st_budget *kv_fast, *kv_dram;
} st_seq;

int st_seq_new(const st_model *m, st_seq **out);
void st_seq_free(st_seq *s);
void st_seq_reset(st_seq *s);
/* KV tiering (offload/kv_pages.h): CSA layers' main compressed entries go to a
 * paged store whose fast tier holds at most fast_bytes; pages beyond it spill
 * to a DRAM tier of dram_bytes (0: none when spill_dir is given, else
 * unlimited), then to a file in spill_dir (NULL: no NVMe tier). page_bytes: a
 * multiple of 4096 (0: 64 KiB). Indexer keys and HCA entries stay in the state
 * arrays. Only on a fresh sequence (pos 0); results are bit-identical. */
int st_seq_kv_tiering(st_seq *s, uint64_t fast_bytes, uint64_t dram_bytes, const char *spill_dir, uint64_t page_bytes);
/* Run T tokens at the sequence's current position. logits: (T, vocab) when
 * all_positions, else (1, vocab) for the last token; may be NULL. */
int st_seq_forward(st_seq *s, const int32_t *tokens, int64_t T, float *logits, bool all_positions);
/* Batched decode: one token of each of B distinct sequences of one model, each
 * at its own position; logits (B, vocab). The MoE runs once over the B rows
 * (a streamed expert is read once per step for all of them). Bit-identical to
 * B calls of st_seq_forward(seqs[i], &tokens[i], 1, ...). On error the
 * sequences' states are undefined (reset them). */
int st_seq_forward_batch(st_seq *const *seqs, const int32_t *tokens, int B, float *logits);
/* Batched prefill: B distinct sequences of one model each take lens[i] > 0
 * tokens (tokens holds them one sequence after the other); prompts that fit
 * run together in chunks of at most the model's chunk rows (a longer one runs
 * alone), the MoE once over all their rows. logits (B, vocab) or NULL: each
 * sequence's last position. Bit-identical to st_seq_forward per sequence.
 * On error the sequences' states are undefined (reset them). */
int st_seq_prefill_batch(st_seq *const *seqs, const int32_t *tokens, const int64_t *lens, int B, float *logits);



typedef struct st_model_opts {
    st_numerics numerics;
    int threads;      /* <= 0: one per core */
    int64_t chunk;    /* prefill chunk; <= 0: 2048 */
    bool quiet;       /* no progress bar */
    /* offload (all 0: every weight resident, experts read from the checkpoint's mapping) */
    uint64_t dram_budget;  /* DRAM the weights may hold (pinned weights + expert cache); 0: no limit */
    uint64_t expert_cache; /* bytes of the routed-expert cache instead of what dram_budget leaves */
    bool dram_unlimited;   /* no budget even when the weights do not fit in memory: the experts stay in
                              the checkpoint's mapping and the page cache does the work (as llama.cpp) */
    int expert_slots;      /* exactly this many expert slots (tests) */
    bool no_prefetch;      /* demand loads only: no router-driven prediction */
    int prefetch_depth;    /* prefetch loads in flight (0: 8) */
    int io_depth;          /* reads in the kernel (0: 32) */
    int cache_policy;      /* st_policy_kind (0: LRU) */
    int numa;              /* expert cache placement: 0 auto (first touch), -1 off (no mbind), n > 0: node n - 1 */
    const char *trace_path;/* expert trace (offload/trace.h) of the run; NULL: none */
    uint64_t kv_budget;    /* KV tiering fast budget (st_seq_kv_tiering); 0: off */
    const char *kv_spill;  /* KV tiering spill directory; NULL: DRAM tier only */
    uint64_t gpu_mem;      /* GPU tier budget (engine/model_gpu.h); 0: no GPU tier */
    int gpu_slots;         /* exactly this many GPU expert slots (tests); 0: as many as gpu_mem holds */
    int gpu_rows;          /* token rows per device FFN launch (tests); 0: min(chunk, 256), fewer when
                              gpu_mem is small */
    int64_t gpu_min_rows;  /* a GPU tier miss with at least this many token rows is computed on the device
                              (copied in first); 0: STRATA_GPU_MIN_ROWS, else the cost model
                              (engine/model_gpu.c); INT64_MAX: never */
} st_model_opts;

/* The DRAM budget a load takes when none is given and the weights do not fit:
 * 90% of the memory available now (st_mem_available; the rest for KV,
 * activations and the system). *available (may be NULL) gets that figure. */
uint64_t st_model_default_dram_budget(uint64_t *available);

/* Load a checkpoint directory (official or transformers layout). */
int st_model_load(const char *path, const st_model_opts *opts, st_model **out);
void st_model_free(st_model *m);
/* Bytes of every routed expert (w1, w2, w3 and their scales), as the expert cache counts them. */
uint64_t st_model_routed_bytes(const st_model *m);
#endif
