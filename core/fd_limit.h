/* fd_limit.h - the descriptor budget: RLIMIT_NOFILE raised to its hard limit,
 * and max_connections checked against it (0 = auto: 4096, or what fits). */
#ifndef EV_FD_LIMIT_H
#define EV_FD_LIMIT_H

#include <stddef.h>

#include "config.h"

/* Raises the soft limit; settles cfg->max_connections when it is 0 (auto).
 * -1 with err naming both numbers when a configured value cannot be honoured. */
int ev_fd_limit_fit(ev_config_t *cfg, char *err, size_t errlen);

#endif
