/* early.c - early answers (see early.h): rule storage and the matcher.
 *
 * Design. Rules are few (one per hot route) and kept in an array; a request
 * is checked against them in order, cheapest test first: method and path,
 * then the headers, then the token cache, then the body (parsed with cJSON),
 * then the gate. Every test fails towards Lua: the matcher must never answer
 * where the Lua route would have answered something else, so whatever it
 * cannot read exactly as Lua reads it is not its business.
 *
 * Reading the body as Lua does. evently.json decodes with lua-cjson and turns
 * integral numbers of magnitude <= 2^53 into integers; the route reads
 * body.event_id etc. from that table. A body that evently.json refuses (json.c:
 * not RFC 8259, a string that is not UTF-8, a number past the double range)
 * is answered 400 or 422 by Lua, so it goes to Lua: the same ev_json_check
 * decides first. Where cJSON and lua-cjson could read the same bytes
 * differently, the body goes to Lua too:
 *   - control bytes other than \t \n \r (cJSON skips any byte <= 32 as
 *     whitespace, lua-cjson only those four), a UTF-8 byte order mark (cJSON
 *     skips it, lua-cjson refuses it), and any backslash: escapes are where
 *     the two differ most ("\u0000" cuts a cJSON key short, Lua keeps it
 *     whole; cJSON takes "\u006`" that lua-cjson refuses, found by
 *     tests/fuzz/fuzz_early.c), and a booking body never needs one;
 *   - a key that appears twice (cJSON finds the first, Lua keeps the last);
 *   - anything after the value but whitespace;
 *   - bodies over EV_EARLY_MAX_BODY (far below either parser's depth limit).
 * Rules are replaced by replacing the process: a reload starts new workers,
 * which load the scripts, which register their rules afresh. */
#include "early.h"

#include <cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gate.h"
#include "json.h"
#include "problem.h"
#include "refusals.h"

/* Addresses a limited rule remembers at most (refusals.c: ~32 bytes each). */
#define REFUSAL_SLOTS 16384

typedef struct {
    ev_early_kind_t kind;
    char *method, *path, *route;
    /* when closed */
    char *pool, *key_field, *quantity_field, *content_type, *body;
    char **unless_fields, **unless_headers; /* headers lowercased */
    size_t nunless_fields, nunless_headers;
    int status;
    size_t body_len;
    /* when limited */
    char *policy;
    int limit, window;
    ev_refusals_t *refused;
} rule_t;

/* The answer ev_early_match() returns, written per match: rules move when
 * one is added, and a 429's Retry-After varies. */
typedef struct {
    char body[512], retry[24], policy[160], ratelimit[160];
    ev_http_header_t headers[4];
    ev_early_answer_t answer;
} answer_t;

struct ev_early {
    rule_t *rules;
    size_t count;
    int hooked;
    answer_t out;
};

/* ---- rules ---- */

ev_early_t *ev_early_new(void)
{
    return calloc(1, sizeof(ev_early_t));
}

