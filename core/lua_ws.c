/* lua_ws.c - evently.ws.core: WebSocket connections for Lua (core/ws.c).
 *
 *   conn, err = core.upgrade(opts?)   [-0, +1|2, e] in a request handler only:
 *       checks the handshake of the coroutine's own request, answers 101 and
 *       takes its socket. nil, why for a bad handshake (nothing answered: the
 *       handler answers 400). Raises outside a request or after its answer.
 *       opts: max_message (65536), max_queued (1 MiB), max_unread (256 KiB),
 *       ping_interval (30 s), close_timeout (5 s), max_lifetime (ws_max_lifetime,
 *       24 h: then closed 1001). nil, "busy" when the worker already holds
 *       ws_max_per_worker sockets (the handler answers 503).
 *   ok, err = conn:send(data, binary?)    never yields; nil, "closed" or
 *       nil, "overloaded" (peer not reading: the connection is closing, 1008)
 *   msg, kind = conn:receive(timeout?)    [yields] the next message and
 *       "text"|"binary"; nil, "closed", code once the connection is gone;
 *       nil, "timeout". One receiver at a time (a second one raises).
 *   conn:close(code?, reason?)            starts the close handshake (1000)
 *   conn:is_open()
 * While the socket is open the connection anchors itself in the registry, so
 * a handler may return and leave it to others (the user registry of
 * evently.ws); the anchor goes when the socket closes. Messages nobody
 * receives are kept up to max_unread bytes; over that the connection is
 * closed with 1008 rather than growing without bound. */
#include <event2/buffer.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "co.h"
#include "http.h"
#include "log.h"
#include "runtime.h"
#include "ws.h"

#define CONN_MT "evently.ws.conn"

typedef struct msg {
    struct msg *next;
    int opcode;
    size_t len;
    char data[];
} msg_t;

typedef struct {
    ev_ws_t *ws;          /* NULL once the socket is gone */
    ev_runtime_t *rt;
    lua_State *M;         /* main thread: owns the anchor */
    int anchor;           /* registry ref while open */
    msg_t *head, *tail;
    size_t unread, max_unread;
    ev_co_t *waiter;      /* the coroutine in receive(), if any */
    int code;             /* close code once gone */
} conn_t;

static void count(conn_t *c, const char *name)
{
    if (c->rt->metrics)
        ev_metrics_count(c->rt->metrics, name, 1);
}

static void queue_drop_all(conn_t *c)
{
    while (c->head) {
        msg_t *m = c->head;
        c->head = m->next;
        free(m);
    }
    c->tail = NULL;
    c->unread = 0;
}

/* ---- engine callbacks (from the loop) ---- */

static void on_message(ev_ws_t *ws, int opcode, const uint8_t *data, size_t len, void *arg)
{
    conn_t *c = arg;
    msg_t *m = c->unread + len <= c->max_unread ? malloc(sizeof *m + len) : NULL;
    if (!m) {
        ev_warn("ws: %zu bytes of messages nobody receives; closing", c->unread + len);
        ev_ws_close(ws, 1008, "unread messages");
        return;
    }
    m->next = NULL;
    m->opcode = opcode;
    m->len = len;
    memcpy(m->data, data, len);
    if (c->tail)
        c->tail->next = m;
    else
        c->head = m;
    c->tail = m;
    c->unread += len;
    if (c->waiter)
        ev_co_wake_later(c->waiter); /* not from inside wslay's recv */
}

static void on_close(ev_ws_t *ws, int code, void *arg)
{
    conn_t *c = arg;
    (void)ws;
    c->ws = NULL;
    c->code = code;
    count(c, "evently_websocket_closed_total");
    if (c->waiter)
        ev_co_wake_later(c->waiter);
    luaL_unref(c->M, LUA_REGISTRYINDEX, c->anchor); /* last: c may be collected after */
    c->anchor = LUA_NOREF;
}

static const ev_ws_callbacks_t engine_cb = {on_message, on_close};

/* ---- receive ---- */

static int push_next(lua_State *L, conn_t *c)
{
    msg_t *m = c->head;
    /* pushed before unlinking: a raise (no memory) leaves it queued, not leaked */
    lua_pushlstring(L, m->data, m->len);
    lua_pushstring(L, m->opcode == 2 ? "binary" : "text");
    c->head = m->next;
    if (!c->head)
        c->tail = NULL;
    c->unread -= m->len;
    free(m);
    return 2;
}

