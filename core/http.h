/* http.h - HTTP/1.1 server on libevent bufferevents and http_parser.
 *
 * API in calling order:
 *   ev_http_server_new()  wrap a listening socket; the handler gets each request
 *   handler(req, arg)     must eventually call ev_http_respond() exactly once,
 *                         unless the abort callback ran first (client gone)
 *   ev_http_respond()     queue the answer; keep-alive or close decided here
 *   ev_http_upgrade()     or: answer 101 and hand the socket over (WebSocket)
 *   ev_http_server_drain() stop accepting; connections close after their answer
 *   ev_http_server_free()
 * Errors of the transport itself (bad syntax, limits, timeouts) are answered
 * here with a problem document and never reach the handler; the connection
 * then closes after a bounded lingering close (the client can read the
 * answer even while it is still sending). */
#ifndef EV_HTTP_H
#define EV_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>

struct event_base;
struct evbuffer;

typedef struct {
    size_t max_header;   /* request line + headers, bytes; over: 431 */
    size_t max_body;     /* bytes; over: 413 */
    int max_connections; /* per server, lingering ones included (they are the
                             first closed for room); over: accepted and closed at once */
    int idle_timeout;    /* s between requests on a keep-alive connection */
    int read_timeout;    /* s for a whole request to arrive; over: 408 */
} ev_http_limits_t;

typedef struct {
    const char *name; /* lowercase */
    size_t name_len;
    const char *value;
    size_t value_len;
} ev_http_header_t;

typedef struct ev_http_server ev_http_server_t;
typedef struct ev_http_conn ev_http_conn_t;
typedef struct ev_http_req ev_http_req_t;

struct ev_http_req {
    ev_http_conn_t *conn;
    const char *method;
    char *path;  /* raw path, without query */
    char *query; /* raw query string without '?', or NULL */
    ev_http_header_t *headers;
    size_t nheaders;
    char *body; /* NUL-terminated copy; body_len bytes */
    size_t body_len;
    char request_id[72];
    struct timeval start;
    const char *peer;                     /* textual remote address */
    void (*on_abort)(ev_http_req_t *req); /* client gone before the answer */
    void *ud;                             /* the owner's per-request state */
};

typedef void (*ev_http_handler_fn)(ev_http_req_t *req, void *arg);
/* Called once per answered request, after the answer is queued (for logs, metrics). */
typedef void (*ev_http_log_fn)(const ev_http_req_t *req, int status, size_t bytes,
                               const char *route, void *arg);

ev_http_server_t *ev_http_server_new(struct event_base *base, int listen_fd,
                                     const ev_http_limits_t *limits, ev_http_handler_fn handler,
                                     ev_http_log_fn log, void *arg);
/* headers may be NULL; route is the matched route pattern for logs and metrics. */
void ev_http_respond(ev_http_req_t *req, int status, const ev_http_header_t *headers,
                     size_t nheaders, const char *body, size_t body_len, const char *route);
/* Instead of ev_http_respond(): answers 101 Switching Protocols with headers
 * (Upgrade, Sec-WebSocket-Accept, ...) and gives the socket up. The
 * connection leaves the server (no longer counted, timed out or drained)
 * and req is freed. *fd becomes the caller's; bytes the client sent after
 * its request are moved into in, and answer bytes the socket did not take
 * yet into out (both evbuffers the caller made). The answer is logged with
 * status 101. */
void ev_http_upgrade(ev_http_req_t *req, const ev_http_header_t *headers, size_t nheaders,
                     const char *route, int *fd, struct evbuffer *in, struct evbuffer *out);
const char *ev_http_header(const ev_http_req_t *req, const char *lowercase_name);
const char *ev_http_reason(int status);
void ev_http_server_drain(ev_http_server_t *s);
int ev_http_server_connections(const ev_http_server_t *s);
void ev_http_server_free(ev_http_server_t *s);

/* Feeds raw bytes through a connection-less parser and reports what the
 * server would do with them; used by the fuzz harness and unit tests.
 * Returns the number of complete requests parsed, or -status on an error answer. */
int ev_http_parse_offline(const char *data, size_t len, const ev_http_limits_t *limits);

#endif
