"""Error answers a client can read (issue 11): lingering close.

When the server answers a transport error (413 body over EVENTLY_MAX_BODY,
431 headers over EVENTLY_MAX_HEADER, 400, 408) it closes the connection. A
client that is still sending (an upload) would make a plain close() send a
reset, and a reset can destroy the answer in the client's receive buffer
before the client reads it: the client sees "connection reset" instead of
the 413. The server therefore shuts its write side, discards what still
arrives until the client's EOF, a quiet moment or a bound of time and bytes
(core/http.c, LINGER_*), and only then closes.

Bounds the tests rely on (core/http.c): LINGER_QUIET_S 2, LINGER_TOTAL_S 10,
LINGER_BYTES 16 MiB.
"""
import socket
import threading
import time

from conftest import MAX_BODY, MAX_HEADER, read_response, wait_for
from test_http_limits import problem  # a transport error's problem document, Connection: close

LINGER_TOTAL_S = 10
LINGER_BYTES = 16 * 1024 * 1024
UPLOAD = 8 * 1024 * 1024
CHUNK = 64 * 1024
ROUNDS = 20



def upload_then_read(srv, head, body_len, chunk=CHUNK, filler=b"x", tail=b""):
    """Sends head, then body_len bytes of filler in chunks without reading
    (as a client that only looks at the answer once its upload is out),
    then tail, then reads the answer. A send that fails (the server reset
    the connection) ends the upload early, and the answer is read anyway,
    as curl does: the test fails only if the client cannot read it.
    Returns (response or the error while reading, error while sending)."""
    with srv.socket(timeout=30) as s:
        send_err = None
        try:
            s.sendall(head)
            block = filler * chunk
            left = body_len
            while left > 0:
                n = min(left, chunk)
                s.sendall(block[:n])
                left -= n
            if tail:
                s.sendall(tail)
        except OSError as e:
            send_err = e
        try:
            r = read_response(s.makefile("rb"))
        except OSError as e:
            r = e
        return r, send_err


def assert_answer(r, send_err, status, i):
    assert not isinstance(r, OSError) and r is not None, \
        "round %d: no %d for the client but %r (send: %r)" % (i, status, r, send_err)
    problem(r, status)
    assert send_err is None, "round %d: the upload was reset: %r" % (i, send_err)


def test_upload_over_max_body_gets_its_413_not_a_reset(server):
    head = (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % UPLOAD)
    assert UPLOAD > MAX_BODY
    for i in range(ROUNDS):
        r, send_err = upload_then_read(server, head, UPLOAD)
        assert_answer(r, send_err, 413, i)
        assert r.json()["type"].endswith("/payload-too-large")
    assert server.get("/health").status == 200


