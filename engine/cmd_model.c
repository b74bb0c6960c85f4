/* `strata logits` and `strata run`: the model from the command line. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "base/base.h"
#include "engine/cli.h"
#include "engine/model.h"
#include "engine/model_gpu.h"
#include "engine/model_stream.h"
#include "offload/policy.h"
#include "engine/chat_template.h"
#include "engine/kv_store.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "offload/kv_pages.h"

#include <cJSON.h>

/* "1,2,3" -> ids (malloc'd). */
static int parse_ids(const char *s, int32_t **ids, int64_t *n) {
    int64_t cap = 16, k = 0;
    int32_t *v = malloc((size_t)cap * sizeof *v);
    if (!v) return st_error(ST_ERR_NOMEM, "out of memory");
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX) {
            free(v);
            return st_error(ST_ERR_INVALID, "--ids: '%s' is not a list of token ids like 1,2,3", s);
        }
        if (k == cap) {
            int32_t *nv = realloc(v, (size_t)(cap *= 2) * sizeof *v);
            if (!nv) { free(v); return st_error(ST_ERR_NOMEM, "out of memory"); }
            v = nv;
        }
        v[k++] = (int32_t)x;
        p = end;
        while (*p == ',' || *p == ' ') p++;
    }
    if (!k) { free(v); return st_error(ST_ERR_INVALID, "--ids: no token ids given"); }
    *ids = v;
    *n = k;
    return 0;
}

/* --ids-file FILE -> ids (malloc'd). FILE ending in .i32: raw little-endian
 * int32; otherwise text, ids separated by whitespace and/or commas. One pass,
 * linear in the file size (a 1M-token prompt is a few MB). Errors name the
 * file, the token's position and its byte offset. */
static int read_ids_file(const char *path, int32_t **ids, int64_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return st_error(ST_ERR_IO, "--ids-file %s: %s", path, strerror(errno));
    struct stat st;
    if (!fstat(fileno(f), &st) && S_ISDIR(st.st_mode)) {
        fclose(f);
        return st_error(ST_ERR_IO, "--ids-file %s: is a directory, expected a file of token ids", path);
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + (1u << 20) + 1 > cap) {
            char *nb = realloc(buf, cap = cap * 2 + (1u << 20) + 1);
            if (!nb) { free(buf); fclose(f); return st_error(ST_ERR_NOMEM, "--ids-file %s: out of memory", path); }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, 1u << 20, f);
        len += got;
        if (got == 0) break;
    }
    int err = ferror(f) ? (errno ? errno : EIO) : 0;
    fclose(f);
    if (err) { free(buf); return st_error(ST_ERR_IO, "--ids-file %s: read error: %s", path, strerror(err)); }
    buf[len] = 0;
    const size_t pl = strlen(path);
    const bool bin = pl > 4 && !strcmp(path + pl - 4, ".i32");
    int64_t k = 0, max = bin ? (int64_t)(len / 4) : (int64_t)(len / 2 + 1);
    int32_t *v = malloc((size_t)(max ? max : 1) * sizeof *v);
    if (!v) { free(buf); return st_error(ST_ERR_NOMEM, "--ids-file %s: out of memory", path); }
    if (bin) {
        if (len % 4) {
            free(buf); free(v);
            return st_error(ST_ERR_FORMAT, "--ids-file %s: %zu bytes is not a whole number of little-endian int32 ids", path, len);
        }
        for (; k < max; k++) {
            const uint8_t *b = (const uint8_t *)buf + 4 * k;
            int32_t x = (int32_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24);
            if (x < 0) {
                free(buf); free(v);
                return st_error(ST_ERR_FORMAT, "--ids-file %s: token %lld (byte offset %lld) is %d, not a token id (>= 0)",
                                path, (long long)k, (long long)(4 * k), x);
            }
            v[k] = x;
        }
    } else {
        for (size_t i = 0; i < len;) {
            const char c = buf[i];
            if (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r') { i++; continue; }
            size_t s = i;
            int64_t x = 0;
            while (i < len && buf[i] >= '0' && buf[i] <= '9' && x <= INT32_MAX) x = x * 10 + (buf[i++] - '0');
            const char e = i < len ? buf[i] : ',';
            if (i == s || x > INT32_MAX || !(e == ',' || e == ' ' || e == '\t' || e == '\n' || e == '\r')) {
                size_t w = 0;
                while (s + w < len && w < 20 && buf[s + w] != ',' && buf[s + w] != ' ' && buf[s + w] != '\n') w++;
                int rc = st_error(ST_ERR_FORMAT,
                                  "--ids-file %s: token %lld (byte offset %zu): '%.*s' is not a token id "
                                  "(expected decimal ids 0..%d separated by whitespace or commas)",
                                  path, (long long)k, s, (int)w, buf + s, INT32_MAX);
                free(buf); free(v);
                return rc;
            }
            v[k++] = (int32_t)x;
        }
    }
    free(buf);
    if (!k) { free(v); return st_error(ST_ERR_INVALID, "--ids-file %s: no token ids in the file", path); }
    *ids = v;
    *n = k;
    return 0;
}

