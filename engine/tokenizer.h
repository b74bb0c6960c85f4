/* Byte-level BPE tokenizer read from a checkpoint's tokenizer.json (+ tokenizer_config.json).
 *
 * Exact with Hugging Face `tokenizers` on the same tokenizer.json: added/special
 * tokens are cut out first (leftmost-longest, non-normalized set then normalized
 * set), the rest goes through the pre-tokenizer's Split regexes (PCRE2, UTF+UCP,
 * JIT) and the byte-level BPE (merges by rank, heap per pre-token: O(n log n)).
 *
 * Input need not be valid UTF-8: it is cut into maximal valid runs and maximal
 * runs of bytes that start no valid character; each invalid run is one
 * pre-token of raw bytes. So decode(encode(x)) == x for every byte string.
 *
 * A loaded tokenizer is immutable: encode/decode may run from many threads.
 */
#ifndef ST_ENGINE_TOKENIZER_H
#define ST_ENGINE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct st_tokenizer st_tokenizer;

/* Growable id array; encode appends to it. Zero-initialise, free with st_tokens_free. */
typedef struct st_tokens {
    int32_t *ids;
    size_t len, cap;
} st_tokens;
void st_tokens_free(st_tokens *t);
int st_tokens_push(st_tokens *t, int32_t id);

/* Loads DIR/tokenizer.json and DIR/tokenizer_config.json (both required).
 * Returns 0, ST_ERR_NOT_FOUND naming the missing file, or ST_ERR_FORMAT /
 * ST_ERR_UNSUPPORTED naming the field. */
int st_tokenizer_load(const char *dir, st_tokenizer **out);
/* Same from explicit paths; config_path may be NULL (bos/eos then come from the
 * V4 token names if present). */
int st_tokenizer_load_files(const char *tokenizer_json, const char *config_path, st_tokenizer **out);
void st_tokenizer_free(st_tokenizer *t);

/* Appends the ids of text[0..len) to out. parse_special: cut out special
 * tokens (special=true in tokenizer.json) found in the text; when false they
 * are encoded as plain text (HF `encode_special_tokens`), while non-special
 * added tokens (<think>, </think>, ｜DSML｜ ...) are always cut out, as HF does.
 * Returns 0, ST_ERR_NOMEM, or ST_ERR_INTERNAL on a regex engine failure. */
int st_tokenizer_encode(const st_tokenizer *t, const char *text, size_t len, bool parse_special, st_tokens *out);

/* Bytes of ids[0..n) into *out (malloc'd, NUL-terminated, *out_len without
 * the NUL). Raw bytes: invalid UTF-8 that was encoded comes back as is.
 * skip_special drops tokens marked special. An id outside [0, vocab size)
 * is ST_ERR_INVALID naming the id and its index. */
int st_tokenizer_decode(const st_tokenizer *t, const int32_t *ids, size_t n, bool skip_special, char **out,
                        size_t *out_len);

/* s[0..n) as valid UTF-8 for text outputs (JSON): every ill-formed part
 * becomes U+FFFD, a truncated character once and any other bad byte on its
 * own (Unicode's "maximal subpart" rule, as Python's errors="replace"), e.g.
 * a result cut by max_tokens inside a character. *out is malloc'd and NUL
 * terminated. 0 or ST_ERR_NOMEM. */
int st_utf8_repair(const char *s, size_t n, char **out, size_t *out_len);

/* Number of ids (largest id + 1, added tokens included): 129280 for V4. */
int32_t st_tokenizer_vocab_size(const st_tokenizer *t);
/* Id of a token given by its content ("<think>", "<｜User｜>", or a vocab
 * entry in byte-level form); added tokens first, as HF. -1 when unknown. */
int32_t st_tokenizer_token_id(const st_tokenizer *t, const char *content);
/* Decoded bytes of one token (not NUL-terminated), NULL for a bad id. */
const char *st_tokenizer_token_bytes(const st_tokenizer *t, int32_t id, size_t *len);
/* True for added tokens with special=true (BOS, EOS, pad, placeholders ...). */
bool st_tokenizer_is_special(const st_tokenizer *t, int32_t id);
/* True for any added token (special or not: <think>, <｜User｜> ...). */
bool st_tokenizer_is_added(const st_tokenizer *t, int32_t id);
/* Longest decoded token in bytes. */
size_t st_tokenizer_max_token_bytes(const st_tokenizer *t);

/* Ids the engine needs, -1 where the tokenizer has no such token. */
typedef struct st_tokenizer_specials {
    int32_t bos, eos, pad;             /* from tokenizer_config.json */
    int32_t think_begin, think_end;    /* <think> </think> */
    int32_t user, assistant;           /* <｜User｜> <｜Assistant｜> */
    int32_t dsml;                      /* ｜DSML｜ */
    int32_t latest_reminder;           /* <｜latest_reminder｜> */
} st_tokenizer_specials;
const st_tokenizer_specials *st_tokenizer_get_specials(const st_tokenizer *t);

/* Streaming decoder for generation: pushes one id at a time and returns only
 * bytes that cannot be the start of a UTF-8 character still being completed
 * (a trailing incomplete but so-far valid sequence is held back). Bytes that
 * can never become valid are passed through as they are. */
typedef struct st_detok_stream {
    const st_tokenizer *tok;
    bool skip_special;
    unsigned char held[4];
    int nheld;
    char *buf; /* owned; room for held bytes + the longest token */
    size_t cap;
} st_detok_stream;
int st_detok_stream_init(st_detok_stream *s, const st_tokenizer *t, bool skip_special);
/* text, len: bytes ready to print (valid until the next call). */
int st_detok_stream_push(st_detok_stream *s, int32_t id, const char **text, size_t *len);
/* Whatever is still held (an incomplete character at the end of generation). */
void st_detok_stream_flush(st_detok_stream *s, const char **text, size_t *len);
void st_detok_stream_free(st_detok_stream *s);

/* Length of the valid UTF-8 character starting at s[0..n), 0 if none starts there. */
int st_utf8_char_len(const unsigned char *s, size_t n);

#endif
