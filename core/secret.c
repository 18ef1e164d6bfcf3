/* secret.c - see secret.h. */
#include "secret.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MIN_SECRET 16 /* bytes of EVENTLY_SECRET_KEY: shorter ones are guessable */
#define FILE_HEX   64 /* the generated secret: 32 random bytes, hex */

/* Writes a fresh secret beside path and links it in: link() fails when
 * another process got there first, and nobody ever reads a half-written
 * file. EEXIST is success: that process's secret is the one. */
static int create_secret(const char *path, char *err, size_t errlen)
{
    char tmp[4096], hex[FILE_HEX + 2];
    unsigned char raw[FILE_HEX / 2];
    if (snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid()) >= (int)sizeof tmp)
        return snprintf(err, errlen, "secret: path too long"), -1;
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(hex, sizeof hex, raw, sizeof raw);
    hex[FILE_HEX] = '\n';
    unlink(tmp); /* a leftover of a crash; never follow a planted link */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return snprintf(err, errlen, "secret: cannot create %s: %s", tmp, strerror(errno)), -1;
    int ok = write(fd, hex, FILE_HEX + 1) == FILE_HEX + 1 && fsync(fd) == 0;
    close(fd);
    int linked = ok && (link(tmp, path) == 0 || errno == EEXIST);
    int saved = errno;
    unlink(tmp);
    sodium_memzero(raw, sizeof raw);
    sodium_memzero(hex, sizeof hex);
    if (!linked)
        return snprintf(err, errlen, "secret: cannot write %s: %s", path, strerror(saved)), -1;
    return 0;
}

/* The file's text, which must be ours: a regular file only its owner reads. */
static int read_secret(const char *path, char *buf, size_t cap, size_t *n, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT
                   ? 1
                   : (snprintf(err, errlen, "secret: %s: %s", path, strerror(errno)), -1);
    struct stat st;
    ssize_t got = -1;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && !(st.st_mode & 077))
        got = read(fd, buf, cap);
    close(fd);
    if (got < MIN_SECRET)
        return snprintf(
                   err, errlen,
                   "secret: %s must be a file of at least %d bytes that only its owner can read",
                   path, MIN_SECRET),
               -1;
    *n = (size_t)got;
    return 0;
}

int ev_secret_load(const char *value, const char *home, unsigned char key[EV_SECRET_KEY_BYTES],
                   char *err, size_t errlen)
{
    if (sodium_init() < 0)
        return snprintf(err, errlen, "secret: libsodium failed to start"), -1;
    if (value) {
        if (strlen(value) < MIN_SECRET)
            return snprintf(err, errlen, "EVENTLY_SECRET_KEY must be at least %d characters",
                            MIN_SECRET),
                   -1;
        crypto_hash_sha256(key, (const unsigned char *)value, strlen(value));
        return 0;
    }
    char path[4096], text[1024];
    size_t n = 0;
    if (snprintf(path, sizeof path, "%s/secret", home) >= (int)sizeof path)
        return snprintf(err, errlen, "secret: EVENTLY_HOME path too long"), -1;
    if (mkdir(home, 0755) != 0 && errno != EEXIST) /* external services: nothing made it yet */
        return snprintf(err, errlen, "secret: cannot create %s: %s", home, strerror(errno)), -1;
    int rc = read_secret(path, text, sizeof text, &n, err, errlen);
    if (rc == 1 && (create_secret(path, err, errlen) != 0 ||
                    (rc = read_secret(path, text, sizeof text, &n, err, errlen)) != 0))
        return -1;
    if (rc != 0)
        return -1;
    crypto_hash_sha256(key, (const unsigned char *)text, n);
    sodium_memzero(text, sizeof text);
    return 0;
}
