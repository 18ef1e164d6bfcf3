/* health.c - dependency probes; see health.h.
 *
 * Postgres: PQping with a 2 s connect timeout (it reports "accepting
 * connections", no query needed). Redis: a PING over a plain socket with a
 * 2 s timeout, after AUTH when the URL has a password. Kafka: a TCP connect to each bootstrap broker in turn until
 * one answers (the client itself finds the rest of the cluster); reported
 * "not_configured" when no brokers are set (in-process outbox). */
#include "health.h"

#include <libpq-fe.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "redis_url.h"

static const char *const comp_names[] = {"postgres", "redis", "kafka"};
static const char *const state_names[] = {"unknown", "up", "down", "not_configured"};

const char *ev_health_component_name(ev_component_t c)
{
    return comp_names[c];
}
const char *ev_health_state_name(ev_state_t s)
{
    return state_names[s];
}

static int probe_postgres(const char *url, char *detail, size_t cap)
{
    char conninfo[1024];
    /* a URI takes options after '?', a keyword string after a space */
    if (strncmp(url, "postgres", 8) == 0)
        snprintf(conninfo, sizeof conninfo, "%s%sconnect_timeout=2", url,
                 strchr(url, '?') ? "&" : "?");
    else
        snprintf(conninfo, sizeof conninfo, "%s connect_timeout=2", url);
    PGPing p = PQping(conninfo);
    static const char *const why[] = {"accepting connections", "rejecting connections",
                                      "no response", "bad connection parameters"};
    snprintf(detail, cap, "%s", why[p]);
    return p == PQPING_OK ? EV_STATE_UP : EV_STATE_DOWN;
}

/* Tries every address the name has (localhost may be ::1 first while the
 * server listens on 127.0.0.1 only). */
static int connect_tcp(const char *host, const char *port)
{
    struct timeval tv = {2, 0};
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *list = NULL;
    if (getaddrinfo(host, port, &hints, &list) != 0)
        return -1;
    int fd = -1;
    for (struct addrinfo *ai = list; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); /* bounds connect() too */
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(list);
    return fd;
}

static int connect_redis(const ev_redis_url_t *u)
{
    struct timeval tv = {2, 0};
    int fd = -1;
    if (u->path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", u->path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            close(fd);
            return -1;
        }
    } else {
        char port[16];
        snprintf(port, sizeof port, "%d", u->port);
        fd = connect_tcp(u->host, port);
    }
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Sends one command as a RESP array (binary-safe: a password may hold
 * anything) and reads the first line of the answer into buf. */
static int redis_ask(int fd, const char *const *argv, int argc, char *buf, size_t cap)
{
    char out[1024];
    int n = snprintf(out, sizeof out, "*%d\r\n", argc);
    for (int i = 0; i < argc && n > 0 && (size_t)n < sizeof out; i++)
        n += snprintf(out + n, sizeof out - (size_t)n, "$%zu\r\n%s\r\n", strlen(argv[i]), argv[i]);
    if (n <= 0 || (size_t)n >= sizeof out || write(fd, out, (size_t)n) != n)
        return -1;
    ssize_t got = read(fd, buf, cap - 1);
    buf[got > 0 ? got : 0] = '\0';
    return got > 0 ? 0 : -1;
}

/* PING, after AUTH when the URL names a password (a server that requires one
 * answers nothing else). */
static int probe_redis(const char *url, char *detail, size_t cap)
{
    ev_redis_url_t u;
    char why[120];
    if (ev_redis_url_parse(url, &u, why, sizeof why) != 0) {
        snprintf(detail, cap, "%s", why);
        return EV_STATE_DOWN;
    }
    int fd = connect_redis(&u);
    char buf[64] = {0};
    int ok = 0;
    if (fd < 0) {
        snprintf(detail, cap, "cannot connect");
    } else if (u.pass && (redis_ask(fd, (const char *[]){"AUTH", u.user ? u.user : u.pass, u.pass},
                                    u.user ? 3 : 2, buf, sizeof buf) != 0 ||
                          /* a Redis with no password takes the commands anyway */
                          (strncmp(buf, "+OK", 3) != 0 && !strstr(buf, "without any password") &&
                           !strstr(buf, "no password is set")))) {
        snprintf(detail, cap, "AUTH refused");
    } else {
        ok = redis_ask(fd, (const char *[]){"PING"}, 1, buf, sizeof buf) == 0 &&
             strncmp(buf, "+PONG", 5) == 0;
        snprintf(detail, cap, ok ? "PONG" : "no PONG");
    }
    if (fd >= 0)
        close(fd);
    ev_redis_url_free(&u);
    return ok ? EV_STATE_UP : EV_STATE_DOWN;
}

static int probe_kafka(const char *brokers, char *detail, size_t cap)
{
    char list[512];
    snprintf(list, sizeof list, "%s", brokers);
    char *save = NULL;
    for (char *b = strtok_r(list, ",", &save); b; b = strtok_r(NULL, ",", &save)) {
        char host[256] = "", port[16] = "9092";
        char *scheme = strstr(b, "://"); /* PLAINTEXT://host:port, as librdkafka takes it */
        if (scheme)
            b = scheme + 3;
        int parsed = *b == '[' ? sscanf(b, "[%255[^]]]:%15[0-9]", host, port) /* [::1]:9092 */
                               : sscanf(b, " %255[^:, ]:%15[0-9]", host, port);
        if (parsed < 1)
            continue;
        int fd = connect_tcp(host, port);
        if (fd >= 0) {
            close(fd);
            snprintf(detail, cap, "broker %.80s:%.15s reachable", host, port);
            return EV_STATE_UP;
        }
    }
    snprintf(detail, cap, "no bootstrap broker reachable; outbox buffering");
    return EV_STATE_DOWN;
}

void ev_health_probe(const ev_config_t *cfg, ev_metrics_t *m)
{
    char detail[120];
    int s = cfg->database_url ? probe_postgres(cfg->database_url, detail, sizeof detail)
                              : (snprintf(detail, sizeof detail, "no url"), EV_STATE_DOWN);
    ev_metrics_component_set(m, EV_COMP_POSTGRES, s, detail);
    s = cfg->redis_url ? probe_redis(cfg->redis_url, detail, sizeof detail)
                       : (snprintf(detail, sizeof detail, "no url"), EV_STATE_DOWN);
    ev_metrics_component_set(m, EV_COMP_REDIS, s, detail);
    if (cfg->kafka_brokers)
        s = probe_kafka(cfg->kafka_brokers, detail, sizeof detail);
    else
        s = (snprintf(detail, sizeof detail, "in-process outbox"), EV_STATE_NOT_CONFIGURED);
    ev_metrics_component_set(m, EV_COMP_KAFKA, s, detail);
}
