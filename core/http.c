#define _GNU_SOURCE /* accept4 */
/* http.c - HTTP/1.1 server: plain events and evbuffers for I/O, http_parser
 * for syntax.
 *
 * Design. One ev_http_conn_t per TCP connection. Bytes are fed to http_parser
 * chunk by chunk straight from the input evbuffer (no pullup). Callbacks build
 * the request (url, headers, body) under the limits; on message complete the
 * parser is paused, so a pipelined next request waits in the buffer until the
 * current one is answered. While a request is with the handler, reading goes
 * on only to notice a client that goes away (the abort callback then tells the
 * owner, who must not answer). The deadline timer bounds how long a request
 * may take to arrive (408); the read event's timeout bounds idle keep-alive
 * time. I/O is done here rather than by a bufferevent: one recv() per
 * readable event and one writev() per answer (a bufferevent adds an
 * ioctl(FIONREAD) to every read and an EV_WRITE registration to every
 * answer), with the output evbuffer used only when the socket is full. Every
 * transport error is answered here with a problem document and Connection:
 * close, and the connection then lingers (start_linger: write side shut,
 * input dropped for a bounded time) so that a client still sending reads
 * the answer instead of a reset.
 *
 * Upgrade: ev_http_upgrade() writes the 101 and hands fd and buffered bytes
 * to the new owner (core/ws.c); the connection struct then only waits to be
 * freed (at once, or when the parse loop that dispatched it unwinds). */
#include "http.h"
#include "problem.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define MAX_HEADERS            100
#define EVICT_BATCH            16   /* idle connections closed per descriptor shortage */
#define ACCEPT_PAUSE_MS        100  /* accepting rests this long when nothing could be closed */
#define FIRST_REQUEST_GRACE_MS 1000 /* a silent new connection is not closed for room sooner */
#define SHED_BATCH             64   /* waiting connections answered 503 per shortage */
#define SHED_LOG_S             5    /* at most one descriptor-shortage line per this many seconds */
#define DRAIN_GRACE_S          1    /* draining: idle and lingering connections get this long */
/* Lingering close after an error answer (start_linger): nginx's
 * lingering_close with lingering_timeout 5 s and lingering_time 30 s, shorter
 * here and bounded in bytes too, since the client is one we refused. */
#define LINGER_QUIET_S 2           /* closed after this long without a byte */
#define LINGER_TOTAL_S 10          /* ... after this long in all */
#define LINGER_BYTES   (16u << 20) /* ... or once this much was dropped */
#define LINGER_READ    16384       /* at most this much dropped per readable event */

struct ev_http_server {
    struct event_base *base;
    struct evconnlistener *listener;
    ev_http_limits_t limits;
    ev_http_handler_fn handler;
    ev_http_log_fn log;
    void *arg;
    int nconns;
    int nlinger; /* of nconns, lingering: the first to close for room */
    int draining;
    ev_http_conn_t *conns, *oldest; /* all live connections, newest first */
    int reserve_fd;                 /* held open to shed one connection when out of descriptors */
    struct event *resume;           /* re-enables accepting after a pause (descriptors ran out) */
    time_t shed_logged;             /* descriptor shortage: one log line per SHED_LOG_S */
    unsigned long shed_since;
    unsigned long long next_id;
    char id_prefix[17];
};

typedef struct {
    char *data;
    size_t len, cap;
} dynbuf_t;

struct ev_http_conn {
    ev_http_server_t *srv;
    int fd; /* -1 in offline mode */
    struct evbuffer *in, *out;
    struct event *rev; /* readable, persistent, with the idle timeout */
    struct event *wev; /* writable, while output is queued */
    int reading;       /* rev is added */
    http_parser parser;
    dynbuf_t url, body, hdr; /* hdr: "name\0value\0" pairs */
    size_t header_bytes;
    size_t nheaders;
    int in_value;        /* last header callback was a value */
    int mid_request;     /* some bytes of a request have arrived */
    int headers_done;    /* later header callbacks are chunked trailers */
    int error_status;    /* a limit was hit while parsing: answer this */
    int complete;        /* a whole request is waiting to be handled */
    ev_http_req_t *req;  /* request with the handler, or NULL */
    int in_parse;        /* parse loop running: do not re-enter */
    int closing;         /* close once output is flushed */
    int linger;          /* ... and linger first: input may still be on its way */
    int lingering;       /* answered and shut for writing; discarding input */
    size_t linger_bytes; /* discarded so far */
    int keep_alive;
    int served;          /* a request has begun on this connection */
    long long opened_ms; /* accepted at (the loop's cached clock) */
    struct event *deadline;
    char peer[64];
    ev_http_conn_t *prev, *next;
    int offline_count; /* requests seen, offline mode (bev == NULL) */
};

static void conn_free(ev_http_conn_t *c);
static void conn_close(ev_http_conn_t *c);
static void conn_parse(ev_http_conn_t *c);
static void conn_reading(ev_http_conn_t *c, int on);
static void send_continue(ev_http_conn_t *c);

