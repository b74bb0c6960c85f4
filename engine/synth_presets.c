/* Presets of `strata synth`: random-weight V4 configurations, written as an
 * official config.json. Every size is a parameter; the presets only pick them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "engine/config.h"
#include "engine/synth.h"

static const st_synth_preset presets[] = {
    /* every layer kind, hash and learned routing, partial FP8 blocks; a few MB */
    {.name = "tiny", .summary = "5 layers (window, CSA, HCA), dim 64, vocab 512, 8 experts: a few MB, for tests",
     .vocab = 512, .dim = 64, .n_layers = 5, .n_hash_layers = 1, .n_heads = 4, .head_dim = 64, .rope_dims = 16,
     .q_lora_rank = 48, .o_groups = 2, .o_lora_rank = 32, .window = 8, .ratios = {0, 4, 16, 4, 16},
     .moe_inter = 64, .n_experts = 8, .top_k = 2, .route_scale = 1.5f, .swiglu_limit = 10.0f, .index_heads = 4,
     .index_dim = 32, .index_topk = 3, .hc = 4, .sinkhorn_iters = 20},
    /* the default of `make run`: real vocabulary (the V4 tokenizer), a few hundred MB */
    {.name = "mini", .summary = "6 layers, dim 512, the V4 vocabulary, 32 experts: a few hundred MB (make run)",
     .vocab = 129280, .dim = 512, .n_layers = 6, .n_hash_layers = 2, .n_heads = 8, .head_dim = 128, .rope_dims = 64,
     .q_lora_rank = 256, .o_groups = 2, .o_lora_rank = 128, .window = 128, .ratios = {0, 0, 4, 128, 4, 128},
     .moe_inter = 512, .n_experts = 32, .top_k = 6, .route_scale = 1.5f, .swiglu_limit = 10.0f, .index_heads = 8,
     .index_dim = 128, .index_topk = 64, .hc = 4, .sinkhorn_iters = 20, .with_tokenizer = true},
    /* two layers with V4-Flash's true dimensions and all its experts: about 9 GB */
    {.name = "flash-2l", .summary = "2 layers (CSA, HCA) with V4-Flash's true sizes, 256 experts: about 9 GB",
     .vocab = 129280, .dim = 4096, .n_layers = 2, .n_hash_layers = 1, .n_heads = 64, .head_dim = 512,
     .rope_dims = 64, .q_lora_rank = 1024, .o_groups = 8, .o_lora_rank = 1024, .window = 128, .ratios = {4, 128},
     .moe_inter = 2048, .n_experts = 256, .top_k = 6, .route_scale = 1.5f, .swiglu_limit = 10.0f,
     .index_heads = 64, .index_dim = 128, .index_topk = 512, .hc = 4, .sinkhorn_iters = 20, .with_tokenizer = true},
};

const st_synth_preset *st_synth_find(const char *name) {
    for (size_t i = 0; i < ST_ARRAY_LEN(presets); i++)
        if (!strcmp(presets[i].name, name)) return &presets[i];
    return NULL;
}

void st_synth_list(FILE *f) {
    for (size_t i = 0; i < ST_ARRAY_LEN(presets); i++) fprintf(f, "  %-10s %s\n", presets[i].name, presets[i].summary);
}

