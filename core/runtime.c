/* runtime.c - creating a platform Lua state, booting the app, running chunks.
 *
 * The C modules are registered in package.preload, so scripts pull them in
 * with require like any Lua module, and a state that never asks for Kafka
 * never pays for it. evently.runtime exposes what a worker knows about
 * itself (config, worker slot, draining, metrics text). */
#include "runtime.h"

#include <event2/event.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "co.h"
#include "early.h"
#include "health.h"
#include "inventory.h"
#include "kafka.h"
#include "pg.h"
#include "redis.h"
#include "ws.h"
#include "log.h"
#include "mail.h"
#include "token_cache.h"

static const char RT_KEY = 'r';

ev_runtime_t *ev_runtime_get(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &RT_KEY);
    ev_runtime_t *rt = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return rt;
}

static void set_paths(lua_State *L, const ev_config_t *c)
{
    char path[4096];
    snprintf(path, sizeof path,
             "%s/?.lua;%s/?/init.lua;%s/?.lua;%s/?/init.lua;%s/?.lua;"
             "/usr/share/lua/5.4/?.lua;/usr/share/lua/5.4/?/init.lua",
             c->lua_path, c->lua_path, c->scripts, c->scripts, c->plugins_dir);
    lua_getglobal(L, "package");
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, "/usr/lib/x86_64-linux-gnu/lua/5.4/?.so;/usr/local/lib/lua/5.4/?.so");
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
}

static void preload(lua_State *L, const char *name, lua_CFunction open)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, open);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

static int panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    ev_error("Lua panic: %s", msg ? msg : "(error object is not a string)");
    return 0; /* Lua aborts */
}

/* Lua's allocator with a ceiling (lua_memory_max): past it an allocation
 * fails, Lua collects and retries, then raises "not enough memory" in the
 * script that asked. One runaway script cannot take the machine's memory. */
static void *bounded_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    ev_runtime_t *rt = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        rt->lua_bytes -= old;
        return NULL;
    }
    if (nsize > old && rt->lua_max && rt->lua_bytes - old + nsize > rt->lua_max)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (p)
        rt->lua_bytes = rt->lua_bytes - old + nsize;
    return p;
}

lua_State *ev_runtime_new(ev_runtime_t *rt)
{
    rt->lua_bytes = 0;
    rt->lua_max = rt->cfg ? rt->cfg->lua_memory_max : 0;
    lua_State *L = lua_newstate(bounded_alloc, rt);
    if (!L)
        return NULL;
    lua_atpanic(L, panic);
    /* Lua leaves the main thread's extra space uninitialised and every
     * coroutine.create copies it: NULL means "not an evently coroutine" */
    *(void **)lua_getextraspace(L) = NULL;
    luaL_openlibs(L);
    lua_pushlightuserdata(L, rt);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &RT_KEY);
    set_paths(L, rt->cfg);
    preload(L, "evently.time", luaopen_evently_time);
    preload(L, "evently.log", luaopen_evently_log);
    preload(L, "evently.runtime", luaopen_evently_runtime);
    preload(L, "evently.db.core", luaopen_evently_db_core);
    preload(L, "evently.redis.core", luaopen_evently_redis_core);
    preload(L, "evently.sync", luaopen_evently_sync);
    preload(L, "evently.json", luaopen_evently_json);
    preload(L, "evently.crypto", luaopen_evently_crypto);
    preload(L, "evently.kafka.core", luaopen_evently_kafka_core);
    preload(L, "evently.ws.core", luaopen_evently_ws_core);
    preload(L, "evently.mail.core", luaopen_evently_mail_core);
    preload(L, "evently.inventory.core", luaopen_evently_inventory_core);
    preload(L, "evently.early", luaopen_evently_early);
    return L;
}

void ev_runtime_close(ev_runtime_t *rt)
{
    ev_inv_free(rt->inventory); /* before its pool */
    rt->inventory = NULL;
    ev_pg_pool_free(rt->db);
    ev_pg_pool_free(rt->replica);
    ev_pg_pool_free(rt->listen);
    rt->db = rt->replica = rt->listen = NULL;
    ev_redis_free(rt->redis);
    rt->redis = NULL;
    ev_kafka_free(rt->kafka, 5000); /* deliveries still due get 5 s */
    rt->kafka = NULL;
    ev_ws_hub_free(rt->ws); /* sockets still lingering after their close */
    rt->ws = NULL;
    ev_mail_free(rt->mail);
    rt->mail = NULL;
    ev_early_free(rt->early);
    rt->early = NULL;
    ev_token_cache_free(rt->tokens);
    rt->tokens = NULL;
}

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
    return 1;
}

