/* inventory.c - atomic reservation primitives; see inventory.h for the model.
 *
 * Three parts: composing a pool's statements from its definition (once, at
 * define time), the per-row claim queues, and the batch that serves a queue
 * in one statement (or, with an owner limit, BEGIN / lock / statement /
 * COMMIT on one connection). A batch is driven by pg.c callbacks; claims are
 * answered only once the batch's changes are committed. */
#define _GNU_SOURCE
#include "inventory.h"

#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "gate.h"
#include "log.h"
#include "pg.h"

#define KEY_BUCKETS 256
#define KEYS_KEPT 1024 /* row states kept before idle ones are dropped */
#define RETRIES 2 /* a deadlock or serialization failure is retried, not answered */

/* ---- definitions and their statements ---- */

enum { S_BATCH, S_BATCH_LIMITED, S_LOCK, S_HOLD, S_CONFIRM, S_RELEASE, S_GIVE_BACK, S_RESIZE,
       S_AVAILABLE, S_SWEEP, S_COUNT };
static const char *const OPS[S_COUNT] = {"batch", "batch_limited", "lock", "hold", "confirm",
                                         "release", "give_back", "resize", "available", "sweep"};

typedef struct pooldef {
    char *name;
    char *sql[S_COUNT];
    int refs;             /* the registry's and each running batch's */
    struct pooldef *next;
} pooldef_t;

typedef struct keystate keystate_t;
typedef struct batch batch_t;

struct ev_inv_claim {
    ev_inv_t *inv;
    keystate_t *ks;
    int64_t owner;
    int quantity, limit;
    char *tag;                 /* the caller's label for this claim (granted.tag), or NULL */
    ev_inv_claim_fn fn;
    void *arg;
    int started, withdrawn;
    int alone;                 /* its batch failed: it goes again in a batch of its own */
    double deadline;           /* monotonic: withdrawn (BUSY) if not started by then */
    struct event *timer;       /* the queue deadline */
    ev_inv_claim_t *next;      /* queue, then batch order */
};

struct keystate {
    char *pool;
    int64_t key;
    ev_inv_claim_t *head, *tail;
    batch_t *running;
    double open_until;         /* a batch found units left: skip the shared gate */
    struct event *kick;
    keystate_t *next;
};

struct batch {
    ev_inv_t *inv;
    keystate_t *ks;
    pooldef_t *def;
    ev_inv_claim_t **claims;
    int n, limit, step, attempts;
    int committing;            /* the statement that commits was sent: outcome open until answered */
    unsigned changes;          /* gate reopen count when the batch started */
    long long started_ms;
    ev_pg_conn_t *conn;
    ev_pg_waiter_t *waiter;
    PGresult *res;             /* the batch statement's rows, until COMMIT */
    struct event *timer;       /* last resort */
    char *seqs, *owners, *qtys, *tags;
    char keybuf[24], limitbuf[16];
};

struct ev_inv {
    struct event_base *base;
    ev_pg_pool_t *db;
    ev_inv_opts_t o;
    pooldef_t *defs;
    keystate_t *keys[KEY_BUCKETS];
    int nkeys;
    ev_inv_stats_t stats;
};

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

/* The walk: claims in arrival order against what is left; a claim that does
 * not fit is skipped and later smaller ones may still fit. With a limit the
 * owner's held total (read after the row lock) also bounds it. */
