/* `strata info`: what this machine offers strata. CPU model and the SIMD kernels
 * in use, cores, NUMA nodes and their memory (hwloc), huge pages, io_uring and
 * O_DIRECT, GPUs (or why none), and the versions of the libraries linked.
 *
 * Everything is gathered into one cJSON object; `--json` prints it, otherwise it
 * is rendered as text. Missing hardware or features are facts, never errors:
 * the command fails only on bad options or when hwloc cannot load a topology.
 */
#include <cJSON.h>
#include <cblas.h>
#include <dirent.h>
#include <hwloc.h>
#include <numa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <utf8proc.h>
#include <xxhash.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "base/base.h"
#include "cpu/mem.h"
#include "engine/model.h"
#include "cpu/cpu.h"
#include "engine/cli.h"
#include "io/uring_probe.h"
#include "kernels/gpu.h"

static void usage(FILE *f) {
    fprintf(f, "usage: strata info [--json] [--dir DIR]\n\n"
               "Describe this machine: CPU model and SIMD kernels, cores, NUMA nodes and memory,\n"
               "huge pages, io_uring, O_DIRECT, GPUs, linked library versions.\n\n"
               "  --json      one JSON object on stdout instead of text\n"
               "  --dir DIR   directory whose file system is probed for O_DIRECT (default: .)\n"
               "  -h, --help  this help\n");
}

/* ---- gathering ------------------------------------------------------------------ */

static char *read_line(const char *path, char *buf, size_t len) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char *s = fgets(buf, (int)len, f);
    fclose(f);
    if (!s) return NULL;
    buf[strcspn(buf, "\n")] = 0;
    return buf;
}

static void cpu_model_from_proc(char *out, size_t len) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    snprintf(out, len, "unknown");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10)) continue;
        char *colon = strchr(line, ':');
        if (!colon) continue;
        colon++;
        while (*colon == ' ' || *colon == '\t') colon++;
        colon[strcspn(colon, "\n")] = 0;
        snprintf(out, len, "%s", colon);
        break;
    }
    fclose(f);
}

static void add_cpu(cJSON *root, hwloc_topology_t topo) {
    cJSON *cpu = cJSON_AddObjectToObject(root, "cpu");
    char model[256] = "";
    hwloc_obj_t pkg = hwloc_get_obj_by_type(topo, HWLOC_OBJ_PACKAGE, 0);
    const char *m = pkg ? hwloc_obj_get_info_by_name(pkg, "CPUModel") : NULL;
    if (m && *m) snprintf(model, sizeof model, "%s", m);
    else cpu_model_from_proc(model, sizeof model);
    cJSON_AddStringToObject(cpu, "model", model);
    static const struct { uint32_t bit; const char *name; } feats[] = {
        {ST_CPU_AVX2, "avx2"},           {ST_CPU_AVX512, "avx512"},         {ST_CPU_AVX512_VNNI, "avx512_vnni"},
        {ST_CPU_AVX512_BF16, "avx512_bf16"}, {ST_CPU_AVX512_VBMI, "avx512_vbmi"}, {ST_CPU_AVX_VNNI, "avx_vnni"},
    };
    cJSON *fa = cJSON_AddArrayToObject(cpu, "features");
    uint32_t f = st_cpu_features();
    for (size_t i = 0; i < ST_ARRAY_LEN(feats); i++)
        if (f & feats[i].bit) cJSON_AddItemToArray(fa, cJSON_CreateString(feats[i].name));
    cJSON_AddStringToObject(cpu, "kernels", st_isa_name(st_cpu_isa()));
    cJSON_AddStringToObject(cpu, "kernels_best", st_isa_name(st_cpu_isa_best()));
    cJSON_AddNumberToObject(cpu, "packages", hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PACKAGE));
    int cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE), pus = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
    cJSON_AddNumberToObject(cpu, "cores", cores > 0 ? cores : pus);
    cJSON_AddNumberToObject(cpu, "pus", pus);
}

