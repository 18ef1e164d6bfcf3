/* fuzz_ws.c - libFuzzer harness for the WebSocket code that reads network
 * bytes (core/ws.c): the opening-handshake checks and the frame path into
 * wslay.
 *
 * The first byte picks the target:
 *   even: the rest is "method\nupgrade\nconnection\nversion\nkey" (missing
 *         fields are absent headers) for ev_ws_handshake(); it must either
 *         refuse with a reason or accept with a 28-character base64 value;
 *   odd:  the rest is what a client sends after the 101, fed through
 *         ev_ws_parse_offline() (wslay context, our callbacks, small limits) twice,
 *         whole and cut short: never more messages from a prefix.
 * ASan and UBSan (built in) catch the rest. Build and run with
 * tests/fuzz/run.sh; replay with ./build-fuzz/fuzz_ws <file>. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ws.h"

static const ev_ws_limits_t limits = {
    .max_message = 300, /* small, so 1009 is as reachable as a plain message */
    .max_queued = 1024,
    .ping_interval = 1,
    .close_timeout = 1,
};

static void broken(const char *what, size_t size)
{
    fprintf(stderr, "fuzz_ws: %s (%zu bytes)\n", what, size);
    abort();
}

static void fuzz_handshake(const uint8_t *data, size_t size)
{
    char *copy = malloc(size + 1);
    if (!copy)
        return;
    memcpy(copy, data, size);
    copy[size] = '\0';
    const char *field[5] = {NULL, NULL, NULL, NULL, NULL};
    char *p = copy;
    for (int i = 0; i < 5 && p; i++) {
        field[i] = p;
        p = strchr(p, '\n');
        if (p)
            *p++ = '\0';
    }
    char accept[32];
    const char *why = NULL;
    memset(accept, 0, sizeof accept);
    int rc = ev_ws_handshake(field[0], field[1], field[2], field[3], field[4], accept, &why);
    if (rc != 0 && (!why || !*why))
        broken("refused without a reason", size);
    if (rc == 0 && (why || strlen(accept) != 28 || accept[27] != '='))
        broken("accepted without a well-formed Sec-WebSocket-Accept", size);
    free(copy);
}

static void fuzz_frames(const uint8_t *data, size_t size)
{
    int whole = ev_ws_parse_offline(data, size, &limits);
    if (whole < 0)
        return; /* out of memory */
    if (size > 1) {
        size_t cut = (size * ((size_t)data[size - 1] + 1)) / 257;
        int part = ev_ws_parse_offline(data, cut, &limits);
        if (part > whole)
            broken("a prefix delivered more messages than the whole stream", size);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] & 1)
        fuzz_frames(data + 1, size - 1);
    else
        fuzz_handshake(data + 1, size - 1);
    return 0;
}
