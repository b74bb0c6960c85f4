/* `strata batch`: JSONL prompts in, JSONL results out, resumable.
 *
 * Nothing is lost: each result line is appended and fsync'd before it counts
 * as done; on start, the output's complete lines name the finished requests
 * (a torn last line from a crash is cut off), and only the rest run. Sampling
 * is seeded per request, so a resumed run writes the same text as an
 * uninterrupted one. A malformed input line becomes an error record naming
 * its line number; the other lines go on.
 *
 * Throughput: up to --max-batch requests are in flight. New requests are
 * prefilled together (st_seq_prefill_batch), then all of them decode
 * together, one token each per step
 * (st_seq_forward_batch: a streamed expert is read once per step for the whole
 * batch). Batched logits are bit-identical to one-at-a-time ones and every
 * request has its own sampler, so the text of a request never depends on the
 * batch size; only the order of the output lines does. A finished request is
 * written at once and its slot takes the next pending line. */
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/chat_template.h"
#include "engine/cli.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"

typedef struct done_set { char **keys; size_t n, cap; } done_set;

static int done_add(done_set *d, const char *key) {
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        char **k = realloc(d->keys, cap * sizeof *k);
        if (!k) return st_error(ST_ERR_NOMEM, "batch: out of memory");
        d->keys = k;
        d->cap = cap;
    }
    if (!(d->keys[d->n] = strdup(key))) return st_error(ST_ERR_NOMEM, "batch: out of memory");
    d->n++;
    return 0;
}

static bool done_has(const done_set *d, const char *key) {
    for (size_t i = 0; i < d->n; i++)
        if (!strcmp(d->keys[i], key)) return true;
    return false;
}

/* The key of a request: its id printed as JSON ("7", "\"q-3\""), or
 * "line:N" for a line that has no usable id. */
static char *request_key(const cJSON *id, long line) {
    if (id && (cJSON_IsString(id) || cJSON_IsNumber(id))) return cJSON_PrintUnformatted(id);
    char *k = malloc(32);
    if (k) snprintf(k, 32, "line:%ld", line);
    return k;
}

/* Reads the finished keys from an existing output and cuts off a torn last line. */
static int load_done(const char *path, done_set *d) {
    char *buf;
    size_t len;
    int rc = st_read_file(path, (size_t)1 << 34, &buf, &len);
    if (rc == ST_ERR_NOT_FOUND) { st_error_clear(); return 0; }
    if (rc) return rc;
    size_t good = 0;
    for (size_t i = 0; i < len;) {
        char *nl = memchr(buf + i, '\n', len - i);
        if (!nl) break; /* torn: no newline, drop it */
        *nl = 0;
        cJSON *j = cJSON_Parse(buf + i);
        if (j) {
            cJSON *k = cJSON_GetObjectItem(j, "key");
            if (cJSON_IsString(k)) rc = done_add(d, k->valuestring);
            cJSON_Delete(j);
        }
        i = (size_t)(nl - buf) + 1;
        good = i;
        if (rc) break;
    }
    free(buf);
    if (!rc && good < len && truncate(path, (off_t)good)) rc = st_error(ST_ERR_IO, "%s: cannot cut the torn last line: %s", path, strerror(errno));
    return rc;
}

static int append_record(int fd, const char *path, cJSON *rec) {
    char *txt = cJSON_PrintUnformatted(rec);
    if (!txt) return st_error(ST_ERR_NOMEM, "batch: out of memory");
    size_t n = strlen(txt);
    txt[n] = '\n'; /* replace the terminator: one write of the whole line */
    ssize_t w = write(fd, txt, n + 1);
    free(txt);
    if (w != (ssize_t)(n + 1) || fsync(fd)) return st_error(ST_ERR_IO, "%s: %s", path, strerror(errno));
    return 0;
}

/* One request in flight. */
typedef struct slot {
    bool busy;
    st_seq *s;          /* the slot's sequence, reused (reset) for each request */
    float *logits;      /* (vocab): the latest logits of this request */
    cJSON *req, *rec;   /* the request line and its result record */
    char *key;
    long line;
    st_sampler smp;
    bool smp_live;
    st_tokens ids, out; /* prompt, generated */
    int max_tokens;
    int32_t next;       /* token to feed in the next decode step */
    const char *finish;
    bool prefill;       /* encoded and sampler ready: waits for prefill_pending */
    double t0, t_prefilled;
} slot;

