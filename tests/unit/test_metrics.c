/* test_metrics.c - core/metrics.c: the shared, lock-free Prometheus figures.
 *
 * The region is shared across fork(), so the concurrency tests fork real
 * processes that hammer the same series and check that no increment is lost.
 * Figures are read back from ev_metrics_render() text, the way Prometheus
 * sees them. */
#define _DEFAULT_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "health.h"
#include "metrics.h"

/* The last rendering; freed by the next one or by teardown, so a failing
 * assertion (a longjmp) leaks nothing. */
static char *rendered;

static int setup(void **state)
{
    *state = ev_metrics_create();
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    free(rendered);
    rendered = NULL;
    ev_metrics_destroy(*state);
    return 0;
}

static char *render(ev_metrics_t *m)
{
    size_t len = 0;
    free(rendered);
    rendered = ev_metrics_render(m, &len);
    assert_non_null(rendered);
    assert_int_equal(strlen(rendered), len);
    return rendered;
}

/* The value of the sample whose name and labels are exactly `series`, or -1. */
static long long sample(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            return strtoll(line + n + 1, NULL, 10);
    return -1;
}

static int occurrences(const char *text, const char *needle)
{
    int k = 0;
    for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
        k++;
    return k;
}

#define assert_sample(text, series, want)                                                       \
    do {                                                                                        \
        long long got_ = sample((text), (series));                                             \
        if (got_ != (long long)(want))                                                          \
            fail_msg("%s = %lld, expected %lld", (series), got_, (long long)(want));            \
    } while (0)

#define DUR "evently_http_request_duration_seconds"
#define LBL "{method=\"GET\",route=\"/events/:id\",status=\"200\""

/* ---- rendering ---- */

static void observe_renders_the_request_counter(void **state)
{
    ev_metrics_t *m = *state;
    ev_metrics_observe(m, "GET", "/events/:id", 200, 1500);
    ev_metrics_observe(m, "GET", "/events/:id", 200, 1500);
    ev_metrics_observe(m, "POST", "/events/:id/bookings", 409, 800);
    char *text = render(m);
    assert_non_null(strstr(text, "# TYPE evently_http_requests_total counter\n"));
    assert_sample(text, "evently_http_requests_total" LBL "}", 2);
    assert_sample(text, "evently_http_requests_total{method=\"POST\",route=\"/events/:id/bookings\","
                        "status=\"409\"}", 1);
}

static void observe_renders_cumulative_histogram_buckets(void **state)
{
    ev_metrics_t *m = *state;
    ev_metrics_observe(m, "GET", "/events/:id", 200, 400);     /* 0.4 ms */
    ev_metrics_observe(m, "GET", "/events/:id", 200, 1000);    /* exactly 1 ms: le="0.001" */
    ev_metrics_observe(m, "GET", "/events/:id", 200, 30000);   /* 30 ms */
    ev_metrics_observe(m, "GET", "/events/:id", 200, 20000000); /* 20 s: past the last bound */
    char *text = render(m);
    assert_non_null(strstr(text, "# TYPE " DUR " histogram\n"));
    assert_sample(text, DUR "_bucket" LBL ",le=\"0.0005\"}", 1);
    assert_sample(text, DUR "_bucket" LBL ",le=\"0.001\"}", 2);
    assert_sample(text, DUR "_bucket" LBL ",le=\"0.0025\"}", 2);
    assert_sample(text, DUR "_bucket" LBL ",le=\"0.025\"}", 2);
    assert_sample(text, DUR "_bucket" LBL ",le=\"0.05\"}", 3);
    assert_sample(text, DUR "_bucket" LBL ",le=\"10\"}", 3);
    assert_sample(text, DUR "_bucket" LBL ",le=\"+Inf\"}", 4);
    assert_sample(text, DUR "_count" LBL "}", 4);
    assert_non_null(strstr(text, DUR "_sum" LBL "} 20.031400\n"));
    /* cumulative: every bucket line is >= the one before it */
    long long prev = 0;
    static const char *les[] = {"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
                                "0.1", "0.25", "0.5", "1", "2.5", "10", "+Inf"};
    for (size_t i = 0; i < sizeof les / sizeof les[0]; i++) {
        char series[256];
        snprintf(series, sizeof series, DUR "_bucket" LBL ",le=\"%s\"}", les[i]);
        long long v = sample(text, series);
        if (v < prev)
            fail_msg("%s = %lld < %lld", series, v, prev);
        prev = v;
    }
}

