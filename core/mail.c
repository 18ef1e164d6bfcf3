/* mail.c - SMTP sends through libcurl's multi interface on libevent.
 *
 * Design. libcurl speaks SMTP (EHLO, STARTTLS, AUTH, MAIL/RCPT/DATA, dot
 * stuffing); we only glue its multi interface to libevent and build the
 * message. The multi handle says which sockets to watch through
 * CURLMOPT_SOCKETFUNCTION (one persistent event per socket, kept with
 * curl_multi_assign) and when to call it back through
 * CURLMOPT_TIMERFUNCTION (one timer event); both events end in
 * curl_multi_socket_action(), then curl_multi_info_read() collects the
 * finished transfers.
 *
 * That loop is not the worker's: libcurl 7.88 still blocks inside the multi
 * interface while it waits for the answer to the end of DATA (see "Lanes"
 * below), so each multi handle runs on a lane thread with an event_base of
 * its own. The worker's loop builds the message and the easy handle, posts
 * the request to a lane through a pipe, and gets it back, finished, through
 * another pipe watched by an event on the worker's loop: the callback runs
 * there, never on a lane, so it may resume Lua, start or cancel sends.
 *
 * API in calling order: ev_mail_new(base); ev_mail_send(m, opts, msg, cb,
 * arg) -> req; cb(result) once, on the loop, or ev_mail_cancel(req);
 * ev_mail_free(m). ev_mail_build() is the message builder alone.
 *
 * The message: headers Date, From, To, Subject, Message-ID, MIME-Version,
 * Content-Type text/plain; charset=utf-8, extra headers, then the body in
 * quoted-printable. Quoted-printable rather than 8bit because 8bit needs
 * the relay to offer 8BITMIME and keeps lines of any length, while SMTP
 * caps lines at 998 bytes: QP is 7-bit clean, folds long lines and still
 * reads as plain text for the ASCII parts. Non-ASCII header text goes out
 * as RFC 2047 encoded words (UTF-8, base64), folded below 78 columns.
 * Header injection is impossible by construction: any CR, LF or other
 * control character in a header value or address is refused ("invalid").
 *
 * Errors: see the vocabulary in mail.h. The server's own last reply line
 * (captured through the debug callback) is quoted in refused/deferred
 * errors, so "refused: 550 5.1.1 <x@y>: user unknown" reaches the caller.
 * Cancelling marks the request; the lane drops the transfer at libcurl's
 * next progress call and hands it back, and the loop frees it unseen.
 *
 * Extending: another transfer kind (webhooks) would be another request type
 * on the same lanes, with its own setup and its own branch in lane_collect. */
#define _GNU_SOURCE /* memrchr, pipe2 */
#include "mail.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define ADDR_MAX 256

/* Lanes: libcurl threads, each with its own event loop and multi handle.
 * Why threads at all: libcurl (7.88, Debian 12) waits for the server's
 * answer to the end of DATA, and for the answer to QUIT when it closes a
 * connection, with a blocking poll inside its multi interface (curl issue
 * #8555, "More non-blocking" in its TODO). On the worker's loop a slow SMTP
 * server would stall every request for that long. A lane's loop may stall
 * instead; the worker's never does. Several lanes so one slow answer does
 * not hold up every other send. */
#define EV_MAIL_LANES 4

typedef struct lane {
    ev_mail_t *m;
    pthread_t thread;
    int running;
    struct event_base *base; /* the lane's own loop */
    CURLM *multi;
    struct event *timer; /* CURLMOPT_TIMERFUNCTION's timer */
    int inbox[2];        /* loop -> lane: requests to start, NULL to stop */
    struct event *inbox_ev;
    int inflight; /* the loop's count of requests handed over, not back */
} lane_t;

struct ev_mail {
    struct event_base *base; /* the worker's loop */
    int done_pipe[2];        /* lanes -> loop: finished requests */
    struct event *done_ev;
    lane_t lanes[EV_MAIL_LANES];
    ev_mail_req_t *reqs; /* every request not yet freed, doubly linked */
    int pending;         /* sends someone still waits for */
};

