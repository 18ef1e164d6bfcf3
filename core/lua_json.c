/* lua_json.c - evently.json: JSON for the HTTP layer.
 *
 *   json.encode(v) -> string | nil, err   integers exactly (cjson 2.1 rounds to
 *                                          14 digits), floats shortest round-trip,
 *                                          "/" unescaped, UTF-8 passed through,
 *                                          ill-formed UTF-8 replaced by U+FFFD
 *   json.decode(s) -> v | nil, err, errors
 *   json.null                              JSON null (cjson.null: NULL lightuserdata)
 *   json.array(t) -> t                     marks t as an array, so {} encodes as []
 *   json.empty_array                       a shared, marked empty array
 * Tables whose keys are exactly 1..n encode as arrays, others as objects
 * (non-string keys become strings). Depth is limited to 100; NaN and
 * infinities are refused, as JSON has no spelling for them.
 *
 * Input is RFC 8259 JSON and nothing else. json.decode first has
 * ev_json_check (json.c) read the text; lua-cjson (a private cjson.safe
 * instance) then builds the value of a text that passed. Failures:
 *   nil, "malformed JSON: <reason> at byte <n>"   not JSON: hex, NaN,
 *       Infinity, +1, 012, .5, 1., a BOM, trailing text, depth > 1000.
 *       evently.app answers 400 malformed-json.
 *   nil, "invalid JSON value: ...", errors        JSON whose values cannot be
 *       taken: a string or member name that is not UTF-8 (raw bytes, or an
 *       unpaired surrogate escape "\ud800"), a number past the double
 *       range (1e400, which would read as inf). errors is an array of
 *       {field = "<path>", message = "..."} (at most 20; paths as
 *       "email", "queue.opens_at", "items[0]", "body" for the whole text),
 *       ready for a 422 problem document: evently.app answers 422
 *       validation with it.
 * So every string decode returns is valid UTF-8 and every number finite.
 *
 * Output is valid UTF-8 whatever the strings hold: encode replaces each
 * ill-formed sequence (maximal subpart, as WHATWG decoders do) with U+FFFD
 * rather than refusing, so a stray byte from a database row or a client's
 * name echoed in a problem never turns an answer into a 500. Decoded input
 * never needs it; strings built in Lua from raw bytes may. */
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define MAX_DEPTH 100
#define MAX_ERRORS 20 /* invalid values listed by decode */

static const char ARRAY_KEY = 'a'; /* registry: the array marker metatable */

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static void put(lua_State *L, buf_t *b, const char *s, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            luaL_error(L, "json: out of memory");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

#define PUTS(L, b, lit) put(L, b, lit, sizeof(lit) - 1)

static void put_string(lua_State *L, buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    PUTS(L, b, "\"");
    size_t run = 0; /* bytes that need no escape, copied in one go */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[6];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (c >= 0x80) {
                int k = ev_json_utf8(s + i, n - i);
                if (k > 0) {
                    i += (size_t)k - 1; /* well formed: copied with the run */
                    continue;
                }
                put(L, b, s + run, i - run);
                PUTS(L, b, "\xEF\xBF\xBD"); /* U+FFFD for the maximal subpart */
                i += (size_t)-k - 1;
                run = i + 1;
                continue;
            }
            if (c >= 0x20 && c != 0x7f)
                continue;
            memcpy(u, "\\u00", 4);
            u[4] = hex[c >> 4];
            u[5] = hex[c & 15];
        }
        put(L, b, s + run, i - run);
        if (esc)
            put(L, b, esc, strlen(esc));
        else
            put(L, b, u, 6);
        run = i + 1;
    }
    put(L, b, s + run, n - run);
    PUTS(L, b, "\"");
}

static void put_number(lua_State *L, buf_t *b, int idx)
{
    char num[40];
    int n;
    if (lua_isinteger(L, idx)) {
        n = snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, idx));
    } else {
        double d = lua_tonumber(L, idx);
        if (!isfinite(d))
            luaL_error(L, "json: cannot encode %s", isnan(d) ? "NaN" : "infinity");
        n = snprintf(num, sizeof num, "%.15g", d);
        if (strtod(num, NULL) != d) /* shortest form that reads back the same */
            n = snprintf(num, sizeof num, "%.17g", d);
    }
    put(L, b, num, (size_t)n);
}

