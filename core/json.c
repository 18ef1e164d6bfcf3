/* json.c - a strict RFC 8259 checker for JSON texts (see json.h).
 *
 * Design. Request bodies are decoded by lua-cjson, which reads more than
 * JSON: hex (0x10), NaN, Infinity, +1, 012, 1. and -.5, and numbers past
 * the double range as inf; it passes any bytes through strings. Rather than
 * a second decoder, one recursive-descent pass over the text decides what
 * is JSON, and lua-cjson only builds the values of texts that passed. Two
 * kinds of failure, kept apart because clients answer them differently:
 *   - malformed: the text does not follow the grammar (RFC 8259 sections
 *     2-7: numbers are -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?,
 *     whitespace is space, tab, CR, LF; no BOM; controls in strings must be
 *     escaped; containers nest at most EV_JSON_MAX_DEPTH). The first one
 *     stops the pass. evently.app answers 400 malformed-json.
 *   - invalid: the grammar holds, but a value cannot be taken: a string or
 *     member name that is not UTF-8 (raw bytes, or an unpaired surrogate
 *     escape "\ud800", which has no UTF-8 form; RFC 8259 8.1-8.2), or a
 *     number beyond the double range (1e400; section 6 lets a reader limit
 *     range, and reading it as inf would store a value nobody sent). The
 *     pass goes on, so each one is reported with the path of its field.
 *     evently.app answers 422 validation naming each field, as for any
 *     well-formed body with bad fields.
 * A number's range is decided by strtod on a copy of it; a number longer
 * than NUMBER_MAX bytes is judged by its decimal exponent alone, so such a
 * number of magnitude in [1e308, 1e309) is refused even when a double holds
 * it (nobody writes DBL_MAX with 500 digits). Numbers that underflow read
 * as 0 or a subnormal: a value near the one sent.
 *
 * API: ev_json_check(), then ev_json_utf8() for code that writes JSON
 * (lua_json.c replaces what it reports ill-formed). To accept more (say
 * comments), extend the grammar here: lua-cjson must read it too, which
 * tests/fuzz/fuzz_json.c checks. */
#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NUMBER_MAX 512 /* longer numbers are not copied for strtod */
#define PATH_MAX_LEN 256

/* The path to a value: one segment per container it is in, on the C stack. */
typedef struct seg {
    const struct seg *up;
    const char *key; /* raw member name; NULL: an array element */
    size_t key_len, index;
} seg_t;

typedef struct {
    const char *s;
    size_t len, pos;
    ev_json_invalid_fn on_invalid;
    void *ud;
    int invalid;                 /* count of invalid values */
    ev_json_error_t first_bad;   /* the first invalid value */
    ev_json_error_t malformed;   /* where the grammar broke */
} ck_t;

enum { STR_OK, STR_SURROGATE, STR_NOT_UTF8 };

int ev_json_utf8(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    unsigned char lo = 0x80, hi = 0xBF;
    int need;
    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xC2 && p[0] <= 0xDF) {
        need = 1;
    } else if (p[0] >= 0xE0 && p[0] <= 0xEF) {
        need = 2;
        if (p[0] == 0xE0)
            lo = 0xA0; /* shorter forms are overlong */
        else if (p[0] == 0xED)
            hi = 0x9F; /* ED A0..BF are the surrogates */
    } else if (p[0] >= 0xF0 && p[0] <= 0xF4) {
        need = 3;
        if (p[0] == 0xF0)
            lo = 0x90;
        else if (p[0] == 0xF4)
            hi = 0x8F; /* past U+10FFFF */
    } else {
        return -1; /* continuation byte, C0, C1, F5..FF */
    }
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n || p[i] < lo || p[i] > hi)
            return -i;
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

/* ---- paths and reports ---- */

typedef struct {
    char *p;
    size_t n, cap;
} out_t;

static void add(out_t *o, const char *s, size_t n)
{
    size_t room = o->cap - 1 - o->n;
    if (n > room)
        n = room;
    memcpy(o->p + o->n, s, n);
    o->n += n;
    o->p[o->n] = '\0';
}

static void write_path(const seg_t *g, out_t *o)
{
    if (!g)
        return;
    write_path(g->up, o);
    if (g->key) {
        if (o->n)
            add(o, ".", 1);
        add(o, g->key, g->key_len);
    } else {
        char b[32];
        int k = snprintf(b, sizeof b, "[%zu]", g->index);
        add(o, b, (size_t)k);
    }
}

static int malformed(ck_t *c, size_t at, const char *reason)
{
    c->malformed = (ev_json_error_t){at, reason};
    return -1;
}

static void invalid(ck_t *c, const seg_t *at, size_t offset, const char *message)
{
    if (c->invalid++ == 0)
        c->first_bad = (ev_json_error_t){offset, message};
    if (!c->on_invalid)
        return;
    char path[PATH_MAX_LEN];
    out_t o = {path, 0, sizeof path};
    path[0] = '\0';
    write_path(at, &o);
    c->on_invalid(c->ud, o.n ? path : "body", message);
}