def test_chunked_upload_over_max_body_gets_its_413_not_a_reset(server):
    head = (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    # one chunk header announcing the whole upload, then its bytes
    head += b"%x\r\n" % UPLOAD
    for i in range(ROUNDS // 2):
        r, send_err = upload_then_read(server, head, UPLOAD, tail=b"\r\n0\r\n\r\n")
        assert_answer(r, send_err, 413, i)


def test_headers_streamed_over_max_header_get_their_431_not_a_reset(server):
    head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: "
    size = 2 * 1024 * 1024
    assert size > MAX_HEADER
    for i in range(ROUNDS):
        r, send_err = upload_then_read(server, head, size, filler=b"h", tail=b"\r\n\r\n")
        assert_answer(r, send_err, 431, i)
        assert r.json()["type"].endswith("/header-too-large")


def test_garbage_followed_by_more_bytes_gets_its_400_not_a_reset(server):
    for i in range(ROUNDS // 2):
        r, send_err = upload_then_read(server, b"HELLO THERE\r\n\r\n", 2 * 1024 * 1024)
        assert_answer(r, send_err, 400, i)


def send_until_closed(s, every, size, limit_s):
    """Sends size bytes every `every` seconds until a send fails (the server
    has closed); returns (seconds until then or None, bytes sent)."""
    t0 = time.monotonic()
    sent = 0
    block = b"z" * size
    while time.monotonic() - t0 < limit_s:
        try:
            sent += s.send(block)
        except OSError:
            return time.monotonic() - t0, sent
        if every:
            time.sleep(every)
    return None, sent


def error_then_linger(srv):
    """A socket that got its 413 (read, with the EOF after it) and whose
    connection now lingers on the server."""
    s = srv.socket(timeout=10)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % UPLOAD
              + b"x" * CHUNK)
    f = s.makefile("rb")
    problem(read_response(f), 413)
    assert f.read() == b"", "the answer is not followed by the server's EOF"
    return s


def health_is_quick(srv):
    t0 = time.monotonic()
    r = srv.get("/health", timeout=5)
    return r.status == 200 and time.monotonic() - t0 < 1.0


def test_a_client_trickling_after_the_error_is_closed_after_the_time_bound(server):
    s = error_then_linger(server)
    result = {}

    def trickle():
        result["closed_after"], result["sent"] = send_until_closed(s, 0.3, 1, LINGER_TOTAL_S + 10)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        # the server goes on meanwhile
        while t.is_alive():
            assert health_is_quick(server), "/health slow or failing while a connection lingers"
            time.sleep(0.5)
    finally:
        t.join(LINGER_TOTAL_S + 15)
        s.close()
    closed_after = result.get("closed_after")
    assert closed_after is not None, \
        "a trickling client kept the connection for %d s (sent %d bytes)" % (LINGER_TOTAL_S + 10, result["sent"])
    # closed at the bound, not at the first quiet moment (it was never quiet)
    assert LINGER_TOTAL_S - 3 <= closed_after <= LINGER_TOTAL_S + 3, closed_after


def test_a_client_flooding_after_the_error_is_closed_after_the_byte_bound(server):
    s = error_then_linger(server)
    try:
        s.settimeout(2)
        closed_after, sent = send_until_closed(s, 0, 256 * 1024, LINGER_TOTAL_S - 2)
    finally:
        s.close()
    assert closed_after is not None, "a flooding client was not closed (sent %d bytes)" % sent
    assert closed_after < LINGER_TOTAL_S / 2, closed_after
    assert sent < LINGER_BYTES * 4, sent  # kernel buffers on both sides add a few MiB
    assert health_is_quick(server)


def test_a_silent_client_after_the_error_is_closed_after_the_quiet_time(server):
    s = error_then_linger(server)
    try:
        time.sleep(3)  # > LINGER_QUIET_S: the server has closed by now
        closed_after, _ = send_until_closed(s, 0.1, 1, 2)
    finally:
        s.close()
    assert closed_after is not None, "a silent lingering connection was kept past the quiet time"


def test_lingering_connections_make_room_first(server, start_server):
    # (server too: a last test that asks for start_server alone gets the
    # session's stray check torn down before the shared server, pytest 7)
    srv = start_server("linger", workers=1, env={"EVENTLY_MAX_CONNECTIONS": "3",
                                                 "EVENTLY_MAX_BODY": str(MAX_BODY)})
    idle = srv.socket()
    lingering = []
    try:
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        idle_f = idle.makefile("rb")
        assert read_response(idle_f).status == 200
        lingering = [error_then_linger(srv), error_then_linger(srv)]
        # the place is full (1 idle + 2 lingering): new clients are served by
        # closing a lingering connection, not the idle keep-alive one
        for _ in range(2):
            assert srv.get("/health", headers={"Connection": "close"}).status == 200
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        r = read_response(idle_f)
        assert r is not None and r.status == 200, "the idle connection was closed for room: %r" % r
        # and a draining worker does not wait the linger bound out for a
        # client that keeps sending
        s = error_then_linger(srv)
        lingering.append(s)
        t = threading.Thread(target=send_until_closed, args=(s, 0.2, 1, LINGER_TOTAL_S + 5), daemon=True)
        t.start()
        t0 = time.monotonic()
        srv.stop_and_check()
        stopped_after = time.monotonic() - t0
        t.join(LINGER_TOTAL_S + 10)
        assert stopped_after < LINGER_TOTAL_S - 3, stopped_after
    finally:
        idle.close()
        for s in lingering:
            s.close()
    assert health_is_quick(server)
