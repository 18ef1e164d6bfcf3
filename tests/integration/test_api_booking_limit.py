"""The operator's "max tickets per user per event" (scripts/rules/booking.lua
max_per_user): exact under concurrency, given back by cancellations, counted
for waitlist conversions, and changed live by a reload."""
import concurrent.futures
import os
import re
import shutil
import signal
import time

import pytest

from api_support import BASE, SCRIPTS, book, new_event, problem, sql, start_api
from conftest import make_root
from test_api_waitlist import join, entries

LIMIT = 4


def set_limit(scripts, value):
    path = os.path.join(scripts, "rules", "booking.lua")
    with open(path) as f:
        src = f.read()
    src, n = re.subn(r"max_per_user = [^,]*,", "max_per_user = %s," % value, src)
    assert n == 1
    with open(path + ".tmp", "w") as f:
        f.write(src)
    os.replace(path + ".tmp", path)


@pytest.fixture(scope="module")
def api():
    scripts = os.path.join(make_root("limit-scripts"), "scripts")
    shutil.copytree(SCRIPTS, scripts)
    set_limit(scripts, LIMIT)
    srv = start_api("api-limit", users=8, prefix="lim", scripts=scripts)
    srv.scripts = scripts
    yield srv
    srv.stop_and_check()


def held(api, event_id, who_index):
    uid = api.get(BASE + "/users/me", headers=api.users[who_index]).json()["id"]
    return sql(api, """SELECT coalesce(sum(quantity), 0) AS n FROM bookings
                       WHERE event_id = $1 AND user_id = $2 AND status = 'confirmed'""", event_id, uid)[0]["n"]


def fire(api, event_id, asks):
    def attempt(a):
        who, q, headers = a
        r = book(api, dict(api.users[who], **headers), event_id, q)
        return r.status, (r.json() if r.status in (201, 409) else r.text)
    with concurrent.futures.ThreadPoolExecutor(50) as ex:
        return list(ex.map(attempt, asks))


def test_fifty_concurrent_bookings_of_one_user_never_pass_the_limit(api):
    ev = new_event(api, capacity=1000)
    # user 0: fifty single tickets; user 1: fifty of 1..3; user 2: the same through
    # Idempotency-Key (the single-statement path); all at once
    asks = [(0, 1, {}) for _ in range(50)] + [(1, 1 + i % 3, {}) for i in range(50)] + \
           [(2, 1 + i % 3, {"Idempotency-Key": "k%d" % i}) for i in range(50)]
    results = fire(api, ev["id"], asks)
    assert {s for s, _ in results} <= {201, 409}, [r for r in results if r[0] not in (201, 409)][:3]
    refused = [d for s, d in results if s == 409]
    assert refused and all(d["type"].endswith("/limit-exceeded") for d in refused)
    assert all(d["max_per_user"] == LIMIT for d in refused)
    assert held(api, ev["id"], 0) == LIMIT
    assert 1 <= held(api, ev["id"], 1) <= LIMIT
    assert 1 <= held(api, ev["id"], 2) <= LIMIT
    row = sql(api, """SELECT e.available, (SELECT coalesce(sum(quantity), 0) FROM bookings
        WHERE event_id = e.id AND status = 'confirmed') AS sold FROM events e WHERE e.id = $1""", ev["id"])[0]
    assert row["available"] + row["sold"] == 1000


def test_refusal_says_the_limit_and_what_the_user_holds_and_cancel_gives_it_back(api):
    ev = new_event(api, capacity=100)
    a = book(api, api.users[3], ev["id"], 3).json()
    assert book(api, api.users[3], ev["id"], 1).status == 201
    doc = problem(book(api, api.users[3], ev["id"], 1), 409, "limit-exceeded")
    assert doc["max_per_user"] == LIMIT and doc["held"] == LIMIT
    assert book(api, api.users[4], ev["id"], LIMIT).status == 201  # the limit is per user
    assert api.request("DELETE", BASE + "/bookings/%d" % a["id"], headers=api.users[3]).status == 200
    assert book(api, api.users[3], ev["id"], 3).status == 201
    problem(book(api, api.users[3], ev["id"], 1), 409, "limit-exceeded")


def test_a_waitlist_conversion_counts_toward_the_limit(api):
    u = api.users
    ev = new_event(api, capacity=5)["id"]
    other = book(api, u[5], ev, 3).json()
    assert book(api, u[6], ev, 2).status == 201
    doc = problem(join(api, u[6], ev, 3), 409, "limit-exceeded")  # 2 held + 3 > 4
    assert doc["held"] == 2 and doc["max_per_user"] == LIMIT
    entry = join(api, u[6], ev, 2)
    assert entry.status == 201, entry.text
    # 3 seats come back: 2 are offered to user 6, who books the third meanwhile
    assert api.request("DELETE", BASE + "/bookings/%d" % other["id"], headers=u[5]).status == 200
    offer = entries(api, u[6])[0]
    assert offer["status"] == "offered"
    third = book(api, u[6], ev, 1).json()
    convert = {"event_id": ev, "quantity": 2, "waitlist_entry_id": offer["id"]}
    doc = problem(api.post(BASE + "/bookings", headers=u[6], body=convert), 409, "limit-exceeded")
    assert doc["held"] == 3
    assert api.request("DELETE", BASE + "/bookings/%d" % third["id"], headers=u[6]).status == 200
    r = api.post(BASE + "/bookings", headers=u[6], body=convert)
    assert r.status == 201, r.text
    assert held(api, ev, 6) == LIMIT


def reload_rules(api, value):
    set_limit(api.scripts, value)
    since = os.path.getsize(api.log_path)
    api.signal(signal.SIGHUP)
    api.wait_log(r"reload: generation \d+ serving", timeout=30, since=since)


def test_changing_the_limit_and_reloading_takes_effect_without_restart(api):
    ev = new_event(api, capacity=100)["id"]
    reload_rules(api, 2)
    deadline = time.time() + 10  # the old generation drains; a new connection reaches the new one
    while True:
        r = book(api, dict(api.users[7], Connection="close"), ev, 1)
        if r.status == 409:
            break
        assert r.status == 201, r.text
        assert time.time() < deadline, "the new limit never applied"
    doc = problem(r, 409, "limit-exceeded")
    assert doc["max_per_user"] == 2 and held(api, ev, 7) == 2
    reload_rules(api, "nil")
    deadline = time.time() + 10
    while book(api, dict(api.users[7], Connection="close"), ev, 1).status != 201:
        assert time.time() < deadline, "removing the limit never applied"
    for _ in range(4):
        assert book(api, api.users[7], ev, 2).status == 201
    assert held(api, ev, 7) >= 11


def test_a_limit_that_is_not_a_positive_integer_is_refused_at_reload(api):
    set_limit(api.scripts, 0)
    try:
        since = os.path.getsize(api.log_path)
        api.signal(signal.SIGHUP)
        api.wait_log(r"reload refused[^\n]*max_per_user must be nil or an integer >= 1", timeout=30, since=since)
    finally:
        set_limit(api.scripts, "nil")
    ev = new_event(api, capacity=10)["id"]  # the serving generation (no limit) goes on
    assert book(api, api.users[3], ev, 10).status == 201
