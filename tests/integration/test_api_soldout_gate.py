"""The sold-out gate's shared level (Redis): once one worker learned an event is
sold out, every other worker answers it without a Postgres round trip; seats
given back (cancellation, capacity raise) reopen it everywhere at once."""
import time

import pytest

from api_support import BASE, problem, start_api
from conftest import metric_value
from test_api_bookings import book, new_event


@pytest.fixture(scope="module")
def api():
    srv = start_api("api-gate", users=4, prefix="gate")
    yield srv
    srv.stop_and_check()


def counters(api):
    time.sleep(1.2)  # workers add their counts to /metrics once a second
    text = api.metrics()
    return {name: metric_value(text, name) or 0 for name in
            ("evently_booking_batches_total", "evently_booking_gate_redis_total")}


def test_every_worker_learns_sold_out_from_redis_without_asking_postgres(api):
    ev = new_event(api, capacity=1)
    assert book(api, api.users[0], ev["id"], 1).status == 201
    before = counters(api)
    for _ in range(30):  # a new connection each: both workers answer some
        doc = problem(book(api, api.users[1], ev["id"], 1), 409, "sold-out")
        assert doc["available"] == 0
    after = counters(api)
    assert after["evently_booking_batches_total"] == before["evently_booking_batches_total"], \
        "a sold-out answer went to Postgres"
    assert after["evently_booking_gate_redis_total"] >= before["evently_booking_gate_redis_total"] + 2


def book_until_201(api, who, event_id, within=0.5):
    deadline = time.time() + within
    while True:
        r = book(api, who, event_id, 1)
        if r.status == 201:
            return r.json()
        problem(r, 409, "sold-out")
        assert time.time() < deadline, "the gate kept answering sold out after seats came back"


def test_seats_given_back_reopen_the_gate_on_every_worker_at_once(api):
    ev = new_event(api, capacity=5)
    b = book(api, api.users[0], ev["id"], 5).json()
    for _ in range(20):
        problem(book(api, api.users[1], ev["id"], 1), 409, "sold-out")
    assert api.request("DELETE", BASE + "/bookings/%d" % b["id"], headers=api.users[0]).status == 200
    book_until_201(api, api.users[2], ev["id"])
    for _ in range(4):  # no worker, and not Redis, still says sold out
        assert book(api, api.users[2], ev["id"], 1).status == 201
    problem(book(api, api.users[1], ev["id"], 1), 409, "sold-out")


def test_a_capacity_raise_reopens_the_gate_at_once(api):
    ev = new_event(api, capacity=1)
    assert book(api, api.users[0], ev["id"], 1).status == 201
    for _ in range(20):
        problem(book(api, api.users[1], ev["id"], 1), 409, "sold-out")
    r = api.request("PATCH", BASE + "/events/%d" % ev["id"], body={"capacity": 3}, headers=api.admin)
    assert r.status == 200, r.text
    book_until_201(api, api.users[1], ev["id"])
    assert book(api, api.users[1], ev["id"], 1).status == 201
    problem(book(api, api.users[1], ev["id"], 1), 409, "sold-out")
