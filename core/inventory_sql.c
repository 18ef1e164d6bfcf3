/* inventory_sql.c - see inventory_sql.h.
 *
 * Statements are templates with named holes, {table}, {key}, ..., filled by
 * fill() from the definition: a hole says what goes there, where a long
 * positional printf would leave the reader counting arguments. Values are
 * copied as they are, never scanned for holes themselves. */
#define _GNU_SOURCE
#include "inventory_sql.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const NAMES[EV_INV_SQL_COUNT] = {
    "batch",   "batch_limited", "lock",   "hold",      "confirm",
    "release", "give_back",     "resize", "available", "sweep"};

int ev_inv_sql_op(const char *name)
{
    for (int i = 0; i < EV_INV_SQL_COUNT; i++)
        if (strcmp(NAMES[i], name) == 0)
            return i;
    return -1;
}

static int ident_ok(const char *s, int dots)
{
    if (!s || !*s || strlen(s) > 63)
        return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' ||
              (dots && *p == '.')))
            return 0;
    return 1;
}

const char *ev_inv_sql_check(const ev_inv_def_t *d)
{
    if (!ident_ok(d->name, 0))
        return "name";
    if (!ident_ok(d->table, 1))
        return "table";
    if (!ident_ok(d->key, 0))
        return "key";
    if (!ident_ok(d->available, 0))
        return "available";
    if (!ident_ok(d->capacity, 0))
        return "capacity";
    if (d->touch && !ident_ok(d->touch, 0))
        return "touch";
    if (d->record && !ident_ok(d->record_seq, 1))
        return "record_seq";
    if (d->after[0] && !d->record)
        return "after (needs record)";
    return NULL;
}

typedef struct {
    const char *name, *value;
} hole_t;

/* The template with each {name} replaced by its value; NULL out of memory.
 * A brace that names no hole is kept as it is. */
