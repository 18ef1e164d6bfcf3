/* test_embedded_migrate.c - embedded Postgres/Redis and migrations, end to end.
 *
 * One pair of servers is started under a temporary home for the whole group
 * (initdb takes seconds); the tests run in order against it: reuse by a second
 * start, migrations (apply once, failure rolls back, edit refused, status),
 * then stop, restart over a stale postmaster.pid, and the /tmp run dir used
 * for a home too long for a socket path. Works as root (servers then run as
 * user "evently") and as an ordinary user. */
#define _XOPEN_SOURCE 700 /* nftw */
#define _DEFAULT_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "embedded.h"
#include "migrate.h"
#include "redis_url.h"

typedef struct {
    char home[64];
    char migrations[64];
    ev_embedded_t e;
} fixture_t;

/* What the Redis of a "unix:[password@]/path" URL answers to PING, sent
 * after AUTH when auth is set and the URL has a password. */
static void redis_answer(const char *url, int auth, char *buf, size_t cap)
{
    ev_redis_url_t u;
    char err[128], cmd[256];
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct timeval tv = {2, 0};
    int fd;
    buf[0] = '\0';
    if (ev_redis_url_parse(url, &u, err, sizeof err) != 0)
        return;
    if (u.path && strlen(u.path) < sizeof sa.sun_path &&
        (fd = socket(AF_UNIX, SOCK_STREAM, 0)) >= 0) {
        strcpy(sa.sun_path, u.path);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        snprintf(cmd, sizeof cmd, "%s%s%sPING\r\n", auth && u.pass ? "AUTH " : "",
                 auth && u.pass ? u.pass : "", auth && u.pass ? "\r\n" : "");
        size_t n = 0;
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
            write(fd, cmd, strlen(cmd)) > 0) {
            for (ssize_t got; n < cap - 1 && !strstr(buf, "PONG") && !strstr(buf, "NOAUTH") &&
                              (got = read(fd, buf + n, cap - 1 - n)) > 0;) {
                n += (size_t)got;
                buf[n] = '\0';
            }
        }
        close(fd);
    }
    ev_redis_url_free(&u);
}

