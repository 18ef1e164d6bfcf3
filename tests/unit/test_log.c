/* test_log.c - core/log.c: repeats are rate-limited per call site, and a
 * message cannot forge a line. stderr is pointed at a temporary file. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static char path[] = "/tmp/evently-test-log-XXXXXX";

static int capture(void **state)
{
    (void)state;
    int fd = mkstemp(path);
    if (fd < 0 || dup2(fd, STDERR_FILENO) < 0)
        return -1;
    close(fd);
    return 0;
}

static int release(void **state)
{
    (void)state;
    unlink(path);
    return 0;
}

static void rewind_capture(void)
{
    if (ftruncate(STDERR_FILENO, 0) != 0 || lseek(STDERR_FILENO, 0, SEEK_SET) != 0)
        fail_msg("cannot rewind the captured stderr");
}

static char *captured(void)
{
    FILE *f = fopen(path, "r");
    static char buf[1 << 20];
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    buf[n] = '\0';
    if (f)
        fclose(f);
    return buf;
}

static int count(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static void a_flood_from_one_site_writes_a_few_lines_a_second(void **state)
{
    (void)state;
    rewind_capture();
    for (int i = 0; i < 100000; i++)
        ev_warn("accept failed: flood %d", i);
    ev_warn("another site still speaks");
    char *text = captured();
    int flood = count(text, "accept failed: flood");
    assert_true(flood >= 1);
    assert_true(flood <= 20); /* ten a second, at most two seconds touched */
    assert_int_equal(count(text, "another site still speaks"), 1);
}

static void the_next_line_after_a_pause_says_how_many_were_left_out(void **state)
{
    (void)state;
    rewind_capture();
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 50; i++)
            ev_log_site(EV_LOG_WARN, 4242, "same site %d", i);
        if (round == 0)
            sleep(1);
    }
    char *text = captured();
    assert_non_null(strstr(text, "more like this left out)"));
}

static void control_characters_cannot_forge_a_line(void **state)
{
    (void)state;
    rewind_capture();
    ev_warn("user said %s", "hi\n2026-01-01T00:00:00.000Z error [1] forged\r");
    char *text = captured();
    assert_int_equal(count(text, "\n"), 1);
    assert_non_null(strstr(text, "hi 2026-01-01"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_flood_from_one_site_writes_a_few_lines_a_second),
        cmocka_unit_test(the_next_line_after_a_pause_says_how_many_were_left_out),
        cmocka_unit_test(control_characters_cannot_forge_a_line),
    };
    return cmocka_run_group_tests(tests, capture, release);
}
