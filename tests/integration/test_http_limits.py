"""Transport limits and timeouts of the HTTP server (EVENTLY_MAX_BODY,
EVENTLY_MAX_HEADER, EVENTLY_READ_TIMEOUT, EVENTLY_IDLE_TIMEOUT) on the shared
server, which runs with small values (conftest.SESSION_ENV)."""
import socket
import time

from conftest import IDLE_TIMEOUT, MAX_BODY, MAX_HEADER, READ_TIMEOUT, read_response


def assert_closed(f):
    try:
        assert f.read() == b"", "connection not closed after the error answer"
    except ConnectionResetError:
        pass


def problem(r, status):
    assert r is not None, "no answer"
    assert r.status == status, r
    assert r.header("content-type") == "application/problem+json"
    assert r.header("connection") == "close"
    assert r.json()["status"] == status
    return r.json()


def chunked(data, size):
    out = b""
    for i in range(0, len(data), size):
        part = data[i:i + size]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    return out + b"0\r\n\r\n"


def test_body_at_the_limit_is_accepted(server):
    r = server.post("/echo", b"x" * MAX_BODY, headers={"Content-Type": "text/plain"})
    assert r.status == 200
    assert r.json()["body_len"] == MAX_BODY


def test_body_over_the_limit_with_content_length_is_413(server):
    with server.socket() as s:
        # the answer must come from the headers alone, before the body is sent
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1))
        f = s.makefile("rb")
        doc = problem(read_response(f), 413)
        assert doc["type"].endswith("/payload-too-large")
        assert_closed(f)
    assert server.get("/health").status == 200


def test_chunked_body_within_the_limit_is_accepted(server):
    data = b"y" * 5000
    with server.socket() as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n" + chunked(data, 1000))
        r = read_response(s.makefile("rb"))
    assert r.status == 200, r
    assert r.json()["body_len"] == 5000


def test_chunked_body_over_the_limit_is_413(server):
    data = b"z" * (MAX_BODY + 100)
    with server.socket() as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n" + chunked(data, 16384)[:-5])
        f = s.makefile("rb")
        doc = problem(read_response(f), 413)
        assert doc["type"].endswith("/payload-too-large")
        assert_closed(f)
    assert server.get("/health").status == 200


def test_headers_over_the_limit_are_431(server):
    with server.socket() as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"h" * (MAX_HEADER + 10) + b"\r\n\r\n")
        f = s.makefile("rb")
        problem(read_response(f), 431)
        assert_closed(f)


def test_many_small_headers_over_the_limit_are_431(server):
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 90) for i in range(MAX_HEADER // 90 + 5))
    with server.socket() as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
        problem(read_response(s.makefile("rb")), 431)


def test_headers_under_the_limit_are_fine(server):
    r = server.get("/health", headers={"X-Big": "h" * (MAX_HEADER // 2)})
    assert r.status == 200


def test_garbage_is_400_and_closed_and_the_server_goes_on(server):
    for junk in (b"\x00\x01\x02\xff garbage \r\n\r\n",
                 b"HELLO THERE\r\n\r\n",
                 b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"):
        with server.socket() as s:
            s.sendall(junk)
            f = s.makefile("rb")
            r = read_response(f)
            problem(r, 400)
            assert_closed(f)
    assert server.get("/health").status == 200


def test_slow_sender_gets_408_after_the_read_timeout(server):
    with server.socket(timeout=READ_TIMEOUT + 10) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n")  # ... and never the end
        f = s.makefile("rb")
        r = read_response(f)
        elapsed = time.monotonic() - t0
        doc = problem(r, 408)
        assert doc["type"].endswith("/request-timeout")
        assert READ_TIMEOUT - 0.5 <= elapsed < READ_TIMEOUT + 3, elapsed
        assert_closed(f)


def test_trickling_sender_cannot_extend_the_read_timeout(server):
    # a byte every 0.3 s keeps the socket busy, but the whole request must
    # arrive within EVENTLY_READ_TIMEOUT
    with server.socket(timeout=READ_TIMEOUT + 10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        t0 = time.monotonic()
        got = b""
        s.settimeout(0.3)
        while time.monotonic() - t0 < READ_TIMEOUT + 4:
            try:
                s.sendall(b"X")
            except OSError:
                break
            try:
                b = s.recv(4096)
                if not b:
                    break
                got += b
            except socket.timeout:
                continue
            except ConnectionResetError:
                break
        elapsed = time.monotonic() - t0
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert elapsed < READ_TIMEOUT + 3, elapsed


def test_idle_keep_alive_connection_is_closed(server):
    with server.socket(timeout=IDLE_TIMEOUT + 10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        f = s.makefile("rb")
        assert read_response(f).status == 200
        t0 = time.monotonic()
        assert f.read() == b""  # closed without another answer
        elapsed = time.monotonic() - t0
    assert IDLE_TIMEOUT - 0.5 <= elapsed < IDLE_TIMEOUT + 3, elapsed
