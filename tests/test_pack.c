/* The pack format: conversion of every fixture layout and a synth model gives
 * byte-identical tensors through st_checkpoint; expert extents are aligned,
 * contiguous and readable with one O_DIRECT read; verify names a flipped
 * tensor; corrupt, truncated, wrong-magic and wrong-version packs give clear
 * errors (a fuzz over the manifest with valid checksums never crashes); an
 * interrupted conversion leaves no complete-looking pack; logits on a pack
 * equal logits on its source bit for bit; a pack striped over several
 * directories gives the same logits resident and streaming, and a truncated or
 * missing stripe file is refused by name; bench io reads a pack's own expert
 * extents; the commands as a user runs them. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <cJSON.h>
#include <fcntl.h>
#include <glob.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "base/base.h"
#include "bench/io_target.h"
#include "engine/config.h"
#include "engine/model.h"
#include "engine/model_stream.h"
#include "engine/pack_convert.h"
#include "engine/synth.h"
#include "engine/tensor_names.h"
#include "io/pack.h"
#include "io/pack_internal.h"
#include "io/uring.h"
#include "util.h"

#define FIX "tests/data/fixtures"

static char tmp[64];
static char synth_dir[128];
static const char *bin;

static const char *const SOURCES[] = {FIX "/v4_tiny_a", FIX "/v4_tiny_a/official", FIX "/v4_tiny_b",
                                      FIX "/v4_tiny_b/official", synth_dir};

static void pack_path(char *buf, size_t len, const char *name) { snprintf(buf, len, "%s/%s", tmp, name); }

static void convert_ok(const char *src, const char *out, int split) {
    st_convert_opts o = {.quiet = true, .split = split, .force = true};
    int rc = st_pack_convert(src, out, &o, NULL);
    if (rc) fail_msg("convert %s: %s", src, st_last_error());
}

static bool exists(const char *p) {
    struct stat sb;
    return !stat(p, &sb);
}

static int setup(void **state) {
    (void)state;
    bin = tu_strata_bin();
    if (tu_tmpdir(tmp, sizeof tmp, "/tmp/strata-pack-XXXXXX")) return -1;
    snprintf(synth_dir, sizeof synth_dir, "%s/synth_tiny", tmp);
    return tu_synth(st_synth_find("tiny"), synth_dir, 3, NULL) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    return tu_rmtree(tmp);
}

/* Every canonical tensor of the source (specs, scales, MTP) is in the pack
 * with the same dtype, shape and bytes, and the pack holds nothing else. */
static void same_tensors(const char *src, const char *pack) {
    st_config cfg;
    assert_int_equal(st_config_load(src, &cfg), 0);
    st_checkpoint *a, *b;
    assert_int_equal(st_checkpoint_open(src, &cfg, &a), 0);
    assert_int_equal(st_checkpoint_open(pack, &cfg, &b), 0);
    assert_non_null(st_checkpoint_pack(b));
    assert_null(st_checkpoint_files(b));
    assert_int_equal(st_checkpoint_check(b, &cfg), 0);
    st_tensor_spec *specs;
    int n, compared = 0;
    assert_int_equal(st_tensor_specs(&cfg, ST_SPEC_MTP, &specs, &n), 0);
    for (int i = 0; i < 2 * n; i++) {
        char name[128];
        const char *w = specs[i / 2].name;
        if (i % 2 == 0) snprintf(name, sizeof name, "%s", w);
        else if (strlen(w) > 7 && !strcmp(w + strlen(w) - 7, ".weight")) snprintf(name, sizeof name, "%.*s.scale", (int)strlen(w) - 7, w);
        else continue;
        st_tensor_view va, vb;
        int ra = st_checkpoint_lookup(a, name, &va), rb = st_checkpoint_lookup(b, name, &vb);
        if (ra == ST_ERR_NOT_FOUND) {
            assert_int_equal(rb, ST_ERR_NOT_FOUND);
            continue;
        }
        assert_int_equal(ra, 0);
        if (rb) fail_msg("%s: %s missing from the pack", pack, name);
        assert_string_equal(va.dtype, vb.dtype);
        assert_int_equal(va.ndim, vb.ndim);
        assert_memory_equal(va.shape, vb.shape, sizeof va.shape);
        assert_int_equal(va.nbytes, vb.nbytes);
        if (memcmp(va.data, vb.data, va.nbytes)) fail_msg("%s: tensor %s differs from the source", pack, name);
        compared++;
    }
    /* official sources have no tensors beyond the specs here, so the pack holds exactly these */
    assert_int_equal(compared, st_pack_tensor_count(st_checkpoint_pack(b)));
    free(specs);
    st_checkpoint_close(a);
    st_checkpoint_close(b);
    st_config_free(&cfg);
}

