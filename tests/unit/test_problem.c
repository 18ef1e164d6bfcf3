/* test_problem.c - core/problem.c: the problem documents C writes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "problem.h"

static void writes_type_title_and_status(void **state)
{
    (void)state;
    char buf[256];
    int n = ev_problem_body(buf, sizeof buf, 408, "Request Timeout", "request-timeout", NULL, NULL);
    const char *want = "{\"type\":\"https://evently.dev/problems/request-timeout\","
                       "\"title\":\"Request Timeout\",\"status\":408}";
    assert_string_equal(buf, want);
    assert_int_equal(n, (int)strlen(want));
}

static void escapes_the_detail_and_appends_members(void **state)
{
    (void)state;
    char buf[256];
    int n = ev_problem_body(buf, sizeof buf, 503, "Service Unavailable", "unavailable",
                            "a \"quoted\"\nline", "\"request_id\":\"ab12\"");
    assert_true(n > 0);
    assert_string_equal(buf, "{\"type\":\"https://evently.dev/problems/unavailable\","
                             "\"title\":\"Service Unavailable\",\"status\":503,"
                             "\"detail\":\"a \\\"quoted\\\"\\u000aline\",\"request_id\":\"ab12\"}");
}

static void refuses_what_does_not_fit(void **state)
{
    (void)state;
    char buf[40];
    assert_int_equal(
        ev_problem_body(buf, sizeof buf, 500, "Internal Server Error", "internal", NULL, NULL), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(writes_type_title_and_status),
        cmocka_unit_test(escapes_the_detail_and_appends_members),
        cmocka_unit_test(refuses_what_does_not_fit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
