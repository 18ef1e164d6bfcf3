/* secret.h - the instance secret that signs what evently keeps outside
 * itself (Redis: cached tokens and pages, sold-out marks), so whoever can
 * write a Redis key still cannot make evently believe it.
 *
 * EVENTLY_SECRET_KEY when set (every instance of one deployment must share it, or
 * each only trusts what it wrote itself); otherwise $EVENTLY_HOME/secret,
 * 32 random bytes (hex) made on first use, mode 0600. The key is the SHA-256
 * of that text. Loaded lazily by the first signature a worker makes. */
#ifndef EV_SECRET_H
#define EV_SECRET_H

#include <stddef.h>

#define EV_SECRET_KEY_BYTES 32

/* 0 and key filled, or -1 and why in err. value may be NULL. */
int ev_secret_load(const char *value, const char *home, unsigned char key[EV_SECRET_KEY_BYTES],
                   char *err, size_t errlen);

#endif
