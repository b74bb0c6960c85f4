/* The parts of a DeepSeek-V4 config.json read after its sizes (config.c):
 * the per-layer schedule (official compress_ratios, or transformers'
 * layer_types and rates; the hash-routed layers), RoPE with YaRN, and the
 * weight formats. Every value through config_internal.h's typed getters. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "base/base.h"
#include "engine/config.h"
#include "engine/config_internal.h"

/* ---- per-layer schedule ---- */

static const char *const TF_TYPES[3] = {"sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"};

static int tf_kind(const char *t) {
    for (int k = 0; k < 3; k++)
        if (!strcmp(t, TF_TYPES[k])) return k;
    return -1;
}

static int alloc_layers(st_config *c) {
    size_t n = (size_t)(c->n_layers + c->n_mtp_layers);
    c->layer_kind = calloc(n, sizeof *c->layer_kind);
    c->compress_ratio = calloc(n, sizeof *c->compress_ratio);
    c->layer_hash = calloc(n, sizeof *c->layer_hash);
    if (!c->layer_kind || !c->compress_ratio || !c->layer_hash) return st_error(ST_ERR_NOMEM, "config: out of memory");
    return 0;
}

/* Official / ModelArgs: compress_ratios, one int per layer then per MTP layer.
 * The official code builds the overlapping compressor + indexer iff ratio == 4. */
int st_cfg_official_ratios(const jctx *j, st_config *c, bool mtp_known) {
    const cJSON *r = st_cfg_jget(j->root, "compress_ratios");
    if (!r) return st_error(ST_ERR_FORMAT, "%s: required field compress_ratios is missing", j->src);
    if (!cJSON_IsArray(r)) return st_error(ST_ERR_FORMAT, "%s: compress_ratios must be a list", j->src);
    int len = cJSON_GetArraySize(r);
    if (!mtp_known) {
        if (len < c->n_layers)
            return st_error(ST_ERR_INVALID, "%s: compress_ratios has %d entries, expected at least %s = %d", j->src,
                            len, j->scheme == ST_CONFIG_MODEL_ARGS ? "n_layers" : "num_hidden_layers", c->n_layers);
        c->n_mtp_layers = len - c->n_layers;
    } else if (len != c->n_layers && len != c->n_layers + c->n_mtp_layers) {
        return st_error(ST_ERR_INVALID, "%s: compress_ratios has %d entries, expected %d (layers) or %d (layers + MTP)",
                        j->src, len, c->n_layers, c->n_layers + c->n_mtp_layers);
    }
    if (c->n_layers + c->n_mtp_layers > MAX_TOTAL_LAYERS)
        return st_error(ST_ERR_INVALID, "%s: %d layers + %d MTP layers is more than %d", j->src, c->n_layers,
                        c->n_mtp_layers, MAX_TOTAL_LAYERS);
    int rc = alloc_layers(c);
    if (rc) return rc;
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, r) {
        char key[48];
        snprintf(key, sizeof key, "compress_ratios[%d]", i);
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble != floor(v->valuedouble))
            return st_cfg_bad_value(j, key, v, "is not an integer");
        if (v->valuedouble < 0) return st_cfg_bad_value(j, key, v, "must be >= 0");
        if (v->valuedouble > INT32_MAX) return st_cfg_bad_value(j, key, v, "is too large");
        int x = (int)v->valuedouble;
        c->compress_ratio[i] = x;
        c->layer_kind[i] = x == 0 ? ST_ATTN_WINDOW : x == 4 ? ST_ATTN_CSA : ST_ATTN_HCA;
        i++;
    }
    return 0;
}

