#define _GNU_SOURCE /* pipe2, gettid */
/* lua_crypto.c - evently.crypto: passwords, tokens, digests (libsodium).
 *
 *   crypto.hash_password(pw) -> hash | nil, err     [yields] argon2id (libsodium's
 *                                                    interactive limits)
 *   crypto.verify_password(hash, pw) -> true | false | nil, err        [yields]
 *       err "busy": hash_queue_max jobs already wait (answered at once);
 *       "timeout": not done within hash_timeout_ms, queue wait included.
 *       Callers must not read nil as a wrong password: the password was
 *       never checked (answer 503, never 401).
 *   crypto.random_token(nbytes?) -> string          URL-safe base64, 32 bytes default
 *   crypto.sha256(s) -> hex string
 *   crypto.equal(a, b) -> boolean                   constant time
 *   crypto.sign(s) -> hex | nil, err                HMAC-SHA-256 of s under the instance
 *                                                    secret (secret.h), which Lua never sees
 *   crypto.verify(s, mac) -> boolean                constant time; false when no secret
 * Argon2id costs ~50-100 ms of CPU and 64 MiB on purpose, so it never runs on
 * the event loop: jobs go to one hashing thread per worker and come back
 * through a pipe the loop watches; the calling coroutine waits meanwhile. A
 * request aborted mid-hash leaves the job to finish and be dropped.
 * The queue is bounded: one thread does ~10-20 hashes a second, so an
 * unbounded queue under a flood of logins makes every login wait seconds
 * (and time out) instead of refusing the excess at once. */
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "co.h"
#include "log.h"
#include "runtime.h"
#include "secret.h"

typedef enum { JOB_HASH, JOB_VERIFY } job_kind_t;
typedef enum { J_QUEUED, J_RUNNING, J_DONE } job_state_t;

typedef struct job {
    job_kind_t kind;
    job_state_t state;
    int cancelled;
    ev_co_t *co;
    char *password;
    char hash[crypto_pwhash_STRBYTES];
    int ok;
    struct job *next;
} job_t;

/* One per process: the hashing thread and its queue. */
static struct {
    int started;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job_t *head, *tail;
    int queued; /* jobs in head..tail, not yet taken by the thread */
    int pipe[2];
    struct event *ev;
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .pipe = {-1, -1}};

static void job_free(job_t *j)
{
    if (j->password) {
        sodium_memzero(j->password, strlen(j->password));
        free(j->password);
    }
    free(j);
}

/* A login waits on this thread while the loop may be busy answering a flood
 * (of 429s, say): the thread runs a little ahead of the loop, so a real user
 * still gets the CPU for the hash. The work it can be given is bounded (the
 * queue, the rate limits), so the priority cannot be turned against us.
 * Without CAP_SYS_NICE the call fails and the thread stays as it was. */
#define HASHER_NICE (-5)

static void *hasher(void *arg)
{
    (void)arg;
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), HASHER_NICE) != 0)
        ev_debug("crypto: hashing thread keeps its priority: %s", strerror(errno));
    for (;;) {
        pthread_mutex_lock(&pool.mu);
        while (!pool.head)
            pthread_cond_wait(&pool.cv, &pool.mu);
        job_t *j = pool.head;
        pool.head = j->next;
        if (!pool.head)
            pool.tail = NULL;
        pool.queued--;
        j->state = J_RUNNING;
        pthread_mutex_unlock(&pool.mu);
        size_t n = strlen(j->password);
        if (j->kind == JOB_HASH)
            j->ok = crypto_pwhash_str(j->hash, j->password, n, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                                      crypto_pwhash_MEMLIMIT_INTERACTIVE) == 0;
        else
            j->ok = crypto_pwhash_str_verify(j->hash, j->password, n) == 0;
        pthread_mutex_lock(&pool.mu);
        j->state = J_DONE;
        pthread_mutex_unlock(&pool.mu);
        ssize_t w;
        do
            w = write(pool.pipe[1], &j, sizeof j);
        while (w < 0 && errno == EINTR);
    }
    return NULL;
}

/* The loop side: finished jobs arrive as pointers on the pipe. */
static void on_done(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    (void)arg;
    job_t *j;
    while (read(fd, &j, sizeof j) == (ssize_t)sizeof j) {
        if (j->cancelled)
            job_free(j); /* its request went away while we hashed */
        else
            ev_co_wake(j->co, EV_WAKE_DONE);
    }
}

