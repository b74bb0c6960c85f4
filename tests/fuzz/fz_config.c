/* libFuzzer harness: st_config_parse over arbitrary bytes (any outcome but a
 * crash or a sanitizer report is fine). make fuzz; then
 *   build/fuzz/fz_config -max_total_time=60 CORPUS   (a scratch copy: libFuzzer adds its finds to it,
 *   e.g. cp -r tests/data/config /tmp/corpus) */
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"
#include "engine/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    st_config c;
    if (st_config_parse((const char *)data, n, "fuzz.json", &c) == 0) st_config_free(&c);
    st_error_clear();
    return 0;
}