static int tf_rates(const jctx *j, int rates[3]) {
    rates[0] = 0;
    rates[ST_ATTN_CSA] = 4; /* DeepseekV4Config.default_compress_rates */
    rates[ST_ATTN_HCA] = 128;
    const cJSON *cr = st_cfg_jget(j->root, "compress_rates");
    int rc;
    if (cr && !cJSON_IsNull(cr)) {
        if (!cJSON_IsObject(cr)) return st_error(ST_ERR_FORMAT, "%s: compress_rates must be an object", j->src);
        for (int k = 1; k < 3; k++) {
            char key[80];
            snprintf(key, sizeof key, "compress_rates.%s", TF_TYPES[k]);
            int64_t x;
            const cJSON *v = st_cfg_jget(cr, TF_TYPES[k]);
            if (!v) continue;
            if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble)) return st_cfg_bad_value(j, key, v, "is not an integer");
            if (v->valuedouble < 1 || v->valuedouble > INT32_MAX) return st_cfg_bad_value(j, key, v, "must be >= 1");
            x = (int64_t)v->valuedouble;
            rates[k] = (int)x;
        }
    }
    if ((rc = st_cfg_get_i32(j, j->root, "compress_rate_csa", false, rates[1], 1, INT32_MAX, &rates[1])) ||
        (rc = st_cfg_get_i32(j, j->root, "compress_rate_hca", false, rates[2], 1, INT32_MAX, &rates[2])))
        return rc;
    return 0;
}

/* transformers: layer_types > legacy compress_ratios > its default interleave
 * (two HCA, then HCA/CSA alternating from layer 2). Rates from compress_rates. */
int st_cfg_tf_layers(const jctx *j, st_config *c) {
    int rates[3], rc;
    if ((rc = tf_rates(j, rates))) return rc;
    if (c->n_layers + c->n_mtp_layers > MAX_TOTAL_LAYERS)
        return st_error(ST_ERR_INVALID, "%s: %d layers + %d MTP layers is more than %d", j->src, c->n_layers,
                        c->n_mtp_layers, MAX_TOTAL_LAYERS);
    if ((rc = alloc_layers(c))) return rc;
    const int total = c->n_layers + c->n_mtp_layers;
    const cJSON *lt = st_cfg_jget(j->root, "layer_types"), *legacy = st_cfg_jget(j->root, "compress_ratios");
    if (lt && !cJSON_IsNull(lt)) {
        if (!cJSON_IsArray(lt)) return st_error(ST_ERR_FORMAT, "%s: layer_types must be a list", j->src);
        int len = cJSON_GetArraySize(lt);
        if (len < c->n_layers)
            return st_error(ST_ERR_INVALID, "%s: layer_types has %d entries, expected num_hidden_layers = %d", j->src,
                            len, c->n_layers);
        int i = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, lt) {
            if (i >= total) break;
            int k = cJSON_IsString(v) ? tf_kind(v->valuestring) : -1;
            if (k < 0) {
                char key[48];
                snprintf(key, sizeof key, "layer_types[%d]", i);
                return st_cfg_bad_value(j, key, v,
                                 "is not one of sliding_attention, compressed_sparse_attention, heavily_compressed_attention");
            }
            c->layer_kind[i] = k;
            c->compress_ratio[i] = rates[k];
            i++;
        }
    } else if (legacy && !cJSON_IsNull(legacy)) {
        if (!cJSON_IsArray(legacy)) return st_error(ST_ERR_FORMAT, "%s: compress_ratios must be a list", j->src);
        int len = cJSON_GetArraySize(legacy);
        if (len < c->n_layers)
            return st_error(ST_ERR_INVALID, "%s: compress_ratios has %d entries, expected at least num_hidden_layers = %d",
                            j->src, len, c->n_layers);
        int i = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, legacy) {
            if (i >= total) break;
            char key[48];
            snprintf(key, sizeof key, "compress_ratios[%d]", i);
            if (!cJSON_IsNumber(v)) return st_cfg_bad_value(j, key, v, "is not a number");
            double d = v->valuedouble;
            int k = d == 0 ? 0 : d == 4 ? ST_ATTN_CSA : d == 128 ? ST_ATTN_HCA : -1;
            if (k < 0) return st_cfg_bad_value(j, key, v, "must be 0, 4 or 128 (transformers maps only these to layer types)");
            c->layer_kind[i] = k;
            c->compress_ratio[i] = rates[k];
            i++;
        }
    } else {
        for (int i = 0; i < c->n_layers; i++) {
            int k = i < 2 ? ST_ATTN_HCA : ((i - 2) % 2 ? ST_ATTN_CSA : ST_ATTN_HCA);
            c->layer_kind[i] = k;
            c->compress_ratio[i] = rates[k];
        }
    }
    return 0;
}