static void add_numa(cJSON *root, hwloc_topology_t topo) {
    cJSON *numa = cJSON_AddObjectToObject(root, "numa");
    int n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
    cJSON *nodes = cJSON_AddArrayToObject(numa, "nodes");
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        hwloc_obj_t o = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, (unsigned)i);
        cJSON *node = cJSON_CreateObject();
        char cpus[256] = "";
        if (o->cpuset) hwloc_bitmap_list_snprintf(cpus, sizeof cpus, o->cpuset);
        cJSON_AddNumberToObject(node, "os_index", o->os_index);
        cJSON_AddNumberToObject(node, "memory_bytes", (double)o->attr->numanode.local_memory);
        cJSON_AddStringToObject(node, "cpus", cpus);
        cJSON_AddItemToArray(nodes, node);
        total += o->attr->numanode.local_memory;
    }
    if (total == 0) total = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    cJSON_AddNumberToObject(numa, "count", n > 0 ? n : 1);
    cJSON_AddNumberToObject(numa, "memory_bytes", (double)total);
    cJSON_AddBoolToObject(numa, "libnuma", numa_available() >= 0);
    /* what runs default to: every weight in DRAM when it fits in 90% of this, else that 90% is the budget */
    cJSON *mem = cJSON_AddObjectToObject(root, "memory");
    uint64_t avail;
    const uint64_t budget = st_model_default_dram_budget(&avail);
    cJSON_AddNumberToObject(mem, "limit_bytes", (double)st_mem_limit());
    cJSON_AddNumberToObject(mem, "available_bytes", (double)avail);
    cJSON_AddNumberToObject(mem, "default_dram_budget_bytes", (double)budget);
}

static void add_huge_pages(cJSON *root) {
    cJSON *hp = cJSON_AddObjectToObject(root, "huge_pages");
    cJSON *sizes = cJSON_AddArrayToObject(hp, "sizes");
    const char *base = "/sys/kernel/mm/hugepages";
    DIR *d = opendir(base);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        unsigned long kb;
        if (sscanf(e->d_name, "hugepages-%lukB", &kb) != 1) continue;
        char path[512], buf[64];
        cJSON *s = cJSON_CreateObject();
        cJSON_AddNumberToObject(s, "size_bytes", (double)kb * 1024);
        snprintf(path, sizeof path, "%s/%s/nr_hugepages", base, e->d_name);
        cJSON_AddNumberToObject(s, "total", read_line(path, buf, sizeof buf) ? atof(buf) : 0);
        snprintf(path, sizeof path, "%s/%s/free_hugepages", base, e->d_name);
        cJSON_AddNumberToObject(s, "free", read_line(path, buf, sizeof buf) ? atof(buf) : 0);
        cJSON_AddItemToArray(sizes, s);
    }
    if (d) closedir(d);
    /* "always [madvise] never": the bracketed word is the setting */
    const char *names[2] = {"transparent", "transparent_defrag"};
    const char *files[2] = {"/sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/mm/transparent_hugepage/defrag"};
    for (int i = 0; i < 2; i++) {
        char buf[256], *l = read_line(files[i], buf, sizeof buf), *a = l ? strchr(l, '[') : NULL;
        char *b = a ? strchr(a, ']') : NULL;
        if (a && b) *b = 0;
        cJSON_AddStringToObject(hp, names[i], a && b ? a + 1 : "unavailable");
    }
}

static void add_io(cJSON *root, const char *dir) {
    cJSON *io = cJSON_AddObjectToObject(root, "io");
    st_uring_caps caps;
    st_uring_probe(&caps);
    cJSON *u = cJSON_AddObjectToObject(io, "io_uring");
    cJSON_AddBoolToObject(u, "available", caps.ring_ok && caps.nop_ok);
    cJSON_AddStringToObject(u, "reason", caps.ring_ok ? (caps.nop_ok ? "" : "a NOP did not complete") : caps.reason);
    cJSON_AddBoolToObject(u, "probe", caps.probe_ok);
    cJSON *ops = cJSON_AddArrayToObject(u, "ops");
    for (int i = 0; i < ST_URING_OP_COUNT; i++)
        if (caps.ops & (1u << i)) cJSON_AddItemToArray(ops, cJSON_CreateString(st_uring_op_name((st_uring_op)i)));
    cJSON_AddNumberToObject(u, "features", caps.features);
    cJSON_AddNumberToObject(u, "disabled_sysctl", caps.disabled_sysctl);
    cJSON *od = cJSON_AddObjectToObject(io, "o_direct");
    int rc = st_odirect_probe(dir);
    cJSON_AddStringToObject(od, "dir", dir);
    cJSON_AddBoolToObject(od, "supported", rc == 0);
    cJSON_AddStringToObject(od, "reason", rc == 0 ? "" : st_last_error());
}

