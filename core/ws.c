/* ws.c - WebSocket connections: libwslay's event API on a libevent loop.
 *
 * Design. The HTTP server answers 101 and hands the socket over
 * (ev_http_upgrade); from then on one ev_ws_t owns it. wslay does the framing,
 * masking checks, ping answers, message reassembly and the close handshake;
 * this file feeds it bytes (recv_cb, first from what HTTP read past the
 * request) and drains what it queues (send_cb, with EV_WRITE while the socket
 * is full). A timer sends a ping each interval and drops a peer that sent no
 * frame at all since the previous ping (a dead TCP peer never says so).
 *
 * Nothing here calls back into the owner synchronously from ev_ws_send() or
 * ev_ws_close(): a connection that must end is marked and a zero timer (the
 * "closer") tears it down from the loop, calls on_close once and frees it. So
 * the owner may call any ev_ws_* function from inside on_message and after a
 * failed send the connection is still valid until on_close.
 *
 * Extending: new limits go into ev_ws_limits_t and are applied in ws_alloc();
 * frame-level hooks (extensions, rsv bits) belong in the wslay callbacks. */
#include "ws.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <wslay/wslay.h>

#include "log.h"

struct ev_ws_hub {
    struct event_base *base;
    ev_ws_t *head; /* every connection of this loop, lingering ones too */
    int count;
};

struct ev_ws {
    ev_ws_hub_t *hub; /* NULL in offline mode */
    ev_ws_t *prev, *next;
    int lingering; /* closed for the owner; discarding input until EOF */
    int linger_rounds;
    int fd; /* -1 in offline mode: output is discarded */
    wslay_event_context_ptr ctx;
    struct evbuffer *in;  /* bytes read before us, consumed first */
    struct evbuffer *out; /* answer bytes HTTP could not write yet, sent first */
    struct event *rev, *wev;
    struct event *tick;   /* ping interval; after our close frame, the close timeout */
    struct event *closer; /* fired once to tear down from the loop */
    ev_ws_limits_t limits;
    ev_ws_callbacks_t cb;
    void *arg;
    int heard;            /* a frame arrived since the last ping */
    struct event *expire; /* max_lifetime reached: closed 1001 */
    int closing;          /* our close frame is queued */
    int dead;             /* teardown pending: no more I/O */
    int in_recv;          /* inside wslay_event_recv: send later, not now */
    size_t budget;        /* socket bytes this readable event may still read */
    int code;             /* close code reported to on_close */
    int offline_messages;
};

static void linger_read(ev_ws_t *ws, short what);

#define READ_BUDGET (256 * 1024)

/* ---- handshake ---- */

static const char GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* Whether a comma-separated header value lists token (any case, OWS around). */
static int has_token(const char *list, const char *token)
{
    size_t n = strlen(token);
    const char *p = list;
    while (p && *p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *end = p;
        while (*end && *end != ',')
            end++;
        const char *last = end;
        while (last > p && (last[-1] == ' ' || last[-1] == '\t'))
            last--;
        if ((size_t)(last - p) == n && strncasecmp(p, token, n) == 0)
            return 1;
        p = end;
    }
    return 0;
}

/* A nonce is 16 bytes in base64: 22 alphabet characters then "==". */
static int key_ok(const char *key)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (strlen(key) != 24 || strcmp(key + 22, "==") != 0)
        return 0;
    for (int i = 0; i < 22; i++)
        if (!key[i] || !strchr(alphabet, key[i]))
            return 0;
    return 1;
}

int ev_ws_handshake(const char *method, const char *upgrade, const char *connection,
                    const char *version, const char *key, char accept[32], const char **why)
{
    if (!method || strcmp(method, "GET") != 0)
        *why = "a WebSocket handshake must be a GET";
    else if (!upgrade || !has_token(upgrade, "websocket"))
        *why = "Upgrade: websocket is missing";
    else if (!connection || !has_token(connection, "upgrade"))
        *why = "Connection: upgrade is missing";
    else if (!version || strcmp(version, "13") != 0)
        *why = "Sec-WebSocket-Version must be 13";
    else if (!key || !key_ok(key))
        *why = "Sec-WebSocket-Key must be 16 bytes in base64";
    else
        *why = NULL;
    if (*why)
        return -1;
    unsigned char digest[SHA_DIGEST_LENGTH];
    char joined[24 + sizeof GUID];
    memcpy(joined, key, 24);
    memcpy(joined + 24, GUID, sizeof GUID);
    SHA1((const unsigned char *)joined, 24 + sizeof GUID - 1, digest);
    EVP_EncodeBlock((unsigned char *)accept, digest, SHA_DIGEST_LENGTH); /* 28 + NUL */
    return 0;
}

