/* test_co.c - core/co.c with core/lua_time.c and core/runtime.c: coroutines
 * that wait on C-side I/O, evently.time, and ev_runtime_run.
 *
 * Each test gets its own event base and platform Lua state (ev_runtime_new
 * with default config, no metrics, worker slot -1). Lua chunks run through
 * ev_runtime_run and leave what they saw in globals; the wake and abort
 * tests drive ev_co_new/ev_co_start/ev_co_wake/ev_co_abort directly with a
 * C operation whose I/O never completes ("test.never", below). Every test
 * ends with ev_co_live() back where it started. */
#define _DEFAULT_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <event2/event.h>
#include <lauxlib.h>
#include <lua.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "co.h"
#include "config.h"
#include "runtime.h"

typedef struct {
    struct event_base *base;
    ev_config_t cfg;
    ev_runtime_t rt;
    lua_State *L;
    int live0;
} fixture_t;

static int live_at_start;

/* ---- a C operation whose I/O never completes ---- */

typedef struct {
    int pushes;    /* ops.push calls */
    ev_wake_t why; /* the last one's reason */
    int cancels;   /* ops.cancel calls */
    int rewake;    /* push calls ev_co_wake again, as a racing callback would */
    int raise;     /* push raises, as a failed decode would */
    ev_co_t *co;   /* the coroutine waiting, for the test to wake */
} never_t;

static never_t never;

/* Runs wherever co.c calls it (the main thread, protected): pushes on L. */
static int never_push(lua_State *L, void *data, ev_wake_t why)
{
    never_t *n = data;
    n->pushes++;
    n->why = why;
    if (n->rewake)
        ev_co_wake(n->co, EV_WAKE_DONE);
    if (n->raise)
        return luaL_error(L, "cannot decode the reply");
    if (why == EV_WAKE_TIMEOUT) {
        lua_pushnil(L);
        lua_pushliteral(L, "timeout");
        return 2;
    }
    lua_pushinteger(L, 42);
    return 1;
}

static void never_cancel(void *data)
{
    ((never_t *)data)->cancels++;
}

static const ev_wait_ops_t never_ops = {
    .name = "test.never", .push = never_push, .cancel = never_cancel};

/* never([timeout_s]) -> 42 | nil, "timeout"; waits forever without a timeout */
static int l_never(lua_State *L)
{
    double t = luaL_optnumber(L, 1, -1);
    never.co = ev_co_current(L);
    return ev_co_wait(L, t, &never_ops, &never);
}

/* wake_me(): ev_co_wake on the coroutine that is running right now */
static int l_wake_me(lua_State *L)
{
    ev_co_t *co = ev_co_current(L);
    if (co)
        ev_co_wake(co, EV_WAKE_DONE);
    return 0;
}

/* In a forked child: let a crash kill it (cmocka's handlers would longjmp
 * back into the test runner and carry on with the next tests). */
