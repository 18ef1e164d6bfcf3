"""API.md "Waitlist" and "Notifications", with invariants checked in the database."""
import concurrent.futures
import time

import pytest

from api_support import BASE, book, new_event, problem, sql, start_api


@pytest.fixture(scope="module")
def api():
    srv = start_api("api-waitlist", users=24, prefix="w")
    yield srv
    srv.stop_and_check()


def join(api, who, event_id, quantity):
    return api.post(BASE + "/events/%d/waitlist" % event_id, body={"quantity": quantity}, headers=who)


def entries(api, who):
    return api.get(BASE + "/waitlist", headers=who).json()["items"]


def notifications(api, who):
    return api.get(BASE + "/notifications", headers=who).json()["items"]


def invariant(api, event_id):
    """confirmed seats + held offers + available == capacity."""
    row = sql(api, """SELECT e.capacity, e.available,
        (SELECT coalesce(sum(quantity), 0) FROM bookings WHERE event_id = e.id AND status = 'confirmed') AS sold,
        (SELECT coalesce(sum(quantity), 0) FROM waitlist WHERE event_id = e.id AND status = 'offered') AS held
        FROM events e WHERE e.id = $1""", event_id)[0]
    assert row["sold"] + row["held"] + row["available"] == row["capacity"], row
    # every open offer is exactly one held hold of the seats pool, and no other hold is open
    holds = sql(api, """SELECT coalesce(sum(quantity), 0) AS n, count(*) AS c FROM inventory_holds
        WHERE pool = 'seats' AND key = $1 AND state = 'held'""", event_id)[0]
    offers = sql(api, """SELECT count(*) AS c FROM waitlist w JOIN inventory_holds h ON h.id = w.hold_id
        WHERE w.event_id = $1 AND w.status = 'offered' AND h.state = 'held'""", event_id)[0]
    assert holds["n"] == row["held"] and holds["c"] == offers["c"], (holds, offers, row)
    return row


def test_waitlist_flow_offer_convert_and_order(api):
    u = api.users
    ev = new_event(api, capacity=2)["id"]
    problem(join(api, u[1], ev, 1), 409, "tickets-available")
    b = book(api, u[0], ev, 2).json()
    e1 = join(api, u[1], ev, 1)
    assert e1.status == 201, e1.text
    assert e1.json()["status"] == "waiting" and e1.json()["position"] == 1
    e2 = join(api, u[2], ev, 2).json()
    assert e2["position"] == 2
    # cancelling frees 2 seats: the oldest entry that fits gets 1, the 2-seat entry does not fit the rest
    assert api.request("DELETE", BASE + "/bookings/%d" % b["id"], headers=u[0]).status == 200
    mine = entries(api, u[1])[0]
    assert mine["status"] == "offered" and mine["offer_expires_at"]
    assert entries(api, u[2])[0]["status"] == "waiting"
    assert any(n["type"] == "waitlist.offered" for n in notifications(api, u[1]))
    row = invariant(api, ev)
    assert row["held"] == 1 and row["available"] == 1
    # someone else cannot take the offer; the owner converts it without touching available
    problem(api.post(BASE + "/bookings", headers=u[3], body={"event_id": ev, "quantity": 1,
                                                             "waitlist_entry_id": mine["id"]}), 409, "no-offer")
    problem(api.post(BASE + "/bookings", headers=u[1], body={"event_id": ev, "quantity": 2,
                                                             "waitlist_entry_id": mine["id"]}), 422, "validation")
    r = api.post(BASE + "/bookings", headers=u[1], body={"event_id": ev, "quantity": 1, "waitlist_entry_id": mine["id"]})
    assert r.status == 201, r.text
    problem(api.post(BASE + "/bookings", headers=u[1], body={"event_id": ev, "quantity": 1,
                                                             "waitlist_entry_id": mine["id"]}), 409, "no-offer")
    row = invariant(api, ev)
    assert row["sold"] == 1 and row["held"] == 0 and row["available"] == 1


