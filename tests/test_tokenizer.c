/* Tokenizer suite: ids equal Hugging Face `tokenizers` on the corpus
 * (tests/data/tokenizer/expected_ids.txt from tests/tools/gen_tokenizer_expected.py),
 * exact round trip, streaming decoder, bad input, linear time, load errors. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libgen.h>
#include <limits.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/cli.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"

static char data_dir[4096];
static st_tokenizer *tok;

static int load_group(void **state) {
    (void)state;
    double t0 = st_time_s();
    int rc = st_tokenizer_load(data_dir, &tok);
    if (rc) fprintf(stderr, "load: %s\n", st_last_error());
    fprintf(stderr, "tokenizer loaded in %.3f s\n", st_time_s() - t0);
    return rc;
}

static int free_group(void **state) {
    (void)state;
    st_tokenizer_free(tok);
    return 0;
}

static void load_and_specials(void **state) {
    (void)state;
    assert_int_equal(st_tokenizer_vocab_size(tok), 129280);
    const st_tokenizer_specials *sp = st_tokenizer_get_specials(tok);
    assert_int_equal(sp->bos, 0);
    assert_int_equal(sp->eos, 1);
    assert_int_equal(sp->pad, 1);
    assert_int_equal(sp->think_begin, 128821);
    assert_int_equal(sp->think_end, 128822);
    assert_int_equal(sp->user, 128803);
    assert_int_equal(sp->assistant, 128804);
    assert_int_equal(sp->dsml, 128825);
    assert_int_equal(sp->latest_reminder, 128828);
    assert_int_equal(st_tokenizer_token_id(tok, "<｜▁pad▁｜>"), 2);
    assert_int_equal(st_tokenizer_token_id(tok, "Ġthe"), st_tokenizer_token_id(tok, "Ġthe"));
    assert_true(st_tokenizer_token_id(tok, "Ġthe") > 0);
    assert_int_equal(st_tokenizer_token_id(tok, "<｜no▁such▁token｜>"), -1);
    assert_true(st_tokenizer_is_special(tok, 0));
    assert_false(st_tokenizer_is_special(tok, 128821)); /* <think> is added, not special */
    assert_true(st_tokenizer_is_added(tok, 128821));
    assert_false(st_tokenizer_is_added(tok, 1000));
    size_t len;
    const char *b = st_tokenizer_token_bytes(tok, st_tokenizer_token_id(tok, "Ġthe"), &len);
    assert_int_equal(len, 4);
    assert_memory_equal(b, " the", 4);
    b = st_tokenizer_token_bytes(tok, 128803, &len);
    assert_int_equal(len, strlen("<｜User｜>"));
    assert_memory_equal(b, "<｜User｜>", len);
    assert_null(st_tokenizer_token_bytes(tok, 129280, &len));
    assert_null(st_tokenizer_token_bytes(tok, -1, &len));
}

static int hexval(int c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; }

/* Checks one case: ids equal, decode gives the input back, streaming gives the same bytes. */
static void check_case(const char *name, bool special, const unsigned char *in, size_t n, const int32_t *want,
                       size_t nwant, int *failures) {
    st_tokens got = {0};
    assert_int_equal(st_tokenizer_encode(tok, (const char *)in, n, special, &got), 0);
    bool same = got.len == nwant && (nwant == 0 || !memcmp(got.ids, want, nwant * sizeof *want));
    if (!same) {
        size_t k = 0;
        while (k < got.len && k < nwant && got.ids[k] == want[k]) k++;
        fprintf(stderr, "MISMATCH %s (%s): %zu ids vs %zu expected, first difference at %zu: got %d want %d\n", name,
                special ? "special" : "nospecial", got.len, nwant, k, k < got.len ? got.ids[k] : -1,
                k < nwant ? want[k] : -1);
        (*failures)++;
    }
    char *dec = NULL;
    size_t dlen = 0;
    assert_int_equal(st_tokenizer_decode(tok, got.ids, got.len, false, &dec, &dlen), 0);
    if (dlen != n || memcmp(dec, in, n)) {
        fprintf(stderr, "ROUND TRIP %s: %zu bytes back for %zu\n", name, dlen, n);
        (*failures)++;
    }
    st_detok_stream ds;
    assert_int_equal(st_detok_stream_init(&ds, tok, false), 0);
    char *acc = malloc(n + 8);
    size_t alen = 0;
    for (size_t i = 0; i < got.len; i++) {
        const char *piece;
        size_t plen;
        assert_int_equal(st_detok_stream_push(&ds, got.ids[i], &piece, &plen), 0);
        assert_true(alen + plen <= n);
        memcpy(acc + alen, piece, plen);
        alen += plen;
    }
    const char *piece;
    size_t plen;
    st_detok_stream_flush(&ds, &piece, &plen);
    memcpy(acc + alen, piece, plen);
    alen += plen;
    assert_int_equal(alen, n);
    assert_memory_equal(acc, in, n);
    free(acc);
    st_detok_stream_free(&ds);
    free(dec);
    st_tokens_free(&got);
}