/* Every id inside the model's vocabulary; the message names the source. */
static int check_vocab(const char *src, const int32_t *ids, int64_t n, int64_t vocab) {
    for (int64_t t = 0; t < n; t++)
        if (ids[t] >= vocab)
            return st_error(ST_ERR_INVALID, "%s: token %lld is %d, outside the vocabulary (0..%lld)", src,
                            (long long)t, ids[t], (long long)vocab - 1);
    return 0;
}

typedef struct model_args {
    const char *model, *ids, *ids_file, *prompt, *think, *kv_save;
    bool raw;
    uint64_t kv_page, kv_dram; /* KV tiering page size and DRAM tier limit (0: defaults) */
    st_model_opts opts;
    bool json;
    int n_predict;
    st_sampler_cfg samp;
} model_args;

/* Common options; returns 0, or 2 for a usage error (message printed). */
static int parse_model_args(const char *cmd, int argc, char **argv, model_args *a) {
    memset(a, 0, sizeof *a);
    a->n_predict = 16;
    a->samp.temperature = 0;
    a->samp.top_p = 1;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long x;
#define NEEDV()                                                                  \
    do {                                                                         \
        if (!v) { fprintf(stderr, "strata %s: %s needs a value\n", cmd, o); return 2; } \
        i++;                                                                     \
    } while (0)
        if (!strcmp(o, "--model")) { NEEDV(); a->model = v; }
        else if (!strcmp(o, "--ids")) { NEEDV(); a->ids = v; }
        else if (!strcmp(o, "--ids-file")) { NEEDV(); a->ids_file = v; }
        else if (!strcmp(o, "--prompt")) { NEEDV(); a->prompt = v; }
        else if (!strcmp(o, "--think")) { NEEDV(); a->think = v; }
        else if (!strcmp(o, "--raw")) a->raw = true;
        else if (!strcmp(o, "--kv-save")) { NEEDV(); a->kv_save = v; }
        else if (!strcmp(o, "--json")) a->json = true;
        else if (!strcmp(o, "--quiet")) a->opts.quiet = true;
        else if (!strcmp(o, "--threads")) { NEEDV(); if (!cli_int(cmd, o, v, 1, 4096, &x)) return 2; a->opts.threads = (int)x; }
        else if (!strcmp(o, "--chunk")) { NEEDV(); if (!cli_int(cmd, o, v, 1, INT64_MAX, &x)) return 2; a->opts.chunk = x; }
        else if (!strcmp(o, "--numerics")) {
            NEEDV();
            if (!cli_numerics(cmd, v, &a->opts.numerics)) return 2;
        } else if (!strcmp(o, "-n")) { NEEDV(); if (!cli_int(cmd, o, v, 0, INT32_MAX, &x)) return 2; a->n_predict = (int)x; }
        else if (!strcmp(o, "--seed")) { NEEDV(); if (!cli_int(cmd, o, v, 0, INT64_MAX, &x)) return 2; a->samp.seed = (uint64_t)x; }
        else if (!strcmp(o, "--top-k")) { NEEDV(); if (!cli_int(cmd, o, v, 0, INT32_MAX, &x)) return 2; a->samp.top_k = (int)x; }
        else if (!strcmp(o, "--temp") || !strcmp(o, "--top-p")) {
            NEEDV();
            char *end;
            float f = strtof(v, &end);
            if (!*v || *end || !(f >= 0) || (!strcmp(o, "--top-p") && (f <= 0 || f > 1)) || f > 100) {
                fprintf(stderr, "strata %s: %s must be a number %s, not '%s'\n", cmd, o,
                        !strcmp(o, "--top-p") ? "in (0, 1]" : "0..100", v);
                return 2;
            }
            if (!strcmp(o, "--top-p")) a->samp.top_p = f;
            else a->samp.temperature = f;
        }
        else if ((x = cli_tier_option(cmd, o, v, &a->opts)) != 0) {
            if (x < 0) return 2;
            i++;
        }
        else if (!strcmp(o, "--trace")) { NEEDV(); a->opts.trace_path = v; }
        else if (!strcmp(o, "--kv-budget")) {
            NEEDV();
            if (!cli_kv_size(cmd, o, v, &a->opts.kv_budget)) return 2;
        } else if (!strcmp(o, "--kv-spill")) { NEEDV(); a->opts.kv_spill = v; }
        else if (!strcmp(o, "--kv-page") || !strcmp(o, "--kv-dram")) {
            NEEDV();
            if (!cli_kv_size(cmd, o, v, !strcmp(o, "--kv-page") ? &a->kv_page : &a->kv_dram)) return 2;
        }
        else { fprintf(stderr, "strata %s: unknown option '%s' (strata %s --help)\n", cmd, o, cmd); return 2; }
#undef NEEDV
    }
    if (!a->model) { fprintf(stderr, "strata %s: --model DIR is required\n", cmd); return 2; }
    if (!a->ids && !a->ids_file && !a->prompt) {
        fprintf(stderr, "strata %s: --ids 1,2,3, --ids-file FILE or --prompt TEXT is required\n", cmd);
        return 2;
    }
    if (!!a->ids + !!a->ids_file + !!a->prompt > 1) {
        fprintf(stderr, "strata %s: give one of --ids, --ids-file and --prompt\n", cmd);
        return 2;
    }
    if (a->opts.kv_spill && !a->opts.kv_budget) { fprintf(stderr, "strata %s: --kv-spill needs --kv-budget\n", cmd); return 2; }
    if (a->kv_page && !a->opts.kv_budget) { fprintf(stderr, "strata %s: --kv-page needs --kv-budget\n", cmd); return 2; }
    if (a->kv_dram && !a->opts.kv_spill) { fprintf(stderr, "strata %s: --kv-dram needs --kv-spill\n", cmd); return 2; }
    if (a->kv_save && a->opts.kv_budget) { fprintf(stderr, "strata %s: --kv-save is not supported with --kv-budget\n", cmd); return 2; }
    if (a->opts.kv_spill && !cli_spill_dir(cmd, a->opts.kv_spill)) return 2;
    if (a->ids) { /* a malformed --ids is a usage error, told before the model loads */
        int32_t *ids;
        int64_t n;
        if (parse_ids(a->ids, &ids, &n)) { fprintf(stderr, "strata %s: %s\n", cmd, st_last_error()); return 2; }
        free(ids);
    }
    if (a->json) a->opts.quiet = true;
    return 0;
}

