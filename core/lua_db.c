/* lua_db.c - evently.db.core: the Postgres primitives under evently.db.
 *
 *   core.acquire(which?) -> conn | nil, err     [yields] which: "primary" (default) | "replica"
 *   conn:query(sql, n, p1..pn) -> rows | nil, err   [yields]
 *       rows: array of {column = value}; rows.affected: integer (INSERT/UPDATE/DELETE)
 *   conn:release()    back to the pool (also by <close> and the collector);
 *                     a connection inside a transaction is closed, never pooled
 *   core.stats(which?) -> {total, idle, busy, waiting, max, acquired, timeouts, ...}
 *   core.null         the NULL sentinel (cjson.null, so it encodes as JSON null)
 * err is a table {kind = "timeout"|"closed"|"unavailable"|"sql", message, sqlstate,
 * constraint, detail} whose tostring is "kind: message". Values map: int2/4/8 ->
 * integer, float4/8 -> number, numeric -> string (exact), bool -> boolean,
 * json/jsonb -> table, timestamptz -> "2026-01-02T03:04:05.123456Z", NULL -> null.
 * Parameters: nil/null -> NULL, booleans, integers, floats, strings, tables
 * (JSON-encoded, for json/jsonb columns). Only from a request, timer or script
 * coroutine. */
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "co.h"
#include "lua_db.h"
#include "lua_errors.h"
#include "log.h"
#include "pg.h"
#include "runtime.h"

#define CONN_MT "evently.db.conn"
#define ERR_MT "evently.db.error"

typedef struct {
    ev_pg_conn_t *c;   /* NULL once released or abandoned */
    int busy;          /* a query is in flight */
    int discard;       /* LISTEN connections are closed, never pooled */
} conn_ud_t;

/* ---- errors ---- */

/* "timeout" / "closed: why" / "unavailable: why" from the engine */
static int push_fail(lua_State *L, const char *err) { return ev_lua_error_fail(L, ERR_MT, err); }

static void set_field(lua_State *L, const PGresult *r, int code, const char *name)
{
    const char *v = PQresultErrorField(r, code);
    if (v) {
        lua_pushstring(L, v);
        lua_setfield(L, -2, name);
    }
}

static int push_sql_error(lua_State *L, const PGresult *r)
{
    lua_pushnil(L);
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    if (!msg)
        msg = PQresultErrorMessage(r);
    ev_lua_error_push(L, ERR_MT, "sql", msg, strlen(msg));
    set_field(L, r, PG_DIAG_SQLSTATE, "sqlstate");
    set_field(L, r, PG_DIAG_CONSTRAINT_NAME, "constraint");
    set_field(L, r, PG_DIAG_MESSAGE_DETAIL, "detail");
    set_field(L, r, PG_DIAG_TABLE_NAME, "table");
    set_field(L, r, PG_DIAG_COLUMN_NAME, "column");
    return 2;
}

/* ---- values ---- */

static const char JSON_DECODE = 'j'; /* registry: evently.json.decode */

static void push_timestamp(lua_State *L, const char *v, int tz)
{
    /* "2026-11-25 13:50:36.123456+00" -> "2026-11-25T13:50:36.123456Z" */
    char out[64];
    size_t n = strlen(v);
    if (n >= sizeof out || n < 19) {
        lua_pushstring(L, v);
        return;
    }
    memcpy(out, v, n + 1);
    out[10] = 'T';
    if (tz) {
        char *plus = strrchr(out + 19, '+');
        if (plus && strcmp(plus, "+00") == 0)
            strcpy(plus, "Z");
    }
    lua_pushstring(L, out);
}