static int redis_ping(const char *url)
{
    char buf[64];
    redis_answer(url, 1, buf, sizeof buf);
    return strstr(buf, "+PONG") != NULL;
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void remove_file(const char *dir, const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void rm_rf(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* One value from a query on the embedded database. */
static char *query1(const char *conninfo, const char *sql)
{
    PGconn *c = PQconnectdb(conninfo);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    PGresult *r = PQexec(c, sql);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    char *v = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(c);
    return v;
}

static void assert_query(const char *conninfo, const char *sql, const char *want)
{
    char *v = query1(conninfo, sql);
    assert_string_equal(v, want);
    free(v);
}

/* Runs f on a memory stream; returns what it printed (caller frees). */
static char *captured(int (*f)(const char *, const char *, FILE *, char *, size_t),
                      const char *conninfo, const char *dir, int *rc, char *err, size_t errlen)
{
    /* static: GCC at -O3 takes a local here for a dangling pointer
     * (-Wdangling-pointer), not knowing open_memstream owns the buffer */
    static char *buf;
    static size_t len;
    buf = NULL;
    len = 0;
    FILE *out = open_memstream(&buf, &len);
    assert_non_null(out);
    err[0] = '\0';
    *rc = f(conninfo, dir, out, err, errlen);
    fclose(out);
    return buf;
}

static void assert_servers_gone(const char *database_url, const char *redis_url, int redis_pid)
{
    char ci[512];
    snprintf(ci, sizeof ci, "%s connect_timeout=2", database_url);
    assert_int_equal(PQping(ci), PQPING_NO_RESPONSE);
    assert_false(redis_ping(redis_url));
    if (redis_pid > 0)
        assert_true(kill(redis_pid, 0) != 0 && errno == ESRCH);
}

static int group_setup(void **state)
{
    static fixture_t fx;
    char err[512];
    strcpy(fx.home, "/tmp/evently-test-XXXXXX");
    strcpy(fx.migrations, "/tmp/evently-mig-XXXXXX");
    if (!mkdtemp(fx.home) || !mkdtemp(fx.migrations))
        return -1;
    if (ev_embedded_start(&fx.e, fx.home, 1, 1, err, sizeof err) != 0) {
        fprintf(stderr, "ev_embedded_start: %s\n", err);
        return -1;
    }
    *state = &fx;
    return 0;
}

static int group_teardown(void **state)
{
    fixture_t *fx = *state;
    ev_embedded_stop(&fx->e);
    ev_embedded_stop(&fx->e); /* safe twice */
    rm_rf(fx->home);
    rm_rf(fx->migrations);
    return 0;
}

static void test_started(void **state)
{
    fixture_t *fx = *state;
    char want[256];
    assert_int_equal(fx->e.started_pg, 1);
    assert_int_equal(fx->e.started_redis, 1);
    assert_true(fx->e.redis_pid > 0);
    snprintf(want, sizeof want, "%s/run", fx->home);
    assert_string_equal(fx->e.run_dir, want);
    snprintf(want, sizeof want, "host=%s/run port=5432 dbname=evently user=evently", fx->home);
    assert_string_equal(fx->e.database_url, want);
    /* "unix:<64 hex of password>@<home>/run/redis.sock" */
    snprintf(want, sizeof want, "@%s/run/redis.sock", fx->home);
    assert_true(strncmp(fx->e.redis_url, "unix:", 5) == 0);
    assert_int_equal(strspn(fx->e.redis_url + 5, "0123456789abcdef"), 64);
    assert_string_equal(fx->e.redis_url + 5 + 64, want);
    assert_int_equal(PQping(fx->e.database_url), PQPING_OK);
    assert_true(redis_ping(fx->e.redis_url));
    char answer[64]; /* and without the password it answers nothing else */
    redis_answer(fx->e.redis_url, 0, answer, sizeof answer);
    assert_true(strncmp(answer, "-NOAUTH", 7) == 0);
    struct stat st;
    snprintf(want, sizeof want, "%s/pg", fx->home);
    assert_int_equal(stat(want, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("evently");
        assert_non_null(pw);
        assert_int_equal(st.st_uid, pw->pw_uid);
    }
}

static void test_second_start_reuses(void **state)
{
    fixture_t *fx = *state;
    ev_embedded_t e2;
    char err[512];
    assert_int_equal(ev_embedded_start(&e2, fx->home, 1, 1, err, sizeof err), 0);
    assert_int_equal(e2.started_pg, 0);
    assert_int_equal(e2.started_redis, 0);
    assert_string_equal(e2.database_url, fx->e.database_url);
    assert_string_equal(e2.redis_url, fx->e.redis_url);
    ev_embedded_stop(&e2); /* stops nothing it did not start */
    assert_null(e2.home);
    assert_int_equal(PQping(fx->e.database_url), PQPING_OK);
    assert_true(redis_ping(fx->e.redis_url));
}

static void test_missing_dir_is_empty(void **state)
{
    fixture_t *fx = *state;
    char err[512];
    assert_int_equal(
        ev_migrate_up(fx->e.database_url, "/nonexistent/migrations", NULL, err, sizeof err), 0);
}

static void test_migrations_apply_once(void **state)
{
    fixture_t *fx = *state;
    char err[512];
    int rc;
    write_file(fx->migrations, "0001_init.sql",
               "CREATE TABLE venue (id bigserial PRIMARY KEY, name text NOT NULL);\n"
               "INSERT INTO venue (name) VALUES ('Hall');\n");
    write_file(fx->migrations, "0002_events.sql",
               "CREATE TABLE event (id bigserial PRIMARY KEY, venue_id bigint REFERENCES venue);\n"
               "-- a comment\nINSERT INTO event (venue_id) SELECT id FROM venue;\n");
    write_file(fx->migrations, "README", "not a migration");
    write_file(fx->migrations, "12_short.sql", "SELECT broken");
    write_file(fx->migrations, "0003_backup.sql~", "SELECT broken");

    char *out = captured(ev_migrate_up, fx->e.database_url, fx->migrations, &rc, err, sizeof err);
    assert_int_equal(rc, 2);
    assert_string_equal(out, "applied 0001_init.sql\napplied 0002_events.sql\n");
    free(out);

    out = captured(ev_migrate_up, fx->e.database_url, fx->migrations, &rc, err, sizeof err);
    assert_int_equal(rc, 0);
    assert_string_equal(out, "");
    free(out);
    assert_query(fx->e.database_url, "SELECT count(*) FROM event", "1");
    assert_query(fx->e.database_url,
                 "SELECT string_agg(version || ':' || name, ',' ORDER BY "
                 "version) FROM schema_migrations",
                 "1:0001_init.sql,2:0002_events.sql");
}

static void test_status_lists_pending(void **state)
{
    fixture_t *fx = *state;
    char err[512];
    int rc;
    write_file(fx->migrations, "0010_later.sql", "SELECT 1;");
    char *out =
        captured(ev_migrate_status, fx->e.database_url, fx->migrations, &rc, err, sizeof err);
    remove_file(fx->migrations, "0010_later.sql");
    assert_int_equal(rc, 0);
    char *l2 = strchr(out, '\n') + 1, *l3 = strchr(l2, '\n') + 1;
    assert_memory_equal(out, "applied  0001_init.sql  20", 26);
    assert_memory_equal(l2, "applied  0002_events.sql  20", 28);
    assert_string_equal(l3, "pending  0010_later.sql\n");
    free(out);
}

static void test_failed_migration_rolls_back(void **state)
{
    fixture_t *fx = *state;
    char err[512];
    write_file(fx->migrations, "0003_bad.sql", "CREATE TABLE half (id int);\n\nSELEC 1;\n");
    int rc = ev_migrate_up(fx->e.database_url, fx->migrations, NULL, err, sizeof err);
    remove_file(fx->migrations, "0003_bad.sql");
    assert_int_equal(rc, -1);
    assert_string_equal(err, "migration 0003_bad.sql failed: ERROR:  syntax error at or near "
                             "\"SELEC\" (line 3)");
    assert_query(fx->e.database_url, "SELECT to_regclass('half') IS NULL", "t");
    assert_query(fx->e.database_url, "SELECT count(*) FROM schema_migrations", "2");
    /* the advisory lock went with the error path */
    assert_query(fx->e.database_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
                 "0");
}

static void test_edited_migration_refused(void **state)
{
    fixture_t *fx = *state;
    char err[512];
    int rc;
    write_file(fx->migrations, "0001_init.sql", "CREATE TABLE venue (id int);\n");
    write_file(fx->migrations, "0004_new.sql", "CREATE TABLE never (id int);\n");
    rc = ev_migrate_up(fx->e.database_url, fx->migrations, NULL, err, sizeof err);
    assert_int_equal(rc, -1);
    assert_string_equal(err, "migration 0001_init.sql was edited after it was applied "
                             "(checksum mismatch); add a new migration instead");
    /* refused before anything ran */
    assert_query(fx->e.database_url, "SELECT to_regclass('never') IS NULL", "t");

    char *out =
        captured(ev_migrate_status, fx->e.database_url, fx->migrations, &rc, err, sizeof err);
    assert_int_equal(rc, 0);
    assert_memory_equal(out, "edited   0001_init.sql  20", 26);
    assert_non_null(strstr(out, "\napplied  0002_events.sql  20"));
    assert_non_null(strstr(out, "\npending  0004_new.sql\n"));
    free(out);
    remove_file(fx->migrations, "0004_new.sql");
}

static void test_duplicate_number_refused(void **state)
{
    fixture_t *fx = *state;
    char dir[64] = "/tmp/evently-dup-XXXXXX", err[512];
    assert_non_null(mkdtemp(dir));
    write_file(dir, "0007_a.sql", "SELECT 1;");
    write_file(dir, "00007_b.sql", "SELECT 1;");
    int rc = ev_migrate_up(fx->e.database_url, dir, NULL, err, sizeof err);
    rm_rf(dir);
    assert_int_equal(rc, -1);
    assert_non_null(strstr(err, "have the same number"));
}

static void test_stop_ends_servers(void **state)
{
    fixture_t *fx = *state;
    char *db = strdup(fx->e.database_url), *redis = strdup(fx->e.redis_url);
    int pid = fx->e.redis_pid;
    ev_embedded_stop(&fx->e);
    assert_null(fx->e.database_url);
    assert_servers_gone(db, redis, pid);
    free(db);
    free(redis);
}

/* A live process whose pid is left in postmaster.pid, as after a crash and
 * pid reuse in a container: start must still succeed. As root it runs as
 * "evently", since postgres treats a pid it may not signal as dead. */
static pid_t start_sleeper(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        struct passwd *pw = geteuid() == 0 ? getpwnam("evently") : NULL;
        if (pw && (setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0))
            _exit(1);
        execl("/bin/sleep", "sleep", "60", (char *)NULL);
        _exit(1);
    }
    return pid;
}

static void test_restart_over_stale_pid(void **state)
{
    fixture_t *fx = *state;
    char path[128], text[256], err[512];
    pid_t sleeper = start_sleeper();
    assert_true(sleeper > 0);
    snprintf(path, sizeof path, "%s/pg/postmaster.pid", fx->home);
    snprintf(text, sizeof text, "%d\n%s/pg\n", (int)sleeper, fx->home);
    write_file(fx->home, "pg/postmaster.pid", text);

    int rc = ev_embedded_start(&fx->e, fx->home, 1, 0, err, sizeof err);
    kill(sleeper, SIGKILL);
    waitpid(sleeper, NULL, 0);
    if (rc != 0)
        fail_msg("%s", err);
    assert_int_equal(fx->e.started_pg, 1);
    assert_int_equal(fx->e.started_redis, 0);
    assert_null(fx->e.redis_url);
    assert_query(fx->e.database_url, "SELECT count(*) FROM schema_migrations", "2");
    char *db = strdup(fx->e.database_url);
    ev_embedded_stop(&fx->e);
    assert_servers_gone(db, "unix:/nonexistent", 0);
    free(db);
}

/* "$home/run/.s.PGSQL.5432" past 100 bytes: sockets go to /tmp/evently-<hash>. */
static void test_long_home_uses_tmp_run_dir(void **state)
{
    fixture_t *fx = *state;
    char home[256], err[512];
    ev_embedded_t e;
    snprintf(home, sizeof home, "%s/%s", fx->home,
             "a-rather-long-directory-name-for-state/another-long-directory-name");
    assert_true(strlen(home) + strlen("/run/.s.PGSQL.5432") > 100);
    assert_int_equal(ev_embedded_start(&e, home, 0, 1, err, sizeof err), 0);
    assert_int_equal(strncmp(e.run_dir, "/tmp/evently-", 13), 0);
    assert_int_equal(strlen(e.run_dir), 13 + 12);
    assert_null(e.database_url);
    assert_int_equal(e.started_redis, 1);
    assert_true(redis_ping(e.redis_url));
    char *run = strdup(e.run_dir), *redis = strdup(e.redis_url);
    int pid = e.redis_pid;
    ev_embedded_stop(&e);
    assert_false(redis_ping(redis));
    assert_true(kill(pid, 0) != 0 && errno == ESRCH);
    rm_rf(run);
    free(run);
    free(redis);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_started),
        cmocka_unit_test(test_second_start_reuses),
        cmocka_unit_test(test_missing_dir_is_empty),
        cmocka_unit_test(test_migrations_apply_once),
        cmocka_unit_test(test_status_lists_pending),
        cmocka_unit_test(test_failed_migration_rolls_back),
        cmocka_unit_test(test_edited_migration_refused),
        cmocka_unit_test(test_duplicate_number_refused),
        cmocka_unit_test(test_stop_ends_servers),
        cmocka_unit_test(test_restart_over_stale_pid),
        cmocka_unit_test(test_long_home_uses_tmp_run_dir),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
