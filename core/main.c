/* main.c - the evently command line.
 *
 *   evently serve [--port P] [--workers N] [--host H] [--config F]
 *   evently migrate [--status]      evently check
 *   evently lua FILE [args]         evently test [paths]
 *   evently user create [--admin] --email E [--password P|-] [--name N]
 *   evently dead-letters list|retry|drop [--group G] [ID...]
 *   evently version | help
 * Every command reads the configuration the same way (config.h). Commands
 * that need Postgres or Redis and have no URL start the embedded ones and
 * stop what they started on the way out. Usage errors exit 2. */
#include <errno.h>
#include <event2/event.h>
#include <lauxlib.h>
#include <libpq-fe.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "fd_limit.h"
#include "embedded.h"
#include "log.h"
#include "master.h"
#include "migrate.h"
#include "kafka.h"
#include "runtime.h"
#include "secret.h"

#ifndef EVENTLY_BUILD_TYPE
#define EVENTLY_BUILD_TYPE "unknown"
#endif
#ifndef EVENTLY_VERSION
#define EVENTLY_VERSION "0.1.0"
#endif

static const char usage[] =
    "usage: evently <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve [--port P] [--workers N] [--host H]   run the HTTP server (master + workers)\n"
    "  migrate [--status]                          apply (or list) migrations\n"
    "  check                                       load every script and plugin, then exit\n"
    "  lua FILE [args]                             run a Lua file with the platform API\n"
    "  test [paths]                                run busted specs inside the runtime\n"
    "  user create [--admin] --email E [--password P|-] [--name N]\n"
    "  dead-letters list|retry|drop [--group G] [ID...]   what consumers gave up on\n"
    "  version                                     print the version\n"
    "  help                                        this text\n"
    "\n"
    "every command takes --config FILE (a Lua file returning a table); EVENTLY_* variables\n"
    "override it, and flags override both. See README.md for the settings.\n";

typedef struct {
    ev_config_t cfg;
    ev_embedded_t emb;
    int have_emb;
} app_t;

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "evently: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see 'evently help')\n");
    return 2;
}

/* Parses "--name value" / "--name=value" pairs of the allowed names; other
 * words are left in positional order in rest. Returns 0 or the exit code 2. */
typedef struct {
    const char *name;  /* without "--" */
    int is_flag;       /* takes no value */
    const char *value; /* out */
} opt_t;

static int parse_opts(int argc, char **argv, opt_t *opts, size_t nopts, char **rest, int *nrest)
{
    *nrest = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || strcmp(a, "--") == 0) {
            rest[(*nrest)++] = argv[i];
            continue;
        }
        const char *eq = strchr(a + 2, '=');
        size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        opt_t *o = NULL;
        for (size_t k = 0; k < nopts; k++)
            if (strlen(opts[k].name) == len && strncmp(opts[k].name, a + 2, len) == 0)
                o = &opts[k];
        if (!o)
            return usage_error("unknown option '%s'", a);
        if (o->is_flag) {
            if (eq)
                return usage_error("option '%s' takes no value", a);
            o->value = "1";
        } else if (eq) {
            o->value = eq + 1;
        } else if (i + 1 < argc) {
            o->value = argv[++i];
        } else {
            return usage_error("option '%s' needs a value", a);
        }
    }
    return 0;
}

/* defaults < config file < environment < flags */
static int load_config(app_t *app, const char *file, const char *const *flags)
{
    char err[1024];
    ev_config_defaults(&app->cfg);
    if (!file)
        file = getenv("EVENTLY_CONFIG");
    if (file && ev_config_load_file(&app->cfg, file, err, sizeof err) != 0)
        goto bad;
    if (ev_config_load_env(&app->cfg, err, sizeof err) != 0)
        goto bad;
    for (int i = 0; flags && flags[i]; i += 2)
        if (flags[i + 1] && ev_config_set(&app->cfg, flags[i], flags[i + 1], err, sizeof err) != 0)
            goto bad;
    if (ev_config_validate(&app->cfg, err, sizeof err) != 0)
        goto bad;
    ev_log_level_t level;
    if (ev_log_parse_level(app->cfg.log_level, &level) == 0)
        ev_log_set_level(level);
    return 0;
bad:
    fprintf(stderr, "evently: configuration: %s\n", err);
    ev_config_free(&app->cfg);
    return -1;
}