static void convert_every_layout_byte_identical(void **s) {
    (void)s;
    for (size_t i = 0; i < ST_ARRAY_LEN(SOURCES); i++) {
        for (int split = 1; split <= 3; split += 2) {
            char out[256];
            snprintf(out, sizeof out, "%s/same_%zu_%d", tmp, i, split);
            convert_ok(SOURCES[i], out, split);
            st_pack *p;
            assert_int_equal(st_pack_open(out, &p), 0);
            assert_int_equal(st_pack_file_count(p), split);
            for (int f = 0; f < split; f++) assert_true(st_pack_file_size(p, f) > 0); /* extents spread */
            assert_int_equal(st_pack_verify(p, NULL, false), 0);
            st_pack_close(p);
            same_tensors(SOURCES[i], out);
            /* the side files came along */
            char cf[300];
            snprintf(cf, sizeof cf, "%s/config.json", out);
            assert_true(exists(cf));
        }
    }
    /* a pack converts again (pack -> pack) to the same tensors */
    char a[256], b[256];
    snprintf(a, sizeof a, "%s/same_4_1", tmp);
    snprintf(b, sizeof b, "%s/repack", tmp);
    convert_ok(a, b, 1);
    same_tensors(synth_dir, b);
}

/* Each routed expert: one 4096-aligned extent, six sub-tensors back to back
 * at 64-byte boundaries, read whole with one O_DIRECT read, bytes = source. */
static void expert_extents(const char *src, const char *out) {
    convert_ok(src, out, 2);
    st_config cfg;
    assert_int_equal(st_config_load(src, &cfg), 0);
    st_checkpoint *ck;
    assert_int_equal(st_checkpoint_open(src, &cfg, &ck), 0);
    st_pack *p;
    assert_int_equal(st_pack_open(out, &p), 0);
    const char *paths[8];
    for (int f = 0; f < st_pack_file_count(p); f++) paths[f] = st_pack_file_path(p, f);
    st_io *io;
    assert_int_equal(st_io_open(paths, st_pack_file_count(p), NULL, &io), 0);
    int seen = 0;
    for (int l = 0; l < cfg.n_layers; l++) {
        for (int e = 0; e < cfg.n_routed_experts; e++) {
            const st_pack_extent *x = st_pack_find_expert(p, l, e);
            assert_non_null(x);
            assert_int_equal(x->kind, ST_PACK_EXPERT);
            assert_int_equal(x->offset % 4096, 0);
            assert_int_equal(x->length % 4096, 0);
            const bool scaled = st_pack_tensor_at(p, x->first_tensor)->dtype != ST_SFT_F32 &&
                                st_pack_tensor_at(p, x->first_tensor)->dtype != ST_SFT_BF16;
            static const char *const order[] = {"w1.weight", "w1.scale", "w3.weight", "w3.scale", "w2.weight", "w2.scale"};
            assert_int_equal(x->n_tensors, scaled ? 6 : 3);
            uint8_t *buf = st_aligned_alloc(4096, x->length);
            assert_int_equal(st_io_read_sync(io, x->file, x->offset, x->length, buf), 0);
            assert_true(XXH3_64bits(buf, x->length) == x->xxh3);
            uint64_t end = x->offset;
            for (int k = 0; k < x->n_tensors; k++) {
                const st_pack_tensor *t = st_pack_tensor_at(p, x->first_tensor + k);
                char want[128];
                snprintf(want, sizeof want, "layers.%d.ffn.experts.%d.%s", l, e, order[scaled ? k : 2 * k]);
                assert_string_equal(t->name, want);
                assert_int_equal(t->file, x->file);
                assert_int_equal(t->offset, ST_ALIGN_UP(end, 64)); /* back to back */
                end = t->offset + t->nbytes;
                st_tensor_view v;
                assert_int_equal(st_checkpoint_lookup(ck, want, &v), 0);
                assert_int_equal(v.nbytes, t->nbytes);
                assert_memory_equal(buf + (t->offset - x->offset), v.data, v.nbytes);
            }
            assert_int_equal(x->length, ST_ALIGN_UP(end - x->offset, 4096));
            free(buf);
            seen++;
        }
    }
    int experts = 0;
    for (int i = 0; i < st_pack_extent_count(p); i++) {
        const st_pack_extent *x = st_pack_extent_at(p, i);
        assert_int_equal(x->offset % 4096, 0);
        assert_int_equal(x->length % 4096, 0);
        experts += x->kind == ST_PACK_EXPERT;
        if (x->kind == ST_PACK_GROUP) /* a group holds one layer's tensors, or the global ones */
            for (int k = x->first_tensor; k < x->first_tensor + x->n_tensors; k++) {
                char pre[32];
                snprintf(pre, sizeof pre, "%s.", x->name);
                if (x->layer >= 0) assert_memory_equal(st_pack_tensor_at(p, k)->name, pre, strlen(pre));
                else assert_null(strstr(st_pack_tensor_at(p, k)->name, "layers."));
            }
    }
    assert_int_equal(experts, seen + (cfg.n_mtp_layers && st_pack_find(p, "mtp.0.ffn.experts.0.w1.weight") ? cfg.n_mtp_layers * cfg.n_routed_experts : 0));
    st_io_close(io);
    st_pack_close(p);
    st_checkpoint_close(ck);
    st_config_free(&cfg);
}