static void add_gpu(cJSON *root) {
    cJSON *g = cJSON_AddObjectToObject(root, "gpu");
    const char *reason = "";
    int n = st_gpu_device_count(&reason);
    cJSON_AddBoolToObject(g, "cuda_compiled", st_gpu_compiled());
    cJSON_AddNumberToObject(g, "count", n);
    cJSON_AddStringToObject(g, "reason", reason);
    int rt = 0, drv = 0;
    if (st_gpu_versions(&rt, &drv) == 0) {
        cJSON_AddNumberToObject(g, "cuda_runtime", rt);
        cJSON_AddNumberToObject(g, "cuda_driver", drv);
    }
    cJSON *devs = cJSON_AddArrayToObject(g, "devices");
    for (int i = 0; i < n; i++) {
        st_gpu_info info;
        cJSON *d = cJSON_CreateObject();
        cJSON_AddNumberToObject(d, "index", i);
        if (st_gpu_device_info(i, &info) != 0) {
            cJSON_AddStringToObject(d, "error", st_last_error());
        } else {
            char cc[32];
            snprintf(cc, sizeof cc, "%d.%d", info.cc_major, info.cc_minor);
            cJSON_AddStringToObject(d, "name", info.name);
            cJSON_AddStringToObject(d, "compute_capability", cc);
            cJSON_AddNumberToObject(d, "multiprocessors", info.multiprocessors);
            cJSON_AddNumberToObject(d, "memory_bytes", (double)info.total_bytes);
            cJSON_AddNumberToObject(d, "free_bytes", (double)info.free_bytes);
            /* peak: 2 transfers per clock (DDR) x bus width */
            if (info.mem_clock_khz > 0 && info.mem_bus_bits > 0)
                cJSON_AddNumberToObject(d, "peak_bandwidth_bytes_per_s",
                                        2.0 * info.mem_clock_khz * 1e3 * (double)info.mem_bus_bits / 8);
        }
        cJSON_AddItemToArray(devs, d);
    }
}

static void add_libraries(cJSON *root) {
    cJSON *lib = cJSON_AddObjectToObject(root, "libraries");
    char buf[256];
    unsigned hv = hwloc_get_api_version();
    snprintf(buf, sizeof buf, "%u.%u.%u", hv >> 16, (hv >> 8) & 0xff, hv & 0xff);
    cJSON_AddStringToObject(lib, "hwloc", buf);
    snprintf(buf, sizeof buf, "api %d", LIBNUMA_API_VERSION);
    cJSON_AddStringToObject(lib, "libnuma", buf);
    const char *ob = openblas_get_config();
    cJSON_AddStringToObject(lib, "openblas", ob ? ob : "unknown");
    cJSON_AddStringToObject(lib, "liburing", st_uring_lib_version(buf, sizeof buf));
    cJSON_AddStringToObject(lib, "cjson", cJSON_Version());
    unsigned xv = XXH_versionNumber();
    snprintf(buf, sizeof buf, "%u.%u.%u", xv / 10000, xv / 100 % 100, xv % 100);
    cJSON_AddStringToObject(lib, "xxhash", buf);
    if (pcre2_config(PCRE2_CONFIG_VERSION, buf) < 0) snprintf(buf, sizeof buf, "unknown");
    cJSON_AddStringToObject(lib, "pcre2", buf);
    cJSON_AddStringToObject(lib, "utf8proc", utf8proc_version());
    int rt = 0, drv = 0;
    if (st_gpu_versions(&rt, &drv) == 0) {
        snprintf(buf, sizeof buf, "%d.%d", rt / 1000, rt % 1000 / 10);
        cJSON_AddStringToObject(lib, "cuda_runtime", buf);
        if (drv > 0) snprintf(buf, sizeof buf, "%d.%d", drv / 1000, drv % 1000 / 10);
        else snprintf(buf, sizeof buf, "none");
        cJSON_AddStringToObject(lib, "cuda_driver", buf);
    } else {
        cJSON_AddStringToObject(lib, "cuda_runtime", "not compiled in");
    }
}

/* ---- text rendering ------------------------------------------------------------- */

static const char *str_of(const cJSON *o, const char *key) {
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
    return s ? s : "?";
}
static double num_of(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}
static bool bool_of(const cJSON *o, const char *key) { return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, key)); }

static void print_list(const cJSON *arr, const char *sep) {
    const cJSON *it;
    bool first = true;
    cJSON_ArrayForEach(it, arr) {
        printf("%s%s", first ? "" : sep, it->valuestring);
        first = false;
    }
    if (first) printf("none");
}

