/* redis.c - asynchronous Redis client on libevent; see redis.h for the API.
 *
 * Design. A client has two links, each at most one hiredis async context: the
 * command link, shared by every caller of the worker (Redis answers in order,
 * so one connection multiplexes any number of coroutines), and the pub/sub
 * link, which exists while channels are wanted. A link is DOWN (no context),
 * CONNECTING (context, commands buffered by hiredis) or UP.
 *
 * Requests. ev_redis_send() appends every command of a pipeline to the
 * output buffer at once, so nothing from another caller lands in between,
 * and registers one heap record (ev_redis_req_t) as the privdata of each.
 * The record counts the callbacks still to come (inflight) and holds fn
 * until it is answered; the caller's callback runs once, when the last reply
 * is in, when the request's timer fires ("timeout: ...") or when the
 * connection fails. hiredis frees a reply after its callback, so replies
 * of a pipeline but the last are copied. A record that was answered,
 * timed out or cancelled has fn NULL and lives on, dropping replies, until
 * its last callback: a late reply is never matched to someone else.
 *
 * Re-entrancy. Replies are delivered inside hiredis' read callback, where
 * the caller's code (a resumed coroutine) may send more, close the client,
 * or drop the last reference to it. So: user callbacks run only with a
 * reply in hand or from our own timers; every failure found inside hiredis
 * (NULL replies while a context is torn down) is only noted on the record
 * and delivered from a zero-delay "kick" event; ev_redis_free() while a
 * callback is on the stack (depth > 0) just silences the client, and the
 * outermost callback destroys it on the way out. Contexts we drop ourselves
 * get ac->data = NULL first, so their last callbacks know nothing of us.
 *
 * Failures. A context that cannot connect sets a backoff (100 ms doubling to
 * 5 s); until it passes, sends fail at once with "unavailable: <reason>",
 * and the first send after it tries again. A connection that was up and is
 * lost fails its pending requests with "closed: <reason>" and reconnects on
 * the next send without waiting. The pub/sub link reconnects on its own
 * timer (same backoff) while channels are wanted, and subscribes to all of
 * them again. Connecting is bounded by connect_timeout_ms (hiredis 0.14 has
 * no connect timeout of its own).
 *
 * Extending: a new kind of wait (like a subscribe confirmation) is an
 * ev_redis_req_t with inflight 0 that something else answers via deliver(). */
#include "redis.h"

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include "log.h"
#include "redis_url.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

typedef struct link {
    ev_redis_t *r;
    redisAsyncContext *ac; /* NULL: down */
    int up;
    int pubsub;
    int lost; /* failed or lost since last up: a success is a reconnect */
    int backoff_ms;
    struct timeval up_since;
    struct timeval retry_at; /* no new attempt before this */
    struct event *timer;     /* connect timeout while connecting; pub/sub retry while down */
} link_t;

typedef struct sub {
    char *name;
    size_t len;
    int wanted;    /* someone listens; else an UNSUBSCRIBE is in flight */
    int confirmed; /* the server said "subscribe" on this connection */
    int unsub_pending;
    struct sub *next;
} sub_t;

struct ev_redis_req {
    ev_redis_t *r;        /* NULL: orphaned by ev_redis_free, waits for its callbacks */
    ev_redis_reply_fn fn; /* NULL: answered, timed out or cancelled */
    void *arg;
    struct event *timer;
    sub_t *sub; /* a subscribe confirmation wait */
    int n, got, inflight;
    int timeout_ms;
    int pinned; /* its callback is running: not freed under our feet */
    int failed; /* err is set; the kick delivers it */
    char err[200];
    ev_redis_req_t *prev, *next;
    redisReply *replies[]; /* n: copies of 0..n-2, the last one borrowed */
};

struct ev_redis {
    struct event_base *base;
    ev_redis_url_t url;
    ev_redis_opts_t opts;
    link_t cmd, ps;
    sub_t *subs;
    int nsubs;
    ev_redis_req_t *reqs; /* every live record, answered or not */
    struct event *kick;
    ev_redis_msg_fn on_message;
    void *msg_arg;
    int depth; /* user callbacks on the stack */
    int dead;  /* freed while depth > 0 */
    int closed;
    char last_error[256];
    unsigned long long commands, errors, timeouts, reconnects, connect_failures;
};

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);
static void on_sub(redisAsyncContext *ac, void *reply, void *privdata);
static void link_failed(link_t *l, int connecting);
static void destroy(ev_redis_t *r);