static void expert_extents_aligned_and_contiguous(void **s) {
    (void)s;
    char out[256];
    pack_path(out, sizeof out, "ext_synth");
    expert_extents(synth_dir, out); /* FP4 experts with scales */
    pack_path(out, sizeof out, "ext_tf");
    expert_extents(FIX "/v4_tiny_a", out); /* views of transformers' fused experts */
    pack_path(out, sizeof out, "ext_off");
    expert_extents(FIX "/v4_tiny_a/official", out);
}

static void flip_byte(const char *path, uint64_t off) {
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t c;
    assert_int_equal(pread(fd, &c, 1, (off_t)off), 1);
    c ^= 0x20;
    assert_int_equal(pwrite(fd, &c, 1, (off_t)off), 1);
    close(fd);
}

static void verify_names_a_flipped_tensor(void **s) {
    (void)s;
    char out[256];
    pack_path(out, sizeof out, "flip");
    convert_ok(synth_dir, out, 1);
    st_pack *p;
    assert_int_equal(st_pack_open(out, &p), 0);
    assert_int_equal(st_pack_verify(p, NULL, false), 0);
    const char *victim = "layers.1.ffn.experts.2.w3.weight";
    const st_pack_tensor *t = st_pack_find(p, victim);
    assert_non_null(t);
    flip_byte(st_pack_file_path(p, t->file), t->offset + 5);
    FILE *rep = tmpfile();
    assert_int_equal(st_pack_verify(p, rep, false), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), victim));
    assert_non_null(strstr(st_last_error(), "checksum"));
    rewind(rep);
    char line[1024];
    int lines = 0;
    while (fgets(line, sizeof line, rep)) lines++;
    assert_int_equal(lines, 2); /* the tensor and its extent */
    fclose(rep);
    flip_byte(st_pack_file_path(p, t->file), t->offset + 5); /* restore */
    assert_int_equal(st_pack_verify(p, NULL, false), 0);
    /* a padding byte: only the extent can notice */
    const st_pack_extent *x = st_pack_find_expert(p, 0, 1);
    const st_pack_tensor *last = st_pack_tensor_at(p, x->first_tensor + x->n_tensors - 1);
    assert_true(last->offset + last->nbytes < x->offset + x->length);
    flip_byte(st_pack_file_path(p, x->file), x->offset + x->length - 1);
    assert_int_equal(st_pack_verify(p, NULL, false), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "extent layers.0.ffn.experts.1"));
    st_pack_close(p);
}

/* ---- corrupt packs ---- */

static char *read_all(const char *path, size_t *len) {
    char *b;
    assert_int_equal(st_read_file(path, 1 << 26, &b, len), 0);
    return b;
}

static void write_all(const char *path, const void *b, size_t len) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, len, f), len);
    fclose(f);
}

/* Rewrite both checksums so only the structural checks stand between the bytes and the reader. */
static void reseal(char *m, size_t len) {
    st_pack_header h;
    memcpy(&h, m, sizeof h);
    h.body_xxh3 = XXH3_64bits(m + sizeof h, len - sizeof h);
    h.header_xxh3 = XXH3_64bits(&h, PK_HEADER_HASHED);
    memcpy(m, &h, sizeof h);
}

static int open_status(const char *dir) {
    st_pack *p = NULL;
    int rc = st_pack_open(dir, &p);
    if (!rc) { /* opened: every use must still be safe */
        st_pack_verify(p, NULL, false);
        for (int i = 0; i < st_pack_tensor_count(p); i++) {
            const void *d;
            const st_pack_tensor *t = st_pack_tensor_at(p, i);
            assert_ptr_equal(st_pack_find(p, t->name), t);
            if (!st_pack_data(p, t, &d) && t->nbytes) (void)*(volatile const uint8_t *)((const uint8_t *)d + t->nbytes - 1);
        }
    }
    st_pack_close(p);
    return rc;
}

