/* config.c - defaults, Lua config file, environment, validation.
 *
 * Every source funnels into ev_config_set(key, string) so a value is parsed
 * and checked in exactly one place whichever way it arrives. The config file
 * is Lua returning a table: { port = 8080, workers = 2, plugins = {"a"} }. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "redis_url.h"

extern char **environ;

#ifndef EVENTLY_LUA_DIR
#define EVENTLY_LUA_DIR "core/lua"
#endif

typedef enum { T_STR, T_INT, T_SIZE, T_LIST } kind_t;

typedef struct {
    const char *key;
    const char *env;
    kind_t kind;
    size_t off;
    long min, max;
} field_t;

#define F(k, e, t, member, lo, hi)                                                                 \
    {                                                                                              \
        k, e, t, offsetof(ev_config_t, member), lo, hi                                             \
    }
static const field_t fields[] = {
    F("home", "EVENTLY_HOME", T_STR, home, 0, 0),
    F("host", "EVENTLY_HOST", T_STR, host, 0, 0),
    F("port", "EVENTLY_PORT", T_INT, port, 1, 65535),
    F("workers", "EVENTLY_WORKERS", T_INT, workers, 1, 256),
    F("scripts", "EVENTLY_SCRIPTS", T_STR, scripts, 0, 0),
    F("plugins_dir", "EVENTLY_PLUGINS_DIR", T_STR, plugins_dir, 0, 0),
    F("migrations", "EVENTLY_MIGRATIONS", T_STR, migrations, 0, 0),
    F("database_url", "EVENTLY_DATABASE_URL", T_STR, database_url, 0, 0),
    F("replica_url", "EVENTLY_REPLICA_URL", T_STR, replica_url, 0, 0),
    F("redis_url", "EVENTLY_REDIS_URL", T_STR, redis_url, 0, 0),
    F("kafka_brokers", "EVENTLY_KAFKA_BROKERS", T_STR, kafka_brokers, 0, 0),
    F("smtp_url", "EVENTLY_SMTP_URL", T_STR, smtp_url, 0, 0),
    F("secret_key", "EVENTLY_SECRET_KEY", T_STR, secret_key, 0, 0),
    F("ops_listen", "EVENTLY_OPS_LISTEN", T_STR, ops_listen, 0, 0),
    F("mail_from", "EVENTLY_MAIL_FROM", T_STR, mail_from, 0, 0),
    F("log_level", "EVENTLY_LOG_LEVEL", T_STR, log_level, 0, 0),
    F("access_log", "EVENTLY_ACCESS_LOG", T_STR, access_log, 0, 0),
    F("max_body", "EVENTLY_MAX_BODY", T_SIZE, max_body, 0, 1L << 30),
    F("max_header", "EVENTLY_MAX_HEADER", T_SIZE, max_header, 1024, 1L << 20),
    F("max_connections", "EVENTLY_MAX_CONNECTIONS", T_INT, max_connections, 1, 1000000),
    F("idle_timeout", "EVENTLY_IDLE_TIMEOUT", T_INT, idle_timeout, 1, 86400),
    F("read_timeout", "EVENTLY_READ_TIMEOUT", T_INT, read_timeout, 1, 3600),
    F("handler_timeout", "EVENTLY_HANDLER_TIMEOUT", T_INT, handler_timeout, 1, 3600),
    F("worker_watchdog", "EVENTLY_WORKER_WATCHDOG", T_INT, worker_watchdog, 0, 3600),
    F("reload_timeout", "EVENTLY_RELOAD_TIMEOUT", T_INT, reload_timeout, 1, 3600),
    F("script_slice_ms", "EVENTLY_SCRIPT_SLICE_MS", T_INT, script_slice_ms, 0, 3600000),
    F("lua_memory_max", "EVENTLY_LUA_MEMORY_MAX", T_SIZE, lua_memory_max, 16L << 20, 1L << 40),
    F("drain_timeout", "EVENTLY_DRAIN_TIMEOUT", T_INT, drain_timeout, 0, 3600),
    F("ws_max_per_worker", "EVENTLY_WS_MAX_PER_WORKER", T_INT, ws_max_per_worker, 0, 1000000),
    F("ws_max_per_user", "EVENTLY_WS_MAX_PER_USER", T_INT, ws_max_per_user, 1, 100000),
    F("ws_max_lifetime", "EVENTLY_WS_MAX_LIFETIME", T_INT, ws_max_lifetime, 1, 31 * 86400),
    F("db_pool_max", "EVENTLY_DB_POOL_MAX", T_INT, db_pool_max, 1, 1000),
    F("db_pool_min", "EVENTLY_DB_POOL_MIN", T_INT, db_pool_min, 0, 1000),
    F("db_acquire_timeout_ms", "EVENTLY_DB_ACQUIRE_TIMEOUT_MS", T_INT, db_acquire_timeout_ms, 1,
      600000),
    F("db_statement_timeout_ms", "EVENTLY_DB_STATEMENT_TIMEOUT_MS", T_INT, db_statement_timeout_ms,
      1, 3600000),
    F("hash_queue_max", "EVENTLY_HASH_QUEUE_MAX", T_INT, hash_queue_max, 1, 100000),
    F("hash_timeout_ms", "EVENTLY_HASH_TIMEOUT_MS", T_INT, hash_timeout_ms, 1, 600000),
    F("plugins", "EVENTLY_PLUGINS", T_LIST, plugins, 0, 0),
    F("lua_path", "EVENTLY_LUA_PATH", T_STR, lua_path, 0, 0),
};
#undef F

static void set_str(char **slot, const char *v)
{
    free(*slot);
    *slot = v ? strdup(v) : NULL;
}

void ev_config_defaults(ev_config_t *c)
{
    memset(c, 0, sizeof *c);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    set_str(&c->home, "./var");
    set_str(&c->host, "127.0.0.1");
    c->port = 8080;
    c->workers = cores > 0 ? (int)cores : 1;
    set_str(&c->scripts, "./scripts");
    set_str(&c->plugins_dir, "./plugins");
    set_str(&c->migrations, "./migrations");
    set_str(&c->log_level, "info");
    set_str(&c->access_log, "stderr");
    set_str(&c->mail_from, "Evently <no-reply@evently.local>");
    c->max_body = 1024 * 1024;
    c->max_header = 16 * 1024;
    c->max_connections = 0; /* auto: fd_limit.c */
    c->ws_max_per_worker = 10000;
    c->ws_max_per_user = 8;
    c->ws_max_lifetime = 86400;
    c->idle_timeout = 60;
    c->read_timeout = 15;
    c->handler_timeout = 30;
    c->script_slice_ms = 1000;
    c->worker_watchdog = 20;
    c->reload_timeout = 60;
    c->lua_memory_max = 1024L * 1024 * 1024;
    c->drain_timeout = 30;
    c->db_pool_max = 10;
    c->db_pool_min = 2;
    c->db_acquire_timeout_ms = 5000;
    c->db_statement_timeout_ms = 30000;
    c->hash_queue_max = 32;
    c->hash_timeout_ms = 5000;
    set_str(&c->lua_path, EVENTLY_LUA_DIR);
}

