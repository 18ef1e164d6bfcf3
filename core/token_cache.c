/* token_cache.c - recently validated bearer tokens (see token_cache.h).
 *
 * Design. A chained hash of entries keyed by a digest of the token, never
 * the token itself: BLAKE2b-256 (libsodium crypto_generichash) keyed with a
 * random per-cache key. Why hashed rather than compared in the clear:
 *   - the table holds no bearer secret (a core dump or a stray read shows
 *     digests that mean nothing outside this process);
 *   - a lookup compares digests of the presented token, whose bytes a caller
 *     cannot steer towards a stored one (keyed hash), so how long a compare
 *     takes says nothing about any stored token; the compare itself is
 *     sodium_memcmp (constant time) all the same;
 *   - the bucket index comes from the same keyed digest, so nobody can craft
 *     tokens that all land in one chain.
 * A BLAKE2b of a 43-byte token costs a fraction of a microsecond, far below
 * what it saves (a Lua coroutine).
 *
 * Size is bounded: a put into a full cache first sweeps out expired entries,
 * and if every entry is still fresh it is refused (the caller just goes the
 * slow way). Expired entries found on a lookup are freed there. */
#include "token_cache.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DIGEST 32

typedef struct token_entry {
    unsigned char digest[DIGEST];
    int64_t user_id;
    double until;
    struct token_entry *next;
} token_entry_t;

struct ev_token_cache {
    unsigned char key[crypto_generichash_KEYBYTES];
    size_t max, count, nbuckets; /* nbuckets: a power of two */
    token_entry_t **buckets;
};

double ev_token_cache_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

ev_token_cache_t *ev_token_cache_new(size_t max_entries)
{
    if (sodium_init() < 0 || max_entries == 0)
        return NULL;
    ev_token_cache_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->max = max_entries;
    c->nbuckets = 64;
    while (c->nbuckets < max_entries / 2)
        c->nbuckets *= 2;
    c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
    if (!c->buckets) {
        free(c);
        return NULL;
    }
    randombytes_buf(c->key, sizeof c->key);
    return c;
}

static void digest_of(const ev_token_cache_t *c, const char *token, size_t len,
                      unsigned char out[DIGEST])
{
    crypto_generichash(out, DIGEST, (const unsigned char *)token, len, c->key, sizeof c->key);
}

static size_t bucket_of(const ev_token_cache_t *c, const unsigned char d[DIGEST])
{
    uint64_t h;
    memcpy(&h, d, sizeof h);
    return (size_t)h & (c->nbuckets - 1);
}

/* The link that points at the entry for d (or the chain's end). */
static token_entry_t **link_of(ev_token_cache_t *c, const unsigned char d[DIGEST])
{
    token_entry_t **p = &c->buckets[bucket_of(c, d)];
    while (*p && sodium_memcmp((*p)->digest, d, DIGEST) != 0)
        p = &(*p)->next;
    return p;
}

static void unlink_entry(ev_token_cache_t *c, token_entry_t **p)
{
    token_entry_t *e = *p;
    *p = e->next;
    sodium_memzero(e, sizeof *e);
    free(e);
    c->count--;
}

static void sweep_expired(ev_token_cache_t *c, double now)
{
    for (size_t b = 0; b < c->nbuckets; b++) {
        token_entry_t **p = &c->buckets[b];
        while (*p) {
            if ((*p)->until <= now)
                unlink_entry(c, p);
            else
                p = &(*p)->next;
        }
    }
}

int ev_token_cache_put(ev_token_cache_t *c, const char *token, size_t len, int64_t user_id,
                       double ttl, double now)
{
    unsigned char d[DIGEST];
    digest_of(c, token, len, d);
    token_entry_t **p = link_of(c, d);
    if (!*p) {
        if (c->count >= c->max) {
            sweep_expired(c, now);
            if (c->count >= c->max)
                return -1;
            p = link_of(c, d); /* the sweep may have changed the chain */
        }
        token_entry_t *e = calloc(1, sizeof *e);
        if (!e)
            return -1;
        memcpy(e->digest, d, DIGEST);
        e->next = NULL;
        *p = e;
        c->count++;
    }
    (*p)->user_id = user_id;
    (*p)->until = now + ttl;
    return 0;
}

int ev_token_cache_get(ev_token_cache_t *c, const char *token, size_t len, double now,
                       int64_t *user_id)
{
    unsigned char d[DIGEST];
    digest_of(c, token, len, d);
    token_entry_t **p = link_of(c, d);
    if (!*p)
        return 0;
    if ((*p)->until <= now) {
        unlink_entry(c, p);
        return 0;
    }
    if (user_id)
        *user_id = (*p)->user_id;
    return 1;
}

void ev_token_cache_drop(ev_token_cache_t *c, const char *token, size_t len)
{
    unsigned char d[DIGEST];
    digest_of(c, token, len, d);
    token_entry_t **p = link_of(c, d);
    if (*p)
        unlink_entry(c, p);
}

void ev_token_cache_clear(ev_token_cache_t *c)
{
    for (size_t b = 0; b < c->nbuckets; b++)
        while (c->buckets[b])
            unlink_entry(c, &c->buckets[b]);
}

size_t ev_token_cache_count(const ev_token_cache_t *c) { return c->count; }

void ev_token_cache_free(ev_token_cache_t *c)
{
    if (!c)
        return;
    ev_token_cache_clear(c);
    free(c->buckets);
    sodium_memzero(c->key, sizeof c->key);
    free(c);
}