static void an_unmatched_request_is_counted_under_route_unmatched(void **state)
{
    ev_metrics_t *m = *state;
    ev_metrics_observe(m, "GET", NULL, 404, 100);
    char *text = render(m);
    assert_sample(text, "evently_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}",
                  1);
}

static void named_counters_add_up(void **state)
{
    ev_metrics_t *m = *state;
    ev_metrics_count(m, "evently_worker_restarts_total", 1);
    ev_metrics_count(m, "evently_worker_restarts_total", 2);
    ev_metrics_count(m, "evently_bookings_total", 5);
    char *text = render(m);
    assert_sample(text, "evently_worker_restarts_total", 3);
    assert_sample(text, "evently_bookings_total", 5);
    assert_int_equal(occurrences(text, "# TYPE evently_worker_restarts_total counter\n"), 1);
}

/* Names are copied into a 60-byte slot; a longer name never compares equal
 * to its truncated copy, so every call claims a fresh slot: the same counter
 * appears many times (an invalid exposition) and, 32 calls later, every
 * counter of the process is silently dropped. Lua reaches this through
 * evently.runtime.count(name) with any string. */
static void a_counter_with_a_long_name_is_one_series(void **state)
{
    ev_metrics_t *m = *state;
    const char *name = "evently_a_counter_name_that_is_longer_than_sixty_characters_total";
    assert_true(strlen(name) >= 60);
    for (int i = 0; i < 3; i++)
        ev_metrics_count(m, name, 1);
    ev_metrics_count(m, "evently_short_total", 1);
    char *text = render(m);
    int series = occurrences(text, "evently_a_counter_name_that_is_longer_than_sixty_charac");
    if (series != 3) /* "# HELP name ...", "# TYPE name counter" and "name 3" */
        fail_msg("the long-named counter appears on %d lines, expected 3 (HELP, TYPE, one sample)",
                 series);
    assert_sample(text, "evently_short_total", 1);
}

static void a_counter_with_a_long_name_does_not_crowd_out_the_others(void **state)
{
    ev_metrics_t *m = *state;
    for (int i = 0; i < 40; i++)
        ev_metrics_count(m, "evently_a_counter_name_that_is_longer_than_sixty_characters_total", 1);
    ev_metrics_count(m, "evently_worker_restarts_total", 1);
    char *text = render(m);
    assert_sample(text, "evently_worker_restarts_total", 1);
}

static void workers_and_their_lua_memory_are_rendered(void **state)
{
    ev_metrics_t *m = *state;
    ev_metrics_worker_set(m, 0, 1234);
    ev_metrics_worker_set(m, 3, 1240);
    ev_metrics_worker_memory(m, 0, 65536);
    ev_metrics_worker_set(m, EV_METRICS_MAX_WORKERS, 99); /* out of range: ignored */
    ev_metrics_worker_set(m, -1, 99);
    char *text = render(m);
    assert_sample(text, "evently_workers", 2);
    assert_sample(text, "evently_lua_memory_bytes{worker=\"0\",pid=\"1234\"}", 65536);
    assert_sample(text, "evently_lua_memory_bytes{worker=\"3\",pid=\"1240\"}", 0);
    ev_metrics_worker_set(m, 3, 0); /* worker gone */
    text = render(m);
    assert_sample(text, "evently_workers", 1);
    assert_null(strstr(text, "pid=\"1240\""));
}

/* ---- capacity ---- */

static void routes_beyond_capacity_are_dropped_and_counted(void **state)
{
    ev_metrics_t *m = *state;
    char route[64];
    for (int i = 0; i < 600; i++) {
        snprintf(route, sizeof route, "/r/%d", i);
        ev_metrics_observe(m, "GET", route, 200, 1000);
    }
    for (int i = 0; i < 600; i++) { /* again: known series grow, unknown ones drop again */
        snprintf(route, sizeof route, "/r/%d", i);
        ev_metrics_observe(m, "GET", route, 200, 1000);
    }
    char *text = render(m);
    int kept = occurrences(text, "evently_http_requests_total{");
    assert_int_equal(kept, 512);
    assert_sample(text, "evently_metrics_series_dropped_total", 2 * (600 - 512));
    /* every series that got a slot counted both observations */
    int twos = occurrences(text, "\",status=\"200\"} 2\n");
    assert_true(twos >= 512); /* requests_total and _count lines */
}