/* Owned by the loop until posted to a lane, by the lane until posted back
 * (then the loop frees it). Only `cancelled` is shared meanwhile. */
struct ev_mail_req {
    ev_mail_t *m;
    lane_t *lane; /* where the loop handed it */
    CURL *easy;
    struct curl_slist *rcpt;
    char *data; /* the whole message */
    size_t len, off;
    long timeout_ms;
    ev_mail_cb cb; /* NULL once cancelled */
    void *arg;
    int cancelled;     /* atomic: the loop asks the lane to give up */
    int ok, smtp_code; /* the outcome, written by the lane */
    char msgid[160];
    char last_reply[256]; /* the server's last 4xx/5xx reply line */
    char errbuf[CURL_ERROR_SIZE];
    char error[400];
    ev_mail_req_t *prev, *next; /* on m->reqs: the loop's only */
};

/* ---- a growing buffer: every write checks nothing; oom is read once ---- */

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} buf_t;

static void buf_add(buf_t *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_str(buf_t *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void buf_printf(buf_t *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        buf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* ---- checking what goes into headers ---- */

static int is_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return 0;
    return 1;
}

/* Control characters (CR and LF above all) would end the header line and
 * start another: refused, so no value can inject a header. */
static int has_controls(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 1;
    }
    return 0;
}

static int invalid(char *err, size_t errlen, const char *fmt, const char *what)
{
    snprintf(err, errlen, fmt, what);
    return -1;
}

static int addr_char_ok(unsigned char c)
{
    return isalnum(c) || (c && strchr(".!#$%&'*+/=?^_`{|}~-@", c));
}

/* A bare address: local@domain in the dot-atom alphabet, ASCII only. */
static int check_addr(const char *a, size_t n, const char *what, char *err, size_t errlen)
{
    const char *at = memchr(a, '@', n);
    if (n < 3 || n >= ADDR_MAX || !at || at == a || at == a + n - 1 ||
        memchr(at + 1, '@', n - (size_t)(at - a) - 1))
        return invalid(err, errlen, "invalid: %s is not an email address", what);
    for (size_t i = 0; i < n; i++)
        if (!addr_char_ok((unsigned char)a[i]))
            return invalid(err, errlen, "invalid: %s has a character not allowed in an address",
                           what);
    return 0;
}

static void trim(const char **s, size_t *n)
{
    while (*n && isspace((unsigned char)**s))
        (*s)++, (*n)--;
    while (*n && isspace((unsigned char)(*s)[*n - 1]))
        (*n)--;
}

/* "addr" or "Name <addr>" -> the address into addr, the name's span. */
static int parse_mailbox(const char *s, const char *what, char *addr, const char **name,
                         size_t *name_len, char *err, size_t errlen)
{
    size_t n = strlen(s);
    if (has_controls(s, n))
        return invalid(err, errlen, "invalid: %s contains CR, LF or another control character",
                       what);
    const char *lt = strchr(s, '<');
    const char *a = s;
    size_t an = n;
    *name = s;
    *name_len = 0;
    if (lt) {
        const char *gt = strchr(lt, '>');
        const char *rest = gt ? gt + 1 : NULL;
        while (rest && *rest == ' ')
            rest++;
        if (!gt || *rest)
            return invalid(err, errlen, "invalid: %s: expected \"Name <address>\"", what);
        *name_len = (size_t)(lt - s);
        trim(name, name_len);
        a = lt + 1;
        an = (size_t)(gt - a);
    }
    trim(&a, &an);
    if (check_addr(a, an, what, err, errlen) != 0)
        return -1;
    memcpy(addr, a, an);
    addr[an] = '\0';
    return 0;
}

/* ---- RFC 2047 encoded words ---- */

/* Appends text as UTF-8 base64 encoded words (64 columns each),
 * split on character boundaries and folded onto continuation lines. */
static void put_encoded_words(buf_t *b, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        /* 39 bytes -> 52 base64 chars: with "Subject: " the first line stays under 78 */
        size_t take = n - i < 39 ? n - i : 39;
        while (i + take < n && take > 1 && ((unsigned char)s[i + take] & 0xC0) == 0x80)
            take--; /* do not cut a multi-byte character */
        unsigned char out[64];
        int k = EVP_EncodeBlock(out, (const unsigned char *)s + i, (int)take);
        if (i > 0)
            buf_str(b, "\r\n ");
        buf_str(b, "=?UTF-8?B?");
        buf_add(b, (const char *)out, (size_t)k);
        buf_str(b, "?=");
        i += take;
    }
}

