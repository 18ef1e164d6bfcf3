/* kafka.c - librdkafka on the event loop; see kafka.h. */
#define _GNU_SOURCE /* pipe2 */
#include "kafka.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

struct ev_kafka {
    rd_kafka_t *rk;
    rd_kafka_queue_t *queue; /* main queue (producer) or consumer queue */
    int consumer;
    int pipe_fd[2];
    struct event *readable;
    struct event *tick; /* a slow poll besides the pipe: cheap insurance */
    void (*on_ready)(void *ud);
    void *ready_ud;
    char last_error[160]; /* logged once until it changes */
    char *stats;          /* the latest statistics JSON (consumers) */
};

typedef struct {
    ev_kafka_dr_fn fn;
    void *ud;
} dr_t;

/* ---- logging: librdkafka calls these from its own threads */

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    /* connection failures come twice, here and through error_cb: that one
     * says it once per change, so they stay at debug here */
    if (level <= 4 && strcmp(fac, "FAIL") != 0)
        ev_warn("kafka %s: %s", fac, buf);
    else
        ev_debug("kafka %s: %s", fac, buf);
}

/* Client-level errors (all brokers down, ...) arrive on the loop; the
 * client retries by itself, so these are reported, not acted on. */
static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    ev_kafka_t *k = opaque;
    char msg[sizeof k->last_error];
    snprintf(msg, sizeof msg, "%s: %s", rd_kafka_err2name(err), reason);
    if (strcmp(msg, k->last_error) != 0) {
        ev_warn("kafka: %s", msg);
        snprintf(k->last_error, sizeof k->last_error, "%s", msg);
    }
}

/* Served from rd_kafka_consumer_poll, i.e. on the loop. */
static int stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    (void)rk;
    ev_kafka_t *k = opaque;
    char *copy = malloc(len + 1);
    if (copy) {
        memcpy(copy, json, len);
        copy[len] = '\0';
        free(k->stats);
        k->stats = copy;
    }
    return 0; /* librdkafka frees json */
}

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    dr_t *d = m->_private;
    if (!d)
        return;
    d->fn(d->ud, m->err ? rd_kafka_err2str(m->err) : NULL, m->partition, m->offset);
    free(d);
}

/* ---- the loop side */

static void serve(ev_kafka_t *k)
{
    if (k->consumer) {
        if (k->on_ready)
            k->on_ready(k->ready_ud);
    } else {
        rd_kafka_poll(k->rk, 0); /* delivery reports and errors */
    }
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    serve(arg);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    serve(arg);
}

static int set(rd_kafka_conf_t *conf, const char *key, const char *value, char *err, size_t errlen)
{
    if (rd_kafka_conf_set(conf, key, value, err, errlen) != RD_KAFKA_CONF_OK)
        return -1;
    return 0;
}

/* The operator's properties, after ours (so they win). The error names the
 * property and librdkafka's reason, never the value: it may be a password. */
static int apply_props(rd_kafka_conf_t *conf, const ev_kafka_props_t *props, char *err,
                       size_t errlen)
{
    char why[256];
    for (int i = 0; props && i < props->n; i++) {
        if (rd_kafka_conf_set(conf, props->names[i], props->values[i], why, sizeof why) !=
            RD_KAFKA_CONF_OK) {
            if (strstr(why, props->values[i]) && *props->values[i])
                snprintf(why, sizeof why, "its value is refused");
            snprintf(err, errlen, "kafka property %s: %s", props->names[i], why);
            return -1;
        }
    }
    return 0;
}

int ev_kafka_check_props(const ev_kafka_props_t *props, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    int rc = apply_props(conf, props, err, errlen);
    rd_kafka_conf_destroy(conf);
    return rc;
}

static ev_kafka_t *alloc_handle(char *err, size_t errlen)
{
    ev_kafka_t *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    k->pipe_fd[0] = k->pipe_fd[1] = -1;
    if (pipe2(k->pipe_fd, O_NONBLOCK | O_CLOEXEC) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        free(k);
        return NULL;
    }
    return k;
}

static rd_kafka_conf_t *base_conf(ev_kafka_t *k, const char *brokers, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_opaque(conf, k);
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    if (set(conf, "bootstrap.servers", brokers, err, errlen) ||
        set(conf, "client.id", "evently", err, errlen) ||
        set(conf, "socket.keepalive.enable", "true", err, errlen) ||
        set(conf, "reconnect.backoff.ms", "100", err, errlen) ||
        set(conf, "reconnect.backoff.max.ms", "2000", err, errlen)) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    return conf;
}