/* ---- small buffers ---- */

static int dyn_append(dynbuf_t *b, const char *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static void dyn_reset(dynbuf_t *b)
{
    b->len = 0;
}

static void dyn_free(dynbuf_t *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* ---- parser callbacks: build the request under the limits ---- */

static int count_header_bytes(ev_http_conn_t *c, size_t n)
{
    c->header_bytes += n;
    if (c->header_bytes > c->srv->limits.max_header) {
        c->error_status = 431;
        return -1;
    }
    return 0;
}

static int on_message_begin(http_parser *p)
{
    ev_http_conn_t *c = p->data;
    dyn_reset(&c->url);
    dyn_reset(&c->body);
    dyn_reset(&c->hdr);
    c->header_bytes = 0;
    c->nheaders = 0;
    c->in_value = 0;
    c->headers_done = 0;
    c->mid_request = 1;
    c->served = 1;
    if (c->deadline) {
        struct timeval tv = {c->srv->limits.read_timeout, 0};
        event_add(c->deadline, &tv);
    }
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    ev_http_conn_t *c = p->data;
    if (count_header_bytes(c, n) != 0)
        return -1;
    return dyn_append(&c->url, at, n);
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    ev_http_conn_t *c = p->data;
    if (count_header_bytes(c, n) != 0)
        return -1;
    if (c->headers_done)
        return 0; /* trailers of a chunked body: counted, not kept */
    if (c->in_value || c->nheaders == 0) {
        if (c->nheaders == MAX_HEADERS) {
            c->error_status = 431;
            return -1;
        }
        if (c->nheaders > 0 && dyn_append(&c->hdr, "", 1) != 0) /* end previous value */
            return -1;
        c->nheaders++;
        c->in_value = 0;
    }
    return dyn_append(&c->hdr, at, n);
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    ev_http_conn_t *c = p->data;
    if (count_header_bytes(c, n) != 0)
        return -1;
    if (c->headers_done)
        return 0;
    if (!c->in_value) {
        if (dyn_append(&c->hdr, "", 1) != 0) /* end name */
            return -1;
        c->in_value = 1;
    }
    return dyn_append(&c->hdr, at, n);
}

/* Expect: 100-continue, with a body to come: the client waits for a go. */
static int expects_continue(const ev_http_conn_t *c)
{
    const http_parser *p = &c->parser;
    int body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENTLENGTH) && p->content_length > 0);
    if (p->http_minor < 1 || !body)
        return 0;
    const char *h = c->hdr.data, *end = c->hdr.data + c->hdr.len;
    for (size_t i = 0; h && i < c->nheaders && h < end; i++) {
        const char *value = h + strlen(h) + 1;
        if (strcasecmp(h, "expect") == 0 && strcasecmp(value, "100-continue") == 0)
            return 1;
        h = value + strlen(value) + 1;
    }
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    ev_http_conn_t *c = p->data;
    c->headers_done = 1;
    if (c->nheaders > 0 && !c->in_value && dyn_append(&c->hdr, "", 1) != 0)
        return -1; /* a name with no value callback: empty value */
    if (c->nheaders > 0 && dyn_append(&c->hdr, "", 1) != 0)
        return -1;
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->srv->limits.max_body) {
        c->error_status = 413;
        return -1;
    }
    if (c->fd >= 0 && expects_continue(c))
        send_continue(c);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    ev_http_conn_t *c = p->data;
    if (c->body.len + n > c->srv->limits.max_body) {
        c->error_status = 413;
        return -1;
    }
    return dyn_append(&c->body, at, n);
}

static int on_message_complete(http_parser *p)
{
    ev_http_conn_t *c = p->data;
    c->complete = 1;
    c->mid_request = 0;
    http_parser_pause(p, 1); /* one request at a time; the rest waits in the buffer */
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- answering ---- */

const char *ev_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

static const char *http_date(void)
{
    static char buf[40];
    static time_t cached;
    time_t now = time(NULL);
    if (now != cached) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        cached = now;
    }
    return buf;
}

/* Response heads are built in one flat buffer: no printf on the hot path. */
typedef struct {
    char *p;
    size_t len, cap;
    int overflow;
} head_t;

static void head_add(head_t *h, const char *s, size_t n)
{
    if (h->len + n > h->cap) {
        h->overflow = 1;
        return;
    }
    memcpy(h->p + h->len, s, n);
    h->len += n;
}

static void head_str(head_t *h, const char *s)
{
    head_add(h, s, strlen(s));
}

