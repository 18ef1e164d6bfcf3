/* redis.h - an asynchronous Redis client on a libevent loop (hiredis 0.14).
 *
 * Engine only (no Lua): lua_redis.c binds it. API in calling order:
 *   ev_redis_new()          one client per worker and URL; connects lazily
 *   ev_redis_send()         one command or a pipeline, sent back to back; the
 *                           callback gets every reply at once, in order, or one
 *                           error ("timeout: ...", "closed: ...",
 *                           "unavailable: ..."); never synchronously: a
 *                           client that cannot send fails fast with NULL
 *   ev_redis_cancel()       the caller went away: its replies will be dropped
 *   ev_redis_on_message()   where pub/sub messages go (one callback)
 *   ev_redis_subscribe()    adds a channel on the client's pub/sub connection,
 *                           optionally waiting for the server's confirmation
 *   ev_redis_unsubscribe()
 *   ev_redis_stats()
 *   ev_redis_close()        fails what is pending with "closed", refuses more
 *   ev_redis_free()         never calls a callback again
 * URLs: "redis://[[user]:password@]host[:port][/db]" or "unix:/path". */
#ifndef EV_REDIS_H
#define EV_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>

struct event_base;

typedef struct ev_redis ev_redis_t;
typedef struct ev_redis_req ev_redis_req_t;

typedef struct {
    int timeout_ms;         /* per command (or pipeline), default 2000 */
    int connect_timeout_ms; /* default 2000 */
} ev_redis_opts_t;

typedef struct {
    int argc;
    const char *const *argv;
    const size_t *argvlen;  /* binary-safe lengths */
} ev_redis_cmd_t;

typedef struct {
    int connected;          /* the command connection is up */
    int subscribed;         /* the pub/sub connection is up */
    int channels;           /* channels wanted on it */
    int pending;            /* requests not yet answered */
    /* errors: error replies, and requests that failed (closed, unavailable) */
    unsigned long long commands, errors, timeouts, reconnects, connect_failures;
    const char *last_error;  /* "" until something went wrong */
} ev_redis_stats_t;

/* err is NULL on success, and replies[0..n-1] are valid only during the call
 * (error replies are replies: type REDIS_REPLY_ERROR). On err, replies is
 * NULL. The callback may send, cancel, close or free (deferred) the client. */
typedef void (*ev_redis_reply_fn)(const char *err, redisReply *const *replies, int n, void *arg);
typedef void (*ev_redis_msg_fn)(const char *channel, size_t chlen, const char *msg,
                                size_t msglen, void *arg);

/* NULL and a message in err on a bad URL or out of memory. opts may be NULL. */
ev_redis_t *ev_redis_new(struct event_base *base, const char *url, const ev_redis_opts_t *opts,
                         char *err, size_t errlen);
void ev_redis_close(ev_redis_t *r);
void ev_redis_free(ev_redis_t *r);
/* timeout_ms <= 0: the client's default. NULL and err when nothing was sent. */
ev_redis_req_t *ev_redis_send(ev_redis_t *r, const ev_redis_cmd_t *cmds, int n, int timeout_ms,
                              ev_redis_reply_fn fn, void *arg, char *err, size_t errlen);
void ev_redis_cancel(ev_redis_req_t *q);

void ev_redis_on_message(ev_redis_t *r, ev_redis_msg_fn fn, void *arg);
/* Idempotent. With fn, *wait is a request answered when the server confirms
 * (one reply: the confirmation) or fails; NULL when already confirmed. Without
 * fn the channel is kept and retried in the background until unsubscribed.
 * -1 and err: nothing changed. */
int ev_redis_subscribe(ev_redis_t *r, const char *ch, size_t len, int timeout_ms,
                       ev_redis_reply_fn fn, void *arg, ev_redis_req_t **wait, char *err,
                       size_t errlen);
void ev_redis_unsubscribe(ev_redis_t *r, const char *ch, size_t len);
void ev_redis_stats(const ev_redis_t *r, ev_redis_stats_t *out);

#endif
