/* Tokenizer: loading tokenizer.json / tokenizer_config.json into hash tables
 * (vocab, merges, added tokens), id lookups, decoding and the streaming decoder.
 * Encoding lives in tokenizer_encode.c, the merge loop in bpe.c.
 * Must never: accept a tokenizer.json feature it does not implement exactly
 * (it refuses with ST_ERR_UNSUPPORTED naming the field instead). */
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include <xxhash.h>

#include "base/base.h"
#include "engine/tokenizer_internal.h"

#define TOKENIZER_JSON_MAX (512u << 20)

/* ---- small helpers ---------------------------------------------------- */

void st_tokens_free(st_tokens *t) {
    if (!t) return;
    free(t->ids);
    memset(t, 0, sizeof *t);
}

int st_tokens_push(st_tokens *t, int32_t id) {
    if (t->len == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        int32_t *ids = realloc(t->ids, cap * sizeof *ids);
        if (!ids) return st_error(ST_ERR_NOMEM, "tokenizer: cannot grow the id array to %zu ids", cap);
        t->ids = ids;
        t->cap = cap;
    }
    t->ids[t->len++] = id;
    return 0;
}

int st_utf8_char_len(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int len;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;      /* no overlongs */
        else if (c == 0xED) hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        else if (c == 0xF4) hi = 0x8F; /* <= U+10FFFF */
    } else return 0;
    if (n < (size_t)len) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

/* True when s[0..n) is a proper prefix of some valid UTF-8 character. */
static bool utf8_valid_prefix(const unsigned char *s, size_t n) {
    if (n == 0 || n > 3) return false;
    unsigned c = s[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        else if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        else if (c == 0xF4) hi = 0x8F;
    } else return false;
    if (n >= len) return false;
    if (n >= 2 && (s[1] < lo || s[1] > hi)) return false;
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return false;
    return true;
}

/* ---- string map ------------------------------------------------------- */

int tok_str_map_init(tok_str_map *m, size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2 + 1) cap <<= 1;
    m->keys = calloc(cap, sizeof *m->keys);
    m->key_lens = calloc(cap, sizeof *m->key_lens);
    m->vals = calloc(cap, sizeof *m->vals);
    m->mask = cap - 1;
    if (!m->keys || !m->key_lens || !m->vals) {
        tok_str_map_free(m);
        return st_error(ST_ERR_NOMEM, "tokenizer: cannot allocate a hash table of %zu slots", cap);
    }
    return 0;
}

void tok_str_map_free(tok_str_map *m) {
    free(m->keys);
    free(m->key_lens);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

bool tok_str_map_put(tok_str_map *m, const char *key, uint32_t len, int32_t val) {
    for (size_t i = XXH3_64bits(key, len) & m->mask;; i = (i + 1) & m->mask) {
        if (!m->keys[i]) {
            m->keys[i] = key;
            m->key_lens[i] = len;
            m->vals[i] = val;
            return true;
        }
        if (m->key_lens[i] == len && !memcmp(m->keys[i], key, len)) return false;
    }
}

int32_t tok_str_map_get(const tok_str_map *m, const char *key, size_t len) {
    if (!m->keys) return -1;
    for (size_t i = XXH3_64bits(key, len) & m->mask;; i = (i + 1) & m->mask) {
        if (!m->keys[i]) return -1;
        if (m->key_lens[i] == len && !memcmp(m->keys[i], key, len)) return m->vals[i];
    }
}

/* ---- byte-level alphabet (GPT-2): every byte is one printable character ---- */

#define BYTE_LEVEL_MAX_CP 324
static void byte_level_tables(int32_t byte_cp[256], int16_t cp_byte[BYTE_LEVEL_MAX_CP]) {
    for (int i = 0; i < BYTE_LEVEL_MAX_CP; i++) cp_byte[i] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        byte_cp[b] = printable ? b : 256 + extra++;
        cp_byte[byte_cp[b]] = (int16_t)b;
    }
}

/* Decoded bytes of a token string as the ByteLevel decoder does it: each
 * character mapped back to its byte; if any character is outside the byte-level
 * alphabet, the token's own UTF-8 is used. Writes at most len bytes. */