static void head_num(head_t *h, size_t v)
{
    char digits[24];
    int i = sizeof digits;
    do {
        digits[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    head_add(h, digits + i, sizeof digits - (size_t)i);
}

static void write_head(head_t *h, int status, size_t body_len, int keep_alive,
                       const char *request_id)
{
    head_str(h, "HTTP/1.1 ");
    head_num(h, (size_t)status);
    head_str(h, " ");
    head_str(h, ev_http_reason(status));
    head_str(h, "\r\nServer: evently\r\nDate: ");
    head_str(h, http_date());
    head_str(h, "\r\nContent-Length: ");
    head_num(h, body_len);
    head_str(h, keep_alive ? "\r\nConnection: keep-alive\r\n" : "\r\nConnection: close\r\n");
    if (request_id && *request_id) {
        head_str(h, "X-Request-Id: ");
        head_str(h, request_id);
        head_str(h, "\r\n");
    }
}

/* Writes head + body: straight to the socket when nothing is queued (the
 * common case, and no EV_WRITE registration at all), the rest via the
 * output evbuffer, which the writable event finishes. */
static void send_answer(ev_http_conn_t *c, const head_t *h, const char *body, size_t body_len)
{
    struct evbuffer *out = c->out;
    size_t done = 0, total = h->len + body_len;
    if (evbuffer_get_length(out) == 0) {
        struct iovec iov[2] = {{h->p, h->len}, {(void *)body, body_len}};
        ssize_t n = writev(c->fd, iov, body_len ? 2 : 1);
        if (n > 0)
            done = (size_t)n;
    }
    if (done < h->len) {
        evbuffer_add(out, h->p + done, h->len - done);
        evbuffer_add(out, body, body_len);
    } else if (done < total) {
        evbuffer_add(out, body + (done - h->len), total - done);
    }
    if (evbuffer_get_length(out) > 0) { /* the socket is full: finish when writable */
        struct timeval tv = {c->srv->limits.read_timeout, 0};
        event_add(c->wev, &tv);
    }
}

static int request_id_ok(const char *v);

/* The id for an answer given before a request is built: the client's
 * X-Request-Id when its header got through the parser, else a fresh one. */
static void transport_request_id(ev_http_conn_t *c, char *out, size_t cap)
{
    const char *h = c->hdr.data, *end = c->hdr.data + c->hdr.len;
    for (size_t i = 0; h && i < c->nheaders && h < end; i++) {
        const char *name = h;
        const char *value = name + strlen(name) + 1;
        if (value >= end)
            break;
        if (strcasecmp(name, "x-request-id") == 0 && value + strlen(value) < end &&
            request_id_ok(value)) {
            snprintf(out, cap, "%s", value);
            return;
        }
        h = value + strlen(value) + 1;
    }
    snprintf(out, cap, "%s%08llx", c->srv->id_prefix, c->srv->next_id++);
}

static void send_continue(ev_http_conn_t *c)
{
    char msg[] = "HTTP/1.1 100 Continue\r\n\r\n";
    head_t h = {msg, sizeof msg - 1, sizeof msg - 1, 0};
    send_answer(c, &h, "", 0);
}

/* Answers a transport error and closes; the request never reached the handler. */
static void conn_fail(ev_http_conn_t *c, int status)
{
    static const char *types[] = {[0] = "bad-request",
                                  [1] = "request-timeout",
                                  [2] = "payload-too-large",
                                  [3] = "header-too-large",
                                  [4] = "unavailable"};
    int t = status == 408 ? 1 : status == 413 ? 2 : status == 431 ? 3 : status == 503 ? 4 : 0;
    char body[256];
    int n =
        ev_problem_body(body, sizeof body, status, ev_http_reason(status), types[t], NULL, NULL);
    if (c->fd >= 0) {
        char buf[512], id[72];
        head_t h = {buf, 0, sizeof buf, 0};
        transport_request_id(c, id, sizeof id);
        write_head(&h, status, (size_t)n, 0, id);
        head_str(&h, "Content-Type: application/problem+json\r\n\r\n");
        send_answer(c, &h, body, (size_t)n);
        conn_reading(c, 0);
    }
    c->closing = 1;
    c->linger = 1; /* the client may be sending still: a body, the rest of its headers */
    if (c->deadline)
        event_del(c->deadline);
    ev_debug("http %s: answered %d and closing", c->peer, status);
}

static int header_name_is(const ev_http_header_t *h, const char *name)
{
    return strlen(name) == h->name_len && strncasecmp(h->name, name, h->name_len) == 0;
}

void ev_http_respond(ev_http_req_t *req, int status, const ev_http_header_t *headers,
                     size_t nheaders, const char *body, size_t body_len, const char *route)
{
    ev_http_conn_t *c = req->conn;
    ev_http_server_t *s = c->srv;
    int keep = c->keep_alive && !s->draining;
    int no_body = status == 204 || status == 304 || (status >= 100 && status < 200);
    char buf[4096];
    head_t h = {buf, 0, sizeof buf, 0};
    size_t room = 512; /* for our own lines */
    for (size_t i = 0; i < nheaders; i++)
        room += headers[i].name_len + headers[i].value_len + 4;
    if (room > sizeof buf) {
        h.p = malloc(room);
        h.cap = room;
    }
    if (!h.p) { /* no memory for a head: the connection cannot be answered */
        c->req = NULL;
        free(req);
        c->closing = 1;
        if (!c->in_parse)
            conn_free(c);
        return;
    }
    write_head(&h, status, no_body ? 0 : body_len, keep, req->request_id);
    for (size_t i = 0; i < nheaders; i++) {
        const ev_http_header_t *hd = &headers[i];
        if (header_name_is(hd, "content-length") || header_name_is(hd, "connection") ||
            header_name_is(hd, "x-request-id"))
            continue; /* ours to set */
        head_add(&h, hd->name, hd->name_len);
        head_add(&h, ": ", 2);
        head_add(&h, hd->value, hd->value_len);
        head_add(&h, "\r\n", 2);
    }
    head_add(&h, "\r\n", 2);
    int send_body = !no_body && body_len && req->method[0] != 'H'; /* HEAD: head only */
    send_answer(c, &h, send_body ? body : "", send_body ? body_len : 0);
    if (h.p != buf)
        free(h.p);
    if (s->log)
        s->log(req, status, body_len, route, s->arg);
    c->req = NULL;
    free(req);
    if (!keep) {
        c->closing = 1;
        c->linger = evbuffer_get_length(c->in) > 0; /* pipelined requests we will not answer */
        conn_reading(c, 0);
        if (!c->in_parse && evbuffer_get_length(c->out) == 0)
            conn_close(c); /* all written; else the write callback closes once flushed */
        return;
    }
    /* idle time counts from the answer, not from the request's last bytes
     * (re-arming a pending timeout costs a heap update, no syscall) */
    c->reading = 0; /* re-add: the idle time starts again now */
    conn_reading(c, 1);
    if (!c->in_parse) {
        http_parser_pause(&c->parser, 0);
        conn_parse(c);
    }
}

/* The 101 head: no Content-Length (a 1xx has no body) and Connection: Upgrade. */
static void write_upgrade_head(head_t *h, const ev_http_req_t *req, const ev_http_header_t *headers,
                               size_t nheaders)
{
    head_str(h, "HTTP/1.1 101 Switching Protocols\r\nServer: evently\r\nDate: ");
    head_str(h, http_date());
    head_str(h, "\r\nConnection: Upgrade\r\nX-Request-Id: ");
    head_str(h, req->request_id);
    head_str(h, "\r\n");
    for (size_t i = 0; i < nheaders; i++) {
        const ev_http_header_t *hd = &headers[i];
        if (header_name_is(hd, "content-length") || header_name_is(hd, "connection") ||
            header_name_is(hd, "x-request-id"))
            continue;
        head_add(h, hd->name, hd->name_len);
        head_add(h, ": ", 2);
        head_add(h, hd->value, hd->value_len);
        head_add(h, "\r\n", 2);
    }
    head_add(h, "\r\n", 2);
}

void ev_http_upgrade(ev_http_req_t *req, const ev_http_header_t *headers, size_t nheaders,
                     const char *route, int *fd, struct evbuffer *in, struct evbuffer *out)
{
    ev_http_conn_t *c = req->conn;
    ev_http_server_t *s = c->srv;
    char buf[2048];
    head_t h = {buf, 0, sizeof buf, 0};
    write_upgrade_head(&h, req, headers, nheaders);
    if (h.overflow) /* our own few headers never fill it; a caller bug */
        ev_error("[%s] 101 head too long; headers cut", req->request_id);
    send_answer(c, &h, "", 0);
    if (s->log)
        s->log(req, 101, 0, route, s->arg);
    c->req = NULL;
    free(req);
    /* from here the socket is the caller's: no event of ours may touch it */
    event_del(c->rev);
    event_del(c->wev);
    event_del(c->deadline);
    c->reading = 0;
    evbuffer_add_buffer(in, c->in);
    evbuffer_add_buffer(out, c->out);
    *fd = c->fd;
    c->fd = -1;
    s->nconns--;
    c->closing = 1;
    if (!c->in_parse)
        conn_free(c); /* else conn_parse frees it as it unwinds (closing, nothing to write) */
}

const char *ev_http_header(const ev_http_req_t *req, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < req->nheaders; i++)
        if (req->headers[i].name_len == n && memcmp(req->headers[i].name, name, n) == 0)
            return req->headers[i].value;
    return NULL;
}

/* ---- handing a request over ---- */

static int request_id_ok(const char *v)
{
    size_t n = 0;
    for (; v[n]; n++)
        if (v[n] <= 0x20 || v[n] >= 0x7f || v[n] == '"' || v[n] == '\\')
            return 0;
    return n > 0 && n <= 64;
}

/* "<8 hex of the worker>" + "<counter, 8+ hex>", without printf (per request). */
static void make_request_id(ev_http_server_t *s, char *out)
{
    static const char hex[] = "0123456789abcdef";
    memcpy(out, s->id_prefix, 8);
    unsigned long long n = s->next_id++;
    char tmp[16];
    int k = 0;
    do {
        tmp[k++] = hex[n & 15];
        n >>= 4;
    } while (n || k < 8);
    for (int i = 0; i < k; i++)
        out[8 + i] = tmp[k - 1 - i];
    out[8 + k] = '\0';
}

/* Lays the request out in one allocation: struct, header array, strings. */
static ev_http_req_t *req_build(ev_http_conn_t *c)
{
    size_t size = sizeof(ev_http_req_t) + c->nheaders * sizeof(ev_http_header_t) + c->url.len + 1 +
                  c->body.len + 1;
    ev_http_req_t *r = calloc(1, size);
    if (!r)
        return NULL;
    r->conn = c;
    r->method = http_method_str(c->parser.method);
    r->headers = (ev_http_header_t *)(r + 1);
    char *p = (char *)(r->headers + c->nheaders);
    memcpy(p, c->url.data ? c->url.data : "", c->url.len + 1);
    r->path = p;
    char *q = strchr(p, '?');
    if (q) {
        *q = '\0';
        r->query = q + 1;
    }
    char *frag = strchr(q ? q + 1 : p, '#');
    if (frag)
        *frag = '\0';
    p += c->url.len + 1;
    if (c->body.len)
        memcpy(p, c->body.data, c->body.len);
    p[c->body.len] = '\0';
    r->body = p;
    r->body_len = c->body.len;
    /* header strings stay in c->hdr until the next request begins: the
     * parser is paused until this request is answered, so that holds */
    char *h = c->hdr.data;
    for (size_t i = 0; i < c->nheaders; i++) {
        ev_http_header_t *hd = &r->headers[i];
        for (char *k = h; *k; k++)
            if (*k >= 'A' && *k <= 'Z')
                *k = (char)(*k + 32);
        hd->name = h;
        hd->name_len = strlen(h);
        h += hd->name_len + 1;
        hd->value = h;
        hd->value_len = strlen(h);
        h += hd->value_len + 1;
    }
    r->nheaders = c->nheaders;
    r->peer = c->peer;
    gettimeofday(&r->start, NULL);
    const char *given = ev_http_header(r, "x-request-id");
    if (given && request_id_ok(given))
        memcpy(r->request_id, given, strlen(given) + 1); /* at most 64 bytes: checked */
    else
        make_request_id(c->srv, r->request_id);
    return r;
}

static void dispatch(ev_http_conn_t *c)
{
    c->complete = 0;
    if (c->deadline)
        event_del(c->deadline);
    if (c->fd < 0) { /* offline mode */
        c->offline_count++;
        http_parser_pause(&c->parser, 0);
        return;
    }
    c->keep_alive = http_should_keep_alive(&c->parser);
    ev_http_req_t *r = req_build(c);
    if (!r) {
        conn_fail(c, 503);
        return;
    }
    c->req = r;
    c->srv->handler(r, c->srv->arg);
}

/* The answer to a parse error: the limit a callback hit, else 431 for the
 * parser's own header cap (reached before our count when a value arrives in
 * one piece longer than max_header), else 400. */
static int error_answer(const ev_http_conn_t *c)
{
    if (c->error_status)
        return c->error_status;
    return HTTP_PARSER_ERRNO(&c->parser) == HPE_HEADER_OVERFLOW ? 431 : 400;
}

/* Feeds buffered input to the parser until a request is complete, input runs
 * out or an error is answered. */
static void conn_parse(ev_http_conn_t *c)
{
    struct evbuffer *in = c->in;
    c->in_parse = 1;
    while (!c->closing && !c->req && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        size_t used = http_parser_execute(&c->parser, &settings, v.iov_base, v.iov_len);
        evbuffer_drain(in, used);
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (c->complete) {
            dispatch(c);
            if (!c->req && !c->closing) /* answered at once: next request */
                http_parser_pause(&c->parser, 0);
            continue;
        }
        if (e != HPE_OK) {
            conn_fail(c, error_answer(c));
            break;
        }
        if (used < v.iov_len)
            break; /* cannot happen without an error; be safe */
    }
    c->in_parse = 0;
    if (c->closing && evbuffer_get_length(c->out) == 0)
        conn_close(c);
}

/* ---- connection events ---- */

static void conn_reading(ev_http_conn_t *c, int on)
{
    if (on && !c->reading) {
        /* a connection that has sent nothing yet gets the time a request may
         * take to arrive, not the keep-alive idle time: holding sockets open
         * without a request costs the attacker nothing and us a descriptor */
        const ev_http_limits_t *l = &c->srv->limits;
        int t = c->served || l->read_timeout > l->idle_timeout ? l->idle_timeout : l->read_timeout;
        struct timeval idle = {t, 0};
        /* libevent takes an expired event out of epoll until its callback
         * runs; re-armed meanwhile by another callback of the same pass (an
         * answer going out as its read timeout expired), it would keep only
         * the timeout and never see the next request. Not watched for reads:
         * start it afresh (no syscall when it is). */
        if (!event_pending(c->rev, EV_READ, NULL))
            event_del(c->rev);
        event_add(c->rev, &idle);
    } else if (!on && c->reading) {
        event_del(c->rev);
    }
    c->reading = on;
}

/* A read-side timeout: idle keep-alive, or a request that stalled. */
static void read_timed_out(ev_http_conn_t *c)
{
    if (c->req) {
        /* idle time ran out while the handler works (it has its own
         * deadline): keep watching for EOF */
        c->reading = 0;
        conn_reading(c, 1);
        return;
    }
    if (c->mid_request) {
        conn_fail(c, 408);
        if (evbuffer_get_length(c->out) == 0)
            conn_close(c); /* written at once: nothing left to flush */
        return;
    }
    conn_free(c); /* idle keep-alive connection */
}

/* Lingering close. Closing a socket with unread input makes the kernel send
 * a reset, and a reset can destroy the answer in the client's buffer before
 * it is read: a client still uploading would see "connection reset", not
 * its 413. So, once an error answer is written, the write side is shut (the
 * client reads the answer, then EOF) and input is read and dropped until the
 * client's EOF, LINGER_QUIET_S without a byte, LINGER_TOTAL_S in all or
 * LINGER_BYTES, whichever comes first; then the socket closes. Meanwhile the
 * connection counts against max_connections and is the first closed when
 * room is needed (evict_idle). ws.c start_linger does the same for
 * WebSockets. */
static void start_linger(ev_http_conn_t *c)
{
    ev_http_server_t *s = c->srv;
    if (shutdown(c->fd, SHUT_WR) != 0) { /* the client is gone already */
        conn_free(c);
        return;
    }
    c->lingering = 1;
    s->nlinger++;
    event_del(c->wev);
    evbuffer_drain(c->in, evbuffer_get_length(c->in));
    dyn_free(&c->url); /* nothing of the request is needed any more */
    dyn_free(&c->body);
    dyn_free(&c->hdr);
    struct timeval quiet = {LINGER_QUIET_S, 0};
    struct timeval total = {s->draining ? DRAIN_GRACE_S : LINGER_TOTAL_S, 0};
    event_add(c->rev, &quiet); /* persistent: each read re-arms the quiet time */
    c->reading = 1;
    event_add(c->deadline, &total);
    ev_debug("http %s: lingering", c->peer);
}

/* One recv per readable event (level-triggered: the rest wakes us again), so
 * a flooding client gets a turn like any other connection. */
static void linger_read(ev_http_conn_t *c, short what)
{
    char sink[LINGER_READ];
    ssize_t n = (what & EV_READ) ? recv(c->fd, sink, sizeof sink, 0) : 0;
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n > 0) {
        c->linger_bytes += (size_t)n;
        if (c->linger_bytes < LINGER_BYTES)
            return;
    }
    ev_debug("http %s: lingered, %zu bytes dropped (%s)", c->peer, c->linger_bytes,
             n > 0                        ? "enough"
             : n == 0 && (what & EV_READ) ? "eof"
             : n == 0                     ? "quiet"
                                          : "error");
    conn_free(c);
}

