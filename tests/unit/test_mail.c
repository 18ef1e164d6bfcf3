/* test_mail.c - core/mail.c without a server: the message ev_mail_build
 * makes (headers, RFC 2047 words, quoted-printable body) and what it refuses
 * (header injection, malformed addresses, headers it owns); and a send to a
 * port where nothing listens, through the lanes, answered on the loop. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mail.h"

static char from[256], to[256], err[400];

static char *build(const char *f, const char *t, const char *subject, const char *text,
                   const char *const *headers, int nheaders)
{
    ev_mail_msg_t m = {f, t, subject, text, strlen(text), headers, nheaders};
    char *out = NULL;
    size_t len = 0;
    err[0] = '\0';
    if (ev_mail_build(&m, &out, &len, from, to, sizeof from, err, sizeof err) != 0)
        return NULL;
    assert_int_equal(strlen(out), len);
    return out;
}

static const char *body_of(const char *msg) { return strstr(msg, "\r\n\r\n") + 4; }

static void test_headers_and_envelope(void **state)
{
    (void)state;
    char *m = build("Evently <no-reply@evently.local>", "ann@example.com", "Hello", "Hi\n", NULL, 0);
    assert_non_null(m);
    assert_string_equal(from, "no-reply@evently.local");
    assert_string_equal(to, "ann@example.com");
    assert_non_null(strstr(m, "\r\nFrom: \"Evently\" <no-reply@evently.local>\r\n"));
    assert_non_null(strstr(m, "\r\nTo: <ann@example.com>\r\n"));
    assert_non_null(strstr(m, "\r\nSubject: Hello\r\n"));
    assert_non_null(strstr(m, "\r\nMessage-ID: <"));
    assert_non_null(strstr(m, "@evently.local>\r\n"));
    assert_non_null(strstr(m, "\r\nMIME-Version: 1.0\r\n"));
    assert_non_null(strstr(m, "Content-Transfer-Encoding: quoted-printable\r\n\r\n"));
    assert_int_equal(strncmp(m, "Date: ", 6), 0);
    assert_string_equal(body_of(m), "Hi\r\n");
    free(m);
}

static void test_quoted_printable_body(void **state)
{
    (void)state;
    char text[200];
    memset(text, 'a', 100);
    strcpy(text + 100, "\nend with space \r\n=caf\xc3\xa9\ttab\t");
    char *m = build("a@b.c", "d@e.f", "s", text, NULL, 0);
    assert_non_null(m);
    const char *b = body_of(m);
    /* 100 a's: 75 then a soft break, then 25 */
    assert_int_equal(strncmp(b + 75, "=\r\naaaaaaaaaaaaaaaaaaaaaaaaa\r\n", 30), 0);
    assert_non_null(strstr(b, "\r\nend with space=20\r\n"));
    assert_non_null(strstr(b, "\r\n=3Dcaf=C3=A9\ttab=09\r\n"));
    for (const char *l = b; *l; l = strstr(l, "\r\n") + 2)
        assert_true(strstr(l, "\r\n") - l <= 76);
    free(m);
}

static void test_non_ascii_subject_is_encoded_and_folded(void **state)
{
    (void)state;
    char subject[400] = "";
    for (int i = 0; i < 20; i++)
        strcat(subject, "K\xc3\xb6ln \xe2\x80\x94 "); /* "Köln — " */
    char *m = build("a@b.c", "Zo\xc3\xab <zoe@example.com>", subject, "x", NULL, 0);
    assert_non_null(m);
    assert_non_null(strstr(m, "\r\nSubject: =?UTF-8?B?"));
    assert_non_null(strstr(m, "?=\r\n =?UTF-8?B?")); /* folded */
    assert_non_null(strstr(m, "\r\nTo: =?UTF-8?B?Wm/Dqw==?= <zoe@example.com>\r\n"));
    const char *end = strstr(m, "\r\n\r\n");
    for (const char *p = m; p < end; p++)
        assert_true((unsigned char)*p < 0x80); /* headers are 7-bit */
    for (const char *l = m; l < end; l = strstr(l, "\r\n") + 2)
        assert_true(strstr(l, "\r\n") - l <= 78);
    free(m);
}

static void test_refuses_header_injection(void **state)
{
    (void)state;
    const char *extra[] = {"X-Note", "a\r\nBcc: evil@example.com"};
    assert_null(build("a@b.c", "d@e.f", "Hi\r\nBcc: evil@example.com", "x", NULL, 0));
    assert_string_equal(err, "invalid: subject contains CR, LF or another control character");
    assert_null(build("a@b.c", "d@e.f", "Hi\nBcc: x@y.z", "x", NULL, 0));
    assert_null(build("a@b.c", "d@e.f\r\nRCPT TO:<x@y.z>", "Hi", "x", NULL, 0));
    assert_string_equal(err, "invalid: to contains CR, LF or another control character");
    assert_null(build("Evil\n <a@b.c>", "d@e.f", "Hi", "x", NULL, 0));
    assert_string_equal(err, "invalid: from contains CR, LF or another control character");
    assert_null(build("a@b.c", "d@e.f", "Hi", "x", extra, 1));
    assert_non_null(strstr(err, "'X-Note' contains CR, LF"));
}