/* Starts the embedded Postgres/Redis for whatever has no URL. */
static int need_services(app_t *app)
{
    int want_pg = app->cfg.database_url == NULL, want_redis = app->cfg.redis_url == NULL;
    if (!want_pg && !want_redis)
        return 0;
    char err[1024];
    if (ev_embedded_start(&app->emb, app->cfg.home, want_pg, want_redis, err, sizeof err) != 0) {
        ev_error("embedded services: %s", err);
        return -1;
    }
    app->have_emb = 1;
    if (want_pg)
        app->cfg.database_url = strdup(app->emb.database_url);
    if (want_redis)
        app->cfg.redis_url = strdup(app->emb.redis_url);
    return 0;
}

static void finish(app_t *app)
{
    if (app->have_emb)
        ev_embedded_stop(&app->emb);
    app->have_emb = 0;
    ev_config_free(&app->cfg);
}

static int migrate_now(app_t *app, int status_only)
{
    char err[2048];
    int rc =
        status_only
            ? ev_migrate_status(app->cfg.database_url, app->cfg.migrations, stdout, err, sizeof err)
            : ev_migrate_up(app->cfg.database_url, app->cfg.migrations, stderr, err, sizeof err);
    if (rc < 0) {
        ev_error("migrate: %s", err);
        return -1;
    }
    return 0;
}

/* The embedded default is a demo: run the app's scripts/seed/demo.sql, which
 * knows the app's schema and inserts only what is missing. Blocking libpq:
 * before the workers start. */
static void seed_demo(const app_t *app)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/seed/demo.sql", app->cfg.scripts);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    static char sql[65536];
    size_t n = fread(sql, 1, sizeof sql - 1, f);
    fclose(f);
    sql[n] = '\0';
    PGconn *db = PQconnectdb(app->cfg.database_url);
    PGresult *r = NULL;
    if (PQstatus(db) != CONNECTION_OK)
        goto done;
    r = PQexec(db, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        ev_warn("demo seed %s not loaded: %s", path, PQresultErrorMessage(r));
    else if (strcmp(PQcmdTuples(r), "0") != 0 && *PQcmdTuples(r))
        ev_info("loaded the demo seed %s (%s rows)", path, PQcmdTuples(r));
done:
    PQclear(r);
    PQfinish(db);
}

static int cmd_serve(int argc, char **argv)
{
    opt_t o[] = {{"port", 0, 0}, {"workers", 0, 0}, {"host", 0, 0}, {"config", 0, 0}};
    char *rest[64];
    int nrest, rc = 1;
    if (argc > 64 || parse_opts(argc, argv, o, 4, rest, &nrest) != 0)
        return 2;
    if (nrest)
        return usage_error("serve: unexpected argument '%s'", rest[0]);
    const char *flags[] = {"port", o[0].value, "workers", o[1].value, "host", o[2].value, NULL};
    app_t app = {0};
    if (load_config(&app, o[3].value, flags) != 0)
        return 1;
    char err[2048];
    /* A stop signal during start-up waits until the master can handle it, so
     * it still stops the embedded services on the way out (the master
     * unblocks once its handlers are in place). */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGHUP);
    sigprocmask(SIG_BLOCK, &stop, NULL);
    if (ev_fd_limit_fit(&app.cfg, err, sizeof err) != 0) {
        ev_error("configuration: %s", err);
        goto done;
    }
    if (ev_check_scripts(&app.cfg, err, sizeof err) != 0) {
        ev_error("scripts failed to load: %s", err);
        goto done;
    }
    int embedded_db = app.cfg.database_url == NULL;
    if (need_services(&app) != 0 || migrate_now(&app, 0) != 0)
        goto done;
    /* what every worker would find wrong later, refused now: the secret
     * (each worker loads it at its first signature) and Kafka properties
     * librdkafka refuses (each client is made on first use) */
    unsigned char key[EV_SECRET_KEY_BYTES];
    if (ev_secret_load(app.cfg.secret_key, app.cfg.home, key, err, sizeof err) != 0 ||
        ev_kafka_check_props(&(ev_kafka_props_t){(const char *const *)app.cfg.kafka_prop_names,
                                                 (const char *const *)app.cfg.kafka_prop_values,
                                                 app.cfg.nkafka_props},
                             err, sizeof err) != 0) {
        ev_error("configuration: %s", err);
        goto done;
    }
    if (embedded_db)
        seed_demo(&app);
    rc = ev_master_serve(&app.cfg);
done:
    finish(&app);
    return rc;
}

