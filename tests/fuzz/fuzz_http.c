/* fuzz_http.c - libFuzzer harness for the HTTP request parser (core/http.c).
 *
 * Feeds the input to ev_http_parse_offline() with small limits, so the 413 and
 * 431 paths are as reachable as plain parsing, and checks what must hold for
 * any bytes at all:
 *   - the answer is a count of complete requests or one of -400, -413, -431;
 *   - a stream the server accepts is accepted cut short too, with no more
 *     complete requests than the whole (a prefix can only be "not yet").
 * ASan and UBSan (built in, see the fuzz block of CMakeLists.txt) catch the
 * rest. Build and run with tests/fuzz/run.sh; a crash input reproduces with
 * ./build-fuzz/fuzz_http <file>. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "http.h"

static const ev_http_limits_t limits = {
    .max_header = 256, /* counted over url, header names and values */
    .max_body = 512,
    .max_connections = 1,
    .idle_timeout = 1,
    .read_timeout = 1,
};

static void broken(const char *what, int got, size_t size)
{
    fprintf(stderr, "fuzz_http: %s (got %d for %zu bytes)\n", what, got, size);
    abort(); /* libFuzzer saves the input as a crash artifact */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *bytes = (const char *)data;
    int whole = ev_http_parse_offline(bytes, size, &limits);
    if (whole < 0 && whole != -400 && whole != -413 && whole != -431)
        broken("answer is neither a count nor 400/413/431", whole, size);
    if (whole >= 0 && size > 1) {
        /* where to cut comes from the input itself, so it varies run to run */
        size_t cut = (size * ((size_t)data[size - 1] + 1)) / 257;
        int part = ev_http_parse_offline(bytes, cut, &limits);
        if (part < 0)
            broken("a prefix of an accepted stream was refused", part, cut);
        if (part > whole)
            broken("a prefix holds more requests than the whole stream", part, cut);
    }
    return 0;
}
