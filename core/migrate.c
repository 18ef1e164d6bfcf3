/* migrate.c - applies migrations/NNNN_name.sql in order; see migrate.h.
 *
 * A migration is a file named <4+ digits>_<name>.sql; its number orders it
 * and identifies it in schema_migrations (version, name, checksum,
 * applied_at). Other files in the directory are ignored, two files with one
 * number are an error, a missing directory holds no migrations.
 *
 * ev_migrate_up(): scan the directory, take a session advisory lock (so
 * instances starting together apply each file once), create
 * schema_migrations if needed, refuse if any applied file was edited (checked
 * for all files before applying any), then run each pending file in its own
 * transaction: BEGIN, the whole file as one multi-statement simple query, the
 * INSERT that records it, COMMIT. A file therefore cannot use statements that
 * refuse a transaction block (CREATE INDEX CONCURRENTLY, VACUUM).
 * ev_migrate_status(): the same comparison, read-only and without the lock.
 *
 * Extending: a new rule about file names goes in migration_number(); a new
 * per-file state goes in print_status() and the checks of ev_migrate_up(). */
#include "migrate.h"

#include <dirent.h>
#include <errno.h>
#include <libpq-fe.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"

/* "evently\0" in ASCII: a key no other code picks by accident. */
#define LOCK_KEY "7311142570156652800"

#define CREATE_TABLE                                                          \
    "CREATE TABLE IF NOT EXISTS schema_migrations ("                          \
    " version bigint PRIMARY KEY, name text NOT NULL, checksum text NOT NULL," \
    " applied_at timestamptz NOT NULL DEFAULT now())"

#define SELECT_APPLIED                                                         \
    "SELECT version, name, checksum,"                                          \
    " to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')" \
    " FROM schema_migrations ORDER BY version"

typedef struct {
    long long version;
    char *name;    /* file name, e.g. 0001_init.sql */
    char *sql;     /* content, NUL-terminated */
    size_t len;
    char sum[65];  /* hex sha256 of the content */
} mfile_t;

typedef struct {
    mfile_t *v;
    size_t n, cap;
} mlist_t;

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- files ------------------------------------------------------------- */

/* The number of a migration file name, or -1 if the name is not one. */
static long long migration_number(const char *name)
{
    size_t digits = strspn(name, "0123456789");
    size_t len = strlen(name);
    if (digits < 4 || name[digits] != '_' || len < digits + 1 + 1 + 4 ||
        strcmp(name + len - 4, ".sql") != 0)
        return -1;
    errno = 0;
    long long v = strtoll(name, NULL, 10);
    return errno == ERANGE ? -2 : v;
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rbe");
    char *buf = NULL;
    long size;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
        !(buf = malloc((size_t)size + 1)) || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[size] = '\0';
    *len = (size_t)size;
    return buf;
}

static void sha256_hex(const char *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!EVP_Digest(data, len, md, &n, EVP_sha256(), NULL))
        n = 0;
    for (unsigned int i = 0; i < n && i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    out[2 * n] = '\0';
}

static void list_free(mlist_t *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].name);
        free(l->v[i].sql);
    }
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int add_file(mlist_t *l, const char *dir, const char *name, long long version,
                    char *err, size_t errlen)
{
    char path[PATH_MAX];
    struct stat st;
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return fail(err, errlen, "path too long: %s/%s", dir, name);
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return 0; /* a directory or dangling link named like a migration */
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        mfile_t *v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return fail(err, errlen, "out of memory");
        l->v = v;
        l->cap = cap;
    }
    mfile_t *f = &l->v[l->n];
    memset(f, 0, sizeof *f);
    f->version = version;
    f->name = strdup(name);
    errno = 0;
    f->sql = read_all(path, &f->len);
    l->n++; /* counted now so list_free() frees a half-filled entry */
    if (!f->name || !f->sql)
        return fail(err, errlen, "cannot read %s: %s", path, strerror(errno ? errno : ENOMEM));
    sha256_hex(f->sql, f->len, f->sum);
    return 0;
}

static int by_version(const void *a, const void *b)
{
    long long x = ((const mfile_t *)a)->version, y = ((const mfile_t *)b)->version;
    return (x > y) - (x < y);
}

/* Reads every migration in dir, sorted by number. */
static int scan_dir(const char *dir, mlist_t *l, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int rc = 0;
    if (!d)
        return errno == ENOENT ? 0 : fail(err, errlen, "cannot open migrations directory %s: "
                                          "%s", dir, strerror(errno));
    while (rc == 0 && (de = readdir(d)) != NULL) {
        long long v = migration_number(de->d_name);
        if (v == -2)
            rc = fail(err, errlen, "migration number too large: %s", de->d_name);
        else if (v >= 0)
            rc = add_file(l, dir, de->d_name, v, err, errlen);
    }
    closedir(d);
    if (rc != 0)
        return -1;
    qsort(l->v, l->n, sizeof *l->v, by_version);
    for (size_t i = 1; i < l->n; i++) {
        if (l->v[i].version == l->v[i - 1].version)
            return fail(err, errlen, "migrations %s and %s have the same number",
                        l->v[i - 1].name, l->v[i].name);
    }
    return 0;
}

