/* worker.h - one worker process: a loop, a Lua state, an HTTP server.
 *
 * ev_worker_run() boots the scripts, serves on the inherited listening socket
 * and returns the process exit code once told to stop (SIGTERM/SIGQUIT: stop
 * accepting, finish in-flight requests, exit). */
#ifndef EV_WORKER_H
#define EV_WORKER_H

#include "config.h"
#include "metrics.h"

/* ops_fd: the operations listener (ops_listen), or -1. */
int ev_worker_run(const ev_config_t *cfg, int listen_fd, int ops_fd, ev_metrics_t *metrics,
                  int slot);

#endif