static size_t byte_level_decode(const int16_t cp_byte[BYTE_LEVEL_MAX_CP], const char *s, size_t len, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        int cl = st_utf8_char_len((const unsigned char *)s + i, len - i);
        uint32_t cp;
        const unsigned char *u = (const unsigned char *)s + i;
        if (cl == 1) cp = u[0];
        else if (cl == 2) cp = ((u[0] & 0x1Fu) << 6) | (u[1] & 0x3Fu);
        else cp = 0xFFFFFFFF;
        if (cp >= BYTE_LEVEL_MAX_CP || cp_byte[cp] < 0) {
            memcpy(out, s, len);
            return len;
        }
        out[o++] = (char)cp_byte[cp];
        i += (size_t)cl;
    }
    return o;
}

/* ---- loading ---------------------------------------------------------- */

static const char *json_str(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool json_true(const cJSON *obj, const char *key) {
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(obj, key));
}

static int load_normalizer(const char *path, const cJSON *n) {
    if (!n || cJSON_IsNull(n)) return 0;
    const char *type = json_str(n, "type");
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (cJSON_IsArray(list) && cJSON_GetArraySize(list) == 0) return 0;
    }
    return st_error(ST_ERR_UNSUPPORTED, "%s: normalizer: expected none or an empty Sequence, found type %s", path,
                    type ? type : "?");
}

static const char GPT2_REGEX[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int load_one_pretokenizer(st_tokenizer *t, const char *path, const cJSON *p, int index, bool *byte_level) {
    char where[256];
    snprintf(where, sizeof where, "%s: pre_tokenizer[%d]", path, index);
    const char *type = json_str(p, "type");
    if (!type) return st_error(ST_ERR_FORMAT, "%s: expected a \"type\" string", where);
    if (!strcmp(type, "ByteLevel")) {
        if (json_true(p, "add_prefix_space"))
            return st_error(ST_ERR_UNSUPPORTED, "%s: ByteLevel add_prefix_space=true is not supported", where);
        *byte_level = true;
        const cJSON *ur = cJSON_GetObjectItemCaseSensitive(p, "use_regex");
        if (!ur || cJSON_IsTrue(ur)) return tok_add_split_regex(t, GPT2_REGEX, TOK_SPLIT_ISOLATED, false, where);
        return 0;
    }
    if (!strcmp(type, "Split")) {
        const char *beh = json_str(p, "behavior");
        int behavior;
        if (beh && !strcmp(beh, "Isolated")) behavior = TOK_SPLIT_ISOLATED;
        else if (beh && !strcmp(beh, "Removed")) behavior = TOK_SPLIT_REMOVED;
        else
            return st_error(ST_ERR_UNSUPPORTED, "%s: Split behavior: expected Isolated or Removed, found %s", where,
                            beh ? beh : "none");
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        bool invert = json_true(p, "invert");
        const char *re = json_str(pat, "Regex"), *lit = json_str(pat, "String");
        if (re) return tok_add_split_regex(t, re, behavior, invert, where);
        if (lit) return tok_add_split_literal(t, lit, behavior, invert, where);
        return st_error(ST_ERR_FORMAT, "%s: Split pattern: expected {\"Regex\": ...} or {\"String\": ...}", where);
    }
    return st_error(ST_ERR_UNSUPPORTED, "%s: pre-tokenizer type %s is not supported (Split, ByteLevel, Sequence are)",
                    where, type);
}

static int load_pretokenizer(st_tokenizer *t, const char *path, const cJSON *p) {
    bool byte_level = false;
    int rc = 0;
    const char *type = p ? json_str(p, "type") : NULL;
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list)) return st_error(ST_ERR_FORMAT, "%s: pre_tokenizer: Sequence without a pretokenizers array", path);
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            if ((rc = load_one_pretokenizer(t, path, it, i++, &byte_level))) return rc;
        }
    } else if (p && !cJSON_IsNull(p)) {
        if ((rc = load_one_pretokenizer(t, path, p, 0, &byte_level))) return rc;
    }
    if (!byte_level)
        return st_error(ST_ERR_UNSUPPORTED, "%s: pre_tokenizer: expected a ByteLevel step (byte-level BPE), found none", path);
    return 0;
}

