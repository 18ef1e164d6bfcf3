"""Accounts an operator and a user can stop (issue 15; README "Accounts"):
log out everywhere, change a password, reset a forgotten one by mail,
disable an account, and tokens that end however much they are used. Each
against the real scripts/, with WebSockets that must close at once."""
import re
import struct
import time

import pytest

from api_support import BASE, login, problem, register, sql, start_api, token_of
from smtp_sink import sink  # noqa: F401  (the module fixture)
from ws_client import CLOSE, Client


@pytest.fixture(scope="module")
def api(sink):  # noqa: F811
    srv = start_api("api-accounts", env={"EVENTLY_SMTP_URL": sink.url})
    yield srv
    srv.stop_and_check()


def me(api, who):
    return api.get(BASE + "/users/me", headers=who).status


def socket_of(api, who):
    c = Client(api, BASE + "/ws", who)
    assert c.accepted()
    c.sock.settimeout(5)
    return c


def closed_at_once(c):
    """The server closes the socket (1008, policy: the token is gone)."""
    try:
        assert c.recv_close() == 1008
        c.send(CLOSE, struct.pack("!H", 1008))
    finally:
        c.close()


def test_logout_all_ends_every_session_and_its_sockets(api):
    a = register(api, "everywhere@example.com", password="first password")
    b, c = login(api, "everywhere@example.com", "first password"), login(api, "everywhere@example.com", "first password")
    other = register(api, "bystander@example.com")
    sock = socket_of(api, b)
    assert [me(api, t) for t in (a, b, c)] == [200, 200, 200]
    assert api.post(BASE + "/auth/logout-all", headers=c).status == 204
    assert [me(api, t) for t in (a, b, c)] == [401, 401, 401]
    closed_at_once(sock)
    assert me(api, other) == 200  # nobody else's session
    assert me(api, login(api, "everywhere@example.com", "first password")) == 200
    problem(api.post(BASE + "/auth/logout-all"), 401, "unauthorized")


def test_a_password_change_needs_the_current_one_and_ends_the_other_sessions(api):
    here = register(api, "changer@example.com", password="old password")
    elsewhere = login(api, "changer@example.com", "old password")
    url = BASE + "/users/me/password"
    problem(api.post(url, body={"current_password": "wrong guess", "password": "new password"}, headers=here),
            403, "invalid-credentials")
    doc = problem(api.post(url, body={"current_password": "old password", "password": "short"}, headers=here),
                  422, "validation")
    assert doc["errors"][0]["field"] == "password"
    problem(api.post(url, body={"current_password": "old password", "password": "new password"}), 401, "unauthorized")
    assert me(api, elsewhere) == 200
    assert api.post(url, body={"current_password": "old password", "password": "new password"},
                    headers=here).status == 204
    assert me(api, here) == 200 and me(api, elsewhere) == 401
    problem(api.post(BASE + "/auth/login", body={"email": "changer@example.com", "password": "old password"}),
            401, "invalid-credentials")
    assert me(api, login(api, "changer@example.com", "new password")) == 200


def reset_code(sink, email):
    [m] = sink.wait_for(lambda m: m.to == [email], timeout=15)
    found = re.search(r"^([A-Za-z0-9_-]{40,})$", m.text, re.M)
    assert found, m.text
    return found.group(1)


def test_a_forgotten_password_is_reset_with_a_mailed_code_that_works_once(api, sink):
    old = register(api, "forgot@example.com", password="lost password")
    sock = socket_of(api, old)
    r = api.post(BASE + "/auth/password-reset", body={"email": "Forgot@Example.com"})
    assert r.status == 202, r.text
    # an unknown address gets the same answer, and no mail
    nobody = api.post(BASE + "/auth/password-reset", body={"email": "nobody-here@example.com"})
    assert (nobody.status, nobody.json()) == (202, r.json())
    code = reset_code(sink, "forgot@example.com")
    confirm = BASE + "/auth/password-reset/confirm"
    doc = problem(api.post(confirm, body={"token": code[:-2] + "xx", "password": "found password"}), 422, "validation")
    assert doc["errors"][0]["field"] == "token"
    assert api.post(confirm, body={"token": code, "password": "found password"}).status == 204
    assert me(api, old) == 401  # every session ended
    closed_at_once(sock)
    problem(api.post(confirm, body={"token": code, "password": "another password"}), 422, "validation")
    assert me(api, login(api, "forgot@example.com", "found password")) == 200
    time.sleep(0.5)  # the unknown address's mail would have gone out by now
    assert not [m for m in sink.messages if m.to == ["nobody-here@example.com"]]


