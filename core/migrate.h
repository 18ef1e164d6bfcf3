/* migrate.h - applies migrations/NNNN_name.sql in order.
 *
 * Each file runs in its own transaction and is recorded in schema_migrations
 * with a SHA-256 checksum; an applied file whose content changed is refused.
 * A Postgres advisory lock serialises instances that start together. Blocking
 * libpq: run before serving, never on a worker's loop. */
#ifndef EV_MIGRATE_H
#define EV_MIGRATE_H

#include <stddef.h>
#include <stdio.h>

/* Applies pending migrations; writes progress lines to out (may be NULL).
 * Returns the number applied, or -1 with a message in err. */
int ev_migrate_up(const char *conninfo, const char *dir, FILE *out, char *err, size_t errlen);
/* Lists applied and pending migrations on out. Returns 0 or -1 with err. */
int ev_migrate_status(const char *conninfo, const char *dir, FILE *out, char *err, size_t errlen);

#endif
