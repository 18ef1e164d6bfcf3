"""Early answers (core/early.c): a booking of a sold-out event by a caller whose
token a worker validated a moment ago is answered 409 sold-out from C, before
any Lua runs, with the same bytes and headers as the Lua route, counted in
/metrics and the access log like every answer. Whatever the rule does not
cover still reaches Lua and gets the answer API.md gives."""
import os
import re
import shutil
import signal
import time

import pytest

from api_support import BASE, SCRIPTS, book, book_until_201, new_event, problem, start_api
from conftest import make_root, metric_value, wait_for

SOLD_OUT = {"type": "https://evently.dev/problems/sold-out", "title": "Conflict", "status": 409,
            "detail": "not enough tickets left", "available": 0}


@pytest.fixture(scope="module")
def api():
    scripts = os.path.join(make_root("early-scripts"), "scripts")  # the reload test edits it
    shutil.copytree(SCRIPTS, scripts)
    srv = start_api("api-early", users=6, prefix="early", scripts=scripts)
    srv.scripts = scripts
    yield srv
    srv.stop_and_check()


def read_counters(text):
    return {
        "early": metric_value(text, "evently_early_answers_total") or 0,
        "gate": metric_value(text, "evently_booking_gate_soldout_total") or 0,
        "409": metric_value(text, "evently_http_requests_total", method="POST",
                            route="bookings.create", status="409") or 0,
    }


def counters(api, ready=None):
    """The counters once every worker's once-a-second flush is in (ready: the
    first reading it accepts)."""
    return api.metrics_when(read_counters, ready)


def sold_out_event(api, **over):
    ev = new_event(api, capacity=1, **over)
    assert book(api, api.users[0], ev["id"], 1).status == 201
    return ev["id"]


def hammer(api, who, event_id, n, quantity=1):
    """n sold-out bookings, each on a new connection (so both workers answer);
    returns the answers' raw bodies and their request ids."""
    bodies, ids = set(), []
    for i in range(n):
        rid = "early-%d-%d-%d" % (event_id, i, int(time.time() * 1000))
        r = book(api, dict(who, **{"X-Request-Id": rid}), event_id, quantity)
        doc = problem(r, 409, "sold-out")
        assert doc == SOLD_OUT, doc
        assert r.header("X-Request-Id") == rid
        bodies.add(r.body)
        ids.append(rid)
    return bodies, ids


def test_sold_out_bookings_are_answered_early_with_the_lua_answer_and_counted(api):
    ev = sold_out_event(api)
    before = counters(api)
    since = os.path.getsize(api.log_path)
    bodies, ids = hammer(api, api.users[1], ev, 60)
    assert len(bodies) == 1, bodies  # C and Lua answers are the same bytes
    after = counters(api, lambda c: c["409"] - before["409"] >= 60 and c["early"] - before["early"] >= 30
                     and c["gate"] - before["gate"] >= c["early"] - before["early"])
    early = after["early"] - before["early"]
    assert early >= 30, "few answers came from C: %r -> %r" % (before, after)
    assert after["gate"] - before["gate"] >= early
    # every answer, early or not, is a bookings.create 409 in the metrics ...
    assert after["409"] - before["409"] >= 60
    # ... and in the access log, under its request id
    logged = {e["request_id"]: e for e in api.access_log(since) if e.get("request_id") in ids}
    assert len(logged) == 60
    assert all(e["route"] == "bookings.create" and e["status"] == 409 and e["method"] == "POST"
               for e in logged.values())


def test_a_missing_bad_or_revoked_token_is_still_401(api):
    ev = sold_out_event(api)
    hammer(api, api.users[1], ev, 10)
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic abc"},
                    {"Authorization": api.users[1]["Authorization"] + " extra"}):
        r = book(api, headers, ev, 1)
        problem(r, 401, "unauthorized")
        assert r.header("WWW-Authenticate") == "Bearer"
    hammer(api, api.users[2], ev, 10)  # user 2's token is known to the workers now
    assert api.post(BASE + "/auth/logout", headers=api.users[2]).status == 204
    # the revocation reaches the other worker through Redis: until it has, that
    # worker may still answer sold-out; ask (each on a new connection, so both
    # workers answer) until 10 answers in a row are 401
    in_a_row = []

    def refused_in_a_row():
        r = book(api, api.users[2], ev, 1)
        if r.status == 409:
            problem(r, 409, "sold-out")
            in_a_row.clear()
        else:
            problem(r, 401, "unauthorized")
            in_a_row.append(r.status)
        return len(in_a_row) >= 10
    wait_for(refused_in_a_row, timeout=10, interval=0.01, what="the revocation to reach every worker")
    for _ in range(20):
        problem(book(api, api.users[2], ev, 1), 401, "unauthorized")


