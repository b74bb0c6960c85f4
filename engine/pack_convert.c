/* pack_convert: plans a pack from a checkpoint (which canonical tensors, in
 * which extent, in which order) and streams the bytes through the pack writer.
 *
 * DESIGN: memory is the plan (names and views) plus one copy buffer; tensor
 * data flows source -> buffer -> pack with pread, never mapped wholesale.
 * Never writes under the output's final name before everything is on disk
 * (the pack writer's temporary directory + rename). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/config.h"
#include "engine/pack_convert.h"
#include "engine/tensor_names.h"
#include "io/pack.h"
#include "io/safetensors.h"

#define COPY_CHUNK (8u << 20)

typedef struct plan_item {
    char *name;        /* canonical */
    st_tensor_view v;  /* located in the source (data NULL) */
    int block;         /* -1 global, else the config's block index */
    int expert;        /* -1 for a group */
    int slot;          /* order inside an expert extent */
    int seq;           /* discovery order (stable sort) */
} plan_item;

typedef struct plan {
    plan_item *it;
    int n, cap;
} plan;

static const char *const EXPERT_SLOTS[] = {"w1.weight", "w1.scale", "w3.weight", "w3.scale", "w2.weight", "w2.scale"};

/* Block / expert / slot of a canonical name. */
static void classify(const st_config *cfg, const char *name, plan_item *it) {
    int b, e, n = 0;
    char tail[32];
    it->block = -1;
    it->expert = -1;
    it->slot = 0;
    bool mtp = !strncmp(name, "mtp.", 4);
    const char *efmt = mtp ? "mtp.%d.ffn.experts.%d.%31s%n" : "layers.%d.ffn.experts.%d.%31s%n";
    if (sscanf(name, efmt, &b, &e, tail, &n) == 3 && !name[n] && b >= 0 && e >= 0) {
        for (int s = 0; s < 6; s++)
            if (!strcmp(tail, EXPERT_SLOTS[s])) {
                it->block = mtp ? cfg->n_layers + b : b;
                it->expert = e;
                it->slot = s;
                return;
            }
    }
    n = 0;
    if (sscanf(name, mtp ? "mtp.%d.%n" : "layers.%d.%n", &b, &n) == 1 && n > 0 && b >= 0)
        it->block = mtp ? cfg->n_layers + b : b;
}

static int plan_add(plan *P, const st_config *cfg, const char *name, const st_tensor_view *v) {
    if (P->n == P->cap) {
        int cap = P->cap ? P->cap * 2 : 512;
        plan_item *n = realloc(P->it, (size_t)cap * sizeof *n);
        if (!n) return st_error(ST_ERR_NOMEM, "convert: out of memory");
        P->it = n;
        P->cap = cap;
    }
    plan_item *it = &P->it[P->n];
    memset(it, 0, sizeof *it);
    if (!(it->name = strdup(name))) return st_error(ST_ERR_NOMEM, "convert: out of memory");
    it->v = *v;
    it->seq = P->n;
    classify(cfg, name, it);
    P->n++;
    return 0;
}

static void plan_free(plan *P) {
    for (int i = 0; i < P->n; i++) free(P->it[i].name);
    free(P->it);
}

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int cmp_item(const void *a, const void *b) {
    const plan_item *x = a, *y = b;
    if (x->block != y->block) return x->block < y->block ? -1 : 1;
    if (x->expert != y->expert) return x->expert < y->expert ? -1 : 1; /* the group (-1) first */
    if (x->slot != y->slot) return x->slot < y->slot ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Every canonical tensor the source holds: the config's specs (and their
 * .scale companions), then any other tensor of an official-named source. */
