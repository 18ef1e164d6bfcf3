"""API.md "Bookings", black-box, with invariants checked in the database."""
import concurrent.futures
import json
import random
import time

import pytest

from api_support import BASE, book, new_event, problem, sql, start_api


@pytest.fixture(scope="module")
def api():
    srv = start_api("api-bookings", users=10, prefix="buyer")
    yield srv
    srv.stop_and_check()


def available(api, event_id):
    return api.get(BASE + "/events/%d" % event_id).json()["available"]


def test_booking_takes_seats_and_cancelling_gives_them_back_once(api):
    ev = new_event(api, capacity=10, price_cents=1250, currency="USD")
    r = book(api, api.users[0], ev["id"], 3)
    assert r.status == 201, r.text
    b = r.json()
    assert b["quantity"] == 3 and b["status"] == "confirmed" and b["total_cents"] == 3750
    assert b["currency"] == "USD" and b["cancelled_at"] is None
    assert available(api, ev["id"]) == 7
    first = api.request("DELETE", BASE + "/bookings/%d" % b["id"], headers=api.users[0])
    assert first.status == 200 and first.json()["status"] == "cancelled" and first.json()["cancelled_at"]
    again = api.request("DELETE", BASE + "/bookings/%d" % b["id"], headers=api.users[0])
    assert again.status == 200 and again.json() == first.json()
    assert available(api, ev["id"]) == 10


def test_sold_out_is_409_with_what_is_left(api):
    ev = new_event(api, capacity=5)
    assert book(api, api.users[0], ev["id"], 4).status == 201
    doc = problem(book(api, api.users[1], ev["id"], 2), 409, "sold-out")
    assert doc["available"] == 1
    assert book(api, api.users[1], ev["id"], 1).status == 201


@pytest.mark.parametrize("over", [{"status": "draft"}, {"status": "cancelled"},
                                  {"starts_at": "2001-01-01T00:00:00Z"},
                                  {"sales_start": "2029-01-01T00:00:00Z"},
                                  {"sales_end": "2001-01-01T00:00:00Z", "sales_start": "2000-01-01T00:00:00Z"}])
def test_booking_an_event_not_on_sale_is_409(api, over):
    ev = new_event(api, **over)
    problem(book(api, api.users[0], ev["id"], 1), 409, "not-on-sale")


def test_quantity_outside_1_to_max_per_booking_is_422(api):
    ev = new_event(api, max_per_booking=4)
    for q in (0, -1, 5, 2.5, "2"):
        problem(book(api, api.users[0], ev["id"], q), 422, "validation")
    problem(book(api, api.users[0], 99999999, 1), 404, "not-found")
    r = api.post(BASE + "/bookings", body={"event_id": ev["id"], "quantity": 1})
    problem(r, 401, "unauthorized")


def test_another_users_booking_is_404(api):
    ev = new_event(api)
    b = book(api, api.users[0], ev["id"], 1).json()
    problem(api.get(BASE + "/bookings/%d" % b["id"], headers=api.users[1]), 404, "not-found")
    problem(api.request("DELETE", BASE + "/bookings/%d" % b["id"], headers=api.users[1]), 404, "not-found")
    assert api.get(BASE + "/bookings/%d" % b["id"], headers=api.users[0]).status == 200
    assert api.get(BASE + "/bookings/%d" % b["id"], headers=api.admin).status == 200
    mine = api.get(BASE + "/bookings", headers=api.users[1]).json()
    assert all(x["user_id"] != b["user_id"] for x in mine["items"])
    by_event = api.get(BASE + "/bookings?event_id=%d" % ev["id"], headers=api.admin).json()
    assert [x["id"] for x in by_event["items"]] == [b["id"]]


def test_every_change_writes_its_outbox_row(api):
    ev = new_event(api)
    b = book(api, api.users[2], ev["id"], 2).json()
    api.request("DELETE", BASE + "/bookings/%d" % b["id"], headers=api.users[2])
    api.request("DELETE", BASE + "/bookings/%d" % b["id"], headers=api.users[2])
    rows = sql(api, "SELECT event_type, payload FROM outbox WHERE aggregate_id = $1 ORDER BY id", ev["id"])
    assert [r["event_type"] for r in rows] == ["booking.confirmed", "booking.cancelled"]
    assert rows[0]["payload"]["booking_id"] == b["id"] and rows[1]["payload"]["quantity"] == 2


