/* test_pg.c - core/pg.c, the asynchronous Postgres pool, against a real server.
 *
 * One embedded Postgres is started under a temporary home for the whole group
 * (initdb takes seconds). Each test makes its own event_base and pool and
 * drives them from the loop, as a worker does. Every wait on the loop has a
 * deadline: a pool that never calls back fails the test instead of hanging it.
 * Works as root (the server then runs as user "evently") and as an ordinary
 * user. */
#define _XOPEN_SOURCE 700 /* nftw */
#define _DEFAULT_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <event2/event.h>
#include <ftw.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "embedded.h"
#include "pg.h"

#define DEADLINE_MS 5000 /* the longest any one step may take before it is a bug */

typedef struct {
    char home[64];
    ev_embedded_t e;
} fixture_t;

/* One event loop and one pool, made and freed by each test. */
typedef struct {
    struct event_base *base;
    ev_pg_pool_t *pool;
} env_t;

/* What an acquire callback was given. */
typedef struct {
    int calls;
    ev_pg_conn_t *conn;
    int has_err;
    char err[512];
} got_t;

/* What a query callback was given, copied: the engine clears res after it. */
typedef struct {
    int calls;
    int has_err;
    char err[512];
    int has_res;
    ExecStatusType status;
    char sqlstate[8];
    char message[256];
    int nrows;
    char val[2][64]; /* first row, first two columns */
    int null[2];
} result_t;

/* ---- the server: once for the group ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static int group_setup(void **state)
{
    static fixture_t fx;
    char err[512];
    /* mkdtemp makes the home 0700 and ours; as root, ev_embedded_start itself
     * hands the layout to user "evently" and opens the home for traversal
     * (o+x), so nothing more is needed here in either case */
    strcpy(fx.home, "/tmp/evently-pgtest-XXXXXX");
    if (!mkdtemp(fx.home))
        return -1;
    if (ev_embedded_start(&fx.e, fx.home, 1, 0, err, sizeof err) != 0) {
        fprintf(stderr, "ev_embedded_start: %s\n", err);
        nftw(fx.home, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        return -1;
    }
    *state = &fx;
    return 0;
}

