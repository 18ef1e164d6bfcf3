"""What one client can make WebSockets cost (issue 11): sockets per user and
per worker are capped, a socket lives no longer than its token or its
lifetime, and a client that floods pings without reading is cut off."""
import os
import shutil
import socket
import struct
import time

import pytest

from api_support import assert_booking_invariants, BASE, SCRIPTS, problem, register, sql, start_api
from conftest import make_root
from ws_client import CLOSE, PING, Client


@pytest.fixture(scope="module")
def api():
    scripts = os.path.join(make_root("ws-abuse-scripts"), "scripts")
    shutil.copytree(SCRIPTS, scripts)
    rules = os.path.join(scripts, "rules", "ws.lua")
    with open(rules) as f:
        text = f.read()
    assert "token_recheck_seconds = 300" in text
    with open(rules, "w") as f:
        f.write(text.replace("token_recheck_seconds = 300", "token_recheck_seconds = 1"))
    srv = start_api("api-ws-abuse", users=3, prefix="wsab", scripts=scripts, workers=1,
                    env={"EVENTLY_WS_MAX_PER_WORKER": "40", "EVENTLY_LIMIT_WS_CONNECT_USER": "off",
                         "EVENTLY_LIMIT_WS_CONNECT_ADDRESS": "off",
                         "EVENTLY_WS_MAX_LIFETIME": "3"})
    yield srv
    assert_booking_invariants(srv)  # nothing the abuse did broke a seat count
    srv.stop_and_check()


def worker_fds(api):
    pid = api.worker_pids()[0]
    return len(os.listdir("/proc/%d/fd" % pid))


def closed_with(c, timeout=5):
    c.sock.settimeout(timeout)
    try:
        return c.recv_close()
    except (socket.timeout, ConnectionError):
        return None


def test_two_hundred_sockets_of_one_user_keep_eight_open(api):
    """Each socket beyond the eighth closes the user's oldest with 1008: the
    account's cost stays at eight sockets however many it opens."""
    user = register(api, "many-sockets@example.com")
    fds0 = worker_fds(api)
    open_, codes = [], []
    for _ in range(200):
        c = Client(api, BASE + "/ws", user)
        assert c.accepted(), (c.status, c.headers)
        open_.append(c)
        if len(open_) > 8:
            oldest = open_.pop(0)
            codes.append(closed_with(oldest, timeout=2))
            oldest.send(CLOSE, struct.pack("!H", 1008))
            oldest.close()
    assert codes == [1008] * 192, set(codes)
    for c in open_:  # the newest eight stay open
        c.sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            c.sock.recv(1)
    assert worker_fds(api) - fds0 < 30
    for c in open_:
        c.close()


def test_a_worker_full_of_sockets_answers_503_busy(api):
    users = [register(api, "fill%d@example.com" % i) for i in range(6)]
    held = []
    for u in users:  # 6 users x 7 sockets = 42 > 40 per worker
        for _ in range(7):
            c = Client(api, BASE + "/ws", u)
            if c.status == 503:
                assert c.headers.get("retry-after") and c.body()["type"].endswith("/busy")
                for h in held:
                    h.close()
                return
            assert c.accepted()
            held.append(c)
    pytest.fail("42 sockets were accepted by a worker capped at 40")


def test_logout_closes_the_tokens_open_socket_with_1008(api):
    user = register(api, "ws-revoke@example.com")
    c = Client(api, BASE + "/ws", user)
    assert c.accepted()
    assert api.post(BASE + "/auth/logout", headers=user).status == 204
    assert closed_with(c, timeout=3) == 1008
    c.close()


def test_an_expired_token_closes_its_socket_with_1008(api):
    user = register(api, "ws-expire@example.com")
    c = Client(api, BASE + "/ws", user)
    assert c.accepted()
    sql(api, "UPDATE auth_tokens SET expires_at = now() - interval '1 second' WHERE user_id = "
        "(SELECT id FROM users WHERE email = 'ws-expire@example.com')")
    assert closed_with(c, timeout=5) == 1008
    c.close()


def test_a_socket_past_its_lifetime_is_closed_with_1001(api):
    c = Client(api, BASE + "/ws", api.users[0])
    assert c.accepted()
    t0 = time.time()
    code = closed_with(c, timeout=8)
    assert code == 1001 and 2.5 < time.time() - t0 < 7, (code, time.time() - t0)
    c.close()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def test_a_ping_flood_that_never_reads_is_throttled_and_the_worker_goes_on(api):
    """Pings make the server queue pongs; a client that sends them without
    reading must not grow that queue: the server stops taking its frames
    (the client's sends block), its memory stays flat, and it serves others.
    (The connection itself is dropped at the next ping it cannot answer.)"""
    c = Client(api, BASE + "/ws", api.users[1])
    assert c.accepted()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.sock.settimeout(0.5)
    pid = api.worker_pids()[0]
    rss0 = rss_kib(pid)
    t0, blocked, sent = time.time(), 0, 0
    while time.time() - t0 < 6:
        try:
            c.send(PING, b"x" * 125)
            sent += 1
        except socket.timeout:
            blocked += 1  # the server stopped reading us
        except (BrokenPipeError, ConnectionResetError):
            break  # or cut us off
    assert blocked > 0 or time.time() - t0 < 6, "the server kept taking %d unanswerable pings" % sent
    assert sent < 200000
    assert rss_kib(pid) - rss0 < 50 * 1024
    assert api.get("/health").status == 200
    c.close()


def test_websocket_connects_are_rate_limited_per_user_with_429():
    srv = start_api("api-ws-connect-limit", users=1, prefix="wscl", workers=1,
                    env={"EVENTLY_LIMIT_WS_CONNECT_USER": "3/60"})
    try:
        for _ in range(3):
            c = Client(srv, BASE + "/ws", srv.users[0])
            assert c.accepted()
            c.close()
        c = Client(srv, BASE + "/ws", srv.users[0])
        assert c.status == 429, c.status
        assert c.headers.get("retry-after") and "ws-connect-user" in c.headers.get("ratelimit-policy", "")
        assert c.body()["type"].endswith("/rate-limited")
        c.close()
    finally:
        srv.stop_and_check()
