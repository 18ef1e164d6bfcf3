"""Hostile connections (issue 11): idle sockets, descriptor exhaustion and the
connection limit must not make a worker spin, flood its log or stop answering.
Each test reads the worker's own CPU time (/proc) and log size around the
abuse, and checks that a new client is still answered."""
import concurrent.futures
import os
import socket
import subprocess
import time

from conftest import Server, read_response


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_lines(srv):
    """Lines of the server log that are not access-log entries (one per answered request)."""
    with open(srv.log_path, "rb") as f:
        return sum(1 for line in f if not line.startswith(b'{"time"'))


def get(srv, path, timeout=1.0):
    """One request on a new connection; (status, seconds)."""
    t0 = time.time()
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
    try:
        s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
        r = read_response(s.makefile("rb"))
        return (r.status if r else "closed"), time.time() - t0
    finally:
        s.close()


def idle_sockets(srv, n):
    socks = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", srv.port), timeout=2))
        except OSError:
            break
    return socks


def test_idle_clients_beyond_the_descriptor_limit_cost_nothing():
    """ulimit -n 256 and 366 idle TCP connections that send nothing: /health
    answers within 1 s, the worker stays under 10 % CPU and the log grows by a
    handful of lines, not millions."""
    srv = Server("abuse-idle", workers=1, nofile=256).start()
    try:
        worker = srv.wait_workers(1)[0]
        lines0 = log_lines(srv)
        socks = idle_sockets(srv, 366)
        time.sleep(1.5)  # held, as an attacker holds them: past the first-request grace
        cpu0, t0 = cpu_seconds(worker), time.time()
        worst = 0.0
        for _ in range(10):
            status, took = get(srv, "/health")
            assert status == 200
            worst = max(worst, took)
            time.sleep(0.3)
        cpu = (cpu_seconds(worker) - cpu0) / (time.time() - t0)
        assert worst < 1.0, worst
        assert cpu < 0.10, "worker used %.0f%% CPU with idle clients" % (cpu * 100)
        assert log_lines(srv) - lines0 < 100, srv.log_tail(20)
        for s in socks:
            s.close()
    finally:
        srv.stop_and_check()


def test_a_connection_that_sends_nothing_gets_the_read_timeout_not_the_idle_one():
    srv = Server("abuse-silent", workers=1, env={"EVENTLY_READ_TIMEOUT": "1",
                                                 "EVENTLY_IDLE_TIMEOUT": "60"}).start()
    try:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        t0 = time.time()
        assert s.recv(100) == b""  # closed by the server, no answer owed
        assert time.time() - t0 < 3
        # a connection that has been served keeps the keep-alive idle time
        k = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        k.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(k.makefile("rb")).status == 200
        k.settimeout(2.5)
        try:
            data = k.recv(100)
            assert False, "closed after %r" % data
        except socket.timeout:
            pass  # still open past the read timeout
        k.close()
    finally:
        srv.stop_and_check()


def test_at_the_connection_limit_the_oldest_idle_connection_makes_room():
    """As nginx reuses keep-alive connections: a new client is served, the
    longest-idle connection is closed to make room, none gets a 503."""
    srv = Server("abuse-limit", workers=1, env={"EVENTLY_MAX_CONNECTIONS": "20"}).start()
    try:
        socks = idle_sockets(srv, 20)
        time.sleep(1.5)  # past the grace a silent new connection gets for its first request
        for _ in range(5):
            status, _ = get(srv, "/health", timeout=5)
            assert status == 200
        socks[0].settimeout(2)
        assert socks[0].recv(10) == b""  # the oldest was closed
        for s in socks:
            s.close()
    finally:
        srv.stop_and_check()


def test_out_of_descriptors_the_worker_sheds_with_503_and_recovers():
    """Every descriptor of the worker taken (a leak, a hostile neighbour): a new
    client gets a 503 problem document at once instead of a hang, the worker
    does not spin on the readable listening socket, one log line says so, and
    service resumes when descriptors come back."""
    srv = Server("abuse-emfile", workers=1, nofile=512).start()
    try:
        worker = srv.wait_workers(1)[0]
        hog = srv.post("/fd-hog?secs=4")
        assert hog.status == 200 and hog.json()["held"] > 100
        lines0 = log_lines(srv)
        cpu0, t0 = cpu_seconds(worker), time.time()
        def attempt(_):
            try:
                status, took = get(srv, "/health", timeout=2)
                assert took < 1.0, took
                return status
            except ConnectionResetError:
                return "reset"
        statuses = []
        with concurrent.futures.ThreadPoolExecutor(10) as ex:
            while time.time() - t0 < 2.5:  # ten clients at once: more than the free descriptors
                statuses += list(ex.map(attempt, range(10)))
                time.sleep(0.05)
        cpu = (cpu_seconds(worker) - cpu0) / (time.time() - t0)
        assert 503 in statuses, statuses
        assert cpu < 0.10, "worker used %.0f%% CPU out of descriptors" % (cpu * 100)
        assert log_lines(srv) - lines0 < 20, srv.log_tail(20)
        deadline = time.time() + 10
        while get(srv, "/health", timeout=2)[0] != 200:
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        srv.stop_and_check()


def test_a_max_connections_the_descriptor_limit_cannot_honour_is_refused():
    srv = Server("abuse-nofile", workers=1, nofile=256, env={"EVENTLY_MAX_CONNECTIONS": "1000"})
    srv.start(wait=False)
    assert srv.wait(timeout=60) != 0
    text = srv.log_text()
    assert "max_connections" in text and "1000" in text and "256" in text, text[-2000:]