static const char *common_help =
    "  --model DIR          checkpoint directory (official or transformers layout)\n"
    "  --ids 1,2,3          input token ids\n"
    "  --ids-file FILE      input token ids from FILE: decimal text separated by whitespace and/or\n"
    "                       commas, or raw little-endian int32 when the name ends in .i32\n"
    "  --numerics MODE      official (default: quantised cache and activations as the official code)\n"
    "                       or reference (F32 everywhere)\n"
    "  --threads N          worker threads (default: one per core)\n"
    "  --chunk N            prefill chunk in tokens (default 2048)\n"
    "  --kv-budget SIZE     KV tiering: fast memory for CSA compressed entries (paged; the rest spills\n"
    "                       to DRAM, or to --kv-spill); logits are identical (default: all resident)\n"
    "  --kv-spill DIR       with --kv-budget: spill KV pages to a file in DIR (NVMe) instead of DRAM\n"
    "  --kv-dram SIZE       with --kv-spill: spilled pages stay in DRAM up to SIZE, the oldest go on to\n"
    "                       the file in DIR (default: straight to the file)\n"
    "  --kv-page SIZE       with --kv-budget: KV page size, a multiple of 4 KiB (default 64K)\n"
    ;
/* after the tier options (cli_tier_help) */
static const char *common_help_tail =
    "  --trace FILE         record per token and layer the experts chosen/predicted/hit (JSONL,\n"
    "                       replay with strata bench policies --trace FILE)\n"
    "  --json               machine-readable output\n"
    "  --quiet              no progress bar\n";