static int start_pool(lua_State *L)
{
    if (pool.started)
        return 0;
    if (sodium_init() < 0 || pipe2(pool.pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        return -1;
    pool.ev = event_new(ev_runtime_get(L)->base, pool.pipe[0], EV_READ | EV_PERSIST, on_done, NULL);
    if (!pool.ev || event_add(pool.ev, NULL) != 0)
        return -1;
    /* the pipe write end must block: a job is never dropped on a full pipe */
    fcntl(pool.pipe[1], F_SETFL, fcntl(pool.pipe[1], F_GETFL) & ~O_NONBLOCK);
    if (pthread_create(&pool.thread, NULL, hasher, NULL) != 0)
        return -1;
    pthread_detach(pool.thread);
    pool.started = 1;
    return 0;
}

static int job_push(lua_State *L, void *data, ev_wake_t why)
{
    job_t *j = data;
    if (why == EV_WAKE_TIMEOUT) {
        lua_pushnil(L);
        lua_pushliteral(L, "timeout");
        return 2;
    }
    if (j->kind == JOB_VERIFY) {
        lua_pushboolean(L, j->ok);
        return 1;
    }
    if (!j->ok) {
        lua_pushnil(L);
        lua_pushliteral(L, "error: cannot hash (out of memory?)");
        return 2;
    }
    lua_pushstring(L, j->hash);
    return 1;
}

static void job_cancel(void *data)
{
    job_t *j = data;
    pthread_mutex_lock(&pool.mu);
    j->cancelled = 1;
    if (j->state == J_QUEUED) { /* not started: take it out of the queue */
        job_t **pp = &pool.head, *prev = NULL;
        for (; *pp && *pp != j; prev = *pp, pp = &(*pp)->next)
            ;
        if (*pp) {
            *pp = j->next;
            if (pool.tail == j)
                pool.tail = prev;
            pool.queued--;
        }
        j->state = J_DONE;
        j->co = NULL;
        j->cancelled = 2; /* ours to free */
    }
    pthread_mutex_unlock(&pool.mu);
}

static void job_release(void *data)
{
    job_t *j = data;
    /* woken normally, or cancelled before the thread took it: free now;
     * cancelled while running: on_done frees it when it comes back */
    if (!j->cancelled || j->cancelled == 2)
        job_free(j);
}

static const ev_wait_ops_t job_ops = {"crypto.pwhash", job_push, job_cancel, job_release};

/* Appends j unless the queue is full; 0 or -1 (full: j stays the caller's). */
static int enqueue(job_t *j, int max_queued)
{
    pthread_mutex_lock(&pool.mu);
    int full = pool.queued >= max_queued;
    if (!full) {
        if (pool.tail)
            pool.tail->next = j;
        else
            pool.head = j;
        pool.tail = j;
        pool.queued++;
        pthread_cond_signal(&pool.cv);
    }
    pthread_mutex_unlock(&pool.mu);
    return full ? -1 : 0;
}

static int submit(lua_State *L, job_kind_t kind, const char *hash, const char *password)
{
    ev_co_t *co = ev_co_current(L);
    if (!co)
        return luaL_error(L, "crypto: must be called from a request, timer or script coroutine");
    if (start_pool(L) != 0)
        return luaL_error(L, "crypto: cannot start the hashing thread");
    ev_runtime_t *rt = ev_runtime_get(L);
    const ev_config_t *cfg = rt->cfg;
    job_t *j = calloc(1, sizeof *j);
    if (!j || !(j->password = strdup(password))) {
        free(j);
        return luaL_error(L, "out of memory");
    }
    j->kind = kind;
    j->co = co;
    if (hash)
        memcpy(j->hash, hash, strlen(hash) + 1);
    if (enqueue(j, cfg->hash_queue_max) != 0) {
        job_free(j);
        if (rt->metrics)
            ev_metrics_count(rt->metrics, "evently_password_jobs_refused_total", 1);
        luaL_pushfail(L);
        lua_pushliteral(L, "busy");
        return 2;
    }
    return ev_co_wait(L, cfg->hash_timeout_ms / 1000.0, &job_ops, j);
}

static int c_hash_password(lua_State *L)
{
    size_t n;
    const char *pw = luaL_checklstring(L, 1, &n);
    luaL_argcheck(L, n <= 4096 && strlen(pw) == n, 1,
                  "password must be a string without NUL, at most 4096 bytes");
    return submit(L, JOB_HASH, NULL, pw);
}

static int c_verify_password(lua_State *L)
{
    size_t hn, n;
    const char *hash = luaL_checklstring(L, 1, &hn);
    const char *pw = luaL_checklstring(L, 2, &n);
    if (hn >= crypto_pwhash_STRBYTES || n > 4096 || strlen(pw) != n) {
        lua_pushboolean(L, 0); /* not a hash we made, or an absurd password */
        return 1;
    }
    return submit(L, JOB_VERIFY, hash, pw);
}

static int c_random_token(lua_State *L)
{
    lua_Integer n = luaL_optinteger(L, 1, 32);
    luaL_argcheck(L, n >= 8 && n <= 256, 1, "between 8 and 256 bytes");
    unsigned char bin[256];
    char out[400];
    randombytes_buf(bin, (size_t)n);
    sodium_bin2base64(out, sizeof out, bin, (size_t)n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    lua_pushstring(L, out);
    return 1;
}

static int c_sha256(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    unsigned char d[crypto_hash_sha256_BYTES];
    char hex[crypto_hash_sha256_BYTES * 2 + 1];
    crypto_hash_sha256(d, (const unsigned char *)s, n);
    sodium_bin2hex(hex, sizeof hex, d, sizeof d);
    lua_pushstring(L, hex);
    return 1;
}

static int c_equal(lua_State *L)
{
    size_t an, bn;
    const char *a = luaL_checklstring(L, 1, &an);
    const char *b = luaL_checklstring(L, 2, &bn);
    lua_pushboolean(L, an == bn && sodium_memcmp(a, b, an) == 0);
    return 1;
}

/* The instance secret's key, loaded by this process's first signature. */
static unsigned char sign_key[EV_SECRET_KEY_BYTES];
static int sign_state; /* 0: not loaded, 1: loaded, -1: failed (sign_err says why) */
static char sign_err[300];

static int have_key(lua_State *L)
{
    if (sign_state == 0) {
        ev_runtime_t *rt = ev_runtime_get(L);
        const ev_config_t *cfg = rt ? rt->cfg : NULL;
        if (!cfg)
            snprintf(sign_err, sizeof sign_err, "secret: no configuration");
        sign_state = cfg && ev_secret_load(cfg->secret_key, cfg->home, sign_key, sign_err,
                                           sizeof sign_err) == 0
                         ? 1
                         : -1;
        if (sign_state < 0)
            ev_error("%s: nothing is signed, so nothing is cached in Redis", sign_err);
    }
    return sign_state > 0;
}

static void mac_of(const char *s, size_t n, char hex[crypto_auth_hmacsha256_BYTES * 2 + 1])
{
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256(mac, (const unsigned char *)s, n, sign_key);
    sodium_bin2hex(hex, crypto_auth_hmacsha256_BYTES * 2 + 1, mac, sizeof mac);
}

static int c_sign(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    if (!have_key(L)) {
        luaL_pushfail(L);
        lua_pushstring(L, sign_err);
        return 2;
    }
    char hex[crypto_auth_hmacsha256_BYTES * 2 + 1];
    mac_of(s, n, hex);
    lua_pushstring(L, hex);
    return 1;
}

static int c_verify(lua_State *L)
{
    size_t n, mn;
    const char *s = luaL_checklstring(L, 1, &n);
    const char *mac = luaL_checklstring(L, 2, &mn);
    char hex[crypto_auth_hmacsha256_BYTES * 2 + 1];
    int ok = have_key(L) && mn == sizeof hex - 1;
    if (ok) {
        mac_of(s, n, hex);
        ok = sodium_memcmp(hex, mac, mn) == 0;
    }
    lua_pushboolean(L, ok);
    return 1;
}

static const luaL_Reg crypto_funcs[] = {
    {"sign", c_sign},
    {"verify", c_verify},
    {"hash_password", c_hash_password},
    {"verify_password", c_verify_password},
    {"random_token", c_random_token},
    {"sha256", c_sha256},
    {"equal", c_equal},
    {NULL, NULL},
};

int luaopen_evently_crypto(lua_State *L)
{
    if (sodium_init() < 0)
        return luaL_error(L, "libsodium failed to initialise");
    luaL_newlib(L, crypto_funcs);
    return 1;
}
