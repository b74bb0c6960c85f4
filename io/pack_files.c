/* The pack writer's file-system side: temporary and stripe file names,
 * leftovers of killed conversions, and publishing a finished pack by renames.
 *
 * DESIGN: everything is written under temporary names ("<dir>.tmp.<pid>/",
 * "<stripe file>.tmp.<pid>"); pkw_publish renames the stripe files to their
 * final names (fsyncing their directories) and then the pack directory, whose
 * manifest is the only thing that makes a pack: a kill at any point leaves
 * nothing that opens as a pack. Striping: data file 0 stays in the pack
 * directory, data file k >= 1 is "<stripe dir k>/<pack name>.<id>.data-k.bin" and
 * the manifest records that absolute path. --force moves the old pack aside,
 * publishes, then removes the old directory and the old pack's stripe files
 * that the new one did not reuse. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"
#include "io/pack.h"
#include "io/pack_internal.h"
#include "io/pack_write_internal.h"

static int pkw_rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

void pkw_rm_tree(const char *path) { nftw(path, pkw_rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

int pkw_fsync_path(const char *path, bool dir) {
    int fd = open(path, (dir ? O_DIRECTORY : 0) | O_RDONLY);
    if (fd < 0) return st_error(ST_ERR_IO, "%s: open for fsync: %s", path, strerror(errno));
    int rc = fsync(fd) && errno != EINVAL ? st_error(ST_ERR_IO, "%s: fsync: %s", path, strerror(errno)) : 0;
    close(fd);
    return rc;
}

char *pkw_parent_of(const char *path) {
    char *p = strdup(path);
    if (!p) return NULL;
    size_t l = strlen(p);
    while (l > 1 && p[l - 1] == '/') p[--l] = 0;
    char *s = strrchr(p, '/');
    if (!s) strcpy(p, ".");
    else if (s == p) p[1] = 0;
    else *s = 0;
    return p;
}

/* "<dir>.tmp.<pid>" directories (and stripe files) of processes that no longer
 * run: leftovers of killed conversions. Removed, with a warning (a running
 * pid's is left alone). */
void pkw_remove_stale_tmp(const char *dir) {
    char pat[4200];
    if (snprintf(pat, sizeof pat, "%s.tmp.*", dir) >= (int)sizeof pat) return;
    glob_t g;
    if (glob(pat, GLOB_NOSORT | GLOB_NOESCAPE, NULL, &g)) return;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *suffix = g.gl_pathv[i];
        for (const char *t; (t = strstr(suffix, ".tmp."));) suffix = t + 5; /* after the last ".tmp." */
        if (suffix == g.gl_pathv[i]) continue;
        char *end;
        long pid = strtol(suffix, &end, 10);
        struct stat sb;
        if (!*suffix || *end || pid <= 0 || pid == (long)getpid() || lstat(g.gl_pathv[i], &sb) ||
            !(S_ISDIR(sb.st_mode) || S_ISREG(sb.st_mode)))
            continue;
        if (kill((pid_t)pid, 0) && errno == ESRCH) {
            ST_WARN("%s: removing the leftover of an interrupted conversion (process %ld is gone)", g.gl_pathv[i], pid);
            pkw_rm_tree(g.gl_pathv[i]);
        }
    }
    globfree(&g);
}

char *pkw_dup_printf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (!s) return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* Paths of data file i: inside the temporary directory, or (stripes) in its
 * stripe directory, checked to be a directory and free of another file. */
