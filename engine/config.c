/* config: config.json of DeepSeek-V4 in its three key schemes -> st_config.
 *
 * DESIGN: every value the model reads passes through one of the typed getters
 * below, which name the JSON key and the value on refusal. Defaults exist only
 * where a reference implementation defines them (transformers' DeepseekV4Config
 * for its scheme; the eps / iteration constants that every reference shares);
 * sizes of the official schemes are required. Never hard-codes published sizes
 * as limits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cJSON.h>

#include "base/base.h"
#include "engine/config.h"

#define MAX_TOTAL_LAYERS 65536 /* refuse absurd layer counts before allocating per-layer arrays */

typedef struct jctx {
    const cJSON *root;
    const char *src;
    st_config_scheme scheme;
} jctx;

static const cJSON *jget(const cJSON *obj, const char *key) {
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

static int bad_value(const jctx *j, const char *key, const cJSON *v, const char *why) {
    char t[64];
    jtext(v, t, sizeof t);
    return st_error(ST_ERR_INVALID, "%s: %s = %s %s", j->src, key, t, why);
}

/* Integer field. `present`: set when the key exists. Missing + required -> error. */
static int get_int(const jctx *j, const cJSON *obj, const char *key, bool required, int64_t def, int64_t lo,
                   int64_t hi, int64_t *out) {
    const cJSON *v = jget(obj, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return st_error(ST_ERR_FORMAT, "%s: required field %s is missing", j->src, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v)) return st_error(ST_ERR_FORMAT, "%s: %s must be a number", j->src, key);
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d) || fabs(d) > 9.0e15) return bad_value(j, key, v, "is not an integer");
    int64_t x = (int64_t)d;
    if (x < lo) {
        char why[64];
        snprintf(why, sizeof why, "must be >= %lld", (long long)lo);
        return bad_value(j, key, v, why);
    }
    if (x > hi) {
        char why[64];
        snprintf(why, sizeof why, "must be <= %lld", (long long)hi);
        return bad_value(j, key, v, why);
    }
    *out = x;
    return 0;
}

static int get_i32(const jctx *j, const cJSON *obj, const char *key, bool required, int64_t def, int64_t lo,
                   int64_t hi, int *out) {
    int64_t x;
    int rc = get_int(j, obj, key, required, def, lo, hi > INT32_MAX ? INT32_MAX : hi, &x);
    if (!rc) *out = (int)x;
    return rc;
}

/* Real field; `positive`: must be > 0, else >= 0. */
static int get_real(const jctx *j, const cJSON *obj, const char *key, bool required, double def, bool positive,
                    double *out) {
    const cJSON *v = jget(obj, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return st_error(ST_ERR_FORMAT, "%s: required field %s is missing", j->src, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v)) return st_error(ST_ERR_FORMAT, "%s: %s must be a number", j->src, key);
    double d = v->valuedouble;
    if (!isfinite(d)) return bad_value(j, key, v, "is not finite");
    if (positive ? !(d > 0) : d < 0) return bad_value(j, key, v, positive ? "must be > 0" : "must be >= 0");
    *out = d;
    return 0;
}

