/*
 * route_dump.h — the deterministic ROUTE inputs and the one-line output dump shared by
 * v1_compat.c (built against the frozen protocol-1 client) and protocol_v2.c (the current one),
 * so the test suite can compare the two clients' answers line by line. Standard types only: it
 * compiles with either client's headers.
 */
#ifndef ROUTE_DUMP_H
#define ROUTE_DUMP_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A failed check prints FAIL with its place and exits 1 (the Python driver shows stderr). */
#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                                       \
            fprintf(stderr, __VA_ARGS__);                                                                              \
            fprintf(stderr, "\n");                                                                                     \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

/* Logit (t, e): spread over [-2, 2) with no ties that matter. */
static inline float dump_logit(uint64_t t, uint64_t e) {
    uint32_t h = (uint32_t)(t * 1315423911u + e * 2654435761u + 12345u);
    h ^= h >> 15;
    h *= 0x2c1b3c6dU;
    h ^= h >> 12;
    return (float)(h % 4000u) / 1000.0f - 2.0f;
}

static inline void dump_fill_fp32(float *x, uint64_t tokens, uint32_t experts) {
    for (uint64_t t = 0; t < tokens; t++)
        for (uint32_t e = 0; e < experts; e++) x[t * experts + e] = dump_logit(t, e);
}

/* bf16 by truncation of the fp32 value (deterministic; the daemon sees bf16 either way). */
static inline void dump_fill_bf16(uint16_t *x, uint64_t tokens, uint32_t experts) {
    for (uint64_t t = 0; t < tokens; t++)
        for (uint32_t e = 0; e < experts; e++) {
            float f = dump_logit(t, e);
            uint32_t bits;
            memcpy(&bits, &f, 4);
            x[t * experts + e] = (uint16_t)(bits >> 16);
        }
}

/* "route DTYPE TOKENS: id:weightbits ..." on one line. */
static inline void dump_print(const char *dtype, uint64_t tokens, uint32_t k, const float *w, const int32_t *ids) {
    printf("route %s %llu:", dtype, (unsigned long long)tokens);
    for (uint64_t i = 0; i < tokens * k; i++) {
        uint32_t bits;
        memcpy(&bits, &w[i], 4);
        printf(" %d:%08x", ids[i], bits);
    }
    printf("\n");
}

#endif /* ROUTE_DUMP_H */