static void test_refuses_bad_addresses_and_owned_headers(void **state)
{
    (void)state;
    const char *bad[] = {"", "ann", "ann@", "@example.com", "a b@example.com", "a@b@c",
                         "Ann <ann@example.com", "Ann <ann@example.com> x", "<>"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_null(build("a@b.c", bad[i], "s", "x", NULL, 0));
        assert_int_equal(strncmp(err, "invalid: to", 11), 0);
    }
    const char *owned[] = {"content-type", "text/html"};
    assert_null(build("a@b.c", "d@e.f", "s", "x", owned, 1));
    assert_string_equal(err, "invalid: header 'content-type' is set by evently.mail");
    const char *badname[] = {"X Bad", "v"};
    assert_null(build("a@b.c", "d@e.f", "s", "x", badname, 1));
    const char *ok[] = {"Reply-To", "help@example.com"};
    char *m = build("a@b.c", "d@e.f", "s", "x", ok, 1);
    assert_non_null(strstr(m, "\r\nReply-To: help@example.com\r\n"));
    free(m);
}

typedef struct {
    int calls, ok;
    char error[400];
    struct event_base *base;
} seen_t;

static void on_result(const ev_mail_result_t *res, void *arg)
{
    seen_t *s = arg;
    s->calls++;
    s->ok = res->ok;
    snprintf(s->error, sizeof s->error, "%s", res->error ? res->error : "");
    event_base_loopbreak(s->base);
}

static void test_send_to_a_closed_port_is_unavailable(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    ev_mail_t *m = ev_mail_new(base);
    assert_non_null(m);
    seen_t s = {0, 0, "", base};
    ev_mail_msg_t msg = {"a@b.c", "d@e.f", "s", "x", 1, NULL, 0};
    ev_mail_opts_t opts = {"smtp://127.0.0.1:1", 5000, 2000};
    assert_non_null(ev_mail_send(m, &opts, &msg, on_result, &s, err, sizeof err));
    /* and one cancelled at once: its callback never runs, nothing leaks */
    seen_t never = {0, 0, "", base};
    ev_mail_cancel(ev_mail_send(m, &opts, &msg, on_result, &never, err, sizeof err));
    assert_int_equal(ev_mail_pending(m), 1);
    event_base_dispatch(base);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.ok, 0);
    assert_int_equal(strncmp(s.error, "unavailable: ", 13), 0);
    assert_int_equal(never.calls, 0);
    ev_mail_free(m);
    event_base_free(base);
}

/* A relay that never answers cannot make a worker keep every mail: past
 * EV_MAIL_MAX_PENDING in flight, a send is refused at once with "busy". */
static void test_sends_past_the_bound_are_refused_busy(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    ev_mail_t *m = ev_mail_new(base);
    assert_non_null(m);
    static seen_t s[EV_MAIL_MAX_PENDING];
    ev_mail_msg_t msg = {"a@b.c", "d@e.f", "s", "x", 1, NULL, 0};
    ev_mail_opts_t opts = {"smtp://127.0.0.1:1", 5000, 2000};
    static ev_mail_req_t *reqs[EV_MAIL_MAX_PENDING];
    for (int i = 0; i < EV_MAIL_MAX_PENDING; i++) {
        s[i] = (seen_t){0, 0, "", base};
        reqs[i] = ev_mail_send(m, &opts, &msg, on_result, &s[i], err, sizeof err);
        assert_non_null(reqs[i]);
    }
    seen_t over = {0, 0, "", base};
    assert_null(ev_mail_send(m, &opts, &msg, on_result, &over, err, sizeof err));
    assert_int_equal(strncmp(err, "busy: ", 6), 0);
    ev_mail_cancel(reqs[0]); /* room again */
    ev_mail_cancel(ev_mail_send(m, &opts, &msg, on_result, &over, err, sizeof err));
    for (int i = 1; i < EV_MAIL_MAX_PENDING; i++)
        ev_mail_cancel(reqs[i]);
    ev_mail_free(m);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_headers_and_envelope),
        cmocka_unit_test(test_quoted_printable_body),
        cmocka_unit_test(test_non_ascii_subject_is_encoded_and_folded),
        cmocka_unit_test(test_refuses_header_injection),
        cmocka_unit_test(test_refuses_bad_addresses_and_owned_headers),
        cmocka_unit_test(test_send_to_a_closed_port_is_unavailable),
        cmocka_unit_test(test_sends_past_the_bound_are_refused_busy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