int st_synth_from_config(const st_config *c, const char *src, st_synth_preset *o) {
    memset(o, 0, sizeof *o);
    int rc = st_config_check_engine(c, src);
    if (rc) return rc;
    /* the sizes are the config's; the format is always the published one */
    if (!c->quantized || c->weight_kind != ST_WK_FP8 || c->expert_kind != ST_WK_FP4)
        ST_WARN("%s declares %s weights and %s experts: synth writes the published format (FP8 e4m3 with ue8m0 "
                "128x128 block scales, FP4 experts) and says so in its config.json",
                src, c->quantized ? "fp8" : st_weight_kind_name(c->weight_kind), st_weight_kind_name(c->expert_kind));
    if (c->n_layers + c->n_mtp_layers > ST_SYNTH_MAX_LAYERS)
        return st_error(ST_ERR_UNSUPPORTED, "%s: num_hidden_layers + num_nextn_predict_layers = %d + %d: synth writes at most %d blocks",
                        src, c->n_layers, c->n_mtp_layers, ST_SYNTH_MAX_LAYERS);
    for (int i = 0; i < c->n_layers + c->n_mtp_layers; i++) {
        /* the official layout says the kind only through the ratio: CSA iff 4 */
        const int r = c->compress_ratio[i], k = c->layer_kind[i];
        if ((k == ST_ATTN_WINDOW) != (r == 0) || (k == ST_ATTN_CSA) != (r == 4))
            return st_error(ST_ERR_UNSUPPORTED,
                            "%s: compress_ratios: layer %d is %s with ratio %d, which the official layout cannot express "
                            "(window = 0, CSA = 4, HCA = other)",
                            src, i, st_attn_kind_name(k), r);
        o->ratios[i] = r;
    }
    o->name = "config";
    o->summary = src;
    o->vocab = c->vocab_size;
    o->dim = c->dim;
    o->n_layers = c->n_layers;
    o->n_hash_layers = c->n_hash_layers;
    o->n_heads = c->n_heads;
    o->head_dim = c->head_dim;
    o->rope_dims = c->rope_head_dim;
    o->q_lora_rank = c->q_lora_rank;
    o->o_groups = c->o_groups;
    o->o_lora_rank = c->o_lora_rank;
    o->window = c->window_size;
    o->moe_inter = c->moe_inter_dim;
    o->n_experts = c->n_routed_experts;
    o->top_k = c->n_activated_experts;
    o->route_scale = c->route_scale;
    o->swiglu_limit = c->swiglu_limit;
    o->index_heads = c->index_n_heads;
    o->index_dim = c->index_head_dim;
    o->index_topk = c->index_topk;
    o->hc = c->hc_mult;
    o->sinkhorn_iters = c->hc_sinkhorn_iters;
    o->from_config = true;
    o->n_shared = c->n_shared_experts;
    o->n_mtp = c->n_mtp_layers;
    o->score_func = c->score_func;
    o->norm_topk_prob = c->norm_topk_prob;
    o->yarn = c->yarn;
    o->rope_theta = c->rope_theta;
    o->compress_rope_theta = c->compress_rope_theta;
    o->rope_factor = c->rope_factor;
    o->beta_fast = c->beta_fast;
    o->beta_slow = c->beta_slow;
    o->norm_eps = c->norm_eps;
    o->hc_eps = c->hc_eps;
    o->original_seq_len = c->original_seq_len;
    o->max_pos = c->max_position_embeddings;
    o->bos = c->bos_token_id;
    o->eos = c->eos_token_id;
    return 0;
}

/* The shortest decimal that reads back as the same float (1e-06, not 9.99999997e-07). */
static const char *float_text(double v, char *buf, size_t len) {
    for (int prec = 6; prec <= 9; prec++) { /* %g first: 10, not 1e+01 */
        snprintf(buf, len, "%.*g", prec, v);
        if ((float)strtod(buf, NULL) == (float)v) break;
    }
    return buf;
}

