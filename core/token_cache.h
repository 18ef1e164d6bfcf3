/* token_cache.h - bearer tokens this worker validated a moment ago.
 *
 * Lua's auth (scripts/web/auth.lua) puts a token here, with its user id, when
 * it resolves it, for a short time (1 s there); C code that must know "is this
 * caller authenticated?" before any Lua runs (core/early.c) asks here. A
 * revocation drops the token at once (auth.lua hears them through the cache's
 * invalidation fan-out). A miss only means "ask Lua": the cache never decides
 * that a token is bad.
 *
 * API in calling order:
 *   ev_token_cache_new(max)       at most max tokens; a full cache refuses puts
 *   ev_token_cache_put()          remember token -> user id for ttl seconds
 *   ev_token_cache_get()          1 and the user id while fresh, else 0
 *   ev_token_cache_drop()         forget one token (revoked)
 *   ev_token_cache_clear(), ev_token_cache_free()
 * Times are monotonic seconds passed in (ev_token_cache_now()), so tests need
 * no sleeping. One cache per worker process: no locks. */
#ifndef EV_TOKEN_CACHE_H
#define EV_TOKEN_CACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct ev_token_cache ev_token_cache_t;

ev_token_cache_t *ev_token_cache_new(size_t max_entries);
void ev_token_cache_free(ev_token_cache_t *c);
/* 0, or -1 when the cache is full of fresh tokens (or out of memory). */
int ev_token_cache_put(ev_token_cache_t *c, const char *token, size_t len, int64_t user_id,
                       double ttl, double now);
int ev_token_cache_get(ev_token_cache_t *c, const char *token, size_t len, double now,
                       int64_t *user_id);
void ev_token_cache_drop(ev_token_cache_t *c, const char *token, size_t len);
void ev_token_cache_clear(ev_token_cache_t *c);
size_t ev_token_cache_count(const ev_token_cache_t *c);
double ev_token_cache_now(void);

#endif