/* Unstructured header text: as is when short plain ASCII, else encoded. */
static void put_text(buf_t *b, const char *s, size_t n)
{
    if (is_ascii(s, n) && n <= 900 && !strstr(s, "=?"))
        buf_add(b, s, n);
    else
        put_encoded_words(b, s, n);
}

static void put_mailbox(buf_t *b, const char *name, size_t name_len, const char *addr)
{
    if (name_len && is_ascii(name, name_len)) {
        buf_str(b, "\"");
        for (size_t i = 0; i < name_len; i++) { /* quoted-string: escape " and \ */
            if (name[i] == '"' || name[i] == '\\')
                buf_str(b, "\\");
            buf_add(b, name + i, 1);
        }
        buf_str(b, "\" ");
    } else if (name_len) {
        put_encoded_words(b, name, name_len);
        buf_str(b, " ");
    }
    const char *line = b->p ? b->p : "";
    const char *nl = b->p ? memrchr(b->p, '\n', b->len) : NULL;
    size_t col = b->len - (nl ? (size_t)(nl + 1 - line) : 0);
    if (name_len && col + strlen(addr) + 2 > 78)
        buf_str(b, "\r\n "); /* fold before the address: lines stay under 78 */
    buf_printf(b, "<%s>", addr);
}

/* ---- quoted-printable body (RFC 2045 6.7) ---- */

static int qp_literal(unsigned char c)
{
    return (c >= 33 && c <= 126 && c != '=') || c == ' ' || c == '\t';
}

/* One input line (no line break) as QP lines of at most 76 columns. */
static void qp_line(buf_t *b, const char *s, size_t n)
{
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char enc[4];
        /* trailing space/tab would be stripped in transit: encode it */
        int lit = qp_literal(c) && !((c == ' ' || c == '\t') && i == n - 1);
        size_t w = lit ? 1 : 3;
        if (col + w > 75) { /* room for the soft break's '=' */
            buf_str(b, "=\r\n");
            col = 0;
        }
        if (lit) {
            buf_add(b, (const char *)&c, 1);
        } else {
            snprintf(enc, sizeof enc, "=%02X", c);
            buf_add(b, enc, 3);
        }
        col += w;
    }
    buf_str(b, "\r\n");
}

/* LF and CRLF are line breaks; the body always ends with one. */
static void put_qp_body(buf_t *b, const char *s, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != '\n')
            continue;
        size_t end = i;
        if (end > start && s[end - 1] == '\r')
            end--;
        if (i < n || end > start)
            qp_line(b, s + start, end - start);
        start = i + 1;
    }
}

/* ---- the message ---- */

