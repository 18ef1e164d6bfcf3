/* refusals.h - client addresses a rate limit refused lately, and until when
 * (one table per early-answer rule, core/early.c).
 *
 * evently.limit refuses a key in Lua; when the key is a client address it
 * tells the worker's early-answer rules, which then answer that address's
 * requests 429 from C until the refusal ends, without a coroutine, a Redis
 * round trip or a JSON encoder. The table is only an accelerator: a request
 * it does not know goes to Lua, which answers the same.
 *
 * Addresses are read as evently.limit's limit.address() writes them: an IPv4
 * address as is ("203.0.113.7", also from "::ffff:203.0.113.7"), an IPv6
 * address by its /64 ("2001:db8:0:1::/64"). Peers are read the same way from
 * the text core/http.c gives (inet_ntop), so both sides meet on the bytes. */
#ifndef EV_REFUSALS_H
#define EV_REFUSALS_H

#include <stddef.h>

typedef struct ev_refusals ev_refusals_t;

/* slots: how many addresses it remembers at most (rounded up to a power of
 * two); a new address may push out an older one (then Lua answers it). */
ev_refusals_t *ev_refusals_new(size_t slots);
void ev_refusals_free(ev_refusals_t *r);

/* address (limit.address form) refused until now + retry seconds. 0, or -1
 * when address is not an address (an email, a composite key: nothing to
 * remember). */
int ev_refusals_put(ev_refusals_t *r, const char *address, double retry, double now);
/* A refund gave a unit back: ask Lua again. */
void ev_refusals_forget(ev_refusals_t *r, const char *address);
/* Is peer (inet_ntop text) refused at now? 1 and the seconds until it may
 * retry, or 0. */
int ev_refusals_get(ev_refusals_t *r, const char *peer, double now, double *retry);
void ev_refusals_clear(ev_refusals_t *r);

#endif
