/* gate.h - the sold-out gate: this worker's memory of pools known empty.
 *
 * An inventory pool (a named pool, one key: "seats", event 42) that a
 * statement found with nothing left is closed here for a few seconds; a take
 * of at most max_quantity is then refused without a round trip. The gate only
 * ever refuses: Postgres decides every sale, and any give-back reopens the
 * pool at once (ev_gate_open, reached on every worker by the cache's
 * invalidation fan-out). Each worker is one process: the table is its own. */
#ifndef EV_GATE_H
#define EV_GATE_H

#include <stdint.h>

/* Closes pool/key for quantities up to max_quantity for seconds. */
void ev_gate_close(const char *pool, int64_t key, int max_quantity, double seconds);
/* Reopens pool/key and counts a change, so a closing decided on an older
 * reading (ev_gate_changes before it started) can be told apart. */
void ev_gate_open(const char *pool, int64_t key);
/* 1 when a take of quantity from pool/key is refused by the gate. */
int ev_gate_closed(const char *pool, int64_t key, int quantity);
/* How many times pool/key was reopened (wraps; compare for equality). */
unsigned ev_gate_changes(const char *pool, int64_t key);
/* Refusals answered so far by this worker (for /metrics). */
unsigned long long ev_gate_refusals(void);
void ev_gate_count_refusal(void);
/* Forgets everything (tests, worker start). */
void ev_gate_reset(void);

#endif
