/* lua_kafka.c - evently.kafka.core: the Kafka client of a worker.
 *
 *   core.enabled()                      true when EVENTLY_KAFKA_BROKERS is set
 *   core.produce(msgs, timeout)         [yields] msgs: array of
 *       {topic=, key=, value=, headers={name=value}}; queued in order, then
 *       waits for every delivery report: true, partition, offset (of the
 *       last), or nil, err (the first failure; others may have been written)
 *   core.consumer(group, {topics})      a group member (subscribed at once)
 *     c:poll(timeout)                   [yields] the next message
 *       {topic, partition, offset, key, value, headers, timestamp}, or
 *       nil, "timeout"
 *     c:drain(max)                      the messages already queued (up to max), no wait
 *     c:store(msg)                      msg is done: commit past it
 *     c:stats()                         librdkafka's latest statistics JSON, or nil
 *     c:close()                         commit what was stored, leave the group
 * The producer is one per worker, created on first use from
 * EVENTLY_KAFKA_BROKERS and flushed when the worker stops. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "co.h"
#include "kafka.h"
#include "log.h"
#include "runtime.h"

#define CONSUMER_MT "evently.kafka.consumer"
#define MAX_HEADERS 16

/* ---- produce: one wait for a whole batch of delivery reports */

typedef struct {
    ev_co_t *co;     /* NULL once the waiter is gone */
    int outstanding; /* delivery reports still due */
    int released;    /* the wait is over: the last report frees us */
    char err[200];
    int32_t partition;
    int64_t offset;
} batch_t;

static void batch_dr(void *ud, const char *err, int32_t partition, int64_t offset)
{
    batch_t *b = ud;
    if (err && !b->err[0])
        snprintf(b->err, sizeof b->err, "%s", err);
    b->partition = partition;
    b->offset = offset;
    if (--b->outstanding > 0)
        return;
    if (b->released)
        free(b);
    else if (b->co)
        ev_co_wake_later(b->co); /* we are inside rd_kafka_poll: resume Lua outside it */
}

static int batch_push(lua_State *L, void *data, ev_wake_t why)
{
    batch_t *b = data;
    if (why == EV_WAKE_TIMEOUT) {
        lua_pushnil(L);
        lua_pushliteral(L, "timeout: no delivery report in time");
        return 2;
    }
    if (b->err[0]) {
        lua_pushnil(L);
        lua_pushstring(L, b->err);
        return 2;
    }
    lua_pushboolean(L, 1);
    lua_pushinteger(L, b->partition);
    lua_pushinteger(L, b->offset);
    return 3;
}

static void batch_cancel(void *data)
{
    ((batch_t *)data)->co = NULL;
}

static void batch_release(void *data)
{
    batch_t *b = data;
    b->co = NULL;
    if (b->outstanding == 0)
        free(b);
    else
        b->released = 1;
}

static const ev_wait_ops_t batch_ops = {"kafka.produce", batch_push, batch_cancel, batch_release};

/* EVENTLY_KAFKA_* properties (config.h), for every client of the worker. */
static ev_kafka_props_t props_of(const ev_config_t *cfg)
{
    return (ev_kafka_props_t){(const char *const *)cfg->kafka_prop_names,
                              (const char *const *)cfg->kafka_prop_values, cfg->nkafka_props};
}

static ev_kafka_t *producer(lua_State *L)
{
    ev_runtime_t *rt = ev_runtime_get(L);
    char err[256];
    if (rt->kafka && ev_kafka_fatal(rt->kafka, err, sizeof err)) {
        ev_warn("kafka: producer failed for good (%s); starting a new one", err);
        ev_kafka_free(rt->kafka, 0); /* its undelivered messages are reported failed */
        rt->kafka = NULL;
    }
    if (rt->kafka)
        return rt->kafka;
    if (!rt->cfg->kafka_brokers)
        luaL_error(L, "kafka: no brokers configured (EVENTLY_KAFKA_BROKERS)");
    ev_kafka_props_t props = props_of(rt->cfg);
    rt->kafka = ev_kafka_producer_new(rt->base, rt->cfg->kafka_brokers, &props, err, sizeof err);
    if (!rt->kafka)
        luaL_error(L, "kafka: %s", err);
    return rt->kafka;
}

