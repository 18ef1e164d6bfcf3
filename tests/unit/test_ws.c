/* test_ws.c - core/ws.c: the opening handshake, and the frame path on a
 * socketpair (no HTTP, no Lua): messages in, messages out, ping, limits and
 * the close handshake, with on_close called exactly once. */
#define _DEFAULT_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ws.h"

static const char *KEY = "dGhlIHNhbXBsZSBub25jZQ=="; /* RFC 6455 1.3 */

static void handshake_matches_the_rfc_example(void **state)
{
    (void)state;
    char accept[32];
    const char *why = "unset";
    assert_int_equal(
        ev_ws_handshake("GET", "websocket", "keep-alive, Upgrade", "13", KEY, accept, &why), 0);
    assert_null(why);
    assert_string_equal(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void handshake_refuses_each_missing_or_wrong_part_with_a_reason(void **state)
{
    (void)state;
    char accept[32];
    const char *why;
    const char *cases[][5] = {
        {"POST", "websocket", "Upgrade", "13", KEY},
        {"GET", NULL, "Upgrade", "13", KEY},
        {"GET", "h2c", "Upgrade", "13", KEY},
        {"GET", "websocket", "keep-alive", "13", KEY},
        {"GET", "websocket", NULL, "13", KEY},
        {"GET", "websocket", "Upgrade", "8", KEY},
        {"GET", "websocket", "Upgrade", NULL, KEY},
        {"GET", "websocket", "Upgrade", "13", NULL},
        {"GET", "websocket", "Upgrade", "13", "short=="},
        {"GET", "websocket", "Upgrade", "13", "dGhlIHNhbXBsZSBub25jZQ!!"},
        {"GET", "websocket", "upgraded", "13", KEY},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        why = NULL;
        assert_int_equal(ev_ws_handshake(cases[i][0], cases[i][1], cases[i][2], cases[i][3],
                                         cases[i][4], accept, &why),
                         -1);
        assert_non_null(why);
    }
}

static size_t frame(uint8_t *out, int opcode, const char *payload, size_t n)
{
    static const uint8_t mask[4] = {1, 2, 3, 4};
    size_t k = 0;
    out[k++] = (uint8_t)(0x80 | opcode);
    if (n < 126) {
        out[k++] = (uint8_t)(0x80 | n);
    } else {
        out[k++] = 0x80 | 126;
        out[k++] = (uint8_t)(n >> 8);
        out[k++] = (uint8_t)n;
    }
    memcpy(out + k, mask, 4);
    k += 4;
    for (size_t i = 0; i < n; i++)
        out[k + i] = (uint8_t)(payload[i] ^ mask[i % 4]);
    return k + n;
}

static void offline_parse_delivers_masked_messages_and_stops_at_the_limit(void **state)
{
    (void)state;
    ev_ws_limits_t lim = {100, 1000, 30, 5, 0};
    uint8_t buf[512];
    size_t n = frame(buf, 1, "hello", 5);
    n += frame(buf + n, 9, "", 0);
    n += frame(buf + n, 2, "bin", 3);
    assert_int_equal(ev_ws_parse_offline(buf, n, &lim), 2);
    char big[200];
    memset(big, 'x', sizeof big);
    n = frame(buf, 1, big, sizeof big);
    assert_int_equal(ev_ws_parse_offline(buf, n, &lim),
                     0); /* over max_message: closed, not delivered */
    const uint8_t unmasked[] = {0x81, 0x02, 'h', 'i'};
    assert_int_equal(ev_ws_parse_offline(unmasked, sizeof unmasked, &lim), 0);
}

/* ---- over a socketpair ---- */

typedef struct {
    struct event_base *base;
    ev_ws_hub_t *hub;
    int messages, closes, close_code;
    char last[64];
    ev_ws_t *ws;
} seen_t;

static void on_message(ev_ws_t *ws, int opcode, const uint8_t *data, size_t len, void *arg)
{
    seen_t *s = arg;
    (void)opcode;
    s->messages++;
    snprintf(s->last, sizeof s->last, "%.*s", (int)len, (const char *)data);
    ev_ws_send(ws, 1, data, len); /* echo, from inside the callback */
}

static void on_close(ev_ws_t *ws, int code, void *arg)
{
    seen_t *s = arg;
    (void)ws;
    s->closes++;
    s->close_code = code;
    s->ws = NULL;
}

static const ev_ws_callbacks_t cb = {on_message, on_close};

static void run_a_bit(seen_t *s)
{
    struct timeval tv = {0, 50000};
    event_base_loopexit(s->base, &tv);
    event_base_dispatch(s->base);
}

static ev_ws_t *open_pair(seen_t *s, int *peer, const ev_ws_limits_t *lim, const char *early,
                          size_t early_len)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
    evbuffer_add(in, early, early_len);
    evbuffer_add(out, "HTTP/1.1 101 ok\r\n\r\n", 19);
    s->ws = ev_ws_new(s->hub, sv[0], in, out, lim, &cb, s);
    evbuffer_free(in);
    evbuffer_free(out);
    assert_non_null(s->ws);
    *peer = sv[1];
    return s->ws;
}

static void a_connection_echoes_answers_pings_and_closes_once(void **state)
{
    (void)state;
    seen_t s = {0};
    s.base = event_base_new();
    s.hub = ev_ws_hub_new(s.base);
    ev_ws_limits_t lim = {1000, 100000, 30, 5, 0};
    uint8_t buf[256];
    size_t n = frame(buf, 1, "early", 5); /* arrived with the handshake */
    int peer;
    open_pair(&s, &peer, &lim, (const char *)buf, n);
    run_a_bit(&s);
    assert_int_equal(s.messages, 1);
    assert_string_equal(s.last, "early");
    char got[256];
    ssize_t r = read(peer, got, sizeof got);
    assert_true(r >= 19 + 7);
    assert_memory_equal(got, "HTTP/1.1 101 ok\r\n\r\n", 19);
    assert_memory_equal(got + 19,
                        "\x81\x05"
                        "early",
                        7);
    n = frame(buf, 9, "p", 1);
    assert_int_equal(write(peer, buf, n), (ssize_t)n);
    run_a_bit(&s);
    r = read(peer, got, sizeof got);
    assert_int_equal(r, 3);
    assert_memory_equal(got, "\x8a\x01p", 3); /* pong, same payload */
    n = frame(buf, 8, "\x03\xe8", 2);         /* close 1000 */
    assert_int_equal(write(peer, buf, n), (ssize_t)n);
    run_a_bit(&s);
    assert_int_equal(s.closes, 1);
    assert_int_equal(s.close_code, 1000);
    r = read(peer, got, sizeof got);
    assert_int_equal(r, 4);
    assert_memory_equal(got, "\x88\x02\x03\xe8", 4); /* our close answer */
    run_a_bit(&s);
    assert_int_equal(s.closes, 1);
    close(peer);
    ev_ws_hub_free(s.hub);
    event_base_free(s.base);
}

static void a_peer_that_does_not_read_is_closed_with_1008(void **state)
{
    (void)state;
    seen_t s = {0};
    s.base = event_base_new();
    s.hub = ev_ws_hub_new(s.base);
    ev_ws_limits_t lim = {1000, 64 * 1024, 30, 0.1, 0};
    int peer;
    open_pair(&s, &peer, &lim, "", 0);
    char chunk[8192];
    memset(chunk, 'y', sizeof chunk);
    int rc = EV_WS_SEND_OK;
    for (int i = 0; i < 10000 && rc == EV_WS_SEND_OK; i++)
        rc = ev_ws_send(s.ws, 1, chunk, sizeof chunk); /* the socket buffer fills first */
    assert_int_equal(rc, EV_WS_SEND_TOO_SLOW);
    assert_int_equal(ev_ws_send(s.ws, 1, "x", 1), EV_WS_SEND_CLOSED);
    for (int i = 0; i < 10 && !s.closes; i++)
        run_a_bit(&s); /* close_timeout: the peer never answers */
    assert_int_equal(s.closes, 1);
    assert_int_equal(s.close_code, 1008);
    close(peer);
    ev_ws_hub_free(s.hub);
    event_base_free(s.base);
}

static void a_peer_that_goes_away_is_reported_1006(void **state)
{
    (void)state;
    seen_t s = {0};
    s.base = event_base_new();
    s.hub = ev_ws_hub_new(s.base);
    ev_ws_limits_t lim = {1000, 100000, 30, 5, 0};
    int peer;
    open_pair(&s, &peer, &lim, "", 0);
    close(peer);
    run_a_bit(&s);
    assert_int_equal(s.closes, 1);
    assert_int_equal(s.close_code, 1006);
    ev_ws_hub_free(s.hub);
    event_base_free(s.base);
}

static void a_silent_peer_is_dropped_after_a_ping_interval(void **state)
{
    (void)state;
    seen_t s = {0};
    s.base = event_base_new();
    s.hub = ev_ws_hub_new(s.base);
    ev_ws_limits_t lim = {1000, 100000, 0.05, 5, 0};
    int peer;
    open_pair(&s, &peer, &lim, "", 0);
    for (int i = 0; i < 10 && !s.closes; i++)
        run_a_bit(&s);
    assert_int_equal(s.closes, 1);
    assert_int_equal(s.close_code, 1006);
    close(peer);
    ev_ws_hub_free(s.hub);
    event_base_free(s.base);
}

/* A socket held past max_lifetime gets a close frame with 1001 (go away,
 * reconnect), however busy or quiet it is. */
static void a_connection_past_its_lifetime_is_closed_with_1001(void **state)
{
    (void)state;
    seen_t s = {0};
    s.base = event_base_new();
    s.hub = ev_ws_hub_new(s.base);
    ev_ws_limits_t lim = {1000, 100000, 30, 5, 0.05};
    int peer;
    open_pair(&s, &peer, &lim, "", 0);
    uint8_t buf[256];
    size_t got = 0;
    for (int i = 0; i < 20 && got < 19 + 4; i++) {
        run_a_bit(&s);
        ssize_t n = recv(peer, buf + got, sizeof buf - got, MSG_DONTWAIT);
        if (n > 0)
            got += (size_t)n;
    }
    assert_true(got >= 19 + 4);      /* the 101, then a close frame */
    assert_int_equal(buf[19], 0x88); /* FIN + close */
    assert_int_equal((buf[21] << 8) | buf[22], 1001);
    close(peer);
    ev_ws_hub_free(s.hub);
    event_base_free(s.base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(handshake_matches_the_rfc_example),
        cmocka_unit_test(handshake_refuses_each_missing_or_wrong_part_with_a_reason),
        cmocka_unit_test(offline_parse_delivers_masked_messages_and_stops_at_the_limit),
        cmocka_unit_test(a_connection_echoes_answers_pings_and_closes_once),
        cmocka_unit_test(a_peer_that_does_not_read_is_closed_with_1008),
        cmocka_unit_test(a_peer_that_goes_away_is_reported_1006),
        cmocka_unit_test(a_silent_peer_is_dropped_after_a_ping_interval),
        cmocka_unit_test(a_connection_past_its_lifetime_is_closed_with_1001),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