/* ---- the grammar ---- */

static int is_digit(char ch) { return ch >= '0' && ch <= '9'; }

/* A byte that may not follow a number: "012", "0x10", "1.5.2", "1e5e3". */
static int runs_on(char ch)
{
    return is_digit(ch) || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '.' ||
           ch == '+' || ch == '-' || ch == '_';
}

static void skip_ws(ck_t *c)
{
    while (c->pos < c->len) {
        char ch = c->s[c->pos];
        if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r')
            return;
        c->pos++;
    }
}

/* The code unit of 4 hex digits at s[at], or -1. */
static long hex4(const ck_t *c, size_t at)
{
    long v = 0;
    if (at + 4 > c->len)
        return -1;
    for (size_t i = at; i < at + 4; i++) {
        char ch = c->s[i];
        int d = is_digit(ch) ? ch - '0' : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10
              : (ch >= 'A' && ch <= 'F') ? ch - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* At a '"': past the closing one. -1 malformed, else STR_*. */
static int string(ck_t *c)
{
    size_t start = c->pos++;
    int bad = STR_OK;
    for (;;) {
        if (c->pos >= c->len)
            return malformed(c, start, "unterminated string");
        unsigned char ch = (unsigned char)c->s[c->pos];
        if (ch == '"') {
            c->pos++;
            return bad;
        }
        if (ch < 0x20)
            return malformed(c, c->pos, "control character in a string");
        if (ch >= 0x80) {
            int k = ev_json_utf8(c->s + c->pos, c->len - c->pos);
            if (k < 0)
                bad = STR_NOT_UTF8;
            c->pos += (size_t)(k < 0 ? -k : k);
            continue;
        }
        if (ch != '\\') {
            c->pos++;
            continue;
        }
        char e = c->pos + 1 < c->len ? c->s[c->pos + 1] : '\0';
        if (e && strchr("\"\\/bfnrt", e)) {
            c->pos += 2;
            continue;
        }
        long u = e == 'u' ? hex4(c, c->pos + 2) : -1;
        if (u < 0)
            return malformed(c, c->pos, "invalid escape");
        c->pos += 6;
        if (u >= 0xD800 && u <= 0xDBFF && c->pos + 1 < c->len && c->s[c->pos] == '\\' &&
            c->s[c->pos + 1] == 'u') {
            long lo = hex4(c, c->pos + 2);
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
                c->pos += 6; /* a pair: one character */
                continue;
            }
        }
        if (u >= 0xD800 && u <= 0xDFFF && bad == STR_OK)
            bad = STR_SURROGATE;
    }
}

/* Whether the number t[0..n) (grammar already checked) is a finite double. */
static int finite_number(const char *t, size_t n)
{
    if (n < NUMBER_MAX) {
        char buf[NUMBER_MAX];
        memcpy(buf, t, n);
        buf[n] = '\0';
        return isfinite(strtod(buf, NULL));
    }
    /* e: decimal exponent of the first significant digit, the value being
     * in [10^e, 10^(e+1)) before the exponent part */
    size_t i = t[0] == '-';
    long long e = 0, exp = 0;
    int seen = 0;
    for (; i < n && is_digit(t[i]); i++) {
        if (seen)
            e++;
        else if (t[i] != '0')
            seen = 1;
    }
    if (i < n && t[i] == '.')
        for (i++; i < n && is_digit(t[i]) && !seen; i++) {
            e--;
            seen = t[i] != '0';
        }
    if (!seen)
        return 1; /* zero */
    while (i < n && t[i] != 'e' && t[i] != 'E')
        i++;
    if (i < n) {
        int neg = t[++i] == '-';
        if (t[i] == '-' || t[i] == '+')
            i++;
        for (; i < n && exp < 1000000; i++) /* saturates: far past any double */
            exp = exp * 10 + (t[i] - '0');
        exp = neg ? -exp : exp;
    }
    return e + exp < 308;
}

static int number(ck_t *c, const seg_t *at)
{
    const char *s = c->s;
    size_t start = c->pos, n = c->len;
    if (s[c->pos] == '-')
        c->pos++;
    if (c->pos < n && s[c->pos] == '0') {
        c->pos++;
    } else if (c->pos < n && is_digit(s[c->pos])) {
        while (c->pos < n && is_digit(s[c->pos]))
            c->pos++;
    } else {
        return malformed(c, start, "invalid number");
    }
    if (c->pos < n && s[c->pos] == '.') {
        if (++c->pos >= n || !is_digit(s[c->pos]))
            return malformed(c, start, "invalid number");
        while (c->pos < n && is_digit(s[c->pos]))
            c->pos++;
    }
    if (c->pos < n && (s[c->pos] == 'e' || s[c->pos] == 'E')) {
        if (++c->pos < n && (s[c->pos] == '+' || s[c->pos] == '-'))
            c->pos++;
        if (c->pos >= n || !is_digit(s[c->pos]))
            return malformed(c, start, "invalid number");
        while (c->pos < n && is_digit(s[c->pos]))
            c->pos++;
    }
    /* "012", "0x10", "1.5.2": a number that runs on is one bad number */
    if (c->pos < n && runs_on(s[c->pos]))
        return malformed(c, start, "invalid number");
    if (!finite_number(s + start, c->pos - start))
        invalid(c, at, start, "is out of range");
    return 0;
}

static int literal(ck_t *c, const char *word, size_t n)
{
    if (c->len - c->pos < n || memcmp(c->s + c->pos, word, n) != 0)
        return malformed(c, c->pos, "invalid value");
    c->pos += n;
    return 0;
}

static int value(ck_t *c, const seg_t *at, int depth);

/* After a member or an item: 1 when a ',' says another follows, 0 when
 * `close` ends the container, else the malformed answer (-1). */
static int next_or_close(ck_t *c, char close, const char *expected)
{
    skip_ws(c);
    if (c->pos < c->len && c->s[c->pos] == ',') {
        c->pos++;
        return 1;
    }
    if (c->pos < c->len && c->s[c->pos] == close) {
        c->pos++;
        return 0;
    }
    return malformed(c, c->pos, expected);
}

static int object(ck_t *c, const seg_t *at, int depth)
{
    if (depth > EV_JSON_MAX_DEPTH)
        return malformed(c, c->pos, "nested too deep");
    c->pos++;
    skip_ws(c);
    if (c->pos < c->len && c->s[c->pos] == '}') {
        c->pos++;
        return 0;
    }
    for (;;) {
        skip_ws(c);
        if (c->pos >= c->len || c->s[c->pos] != '"')
            return malformed(c, c->pos, "expected a member name");
        size_t kstart = c->pos;
        int r = string(c);
        if (r < 0)
            return -1;
        seg_t member = {at, c->s + kstart + 1, c->pos - kstart - 2, 0};
        if (r != STR_OK)
            invalid(c, &member, kstart,
                    r == STR_NOT_UTF8 ? "name must be valid UTF-8"
                                      : "name must not contain an unpaired surrogate escape");
        skip_ws(c);
        if (c->pos >= c->len || c->s[c->pos] != ':')
            return malformed(c, c->pos, "expected ':'");
        c->pos++;
        if (value(c, &member, depth) < 0)
            return -1;
        int more = next_or_close(c, '}', "expected ',' or '}'");
        if (more <= 0)
            return more;
    }
}

static int array(ck_t *c, const seg_t *at, int depth)
{
    if (depth > EV_JSON_MAX_DEPTH)
        return malformed(c, c->pos, "nested too deep");
    c->pos++;
    skip_ws(c);
    if (c->pos < c->len && c->s[c->pos] == ']') {
        c->pos++;
        return 0;
    }
    for (seg_t item = {at, NULL, 0, 0};; item.index++) {
        if (value(c, &item, depth) < 0)
            return -1;
        int more = next_or_close(c, ']', "expected ',' or ']'");
        if (more <= 0)
            return more;
    }
}

static int value(ck_t *c, const seg_t *at, int depth)
{
    skip_ws(c);
    if (c->pos >= c->len)
        return malformed(c, c->pos, "unexpected end");
    size_t start = c->pos;
    int r;
    switch (c->s[c->pos]) {
    case '{': return object(c, at, depth + 1);
    case '[': return array(c, at, depth + 1);
    case 't': return literal(c, "true", 4);
    case 'f': return literal(c, "false", 5);
    case 'n': return literal(c, "null", 4);
    case '"':
        r = string(c);
        if (r > 0)
            invalid(c, at, start,
                    r == STR_NOT_UTF8 ? "must be valid UTF-8"
                                      : "must not contain an unpaired surrogate escape");
        return r < 0 ? -1 : 0;
    default:
        if (c->s[c->pos] == '-' || is_digit(c->s[c->pos]))
            return number(c, at);
        return malformed(c, c->pos, "invalid value");
    }
}

ev_json_status_t ev_json_check(const char *s, size_t len, ev_json_invalid_fn on_invalid,
                               void *ud, ev_json_error_t *err)
{
    ck_t c = {.s = s, .len = len, .on_invalid = on_invalid, .ud = ud};
    int r = value(&c, NULL, 0);
    if (r == 0) {
        skip_ws(&c);
        if (c.pos < len)
            r = malformed(&c, c.pos, "unexpected text after the value");
    }
    if (r < 0) {
        if (err)
            *err = c.malformed;
        return EV_JSON_MALFORMED;
    }
    if (c.invalid) {
        if (err)
            *err = c.first_bad;
        return EV_JSON_INVALID;
    }
    return EV_JSON_OK;
}
