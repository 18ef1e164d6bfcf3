/* ws.h - WebSocket connections (RFC 6455) on a socket taken over from HTTP.
 *
 * API in calling order:
 *   ev_ws_hub_new()    once per loop
 *   ev_ws_handshake()  checks an upgrade request's headers and computes
 *                      Sec-WebSocket-Accept (before anything is answered)
 *   ev_ws_new()        after the 101 went out (ev_http_upgrade): owns the fd
 *   on_message(...)    each text/binary message, from the loop
 *   ev_ws_send()       queues a message; never blocks, never calls back
 *   ev_ws_close()      starts the close handshake
 *   on_close(...)      exactly once, from the loop, when the socket is gone;
 *                      the ev_ws_t is freed right after it returns
 *   ev_ws_free()       drops a connection at once, without on_close (shutdown)
 *   ev_ws_hub_close_all() close frames to all (draining); ev_ws_hub_free()
 * Framing is libwslay's; pings are answered by it. Limits: an incoming message
 * over max_message closes with 1009; outgoing bytes queued over max_queued
 * (a peer that does not read) close with 1008; a peer silent for a whole
 * ping interval after our ping is dropped (1006). */
#ifndef EV_WS_H
#define EV_WS_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evbuffer;

typedef struct ev_ws ev_ws_t;
/* All connections of one loop: frees what is left (lingering sockets too)
 * when the loop goes, and closes them all when a worker drains. */
typedef struct ev_ws_hub ev_ws_hub_t;

typedef struct {
    size_t max_message;   /* incoming message, bytes; over: close 1009 */
    size_t max_queued;    /* outgoing bytes not yet taken by the socket; over: close 1008 */
    double ping_interval; /* s between our pings; no answer by the next one: dropped */
    double close_timeout; /* s to wait for the peer's close frame once we sent ours */
    double max_lifetime;  /* s a connection may stay open (0: no limit); then closed 1001 */
} ev_ws_limits_t;

typedef struct {
    /* a whole text (1) or binary (2) message; data is valid during the call */
    void (*on_message)(ev_ws_t *ws, int opcode, const uint8_t *data, size_t len, void *arg);
    /* the connection is gone: code is the peer's close code, ours, or 1006
     * when the socket just went away */
    void (*on_close)(ev_ws_t *ws, int code, void *arg);
} ev_ws_callbacks_t;

enum { EV_WS_SEND_OK = 0, EV_WS_SEND_CLOSED = -1, EV_WS_SEND_TOO_SLOW = -2 };

/* Checks a client's opening handshake (any argument may be NULL when the
 * header is missing). 0 and the accept value (NUL-terminated, 28 chars) on
 * success; -1 and *why, a static phrase naming what is wrong. */
int ev_ws_handshake(const char *method, const char *upgrade, const char *connection,
                    const char *version, const char *key, char accept[32], const char **why);

/* Takes fd over (non-blocking). in: bytes the client sent after its request,
 * out: answer bytes the socket has not taken yet; their contents are moved,
 * the caller still frees the buffers. NULL on allocation failure (fd not
 * closed then). */
ev_ws_hub_t *ev_ws_hub_new(struct event_base *base);
void ev_ws_hub_close_all(ev_ws_hub_t *hub, int code, const char *reason);
/* Connections not yet freed, closing and lingering ones included (0 for NULL). */
int ev_ws_hub_count(const ev_ws_hub_t *hub);
/* Frees every connection without callbacks; before the loop is freed. */
void ev_ws_hub_free(ev_ws_hub_t *hub);

ev_ws_t *ev_ws_new(ev_ws_hub_t *hub, int fd, struct evbuffer *in, struct evbuffer *out,
                   const ev_ws_limits_t *limits, const ev_ws_callbacks_t *cb, void *arg);
/* opcode 1 text, 2 binary. EV_WS_SEND_CLOSED once closing; TOO_SLOW when the
 * queue is over max_queued (the connection is then closing with 1008). */
int ev_ws_send(ev_ws_t *ws, int opcode, const void *data, size_t len);
/* Queues a close frame (reason cut at 123 bytes); the socket closes when the
 * peer answers or after close_timeout. Later calls do nothing. */
void ev_ws_close(ev_ws_t *ws, int code, const char *reason);
int ev_ws_is_open(const ev_ws_t *ws);
size_t ev_ws_queued(const ev_ws_t *ws);
void ev_ws_free(ev_ws_t *ws);

/* Feeds raw client bytes through the same framing path with no socket (for
 * the fuzz harness): returns the number of messages delivered; the peer's
 * output is discarded. */
int ev_ws_parse_offline(const uint8_t *data, size_t len, const ev_ws_limits_t *limits);

#endif
