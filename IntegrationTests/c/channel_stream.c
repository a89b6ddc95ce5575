/*
 * channel_stream — a C client on a channel for the kill tests of
 * IntegrationTests/python/test_channels_c.py. Every ROUTE is 1..64 deepseek-v3 fp32 tokens whose
 * answer is checked against the first one of its size.
 *
 * usage: channel_stream ENDPOINT MODE [TIMEOUT_MS]
 *   stream   routes without pause (inline, and shm every 4th call), printing "streaming" after
 *            the first 2000; runs until killed
 *   driven   one command per stdin line, one answer line each:
 *              route  -> "route STATUS path P ms T same S" (S: 1 when the outputs equal the
 *                        reference, taken from the first successful call)
 *              quit   -> exits 0
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moe_router.h"
#include "route_dump.h"

#define T_MAX 64

static moe_client *c;
static moe_layer_info layer;
static float x[T_MAX * 256];
static float want_w[T_MAX + 1][T_MAX * 8];
static int32_t want_ids[T_MAX + 1][T_MAX * 8];
static int have_want[T_MAX + 1];

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* One inline ROUTE of T tokens; *same: the outputs equal the first successful ones of T. */
static int route(uint64_t T, int *same) {
    float w[T_MAX * 8];
    int32_t ids[T_MAX * 8];
    int st = moe_route(c, layer.layer_id, MOE_DTYPE_FP32, T, x, T * 256 * 4, w, ids, T * 8, NULL);
    *same = 0;
    if (st != MOE_OK) return st;
    if (!have_want[T]) {
        memcpy(want_w[T], w, sizeof w);
        memcpy(want_ids[T], ids, sizeof ids);
        have_want[T] = 1;
    }
    *same = memcmp(w, want_w[T], T * 8 * 4) == 0 && memcmp(ids, want_ids[T], T * 8 * 4) == 0;
    return st;
}

static int fail(const char *what, int st) {
    fprintf(stderr, "FAIL %s: %s (%s)\n", what, moe_status_name(st), c ? moe_last_error(c) : "");
    return 1;
}

static int stream(void) {
    moe_segment seg;
    int st = moe_segment_create(c, T_MAX * 256 * 4 + 2 * T_MAX * 8 * 4, &seg);
    if (st != MOE_OK) return fail("segment", st);
    memcpy(seg.base, x, T_MAX * 256 * 4);
    for (unsigned long n = 1;; n++) {
        uint64_t T = 1 + n % T_MAX;
        int same;
        if (n % 4 == 0) {
            st = moe_route_shm(c, layer.layer_id, MOE_DTYPE_FP32, T, &seg, &layer, 0, T_MAX * 256 * 4,
                               T_MAX * 256 * 4 + T_MAX * 8 * 4, NULL);
            same = 1;
        } else {
            st = route(T, &same);
        }
        if (st != MOE_OK) return fail("route", st);
        if (!same) return fail("route: outputs differ from the first of their size", st);
        if (moe_last_route_path(c) != MOE_ROUTE_PATH_CHANNEL) return fail("route: not on the channel", st);
        if (n == 2000) printf("streaming\n");
    }
}

static int driven(void) {
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "quit", 4) == 0) return 0;
        if (strncmp(line, "route", 5) != 0) return fail("unknown command", 0);
        int same;
        double t0 = now_ms();
        int st = route(8, &same);
        printf("route %s path %d ms %.1f same %d\n", moe_status_name(st), moe_last_route_path(c), now_ms() - t0, same);
        if (st != MOE_OK) printf("error %s\n", moe_last_error(c));
    }
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3) return 2;
    int timeout_ms = argc > 3 ? atoi(argv[3]) : 5000;
    dump_fill_fp32(x, T_MAX, 256);
    int st = moe_connect(argv[1], timeout_ms, &c);
    if (st != MOE_OK) return fail("connect", st);
    if ((st = moe_find_layer(c, "deepseek-v3", &layer)) != MOE_OK) return fail("find layer", st);
    int rc = strcmp(argv[2], "stream") == 0 ? stream() : strcmp(argv[2], "driven") == 0 ? driven() : fail("mode", 0);
    moe_close(c);
    return rc;
}