/* An array when marked, or when its keys are exactly 1..n (n > 0). */
static int is_array(lua_State *L, int idx, lua_Integer *len)
{
    if (lua_getmetatable(L, idx)) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &ARRAY_KEY);
        int marked = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (marked) {
            *len = (lua_Integer)lua_rawlen(L, idx);
            return 1;
        }
    }
    lua_Integer count = 0, max = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
            lua_pop(L, 1);
            return 0;
        }
        lua_Integer k = lua_tointeger(L, -1);
        if (k > max)
            max = k;
        count++;
    }
    *len = max;
    return count > 0 && count == max;
}

static void encode(lua_State *L, buf_t *b, int idx, int depth);

static void encode_table(lua_State *L, buf_t *b, int idx, int depth)
{
    if (depth > MAX_DEPTH)
        luaL_error(L, "json: nested too deep (cycle?)");
    luaL_checkstack(L, 4, "json: nested too deep");
    lua_Integer len;
    if (is_array(L, idx, &len)) {
        PUTS(L, b, "[");
        for (lua_Integer i = 1; i <= len; i++) {
            if (i > 1)
                PUTS(L, b, ",");
            lua_rawgeti(L, idx, i);
            encode(L, b, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
        }
        PUTS(L, b, "]");
        return;
    }
    PUTS(L, b, "{");
    int first = 1;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int kt = lua_type(L, -2);
        if (kt != LUA_TSTRING && kt != LUA_TNUMBER)
            luaL_error(L, "json: cannot encode a %s key", lua_typename(L, kt));
        if (!first)
            PUTS(L, b, ",");
        first = 0;
        lua_pushvalue(L, -2); /* a copy: tostring on a number key would confuse lua_next */
        size_t kn;
        const char *k = lua_tolstring(L, -1, &kn);
        put_string(L, b, k, kn);
        lua_pop(L, 1);
        PUTS(L, b, ":");
        encode(L, b, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
    }
    PUTS(L, b, "}");
}

static void encode(lua_State *L, buf_t *b, int idx, int depth)
{
    size_t n;
    const char *s;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: PUTS(L, b, "null"); break;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            PUTS(L, b, "true");
        else
            PUTS(L, b, "false");
        break;
    case LUA_TNUMBER: put_number(L, b, idx); break;
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &n);
        put_string(L, b, s, n);
        break;
    case LUA_TTABLE: encode_table(L, b, idx, depth); break;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {
            PUTS(L, b, "null");
            break;
        }
        /* fall through */
    default:
        luaL_error(L, "json: cannot encode a %s", luaL_typename(L, idx));
    }
}

/* One buffer per process, reused: encoding never yields and never nests,
 * and a request-sized answer should not cost a malloc and a collection. A
 * buffer grown past 1 MiB for a large answer is given back afterwards. */
static buf_t shared;

static int do_encode(lua_State *L)
{
    shared.len = 0;
    encode(L, &shared, 1, 0);
    lua_pushlstring(L, shared.p ? shared.p : "", shared.len);
    if (shared.cap > (1u << 20)) {
        free(shared.p);
        shared = (buf_t){0};
    }
    return 1;
}

static int json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    lua_pushcfunction(L, do_encode);
    lua_insert(L, 1);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) { /* expected failures return nil, err */
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    return 1;
}

/* cjson reads every number as a float; integral values that a double holds
 * exactly (|n| <= 2^53) become integers again, so an id read back from JSON
 * is 7, not 7.0 (which would print, concatenate and bind as "7.0"). */
static void integers(lua_State *L, int idx, int depth)
{
    if (depth > MAX_DEPTH)
        return;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
            double d = lua_tonumber(L, -1);
            if (d == floor(d) && fabs(d) <= 9007199254740992.0) {
                lua_pushvalue(L, -2);
                lua_pushinteger(L, (lua_Integer)d);
                lua_rawset(L, idx);
            }
        } else if (lua_type(L, -1) == LUA_TTABLE) {
            integers(L, lua_gettop(L), depth + 1);
        }
        lua_pop(L, 1);
    }
}

