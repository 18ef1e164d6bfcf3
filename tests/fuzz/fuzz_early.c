/* fuzz_early.c - libFuzzer harness for the early-answer matcher (core/early.c
 * over cJSON and core/token_cache.c): every request a worker with a rule
 * receives goes through it before any Lua runs.
 *
 * Input: "<authorization>\n<content-type>\n<name>:<value>\n<body>" (each part
 * may be missing). Checked for any bytes, besides what ASan and UBSan catch:
 *   - an answer only ever comes for the one known token and a closed key;
 *   - differential: whenever the matcher reads key and quantity from a body,
 *     evently.json (lua-cjson, what the Lua route reads) decodes the same
 *     bytes to an object with the same integers and no waitlist_entry_id.
 *     That is the matcher's promise: never answer where Lua would not.
 *   - the same bytes as a login from a peer named by the authorization line
 *     ("refuse when limited"): a 429 only for a peer that is a refused
 *     address (127.0.0.1, or in 2001:db8:0:1::/64), only with a body
 *     evently.json decodes when the Content-Type names JSON, and always a
 *     body that is JSON. */
#include <arpa/inet.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "early.h"
#include "gate.h"
#include "token_cache.h"

int luaopen_evently_json(lua_State *L);

#define TOKEN "known-token_0123456789"

static lua_State *L;
static ev_early_t *rules;
static ev_token_cache_t *tokens;

static void broken(const char *what)
{
    fprintf(stderr, "fuzz_early: %s\n", what);
    abort();
}

static void setup(void)
{
    static const char *const fields[] = {"waitlist_entry_id"};
    static const char *const headers[] = {"idempotency-key"};
    ev_early_spec_t spec = {
        .method = "POST", .path = "/api/v1/bookings", .route = "bookings.create",
        .pool = "seats", .key_field = "event_id", .quantity_field = "quantity",
        .unless_fields = fields, .nunless_fields = 1,
        .unless_headers = headers, .nunless_headers = 1,
        .status = 409, .content_type = "application/problem+json", .body = "{}", .body_len = 2};
    ev_early_spec_t login = {
        .kind = EV_EARLY_WHEN_LIMITED, .method = "POST", .path = "/api/v1/auth/login",
        .route = "auth.login", .policy = "login-address", .limit = 30, .window = 60};
    rules = ev_early_new();
    tokens = ev_token_cache_new(8);
    if (!rules || !tokens || ev_early_add(rules, &spec) != 0 || ev_early_add(rules, &login) != 0 ||
        ev_early_refused(rules, "login-address", "127.0.0.1", 1e6, 0.0) != 1 ||
        ev_early_refused(rules, "login-address", "2001:db8:0:1::/64", 1e6, 0.0) != 1)
        broken("setup");
    ev_token_cache_put(tokens, TOKEN, strlen(TOKEN), 1, 1e9, 0.0);
    ev_gate_close("seats", 42, 10, 1e6);
    ev_gate_close("seats", -7, 1, 1e6);
    L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "evently.json", luaopen_evently_json, 0);
    lua_setglobal(L, "json");
    const char *check =
        "local s, key, qty = ...\n"
        "local v = json.decode(s)\n"
        "assert(type(v) == 'table', 'C read fields from a body Lua does not decode to a table')\n"
        "assert(math.type(v.event_id) == 'integer' and v.event_id == key, 'event_id differs')\n"
        "assert(math.type(v.quantity) == 'integer' and v.quantity == qty, 'quantity differs')\n"
        "assert(v.waitlist_entry_id == nil, 'waitlist_entry_id missed')\n";
    if (luaL_loadstring(L, check) != LUA_OK)
        broken(lua_tostring(L, -1));
    lua_setglobal(L, "check");
    const char *decodes = "local s = ...\n"
                          "assert(json.decode(s) ~= nil, 'answered early a body Lua answers 400/422')\n";
    if (luaL_loadstring(L, decodes) != LUA_OK)
        broken(lua_tostring(L, -1));
    lua_setglobal(L, "decodes");
}

