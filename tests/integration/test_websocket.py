"""API.md "GET /ws": the WebSocket channel, black-box against the real scripts/.

The client is a few lines of raw RFC 6455 here (no library): the tests need to
send what a library would refuse to (oversized and unmasked frames, broken
handshakes). Pushes go through the real evently.ws.publish, run by
`evently lua` on the server's home (its Redis)."""
import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time

import pytest

from api_support import BASE, problem, start_api, token_of
from conftest import clean_env, metric_value, run_cli

from ws_client import CLOSE, PING, PONG, TEXT, Client  # noqa: F401


@pytest.fixture(scope="module")
def api():
    srv = start_api("api-ws", users=2, prefix="ws")
    yield srv
    srv.stop_and_check()


def publish(api, user_id, message):
    script = os.path.join(api.root, "push.lua")
    with open(script, "w") as f:
        f.write('local ws = require "evently.ws"\nlocal json = require "evently.json"\n'
                'local ok, err = ws.publish(tonumber(arg[1]), json.decode(arg[2]))\n'
                'io.write(ok and "ok" or tostring(err))\n')
    p = run_cli(["lua", script, str(user_id), json.dumps(message)], env=clean_env({"EVENTLY_HOME": api.home}))
    assert p.returncode == 0 and p.stdout == "ok", (p.stdout, p.stderr)


def serving_pids(api, clients):
    """The worker pids holding these clients' server-side sockets (via ss), or None."""
    if not shutil.which("ss"):
        return None
    out = subprocess.run(["ss", "-Htnp", "state", "established", "( sport = :%d )" % api.port],
                         capture_output=True, text=True).stdout
    ports = {c.sock.getsockname()[1] for c in clients}
    pids = set()
    for line in out.splitlines():
        fields = line.split()
        peer = fields[3] if len(fields) > 3 else ""
        m = re.search(r"pid=(\d+)", line)
        if m and peer.rsplit(":", 1)[-1].isdigit() and int(peer.rsplit(":", 1)[-1]) in ports:
            pids.add(int(m.group(1)))
    return pids


def me(api, headers):
    r = api.get(BASE + "/users/me", headers=headers)
    assert r.status == 200, r.text
    return r.json()["id"]


def test_upgrade_without_a_token_is_401_before_any_upgrade(api):
    c = Client(api, BASE + "/ws")
    assert c.status == 401
    assert c.headers["content-type"] == "application/problem+json"
    assert c.body()["type"] == "https://evently.dev/problems/unauthorized"
    c.close()


def test_upgrade_with_a_bad_token_is_401(api):
    for c in (Client(api, BASE + "/ws?token=nope"), Client(api, BASE + "/ws", {"Authorization": "Bearer nope"})):
        assert c.status == 401
        assert c.body()["status"] == 401
        c.close()


def test_handshake_accepts_the_token_in_the_query_or_the_authorization_header(api):
    user = api.users[0]
    for c in (Client(api, BASE + "/ws?token=" + token_of(user)), Client(api, BASE + "/ws", user)):
        assert c.accepted(), (c.status, c.headers)
        assert c.headers["upgrade"].lower() == "websocket"
        assert "content-length" not in c.headers
        c.close()


def test_a_published_message_reaches_every_socket_of_its_user_on_both_workers_and_no_one_else(api):
    alice, bob = api.users
    alice_id = me(api, alice)
    # several sockets: SO_REUSEPORT spreads them over both workers
    mine = [Client(api, BASE + "/ws?token=" + token_of(alice)) for _ in range(6)]
    for _ in range(10):
        pids = serving_pids(api, mine)
        if pids is None or len(pids) == 2:
            break
        mine.append(Client(api, BASE + "/ws?token=" + token_of(alice)))
    assert pids is None or pids == set(api.worker_pids()), pids
    theirs = [Client(api, BASE + "/ws", bob) for _ in range(3)]
    assert all(c.accepted() for c in mine + theirs)
    publish(api, alice_id, {"type": "booking.confirmed", "payload": {"booking_id": 7}})
    for c in mine:
        op, payload = c.recv()
        assert op == TEXT
        doc = json.loads(payload)
        assert doc["type"] == "booking.confirmed"
        assert doc["payload"] == {"booking_id": 7}
        assert doc["created_at"].endswith("Z")
    for c in theirs:
        c.sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            c.recv()
    for c in mine + theirs:
        c.close()


def test_a_ping_is_answered_with_a_pong_carrying_its_payload(api):
    c = Client(api, BASE + "/ws", api.users[0])
    assert c.accepted()
    c.send(PING, b"are-you-there")
    assert c.recv() == (PONG, b"are-you-there")
    c.close()