/* ---- database ---------------------------------------------------------- */

static void notice(void *arg, const char *msg)
{
    (void)arg;
    ev_debug("postgres: %.*s", (int)strcspn(msg, "\n"), msg);
}

static PGconn *connect_db(const char *conninfo, char *err, size_t errlen)
{
    PGconn *conn = PQconnectdb(conninfo);
    if (PQstatus(conn) == CONNECTION_OK) {
        /* "relation already exists, skipping" on every run is noise */
        PQsetNoticeProcessor(conn, notice, NULL);
        return conn;
    }
    const char *msg = PQerrorMessage(conn);
    fail(err, errlen, "cannot connect to database: %.*s", (int)strcspn(msg, "\n"), msg);
    PQfinish(conn);
    return NULL;
}

static int result_ok(const PGresult *r)
{
    ExecStatusType s = PQresultStatus(r);
    return r && (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK || s == PGRES_EMPTY_QUERY);
}

/* The first line of the error, and the line of sql it points at: the full
 * message carries a LINE/caret excerpt that reads badly in a one-line error,
 * and its position counts characters from the start of the whole file. */
static void describe_error(PGconn *conn, const PGresult *r, const char *sql, char *buf,
                           size_t len)
{
    const char *msg = r ? PQresultErrorMessage(r) : "";
    const char *pos = r ? PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION) : NULL;
    if (!*msg)
        msg = PQerrorMessage(conn);
    int n = snprintf(buf, len, "%.*s", (int)strcspn(msg, "\n"), msg);
    if (!pos || !sql || n < 0 || (size_t)n >= len)
        return;
    long want = atol(pos), k = 0, line = 1;
    for (const unsigned char *p = (const unsigned char *)sql; *p; p++) {
        if ((*p & 0xC0) != 0x80 && ++k == want) /* not a UTF-8 continuation byte */
            break;
        line += *p == '\n';
    }
    snprintf(buf + n, len - (size_t)n, " (line %ld)", line);
}

static int exec_cmd(PGconn *conn, const char *sql, const char *what, char *err, size_t errlen)
{
    char msg[512];
    PGresult *r = PQexec(conn, sql);
    int rc = 0;
    if (!result_ok(r)) {
        describe_error(conn, r, NULL, msg, sizeof msg);
        rc = fail(err, errlen, "%s: %s", what, msg);
    }
    PQclear(r);
    return rc;
}

static PGresult *load_applied(PGconn *conn, char *err, size_t errlen)
{
    char msg[512];
    PGresult *r = PQexec(conn, SELECT_APPLIED);
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        return r;
    describe_error(conn, r, NULL, msg, sizeof msg);
    fail(err, errlen, "cannot read schema_migrations: %s", msg);
    PQclear(r);
    return NULL;
}

static long long row_version(const PGresult *r, int row)
{
    return strtoll(PQgetvalue(r, row, 0), NULL, 10);
}

static int find_row(const PGresult *r, long long version)
{
    for (int i = 0; r && i < PQntuples(r); i++)
        if (row_version(r, i) == version)
            return i;
    return -1;
}

/* BEGIN; the file; the record; COMMIT. Rolls back on any failure. */
static int apply_one(PGconn *conn, const mfile_t *f, char *err, size_t errlen)
{
    char ver[32], msg[512];
    const char *params[3] = {ver, f->name, f->sum};
    PGresult *r = NULL;
    int rc = -1;
    snprintf(ver, sizeof ver, "%lld", f->version);
    if (exec_cmd(conn, "BEGIN", "BEGIN", err, errlen) != 0)
        goto done;
    r = PQexec(conn, f->sql);
    if (!result_ok(r)) {
        describe_error(conn, r, f->sql, msg, sizeof msg);
        fail(err, errlen, "migration %s failed: %s", f->name, msg);
        goto done;
    }
    PQclear(r);
    r = PQexecParams(conn, "INSERT INTO schema_migrations (version, name, checksum) "
                     "VALUES ($1, $2, $3)", 3, NULL, params, NULL, NULL, 0);
    if (!result_ok(r)) {
        describe_error(conn, r, NULL, msg, sizeof msg);
        fail(err, errlen, "migration %s failed: %s", f->name, msg);
        goto done;
    }
    PQclear(r);
    r = NULL;
    /* deferred constraints fail here */
    if (exec_cmd(conn, "COMMIT", "COMMIT", msg, sizeof msg) != 0) {
        fail(err, errlen, "migration %s failed: %s", f->name, msg);
        goto done;
    }
    rc = 0;
done:
    PQclear(r);
    if (rc != 0 && PQtransactionStatus(conn) != PQTRANS_IDLE)
        PQclear(PQexec(conn, "ROLLBACK"));
    return rc;
}