def test_an_idempotent_request_still_goes_to_lua(api):
    """C never answers a request with an Idempotency-Key; Lua does. (Lua asks the
    gate before it claims a key, so a fresh key on a sold-out event is a plain
    409 that stores nothing: issue 14; test_api_bookings checks no row is written.)"""
    ev = sold_out_event(api)
    hammer(api, api.users[3], ev, 10)  # the token is known to C and the gate closed
    before = counters(api)
    for i in range(20):
        who = dict(api.users[3], **{"Idempotency-Key": "early-key-%d-%d" % (ev, i)})
        r = book(api, who, ev, 1)
        assert problem(r, 409, "sold-out") == SOLD_OUT
        assert r.header("Idempotent-Replayed") is None
    counters(api, lambda c: c["409"] - before["409"] >= 20)
    time.sleep(1.2)  # deliberate: the workers flush their early counts once a second; none may come
    assert counters(api)["early"] == before["early"], "a request with an Idempotency-Key was answered from C"


def test_a_waitlist_conversion_and_odd_bodies_still_go_to_lua(api):
    ev = sold_out_event(api)
    who = api.users[3]
    hammer(api, who, ev, 10)
    r = api.post(BASE + "/bookings", headers=who, body={"event_id": ev, "quantity": 1, "waitlist_entry_id": 999999})
    problem(r, 409, "no-offer")
    problem(book(api, who, ev, 11), 422, "validation")  # over max_per_booking: not "sold out"
    problem(api.post(BASE + "/bookings", headers=dict(who, **{"Content-Type": "application/json"}),
                     body=b'{"event_id": %d, "quantity": 1' % ev), 400, "malformed-json")
    problem(api.post(BASE + "/bookings", headers=dict(who, **{"Content-Type": "text/plain"}),
                     body=b'{"event_id": %d, "quantity": 1}' % ev), 422, "validation")
    dup = b'{"event_id": %d, "quantity": 1, "event_id": "x"}' % ev  # Lua reads the last one
    problem(api.post(BASE + "/bookings", headers=dict(who, **{"Content-Type": "application/json"}), body=dup),
            422, "validation")


def test_a_cancellation_reopens_at_once(api):
    ev = new_event(api, capacity=2)["id"]
    b = book(api, api.users[0], ev, 2).json()
    before = counters(api)
    hammer(api, api.users[4], ev, 30)
    after = counters(api, lambda c: c["early"] - before["early"] >= 10)
    assert after["early"] - before["early"] >= 10
    hammer(api, api.users[4], ev, 10)  # the C gate and the token are fresh again
    assert api.request("DELETE", BASE + "/bookings/%d" % b["id"], headers=api.users[0]).status == 200
    book_until_201(api, api.users[4], ev, failure="the early answer kept saying sold out after seats came back")
    assert book(api, api.users[4], ev, 1).status == 201
    problem(book(api, api.users[4], ev, 1), 409, "sold-out")


def test_a_rule_removed_from_the_scripts_is_gone_after_a_reload(api):
    path = os.path.join(api.scripts, "routes", "bookings.lua")
    with open(path) as f:
        src = f.read()
    src, n = re.subn(r"\n  early\.refuse_when_closed\{.*?\n  \}\n", "\n", src, flags=re.S)
    assert n == 1
    with open(path + ".tmp", "w") as f:
        f.write(src)
    os.replace(path + ".tmp", path)
    since = os.path.getsize(api.log_path)
    old = api.worker_pids()
    api.signal(signal.SIGHUP)
    api.wait_log(r"reload: generation \d+ serving", timeout=30, since=since)
    # the old generation drains: once its workers are gone, new connections reach the new one
    api.wait_workers(len(old), exclude=old, timeout=30)
    ev = sold_out_event(api)
    before = counters(api)
    hammer(api, dict(api.users[5], Connection="close"), ev, 30)
    after = counters(api)
    assert after["early"] == before["early"], "a removed rule still answered"
    assert after["409"] - before["409"] >= 30