static void corrupt_packs_give_clear_errors(void **s) {
    (void)s;
    char out[256], mpath[300], dpath[300];
    pack_path(out, sizeof out, "corrupt");
    convert_ok(FIX "/v4_tiny_b/official", out, 1);
    snprintf(mpath, sizeof mpath, "%s/" ST_PACK_MANIFEST, out);
    snprintf(dpath, sizeof dpath, "%s/data-0.bin", out);
    size_t len;
    char *good = read_all(mpath, &len), *m = malloc(len);
    st_model *model = NULL;
    st_model_opts mo = {.threads = 1, .quiet = true};

    /* truncated data file */
    struct stat sb;
    assert_int_equal(stat(dpath, &sb), 0);
    assert_int_equal(truncate(dpath, sb.st_size - 4096), 0);
    assert_int_equal(open_status(out), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "truncated"));
    assert_non_null(strstr(st_last_error(), "data-0.bin"));
    assert_int_not_equal(st_model_load(out, &mo, &model), 0);
    assert_null(model);
    assert_non_null(strstr(st_last_error(), "truncated"));
    assert_int_equal(truncate(dpath, sb.st_size), 0); /* zeros where data was: verify must say so */
    st_pack *p;
    assert_int_equal(st_pack_open(out, &p), 0);
    assert_int_equal(st_pack_verify(p, NULL, false), ST_ERR_FORMAT);
    st_pack_close(p);
    convert_ok(FIX "/v4_tiny_b/official", out, 1);

    /* a flipped byte in the body */
    memcpy(m, good, len);
    m[len / 2] ^= 1;
    write_all(mpath, m, len);
    assert_int_equal(open_status(out), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "checksum"));
    /* wrong magic */
    memcpy(m, good, len);
    memcpy(m, "SAFETENS", 8);
    write_all(mpath, m, len);
    assert_int_equal(open_status(out), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), "not a strata pack"));
    /* another version, properly sealed */
    memcpy(m, good, len);
    ((st_pack_header *)m)->version = 2;
    reseal(m, len);
    write_all(mpath, m, len);
    assert_int_equal(open_status(out), ST_ERR_UNSUPPORTED);
    assert_non_null(strstr(st_last_error(), "version 2"));
    /* every truncation length */
    for (size_t cut = 0; cut < len; cut += cut < 256 ? 1 : 61) {
        write_all(mpath, good, cut);
        assert_int_not_equal(open_status(out), 0);
    }
    /* structural fuzz: random bytes changed, checksums made valid again */
    srand(7);
    int refused = 0;
    for (int i = 0; i < 400; i++) {
        memcpy(m, good, len);
        int flips = 1 + rand() % 3;
        for (int k = 0; k < flips; k++) {
            size_t at = sizeof(st_pack_header) + (size_t)rand() % (len - sizeof(st_pack_header));
            m[at] = (char)(i % 2 ? rand() : m[at] ^ (1 << (rand() % 8)));
        }
        if (i % 5 == 0) ((st_pack_header *)m)->n_tensors += (uint32_t)(rand() % 3) - 1;
        reseal(m, len);
        write_all(mpath, m, len);
        refused += open_status(out) != 0;
    }
    print_message("  manifest fuzz: %d of 400 sealed mutations refused\n", refused);
    assert_true(refused > 100);
    /* a data file missing; no manifest at all */
    write_all(mpath, good, len);
    assert_int_equal(open_status(out), 0);
    assert_int_equal(unlink(dpath), 0);
    assert_int_equal(open_status(out), ST_ERR_NOT_FOUND);
    assert_non_null(strstr(st_last_error(), "data-0.bin"));
    assert_int_equal(unlink(mpath), 0);
    assert_false(st_pack_is_pack(out));
    assert_int_equal(open_status(out), ST_ERR_NOT_FOUND);
    assert_non_null(strstr(st_last_error(), "not a pack"));
    free(good);
    free(m);
}

/* ---- interrupted conversions ---- */

static void interrupted_conversion_leaves_no_pack(void **s) {
    (void)s;
    char out[256], tmpdir[300];
    pack_path(out, sizeof out, "killed");
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        st_convert_opts o = {.quiet = true, .fault_kill_at = 50000};
        st_pack_convert(synth_dir, out, &o, NULL);
        _exit(0); /* not reached: the hook kills the process */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_false(exists(out));
    snprintf(tmpdir, sizeof tmpdir, "%s.tmp.%d", out, (int)pid);
    assert_true(exists(tmpdir)); /* the half-written pack, under a name nobody opens */
    assert_false(st_pack_is_pack(tmpdir));
    st_pack *p = NULL;
    assert_int_not_equal(st_pack_open(tmpdir, &p), 0);
    assert_int_not_equal(st_pack_open(out, &p), 0);

    /* a failure (injected write error) cleans up after itself, and the next
     * conversion removed the dead process's leftover */
    st_convert_opts o = {.quiet = true, .fault_fail_at = 70000};
    assert_int_equal(st_pack_convert(synth_dir, out, &o, NULL), ST_ERR_IO);
    assert_non_null(strstr(st_last_error(), "injected"));
    assert_false(exists(out));
    assert_false(exists(tmpdir));
    snprintf(tmpdir, sizeof tmpdir, "%s.tmp.%d", out, (int)getpid());
    assert_false(exists(tmpdir));

    /* then a full conversion; an existing pack is refused without force, replaced with it */
    o = (st_convert_opts){.quiet = true};
    assert_int_equal(st_pack_convert(synth_dir, out, &o, NULL), 0);
    assert_int_equal(st_pack_convert(FIX "/v4_tiny_b/official", out, &o, NULL), ST_ERR_INVALID);
    assert_non_null(strstr(st_last_error(), "exists"));
    o.force = true;
    assert_int_equal(st_pack_convert(FIX "/v4_tiny_b/official", out, &o, NULL), 0);
    same_tensors(FIX "/v4_tiny_b/official", out);
}