/* ---- small helpers ---- */

static void set_error(ev_redis_t *r, const char *msg)
{
    snprintf(r->last_error, sizeof r->last_error, "%s", msg && *msg ? msg : "unknown error");
}

static void kick(ev_redis_t *r)
{
    if (r->kick)
        event_active(r->kick, EV_TIMEOUT, 0);
}

static struct timeval ms_tv(int ms)
{
    return (struct timeval){ms / 1000, (ms % 1000) * 1000};
}

static int past(const struct timeval *t)
{
    struct timeval now;
    gettimeofday(&now, NULL);
    return !timercmp(&now, t, <);
}

/* Callbacks into user code are bracketed so a free from inside waits. */
static void enter(ev_redis_t *r)
{
    r->depth++;
}

static void leave(ev_redis_t *r)
{
    if (--r->depth == 0 && r->dead)
        destroy(r);
}

/* ---- replies ---- */

static void reply_free(redisReply *p)
{
    if (!p)
        return;
    for (size_t i = 0; p->element && i < p->elements; i++)
        reply_free(p->element[i]);
    free(p->element);
    free(p->str);
    free(p);
}

static redisReply *reply_dup(const redisReply *s)
{
    redisReply *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->type = s->type;
    d->integer = s->integer;
    d->len = s->len;
    if (s->str) {
        d->str = malloc(s->len + 1);
        if (!d->str)
            goto fail;
        memcpy(d->str, s->str, s->len);
        d->str[s->len] = '\0';
    }
    if (s->element && s->elements) {
        d->element = calloc(s->elements, sizeof *d->element);
        if (!d->element)
            goto fail;
        d->elements = s->elements;
        for (size_t i = 0; i < s->elements; i++)
            if (!(d->element[i] = reply_dup(s->element[i])))
                goto fail;
    }
    return d;
fail:
    reply_free(d);
    return NULL;
}

/* ---- requests ---- */

static void on_req_timeout(evutil_socket_t fd, short what, void *arg);

static ev_redis_req_t *req_new(ev_redis_t *r, int n, int timeout_ms, ev_redis_reply_fn fn,
                               void *arg)
{
    ev_redis_req_t *q = calloc(1, sizeof *q + (size_t)n * sizeof(redisReply *));
    if (!q)
        return NULL;
    q->timer = evtimer_new(r->base, on_req_timeout, q);
    if (!q->timer) {
        free(q);
        return NULL;
    }
    q->r = r;
    q->fn = fn;
    q->arg = arg;
    q->n = n;
    q->next = r->reqs;
    if (r->reqs)
        r->reqs->prev = q;
    r->reqs = q;
    q->timeout_ms = timeout_ms > 0 ? timeout_ms : r->opts.timeout_ms;
    struct timeval tv = ms_tv(q->timeout_ms);
    event_base_update_cache_time(r->base); /* count from now, not from the loop's last wake */
    evtimer_add(q->timer, &tv);
    return q;
}

static void drop_replies(ev_redis_req_t *q)
{
    for (int i = 0; i < q->got && i < q->n; i++) {
        reply_free(q->replies[i]);
        q->replies[i] = NULL;
    }
    q->got = q->n; /* anything later is dropped */
}

static void req_unlink(ev_redis_req_t *q)
{
    ev_redis_t *r = q->r;
    if (q->prev)
        q->prev->next = q->next;
    else
        r->reqs = q->next;
    if (q->next)
        q->next->prev = q->prev;
    q->prev = q->next = NULL;
}

/* Frees the record once nobody will call back: answered and no reply due. */
static void req_maybe_free(ev_redis_req_t *q)
{
    if (q->fn || q->inflight > 0 || q->pinned)
        return;
    if (q->r)
        req_unlink(q);
    if (q->timer)
        event_free(q->timer);
    drop_replies(q);
    free(q);
}

/* Runs the caller's callback once; the caller of deliver brackets it with
 * enter/leave and calls req_maybe_free(q) after. The callback may close the
 * client, which runs the NULL callbacks of q's other commands right away:
 * q is pinned meanwhile. */
