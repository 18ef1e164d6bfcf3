/* worker.c - a worker: HTTP requests into Lua coroutines and back.
 *
 * Each request becomes a coroutine running evently.app.dispatch(req); its
 * results (status, headers, body, route) become the answer. dispatch catches
 * handler errors itself, so an error status here means a bug in the platform
 * Lua and is answered 500 like any other. Three things may end a request
 * early: the client goes away (coroutine aborted, nothing written), the
 * handler deadline passes (aborted, 504) or the worker drains (requests in
 * flight finish; new connections go to the next generation).
 *
 * Before a coroutine is made, the request is offered to the early-answer
 * rules Lua registered (core/early.c): a sold-out booking with a known token
 * is answered from C there, logged and counted like any other answer. */
#include "worker.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "co.h"
#include "early.h"
#include "gate.h"
#include "http.h"
#include "log.h"
#include "problem.h"
#include "pg.h"
#include "redis.h"
#include "runtime.h"
#include "slice.h"
#include "token_cache.h"
#include "ws.h"

typedef struct {
    ev_runtime_t rt;
    lua_State *L;
    ev_http_server_t *http;
    ev_http_server_t *ops; /* ops_listen's server, or NULL */
    int dispatch_ref;
    int access_fd; /* -1: access log off */
    struct event *sig_term, *sig_quit, *sig_int, *drain_tick, *mem_tick;
    struct timeval drain_start;
    struct ev_request *spare; /* finished request contexts, reused */
    int nspare;
    unsigned long long early_answers, early_flushed;   /* answered in C; flushed to /metrics */
    unsigned long long early_limited, limited_flushed; /* of which 429 rate-limited */
    unsigned long long refusals_flushed;               /* ev_gate_refusals() flushed so far */
} ev_worker_t;

typedef struct ev_request {
    ev_worker_t *w;
    ev_http_req_t *req;
    ev_co_t *co;
    struct event *deadline;
    struct ev_request *next_spare;
} ev_request_t;

/* ---- access log and metrics ---- */

static void on_answered(const ev_http_req_t *req, int status, size_t bytes, const char *route,
                        void *arg)
{
    ev_worker_t *w = arg;
    struct timeval now, d;
    gettimeofday(&now, NULL);
    timersub(&now, &req->start, &d);
    uint64_t us = (uint64_t)d.tv_sec * 1000000u + (uint64_t)d.tv_usec;
    if (w->rt.metrics)
        ev_metrics_observe(w->rt.metrics, req->method, route ? route : "unmatched", status, us);
    if (w->access_fd < 0)
        return;
    char path[512], line[1024];
    ev_json_escape(path, sizeof path, req->path, strlen(req->path));
    int n =
        snprintf(line, sizeof line,
                 "{\"time\":%ld.%03d,\"method\":\"%s\",\"path\":\"%s\",\"route\":\"%s\","
                 "\"status\":%d,\"bytes\":%zu,\"duration_ms\":%.3f,\"request_id\":\"%s\","
                 "\"peer\":\"%s\"}\n",
                 (long)now.tv_sec, (int)(now.tv_usec / 1000), req->method, path, route ? route : "",
                 status, bytes, (double)us / 1000.0, req->request_id, req->peer);
    if (n > (int)sizeof line - 1) {
        n = (int)sizeof line - 1;
        line[n - 1] = '\n';
    }
    ssize_t ignored = write(w->access_fd, line, (size_t)n);
    (void)ignored;
}

/* ---- answering from Lua results ---- */

/* Contexts (and their deadline timers) are kept for the next request. */
static void request_free(ev_request_t *r)
{
    ev_worker_t *w = r->w;
    if (r->deadline)
        evtimer_del(r->deadline);
    if (r->deadline && w->nspare < 256) {
        r->next_spare = w->spare;
        w->spare = r;
        w->nspare++;
        return;
    }
    if (r->deadline)
        event_free(r->deadline);
    free(r);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg);

static ev_request_t *request_new(ev_worker_t *w)
{
    ev_request_t *r = w->spare;
    if (r) {
        w->spare = r->next_spare;
        w->nspare--;
        r->req = NULL;
        r->co = NULL;
        return r;
    }
    r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->w = w;
    r->deadline = evtimer_new(w->rt.base, on_deadline, r);
    if (!r->deadline) {
        free(r);
        return NULL;
    }
    return r;
}

