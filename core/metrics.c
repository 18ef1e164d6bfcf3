/* metrics.c - lock-free shared metrics; see metrics.h.
 *
 * A series slot moves 0 (free) -> 1 (being claimed) -> 2 (ready) exactly once;
 * the claimer writes the key between the two stores, so readers and other
 * writers only trust keys of ready slots. A full table drops new series (and
 * counts the drops) rather than block or grow: the route set is small and
 * fixed by the scripts, so 512 slots is far more than a real app needs. */
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define SLOTS 512
#define COUNTERS 32
static const double bounds_ms[] = {0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000};
#define NBUCKETS (sizeof bounds_ms / sizeof bounds_ms[0])

typedef struct {
    uint32_t state;
    char method[12];
    char route[112];
    int status;
    uint64_t count;
    uint64_t sum_us;
    uint64_t buckets[NBUCKETS];
} series_t;

typedef struct {
    uint32_t state;
    char name[60];
    uint64_t value;
} counter_t;

/* Gauges a worker sets for itself (its share of a consumer's lag); the
 * rendered figure is the sum over workers. One writer per slot row. */
#define GAUGES 16
typedef struct {
    uint32_t state;
    char series[116];
    int64_t value;
} gauge_t;

struct ev_metrics {
    series_t series[SLOTS];
    counter_t counters[COUNTERS];
    int32_t worker_pid[EV_METRICS_MAX_WORKERS];
    uint64_t worker_lua_bytes[EV_METRICS_MAX_WORKERS];
    int64_t worker_beat_ms[EV_METRICS_MAX_WORKERS];
    uint64_t dropped;
    ev_metrics_pool_t pools[EV_METRICS_MAX_WORKERS][EV_POOL_COUNT];
    int32_t component_state[8];
    uint32_t component_seq[8]; /* odd while being written */
    char component_detail[8][120];
    gauge_t gauges[EV_METRICS_MAX_WORKERS][GAUGES];
};