static char *compose_batch(const ev_inv_def_t *d, int limited)
{
    const char *open = d->open ? d->open : "true";
    const char *maxc = d->max_claim ? d->max_claim : "2147483647";
    const char *cols = d->columns ? d->columns : "";
    const char *comma = d->columns ? ", " : "";
    char *held = limited ? fmt("held AS (%s),\n", d->owner_held) : strdup("");
    char *over = limited ? strdup("(q.quantity + coalesce((SELECT h.held FROM held h WHERE h.owner = q.owner), 0)) > $6::int")
                         : strdup("false");
    char *heldv = limited ? strdup("coalesce((SELECT h.held FROM held h WHERE h.owner = q.owner), 0)")
                          : strdup("0");
    char *record = d->record ? fmt("recorded AS (%s),\n", d->record)
                             : strdup("recorded AS (SELECT granted.id FROM granted),\n");
    for (int i = 0; record && i < EV_INV_AFTERS && d->after[i]; i++) {
        char *more = fmt("%safter_%d AS (%s),\n", record, i + 1, d->after[i]);
        free(record);
        record = more;
    }
    char *ids = d->record ? fmt("nextval('%s')", d->record_seq) : strdup("q.seq::bigint");
    char touch[80] = "";
    if (d->touch)
        snprintf(touch, sizeof touch, ", %s = now()", d->touch);
    char *s = NULL;
    if (held && over && heldv && record && ids)
        s = fmt("WITH RECURSIVE\n"
                "req AS (SELECT * FROM unnest($2::int[], $3::bigint[], $4::int[], $5::text[]) AS t(seq, owner, quantity, tag)),\n"
                "pool AS (SELECT %s AS key, %s AS available, (%s)::int AS max_claim%s%s FROM %s\n"
                "  WHERE %s = $1 AND (%s) FOR UPDATE),\n"
                "%s"
                "walk AS (\n"
                "  SELECT 0 AS seq, pool.available AS left_after, 0 AS took, false AS over, 0 AS held FROM pool\n"
                "  UNION ALL\n"
                "  SELECT q.seq,\n"
                "    CASE WHEN f.fits THEN w.left_after - q.quantity ELSE w.left_after END,\n"
                "    CASE WHEN f.fits THEN q.quantity ELSE 0 END, f.over, f.held\n"
                "  FROM walk w JOIN req q ON q.seq = w.seq + 1 CROSS JOIN pool\n"
                "  CROSS JOIN LATERAL (SELECT %s AS over, %s AS held) o\n"
                "  CROSS JOIN LATERAL (SELECT o.over, o.held, q.quantity <= w.left_after\n"
                "      AND q.quantity <= pool.max_claim AND NOT o.over AS fits) f),\n"
                "granted AS MATERIALIZED (\n"
                "  SELECT q.seq, q.owner, q.quantity, q.tag, %s AS id%s%s\n"
                "  FROM walk w JOIN req q USING (seq) CROSS JOIN pool WHERE w.took > 0),\n"
                "taken AS (\n"
                "  UPDATE %s t SET %s = t.%s - s.total%s FROM (SELECT sum(quantity) AS total FROM granted) s\n"
                "  WHERE t.%s = $1 AND s.total > 0 RETURNING t.%s),\n"
                "%s"
                "last AS (SELECT min(left_after) AS left_after FROM walk)\n"
                "SELECT w.seq AS inv_seq, w.took AS inv_took, w.over AS inv_over, w.held AS inv_held,\n"
                "       last.left_after AS inv_left, pool.max_claim AS inv_max, r.*\n"
                "FROM walk w CROSS JOIN pool CROSS JOIN last\n"
                "  LEFT JOIN granted g ON g.seq = w.seq LEFT JOIN recorded r ON r.id = g.id\n"
                "WHERE w.seq > 0",
                d->key, d->available, maxc, comma, cols, d->table, d->key, open, held, over,
                heldv, ids, comma, cols, d->table, d->available, d->available, touch, d->key,
                d->available, record);
    free(held);
    free(over);
    free(heldv);
    free(record);
    free(ids);
    return s;
}