static void put_date(buf_t *b)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    buf_printf(b, "Date: %s, %02d %s %04d %02d:%02d:%02d +0000\r\n", days[tm.tm_wday], tm.tm_mday,
               months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static int make_msgid(char *out, size_t n, const char *from_addr)
{
    unsigned char r[16];
    if (RAND_bytes(r, sizeof r) != 1)
        return -1;
    char hex[33];
    for (int i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", r[i]);
    snprintf(out, n, "<%s@%s>", hex, strchr(from_addr, '@') + 1);
    return 0;
}

static int reserved_header(const char *name)
{
    static const char *const set[] = {
        "from",       "to",           "subject",      "date",
        "message-id", "mime-version", "content-type", "content-transfer-encoding",
        NULL};
    for (int i = 0; set[i]; i++)
        if (strcasecmp(name, set[i]) == 0)
            return 1;
    return 0;
}

static int check_header_name(const char *name, char *err, size_t errlen)
{
    size_t n = strlen(name);
    if (n == 0 || n > 76)
        return invalid(err, errlen, "invalid: header name '%.80s' must be 1..76 characters", name);
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && name[i] != '-')
            return invalid(err, errlen,
                           "invalid: header name '%.80s' may hold only letters, digits and '-'",
                           name);
    if (reserved_header(name))
        return invalid(err, errlen, "invalid: header '%.80s' is set by evently.mail", name);
    return 0;
}

static int put_extra_headers(buf_t *b, const ev_mail_msg_t *msg, char *err, size_t errlen)
{
    for (int i = 0; i < msg->nheaders; i++) {
        const char *name = msg->headers[2 * i], *value = msg->headers[2 * i + 1];
        if (check_header_name(name, err, errlen) != 0)
            return -1;
        if (has_controls(value, strlen(value)))
            return invalid(err, errlen,
                           "invalid: header '%.80s' contains CR, LF or another control character",
                           name);
        buf_printf(b, "%s: ", name);
        put_text(b, value, strlen(value));
        buf_str(b, "\r\n");
    }
    return 0;
}

static int build(buf_t *b, const ev_mail_msg_t *msg, char *from_addr, char *to_addr, char *msgid,
                 size_t idlen, char *err, size_t errlen)
{
    const char *from_name, *to_name;
    size_t from_nl, to_nl;
    if (parse_mailbox(msg->from, "from", from_addr, &from_name, &from_nl, err, errlen) != 0 ||
        parse_mailbox(msg->to, "to", to_addr, &to_name, &to_nl, err, errlen) != 0)
        return -1;
    size_t sn = strlen(msg->subject);
    if (has_controls(msg->subject, sn))
        return invalid(err, errlen, "invalid: %s contains CR, LF or another control character",
                       "subject");
    if (make_msgid(msgid, idlen, from_addr) != 0)
        return invalid(err, errlen, "error: %s", "no random bytes for the Message-ID");
    put_date(b);
    buf_str(b, "From: ");
    put_mailbox(b, from_name, from_nl, from_addr);
    buf_str(b, "\r\nTo: ");
    put_mailbox(b, to_name, to_nl, to_addr);
    buf_str(b, "\r\nSubject: ");
    put_text(b, msg->subject, sn);
    buf_printf(b, "\r\nMessage-ID: %s\r\n", msgid);
    buf_str(b, "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
               "Content-Transfer-Encoding: quoted-printable\r\n");
    if (put_extra_headers(b, msg, err, errlen) != 0)
        return -1;
    buf_str(b, "\r\n");
    put_qp_body(b, msg->text, msg->text_len);
    if (b->oom)
        return invalid(err, errlen, "error: %s", "out of memory");
    return 0;
}

static int build_with_id(const ev_mail_msg_t *msg, char **out, size_t *len, char *from_addr,
                         char *to_addr, char *msgid, size_t idlen, char *err, size_t errlen)
{
    buf_t b = {0};
    if (build(&b, msg, from_addr, to_addr, msgid, idlen, err, errlen) != 0) {
        free(b.p);
        return -1;
    }
    *out = b.p;
    *len = b.len;
    return 0;
}

int ev_mail_build(const ev_mail_msg_t *msg, char **out, size_t *len, char *from_addr, char *to_addr,
                  size_t addrlen, char *err, size_t errlen)
{
    char msgid[160];
    if (addrlen < ADDR_MAX)
        return invalid(err, errlen, "error: %s", "address buffers too small");
    return build_with_id(msg, out, len, from_addr, to_addr, msgid, sizeof msgid, err, errlen);
}

/* ---- libcurl on libevent, in a lane thread ---- */

/* Everything below marked [lane] runs on a lane's thread and touches only
 * that lane and the requests handed to it. */

static void lane_collect(lane_t *l);

static void on_io(evutil_socket_t fd, short what, void *arg) /* [lane] */
{
    lane_t *l = arg;
    int action = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running;
    curl_multi_socket_action(l->multi, fd, action, &running);
    lane_collect(l);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg) /* [lane] */
{
    lane_t *l = arg;
    (void)fd;
    (void)what;
    int running;
    curl_multi_socket_action(l->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    lane_collect(l);
}

/* CURLMOPT_SOCKETFUNCTION [lane]: watch s for what libcurl wants, one
 * persistent event per socket, kept with the socket by curl_multi_assign. */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    lane_t *l = userp;
    struct event *ev = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (ev)
            event_free(ev);
        curl_multi_assign(l->multi, s, NULL);
        return 0;
    }
    short kind =
        EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    if (!ev) {
        ev = event_new(l->base, s, kind, on_io, l);
        if (!ev)
            return -1;
        curl_multi_assign(l->multi, s, ev);
    } else {
        event_del(ev); /* event_assign needs it not pending */
        event_assign(ev, l->base, s, kind, on_io, l);
    }
    return event_add(ev, NULL) == 0 ? 0 : -1;
}