def test_a_thousand_concurrent_bookings_sell_exactly_the_capacity(api):
    ev = new_event(api, capacity=100)
    rnd = random.Random(7)
    asks = [(api.users[i % 10], rnd.randint(1, 4)) for i in range(1000)]

    def attempt(a):
        who, q = a
        r = book(api, who, ev["id"], q)
        return r.status, q, (r.json() if r.status in (201, 409) else r.text)

    with concurrent.futures.ThreadPoolExecutor(64) as ex:
        results = list(ex.map(attempt, asks))
    statuses = {s for s, _, _ in results}
    assert statuses <= {201, 409}, [r for r in results if r[0] not in (201, 409)][:3]
    sold = sum(q for s, q, _ in results if s == 201)
    assert sold == 100
    assert all(d["type"].endswith("/sold-out") for s, _, d in results if s == 409)
    rows = sql(api, """SELECT (SELECT coalesce(sum(quantity), 0) FROM bookings
                         WHERE event_id = $1 AND status = 'confirmed') AS confirmed,
                        (SELECT available FROM events WHERE id = $1) AS available,
                        (SELECT count(*) FROM outbox WHERE aggregate_id = $1) AS messages""", ev["id"])
    assert rows[0]["confirmed"] == 100 and rows[0]["available"] == 0
    assert rows[0]["messages"] == sum(1 for s, _, _ in results if s == 201)
    assert available(api, ev["id"]) == 0


def test_concurrent_cancels_of_one_booking_restore_seats_once(api):
    ev = new_event(api, capacity=10)
    b = book(api, api.users[3], ev["id"], 4).json()
    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        results = list(ex.map(lambda _: api.request("DELETE", BASE + "/bookings/%d" % b["id"],
                                                    headers=api.users[3]).status, range(20)))
    assert set(results) == {200}
    rows = sql(api, "SELECT available FROM events WHERE id = $1", ev["id"])
    assert rows[0]["available"] == 10
    assert available(api, ev["id"]) == 10


def test_idempotency_key_replays_the_first_answer_and_books_once(api):
    ev = new_event(api, capacity=10)
    key = {"Idempotency-Key": "order-42"}
    h = dict(api.users[4], **key)
    first = book(api, h, ev["id"], 2)
    assert first.status == 201, first.text
    assert first.header("Idempotent-Replayed") is None
    again = book(api, h, ev["id"], 2)
    assert again.status == 201
    assert again.header("Idempotent-Replayed") == "true"
    assert again.json() == first.json()
    assert available(api, ev["id"]) == 8
    problem(book(api, h, ev["id"], 3), 422, "idempotency-key-reused")
    # the same key belongs to each user separately
    other = book(api, dict(api.users[5], **key), ev["id"], 1)
    assert other.status == 201 and other.header("Idempotent-Replayed") is None
    # a stored refusal is replayed too
    sold = book(api, dict(api.users[4], **{"Idempotency-Key": "too-big"}), ev["id"], 9)
    problem(sold, 409, "sold-out")
    replay = book(api, dict(api.users[4], **{"Idempotency-Key": "too-big"}), ev["id"], 9)
    assert replay.status == 409 and replay.header("Idempotent-Replayed") == "true"
    for bad in ("", "x" * 256, "tab\there"):
        problem(book(api, dict(api.users[4], **{"Idempotency-Key": bad}), ev["id"], 1), 422, "validation")


def test_fresh_idempotency_keys_on_a_sold_out_event_write_nothing(api):
    """A flood of bookings with fresh keys on a sold-out event is answered from the
    gate and writes no idempotency rows; a key that booked before is still replayed."""
    ev = new_event(api, capacity=1)
    h = dict(api.users[7], **{"Idempotency-Key": "kept-%d" % ev["id"]})
    first = book(api, h, ev["id"], 1)
    assert first.status == 201, first.text
    for i in range(30):  # sold out now: the gate (its own, or learned from Redis) answers
        who = dict(api.users[i % 10], **{"Idempotency-Key": "flood-%d-%d" % (ev["id"], i)})
        problem(book(api, who, ev["id"], 1), 409, "sold-out")
    rows = sql(api, "SELECT count(*) AS n FROM idempotency_keys WHERE key LIKE $1", "flood-%d-%%" % ev["id"])
    assert rows[0]["n"] == 0, "a refused booking with a fresh key wrote rows"
    again = book(api, h, ev["id"], 1)  # the 201 whose answer got lost is replayed, not refused
    assert again.status == 201 and again.header("Idempotent-Replayed") == "true"
    assert again.json() == first.json()


def test_concurrent_duplicates_book_once_and_answer_409_while_in_flight(api):
    ev = new_event(api, capacity=50)
    h = dict(api.users[6], **{"Idempotency-Key": "burst"})
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        results = list(ex.map(lambda _: book(api, h, ev["id"], 1), range(16)))
    statuses = [r.status for r in results]
    assert set(statuses) <= {201, 409}, statuses
    ids = {r.json()["id"] for r in results if r.status == 201}
    assert len(ids) == 1  # every 201 is the same booking, first or replayed
    for r in results:
        if r.status == 409:
            assert r.json()["type"].endswith("/idempotency-in-flight")
    rows = sql(api, "SELECT count(*) AS n FROM bookings WHERE event_id = $1", ev["id"])
    assert rows[0]["n"] == 1
    assert available(api, ev["id"]) == 49