static void spares_free(ev_worker_t *w)
{
    while (w->spare) {
        ev_request_t *r = w->spare;
        w->spare = r->next_spare;
        event_free(r->deadline);
        free(r);
    }
    w->nspare = 0;
}

static void respond_problem(ev_http_req_t *req, int status, const char *type, const char *title,
                            const char *route)
{
    char body[512], id[96];
    snprintf(id, sizeof id, "\"request_id\":\"%s\"", req->request_id);
    int n = ev_problem_body(body, sizeof body, status, title, type, NULL, id);
    ev_http_header_t h = {"Content-Type", 12, "application/problem+json", 24};
    ev_http_respond(req, status, &h, 1, body, (size_t)n, route);
}

/* Results on T: status, headers table, body string, route. */
static void respond_from_lua(ev_http_req_t *req, lua_State *T)
{
    int status = (int)lua_tointeger(T, 1);
    const char *route = lua_tostring(T, 4);
    size_t body_len = 0;
    const char *body = lua_tolstring(T, 3, &body_len);
    ev_http_header_t hs[64];
    size_t n = 0;
    if (status < 100 || status > 599) {
        ev_error("[%s] handler produced bad status; answering 500", req->request_id);
        respond_problem(req, 500, "internal", "Internal Server Error", route);
        return;
    }
    if (lua_istable(T, 2)) {
        lua_pushnil(T);
        while (n < 64 && lua_next(T, 2)) {
            if (lua_type(T, -2) == LUA_TSTRING && lua_type(T, -1) == LUA_TSTRING) {
                hs[n].name = lua_tolstring(T, -2, &hs[n].name_len);
                hs[n].value = lua_tolstring(T, -1, &hs[n].value_len);
                if (!memchr(hs[n].value, '\n', hs[n].value_len) &&
                    !memchr(hs[n].value, '\r', hs[n].value_len) &&
                    !memchr(hs[n].name, ':', hs[n].name_len))
                    n++; /* header injection is refused silently: value dropped */
            }
            lua_pop(T, 1); /* the strings stay alive: they are keys/values of the table */
        }
    }
    ev_http_respond(req, status, hs, n, body ? body : "", body ? body_len : 0, route);
}

static void on_done(ev_co_t *co, lua_State *T, int status, void *ud)
{
    ev_request_t *r = ud;
    if (!r->req) { /* upgraded: the socket is a WebSocket's, nothing to answer */
        if (status != LUA_OK)
            ev_error("[%s] handler failed after its upgrade: %s", ev_co_tag(co),
                     lua_tostring(T, -1) ? lua_tostring(T, -1) : "?");
        request_free(r);
        return;
    }
    if (ev_slice_stopped(T)) {
        /* the loop was frozen for the whole slice limit: say so, keep serving */
        ev_error("[%s] handler ran past %d ms without yielding: stopped; answering 503",
                 r->req->request_id, r->w->rt.cfg->script_slice_ms);
        respond_problem(r->req, 503, "busy", "Service Unavailable", ev_co_route(co));
    } else if (status == LUA_OK && lua_gettop(T) >= 3) {
        respond_from_lua(r->req, T);
    } else {
        const char *msg = lua_tostring(T, -1);
        luaL_traceback(T, T, msg ? msg : "(error object is not a string)", 0);
        ev_error("[%s] request failed: %s", r->req->request_id, lua_tostring(T, -1));
        respond_problem(r->req, 500, "internal", "Internal Server Error", ev_co_route(co));
    }
    request_free(r);
}

static void on_abort(ev_http_req_t *req)
{
    ev_request_t *r = req->ud;
    ev_debug("[%s] client went away; aborting the request", req->request_id);
    ev_co_abort(r->co);
    request_free(r);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    ev_request_t *r = arg;
    (void)fd;
    (void)what;
    ev_warn("[%s] handler passed its deadline; answering 504", r->req->request_id);
    char route[112];
    const char *name = ev_co_route(r->co);
    snprintf(route, sizeof route, "%s", name ? name : "unmatched");
    ev_co_abort(r->co);
    ev_http_req_t *req = r->req;
    request_free(r);
    respond_problem(req, 504, "timeout", "Gateway Timeout", route);
}

/* ---- upgrades (runtime hooks, see runtime.h) ---- */

