/* test_gate.c - core/gate.c: the worker's sold-out gate. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>
#include <time.h>

#include "gate.h"

static int reset(void **state)
{
    (void)state;
    ev_gate_reset();
    return 0;
}

static void refuses_up_to_the_largest_quantity_it_was_closed_for(void **state)
{
    (void)state;
    assert_false(ev_gate_closed("seats", 42, 1)); /* never closed: open */
    ev_gate_close("seats", 42, 4, 60);
    assert_true(ev_gate_closed("seats", 42, 1));
    assert_true(ev_gate_closed("seats", 42, 4));
    assert_false(ev_gate_closed("seats", 42, 5)); /* over max_per_booking: the full path answers */
}

static void keys_and_pools_are_apart(void **state)
{
    (void)state;
    ev_gate_close("seats", 42, 4, 60);
    assert_false(ev_gate_closed("seats", 43, 1));
    assert_false(ev_gate_closed("stock", 42, 1));
    for (int64_t k = 0; k < 5000; k++) /* many keys share buckets */
        ev_gate_close("seats", 1000 + k, 2, 60);
    assert_true(ev_gate_closed("seats", 42, 1));
    assert_true(ev_gate_closed("seats", 5999, 2));
    assert_false(ev_gate_closed("seats", 6000, 1));
}

static void opening_counts_a_change_and_opens_at_once(void **state)
{
    (void)state;
    assert_int_equal(ev_gate_changes("seats", 7), 0);
    ev_gate_close("seats", 7, 4, 60);
    unsigned before = ev_gate_changes("seats", 7);
    ev_gate_open("seats", 7);
    assert_false(ev_gate_closed("seats", 7, 1));
    assert_int_equal(ev_gate_changes("seats", 7), before + 1);
    ev_gate_close("seats", 7, 4, 60); /* closing does not count a change */
    assert_int_equal(ev_gate_changes("seats", 7), before + 1);
}

static void a_closing_expires(void **state)
{
    (void)state;
    ev_gate_close("seats", 9, 4, 0.02);
    assert_true(ev_gate_closed("seats", 9, 1));
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    assert_false(ev_gate_closed("seats", 9, 1));
}

static void a_pool_name_too_long_leaves_the_gate_open(void **state)
{
    (void)state;
    char name[100];
    memset(name, 'p', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    ev_gate_close(name, 1, 4, 60);
    assert_false(ev_gate_closed(name, 1, 1));
}

static void counts_refusals_until_reset(void **state)
{
    (void)state;
    ev_gate_count_refusal();
    ev_gate_count_refusal();
    assert_int_equal(ev_gate_refusals(), 2);
    ev_gate_close("seats", 1, 1, 60);
    ev_gate_reset();
    assert_int_equal(ev_gate_refusals(), 0);
    assert_false(ev_gate_closed("seats", 1, 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(refuses_up_to_the_largest_quantity_it_was_closed_for, reset),
        cmocka_unit_test_setup(keys_and_pools_are_apart, reset),
        cmocka_unit_test_setup(opening_counts_a_change_and_opens_at_once, reset),
        cmocka_unit_test_setup(a_closing_expires, reset),
        cmocka_unit_test_setup(a_pool_name_too_long_leaves_the_gate_open, reset),
        cmocka_unit_test_setup(counts_refusals_until_reset, reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
