/* `strata chat`: an interactive terminal chat. Line editing and history with
 * libedit; the conversation is re-rendered with the V4 chat template every
 * turn and only the tokens past the longest common prefix with what the
 * session already holds are computed (the template may rewrite earlier turns,
 * e.g. drop old reasoning; then the session restarts from the divergence by
 * re-prefilling). Ctrl-C stops the current answer, not the program. */
#include <cJSON.h>
#include <editline/readline.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/chat_template.h"
#include "engine/cli.h"
#include "engine/model_stream.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) { (void)sig; interrupted = 1; }

typedef struct chat {
    st_model *m;
    st_seq *s;
    st_tokenizer *tok;
    st_sampler smp;
    cJSON *messages;
    st_think_mode think;
    int32_t *held; /* ids the session has consumed */
    int64_t n_held, cap_held;
    int max_tokens;
    double last_prefill_s, last_decode_s;
    double busy_s; /* prefill + decode time of the whole session (the tiers' stall share) */
    int64_t last_prefill_n, last_decode_n, total_tokens;
} chat;

static int hold(chat *c, const int32_t *ids, int64_t n) {
    if (c->n_held + n > c->cap_held) {
        int64_t cap = (c->n_held + n) * 2;
        int32_t *h = realloc(c->held, (size_t)cap * sizeof *h);
        if (!h) return st_error(ST_ERR_NOMEM, "chat: out of memory");
        c->held = h;
        c->cap_held = cap;
    }
    memcpy(c->held + c->n_held, ids, (size_t)n * sizeof *ids);
    c->n_held += n;
    return 0;
}

/* Bring the session to hold exactly ids[0..n-1] except the last, whose logits
 * come back in `logits`. */
static int sync_prompt(chat *c, const int32_t *ids, int64_t n, float *logits) {
    int64_t common = 0;
    while (common < c->n_held && common < n - 1 && c->held[common] == ids[common]) common++;
    if (common < c->n_held) { /* diverged: start over */
        st_seq_reset(c->s);
        c->n_held = 0;
        common = 0;
    }
    double t0 = st_time_s();
    int rc = st_seq_forward(c->s, ids + common, n - common, logits, false);
    c->last_prefill_s = st_time_s() - t0;
    c->busy_s += c->last_prefill_s;
    c->last_prefill_n = n - common;
    return rc ? rc : hold(c, ids + common, n - common);
}

static int answer(chat *c, const char *user) {
    cJSON *msg = cJSON_CreateObject();
    cJSON_AddStringToObject(msg, "role", "user");
    cJSON_AddStringToObject(msg, "content", user);
    cJSON_AddItemToArray(c->messages, msg);
    st_tokens ids = {0};
    int rc = st_chat_encode(c->tok, c->messages, NULL, c->think, &ids);
    float *logits = malloc((size_t)c->m->vocab * sizeof(float));
    st_tokens out = {0};
    st_detok_stream ds;
    bool ds_ok = false;
    if (!rc && !logits) rc = st_error(ST_ERR_NOMEM, "chat: out of memory");
    if (!rc) rc = sync_prompt(c, ids.ids, (int64_t)ids.len, logits);
    if (!rc) rc = st_detok_stream_init(&ds, c->tok, true);
    ds_ok = !rc;
    const int32_t eos = st_tokenizer_get_specials(c->tok)->eos;
    interrupted = 0;
    struct sigaction sa = {.sa_handler = on_sigint}, old;
    sigaction(SIGINT, &sa, &old);
    double t0 = st_time_s();
    for (int k = 0; !rc && k < c->max_tokens && !interrupted; k++) {
        int32_t id = st_sampler_sample(&c->smp, logits);
        if ((rc = st_tokens_push(&out, id))) break;
        if (id == eos) break;
        const char *txt;
        size_t len;
        if (!st_detok_stream_push(&ds, id, &txt, &len)) { fwrite(txt, 1, len, stdout); fflush(stdout); }
        if ((rc = st_seq_forward(c->s, &id, 1, logits, false)) || (rc = hold(c, &id, 1))) break;
    }
    sigaction(SIGINT, &old, NULL);
    c->last_decode_s = st_time_s() - t0;
    c->busy_s += c->last_decode_s;
    c->last_decode_n = (int64_t)out.len;
    c->total_tokens += (int64_t)out.len;
    if (ds_ok) {
        const char *txt;
        size_t len;
        st_detok_stream_flush(&ds, &txt, &len);
        fwrite(txt, 1, len, stdout);
        st_detok_stream_free(&ds);
    }
    printf(interrupted ? " [stopped]\n" : "\n");
    if (!rc) {
        char *text = NULL;
        size_t len = 0;
        size_t n = out.len && out.ids[out.len - 1] == eos ? out.len - 1 : out.len;
        rc = st_tokenizer_decode(c->tok, out.ids, n, true, &text, &len);
        cJSON *a = cJSON_CreateObject();
        cJSON_AddStringToObject(a, "role", "assistant");
        cJSON_AddStringToObject(a, "content", text ? text : "");
        cJSON_AddItemToArray(c->messages, a);
        free(text);
    }
    st_tokens_free(&ids);
    st_tokens_free(&out);
    free(logits);
    return rc;
}