static ev_http_req_t *request_of(ev_runtime_t *rt, ev_co_t *co)
{
    (void)rt;
    ev_request_t *r = ev_co_owner(co, on_done);
    return r ? r->req : NULL;
}

/* The handler coroutine lives on as the WebSocket's: no deadline (a socket
 * may stay open for hours) and no answer when it returns. */
static void request_detach(ev_runtime_t *rt, ev_co_t *co)
{
    (void)rt;
    ev_request_t *r = ev_co_owner(co, on_done);
    if (!r)
        return;
    evtimer_del(r->deadline);
    r->req = NULL;
}

/* The request table: method, path, query, headers, body, id, peer. */
static void push_request(lua_State *T, const ev_http_req_t *req, int ops)
{
    lua_createtable(T, 0, 9);
    if (ops) { /* came in on ops_listen: evently.app serves only the operations routes there */
        lua_pushliteral(T, "ops");
        lua_setfield(T, -2, "listener");
    }
    lua_pushstring(T, req->method);
    lua_setfield(T, -2, "method");
    lua_pushstring(T, req->path);
    lua_setfield(T, -2, "path");
    if (req->query) {
        lua_pushstring(T, req->query);
        lua_setfield(T, -2, "query_string");
    }
    lua_createtable(T, 0, (int)req->nheaders);
    for (size_t i = 0; i < req->nheaders; i++) {
        const ev_http_header_t *h = &req->headers[i];
        lua_pushlstring(T, h->name, h->name_len);
        if (lua_rawget(T, -2) == LUA_TSTRING) { /* repeated header: join as RFC 9110 allows */
            lua_pushliteral(T, ", ");
            lua_pushlstring(T, h->value, h->value_len);
            lua_concat(T, 3);
        } else {
            lua_pop(T, 1);
            lua_pushlstring(T, h->value, h->value_len);
        }
        lua_pushlstring(T, h->name, h->name_len);
        lua_insert(T, -2);
        lua_rawset(T, -3);
    }
    lua_setfield(T, -2, "headers");
    lua_pushlstring(T, req->body, req->body_len);
    lua_setfield(T, -2, "body");
    lua_pushstring(T, req->request_id);
    lua_setfield(T, -2, "id");
    lua_pushstring(T, req->peer);
    lua_setfield(T, -2, "peer");
}

/* A request an early-answer rule answers (core/early.c): 1 when answered,
 * counted as the Lua route would count it. */
static int answer_early(ev_worker_t *w, ev_http_req_t *req)
{
    const ev_early_answer_t *a =
        ev_early_match(w->rt.early, w->rt.tokens, req, ev_token_cache_now());
    if (!a)
        return 0;
    ev_debug("[%s] answered early: %d (%s)", req->request_id, a->status, a->route);
    w->early_answers++;
    if (a->kind == EV_EARLY_WHEN_CLOSED)
        ev_gate_count_refusal();
    else
        w->early_limited++; /* flushed once a second, as the shared region wants */
    ev_http_respond(req, a->status, a->headers, a->nheaders, a->body, a->body_len, a->route);
    return 1;
}

static void start_request(ev_worker_t *w, ev_http_req_t *req, int ops)
{
    ev_request_t *r = request_new(w);
    if (!r) {
        respond_problem(req, 503, "unavailable", "Service Unavailable", NULL);
        return;
    }
    r->req = req;
    r->co = ev_co_new(w->L, w->rt.base, on_done, r);
    if (!r->co) {
        request_free(r);
        respond_problem(req, 503, "unavailable", "Service Unavailable", NULL);
        return;
    }
    struct timeval tv = {w->rt.cfg->handler_timeout, 0};
    evtimer_add(r->deadline, &tv);
    req->ud = r;
    req->on_abort = on_abort;
    ev_co_set_tag(r->co, req->request_id);
    lua_State *T = ev_co_state(r->co);
    lua_rawgeti(T, LUA_REGISTRYINDEX, w->dispatch_ref);
    push_request(T, req, ops);
    ev_co_start(r->co, 1);
}

static void on_request(ev_http_req_t *req, void *arg)
{
    ev_worker_t *w = arg;
    if (w->rt.early && answer_early(w, req))
        return;
    start_request(w, req, 0);
}

/* The operations listener: no early answers, and the request says where it
 * came in. */