static int load_model(st_tokenizer *t, const char *path, const cJSON *model, char **arena_pos) {
    const char *type = json_str(model, "type");
    if (type && strcmp(type, "BPE"))
        return st_error(ST_ERR_UNSUPPORTED, "%s: model.type: expected BPE, found %s", path, type);
    if (json_true(model, "byte_fallback"))
        return st_error(ST_ERR_UNSUPPORTED, "%s: model.byte_fallback=true is not supported", path);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble != 0.0)
        return st_error(ST_ERR_UNSUPPORTED, "%s: model.dropout=%g is not supported", path, dropout->valuedouble);
    const char *cont = json_str(model, "continuing_subword_prefix"), *suffix = json_str(model, "end_of_word_suffix");
    if ((cont && *cont) || (suffix && *suffix))
        return st_error(ST_ERR_UNSUPPORTED, "%s: model: continuing_subword_prefix/end_of_word_suffix are not supported", path);
    t->ignore_merges = json_true(model, "ignore_merges");

    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) return st_error(ST_ERR_FORMAT, "%s: model.vocab: expected an object", path);
    int rc = tok_str_map_init(&t->vocab, (size_t)cJSON_GetArraySize(vocab));
    if (rc) return rc;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= t->n_ids || it->valuedouble != (int32_t)it->valuedouble)
            return st_error(ST_ERR_FORMAT, "%s: model.vocab[\"%s\"]: expected an id in [0, %d), found %s", path,
                            it->string, t->n_ids, cJSON_IsNumber(it) ? "out of range" : "no number");
        int32_t id = (int32_t)it->valuedouble;
        size_t len = strlen(it->string);
        char *key = *arena_pos;
        memcpy(key, it->string, len);
        *arena_pos += len;
        if (!tok_str_map_put(&t->vocab, key, (uint32_t)len, id))
            return st_error(ST_ERR_FORMAT, "%s: model.vocab: token \"%s\" appears twice", path, it->string);
    }
    return 0;
}

static int load_merges(st_tokenizer *t, const char *path, const cJSON *model) {
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsArray(merges)) return st_error(ST_ERR_FORMAT, "%s: model.merges: expected an array", path);
    int n = cJSON_GetArraySize(merges);
    int rc = tok_merge_map_init(&t->merges, (size_t)n);
    if (rc) return rc;
    char buf[1024];
    int rank = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, merges) {
        const char *a, *b;
        size_t la, lb;
        if (cJSON_IsString(it)) { /* "left right" */
            const char *sp = strchr(it->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' '))
                return st_error(ST_ERR_FORMAT, "%s: model.merges[%d]: expected \"left right\", found \"%s\"", path, rank,
                                it->valuestring);
            a = it->valuestring;
            la = (size_t)(sp - a);
            b = sp + 1;
            lb = strlen(b);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) { /* ["left", "right"] */
            a = cJSON_GetArrayItem(it, 0)->valuestring;
            b = cJSON_GetArrayItem(it, 1)->valuestring;
            la = strlen(a);
            lb = strlen(b);
        } else
            return st_error(ST_ERR_FORMAT, "%s: model.merges[%d]: expected a string or a pair of strings", path, rank);
        if (la + lb > sizeof buf) return st_error(ST_ERR_FORMAT, "%s: model.merges[%d]: token too long", path, rank);
        int32_t ia = tok_str_map_get(&t->vocab, a, la), ib = tok_str_map_get(&t->vocab, b, lb);
        memcpy(buf, a, la);
        memcpy(buf + la, b, lb);
        int32_t im = tok_str_map_get(&t->vocab, buf, la + lb);
        if (ia < 0 || ib < 0 || im < 0)
            return st_error(ST_ERR_FORMAT, "%s: model.merges[%d]: \"%.*s\" + \"%.*s\": %s is not in the vocabulary", path,
                            rank, (int)la, a, (int)lb, b, ia < 0 ? "left part" : ib < 0 ? "right part" : "merged token");
        tok_merge_map_put(&t->merges, ia, ib, rank, im);
        rank++;
    }
    return 0;
}

