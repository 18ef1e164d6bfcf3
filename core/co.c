/* co.c - coroutines waiting on C-side I/O; see co.h for the contract.
 *
 * The coroutine's lua_State extra space holds its ev_co_t*, so a C function
 * finds "who is calling" in O(1) with no table lookup. co_resume() is the
 * only place that calls lua_resume; it also finishes the coroutine, so every
 * path (return, error, abort) releases the registry anchor exactly once. */
#include "co.h"

#include <event2/event.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "slice.h"

struct ev_co {
    lua_State *L;  /* the thread */
    lua_State *M;  /* the main thread: owns the anchor */
    int wake_done; /* the timer fires to deliver a deferred EV_WAKE_DONE */
    void *pool;    /* co_pool_t of M, where it goes when finished */
    int ref;       /* registry anchor of the thread */
    struct event_base *base;
    struct event *timer;      /* the wait's timeout */
    const ev_wait_ops_t *ops; /* the wait in progress, or NULL */
    void *data;
    ev_co_done_fn done;
    void *ud;
    char tag[72];
    char route[112];
};

static int live;

int ev_co_live(void)
{
    return live;
}

static ev_co_t **slot(lua_State *L)
{
    return (ev_co_t **)lua_getextraspace(L);
}

ev_co_t *ev_co_current(lua_State *L)
{
    return *slot(L);
}

lua_State *ev_co_state(ev_co_t *co)
{
    return co->L;
}

void *ev_co_owner(const ev_co_t *co, ev_co_done_fn done)
{
    return co->done == done ? co->ud : NULL;
}

void ev_co_set_tag(ev_co_t *co, const char *tag)
{
    size_t n = strlen(tag);
    if (n >= sizeof co->tag)
        n = sizeof co->tag - 1;
    memcpy(co->tag, tag, n);
    co->tag[n] = '\0';
}

const char *ev_co_tag(const ev_co_t *co)
{
    return co->tag;
}

void ev_co_set_route(ev_co_t *co, const char *route)
{
    size_t n = strlen(route);
    if (n >= sizeof co->route)
        n = sizeof co->route - 1;
    memcpy(co->route, route, n);
    co->route[n] = '\0';
}

const char *ev_co_route(const ev_co_t *co)
{
    return co->route[0] ? co->route : NULL;
}

static void on_timeout(evutil_socket_t fd, short what, void *arg);

/* Finished coroutines are kept for reuse: a Lua thread that returned
 * normally can run a new function (Lua 5.4), so a busy worker creates no
 * threads, timers or registry entries per request. Threads that raised or
 * were aborted are reset before they go back. The pool belongs to its Lua
 * state (a userdata in the registry), so lua_close() frees it; close the
 * state before its event base. */
#define POOL_MAX 256
typedef struct {
    ev_co_t *items[POOL_MAX];
    int n;
} co_pool_t;

static const char POOL_KEY = 'p';

static int pool_gc(lua_State *L)
{
    co_pool_t *p = lua_touserdata(L, 1);
    while (p->n > 0) { /* the state is going: its registry goes with it */
        ev_co_t *co = p->items[--p->n];
        event_free(co->timer);
        free(co);
    }
    return 0;
}

static co_pool_t *pool_of(lua_State *M)
{
    if (lua_rawgetp(M, LUA_REGISTRYINDEX, &POOL_KEY) == LUA_TUSERDATA) {
        co_pool_t *p = lua_touserdata(M, -1);
        lua_pop(M, 1);
        return p;
    }
    lua_pop(M, 1);
    co_pool_t *p = lua_newuserdatauv(M, sizeof *p, 0);
    p->n = 0;
    lua_createtable(M, 0, 1);
    lua_pushcfunction(M, pool_gc);
    lua_setfield(M, -2, "__gc");
    lua_setmetatable(M, -2);
    lua_rawsetp(M, LUA_REGISTRYINDEX, &POOL_KEY);
    return p;
}

static lua_State *main_thread(lua_State *L)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    lua_State *M = lua_tothread(L, -1);
    lua_pop(L, 1);
    return M;
}

static ev_co_t *co_create(lua_State *M, struct event_base *base, co_pool_t *pool)
{
    ev_co_t *co = calloc(1, sizeof *co);
    if (!co)
        return NULL;
    co->timer = evtimer_new(base, on_timeout, co);
    if (!co->timer) {
        free(co);
        return NULL;
    }
    co->M = M;
    co->pool = pool;
    co->L = lua_newthread(M);
    co->ref = luaL_ref(M, LUA_REGISTRYINDEX);
    co->base = base;
    return co;
}

static void co_destroy(ev_co_t *co)
{
    luaL_unref(co->M, LUA_REGISTRYINDEX, co->ref);
    event_free(co->timer);
    free(co);
}

ev_co_t *ev_co_new(lua_State *L, struct event_base *base, ev_co_done_fn done, void *ud)
{
    lua_State *M = main_thread(L);
    co_pool_t *pool = pool_of(M);
    ev_co_t *co = NULL;
    while (pool->n > 0 && !co) {
        co = pool->items[--pool->n];
        if (co->base != base) { /* made for another loop of this state */
            co_destroy(co);
            co = NULL;
        }
    }
    if (!co)
        co = co_create(M, base, pool);
    if (!co)
        return NULL;
    *slot(co->L) = co;
    co->done = done;
    co->ud = ud;
    co->tag[0] = '\0';
    co->route[0] = '\0';
    live++;
    return co;
}

/* Only a thread whose body returned normally goes back to the pool. One that
 * raised or was aborted is dropped: lua_resetthread() leaves the thread's
 * error-handler slot (set by an xpcall it was inside of) in place, and a
 * reused thread would then run a stale stack slot as its message handler
 * ("error in error handling" on its next error). */