ev_metrics_t *ev_metrics_create(void)
{
    void *p = mmap(NULL, sizeof(ev_metrics_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p; /* anonymous maps start zeroed */
}

void ev_metrics_destroy(ev_metrics_t *m)
{
    if (m)
        munmap(m, sizeof *m);
}

static uint32_t hash(const char *a, const char *b, int status)
{
    uint32_t h = 2166136261u;
    for (; *a; a++)
        h = (h ^ (unsigned char)*a) * 16777619u;
    for (; *b; b++)
        h = (h ^ (unsigned char)*b) * 16777619u;
    return (h ^ (uint32_t)status) * 16777619u;
}

static int ready(uint32_t *state)
{
    uint32_t s;
    while ((s = __atomic_load_n(state, __ATOMIC_ACQUIRE)) == 1)
        ; /* another process is writing the key: a few stores away */
    return s == 2;
}

static series_t *find_series(ev_metrics_t *m, const char *method, const char *route, int status)
{
    uint32_t h = hash(method, route, status);
    for (uint32_t i = 0; i < SLOTS; i++) {
        series_t *s = &m->series[(h + i) % SLOTS];
        uint32_t expected = 0;
        if (__atomic_compare_exchange_n(&s->state, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            snprintf(s->method, sizeof s->method, "%s", method);
            snprintf(s->route, sizeof s->route, "%s", route);
            s->status = status;
            __atomic_store_n(&s->state, 2, __ATOMIC_RELEASE);
            return s;
        }
        if (ready(&s->state) && s->status == status && strcmp(s->route, route) == 0 &&
            strcmp(s->method, method) == 0)
            return s;
    }
    return NULL;
}

/* Cut to size and label-safe, without printf: this runs for every request. */
static void copy_key(char *dst, size_t cap, const char *src)
{
    size_t i = 0;
    for (; src[i] && i < cap - 1; i++)
        dst[i] = (src[i] == '"' || src[i] == '\\' || src[i] == '\n') ? '_' : src[i];
    dst[i] = '\0';
}

void ev_metrics_observe(ev_metrics_t *m, const char *method, const char *route, int status,
                        uint64_t duration_us)
{
    /* keys as stored: cut to size, and label-safe so the exposition stays valid */
    char mkey[sizeof m->series[0].method], rkey[sizeof m->series[0].route];
    copy_key(mkey, sizeof mkey, method);
    copy_key(rkey, sizeof rkey, route ? route : "unmatched");
    series_t *s = find_series(m, mkey, rkey, status);
    if (!s) {
        __atomic_add_fetch(&m->dropped, 1, __ATOMIC_RELAXED);
        return;
    }
    __atomic_add_fetch(&s->count, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&s->sum_us, duration_us, __ATOMIC_RELAXED);
    double ms = (double)duration_us / 1000.0;
    for (size_t b = 0; b < NBUCKETS; b++) {
        if (ms <= bounds_ms[b]) {
            __atomic_add_fetch(&s->buckets[b], 1, __ATOMIC_RELAXED);
            break; /* buckets hold their own band; render makes them cumulative */
        }
    }
}

void ev_metrics_count(ev_metrics_t *m, const char *name_in, uint64_t n)
{
    char name[sizeof m->counters[0].name]; /* compare what is stored: a long name is cut */
    snprintf(name, sizeof name, "%s", name_in);
    for (int i = 0; i < COUNTERS; i++) {
        counter_t *c = &m->counters[i];
        uint32_t expected = 0;
        if (__atomic_compare_exchange_n(&c->state, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            snprintf(c->name, sizeof c->name, "%s", name);
            __atomic_store_n(&c->state, 2, __ATOMIC_RELEASE);
        } else if (!ready(&c->state) || strcmp(c->name, name) != 0) {
            continue;
        }
        __atomic_add_fetch(&c->value, n, __ATOMIC_RELAXED);
        return;
    }
}

void ev_metrics_worker_set(ev_metrics_t *m, int slot, pid_t pid)
{
    if (slot < 0 || slot >= EV_METRICS_MAX_WORKERS)
        return;
    __atomic_store_n(&m->worker_beat_ms[slot], 0, __ATOMIC_RELEASE); /* a new worker: not ready */
    __atomic_store_n(&m->worker_pid[slot], (int32_t)pid, __ATOMIC_RELEASE);
    if (pid == 0) {
        __atomic_store_n(&m->worker_lua_bytes[slot], 0, __ATOMIC_RELEASE);
        memset(m->pools[slot], 0, sizeof m->pools[slot]);
        for (int i = 0; i < GAUGES; i++) /* a dead worker's share is gone */
            __atomic_store_n(&m->gauges[slot][i].value, 0, __ATOMIC_RELAXED);
    }
}

void ev_metrics_worker_beat(ev_metrics_t *m, int slot, int64_t now_ms)
{
    if (slot >= 0 && slot < EV_METRICS_MAX_WORKERS)
        __atomic_store_n(&m->worker_beat_ms[slot], now_ms, __ATOMIC_RELEASE);
}

int64_t ev_metrics_worker_beat_at(ev_metrics_t *m, int slot)
{
    if (slot < 0 || slot >= EV_METRICS_MAX_WORKERS)
        return 0;
    return __atomic_load_n(&m->worker_beat_ms[slot], __ATOMIC_ACQUIRE);
}

void ev_metrics_worker_memory(ev_metrics_t *m, int slot, uint64_t lua_bytes)
{
    if (slot >= 0 && slot < EV_METRICS_MAX_WORKERS)
        __atomic_store_n(&m->worker_lua_bytes[slot], lua_bytes, __ATOMIC_RELAXED);
}

void ev_metrics_gauge_set(ev_metrics_t *m, int slot, const char *series, int64_t value)
{
    if (slot < 0 || slot >= EV_METRICS_MAX_WORKERS || strlen(series) >= sizeof m->gauges[0][0].series)
        return;
    for (int i = 0; i < GAUGES; i++) {
        gauge_t *g = &m->gauges[slot][i];
        if (__atomic_load_n(&g->state, __ATOMIC_ACQUIRE) != 2) { /* first free: claim it */
            snprintf(g->series, sizeof g->series, "%s", series);
            __atomic_store_n(&g->value, value, __ATOMIC_RELAXED);
            __atomic_store_n(&g->state, 2, __ATOMIC_RELEASE);
            return;
        }
        if (strcmp(g->series, series) == 0) {
            __atomic_store_n(&g->value, value, __ATOMIC_RELAXED);
            return;
        }
    }
}

typedef struct {
    char *p;
    size_t len, cap;
} out_t;

__attribute__((format(printf, 2, 3))) static void out(out_t *o, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap * 2 + (size_t)n;
        char *p = realloc(o->p, cap);
        if (!p)
            return;
        o->p = p;
        o->cap = cap;
    }
}

static void render_requests(ev_metrics_t *m, out_t *o)
{
    out(o, "# HELP evently_http_requests_total Requests answered, by method, route and status.\n"
           "# TYPE evently_http_requests_total counter\n");
    for (int i = 0; i < SLOTS; i++) {
        series_t *s = &m->series[i];
        if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) == 2)
            out(o, "evently_http_requests_total{method=\"%s\",route=\"%s\",status=\"%d\"} %llu\n",
                s->method, s->route, s->status,
                (unsigned long long)__atomic_load_n(&s->count, __ATOMIC_RELAXED));
    }
    out(o, "# HELP evently_http_request_duration_seconds Time from request parsed to answer queued.\n"
           "# TYPE evently_http_request_duration_seconds histogram\n");
    for (int i = 0; i < SLOTS; i++) {
        series_t *s = &m->series[i];
        if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != 2)
            continue;
        uint64_t cum = 0;
        const char *lbl = "evently_http_request_duration_seconds";
        for (size_t b = 0; b < NBUCKETS; b++) {
            cum += __atomic_load_n(&s->buckets[b], __ATOMIC_RELAXED);
            out(o, "%s_bucket{method=\"%s\",route=\"%s\",status=\"%d\",le=\"%g\"} %llu\n", lbl,
                s->method, s->route, s->status, bounds_ms[b] / 1000.0, (unsigned long long)cum);
        }
        uint64_t count = __atomic_load_n(&s->count, __ATOMIC_RELAXED);
        out(o, "%s_bucket{method=\"%s\",route=\"%s\",status=\"%d\",le=\"+Inf\"} %llu\n", lbl,
            s->method, s->route, s->status, (unsigned long long)count);
        out(o, "%s_sum{method=\"%s\",route=\"%s\",status=\"%d\"} %.6f\n", lbl, s->method,
            s->route, s->status, (double)__atomic_load_n(&s->sum_us, __ATOMIC_RELAXED) / 1e6);
        out(o, "%s_count{method=\"%s\",route=\"%s\",status=\"%d\"} %llu\n", lbl, s->method,
            s->route, s->status, (unsigned long long)count);
    }
}

