/* gate.h - the sold-out gate: this worker's memory of pools known empty.
 *
 * The design, in one place; "the gate" is its one name. A pool key ("seats",
 * event 42) that a take found with nothing left is "closed" for a few
 * seconds: a take of at most max_quantity is then refused without a round
 * trip. The gate only ever refuses; Postgres decides every sale. It has two
 * levels: this worker's table (here) and the shared gate, a signed mark per
 * event in Redis (scripts/domain/shared_gate.lua) for the other workers and
 * instances.
 *
 * What closes it:
 *   - a batch that leaves the pool at 0 (inventory.c, dispatch), unless the
 *     pool was reopened while the batch ran (ev_gate_changes); the pool's
 *     on_empty then closes the shared gate too;
 *   - the shared gate: a worker whose own batches have not found units lately
 *     (ev_inv_selling) reads it, one read per key at a time, and closes its
 *     own from it (domain/seats.lua, gate_closed()).
 * What opens it: every give-back (cancellation, offer expiry, capacity
 * change) opens the shared gate after its commit (an "open" stamp that a
 * slower batch's closing cannot overwrite), then calls ev_gate_open on every
 * worker (the cache's invalidation fan-out); closings expire by themselves.
 *
 * Where it is asked, each for requests the one before cannot answer:
 *   1. early.c, before any Lua: plain bookings with a known token;
 *   2. the booking route, before validation (scripts/routes/bookings.lua,
 *      seats.gate_closed_here): what early.c left (a token C had not seen,
 *      hooks registered);
 *   3. domain/seats.lua's gate_closed(), before a take is queued: every take,
 *      idempotent ones and waitlist conversions too, and the shared gate;
 *   4. the engine, when a batch starts (inventory.c, fill): claims queued
 *      before the gate closed.
 * Each worker is one process: the table is its own. */
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