static void on_ops_request(ev_http_req_t *req, void *arg)
{
    start_request(arg, req, 1);
}

/* ---- lifecycle ---- */

static void drain_check(evutil_socket_t fd, short what, void *arg)
{
    ev_worker_t *w = arg;
    (void)fd;
    (void)what;
    struct timeval now, d;
    gettimeofday(&now, NULL);
    timersub(&now, &w->drain_start, &d);
    int conns = ev_http_server_connections(w->http) + ev_ws_hub_count(w->rt.ws) +
                (w->ops ? ev_http_server_connections(w->ops) : 0);
    if (conns == 0 || d.tv_sec >= w->rt.cfg->drain_timeout) {
        if (conns)
            ev_warn("drain timeout: closing %d connections", conns);
        event_base_loopbreak(w->rt.base);
    }
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    ev_worker_t *w = arg;
    (void)what;
    if (w->rt.draining)
        return;
    ev_info("worker draining (signal %d)", (int)sig);
    w->rt.draining = 1;
    gettimeofday(&w->drain_start, NULL);
    ev_http_server_drain(w->http);
    if (w->ops)
        ev_http_server_drain(w->ops);
    if (w->rt.ws) /* clients reconnect, to the next generation */
        ev_ws_hub_close_all(w->rt.ws, 1001, "server going away");
    struct timeval tick = {0, 20000};
    event_add(w->drain_tick, &tick);
}

static void publish_pool(ev_worker_t *w, ev_pool_kind_t kind, const ev_pg_pool_t *p)
{
    if (!p)
        return;
    ev_pg_stats_t s;
    ev_pg_stats(p, &s);
    ev_metrics_pool_t m = {s.total,    s.idle,     s.busy,   s.waiting, s.max,
                           s.acquired, s.timeouts, s.errors, s.queries};
    ev_metrics_pool_set(w->rt.metrics, w->rt.worker_slot, kind, &m);
}

/* Counts kept per worker, added to the shared region once a second (a
 * shared counter bumped per request would bounce a cache line between the
 * workers). Gate refusals are counted in gate.c wherever they are answered
 * (here, the inventory engine, Lua); domain/seats.lua flushes the engine's
 * batch counts the same way. */
static void flush_counts(ev_worker_t *w)
{
    unsigned long long refusals = ev_gate_refusals();
    if (refusals > w->refusals_flushed)
        ev_metrics_count(w->rt.metrics, "evently_booking_gate_soldout_total",
                         refusals - w->refusals_flushed);
    w->refusals_flushed = refusals;
    if (w->early_answers > w->early_flushed)
        ev_metrics_count(w->rt.metrics, "evently_early_answers_total",
                         w->early_answers - w->early_flushed);
    w->early_flushed = w->early_answers;
    if (w->early_limited > w->limited_flushed)
        ev_metrics_count(w->rt.metrics, "evently_rate_limited_total",
                         w->early_limited - w->limited_flushed);
    w->limited_flushed = w->early_limited;
}

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Once a second: the heartbeat the master's watchdog reads (the first one
 * says this worker is ready), this worker's Lua heap, pool figures and counts
 * for /metrics. */
static void on_mem_tick(evutil_socket_t fd, short what, void *arg)
{
    ev_worker_t *w = arg;
    (void)fd;
    (void)what;
    if (!w->rt.metrics)
        return;
    ev_metrics_worker_beat(w->rt.metrics, w->rt.worker_slot, monotonic_ms());
    flush_counts(w);
    ev_metrics_worker_memory(w->rt.metrics, w->rt.worker_slot,
                             (uint64_t)lua_gc(w->L, LUA_GCCOUNT, 0) * 1024);
    publish_pool(w, EV_POOL_DB, w->rt.db);
    publish_pool(w, EV_POOL_REPLICA, w->rt.replica);
    if (w->rt.redis) {
        ev_redis_stats_t s;
        ev_redis_stats(w->rt.redis, &s);
        ev_metrics_pool_t m = {s.connected, 0,          s.pending, 0,         1,
                               s.commands,  s.timeouts, s.errors,  s.commands};
        ev_metrics_pool_set(w->rt.metrics, w->rt.worker_slot, EV_POOL_REDIS, &m);
    }
}