static void co_free(ev_co_t *co, int status)
{
    *slot(co->L) = NULL;
    if (ev_slice_stopped(co->L)) {
        ev_slice_forget(co->L);
        status = LUA_ERRRUN; /* never reused */
    }
    live--;
    co_pool_t *pool = co->pool;
    if (status == LUA_OK && pool->n < POOL_MAX) {
        lua_settop(co->L, 0);
        pool->items[pool->n++] = co;
    } else {
        co_destroy(co);
    }
}

/* The one resume point. */
static void co_resume(ev_co_t *co, int nargs)
{
    int nres = 0;
    lua_State *outer = ev_slice_enter(co->L);
    int status = lua_resume(co->L, NULL, nargs, &nres);
    ev_slice_leave(outer);
    if (status == LUA_YIELD) {
        if (co->ops)
            return; /* waiting on our I/O: the callback resumes it */
        /* a bare coroutine.yield() in the body: nothing would ever wake it */
        lua_settop(co->L, 0);
        lua_pushliteral(co->L, "attempt to yield from the request coroutine without an "
                               "evently operation");
        status = LUA_ERRRUN;
    }
    if (status != LUA_OK && status != LUA_YIELD)
        ev_debug("co %s: finished with error", co->tag);
    if (co->done)
        co->done(co, co->L, status, co->ud);
    co_free(co, status);
}

void ev_co_start(ev_co_t *co, int nargs)
{
    co_resume(co, nargs);
}

int ev_co_wait(lua_State *L, double timeout_s, const ev_wait_ops_t *ops, void *data)
{
    ev_co_t *co = ev_co_current(L);
    if (!co || !lua_isyieldable(L))
        return luaL_error(L, "%s: must be called from a request, timer or script coroutine",
                          ops->name);
    co->ops = ops;
    co->data = data;
    if (timeout_s >= 0) {
        /* the loop's cached clock may be a whole callback old: count from now */
        event_base_update_cache_time(co->base);
        struct timeval tv;
        tv.tv_sec = (time_t)timeout_s;
        tv.tv_usec = (suseconds_t)((timeout_s - (double)tv.tv_sec) * 1e6);
        evtimer_add(co->timer, &tv);
    }
    ev_debug("co %s: lua ready to wait on %s for %.3f s", co->tag, ops->name, timeout_s);
    return lua_yield(L, 0);
}

typedef struct {
    const ev_wait_ops_t *ops;
    void *data;
    ev_wake_t why;
} push_args_t;

static int push_call(lua_State *M)
{
    push_args_t *a = lua_touserdata(M, 1);
    lua_pop(M, 1);
    return a->ops->push(M, a->data, a->why);
}

/* Runs ops->push protected, on the main thread (a yielded coroutine cannot
 * make calls), then moves the values over: a push that runs out of memory or
 * decodes a bad value becomes `nil, "error: ..."` instead of a panic. */
static int push_results(ev_co_t *co, const ev_wait_ops_t *ops, ev_wake_t why)
{
    push_args_t a = {ops, co->data, why};
    int base = lua_gettop(co->M);
    lua_pushcfunction(co->M, push_call);
    lua_pushlightuserdata(co->M, &a);
    int n;
    if (lua_pcall(co->M, 1, LUA_MULTRET, 0) == LUA_OK) {
        n = lua_gettop(co->M) - base;
    } else {
        const char *msg = lua_tostring(co->M, -1);
        lua_pushnil(co->M);
        lua_pushfstring(co->M, "error: %s", msg ? msg : "?");
        lua_remove(co->M, -3);
        n = 2;
    }
    if (!lua_checkstack(co->L, n + LUA_MINSTACK)) {
        lua_settop(co->M, base);
        lua_pushnil(co->L);
        lua_pushliteral(co->L, "error: out of stack");
        return 2;
    }
    lua_xmove(co->M, co->L, n);
    return n;
}

void ev_co_wake(ev_co_t *co, ev_wake_t why)
{
    const ev_wait_ops_t *ops = co->ops;
    if (!ops)
        return; /* already woken: never resume twice */
    co->ops = NULL;
    co->wake_done = 0;
    evtimer_del(co->timer);
    if (why == EV_WAKE_TIMEOUT && ops->cancel)
        ops->cancel(co->data);
    ev_debug("co %s: lua resuming after %s (%s)", co->tag, ops->name,
             why == EV_WAKE_DONE ? "done" : "timeout");
    void *data = co->data;
    int n = push_results(co, ops, why);
    if (ops->release)
        ops->release(data);
    co_resume(co, n);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    ev_co_t *co = arg;
    (void)fd;
    (void)what;
    int done = co->wake_done;
    co->wake_done = 0;
    ev_co_wake(co, done ? EV_WAKE_DONE : EV_WAKE_TIMEOUT);
}

void ev_co_wake_later(ev_co_t *co)
{
    if (!co->ops || co->wake_done)
        return;
    co->wake_done = 1;
    event_active(co->timer, EV_TIMEOUT, 0); /* the wait's own timer, fired now */
}

void ev_co_abort(ev_co_t *co)
{
    const ev_wait_ops_t *ops = co->ops;
    co->ops = NULL;
    co->wake_done = 0;
    evtimer_del(co->timer);
    if (ops && ops->cancel)
        ops->cancel(co->data);
    if (ops && ops->release)
        ops->release(co->data);
    ev_debug("co %s: aborted", co->tag);
    co->done = NULL;
    lua_resetthread(co->L);  /* runs pending <close> variables */
    co_free(co, LUA_ERRRUN); /* never reused: see co_free */
}