static void deliver(ev_redis_req_t *q, const char *err, redisReply *const *replies, int n)
{
    ev_redis_reply_fn fn = q->fn;
    q->fn = NULL;
    evtimer_del(q->timer);
    q->pinned = 1;
    fn(err, replies, n, q->arg);
    q->pinned = 0;
}

static void req_fail(ev_redis_req_t *q, const char *fmt, const char *why)
{
    if (q->failed || !q->fn)
        return;
    q->failed = 1;
    snprintf(q->err, sizeof q->err, fmt, why);
    kick(q->r);
}

static void on_req_timeout(evutil_socket_t fd, short what, void *arg)
{
    ev_redis_req_t *q = arg;
    ev_redis_t *r = q->r;
    (void)fd;
    (void)what;
    if (!q->fn)
        return;
    r->timeouts++;
    drop_replies(q);
    char msg[80];
    snprintf(msg, sizeof msg, "timeout: no reply within %d ms", q->timeout_ms);
    ev_debug("redis: %s (%d command(s))", msg, q->n);
    enter(r);
    deliver(q, msg, NULL, 0);
    req_maybe_free(q);
    leave(r);
}

/* Failures noted inside hiredis callbacks are delivered from here. */
static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    ev_redis_t *r = arg;
    (void)fd;
    (void)what;
    enter(r);
    for (;;) { /* restart: a callback may add or free requests */
        ev_redis_req_t *q = r->reqs;
        while (q && !(q->failed && q->fn))
            q = q->next;
        if (!q)
            break;
        drop_replies(q);
        r->errors++;
        deliver(q, q->err, NULL, 0);
        req_maybe_free(q);
    }
    leave(r);
}

void ev_redis_cancel(ev_redis_req_t *q)
{
    if (!q || !q->fn)
        return;
    q->fn = NULL;
    evtimer_del(q->timer);
    drop_replies(q);
    req_maybe_free(q);
}

/* A reply (or NULL: the context is going) for one command of q. */
static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    ev_redis_req_t *q = privdata;
    ev_redis_t *r = q->r;
    q->inflight--;
    if (!r || !q->fn) { /* orphaned, timed out or cancelled: the late reply is dropped */
        req_maybe_free(q);
        return;
    }
    if (!reply) {
        const char *why = ac->c.err ? ac->c.errstr : r->closed ? "client closed" : r->last_error;
        req_fail(q, (ac->c.flags & REDIS_CONNECTED) ? "closed: %s" : "unavailable: %s", why);
        return;
    }
    redisReply *rep = reply;
    if (rep->type == REDIS_REPLY_ERROR)
        r->errors++;
    if (q->failed)
        return; /* the kick answers it */
    if (q->got < q->n - 1) {
        if (!(q->replies[q->got] = reply_dup(rep))) {
            req_fail(q, "error: %s", "out of memory");
            return;
        }
        q->got++;
        return;
    }
    q->replies[q->n - 1] = rep; /* borrowed: hiredis frees it when we return */
    q->got = q->n - 1;          /* so drop_replies leaves it alone */
    enter(r);
    deliver(q, NULL, q->replies, q->n);
    drop_replies(q);
    q->replies[q->n - 1] = NULL;
    req_maybe_free(q);
    leave(r);
}

/* ---- links ---- */

static void link_detach(link_t *l)
{
    if (l->ac)
        l->ac->data = NULL; /* its last callbacks find nobody */
    l->ac = NULL;
    l->up = 0;
}

static void sub_send(ev_redis_t *r, sub_t *s, const char *verb)
{
    const char *argv[2] = {verb, s->name};
    size_t lens[2] = {strlen(verb), s->len};
    if (r->ps.ac && redisAsyncCommandArgv(r->ps.ac, on_sub, NULL, 2, argv, lens) != REDIS_OK)
        ev_warn("redis: could not send %s", verb);
}