int cmd_logits(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        printf("usage: strata logits --model DIR (--ids 1,2,3 | --ids-file FILE) [options]\n\nPrints the logits at every position.\n\n%s%s%s",
               common_help, cli_tier_help, common_help_tail);
        return 0;
    }
    model_args a;
    int rc = parse_model_args("logits", argc, argv, &a);
    if (rc) return rc;
    if (!a.ids && !a.ids_file) { fprintf(stderr, "strata logits: --ids 1,2,3 or --ids-file FILE is required\n"); return 2; }
    int32_t *ids = NULL;
    int64_t n = 0;
    st_model *m = NULL;
    st_seq *s = NULL;
    float *logits = NULL;
    if ((rc = a.ids ? parse_ids(a.ids, &ids, &n) : read_ids_file(a.ids_file, &ids, &n)) ||
        (rc = st_model_load(a.model, &a.opts, &m)) ||
        (a.ids_file && (rc = check_vocab(a.ids_file, ids, n, m->vocab))) || (rc = st_seq_new(m, &s)) ||
        (a.opts.kv_budget && (rc = st_seq_kv_tiering(s, a.opts.kv_budget, a.kv_dram, a.opts.kv_spill, a.kv_page))))
        goto fail;
    logits = malloc((size_t)(n * m->vocab) * sizeof(float));
    if (!logits) { rc = st_error(ST_ERR_NOMEM, "out of memory for %lld x %lld logits", (long long)n, (long long)m->vocab); goto fail; }
    if ((rc = st_seq_forward(s, ids, n, logits, true))) goto fail;
    if (a.json) {
        printf("{\"n_vocab\": %lld, \"positions\": [", (long long)m->vocab);
        for (int64_t t = 0; t < n; t++) {
            printf("%s[", t ? ", " : "");
            for (int64_t v = 0; v < m->vocab; v++) printf("%s%.9g", v ? ", " : "", (double)logits[t * m->vocab + v]);
            printf("]");
        }
        printf("]}\n");
    } else {
        for (int64_t t = 0; t < n; t++) {
            int64_t best = 0;
            for (int64_t v = 1; v < m->vocab; v++)
                if (logits[t * m->vocab + v] > logits[t * m->vocab + best]) best = v;
            printf("position %lld (token %d): argmax %lld (%.4f); first logits:", (long long)t, ids[t], (long long)best,
                   (double)logits[t * m->vocab + best]);
            for (int64_t v = 0; v < ST_MIN(8, m->vocab); v++) printf(" %.4f", (double)logits[t * m->vocab + v]);
            printf("\n");
        }
    }
    free(logits); free(ids); st_seq_free(s); st_model_free(m);
    return 0;
fail:
    free(logits); free(ids); st_seq_free(s); st_model_free(m);
    return cli_fail("logits", rc);
}


/* KV bytes per tier: fast = the state arrays (window rings, compressed entries
 * and indexer keys not paged) plus the paged store's fast frames; dram and
 * nvme = the paged store's frames there (0 without --kv-budget). */
static void kv_tier_bytes(const st_seq *s, uint64_t *fast, uint64_t *dram, uint64_t *nvme) {
    uint64_t f = 0;
    for (int l = 0; l < s->m->n_layers; l++) {
        const st_attn_w *w = &s->m->layers[l].attn;
        const st_layer_state *ls = &s->state[l];
        f += (uint64_t)w->window * (uint64_t)w->head_dim * sizeof(float);
        if (w->kind != ST_LAYER_WINDOW && !ls->comp.pages)
            f += (uint64_t)ls->comp.n_entries * (uint64_t)ls->comp.entry_bytes;
        if (w->kind == ST_LAYER_CSA) f += (uint64_t)ls->icomp.n_entries * (uint64_t)ls->icomp.entry_bytes;
    }
    *dram = *nvme = 0;
    if (s->kv) {
        st_kv_pages_stats ks;
        st_kv_pages_get_stats(s->kv, &ks);
        f += ks.bytes_fast;
        *dram = ks.bytes_dram;
        *nvme = ks.bytes_nvme;
    }
    *fast = f;
}

