"""The process model: pid file, workers replaced after a crash, graceful stop
with requests in flight, several servers side by side."""
import os
import signal
import threading
import time

import pytest

from conftest import Server, pid_alive, processes_under


@pytest.fixture(scope="module")
def other():
    """A second server with its own home; the last test of this module stops it."""
    s = Server("other", workers=2)
    try:
        s.start()
        yield s
        if s.running():
            s.stop_and_check()
    finally:
        s.force_cleanup()


def test_pid_file_names_the_master(server):
    with open(os.path.join(server.home, "evently.pid")) as f:
        assert int(f.read().strip()) == server.pid


def test_two_workers_run(server):
    assert len(server.worker_pids()) == 2


def test_two_servers_side_by_side(server, other):
    assert other.home != server.home and other.port != server.port
    for s in (server, other):
        r = s.get("/health/ready")
        assert r.status == 200
        assert r.json()["components"]["postgres"]["state"] == "up"
    # each has its own embedded postgres: one per data dir
    def pg(s):
        return [p for p, cmd in processes_under(s.home) if "postgres" in cmd and " -D " in cmd]

    assert len(pg(server)) == 1 and len(pg(other)) == 1
    assert pg(server) != pg(other)
    # requests counted separately
    before = other.metric("evently_http_requests_total", route="/items/:id") or 0
    for _ in range(3):
        assert server.get("/items/x").status == 200
    assert (other.metric("evently_http_requests_total", route="/items/:id") or 0) == before


def test_killed_worker_is_replaced_and_serving_goes_on(other):
    workers = other.wait_workers(2)
    time.sleep(1.1)  # older than a second: replaced at once, not after the crash-loop pause
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    failures = 0
    t0 = time.monotonic()
    new = None
    while time.monotonic() - t0 < 10:
        r = other.get("/version")
        failures += r.status != 200
        pids = other.worker_pids()
        if len(pids) == 2 and victim not in pids:
            new = pids
            break
        time.sleep(0.05)
    assert new, "worker %d was not replaced; workers now %r" % (victim, other.worker_pids())
    assert workers[1] in new
    assert failures == 0
    for _ in range(10):
        assert other.get("/version").status == 200
    assert other.metric("evently_worker_restarts_total") == 1
    assert other.metric("evently_workers") == 2
    other.wait_log(r"worker \d+ \(pid %d\) died \(signal 9\)" % victim)


def test_ready_is_503_when_redis_is_down_and_liveness_stays_up(other):
    m = other.wait_log(r"started Redis \(pid (\d+)\)")
    redis = int(m.group(1))
    assert pid_alive(redis)
    os.kill(redis, signal.SIGKILL)  # the embedded redis of this test's own server
    deadline = time.time() + 10
    r = other.get("/health/ready")
    while r.status == 200 and time.time() < deadline:
        time.sleep(0.1)
        r = other.get("/health/ready")
    assert r.status == 503
    doc = r.json()
    assert doc["status"] == "not_ready"
    assert doc["components"]["redis"]["state"] == "down"
    assert doc["components"]["postgres"]["state"] == "up"
    assert other.get("/health").status == 200
    assert other.get("/version").status == 200


def test_sigterm_lets_an_inflight_request_finish_and_exits_0(other):
    result = {}

    def slow():
        try:
            r = other.get("/sleep?s=1.5&tag=sigterm-inflight", timeout=30)
            result["status"], result["body"] = r.status, r.json()
            result["connection"] = r.header("connection")
        except Exception as e:  # noqa: BLE001
            result["error"] = repr(e)

    workers = other.worker_pids()
    since = other.log_size()
    t = threading.Thread(target=slow)
    t.start()
    other.wait_log(r"sleep-start sigterm-inflight", since=since)  # the request is with its handler now
    signalled_at = time.monotonic()
    other.signal(signal.SIGTERM)
    rc = other.wait(timeout=60)
    exited_at = time.monotonic()
    t.join(30)
    assert result.get("status") == 200, result
    assert result["body"]["slept"] == 1.5
    assert result["connection"] == "close"
    assert rc == 0, other.log_tail()
    # the handler's own times (CLOCK_MONOTONIC, as time.monotonic() here):
    # it was running when SIGTERM came and ended before the server exited
    body = result["body"]
    assert body["started"] < signalled_at < body["ended"], (signalled_at, body)
    assert body["ended"] < exited_at, "exited before the in-flight request finished: %r" % ((exited_at, body),)
    left = other.leftovers()
    assert not left, "left running after SIGTERM: %r" % left
    assert not any(pid_alive(p) for p in workers)
    assert not os.path.exists(os.path.join(other.home, "evently.pid"))
    log = other.log_text()
    assert "stopped Redis" in log and "stopped PostgreSQL" in log


def test_sigterm_during_startup_leaves_no_services(start_server):
    """A stop that arrives while the embedded services start (before the
    server answers) must still stop what was started."""
    srv = start_server("earlystop", wait=False)
    srv.wait_log(r"started PostgreSQL", timeout=60)
    srv.signal(signal.SIGTERM)
    rc = srv.wait(timeout=60)
    left = srv.leftovers(timeout=5)
    srv.force_cleanup()  # whatever was left, so nothing outlives the test
    assert not left, "exit %r after SIGTERM at startup, left running: %r" % (rc, left)


def test_a_second_server_on_a_busy_port_refuses_to_start(server):
    """SO_REUSEPORT would let it share the port unseen; it must say so and exit."""
    s = Server("sameport", workers=1)
    s.port = server.port
    try:
        s.start(wait=False)
        rc = s.wait(timeout=60)
        assert rc != 0
        with open(s.log_path) as f:
            assert "port is in use by another process" in f.read()
        assert server.get("/health").status == 200
    finally:
        s.force_cleanup()