static void on_setup_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redisReply *rep = reply;
    (void)privdata;
    if (rep && rep->type == REDIS_REPLY_ERROR && ac->data) {
        link_t *l = ac->data;
        set_error(l->r, rep->str);
        ev_warn("redis: connection setup failed: %s", rep->str);
    }
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    link_t *l = ac->data;
    if (!l || l->ac != ac)
        return;
    ev_redis_t *r = l->r;
    evtimer_del(l->timer);
    if (status != REDIS_OK) { /* hiredis frees the context after this */
        set_error(r, ac->c.errstr);
        link_detach(l);
        link_failed(l, 1);
        return;
    }
    l->up = 1;
    gettimeofday(&l->up_since, NULL);
    if (l->lost) {
        r->reconnects++;
        ev_info("redis: %s connection re-established", l->pubsub ? "pub/sub" : "command");
    }
    l->lost = 0; /* backoff_ms stays until it proves stable (see link_failed) */
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    link_t *l = ac->data;
    if (!l || l->ac != ac)
        return;
    set_error(l->r, status == REDIS_OK ? "connection closed" : ac->c.errstr);
    ev_warn("redis: %s connection lost: %s", l->pubsub ? "pub/sub" : "command", l->r->last_error);
    link_detach(l);
    link_failed(l, 0);
}