static void push_value(lua_State *L, const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col)) {
        lua_pushlightuserdata(L, NULL); /* cjson.null */
        return;
    }
    const char *v = PQgetvalue(r, row, col);
    switch (PQftype(r, col)) {
    case 16: /* bool */
        lua_pushboolean(L, v[0] == 't');
        break;
    case 20: case 21: case 23: case 26: /* int8, int2, int4, oid */
        lua_pushinteger(L, (lua_Integer)strtoll(v, NULL, 10));
        break;
    case 700: case 701: /* float4, float8 */
        lua_pushnumber(L, strtod(v, NULL));
        break;
    case 114: case 3802: /* json, jsonb */
        lua_rawgetp(L, LUA_REGISTRYINDEX, &JSON_DECODE);
        lua_pushstring(L, v);
        lua_call(L, 1, 1); /* push runs protected: a bad document becomes an error */
        break;
    case 1184: /* timestamptz */
        push_timestamp(L, v, 1);
        break;
    case 1114: /* timestamp */
        push_timestamp(L, v, 0);
        break;
    default: /* numeric (exact), text, uuid, date, ... */
        lua_pushlstring(L, v, (size_t)PQgetlength(r, row, col));
        break;
    }
}

void ev_db_push_row(lua_State *L, const PGresult *r, int row, const char *skip_prefix)
{
    int ncols = PQnfields(r);
    size_t skip = skip_prefix ? strlen(skip_prefix) : 0;
    lua_createtable(L, 0, ncols);
    for (int j = 0; j < ncols; j++) {
        const char *name = PQfname(r, j);
        if (skip && strncmp(name, skip_prefix, skip) == 0)
            continue;
        push_value(L, r, row, j);
        lua_setfield(L, -2, name);
    }
}

int ev_db_push_fail(lua_State *L, const char *err) { return push_fail(L, err); }

static int push_rows(lua_State *L, const PGresult *r)
{
    int nrows = PQntuples(r), ncols = PQnfields(r);
    lua_createtable(L, nrows, 1);
    for (int i = 0; i < nrows; i++) {
        lua_createtable(L, 0, ncols);
        for (int j = 0; j < ncols; j++) {
            push_value(L, r, i, j);
            lua_setfield(L, -2, PQfname(r, j));
        }
        lua_rawseti(L, -2, i + 1);
    }
    const char *affected = PQcmdTuples((PGresult *)r);
    lua_pushinteger(L, affected && *affected ? strtoll(affected, NULL, 10) : nrows);
    lua_setfield(L, -2, "affected");
    return 1;
}

/* ---- pools ---- */

static ev_pg_pool_t *pool_for(lua_State *L, const char *which);

ev_pg_pool_t *ev_db_primary(lua_State *L) { return pool_for(L, "primary"); }

static ev_pg_pool_t *pool_for(lua_State *L, const char *which)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    const ev_config_t *cfg = rt->cfg;
    int replica = strcmp(which, "replica") == 0 && cfg->replica_url;
    int listen = strcmp(which, "listen") == 0;
    ev_pg_pool_t **slot = listen ? &rt->listen : replica ? &rt->replica : &rt->db;
    if (*slot)
        return *slot;
    const char *url = replica ? cfg->replica_url : cfg->database_url;
    if (!url)
        return NULL;
    ev_pg_opts_t o = {listen ? 4 : cfg->db_pool_max, listen ? 0 : cfg->db_pool_min,
                      cfg->db_acquire_timeout_ms, cfg->db_statement_timeout_ms, 5000};
    *slot = ev_pg_pool_new(rt->base, url, &o);
    return *slot;
}

static const char *check_which(lua_State *L, int arg)
{
    const char *which = luaL_optstring(L, arg, "primary");
    luaL_argcheck(L, strcmp(which, "primary") == 0 || strcmp(which, "replica") == 0 ||
                         strcmp(which, "listen") == 0,
                  arg, "expected 'primary', 'replica' or 'listen'");
    return which;
}

/* ---- acquire ---- */

typedef struct {
    ev_co_t *co;
    ev_pg_waiter_t *w;
    ev_pg_conn_t *c;
    int discard;
    char err[300];
} acquire_t;

static void push_conn(lua_State *L, ev_pg_conn_t *c, int discard)
{
    conn_ud_t *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->c = c;
    u->busy = 0;
    u->discard = discard;
    luaL_setmetatable(L, CONN_MT);
}

static void on_acquired(ev_pg_conn_t *c, const char *err, void *arg)
{
    acquire_t *a = arg;
    a->w = NULL;
    a->c = c;
    if (err)
        snprintf(a->err, sizeof a->err, "%s", err);
    ev_co_wake(a->co, EV_WAKE_DONE);
}