static const field_t *find_field(const char *key)
{
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (strcmp(fields[i].key, key) == 0)
            return &fields[i];
    return NULL;
}

/* Accepts "1048576", "512k", "1m", "1g" (binary units). */
static int parse_size(const char *v, long long *out)
{
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || end == v || n < 0)
        return -1;
    long long mul = 1;
    switch (tolower((unsigned char)*end)) {
    case '\0': break;
    case 'k':
        mul = 1024;
        end++;
        break;
    case 'm':
        mul = 1024 * 1024;
        end++;
        break;
    case 'g':
        mul = 1024LL * 1024 * 1024;
        end++;
        break;
    default: return -1;
    }
    if ((tolower((unsigned char)*end) == 'b' && end[1] == '\0'))
        end++;
    if (*end != '\0' || n > LLONG_MAX / mul)
        return -1;
    *out = n * mul;
    return 0;
}

static int set_list(ev_config_t *c, const char *v, char *err, size_t errlen)
{
    for (int i = 0; i < c->nplugins; i++)
        free(c->plugins[i]);
    c->nplugins = 0;
    char *copy = strdup(v), *save = NULL;
    for (char *tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        if (c->nplugins == EV_MAX_PLUGINS) {
            snprintf(err, errlen, "plugins: at most %d", EV_MAX_PLUGINS);
            free(copy);
            return -1;
        }
        c->plugins[c->nplugins++] = strdup(tok);
    }
    free(copy);
    return 0;
}

