/* `strata run` and `strata logits` as a user runs them: a small model with the
 * real V4 tokenizer, text in and text out, JSON output, reproducible sampling,
 * and usage errors. Runs the binary named by $STRATA_BIN (set by make test). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "base/base.h"
#include "engine/synth.h"
#include "util.h"

static char model_dir[64];
static const char *bin;

static int setup(void **state) {
    (void)state;
    bin = tu_strata_bin();
    if (tu_tmpdir(model_dir, sizeof model_dir, "/tmp/strata-run-XXXXXX")) return -1;
    /* tiny's shapes with the real vocabulary so the V4 tokenizer fits */
    st_synth_preset p = *st_synth_find("tiny");
    p.vocab = 129280;
    p.with_tokenizer = true;
    char dir[128];
    snprintf(dir, sizeof dir, "%s/m", model_dir);
    return tu_synth(&p, dir, 5, "tests/data/tokenizer") ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    return tu_rmtree(model_dir);
}

static cJSON *run_json(const char *args) {
    char cmd[1024], *out;
    snprintf(cmd, sizeof cmd, "%s run --model %s/m %s --json --threads 1", bin, model_dir, args);
    assert_int_equal(tu_run(cmd, &out), 0);
    cJSON *j = cJSON_Parse(out);
    if (!j) fail_msg("not JSON: %s", out);
    free(out);
    return j;
}

static void text_prompt_generates_text(void **state) {
    (void)state;
    cJSON *j = run_json("--prompt 'Hello, how are you?' -n 6");
    cJSON *gen = cJSON_GetObjectItem(j, "generated");
    assert_true(cJSON_GetArraySize(gen) >= 1 && cJSON_GetArraySize(gen) <= 6);
    assert_true(cJSON_IsString(cJSON_GetObjectItem(j, "text")));
    assert_true(cJSON_GetObjectItem(j, "prompt_tokens")->valuedouble > 6); /* template + text */
    const char *fin = cJSON_GetObjectItem(j, "finish_reason")->valuestring;
    assert_true(!strcmp(fin, "length") || !strcmp(fin, "stop"));
    assert_true(cJSON_GetObjectItem(j, "decode_tok_s")->valuedouble >= 0);
    /* greedy is deterministic; seeded sampling too */
    cJSON *k = run_json("--prompt 'Hello, how are you?' -n 6");
    assert_true(cJSON_Compare(gen, cJSON_GetObjectItem(k, "generated"), 1));
    cJSON_Delete(k);
    cJSON *s1 = run_json("--prompt 'Hello' -n 6 --temp 1.0 --seed 11");
    cJSON *s2 = run_json("--prompt 'Hello' -n 6 --temp 1.0 --seed 11");
    assert_true(cJSON_Compare(cJSON_GetObjectItem(s1, "generated"), cJSON_GetObjectItem(s2, "generated"), 1));
    cJSON_Delete(s1);
    cJSON_Delete(s2);
    cJSON_Delete(j);
}

static void prompt_from_stdin_equals_argument(void **state) {
    (void)state;
    char cmd[1024], *a, *b;
    snprintf(cmd, sizeof cmd, "printf 'Tell me a story' | %s run --model %s/m --prompt - -n 4 --json --threads 1", bin, model_dir);
    assert_int_equal(tu_run(cmd, &a), 0);
    snprintf(cmd, sizeof cmd, "%s run --model %s/m --prompt 'Tell me a story' -n 4 --json --threads 1", bin, model_dir);
    assert_int_equal(tu_run(cmd, &b), 0);
    cJSON *ja = cJSON_Parse(a), *jb = cJSON_Parse(b);
    assert_true(cJSON_Compare(cJSON_GetObjectItem(ja, "generated"), cJSON_GetObjectItem(jb, "generated"), 1));
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    free(a);
    free(b);
}

