/* test_http.c - core/http.c: what the server does with raw request bytes.
 *
 * Everything goes through ev_http_parse_probe(), the connection-less path
 * the fuzz harness uses: it returns the number of complete requests in the
 * bytes, or -status for the error answer the server would send (400 bad
 * syntax, 413 body too large, 431 header section too large or too many
 * header fields). No sockets, no event loop. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

static const ev_http_limits_t limits = {
    .max_header = 16 * 1024,
    .max_body = 1024,
    .max_connections = 16,
    .idle_timeout = 60,
    .read_timeout = 15,
};

static int probe(const char *s) { return ev_http_parse_probe(s, strlen(s), &limits); }

/* cmocka prints integers in hex; statuses read better in decimal */
#define assert_probe(expr, want)                                                                \
    do {                                                                                        \
        int got_ = (expr), want_ = (want);                                                      \
        if (got_ != want_)                                                                      \
            fail_msg("%s: got %d, expected %d", #expr, got_, want_);                            \
    } while (0)

static int probe_with(const char *s, size_t max_header, size_t max_body)
{
    ev_http_limits_t l = limits;
    l.max_header = max_header;
    l.max_body = max_body;
    return ev_http_parse_probe(s, strlen(s), &l);
}

/* A buffer built piece by piece; the tests free it. */
typedef struct {
    char *p;
    size_t len, cap;
} text_t;

static void add(text_t *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    assert_true(n >= 0);
    if (t->len + (size_t)n + 1 > t->cap) {
        t->cap = (t->len + (size_t)n + 1) * 2;
        t->p = realloc(t->p, t->cap);
        assert_non_null(t->p);
    }
    va_start(ap, fmt);
    vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    t->len += (size_t)n;
}

static void add_repeat(text_t *t, char c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        add(t, "%c", c);
}

#define GET "GET /events?limit=10 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n"

/* ---- complete requests ---- */

static void counts_one_simple_get(void **state)
{
    (void)state;
    assert_probe(probe(GET), 1);
}

static void counts_three_pipelined_requests(void **state)
{
    (void)state;
    assert_probe(probe(GET GET GET), 3);
}

static void counts_a_post_with_its_content_length_body(void **state)
{
    (void)state;
    assert_probe(probe("POST /bookings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           "Content-Length: 13\r\n\r\n{\"seats\": 2}\n"),
                     1);
}

static void counts_a_chunked_post_and_the_request_after_it(void **state)
{
    (void)state;
    assert_probe(probe("POST /bookings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" GET),
                     2);
}

static void accepts_a_body_of_exactly_max_body(void **state)
{
    (void)state;
    text_t t = {0};
    add(&t, "POST /x HTTP/1.1\r\nContent-Length: 1024\r\n\r\n");
    add_repeat(&t, 'a', 1024);
    assert_probe(probe(t.p), 1);
    free(t.p);
}

static void accepts_exactly_100_header_fields(void **state)
{
    (void)state;
    text_t t = {0};
    add(&t, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 100; i++)
        add(&t, "X-H%03d: v\r\n", i);
    add(&t, "\r\n");
    assert_probe(probe(t.p), 1);
    free(t.p);
}

/* ---- incomplete input: nothing to answer yet ---- */

static void counts_zero_for_empty_input(void **state)
{
    (void)state;
    assert_probe(ev_http_parse_probe("", 0, &limits), 0);
}

/* Every prefix of a valid stream is a valid, not yet complete stream: the
 * probe must count exactly the requests wholly inside the prefix and never
 * answer an error, wherever the bytes are cut (mid-method, mid-header,
 * mid-chunk-size, between CR and LF). */
static void check_every_prefix(const char *stream, const size_t *ends, int nreq)
{
    size_t len = strlen(stream);
    for (size_t cut = 0; cut <= len; cut++) {
        int expect = 0;
        while (expect < nreq && ends[expect] <= cut)
            expect++;
        int got = ev_http_parse_probe(stream, cut, &limits);
        if (got != expect)
            fail_msg("prefix of %zu/%zu bytes: got %d, expected %d", cut, len, got, expect);
    }
}

static void counts_only_whole_requests_when_cut_at_any_byte(void **state)
{
    (void)state;
    const char *stream = GET;
    size_t ends[] = {strlen(GET)};
    check_every_prefix(stream, ends, 1);
}

static void counts_only_whole_requests_when_a_pipeline_is_cut_at_any_byte(void **state)
{
    (void)state;
    const char *a = "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    const char *b = "PUT /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    const char *c = GET;
    char stream[512];
    snprintf(stream, sizeof stream, "%s%s%s", a, b, c);
    size_t ends[] = {strlen(a), strlen(a) + strlen(b), strlen(a) + strlen(b) + strlen(c)};
    check_every_prefix(stream, ends, 3);
}

/* ---- limits ---- */

static void answers_413_when_content_length_exceeds_max_body(void **state)
{
    (void)state;
    /* the body never arrives: the declared length alone is refused */
    assert_probe(probe("POST /x HTTP/1.1\r\nContent-Length: 1025\r\n\r\n"), -413);
    assert_probe(probe("POST /x HTTP/1.1\r\nContent-Length: 999999999\r\n\r\nabc"), -413);
}

static void answers_413_when_chunked_body_exceeds_max_body(void **state)
{
    (void)state;
    text_t t = {0};
    add(&t, "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 3; i++) { /* 3 x 400 bytes: fine until the third chunk */
        add(&t, "190\r\n");
        add_repeat(&t, 'b', 400);
        add(&t, "\r\n");
    }
    add(&t, "0\r\n\r\n");
    assert_probe(probe(t.p), -413);
    free(t.p);
}

static void answers_431_when_header_bytes_exceed_max_header(void **state)
{
    (void)state;
    text_t t = {0};
    add(&t, "GET / HTTP/1.1\r\nX-Big: ");
    add_repeat(&t, 'h', 2000);
    add(&t, "\r\n\r\n");
    assert_probe(probe_with(t.p, 1024, 1024), -431);
    assert_probe(probe_with(t.p, 4096, 1024), 1);
    free(t.p);
}

static void answers_431_when_the_url_alone_exceeds_max_header(void **state)
{
    (void)state;
    text_t t = {0};
    add(&t, "GET /");
    add_repeat(&t, 'u', 2000);
    add(&t, " HTTP/1.1\r\n\r\n");
    assert_probe(probe_with(t.p, 1024, 1024), -431);
    free(t.p);
}

static void answers_431_for_101_header_fields(void **state)
{
    (void)state;
    text_t t = {0};
    add(&t, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 101; i++)
        add(&t, "X-H%03d: v\r\n", i);
    add(&t, "\r\n");
    assert_probe(probe(t.p), -431);
    free(t.p);
}

/* max_header may be configured up to 1 MiB (config.c), but http_parser has
 * its own 80 KiB header cap (HTTP_MAX_HEADER_SIZE) that http.c leaves at
 * its default: a header section between the two is refused with 400, not
 * accepted. */
static void accepts_headers_up_to_a_max_header_above_80k(void **state)
{
    (void)state;
    text_t t = {0};
    add(&t, "GET / HTTP/1.1\r\nX-Big: ");
    add_repeat(&t, 'h', 90 * 1024);
    add(&t, "\r\n\r\n");
    assert_probe(probe_with(t.p, 256 * 1024, 1024), 1);
    free(t.p);
}

/* ...and a section over both limits must still say 431, not 400. */
static void answers_431_not_400_when_headers_exceed_a_max_header_above_80k(void **state)
{
    (void)state;
    text_t t = {0};
    add(&t, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 50; i++) {
        add(&t, "X-Big-%02d: ", i);
        add_repeat(&t, 'h', 3000);
        add(&t, "\r\n");
    }
    add(&t, "\r\n");
    assert_probe(probe_with(t.p, 100 * 1024, 1024), -431);
    free(t.p);
}

/* ---- bad syntax ---- */

static void answers_400_for_garbage_bytes(void **state)
{
    (void)state;
    assert_probe(probe("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), -400); /* TLS hello */
    assert_probe(probe("HELLO WORLD\r\n\r\n"), -400);
    assert_probe(probe("GET / HTTP/1.1\r\nno colon here\r\n\r\n"), -400);
}

static void answers_400_for_garbage_after_a_valid_request(void **state)
{
    (void)state;
    /* the answer for the stream is the error, whatever came before it */
    assert_probe(probe(GET "\x01\x02garbage\r\n\r\n"), -400);
}

static void answers_400_for_a_bad_content_length(void **state)
{
    (void)state;
    assert_probe(probe("POST /x HTTP/1.1\r\nContent-Length: abc\r\n\r\n"), -400);
    assert_probe(probe("POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), -400);
    assert_probe(probe("POST /x HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n"), -400);
    assert_probe(probe("POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
                     -400);
    assert_probe(probe("POST /x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
                           "\r\n0\r\n\r\n"),
                     -400); /* request smuggling shape */
}

static void answers_400_for_a_bad_chunk_size(void **state)
{
    (void)state;
    assert_probe(probe("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n"),
                     -400);
}

static void answers_400_for_a_nul_byte_in_a_header(void **state)
{
    (void)state;
    static const char value[] = "GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n";
    static const char name[] = "GET / HTTP/1.1\r\nX-\0A: ab\r\n\r\n";
    static const char url[] = "GET /a\0b HTTP/1.1\r\n\r\n";
    assert_probe(ev_http_parse_probe(value, sizeof value - 1, &limits), -400);
    assert_probe(ev_http_parse_probe(name, sizeof name - 1, &limits), -400);
    assert_probe(ev_http_parse_probe(url, sizeof url - 1, &limits), -400);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(counts_one_simple_get),
        cmocka_unit_test(counts_three_pipelined_requests),
        cmocka_unit_test(counts_a_post_with_its_content_length_body),
        cmocka_unit_test(counts_a_chunked_post_and_the_request_after_it),
        cmocka_unit_test(accepts_a_body_of_exactly_max_body),
        cmocka_unit_test(accepts_exactly_100_header_fields),
        cmocka_unit_test(counts_zero_for_empty_input),
        cmocka_unit_test(counts_only_whole_requests_when_cut_at_any_byte),
        cmocka_unit_test(counts_only_whole_requests_when_a_pipeline_is_cut_at_any_byte),
        cmocka_unit_test(answers_413_when_content_length_exceeds_max_body),
        cmocka_unit_test(answers_413_when_chunked_body_exceeds_max_body),
        cmocka_unit_test(answers_431_when_header_bytes_exceed_max_header),
        cmocka_unit_test(answers_431_when_the_url_alone_exceeds_max_header),
        cmocka_unit_test(answers_431_for_101_header_fields),
        cmocka_unit_test(accepts_headers_up_to_a_max_header_above_80k),
        cmocka_unit_test(answers_431_not_400_when_headers_exceed_a_max_header_above_80k),
        cmocka_unit_test(answers_400_for_garbage_bytes),
        cmocka_unit_test(answers_400_for_garbage_after_a_valid_request),
        cmocka_unit_test(answers_400_for_a_bad_content_length),
        cmocka_unit_test(answers_400_for_a_bad_chunk_size),
        cmocka_unit_test(answers_400_for_a_nul_byte_in_a_header),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