/* Hash-routed layers: a prefix of the main layers. */
int st_cfg_hash_layers(const jctx *j, st_config *c) {
    int rc;
    const cJSON *mt = j->scheme == ST_CONFIG_TRANSFORMERS ? st_cfg_jget(j->root, "mlp_layer_types") : NULL;
    if (mt && !cJSON_IsNull(mt)) {
        if (!cJSON_IsArray(mt)) return st_error(ST_ERR_FORMAT, "%s: mlp_layer_types must be a list", j->src);
        int len = cJSON_GetArraySize(mt);
        if (len < c->n_layers)
            return st_error(ST_ERR_INVALID, "%s: mlp_layer_types has %d entries, expected num_hidden_layers = %d",
                            j->src, len, c->n_layers);
        int i = 0, n_hash = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, mt) {
            if (i >= c->n_layers) break;
            char key[48];
            snprintf(key, sizeof key, "mlp_layer_types[%d]", i);
            bool hash = cJSON_IsString(v) && !strcmp(v->valuestring, "hash_moe");
            if (!hash && !(cJSON_IsString(v) && !strcmp(v->valuestring, "moe")))
                return st_cfg_bad_value(j, key, v, "is not one of hash_moe, moe");
            if (hash && n_hash != i)
                return st_error(ST_ERR_UNSUPPORTED, "%s: %s = \"hash_moe\" after a \"moe\" layer (hash-routed layers must come first)",
                                j->src, key);
            n_hash += hash;
            i++;
        }
        c->n_hash_layers = n_hash;
    } else {
        const char *key = j->scheme == ST_CONFIG_MODEL_ARGS ? "n_hash_layers" : "num_hash_layers";
        int64_t def = j->scheme == ST_CONFIG_TRANSFORMERS ? 3 : 0; /* DeepseekV4Config / ModelArgs defaults */
        int64_t n;
        if ((rc = st_cfg_get_int(j, j->root, key, false, def, 0, INT32_MAX, &n))) return rc;
        if (j->scheme == ST_CONFIG_TRANSFORMERS && n > c->n_layers) n = c->n_layers; /* transformers clamps */
        if (n > c->n_layers)
            return st_error(ST_ERR_INVALID, "%s: %s = %lld is more than the %d layers", j->src, key, (long long)n,
                            c->n_layers);
        c->n_hash_layers = (int)n;
    }
    for (int i = 0; i < c->n_hash_layers; i++) c->layer_hash[i] = true;
    return 0;
}

/* ---- RoPE ---- */