static int load_added(st_tokenizer *t, const char *path, const cJSON *added, char **arena_pos) {
    int n = cJSON_GetArraySize(added);
    t->added = calloc((size_t)n + 1, sizeof *t->added);
    int rc = tok_str_map_init(&t->added_map, (size_t)n);
    if (!t->added) return st_error(ST_ERR_NOMEM, "tokenizer: cannot allocate %d added tokens", n);
    if (rc) return rc;
    const cJSON *it;
    int i = 0;
    bool warned = false;
    cJSON_ArrayForEach(it, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        const char *content = json_str(it, "content");
        if (!cJSON_IsNumber(id) || !content || !*content)
            return st_error(ST_ERR_FORMAT, "%s: added_tokens[%d]: expected \"id\" and a non-empty \"content\"", path, i);
        if ((json_true(it, "lstrip") || json_true(it, "rstrip") || json_true(it, "single_word")) && !warned) {
            ST_WARN("%s: added_tokens[%d] (%s): lstrip/rstrip/single_word are ignored", path, i, content);
            warned = true;
        }
        tok_added *a = &t->added[t->n_added];
        size_t len = strlen(content);
        memcpy(*arena_pos, content, len);
        a->content = *arena_pos;
        *arena_pos += len;
        a->len = (uint32_t)len;
        a->id = (int32_t)id->valuedouble;
        a->special = json_true(it, "special");
        a->normalized = json_true(it, "normalized");
        if (!tok_str_map_put(&t->added_map, a->content, a->len, (int32_t)t->n_added)) {
            i++;
            continue; /* same content twice: the first one wins */
        }
        t->flags[a->id] |= TOK_FLAG_ADDED | (a->special ? TOK_FLAG_SPECIAL : 0);
        if ((rc = tok_trie_add(a->normalized ? &t->trie_norm : &t->trie_raw, a->content, len, (int32_t)t->n_added))) return rc;
        t->n_added++;
        i++;
    }
    return 0;
}

/* Largest id in vocab and added_tokens, to size the per-id tables. */
static int32_t max_id(const cJSON *vocab, const cJSON *added) {
    double m = -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) if (cJSON_IsNumber(it) && it->valuedouble > m) m = it->valuedouble;
    cJSON_ArrayForEach(it, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        if (cJSON_IsNumber(id) && id->valuedouble > m) m = id->valuedouble;
    }
    return m < 0 || m >= (1 << 30) ? -1 : (int32_t)m;
}

/* Fills dec_off/dec_len/dec_bytes: added tokens' content first (they win, as HF), then vocab entries. */
static int build_decode_table(st_tokenizer *t, size_t total_key_bytes, const int16_t cp_byte[BYTE_LEVEL_MAX_CP]) {
    t->dec_bytes = malloc(total_key_bytes + 1);
    if (!t->dec_bytes) return st_error(ST_ERR_NOMEM, "tokenizer: cannot allocate %zu bytes of token text", total_key_bytes);
    size_t pos = 0;
    for (int32_t id = 0; id < t->n_ids; id++) t->dec_off[id] = UINT32_MAX;
    for (size_t i = 0; i < t->n_added; i++) {
        tok_added *a = &t->added[i];
        if (t->dec_off[a->id] != UINT32_MAX) continue;
        t->dec_off[a->id] = (uint32_t)pos;
        t->dec_len[a->id] = (uint32_t)byte_level_decode(cp_byte, a->content, a->len, t->dec_bytes + pos);
        pos += t->dec_len[a->id];
    }
    for (size_t i = 0; i <= t->vocab.mask; i++) {
        if (!t->vocab.keys[i]) continue;
        int32_t id = t->vocab.vals[i];
        if (t->dec_off[id] != UINT32_MAX) continue;
        t->dec_off[id] = (uint32_t)pos;
        t->dec_len[id] = (uint32_t)byte_level_decode(cp_byte, t->vocab.keys[i], t->vocab.key_lens[i], t->dec_bytes + pos);
        pos += t->dec_len[id];
    }
    for (int32_t id = 0; id < t->n_ids; id++) {
        if (t->dec_off[id] == UINT32_MAX) t->dec_off[id] = 0; /* a hole in the id space: decodes to nothing */
        if (t->dec_len[id] > t->max_token_bytes) t->max_token_bytes = t->dec_len[id];
    }
    return 0;
}

