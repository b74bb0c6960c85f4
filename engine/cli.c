/* Small helpers shared by the commands. */
#include "engine/cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"

bool cli_wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--")) break;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return true;
    }
    return false;
}

int cli_fail(const char *cmd, int status) {
    const char *msg = st_last_error();
    fprintf(stderr, "strata %s: %s\n", cmd, *msg ? msg : st_status_str(status));
    return 1;
}

bool cli_int(const char *cmd, const char *opt, const char *v, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "strata %s: %s must be an integer %lld..%lld, not '%s'\n", cmd, opt, lo, hi, v);
        return false;
    }
    *out = x;
    return true;
}

bool cli_spill_dir(const char *cmd, const char *dir) {
    struct stat st;
    const char *why = stat(dir, &st) ? strerror(errno) : !S_ISDIR(st.st_mode) ? "not a directory"
                                                      : access(dir, W_OK | X_OK) ? strerror(errno) : NULL;
    if (why) fprintf(stderr, "strata %s: --kv-spill %s: expected a writable directory: %s\n", cmd, dir, why);
    return !why;
}