static int get_bool(const jctx *j, const cJSON *obj, const char *key, bool def, bool *out) {
    const cJSON *v = jget(obj, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) return st_error(ST_ERR_FORMAT, "%s: %s must be true or false", j->src, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* String field or NULL when absent; a non-string is an error. */
static int get_str(const jctx *j, const cJSON *obj, const char *key, const char **out) {
    const cJSON *v = jget(obj, key);
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
        if (jget(root, tf_keys[i])) return ST_CONFIG_TRANSFORMERS;
    if (jget(root, "dim") && jget(root, "n_layers")) return ST_CONFIG_MODEL_ARGS;
    return ST_CONFIG_OFFICIAL;
}

static int check_architecture(const jctx *j, st_config *c) {
    const char *mt;
    int rc = get_str(j, j->root, "model_type", &mt);
    if (rc) return rc;
    const cJSON *arch = jget(j->root, "architectures");
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
    int rc = get_str(j, j->root, key, &s);
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
static int official_ratios(const jctx *j, st_config *c, bool mtp_known) {
    const cJSON *r = jget(j->root, "compress_ratios");
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
            return bad_value(j, key, v, "is not an integer");
        if (v->valuedouble < 0) return bad_value(j, key, v, "must be >= 0");
        if (v->valuedouble > INT32_MAX) return bad_value(j, key, v, "is too large");
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
    const cJSON *cr = jget(j->root, "compress_rates");
    int rc;
    if (cr && !cJSON_IsNull(cr)) {
        if (!cJSON_IsObject(cr)) return st_error(ST_ERR_FORMAT, "%s: compress_rates must be an object", j->src);
        for (int k = 1; k < 3; k++) {
            char key[80];
            snprintf(key, sizeof key, "compress_rates.%s", TF_TYPES[k]);
            int64_t x;
            const cJSON *v = jget(cr, TF_TYPES[k]);
            if (!v) continue;
            if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble)) return bad_value(j, key, v, "is not an integer");
            if (v->valuedouble < 1 || v->valuedouble > INT32_MAX) return bad_value(j, key, v, "must be >= 1");
            x = (int64_t)v->valuedouble;
            rates[k] = (int)x;
        }
    }
    if ((rc = get_i32(j, j->root, "compress_rate_csa", false, rates[1], 1, INT32_MAX, &rates[1])) ||
        (rc = get_i32(j, j->root, "compress_rate_hca", false, rates[2], 1, INT32_MAX, &rates[2])))
        return rc;
    return 0;
}

/* transformers: layer_types > legacy compress_ratios > its default interleave
 * (two HCA, then HCA/CSA alternating from layer 2). Rates from compress_rates. */
static int tf_layers(const jctx *j, st_config *c) {
    int rates[3], rc;
    if ((rc = tf_rates(j, rates))) return rc;
    if (c->n_layers + c->n_mtp_layers > MAX_TOTAL_LAYERS)
        return st_error(ST_ERR_INVALID, "%s: %d layers + %d MTP layers is more than %d", j->src, c->n_layers,
                        c->n_mtp_layers, MAX_TOTAL_LAYERS);
    if ((rc = alloc_layers(c))) return rc;
    const int total = c->n_layers + c->n_mtp_layers;
    const cJSON *lt = jget(j->root, "layer_types"), *legacy = jget(j->root, "compress_ratios");
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
                return bad_value(j, key, v,
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
            if (!cJSON_IsNumber(v)) return bad_value(j, key, v, "is not a number");
            double d = v->valuedouble;
            int k = d == 0 ? 0 : d == 4 ? ST_ATTN_CSA : d == 128 ? ST_ATTN_HCA : -1;
            if (k < 0) return bad_value(j, key, v, "must be 0, 4 or 128 (transformers maps only these to layer types)");
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
static int hash_layers(const jctx *j, st_config *c) {
    int rc;
    const cJSON *mt = j->scheme == ST_CONFIG_TRANSFORMERS ? jget(j->root, "mlp_layer_types") : NULL;
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
                return bad_value(j, key, v, "is not one of hash_moe, moe");
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
        if ((rc = get_int(j, j->root, key, false, def, 0, INT32_MAX, &n))) return rc;
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
    const cJSON *t = jget(o, "rope_type");
    if (!t) {
        t = jget(o, "type");
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
        const cJSON *v = jget(sub, leaves[i]);
        if (v) cJSON_AddItemToObject(tmp, fulls[i], cJSON_Duplicate(v, true));
    }
    rc = get_real(j, tmp, kf, true, 0, true, &f);
    if (!rc) rc = get_int(j, tmp, ko, true, 0, 1, INT64_MAX / 2, &orig);
    if (!rc) rc = get_real(j, tmp, kb, false, 32, false, &b1); /* transformers' YaRN defaults */
    if (!rc) rc = get_real(j, tmp, ks, false, 1, false, &b2);
    if (!rc) rc = get_real(j, tmp, ka, false, 1.0, true, &af);
    cJSON_Delete(tmp);
    if (rc) return rc;
    c->rope_factor = f;
    c->original_seq_len = orig;
    c->beta_fast = b1;
    c->beta_slow = b2;
    c->attention_factor = af;
    return 0;
}

static int parse_rope(const jctx *j, st_config *c) {
    int rc;
    c->attention_factor = 1.0;
    if (j->scheme == ST_CONFIG_MODEL_ARGS) { /* ModelArgs defaults; YaRN iff original_seq_len > 0 */
        int64_t orig;
        if ((rc = get_real(j, j->root, "rope_theta", false, 10000.0, true, &c->rope_theta)) ||
            (rc = get_real(j, j->root, "compress_rope_theta", false, 40000.0, true, &c->compress_rope_theta)) ||
            (rc = get_real(j, j->root, "rope_factor", false, 40, true, &c->rope_factor)) ||
            (rc = get_int(j, j->root, "original_seq_len", false, 0, 0, INT64_MAX / 2, &orig)) ||
            (rc = get_real(j, j->root, "beta_fast", false, 32, false, &c->beta_fast)) ||
            (rc = get_real(j, j->root, "beta_slow", false, 1, false, &c->beta_slow)))
            return rc;
        c->original_seq_len = orig;
        c->yarn = orig > 0;
        if (!c->yarn) c->rope_factor = 0;
        return 0;
    }
    const bool tf = j->scheme == ST_CONFIG_TRANSFORMERS;
    if ((rc = get_real(j, j->root, "compress_rope_theta", !tf, 160000.0, true, &c->compress_rope_theta))) return rc;
    const cJSON *rp = tf ? jget(j->root, "rope_parameters") : NULL;
    const char *rp_name = "rope_parameters";
    if (!rp || cJSON_IsNull(rp)) {
        rp = jget(j->root, "rope_scaling");
        rp_name = "rope_scaling";
    }
    if (rp && cJSON_IsNull(rp)) rp = NULL;
    if (rp && !cJSON_IsObject(rp)) return st_error(ST_ERR_FORMAT, "%s: %s must be an object", j->src, rp_name);
    const cJSON *main = rp ? jget(rp, "main") : NULL, *comp = rp ? jget(rp, "compress") : NULL;
    if (tf && cJSON_IsObject(main) && cJSON_IsObject(comp)) { /* nested {main, compress} */
        const jctx jm = *j;
        char mk[64];
        snprintf(mk, sizeof mk, "%s.main.rope_theta", rp_name);
        cJSON *tmp = cJSON_CreateObject();
        if (!tmp) return st_error(ST_ERR_NOMEM, "config: out of memory");
        const cJSON *v = jget(main, "rope_theta");
        if (v) cJSON_AddItemToObject(tmp, mk, cJSON_Duplicate(v, true));
        double top;
        rc = get_real(&jm, j->root, "rope_theta", false, 10000.0, true, &top);
        if (!rc) rc = get_real(&jm, tmp, mk, false, top, true, &c->rope_theta);
        cJSON_Delete(tmp);
        if (rc) return rc;
        const cJSON *mt = jget(main, "rope_type");
        if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "default")))
            return bad_value(j, "rope_parameters.main.rope_type", mt, "is not supported (window layers use plain RoPE)");
        tmp = cJSON_CreateObject();
        if (!tmp) return st_error(ST_ERR_NOMEM, "config: out of memory");
        snprintf(mk, sizeof mk, "%s.compress.rope_theta", rp_name);
        v = jget(comp, "rope_theta");
        if (v) cJSON_AddItemToObject(tmp, mk, cJSON_Duplicate(v, true));
        rc = get_real(&jm, tmp, mk, false, c->compress_rope_theta, true, &c->compress_rope_theta);
        cJSON_Delete(tmp);
        if (rc) return rc;
        return rope_object(j, comp, "rope_parameters.compress", c);
    }
    /* flat: YaRN keys for the compressed layers; main theta from rope_theta
     * (transformers may have folded it into the flat dict) */
    double flat_theta = 10000.0;
    if (rp && jget(rp, "rope_theta")) {
        char k[64];
        snprintf(k, sizeof k, "%s.rope_theta", rp_name);
        cJSON *tmp = cJSON_CreateObject();
        if (!tmp) return st_error(ST_ERR_NOMEM, "config: out of memory");
        cJSON_AddItemToObject(tmp, k, cJSON_Duplicate(jget(rp, "rope_theta"), true));
        rc = get_real(j, tmp, k, false, 10000.0, true, &flat_theta);
        cJSON_Delete(tmp);
        if (rc) return rc;
    }
    bool need_theta = !tf && !(rp && jget(rp, "rope_theta"));
    if ((rc = get_real(j, j->root, "rope_theta", need_theta, flat_theta, true, &c->rope_theta))) return rc;
    if (rp) return rope_object(j, rp, rp_name, c);
    return 0;
}

