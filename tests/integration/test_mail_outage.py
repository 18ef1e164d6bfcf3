"""A mail server down for a minute (issue 14): the notification mail of a
booking made meanwhile arrives once the server is back, exactly once, and
nothing is dead-lettered. In-process event stream (no Kafka), real scripts/."""
import time

import pytest

from api_support import BASE, new_event, sql, start_api
from smtp_sink import sink  # noqa: F401  (the module fixture)

OUTAGE_S = 60


@pytest.fixture(scope="module")
def api(sink):  # noqa: F811
    srv = start_api("mail-outage", users=1, prefix="outage", env={"EVENTLY_SMTP_URL": sink.url})
    yield srv
    srv.stop_and_check()


def test_mail_sent_during_a_60_s_outage_arrives_afterwards_and_nothing_is_dead_lettered(api, sink):
    ev = new_event(api, name="Outage", capacity=5)["id"]
    sink.stop()
    try:
        r = api.post(BASE + "/bookings", headers=api.users[0], body={"event_id": ev, "quantity": 1})
        assert r.status == 201, r.text
        booking = r.json()["id"]
        # deliberate: the outage itself; the consumer must keep trying, not give up
        time.sleep(OUTAGE_S)
        assert sql(api, "SELECT count(*) AS n FROM dead_letters")[0]["n"] == 0, "dead-lettered during the outage"
    finally:
        sink.start()
    mails = sink.wait_for(lambda m: "outage0@example.com" in m.to and "Outage" in m.subject, timeout=45)
    assert len(mails) == 1
    time.sleep(2)  # deliberate: room for a second copy to show; none may
    assert len([m for m in sink.messages if "outage0@example.com" in m.to and "Outage" in m.subject]) == 1
    assert sql(api, "SELECT count(*) AS n FROM dead_letters")[0]["n"] == 0
    assert sql(api, "SELECT count(*) AS n FROM bookings WHERE id = $1", booking)[0]["n"] == 1
