/* test_json.c - core/json.c: what is JSON, what is malformed, what is
 * well-formed but cannot be taken, and the paths that name it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "json.h"

static ev_json_status_t check(const char *s) { return ev_json_check(s, strlen(s), NULL, NULL, NULL); }

/* The reports as "path: message; path: message; " */
static char seen[1024];

static void record(void *ud, const char *path, const char *message)
{
    (void)ud;
    size_t n = strlen(seen);
    snprintf(seen + n, sizeof seen - n, "%s: %s; ", path, message);
}

static ev_json_status_t reports(const char *s)
{
    seen[0] = '\0';
    return ev_json_check(s, strlen(s), record, NULL, NULL);
}

static void accepts_rfc_8259_numbers_and_values(void **state)
{
    (void)state;
    const char *ok[] = {"0", "-0", "12", "-12", "1.5", "0.25e-3", "1E5", "1e+5", "-1.0E-2",
                        "1.7976931348623157e308", "1e-400", "true", "false", "null", "\"\"",
                        " {\"a\" : [1, {\"b\": null}], \"c\": \"\\u00e9\\ud83d\\ude00\\n\"} ",
                        "[]", "{}", "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\""};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        if (check(ok[i]) != EV_JSON_OK)
            fail_msg("refused %s", ok[i]);
    }
}

static void refuses_what_rfc_8259_does_not_spell(void **state)
{
    (void)state;
    const char *bad[] = {"0x10", "-0x10", "NaN", "Infinity", "-Infinity", "+1", "012", "-012",
                         "00", ".5", "-.5", "1.", "1e", "1e+", "-", "1.5.2", "1e5e3", "inf",
                         "[1,]", "{\"a\":1,}", "{a:1}", "'a'", "\"a\tb\"", "\"\\x41\"",
                         "\"\\u12\"", "\xef\xbb\xbf{}", "{} x", "", "   ", "[", "\"abc",
                         "{\"a\":0x10}", "[NaN]", "tru", "nulls", "1_000"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (check(bad[i]) != EV_JSON_MALFORMED)
            fail_msg("accepted %s", bad[i]);
    }
}

static void says_where_and_why_a_text_is_malformed(void **state)
{
    (void)state;
    ev_json_error_t e;
    assert_int_equal(ev_json_check("{\"a\": 012}", 10, NULL, NULL, &e), EV_JSON_MALFORMED);
    assert_int_equal(e.offset, 6);
    assert_string_equal(e.reason, "invalid number");
    assert_int_equal(ev_json_check("[1 2]", 5, NULL, NULL, &e), EV_JSON_MALFORMED);
    assert_int_equal(e.offset, 3);
}

static void limits_nesting(void **state)
{
    (void)state;
    static char deep[2 * (EV_JSON_MAX_DEPTH + 1) + 1];
    for (int i = 0; i < EV_JSON_MAX_DEPTH; i++) {
        deep[i] = '[';
        deep[EV_JSON_MAX_DEPTH + i] = ']';
    }
    assert_int_equal(check(deep), EV_JSON_OK);
    memset(deep, '[', EV_JSON_MAX_DEPTH + 1);
    memset(deep + EV_JSON_MAX_DEPTH + 1, ']', EV_JSON_MAX_DEPTH + 1);
    assert_int_equal(check(deep), EV_JSON_MALFORMED);
}

static void names_each_string_that_is_not_utf8(void **state)
{
    (void)state;
    const char s[] = "{\"email\": \"a\xff@x.io\", \"name\": \"ok\", \"queue\": {\"tags\": "
                     "[\"x\", \"\\ud800\"]}, \"p\": \"\xed\xa0\x80\", \"q\": \"\xc0\x80\"}";
    assert_int_equal(reports(s), EV_JSON_INVALID);
    assert_string_equal(seen, "email: must be valid UTF-8; "
                              "queue.tags[1]: must not contain an unpaired surrogate escape; "
                              "p: must be valid UTF-8; q: must be valid UTF-8; ");
    assert_int_equal(reports("\"\\udc00\""), EV_JSON_INVALID);
    assert_string_equal(seen, "body: must not contain an unpaired surrogate escape; ");
    assert_int_equal(reports("[\"\\ud800\\u0041\"]"), EV_JSON_INVALID);
    assert_string_equal(seen, "[0]: must not contain an unpaired surrogate escape; ");
    assert_int_equal(reports("{\"n\\u00e9\xfe\": 1}"), EV_JSON_INVALID);
    assert_string_equal(seen, "n\\u00e9\xfe: name must be valid UTF-8; ");
}

static void refuses_numbers_past_the_double_range(void **state)
{
    (void)state;
    assert_int_equal(reports("{\"quantity\": 1e400, \"b\": [-1E309, 2e308, 1e308]}"),
                     EV_JSON_INVALID);
    assert_string_equal(seen, "quantity: is out of range; b[0]: is out of range; "
                              "b[1]: is out of range; ");
    /* long numbers are judged by their exponent */
    char big[700] = "1";
    memset(big + 1, '0', 600);
    strcpy(big + 601, "e-300");
    assert_int_equal(check(big), EV_JSON_OK); /* 1e300 */
    strcpy(big + 601, "e-200");
    assert_int_equal(check(big), EV_JSON_INVALID); /* 1e400 */
    strcpy(big, "0.");
    memset(big + 2, '0', 600);
    strcpy(big + 602, "1e900");
    assert_int_equal(check(big), EV_JSON_OK); /* 1e299 */
}

static void malformed_wins_over_invalid(void **state)
{
    (void)state;
    assert_int_equal(check("{\"a\": \"\xff\", \"b\": 0x1}"), EV_JSON_MALFORMED);
}

static void utf8_reports_the_maximal_subpart(void **state)
{
    (void)state;
    assert_int_equal(ev_json_utf8("a", 1), 1);
    assert_int_equal(ev_json_utf8("\xc3\xa9", 2), 2);
    assert_int_equal(ev_json_utf8("\xf0\x9f\x98\x80", 4), 4);
    assert_int_equal(ev_json_utf8("\xff", 1), -1);
    assert_int_equal(ev_json_utf8("\xc0\x80", 2), -1);     /* overlong */
    assert_int_equal(ev_json_utf8("\xed\xa0\x80", 3), -1); /* surrogate */
    assert_int_equal(ev_json_utf8("\xe2\x82", 2), -2);     /* cut short */
    assert_int_equal(ev_json_utf8("\xf0\x9f\x98", 3), -3);
    assert_int_equal(ev_json_utf8("\xf4\x90\x80\x80", 4), -1); /* past U+10FFFF */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(accepts_rfc_8259_numbers_and_values),
        cmocka_unit_test(refuses_what_rfc_8259_does_not_spell),
        cmocka_unit_test(says_where_and_why_a_text_is_malformed),
        cmocka_unit_test(limits_nesting),
        cmocka_unit_test(names_each_string_that_is_not_utf8),
        cmocka_unit_test(refuses_numbers_past_the_double_range),
        cmocka_unit_test(malformed_wins_over_invalid),
        cmocka_unit_test(utf8_reports_the_maximal_subpart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