static int acquire_push(lua_State *L, void *data, ev_wake_t why)
{
    acquire_t *a = data;
    if (why == EV_WAKE_TIMEOUT || !a->c)
        return push_fail(L, a->c ? "timeout" : (a->err[0] ? a->err : "timeout"));
    push_conn(L, a->c, a->discard);
    a->c = NULL; /* the userdata owns it now */
    return 1;
}

static void acquire_cancel(void *data)
{
    acquire_t *a = data;
    if (a->w)
        ev_pg_wait_cancel(a->w);
    a->w = NULL;
}

static void acquire_release(void *data)
{
    acquire_t *a = data;
    if (a->c) /* handed over, but nobody took it: aborted in between */
        ev_pg_release(a->c);
    free(a);
}

static const ev_wait_ops_t acquire_ops = {"pg.acquire", acquire_push, acquire_cancel,
                                          acquire_release};

static int db_acquire(lua_State *L)
{
    const char *which = check_which(L, 1);
    int discard = strcmp(which, "listen") == 0;
    ev_pg_pool_t *p = pool_for(L, which);
    if (!p)
        return push_fail(L, "unavailable: no database configured");
    ev_pg_conn_t *c = ev_pg_try_acquire(p);
    if (c) {
        push_conn(L, c, discard);
        return 1;
    }
    acquire_t *a = calloc(1, sizeof *a);
    if (!a)
        return luaL_error(L, "out of memory");
    a->co = ev_co_current(L);
    a->discard = discard;
    if (!a->co) {
        free(a);
        return luaL_error(L, "db: must be called from a request, timer or script coroutine");
    }
    a->w = ev_pg_wait(p, on_acquired, a);
    if (!a->w) {
        free(a);
        return luaL_error(L, "out of memory");
    }
    /* the pool's own acquire timer bounds the wait; ours is a backstop */
    return ev_co_wait(L, -1, &acquire_ops, a);
}

/* ---- query ---- */

typedef struct {
    ev_co_t *co;
    conn_ud_t *u;       /* valid while busy: the userdata is anchored on the co stack */
    ev_pg_conn_t *c;
    PGresult *res;      /* borrowed during push; cleared by the engine */
    char err[300];
    int done;
} query_t;

static void on_result(ev_pg_conn_t *c, PGresult *res, const char *err, void *arg)
{
    query_t *q = arg;
    (void)c;
    q->done = 1;
    q->res = res;
    if (err)
        snprintf(q->err, sizeof q->err, "%s", err);
    ev_co_wake(q->co, EV_WAKE_DONE); /* push reads res before the engine clears it; q is gone after */
}

static int query_push(lua_State *L, void *data, ev_wake_t why)
{
    query_t *q = data;
    if (why == EV_WAKE_TIMEOUT)
        return push_fail(L, "timeout: the statement did not finish in time");
    if (!q->res)
        return push_fail(L, q->err[0] ? q->err : "closed: no result");
    ExecStatusType st = PQresultStatus(q->res);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return push_rows(L, q->res);
    return push_sql_error(L, q->res);
}

static void query_cancel(void *data)
{
    query_t *q = data;
    if (!q->done && q->u->c) { /* timed out or aborted mid-statement: the connection goes */
        ev_pg_abandon(q->u->c);
        q->u->c = NULL;
    }
}

static void query_release(void *data)
{
    query_t *q = data;
    q->u->busy = 0;
    free(q);
}

static const ev_wait_ops_t query_ops = {"pg.query", query_push, query_cancel, query_release};

static const char *param_string(lua_State *L, int idx, char *buf, size_t cap)
{
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return NULL;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL)
            return NULL; /* null */
        break;
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx) ? "true" : "false";
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            snprintf(buf, cap, "%lld", (long long)lua_tointeger(L, idx));
        else
            snprintf(buf, cap, "%.17g", lua_tonumber(L, idx));
        return buf;
    case LUA_TSTRING:
        return lua_tostring(L, idx);
    case LUA_TTABLE: /* json: encoded by evently.db before it gets here */
        break;
    }
    luaL_error(L, "db: parameter %d: cannot send a %s", idx - 3, luaL_typename(L, idx));
    return NULL;
}