static void child_default_signals(void)
{
    static const int sigs[] = {SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        signal(sigs[i], SIG_DFL);
}

/* ---- fixture ---- */

static int setup_group(void **state)
{
    (void)state;
    live_at_start = ev_co_live();
    return 0;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    if (!f || !(f->base = event_base_new()))
        return -1;
    ev_config_defaults(&f->cfg);
    f->rt = (ev_runtime_t){.base = f->base, .cfg = &f->cfg, .metrics = NULL, .worker_slot = -1};
    f->L = ev_runtime_new(&f->rt);
    if (!f->L)
        return -1;
    lua_register(f->L, "never", l_never);
    lua_register(f->L, "wake_me", l_wake_me);
    memset(&never, 0, sizeof never);
    f->live0 = ev_co_live();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    int leaked = ev_co_live() - f->live0;
    lua_close(f->L);
    event_base_free(f->base);
    ev_config_free(&f->cfg);
    free(f);
    if (leaked)
        fprintf(stderr, "teardown: %d coroutine(s) still live\n", leaked);
    return leaked ? -1 : 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs a chunk as `evently lua` would; returns ev_runtime_run's result. */
static int run(fixture_t *f, const char *chunk)
{
    if (luaL_loadstring(f->L, chunk) != LUA_OK)
        fail_msg("chunk does not compile: %s", lua_tostring(f->L, -1));
    return ev_runtime_run(f->L, 0, NULL, 0);
}

static lua_Number global_number(lua_State *L, const char *name)
{
    lua_getglobal(L, name);
    if (!lua_isnumber(L, -1))
        fail_msg("global %s is a %s, not a number", name, luaL_typename(L, -1));
    lua_Number n = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return n;
}

static const char *global_string(lua_State *L, const char *name)
{
    lua_getglobal(L, name);
    if (!lua_isstring(L, -1))
        fail_msg("global %s is a %s, not a string", name, luaL_typename(L, -1));
    const char *s = lua_tostring(L, -1); /* still referenced by the global */
    lua_pop(L, 1);
    return s;
}

static int global_type(lua_State *L, const char *name)
{
    int t = lua_getglobal(L, name);
    lua_pop(L, 1);
    return t;
}

/* Runs the loop for s seconds whatever is pending. */
static void spin(struct event_base *base, double s)
{
    struct timeval tv = {(time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6)};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

typedef struct {
    int calls;
    int status;
    int nresults;
    lua_Integer value;
    char msg[256];
} done_t;

static void on_done(ev_co_t *co, lua_State *T, int status, void *ud)
{
    done_t *d = ud;
    (void)co;
    d->calls++;
    d->status = status;
    d->nresults = lua_gettop(T);
    if (status == LUA_OK && d->nresults > 0)
        d->value = lua_tointeger(T, -1);
    else if (status != LUA_OK)
        snprintf(d->msg, sizeof d->msg, "%s", lua_tostring(T, -1) ? lua_tostring(T, -1) : "?");
}

/* A coroutine of f's state running chunk, started and left at its first wait. */
static ev_co_t *start(fixture_t *f, const char *chunk, done_t *d)
{
    ev_co_t *co = ev_co_new(f->L, f->base, on_done, d);
    assert_non_null(co);
    ev_co_set_tag(co, "test");
    if (luaL_loadstring(ev_co_state(co), chunk) != LUA_OK)
        fail_msg("chunk does not compile: %s", lua_tostring(ev_co_state(co), -1));
    ev_co_start(co, 0);
    return co;
}

/* ---- evently.time ---- */

static void sleep_resumes_with_true_after_at_least_the_delay(void **state)
{
    fixture_t *f = *state;
    double t0 = now();
    assert_int_equal(run(f, "local time = require 'evently.time'\n"
                            "local t0 = time.monotonic()\n"
                            "r_ok = time.sleep(0.05)\n"
                            "r_dt = time.monotonic() - t0\n"),
                     0);
    double dt = now() - t0;
    assert_int_equal(global_type(f->L, "r_ok"), LUA_TBOOLEAN);
    lua_getglobal(f->L, "r_ok");
    assert_true(lua_toboolean(f->L, -1));
    lua_pop(f->L, 1);
    if (global_number(f->L, "r_dt") < 0.05 || dt < 0.05)
        fail_msg("woke after %.4f s (Lua) / %.4f s (C), expected >= 0.05",
                 global_number(f->L, "r_dt"), dt);
    assert_true(dt < 1.0);
}

static void sleep_zero_yields_and_resumes(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(run(f, "r_ok = require('evently.time').sleep(0)"), 0);
    assert_int_equal(global_type(f->L, "r_ok"), LUA_TBOOLEAN);
}

static void sleep_refuses_negative_and_nan_seconds(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(run(f, "local time = require 'evently.time'\n"
                            "local ok, e = pcall(time.sleep, -1); assert(not ok); r_neg = e\n"
                            "ok, e = pcall(time.sleep, 0/0); assert(not ok)\n"
                            "ok, e = pcall(time.every, 0, print); assert(not ok); r_every = e\n"),
                     0);
    assert_non_null(strstr(global_string(f->L, "r_neg"), "seconds must be in [0, 1e7)"));
    assert_non_null(strstr(global_string(f->L, "r_every"), "period must be at least 0.001 s"));
}

static void two_sleeping_coroutines_interleave(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(run(f, "local time = require 'evently.time'\n"
                            "local log = {}\n"
                            "time.after(0, function()\n"
                            "  log[#log + 1] = 'b1'; time.sleep(0.02); log[#log + 1] = 'b2'\n"
                            "end)\n"
                            "log[#log + 1] = 'a1'; time.sleep(0.01)\n"
                            "log[#log + 1] = 'a2'; time.sleep(0.03)\n"
                            "log[#log + 1] = 'a3'\n"
                            "r_log = table.concat(log, ' ')\n"),
                     0);
    assert_string_equal(global_string(f->L, "r_log"), "a1 b1 a2 b2 a3");
}

static void after_runs_its_function_once_with_its_arguments(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(run(f, "local time = require 'evently.time'\n"
                            "r_calls = 0\n"
                            "local h = time.after(0.01, function(a, b)\n"
                            "  r_calls = r_calls + 1; r_got = a .. b\n"
                            "end, 'x', 'y')\n"
                            "r_type = type(h)\n"
                            "time.sleep(0.05)\n"),
                     0);
    assert_int_equal(global_number(f->L, "r_calls"), 1);
    assert_string_equal(global_string(f->L, "r_got"), "xy");
    assert_string_equal(global_string(f->L, "r_type"), "userdata");
}

static void after_runs_even_when_its_handle_is_dropped(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(run(f, "local time = require 'evently.time'\n"
                            "time.after(0.02, function() r_ran = true end)\n"
                            "collectgarbage(); collectgarbage()\n"
                            "time.sleep(0.05)\n"),
                     0);
    assert_int_equal(global_type(f->L, "r_ran"), LUA_TBOOLEAN);
}

static void every_runs_repeatedly_until_cancelled(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(run(f, "local time = require 'evently.time'\n"
                            "r_n = 0\n"
                            "local h = time.every(0.01, function() r_n = r_n + 1 end)\n"
                            "time.sleep(0.065)\n"
                            "h:cancel()\n"
                            "r_at_cancel = r_n\n"
                            "time.sleep(0.05)\n"),
                     0);
    lua_Number at_cancel = global_number(f->L, "r_at_cancel");
    if (at_cancel < 3)
        fail_msg("every(0.01) ran %.0f times in 65 ms", at_cancel);
    assert_true(global_number(f->L, "r_n") == at_cancel); /* none after cancel */
}

static void every_cancelled_from_its_own_body_stops(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(run(f, "local time = require 'evently.time'\n"
                            "r_n = 0\n"
                            "local h\n"
                            "h = time.every(0.01, function()\n"
                            "  r_n = r_n + 1\n"
                            "  if r_n == 3 then h:cancel() end\n"
                            "end)\n"
                            "time.sleep(0.1)\n"),
                     0);
    assert_int_equal(global_number(f->L, "r_n"), 3);
}

static void every_skips_a_run_while_the_previous_one_still_sleeps(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(run(f, "local time = require 'evently.time'\n"
                            "r_active, r_max, r_runs = 0, 0, 0\n"
                            "local h = time.every(0.01, function()\n"
                            "  r_runs = r_runs + 1\n"
                            "  r_active = r_active + 1; r_max = math.max(r_max, r_active)\n"
                            "  time.sleep(0.025)\n"
                            "  r_active = r_active - 1\n"
                            "end)\n"
                            "time.sleep(0.1)\n"
                            "h:cancel()\n"
                            "time.sleep(0.04)\n"),
                     0);
    assert_int_equal(global_number(f->L, "r_max"), 1);
    assert_true(global_number(f->L, "r_runs") >= 2);
    assert_int_equal(global_number(f->L, "r_active"), 0);
}

static void a_timer_body_that_raises_does_not_stop_the_loop(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(run(f, "local time = require 'evently.time'\n"
                            "r_n = 0\n"
                            "local h = time.every(0.01, function()\n"
                            "  r_n = r_n + 1; error('every boom ' .. r_n)\n"
                            "end)\n"
                            "time.after(0, function() error('after boom') end)\n"
                            "time.after(0.02, function() r_later = true end)\n"
                            "time.sleep(0.065)\n"
                            "h:cancel()\n"
                            "r_done = true\n"),
                     0);
    assert_true(global_number(f->L, "r_n") >= 3); /* kept firing after raising */
    assert_int_equal(global_type(f->L, "r_later"), LUA_TBOOLEAN);
    assert_int_equal(global_type(f->L, "r_done"), LUA_TBOOLEAN);
}

static void sleep_on_the_main_state_raises(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(luaL_loadstring(f->L, "return require('evently.time').sleep(0.01)"), LUA_OK);
    assert_int_equal(lua_pcall(f->L, 0, 0, 0), LUA_ERRRUN);
    const char *msg = lua_tostring(f->L, -1);
    assert_non_null(msg);
    if (!strstr(msg, "sleep: must be called from a request, timer or script coroutine"))
        fail_msg("unexpected error: %s", msg);
    lua_pop(f->L, 1);
}

/* coroutine.create inside a script coroutine makes a thread that is not an
 * ev_co_t; Lua fills a new thread's extra space from the MAIN thread's, which
 * nothing ever initialises (lua_newstate leaves it as malloc returned it).
 * With dirty heap memory (M_PERTURB here; ASan's malloc fill does the same),
 * ev_co_current() on that thread returns garbage and ev_co_wait writes
 * through it. Expected: the documented error, raised into the wrapped
 * coroutine. Runs in a child so a crash is observed, not suffered. */
static void sleep_in_a_plain_lua_coroutine_raises_instead_of_crashing(void **state)
{
    (void)state;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        child_default_signals();
        mallopt(M_PERTURB, 0x5a); /* malloc'd memory starts as 0xa5a5... */
        fixture_t *f;
        if (setup((void **)&f) != 0)
            _exit(3);
        mallopt(M_PERTURB, 0);
        int rc =
            run(f, "local time = require 'evently.time'\n"
                   "local ok, e = pcall(coroutine.wrap(function() return time.sleep(0.01) end))\n"
                   "assert(not ok, 'sleep in a plain coroutine did not raise')\n"
                   "assert(e:find('must be called from a request, timer or script coroutine',\n"
                   "              1, true), e)\n");
        _exit(rc == 0 ? 0 : 1);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (WIFSIGNALED(status))
        fail_msg("child died of signal %d", WTERMSIG(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- ev_runtime_run ---- */

static void run_returns_minus_one_when_the_chunk_raises(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(run(f, "require('evently.time').sleep(0); error('chunk boom')"), -1);
}

static void run_of_a_bare_yield_fails_instead_of_hanging(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(run(f, "coroutine.yield(1, 2)"), -1);
}

/* A chunk that waits with no timer and no I/O: the loop has nothing left,
 * ev_runtime_run gives up with -1. The coroutine it made must not outlive it
 * (every path frees); its ev_co_t and timer event are otherwise leaked. */
static void run_of_a_chunk_stuck_on_nothing_returns_and_frees_its_coroutine(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(run(f, "never()"), -1);
    int leaked = ev_co_live() - f->live0;
    if (leaked && never.co)
        ev_co_abort(never.co); /* so the leak does not spill into later tests */
    if (leaked)
        fail_msg("ev_runtime_run returned with %d coroutine(s) still live", leaked);
}

/* ---- a custom wait operation ---- */

static void a_wait_that_never_completes_times_out_and_is_cancelled_once(void **state)
{
    fixture_t *f = *state;
    double t0 = now();
    assert_int_equal(run(f, "r_v, r_err = never(0.02)"), 0);
    assert_true(now() - t0 >= 0.02);
    assert_int_equal(never.pushes, 1);
    assert_int_equal(never.why, EV_WAKE_TIMEOUT);
    assert_int_equal(never.cancels, 1);
    assert_int_equal(global_type(f->L, "r_v"), LUA_TNIL);
    assert_string_equal(global_string(f->L, "r_err"), "timeout");
}

static void a_wait_woken_done_returns_the_pushed_results(void **state)
{
    fixture_t *f = *state;
    done_t d = {0};
    ev_co_t *co = start(f, "local v = never(); return v + 1", &d);
    assert_int_equal(ev_co_live(), f->live0 + 1);
    assert_int_equal(d.calls, 0); /* waiting */
    assert_ptr_equal(never.co, co);
    ev_co_wake(co, EV_WAKE_DONE);
    assert_int_equal(never.pushes, 1);
    assert_int_equal(never.why, EV_WAKE_DONE);
    assert_int_equal(never.cancels, 0); /* done I/O is not cancelled */
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, LUA_OK);
    assert_int_equal(d.value, 43);
}

static void a_second_wake_during_the_first_is_ignored(void **state)
{
    fixture_t *f = *state;
    done_t d = {0};
    never.rewake = 1; /* push wakes again, as a late I/O callback might */
    ev_co_t *co = start(f, "local v = never(0.05); return v", &d);
    ev_co_wake(co, EV_WAKE_DONE);
    assert_int_equal(never.pushes, 1);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.value, 42);
}

static void a_push_that_raises_resumes_the_body_with_nil_and_the_error(void **state)
{
    fixture_t *f = *state;
    done_t d = {0};
    never.raise = 1;
    ev_co_t *co = start(f, "local v, e = never(); r_v, r_e = v, e; return 1", &d);
    ev_co_wake(co, EV_WAKE_DONE);
    assert_int_equal(never.pushes, 1);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, LUA_OK); /* the body carried on */
    assert_int_equal(global_type(f->L, "r_v"), LUA_TNIL);
    const char *e = global_string(f->L, "r_e");
    if (strncmp(e, "error: ", 7) != 0 || !strstr(e, "cannot decode the reply"))
        fail_msg("unexpected error value: %s", e);
}

static void a_wake_before_the_timeout_disarms_the_timer(void **state)
{
    fixture_t *f = *state;
    done_t d = {0};
    ev_co_t *co = start(f, "return never(0.02)", &d);
    ev_co_wake(co, EV_WAKE_DONE);
    spin(f->base, 0.06); /* past the timeout: it must not fire for a freed coroutine */
    assert_int_equal(never.pushes, 1);
    assert_int_equal(never.why, EV_WAKE_DONE);
    assert_int_equal(never.cancels, 0);
    assert_int_equal(d.calls, 1);
}

static void a_wake_while_the_body_runs_is_ignored(void **state)
{
    fixture_t *f = *state;
    done_t d = {0};
    start(f, "wake_me(); wake_me(); return 7", &d);
    assert_int_equal(never.pushes, 0);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, LUA_OK);
    assert_int_equal(d.value, 7);
}

static void a_body_that_raises_reports_its_error_to_done(void **state)
{
    fixture_t *f = *state;
    done_t d = {0};
    ev_co_t *co = start(f, "never(); error('after wake', 0)", &d);
    ev_co_wake(co, EV_WAKE_DONE);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, LUA_ERRRUN);
    assert_string_equal(d.msg, "after wake");
}

static void a_bare_yield_in_the_body_finishes_it_with_an_error(void **state)
{
    fixture_t *f = *state;
    done_t d = {0};
    start(f, "coroutine.yield('x')", &d);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, LUA_ERRRUN);
    assert_non_null(strstr(d.msg, "without an evently operation"));
}

