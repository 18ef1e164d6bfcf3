/* master.c - process supervision; see master.h.
 *
 * Listening sockets: one per worker position (a "listener"), all bound to the port with
 * SO_REUSEPORT so the kernel spreads connections evenly over the listeners. The
 * master opens them and keeps them; the worker of listener i, of whatever
 * generation, accepts from socket i. A reload starts a new worker on each
 * listener before the old one stops accepting, so no listener's queue is ever
 * closed and no queued connection is dropped (closing a SO_REUSEPORT
 * socket would reset everything waiting in its queue).
 *
 * Workers live in a small table: pid, slot (for per-worker metrics) and
 * generation. Only workers of the current generation are replaced when they
 * die; a worker that dies within a second of starting is replaced after a
 * pause so a crash loop cannot spin the CPU.
 *
 * Heartbeats: each worker's loop writes the time once a second (metrics
 * shm). The first beat says it is ready; a worker whose beats stop for
 * worker_watchdog seconds (a loop stuck in C) is killed and replaced. A
 * reload retires the old generation only once every listener has a ready new
 * worker; if a new worker dies before it is ready, or none is ready within
 * reload_timeout, the new generation is stopped and the old one serves on. */
#include "master.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "health.h"
#include "log.h"
#include "metrics.h"
#include "runtime.h"
#include "worker.h"

#define SCRIPT_CHECK_TIMEOUT_S 10

typedef struct {
    pid_t pid;
    int generation;
    int listener;
    time_t started;
} slot_t;

typedef struct {
    const ev_config_t *cfg;
    struct event_base *base;
    ev_metrics_t *metrics;
    int listen_fds[EV_METRICS_MAX_WORKERS]; /* one per listener */
    int ops_fd;                             /* ops_listen's socket, every worker's; -1: none */
    int listeners;
    int generation;
    int stopping;
    slot_t slots[EV_METRICS_MAX_WORKERS];
    struct event *respawn;
    struct event *reloading; /* while a new generation gets ready: checks it */
    time_t reload_started;
} ev_master_t;

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int ready(ev_master_t *m, int slot)
{
    return ev_metrics_worker_beat_at(m->metrics, slot) != 0;
}

static void abandon_reload(ev_master_t *m, const char *why);

/* SO_REUSEPORT lets any process of ours bind a port that is in use, and the
 * kernel would then spread connections over both: a second `evently serve`
 * on a busy port (or a stale one still holding it) would answer a share of
 * the traffic unseen. A plain bind first tells whether someone listens. */
static int port_in_use(const struct addrinfo *ai)
{
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    int one = 1;
    if (fd < 0)
        return 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one); /* TIME_WAIT is not "in use" */
    int taken = bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno == EADDRINUSE;
    close(fd);
    return taken;
}

/* A listening socket on host:port. shared: SO_REUSEPORT, one per worker
 * position (the first checks nobody else listens there); otherwise one
 * socket that every worker accepts from (the operations listener). */
