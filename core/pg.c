/* pg.c - asynchronous Postgres pool on libevent; see pg.h for the API.
 *
 * Design. A connection is a small state machine: CONNECTING (PQconnectPoll
 * driven by one-shot events, the socket may change between steps), IDLE (in
 * the pool, still watched so a server that goes away is noticed), LEASED
 * (handed to a caller) and QUERY (results being read). A query sends with
 * PQsendPrepare the first time a connection sees a statement and with
 * PQsendQueryPrepared after that; the result callback runs last in every
 * path, because it may release or reuse the connection at once.
 *
 * Waiters queue in arrival order with their own timers. Connections are
 * handed out from a zero-delay "kick" event, never from inside release(), so
 * a caller releasing a connection is never re-entered by another caller.
 * When connecting fails the pool backs off (100 ms doubling to 5 s) and, if
 * it has no live connection at all, fails waiters at once with
 * "unavailable: <reason>" instead of letting them time out: a database that
 * is down answers fast, and the first attempt after the backoff recovers. */
#include "pg.h"

#include <event2/event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "log.h"

#define STMT_CACHE 64

typedef enum { C_CONNECTING, C_IDLE, C_LEASED, C_QUERY, C_DEAD } conn_state_t;

struct ev_pg_conn {
    ev_pg_pool_t *pool;
    PGconn *pg;
    conn_state_t state;
    struct event *cev; /* connect steps and write readiness (one-shot) */
    struct event *rev; /* persistent read interest once connected */
    int fd;
    struct timeval deadline; /* connect deadline */
    ev_pg_result_fn fn;
    void *arg;
    PGresult *last;
    int preparing; /* stage 1 of a first-time statement */
    int stmt;      /* cache index being prepared / executed */
    char *params;  /* copy of the values while preparing */
    const char **values;
    int nparams;
    char *sqls[STMT_CACHE];
    uint32_t hashes[STMT_CACHE];
    int nstmts;
    ev_pg_conn_t *next;                /* idle list */
    ev_pg_conn_t *all_prev, *all_next; /* every connection of the pool */
    ev_pg_watch_fn watch;              /* input between queries (notifications) */
    void *watch_arg;
};

struct ev_pg_waiter {
    ev_pg_pool_t *pool;
    ev_pg_acquire_fn fn;
    void *arg;
    struct event *timer;
    ev_pg_waiter_t *prev, *next;
};

struct ev_pg_pool {
    struct event_base *base;
    char *conninfo;
    char options[160];
    ev_pg_opts_t opts;
    int total, connecting, nidle, nwait;
    ev_pg_conn_t *idle;
    ev_pg_conn_t *all; /* every connection, whatever its state: freed with the pool */
    ev_pg_waiter_t *whead, *wtail;
    struct event *kick;
    struct timeval backoff_until;
    int backoff_ms;
    char last_error[256];
    unsigned long long acquired, timeouts, connect_failures, queries, errors;
};

static void pool_kick(ev_pg_pool_t *p);
static void conn_close(ev_pg_conn_t *c);

/* ---- small helpers ---- */

static void set_error(ev_pg_pool_t *p, const char *msg)
{
    snprintf(p->last_error, sizeof p->last_error, "%s", msg ? msg : "unknown error");
    size_t n = strlen(p->last_error);
    while (n && (p->last_error[n - 1] == '\n' || p->last_error[n - 1] == ' '))
        p->last_error[--n] = '\0';
}