typedef struct batch_run {
    st_model *m;
    st_tokenizer *tok;
    int64_t text_vocab; /* ids the samplers may pick (cli_text_vocab) */
    slot *slots;        /* (max_batch) */
    int max_batch;
    int default_max_tokens;
    uint64_t kv_budget; /* per sequence; 0: no tiering */
    const char *kv_spill;
    uint64_t kv_page, kv_dram; /* page size and DRAM limit before the spill file (0: defaults) */
    int fd;
    const char *out_path;
    done_set done;
    long finished, failed;
    uint64_t tokens_out;
    st_progress pg;
    /* input cursor */
    char *input, *cur, *end;
    long line;
} batch_run;

static void slot_clear(slot *sl) {
    cJSON_Delete(sl->req);
    cJSON_Delete(sl->rec);
    free(sl->key);
    st_tokens_free(&sl->ids);
    st_tokens_free(&sl->out);
    if (sl->smp_live) st_sampler_release(&sl->smp);
    sl->req = sl->rec = NULL;
    sl->key = NULL;
    sl->smp_live = false;
    sl->busy = false;
}

/* Writes rec (fsync'd) and counts its key as done. */
static int commit_record(batch_run *b, cJSON *rec, const char *key) {
    int rc = append_record(b->fd, b->out_path, rec);
    if (!rc) rc = done_add(&b->done, key);
    b->finished++;
    st_progress_update(&b->pg, (uint64_t)b->finished);
    return rc;
}

/* Replaces the slot's record with an error record for its line and writes it.
 * r: the request's error; NOMEM and IO are the machine's, not the line's: fatal. */
static int fail_request(batch_run *b, slot *sl, int r) {
    cJSON *rec = cJSON_CreateObject();
    const cJSON *id = sl->req && cJSON_IsObject(sl->req) ? cJSON_GetObjectItem(sl->req, "id") : NULL;
    if (id) cJSON_AddItemToObject(rec, "id", cJSON_Duplicate(id, 1));
    cJSON_AddStringToObject(rec, "key", sl->key);
    cJSON_AddNumberToObject(rec, "line", (double)sl->line);
    cJSON_AddStringToObject(rec, "error", st_last_error());
    b->failed++;
    int rc = commit_record(b, rec, sl->key);
    cJSON_Delete(rec);
    slot_clear(sl);
    return r == ST_ERR_NOMEM || r == ST_ERR_IO ? r : rc;
}

/* The request is complete: text, counts, finish reason, timings. */
static int finish_request(batch_run *b, slot *sl) {
    char *text = NULL;
    size_t len = 0;
    char *raw = NULL;
    size_t raw_len = 0;
    int r = st_tokenizer_decode(b->tok, sl->out.ids, sl->out.len, true, &raw, &raw_len);
    if (!r) r = st_utf8_repair(raw, raw_len, &text, &len); /* JSON is UTF-8: a character cut by max_tokens */
    free(raw);
    if (r) return fail_request(b, sl, r);
    double t2 = st_time_s();
    cJSON_AddStringToObject(sl->rec, "text", text);
    cJSON_AddNumberToObject(sl->rec, "prompt_tokens", (double)sl->ids.len);
    cJSON_AddNumberToObject(sl->rec, "completion_tokens", (double)sl->out.len);
    cJSON_AddStringToObject(sl->rec, "finish_reason", sl->finish);
    cJSON *t = cJSON_AddObjectToObject(sl->rec, "timings");
    cJSON_AddNumberToObject(t, "prefill_s", sl->t_prefilled - sl->t0);
    cJSON_AddNumberToObject(t, "decode_s", t2 - sl->t_prefilled); /* wall time, shared with the batch */
    b->tokens_out += sl->out.len;
    free(text);
    int rc = commit_record(b, sl->rec, sl->key);
    slot_clear(sl);
    return rc;
}

/* Samples from the slot's logits: stop, length, or the next token to feed.
 * Returns 0 (still decoding), 1 (finished and written) or an error. */
static int advance(batch_run *b, slot *sl) {
    const int32_t eos = st_tokenizer_get_specials(b->tok)->eos;
    int32_t id = st_sampler_sample(&sl->smp, sl->logits);
    if (id == eos) sl->finish = "stop";
    else {
        int r = st_tokens_push(&sl->out, id);
        if (r) return fail_request(b, sl, r);
        if ((int)sl->out.len < sl->max_tokens) { sl->next = id; return 0; }
    }
    int rc = finish_request(b, sl);
    return rc ? rc : 1;
}