int ev_config_set(ev_config_t *c, const char *key, const char *value, char *err, size_t errlen)
{
    const field_t *f = find_field(key);
    if (!f) {
        snprintf(err, errlen, "unknown setting '%s'", key);
        return -1;
    }
    void *slot = (char *)c + f->off;
    long long n;
    switch (f->kind) {
    case T_STR: set_str(slot, *value ? value : NULL); return 0;
    case T_LIST: return set_list(c, value, err, errlen);
    case T_INT:
    case T_SIZE:
        if (parse_size(value, &n) != 0 || (f->kind == T_INT && strpbrk(value, "kKmMgG")) ||
            n < f->min || n > f->max) {
            snprintf(err, errlen, "%s (%s): bad value '%s', expected %s between %ld and %ld",
                     f->key, f->env, value, f->kind == T_INT ? "an integer" : "a size", f->min,
                     f->max);
            return -1;
        }
        if (f->kind == T_INT)
            *(int *)slot = (int)n;
        else
            *(size_t *)slot = (size_t)n;
        return 0;
    }
    return -1;
}

/* EVENTLY_KAFKA_SASL_USERNAME=v -> sasl.username = v (see config.h). */
static int load_kafka_props(ev_config_t *c, char *err, size_t errlen)
{
    static const char prefix[] = "EVENTLY_KAFKA_";
    for (char **e = environ; *e; e++) {
        const char *name = *e + sizeof prefix - 1, *eq = strchr(*e, '=');
        if (strncmp(*e, prefix, sizeof prefix - 1) != 0 || !eq || eq == name ||
            strncmp(name, "BROKERS=", 8) == 0)
            continue;
        if (c->nkafka_props == EV_MAX_KAFKA_PROPS) {
            snprintf(err, errlen, "at most %d EVENTLY_KAFKA_* properties", EV_MAX_KAFKA_PROPS);
            return -1;
        }
        char *prop = strndup(name, (size_t)(eq - name)), *value = strdup(eq + 1);
        if (!prop || !value) {
            free(prop);
            free(value);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        for (char *p = prop; *p; p++)
            *p = *p == '_' ? '.' : (char)tolower((unsigned char)*p);
        c->kafka_prop_names[c->nkafka_props] = prop;
        c->kafka_prop_values[c->nkafka_props++] = value;
    }
    return 0;
}

int ev_config_load_env(ev_config_t *c, char *err, size_t errlen)
{
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const char *v = getenv(fields[i].env);
        if (v && ev_config_set(c, fields[i].key, v, err, errlen) != 0)
            return -1;
    }
    return load_kafka_props(c, err, errlen);
}

/* Turns the config-file value on top of the stack into the string form
 * ev_config_set takes (lists become "a,b"). */
static int value_string(lua_State *L, const char *key, char *out, size_t cap, char *err,
                        size_t errlen)
{
    int t = lua_type(L, -1);
    out[0] = '\0';
    if (t == LUA_TTABLE) {
        size_t used = 0;
        lua_Integer n = luaL_len(L, -1);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_geti(L, -1, i);
            const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            int w = s ? snprintf(out + used, cap - used, "%s%s", i > 1 ? "," : "", s) : -1;
            lua_pop(L, 1);
            if (w < 0 || (size_t)w >= cap - used) {
                snprintf(err, errlen, "%s: list items must be short strings", key);
                return -1;
            }
            used += (size_t)w;
        }
        return 0;
    }
    if (t == LUA_TBOOLEAN) {
        snprintf(out, cap, "%s", lua_toboolean(L, -1) ? "1" : "0");
        return 0;
    }
    if ((t == LUA_TNUMBER && !lua_isinteger(L, -1)) || (t != LUA_TSTRING && t != LUA_TNUMBER)) {
        snprintf(err, errlen, "%s: unsupported value (%s)", key, lua_typename(L, t));
        return -1;
    }
    size_t len;
    const char *s = lua_tolstring(L, -1, &len); /* number: converted copy on the stack */
    if (len >= cap) {
        snprintf(err, errlen, "%s: value too long", key);
        return -1;
    }
    memcpy(out, s, len + 1);
    return 0;
}

typedef struct {
    ev_config_t *c;
    const char *path;
} load_args_t;

/* Applies the table on top of the stack; runs protected, because a config
 * file may hand us tables whose metamethods raise. */
static int apply_table(lua_State *L)
{
    load_args_t *a = lua_touserdata(L, 1);
    lua_pushnil(L);
    while (lua_next(L, 2)) { /* args, table, key, value */
        char value[4096], verr[300];
        if (lua_type(L, -2) != LUA_TSTRING)
            return luaL_error(L, "keys must be strings");
        lua_pushvalue(L, -1);
        int bad = value_string(L, lua_tostring(L, -3), value, sizeof value, verr, sizeof verr);
        lua_pop(L, 2); /* value copy, value */
        if (bad || ev_config_set(a->c, lua_tostring(L, -1), value, verr, sizeof verr) != 0)
            return luaL_error(L, "%s", verr);
    }
    return 0;
}

