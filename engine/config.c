/* config: config.json of DeepSeek-V4 in its three key schemes -> st_config.
 *
 * DESIGN: every value the model reads passes through one of the typed getters
 * below, which name the JSON key and the value on refusal. Defaults exist only
 * where a reference implementation defines them (transformers' DeepseekV4Config
 * for its scheme; the eps / iteration constants that every reference shares);
 * sizes of the official schemes are required. Never hard-codes published sizes
 * as limits. The per-layer schedule, RoPE and the weight formats are read by
 * config_parts.c with the same getters (config_internal.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cJSON.h>

#include "base/base.h"
#include "engine/config.h"
#include "engine/config_internal.h"


const cJSON *st_cfg_jget(const cJSON *obj, const char *key) {
    return obj && cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

/* Short text of a JSON value for messages. */
static void jtext(const cJSON *v, char *buf, size_t len) {
    char *p = v ? cJSON_PrintUnformatted(v) : NULL;
    if (!p) {
        snprintf(buf, len, "%s", v ? "?" : "(absent)");
        return;
    }
    if (strlen(p) >= len && len > 4) {
        memcpy(buf, p, len - 4);
        strcpy(buf + len - 4, "...");
    } else {
        snprintf(buf, len, "%s", p);
    }
    free(p);
}

int st_cfg_bad_value(const jctx *j, const char *key, const cJSON *v, const char *why) {
    char t[64];
    jtext(v, t, sizeof t);
    return st_error(ST_ERR_INVALID, "%s: %s = %s %s", j->src, key, t, why);
}

/* Integer field. `present`: set when the key exists. Missing + required -> error. */
int st_cfg_get_int(const jctx *j, const cJSON *obj, const char *key, bool required, int64_t def, int64_t lo,
                   int64_t hi, int64_t *out) {
    const cJSON *v = st_cfg_jget(obj, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return st_error(ST_ERR_FORMAT, "%s: required field %s is missing", j->src, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v)) return st_error(ST_ERR_FORMAT, "%s: %s must be a number", j->src, key);
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d) || fabs(d) > 9.0e15) return st_cfg_bad_value(j, key, v, "is not an integer");
    int64_t x = (int64_t)d;
    if (x < lo) {
        char why[64];
        snprintf(why, sizeof why, "must be >= %lld", (long long)lo);
        return st_cfg_bad_value(j, key, v, why);
    }
    if (x > hi) {
        char why[64];
        snprintf(why, sizeof why, "must be <= %lld", (long long)hi);
        return st_cfg_bad_value(j, key, v, why);
    }
    *out = x;
    return 0;
}

int st_cfg_get_i32(const jctx *j, const cJSON *obj, const char *key, bool required, int64_t def, int64_t lo,
                   int64_t hi, int *out) {
    int64_t x;
    int rc = st_cfg_get_int(j, obj, key, required, def, lo, hi > INT32_MAX ? INT32_MAX : hi, &x);
    if (!rc) *out = (int)x;
    return rc;
}

/* Real field; `positive`: must be > 0, else >= 0. */
int st_cfg_get_real(const jctx *j, const cJSON *obj, const char *key, bool required, double def, bool positive,
                    double *out) {
    const cJSON *v = st_cfg_jget(obj, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return st_error(ST_ERR_FORMAT, "%s: required field %s is missing", j->src, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v)) return st_error(ST_ERR_FORMAT, "%s: %s must be a number", j->src, key);
    double d = v->valuedouble;
    if (!isfinite(d)) return st_cfg_bad_value(j, key, v, "is not finite");
    if (positive ? !(d > 0) : d < 0) return st_cfg_bad_value(j, key, v, positive ? "must be > 0" : "must be >= 0");
    *out = d;
    return 0;
}