def metric_of(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_bookings_with_idempotency_keys_are_coalesced_and_store_their_answer_with_the_booking(api):
    """Under a burst every booking carries its own key: they still share
    statements, and each key's stored answer is its booking, written by the
    same statement (a replay returns the same document)."""
    ev = new_event(api, capacity=60)
    before, statements = api.metrics_when(lambda t: (metric_of(t, "evently_booking_batch_requests_total"),
                                                     metric_of(t, "evently_booking_batches_total")))
    jobs = [(i, dict(api.users[i % 10], **{"Idempotency-Key": 'burst-"%d"\\' % i})) for i in range(120)]
    with concurrent.futures.ThreadPoolExecutor(32) as ex:
        results = list(ex.map(lambda j: (j, book(api, j[1], ev["id"], 1)), jobs))
    ok = [(j, r) for j, r in results if r.status == 201]
    assert len(ok) == 60, [r.status for _, r in results]
    assert all(r.status in (201, 409) for _, r in results)
    assert available(api, ev["id"]) == 0
    rows = sql(api, """SELECT k.key, k.status, (k.response->>'id')::bigint AS booking_id, b.user_id AS owner, k.user_id
        FROM idempotency_keys k LEFT JOIN bookings b ON b.id = (k.response->>'id')::bigint
        WHERE k.key LIKE 'burst-%' AND k.status = 201""")
    assert len(rows) == 60 and all(r["owner"] == r["user_id"] for r in rows)
    assert {r["booking_id"] for r in rows} == {r.json()["id"] for _, r in ok}
    for (i, headers), first in ok[:5]:
        again = book(api, headers, ev["id"], 1)
        assert again.status == 201 and again.header("Idempotent-Replayed") == "true"
        assert again.json() == first.json()
    claims, batches = api.metrics_when(
        lambda t: (metric_of(t, "evently_booking_batch_requests_total") - before,
                   metric_of(t, "evently_booking_batches_total") - statements),
        lambda v: v[0] >= 60)
    assert claims >= 60  # every booking went through the batches (the rest: the sold-out gate)
    assert batches < claims  # and shared statements


def test_admin_analytics_summarise_sales(api):
    ev = new_event(api, capacity=20, price_cents=300)
    b1 = book(api, api.users[7], ev["id"], 4).json()
    book(api, api.users[8], ev["id"], 1)
    api.request("DELETE", BASE + "/bookings/%d" % b1["id"], headers=api.users[7])
    problem(api.get(BASE + "/admin/analytics/summary", headers=api.users[7]), 403, "forbidden")
    problem(api.get(BASE + "/admin/analytics/summary"), 401, "unauthorized")
    s = api.get(BASE + "/admin/analytics/summary", headers=api.admin)
    assert s.status == 200, s.text
    doc = s.json()
    for field in ("events", "bookings", "tickets_sold", "revenue_cents", "cancellations", "cancellation_rate", "top_events"):
        assert field in doc
    assert doc["cancellations"] >= 1 and 0 < doc["cancellation_rate"] <= 1
    r = api.get(BASE + "/admin/analytics/events/%d" % ev["id"], headers=api.admin).json()
    assert r["event_id"] == ev["id"] and r["capacity"] == 20 and r["sold"] == 1 and r["available"] == 19
    assert r["bookings"] == 2 and r["cancellations"] == 1 and r["waitlist_waiting"] == 0
    assert r["utilization"] == 0.05
    assert len(r["sales_by_day"]) == 1 and r["sales_by_day"][0]["tickets"] == 1
    assert r["sales_by_day"][0]["revenue_cents"] == 300
    problem(api.get(BASE + "/admin/analytics/events/99999999", headers=api.admin), 404, "not-found")


def test_sold_out_gate_reopens_when_seats_come_back(api):
    ev = new_event(api, capacity=2)
    b = book(api, api.users[9], ev["id"], 2).json()
    for _ in range(20):  # both workers learn the event is sold out
        problem(book(api, api.users[8], ev["id"], 1), 409, "sold-out")
    assert api.request("DELETE", BASE + "/bookings/%d" % b["id"], headers=api.users[9]).status == 200
    deadline = time.time() + 0.5  # every worker hears the change at once (pub/sub fan-out)
    got = []
    while len(got) < 2:  # a slow answer is fine; a "sold out" to a request sent past the deadline is not
        sent = time.time()
        r = book(api, api.users[8], ev["id"], 1)
        if r.status == 201:
            got.append(r.json()["id"])
            continue
        problem(r, 409, "sold-out")
        assert sent < deadline, "the gate kept answering sold out after seats came back"
    problem(book(api, api.users[8], ev["id"], 1), 409, "sold-out")
    text = api.metrics_when(lambda t: t, lambda t: "evently_booking_gate_soldout_total" in t
                            and "evently_booking_batches_total" in t)
    assert "evently_booking_gate_soldout_total" in text and "evently_booking_batches_total" in text


def test_clients_vanishing_mid_booking_do_not_stall_the_event(api):
    """Aborted requests (client gone) while their batch is queued or running
    must not wedge the event's queue in the worker."""
    import socket as socketlib
    ev = new_event(api, capacity=1000)
    body = json.dumps({"event_id": ev["id"], "quantity": 1}).encode()
    head = ("POST %s/bookings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Authorization: %s\r\nContent-Length: %d\r\n\r\n" % (BASE, api.users[0]["Authorization"], len(body))).encode()
    socks = []
    for _ in range(60):
        s = socketlib.create_connection(("127.0.0.1", api.port))
        s.sendall(head + body)
        socks.append(s)
    for s in socks:
        s.close()
    t0 = time.time()
    for i in range(10):
        r = book(api, api.users[1], ev["id"], 1)
        assert r.status == 201, r.text
    assert time.time() - t0 < 5
    invariant = sql(api, """SELECT e.available, (SELECT coalesce(sum(quantity), 0) FROM bookings
        WHERE event_id = e.id AND status = 'confirmed') AS sold FROM events e WHERE e.id = $1""", ev["id"])[0]
    assert invariant["available"] + invariant["sold"] == 1000


def test_a_sold_out_event_still_answers_422_for_a_quantity_above_max_per_booking(api):
    ev = new_event(api, capacity=1, max_per_booking=3)
    assert book(api, api.users[2], ev["id"], 1).status == 201
    for _ in range(4):  # the gate is closed on every worker now
        problem(book(api, api.users[3], ev["id"], 1), 409, "sold-out")
    problem(book(api, api.users[3], ev["id"], 4), 422, "validation")


def test_metrics_pass_promtool_with_every_counter_present(api):
    """A live /metrics, after the bookings above made the script counters
    appear, is clean Prometheus text: promtool check metrics prints nothing
    (every series has HELP and TYPE, names and units as it expects)."""
    import shutil
    import subprocess
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: .ci/packages-test lists prometheus"
    ev = new_event(api, capacity=1)
    assert book(api, api.users[4], ev["id"], 1).status == 201
    for _ in range(6):  # the gate counts its refusals
        problem(book(api, api.users[5], ev["id"], 1), 409, "sold-out")
    text = api.metrics_when(lambda t: t, lambda t: "evently_booking_gate_soldout_total" in t
                            and "evently_booking_batches_total" in t and "evently_pool_queries_total" in t)
    p = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stdout == b"" and p.stderr == b"", (p.returncode, p.stdout, p.stderr)


def test_a_users_bookings_total_is_kept_exact_under_concurrent_batches(api):
    """GET /bookings answers a user's total from a counter the booking
    statements keep (migration 0016), not by counting: it must equal the rows,
    after coalesced batches that carry several users across several events,
    cancellations (which keep the row) and rows deleted by hand."""
    events = [new_event(api, capacity=400)["id"] for _ in range(3)]
    asks = [(api.users[i % 10], events[i % 3]) for i in range(600)]
    with concurrent.futures.ThreadPoolExecutor(48) as ex:
        statuses = list(ex.map(lambda a: book(api, a[0], a[1], 1).status, asks))
    assert set(statuses) == {201}, statuses
    mine = api.get(BASE + "/bookings?size=1", headers=api.users[4]).json()
    assert api.request("DELETE", BASE + "/bookings/%d" % mine["items"][0]["id"], headers=api.users[4]).status == 200
    sql(api, "DELETE FROM bookings WHERE id = (SELECT max(id) FROM bookings WHERE user_id = $1)",
        api.get(BASE + "/users/me", headers=api.users[5]).json()["id"])
    for who in api.users:
        uid = api.get(BASE + "/users/me", headers=who).json()["id"]
        counted = sql(api, "SELECT count(*) AS n FROM bookings WHERE user_id = $1", uid)[0]["n"]
        doc = api.get(BASE + "/bookings?size=1", headers=who).json()
        assert doc["total"] == counted and len(doc["items"]) == 1, (uid, doc["total"], counted)
        page = api.get(BASE + "/bookings?page=%d&size=1" % counted, headers=who).json()
        assert len(page["items"]) == 1 and page["total"] == counted
