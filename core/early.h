/* early.h - early answers: declarative rules a worker checks on a parsed
 * request before it creates a Lua coroutine. Two kinds:
 *
 * "Refuse when closed" (Lua: evently.early.refuse_when_closed{...},
 * core/lua_early.c): a request that
 *   - has the rule's method and exact path,
 *   - carries exactly one Authorization: Bearer token that Lua validated a
 *     moment ago (core/token_cache.c),
 *   - has one Content-Type naming JSON and a body that is a JSON object in
 *     which key_field and quantity_field are integers (quantity >= 1), each
 *     once, and none of unless_fields appears,
 *   - has none of unless_headers,
 *   - asks for a quantity the sold-out gate refuses (ev_gate_closed(pool,
 *     key, quantity), core/gate.c)
 * is answered the rule's fixed status, Content-Type and body.
 *
 * "Refuse when limited" (Lua: evently.limit's limit.answer_early{...}): a
 * request that
 *   - has the rule's method and exact path,
 *   - comes from an address the rule's rate-limit policy refused lately
 *     (ev_early_refused(), kept in core/refusals.c) whose retry time has not
 *     come,
 *   - has a body evently.app would decode (not JSON by its Content-Type, or
 *     at most EV_EARLY_MAX_BODY bytes that ev_json_check accepts)
 * is answered 429 exactly as limit.response() would: problem
 * "rate-limited", Retry-After, RateLimit-Policy and RateLimit. The route
 * must check that policy first, before reading the body.
 *
 * Anything else, and everything while request/response hooks are registered
 * (they would be skipped), falls through to Lua unchanged: a rule may only
 * ever answer what the Lua route would have answered itself.
 *
 * API in calling order:
 *   ev_early_new()
 *   ev_early_add()            one rule (strings copied)
 *   ev_early_set_hooked()     hooks registered: answer nothing early
 *   ev_early_refused()        a limit refused an address (limited rules)
 *   ev_early_match()          the answer for a request, or NULL: ask Lua
 *   ev_early_clear(), ev_early_free()
 * Adding another kind: a new kind and its spec fields, and a check in
 * match_rule(). */
#ifndef EV_EARLY_H
#define EV_EARLY_H

#include <stddef.h>
#include <stdint.h>

#include "http.h"
#include "token_cache.h"

typedef struct ev_early ev_early_t;

typedef enum { EV_EARLY_WHEN_CLOSED, EV_EARLY_WHEN_LIMITED } ev_early_kind_t;

typedef struct {
    ev_early_kind_t kind;
    const char *method;           /* "POST" */
    const char *path;             /* exact, e.g. "/api/v1/bookings" */
    const char *route;            /* route name for logs and metrics */
    /* EV_EARLY_WHEN_LIMITED: the policy as limit.response() names it */
    const char *policy;           /* "login-address" */
    int limit, window;            /* its quota: limit units per window seconds */
    /* EV_EARLY_WHEN_CLOSED */
    const char *pool;             /* gate pool, e.g. "seats" */
    const char *key_field;        /* body field holding the gate key */
    const char *quantity_field;   /* body field holding the quantity */
    const char *const *unless_fields;  /* body fields that send it to Lua */
    size_t nunless_fields;
    const char *const *unless_headers; /* header names (any case) that send it to Lua */
    size_t nunless_headers;
    int status;
    const char *content_type;
    const char *body;
    size_t body_len;
} ev_early_spec_t;

typedef struct {
    ev_early_kind_t kind;
    int status;
    const ev_http_header_t *headers; /* Content-Type first */
    size_t nheaders;
    const char *body;
    size_t body_len;
    const char *route;
} ev_early_answer_t;

/* Bodies longer than this are left to Lua (a booking body is ~40 bytes). */
#define EV_EARLY_MAX_BODY 1024

ev_early_t *ev_early_new(void);
void ev_early_free(ev_early_t *e);
/* 0, or -1 out of memory (nothing added). */
int ev_early_add(ev_early_t *e, const ev_early_spec_t *spec);
void ev_early_clear(ev_early_t *e);
size_t ev_early_count(const ev_early_t *e);
void ev_early_set_hooked(ev_early_t *e, int hooked);
/* policy refused address (limit.address form) for retry seconds from now:
 * the limited rules of that policy answer it until then. Returns how many
 * rules took it (0: no such rule, or not an address). */
int ev_early_refused(ev_early_t *e, const char *policy, const char *address, double retry,
                     double now);
/* A refund gave address a unit back: its requests go to Lua again. */
void ev_early_unrefused(ev_early_t *e, const char *policy, const char *address);
/* The answer for req, valid until the next call, or NULL. tokens may be NULL
 * (then no "when closed" rule matches). */
const ev_early_answer_t *ev_early_match(ev_early_t *e, ev_token_cache_t *tokens,
                                        const ev_http_req_t *req, double now);

/* The token of an Authorization value, read exactly as auth.lua's
 * "^[Bb]earer%s+([%w_%-]+)%s*$": 1 and the token (pointer, length), or 0. */
int ev_early_bearer(const char *value, const char **token, size_t *len);
/* Reads key_field and quantity_field of a JSON body as the rule does:
 * 1 and the two integers, or 0 (fall through). body need not end in NUL. */
int ev_early_body_fields(const ev_early_t *e, size_t rule, const char *body, size_t len,
                         int64_t *key, int64_t *quantity);

#endif
