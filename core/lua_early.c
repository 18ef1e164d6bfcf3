/* lua_early.c - evently.early: answers a worker gives before any Lua runs,
 * and the token cache they rely on (engines: core/early.c,
 * core/token_cache.c, core/gate.c).
 *
 *   early.refuse_when_closed{ method=, path=, route=, pool=, key_field=,
 *       quantity_field=, unless_fields={...}?, unless_headers={...}?,
 *       status=, content_type=, body= }                       [-0, +0, v]
 *       Adds a rule (see core/early.h for exactly what it answers). Bad
 *       arguments raise (a script bug). Call it while the app loads: rules
 *       live as long as the worker, and a reload (new workers, scripts loaded
 *       afresh) replaces them all.
 *   early.refuse_when_limited{ method=, path=, route=, policy=, limit=,
 *       window= }                                              [-0, +0, v]
 *       Adds a rule answering 429 to addresses policy refused (core/early.h).
 *       evently.limit calls it (limit.answer_early) and feeds it:
 *   early.refused(policy, address, retry) -> n                 [-0, +1, v]
 *       policy refused address (limit.address form) for retry seconds; n
 *       rules took it (0 when address is no address, e.g. an email).
 *   early.unrefused(policy, address)   a refund: ask Lua again [-0, +0, v]
 *   early.clear()        drops every rule                   [-0, +0, -]
 *   early.count() -> n   rules registered                   [-0, +1, -]
 *   early.hooked(on)     request/response hooks exist: answer nothing early
 *                        (evently.hooks calls it)          [-0, +0, -]
 *   early.remember_token(token, user_id, ttl)                [-0, +1, v]
 *       after Lua validated token: C may treat it as authenticated for ttl
 *       seconds. Returns true, or fail when the cache is full (harmless: the
 *       request just goes the Lua way).
 *   early.forget_token(token)   revoked: forget it now       [-0, +0, v]
 * The sold-out gate itself (core/gate.c) is closed by the inventory engine
 * when a batch leaves a pool empty, and opened by evently.inventory's
 * pool:reopen().
 * The engines hang off the worker's runtime (ev_runtime_t.early, .tokens),
 * created on first use and freed with the runtime. */
#include <ctype.h>
#include <lauxlib.h>
#include <stdint.h>
#include <string.h>

#include "early.h"
#include "gate.h"
#include "runtime.h"
#include "token_cache.h"

#define MAX_LIST 16
#define MAX_TOKENS 65536

static ev_early_t *early_of(lua_State *L)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    if (!rt->early && !(rt->early = ev_early_new()))
        luaL_error(L, "early: out of memory");
    return rt->early;
}

static ev_token_cache_t *tokens_of(lua_State *L)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    if (!rt->tokens && !(rt->tokens = ev_token_cache_new(MAX_TOKENS)))
        luaL_error(L, "early: cannot create the token cache");
    return rt->tokens;
}

/* spec[name] as a non-empty string; raises naming the field. */
static const char *spec_string(lua_State *L, const char *name, size_t *len)
{
    lua_getfield(L, 1, name);
    size_t n = 0;
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
    if (!s || n == 0)
        luaL_error(L, "early rule: %s must be a non-empty string", name);
    lua_pop(L, 1); /* still referenced by the spec table: s stays valid */
    if (len)
        *len = n;
    return s;
}

