/* test_http.c - core/http.c: what the server does with raw request bytes.
 *
 * Most tests go through ev_http_parse_offline(), the connection-less path the
 * fuzz harness uses: it returns the number of complete requests in the
 * bytes, or -status for the error answer the server would send (400 bad
 * syntax, 413 body too large, 431 header section too large or too many
 * header fields). No sockets, no event loop.
 *
 * The last group runs a real server on 127.0.0.1 (ephemeral port) to check
 * what the offline parse cannot see: the request handed to the handler (method,
 * path, query, lowercase headers, body), also when it arrives one byte per
 * read; and the lingering close after an error answer (the client reads
 * the answer and EOF while it is still sending, within bounds). */
#define _DEFAULT_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http.h"

static const ev_http_limits_t limits = {
    .max_header = 16 * 1024,
    .max_body = 1024,
    .max_connections = 16,
    .idle_timeout = 60,
    .read_timeout = 15,
};

static int offline(const char *s)
{
    return ev_http_parse_offline(s, strlen(s), &limits);
}

/* cmocka prints integers in hex; statuses read better in decimal */
#define assert_parsed(expr, want)                                                                  \
    do {                                                                                           \
        int got_ = (expr), want_ = (want);                                                         \
        if (got_ != want_)                                                                         \
            fail_msg("%s: got %d, expected %d", #expr, got_, want_);                               \
    } while (0)

static int offline_with(const char *s, size_t max_header, size_t max_body)
{
    ev_http_limits_t l = limits;
    l.max_header = max_header;
    l.max_body = max_body;
    return ev_http_parse_offline(s, strlen(s), &l);
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

/* One buffer for the tests that build big requests; freed after the group,
 * so a failing assertion (a longjmp) leaks nothing. */
static text_t built;

static text_t *request_buffer(void)
{
    built.len = 0;
    if (built.p)
        built.p[0] = '\0';
    return &built;
}

static int free_request_buffer(void **state)
{
    (void)state;
    free(built.p);
    built = (text_t){0};
    return 0;
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
    assert_parsed(offline(GET), 1);
}

static void counts_three_pipelined_requests(void **state)
{
    (void)state;
    assert_parsed(offline(GET GET GET), 3);
}

static void counts_a_post_with_its_content_length_body(void **state)
{
    (void)state;
    assert_parsed(offline("POST /bookings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          "Content-Length: 13\r\n\r\n{\"seats\": 2}\n"),
                  1);
}

static void counts_a_chunked_post_and_the_request_after_it(void **state)
{
    (void)state;
    assert_parsed(offline("POST /bookings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" GET),
                  2);
}

static void accepts_a_body_of_exactly_max_body(void **state)
{
    (void)state;
    text_t *t = request_buffer();
    add(t, "POST /x HTTP/1.1\r\nContent-Length: 1024\r\n\r\n");
    add_repeat(t, 'a', 1024);
    assert_parsed(offline(t->p), 1);
}

static void accepts_exactly_100_header_fields(void **state)
{
    (void)state;
    text_t *t = request_buffer();
    add(t, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 100; i++)
        add(t, "X-H%03d: v\r\n", i);
    add(t, "\r\n");
    assert_parsed(offline(t->p), 1);
}

/* ---- incomplete input: nothing to answer yet ---- */

static void counts_zero_for_empty_input(void **state)
{
    (void)state;
    assert_parsed(ev_http_parse_offline("", 0, &limits), 0);
}

/* Every prefix of a valid stream is a valid, not yet complete stream: the
 * the offline parse must count exactly the requests wholly inside the prefix and never
 * answer an error, wherever the bytes are cut (mid-method, mid-header,
 * mid-chunk-size, between CR and LF). */
static void check_every_prefix(const char *stream, const size_t *ends, int nreq)
{
    size_t len = strlen(stream);
    for (size_t cut = 0; cut <= len; cut++) {
        int expect = 0;
        while (expect < nreq && ends[expect] <= cut)
            expect++;
        int got = ev_http_parse_offline(stream, cut, &limits);
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
    assert_parsed(offline("POST /x HTTP/1.1\r\nContent-Length: 1025\r\n\r\n"), -413);
    assert_parsed(offline("POST /x HTTP/1.1\r\nContent-Length: 999999999\r\n\r\nabc"), -413);
}

static void answers_413_when_chunked_body_exceeds_max_body(void **state)
{
    (void)state;
    text_t *t = request_buffer();
    add(t, "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 3; i++) { /* 3 x 400 bytes: fine until the third chunk */
        add(t, "190\r\n");
        add_repeat(t, 'b', 400);
        add(t, "\r\n");
    }
    add(t, "0\r\n\r\n");
    assert_parsed(offline(t->p), -413);
}

static void answers_431_when_header_bytes_exceed_max_header(void **state)
{
    (void)state;
    text_t *t = request_buffer();
    add(t, "GET / HTTP/1.1\r\nX-Big: ");
    add_repeat(t, 'h', 2000);
    add(t, "\r\n\r\n");
    assert_parsed(offline_with(t->p, 1024, 1024), -431);
    assert_parsed(offline_with(t->p, 4096, 1024), 1);
}

static void answers_431_when_the_url_alone_exceeds_max_header(void **state)
{
    (void)state;
    text_t *t = request_buffer();
    add(t, "GET /");
    add_repeat(t, 'u', 2000);
    add(t, " HTTP/1.1\r\n\r\n");
    assert_parsed(offline_with(t->p, 1024, 1024), -431);
}

static void answers_431_for_101_header_fields(void **state)
{
    (void)state;
    text_t *t = request_buffer();
    add(t, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 101; i++)
        add(t, "X-H%03d: v\r\n", i);
    add(t, "\r\n");
    assert_parsed(offline(t->p), -431);
}

/* max_header may be configured up to 1 MiB (config.c), but http_parser has
 * its own 80 KiB header cap (HTTP_MAX_HEADER_SIZE) that http.c leaves at
 * its default: a header section between the two is refused with 400, not
 * accepted. */
static void accepts_headers_up_to_a_max_header_above_80k(void **state)
{
    (void)state;
    text_t *t = request_buffer();
    add(t, "GET / HTTP/1.1\r\nX-Big: ");
    add_repeat(t, 'h', 90 * 1024);
    add(t, "\r\n\r\n");
    assert_parsed(offline_with(t->p, 256 * 1024, 1024), 1);
}

/* ...and a section over both limits must still say 431, not 400. */
static void answers_431_not_400_when_headers_exceed_a_max_header_above_80k(void **state)
{
    (void)state;
    text_t *t = request_buffer();
    add(t, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 50; i++) {
        add(t, "X-Big-%02d: ", i);
        add_repeat(t, 'h', 3000);
        add(t, "\r\n");
    }
    add(t, "\r\n");
    assert_parsed(offline_with(t->p, 100 * 1024, 1024), -431);
}

/* A header value that arrives in one piece longer than the parser's own cap
 * (2 * max_header + 1 KiB) trips that cap before our count sees the value: a
 * server reading a header streamed at it gets such pieces. Still 431. */
static void answers_431_when_one_piece_of_a_header_value_outgrows_the_parser_cap(void **state)
{
    (void)state;
    text_t *t = request_buffer();
    add(t, "GET / HTTP/1.1\r\nX-Big: ");
    add_repeat(t, 'h', 40 * 1024); /* max_header 16 KiB: the parser's cap is 33 KiB */
    assert_parsed(offline(t->p), -431);
}

/* ---- bad syntax ---- */

static void answers_400_for_garbage_bytes(void **state)
{
    (void)state;
    assert_parsed(offline("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), -400); /* TLS hello */
    assert_parsed(offline("HELLO WORLD\r\n\r\n"), -400);
    assert_parsed(offline("GET / HTTP/1.1\r\nno colon here\r\n\r\n"), -400);
}

static void answers_400_for_garbage_after_a_valid_request(void **state)
{
    (void)state;
    /* the answer for the stream is the error, whatever came before it */
    assert_parsed(offline(GET "\x01\x02garbage\r\n\r\n"), -400);
}

static void answers_400_for_a_bad_content_length(void **state)
{
    (void)state;
    assert_parsed(offline("POST /x HTTP/1.1\r\nContent-Length: abc\r\n\r\n"), -400);
    assert_parsed(offline("POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), -400);
    assert_parsed(offline("POST /x HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n"), -400);
    assert_parsed(offline("POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
                  -400);
    assert_parsed(offline("POST /x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
                          "\r\n0\r\n\r\n"),
                  -400); /* request smuggling shape */
}

static void answers_400_for_a_bad_chunk_size(void **state)
{
    (void)state;
    assert_parsed(offline("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n"),
                  -400);
}

static void answers_400_for_a_nul_byte_in_a_header(void **state)
{
    (void)state;
    static const char value[] = "GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n";
    static const char name[] = "GET / HTTP/1.1\r\nX-\0A: ab\r\n\r\n";
    static const char url[] = "GET /a\0b HTTP/1.1\r\n\r\n";
    assert_parsed(ev_http_parse_offline(value, sizeof value - 1, &limits), -400);
    assert_parsed(ev_http_parse_offline(name, sizeof name - 1, &limits), -400);
    assert_parsed(ev_http_parse_offline(url, sizeof url - 1, &limits), -400);
}

/* ---- through a real connection ---- */

#define MAX_SEEN 8

/* What the handler saw of one request, copied before answering. */
typedef struct {
    char method[16], path[128], query[128], body[256];
    int has_query;
    size_t nheaders;
    char names[MAX_SEEN][64], values[MAX_SEEN][128];
} seen_t;

typedef struct {
    struct event_base *base;
    ev_http_server_t *srv;
    struct sockaddr_in addr;
    int listen_fd, client;
    int nseen;
    seen_t seen[4];
} server_t;

static void copy(char *dst, size_t cap, const char *src, size_t len)
{
    snprintf(dst, cap, "%.*s", (int)len, src ? src : "");
}

static void on_request(ev_http_req_t *req, void *arg)
{
    server_t *sv = arg;
    if (sv->nseen < 4) {
        seen_t *s = &sv->seen[sv->nseen];
        copy(s->method, sizeof s->method, req->method, strlen(req->method));
        copy(s->path, sizeof s->path, req->path, strlen(req->path));
        s->has_query = req->query != NULL;
        if (req->query)
            copy(s->query, sizeof s->query, req->query, strlen(req->query));
        copy(s->body, sizeof s->body, req->body, req->body_len);
        s->nheaders = req->nheaders;
        for (size_t i = 0; i < req->nheaders && i < MAX_SEEN; i++) {
            copy(s->names[i], sizeof s->names[i], req->headers[i].name, req->headers[i].name_len);
            copy(s->values[i], sizeof s->values[i], req->headers[i].value,
                 req->headers[i].value_len);
        }
    }
    sv->nseen++;
    ev_http_respond(req, 200, NULL, 0, "ok", 2, "/test");
}

static int server_open(void **state, const ev_http_limits_t *l)
{
    server_t *sv = calloc(1, sizeof *sv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t salen = sizeof sa;
    if (!sv || !(sv->base = event_base_new()))
        return -1;
    sv->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (sv->listen_fd < 0 || bind(sv->listen_fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(sv->listen_fd, 16) != 0 ||
        getsockname(sv->listen_fd, (struct sockaddr *)&sa, &salen) != 0)
        return -1;
    evutil_make_socket_nonblocking(sv->listen_fd);
    sv->srv = ev_http_server_new(sv->base, sv->listen_fd, l, on_request, NULL, sv);
    sv->addr = sa;
    sv->client = socket(AF_INET, SOCK_STREAM, 0);
    if (!sv->srv || sv->client < 0 || connect(sv->client, (struct sockaddr *)&sa, sizeof sa) != 0)
        return -1;
    *state = sv;
    return 0;
}

static int server_setup(void **state)
{
    return server_open(state, &limits);
}

static int server_setup_two_connections(void **state)
{
    ev_http_limits_t l = limits;
    l.max_connections = 2;
    return server_open(state, &l);
}

static int server_teardown(void **state)
{
    server_t *sv = *state;
    close(sv->client);
    ev_http_server_free(sv->srv);
    close(sv->listen_fd);
    event_base_free(sv->base);
    free(sv);
    return 0;
}

/* Runs the loop for ms milliseconds. */
static void pump(server_t *sv, int ms)
{
    struct timeval tv = {0, ms * 1000};
    event_base_loopexit(sv->base, &tv);
    event_base_dispatch(sv->base);
}

/* Sends the bytes (all at once, or one byte per loop turn) and waits until
 * the handler has seen `want` requests, or half a second. */
static void send_request(server_t *sv, const char *bytes, int bytewise, int want)
{
    size_t len = strlen(bytes);
    if (bytewise) {
        for (size_t i = 0; i < len; i++) {
            assert_int_equal(write(sv->client, bytes + i, 1), 1);
            pump(sv, 1);
        }
    } else {
        assert_int_equal(write(sv->client, bytes, len), (ssize_t)len);
    }
    for (int i = 0; i < 100 && sv->nseen < want; i++)
        pump(sv, 5);
    assert_int_equal(sv->nseen, want);
}

static const char *seen_header(const seen_t *s, const char *name)
{
    for (size_t i = 0; i < s->nheaders && i < MAX_SEEN; i++)
        if (strcmp(s->names[i], name) == 0)
            return s->values[i];
    return NULL;
}

#define POST_WITH_HEADERS                                                                          \
    "POST /events/7/bookings?seats=2&hold=1 HTTP/1.1\r\nHost: example.test\r\n"                    \
    "Content-Type: application/json\r\nX-Request-Id: req-42\r\nContent-Length: 11\r\n\r\n"         \
    "{\"seats\":2}"

static void check_post_with_headers(const seen_t *s)
{
    assert_string_equal(s->method, "POST");
    assert_string_equal(s->path, "/events/7/bookings");
    assert_true(s->has_query);
    assert_string_equal(s->query, "seats=2&hold=1");
    assert_string_equal(s->body, "{\"seats\":2}");
    assert_int_equal(s->nheaders, 4);
    assert_string_equal(seen_header(s, "host"), "example.test");
    assert_string_equal(seen_header(s, "content-type"), "application/json");
    assert_string_equal(seen_header(s, "x-request-id"), "req-42");
    assert_string_equal(seen_header(s, "content-length"), "11");
}

static void hands_the_handler_method_path_query_lowercase_headers_and_body(void **state)
{
    server_t *sv = *state;
    send_request(sv, POST_WITH_HEADERS, 0, 1);
    check_post_with_headers(&sv->seen[0]);
    char answer[512] = "";
    pump(sv, 5);
    ssize_t n = recv(sv->client, answer, sizeof answer - 1, MSG_DONTWAIT);
    assert_true(n > 0);
    assert_memory_equal(answer, "HTTP/1.1 200 OK\r\n", 17);
    assert_non_null(strstr(answer, "X-Request-Id: req-42\r\n"));
}

static void hands_over_the_same_request_when_it_arrives_one_byte_per_read(void **state)
{
    server_t *sv = *state;
    send_request(sv, POST_WITH_HEADERS, 1, 1);
    check_post_with_headers(&sv->seen[0]);
}

static void hands_over_pipelined_requests_one_at_a_time_in_order(void **state)
{
    server_t *sv = *state;
    send_request(sv, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b?q HTTP/1.1\r\nHost: y\r\n\r\n", 0,
                 2);
    assert_string_equal(sv->seen[0].path, "/a");
    assert_false(sv->seen[0].has_query);
    assert_string_equal(sv->seen[1].path, "/b");
    assert_string_equal(sv->seen[1].query, "q");
    assert_string_equal(seen_header(&sv->seen[1], "host"), "y");
}

static void keeps_a_header_with_an_empty_value_apart_from_the_next(void **state)
{
    server_t *sv = *state;
    send_request(sv, "GET / HTTP/1.1\r\nX-Empty:\r\nX-Blank:   \r\nHost: x\r\n\r\n", 0, 1);
    const seen_t *s = &sv->seen[0];
    assert_int_equal(s->nheaders, 3);
    assert_string_equal(seen_header(s, "x-empty"), "");
    assert_string_equal(seen_header(s, "x-blank"), "");
    assert_string_equal(seen_header(s, "host"), "x");
}

/* Trailer fields of a chunked body reach the same header callbacks after
 * on_headers_complete has already closed the list, and the name/value
 * pairing slips by one: for the request below the handler gets
 * ("", "X-Trailer") and ("1", "X-Other"), and the value "2" is lost.
 * Expected: every header has a name (trailers either kept whole or dropped). */
static void chunked_trailers_do_not_make_a_header_without_a_name(void **state)
{
    server_t *sv = *state;
    send_request(sv,
                 "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "3\r\nabc\r\n0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n",
                 0, 1);
    const seen_t *s = &sv->seen[0];
    assert_string_equal(s->body, "abc");
    assert_string_equal(seen_header(s, "host"), "x");
    for (size_t i = 0; i < s->nheaders && i < MAX_SEEN; i++)
        if (s->names[i][0] == '\0')
            fail_msg("header %zu of %zu has an empty name (value '%s')", i, s->nheaders,
                     s->values[i]);
    const char *other = seen_header(s, "x-other");
    if (seen_header(s, "x-trailer") && !other)
        fail_msg("the first trailer was kept and the last one lost");
}

/* ---- lingering close ---- */

#define BIG_POST     "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n"
#define LINGER_BYTES (16u << 20) /* http.c */

/* Reads from fd into out (NUL-terminated, starts empty or with what an
 * earlier call read), turning the loop meanwhile, until `until` is in it
 * (NULL: until EOF), EOF or about half a second; returns 1 at EOF. */
static int read_from(server_t *sv, int fd, char *out, size_t cap, const char *until)
{
    size_t got = strlen(out);
    for (int i = 0; i < 100; i++) {
        if (until && strstr(out, until))
            return 0;
        pump(sv, 5);
        ssize_t n = -1;
        while (got + 1 < cap && (n = recv(fd, out + got, cap - 1 - got, MSG_DONTWAIT)) > 0) {
            got += (size_t)n;
            out[got] = '\0';
        }
        if (n == 0)
            return 1;
    }
    return 0;
}

static int socket_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    return err;
}

static int connect_client(server_t *sv)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sv->addr, sizeof sv->addr), 0);
    return fd;
}

/* Sends a request over max_body and part of its body from sv->client,
 * reads the 413 and the EOF after it: the connection now lingers. */
static void start_lingering(server_t *sv)
{
    char chunk[4096], answer[1024] = "";
    memset(chunk, 'x', sizeof chunk);
    assert_int_equal(write(sv->client, BIG_POST, strlen(BIG_POST)), (ssize_t)strlen(BIG_POST));
    assert_int_equal(write(sv->client, chunk, sizeof chunk), (ssize_t)sizeof chunk);
    int eof = read_from(sv, sv->client, answer, sizeof answer, NULL);
    assert_memory_equal(answer, "HTTP/1.1 413 ", 13);
    assert_non_null(strstr(answer, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(answer, "\"status\":413}"));
    if (!eof)
        fail_msg("no EOF after the 413: the write side was not shut");
    assert_int_equal(ev_http_server_connections(sv->srv), 1);
}

static void wait_connections(server_t *sv, int n)
{
    for (int i = 0; i < 200 && ev_http_server_connections(sv->srv) != n; i++)
        pump(sv, 5);
}

static void keeps_reading_after_a_413_so_the_client_sending_gets_no_reset(void **state)
{
    server_t *sv = *state;
    start_lingering(sv);
    char chunk[4096];
    memset(chunk, 'x', sizeof chunk);
    for (int i = 0; i < 64; i++) { /* the rest of the upload: read and dropped */
        assert_int_equal(send(sv->client, chunk, sizeof chunk, MSG_NOSIGNAL),
                         (ssize_t)sizeof chunk);
        pump(sv, 1);
    }
    pump(sv, 20);
    assert_int_equal(socket_error(sv->client), 0); /* a close with unread input would reset */
    assert_int_equal(ev_http_server_connections(sv->srv), 1);
    shutdown(sv->client, SHUT_WR);
    wait_connections(sv, 0); /* the client's EOF ends it */
    assert_int_equal(ev_http_server_connections(sv->srv), 0);
}

static void closes_a_lingering_connection_once_a_flooding_client_sent_16_mib(void **state)
{
    server_t *sv = *state;
    start_lingering(sv);
    char block[65536];
    size_t sent = 0;
    memset(block, 'x', sizeof block);
    for (int i = 0; i < 5000 && ev_http_server_connections(sv->srv) > 0; i++) {
        ssize_t n = send(sv->client, block, sizeof block, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0)
            sent += (size_t)n;
        else if (errno != EAGAIN && errno != EWOULDBLOCK)
            break;
        pump(sv, 1);
    }
    assert_int_equal(ev_http_server_connections(sv->srv), 0);
    if (sent < LINGER_BYTES || sent > 2 * LINGER_BYTES)
        fail_msg("closed after %zu bytes sent (bound %u)", sent, LINGER_BYTES);
}

static void closes_a_lingering_connection_first_when_room_is_needed(void **state)
{
    server_t *sv = *state; /* max_connections 2 */
    char answer[1024] = "";
    start_lingering(sv);
    int idle = connect_client(sv), fresh = -1;
    const char *get = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(write(idle, get, strlen(get)), (ssize_t)strlen(get));
    read_from(sv, idle, answer, sizeof answer, "\r\n\r\nok");
    assert_memory_equal(answer, "HTTP/1.1 200 ", 13);
    assert_int_equal(ev_http_server_connections(sv->srv), 2); /* full: lingering + idle */
    fresh = connect_client(sv);
    answer[0] = '\0';
    assert_int_equal(write(fresh, get, strlen(get)), (ssize_t)strlen(get));
    read_from(sv, fresh, answer, sizeof answer, "\r\n\r\nok");
    assert_memory_equal(answer, "HTTP/1.1 200 ", 13);
    answer[0] = '\0';
    assert_int_equal(write(idle, get, strlen(get)), (ssize_t)strlen(get));
    int eof = read_from(sv, idle, answer, sizeof answer, "\r\n\r\nok");
    close(idle);
    close(fresh);
    if (eof || strncmp(answer, "HTTP/1.1 200 ", 13) != 0)
        fail_msg("the idle keep-alive connection was closed for room, not the lingering one");
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
        cmocka_unit_test(answers_431_when_one_piece_of_a_header_value_outgrows_the_parser_cap),
        cmocka_unit_test(answers_400_for_garbage_bytes),
        cmocka_unit_test(answers_400_for_garbage_after_a_valid_request),
        cmocka_unit_test(answers_400_for_a_bad_content_length),
        cmocka_unit_test(answers_400_for_a_bad_chunk_size),
        cmocka_unit_test(answers_400_for_a_nul_byte_in_a_header),
    };
    const struct CMUnitTest server_tests[] = {
        cmocka_unit_test_setup_teardown(
            hands_the_handler_method_path_query_lowercase_headers_and_body, server_setup,
            server_teardown),
        cmocka_unit_test_setup_teardown(
            hands_over_the_same_request_when_it_arrives_one_byte_per_read, server_setup,
            server_teardown),
        cmocka_unit_test_setup_teardown(hands_over_pipelined_requests_one_at_a_time_in_order,
                                        server_setup, server_teardown),
        cmocka_unit_test_setup_teardown(keeps_a_header_with_an_empty_value_apart_from_the_next,
                                        server_setup, server_teardown),
        cmocka_unit_test_setup_teardown(chunked_trailers_do_not_make_a_header_without_a_name,
                                        server_setup, server_teardown),
        cmocka_unit_test_setup_teardown(
            keeps_reading_after_a_413_so_the_client_sending_gets_no_reset, server_setup,
            server_teardown),
        cmocka_unit_test_setup_teardown(
            closes_a_lingering_connection_once_a_flooding_client_sent_16_mib, server_setup,
            server_teardown),
        cmocka_unit_test_setup_teardown(closes_a_lingering_connection_first_when_room_is_needed,
                                        server_setup_two_connections, server_teardown),
    };
    int failed = cmocka_run_group_tests_name("offline parse", tests, NULL, free_request_buffer);
    return failed + cmocka_run_group_tests_name("server", server_tests, NULL, NULL);
}
