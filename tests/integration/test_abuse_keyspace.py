"""What one anonymous client can make Redis keep (issue 11): random list
queries, unknown event ids and made-up bearer tokens must not add keys, and a
Redis full of foreign keys must not slow the booking path (no SCAN)."""
import concurrent.futures
import json
import os
import random
import time

import pytest

from api_support import assert_booking_invariants, BASE, book, new_event, problem, sql, start_api
from conftest import run_cli, clean_env


@pytest.fixture(scope="module")
def api():
    srv = start_api("api-keyspace", users=4, prefix="keys")
    yield srv
    assert_booking_invariants(srv)  # nothing the abuse did broke a seat count
    srv.stop_and_check()


def redis(api, *cmd):
    """One Redis command through `evently lua` against the server's Redis."""
    script = os.path.join(api.root, "r.lua")
    with open(script, "w") as f:
        f.write('local redis = require "evently.redis"\nlocal json = require "evently.json"\n'
                'io.write(json.encode({ v = redis.call(table.unpack(arg)) }))\n')
    p = run_cli(["lua", script] + [str(c) for c in cmd], env=clean_env({"EVENTLY_HOME": api.home}))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["v"]


def test_random_queries_ids_and_tokens_add_no_redis_keys(api):
    new_event(api)  # something to list
    before = redis(api, "DBSIZE")
    rnd = random.Random(11)

    def hostile(i):
        word = "%x" % rnd.getrandbits(48)
        statuses = (api.get(BASE + "/events?q=" + word).status,
                    api.get(BASE + "/events/%d" % (10 ** 8 + i)).status,
                    api.get(BASE + "/users/me", headers={"Authorization": "Bearer " + word * 2}).status)
        return statuses
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(hostile, range(600)))
    assert all(r == (200, 404, 401) for r in results), set(results)
    grown = redis(api, "DBSIZE") - before
    assert grown < 20, "1,800 hostile requests left %d keys in Redis" % grown


def test_a_redis_full_of_foreign_keys_does_not_touch_bookings(api):
    """200,000 unrelated keys: bookings still succeed, each invalidation costs
    what it did with an empty keyspace, and the invariants hold."""
    ev = new_event(api, capacity=40)
    t0 = time.time()
    for _ in range(10):
        assert book(api, api.users[0], ev["id"], 1).status == 201
    empty = time.time() - t0
    redis(api, "EVAL", "for i = 1, 200000 do redis.call('SET', 'foreign:' .. i, i) end return 1", 0)
    try:
        t0 = time.time()
        for _ in range(10):
            assert book(api, api.users[1], ev["id"], 1).status == 201
        full = time.time() - t0
        assert full < empty * 3 + 0.5, (empty, full)  # a SCAN per booking would take seconds here
    finally:
        redis(api, "EVAL", "for i = 1, 200000 do redis.call('UNLINK', 'foreign:' .. i) end return 1", 0)
    row = sql(api, """SELECT e.capacity, e.available, (SELECT coalesce(sum(quantity), 0) FROM bookings
        WHERE event_id = e.id AND status = 'confirmed') AS sold FROM events e WHERE e.id = $1""", ev["id"])[0]
    assert row["sold"] == 20 and row["available"] == row["capacity"] - row["sold"]