static int get_bool(const jctx *j, const cJSON *obj, const char *key, bool def, bool *out) {
    const cJSON *v = st_cfg_jget(obj, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) return st_error(ST_ERR_FORMAT, "%s: %s must be true or false", j->src, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* String field or NULL when absent; a non-string is an error. */
int st_cfg_get_str(const jctx *j, const cJSON *obj, const char *key, const char **out) {
    const cJSON *v = st_cfg_jget(obj, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v)) return st_error(ST_ERR_FORMAT, "%s: %s must be a string", j->src, key);
    *out = v->valuestring;
    return 0;
}

static st_config_scheme detect_scheme(const cJSON *root) {
    static const char *const tf_keys[] = {"layer_types", "mlp_layer_types", "rope_parameters", "compress_rates",
                                          "partial_rotary_factor"};
    for (size_t i = 0; i < ST_ARRAY_LEN(tf_keys); i++)
        if (st_cfg_jget(root, tf_keys[i])) return ST_CONFIG_TRANSFORMERS;
    if (st_cfg_jget(root, "dim") && st_cfg_jget(root, "n_layers")) return ST_CONFIG_MODEL_ARGS;
    return ST_CONFIG_OFFICIAL;
}

static int check_architecture(const jctx *j, st_config *c) {
    const char *mt;
    int rc = st_cfg_get_str(j, j->root, "model_type", &mt);
    if (rc) return rc;
    const cJSON *arch = st_cfg_jget(j->root, "architectures");
    if (arch && !cJSON_IsArray(arch)) return st_error(ST_ERR_FORMAT, "%s: architectures must be a list", j->src);
    if (mt) {
        if (strcmp(mt, "deepseek_v4"))
            return st_error(ST_ERR_UNSUPPORTED, "%s: model_type = \"%s\" is not supported (expected \"deepseek_v4\")",
                            j->src, mt);
        snprintf(c->model_type, sizeof c->model_type, "%s", mt);
    }
    if (arch) {
        const cJSON *a;
        cJSON_ArrayForEach(a, arch) {
            if (!cJSON_IsString(a)) return st_error(ST_ERR_FORMAT, "%s: architectures entries must be strings", j->src);
            if (strcmp(a->valuestring, "DeepseekV4ForCausalLM") && strcmp(a->valuestring, "DeepseekV4Model"))
                return st_error(ST_ERR_UNSUPPORTED,
                                "%s: architectures = \"%s\" is not supported (expected \"DeepseekV4ForCausalLM\")",
                                j->src, a->valuestring);
        }
    }
    if (!mt && (!arch || cJSON_GetArraySize(arch) == 0) && j->scheme != ST_CONFIG_MODEL_ARGS)
        return st_error(ST_ERR_UNSUPPORTED, "%s: neither model_type nor architectures is given (expected deepseek_v4)",
                        j->src);
    return 0;
}

static int parse_score(const jctx *j, const char *key, st_config *c) {
    const char *s;
    int rc = st_cfg_get_str(j, j->root, key, &s);
    if (rc) return rc;
    if (!s) {
        if (j->scheme == ST_CONFIG_OFFICIAL) return st_error(ST_ERR_FORMAT, "%s: required field %s is missing", j->src, key);
        s = "sqrtsoftplus"; /* ModelArgs and DeepseekV4Config default */
    }
    if (!strcmp(s, "sqrtsoftplus")) c->score_func = ST_SCORE_SQRTSOFTPLUS;
    else if (!strcmp(s, "softmax")) c->score_func = ST_SCORE_SOFTMAX;
    else if (!strcmp(s, "sigmoid")) c->score_func = ST_SCORE_SIGMOID;
    else
        return st_error(ST_ERR_INVALID, "%s: %s = \"%s\" is not one of sqrtsoftplus, softmax, sigmoid", j->src, key, s);
    return 0;
}


/* ---- sizes ---- */

static int parse_sizes(const jctx *j, st_config *c, bool *mtp_known) {
    const bool args = j->scheme == ST_CONFIG_MODEL_ARGS, tf = j->scheme == ST_CONFIG_TRANSFORMERS;
    const bool req = !tf; /* transformers fills missing keys with its class defaults */
    const cJSON *r = j->root;
    int rc;
    int64_t v;
#define K(official, margs) (args ? (margs) : (official))
    if ((rc = st_cfg_get_int(j, r, "vocab_size", req, 129280, 1, INT32_MAX, &c->vocab_size)) ||
        (rc = st_cfg_get_int(j, r, K("hidden_size", "dim"), req, 4096, 1, INT32_MAX, &c->dim)) ||
        (rc = st_cfg_get_i32(j, r, K("num_hidden_layers", "n_layers"), req, 43, 1, MAX_TOTAL_LAYERS, &c->n_layers)) ||
        (rc = st_cfg_get_i32(j, r, K("num_attention_heads", "n_heads"), req, 64, 1, INT32_MAX, &c->n_heads)) ||
        (rc = st_cfg_get_i32(j, r, "num_key_value_heads", false, 1, 1, INT32_MAX, &c->n_kv_heads)) ||
        (rc = st_cfg_get_i32(j, r, "head_dim", req, 512, 1, INT32_MAX, &c->head_dim)) ||
        (rc = st_cfg_get_i32(j, r, "q_lora_rank", req, 1024, 1, INT32_MAX, &c->q_lora_rank)) ||
        (rc = st_cfg_get_i32(j, r, "o_groups", req, 8, 1, INT32_MAX, &c->o_groups)) ||
        (rc = st_cfg_get_i32(j, r, "o_lora_rank", req, 1024, 1, INT32_MAX, &c->o_lora_rank)) ||
        (rc = st_cfg_get_i32(j, r, K("sliding_window", "window_size"), req, 128, 1, INT32_MAX, &c->window_size)) ||
        (rc = st_cfg_get_i32(j, r, K("moe_intermediate_size", "moe_inter_dim"), req, 2048, 1, INT32_MAX, &c->moe_inter_dim)) ||
        (rc = st_cfg_get_i32(j, r, "n_routed_experts", req, 256, 1, INT32_MAX, &c->n_routed_experts)) ||
        (rc = st_cfg_get_i32(j, r, "n_shared_experts", req, 1, 0, INT32_MAX, &c->n_shared_experts)) ||
        (rc = st_cfg_get_i32(j, r, K("num_experts_per_tok", "n_activated_experts"), req, 6, 1, INT32_MAX,
                      &c->n_activated_experts)) ||
        (rc = st_cfg_get_i32(j, r, "index_n_heads", req, 64, 1, INT32_MAX, &c->index_n_heads)) ||
        (rc = st_cfg_get_i32(j, r, "index_head_dim", req, 128, 1, INT32_MAX, &c->index_head_dim)) ||
        (rc = st_cfg_get_i32(j, r, "index_topk", req, 512, 1, INT32_MAX, &c->index_topk)) ||
        (rc = st_cfg_get_i32(j, r, "hc_mult", req, 4, 1, INT32_MAX, &c->hc_mult)) ||
        (rc = st_cfg_get_i32(j, r, "hc_sinkhorn_iters", false, 20, 1, INT32_MAX, &c->hc_sinkhorn_iters)) ||
        (rc = st_cfg_get_int(j, r, "max_position_embeddings", false, tf ? 1048576 : 0, 0, INT64_MAX / 2,
                      &c->max_position_embeddings)))
        return rc;
    /* rope dims: official qk_rope_head_dim, ModelArgs rope_head_dim, transformers
     * head_dim * partial_rotary_factor (legacy qk_rope_head_dim folded in) */
    if (tf) {
        const cJSON *prf_v = st_cfg_jget(r, "partial_rotary_factor");
        if (prf_v && !cJSON_IsNull(prf_v)) {
            double prf;
            if ((rc = st_cfg_get_real(j, r, "partial_rotary_factor", true, 0, true, &prf))) return rc;
            if (prf > 1) return st_cfg_bad_value(j, "partial_rotary_factor", prf_v, "must be <= 1");
            c->rope_head_dim = (int)(c->head_dim * prf);
        } else if (st_cfg_jget(r, "qk_rope_head_dim")) {
            if ((rc = st_cfg_get_i32(j, r, "qk_rope_head_dim", true, 0, 1, INT32_MAX, &c->rope_head_dim))) return rc;
        } else {
            c->rope_head_dim = (int)(c->head_dim * (64.0 / 512.0)); /* default_partial_rotary_factor */
        }
    } else if ((rc = st_cfg_get_i32(j, r, K("qk_rope_head_dim", "rope_head_dim"), req, 64, 1, INT32_MAX, &c->rope_head_dim))) {
        return rc;
    }
    const char *mtp_key = K("num_nextn_predict_layers", "n_mtp_layers");
    *mtp_known = st_cfg_jget(r, mtp_key) != NULL || args || tf;
    if ((rc = st_cfg_get_int(j, r, mtp_key, false, args || tf ? 1 : 0, 0, MAX_TOTAL_LAYERS, &v))) return rc;
    c->n_mtp_layers = (int)v;
    double d;
    if ((rc = st_cfg_get_real(j, r, K("routed_scaling_factor", "route_scale"), req && !args, args ? 1.0 : 1.5, true, &d)))
        return rc;
    c->route_scale = (float)d;
    if ((rc = st_cfg_get_real(j, r, "swiglu_limit", false, args ? 0.0 : 10.0, false, &d))) return rc;
    c->swiglu_limit = (float)d;
    if ((rc = st_cfg_get_real(j, r, K("rms_norm_eps", "norm_eps"), false, 1e-6, true, &d))) return rc;
    c->norm_eps = (float)d;
    if ((rc = st_cfg_get_real(j, r, "hc_eps", false, 1e-6, true, &d))) return rc;
    c->hc_eps = (float)d;
    if ((rc = get_bool(j, r, "norm_topk_prob", true, &c->norm_topk_prob)) ||
        (rc = get_bool(j, r, "tie_word_embeddings", false, &c->tie_word_embeddings)) ||
        (rc = parse_score(j, K("scoring_func", "score_func"), c)))
        return rc;
    if ((rc = st_cfg_get_int(j, r, "bos_token_id", false, tf ? 0 : -1, 0, INT64_MAX / 2, &c->bos_token_id))) return rc;
    const cJSON *eos = st_cfg_jget(r, "eos_token_id");
    if (eos && cJSON_IsArray(eos)) {
        if (cJSON_GetArraySize(eos) == 0) return st_cfg_bad_value(j, "eos_token_id", eos, "is an empty list");
        const cJSON *e0 = cJSON_GetArrayItem(eos, 0);
        if (!cJSON_IsNumber(e0) || e0->valuedouble < 0 || e0->valuedouble != floor(e0->valuedouble))
            return st_cfg_bad_value(j, "eos_token_id", eos, "is not a list of token ids");
        c->eos_token_id = (int64_t)e0->valuedouble;
    } else if ((rc = st_cfg_get_int(j, r, "eos_token_id", false, tf ? 1 : -1, 0, INT64_MAX / 2, &c->eos_token_id))) {
        return rc;
    }
#undef K
    return 0;
}

/* ---- cross-field validation ---- */

static int validate(const jctx *j, st_config *c) {
    const bool args = j->scheme == ST_CONFIG_MODEL_ARGS;
#define K(official, margs) (args ? (margs) : (official))
    const char *src = j->src;
    if (c->n_kv_heads != 1)
        return st_error(ST_ERR_UNSUPPORTED, "%s: num_key_value_heads = %d (DeepSeek-V4 shares one KV head)", src, c->n_kv_heads);
    if (c->tie_word_embeddings)
        return st_error(ST_ERR_UNSUPPORTED, "%s: tie_word_embeddings = true (DeepSeek-V4 has a separate head)", src);
    if (c->rope_head_dim % 2)
        return st_error(ST_ERR_INVALID, "%s: %s = %d is not even (RoPE rotates pairs)", src,
                        K("qk_rope_head_dim", "rope_head_dim"), c->rope_head_dim);
    if (c->rope_head_dim <= 0 || c->rope_head_dim >= c->head_dim)
        return st_error(ST_ERR_INVALID, "%s: %s = %d must be > 0 and smaller than head_dim = %d", src,
                        K("qk_rope_head_dim", "rope_head_dim"), c->rope_head_dim, c->head_dim);
    if (c->n_heads % c->o_groups)
        return st_error(ST_ERR_INVALID, "%s: %s = %d is not a multiple of o_groups = %d", src,
                        K("num_attention_heads", "n_heads"), c->n_heads, c->o_groups);
    if (c->n_activated_experts > c->n_routed_experts)
        return st_error(ST_ERR_INVALID, "%s: %s = %d is more than n_routed_experts = %d", src,
                        K("num_experts_per_tok", "n_activated_experts"), c->n_activated_experts, c->n_routed_experts);
    if (c->bos_token_id >= c->vocab_size)
        return st_error(ST_ERR_INVALID, "%s: bos_token_id = %lld is not below vocab_size = %lld", src,
                        (long long)c->bos_token_id, (long long)c->vocab_size);
    if (c->eos_token_id >= c->vocab_size)
        return st_error(ST_ERR_INVALID, "%s: eos_token_id = %lld is not below vocab_size = %lld", src,
                        (long long)c->eos_token_id, (long long)c->vocab_size);
    /* products the model forms must fit comfortably in int64 */
    if ((double)c->n_heads * c->head_dim > (double)INT32_MAX || (double)c->hc_mult * (double)c->dim > (double)INT32_MAX)
        return st_error(ST_ERR_INVALID, "%s: %s * head_dim = %d * %d is too large", src, K("num_attention_heads", "n_heads"),
                        c->n_heads, c->head_dim);
    bool any_comp = false, any_csa = false;
    const int total = c->n_layers + c->n_mtp_layers;
    for (int i = 0; i < total; i++) {
        if (c->layer_kind[i] != ST_ATTN_WINDOW) any_comp = true;
        if (c->layer_kind[i] == ST_ATTN_CSA) any_csa = true;
        if (c->layer_kind[i] != ST_ATTN_WINDOW && c->compress_ratio[i] < 1)
            return st_error(ST_ERR_INVALID, "%s: layer %d is %s with compress ratio %d (must be >= 1)", src, i,
                            st_attn_kind_name(c->layer_kind[i]), c->compress_ratio[i]);
    }
    if (any_csa && (c->rope_head_dim >= c->index_head_dim))
        return st_error(ST_ERR_INVALID, "%s: index_head_dim = %d must be larger than the rope dims (%d)", src,
                        c->index_head_dim, c->rope_head_dim);
    if (c->yarn) {
        if (c->rope_factor < 1)
            return st_error(ST_ERR_INVALID, "%s: YaRN factor = %g must be >= 1", src, c->rope_factor);
        if (!(c->beta_fast > c->beta_slow))
            return st_error(ST_ERR_INVALID, "%s: YaRN beta_fast = %g must be larger than beta_slow = %g", src,
                            c->beta_fast, c->beta_slow);
    }
    (void)any_comp;
    if (c->expert_kind == ST_WK_FP4 && (c->dim % 32 || c->moe_inter_dim % 32))
        return st_error(ST_ERR_INVALID,
                        "%s: FP4 experts need hidden size and expert width divisible by 32 (have %lld and %d)", src,
                        (long long)c->dim, c->moe_inter_dim);
#undef K
    return 0;
}

/* ---- public ---- */

int st_config_check_engine(const st_config *c, const char *src) {
    if (c->hc_mult > 16) return st_error(ST_ERR_UNSUPPORTED, "%s: hc_mult = %d (strata supports up to 16)", src, c->hc_mult);
    for (int i = 0; i < c->n_layers; i++) /* MTP blocks are not run */
        if (c->layer_kind[i] == ST_ATTN_CSA && (c->index_head_dim & (c->index_head_dim - 1)))
            return st_error(ST_ERR_UNSUPPORTED, "%s: index_head_dim = %d is not a power of two (the indexer's Hadamard)",
                            src, c->index_head_dim);
    return 0;
}

int st_config_parse(const char *json, size_t len, const char *source, st_config *out) {
    memset(out, 0, sizeof *out);
    if (!source) source = "config.json";
    if (!json) return st_error(ST_ERR_INVALID, "%s: no text", source);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, false);
    if (!root) {
        size_t off = end && end >= json && end <= json + len ? (size_t)(end - json) : 0;
        int line = 1, col = 1;
        for (size_t i = 0; i < off; i++) {
            if (json[i] == '\n') { line++; col = 1; } else col++;
        }
        return st_error(ST_ERR_FORMAT, "%s: not valid JSON (error near line %d, column %d)", source, line, col);
    }
    int rc;
    if (!cJSON_IsObject(root)) {
        rc = st_error(ST_ERR_FORMAT, "%s: the top level is not a JSON object", source);
        goto done;
    }
    jctx j = {.root = root, .src = source, .scheme = detect_scheme(root)};
    st_config *c = out;
    c->scheme = j.scheme;
    bool mtp_known = false;
    if ((rc = check_architecture(&j, c)) || (rc = parse_sizes(&j, c, &mtp_known))) goto done;
    if (j.scheme == ST_CONFIG_TRANSFORMERS) rc = st_cfg_tf_layers(&j, c);
    else rc = st_cfg_official_ratios(&j, c, mtp_known);
    if (rc || (rc = st_cfg_hash_layers(&j, c)) || (rc = st_cfg_parse_rope(&j, c)) || (rc = st_cfg_parse_formats(&j, c)) ||
        (rc = validate(&j, c)))
        goto done;
done:
    cJSON_Delete(root);
    if (rc) st_config_free(out);
    return rc;
}

