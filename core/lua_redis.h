/* lua_redis.h - evently.redis.core (lua_redis.c): what other C code and the
 * unit tests need of it. */
#ifndef EV_LUA_REDIS_H
#define EV_LUA_REDIS_H

#include <hiredis/hiredis.h>
#include <lua.h>

/* Pushes one reply as a call returns it: its value (strings and statuses as
 * strings, integers, arrays as sequences, nil as the redis.null lightuserdata,
 * an error inside an array as an error value); or, for an error reply, nil
 * and an error value {kind = "redis", message, code}. Returns how many it
 * pushed. The module must be open in L (its error metatable). */
int ev_redis_push_result(lua_State *L, const redisReply *rep);

#endif