/* Validates, encodes and prefills the slot's request. 0 (decoding), 1 (done
 * and written, result or error record) or a fatal error. */
static int start_request(batch_run *b, slot *sl) {
    const cJSON *req = sl->req;
    const cJSON *prompt = cJSON_GetObjectItem(req, "prompt"), *msgs = cJSON_GetObjectItem(req, "messages");
    const cJSON *mt = cJSON_GetObjectItem(req, "max_tokens"), *temp = cJSON_GetObjectItem(req, "temperature");
    const cJSON *seed = cJSON_GetObjectItem(req, "seed"), *top_p = cJSON_GetObjectItem(req, "top_p");
    int r = 0;
    if (!!cJSON_IsString(prompt) == !!cJSON_IsArray(msgs))
        r = st_error(ST_ERR_INVALID, "give exactly one of \"prompt\" (a string) or \"messages\" (an array)");
    else if (mt && (!cJSON_IsNumber(mt) || mt->valuedouble < 0)) r = st_error(ST_ERR_INVALID, "\"max_tokens\" must be a number >= 0");
    else if (temp && !cJSON_IsNumber(temp)) r = st_error(ST_ERR_INVALID, "\"temperature\" must be a number");
    else if (seed && !cJSON_IsNumber(seed)) r = st_error(ST_ERR_INVALID, "\"seed\" must be a number");
    else if (msgs) r = st_chat_encode(b->tok, msgs, cJSON_GetObjectItem(req, "tools"), ST_THINK_OFF, &sl->ids);
    else {
        cJSON *arr = cJSON_CreateArray(), *u = cJSON_CreateObject();
        cJSON_AddStringToObject(u, "role", "user");
        cJSON_AddStringToObject(u, "content", prompt->valuestring);
        cJSON_AddItemToArray(arr, u);
        r = st_chat_encode(b->tok, arr, NULL, ST_THINK_OFF, &sl->ids);
        cJSON_Delete(arr);
    }
    if (r) { r = fail_request(b, sl, r); return r ? r : 1; }
    st_sampler_cfg sc = {.temperature = temp ? (float)temp->valuedouble : 0.0f,
                         .top_p = top_p && cJSON_IsNumber(top_p) ? (float)top_p->valuedouble : 1.0f,
                         .seed = seed ? (uint64_t)seed->valuedouble : 0};
    if ((r = st_sampler_init(&sl->smp, &sc, b->text_vocab))) { r = fail_request(b, sl, r); return r ? r : 1; }
    sl->smp_live = true;
    sl->max_tokens = mt ? (int)mt->valuedouble : b->default_max_tokens;
    sl->finish = "length";
    st_seq_reset(sl->s);
    sl->t0 = sl->t_prefilled = st_time_s();
    if (sl->max_tokens <= 0) { r = finish_request(b, sl); return r ? r : 1; }
    sl->prefill = true; /* prefill_pending runs it with the other new requests */
    return 0;
}

/* One slot's prefill alone, then its first token. 0, 1 (finished) or fatal. */
static int prefill_one(batch_run *b, slot *sl) {
    sl->prefill = false;
    st_seq_reset(sl->s);
    int r = st_seq_forward(sl->s, sl->ids.ids, (int64_t)sl->ids.len, sl->logits, false);
    sl->t_prefilled = st_time_s();
    if (r) { r = fail_request(b, sl, r); return r ? r : 1; }
    return advance(b, sl);
}

/* Prefills every slot that waits for it, together (st_seq_prefill_batch: the
 * MoE once over all their prompt rows, so a streamed expert is read once for
 * all of them), then samples each one's first token. When the batch fails,
 * each prompt runs again alone so the error lands on its own request. */
