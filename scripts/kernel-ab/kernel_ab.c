/*
 * kernel_ab — two builds of the CPU routing kernels measured side by side in one process.
 *
 * On a shared machine the same binary moves by tens of percent between minutes, so two
 * separate bench runs cannot show a 3 % change. This loads both builds (dlopen, RTLD_LOCAL),
 * checks that they produce identical outputs, then times them in alternating rounds (A B, B A,
 * ...), so every slow spell lands on both alike; it prints min and mean ns/token and B/A.
 * Built and driven by scripts/kernel-ab.sh; see docs/PERFORMANCE.md.
 *
 * B.so = "threads": instead of a second build, A's kernel on two POSIX threads, each routing
 * one half of the batch (the best split there is, no pool, no chunking): the ceiling for what
 * a multi-threaded backend can get out of this machine's two cores.
 *
 * usage: kernel_ab A.so B.so LAYER DTYPE TOKENS ROUNDS
 *   LAYER: deepseek-v3 | kimi-k2 | deepseek-v2 | deepseek-v2-lite | qwen3-moe | mixtral-8x7b
 *          | METHOD:E:K:G:GK:SCORING (the moe_kernels.h enum values; renormalize, rsf 2.5)
 *   DTYPE: fp32 | bf16 | fp16, or DA/DB (e.g. fp32/bf16): A routes the workload in DA and B
 *          in DB (pass the same library twice to compare dtypes; outputs are then not compared,
 *          and each side's bias is the one a layer with its gate dtype holds)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moe_kernels.h"

typedef int64_t (*route_fn)(const mrk_layer *, const void *, int32_t, int64_t, float *, int32_t *,
                            int32_t);
typedef uint16_t (*narrow_fn)(float);
typedef float (*widen_fn)(uint16_t);

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

/* The synthetic bias of Presets.syntheticBias (Sources/MoERouting/Presets.swift). */
static float synthetic_bias(int i) {
    uint64_t z = (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(((double)(z >> 40) / 16777216.0 - 0.5) * 0.2);
}

/* One half of a batch, for the "threads" mode. */
typedef struct {
    route_fn route;
    const mrk_layer *layer;
    const char *input;
    int32_t dtype;
    int64_t tokens;
    float *w;
    int32_t *ids;
} half_job;

static void *run_half(void *arg) {
    const half_job *j = arg;
    j->route(j->layer, j->input, j->dtype, j->tokens, j->w, j->ids, MRK_IMPL_AVX512);
    return NULL;
}

static void route_two_threads(route_fn route, const mrk_layer *L, const void *input, int32_t dtype,
                              int64_t tokens, float *w, int32_t *ids) {
    const int64_t h = tokens / 2;
    const size_t row = (size_t)L->num_experts * (dtype ? 2 : 4);
    half_job a = {route, L, input, dtype, h, w, ids};
    half_job b = {route, L, (const char *)input + h * row, dtype, tokens - h, w + h * L->top_k, ids + h * L->top_k};
    pthread_t t;
    pthread_create(&t, NULL, run_half, &b);
    run_half(&a);
    pthread_join(t, NULL);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s A.so B.so LAYER DTYPE TOKENS ROUNDS\n", argv[0]);
        return 2;
    }
    route_fn route[2];
    void *lib[2];
    const int threads = !strcmp(argv[2], "threads");
    for (int i = 0; i < 2; i++) {
        if (threads && i == 1) {
            lib[1] = lib[0];
            route[1] = route[0];
            break;
        }
        lib[i] = dlopen(argv[1 + i], RTLD_NOW | RTLD_LOCAL);
        if (!lib[i]) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        route[i] = (route_fn)dlsym(lib[i], "mrk_route");
        if (!route[i]) { fprintf(stderr, "%s: no mrk_route\n", argv[1 + i]); return 1; }
    }
    narrow_fn narrow[3] = {NULL, (narrow_fn)dlsym(lib[0], "mrk_f32_to_bf16"), (narrow_fn)dlsym(lib[0], "mrk_f32_to_f16")};
    widen_fn widen[3] = {NULL, (widen_fn)dlsym(lib[0], "mrk_bf16_to_f32"), (widen_fn)dlsym(lib[0], "mrk_f16_to_f32")};

    int method, E, k, G, Gk, scoring, renorm = 1;
    float rsf = 2.5f;
    /* the presets of Sources/MoERouting/Presets.swift that the kernel targets are measured on */
    static const struct { const char *name; int method, E, k, G, Gk, scoring, renorm; float rsf; } presets[] = {
        {"deepseek-v3", MRK_BIASED_GROUPED_TOPK, 256, 8, 8, 4, MRK_SCORING_SIGMOID, 1, 2.5f},
        {"kimi-k2", MRK_BIASED_GROUPED_TOPK, 384, 8, 1, 1, MRK_SCORING_SIGMOID, 1, 2.827f},
        {"deepseek-v2", MRK_GROUPED_TOPK, 160, 6, 8, 3, MRK_SCORING_SOFTMAX, 0, 16.0f},
        {"deepseek-v2-lite", MRK_SOFTMAX_TOPK, 64, 6, 1, 1, MRK_SCORING_SOFTMAX, 0, 1.0f},
        {"qwen3-moe", MRK_SOFTMAX_TOPK, 128, 8, 1, 1, MRK_SCORING_SOFTMAX, 1, 1.0f},
        {"mixtral-8x7b", MRK_SOFTMAX_TOPK, 8, 2, 1, 1, MRK_SCORING_SOFTMAX, 1, 1.0f},
    };
    int found = 0;
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (!strcmp(argv[3], presets[i].name)) {
            method = presets[i].method, E = presets[i].E, k = presets[i].k, G = presets[i].G;
            Gk = presets[i].Gk, scoring = presets[i].scoring, renorm = presets[i].renorm, rsf = presets[i].rsf;
            found = 1;
        }
    if (!found && sscanf(argv[3], "%d:%d:%d:%d:%d:%d", &method, &E, &k, &G, &Gk, &scoring) != 6) {
        fprintf(stderr, "bad layer %s\n", argv[3]);
        return 2;
    }
    int dt[2];
    {
        char spec[32];
        snprintf(spec, sizeof spec, "%s", argv[4]);
        char *slash = strchr(spec, '/');
        if (slash) *slash = 0;
        const char *names[2] = {spec, slash ? slash + 1 : spec};
        for (int i = 0; i < 2; i++)
            dt[i] = !strcmp(names[i], "fp32") ? 0 : !strcmp(names[i], "bf16") ? 1 : !strcmp(names[i], "fp16") ? 2 : -1;
    }
    const int tokens = atoi(argv[5]), rounds = atoi(argv[6]);
    if (dt[0] < 0 || dt[1] < 0 || tokens < 1 || rounds < 1 || E < 1 || E > MRK_MAX_EXPERTS) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }

    /* The kernel bench's workload: roughly gaussian logits, scale ~1.7, same generator. */
    const size_t n = (size_t)tokens * E;
    float *values = malloc(n * 4);
    uint64_t state = 0x12345678;
    for (size_t i = 0; i < n; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        float s = 0;
        for (int sh = 0; sh < 64; sh += 16) s += (float)((state >> sh) & 0xffff) / 65536;
        values[i] = (s - 2) * 1.7f;
    }
    void *input[2];
    float *bias[2] = {NULL, NULL};
    mrk_layer L[2];
    float *w[2];
    int32_t *ids[2];
    for (int i = 0; i < 2; i++) {
        const int d = dt[i];
        input[i] = malloc(n * 4);
        for (size_t q = 0; q < n; q++) {
            if (d) ((uint16_t *)input[i])[q] = narrow[d](values[q]);
            else ((float *)input[i])[q] = values[q];
        }
        /* the bias as a layer built with this gate dtype holds it: rounded to the dtype, widened */
        if (method == MRK_BIASED_GROUPED_TOPK || method == MRK_BIASED_TOPK) {
            bias[i] = malloc(E * sizeof(float));
            for (int e = 0; e < E; e++) bias[i][e] = d ? widen[d](narrow[d](synthetic_bias(e))) : synthetic_bias(e);
        }
        L[i] = (mrk_layer){method, scoring, E, k, G, Gk, renorm, rsf, bias[i]};
        w[i] = malloc((size_t)tokens * k * 4);
        ids[i] = malloc((size_t)tokens * k * 4);
        if (threads && i == 1) route_two_threads(route[1], &L[1], input[1], d, tokens, w[1], ids[1]);
        else route[i](&L[i], input[i], d, tokens, w[i], ids[i], MRK_IMPL_AVX512);
    }
    if (dt[0] == dt[1] && (memcmp(w[0], w[1], (size_t)tokens * k * 4) || memcmp(ids[0], ids[1], (size_t)tokens * k * 4))) {
        fprintf(stderr, "A and B produce different outputs\n");
        return 1;
    }
    /* each timed call covers >= ~4096 tokens' worth of work */
    const int reps = tokens >= 4096 ? 1 : 4096 / tokens;
    double best[2] = {1e30, 1e30}, sum[2] = {0, 0};
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < 2; i++) {
            const int j = (r & 1) ? 1 - i : i;
            const double t0 = now_ns();
            for (int q = 0; q < reps; q++) {
                if (threads && j == 1) route_two_threads(route[1], &L[1], input[1], dt[1], tokens, w[1], ids[1]);
                else route[j](&L[j], input[j], dt[j], tokens, w[j], ids[j], MRK_IMPL_AVX512);
            }
            const double t = (now_ns() - t0) / reps / tokens;
            if (t < best[j]) best[j] = t;
            sum[j] += t;
        }
    if (threads) {
        printf("%-12s %-4s %6d tokens  1 thread min %7.1f mean %7.1f  2 threads min %7.1f mean %7.1f ns/token  speedup min/min %.2fx mean/mean %.2fx\n",
               argv[3], argv[4], tokens, best[0], sum[0] / rounds, best[1], sum[1] / rounds, best[0] / best[1], sum[0] / sum[1]);
        return 0;
    }
    printf("%-12s %-4s %6d tokens  A min %7.1f mean %7.1f  B min %7.1f mean %7.1f ns/token  B/A min %.3f mean %.3f\n",
           argv[3], argv[4], tokens, best[0], sum[0] / rounds, best[1], sum[1] / rounds, best[1] / best[0],
           sum[1] / sum[0]);
    return 0;
}