/* ---- wslay callbacks: bytes in and out ---- */

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *user)
{
    ev_ws_t *ws = user;
    (void)flags;
    if (evbuffer_get_length(ws->in) > 0)
        return evbuffer_remove(ws->in, buf, len);
    if (ws->fd < 0) { /* offline: the input is all there is */
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (ws->budget == 0) { /* a fast sender: let the loop serve others, then go on */
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    ssize_t n = recv(ws->fd, buf, len < ws->budget ? len : ws->budget, 0);
    if (n > 0) {
        ws->budget -= (size_t)n;
        return n;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    else
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE); /* EOF or reset */
    return -1;
}

/* The handshake's unsent tail goes first; 1 when it is all out. */
static int flush_out(ev_ws_t *ws)
{
    while (evbuffer_get_length(ws->out) > 0)
        if (evbuffer_write(ws->out, ws->fd) <= 0)
            return 0;
    return 1;
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user)
{
    ev_ws_t *ws = user;
    (void)flags;
    if (ws->fd < 0)
        return (ssize_t)len;
    ssize_t n = flush_out(ws) ? send(ws->fd, data, len, MSG_NOSIGNAL) : -1;
    if (n >= 0 && (n > 0 || len == 0))
        return n;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    else
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *m,
                   void *user)
{
    ev_ws_t *ws = user;
    (void)ctx;
    ws->heard = 1;
    if (m->opcode == WSLAY_CONNECTION_CLOSE && !ws->code)
        ws->code = m->status_code ? m->status_code : WSLAY_CODE_NO_STATUS_RCVD;
    if (m->opcode != WSLAY_TEXT_FRAME && m->opcode != WSLAY_BINARY_FRAME)
        return; /* ping (wslay answers it), pong, close */
    if (ws->fd < 0)
        ws->offline_messages++;
    if (ws->cb.on_message && !ws->dead)
        ws->cb.on_message(ws, m->opcode, m->msg, m->msg_length, ws->arg);
}

static void on_frame_start(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_start_arg *a, void *user)
{
    (void)ctx;
    (void)a;
    ((ev_ws_t *)user)->heard = 1; /* any frame, even a fragment, proves the peer is there */
}

static const struct wslay_event_callbacks callbacks = {
    .recv_callback = recv_cb,
    .send_callback = send_cb,
    .on_frame_recv_start_callback = on_frame_start,
    .on_msg_recv_callback = on_msg,
};

/* ---- lifecycle ---- */

/* Marks the connection finished; the closer tears it down from the loop. */
static void finish(ev_ws_t *ws, int code)
{
    if (ws->dead)
        return;
    ws->dead = 1;
    if (!ws->code)
        ws->code = code;
    if (ws->closer)
        event_active(ws->closer, EV_TIMEOUT, 0);
}

/* Sends what wslay queued; ends the connection when both directions are done. */
static void pump(ev_ws_t *ws)
{
    if (ws->dead || ws->in_recv)
        return;
    if (wslay_event_send(ws->ctx) != 0) {
        finish(ws, WSLAY_CODE_ABNORMAL_CLOSURE);
        return;
    }
    if (!wslay_event_want_read(ws->ctx) && !wslay_event_want_write(ws->ctx)) {
        int sent = wslay_event_get_close_sent(ws->ctx);
        finish(ws, sent ? wslay_event_get_status_code_sent(ws->ctx) : WSLAY_CODE_ABNORMAL_CLOSURE);
        return;
    }
    if (ws->fd < 0)
        return;
    if (wslay_event_want_write(ws->ctx) || evbuffer_get_length(ws->out) > 0)
        event_add(ws->wev, NULL);
    else
        event_del(ws->wev);
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    ev_ws_t *ws = arg;
    (void)fd;
    if (ws->lingering) {
        linger_read(ws, what);
        return;
    }
    if (ws->dead)
        return;
    if (ev_ws_queued(ws) > ws->limits.max_queued) {
        /* wslay answers every ping with a queued pong: a peer that pings and
         * never reads would grow that queue without bound */
        if (ws->closing) {
            finish(ws, 1008);
            return;
        }
        ev_ws_close(ws, 1008, "not reading");
    }
    ws->in_recv = 1;
    ws->budget = READ_BUDGET; /* level-triggered: unread bytes wake us again */
    int rc = wslay_event_recv(ws->ctx);
    ws->in_recv = 0;
    if (rc != 0) {
        finish(ws, WSLAY_CODE_ABNORMAL_CLOSURE);
        return;
    }
    if (!wslay_event_want_read(ws->ctx))
        event_del(ws->rev); /* close received or message too big: only writing is left */
    pump(ws);
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pump(arg);
}

/* A socket held for days pins a descriptor and a login forever: at its
 * lifetime the client is told to reconnect (and authenticates again). */
static void on_expire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ev_ws_close(arg, 1001, "connection lifetime reached; reconnect");
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    ev_ws_t *ws = arg;
    (void)fd;
    (void)what;
    if (ws->dead)
        return;
    if (ws->closing || !ws->heard) { /* no close answer in time, or a silent peer */
        ev_debug("ws %d: %s; dropping", ws->fd, ws->closing ? "close timed out" : "no pong");
        finish(ws, WSLAY_CODE_ABNORMAL_CLOSURE);
        return;
    }

    ws->heard = 0;
    struct wslay_event_msg ping = {WSLAY_PING, (const uint8_t *)"", 0};
    wslay_event_queue_msg(ws->ctx, &ping);
    pump(ws);
}

static void release(ev_ws_t *ws)
{
    ev_ws_hub_t *hub = ws->hub;
    if (hub) {
        if (ws->prev)
            ws->prev->next = ws->next;
        else
            hub->head = ws->next;
        if (ws->next)
            ws->next->prev = ws->prev;
        hub->count--;
    }
    struct event *evs[] = {ws->rev, ws->wev, ws->tick, ws->closer, ws->expire};
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        if (evs[i])
            event_free(evs[i]);
    if (ws->ctx)
        wslay_event_context_free(ws->ctx);
    if (ws->in)
        evbuffer_free(ws->in);
    if (ws->out)
        evbuffer_free(ws->out);
    if (ws->fd >= 0)
        close(ws->fd);
    free(ws);
}

/* Closing a socket with unread input makes the kernel send a reset, and a
 * reset can destroy our close frame in the peer's buffer before it is read
 * (a client whose oversized message we stopped reading would never see its
 * 1009). So the write side is shut first and input is discarded until the
 * peer's EOF, a quiet second, or 1 MiB, whichever comes first; then the
 * socket closes. The hub still owns the connection meanwhile. */
#define LINGER_ROUNDS 64

static void start_linger(ev_ws_t *ws)
{
    if (ws->fd < 0 || !ws->rev) {
        release(ws);
        return;
    }
    ws->lingering = 1;
    ws->linger_rounds = LINGER_ROUNDS;
    event_del(ws->wev);
    event_del(ws->tick);
    event_del(ws->expire);
    shutdown(ws->fd, SHUT_WR);
    struct timeval second = {1, 0};
    event_add(ws->rev, &second); /* a persistent event: each read re-arms the second */
}

static void linger_read(ev_ws_t *ws, short what)
{
    char sink[16384];
    ssize_t n = (what & EV_READ) ? recv(ws->fd, sink, sizeof sink, 0) : 0;
    if (n > 0 && --ws->linger_rounds > 0)
        return;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    release(ws); /* EOF, error, a quiet second or enough */
}

static void on_closer(evutil_socket_t fd, short what, void *arg)
{
    ev_ws_t *ws = arg;
    (void)fd;
    (void)what;
    int code = ws->code ? ws->code : WSLAY_CODE_ABNORMAL_CLOSURE;
    ev_debug("ws %d: closed (%d)", ws->fd, code);
    ev_ws_callbacks_t cb = ws->cb;
    void *user = ws->arg;
    ws->cb = (ev_ws_callbacks_t){0};
    start_linger(ws); /* may free ws */
    if (cb.on_close)
        cb.on_close(ws, code, user); /* ws is only an identity now */
}

static ev_ws_t *ws_alloc(int fd, const ev_ws_limits_t *limits)
{
    ev_ws_t *ws = calloc(1, sizeof *ws);
    if (!ws)
        return NULL;
    ws->fd = fd;
    ws->limits = *limits;
    ws->heard = 1;
    ws->in = evbuffer_new();
    ws->out = evbuffer_new();
    if (!ws->in || !ws->out || wslay_event_context_server_init(&ws->ctx, &callbacks, ws) != 0) {
        ws->fd = -1; /* not ours yet: the caller still owns fd */
        release(ws);
        return NULL;
    }
    wslay_event_config_set_max_recv_msg_length(ws->ctx, limits->max_message);
    return ws;
}

static struct timeval seconds(double s)
{
    struct timeval tv = {(time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6)};
    return tv;
}

ev_ws_hub_t *ev_ws_hub_new(struct event_base *base)
{
    ev_ws_hub_t *hub = calloc(1, sizeof *hub);
    if (hub)
        hub->base = base;
    return hub;
}

void ev_ws_hub_close_all(ev_ws_hub_t *hub, int code, const char *reason)
{
    for (ev_ws_t *ws = hub->head; ws; ws = ws->next)
        if (!ws->lingering)
            ev_ws_close(ws, code, reason); /* never frees: teardown is the closer's */
}

int ev_ws_hub_count(const ev_ws_hub_t *hub)
{
    return hub ? hub->count : 0;
}

void ev_ws_hub_free(ev_ws_hub_t *hub)
{
    if (!hub)
        return;
    while (hub->head)
        release(hub->head);
    free(hub);
}

static void hub_add(ev_ws_hub_t *hub, ev_ws_t *ws)
{
    ws->hub = hub;
    ws->next = hub->head;
    if (hub->head)
        hub->head->prev = ws;
    hub->head = ws;
    hub->count++;
}

ev_ws_t *ev_ws_new(ev_ws_hub_t *hub, int fd, struct evbuffer *in, struct evbuffer *out,
                   const ev_ws_limits_t *limits, const ev_ws_callbacks_t *cb, void *arg)
{
    struct event_base *base = hub->base;
    ev_ws_t *ws = ws_alloc(fd, limits);
    if (!ws)
        return NULL;
    ws->cb = *cb;
    ws->arg = arg;
    ws->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, ws);
    ws->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_writable, ws);
    ws->tick = event_new(base, -1, EV_PERSIST, on_tick, ws);
    ws->closer = evtimer_new(base, on_closer, ws);
    ws->expire = evtimer_new(base, on_expire, ws);
    if (!ws->rev || !ws->wev || !ws->tick || !ws->closer || !ws->expire) {
        ws->fd = -1;
        release(ws);
        return NULL;
    }
    if (in)
        evbuffer_add_buffer(ws->in, in);
    if (out)
        evbuffer_add_buffer(ws->out, out);
    struct timeval ping = seconds(limits->ping_interval);
    event_add(ws->rev, NULL);
    event_add(ws->tick, &ping);
    if (limits->max_lifetime > 0) {
        struct timeval life = seconds(limits->max_lifetime);
        event_add(ws->expire, &life);
    }
    if (evbuffer_get_length(ws->in) > 0)
        event_active(ws->rev, EV_READ, 0); /* frames that came with the handshake */
    if (evbuffer_get_length(ws->out) > 0)
        event_add(ws->wev, NULL);
    hub_add(hub, ws);
    return ws;
}

