/* config: a DeepSeek-V4 config.json, normalised from any of its key schemes.
 *
 * Schemes (detected, recorded in st_config.scheme):
 *  - official:     the config.json published with the checkpoints (hidden_size,
 *                  num_hidden_layers, compress_ratios, num_hash_layers,
 *                  qk_rope_head_dim, rope_scaling, quantization_config, ...).
 *  - model args:   the official inference code's ModelArgs keys (dim, n_layers,
 *                  n_heads, moe_inter_dim, rope_factor, original_seq_len, ...).
 *  - transformers: Hugging Face DeepseekV4Config (layer_types, mlp_layer_types,
 *                  compress_rates, rope_parameters {main, compress},
 *                  partial_rotary_factor); missing keys take that class's
 *                  defaults, exactly as transformers does when it loads the file.
 *
 * Every field the model reads is validated; a refused value is named with its
 * JSON key and value ("config.json: num_attention_heads = 7 is not a multiple
 * of o_groups = 2"). Nothing about the published sizes is hard-coded.
 * Owns: parsing and validation only (cJSON); knows nothing about tensors. */
#ifndef ST_ENGINE_CONFIG_H
#define ST_ENGINE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Attention kind of a layer. Values equal st_layer_kind (engine/layer.h). */
typedef enum st_attn_kind {
    ST_ATTN_WINDOW = 0, /* sliding window only (ratio 0) */
    ST_ATTN_CSA = 1,    /* overlapping compressor + lightning indexer (official: ratio == 4) */
    ST_ATTN_HCA = 2,    /* non-overlapping compressor, dense over entries (official: other ratios) */
} st_attn_kind;

/* Router score function. Values equal st_moe_w.score_func (engine/layer.h). */
typedef enum st_score_func { ST_SCORE_SQRTSOFTPLUS = 0, ST_SCORE_SOFTMAX = 1, ST_SCORE_SIGMOID = 2 } st_score_func;

typedef enum st_config_scheme {
    ST_CONFIG_OFFICIAL = 0,     /* published config.json (hidden_size, compress_ratios, ...) */
    ST_CONFIG_MODEL_ARGS = 1,   /* official inference ModelArgs keys (dim, n_layers, ...) */
    ST_CONFIG_TRANSFORMERS = 2, /* transformers DeepseekV4Config (layer_types, ...) */
} st_config_scheme;

/* How weight matrices are stored, as the config declares it. The tensor
 * registry checks the actual dtypes; this is the declared intent. */
typedef enum st_weight_kind {
    ST_WK_FP8 = 0,  /* F8_E4M3 + block scales (scale_fmt) */
    ST_WK_FP4 = 1,  /* e2m1 two per byte in I8/U8 [out, in/2] + F8_E8M0 [out, in/32] */
    ST_WK_BF16 = 2, /* unquantised */
    ST_WK_F32 = 3,
} st_weight_kind;

typedef enum st_cfg_scale_fmt { ST_SCALEFMT_UE8M0 = 0, ST_SCALEFMT_F32 = 1 } st_cfg_scale_fmt;