static int conn_query(lua_State *L)
{
    conn_ud_t *u = luaL_checkudata(L, 1, CONN_MT);
    const char *sql = luaL_checkstring(L, 2);
    int n = (int)luaL_checkinteger(L, 3);
    luaL_argcheck(L, n >= 0 && n <= 256 && lua_gettop(L) <= n + 3, 3, "bad parameter count");
    if (!u->c)
        return luaL_error(L, "db: connection already released");
    if (u->busy)
        return luaL_error(L, "db: connection busy (one statement at a time)");
    const char *values[256];
    char nums[256][32];
    for (int i = 0; i < n; i++)
        values[i] = param_string(L, 4 + i, nums[i], sizeof nums[i]);
    query_t *q = calloc(1, sizeof *q);
    if (!q)
        return luaL_error(L, "out of memory");
    q->co = ev_co_current(L);
    q->u = u;
    q->c = u->c;
    if (!q->co) {
        free(q);
        return luaL_error(L, "db: must be called from a request, timer or script coroutine");
    }
    if (ev_pg_query(u->c, sql, n, values, on_result, q) != 0) {
        free(q);
        ev_pg_abandon(u->c);
        u->c = NULL;
        return push_fail(L, "closed: could not send the statement");
    }
    u->busy = 1;
    /* keep the userdata alive on this coroutine's stack across the yield */
    lua_settop(L, 1);
    ev_runtime_t *rt = ev_runtime_get(L);
    double timeout = rt->cfg->db_statement_timeout_ms / 1000.0 + 1.0;
    return ev_co_wait(L, timeout, &query_ops, q);
}

static int conn_release(lua_State *L)
{
    conn_ud_t *u = luaL_checkudata(L, 1, CONN_MT);
    if (u->c && !u->busy) {
        if (u->discard)
            ev_pg_abandon(u->c);
        else
            ev_pg_release(u->c);
        u->c = NULL;
    } else if (u->c && u->busy) { /* collected mid-query: cannot happen while anchored */
        ev_pg_abandon(u->c);
        u->c = NULL;
    }
    return 0;
}

static int conn_tostring(lua_State *L)
{
    conn_ud_t *u = luaL_checkudata(L, 1, CONN_MT);
    lua_pushfstring(L, "db connection (%s)", u->c ? (u->busy ? "busy" : "leased") : "released");
    return 1;
}

static int conn_tx_status(lua_State *L)
{
    conn_ud_t *u = luaL_checkudata(L, 1, CONN_MT);
    static const char *const names[] = {"idle", "active", "intrans", "inerror", "unknown"};
    lua_pushstring(L, u->c ? names[PQtransactionStatus(ev_pg_raw(u->c))] : "released");
    return 1;
}

static int db_stats(lua_State *L)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    const char *which = check_which(L, 1);
    ev_pg_pool_t *p = strcmp(which, "replica") == 0 && rt->replica ? rt->replica : rt->db;
    lua_newtable(L);
    if (!p)
        return 1;
    ev_pg_stats_t s;
    ev_pg_stats(p, &s);
    struct { const char *k; long long v; } f[] = {
        {"total", s.total}, {"idle", s.idle}, {"busy", s.busy}, {"waiting", s.waiting},
        {"max", s.max}, {"acquired", (long long)s.acquired}, {"timeouts", (long long)s.timeouts},
        {"connect_failures", (long long)s.connect_failures}, {"queries", (long long)s.queries},
        {"errors", (long long)s.errors}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        lua_pushinteger(L, f[i].v);
        lua_setfield(L, -2, f[i].k);
    }
    lua_pushstring(L, s.last_error);
    lua_setfield(L, -2, "last_error");
    return 1;
}

/* ---- notifications ---- */

typedef struct {
    conn_ud_t *u;
    ev_co_t *co;
    char err[300];
} notify_t;

static int push_notifies(lua_State *L, PGconn *pg)
{
    lua_newtable(L);
    PGnotify *n;
    int i = 0;
    while ((n = PQnotifies(pg)) != NULL) {
        lua_createtable(L, 0, 3);
        lua_pushstring(L, n->relname);
        lua_setfield(L, -2, "channel");
        lua_pushstring(L, n->extra);
        lua_setfield(L, -2, "payload");
        lua_pushinteger(L, n->be_pid);
        lua_setfield(L, -2, "pid");
        PQfreemem(n);
        lua_rawseti(L, -2, ++i);
    }
    return 1;
}