int st_synth_config_json(const st_synth_preset *p, char *buf, size_t len) {
    char f_rs[32], f_sl[32], f_he[32], f_ne[32];
    const bool fc = p->from_config;
    char ratios[1024], tokens[96] = "", rope[320], maxpos[64] = "";
    int n = 0;
    for (int i = 0; i < p->n_layers + (fc ? p->n_mtp : 0); i++)
        n += snprintf(ratios + n, sizeof ratios - (size_t)n, "%s%d", i ? ", " : "", p->ratios[i]);
    const int64_t bos = fc ? p->bos : 0, eos = fc ? p->eos : 1;
    if (bos >= 0) n = snprintf(tokens, sizeof tokens, "  \"bos_token_id\": %lld,\n", (long long)bos);
    else n = 0;
    if (eos >= 0) snprintf(tokens + n, sizeof tokens - (size_t)n, "  \"eos_token_id\": %lld,\n", (long long)eos);
    if (!fc || p->yarn)
        snprintf(rope, sizeof rope,
                 "  \"rope_scaling\": {\"type\": \"yarn\", \"factor\": %.17g, \"original_max_position_embeddings\": %lld,"
                 " \"beta_fast\": %.17g, \"beta_slow\": %.17g},\n",
                 fc ? p->rope_factor : 16.0, fc ? (long long)p->original_seq_len : 65536LL, fc ? p->beta_fast : 32.0,
                 fc ? p->beta_slow : 1.0);
    else snprintf(rope, sizeof rope, "  \"rope_scaling\": null,\n");
    if (!fc || p->max_pos > 0)
        snprintf(maxpos, sizeof maxpos, "  \"max_position_embeddings\": %lld,\n", fc ? (long long)p->max_pos : 1048576LL);
    int w = snprintf(
        buf, len,
        "{\n"
        "  \"architectures\": [\"DeepseekV4ForCausalLM\"],\n"
        "  \"model_type\": \"deepseek_v4\",\n"
        "%s"
        "  \"vocab_size\": %lld,\n  \"hidden_size\": %lld,\n  \"num_hidden_layers\": %d,\n"
        "  \"num_hash_layers\": %d,\n  \"num_nextn_predict_layers\": %d,\n"
        "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": 1,\n  \"head_dim\": %d,\n"
        "  \"qk_rope_head_dim\": %d,\n  \"q_lora_rank\": %d,\n  \"o_groups\": %d,\n  \"o_lora_rank\": %d,\n"
        "  \"sliding_window\": %d,\n  \"compress_ratios\": [%s],\n"
        "  \"moe_intermediate_size\": %d,\n  \"n_routed_experts\": %d,\n  \"n_shared_experts\": %d,\n"
        "  \"num_experts_per_tok\": %d,\n  \"norm_topk_prob\": %s,\n  \"scoring_func\": \"%s\",\n"
        "  \"topk_method\": \"noaux_tc\",\n  \"routed_scaling_factor\": %s,\n  \"swiglu_limit\": %s,\n"
        "  \"index_n_heads\": %d,\n  \"index_head_dim\": %d,\n  \"index_topk\": %d,\n"
        "  \"hc_mult\": %d,\n  \"hc_sinkhorn_iters\": %d,\n  \"hc_eps\": %s,\n  \"rms_norm_eps\": %s,\n"
        "  \"rope_theta\": %.17g,\n  \"compress_rope_theta\": %.17g,\n"
        "%s%s"
        "  \"tie_word_embeddings\": false,\n  \"hidden_act\": \"silu\",\n"
        "  \"expert_dtype\": \"fp4\",\n  \"torch_dtype\": \"bfloat16\",\n"
        "  \"quantization_config\": {\"activation_scheme\": \"dynamic\", \"fmt\": \"e4m3\", \"quant_method\": \"fp8\","
        " \"scale_fmt\": \"ue8m0\", \"weight_block_size\": [128, 128]}\n"
        "}\n",
        tokens, (long long)p->vocab, (long long)p->dim, p->n_layers, p->n_hash_layers, fc ? p->n_mtp : 0, p->n_heads,
        p->head_dim, p->rope_dims, p->q_lora_rank, p->o_groups, p->o_lora_rank, p->window, ratios, p->moe_inter,
        p->n_experts, fc ? p->n_shared : 1, p->top_k, !fc || p->norm_topk_prob ? "true" : "false",
        fc ? st_score_func_name(p->score_func) : "sqrtsoftplus", float_text(p->route_scale, f_rs, sizeof f_rs), float_text(p->swiglu_limit, f_sl, sizeof f_sl),
        p->index_heads, p->index_dim, p->index_topk, p->hc, p->sinkhorn_iters, float_text(fc ? p->hc_eps : 1e-6, f_he, sizeof f_he),
        float_text(fc ? p->norm_eps : 1e-6, f_ne, sizeof f_ne), fc ? p->rope_theta : 10000.0, fc ? p->compress_rope_theta : 160000.0, rope, maxpos);
    return w > 0 && (size_t)w < len ? 0 : st_error(ST_ERR_INTERNAL, "config.json buffer too small");
}
