/* slice.h - a script that runs too long without yielding is stopped.
 *
 * Every coroutine resume is a slice of the worker's loop: while it runs,
 * nothing else in the worker is served. ev_slice_start() arms a periodic
 * tick (a signal to the loop's thread); co.c brackets each resume with
 * ev_slice_enter()/ev_slice_leave(). A slice that outlives the limit gets a
 * hook that raises at its next instruction and at every one after, so the
 * coroutine unwinds even through pcall; ev_slice_stopped() then says so. */
#ifndef EV_SLICE_H
#define EV_SLICE_H

#include <lua.h>

/* limit_ms <= 0: no limit. 0 on success, -1 (errno) if the tick cannot start. */
int ev_slice_start(int limit_ms);
void ev_slice_stop(void);
/* enter returns the slice it interrupts (or NULL); pass it to leave */
lua_State *ev_slice_enter(lua_State *L);
void ev_slice_leave(lua_State *outer);
/* 1 if L's run was stopped for running too long (the flag stays with L). */
int ev_slice_stopped(lua_State *L);
/* Clears what a stop left on L (its hook), for a thread that is reused. */
void ev_slice_forget(lua_State *L);

#endif