/* ---- abort ---- */

static void abort_cancels_the_wait_runs_close_and_skips_done(void **state)
{
    fixture_t *f = *state;
    done_t d = {0};
    ev_co_t *co = start(f,
                        "local t <close> = setmetatable({}, {__close = function()\n"
                        "  r_closed = (r_closed or 0) + 1 end})\n"
                        "never(0.02)\n"
                        "r_reached = true\n",
                        &d);
    assert_int_equal(ev_co_live(), f->live0 + 1);
    ev_co_abort(co);
    assert_int_equal(never.cancels, 1);
    assert_int_equal(never.pushes, 0);
    assert_int_equal(global_number(f->L, "r_closed"), 1);
    assert_int_equal(global_type(f->L, "r_reached"), LUA_TNIL);
    assert_int_equal(d.calls, 0);
    assert_int_equal(ev_co_live(), f->live0);
    spin(f->base, 0.04); /* the timeout was disarmed with it */
    assert_int_equal(never.pushes, 0);
    assert_int_equal(never.cancels, 1);
}

static void abort_of_a_sleep_runs_close(void **state)
{
    fixture_t *f = *state;
    done_t d = {0};
    ev_co_t *co =
        start(f,
              "local t <close> = setmetatable({}, {__close = function() r_closed = true end})\n"
              "require('evently.time').sleep(0.02)\n",
              &d);
    ev_co_abort(co); /* sleep has no cancel: only the timer goes */
    assert_int_equal(global_type(f->L, "r_closed"), LUA_TBOOLEAN);
    spin(f->base, 0.04);
    assert_int_equal(d.calls, 0);
}