/* CURLMOPT_TIMERFUNCTION [lane]: -1 stops the timer; 0 means "as soon as you
 * can", which must still come from the loop (never socket_action in here). */
static int on_timer_change(CURLM *multi, long timeout_ms, void *userp)
{
    lane_t *l = userp;
    (void)multi;
    if (timeout_ms < 0) {
        evtimer_del(l->timer);
        return 0;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    return evtimer_add(l->timer, &tv) == 0 ? 0 : -1;
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *arg) /* [lane] */
{
    ev_mail_req_t *q = arg;
    size_t n = size * nitems, left = q->len - q->off;
    if (n > left)
        n = left;
    memcpy(buf, q->data + q->off, n);
    q->off += n;
    return n;
}

/* [lane] Keeps the server's last 4xx/5xx reply line, for errors that quote it. */
static int on_debug(CURL *easy, curl_infotype type, char *data, size_t size, void *arg)
{
    ev_mail_req_t *q = arg;
    (void)easy;
    if (type != CURLINFO_HEADER_IN)
        return 0;
    while (size && (data[size - 1] == '\n' || data[size - 1] == '\r'))
        size--;
    const char *nl = memrchr(data, '\n', size); /* a multi-line reply: its last line */
    if (nl) {
        size -= (size_t)(nl + 1 - data);
        data = (char *)nl + 1;
    }
    if (size == 0 || (data[0] != '4' && data[0] != '5'))
        return 0; /* only failures are quoted; not e.g. the "221 Bye" after one */
    if (size >= sizeof q->last_reply)
        size = sizeof q->last_reply - 1;
    memcpy(q->last_reply, data, size);
    q->last_reply[size] = '\0';
    for (size_t i = 0; i < size; i++) /* it is quoted in logs and errors */
        if ((unsigned char)q->last_reply[i] < 0x20)
            q->last_reply[i] = ' ';
    return 0;
}

/* [lane] A cancelled send is abandoned at libcurl's next progress call. */
static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    ev_mail_req_t *q = arg;
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    return __atomic_load_n(&q->cancelled, __ATOMIC_ACQUIRE) ? 1 : 0;
}

static int is_connection_error(CURLcode rc)
{
    return rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
           rc == CURLE_COULDNT_RESOLVE_PROXY || rc == CURLE_RECV_ERROR || rc == CURLE_SEND_ERROR ||
           rc == CURLE_GOT_NOTHING || rc == CURLE_SSL_CONNECT_ERROR ||
           rc == CURLE_WEIRD_SERVER_REPLY;
}

/* [lane] The error string for a finished transfer, by mail.h's vocabulary. */
static void describe(ev_mail_req_t *q, CURLcode rc, long code)
{
    const char *detail = q->errbuf[0] ? q->errbuf : curl_easy_strerror(rc);
    const char *reply = q->last_reply[0] ? q->last_reply : detail;
    if (rc == CURLE_OPERATION_TIMEDOUT)
        snprintf(q->error, sizeof q->error,
                 "timeout: the SMTP server did not finish within %ld ms (%s)", q->timeout_ms,
                 detail);
    else if (rc == CURLE_USE_SSL_FAILED) /* transient: the mail waits for TLS, it is not lost */
        snprintf(
            q->error, sizeof q->error,
            "unavailable: the SMTP server offered no TLS, which a URL with credentials requires");
    else if (code >= 500 && code < 600)
        snprintf(q->error, sizeof q->error, "refused: %s", reply);
    else if (code >= 400 && code < 500)
        snprintf(q->error, sizeof q->error, "deferred: %s", reply);
    else if (rc == CURLE_URL_MALFORMAT || rc == CURLE_UNSUPPORTED_PROTOCOL)
        snprintf(q->error, sizeof q->error, "invalid: bad SMTP URL (%s)", detail);
    else if (is_connection_error(rc))
        snprintf(q->error, sizeof q->error, "unavailable: %s", detail);
    else
        snprintf(q->error, sizeof q->error, "error: %s", detail);
}