/* Counters and gauges are created by name from C and Lua; their help lives here, in one
 * place, so every series in /metrics has HELP (promtool checks it). */
static const char *series_help(const char *name)
{
    static const struct { const char *name, *help; } known[] = {
        {"evently_booking_batch_requests_total", "Booking takes served by coalesced batches."},
        {"evently_booking_batches_total", "Coalesced booking statements run."},
        {"evently_booking_gate_redis_total", "Sold-out marks learned from Redis."},
        {"evently_booking_gate_soldout_total", "Bookings refused by the sold-out gate."},
        {"evently_early_answers_total", "Requests answered from C before any Lua ran."},
        {"evently_outbox_published_total", "Outbox messages published."},
        {"evently_password_jobs_refused_total", "Password hashes refused at once: the hasher queue was full."},
        {"evently_rate_limited_total", "Requests refused by a rate limit (evently.limit)."},
        {"evently_websocket_closed_total", "WebSockets closed."},
        {"evently_websocket_opened_total", "WebSockets opened."},
        {"evently_worker_restarts_total", "Workers restarted by the master after they died."},
        {"evently_consumer_lag", "Messages a consumer group has not handled yet."},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(known[i].name, name) == 0)
            return known[i].help;
    return "Reported by the scripts.";
}

static void render_workers(ev_metrics_t *m, out_t *o)
{
    int workers = 0;
    for (int i = 0; i < EV_METRICS_MAX_WORKERS; i++)
        workers += __atomic_load_n(&m->worker_pid[i], __ATOMIC_ACQUIRE) != 0;
    out(o, "# HELP evently_workers Worker processes running.\n# TYPE evently_workers gauge\n"
           "evently_workers %d\n", workers);
    out(o, "# HELP evently_lua_memory_bytes Lua heap per worker.\n"
           "# TYPE evently_lua_memory_bytes gauge\n");
    for (int i = 0; i < EV_METRICS_MAX_WORKERS; i++) {
        int pid = __atomic_load_n(&m->worker_pid[i], __ATOMIC_ACQUIRE);
        if (pid)
            out(o, "evently_lua_memory_bytes{worker=\"%d\",pid=\"%d\"} %llu\n", i, pid,
                (unsigned long long)__atomic_load_n(&m->worker_lua_bytes[i], __ATOMIC_RELAXED));
    }
    for (int i = 0; i < COUNTERS; i++) {
        counter_t *c = &m->counters[i];
        if (__atomic_load_n(&c->state, __ATOMIC_ACQUIRE) == 2)
            out(o, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", c->name, series_help(c->name),
                c->name, c->name, (unsigned long long)__atomic_load_n(&c->value, __ATOMIC_RELAXED));
    }
    out(o, "# HELP evently_metrics_series_dropped_total Series not recorded: the table was full.\n"
           "# TYPE evently_metrics_series_dropped_total counter\n"
           "evently_metrics_series_dropped_total %llu\n",
        (unsigned long long)__atomic_load_n(&m->dropped, __ATOMIC_RELAXED));
}

