/* lua_redis.c - evently.redis.core: the Redis primitives under evently.redis.
 *
 *   core.default() -> client | nil, err
 *       the worker's client for EVENTLY_REDIS_URL (created on first use, one
 *       per Lua state; never closed from Lua: the runtime frees it)
 *   core.connect(url?, opts?) -> client | nil, err
 *       a client of its own (own connections), e.g. for blocking commands;
 *       url defaults to EVENTLY_REDIS_URL; opts.timeout, opts.connect_timeout
 *       in seconds (default 2). Freed by client:close() and the collector.
 *   client:call(opts?, cmd, ...) -> reply | nil, err                    [yields]
 *       opts: nil or {timeout = seconds}. Arguments: strings (binary-safe) and
 *       numbers (integers as decimals, floats exact). Replies: status and bulk
 *       -> string, integer -> integer, nil -> core.null, array -> table (its
 *       nils are core.null, its error replies error tables); an error reply
 *       -> nil, err with err.kind "redis".
 *   client:pipeline(opts?, cmds) -> results | nil, err                  [yields]
 *       cmds: array of {n = count, cmd, args...} (table.pack); all are sent
 *       back to back and answered with one wake-up; results[i] = {reply} or
 *       {nil, err}. MULTI ... EXEC may appear here, balanced.
 *   client:subscribe(channel, opts?, wait?) -> true | nil, err  [yields if wait]
 *       adds channel on the client's pub/sub connection; with wait, and in a
 *       coroutine, returns once Redis confirmed. Each message runs every
 *       function in client:handlers()[channel] (a table handle -> fn) as
 *       fn(channel, message) in its own coroutine. Resubscribed after a
 *       reconnect.
 *   client:unsubscribe(channel)
 *   client:handlers() -> {channel = {handle = fn}}  (evently.redis manages it)
 *   client:stats() -> {connected, subscribed, channels, pending, commands,
 *       errors, timeouts, reconnects, connect_failures, last_error}
 *   client:close()    pending calls fail with "closed"; later ones too
 *   core.sha1(s) -> hex digest (script ids for EVALSHA)
 *   core.null         the nil-reply sentinel (cjson.null, like db.null)
 * err is a table {kind = "timeout"|"closed"|"unavailable"|"redis"|"error",
 * message, code} whose tostring is "kind: message"; code is the first word of
 * an error reply ("WRONGTYPE", "NOSCRIPT", "ERR"). Commands that would break a
 * connection shared by every coroutine (SUBSCRIBE, MONITOR, SELECT, WATCH,
 * QUIT, HELLO, CLIENT REPLY..., MULTI outside a pipeline) raise. Calls that
 * yield run only in a request, timer or script coroutine.
 *
 * Every yielding call is one ev_redis request and one wait_t (co.h): the
 * engine's callback stores the replies and wakes the coroutine, wait_push
 * turns them into Lua values while the engine still holds them. To add a
 * helper, write it in evently/redis.lua over client:call; a new kind of
 * wait adds a W_* kind and its branch in wait_push. */
#include <event2/event.h>
#include <lauxlib.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "co.h"
#include "log.h"
#include "lua_errors.h"
#include "lua_redis.h"
#include "redis.h"
#include "runtime.h"

#define CLIENT_MT "evently.redis.client"
#define ERR_MT    "evently.redis.error"

typedef struct {
    ev_redis_t *r; /* NULL once collected */
    lua_State *L;  /* main thread: messages start their coroutines there */
    struct event_base *base;
    int owned;      /* connect()ed; the default client is the runtime's */
    int handlers;   /* registry ref of {channel = {handle = fn}} */
    int timeout_ms; /* default per call */
} client_t;

static const char DEFAULT_KEY = 'd'; /* registry: the default client userdata */

/* ---- errors ---- */

static int push_fail(lua_State *L, const char *err)
{
    return ev_lua_error_fail(L, ERR_MT, err);
}

/* An error reply: {kind = "redis", message = "WRONGTYPE ...", code = "WRONGTYPE"} */
static void push_redis_error(lua_State *L, const redisReply *rep)
{
    ev_lua_error_push(L, ERR_MT, "redis", rep->str ? rep->str : "", rep->str ? rep->len : 0);
    size_t n = 0;
    while (rep->str && n < rep->len && rep->str[n] != ' ')
        n++;
    lua_pushlstring(L, rep->str ? rep->str : "", n);
    lua_setfield(L, -2, "code");
}