static int build_plan(st_checkpoint *ck, const st_config *cfg, plan *P, int *skipped, bool quiet) {
    st_tensor_spec *specs;
    int n, rc = st_tensor_specs(cfg, ST_SPEC_MTP, &specs, &n);
    if (rc) return rc;
    st_tensor_view v;
    for (int i = 0; i < n && !rc; i++) {
        rc = st_checkpoint_locate(ck, specs[i].name, &v);
        if (rc == ST_ERR_NOT_FOUND) { rc = 0; continue; } /* absent MTP blocks; the checker vouched for the rest */
        if (!rc) rc = plan_add(P, cfg, specs[i].name, &v);
        size_t l = strlen(specs[i].name);
        if (rc || specs[i].family != ST_TF_MATRIX || l < 7 || strcmp(specs[i].name + l - 7, ".weight")) continue;
        char sname[128];
        snprintf(sname, sizeof sname, "%.*s.scale", (int)(l - 7), specs[i].name);
        rc = st_checkpoint_locate(ck, sname, &v);
        if (rc == ST_ERR_NOT_FOUND) { rc = 0; continue; }
        if (!rc) rc = plan_add(P, cfg, sname, &v);
    }
    free(specs);
    if (rc) return rc;
    /* what the specs did not cover: names (canonical, or stored for transformers) already taken */
    char **taken = malloc((size_t)(P->n ? P->n : 1) * sizeof *taken);
    if (!taken) return st_error(ST_ERR_NOMEM, "convert: out of memory");
    const bool tf = st_checkpoint_naming(ck) == ST_NAMING_TRANSFORMERS;
    for (int i = 0; i < P->n; i++) taken[i] = tf ? (char *)P->it[i].v.stored_name : P->it[i].name;
    const int n_taken = P->n;
    qsort(taken, (size_t)n_taken, sizeof *taken, cmp_name);
    st_pack *pk = st_checkpoint_pack(ck);
    st_sft *files = st_checkpoint_files(ck);
    const int total = pk ? st_pack_tensor_count(pk) : st_sft_count(files);
    *skipped = 0;
    for (int i = 0; i < total && !rc; i++) {
        const char *name = pk ? st_pack_tensor_at(pk, i)->name : st_sft_at(files, i)->name;
        if (bsearch(&name, taken, (size_t)n_taken, sizeof *taken, cmp_name)) continue;
        if (tf) { /* no official name for it: left out, said aloud */
            if (!quiet) ST_WARN("convert: %s has no official name: left out of the pack", name);
            (*skipped)++;
            continue;
        }
        if ((rc = st_checkpoint_locate(ck, name, &v))) break;
        rc = plan_add(P, cfg, name, &v);
    }
    free(taken);
    if (!rc) qsort(P->it, (size_t)P->n, sizeof *P->it, cmp_item);
    return rc;
}

static int extent_name(const st_config *cfg, const plan_item *it, char *buf, size_t len) {
    const bool mtp = it->block >= cfg->n_layers;
    const int b = mtp ? it->block - cfg->n_layers : it->block;
    if (it->block < 0) return snprintf(buf, len, "global");
    if (it->expert < 0) return snprintf(buf, len, "%s.%d", mtp ? "mtp" : "layers", b);
    return snprintf(buf, len, "%s.%d.ffn.experts.%d", mtp ? "mtp" : "layers", b, it->expert);
}

/* Source bytes [off, off + len) of a planned tensor. */
static int read_source(st_checkpoint *ck, const plan_item *it, uint64_t off, void *buf, uint64_t len) {
    st_pack *pk = st_checkpoint_pack(ck);
    if (pk) return st_pack_pread(pk, st_pack_find(pk, it->v.stored_name), off, buf, len);
    st_sft *files = st_checkpoint_files(ck);
    const st_sft_tensor *t = st_sft_find(files, it->v.stored_name);
    return st_sft_pread(files, t, it->v.file_offset - t->offset + off, buf, len);
}

static int copy_side_files(st_pack_writer *w, const char *in) {
    static const char *const names[] = {"config.json", "tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json", "generation_config.json", "chat_template.jinja"};
    for (size_t i = 0; i < ST_ARRAY_LEN(names); i++) {
        char src[4200];
        snprintf(src, sizeof src, "%s/%s", in, names[i]);
        if (i > 0 && access(src, F_OK)) continue; /* config.json is required (already loaded) */
        int rc = st_pack_writer_copy_file(w, src, names[i]);
        if (rc) return rc;
    }
    return 0;
}