static uint32_t hash_sql(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static int stmt_find(const ev_pg_conn_t *c, const char *sql, uint32_t h)
{
    for (int i = 0; i < c->nstmts; i++)
        if (c->hashes[i] == h && strcmp(c->sqls[i], sql) == 0)
            return i;
    return -1;
}

/* ---- waiters ---- */

static void waiter_unlink(ev_pg_waiter_t *w)
{
    ev_pg_pool_t *p = w->pool;
    if (w->prev)
        w->prev->next = w->next;
    else
        p->whead = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        p->wtail = w->prev;
    p->nwait--;
    event_free(w->timer);
}

static void waiter_finish(ev_pg_waiter_t *w, ev_pg_conn_t *c, const char *err)
{
    ev_pg_acquire_fn fn = w->fn;
    void *arg = w->arg;
    waiter_unlink(w);
    free(w);
    fn(c, err, arg); /* last: it may acquire or release again */
}

static void on_waiter_timeout(evutil_socket_t fd, short what, void *arg)
{
    ev_pg_waiter_t *w = arg;
    (void)fd;
    (void)what;
    w->pool->timeouts++;
    waiter_finish(w, NULL, "timeout");
}

ev_pg_waiter_t *ev_pg_wait(ev_pg_pool_t *p, ev_pg_acquire_fn fn, void *arg)
{
    ev_pg_waiter_t *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->timer = evtimer_new(p->base, on_waiter_timeout, w);
    if (!w->timer) {
        free(w);
        return NULL;
    }
    w->pool = p;
    w->fn = fn;
    w->arg = arg;
    w->prev = p->wtail;
    if (p->wtail)
        p->wtail->next = w;
    else
        p->whead = w;
    p->wtail = w;
    p->nwait++;
    struct timeval tv = {p->opts.acquire_timeout_ms / 1000,
                         (p->opts.acquire_timeout_ms % 1000) * 1000};
    event_base_update_cache_time(p->base);
    evtimer_add(w->timer, &tv);
    pool_kick(p);
    return w;
}

void ev_pg_wait_cancel(ev_pg_waiter_t *w)
{
    waiter_unlink(w);
    free(w);
}

/* ---- connecting ---- */

static void on_readable(evutil_socket_t fd, short what, void *arg);
static void connect_step(evutil_socket_t fd, short what, void *arg);

static void connect_wait(ev_pg_conn_t *c, short what)
{
    struct timeval now, left;
    event_base_gettimeofday_cached(c->pool->base, &now);
    timersub(&c->deadline, &now, &left);
    if (left.tv_sec < 0)
        left = (struct timeval){0, 0};
    c->fd = PQsocket(c->pg);
    if (c->cev)
        event_free(c->cev);
    c->cev = event_new(c->pool->base, c->fd, what, connect_step, c);
    event_add(c->cev, &left);
}

static void connect_failed(ev_pg_conn_t *c, const char *why)
{
    ev_pg_pool_t *p = c->pool;
    set_error(p, why);
    p->connect_failures++;
    p->connecting--;
    p->backoff_ms = p->backoff_ms ? (p->backoff_ms * 2 > 5000 ? 5000 : p->backoff_ms * 2) : 100;
    struct timeval now, d = {p->backoff_ms / 1000, (p->backoff_ms % 1000) * 1000};
    gettimeofday(&now, NULL);
    timeradd(&now, &d, &p->backoff_until);
    ev_warn("postgres: connect failed (retry in %d ms): %s", p->backoff_ms, p->last_error);
    conn_close(c);
}

static void on_notice(void *arg, const char *msg)
{
    (void)arg;
    ev_debug("postgres: %s", msg); /* NOTICEs are for people debugging, not stderr */
}

static void connected(ev_pg_conn_t *c)
{
    ev_pg_pool_t *p = c->pool;
    p->connecting--;
    p->backoff_ms = 0;
    event_free(c->cev);
    c->cev = NULL;
    c->fd = PQsocket(c->pg);
    PQsetNoticeProcessor(c->pg, on_notice, NULL);
    c->rev = event_new(p->base, c->fd, EV_READ | EV_PERSIST, on_readable, c);
    event_add(c->rev, NULL);
    c->state = C_IDLE;
    c->next = p->idle;
    p->idle = c;
    p->nidle++;
    ev_debug("postgres: connection %d of %d ready", p->total, p->opts.max);
    pool_kick(p);
}

static void connect_step(evutil_socket_t fd, short what, void *arg)
{
    ev_pg_conn_t *c = arg;
    (void)fd;
    if (what & EV_TIMEOUT) {
        connect_failed(c, "connect timeout");
        return;
    }
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING: connect_wait(c, EV_READ); break;
    case PGRES_POLLING_WRITING: connect_wait(c, EV_WRITE); break;
    case PGRES_POLLING_OK: connected(c); break;
    default: connect_failed(c, PQerrorMessage(c->pg)); break;
    }
}