int st_config_load(const char *path, st_config *out) {
    memset(out, 0, sizeof *out);
    if (!path) return st_error(ST_ERR_INVALID, "config: no path");
    struct stat sb;
    if (stat(path, &sb)) return st_error(ST_ERR_NOT_FOUND, "%s: no such file or directory", path);
    char file[4096];
    if (S_ISDIR(sb.st_mode)) {
        if (snprintf(file, sizeof file, "%s/config.json", path) >= (int)sizeof file)
            return st_error(ST_ERR_INVALID, "%s: path too long", path);
        if (stat(file, &sb)) return st_error(ST_ERR_NOT_FOUND, "%s: no config.json in this directory", path);
    } else {
        snprintf(file, sizeof file, "%s", path);
    }
    char *text;
    size_t len;
    int rc = st_read_file(file, 16u << 20, &text, &len);
    if (rc) return rc;
    rc = st_config_parse(text, len, file, out);
    free(text);
    return rc;
}

void st_config_free(st_config *cfg) {
    if (!cfg) return;
    free(cfg->layer_kind);
    free(cfg->compress_ratio);
    free(cfg->layer_hash);
    memset(cfg, 0, sizeof *cfg);
}

const char *st_attn_kind_name(int kind) {
    switch (kind) {
    case ST_ATTN_WINDOW: return "window";
    case ST_ATTN_CSA: return "csa";
    case ST_ATTN_HCA: return "hca";
    default: return "?";
    }
}