static void human_output_and_errors(void **state) {
    (void)state;
    char cmd[1024], *out;
    snprintf(cmd, sizeof cmd, "%s run --model %s/m --prompt 'Hi' -n 3 --threads 1", bin, model_dir);
    assert_int_equal(tu_run(cmd, &out), 0);
    assert_non_null(strstr(out, "tok/s"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s run --model %s/m 2>&1", bin, model_dir);
    assert_int_equal(tu_run(cmd, &out), 2);
    assert_non_null(strstr(out, "--prompt"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s run --model /nonexistent --prompt x 2>&1", bin);
    assert_int_equal(tu_run(cmd, &out), 1);
    assert_non_null(strstr(out, "/nonexistent"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s logits --model %s/m --ids 1,2,banana 2>&1", bin, model_dir);
    assert_int_equal(tu_run(cmd, &out), 2);
    assert_non_null(strstr(out, "--ids"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s logits --model %s/m --ids 1,2,999999 2>&1", bin, model_dir);
    assert_int_equal(tu_run(cmd, &out), 1);
    assert_non_null(strstr(out, "vocabulary"));
    free(out);
    const char *cmds[] = {"run", "logits", "synth"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(cmd, sizeof cmd, "%s %s --help", bin, cmds[i]);
        assert_int_equal(tu_run(cmd, &out), 0);
        assert_non_null(strstr(out, "usage"));
        free(out);
    }
}

/* A bad option value is a usage error (exit 2) told in one line that names the
 * option and what was expected; a directory given as --ids-file is named so. */
static void option_value_errors(void **state) {
    (void)state;
    static const struct { const char *args, *expect; } cases[] = {
        {"run --ids 1,2 --kv-budget 1E", "--kv-budget: '1E': unknown unit 'E'"},
        {"run --ids 1,2 --kv-budget 0", "--kv-budget 0: must be more than 0"},
        {"logits --ids 1,2 --kv-budget 1M --kv-page abc", "--kv-page: 'abc' is not a size"},
        {"run --ids 1,2 -n abc", "-n must be an integer 0..2147483647, not 'abc'"},
        {"run --ids 1,2 --threads -2", "--threads must be an integer 1..4096, not '-2'"},
        {"run --ids 1,2 --top-p 2", "--top-p must be a number in (0, 1], not '2'"},
        {"run --ids 1,2 --kv-budget 1M --kv-spill /nonexistent-dir", "--kv-spill /nonexistent-dir: expected a writable directory"},
        {"chat --numerics fast", "--numerics must be official or reference, not 'fast'"},
        {"chat --think maybe", "--think must be off, on or max, not 'maybe'"},
        {"chat --kv-budget 2X", "--kv-budget: '2X': unknown unit 'X'"},
    };
    char cmd[1024], *out;
    for (size_t i = 0; i < ST_ARRAY_LEN(cases); i++) {
        const char *sp = strchr(cases[i].args, ' ');
        snprintf(cmd, sizeof cmd, "%s %.*s --model %s/m%s 2>&1 </dev/null", bin, (int)(sp - cases[i].args), cases[i].args,
                 model_dir, sp);
        int rc = tu_run(cmd, &out);
        if (rc != 2 || !strstr(out, cases[i].expect) || strchr(out, '\n') != out + strlen(out) - 1)
            fail_msg("%s: exit %d (expected 2), output '%s' (expected one line with '%s')", cmd, rc, out, cases[i].expect);
        free(out);
    }
    const char *bench_cases[][2] = {{"longctx --kv-budget 1E", "--kv-budget: '1E': unknown unit 'E'"},
                                    {"longctx --threads x", "--threads must be an integer 1..4096, not 'x'"},
                                    {"batch --decode -1", "--decode must be an integer 1..1048576, not '-1'"}};
    for (size_t i = 0; i < ST_ARRAY_LEN(bench_cases); i++) {
        snprintf(cmd, sizeof cmd, "%s bench %s --model %s/m 2>&1 | head -1; exit $(( $(%s bench %s --model %s/m >/dev/null 2>&1; echo $?) ))",
                 bin, bench_cases[i][0], model_dir, bin, bench_cases[i][0], model_dir);
        int rc = tu_run(cmd, &out);
        if (rc != 2 || !strstr(out, bench_cases[i][1])) fail_msg("bench %s: exit %d, '%s'", bench_cases[i][0], rc, out);
        free(out);
    }
    snprintf(cmd, sizeof cmd, "%s run --model %s/m --ids-file %s 2>&1", bin, model_dir, model_dir);
    assert_int_equal(tu_run(cmd, &out), 1);
    assert_non_null(strstr(out, "is a directory, expected a file of token ids"));
    free(out);
}

static void logits_json_shape(void **state) {
    (void)state;
    char cmd[1024], *out;
    snprintf(cmd, sizeof cmd, "%s logits --model %s/m --ids 5,6,7 --json --threads 1", bin, model_dir);
    assert_int_equal(tu_run(cmd, &out), 0);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    assert_int_equal((int)cJSON_GetObjectItem(j, "n_vocab")->valuedouble, 129280);
    cJSON *pos = cJSON_GetObjectItem(j, "positions");
    assert_int_equal(cJSON_GetArraySize(pos), 3);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetArrayItem(pos, 2)), 129280);
    cJSON_Delete(j);
    free(out);
}

/* chat over a pipe: commands, and the second turn reuses the first turn's KV */
static void chat_session(void **state) {
    (void)state;
    char cmd[1024], *out;
    snprintf(cmd, sizeof cmd,
             "printf 'Hello\\n/stats\\nAnd then?\\n/stats\\n/think max\\n/reset\\n/stats\\n/nope\\n' | "
             "%s chat --model %s/m -n 4 --seed 3 --threads 1", bin, model_dir);
    assert_int_equal(tu_run(cmd, &out), 0);
    long pf1, ctx1, pf2, ctx2;
    char *st1 = strstr(out, "[prefill "), *st2 = st1 ? strstr(st1 + 1, "[prefill ") : NULL;
    assert_non_null(st1);
    assert_non_null(st2);
    assert_int_equal(sscanf(st1, "[prefill %ld tokens %*f tok/s | decode %*d tokens %*f tok/s | context %ld", &pf1, &ctx1), 2);
    assert_int_equal(sscanf(st2, "[prefill %ld tokens %*f tok/s | decode %*d tokens %*f tok/s | context %ld", &pf2, &ctx2), 2);
    assert_true(ctx2 > ctx1);
    assert_true(pf2 < ctx2 - pf1 + 1); /* only the new turn was computed, not the whole context */
    assert_non_null(strstr(out, "[thinking max]"));
    assert_non_null(strstr(out, "[conversation cleared]"));
    assert_non_null(strstr(out, "context 0 tokens"));
    assert_non_null(strstr(out, "unknown command /nope"));
    free(out);
}

/* chat takes the tier options of run: streaming experts through a small cache, with
 * prefetch off and another policy, answers exactly as everything resident; bad values
 * are usage errors */
static void chat_tier_options(void **state) {
    (void)state;
    char cmd[1024], *resident, *streamed, *out;
    const char *base = "printf 'Hello\\nAnd then?\\n' | %s chat --model %s/m -n 6 --temp 0 --threads 1 %s";
    snprintf(cmd, sizeof cmd, base, bin, model_dir, "");
    assert_int_equal(tu_run(cmd, &resident), 0);
    snprintf(cmd, sizeof cmd, base, bin, model_dir, "--expert-cache 40K --prefetch off --cache-policy lfu --io-depth 4");
    assert_int_equal(tu_run(cmd, &streamed), 0);
    assert_true(strlen(resident) > 0);
    assert_string_equal(resident, streamed);
    free(resident);
    free(streamed);
    /* /stats shows the stream's numbers (so the run above did stream) */
    snprintf(cmd, sizeof cmd, "printf 'Hello\\n/stats\\n' | %s chat --model %s/m -n 2 --threads 1 --expert-cache 40K",
             bin, model_dir);
    assert_int_equal(tu_run(cmd, &out), 0);
    if (!strstr(out, "[tiers since the start: experts: DRAM ")) fail_msg("no stream numbers in /stats: %s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s chat --model %s/m --cache-policy belady </dev/null 2>&1", bin, model_dir);
    assert_int_equal(tu_run(cmd, &out), 2);
    assert_non_null(strstr(out, "--cache-policy must be lru, lfu or lfru"));
    free(out);
}

/* Without --dram-budget, a model larger than 90% of the memory available streams its
 * routed experts through that budget (same tokens), unless --dram-budget unlimited
 * asks for the mapping; one whose DRAM-resident part alone does not fit is refused
 * with a message saying so. STRATA_MEM_LIMIT pretends
 * the machine's memory is that small. */
static void model_larger_than_memory_streams(void **state) {
    (void)state;
    char path[160];
    snprintf(path, sizeof path, "%s/m", model_dir);
    st_model *m = tu_load(path, NULL, 1);
    const uint64_t routed = st_model_routed_bytes(m);
    st_model_free(m);
    snprintf(path, sizeof path, "%s/m/model.safetensors", model_dir);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    const uint64_t total = (uint64_t)st.st_size; /* every weight, and a small header */
    assert_true(routed > 0 && routed < total);

    cJSON *all = run_json("--ids 5,6,7,8 -n 6");
    assert_null(cJSON_GetObjectItem(all, "experts")); /* everything resident */
    /* 90% of the limit holds everything but about half of the routed experts */
    char limit[32];
    snprintf(limit, sizeof limit, "%llu", (unsigned long long)((total - routed / 2) / 9 * 10));
    setenv("STRATA_MEM_LIMIT", limit, 1);
    cJSON *streamed = run_json("--ids 5,6,7,8 -n 6");
    cJSON *mapped = run_json("--ids 5,6,7,8 -n 6 --dram-budget unlimited"); /* no streaming when asked */
    unsetenv("STRATA_MEM_LIMIT");
    assert_null(cJSON_GetObjectItem(mapped, "experts"));
    char *c = cJSON_PrintUnformatted(cJSON_GetObjectItem(mapped, "generated"));
    char *d = cJSON_PrintUnformatted(cJSON_GetObjectItem(all, "generated"));
    assert_string_equal(c, d);
    free(c); free(d);
    cJSON_Delete(mapped);
    cJSON *ex = cJSON_GetObjectItem(streamed, "experts");
    assert_non_null(ex);
    assert_true(cJSON_GetObjectItem(ex, "cache_bytes")->valuedouble < (double)routed);
    assert_true(cJSON_GetObjectItem(ex, "bytes_read")->valuedouble > 0);
    char *a = cJSON_PrintUnformatted(cJSON_GetObjectItem(all, "generated"));
    char *b = cJSON_PrintUnformatted(cJSON_GetObjectItem(streamed, "generated"));
    assert_string_equal(a, b);
    free(a); free(b);
    cJSON_Delete(all);
    cJSON_Delete(streamed);

    /* the DRAM-resident weights alone do not fit: a clear refusal, nothing run */
    char cmd[512], *out;
    snprintf(cmd, sizeof cmd, "STRATA_MEM_LIMIT=%llu %s run --model %s/m --ids 5,6 -n 2 --threads 1 2>&1",
             (unsigned long long)((total - routed) / 2), bin, model_dir);
    assert_int_not_equal(tu_run(cmd, &out), 0);
    if (!strstr(out, "do not fit in 90% of the memory available")) fail_msg("unexpected: %s", out);
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(text_prompt_generates_text),
        cmocka_unit_test(prompt_from_stdin_equals_argument),
        cmocka_unit_test(human_output_and_errors),
        cmocka_unit_test(option_value_errors),
        cmocka_unit_test(logits_json_shape),
        cmocka_unit_test(chat_session),
        cmocka_unit_test(chat_tier_options),
        cmocka_unit_test(model_larger_than_memory_streams),
    };
    return cmocka_run_group_tests_name("cli_run", tests, setup, teardown);
}
