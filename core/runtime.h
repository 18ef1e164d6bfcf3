/* runtime.h - a Lua 5.4 state with the whole platform API.
 *
 * One per worker (and one for `evently lua`, `test`, `check`). It knows its
 * event loop and configuration through the registry, so every binding can
 * reach them from any coroutine: ev_runtime_get(L)->base, ->cfg. Lua sees
 * it as the module evently.runtime (its worker, configuration, metrics). */
#ifndef EV_RUNTIME_H
#define EV_RUNTIME_H

#include <lua.h>
#include <stddef.h>

#include "config.h"
#include "metrics.h"

struct event_base;
struct ev_co;
struct ev_http_req;

typedef struct ev_runtime ev_runtime_t;
struct ev_runtime {
    struct event_base *base;
    const ev_config_t *cfg;
    ev_metrics_t *metrics; /* may be NULL outside `serve` */
    int worker_slot;       /* -1 outside `serve` */
    int draining;
    struct ev_pg_pool *db;         /* created on first use by evently.db */
    struct ev_pg_pool *replica;    /* EVENTLY_REPLICA_URL, else NULL: db serves */
    struct ev_redis *redis;        /* created on first use by evently.redis */
    struct ev_pg_pool *listen;     /* dedicated LISTEN connections, outside the pool */
    struct ev_kafka *kafka;        /* the worker's producer, created on first use */
    struct ev_mail *mail;          /* created on first use by evently.mail.core */
    struct ev_ws_hub *ws;          /* WebSocket connections, created on first upgrade */
    struct ev_inv *inventory;      /* reservation engine, created on first use */
    struct ev_early *early;        /* early-answer rules (evently.early), first use */
    struct ev_token_cache *tokens; /* tokens Lua validated lately (evently.early) */
    size_t lua_bytes, lua_max;     /* the Lua heap and its ceiling (runtime.c's allocator) */
    /* Set by a worker, NULL elsewhere. http_request: the HTTP request the
     * coroutine is handling while it is unanswered, else NULL. http_detach:
     * that request's socket was taken over (WebSocket): its deadline stops
     * and the handler's return answers nothing. */
    struct ev_http_req *(*http_request)(ev_runtime_t *rt, struct ev_co *co);
    void (*http_detach)(ev_runtime_t *rt, struct ev_co *co);
};

/* Frees what the bindings created on the runtime (pools); call after
 * lua_close() (whose collector hands leased connections back) and before the
 * event base goes. */
void ev_runtime_close(ev_runtime_t *rt);

/* Creates the state: standard libraries, package.path over the platform
 * modules, the scripts and plugins dirs, and every evently.* C module
 * preloaded. NULL on allocation failure. */
lua_State *ev_runtime_new(ev_runtime_t *rt);
ev_runtime_t *ev_runtime_get(lua_State *L);
/* Runs a chunk in a coroutine on the loop and runs the loop until it ends.
 * The function and nargs arguments are on L. Returns 0; or -1 when it raised
 * (logged with its traceback) or returned nil|false and a message: the
 * Lua way of saying "failed, because", which goes to why (when not NULL) and
 * is not logged. */
int ev_runtime_run(lua_State *L, int nargs, char *why, size_t whylen);
/* Loads the app (plugins + scripts/app.lua) through evently.boot; -1 and a
 * message with file:line in err on failure. */
int ev_runtime_boot(lua_State *L, char *err, size_t errlen);

int luaopen_evently_time(lua_State *L);
int luaopen_evently_log(lua_State *L);
int luaopen_evently_runtime(lua_State *L);
int luaopen_evently_inventory_core(lua_State *L);
int luaopen_evently_db_core(lua_State *L);
int luaopen_evently_redis_core(lua_State *L);
int luaopen_evently_sync(lua_State *L);
int luaopen_evently_json(lua_State *L);
int luaopen_evently_crypto(lua_State *L);
int luaopen_evently_kafka_core(lua_State *L);
int luaopen_evently_ws_core(lua_State *L);
int luaopen_evently_mail_core(lua_State *L);
int luaopen_evently_early(lua_State *L);

#endif