/* ---- replies ---- */

static void push_reply(lua_State *L, const redisReply *rep)
{
    switch (rep->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS: lua_pushlstring(L, rep->str, rep->len); break;
    case REDIS_REPLY_INTEGER: lua_pushinteger(L, (lua_Integer)rep->integer); break;
    case REDIS_REPLY_ARRAY:
        luaL_checkstack(L, 4, "redis: reply nested too deeply");
        lua_createtable(L, rep->elements > 1u << 24 ? 0 : (int)rep->elements, 0);
        for (size_t i = 0; i < rep->elements; i++) {
            push_reply(L, rep->element[i]);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    case REDIS_REPLY_ERROR: /* inside an array (EXEC): the element is the error */
        push_redis_error(L, rep);
        break;
    default: /* REDIS_REPLY_NIL */ lua_pushlightuserdata(L, NULL); break;
    }
}

int ev_redis_push_result(lua_State *L, const redisReply *rep)
{
    if (rep->type == REDIS_REPLY_ERROR) {
        lua_pushnil(L);
        push_redis_error(L, rep);
        return 2;
    }
    push_reply(L, rep);
    return 1;
}

/* ---- the wait ---- */

enum { W_CALL, W_PIPELINE, W_SUBSCRIBE };

typedef struct {
    ev_co_t *co;
    ev_redis_req_t *q;          /* NULL once answered */
    redisReply *const *replies; /* borrowed during push */
    int n;
    int kind;
    char err[256];
} wait_t;

static void on_done(const char *err, redisReply *const *replies, int n, void *arg)
{
    wait_t *w = arg;
    w->q = NULL;
    if (err)
        snprintf(w->err, sizeof w->err, "%s", err);
    w->replies = replies;
    w->n = n;
    ev_co_wake(w->co, EV_WAKE_DONE); /* push reads the replies before the engine frees them */
}

static int wait_push(lua_State *L, void *data, ev_wake_t why)
{
    wait_t *w = data;
    if (why == EV_WAKE_TIMEOUT)
        return push_fail(L, "timeout: no reply in time");
    if (w->err[0])
        return push_fail(L, w->err);
    if (w->kind == W_SUBSCRIBE) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (w->kind == W_CALL)
        return ev_redis_push_result(L, w->replies[0]);
    lua_createtable(L, w->n, 0);
    for (int i = 0; i < w->n; i++) {
        lua_createtable(L, 2, 0);
        int k = ev_redis_push_result(L, w->replies[i]);
        for (int j = k; j >= 1; j--) /* {reply} or {nil, err} */
            lua_rawseti(L, -1 - j, j);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static void wait_cancel(void *data)
{
    wait_t *w = data;
    ev_redis_cancel(w->q); /* its replies, if they come, are dropped */
    w->q = NULL;
}

static void wait_release(void *data)
{
    free(data);
}

static const ev_wait_ops_t call_ops = {"redis.call", wait_push, wait_cancel, wait_release};
static const ev_wait_ops_t pipeline_ops = {"redis.pipeline", wait_push, wait_cancel, wait_release};
static const ev_wait_ops_t subscribe_ops = {"redis.subscribe", wait_push, wait_cancel,
                                            wait_release};

static int can_wait(lua_State *L)
{
    return ev_co_current(L) && lua_isyieldable(L);
}

static void need_coroutine(lua_State *L, const char *what)
{
    if (!can_wait(L))
        luaL_error(L, "%s: must be called from a request, timer or script coroutine", what);
}

/* Registers the wait for q and yields; the client stays on the stack (index
 * 1) so it cannot be collected while the coroutine waits. */
static int wait_for(lua_State *L, wait_t *w, ev_redis_req_t *q, const ev_wait_ops_t *ops,
                    int timeout_ms)
{
    w->q = q;
    lua_settop(L, 1);
    /* the engine's timer answers first; ours is a backstop */
    return ev_co_wait(L, timeout_ms / 1000.0 + 1.0, ops, w);
}

static wait_t *wait_new(lua_State *L, int kind)
{
    wait_t *w = calloc(1, sizeof *w);
    if (!w)
        luaL_error(L, "out of memory");
    w->co = ev_co_current(L);
    w->kind = kind;
    return w;
}

/* ---- arguments ---- */

static client_t *check_client(lua_State *L)
{
    return luaL_checkudata(L, 1, CLIENT_MT);
}

/* opts at idx: nil or {timeout = seconds}; returns ms, 0 for the default */
static int opt_timeout(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx))
        return 0;
    luaL_checktype(L, idx, LUA_TTABLE);
    int ms = 0;
    if (lua_getfield(L, idx, "timeout") != LUA_TNIL) {
        double s = lua_tonumber(L, -1);
        luaL_argcheck(L, lua_isnumber(L, -1) && s > 0 && s < 1e6, idx,
                      "timeout must be a number of seconds > 0");
        ms = (int)ceil(s * 1000.0);
    }
    lua_pop(L, 1);
    return ms;
}

static int effective_ms(const client_t *c, int ms)
{
    return ms > 0 ? ms : c->timeout_ms;
}

/* The value at idx as bytes; a number becomes its text in place (floats
 * exactly: 0.1 is sent as the shortest text that reads back the same). */
static const char *arg_bytes(lua_State *L, int idx, size_t *len, int argn)
{
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: return lua_tolstring(L, idx, len);
    case LUA_TNUMBER:
        if (!lua_isinteger(L, idx)) {
            char buf[40];
            double d = lua_tonumber(L, idx);
            snprintf(buf, sizeof buf, "%.15g", d);
            if (strtod(buf, NULL) != d)
                snprintf(buf, sizeof buf, "%.17g", d);
            lua_pushstring(L, buf);
            lua_replace(L, idx);
        }
        return lua_tolstring(L, idx, len); /* integers convert in place */
    default:
        luaL_error(L, "redis: argument #%d: cannot send a %s", argn, luaL_typename(L, idx));
        return NULL;
    }
}