/* ---- the model on a pack ---- */

static void logits_equal(const char *src, const char *name) {
    char out[256];
    pack_path(out, sizeof out, name);
    convert_ok(src, out, 1);
    st_model_opts o = {.threads = 2, .quiet = true};
    st_model *a, *b;
    assert_int_equal(st_model_load(src, &o, &a), 0);
    if (st_model_load(out, &o, &b)) fail_msg("loading the pack %s: %s", out, st_last_error());
    int32_t ids[9];
    for (int i = 0; i < 9; i++) ids[i] = (int32_t)((i * 37 + 5) % a->vocab);
    float *la = malloc(9 * (size_t)a->vocab * sizeof(float)), *lb = malloc(9 * (size_t)b->vocab * sizeof(float));
    st_seq *sa, *sb;
    assert_int_equal(st_seq_new(a, &sa), 0);
    assert_int_equal(st_seq_new(b, &sb), 0);
    assert_int_equal(st_seq_forward(sa, ids, 9, la, true), 0);
    assert_int_equal(st_seq_forward(sb, ids, 9, lb, true), 0);
    assert_memory_equal(la, lb, 9 * (size_t)a->vocab * sizeof(float)); /* bit for bit */
    st_seq_free(sa);
    st_seq_free(sb);
    free(la);
    free(lb);
    st_model_free(a);
    st_model_free(b);
}

static void logits_on_pack_equal_source(void **s) {
    (void)s;
    logits_equal(FIX "/v4_tiny_b/official", "lg_b_off");
    logits_equal(FIX "/v4_tiny_a", "lg_a_tf");
    logits_equal(synth_dir, "lg_synth");
}

/* ---- striping over several directories (devices) ---- */

/* Prefill then two decode steps; all logits. */
static float *stripe_logits(const char *path, const st_model_opts *extra, size_t *count, uint64_t *streamed) {
    st_model_opts o = extra ? *extra : (st_model_opts){0};
    o.threads = 2;
    o.quiet = true;
    st_model *m;
    if (st_model_load(path, &o, &m)) fail_msg("load %s: %s", path, st_last_error());
    enum { N = 10, DECODE = 2 };
    int32_t ids[N];
    for (int i = 0; i < N; i++) ids[i] = (int32_t)((i * 53 + 11) % m->vocab);
    *count = (size_t)(N + DECODE) * (size_t)m->vocab;
    float *lg = malloc(*count * sizeof(float));
    st_seq *sq;
    assert_int_equal(st_seq_new(m, &sq), 0);
    assert_int_equal(st_seq_forward(sq, ids, N, lg, true), 0);
    for (int i = 0; i < DECODE; i++)
        assert_int_equal(st_seq_forward(sq, &ids[i], 1, lg + (size_t)(N + i) * (size_t)m->vocab, false), 0);
    st_seq_free(sq);
    st_stream_stats ss;
    *streamed = st_model_offload_stats(m, &ss) ? 0 : ss.bytes_read;
    st_model_free(m);
    return lg;
}

static int count_glob(const char *pattern) {
    glob_t g;
    int n = glob(pattern, 0, NULL, &g) ? 0 : (int)g.gl_pathc;
    if (n) globfree(&g);
    return n;
}

/* tu_run into the caller's buffer (some checks compare two commands' outputs); the exit code */
static int run(const char *cmd, char *out, size_t cap) {
    char *all;
    int code = tu_run(cmd, &all);
    snprintf(out, cap, "%s", all);
    free(all);
    return code;
}

