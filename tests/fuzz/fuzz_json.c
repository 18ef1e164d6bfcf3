/* fuzz_json.c - libFuzzer harness for evently.json's decoder (core/lua_json.c
 * over lua-cjson): every request body and every Kafka message value goes
 * through it.
 *
 * For any bytes: decode returns a value or nil and an error (never raises,
 * never crashes); a decoded value encodes again or refuses with nil, err;
 * and what encodes decodes again to a value that encodes to the same text
 * (integers stay integers both ways). ASan and UBSan catch the rest. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int luaopen_evently_json(lua_State *L);

static lua_State *L;

static void broken(const char *what)
{
    fprintf(stderr, "fuzz_json: %s\n", what);
    abort();
}

static int setup(void)
{
    L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "evently.json", luaopen_evently_json, 0);
    lua_setglobal(L, "json");
    /* encode(decode(s)) == encode(decode(encode(decode(s)))) when it encodes */
    const char *check =
        "local s = ...\n"
        "local v, err = json.decode(s)\n"
        "if v == nil then assert(type(err) == 'string', 'decode: no error text') return end\n"
        "local text, eerr = json.encode(v)\n"
        "if not text then assert(type(eerr) == 'string', 'encode: no error text') return end\n"
        "local again = assert(json.decode(text), 'own output does not decode')\n"
        "assert(json.encode(again) == text, 'encode/decode is not stable')\n";
    if (luaL_loadstring(L, check) != LUA_OK)
        broken(lua_tostring(L, -1));
    lua_setglobal(L, "check");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!L)
        setup();
    lua_getglobal(L, "check");
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK)
        broken(lua_tostring(L, -1));
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