/* Hooks the handle's queue to the loop; the handle owns rk from here. */
static int attach(ev_kafka_t *k, struct event_base *base, char *err, size_t errlen)
{
    k->queue = k->consumer ? rd_kafka_queue_get_consumer(k->rk) : rd_kafka_queue_get_main(k->rk);
    k->readable = event_new(base, k->pipe_fd[0], EV_READ | EV_PERSIST, on_readable, k);
    k->tick = event_new(base, -1, EV_PERSIST, on_tick, k);
    if (!k->queue || !k->readable || !k->tick) {
        snprintf(err, errlen, "cannot attach the kafka client to the loop");
        return -1;
    }
    rd_kafka_queue_io_event_enable(k->queue, k->pipe_fd[1], "1", 1);
    struct timeval every = {0, 250000};
    event_add(k->readable, NULL);
    event_add(k->tick, &every);
    return 0;
}

/* librdkafka's close and destroy wait for the brokers, and with the broker
 * gone they can wait for good (seen: a stopping worker stuck in
 * rd_kafka_destroy after the broker was stopped). They run on a thread of
 * their own; the caller waits up to CLOSE_WAIT_S and goes on without it (only
 * stopping workers free handles, and the process is ending). */
#define CLOSE_WAIT_S 5

typedef struct {
    rd_kafka_t *rk;
    int consumer;
    int done, abandoned;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} closing_t;

static void *closer(void *arg)
{
    closing_t *c = arg;
    if (c->consumer)
        rd_kafka_consumer_close(c->rk); /* commits what was stored, leaves the group */
    rd_kafka_destroy(c->rk);
    pthread_mutex_lock(&c->mu);
    c->done = 1;
    int abandoned = c->abandoned;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (abandoned)
        free(c);
    return NULL;
}

/* 0 when closed, -1 when the close goes on without us: then the client's
 * callbacks may still run on the closing thread with our handle as opaque. */
static int close_bounded(rd_kafka_t *rk, int consumer)
{
    closing_t *c = calloc(1, sizeof *c);
    pthread_t t;
    if (!c)
        return -1; /* leak rk rather than risk a hang */
    c->rk = rk;
    c->consumer = consumer;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    if (pthread_create(&t, NULL, closer, c) != 0) {
        free(c);
        return -1;
    }
    pthread_detach(t);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += CLOSE_WAIT_S;
    pthread_mutex_lock(&c->mu);
    while (!c->done && pthread_cond_timedwait(&c->cv, &c->mu, &until) == 0)
        ;
    int done = c->done;
    c->abandoned = !done;
    pthread_mutex_unlock(&c->mu);
    if (done) {
        free(c);
        return 0;
    }
    ev_warn("kafka: client did not close within %d s (brokers unreachable?); not waiting",
            CLOSE_WAIT_S);
    return -1;
}

static void release_handle(ev_kafka_t *k)
{
    if (k->readable)
        event_free(k->readable);
    if (k->tick)
        event_free(k->tick);
    if (k->queue) {
        rd_kafka_queue_io_event_enable(k->queue, -1, NULL, 0);
        rd_kafka_queue_destroy(k->queue);
    }
    int still_closing = k->rk && close_bounded(k->rk, k->consumer) != 0;
    close(k->pipe_fd[0]);
    close(k->pipe_fd[1]);
    if (still_closing)
        return; /* its error and stats callbacks may still get k: leave it (the process is ending) */
    free(k->stats);
    free(k);
}

/* The error path of both constructors: conf is still ours until rd_kafka_new took it. */
static ev_kafka_t *fail(ev_kafka_t *k, rd_kafka_conf_t *conf)
{
    if (conf)
        rd_kafka_conf_destroy(conf);
    release_handle(k);
    return NULL;
}

static int create(ev_kafka_t *k, rd_kafka_type_t type, rd_kafka_conf_t *conf, char *err,
                  size_t errlen)
{
    k->rk = rd_kafka_new(type, conf, err, errlen); /* owns conf on success */
    return k->rk ? 0 : -1;
}

ev_kafka_t *ev_kafka_producer_new(struct event_base *base, const char *brokers,
                                  const ev_kafka_props_t *props, char *err, size_t errlen)
{
    ev_kafka_t *k = alloc_handle(err, errlen);
    if (!k)
        return NULL;
    rd_kafka_conf_t *conf = base_conf(k, brokers, err, errlen);
    if (!conf || set(conf, "enable.idempotence", "true", err, errlen) ||
        set(conf, "acks", "all", err, errlen) || set(conf, "linger.ms", "2", err, errlen) ||
        set(conf, "message.timeout.ms", "30000", err, errlen) ||
        apply_props(conf, props, err, errlen))
        return fail(k, conf);
    rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
    if (create(k, RD_KAFKA_PRODUCER, conf, err, errlen) != 0)
        return fail(k, conf);
    if (attach(k, base, err, errlen) != 0)
        return fail(k, NULL);
    return k;
}

static rd_kafka_headers_t *make_headers(const ev_kafka_header_t *h, int n)
{
    if (n <= 0)
        return NULL;
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new((size_t)n);
    for (int i = 0; i < n; i++)
        rd_kafka_header_add(hdrs, h[i].name, -1, h[i].value, (ssize_t)h[i].len);
    return hdrs;
}