static int cmd_migrate(int argc, char **argv)
{
    opt_t o[] = {{"status", 1, 0}, {"config", 0, 0}};
    char *rest[64];
    int nrest;
    if (argc > 64 || parse_opts(argc, argv, o, 2, rest, &nrest) != 0)
        return 2;
    if (nrest)
        return usage_error("migrate: unexpected argument '%s'", rest[0]);
    app_t app = {0};
    if (load_config(&app, o[1].value, NULL) != 0)
        return 1;
    int rc = need_services(&app) == 0 && migrate_now(&app, o[0].value != NULL) == 0 ? 0 : 1;
    finish(&app);
    return rc;
}

static int cmd_check(int argc, char **argv)
{
    opt_t o[] = {{"config", 0, 0}};
    char *rest[64];
    int nrest;
    if (argc > 64 || parse_opts(argc, argv, o, 1, rest, &nrest) != 0)
        return 2;
    if (nrest)
        return usage_error("check: unexpected argument '%s'", rest[0]);
    app_t app = {0};
    if (load_config(&app, o[0].value, NULL) != 0)
        return 1;
    char err[2048];
    int rc = ev_check_scripts(&app.cfg, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "evently check: %s\n", err);
    else
        printf("ok: scripts in %s and %d plugin(s) load\n", app.cfg.scripts, app.cfg.nplugins);
    finish(&app);
    return rc == 0 ? 0 : 1;
}

/* Runs the file name with the given arguments in a coroutine on a loop. A
 * chunk that returns nil and a message fails with "evently <cmd>: message". */
static int run_chunk(app_t *app, const char *cmd, const char *name, int argc,
                     const char *const *argv, int load_app)
{
    ev_runtime_t rt = {.cfg = &app->cfg, .worker_slot = -1};
    rt.base = event_base_new();
    lua_State *L = rt.base ? ev_runtime_new(&rt) : NULL;
    int rc = 1;
    if (!L)
        goto done;
    lua_createtable(L, argc, 1); /* arg, as the standalone lua sets it */
    lua_pushstring(L, name);
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setglobal(L, "arg");
    char err[2048];
    if (load_app && ev_runtime_boot(L, err, sizeof err) != 0) {
        fprintf(stderr, "evently: %s\n", err);
        goto done;
    }
    int status = luaL_loadfile(L, name);
    if (status != LUA_OK) {
        fprintf(stderr, "evently: %s\n", lua_tostring(L, -1));
        goto done;
    }
    for (int i = 0; i < argc; i++)
        lua_pushstring(L, argv[i]);
    char why[1024];
    rc = ev_runtime_run(L, argc, why, sizeof why) == 0 ? 0 : 1;
    if (rc != 0 && why[0])
        fprintf(stderr, "evently %s: %s\n", cmd, why);
done:
    if (L)
        lua_close(L);
    ev_runtime_close(&rt);
    if (rt.base)
        event_base_free(rt.base);
    return rc;
}

static int cmd_lua(int argc, char **argv)
{
    if (argc < 1)
        return usage_error("lua: missing %s", "FILE");
    app_t app = {0};
    if (load_config(&app, NULL, NULL) != 0)
        return 1;
    /* the embedded services when no URL is set; no migrations: a script may
     * be pointed at any database (run `evently migrate` for that) */
    int rc = 1;
    if (need_services(&app) == 0)
        rc = run_chunk(&app, "lua", argv[0], argc - 1, (const char *const *)(argv + 1), 0);
    finish(&app);
    return rc;
}

static int cmd_test(int argc, char **argv)
{
    app_t app = {0};
    if (load_config(&app, NULL, NULL) != 0)
        return 1;
    /* busted's runner reads the global arg; default to the spec folder */
    char *def[] = {"tests/lua"};
    char *args[256];
    int n = 0;
    args[n++] = "--output=TAP";
    if (argc == 0) {
        args[n++] = def[0];
    } else {
        for (int i = 0; i < argc && n < 255; i++)
            args[n++] = argv[i];
    }
    /* specs use the real platform: the embedded services too, when no URL is set */
    int rc = 1;
    if (need_services(&app) == 0 && migrate_now(&app, 0) == 0)
        rc = run_chunk(&app, "test", EVENTLY_LUA_DIR "/evently/test_runner.lua", n,
                       (const char *const *)args, 0);
    finish(&app);
    return rc;
}

/* The password of `user create`: "-" reads one line from standard input,
 * and with no --password EVENTLY_ADMIN_PASSWORD is used, so it need not
 * appear on a command line (which every user of the machine sees in ps). */
static const char *password_option(const char *value)
{
    static char line[4098];
    if (!value)
        return getenv("EVENTLY_ADMIN_PASSWORD");
    if (strcmp(value, "-") != 0)
        return value;
    if (!fgets(line, sizeof line, stdin))
        return NULL;
    line[strcspn(line, "\r\n")] = '\0';
    return line;
}