/* The next line of [*p, end) as a NUL-terminated copy (freed by the caller). */
static char *next_line(const char **p, const char *end)
{
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    const char *stop = nl ? nl : end;
    size_t n = (size_t)(stop - *p);
    char *s = malloc(n + 1);
    if (!s)
        broken("oom");
    memcpy(s, *p, n);
    s[n] = '\0';
    *p = nl ? nl + 1 : end;
    return s;
}

static void differential(const char *body, size_t len)
{
    int64_t key, qty;
    if (!ev_early_body_fields(rules, 0, body, len, &key, &qty))
        return;
    lua_getglobal(L, "check");
    lua_pushlstring(L, body, len);
    lua_pushinteger(L, key);
    lua_pushinteger(L, qty);
    if (lua_pcall(L, 3, 0, 0) != LUA_OK)
        broken(lua_tostring(L, -1));
    lua_gc(L, LUA_GCSTEP, 0);
}

static void lua_decodes(const char *body, size_t len)
{
    lua_getglobal(L, "decodes");
    lua_pushlstring(L, body, len);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK)
        broken(lua_tostring(L, -1));
    lua_gc(L, LUA_GCSTEP, 0);
}

/* Read independently of refusals.c: is peer one of the refused addresses? */
static int refused_peer(const char *peer)
{
    unsigned char a[16];
    static const unsigned char v4[4] = {127, 0, 0, 1};
    static const unsigned char mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1};
    static const unsigned char net[8] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1};
    if (inet_pton(AF_INET, peer, a) == 1)
        return memcmp(a, v4, 4) == 0;
    return inet_pton(AF_INET6, peer, a) == 1 &&
           (memcmp(a, mapped, 16) == 0 || memcmp(a, net, 8) == 0);
}

/* The same request as a login from peer. */
static void login(ev_http_req_t *req, const char *peer, const char *ctype)
{
    req->path = "/api/v1/auth/login";
    req->peer = peer;
    const ev_early_answer_t *a = ev_early_match(rules, tokens, req, 1.0);
    if (!a)
        return;
    if (a->status != 429 || !refused_peer(peer))
        broken("answered a login from an address nobody refused");
    int json = 0;
    for (const char *c = ctype; *c && !json; c++)
        json = strncasecmp(c, "json", 4) == 0;
    if (json && req->body_len > 0)
        lua_decodes(req->body, req->body_len);
    lua_decodes(a->body, a->body_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!L)
        setup();
    const char *p = (const char *)data, *end = p + size;
    char *auth = next_line(&p, end), *ctype = next_line(&p, end), *extra = next_line(&p, end);
    char *body = malloc((size_t)(end - p) + 1); /* http.c hands bodies over NUL-terminated */
    if (!body)
        broken("oom");
    memcpy(body, p, (size_t)(end - p));
    body[end - p] = '\0';
    ev_http_header_t h[3] = {{"authorization", 13, auth, strlen(auth)},
                             {"content-type", 12, ctype, strlen(ctype)}};
    size_t nh = 2;
    char *colon = strchr(extra, ':');
    if (colon) {
        *colon = '\0';
        h[nh++] = (ev_http_header_t){extra, strlen(extra), colon + 1, strlen(colon + 1)};
    }
    ev_http_req_t req = {.method = "POST", .path = "/api/v1/bookings", .headers = h,
                         .nheaders = nh, .body = body, .body_len = (size_t)(end - p)};
    const ev_early_answer_t *a = ev_early_match(rules, tokens, &req, 1.0);
    if (a) {
        const char *t;
        size_t n;
        if (!ev_early_bearer(auth, &t, &n) || n != strlen(TOKEN) || memcmp(t, TOKEN, n) != 0)
            broken("answered for a token it does not know");
    }
    differential(body, req.body_len);
    login(&req, auth, ctype);
    free(auth);
    free(ctype);
    free(extra);
    free(body);
    return 0;
}