static uint64_t peak_rss_bytes(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) ? 0 : (uint64_t)ru.ru_maxrss * 1024;
}

/* Prefill in the model's chunks with a progress bar on a terminal (chunked
 * prefill gives the same result as one call, so this only adds the bar). */
static int prefill_with_progress(st_seq *s, const int32_t *ids, int64_t n, float *logits, bool quiet) {
    const int64_t C = s->m->chunk > 0 ? s->m->chunk : n;
    if (n <= C) return st_seq_forward(s, ids, n, logits, false);
    st_progress pg;
    st_progress_begin(&pg, "prefill", (uint64_t)n, false, quiet);
    int rc = 0;
    for (int64_t t = 0; !rc && t < n; t += C) {
        rc = st_seq_forward(s, ids + t, ST_MIN(C, n - t), logits, false);
        st_progress_update(&pg, (uint64_t)ST_MIN(n, t + C));
    }
    st_progress_end(&pg);
    return rc;
}

/* The prompt as ids: --ids as given; --prompt TEXT (or - for stdin) through the
 * chat template as one user message, or as raw text with --raw. */
static int prompt_ids(const model_args *a, const st_tokenizer *tok, int32_t **ids, int64_t *n) {
    if (a->ids) return parse_ids(a->ids, ids, n);
    if (a->ids_file) return read_ids_file(a->ids_file, ids, n);
    char *text = NULL;
    size_t len = 0;
    if (!strcmp(a->prompt, "-")) {
        size_t cap = 0;
        for (;;) {
            if (len + 65536 + 1 > cap) {
                char *t = realloc(text, cap = cap * 2 + 65536 + 1);
                if (!t) { free(text); return st_error(ST_ERR_NOMEM, "prompt: out of memory"); }
                text = t;
            }
            size_t got = fread(text + len, 1, 65536, stdin);
            len += got;
            if (got == 0) break;
        }
        text[len] = 0;
    } else {
        text = strdup(a->prompt);
        if (!text) return st_error(ST_ERR_NOMEM, "prompt: out of memory");
        len = strlen(text);
    }
    st_tokens toks = {0};
    int rc;
    if (a->raw) {
        rc = st_tokenizer_encode(tok, text, len, true, &toks);
    } else {
        st_think_mode mode = ST_THINK_OFF;
        if (a->think && (rc = st_think_mode_parse(a->think, &mode))) { free(text); return rc; }
        cJSON *msgs = cJSON_CreateArray(), *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "user");
        cJSON_AddStringToObject(m, "content", text);
        cJSON_AddItemToArray(msgs, m);
        rc = st_chat_encode(tok, msgs, NULL, mode, &toks);
        cJSON_Delete(msgs);
    }
    free(text);
    if (rc) { st_tokens_free(&toks); return rc; }
    if (!toks.len) { st_tokens_free(&toks); return st_error(ST_ERR_INVALID, "the prompt is empty"); }
    *ids = toks.ids;
    *n = (int64_t)toks.len;
    return 0;
}