def test_an_expired_offer_passes_its_seats_on(api):
    u = api.users
    ev = new_event(api, capacity=1)["id"]
    b = book(api, u[4], ev, 1).json()
    first = join(api, u[5], ev, 1).json()
    second = join(api, u[6], ev, 1).json()
    api.request("DELETE", BASE + "/bookings/%d" % b["id"], headers=u[4])
    assert entries(api, u[5])[0]["status"] == "offered"
    # the offer is a hold of the seats pool: its expiry is the hold's (the entry shows a copy)
    sql(api, "UPDATE inventory_holds SET expires_at = now() - interval '1 second' "
             "WHERE id = (SELECT hold_id FROM waitlist WHERE id = $1) RETURNING id", first["id"])
    sql(api, "UPDATE waitlist SET offer_expires_at = now() - interval '1 second' WHERE id = $1 RETURNING id", first["id"])
    deadline = time.time() + 10
    while time.time() < deadline and entries(api, u[6])[0]["status"] != "offered":
        time.sleep(0.2)
    assert entries(api, u[5])[0]["status"] == "expired"
    assert entries(api, u[6])[0]["status"] == "offered"
    assert any(n["type"] == "waitlist.expired" for n in notifications(api, u[5]))
    invariant(api, ev)
    assert second["id"] == entries(api, u[6])[0]["id"]


def test_concurrent_cancellations_never_offer_one_seat_to_two_users(api):
    u = api.users
    ev = new_event(api, capacity=10)["id"]
    bookings = [book(api, u[i], ev, 2).json() for i in range(5)]
    for i in range(5, 24):
        assert join(api, u[i], ev, 1).status == 201
    with concurrent.futures.ThreadPoolExecutor(5) as ex:
        statuses = list(ex.map(lambda i: api.request("DELETE", BASE + "/bookings/%d" % bookings[i]["id"],
                                                     headers=u[i]).status, range(5)))
    assert statuses == [200] * 5
    rows = sql(api, "SELECT user_id, count(*) AS n FROM waitlist WHERE event_id = $1 AND status = 'offered' GROUP BY user_id", ev)
    assert len(rows) == 10 and all(r["n"] == 1 for r in rows)
    row = invariant(api, ev)
    assert row["held"] == 10 and row["available"] == 0
    # the ten oldest entries got the offers, in order
    offered = sql(api, "SELECT id FROM waitlist WHERE event_id = $1 AND status = 'offered' ORDER BY id", ev)
    waiting = sql(api, "SELECT id FROM waitlist WHERE event_id = $1 AND status = 'waiting' ORDER BY id", ev)
    assert max(r["id"] for r in offered) < min(r["id"] for r in waiting)


def test_leaving_the_waitlist(api):
    u = api.users
    ev = new_event(api, capacity=1)["id"]
    book(api, u[0], ev, 1)
    e = join(api, u[1], ev, 1).json()
    problem(api.request("DELETE", BASE + "/waitlist/%d" % e["id"], headers=u[2]), 404, "not-found")
    assert api.request("DELETE", BASE + "/waitlist/%d" % e["id"], headers=u[1]).status == 204
    newest = entries(api, u[1])[0]
    assert newest["id"] == e["id"] and newest["status"] == "cancelled"


def test_cancelling_an_event_cancels_its_bookings_and_notifies_holders(api):
    u = api.users
    ev = new_event(api, capacity=5)["id"]
    b = book(api, u[7], ev, 2).json()
    r = api.request("DELETE", BASE + "/events/%d" % ev, headers=api.admin)
    assert r.status == 200 and r.json()["status"] == "cancelled"
    assert api.get(BASE + "/bookings/%d" % b["id"], headers=u[7]).json()["status"] == "cancelled"
    assert any(n["type"] == "event.cancelled" and n["payload"]["event_id"] == ev for n in notifications(api, u[7]))
    types = [r["event_type"] for r in sql(api, "SELECT event_type FROM outbox WHERE aggregate_id = $1 ORDER BY id", ev)]
    assert "event.cancelled" in types and "booking.cancelled" in types


def test_notifications_are_private_and_can_be_marked_read(api):
    u = api.users
    mine = notifications(api, u[7])
    assert mine
    n = mine[0]
    problem(api.post(BASE + "/notifications/%d/read" % n["id"], headers=u[8]), 404, "not-found")
    r = api.post(BASE + "/notifications/%d/read" % n["id"], headers=u[7])
    assert r.status == 200 and r.json()["read_at"]
    problem(api.get(BASE + "/notifications"), 401, "unauthorized")


