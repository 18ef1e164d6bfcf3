/* slice.c - see slice.h.
 *
 * Why a signal and not a count hook on every coroutine: a count hook makes
 * the interpreter take its slow path on every instruction of every request.
 * Here the hot path pays two stores per resume; the tick (every TICK_MS) only
 * counts, and installs the hook in the one thread that overran. lua_sethook
 * is documented as safe to call from a signal handler. */
#define _GNU_SOURCE /* SIGEV_THREAD_ID, gettid */
#include "slice.h"

#include <errno.h>
#include <lauxlib.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define TICK_MS 50
#define GIVE_UP_TICKS 20 /* 1 s past twice the limit: the worker ends itself */

static lua_State *volatile current;       /* the thread of the slice running now */
static volatile sig_atomic_t ticks;        /* ticks seen during it */
static int limit_ticks;
static int limit_ms;
static lua_State *volatile stopped;        /* the last thread stopped */
static timer_t timer;
static int armed;

static void stop_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    stopped = L;
    luaL_error(L, "script ran %d ms without yielding: stopped", limit_ms);
}

static void on_tick(int sig)
{
    (void)sig;
    lua_State *L = current;
    if (!L || ++ticks < limit_ticks)
        return;
    if (ticks >= 2 * limit_ticks + GIVE_UP_TICKS) {
        /* Still running: Lua runs no hooks inside a hook's own error handling
         * (an xpcall message handler that loops), so nothing in this process
         * can stop it. The worker ends; the master starts another. */
        static const char msg[] = "evently: a script kept running after it was stopped; "
                                  "ending this worker\n";
        ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)ignored;
        _exit(70);
    }
    /* count 1: raise at the next instruction, and keep raising until the
     * thread has unwound (a pcall in the script cannot keep it going) */
    lua_sethook(L, stop_hook, LUA_MASKCOUNT, 1);
}

int ev_slice_start(int ms)
{
    if (ms <= 0 || armed)
        return 0;
    limit_ms = ms;
    limit_ticks = (ms + TICK_MS - 1) / TICK_MS + 1; /* a tick may come right after enter */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_tick;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGRTMIN, &sa, NULL) != 0)
        return -1;
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID; /* the loop's thread, never a library's */
    sev.sigev_signo = SIGRTMIN;
    sev._sigev_un._tid = gettid();
    if (timer_create(CLOCK_MONOTONIC, &sev, &timer) != 0)
        return -1;
    struct itimerspec its = {{0, TICK_MS * 1000000L}, {0, TICK_MS * 1000000L}};
    if (timer_settime(timer, 0, &its, NULL) != 0) {
        timer_delete(timer);
        return -1;
    }
    armed = 1;
    return 0;
}

void ev_slice_stop(void)
{
    if (!armed)
        return;
    timer_delete(timer);
    signal(SIGRTMIN, SIG_IGN);
    armed = 0;
}

lua_State *ev_slice_enter(lua_State *L)
{
    lua_State *outer = current;
    ticks = 0;
    current = L;
    return outer;
}

/* A resume can run inside another (a coroutine woken from a C call): the
 * outer slice goes on being watched when the inner one ends. */
void ev_slice_leave(lua_State *outer) { current = outer; }

int ev_slice_stopped(lua_State *L) { return L && stopped == L; }

void ev_slice_forget(lua_State *L)
{
    if (stopped == L) {
        lua_sethook(L, NULL, 0, 0);
        stopped = NULL;
    }
}