static int group_teardown(void **state)
{
    fixture_t *fx = *state;
    ev_embedded_stop(&fx->e);
    nftw(fx->home, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* ---- driving the loop ---- */

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    *(int *)arg = 1;
}

/* Runs the loop until *flag is set or ms pass; returns *flag. */
static int loop_until(struct event_base *base, const int *flag, int ms)
{
    int expired = 0;
    struct event *t = evtimer_new(base, on_deadline, &expired);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(t, &tv);
    while (!*flag && !expired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(t);
    return *flag;
}

/* Runs the loop for ms whatever happens: for "this is never called". */
static void run_for(struct event_base *base, int ms)
{
    int never = 0;
    loop_until(base, &never, ms);
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static env_t env_open(const char *conninfo, const ev_pg_opts_t *opts)
{
    env_t v;
    v.base = event_base_new();
    assert_non_null(v.base);
    v.pool = ev_pg_pool_new(v.base, conninfo, opts);
    assert_non_null(v.pool);
    return v;
}

static void env_close(env_t *v)
{
    ev_pg_pool_free(v->pool);
    event_base_free(v->base);
}

static ev_pg_stats_t stats(const env_t *v)
{
    ev_pg_stats_t s;
    ev_pg_stats(v->pool, &s);
    return s;
}

/* ---- callbacks that record what they were given ---- */

static void on_acquire(ev_pg_conn_t *c, const char *err, void *arg)
{
    got_t *g = arg;
    g->calls++;
    g->conn = c;
    g->has_err = err != NULL;
    snprintf(g->err, sizeof g->err, "%s", err ? err : "");
}

static void copy_result(result_t *r, const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    r->has_res = 1;
    r->status = PQresultStatus(res);
    snprintf(r->sqlstate, sizeof r->sqlstate, "%s", state ? state : "");
    snprintf(r->message, sizeof r->message, "%s", msg ? msg : "");
    r->nrows = PQntuples(res);
    for (int i = 0; i < 2 && i < PQnfields(res) && r->nrows > 0; i++) {
        r->null[i] = PQgetisnull(res, 0, i);
        snprintf(r->val[i], sizeof r->val[i], "%s", PQgetvalue(res, 0, i));
    }
}

static void on_result(ev_pg_conn_t *c, PGresult *res, const char *err, void *arg)
{
    result_t *r = arg;
    (void)c;
    r->calls++;
    r->has_err = err != NULL;
    snprintf(r->err, sizeof r->err, "%s", err ? err : "");
    if (res)
        copy_result(r, res);
}

/* ---- the pool used as a caller would, one step at a time ---- */

/* A connection: an idle one at once, else one the loop hands over. */
static ev_pg_conn_t *acquire(env_t *v)
{
    ev_pg_conn_t *c = ev_pg_try_acquire(v->pool);
    if (c)
        return c;
    got_t g = {0};
    assert_non_null(ev_pg_wait(v->pool, on_acquire, &g));
    if (!loop_until(v->base, &g.calls, DEADLINE_MS))
        fail_msg("no connection within %d ms", DEADLINE_MS);
    if (g.has_err)
        fail_msg("acquire: %s", g.err);
    assert_non_null(g.conn);
    return g.conn;
}

/* Sends a query and runs the loop until its callback; returns what
 * ev_pg_query returned (on -1 there is no callback to wait for). */
static int query(env_t *v, ev_pg_conn_t *c, const char *sql, int n, const char *const *values,
                 result_t *r)
{
    memset(r, 0, sizeof *r);
    int rc = ev_pg_query(c, sql, n, values, on_result, r);
    if (rc == 0 && !loop_until(v->base, &r->calls, DEADLINE_MS))
        fail_msg("no result for \"%s\" within %d ms", sql, DEADLINE_MS);
    return rc;
}

static void query_ok(env_t *v, ev_pg_conn_t *c, const char *sql, int n, const char *const *values,
                     result_t *r)
{
    assert_int_equal(query(v, c, sql, n, values, r), 0);
    assert_int_equal(r->calls, 1);
    if (r->has_err)
        fail_msg("%s: %s", sql, r->err);
    assert_true(r->has_res);
    if (r->status != PGRES_TUPLES_OK && r->status != PGRES_COMMAND_OK)
        fail_msg("%s: %s %s", sql, r->sqlstate, r->message);
}

static void assert_value(env_t *v, ev_pg_conn_t *c, const char *sql, const char *want)
{
    result_t r;
    query_ok(v, c, sql, 0, NULL, &r);
    assert_int_equal(r.nrows, 1);
    assert_string_equal(r.val[0], want);
}

/* A statement the server refused: a result with its SQLSTATE, no err. */
static void assert_sql_error(const result_t *r, const char *sqlstate)
{
    assert_int_equal(r->calls, 1);
    assert_false(r->has_err);
    assert_true(r->has_res);
    assert_int_equal(r->status, PGRES_FATAL_ERROR);
    assert_string_equal(r->sqlstate, sqlstate);
}

static int backend_pid(env_t *v, ev_pg_conn_t *c)
{
    result_t r;
    query_ok(v, c, "SELECT pg_backend_pid()", 0, NULL, &r);
    return atoi(r.val[0]);
}

/* ---- 1. acquire, query, release ---- */

static void test_acquire_query_release(void **state)
{
    fixture_t *fx = *state;
    ev_pg_opts_t o = {.max = 2};
    env_t v = env_open(fx->e.database_url, &o);
    assert_null(ev_pg_try_acquire(v.pool)); /* nothing is open yet (min 0) */

    got_t g = {0};
    assert_non_null(ev_pg_wait(v.pool, on_acquire, &g));
    assert_int_equal(g.calls, 0); /* never from inside ev_pg_wait */
    assert_true(loop_until(v.base, &g.calls, DEADLINE_MS));
    assert_int_equal(g.calls, 1);
    assert_false(g.has_err);
    assert_non_null(g.conn);
    ev_pg_stats_t s = stats(&v);
    assert_int_equal(s.total, 1);
    assert_int_equal(s.busy, 1);
    assert_int_equal(s.acquired, 1);

    /* text parameters, one of them SQL NULL; twice, since the second run
     * takes the prepared path with other values */
    result_t r;
    const char *first[] = {"41", NULL}, *second[] = {"-1", "x"};
    query_ok(&v, g.conn, "SELECT $1::int + 1, $2::text IS NULL", 2, first, &r);
    assert_int_equal(r.nrows, 1);
    assert_string_equal(r.val[0], "42");
    assert_string_equal(r.val[1], "t");
    query_ok(&v, g.conn, "SELECT $1::int + 1, $2::text IS NULL", 2, second, &r);
    assert_string_equal(r.val[0], "0");
    assert_string_equal(r.val[1], "f");

    ev_pg_release(g.conn);
    s = stats(&v);
    assert_int_equal(s.total, 1);
    assert_int_equal(s.idle, 1);
    assert_int_equal(s.busy, 0);
    assert_int_equal(s.queries, 2);
    assert_int_equal(s.errors, 0);

    /* the idle connection is there for the taking, and even then a waiter is
     * answered from the loop, not from inside ev_pg_wait */
    ev_pg_conn_t *c = ev_pg_try_acquire(v.pool);
    assert_ptr_equal(c, g.conn);
    ev_pg_release(c);
    got_t g2 = {0};
    assert_non_null(ev_pg_wait(v.pool, on_acquire, &g2));
    assert_int_equal(g2.calls, 0);
    assert_true(loop_until(v.base, &g2.calls, DEADLINE_MS));
    assert_ptr_equal(g2.conn, g.conn);
    ev_pg_release(g2.conn);
    env_close(&v);
}

/* ---- 2. session settings on every connection ---- */

static void assert_session(env_t *v, ev_pg_conn_t *c)
{
    assert_value(v, c, "SHOW TimeZone", "UTC");
    assert_value(v, c, "SHOW DateStyle", "ISO, YMD");
    assert_value(v, c, "SHOW statement_timeout", "1234ms");
    /* what the settings are for: timestamps come back in ISO form, in UTC */
    assert_value(v, c, "SELECT '2024-01-02 03:04:05+02'::timestamptz::text",
                 "2024-01-02 01:04:05+00");
}

static void test_session_settings(void **state)
{
    fixture_t *fx = *state;
    ev_pg_opts_t o = {.max = 2, .statement_timeout_ms = 1234};
    env_t v = env_open(fx->e.database_url, &o);
    /* two held at once, so the second is a connection of its own */
    ev_pg_conn_t *a = acquire(&v), *b = acquire(&v);
    assert_ptr_not_equal(a, b);
    assert_int_not_equal(backend_pid(&v, a), backend_pid(&v, b));
    assert_session(&v, a);
    assert_session(&v, b);
    ev_pg_release(a);
    ev_pg_release(b);
    env_close(&v);
}

/* ---- 3. prepared statements ---- */

#define PREPARED_SQL "SELECT $1::int * 2"
#define CUSTOM_SQL   "SELECT $1::int * 3 " EV_PG_CUSTOM_PLAN

static void run_seven_times(env_t *v, ev_pg_conn_t *c, const char *sql, int factor)
{
    for (int i = 1; i <= 7; i++) {
        char in[16], want[16];
        const char *values[] = {in};
        snprintf(in, sizeof in, "%d", i);
        snprintf(want, sizeof want, "%d", i * factor);
        result_t r;
        query_ok(v, c, sql, 1, values, &r);
        assert_string_equal(r.val[0], want);
    }
}

static void test_prepared_statements(void **state)
{
    fixture_t *fx = *state;
    ev_pg_opts_t o = {.max = 1};
    env_t v = env_open(fx->e.database_url, &o);
    ev_pg_conn_t *c = acquire(&v);
    run_seven_times(&v, c, PREPARED_SQL, 2);
    run_seven_times(&v, c, CUSTOM_SQL, 3);

    /* prepared once and executed seven times through that one statement;
     * the custom-plan statement never appears */
    static const char count[] = "SELECT count(*), coalesce(sum(generic_plans + custom_plans), 0) "
                                "FROM pg_prepared_statements WHERE statement = $1";
    const char *prepared[] = {PREPARED_SQL}, *custom[] = {CUSTOM_SQL};
    result_t r;
    query_ok(&v, c, count, 1, prepared, &r);
    assert_string_equal(r.val[0], "1");
    assert_string_equal(r.val[1], "7");
    query_ok(&v, c, count, 1, custom, &r);
    assert_string_equal(r.val[0], "0");
    ev_pg_release(c);
    env_close(&v);
}

/* ---- 4. SQL errors ---- */

static void test_sql_error(void **state)
{
    fixture_t *fx = *state;
    ev_pg_opts_t o = {.max = 1};
    env_t v = env_open(fx->e.database_url, &o);
    ev_pg_conn_t *c = acquire(&v);
    result_t r;

    /* a statement the server refuses comes back as its error result (err is
     * for a connection that failed); lua_db.c reads the SQLSTATE from it */
    assert_int_equal(query(&v, c, "SELECT 1/0", 0, NULL, &r), 0);
    assert_sql_error(&r, "22012");
    assert_string_equal(r.message, "division by zero");
    assert_int_equal(stats(&v).errors, 1);
    assert_value(&v, c, "SELECT 2", "2"); /* the connection still works */

    /* again: now through the statement prepared the first time */
    assert_int_equal(query(&v, c, "SELECT 1/0", 0, NULL, &r), 0);
    assert_sql_error(&r, "22012");
    assert_int_equal(stats(&v).errors, 2);

    /* a statement that does not even prepare is not remembered as prepared:
     * the second run fails the same way, not with "does not exist" (26000) */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(query(&v, c, "SELEC 1", 0, NULL, &r), 0);
        assert_sql_error(&r, "42601");
    }
    assert_int_equal(stats(&v).errors, 4);
    assert_value(&v, c, "SELECT 3", "3");

    ev_pg_release(c); /* errors outside a transaction: still pooled */
    assert_int_equal(stats(&v).idle, 1);
    env_close(&v);
}

/* ---- 5. statement_timeout ---- */

static void test_statement_timeout(void **state)
{
    fixture_t *fx = *state;
    ev_pg_opts_t o = {.max = 1, .statement_timeout_ms = 200};
    env_t v = env_open(fx->e.database_url, &o);
    ev_pg_conn_t *c = acquire(&v);
    result_t r;
    long t0 = now_ms();
    assert_int_equal(query(&v, c, "SELECT pg_sleep(2)", 0, NULL, &r), 0);
    long took = now_ms() - t0;
    assert_sql_error(&r, "57014"); /* query_canceled */
    assert_in_range(took, 150, 1000);
    assert_value(&v, c, "SELECT 1", "1");
    ev_pg_release(c);
    env_close(&v);
}

/* ---- 6. an exhausted pool ---- */

static void test_pool_exhausted(void **state)
{
    fixture_t *fx = *state;
    ev_pg_opts_t o = {.max = 1, .acquire_timeout_ms = 200};
    env_t v = env_open(fx->e.database_url, &o);
    ev_pg_conn_t *held = acquire(&v);

    /* nothing frees up: the waiter is told "timeout" after its 200 ms */
    got_t late = {0};
    long t0 = now_ms();
    assert_non_null(ev_pg_wait(v.pool, on_acquire, &late));
    assert_int_equal(stats(&v).waiting, 1);
    assert_true(loop_until(v.base, &late.calls, DEADLINE_MS));
    assert_in_range(now_ms() - t0, 150, 1500);
    assert_null(late.conn);
    assert_string_equal(late.err, "timeout");
    ev_pg_stats_t s = stats(&v);
    assert_int_equal(s.timeouts, 1);
    assert_int_equal(s.waiting, 0);
    assert_int_equal(s.total, 1);

    /* a cancelled waiter is never called back, not even by its timer */
    got_t gone = {0};
    ev_pg_waiter_t *w = ev_pg_wait(v.pool, on_acquire, &gone);
    assert_non_null(w);
    ev_pg_wait_cancel(w);
    assert_int_equal(stats(&v).waiting, 0);
    run_for(v.base, 400);
    assert_int_equal(gone.calls, 0);
    assert_int_equal(stats(&v).timeouts, 1);

    /* a release goes to the queued waiter, from the loop; a caller trying
     * meanwhile does not jump the queue */
    got_t next = {0};
    assert_non_null(ev_pg_wait(v.pool, on_acquire, &next));
    ev_pg_release(held);
    assert_int_equal(next.calls, 0);
    assert_null(ev_pg_try_acquire(v.pool));
    assert_true(loop_until(v.base, &next.calls, DEADLINE_MS));
    assert_false(next.has_err);
    assert_ptr_equal(next.conn, held);

    /* freeing the pool drops a queued waiter without calling it */
    got_t dropped = {0};
    assert_non_null(ev_pg_wait(v.pool, on_acquire, &dropped));
    ev_pg_pool_free(v.pool);
    run_for(v.base, 300);
    assert_int_equal(dropped.calls, 0);
    event_base_free(v.base);
}

/* ---- 7. what release keeps and what it closes ---- */

static void test_release_rules(void **state)
{
    fixture_t *fx = *state;
    ev_pg_opts_t o = {.max = 2};
    env_t v = env_open(fx->e.database_url, &o);
    result_t r;

    /* a finished transaction: the connection is pooled and comes back */
    ev_pg_conn_t *c = acquire(&v);
    int pid = backend_pid(&v, c);
    query_ok(&v, c, "BEGIN", 0, NULL, &r);
    query_ok(&v, c, "COMMIT", 0, NULL, &r);
    ev_pg_release(c);
    assert_int_equal(stats(&v).idle, 1);
    c = acquire(&v);
    assert_int_equal(backend_pid(&v, c), pid);

    /* released inside a transaction: closed, not pooled */
    query_ok(&v, c, "BEGIN", 0, NULL, &r);
    assert_int_equal(PQtransactionStatus(ev_pg_raw(c)), PQTRANS_INTRANS);
    ev_pg_release(c);
    ev_pg_stats_t s = stats(&v);
    assert_int_equal(s.total, 0);
    assert_int_equal(s.idle, 0);

    /* the next one is fresh and outside any transaction */
    c = acquire(&v);
    assert_int_equal(PQtransactionStatus(ev_pg_raw(c)), PQTRANS_IDLE);
    int fresh = backend_pid(&v, c);
    assert_int_not_equal(fresh, pid);

    /* so is one released in a failed transaction */
    query_ok(&v, c, "BEGIN", 0, NULL, &r);
    assert_int_equal(query(&v, c, "SELECT 1/0", 0, NULL, &r), 0);
    assert_sql_error(&r, "22012");
    assert_int_equal(PQtransactionStatus(ev_pg_raw(c)), PQTRANS_INERROR);
    ev_pg_release(c);
    assert_int_equal(stats(&v).total, 0);
    c = acquire(&v);
    assert_int_not_equal(backend_pid(&v, c), fresh);
    ev_pg_release(c);
    env_close(&v);
}

/* ---- 8. a connection the server drops ---- */

typedef struct {
    int calls;
    int broken;
    char err[512];
} watched_t;

static void on_watch(ev_pg_conn_t *c, const char *err, void *arg)
{
    watched_t *w = arg;
    (void)c;
    w->calls++;
    if (err) {
        w->broken = 1;
        snprintf(w->err, sizeof w->err, "%s", err);
    }
}

/* Ends backend pid from connection c, waiting until it has exited. */
static void terminate(env_t *v, ev_pg_conn_t *c, int pid)
{
    char arg[16];
    const char *values[] = {arg};
    result_t r;
    snprintf(arg, sizeof arg, "%d", pid);
    query_ok(v, c, "SELECT pg_terminate_backend($1, 5000)", 1, values, &r);
    assert_string_equal(r.val[0], "t");
}

/* Between queries: the watcher hears of it, the next query cannot be sent,
 * and the pool goes on with another connection. */
static void test_killed_between_queries(void **state)
{
    fixture_t *fx = *state;
    ev_pg_opts_t o = {.max = 2};
    env_t v = env_open(fx->e.database_url, &o);
    ev_pg_conn_t *victim = acquire(&v), *killer = acquire(&v);
    int pid = backend_pid(&v, victim);
    watched_t w = {0};
    ev_pg_watch(victim, on_watch, &w);
    terminate(&v, killer, pid);
    ev_pg_release(killer);

    if (!loop_until(v.base, &w.broken, DEADLINE_MS))
        fail_msg("the watcher was not told of the closed connection");
    assert_int_equal(strncmp(w.err, "closed: ", 8), 0);
    result_t r;
    assert_int_equal(query(&v, victim, "SELECT 1", 0, NULL, &r), -1);
    run_for(v.base, 50);
    assert_int_equal(r.calls, 0); /* -1 means no callback */
    ev_pg_abandon(victim);
    assert_int_equal(stats(&v).total, 1);

    ev_pg_conn_t *c = acquire(&v);
    assert_int_not_equal(backend_pid(&v, c), pid);
    ev_pg_release(c);
    env_close(&v);
}

/* Mid-query: the caller gets an error once, no hang, no crash. */
static void test_killed_mid_query(void **state)
{
    fixture_t *fx = *state;
    ev_pg_opts_t o = {.max = 2};
    env_t v = env_open(fx->e.database_url, &o);
    ev_pg_conn_t *victim = acquire(&v), *killer = acquire(&v);
    int pid = backend_pid(&v, victim);

    result_t slow = {0};
    assert_int_equal(ev_pg_query(victim, "SELECT pg_sleep(20)", 0, NULL, on_result, &slow), 0);
    terminate(&v, killer, pid);
    ev_pg_release(killer);
    if (!loop_until(v.base, &slow.calls, DEADLINE_MS))
        fail_msg("the query on the terminated connection never finished");
    run_for(v.base, 50);
    assert_int_equal(slow.calls, 1);
    /* either form says what happened: the server's FATAL (57P01) or libpq's
     * "closed: server closed the connection unexpectedly" */
    if (slow.has_err)
        assert_int_equal(strncmp(slow.err, "closed: ", 8), 0);
    else
        assert_sql_error(&slow, "57P01");
    ev_pg_release(victim); /* dead: closed, not pooled */
    assert_int_equal(stats(&v).total, 1);
    assert_int_equal(stats(&v).idle, 1);

    ev_pg_conn_t *c = acquire(&v);
    assert_value(&v, c, "SELECT 1", "1");
    ev_pg_release(c);
    env_close(&v);
}

typedef struct {
    ev_pg_pool_t *pool;
    int want_total;
    int met;
} total_wait_t;

static void check_total(evutil_socket_t fd, short what, void *arg)
{
    total_wait_t *t = arg;
    ev_pg_stats_t s;
    (void)fd, (void)what;
    ev_pg_stats(t->pool, &s);
    t->met = s.total == t->want_total;
}

/* In the pool: the idle connection is dropped when the server ends it, so
 * nobody is handed a dead one. */
static void test_killed_while_idle(void **state)
{
    fixture_t *fx = *state;
    ev_pg_opts_t o = {.max = 2};
    env_t v = env_open(fx->e.database_url, &o);
    ev_pg_conn_t *idle = acquire(&v), *killer = acquire(&v);
    int pid = backend_pid(&v, idle);
    ev_pg_release(idle);
    terminate(&v, killer, pid);

    total_wait_t t = {v.pool, 1, 0};
    struct event *poll = event_new(v.base, -1, EV_PERSIST, check_total, &t);
    struct timeval every = {0, 10000};
    event_add(poll, &every);
    int met = loop_until(v.base, &t.met, DEADLINE_MS);
    event_free(poll);
    if (!met)
        fail_msg("the pool kept the terminated idle connection");
    assert_int_equal(stats(&v).idle, 0);

    ev_pg_release(killer);
    ev_pg_conn_t *c = acquire(&v);
    assert_ptr_equal(c, killer);
    assert_value(&v, c, "SELECT 1", "1");
    ev_pg_release(c);
    env_close(&v);
}

/* ---- 9. no server ---- */

/* A connect refused while another connection is leased: the pool backs off,
 * and when the backoff ends it tries again by itself. The waiter gets a new
 * connection once the server admits it, long before its acquire timeout
 * (it used to wait for a release or its timeout). */
static void test_connects_again_after_backoff(void **state)
{
    fixture_t *fx = *state;
    /* Postgres refuses to close the database a session is in: an admin pool
     * on the main database opens and closes a second one to new sessions */
    ev_pg_opts_t ao = {.max = 1};
    env_t admin = env_open(fx->e.database_url, &ao);
    ev_pg_conn_t *a = acquire(&admin);
    result_t r;
    query_ok(&admin, a, "DROP DATABASE IF EXISTS pgtest_backoff", 0, NULL, &r);
    query_ok(&admin, a, "CREATE DATABASE pgtest_backoff", 0, NULL, &r);

    char url[512];
    snprintf(url, sizeof url, "%s dbname=pgtest_backoff", fx->e.database_url);
    ev_pg_opts_t o = {.max = 2, .acquire_timeout_ms = 4000};
    env_t v = env_open(url, &o);
    ev_pg_conn_t *held = acquire(&v);
    query_ok(&admin, a, "ALTER DATABASE pgtest_backoff WITH ALLOW_CONNECTIONS false", 0, NULL, &r);

    got_t g = {0};
    long t0 = now_ms();
    assert_non_null(ev_pg_wait(v.pool, on_acquire, &g));
    run_for(v.base, 400); /* refused, backing off; a live connection is held: no failing */
    assert_int_equal(g.calls, 0);
    assert_true(stats(&v).connect_failures >= 1);

    query_ok(&admin, a, "ALTER DATABASE pgtest_backoff WITH ALLOW_CONNECTIONS true", 0, NULL, &r);
    if (!loop_until(v.base, &g.calls, DEADLINE_MS))
        fail_msg("the waiter was never served");
    if (g.has_err)
        fail_msg("acquire: %s", g.err);
    assert_true(now_ms() - t0 < 2000); /* the backoff (at most 800 ms here), not the timeout */
    assert_true(g.conn != held);
    ev_pg_release(g.conn);
    ev_pg_release(held);
    env_close(&v);
    query_ok(&admin, a, "DROP DATABASE pgtest_backoff", 0, NULL, &r);
    ev_pg_release(a);
    env_close(&admin);
}

static void test_unreachable_server(void **state)
{
    (void)state;
    ev_pg_opts_t o = {.max = 2, .acquire_timeout_ms = 5000};
    env_t v = env_open("host=/nonexistent port=1", &o);
    got_t g = {0};
    long t0 = now_ms();
    assert_non_null(ev_pg_wait(v.pool, on_acquire, &g));
    assert_int_equal(g.calls, 0);
    assert_true(loop_until(v.base, &g.calls, DEADLINE_MS));
    /* answered fast with the reason, not after the acquire timeout */
    assert_in_range(now_ms() - t0, 0, 1000);
    assert_null(g.conn);
    assert_int_equal(strncmp(g.err, "unavailable: ", 13), 0);
    assert_non_null(strstr(g.err, "/nonexistent"));
    ev_pg_stats_t s = stats(&v);
    assert_int_equal(s.connect_failures, 1);
    assert_int_equal(s.total, 0);
    assert_int_equal(s.timeouts, 0);
    assert_non_null(strstr(s.last_error, "/nonexistent"));

    /* the next caller is told the same, still without waiting it out */
    got_t again = {0};
    assert_non_null(ev_pg_wait(v.pool, on_acquire, &again));
    assert_true(loop_until(v.base, &again.calls, DEADLINE_MS));
    assert_int_equal(strncmp(again.err, "unavailable: ", 13), 0);
    assert_int_equal(stats(&v).timeouts, 0);
    env_close(&v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_acquire_query_release),
        cmocka_unit_test(test_session_settings),
        cmocka_unit_test(test_prepared_statements),
        cmocka_unit_test(test_sql_error),
        cmocka_unit_test(test_statement_timeout),
        cmocka_unit_test(test_pool_exhausted),
        cmocka_unit_test(test_release_rules),
        cmocka_unit_test(test_killed_between_queries),
        cmocka_unit_test(test_killed_mid_query),
        cmocka_unit_test(test_killed_while_idle),
        cmocka_unit_test(test_connects_again_after_backoff),
        cmocka_unit_test(test_unreachable_server),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
