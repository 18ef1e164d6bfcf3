/* lua_log.c - evently.log: the process logger for scripts.
 *
 *   log.debug(fmt, ...) / log.info / log.warn / log.error   [-n, +0, e]
 * Arguments go through string.format. Lines from a request coroutine carry
 * its request id, so one grep finds everything a request did. */
#include <lauxlib.h>
#include <stdint.h>

#include "co.h"
#include "log.h"

/* The script line that logs, as the rate limit's key: one chatty line
 * cannot crowd out the others. */
static uintptr_t call_site(lua_State *L)
{
    lua_Debug ar;
    if (!lua_getstack(L, 1, &ar) || !lua_getinfo(L, "Sl", &ar))
        return 1;
    uintptr_t h = (uintptr_t)ar.source; /* the chunk's source string: one per chunk */
    return h * 31u + (uintptr_t)ar.currentline * 2654435761u + 1;
}

static int emit(lua_State *L, ev_log_level_t level)
{
    if (!ev_log_enabled(level))
        return 0;
    int n = lua_gettop(L);
    luaL_checkstring(L, 1);
    if (n > 1) {
        luaL_getmetafield(L, 1, "__index"); /* string table */
        lua_getfield(L, -1, "format");
        lua_remove(L, -2);
        lua_insert(L, 1);
        lua_call(L, n, 1);
    }
    ev_co_t *co = ev_co_current(L);
    const char *msg = lua_tostring(L, -1);
    uintptr_t site = call_site(L);
    if (co && *ev_co_tag(co))
        ev_log_site(level, site, "[%s] %s", ev_co_tag(co), msg);
    else
        ev_log_site(level, site, "%s", msg);
    return 0;
}

static int l_debug(lua_State *L) { return emit(L, EV_LOG_DEBUG); }
static int l_info(lua_State *L) { return emit(L, EV_LOG_INFO); }
static int l_warn(lua_State *L) { return emit(L, EV_LOG_WARN); }
static int l_error(lua_State *L) { return emit(L, EV_LOG_ERROR); }

static const luaL_Reg log_funcs[] = {
    {"debug", l_debug},
    {"info", l_info},
    {"warn", l_warn},
    {"error", l_error},
    {NULL, NULL},
};

int luaopen_evently_log(lua_State *L)
{
    luaL_newlib(L, log_funcs);
    return 1;
}
