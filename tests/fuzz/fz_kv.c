/* libFuzzer harness: a saved KV file (--kv-save) of arbitrary bytes, loaded by
 * st_kv_load_prefix into a sequence of the checkpoint at $STRATA_FUZZ_MODEL
 * (the tiny preset): a corrupt or foreign file must be ignored, never trusted.
 * The corpus holds the file `strata run --model M --ids 1,2,...,20 -n 1
 * --kv-save DIR` wrote; its name (the prefix's hash and length, which the
 * loader checks) goes in $STRATA_FUZZ_KV_NAME. make fuzz; then
 *   STRATA_FUZZ_MODEL=/tmp/tiny STRATA_FUZZ_KV_NAME=<name>.kv build/fuzz/fz_kv -max_total_time=60 DIR */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/kv_store.h"
#include "engine/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    static st_model *m;
    static st_seq *s;
    static char dir[128], name[256];
    static uint64_t id;
    if (!m) {
        const char *model = getenv("STRATA_FUZZ_MODEL"), *file = getenv("STRATA_FUZZ_KV_NAME");
        st_model_opts o = {.threads = 1, .quiet = true};
        if (!model || !file || st_model_load(model, &o, &m) || st_seq_new(m, &s)) {
            fprintf(stderr, "fz_kv: set STRATA_FUZZ_MODEL (a small checkpoint) and STRATA_FUZZ_KV_NAME (%s)\n",
                    st_last_error());
            abort();
        }
        id = st_kv_model_id(model, o.numerics);
        snprintf(dir, sizeof dir, "/tmp/strata-fuzz-kv-%d", (int)getpid());
        char cmd[256];
        snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", dir, dir);
        if (system(cmd)) abort();
        snprintf(name, sizeof name, "%s/%s", dir, file);
        st_log_set_level(ST_LOG_ERROR);
    }
    FILE *f = fopen(name, "wb");
    if (!f) return 0;
    fwrite(data, 1, n, f);
    fclose(f);
    int32_t ids[24];
    for (int i = 0; i < 24; i++) ids[i] = i + 1;
    float *logits = malloc((size_t)m->vocab * sizeof(float));
    int64_t loaded = 0;
    if (logits) (void)st_kv_load_prefix(s, ids, 24, id, dir, logits, &loaded);
    free(logits);
    st_error_clear();
    return 0;
}