/* The answer is out (or there is none): close, lingering first if input may
 * still be on its way. */
static void conn_close(ev_http_conn_t *c)
{
    if (c->linger && c->fd >= 0)
        start_linger(c);
    else
        conn_free(c);
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    ev_http_conn_t *c = arg;
    if (c->lingering) {
        linger_read(c, what);
        return;
    }
    if (what & EV_TIMEOUT) {
        read_timed_out(c);
        return;
    }
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(c->in, 16384, &v, 1) < 1) {
        conn_free(c);
        return;
    }
    ssize_t n = recv(fd, v.iov_base, v.iov_len, 0);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        conn_free(c); /* EOF or error: an in-flight request is aborted */
        return;
    }
    v.iov_len = (size_t)n;
    evbuffer_commit_space(c->in, &v, 1);
    if (c->req) {
        /* pipelined bytes wait; stop reading if a client floods us meanwhile */
        size_t cap = c->srv->limits.max_header + c->srv->limits.max_body;
        if (evbuffer_get_length(c->in) > cap)
            conn_reading(c, 0);
        return;
    }
    conn_parse(c);
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    ev_http_conn_t *c = arg;
    if (what & EV_TIMEOUT) {
        conn_free(c); /* a client that does not read its answer */
        return;
    }
    if (evbuffer_write(c->out, fd) < 0 && errno != EAGAIN && errno != EINTR) {
        conn_free(c);
        return;
    }
    if (evbuffer_get_length(c->out) > 0)
        return; /* still full: the persistent event fires again */
    event_del(c->wev);
    if (c->closing)
        conn_close(c);
    else if (!c->req && !c->reading)
        conn_reading(c, 1);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    ev_http_conn_t *c = arg;
    (void)fd;
    (void)what;
    if (c->lingering) {
        conn_free(c); /* LINGER_TOTAL_S is up */
        return;
    }
    if (!c->req)
        conn_fail(c, 408);
    if (c->closing && evbuffer_get_length(c->out) == 0)
        conn_close(c);
}

