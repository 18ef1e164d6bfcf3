/* test_redis_url.c - core/redis_url.c: a Redis URL taken apart, and errors
 * that never repeat a password. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "redis_url.h"

static void takes_host_port_and_database(void **state)
{
    (void)state;
    ev_redis_url_t u;
    char err[128];
    assert_int_equal(ev_redis_url_parse("redis://cache.internal:6380/3", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "cache.internal");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 3);
    assert_null(u.user);
    assert_null(u.pass);
    assert_null(u.path);
    ev_redis_url_free(&u);
    assert_int_equal(ev_redis_url_parse("redis://[::1]", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);
    ev_redis_url_free(&u);
}

static void takes_a_password_with_or_without_a_user(void **state)
{
    (void)state;
    ev_redis_url_t u;
    char err[128];
    assert_int_equal(ev_redis_url_parse("redis://:s3cr:et@127.0.0.1:7000", &u, err, sizeof err), 0);
    assert_null(u.user);
    assert_string_equal(u.pass, "s3cr:et");
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 7000);
    ev_redis_url_free(&u);
    assert_int_equal(ev_redis_url_parse("redis://app:pw@h", &u, err, sizeof err), 0);
    assert_string_equal(u.user, "app");
    assert_string_equal(u.pass, "pw");
    ev_redis_url_free(&u);
    assert_int_equal(ev_redis_url_parse("redis://onlypass@h", &u, err, sizeof err), 0);
    assert_null(u.user);
    assert_string_equal(u.pass, "onlypass");
    ev_redis_url_free(&u);
}

static void takes_a_unix_socket(void **state)
{
    (void)state;
    ev_redis_url_t u;
    char err[128];
    assert_int_equal(ev_redis_url_parse("unix:/var/run/redis.sock", &u, err, sizeof err), 0);
    assert_string_equal(u.path, "/var/run/redis.sock");
    assert_null(u.host);
    assert_null(u.pass);
    ev_redis_url_free(&u);
    assert_int_equal(ev_redis_url_parse("unix:0a1b@c@/run/e/redis.sock", &u, err, sizeof err), 0);
    assert_string_equal(u.pass, "0a1b@c");
    assert_string_equal(u.path, "/run/e/redis.sock");
    ev_redis_url_free(&u);
}

static void refuses_bad_urls_without_repeating_them(void **state)
{
    (void)state;
    const char *bad[] = {"http://x",
                         "unix:",
                         "unix:hunter2@",
                         "unix:relative/redis.sock",
                         "redis://:hunter2@",
                         "redis://:hunter2@h:0",
                         "redis://:hunter2@h:99999",
                         "redis://:hunter2@h:12ab",
                         "redis://:hunter2@[::1",
                         "redis://:hunter2@h/x",
                         "redis://:hunter2@h/-1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ev_redis_url_t u;
        char err[128] = "";
        assert_int_equal(ev_redis_url_parse(bad[i], &u, err, sizeof err), -1);
        assert_true(strncmp(err, "redis url: ", 11) == 0);
        assert_null(strstr(err, "hunter2"));
        assert_null(u.host);
        assert_null(u.pass);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(takes_host_port_and_database),
        cmocka_unit_test(takes_a_password_with_or_without_a_user),
        cmocka_unit_test(takes_a_unix_socket),
        cmocka_unit_test(refuses_bad_urls_without_repeating_them),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
