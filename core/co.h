/* co.h - the one way a Lua coroutine waits for C-side I/O.
 *
 * Every request, timer callback and script runs in an ev_co_t: a Lua thread
 * anchored in the registry plus the state of the one operation it may be
 * waiting on. A Lua-facing C function that starts I/O does, in this order:
 *
 *     ... check arguments, start the non-blocking operation ...
 *     return ev_co_wait(L, timeout_s, &ops, data);   // yields
 *
 * The libevent callback of that operation stores its result in data and
 * calls ev_co_wake(co, EV_WAKE_DONE). The timer calls ev_co_wake(co,
 * EV_WAKE_TIMEOUT) after ops->cancel has stopped the I/O. Either way
 * ops->push pushes the operation's results onto the coroutine and the one
 * resume point, co_resume() in co.c, runs Lua on. Nothing resumes twice: the
 * first wake clears the wait. ev_co_abort() (client gone, worker stopping)
 * cancels the I/O and closes the thread so its <close> variables run. */
#ifndef EV_CO_H
#define EV_CO_H

#include <lua.h>

struct event_base;

typedef enum { EV_WAKE_DONE, EV_WAKE_TIMEOUT } ev_wake_t;

typedef struct {
    const char *name; /* for debug logs: "sleep", "pg.query" */
    /* pushes the results and returns how many; runs protected on the main
     * thread (values are moved to the coroutine), so it may raise */
    int (*push)(lua_State *L, void *data, ev_wake_t why);
    void (*cancel)(void *data); /* stop the I/O; may be NULL */
    /* called exactly once when the wait is over, after push or after an
     * abort's cancel: frees data; may be NULL */
    void (*release)(void *data);
} ev_wait_ops_t;

typedef struct ev_co ev_co_t;

/* Called once when the coroutine's body returns (status LUA_OK, results on
 * co's stack) or fails (an error status, the error value on co's stack). */
typedef void (*ev_co_done_fn)(ev_co_t *co, lua_State *co_L, int status, void *ud);

/* Creates a coroutine of the main state L; the caller pushes the function and
 * its arguments on ev_co_state() and calls ev_co_start(). */
ev_co_t *ev_co_new(lua_State *L, struct event_base *base, ev_co_done_fn done, void *ud);
lua_State *ev_co_state(ev_co_t *co);
/* The ud given to ev_co_new() when co was made with done, else NULL: lets an
 * owner (the worker) find its own context from a coroutine. */
void *ev_co_owner(const ev_co_t *co, ev_co_done_fn done);
void ev_co_set_tag(ev_co_t *co, const char *tag); /* request id, for logs */
const char *ev_co_tag(const ev_co_t *co);
/* A second label: the matched route, so a request ended from C (deadline,
 * crash) is still counted under its route. */
void ev_co_set_route(ev_co_t *co, const char *route);
const char *ev_co_route(const ev_co_t *co);
/* Runs the body with nargs arguments already pushed after the function. */
void ev_co_start(ev_co_t *co, int nargs);
/* The coroutine running in L, or NULL when L is not one of ours. */
ev_co_t *ev_co_current(lua_State *L);
/* Yields L until woken; timeout_s < 0 means none. Raises if L cannot wait. */
int ev_co_wait(lua_State *L, double timeout_s, const ev_wait_ops_t *ops, void *data);
void ev_co_wake(ev_co_t *co, ev_wake_t why);
/* As ev_co_wake(co, EV_WAKE_DONE), but from the loop's next turn: for wakers
 * that are themselves running Lua (one coroutine waking another). */
void ev_co_wake_later(ev_co_t *co);
void ev_co_abort(ev_co_t *co);
/* Number of live coroutines of this process (for metrics and draining). */
int ev_co_live(void);

#endif
