/* test_inventory_sql.c - the statements core/inventory_sql.c composes from a
 * pool definition, compared byte for byte with tests/unit/inventory_sql/.
 *
 * The expected files are the reviewed text of every statement for two
 * definitions: the smallest one and one that uses every option. A change to
 * the composition shows here as a diff to read, not as a booking test that
 * fails for reasons far away. After an intended change, write the files anew
 * with EV_WRITE_EXPECTED=1 and review the diff. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inventory.h"

#ifndef EXPECTED_DIR
#define EXPECTED_DIR "tests/unit/inventory_sql"
#endif

static const char *const OPS[] = {"batch",   "batch_limited", "lock",   "hold",      "confirm",
                                  "release", "give_back",     "resize", "available", "sweep"};

static const ev_inv_def_t MINIMAL = {
    .name = "stock", .table = "items", .key = "id", .available = "left", .capacity = "total"};

static const ev_inv_def_t FULL = {
    .name = "seats",
    .table = "public.events",
    .key = "id",
    .available = "available",
    .capacity = "capacity",
    .open = "status = 'published' AND starts_at > now()",
    .max_claim = "max_per_booking",
    .columns = "price_cents",
    .record = "INSERT INTO bookings (id, event_id, user_id, quantity, price_cents) "
              "SELECT g.id, $1, g.owner, g.quantity, g.price_cents FROM granted g RETURNING id",
    .record_seq = "bookings_id_seq",
    .after = {"INSERT INTO outbox (topic, payload) SELECT 'booking', r.id::text FROM recorded r",
              "UPDATE answers SET done = true FROM granted g WHERE answers.tag = g.tag"},
    .owner_held = "SELECT user_id AS owner, sum(quantity)::int AS held FROM bookings "
                  "WHERE event_id = $1 AND user_id = ANY($3::bigint[]) GROUP BY user_id",
    .touch = "updated_at",
};

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s)
        s[n] = '\0';
    fclose(f);
    return s;
}

static void check_def(const ev_inv_def_t *def)
{
    ev_inv_opts_t o = {.gate_seconds = 1, .batch_seconds = 5, .max_batch = 10};
    ev_inv_t *inv = ev_inv_new(NULL, NULL, &o);
    assert_non_null(inv);
    char err[200];
    assert_int_equal(ev_inv_define(inv, def, err, sizeof err), 0);
    int write = getenv("EV_WRITE_EXPECTED") != NULL;
    for (size_t i = 0; i < sizeof OPS / sizeof OPS[0]; i++) {
        const char *sql = ev_inv_sql(inv, def->name, OPS[i]);
        assert_non_null(sql);
        char path[512];
        snprintf(path, sizeof path, "%s/%s.%s.sql", EXPECTED_DIR, def->name, OPS[i]);
        if (write) {
            FILE *f = fopen(path, "wb");
            assert_non_null(f);
            fputs(sql, f);
            fclose(f);
            continue;
        }
        char *want = slurp(path);
        if (!want)
            fail_msg("missing %s", path);
        if (strcmp(sql, want) != 0)
            fail_msg("%s differs from what the pool composes:\n%s", path, sql);
        free(want);
    }
    ev_inv_free(inv);
}

static void composes_the_smallest_definition(void **state)
{
    (void)state;
    check_def(&MINIMAL);
}

static void composes_a_definition_with_every_option(void **state)
{
    (void)state;
    check_def(&FULL);
}

static void refuses_identifiers_it_cannot_quote_and_an_after_without_a_record(void **state)
{
    (void)state;
    ev_inv_opts_t o = {.gate_seconds = 1, .batch_seconds = 5, .max_batch = 10};
    ev_inv_t *inv = ev_inv_new(NULL, NULL, &o);
    char err[200];
    ev_inv_def_t d = MINIMAL;
    d.table = "items; DROP TABLE users";
    assert_int_equal(ev_inv_define(inv, &d, err, sizeof err), -1);
    assert_non_null(strstr(err, "table"));
    d = MINIMAL;
    d.available = "Left";
    assert_int_equal(ev_inv_define(inv, &d, err, sizeof err), -1);
    assert_non_null(strstr(err, "available"));
    d = MINIMAL;
    d.after[0] = "SELECT 1";
    assert_int_equal(ev_inv_define(inv, &d, err, sizeof err), -1);
    assert_non_null(strstr(err, "after"));
    assert_null(ev_inv_sql(inv, "stock", "hold"));
    ev_inv_free(inv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(composes_the_smallest_definition),
        cmocka_unit_test(composes_a_definition_with_every_option),
        cmocka_unit_test(refuses_identifiers_it_cannot_quote_and_an_after_without_a_record),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