static void a_coroutine_aborted_inside_xpcall_leaves_no_stale_handler(void **state)
{
    fixture_t *f = *state;
    /* several aborts inside xpcall: were those threads reused, the next error
     * would run a stale stack slot as its handler and read "error in error handling" */
    for (int i = 0; i < 4; i++) {
        done_t d = {0};
        ev_co_t *co = start(f, "xpcall(function() never() end, debug.traceback)", &d);
        ev_co_abort(co);
        assert_int_equal(d.calls, 0);
    }
    for (int i = 0; i < 4; i++) {
        done_t d = {0};
        start(f, "error('plain failure', 0)", &d);
        assert_int_equal(d.calls, 1);
        assert_int_equal(d.status, LUA_ERRRUN);
        assert_string_equal(d.msg, "plain failure");
    }
}

static void no_coroutine_outlives_the_tests(void **state)
{
    (void)state;
    assert_int_equal(ev_co_live(), live_at_start);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(sleep_resumes_with_true_after_at_least_the_delay),
        T(sleep_zero_yields_and_resumes),
        T(sleep_refuses_negative_and_nan_seconds),
        T(two_sleeping_coroutines_interleave),
        T(after_runs_its_function_once_with_its_arguments),
        T(after_runs_even_when_its_handle_is_dropped),
        T(every_runs_repeatedly_until_cancelled),
        T(every_cancelled_from_its_own_body_stops),
        T(every_skips_a_run_while_the_previous_one_still_sleeps),
        T(a_timer_body_that_raises_does_not_stop_the_loop),
        T(sleep_on_the_main_state_raises),
        cmocka_unit_test(sleep_in_a_plain_lua_coroutine_raises_instead_of_crashing),
        T(run_returns_minus_one_when_the_chunk_raises),
        T(run_of_a_bare_yield_fails_instead_of_hanging),
        T(run_of_a_chunk_stuck_on_nothing_returns_and_frees_its_coroutine),
        T(a_wait_that_never_completes_times_out_and_is_cancelled_once),
        T(a_wait_woken_done_returns_the_pushed_results),
        T(a_second_wake_during_the_first_is_ignored),
        T(a_push_that_raises_resumes_the_body_with_nil_and_the_error),
        T(a_wake_before_the_timeout_disarms_the_timer),
        T(a_wake_while_the_body_runs_is_ignored),
        T(a_body_that_raises_reports_its_error_to_done),
        T(a_bare_yield_in_the_body_finishes_it_with_an_error),
        T(abort_cancels_the_wait_runs_close_and_skips_done),
        T(abort_of_a_sleep_runs_close),
        T(a_coroutine_aborted_inside_xpcall_leaves_no_stale_handler),
        cmocka_unit_test(no_coroutine_outlives_the_tests),
    };
    return cmocka_run_group_tests(tests, setup_group, NULL);
}
