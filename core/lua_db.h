/* lua_db.h - what other bindings share with evently.db.core (lua_db.c):
 * the worker's primary pool and the same value and error mapping, so a row
 * or an error reads alike whichever module produced it. */
#ifndef EV_LUA_DB_H
#define EV_LUA_DB_H

#include <libpq-fe.h>
#include <lua.h>

#include "pg.h"

/* The primary pool, opened on first use; NULL when no database is configured. */
ev_pg_pool_t *ev_db_primary(lua_State *L);
/* Pushes row of r as a table, skipping columns whose name starts with
 * skip_prefix (NULL: none). Types map as for db queries. May raise. */
void ev_db_push_row(lua_State *L, const PGresult *r, int row, const char *skip_prefix);
/* Pushes nil and an error table from "kind: message" (or "kind"); returns 2. */
int ev_db_push_fail(lua_State *L, const char *err);

#endif