static int name_is(const char *name, size_t len, const char *want)
{
    return strlen(want) == len && strncasecmp(name, want, len) == 0;
}

/* Commands that change the state of a connection every coroutine shares, or
 * that hiredis 0.14 cannot follow. MULTI ... EXEC is safe only inside one
 * pipeline, where nothing else can come in between. */
static void check_command(lua_State *L, const char *name, size_t len, const char *arg1,
                          size_t arg1len, int *multi)
{
    static const char *const refused[] = {
        "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe",
        "monitor",   "select",     "quit",       "reset",       "hello",        "watch",
        "unwatch",   "sync",       "psync",      NULL};
    for (int i = 0; refused[i]; i++)
        if (name_is(name, len, refused[i]))
            luaL_error(L, "redis: %s is not allowed on the shared connection%s", refused[i],
                       i < 6 ? " (use redis.subscribe)" : "");
    if (name_is(name, len, "client") && arg1 && name_is(arg1, arg1len, "reply"))
        luaL_error(L, "redis: CLIENT REPLY is not allowed on the shared connection");
    int begin = name_is(name, len, "multi");
    int end = name_is(name, len, "exec") || name_is(name, len, "discard");
    if (!begin && !end)
        return;
    if (!multi)
        luaL_error(L, "redis: MULTI/EXEC/DISCARD only inside redis.pipeline");
    if (begin && *multi)
        luaL_error(L, "redis: MULTI inside MULTI");
    if (end && !*multi)
        luaL_error(L, "redis: EXEC/DISCARD without MULTI");
    *multi = begin;
}

/* ---- calls ---- */

static int client_call(lua_State *L)
{
    client_t *c = check_client(L);
    int first = 2, ms = 0;
    if (lua_istable(L, 2) || lua_isnil(L, 2)) {
        ms = opt_timeout(L, 2);
        first = 3;
    }
    int argc = lua_gettop(L) - first + 1;
    luaL_argcheck(L, argc >= 1 && lua_type(L, first) == LUA_TSTRING, first,
                  "command name expected");
    need_coroutine(L, "redis.call");
    const char **argv = lua_newuserdatauv(L, (size_t)argc * (sizeof(char *) + sizeof(size_t)), 0);
    size_t *lens = (size_t *)(argv + argc);
    for (int i = 0; i < argc; i++)
        argv[i] = arg_bytes(L, first + i, &lens[i], i + 1);
    check_command(L, argv[0], lens[0], argc > 1 ? argv[1] : NULL, argc > 1 ? lens[1] : 0, NULL);
    if (!c->r)
        return push_fail(L, "closed: client closed");
    wait_t *w = wait_new(L, W_CALL);
    ev_redis_cmd_t cmd = {argc, argv, lens};
    char err[300];
    ev_redis_req_t *q = ev_redis_send(c->r, &cmd, 1, ms, on_done, w, err, sizeof err);
    if (!q) {
        free(w);
        return push_fail(L, err);
    }
    return wait_for(L, w, q, &call_ops, effective_ms(c, ms));
}

