"""The sold-out gate's shared level (Redis): once one worker learned an event is
sold out, every other worker answers it without a Postgres round trip; seats
given back (cancellation, capacity raise) reopen it everywhere at once."""
import concurrent.futures
import threading
import time

import pytest

from api_support import BASE, book, book_until_201, new_event, problem, sql, start_api
from conftest import metric_value, wait_for

GATE_STUCK = "the gate kept answering sold out after seats came back"


@pytest.fixture(scope="module")
def api():
    srv = start_api("api-gate", users=4, prefix="gate")
    yield srv
    srv.stop_and_check()


def read_counters(text):
    return {name: metric_value(text, name) or 0 for name in
            ("evently_booking_batches_total", "evently_booking_gate_redis_total")}


def counters(api):
    """The counters once every worker's once-a-second flush is in."""
    return api.metrics_when(read_counters)


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


def test_seats_given_back_reopen_the_gate_on_every_worker_at_once(api):
    ev = new_event(api, capacity=5)
    b = book(api, api.users[0], ev["id"], 5).json()
    for _ in range(20):
        problem(book(api, api.users[1], ev["id"], 1), 409, "sold-out")
    assert api.request("DELETE", BASE + "/bookings/%d" % b["id"], headers=api.users[0]).status == 200
    book_until_201(api, api.users[2], ev["id"], failure=GATE_STUCK)
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
    book_until_201(api, api.users[1], ev["id"], failure=GATE_STUCK)
    assert book(api, api.users[1], ev["id"], 1).status == 201
    problem(book(api, api.users[1], ev["id"], 1), 409, "sold-out")


# --- a take whose batch is slow answers truthfully -----------------------------

@pytest.fixture(scope="module")
def slow_api():
    srv = start_api("api-slow", users=8, prefix="slow", env={"EVENTLY_HANDLER_TIMEOUT": "4"})
    yield srv
    srv.stop_and_check()


def test_a_take_that_times_out_says_truthfully_whether_it_booked(slow_api):
    """The event row is locked for 10 s, so the first batch of each worker
    blocks. Requests queued behind it are withdrawn before the 4 s handler
    deadline: 503 busy with Retry-After, and they never book. A request whose
    batch had started is not answered "not booked": it waits for its batch and
    the deadline answers 504 (outcome unknown); its booking lands once the lock
    goes."""
    api = slow_api
    ev = new_event(api, capacity=100)["id"]
    holder = threading.Thread(target=sql, args=(api, """WITH l AS (SELECT id FROM events WHERE id = $1 FOR UPDATE)
        SELECT pg_sleep(10) FROM l""", ev))
    holder.start()
    deadline = time.time() + 5
    while not sql(api, """SELECT 1 AS held FROM pg_stat_activity
                          WHERE state = 'active' AND query LIKE '%pg_sleep(10)%' AND pid <> pg_backend_pid()"""):
        assert time.time() < deadline, "the lock holder never started"

    def attempt(i):
        r = book(api, api.users[i], ev, 1)
        return i, r.status, r.header("Retry-After"), (r.json() if r.text else None)
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(attempt, range(8)))
    holder.join()
    started = sum(1 for _, status, _, _ in results if status != 503)
    wait_for(lambda: sql(api, "SELECT count(*) AS n FROM bookings WHERE event_id = $1", ev)[0]["n"] >= started,
             timeout=15, interval=0.1, what="the blocked batches to commit once the lock goes")
    time.sleep(0.5)  # and a booking that should not be there has had its chance to show
    statuses = sorted(s for _, s, _, _ in results)
    assert set(statuses) <= {503, 504, 201}, results
    assert 503 in statuses and 504 in statuses, results
    for i, status, retry_after, doc in results:
        uid = api.get(BASE + "/users/me", headers=api.users[i]).json()["id"]
        n = sql(api, "SELECT count(*) AS n FROM bookings WHERE event_id = $1 AND user_id = $2", ev, uid)[0]["n"]
        if status == 503:
            assert doc["type"].endswith("/busy") and retry_after == "1", doc
            assert n == 0, "answered 'not booked' but booked"
        else:
            assert n == 1, (status, doc)
