/* config.h - the process configuration.
 *
 * Precedence: built-in defaults < Lua config file (--config, a file that
 * returns a table) < EVENTLY_* environment variables < command-line flags.
 * Every value is validated once at start; a bad value names itself. */
#ifndef EV_CONFIG_H
#define EV_CONFIG_H

#include <stddef.h>

#define EV_MAX_PLUGINS     32
#define EV_MAX_KAFKA_PROPS 32

typedef struct {
    char *home;            /* EVENTLY_HOME: state dir, default ./var */
    char *host;            /* EVENTLY_HOST: bind address, default 127.0.0.1 */
    int port;              /* EVENTLY_PORT, default 8080 */
    int workers;           /* EVENTLY_WORKERS, default: number of cores */
    char *scripts;         /* EVENTLY_SCRIPTS: app dir holding app.lua, default ./scripts */
    char *plugins_dir;     /* EVENTLY_PLUGINS_DIR: default ./plugins */
    char *migrations;      /* EVENTLY_MIGRATIONS: default ./migrations */
    char *database_url;    /* EVENTLY_DATABASE_URL; NULL: embedded */
    char *replica_url;     /* EVENTLY_REPLICA_URL; NULL: primary */
    char *redis_url;       /* EVENTLY_REDIS_URL; NULL: embedded */
    char *kafka_brokers;   /* EVENTLY_KAFKA_BROKERS; NULL: in-process */
    char *smtp_url;        /* EVENTLY_SMTP_URL: smtp[s]://[user:pass@]host[:port]; NULL: no mail */
    char *mail_from;       /* EVENTLY_MAIL_FROM: default sender, "Name <addr>" or "addr" */
    char *secret_key;      /* EVENTLY_SECRET_KEY: signs what is kept in Redis (secret.h); NULL:
                          * $EVENTLY_HOME/secret, made on first use */
    char *ops_listen;      /* EVENTLY_OPS_LISTEN: "host:port" serving /metrics and the detailed
                       * /health/ready; the public listener then has no /metrics and a bare
                       * readiness answer. NULL: both on the public listener */
    char *log_level;       /* EVENTLY_LOG_LEVEL: debug|info|warn|error */
    char *access_log;      /* EVENTLY_ACCESS_LOG: "stderr" (default), "off" or a file path */
    size_t max_body;       /* EVENTLY_MAX_BODY bytes, default 1 MiB */
    size_t max_header;     /* EVENTLY_MAX_HEADER bytes, default 16 KiB */
    int max_connections;   /* EVENTLY_MAX_CONNECTIONS per worker; 0 (default): 4096, or what
                          * the descriptor limit allows (fd_limit.c) */
    int idle_timeout;      /* EVENTLY_IDLE_TIMEOUT seconds (keep-alive), default 60 */
    int read_timeout;      /* EVENTLY_READ_TIMEOUT seconds (request must arrive), default 15 */
    int handler_timeout;   /* EVENTLY_HANDLER_TIMEOUT seconds per request, default 30 */
    int worker_watchdog;   /* EVENTLY_WORKER_WATCHDOG seconds without a heartbeat before the
                          * master kills and replaces a worker, default 20; 0: off */
    int reload_timeout;    /* EVENTLY_RELOAD_TIMEOUT seconds for new workers to become ready
                          * before a reload is abandoned, default 60 */
    int script_slice_ms;   /* EVENTLY_SCRIPT_SLICE_MS a script may run without yielding, default
                          * 1000; over it the coroutine is stopped (slice.c); 0: no limit */
    size_t lua_memory_max; /* EVENTLY_LUA_MEMORY_MAX bytes of Lua heap per worker, default 1 GiB */
    int drain_timeout;     /* EVENTLY_DRAIN_TIMEOUT seconds for graceful stop, default 30 */
    int ws_max_per_worker; /* EVENTLY_WS_MAX_PER_WORKER open WebSockets, default 10000 */
    int ws_max_per_user;   /* EVENTLY_WS_MAX_PER_USER per worker, default 8 */
    int ws_max_lifetime; /* EVENTLY_WS_MAX_LIFETIME seconds a socket may stay open, default 86400 */
    int db_pool_max;     /* EVENTLY_DB_POOL_MAX per worker, default 10 */
    int db_pool_min;     /* EVENTLY_DB_POOL_MIN per worker, kept open, default 2 */
    int db_acquire_timeout_ms;   /* EVENTLY_DB_ACQUIRE_TIMEOUT_MS, default 5000 */
    int db_statement_timeout_ms; /* EVENTLY_DB_STATEMENT_TIMEOUT_MS, default 30000 */
    int hash_queue_max;  /* EVENTLY_HASH_QUEUE_MAX password jobs waiting per worker, default 32;
                          * beyond it hash/verify answer "busy" at once */
    int hash_timeout_ms; /* EVENTLY_HASH_TIMEOUT_MS a password job may take, queue included,
                          * default 5000; then "timeout" */
    /* EVENTLY_KAFKA_<NAME>=value (any but BROKERS): librdkafka property <name>
     * lower-cased with '_' as '.' (EVENTLY_KAFKA_SECURITY_PROTOCOL=SASL_SSL is
     * security.protocol), set on every Kafka client after evently's own */
    char *kafka_prop_names[EV_MAX_KAFKA_PROPS];
    char *kafka_prop_values[EV_MAX_KAFKA_PROPS];
    int nkafka_props;
    char *plugins[EV_MAX_PLUGINS]; /* EVENTLY_PLUGINS: comma-separated names */
    int nplugins;
    char *lua_path; /* platform Lua modules (core/lua), EVENTLY_LUA_PATH */
} ev_config_t;

/* Fills defaults. */
void ev_config_defaults(ev_config_t *c);
/* Applies a Lua config file; on error writes a message to err and returns -1. */
int ev_config_load_file(ev_config_t *c, const char *path, char *err, size_t errlen);
/* Applies EVENTLY_* variables; -1 with a message naming the variable on a bad value. */
int ev_config_load_env(ev_config_t *c, char *err, size_t errlen);
/* Sets one key ("port", "workers", ...) from a string, as env and flags do. */
int ev_config_set(ev_config_t *c, const char *key, const char *value, char *err, size_t errlen);
/* "host:port" or "[v6 address]:port" into host and port: 0, or -1. */
int ev_config_host_port(const char *s, char *host, size_t hostlen, int *port);
/* Checks cross-field rules after everything is loaded. */
int ev_config_validate(const ev_config_t *c, char *err, size_t errlen);
void ev_config_free(ev_config_t *c);

#endif