static int32_t config_token(const st_tokenizer *t, const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *s = cJSON_IsString(v) ? v->valuestring : json_str(v, "content");
    return s ? st_tokenizer_token_id(t, s) : -1;
}

static int load_config(st_tokenizer *t, const char *config_path) {
    st_tokenizer_specials *sp = &t->specials;
    if (!config_path) {
        sp->bos = st_tokenizer_token_id(t, "<｜begin▁of▁sentence｜>");
        sp->eos = st_tokenizer_token_id(t, "<｜end▁of▁sentence｜>");
        sp->pad = sp->eos;
        return 0;
    }
    char *text = NULL;
    size_t len = 0;
    int rc = st_read_file(config_path, 16u << 20, &text, &len);
    if (rc) return rc;
    cJSON *cfg = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cfg || !cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return st_error(ST_ERR_FORMAT, "%s: expected a JSON object", config_path);
    }
    sp->bos = config_token(t, cfg, "bos_token");
    sp->eos = config_token(t, cfg, "eos_token");
    sp->pad = config_token(t, cfg, "pad_token");
    cJSON_Delete(cfg);
    return 0;
}

int st_tokenizer_load_files(const char *path, const char *config_path, st_tokenizer **out) {
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = st_read_file(path, TOKENIZER_JSON_MAX, &text, &len);
    if (rc) return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= text && at <= text + len ? (long)(at - text) : -1;
        free(text);
        return st_error(ST_ERR_FORMAT, "%s: not valid JSON (near byte %ld)", path, off);
    }
    free(text);
    st_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        cJSON_Delete(root);
        return st_error(ST_ERR_NOMEM, "tokenizer: out of memory");
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    int16_t cp_byte[BYTE_LEVEL_MAX_CP];
    int32_t byte_cp[256];
    char *arena_pos;
    size_t total = 0;
    const cJSON *it;
    if (!cJSON_IsObject(model) || !cJSON_IsObject(vocab)) {
        rc = st_error(ST_ERR_FORMAT, "%s: expected a \"model\" object with a \"vocab\" object", path);
        goto done;
    }
    if (added && !cJSON_IsArray(added)) {
        rc = st_error(ST_ERR_FORMAT, "%s: added_tokens: expected an array", path);
        goto done;
    }
    int32_t top = max_id(vocab, added);
    if (top < 0) {
        rc = st_error(ST_ERR_FORMAT, "%s: no token ids (or an id >= 2^30) in model.vocab / added_tokens", path);
        goto done;
    }
    t->n_ids = top + 1;
    t->dec_off = calloc((size_t)t->n_ids, sizeof *t->dec_off);
    t->dec_len = calloc((size_t)t->n_ids, sizeof *t->dec_len);
    t->flags = calloc((size_t)t->n_ids, 1);
    cJSON_ArrayForEach(it, vocab) total += strlen(it->string);
    cJSON_ArrayForEach(it, added) {
        const char *c = json_str(it, "content");
        total += c ? strlen(c) : 0;
    }
    t->strings = malloc(total + 1);
    if (!t->dec_off || !t->dec_len || !t->flags || !t->strings) {
        rc = st_error(ST_ERR_NOMEM, "tokenizer: cannot allocate tables for %d ids", t->n_ids);
        goto done;
    }
    arena_pos = t->strings;
    byte_level_tables(byte_cp, cp_byte);
    if ((rc = load_normalizer(path, cJSON_GetObjectItemCaseSensitive(root, "normalizer")))) goto done;
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    const char *dec_type = dec ? json_str(dec, "type") : NULL;
    if (dec && !cJSON_IsNull(dec) && (!dec_type || strcmp(dec_type, "ByteLevel"))) {
        rc = st_error(ST_ERR_UNSUPPORTED, "%s: decoder: expected ByteLevel, found %s", path, dec_type ? dec_type : "?");
        goto done;
    }
    if ((rc = load_model(t, path, model, &arena_pos))) goto done;
    if ((rc = load_merges(t, path, model))) goto done;
    for (int b = 0; b < 256; b++) {
        char u[2];
        int32_t cp = byte_cp[b];
        int ul = cp < 0x80 ? 1 : 2;
        if (ul == 1) u[0] = (char)cp;
        else {
            u[0] = (char)(0xC0 | (cp >> 6));
            u[1] = (char)(0x80 | (cp & 0x3F));
        }
        memcpy(t->byte_char[b], u, 2);
        t->byte_char_len[b] = (uint8_t)ul;
        t->byte_id[b] = tok_str_map_get(&t->vocab, u, (size_t)ul);
        if (t->byte_id[b] < 0) {
            rc = st_error(ST_ERR_FORMAT, "%s: model.vocab: no token for byte 0x%02x (\"%.*s\"): not a byte-level BPE vocabulary",
                          path, b, ul, u);
            goto done;
        }
    }
    if (added && (rc = load_added(t, path, added, &arena_pos))) goto done;
    if ((rc = load_pretokenizer(t, path, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer")))) goto done;
    if ((rc = build_decode_table(t, total, cp_byte))) goto done;
    st_tokenizer_specials *sp = &t->specials;
    sp->think_begin = st_tokenizer_token_id(t, "<think>");
    sp->think_end = st_tokenizer_token_id(t, "</think>");
    sp->user = st_tokenizer_token_id(t, "<｜User｜>");
    sp->assistant = st_tokenizer_token_id(t, "<｜Assistant｜>");
    sp->dsml = st_tokenizer_token_id(t, "｜DSML｜");
    sp->latest_reminder = st_tokenizer_token_id(t, "<｜latest_reminder｜>");
    rc = load_config(t, config_path);
done:
    cJSON_Delete(root);
    if (rc) {
        st_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

int st_tokenizer_load(const char *dir, st_tokenizer **out) {
    *out = NULL;
    if (!dir) return st_error(ST_ERR_INVALID, "tokenizer: no model directory given");
    char tj[4096], tc[4096];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
    snprintf(tc, sizeof tc, "%s/tokenizer_config.json", dir);
    FILE *f = fopen(tj, "rb");
    if (!f) return st_error(ST_ERR_NOT_FOUND, "%s: missing (the model directory must hold tokenizer.json and tokenizer_config.json)", tj);
    fclose(f);
    f = fopen(tc, "rb");
    if (!f) return st_error(ST_ERR_NOT_FOUND, "%s: missing (the model directory must hold tokenizer.json and tokenizer_config.json)", tc);
    fclose(f);
    return st_tokenizer_load_files(tj, tc, out);
}

void st_tokenizer_free(st_tokenizer *t) {
    if (!t) return;
    free(t->dec_off);
    free(t->dec_len);
    free(t->dec_bytes);
    free(t->flags);
    tok_str_map_free(&t->vocab);
    tok_merge_map_free(&t->merges);
    free(t->added);
    tok_str_map_free(&t->added_map);
    tok_trie_free(&t->trie_raw);
    tok_trie_free(&t->trie_norm);
    for (int i = 0; i < t->n_splits; i++) pcre2_code_free(t->splits[i].re);
    free(t->strings);
    free(t);
}

/* ---- lookups ---------------------------------------------------------- */

int32_t st_tokenizer_vocab_size(const st_tokenizer *t) { return t->n_ids; }

int32_t st_tokenizer_token_id(const st_tokenizer *t, const char *content) {
    size_t len = strlen(content);
    int32_t a = tok_str_map_get(&t->added_map, content, len);
    if (a >= 0) return t->added[a].id;
    return tok_str_map_get(&t->vocab, content, len);
}

const char *st_tokenizer_token_bytes(const st_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_ids) return NULL;
    *len = t->dec_len[id];
    return t->dec_bytes + t->dec_off[id];
}

bool st_tokenizer_is_special(const st_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_ids && (t->flags[id] & TOK_FLAG_SPECIAL);
}

bool st_tokenizer_is_added(const st_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_ids && (t->flags[id] & TOK_FLAG_ADDED);
}

size_t st_tokenizer_max_token_bytes(const st_tokenizer *t) { return t->max_token_bytes; }

const st_tokenizer_specials *st_tokenizer_get_specials(const st_tokenizer *t) { return &t->specials; }

/* ---- decoding --------------------------------------------------------- */

int st_tokenizer_decode(const st_tokenizer *t, const int32_t *ids, size_t n, bool skip_special, char **out,
                        size_t *out_len) {
    *out = NULL;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_ids)
            return st_error(ST_ERR_INVALID, "detokenize: id %d at index %zu: expected an id in [0, %d)", ids[i], i, t->n_ids);
        if (!(skip_special && (t->flags[ids[i]] & TOK_FLAG_SPECIAL))) total += t->dec_len[ids[i]];
    }
    char *buf = malloc(total + 1);
    if (!buf) return st_error(ST_ERR_NOMEM, "detokenize: cannot allocate %zu bytes", total + 1);
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        if (skip_special && (t->flags[ids[i]] & TOK_FLAG_SPECIAL)) continue;
        memcpy(buf + pos, t->dec_bytes + t->dec_off[ids[i]], t->dec_len[ids[i]]);
        pos += t->dec_len[ids[i]];
    }
    buf[pos] = 0;
    *out = buf;
    if (out_len) *out_len = pos;
    return 0;
}