int ev_config_load_file(ev_config_t *c, const char *path, char *err, size_t errlen)
{
    lua_State *L = luaL_newstate();
    int rc = -1;
    if (!L) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    luaL_openlibs(L);
    if (luaL_dofile(L, path) != LUA_OK) {
        snprintf(err, errlen, "config %s: %s", path, lua_tostring(L, -1));
        goto done;
    }
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen, "config %s: must return a table", path);
        goto done;
    }
    load_args_t a = {c, path};
    lua_pushcfunction(L, apply_table);
    lua_pushlightuserdata(L, &a);
    lua_pushvalue(L, -3);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "config %s: %s", path, lua_tostring(L, -1));
        goto done;
    }
    rc = 0;
done:
    lua_close(L);
    return rc;
}

/* The URL scheme and the sender's shape only; evently.mail checks the rest
 * of an address the same way for every message. */
static int validate_mail(const ev_config_t *c, char *err, size_t errlen)
{
    if (c->smtp_url && *c->smtp_url && strncmp(c->smtp_url, "smtp://", 7) != 0 &&
        strncmp(c->smtp_url, "smtps://", 8) != 0) {
        /* not repeated: a URL may carry a password, and this goes to the log */
        snprintf(err, errlen,
                 "smtp_url (EVENTLY_SMTP_URL): bad value, expected smtp://host:port or "
                 "smtps://host:port");
        return -1;
    }
    const char *f = c->mail_from;
    if (!f || !strchr(f, '@') || strpbrk(f, "\r\n")) {
        snprintf(err, errlen,
                 "mail_from (EVENTLY_MAIL_FROM): bad value '%s', expected an address or \"Name "
                 "<address>\"",
                 f ? f : "");
        return -1;
    }
    return 0;
}

int ev_config_host_port(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return -1;
    const char *h = s;
    size_t n = (size_t)(colon - s);
    if (*h == '[') { /* [::1]:9100 */
        if (n < 3 || h[n - 1] != ']')
            return -1;
        h++;
        n -= 2;
    }
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (n >= hostlen || end == colon + 1 || *end || p < 1 || p > 65535)
        return -1;
    memcpy(host, h, n);
    host[n] = '\0';
    *port = (int)p;
    return 0;
}

int ev_config_validate(const ev_config_t *c, char *err, size_t errlen)
{
    if (!c->home || !*c->home) {
        snprintf(err, errlen, "home (EVENTLY_HOME) must not be empty");
        return -1;
    }
    static const char *levels[] = {"debug", "info", "warn", "error"};
    int ok = 0;
    for (int i = 0; i < 4; i++)
        ok |= c->log_level && strcmp(c->log_level, levels[i]) == 0;
    if (!ok) {
        snprintf(
            err, errlen,
            "log_level (EVENTLY_LOG_LEVEL): bad value '%s', expected debug, info, warn or error",
            c->log_level ? c->log_level : "");
        return -1;
    }
    char why[160];
    ev_redis_url_t u;
    if (c->redis_url && ev_redis_url_parse(c->redis_url, &u, why, sizeof why) != 0) {
        snprintf(err, errlen, "redis_url (EVENTLY_REDIS_URL): %s", why); /* never the URL itself */
        return -1;
    }
    if (c->redis_url)
        ev_redis_url_free(&u);
    char host[256];
    int port;
    if (c->ops_listen && ev_config_host_port(c->ops_listen, host, sizeof host, &port) != 0) {
        snprintf(err, errlen, "ops_listen (EVENTLY_OPS_LISTEN): bad value '%s', expected host:port",
                 c->ops_listen);
        return -1;
    }
    if (c->ops_listen && port == c->port) {
        snprintf(err, errlen, "ops_listen (EVENTLY_OPS_LISTEN): port %d is the public port", port);
        return -1;
    }
    return validate_mail(c, err, errlen);
}

void ev_config_free(ev_config_t *c)
{
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (fields[i].kind == T_STR)
            set_str((char **)((char *)c + fields[i].off), NULL);
    for (int i = 0; i < c->nplugins; i++)
        free(c->plugins[i]);
    c->nplugins = 0;
    for (int i = 0; i < c->nkafka_props; i++) {
        free(c->kafka_prop_names[i]);
        free(c->kafka_prop_values[i]);
    }
    c->nkafka_props = 0;
}