static int prefill_pending(batch_run *b, st_seq **rows, int *which, float *logits) {
    int B = 0;
    size_t total = 0;
    for (int i = 0; i < b->max_batch; i++)
        if (b->slots[i].busy && b->slots[i].prefill) { which[B] = i; rows[B++] = b->slots[i].s; total += b->slots[i].ids.len; }
    if (B == 0) return 0;
    if (B == 1) { int r = prefill_one(b, &b->slots[which[0]]); return r < 0 ? r : 0; }
    int32_t *ids = malloc(total * sizeof *ids);
    int64_t *lens = malloc((size_t)B * sizeof *lens);
    if (!ids || !lens) { free(ids); free(lens); return st_error(ST_ERR_NOMEM, "batch: out of memory for %zu prompt tokens", total); }
    size_t off = 0;
    for (int k = 0; k < B; k++) {
        slot *sl = &b->slots[which[k]];
        memcpy(ids + off, sl->ids.ids, sl->ids.len * sizeof *ids);
        off += sl->ids.len;
        lens[k] = (int64_t)sl->ids.len;
        st_seq_reset(sl->s);
    }
    int r = st_seq_prefill_batch(rows, ids, lens, B, logits);
    free(ids);
    free(lens);
    if (r == ST_ERR_NOMEM || r == ST_ERR_IO) return r;
    const double t = st_time_s();
    const size_t V = (size_t)b->m->vocab;
    for (int k = 0; k < B; k++) {
        slot *sl = &b->slots[which[k]];
        int rc;
        if (r) rc = prefill_one(b, sl);
        else {
            sl->prefill = false;
            sl->t_prefilled = t;
            memcpy(sl->logits, logits + (size_t)k * V, V * sizeof(float));
            rc = advance(b, sl);
        }
        if (rc < 0) return rc;
    }
    return 0;
}

/* Fills the slot with the next pending line that runs (lines already done
 * are skipped, malformed ones written as error records on the way).
 * 0: the slot is decoding or the input is exhausted (slot not busy). */