/* Hands a request over a pipe (the other side owns it from then on). The
 * write end blocks: a request is never dropped on a full pipe. */
static void post(int fd, ev_mail_req_t *q)
{
    ssize_t w;
    do
        w = write(fd, &q, sizeof q);
    while (w < 0 && errno == EINTR);
}

/* [lane] Finished transfers: note the outcome, hand them back to the loop. */
static void lane_collect(lane_t *l)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(l->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        ev_mail_req_t *q = NULL;
        CURLcode rc = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&q);
        long code = 0;
        curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &code);
        curl_multi_remove_handle(l->multi, q->easy);
        q->ok = rc == CURLE_OK;
        q->smtp_code = (int)code;
        if (!q->ok)
            describe(q, rc, code);
        post(l->m->done_pipe[1], q);
    }
}

/* [lane] New requests from the loop; NULL asks the lane to stop. */
static void on_inbox(evutil_socket_t fd, short what, void *arg)
{
    lane_t *l = arg;
    (void)what;
    ev_mail_req_t *q;
    while (read(fd, &q, sizeof q) == (ssize_t)sizeof q) {
        if (!q) {
            event_base_loopbreak(l->base);
            return;
        }
        if (curl_multi_add_handle(l->multi, q->easy) != CURLM_OK) {
            q->ok = 0;
            snprintf(q->error, sizeof q->error, "error: cannot start the SMTP transfer");
            post(l->m->done_pipe[1], q);
        }
    }
}

static void *lane_main(void *arg) /* [lane] */
{
    lane_t *l = arg;
    event_base_dispatch(l->base);
    return NULL;
}

/* ---- the loop side ---- */

static void req_free(ev_mail_req_t *q)
{
    if (q->easy)
        curl_easy_cleanup(q->easy);
    curl_slist_free_all(q->rcpt);
    free(q->data);
    free(q);
}

static void req_unlink(ev_mail_req_t *q)
{
    ev_mail_t *m = q->m;
    if (q->prev)
        q->prev->next = q->next;
    else
        m->reqs = q->next;
    if (q->next)
        q->next->prev = q->prev;
}

/* Sends come back from the lanes, each once: tell the caller, free. */
static void on_done(evutil_socket_t fd, short what, void *arg)
{
    ev_mail_t *m = arg;
    (void)what;
    ev_mail_req_t *q;
    while (read(fd, &q, sizeof q) == (ssize_t)sizeof q) {
        req_unlink(q);
        q->lane->inflight--;
        if (q->cb) { /* NULL: cancelled, nobody is waiting */
            m->pending--;
            ev_mail_result_t res = {q->ok, q->smtp_code, q->ok ? NULL : q->error, q->msgid};
            if (!q->ok)
                ev_debug("mail %s: %s", q->msgid, q->error);
            q->cb(&res, q->arg);
        }
        req_free(q);
    }
}

static int make_pipe(int fds[2])
{
    if (pipe2(fds, O_CLOEXEC) != 0)
        return -1;
    /* the reader drains until EAGAIN; writers block (see post) */
    return fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
}

static void close_pipe(int fds[2])
{
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    fds[0] = fds[1] = -1;
}