static void matches_hf_tokenizers(void **state) {
    (void)state;
    char path[4200];
    snprintf(path, sizeof path, "%s/expected_ids.txt", data_dir);
    char *text;
    size_t len;
    assert_int_equal(st_read_file(path, 64u << 20, &text, &len), 0);
    int cases = 0, failures = 0;
    unsigned char *in = malloc(len);
    int32_t *want = malloc(len * sizeof *want);
    for (char *line = text; line && *line;) {
        char *end = strchr(line, '\n');
        if (end) *end = 0;
        char *name = line, *mode = strchr(name, '\t');
        assert_non_null(mode);
        *mode++ = 0;
        char *hex = strchr(mode, '\t');
        assert_non_null(hex);
        *hex++ = 0;
        char *ids = strchr(hex, '\t');
        assert_non_null(ids);
        *ids++ = 0;
        size_t n = 0;
        for (char *h = hex; *h; h += 2) in[n++] = (unsigned char)(hexval(h[0]) * 16 + hexval(h[1]));
        size_t nw = 0;
        for (char *p = ids; *p;) {
            char *q;
            long v = strtol(p, &q, 10);
            if (q == p) break;
            want[nw++] = (int32_t)v;
            p = q;
        }
        check_case(name, !strcmp(mode, "special"), in, n, want, nw, &failures);
        cases++;
        line = end ? end + 1 : NULL;
    }
    fprintf(stderr, "%d cases, %d failures\n", cases, failures);
    assert_true(cases >= 600);
    assert_int_equal(failures, 0);
    free(in);
    free(want);
    free(text);
}

static void special_token_parsing(void **state) {
    (void)state;
    st_tokens a = {0}, b = {0};
    const char *s = "<｜begin▁of▁sentence｜>Hi<think>x</think>";
    assert_int_equal(st_tokenizer_encode(tok, s, strlen(s), true, &a), 0);
    assert_int_equal(a.ids[0], 0);
    assert_int_equal(a.ids[a.len - 1], 128822);
    /* without special parsing BOS is text, <think>/</think> (not special) still parsed, as HF */
    assert_int_equal(st_tokenizer_encode(tok, s, strlen(s), false, &b), 0);
    assert_true(b.len > a.len);
    assert_true(b.ids[0] != 0);
    assert_int_equal(b.ids[b.len - 1], 128822);
    for (size_t i = 0; i < b.len; i++) assert_int_not_equal(b.ids[i], 0);
    /* an unknown special-looking token is plain text and round-trips */
    st_tokens c = {0};
    const char *u = "<｜not▁a▁token｜>";
    assert_int_equal(st_tokenizer_encode(tok, u, strlen(u), true, &c), 0);
    assert_true(c.len > 1);
    for (size_t i = 0; i < c.len; i++) assert_false(st_tokenizer_is_added(tok, c.ids[i]));
    char *d;
    size_t dl;
    assert_int_equal(st_tokenizer_decode(tok, c.ids, c.len, false, &d, &dl), 0);
    assert_string_equal(d, u);
    free(d);
    /* skip_special drops BOS but keeps <think> */
    assert_int_equal(st_tokenizer_decode(tok, a.ids, a.len, true, &d, &dl), 0);
    assert_string_equal(d, "Hi<think>x</think>");
    free(d);
    st_tokens_free(&a);
    st_tokens_free(&b);
    st_tokens_free(&c);
}