static void print_stats(const chat *c) {
    printf("[prefill %lld tokens %.2f tok/s | decode %lld tokens %.2f tok/s | context %lld tokens | think %s]\n",
           (long long)c->last_prefill_n, c->last_prefill_s > 0 ? (double)c->last_prefill_n / c->last_prefill_s : 0,
           (long long)c->last_decode_n, c->last_decode_s > 0 ? (double)c->last_decode_n / c->last_decode_s : 0,
           (long long)c->n_held, c->think == ST_THINK_OFF ? "off" : c->think == ST_THINK_ON ? "on" : "max");
    char tiers[400];
    st_model_offload_summary(c->m, c->busy_s, tiers, sizeof tiers);
    printf("[tiers since the start: %s]\n", tiers);
}

/* One line from the user: readline on a terminal, fgets otherwise. NULL at EOF. */
static char *read_line(bool tty) {
    if (tty) {
        char *l = readline("> ");
        if (l && *l) add_history(l);
        return l;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    int ch;
    while ((ch = getchar()) != EOF && ch != '\n') {
        if (len + 1 == cap) {
            char *b = realloc(buf, cap *= 2);
            if (!b) { free(buf); return NULL; }
            buf = b;
        }
        buf[len++] = (char)ch;
    }
    if (ch == EOF && len == 0) { free(buf); return NULL; }
    buf[len] = 0;
    return buf;
}

int cmd_chat(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        printf("usage: strata chat --model DIR [--think off|on|max] [-n MAX] [--temp T] [--top-p P] [--seed S]\n"
               "                  [--numerics official|reference] [--threads N]\n"
               "                  [--kv-budget SIZE [--kv-spill DIR [--kv-dram SIZE]] [--kv-page SIZE]]\n"
               "                  [--dram-budget SIZE] [--expert-cache SIZE] [--numa auto|off|N] [--prefetch on|off]\n"
               "                  [--cache-policy P] [--io-depth N]\n\n"
               "  -n MAX              tokens per answer at most (default 512)\n"
               "  --temp T, --top-p P sampling (default 0.6 and 0.95); --seed S (default: the clock)\n"
               "  --kv-budget SIZE    KV tiering: fast memory for CSA compressed entries (the rest spills\n"
               "                      to DRAM, or to a file in --kv-spill DIR; --kv-dram SIZE keeps that\n"
               "                      much in DRAM first); --kv-page SIZE: page size (default 64K)\n"
               "%s\n"
               "Interactive chat with line editing and history. Commands:\n"
               "  /think on|off|max   thinking mode of the chat template\n"
               "  /reset              forget the conversation\n"
               "  /stats              speed of the last answer and context size\n"
               "  /quit               leave (or Ctrl-D); Ctrl-C stops the current answer\n", cli_tier_help);
        return 0;
    }
    chat c = {.max_tokens = 512, .think = ST_THINK_OFF};
    st_model_opts opts = {.quiet = true};
    st_sampler_cfg sc = {.temperature = 0.6f, .top_p = 0.95f, .seed = (uint64_t)st_time_ns()};
    const char *model = NULL, *kv_spill = NULL;
    uint64_t kv_budget = 0, kv_dram = 0, kv_page = 0;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long x;
        if (!v) { fprintf(stderr, "strata chat: '%s' needs a value (strata chat --help)\n", o); return 2; }
        const int tier = cli_tier_option("chat", o, v, &opts);
        if (tier < 0) return 2;
        if (tier) { i++; continue; }
        if (!strcmp(o, "--model")) model = v;
        else if (!strcmp(o, "--think")) {
            if (st_think_mode_parse(v, &c.think)) { fprintf(stderr, "strata chat: --think must be off, on or max, not '%s'\n", v); return 2; }
        } else if (!strcmp(o, "-n")) { if (!cli_int("chat", o, v, 1, INT32_MAX, &x)) return 2; c.max_tokens = (int)x; }
        else if (!strcmp(o, "--temp") || !strcmp(o, "--top-p")) {
            char *end;
            float f = strtof(v, &end);
            if (!*v || *end || !(f >= 0) || f > 100 || (!strcmp(o, "--top-p") && (f <= 0 || f > 1))) {
                fprintf(stderr, "strata chat: %s must be a number %s, not '%s'\n", o, !strcmp(o, "--top-p") ? "in (0, 1]" : "0..100", v);
                return 2;
            }
            if (!strcmp(o, "--top-p")) sc.top_p = f;
            else sc.temperature = f;
        } else if (!strcmp(o, "--seed")) { if (!cli_int("chat", o, v, 0, INT64_MAX, &x)) return 2; sc.seed = (uint64_t)x; }
        else if (!strcmp(o, "--threads")) { if (!cli_int("chat", o, v, 1, 4096, &x)) return 2; opts.threads = (int)x; }
        else if (!strcmp(o, "--numerics")) {
            if (!cli_numerics("chat", v, &opts.numerics)) return 2;
        } else if (!strcmp(o, "--kv-spill")) kv_spill = v;
        else if (!strcmp(o, "--kv-budget") || !strcmp(o, "--kv-dram") || !strcmp(o, "--kv-page")) {
            if (!cli_kv_size("chat", o, v, !strcmp(o, "--kv-budget") ? &kv_budget : !strcmp(o, "--kv-dram") ? &kv_dram : &kv_page))
                return 2;
        } else { fprintf(stderr, "strata chat: unknown option '%s' (strata chat --help)\n", o); return 2; }
        i++;
    }
    if (!model) { fprintf(stderr, "strata chat: --model DIR is required\n"); return 2; }
    if ((kv_spill || kv_page) && !kv_budget) { fprintf(stderr, "strata chat: --kv-spill/--kv-page need --kv-budget\n"); return 2; }
    if (kv_dram && !kv_spill) { fprintf(stderr, "strata chat: --kv-dram needs --kv-spill\n"); return 2; }
    if (kv_spill && !cli_spill_dir("chat", kv_spill)) return 2;
    int rc;
    if ((rc = st_tokenizer_load(model, &c.tok)) || (rc = st_model_load(model, &opts, &c.m)) ||
        (rc = st_seq_new(c.m, &c.s)) || (kv_budget && (rc = st_seq_kv_tiering(c.s, kv_budget, kv_dram, kv_spill, kv_page))) ||
        (rc = st_sampler_init(&c.smp, &sc, cli_text_vocab("chat", c.m->vocab, c.tok))))
        goto done;
    c.messages = cJSON_CreateArray();
    const bool tty = isatty(STDIN_FILENO);
    if (tty) printf("strata chat: %s (type /help for commands, Ctrl-D to leave)\n", model);
    signal(SIGINT, tty ? SIG_IGN : SIG_DFL);
    char *line;
    while ((line = read_line(tty))) {
        char *l = line;
        while (*l == ' ') l++;
        if (!*l) { free(line); continue; }
        if (!strcmp(l, "/quit") || !strcmp(l, "/exit")) { free(line); break; }
        if (!strncmp(l, "/think", 6)) {
            if (st_think_mode_parse(l[6] ? l + 7 : "", &c.think)) printf("usage: /think on|off|max\n");
            else printf("[thinking %s]\n", l + 7);
        } else if (!strcmp(l, "/reset")) {
            cJSON_Delete(c.messages);
            c.messages = cJSON_CreateArray();
            st_seq_reset(c.s);
            c.n_held = 0;
            printf("[conversation cleared]\n");
        } else if (!strcmp(l, "/stats")) {
            print_stats(&c);
        } else if (!strcmp(l, "/help")) {
            printf("/think on|off|max, /reset, /stats, /quit; Ctrl-C stops an answer\n");
        } else if (l[0] == '/') {
            printf("unknown command %s (/help)\n", l);
        } else if ((rc = answer(&c, l))) {
            fprintf(stderr, "strata chat: %s\n", st_last_error());
            rc = 0; /* keep the session usable */
        }
        free(line);
    }
done:
    cJSON_Delete(c.messages);
    st_sampler_release(&c.smp);
    st_seq_free(c.s);
    st_model_free(c.m);
    st_tokenizer_free(c.tok);
    free(c.held);
    return rc ? cli_fail("chat", rc) : 0;
}
