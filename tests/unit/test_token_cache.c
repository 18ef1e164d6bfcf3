/* test_token_cache.c - core/token_cache.c: tokens Lua validated lately. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "token_cache.h"

#define T(s) (s), strlen(s)

static int setup(void **state)
{
    *state = ev_token_cache_new(4);
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    ev_token_cache_free(*state);
    return 0;
}

static void remembers_a_token_with_its_user_until_the_ttl_passes(void **state)
{
    ev_token_cache_t *c = *state;
    int64_t user = 0;
    assert_int_equal(ev_token_cache_put(c, T("tok-A"), 7, 1.0, 100.0), 0);
    assert_true(ev_token_cache_get(c, T("tok-A"), 100.5, &user));
    assert_int_equal(user, 7);
    assert_false(ev_token_cache_get(c, T("tok-A"), 101.0, &user));
    assert_int_equal(ev_token_cache_count(c), 0); /* the expired entry was freed */
}

static void knows_only_the_exact_token(void **state)
{
    ev_token_cache_t *c = *state;
    assert_int_equal(ev_token_cache_put(c, T("abcdef"), 1, 1.0, 0.0), 0);
    assert_false(ev_token_cache_get(c, T("abcde"), 0.1, NULL));
    assert_false(ev_token_cache_get(c, T("abcdefg"), 0.1, NULL));
    assert_false(ev_token_cache_get(c, T("ABCDEF"), 0.1, NULL));
    assert_false(ev_token_cache_get(c, "", 0, 0.1, NULL));
    assert_true(ev_token_cache_get(c, T("abcdef"), 0.1, NULL));
}

static void a_dropped_token_is_forgotten_at_once(void **state)
{
    ev_token_cache_t *c = *state;
    ev_token_cache_put(c, T("revoked"), 1, 60.0, 0.0);
    ev_token_cache_put(c, T("other"), 2, 60.0, 0.0);
    ev_token_cache_drop(c, T("revoked"));
    assert_false(ev_token_cache_get(c, T("revoked"), 1.0, NULL));
    assert_true(ev_token_cache_get(c, T("other"), 1.0, NULL));
    ev_token_cache_drop(c, T("never-there")); /* harmless */
    assert_int_equal(ev_token_cache_count(c), 1);
}

static void a_second_put_refreshes_instead_of_adding(void **state)
{
    ev_token_cache_t *c = *state;
    int64_t user = 0;
    ev_token_cache_put(c, T("t"), 1, 1.0, 0.0);
    ev_token_cache_put(c, T("t"), 9, 1.0, 0.9);
    assert_int_equal(ev_token_cache_count(c), 1);
    assert_true(ev_token_cache_get(c, T("t"), 1.5, &user));
    assert_int_equal(user, 9);
}

static void a_full_cache_makes_room_from_expired_tokens_else_refuses(void **state)
{
    ev_token_cache_t *c = *state; /* room for 4 */
    const char *t[] = {"t1", "t2", "t3", "t4"};
    for (int i = 0; i < 4; i++)
        assert_int_equal(ev_token_cache_put(c, T(t[i]), i, i < 2 ? 1.0 : 10.0, 0.0), 0);
    assert_int_equal(ev_token_cache_put(c, T("fresh"), 5, 1.0, 0.5), -1); /* all fresh */
    assert_int_equal(ev_token_cache_put(c, T("t5"), 5, 1.0, 2.0), 0); /* t1, t2 expired */
    assert_int_equal(ev_token_cache_count(c), 3);
    assert_true(ev_token_cache_get(c, T("t5"), 2.1, NULL));
    assert_true(ev_token_cache_get(c, T("t4"), 2.1, NULL));
    assert_false(ev_token_cache_get(c, T("t1"), 2.1, NULL));
}

static void clear_forgets_everything(void **state)
{
    ev_token_cache_t *c = *state;
    ev_token_cache_put(c, T("a"), 1, 60.0, 0.0);
    ev_token_cache_put(c, T("b"), 2, 60.0, 0.0);
    ev_token_cache_clear(c);
    assert_int_equal(ev_token_cache_count(c), 0);
    assert_false(ev_token_cache_get(c, T("a"), 1.0, NULL));
}

static void two_caches_hash_differently_but_both_work(void **state)
{
    (void)state;
    ev_token_cache_t *a = ev_token_cache_new(1000), *b = ev_token_cache_new(1000);
    char tok[16];
    for (int i = 0; i < 500; i++) {
        int n = snprintf(tok, sizeof tok, "tok%d", i);
        assert_int_equal(ev_token_cache_put(a, tok, (size_t)n, i, 5.0, 0.0), 0);
        assert_int_equal(ev_token_cache_put(b, tok, (size_t)n, i, 5.0, 0.0), 0);
    }
    for (int i = 0; i < 500; i++) {
        int64_t ua = -1, ub = -1;
        int n = snprintf(tok, sizeof tok, "tok%d", i);
        assert_true(ev_token_cache_get(a, tok, (size_t)n, 1.0, &ua));
        assert_true(ev_token_cache_get(b, tok, (size_t)n, 1.0, &ub));
        assert_int_equal(ua, i);
        assert_int_equal(ub, i);
    }
    ev_token_cache_free(a);
    ev_token_cache_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(remembers_a_token_with_its_user_until_the_ttl_passes, setup, teardown),
        cmocka_unit_test_setup_teardown(knows_only_the_exact_token, setup, teardown),
        cmocka_unit_test_setup_teardown(a_dropped_token_is_forgotten_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(a_second_put_refreshes_instead_of_adding, setup, teardown),
        cmocka_unit_test_setup_teardown(a_full_cache_makes_room_from_expired_tokens_else_refuses, setup, teardown),
        cmocka_unit_test_setup_teardown(clear_forgets_everything, setup, teardown),
        cmocka_unit_test(two_caches_hash_differently_but_both_work),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
