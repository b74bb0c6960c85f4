/* `strata batch`: error records with line numbers, resuming after kill -9
 * with every id exactly once and the same text as an uninterrupted run (with
 * several requests in flight), and a torn last line cut off; the same texts
 * for --max-batch 1 and 24 (reference numerics) and 1, 4 and 6 (official, with
 * KV tiering and with streamed experts). Runs $STRATA_BIN on a tiny model with the real tokenizer. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/synth.h"
#include "util.h"

static char dir[64];
static const char *bin;

static int setup(void **state) {
    (void)state;
    bin = tu_strata_bin();
    if (tu_tmpdir(dir, sizeof dir, "/tmp/strata-batch-XXXXXX")) return -1;
    st_synth_preset p = *st_synth_find("tiny");
    p.vocab = 129280;
    p.with_tokenizer = true;
    char m[128];
    snprintf(m, sizeof m, "%s/m", dir);
    return tu_synth(&p, m, 9, "tests/data/tokenizer");
}

static int teardown(void **state) {
    (void)state;
    return tu_rmtree(dir);
}

static void write_input(const char *path, int n) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < n; i++) {
        if (i == 5) fprintf(f, "{\"id\": 5, \"prompt\": [1, 2]}\n"); /* malformed request */
        else if (i == 9) fprintf(f, "this is not json\n");
        else fprintf(f, "{\"id\": \"r%d\", \"prompt\": \"question number %d\", \"max_tokens\": %d, \"temperature\": 0.8, \"seed\": %d}\n", i, i, 3 + i % 5, i);
    }
    fclose(f);
}

/* key -> text map of an output file; asserts each key appears once */
static cJSON *read_results(const char *path) {
    char *buf;
    size_t len;
    if (st_read_file(path, 1 << 26, &buf, &len)) fail_msg("%s", st_last_error()); /* names the file and errno */
    cJSON *map = cJSON_CreateObject();
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        const char *key = cJSON_GetObjectItem(j, "key")->valuestring;
        assert_null(cJSON_GetObjectItem(map, key));
        cJSON *t = cJSON_GetObjectItem(j, "text");
        cJSON *e = cJSON_GetObjectItem(j, "error");
        cJSON_AddStringToObject(map, key, t ? t->valuestring : e->valuestring);
        cJSON_Delete(j);
    }
    free(buf);
    return map;
}

static void run_batch_with(const char *in, const char *out, const char *extra) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s batch --model %s/m --in %s --out %s --threads 1 --quiet %s", bin, dir, in, out, extra);
    assert_int_equal(system(cmd), 0);
}

/* Usage errors exit 2 with one line naming the option: a directory as --in or
 * --out, -n below 0 (0 is allowed, as a line's max_tokens and run's -n are), --max-batch 0, a size with an unknown unit, a missing
 * --kv-spill directory; nothing is written. */
static void usage_errors(void **state) {
    (void)state;
    static const struct { const char *args, *expect; } cases[] = {
        {"--in %s --out %s/u.jsonl", "--in %s: is a directory, expected a JSONL file"},
        {"--in %s/in1.jsonl --out %s", "--out %s: is a directory, expected a JSONL file"},
        {"--in %s/in1.jsonl --out %s/u.jsonl -n -1", "-n must be an integer 0..2147483647, not '-1'"},
        {"--in %s/in1.jsonl --out %s/u.jsonl --max-batch 0", "--max-batch must be 1..4096, not '0'"},
        {"--in %s/in1.jsonl --out %s/u.jsonl --kv-budget 1E", "--kv-budget: '1E': unknown unit 'E'"},
        {"--in %s/in1.jsonl --out %s/u.jsonl --kv-budget 1M --kv-spill /nonexistent-dir",
         "--kv-spill /nonexistent-dir: expected a writable directory"},
    };
    for (size_t i = 0; i < ST_ARRAY_LEN(cases); i++) {
        char args[512], expect[512], cmd[1024], u[160], *out;
        snprintf(args, sizeof args, cases[i].args, dir, dir);
        snprintf(expect, sizeof expect, cases[i].expect, dir);
        snprintf(cmd, sizeof cmd, "%s batch --model %s/m --quiet %s 2>&1", bin, dir, args);
        int rc = tu_run(cmd, &out);
        if (rc != 2 || !strstr(out, expect) || strchr(out, '\n') != out + strlen(out) - 1)
            fail_msg("%s: exit %d (expected 2), output '%s' (expected one line with '%s')", cmd, rc, out, expect);
        free(out);
        snprintf(u, sizeof u, "%s/u.jsonl", dir);
        assert_int_equal(access(u, F_OK), -1);
    }
    /* -n 0: a line without max_tokens finishes at once, with no text */
    char in0[160], out0[160], *buf;
    size_t len;
    snprintf(in0, sizeof in0, "%s/n0.jsonl", dir);
    snprintf(out0, sizeof out0, "%s/n0_out.jsonl", dir);
    FILE *f = fopen(in0, "w");
    assert_non_null(f);
    fprintf(f, "{\"id\": \"z\", \"prompt\": \"hello\"}\n");
    fclose(f);
    run_batch_with(in0, out0, "-n 0");
    if (st_read_file(out0, 1 << 20, &buf, &len)) fail_msg("%s", st_last_error());
    assert_non_null(strstr(buf, "\"text\":\"\""));
    assert_non_null(strstr(buf, "\"completion_tokens\":0"));
    free(buf);
    unlink(in0);
    unlink(out0);
}

