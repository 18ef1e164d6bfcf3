/* test_early.c - core/early.c: which requests a worker answers before Lua.
 *
 * The rule is the one scripts/routes/bookings.lua registers; requests are
 * built by hand (as core/http.c hands them over: lowercase header names,
 * NUL-terminated body), the token cache and the gate are the real ones. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

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
    ev_gate_reset();
    fx.e = ev_early_new();
    fx.tokens = ev_token_cache_new(16);
    if (!fx.e || !fx.tokens || ev_early_add(fx.e, &spec) != 0)
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
    assert_string_equal(a->content_type, "application/problem+json");
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