/* cmds[i] is {n = count, cmd, args...}; numbers are stored back as strings
 * so the table anchors every byte sent. */
static int client_pipeline(lua_State *L)
{
    client_t *c = check_client(L);
    int ms = opt_timeout(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 3);
    luaL_argcheck(L, n >= 0 && n <= 1000000, 3, "too many commands");
    if (n == 0) {
        lua_newtable(L);
        return 1;
    }
    need_coroutine(L, "redis.pipeline");
    size_t total = 0;
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_geti(L, 3, i) != LUA_TTABLE)
            luaL_error(L, "redis.pipeline: command %d is not a table", (int)i);
        lua_Integer k = lua_getfield(L, -1, "n") == LUA_TNUMBER ? lua_tointeger(L, -1)
                                                                : (lua_Integer)luaL_len(L, -2);
        if (k < 1 || k > 1000000)
            luaL_error(L, "redis.pipeline: command %d is empty", (int)i);
        total += (size_t)k;
        lua_pop(L, 2);
    }
    ev_redis_cmd_t *cmds = lua_newuserdatauv(
        L, (size_t)n * sizeof *cmds + total * (sizeof(char *) + sizeof(size_t)), 0);
    const char **argv = (const char **)(cmds + n);
    size_t *lens = (size_t *)(argv + total);
    size_t at = 0;
    int multi = 0;
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, 3, i);
        int t = lua_gettop(L);
        lua_Integer k = lua_getfield(L, t, "n") == LUA_TNUMBER ? lua_tointeger(L, -1)
                                                               : (lua_Integer)luaL_len(L, t);
        lua_pop(L, 1);
        if (lua_rawgeti(L, t, 1) != LUA_TSTRING)
            luaL_error(L, "redis.pipeline: command %d: command name expected", (int)i);
        lua_pop(L, 1);
        cmds[i - 1] = (ev_redis_cmd_t){(int)k, argv + at, lens + at};
        for (lua_Integer j = 1; j <= k; j++, at++) {
            int number = lua_rawgeti(L, t, j) == LUA_TNUMBER;
            argv[at] = arg_bytes(L, lua_gettop(L), &lens[at], (int)j);
            if (number)
                lua_rawseti(L, t, j); /* anchored by the table from now on */
            else
                lua_pop(L, 1);
        }
        const ev_redis_cmd_t *cm = &cmds[i - 1];
        check_command(L, cm->argv[0], cm->argvlen[0], k > 1 ? cm->argv[1] : NULL,
                      k > 1 ? cm->argvlen[1] : 0, &multi);
        lua_pop(L, 1);
    }
    if (multi)
        luaL_error(L, "redis.pipeline: MULTI without EXEC");
    if (!c->r)
        return push_fail(L, "closed: client closed");
    wait_t *w = wait_new(L, W_PIPELINE);
    char err[300];
    ev_redis_req_t *q = ev_redis_send(c->r, cmds, (int)n, ms, on_done, w, err, sizeof err);
    if (!q) {
        free(w);
        return push_fail(L, err);
    }
    return wait_for(L, w, q, &pipeline_ops, effective_ms(c, ms));
}

/* ---- pub/sub ---- */

typedef struct {
    client_t *c;
    const char *ch, *msg;
    size_t chlen, msglen;
} message_t;

static void message_done(ev_co_t *co, lua_State *co_L, int status, void *ud)
{
    (void)ud;
    if (status != LUA_OK) {
        const char *msg = lua_tostring(co_L, -1);
        luaL_traceback(co_L, co_L, msg ? msg : "(error object is not a string)", 0);
        ev_error("redis message handler %s failed: %s", ev_co_tag(co), lua_tostring(co_L, -1));
    }
}

/* Runs protected on the main thread: one coroutine per handler. The
 * handlers are copied first, so a handler that (un)subscribes does not
 * disturb the loop. */