/* A YaRN (or default) parameter object: rope_scaling, or rope_parameters.compress. */
static int rope_object(const jctx *j, const cJSON *o, const char *oname, st_config *c) {
    char key[96];
    const char *type = NULL;
    snprintf(key, sizeof key, "%s.rope_type", oname);
    const cJSON *t = st_cfg_jget(o, "rope_type");
    if (!t) {
        t = st_cfg_jget(o, "type");
        snprintf(key, sizeof key, "%s.type", oname);
    }
    if (t && !cJSON_IsString(t)) return st_error(ST_ERR_FORMAT, "%s: %s must be a string", j->src, key);
    type = t ? t->valuestring : "default";
    if (!strcmp(type, "default")) return 0;
    if (strcmp(type, "yarn"))
        return st_error(ST_ERR_UNSUPPORTED, "%s: %s = \"%s\" is not supported (default or yarn)", j->src, key, type);
    c->yarn = true;
    int rc;
    char kf[96], ko[96], kb[96], ks[96], ka[96];
    snprintf(kf, sizeof kf, "%s.factor", oname);
    snprintf(ko, sizeof ko, "%s.original_max_position_embeddings", oname);
    snprintf(kb, sizeof kb, "%s.beta_fast", oname);
    snprintf(ks, sizeof ks, "%s.beta_slow", oname);
    snprintf(ka, sizeof ka, "%s.attention_factor", oname);
    const cJSON *sub = o;
    double f, b1, b2, af;
    int64_t orig;
    cJSON *tmp = cJSON_CreateObject(); /* re-key the object with dotted names so messages carry the path */
    if (!tmp) return st_error(ST_ERR_NOMEM, "config: out of memory");
    static const char *const leaves[] = {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
                                         "attention_factor"};
    const char *fulls[] = {kf, ko, kb, ks, ka};
    for (int i = 0; i < 5; i++) {
        const cJSON *v = st_cfg_jget(sub, leaves[i]);
        if (v) cJSON_AddItemToObject(tmp, fulls[i], cJSON_Duplicate(v, true));
    }
    rc = st_cfg_get_real(j, tmp, kf, true, 0, true, &f);
    if (!rc) rc = st_cfg_get_int(j, tmp, ko, true, 0, 1, INT64_MAX / 2, &orig);
    if (!rc) rc = st_cfg_get_real(j, tmp, kb, false, 32, false, &b1); /* transformers' YaRN defaults */
    if (!rc) rc = st_cfg_get_real(j, tmp, ks, false, 1, false, &b2);
    if (!rc) rc = st_cfg_get_real(j, tmp, ka, false, 1.0, true, &af);
    cJSON_Delete(tmp);
    if (rc) return rc;
    c->rope_factor = f;
    c->original_seq_len = orig;
    c->beta_fast = b1;
    c->beta_slow = b2;
    c->attention_factor = af;
    return 0;
}

int st_cfg_parse_rope(const jctx *j, st_config *c) {
    int rc;
    c->attention_factor = 1.0;
    if (j->scheme == ST_CONFIG_MODEL_ARGS) { /* ModelArgs defaults; YaRN iff original_seq_len > 0 */
        int64_t orig;
        if ((rc = st_cfg_get_real(j, j->root, "rope_theta", false, 10000.0, true, &c->rope_theta)) ||
            (rc = st_cfg_get_real(j, j->root, "compress_rope_theta", false, 40000.0, true, &c->compress_rope_theta)) ||
            (rc = st_cfg_get_real(j, j->root, "rope_factor", false, 40, true, &c->rope_factor)) ||
            (rc = st_cfg_get_int(j, j->root, "original_seq_len", false, 0, 0, INT64_MAX / 2, &orig)) ||
            (rc = st_cfg_get_real(j, j->root, "beta_fast", false, 32, false, &c->beta_fast)) ||
            (rc = st_cfg_get_real(j, j->root, "beta_slow", false, 1, false, &c->beta_slow)))
            return rc;
        c->original_seq_len = orig;
        c->yarn = orig > 0;
        if (!c->yarn) c->rope_factor = 0;
        return 0;
    }
    const bool tf = j->scheme == ST_CONFIG_TRANSFORMERS;
    if ((rc = st_cfg_get_real(j, j->root, "compress_rope_theta", !tf, 160000.0, true, &c->compress_rope_theta))) return rc;
    const cJSON *rp = tf ? st_cfg_jget(j->root, "rope_parameters") : NULL;
    const char *rp_name = "rope_parameters";
    if (!rp || cJSON_IsNull(rp)) {
        rp = st_cfg_jget(j->root, "rope_scaling");
        rp_name = "rope_scaling";
    }
    if (rp && cJSON_IsNull(rp)) rp = NULL;
    if (rp && !cJSON_IsObject(rp)) return st_error(ST_ERR_FORMAT, "%s: %s must be an object", j->src, rp_name);
    const cJSON *main = rp ? st_cfg_jget(rp, "main") : NULL, *comp = rp ? st_cfg_jget(rp, "compress") : NULL;
    if (tf && cJSON_IsObject(main) && cJSON_IsObject(comp)) { /* nested {main, compress} */
        const jctx jm = *j;
        char mk[64];
        snprintf(mk, sizeof mk, "%s.main.rope_theta", rp_name);
        cJSON *tmp = cJSON_CreateObject();
        if (!tmp) return st_error(ST_ERR_NOMEM, "config: out of memory");
        const cJSON *v = st_cfg_jget(main, "rope_theta");
        if (v) cJSON_AddItemToObject(tmp, mk, cJSON_Duplicate(v, true));
        double top;
        rc = st_cfg_get_real(&jm, j->root, "rope_theta", false, 10000.0, true, &top);
        if (!rc) rc = st_cfg_get_real(&jm, tmp, mk, false, top, true, &c->rope_theta);
        cJSON_Delete(tmp);
        if (rc) return rc;
        const cJSON *mt = st_cfg_jget(main, "rope_type");
        if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "default")))
            return st_cfg_bad_value(j, "rope_parameters.main.rope_type", mt, "is not supported (window layers use plain RoPE)");
        tmp = cJSON_CreateObject();
        if (!tmp) return st_error(ST_ERR_NOMEM, "config: out of memory");
        snprintf(mk, sizeof mk, "%s.compress.rope_theta", rp_name);
        v = st_cfg_jget(comp, "rope_theta");
        if (v) cJSON_AddItemToObject(tmp, mk, cJSON_Duplicate(v, true));
        rc = st_cfg_get_real(&jm, tmp, mk, false, c->compress_rope_theta, true, &c->compress_rope_theta);
        cJSON_Delete(tmp);
        if (rc) return rc;
        return rope_object(j, comp, "rope_parameters.compress", c);
    }
    /* flat: YaRN keys for the compressed layers; main theta from rope_theta
     * (transformers may have folded it into the flat dict) */
    double flat_theta = 10000.0;
    if (rp && st_cfg_jget(rp, "rope_theta")) {
        char k[64];
        snprintf(k, sizeof k, "%s.rope_theta", rp_name);
        cJSON *tmp = cJSON_CreateObject();
        if (!tmp) return st_error(ST_ERR_NOMEM, "config: out of memory");
        cJSON_AddItemToObject(tmp, k, cJSON_Duplicate(st_cfg_jget(rp, "rope_theta"), true));
        rc = st_cfg_get_real(j, tmp, k, false, 10000.0, true, &flat_theta);
        cJSON_Delete(tmp);
        if (rc) return rc;
    }
    bool need_theta = !tf && !(rp && st_cfg_jget(rp, "rope_theta"));
    if ((rc = st_cfg_get_real(j, j->root, "rope_theta", need_theta, flat_theta, true, &c->rope_theta))) return rc;
    if (rp) return rope_object(j, rp, rp_name, c);
    return 0;
}