static int compose(const ev_inv_def_t *d, pooldef_t *p)
{
    const char *open = d->open ? d->open : "true";
    const char *maxc = d->max_claim ? d->max_claim : "2147483647";
    char t[80] = "", tt[84] = ""; /* ", touch = now()" for plain and aliased updates */
    if (d->touch) {
        snprintf(t, sizeof t, ", %s = now()", d->touch);
        snprintf(tt, sizeof tt, ", %s = now()", d->touch);
    }
    p->sql[S_BATCH] = compose_batch(d, 0);
    p->sql[S_BATCH_LIMITED] = d->owner_held ? compose_batch(d, 1) : strdup("");
    p->sql[S_LOCK] = fmt("SELECT 1 FROM %s WHERE %s = $1 FOR UPDATE", d->table, d->key);
    /* hold: $1 key, $2 owner, $3 quantity, $4 seconds */
    p->sql[S_HOLD] = fmt(
        "WITH p AS (UPDATE %s SET %s = %s - $3%s WHERE %s = $1 AND %s >= $3 AND $3 >= 1\n"
        "  AND $3 <= (%s) AND (%s) RETURNING %s AS key, %s AS available)\n"
        "INSERT INTO inventory_holds (pool, key, owner, quantity, expires_at)\n"
        "SELECT '%s', p.key, $2, $3, now() + make_interval(secs => $4) FROM p\n"
        "RETURNING id, pool, key, owner, quantity, state, expires_at, created_at",
        d->table, d->available, d->available, t, d->key, d->available, maxc, open, d->key,
        d->available, d->name);
    /* confirm: $1 hold id, $2 owner (NULL: any) */
    p->sql[S_CONFIRM] = fmt(
        "UPDATE inventory_holds SET state = 'confirmed', settled_at = now()\n"
        "WHERE id = $1 AND pool = '%s' AND state = 'held' AND expires_at > now()\n"
        "  AND ($2::bigint IS NULL OR owner = $2)\n"
        "RETURNING id, pool, key, owner, quantity, state, expires_at, created_at", d->name);
    /* release: $1 hold id, $2 owner (NULL: any); the units go back at once */
    p->sql[S_RELEASE] = fmt(
        "WITH h AS (UPDATE inventory_holds SET state = 'released', settled_at = now()\n"
        "  WHERE id = $1 AND pool = '%s' AND state = 'held' AND ($2::bigint IS NULL OR owner = $2)\n"
        "  RETURNING id, key, owner, quantity),\n"
        "p AS (UPDATE %s t SET %s = t.%s + h.quantity%s FROM h WHERE t.%s = h.key RETURNING t.%s AS available)\n"
        "SELECT h.id, h.key, h.owner, h.quantity, p.available FROM h, p",
        d->name, d->table, d->available, d->available, tt, d->key, d->available);
    /* give_back: $1 key, $2 quantity; never more than is taken (capacity less
     * available less what holds keep: those come back through their hold) */
    p->sql[S_GIVE_BACK] = fmt(
        "UPDATE %s SET %s = %s + $2%s WHERE %s = $1 AND $2 >= 1\n"
        "  AND %s + $2 + (SELECT coalesce(sum(quantity), 0) FROM inventory_holds\n"
        "                 WHERE pool = '%s' AND key = $1 AND state = 'held') <= %s\n"
        "RETURNING %s AS available",
        d->table, d->available, d->available, t, d->key, d->available, d->name, d->capacity,
        d->available);
    /* resize: $1 key, $2 capacity; never below what is taken or held */
    p->sql[S_RESIZE] = fmt(
        "UPDATE %s SET %s = %s + ($2 - %s), %s = $2%s WHERE %s = $1 AND %s - %s <= $2\n"
        "RETURNING %s AS capacity, %s AS available",
        d->table, d->available, d->available, d->capacity, d->capacity, t, d->key, d->capacity,
        d->available, d->capacity, d->available);
    p->sql[S_AVAILABLE] = fmt("SELECT %s AS available, %s AS capacity FROM %s WHERE %s = $1",
                              d->available, d->capacity, d->table, d->key);
    /* sweep: up to $1 overdue holds, each exactly once (state flip under the
     * row lock; SKIP LOCKED lets sweepers on every worker share the work) */
    p->sql[S_SWEEP] = fmt(
        "WITH h AS (UPDATE inventory_holds SET state = 'expired', settled_at = now()\n"
        "  WHERE id IN (SELECT id FROM inventory_holds WHERE pool = '%s' AND state = 'held'\n"
        "               AND expires_at <= now() ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)\n"
        "    AND state = 'held'\n"
        "  RETURNING id, key, owner, quantity),\n"
        "back AS (UPDATE %s t SET %s = t.%s + s.total%s\n"
        "  FROM (SELECT key, sum(quantity) AS total FROM h GROUP BY key) s WHERE t.%s = s.key\n"
        "  RETURNING t.%s AS key, t.%s AS available)\n"
        "SELECT h.id, h.key, h.owner, h.quantity, back.available FROM h JOIN back ON back.key = h.key\n"
        "ORDER BY h.id",
        d->name, d->table, d->available, d->available, tt, d->key, d->key, d->available);
    for (int i = 0; i < S_COUNT; i++)
        if (!p->sql[i])
            return -1;
    return 0;
}

static void def_unref(pooldef_t *p)
{
    if (!p || --p->refs > 0)
        return;
    for (int i = 0; i < S_COUNT; i++)
        free(p->sql[i]);
    free(p->name);
    free(p);
}

static pooldef_t *def_find(ev_inv_t *inv, const char *name)
{
    for (pooldef_t *p = inv->defs; p; p = p->next)
        if (strcmp(p->name, name) == 0)
            return p;
    return NULL;
}

int ev_inv_define(ev_inv_t *inv, const ev_inv_def_t *d, char *err, size_t errlen)
{
    const char *bad = !ident_ok(d->name, 0) ? "name" : !ident_ok(d->table, 1) ? "table"
                    : !ident_ok(d->key, 0) ? "key" : !ident_ok(d->available, 0) ? "available"
                    : !ident_ok(d->capacity, 0) ? "capacity"
                    : d->touch && !ident_ok(d->touch, 0) ? "touch"
                    : d->record && !ident_ok(d->record_seq, 1) ? "record_seq"
                    : d->after[0] && !d->record ? "after (needs record)" : NULL;
    if (bad) {
        snprintf(err, errlen, "inventory: bad or missing %s", bad);
        return -1;
    }
    pooldef_t *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "inventory: out of memory");
        return -1;
    }
    p->refs = 1;
    if (!(p->name = strdup(d->name)) || compose(d, p) != 0) {
        snprintf(err, errlen, "inventory: out of memory");
        def_unref(p);
        return -1;
    }
    for (pooldef_t **pp = &inv->defs; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->name, d->name) == 0) { /* redefined: batches in flight keep the old one */
            pooldef_t *old = *pp;
            *pp = old->next;
            def_unref(old);
            break;
        }
    }
    p->next = inv->defs;
    inv->defs = p;
    return 0;
}

