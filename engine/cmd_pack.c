/* `strata convert` (checkpoint -> pack) and `strata inspect` (what a pack
 * holds, bytes per tensor class, --verify every checksum). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "engine/cli.h"
#include "engine/config.h"
#include "engine/pack_convert.h"
#include "io/pack.h"

int cmd_convert(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        printf("usage: strata convert --model IN --out PACK [--split N | --stripe DIR1[,DIR2...]] [--force] [--quiet]\n\n"
               "Writes a pack: a directory with config.json, the tokenizer files, data files whose\n"
               "extents are 4096-aligned (each routed expert's w1/w3/w2 weights and scales in one\n"
               "extent, so one O_DIRECT read brings one expert; the other tensors grouped by layer)\n"
               "and a checksummed manifest (names, dtypes, shapes, offsets, XXH3 per tensor and\n"
               "per extent). IN is a checkpoint directory (official or transformers layout) or a\n"
               "pack. Every command that takes --model accepts the pack.\n\n"
               "  --model IN   source checkpoint directory\n"
               "  --out PACK   pack directory to create (written as PACK.tmp.PID, renamed when complete)\n"
               "  --split N    spread the routed experts over N data files in PACK (round-robin)\n"
               "  --stripe DIR1[,DIR2...]\n"
               "               stripe over devices: data-0.bin (non-expert tensors and a share of the experts)\n"
               "               stays in PACK, DIRk/<PACK name>.<id>.data-k.bin holds another share; routed experts\n"
               "               go round-robin over all files, so one step's expert reads hit every device.\n"
               "               The manifest records each file's absolute path (keep them in place).\n"
               "  --force      replace an existing PACK\n"
               "  --quiet      no progress bar and no summary\n");
        return 0;
    }
    const char *in = NULL, *out = NULL;
    st_convert_opts o = {0};
    char *stripe_list = NULL;
    const char *stripes[255];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--force")) { o.force = true; continue; }
        if (!strcmp(a, "--quiet")) { o.quiet = true; continue; }
        if (!v) { fprintf(stderr, "strata convert: unknown option or missing value: '%s' (strata convert --help)\n", a); return 2; }
        if (!strcmp(a, "--model")) in = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--stripe")) {
            free(stripe_list);
            stripe_list = strdup(v);
            o.n_stripe_dirs = 0;
            char *save = NULL;
            for (char *d = strtok_r(stripe_list, ",", &save); d; d = strtok_r(NULL, ",", &save)) {
                if (o.n_stripe_dirs == (int)ST_ARRAY_LEN(stripes)) {
                    fprintf(stderr, "strata convert: --stripe: at most %d directories\n", (int)ST_ARRAY_LEN(stripes));
                    free(stripe_list);
                    return 2;
                }
                stripes[o.n_stripe_dirs++] = d;
            }
            if (!o.n_stripe_dirs) { fprintf(stderr, "strata convert: --stripe: expected DIR1[,DIR2...], found '%s'\n", v); free(stripe_list); return 2; }
            o.stripe_dirs = stripes;
        } else if (!strcmp(a, "--split")) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n < 1 || n > 256) { fprintf(stderr, "strata convert: --split: expected 1..256, found '%s'\n", v); return 2; }
            o.split = (int)n;
        } else { fprintf(stderr, "strata convert: unknown option '%s' (strata convert --help)\n", a); return 2; }
        i++;
    }
    if (!in || !out) { fprintf(stderr, "strata convert: --model IN and --out PACK are required\n"); free(stripe_list); return 2; }
    if (o.split > 1 && o.n_stripe_dirs) {
        fprintf(stderr, "strata convert: --split and --stripe: give one or the other\n");
        free(stripe_list);
        return 2;
    }
    const char *fault = getenv("STRATA_PACK_FAULT");
    if (fault && *fault && st_convert_parse_fault(fault, &o)) { free(stripe_list); return cli_fail("convert", ST_ERR_INVALID); }
    st_convert_stats s;
    int rc = st_pack_convert(in, out, &o, &s);
    free(stripe_list);
    if (rc) return cli_fail("convert", rc);
    if (!o.quiet) {
        char a[32], b[32];
        fprintf(stderr, "strata convert: %s: %d tensors in %d extents (%d experts), %s of tensors, %s of data, %.2f s (%.0f MB/s)\n",
                out, s.tensors, s.extents, s.experts, st_fmt_size(s.tensor_bytes, a, sizeof a),
                st_fmt_size(s.data_bytes, b, sizeof b), s.seconds, s.seconds > 0 ? s.tensor_bytes / s.seconds / 1e6 : 0.0);
        if (s.skipped) fprintf(stderr, "strata convert: %d source tensors had no official name and were left out\n", s.skipped);
    }
    return 0;
}

/* ---- inspect ---- */