typedef struct st_config {
    st_config_scheme scheme;
    char model_type[32]; /* "deepseek_v4" ("" when the file has none, e.g. ModelArgs) */

    /* sizes */
    int64_t vocab_size;
    int64_t dim;            /* hidden_size */
    int n_layers;           /* num_hidden_layers: main blocks (MTP not included) */
    int n_mtp_layers;       /* num_nextn_predict_layers */
    int n_hash_layers;      /* the first n_hash_layers layers route by tid2eid */
    int n_heads;            /* num_attention_heads */
    int n_kv_heads;         /* num_key_value_heads: always 1 (one shared KV vector) */
    int head_dim;           /* 512 published: q/k/v head width, rope dims included */
    int rope_head_dim;      /* qk_rope_head_dim: the LAST rope_head_dim dims of a head get RoPE */
    int q_lora_rank;
    int o_groups;
    int o_lora_rank;
    int window_size;        /* sliding_window */

    /* per layer, n_layers + n_mtp_layers entries (MTP blocks after the main ones) */
    int *layer_kind;        /* st_attn_kind */
    int *compress_ratio;    /* 0 for window layers, else tokens per compressed entry */
    bool *layer_hash;       /* hash-routed MoE; true exactly for i < n_hash_layers */

    /* MoE (every layer is MoE) */
    int moe_inter_dim;      /* moe_intermediate_size: routed and shared expert width */
    int n_routed_experts;
    int n_shared_experts;
    int n_activated_experts; /* num_experts_per_tok */
    int score_func;          /* st_score_func */
    float route_scale;       /* routed_scaling_factor */
    float swiglu_limit;      /* 0: no clamp */
    bool norm_topk_prob;

    /* norms, RoPE */
    float norm_eps;          /* rms_norm_eps */
    double rope_theta;       /* window-only layers (no scaling) */
    double compress_rope_theta; /* layers with a compressor (with YaRN when rope_factor > 0) */
    bool yarn;               /* YaRN on the compressed layers' RoPE */
    double rope_factor;      /* YaRN factor (0 when no scaling) */
    int64_t original_seq_len; /* YaRN original_max_position_embeddings (0 when no scaling) */
    double beta_fast, beta_slow;
    double attention_factor; /* YaRN mscale on cos/sin: 1.0 for V4 (transformers forces it) */
    int64_t max_position_embeddings; /* 0 when the file does not say (ModelArgs) */

    /* lightning indexer (CSA layers) */
    int index_n_heads;
    int index_head_dim;
    int index_topk;

    /* hyper-connections */
    int hc_mult;
    int hc_sinkhorn_iters;
    float hc_eps;

    /* tokens; -1 when absent */
    int64_t bos_token_id;
    int64_t eos_token_id;    /* the first one when the file lists several */
    bool tie_word_embeddings; /* always false (refused when true) */

    /* weight formats as declared (quantization_config / dtype / expert_dtype / scale_fmt) */
    st_weight_kind weight_kind;   /* non-expert matrices that the official layout quantises */
    st_weight_kind expert_kind;   /* routed experts */
    st_cfg_scale_fmt scale_fmt;   /* FP8 block scales: ue8m0 (F8_E8M0) or F32 */
    int block_out, block_in;      /* weight_block_size, 128 x 128 published */
    bool quantized;               /* quantization_config present / dtype fp8 */
} st_config;

/* Load `path`: a directory holding config.json, or the JSON file itself.
 * Fills *out (zeroed first). 0, or ST_ERR_IO / ST_ERR_NOT_FOUND / ST_ERR_FORMAT
 * (bad JSON, a field missing or of the wrong type) / ST_ERR_INVALID (an
 * impossible value) / ST_ERR_UNSUPPORTED (other architecture, tied embeddings)
 * with a message naming the file, the field and its value. On error *out holds
 * nothing to free (st_config_free is still safe). */
int st_config_load(const char *path, st_config *out);

/* Same from JSON text (len bytes, need not be NUL-terminated). `source` names
 * the text in messages ("config.json", a path). */
int st_config_parse(const char *json, size_t len, const char *source, st_config *out);

/* What the engine (not the model) cannot run: hc_mult above 16, a CSA
 * layer's index_head_dim not a power of two (the indexer's Hadamard). 0 or
 * ST_ERR_UNSUPPORTED naming `source` and the field. */
int st_config_check_engine(const st_config *cfg, const char *source);

/* Frees the per-layer arrays and zeroes *cfg. NULL and zeroed configs are fine;
 * calling it twice is fine. */
void st_config_free(st_config *cfg);

/* Short human summary (one to three lines) into buf; returns buf. */
char *st_config_describe(const st_config *cfg, char *buf, size_t len);

/* "window", "csa", "hca" (or "?"). */
const char *st_attn_kind_name(int kind);
/* "sqrtsoftplus", "softmax", "sigmoid" (or "?"). */
const char *st_score_func_name(int score_func);
/* "official", "model-args", "transformers". */
const char *st_config_scheme_name(st_config_scheme scheme);
/* "fp8", "fp4", "bf16", "f32". */
const char *st_weight_kind_name(st_weight_kind kind);

#endif