/* The accounts are the app's: the options are read here, the work is the
 * app's scripts/cli/user_create.lua (its checks, its table). */
static int cmd_user(int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "create") != 0)
        return usage_error("user: expected 'create'%s", "");
    opt_t o[] = {
        {"admin", 1, 0}, {"email", 0, 0}, {"password", 0, 0}, {"name", 0, 0}, {"config", 0, 0}};
    char *rest[64];
    int nrest;
    if (argc > 64 || parse_opts(argc - 1, argv + 1, o, 5, rest, &nrest) != 0)
        return 2;
    if (nrest)
        return usage_error("user create: unexpected argument '%s'", rest[0]);
    const char *password = password_option(o[2].value);
    if (!o[1].value || !password)
        return usage_error(
            "user create: %s",
            "--email and a password are required (--password P; --password - reads it "
            "from standard input; or EVENTLY_ADMIN_PASSWORD)");
    app_t app = {0};
    if (load_config(&app, o[4].value, NULL) != 0)
        return 1;
    char path[4096];
    snprintf(path, sizeof path, "%s/cli/user_create.lua", app.cfg.scripts);
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "evently user create: this app has no %s\n", path);
        finish(&app);
        return 1;
    }
    const char *args[] = {o[1].value, password, o[3].value ? o[3].value : "",
                          o[0].value ? "admin" : "user"};
    int rc = 1;
    if (need_services(&app) == 0 && migrate_now(&app, 0) == 0)
        rc = run_chunk(&app, "user create", path, 4, args, 0);
    finish(&app);
    return rc;
}

/* Dead letters are the stream's (core/lua/evently/stream.lua): the options
 * are read here, the work is core/lua/evently/cli/dead_letters.lua. */
static int cmd_dead_letters(int argc, char **argv)
{
    const char *sub = argc > 0 ? argv[0] : "";
    if (strcmp(sub, "list") != 0 && strcmp(sub, "retry") != 0 && strcmp(sub, "drop") != 0)
        return usage_error("dead-letters: expected list, retry or drop%s", "");
    opt_t o[] = {{"group", 0, 0}, {"config", 0, 0}};
    char *rest[64];
    int nrest;
    if (argc > 64 || parse_opts(argc - 1, argv + 1, o, 2, rest, &nrest) != 0)
        return 2;
    for (int i = 0; i < nrest; i++) {
        char *end;
        long long id = strtoll(rest[i], &end, 10);
        if (*rest[i] == '\0' || *end != '\0' || id < 1)
            return usage_error("dead-letters: '%s' is not a dead letter id", rest[i]);
    }
    if (strcmp(sub, "list") == 0 && nrest > 0)
        return usage_error("dead-letters list: unexpected argument '%s'", rest[0]);
    if (strcmp(sub, "list") != 0 && (nrest > 0) == (o[0].value != NULL))
        return usage_error("dead-letters %s: give ids or --group (one of them)", sub);
    app_t app = {0};
    if (load_config(&app, o[1].value, NULL) != 0)
        return 1;
    const char *args[66] = {sub, o[0].value ? o[0].value : ""};
    for (int i = 0; i < nrest; i++)
        args[2 + i] = rest[i];
    int rc = 1;
    if (need_services(&app) == 0 && migrate_now(&app, 0) == 0)
        rc = run_chunk(&app, "dead-letters", EVENTLY_LUA_DIR "/evently/cli/dead_letters.lua",
                       2 + nrest, args, 0);
    finish(&app);
    return rc;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    int n = argc - 2;
    char **rest = argv + 2;
    if (strcmp(cmd, "serve") == 0)
        return cmd_serve(n, rest);
    if (strcmp(cmd, "migrate") == 0)
        return cmd_migrate(n, rest);
    if (strcmp(cmd, "check") == 0)
        return cmd_check(n, rest);
    if (strcmp(cmd, "lua") == 0)
        return cmd_lua(n, rest);
    if (strcmp(cmd, "test") == 0)
        return cmd_test(n, rest);
    if (strcmp(cmd, "user") == 0)
        return cmd_user(n, rest);
    if (strcmp(cmd, "dead-letters") == 0)
        return cmd_dead_letters(n, rest);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("evently %s (%s, %s build)\n", EVENTLY_VERSION, LUA_RELEASE, EVENTLY_BUILD_TYPE);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    return usage_error("unknown command '%s'", cmd);
}
