/* lua_mail.c - evently.mail.core: the SMTP primitive under evently.mail.
 *
 *   core.send{url=, from=, to=, subject=, text=, headers=?, timeout=?, connect_timeout=?}
 *       -> true, message_id | nil, err, smtp_code                      [yields]
 *       One message to one recipient through the worker's mail engine
 *       (mail.c: libcurl multi handles on lane threads), created on first use. url is smtp:// or smtps://;
 *       timeout (seconds, default 30) bounds the whole send, connect_timeout
 *       (default 10) the connection. err starts with a word of mail.h's
 *       vocabulary: invalid, refused, deferred, unavailable, timeout, error;
 *       smtp_code is the server's last reply code (0 when none). A value that
 *       cannot go into a header (CR/LF/NUL, a malformed address) returns
 *       nil, "invalid: ..." at once, without yielding.
 *   core.build{from=, to=, subject=, text=, headers=?} -> message | nil, err
 *       the RFC 5322 message send would transmit (for specs and debugging)
 *   core.pending() -> number of sends in flight in this worker
 * Wrong argument types raise. send runs only in a request, timer or script
 * coroutine.
 *
 * The wait follows co.h: the engine's callback copies the outcome into the
 * wait_t and wakes the coroutine (on the worker's loop); a timeout or an
 * abort cancels the send (the lane drops it, nothing is called back) and
 * release frees the wait. */
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "co.h"
#include "mail.h"
#include "runtime.h"

#define MAX_HEADERS 32

typedef struct {
    ev_co_t *co;
    ev_mail_req_t *q;         /* NULL once answered or cancelled */
    double timeout_s;
    int ok, code;
    char error[400];
    char msgid[160];
} wait_t;

static void on_sent(const ev_mail_result_t *res, void *arg)
{
    wait_t *w = arg;
    w->q = NULL; /* the engine frees it after we return */
    w->ok = res->ok;
    w->code = res->smtp_code;
    snprintf(w->error, sizeof w->error, "%s", res->error ? res->error : "");
    snprintf(w->msgid, sizeof w->msgid, "%s", res->message_id ? res->message_id : "");
    ev_co_wake(w->co, EV_WAKE_DONE);
}

static int send_push(lua_State *L, void *data, ev_wake_t why)
{
    wait_t *w = data;
    if (why == EV_WAKE_TIMEOUT) {
        lua_pushnil(L);
        lua_pushfstring(L, "timeout: no answer from the SMTP server within %f s", w->timeout_s);
        lua_pushinteger(L, 0);
        return 3;
    }
    if (w->ok) {
        lua_pushboolean(L, 1);
        lua_pushstring(L, w->msgid);
        return 2;
    }
    lua_pushnil(L);
    lua_pushstring(L, w->error);
    lua_pushinteger(L, w->code);
    return 3;
}

static void send_cancel(void *data)
{
    wait_t *w = data;
    ev_mail_cancel(w->q);
    w->q = NULL;
}

static void send_release(void *data) { free(data); }

static const ev_wait_ops_t send_ops = {"mail.send", send_push, send_cancel, send_release};

/* ---- arguments ---- */

static const char *field_string(lua_State *L, const char *name, int required, size_t *len)
{
    lua_getfield(L, 1, name);
    if (lua_isnil(L, -1) && !required) {
        lua_pop(L, 1);
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "mail: '%s' must be a string", name);
    const char *s = lua_tolstring(L, -1, len);
    lua_pop(L, 1); /* still referenced by the table at 1 */
    return s;
}

static double field_seconds(lua_State *L, const char *name, double def)
{
    lua_getfield(L, 1, name);
    double s = def;
    if (!lua_isnil(L, -1)) {
        if (!lua_isnumber(L, -1))
            luaL_error(L, "mail: '%s' must be a number of seconds", name);
        s = lua_tonumber(L, -1);
        if (!(s > 0 && s <= 600))
            luaL_error(L, "mail: '%s' must be in (0, 600] seconds", name);
    }
    lua_pop(L, 1);
    return s;
}

/* headers = {Name = "value", ...} -> flat pairs in out; the strings stay
 * alive in the table at stack index 1. Returns the number of pairs. */