static void conn_free(ev_http_conn_t *c)
{
    ev_http_server_t *s = c->srv;
    if (c->req) {
        ev_http_req_t *r = c->req;
        c->req = NULL;
        if (r->on_abort)
            r->on_abort(r); /* the owner drops its work; no answer will be written */
        free(r);
    }
    if (c->prev)
        c->prev->next = c->next;
    else if (s && s->conns == c)
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else if (s && s->oldest == c)
        s->oldest = c->prev;
    if (c->deadline)
        event_free(c->deadline);
    if (c->rev)
        event_free(c->rev);
    if (c->wev)
        event_free(c->wev);
    if (c->in)
        evbuffer_free(c->in);
    if (c->out)
        evbuffer_free(c->out);
    if (c->fd >= 0) {
        evutil_closesocket(c->fd);
        s->nconns--;
        s->nlinger -= c->lingering;
    }
    dyn_free(&c->url);
    dyn_free(&c->body);
    dyn_free(&c->hdr);
    free(c);
}

static void peer_name(const struct sockaddr *sa, char *buf, size_t cap)
{
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, (socklen_t)cap);
    else
        snprintf(buf, cap, "unix");
}

/* Answers 503 and closes: best effort, one write (a full socket buffer just
 * means no body). */
static void refuse(ev_http_server_t *s, int fd, const char *why)
{
    char body[256];
    int blen =
        ev_problem_body(body, sizeof body, 503, ev_http_reason(503), "unavailable", why, NULL);
    char buf[512];
    head_t h = {buf, 0, sizeof buf, 0};
    char id[40];
    snprintf(id, sizeof id, "%s%08llx", s->id_prefix, s->next_id++);
    write_head(&h, 503, (size_t)blen, 0, id);
    head_str(&h, "Content-Type: application/problem+json\r\nRetry-After: 1\r\n\r\n");
    head_add(&h, body, (size_t)blen);
    /* Closing with unread bytes resets the connection, and a reset can
     * discard the answer before the client reads it: take what has arrived
     * (a request sent right after connect has, by the time it is accepted). */
    char sink[4096];
    while (recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0)
        ;
    ssize_t ignored = write(fd, h.p, h.len);
    (void)ignored;
    shutdown(fd, SHUT_WR);
    evutil_closesocket(fd);
}