void ev_metrics_pool_set(ev_metrics_t *m, int slot, ev_pool_kind_t kind, const ev_metrics_pool_t *p)
{
    if (slot >= 0 && slot < EV_METRICS_MAX_WORKERS && kind < EV_POOL_COUNT)
        m->pools[slot][kind] = *p; /* one writer per slot; a torn read is one second stale */
}

static void render_pools(ev_metrics_t *m, out_t *o)
{
    static const char *const names[] = {"db", "replica", "redis"};
    static const struct { const char *name, *help, *type; } g[] = {
        {"evently_pool_connections", "Open connections.", "gauge"},
        {"evently_pool_idle", "Idle connections.", "gauge"},
        {"evently_pool_busy", "Connections in use.", "gauge"},
        {"evently_pool_waiting", "Callers waiting for a connection.", "gauge"},
        {"evently_pool_max", "Pool size limit.", "gauge"},
        {"evently_pool_acquired_total", "Connections handed out.", "counter"},
        {"evently_pool_timeouts_total", "Waits that timed out.", "counter"},
        {"evently_pool_errors_total", "Failed commands and statements.", "counter"},
        {"evently_pool_queries_total", "Commands and statements sent.", "counter"},
    };
    for (size_t k = 0; k < sizeof g / sizeof g[0]; k++) {
        out(o, "# HELP %s %s\n# TYPE %s %s\n", g[k].name, g[k].help, g[k].name, g[k].type);
        for (int w = 0; w < EV_METRICS_MAX_WORKERS; w++) {
            if (!__atomic_load_n(&m->worker_pid[w], __ATOMIC_ACQUIRE))
                continue;
            for (int p = 0; p < EV_POOL_COUNT; p++) {
                const ev_metrics_pool_t *s = &m->pools[w][p];
                if (s->max == 0)
                    continue; /* never used by this worker */
                unsigned long long v[] = {(unsigned long long)s->total, (unsigned long long)s->idle,
                                          (unsigned long long)s->busy, (unsigned long long)s->waiting,
                                          (unsigned long long)s->max, s->acquired, s->timeouts,
                                          s->errors, s->queries};
                out(o, "%s{pool=\"%s\",worker=\"%d\"} %llu\n", g[k].name, names[p], w, v[k]);
            }
        }
    }
}