static int link_connect(link_t *l, char *err, size_t errlen)
{
    ev_redis_t *r = l->r;
    redisAsyncContext *ac = r->url.path ? redisAsyncConnectUnix(r->url.path)
                                        : redisAsyncConnect(r->url.host, r->url.port);
    if (!ac || ac->err) {
        set_error(r, ac ? ac->c.errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        link_failed(l, 1);
        snprintf(err, errlen, "unavailable: %s", r->last_error);
        return -1;
    }
    if (redisLibeventAttach(ac, r->base) != REDIS_OK) {
        redisAsyncFree(ac);
        set_error(r, "out of memory");
        link_failed(l, 1);
        snprintf(err, errlen, "unavailable: %s", r->last_error);
        return -1;
    }
    ac->data = l;
    l->ac = ac;
    l->up = 0;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (!r->url.path)
        redisEnableKeepAlive(&ac->c); /* a peer that vanished is noticed eventually */
    /* hiredis buffers these until connected; they go first */
    if (r->url.pass) {
        if (r->url.user)
            redisAsyncCommand(ac, on_setup_reply, NULL, "AUTH %s %s", r->url.user, r->url.pass);
        else
            redisAsyncCommand(ac, on_setup_reply, NULL, "AUTH %s", r->url.pass);
    }
    if (l->pubsub) {
        for (sub_t *s = r->subs; s; s = s->next)
            if (s->wanted)
                sub_send(r, s, "SUBSCRIBE");
    } else if (r->url.db) {
        redisAsyncCommand(ac, on_setup_reply, NULL, "SELECT %d", r->url.db);
    }
    struct timeval tv = ms_tv(r->opts.connect_timeout_ms);
    event_base_update_cache_time(r->base);
    evtimer_add(l->timer, &tv);
    ev_debug("redis: connecting the %s link", l->pubsub ? "pub/sub" : "command");
    return 0;
}

/* A context is ready to take commands (maybe still connecting), or err. */
static int link_ensure(link_t *l, char *err, size_t errlen)
{
    if (l->ac)
        return 0;
    if (!past(&l->retry_at)) {
        snprintf(err, errlen, "unavailable: %s", l->r->last_error);
        return -1;
    }
    return link_connect(l, err, errlen);
}

static void sub_remove(ev_redis_t *r, sub_t *s);

/* The link is down (l->ac already NULL): connecting failed, or it was lost.
 * A connection lost within a second of coming up (wrong password, a server
 * that closes at once) counts as a failed connect, so it backs off too. */
static void link_failed(link_t *l, int connecting)
{
    ev_redis_t *r = l->r;
    struct timeval now, flap = {1, 0}, d;
    gettimeofday(&now, NULL);
    timersub(&now, &l->up_since, &d);
    if (!connecting && timercmp(&d, &flap, <))
        connecting = 1;
    l->lost = 1;
    if (connecting) {
        r->connect_failures++;
        l->backoff_ms = l->backoff_ms ? l->backoff_ms * 2 : BACKOFF_MIN_MS;
        if (l->backoff_ms > BACKOFF_MAX_MS)
            l->backoff_ms = BACKOFF_MAX_MS;
        d = ms_tv(l->backoff_ms);
        timeradd(&now, &d, &l->retry_at);
        ev_warn("redis: connect failed (retry in %d ms): %s", l->backoff_ms, r->last_error);
    } else {
        l->backoff_ms = 0;
        timerclear(&l->retry_at); /* it was up: the next use reconnects at once */
    }
    if (!l->pubsub)
        return;
    /* pub/sub: forget what the dead connection knew, keep what is wanted */
    for (sub_t *s = r->subs, *next; s; s = next) {
        next = s->next;
        for (ev_redis_req_t *q = r->reqs; q; q = q->next)
            if (q->sub == s)
                req_fail(q, connecting ? "unavailable: %s" : "closed: %s", r->last_error);
        s->confirmed = s->unsub_pending = 0;
        if (!s->wanted)
            sub_remove(r, s);
    }
    if (r->nsubs > 0 && !r->closed) {
        struct timeval tv = ms_tv(l->backoff_ms ? l->backoff_ms : BACKOFF_MIN_MS);
        evtimer_add(l->timer, &tv);
    }
}

/* Connect timeout while connecting; for pub/sub also the retry while down. */
static void on_link_timer(evutil_socket_t fd, short what, void *arg)
{
    link_t *l = arg;
    ev_redis_t *r = l->r;
    char err[300];
    (void)fd;
    (void)what;
    if (l->ac && !l->up) {
        redisAsyncContext *ac = l->ac;
        set_error(r, "connect timeout");
        link_detach(l);
        link_failed(l, 1);
        redisAsyncFree(ac); /* its queued commands fail with "unavailable: connect timeout" */
        return;
    }
    if (!l->ac && l->pubsub && r->nsubs > 0 && !r->closed)
        link_connect(l, err, sizeof err); /* on failure link_failed re-arms the timer */
}

static void link_init(ev_redis_t *r, link_t *l, int pubsub)
{
    l->r = r;
    l->pubsub = pubsub;
    l->timer = evtimer_new(r->base, on_link_timer, l);
}

static void link_drop(link_t *l)
{
    redisAsyncContext *ac = l->ac;
    link_detach(l);
    if (l->timer)
        evtimer_del(l->timer);
    if (ac)
        redisAsyncFree(ac); /* deferred by hiredis when inside one of its callbacks */
}

/* ---- pub/sub ---- */

static sub_t *sub_find(ev_redis_t *r, const char *ch, size_t len)
{
    for (sub_t *s = r->subs; s; s = s->next)
        if (s->len == len && memcmp(s->name, ch, len) == 0)
            return s;
    return NULL;
}

static sub_t *sub_add(ev_redis_t *r, const char *ch, size_t len)
{
    sub_t *s = calloc(1, sizeof *s);
    if (!s || !(s->name = malloc(len + 1))) {
        free(s);
        return NULL;
    }
    memcpy(s->name, ch, len);
    s->name[len] = '\0';
    s->len = len;
    s->wanted = 1;
    s->next = r->subs;
    r->subs = s;
    r->nsubs++;
    return s;
}

static void sub_remove(ev_redis_t *r, sub_t *s)
{
    for (ev_redis_req_t *q = r->reqs; q; q = q->next) {
        if (q->sub == s) {
            req_fail(q, "closed: %s", "unsubscribed");
            q->sub = NULL;
        }
    }
    for (sub_t **pp = &r->subs; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    r->nsubs--;
    free(s->name);
    free(s);
}

static void sub_confirmed(ev_redis_t *r, sub_t *s, redisReply *rep)
{
    s->confirmed = 1;
    enter(r);
    for (;;) { /* restart: a callback may add or free requests */
        ev_redis_req_t *q = r->reqs;
        while (q && !(q->sub == s && q->fn && !q->failed))
            q = q->next;
        if (!q || r->dead || r->closed)
            break;
        q->sub = NULL;
        deliver(q, NULL, &rep, 1);
        req_maybe_free(q);
    }
    leave(r);
}

/* Everything that arrives on the pub/sub link: confirmations and messages. */
static void on_sub(redisAsyncContext *ac, void *reply, void *privdata)
{
    redisReply *rep = reply;
    link_t *l = ac->data;
    (void)privdata;
    if (!rep || !l || l->ac != ac)
        return; /* torn down, or a connection we dropped */
    ev_redis_t *r = l->r;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        rep->element[1]->type != REDIS_REPLY_STRING) {
        if (rep->type == REDIS_REPLY_ERROR)
            ev_warn("redis: pub/sub: %s", rep->str);
        return;
    }
    const char *kind = rep->element[0]->str;
    redisReply *ch = rep->element[1];
    sub_t *s = sub_find(r, ch->str, ch->len);
    if (!s)
        return;
    if (strcasecmp(kind, "message") == 0) {
        redisReply *m = rep->element[2];
        if (s->wanted && r->on_message && m->type == REDIS_REPLY_STRING) {
            enter(r);
            r->on_message(ch->str, ch->len, m->str, m->len, r->msg_arg);
            leave(r);
        }
    } else if (strcasecmp(kind, "subscribe") == 0) {
        sub_confirmed(r, s, rep);
    } else if (strcasecmp(kind, "unsubscribe") == 0) {
        s->unsub_pending = 0;
        s->confirmed = 0;
        if (s->wanted) /* wanted again while the UNSUBSCRIBE was in flight */
            sub_send(r, s, "SUBSCRIBE");
        else
            sub_remove(r, s);
    }
}

void ev_redis_on_message(ev_redis_t *r, ev_redis_msg_fn fn, void *arg)
{
    r->on_message = fn;
    r->msg_arg = arg;
}

int ev_redis_subscribe(ev_redis_t *r, const char *ch, size_t len, int timeout_ms,
                       ev_redis_reply_fn fn, void *arg, ev_redis_req_t **wait, char *err,
                       size_t errlen)
{
    *wait = NULL;
    if (r->closed || r->dead) {
        snprintf(err, errlen, "closed: client closed");
        return -1;
    }
    sub_t *s = sub_find(r, ch, len);
    if (s && s->wanted && s->confirmed)
        return 0;
    if (fn && !r->ps.ac && !past(&r->ps.retry_at)) {
        snprintf(err, errlen, "unavailable: %s", r->last_error);
        return -1; /* down: a caller who waits hears it now */
    }
    int added = 0;
    if (!s) {
        if (!(s = sub_add(r, ch, len))) {
            snprintf(err, errlen, "error: out of memory");
            return -1;
        }
        added = 1;
    }
    s->wanted = 1; /* if an UNSUBSCRIBE is in flight, its reply subscribes again */
    if (r->ps.ac) {
        if (added)
            sub_send(r, s, "SUBSCRIBE");
    } else if (past(&r->ps.retry_at)) {
        if (link_connect(&r->ps, err, errlen) != 0 && fn) { /* it sent every SUBSCRIBE */
            sub_remove(r, s);
            return -1;
        }
    } else if (!evtimer_pending(r->ps.timer, NULL)) {
        struct timeval tv = ms_tv(BACKOFF_MIN_MS);
        evtimer_add(r->ps.timer, &tv);
    }
    if (!fn)
        return 0;
    ev_redis_req_t *q = req_new(r, 1, timeout_ms, fn, arg);
    if (!q) {
        snprintf(err, errlen, "error: out of memory");
        return -1;
    }
    q->sub = s;
    *wait = q;
    return 0;
}

void ev_redis_unsubscribe(ev_redis_t *r, const char *ch, size_t len)
{
    sub_t *s = sub_find(r, ch, len);
    if (!s || !s->wanted)
        return;
    s->wanted = 0;
    if (r->ps.ac && !s->unsub_pending) {
        s->unsub_pending = 1;
        sub_send(r, s, "UNSUBSCRIBE");
    } else if (!r->ps.ac) {
        sub_remove(r, s);
    }
}

/* ---- sending ---- */

ev_redis_req_t *ev_redis_send(ev_redis_t *r, const ev_redis_cmd_t *cmds, int n, int timeout_ms,
                              ev_redis_reply_fn fn, void *arg, char *err, size_t errlen)
{
    if (r->closed || r->dead) {
        snprintf(err, errlen, "closed: client closed");
        return NULL;
    }
    if (n <= 0) {
        snprintf(err, errlen, "error: no command");
        return NULL;
    }
    if (link_ensure(&r->cmd, err, errlen) != 0) {
        r->errors++;
        return NULL;
    }
    ev_redis_req_t *q = req_new(r, n, timeout_ms, fn, arg);
    if (!q) {
        snprintf(err, errlen, "error: out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (redisAsyncCommandArgv(r->cmd.ac, on_reply, q, cmds[i].argc, (const char **)cmds[i].argv,
                                  cmds[i].argvlen) != REDIS_OK)
            break;
        q->inflight++;
        r->commands++;
    }
    if (q->inflight == 0) {
        q->fn = NULL;
        req_maybe_free(q);
        snprintf(err, errlen, "closed: the connection is going away");
        return NULL;
    }
    if (q->inflight < n)
        req_fail(q, "error: %s", "could not queue every command of the pipeline");
    return q;
}