/* spec[name] as a list of at most MAX_LIST strings (absent: empty). */
static size_t spec_list(lua_State *L, const char *name, const char *out[MAX_LIST])
{
    size_t n = 0;
    if (lua_getfield(L, 1, name) != LUA_TNIL) {
        if (!lua_istable(L, -1))
            luaL_error(L, "early.refuse_when_closed: %s must be a list of strings", name);
        for (lua_Integer i = 1; lua_rawgeti(L, -1, i) != LUA_TNIL; i++) {
            if (lua_type(L, -1) != LUA_TSTRING || n == MAX_LIST)
                luaL_error(L, "early.refuse_when_closed: %s must be at most %d strings", name,
                           MAX_LIST);
            out[n++] = lua_tostring(L, -1);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return n;
}

static int l_refuse_when_closed(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ev_early_t *e = early_of(L);
    ev_early_spec_t s = {0};
    const char *fields[MAX_LIST], *headers[MAX_LIST];
    s.method = spec_string(L, "method", NULL);
    s.path = spec_string(L, "path", NULL);
    s.route = spec_string(L, "route", NULL);
    s.pool = spec_string(L, "pool", NULL);
    s.key_field = spec_string(L, "key_field", NULL);
    s.quantity_field = spec_string(L, "quantity_field", NULL);
    s.content_type = spec_string(L, "content_type", NULL);
    s.body = spec_string(L, "body", &s.body_len);
    s.nunless_fields = spec_list(L, "unless_fields", fields);
    s.nunless_headers = spec_list(L, "unless_headers", headers);
    s.unless_fields = fields;
    s.unless_headers = headers;
    lua_getfield(L, 1, "status");
    int isnum = 0;
    lua_Integer status = lua_tointegerx(L, -1, &isnum);
    lua_pop(L, 1);
    if (!isnum || status < 200 || status > 599)
        return luaL_error(L, "early.refuse_when_closed: status must be an integer in 200..599");
    s.status = (int)status;
    if (strpbrk(s.content_type, "\r\n"))
        return luaL_error(L, "early.refuse_when_closed: content_type must be one line");
    if (ev_early_add(e, &s) != 0)
        return luaL_error(L, "early: out of memory");
    return 0;
}

static int l_refuse_when_limited(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ev_early_t *e = early_of(L);
    ev_early_spec_t s = {.kind = EV_EARLY_WHEN_LIMITED};
    s.method = spec_string(L, "method", NULL);
    s.path = spec_string(L, "path", NULL);
    s.route = spec_string(L, "route", NULL);
    size_t plen;
    s.policy = spec_string(L, "policy", &plen);
    for (const char *p = s.policy; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-')
            return luaL_error(L, "early.refuse_when_limited: policy must match [%%w_-]+");
    if (plen > 64)
        return luaL_error(L, "early.refuse_when_limited: policy is at most 64 characters");
    lua_getfield(L, 1, "limit");
    lua_getfield(L, 1, "window");
    int okl = 0, okw = 0;
    lua_Integer limit = lua_tointegerx(L, -2, &okl), window = lua_tointegerx(L, -1, &okw);
    lua_pop(L, 2);
    if (!okl || !okw || limit < 1 || window < 1 || limit > INT32_MAX || window > INT32_MAX)
        return luaL_error(L, "early.refuse_when_limited: limit and window must be integers >= 1");
    s.limit = (int)limit;
    s.window = (int)window;
    if (ev_early_add(e, &s) != 0)
        return luaL_error(L, "early: out of memory");
    return 0;
}

static int l_refused(lua_State *L)
{
    const char *policy = luaL_checkstring(L, 1);
    const char *address = luaL_checkstring(L, 2);
    lua_Number retry = luaL_checknumber(L, 3);
    luaL_argcheck(L, retry >= 0 && retry <= 86400 * 366, 3, "retry must be in [0, 1 year]");
    ev_runtime_t *rt = ev_runtime_get(L);
    int n = rt->early ? ev_early_refused(rt->early, policy, address, retry,
                                         ev_token_cache_now())
                      : 0;
    lua_pushinteger(L, n);
    return 1;
}

static int l_unrefused(lua_State *L)
{
    const char *policy = luaL_checkstring(L, 1);
    const char *address = luaL_checkstring(L, 2);
    ev_runtime_t *rt = ev_runtime_get(L);
    if (rt->early)
        ev_early_unrefused(rt->early, policy, address);
    return 0;
}

static int l_clear(lua_State *L)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    if (rt->early)
        ev_early_clear(rt->early);
    return 0;
}

static int l_count(lua_State *L)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    lua_pushinteger(L, rt->early ? (lua_Integer)ev_early_count(rt->early) : 0);
    return 1;
}

static int l_hooked(lua_State *L)
{
    ev_early_set_hooked(early_of(L), lua_toboolean(L, 1));
    return 0;
}

static int l_remember_token(lua_State *L)
{
    size_t len;
    const char *token = luaL_checklstring(L, 1, &len);
    lua_Integer user = luaL_checkinteger(L, 2);
    lua_Number ttl = luaL_checknumber(L, 3);
    luaL_argcheck(L, ttl > 0 && ttl <= 3600, 3, "ttl must be in (0, 3600] seconds");
    if (ev_token_cache_put(tokens_of(L), token, len, user, ttl, ev_token_cache_now()) != 0) {
        luaL_pushfail(L);
        lua_pushliteral(L, "full");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_forget_token(lua_State *L)
{
    size_t len;
    const char *token = luaL_checklstring(L, 1, &len);
    ev_runtime_t *rt = ev_runtime_get(L);
    if (rt->tokens)
        ev_token_cache_drop(rt->tokens, token, len);
    return 0;
}

static const luaL_Reg early_funcs[] = {
    {"refuse_when_closed", l_refuse_when_closed},
    {"refuse_when_limited", l_refuse_when_limited},
    {"refused", l_refused},
    {"unrefused", l_unrefused},
    {"clear", l_clear},
    {"count", l_count},
    {"hooked", l_hooked},
    {"remember_token", l_remember_token},
    {"forget_token", l_forget_token},
    {NULL, NULL},
};

int luaopen_evently_early(lua_State *L)
{
    luaL_newlib(L, early_funcs);
    return 1;
}
