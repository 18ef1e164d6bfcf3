/* test_early.c - core/early.c: which requests a worker answers before Lua.
 *
 * The rules are the ones scripts/routes/bookings.lua and routes/auth.lua
 * register (sold-out bookings; logins from an address over its limit); requests are
 * built by hand (as core/http.c hands them over: lowercase header names,
 * NUL-terminated body), the token cache and the gate are the real ones. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "early.h"
#include "gate.h"
#include "token_cache.h"

#define TOKEN "Zm9vYmFyLXRva2VuLTEyMzQ1Njc4OTA"
#define SOLD_OUT "{\"type\":\"https://evently.dev/problems/sold-out\",\"status\":409}"

typedef struct {
    ev_early_t *e;
    ev_token_cache_t *tokens;
    ev_http_req_t req;
    ev_http_header_t h[8];
} fixture_t;

static fixture_t fx;

static int setup(void **state)
{
    (void)state;
    static const char *const fields[] = {"waitlist_entry_id"};
    static const char *const headers[] = {"Idempotency-Key"};
    ev_early_spec_t spec = {
        .method = "POST", .path = "/api/v1/bookings", .route = "bookings.create",
        .pool = "seats", .key_field = "event_id", .quantity_field = "quantity",
        .unless_fields = fields, .nunless_fields = 1,
        .unless_headers = headers, .nunless_headers = 1,
        .status = 409, .content_type = "application/problem+json",
        .body = SOLD_OUT, .body_len = strlen(SOLD_OUT)};
    ev_early_spec_t login = {
        .kind = EV_EARLY_WHEN_LIMITED, .method = "POST", .path = "/api/v1/auth/login",
        .route = "auth.login", .policy = "login-address", .limit = 30, .window = 60};
    ev_gate_reset();
    fx.e = ev_early_new();
    fx.tokens = ev_token_cache_new(16);
    if (!fx.e || !fx.tokens || ev_early_add(fx.e, &spec) != 0 || ev_early_add(fx.e, &login) != 0)
        return -1;
    ev_token_cache_put(fx.tokens, TOKEN, strlen(TOKEN), 5, 60.0, ev_token_cache_now());
    ev_gate_close("seats", 42, 10, 60.0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ev_early_free(fx.e);
    ev_token_cache_free(fx.tokens);
    ev_gate_reset();
    return 0;
}

/* A request: method, path, body, then header name/value pairs, NULL. */
static ev_http_req_t *request(const char *method, const char *path, const char *body, ...)
{
    va_list ap;
    memset(&fx.req, 0, sizeof fx.req);
    fx.req.method = method;
    fx.req.path = (char *)path;
    fx.req.body = (char *)body;
    fx.req.body_len = strlen(body);
    fx.req.peer = "127.0.0.1";
    fx.req.headers = fx.h;
    va_start(ap, body);
    const char *name;
    while ((name = va_arg(ap, const char *)) != NULL) {
        const char *value = va_arg(ap, const char *);
        fx.h[fx.req.nheaders++] = (ev_http_header_t){name, strlen(name), value, strlen(value)};
    }
    va_end(ap);
    return &fx.req;
}

#define AUTH "authorization", "Bearer " TOKEN
#define JSON "content-type", "application/json"
#define BODY "{\"event_id\": 42, \"quantity\": 2}"

static const ev_early_answer_t *match(ev_http_req_t *req)
{
    return ev_early_match(fx.e, fx.tokens, req, ev_token_cache_now());
}

static void answers_a_sold_out_booking_with_a_known_token(void **state)
{
    (void)state;
    const ev_early_answer_t *a = match(request("POST", "/api/v1/bookings", BODY, AUTH, JSON, NULL));
    assert_non_null(a);
    assert_int_equal(a->status, 409);
    assert_int_equal(a->nheaders, 1);
    assert_string_equal(a->headers[0].name, "Content-Type");
    assert_string_equal(a->headers[0].value, "application/problem+json");
    assert_memory_equal(a->body, SOLD_OUT, strlen(SOLD_OUT));
    assert_int_equal(a->body_len, strlen(SOLD_OUT));
    assert_string_equal(a->route, "bookings.create");
}

static void leaves_to_lua_an_event_the_gate_does_not_refuse(void **state)
{
    (void)state;
    assert_null(match(request("POST", "/api/v1/bookings", "{\"event_id\":43,\"quantity\":1}", AUTH, JSON, NULL)));
    /* more than the gate refuses (a 422 the full path answers) */
    assert_null(match(request("POST", "/api/v1/bookings", "{\"event_id\":42,\"quantity\":11}", AUTH, JSON, NULL)));
    ev_gate_open("seats", 42);
    assert_null(match(request("POST", "/api/v1/bookings", BODY, AUTH, JSON, NULL)));
}

