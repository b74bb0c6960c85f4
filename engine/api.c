/* The public model/session API of include/strata.h over the engine's
 * st_model and st_seq (a session is a sequence). */
#include <stdlib.h>

#include "base/base.h"
#include "engine/model.h"
#include "strata.h"

struct st_session {
    st_seq *seq;
};

int st_model_open(const char *path, const st_open_options *opts, st_model **out) {
    if (!path || !out) return st_error(ST_ERR_INVALID, "st_model_open: NULL argument");
    st_model_opts o = {.quiet = true};
    if (opts) {
        if (opts->numerics != ST_NUMERICS_MODE_OFFICIAL && opts->numerics != ST_NUMERICS_MODE_REFERENCE)
            return st_error(ST_ERR_INVALID, "st_model_open: numerics = %d", (int)opts->numerics);
        o.numerics = opts->numerics == ST_NUMERICS_MODE_REFERENCE ? ST_NUMERICS_REFERENCE : ST_NUMERICS_OFFICIAL;
        o.threads = opts->threads;
        o.chunk = opts->prefill_chunk;
    }
    return st_model_load(path, &o, out);
}

void st_model_close(st_model *model) { st_model_free(model); }

int64_t st_model_vocab_size(const st_model *model) { return model ? model->vocab : 0; }

int st_session_new(st_model *model, st_session **out) {
    if (!model || !out) return st_error(ST_ERR_INVALID, "st_session_new: NULL argument");
    *out = NULL;
    st_session *s = calloc(1, sizeof *s);
    if (!s) return st_error(ST_ERR_NOMEM, "st_session_new: out of memory");
    int rc = st_seq_new(model, &s->seq);
    if (rc) { free(s); return rc; }
    *out = s;
    return 0;
}

void st_session_free(st_session *s) {
    if (!s) return;
    st_seq_free(s->seq);
    free(s);
}

void st_session_reset(st_session *s) {
    if (s) st_seq_reset(s->seq);
}

int64_t st_session_position(const st_session *s) { return s ? s->seq->pos : 0; }

int st_session_eval(st_session *s, const int32_t *ids, int64_t n, float *logits) {
    if (!s || !ids) return st_error(ST_ERR_INVALID, "st_session_eval: NULL argument");
    return st_seq_forward(s->seq, ids, n, logits, false);
}

int st_session_kv_tiering(st_session *s, const st_kv_tiering_options *o) {
    if (!s || !o) return st_error(ST_ERR_INVALID, "st_session_kv_tiering: NULL argument");
    if (!o->fast_bytes) return st_error(ST_ERR_INVALID, "st_session_kv_tiering: fast_bytes must be more than 0");
    if (o->page_bytes % 4096)
        return st_error(ST_ERR_INVALID, "st_session_kv_tiering: page_bytes %llu is not a multiple of 4096",
                        (unsigned long long)o->page_bytes);
    return st_seq_kv_tiering(s->seq, o->fast_bytes, o->dram_bytes, o->spill_dir, o->page_bytes);
}