static void conn_start(ev_pg_pool_t *p)
{
    ev_pg_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->pool = p;
    c->state = C_CONNECTING;
    c->all_next = p->all;
    if (p->all)
        p->all->all_prev = c;
    p->all = c;
    p->total++;
    p->connecting++;
    const char *kw[] = {"dbname", "options", "application_name", NULL};
    const char *val[] = {p->conninfo, p->options, "evently", NULL};
    c->pg = PQconnectStartParams(kw, val, 1);
    if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD) {
        connect_failed(c, c->pg ? PQerrorMessage(c->pg) : "out of memory");
        return;
    }
    PQsetnonblocking(c->pg, 1);
    struct timeval now,
        d = {p->opts.connect_timeout_ms / 1000, (p->opts.connect_timeout_ms % 1000) * 1000};
    gettimeofday(&now, NULL);
    timeradd(&now, &d, &c->deadline);
    connect_wait(c, EV_WRITE);
}

/* ---- the pool ---- */

static void conn_close(ev_pg_conn_t *c)
{
    ev_pg_pool_t *p = c->pool;
    if (c->all_prev)
        c->all_prev->all_next = c->all_next;
    else
        p->all = c->all_next;
    if (c->all_next)
        c->all_next->all_prev = c->all_prev;
    if (c->cev)
        event_free(c->cev);
    if (c->rev)
        event_free(c->rev);
    if (c->last)
        PQclear(c->last);
    if (c->pg)
        PQfinish(c->pg);
    for (int i = 0; i < c->nstmts; i++)
        free(c->sqls[i]);
    free(c->params);
    free(c);
    p->total--;
    pool_kick(p);
}

static void idle_remove(ev_pg_conn_t *c)
{
    ev_pg_pool_t *p = c->pool;
    for (ev_pg_conn_t **pp = &p->idle; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            p->nidle--;
            return;
        }
    }
}

ev_pg_conn_t *ev_pg_try_acquire(ev_pg_pool_t *p)
{
    if (p->nwait > 0 || !p->idle)
        return NULL; /* first come, first served: queued callers go first */
    ev_pg_conn_t *c = p->idle;
    p->idle = c->next;
    p->nidle--;
    c->state = C_LEASED;
    p->acquired++;
    return c;
}

static void fail_waiters(ev_pg_pool_t *p)
{
    char err[300];
    snprintf(err, sizeof err, "unavailable: %s", p->last_error);
    while (p->whead)
        waiter_finish(p->whead, NULL, err);
}

static int backing_off(const ev_pg_pool_t *p)
{
    struct timeval now;
    gettimeofday(&now, NULL);
    return timercmp(&now, &p->backoff_until, <);
}

/* Runs the kick again when the backoff ends: otherwise waiters that only a
 * new connection could serve would wait for a release or their timeout. */
