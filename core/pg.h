/* pg.h - asynchronous Postgres connections and a pool, on a libevent loop.
 *
 * Engine only (no Lua): lua_db.c binds it. API in calling order:
 *   ev_pg_pool_new()          one pool per worker and database URL
 *   ev_pg_try_acquire()       an idle connection now, or NULL
 *   ev_pg_wait()              else: called back later with a connection or an
 *                             error ("timeout", "unavailable: ..."); never
 *                             synchronously; ev_pg_wait_cancel() withdraws
 *   ev_pg_query()             sends a parameterised query; the callback gets
 *                             the result from the loop: a statement the
 *                             server refused is a result whose status is
 *                             PGRES_FATAL_ERROR (err NULL); err is set only
 *                             when the connection failed ("closed: ...")
 *   ev_pg_release()           back to the pool; a connection that is broken,
 *                             busy or inside a transaction is closed instead
 *   ev_pg_abandon()           a query whose caller went away: close it
 * Every connection runs with TimeZone=UTC, DateStyle=ISO and the pool's
 * statement_timeout, so the server also bounds every statement. */
#ifndef EV_PG_H
#define EV_PG_H

/* A statement that contains this comment is never prepared: it is planned
 * with its parameters every time. Postgres gives a prepared statement a
 * generic plan after five executions when that looks no dearer; for a search
 * whose best plan depends on the pattern (ILIKE through trigram indexes) the
 * generic plan walks the whole table. */
#define EV_PG_CUSTOM_PLAN "/* custom plan */"

#include <libpq-fe.h>

struct event_base;

typedef struct ev_pg_pool ev_pg_pool_t;
typedef struct ev_pg_conn ev_pg_conn_t;
typedef struct ev_pg_waiter ev_pg_waiter_t;

typedef struct {
    int max;                  /* connections, default 10 */
    int min;                  /* kept open even when idle, default 0 */
    int acquire_timeout_ms;   /* waiting for a free connection, default 5000 */
    int statement_timeout_ms; /* server-side limit per statement, default 30000 */
    int connect_timeout_ms;   /* default 5000 */
} ev_pg_opts_t;

typedef struct {
    int total, idle, busy, waiting, max;
    unsigned long long acquired, timeouts, connect_failures, queries, errors;
    const char *last_error;
} ev_pg_stats_t;

typedef void (*ev_pg_acquire_fn)(ev_pg_conn_t *c, const char *err, void *arg);
/* res is NULL when err is set; the engine clears res after the callback. */
typedef void (*ev_pg_result_fn)(ev_pg_conn_t *c, PGresult *res, const char *err, void *arg);

ev_pg_pool_t *ev_pg_pool_new(struct event_base *base, const char *conninfo,
                             const ev_pg_opts_t *opts);
/* Closes every connection and drops every waiter without calling it back:
 * for shutdown, after the callers (the Lua state) are gone. */
void ev_pg_pool_free(ev_pg_pool_t *p);
ev_pg_conn_t *ev_pg_try_acquire(ev_pg_pool_t *p);
ev_pg_waiter_t *ev_pg_wait(ev_pg_pool_t *p, ev_pg_acquire_fn fn, void *arg);
void ev_pg_wait_cancel(ev_pg_waiter_t *w);
/* values may hold NULLs (SQL NULL); text format. Returns 0, or -1 when the
 * query could not even be sent (the callback is then not called). */
int ev_pg_query(ev_pg_conn_t *c, const char *sql, int nparams, const char *const *values,
                ev_pg_result_fn fn, void *arg);
void ev_pg_release(ev_pg_conn_t *c);
void ev_pg_abandon(ev_pg_conn_t *c);
PGconn *ev_pg_raw(ev_pg_conn_t *c);
/* Calls fn when input arrives on a leased connection between queries (LISTEN
 * notifications: read them with PQnotifies), or when it breaks (err set).
 * fn NULL stops watching. */
typedef void (*ev_pg_watch_fn)(ev_pg_conn_t *c, const char *err, void *arg);
void ev_pg_watch(ev_pg_conn_t *c, ev_pg_watch_fn fn, void *arg);
void ev_pg_stats(const ev_pg_pool_t *p, ev_pg_stats_t *out);

#endif