/* Reads msgs[i].headers into h (pointers into the Lua strings, which stay
 * on the stack's table while we produce). */
static int read_headers(lua_State *L, int msg, ev_kafka_header_t *h)
{
    int n = 0;
    lua_getfield(L, msg, "headers");
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (n == MAX_HEADERS || lua_type(L, -2) != LUA_TSTRING ||
                lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "kafka.produce: headers must be at most %d string=string pairs",
                           MAX_HEADERS);
            h[n].name = lua_tostring(L, -2);
            h[n].value = lua_tolstring(L, -1, &h[n].len);
            n++;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return n;
}

/* Everything is checked before anything is queued: a bad message raises
 * with nothing half-sent. */
static void check_message(lua_State *L, lua_Integer i)
{
    ev_kafka_header_t h[MAX_HEADERS];
    if (lua_geti(L, 1, i) != LUA_TTABLE)
        luaL_error(L, "kafka.produce: message %d is not a table", (int)i);
    int msg = lua_gettop(L);
    int tt = lua_getfield(L, msg, "topic"), kt = lua_getfield(L, msg, "key");
    int vt = lua_getfield(L, msg, "value");
    if (tt != LUA_TSTRING || lua_rawlen(L, -3) == 0 || vt != LUA_TSTRING ||
        (kt != LUA_TSTRING && kt != LUA_TNIL))
        luaL_error(L, "kafka.produce: message %d needs topic and value strings (key optional)",
                   (int)i);
    read_headers(L, msg, h);
    lua_settop(L, msg - 1);
}

static int produce_one(lua_State *L, ev_kafka_t *k, lua_Integer i, batch_t *b, char *err,
                       size_t errlen)
{
    ev_kafka_header_t h[MAX_HEADERS];
    lua_geti(L, 1, i);
    int msg = lua_gettop(L);
    lua_getfield(L, msg, "topic");
    lua_getfield(L, msg, "key");
    lua_getfield(L, msg, "value");
    size_t klen = 0, vlen;
    const char *topic = lua_tostring(L, -3);
    const char *key = lua_isnil(L, -2) ? NULL : lua_tolstring(L, -2, &klen);
    const char *value = lua_tolstring(L, -1, &vlen);
    int nh = read_headers(L, msg, h);
    int rc = ev_kafka_produce(k, topic, key, klen, value, vlen, h, nh, batch_dr, b, err, errlen);
    lua_settop(L, msg - 1);
    return rc;
}

static int l_produce(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    double timeout = luaL_optnumber(L, 2, 35);
    lua_Integer n = luaL_len(L, 1);
    if (n < 1)
        return luaL_error(L, "kafka.produce: no messages");
    for (lua_Integer i = 1; i <= n; i++)
        check_message(L, i);
    ev_co_t *co = ev_co_current(L);
    /* checked before anything is queued: ev_co_wait would raise after it */
    if (!co || !lua_isyieldable(L))
        return luaL_error(L,
                          "kafka.produce must be called from a request, timer or script coroutine");
    ev_kafka_t *k = producer(L);
    batch_t *b = calloc(1, sizeof *b);
    if (!b)
        return luaL_error(L, "out of memory");
    char err[200];
    for (lua_Integer i = 1; i <= n; i++) {
        b->outstanding++; /* before produce: a report cannot arrive before we return */
        if (produce_one(L, k, i, b, err, sizeof err) != 0) {
            if (--b->outstanding == 0)
                free(b);
            else /* earlier ones are queued: the last of their reports frees b */
                b->released = 1;
            lua_pushnil(L);
            lua_pushfstring(L, "kafka: %s", err);
            return 2;
        }
    }
    b->co = co;
    lua_settop(L, 0);
    return ev_co_wait(L, timeout, &batch_ops, b);
}

