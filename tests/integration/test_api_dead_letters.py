"""/admin/dead-letters: listing what a consumer gave up on and handing it back
to the consumer (in-process mode), on the real scripts/."""
import time

import pytest

from api_support import BASE, new_event, problem, sql, start_api


@pytest.fixture(scope="module")
def api():
    srv = start_api("api-dead-letters", users=1, prefix="dl")
    yield srv
    srv.stop_and_check()


def dead_letter(api, event_id):
    """A booking.cancelled message the waitlist group gave up on (as if its
    handler had failed): the message is real, the handler will take it now."""
    rows = sql(api, """WITH o AS (INSERT INTO outbox (event_type, aggregate_id, payload)
        VALUES ('booking.cancelled', $1, jsonb_build_object('event_id', $1::bigint)) RETURNING id)
      INSERT INTO dead_letters (consumer_group, topic, outbox_id, attempts, error)
      SELECT 'waitlist', 'booking-cancelled', id, 6, 'spec: failed' FROM o RETURNING id""", event_id)
    return rows[0]["id"]


def exists(api, dead_id):
    return sql(api, "SELECT count(*) AS n FROM dead_letters WHERE id = $1", dead_id)[0]["n"] == 1


def test_an_admin_lists_dead_letters_and_hands_them_back(api):
    ev = new_event(api, capacity=5)["id"]
    first, second = dead_letter(api, ev), dead_letter(api, ev)
    r = api.get(BASE + "/admin/dead-letters?group=waitlist&size=100", headers=api.admin)
    assert r.status == 200, r.text
    doc = r.json()
    listed = {d["id"]: d for d in doc["items"]}
    assert {first, second} <= set(listed) and doc["total"] >= 2
    assert listed[first]["type"] == "booking.cancelled" and listed[first]["error"] == "spec: failed"
    assert listed[first]["retry_requested_at"] is None
    r = api.post(BASE + "/admin/dead-letters/retry", body={"ids": [first]}, headers=api.admin)
    assert r.status == 202, r.text
    assert r.json() == {"marked": 1}
    deadline = time.time() + 10
    while exists(api, first):
        assert time.time() < deadline, "the marked dead letter was not handled"
        time.sleep(0.1)
    assert exists(api, second)  # not marked: still there
    r = api.post(BASE + "/admin/dead-letters/retry", body={"group": "waitlist"}, headers=api.admin)
    assert r.status == 202 and r.json()["marked"] >= 1
    while exists(api, second):
        assert time.time() < deadline + 10, "the group's dead letters were not handled"
        time.sleep(0.1)


@pytest.mark.parametrize("body", [{}, {"ids": [1], "group": "waitlist"}, {"ids": []}, {"ids": ["1"]},
                                  {"ids": [0]}, {"group": ""}, {"ids": list(range(1, 1002))}])
def test_a_retry_names_ids_or_a_group(api, body):
    problem(api.post(BASE + "/admin/dead-letters/retry", body=body, headers=api.admin), 422, "validation")


def test_dead_letters_are_for_admins(api):
    problem(api.get(BASE + "/admin/dead-letters", headers=api.users[0]), 403, "forbidden")
    problem(api.post(BASE + "/admin/dead-letters/retry", body={"group": "waitlist"}, headers=api.users[0]),
            403, "forbidden")
    problem(api.get(BASE + "/admin/dead-letters"), 401, "unauthorized")


def test_metrics_count_dead_letters_per_group_and_topic(api):
    """/metrics has evently_dead_letters{group,topic} (the alert rules of
    examples/deploy/monitoring watch it): one more parked message is one more,
    and a group with none still shows 0, so an alert can tell "none" from
    "no figure"."""
    import re

    def count(text, group, topic):
        m = re.search(r'^evently_dead_letters\{group="%s",topic="%s"\} (\d+)$' % (group, topic), text, re.M)
        return int(m.group(1)) if m else None

    before = count(api.metrics(), "waitlist", "booking-cancelled")
    assert before is not None, "no evently_dead_letters series for a consumer with none"
    ev = new_event(api, capacity=5)["id"]
    dead_letter(api, ev)
    assert count(api.metrics(), "waitlist", "booking-cancelled") == before + 1
    assert count(api.metrics(), "notify-email", "booking-confirmed") is not None