static void long_routes_and_methods_are_truncated_not_overflowed(void **state)
{
    ev_metrics_t *m = *state;
    char route[400];
    memset(route, 'x', sizeof route - 1);
    route[0] = '/';
    route[sizeof route - 1] = '\0';
    ev_metrics_observe(m, "VERYLONGMETHODNAME", route, 200, 10);
    ev_metrics_observe(m, "VERYLONGMETHODNAME", route, 200, 10);
    char *text = render(m);
    assert_int_equal(occurrences(text, "evently_http_requests_total{"), 1);
    assert_non_null(strstr(text, "method=\"VERYLONGMET\""));
}

/* ---- shared across processes ---- */

static void wait_children(pid_t *pids, int n)
{
    for (int i = 0; i < n; i++) {
        int status = 0;
        assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
}

static void four_processes_observing_one_series_lose_no_count(void **state)
{
    ev_metrics_t *m = *state;
    pid_t pids[4];
    fflush(NULL);
    for (int p = 0; p < 4; p++) {
        pids[p] = fork();
        assert_true(pids[p] >= 0);
        if (pids[p] == 0) {
            for (int i = 0; i < 10000; i++)
                ev_metrics_observe(m, "GET", "/events/:id", 200, 1000);
            _exit(0);
        }
    }
    wait_children(pids, 4);
    char *text = render(m);
    assert_int_equal(occurrences(text, "evently_http_requests_total{"), 1);
    assert_sample(text, "evently_http_requests_total" LBL "}", 40000);
    assert_sample(text, DUR "_bucket" LBL ",le=\"0.001\"}", 40000);
    assert_sample(text, DUR "_count" LBL "}", 40000);
    assert_non_null(strstr(text, DUR "_sum" LBL "} 40.000000\n"));
}

static void four_processes_claiming_the_same_new_series_make_each_once(void **state)
{
    ev_metrics_t *m = *state;
    pid_t pids[4];
    fflush(NULL);
    for (int p = 0; p < 4; p++) {
        pids[p] = fork();
        assert_true(pids[p] >= 0);
        if (pids[p] == 0) {
            char route[32];
            for (int round = 0; round < 50; round++)
                for (int r = 0; r < 100; r++) {
                    snprintf(route, sizeof route, "/shared/%d", (r + p * 25) % 100);
                    ev_metrics_observe(m, "GET", route, 200, 1000);
                }
            ev_metrics_count(m, "evently_shared_total", 1);
            _exit(0);
        }
    }
    wait_children(pids, 4);
    char *text = render(m);
    assert_int_equal(occurrences(text, "evently_http_requests_total{"), 100);
    for (int r = 0; r < 100; r++) {
        char series[128];
        snprintf(series, sizeof series,
                 "evently_http_requests_total{method=\"GET\",route=\"/shared/%d\",status=\"200\"}", r);
        assert_sample(text, series, 4 * 50);
    }
    assert_sample(text, "evently_shared_total", 4);
    assert_sample(text, "evently_metrics_series_dropped_total", 0);
}

/* ---- components ---- */

static void component_state_and_detail_round_trip(void **state)
{
    ev_metrics_t *m = *state;
    char detail[128];
    assert_int_equal(ev_metrics_component_get(m, EV_COMP_POSTGRES, detail, sizeof detail), 0);
    assert_string_equal(detail, "");
    ev_metrics_component_set(m, EV_COMP_POSTGRES, EV_STATE_UP, "3 ms");
    ev_metrics_component_set(m, EV_COMP_REDIS, EV_STATE_DOWN, "connection refused");
    assert_int_equal(ev_metrics_component_get(m, EV_COMP_POSTGRES, detail, sizeof detail), EV_STATE_UP);
    assert_string_equal(detail, "3 ms");
    assert_int_equal(ev_metrics_component_get(m, EV_COMP_REDIS, detail, sizeof detail), EV_STATE_DOWN);
    assert_string_equal(detail, "connection refused");
    ev_metrics_component_set(m, EV_COMP_REDIS, EV_STATE_UP, NULL);
    assert_int_equal(ev_metrics_component_get(m, EV_COMP_REDIS, detail, sizeof detail), EV_STATE_UP);
    assert_string_equal(detail, "");
    char small[5];
    ev_metrics_component_set(m, EV_COMP_REDIS, EV_STATE_DOWN, "truncated detail");
    assert_int_equal(ev_metrics_component_get(m, EV_COMP_REDIS, small, sizeof small), EV_STATE_DOWN);
    assert_string_equal(small, "trun");
    assert_int_equal(ev_metrics_component_get(m, EV_COMP_REDIS, NULL, 0), EV_STATE_DOWN);
}

static void components_out_of_range_are_ignored(void **state)
{
    ev_metrics_t *m = *state;
    char detail[16] = "untouched";
    ev_metrics_component_set(m, 8, EV_STATE_UP, "x");
    ev_metrics_component_set(m, -1, EV_STATE_UP, "x");
    assert_int_equal(ev_metrics_component_get(m, 8, detail, sizeof detail), 0);
    assert_int_equal(ev_metrics_component_get(m, -1, detail, sizeof detail), 0);
    assert_string_equal(detail, "untouched");
}

static void a_component_written_by_another_process_is_read_whole(void **state)
{
    ev_metrics_t *m = *state;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) { /* the master's prober, flipping between two states */
        for (int i = 0; i < 20000; i++)
            ev_metrics_component_set(m, EV_COMP_POSTGRES, i % 2 ? EV_STATE_UP : EV_STATE_DOWN,
                                     i % 2 ? "up-up-up-up" : "down-down-down");
        _exit(0);
    }
    int torn = 0;
    for (int i = 0; i < 20000; i++) {
        char detail[64];
        int s = ev_metrics_component_get(m, EV_COMP_POSTGRES, detail, sizeof detail);
        if (s == EV_STATE_UP && strcmp(detail, "up-up-up-up") != 0)
            torn++;
        if (s == EV_STATE_DOWN && strcmp(detail, "down-down-down") != 0)
            torn++;
    }
    wait_children(&pid, 1);
    assert_int_equal(torn, 0);
}