/* ---- consumers */

typedef struct {
    ev_kafka_t *k;
    ev_co_t *waiter;
    rd_kafka_message_t *got;
} consumer_t;

static consumer_t *check_consumer(lua_State *L)
{
    consumer_t *c = luaL_checkudata(L, 1, CONSUMER_MT);
    if (!c->k)
        luaL_error(L, "kafka consumer is closed");
    return c;
}

static void on_ready(void *ud)
{
    consumer_t *c = ud;
    if (!c->waiter || c->got)
        return;
    if ((c->got = ev_kafka_next(c->k)))
        ev_co_wake_later(c->waiter);
}

static void push_message(lua_State *L, const rd_kafka_message_t *m)
{
    lua_createtable(L, 0, 8);
    lua_pushstring(L, rd_kafka_topic_name(m->rkt));
    lua_setfield(L, -2, "topic");
    lua_pushinteger(L, m->partition);
    lua_setfield(L, -2, "partition");
    lua_pushinteger(L, m->offset);
    lua_setfield(L, -2, "offset");
    if (m->key) {
        lua_pushlstring(L, m->key, m->key_len);
        lua_setfield(L, -2, "key");
    }
    lua_pushlstring(L, m->payload ? m->payload : "", m->payload ? m->len : 0);
    lua_setfield(L, -2, "value");
    lua_pushinteger(L, rd_kafka_message_timestamp(m, NULL));
    lua_setfield(L, -2, "timestamp");
    lua_newtable(L);
    rd_kafka_headers_t *hdrs = NULL;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char *name;
        const void *value;
        size_t len;
        for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &value, &len) == 0; i++) {
            lua_pushlstring(L, value ? value : "", value ? len : 0);
            lua_setfield(L, -2, name);
        }
    }
    lua_setfield(L, -2, "headers");
}

static int poll_push(lua_State *L, void *data, ev_wake_t why)
{
    consumer_t *c = data;
    if (why == EV_WAKE_TIMEOUT || !c->got) {
        lua_pushnil(L);
        lua_pushliteral(L, "timeout");
        return 2;
    }
    rd_kafka_message_t *m = c->got;
    c->got = NULL;
    push_message(L, m); /* may raise (memory): m is ours either way */
    rd_kafka_message_destroy(m);
    return 1;
}

static void poll_cancel(void *data)
{
    ((consumer_t *)data)->waiter = NULL;
}

static void poll_release(void *data)
{
    consumer_t *c = data;
    c->waiter = NULL;
    if (c->got) { /* aborted after a message came: it was never handled */
        rd_kafka_message_destroy(c->got);
        c->got = NULL;
    }
}

static const ev_wait_ops_t poll_ops = {"kafka.poll", poll_push, poll_cancel, poll_release};

static int c_poll(lua_State *L)
{
    consumer_t *c = check_consumer(L);
    double timeout = luaL_optnumber(L, 2, 1);
    if (c->waiter)
        return luaL_error(L, "kafka consumer: another coroutine is polling it");
    rd_kafka_message_t *m = ev_kafka_next(c->k);
    if (m) {
        push_message(L, m);
        rd_kafka_message_destroy(m);
        return 1;
    }
    ev_co_t *co = ev_co_current(L);
    if (!co || !lua_isyieldable(L))
        return luaL_error(L, "kafka poll must be called from a request, timer or script coroutine");
    c->waiter = co;
    lua_settop(L, 1); /* the consumer stays alive while we wait on it */
    return ev_co_wait(L, timeout, &poll_ops, c);
}