/* ---- weight formats ---- */

static int expert_dtype(const jctx *j, const cJSON *obj, const char *key, st_config *c) {
    const char *e;
    int rc = st_cfg_get_str(j, obj, key, &e);
    if (rc || !e) return rc;
    if (!strcmp(e, "fp4")) c->expert_kind = ST_WK_FP4;
    else if (!strcmp(e, "fp8")) c->expert_kind = ST_WK_FP8;
    else return st_error(ST_ERR_UNSUPPORTED, "%s: %s = \"%s\" is not supported (fp4 or fp8)", j->src, key, e);
    return 0;
}

int st_cfg_parse_formats(const jctx *j, st_config *c) {
    int rc;
    c->block_out = c->block_in = 128;
    c->scale_fmt = ST_SCALEFMT_UE8M0;
    if (j->scheme == ST_CONFIG_MODEL_ARGS) {
        const char *dt, *sd, *sf;
        if ((rc = st_cfg_get_str(j, j->root, "dtype", &dt)) || (rc = st_cfg_get_str(j, j->root, "scale_dtype", &sd)) ||
            (rc = st_cfg_get_str(j, j->root, "scale_fmt", &sf)))
            return rc;
        if (!dt || !strcmp(dt, "fp8")) c->weight_kind = ST_WK_FP8; /* ModelArgs default fp8 */
        else if (!strcmp(dt, "bf16")) c->weight_kind = ST_WK_BF16;
        else return st_error(ST_ERR_UNSUPPORTED, "%s: dtype = \"%s\" is not supported (fp8 or bf16)", j->src, dt);
        if (sd && strcmp(sd, "fp8") && strcmp(sd, "fp32"))
            return st_error(ST_ERR_UNSUPPORTED, "%s: scale_dtype = \"%s\" is not supported (fp8 or fp32)", j->src, sd);
        if (sf && strcmp(sf, "ue8m0"))
            return st_error(ST_ERR_UNSUPPORTED, "%s: scale_fmt = \"%s\" is not supported (ue8m0 or null)", j->src, sf);
        c->scale_fmt = sd && !strcmp(sd, "fp32") ? ST_SCALEFMT_F32 : ST_SCALEFMT_UE8M0;
        c->quantized = c->weight_kind == ST_WK_FP8;
        c->expert_kind = c->weight_kind;
        return expert_dtype(j, j->root, "expert_dtype", c);
    }
    const cJSON *q = st_cfg_jget(j->root, "quantization_config");
    if (q && !cJSON_IsNull(q)) {
        if (!cJSON_IsObject(q)) return st_error(ST_ERR_FORMAT, "%s: quantization_config must be an object", j->src);
        const char *m, *fmt, *sf;
        if ((rc = st_cfg_get_str(j, q, "quant_method", &m)) || (rc = st_cfg_get_str(j, q, "fmt", &fmt)) ||
            (rc = st_cfg_get_str(j, q, "scale_fmt", &sf)))
            return rc;
        if (!m || strcmp(m, "fp8"))
            return st_error(ST_ERR_UNSUPPORTED, "%s: quantization_config.quant_method = \"%s\" is not supported (fp8)",
                            j->src, m ? m : "(absent)");
        if (fmt && strcmp(fmt, "e4m3"))
            return st_error(ST_ERR_UNSUPPORTED, "%s: quantization_config.fmt = \"%s\" is not supported (e4m3)", j->src, fmt);
        if (sf && strcmp(sf, "ue8m0"))
            return st_error(ST_ERR_UNSUPPORTED, "%s: quantization_config.scale_fmt = \"%s\" is not supported (ue8m0)",
                            j->src, sf);
        c->scale_fmt = sf ? ST_SCALEFMT_UE8M0 : ST_SCALEFMT_F32;
        const cJSON *bs = st_cfg_jget(q, "weight_block_size");
        if (bs) {
            if (!cJSON_IsArray(bs) || cJSON_GetArraySize(bs) != 2 || !cJSON_IsNumber(cJSON_GetArrayItem(bs, 0)) ||
                !cJSON_IsNumber(cJSON_GetArrayItem(bs, 1)))
                return st_cfg_bad_value(j, "quantization_config.weight_block_size", bs, "is not a list of two integers");
            double bo = cJSON_GetArrayItem(bs, 0)->valuedouble, bi = cJSON_GetArrayItem(bs, 1)->valuedouble;
            if (bo != 128 || bi != 128)
                return st_cfg_bad_value(j, "quantization_config.weight_block_size", bs, "is not supported (128 x 128 blocks)");
        }
        c->weight_kind = ST_WK_FP8;
        c->quantized = true;
        c->expert_kind = ST_WK_FP8;
        if ((rc = expert_dtype(j, q, "expert_dtype", c))) return rc;
        return expert_dtype(j, j->root, "expert_dtype", c);
    }
    const char *dt;
    if ((rc = st_cfg_get_str(j, j->root, "torch_dtype", &dt))) return rc;
    const char *dkey = "torch_dtype";
    if (!dt) {
        if ((rc = st_cfg_get_str(j, j->root, "dtype", &dt))) return rc;
        dkey = "dtype";
    }
    if (!dt || !strcmp(dt, "bfloat16")) c->weight_kind = ST_WK_BF16;
    else if (!strcmp(dt, "float32")) c->weight_kind = ST_WK_F32;
    else return st_error(ST_ERR_UNSUPPORTED, "%s: %s = \"%s\" is not supported (bfloat16 or float32)", j->src, dkey, dt);
    c->expert_kind = c->weight_kind;
    return expert_dtype(j, j->root, "expert_dtype", c);
}
