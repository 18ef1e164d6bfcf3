"""API.md "Events", black-box against the real scripts/."""
import os

import pytest

from api_support import BASE, new_event, problem, start_api
from conftest import clean_env, run_cli


@pytest.fixture(scope="module")
def api():
    srv = start_api("api-events", users=1, prefix="u")
    srv.user = srv.users[0]
    yield srv
    srv.stop_and_check()


def test_admin_creates_an_event_with_defaults_and_available_equal_to_capacity(api):
    ev = new_event(api, name="Defaults", status=None)
    assert ev["available"] == 100 and ev["capacity"] == 100
    assert ev["status"] == "draft" and ev["max_per_booking"] == 10 and ev["currency"] == "EUR"
    assert ev["starts_at"] == "2030-05-01T20:00:00Z"
    for field in ("id", "created_at", "updated_at", "sales_start", "description"):
        assert field in ev


def test_create_needs_admin(api):
    body = {"name": "X", "venue": "Y", "starts_at": "2030-01-01T00:00:00Z", "capacity": 1, "price_cents": 0}
    problem(api.post(BASE + "/events", body=body), 401, "unauthorized")
    problem(api.post(BASE + "/events", body=body, headers=api.user), 403, "forbidden")


@pytest.mark.parametrize("body, fields", [
    ({}, {"name", "venue", "starts_at", "capacity", "price_cents"}),
    ({"name": "N", "venue": "V", "starts_at": "tomorrow", "capacity": 0, "price_cents": -1},
     {"starts_at", "capacity", "price_cents"}),
    ({"name": "N", "venue": "V", "starts_at": "2030-01-01T00:00:00Z", "capacity": 1.5, "price_cents": "1",
      "status": "open", "currency": "euro"}, {"capacity", "price_cents", "status", "currency"}),
])
def test_create_validates_fields_with_422(api, body, fields):
    doc = problem(api.post(BASE + "/events", body=body, headers=api.admin), 422, "validation")
    assert {e["field"] for e in doc["errors"]} == fields


def test_contradicting_times_are_422(api):
    body = {"name": "N", "venue": "V", "starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z",
            "capacity": 1, "price_cents": 0}
    problem(api.post(BASE + "/events", body=body, headers=api.admin), 422, "validation")


def test_available_is_never_taken_from_a_client(api):
    ev = new_event(api, available=5, id=999999)
    assert ev["available"] == 100 and ev["id"] != 999999


def test_public_detail_hides_drafts_admin_sees_them(api):
    draft = new_event(api, status="draft")
    problem(api.get(BASE + "/events/%d" % draft["id"]), 404, "not-found")
    assert api.get(BASE + "/events/%d" % draft["id"], headers=api.admin).status == 200
    problem(api.get(BASE + "/events/99999999"), 404, "not-found")
    problem(api.get(BASE + "/events/abc"), 404, "not-found")


def test_patch_updates_and_the_cached_detail_follows_at_once(api):
    ev = new_event(api, name="Before")
    assert api.get(BASE + "/events/%d" % ev["id"]).json()["name"] == "Before"  # now cached
    r = api.request("PATCH", BASE + "/events/%d" % ev["id"], body={"name": "After", "capacity": 150},
                    headers=api.admin)
    assert r.status == 200, r.text
    assert r.json()["capacity"] == 150 and r.json()["available"] == 150
    for _ in range(6):  # every worker, at once
        got = api.get(BASE + "/events/%d" % ev["id"]).json()
        assert got["name"] == "After" and got["available"] == 150


def test_patch_capacity_below_sold_is_409(api):
    ev = new_event(api, capacity=10)
    # selling needs the bookings API; simulate 7 tickets held with the database
    env = clean_env({"EVENTLY_HOME": api.home})
    script = os.path.join(api.root, "sell.lua")
    with open(script, "w") as f:
        f.write('local db = require "evently.db"\n'
                'assert(db.query("UPDATE events SET available = available - 7 WHERE id = $1", %d))\n' % ev["id"])
    p = run_cli(["lua", script], env=env)
    assert p.returncode == 0, p.stderr
    doc = problem(api.request("PATCH", BASE + "/events/%d" % ev["id"], body={"capacity": 6}, headers=api.admin),
                  409, "capacity-below-sold")
    assert doc["sold"] == 7
    r = api.request("PATCH", BASE + "/events/%d" % ev["id"], body={"capacity": 7}, headers=api.admin)
    assert r.status == 200 and r.json()["available"] == 0


def test_delete_cancels_the_event(api):
    ev = new_event(api)
    r = api.request("DELETE", BASE + "/events/%d" % ev["id"], headers=api.admin)
    assert r.status == 200 and r.json()["status"] == "cancelled"
    assert api.get(BASE + "/events/%d" % ev["id"]).json()["status"] == "cancelled"
    problem(api.request("DELETE", BASE + "/events/%d" % ev["id"], headers=api.user), 403, "forbidden")


def test_list_filters_pages_and_hides_drafts(api):
    for i in range(3):
        new_event(api, name="Bebop night %d" % i, venue="Bebop Cellar", starts_at="2031-0%d-01T20:00:00Z" % (i + 1))
    new_event(api, name="Bebop draft", status="draft", starts_at="2031-02-15T20:00:00Z")
    r = api.get(BASE + "/events?q=bebop&size=2&page=1")
    assert r.status == 200, r.text
    doc = r.json()
    assert doc["total"] == 3 and doc["size"] == 2 and doc["page"] == 1 and len(doc["items"]) == 2
    assert [e["name"] for e in doc["items"]] == ["Bebop night 0", "Bebop night 1"]
    doc2 = api.get(BASE + "/events?q=bebop&size=2&page=2").json()
    assert [e["name"] for e in doc2["items"]] == ["Bebop night 2"]
    ranged = api.get(BASE + "/events?q=bebop%20cellar&from=2031-01-15T00:00:00Z&to=2031-02-28T00:00:00Z").json()
    assert [e["name"] for e in ranged["items"]] == ["Bebop night 1"]
    admin = api.get(BASE + "/events?q=bebop", headers=api.admin).json()
    assert admin["total"] == 4
    empty = api.get(BASE + "/events?q=no-such-thing")
    assert empty.text.find('"items":[]') >= 0, empty.text
    # a new event shows in the (cached) list at once
    new_event(api, name="Bebop night late", venue="Bebop Cellar", starts_at="2031-12-01T20:00:00Z")
    assert api.get(BASE + "/events?q=bebop&size=2&page=1").json()["total"] == 4


@pytest.mark.parametrize("query", ["size=0", "size=101", "page=0", "page=x", "from=yesterday", "status=open"])
def test_list_rejects_bad_parameters_with_422(api, query):
    problem(api.get(BASE + "/events?" + query), 422, "validation")


def test_a_fresh_embedded_server_seeds_demo_events_once(api):
    # the module's server started on a fresh home from the real scripts/
    demo = api.get(BASE + "/events?q=Lua%20Conf").json()
    assert demo["total"] == 1
    assert api.get(BASE + "/events?q=Secret%20Gig").json()["total"] == 0  # the draft stays hidden