/* c:drain(max): the messages already queued, up to max, without waiting. */
static int c_drain(lua_State *L)
{
    consumer_t *c = check_consumer(L);
    lua_Integer max = luaL_checkinteger(L, 2);
    lua_newtable(L);
    for (lua_Integer i = 1; i <= max; i++) {
        rd_kafka_message_t *m = ev_kafka_next(c->k);
        if (!m)
            break;
        push_message(L, m); /* a raise here leaks m: only on out of memory */
        rd_kafka_message_destroy(m);
        lua_rawseti(L, -2, i);
    }
    return 1;
}

static int c_store(lua_State *L)
{
    consumer_t *c = check_consumer(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "topic");
    lua_getfield(L, 2, "partition");
    lua_getfield(L, 2, "offset");
    const char *topic = luaL_checkstring(L, -3);
    int32_t partition = (int32_t)luaL_checkinteger(L, -2);
    int64_t offset = luaL_checkinteger(L, -1);
    lua_pushboolean(L, ev_kafka_store(c->k, topic, partition, offset) == 0);
    return 1;
}

static int c_stats(lua_State *L)
{
    consumer_t *c = check_consumer(L);
    const char *json = ev_kafka_stats(c->k);
    if (json)
        lua_pushstring(L, json);
    else
        lua_pushnil(L);
    return 1;
}

static int c_close(lua_State *L)
{
    consumer_t *c = luaL_checkudata(L, 1, CONSUMER_MT);
    if (c->waiter)
        return luaL_error(L, "kafka consumer: cannot close while a poll is waiting");
    if (c->k) {
        ev_kafka_free(c->k, 0);
        c->k = NULL;
    }
    return 0;
}

/* At lua_close a poll may still be waiting: the loop no longer runs, so
 * its wait can never fire and closing here is safe (and commits). */
static int c_gc(lua_State *L)
{
    consumer_t *c = luaL_checkudata(L, 1, CONSUMER_MT);
    if (c->got)
        rd_kafka_message_destroy(c->got);
    c->got = NULL;
    if (c->k)
        ev_kafka_free(c->k, 0);
    c->k = NULL;
    return 0;
}

static int l_consumer(lua_State *L)
{
    const char *group = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    ev_runtime_t *rt = ev_runtime_get(L);
    if (!rt->cfg->kafka_brokers)
        return luaL_error(L, "kafka: no brokers configured (EVENTLY_KAFKA_BROKERS)");
    const char *topics[16];
    int n = (int)luaL_len(L, 2);
    if (n < 1 || n > 16)
        return luaL_error(L, "kafka.consumer: 1 to 16 topics");
    for (int i = 0; i < n; i++) {
        lua_geti(L, 2, i + 1);
        topics[i] = luaL_checkstring(L, -1); /* anchored by the table at 2 */
        lua_pop(L, 1);
    }
    consumer_t *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    luaL_setmetatable(L, CONSUMER_MT);
    char err[256];
    ev_kafka_props_t props = props_of(rt->cfg);
    c->k = ev_kafka_consumer_new(rt->base, rt->cfg->kafka_brokers, &props, group, topics, n, err,
                                 sizeof err);
    if (!c->k)
        return luaL_error(L, "kafka: %s", err);
    ev_kafka_on_ready(c->k, on_ready, c);
    return 1;
}

static int l_enabled(lua_State *L)
{
    lua_pushboolean(L, ev_runtime_get(L)->cfg->kafka_brokers != NULL);
    return 1;
}

int luaopen_evently_kafka_core(lua_State *L)
{
    static const luaL_Reg consumer_methods[] = {{"poll", c_poll},   {"drain", c_drain},
                                                {"store", c_store}, {"stats", c_stats},
                                                {"close", c_close}, {NULL, NULL}};
    luaL_newmetatable(L, CONSUMER_MT);
    luaL_newlib(L, consumer_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, c_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {
        {"enabled", l_enabled}, {"produce", l_produce}, {"consumer", l_consumer}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
