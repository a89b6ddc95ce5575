/*
 * inline_timeout — a timed-out inline ROUTE must not leave libzmq reading the caller's buffer.
 *
 * The client library sends large inline inputs zero-copy. This stops the daemon (SIGSTOP) so a
 * 4 MB input cannot be sent in full, lets moe_route time out, then overwrites and frees the
 * input at once and resumes the daemon. Built with AddressSanitizer by the test suite
 * (tests/python/test_c_client.py): if libzmq still held the buffer, its I/O thread would send
 * from freed memory and ASan would abort the process. Afterwards the same client must work.
 *
 * usage: inline_timeout ENDPOINT DAEMON_PID
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moe_router.h"

static int check(int got, int want, const char *what, moe_client *c) {
    if (got == want) return 0;
    fprintf(stderr, "%s: %s, expected %s (%s)\n", what, moe_status_name(got), moe_status_name(want),
            c ? moe_last_error(c) : "");
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    const pid_t daemon = (pid_t)atoi(argv[2]);
    moe_client *c = NULL;
    if (check(moe_connect(argv[1], 500, &c), MOE_OK, "connect", NULL)) return 1;
    moe_layer_info info;
    if (check(moe_find_layer(c, "deepseek-v3", &info), MOE_OK, "find layer", c)) return 1;
    const uint64_t tokens = 8192, E = info.num_experts, k = info.top_k;
    const size_t in_bytes = tokens * E * 2;
    uint16_t *input = malloc(in_bytes);
    float *w = malloc(tokens * k * 4);
    int32_t *ids = malloc(tokens * k * 4);
    for (size_t i = 0; i < tokens * E; i++) input[i] = 0x3f80; /* bf16 1.0 */

    kill(daemon, SIGSTOP);
    int st = moe_route(c, info.layer_id, MOE_DTYPE_BF16, tokens, input, in_bytes, w, ids, tokens * k, NULL);
    memset(input, 0xab, in_bytes);
    free(input);
    kill(daemon, SIGCONT);
    if (check(st, MOE_ERR_CLIENT_TIMEOUT, "route while the daemon is stopped", c)) return 1;
    if (!strstr(moe_last_error(c), "connection reset")) {
        fprintf(stderr, "the error does not say the connection was reset: %s\n", moe_last_error(c));
        return 1;
    }
    usleep(300 * 1000); /* the daemon catches up; a read from the freed buffer would happen now */
    if (check(moe_ping(c), MOE_OK, "ping after the timeout", c)) return 1;
    uint16_t small[256];
    for (int i = 0; i < 256; i++) small[i] = (uint16_t)(0x3f00 + i);
    if (check(moe_route(c, info.layer_id, MOE_DTYPE_BF16, 1, small, sizeof small, w, ids, k, NULL), MOE_OK,
              "route after the timeout", c))
        return 1;
    moe_close(c);
    free(w);
    free(ids);
    printf("timed-out inline route released its input\n");
    return 0;
}