/* ---- gauges: each worker's share, rendered as one sum ---- */

#define LAG "evently_consumer_lag{group=\"g\",topic=\"t\"}"

static void gauges_are_summed_over_workers_and_typed_once(void **state)
{
    ev_metrics_t *m = *state;
    ev_metrics_gauge_set(m, 0, LAG, 5);
    ev_metrics_gauge_set(m, 1, LAG, 7);
    ev_metrics_gauge_set(m, 1, "evently_consumer_lag{group=\"g\",topic=\"u\"}", 1);
    ev_metrics_gauge_set(m, 0, LAG, 2); /* a worker's share is replaced, not added */
    const char *text = render(m);
    assert_sample(text, LAG, 9);
    assert_sample(text, "evently_consumer_lag{group=\"g\",topic=\"u\"}", 1);
    assert_int_equal(occurrences(text, LAG " "), 1);
    assert_int_equal(occurrences(text, "# TYPE evently_consumer_lag gauge\n"), 1);
}

static void a_dead_workers_share_is_dropped(void **state)
{
    ev_metrics_t *m = *state;
    ev_metrics_worker_set(m, 1, 4242);
    ev_metrics_gauge_set(m, 0, LAG, 3);
    ev_metrics_gauge_set(m, 1, LAG, 10);
    ev_metrics_worker_set(m, 1, 0);
    assert_sample(render(m), LAG, 3);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(observe_renders_the_request_counter),
        T(observe_renders_cumulative_histogram_buckets),
        T(an_unmatched_request_is_counted_under_route_unmatched),
        T(named_counters_add_up),
        T(a_counter_with_a_long_name_is_one_series),
        T(a_counter_with_a_long_name_does_not_crowd_out_the_others),
        T(workers_and_their_lua_memory_are_rendered),
        T(routes_beyond_capacity_are_dropped_and_counted),
        T(long_routes_and_methods_are_truncated_not_overflowed),
        T(four_processes_observing_one_series_lose_no_count),
        T(four_processes_claiming_the_same_new_series_make_each_once),
        T(component_state_and_detail_round_trip),
        T(components_out_of_range_are_ignored),
        T(a_component_written_by_another_process_is_read_whole),
        T(gauges_are_summed_over_workers_and_typed_once),
        T(a_dead_workers_share_is_dropped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