def test_offers_are_holds_of_the_seats_pool(api):
    """A capacity raise offers seats as a hold; capacity cannot drop below the
    held seats; converting confirms the hold, leaving releases it (seats back
    and offered on), each hold settled once."""
    u = api.users
    ev = new_event(api, capacity=1)["id"]
    assert book(api, u[20], ev, 1).status == 201
    a = join(api, u[21], ev, 2).json()
    b = join(api, u[22], ev, 1).json()
    r = api.request("PATCH", BASE + "/events/%d" % ev, body={"capacity": 3}, headers=api.admin)
    assert r.status == 200 and r.json()["available"] == 0, r.text
    offered = entries(api, u[21])[0]
    assert offered["status"] == "offered"
    hold = sql(api, "SELECT h.state, h.quantity, h.owner = w.user_id AS theirs, h.expires_at = w.offer_expires_at AS same_expiry "
                    "FROM waitlist w JOIN inventory_holds h ON h.id = w.hold_id WHERE w.id = $1", a["id"])[0]
    assert hold == {"state": "held", "quantity": 2, "theirs": True, "same_expiry": True}
    invariant(api, ev)
    # 1 sold + 2 held: capacity 2 would take held seats away
    problem(api.request("PATCH", BASE + "/events/%d" % ev, body={"capacity": 2}, headers=api.admin),
            409, "capacity-below-sold")
    # leaving the offer releases the hold: its seats go to the next entry (1 of them) and 1 back on sale
    assert api.request("DELETE", BASE + "/waitlist/%d" % a["id"], headers=u[21]).status == 204
    assert sql(api, "SELECT h.state FROM waitlist w JOIN inventory_holds h ON h.id = w.hold_id WHERE w.id = $1",
               a["id"])[0]["state"] == "released"
    assert entries(api, u[22])[0]["status"] == "offered"
    row = invariant(api, ev)
    assert row["available"] == 1 and row["held"] == 1
    # converting confirms the hold together with the booking
    r = api.post(BASE + "/bookings", body={"event_id": ev, "quantity": 1, "waitlist_entry_id": b["id"]}, headers=u[22])
    assert r.status == 201, r.text
    assert sql(api, "SELECT h.state FROM waitlist w JOIN inventory_holds h ON h.id = w.hold_id WHERE w.id = $1",
               b["id"])[0]["state"] == "confirmed"
    problem(api.post(BASE + "/bookings", body={"event_id": ev, "quantity": 1, "waitlist_entry_id": b["id"]},
                     headers=u[22]), 409, "no-offer")
    row = invariant(api, ev)
    assert row["sold"] == 2 and row["held"] == 0 and row["available"] == 1


def test_the_waitlist_is_a_paged_list_with_each_entry_s_position(api):
    """GET /waitlist is paged as every list is (API.md "Conventions"), newest first,
    and each waiting entry carries its place in its event's queue."""
    u = api.users
    me, ahead = u[23], u[19]  # other tests put these users on waitlists too: count from now
    before = api.get(BASE + "/waitlist?size=100", headers=me).json()["total"]
    evs = []
    for _ in range(3):
        ev = new_event(api, capacity=1)["id"]
        assert book(api, u[20], ev, 1).status == 201
        assert join(api, ahead, ev, 1).status == 201
        assert join(api, me, ev, 1).status == 201
        evs.append(ev)
    r = api.get(BASE + "/waitlist?page=1&size=2", headers=me)
    assert r.status == 200, r.text
    doc = r.json()
    assert (doc["page"], doc["size"], doc["total"]) == (1, 2, before + 3)
    assert [e["event_id"] for e in doc["items"]] == [evs[2], evs[1]]
    assert all(e["position"] == 2 and e["status"] == "waiting" for e in doc["items"])
    second = api.get(BASE + "/waitlist?page=2&size=2", headers=me).json()
    assert second["items"][0]["event_id"] == evs[0] and second["total"] == before + 3
    pages = (before + 3 + 1) // 2
    assert api.get(BASE + "/waitlist?page=%d&size=2" % (pages + 1), headers=me).json()["items"] == []
    problem(api.get(BASE + "/waitlist?size=101", headers=me), 422, "validation")
    # a left entry has no position; the one behind it moves up
    mine = api.get(BASE + "/waitlist?size=1", headers=ahead).json()["items"][0]
    assert mine["event_id"] == evs[2]
    assert api.request("DELETE", BASE + "/waitlist/%d" % mine["id"], headers=ahead).status == 204
    left = api.get(BASE + "/waitlist?size=1", headers=ahead).json()["items"][0]
    assert left["id"] == mine["id"] and left["status"] == "cancelled" and left["position"] is None
    assert api.get(BASE + "/waitlist?size=1", headers=me).json()["items"][0]["position"] == 1
