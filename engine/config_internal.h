/* Between config.c and config_parts.c: the JSON being read and the typed
 * getters every value passes through (each names the key and the value when
 * it refuses one), and the parts of a config that config_parts.c reads.
 * Internal to engine/. */
#ifndef ST_ENGINE_CONFIG_INTERNAL_H
#define ST_ENGINE_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <cJSON.h>

#include "engine/config.h"

#define MAX_TOTAL_LAYERS 65536 /* refuse absurd layer counts before allocating per-layer arrays */

typedef struct jctx {
    const cJSON *root;
    const char *src;
    st_config_scheme scheme;
} jctx;

/* obj[key], or NULL (obj not an object, or no such key). */
const cJSON *st_cfg_jget(const cJSON *obj, const char *key);
/* ST_ERR_INVALID: "<src>: key = <value> <why>". */
int st_cfg_bad_value(const jctx *j, const char *key, const cJSON *v, const char *why);
/* Typed fields: integers in [lo, hi], reals (positive: > 0), strings; a missing
 * key is an error when required, else def. */
int st_cfg_get_int(const jctx *j, const cJSON *obj, const char *key, bool required, int64_t def, int64_t lo,
                   int64_t hi, int64_t *out);
int st_cfg_get_i32(const jctx *j, const cJSON *obj, const char *key, bool required, int64_t def, int64_t lo,
                   int64_t hi, int *out);
int st_cfg_get_real(const jctx *j, const cJSON *obj, const char *key, bool required, double def, bool positive,
                    double *out);
int st_cfg_get_str(const jctx *j, const cJSON *obj, const char *key, const char **out);

/* config_parts.c: the layer kinds (official compress_ratios, or transformers'
 * layer_types and rates), the hash-routed layers, RoPE/YaRN, weight formats. */
int st_cfg_official_ratios(const jctx *j, st_config *c, bool mtp_known);
int st_cfg_tf_layers(const jctx *j, st_config *c);
int st_cfg_hash_layers(const jctx *j, st_config *c);
int st_cfg_parse_rope(const jctx *j, st_config *c);
int st_cfg_parse_formats(const jctx *j, st_config *c);

#endif
