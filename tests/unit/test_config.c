/* test_config.c - core/config.c: defaults, ev_config_set, environment, Lua
 * config file, precedence and validation.
 *
 * Environment tests set EVENTLY_* variables and unset them again; config
 * files are written to a temporary directory removed at the end. */
#define _DEFAULT_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"

static char tmpdir[64];
static char err[512];

extern char **environ;

static int setup_group(void **state)
{
    (void)state;
    /* the tests decide which EVENTLY_* variables exist */
    for (int again = 1; again;) {
        again = 0;
        for (char **e = environ; *e; e++) {
            if (strncmp(*e, "EVENTLY_", 8) == 0) {
                char name[128];
                snprintf(name, sizeof name, "%.*s", (int)strcspn(*e, "="), *e);
                unsetenv(name);
                again = 1;
                break;
            }
        }
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/evently-config-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_group(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static int setup(void **state)
{
    ev_config_t *c = calloc(1, sizeof *c);
    if (!c)
        return -1;
    ev_config_defaults(c);
    err[0] = '\0';
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    ev_config_free(*state);
    free(*state);
    return 0;
}

/* Writes a config file under tmpdir and returns its path (static buffer). */
static const char *config_file(const char *name, const char *text)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

#define assert_contains(haystack, needle)                                                          \
    do {                                                                                           \
        if (!strstr((haystack), (needle)))                                                         \
            fail_msg("'%s' does not contain '%s'", (haystack), (needle));                          \
    } while (0)

/* Refused with a message naming both the key and its environment variable. */
static void assert_refused(ev_config_t *c, const char *key, const char *env, const char *value)
{
    err[0] = '\0';
    if (ev_config_set(c, key, value, err, sizeof err) != -1)
        fail_msg("%s = '%s' was accepted", key, value);
    assert_contains(err, key);
    assert_contains(err, env);
}

/* In a forked child: let a crash kill it (cmocka's handlers would longjmp
 * back into the test runner and carry on with the next tests). */
static void child_default_signals(void)
{
    static const int sigs[] = {SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        signal(sigs[i], SIG_DFL);
}

/* ---- defaults ---- */

static void defaults_are_the_documented_values(void **state)
{
    ev_config_t *c = *state;
    assert_string_equal(c->home, "./var");
    assert_string_equal(c->host, "127.0.0.1");
    assert_int_equal(c->port, 8080);
    assert_int_equal(c->workers, (int)sysconf(_SC_NPROCESSORS_ONLN));
    assert_string_equal(c->scripts, "./scripts");
    assert_string_equal(c->plugins_dir, "./plugins");
    assert_string_equal(c->migrations, "./migrations");
    assert_null(c->database_url);
    assert_null(c->replica_url);
    assert_null(c->redis_url);
    assert_null(c->kafka_brokers);
    assert_null(c->smtp_url);
    assert_string_equal(c->log_level, "info");
    assert_string_equal(c->access_log, "stderr");
    assert_int_equal(c->max_body, 1024 * 1024);
    assert_int_equal(c->max_header, 16 * 1024);
    assert_int_equal(c->max_connections, 0); /* auto, settled by fd_limit.c */
    assert_int_equal(c->idle_timeout, 60);
    assert_int_equal(c->read_timeout, 15);
    assert_int_equal(c->handler_timeout, 30);
    assert_int_equal(c->drain_timeout, 30);
    assert_int_equal(c->nplugins, 0);
    assert_non_null(c->lua_path);
}

static void defaults_pass_validation(void **state)
{
    assert_int_equal(ev_config_validate(*state, err, sizeof err), 0);
}

/* ---- ev_config_set ---- */

static void set_parses_integers(void **state)
{
    ev_config_t *c = *state;
    assert_int_equal(ev_config_set(c, "port", "9090", err, sizeof err), 0);
    assert_int_equal(c->port, 9090);
    assert_int_equal(ev_config_set(c, "workers", "256", err, sizeof err), 0);
    assert_int_equal(c->workers, 256);
    assert_int_equal(ev_config_set(c, "drain_timeout", "0", err, sizeof err), 0);
    assert_int_equal(c->drain_timeout, 0);
}

static void set_parses_sizes_with_binary_units(void **state)
{
    ev_config_t *c = *state;
    assert_int_equal(ev_config_set(c, "max_body", "512k", err, sizeof err), 0);
    assert_int_equal(c->max_body, 512 * 1024);
    assert_int_equal(ev_config_set(c, "max_body", "1m", err, sizeof err), 0);
    assert_int_equal(c->max_body, 1024 * 1024);
    assert_int_equal(ev_config_set(c, "max_body", "2M", err, sizeof err), 0);
    assert_int_equal(c->max_body, 2 * 1024 * 1024);
    assert_int_equal(ev_config_set(c, "max_body", "1g", err, sizeof err), 0);
    assert_int_equal(c->max_body, 1024 * 1024 * 1024);
    assert_int_equal(ev_config_set(c, "max_header", "64kb", err, sizeof err), 0);
    assert_int_equal(c->max_header, 64 * 1024);
    assert_int_equal(ev_config_set(c, "max_header", "4096", err, sizeof err), 0);
    assert_int_equal(c->max_header, 4096);
}

static void set_refuses_out_of_range_values_naming_key_and_env(void **state)
{
    ev_config_t *c = *state;
    assert_refused(c, "port", "EVENTLY_PORT", "0");
    assert_refused(c, "port", "EVENTLY_PORT", "65536");
    assert_refused(c, "workers", "EVENTLY_WORKERS", "0");
    assert_refused(c, "workers", "EVENTLY_WORKERS", "257");
    assert_refused(c, "max_header", "EVENTLY_MAX_HEADER", "512");
    assert_refused(c, "max_header", "EVENTLY_MAX_HEADER", "2m");
    assert_refused(c, "max_body", "EVENTLY_MAX_BODY", "2g");
    assert_refused(c, "max_body", "EVENTLY_MAX_BODY", "99999999999999999999");
    assert_refused(c, "max_body", "EVENTLY_MAX_BODY", "9999999999999g"); /* overflows */
    assert_refused(c, "read_timeout", "EVENTLY_READ_TIMEOUT", "3601");
    /* a refused value leaves the old one */
    assert_int_equal(c->port, 8080);
    assert_int_equal(c->max_body, 1024 * 1024);
}

static void set_refuses_garbage_naming_key_and_env(void **state)
{
    ev_config_t *c = *state;
    assert_refused(c, "port", "EVENTLY_PORT", "abc");
    assert_refused(c, "port", "EVENTLY_PORT", "80x");
    assert_refused(c, "port", "EVENTLY_PORT", "");
    assert_refused(c, "port", "EVENTLY_PORT", "-1");
    assert_refused(c, "port", "EVENTLY_PORT", "8.5");
    assert_refused(c, "workers", "EVENTLY_WORKERS", "1k"); /* units are for sizes only */
    assert_refused(c, "max_body", "EVENTLY_MAX_BODY", "12q");
    assert_refused(c, "max_body", "EVENTLY_MAX_BODY", "1kk");
    assert_refused(c, "max_body", "EVENTLY_MAX_BODY", "k");
    assert_contains(err, "'k'"); /* and quotes the value */
}

static void set_refuses_an_unknown_key(void **state)
{
    assert_int_equal(ev_config_set(*state, "prot", "80", err, sizeof err), -1);
    assert_contains(err, "unknown setting 'prot'");
}

static void set_with_an_empty_string_clears_a_string_setting(void **state)
{
    ev_config_t *c = *state;
    assert_int_equal(ev_config_set(c, "database_url", "postgres://db/x", err, sizeof err), 0);
    assert_string_equal(c->database_url, "postgres://db/x");
    assert_int_equal(ev_config_set(c, "database_url", "", err, sizeof err), 0);
    assert_null(c->database_url);
}

static void set_splits_the_plugin_list_on_commas_and_spaces(void **state)
{
    ev_config_t *c = *state;
    assert_int_equal(ev_config_set(c, "plugins", "auth, rate-limit,,cors", err, sizeof err), 0);
    assert_int_equal(c->nplugins, 3);
    assert_string_equal(c->plugins[0], "auth");
    assert_string_equal(c->plugins[1], "rate-limit");
    assert_string_equal(c->plugins[2], "cors");
    assert_int_equal(ev_config_set(c, "plugins", "one", err, sizeof err), 0); /* replaces */
    assert_int_equal(c->nplugins, 1);
    assert_string_equal(c->plugins[0], "one");
}

static void set_refuses_more_than_32_plugins(void **state)
{
    char list[512] = "";
    for (int i = 0; i < EV_MAX_PLUGINS + 1; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%sp%d", i ? "," : "", i);
    assert_int_equal(ev_config_set(*state, "plugins", list, err, sizeof err), -1);
    assert_contains(err, "plugins");
}

/* ---- environment ---- */

static void env_overrides_defaults(void **state)
{
    ev_config_t *c = *state;
    setenv("EVENTLY_PORT", "9091", 1);
    setenv("EVENTLY_MAX_BODY", "512k", 1);
    setenv("EVENTLY_DATABASE_URL", "postgres://u@db/evently", 1);
    setenv("EVENTLY_PLUGINS", "auth,cors", 1);
    setenv("EVENTLY_LOG_LEVEL", "debug", 1);
    int rc = ev_config_load_env(c, err, sizeof err);
    unsetenv("EVENTLY_PORT");
    unsetenv("EVENTLY_MAX_BODY");
    unsetenv("EVENTLY_DATABASE_URL");
    unsetenv("EVENTLY_PLUGINS");
    unsetenv("EVENTLY_LOG_LEVEL");
    assert_int_equal(rc, 0);
    assert_int_equal(c->port, 9091);
    assert_int_equal(c->max_body, 512 * 1024);
    assert_string_equal(c->database_url, "postgres://u@db/evently");
    assert_int_equal(c->nplugins, 2);
    assert_string_equal(c->plugins[1], "cors");
    assert_string_equal(c->log_level, "debug");
    assert_string_equal(c->host, "127.0.0.1"); /* untouched */
}

static void env_with_a_bad_value_is_refused_naming_the_variable(void **state)
{
    setenv("EVENTLY_WORKERS", "many", 1);
    int rc = ev_config_load_env(*state, err, sizeof err);
    unsetenv("EVENTLY_WORKERS");
    assert_int_equal(rc, -1);
    assert_contains(err, "EVENTLY_WORKERS");
    assert_contains(err, "'many'");
}

/* ---- config file ---- */

static void file_sets_values_of_every_kind(void **state)
{
    ev_config_t *c = *state;
    const char *path = config_file(
        "all.lua", "local port = 7000\n"
                   "return {\n"
                   "  port = port, workers = 3, max_body = '512k', max_header = 32768,\n"
                   "  host = '0.0.0.0', log_level = 'warn',\n"
                   "  redis_url = 'redis://127.0.0.1:6379',\n"
                   "  plugins = { 'auth', 'rate-limit' },\n"
                   "}\n");
    assert_int_equal(ev_config_load_file(c, path, err, sizeof err), 0);
    assert_int_equal(c->port, 7000);
    assert_int_equal(c->workers, 3);
    assert_int_equal(c->max_body, 512 * 1024);
    assert_int_equal(c->max_header, 32768);
    assert_string_equal(c->host, "0.0.0.0");
    assert_string_equal(c->log_level, "warn");
    assert_string_equal(c->redis_url, "redis://127.0.0.1:6379");
    assert_int_equal(c->nplugins, 2);
    assert_string_equal(c->plugins[0], "auth");
    assert_string_equal(c->plugins[1], "rate-limit");
    assert_int_equal(ev_config_validate(c, err, sizeof err), 0);
}

static void env_wins_over_the_file(void **state)
{
    ev_config_t *c = *state;
    const char *path = config_file("prec.lua", "return { port = 7000, workers = 3 }\n");
    assert_int_equal(ev_config_load_file(c, path, err, sizeof err), 0);
    setenv("EVENTLY_PORT", "9000", 1);
    int rc = ev_config_load_env(c, err, sizeof err);
    unsetenv("EVENTLY_PORT");
    assert_int_equal(rc, 0);
    assert_int_equal(c->port, 9000); /* env over file */
    assert_int_equal(c->workers, 3); /* file over default */
    assert_string_equal(c->host, "127.0.0.1");
}

static void file_with_an_unknown_key_is_refused(void **state)
{
    const char *path = config_file("unknown.lua", "return { port = 7000, prot = 80 }\n");
    assert_int_equal(ev_config_load_file(*state, path, err, sizeof err), -1);
    assert_contains(err, path);
    assert_contains(err, "unknown setting 'prot'");
}

static void file_with_a_bad_value_names_the_file_and_key(void **state)
{
    const char *path = config_file("badport.lua", "return { port = 70000 }\n");
    assert_int_equal(ev_config_load_file(*state, path, err, sizeof err), -1);
    assert_contains(err, path);
    assert_contains(err, "port (EVENTLY_PORT)");
}

static void file_refuses_values_of_the_wrong_type(void **state)
{
    const char *path = config_file("float.lua", "return { port = 80.5 }\n");
    assert_int_equal(ev_config_load_file(*state, path, err, sizeof err), -1);
    assert_contains(err, "port");
    path = config_file("fn.lua", "return { host = print }\n");
    assert_int_equal(ev_config_load_file(*state, path, err, sizeof err), -1);
    assert_contains(err, "host");
    path = config_file("list.lua", "return { plugins = { 'a', 42 } }\n");
    assert_int_equal(ev_config_load_file(*state, path, err, sizeof err), -1);
    assert_contains(err, "plugins");
    path = config_file("key.lua", "return { [1] = 'x' }\n");
    assert_int_equal(ev_config_load_file(*state, path, err, sizeof err), -1);
    assert_contains(err, "keys must be strings");
}

static void file_that_fails_to_load_reports_the_lua_error(void **state)
{
    const char *path = config_file("syntax.lua", "return { port = }\n");
    assert_int_equal(ev_config_load_file(*state, path, err, sizeof err), -1);
    assert_contains(err, path);
    path = config_file("raise.lua", "error('no config for you')\n");
    assert_int_equal(ev_config_load_file(*state, path, err, sizeof err), -1);
    assert_contains(err, "no config for you");
    path = config_file("notable.lua", "return 42\n");
    assert_int_equal(ev_config_load_file(*state, path, err, sizeof err), -1);
    assert_contains(err, "must return a table");
    char missing[160];
    snprintf(missing, sizeof missing, "%s/missing.lua", tmpdir);
    assert_int_equal(ev_config_load_file(*state, missing, err, sizeof err), -1);
    assert_contains(err, "missing.lua");
}

/* The config file is Lua, so a list value may carry metamethods. Reading it
 * (luaL_len, lua_geti) runs them; an error there must come back as a message
 * naming the file, not kill the process with "PANIC: unprotected error in
 * call to Lua API". Run in a child so a panic (abort) is observed, not suffered. */
static void file_whose_list_raises_in_a_metamethod_is_refused_without_a_panic(void **state)
{
    const char *path =
        config_file("meta.lua", "return { plugins = setmetatable({}, {\n"
                                "  __len = function() error('len exploded') end }) }\n");
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        child_default_signals();
        int rc = ev_config_load_file(*state, path, err, sizeof err);
        _exit(rc == -1 && strstr(err, "len exploded") && strstr(err, path) ? 0 : 1);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (WIFSIGNALED(status))
        fail_msg("ev_config_load_file died of signal %d (Lua panic)", WTERMSIG(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- validate ---- */

static void validate_refuses_a_bad_log_level(void **state)
{
    ev_config_t *c = *state;
    assert_int_equal(ev_config_set(c, "log_level", "verbose", err, sizeof err), 0);
    assert_int_equal(ev_config_validate(c, err, sizeof err), -1);
    assert_contains(err, "log_level (EVENTLY_LOG_LEVEL)");
    assert_contains(err, "'verbose'");
    for (const char **l = (const char *[]){"debug", "info", "warn", "error", NULL}; *l; l++) {
        assert_int_equal(ev_config_set(c, "log_level", *l, err, sizeof err), 0);
        assert_int_equal(ev_config_validate(c, err, sizeof err), 0);
    }
}

static void validate_refuses_a_bad_redis_url(void **state)
{
    ev_config_t *c = *state;
    assert_int_equal(ev_config_set(c, "redis_url", "http://cache:6379", err, sizeof err), 0);
    assert_int_equal(ev_config_validate(c, err, sizeof err), -1);
    assert_contains(err, "redis_url (EVENTLY_REDIS_URL)");
    assert_int_equal(ev_config_set(c, "redis_url", "redis://cache:6379/0", err, sizeof err), 0);
    assert_int_equal(ev_config_validate(c, err, sizeof err), 0);
    assert_int_equal(ev_config_set(c, "redis_url", "unix:/run/redis.sock", err, sizeof err), 0);
    assert_int_equal(ev_config_validate(c, err, sizeof err), 0);
    /* a bad URL with a password: the error, which is logged, does not repeat it */
    assert_int_equal(ev_config_set(c, "redis_url", "redis://:hunter2@cache:99999", err, sizeof err),
                     0);
    assert_int_equal(ev_config_validate(c, err, sizeof err), -1);
    assert_contains(err, "bad port");
    assert_null(strstr(err, "hunter2"));
    assert_int_equal(ev_config_set(c, "smtp_url", "smpt://mailer:hunter2@mail:25", err, sizeof err),
                     0);
    assert_int_equal(ev_config_set(c, "redis_url", "unix:/run/redis.sock", err, sizeof err), 0);
    assert_int_equal(ev_config_validate(c, err, sizeof err), -1);
    assert_contains(err, "smtp_url (EVENTLY_SMTP_URL)");
    assert_null(strstr(err, "hunter2"));
}

static void validate_refuses_a_bad_smtp_url_and_mail_from(void **state)
{
    ev_config_t *c = *state;
    assert_string_equal(c->mail_from, "Evently <no-reply@evently.local>");
    assert_int_equal(ev_config_set(c, "smtp_url", "http://mail:25", err, sizeof err), 0);
    assert_int_equal(ev_config_validate(c, err, sizeof err), -1);
    assert_contains(err, "smtp_url (EVENTLY_SMTP_URL)");
    assert_int_equal(ev_config_set(c, "smtp_url", "smtps://user:pw@mail:465", err, sizeof err), 0);
    assert_int_equal(ev_config_validate(c, err, sizeof err), 0);
    assert_int_equal(ev_config_set(c, "mail_from", "nobody", err, sizeof err), 0);
    assert_int_equal(ev_config_validate(c, err, sizeof err), -1);
    assert_contains(err, "mail_from (EVENTLY_MAIL_FROM)");
    assert_int_equal(ev_config_set(c, "mail_from", "Shop <shop@example.com>", err, sizeof err), 0);
    assert_int_equal(ev_config_validate(c, err, sizeof err), 0);
}

static void validate_refuses_an_empty_home(void **state)
{
    ev_config_t *c = *state;
    assert_int_equal(ev_config_set(c, "home", "", err, sizeof err), 0);
    assert_int_equal(ev_config_validate(c, err, sizeof err), -1);
    assert_contains(err, "EVENTLY_HOME");
}

static void validate_takes_ops_listen_as_host_and_port(void **state)
{
    ev_config_t *c = *state;
    char host[64];
    int port = 0;
    assert_int_equal(ev_config_host_port("127.0.0.1:9100", host, sizeof host, &port), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 9100);
    assert_int_equal(ev_config_host_port("[::1]:9101", host, sizeof host, &port), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 9101);
    const char *bad[] = {"9100", ":9100", "host:", "host:0", "host:70000", "host:9x", "[::1:9100"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(ev_config_host_port(bad[i], host, sizeof host, &port), -1);
    assert_int_equal(ev_config_set(c, "ops_listen", "localhost", err, sizeof err), 0);
    assert_int_equal(ev_config_validate(c, err, sizeof err), -1);
    assert_contains(err, "ops_listen (EVENTLY_OPS_LISTEN)");
    assert_int_equal(ev_config_set(c, "ops_listen", "127.0.0.1:8080", err, sizeof err), 0);
    assert_int_equal(ev_config_validate(c, err, sizeof err), -1); /* the public port */
    assert_contains(err, "public port");
    assert_int_equal(ev_config_set(c, "ops_listen", "127.0.0.1:9100", err, sizeof err), 0);
    assert_int_equal(ev_config_validate(c, err, sizeof err), 0);
}

static void env_passes_kafka_properties_through(void **state)
{
    ev_config_t *c = *state;
    setenv("EVENTLY_KAFKA_BROKERS", "127.0.0.1:9092", 1);
    setenv("EVENTLY_KAFKA_SECURITY_PROTOCOL", "SASL_SSL", 1);
    setenv("EVENTLY_KAFKA_SASL_PASSWORD", "p=w,x", 1);
    int rc = ev_config_load_env(c, err, sizeof err);
    unsetenv("EVENTLY_KAFKA_BROKERS");
    unsetenv("EVENTLY_KAFKA_SECURITY_PROTOCOL");
    unsetenv("EVENTLY_KAFKA_SASL_PASSWORD");
    assert_int_equal(rc, 0);
    assert_string_equal(c->kafka_brokers, "127.0.0.1:9092");
    assert_int_equal(c->nkafka_props, 2); /* BROKERS is evently's own */
    int proto = strcmp(c->kafka_prop_names[0], "security.protocol") == 0 ? 0 : 1;
    assert_string_equal(c->kafka_prop_names[proto], "security.protocol");
    assert_string_equal(c->kafka_prop_values[proto], "SASL_SSL");
    assert_string_equal(c->kafka_prop_names[1 - proto], "sasl.password");
    assert_string_equal(c->kafka_prop_values[1 - proto], "p=w,x");
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(defaults_are_the_documented_values),
        T(defaults_pass_validation),
        T(set_parses_integers),
        T(set_parses_sizes_with_binary_units),
        T(set_refuses_out_of_range_values_naming_key_and_env),
        T(set_refuses_garbage_naming_key_and_env),
        T(set_refuses_an_unknown_key),
        T(set_with_an_empty_string_clears_a_string_setting),
        T(set_splits_the_plugin_list_on_commas_and_spaces),
        T(set_refuses_more_than_32_plugins),
        T(env_overrides_defaults),
        T(env_with_a_bad_value_is_refused_naming_the_variable),
        T(file_sets_values_of_every_kind),
        T(env_wins_over_the_file),
        T(file_with_an_unknown_key_is_refused),
        T(file_with_a_bad_value_names_the_file_and_key),
        T(file_refuses_values_of_the_wrong_type),
        T(file_that_fails_to_load_reports_the_lua_error),
        T(file_whose_list_raises_in_a_metamethod_is_refused_without_a_panic),
        T(validate_refuses_a_bad_log_level),
        T(validate_refuses_a_bad_redis_url),
        T(validate_refuses_a_bad_smtp_url_and_mail_from),
        T(validate_refuses_an_empty_home),
        T(validate_takes_ops_listen_as_host_and_port),
        T(env_passes_kafka_properties_through),
    };
    return cmocka_run_group_tests(tests, setup_group, teardown_group);
}
