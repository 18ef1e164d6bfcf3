/* lua_time.c - evently.time: sleep, timers, clocks.
 *
 *   time.sleep(seconds)            [-1, +1, e] yields; returns true
 *   time.after(seconds, fn, ...)   [-n, +1, e] runs fn(...) once in its own coroutine
 *   time.every(seconds, fn, ...)   [-n, +1, e] runs fn(...) each period; a run
 *                                  still going when the next is due is skipped
 *   handle:cancel()                stops a pending timer
 *   time.now()                     wall clock, seconds with fractions
 *   time.monotonic()               monotonic seconds, for durations
 * sleep may run only in a request, timer or script coroutine. Timer bodies
 * that raise are logged with their traceback; the timer goes on. A worker
 * holds at most MAX_PENDING timers: after/every raise beyond that, so a
 * script that schedules one per request cannot grow the heap without bound. */
#include <event2/event.h>
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

#include "co.h"
#include "log.h"
#include "runtime.h"

#define TIMER_MT "evently.timer"
#define MAX_PENDING 100000

static int pending; /* timers scheduled and not yet released, this process */

static int push_slept(lua_State *co, void *data, ev_wake_t why)
{
    (void)data;
    (void)why; /* the timeout is the point of sleeping */
    lua_pushboolean(co, 1);
    return 1;
}

static const ev_wait_ops_t sleep_ops = {"sleep", push_slept, NULL, NULL};

static double check_seconds(lua_State *L, int arg)
{
    double s = luaL_checknumber(L, arg);
    luaL_argcheck(L, s >= 0 && s < 1e7 && !isnan(s), arg, "seconds must be in [0, 1e7)");
    return s;
}

static int t_sleep(lua_State *L)
{
    double s = check_seconds(L, 1);
    return ev_co_wait(L, s, &sleep_ops, NULL);
}

typedef struct {
    struct event *ev;
    lua_State *L;        /* main state */
    int fn_ref;          /* {fn, args...} packed in a table */
    int running;         /* a run of this timer is in progress */
    int run_ref;         /* anchors the handle while a run is in progress */
    int repeat;
    int cancelled;
} ev_timer_t;

static void timer_release(ev_timer_t *t)
{
    if (t->fn_ref != LUA_NOREF) {
        luaL_unref(t->L, LUA_REGISTRYINDEX, t->fn_ref);
        t->fn_ref = LUA_NOREF;
        pending--;
    }
    if (t->ev)
        event_del(t->ev);
}

static void timer_done(ev_co_t *co, lua_State *co_L, int status, void *ud)
{
    ev_timer_t *t = ud;
    t->running = 0;
    if (status != LUA_OK) {
        const char *msg = lua_tostring(co_L, -1);
        luaL_traceback(co_L, co_L, msg ? msg : "(error object is not a string)", 0);
        ev_error("timer %s failed: %s", ev_co_tag(co), lua_tostring(co_L, -1));
    }
    if (!t->repeat)
        timer_release(t); /* the handle userdata frees the event on __gc */
    luaL_unref(t->L, LUA_REGISTRYINDEX, t->run_ref); /* last: t may be collected after */
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    ev_timer_t *t = arg;
    (void)fd;
    (void)what;
    if (t->cancelled || t->fn_ref == LUA_NOREF || t->running)
        return;
    ev_runtime_t *rt = ev_runtime_get(t->L);
    if (rt->draining && t->repeat)
        return;
    ev_co_t *co = ev_co_new(t->L, rt->base, timer_done, t);
    if (!co)
        return;
    ev_co_set_tag(co, t->repeat ? "every" : "after");
    lua_State *T = ev_co_state(co);
    lua_rawgeti(T, LUA_REGISTRYINDEX, t->fn_ref);
    lua_getfield(T, 1, "handle");
    t->run_ref = luaL_ref(T, LUA_REGISTRYINDEX); /* cancel() mid-run must not free t */
    lua_Integer n = luaL_len(T, 1);
    for (lua_Integer i = 1; i <= n; i++)
        lua_rawgeti(T, 1, i);
    lua_remove(T, 1);
    t->running = 1;
    ev_co_start(co, (int)n - 1);
}

static int timer_gc(lua_State *L)
{
    ev_timer_t *t = luaL_checkudata(L, 1, TIMER_MT);
    timer_release(t);
    if (t->ev) {
        event_free(t->ev);
        t->ev = NULL;
    }
    return 0;
}

static int timer_cancel(lua_State *L)
{
    ev_timer_t *t = luaL_checkudata(L, 1, TIMER_MT);
    t->cancelled = 1;
    timer_release(t);
    return 0;
}

/* after/every: the handle owns the event; the registry keeps the handle alive
 * while the timer is pending so a dropped handle does not stop the timer. */
static int start_timer(lua_State *L, int repeat)
{
    double s = check_seconds(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (repeat)
        luaL_argcheck(L, s >= 0.001, 1, "period must be at least 0.001 s");
    if (pending >= MAX_PENDING)
        return luaL_error(L, "time: %d timers already pending in this worker", MAX_PENDING);
    int nargs = lua_gettop(L) - 1;
    ev_runtime_t *rt = ev_runtime_get(L);
    ev_timer_t *t = lua_newuserdatauv(L, sizeof *t, 1);
    *t = (ev_timer_t){0};
    t->fn_ref = LUA_NOREF;
    luaL_setmetatable(L, TIMER_MT);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    t->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    t->repeat = repeat;
    t->ev = event_new(rt->base, -1, repeat ? EV_PERSIST : 0, on_timer, t);
    if (!t->ev)
        return luaL_error(L, "out of memory");
    lua_createtable(L, nargs, 1);          /* {fn, args..., handle} */
    for (int i = 1; i <= nargs; i++) {
        lua_pushvalue(L, i + 1);
        lua_rawseti(L, -2, i);
    }
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "handle");         /* anchors the handle while pending */
    t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    pending++;
    struct timeval tv = {(time_t)s, (suseconds_t)((s - floor(s)) * 1e6)};
    event_base_update_cache_time(rt->base); /* count from now, not from the loop's last wake */
    event_add(t->ev, &tv);
    return 1;
}

static int t_after(lua_State *L) { return start_timer(L, 0); }
static int t_every(lua_State *L) { return start_timer(L, 1); }

static int t_now(lua_State *L)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    lua_pushnumber(L, (double)tv.tv_sec + (double)tv.tv_usec / 1e6);
    return 1;
}

static int t_monotonic(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
    return 1;
}

static const luaL_Reg timer_methods[] = {
    {"cancel", timer_cancel},
    {NULL, NULL},
};

static const luaL_Reg time_funcs[] = {
    {"sleep", t_sleep},
    {"after", t_after},
    {"every", t_every},
    {"now", t_now},
    {"monotonic", t_monotonic},
    {NULL, NULL},
};

int luaopen_evently_time(lua_State *L)
{
    if (luaL_newmetatable(L, TIMER_MT)) {
        luaL_newlib(L, timer_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, timer_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    luaL_newlib(L, time_funcs);
    return 1;
}