const char *ev_inv_sql(ev_inv_t *inv, const char *pool, const char *op)
{
    pooldef_t *p = def_find(inv, pool);
    if (!p)
        return NULL;
    for (int i = 0; i < S_COUNT; i++)
        if (strcmp(OPS[i], op) == 0)
            return p->sql[i];
    return NULL;
}

/* ---- time ---- */

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long long wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct timeval tv_of(double s)
{
    struct timeval tv = {(time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6)};
    return tv;
}

/* ---- claims and queues ---- */

static void start_batch(evutil_socket_t fd, short what, void *arg);

static unsigned key_bucket(const char *pool, int64_t key)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)pool; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    h ^= (uint64_t)key * 0x9E3779B97F4A7C15ULL;
    return (unsigned)(h ^ (h >> 29)) % KEY_BUCKETS;
}

static void keystate_free(keystate_t *k)
{
    event_free(k->kick); /* also when a kick is still pending */
    free(k->pool);
    free(k);
}

/* Rows taken from once keep a small state (queue head, "found open" time);
 * past KEYS_KEPT, the idle ones (nothing queued or running, not found open
 * lately) go, so a worker that sees many rows over its life stays small. */
static void reap_idle(ev_inv_t *inv)
{
    double now = mono();
    for (int b = 0; b < KEY_BUCKETS; b++) {
        for (keystate_t **kp = &inv->keys[b]; *kp;) {
            keystate_t *k = *kp;
            if (!k->head && !k->running && k->open_until < now) {
                *kp = k->next;
                keystate_free(k);
                inv->nkeys--;
            } else {
                kp = &k->next;
            }
        }
    }
}

static keystate_t *keystate(ev_inv_t *inv, const char *pool, int64_t key)
{
    unsigned b = key_bucket(pool, key);
    for (keystate_t *k = inv->keys[b]; k; k = k->next)
        if (k->key == key && strcmp(k->pool, pool) == 0)
            return k;
    if (inv->nkeys >= KEYS_KEPT)
        reap_idle(inv);
    keystate_t *k = calloc(1, sizeof *k);
    if (!k || !(k->pool = strdup(pool)) ||
        !(k->kick = event_new(inv->base, -1, 0, start_batch, k))) {
        if (k)
            free(k->pool);
        free(k);
        return NULL;
    }
    k->key = key;
    k->next = inv->keys[b];
    inv->keys[b] = k;
    inv->nkeys++;
    return k;
}

static void unlink_claim(ev_inv_claim_t *c)
{
    keystate_t *k = c->ks;
    ev_inv_claim_t *prev = NULL;
    for (ev_inv_claim_t *it = k->head; it; prev = it, it = it->next) {
        if (it != c)
            continue;
        if (prev)
            prev->next = c->next;
        else
            k->head = c->next;
        if (k->tail == c)
            k->tail = prev;
        c->next = NULL;
        return;
    }
}

static void claim_free(ev_inv_claim_t *c)
{
    free(c->tag);
    if (c->timer)
        event_free(c->timer);
    free(c);
}

static void answer(ev_inv_claim_t *c, const ev_inv_result_t *r)
{
    if (!c->withdrawn && c->fn)
        c->fn(c, r, c->arg);
    claim_free(c);
}

static void answer_simple(ev_inv_claim_t *c, ev_inv_outcome_t o, int info, const char *err)
{
    ev_inv_result_t r = {.outcome = o, .info = info, .err = err};
    answer(c, &r);
}

static void on_queue_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ev_inv_claim_t *c = arg;
    unlink_claim(c);
    c->inv->stats.busy++;
    answer_simple(c, EV_INV_BUSY, 0, NULL);
}