static void striped_pack_bit_identical(void **s) {
    (void)s;
    char plain[256], striped[256], d1[256], d2[256], f1[300], f2[300];
    pack_path(plain, sizeof plain, "st_plain");
    pack_path(striped, sizeof striped, "st_striped");
    pack_path(d1, sizeof d1, "nvme1");
    pack_path(d2, sizeof d2, "nvme2");
    assert_int_equal(mkdir(d1, 0755), 0);
    assert_int_equal(mkdir(d2, 0755), 0);
    convert_ok(synth_dir, plain, 1);
    const char *dirs[] = {d1, d2};
    st_convert_opts o = {.quiet = true, .stripe_dirs = dirs, .n_stripe_dirs = 2};
    if (st_pack_convert(synth_dir, striped, &o, NULL)) fail_msg("striped convert: %s", st_last_error());

    /* three files: groups in the pack directory, experts round-robin over all
     * three; stripe files named <pack>.<id>.data-K.bin, recorded absolute */
    st_pack *p;
    assert_int_equal(st_pack_open(striped, &p), 0);
    assert_int_equal(st_pack_file_count(p), 3);
    const uint64_t id = st_pack_get_header(p)->pack_id;
    assert_true(id != 0);
    char want1[300], want2[300];
    snprintf(want1, sizeof want1, "nvme1/st_striped.%08x.data-1.bin", (unsigned)(id & 0xffffffffu));
    snprintf(want2, sizeof want2, "nvme2/st_striped.%08x.data-2.bin", (unsigned)(id & 0xffffffffu));
    assert_non_null(strstr(st_pack_file_path(p, 1), want1));
    assert_non_null(strstr(st_pack_file_path(p, 2), want2));
    assert_true(st_pack_file_path(p, 1)[0] == '/');
    snprintf(f1, sizeof f1, "%s", st_pack_file_path(p, 1));
    snprintf(f2, sizeof f2, "%s", st_pack_file_path(p, 2));
    assert_true(exists(f1) && exists(f2));
    int experts_in[3] = {0}, k = 0;
    for (int i = 0; i < st_pack_extent_count(p); i++) {
        const st_pack_extent *e = st_pack_extent_at(p, i);
        if (e->kind != ST_PACK_EXPERT) { assert_int_equal(e->file, 0); continue; }
        assert_int_equal(e->file, k++ % 3);
        experts_in[e->file]++;
    }
    assert_true(k >= 6);
    for (int f = 0; f < 3; f++) assert_true(abs(experts_in[f] - k / 3) <= 1);
    assert_int_equal(st_pack_verify(p, NULL, false), 0);
    st_pack_close(p);
    same_tensors(synth_dir, striped);

    /* logits: resident, and streaming through a 2-slot expert cache (reads from all three files) */
    size_t n_plain, n_res, n_stream;
    uint64_t rd_plain, rd_res, rd_stream;
    float *want = stripe_logits(plain, NULL, &n_plain, &rd_plain);
    float *res = stripe_logits(striped, NULL, &n_res, &rd_res);
    st_model_opts so = {.expert_slots = 2};
    float *str = stripe_logits(striped, &so, &n_stream, &rd_stream);
    assert_int_equal(n_plain, n_res);
    assert_int_equal(n_plain, n_stream);
    assert_memory_equal(want, res, n_plain * sizeof(float));
    assert_memory_equal(want, str, n_plain * sizeof(float));
    assert_int_equal(rd_res, 0);
    assert_true(rd_stream > 0);
    free(want);
    free(res);
    free(str);

    /* a pack of the same name elsewhere, striped into the same directories,
     * gets its own files (the id in the name): both packs stay intact */
    char other[256], od[256], pat[300];
    pack_path(other, sizeof other, "other/st_striped");
    pack_path(od, sizeof od, "other");
    assert_int_equal(mkdir(od, 0755), 0);
    assert_int_equal(st_pack_convert(synth_dir, other, &o, NULL), 0);
    snprintf(pat, sizeof pat, "%s/st_striped.*.data-1.bin", d1);
    assert_int_equal(count_glob(pat), 2);
    assert_int_equal(open_status(other), 0);
    assert_int_equal(open_status(striped), 0);

    /* a truncated or missing stripe file: refused, naming that file */
    struct stat sb;
    assert_int_equal(stat(f2, &sb), 0);
    assert_int_equal(truncate(f2, sb.st_size - 4096), 0);
    assert_int_equal(open_status(striped), ST_ERR_FORMAT);
    assert_non_null(strstr(st_last_error(), f2));
    assert_non_null(strstr(st_last_error(), "truncated"));
    st_model *m = NULL;
    st_model_opts mo = {.threads = 1, .quiet = true};
    assert_int_not_equal(st_model_load(striped, &mo, &m), 0);
    assert_null(m);
    assert_non_null(strstr(st_last_error(), f2));
    mo.expert_slots = 2;
    assert_int_not_equal(st_model_load(striped, &mo, &m), 0);
    assert_non_null(strstr(st_last_error(), f2));
    assert_int_equal(unlink(f1), 0);
    assert_int_equal(open_status(striped), ST_ERR_NOT_FOUND);
    assert_non_null(strstr(st_last_error(), f1));

    /* --force replaces it and removes the old pack's remaining stripe file;
     * a kill mid-way leaves only temporary names, a failure leaves nothing */
    o.force = true;
    assert_int_equal(st_pack_convert(synth_dir, striped, &o, NULL), 0);
    assert_int_equal(open_status(striped), 0);
    assert_false(exists(f2));
    snprintf(pat, sizeof pat, "%s/st_striped.*.data-2.bin", d2);
    assert_int_equal(count_glob(pat), 2); /* the new pack's and the other pack's */
    char killed[256], tmpf[400];
    pack_path(killed, sizeof killed, "st_killed");
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        st_convert_opts ko = o;
        ko.fault_kill_at = 60000;
        st_pack_convert(synth_dir, killed, &ko, NULL);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_false(exists(killed));
    snprintf(pat, sizeof pat, "%s/st_killed.*.data-1.bin", d1);
    assert_int_equal(count_glob(pat), 0);
    snprintf(tmpf, sizeof tmpf, "%s/st_killed.*.data-1.bin.tmp.%d", d1, (int)pid);
    assert_int_equal(count_glob(tmpf), 1);
    st_convert_opts fo = o;
    fo.fault_fail_at = 60000;
    assert_int_equal(st_pack_convert(synth_dir, killed, &fo, NULL), ST_ERR_IO);
    assert_false(exists(killed));
    assert_int_equal(count_glob(pat), 0);
    assert_int_equal(count_glob(tmpf), 0); /* the dead process's leftover was removed too */
    snprintf(tmpf, sizeof tmpf, "%s/st_killed.*", d1);
    assert_int_equal(count_glob(tmpf), 0);
}