int st_convert_parse_fault(const char *spec, st_convert_opts *o) {
    uint64_t n;
    if (!strncmp(spec, "kill@", 5) && !st_parse_size(spec + 5, 0, "STRATA_PACK_FAULT", &n) && n) o->fault_kill_at = n;
    else if (!strncmp(spec, "fail@", 5) && !st_parse_size(spec + 5, 0, "STRATA_PACK_FAULT", &n) && n) o->fault_fail_at = n;
    else return st_error(ST_ERR_INVALID, "STRATA_PACK_FAULT: expected kill@BYTES or fail@BYTES, found '%s'", spec);
    return 0;
}

int st_pack_convert(const char *in, const char *out, const st_convert_opts *opts, st_convert_stats *stats) {
    const st_convert_opts o = opts ? *opts : (st_convert_opts){0};
    st_convert_stats st = {0};
    const double t0 = st_time_s();
    st_config cfg;
    st_checkpoint *ck = NULL;
    st_pack_writer *w = NULL;
    plan P = {0};
    uint8_t *buf = NULL;
    int rc = st_config_load(in, &cfg);
    if (!rc) rc = st_checkpoint_open(in, &cfg, &ck);
    if (!rc) rc = st_checkpoint_check(ck, &cfg);
    if (!rc) rc = build_plan(ck, &cfg, &P, &st.skipped, o.quiet);
    st_pack_writer_opts wo = {.n_files = o.split, .stripe_dirs = o.stripe_dirs, .n_stripe_dirs = o.n_stripe_dirs,
                              .force = o.force, .fault_kill_at = o.fault_kill_at, .fault_fail_at = o.fault_fail_at};
    if (!rc) rc = st_pack_writer_new(out, &wo, &w);
    if (!rc) rc = copy_side_files(w, in);
    /* declare: a new extent whenever (block, expert) changes */
    for (int i = 0; i < P.n && !rc; i++) {
        const plan_item *it = &P.it[i];
        if (!i || it->block != P.it[i - 1].block || it->expert != P.it[i - 1].expert) {
            char en[96];
            extent_name(&cfg, it, en, sizeof en);
            rc = st_pack_writer_begin_extent(w, it->expert >= 0 ? ST_PACK_EXPERT : ST_PACK_GROUP, it->block, it->expert, en);
            st.extents++;
            st.experts += it->expert >= 0;
        }
        if (!rc) rc = st_pack_writer_declare(w, it->name, it->v.dt, it->v.ndim, it->v.shape);
        st.tensor_bytes += it->v.nbytes;
    }
    st.tensors = P.n;
    if (!rc && !(buf = malloc(COPY_CHUNK))) rc = st_error(ST_ERR_NOMEM, "convert: out of memory");
    st_progress pg;
    st_progress_begin(&pg, "convert", st.tensor_bytes, true, o.quiet || rc);
    uint64_t done = 0;
    for (int i = 0; i < P.n && !rc; i++) {
        const plan_item *it = &P.it[i];
        for (uint64_t off = 0; off < it->v.nbytes && !rc; off += COPY_CHUNK) {
            uint64_t n = ST_MIN((uint64_t)COPY_CHUNK, it->v.nbytes - off);
            rc = read_source(ck, it, off, buf, n);
            if (!rc) rc = st_pack_writer_write(w, buf, (size_t)n);
            done += n;
            st_progress_update(&pg, done);
        }
        if (rc) st_error_prefix(rc, "tensor %s: ", it->name);
    }
    st_progress_end(&pg);
    if (!rc) {
        st.data_bytes = st_pack_writer_data_bytes(w);
        rc = st_pack_writer_finish(w);
        w = NULL;
    }
    st_pack_writer_abort(w);
    free(buf);
    plan_free(&P);
    st_checkpoint_close(ck);
    st_config_free(&cfg);
    st.seconds = st_time_s() - t0;
    if (stats) *stats = st;
    if (rc) st_error_prefix(rc, "convert %s -> %s: ", in, out);
    return rc;
}