/* ---- weight formats ---- */

static int expert_dtype(const jctx *j, const cJSON *obj, const char *key, st_config *c) {
    const char *e;
    int rc = get_str(j, obj, key, &e);
    if (rc || !e) return rc;
    if (!strcmp(e, "fp4")) c->expert_kind = ST_WK_FP4;
    else if (!strcmp(e, "fp8")) c->expert_kind = ST_WK_FP8;
    else return st_error(ST_ERR_UNSUPPORTED, "%s: %s = \"%s\" is not supported (fp4 or fp8)", j->src, key, e);
    return 0;
}

static int parse_formats(const jctx *j, st_config *c) {
    int rc;
    c->block_out = c->block_in = 128;
    c->scale_fmt = ST_SCALEFMT_UE8M0;
    if (j->scheme == ST_CONFIG_MODEL_ARGS) {
        const char *dt, *sd, *sf;
        if ((rc = get_str(j, j->root, "dtype", &dt)) || (rc = get_str(j, j->root, "scale_dtype", &sd)) ||
            (rc = get_str(j, j->root, "scale_fmt", &sf)))
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
    const cJSON *q = jget(j->root, "quantization_config");
    if (q && !cJSON_IsNull(q)) {
        if (!cJSON_IsObject(q)) return st_error(ST_ERR_FORMAT, "%s: quantization_config must be an object", j->src);
        const char *m, *fmt, *sf;
        if ((rc = get_str(j, q, "quant_method", &m)) || (rc = get_str(j, q, "fmt", &fmt)) ||
            (rc = get_str(j, q, "scale_fmt", &sf)))
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
        const cJSON *bs = jget(q, "weight_block_size");
        if (bs) {
            if (!cJSON_IsArray(bs) || cJSON_GetArraySize(bs) != 2 || !cJSON_IsNumber(cJSON_GetArrayItem(bs, 0)) ||
                !cJSON_IsNumber(cJSON_GetArrayItem(bs, 1)))
                return bad_value(j, "quantization_config.weight_block_size", bs, "is not a list of two integers");
            double bo = cJSON_GetArrayItem(bs, 0)->valuedouble, bi = cJSON_GetArrayItem(bs, 1)->valuedouble;
            if (bo != 128 || bi != 128)
                return bad_value(j, "quantization_config.weight_block_size", bs, "is not supported (128 x 128 blocks)");
        }
        c->weight_kind = ST_WK_FP8;
        c->quantized = true;
        c->expert_kind = ST_WK_FP8;
        if ((rc = expert_dtype(j, q, "expert_dtype", c))) return rc;
        return expert_dtype(j, j->root, "expert_dtype", c);
    }
    const char *dt;
    if ((rc = get_str(j, j->root, "torch_dtype", &dt))) return rc;
    const char *dkey = "torch_dtype";
    if (!dt) {
        if ((rc = get_str(j, j->root, "dtype", &dt))) return rc;
        dkey = "dtype";
    }
    if (!dt || !strcmp(dt, "bfloat16")) c->weight_kind = ST_WK_BF16;
    else if (!strcmp(dt, "float32")) c->weight_kind = ST_WK_F32;
    else return st_error(ST_ERR_UNSUPPORTED, "%s: %s = \"%s\" is not supported (bfloat16 or float32)", j->src, dkey, dt);
    c->expert_kind = c->weight_kind;
    return expert_dtype(j, j->root, "expert_dtype", c);
}

/* ---- sizes ---- */

static int parse_sizes(const jctx *j, st_config *c, bool *mtp_known) {
    const bool args = j->scheme == ST_CONFIG_MODEL_ARGS, tf = j->scheme == ST_CONFIG_TRANSFORMERS;
    const bool req = !tf; /* transformers fills missing keys with its class defaults */
    const cJSON *r = j->root;
    int rc;
    int64_t v;
#define K(official, margs) (args ? (margs) : (official))
    if ((rc = get_int(j, r, "vocab_size", req, 129280, 1, INT32_MAX, &c->vocab_size)) ||
        (rc = get_int(j, r, K("hidden_size", "dim"), req, 4096, 1, INT32_MAX, &c->dim)) ||
        (rc = get_i32(j, r, K("num_hidden_layers", "n_layers"), req, 43, 1, MAX_TOTAL_LAYERS, &c->n_layers)) ||
        (rc = get_i32(j, r, K("num_attention_heads", "n_heads"), req, 64, 1, INT32_MAX, &c->n_heads)) ||
        (rc = get_i32(j, r, "num_key_value_heads", false, 1, 1, INT32_MAX, &c->n_kv_heads)) ||
        (rc = get_i32(j, r, "head_dim", req, 512, 1, INT32_MAX, &c->head_dim)) ||
        (rc = get_i32(j, r, "q_lora_rank", req, 1024, 1, INT32_MAX, &c->q_lora_rank)) ||
        (rc = get_i32(j, r, "o_groups", req, 8, 1, INT32_MAX, &c->o_groups)) ||
        (rc = get_i32(j, r, "o_lora_rank", req, 1024, 1, INT32_MAX, &c->o_lora_rank)) ||
        (rc = get_i32(j, r, K("sliding_window", "window_size"), req, 128, 1, INT32_MAX, &c->window_size)) ||
        (rc = get_i32(j, r, K("moe_intermediate_size", "moe_inter_dim"), req, 2048, 1, INT32_MAX, &c->moe_inter_dim)) ||
        (rc = get_i32(j, r, "n_routed_experts", req, 256, 1, INT32_MAX, &c->n_routed_experts)) ||
        (rc = get_i32(j, r, "n_shared_experts", req, 1, 0, INT32_MAX, &c->n_shared_experts)) ||
        (rc = get_i32(j, r, K("num_experts_per_tok", "n_activated_experts"), req, 6, 1, INT32_MAX,
                      &c->n_activated_experts)) ||
        (rc = get_i32(j, r, "index_n_heads", req, 64, 1, INT32_MAX, &c->index_n_heads)) ||
        (rc = get_i32(j, r, "index_head_dim", req, 128, 1, INT32_MAX, &c->index_head_dim)) ||
        (rc = get_i32(j, r, "index_topk", req, 512, 1, INT32_MAX, &c->index_topk)) ||
        (rc = get_i32(j, r, "hc_mult", req, 4, 1, INT32_MAX, &c->hc_mult)) ||
        (rc = get_i32(j, r, "hc_sinkhorn_iters", false, 20, 1, INT32_MAX, &c->hc_sinkhorn_iters)) ||
        (rc = get_int(j, r, "max_position_embeddings", false, tf ? 1048576 : 0, 0, INT64_MAX / 2,
                      &c->max_position_embeddings)))
        return rc;
    /* rope dims: official qk_rope_head_dim, ModelArgs rope_head_dim, transformers
     * head_dim * partial_rotary_factor (legacy qk_rope_head_dim folded in) */
    if (tf) {
        const cJSON *prf_v = jget(r, "partial_rotary_factor");
        if (prf_v && !cJSON_IsNull(prf_v)) {
            double prf;
            if ((rc = get_real(j, r, "partial_rotary_factor", true, 0, true, &prf))) return rc;
            if (prf > 1) return bad_value(j, "partial_rotary_factor", prf_v, "must be <= 1");
            c->rope_head_dim = (int)(c->head_dim * prf);
        } else if (jget(r, "qk_rope_head_dim")) {
            if ((rc = get_i32(j, r, "qk_rope_head_dim", true, 0, 1, INT32_MAX, &c->rope_head_dim))) return rc;
        } else {
            c->rope_head_dim = (int)(c->head_dim * (64.0 / 512.0)); /* default_partial_rotary_factor */
        }
    } else if ((rc = get_i32(j, r, K("qk_rope_head_dim", "rope_head_dim"), req, 64, 1, INT32_MAX, &c->rope_head_dim))) {
        return rc;
    }
    const char *mtp_key = K("num_nextn_predict_layers", "n_mtp_layers");
    *mtp_known = jget(r, mtp_key) != NULL || args || tf;
    if ((rc = get_int(j, r, mtp_key, false, args || tf ? 1 : 0, 0, MAX_TOTAL_LAYERS, &v))) return rc;
    c->n_mtp_layers = (int)v;
    double d;
    if ((rc = get_real(j, r, K("routed_scaling_factor", "route_scale"), req && !args, args ? 1.0 : 1.5, true, &d)))
        return rc;
    c->route_scale = (float)d;
    if ((rc = get_real(j, r, "swiglu_limit", false, args ? 0.0 : 10.0, false, &d))) return rc;
    c->swiglu_limit = (float)d;
    if ((rc = get_real(j, r, K("rms_norm_eps", "norm_eps"), false, 1e-6, true, &d))) return rc;
    c->norm_eps = (float)d;
    if ((rc = get_real(j, r, "hc_eps", false, 1e-6, true, &d))) return rc;
    c->hc_eps = (float)d;
    if ((rc = get_bool(j, r, "norm_topk_prob", true, &c->norm_topk_prob)) ||
        (rc = get_bool(j, r, "tie_word_embeddings", false, &c->tie_word_embeddings)) ||
        (rc = parse_score(j, K("scoring_func", "score_func"), c)))
        return rc;
    if ((rc = get_int(j, r, "bos_token_id", false, tf ? 0 : -1, 0, INT64_MAX / 2, &c->bos_token_id))) return rc;
    const cJSON *eos = jget(r, "eos_token_id");
    if (eos && cJSON_IsArray(eos)) {
        if (cJSON_GetArraySize(eos) == 0) return bad_value(j, "eos_token_id", eos, "is an empty list");
        const cJSON *e0 = cJSON_GetArrayItem(eos, 0);
        if (!cJSON_IsNumber(e0) || e0->valuedouble < 0 || e0->valuedouble != floor(e0->valuedouble))
            return bad_value(j, "eos_token_id", eos, "is not a list of token ids");
        c->eos_token_id = (int64_t)e0->valuedouble;
    } else if ((rc = get_int(j, r, "eos_token_id", false, tf ? 1 : -1, 0, INT64_MAX / 2, &c->eos_token_id))) {
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
    if (j.scheme == ST_CONFIG_TRANSFORMERS) rc = tf_layers(&j, c);
    else rc = official_ratios(&j, c, mtp_known);
    if (rc || (rc = hash_layers(&j, c)) || (rc = parse_rope(&j, c)) || (rc = parse_formats(&j, c)) ||
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