/* "# TYPE name gauge" before the first series of each name. */
static void gauge_type(out_t *o, const char *series, char typed[][64], int *ntyped)
{
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(series, "{ "), series);
    for (int i = 0; i < *ntyped; i++)
        if (strcmp(typed[i], name) == 0)
            return;
    if (*ntyped < GAUGES)
        snprintf(typed[(*ntyped)++], 64, "%s", name);
    out(o, "# HELP %s %s\n# TYPE %s gauge\n", name, series_help(name), name);
}

/* Each series once, summed over the workers that set it. */
static void render_gauges(ev_metrics_t *m, out_t *o)
{
    char typed[GAUGES][64];
    int ntyped = 0;
    for (int w = 0; w < EV_METRICS_MAX_WORKERS; w++) {
        for (int i = 0; i < GAUGES; i++) {
            gauge_t *g = &m->gauges[w][i];
            if (__atomic_load_n(&g->state, __ATOMIC_ACQUIRE) != 2)
                continue;
            int seen = 0;
            int64_t sum = 0;
            for (int w2 = 0; w2 < EV_METRICS_MAX_WORKERS && !seen; w2++) {
                for (int j = 0; j < GAUGES; j++) {
                    gauge_t *h = &m->gauges[w2][j];
                    if (__atomic_load_n(&h->state, __ATOMIC_ACQUIRE) != 2 || strcmp(h->series, g->series))
                        continue;
                    if (w2 < w || (w2 == w && j < i))
                        seen = 1; /* rendered with an earlier one */
                    else
                        sum += __atomic_load_n(&h->value, __ATOMIC_RELAXED);
                }
            }
            if (!seen) {
                gauge_type(o, g->series, typed, &ntyped);
                out(o, "%s %lld\n", g->series, (long long)sum);
            }
        }
    }
}

char *ev_metrics_render(ev_metrics_t *m, size_t *len)
{
    out_t o = {malloc(8192), 0, 8192};
    if (!o.p)
        return NULL;
    o.p[0] = '\0';
    render_requests(m, &o);
    render_workers(m, &o);
    render_pools(m, &o);
    render_gauges(m, &o);
    *len = o.len;
    return o.p;
}

/* A seqlock per component: one writer (the master), readers retry a torn read. */
void ev_metrics_component_set(ev_metrics_t *m, int component, int state, const char *detail)
{
    if (component < 0 || component >= 8)
        return;
    __atomic_add_fetch(&m->component_seq[component], 1, __ATOMIC_ACQ_REL);
    __atomic_store_n(&m->component_state[component], state, __ATOMIC_RELAXED);
    snprintf(m->component_detail[component], sizeof m->component_detail[component], "%s",
             detail ? detail : "");
    __atomic_add_fetch(&m->component_seq[component], 1, __ATOMIC_ACQ_REL);
}

int ev_metrics_component_get(ev_metrics_t *m, int component, char *detail, size_t cap)
{
    if (component < 0 || component >= 8)
        return 0;
    for (;;) {
        uint32_t seq = __atomic_load_n(&m->component_seq[component], __ATOMIC_ACQUIRE);
        if (seq & 1)
            continue;
        int state = __atomic_load_n(&m->component_state[component], __ATOMIC_RELAXED);
        if (detail && cap)
            snprintf(detail, cap, "%s", m->component_detail[component]);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&m->component_seq[component], __ATOMIC_RELAXED) == seq)
            return state;
    }
}
