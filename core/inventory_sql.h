/* inventory_sql.h - the statements of a pool, composed once from its
 * definition (inventory.h's ev_inv_def_t); the engine (inventory.c) only
 * runs them. Identifiers are checked here, since they are spliced into SQL:
 * [a-z0-9_] (tables also '.'), at most 63 bytes. The predicate, bound and
 * record fragments are the script author's SQL, taken as written. */
#ifndef EV_INVENTORY_SQL_H
#define EV_INVENTORY_SQL_H

#include <stddef.h>

#include "inventory.h"

typedef enum {
    EV_INV_SQL_BATCH,         /* take, coalesced: $1 key, $2..$5 seq/owner/quantity/tag arrays */
    EV_INV_SQL_BATCH_LIMITED, /* ... and $6 the owner limit ("" without owner_held) */
    EV_INV_SQL_LOCK,          /* $1 key: the row lock a limited batch takes first */
    EV_INV_SQL_HOLD,          /* $1 key, $2 owner, $3 quantity, $4 seconds */
    EV_INV_SQL_CONFIRM,       /* $1 hold id, $2 owner (NULL: any) */
    EV_INV_SQL_RELEASE,       /* $1 hold id, $2 owner (NULL: any) */
    EV_INV_SQL_GIVE_BACK,     /* $1 key, $2 quantity */
    EV_INV_SQL_RESIZE,        /* $1 key, $2 capacity */
    EV_INV_SQL_AVAILABLE,     /* $1 key */
    EV_INV_SQL_SWEEP,         /* $1 how many overdue holds at most */
    EV_INV_SQL_COUNT
} ev_inv_sql_op_t;

/* "batch", "hold", ... as scripts name them; -1 for an unknown name. */
int ev_inv_sql_op(const char *name);
/* The definition's first unusable field ("table", "after (needs record)"),
 * or NULL when it can be composed. */
const char *ev_inv_sql_check(const ev_inv_def_t *d);
/* Writes every statement into sql[] (malloc'd; the caller frees them). 0, or
 * -1 out of memory, with nothing left allocated. */
int ev_inv_sql_compose(const ev_inv_def_t *d, char *sql[EV_INV_SQL_COUNT]);

#endif