const char *st_score_func_name(int score_func) {
    switch (score_func) {
    case ST_SCORE_SQRTSOFTPLUS: return "sqrtsoftplus";
    case ST_SCORE_SOFTMAX: return "softmax";
    case ST_SCORE_SIGMOID: return "sigmoid";
    default: return "?";
    }
}

const char *st_config_scheme_name(st_config_scheme scheme) {
    switch (scheme) {
    case ST_CONFIG_OFFICIAL: return "official";
    case ST_CONFIG_MODEL_ARGS: return "model-args";
    case ST_CONFIG_TRANSFORMERS: return "transformers";
    default: return "?";
    }
}

const char *st_weight_kind_name(st_weight_kind kind) {
    switch (kind) {
    case ST_WK_FP8: return "fp8";
    case ST_WK_FP4: return "fp4";
    case ST_WK_BF16: return "bf16";
    case ST_WK_F32: return "f32";
    default: return "?";
    }
}

char *st_config_describe(const st_config *c, char *buf, size_t len) {
    if (!buf || !len) return buf;
    int n_kind[3] = {0, 0, 0};
    for (int i = 0; i < c->n_layers; i++)
        if (c->layer_kind && c->layer_kind[i] >= 0 && c->layer_kind[i] < 3) n_kind[c->layer_kind[i]]++;
    snprintf(buf, len,
             "DeepSeek-V4 (%s config): %d layers (%d window, %d CSA, %d HCA; %d hash-routed) + %d MTP, hidden %lld, "
             "vocab %lld\n"
             "  attention %d heads x %d (rope %d), q_lora %d, o %d x %d, window %d; indexer %d x %d top-%d\n"
             "  MoE %d routed + %d shared, top-%d, width %d, %s x %g; hc %d; weights %s, experts %s",
             st_config_scheme_name(c->scheme), c->n_layers, n_kind[0], n_kind[1], n_kind[2], c->n_hash_layers,
             c->n_mtp_layers, (long long)c->dim, (long long)c->vocab_size, c->n_heads, c->head_dim, c->rope_head_dim,
             c->q_lora_rank, c->o_groups, c->o_lora_rank, c->window_size, c->index_n_heads, c->index_head_dim,
             c->index_topk, c->n_routed_experts, c->n_shared_experts, c->n_activated_experts, c->moe_inter_dim,
             st_score_func_name(c->score_func), (double)c->route_scale, c->hc_mult, st_weight_kind_name(c->weight_kind),
             st_weight_kind_name(c->expert_kind));
    return buf;
}