static void print_text(const cJSON *root) {
    char s1[32], s2[32];
    const cJSON *cpu = cJSON_GetObjectItem(root, "cpu"), *numa = cJSON_GetObjectItem(root, "numa");
    printf("strata %s\n", str_of(root, "version"));
    printf("cpu:         %s (%g package(s), %g cores, %g PUs)\n", str_of(cpu, "model"), num_of(cpu, "packages"),
           num_of(cpu, "cores"), num_of(cpu, "pus"));
    printf("simd:        ");
    print_list(cJSON_GetObjectItem(cpu, "features"), " ");
    printf("; kernels: %s (best %s)\n", str_of(cpu, "kernels"), str_of(cpu, "kernels_best"));
    printf("numa:        %g node(s), %s%s\n", num_of(numa, "count"),
           st_fmt_size((uint64_t)num_of(numa, "memory_bytes"), s1, sizeof s1),
           bool_of(numa, "libnuma") ? "" : " (libnuma: NUMA unavailable)");
    const cJSON *node;
    cJSON_ArrayForEach(node, cJSON_GetObjectItem(numa, "nodes"))
        printf("             node %g: %s, PUs %s\n", num_of(node, "os_index"),
               st_fmt_size((uint64_t)num_of(node, "memory_bytes"), s1, sizeof s1), str_of(node, "cpus"));
    const cJSON *mem = cJSON_GetObjectItem(root, "memory");
    char m2[32], m3[32];
    printf("memory:      %s available now of %s this process may use; runs keep every weight in DRAM when it fits\n"
           "             in %s (90%%), else stream routed experts with that as --dram-budget (the default)\n",
           st_fmt_size((uint64_t)num_of(mem, "available_bytes"), s1, sizeof s1),
           st_fmt_size((uint64_t)num_of(mem, "limit_bytes"), m2, sizeof m2),
           st_fmt_size((uint64_t)num_of(mem, "default_dram_budget_bytes"), m3, sizeof m3));
    const cJSON *hp = cJSON_GetObjectItem(root, "huge_pages"), *sz;
    printf("huge pages:  ");
    bool any = false;
    cJSON_ArrayForEach(sz, cJSON_GetObjectItem(hp, "sizes")) {
        printf("%s%s: %g (%g free)", any ? ", " : "", st_fmt_size((uint64_t)num_of(sz, "size_bytes"), s1, sizeof s1),
               num_of(sz, "total"), num_of(sz, "free"));
        any = true;
    }
    printf("%stransparent: %s (defrag %s)\n", any ? "; " : "", str_of(hp, "transparent"), str_of(hp, "transparent_defrag"));
    const cJSON *io = cJSON_GetObjectItem(root, "io"), *u = cJSON_GetObjectItem(io, "io_uring"),
                *od = cJSON_GetObjectItem(io, "o_direct");
    if (bool_of(u, "available")) {
        printf("io_uring:    yes; ops: ");
        if (bool_of(u, "probe")) print_list(cJSON_GetObjectItem(u, "ops"), " ");
        else printf("unknown (kernel has no opcode probe)");
        printf("\n");
    } else {
        printf("io_uring:    no (%s)\n", str_of(u, "reason"));
    }
    if (bool_of(od, "supported")) printf("O_DIRECT:    yes in %s\n", str_of(od, "dir"));
    else printf("O_DIRECT:    no in %s (%s)\n", str_of(od, "dir"), str_of(od, "reason"));
    const cJSON *g = cJSON_GetObjectItem(root, "gpu"), *d;
    if (num_of(g, "count") == 0) printf("gpu:         none (%s)\n", str_of(g, "reason"));
    else printf("gpu:         %g device(s)\n", num_of(g, "count"));
    cJSON_ArrayForEach(d, cJSON_GetObjectItem(g, "devices")) {
        if (cJSON_GetObjectItem(d, "error")) {
            printf("             %g: %s\n", num_of(d, "index"), str_of(d, "error"));
            continue;
        }
        printf("             %g: %s, compute %s, %g SMs, %s (%s free)\n", num_of(d, "index"), str_of(d, "name"),
               str_of(d, "compute_capability"), num_of(d, "multiprocessors"),
               st_fmt_size((uint64_t)num_of(d, "memory_bytes"), s1, sizeof s1),
               st_fmt_size((uint64_t)num_of(d, "free_bytes"), s2, sizeof s2));
    }
    const cJSON *lib = cJSON_GetObjectItem(root, "libraries"), *it;
    printf("libraries:  ");
    cJSON_ArrayForEach(it, lib) printf(" %s %s;", it->string, it->valuestring);
    printf("\n");
}

int cmd_info(int argc, char **argv) {
    bool json = false;
    const char *dir = ".";
    if (cli_wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = true;
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
        else {
            fprintf(stderr, "strata info: unknown or incomplete option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    hwloc_topology_t topo;
    if (hwloc_topology_init(&topo) != 0 || hwloc_topology_load(topo) != 0)
        return cli_fail("info", st_error(ST_ERR_INTERNAL, "hwloc could not read this machine's topology"));
    cJSON *root = cJSON_CreateObject();
    if (!root) {
        hwloc_topology_destroy(topo);
        return cli_fail("info", st_error(ST_ERR_NOMEM, "no memory for the report"));
    }
    cJSON_AddStringToObject(root, "version", st_version());
    add_cpu(root, topo);
    add_numa(root, topo);
    hwloc_topology_destroy(topo);
    add_huge_pages(root);
    add_io(root, dir);
    add_gpu(root);
    add_libraries(root);
    if (json) {
        char *text = cJSON_Print(root);
        if (text) printf("%s\n", text);
        free(text);
    } else {
        print_text(root);
    }
    cJSON_Delete(root);
    return 0;
}