def test_a_disabled_account_stops_at_once_and_can_be_enabled_again(api):
    user = register(api, "suspect@example.com", password="suspect password")
    uid = api.get(BASE + "/users/me", headers=user).json()["id"]
    sock = socket_of(api, user)
    url = BASE + "/admin/users/%d" % uid
    problem(api.request("PATCH", url, body={"disabled": True}, headers=user), 403, "forbidden")
    problem(api.request("PATCH", url, body={"disabled": "yes"}, headers=api.admin), 422, "validation")
    problem(api.request("PATCH", BASE + "/admin/users/999999999", body={"disabled": True}, headers=api.admin),
            404, "not-found")
    r = api.request("PATCH", url, body={"disabled": True}, headers=api.admin)
    assert r.status == 200 and r.json()["disabled"] is True and r.json()["email"] == "suspect@example.com", r.text
    assert me(api, user) == 401
    closed_at_once(sock)
    problem(api.post(BASE + "/auth/login", body={"email": "suspect@example.com", "password": "suspect password"}),
            403, "account-disabled")
    # a wrong password still says only "wrong": a disabled account is not an oracle for guessing
    problem(api.post(BASE + "/auth/login", body={"email": "suspect@example.com", "password": "not it at all"}),
            401, "invalid-credentials")
    r = api.request("PATCH", url, body={"disabled": False}, headers=api.admin)
    assert r.status == 200 and r.json()["disabled"] is False
    assert me(api, login(api, "suspect@example.com", "suspect password")) == 200
    admin_id = api.get(BASE + "/users/me", headers=api.admin).json()["id"]
    problem(api.request("PATCH", BASE + "/admin/users/%d" % admin_id, body={"disabled": True}, headers=api.admin),
            422, "validation")


def test_a_token_in_constant_use_still_ends_after_its_absolute_lifetime(api):
    who = register(api, "forever@example.com")
    fresh = login(api, "forever@example.com", "buyerpassword")
    # the login was 31 days ago (rules.auth token_max_days = 30), and the token never idled
    sql(api, "UPDATE auth_tokens SET created_at = now() - interval '31 days' WHERE token_hash = encode(sha256($1::bytea), 'hex')",
        token_of(fresh))
    assert me(api, fresh) == 401
    assert me(api, who) == 200


@pytest.fixture(scope="module")
def verifying(sink):
    """A server whose rules require new accounts to confirm their address."""
    import os
    import shutil
    from api_support import SCRIPTS
    from conftest import make_root
    scripts = os.path.join(make_root("verify-scripts"), "scripts")
    shutil.copytree(SCRIPTS, scripts)
    path = os.path.join(scripts, "rules", "auth.lua")
    with open(path) as f:
        src = f.read()
    src, n = re.subn(r"verify_email = false,", "verify_email = true,", src)
    assert n == 1
    with open(path, "w") as f:
        f.write(src)
    srv = start_api("api-verify", scripts=scripts, env={"EVENTLY_SMTP_URL": sink.url})
    yield srv
    srv.stop_and_check()


def verify_code(sink, email, nth=1):
    msgs = sink.wait_for(lambda m: m.to == [email] and "Confirm your" in m.subject, count=nth, timeout=15)
    found = re.search(r"^(\d+\.\d+\.[0-9a-f]{64})$", msgs[nth - 1].text, re.M)
    assert found, msgs[nth - 1].text
    return found.group(1)


def test_with_verify_email_an_account_logs_in_only_once_its_address_is_confirmed(verifying, sink):
    api = verifying
    body = {"email": "new@example.com", "password": "new password", "name": "N"}
    r = api.post(BASE + "/auth/register", body=body)
    assert r.status == 201 and "token" not in r.json() and r.json()["verification"] == "mailed", r.text
    login_body = {"email": "new@example.com", "password": "new password"}
    problem(api.post(BASE + "/auth/login", body=login_body), 403, "email-unverified")
    code = verify_code(sink, "new@example.com")
    uid, expires, mac = code.split(".")
    # a code altered in any part, or made for another account, is refused
    for bad in ("%s.%s.%s" % (int(uid) + 1, expires, mac), "%s.%d.%s" % (uid, int(expires) + 1, mac),
                "%s.%s.%s" % (uid, expires, mac[::-1]), "nonsense"):
        doc = problem(api.post(BASE + "/auth/verify-email", body={"token": bad}), 422, "validation")
        assert doc["errors"][0]["field"] == "token"
    problem(api.post(BASE + "/auth/login", body=login_body), 403, "email-unverified")
    # a new code on request; either works
    assert api.post(BASE + "/auth/verify-email/resend", body={"email": "new@example.com"}).status == 202
    assert api.post(BASE + "/auth/verify-email/resend", body={"email": "nobody@example.com"}).status == 202
    second = verify_code(sink, "new@example.com", nth=2)
    assert api.post(BASE + "/auth/verify-email", body={"token": second}).status == 204
    assert api.post(BASE + "/auth/verify-email", body={"token": code}).status == 204  # idempotent
    r = api.post(BASE + "/auth/login", body=login_body)
    assert r.status == 200, r.text
    # the admin made by the command line never needed a code
    assert me(api, api.admin) == 200