int cmd_run(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        printf("usage: strata run --model DIR (--prompt TEXT | --ids 1,2,3 | --ids-file FILE) [-n N] [options]\n\n"
               "Generates up to N tokens after the prompt, streaming the text (or the ids), then\n"
               "prints prefill and decode speed and the bytes of weights each decoded token reads.\n\n%s%s%s"
               "  --prompt TEXT        prompt text ('-' reads stdin); rendered with the chat template\n"
               "                       as one user message unless --raw\n"
               "  --think off|on|max   thinking mode of the chat template (default off)\n"
               "  --raw                encode the prompt as plain text, no chat template\n"
               "  --kv-save DIR        save the prompt's KV state in DIR and reuse the longest saved\n"
               "                       prefix of later prompts instead of recomputing it\n"
               "  -n N                 tokens to generate (default 16); stops early at end of sequence\n"
               "  --temp T             temperature (default 0: greedy)\n"
               "  --top-k K, --top-p P sampling filters\n"
               "  --seed S             sampling seed (default 0)\n",
               common_help, cli_tier_help, common_help_tail);
        return 0;
    }
    model_args a;
    int rc = parse_model_args("run", argc, argv, &a);
    if (rc) return rc;
    int32_t *ids = NULL, *out = NULL;
    int64_t n = 0;
    st_model *m = NULL;
    st_seq *s = NULL;
    st_tokenizer *tok = NULL;
    st_detok_stream ds = {0};
    float *logits = NULL;
    st_sampler smp = {0};
    cJSON *js = NULL;
    if (a.prompt || !a.json) { /* text out needs the tokenizer; with --ids it is optional */
        rc = st_tokenizer_load(a.model, &tok);
        if (rc && a.prompt) goto fail;
        if (rc) { tok = NULL; st_error_clear(); }
    }
    if ((rc = prompt_ids(&a, tok, &ids, &n)) || (rc = st_model_load(a.model, &a.opts, &m)) ||
        (a.ids_file && (rc = check_vocab(a.ids_file, ids, n, m->vocab))) || (rc = st_seq_new(m, &s)) ||
        (a.opts.kv_budget && (rc = st_seq_kv_tiering(s, a.opts.kv_budget, a.kv_dram, a.opts.kv_spill, a.kv_page))) ||
        (rc = st_sampler_init(&smp, &a.samp, cli_text_vocab("run", m->vocab, tok))))
        goto fail;
    if (tok && (rc = st_detok_stream_init(&ds, tok, false))) goto fail;
    logits = malloc((size_t)m->vocab * sizeof(float));
    out = malloc((size_t)(a.n_predict > 0 ? a.n_predict : 1) * sizeof(int32_t));
    if (!logits || !out) { rc = st_error(ST_ERR_NOMEM, "out of memory"); goto fail; }
    const int32_t eos = tok ? st_tokenizer_get_specials(tok)->eos : -1;
    double t0 = st_time_s();
    int64_t reused = 0;
    uint64_t model_id = 0;
    if (a.kv_save) {
        model_id = st_kv_model_id(a.model, (int)a.opts.numerics);
        if ((rc = st_kv_load_prefix(s, ids, n, model_id, a.kv_save, logits, &reused))) goto fail;
    }
    if (reused < n && (rc = prefill_with_progress(s, ids + reused, n - reused, logits, a.opts.quiet || a.json))) goto fail;
    if (a.kv_save && reused < n && (rc = st_kv_save(s, ids, n, logits, model_id, a.kv_save)))
        ST_WARN("could not save the prompt's KV state: %s", st_last_error());
    rc = 0;
    st_stream_stats ss_prefill; /* decode-only offload numbers are the difference from here */
    const bool streamed = !st_model_offload_stats(m, &ss_prefill);
    double t1 = st_time_s();
    int k = 0;
    const char *finish = "length";
    for (; k < a.n_predict; k++) {
        out[k] = st_sampler_sample(&smp, logits);
        if (!a.json) {
            if (tok) {
                const char *txt;
                size_t len;
                if (out[k] != eos && !st_detok_stream_push(&ds, out[k], &txt, &len)) fwrite(txt, 1, len, stdout);
            } else {
                printf("%s%d", k ? " " : "", out[k]);
            }
            fflush(stdout);
        }
        if (out[k] == eos) { finish = "stop"; k++; break; }
        if (k + 1 < a.n_predict && (rc = st_seq_forward(s, &out[k], 1, logits, false))) goto fail;
    }
    double t2 = st_time_s();
    double pf = (double)n / (t1 - t0), dc = k > 1 ? (double)(k - 1) / (t2 - t1) : 0;
    uint64_t kv_fast, kv_dram, kv_nvme;
    kv_tier_bytes(s, &kv_fast, &kv_dram, &kv_nvme);
    if (a.json) {
        js = cJSON_CreateObject();
        cJSON_AddNumberToObject(js, "prompt_tokens", (double)n);
        cJSON *g = cJSON_AddArrayToObject(js, "generated");
        for (int i = 0; i < k; i++) cJSON_AddItemToArray(g, cJSON_CreateNumber(out[i]));
        if (tok) {
            char *text = NULL;
            size_t len = 0;
            char *valid = NULL;
            if (!st_tokenizer_decode(tok, out, (size_t)k, true, &text, &len) && !st_utf8_repair(text, len, &valid, NULL))
                cJSON_AddStringToObject(js, "text", valid); /* JSON is UTF-8: a character cut by -n */
            free(valid);
            free(text);
        }
        cJSON_AddStringToObject(js, "finish_reason", finish);
        cJSON_AddNumberToObject(js, "prefill_tok_s", pf);
        cJSON_AddNumberToObject(js, "kv_reused_tokens", (double)reused);
        cJSON_AddNumberToObject(js, "decode_tok_s", dc);
        cJSON_AddNumberToObject(js, "weight_bytes_per_token", (double)m->bytes_per_token);
        cJSON_AddNumberToObject(js, "prefill_s", t1 - t0);
        cJSON_AddNumberToObject(js, "decode_s", t2 - t1);
        cJSON_AddNumberToObject(js, "peak_rss_bytes", (double)peak_rss_bytes());
        cJSON *kx = cJSON_AddObjectToObject(js, "kv_bytes");
        cJSON_AddNumberToObject(kx, "fast", (double)kv_fast);
        cJSON_AddNumberToObject(kx, "dram", (double)kv_dram);
        cJSON_AddNumberToObject(kx, "nvme", (double)kv_nvme);
        st_stream_stats ss;
        if (!st_model_offload_stats(m, &ss)) {
            cJSON *ox = cJSON_AddObjectToObject(js, "experts");
            cJSON_AddNumberToObject(ox, "slots", ss.n_slots);
            cJSON_AddNumberToObject(ox, "cache_bytes", (double)ss.cache_bytes);
            cJSON_AddNumberToObject(ox, "needs", (double)ss.pf.needs);
            cJSON_AddNumberToObject(ox, "hits", (double)ss.pf.hits);
            cJSON_AddNumberToObject(ox, "late", (double)ss.pf.late);
            cJSON_AddNumberToObject(ox, "misses", (double)ss.pf.misses);
            cJSON_AddNumberToObject(ox, "stall_s", (double)ss.pf.stall_ns / 1e9);
            cJSON_AddNumberToObject(ox, "wasted_bytes", (double)ss.pf.wasted_bytes);
            cJSON_AddNumberToObject(ox, "bytes_read", (double)ss.bytes_read);
            cJSON_AddNumberToObject(ox, "predictions", (double)ss.pf.predictions);
            cJSON_AddNumberToObject(ox, "predictions_used", (double)ss.pf.predictions_used);
            cJSON_AddNumberToObject(ox, "superseded", (double)ss.pf.superseded);
            cJSON_AddNumberToObject(ox, "unneeded_in_flight", (double)ss.pf.unneeded_in_flight);
            cJSON_AddNumberToObject(ox, "cancelled_in_flight", (double)ss.pf.cancelled_in_flight);
            cJSON_AddNumberToObject(ox, "io_promoted", (double)ss.io_promoted);
            cJSON_AddNumberToObject(ox, "wanted_evictions", (double)ss.wanted_evictions);
            if (streamed) { /* the same counters over the decode loop only (the totals include the prefill) */
                cJSON *dx = cJSON_AddObjectToObject(ox, "decode");
                cJSON_AddNumberToObject(dx, "seconds", t2 - t1);
                cJSON_AddNumberToObject(dx, "needs", (double)(ss.pf.needs - ss_prefill.pf.needs));
                cJSON_AddNumberToObject(dx, "hits", (double)(ss.pf.hits - ss_prefill.pf.hits));
                cJSON_AddNumberToObject(dx, "late", (double)(ss.pf.late - ss_prefill.pf.late));
                cJSON_AddNumberToObject(dx, "misses", (double)(ss.pf.misses - ss_prefill.pf.misses));
                cJSON_AddNumberToObject(dx, "stall_s", (double)(ss.pf.stall_ns - ss_prefill.pf.stall_ns) / 1e9);
                cJSON_AddNumberToObject(dx, "wasted_bytes", (double)(ss.pf.wasted_bytes - ss_prefill.pf.wasted_bytes));
                cJSON_AddNumberToObject(dx, "bytes_read", (double)(ss.bytes_read - ss_prefill.bytes_read));
                cJSON_AddNumberToObject(dx, "predictions", (double)(ss.pf.predictions - ss_prefill.pf.predictions));
                cJSON_AddNumberToObject(dx, "predictions_used",
                                        (double)(ss.pf.predictions_used - ss_prefill.pf.predictions_used));
                cJSON_AddNumberToObject(dx, "superseded", (double)(ss.pf.superseded - ss_prefill.pf.superseded));
                cJSON_AddNumberToObject(dx, "unneeded_in_flight",
                                        (double)(ss.pf.unneeded_in_flight - ss_prefill.pf.unneeded_in_flight));
                cJSON_AddNumberToObject(dx, "cancelled_in_flight",
                                        (double)(ss.pf.cancelled_in_flight - ss_prefill.pf.cancelled_in_flight));
                cJSON_AddNumberToObject(dx, "io_promoted", (double)(ss.io_promoted - ss_prefill.io_promoted));
                cJSON_AddNumberToObject(dx, "wanted_evictions", (double)(ss.wanted_evictions - ss_prefill.wanted_evictions));
            }
        }
        st_gpu_tier_stats gs;
        if (!st_model_gpu_stats(m, &gs)) {
            cJSON *gx = cJSON_AddObjectToObject(js, "gpu");
            cJSON_AddStringToObject(gx, "device", gs.device);
            cJSON_AddNumberToObject(gx, "slots", gs.n_slots);
            cJSON_AddNumberToObject(gx, "budget_bytes", (double)gs.budget);
            cJSON_AddNumberToObject(gx, "peak_bytes", (double)gs.peak);
            cJSON_AddNumberToObject(gx, "uses", (double)gs.uses);
            cJSON_AddNumberToObject(gx, "hits", (double)gs.hits);
            cJSON_AddNumberToObject(gx, "misses", (double)gs.misses);
            cJSON_AddNumberToObject(gx, "admitted", (double)gs.admitted);
            cJSON_AddNumberToObject(gx, "device_misses", (double)gs.device_misses);
            cJSON_AddNumberToObject(gx, "prefetched", (double)gs.prefetched);
            cJSON_AddNumberToObject(gx, "prefetch_hits", (double)gs.prefetch_hits);
            cJSON_AddNumberToObject(gx, "min_rows", gs.min_rows < INT64_MAX ? (double)gs.min_rows : -1);
            cJSON_AddNumberToObject(gx, "evictions", (double)gs.evictions);
            cJSON_AddNumberToObject(gx, "bytes_copied", (double)gs.bytes_copied);
        }
        char *txt = cJSON_PrintUnformatted(js);
        if (txt) puts(txt);
        free(txt);
    } else {
        if (tok) {
            const char *txt;
            size_t len;
            st_detok_stream_flush(&ds, &txt, &len);
            fwrite(txt, 1, len, stdout);
        }
        char b[32], tiers[640], r[32], kf[32], kd[32], kn[32];
        st_model_offload_summary(m, t2 - t0, tiers, sizeof tiers);
        printf("\n[prefill %lld tokens: %.2f tok/s | decode %d tokens: %.2f tok/s | time %.2f s | peak RSS %s | "
               "KV fast %s, dram %s, nvme %s | weights read per token: %s | tiers: %s | finish: %s]\n",
               (long long)n, pf, k, dc, t2 - t0, st_fmt_size(peak_rss_bytes(), r, sizeof r),
               st_fmt_size(kv_fast, kf, sizeof kf), st_fmt_size(kv_dram, kd, sizeof kd),
               st_fmt_size(kv_nvme, kn, sizeof kn), st_fmt_size(m->bytes_per_token, b, sizeof b), tiers, finish);
    }
    rc = 0;
fail:
    cJSON_Delete(js);
    if (tok) st_detok_stream_free(&ds);
    st_tokenizer_free(tok);
    free(logits); free(out); free(ids); st_sampler_release(&smp); st_seq_free(s); st_model_free(m);
    return rc ? cli_fail("run", rc) : 0;
}
