/* inventory.h - atomic reservation primitives on Postgres (engine, no Lua).
 *
 * A pool is any table row with a capacity column and an available column
 * (an event's seats, a product's stock, a room's nights): nothing here knows
 * about tickets. A definition names the table and columns, a predicate that
 * says when the row may be taken from ("open"), an optional per-claim bound
 * and an optional "record": the caller's own rows for granted claims (say,
 * bookings), written by the same statement. From it the engine composes every
 * statement once:
 *
 *   take     coalesced: while a statement for one pool row is in flight, later
 *            takes of that row queue; the next statement serves the whole
 *            queue in arrival order (a walk decides which claims fit), one
 *            UPDATE subtracts the total, the record INSERT writes every
 *            caller's row. One round trip, never read-then-write, one row lock
 *            per batch instead of per claim. With an owner limit, the row is
 *            locked by a first statement of the same transaction so owners'
 *            totals are read after every earlier change committed.
 *   hold / confirm / release / sweep / give_back / resize / available
 *            single statements, returned as SQL for the caller to run on its
 *            own connection or transaction, beside its own rows.
 *
 * The sold-out gate (gate.c): callers ask it before queuing a claim (no
 * allocation on the refusal path); a batch asks it again for each claim
 * before it starts, and closes it when it leaves nothing. */
#ifndef EV_INVENTORY_H
#define EV_INVENTORY_H

#include <libpq-fe.h>
#include <stdint.h>

struct event_base;
struct ev_pg_pool;

#define EV_INV_AFTERS 4

typedef struct ev_inv ev_inv_t;
typedef struct ev_inv_claim ev_inv_claim_t;

typedef struct {
    const char *name;      /* pool name: [a-z0-9_]+, also stored with holds */
    const char *table;     /* [a-z0-9_.]+ identifiers only */
    const char *key;       /* the row's key column (bigint) */
    const char *available; /* integer column, CHECK >= 0 */
    const char *capacity;  /* integer column */
    const char *open;      /* SQL predicate over the row, or NULL (always) */
    const char *max_claim; /* SQL expression over the row bounding one claim, or NULL */
    const char *columns;   /* row columns the record reads (g.<col>), or NULL */
    /* take's caller rows: SQL reading CTE granted(seq, owner, quantity, tag, id,
     * <columns>) and RETURNING an "id" column equal to granted.id (and any
     * others, handed back per claim); $1 is the pool row's key. NULL: none. */
    const char *record;
    const char *record_seq; /* sequence numbering granted.id, with record */
    /* further statements reading CTEs recorded and granted (an outbox INSERT,
     * callers' stored answers), in order; unused slots NULL */
    const char *after[EV_INV_AFTERS];
    /* Owner limit: SQL giving (owner, held) for the row $1 and owners $3, or
     * NULL: no limit. The limit itself is passed with each batch ($6). */
    const char *owner_held;
    const char *touch; /* timestamp column set to now() by every change, or NULL */
} ev_inv_def_t;

typedef enum {
    EV_INV_GRANTED,    /* res/row: the claim's record row (or the batch row) */
    EV_INV_SOLD_OUT,   /* info: what was left */
    EV_INV_TOO_MANY,   /* info: the per-claim bound */
    EV_INV_OVER_LIMIT, /* info: what the owner holds already */
    EV_INV_CLOSED,     /* no such row, or its open predicate is false */
    EV_INV_BUSY,       /* withdrawn before its batch started: not taken */
    EV_INV_UNKNOWN,    /* its batch never answered: may have been taken */
    EV_INV_ERROR,      /* err: "kind: message" (timeout, unavailable, sql) */
} ev_inv_outcome_t;

typedef struct {
    ev_inv_outcome_t outcome;
    const PGresult *res; /* GRANTED: valid during the callback only */
    int row;
    int info;
    int max;              /* the per-claim bound read by the batch */
    int emptied;          /* this batch left the pool at 0 (first claim only) */
    long long started_ms; /* wall clock when the batch started */
    const char *err;
    const char *sqlstate;
} ev_inv_result_t;

typedef void (*ev_inv_claim_fn)(ev_inv_claim_t *c, const ev_inv_result_t *r, void *arg);

typedef struct {
    double gate_seconds;  /* how long an emptied pool stays gated, default 1 */
    double batch_seconds; /* last-resort bound on one batch (then UNKNOWN) */
    int max_batch;        /* claims per statement, default 500 */
} ev_inv_opts_t;

ev_inv_t *ev_inv_new(struct event_base *base, struct ev_pg_pool *db, const ev_inv_opts_t *o);
/* db may be NULL at first (definitions need none); takes need it set. */
void ev_inv_set_db(ev_inv_t *inv, struct ev_pg_pool *db);
int ev_inv_has_db(const ev_inv_t *inv);
/* Answers every queued claim BUSY (a started batch: UNKNOWN), then frees. */
void ev_inv_free(ev_inv_t *inv);
/* Defines (or redefines) a pool; -1 and a message when the definition is
 * unusable. */
int ev_inv_define(ev_inv_t *inv, const ev_inv_def_t *def, char *err, size_t errlen);
/* The composed statement op ("hold", "confirm", "release", "give_back",
 * "resize", "available", "sweep", "batch", "lock") of a pool, or NULL. */
const char *ev_inv_sql(ev_inv_t *inv, const char *pool, const char *op);

/* One claim's outcome from its row of the batch statement (inv_took,
 * inv_over and inv_max): GRANTED, TOO_MANY, OVER_LIMIT or SOLD_OUT. The one
 * reading of that row, for coalesced takes and for a take inside the
 * caller's transaction alike (Lua's pool:take_in). */
ev_inv_outcome_t ev_inv_classify(int took, int quantity, int max, int over);

/* Queues a take. tag: the caller's label, granted.tag in the statement (say,
 * an idempotency key whose answer the record stores), or NULL. limit: the owner limit for this claim's batch (<= 0: none;
 * needs owner_held). queue_seconds: withdrawn (BUSY) when its batch has not
 * started by then. fn is called exactly once, from the loop, unless the
 * claim is withdrawn first. NULL when the pool is unknown (err set). A claim
 * the gate refuses is answered from the loop's next turn like any other. */
ev_inv_claim_t *ev_inv_take(ev_inv_t *inv, const char *pool, int64_t key, int64_t owner,
                            int quantity, int limit, const char *tag, double queue_seconds,
                            ev_inv_claim_fn fn, void *arg);
/* The caller is gone: fn will not be called. Returns 1 when its batch had
 * started (the claim may still be taken), else 0. */
int ev_inv_withdraw(ev_inv_claim_t *c);

/* 1 while a batch of pool/key found units left less than gate_seconds ago:
 * a caller may skip asking a shared (Redis) gate then. */
int ev_inv_selling(ev_inv_t *inv, const char *pool, int64_t key);

typedef struct {
    unsigned long long batches, claims, gated, busy;
    int rows; /* row states kept now */
} ev_inv_stats_t;
void ev_inv_stats(const ev_inv_t *inv, ev_inv_stats_t *out);

#endif