static int dispatch(lua_State *M)
{
    message_t *m = lua_touserdata(M, 1);
    /* a handler may drop the client and collect it: read it now, not later */
    struct event_base *base = m->c->base;
    lua_rawgeti(M, LUA_REGISTRYINDEX, m->c->handlers); /* 2: {channel = {handle = fn}} */
    lua_pushlstring(M, m->ch, m->chlen);
    if (lua_rawget(M, 2) != LUA_TTABLE) /* 3: {handle = fn} */
        return 0;
    lua_newtable(M); /* 4: the functions */
    int n = 0;
    lua_pushnil(M);
    while (lua_next(M, 3)) /* key, fn */
        lua_rawseti(M, 4, ++n);
    for (int i = 1; i <= n; i++) {
        ev_co_t *co = ev_co_new(M, base, message_done, NULL);
        if (!co)
            return luaL_error(M, "out of memory");
        ev_co_set_tag(co, "redis.message");
        lua_rawgeti(M, 4, i);
        lua_pushlstring(M, m->ch, m->chlen);
        lua_pushlstring(M, m->msg, m->msglen);
        lua_xmove(M, ev_co_state(co), 3);
        ev_co_start(co, 2);
    }
    return 0;
}

static void on_message(const char *ch, size_t chlen, const char *msg, size_t msglen, void *arg)
{
    client_t *c = arg;
    lua_State *M = c->L;
    message_t m = {c, ch, msg, chlen, msglen};
    int top = lua_gettop(M);
    lua_pushcfunction(M, dispatch);
    lua_pushlightuserdata(M, &m);
    if (lua_pcall(M, 1, 0, 0) != LUA_OK)
        ev_error("redis: message on %.*s: %s", (int)(chlen > 64 ? 64 : chlen), ch,
                 lua_tostring(M, -1));
    lua_settop(M, top);
}

static int client_subscribe(lua_State *L)
{
    client_t *c = check_client(L);
    size_t len;
    const char *ch = luaL_checklstring(L, 2, &len);
    int ms = opt_timeout(L, 3);
    int wait = lua_toboolean(L, 4) && can_wait(L);
    if (!c->r)
        return push_fail(L, "closed: client closed");
    wait_t *w = wait ? wait_new(L, W_SUBSCRIBE) : NULL;
    ev_redis_req_t *q = NULL;
    char err[300];
    if (ev_redis_subscribe(c->r, ch, len, ms, w ? on_done : NULL, w, &q, err, sizeof err) != 0) {
        free(w);
        return push_fail(L, err);
    }
    if (!q) { /* not waiting, or already confirmed */
        free(w);
        lua_pushboolean(L, 1);
        return 1;
    }
    return wait_for(L, w, q, &subscribe_ops, effective_ms(c, ms));
}

static int client_unsubscribe(lua_State *L)
{
    client_t *c = check_client(L);
    size_t len;
    const char *ch = luaL_checklstring(L, 2, &len);
    if (c->r)
        ev_redis_unsubscribe(c->r, ch, len);
    return 0;
}

static int client_handlers(lua_State *L)
{
    client_t *c = check_client(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->handlers);
    return 1;
}

/* ---- the client ---- */

static int client_stats(lua_State *L)
{
    client_t *c = check_client(L);
    lua_createtable(L, 0, 10);
    if (!c->r)
        return 1;
    ev_redis_stats_t s;
    ev_redis_stats(c->r, &s);
    lua_pushboolean(L, s.connected);
    lua_setfield(L, -2, "connected");
    lua_pushboolean(L, s.subscribed);
    lua_setfield(L, -2, "subscribed");
    struct {
        const char *k;
        long long v;
    } f[] = {{"channels", s.channels},
             {"pending", s.pending},
             {"commands", (long long)s.commands},
             {"errors", (long long)s.errors},
             {"timeouts", (long long)s.timeouts},
             {"reconnects", (long long)s.reconnects},
             {"connect_failures", (long long)s.connect_failures}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        lua_pushinteger(L, f[i].v);
        lua_setfield(L, -2, f[i].k);
    }
    lua_pushstring(L, s.last_error);
    lua_setfield(L, -2, "last_error");
    return 1;
}

static int client_close(lua_State *L)
{
    client_t *c = check_client(L);
    if (!c->owned)
        return luaL_error(L, "redis: the worker's client cannot be closed");
    if (c->r)
        ev_redis_close(c->r);
    return 0;
}

