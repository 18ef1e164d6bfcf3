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
#include "inventory_sql.h"
#include "log.h"
#include "pg.h"

#define KEY_BUCKETS 256
#define KEYS_KEPT   1024 /* row states kept before idle ones are dropped */
#define RETRIES     2    /* a deadlock or serialization failure is retried, not answered */

/* ---- definitions and their statements (composed by inventory_sql.c) ---- */

typedef struct pooldef {
    char *name;
    char *sql[EV_INV_SQL_COUNT];
    int refs; /* the registry's and each running batch's */
    struct pooldef *next;
} pooldef_t;

typedef struct keystate keystate_t;
typedef struct batch batch_t;

struct ev_inv_claim {
    ev_inv_t *inv;
    keystate_t *ks;
    int64_t owner;
    int quantity, limit;
    char *tag; /* the caller's label for this claim (granted.tag), or NULL */
    ev_inv_claim_fn fn;
    void *arg;
    int started, withdrawn;
    int alone;            /* its batch failed: it goes again in a batch of its own */
    double deadline;      /* monotonic: withdrawn (BUSY) if not started by then */
    struct event *timer;  /* the queue deadline */
    ev_inv_claim_t *next; /* queue, then batch order */
};

struct keystate {
    char *pool;
    int64_t key;
    ev_inv_claim_t *head, *tail;
    batch_t *running;
    double open_until; /* a batch found units left: skip the shared gate */
    struct event *kick;
    keystate_t *next;
};

/* What a batch sends. Without an owner limit one statement takes and commits
 * (STEP_ALONE); with one, a transaction: BEGIN, the row lock, the take,
 * COMMIT. A deadlock or serialization failure inside it rolls back and
 * starts again from BEGIN. */
typedef enum { STEP_ALONE, STEP_BEGIN, STEP_LOCK, STEP_TAKE, STEP_COMMIT, STEP_ROLLBACK } step_t;