static void kick_after_backoff(ev_pg_pool_t *p)
{
    struct timeval now, left;
    gettimeofday(&now, NULL);
    timersub(&p->backoff_until, &now, &left);
    if (left.tv_sec < 0)
        left.tv_sec = left.tv_usec = 0;
    event_add(p->kick, &left);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    ev_pg_pool_t *p = arg;
    (void)fd;
    (void)what;
    while (p->whead && p->idle) {
        ev_pg_conn_t *c = p->idle;
        p->idle = c->next;
        p->nidle--;
        c->state = C_LEASED;
        p->acquired++;
        waiter_finish(p->whead, c, NULL);
    }
    if (!backing_off(p)) {
        /* a connect may fail at once (no socket file): backing_off() then
         * stops both loops instead of retrying in a tight circle */
        while (p->total < p->opts.min && !backing_off(p)) /* keep the floor warm */
            conn_start(p);
        int want = p->nwait - p->connecting;
        while (want-- > 0 && p->total < p->opts.max && !backing_off(p))
            conn_start(p);
    }
    if (p->whead && p->total == 0 && backing_off(p))
        fail_waiters(p); /* down, and nobody holds a live connection */
    else if (p->nwait > p->connecting && p->total < p->opts.max && backing_off(p))
        kick_after_backoff(p); /* waiters a new connection could serve */
}

static void pool_kick(ev_pg_pool_t *p)
{
    /* nobody waiting and enough connections: nothing to do */
    if (p->kick && (p->nwait > 0 || p->total < p->opts.min))
        event_active(p->kick, EV_TIMEOUT, 0);
}

ev_pg_pool_t *ev_pg_pool_new(struct event_base *base, const char *conninfo,
                             const ev_pg_opts_t *opts)
{
    ev_pg_pool_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->base = base;
    p->conninfo = strdup(conninfo);
    p->opts = (ev_pg_opts_t){10, 0, 5000, 30000, 5000};
    if (opts) {
        if (opts->max > 0)
            p->opts.max = opts->max;
        if (opts->min > 0)
            p->opts.min = opts->min < p->opts.max ? opts->min : p->opts.max;
        if (opts->acquire_timeout_ms > 0)
            p->opts.acquire_timeout_ms = opts->acquire_timeout_ms;
        if (opts->statement_timeout_ms > 0)
            p->opts.statement_timeout_ms = opts->statement_timeout_ms;
        if (opts->connect_timeout_ms > 0)
            p->opts.connect_timeout_ms = opts->connect_timeout_ms;
    }
    snprintf(p->options, sizeof p->options,
             "-c statement_timeout=%d -c TimeZone=UTC -c DateStyle=ISO,YMD -c client_encoding=UTF8",
             p->opts.statement_timeout_ms);
    p->kick = event_new(base, -1, 0, on_kick, p);
    if (!p->conninfo || !p->kick) {
        ev_pg_pool_free(p);
        return NULL;
    }
    pool_kick(p); /* opens the minimum from the loop */
    return p;
}

void ev_pg_pool_free(ev_pg_pool_t *p)
{
    if (!p)
        return;
    struct event *kick = p->kick;
    p->kick = NULL; /* conn_close must not schedule anything now */
    /* the callers' coroutines are gone with their Lua state: drop, do not call */
    while (p->whead) {
        ev_pg_waiter_t *w = p->whead;
        waiter_unlink(w);
        free(w);
    }
    p->idle = NULL;
    while (p->all) /* idle, connecting, and any a caller still holds */
        conn_close(p->all);
    if (kick)
        event_free(kick);
    free(p->conninfo);
    free(p);
}

void ev_pg_release(ev_pg_conn_t *c)
{
    ev_pg_pool_t *p = c->pool;
    c->watch = NULL;
    if (c->state != C_LEASED || PQstatus(c->pg) != CONNECTION_OK ||
        PQtransactionStatus(c->pg) != PQTRANS_IDLE) {
        /* never pool a connection mid-query or mid-transaction */
        if (c->state == C_LEASED && PQtransactionStatus(c->pg) != PQTRANS_IDLE)
            ev_warn("postgres: connection released inside a transaction; closing it");
        conn_close(c);
        return;
    }
    c->state = C_IDLE;
    c->next = p->idle;
    p->idle = c;
    p->nidle++;
    pool_kick(p);
}