static int lane_start(ev_mail_t *m, lane_t *l)
{
    l->m = m;
    l->inbox[0] = l->inbox[1] = -1;
    if (make_pipe(l->inbox) != 0 || !(l->base = event_base_new()) ||
        !(l->multi = curl_multi_init()))
        return -1;
    l->timer = evtimer_new(l->base, on_timeout, l);
    l->inbox_ev = event_new(l->base, l->inbox[0], EV_READ | EV_PERSIST, on_inbox, l);
    if (!l->timer || !l->inbox_ev || event_add(l->inbox_ev, NULL) != 0)
        return -1;
    curl_multi_setopt(l->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(l->multi, CURLMOPT_SOCKETDATA, l);
    curl_multi_setopt(l->multi, CURLMOPT_TIMERFUNCTION, on_timer_change);
    curl_multi_setopt(l->multi, CURLMOPT_TIMERDATA, l);
    /* a burst of sends queues instead of opening a connection each */
    curl_multi_setopt(l->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 8L);
    if (pthread_create(&l->thread, NULL, lane_main, l) != 0)
        return -1;
    l->running = 1;
    return 0;
}

/* Stops the lane's thread (it finishes the libcurl call it is in), then
 * frees the lane; the requests it held are still on m->reqs. */
static void lane_stop(lane_t *l)
{
    if (l->running) {
        post(l->inbox[1], NULL);
        pthread_join(l->thread, NULL);
        l->running = 0;
    }
    for (ev_mail_req_t *q = l->m->reqs; q; q = q->next)
        if (q->lane == l && l->multi)
            curl_multi_remove_handle(l->multi, q->easy);
    if (l->multi)
        curl_multi_cleanup(l->multi); /* closes cached connections: REMOVE frees their events */
    if (l->timer)
        event_free(l->timer);
    if (l->inbox_ev)
        event_free(l->inbox_ev);
    if (l->base)
        event_base_free(l->base);
    close_pipe(l->inbox);
    l->multi = NULL, l->timer = l->inbox_ev = NULL, l->base = NULL;
}

ev_mail_t *ev_mail_new(struct event_base *base)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return NULL;
    ev_mail_t *m = calloc(1, sizeof *m);
    if (!m) {
        curl_global_cleanup();
        return NULL;
    }
    m->base = base;
    m->done_pipe[0] = m->done_pipe[1] = -1;
    for (int i = 0; i < EV_MAIL_LANES; i++)
        m->lanes[i].inbox[0] = m->lanes[i].inbox[1] = -1;
    if (make_pipe(m->done_pipe) != 0 ||
        !(m->done_ev = event_new(base, m->done_pipe[0], EV_READ | EV_PERSIST, on_done, m)) ||
        event_add(m->done_ev, NULL) != 0)
        goto fail;
    for (int i = 0; i < EV_MAIL_LANES; i++)
        if (lane_start(m, &m->lanes[i]) != 0)
            goto fail;
    return m;
fail:
    ev_mail_free(m);
    return NULL;
}

void ev_mail_free(ev_mail_t *m)
{
    if (!m)
        return;
    for (int i = 0; i < EV_MAIL_LANES; i++)
        if (m->lanes[i].m)
            lane_stop(&m->lanes[i]);
    while (m->reqs) { /* in flight, or finished but not yet read back */
        ev_mail_req_t *q = m->reqs;
        req_unlink(q);
        req_free(q);
    }
    if (m->done_ev)
        event_free(m->done_ev);
    close_pipe(m->done_pipe);
    free(m);
    curl_global_cleanup();
}

/* "smtp://user:pass@host...": an '@' between the scheme and the path. */
static int has_credentials(const char *url)
{
    const char *p = strstr(url, "://");
    if (!p)
        return 0;
    p += 3;
    const char *at = strchr(p, '@'), *slash = strchr(p, '/');
    return at && (!slash || at < slash);
}