struct batch {
    ev_inv_t *inv;
    keystate_t *ks;
    pooldef_t *def;
    ev_inv_claim_t **claims;
    int n, limit, attempts;
    step_t step;
    int committing;   /* the statement that commits was sent: outcome open until answered */
    unsigned changes; /* gate reopen count when the batch started */
    long long started_ms;
    ev_pg_conn_t *conn;
    ev_pg_waiter_t *waiter;
    PGresult *res;       /* the batch statement's rows, until COMMIT */
    struct event *timer; /* last resort */
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

static void def_unref(pooldef_t *p)
{
    if (!p || --p->refs > 0)
        return;
    for (int i = 0; i < EV_INV_SQL_COUNT; i++)
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
    const char *bad = ev_inv_sql_check(d);
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
    if (!(p->name = strdup(d->name)) || ev_inv_sql_compose(d, p->sql) != 0) {
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
    int i = ev_inv_sql_op(op);
    return p && i >= 0 ? p->sql[i] : NULL;
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
    *c = (ev_inv_claim_t){.inv = inv,
                          .ks = k,
                          .owner = owner,
                          .quantity = quantity,
                          .limit = limit,
                          .fn = fn,
                          .arg = arg};
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
        ev_inv_result_t r = {
            .outcome = o, .err = err, .sqlstate = sqlstate, .started_ms = b->started_ms};
        answer(b->claims[i], &r);
    }
    b->n = 0;
}

static int field(const PGresult *res, int row, int col)
{
    return col < 0 || PQgetisnull(res, row, col) ? 0 : atoi(PQgetvalue(res, row, col));
}

ev_inv_outcome_t ev_inv_classify(int took, int quantity, int max, int over)
{
    if (took > 0)
        return EV_INV_GRANTED;
    if (quantity > max)
        return EV_INV_TOO_MANY;
    return over ? EV_INV_OVER_LIMIT : EV_INV_SOLD_OUT;
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
        ev_inv_result_t r = {.outcome = EV_INV_CLOSED,
                             .res = res,
                             .row = row,
                             .max = max,
                             .started_ms = b->started_ms,
                             .emptied = emptied && !c->withdrawn};
        if (r.emptied)
            emptied = 0;
        if (row >= 0) {
            r.outcome = ev_inv_classify(field(res, row, ctook), c->quantity, max,
                                        PQgetvalue(res, row, cover)[0] == 't');
            r.info = r.outcome == EV_INV_TOO_MANY     ? max
                     : r.outcome == EV_INV_OVER_LIMIT ? field(res, row, cheld)
                     : r.outcome == EV_INV_SOLD_OUT   ? left
                                                      : 0;
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

/* The statements whose rows answer the claims, and those that commit. */
static int takes(step_t s)
{
    return s == STEP_ALONE || s == STEP_TAKE;
}
static int commits(step_t s)
{
    return s == STEP_ALONE || s == STEP_COMMIT;
}

static step_t next_step(step_t s)
{
    switch (s) {
    case STEP_BEGIN: return STEP_LOCK;
    case STEP_LOCK: return STEP_TAKE;
    case STEP_TAKE: return STEP_COMMIT;
    default: return STEP_BEGIN; /* after a ROLLBACK: again from BEGIN */
    }
}

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
            if (b->step == STEP_ALONE) { /* nothing was taken: send it again */
                batch_step(b);
                return;
            }
            b->step = STEP_ROLLBACK;
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
        if (!err && b->n > 1 && takes(b->step) && sqlstate &&
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
    if (takes(b->step)) {
        if (b->res) /* a retried transaction's earlier rows */
            PQclear(b->res);
        b->res = PQcopyResult(res, PG_COPYRES_ATTRS | PG_COPYRES_TUPLES);
        if (!b->res) { /* ALONE committed already; TAKE's transaction dies with finish() */
            fail_all(b, b->step == STEP_ALONE ? EV_INV_UNKNOWN : EV_INV_ERROR, "out of memory",
                     NULL);
            finish(b);
            return;
        }
    }
    if (commits(b->step)) {
        b->inv->stats.batches++;
        dispatch(b);
        finish(b);
        return;
    }
    b->step = next_step(b->step);
    batch_step(b);
}

static void batch_step(batch_t *b)
{
    const char *v[6] = {b->keybuf, b->seqs, b->owners, b->qtys, b->tags, b->limitbuf};
    char **sql = b->def->sql;
    int rc;
    switch (b->step) {
    case STEP_ALONE: rc = ev_pg_query(b->conn, sql[EV_INV_SQL_BATCH], 5, v, on_step, b); break;
    case STEP_BEGIN: rc = ev_pg_query(b->conn, "BEGIN", 0, NULL, on_step, b); break;
    case STEP_LOCK: rc = ev_pg_query(b->conn, sql[EV_INV_SQL_LOCK], 1, v, on_step, b); break;
    case STEP_TAKE:
        rc = ev_pg_query(b->conn, sql[EV_INV_SQL_BATCH_LIMITED], 6, v, on_step, b);
        break;
    case STEP_COMMIT: rc = ev_pg_query(b->conn, "COMMIT", 0, NULL, on_step, b); break;
    case STEP_ROLLBACK:
    default: rc = ev_pg_query(b->conn, "ROLLBACK", 0, NULL, on_step, b); break;
    }
    if (rc != 0) { /* nothing was sent, so nothing of this batch committed */
        ev_pg_abandon(b->conn);
        b->conn = NULL;
        fail_all(b, EV_INV_ERROR, "closed: could not send the statement", NULL);
        batch_free(b);
        return;
    }
    b->committing = commits(b->step);
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
    ev_warn("inventory: a batch of %d claims on %s/%lld did not answer in time", b->n, b->ks->pool,
            (long long)b->ks->key);
    if (b->conn)
        ev_pg_abandon(b->conn);
    b->conn = NULL;
    /* only a committing statement in flight may have taken anything; an open
     * transaction dies with its connection (rolled back) */
    fail_all(b, b->committing ? EV_INV_UNKNOWN : EV_INV_ERROR, "timeout: the batch did not answer",
             NULL);
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
            answer_simple(c, EV_INV_ERROR, 0,
                          def ? "unavailable: out of memory" : "unavailable: no such pool");
        }
        return;
    }
    *b = (batch_t){.inv = inv,
                   .ks = k,
                   .def = def,
                   .claims = b->claims,
                   .limit = k->head->limit,
                   .changes = ev_gate_changes(k->pool, k->key),
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
    b->step = b->limit > 0 && def->sql[EV_INV_SQL_BATCH_LIMITED][0] ? STEP_BEGIN : STEP_ALONE;
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

void ev_inv_set_db(ev_inv_t *inv, ev_pg_pool_t *db)
{
    inv->db = db;
}
int ev_inv_has_db(const ev_inv_t *inv)
{
    return inv->db != NULL;
}

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

int ev_inv_selling(ev_inv_t *inv, const char *pool, int64_t key)
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
