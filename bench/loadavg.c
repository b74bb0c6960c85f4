/* The machine's 1-minute load average, printed by the benches before and after
 * their runs so a noisy measurement can be told from a slow one. */
#include <stdio.h>

#include "bench/bench.h"

double bench_load_average(void) {
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1) l = -1;
        fclose(f);
    }
    return l;
}