static char *fill(const char *tmpl, const hole_t *holes)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    if (!f)
        return NULL;
    for (const char *p = tmpl; *p;) {
        const hole_t *h = NULL;
        if (*p == '{') {
            for (const hole_t *c = holes; c->name && !h; c++) {
                size_t n = strlen(c->name);
                if (strncmp(p + 1, c->name, n) == 0 && p[1 + n] == '}')
                    h = c;
            }
        }
        if (h) {
            fputs(h->value, f);
            p += strlen(h->name) + 2;
        } else {
            fputc(*p++, f);
        }
    }
    if (fclose(f) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, f);
    if (vasprintf(&s, f, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

/* The take. The walk: claims in arrival order against what is left; a claim
 * that does not fit is skipped and later smaller ones may still fit. With a
 * limit the owner's held total (read after the row lock) also bounds it.
 * The new value is the locked row's (pool) less what was granted, never
 * t's: pool's FOR UPDATE returns the newest version after any wait, but the
 * UPDATE's scan reads the statement's older snapshot, and Postgres checks
 * the table's constraints on that first candidate row before it notices the
 * concurrent update and recomputes it. Units given back while the take
 * waited made that candidate negative, and the batch failed its CHECK.
 * Nothing may be tested on t in WHERE either: a stale row failing it would
 * be skipped without a recheck, and the grants recorded without the take. */
static const char BATCH[] =
    "WITH RECURSIVE\n"
    "req AS (SELECT * FROM unnest($2::int[], $3::bigint[], $4::int[], $5::text[]) AS t(seq, "
    "owner, quantity, tag)),\n"
    "pool AS (SELECT {key} AS key, {available} AS available, ({max_claim})::int AS "
    "max_claim{columns} FROM {table}\n"
    "  WHERE {key} = $1 AND ({open}) FOR UPDATE),\n"
    "{held_cte}"
    "walk AS (\n"
    "  SELECT 0 AS seq, pool.available AS left_after, 0 AS took, false AS over, 0 AS held FROM "
    "pool\n"
    "  UNION ALL\n"
    "  SELECT q.seq,\n"
    "    CASE WHEN f.fits THEN w.left_after - q.quantity ELSE w.left_after END,\n"
    "    CASE WHEN f.fits THEN q.quantity ELSE 0 END, f.over, f.held\n"
    "  FROM walk w JOIN req q ON q.seq = w.seq + 1 CROSS JOIN pool\n"
    "  CROSS JOIN LATERAL (SELECT {over} AS over, {held} AS held) o\n"
    "  CROSS JOIN LATERAL (SELECT o.over, o.held, q.quantity <= w.left_after\n"
    "      AND q.quantity <= pool.max_claim AND NOT o.over AS fits) f),\n"
    "granted AS MATERIALIZED (\n"
    "  SELECT q.seq, q.owner, q.quantity, q.tag, {ids} AS id{columns}\n"
    "  FROM walk w JOIN req q USING (seq) CROSS JOIN pool WHERE w.took > 0),\n"
    "taken AS (\n"
    "  UPDATE {table} t SET {available} = pool.available - s.total{touch}\n"
    "  FROM pool, (SELECT sum(quantity) AS total FROM granted) s\n"
    "  WHERE t.{key} = $1 AND s.total > 0 RETURNING t.{available}),\n"
    "{recorded_ctes}"
    "last AS (SELECT min(left_after) AS left_after FROM walk)\n"
    "SELECT w.seq AS inv_seq, w.took AS inv_took, w.over AS inv_over, w.held AS inv_held,\n"
    "       last.left_after AS inv_left, pool.max_claim AS inv_max, r.*\n"
    "FROM walk w CROSS JOIN pool CROSS JOIN last\n"
    "  LEFT JOIN granted g ON g.seq = w.seq LEFT JOIN recorded r ON r.id = g.id\n"
    "WHERE w.seq > 0";

static const char HELD_OF_OWNER[] =
    "coalesce((SELECT h.held FROM held h WHERE h.owner = q.owner), 0)";

/* The record CTE and the caller's statements after it. */
static char *recorded_ctes(const ev_inv_def_t *d)
{
    char *s = d->record ? fmt("recorded AS (%s),\n", d->record)
                        : strdup("recorded AS (SELECT granted.id FROM granted),\n");
    for (int i = 0; s && i < EV_INV_AFTERS && d->after[i]; i++) {
        char *more = fmt("%safter_%d AS (%s),\n", s, i + 1, d->after[i]);
        free(s);
        s = more;
    }
    return s;
}

static char *compose_batch(const ev_inv_def_t *d, const hole_t *common, int limited)
{
    char *held_cte = limited ? fmt("held AS (%s),\n", d->owner_held) : strdup("");
    char *over = limited ? fmt("(q.quantity + %s) > $6::int", HELD_OF_OWNER) : strdup("false");
    char *records = recorded_ctes(d);
    char *ids = d->record ? fmt("nextval('%s')", d->record_seq) : strdup("q.seq::bigint");
    char *s = NULL;
    if (held_cte && over && records && ids) {
        hole_t holes[16];
        int n = 0;
        while (common[n].name) {
            holes[n] = common[n];
            n++;
        }
        holes[n++] = (hole_t){"held_cte", held_cte};
        holes[n++] = (hole_t){"over", over};
        holes[n++] = (hole_t){"held", limited ? HELD_OF_OWNER : "0"};
        holes[n++] = (hole_t){"recorded_ctes", records};
        holes[n++] = (hole_t){"ids", ids};
        holes[n] = (hole_t){NULL, NULL};
        s = fill(BATCH, holes);
    }
    free(held_cte);
    free(over);
    free(records);
    free(ids);
    return s;
}

static const char LOCK[] = "SELECT 1 FROM {table} WHERE {key} = $1 FOR UPDATE";

static const char HOLD[] =
    "WITH p AS (UPDATE {table} SET {available} = {available} - $3{touch} WHERE {key} = $1 AND "
    "{available} >= $3 AND $3 >= 1\n"
    "  AND $3 <= ({max_claim}) AND ({open}) RETURNING {key} AS key, {available} AS available)\n"
    "INSERT INTO inventory_holds (pool, key, owner, quantity, expires_at)\n"
    "SELECT '{name}', p.key, $2, $3, now() + make_interval(secs => $4) FROM p\n"
    "RETURNING id, pool, key, owner, quantity, state, expires_at, created_at";

static const char CONFIRM[] =
    "UPDATE inventory_holds SET state = 'confirmed', settled_at = now()\n"
    "WHERE id = $1 AND pool = '{name}' AND state = 'held' AND expires_at > now()\n"
    "  AND ($2::bigint IS NULL OR owner = $2)\n"
    "RETURNING id, pool, key, owner, quantity, state, expires_at, created_at";

/* the units go back at once */
static const char RELEASE[] =
    "WITH h AS (UPDATE inventory_holds SET state = 'released', settled_at = now()\n"
    "  WHERE id = $1 AND pool = '{name}' AND state = 'held' AND ($2::bigint IS NULL OR owner = "
    "$2)\n"
    "  RETURNING id, key, owner, quantity),\n"
    "p AS (UPDATE {table} t SET {available} = t.{available} + h.quantity{touch} FROM h WHERE "
    "t.{key} = h.key RETURNING t.{available} AS available)\n"
    "SELECT h.id, h.key, h.owner, h.quantity, p.available FROM h, p";

/* never more than is taken (capacity less available less what holds keep:
 * those come back through their hold) */
static const char GIVE_BACK[] =
    "UPDATE {table} SET {available} = {available} + $2{touch} WHERE {key} = $1 AND $2 >= 1\n"
    "  AND {available} + $2 + (SELECT coalesce(sum(quantity), 0) FROM inventory_holds\n"
    "                 WHERE pool = '{name}' AND key = $1 AND state = 'held') <= {capacity}\n"
    "RETURNING {available} AS available";

/* never below what is taken or held */
static const char RESIZE[] =
    "UPDATE {table} SET {available} = {available} + ($2 - {capacity}), {capacity} = $2{touch} "
    "WHERE {key} = $1 AND {capacity} - {available} <= $2\n"
    "RETURNING {capacity} AS capacity, {available} AS available";

static const char AVAILABLE[] =
    "SELECT {available} AS available, {capacity} AS capacity FROM {table} WHERE {key} = $1";

/* each overdue hold exactly once (state flip under the row lock; SKIP LOCKED
 * lets sweepers on every worker share the work) */
static const char SWEEP[] =
    "WITH h AS (UPDATE inventory_holds SET state = 'expired', settled_at = now()\n"
    "  WHERE id IN (SELECT id FROM inventory_holds WHERE pool = '{name}' AND state = 'held'\n"
    "               AND expires_at <= now() ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP "
    "LOCKED)\n"
    "    AND state = 'held'\n"
    "  RETURNING id, key, owner, quantity),\n"
    "back AS (UPDATE {table} t SET {available} = t.{available} + s.total{touch}\n"
    "  FROM (SELECT key, sum(quantity) AS total FROM h GROUP BY key) s WHERE t.{key} = s.key\n"
    "  RETURNING t.{key} AS key, t.{available} AS available)\n"
    "SELECT h.id, h.key, h.owner, h.quantity, back.available FROM h JOIN back ON back.key = "
    "h.key\n"
    "ORDER BY h.id";

int ev_inv_sql_compose(const ev_inv_def_t *d, char *sql[EV_INV_SQL_COUNT])
{
    char touch[80] = ""; /* an identifier: at most 63 bytes */
    if (d->touch)
        snprintf(touch, sizeof touch, ", %s = now()", d->touch);
    char *columns = d->columns ? fmt(", %s", d->columns) : strdup("");
    memset(sql, 0, sizeof(char *) * EV_INV_SQL_COUNT);
    if (!columns)
        return -1;
    const hole_t common[] = {
        {"table", d->table},
        {"key", d->key},
        {"available", d->available},
        {"capacity", d->capacity},
        {"name", d->name},
        {"open", d->open ? d->open : "true"},
        {"max_claim", d->max_claim ? d->max_claim : "2147483647"},
        {"columns", columns},
        {"touch", touch},
        {NULL, NULL},
    };
    sql[EV_INV_SQL_BATCH] = compose_batch(d, common, 0);
    sql[EV_INV_SQL_BATCH_LIMITED] = d->owner_held ? compose_batch(d, common, 1) : strdup("");
    sql[EV_INV_SQL_LOCK] = fill(LOCK, common);
    sql[EV_INV_SQL_HOLD] = fill(HOLD, common);
    sql[EV_INV_SQL_CONFIRM] = fill(CONFIRM, common);
    sql[EV_INV_SQL_RELEASE] = fill(RELEASE, common);
    sql[EV_INV_SQL_GIVE_BACK] = fill(GIVE_BACK, common);
    sql[EV_INV_SQL_RESIZE] = fill(RESIZE, common);
    sql[EV_INV_SQL_AVAILABLE] = fill(AVAILABLE, common);
    sql[EV_INV_SQL_SWEEP] = fill(SWEEP, common);
    free(columns);
    for (int i = 0; i < EV_INV_SQL_COUNT; i++) {
        if (!sql[i]) {
            for (int j = 0; j < EV_INV_SQL_COUNT; j++) {
                free(sql[j]);
                sql[j] = NULL;
            }
            return -1;
        }
    }
    return 0;
}
