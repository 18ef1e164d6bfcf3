"""The notification flows end to end, with a real Kafka broker: a booking
cancelled frees seats, the waitlisted user is offered them and hears of it in
the app, on their WebSocket and by email; and two instances on one database,
one Redis and one broker deliver a change made through one to a socket held
by the other."""
import os
import socket
import time

import pytest

from api_support import BASE, SCRIPTS, new_event, register, start_api, token_of
from conftest import Server, clean_env, run_cli
from kafka_broker import kafka  # noqa: F401  (the session fixture)
from smtp_sink import sink  # noqa: F401  (the module fixture)
from ws_client import Client


def flows_event(api, capacity):
    """An event named in the mails the flows send."""
    return new_event(api, name="Flows", capacity=capacity, price_cents=500, max_per_booking=5)["id"]


def ws_for(srv, who):
    c = Client(srv, BASE + "/ws?token=" + token_of(who), timeout=30)
    assert c.accepted(), c.status
    return c


def message_of_type(client, kind, booking_id=None, deadline_s=30):
    """The first message of this type (for this booking, if given). Topics are
    ordered each on its own, not across each other: a socket may still hear of
    an earlier booking's confirmation after a later cancellation, so a test
    waits for the message it caused rather than for the next one of its type."""
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            m = client.next_message()
        except socket.timeout:  # quiet for a while (frames of a few bytes come whole): listen on to the deadline
            continue
        if m["type"] == kind and (booking_id is None or m["payload"].get("booking_id") == booking_id):
            return m
    raise AssertionError("no %s message%s" % (kind, "" if booking_id is None else " for booking %d" % booking_id))


@pytest.fixture(scope="module")
def api(kafka, sink):  # noqa: F811
    srv = start_api("flows", users=4, prefix="flow",
                    env={"EVENTLY_KAFKA_BROKERS": kafka.brokers, "EVENTLY_SMTP_URL": sink.url})
    yield srv
    srv.stop_and_check()


def test_a_waitlisted_user_is_offered_freed_seats_in_app_by_websocket_and_email(api, sink):
    u = api.users
    ev = flows_event(api, 2)
    b = api.post(BASE + "/bookings", headers=u[0], body={"event_id": ev, "quantity": 2}).json()
    r = api.post(BASE + "/events/%d/waitlist" % ev, headers=u[1], body={"quantity": 1})
    assert r.status == 201, r.text
    entry = r.json()["id"]
    sock = ws_for(api, u[1])
    try:
        assert api.request("DELETE", BASE + "/bookings/%d" % b["id"], headers=u[0]).status == 200
        m = message_of_type(sock, "waitlist.offered")
        assert m["payload"]["waitlist_entry_id"] == entry and m["payload"]["event_id"] == ev
        assert m["created_at"]
    finally:
        sock.close()
    mine = api.get(BASE + "/notifications", headers=u[1]).json()
    items = mine["items"] if isinstance(mine, dict) else mine
    assert any(n["type"] == "waitlist.offered" and n["payload"]["waitlist_entry_id"] == entry for n in items)
    mail = sink.wait_for(lambda m: "flow1@example.com" in m.to and "Seats are free" in m.subject,
                         timeout=30)[0]
    assert "Flows" in mail.subject and "held for you" in mail.text
    # the offer converts into a booking of the held seat
    r = api.post(BASE + "/bookings", headers=u[1], body={"event_id": ev, "quantity": 1, "waitlist_entry_id": entry})
    assert r.status == 201, r.text


def embedded_redis_url(api):
    """The URL (with its password) of the Redis api's home runs, as evently itself finds it."""
    script = os.path.join(api.root, "redis_url.lua")
    with open(script, "w") as f:
        f.write('io.write(require("evently.runtime").config().redis_url)\n')
    p = run_cli(["lua", script], env=clean_env({"EVENTLY_HOME": api.home}))
    assert p.returncode == 0 and p.stdout.startswith("unix:"), p.stderr
    return p.stdout


def test_two_instances_share_one_stream(api, kafka):  # noqa: F811
    """A user connected to instance A hears of a cancellation made through B."""
    other = Server("flows-b", scripts=SCRIPTS, workers=2, env={
        "EVENTLY_KAFKA_BROKERS": kafka.brokers,
        "EVENTLY_DATABASE_URL": "host=%s port=5432 dbname=evently user=evently" % os.path.join(api.home, "run"),
        "EVENTLY_REDIS_URL": embedded_redis_url(api),
    })
    other.start()
    try:
        who = register(other, "flowb@example.com")
        ev = flows_event(api, 10)
        b = other.post(BASE + "/bookings", headers=who, body={"event_id": ev, "quantity": 1}).json()
        socks = [ws_for(api, who) for _ in range(3)]  # on A, whichever of its workers
        try:
            assert other.request("DELETE", BASE + "/bookings/%d" % b["id"], headers=who).status == 200
            for s in socks:
                m = message_of_type(s, "booking.cancelled", b["id"])
                assert m["payload"]["event_id"] == ev
        finally:
            for s in socks:
                s.close()
        # and the other way: a socket on B hears of a booking made through A
        sock_b = ws_for(other, who)
        try:
            again = api.post(BASE + "/bookings", headers=who, body={"event_id": ev, "quantity": 1}).json()
            m = message_of_type(sock_b, "booking.confirmed", again["id"])
            assert m["payload"]["event_id"] == ev and m["payload"]["quantity"] == 1
        finally:
            sock_b.close()
    finally:
        other.stop_and_check()
