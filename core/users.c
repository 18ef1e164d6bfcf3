/* users.c - see users.h. The hash is libsodium's crypto_pwhash_str (argon2id,
 * interactive limits), the same string the Lua side verifies. */
#include "users.h"

#include <libpq-fe.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int email_ok(const char *e)
{
    const char *at = strchr(e, '@');
    return at && at != e && strchr(at, '.') && strlen(e) <= 254 && !strpbrk(e, " \t\r\n");
}

int ev_users_create(const char *conninfo, const char *email, const char *password,
                    const char *name, const char *role, long long *id, char *err, size_t errlen)
{
    char hash[crypto_pwhash_STRBYTES];
    PGconn *db = NULL;
    PGresult *res = NULL;
    int rc = -1;
    if (!email_ok(email)) {
        snprintf(err, errlen, "email: not an email address");
        return -1;
    }
    if (strlen(password) < 8) {
        snprintf(err, errlen, "password: at least 8 characters");
        return -1;
    }
    if (sodium_init() < 0 ||
        crypto_pwhash_str(hash, password, strlen(password), crypto_pwhash_OPSLIMIT_INTERACTIVE,
                          crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0) {
        snprintf(err, errlen, "cannot hash the password (out of memory?)");
        return -1;
    }
    db = PQconnectdb(conninfo);
    if (PQstatus(db) != CONNECTION_OK) {
        snprintf(err, errlen, "database: %s", PQerrorMessage(db));
        goto done;
    }
    const char *params[] = {email, name && *name ? name : email, hash, role};
    res = PQexecParams(db,
                       "INSERT INTO users (email, name, password_hash, role) "
                       "VALUES (lower($1), $2, $3, $4) RETURNING id",
                       4, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state && strcmp(state, "23505") == 0)
            snprintf(err, errlen, "a user with email %s already exists", email);
        else
            snprintf(err, errlen, "database: %s", PQresultErrorMessage(res));
        goto done;
    }
    *id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    rc = 0;
done:
    sodium_memzero(hash, sizeof hash);
    PQclear(res);
    PQfinish(db);
    return rc;
}