static void on_watch(ev_pg_conn_t *c, const char *err, void *arg)
{
    notify_t *n = arg;
    ev_pg_watch(c, NULL, NULL);
    if (err)
        snprintf(n->err, sizeof n->err, "%s", err);
    ev_co_wake(n->co, EV_WAKE_DONE);
}

static int notify_push(lua_State *L, void *data, ev_wake_t why)
{
    notify_t *n = data;
    (void)why; /* a timeout is an empty list */
    if (n->err[0] || !n->u->c)
        return push_fail(L, n->err[0] ? n->err : "closed: connection gone");
    return push_notifies(L, ev_pg_raw(n->u->c));
}

static void notify_cancel(void *data)
{
    notify_t *n = data;
    if (n->u->c)
        ev_pg_watch(n->u->c, NULL, NULL);
}

static void notify_release(void *data)
{
    notify_t *n = data;
    n->u->busy = 0;
    free(n);
}

static const ev_wait_ops_t notify_ops = {"pg.notifications", notify_push, notify_cancel,
                                         notify_release};

/* conn:notifications(timeout) -> {{channel, payload, pid}, ...} (empty on
 * timeout) | nil, err. Yields until a notification arrives. */
static int conn_notifications(lua_State *L)
{
    conn_ud_t *u = luaL_checkudata(L, 1, CONN_MT);
    double timeout = luaL_checknumber(L, 2);
    if (!u->c || u->busy)
        return luaL_error(L, "db: connection released or busy");
    PGconn *pg = ev_pg_raw(u->c);
    PQconsumeInput(pg);
    if (PQstatus(pg) != CONNECTION_OK)
        return push_fail(L, "closed: connection lost");
    PGnotify *peek = PQnotifies(pg);
    if (peek) { /* already here: no need to wait (put it back in the answer) */
        lua_newtable(L);
        lua_createtable(L, 0, 3);
        lua_pushstring(L, peek->relname);
        lua_setfield(L, -2, "channel");
        lua_pushstring(L, peek->extra);
        lua_setfield(L, -2, "payload");
        lua_pushinteger(L, peek->be_pid);
        lua_setfield(L, -2, "pid");
        PQfreemem(peek);
        lua_rawseti(L, -2, 1);
        return 1;
    }
    notify_t *n = calloc(1, sizeof *n);
    if (!n)
        return luaL_error(L, "out of memory");
    n->u = u;
    n->co = ev_co_current(L);
    if (!n->co) {
        free(n);
        return luaL_error(L, "db: must be called from a request, timer or script coroutine");
    }
    u->busy = 1;
    ev_pg_watch(u->c, on_watch, n);
    lua_settop(L, 1); /* anchor the userdata across the yield */
    return ev_co_wait(L, timeout, &notify_ops, n);
}

static const luaL_Reg conn_methods[] = {
    {"notifications", conn_notifications},
    {"query", conn_query},
    {"release", conn_release},
    {"tx_status", conn_tx_status},
    {NULL, NULL},
};

/* warm(): opens the primary pool now, so its minimum connections are ready
 * before the first request (a worker calls it at boot). */
static int db_warm(lua_State *L)
{
    lua_pushboolean(L, pool_for(L, "primary") != NULL);
    return 1;
}

static const luaL_Reg db_funcs[] = {
    {"warm", db_warm},
    {"acquire", db_acquire},
    {"stats", db_stats},
    {NULL, NULL},
};

int luaopen_evently_db_core(lua_State *L)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "evently.json"); /* its decode gives integers back as integers */
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "decode");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &JSON_DECODE);
    lua_pop(L, 1);
    if (luaL_newmetatable(L, CONN_MT)) {
        luaL_newlib(L, conn_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, conn_release);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, conn_release);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, conn_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    ev_lua_error_type(L, ERR_MT);
    luaL_newlib(L, db_funcs);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    return 1;
}
