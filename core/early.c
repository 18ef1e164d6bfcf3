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
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gate.h"
#include "json.h"

typedef struct {
    char *method, *path, *route, *pool, *key_field, *quantity_field, *content_type, *body;
    char **unless_fields, **unless_headers; /* headers lowercased */
    size_t nunless_fields, nunless_headers;
    ev_early_answer_t answer;
} rule_t;

struct ev_early {
    rule_t *rules;
    size_t count;
    int hooked;
};

/* ---- rules ---- */

ev_early_t *ev_early_new(void) { return calloc(1, sizeof(ev_early_t)); }

static void strings_free(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

static void rule_free(rule_t *r)
{
    char *one[] = {r->method, r->path, r->route, r->pool, r->key_field, r->quantity_field,
                   r->content_type, r->body};
    for (size_t i = 0; i < sizeof one / sizeof one[0]; i++)
        free(one[i]);
    strings_free(r->unless_fields, r->nunless_fields);
    strings_free(r->unless_headers, r->nunless_headers);
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

/* Copies every string of spec into r; -1 (r freed) when memory runs out. */
static int rule_fill(rule_t *r, const ev_early_spec_t *s)
{
    r->nunless_fields = s->nunless_fields;
    r->nunless_headers = s->nunless_headers;
    r->method = copy(s->method, strlen(s->method), 0);
    r->path = copy(s->path, strlen(s->path), 0);
    r->route = copy(s->route, strlen(s->route), 0);
    r->pool = copy(s->pool, strlen(s->pool), 0);
    r->key_field = copy(s->key_field, strlen(s->key_field), 0);
    r->quantity_field = copy(s->quantity_field, strlen(s->quantity_field), 0);
    r->content_type = copy(s->content_type, strlen(s->content_type), 0);
    r->body = copy(s->body, s->body_len, 0);
    r->unless_fields = copy_list(s->unless_fields, s->nunless_fields, 0);
    r->unless_headers = copy_list(s->unless_headers, s->nunless_headers, 1);
    if (!r->method || !r->path || !r->route || !r->pool || !r->key_field ||
        !r->quantity_field || !r->content_type || !r->body || !r->unless_fields ||
        !r->unless_headers) {
        rule_free(r);
        return -1;
    }
    r->answer = (ev_early_answer_t){s->status, r->content_type, r->body, s->body_len, r->route};
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

size_t ev_early_count(const ev_early_t *e) { return e->count; }
void ev_early_set_hooked(ev_early_t *e, int hooked) { e->hooked = hooked; }

/* ---- the Authorization header, as auth.lua reads it ---- */

/* Lua's %s in the C locale */
static int lua_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
static int token_char(char c) { return isalnum((unsigned char)c) || c == '_' || c == '-'; }

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
    return rule < e->count && body_fields(&e->rules[rule], body, len, key, quantity);
}

/* ---- matching ---- */

static int match_rule(const rule_t *r, ev_token_cache_t *tokens, const ev_http_req_t *req,
                      double now)
{
    int64_t key, quantity;
    if (strcmp(req->method, r->method) != 0 || strcmp(req->path, r->path) != 0)
        return 0;
    if (!headers_ok(r, req, tokens, now))
        return 0;
    if (!body_fields(r, req->body, req->body_len, &key, &quantity) || quantity > 1000000)
        return 0;
    return ev_gate_closed(r->pool, key, (int)quantity);
}

const ev_early_answer_t *ev_early_match(const ev_early_t *e, ev_token_cache_t *tokens,
                                        const ev_http_req_t *req, double now)
{
    if (!e || !tokens || e->hooked)
        return NULL;
    for (size_t i = 0; i < e->count; i++)
        if (match_rule(&e->rules[i], tokens, req, now))
            return &e->rules[i].answer;
    return NULL;
}