ev_inv_claim_t *ev_inv_take(ev_inv_t *inv, const char *pool, int64_t key, int64_t owner,
                            int quantity, int limit, const char *tag, double queue_seconds,
                            ev_inv_claim_fn fn, void *arg)
{
    if (!def_find(inv, pool))
        return NULL;
    keystate_t *k = keystate(inv, pool, key);
    ev_inv_claim_t *c = k ? calloc(1, sizeof *c) : NULL;
    if (!c)
        return NULL;
    *c = (ev_inv_claim_t){.inv = inv, .ks = k, .owner = owner, .quantity = quantity,
                          .limit = limit, .fn = fn, .arg = arg};
    c->timer = evtimer_new(inv->base, on_queue_deadline, c);
    if (!c->timer || (tag && !(c->tag = strdup(tag)))) {
        if (c->timer)
            event_free(c->timer);
        free(c);
        return NULL;
    }
    if (queue_seconds <= 0)
        queue_seconds = 0.001;
    c->deadline = mono() + queue_seconds;
    struct timeval tv = tv_of(queue_seconds);
    evtimer_add(c->timer, &tv);
    if (k->tail)
        k->tail->next = c;
    else
        k->head = c;
    k->tail = c;
    if (!k->running)
        event_active(k->kick, 0, 0); /* next turn: claims of this turn join the batch */
    return c;
}

int ev_inv_withdraw(ev_inv_claim_t *c)
{
    if (c->started) { /* its batch frees it */
        c->withdrawn = 1;
        return 1;
    }
    unlink_claim(c);
    claim_free(c);
    return 0;
}

/* ---- batches ---- */

static void batch_step(batch_t *b);

static int owner_in(batch_t *b, int64_t owner)
{
    for (int i = 0; i < b->n; i++)
        if (b->claims[i]->owner == owner)
            return 1;
    return 0;
}

/* Moves queued claims into the batch: arrival order; with a limit, an
 * owner's second claim waits for the next batch so it is checked against
 * everything granted before it. Claims the gate now refuses are answered. */
static void fill(batch_t *b)
{
    keystate_t *k = b->ks;
    ev_inv_claim_t *c = k->head, *prev = NULL;
    while (c && b->n < b->inv->o.max_batch) {
        ev_inv_claim_t *next = c->next;
        int gated = ev_gate_closed(k->pool, k->key, c->quantity);
        /* a claim with another limit, or (limited) an owner already in the
         * batch, waits for a later batch */
        int later = c->limit != b->limit || (b->limit > 0 && owner_in(b, c->owner));
        if (!gated && c->alone && b->n > 0)
            break; /* a claim going alone starts the next batch */
        if (gated || !later) {
            if (prev)
                prev->next = next;
            else
                k->head = next;
            if (k->tail == c)
                k->tail = prev;
            c->next = NULL;
            evtimer_del(c->timer);
            if (gated) {
                b->inv->stats.gated++;
                ev_gate_count_refusal();
                answer_simple(c, EV_INV_SOLD_OUT, 0, NULL);
            } else {
                c->started = 1;
                b->claims[b->n++] = c;
                if (c->alone)
                    break;
            }
        } else {
            prev = c;
        }
        c = next;
    }
}

static char *int_array(batch_t *b, int what)
{
    size_t cap = (size_t)b->n * 22 + 3, len = 0;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    s[len++] = '{';
    for (int i = 0; i < b->n; i++) {
        long long v = what == 0 ? i + 1 : what == 1 ? b->claims[i]->owner : b->claims[i]->quantity;
        len += (size_t)snprintf(s + len, cap - len, i ? ",%lld" : "%lld", v);
    }
    s[len++] = '}';
    s[len] = 0;
    return s;
}

/* The claims' tags as a Postgres text[] literal: NULL, or the tag quoted
 * with " and \ escaped. */
