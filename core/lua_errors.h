/* lua_errors.h - the error values bindings hand to scripts: a table
 * {kind = "timeout"|"closed"|..., message = "..."} (bindings add fields such
 * as sqlstate) whose tostring is "kind: message". Each binding names its own
 * metatable, so an error still says which module raised it. */
#ifndef EV_LUA_ERRORS_H
#define EV_LUA_ERRORS_H

#include <stddef.h>
#include <lua.h>

/* Creates metatable mt (with __tostring) unless it exists. */
void ev_lua_error_type(lua_State *L, const char *mt);
/* Pushes {kind, message = msg[0..len)} with metatable mt. */
void ev_lua_error_push(lua_State *L, const char *mt, const char *kind, const char *msg, size_t len);
/* Pushes nil and the error read from "kind: message" (or just "kind", which is
 * then the message too); returns 2, the count a binding returns. */
int ev_lua_error_fail(lua_State *L, const char *mt, const char *err);

#endif
