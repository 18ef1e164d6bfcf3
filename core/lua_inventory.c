/* lua_inventory.c - evently.inventory.core: the reservation engine for Lua.
 *
 *   core.define{name, table, key, available, capacity, open?, max_claim?,
 *               columns?, record?, record_seq?, after? (string or list), owner_held?, touch?}
 *                                     defines (or redefines) a pool; raises on a bad one
 *   core.sql(pool, op) -> string      a composed statement (inventory.h lists ops)
 *   core.take(pool, key, owner, quantity, limit, queue_seconds, tag?)   [yields]
 *       -> true, record_row, 0, emptied, started_ms, max     granted
 *       -> false, why, info, emptied, started_ms, max        refused: why "sold-out" (info:
 *          left), "too-many" (info: bound), "limit-exceeded" (info: held), "closed",
 *          "busy" (withdrawn before its batch: not taken), "unknown" (may be taken);
 *          emptied: this batch left nothing (said once per batch); max: the
 *          per-claim bound it read
 *       -> nil, err                                   {kind, message, sqlstate}
 *   core.closed(pool, key, quantity) -> bool   the sold-out gate (counts a refusal)
 *   core.close(pool, key, max, seconds) / core.reopen(pool, key) / core.changes(pool, key)
 *   core.selling(pool, key) -> bool
 *   core.stats() -> {batches, claims, gated, busy, rows, refusals}
 * A take whose coroutine is aborted (client gone) is withdrawn: before its
 * batch starts it is never taken. */
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "co.h"
#include "gate.h"
#include "inventory.h"
#include "lua_db.h"
#include "runtime.h"

typedef struct {
    ev_co_t *co;
    ev_inv_claim_t *claim; /* NULL once answered */
    ev_inv_outcome_t outcome;
    const PGresult *res; /* borrowed while the push runs */
    int row, info, max, emptied;
    long long started_ms;
    char err[300];
    char sqlstate[8];
} take_t;

/* The engine; pools may be defined with no database (`evently check`), the
 * connection pool is attached at the first take. */
static ev_inv_t *engine(lua_State *L)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    if (rt->inventory)
        return rt->inventory;
    const ev_config_t *c = rt->cfg;
    /* the last resort: a connection wait plus two statements' worth */
    ev_inv_opts_t o = {
        1.0, (c->db_acquire_timeout_ms + 2.0 * c->db_statement_timeout_ms) / 1000.0 + 5, 500};
    rt->inventory = ev_inv_new(rt->base, NULL, &o);
    return rt->inventory;
}

static const char *opt_field(lua_State *L, const char *name)
{
    lua_getfield(L, 1, name);
    const char *v = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
    lua_pop(L, 1); /* the definition table keeps the string alive */
    return v;
}

static int inv_define(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ev_inv_def_t d = {
        .name = opt_field(L, "name"),
        .table = opt_field(L, "table"),
        .key = opt_field(L, "key"),
        .available = opt_field(L, "available"),
        .capacity = opt_field(L, "capacity"),
        .open = opt_field(L, "open"),
        .max_claim = opt_field(L, "max_claim"),
        .columns = opt_field(L, "columns"),
        .record = opt_field(L, "record"),
        .record_seq = opt_field(L, "record_seq"),
        .owner_held = opt_field(L, "owner_held"),
        .touch = opt_field(L, "touch"),
    };
    /* after: one statement or a list of them */
    lua_getfield(L, 1, "after");
    if (lua_type(L, -1) == LUA_TSTRING) {
        d.after[0] = lua_tostring(L, -1);
    } else if (lua_istable(L, -1)) {
        lua_Integer n = luaL_len(L, -1);
        luaL_argcheck(L, n <= EV_INV_AFTERS, 1, "at most 4 after statements");
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            d.after[i - 1] = luaL_checkstring(L, -1);
            lua_pop(L, 1); /* the table keeps it */
        }
    } else if (!lua_isnil(L, -1)) {
        return luaL_argerror(L, 1, "after must be a string or a list of strings");
    }
    lua_pop(L, 1);
    ev_inv_t *inv = engine(L);
    if (!inv)
        return luaL_error(L, "inventory: out of memory");
    char err[200];
    if (ev_inv_define(inv, &d, err, sizeof err) != 0)
        return luaL_error(L, "%s", err);
    return 0;
}