static long long loop_ms(ev_http_server_t *s)
{
    struct timeval tv;
    event_base_gettimeofday_cached(s->base, &tv);
    return (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* Between requests, nothing owed to it: closing loses no work. A connection
 * that has not sent its first request yet counts only once it has had a
 * second to do so (its request may be on the wire right now). */
static int reusable(const ev_http_conn_t *c, long long now_ms)
{
    return c->fd >= 0 && !c->req && !c->mid_request && !c->complete && !c->closing &&
           !c->in_parse && evbuffer_get_length(c->in) == 0 && evbuffer_get_length(c->out) == 0 &&
           (c->served || now_ms - c->opened_ms >= FIRST_REQUEST_GRACE_MS);
}

/* Closes up to n connections nothing is owed to, the longest open first:
 * lingering ones before reusable ones (their answer is out already; only a
 * courtesy to a client still sending is left). */
static int evict_idle(ev_http_server_t *s, int n)
{
    int closed = 0;
    long long now = loop_ms(s);
    for (int pass = s->nlinger > 0 ? 0 : 1; pass < 2; pass++) {
        ev_http_conn_t *c = s->oldest;
        while (c && closed < n) {
            ev_http_conn_t *newer = c->prev;
            if (pass == 0 ? c->lingering : reusable(c, now)) {
                conn_free(c);
                closed++;
            }
            c = newer;
        }
    }
    return closed;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int socklen, void *arg)
{
    ev_http_server_t *s = arg;
    (void)l;
    (void)socklen;
    if (s->nconns >= s->limits.max_connections && !s->draining)
        evict_idle(s, 1); /* as nginx reuses keep-alive connections */
    if (s->nconns >= s->limits.max_connections || s->draining) {
        refuse(s, fd, "too many connections");
        return;
    }
    ev_http_conn_t *c = calloc(1, sizeof *c);
    if (!c) {
        evutil_closesocket(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->srv = s;
    peer_name(sa, c->peer, sizeof c->peer);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->fd = fd; /* from here on conn_free closes it */
    c->opened_ms = loop_ms(s);
    s->nconns++;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    else
        s->oldest = c;
    s->conns = c;
    c->in = evbuffer_new();
    c->out = evbuffer_new();
    c->rev = event_new(s->base, fd, EV_READ | EV_PERSIST, on_readable, c);
    c->wev = event_new(s->base, fd, EV_WRITE | EV_PERSIST, on_writable, c);
    c->deadline = evtimer_new(s->base, on_deadline, c);
    if (!c->in || !c->out || !c->rev || !c->wev || !c->deadline) {
        conn_free(c);
        return;
    }
    conn_reading(c, 1);
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    ev_http_server_t *s = arg;
    (void)fd;
    (void)what;
    if (!s->draining)
        evconnlistener_enable(s->listener);
}

/* Out of descriptors with connections waiting: answer them 503 at once,
 * one at a time through the descriptor held in reserve for this, rather than
 * leave them hanging in the backlog. */
static void shed_waiting(ev_http_server_t *s)
{
    for (int i = 0; i < SHED_BATCH && s->reserve_fd >= 0; i++) {
        close(s->reserve_fd);
        int fd =
            accept4(evconnlistener_get_fd(s->listener), NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0)
            refuse(s, fd, "out of descriptors");
        s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            break; /* none left waiting */
    }
}

static void on_listen_error(struct evconnlistener *l, void *arg)
{
    ev_http_server_t *s = arg;
    int err = errno;
    (void)l;
    if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM) {
        ev_warn("accept failed: %s", strerror(err));
        return;
    }
    /* The listening socket stays readable while we cannot accept: returning
     * now would spin. Make room by closing idle connections, oldest first;
     * with none to close, shed the waiting connection and pause accepting
     * for a moment so the loop serves what it has. */
    s->shed_since++;
    if (evict_idle(s, EVICT_BATCH) == 0) {
        shed_waiting(s);
        struct timeval pause = {0, ACCEPT_PAUSE_MS * 1000};
        evconnlistener_disable(s->listener);
        event_add(s->resume, &pause);
    }
    time_t now = time(NULL);
    if (now - s->shed_logged >= SHED_LOG_S) {
        ev_warn("accept: %s with %d connections open: closed idle ones or shed new ones "
                "(%lu times since the last such line)",
                strerror(err), s->nconns, s->shed_since);
        s->shed_logged = now;
        s->shed_since = 0;
    }
}

ev_http_server_t *ev_http_server_new(struct event_base *base, int listen_fd,
                                     const ev_http_limits_t *limits, ev_http_handler_fn handler,
                                     ev_http_log_fn log, void *arg)
{
    ev_http_server_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    /* the parser's own header cap (80 KiB) must not undercut ours: it would
     * answer 400 where max_header says 431 or allows the request */
    http_parser_set_max_header_size((uint32_t)limits->max_header * 2 + 1024);
    s->base = base;
    s->limits = *limits;
    s->handler = handler;
    s->log = log;
    s->arg = arg;
    unsigned r = (unsigned)getpid() * 2654435761u ^ (unsigned)time(NULL);
    snprintf(s->id_prefix, sizeof s->id_prefix, "%08x", r);
    s->listener = evconnlistener_new(base, on_accept, s, LEV_OPT_CLOSE_ON_EXEC, -1, listen_fd);
    if (!s->listener) {
        free(s);
        return NULL;
    }
    evconnlistener_set_error_cb(s->listener, on_listen_error);
    s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    s->resume = evtimer_new(base, on_resume, s);
    if (!s->resume) {
        ev_http_server_free(s);
        return NULL;
    }
    return s;
}

void ev_http_server_drain(ev_http_server_t *s)
{
    s->draining = 1;
    if (s->listener)
        evconnlistener_disable(s->listener);
    /* Busy connections close after their answer (Connection: close). Idle
     * keep-alive ones get a short grace instead of an immediate close: a
     * client may have a request on the wire right now, and closing on it
     * would reset the connection and lose that request. */
    struct timeval grace = {DRAIN_GRACE_S, 0};
    for (ev_http_conn_t *c = s->conns; c; c = c->next) {
        if (c->lingering)
            event_add(c->deadline, &grace); /* the worker waits for it: not LINGER_TOTAL_S */
        else if (!c->req && !c->closing && c->reading)
            event_add(c->rev, &grace);
    }
}

int ev_http_server_connections(const ev_http_server_t *s)
{
    return s->nconns;
}

void ev_http_server_free(ev_http_server_t *s)
{
    if (!s)
        return;
    while (s->conns)
        conn_free(s->conns);
    if (s->listener)
        evconnlistener_free(s->listener);
    if (s->resume)
        event_free(s->resume);
    if (s->reserve_fd >= 0)
        close(s->reserve_fd);
    free(s);
}

int ev_http_parse_offline(const char *data, size_t len, const ev_http_limits_t *limits)
{
    ev_http_server_t s = {.limits = *limits};
    http_parser_set_max_header_size((uint32_t)limits->max_header * 2 + 1024);
    ev_http_conn_t c = {.srv = &s, .fd = -1};
    http_parser_init(&c.parser, HTTP_REQUEST);
    c.parser.data = &c;
    int result;
    size_t off = 0;
    for (;;) {
        size_t used = http_parser_execute(&c.parser, &settings, data + off, len - off);
        off += used;
        if (c.complete) {
            dispatch(&c);
            if (off < len)
                continue;
        }
        enum http_errno e = HTTP_PARSER_ERRNO(&c.parser);
        if (e != HPE_OK && e != HPE_PAUSED) {
            result = -error_answer(&c);
            break;
        }
        if (off >= len || used == 0) {
            result = c.offline_count;
            break;
        }
    }
    dyn_free(&c.url);
    dyn_free(&c.body);
    dyn_free(&c.hdr);
    return result;
}
