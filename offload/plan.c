/* Placement plan and decode cost model (see plan.h). Pure arithmetic: no I/O. */
#include "offload/plan.h"

#include <stdlib.h>
#include <string.h>

#include "base/base.h"

const char *st_tier_name(st_tier_kind t) {
    static const char *n[] = {"gpu", "dram", "nvme"};
    return t >= 0 && t < ST_TIER_COUNT ? n[t] : "?";
}

const char *st_plan_class_name(int c) {
    static const char *n[] = {"attention", "shared experts", "norms+routers", "embeddings", "head", "window KV"};
    return c >= 0 && c < ST_PLAN_CLASSES ? n[c] : "?";
}

static int cmp_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x > y ? -1 : x < y;
}

int st_plan_compute(const st_plan_input *in, st_plan *out) {
    memset(out, 0, sizeof *out);
    if (in->n_layers < 0 || in->n_experts < 0 || in->top_k < 0 || in->bandwidth[ST_TIER_DRAM] <= 0 ||
        in->bandwidth[ST_TIER_NVME] <= 0)
        return st_error(ST_ERR_INVALID, "plan: needs expert counts and DRAM/NVMe bandwidths > 0");
    const bool gpu = in->budget[ST_TIER_GPU] > 0 && in->bandwidth[ST_TIER_GPU] > 0;
    uint64_t left[ST_TIER_COUNT] = {gpu ? in->budget[ST_TIER_GPU] : 0, in->budget[ST_TIER_DRAM],
                                    in->budget[ST_TIER_NVME] ? in->budget[ST_TIER_NVME] : UINT64_MAX};
    /* pinned classes: fastest tier with room */
    for (int c = 0; c < ST_PLAN_CLASSES; c++) {
        uint64_t b = in->class_bytes[c];
        int t = gpu && b <= left[ST_TIER_GPU] ? ST_TIER_GPU : ST_TIER_DRAM;
        if (b > left[t]) {
            char a[32], x[32];
            return st_error(ST_ERR_BUDGET, "plan: %s (%s) does not fit what is left of the DRAM budget (%s)",
                            st_plan_class_name(c), st_fmt_size(b, a, sizeof a), st_fmt_size(left[t], x, sizeof x));
        }
        left[t] -= b;
        out->class_tier[c] = t;
        out->bytes[t] += b;
        out->read[t] += (double)in->class_read[c];
    }
    /* routed experts by expected use */
    const int64_t n = (int64_t)in->n_layers * in->n_experts;
    double *use = malloc((size_t)(n ? n : 1) * sizeof *use);
    if (!use) return st_error(ST_ERR_NOMEM, "plan: out of memory");
    double total_use = 0;
    for (int64_t i = 0; i < n; i++) {
        use[i] = in->expert_use ? in->expert_use[i] : (double)in->top_k / (double)in->n_experts;
        total_use += use[i];
    }
    qsort(use, (size_t)n, sizeof *use, cmp_desc);
    out->expert_cache_bytes = left[ST_TIER_DRAM];
    double fast_use = 0;
    for (int64_t i = 0; i < n; i++) {
        int t = gpu && in->expert_bytes <= left[ST_TIER_GPU] ? ST_TIER_GPU
                : in->expert_bytes <= left[ST_TIER_DRAM]    ? ST_TIER_DRAM
                                                            : ST_TIER_NVME;
        left[t] -= in->expert_bytes;
        out->experts[t]++;
        out->bytes[t] += in->expert_bytes;
        double r = use[i] * (double)in->expert_bytes;
        out->read[t] += r;
        if (t == ST_TIER_NVME) out->read[ST_TIER_DRAM] += r; /* computed from its DRAM slot */
        else fast_use += use[i];
    }
    free(use);
    out->fast_share = total_use > 0 ? fast_use / total_use : 1.0;
    for (int t = 0; t < ST_TIER_COUNT; t++) {
        if (out->read[t] <= 0) continue;
        double s = out->read[t] / (in->bandwidth[t] > 0 ? in->bandwidth[t] : in->bandwidth[ST_TIER_DRAM]);
        out->seconds_serial += s;
        out->seconds_overlap = ST_MAX(out->seconds_overlap, s);
    }
    /* the head's read on its tier, then every tier's other reads overlapped */
    const int ht = out->class_tier[ST_PLAN_HEAD];
    const double head_read = (double)in->class_read[ST_PLAN_HEAD], head_s = head_read / in->bandwidth[ht];
    double rest = 0;
    for (int t = 0; t < ST_TIER_COUNT; t++) {
        double r = out->read[t] - (t == ht ? head_read : 0);
        if (r <= 0) continue;
        rest = ST_MAX(rest, r / (in->bandwidth[t] > 0 ? in->bandwidth[t] : in->bandwidth[ST_TIER_DRAM]));
    }
    out->seconds_dependent = ST_MAX(out->seconds_overlap, head_s + rest);
    out->tok_s = out->seconds_overlap > 0 ? 1.0 / out->seconds_overlap : 0;
    out->tok_s_serial = out->seconds_serial > 0 ? 1.0 / out->seconds_serial : 0;
    out->tok_s_dependent = out->seconds_dependent > 0 ? 1.0 / out->seconds_dependent : 0;
    return 0;
}