int ev_runtime_boot(lua_State *L, char *err, size_t errlen)
{
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "evently.boot");
    int rc = lua_pcall(L, 1, 1, -3);
    if (rc == LUA_OK) {
        lua_getfield(L, -1, "load");
        rc = lua_pcall(L, 0, 0, -3);
    }
    if (rc != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        lua_settop(L, 0);
        return -1;
    }
    lua_settop(L, 0);
    return 0;
}

typedef struct {
    int finished;
    int ok;
    char *why; /* a returned failure's message, or NULL */
    size_t whylen;
} run_state_t;

static void run_done(ev_co_t *co, lua_State *co_L, int status, void *ud)
{
    run_state_t *st = ud;
    st->finished = 1;
    st->ok = status == LUA_OK;
    if (st->ok && lua_gettop(co_L) >= 2 && !lua_toboolean(co_L, 1) &&
        lua_type(co_L, 2) == LUA_TSTRING) { /* returned nil, why */
        st->ok = 0;
        if (st->why)
            snprintf(st->why, st->whylen, "%s", lua_tostring(co_L, 2));
    } else if (!st->ok) {
        const char *msg = lua_tostring(co_L, -1);
        luaL_traceback(co_L, co_L, msg ? msg : "error", 0);
        ev_error("%s: %s", ev_co_tag(co), lua_tostring(co_L, -1));
    }
    event_base_loopbreak(ev_runtime_get(co_L)->base);
}

int ev_runtime_run(lua_State *L, int nargs, char *why, size_t whylen)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    run_state_t st = {0, 0, why, whylen};
    if (why && whylen)
        why[0] = '\0';
    ev_co_t *co = ev_co_new(L, rt->base, run_done, &st);
    if (!co)
        return -1;
    ev_co_set_tag(co, "main");
    lua_State *T = ev_co_state(co);
    lua_xmove(L, T, nargs + 1);
    ev_co_start(co, nargs);
    while (!st.finished)
        if (event_base_loop(rt->base, EVLOOP_ONCE) != 0)
            break; /* nothing left to wait on: the chunk is stuck */
    if (!st.finished) {
        ev_error("main chunk waits on nothing that can wake it");
        ev_co_abort(co); /* st lives on this frame: the coroutine must not outlive it */
        return -1;
    }
    return st.ok ? 0 : -1;
}

/* ---- evently.runtime ---- */