static int client_gc(lua_State *L)
{
    client_t *c = check_client(L);
    if (c->r) {
        if (c->owned)
            ev_redis_free(c->r);
        else
            ev_redis_on_message(c->r, NULL, NULL); /* the runtime frees it, after this state */
        c->r = NULL;
    }
    luaL_unref(L, LUA_REGISTRYINDEX, c->handlers);
    c->handlers = LUA_NOREF;
    return 0;
}

static int client_tostring(lua_State *L)
{
    client_t *c = check_client(L);
    lua_pushfstring(L, "redis client (%s%s)", c->owned ? "own" : "worker",
                    c->r ? "" : ", collected");
    return 1;
}

static void push_client(lua_State *L, ev_redis_t *r, int owned, int timeout_ms)
{
    client_t *c = lua_newuserdatauv(L, sizeof *c, 0);
    *c = (client_t){r, NULL, ev_runtime_get(L)->base, owned, LUA_NOREF, timeout_ms};
    luaL_setmetatable(L, CLIENT_MT);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    c->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    lua_newtable(L);
    c->handlers = luaL_ref(L, LUA_REGISTRYINDEX);
    ev_redis_on_message(r, on_message, c);
}

static double opt_seconds(lua_State *L, int idx, const char *key)
{
    if (lua_isnoneornil(L, idx))
        return 0;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, key);
    double s = lua_isnil(L, -1) ? 0 : lua_tonumber(L, -1);
    luaL_argcheck(L, lua_isnil(L, -1) || (lua_isnumber(L, -1) && s > 0 && s < 1e6), idx,
                  "timeouts must be numbers of seconds > 0");
    lua_pop(L, 1);
    return s;
}

static int core_default(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &DEFAULT_KEY) == LUA_TUSERDATA)
        return 1;
    lua_pop(L, 1);
    ev_runtime_t *rt = ev_runtime_get(L);
    if (!rt->redis) {
        if (!rt->cfg->redis_url)
            return push_fail(L, "unavailable: no Redis configured (EVENTLY_REDIS_URL)");
        char err[300];
        rt->redis = ev_redis_new(rt->base, rt->cfg->redis_url, NULL, err, sizeof err);
        if (!rt->redis)
            return push_fail(L, "unavailable: cannot create the client");
    }
    push_client(L, rt->redis, 0, 2000);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &DEFAULT_KEY);
    return 1;
}

static int core_connect(lua_State *L)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    const char *url = luaL_optstring(L, 1, rt->cfg->redis_url);
    if (!url)
        return push_fail(L, "unavailable: no Redis configured (EVENTLY_REDIS_URL)");
    ev_redis_opts_t o = {(int)ceil(opt_seconds(L, 2, "timeout") * 1000),
                         (int)ceil(opt_seconds(L, 2, "connect_timeout") * 1000)};
    char err[300];
    ev_redis_t *r = ev_redis_new(rt->base, url, &o, err, sizeof err);
    if (!r)
        return luaL_error(L, "redis.connect: %s", err); /* a bad URL is a mistake */
    push_client(L, r, 1, o.timeout_ms > 0 ? o.timeout_ms : 2000);
    return 1;
}

static int core_sha1(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!EVP_Digest(s, len, md, &n, EVP_sha1(), NULL))
        return luaL_error(L, "redis: sha1 failed");
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    for (unsigned int i = 0; i < n; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    lua_pushlstring(L, hex, 2 * n);
    return 1;
}

static const luaL_Reg client_methods[] = {
    {"call", client_call},           {"pipeline", client_pipeline},
    {"subscribe", client_subscribe}, {"unsubscribe", client_unsubscribe},
    {"handlers", client_handlers},   {"stats", client_stats},
    {"close", client_close},         {NULL, NULL},
};

static const luaL_Reg core_funcs[] = {
    {"default", core_default},
    {"connect", core_connect},
    {"sha1", core_sha1},
    {NULL, NULL},
};

int luaopen_evently_redis_core(lua_State *L)
{
    if (luaL_newmetatable(L, CLIENT_MT)) {
        luaL_newlib(L, client_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, client_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, client_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    ev_lua_error_type(L, ERR_MT);
    luaL_newlib(L, core_funcs);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    return 1;
}