int pkw_name_file(st_pack_writer *w, int i) {
    wt_file *F = &w->files[i];
    char nm[32];
    snprintf(nm, sizeof nm, PK_DATA_NAME_FMT, i);
    if (i == 0 || !w->opts.n_stripe_dirs) {
        F->path = pkw_dup_printf("%s/%s", w->tmp, nm);
        F->record = strdup(nm);
        return F->path && F->record ? 0 : st_error(ST_ERR_NOMEM, "pack writer: out of memory");
    }
    const char *sd = w->opts.stripe_dirs[i - 1];
    char real[PATH_MAX];
    struct stat sb;
    if (!sd || !realpath(sd, real) || stat(real, &sb))
        return st_error(errno == ENOENT ? ST_ERR_NOT_FOUND : ST_ERR_IO, "stripe directory %s: %s", sd ? sd : "(null)",
                        strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return st_error(ST_ERR_INVALID, "stripe directory %s: not a directory", sd);
    char *base = strdup(w->dir);
    if (!base) return st_error(ST_ERR_NOMEM, "pack writer: out of memory");
    size_t l = strlen(base);
    while (l > 1 && base[l - 1] == '/') base[--l] = 0;
    const char *slash = strrchr(base, '/');
    F->final = pkw_dup_printf("%s/%s.%08x.%s", strcmp(real, "/") ? real : "", slash ? slash + 1 : base,
                              (unsigned)(w->pack_id & 0xffffffffu), nm);
    /* leftovers of killed conversions of this pack name (any id) in this directory */
    char *stale = pkw_dup_printf("%s/%s.*.%s", strcmp(real, "/") ? real : "", slash ? slash + 1 : base, nm);
    free(base);
    if (stale) pkw_remove_stale_tmp(stale);
    free(stale);
    F->path = F->final ? pkw_dup_printf("%s.tmp.%ld", F->final, (long)getpid()) : NULL;
    F->record = F->final ? strdup(F->final) : NULL;
    if (!F->final || !F->path || !F->record) return st_error(ST_ERR_NOMEM, "pack writer: out of memory");
    for (int k = 1; k < i; k++)
        if (!strcmp(w->files[k].final, F->final))
            return st_error(ST_ERR_INVALID, "stripe directory %s given twice", sd);
    if (!lstat(F->final, &sb) && !w->opts.force)
        return st_error(ST_ERR_INVALID, "%s: already exists (a data file of another pack of this name? remove it, or --force to replace it)",
                        F->final);
    unlink(F->path); /* a leftover of an earlier process with our pid */
    return 0;
}

int pkw_publish(st_pack_writer *w) {
    int rc = 0;
    char *old = NULL, **old_external = NULL;
    int n_old_external = 0;
    if (!rc) {
        struct stat sb;
        if (!stat(w->dir, &sb)) { /* --force: move the old one aside, then remove it (and its stripe files) */
            st_pack *op;
            if (!pk_open_names(w->dir, &op)) {
                const size_t dl = strlen(w->dir);
                old_external = calloc((size_t)st_pack_file_count(op), sizeof *old_external);
                for (int f = 0; old_external && f < st_pack_file_count(op); f++) {
                    const char *fp = st_pack_file_path(op, f);
                    if (strncmp(fp, w->dir, dl) || fp[dl] != '/') old_external[n_old_external++] = strdup(fp);
                }
                st_pack_close(op);
            }
            old = pkw_dup_printf("%s.old.%ld", w->dir, (long)getpid());
            if (!old) rc = st_error(ST_ERR_NOMEM, "pack writer: out of memory");
            else if (rename(w->dir, old)) {
                rc = st_error(ST_ERR_IO, "%s: cannot move aside: %s", w->dir, strerror(errno));
                free(old);
                old = NULL;
            }
        }
    }
    /* stripe files take their final names first: until the directory rename
     * below there is no manifest under the final name, so nothing looks complete */
    for (int k = 0; k < w->n_files && !rc; k++) {
        wt_file *F = &w->files[k];
        if (!F->final) continue;
        if (rename(F->path, F->final)) rc = st_error(ST_ERR_IO, "%s: rename to %s: %s", F->path, F->final, strerror(errno));
        else {
            F->renamed = true;
            char *parent = pkw_parent_of(F->final);
            rc = parent ? pkw_fsync_path(parent, true) : st_error(ST_ERR_NOMEM, "pack writer: out of memory");
            free(parent);
        }
    }
    if (!rc && rename(w->tmp, w->dir)) rc = st_error(ST_ERR_IO, "%s: rename to %s: %s", w->tmp, w->dir, strerror(errno));
    if (!rc) {
        char *parent = pkw_parent_of(w->dir);
        if (parent) rc = pkw_fsync_path(parent, true);
        free(parent);
        if (old) pkw_rm_tree(old);
        for (int i = 0; i < n_old_external; i++) {
            bool reused = false;
            for (int k = 0; k < w->n_files && old_external[i]; k++) reused |= w->files[k].final && !strcmp(w->files[k].final, old_external[i]);
            if (old_external[i] && !reused) unlink(old_external[i]);
        }
        free(w->tmp);
        w->tmp = NULL; /* nothing left to remove */
        for (int k = 0; k < w->n_files; k++) w->files[k].renamed = false; /* they belong to the pack now */
    } else if (old && rename(old, w->dir)) {
        ST_WARN("%s: could not restore the previous pack from %s: %s", w->dir, old, strerror(errno));
    }
    for (int i = 0; i < n_old_external; i++) free(old_external[i]);
    free(old_external);
    free(old);
    return rc;
}