/* A model that does not load: exit 1 naming it, and no empty results file left behind
 * (an existing one, holding finished results, is kept). */
static void failed_start_leaves_no_file(void **state) {
    (void)state;
    char in[160], u[160], cmd[1024], *out;
    snprintf(in, sizeof in, "%s/in_fail.jsonl", dir);
    snprintf(u, sizeof u, "%s/fail.jsonl", dir);
    write_input(in, 2);
    snprintf(cmd, sizeof cmd, "%s batch --model %s/no-such-model --quiet --in %s --out %s 2>&1", bin, dir, in, u);
    int rc = tu_run(cmd, &out);
    if (rc != 1 || !strstr(out, "no-such-model")) fail_msg("%s: exit %d (expected 1), output '%s'", cmd, rc, out);
    free(out);
    assert_int_equal(access(u, F_OK), -1);
    FILE *f = fopen(u, "w");
    assert_non_null(f);
    fputs("{\"id\":\"kept\"}\n", f);
    fclose(f);
    rc = tu_run(cmd, &out);
    free(out);
    assert_int_equal(rc, 1);
    assert_int_equal(access(u, F_OK), 0);
    unlink(u);
}

static void run_batch(const char *in, const char *out) { run_batch_with(in, out, "--max-batch 4"); }

static void errors_are_records(void **state) {
    (void)state;
    char in[128], out[128];
    snprintf(in, sizeof in, "%s/in1.jsonl", dir);
    snprintf(out, sizeof out, "%s/out1.jsonl", dir);
    write_input(in, 12);
    run_batch(in, out);
    cJSON *r = read_results(out);
    assert_int_equal(cJSON_GetArraySize(r), 12);
    assert_non_null(strstr(cJSON_GetObjectItem(r, "5")->valuestring, "prompt"));
    assert_non_null(strstr(cJSON_GetObjectItem(r, "line:10")->valuestring, "JSON"));
    cJSON_Delete(r);
    /* a second run does nothing */
    struct stat a, b;
    stat(out, &a);
    run_batch(in, out);
    stat(out, &b);
    assert_int_equal(a.st_size, b.st_size);
}

static void resume_after_kill9(void **state) {
    (void)state;
    char in[128], ref[128], out[128];
    snprintf(in, sizeof in, "%s/in2.jsonl", dir);
    snprintf(ref, sizeof ref, "%s/ref.jsonl", dir);
    snprintf(out, sizeof out, "%s/out2.jsonl", dir);
    write_input(in, 24);
    run_batch(in, ref);
    /* kill the second run once it has written a few results */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char m[128];
        snprintf(m, sizeof m, "%s/m", dir);
        execl(bin, bin, "batch", "--model", m, "--in", in, "--out", out, "--threads", "1", "--quiet", "--max-batch", "3",
              (char *)NULL);
        _exit(127);
    }
    struct stat st;
    int waited = 0;
    while ((stat(out, &st) || st.st_size < 400) && waited < 3000) { usleep(2000); waited++; }
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFSIGNALED(status)); /* it was killed mid-run, not finished */
    /* simulate a torn write at the moment of the kill */
    FILE *f = fopen(out, "a");
    fputs("{\"id\":\"r23\",\"key\":\"\\\"r3", f);
    fclose(f);
    run_batch(in, out);
    cJSON *a = read_results(ref), *b = read_results(out);
    assert_int_equal(cJSON_GetArraySize(a), 24);
    assert_true(cJSON_Compare(a, b, 1)); /* same keys, same texts, each once */
    cJSON_Delete(a);
    cJSON_Delete(b);
}

/* The text of every request is the same whatever the batch size: batched
 * logits equal one-at-a-time ones bit for bit and each request samples alone. */
static void same_text_any_batch(void **state) {
    (void)state;
    char in[128], out[128];
    snprintf(in, sizeof in, "%s/in3.jsonl", dir);
    write_input(in, 14);
    static const char *variants[] = {
        "--max-batch 1 --numerics reference", "--max-batch 24 --numerics reference", "--max-batch 1",
        "--max-batch 4 --kv-budget 192K --kv-spill /var/tmp", "--max-batch 6 --expert-cache 40K",
        "--max-batch 3 --kv-budget 12K --kv-page 4K --kv-spill /var/tmp --kv-dram 4K --numa auto",
    };
    cJSON *want[2] = {NULL, NULL}; /* reference, official */
    /* under ASan (each run is several times slower) only the official ones */
    for (size_t v = getenv("STRATA_ASAN") ? 2 : 0; v < ST_ARRAY_LEN(variants); v++) {
        snprintf(out, sizeof out, "%s/out3-%zu.jsonl", dir, v);
        run_batch_with(in, out, variants[v]);
        cJSON *got = read_results(out);
        assert_int_equal(cJSON_GetArraySize(got), 14);
        int k = strstr(variants[v], "reference") ? 0 : 1;
        if (!want[k]) want[k] = got;
        else {
            if (!cJSON_Compare(want[k], got, 1)) fail_msg("%s: texts differ from %s", variants[v], variants[k ? 2 : 0]);
            cJSON_Delete(got);
        }
    }
    cJSON_Delete(want[0]); /* NULL under ASan */
    cJSON_Delete(want[1]);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(errors_are_records), cmocka_unit_test(usage_errors), cmocka_unit_test(failed_start_leaves_no_file),
                                       cmocka_unit_test(resume_after_kill9),
                                       cmocka_unit_test(same_text_any_batch)};
    return cmocka_run_group_tests_name("batch", tests, setup, teardown);
}