static int open_listener(const char *host, int port, int first, int shared)
{
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    int rc = getaddrinfo(host, portstr, &hints, &ai);
    if (rc != 0) {
        ev_error("host %s: %s", host, gai_strerror(rc));
        return -1;
    }
    if (first && port_in_use(ai)) {
        ev_error("cannot listen on %s:%d: the port is in use by another process", host, port);
        freeaddrinfo(ai);
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        (shared && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, shared ? 4096 : 128) != 0) {
        ev_error("cannot listen on %s:%d: %s", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

static int free_slot(ev_master_t *m)
{
    for (int i = 0; i < EV_METRICS_MAX_WORKERS; i++)
        if (m->slots[i].pid == 0)
            return i;
    return -1;
}

static int spawn(ev_master_t *m, int slot, int listener)
{
    /* signals stay blocked in the child until its loop handles them, so a
     * reload or stop racing a fork cannot kill a worker mid-boot */
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    pid_t pid = fork();
    if (pid != 0)
        sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        ev_error("fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* the child must not touch the master's loop: reinit gives it private
         * copies (epoll, signal pipe), which it can then free without
         * unregistering anything in the parent's shared epoll instance */
        event_reinit(m->base);
        event_base_free(m->base);
        signal(SIGCHLD, SIG_DFL);
        signal(SIGHUP, SIG_IGN);
        for (int i = 0; i < m->listeners; i++)
            if (i != listener)
                close(m->listen_fds[i]); /* only its own listener's queue */
        _exit(ev_worker_run(m->cfg, m->listen_fds[listener], m->ops_fd, m->metrics, slot));
    }
    m->slots[slot] = (slot_t){pid, m->generation, listener, time(NULL)};
    ev_metrics_worker_set(m->metrics, slot, pid);
    return 0;
}

static int listener_served(const ev_master_t *m, int listener)
{
    for (int i = 0; i < EV_METRICS_MAX_WORKERS; i++)
        if (m->slots[i].pid && m->slots[i].generation == m->generation &&
            m->slots[i].listener == listener)
            return 1;
    return 0;
}

/* Gives every listener a worker of the current generation. */
static void top_up(ev_master_t *m)
{
    for (int listener = 0; listener < m->listeners && !m->stopping; listener++) {
        if (listener_served(m, listener))
            continue;
        int s = free_slot(m);
        if (s < 0 || spawn(m, s, listener) != 0)
            return;
    }
}

static void on_respawn(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    top_up(arg);
}

static void reap(ev_master_t *m)
{
    int status;
    pid_t pid;
    int young = 0;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < EV_METRICS_MAX_WORKERS; i++) {
            slot_t *s = &m->slots[i];
            if (s->pid != pid)
                continue;
            int clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
            int unready = !ready(m, i);
            if (s->generation == m->generation && !m->stopping && m->reload_started && unready) {
                s->pid = 0;
                ev_metrics_worker_set(m->metrics, i, 0);
                abandon_reload(m, "a new worker died before it was ready");
                continue;
            }
            if (s->generation == m->generation && !m->stopping) {
                ev_warn("worker %d (pid %d) died (%s %d); replacing it", i, (int)pid,
                        WIFSIGNALED(status) ? "signal" : "exit",
                        WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
                ev_metrics_count(m->metrics, "evently_worker_restarts_total", 1);
                young |= time(NULL) - s->started < 1;
            } else if (!clean) {
                ev_warn("retired worker %d (pid %d) ended uncleanly", i, (int)pid);
            }
            s->pid = 0;
            ev_metrics_worker_set(m->metrics, i, 0);
        }
    }
    if (m->stopping) {
        int left = 0;
        for (int i = 0; i < EV_METRICS_MAX_WORKERS; i++)
            left += m->slots[i].pid != 0;
        if (left == 0)
            event_base_loopbreak(m->base);
        return;
    }
    if (young) {
        struct timeval pause = {1, 0};
        event_add(m->respawn, &pause);
    } else {
        top_up(m);
    }
}

static void signal_generation(ev_master_t *m, int older_than, int sig)
{
    for (int i = 0; i < EV_METRICS_MAX_WORKERS; i++)
        if (m->slots[i].pid && m->slots[i].generation < older_than)
            kill(m->slots[i].pid, sig);
}

/* Every listener has a ready worker of the current generation. */
static int generation_ready(ev_master_t *m)
{
    for (int listener = 0; listener < m->listeners; listener++) {
        int ok = 0;
        for (int i = 0; i < EV_METRICS_MAX_WORKERS && !ok; i++)
            ok = m->slots[i].pid && m->slots[i].generation == m->generation &&
                 m->slots[i].listener == listener && ready(m, i);
        if (!ok)
            return 0;
    }
    return 1;
}

static void abandon_reload(ev_master_t *m, const char *why)
{
    ev_error("reload abandoned (%s): generation %d keeps serving", why, m->generation - 1);
    for (int i = 0; i < EV_METRICS_MAX_WORKERS; i++)
        if (m->slots[i].pid && m->slots[i].generation == m->generation)
            kill(m->slots[i].pid, SIGKILL); /* reaped later; not replaced: not current */
    m->generation--;
    m->reload_started = 0;
    event_del(m->reloading);
}

static void on_reloading(evutil_socket_t fd, short what, void *arg)
{
    ev_master_t *m = arg;
    (void)fd;
    (void)what;
    if (!m->reload_started || m->stopping)
        return;
    if (generation_ready(m)) {
        m->reload_started = 0;
        event_del(m->reloading);
        signal_generation(m, m->generation, SIGQUIT);
        ev_info("reload: generation %d serving, older ones draining", m->generation);
    } else if (time(NULL) - m->reload_started > m->cfg->reload_timeout) {
        abandon_reload(m, "new workers not ready in time");
    }
}

static void reload(ev_master_t *m)
{
    char err[2048];
    if (m->reload_started) {
        ev_warn("reload: one is already in progress; ignored");
        return;
    }
    ev_info("reload: checking scripts");
    if (ev_check_scripts(m->cfg, err, sizeof err) != 0) {
        ev_error("reload refused, old workers keep serving: %s", err);
        return;
    }
    m->generation++;
    m->reload_started = time(NULL);
    top_up(m);
    struct timeval tick = {0, 100000};
    event_add(m->reloading, &tick);
}

/* A worker whose loop has not beaten for worker_watchdog seconds is stuck
 * (in C: a script that cannot be stopped ends itself, see slice.c). */
static void watchdog(ev_master_t *m)
{
    int64_t now = monotonic_ms(), limit = (int64_t)m->cfg->worker_watchdog * 1000;
    for (int i = 0; limit > 0 && i < EV_METRICS_MAX_WORKERS; i++) {
        int64_t beat = ev_metrics_worker_beat_at(m->metrics, i);
        if (m->slots[i].pid && beat && now - beat > limit) {
            ev_error("worker %d (pid %d) has not answered for %lld s; killing it", i,
                     (int)m->slots[i].pid, (long long)(now - beat) / 1000);
            kill(m->slots[i].pid, SIGKILL);
            ev_metrics_worker_beat(m->metrics, i, 0); /* once */
        }
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    ev_master_t *m = arg;
    (void)what;
    switch (sig) {
    case SIGCHLD: reap(m); break;
    case SIGHUP:
        if (!m->stopping)
            reload(m);
        break;
    default: /* SIGTERM, SIGINT: drain everything and leave */
        if (m->stopping)
            break;
        ev_info("stopping: draining workers");
        m->stopping = 1;
        signal_generation(m, m->generation + 1, SIGTERM);
        reap(m);
        break;
    }
}

static void on_probe(evutil_socket_t fd, short what, void *arg)
{
    ev_master_t *m = arg;
    (void)fd;
    (void)what;
    if (!m->stopping) {
        watchdog(m);
        ev_health_probe(m->cfg, m->metrics);
    }
}

/* $EVENTLY_HOME/evently.pid names the master, for `kill -HUP` and scripts. */
static void pidfile(const ev_config_t *cfg, int create)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/evently.pid", cfg->home);
    if (!create) {
        unlink(path);
        return;
    }
    mkdir(cfg->home, 0755);
    FILE *f = fopen(path, "w");
    if (!f) {
        ev_warn("cannot write %s: %s", path, strerror(errno));
        return;
    }
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
}

int ev_master_serve(const ev_config_t *cfg)
{
    ev_master_t m = {.cfg = cfg, .listeners = 0, .ops_fd = -1};
    int rc = 1;
    int sigs[] = {SIGCHLD, SIGHUP, SIGTERM, SIGINT};
    struct event *sev[4] = {0}, *probe = NULL;
    if (cfg->workers > EV_METRICS_MAX_WORKERS / 2) {
        ev_error("workers: at most %d", EV_METRICS_MAX_WORKERS / 2);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    m.metrics = ev_metrics_create();
    m.base = event_base_new();
    if (!m.metrics || !m.base)
        goto done;
    for (; m.listeners < cfg->workers; m.listeners++) {
        m.listen_fds[m.listeners] = open_listener(cfg->host, cfg->port, m.listeners == 0, 1);
        if (m.listen_fds[m.listeners] < 0)
            goto done;
    }
    char ops_host[256];
    int ops_port = 0;
    if (cfg->ops_listen) {
        if (ev_config_host_port(cfg->ops_listen, ops_host, sizeof ops_host, &ops_port) != 0 ||
            (m.ops_fd = open_listener(ops_host, ops_port, 1, 0)) < 0)
            goto done;
    }
    for (int i = 0; i < 4; i++) {
        sev[i] = evsignal_new(m.base, sigs[i], on_signal, &m);
        evsignal_add(sev[i], NULL);
    }
    sigset_t handled;
    sigemptyset(&handled);
    for (int i = 0; i < 4; i++)
        sigaddset(&handled, sigs[i]);
    sigprocmask(SIG_UNBLOCK, &handled, NULL); /* held since start-up: ours now */
    m.respawn = evtimer_new(m.base, on_respawn, &m);
    m.reloading = event_new(m.base, -1, EV_PERSIST, on_reloading, &m);
    probe = event_new(m.base, -1, EV_PERSIST, on_probe, &m);
    struct timeval sec = {1, 0};
    event_add(probe, &sec);
    ev_health_probe(cfg, m.metrics);
    pidfile(cfg, 1); /* before any worker can answer: a script that saw /health may read it */
    top_up(&m);
    ev_info("evently listening on http://%s:%d with %d workers", cfg->host, cfg->port,
            cfg->workers);
    if (m.ops_fd >= 0)
        ev_info("operations (/metrics, /health/ready) on http://%s:%d", ops_host, ops_port);
    event_base_dispatch(m.base);
    ev_info("all workers stopped");
    pidfile(cfg, 0);
    rc = 0;
done:
    for (int i = 0; i < 4; i++)
        if (sev[i])
            event_free(sev[i]);
    if (probe)
        event_free(probe);
    if (m.respawn)
        event_free(m.respawn);
    if (m.reloading)
        event_free(m.reloading);
    for (int i = 0; i < m.listeners; i++)
        if (m.listen_fds[i] >= 0)
            close(m.listen_fds[i]);
    if (m.ops_fd >= 0)
        close(m.ops_fd);
    if (m.base)
        event_base_free(m.base);
    ev_metrics_destroy(m.metrics);
    return rc;
}

int ev_check_scripts(const ev_config_t *cfg, char *err, size_t errlen)
{
    int pipefd[2];
    if (pipe(pipefd) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0) { /* a throwaway process: loading scripts leaves no trace here */
        close(pipefd[0]);
        /* a script that never returns at load ends the check, not the master */
        signal(SIGALRM, SIG_DFL);
        alarm(SCRIPT_CHECK_TIMEOUT_S);
        ev_runtime_t rt = {.cfg = cfg, .worker_slot = -1};
        rt.base = event_base_new();
        lua_State *L = rt.base ? ev_runtime_new(&rt) : NULL;
        char msg[2048] = "out of memory";
        int ok = L && ev_runtime_boot(L, msg, sizeof msg) == 0;
        if (!ok) {
            ssize_t ignored = write(pipefd[1], msg, strlen(msg));
            (void)ignored;
        }
        _exit(ok ? 0 : 1);
    }
    close(pipefd[1]);
    if (pid < 0) {
        close(pipefd[0]);
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    size_t got = 0;
    ssize_t n;
    while (got < errlen - 1 && (n = read(pipefd[0], err + got, errlen - 1 - got)) > 0)
        got += (size_t)n;
    err[got] = '\0';
    close(pipefd[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
        snprintf(err, errlen, "the scripts did not finish loading within %d s",
                 SCRIPT_CHECK_TIMEOUT_S);
    else if (!got)
        snprintf(err, errlen, "script check process failed");
    return -1;
}
