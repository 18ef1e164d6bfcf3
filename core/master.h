/* master.h - the master process: listening socket, workers, reloads.
 *
 * ev_master_serve() opens the port, forks cfg->workers workers and supervises
 * them until SIGTERM/SIGINT (drain all, return 0). A worker that dies is
 * replaced (after a pause if it died young). SIGHUP checks the scripts in a
 * throwaway process, then starts a new generation of workers and retires the
 * old one gracefully; a failed check keeps the old generation serving. The
 * master also probes the dependencies once a second for /health/ready, so no
 * worker ever blocks on a probe. */
#ifndef EV_MASTER_H
#define EV_MASTER_H

#include "config.h"

int ev_master_serve(const ev_config_t *cfg);
/* Loads every script and plugin in a fresh runtime; 0 when they all load,
 * else -1 with "file:line: message" in err. */
int ev_check_scripts(const ev_config_t *cfg, char *err, size_t errlen);

#endif
