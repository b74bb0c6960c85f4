/* `strata bench tokenizer FILE`: encode/decode throughput of strata's tokenizer
 * on FILE (one thread), and the ratio to Hugging Face `tokenizers` encoding the
 * same file in a python3 subprocess when it is installed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "base/base.h"
#include "bench/bench.h"
#include "engine/cli.h"
#include "engine/tokenizer.h"

/* Times `repeat` encodes of the file with HF tokenizers (no parallelism); prints
 * "SECONDS COUNT CHECKSUM" where checksum = sum((i+1)*id) mod 2^64. */
static const char HF_SCRIPT[] =
    "import sys, time\n"
    "from tokenizers import Tokenizer\n"
    "tok = Tokenizer.from_file(sys.argv[1])\n"
    "text = open(sys.argv[2], 'rb').read().decode('utf-8', errors='replace')\n"
    "best = 1e30\n"
    "for _ in range(int(sys.argv[3])):\n"
    "    t0 = time.perf_counter(); ids = tok.encode(text, add_special_tokens=False).ids; best = min(best, time.perf_counter() - t0)\n"
    "print(best, len(ids), sum((i + 1) * v for i, v in enumerate(ids)) % (1 << 64))\n";

static void usage(FILE *f) {
    fprintf(f, "usage: strata bench tokenizer FILE [--model DIR] [--repeat N]\n\n"
               "Encodes FILE (best of N runs, one thread) and prints MB/s, then the ratio to Hugging Face\n"
               "`tokenizers` on the same file (python3 subprocess, single thread) when it is installed.\n"
               "  --model DIR   tokenizer.json + tokenizer_config.json (default tests/data/tokenizer)\n"
               "  --repeat N    runs per measurement (default 3)\n");
}

/* Runs the HF script; returns 0 and fills the outputs, or -1 with *why set. */
static int run_hf(const char *tokenizer_json, const char *file, int repeat, double *secs, size_t *count,
                  unsigned long long *checksum, char *why, size_t why_len) {
    char script[] = "/tmp/strata_bench_tok_XXXXXX";
    int fd = mkstemp(script);
    if (fd < 0) {
        snprintf(why, why_len, "cannot write a temporary script");
        return -1;
    }
    FILE *sf = fdopen(fd, "w");
    fputs(HF_SCRIPT, sf);
    fclose(sf);
    char cmd[8192], err[sizeof script + 8]; /* python's stderr, named after the script: runs at once don't share it */
    snprintf(err, sizeof err, "%s.err", script);
    snprintf(cmd, sizeof cmd,
             "TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1 python3 '%s' '%s' '%s' %d 2>'%s'",
             script, tokenizer_json, file, repeat, err);
    FILE *p = popen(cmd, "r");
    int ok = 0;
    if (p) {
        ok = fscanf(p, "%lf %zu %llu", secs, count, checksum) == 3;
        int st = pclose(p);
        ok = ok && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    unlink(script);
    if (!ok) {
        snprintf(why, why_len, "python3 with the `tokenizers` package did not run (see %s)", err);
        return -1;
    }
    unlink(err);
    return 0;
}

int bench_tokenizer(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    const char *file = NULL, *model = "tests/data/tokenizer";
    int repeat = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc) repeat = atoi(argv[++i]);
        else if (argv[i][0] != '-' && !file) file = argv[i];
        else {
            fprintf(stderr, "strata bench tokenizer: unknown or incomplete option '%s'\n\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!file || repeat < 1) {
        usage(stderr);
        return 2;
    }
    st_tokenizer *t;
    double t0 = st_time_s();
    int rc = st_tokenizer_load(model, &t);
    if (rc) return cli_fail("bench tokenizer", rc);
    double load_s = st_time_s() - t0;
    char *text;
    size_t len;
    if ((rc = st_read_file(file, SIZE_MAX / 2, &text, &len))) {
        st_tokenizer_free(t);
        return cli_fail("bench tokenizer", rc);
    }
    double best = 1e30, best_dec = 1e30;
    st_tokens ids = {0};
    for (int r = 0; r < repeat && rc == 0; r++) {
        ids.len = 0;
        t0 = st_time_s();
        rc = st_tokenizer_encode(t, text, len, true, &ids);
        best = ST_MIN(best, st_time_s() - t0);
        char *out;
        size_t out_len;
        t0 = st_time_s();
        if (rc == 0) rc = st_tokenizer_decode(t, ids.ids, ids.len, false, &out, &out_len);
        best_dec = ST_MIN(best_dec, st_time_s() - t0);
        if (rc == 0) {
            if (out_len != len || memcmp(out, text, len)) fprintf(stderr, "warning: decode(encode(file)) differs from the file\n");
            free(out);
        }
    }
    if (rc) {
        free(text);
        st_tokens_free(&ids);
        st_tokenizer_free(t);
        return cli_fail("bench tokenizer", rc);
    }
    unsigned long long sum = 0;
    for (size_t i = 0; i < ids.len; i++) sum += (unsigned long long)(i + 1) * (unsigned long long)ids.ids[i];
    double mb = (double)len / 1e6;
    printf("tokenizer: %s (%.2f MB), %zu tokens, loaded in %.3f s\n", file, mb, ids.len, load_s);
    printf("  strata encode : %8.2f MB/s  %10.0f tokens/s  (best of %d, 1 thread)\n", mb / best, (double)ids.len / best, repeat);
    printf("  strata decode : %8.2f MB/s\n", mb / best_dec);
    char tj[4096], why[256];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", model);
    double hf_s;
    size_t hf_count;
    unsigned long long hf_sum;
    if (run_hf(tj, file, repeat, &hf_s, &hf_count, &hf_sum, why, sizeof why) == 0) {
        printf("  HF tokenizers : %8.2f MB/s  %10.0f tokens/s  (python3 subprocess, 1 thread)\n", mb / hf_s,
               (double)hf_count / hf_s);
        printf("  ratio strata/HF: %.2f  (goal >= 1.0); ids %s\n", hf_s / best,
               hf_count == ids.len && hf_sum == sum ? "identical"
                                                    : "differ (expected only if the file is not valid UTF-8)");
    } else {
        printf("  ratio to HF tokenizers unavailable: %s\n", why);
    }
    free(text);
    st_tokens_free(&ids);
    st_tokenizer_free(t);
    return 0;
}