void ev_pg_abandon(ev_pg_conn_t *c)
{
    c->fn = NULL;
    conn_close(c);
}

PGconn *ev_pg_raw(ev_pg_conn_t *c)
{
    return c->pg;
}

void ev_pg_watch(ev_pg_conn_t *c, ev_pg_watch_fn fn, void *arg)
{
    c->watch = fn;
    c->watch_arg = arg;
}

void ev_pg_stats(const ev_pg_pool_t *p, ev_pg_stats_t *o)
{
    *o = (ev_pg_stats_t){p->total,
                         p->nidle,
                         p->total - p->nidle - p->connecting,
                         p->nwait,
                         p->opts.max,
                         p->acquired,
                         p->timeouts,
                         p->connect_failures,
                         p->queries,
                         p->errors,
                         p->last_error};
}

/* ---- queries ---- */

static void query_done(ev_pg_conn_t *c, PGresult *res, const char *err)
{
    ev_pg_result_fn fn = c->fn;
    void *arg = c->arg;
    c->fn = NULL;
    /* a result read before the connection broke (the server's error, then
     * the close) is nobody's answer now */
    if (c->last && c->last != res)
        PQclear(c->last);
    c->last = NULL;
    free(c->params);
    c->params = NULL;
    c->values = NULL;
    if (c->state == C_QUERY)
        c->state = C_LEASED;
    if (err || (res && PQresultStatus(res) == PGRES_FATAL_ERROR))
        c->pool->errors++;
    if (fn)
        fn(c, res, err, arg); /* last: it may release or query again */
    if (res)
        PQclear(res);
}

static void conn_broken(ev_pg_conn_t *c, const char *why)
{
    char msg[300];
    snprintf(msg, sizeof msg, "closed: %s", why);
    set_error(c->pool, why);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n')
        msg[--n] = '\0';
    if (c->state == C_IDLE) {
        idle_remove(c);
        conn_close(c);
        return;
    }
    int had_query = c->state == C_QUERY;
    c->state = C_DEAD;
    /* libpq has closed the socket: its fd number may be reused by the next
     * accept(), so our events on it must go now, not at release */
    if (c->rev)
        event_del(c->rev);
    if (c->cev)
        event_del(c->cev);
    if (had_query)
        query_done(c, NULL, msg);
    else if (c->watch)
        c->watch(c, msg, c->watch_arg);
}

static void flush_step(evutil_socket_t fd, short what, void *arg)
{
    ev_pg_conn_t *c = arg;
    (void)fd;
    (void)what;
    int r = PQflush(c->pg);
    if (r < 0)
        conn_broken(c, PQerrorMessage(c->pg));
    else if (r == 1)
        event_add(c->cev, NULL);
}

static int send_flush(ev_pg_conn_t *c)
{
    int r = PQflush(c->pg);
    if (r < 0)
        return -1;
    if (r == 1) { /* the socket is full: finish when writable */
        if (!c->cev)
            c->cev = event_new(c->pool->base, c->fd, EV_WRITE, flush_step, c);
        event_add(c->cev, NULL);
    }
    return 0;
}

static int send_execute(ev_pg_conn_t *c)
{
    char name[16];
    snprintf(name, sizeof name, "s%d", c->stmt);
    if (!PQsendQueryPrepared(c->pg, name, c->nparams, c->values, NULL, NULL, 0))
        return -1;
    return send_flush(c);
}

/* The first use of a statement on this connection prepares it; the values
 * must outlive that round trip, so they are copied. */
static int copy_params(ev_pg_conn_t *c, int n, const char *const *values)
{
    size_t size = (size_t)n * sizeof(char *);
    for (int i = 0; i < n; i++)
        size += values[i] ? strlen(values[i]) + 1 : 0;
    c->params = malloc(size ? size : 1);
    if (!c->params)
        return -1;
    c->values = (const char **)c->params;
    char *p = c->params + (size_t)n * sizeof(char *);
    for (int i = 0; i < n; i++) {
        if (!values[i]) {
            c->values[i] = NULL;
            continue;
        }
        size_t len = strlen(values[i]) + 1;
        memcpy(p, values[i], len);
        c->values[i] = p;
        p += len;
    }
    return 0;
}