static void strings_free(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

static void rule_free(rule_t *r)
{
    char *one[] = {r->method,         r->path,         r->route, r->pool,  r->key_field,
                   r->quantity_field, r->content_type, r->body,  r->policy};
    for (size_t i = 0; i < sizeof one / sizeof one[0]; i++)
        free(one[i]);
    strings_free(r->unless_fields, r->nunless_fields);
    strings_free(r->unless_headers, r->nunless_headers);
    ev_refusals_free(r->refused);
    memset(r, 0, sizeof *r);
}

static char *copy(const char *s, size_t n, int lower)
{
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    for (size_t i = 0; i < n; i++)
        d[i] = lower ? (char)tolower((unsigned char)s[i]) : s[i];
    d[n] = '\0';
    return d;
}

static char **copy_list(const char *const *v, size_t n, int lower)
{
    char **d = calloc(n ? n : 1, sizeof *d);
    for (size_t i = 0; d && i < n; i++)
        if (!(d[i] = copy(v[i], strlen(v[i]), lower))) {
            strings_free(d, i);
            return NULL;
        }
    return d;
}

static char *dup(const char *s)
{
    return s ? copy(s, strlen(s), 0) : NULL;
}

/* The strings of a "when closed" spec; 0 when all are there. */
static int fill_closed(rule_t *r, const ev_early_spec_t *s)
{
    r->nunless_fields = s->nunless_fields;
    r->nunless_headers = s->nunless_headers;
    r->pool = dup(s->pool);
    r->key_field = dup(s->key_field);
    r->quantity_field = dup(s->quantity_field);
    r->content_type = dup(s->content_type);
    r->body = s->body ? copy(s->body, s->body_len, 0) : NULL;
    r->unless_fields = copy_list(s->unless_fields, s->nunless_fields, 0);
    r->unless_headers = copy_list(s->unless_headers, s->nunless_headers, 1);
    if (!r->pool || !r->key_field || !r->quantity_field || !r->content_type || !r->body ||
        !r->unless_fields || !r->unless_headers)
        return -1;
    r->status = s->status;
    r->body_len = s->body_len;
    return 0;
}

static int fill_limited(rule_t *r, const ev_early_spec_t *s)
{
    r->policy = dup(s->policy);
    r->limit = s->limit;
    r->window = s->window;
    r->refused = ev_refusals_new(REFUSAL_SLOTS);
    return r->policy && r->refused ? 0 : -1;
}

/* Copies every string of spec into r; -1 (r freed) when memory runs out. */
static int rule_fill(rule_t *r, const ev_early_spec_t *s)
{
    r->kind = s->kind;
    r->method = dup(s->method);
    r->path = dup(s->path);
    r->route = dup(s->route);
    int bad = !r->method || !r->path || !r->route ||
              (s->kind == EV_EARLY_WHEN_CLOSED ? fill_closed(r, s) : fill_limited(r, s)) != 0;
    if (bad) {
        rule_free(r);
        return -1;
    }
    return 0;
}

int ev_early_add(ev_early_t *e, const ev_early_spec_t *spec)
{
    rule_t *rules = realloc(e->rules, (e->count + 1) * sizeof *rules);
    if (!rules)
        return -1;
    e->rules = rules;
    memset(&rules[e->count], 0, sizeof *rules);
    if (rule_fill(&rules[e->count], spec) != 0)
        return -1;
    e->count++;
    return 0;
}

void ev_early_clear(ev_early_t *e)
{
    for (size_t i = 0; i < e->count; i++)
        rule_free(&e->rules[i]);
    free(e->rules);
    e->rules = NULL;
    e->count = 0;
}

void ev_early_free(ev_early_t *e)
{
    if (!e)
        return;
    ev_early_clear(e);
    free(e);
}

size_t ev_early_count(const ev_early_t *e)
{
    return e->count;
}
void ev_early_set_hooked(ev_early_t *e, int hooked)
{
    e->hooked = hooked;
}

/* ---- the Authorization header, as auth.lua reads it ---- */

/* Lua's %s in the C locale */
static int lua_space(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}
static int token_char(char c)
{
    return isalnum((unsigned char)c) || c == '_' || c == '-';
}

int ev_early_bearer(const char *v, const char **token, size_t *len)
{
    if ((v[0] != 'B' && v[0] != 'b') || strncmp(v + 1, "earer", 5) != 0)
        return 0;
    const char *p = v + 6;
    if (!lua_space(*p))
        return 0;
    while (lua_space(*p))
        p++;
    const char *start = p;
    while (token_char(*p))
        p++;
    if (p == start)
        return 0;
    const char *end = p;
    while (lua_space(*p))
        p++;
    if (*p != '\0')
        return 0;
    *token = start;
    *len = (size_t)(end - start);
    return 1;
}

/* ---- headers ---- */

static size_t header_count(const ev_http_req_t *req, const char *name, const char **value)
{
    size_t n = 0, len = strlen(name);
    for (size_t i = 0; i < req->nheaders; i++)
        if (req->headers[i].name_len == len && memcmp(req->headers[i].name, name, len) == 0) {
            if (n++ == 0 && value)
                *value = req->headers[i].value;
        }
    return n;
}

/* evently.app decodes a body as JSON when its Content-Type contains "json",
 * any case. A repeated header is joined by Lua: left to it. */
static int json_content(const ev_http_req_t *req)
{
    const char *ct = NULL;
    if (header_count(req, "content-type", &ct) != 1)
        return 0;
    for (const char *p = ct; *p; p++)
        if (strncasecmp(p, "json", 4) == 0)
            return 1;
    return 0;
}

static int headers_ok(const rule_t *r, const ev_http_req_t *req, ev_token_cache_t *tokens,
                      double now)
{
    for (size_t i = 0; i < r->nunless_headers; i++)
        if (header_count(req, r->unless_headers[i], NULL) > 0)
            return 0;
    if (!json_content(req))
        return 0;
    const char *auth = NULL, *token;
    size_t len;
    if (header_count(req, "authorization", &auth) != 1 || !ev_early_bearer(auth, &token, &len))
        return 0;
    return ev_token_cache_get(tokens, token, len, now, NULL);
}

/* ---- the body ---- */

/* 0 for bytes cJSON and lua-cjson may read differently (see the top). */
static int plain_bytes(const char *b, size_t n)
{
    if (n >= 3 && memcmp(b, "\xEF\xBB\xBF", 3) == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)b[i];
        if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == '\\')
            return 0;
    }
    return 1;
}

