/* `strata synth`: write a random-weight V4 checkpoint (see synth.h). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "engine/cli.h"
#include "engine/config.h"
#include "engine/synth.h"

int cmd_synth(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        printf("usage: strata synth (--preset NAME | --config FILE) --out DIR [--seed N] [--tokenizer DIR] [--quiet]\n\n"
               "Writes a random-weight DeepSeek-V4 checkpoint in the official layout: config.json,\n"
               "safetensors shards (FP8 e4m3 + ue8m0 128x128 block scales, FP4 e2m1 experts with\n"
               "ue8m0 1x32 scales, BF16/F32 elsewhere, I64 tid2eid). Deterministic for a seed.\n"
               "--config takes any DeepSeek-V4 config.json (or a directory holding one) instead of a\n"
               "preset: its sizes and the presets' weight scales, in the format above whatever dtype\n"
               "it declares (official, ModelArgs and transformers key schemes).\n\n"
               "presets:\n");
        st_synth_list(stdout);
        printf("\n  --tokenizer DIR   where tokenizer.json lives (default: tests/data/tokenizer beside the\n"
               "                    binary's source tree, or $STRATA_TOKENIZER)\n");
        return 0;
    }
    const char *preset = NULL, *config = NULL, *out = NULL, *tok = getenv("STRATA_TOKENIZER");
    uint64_t seed = 0;
    bool quiet = false, tok_given = false;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--quiet")) { quiet = true; continue; }
        if (!v) { fprintf(stderr, "strata synth: unknown option or missing value: '%s'\n", o); return 2; }
        if (!strcmp(o, "--preset")) preset = v;
        else if (!strcmp(o, "--config")) config = v;
        else if (!strcmp(o, "--out")) out = v;
        else if (!strcmp(o, "--seed")) {
            char *end;
            errno = 0;
            seed = strtoull(v, &end, 10);
            if (!*v || *end || errno || v[0] == '-') {
                fprintf(stderr, "strata synth: --seed must be an integer 0..%llu, not '%s'\n", (unsigned long long)UINT64_MAX, v);
                return 2;
            }
        }
        else if (!strcmp(o, "--tokenizer")) { tok = v; tok_given = true; }
        else { fprintf(stderr, "strata synth: unknown option '%s' (strata synth --help)\n", o); return 2; }
        i++;
    }
    if (!!preset == !!config || !out) {
        fprintf(stderr, "strata synth: one of --preset NAME or --config FILE, and --out DIR, are required\n");
        return 2;
    }
    st_synth_preset from_cfg;
    const st_synth_preset *p = preset ? st_synth_find(preset) : &from_cfg;
    if (!p) {
        fprintf(stderr, "strata synth: no preset '%s'; presets:\n", preset);
        st_synth_list(stderr);
        return 2;
    }
    if (config) {
        st_config cfg;
        int rc = st_config_load(config, &cfg);
        if (!rc) rc = st_synth_from_config(&cfg, config, &from_cfg);
        st_config_free(&cfg);
        if (rc) return cli_fail("synth", rc);
        /* the V4 tokenizer goes along when the vocabulary is its size, or when asked for */
        from_cfg.with_tokenizer = from_cfg.vocab == 129280 || tok_given;
        preset = config;
    }
    if (!tok) tok = "tests/data/tokenizer";
    int rc = st_synth_write(p, out, seed, p->with_tokenizer ? tok : NULL, quiet);
    if (rc) return cli_fail("synth", rc);
    if (!quiet) fprintf(stderr, "strata synth: wrote %s (seed %llu) to %s\n", preset, (unsigned long long)seed, out);
    return 0;
}
