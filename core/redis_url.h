/* redis_url.h - a Redis URL taken apart: the client (redis.c) and the
 * readiness probe (health.c) read the same URL the same way.
 *
 *   "redis://[[user]:password@]host[:port][/db]"  TCP, AUTH when a password
 *                                                 is given (with user: ACL)
 *   "unix:[password@]/path"                       a local socket, AUTH when a
 *                                                 password is given
 * Errors never repeat the URL: it may carry a password, and they are logged. */
#ifndef EV_REDIS_URL_H
#define EV_REDIS_URL_H

#include <stddef.h>

typedef struct {
    char *host, *path, *user, *pass; /* NULL when absent; path only for unix: */
    int port, db;                    /* 6379 and 0 unless given */
} ev_redis_url_t;

/* 0, or -1 and a message in err (u is then empty). */
int ev_redis_url_parse(const char *url, ev_redis_url_t *u, char *err, size_t errlen);
void ev_redis_url_free(ev_redis_url_t *u);

#endif