/* A number Lua's decoder turns into an integer. */
static int integer_of(const cJSON *item, int64_t *out)
{
    if (!cJSON_IsNumber(item))
        return 0;
    double d = item->valuedouble;
    if (d != floor(d) || fabs(d) > 9007199254740992.0)
        return 0;
    *out = (int64_t)d;
    return 1;
}

static int only_space(const char *p, const char *end)
{
    for (; p < end; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            return 0;
    return 1;
}

static int is_unless(const rule_t *r, const char *name)
{
    for (size_t i = 0; i < r->nunless_fields; i++)
        if (strcmp(r->unless_fields[i], name) == 0)
            return 1;
    return 0;
}

/* Walks the object's members once: each wanted field once, no unless field. */
static int read_members(const rule_t *r, const cJSON *doc, int64_t *key, int64_t *quantity)
{
    int keys = 0, quantities = 0;
    for (const cJSON *m = doc->child; m; m = m->next) {
        if (!m->string || is_unless(r, m->string))
            return 0;
        if (strcmp(m->string, r->key_field) == 0) {
            if (keys++ || !integer_of(m, key))
                return 0;
        } else if (strcmp(m->string, r->quantity_field) == 0) {
            if (quantities++ || !integer_of(m, quantity))
                return 0;
        }
    }
    return keys == 1 && quantities == 1 && *quantity >= 1;
}

static int body_fields(const rule_t *r, const char *body, size_t len, int64_t *key,
                       int64_t *quantity)
{
    if (len == 0 || len > EV_EARLY_MAX_BODY || !plain_bytes(body, len) ||
        ev_json_check(body, len, NULL, NULL, NULL) != EV_JSON_OK)
        return 0;
    const char *end = NULL;
    cJSON *doc = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    int ok = doc && cJSON_IsObject(doc) && end && only_space(end, body + len) &&
             read_members(r, doc, key, quantity);
    cJSON_Delete(doc);
    return ok;
}

int ev_early_body_fields(const ev_early_t *e, size_t rule, const char *body, size_t len,
                         int64_t *key, int64_t *quantity)
{
    return rule < e->count && e->rules[rule].kind == EV_EARLY_WHEN_CLOSED &&
           body_fields(&e->rules[rule], body, len, key, quantity);
}

/* ---- refusals ---- */

int ev_early_refused(ev_early_t *e, const char *policy, const char *address, double retry,
                     double now)
{
    int n = 0;
    for (size_t i = 0; e && i < e->count; i++) {
        rule_t *r = &e->rules[i];
        if (r->kind == EV_EARLY_WHEN_LIMITED && strcmp(r->policy, policy) == 0 &&
            ev_refusals_put(r->refused, address, retry, now) == 0)
            n++;
    }
    return n;
}

void ev_early_unrefused(ev_early_t *e, const char *policy, const char *address)
{
    for (size_t i = 0; e && i < e->count; i++) {
        rule_t *r = &e->rules[i];
        if (r->kind == EV_EARLY_WHEN_LIMITED && strcmp(r->policy, policy) == 0)
            ev_refusals_forget(r->refused, address);
    }
}

/* evently.app decodes a JSON body before the route runs, answering 400/422
 * when it cannot: such a body is Lua's to answer. Any Content-Type naming
 * JSON counts (Lua joins repeated ones and looks for "json" in the lot). */
static int body_decodes(const ev_http_req_t *req)
{
    if (req->body_len == 0)
        return 1;
    int json = 0;
    for (size_t i = 0; i < req->nheaders && !json; i++) {
        const ev_http_header_t *h = &req->headers[i];
        if (h->name_len == 12 && memcmp(h->name, "content-type", 12) == 0)
            for (size_t j = 0; j + 4 <= h->value_len && !json; j++)
                json = strncasecmp(h->value + j, "json", 4) == 0;
    }
    return !json || (req->body_len <= EV_EARLY_MAX_BODY &&
                     ev_json_check(req->body, req->body_len, NULL, NULL, NULL) == EV_JSON_OK);
}

/* limit.response(info) in C: the same members and headers. */
static const ev_early_answer_t *closed_answer(ev_early_t *e, const rule_t *r)
{
    answer_t *a = &e->out;
    a->headers[0] =
        (ev_http_header_t){"Content-Type", 12, r->content_type, strlen(r->content_type)};
    a->answer = (ev_early_answer_t){EV_EARLY_WHEN_CLOSED, r->status, a->headers, 1, r->body,
                                    r->body_len,          r->route};
    return &a->answer;
}

static const ev_early_answer_t *limited_answer(ev_early_t *e, const rule_t *r, double retry)
{
    answer_t *a = &e->out;
    long secs = (long)ceil(retry);
    if (secs < 1)
        secs = 1;
    char detail[64], members[256];
    snprintf(detail, sizeof detail, "too many requests; retry after %ld s", secs);
    int mn = snprintf(members, sizeof members, "\"violated-policies\":[\"%s\"],\"retry_after\":%ld",
                      r->policy, secs);
    int n = mn < 0 || (size_t)mn >= sizeof members
                ? -1
                : ev_problem_body(a->body, sizeof a->body, 429, "Too Many Requests", "rate-limited",
                                  detail, members);
    int rn = snprintf(a->retry, sizeof a->retry, "%ld", secs);
    int pn =
        snprintf(a->policy, sizeof a->policy, "\"%s\";q=%d;w=%d", r->policy, r->limit, r->window);
    int ln = snprintf(a->ratelimit, sizeof a->ratelimit, "\"%s\";r=0;t=%ld", r->policy, secs);
    if (n < 0 || (size_t)n >= sizeof a->body || pn < 0 || (size_t)pn >= sizeof a->policy ||
        ln < 0 || (size_t)ln >= sizeof a->ratelimit)
        return NULL; /* a policy name too long for the buffers: Lua answers */
    a->headers[0] = (ev_http_header_t){"Content-Type", 12, "application/problem+json", 24};
    a->headers[1] = (ev_http_header_t){"Retry-After", 11, a->retry, (size_t)rn};
    a->headers[2] = (ev_http_header_t){"RateLimit-Policy", 16, a->policy, (size_t)pn};
    a->headers[3] = (ev_http_header_t){"RateLimit", 9, a->ratelimit, (size_t)ln};
    a->answer = (ev_early_answer_t){
        EV_EARLY_WHEN_LIMITED, 429, a->headers, 4, a->body, (size_t)n, r->route};
    return &a->answer;
}

/* ---- matching ---- */

static int match_closed(const rule_t *r, ev_token_cache_t *tokens, const ev_http_req_t *req,
                        double now)
{
    int64_t key, quantity;
    if (!tokens || !headers_ok(r, req, tokens, now))
        return 0;
    if (!body_fields(r, req->body, req->body_len, &key, &quantity) || quantity > 1000000)
        return 0;
    return ev_gate_closed(r->pool, key, (int)quantity);
}

const ev_early_answer_t *ev_early_match(ev_early_t *e, ev_token_cache_t *tokens,
                                        const ev_http_req_t *req, double now)
{
    if (!e || e->hooked)
        return NULL;
    for (size_t i = 0; i < e->count; i++) {
        const rule_t *r = &e->rules[i];
        double retry;
        if (strcmp(req->method, r->method) != 0 || strcmp(req->path, r->path) != 0)
            continue;
        if (r->kind == EV_EARLY_WHEN_CLOSED && match_closed(r, tokens, req, now))
            return closed_answer(e, r);
        if (r->kind == EV_EARLY_WHEN_LIMITED &&
            ev_refusals_get(r->refused, req->peer, now, &retry) && body_decodes(req))
            return limited_answer(e, r, retry);
    }
    return NULL;
}