static int setup_easy(ev_mail_req_t *q, const ev_mail_opts_t *opts, const char *from_addr,
                      const char *to_addr)
{
    char env[ADDR_MAX + 2];
    CURL *e = q->easy;
    int bad = 0;
    bad |= curl_easy_setopt(e, CURLOPT_URL, opts->url) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "smtp,smtps") != CURLE_OK;
    snprintf(env, sizeof env, "<%s>", from_addr);
    bad |= curl_easy_setopt(e, CURLOPT_MAIL_FROM, env) != CURLE_OK;
    snprintf(env, sizeof env, "<%s>", to_addr);
    bad |= !(q->rcpt = curl_slist_append(NULL, env));
    curl_easy_setopt(e, CURLOPT_MAIL_RCPT, q->rcpt);
    curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(e, CURLOPT_READDATA, q);
    curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)q->len);
    /* smtps:// is TLS from the start. Otherwise STARTTLS when the server
     * offers it, and required when the URL carries credentials: a password
     * never goes out in clear, whatever a server (or whoever strips its
     * STARTTLS) says. */
    curl_easy_setopt(e, CURLOPT_USE_SSL,
                     (long)(has_credentials(opts->url) ? CURLUSESSL_ALL : CURLUSESSL_TRY));
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L); /* no SIGALRM: we are not alone in the process */
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, opts->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, opts->connect_timeout_ms);
    /* the blocking waits (see the top) never outlast the send's own timeout */
    curl_easy_setopt(e, CURLOPT_SERVER_RESPONSE_TIMEOUT, (opts->timeout_ms + 999) / 1000);
    /* A connection per message. After a transfer that failed or was
     * abandoned mid-DATA, libcurl may keep the connection while the server's
     * late reply is still on its way; the next message on it then reads that
     * reply as the answer to its own MAIL FROM and everything after is off by
     * one ("DATA failed: 250", seen in tests). */
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, q->errbuf);
    curl_easy_setopt(e, CURLOPT_VERBOSE, 1L); /* feeds on_debug only; nothing printed */
    curl_easy_setopt(e, CURLOPT_DEBUGFUNCTION, on_debug);
    curl_easy_setopt(e, CURLOPT_DEBUGDATA, q);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, q);
    curl_easy_setopt(e, CURLOPT_PRIVATE, q);
    return bad ? -1 : 0;
}

/* A lane stuck in one of libcurl's blocking waits keeps its requests, so
 * new ones go where the fewest are in flight. */
static lane_t *least_busy(ev_mail_t *m)
{
    lane_t *best = &m->lanes[0];
    for (int i = 1; i < EV_MAIL_LANES; i++)
        if (m->lanes[i].inflight < best->inflight)
            best = &m->lanes[i];
    return best;
}

ev_mail_req_t *ev_mail_send(ev_mail_t *m, const ev_mail_opts_t *opts, const ev_mail_msg_t *msg,
                            ev_mail_cb cb, void *arg, char *err, size_t errlen)
{
    char from_addr[ADDR_MAX], to_addr[ADDR_MAX];
    if (m->pending >= EV_MAIL_MAX_PENDING) {
        snprintf(err, errlen, "busy: %d mails already in flight", m->pending);
        return NULL;
    }
    ev_mail_req_t *q = calloc(1, sizeof *q);
    if (!q) {
        snprintf(err, errlen, "error: out of memory");
        return NULL;
    }
    q->m = m;
    q->cb = cb;
    q->arg = arg;
    q->timeout_ms = opts->timeout_ms;
    if (build_with_id(msg, &q->data, &q->len, from_addr, to_addr, q->msgid, sizeof q->msgid, err,
                      errlen) != 0)
        goto fail;
    q->easy = curl_easy_init();
    if (!q->easy || setup_easy(q, opts, from_addr, to_addr) != 0) {
        snprintf(err, errlen, "error: cannot set up the SMTP transfer");
        goto fail;
    }
    q->next = m->reqs;
    if (m->reqs)
        m->reqs->prev = q;
    m->reqs = q;
    m->pending++;
    q->lane = least_busy(m);
    q->lane->inflight++;
    ev_debug("mail %s: sending to %s", q->msgid, to_addr);
    post(q->lane->inbox[1], q); /* the lane owns q until it posts it back */
    return q;
fail:
    req_free(q);
    return NULL;
}

void ev_mail_cancel(ev_mail_req_t *q)
{
    if (!q || !q->cb)
        return;
    q->cb = NULL; /* on_done frees it when the lane hands it back */
    q->m->pending--;
    __atomic_store_n(&q->cancelled, 1, __ATOMIC_RELEASE);
}

int ev_mail_pending(const ev_mail_t *m)
{
    return m ? m->pending : 0;
}
