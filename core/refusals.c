/* refusals.c - client addresses a rate limit refused lately (refusals.h).
 *
 * A direct-mapped table: an address has exactly one slot, found by a keyed
 * hash (SipHash, libsodium's crypto_shorthash, with a key drawn per table so
 * nobody can aim addresses at one slot). Putting an address takes its slot
 * from whatever held it; that costs the other address only its shortcut (its
 * next request goes to Lua, which refuses it from its own memory). Lookups
 * and puts are O(1) and the table never grows: many addresses cost nothing
 * but slots. */
#include "refusals.h"

#include <arpa/inet.h>
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KEY_LEN 9 /* family, then 4 (IPv4) or 8 (an IPv6 /64) bytes */

typedef struct {
    unsigned char key[KEY_LEN];
    double until; /* monotonic seconds: may retry then */
} slot_t;

struct ev_refusals {
    slot_t *slots;
    size_t mask;
    unsigned char hash_key[crypto_shorthash_KEYBYTES];
};

ev_refusals_t *ev_refusals_new(size_t want)
{
    size_t n = 1;
    while (n < want && n < ((size_t)1 << 24))
        n <<= 1;
    ev_refusals_t *r = calloc(1, sizeof *r);
    if (!r || sodium_init() < 0 || !(r->slots = calloc(n, sizeof *r->slots))) {
        free(r);
        return NULL;
    }
    r->mask = n - 1;
    randombytes_buf(r->hash_key, sizeof r->hash_key);
    return r;
}

void ev_refusals_free(ev_refusals_t *r)
{
    if (!r)
        return;
    free(r->slots);
    free(r);
}

void ev_refusals_clear(ev_refusals_t *r) { memset(r->slots, 0, (r->mask + 1) * sizeof *r->slots); }

/* The key of an IPv4 address, or of the /64 of an IPv6 one (an IPv4-mapped
 * IPv6 address is its IPv4 address, as limit.address reads it). */
static int key_of(const char *text, size_t len, unsigned char key[KEY_LEN])
{
    char buf[INET6_ADDRSTRLEN];
    unsigned char a[16];
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, text, len);
    buf[len] = '\0';
    memset(key, 0, KEY_LEN);
    if (inet_pton(AF_INET, buf, a) == 1) {
        key[0] = 4;
        memcpy(key + 1, a, 4);
        return 0;
    }
    if (inet_pton(AF_INET6, buf, a) != 1)
        return -1;
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a, mapped, sizeof mapped) == 0) {
        key[0] = 4;
        memcpy(key + 1, a + 12, 4);
    } else {
        key[0] = 6;
        memcpy(key + 1, a, 8);
    }
    return 0;
}

/* limit.address form: an IPv6 prefix ends in "/64" */
static int address_key(const char *address, unsigned char key[KEY_LEN])
{
    size_t len = strlen(address);
    if (len > 3 && strcmp(address + len - 3, "/64") == 0) {
        if (!memchr(address, ':', len))
            return -1;
        len -= 3;
    } else if (memchr(address, ':', len)) {
        return -1; /* limit.address never gives a whole IPv6 address */
    }
    return key_of(address, len, key);
}

static slot_t *slot_for(ev_refusals_t *r, const unsigned char key[KEY_LEN])
{
    uint64_t h;
    crypto_shorthash((unsigned char *)&h, key, KEY_LEN, r->hash_key);
    return &r->slots[h & r->mask];
}

int ev_refusals_put(ev_refusals_t *r, const char *address, double retry, double now)
{
    unsigned char key[KEY_LEN];
    if (address_key(address, key) != 0)
        return -1;
    slot_t *s = slot_for(r, key);
    memcpy(s->key, key, KEY_LEN);
    s->until = now + retry;
    return 0;
}

void ev_refusals_forget(ev_refusals_t *r, const char *address)
{
    unsigned char key[KEY_LEN];
    if (address_key(address, key) != 0)
        return;
    slot_t *s = slot_for(r, key);
    if (memcmp(s->key, key, KEY_LEN) == 0)
        memset(s, 0, sizeof *s);
}

int ev_refusals_get(ev_refusals_t *r, const char *peer, double now, double *retry)
{
    unsigned char key[KEY_LEN];
    if (!peer || key_of(peer, strlen(peer), key) != 0)
        return 0;
    slot_t *s = slot_for(r, key);
    if (memcmp(s->key, key, KEY_LEN) != 0 || now >= s->until)
        return 0;
    *retry = s->until - now;
    return 1;
}