static int push_closed(lua_State *L, conn_t *c)
{
    luaL_pushfail(L);
    lua_pushliteral(L, "closed");
    lua_pushinteger(L, c->code);
    return 3;
}

static int wait_push(lua_State *L, void *data, ev_wake_t why)
{
    conn_t *c = data;
    if (c->head)
        return push_next(L, c);
    if (!c->ws)
        return push_closed(L, c);
    (void)why; /* woken with nothing to give can only be the timeout */
    luaL_pushfail(L);
    lua_pushliteral(L, "timeout");
    return 2;
}

static void wait_clear(void *data) { ((conn_t *)data)->waiter = NULL; }

static const ev_wait_ops_t receive_ops = {"ws.receive", wait_push, wait_clear, wait_clear};

static int conn_receive(lua_State *L)
{
    conn_t *c = luaL_checkudata(L, 1, CONN_MT);
    double timeout = luaL_optnumber(L, 2, -1);
    if (c->head)
        return push_next(L, c);
    if (!c->ws)
        return push_closed(L, c);
    if (c->waiter)
        return luaL_error(L, "ws: another coroutine is already receiving on this connection");
    ev_co_t *co = ev_co_current(L);
    if (!co)
        return luaL_error(L, "ws.receive: must be called from a request, timer or script coroutine");
    c->waiter = co;
    lua_settop(L, 1); /* the connection stays alive while we wait on it */
    return ev_co_wait(L, timeout, &receive_ops, c);
}

/* ---- send, close ---- */

static int conn_send(lua_State *L)
{
    conn_t *c = luaL_checkudata(L, 1, CONN_MT);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    int opcode = lua_toboolean(L, 3) ? 2 : 1;
    int rc = c->ws ? ev_ws_send(c->ws, opcode, data, len) : EV_WS_SEND_CLOSED;
    if (rc == EV_WS_SEND_OK) {
        lua_pushboolean(L, 1);
        return 1;
    }
    luaL_pushfail(L);
    lua_pushstring(L, rc == EV_WS_SEND_TOO_SLOW ? "overloaded" : "closed");
    return 2;
}

static int conn_close(lua_State *L)
{
    conn_t *c = luaL_checkudata(L, 1, CONN_MT);
    lua_Integer code = luaL_optinteger(L, 2, 1000);
    const char *reason = luaL_optstring(L, 3, "");
    luaL_argcheck(L, code == 1000 || (code >= 3000 && code <= 4999) ||
                     (code >= 1001 && code <= 1014 && code != 1004 && code != 1005 &&
                      code != 1006),
                  2, "not a close code a server may send");
    if (c->ws)
        ev_ws_close(c->ws, (int)code, reason);
    lua_pushboolean(L, 1);
    return 1;
}

static int conn_is_open(lua_State *L)
{
    conn_t *c = luaL_checkudata(L, 1, CONN_MT);
    lua_pushboolean(L, c->ws && ev_ws_is_open(c->ws));
    return 1;
}

static int conn_tostring(lua_State *L)
{
    conn_t *c = luaL_checkudata(L, 1, CONN_MT);
    lua_pushfstring(L, "ws.conn (%s)", c->ws ? "open" : "closed");
    return 1;
}

/* Only reached with the socket open when the whole state closes (worker exit):
 * the socket is dropped without a close frame. */
static int conn_gc(lua_State *L)
{
    conn_t *c = luaL_checkudata(L, 1, CONN_MT);
    if (c->ws)
        ev_ws_free(c->ws);
    c->ws = NULL;
    queue_drop_all(c);
    return 0;
}

/* ---- upgrade ---- */

static double opt_number(lua_State *L, int t, const char *key, double def, double lo, double hi)
{
    if (lua_type(L, t) != LUA_TTABLE)
        return def;
    lua_getfield(L, t, key);
    double v = lua_isnil(L, -1) ? def : luaL_checknumber(L, -1);
    lua_pop(L, 1);
    if (!(v >= lo && v <= hi))
        luaL_error(L, "ws.upgrade: %s must be in [%g, %g]", key, lo, hi);
    return v;
}

static void read_limits(lua_State *L, ev_ws_limits_t *lim, size_t *max_unread)
{
    lim->max_message = (size_t)opt_number(L, 1, "max_message", 65536, 1, 1 << 30);
    lim->max_queued = (size_t)opt_number(L, 1, "max_queued", 1 << 20, 1, 1 << 30);
    lim->ping_interval = opt_number(L, 1, "ping_interval", 30, 0.01, 86400);
    lim->close_timeout = opt_number(L, 1, "close_timeout", 5, 0.01, 600);
    *max_unread = (size_t)opt_number(L, 1, "max_unread", 256 * 1024, 1, 1 << 30);
    lim->max_lifetime = opt_number(L, 1, "max_lifetime", ev_runtime_get(L)->cfg->ws_max_lifetime,
                                   0.01, 31 * 86400.0);
}