static int open_access_log(const char *where)
{
    if (!where || strcmp(where, "off") == 0)
        return -1;
    if (strcmp(where, "stderr") == 0)
        return STDERR_FILENO;
    if (strcmp(where, "stdout") == 0)
        return STDOUT_FILENO;
    int fd = open(where, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        ev_error("access log %s: %s; logging to stderr", where, strerror(errno));
    return fd < 0 ? STDERR_FILENO : fd;
}

static int load_dispatch(ev_worker_t *w)
{
    char err[2048];
    if (ev_runtime_boot(w->L, err, sizeof err) != 0) {
        ev_error("scripts failed to load: %s", err);
        return -1;
    }
    lua_getglobal(w->L, "require");
    lua_pushliteral(w->L, "evently.app");
    if (lua_pcall(w->L, 1, 1, 0) != LUA_OK) {
        ev_error("evently.app: %s", lua_tostring(w->L, -1));
        return -1;
    }
    lua_getfield(w->L, -1, "dispatch");
    w->dispatch_ref = luaL_ref(w->L, LUA_REGISTRYINDEX);
    lua_pop(w->L, 1);
    return 0;
}

int ev_worker_run(const ev_config_t *cfg, int listen_fd, int ops_fd, ev_metrics_t *metrics,
                  int slot)
{
    ev_worker_t w = {0};
    int rc = 1;
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the master */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    w.access_fd = -1;
    w.rt.cfg = cfg;
    w.rt.metrics = metrics;
    w.rt.worker_slot = slot;
    w.rt.http_request = request_of;
    w.rt.http_detach = request_detach;
    w.rt.base = event_base_new();
    if (!w.rt.base)
        goto done;
    w.L = ev_runtime_new(&w.rt);
    if (w.L)
        lua_gc(w.L, LUA_GCGEN, 0,
               0); /* requests make short-lived garbage: young collections suit it */
    if (!w.L || load_dispatch(&w) != 0)
        goto done; /* exits with signals still blocked: nothing to handle */
    ev_http_limits_t limits = {cfg->max_header, cfg->max_body, cfg->max_connections,
                               cfg->idle_timeout, cfg->read_timeout};
    w.access_fd = open_access_log(cfg->access_log);
    w.http = ev_http_server_new(w.rt.base, listen_fd, &limits, on_request, on_answered, &w);
    if (!w.http) {
        ev_error("cannot serve on the listening socket");
        goto done;
    }
    if (ops_fd >= 0 && !(w.ops = ev_http_server_new(w.rt.base, ops_fd, &limits, on_ops_request,
                                                    on_answered, &w))) {
        ev_error("cannot serve on the operations socket");
        goto done;
    }
    w.sig_term = evsignal_new(w.rt.base, SIGTERM, on_stop_signal, &w);
    w.sig_quit = evsignal_new(w.rt.base, SIGQUIT, on_stop_signal, &w);
    w.sig_int = evsignal_new(w.rt.base, SIGINT, on_stop_signal, &w);
    w.drain_tick = event_new(w.rt.base, -1, EV_PERSIST, drain_check, &w);
    w.mem_tick = event_new(w.rt.base, -1, EV_PERSIST, on_mem_tick, &w);
    evsignal_add(w.sig_term, NULL);
    evsignal_add(w.sig_quit, NULL);
    evsignal_add(w.sig_int, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL); /* blocked by the master across fork */
    if (ev_slice_start(cfg->script_slice_ms) != 0)
        ev_warn("cannot watch scripts that do not yield: %s", strerror(errno));
    struct timeval sec = {1, 0};
    event_add(w.mem_tick, &sec);
    on_mem_tick(-1, 0, &w);
    ev_info("worker %d serving", slot);
    event_base_dispatch(w.rt.base);
    ev_info("worker %d stopped", slot);
    rc = 0;
done:
    ev_slice_stop();
    if (w.http)
        ev_http_server_free(w.http); /* aborts what is left after a drain timeout */
    if (w.ops)
        ev_http_server_free(w.ops);
    struct event *evs[] = {w.sig_term, w.sig_quit, w.sig_int, w.drain_tick, w.mem_tick};
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        if (evs[i])
            event_free(evs[i]);
    if (w.L)
        lua_close(w.L);
    ev_runtime_close(&w.rt);
    spares_free(&w);
    if (w.rt.base)
        event_base_free(w.rt.base);
    if (w.access_fd > STDERR_FILENO)
        close(w.access_fd);
    return rc;
}