int st_detok_stream_init(st_detok_stream *s, const st_tokenizer *t, bool skip_special) {
    memset(s, 0, sizeof *s);
    s->tok = t;
    s->skip_special = skip_special;
    s->cap = t->max_token_bytes + sizeof s->held + 1;
    s->buf = malloc(s->cap);
    if (!s->buf) return st_error(ST_ERR_NOMEM, "detokenize: cannot allocate the stream buffer");
    return 0;
}

int st_utf8_repair(const char *s, size_t n, char **out, size_t *out_len) {
    static const char fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    char *o = malloc(n * 3 + 1); /* worst case: every byte becomes U+FFFD */
    if (!o) return st_error(ST_ERR_NOMEM, "text: out of memory for %zu bytes", n);
    size_t k = 0;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t len = utf8proc_iterate(p + i, (utf8proc_ssize_t)(n - i), &cp);
        if (len > 0) {
            memcpy(o + k, p + i, (size_t)len);
            k += (size_t)len;
            i += (size_t)len;
            continue;
        }
        size_t bad = 1; /* the longest proper prefix of a valid character here is one subpart */
        for (size_t m = ST_MIN(3, n - i); m > 1; m--)
            if (utf8_valid_prefix(p + i, m)) { bad = m; break; }
        memcpy(o + k, fffd, 3);
        k += 3;
        i += bad;
    }
    o[k] = 0;
    *out = o;
    if (out_len) *out_len = k;
    return 0;
}