/* `strata bench io PACK` reads exactly the pack's routed-expert extents (over
 * all its data files) and fio covers the same region. */
static void bench_io_reads_the_packs_own_extents(void **s) {
    (void)s;
    char plain[256], striped[256];
    pack_path(plain, sizeof plain, "st_plain");
    pack_path(striped, sizeof striped, "st_striped"); /* made by striped_pack_bit_identical */
    const char *paths[] = {plain, striped};
    for (int k = 0; k < 2; k++) {
        st_pack *p;
        assert_int_equal(st_pack_open(paths[k], &p), 0);
        io_target t;
        assert_int_equal(io_target_open(paths[k], 0, false, &t), 0);
        assert_int_equal(t.kind, IO_TARGET_PACK);
        assert_int_equal(t.n_files, st_pack_file_count(p));
        int experts = 0;
        uint64_t lo = UINT64_MAX, hi = 0;
        for (int i = 0; i < st_pack_extent_count(p); i++) {
            const st_pack_extent *e = st_pack_extent_at(p, i);
            if (e->kind != ST_PACK_EXPERT) continue;
            bool listed = false;
            for (int j = 0; j < t.n_extents; j++) listed |= t.ext_file[j] == e->file && t.ext_offset[j] == e->offset;
            assert_true(listed);
            assert_int_equal(e->length, t.block);
            experts++;
            lo = ST_MIN(lo, e->offset);
            hi = ST_MAX(hi, e->offset + e->length);
        }
        assert_int_equal(t.n_extents, experts);
        for (int f = 0; f < t.n_files; f++) assert_string_equal(t.paths[f], st_pack_file_path(p, f));
        if (t.n_files == 1) { /* fio: random offsets over exactly the experts' span */
            assert_int_equal(t.fio_offset, lo);
            assert_int_equal(t.fio_size, hi - lo);
        }
        int file;
        uint64_t off;
        io_target_pick(&t, 12345, &file, &off);
        assert_true(file >= 0 && file < t.n_files && off % 4096 == 0);
        io_target_free(&t);
        st_pack_close(p);
    }
    io_target t;
    assert_int_equal(io_target_open(plain, 1 << 20, true, &t), ST_ERR_INVALID); /* the pack sets the block */
    assert_non_null(strstr(st_last_error(), "--block"));
    /* the command: strata only (fio may be absent in CI), a few reads per depth */
    static char out[1 << 16];
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s bench io %s --no-fio --depths 1,4 --seconds 0.2 --rounds 1 --json 2>&1", bin, striped);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    cJSON *root = cJSON_Parse(out);
    assert_non_null(root);
    assert_string_equal(cJSON_GetObjectItem(root, "kind")->valuestring, "pack");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(root, "files")), 3);
    const cJSON *r = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "results"), 1);
    assert_int_equal(cJSON_GetObjectItem(r, "depth")->valueint, 4);
    assert_true(cJSON_GetObjectItem(r, "strata_gbs")->valuedouble > 0);
    cJSON_Delete(root);
}