/* ---- the client ---- */

ev_redis_t *ev_redis_new(struct event_base *base, const char *url, const ev_redis_opts_t *opts,
                         char *err, size_t errlen)
{
    ev_redis_t *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->base = base;
    r->opts = (ev_redis_opts_t){2000, 2000};
    if (opts && opts->timeout_ms > 0)
        r->opts.timeout_ms = opts->timeout_ms;
    if (opts && opts->connect_timeout_ms > 0)
        r->opts.connect_timeout_ms = opts->connect_timeout_ms;
    snprintf(err, errlen, "out of memory");
    if (ev_redis_url_parse(url, &r->url, err, errlen) != 0) {
        destroy(r);
        return NULL;
    }
    link_init(r, &r->cmd, 0);
    link_init(r, &r->ps, 1);
    r->kick = event_new(base, -1, 0, on_kick, r);
    if (!r->kick || !r->cmd.timer || !r->ps.timer) {
        snprintf(err, errlen, "out of memory");
        destroy(r);
        return NULL;
    }
    return r;
}

void ev_redis_close(ev_redis_t *r)
{
    if (!r || r->closed)
        return;
    r->closed = 1;
    set_error(r, "client closed");
    link_drop(&r->cmd); /* pending requests fail with "closed: client closed" */
    link_drop(&r->ps);
    for (ev_redis_req_t *q = r->reqs; q; q = q->next)
        req_fail(q, "closed: %s", "client closed"); /* subscribe waits, half-sent pipelines */
    while (r->subs)
        sub_remove(r, r->subs);
}