static int field_headers(lua_State *L, const char **out)
{
    lua_getfield(L, 1, "headers");
    int n = 0;
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    luaL_argcheck(L, lua_istable(L, -1), 1, "mail: 'headers' must be a table of name = value");
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "mail: 'headers' must map strings to strings");
        if (n == MAX_HEADERS)
            luaL_error(L, "mail: at most %d extra headers", MAX_HEADERS);
        out[2 * n] = lua_tostring(L, -2);
        out[2 * n + 1] = lua_tostring(L, -1);
        if (strlen(out[2 * n]) != lua_rawlen(L, -2) || strlen(out[2 * n + 1]) != lua_rawlen(L, -1))
            out[2 * n + 1] = "\r"; /* a NUL byte: refused as a control character */
        n++;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return n;
}

/* A header field with a NUL byte: C would see only the part before it. */
static const char *has_nul(lua_State *L, const char *name)
{
    size_t n;
    const char *s = field_string(L, name, 1, &n);
    return strlen(s) == n ? NULL : name;
}

/* Fills msg from the table at 1 (raising on wrong types); returns the name
 * of a field that holds a NUL byte, or NULL. */
static const char *check_msg(lua_State *L, ev_mail_msg_t *msg, const char **headers)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    msg->from = field_string(L, "from", 1, NULL);
    msg->to = field_string(L, "to", 1, NULL);
    msg->subject = field_string(L, "subject", 1, NULL);
    msg->text = field_string(L, "text", 1, &msg->text_len);
    luaL_argcheck(L, msg->text_len <= 8u << 20, 1, "mail: 'text' is over 8 MiB");
    msg->headers = headers;
    msg->nheaders = field_headers(L, headers);
    const char *bad = has_nul(L, "from");
    bad = bad ? bad : has_nul(L, "to");
    return bad ? bad : has_nul(L, "subject");
}

static int push_nul_refusal(lua_State *L, const char *field)
{
    lua_pushnil(L);
    lua_pushfstring(L, "invalid: %s contains CR, LF or another control character", field);
    lua_pushinteger(L, 0);
    return 3;
}

static ev_mail_t *engine(lua_State *L)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    if (!rt->mail && !(rt->mail = ev_mail_new(rt->base)))
        luaL_error(L, "mail: cannot set up libcurl");
    return rt->mail;
}

/* ---- functions ---- */

static int m_send(lua_State *L)
{
    ev_mail_msg_t msg;
    const char *headers[2 * MAX_HEADERS];
    const char *nul = check_msg(L, &msg, headers);
    ev_mail_opts_t opts = {field_string(L, "url", 1, NULL),
                           (long)(field_seconds(L, "timeout", 30) * 1000),
                           (long)(field_seconds(L, "connect_timeout", 10) * 1000)};
    ev_co_t *co = ev_co_current(L);
    if (!co || !lua_isyieldable(L))
        return luaL_error(L, "mail.send: must be called from a request, timer or script coroutine");
    if (nul)
        return push_nul_refusal(L, nul);
    ev_mail_t *m = engine(L);
    wait_t *w = calloc(1, sizeof *w);
    if (!w)
        return luaL_error(L, "out of memory");
    w->co = co;
    w->timeout_s = opts.timeout_ms / 1000.0;
    char err[400];
    w->q = ev_mail_send(m, &opts, &msg, on_sent, w, err, sizeof err);
    if (!w->q) {
        free(w);
        lua_pushnil(L);
        lua_pushstring(L, err);
        lua_pushinteger(L, 0);
        return 3;
    }
    /* The caller's bound is this wait's: libcurl's own timeouts (set to the
     * same) can each be spent waiting for the DATA answer and then again for
     * QUIT's, on the lane; the lane finishes that unseen after a cancel. */
    return ev_co_wait(L, w->timeout_s, &send_ops, w);
}

static int m_build(lua_State *L)
{
    ev_mail_msg_t msg;
    const char *headers[2 * MAX_HEADERS];
    const char *nul = check_msg(L, &msg, headers);
    if (nul) {
        push_nul_refusal(L, nul);
        lua_pop(L, 1); /* nil, err: build has no smtp_code */
        return 2;
    }
    char *out = NULL, from[256], to[256], err[400];
    size_t len;
    if (ev_mail_build(&msg, &out, &len, from, to, sizeof from, err, sizeof err) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushlstring(L, out, len); /* only a memory error here would leak out */
    free(out);
    return 1;
}

static int m_pending(lua_State *L)
{
    lua_pushinteger(L, ev_mail_pending(ev_runtime_get(L)->mail));
    return 1;
}

static const luaL_Reg mail_funcs[] = {
    {"send", m_send},
    {"build", m_build},
    {"pending", m_pending},
    {NULL, NULL},
};

int luaopen_evently_mail_core(lua_State *L)
{
    luaL_newlib(L, mail_funcs);
    return 1;
}
