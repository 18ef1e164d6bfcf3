/* gate.c - the sold-out gate (see gate.h): a small chained hash of
 * (pool, key) -> closed until / largest refused quantity / reopen count.
 * Entries are few (pools that sold out lately) and live as long as the
 * worker; an expired closing is just ignored. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gate.h"

#define BUCKETS 1024
#define POOL_MAX 63

typedef struct entry {
    char pool[POOL_MAX + 1];
    int64_t key;
    double until;       /* monotonic seconds; closed while now < until */
    int max_quantity;
    unsigned changes;
    struct entry *next;
} entry_t;

static entry_t *table[BUCKETS];
static unsigned long long refusals;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static unsigned bucket(const char *pool, int64_t key)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a over the name, then the key */
    for (const unsigned char *p = (const unsigned char *)pool; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    h ^= (uint64_t)key * 0x9E3779B97F4A7C15ULL;
    return (unsigned)(h ^ (h >> 32)) % BUCKETS;
}

static entry_t *find(const char *pool, int64_t key, int create)
{
    unsigned b = bucket(pool, key);
    for (entry_t *e = table[b]; e; e = e->next)
        if (e->key == key && strcmp(e->pool, pool) == 0)
            return e;
    if (!create || strlen(pool) > POOL_MAX)
        return NULL;
    entry_t *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    strcpy(e->pool, pool);
    e->key = key;
    e->next = table[b];
    table[b] = e;
    return e;
}

void ev_gate_close(const char *pool, int64_t key, int max_quantity, double seconds)
{
    entry_t *e = find(pool, key, 1);
    if (!e)
        return; /* out of memory or a name too long: the gate just stays open */
    e->until = now() + seconds;
    e->max_quantity = max_quantity;
}

void ev_gate_open(const char *pool, int64_t key)
{
    entry_t *e = find(pool, key, 1);
    if (!e)
        return;
    e->until = 0;
    e->changes++;
}

int ev_gate_closed(const char *pool, int64_t key, int quantity)
{
    entry_t *e = find(pool, key, 0);
    if (!e || e->until == 0)
        return 0;
    if (e->until <= now()) {
        e->until = 0;
        return 0;
    }
    return quantity <= e->max_quantity;
}

unsigned ev_gate_changes(const char *pool, int64_t key)
{
    entry_t *e = find(pool, key, 0);
    return e ? e->changes : 0;
}

unsigned long long ev_gate_refusals(void) { return refusals; }
void ev_gate_count_refusal(void) { refusals++; }

void ev_gate_reset(void)
{
    for (unsigned b = 0; b < BUCKETS; b++) {
        entry_t *e = table[b];
        while (e) {
            entry_t *next = e->next;
            free(e);
            e = next;
        }
        table[b] = NULL;
    }
    refusals = 0;
}