/* ev_json_check's report of an invalid value: one more {field=, message=}
 * in the errors table at index 2 (may raise a memory error: the checker
 * holds nothing). */
static void add_error(void *ud, const char *path, const char *message)
{
    lua_State *L = ud;
    lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
    if (n >= MAX_ERRORS)
        return;
    lua_createtable(L, 0, 2);
    lua_pushstring(L, path);
    lua_setfield(L, -2, "field");
    lua_pushstring(L, message);
    lua_setfield(L, -2, "message");
    lua_rawseti(L, 2, n + 1);
}

/* json.decode(s) -> v | nil, err [, errors]   [-1, +1|2|3, m]
 * Never yields; raises only on memory errors. Failures as in the header:
 * errors only for invalid values. */
static int json_decode(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    if (!lua_isstring(L, 1)) {
        luaL_pushfail(L);
        lua_pushfstring(L, "malformed JSON: a %s is not a text", luaL_typename(L, 1));
        return 2;
    }
    size_t len;
    const char *s = lua_tolstring(L, 1, &len);
    ev_json_error_t e;
    lua_newtable(L); /* 2: errors */
    switch (ev_json_check(s, len, add_error, L, &e)) {
    case EV_JSON_MALFORMED:
        luaL_pushfail(L);
        lua_pushfstring(L, "malformed JSON: %s at byte %I", e.reason, (lua_Integer)e.offset + 1);
        return 2;
    case EV_JSON_INVALID:
        luaL_pushfail(L);
        lua_rawgeti(L, 2, 1);
        lua_getfield(L, -1, "field");
        lua_pushfstring(L, "invalid JSON value: %s %s", lua_tostring(L, -1), e.reason);
        lua_replace(L, -3); /* nil, err, errors */
        lua_pop(L, 1);
        lua_pushvalue(L, 2);
        return 3;
    case EV_JSON_OK:
        break;
    }
    lua_settop(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 1, 2); /* value | nil, err */
    if (lua_type(L, 1) == LUA_TTABLE) {
        luaL_checkstack(L, MAX_DEPTH * 3, "json: nested too deep");
        integers(L, 1, 0);
    } else if (lua_type(L, 1) == LUA_TNUMBER) {
        double d = lua_tonumber(L, 1);
        if (d == floor(d) && fabs(d) <= 9007199254740992.0) {
            lua_pushinteger(L, (lua_Integer)d);
            lua_replace(L, 1);
        }
    }
    if (lua_isnil(L, 1))
        return 2; /* nil, err */
    lua_settop(L, 1);
    return 1;
}

static int json_array(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &ARRAY_KEY);
    lua_setmetatable(L, 1);
    return 1;
}

static const luaL_Reg json_funcs[] = {
    {"encode", json_encode},
    {"array", json_array},
    {NULL, NULL},
};

int luaopen_evently_json(lua_State *L)
{
    lua_newtable(L); /* the array marker */
    lua_pushliteral(L, "array");
    lua_setfield(L, -2, "__name");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &ARRAY_KEY);
    luaL_newlib(L, json_funcs);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson.safe");
    lua_call(L, 1, 1);
    /* a private instance: its settings are ours alone; the checker already
     * refused what these settings refuse, they only make sure */
    lua_getfield(L, -1, "new");
    lua_call(L, 0, 1);
    lua_getfield(L, -1, "decode_invalid_numbers");
    lua_pushboolean(L, 0);
    lua_call(L, 1, 0);
    lua_getfield(L, -1, "decode_max_depth");
    lua_pushinteger(L, EV_JSON_MAX_DEPTH + 1);
    lua_call(L, 1, 0);
    lua_getfield(L, -1, "decode");
    lua_pushcclosure(L, json_decode, 1); /* its decode as upvalue */
    lua_setfield(L, -4, "decode");
    lua_pop(L, 2);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    lua_newtable(L);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &ARRAY_KEY);
    lua_setmetatable(L, -2);
    lua_setfield(L, -2, "empty_array");
    return 1;
}