int ev_kafka_produce(ev_kafka_t *k, const char *topic, const void *key, size_t key_len,
                     const void *value, size_t value_len, const ev_kafka_header_t *headers,
                     int nheaders, ev_kafka_dr_fn fn, void *ud, char *err, size_t errlen)
{
    dr_t *d = malloc(sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    d->fn = fn;
    d->ud = ud;
    rd_kafka_headers_t *hdrs = make_headers(headers, nheaders);
    rd_kafka_resp_err_t e = rd_kafka_producev(
        k->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_KEY((void *)key, key_len), RD_KAFKA_V_VALUE((void *)value, value_len),
        RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(d), RD_KAFKA_V_END);
    if (e) { /* not queued: headers and d are still ours */
        if (hdrs)
            rd_kafka_headers_destroy(hdrs);
        free(d);
        snprintf(err, errlen, "%s", rd_kafka_err2str(e));
        return -1;
    }
    return 0;
}

ev_kafka_t *ev_kafka_consumer_new(struct event_base *base, const char *brokers,
                                  const ev_kafka_props_t *props, const char *group,
                                  const char *const *topics, int ntopics, char *err, size_t errlen)
{
    ev_kafka_t *k = alloc_handle(err, errlen);
    if (!k)
        return NULL;
    k->consumer = 1;
    rd_kafka_conf_t *conf = base_conf(k, brokers, err, errlen);
    if (!conf || set(conf, "group.id", group, err, errlen) ||
        set(conf, "enable.auto.commit", "true", err, errlen) ||
        set(conf, "auto.commit.interval.ms", "500", err, errlen) ||
        set(conf, "enable.auto.offset.store", "false", err, errlen) ||
        set(conf, "auto.offset.reset", "earliest", err, errlen) ||
        set(conf, "allow.auto.create.topics", "true", err, errlen) ||
        set(conf, "session.timeout.ms", "10000", err, errlen) ||
        set(conf, "heartbeat.interval.ms", "1000", err, errlen) ||
        set(conf, "topic.metadata.refresh.interval.ms", "5000", err, errlen) ||
        set(conf, "statistics.interval.ms", "2000", err, errlen) ||
        /* a batch's handlers may retry for minutes (mail, a broker outage
         * while dead-lettering): stay in the group meanwhile */
        set(conf, "max.poll.interval.ms", "1800000", err, errlen) ||
        apply_props(conf, props, err, errlen))
        return fail(k, conf);
    rd_kafka_conf_set_stats_cb(conf, stats_cb);
    if (create(k, RD_KAFKA_CONSUMER, conf, err, errlen) != 0)
        return fail(k, conf);
    rd_kafka_poll_set_consumer(k->rk);
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(ntopics);
    for (int i = 0; i < ntopics; i++)
        rd_kafka_topic_partition_list_add(list, topics[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(k->rk, list);
    rd_kafka_topic_partition_list_destroy(list);
    if (e) {
        snprintf(err, errlen, "subscribe: %s", rd_kafka_err2str(e));
        return fail(k, NULL);
    }
    if (attach(k, base, err, errlen) != 0)
        return fail(k, NULL);
    return k;
}

rd_kafka_message_t *ev_kafka_next(ev_kafka_t *k)
{
    rd_kafka_message_t *m;
    while ((m = rd_kafka_consumer_poll(k->rk, 0))) {
        if (!m->err)
            return m;
        if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
            error_cb(k->rk, m->err, rd_kafka_message_errstr(m), k);
        rd_kafka_message_destroy(m);
    }
    return NULL;
}

void ev_kafka_on_ready(ev_kafka_t *k, void (*fn)(void *ud), void *ud)
{
    k->on_ready = fn;
    k->ready_ud = ud;
}

int ev_kafka_store(ev_kafka_t *k, const char *topic, int32_t partition, int64_t offset)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(list, topic, partition)->offset = offset + 1;
    rd_kafka_resp_err_t e = rd_kafka_offsets_store(k->rk, list);
    rd_kafka_topic_partition_list_destroy(list);
    /* a partition taken away by a rebalance cannot be stored: its new owner
     * starts from the last commit and redelivers (at least once) */
    return e == RD_KAFKA_RESP_ERR_NO_ERROR ? 0 : -1;
}

const char *ev_kafka_stats(const ev_kafka_t *k)
{
    return k->stats;
}

int ev_kafka_fatal(ev_kafka_t *k, char *err, size_t errlen)
{
    return rd_kafka_fatal_error(k->rk, err, errlen) != RD_KAFKA_RESP_ERR_NO_ERROR;
}

void ev_kafka_free(ev_kafka_t *k, int flush_ms)
{
    if (!k)
        return;
    if (!k->consumer && rd_kafka_flush(k->rk, flush_ms) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        ev_warn("kafka: %d messages not delivered at shutdown", rd_kafka_outq_len(k->rk));
        rd_kafka_purge(k->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_poll(k->rk, 0); /* their delivery reports: failed, callers told */
    }
    release_handle(k);
}
