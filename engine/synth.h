/* `strata synth`: random-weight DeepSeek-V4 checkpoints in the official layout
 * (config.json, safetensors shards with FP8 e4m3 + ue8m0 128x128 block scales,
 * FP4 e2m1 routed experts with ue8m0 1x32 scales, BF16/F32 elsewhere, I64
 * tid2eid), deterministic for a seed. Each tensor's values come from its own
 * generator seeded by (seed, name), so any subset can be regenerated alone. */
#ifndef ST_ENGINE_SYNTH_H
#define ST_ENGINE_SYNTH_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define ST_SYNTH_MAX_LAYERS 64 /* main + MTP blocks */

struct st_config;

typedef struct st_synth_preset {
    const char *name, *summary;
    int64_t vocab, dim;
    int n_layers, n_hash_layers, n_heads, head_dim, rope_dims, q_lora_rank, o_groups, o_lora_rank, window;
    int ratios[ST_SYNTH_MAX_LAYERS];
    int moe_inter, n_experts, top_k;
    float route_scale, swiglu_limit;
    int index_heads, index_dim, index_topk, hc, sinkhorn_iters;
    bool with_tokenizer; /* copy the V4 tokenizer next to the weights */
    /* Only when from_config (st_synth_from_config); the presets have one shared
     * expert, sqrtsoftplus routing, no MTP block and V4's RoPE/eps values. */
    bool from_config;
    int n_shared, n_mtp;
    int score_func; /* st_score_func */
    bool norm_topk_prob, yarn;
    double rope_theta, compress_rope_theta, rope_factor, beta_fast, beta_slow, norm_eps, hc_eps;
    int64_t original_seq_len, max_pos, bos, eos; /* bos/eos -1: absent */
} st_synth_preset;

const st_synth_preset *st_synth_find(const char *name);
void st_synth_list(FILE *f);
/* The preset of a parsed config: its sizes, with synth's scales, in the
 * published format whatever dtype the config declares (warned). Refuses, with
 * ST_ERR_UNSUPPORTED and a message naming the config field, what synth cannot
 * write (more than ST_SYNTH_MAX_LAYERS blocks, a ratio the official layout
 * cannot express) or the engine cannot run (st_config_check_engine). `source`
 * names the config in messages. */
int st_synth_from_config(const struct st_config *c, const char *source, st_synth_preset *out);
int st_synth_config_json(const st_synth_preset *p, char *buf, size_t len);

/* Writes the checkpoint into out_dir (created; files written to temporary
 * names and renamed when complete). tokenizer_dir may be NULL. */
int st_synth_write(const st_synth_preset *p, const char *out_dir, uint64_t seed, const char *tokenizer_dir, bool quiet);

#endif
