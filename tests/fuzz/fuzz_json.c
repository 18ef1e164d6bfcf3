/* fuzz_json.c - libFuzzer harness for evently.json's decoder (core/lua_json.c
 * over lua-cjson): every request body and every Kafka message value goes
 * through it.
 *
 * For any bytes: decode returns a value or nil and an error (never raises,
 * never crashes); a decoded value encodes again or refuses with nil, err;
 * and what encodes decodes again to the same value (deep equality: object
 * keys come out in table order, so texts may differ; integers stay
 * integers both ways). ASan and UBSan catch the rest. */
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
    /* decode(encode(decode(s))) equals decode(s) when it encodes */
    const char *check =
        "local function same(a, b)\n"
        "  if type(a) ~= type(b) then return false end\n"
        "  if type(a) ~= 'table' then\n"
        "    return (a == b and math.type(a) == math.type(b)) or (a ~= a and b ~= b)\n"
        "  end\n"
        "  for k, v in pairs(a) do if not same(v, b[k]) then return false end end\n"
        "  for k in pairs(b) do if a[k] == nil then return false end end\n"
        "  return true\n"
        "end\n"
        "local s = ...\n"
        "local v, err = json.decode(s)\n"
        "if v == nil then assert(type(err) == 'string', 'decode: no error text') return end\n"
        "local text, eerr = json.encode(v)\n"
        "if not text then assert(type(eerr) == 'string', 'encode: no error text') return end\n"
        "local again = json.decode(text)\n"
        "assert(again ~= nil, 'own output does not decode: ' .. text)\n"
        "local text2 = assert(json.encode(again))\n"
        "assert(same(json.decode(text2), again), 'encode/decode changes the value: ' .. text)\n";
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