static void stream_holds_back_partial_utf8(void **state) {
    (void)state;
    /* 中 = e4 b8 ad, as three single-byte tokens */
    int32_t ids[3] = {0};
    const unsigned char zh[3] = {0xe4, 0xb8, 0xad};
    for (int i = 0; i < 3; i++) {
        st_tokens t = {0};
        assert_int_equal(st_tokenizer_encode(tok, (const char *)&zh[i], 1, true, &t), 0);
        assert_int_equal(t.len, 1);
        ids[i] = t.ids[0];
        st_tokens_free(&t);
    }
    st_detok_stream ds;
    assert_int_equal(st_detok_stream_init(&ds, tok, false), 0);
    const char *p;
    size_t n;
    assert_int_equal(st_detok_stream_push(&ds, ids[0], &p, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(st_detok_stream_push(&ds, ids[1], &p, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(st_detok_stream_push(&ds, ids[2], &p, &n), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(p, zh, 3);
    /* a byte that can never become valid is passed through at once */
    assert_int_equal(st_detok_stream_push(&ds, ids[0], &p, &n), 0);
    assert_int_equal(n, 0);
    int32_t ff;
    {
        st_tokens t = {0};
        assert_int_equal(st_tokenizer_encode(tok, "\xff", 1, true, &t), 0);
        ff = t.ids[0];
        st_tokens_free(&t);
    }
    assert_int_equal(st_detok_stream_push(&ds, ff, &p, &n), 0);
    assert_int_equal(n, 2); /* e4 (broken by ff) and ff */
    assert_int_equal(st_detok_stream_push(&ds, ids[0], &p, &n), 0);
    st_detok_stream_flush(&ds, &p, &n);
    assert_int_equal(n, 1);
    assert_int_equal((unsigned char)p[0], 0xe4);
    assert_int_equal(st_detok_stream_push(&ds, 129280, &p, &n), ST_ERR_INVALID);
    st_detok_stream_free(&ds);
}

static void bad_input_never_crashes(void **state) {
    (void)state;
    unsigned seed = 7;
    unsigned char buf[4096];
    for (int round = 0; round < 200; round++) {
        size_t n = (size_t)(rand_r(&seed) % sizeof buf);
        for (size_t i = 0; i < n; i++) {
            unsigned r = (unsigned)rand_r(&seed);
            /* mix of random bytes, NULs, ASCII and pieces of special tokens */
            buf[i] = (unsigned char)(r % 5 == 0 ? 0 : r % 5 == 1 ? (unsigned)(unsigned char)"<｜>think/"[r % 9] : r % 5 == 2 ? 'a' + r % 26 : r >> 8);
        }
        st_tokens t = {0};
        assert_int_equal(st_tokenizer_encode(tok, (const char *)buf, n, round & 1, &t), 0);
        char *d;
        size_t dl;
        assert_int_equal(st_tokenizer_decode(tok, t.ids, t.len, false, &d, &dl), 0);
        assert_int_equal(dl, n);
        assert_memory_equal(d, buf, n);
        free(d);
        st_tokens_free(&t);
    }
    int32_t bad[2] = {5, 200000};
    char *d;
    size_t dl;
    assert_int_equal(st_tokenizer_decode(tok, bad, 2, false, &d, &dl), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "200000"));
    bad[1] = -3;
    assert_int_equal(st_tokenizer_decode(tok, bad, 2, false, &d, &dl), ST_ERR_INVALID);
    st_tokens t = {0};
    assert_int_equal(st_tokenizer_encode(tok, "", 0, true, &t), 0);
    assert_int_equal(t.len, 0);
    st_tokens_free(&t);
}

/* Mixed text of `bytes` bytes (words, numbers, CJK, newlines, spaces) in one line. */
static char *make_text(size_t bytes, bool one_word) {
    static const char *parts[] = {"the ", "quick ", "brown ", "fox ", "1234 ", "中文字 ", "é ", "  ", "\t", "{x}; ",
                                  "😀 ", "ok, ", "unbelievable ", "<think>", "日本語 "};
    char *s = malloc(bytes + 1);
    size_t n = 0;
    unsigned seed = 3;
    while (n < bytes) {
        if (one_word) {
            s[n++] = (char)('a' + rand_r(&seed) % 26);
            continue;
        }
        const char *p = parts[rand_r(&seed) % ST_ARRAY_LEN(parts)];
        size_t l = strlen(p);
        if (n + l > bytes) break;
        memcpy(s + n, p, l);
        n += l;
    }
    while (n < bytes) s[n++] = ' ';
    s[n] = 0;
    return s;
}

static double time_encode(const char *s, size_t n, size_t *ntok) {
    st_tokens t = {0};
    double t0 = st_time_s();
    assert_int_equal(st_tokenizer_encode(tok, s, n, true, &t), 0);
    double dt = st_time_s() - t0;
    *ntok = t.len;
    char *d;
    size_t dl;
    assert_int_equal(st_tokenizer_decode(tok, t.ids, t.len, false, &d, &dl), 0);
    assert_int_equal(dl, n);
    assert_memory_equal(d, s, n);
    free(d);
    st_tokens_free(&t);
    return dt;
}

/* Time grows linearly: 8x the input may take at most 8x * 4 (generous for a
 * shared 2-core machine) plus a small constant. Covers a long single line of
 * words and one pre-token of 4 MB (a single "word": the BPE heap, not the cache). */
static void linear_time(void **state) {
    (void)state;
    size_t small = 1u << 20, big = 8u << 20;
    for (int word = 0; word < 2; word++) {
        size_t s_small = word ? small / 2 : small, s_big = word ? big / 2 : big;
        char *a = make_text(s_small, word), *b = make_text(s_big, word);
        size_t na, nb;
        double ta = time_encode(a, s_small, &na), tb = time_encode(b, s_big, &nb);
        fprintf(stderr, "%s: %zu bytes %.3f s (%zu ids), %zu bytes %.3f s (%zu ids), ratio %.1f\n",
                word ? "one word" : "words", s_small, ta, na, s_big, tb, nb, tb / ta);
        assert_true(nb >= na * 7);
        assert_true(tb <= ta * 8 * 4 + 1.0); /* quadratic would be 64x */
        free(a);
        free(b);
    }
}

/* One 100 MB line (no newline) of words, digits, CJK and spaces: encodes,
 * round-trips, and the id count is in proportion to the 1 MB line's. */
static void hundred_mb_line(void **state) {
    (void)state;
    size_t n = 100u << 20;
    char *s = make_text(n, false);
    size_t ntok;
    double dt = time_encode(s, n, &ntok);
    fprintf(stderr, "100 MB line: %.2f s, %zu ids (%.1f MB/s)\n", dt, ntok, n / 1e6 / dt);
    assert_true(ntok > n / 8 && ntok < n / 2);
    assert_true(dt < 120.0);
    free(s);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void load_errors(void **state) {
    (void)state;
    st_tokenizer *t = (st_tokenizer *)1;
    assert_int_equal(st_tokenizer_load("/nonexistent/dir", &t), ST_ERR_NOT_FOUND);
    assert_null(t);
    assert_non_null(strstr(st_last_error(), "/nonexistent/dir/tokenizer.json"));
    char dir[] = "/tmp/strata_tok_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char tj[256], tc[256];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
    snprintf(tc, sizeof tc, "%s/tokenizer_config.json", dir);
    write_file(tj, "{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}");
    assert_int_equal(st_tokenizer_load(dir, &t), ST_ERR_NOT_FOUND);
    assert_non_null(strstr(st_last_error(), "tokenizer_config.json"));
    write_file(tc, "{}");
    assert_int_equal(st_tokenizer_load(dir, &t), ST_ERR_FORMAT); /* no ids */
    write_file(tj, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0");
    assert_int_equal(st_tokenizer_load(dir, &t), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "not valid JSON"));
    write_file(tj, "{\"model\": {\"type\": \"Unigram\", \"vocab\": {\"a\": 0}}}");
    assert_int_equal(st_tokenizer_load(dir, &t), ST_ERR_UNSUPPORTED);
    assert_non_null(strstr(st_last_error(), "model.type"));
    write_file(tj, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}");
    assert_int_equal(st_tokenizer_load(dir, &t), ST_ERR_FORMAT); /* not byte-level: no token per byte */
    assert_non_null(strstr(st_last_error(), "byte 0x00"));
    write_file(tj, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}");
    assert_int_equal(st_tokenizer_load(dir, &t), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "merges[0]"));
    unlink(tj);
    unlink(tc);
    rmdir(dir);
}

/* `strata tokenize` / `strata detokenize` run as programs (STRATA_BIN, else the
 * strata beside this suite's directory). Returns the exit code; *out gets
 * stdout and stderr. */
static int run_strata(const char *args, char **out) {
    char bin[PATH_MAX], self[PATH_MAX], cmd[2 * PATH_MAX];
    const char *env = getenv("STRATA_BIN");
    if (env && *env) snprintf(bin, sizeof bin, "%s", env);
    else {
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        self[n > 0 ? n : 0] = 0;
        snprintf(bin, sizeof bin, "%s/../strata", dirname(self));
    }
    snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", bin, args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 1 << 16, len = 0, got;
    char *buf = malloc(cap);
    while ((got = fread(buf + len, 1, cap - len - 1, p)) > 0) len += got;
    buf[len] = 0;
    int st = pclose(p);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void cli_commands(void **state) {
    (void)state;
    char args[8192], *out;
    snprintf(args, sizeof args, "tokenize --model '%s' --text 'Hello <think>'", data_dir);
    assert_int_equal(run_strata(args, &out), 0);
    st_tokens want = {0};
    assert_int_equal(st_tokenizer_encode(tok, "Hello <think>", 13, true, &want), 0);
    char line[256] = "";
    for (size_t i = 0; i < want.len; i++) snprintf(line + strlen(line), sizeof line - strlen(line), i ? " %d" : "%d", want.ids[i]);
    strcat(line, "\n");
    assert_string_equal(out, line);
    free(out);
    snprintf(args, sizeof args, "tokenize --model '%s' --text 'Hi' --json", data_dir);
    assert_int_equal(run_strata(args, &out), 0);
    assert_non_null(strstr(out, "\"ids\":["));
    assert_non_null(strstr(out, "\"tokens\":[\"Hi\"]"));
    free(out);
    snprintf(args, sizeof args, "detokenize --model '%s' --ids %d,%d %d", data_dir, want.ids[0], want.ids[1], want.ids[2]);
    assert_int_equal(run_strata(args, &out), 0);
    assert_string_equal(out, "Hello <think>");
    free(out);
    st_tokens_free(&want);
    assert_int_equal(run_strata("tokenize --model /nonexistent --text x", &out), 1);
    assert_non_null(strstr(out, "/nonexistent/tokenizer.json: missing"));
    free(out);
    snprintf(args, sizeof args, "detokenize --model '%s' --ids 1 x", data_dir);
    assert_int_equal(run_strata(args, &out), 1);
    assert_non_null(strstr(out, "--ids"));
    free(out);
    assert_int_equal(run_strata("tokenize --help", &out), 0);
    assert_non_null(strstr(out, "usage: strata tokenize"));
    free(out);
    assert_int_equal(run_strata("detokenize --help", &out), 0);
    assert_non_null(strstr(out, "usage: strata detokenize"));
    free(out);
    assert_int_equal(run_strata("tokenize --text x", &out), 2);
    free(out);
}

/* st_utf8_repair: the same replacements as Python's bytes.decode("utf-8", "replace"). */
/* A model whose vocabulary exceeds its tokenizer's (a synthesised config): the
 * commands that write text sample only ids the tokenizer can render, greedy or
 * not, even when the logits favour the others. */
static void text_commands_sample_renderable_ids(void **state) {
    (void)state;
    const int64_t model_vocab = 200000;
    assert_int_equal(cli_text_vocab("run", 500, tok), 500);
    assert_int_equal(cli_text_vocab("run", model_vocab, NULL), model_vocab);
    const int64_t n = cli_text_vocab("run", model_vocab, tok);
    assert_int_equal(n, st_tokenizer_vocab_size(tok));
    float *logits = malloc((size_t)model_vocab * sizeof(float));
    for (int64_t i = 0; i < model_vocab; i++) logits[i] = i >= n ? 50.0f : (float)(i % 1000) * 0.001f;
    for (int temp = 0; temp <= 1; temp++) {
        st_sampler smp;
        st_sampler_cfg cfg = {.temperature = temp ? 1.0f : 0.0f, .seed = 3};
        assert_int_equal(st_sampler_init(&smp, &cfg, n), 0);
        for (int r = 0; r < 20; r++) {
            int32_t id = st_sampler_sample(&smp, logits);
            assert_true(id >= 0 && id < n);
            char *text;
            assert_int_equal(st_tokenizer_decode(tok, &id, 1, false, &text, NULL), 0);
            free(text);
        }
        st_sampler_release(&smp);
    }
    free(logits);
}

static void utf8_repair_like_python(void **state) {
    (void)state;
    static const struct { const char *in; size_t n; const char *want; } cases[] = {
        {"plain \xc3\xa9t\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80", 20, "plain \xc3\xa9t\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80"},
        {"a\xe7\x86", 3, "a\xef\xbf\xbd"},                       /* cut inside a character: one U+FFFD */
        {"\x80\x80", 2, "\xef\xbf\xbd\xef\xbf\xbd"},           /* stray continuations: one each */
        {"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* a surrogate */
        {"\xf0\x90\x80z", 4, "\xef\xbf\xbdz"},
        {"\xc0\xaf", 2, "\xef\xbf\xbd\xef\xbf\xbd"},           /* overlong */
        {"\xe7\x86\xe7\x86\xa5", 5, "\xef\xbf\xbd\xe7\x86\xa5"},
        {"ok\xf4\x90\x80\x80", 6, "ok\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* above U+10FFFF */
        {"", 0, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = NULL;
        size_t len = 0;
        assert_int_equal(st_utf8_repair(cases[i].in, cases[i].n, &out, &len), 0);
        if (len != strlen(cases[i].want) || memcmp(out, cases[i].want, len)) fail_msg("case %zu: got \"%s\"", i, out);
        free(out);
    }
}

int main(void) {
    snprintf(data_dir, sizeof data_dir, "%s", __FILE__);
    char *slash = strrchr(data_dir, '/');
    if (slash) strcpy(slash, "/data/tokenizer");
    else strcpy(data_dir, "data/tokenizer");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(load_and_specials),
        cmocka_unit_test(matches_hf_tokenizers),
        cmocka_unit_test(special_token_parsing),
        cmocka_unit_test(stream_holds_back_partial_utf8),
        cmocka_unit_test(bad_input_never_crashes),
        cmocka_unit_test(linear_time),
        cmocka_unit_test(hundred_mb_line),
        cmocka_unit_test(load_errors),
        cmocka_unit_test(cli_commands),
        cmocka_unit_test(utf8_repair_like_python),
        cmocka_unit_test(text_commands_sample_renderable_ids),
    };
    return cmocka_run_group_tests(tests, load_group, free_group);
}
