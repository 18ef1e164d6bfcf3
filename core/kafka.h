/* kafka.h - librdkafka handles driven by the worker's event loop.
 *
 * librdkafka runs its own threads for the network; what reaches us are
 * queue entries (delivery reports, consumed messages, errors). Each handle
 * asks librdkafka to write a byte to a pipe when its queue goes from empty to
 * non-empty (rd_kafka_queue_io_event_enable), and the loop serves the queue
 * when the pipe is readable: no thread of ours ever blocks, and every
 * callback below runs on the loop.
 *
 * Producer: idempotent (acks=all, ordered per partition even across
 * retries); ev_kafka_produce() copies the message and calls back once with
 * its delivery report. Consumer: one group member subscribed to its topics;
 * offsets are stored only when the caller says a message is done
 * (ev_kafka_store) and committed by librdkafka in the background, so a crash
 * redelivers what was not finished (at least once). */
#ifndef EV_KAFKA_H
#define EV_KAFKA_H

#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

struct event_base;
typedef struct ev_kafka ev_kafka_t;

typedef struct {
    const char *name;
    const void *value;
    size_t len;
} ev_kafka_header_t;

/* Delivery report: err 0 and the partition/offset written, or an error text. */
typedef void (*ev_kafka_dr_fn)(void *ud, const char *err, int32_t partition, int64_t offset);

/* Extra librdkafka properties (security.protocol, sasl.*, ssl.*), set after
 * evently's own; a property librdkafka refuses fails the client's creation,
 * naming the property and never its value (it may be a password). */
typedef struct {
    const char *const *names, *const *values;
    int n;
} ev_kafka_props_t;

/* 0 when librdkafka takes every property, else -1 and which one in err. */
int ev_kafka_check_props(const ev_kafka_props_t *props, char *err, size_t errlen);

ev_kafka_t *ev_kafka_producer_new(struct event_base *base, const char *brokers,
                                  const ev_kafka_props_t *props, char *err, size_t errlen);
/* Queues one message (copied); dr runs later on the loop, exactly once, also
 * when the message times out or the handle is freed. -1 and err when it could
 * not even be queued (then dr never runs). */
int ev_kafka_produce(ev_kafka_t *k, const char *topic, const void *key, size_t key_len,
                     const void *value, size_t value_len, const ev_kafka_header_t *headers,
                     int nheaders, ev_kafka_dr_fn dr, void *ud, char *err, size_t errlen);

ev_kafka_t *ev_kafka_consumer_new(struct event_base *base, const char *brokers,
                                  const ev_kafka_props_t *props, const char *group,
                                  const char *const *topics, int ntopics, char *err, size_t errlen);
/* The next message, or NULL when none is queued (never blocks). Errors the
 * client reports (broker down, ...) are logged here, not returned. The caller
 * destroys the message with rd_kafka_message_destroy(). */
rd_kafka_message_t *ev_kafka_next(ev_kafka_t *k);
/* Called on the loop when messages may be waiting (the queue went non-empty). */
void ev_kafka_on_ready(ev_kafka_t *k, void (*fn)(void *ud), void *ud);
/* Marks a message done: its offset + 1 is committed in the background. */
int ev_kafka_store(ev_kafka_t *k, const char *topic, int32_t partition, int64_t offset);
/* The client's latest statistics (JSON, refreshed every 2 s; NULL before
 * the first): per partition its fetch state and consumer_lag, the distance
 * from the committed offset to the partition's end, which librdkafka keeps
 * even for a partition this member has not consumed from yet. */
const char *ev_kafka_stats(const ev_kafka_t *k);

/* A producer that hit a fatal error (idempotence broken: fenced, not
 * authorized) fails every message until replaced; 1 and the reason then. */
int ev_kafka_fatal(ev_kafka_t *k, char *err, size_t errlen);

/* Producer: waits up to flush_ms for deliveries, fails the rest; consumer:
 * leaves the group after committing what was stored. */
void ev_kafka_free(ev_kafka_t *k, int flush_ms);

#endif
