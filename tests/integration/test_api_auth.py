"""API.md "Auth and users", black-box against the real scripts/."""
import os

import pytest

from conftest import MIGRATIONS, REPO, clean_env, run_cli

SCRIPTS = os.path.join(REPO, "scripts")
BASE = "/api/v1"


@pytest.fixture(scope="module")
def api(request):
    from conftest import Server
    srv = Server("api-auth", scripts=SCRIPTS, workers=2)
    srv.start()
    yield srv
    srv.stop_and_check()


def register(api, email, password="longpassword", name="Ann", **extra):
    body = {"email": email, "password": password, "name": name}
    body.update(extra)
    return api.post(BASE + "/auth/register", body=body)


def bearer(token):
    return {"Authorization": "Bearer " + token}


def assert_problem(r, status, kind):
    assert r.status == status, (r.status, r.text)
    assert r.header("Content-Type") == "application/problem+json"
    doc = r.json()
    assert doc["status"] == status
    assert doc["type"] == "https://evently.dev/problems/" + kind
    return doc


def test_register_returns_the_user_and_a_working_token(api):
    r = register(api, "reg1@example.com")
    assert r.status == 201, r.text
    doc = r.json()
    assert doc["user"]["email"] == "reg1@example.com"
    assert doc["user"]["role"] == "user"
    assert set(doc["user"]) == {"id", "email", "name", "role", "created_at"}
    assert "password" not in r.text and "argon2" not in r.text
    me = api.get(BASE + "/users/me", headers=bearer(doc["token"]))
    assert me.status == 200
    assert me.json()["id"] == doc["user"]["id"]


def test_register_never_takes_a_role_from_the_body(api):
    r = register(api, "sneaky@example.com", role="admin", id=1)
    assert r.status == 201
    assert r.json()["user"]["role"] == "user"


def test_duplicate_email_is_409_whatever_its_case(api):
    assert register(api, "dup@example.com").status == 201
    assert_problem(register(api, "DUP@example.com"), 409, "email-taken")


@pytest.mark.parametrize("body, fields", [
    ({"email": "a@b.co", "password": "short", "name": "A"}, {"password"}),
    ({"password": "longpassword"}, {"email", "name"}),
    ({"email": 42, "password": "longpassword", "name": "A"}, {"email"}),
    ({"email": "not-an-email", "password": "longpassword", "name": "A"}, {"email"}),
    # a mailer reads this as victim@y.com: only a bare mailbox is an address here
    ({"email": "x<victim@y.com>", "password": "longpassword", "name": "A"}, {"email"}),
    ({"email": "Eve <eve@y.com>", "password": "longpassword", "name": "A"}, {"email"}),
    ({"email": "a@b.co,victim@y.com", "password": "longpassword", "name": "A"}, {"email"}),
    ({"email": "a@b.co", "password": ["x"], "name": ""}, {"password", "name"}),
])
def test_register_validates_every_field_with_422(api, body, fields):
    r = api.post(BASE + "/auth/register", body=body)
    doc = assert_problem(r, 422, "validation")
    assert {e["field"] for e in doc["errors"]} == fields


def test_malformed_json_is_400_and_a_non_object_body_422(api):
    r = api.request("POST", BASE + "/auth/register", body=b'{"email": ',
                    headers={"Content-Type": "application/json"})
    assert_problem(r, 400, "malformed-json")
    for body in (b"[1, 2]", b"7", b'"text"'):
        r = api.request("POST", BASE + "/auth/register", body=body,
                        headers={"Content-Type": "application/json"})
        doc = assert_problem(r, 422, "validation")
        assert doc["errors"][0]["field"] == "body"
    r = api.request("POST", BASE + "/auth/register", body=b"")
    assert_problem(r, 422, "validation")


def test_login_gives_a_token_and_wrong_credentials_get_the_same_401(api):
    assert register(api, "login@example.com", password="rightpassword").status == 201
    r = api.post(BASE + "/auth/login", body={"email": "Login@example.com", "password": "rightpassword"})
    assert r.status == 200, r.text
    doc = r.json()
    assert doc["user"]["email"] == "login@example.com" and doc["token"] and doc["expires_at"]
    wrong = assert_problem(api.post(BASE + "/auth/login", body={"email": "login@example.com", "password": "wrongpassword"}),
                           401, "invalid-credentials")
    unknown = assert_problem(api.post(BASE + "/auth/login", body={"email": "nobody@example.com", "password": "wrongpassword"}),
                             401, "invalid-credentials")
    assert wrong == unknown


def test_logout_stops_the_token_at_once(api):
    token = register(api, "logout@example.com").json()["token"]
    assert api.get(BASE + "/users/me", headers=bearer(token)).status == 200
    assert api.post(BASE + "/auth/logout", headers=bearer(token)).status == 204
    assert_problem(api.get(BASE + "/users/me", headers=bearer(token)), 401, "unauthorized")
    assert_problem(api.post(BASE + "/auth/logout", headers=bearer(token)), 401, "unauthorized")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic YTpi"},
                                     {"Authorization": "Bearer " + "x" * 300}])
def test_protected_route_without_a_valid_token_is_401_with_a_challenge(api, headers):
    r = api.get(BASE + "/users/me", headers=headers)
    assert_problem(r, 401, "unauthorized")
    assert r.header("WWW-Authenticate") == "Bearer"


def test_admins_come_from_the_command_line(api):
    env = clean_env({"EVENTLY_HOME": api.home, "EVENTLY_MIGRATIONS": MIGRATIONS, "EVENTLY_SCRIPTS": SCRIPTS})
    p = run_cli(["user", "create", "--admin", "--email", "boss@example.com", "--password", "bosspassword"], env=env)
    assert p.returncode == 0, p.stderr
    r = api.post(BASE + "/auth/login", body={"email": "boss@example.com", "password": "bosspassword"})
    assert r.status == 200
    assert r.json()["user"]["role"] == "admin"
