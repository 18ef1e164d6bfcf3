/* users.h - accounts from the command line (`evently user create`).
 *
 * The HTTP API registers users from Lua; this is the one way to make an
 * admin, since no client body may carry a role. Blocking libpq: CLI only. */
#ifndef EV_USERS_H
#define EV_USERS_H

#include <stddef.h>

/* Hashes password with argon2id and inserts the user; -1 with err on a bad
 * email, a short password (< 8) or a duplicate email. */
int ev_users_create(const char *conninfo, const char *email, const char *password,
                    const char *name, const char *role, long long *id, char *err, size_t errlen);

#endif