static void leaves_to_lua_a_token_it_does_not_know_or_cannot_read(void **state)
{
    (void)state;
    const char *bad[] = {"Bearer unknown-token", "Bearer", "Bearer  ", "Basic " TOKEN,
                         "BEARER " TOKEN, "Bearer " TOKEN " x", "Bearer " TOKEN ".",
                         "Bearer" TOKEN, "Bearer " TOKEN "!"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_null(match(request("POST", "/api/v1/bookings", BODY, "authorization", bad[i], JSON, NULL)));
    assert_null(match(request("POST", "/api/v1/bookings", BODY, JSON, NULL)));
    /* two Authorization headers: Lua joins them and answers 401 */
    assert_null(match(request("POST", "/api/v1/bookings", BODY, AUTH, AUTH, JSON, NULL)));
    ev_token_cache_drop(fx.tokens, TOKEN, strlen(TOKEN)); /* revoked */
    assert_null(match(request("POST", "/api/v1/bookings", BODY, AUTH, JSON, NULL)));
}

static void reads_the_bearer_token_as_auth_lua_does(void **state)
{
    (void)state;
    const char *t;
    size_t n;
    assert_true(ev_early_bearer("bearer \t abc_-9 \r", &t, &n));
    assert_int_equal(n, 6);
    assert_memory_equal(t, "abc_-9", 6);
    assert_false(ev_early_bearer("Bearer a b", &t, &n));
    assert_false(ev_early_bearer("Bearerx abc", &t, &n));
    assert_false(ev_early_bearer(" Bearer abc", &t, &n));
    assert_false(ev_early_bearer("Bearer ab\xc3\xa9", &t, &n));
}

static void leaves_to_lua_other_routes_and_unless_headers(void **state)
{
    (void)state;
    assert_null(match(request("PUT", "/api/v1/bookings", BODY, AUTH, JSON, NULL)));
    assert_null(match(request("POST", "/api/v1/bookings/", BODY, AUTH, JSON, NULL)));
    assert_null(match(request("POST", "/api/v1/booking", BODY, AUTH, JSON, NULL)));
    assert_null(match(request("POST", "/api/v1/bookings", BODY, AUTH, JSON, "idempotency-key", "k1", NULL)));
    assert_null(match(request("POST", "/api/v1/bookings", BODY, AUTH, NULL)));
    assert_null(match(request("POST", "/api/v1/bookings", BODY, AUTH, "content-type", "text/plain", NULL)));
    assert_null(match(request("POST", "/api/v1/bookings", BODY, AUTH, JSON, JSON, NULL)));
    assert_non_null(match(request("POST", "/api/v1/bookings", BODY, AUTH, "content-type", "Application/JSON; charset=utf-8", NULL)));
}

static void answers_nothing_while_hooks_are_registered(void **state)
{
    (void)state;
    ev_early_set_hooked(fx.e, 1);
    assert_null(match(request("POST", "/api/v1/bookings", BODY, AUTH, JSON, NULL)));
    ev_early_set_hooked(fx.e, 0);
    assert_non_null(match(request("POST", "/api/v1/bookings", BODY, AUTH, JSON, NULL)));
    ev_early_clear(fx.e);
    assert_int_equal(ev_early_count(fx.e), 0);
    assert_null(match(request("POST", "/api/v1/bookings", BODY, AUTH, JSON, NULL)));
}

static int fields(const char *body, int64_t *key, int64_t *qty)
{
    return ev_early_body_fields(fx.e, 0, body, strlen(body), key, qty);
}

static void reads_the_body_fields_as_lua_would(void **state)
{
    (void)state;
    int64_t k = 0, q = 0;
    assert_true(fields(" {\"quantity\":1.0,\"other\":[1,{\"a\":null}],\"event_id\":9e0}\r\n", &k, &q));
    assert_int_equal(k, 9);
    assert_int_equal(q, 1);
    assert_true(fields("{\"event_id\":-9007199254740992,\"quantity\":3}", &k, &q));
    assert_int_equal(k, -9007199254740992LL);
}

static void leaves_to_lua_bodies_it_might_read_differently(void **state)
{
    (void)state;
    int64_t k, q;
    const char *bad[] = {
        "", "{}", "[]", "42", "null", "{\"event_id\":42}", "{\"quantity\":1}",
        "{\"event_id\":42,\"quantity\":0}", "{\"event_id\":42,\"quantity\":-1}",
        "{\"event_id\":42,\"quantity\":1.5}", "{\"event_id\":\"42\",\"quantity\":1}",
        "{\"event_id\":42,\"quantity\":true}", "{\"event_id\":9007199254740994,\"quantity\":1}",
        "{\"event_id\":42,\"quantity\":1e400}",
        "{\"event_id\":42,\"quantity\":1,\"event_id\":43}",   /* Lua keeps the last */
        "{\"event_id\":42,\"quantity\":1,\"quantity\":2}",
        "{\"event_id\":42,\"quantity\":1,\"waitlist_entry_id\":null}",
        "{\"event_id\":42,\"quantity\":1} x", "{\"event_id\":42,\"quantity\":1}{}",
        "{\"event_id\":42,\"quantity\":1",
        "\xEF\xBB\xBF{\"event_id\":42,\"quantity\":1}",
        "{\"event_id\":42,\x0b\"quantity\":1}",
        "{\"event_id\\u0000x\":42,\"event_id\":1,\"quantity\":1}",
        "{\"event_\\u0069d\":42,\"quantity\":1}",   /* any escape: left to Lua */
        "{\"event_\\u006`9d\":42,\"quantity\":1,\"event_id\":42}", /* lua-cjson refuses it */
        "{\"Event_ID\":42,\"quantity\":1}",
        /* evently.json answers these 400 or 422 (json.c); cJSON reads them */
        "{\"event_id\":042,\"quantity\":1}", "{\"event_id\":42,\"quantity\":1.}",
        "{\"event_id\":42,\"quantity\":1,\"n\":\"\xff\"}",
        "{\"event_id\":42,\"quantity\":1,\"n\":1e999}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (fields(bad[i], &k, &q))
            fail_msg("read as fields: %s", bad[i]);
    /* a NUL inside the body, then trailing bytes */
    static const char nul[] = "{\"event_id\":42,\"quantity\":1}\0junk";
    assert_false(ev_early_body_fields(fx.e, 0, nul, sizeof nul - 1, &k, &q));
    char big[EV_EARLY_MAX_BODY + 64];
    memset(big, ' ', sizeof big);
    memcpy(big, BODY, strlen(BODY));
    assert_false(ev_early_body_fields(fx.e, 0, big, sizeof big, &k, &q));
}

/* ---- logins from an address a limit refused ---- */

#define LOGIN "{\"email\":\"a@b.c\",\"password\":\"guess\"}"

static const ev_early_answer_t *login_from(const char *peer, const char *body, double now)
{
    ev_http_req_t *req = request("POST", "/api/v1/auth/login", body, JSON, NULL);
    req->peer = peer;
    return ev_early_match(fx.e, fx.tokens, req, now);
}

static const char *header(const ev_early_answer_t *a, const char *name)
{
    for (size_t i = 0; i < a->nheaders; i++)
        if (strcmp(a->headers[i].name, name) == 0)
            return a->headers[i].value;
    fail_msg("no %s header", name);
    return NULL;
}

static void answers_a_refused_address_429_as_limit_response_does(void **state)
{
    (void)state;
    double now = 1000.0;
    assert_null(login_from("203.0.113.7", LOGIN, now));
    assert_int_equal(ev_early_refused(fx.e, "login-address", "203.0.113.7", 1.2, now), 1);
    const ev_early_answer_t *a = login_from("203.0.113.7", LOGIN, now + 0.1);
    assert_non_null(a);
    assert_int_equal(a->status, 429);
    assert_int_equal(a->kind, EV_EARLY_WHEN_LIMITED);
    assert_string_equal(a->route, "auth.login");
    assert_string_equal(header(a, "Content-Type"), "application/problem+json");
    assert_string_equal(header(a, "Retry-After"), "2"); /* 1.1 s, rounded up as Lua does */
    assert_string_equal(header(a, "RateLimit-Policy"), "\"login-address\";q=30;w=60");
    assert_string_equal(header(a, "RateLimit"), "\"login-address\";r=0;t=2");
    const char *want = "{\"type\":\"https://evently.dev/problems/rate-limited\","
                       "\"title\":\"Too Many Requests\",\"status\":429,"
                       "\"detail\":\"too many requests; retry after 2 s\","
                       "\"violated-policies\":[\"login-address\"],\"retry_after\":2}";
    assert_int_equal(a->body_len, strlen(want));
    assert_memory_equal(a->body, want, strlen(want));
    /* at least 1 s, never 0 */
    assert_string_equal(header(login_from("203.0.113.7", LOGIN, now + 1.19), "Retry-After"), "1");
    /* its time over, or a refund: Lua decides again */
    assert_null(login_from("203.0.113.7", LOGIN, now + 1.2));
    ev_early_refused(fx.e, "login-address", "203.0.113.7", 10, now);
    ev_early_unrefused(fx.e, "login-address", "203.0.113.7");
    assert_null(login_from("203.0.113.7", LOGIN, now + 1));
}

static void reads_addresses_as_limit_address_does(void **state)
{
    (void)state;
    double now = 1000.0;
    assert_int_equal(ev_early_refused(fx.e, "login-address", "203.0.113.7", 5, now), 1);
    assert_non_null(login_from("::ffff:203.0.113.7", LOGIN, now));
    assert_null(login_from("203.0.113.8", LOGIN, now));
    /* an IPv6 client is its /64 */
    assert_int_equal(ev_early_refused(fx.e, "login-address", "2001:db8:0:1::/64", 5, now), 1);
    assert_non_null(login_from("2001:db8:0:1:ffff::5", LOGIN, now));
    assert_non_null(login_from("2001:db8::1:0:0:0:1", LOGIN, now));
    assert_null(login_from("2001:db8:0:2::5", LOGIN, now));
    /* keys that are no address, or other policies: nothing to remember */
    const char *not_addresses[] = {"victim@example.com", "2001:db8::1", "1.2.3", "",
                                   "1.2.3.4/64", "2001:db8:0:1::/63", "unix"};
    for (size_t i = 0; i < sizeof not_addresses / sizeof not_addresses[0]; i++)
        if (ev_early_refused(fx.e, "login-address", not_addresses[i], 5, now) != 0)
            fail_msg("remembered %s", not_addresses[i]);
    assert_int_equal(ev_early_refused(fx.e, "register-address", "198.51.100.1", 5, now), 0);
    assert_null(login_from("198.51.100.1", LOGIN, now));
    assert_null(login_from("unix", LOGIN, now));
    assert_null(login_from(NULL, LOGIN, now));
}

static void leaves_to_lua_what_the_dispatcher_answers_first(void **state)
{
    (void)state;
    double now = 1000.0;
    ev_early_refused(fx.e, "login-address", "127.0.0.1", 5, now);
    /* bodies evently.app answers 400 or 422 before the route runs */
    const char *bad[] = {"{", "{\"email\":01}", "{\"n\":\"\xff\"}", "{\"n\":1e999}", "nan"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (login_from("127.0.0.1", bad[i], now))
            fail_msg("answered early: %s", bad[i]);
    char big[EV_EARLY_MAX_BODY + 2];
    memset(big, ' ', sizeof big - 1);
    big[0] = '1';
    big[sizeof big - 1] = '\0';
    assert_null(login_from("127.0.0.1", big, now));
    /* no body, or one Lua does not decode: the route refuses it first */
    assert_non_null(login_from("127.0.0.1", "", now));
    /* (the refusal is at the test's clock, `now`, not the machine's) */
    assert_non_null(ev_early_match(fx.e, fx.tokens, request("POST", "/api/v1/auth/login", "{",
                                   "content-type", "text/plain", NULL), now));
    assert_null(ev_early_match(fx.e, fx.tokens, request("POST", "/api/v1/auth/login", "{",
                               "content-type", "text/plain", "content-type", "x/json", NULL), now));
    /* other routes, and while hooks run */
    assert_null(ev_early_match(fx.e, fx.tokens, request("POST", "/api/v1/auth/register", LOGIN, JSON, NULL), now));
    assert_null(ev_early_match(fx.e, fx.tokens, request("GET", "/api/v1/auth/login", "", NULL), now));
    ev_early_set_hooked(fx.e, 1);
    assert_null(login_from("127.0.0.1", LOGIN, now));
}

static void forgets_no_address_for_another(void **state)
{
    (void)state;
    /* many addresses share the table's slots; the last one is always known */
    char addr[32];
    for (int i = 0; i < 100000; i++) {
        snprintf(addr, sizeof addr, "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
        assert_int_equal(ev_early_refused(fx.e, "login-address", addr, 60, 1000.0), 1);
        assert_non_null(login_from(addr, LOGIN, 1000.5));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(answers_a_sold_out_booking_with_a_known_token, setup, teardown),
        cmocka_unit_test_setup_teardown(leaves_to_lua_an_event_the_gate_does_not_refuse, setup, teardown),
        cmocka_unit_test_setup_teardown(leaves_to_lua_a_token_it_does_not_know_or_cannot_read, setup, teardown),
        cmocka_unit_test_setup_teardown(reads_the_bearer_token_as_auth_lua_does, setup, teardown),
        cmocka_unit_test_setup_teardown(leaves_to_lua_other_routes_and_unless_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(answers_nothing_while_hooks_are_registered, setup, teardown),
        cmocka_unit_test_setup_teardown(reads_the_body_fields_as_lua_would, setup, teardown),
        cmocka_unit_test_setup_teardown(leaves_to_lua_bodies_it_might_read_differently, setup, teardown),
        cmocka_unit_test_setup_teardown(answers_a_refused_address_429_as_limit_response_does, setup, teardown),
        cmocka_unit_test_setup_teardown(reads_addresses_as_limit_address_does, setup, teardown),
        cmocka_unit_test_setup_teardown(leaves_to_lua_what_the_dispatcher_answers_first, setup, teardown),
        cmocka_unit_test_setup_teardown(forgets_no_address_for_another, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
