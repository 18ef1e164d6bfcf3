"""Shared by the API suites (test_api_*.py): a server on the real scripts/
with an admin and some users, and helpers that read the answers."""
import json
import os
import threading
import time

from conftest import MIGRATIONS, REPO, Server, clean_env, run_cli

SCRIPTS = os.path.join(REPO, "scripts")
BASE = "/api/v1"


def login(srv, email, password):
    r = srv.post(BASE + "/auth/login", body={"email": email, "password": password})
    assert r.status == 200, r.text
    return {"Authorization": "Bearer " + r.json()["token"]}


def register(srv, email, password="buyerpassword", name="B"):
    r = srv.post(BASE + "/auth/register", body={"email": email, "password": password, "name": name})
    assert r.status == 201, r.text
    return {"Authorization": "Bearer " + r.json()["token"]}


def start_api(name, users=0, prefix="user", env=None, plugins_dir=None, scripts=SCRIPTS, workers=2):
    """A started server with srv.admin (created by the CLI, as API.md says admins
    are) and srv.users: bearer headers of `users` registered users. scripts: a
    copy of scripts/ when a test edits the rules. Registering them all from
    127.0.0.1 would pass the register-address limit, so these servers have a
    generous one (test_abuse_login.py tests the default)."""
    env = dict({"EVENTLY_LIMIT_REGISTER_ADDRESS": "1000/60"}, **(env or {}))
    srv = Server(name, scripts=scripts, workers=workers, env=env, plugins_dir=plugins_dir)
    srv.start()
    env = clean_env({"EVENTLY_HOME": srv.home, "EVENTLY_MIGRATIONS": MIGRATIONS, "EVENTLY_SCRIPTS": scripts})
    p = run_cli(["user", "create", "--admin", "--email", "admin@example.com", "--password", "adminpassword"], env=env)
    assert p.returncode == 0, p.stderr
    srv.admin = login(srv, "admin@example.com", "adminpassword")
    srv.users = [register(srv, "%s%d@example.com" % (prefix, i)) for i in range(users)]
    return srv


def problem(r, status, kind):
    """Asserts an RFC 9457 answer of this status and kind; returns the document."""
    assert r.status == status, (r.status, r.text)
    assert r.header("Content-Type") == "application/problem+json"
    assert r.json()["type"] == "https://evently.dev/problems/" + kind
    return r.json()


def token_of(headers):
    """The bearer token in an Authorization header dict."""
    return headers["Authorization"].split(" ", 1)[1]


def new_event(api, **fields):
    """An event created by the admin (published, 100 seats unless fields say
    otherwise; a field set to None is sent as null); returns its document."""
    body = {"name": "Show", "venue": "Hall", "starts_at": "2030-05-01T20:00:00Z", "capacity": 100,
            "price_cents": 1000, "status": "published"}
    body.update(fields)
    r = api.post(BASE + "/events", body=body, headers=api.admin)
    assert r.status == 201, r.text
    return r.json()


def book(api, who, event_id, quantity, **kw):
    """POST /bookings as `who`; the raw answer."""
    return api.post(BASE + "/bookings", body={"event_id": event_id, "quantity": quantity}, headers=who, **kw)


def book_until_201(api, who, event_id, within=0.5, failure="sold out was still answered after seats came back"):
    """Books one seat until it is granted (its booking document); each refusal
    before then must be a sold-out 409, and none may come after `within` s."""
    deadline = time.time() + within
    while True:
        r = book(api, who, event_id, 1)
        if r.status == 201:
            return r.json()
        problem(r, 409, "sold-out")
        assert time.time() < deadline, failure


def sql(api, query, *args):
    """Runs one query through `evently lua` against the server's database; returns rows."""
    # One file per thread: a query run from another thread (a lock holder) must
    # not see this one's script half-written.
    script = os.path.join(api.root, "q-%d.lua" % threading.get_ident())
    with open(script, "w") as f:
        f.write('local db = require "evently.db"\nlocal json = require "evently.json"\n'
                'local rows = assert(db.query(arg[1], table.unpack(arg, 2)))\n'
                'io.write(json.encode(json.array(rows)))\n')
    p = run_cli(["lua", script, query] + [str(a) for a in args], env=clean_env({"EVENTLY_HOME": api.home}))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def assert_booking_invariants(api):
    """For every event: confirmed seats never exceed capacity, and available
    is exactly capacity - confirmed - held (issue 11: after every abuse test)."""
    rows = sql(api, """SELECT e.id, e.capacity, e.available,
        (SELECT coalesce(sum(quantity), 0) FROM bookings b WHERE b.event_id = e.id AND b.status = 'confirmed') AS confirmed,
        (SELECT coalesce(sum(quantity), 0) FROM inventory_holds h WHERE h.pool = 'seats' AND h.key = e.id
           AND h.state = 'held') AS held
        FROM events e""")
    bad = [r for r in rows if r["confirmed"] > r["capacity"]
           or r["available"] != r["capacity"] - r["confirmed"] - r["held"]]
    assert not bad, bad
    return len(rows)
