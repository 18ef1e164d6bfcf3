/* lua_errors.c - error values for scripts: see lua_errors.h. */
#include <lauxlib.h>
#include <string.h>

#include "lua_errors.h"

static int error_tostring(lua_State *L)
{
    lua_getfield(L, 1, "kind");
    lua_pushliteral(L, ": ");
    lua_getfield(L, 1, "message");
    lua_concat(L, 3);
    return 1;
}

void ev_lua_error_type(lua_State *L, const char *mt)
{
    if (luaL_newmetatable(L, mt)) {
        lua_pushcfunction(L, error_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
}

void ev_lua_error_push(lua_State *L, const char *mt, const char *kind, const char *msg, size_t len)
{
    lua_createtable(L, 0, 6);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
    lua_pushlstring(L, msg, len);
    lua_setfield(L, -2, "message");
    luaL_setmetatable(L, mt);
}

int ev_lua_error_fail(lua_State *L, const char *mt, const char *err)
{
    lua_pushnil(L);
    const char *sep = strstr(err, ": ");
    if (!sep) {
        ev_lua_error_push(L, mt, err, err, strlen(err));
        return 2;
    }
    lua_pushlstring(L, err, (size_t)(sep - err));
    ev_lua_error_push(L, mt, lua_tostring(L, -1), sep + 2, strlen(sep + 2));
    lua_remove(L, -2);
    return 2;
}