def test_a_message_over_64_kib_closes_with_1009(api):
    c = Client(api, BASE + "/ws", api.users[0])
    assert c.accepted()
    c.send(TEXT, b"x" * 70000)
    assert c.recv_close() == 1009
    c.close()


def test_a_client_close_is_answered_and_the_socket_ends(api):
    c = Client(api, BASE + "/ws", api.users[0])
    assert c.accepted()
    c.send(CLOSE, struct.pack("!H", 1000) + b"bye")
    assert c.recv_close() == 1000
    assert c.sock.recv(10) == b""
    c.close()


def test_an_unmasked_client_frame_is_a_protocol_error(api):
    c = Client(api, BASE + "/ws", api.users[0])
    assert c.accepted()
    c.send(TEXT, b"hello", mask=False)
    assert c.recv_close() == 1002
    c.close()


@pytest.mark.parametrize("drop,extra", [
    ("Sec-WebSocket-Key", {}),
    ("Upgrade", {}),
    ("Sec-WebSocket-Version", {"Sec-WebSocket-Version": "8"}),
    ("Sec-WebSocket-Key", {"Sec-WebSocket-Key": "too-short"}),
    ("Connection", {"Connection": "keep-alive"}),
])
def test_a_malformed_upgrade_gets_a_400_problem_and_the_server_goes_on(api, drop, extra):
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    headers.pop(drop)
    headers.update(extra)
    headers.update(api.users[0])
    r = api.get(BASE + "/ws", headers=headers)
    doc = problem(r, 400, "bad-websocket-handshake")
    assert doc["detail"]
    assert api.get("/health").status == 200


def test_logout_does_not_break_the_server_and_a_new_upgrade_with_that_token_is_401(api):
    from api_support import register
    user = register(api, "ws-logout@example.com")
    closed = api.metrics_when(lambda text: metric_value(text, "evently_websocket_closed_total") or 0)
    c = Client(api, BASE + "/ws", user)
    assert c.accepted()
    assert api.post(BASE + "/auth/logout", headers=user).status == 204
    again = Client(api, BASE + "/ws", user)
    assert again.status == 401
    again.close()
    c.close()
    # the server has handled the socket's end (the logout's 1008, the client's close)
    api.metrics_when(lambda text: metric_value(text, "evently_websocket_closed_total") or 0,
                     lambda n: n > closed)
    assert api.get("/health").status == 200


def test_a_reload_closes_open_sockets_with_1001_so_clients_reconnect_to_new_workers(api):
    import signal
    old = set(api.worker_pids())
    c = Client(api, BASE + "/ws", api.users[0])
    assert c.accepted()
    api.signal(signal.SIGHUP)
    c.sock.settimeout(20)
    assert c.recv_close() == 1001
    c.send(CLOSE, struct.pack("!H", 1001))
    c.close()
    api.wait_workers(2, exclude=old, timeout=30)
    again = Client(api, BASE + "/ws", api.users[0])
    assert again.accepted()
    again.send(PING, b"new")
    assert again.recv() == (PONG, b"new")
    again.close()


def test_metrics_count_opened_and_closed_sockets(api):
    c = Client(api, BASE + "/ws", api.users[0])
    assert c.accepted()
    c.send(CLOSE, struct.pack("!H", 1000))
    assert c.recv_close() == 1000
    c.close()
    text = api.metrics_when(lambda text: text, lambda text: "evently_websocket_closed_total" in text,
                            gap=0.05, deadline_s=5)
    assert re.search(r"^evently_websocket_opened_total \d+", text, re.M), text
    assert re.search(r"^evently_websocket_closed_total \d+", text, re.M), text


def test_a_socket_outlives_the_handler_timeout():
    from api_support import SCRIPTS, register
    from conftest import Server
    srv = Server("api-ws-deadline", scripts=SCRIPTS, workers=1, env={"EVENTLY_HANDLER_TIMEOUT": "1"})
    srv.start()
    try:
        user = register(srv, "ws-deadline@example.com")
        c = Client(srv, BASE + "/ws", user)
        assert c.accepted()
        time.sleep(2.5)  # deliberate: past the 1 s handler timeout, which must not end the socket
        c.send(PING, b"still")
        assert c.recv() == (PONG, b"still")
        publish(srv, me(srv, user), {"type": "waitlist.offered", "payload": {}})
        op, payload = c.recv()
        assert op == TEXT and json.loads(payload)["type"] == "waitlist.offered"
        c.close()
    finally:
        srv.stop_and_check()