/* Ends any open transaction, then drops the advisory lock. */
static void unlock(PGconn *conn)
{
    if (PQstatus(conn) != CONNECTION_OK)
        return; /* the server dropped the lock with the session */
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        PQclear(PQexec(conn, "ROLLBACK"));
    PQclear(PQexec(conn, "SELECT pg_advisory_unlock(" LOCK_KEY ")"));
}

/* Refuses before anything runs if an applied file changed. */
static int check_edits(const mlist_t *files, const PGresult *applied, char *err, size_t errlen)
{
    for (size_t i = 0; i < files->n; i++) {
        const mfile_t *f = &files->v[i];
        int row = find_row(applied, f->version);
        if (row >= 0 && strcmp(PQgetvalue(applied, row, 2), f->sum) != 0)
            return fail(err, errlen, "migration %s was edited after it was applied (checksum "
                        "mismatch); add a new migration instead", f->name);
    }
    return 0;
}

int ev_migrate_up(const char *conninfo, const char *dir, FILE *out, char *err, size_t errlen)
{
    mlist_t files = {0};
    PGconn *conn = NULL;
    PGresult *applied = NULL;
    int locked = 0, count = -1, n = 0;

    if (scan_dir(dir, &files, err, errlen) != 0 || !(conn = connect_db(conninfo, err, errlen)))
        goto done;
    if (exec_cmd(conn, "SELECT pg_advisory_lock(" LOCK_KEY ")", "cannot take the migration "
                 "lock", err, errlen) != 0)
        goto done;
    locked = 1;
    /* after the lock: concurrent CREATE TABLE IF NOT EXISTS can still collide */
    if (exec_cmd(conn, CREATE_TABLE, "cannot create schema_migrations", err, errlen) != 0 ||
        !(applied = load_applied(conn, err, errlen)) ||
        check_edits(&files, applied, err, errlen) != 0)
        goto done;
    for (size_t i = 0; i < files.n; i++) {
        if (find_row(applied, files.v[i].version) >= 0)
            continue;
        if (apply_one(conn, &files.v[i], err, errlen) != 0)
            goto done;
        n++;
        ev_debug("applied migration %s", files.v[i].name);
        if (out) {
            fprintf(out, "applied %s\n", files.v[i].name);
            fflush(out);
        }
    }
    count = n;
done:
    if (locked)
        unlock(conn);
    PQclear(applied);
    PQfinish(conn);
    list_free(&files);
    return count;
}

/* ---- status ------------------------------------------------------------ */

/* Files and rows, both sorted by version, merged into one listing. A row
 * without a file is "missing": applied once, since deleted or renamed. */
static void print_status(const mlist_t *files, const PGresult *applied, FILE *out)
{
    size_t i = 0;
    int j = 0, rows = applied ? PQntuples(applied) : 0;
    while (i < files->n || j < rows) {
        const mfile_t *f = i < files->n ? &files->v[i] : NULL;
        long long fv = f ? f->version : LLONG_MAX;
        long long rv = j < rows ? row_version(applied, j) : LLONG_MAX;
        if (rv < fv) {
            fprintf(out, "missing  %s  %s\n", PQgetvalue(applied, j, 1),
                    PQgetvalue(applied, j, 3));
            j++;
        } else if (fv < rv) {
            fprintf(out, "pending  %s\n", f->name);
            i++;
        } else {
            int same = strcmp(PQgetvalue(applied, j, 2), f->sum) == 0;
            fprintf(out, "%s  %s  %s\n", same ? "applied" : "edited ", f->name,
                    PQgetvalue(applied, j, 3));
            i++;
            j++;
        }
    }
}

int ev_migrate_status(const char *conninfo, const char *dir, FILE *out, char *err,
                      size_t errlen)
{
    mlist_t files = {0};
    PGconn *conn = NULL;
    PGresult *exists = NULL, *applied = NULL;
    int rc = -1;

    if (scan_dir(dir, &files, err, errlen) != 0 || !(conn = connect_db(conninfo, err, errlen)))
        goto done;
    /* read-only: a database never migrated has everything pending */
    exists = PQexec(conn, "SELECT to_regclass('schema_migrations') IS NOT NULL");
    if (PQresultStatus(exists) != PGRES_TUPLES_OK || PQntuples(exists) != 1) {
        char msg[512];
        describe_error(conn, exists, NULL, msg, sizeof msg);
        fail(err, errlen, "cannot look up schema_migrations: %s", msg);
        goto done;
    }
    if (strcmp(PQgetvalue(exists, 0, 0), "t") == 0 &&
        !(applied = load_applied(conn, err, errlen)))
        goto done;
    if (out) {
        print_status(&files, applied, out);
        fflush(out);
    }
    rc = 0;
done:
    PQclear(exists);
    PQclear(applied);
    PQfinish(conn);
    list_free(&files);
    return rc;
}