static int fill_slot(batch_run *b, slot *sl) {
    while (!sl->busy && b->cur < b->end) {
        char *p = b->cur, *nl = memchr(p, '\n', (size_t)(b->end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(b->end - p);
        b->cur = p + n + 1;
        b->line++;
        p[n] = 0; /* the input buffer is ours: lines end in place */
        const char *q = p;
        while (*q == ' ' || *q == '\t' || *q == '\r') q++;
        if (!*q) { b->finished++; continue; }
        cJSON *req = cJSON_Parse(p);
        cJSON *id = req && cJSON_IsObject(req) ? cJSON_GetObjectItem(req, "id") : NULL;
        char *key = request_key(id, b->line);
        if (!key) { cJSON_Delete(req); return st_error(ST_ERR_NOMEM, "batch: out of memory"); }
        if (done_has(&b->done, key)) {
            free(key);
            cJSON_Delete(req);
            b->finished++;
            st_progress_update(&b->pg, (uint64_t)b->finished);
            continue;
        }
        *sl = (slot){.busy = true, .s = sl->s, .logits = sl->logits, .req = req, .key = key, .line = b->line,
                     .rec = cJSON_CreateObject()};
        if (id) cJSON_AddItemToObject(sl->rec, "id", cJSON_Duplicate(id, 1));
        cJSON_AddStringToObject(sl->rec, "key", key);
        int r = 0;
        if (!req || !cJSON_IsObject(req)) r = fail_request(b, sl, st_error(ST_ERR_INVALID, "not a JSON object"));
        else if (!id) r = fail_request(b, sl, st_error(ST_ERR_INVALID, "no \"id\""));
        else r = start_request(b, sl);
        if (r < 0) return r;
    }
    return 0;
}

/* One decode step of every busy slot together. */
static int decode_step(batch_run *b, st_seq **rows, int32_t *toks, int *which, float *logits) {
    int B = 0;
    for (int i = 0; i < b->max_batch; i++)
        if (b->slots[i].busy) {
            rows[B] = b->slots[i].s;
            toks[B] = b->slots[i].next;
            which[B++] = i;
        }
    if (!B) return 0;
    const size_t V = (size_t)b->m->vocab;
    int r = st_seq_forward_batch(rows, toks, B, logits);
    if (r) {
        /* the states of all B are undefined now: each of them fails (and frees its slot) */
        if (r == ST_ERR_NOMEM || r == ST_ERR_IO) return r;
        char msg[512];
        snprintf(msg, sizeof msg, "%s", st_last_error());
        for (int k = 0; k < B; k++) {
            st_error(r, "decode step: %s", msg);
            int rc = fail_request(b, &b->slots[which[k]], r);
            if (rc) return rc;
        }
        return 0;
    }
    for (int k = 0; k < B; k++) {
        slot *sl = &b->slots[which[k]];
        memcpy(sl->logits, logits + (size_t)k * V, V * sizeof(float));
        int rc = advance(b, sl);
        if (rc < 0) return rc;
    }
    return 0;
}

static int run_all(batch_run *b) {
    const int64_t V = b->m->vocab;
    const int MB = b->max_batch;
    st_seq **rows = calloc((size_t)MB, sizeof *rows);
    int32_t *toks = calloc((size_t)MB, sizeof *toks);
    int *which = calloc((size_t)MB, sizeof *which);
    float *logits = malloc((size_t)MB * (size_t)V * sizeof(float));
    int rc = 0;
    if (!rows || !toks || !which || !logits) rc = st_error(ST_ERR_NOMEM, "batch: out of memory for %d sequences", MB);
    for (int i = 0; !rc && i < MB; i++) {
        slot *sl = &b->slots[i];
        if (!(sl->logits = malloc((size_t)V * sizeof(float)))) rc = st_error(ST_ERR_NOMEM, "batch: out of memory");
        if (!rc) rc = st_seq_new(b->m, &sl->s);
        if (!rc && b->kv_budget) rc = st_seq_kv_tiering(sl->s, b->kv_budget, b->kv_dram, b->kv_spill, b->kv_page);
    }
    for (;;) {
        bool waiting = true;
        while (!rc && waiting) { /* new requests in every free slot, prefilled together; some may finish at once */
            for (int i = 0; !rc && i < MB; i++) rc = fill_slot(b, &b->slots[i]);
            if (!rc) rc = prefill_pending(b, rows, which, logits);
            waiting = false;
            for (int i = 0; i < MB; i++) waiting |= !b->slots[i].busy;
            waiting &= b->cur < b->end;
        }
        if (rc) break;
        bool any = false;
        for (int i = 0; i < MB; i++) any |= b->slots[i].busy;
        if (!any) break; /* input exhausted, nothing in flight */
        if ((rc = decode_step(b, rows, toks, which, logits))) break;
    }
    free(rows); free(toks); free(which); free(logits);
    return rc;
}

int cmd_batch(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        printf("usage: strata batch --model DIR --in prompts.jsonl --out results.jsonl [-n MAX] [--max-batch B]\n"
               "                    [--threads N] [--numerics official|reference] [--dram-budget SIZE]\n"
               "                    [--expert-cache SIZE] [--numa auto|off|N] [--kv-budget SIZE [--kv-page SIZE]\n"
               "                    [--kv-spill DIR [--kv-dram SIZE]]] [--prefetch on|off] [--cache-policy P]\n"
               "                    [--io-depth N] [--quiet]\n\n"
               "Each input line: {\"id\": ..., \"prompt\": \"...\" | \"messages\": [...], \"max_tokens\": N,\n"
               "                  \"temperature\": T, \"top_p\": P, \"seed\": S}\n"
               "Each output line: {\"id\", \"key\", \"text\", \"prompt_tokens\", \"completion_tokens\",\n"
               "                   \"finish_reason\", \"timings\"} or {\"line\", \"key\", \"error\"}.\n"
               "Results are fsync'd one by one; run the same command again after a crash and it\n"
               "finishes only what is missing (every id appears exactly once).\n"
               "  -n MAX             max_tokens when a line gives none (default 256)\n"
               "  --max-batch B      requests decoded together, one token each per step (default 8;\n"
               "                     1: one at a time). The text of every request is the same for\n"
               "                     any B; results are written in the order they finish\n"
               "  --kv-budget SIZE   KV tiering, per sequence (B of them): CSA cache entries beyond SIZE\n"
               "                     page out to DRAM, or with --kv-spill DIR to a file in DIR\n"
               "  --kv-page SIZE     KV page size (multiple of 4 KiB; default 64K)\n"
               "  --kv-dram SIZE     with --kv-spill: DRAM for pages before they go to the file\n"
               "%s", cli_tier_help);
        return 0;
    }
    const char *model = NULL, *in = NULL, *outp = NULL;
    batch_run b = {.default_max_tokens = 256, .max_batch = 8, .fd = -1};
    st_model_opts opts = {.quiet = true};
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long x;
        if (!strcmp(o, "--quiet")) { quiet = true; continue; }
        if (!v) { fprintf(stderr, "strata batch: '%s' needs a value (strata batch --help)\n", o); return 2; }
        if (!strcmp(o, "--model")) model = v;
        else if (!strcmp(o, "--in")) in = v;
        else if (!strcmp(o, "--out")) outp = v;
        else if (!strcmp(o, "-n")) { if (!cli_int("batch", o, v, 0, INT32_MAX, &x)) return 2; b.default_max_tokens = (int)x; }
        else if (!strcmp(o, "--threads")) { if (!cli_int("batch", o, v, 1, 4096, &x)) return 2; opts.threads = (int)x; }
        else if (!strcmp(o, "--max-batch")) {
            char *e;
            long n = strtol(v, &e, 10);
            if (*e || n < 1 || n > 4096) { fprintf(stderr, "strata batch: --max-batch must be 1..4096, not '%s'\n", v); return 2; }
            b.max_batch = (int)n;
        } else if (!strcmp(o, "--numerics")) {
            if (!cli_numerics("batch", v, &opts.numerics)) return 2;
        } else if (!strcmp(o, "--kv-budget") || !strcmp(o, "--kv-page") || !strcmp(o, "--kv-dram")) {
            if (!cli_kv_size("batch", o, v, !strcmp(o, "--kv-budget") ? &b.kv_budget : !strcmp(o, "--kv-page") ? &b.kv_page : &b.kv_dram))
                return 2;
        } else if (!strcmp(o, "--kv-spill")) b.kv_spill = v;
        else if ((x = cli_tier_option("batch", o, v, &opts)) < 0) return 2;
        else if (!x) { fprintf(stderr, "strata batch: unknown option '%s' (strata batch --help)\n", o); return 2; }
        i++;
    }
    if (!model || !in || !outp) { fprintf(stderr, "strata batch: --model, --in and --out are required\n"); return 2; }
    if (b.kv_spill && !b.kv_budget) { fprintf(stderr, "strata batch: --kv-spill needs --kv-budget\n"); return 2; }
    if (b.kv_page && !b.kv_budget) { fprintf(stderr, "strata batch: --kv-page needs --kv-budget\n"); return 2; }
    if (b.kv_dram && !b.kv_spill) { fprintf(stderr, "strata batch: --kv-dram needs --kv-spill\n"); return 2; }
    if (b.kv_spill && !cli_spill_dir("batch", b.kv_spill)) return 2;
    struct stat st;
    if (!stat(in, &st) && S_ISDIR(st.st_mode)) { fprintf(stderr, "strata batch: --in %s: is a directory, expected a JSONL file\n", in); return 2; }
    if (!stat(outp, &st) && S_ISDIR(st.st_mode)) { fprintf(stderr, "strata batch: --out %s: is a directory, expected a JSONL file\n", outp); return 2; }
    size_t in_len = 0;
    int rc;
    bool created = false;
    b.out_path = outp;
    if ((rc = st_read_file(in, (size_t)1 << 34, &b.input, &in_len)) || (rc = load_done(outp, &b.done))) goto out;
    b.cur = b.input;
    b.end = b.input + in_len;
    /* count the lines for the progress bar */
    long total = 0;
    for (size_t i = 0; i < in_len; i++) total += b.input[i] == '\n';
    if (in_len && b.input[in_len - 1] != '\n') total++;
    created = access(outp, F_OK) != 0; /* a failed start removes the empty file it made */
    b.fd = open(outp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (b.fd < 0) { rc = st_error(ST_ERR_IO, "%s: %s", outp, strerror(errno)); goto out; }
    if ((rc = st_tokenizer_load(model, &b.tok)) || (rc = st_model_load(model, &opts, &b.m))) goto out;
    b.text_vocab = cli_text_vocab("batch", b.m->vocab, b.tok);
    if (!(b.slots = calloc((size_t)b.max_batch, sizeof *b.slots))) { rc = st_error(ST_ERR_NOMEM, "out of memory"); goto out; }
    st_progress_begin(&b.pg, "batch", (uint64_t)total, false, quiet);
    double t_start = st_time_s();
    rc = run_all(&b);
    st_progress_end(&b.pg);
    if (!rc && !quiet) {
        double el = st_time_s() - t_start;
        fprintf(stderr, "strata batch: %ld lines, %ld errors, %llu tokens generated, %.2f tok/s (max batch %d); results in %s\n",
                b.line, b.failed, (unsigned long long)b.tokens_out, el > 0 ? (double)b.tokens_out / el : 0, b.max_batch, outp);
    }
out:
    if (b.fd >= 0) {
        if (rc && created && !fstat(b.fd, &st) && st.st_size == 0) unlink(outp);
        close(b.fd);
    }
    free(b.input);
    for (size_t i = 0; i < b.done.n; i++) free(b.done.keys[i]);
    free(b.done.keys);
    for (int i = 0; b.slots && i < b.max_batch; i++) {
        slot_clear(&b.slots[i]);
        free(b.slots[i].logits);
        st_seq_free(b.slots[i].s);
    }
    free(b.slots);
    st_model_free(b.m);
    st_tokenizer_free(b.tok);
    return rc ? cli_fail("batch", rc) : 0;
}