/* ---- the commands ---- */

static void commands_as_a_user_runs_them(void **s) {
    (void)s;
    static char out[1 << 16];
    char cmd[1024], pk[256];
    pack_path(pk, sizeof pk, "cli");
    snprintf(cmd, sizeof cmd, "%s convert --help", bin);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "usage: strata convert"));
    snprintf(cmd, sizeof cmd, "%s inspect --help", bin);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "--verify"));
    snprintf(cmd, sizeof cmd, "%s convert --model %s 2>&1", bin, synth_dir);
    assert_int_equal(run(cmd, out, sizeof out), 2);
    assert_non_null(strstr(out, "--out"));
    snprintf(cmd, sizeof cmd, "%s inspect 2>&1", bin);
    assert_int_equal(run(cmd, out, sizeof out), 2);
    /* killed mid-way through the environment hook: no pack */
    snprintf(cmd, sizeof cmd, "STRATA_PACK_FAULT=kill@30000 %s convert --model %s --out %s 2>&1", bin, synth_dir, pk);
    assert_int_not_equal(run(cmd, out, sizeof out), 0);
    assert_false(exists(pk));
    snprintf(cmd, sizeof cmd, "%s convert --model %s --out %s 2>&1", bin, synth_dir, pk);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "experts"));
    assert_null(strstr(out, "\r"));
    assert_non_null(strstr(out, "leftover of an interrupted conversion")); /* the killed run's, removed */ /* no progress bar when not on a terminal */
    snprintf(cmd, sizeof cmd, "%s inspect %s --verify 2>&1", bin, pk);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "routed experts"));
    assert_non_null(strstr(out, "verify: "));
    /* --model accepts the pack: same logits text as the checkpoint */
    static char a[1 << 16];
    snprintf(cmd, sizeof cmd, "%s logits --model %s --ids 1,2,3,4 --threads 1", bin, synth_dir);
    assert_int_equal(run(cmd, a, sizeof a), 0);
    snprintf(cmd, sizeof cmd, "%s logits --model %s --ids 1,2,3,4 --threads 1", bin, pk);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_string_equal(a, out);
    /* a flipped byte: inspect --verify fails naming the tensor */
    st_pack *p;
    assert_int_equal(st_pack_open(pk, &p), 0);
    const st_pack_tensor *t = st_pack_find(p, "layers.0.attn.wq_b.weight");
    assert_non_null(t);
    flip_byte(st_pack_file_path(p, t->file), t->offset + 3);
    st_pack_close(p);
    snprintf(cmd, sizeof cmd, "%s inspect %s --verify 2>&1", bin, pk);
    assert_int_equal(run(cmd, out, sizeof out), 1);
    assert_non_null(strstr(out, "layers.0.attn.wq_b.weight"));
    /* striped over two directories from the command line; inspect lists and verifies every file */
    char sd[256], spk[256];
    pack_path(sd, sizeof sd, "cli_stripe");
    pack_path(spk, sizeof spk, "cli_striped");
    assert_int_equal(mkdir(sd, 0755), 0);
    snprintf(cmd, sizeof cmd, "%s convert --model %s --out %s --split 2 --stripe %s 2>&1", bin, synth_dir, spk, sd);
    assert_int_equal(run(cmd, out, sizeof out), 2);
    assert_non_null(strstr(out, "one or the other"));
    snprintf(cmd, sizeof cmd, "%s convert --model %s --out %s --stripe %s,%s/missing 2>&1", bin, synth_dir, spk, sd, sd);
    assert_int_not_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "missing"));
    assert_false(exists(spk));
    snprintf(cmd, sizeof cmd, "%s convert --model %s --out %s --stripe %s --quiet 2>&1", bin, synth_dir, spk, sd);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    snprintf(cmd, sizeof cmd, "%s inspect %s --verify --quiet 2>&1", bin, spk);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, ".data-1.bin"));
    assert_non_null(strstr(out, "[stripe]"));
    assert_non_null(strstr(out, "in 2 data files match"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(convert_every_layout_byte_identical),
        cmocka_unit_test(expert_extents_aligned_and_contiguous),
        cmocka_unit_test(verify_names_a_flipped_tensor),
        cmocka_unit_test(corrupt_packs_give_clear_errors),
        cmocka_unit_test(interrupted_conversion_leaves_no_pack),
        cmocka_unit_test(logits_on_pack_equal_source),
        cmocka_unit_test(striped_pack_bit_identical),
        cmocka_unit_test(bench_io_reads_the_packs_own_extents),
        cmocka_unit_test(commands_as_a_user_runs_them),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
