/* fd_limit.c - the descriptor budget, settled once at start (fd_limit.h).
 *
 * A worker that runs out of descriptors can neither accept nor answer, so the
 * soft RLIMIT_NOFILE is raised to the hard one before workers start (they
 * inherit it), and max_connections is checked against it: every connection
 * is a descriptor, and the pools, pipes, listeners and WebSockets need theirs
 * beside them. */
#include "fd_limit.h"

#include <stdio.h>
#include <sys/resource.h>

#define AUTO_MAX_CONNECTIONS 4096
#define MIN_CONNECTIONS 16

/* Descriptors a worker needs besides its HTTP connections. */
static long overhead(const ev_config_t *cfg)
{
    /* WebSockets are bounded by ws_max_per_worker on their own; when they
     * and the connections together exhaust the limit, accepting sheds and
     * pauses (http.c) instead of failing */
    return 2L * cfg->db_pool_max /* primary and replica pools */
           + 128;                /* Redis, Kafka, pipes, listeners, logs, reserve */
}

int ev_fd_limit_fit(ev_config_t *cfg, char *err, size_t errlen)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        snprintf(err, errlen, "cannot read the descriptor limit (RLIMIT_NOFILE)");
        return -1;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl); /* keep what we have */
    }
    long limit = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > 1000000000 ? 1000000000L
                                                                           : (long)rl.rlim_cur;
    long room = limit - overhead(cfg);
    if (cfg->max_connections == 0) { /* auto: the default, or what fits */
        long n = room < AUTO_MAX_CONNECTIONS ? room : AUTO_MAX_CONNECTIONS;
        if (n < MIN_CONNECTIONS) {
            snprintf(err, errlen,
                     "the descriptor limit (ulimit -n) is %ld: too low to serve %d connections "
                     "beside the %ld descriptors a worker needs for its pools and sockets",
                     limit, MIN_CONNECTIONS, overhead(cfg));
            return -1;
        }
        cfg->max_connections = (int)n;
        return 0;
    }
    if (cfg->max_connections > room) {
        snprintf(err, errlen,
                 "max_connections (EVENTLY_MAX_CONNECTIONS) is %d but the descriptor limit "
                 "(ulimit -n, hard limit %ld) leaves room for %ld beside the %ld a worker needs "
                 "for its pools and sockets: raise the limit or lower max_connections",
                 cfg->max_connections, limit, room > 0 ? room : 0, overhead(cfg));
        return -1;
    }
    return 0;
}