static int inv_sql(lua_State *L)
{
    ev_inv_t *inv = engine(L);
    const char *s = inv ? ev_inv_sql(inv, luaL_checkstring(L, 1), luaL_checkstring(L, 2)) : NULL;
    if (!s)
        return luaL_error(L, "inventory: no statement %s for pool %s", lua_tostring(L, 2),
                          lua_tostring(L, 1));
    lua_pushstring(L, s);
    return 1;
}

static void on_answer(ev_inv_claim_t *c, const ev_inv_result_t *r, void *arg)
{
    (void)c;
    take_t *t = arg;
    t->claim = NULL;
    t->outcome = r->outcome;
    t->res = r->res;
    t->row = r->row;
    t->info = r->info;
    t->max = r->max;
    t->emptied = r->emptied;
    t->started_ms = r->started_ms;
    if (r->err)
        snprintf(t->err, sizeof t->err, "%s", r->err);
    if (r->sqlstate)
        snprintf(t->sqlstate, sizeof t->sqlstate, "%s", r->sqlstate);
    ev_co_wake(t->co, EV_WAKE_DONE); /* pushes now, while res is valid; frees t */
}

static const char *why_of(ev_inv_outcome_t o)
{
    switch (o) {
    case EV_INV_SOLD_OUT: return "sold-out";
    case EV_INV_TOO_MANY: return "too-many";
    case EV_INV_OVER_LIMIT: return "limit-exceeded";
    case EV_INV_CLOSED: return "closed";
    case EV_INV_BUSY: return "busy";
    default: return "unknown";
    }
}

/* core.classify(took, quantity, max, over) -> "granted" | why: a batch row
 * read as the engine reads it (ev_inv_classify). */
static int inv_classify(lua_State *L)
{
    ev_inv_outcome_t o = ev_inv_classify((int)luaL_checkinteger(L, 1), (int)luaL_checkinteger(L, 2),
                                         (int)luaL_checkinteger(L, 3), lua_toboolean(L, 4));
    lua_pushstring(L, o == EV_INV_GRANTED ? "granted" : why_of(o));
    return 1;
}

static int take_push(lua_State *L, void *data, ev_wake_t why)
{
    take_t *t = data;
    if (why == EV_WAKE_TIMEOUT) { /* no timer is set: the engine bounds every wait */
        lua_pushboolean(L, 0);
        lua_pushstring(L, t->claim ? "busy" : "unknown");
        return 2;
    }
    if (t->outcome == EV_INV_ERROR) {
        int n = ev_db_push_fail(L, t->err[0] ? t->err : "unavailable");
        if (t->sqlstate[0]) {
            lua_pushstring(L, t->sqlstate);
            lua_setfield(L, -2, "sqlstate");
        }
        return n;
    }
    lua_pushboolean(L, t->outcome == EV_INV_GRANTED);
    if (t->outcome == EV_INV_GRANTED)
        ev_db_push_row(L, t->res, t->row, "inv_");
    else
        lua_pushstring(L, why_of(t->outcome));
    lua_pushinteger(L, t->info);
    lua_pushboolean(L, t->emptied);
    lua_pushinteger(L, t->started_ms);
    lua_pushinteger(L, t->max);
    return 6;
}

static void take_cancel(void *data)
{
    take_t *t = data;
    if (t->claim)
        ev_inv_withdraw(t->claim);
    t->claim = NULL;
}

static void take_release(void *data)
{
    take_t *t = data;
    if (t->claim) /* aborted without a cancel: still withdraw */
        ev_inv_withdraw(t->claim);
    free(t);
}

static const ev_wait_ops_t take_ops = {"inventory.take", take_push, take_cancel, take_release};

