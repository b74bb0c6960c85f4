/* libFuzzer harness: a pack manifest of arbitrary bytes beside a real pack's
 * config.json and data files ($STRATA_FUZZ_PACK: a pack made by strata
 * convert, e.g. of the tiny preset), through st_pack_open. make fuzz; then
 *   STRATA_FUZZ_PACK=/tmp/tinypack build/fuzz/fz_pack -max_total_time=60 CORPUS
 * with CORPUS holding a copy of that pack's pack.manifest. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "base/base.h"
#include "io/pack.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    static char dir[128];
    if (!dir[0]) {
        const char *src = getenv("STRATA_FUZZ_PACK");
        char cmd[1024];
        snprintf(dir, sizeof dir, "/tmp/strata-fuzz-pack-%d", (int)getpid());
        snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s && cp %s/config.json %s/data-*.bin %s/", dir, dir,
                 src ? src : ".", src ? src : ".", dir);
        if (!src || system(cmd)) {
            fprintf(stderr, "fz_pack: set STRATA_FUZZ_PACK to a pack directory\n");
            abort();
        }
    }
    char path[256];
    snprintf(path, sizeof path, "%s/pack.manifest", dir);
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, n, f);
    fclose(f);
    st_pack *p;
    if (st_pack_open(dir, &p) == 0) st_pack_close(p);
    st_error_clear();
    return 0;
}
