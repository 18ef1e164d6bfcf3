/* embedded.h - private Postgres and Redis under $EVENTLY_HOME.
 *
 * When no database/Redis URL is configured, evently runs its own: a Postgres
 * cluster (initdb on first use) and a Redis server, both listening only on unix
 * sockets in a run directory under home. Servers found already running (by an
 * earlier or concurrent evently with the same home) are reused and left
 * running; servers this process started are stopped by ev_embedded_stop().
 * As root, the servers run as the unprivileged system user "evently". */
#ifndef EV_EMBEDDED_H
#define EV_EMBEDDED_H

#include <stddef.h>

typedef struct {
    char *home;          /* absolute path of $EVENTLY_HOME */
    char *run_dir;       /* directory holding the unix sockets */
    char *database_url;  /* libpq conninfo for the embedded cluster */
    char *redis_url;     /* "unix:/path/redis.sock" */
    int started_pg;      /* 1 if this process started Postgres */
    int started_redis;   /* 1 if this process started Redis */
    int redis_pid;
} ev_embedded_t;

/* Starts (or reuses) what is asked for; want_pg / want_redis select which.
 * Returns 0, or -1 with a message in err. Blocks: call before serving. */
int ev_embedded_start(ev_embedded_t *e, const char *home, int want_pg, int want_redis,
                      char *err, size_t errlen);
/* Stops what this process started; safe to call twice. */
void ev_embedded_stop(ev_embedded_t *e);

#endif