static int inv_take(lua_State *L)
{
    const char *pool = luaL_checkstring(L, 1);
    lua_Integer key = luaL_checkinteger(L, 2), owner = luaL_checkinteger(L, 3);
    lua_Integer qty = luaL_checkinteger(L, 4), limit = luaL_optinteger(L, 5, 0);
    double queue_s = luaL_optnumber(L, 6, 25);
    const char *tag = luaL_optstring(L, 7, NULL);
    luaL_argcheck(L, qty >= 1 && qty <= 1000000, 4, "quantity out of range");
    ev_co_t *co = ev_co_current(L);
    /* checked before queuing: a claim queued by a caller that then cannot
     * wait would be taken with nobody to tell */
    if (!co || !lua_isyieldable(L))
        return luaL_error(L, "inventory: must be called from a request, timer or script coroutine");
    ev_inv_t *inv = engine(L);
    if (!inv)
        return luaL_error(L, "inventory: out of memory");
    if (!ev_inv_has_db(inv)) {
        ev_pg_pool_t *db = ev_db_primary(L);
        if (!db)
            return ev_db_push_fail(L, "unavailable: no database configured");
        ev_inv_set_db(inv, db);
    }
    take_t *t = calloc(1, sizeof *t);
    if (!t)
        return luaL_error(L, "out of memory");
    t->co = co;
    t->claim = ev_inv_take(inv, pool, key, owner, (int)qty, (int)(limit > 0 ? limit : 0), tag,
                           queue_s, on_answer, t);
    if (!t->claim) {
        free(t);
        return luaL_error(L, "inventory: no pool %s (or out of memory)", pool);
    }
    return ev_co_wait(L, -1, &take_ops, t);
}

static int inv_closed(lua_State *L)
{
    int closed = ev_gate_closed(luaL_checkstring(L, 1), luaL_checkinteger(L, 2),
                                (int)luaL_checkinteger(L, 3));
    if (closed)
        ev_gate_count_refusal();
    lua_pushboolean(L, closed);
    return 1;
}

static int inv_close(lua_State *L)
{
    const char *pool = luaL_checkstring(L, 1);
    lua_Integer key = luaL_checkinteger(L, 2), max = luaL_checkinteger(L, 3);
    lua_Number seconds = luaL_checknumber(L, 4);
    luaL_argcheck(L, max >= 1 && max <= 1000000, 3, "max_quantity must be in 1..1000000");
    luaL_argcheck(L, seconds > 0 && seconds <= 3600, 4, "seconds must be in (0, 3600]");
    ev_gate_close(pool, key, (int)max, seconds);
    return 0;
}

static int inv_reopen(lua_State *L)
{
    ev_gate_open(luaL_checkstring(L, 1), luaL_checkinteger(L, 2));
    return 0;
}

static int inv_changes(lua_State *L)
{
    lua_pushinteger(L, ev_gate_changes(luaL_checkstring(L, 1), luaL_checkinteger(L, 2)));
    return 1;
}

static int inv_selling(lua_State *L)
{
    ev_inv_t *inv = ev_runtime_get(L)->inventory;
    lua_pushboolean(L, inv && ev_inv_selling(inv, luaL_checkstring(L, 1), luaL_checkinteger(L, 2)));
    return 1;
}

static int inv_stats(lua_State *L)
{
    ev_inv_stats_t s = {0};
    ev_inv_t *inv = ev_runtime_get(L)->inventory;
    if (inv)
        ev_inv_stats(inv, &s);
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, (lua_Integer)s.batches);
    lua_setfield(L, -2, "batches");
    lua_pushinteger(L, (lua_Integer)s.claims);
    lua_setfield(L, -2, "claims");
    lua_pushinteger(L, (lua_Integer)s.gated);
    lua_setfield(L, -2, "gated");
    lua_pushinteger(L, (lua_Integer)s.busy);
    lua_setfield(L, -2, "busy");
    lua_pushinteger(L, s.rows);
    lua_setfield(L, -2, "rows");
    lua_pushinteger(L, (lua_Integer)ev_gate_refusals());
    lua_setfield(L, -2, "refusals");
    return 1;
}

static const luaL_Reg funcs[] = {
    {"define", inv_define},
    {"sql", inv_sql},
    {"take", inv_take},
    {"closed", inv_closed},
    {"close", inv_close},
    {"reopen", inv_reopen},
    {"changes", inv_changes},
    {"selling", inv_selling},
    {"stats", inv_stats},
    {"classify", inv_classify},
    {NULL, NULL},
};

int luaopen_evently_inventory_core(lua_State *L)
{
    luaL_newlib(L, funcs);
    return 1;
}