int st_detok_stream_push(st_detok_stream *s, int32_t id, const char **text, size_t *len) {
    *text = s->buf;
    *len = 0;
    const st_tokenizer *t = s->tok;
    if (id < 0 || id >= t->n_ids) return st_error(ST_ERR_INVALID, "detokenize: id %d: expected an id in [0, %d)", id, t->n_ids);
    if (s->skip_special && (t->flags[id] & TOK_FLAG_SPECIAL)) return 0;
    size_t n = (size_t)s->nheld;
    memcpy(s->buf, s->held, n);
    memcpy(s->buf + n, t->dec_bytes + t->dec_off[id], t->dec_len[id]);
    n += t->dec_len[id];
    /* Hold back a trailing proper prefix of a valid character (at most 3 bytes). */
    size_t keep = n;
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        const unsigned char *p = (const unsigned char *)s->buf + n - back;
        if ((*p & 0xC0) == 0x80) continue; /* continuation: look further back */
        if (utf8_valid_prefix(p, back)) keep = n - back;
        break;
    }
    s->nheld = (int)(n - keep);
    memcpy(s->held, s->buf + keep, (size_t)s->nheld);
    *len = keep;
    return 0;
}

void st_detok_stream_flush(st_detok_stream *s, const char **text, size_t *len) {
    memcpy(s->buf, s->held, (size_t)s->nheld);
    *text = s->buf;
    *len = (size_t)s->nheld;
    s->nheld = 0;
}

void st_detok_stream_free(st_detok_stream *s) {
    if (!s) return;
    free(s->buf);
    s->buf = NULL;
}