/* Orphans every request (their last callbacks free them), drops both
 * connections, frees the rest. Never calls a user callback. */
static void destroy(ev_redis_t *r)
{
    for (ev_redis_req_t *q = r->reqs, *next; q; q = next) {
        next = q->next;
        q->fn = NULL;
        q->r = NULL;
        q->prev = q->next = NULL;
        event_free(q->timer);
        q->timer = NULL;
        req_maybe_free(q);
    }
    r->reqs = NULL;
    link_drop(&r->cmd);
    link_drop(&r->ps);
    if (r->cmd.timer)
        event_free(r->cmd.timer);
    if (r->ps.timer)
        event_free(r->ps.timer);
    while (r->subs) {
        sub_t *s = r->subs;
        r->subs = s->next;
        free(s->name);
        free(s);
    }
    if (r->kick)
        event_free(r->kick);
    ev_redis_url_free(&r->url);
    free(r);
}

void ev_redis_free(ev_redis_t *r)
{
    if (!r || r->dead)
        return;
    r->on_message = NULL;
    if (r->depth > 0) { /* inside a callback: silence it now, destroy on the way out */
        r->dead = 1;
        for (ev_redis_req_t *q = r->reqs; q; q = q->next) {
            q->fn = NULL;
            evtimer_del(q->timer);
        }
        return;
    }
    destroy(r);
}

void ev_redis_stats(const ev_redis_t *r, ev_redis_stats_t *o)
{
    int pending = 0; /* records waiting only to drop a late reply do not count */
    for (const ev_redis_req_t *q = r->reqs; q; q = q->next)
        pending += q->fn != NULL;
    *o = (ev_redis_stats_t){r->cmd.up,           r->ps.up,     r->nsubs,    pending,
                            r->commands,         r->errors,    r->timeouts, r->reconnects,
                            r->connect_failures, r->last_error};
}
