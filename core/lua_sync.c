/* lua_sync.c - evently.sync: coroutines waiting for each other.
 *
 *   local ev = sync.event()
 *   ok, err = ev:wait(timeout)   [yields] true once set (at once if already set),
 *                                or nil, "timeout"
 *   ev:set()                     wakes every waiter (from the loop's next turn);
 *                                later waits return at once
 *   ev:is_set()
 * The waker keeps running; waiters resume after it yields or returns, so set()
 * is safe to call from anywhere (the cache's single-flight loader uses it). */
#include <lauxlib.h>
#include <stdlib.h>

#include "co.h"

#define EVENT_MT "evently.sync.event"

typedef struct waiter {
    ev_co_t *co;
    struct waiter *prev, *next;
    struct sync_event *ev;
} waiter_t;

typedef struct sync_event {
    int set;
    waiter_t *head;
} sync_event_t;

static void unlink_waiter(waiter_t *w)
{
    if (!w->ev)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        w->ev->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->ev = NULL;
}

static int wait_push(lua_State *L, void *data, ev_wake_t why)
{
    (void)data;
    if (why == EV_WAKE_TIMEOUT) {
        lua_pushnil(L);
        lua_pushliteral(L, "timeout");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static void wait_cancel(void *data) { unlink_waiter(data); }

static void wait_release(void *data)
{
    unlink_waiter(data);
    free(data);
}

static const ev_wait_ops_t wait_ops = {"sync.wait", wait_push, wait_cancel, wait_release};

static int ev_wait(lua_State *L)
{
    sync_event_t *e = luaL_checkudata(L, 1, EVENT_MT);
    double timeout = luaL_optnumber(L, 2, -1);
    if (e->set) {
        lua_pushboolean(L, 1);
        return 1;
    }
    ev_co_t *co = ev_co_current(L);
    if (!co)
        return luaL_error(L, "sync: wait must be called from a request, timer or script coroutine");
    waiter_t *w = calloc(1, sizeof *w);
    if (!w)
        return luaL_error(L, "out of memory");
    w->co = co;
    w->ev = e;
    w->next = e->head;
    if (e->head)
        e->head->prev = w;
    e->head = w;
    lua_settop(L, 1); /* the event stays alive while we wait on it */
    return ev_co_wait(L, timeout, &wait_ops, w);
}

static int ev_set(lua_State *L)
{
    sync_event_t *e = luaL_checkudata(L, 1, EVENT_MT);
    e->set = 1;
    for (waiter_t *w = e->head; w; w = w->next)
        ev_co_wake_later(w->co);
    return 0;
}

static int ev_is_set(lua_State *L)
{
    sync_event_t *e = luaL_checkudata(L, 1, EVENT_MT);
    lua_pushboolean(L, e->set);
    return 1;
}

static int ev_gc(lua_State *L)
{
    sync_event_t *e = luaL_checkudata(L, 1, EVENT_MT);
    while (e->head) /* cannot happen while waiters anchor it; be safe */
        unlink_waiter(e->head);
    return 0;
}

static int sync_event(lua_State *L)
{
    sync_event_t *e = lua_newuserdatauv(L, sizeof *e, 0);
    e->set = 0;
    e->head = NULL;
    luaL_setmetatable(L, EVENT_MT);
    return 1;
}

static const luaL_Reg event_methods[] = {
    {"wait", ev_wait},
    {"set", ev_set},
    {"is_set", ev_is_set},
    {NULL, NULL},
};

static const luaL_Reg sync_funcs[] = {
    {"event", sync_event},
    {NULL, NULL},
};

int luaopen_evently_sync(lua_State *L)
{
    if (luaL_newmetatable(L, EVENT_MT)) {
        luaL_newlib(L, event_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, ev_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    luaL_newlib(L, sync_funcs);
    return 1;
}
