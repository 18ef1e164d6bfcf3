"""Transport limits and timeouts of the HTTP server (EVENTLY_MAX_BODY,
EVENTLY_MAX_HEADER, EVENTLY_READ_TIMEOUT, EVENTLY_IDLE_TIMEOUT) on the shared
server, which runs with small values (conftest.SESSION_ENV)."""
import socket
import time

from conftest import HANDLER_TIMEOUT, IDLE_TIMEOUT, MAX_BODY, MAX_HEADER, READ_TIMEOUT, read_response, wait_for


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


def test_expect_100_continue_gets_an_interim_answer(server):
    # RFC 9110 10.1.1: an origin server MUST answer a 100-continue expectation
    # with 100 (Continue) or a final status; curl sends it for bodies > 1 KiB
    # and otherwise stalls a second before sending the body.
    with server.socket(timeout=10) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 8\r\nExpect: 100-continue\r\n\r\n")
        s.settimeout(1.0)  # well under EVENTLY_READ_TIMEOUT
        try:
            interim = s.recv(4096)
        except socket.timeout:
            interim = b""
        s.settimeout(10)
        s.sendall(b'{"a": 1}')
        final = read_response(s.makefile("rb"))
    assert interim.startswith(b"HTTP/1.1 100"), "no 100 Continue within 1 s (got %r)" % interim[:100]
    assert interim.endswith(b"\r\n\r\n")  # the interim answer alone
    assert final.status == 200 and final.json()["json"] == {"a": 1}


def test_expect_100_continue_over_the_limit_is_413_at_once(server):
    with server.socket(timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
                  b"Expect: 100-continue\r\n\r\n" % (MAX_BODY + 1))
        problem(read_response(s.makefile("rb")), 413)


def test_content_length_with_chunked_is_refused(server):
    # request smuggling shape: both framings at once (RFC 9112 6.3: may be
    # refused, and the connection must be closed after answering)
    with server.socket() as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\nGET /items/smuggled HTTP/1.1\r\nHost: t\r\n\r\n")
        f = s.makefile("rb")
        r = read_response(f)
        assert r.status == 400, r
        assert r.header("connection") == "close"
        assert read_response(f) is None, "a smuggled second request was answered"


def test_connection_limit_answers_503_and_recovers(start_server):
    srv = start_server("maxconn", workers=1, env={"EVENTLY_MAX_CONNECTIONS": "2"})
    held = [srv.socket(), srv.socket()]
    try:
        # both busy with a request (an idle one would be closed to make room,
        # as nginx reuses keep-alive connections: test_abuse_connections.py)
        since = srv.log_size()
        for i, s in enumerate(held):
            s.sendall(b"GET /sleep?s=3&tag=held%d HTTP/1.1\r\nHost: t\r\n\r\n" % i)
        for i in range(2):
            srv.wait_log(r"sleep-start held%d" % i, since=since)
        with srv.socket() as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            f = s.makefile("rb")
            r = read_response(f)
            assert r.status == 503, r
            assert_closed(f)
        busy = r
        for s in held:  # the busy ones are served in full
            assert read_response(s.makefile("rb")).status == 200
    finally:
        for s in held:
            s.close()
    # the server counts a connection out when it sees the close: until then a
    # new one may still be refused; once it has, new ones are served again
    wait_for(lambda: srv.get("/health").status == 200, timeout=10, interval=0.05,
             what="/health to be served again")
    # API.md: errors are problem documents and every answer has a request id
    assert busy.header("content-type") == "application/problem+json", busy
    assert busy.header("x-request-id"), busy


def test_idle_timeout_counts_from_the_answer_not_the_request(server):
    # IDLE_TIMEOUT is the time a keep-alive connection may sit idle between
    # requests: after a slow answer the client still has the whole window.
    slow = HANDLER_TIMEOUT * 0.9          # answered well before the 504
    pause = IDLE_TIMEOUT - slow + 0.4     # idle < IDLE_TIMEOUT, but request-to-next > IDLE_TIMEOUT
    assert pause < IDLE_TIMEOUT - 0.5
    with server.socket(timeout=IDLE_TIMEOUT + 10) as s:
        f = s.makefile("rb")
        s.sendall(b"GET /sleep?s=%.2f HTTP/1.1\r\nHost: t\r\n\r\n" % slow)
        assert read_response(f).status == 200
        time.sleep(pause)
        try:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            r = read_response(f)
        except OSError as e:
            r = e
        assert r is not None and not isinstance(r, OSError), \
            "keep-alive connection closed after %.1f s idle (IDLE_TIMEOUT=%d): %r" % (pause, IDLE_TIMEOUT, r)
        assert r.status == 200


def test_stalled_request_gets_one_408_and_is_closed_at_once(start_server):
    # idle shorter than read timeout: the stall is noticed by the idle timer
    srv = start_server("stall", workers=1, env={"EVENTLY_IDLE_TIMEOUT": "1", "EVENTLY_READ_TIMEOUT": "4"})
    with srv.socket(timeout=15) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        data, first_at, closed_at = b"", None, None
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                b = b""
            if not b:
                closed_at = time.monotonic() - t0
                break
            if first_at is None:
                first_at = time.monotonic() - t0
            data += b
    assert data.startswith(b"HTTP/1.1 408"), data[:100]
    assert data.count(b"HTTP/1.1 ") == 1, "more than one answer: %r" % data
    assert closed_at - first_at < 1.0, \
        "408 sent at %.1f s but the connection was closed only at %.1f s" % (first_at, closed_at)
