/* mail.h - email over SMTP through libcurl's multi interface.
 *
 * One ev_mail_t per worker: libcurl multi handles driven by libevent (socket
 * and timer callbacks) on a few lane threads of its own, because libcurl's
 * SMTP still blocks inside the multi interface while it waits for some
 * replies (see mail.c); the worker's loop never waits on SMTP. A send is one
 * easy handle carrying a message built here (RFC 5322, UTF-8,
 * quoted-printable); its callback runs once, on the worker's loop, with the
 * outcome. ev_mail_free() joins the lanes, so it may wait for a lane to
 * come out of such a blocking wait (bounded by that send's timeout). No Lua
 * here. */
#ifndef EV_MAIL_H
#define EV_MAIL_H

#include <stddef.h>

struct event_base;

typedef struct ev_mail ev_mail_t;
typedef struct ev_mail_req ev_mail_req_t;

typedef struct {
    const char *from;      /* "addr" or "Display Name <addr>" */
    const char *to;        /* same forms; one recipient */
    const char *subject;   /* UTF-8, no CR/LF */
    const char *text;      /* UTF-8 plain-text body */
    size_t text_len;
    const char *const *headers; /* extra "Name", "value" pairs, flat; may be NULL */
    int nheaders;               /* number of pairs */
} ev_mail_msg_t;

/* Error strings start with one word of a small vocabulary, then ": detail":
 *   invalid      the message or URL cannot be sent as given (permanent)
 *   refused      the server answered 5xx (permanent)
 *   deferred     the server answered 4xx (transient)
 *   unavailable  no connection to the server, or it went away (transient)
 *   timeout      the whole send took longer than allowed (transient)
 *   busy         EV_MAIL_MAX_PENDING sends are already in flight here (transient)
 *   error        anything else libcurl reports */
/* Sends in flight per mail instance (a worker): past it ev_mail_send refuses
 * at once with "busy", so a slow relay cannot make a worker keep every mail. */
#define EV_MAIL_MAX_PENDING 1000

typedef struct {
    int ok;
    int smtp_code;       /* the server's last reply code, 0 when none came */
    const char *error;   /* NULL when ok */
    const char *message_id;
} ev_mail_result_t;

typedef void (*ev_mail_cb)(const ev_mail_result_t *res, void *arg);

typedef struct {
    const char *url;          /* smtp://[user:pass@]host[:port][/ehlo-name] or smtps:// */
    long timeout_ms;          /* whole send, connect included */
    long connect_timeout_ms;
} ev_mail_opts_t;

/* NULL when libcurl cannot be set up. */
ev_mail_t *ev_mail_new(struct event_base *base);
/* Drops pending sends without calling their callbacks. */
void ev_mail_free(ev_mail_t *m);

/* Builds the RFC 5322 message (CRLF lines) into a malloc'd *out; also the
 * bare envelope addresses. -1 with "invalid: ..." in err when a field
 * cannot be sent (CR/LF in a header, a malformed address, ...). */
int ev_mail_build(const ev_mail_msg_t *msg, char **out, size_t *len, char *from_addr,
                  char *to_addr, size_t addrlen, char *err, size_t errlen);

/* Starts a send; cb(res, arg) runs later, once, unless cancelled. NULL with
 * "invalid: ..." (or "error: ...") in err when it cannot start. */
ev_mail_req_t *ev_mail_send(ev_mail_t *m, const ev_mail_opts_t *opts, const ev_mail_msg_t *msg,
                            ev_mail_cb cb, void *arg, char *err, size_t errlen);
/* Stops a pending send; its callback will not run. */
void ev_mail_cancel(ev_mail_req_t *q);
/* Sends in progress (for stats and tests). */
int ev_mail_pending(const ev_mail_t *m);

#endif