int ev_pg_query(ev_pg_conn_t *c, const char *sql, int nparams, const char *const *values,
                ev_pg_result_fn fn, void *arg)
{
    if (c->state != C_LEASED)
        return -1;
    uint32_t h = hash_sql(sql);
    /* a statement whose best plan depends on its values (a substring
     * search) says so and is never prepared: a prepared statement settles on
     * a generic plan after five executions (see pg.h) */
    int custom = strstr(sql, EV_PG_CUSTOM_PLAN) != NULL;
    int idx = custom ? -1 : stmt_find(c, sql, h);
    c->fn = fn;
    c->arg = arg;
    c->nparams = nparams;
    c->preparing = 0;
    c->pool->queries++;
    int ok;
    char *copy = NULL; /* the statement's text, kept when it prepares */
    if (idx >= 0) {
        c->stmt = idx;
        c->values = (const char **)values;
        ok = send_execute(c) == 0;
        c->values = NULL; /* libpq copied them into its buffer */
    } else if (c->nstmts < STMT_CACHE && !custom && (copy = strdup(sql)) != NULL) {
        /* (out of memory for the copy: sent unprepared below) */
        char name[16];
        snprintf(name, sizeof name, "s%d", c->nstmts);
        c->stmt = c->nstmts;
        c->preparing = 1;
        ok = copy_params(c, nparams, values) == 0 &&
             PQsendPrepare(c->pg, name, sql, nparams, NULL) && send_flush(c) == 0;
        if (ok) {
            c->sqls[c->nstmts] = copy;
            c->hashes[c->nstmts] = h;
        } else {
            free(copy);
        }
    } else {
        ok = PQsendQueryParams(c->pg, sql, nparams, NULL, values, NULL, NULL, 0) &&
             send_flush(c) == 0;
    }
    if (!ok) {
        c->fn = NULL;
        free(c->params);
        c->params = NULL;
        set_error(c->pool, PQerrorMessage(c->pg));
        c->state = C_DEAD; /* a connection that cannot send is done for */
        if (c->rev)        /* libpq may have closed its socket: see conn_broken */
            event_del(c->rev);
        return -1;
    }
    c->state = C_QUERY;
    return 0;
}

/* All results of one command are in: the last one is the answer. */
static void results_in(ev_pg_conn_t *c)
{
    PGresult *res = c->last;
    c->last = NULL;
    if (c->preparing) {
        c->preparing = 0;
        if (res && PQresultStatus(res) == PGRES_COMMAND_OK) {
            PQclear(res);
            c->nstmts++; /* the statement exists now: keep it */
            if (send_execute(c) != 0)
                conn_broken(c, PQerrorMessage(c->pg));
            return;
        }
        free(c->sqls[c->nstmts]); /* a statement that does not prepare is not kept */
        c->sqls[c->nstmts] = NULL;
    }
    query_done(c, res, res ? NULL : "closed: no result");
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    ev_pg_conn_t *c = arg;
    (void)fd;
    (void)what;
    if (!PQconsumeInput(c->pg)) {
        conn_broken(c, PQerrorMessage(c->pg));
        return;
    }
    if (c->state != C_QUERY) {
        if (PQstatus(c->pg) != CONNECTION_OK)
            conn_broken(c, "server closed the connection");
        else if (c->state == C_LEASED && c->watch)
            c->watch(c, NULL, c->watch_arg);
        return; /* notices and the like on an idle connection */
    }
    while (!PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        if (!r) {
            results_in(c);
            return;
        }
        if (c->last)
            PQclear(c->last);
        c->last = r;
    }
}