int ev_ws_send(ev_ws_t *ws, int opcode, const void *data, size_t len)
{
    if (ws->dead || ws->closing || !wslay_event_get_write_enabled(ws->ctx))
        return EV_WS_SEND_CLOSED;
    if (ev_ws_queued(ws) + len > ws->limits.max_queued) {
        ev_warn("ws %d: peer does not read (%zu bytes queued); closing", ws->fd, ev_ws_queued(ws));
        ev_ws_close(ws, WSLAY_CODE_POLICY_VIOLATION, "too slow");
        return EV_WS_SEND_TOO_SLOW;
    }
    struct wslay_event_msg m = {(uint8_t)opcode, data, len};
    if (wslay_event_queue_msg(ws->ctx, &m) != 0)
        return EV_WS_SEND_CLOSED;
    pump(ws);
    return EV_WS_SEND_OK;
}

void ev_ws_close(ev_ws_t *ws, int code, const char *reason)
{
    if (ws->dead || ws->closing)
        return;
    ws->closing = 1;
    size_t n = reason ? strlen(reason) : 0;
    if (n > 123)
        n = 123;
    if (wslay_event_queue_close(ws->ctx, (uint16_t)code, (const uint8_t *)reason, n) != 0) {
        finish(ws, code); /* a close is already on its way: just end */
        return;
    }
    if (!ws->code)
        ws->code = code;
    if (ws->tick) {
        struct timeval tv = seconds(ws->limits.close_timeout);
        event_add(ws->tick, &tv);
    }
    pump(ws);
}

int ev_ws_is_open(const ev_ws_t *ws)
{
    return !ws->dead && !ws->closing;
}

size_t ev_ws_queued(const ev_ws_t *ws)
{
    return wslay_event_get_queued_msg_length(ws->ctx) + evbuffer_get_length(ws->out);
}

void ev_ws_free(ev_ws_t *ws)
{
    release(ws);
}

int ev_ws_parse_offline(const uint8_t *data, size_t len, const ev_ws_limits_t *limits)
{
    ev_ws_t *ws = ws_alloc(-1, limits);
    if (!ws)
        return -1;
    evbuffer_add(ws->in, data, len);
    /* one recv call reads until the input runs dry; a second sees EOF-like
     * quiet and must not misbehave either */
    for (int i = 0; i < 2 && !ws->dead; i++) {
        if (wslay_event_recv(ws->ctx) != 0)
            ws->dead = 1;
        else
            wslay_event_send(ws->ctx);
    }
    if (!ws->dead && ws->offline_messages > 0)
        ev_ws_send(ws, WSLAY_TEXT_FRAME, "x", 1);
    int n = ws->offline_messages;
    release(ws);
    return n;
}
