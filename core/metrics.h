/* metrics.h - Prometheus figures shared by all workers of one master.
 *
 * The master maps one shared anonymous region before forking; workers add to
 * it with atomic operations, and whichever worker serves GET /metrics renders
 * the whole process family's figures. No locks: series are claimed slots in
 * an open-addressing table keyed by (method, route, status). */
#ifndef EV_METRICS_H
#define EV_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define EV_METRICS_MAX_WORKERS 64

typedef struct ev_metrics ev_metrics_t;

ev_metrics_t *ev_metrics_create(void);
void ev_metrics_destroy(ev_metrics_t *m);
/* One answered request: latency histogram and counter by method, route, status. */
void ev_metrics_observe(ev_metrics_t *m, const char *method, const char *route, int status,
                        uint64_t duration_us);
/* Master side: a worker slot starts (pid) or ends (pid 0). */
void ev_metrics_worker_set(ev_metrics_t *m, int slot, pid_t pid);
/* Worker side: its Lua heap size, refreshed now and then. */
void ev_metrics_worker_memory(ev_metrics_t *m, int slot, uint64_t lua_bytes);
/* A worker's heartbeat: its loop ran at now_ms (CLOCK_MONOTONIC, shared by all
 * processes). 0 until the first beat, which also says the worker is ready. */
void ev_metrics_worker_beat(ev_metrics_t *m, int slot, int64_t now_ms);
int64_t ev_metrics_worker_beat_at(ev_metrics_t *m, int slot);
/* Connection pool figures of one worker, refreshed once a second. */
typedef enum { EV_POOL_DB, EV_POOL_REPLICA, EV_POOL_REDIS, EV_POOL_COUNT } ev_pool_kind_t;
typedef struct {
    int total, idle, busy, waiting, max;
    uint64_t acquired, timeouts, errors, queries;
} ev_metrics_pool_t;
void ev_metrics_pool_set(ev_metrics_t *m, int slot, ev_pool_kind_t kind, const ev_metrics_pool_t *p);

/* A counter by name (e.g. "evently_worker_restarts_total"); names are static strings. */
void ev_metrics_count(ev_metrics_t *m, const char *name, uint64_t n);
/* A gauge this worker sets for itself; rendered as the sum over workers.
 * series is the whole name with labels: evently_consumer_lag{group="g",topic="t"}. */
void ev_metrics_gauge_set(ev_metrics_t *m, int slot, const char *series, int64_t value);
/* Renders the text exposition; the caller frees it. */
char *ev_metrics_render(ev_metrics_t *m, size_t *len);

#endif

#ifndef EV_METRICS_COMPONENTS
#define EV_METRICS_COMPONENTS
/* Readiness of each dependency (health.h's ev_component_t / ev_state_t),
 * written by the master's prober, read by workers. */
void ev_metrics_component_set(ev_metrics_t *m, int component, int state, const char *detail);
int ev_metrics_component_get(ev_metrics_t *m, int component, char *detail, size_t cap);
#endif