static int rt_config(lua_State *L)
{
    const ev_config_t *c = ev_runtime_get(L)->cfg;
    lua_newtable(L);
    lua_pushstring(L, c->home);
    lua_setfield(L, -2, "home");
    lua_pushstring(L, c->scripts);
    lua_setfield(L, -2, "scripts");
    lua_pushstring(L, c->plugins_dir);
    lua_setfield(L, -2, "plugins_dir");
    lua_pushinteger(L, c->port);
    lua_setfield(L, -2, "port");
    lua_pushinteger(L, c->workers);
    lua_setfield(L, -2, "workers");
    lua_pushinteger(L, (lua_Integer)c->max_body);
    lua_setfield(L, -2, "max_body");
    /* the deadlines scripts must answer within (a booking queued behind a slow batch) */
    lua_pushinteger(L, c->handler_timeout);
    lua_setfield(L, -2, "handler_timeout");
    lua_pushinteger(L, c->ws_max_per_user);
    lua_setfield(L, -2, "ws_max_per_user");
    lua_pushinteger(L, c->db_acquire_timeout_ms);
    lua_setfield(L, -2, "db_acquire_timeout_ms");
    lua_pushinteger(L, c->db_statement_timeout_ms);
    lua_setfield(L, -2, "db_statement_timeout_ms");
    lua_pushinteger(L, c->hash_queue_max);
    lua_setfield(L, -2, "hash_queue_max");
    if (c->database_url) {
        lua_pushstring(L, c->database_url);
        lua_setfield(L, -2, "database_url");
    }
    if (c->replica_url) {
        lua_pushstring(L, c->replica_url);
        lua_setfield(L, -2, "replica_url");
    }
    if (c->redis_url) {
        lua_pushstring(L, c->redis_url);
        lua_setfield(L, -2, "redis_url");
    }
    if (c->kafka_brokers) {
        lua_pushstring(L, c->kafka_brokers);
        lua_setfield(L, -2, "kafka_brokers");
    }
    if (c->smtp_url) {
        lua_pushstring(L, c->smtp_url);
        lua_setfield(L, -2, "smtp_url");
    }
    lua_pushstring(L, c->mail_from);
    lua_setfield(L, -2, "mail_from");
    if (c->ops_listen) {
        lua_pushstring(L, c->ops_listen);
        lua_setfield(L, -2, "ops_listen");
    }
    lua_createtable(L, c->nplugins, 0);
    for (int i = 0; i < c->nplugins; i++) {
        lua_pushstring(L, c->plugins[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "plugins");
    return 1;
}

static int rt_worker(lua_State *L)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    lua_newtable(L);
    lua_pushinteger(L, rt->worker_slot);
    lua_setfield(L, -2, "slot");
    lua_pushinteger(L, (lua_Integer)getpid());
    lua_setfield(L, -2, "pid");
    lua_pushboolean(L, rt->draining);
    lua_setfield(L, -2, "draining");
    return 1;
}

static int rt_metrics(lua_State *L)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    if (!rt->metrics) {
        lua_pushliteral(L, "");
        return 1;
    }
    ev_metrics_worker_memory(rt->metrics, rt->worker_slot,
                             (uint64_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024);
    size_t len;
    char *text = ev_metrics_render(rt->metrics, &len);
    if (!text)
        return luaL_error(L, "out of memory");
    lua_pushlstring(L, text, len);
    free(text);
    return 1;
}

static int rt_count(lua_State *L)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    const char *name = luaL_checkstring(L, 1);
    lua_Integer n = luaL_optinteger(L, 2, 1);
    luaL_argcheck(L, n >= 0, 2, "must be >= 0");
    if (rt->metrics)
        ev_metrics_count(rt->metrics, name, (uint64_t)n);
    return 0;
}

/* runtime.gauge(series, value): this worker's share of a gauge. */
static int rt_gauge(lua_State *L)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    const char *series = luaL_checkstring(L, 1);
    lua_Integer v = luaL_checkinteger(L, 2);
    luaL_argcheck(L, !strpbrk(series, "\n\r") && strlen(series) < 116, 1,
                  "one line of at most 115 bytes");
    if (rt->metrics)
        ev_metrics_gauge_set(rt->metrics, rt->worker_slot, series, v);
    return 0;
}

/* {postgres = {state = "up", detail = "..."}, ...} from the master's prober. */
static int rt_components(lua_State *L)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    lua_newtable(L);
    for (int c = 0; c < EV_COMP_COUNT; c++) {
        char detail[128] = "";
        int state = rt->metrics ? ev_metrics_component_get(rt->metrics, c, detail, sizeof detail)
                                : EV_STATE_UNKNOWN;
        lua_createtable(L, 0, 2);
        lua_pushstring(L, ev_health_state_name((ev_state_t)state));
        lua_setfield(L, -2, "state");
        lua_pushstring(L, detail);
        lua_setfield(L, -2, "detail");
        lua_setfield(L, -2, ev_health_component_name((ev_component_t)c));
    }
    return 1;
}

/* set_route(name): the dispatcher names the matched route of this request. */
static int rt_set_route(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    ev_co_t *co = ev_co_current(L);
    if (co)
        ev_co_set_route(co, name);
    return 0;
}

static const luaL_Reg runtime_funcs[] = {
    {"set_route", rt_set_route},  {"components", rt_components},
    {"config", rt_config},        {"worker", rt_worker},
    {"metrics_text", rt_metrics}, {"count", rt_count},
    {"gauge", rt_gauge},          {NULL, NULL},
};

int luaopen_evently_runtime(lua_State *L)
{
    luaL_newlib(L, runtime_funcs);
    return 1;
}
