/* libFuzzer harness: a safetensors file of arbitrary bytes through st_sft_open
 * and every tensor's st_sft_data / st_sft_pread (the reader must refuse what
 * does not fit the file, never read past it). make fuzz; then
 *   build/fuzz/fz_safetensors -max_total_time=60 DIR_OF_SEED_FILES */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "base/base.h"
#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/strata-fuzz-%d.safetensors", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, n, f);
    fclose(f);
    st_sft *s;
    if (st_sft_open(path, &s) == 0) {
        for (int i = 0; i < st_sft_count(s); i++) {
            const st_sft_tensor *t = st_sft_at(s, i);
            const void *p;
            uint8_t buf[64];
            (void)st_sft_data(s, t, &p);
            (void)st_sft_pread(s, t, 0, buf, sizeof buf);
        }
        (void)st_sft_metadata(s, "format");
        st_sft_close(s);
    }
    st_error_clear();
    return 0;
}
