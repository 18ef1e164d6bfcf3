/* fuzz_json.c - libFuzzer harness for evently.json's decoder (core/lua_json.c
 * over lua-cjson): every request body and every Kafka message value goes
 * through it.
 *
 * For any bytes: decode returns a value or nil and an error (never raises,
 * never crashes); a decoded value encodes again or refuses with nil, err;
 * and what encodes decodes again to the same value (deep equality: object
 * keys come out in table order, so texts may differ; integers stay
 * integers both ways). ASan and UBSan catch the rest. Also:
 *   - decode agrees with ev_json_check (json.c), which it runs first: a
 *     value exactly when the check passes (lua-cjson reads every text the
 *     check passes), nil, err, errors ({field, message}, 1..20 of them)
 *     exactly when it finds invalid values, nil, err alone when malformed;
 *   - every string decode returns (keys too) is UTF-8, every number finite;
 *   - encode of the raw bytes as a Lua string is UTF-8 and decodes again. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

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
        "local function clean(v, depth)\n"
        "  if type(v) == 'string' then return utf8.len(v) ~= nil end\n"
        "  if type(v) == 'number' then return v == v and v > -math.huge and v < math.huge end\n"
        "  if type(v) ~= 'table' or depth > 1100 then return true end\n"
        "  for k, x in pairs(v) do\n"
        "    if not clean(k, depth + 1) or not clean(x, depth + 1) then return false end\n"
        "  end\n"
        "  return true\n"
        "end\n"
        "local s, status = ...\n"
        "local raw = assert(json.encode(s))\n"
        "assert(utf8.len(raw) and type(json.decode(raw)) == 'string', 'encode wrote bad UTF-8')\n"
        "local v, err, errors = json.decode(s)\n"
        "assert((v ~= nil) == (status == 0), 'decode and ev_json_check disagree: ' .. tostring(err))\n"
        "assert((errors ~= nil) == (status == 2), 'errors only for invalid values')\n"
        "if errors then\n"
        "  assert(#errors >= 1 and #errors <= 20, 'errors: 1..20')\n"
        "  for _, e in ipairs(errors) do\n"
        "    assert(type(e.field) == 'string' and type(e.message) == 'string', 'errors: field, message')\n"
        "  end\n"
        "end\n"
        "if v == nil then assert(type(err) == 'string', 'decode: no error text') return end\n"
        "assert(clean(v, 0), 'decode let through bad UTF-8 or a non-finite number')\n"
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
    lua_pushinteger(L, ev_json_check((const char *)data, size, NULL, NULL, NULL));
    if (lua_pcall(L, 2, 0, 0) != LUA_OK)
        broken(lua_tostring(L, -1));
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
