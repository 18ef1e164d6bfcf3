/* redis_url.c - see redis_url.h. */
#include "redis_url.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *dup_range(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static int fail(ev_redis_url_t *u, char *err, size_t errlen, const char *why)
{
    snprintf(err, errlen, "redis url: %s", why);
    ev_redis_url_free(u);
    return -1;
}

/* "[user]:pass@" or "pass@" before the host; p moves past it. */
static int parse_credentials(const char **p, ev_redis_url_t *u)
{
    const char *at = strchr(*p, '@');
    if (!at)
        return 0;
    const char *colon = memchr(*p, ':', (size_t)(at - *p));
    if (colon && colon > *p && !(u->user = dup_range(*p, (size_t)(colon - *p))))
        return -1;
    const char *pass = colon ? colon + 1 : *p;
    if (!(u->pass = dup_range(pass, (size_t)(at - pass))))
        return -1;
    *p = at + 1;
    return 0;
}

/* host or [v6 address], then the port if any: NULL on success, else why. */
static const char *parse_host(const char *p, size_t hl, ev_redis_url_t *u)
{
    const char *port = NULL;
    if (*p == '[') {
        const char *close = memchr(p, ']', hl);
        if (!close)
            return "bad IPv6 address";
        u->host = dup_range(p + 1, (size_t)(close - p - 1));
        if (close + 1 < p + hl && close[1] == ':')
            port = close + 2;
    } else {
        const char *colon = memchr(p, ':', hl);
        u->host = dup_range(p, colon ? (size_t)(colon - p) : hl);
        port = colon ? colon + 1 : NULL;
    }
    if (!u->host || !*u->host)
        return u->host ? "missing host" : "out of memory";
    if (port) {
        char *end;
        long v = strtol(port, &end, 10);
        if (end == port || (*end && *end != '/') || v < 1 || v > 65535)
            return "bad port";
        u->port = (int)v;
    }
    return NULL;
}

int ev_redis_url_parse(const char *url, ev_redis_url_t *u, char *err, size_t errlen)
{
    *u = (ev_redis_url_t){.port = 6379};
    if (strncmp(url, "unix:", 5) == 0) {
        const char *path = url + 5, *at = *path != '/' ? strstr(path, "@/") : NULL;
        if (at && !(u->pass = dup_range(path, (size_t)(at - path))))
            return fail(u, err, errlen, "out of memory");
        path = at ? at + 1 : path;
        if (*path != '/')
            return fail(u, err, errlen, "expected unix:[password@]/absolute/path");
        return (u->path = strdup(path)) ? 0 : fail(u, err, errlen, "out of memory");
    }
    if (strncmp(url, "redis://", 8) != 0)
        return fail(u, err, errlen,
                    "expected redis://[[user]:password@]host[:port][/db] or unix:/path");
    const char *p = url + 8;
    if (parse_credentials(&p, u) != 0)
        return fail(u, err, errlen, "out of memory");
    const char *slash = strchr(p, '/');
    const char *why = parse_host(p, slash ? (size_t)(slash - p) : strlen(p), u);
    if (why)
        return fail(u, err, errlen, why);
    if (slash && slash[1]) {
        char *end;
        long v = strtol(slash + 1, &end, 10);
        if (*end || v < 0 || v > 1000000)
            return fail(u, err, errlen, "bad database number");
        u->db = (int)v;
    }
    return 0;
}

void ev_redis_url_free(ev_redis_url_t *u)
{
    free(u->host);
    free(u->path);
    free(u->user);
    free(u->pass);
    *u = (ev_redis_url_t){0};
}