static char *tag_array(batch_t *b)
{
    size_t cap = 3;
    for (int i = 0; i < b->n; i++)
        cap += b->claims[i]->tag ? 2 * strlen(b->claims[i]->tag) + 3 : 5;
    char *s = malloc(cap), *p = s;
    if (!s)
        return NULL;
    *p++ = '{';
    for (int i = 0; i < b->n; i++) {
        const char *t = b->claims[i]->tag;
        if (i)
            *p++ = ',';
        if (!t) {
            memcpy(p, "NULL", 4);
            p += 4;
            continue;
        }
        *p++ = '"';
        for (; *t; t++) {
            if (*t == '"' || *t == '\\')
                *p++ = '\\';
            *p++ = *t;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = 0;
    return s;
}

static void batch_free(batch_t *b)
{
    keystate_t *k = b->ks;
    if (b->timer)
        event_free(b->timer);
    if (b->res)
        PQclear(b->res);
    if (b->waiter)
        ev_pg_wait_cancel(b->waiter);
    def_unref(b->def);
    free(b->seqs);
    free(b->owners);
    free(b->qtys);
    free(b->tags);
    free(b->claims);
    free(b);
    k->running = NULL;
    if (k->head)
        event_active(k->kick, 0, 0);
}

static void fail_all(batch_t *b, ev_inv_outcome_t o, const char *err, const char *sqlstate)
{
    for (int i = 0; i < b->n; i++) {
        ev_inv_result_t r = {.outcome = o, .err = err, .sqlstate = sqlstate,
                             .started_ms = b->started_ms};
        answer(b->claims[i], &r);
    }
    b->n = 0;
}

static int field(const PGresult *res, int row, int col)
{
    return col < 0 || PQgetisnull(res, row, col) ? 0 : atoi(PQgetvalue(res, row, col));
}

/* Hands each claim its answer from the committed batch rows. */
static void dispatch(batch_t *b)
{
    PGresult *res = b->res;
    keystate_t *k = b->ks;
    int cseq = PQfnumber(res, "inv_seq"), ctook = PQfnumber(res, "inv_took"),
        cover = PQfnumber(res, "inv_over"), cheld = PQfnumber(res, "inv_held"),
        cleft = PQfnumber(res, "inv_left"), cmax = PQfnumber(res, "inv_max");
    int rows = PQntuples(res), left = -1, max = 0;
    int *row_of = calloc((size_t)b->n + 1, sizeof *row_of);
    if (!row_of) {
        fail_all(b, EV_INV_UNKNOWN, "out of memory", NULL);
        return;
    }
    for (int i = 0; i < rows; i++) {
        int seq = field(res, i, cseq);
        if (seq >= 1 && seq <= b->n)
            row_of[seq] = i + 1;
        left = field(res, i, cleft);
        max = field(res, i, cmax);
    }
    int emptied = left == 0 && ev_gate_changes(k->pool, k->key) == b->changes;
    if (emptied)
        ev_gate_close(k->pool, k->key, max, b->inv->o.gate_seconds);
    else if (left == 0) /* reopened meanwhile: the give-back's news is newer */
        emptied = 0;
    else if (left > 0)
        k->open_until = mono() + b->inv->o.gate_seconds;
    for (int i = 0; i < b->n; i++) {
        ev_inv_claim_t *c = b->claims[i];
        int row = row_of[i + 1] - 1;
        /* "emptied" goes to one claim whose caller is still there */
        ev_inv_result_t r = {.outcome = EV_INV_CLOSED, .res = res, .row = row, .max = max,
                             .started_ms = b->started_ms, .emptied = emptied && !c->withdrawn};
        if (r.emptied)
            emptied = 0;
        if (row >= 0) {
            if (field(res, row, ctook) > 0)
                r.outcome = EV_INV_GRANTED;
            else if (c->quantity > max)
                r.outcome = EV_INV_TOO_MANY, r.info = max;
            else if (PQgetvalue(res, row, cover)[0] == 't')
                r.outcome = EV_INV_OVER_LIMIT, r.info = field(res, row, cheld);
            else
                r.outcome = EV_INV_SOLD_OUT, r.info = left;
        }
        answer(c, &r);
    }
    free(row_of);
    b->n = 0;
}

static void finish(batch_t *b)
{
    if (b->conn)
        ev_pg_release(b->conn); /* one inside a failed transaction is closed, not pooled */
    b->conn = NULL;
    batch_free(b);
}

static int retryable(const char *sqlstate)
{
    return sqlstate && (strcmp(sqlstate, "40P01") == 0 || strcmp(sqlstate, "40001") == 0);
}

/* The batch failed on an SQL error that one claim's record may have caused
 * (a foreign key, a CHECK of the caller's table): nothing was taken, so each
 * claim goes again in a batch of its own, at the head of the queue in its
 * order, and only the claim at fault fails. */
static void requeue_alone(batch_t *b)
{
    keystate_t *k = b->ks;
    double now = mono();
    for (int i = b->n - 1; i >= 0; i--) {
        ev_inv_claim_t *c = b->claims[i];
        if (c->withdrawn) {
            claim_free(c);
            continue;
        }
        c->started = 0;
        c->alone = 1;
        c->next = k->head;
        k->head = c;
        if (!k->tail)
            k->tail = c;
        struct timeval tv = tv_of(c->deadline > now ? c->deadline - now : 0.001);
        evtimer_add(c->timer, &tv);
    }
    b->n = 0;
}

/* Steps: 0 batch alone; limited: 1 BEGIN, 2 lock, 3 batch, 4 COMMIT. */
static void on_step(ev_pg_conn_t *c, PGresult *res, const char *err, void *arg)
{
    batch_t *b = arg;
    (void)c;
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (err || (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)) {
        const char *sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        char msg[300];
        if (err)
            snprintf(msg, sizeof msg, "%s", err);
        else
            snprintf(msg, sizeof msg, "sql: %s", PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
        if (!err && retryable(sqlstate) && b->attempts < RETRIES) {
            b->attempts++;
            if (b->step == 0) { /* a single statement: nothing was taken, send it again */
                batch_step(b);
                return;
            }
            b->step = 9; /* ROLLBACK, then again from BEGIN */
            b->committing = 0;
            if (ev_pg_query(b->conn, "ROLLBACK", 0, NULL, on_step, b) == 0)
                return;
            ev_pg_abandon(b->conn);
            b->conn = NULL;
            fail_all(b, EV_INV_ERROR, msg, sqlstate); /* never committed */
            batch_free(b);
            return;
        }
        /* data and integrity errors (classes 22, 23) may be one claim's doing */
        if (!err && b->n > 1 && (b->step == 0 || b->step == 3) && sqlstate &&
            (strncmp(sqlstate, "22", 2) == 0 || strncmp(sqlstate, "23", 2) == 0)) {
            requeue_alone(b);
            finish(b);
            return;
        }
        /* Only a connection lost after the committing statement was sent
         * leaves the outcome open; an SQL error means nothing was taken. */
        int open = err && b->committing;
        fail_all(b, open ? EV_INV_UNKNOWN : EV_INV_ERROR, msg, sqlstate);
        finish(b);
        return;
    }
    if (b->step == 9) { /* rolled back: again from BEGIN */
        b->step = 1;
        batch_step(b);
        return;
    }
    if (b->step == 0 || b->step == 3) {
        if (b->res) /* a retried transaction's earlier rows */
            PQclear(b->res);
        b->res = PQcopyResult(res, PG_COPYRES_ATTRS | PG_COPYRES_TUPLES);
        if (!b->res) { /* step 0 committed already; step 3's transaction dies with finish() */
            fail_all(b, b->step == 0 ? EV_INV_UNKNOWN : EV_INV_ERROR, "out of memory", NULL);
            finish(b);
            return;
        }
    }
    if (b->step == 0 || b->step == 4) {
        b->inv->stats.batches++;
        dispatch(b);
        finish(b);
        return;
    }
    b->step++;
    batch_step(b);
}

static void batch_step(batch_t *b)
{
    const char *v[6] = {b->keybuf, b->seqs, b->owners, b->qtys, b->tags, b->limitbuf};
    int rc;
    switch (b->step) {
    case 1:
        rc = ev_pg_query(b->conn, "BEGIN", 0, NULL, on_step, b);
        break;
    case 2:
        rc = ev_pg_query(b->conn, b->def->sql[S_LOCK], 1, v, on_step, b);
        break;
    case 4:
        rc = ev_pg_query(b->conn, "COMMIT", 0, NULL, on_step, b);
        break;
    default:
        rc = ev_pg_query(b->conn, b->def->sql[b->step == 3 ? S_BATCH_LIMITED : S_BATCH],
                         b->step == 3 ? 6 : 5, v, on_step, b);
        break;
    }
    if (rc != 0) { /* nothing was sent, so nothing of this batch committed */
        ev_pg_abandon(b->conn);
        b->conn = NULL;
        fail_all(b, EV_INV_ERROR, "closed: could not send the statement", NULL);
        batch_free(b);
        return;
    }
    b->committing = b->step == 0 || b->step == 4;
}

static void on_conn(ev_pg_conn_t *c, const char *err, void *arg)
{
    batch_t *b = arg;
    b->waiter = NULL;
    if (!c) {
        fail_all(b, EV_INV_ERROR, err ? err : "timeout", NULL);
        batch_free(b);
        return;
    }
    b->conn = c;
    batch_step(b);
}

/* The batch never answered (a hung server past every timeout): its claims
 * are told the truth, "unknown", and the connection is dropped. */
static void on_batch_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    batch_t *b = arg;
    ev_warn("inventory: a batch of %d claims on %s/%lld did not answer in time", b->n,
             b->ks->pool, (long long)b->ks->key);
    if (b->conn)
        ev_pg_abandon(b->conn);
    b->conn = NULL;
    /* only a committing statement in flight may have taken anything; an open
     * transaction dies with its connection (rolled back) */
    fail_all(b, b->committing ? EV_INV_UNKNOWN : EV_INV_ERROR, "timeout: the batch did not answer", NULL);
    batch_free(b);
}

static void start_batch(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    keystate_t *k = arg;
    ev_inv_t *inv = NULL;
    if (k->running || !k->head)
        return;
    inv = k->head->inv;
    pooldef_t *def = def_find(inv, k->pool);
    batch_t *b = calloc(1, sizeof *b);
    if (b)
        b->claims = calloc((size_t)inv->o.max_batch, sizeof *b->claims);
    if (!def || !b || !b->claims) {
        if (b)
            free(b->claims);
        free(b);
        while (k->head) { /* cannot serve them: say so rather than leave them waiting */
            ev_inv_claim_t *c = k->head;
            unlink_claim(c);
            answer_simple(c, EV_INV_ERROR, 0, def ? "unavailable: out of memory" : "unavailable: no such pool");
        }
        return;
    }
    *b = (batch_t){.inv = inv, .ks = k, .def = def, .claims = b->claims,
                   .limit = k->head->limit, .changes = ev_gate_changes(k->pool, k->key),
                   .started_ms = wall_ms()};
    def->refs++;
    k->running = b;
    fill(b);
    if (b->n == 0) {
        batch_free(b);
        return;
    }
    inv->stats.claims += (unsigned long long)b->n;
    b->seqs = int_array(b, 0);
    b->owners = int_array(b, 1);
    b->qtys = int_array(b, 2);
    b->tags = tag_array(b);
    snprintf(b->keybuf, sizeof b->keybuf, "%lld", (long long)k->key);
    snprintf(b->limitbuf, sizeof b->limitbuf, "%d", b->limit);
    b->step = b->limit > 0 && def->sql[S_BATCH_LIMITED][0] ? 1 : 0;
    b->timer = evtimer_new(inv->base, on_batch_deadline, b);
    if (!b->seqs || !b->owners || !b->qtys || !b->tags || !b->timer) {
        fail_all(b, EV_INV_ERROR, "unavailable: out of memory", NULL);
        batch_free(b);
        return;
    }
    struct timeval tv = tv_of(inv->o.batch_seconds);
    evtimer_add(b->timer, &tv);
    ev_pg_conn_t *c = ev_pg_try_acquire(inv->db);
    if (c) {
        b->conn = c;
        batch_step(b);
        return;
    }
    b->waiter = ev_pg_wait(inv->db, on_conn, b);
    if (!b->waiter) {
        fail_all(b, EV_INV_ERROR, "unavailable: out of memory", NULL);
        batch_free(b);
    }
}

/* ---- the registry ---- */

ev_inv_t *ev_inv_new(struct event_base *base, ev_pg_pool_t *db, const ev_inv_opts_t *o)
{
    ev_inv_t *inv = calloc(1, sizeof *inv);
    if (!inv)
        return NULL;
    inv->base = base;
    inv->db = db;
    inv->o = o ? *o : (ev_inv_opts_t){0};
    if (inv->o.gate_seconds <= 0)
        inv->o.gate_seconds = 1.0;
    if (inv->o.batch_seconds <= 0)
        inv->o.batch_seconds = 70.0;
    if (inv->o.max_batch <= 0)
        inv->o.max_batch = 500;
    return inv;
}

void ev_inv_set_db(ev_inv_t *inv, ev_pg_pool_t *db) { inv->db = db; }
int ev_inv_has_db(const ev_inv_t *inv) { return inv->db != NULL; }

/* By now the callers (the worker's coroutines) are gone: nobody is called. */
void ev_inv_free(ev_inv_t *inv)
{
    if (!inv)
        return;
    for (int b = 0; b < KEY_BUCKETS; b++) {
        keystate_t *k = inv->keys[b];
        while (k) {
            keystate_t *next = k->next;
            for (ev_inv_claim_t *c = k->head; c; c = c->next)
                c->withdrawn = 1;
            if (k->running) {
                for (int i = 0; i < k->running->n; i++)
                    k->running->claims[i]->withdrawn = 1;
                if (k->running->conn)
                    ev_pg_abandon(k->running->conn);
                k->running->conn = NULL;
                fail_all(k->running, EV_INV_UNKNOWN, "closed: shutting down", NULL);
                batch_free(k->running);
            }
            while (k->head) {
                ev_inv_claim_t *c = k->head;
                unlink_claim(c);
                answer_simple(c, EV_INV_BUSY, 0, NULL);
            }
            keystate_free(k);
            k = next;
        }
    }
    while (inv->defs) {
        pooldef_t *p = inv->defs;
        inv->defs = p->next;
        def_unref(p);
    }
    free(inv);
}

int ev_inv_recently_open(ev_inv_t *inv, const char *pool, int64_t key)
{
    unsigned b = key_bucket(pool, key);
    for (keystate_t *k = inv->keys[b]; k; k = k->next)
        if (k->key == key && strcmp(k->pool, pool) == 0)
            return k->open_until > mono();
    return 0;
}

void ev_inv_stats(const ev_inv_t *inv, ev_inv_stats_t *out)
{
    *out = inv->stats;
    out->rows = inv->nkeys;
}
