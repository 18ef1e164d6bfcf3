/* health.h - dependency probes for /health/ready.
 *
 * The master runs ev_health_probe() on its own loop once a second (blocking
 * calls with short timeouts are fine there) and publishes the result in the
 * shared metrics region; workers only read it. */
#ifndef EV_HEALTH_H
#define EV_HEALTH_H

#include "config.h"
#include "metrics.h"

typedef enum { EV_COMP_POSTGRES, EV_COMP_REDIS, EV_COMP_KAFKA, EV_COMP_COUNT } ev_component_t;
typedef enum { EV_STATE_UNKNOWN, EV_STATE_UP, EV_STATE_DOWN, EV_STATE_NOT_CONFIGURED } ev_state_t;

void ev_health_probe(const ev_config_t *cfg, ev_metrics_t *m);
const char *ev_health_component_name(ev_component_t c);
const char *ev_health_state_name(ev_state_t s);

#endif