/* The coroutine's own unanswered request, or a raise: upgrading is only
 * meaningful inside a request handler, before it answered. */
static ev_http_req_t *own_request(lua_State *L, ev_runtime_t *rt, ev_co_t **co)
{
    *co = ev_co_current(L);
    ev_http_req_t *req = rt->http_request && *co ? rt->http_request(rt, *co) : NULL;
    if (!req)
        luaL_error(L, "ws.upgrade: only a request handler may upgrade its own request");
    return req;
}

static conn_t *new_conn(lua_State *L, ev_runtime_t *rt, size_t max_unread)
{
    conn_t *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    c->rt = rt;
    c->anchor = LUA_NOREF;
    c->max_unread = max_unread;
    luaL_setmetatable(L, CONN_MT);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    c->M = lua_tothread(L, -1);
    lua_pop(L, 1);
    return c;
}

/* Answers 101 and starts the engine on the socket; -1 only when out of
 * memory after the answer went (the socket is closed then). */
static int take_over(lua_State *L, conn_t *c, ev_co_t *co, ev_http_req_t *req,
                     const char *accept, const ev_ws_limits_t *lim)
{
    struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
    if (!in || !out) {
        if (in)
            evbuffer_free(in);
        if (out)
            evbuffer_free(out);
        return luaL_error(L, "out of memory");
    }
    ev_http_header_t hs[] = {{"Upgrade", 7, "websocket", 9},
                             {"Sec-WebSocket-Accept", 20, accept, strlen(accept)}};
    int fd = -1;
    const char *route = ev_co_route(co);
    ev_http_upgrade(req, hs, 2, route ? route : "unmatched", &fd, in, out);
    c->rt->http_detach(c->rt, co);
    c->ws = ev_ws_new(c->rt->ws, fd, in, out, lim, &engine_cb, c);
    evbuffer_free(in);
    evbuffer_free(out);
    if (!c->ws) {
        close(fd);
        return -1;
    }
    lua_pushvalue(L, -1);
    c->anchor = luaL_ref(L, LUA_REGISTRYINDEX);
    count(c, "evently_websocket_opened_total");
    return 0;
}

static int ws_upgrade(lua_State *L)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    ev_ws_limits_t lim;
    size_t max_unread;
    read_limits(L, &lim, &max_unread);
    ev_co_t *co;
    ev_http_req_t *req = own_request(L, rt, &co);
    if (!rt->ws && !(rt->ws = ev_ws_hub_new(rt->base)))
        return luaL_error(L, "out of memory");
    if (ev_ws_hub_count(rt->ws) >= rt->cfg->ws_max_per_worker) {
        luaL_pushfail(L); /* every socket is a descriptor and a buffer: bounded per worker */
        lua_pushliteral(L, "busy");
        return 2;
    }
    char accept[32];
    const char *why;
    if (ev_ws_handshake(req->method, ev_http_header(req, "upgrade"),
                        ev_http_header(req, "connection"),
                        ev_http_header(req, "sec-websocket-version"),
                        ev_http_header(req, "sec-websocket-key"), accept, &why) != 0) {
        luaL_pushfail(L);
        lua_pushstring(L, why);
        return 2;
    }
    conn_t *c = new_conn(L, rt, max_unread); /* before the answer: a raise here changes nothing */
    if (take_over(L, c, co, req, accept, &lim) != 0) {
        luaL_pushfail(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    return 1;
}

static const luaL_Reg conn_methods[] = {
    {"send", conn_send},
    {"receive", conn_receive},
    {"close", conn_close},
    {"is_open", conn_is_open},
    {NULL, NULL},
};

static const luaL_Reg ws_funcs[] = {
    {"upgrade", ws_upgrade},
    {NULL, NULL},
};

int luaopen_evently_ws_core(lua_State *L)
{
    luaL_newlib(L, ws_funcs);
    if (luaL_newmetatable(L, CONN_MT)) {
        luaL_newlib(L, conn_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, conn_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, conn_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_getfield(L, -1, "__index");
    lua_setfield(L, -3, "methods"); /* core.methods: evently.ws wraps some in Lua */
    lua_pop(L, 1);
    return 1;
}
