/* test_redis_replies.c - core/lua_redis.c: hiredis replies as evently.redis
 * hands them to scripts (ev_redis_push_result), built by hand. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <lualib.h>
#include <string.h>

#include "lua_redis.h"
#include "runtime.h"

static redisReply str(int type, const char *s)
{
    return (redisReply){.type = type, .str = (char *)s, .len = strlen(s)};
}

static lua_State *state(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "evently.redis.core", luaopen_evently_redis_core, 0);
    lua_pop(L, 1);
    return L;
}

static void strings_statuses_integers_and_nil(void **unused)
{
    (void)unused;
    lua_State *L = state();
    redisReply bin = {.type = REDIS_REPLY_STRING, .str = "a\0b", .len = 3};
    assert_int_equal(ev_redis_push_result(L, &bin), 1);
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    assert_int_equal(n, 3);
    assert_memory_equal(s, "a\0b", 3);
    redisReply ok = str(REDIS_REPLY_STATUS, "OK");
    ev_redis_push_result(L, &ok);
    assert_string_equal(lua_tostring(L, -1), "OK");
    redisReply big = {.type = REDIS_REPLY_INTEGER, .integer = 9007199254740993LL};
    ev_redis_push_result(L, &big);
    assert_true(lua_isinteger(L, -1));
    assert_true(lua_tointeger(L, -1) == 9007199254740993LL); /* exact, not a double */
    redisReply nil = {.type = REDIS_REPLY_NIL};
    ev_redis_push_result(L, &nil);
    assert_int_equal(lua_type(L, -1), LUA_TLIGHTUSERDATA);
    assert_null(lua_touserdata(L, -1));
    lua_close(L);
}

static void an_error_reply_is_nil_and_an_error_value_with_its_code(void **unused)
{
    (void)unused;
    lua_State *L = state();
    redisReply e = str(REDIS_REPLY_ERROR, "WRONGTYPE Operation against a key");
    assert_int_equal(ev_redis_push_result(L, &e), 2);
    assert_true(lua_isnil(L, -2));
    assert_int_equal(lua_getfield(L, -1, "kind"), LUA_TSTRING);
    assert_string_equal(lua_tostring(L, -1), "redis");
    lua_pop(L, 1);
    lua_getfield(L, -1, "code");
    assert_string_equal(lua_tostring(L, -1), "WRONGTYPE");
    lua_pop(L, 1);
    lua_getfield(L, -1, "message");
    assert_string_equal(lua_tostring(L, -1), "WRONGTYPE Operation against a key");
    lua_close(L);
}

static void arrays_nest_and_keep_an_element_s_error(void **unused)
{
    (void)unused;
    lua_State *L = state();
    redisReply one = {.type = REDIS_REPLY_INTEGER, .integer = 1};
    redisReply name = str(REDIS_REPLY_STRING, "x");
    redisReply *inner_el[] = {&one, &name};
    redisReply inner = {.type = REDIS_REPLY_ARRAY, .elements = 2, .element = inner_el};
    redisReply bad = str(REDIS_REPLY_ERROR, "ERR no such key");
    redisReply *outer_el[] = {&inner, &bad};
    redisReply outer = {.type = REDIS_REPLY_ARRAY, .elements = 2, .element = outer_el};
    assert_int_equal(ev_redis_push_result(L, &outer), 1); /* EXEC's answer: a value */
    assert_int_equal(lua_rawlen(L, -1), 2);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -1, 2);
    assert_string_equal(lua_tostring(L, -1), "x");
    lua_pop(L, 2);
    lua_rawgeti(L, -1, 2);
    lua_getfield(L, -1, "code");
    assert_string_equal(lua_tostring(L, -1), "ERR");
    redisReply empty = {.type = REDIS_REPLY_ARRAY, .elements = 0};
    ev_redis_push_result(L, &empty);
    assert_int_equal(lua_type(L, -1), LUA_TTABLE);
    assert_int_equal(lua_rawlen(L, -1), 0);
    lua_close(L);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(strings_statuses_integers_and_nil),
        cmocka_unit_test(an_error_reply_is_nil_and_an_error_value_with_its_code),
        cmocka_unit_test(arrays_nest_and_keep_an_element_s_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