enum { C_EMBED, C_ATTN, C_COMP, C_ROUTER, C_EXPERT, C_SHARED, C_NORM, C_MTP, C_COUNT };
static const char *const CLASS_NAMES[C_COUNT] = {"embed + head",   "attention",      "compressor + indexer",
                                                 "router",         "routed experts", "shared experts",
                                                 "norms + hc",     "mtp blocks"};

static int tensor_class(const char *n) {
    if (!strncmp(n, "mtp.", 4)) return C_MTP;
    if (!strcmp(n, "embed.weight") || !strcmp(n, "head.weight")) return C_EMBED;
    if (strstr(n, ".ffn.experts.")) return C_EXPERT;
    if (strstr(n, ".ffn.shared_experts.")) return C_SHARED;
    if (strstr(n, ".ffn.gate.")) return C_ROUTER;
    if (strstr(n, ".attn.compressor.") || strstr(n, ".attn.indexer.")) return C_COMP;
    if (strstr(n, ".attn.") && !strstr(n, "_norm.")) return C_ATTN;
    return C_NORM;
}

static void shape_str(const st_pack_tensor *t, char *buf, size_t len) {
    int k = snprintf(buf, len, "[");
    for (int d = 0; d < t->ndim && k < (int)len - 24; d++) k += snprintf(buf + k, len - (size_t)k, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    snprintf(buf + k, len - (size_t)k, "]");
}

int cmd_inspect(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        printf("usage: strata inspect PACK [--verify] [--tensors] [--quiet]\n\n"
               "What a pack holds: format version, data files, extents (groups and experts), bytes\n"
               "per tensor class, and the config.\n\n"
               "  --verify    read every extent and check every tensor's and extent's XXH3 checksum;\n"
               "              exit 1 naming each tensor that does not match\n"
               "  --tensors   list every tensor: name, dtype, shape, file, offset, bytes, checksum\n"
               "  --quiet     no progress bar\n");
        return 0;
    }
    const char *path = NULL;
    bool verify = false, tensors = false, quiet = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--verify")) verify = true;
        else if (!strcmp(argv[i], "--tensors")) tensors = true;
        else if (!strcmp(argv[i], "--quiet")) quiet = true;
        else if (argv[i][0] == '-' || path) { fprintf(stderr, "strata inspect: unexpected argument '%s' (strata inspect --help)\n", argv[i]); return 2; }
        else path = argv[i];
    }
    if (!path) { fprintf(stderr, "strata inspect: which pack? (strata inspect PACK)\n"); return 2; }
    st_pack *p;
    int rc = st_pack_open(path, &p);
    if (rc) return cli_fail("inspect", rc);
    const st_pack_header *h = st_pack_get_header(p);
    char a[32], b[32];
    printf("pack %s: format %u, %d data file%s, %s of data, %u-byte extents", path, h->version, st_pack_file_count(p),
           st_pack_file_count(p) == 1 ? "" : "s", st_fmt_size(h->data_bytes, a, sizeof a), h->alignment);
    if (h->pack_id) printf(", id %016llx", (unsigned long long)h->pack_id);
    printf("\n");
    st_config cfg;
    if (!st_config_load(path, &cfg)) {
        char d[512];
        printf("config: %s\n", st_config_describe(&cfg, d, sizeof d));
        st_config_free(&cfg);
    } else {
        printf("config: %s\n", st_last_error());
    }
    for (int f = 0; f < st_pack_file_count(p); f++) {
        int fe = 0, fg = 0;
        for (int i = 0; i < st_pack_extent_count(p); i++) {
            const st_pack_extent *e = st_pack_extent_at(p, i);
            if (e->file == f && e->kind == ST_PACK_EXPERT) fe++;
            else if (e->file == f) fg++;
        }
        const char *fp = st_pack_file_path(p, f);
        printf("  file %d: %s (%s; %d groups, %d experts)%s\n", f, fp, st_fmt_size(st_pack_file_size(p, f), a, sizeof a), fg,
               fe, strncmp(fp, st_pack_dir(p), strlen(st_pack_dir(p))) || fp[strlen(st_pack_dir(p))] != '/' ? " [stripe]" : "");
    }
    int groups = 0, experts = 0;
    uint64_t emin = UINT64_MAX, emax = 0, pad = 0;
    for (int i = 0; i < st_pack_extent_count(p); i++) {
        const st_pack_extent *e = st_pack_extent_at(p, i);
        if (e->kind == ST_PACK_EXPERT) {
            experts++;
            emin = ST_MIN(emin, e->length);
            emax = ST_MAX(emax, e->length);
        } else groups++;
        uint64_t used = 0;
        for (int k = e->first_tensor; k < e->first_tensor + e->n_tensors; k++) used += st_pack_tensor_at(p, k)->nbytes;
        pad += e->length - used;
    }
    printf("extents: %d groups, %d routed experts", groups, experts);
    if (experts) printf(" (one read each: %s%s%s)", st_fmt_size(emin, a, sizeof a), emin == emax ? "" : " .. ",
                        emin == emax ? "" : st_fmt_size(emax, b, sizeof b));
    printf(", padding %s\n", st_fmt_size(pad, a, sizeof a));
    uint64_t cb[C_COUNT] = {0}, total = 0;
    int cn[C_COUNT] = {0};
    for (int i = 0; i < st_pack_tensor_count(p); i++) {
        const st_pack_tensor *t = st_pack_tensor_at(p, i);
        int c = tensor_class(t->name);
        cb[c] += t->nbytes;
        cn[c]++;
        total += t->nbytes;
    }
    printf("%-22s %8s %12s %7s\n", "class", "tensors", "bytes", "share");
    for (int c = 0; c < C_COUNT; c++)
        if (cn[c]) printf("%-22s %8d %12s %6.1f%%\n", CLASS_NAMES[c], cn[c], st_fmt_size(cb[c], a, sizeof a), total ? 100.0 * cb[c] / total : 0);
    printf("%-22s %8d %12s\n", "total", st_pack_tensor_count(p), st_fmt_size(total, a, sizeof a));
    if (tensors) {
        printf("\n%-52s %-8s %-18s %4s %12s %10s %16s\n", "tensor", "dtype", "shape", "file", "offset", "bytes", "xxh3");
        for (int i = 0; i < st_pack_tensor_count(p); i++) {
            const st_pack_tensor *t = st_pack_tensor_at(p, i);
            char sh[96];
            shape_str(t, sh, sizeof sh);
            printf("%-52s %-8s %-18s %4d %12llu %10llu %016llx\n", t->name, st_sft_dtype_name(t->dtype), sh, t->file,
                   (unsigned long long)t->offset, (unsigned long long)t->nbytes, (unsigned long long)t->xxh3);
        }
    }
    fflush(stdout);
    if (verify) {
        rc = st_pack_verify(p, NULL, !quiet);
        if (rc) {
            st_pack_close(p);
            return cli_fail("inspect", rc);
        }
        printf("verify: %d tensors and %d extents in %d data file%s match their checksums\n", st_pack_tensor_count(p),
               st_pack_extent_count(p), st_pack_file_count(p), st_pack_file_count(p) == 1 ? "" : "s");
    }
    st_pack_close(p);
    return 0;
}
